#include <fmt/format.h>
#include <fmt/ranges.h>

#include "commands.h"

namespace flashgpt::cli {

GPTConfig ModelFlags::resolve(const std::string& default_preset, bool validate) const {
  GPTConfig c = GPTConfig::preset(preset.empty() ? default_preset : preset);
  if (!config_file.empty()) {
    GPTConfig from_file = GPTConfig::from_json_file(config_file);
    c = from_file;
  }
  for (const auto& apply : overrides) apply(c);
  if (validate) c.validate();
  return c;
}

namespace {

template <typename T>
void field(CLI::App& app, ModelFlags& f, const std::string& name, const std::string& help, T GPTConfig::*member) {
  app.add_option_function<T>(
         name, [&f, member](const T& v) { f.overrides.push_back([member, v](GPTConfig& c) { c.*member = v; }); },
         help)
      ->group("Model");
}

void toggle(CLI::App& app, ModelFlags& f, const std::string& name, const std::string& help, bool GPTConfig::*member) {
  app.add_flag_function(
         "--" + name + ",!--no-" + name,
         [&f, member](int64_t count) {
           f.overrides.push_back([member, count](GPTConfig& c) { c.*member = count > 0; });
         },
         help)
      ->group("Model");
}

template <typename Enum>
void choice(CLI::App& app, ModelFlags& f, const std::string& name, const std::string& help,
            const std::vector<std::string>& choices, Enum GPTConfig::*member, Enum (*parse)(const std::string&, const std::string&)) {
  app.add_option_function<std::string>(
         name,
         [&f, member, parse, name](const std::string& v) {
           Enum e = parse(v, name);
           f.overrides.push_back([member, e](GPTConfig& c) { c.*member = e; });
         },
         help)
      ->check(CLI::IsMember(choices))
      ->group("Model");
}

}  // namespace

void add_model_flags(CLI::App& app, ModelFlags& f) {
  app.add_option("--preset", f.preset,
                 fmt::format("Model preset: {}", fmt::join(GPTConfig::preset_names(), ", ")))
      ->check(CLI::IsMember(GPTConfig::preset_names()))
      ->group("Model");
  app.add_option("--config", f.config_file, "Model config JSON file (fields as in `flashgpt info --json`); "
                                            "may name a \"preset\" to start from")
      ->check(CLI::ExistingFile)
      ->group("Model");
  field<int>(app, f, "--vocab-size", "Vocabulary size (set from the tokenizer when training)", &GPTConfig::vocab_size);
  field<int>(app, f, "--block-size", "Maximum sequence length (context)", &GPTConfig::block_size);
  field<int>(app, f, "--n-layer", "Number of blocks", &GPTConfig::n_layer);
  field<int>(app, f, "--n-head", "Query heads per block", &GPTConfig::n_head);
  field<int>(app, f, "--n-kv-head", "Key/value heads (fewer than --n-head: grouped-query attention; 0: same)",
             &GPTConfig::n_kv_head);
  field<int>(app, f, "--n-embd", "Model width", &GPTConfig::n_embd);
  field<int>(app, f, "--mlp-hidden", "MLP hidden width (0: 4×width for gelu, 8/3×width for swiglu)",
             &GPTConfig::mlp_hidden);
  choice<NormKind>(app, f, "--norm", "Norm: layernorm or rmsnorm", {"layernorm", "rmsnorm"}, &GPTConfig::norm,
                   &parse_norm_kind);
  choice<PosKind>(app, f, "--pos", "Positions: learned or rope", {"learned", "rope"}, &GPTConfig::pos,
                  &parse_pos_kind);
  choice<MlpKind>(app, f, "--mlp", "MLP: gelu or swiglu", {"gelu", "swiglu"}, &GPTConfig::mlp, &parse_mlp_kind);
  choice<AttentionKind>(app, f, "--attention",
                        "Attention: standard (CausalSelfAttention), flash (FlashCausalSelfAttention, "
                        "FlashAttention-2), mla (MultiHeadLatentAttention) or flash_mla (FlashMLA)",
                        {"standard", "flash", "mla", "flash_mla"}, &GPTConfig::attention, &parse_attention_kind);
  auto action = [&](const std::string& name, const std::string& help, std::function<void(GPTConfig&)> apply) {
    app.add_flag_function(name, [&f, apply](int64_t) { f.overrides.push_back(apply); }, help)->group("Model");
  };
  action("--use-flash-attention", "The flash kernel for the current mechanism (standard→flash, mla→flash_mla)",
         [](GPTConfig& c) { c.set_flash(true); });
  action("--use-latent-attention", "The latent variant of the current mechanism (standard→mla, flash→flash_mla)",
         [](GPTConfig& c) { c.set_latent(true); });
  action("--use-flash-mla", "Same as --attention flash_mla", [](GPTConfig& c) { c.attention = AttentionKind::FlashMLA; });
  field<int>(app, f, "--latent-dim,--n-latent", "MLA latent width n_latent (0: head_dim / 2)", &GPTConfig::n_latent);
  field<int>(app, f, "--rope-dim", "MLA decoupled RoPE width (0: head_dim / 2 with --pos rope; none with learned)",
             &GPTConfig::rope_dim);
  field<int>(app, f, "--q-lora-rank", "MLA low-rank query path of this rank (0: full-rank queries)",
             &GPTConfig::q_lora_rank);
  toggle(app, f, "use-svd", "Factor MLA's value up-projection at rank --svd-rank (truncated SVD at init)",
         &GPTConfig::use_svd);
  field<int>(app, f, "--svd-rank", "Rank of the SVD-factored value up-projection", &GPTConfig::svd_rank);
  toggle(app, f, "post-norm", "Norm each sublayer's output before the residual add (keeps the pre-norm)",
         &GPTConfig::post_norm);
  toggle(app, f, "qk-norm", "RMSNorm on queries and keys over the head dim, before RoPE", &GPTConfig::qk_norm);
  toggle(app, f, "tie-embeddings", "Share the token embedding with the LM head", &GPTConfig::tie_embeddings);
  toggle(app, f, "bias", "Biases in linear layers and LayerNorm", &GPTConfig::bias);
  field<double>(app, f, "--rope-theta", "RoPE base frequency", &GPTConfig::rope_theta);
  field<double>(app, f, "--norm-eps", "Epsilon of the norms", &GPTConfig::norm_eps);
}

}  // namespace flashgpt::cli
