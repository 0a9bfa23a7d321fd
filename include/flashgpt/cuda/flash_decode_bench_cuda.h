// Flash decode timed on the GPU (flashgpt bench flash-decode): one decoding case — B sequences
// of `context` cached tokens, Tq new queries each — run by flash decode (flash_decode_cuda.h) and,
// side by side on the same tensors, by the flash kernel the model used before it (tensor cores in
// bf16, the fp32 kernel in fp32), beside the GPU's own device-to-device copy rate. Where the
// options' kernel is not the warps kernel and that kernel runs the case, it is timed beside them
// too. Each is checked against the CPU's attention on the first and last sequence before
// anything is timed.
// Decoding reads the whole cache once per call: its rate against the copy's is the figure.
#pragma once

#include <cstdint>

#include "flashgpt/attention/attention.h"
#include "flashgpt/cuda/abi.h"
#include "flashgpt/cuda/flash_decode_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

struct FlashDecodeBenchCase {
  int64_t B = 1, Hq = 12, Hkv = 12, Tq = 1, head_dim = 64;
  int64_t context = 4096;  // cached tokens per sequence, the new ones included (≥ Tq)
  bool bf16 = true;        // else fp32
  FlashDecodeOptions options;  // the kernel and split count; the workspace is the benchmark's own
  int repeats = 10;            // timed samples after a warm-up; medians reported
  uint64_t seed = 1;
};

struct FlashDecodeBenchResult {
  FlashDecodePlan plan;
  double ms = 0;           // one flash decode call (the combine included), median
  double flash_ms = 0;     // the flash kernel on the same case, median
  double bytes = 0;        // what one call must move: keys, values, queries, outputs, lse
  double gbps = 0;         // bytes / ms
  double copy_gbps = 0;    // a device-to-device copy, read + written / time
  double max_rel_err = 0;  // flash decode: max |o − reference| / max |reference|, checked sequences
  double flash_max_rel_err = 0;  // the same for the flash kernel
  // The warps kernel beside them (its own automatic split count), where it was timed: ms > 0.
  double warps_ms = 0;
  int warps_splits = 0;
  double warps_max_rel_err = 0;
};

// Throws (naming the case) when either output disagrees with the CPU beyond the element type's
// precision (bf16 2e-2, fp32 1e-4 relative to the largest output).
FlashDecodeBenchResult bench_flash_decode(const FlashDecodeBenchCase& c);

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
