// GPT<T>: the model, with a hand-written forward and backward (no autograd), templated on the
// scalar so the same code trains in float and is gradient-checked in double.
//
// Block l (x: the residual stream [B, T, C]):
//   h   = norm_ln1(x);  a = attention(h)
//   x'  = x + post_attn_norm?(a·W_projᵀ (+b))
//   x'' = x' + post_mlp_norm?(act(norm_ln2(x')·W_fcᵀ (+b))·W_mlp_projᵀ (+b))
// then lnf and the LM head (tied to wte unless tie_embeddings = false) over the padded vocabulary.
//
// attention(h), by config.attention:
//   standard / flash (CausalSelfAttention / FlashCausalSelfAttention, gpt_attention_mha.cpp):
//     q, k, v = h·W_qkvᵀ (+b);  q, k = rope(qk_norm(q, k));  a = kernel(q, k, v)
//   mla / flash_mla (MultiHeadLatentAttention / FlashMLA, gpt_attention_mla.cpp), per DeepSeek-V2:
//     c_kv = RMSNorm(h·W_kv_downᵀ)                    latent, n_latent wide (the decode cache)
//     k_r  = rope(k_norm?(h·W_k_ropeᵀ))               one rope key of rope_dim shared by all heads
//     q    = h·W_qᵀ, or q_up(RMSNorm(h·W_q_downᵀ))   per head [q_nope (head_dim), q_rope (rope_dim)]
//     q    = q_norm?(q), then rope on the q_rope part
//     per head: k = [c_kv·W_k_up,hᵀ, k_r],  v = c_kv·W_v_up,hᵀ;  a = kernel(q, k, v), scale 1/√(head_dim + rope_dim)
//   Decoding attends straight over the cached [c_kv, k_r] rows with W_k_up folded into the query
//   and W_v_up into the output (weight absorption): MQA with Dqk = n_latent + rope_dim, Dv = n_latent.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "flashgpt/attention/attention.h"
#include "flashgpt/model/config.h"
#include "flashgpt/model/params.h"
#include "flashgpt/ops/rope.h"

namespace flashgpt {

namespace dist {
class ContextParallel;
}

// The decoding cache of every layer. Multi-head attention keeps keys and values,
// k, v [L][B][capacity][Hkv][head_dim]; latent attention keeps only latent [L][B][capacity][row]
// with row = [c_kv (n_latent), k_rope (rope_dim)].
template <typename T>
struct KVCache {
  int64_t B = 0;
  int64_t capacity = 0;
  std::vector<int64_t> lengths;  // tokens already cached, per sequence [B]
  // The tokens cached when every sequence has as many (an error otherwise).
  int64_t length() const;
  // Sequence b starts over at length 0 (a new prompt taking its slot); its old rows are never read
  // again, only overwritten.
  void restart(int64_t b);
  std::vector<T> k, v;
  std::vector<T> latent;
  int64_t latent_row = 0;  // n_latent + rope_dim
  int64_t bytes() const { return static_cast<int64_t>((k.size() + v.size() + latent.size()) * sizeof(T)); }
};

// An empty cache for B sequences of up to `capacity` tokens, laid out for the config's mechanism;
// its bytes() are exactly attention_stats(config).kv_cache_bytes_per_token · B · capacity in fp32.
template <typename T>
KVCache<T> make_kv_cache(const GPTConfig& config, int64_t B, int64_t capacity);

// How latent attention decodes: Absorbed (the fast path: attention over the latent cache with the
// up-projections folded into query and output) or Expanded (the reference: every cached latent
// re-expanded into per-head keys and values, then ordinary attention). Both read the same cache.
enum class MlaDecode { Absorbed, Expanded };

template <typename T>
class GPT {
 public:
  explicit GPT(const GPTConfig& config);

  const GPTConfig& config() const { return config_; }
  // Tile sizes of the flash kernel (0: automatic).
  void set_attention_tiling(const AttentionTiling& t) { tiling_ = t; }
  void set_mla_decode(MlaDecode m) { mla_decode_ = m; }
  const std::vector<ParamSpec>& specs() const { return specs_; }
  int64_t num_params() const { return static_cast<int64_t>(params_.size()); }
  std::span<T> params() { return params_; }
  std::span<const T> params() const { return params_; }
  // Empty after release_gradients() until the next zero_grad() or backward().
  std::span<T> grads() { return grads_; }
  std::span<const T> grads() const { return grads_; }
  // Frees the gradients (as many values as parameters) of a model that only holds weights — for
  // checkpoints and samples while another (the GPU's) trains. zero_grad() or backward() brings
  // them back, zeroed.
  void release_gradients() { std::vector<T>().swap(grads_); }
  const ParamSpec& spec(const std::string& name) const;  // throws naming the tensor if absent
  T* param(const std::string& name) { return params_.data() + spec(name).offset; }
  T* grad(const std::string& name) { return grads_.data() + spec(name).offset; }

  // GPT-2 initialisation from a seed; the padding rows of the vocabulary are zero.
  void init_weights(uint64_t seed);
  void zero_grad();

  // Forward over tokens [B, Tn] (Tn ≤ block_size). With targets (−1 = ignore) returns the mean loss
  // and keeps every activation the backward needs; without, leaves logits [B, Tn, Vp] in logits().
  // segments (optional, [B, Tn]): document ids for document masking — a token attends only to
  // earlier tokens of its own document.
  double forward(const int* tokens, const int* targets, int64_t B, int64_t Tn, const int32_t* segments = nullptr);
  // Backward of the last forward with targets; adds the gradient of loss_scale · loss into grads().
  void backward(T loss_scale = T(1));
  const T* logits() const { return train_.logits; }
  // Per-token losses of the last forward with targets [B·Tn].
  const T* losses() const { return train_.losses; }

  // Context parallelism (dist/context_parallel.h): forward and backward then take this rank's rows
  // of each sequence — tokens, targets and segments [B, cp->local_len()], cut by cp->slice() — at
  // their global positions, and each layer's attention gathers keys and values from the group.
  // The loss is the mean over the local rows. Null switches it off. Latent attention gathers its
  // expanded per-head keys and values.
  void set_context_parallel(const dist::ContextParallel* cp);
  // Called by backward() with each block's parameter range [offset, offset + count) as soon as
  // that block's gradient is complete (last block first), so data parallelism can reduce it while
  // the backward runs on. The embeddings and final norm are complete only when backward returns.
  using GradsReadyHook = std::function<void(int64_t offset, int64_t count)>;
  void set_grads_ready_hook(GradsReadyHook hook) { grads_ready_ = std::move(hook); }
  std::pair<int64_t, int64_t> block_param_range(int l) const { return block_ranges_[static_cast<size_t>(l)]; }

  // Incremental decoding: runs Tn new tokens per sequence (tokens [B, Tn]) at positions
  // cache.lengths[b] … and appends their keys and values to the cache. Writes logits [B, Vp] of
  // each sequence's last new token, or [B, Tn, Vp] of every new position when all_positions is
  // true. Sequences may hold different lengths. `counts` (optional, [B]) makes the batch ragged:
  // sequence b reads only the first counts[b] ≤ Tn tokens of its row — the rest is padding, which
  // the step leaves out (only the tokens read go through the layers) — and its logits are those of
  // token counts[b] − 1; a sequence with count 0 is left alone (its logits row is zero, or with
  // all_positions every padded position's). Every sequence must have room for the tokens it reads:
  // lengths[b] + counts[b] ≤ capacity, as on the GPU.
  KVCache<T> make_cache(int64_t B, int64_t capacity) const;
  void forward_cached(KVCache<T>& cache, const int* tokens, int64_t B, int64_t Tn, T* logits_out,
                      bool all_positions = false, std::span<const int32_t> counts = {});

 private:
  struct LayerParams {
    const T *ln1_w = nullptr, *ln1_b = nullptr, *qkv_w = nullptr, *qkv_b = nullptr, *q_norm_w = nullptr,
            *k_norm_w = nullptr, *proj_w = nullptr, *proj_b = nullptr, *post_attn_w = nullptr,
            *post_attn_b = nullptr, *ln2_w = nullptr, *ln2_b = nullptr, *fc_w = nullptr, *fc_b = nullptr,
            *mlp_proj_w = nullptr, *mlp_proj_b = nullptr, *post_mlp_w = nullptr, *post_mlp_b = nullptr;
    // latent attention
    const T *q_w = nullptr, *q_b = nullptr, *q_down_w = nullptr, *q_down_b = nullptr, *q_down_norm_w = nullptr,
            *q_up_w = nullptr, *kv_down_w = nullptr, *kv_down_b = nullptr, *kv_norm_w = nullptr, *k_rope_w = nullptr,
            *k_rope_b = nullptr, *k_up_w = nullptr, *v_up_w = nullptr, *v_up_u_w = nullptr, *v_up_v_w = nullptr;
  };
  // Saved activations of one block, N = B·Tn rows.
  struct LayerActs {
    T* ln1;       // [N, C]
    T* ln1_mean;  // [N]
    T* ln1_rstd;  // [N]
    T* q;         // [N, Hq·dqk]  projections before qk_norm / rope (dqk: hd, or hd + rope_dim for MLA)
    T* k;         // [N, Hkv·hd]  (MLA: the rope key [N, rope_dim])
    T* v;         // [N, Hkv·hd]  (MLA: [N, Hq·hd], expanded from the latent)
    T* q_rstd;    // [N·Hq]       qk_norm statistics
    T* k_rstd;    // [N·Hkv]      (MLA: [N])
    T* qa;        // [N, Hq·dqk]  q and k as attention sees them
    T* ka;        // [N, Hkv·hd]  (MLA: [N, Hq·dqk], [k_nope, k_rope] per head)
    T* att;       // [N, Hq·hd]   attention output
    // latent attention only
    T* cq_pre;    // [N, q_lora_rank]  query latent before / after its RMSNorm
    T* cq;
    T* cq_rstd;   // [N]
    T* ckv_pre;   // [N, n_latent]     key/value latent before / after its RMSNorm
    T* ckv;
    T* ckv_rstd;  // [N]
    T* kr;        // [N, rope_dim]     the rope key after k_norm and rope
    T* v_up;      // [Hq·hd, n_latent] the value up-projection (u·v when factored by SVD)
    T* q_abs;     // [N, Hq, n_latent + rope_dim]  absorbed queries (decoding only)
    T* o_lat;     // [N, Hq, n_latent]             attention output in the latent (decoding only)
    T* lse;       // [B, Hq, Tn]
    T* proj;      // [N, C]
    T* post_attn_mean, *post_attn_rstd;  // [N]
    T* res_mid;   // [N, C]       x' = x + attention branch
    T* ln2;       // [N, C]
    T* ln2_mean, *ln2_rstd;  // [N]
    T* fc;        // [N, fc_out]
    T* act;       // [N, F]
    T* mlp_proj;  // [N, C]
    T* post_mlp_mean, *post_mlp_rstd;  // [N]
  };
  struct Activations {
    int64_t B = 0, Tn = 0;
    bool per_layer = false;
    std::vector<T> storage;
    std::vector<LayerActs> layers;
    std::vector<T*> resid;  // L + 1 streams [N, C]; resid[l] is block l's input
    T *lnf = nullptr, *lnf_mean = nullptr, *lnf_rstd = nullptr, *logits = nullptr, *losses = nullptr;
    T* branch = nullptr;  // [N, C] scratch: a post-norm output before the residual add
    std::vector<int> tokens, targets;
    int64_t n_targets = 0;
  };
  struct Scratch {  // backward buffers, reused by every block
    std::vector<T> storage;
    T *dres, *dln, *dbranch, *dfc, *dact, *datt, *dqa, *dka, *dv, *dq, *dk;
    T *dkr, *dckv, *dckv_pre, *dcq, *dcq_pre, *dv_up;  // latent attention
  };

  void allocate(Activations& a, int64_t B, int64_t Tn, bool per_layer, int64_t logit_rows);
  void allocate_scratch(int64_t N);
  using LayerField = std::pair<const T* LayerParams::*, const char*>;  // member, name within the block
  static std::span<const LayerField> layer_fields();
  LayerParams layer_params(const T* base, int l) const;
  void check_tokens(const int* tokens, int64_t n, const char* what) const;
  void block_forward(int l, LayerActs& a, const T* x, T* out, T* branch, int64_t B, int64_t Tn, KVCache<T>* cache,
                     const int32_t* segments);
  void block_backward(int l, LayerActs& a, const T* x, int64_t B, int64_t Tn, const int32_t* segments);
  AttentionKernel attention_kernel() const;
  // The attention sublayer from a.ln1 to a.att (forward) and from scratch_.datt to scratch_.dln
  // (backward, written): multi-head in gpt_attention_mha.cpp, latent in gpt_attention_mla.cpp.
  void mha_forward(int l, const LayerParams& P, LayerActs& a, int64_t B, int64_t Tn, KVCache<T>* cache,
                   const int32_t* segments);
  void mha_backward(int l, const LayerParams& P, const LayerParams& G, LayerActs& a, int64_t B, int64_t Tn,
                    const int32_t* segments);
  void mla_forward(int l, const LayerParams& P, LayerActs& a, int64_t B, int64_t Tn, KVCache<T>* cache,
                   const int32_t* segments);
  void mla_backward(int l, const LayerParams& P, const LayerParams& G, LayerActs& a, int64_t B, int64_t Tn,
                    const int32_t* segments);
  // Decoding: the sequences a layer's attention runs together — all of them when they hold equal
  // lengths and all read the whole step, else each reading sequence alone — as runs of sequences
  // [b0, b0 + nb) at position pos, each with `rows` new tokens, the run's first at activation row
  // `first`. Alone, the rows of the sequences that read are packed one after another (a step's
  // padding never reaches the layers).
  struct CachedRun {
    int64_t b0, nb, pos, first, rows;
  };
  std::vector<CachedRun> cached_runs(const KVCache<T>& cache) const;
  void mha_cached(int l, LayerActs& a, KVCache<T>& cache, const CachedRun& run);
  void mla_cached(int l, const LayerParams& P, LayerActs& a, KVCache<T>& cache, const CachedRun& run);
  void mla_decode_absorbed(int l, const LayerParams& P, LayerActs& a, KVCache<T>& cache, const CachedRun& run);
  void mla_decode_expanded(int l, const LayerParams& P, LayerActs& a, KVCache<T>& cache, const CachedRun& run);
  const T* mla_value_up(const LayerParams& P, LayerActs& a);
  void mla_value_up_backward(const LayerParams& P, const LayerParams& G, LayerActs& a, const T* dv, const T* ckv,
                             T* dckv, int64_t N);
  // Context parallelism for latent attention: the latent rows are exchanged, not keys and values.
  void mla_cp_forward(int l, const LayerParams& P, LayerActs& a, int64_t B, int64_t Tn, const int32_t* segments);
  void mla_cp_backward(int l, const LayerParams& P, const LayerParams& G, LayerActs& a, int64_t B, int64_t Tn,
                       const int32_t* segments);
  // Context parallelism: RoPE at the rows' global positions (heads head_stride apart), and
  // attention of the local query chunks against the gathered keys and values
  // (gpt_attention_mha.cpp). k and v null: the global keys and values are already in cp_kv_ (latent
  // attention expands them there); dk and dv_out null: the global gradients stay in cp_scratch_.
  void rope_rows(T* x, int64_t B, int64_t Tn, int64_t H, int64_t D, int64_t head_stride, int64_t pos0,
                 bool backward) const;
  void cp_attention_forward(int l, const T* q, const T* k, const T* v, T* out, T* lse, int64_t B, int64_t Tn,
                            int64_t Hq, int64_t Hkv, int64_t dqk, int64_t dv, const int32_t* segments);
  void cp_attention_backward(int l, const T* q, const T* out, const T* lse, const T* dout, T* dq, T* dk, T* dv_out,
                             int64_t B, int64_t Tn, int64_t Hq, int64_t Hkv, int64_t dqk, int64_t dv,
                             const int32_t* segments);

  GPTConfig config_;
  std::vector<ParamSpec> specs_;
  std::vector<T> params_, grads_;
  std::vector<std::vector<int64_t>> layer_param_offsets_;  // per layer, per layer_fields() entry; −1: absent
  ops::RopeTable<T> rope_;
  Activations train_, infer_;
  Scratch scratch_;
  bool have_forward_ = false;
  AttentionTiling tiling_;
  MlaDecode mla_decode_ = MlaDecode::Absorbed;
  // forward_cached: the tokens each sequence reads this step, the step's row length, and whether
  // the reading sequences' rows are packed (see CachedRun).
  std::vector<int32_t> step_counts_;
  int64_t step_tn_ = 0;
  bool step_packed_ = false;
  std::vector<int32_t> segments_;  // of the last training forward (empty: no document masking)
  std::vector<std::pair<int64_t, int64_t>> block_ranges_;  // per block: parameter offset, count
  GradsReadyHook grads_ready_;
  const dist::ContextParallel* cp_ = nullptr;
  std::vector<T> cp_kv_;               // per layer: gathered keys and values [2][B, T, kv_dim]
  std::vector<T> cp_scratch_;          // backward: global dk, dv [2][B, T, kv_dim], one sequence's [2][T, kv_dim]
  std::vector<int32_t> cp_segments_;   // gathered document ids [B, T]
  std::vector<T> cp_latent_;           // latent attention, per layer: gathered [c_kv | k_rope] rows
  std::vector<T> cp_dlatent_;          // their gradients from this rank's queries, before the reduce-scatter
};

extern template class GPT<float>;
extern template class GPT<double>;

}  // namespace flashgpt
