// CausalSelfAttention and FlashCausalSelfAttention: the multi-head (and grouped-query) attention
// sublayer of GPT<T>, from the block's normed input a.ln1 to the head outputs a.att. The two
// mechanisms differ only in the kernel behind attention_forward / attention_backward.
#include <algorithm>
#include <cmath>

#include "flashgpt/dist/context_parallel.h"
#include "flashgpt/model/gpt.h"
#include "flashgpt/ops/matmul.h"
#include "flashgpt/ops/norm.h"
#include "flashgpt/ops/rope.h"

namespace flashgpt {

template <typename T>
void GPT<T>::mha_forward(int l, const LayerParams& P, LayerActs& a, int64_t B, int64_t Tn, KVCache<T>* cache,
                         const int32_t* segments) {
  const GPTConfig& c = config_;
  const int64_t N = B * Tn, C = c.n_embd, hd = c.head_dim(), Hq = c.n_head, Hkv = c.kv_heads();
  const int64_t qd = c.q_dim(), kvd = c.kv_dim();
  const T eps = static_cast<T>(c.norm_eps);

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
  if (cache) {
    std::fill(a.att, a.att + N * qd, T(0));  // the rows of sequences that read nothing stay zero
    for (const CachedRun& run : cached_runs(*cache)) mha_cached(l, a, *cache, run);
    return;
  }
  if (c.pos == PosKind::Rope) {
    rope_rows(a.qa, B, Tn, Hq, hd, hd, 0, false);
    rope_rows(a.ka, B, Tn, Hkv, hd, hd, 0, false);
  }
  if (cp_) {
    cp_attention_forward(l, a.qa, a.ka, a.v, a.att, a.lse, B, Tn, Hq, Hkv, hd, hd, segments);
    return;
  }

  const AttentionDims dims{B, Hq, Hkv, Tn, Tn, hd, hd, 0};
  AttentionMask mask{true, 0};
  if (segments) mask.q_segments = mask.kv_segments = {segments, static_cast<size_t>(B * Tn)};
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  attention_forward(attention_kernel(), dims, mask, scale, a.qa, a.ka, a.v, a.att, a.lse, tiling_);
}

// Decoding, for the sequences [b0, b0 + nb) at position pos: RoPE at their positions, this step's
// keys and values appended to the cache, then attention over everything cached so far.
template <typename T>
void GPT<T>::mha_cached(int l, LayerActs& a, KVCache<T>& cache, const CachedRun& run) {
  const GPTConfig& c = config_;
  const int64_t hd = c.head_dim(), Hq = c.n_head, Hkv = c.kv_heads(), qd = c.q_dim(), kvd = c.kv_dim();
  const int64_t cap = cache.capacity, first = run.first, Tn = run.rows;
  T* q = a.qa + first * qd;
  T* k = a.ka + first * kvd;
  const T* v = a.v + first * kvd;
  if (c.pos == PosKind::Rope) {
    rope_rows(q, run.nb, Tn, Hq, hd, hd, run.pos, false);
    rope_rows(k, run.nb, Tn, Hkv, hd, hd, run.pos, false);
  }
  const int64_t layer_off = (static_cast<int64_t>(l) * cache.B + run.b0) * cap * kvd;
  T* kc = cache.k.data() + layer_off;
  T* vc = cache.v.data() + layer_off;
  for (int64_t b = 0; b < run.nb; ++b) {
    std::copy(k + b * Tn * kvd, k + (b + 1) * Tn * kvd, kc + (b * cap + run.pos) * kvd);
    std::copy(v + b * Tn * kvd, v + (b + 1) * Tn * kvd, vc + (b * cap + run.pos) * kvd);
  }
  const AttentionDims dims{run.nb, Hq, Hkv, Tn, run.pos + Tn, hd, hd, cap};
  const AttentionMask mask{true, run.pos};
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  attention_forward(attention_kernel(), dims, mask, scale, q, kc, vc, a.att + first * qd, a.lse + first * Hq,
                    tiling_);
}

template <typename T>
void GPT<T>::mha_backward(int l, const LayerParams& P, const LayerParams& G, LayerActs& a, int64_t B, int64_t Tn,
                          const int32_t* segments) {
  const GPTConfig& c = config_;
  auto g = [](const T* p) { return const_cast<T*>(p); };
  const int64_t N = B * Tn, C = c.n_embd, hd = c.head_dim(), Hq = c.n_head, Hkv = c.kv_heads();
  const int64_t qd = c.q_dim(), kvd = c.kv_dim();
  Scratch& s = scratch_;

  if (cp_) {
    cp_attention_backward(l, a.qa, a.att, a.lse, s.datt, s.dqa, s.dka, s.dv, B, Tn, Hq, Hkv, hd, hd, segments);
  } else {
    const AttentionDims dims{B, Hq, Hkv, Tn, Tn, hd, hd, 0};
    const T scale = T(1) / std::sqrt(static_cast<T>(hd));
    AttentionMask mask{true, 0};
    if (segments) mask.q_segments = mask.kv_segments = {segments, static_cast<size_t>(B * Tn)};
    attention_backward(attention_kernel(), dims, mask, scale, a.qa, a.ka, a.v, a.att, a.lse, s.datt, s.dqa, s.dka,
                       s.dv, tiling_);
  }
  if (c.pos == PosKind::Rope) {
    rope_rows(s.dqa, B, Tn, Hq, hd, hd, 0, true);
    rope_rows(s.dka, B, Tn, Hkv, hd, hd, 0, true);
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
}

template <typename T>
void GPT<T>::rope_rows(T* x, int64_t B, int64_t Tn, int64_t H, int64_t D, int64_t head_stride, int64_t pos0,
                       bool backward) const {
  auto rope = backward ? &ops::rope_backward_strided<T> : &ops::rope_forward_strided<T>;
  if (!cp_) {
    rope(x, rope_, B, Tn, H, D, head_stride, pos0);
    return;
  }
  const int64_t ch = cp_->chunk();
  for (int64_t b = 0; b < B; ++b) {
    for (int j = 0; j < 2; ++j) {
      rope(x + (b * Tn + j * ch) * H * head_stride, rope_, 1, ch, H, D, head_stride, cp_->global_chunk(j) * ch);
    }
  }
}

// Context parallelism: each local chunk of queries (global chunk g) attends to the gathered keys
// and values of chunks 0…g, causally aligned at position g·chunk. Its lse rows sit in lse as
// [B][2][Hq][chunk]. Keys are [rows, Hkv·dqk], values [rows, Hkv·dv]; the gathered copies are kept
// per layer for the backward.
template <typename T>
void GPT<T>::cp_attention_forward(int l, const T* q, const T* k, const T* v, T* out, T* lse, int64_t B, int64_t Tn,
                                  int64_t Hq, int64_t Hkv, int64_t dqk, int64_t dv, const int32_t* segments) {
  const int64_t Tg = cp_->seq_len(), ch = cp_->chunk(), kw = Hkv * dqk, vw = Hkv * dv;
  const int64_t per_layer = B * Tg * (kw + vw);
  cp_kv_.resize(static_cast<size_t>(config_.n_layer * per_layer));  // (a no-op when already sized)
  T* kg = cp_kv_.data() + static_cast<int64_t>(l) * per_layer;
  T* vg = kg + B * Tg * kw;
  if (k != nullptr) {  // else the caller put the whole sequences' keys and values there already
    cp_->gather(k, kg, B, kw);
    cp_->gather(v, vg, B, vw);
  }
  const T scale = T(1) / std::sqrt(static_cast<T>(dqk));
  for (int64_t b = 0; b < B; ++b) {
    for (int j = 0; j < 2; ++j) {
      const int64_t g = cp_->global_chunk(j), row = b * Tn + j * ch;
      const AttentionDims d{1, Hq, Hkv, ch, (g + 1) * ch, dqk, dv, 0};
      AttentionMask m{true, g * ch};
      if (segments) {
        m.q_segments = {segments + row, static_cast<size_t>(ch)};
        m.kv_segments = {cp_segments_.data() + b * Tg, static_cast<size_t>((g + 1) * ch)};
      }
      attention_forward(attention_kernel(), d, m, scale, q + row * Hq * dqk, kg + b * Tg * kw, vg + b * Tg * vw,
                        out + row * Hq * dv, lse + (b * 2 + j) * Hq * ch, tiling_);
    }
  }
}

template <typename T>
void GPT<T>::cp_attention_backward(int l, const T* q, const T* out, const T* lse, const T* dout, T* dq, T* dk, T* dv_out,
                                   int64_t B, int64_t Tn, int64_t Hq, int64_t Hkv, int64_t dqk, int64_t dv,
                                   const int32_t* segments) {
  const int64_t Tg = cp_->seq_len(), ch = cp_->chunk(), kw = Hkv * dqk, vw = Hkv * dv;
  const int64_t per_layer = B * Tg * (kw + vw);
  const T* kg = cp_kv_.data() + static_cast<int64_t>(l) * per_layer;
  const T* vg = kg + B * Tg * kw;
  cp_scratch_.assign(static_cast<size_t>(per_layer + Tg * (kw + vw)), T(0));
  T* dkg = cp_scratch_.data();  // the whole sequences' key and value gradients from this rank's queries
  T* dvg = dkg + B * Tg * kw;
  T* dk1 = dvg + B * Tg * vw;  // one query chunk's
  T* dv1 = dk1 + Tg * kw;
  const T scale = T(1) / std::sqrt(static_cast<T>(dqk));
  for (int64_t b = 0; b < B; ++b) {
    for (int j = 0; j < 2; ++j) {
      const int64_t g = cp_->global_chunk(j), row = b * Tn + j * ch, rows = (g + 1) * ch;
      const AttentionDims d{1, Hq, Hkv, ch, rows, dqk, dv, 0};
      AttentionMask m{true, g * ch};
      if (segments) {
        m.q_segments = {segments + row, static_cast<size_t>(ch)};
        m.kv_segments = {cp_segments_.data() + b * Tg, static_cast<size_t>(rows)};
      }
      attention_backward(attention_kernel(), d, m, scale, q + row * Hq * dqk, kg + b * Tg * kw, vg + b * Tg * vw,
                         out + row * Hq * dv, lse + (b * 2 + j) * Hq * ch, dout + row * Hq * dv, dq + row * Hq * dqk,
                         dk1, dv1, tiling_);
      for (int64_t i = 0; i < rows * kw; ++i) dkg[b * Tg * kw + i] += dk1[i];
      for (int64_t i = 0; i < rows * vw; ++i) dvg[b * Tg * vw + i] += dv1[i];
    }
  }
  if (dk != nullptr) {  // else the caller takes the whole sequences' gradients from cp_scratch_
    cp_->reduce_scatter(dkg, dk, B, kw);
    cp_->reduce_scatter(dvg, dv_out, B, vw);
  }
}

// The class is instantiated in gpt.cpp; this file instantiates its own members.
#define FLASHGPT_INSTANTIATE(T)                                                                                  \
  template void GPT<T>::mha_forward(int, const LayerParams&, LayerActs&, int64_t, int64_t, KVCache<T>*,          \
                                    const int32_t*);                                                             \
  template void GPT<T>::mha_backward(int, const LayerParams&, const LayerParams&, LayerActs&, int64_t, int64_t,  \
                                     const int32_t*);                                                            \
  template void GPT<T>::mha_cached(int, LayerActs&, KVCache<T>&, const CachedRun&);                             \
  template void GPT<T>::rope_rows(T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool) const;         \
  template void GPT<T>::cp_attention_forward(int, const T*, const T*, const T*, T*, T*, int64_t, int64_t, int64_t, \
                                             int64_t, int64_t, int64_t, const int32_t*);                         \
  template void GPT<T>::cp_attention_backward(int, const T*, const T*, const T*, const T*, T*, T*, T*, int64_t,    \
                                              int64_t, int64_t, int64_t, int64_t, int64_t, const int32_t*);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(double)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt
