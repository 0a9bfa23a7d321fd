// The attention mask as the CUDA kernels take it: AttentionMask's spans reduced to device pointers
// (null where that mask is off), passed to kernels by value.
#pragma once

#include <array>
#include <cstdint>

#include "cuda/platform.h"
#include "flashgpt/attention/attention.h"
#include "flashgpt/cuda/abi.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace attention_kernels {

struct Mask {
  bool causal;
  int64_t q_offset;
  const int32_t* q_offsets;  // per sequence, replacing q_offset when given
  const int32_t* kv_lengths;
  const int32_t* q_seg;
  const int32_t* kv_seg;
};

// Where sequence b's queries sit: query i at absolute position causal_offset + i.
__device__ __forceinline__ int64_t causal_offset(const Mask& m, int64_t b) {
  return m.q_offsets ? static_cast<int64_t>(m.q_offsets[b]) : m.q_offset;
}

// Whether key j is visible to query i of sequence b (attention.h's rule), for Tq queries and
// kv_rows key rows per sequence; i and j are within bounds.
__device__ __forceinline__ bool visible(const Mask& m, int64_t Tq, int64_t kv_rows, int64_t b, int64_t i, int64_t j) {
  if (m.causal && j > causal_offset(m, b) + i) return false;
  if (m.kv_lengths && j >= m.kv_lengths[b]) return false;
  return !m.q_seg || m.q_seg[b * Tq + i] == m.kv_seg[b * kv_rows + j];
}

#if defined(FLASHGPT_SIMT)
// The emulator checks that a kernel's mask points at device memory (simt::check_kernel_pointers).
inline std::array<const void*, 4> kernel_pointers(const Mask& m) {
  return {m.q_offsets, m.kv_lengths, m.q_seg, m.kv_seg};
}
#endif

inline Mask mask_of(const AttentionMask& m) {
  return {m.causal, m.q_offset, m.q_offsets.empty() ? nullptr : m.q_offsets.data(), m.kv_lengths.empty() ? nullptr : m.kv_lengths.data(),
          m.q_segments.empty() ? nullptr : m.q_segments.data(),
          m.kv_segments.empty() ? nullptr : m.kv_segments.data()};
}

}  // namespace attention_kernels
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
