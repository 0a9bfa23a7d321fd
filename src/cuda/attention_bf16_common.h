// What the bf16 tensor-core attention kernels share (attention_flash_bf16*.cu): their sizes, the
// mask in device pointers, the visibility test of one (query, key) pair, and tile staging.
#pragma once

#include <cstdint>

#include "cuda/attention_mask_cuda.h"
#include "cuda/platform.h"
#include "flashgpt/attention/attention.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace bf16_attention {

namespace wmma = nvcuda::wmma;

struct Dims {
  int64_t B, Hq, Hkv, Tq, Tk, D, kv_rows, k_row, v_row, group;
};

using attention_kernels::Mask;
using attention_kernels::mask_of;

inline Dims dims_of(const AttentionDims& a) {
  return {a.B, a.Hq, a.Hkv, a.Tq, a.Tk, a.Dqk, a.kv_rows(), a.k_row(), a.v_row(), a.Hq / a.Hkv};
}

__device__ __forceinline__ bool visible(const Dims& d, const Mask& m, int64_t b, int64_t i, int64_t j) {
  if (i >= d.Tq || j >= d.Tk) return false;
  if (m.causal && j > m.q_offset + i) return false;
  if (m.kv_lengths && j >= m.kv_lengths[b]) return false;
  return !m.q_seg || m.q_seg[b * d.Tq + i] == m.kv_seg[b * d.kv_rows + j];
}

// Rows [first, first + rows) of a [·, row_stride] bf16 tensor into shared [rows][D]; zeros past valid.
template <int D>
__device__ __forceinline__ void stage(__nv_bfloat16* dst, const __nv_bfloat16* __restrict__ src, int64_t row_stride,
                                      int64_t first, int64_t valid, int rows) {
  for (int idx = static_cast<int>(threadIdx.x); idx < rows * D; idx += static_cast<int>(blockDim.x)) {
    const int r = idx / D, c = idx % D;
    dst[idx] = first + r < valid ? src[(first + r) * row_stride + c] : __float2bfloat16(0.0f);
  }
}

}  // namespace bf16_attention
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
