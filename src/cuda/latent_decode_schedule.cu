// The paged latent decode's balanced schedule (see latent_decode_kernels.h): one block reads the
// sequences' lengths on the GPU — where they live, and where a captured decode step's lengths
// change between replays — and cuts every sequence into chunks of the same number of pages for
// the split kernels.
//
//   1. P, the longest sequence's pages;
//   2. for each candidate chunk ⌈P/s⌉ (s = 1 … min(P, 64); one warp per candidate at a time, its
//      lanes over the sequences) the number of chunks it makes; thread 0 takes the cheapest
//      (chunk_cost) of those that fit the launch's chunk slots;
//   3. each thread a contiguous run of sequences: their chunk counts, whole chunks, short last
//      chunks and cut flags, exclusive scans of the runs' totals (thread 0, over the 256 runs),
//      then the run's first partial slots (each sequence's chunks side by side, for the combine),
//      cut list entries and (sequence, chunk, partial slot) items — every whole chunk in sequence
//      order, then every short one — the longest work first, as list scheduling wants.
// choose_latent_chunks is step 2 on the host: the same arithmetic, for tests and for the reader.
#include <algorithm>
#include <string>
#include <vector>

#include "cuda/latent_decode_kernels.h"
#include "flashgpt/cuda/latent_decode_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace latent_decode {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__global__ void __launch_bounds__(kThreads)
    schedule_kernel(const int32_t* __restrict__ seq_lens, int64_t B, int64_t page, int64_t groups, int64_t slots,
                    int64_t chunk_slots, int32_t* __restrict__ header, int32_t* __restrict__ first,
                    int32_t* __restrict__ cut, int32_t* __restrict__ items) {
  __shared__ int64_t warp_max[kWarps];
  __shared__ int64_t chunks_of[kMaxChunkSplits];
  __shared__ int64_t run_chunks[kThreads], run_whole[kThreads], run_short[kThreads], run_cut[kThreads];
  __shared__ int64_t chosen;
  const int t = static_cast<int>(threadIdx.x), lane = t % 32, warp = t / 32;

  // 1. The longest sequence's pages.
  int64_t most = 1;
  for (int64_t b = t; b < B; b += kThreads) most = max(most, pages_of(seq_lens[b], page));
  for (int o = 16; o > 0; o /= 2) most = max(most, __shfl_xor_sync(0xffffffffu, most, o));
  if (lane == 0) warp_max[warp] = most;
  __syncthreads();
  int64_t P = 1;
  for (int w = 0; w < kWarps; ++w) P = max(P, warp_max[w]);

  // 2. Each candidate's chunk count, then the cheapest that fits.
  const int64_t candidates = min(P, static_cast<int64_t>(kMaxChunkSplits));
  for (int64_t s = 1 + warp; s <= candidates; s += kWarps) {
    const int64_t c = (P + s - 1) / s;
    int64_t n = 0;
    for (int64_t b = lane; b < B; b += 32) n += (pages_of(seq_lens[b], page) + c - 1) / c;
    for (int o = 16; o > 0; o /= 2) n += __shfl_xor_sync(0xffffffffu, n, o);
    if (lane == 0) chunks_of[s - 1] = n;
  }
  __syncthreads();
  if (t == 0) {
    int64_t best = P, best_cost = chunk_cost(P, B, B, groups, slots);  // s = 1: B chunks, always fits
    for (int64_t s = 2; s <= candidates; ++s) {
      const int64_t c = (P + s - 1) / s, n = chunks_of[s - 1];
      if (n > chunk_slots) continue;
      const int64_t cost = chunk_cost(c, n, B, groups, slots);
      if (cost < best_cost) {
        best = c;
        best_cost = cost;
      }
    }
    chosen = best;
  }
  __syncthreads();
  const int64_t c = chosen;

  // 3. The runs' totals, their exclusive scan, then each run's slots, cut entries and items.
  const int64_t per = (B + kThreads - 1) / kThreads, b0 = min(B, t * per), b1 = min(B, b0 + per);
  int64_t n_run = 0, whole_run = 0, short_run = 0, cut_run = 0;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t p = pages_of(seq_lens[b], page), n = (p + c - 1) / c;
    n_run += n;
    whole_run += p / c;
    short_run += p % c != 0 ? 1 : 0;
    cut_run += n > 1 ? 1 : 0;
  }
  run_chunks[t] = n_run;
  run_whole[t] = whole_run;
  run_short[t] = short_run;
  run_cut[t] = cut_run;
  __syncthreads();
  if (t == 0) {
    int64_t total = 0, wholes = 0, shorts = 0, cuts = 0;
    for (int r = 0; r < kThreads; ++r) {
      const int64_t n = run_chunks[r], w = run_whole[r], k = run_short[r], x = run_cut[r];
      run_chunks[r] = total;
      run_whole[r] = wholes;
      run_short[r] = shorts;
      run_cut[r] = cuts;
      total += n;
      wholes += w;
      shorts += k;
      cuts += x;
    }
    for (int r = 0; r < kThreads; ++r) run_short[r] += wholes;  // the short chunks follow every whole one
    header[0] = static_cast<int32_t>(c);
    header[1] = static_cast<int32_t>(total);
    header[2] = static_cast<int32_t>(cuts);
    header[3] = static_cast<int32_t>(wholes);
    first[B] = static_cast<int32_t>(total);
  }
  __syncthreads();
  int64_t slot = run_chunks[t], next_whole = run_whole[t], next_short = run_short[t], next_cut = run_cut[t];
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t p = pages_of(seq_lens[b], page), n = (p + c - 1) / c;
    first[b] = static_cast<int32_t>(slot);
    if (n > 1) cut[next_cut++] = static_cast<int32_t>(b);
    for (int64_t j = 0; j < n; ++j, ++slot) {
      const int64_t at = (j + 1) * c <= p ? next_whole++ : next_short++;
      items[3 * at] = static_cast<int32_t>(b);
      items[3 * at + 1] = static_cast<int32_t>(j);
      items[3 * at + 2] = static_cast<int32_t>(slot);
    }
  }
}

}  // namespace

void launch_schedule(const Dims& d, const int32_t* seq_lens, int64_t groups, int64_t slots, int64_t chunk_slots,
                     const ScheduleViews& v) {
  launch_kernel("latent decode schedule", schedule_kernel, 1, kThreads, 0, nullptr, seq_lens, d.B, d.page, groups,
                slots, chunk_slots, v.header, v.first, v.cut, v.items);
}

}  // namespace latent_decode

LatentChunks choose_latent_chunks(const std::vector<int64_t>& pages, int64_t groups, int64_t slots,
                                  int64_t chunk_slots) {
  using namespace latent_decode;
  const auto B = static_cast<int64_t>(pages.size());
  FLASHGPT_CUDA_REQUIRE(B > 0 && groups > 0 && slots > 0 && chunk_slots >= B,
                        "latent decode: the schedule needs sequences, positive groups and slots, and at least one "
                        "chunk slot per sequence");
  int64_t P = 1;
  for (int64_t p : pages) P = std::max(P, std::max<int64_t>(p, 1));
  auto chunks_for = [&](int64_t c) {
    int64_t n = 0;
    for (int64_t p : pages) n += (std::max<int64_t>(p, 1) + c - 1) / c;
    return n;
  };
  int64_t best = P, best_cost = chunk_cost(P, B, B, groups, slots);
  for (int64_t s = 2; s <= std::min<int64_t>(P, kMaxChunkSplits); ++s) {
    const int64_t c = (P + s - 1) / s, n = chunks_for(c);
    if (n > chunk_slots) continue;
    const int64_t cost = chunk_cost(c, n, B, groups, slots);
    if (cost < best_cost) {
      best = c;
      best_cost = cost;
    }
  }
  LatentChunks r{best, chunks_for(best), 0, 0};
  for (int64_t p : pages) {
    r.cut += (std::max<int64_t>(p, 1) + best - 1) / best > 1 ? 1 : 0;
    r.whole += std::max<int64_t>(p, 1) / best;
  }
  return r;
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
