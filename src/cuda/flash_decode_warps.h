// Flash decode's warps kernel (FlashDecodeKernel::Warps).
#pragma once

#include <cstdint>

#include "cuda/flash_decode_kernels.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace flash_decode_kernels {

// --- The warps kernel: each warp its own key tiles, no block barrier until the end ------------
//
// A block of kWarpsPerBlock warps holds up to kWarpRows query rows of one key/value head and one
// split of its keys; warp w takes the split's 32-key tiles w, w + 4, … on its own. Per tile:
//   scores — lane l reads key j0 + l straight from global memory (16-byte loads of the whole key
//            row) and dots it with each row's query (fp32 in shared memory, read by every lane
//            at once: a broadcast);
//   softmax — the row's tile max and sum by warp shuffles, the running max, sum and rescale
//            kept in every lane's registers; the probabilities to the warp's own shared row;
//   P·V    — lanes split into 32 / vc key groups of vc lanes, each lane one 16-byte chunk of a
//            value row, so a group reads whole value rows (coalesced) and a warp several keys'
//            rows at once.
// Only __syncwarp() orders a tile's steps; at the end the key groups' sums are added by
// shuffles and the warps' (max, sum, output) merged once through shared memory, as the splits'
// are by the combine step. What limits the tiles kernel (three block barriers a tile, a softmax
// of one warp per row while the block waits) is gone; the loads in flight come from the warps of
// many blocks per SM.
constexpr int kWarpRows = static_cast<int>(kFlashDecodeWarpRows);  // query rows of a warps-kernel block
constexpr int kWarpsPerBlock = 4;
constexpr int kWarpThreads = 32 * kWarpsPerBlock;

// Shared memory: queries [kWarpRows][qc·CE] fp32; each warp's probabilities [kWarpRows][kKeys];
// then each warp's running max and sum [kWarpRows] and output [kWarpRows][vc·CE] for the merge.
struct WarpLayout {
  int64_t q, p, m, l, o, total;
};
template <typename E>
__host__ __device__ WarpLayout warp_layout_of(const Dims& d) {
  WarpLayout a{};
  a.q = 0;
  a.p = a.q + sizeof(float) * kWarpRows * d.qc * kChunk<E>;
  a.m = a.p + sizeof(float) * kWarpsPerBlock * kWarpRows * kKeys;
  a.l = a.m + sizeof(float) * kWarpsPerBlock * kWarpRows;
  a.o = a.l + sizeof(float) * kWarpsPerBlock * kWarpRows;
  a.total = a.o + sizeof(float) * kWarpsPerBlock * kWarpRows * d.vc * kChunk<E>;
  return a;
}

// Whether the warps kernel runs these sizes: whole 16-byte chunks in every key and value row
// (starts included), and a value row of 1, 2, 4, 8, 16 or 32 chunks (lanes per key group).
template <typename E>
bool warps_kernel_runs(const AttentionDims& a, const void* k, const void* v) {
  constexpr int CE = kChunk<E>;
  const int64_t vc = a.Dv / CE;
  return a.Dqk % CE == 0 && a.Dv % CE == 0 && a.k_row() % CE == 0 && a.v_row() % CE == 0 && vc >= 1 && vc <= 32 &&
         (vc & (vc - 1)) == 0 && reinterpret_cast<uintptr_t>(k) % 16 == 0 && reinterpret_cast<uintptr_t>(v) % 16 == 0;
}

template <typename E>
__global__ void __launch_bounds__(kWarpThreads)
    warps_kernel(Dims d, Mask m, float scale, int splits, const E* __restrict__ q, const E* __restrict__ k,
                 const E* __restrict__ v, Out out) {
  constexpr int CE = kChunk<E>;
  constexpr int R = kWarpRows;
  FLASHGPT_DYNAMIC_SHARED(unsigned char, sm);
  const WarpLayout lay = warp_layout_of<E>(d);
  float* Qs = reinterpret_cast<float*>(sm + lay.q);
  const int t = static_cast<int>(threadIdx.x), lane = t % 32, warp = t / 32;
  float* Ps = reinterpret_cast<float*>(sm + lay.p) + warp * R * kKeys;
  float* Ms = reinterpret_cast<float*>(sm + lay.m);
  float* Ls = reinterpret_cast<float*>(sm + lay.l);
  float* Os = reinterpret_cast<float*>(sm + lay.o);

  const int64_t bh = blockIdx.x, b = bh / d.Hkv, kvh = bh % d.Hkv;
  const int split = static_cast<int>(blockIdx.y);
  const int64_t row0 = static_cast<int64_t>(blockIdx.z) * R;
  const int nrows = static_cast<int>(d.rows - row0 < R ? d.rows - row0 : R);

  const KeyRange keys = split_keys(d, m, b, split, splits);
  const int64_t k0 = keys.k0, k1 = keys.k1, ntiles = keys.ntiles;
  const int qw = d.qc * CE;
  load_queries<R>(Qs, q, d, b, kvh, row0, nrows, t, kWarpThreads);
  __syncthreads();

  int64_t tq_of[R];  // each row's query position
#pragma unroll
  for (int r = 0; r < R; ++r) tq_of[r] = (row0 + r) / d.group;
  const E* kbase = k + b * d.kv_rows * d.k_row + kvh * d.Dqk;
  const E* vbase = v + b * d.kv_rows * d.v_row + kvh * d.Dv;
  const int vc = d.vc, kg = kKeys / vc, g = lane / vc, cv = lane % vc;  // P·V: key group g, chunk cv
  float acc[R][CE], m_run[R], l_run[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    m_run[r] = -INFINITY;
    l_run[r] = 0.0f;
#pragma unroll
    for (int e = 0; e < CE; ++e) acc[r][e] = 0.0f;
  }

  for (int64_t ti = warp; ti < ntiles; ti += kWarpsPerBlock) {
    const int64_t j0 = k0 + ti * kKeys, j = j0 + lane;
    const bool valid = j < k1;
    float dot[R];
#pragma unroll
    for (int r = 0; r < R; ++r) dot[r] = 0.0f;
    if (valid) {
      const E* kr = kbase + j * d.k_row;
      for (int c0 = 0; c0 < d.qc; c0 += 4) {  // four chunks' loads in flight before their products
        Chunk kc[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          if (c0 + u < d.qc) kc[u] = load_chunk(kr + (c0 + u) * CE);
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          if (c0 + u >= d.qc) break;
          float kx[CE];
          unpack(kc[u], kx);
          add_chunk_dots(dot, Qs, qw, c0 + u, kx, nrows);
        }
      }
    }
    __syncwarp();  // the previous tile's probabilities are read
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (r < nrows) {
        const float s = valid && visible(m, d.Tq, d.kv_rows, b, tq_of[r], j) ? dot[r] * scale : -INFINITY;
        float a;
        Ps[r * kKeys + lane] = softmax_step(s, m_run[r], l_run[r], a);
#pragma unroll
        for (int e = 0; e < CE; ++e) acc[r][e] *= a;
      }
    }
    __syncwarp();  // this tile's probabilities are written
    // P·V: key kk = i·kg + g of the tile, chunk cv of its value row; four keys' loads at a time.
    for (int i0 = 0; i0 < vc; i0 += 4) {
      Chunk vcs[4];
      bool any[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int kk = (i0 + u) * kg + g;
        any[u] = false;
        if (i0 + u < vc && j0 + kk < k1) {
#pragma unroll
          for (int r = 0; r < R; ++r) any[u] = any[u] || (r < nrows && Ps[r * kKeys + kk] != 0.0f);
          if (any[u]) vcs[u] = load_chunk(vbase + (j0 + kk) * d.v_row + cv * CE);
        }
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        if (!any[u]) continue;
        const int kk = (i0 + u) * kg + g;
        float vx[CE];
        unpack(vcs[u], vx);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          if (r < nrows) {
            const float p = Ps[r * kKeys + kk];
#pragma unroll
            for (int e = 0; e < CE; ++e) acc[r][e] += p * vx[e];
          }
        }
      }
    }
  }

  // The key groups' sums (lanes vc apart hold the same chunk), then each warp's share to shared
  // memory for the merge.
  for (int off = vc; off < 32; off *= 2) {
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int e = 0; e < CE; ++e) acc[r][e] += __shfl_xor_sync(0xffffffffu, acc[r][e], off);
  }
  const int vw = vc * CE;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (lane == 0) {
      Ms[warp * R + r] = m_run[r];
      Ls[warp * R + r] = l_run[r];
    }
    if (g == 0) {
#pragma unroll
      for (int e = 0; e < CE; ++e) Os[(warp * R + r) * vw + cv * CE + e] = acc[r][e];
    }
  }
  __syncthreads();

  const int64_t out_rows = d.B * d.Tq * d.Hq;
  for (int idx = t; idx < nrows * vw; idx += kWarpThreads) {
    const int r = idx / vw, col = idx % vw;
    if (col >= d.Dv) continue;
    float mx = -INFINITY;
    for (int w = 0; w < kWarpsPerBlock; ++w) mx = fmaxf(mx, Ms[w * R + r]);
    float l = 0.0f, o = 0.0f;
    if (mx != -INFINITY) {
      for (int w = 0; w < kWarpsPerBlock; ++w) {
        const float mw = Ms[w * R + r];
        if (mw == -INFINITY) continue;
        const float f = expf(mw - mx);
        l += Ls[w * R + r] * f;
        o += Os[(w * R + r) * vw + col] * f;
      }
    }
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    const float row_lse = l > 0.0f ? mx + logf(l) : -INFINITY;
    const int64_t gr = row0 + r, tq = gr / d.group, hq = kvh * d.group + gr % d.group;
    const int64_t orow = (b * d.Tq + tq) * d.Hq + hq;  // [B, Tq, Hq]
    if (splits == 1) {
      static_cast<E*>(out.o)[orow * d.Dv + col] = from_f32<E>(o * inv);
      if (col == 0) out.lse[(b * d.Hq + hq) * d.Tq + tq] = row_lse;
    } else {
      out.part_o[(split * out_rows + orow) * d.Dv + col] = o * inv;
      if (col == 0) out.part_lse[split * out_rows + orow] = row_lse;
    }
  }
}

}  // namespace flash_decode_kernels
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
