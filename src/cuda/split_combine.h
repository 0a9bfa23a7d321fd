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

// One block per output row.
template <typename T>
__global__ void combine_kernel(int64_t rows, int64_t H, int64_t Tq, int64_t width, int splits,
                               const float* __restrict__ part_o, const float* __restrict__ part_lse,
                               T* __restrict__ out, float* __restrict__ lse) {
  const int64_t orow = blockIdx.x;  // [B, Tq, H]
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, part_lse[s * rows + orow]);
  float total = 0.0f;
  if (mx != -INFINITY)
    for (int s = 0; s < splits; ++s) total += expf(part_lse[s * rows + orow] - mx);
  const float row_lse = mx == -INFINITY ? -INFINITY : mx + logf(total);
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
    float o = 0.0f;
    if (mx != -INFINITY) {
      for (int s = 0; s < splits; ++s) {
        const float w = expf(part_lse[s * rows + orow] - row_lse);  // 0 for an empty split
        if (w > 0.0f) o += w * part_o[(s * rows + orow) * width + c];
      }
    }
    out[orow * width + c] = from_f32<T>(o);
  }
  if (threadIdx.x == 0) {
    const int64_t h = orow % H, tq = (orow / H) % Tq, b = orow / (H * Tq);
    lse[(b * H + h) * Tq + tq] = row_lse;
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
