// GPTConfig: every architectural choice of a flashgpt model, its presets, JSON form and validation.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace flashgpt {

enum class NormKind { LayerNorm, RMSNorm };
enum class PosKind { Learned, Rope };
enum class MlpKind { Gelu, SwiGLU };
// The attention mechanism of every block (attention/attention.h):
//   standard — CausalSelfAttention: the materialised reference kernel;
//   flash    — FlashCausalSelfAttention: the same maths and parameters with the FlashAttention-2
//              kernel, so one replaces the other in a trained model;
//   mla      — MultiHeadLatentAttention (DeepSeek-V2): keys and values come from a normed latent
//              c_kv of width n_latent, with decoupled RoPE (a shared rope key of width rope_dim);
//              decoding caches only [c_kv, k_rope] per token and layer;
//   flash_mla — FlashMLA: MLA trained with the flash kernel and decoded with weight absorption
//              straight over the latent cache. mla and flash_mla share parameters.
enum class AttentionKind { Standard, Flash, MLA, FlashMLA };

inline bool is_latent(AttentionKind k) { return k == AttentionKind::MLA || k == AttentionKind::FlashMLA; }
inline bool uses_flash_kernel(AttentionKind k) { return k == AttentionKind::Flash || k == AttentionKind::FlashMLA; }

struct GPTConfig {
  int vocab_size = 50257;
  int block_size = 1024;  // maximum sequence length
  int n_layer = 12;
  int n_head = 12;
  int n_kv_head = 0;  // 0: same as n_head (multi-head); fewer: grouped-query attention
  int n_embd = 768;
  int mlp_hidden = 0;  // 0: 4·n_embd for gelu, 8/3·n_embd rounded up to 64 for swiglu
  NormKind norm = NormKind::LayerNorm;
  PosKind pos = PosKind::Learned;
  MlpKind mlp = MlpKind::Gelu;
  AttentionKind attention = AttentionKind::Standard;
  bool post_norm = false;  // add a norm on each sublayer's output before the residual add
  bool qk_norm = false;    // RMSNorm over the head dim of q and k (learnable gain), before RoPE
  bool tie_embeddings = true;
  bool bias = true;  // biases in linear layers and LayerNorm
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  // Multi-head latent attention (attention = mla | flash_mla); 0 chooses the default.
  int n_latent = 0;     // latent width of c_kv; 0: head_dim / 2 (the MLA document's default)
  int rope_dim = 0;     // decoupled RoPE width; 0: head_dim / 2 with pos = rope, none with learned
  int q_lora_rank = 0;  // 0: queries straight from x; r: through a normed rank-r latent
  bool use_svd = false; // value up-projection factored at rank svd_rank (truncated SVD)
  int svd_rank = 0;

  // Derived sizes (valid after validate()).
  int kv_heads() const { return n_kv_head > 0 ? n_kv_head : n_head; }
  int head_dim() const { return n_embd / n_head; }
  int q_dim() const { return n_head * head_dim(); }
  int kv_dim() const { return kv_heads() * head_dim(); }
  int hidden() const;            // MLP hidden width F
  int fc_out() const;            // width of the first MLP matmul: F (gelu) or 2F (swiglu)
  int padded_vocab_size() const;  // vocab rounded up to a multiple of kVocabPadMultiple
  // MLA sizes: latent width, rope width, and each head's q·k width (head_dim + rope width).
  int latent_dim() const { return n_latent > 0 ? n_latent : std::max(1, head_dim() / 2); }
  int mla_rope_dim() const { return rope_dim > 0 ? rope_dim : (pos == PosKind::Rope ? head_dim() / 2 : 0); }
  int mla_qk_dim() const { return head_dim() + mla_rope_dim(); }

  // Throws flashgpt::Error naming the field and the reason when the combination is invalid.
  void validate() const;
  // The seeds' switches: use_flash_attention picks the flash kernel for the current mechanism,
  // use_latent_attention the latent variant (standard↔mla, flash↔flash_mla).
  void set_flash(bool on);
  void set_latent(bool on);
  // This model with another attention mechanism: latent fields dropped for multi-head mechanisms;
  // grouped-query heads dropped for latent ones (which derive every head from one latent).
  GPTConfig with_attention(AttentionKind k) const;

  nlohmann::json to_json() const;
  // Reads the fields present in `j` over the current values; an unknown field or a value of the
  // wrong type is an error naming `source` and the field.
  void update_from_json(const nlohmann::json& j, const std::string& source);
  static GPTConfig from_json_file(const std::string& path);
  static GPTConfig preset(const std::string& name);
  static std::vector<std::string> preset_names();
  bool operator==(const GPTConfig&) const = default;

 private:
  void validate_latent() const;
};

inline constexpr int kVocabPadMultiple = 128;

std::string to_string(NormKind k);
std::string to_string(PosKind k);
std::string to_string(MlpKind k);
std::string to_string(AttentionKind k);
NormKind parse_norm_kind(const std::string& s, const std::string& field);
PosKind parse_pos_kind(const std::string& s, const std::string& field);
MlpKind parse_mlp_kind(const std::string& s, const std::string& field);
AttentionKind parse_attention_kind(const std::string& s, const std::string& field);

// Model size figures shown by `flashgpt info` and used for MFU.
struct ModelStats {
  int64_t n_params = 0;               // every trainable parameter (padding rows included)
  int64_t n_params_non_embedding = 0;
  double train_flops_per_token = 0;   // 6·N + 6·L·C·T at T = block_size
  int64_t kv_cache_bytes_per_token = 0;  // all layers, fp32
};
ModelStats model_stats(const GPTConfig& c, int seq_len = 0);

// What `flashgpt info` shows per attention mechanism: its parameters beside those of multi-head
// attention of the same width and heads, and what its decoding cache holds (fp32):
// MHA 2·H·D, GQA 2·Hkv·D, MLA n_latent + rope_dim floats per token per layer.
struct AttentionStats {
  std::string mechanism;
  int64_t params = 0;      // attention parameters, all layers
  int64_t mha_params = 0;  // the same for multi-head attention
  int64_t kv_cache_floats_per_token_layer = 0;
  int64_t kv_cache_bytes_per_token = 0;  // all layers
  int64_t mha_kv_cache_bytes_per_token = 0;
  double param_compression() const { return params > 0 ? static_cast<double>(mha_params) / params : 0.0; }
  double cache_compression() const {
    return kv_cache_bytes_per_token > 0 ? static_cast<double>(mha_kv_cache_bytes_per_token) / kv_cache_bytes_per_token : 0.0;
  }
};
AttentionStats attention_stats(const GPTConfig& c);

}  // namespace flashgpt
