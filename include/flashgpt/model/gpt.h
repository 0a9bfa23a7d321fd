// GPT<T>: the model, with a hand-written forward and backward (no autograd), templated on the
// scalar so the same code trains in float and is gradient-checked in double.
//
// Block l (x: the residual stream [B, T, C]):
//   h   = norm_ln1(x);  q, k, v = h·W_qkvᵀ (+b);  q, k = rope(qk_norm(q, k));  a = attention(q, k, v)
//   x'  = x + post_attn_norm?(a·W_projᵀ (+b))
//   x'' = x' + post_mlp_norm?(act(norm_ln2(x')·W_fcᵀ (+b))·W_mlp_projᵀ (+b))
// then lnf and the LM head (tied to wte unless tie_embeddings = false) over the padded vocabulary.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "flashgpt/attention/attention.h"
#include "flashgpt/model/config.h"
#include "flashgpt/model/params.h"
#include "flashgpt/ops/rope.h"

namespace flashgpt {

// Keys and values of every layer for incremental decoding: k, v [L][B][capacity][Hkv][head_dim].
template <typename T>
struct KVCache {
  int64_t B = 0;
  int64_t capacity = 0;
  int64_t length = 0;  // tokens already cached (the same for every sequence of the batch)
  std::vector<T> k, v;
  int64_t bytes() const { return static_cast<int64_t>((k.size() + v.size()) * sizeof(T)); }
};

template <typename T>
class GPT {
 public:
  explicit GPT(const GPTConfig& config);

  const GPTConfig& config() const { return config_; }
  // Tile sizes of the flash kernel (0: automatic).
  void set_attention_tiling(const AttentionTiling& t) { tiling_ = t; }
  const std::vector<ParamSpec>& specs() const { return specs_; }
  int64_t num_params() const { return static_cast<int64_t>(params_.size()); }
  std::span<T> params() { return params_; }
  std::span<const T> params() const { return params_; }
  std::span<T> grads() { return grads_; }
  std::span<const T> grads() const { return grads_; }
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

  // Incremental decoding: runs Tn new tokens per sequence at positions cache.length … and appends
  // their keys and values to the cache. Writes logits [B, Vp] of the last new position, or
  // [B, Tn, Vp] of every new position when all_positions is true.
  KVCache<T> make_cache(int64_t B, int64_t capacity) const;
  void forward_cached(KVCache<T>& cache, const int* tokens, int64_t B, int64_t Tn, T* logits_out,
                      bool all_positions = false);

 private:
  struct LayerParams {
    const T *ln1_w = nullptr, *ln1_b = nullptr, *qkv_w = nullptr, *qkv_b = nullptr, *q_norm_w = nullptr,
            *k_norm_w = nullptr, *proj_w = nullptr, *proj_b = nullptr, *post_attn_w = nullptr,
            *post_attn_b = nullptr, *ln2_w = nullptr, *ln2_b = nullptr, *fc_w = nullptr, *fc_b = nullptr,
            *mlp_proj_w = nullptr, *mlp_proj_b = nullptr, *post_mlp_w = nullptr, *post_mlp_b = nullptr;
  };
  // Saved activations of one block, N = B·Tn rows.
  struct LayerActs {
    T* ln1;       // [N, C]
    T* ln1_mean;  // [N]
    T* ln1_rstd;  // [N]
    T* q;         // [N, Hq·hd]   projections before qk_norm / rope
    T* k;         // [N, Hkv·hd]
    T* v;         // [N, Hkv·hd]
    T* q_rstd;    // [N·Hq]       qk_norm statistics
    T* k_rstd;    // [N·Hkv]
    T* qa;        // [N, Hq·hd]   q and k as attention sees them
    T* ka;        // [N, Hkv·hd]
    T* att;       // [N, Hq·hd]   attention output
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
  };

  void allocate(Activations& a, int64_t B, int64_t Tn, bool per_layer, int64_t logit_rows);
  void allocate_scratch(int64_t N);
  LayerParams layer_params(const T* base, int l) const;
  void check_tokens(const int* tokens, int64_t n, const char* what) const;
  void block_forward(int l, LayerActs& a, const T* x, T* out, T* branch, int64_t B, int64_t Tn, KVCache<T>* cache,
                     const int32_t* segments);
  void block_backward(int l, LayerActs& a, const T* x, int64_t B, int64_t Tn, const int32_t* segments);
  AttentionKernel attention_kernel() const;

  GPTConfig config_;
  std::vector<ParamSpec> specs_;
  std::vector<T> params_, grads_;
  std::vector<int64_t> layer_offsets_;  // per layer: index of its first ParamSpec
  ops::RopeTable<T> rope_;
  Activations train_, infer_;
  Scratch scratch_;
  bool have_forward_ = false;
  AttentionTiling tiling_;
  std::vector<int32_t> segments_;  // of the last training forward (empty: no document masking)
};

extern template class GPT<float>;
extern template class GPT<double>;

}  // namespace flashgpt
