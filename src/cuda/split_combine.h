// What the split-KV decode kernels share (Flash-Decoding): the choice of how many splits to cut
// each sequence's keys into, and the combine step that merges the splits' partial results.
// Used by the paged latent decode (latent_decode_cuda.cu) and the flash decode of standard
// attention (flash_decode_cuda.cu).
//
// Each split s of an output row leaves its normalised output o_s (fp32, `width` values) and its
// log-sum-exp lse_s (−∞ when it saw no key); the row's result is Σ_s e^{lse_s − lse} o_s with
// lse = log Σ_s e^{lse_s}. Partial rows are in the output's [B, Tq, H] order:
//   part_o [splits, rows, width], part_lse [splits, rows]   (rows = B·Tq·H)
// and the combine writes out [B, Tq, H, width] and lse [B, H, Tq].
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cuda/device_math.h"
#include "cuda/platform.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace split_kv {

// The split count with the fewest steps on the busiest SM for `blocks` blocks of a split-free
// launch over at most `steps` key steps (tiles or pages) per sequence, when `slots` blocks run at
// once on the whole GPU. Every split also costs `split_cost` steps (loading its queries, writing
// its partial result) and the combine `combine_cost` steps; at most min(steps, max_splits).
inline int choose(int64_t blocks, int64_t steps, int64_t slots, int max_splits, int64_t split_cost,
                  int64_t combine_cost) {
  const int64_t most = std::min<int64_t>(steps, max_splits);
  int best = 1;
  int64_t best_cost = 0;
  for (int64_t s = 1; s <= most; ++s) {
    const int64_t waves = (blocks * s + slots - 1) / slots;
    const int64_t cost = waves * ((steps + s - 1) / s + split_cost) + (s > 1 ? combine_cost : 0);
    if (s == 1 || cost < best_cost) {
      best = static_cast<int>(s);
      best_cost = cost;
    }
  }
  return best;
}

// Merges one output row's n partial results, the s-th at partial row prow(s), into out_row
// (width values) and returns the row's log-sum-exp. Every thread of the block calls it.
template <typename T, typename Prow>
__device__ __forceinline__ float combine_row(int n, Prow prow, int64_t width, const float* __restrict__ part_o,
                                             const float* __restrict__ part_lse, T* __restrict__ out_row) {
  float mx = -INFINITY;
  for (int s = 0; s < n; ++s) mx = fmaxf(mx, part_lse[prow(s)]);
  float total = 0.0f;
  if (mx != -INFINITY)
    for (int s = 0; s < n; ++s) total += expf(part_lse[prow(s)] - mx);
  const float row_lse = mx == -INFINITY ? -INFINITY : mx + logf(total);
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
    float o = 0.0f;
    if (mx != -INFINITY) {
      for (int s = 0; s < n; ++s) {
        const float w = expf(part_lse[prow(s)] - row_lse);  // 0 for an empty split
        if (w > 0.0f) o += w * part_o[prow(s) * width + c];
      }
    }
    out_row[c] = from_f32<T>(o);
  }
  return row_lse;
}

// One block per output row.
template <typename T>
__global__ void combine_kernel(int64_t rows, int64_t H, int64_t Tq, int64_t width, int splits,
                               const float* __restrict__ part_o, const float* __restrict__ part_lse,
                               T* __restrict__ out, float* __restrict__ lse) {
  const int64_t orow = blockIdx.x;  // [B, Tq, H]
  const float row_lse = combine_row<T>(
      splits, [&](int s) { return s * rows + orow; }, width, part_o, part_lse, out + orow * width);
  if (threadIdx.x == 0) {
    const int64_t h = orow % H, tq = (orow / H) % Tq, b = orow / (H * Tq);
    lse[(b * H + h) * Tq + tq] = row_lse;
  }
}

// The combine of a schedule that cut sequences into different numbers of chunks: sequence b's
// partial results sit in slots first[b] … first[b+1] − 1 of part_o [slots, rows_per_seq, width]
// (part_lse [slots, rows_per_seq]), and the list cut[0 … *n_cut) names the sequences cut in
// more than one (the others wrote their output directly). Blocks stride over (listed
// sequence, row of it).
template <typename T>
__global__ void combine_chunks_kernel(int64_t rows_per_seq, int64_t H, int64_t Tq, int64_t width,
                                      const int32_t* __restrict__ n_cut, const int32_t* __restrict__ cut,
                                      const int32_t* __restrict__ first, const float* __restrict__ part_o,
                                      const float* __restrict__ part_lse, T* __restrict__ out,
                                      float* __restrict__ lse) {
  const int64_t total = static_cast<int64_t>(*n_cut) * rows_per_seq;
  for (int64_t i = blockIdx.x; i < total; i += gridDim.x) {
    const int64_t b = cut[i / rows_per_seq], gr = i % rows_per_seq, s0 = first[b];
    const int n = static_cast<int>(first[b + 1] - s0);
    const float row_lse = combine_row<T>(
        n, [&](int s) { return (s0 + s) * rows_per_seq + gr; }, width, part_o, part_lse,
        out + (b * rows_per_seq + gr) * width);
    if (threadIdx.x == 0) lse[(b * H + gr % H) * Tq + gr / H] = row_lse;
  }
}

// Queues the combine of `splits` partial results for B·Tq·H rows of `width` values; `name` says
// whose combine in errors.
template <typename T>
void launch_combine(const char* name, int64_t B, int64_t Tq, int64_t H, int64_t width, int splits,
                    const float* part_o, const float* part_lse, T* out, float* lse) {
  const int64_t rows = B * Tq * H;
  launch_kernel(name, combine_kernel<T>, static_cast<unsigned>(rows), 128, 0, nullptr, rows, H, Tq, width, splits,
                part_o, part_lse, out, lse);
}

// Queues combine_chunks_kernel on at most `blocks` blocks (its rows are known only on the GPU).
template <typename T>
void launch_combine_chunks(const char* name, int64_t blocks, int64_t rows_per_seq, int64_t H, int64_t Tq,
                           int64_t width, const int32_t* n_cut, const int32_t* cut, const int32_t* first,
                           const float* part_o, const float* part_lse, T* out, float* lse) {
  launch_kernel(name, combine_chunks_kernel<T>, static_cast<unsigned>(blocks), 128, 0, nullptr, rows_per_seq, H, Tq,
                width, n_cut, cut, first, part_o, part_lse, out, lse);
}

// The workspace of `splits` partial results for `rows` rows of `width` values: the outputs, then
// (from a 256-byte boundary) the log-sum-exps.
inline size_t partial_o_bytes(int64_t rows, int64_t width, int splits) {
  return (sizeof(float) * static_cast<size_t>(splits) * static_cast<size_t>(rows * width) + 255) / 256 * 256;
}
inline size_t workspace_bytes(int64_t rows, int64_t width, int splits) {
  return splits > 1 ? partial_o_bytes(rows, width, splits) + sizeof(float) * static_cast<size_t>(splits) *
                                                                 static_cast<size_t>(rows)
                    : 0;
}

// The workspace's two parts; both null when splits == 1.
struct Partials {
  float* o = nullptr;
  float* lse = nullptr;
};
inline Partials partials(void* workspace, int64_t rows, int64_t width, int splits) {
  if (splits <= 1) return {};
  return {static_cast<float*>(workspace),
          reinterpret_cast<float*>(static_cast<char*>(workspace) + partial_o_bytes(rows, width, splits))};
}

}  // namespace split_kv
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
