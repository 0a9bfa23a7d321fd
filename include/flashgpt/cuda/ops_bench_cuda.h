// The training step's memory-bound ops timed on the GPU beside its own device-to-device copy rate
// (flashgpt bench ops), at a training batch's sizes (d12, B·T = 16·1024 rows by default), in
// bf16. Each op runs twice in the same process: on 16-byte-aligned buffers, where it moves whole
// 16-byte packs (cuda/packed.h), and on the same values one element off, where it goes an element
// at a time, so the ratio of the two is the packing's gain measured side by side. The residual
// add and the norm after it run fused and as two ops. Before timing, each op's two paths are
// checked against each other on the same inputs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "flashgpt/cuda/abi.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

struct OpsBenchCase {
  int64_t rows = 16 * 1024;  // tokens in the batch
  int64_t width = 768;       // n_embd; the MLP is 4× as wide
  int64_t vocab = 50257;     // the loss's rows are this wide, padded to a multiple of 64
  int64_t loss_rows = 4096;  // rows of logits per classifier chunk (the model's default at d12)
  int64_t params = 124475904;  // AdamW's parameters (d12)
  int repeats = 10;            // timed samples after a warm-up; medians reported
  uint64_t seed = 1;
};

struct OpsBenchRow {
  std::string op;      // "add", "gelu forward", …
  std::string path;    // "packed", "one at a time", "fused", "fused, one at a time", "add, then norm"
  double ms = 0;       // one call, median over the samples
  double bytes = 0;    // what the op must read and write at the least (for "add, then norm": the fused op's)
  double gbps = 0;     // bytes / ms
  double max_diff = 0;  // max |this path − the packed (or fused) path| / max |that| on the same inputs
};

struct OpsBenchResult {
  std::vector<OpsBenchRow> rows;  // in pairs: an op's first path (packed, or fused), then its other
  double copy_gbps = 0;  // a device-to-device copy of as many bytes as AdamW moves (64 MiB to 1 GiB), read + written / time
};

// Throws when an op's two paths disagree (beyond one bf16 rounding for the norms, whose sums run
// in different orders; bit for bit for the rest).
OpsBenchResult bench_ops(const OpsBenchCase& c);

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
