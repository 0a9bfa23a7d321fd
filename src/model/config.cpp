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
std::string to_string(AttentionKind k) { return k == AttentionKind::Flash ? "flash" : "standard"; }

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
  fail("{}: '{}' is not an attention mechanism this build offers (choose standard or flash)", field, s);
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
                        {"norm_eps", norm_eps}};
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
    else if (key == "use_flash_attention") attention = as_bool() ? AttentionKind::Flash : AttentionKind::Standard;
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
  int T = seq_len > 0 ? seq_len : c.block_size;
  s.train_flops_per_token = 6.0 * static_cast<double>(s.n_params) + 6.0 * c.n_layer * c.n_embd * static_cast<double>(T);
  s.kv_cache_bytes_per_token = static_cast<int64_t>(2) * c.n_layer * c.kv_dim() * static_cast<int64_t>(sizeof(float));
  return s;
}

}  // namespace flashgpt
