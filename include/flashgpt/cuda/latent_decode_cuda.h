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
// their log-sum-exp. The split count is chosen from the batch and the GPU's SM count unless given.
#pragma once

#include <cstdint>

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

// q_abs [B, Tq, H, row] (queries with W_k_up folded in), cache pages [·, page_size, row],
// block_table [B, max_pages], seq_lens [B] (each ≥ Tq and ≤ max_pages·page_size); writes
// out [B, Tq, H, n_latent] and lse [B, H, Tq]. T is float or bf16. splits = 0 chooses.
template <typename T>
void latent_decode_paged(const PagedLatentDims& d, float scale, const T* q_abs, const T* cache,
                         const int32_t* block_table, const int32_t* seq_lens, T* out, float* lse, int splits = 0);

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
