// MLA's absorbed decode on the GPU over a paged latent cache (FlashMLA's inference kernel; CPU
// twin: attention/latent_decode.h). Every query head attends, as MQA, over its sequence's cached
// latent rows [c_kv (n_latent), k_rope (rope_dim)]: keys are whole rows (Dqk = n_latent +
// rope_dim), values their first n_latent values (Dv = n_latent); DeepSeek-V2/V3 use 576/512.
//
// The cache is paged: pages of page_size rows, [num_pages, page_size, row]; sequence b's token j
// sits in page block_table[b·max_pages + j / page_size] at row j mod page_size. Sequences have
// their own lengths (seq_lens, the new tokens included); the Tq new queries of a sequence are its
// last Tq positions, causally masked.
//
// The work is split along each sequence's cache (split-KV, as in Flash-Decoding): every split
// covers whole pages and keeps its own online softmax; a combine kernel then merges the splits by
// their log-sum-exp. The splits follow one of two schedules:
//   balanced — (the automatic choice) a small kernel reads the lengths on the GPU and cuts every
//              sequence into chunks of the same number of pages, its last one possibly shorter,
//              so a long sequence among short ones is spread over many blocks and a short one
//              takes one block and needs no combine (FlashMLA's tile scheduler does the same
//              job). The chunk size is chosen there, from the actual lengths, for this GPU;
//   uniform  — every sequence cut into the same number of splits, chosen on the host from the
//              block table's width (or given): what a batch of equal lengths needs, with no
//              scheduling launch.
// Two kernels do the splits:
//   tensor cores — bf16, for the (n_latent, rope_dim) pairs latent_decode_tc_supports names: a
//                  block holds 64 query rows (heads × new tokens) of one sequence and streams
//                  its split of the cache through shared memory once for all of them, QKᵀ and PV
//                  on mma.sync with the values read from the very rows that hold the keys;
//   CUDA cores   — fp32 (the parity path) and every other size, 16 query rows per block;
// and on Hopper (compute capability 9.0, a build with sm_90a code) a third, asked for by name:
//   wgmma        — bf16 at 512/64: the tensor-core kernel's plan on the warpgroup MMA, two
//                  warpgroups splitting the keys for QKᵀ and the output columns for PV, every
//                  operand from 128-byte-swizzled shared tiles.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "flashgpt/cuda/abi.h"
#include "flashgpt/cuda/ops_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

struct PagedLatentDims {
  int64_t B = 1;          // sequences
  int64_t H = 1;          // query heads
  int64_t Tq = 1;         // new query tokens per sequence
  int64_t n_latent = 512;  // Dv; at most 512
  int64_t rope_dim = 64;
  int64_t page_size = 64;
  int64_t max_pages = 1;  // block-table columns per sequence
  int64_t row() const { return n_latent + rope_dim; }
};

enum class LatentDecodeKernel { Auto, CudaCores, TensorCores, Wgmma };

// Auto: balanced, unless a split count is given (then uniform).
enum class LatentSchedule { Auto, Uniform, Balanced };

// Auto: the tensor-core kernel for bf16 at the sizes it is built for, otherwise the CUDA-core one
// (Wgmma is not chosen automatically until a GPU shows it faster).
struct LatentDecodeOptions {
  int splits = 0;  // uniform: splits of each sequence's cache; 0 chooses from the batch and the GPU
  LatentDecodeKernel kernel = LatentDecodeKernel::Auto;
  LatentSchedule schedule = LatentSchedule::Auto;
  // Scratch for the schedule and the splits' partial results: at least
  // plan_latent_decode(…).workspace_bytes, or null to have each call allocate (and wait for) its own.
  void* workspace = nullptr;
  // Balanced: the workspace already holds latent_decode_schedule's schedule for these lengths, so
  // the call does not make it again (several calls over the same sequences — a model's layers —
  // share one). Ignored by the uniform schedule.
  bool schedule_ready = false;
};

// What a call with these options will do on this GPU.
struct LatentDecodePlan {
  LatentDecodeKernel kernel = LatentDecodeKernel::CudaCores;  // resolved, never Auto
  LatentSchedule schedule = LatentSchedule::Uniform;          // resolved, never Auto
  int splits = 1;               // uniform: splits of each sequence; balanced: 0 (chosen on the GPU)
  int64_t chunk_slots = 0;      // balanced: the most chunks the schedule may cut (the split launch's width)
  int rows_per_block = 16;      // query rows (heads × new tokens) that share one pass over the cache
  int blocks_per_sm = 1;        // how many of the split kernel's blocks one SM holds at once
  size_t shared_bytes = 0;      // per block
  size_t workspace_bytes = 0;   // the schedule, the partial outputs and log-sum-exps (0 when none)
};

// The balanced schedule for one batch: chunks of chunk_pages pages, `chunks` of them in all,
// `whole` of them a full chunk_pages long (launched before the shorter last chunks), `cut`
// sequences in more than one (those the combine step merges).
struct LatentChunks {
  int64_t chunk_pages = 0, chunks = 0, cut = 0, whole = 0;
};

// Whether the tensor-core kernel is built for this latent width and rope width.
bool latent_decode_tc_supports(int64_t n_latent, int64_t rope_dim);

// The split count the automatic choice makes for `blocks` blocks of a split-free launch over at
// most `pages` pages per sequence, when `slots` blocks run at once on the whole GPU: the count
// with the fewest page-steps on the busiest SM, where every split also pays about one page for
// loading its queries and writing its partial result, and the combine step about two more.
int choose_latent_splits(int64_t blocks, int64_t pages, int64_t slots);

// The choice the balanced schedule makes on the GPU, here on the host (the same arithmetic): for
// sequences of `pages` pages each, row groups of `groups` blocks per chunk and `slots` blocks at
// once on the GPU, the chunk of ⌈P/s⌉ pages (P the longest sequence's, s = 1 … min(P, 64)) with
// the fewest page-steps on the busiest SM — waves · (chunk + 1), plus 2 when any sequence is
// cut — among those that make at most chunk_slots chunks; ties to the larger chunk.
LatentChunks choose_latent_chunks(const std::vector<int64_t>& pages, int64_t groups, int64_t slots,
                                  int64_t chunk_slots);

// T is float or bf16. Throws on sizes no kernel runs (naming them), or when TensorCores or Wgmma
// is asked for what that kernel cannot run (Wgmma also where the GPU or build lacks wgmma).
template <typename T>
LatentDecodePlan plan_latent_decode(const PagedLatentDims& d, const LatentDecodeOptions& opt = {});

// q_abs [B, Tq, H, row] (queries with W_k_up folded in), cache pages [·, page_size, row],
// block_table [B, max_pages], seq_lens [B] (each ≥ Tq and ≤ max_pages·page_size); writes
// out [B, Tq, H, n_latent] and lse [B, H, Tq]. T is float or bf16. Without a workspace the call
// waits for the GPU before returning (it frees what it allocated).
// Balanced: makes the schedule for these lengths (seq_lens on the GPU, as the decode takes them)
// in opt.workspace, for calls with schedule_ready. Queued on the stream like the decode; no wait.
template <typename T>
void latent_decode_schedule(const PagedLatentDims& d, const int32_t* seq_lens, const LatentDecodeOptions& opt);

// The schedule the workspace holds (waits for the GPU): what the last balanced call, or
// latent_decode_schedule, chose.
LatentChunks read_latent_schedule(const void* workspace);

template <typename T>
void latent_decode_paged(const PagedLatentDims& d, float scale, const T* q_abs, const T* cache,
                         const int32_t* block_table, const int32_t* seq_lens, T* out, float* lse,
                         const LatentDecodeOptions& opt = {});

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
