// What the paged latent decode's kernels share (latent_decode_*.cu): the sizes in device form, the
// cache split each block covers, and the launchers of the two split kernels — CUDA cores
// (latent_decode_cuda_cores.cu) and tensor cores (latent_decode_tc.cu). The entry point, the
// plan and the combine step are in latent_decode_cuda.cu. On Hopper a third, on the warpgroup MMA
// (latent_decode_wgmma.cu).
//
// The blocks share out the sequences' keys in one of two ways (Split):
//   uniform   — grid (splits, row groups, B): every sequence cut into `splits` ranges of whole
//               pages, the same count for each (the last ones possibly empty);
//   balanced  — grid (chunk slots, row groups): the schedule (latent_decode_schedule.cu) cut every
//               sequence, from its length on the device, into chunks of the same number of pages
//               (its last chunk possibly shorter) and listed them; block x takes chunk x, and
//               blocks past the list's end leave at once.
// Every split kernel writes, per query row, either the final output and log-sum-exp (its range
// is the whole sequence) or the range's normalised output and log-sum-exp in fp32 for the
// combine step, at partial row prow0 + (the row's index in its sequence):
//   uniform   part_o [splits, B·Tq·H, n_latent], part_lse [splits, B·Tq·H], rows in out's order;
//   balanced  part_o [chunk slots, Tq·H, n_latent], part_lse [chunk slots, Tq·H].
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/attention_flash_tc_common.h"
#include "cuda/platform.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace latent_decode {

struct Dims {
  int64_t B, H, Tq, nl, row, page, max_pages;
  __host__ __device__ int64_t rows() const { return Tq * H; }  // query rows per sequence
};

// The keys [k0, k1) that split `split` of `splits` covers in a sequence of len tokens: whole
// pages, the same count for every split, the last ones possibly empty.
struct KeyRange {
  int64_t k0, k1;
};
__host__ __device__ inline KeyRange split_range(int64_t len, int64_t page, int split, int splits) {
  const int64_t pages = (len + page - 1) / page, per = (pages + splits - 1) / splits;
  const int64_t k0 = split * per * page, k1 = (split + 1) * per * page;
  return {k0 < len ? k0 : len, k1 < len ? k1 : len};
}

// How a launch's blocks share out the keys. `chunks` null: uniform, `splits` ranges per sequence.
// Otherwise balanced: chunks = [pages per chunk, chunk count, sequences cut in several chunks],
// items = [launch order][3] = (sequence, chunk index in it, its partial slot): whole chunks first,
// then the shorter last chunks, so that the blocks the GPU starts last are the short ones.
struct Split {
  int splits = 1;
  const int32_t* chunks = nullptr;
  const int32_t* items = nullptr;
  int64_t chunk_slots = 0;  // balanced: the grid's x, the list's capacity
};

// The split kernels' grid for blocks of rows_per_block query rows.
inline dim3 grid_of(const Dims& d, const Split& s, int rows_per_block) {
  const auto groups = static_cast<unsigned>((d.rows() + rows_per_block - 1) / rows_per_block);
  return s.chunks != nullptr ? dim3(static_cast<unsigned>(s.chunk_slots), groups, 1)
                             : dim3(static_cast<unsigned>(s.splits), groups, static_cast<unsigned>(d.B));
}

// One block's share: sequence b (len tokens) keys [k0, k1); `direct` when that is the whole
// sequence (final output, no partial), else partial rows from prow0; `none` for a balanced
// block past the chunk list's end.
struct Work {
  int64_t b = 0, len = 0, k0 = 0, k1 = 0, prow0 = 0;
  bool direct = true, none = false;
};

__device__ __forceinline__ Work work_of(const Dims& d, const Split& s, const int32_t* seq_lens) {
  Work w;
  if (s.chunks == nullptr) {
    const int split = static_cast<int>(blockIdx.x);
    w.b = blockIdx.z;
    w.len = seq_lens[w.b];
    const KeyRange r = split_range(w.len, d.page, split, s.splits);
    w.k0 = r.k0;
    w.k1 = r.k1;
    w.direct = s.splits == 1;
    w.prow0 = (static_cast<int64_t>(split) * d.B + w.b) * d.rows();
    return w;
  }
  const int64_t at = blockIdx.x;
  if (at >= s.chunks[1]) {
    w.none = true;
    return w;
  }
  const int32_t* item = s.items + 3 * at;
  const int64_t keys = static_cast<int64_t>(s.chunks[0]) * d.page, j = item[1];
  w.b = item[0];
  w.len = seq_lens[w.b];
  w.k0 = j * keys;
  w.k1 = w.k0 + keys < w.len ? w.k0 + keys : w.len;
  w.direct = j == 0 && w.k1 == w.len;
  w.prow0 = static_cast<int64_t>(item[2]) * d.rows();
  return w;
}

// The balanced schedule (latent_decode_schedule.cu). Its choice, made on the GPU and mirrored on
// the host by choose_latent_chunks: a sequence of len tokens counts at least one page (an empty
// one still writes its rows), and a chunk of c pages for a batch of B sequences cut into n chunks
// costs waves · (c + 1) page-steps on the busiest SM, plus 2 for the combine when n > B.
constexpr int kMaxChunkSplits = 64;  // the longest sequence is cut in at most this many chunks
__host__ __device__ inline int64_t pages_of(int64_t len, int64_t page) {
  const int64_t p = (len + page - 1) / page;
  return p > 1 ? p : 1;
}
__host__ __device__ inline int64_t chunk_cost(int64_t chunk_pages, int64_t chunks, int64_t B, int64_t groups,
                                              int64_t slots) {
  const int64_t waves = (chunks * groups + slots - 1) / slots;
  return waves * (chunk_pages + 1) + (chunks > B ? 2 : 0);
}

// Where the schedule sits at the start of a balanced call's workspace (int32): the header
// [chunk pages, chunks, cut sequences, whole chunks], first [B + 1] (each sequence's first partial
// slot: its chunks' partial results side by side), cut
// [B] (the sequences cut in several, in order), items [chunk_slots][3]; then, from
// schedule_bytes, the partial results (split_combine.h) of chunk_slots slots.
struct ScheduleViews {
  int32_t* header;
  int32_t* first;
  int32_t* cut;
  int32_t* items;
};
inline size_t schedule_bytes(int64_t B, int64_t chunk_slots) {
  return (sizeof(int32_t) * static_cast<size_t>(4 + 2 * B + 1 + 3 * chunk_slots) + 255) / 256 * 256;
}
inline ScheduleViews schedule_views(void* workspace, int64_t B) {
  auto* p = static_cast<int32_t*>(workspace);
  return {p, p + 4, p + 4 + B + 1, p + 4 + 2 * B + 1};
}

// Queues the schedule kernel (one block) for sequences of seq_lens over `groups` row groups each
// on a GPU running `slots` split blocks at once.
void launch_schedule(const Dims& d, const int32_t* seq_lens, int64_t groups, int64_t slots, int64_t chunk_slots,
                     const ScheduleViews& v);

template <typename E>
struct Args {
  const E* q;
  const E* cache;
  const int32_t* block_table;
  const int32_t* seq_lens;
  E* out;
  float* lse;
  float* part_o;    // null when no block writes partial results
  float* part_lse;
  Split split;
};

// How one split kernel launches for these sizes: the query rows a block holds, its threads and
// shared memory, and how many of its blocks an SM holds at once.
struct LaunchInfo {
  int rows = 0, threads = 0;
  size_t shared_bytes = 0;
  int blocks_per_sm = 0;
};

// The middle of a tile in the two tensor-core split kernels, whose two halves (of warps, or
// warpgroups) hold every query row of the block, each over its HalfKeys keys of the tile: this
// half's scores s masked (where needs_mask) past the split's end k1 and past each row's position
// qpos, the halves' row maxima met in red ([2][Rows]; one block barrier), then each of this lane's
// rows (lr) rescaled — its running max and sum, and the output accumulators — and its
// probabilities handed, two adjacent keys at a time, to store_p(row, tile-local key, p0, p1).
// Every thread of the block calls it.
template <int HalfKeys, int HalfNL, int Rows, typename StoreP>
__device__ __forceinline__ void halves_softmax(float (&s)[HalfKeys / 8][4], float (&acc)[HalfNL / 8][4],
                                               float (&row_max)[2], float (&row_sum)[2], float* red, const int (&lr)[2],
                                               const int64_t (&qpos)[2], int half, int64_t j0, int64_t k1,
                                               bool needs_mask, float scale_log2, StoreP&& store_p) {
  const int t = static_cast<int>(threadIdx.x) % 4;
  if (needs_mask) {
#pragma unroll
    for (int n = 0; n < HalfKeys / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t j = j0 + half * HalfKeys + n * 8 + 2 * t + (e & 1);
        if (j >= k1 || j > qpos[e >> 1]) s[n][e] = -INFINITY;
      }
  }
  // The tile's row maxima, this half's first.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = -INFINITY;
#pragma unroll
    for (int n = 0; n < HalfKeys / 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
    mx = flash_tc::quad_max(mx);
    if (t == 0) red[half * Rows + lr[r]] = mx;
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float mx = fmaxf(row_max[r], fmaxf(red[lr[r]], red[Rows + lr[r]]));
    const float base = mx == -INFINITY ? 0.0f : mx * scale_log2;  // a row with nothing visible yet stays at 0
    const float alpha = exp2f(row_max[r] * scale_log2 - base);
    row_max[r] = mx;
    float sum = 0.0f;
#pragma unroll
    for (int n = 0; n < HalfKeys / 8; ++n) {
      const float p0 = exp2f(s[n][2 * r] * scale_log2 - base), p1 = exp2f(s[n][2 * r + 1] * scale_log2 - base);
      sum += p0 + p1;
      store_p(lr[r], half * HalfKeys + n * 8 + 2 * t, p0, p1);
    }
    row_sum[r] = row_sum[r] * alpha + sum;
#pragma unroll
    for (int n = 0; n < HalfNL / 8; ++n) {
      acc[n][2 * r] *= alpha;
      acc[n][2 * r + 1] *= alpha;
    }
  }
}

// The end of the two tensor-core split kernels, whose two halves (of warps, or warpgroups) hold
// every query row of the block, each over half of every tile's keys and half of the output
// columns: the halves' row sums meet in red ([2][Rows], free once the last tile's row maxima are
// read), and each writes its columns of the block's rows (lr: this lane's two, block-local) —
// normalised, bf16 with the log-sum-exp when its keys are the whole sequence, else fp32
// partials. Every thread of the block calls it.
template <int NL, int HalfNL, int Rows>
__device__ __forceinline__ void write_halves(const Dims& d, float scale, const Work& w, int64_t g0, int half,
                                             const int (&lr)[2], const float (&acc)[HalfNL / 8][4],
                                             const float (&row_max)[2], const float (&row_sum)[2], float* red,
                                             __nv_bfloat16* out, float* lse, float* part_o, float* part_lse) {
  const int t = static_cast<int>(threadIdx.x) % 4;
  const int64_t rows = d.rows();
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float sum = flash_tc::quad_sum(row_sum[r]);
    if (t == 0) red[half * Rows + lr[r]] = sum;
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t gr = g0 + lr[r];
    if (gr >= rows) continue;
    const float sum = red[lr[r]] + red[Rows + lr[r]];
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;  // a row that saw no key writes zeros
    const float row_lse = sum > 0.0f ? row_max[r] * scale + logf(sum) : -INFINITY;
    const int64_t tq = gr / d.H, h = gr % d.H, orow = w.b * rows + gr;  // out's [B, Tq, H] row
    const int col0 = half * HalfNL + 2 * t;
    if (w.direct) {
      __nv_bfloat16* o = out + orow * NL + col0;
#pragma unroll
      for (int n = 0; n < HalfNL / 8; ++n) flash_tc::store2(o + n * 8, acc[n][2 * r] * inv, acc[n][2 * r + 1] * inv);
      if (half == 0 && t == 0) lse[(w.b * d.H + h) * d.Tq + tq] = row_lse;
    } else {
      const int64_t prow = w.prow0 + gr;
      float* o = part_o + prow * NL + col0;
#pragma unroll
      for (int n = 0; n < HalfNL / 8; ++n) {
        o[n * 8] = acc[n][2 * r] * inv;
        o[n * 8 + 1] = acc[n][2 * r + 1] * inv;
      }
      if (half == 0 && t == 0) part_lse[prow] = row_lse;
    }
  }
}

// The CUDA-core kernel (E float or __nv_bfloat16): any n_latent ≤ 512 and rope_dim.
template <typename E>
LaunchInfo cuda_cores_info(const Dims& d);
template <typename E>
void launch_cuda_cores(const Dims& d, float scale, const Args<E>& a);

// The tensor-core kernel (bf16): the (n_latent, rope_dim) pairs tc_supports names. `wide` tiles
// need 152 KiB of shared memory per block (A100, H100, H200), the others 75 KiB (every sm_8x).
bool tc_supports(int64_t nl, int64_t rope);
size_t tc_shared_bytes(const Dims& d, bool wide);
LaunchInfo tc_info(const Dims& d, bool wide);
void launch_tensor_cores(const Dims& d, float scale, const Args<__nv_bfloat16>& a, bool wide);

// The Hopper kernel (bf16, latent_decode_wgmma.cu): n_latent 512 with rope 64 only, on GPUs and
// builds where warpgroup_mma_supported(); 64 query rows a block in 226 KiB of shared memory.
bool wgmma_supports(int64_t nl, int64_t rope);
LaunchInfo wgmma_info(const Dims& d);
void launch_wgmma(const Dims& d, float scale, const Args<__nv_bfloat16>& a);

}  // namespace latent_decode
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
