// The attention kernels timed on the GPU (flashgpt bench attention --device cuda): one case's
// forward and forward+backward with the tensor-core flash kernels or the standard kernel, checked
// against the fp32 flash kernel on the same rounded inputs before anything is timed.
#pragma once

#include <cstdint>

#include "flashgpt/attention/attention.h"
#include "flashgpt/cuda/abi.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/attention_cudnn.h"
#include "flashgpt/cuda/cta_trace.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

struct FlashBenchCase {
  AttentionKernel kernel = AttentionKernel::Flash;  // or Standard (bf16 only)
  TensorCoreType type = TensorCoreType::bf16;
  AttentionDims dims;  // Tq = Tk, self-attention
  bool causal = true;
  FlashTiles tiles = FlashTiles::Auto;
  AttentionBackend backend = AttentionBackend::Ours;  // Cudnn: cuDNN's fused attention (flash only; tiles unused)
  bool deterministic = false;  // the flash backward's dQ without atomics
  int repeats = 10;  // timed runs after two warm-ups; medians reported
  uint64_t seed = 1;
};

struct FlashBenchResult {
  double fwd_ms = 0, fwd_bwd_ms = 0;
  // flash-attention's convention: forward 2·B·H·T²·(Dqk + Dv), halved when causal; backward 2.5×.
  double fwd_tflops = 0, fwd_bwd_tflops = 0;
  // max |o − o_fp32| / max |o_fp32| against the fp32 kernel on the same rounded inputs.
  double max_rel_err = 0;
  // Device memory the kernels need beyond q, k, v, o, dO and the gradients: lse and the
  // workspace (flash: the backward's dQ accumulator; standard: P for every head and one head's
  // scratch; cuDNN: the larger of its forward and backward plans' workspaces). Every buffer is allocated explicitly, so this is the peak beyond the tensors.
  int64_t extra_bytes = 0;
  // The flash kernels' theoretical occupancy (flash_tc_occupancy); 0 for the standard kernel and cuDNN.
  FlashOccupancy occupancy;
  // What they achieved (cta_trace.h), from one more forward and backward after the timed ones:
  // the forward kernel, and the backward's main kernel (dK and dV, and dQ's atomics unless
  // deterministic). Nothing measured (ctas 0) for the standard kernel and cuDNN.
  AchievedOccupancy achieved_forward, achieved_backward;
};

// Throws (naming the case) when the output disagrees with the fp32 kernel beyond the element
// type's precision (bf16 2e-2, fp16 4e-3 relative to the largest output).
FlashBenchResult bench_flash_attention(const FlashBenchCase& c);

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
