#include "flashgpt/model/gpt.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "flashgpt/core/error.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/ops/activation.h"
#include "flashgpt/ops/cross_entropy.h"
#include "flashgpt/ops/elementwise.h"
#include "flashgpt/ops/embedding.h"
#include "flashgpt/ops/matmul.h"
#include "flashgpt/ops/norm.h"

namespace flashgpt {

template <typename T>
GPT<T>::GPT(const GPTConfig& config) : config_(config) {
  config_.validate();
  specs_ = param_specs(config_);
  int64_t total = specs_.empty() ? 0 : specs_.back().offset + specs_.back().numel();
  params_.assign(static_cast<size_t>(total), T(0));
  grads_.assign(static_cast<size_t>(total), T(0));
  if (config_.pos == PosKind::Rope) rope_ = ops::RopeTable<T>(config_.block_size, config_.head_dim(), config_.rope_theta);
}

template <typename T>
const ParamSpec& GPT<T>::spec(const std::string& name) const {
  for (const ParamSpec& s : specs_) {
    if (s.name == name) return s;
  }
  fail("model has no parameter '{}'", name);
}

template <typename T>
typename GPT<T>::LayerParams GPT<T>::layer_params(const T* base, int l) const {
  // Looks the block's tensors up by name once per call; names, not positions, tie code to params.h.
  const std::string prefix = "blocks." + std::to_string(l) + ".";
  auto find = [&](const char* suffix) -> const T* {
    const std::string name = prefix + suffix;
    for (const ParamSpec& s : specs_) {
      if (s.name == name) return base + s.offset;
    }
    return nullptr;
  };
  LayerParams p;
  p.ln1_w = find("ln1.weight");
  p.ln1_b = find("ln1.bias");
  p.qkv_w = find("attn.qkv.weight");
  p.qkv_b = find("attn.qkv.bias");
  p.q_norm_w = find("attn.q_norm.weight");
  p.k_norm_w = find("attn.k_norm.weight");
  p.proj_w = find("attn.proj.weight");
  p.proj_b = find("attn.proj.bias");
  p.post_attn_w = find("post_attn_norm.weight");
  p.post_attn_b = find("post_attn_norm.bias");
  p.ln2_w = find("ln2.weight");
  p.ln2_b = find("ln2.bias");
  p.fc_w = find("mlp.fc.weight");
  p.fc_b = find("mlp.fc.bias");
  p.mlp_proj_w = find("mlp.proj.weight");
  p.mlp_proj_b = find("mlp.proj.bias");
  p.post_mlp_w = find("post_mlp_norm.weight");
  p.post_mlp_b = find("post_mlp_norm.bias");
  return p;
}

template <typename T>
void GPT<T>::init_weights(uint64_t seed) {
  Rng rng(seed);
  for (const ParamSpec& s : specs_) {
    T* p = params_.data() + s.offset;
    const int64_t n = s.numel();
    switch (s.init) {
      case ParamInit::Zeros: std::fill(p, p + n, T(0)); break;
      case ParamInit::Ones: std::fill(p, p + n, T(1)); break;
      case ParamInit::Normal:
        for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(rng.normal() * s.init_std);
        break;
    }
  }
  // Padding rows of the vocabulary stay zero: never sampled, never trained.
  const int64_t C = config_.n_embd, V = config_.vocab_size, Vp = config_.padded_vocab_size();
  for (const char* name : {"wte", "lm_head.weight"}) {
    for (const ParamSpec& s : specs_) {
      if (s.name == name) std::fill(params_.data() + s.offset + V * C, params_.data() + s.offset + Vp * C, T(0));
    }
  }
}

template <typename T>
void GPT<T>::zero_grad() {
  std::fill(grads_.begin(), grads_.end(), T(0));
}

template <typename T>
AttentionKernel GPT<T>::attention_kernel() const {
  return config_.attention == AttentionKind::Flash ? AttentionKernel::Flash : AttentionKernel::Standard;
}

template <typename T>
void GPT<T>::allocate(Activations& a, int64_t B, int64_t Tn, bool per_layer, int64_t logit_rows) {
  if (a.B == B && a.Tn == Tn && a.per_layer == per_layer && !a.storage.empty()) return;
  const GPTConfig& c = config_;
  const int64_t N = B * Tn, C = c.n_embd, qd = c.q_dim(), kvd = c.kv_dim();
  const int64_t Hq = c.n_head, Hkv = c.kv_heads(), Vp = c.padded_vocab_size();
  const int64_t n_sets = per_layer ? c.n_layer : 1;
  const int64_t per_block = N * (C * 6 + qd * 3 + kvd * 4 + c.fc_out() + c.hidden()) + N * (Hq + Hkv + 6) + B * Hq * Tn;
  const int64_t total = n_sets * per_block + (c.n_layer + 1) * N * C + N * C * 2 + N * 3 + logit_rows * Vp;
  a.storage.assign(static_cast<size_t>(total), T(0));
  T* cursor = a.storage.data();
  auto take = [&](int64_t n) {
    T* p = cursor;
    cursor += n;
    return p;
  };
  a.layers.resize(static_cast<size_t>(c.n_layer));
  for (int64_t s = 0; s < n_sets; ++s) {
    LayerActs& L = a.layers[static_cast<size_t>(s)];
    L.ln1 = take(N * C);
    L.ln1_mean = take(N);
    L.ln1_rstd = take(N);
    L.q = take(N * qd);
    L.k = take(N * kvd);
    L.v = take(N * kvd);
    L.q_rstd = take(N * Hq);
    L.k_rstd = take(N * Hkv);
    L.qa = take(N * qd);
    L.ka = take(N * kvd);
    L.att = take(N * qd);
    L.lse = take(B * Hq * Tn);
    L.proj = take(N * C);
    L.post_attn_mean = take(N);
    L.post_attn_rstd = take(N);
    L.res_mid = take(N * C);
    L.ln2 = take(N * C);
    L.ln2_mean = take(N);
    L.ln2_rstd = take(N);
    L.fc = take(N * c.fc_out());
    L.act = take(N * c.hidden());
    L.mlp_proj = take(N * C);
    L.post_mlp_mean = take(N);
    L.post_mlp_rstd = take(N);
  }
  for (size_t l = static_cast<size_t>(n_sets); l < a.layers.size(); ++l) a.layers[l] = a.layers[0];
  a.resid.resize(static_cast<size_t>(c.n_layer + 1));
  for (auto& r : a.resid) r = take(N * C);
  a.lnf = take(N * C);
  a.branch = take(N * C);
  a.lnf_mean = take(N);
  a.lnf_rstd = take(N);
  a.losses = take(N);
  a.logits = take(logit_rows * Vp);
  a.B = B;
  a.Tn = Tn;
  a.per_layer = per_layer;
}

template <typename T>
void GPT<T>::allocate_scratch(int64_t N) {
  const GPTConfig& c = config_;
  const int64_t C = c.n_embd, qd = c.q_dim(), kvd = c.kv_dim();
  const int64_t total = N * (3 * C + c.fc_out() + c.hidden() + 3 * qd + 4 * kvd);
  if (static_cast<int64_t>(scratch_.storage.size()) == total) return;
  scratch_.storage.assign(static_cast<size_t>(total), T(0));
  T* p = scratch_.storage.data();
  auto take = [&](int64_t n) {
    T* r = p;
    p += n;
    return r;
  };
  scratch_.dres = take(N * C);
  scratch_.dln = take(N * C);
  scratch_.dbranch = take(N * C);
  scratch_.dfc = take(N * c.fc_out());
  scratch_.dact = take(N * c.hidden());
  scratch_.datt = take(N * qd);
  scratch_.dqa = take(N * qd);
  scratch_.dq = take(N * qd);
  scratch_.dka = take(N * kvd);
  scratch_.dk = take(N * kvd);
  scratch_.dv = take(N * kvd);
}

template <typename T>
void GPT<T>::check_tokens(const int* tokens, int64_t n, const char* what) const {
  for (int64_t i = 0; i < n; ++i) {
    FLASHGPT_CHECK(tokens[i] >= 0 && tokens[i] < config_.vocab_size,
                   "{} id {} at index {} is out of range for vocab_size {}", what, tokens[i], i, config_.vocab_size);
  }
}

template <typename T>
void GPT<T>::block_forward(int l, LayerActs& a, const T* x, T* out, T* branch, int64_t B, int64_t Tn,
                           KVCache<T>* cache, const int32_t* segments) {
  const GPTConfig& c = config_;
  const LayerParams P = layer_params(params_.data(), l);
  const int64_t N = B * Tn, C = c.n_embd, hd = c.head_dim(), Hq = c.n_head, Hkv = c.kv_heads();
  const int64_t qd = c.q_dim(), kvd = c.kv_dim();
  const T eps = static_cast<T>(c.norm_eps);
  const int64_t pos0 = cache ? cache->length : 0;

  ops::norm_forward(c.norm, a.ln1, a.ln1_mean, a.ln1_rstd, x, P.ln1_w, P.ln1_b, N, C, eps);
  ops::matmul_forward(a.q, a.ln1, P.qkv_w, P.qkv_b, N, C, qd);
  ops::matmul_forward(a.k, a.ln1, P.qkv_w + qd * C, P.qkv_b ? P.qkv_b + qd : nullptr, N, C, kvd);
  ops::matmul_forward(a.v, a.ln1, P.qkv_w + (qd + kvd) * C, P.qkv_b ? P.qkv_b + qd + kvd : nullptr, N, C, kvd);
  if (c.qk_norm) {
    ops::rmsnorm_forward(a.qa, a.q_rstd, a.q, P.q_norm_w, N * Hq, hd, eps);
    ops::rmsnorm_forward(a.ka, a.k_rstd, a.k, P.k_norm_w, N * Hkv, hd, eps);
  } else {
    std::copy(a.q, a.q + N * qd, a.qa);
    std::copy(a.k, a.k + N * kvd, a.ka);
  }
  if (c.pos == PosKind::Rope) {
    ops::rope_forward(a.qa, rope_, B, Tn, Hq, hd, pos0);
    ops::rope_forward(a.ka, rope_, B, Tn, Hkv, hd, pos0);
  }

  AttentionDims dims{B, Hq, Hkv, Tn, Tn, hd, hd, 0};
  AttentionMask mask{true, 0};
  mask.q_segments = segments;
  mask.kv_segments = segments;
  const T* k_src = a.ka;
  const T* v_src = a.v;
  if (cache) {
    // Append this step's keys and values, then attend over everything cached so far.
    const int64_t layer_off = static_cast<int64_t>(l) * cache->B * cache->capacity * kvd;
    for (int64_t b = 0; b < B; ++b) {
      T* kc = cache->k.data() + layer_off + (b * cache->capacity + pos0) * kvd;
      T* vc = cache->v.data() + layer_off + (b * cache->capacity + pos0) * kvd;
      std::copy(a.ka + b * Tn * kvd, a.ka + (b + 1) * Tn * kvd, kc);
      std::copy(a.v + b * Tn * kvd, a.v + (b + 1) * Tn * kvd, vc);
    }
    k_src = cache->k.data() + layer_off;
    v_src = cache->v.data() + layer_off;
    dims.Tk = pos0 + Tn;
    dims.Tk_stride = cache->capacity;
    mask.q_offset = pos0;
  }
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  attention_forward(attention_kernel(), dims, mask, scale, a.qa, k_src, v_src, a.att, a.lse, tiling_);

  ops::matmul_forward(a.proj, a.att, P.proj_w, P.proj_b, N, qd, C);
  const T* attn_out = a.proj;
  if (c.post_norm) {
    ops::norm_forward(c.norm, branch, a.post_attn_mean, a.post_attn_rstd, a.proj, P.post_attn_w, P.post_attn_b, N, C,
                      eps);
    attn_out = branch;
  }
  ops::add(a.res_mid, x, attn_out, N * C);

  ops::norm_forward(c.norm, a.ln2, a.ln2_mean, a.ln2_rstd, a.res_mid, P.ln2_w, P.ln2_b, N, C, eps);
  ops::matmul_forward(a.fc, a.ln2, P.fc_w, P.fc_b, N, C, c.fc_out());
  if (c.mlp == MlpKind::Gelu) {
    ops::gelu_forward(a.act, a.fc, N * c.hidden());
  } else {
    ops::swiglu_forward(a.act, a.fc, N, c.hidden());
  }
  ops::matmul_forward(a.mlp_proj, a.act, P.mlp_proj_w, P.mlp_proj_b, N, c.hidden(), C);
  const T* mlp_out = a.mlp_proj;
  if (c.post_norm) {
    ops::norm_forward(c.norm, branch, a.post_mlp_mean, a.post_mlp_rstd, a.mlp_proj, P.post_mlp_w, P.post_mlp_b, N, C,
                      eps);
    mlp_out = branch;
  }
  ops::add(out, a.res_mid, mlp_out, N * C);
}

template <typename T>
double GPT<T>::forward(const int* tokens, const int* targets, int64_t B, int64_t Tn, const int32_t* segments) {
  const GPTConfig& c = config_;
  FLASHGPT_CHECK(B > 0 && Tn > 0, "forward: batch {} and sequence length {} must be positive", B, Tn);
  FLASHGPT_CHECK(Tn <= c.block_size, "sequence length {} exceeds the model's block_size {}", Tn, c.block_size);
  const int64_t N = B * Tn, C = c.n_embd, V = c.vocab_size, Vp = c.padded_vocab_size();
  check_tokens(tokens, N, "token");
  allocate(train_, B, Tn, /*per_layer=*/true, N);
  Activations& a = train_;
  a.tokens.assign(tokens, tokens + N);
  if (targets) {
    for (int64_t i = 0; i < N; ++i) {
      FLASHGPT_CHECK(targets[i] >= -1 && targets[i] < V, "target id {} at index {} is out of range for vocab_size {}",
                     targets[i], i, V);
    }
    a.targets.assign(targets, targets + N);
  } else {
    a.targets.clear();
  }
  if (segments) {
    segments_.assign(segments, segments + N);
  } else {
    segments_.clear();
  }
  const int32_t* seg = segments_.empty() ? nullptr : segments_.data();

  const T* wte = params_.data() + spec("wte").offset;
  const T* wpe = c.pos == PosKind::Learned ? params_.data() + spec("wpe").offset : nullptr;
  ops::embedding_forward(a.resid[0], tokens, wte, wpe, B, Tn, C, 0);
  for (int l = 0; l < c.n_layer; ++l) {
    block_forward(l, a.layers[static_cast<size_t>(l)], a.resid[static_cast<size_t>(l)],
                  a.resid[static_cast<size_t>(l) + 1], a.branch, B, Tn, nullptr, seg);
  }
  const T* lnf_w = params_.data() + spec("lnf.weight").offset;
  const T* lnf_b = c.norm == NormKind::LayerNorm && c.bias ? params_.data() + spec("lnf.bias").offset : nullptr;
  ops::norm_forward(c.norm, a.lnf, a.lnf_mean, a.lnf_rstd, a.resid.back(), lnf_w, lnf_b, N, C,
                    static_cast<T>(c.norm_eps));
  const T* w_lm = params_.data() + spec(c.tie_embeddings ? "wte" : "lm_head.weight").offset;
  ops::matmul_forward(a.logits, a.lnf, w_lm, static_cast<const T*>(nullptr), N, C, Vp);
  have_forward_ = targets != nullptr;
  if (!targets) return 0.0;
  a.n_targets = std::count_if(targets, targets + N, [](int t) { return t >= 0; });
  return ops::softmax_cross_entropy_forward(a.logits, a.losses, targets, N, V, Vp);
}

template <typename T>
void GPT<T>::block_backward(int l, LayerActs& a, const T* x, int64_t B, int64_t Tn, const int32_t* segments) {
  const GPTConfig& c = config_;
  const LayerParams P = layer_params(params_.data(), l);
  const LayerParams G = layer_params(grads_.data(), l);
  auto g = [](const T* p) { return const_cast<T*>(p); };
  const int64_t N = B * Tn, C = c.n_embd, hd = c.head_dim(), Hq = c.n_head, Hkv = c.kv_heads();
  const int64_t qd = c.q_dim(), kvd = c.kv_dim(), F = c.hidden();
  Scratch& s = scratch_;

  // MLP branch: s.dres holds the gradient of the block output.
  const T* dmlp = s.dres;
  if (c.post_norm) {
    ops::norm_backward(c.norm, s.dbranch, g(G.post_mlp_w), g(G.post_mlp_b), s.dres, a.mlp_proj, P.post_mlp_w,
                       a.post_mlp_mean, a.post_mlp_rstd, N, C, false);
    dmlp = s.dbranch;
  }
  ops::matmul_backward(s.dact, g(G.mlp_proj_w), g(G.mlp_proj_b), dmlp, a.act, P.mlp_proj_w, N, F, C, false);
  if (c.mlp == MlpKind::Gelu) {
    ops::gelu_backward(s.dfc, a.fc, s.dact, N * F);
  } else {
    ops::swiglu_backward(s.dfc, a.fc, s.dact, N, F);
  }
  ops::matmul_backward(s.dln, g(G.fc_w), g(G.fc_b), s.dfc, a.ln2, P.fc_w, N, C, c.fc_out(), false);
  ops::norm_backward(c.norm, s.dres, g(G.ln2_w), g(G.ln2_b), s.dln, a.res_mid, P.ln2_w, a.ln2_mean, a.ln2_rstd, N, C,
                     true);

  // Attention branch: s.dres now holds the gradient of x'.
  const T* dattn = s.dres;
  if (c.post_norm) {
    ops::norm_backward(c.norm, s.dbranch, g(G.post_attn_w), g(G.post_attn_b), s.dres, a.proj, P.post_attn_w,
                       a.post_attn_mean, a.post_attn_rstd, N, C, false);
    dattn = s.dbranch;
  }
  ops::matmul_backward(s.datt, g(G.proj_w), g(G.proj_b), dattn, a.att, P.proj_w, N, qd, C, false);
  const AttentionDims dims{B, Hq, Hkv, Tn, Tn, hd, hd, 0};
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  AttentionMask mask{true, 0};
  mask.q_segments = segments;
  mask.kv_segments = segments;
  attention_backward(attention_kernel(), dims, mask, scale, a.qa, a.ka, a.v, a.att, a.lse, s.datt, s.dqa, s.dka, s.dv,
                     tiling_);
  if (c.pos == PosKind::Rope) {
    ops::rope_backward(s.dqa, rope_, B, Tn, Hq, hd, 0);
    ops::rope_backward(s.dka, rope_, B, Tn, Hkv, hd, 0);
  }
  const T* dq = s.dqa;
  const T* dk = s.dka;
  if (c.qk_norm) {
    ops::rmsnorm_backward(s.dq, g(G.q_norm_w), s.dqa, a.q, P.q_norm_w, a.q_rstd, N * Hq, hd, false);
    ops::rmsnorm_backward(s.dk, g(G.k_norm_w), s.dka, a.k, P.k_norm_w, a.k_rstd, N * Hkv, hd, false);
    dq = s.dq;
    dk = s.dk;
  }
  T* gqkv_b = g(G.qkv_b);
  ops::matmul_backward(s.dln, g(G.qkv_w), gqkv_b, dq, a.ln1, P.qkv_w, N, C, qd, false);
  ops::matmul_backward(s.dln, g(G.qkv_w) + qd * C, gqkv_b ? gqkv_b + qd : nullptr, dk, a.ln1, P.qkv_w + qd * C, N, C,
                       kvd, true);
  ops::matmul_backward(s.dln, g(G.qkv_w) + (qd + kvd) * C, gqkv_b ? gqkv_b + qd + kvd : nullptr, s.dv, a.ln1,
                       P.qkv_w + (qd + kvd) * C, N, C, kvd, true);
  ops::norm_backward(c.norm, s.dres, g(G.ln1_w), g(G.ln1_b), s.dln, x, P.ln1_w, a.ln1_mean, a.ln1_rstd, N, C, true);
}

template <typename T>
void GPT<T>::backward(T loss_scale) {
  FLASHGPT_CHECK(have_forward_, "backward: call forward with targets first");
  const GPTConfig& c = config_;
  Activations& a = train_;
  const int64_t B = a.B, Tn = a.Tn, N = B * Tn, C = c.n_embd, V = c.vocab_size, Vp = c.padded_vocab_size();
  allocate_scratch(N);
  const T per_token = a.n_targets > 0 ? loss_scale / static_cast<T>(a.n_targets) : T(0);
  ops::softmax_cross_entropy_backward(a.logits, a.targets.data(), N, V, Vp, per_token);

  const std::string lm = c.tie_embeddings ? "wte" : "lm_head.weight";
  ops::matmul_backward(scratch_.dln, grad(lm), static_cast<T*>(nullptr), a.logits, a.lnf, param(lm), N, C, Vp, false);
  const bool lnf_bias = c.norm == NormKind::LayerNorm && c.bias;
  ops::norm_backward(c.norm, scratch_.dres, grad("lnf.weight"), lnf_bias ? grad("lnf.bias") : nullptr, scratch_.dln,
                     a.resid.back(), param("lnf.weight"), a.lnf_mean, a.lnf_rstd, N, C, false);
  for (int l = c.n_layer - 1; l >= 0; --l) {
    block_backward(l, a.layers[static_cast<size_t>(l)], a.resid[static_cast<size_t>(l)], B, Tn,
                   segments_.empty() ? nullptr : segments_.data());
  }
  ops::embedding_backward(grad("wte"), c.pos == PosKind::Learned ? grad("wpe") : nullptr, scratch_.dres,
                          a.tokens.data(), B, Tn, C);
  have_forward_ = false;  // the logits buffer now holds gradients
}

template <typename T>
KVCache<T> GPT<T>::make_cache(int64_t B, int64_t capacity) const {
  FLASHGPT_CHECK(B > 0, "KV cache: batch {} must be positive", B);
  FLASHGPT_CHECK(capacity > 0 && capacity <= config_.block_size,
                 "KV cache: capacity {} must be between 1 and the model's block_size {}", capacity, config_.block_size);
  KVCache<T> cache;
  cache.B = B;
  cache.capacity = capacity;
  const size_t n = static_cast<size_t>(config_.n_layer) * B * capacity * config_.kv_dim();
  cache.k.assign(n, T(0));
  cache.v.assign(n, T(0));
  return cache;
}

template <typename T>
void GPT<T>::forward_cached(KVCache<T>& cache, const int* tokens, int64_t B, int64_t Tn, T* logits_out,
                            bool all_positions) {
  const GPTConfig& c = config_;
  FLASHGPT_CHECK(B == cache.B, "decode: batch {} does not match the KV cache's batch {}", B, cache.B);
  FLASHGPT_CHECK(Tn > 0, "decode: no tokens given");
  FLASHGPT_CHECK(cache.length + Tn <= cache.capacity,
                 "sequence length {} exceeds the KV cache capacity {} (the model's block_size is {})",
                 cache.length + Tn, cache.capacity, c.block_size);
  const int64_t N = B * Tn, C = c.n_embd, Vp = c.padded_vocab_size();
  check_tokens(tokens, N, "token");
  const int64_t logit_rows = all_positions ? N : B;
  allocate(infer_, B, Tn, /*per_layer=*/false, logit_rows);
  Activations& a = infer_;
  const T* wpe = c.pos == PosKind::Learned ? param("wpe") : nullptr;
  ops::embedding_forward(a.resid[0], tokens, param("wte"), wpe, B, Tn, C, cache.length);
  for (int l = 0; l < c.n_layer; ++l) {
    // Layers share one activation set in inference; streams alternate between two buffers.
    block_forward(l, a.layers[0], a.resid[static_cast<size_t>(l % 2)], a.resid[static_cast<size_t>((l + 1) % 2)],
                  a.branch, B, Tn, &cache, nullptr);
  }
  T* x = a.resid[static_cast<size_t>(c.n_layer % 2)];
  const T* rows = x;
  int64_t n_rows = N;
  if (!all_positions) {  // only the last position of each sequence needs logits
    for (int64_t b = 0; b < B; ++b) std::copy(x + ((b + 1) * Tn - 1) * C, x + (b + 1) * Tn * C, a.branch + b * C);
    rows = a.branch;
    n_rows = B;
  }
  const bool lnf_bias = c.norm == NormKind::LayerNorm && c.bias;
  ops::norm_forward(c.norm, a.lnf, a.lnf_mean, a.lnf_rstd, rows, param("lnf.weight"),
                    lnf_bias ? param("lnf.bias") : nullptr, n_rows, C, static_cast<T>(c.norm_eps));
  ops::matmul_forward(logits_out, a.lnf, param(c.tie_embeddings ? "wte" : "lm_head.weight"),
                      static_cast<const T*>(nullptr), n_rows, C, Vp);
  cache.length += Tn;
}

template class GPT<float>;
template class GPT<double>;

}  // namespace flashgpt
