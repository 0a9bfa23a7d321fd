// Attention on the GPU, behind the same seam as the CPU kernels (attention/attention.h): the same
// layouts, masks and results, with every pointer — q, k, v, o, lse, the gradients and the mask's
// kv_lengths and segment ids — in device memory. Runs on the current device's default stream and
// returns when the work is queued; errors (launch, bad sizes) are flashgpt::Error.
//
// Kernels:
//   flash_forward_fp32 / flash_backward_fp32 — the fp32 parity path: FlashAttention-2's tiling
//   and online softmax with one thread per query (forward, dQ) or key (dK, dV) row and the tiles
//   in shared memory. Correct first: it is the reference the tensor-core kernels are held to on
//   the GPU, as the CPU's standard kernel is on the CPU.
//   flash_forward_bf16 — the first tensor-core forward: bf16 q, k, v and o (stored as uint16_t
//   bit patterns, so host code needs no CUDA headers), fp32 accumulation and lse, through WMMA
//   16×16×16 tiles; each warp owns 16 query rows, the online softmax runs on the score tile in
//   shared memory. Head dims 64 and 128 with Dqk = Dv.
//   flash_backward_bf16 — its backward on the same tiles (dQ per query block; dK, dV per key block).
#pragma once

#include <cstddef>
#include <cstdint>

#include "flashgpt/attention/attention.h"
#include "flashgpt/cuda/abi.h"
#include "flashgpt/cuda/device_memory.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

// True when this build has the CUDA backend and a GPU is usable.
bool gpu_available();

void flash_forward_fp32(const AttentionDims& d, const AttentionMask& m, float scale, const float* q, const float* k,
                        const float* v, float* o, float* lse);
// dq, dk, dv are written (not accumulated); dk and dv rows at or beyond Tk are left alone.
void flash_backward_fp32(const AttentionDims& d, const AttentionMask& m, float scale, const float* q, const float* k,
                         const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk,
                         float* dv);

void flash_forward_bf16(const AttentionDims& d, const AttentionMask& m, float scale, const uint16_t* q,
                        const uint16_t* k, const uint16_t* v, uint16_t* o, float* lse);
// The bf16 backward on tensor cores (attention_flash_bf16_backward.cu): P recomputed from lse,
// dq, dk, dv written in bf16 (dk and dv summed over each GQA group). Head dims 64 and 128, Dqk = Dv.
void flash_backward_bf16(const AttentionDims& d, const AttentionMask& m, float scale, const uint16_t* q,
                         const uint16_t* k, const uint16_t* v, const uint16_t* o, const float* lse,
                         const uint16_t* dout, uint16_t* dq, uint16_t* dk, uint16_t* dv);

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
