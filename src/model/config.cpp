#include "flashgpt/model/config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <map>

#include "flashgpt/core/error.h"
#include "flashgpt/core/io.h"
#include "flashgpt/model/params.h"

namespace flashgpt {

std::string to_string(NormKind k) { return k == NormKind::LayerNorm ? "layernorm" : "rmsnorm"; }
std::string to_string(PosKind k) { return k == PosKind::Learned ? "learned" : "rope"; }
std::string to_string(MlpKind k) { return k == MlpKind::Gelu ? "gelu" : "swiglu"; }
std::string to_string(AttentionKind k) {
  switch (k) {
    case AttentionKind::Standard: return "standard";
    case AttentionKind::Flash: return "flash";
    case AttentionKind::MLA: return "mla";
    case AttentionKind::FlashMLA: return "flash_mla";
  }
  return "?";
}

NormKind parse_norm_kind(const std::string& s, const std::string& field) {
  if (s == "layernorm") return NormKind::LayerNorm;
  if (s == "rmsnorm") return NormKind::RMSNorm;
  fail("{}: '{}' is not a norm (choose layernorm or rmsnorm)", field, s);
}
PosKind parse_pos_kind(const std::string& s, const std::string& field) {
  if (s == "learned") return PosKind::Learned;
  if (s == "rope") return PosKind::Rope;
  fail("{}: '{}' is not a position encoding (choose learned or rope)", field, s);
}
MlpKind parse_mlp_kind(const std::string& s, const std::string& field) {
  if (s == "gelu") return MlpKind::Gelu;
  if (s == "swiglu") return MlpKind::SwiGLU;
  fail("{}: '{}' is not an MLP kind (choose gelu or swiglu)", field, s);
}
AttentionKind parse_attention_kind(const std::string& s, const std::string& field) {
  if (s == "standard") return AttentionKind::Standard;
  if (s == "flash") return AttentionKind::Flash;
  if (s == "mla") return AttentionKind::MLA;
  if (s == "flash_mla") return AttentionKind::FlashMLA;
  fail("{}: '{}' is not an attention mechanism (choose standard, flash, mla or flash_mla)", field, s);
}

int GPTConfig::hidden() const {
  if (mlp_hidden > 0) return mlp_hidden;
  if (mlp == MlpKind::Gelu) return 4 * n_embd;
  int f = (8 * n_embd + 2) / 3;
  return (f + 63) / 64 * 64;
}

int GPTConfig::fc_out() const { return mlp == MlpKind::SwiGLU ? 2 * hidden() : hidden(); }

int GPTConfig::padded_vocab_size() const {
  return (vocab_size + kVocabPadMultiple - 1) / kVocabPadMultiple * kVocabPadMultiple;
}

void GPTConfig::validate() const {
  auto positive = [](int v, const char* field) {
    FLASHGPT_CHECK(v > 0, "config field '{}': must be positive, got {}", field, v);
  };
  positive(vocab_size, "vocab_size");
  positive(block_size, "block_size");
  positive(n_layer, "n_layer");
  positive(n_head, "n_head");
  positive(n_embd, "n_embd");
  FLASHGPT_CHECK(vocab_size <= 65536, "config field 'vocab_size': {} exceeds 65536, the most a uint16 token shard can hold", vocab_size);
  FLASHGPT_CHECK(n_kv_head >= 0, "config field 'n_kv_head': must be 0 (same as n_head) or positive, got {}", n_kv_head);
  FLASHGPT_CHECK(mlp_hidden >= 0, "config field 'mlp_hidden': must be 0 (automatic) or positive, got {}", mlp_hidden);
  FLASHGPT_CHECK(n_embd % n_head == 0, "config field 'n_head': {} does not divide n_embd {}", n_head, n_embd);
  FLASHGPT_CHECK(kv_heads() <= n_head && n_head % kv_heads() == 0,
                 "config field 'n_kv_head': n_head {} is not a multiple of n_kv_head {}", n_head, kv_heads());
  if (pos == PosKind::Rope) {
    FLASHGPT_CHECK(head_dim() % 2 == 0, "config field 'pos': rope needs an even head dim, got {} (n_embd {} / n_head {})",
                   head_dim(), n_embd, n_head);
    FLASHGPT_CHECK(rope_theta > 0, "config field 'rope_theta': must be positive, got {}", rope_theta);
  }
  FLASHGPT_CHECK(norm_eps > 0 && norm_eps < 1, "config field 'norm_eps': must be in (0, 1), got {}", norm_eps);
  validate_latent();
}

void GPTConfig::validate_latent() const {
  FLASHGPT_CHECK(n_latent >= 0, "config field 'n_latent': must be 0 (head_dim / 2) or positive, got {}", n_latent);
  FLASHGPT_CHECK(rope_dim >= 0, "config field 'rope_dim': must be 0 (automatic) or positive, got {}", rope_dim);
  FLASHGPT_CHECK(q_lora_rank >= 0, "config field 'q_lora_rank': must be 0 (off) or positive, got {}", q_lora_rank);
  FLASHGPT_CHECK(svd_rank >= 0, "config field 'svd_rank': must be positive, got {}", svd_rank);
  const std::string mech = to_string(attention);
  if (!is_latent(attention)) {
    // Latent fields on a mechanism without a latent would be silently ignored: refuse them.
    for (auto [value, name] : {std::pair{n_latent, "n_latent"}, {rope_dim, "rope_dim"}, {q_lora_rank, "q_lora_rank"},
                               {svd_rank, "svd_rank"}}) {
      FLASHGPT_CHECK(value == 0, "config field '{}': only latent attention (mla or flash_mla) has it, but attention is {}",
                     name, mech);
    }
    FLASHGPT_CHECK(!use_svd, "config field 'use_svd': SVD compresses MLA's value up-projection; attention is {}", mech);
    return;
  }
  FLASHGPT_CHECK(kv_heads() == n_head,
                 "config field 'n_kv_head': {} attention derives every head's key and value from one latent; "
                 "n_kv_head must be 0 or n_head {}, got {}",
                 mech, n_head, n_kv_head);
  if (pos == PosKind::Learned) {
    FLASHGPT_CHECK(rope_dim == 0, "config field 'rope_dim': decoupled RoPE needs pos = rope, but pos is learned");
  } else {
    FLASHGPT_CHECK(mla_rope_dim() % 2 == 0 && mla_rope_dim() > 0,
                   "config field 'rope_dim': RoPE rotates pairs, so it must be even and positive, got {}",
                   mla_rope_dim());
  }
  if (use_svd) {
    const int max_rank = std::min(latent_dim(), n_head * head_dim());
    FLASHGPT_CHECK(svd_rank > 0 && svd_rank <= max_rank,
                   "config field 'svd_rank': use_svd needs a rank between 1 and min(n_latent, n_head·head_dim) = {}, "
                   "got {}",
                   max_rank, svd_rank);
  } else {
    FLASHGPT_CHECK(svd_rank == 0, "config field 'svd_rank': set use_svd to factor the value up-projection");
  }
}

nlohmann::json GPTConfig::to_json() const {
  return nlohmann::json{{"vocab_size", vocab_size},     {"block_size", block_size},
                        {"n_layer", n_layer},           {"n_head", n_head},
                        {"n_kv_head", n_kv_head},       {"n_embd", n_embd},
                        {"mlp_hidden", mlp_hidden},     {"norm", to_string(norm)},
                        {"pos", to_string(pos)},        {"mlp", to_string(mlp)},
                        {"attention", to_string(attention)}, {"post_norm", post_norm},
                        {"qk_norm", qk_norm},           {"tie_embeddings", tie_embeddings},
                        {"bias", bias},                 {"rope_theta", rope_theta},
                        {"norm_eps", norm_eps},         {"n_latent", n_latent},
                        {"rope_dim", rope_dim},         {"q_lora_rank", q_lora_rank},
                        {"use_svd", use_svd},           {"svd_rank", svd_rank}};
}

void GPTConfig::set_flash(bool on) {
  const bool latent = is_latent(attention);
  attention = on ? (latent ? AttentionKind::FlashMLA : AttentionKind::Flash)
                 : (latent ? AttentionKind::MLA : AttentionKind::Standard);
}

GPTConfig GPTConfig::with_attention(AttentionKind k) const {
  GPTConfig v = *this;
  v.attention = k;
  if (is_latent(k)) {
    v.n_kv_head = 0;
  } else {
    v.n_latent = v.rope_dim = v.q_lora_rank = v.svd_rank = 0;
    v.use_svd = false;
  }
  return v;
}

void GPTConfig::set_latent(bool on) {
  const bool flash = uses_flash_kernel(attention);
  attention = on ? (flash ? AttentionKind::FlashMLA : AttentionKind::MLA)
                 : (flash ? AttentionKind::Flash : AttentionKind::Standard);
}

void GPTConfig::update_from_json(const nlohmann::json& j, const std::string& source) {
  FLASHGPT_CHECK(j.is_object(), "{}: a model config must be a JSON object", source);
  for (const auto& [key, value] : j.items()) {
    auto as_int = [&]() -> int {
      FLASHGPT_CHECK(value.is_number_integer(), "{}: field '{}' must be an integer, got {}", source, key, value.dump());
      return value.get<int>();
    };
    auto as_bool = [&]() -> bool {
      FLASHGPT_CHECK(value.is_boolean(), "{}: field '{}' must be true or false, got {}", source, key, value.dump());
      return value.get<bool>();
    };
    auto as_float = [&]() -> double {
      FLASHGPT_CHECK(value.is_number(), "{}: field '{}' must be a number, got {}", source, key, value.dump());
      return value.get<double>();
    };
    auto as_string = [&]() -> std::string {
      FLASHGPT_CHECK(value.is_string(), "{}: field '{}' must be a string, got {}", source, key, value.dump());
      return value.get<std::string>();
    };
    std::string field = fmt::format("{}: field '{}'", source, key);
    if (key == "vocab_size") vocab_size = as_int();
    else if (key == "block_size") block_size = as_int();
    else if (key == "n_layer") n_layer = as_int();
    else if (key == "n_head") n_head = as_int();
    else if (key == "n_kv_head") n_kv_head = as_int();
    else if (key == "n_embd") n_embd = as_int();
    else if (key == "mlp_hidden") mlp_hidden = as_int();
    else if (key == "norm") norm = parse_norm_kind(as_string(), field);
    else if (key == "pos") pos = parse_pos_kind(as_string(), field);
    else if (key == "mlp") mlp = parse_mlp_kind(as_string(), field);
    else if (key == "attention") attention = parse_attention_kind(as_string(), field);
    else if (key == "use_flash_attention") set_flash(as_bool());
    else if (key == "use_latent_attention") set_latent(as_bool());
    else if (key == "use_flash_mla") {
      if (as_bool()) attention = AttentionKind::FlashMLA;
      else if (attention == AttentionKind::FlashMLA) attention = AttentionKind::Standard;
    }
    else if (key == "n_latent") n_latent = as_int();
    else if (key == "rope_dim") rope_dim = as_int();
    else if (key == "q_lora_rank") q_lora_rank = as_int();
    else if (key == "use_svd") use_svd = as_bool();
    else if (key == "svd_rank") svd_rank = as_int();
    else if (key == "post_norm") post_norm = as_bool();
    else if (key == "qk_norm") qk_norm = as_bool();
    else if (key == "tie_embeddings") tie_embeddings = as_bool();
    else if (key == "bias") bias = as_bool();
    else if (key == "rope_theta") rope_theta = as_float();
    else if (key == "norm_eps") norm_eps = as_float();
    else if (key == "preset") *this = preset(as_string());  // a file may start from a preset
    else fail("{}: unknown config field '{}'", source, key);
  }
}

GPTConfig GPTConfig::from_json_file(const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", path, e.what());
  }
  GPTConfig c;
  if (j.is_object() && j.contains("preset")) {
    c = preset(j["preset"].is_string() ? j["preset"].get<std::string>() : "");
    j.erase("preset");
  }
  c.update_from_json(j, path);
  c.validate();
  return c;
}

namespace {

GPTConfig gpt2_sized(int layers, int heads, int embd) {
  GPTConfig c;
  c.n_layer = layers;
  c.n_head = heads;
  c.n_embd = embd;
  return c;
}

const std::map<std::string, GPTConfig>& presets() {
  static const std::map<std::string, GPTConfig> table = [] {
    std::map<std::string, GPTConfig> t;
    GPTConfig tiny = gpt2_sized(2, 2, 32);
    tiny.block_size = 64;
    t["tiny"] = tiny;
    t["d6"] = gpt2_sized(6, 6, 384);
    t["d12"] = gpt2_sized(12, 12, 768);    // GPT-2 124M
    t["d24"] = gpt2_sized(24, 16, 1024);   // GPT-2 350M
    t["d36"] = gpt2_sized(36, 20, 1280);   // GPT-2 774M
    t["d48"] = gpt2_sized(48, 25, 1600);   // GPT-2 1558M
    GPTConfig pn = t["d12"];
    pn.post_norm = true;
    t["d12_post_norm"] = pn;
    pn.qk_norm = true;
    t["d12_post_norm_qk_norm"] = pn;
    GPTConfig fm = pn;  // FlashMLA with post-norm and QK-norm (the seed's d12_flash_mla)
    fm.attention = AttentionKind::FlashMLA;
    t["d12_flash_mla"] = fm;
    return t;
  }();
  return table;
}

}  // namespace

GPTConfig GPTConfig::preset(const std::string& name) {
  auto it = presets().find(name);
  if (it == presets().end()) {
    fail("preset '{}' does not exist (choose one of: {})", name, fmt::join(preset_names(), ", "));
  }
  return it->second;
}

std::vector<std::string> GPTConfig::preset_names() {
  std::vector<std::string> names;
  for (const auto& [name, c] : presets()) names.push_back(name);
  return names;
}

ModelStats model_stats(const GPTConfig& c, int seq_len) {
  ModelStats s;
  for (const ParamSpec& p : param_specs(c)) {
    s.n_params += p.numel();
    if (p.name != "wte" && p.name != "wpe" && p.name != "lm_head.weight") s.n_params_non_embedding += p.numel();
  }
  const int T = seq_len > 0 ? seq_len : c.block_size;
  const bool latent = is_latent(c.attention);
  // Scores and weighted sum, forward and backward (3×), 2 FLOPs per multiply-add, causal half:
  // 3·L·T·Hq·(Dqk + Dv) — 6·L·C·T for multi-head attention.
  const int qk = latent ? c.mla_qk_dim() : c.head_dim();
  s.train_flops_per_token = 6.0 * static_cast<double>(s.n_params) +
                            3.0 * c.n_layer * static_cast<double>(T) * c.n_head * (qk + c.head_dim());
  s.kv_cache_bytes_per_token = attention_stats(c).kv_cache_bytes_per_token;
  return s;
}

}  // namespace flashgpt

namespace flashgpt {

AttentionStats attention_stats(const GPTConfig& c) {
  auto count = [](const GPTConfig& cfg) {
    int64_t n = 0;
    for (const ParamSpec& p : param_specs(cfg)) {
      if (p.name.find(".attn.") != std::string::npos) n += p.numel();
    }
    return n;
  };
  GPTConfig mha = c;  // the same width and heads as plain multi-head attention
  mha.attention = AttentionKind::Standard;
  mha.n_kv_head = 0;
  mha.n_latent = mha.rope_dim = mha.q_lora_rank = mha.svd_rank = 0;
  mha.use_svd = false;
  AttentionStats s;
  s.mechanism = to_string(c.attention);
  s.params = count(c);
  s.mha_params = count(mha);
  const int64_t per_layer = is_latent(c.attention) ? c.latent_dim() + c.mla_rope_dim() : 2 * c.kv_dim();
  s.kv_cache_floats_per_token_layer = per_layer;
  s.kv_cache_bytes_per_token = per_layer * c.n_layer * static_cast<int64_t>(sizeof(float));
  s.mha_kv_cache_bytes_per_token = 2 * static_cast<int64_t>(mha.kv_dim()) * c.n_layer * static_cast<int64_t>(sizeof(float));
  return s;
}

}  // namespace flashgpt
