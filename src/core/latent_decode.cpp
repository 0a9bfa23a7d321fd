#include "flashgpt/attention/latent_decode.h"

#include <algorithm>
#include <cmath>

#include "flashgpt/core/error.h"
#include "flashgpt/ops/matmul.h"

namespace flashgpt {

template <typename T>
void latent_attention_decode(AttentionKernel kernel, const LatentDecodeDims& d, const T* q, const T* k_up,
                             const T* v_up, const T* cache, T* q_abs, T* o_lat, T* lse, T* att,
                             const AttentionTiling& tiling) {
  FLASHGPT_CHECK(d.head_dim > 0 && d.n_latent > 0 && d.rope_dim >= 0,
                 "latent decode: head_dim {} and n_latent {} must be positive, rope_dim {} not negative", d.head_dim,
                 d.n_latent, d.rope_dim);
  FLASHGPT_CHECK(d.Tq <= d.Tk, "latent decode: {} new tokens but only {} cached", d.Tq, d.Tk);
  const int64_t N = d.B * d.Tq, H = d.H, hd = d.head_dim, nl = d.n_latent, dr = d.rope_dim, row = d.row();
  const int64_t dqk = hd + dr;
  // Absorbed queries.
  for (int64_t h = 0; h < H; ++h) {
    ops::gemm<T>(false, false, N, nl, hd, T(1), q + h * dqk, H * dqk, k_up + h * hd * nl, nl, T(0), q_abs + h * row,
                 H * row);
  }
  if (dr > 0) {
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t h = 0; h < H; ++h) {
        const T* src = q + (n * H + h) * dqk + hd;
        std::copy(src, src + dr, q_abs + (n * H + h) * row + nl);
      }
    }
  }
  // MQA over the latent rows: keys are whole rows, values their first n_latent elements.
  AttentionDims dims{d.B, H, 1, d.Tq, d.Tk, row, nl, d.capacity};
  dims.k_row_stride = row;
  dims.v_row_stride = row;
  const AttentionMask mask{true, d.Tk - d.Tq};
  const T scale = T(1) / std::sqrt(static_cast<T>(dqk));  // the expanded computation's scale
  attention_forward(kernel, dims, mask, scale, q_abs, cache, cache, o_lat, lse, tiling);
  // Head outputs.
  for (int64_t h = 0; h < H; ++h) {
    ops::gemm<T>(false, true, N, hd, nl, T(1), o_lat + h * nl, H * nl, v_up + h * hd * nl, nl, T(0), att + h * hd,
                 H * hd);
  }
}

#define FLASHGPT_INSTANTIATE(T)                                                                                    \
  template void latent_attention_decode<T>(AttentionKernel, const LatentDecodeDims&, const T*, const T*, const T*, \
                                           const T*, T*, T*, T*, T*, const AttentionTiling&);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(double)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt
