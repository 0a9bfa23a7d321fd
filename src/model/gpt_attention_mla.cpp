// MultiHeadLatentAttention and FlashMLA (DeepSeek-V2): the latent attention sublayer of GPT<T>,
// from the block's normed input a.ln1 to the head outputs a.att. The maths is in gpt.h.
//
// Training expands the latent into per-head keys [k_nope, k_rope] (Dqk = head_dim + rope_dim) and
// values (Dv = head_dim) and runs the standard (mla) or flash (flash_mla) kernel over them.
// Decoding keeps only [c_kv, k_rope] per token and layer; by default it attends straight over those
// rows with weight absorption:
//   q_nope,h · k_nope,h = q_nope,h · (W_k_up,h c_kv) = (W_k_up,hᵀ q_nope,h) · c_kv
//   Σ_t p_t v_t,h       = W_v_up,h (Σ_t p_t c_kv,t)
// so every head is one query of an MQA over the cache with Dqk = n_latent + rope_dim and
// Dv = n_latent, reading keys and values out of the same rows.
#include <algorithm>
#include <cmath>
#include <vector>

#include "flashgpt/attention/latent_decode.h"
#include "flashgpt/core/error.h"
#include "flashgpt/dist/context_parallel.h"
#include "flashgpt/model/gpt.h"
#include "flashgpt/ops/matmul.h"
#include "flashgpt/ops/norm.h"
#include "flashgpt/ops/rope.h"

namespace flashgpt {

template <typename T>
const T* GPT<T>::mla_value_up(const LayerParams& P, LayerActs& a) {
  if (!config_.use_svd) return P.v_up_w;
  // Factored by SVD: v_up = u · v, [H·hd, r] · [r, n_latent].
  const int64_t rows = static_cast<int64_t>(config_.n_head) * config_.head_dim(), nl = config_.latent_dim();
  const int64_t r = config_.svd_rank;
  ops::gemm<T>(false, false, rows, nl, r, T(1), P.v_up_u_w, r, P.v_up_v_w, nl, T(0), a.v_up, nl);
  return a.v_up;
}

template <typename T>
void GPT<T>::mla_forward(int l, const LayerParams& P, LayerActs& a, int64_t B, int64_t Tn, KVCache<T>* cache,
                         const int32_t* segments) {
  const GPTConfig& c = config_;
  const int64_t N = B * Tn, C = c.n_embd, H = c.n_head, hd = c.head_dim();
  const int64_t nl = c.latent_dim(), dr = c.mla_rope_dim(), dqk = c.mla_qk_dim(), r = c.q_lora_rank;
  const T eps = static_cast<T>(c.norm_eps);

  // Queries, straight or through the low-rank query latent.
  if (r > 0) {
    ops::matmul_forward(a.cq_pre, a.ln1, P.q_down_w, P.q_down_b, N, C, r);
    ops::rmsnorm_forward(a.cq, a.cq_rstd, a.cq_pre, P.q_down_norm_w, N, r, eps);
    ops::matmul_forward(a.q, a.cq, P.q_up_w, static_cast<const T*>(nullptr), N, r, H * dqk);
  } else {
    ops::matmul_forward(a.q, a.ln1, P.q_w, P.q_b, N, C, H * dqk);
  }
  // The key/value latent and the shared rope key.
  ops::matmul_forward(a.ckv_pre, a.ln1, P.kv_down_w, P.kv_down_b, N, C, nl);
  ops::rmsnorm_forward(a.ckv, a.ckv_rstd, a.ckv_pre, P.kv_norm_w, N, nl, eps);
  if (dr > 0) ops::matmul_forward(a.k, a.ln1, P.k_rope_w, P.k_rope_b, N, C, dr);
  // QK-norm before RoPE: each query head, and the rope key (the latent has its own norm).
  if (c.qk_norm) {
    ops::rmsnorm_forward(a.qa, a.q_rstd, a.q, P.q_norm_w, N * H, dqk, eps);
    if (dr > 0) ops::rmsnorm_forward(a.kr, a.k_rstd, a.k, P.k_norm_w, N, dr, eps);
  } else {
    std::copy(a.q, a.q + N * H * dqk, a.qa);
    if (dr > 0) std::copy(a.k, a.k + N * dr, a.kr);
  }
  if (cache) {
    std::fill(a.att, a.att + N * H * hd, T(0));  // the rows of sequences that read nothing stay zero
    for (const CachedRun& run : cached_runs(*cache)) mla_cached(l, P, a, *cache, run);
    return;
  }
  if (dr > 0) {
    rope_rows(a.qa + hd, B, Tn, H, dr, dqk, 0, false);
    rope_rows(a.kr, B, Tn, 1, dr, dr, 0, false);
  }

  if (cp_) {
    mla_cp_forward(l, P, a, B, Tn, segments);
    return;
  }

  // Expanded keys [k_nope,h, k_rope] per head and values, from the latent.
  for (int64_t h = 0; h < H; ++h) {
    ops::gemm<T>(false, true, N, hd, nl, T(1), a.ckv, nl, P.k_up_w + h * hd * nl, nl, T(0), a.ka + h * dqk, H * dqk);
  }
  if (dr > 0) {
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t h = 0; h < H; ++h) std::copy(a.kr + n * dr, a.kr + (n + 1) * dr, a.ka + (n * H + h) * dqk + hd);
    }
  }
  const T* v_up = mla_value_up(P, a);
  ops::matmul_forward(a.v, a.ckv, v_up, static_cast<const T*>(nullptr), N, nl, H * hd);

  const AttentionDims dims{B, H, H, Tn, Tn, dqk, hd, 0};
  AttentionMask mask{true, 0};
  if (segments) mask.q_segments = mask.kv_segments = {segments, static_cast<size_t>(B * Tn)};
  const T scale = T(1) / std::sqrt(static_cast<T>(dqk));
  attention_forward(attention_kernel(), dims, mask, scale, a.qa, a.ka, a.v, a.att, a.lse, tiling_);
}

// Decoding, for the sequences [b0, b0 + nb) at position pos: RoPE at their positions, this step's
// [c_kv, k_rope] rows appended to the layer's latent cache, then attention over it.
template <typename T>
void GPT<T>::mla_cached(int l, const LayerParams& P, LayerActs& a, KVCache<T>& cache, const CachedRun& run) {
  const GPTConfig& c = config_;
  const int64_t H = c.n_head, hd = c.head_dim(), nl = c.latent_dim(), dr = c.mla_rope_dim(), dqk = c.mla_qk_dim();
  const int64_t first = run.first, Tn = run.rows, row = cache.latent_row;
  if (dr > 0) {
    rope_rows(a.qa + first * H * dqk + hd, run.nb, Tn, H, dr, dqk, run.pos, false);
    rope_rows(a.kr + first * dr, run.nb, Tn, 1, dr, dr, run.pos, false);
  }
  T* layer = cache.latent.data() + (static_cast<int64_t>(l) * cache.B + run.b0) * cache.capacity * row;
  for (int64_t b = 0; b < run.nb; ++b) {
    for (int64_t t = 0; t < Tn; ++t) {
      T* dst = layer + (b * cache.capacity + run.pos + t) * row;
      const int64_t n = first + b * Tn + t;
      std::copy(a.ckv + n * nl, a.ckv + (n + 1) * nl, dst);
      if (dr > 0) std::copy(a.kr + n * dr, a.kr + (n + 1) * dr, dst + nl);
    }
  }
  if (mla_decode_ == MlaDecode::Absorbed) {
    mla_decode_absorbed(l, P, a, cache, run);
  } else {
    mla_decode_expanded(l, P, a, cache, run);
  }
}

template <typename T>
void GPT<T>::mla_decode_absorbed(int l, const LayerParams& P, LayerActs& a, KVCache<T>& cache, const CachedRun& run) {
  const GPTConfig& c = config_;
  LatentDecodeDims d;
  d.B = run.nb;
  d.H = c.n_head;
  d.Tq = run.rows;
  d.Tk = run.pos + run.rows;
  d.capacity = cache.capacity;
  d.head_dim = c.head_dim();
  d.n_latent = c.latent_dim();
  d.rope_dim = c.mla_rope_dim();
  const int64_t first = run.first, H = d.H, row = cache.latent_row;
  const T* layer = cache.latent.data() + (static_cast<int64_t>(l) * cache.B + run.b0) * cache.capacity * row;
  latent_attention_decode(attention_kernel(), d, a.qa + first * H * c.mla_qk_dim(), P.k_up_w, mla_value_up(P, a),
                          layer, a.q_abs + first * H * row, a.o_lat + first * H * d.n_latent,
                          a.lse + first * H, a.att + first * H * d.head_dim, tiling_);
}

template <typename T>
void GPT<T>::mla_decode_expanded(int l, const LayerParams& P, LayerActs& a, KVCache<T>& cache, const CachedRun& run) {
  const GPTConfig& c = config_;
  const int64_t H = c.n_head, hd = c.head_dim();
  const int64_t nl = c.latent_dim(), dr = c.mla_rope_dim(), dqk = c.mla_qk_dim(), row = cache.latent_row;
  const int64_t B = run.nb, pos0 = run.pos, Tn = run.rows, Tk = pos0 + Tn, first = run.first;
  // Re-expand every cached latent into per-head keys and values (the reference path).
  std::vector<T> keys(static_cast<size_t>(B * Tk * H * dqk)), values(static_cast<size_t>(B * Tk * H * hd));
  const T* layer = cache.latent.data() + (static_cast<int64_t>(l) * cache.B + run.b0) * cache.capacity * row;
  const T* v_up = mla_value_up(P, a);
  for (int64_t b = 0; b < B; ++b) {
    const T* rows = layer + b * cache.capacity * row;
    T* kb = keys.data() + b * Tk * H * dqk;
    for (int64_t h = 0; h < H; ++h) {
      ops::gemm<T>(false, true, Tk, hd, nl, T(1), rows, row, P.k_up_w + h * hd * nl, nl, T(0), kb + h * dqk, H * dqk);
      for (int64_t t = 0; t < Tk && dr > 0; ++t) {
        std::copy(rows + t * row + nl, rows + t * row + nl + dr, kb + (t * H + h) * dqk + hd);
      }
    }
    ops::gemm<T>(false, true, Tk, H * hd, nl, T(1), rows, row, v_up, nl, T(0), values.data() + b * Tk * H * hd,
                 H * hd);
  }
  const AttentionDims dims{B, H, H, Tn, Tk, dqk, hd, 0};
  const AttentionMask mask{true, pos0};
  const T scale = T(1) / std::sqrt(static_cast<T>(dqk));
  attention_forward(attention_kernel(), dims, mask, scale, a.qa + first * H * dqk, keys.data(), values.data(),
                    a.att + first * H * hd, a.lse + first * H, tiling_);
}

template <typename T>
void GPT<T>::mla_backward(int l, const LayerParams& P, const LayerParams& G, LayerActs& a, int64_t B, int64_t Tn,
                          const int32_t* segments) {
  const GPTConfig& c = config_;
  auto g = [](const T* p) { return const_cast<T*>(p); };
  const int64_t N = B * Tn, C = c.n_embd, H = c.n_head, hd = c.head_dim();
  const int64_t nl = c.latent_dim(), dr = c.mla_rope_dim(), dqk = c.mla_qk_dim(), r = c.q_lora_rank;
  Scratch& s = scratch_;

  if (cp_) {
    // The latent gradients of this rank's rows arrive in s.dckv and s.dkr (before RoPE), the
    // up-projections' gradients are added (mla_cp_backward).
    mla_cp_backward(l, P, G, a, B, Tn, segments);
  } else {
    const AttentionDims dims{B, H, H, Tn, Tn, dqk, hd, 0};
    AttentionMask mask{true, 0};
    if (segments) mask.q_segments = mask.kv_segments = {segments, static_cast<size_t>(B * Tn)};
    const T scale = T(1) / std::sqrt(static_cast<T>(dqk));
    attention_backward(attention_kernel(), dims, mask, scale, a.qa, a.ka, a.v, a.att, a.lse, s.datt, s.dqa, s.dka,
                       s.dv, tiling_);
  }

  // The rope key is shared: its gradient sums over heads. Then undo RoPE and QK-norm.
  const T* dq = s.dqa;
  const T* dk_rope = s.dkr;
  if (dr > 0) {
    for (int64_t n = 0; n < N && !cp_; ++n) {
      T* dst = s.dkr + n * dr;
      std::fill(dst, dst + dr, T(0));
      for (int64_t h = 0; h < H; ++h) {
        const T* src = s.dka + (n * H + h) * dqk + hd;
        for (int64_t i = 0; i < dr; ++i) dst[i] += src[i];
      }
    }
    rope_rows(s.dqa + hd, B, Tn, H, dr, dqk, 0, true);
    rope_rows(s.dkr, B, Tn, 1, dr, dr, 0, true);
  }
  if (c.qk_norm) {
    ops::rmsnorm_backward(s.dq, g(G.q_norm_w), s.dqa, a.q, P.q_norm_w, a.q_rstd, N * H, dqk, false);
    dq = s.dq;
    if (dr > 0) {
      ops::rmsnorm_backward(s.dk, g(G.k_norm_w), s.dkr, a.k, P.k_norm_w, a.k_rstd, N, dr, false);
      dk_rope = s.dk;
    }
  }

  // Into the latent: dc_kv = Σ_h dk_nope,h · W_k_up,h + dv · W_v_up (done on whole sequences
  // under context parallelism).
  for (int64_t h = 0; h < H && !cp_; ++h) {
    const T* dk_nope = s.dka + h * dqk;
    ops::gemm<T>(false, false, N, nl, hd, T(1), dk_nope, H * dqk, P.k_up_w + h * hd * nl, nl, h == 0 ? T(0) : T(1),
                 s.dckv, nl);
    ops::gemm<T>(true, false, hd, nl, N, T(1), dk_nope, H * dqk, a.ckv, nl, T(1), g(G.k_up_w) + h * hd * nl, nl);
  }
  if (!cp_) mla_value_up_backward(P, G, a, s.dv, a.ckv, s.dckv, N);
  ops::rmsnorm_backward(s.dckv_pre, g(G.kv_norm_w), s.dckv, a.ckv_pre, P.kv_norm_w, a.ckv_rstd, N, nl, false);

  // Back into the block's normed input.
  ops::matmul_backward(s.dln, g(G.kv_down_w), g(G.kv_down_b), s.dckv_pre, a.ln1, P.kv_down_w, N, C, nl, false);
  if (dr > 0) {
    ops::matmul_backward(s.dln, g(G.k_rope_w), g(G.k_rope_b), dk_rope, a.ln1, P.k_rope_w, N, C, dr, true);
  }
  if (r > 0) {
    ops::matmul_backward(s.dcq, g(G.q_up_w), static_cast<T*>(nullptr), dq, a.cq, P.q_up_w, N, r, H * dqk, false);
    ops::rmsnorm_backward(s.dcq_pre, g(G.q_down_norm_w), s.dcq, a.cq_pre, P.q_down_norm_w, a.cq_rstd, N, r, false);
    ops::matmul_backward(s.dln, g(G.q_down_w), g(G.q_down_b), s.dcq_pre, a.ln1, P.q_down_w, N, C, r, true);
  } else {
    ops::matmul_backward(s.dln, g(G.q_w), g(G.q_b), dq, a.ln1, P.q_w, N, C, H * dqk, true);
  }
}

// dc_kv += dv · W_v_up and the value up-projection's gradient (the SVD factors' when factored), for
// N rows of values dv [N, H·hd] made from latents ckv [N, n_latent].
template <typename T>
void GPT<T>::mla_value_up_backward(const LayerParams& P, const LayerParams& G, LayerActs& a, const T* dv,
                                   const T* ckv, T* dckv, int64_t N) {
  const GPTConfig& c = config_;
  auto g = [](const T* p) { return const_cast<T*>(p); };
  const int64_t H = c.n_head, hd = c.head_dim(), nl = c.latent_dim();
  const T* v_up = c.use_svd ? a.v_up : P.v_up_w;  // a.v_up holds u·v from the forward
  if (c.use_svd) {
    Scratch& s = scratch_;
    const int64_t rows = H * hd, rank = c.svd_rank;
    std::fill(s.dv_up, s.dv_up + rows * nl, T(0));
    ops::matmul_backward(dckv, s.dv_up, static_cast<T*>(nullptr), dv, ckv, v_up, N, nl, rows, true);
    // v_up = u·v:  du += dv_up·vᵀ,  dv += uᵀ·dv_up.
    ops::gemm<T>(false, true, rows, rank, nl, T(1), s.dv_up, nl, P.v_up_v_w, nl, T(1), g(G.v_up_u_w), rank);
    ops::gemm<T>(true, false, rank, nl, rows, T(1), P.v_up_u_w, rank, s.dv_up, nl, T(1), g(G.v_up_v_w), nl);
  } else {
    ops::matmul_backward(dckv, g(G.v_up_w), static_cast<T*>(nullptr), dv, ckv, v_up, N, nl, H * hd, true);
  }
}

// Context parallelism for latent attention: the ranks exchange the latent rows [c_kv, k_rope]
// (n_latent + rope_dim per token, against H·(2·head_dim + rope_dim) for expanded keys and values)
// and every rank expands the whole sequences itself; the backward returns each rank the summed
// latent gradients of its own rows. The expanded keys and values sit in cp_kv_ for the backward.
template <typename T>
void GPT<T>::mla_cp_forward(int l, const LayerParams& P, LayerActs& a, int64_t B, int64_t Tn,
                            const int32_t* segments) {
  const GPTConfig& c = config_;
  const int64_t H = c.n_head, hd = c.head_dim(), nl = c.latent_dim(), dr = c.mla_rope_dim(), dqk = c.mla_qk_dim();
  const int64_t Ng = B * cp_->seq_len(), kw = H * dqk, vw = H * hd;
  const int64_t lat = Ng * (nl + dr), per_layer = Ng * (kw + vw);
  cp_latent_.resize(static_cast<size_t>(c.n_layer * lat));
  cp_kv_.resize(static_cast<size_t>(c.n_layer * per_layer));
  T* ckv_g = cp_latent_.data() + static_cast<int64_t>(l) * lat;
  T* kr_g = ckv_g + Ng * nl;
  cp_->gather(a.ckv, ckv_g, B, nl);
  if (dr > 0) cp_->gather(a.kr, kr_g, B, dr);
  T* kg = cp_kv_.data() + static_cast<int64_t>(l) * per_layer;
  T* vg = kg + Ng * kw;
  for (int64_t h = 0; h < H; ++h) {
    ops::gemm<T>(false, true, Ng, hd, nl, T(1), ckv_g, nl, P.k_up_w + h * hd * nl, nl, T(0), kg + h * dqk, kw);
  }
  if (dr > 0) {
    for (int64_t n = 0; n < Ng; ++n) {
      for (int64_t h = 0; h < H; ++h) std::copy(kr_g + n * dr, kr_g + (n + 1) * dr, kg + n * kw + h * dqk + hd);
    }
  }
  ops::matmul_forward(vg, ckv_g, mla_value_up(P, a), static_cast<const T*>(nullptr), Ng, nl, vw);
  cp_attention_forward(l, a.qa, nullptr, nullptr, a.att, a.lse, B, Tn, H, H, dqk, hd, segments);
}

template <typename T>
void GPT<T>::mla_cp_backward(int l, const LayerParams& P, const LayerParams& G, LayerActs& a, int64_t B, int64_t Tn,
                             const int32_t* segments) {
  const GPTConfig& c = config_;
  auto g = [](const T* p) { return const_cast<T*>(p); };
  const int64_t H = c.n_head, hd = c.head_dim(), nl = c.latent_dim(), dr = c.mla_rope_dim(), dqk = c.mla_qk_dim();
  const int64_t Ng = B * cp_->seq_len(), kw = H * dqk, vw = H * hd, lat = Ng * (nl + dr);
  Scratch& s = scratch_;
  // dK, dV of the whole sequences from this rank's queries, left in cp_scratch_.
  cp_attention_backward(l, a.qa, a.att, a.lse, s.datt, s.dqa, nullptr, nullptr, B, Tn, H, H, dqk, hd, segments);
  const T* dkg = cp_scratch_.data();
  const T* dvg = dkg + Ng * kw;
  const T* ckv_g = cp_latent_.data() + static_cast<int64_t>(l) * lat;
  cp_dlatent_.assign(static_cast<size_t>(lat), T(0));
  T* dckv_g = cp_dlatent_.data();
  T* dkr_g = dckv_g + Ng * nl;
  for (int64_t h = 0; h < H; ++h) {
    ops::gemm<T>(false, false, Ng, nl, hd, T(1), dkg + h * dqk, kw, P.k_up_w + h * hd * nl, nl, T(1), dckv_g, nl);
    ops::gemm<T>(true, false, hd, nl, Ng, T(1), dkg + h * dqk, kw, ckv_g, nl, T(1), g(G.k_up_w) + h * hd * nl, nl);
  }
  mla_value_up_backward(P, G, a, dvg, ckv_g, dckv_g, Ng);
  for (int64_t n = 0; n < Ng && dr > 0; ++n) {  // the shared rope key: summed over heads
    for (int64_t h = 0; h < H; ++h) {
      const T* src = dkg + n * kw + h * dqk + hd;
      for (int64_t i = 0; i < dr; ++i) dkr_g[n * dr + i] += src[i];
    }
  }
  cp_->reduce_scatter(dckv_g, s.dckv, B, nl);
  if (dr > 0) cp_->reduce_scatter(dkr_g, s.dkr, B, dr);
  (void)vw;
}

// The class is instantiated in gpt.cpp; this file instantiates its own members.
#define FLASHGPT_INSTANTIATE(T)                                                                                  \
  template const T* GPT<T>::mla_value_up(const LayerParams&, LayerActs&);                                        \
  template void GPT<T>::mla_forward(int, const LayerParams&, LayerActs&, int64_t, int64_t, KVCache<T>*,          \
                                    const int32_t*);                                                             \
  template void GPT<T>::mla_value_up_backward(const LayerParams&, const LayerParams&, LayerActs&, const T*,        \
                                              const T*, T*, int64_t);                                            \
  template void GPT<T>::mla_cp_forward(int, const LayerParams&, LayerActs&, int64_t, int64_t, const int32_t*);    \
  template void GPT<T>::mla_cp_backward(int, const LayerParams&, const LayerParams&, LayerActs&, int64_t, int64_t, \
                                        const int32_t*);                                                         \
  template void GPT<T>::mla_backward(int, const LayerParams&, const LayerParams&, LayerActs&, int64_t, int64_t,       \
                                     const int32_t*);                                                            \
  template void GPT<T>::mla_cached(int, const LayerParams&, LayerActs&, KVCache<T>&, const CachedRun&);             \
  template void GPT<T>::mla_decode_absorbed(int, const LayerParams&, LayerActs&, KVCache<T>&, const CachedRun&);    \
  template void GPT<T>::mla_decode_expanded(int, const LayerParams&, LayerActs&, KVCache<T>&, const CachedRun&);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(double)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt
