// Flash decode: attention for a few new queries per sequence over a long key/value cache on the
// GPU, split along the cache (Flash-Decoding; CPU twin: the standard and flash kernels of
// attention/attention.h, which it equals).
//
// The flash kernels (attention_cuda.h) parallelise over query tiles: one new token per sequence
// gives them B·Hq blocks, a dozen at batch 1, each walking the whole cache. Here a block takes the
// query rows that share one key/value head (the GQA group × the new tokens, up to 16 of them) and
// one split of the sequence's keys: the cache is read once per key/value head, spread over
// B·Hkv·splits blocks, and a combine step merges the splits by their log-sum-exp
// (split_combine.h). Key and value tiles are double-buffered in shared memory by asynchronous
// copies; the products run on the CUDA cores in fp32 (the work per byte is a few flops, so the
// cache's bandwidth sets the pace). Each split covers an equal share of its own sequence's
// visible keys, counted on the GPU from the mask (kv_lengths, the causal offsets): Tk may be the
// cache's capacity, the grid does not change with the lengths (a CUDA graph replays it) and no
// block reads past a sequence's last key.
//
// Same layouts, masks and results as the other kernels (attention.h): q [B, Tq, Hq, Dqk],
// k/v [B, Tk_stride, Hkv, D] with optional row strides, o [B, Tq, Hq, Dv], lse [B, Hq, Tq]; every
// mask (causal offsets, per-sequence offsets, key padding, documents); head dims up to 256 each,
// Dqk ≠ Dv allowed. Any Tq·Hq/Hkv runs (blocks take 16 rows each), but it pays off only while
// that is small: decoding, not prefill.
#pragma once

#include <cstddef>
#include <cstdint>

#include "flashgpt/attention/attention.h"
#include "flashgpt/cuda/abi.h"
#include "flashgpt/cuda/ops_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

// Query rows one block holds; at most this many rows per key/value head use the cache once.
inline constexpr int64_t kFlashDecodeRows = 16;
// Widest head (Dqk and Dv) the kernel takes.
inline constexpr int64_t kFlashDecodeMaxHeadDim = 256;

// The split kernel. Tiles: a block's key and value tiles double-buffered in shared memory, its
// warps in step through block barriers (any head dims, up to kFlashDecodeRows rows a block).
// Warps: each warp walks its own key tiles straight from global memory, a lane per key for the
// scores and a coalesced row per key group for P·V, with no block barrier until the warps merge
// at the end (up to kFlashDecodeWarpRows rows a block; key and value rows of whole, aligned
// 16-byte chunks, a value row of 1–32 chunks: flash_decode_warps_run). Auto takes Tiles, the one
// measured so far.
enum class FlashDecodeKernel { Auto, Tiles, Warps };
constexpr const char* flash_decode_kernel_name(FlashDecodeKernel k) {
  return k == FlashDecodeKernel::Tiles ? "tiles" : k == FlashDecodeKernel::Warps ? "warps" : "auto";
}
inline constexpr int64_t kFlashDecodeWarpRows = 4;

struct FlashDecodeOptions {
  FlashDecodeKernel kernel = FlashDecodeKernel::Auto;
  int splits = 0;  // splits of each sequence's keys; 0 chooses from the sizes and the GPU
  // Scratch for the splits' partial results: at least plan_flash_decode(…).workspace_bytes, or
  // null to have each call allocate (and wait for) its own.
  void* workspace = nullptr;
};

// What a call with these sizes and options does on this GPU.
struct FlashDecodePlan {
  FlashDecodeKernel kernel = FlashDecodeKernel::Tiles;  // the one that runs (never Auto)
  int splits = 1;
  int rows_per_block = static_cast<int>(kFlashDecodeRows);
  int key_tile = 32;         // keys per tile (a shared-memory tile, or a warp's step)
  int stages = 2;            // Tiles: tiles in flight per block (2: double-buffered); Warps: 0
  bool async_copies = true;  // Tiles: 16-byte cp.async (false: plain loads, for rows not 16-byte aligned)
  int blocks_per_sm = 1;     // blocks one SM holds at once
  size_t shared_bytes = 0;   // per block
  size_t workspace_bytes = 0;  // the partial outputs and log-sum-exps when splits > 1
  // Whether flash decode is expected to beat the flash kernels on this case (whatever the options'
  // split count). Measured on an H100 (bench/results/2026-11-23-h100): it won wherever a block
  // held two or more query rows (GQA groups, several new tokens: the flash kernels read the cache
  // once per query head, flash decode once per key/value head; 2.1–7.2× for 32/8 heads at batch
  // 1–64), and with one row per block only where the automatic choice split the keys at least
  // kFlashDecodeWinningSplits ways (12 heads: 1.4–7.1× at batch 1, 1.09× at batch 16 over 16k keys
  // with 11 splits; 0.74–0.96× with 2–8 splits, where the flash kernels' grid already fills the GPU).
  bool beats_flash_kernel = true;
};

// With one query row per block, flash decode is expected to win from this automatic split count on.
inline constexpr int kFlashDecodeWinningSplits = 10;

// Whether the kernel runs these head dims (both 1…kFlashDecodeMaxHeadDim).
bool flash_decode_supports(int64_t Dqk, int64_t Dv);
// Whether the Warps kernel runs these sizes with k and v at these addresses (T float or bf16).
template <typename T>
bool flash_decode_warps_run(const AttentionDims& d, const T* k, const T* v);

// The split count the automatic choice makes for `blocks` blocks of a split-free launch over at
// most `tiles` key tiles per sequence when `slots` blocks run at once on the whole GPU.
int choose_flash_decode_splits(int64_t blocks, int64_t tiles, int64_t slots);

// T is float or bf16. Throws (naming the size) when the dims are inconsistent, a head dim is
// beyond the kernel, or the Warps kernel, asked for, cannot run them. Pointers matter only for
// the 16-byte loads: pass null ones to plan for aligned tensors.
template <typename T>
FlashDecodePlan plan_flash_decode(const AttentionDims& d, const FlashDecodeOptions& opt = {}, const T* q = nullptr,
                                  const T* k = nullptr, const T* v = nullptr);

// Every pointer, the mask's arrays included, in device memory. Queued on the current stream;
// without a workspace (and with more than one split) the call waits for the GPU before it returns.
template <typename T>
void flash_decode(const AttentionDims& d, const AttentionMask& m, float scale, const T* q, const T* k, const T* v,
                  T* o, float* lse, const FlashDecodeOptions& opt = {});

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
