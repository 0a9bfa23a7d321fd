// RoPE's arithmetic on one half-split pair (elements i and i + D/2 of a head), shared by the
// kernels that rotate: rope_cuda.cu, and the fused QK-norm kernels of qk_norm_rope_cuda.cu (CPU
// twin: cpu/rope_cpu.cpp).
#pragma once

#include "cuda/device_math.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

// The position of token n of sequences of Tn tokens: seq_pos[n / Tn] (each sequence's first
// position, when it has one of its own) or pos_offset, plus n % Tn.
__device__ __forceinline__ int64_t rope_position(int64_t n, int64_t Tn, int64_t pos_offset,
                                                 const int32_t* __restrict__ seq_pos) {
  return (seq_pos ? seq_pos[n / Tn] : pos_offset) + n % Tn;
}

// (a, b) rotated by the angle of cos c and sin s: (a·c − b·s, a·s + b·c). With −s it is the
// inverse rotation, RoPE's backward.
__device__ __forceinline__ void rotate_pair(float& a, float& b, float c, float s) {
  const float ra = a * c - b * s;
  b = a * s + b * c;
  a = ra;
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
