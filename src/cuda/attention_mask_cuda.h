// The attention mask as the CUDA kernels take it: AttentionMask's spans reduced to device pointers
// (null where that mask is off), passed to kernels by value.
#pragma once

#include <cstdint>

#include "flashgpt/attention/attention.h"
#include "flashgpt/cuda/abi.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace attention_kernels {

struct Mask {
  bool causal;
  int64_t q_offset;
  const int32_t* kv_lengths;
  const int32_t* q_seg;
  const int32_t* kv_seg;
};

inline Mask mask_of(const AttentionMask& m) {
  return {m.causal, m.q_offset, m.kv_lengths.empty() ? nullptr : m.kv_lengths.data(),
          m.q_segments.empty() ? nullptr : m.q_segments.data(),
          m.kv_segments.empty() ? nullptr : m.kv_segments.data()};
}

}  // namespace attention_kernels
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
