// What the bf16 tensor-core attention kernels share (attention_flash_bf16*.cu): their sizes, the
// mask in device pointers, and the visibility test of one (query, key) pair.
#pragma once

#include <cstdint>

#include "cuda/platform.h"
#include "flashgpt/attention/attention.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace bf16_attention {

namespace wmma = nvcuda::wmma;

struct Dims {
  int64_t B, Hq, Hkv, Tq, Tk, D, kv_rows, k_row, v_row, group;
};

struct Mask {
  bool causal;
  int64_t q_offset;
  const int32_t* kv_lengths;
  const int32_t* q_seg;
  const int32_t* kv_seg;
};

inline Dims dims_of(const AttentionDims& a) {
  return {a.B, a.Hq, a.Hkv, a.Tq, a.Tk, a.Dqk, a.kv_rows(), a.k_row(), a.v_row(), a.Hq / a.Hkv};
}

inline Mask mask_of(const AttentionMask& m) {
  return {m.causal, m.q_offset, m.kv_lengths.empty() ? nullptr : m.kv_lengths.data(),
          m.q_segments.empty() ? nullptr : m.q_segments.data(),
          m.kv_segments.empty() ? nullptr : m.kv_segments.data()};
}

__device__ __forceinline__ bool visible(const Dims& d, const Mask& m, int64_t b, int64_t i, int64_t j) {
  if (i >= d.Tq || j >= d.Tk) return false;
  if (m.causal && j > m.q_offset + i) return false;
  if (m.kv_lengths && j >= m.kv_lengths[b]) return false;
  return !m.q_seg || m.q_seg[b * d.Tq + i] == m.kv_seg[b * d.kv_rows + j];
}

}  // namespace bf16_attention
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
