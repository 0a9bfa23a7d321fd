// The paged latent decode timed on the GPU beside the GPU's own device-to-device copy bandwidth
// (flashgpt bench latent-decode): one case — B sequences of `context` cached tokens each (or of
// the lengths given), their pages scattered over the pool — checked against the CPU's attention
// on two of its sequences, then timed. The decode is bandwidth-bound when the whole cache is read once per call at the
// copy's rate; FlashMLA's figure is the same ratio.
#pragma once

#include <cstdint>
#include <vector>

#include "flashgpt/cuda/abi.h"
#include "flashgpt/cuda/latent_decode_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

struct LatentDecodeBenchCase {
  PagedLatentDims dims;    // max_pages is derived from the context
  int64_t context = 4096;  // cached tokens per sequence, the new ones included (≥ dims.Tq)
  // Each sequence's own count instead (B of them, each ≥ dims.Tq and ≤ context): a batch of
  // different lengths. Empty: every sequence holds `context`.
  std::vector<int64_t> lengths;
  bool bf16 = true;        // else fp32
  LatentDecodeOptions options;  // the kernel and split count; the workspace is the benchmark's own
  int repeats = 10;             // timed samples after a warm-up; medians reported
  uint64_t seed = 1;
};

struct LatentDecodeBenchResult {
  LatentDecodePlan plan;
  LatentChunks chunks;        // balanced: what the schedule chose on the GPU
  double ms = 0;              // one call (the schedule and the combine step included), median over the samples
  double bytes = 0;           // what one call must move: the cache rows, queries, outputs, lse and table
  double gbps = 0;            // bytes / ms
  double tflops = 0;          // 2·Tq·H·(Σ lengths)·(row + n_latent) / ms
  double copy_gbps = 0;       // a device-to-device copy of as many bytes as the cache, read + written / time
  double max_rel_err = 0;     // max |out − reference| / max |reference| over the checked sequences
};

// Throws (naming the case) when the output disagrees with the CPU reference beyond the element
// type's precision (bf16 2e-2, fp32 1e-4 relative to the largest output).
LatentDecodeBenchResult bench_latent_decode(const LatentDecodeBenchCase& c);

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
