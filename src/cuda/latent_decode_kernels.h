// What the paged latent decode's kernels share (latent_decode_*.cu): the sizes in device form, the
// cache split each block covers, and the launchers of the two split kernels — CUDA cores
// (latent_decode_cuda_cores.cu) and tensor cores (latent_decode_tc.cu). The entry point, the
// plan and the combine step are in latent_decode_cuda.cu. On Hopper a third, on the warpgroup MMA
// (latent_decode_wgmma.cu).
//
// Both split kernels write, per query row, either the final output and log-sum-exp (one split)
// or the split's normalised output and log-sum-exp in fp32 for the combine step:
//   part_o [splits, B·Tq·H, n_latent], part_lse [splits, B·Tq·H], rows in out's [B, Tq, H] order.
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

template <typename E>
struct Args {
  const E* q;
  const E* cache;
  const int32_t* block_table;
  const int32_t* seq_lens;
  E* out;
  float* lse;
  float* part_o;    // null when splits == 1
  float* part_lse;  // null when splits == 1
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
// normalised, bf16 with the log-sum-exp when there is one split, else fp32 partials. Every thread
// of the block calls it.
template <int NL, int HalfNL, int Rows>
__device__ __forceinline__ void write_halves(const Dims& d, float scale, int splits, int split, int64_t b, int64_t g0,
                                             int half, const int (&lr)[2], const float (&acc)[HalfNL / 8][4],
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
    const int64_t tq = gr / d.H, h = gr % d.H, orow = b * rows + gr;  // out's [B, Tq, H] row
    const int col0 = half * HalfNL + 2 * t;
    if (splits == 1) {
      __nv_bfloat16* o = out + orow * NL + col0;
#pragma unroll
      for (int n = 0; n < HalfNL / 8; ++n) flash_tc::store2(o + n * 8, acc[n][2 * r] * inv, acc[n][2 * r + 1] * inv);
      if (half == 0 && t == 0) lse[(b * d.H + h) * d.Tq + tq] = row_lse;
    } else {
      const int64_t prow = static_cast<int64_t>(split) * d.B * rows + orow;
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
void launch_cuda_cores(const Dims& d, float scale, int splits, const Args<E>& a);

// The tensor-core kernel (bf16): the (n_latent, rope_dim) pairs tc_supports names. `wide` tiles
// need 152 KiB of shared memory per block (A100, H100, H200), the others 75 KiB (every sm_8x).
bool tc_supports(int64_t nl, int64_t rope);
size_t tc_shared_bytes(const Dims& d, bool wide);
LaunchInfo tc_info(const Dims& d, bool wide);
void launch_tensor_cores(const Dims& d, float scale, int splits, const Args<__nv_bfloat16>& a, bool wide);

// The Hopper kernel (bf16, latent_decode_wgmma.cu): n_latent 512 with rope 64 only, on GPUs and
// builds where warpgroup_mma_supported(); 64 query rows a block in 226 KiB of shared memory.
bool wgmma_supports(int64_t nl, int64_t rope);
LaunchInfo wgmma_info(const Dims& d);
void launch_wgmma(const Dims& d, float scale, int splits, const Args<__nv_bfloat16>& a);

}  // namespace latent_decode
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
