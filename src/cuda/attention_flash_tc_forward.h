// The FlashAttention-2 forward on the tensor cores (mma.m16n8k16, bf16 or fp16 in, fp32 accumulators).
//
// A block owns BlockM = 16·MTiles·Warps queries of one head; each warp owns 16·MTiles of them, as
// MTiles row tiles of 16 that share every key and value fragment it reads from shared memory (one
// tile: one ldmatrix per mma pair; two: one per two pairs). Key and value tiles of BlockN rows
// stream through shared memory in two stages with one block barrier a tile (stream_begin /
// stream_advance): while the block computes on tile j, cp.async is already filling the other
// stage with tile j + 1. Per tile, each warp
//   S = Q Kᵀ        (16·MTiles × BlockN, fp32 in registers; Q and K fragments through ldmatrix)
//   masks S only where the tile needs it (the causal diagonal, the sequence end, padding, documents)
//   m' = max(m, rowmax S), P = exp2((S − m')·scale·log2 e), l = l·e^{m−m'} + rowsum P
//   O = O·e^{m−m'} + P V (P reused from the accumulators as the A operand, V through ldmatrix.trans)
// with each row's statistics shared by the four lanes that hold it. At the end O / l is written
// and lse = m·scale + log l. Query blocks run heaviest first (the causal mask makes late blocks
// long). Tiles past a query block's last visible key — causal or padding — are never loaded.
#pragma once

#include <cmath>

#include "cuda/attention_flash_tc_common.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace flash_tc {

template <int Dqk_, int Dv_, int Warps_, int BlockN_, int MTiles_ = 1>
struct ForwardTiles {
  static constexpr int Dqk = Dqk_, Dv = Dv_, Warps = Warps_, BlockN = BlockN_, MTiles = MTiles_;
  static constexpr int WarpRows = 16 * MTiles, BlockM = WarpRows * Warps, Threads = 32 * Warps;
  static constexpr int QS = Dqk + kPad, KS = Dqk + kPad, VS = Dv + kPad;  // shared row strides (elements)
  static constexpr int q_elems = BlockM * QS, k_elems = BlockN * KS, v_elems = BlockN * VS;
  static constexpr size_t bytes = 2 * static_cast<size_t>(q_elems + 2 * k_elems + 2 * v_elems);
  static_assert(Dqk % 16 == 0 && Dv % 16 == 0 && BlockN % 16 == 0, "tiles are whole 16 × 16 fragments");
};

template <typename E, typename F>
__global__ void __launch_bounds__(F::Threads)
    flash_forward_tc_kernel(Dims d, Mask m, float scale, const E* __restrict__ q, const E* __restrict__ k,
                            const E* __restrict__ v, E* __restrict__ o, float* __restrict__ lse) {
  constexpr int Dqk = F::Dqk, Dv = F::Dv, BlockM = F::BlockM, BlockN = F::BlockN, MT = F::MTiles;
  cta_trace_begin(d.trace);  // nothing unless a CtaTrace records
  FLASHGPT_DYNAMIC_SHARED(E, smem);
  E* Qs = smem;
  E* Ks = Qs + F::q_elems;       // two stages
  E* Vs = Ks + 2 * F::k_elems;   // two stages
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t b = blockIdx.z, h = blockIdx.y, hk = h / d.group;
  const int64_t i0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * BlockM;
  const int64_t q_row = d.q_row, o_row = d.Hq * Dv;
  const E* qb = q + b * d.Tq * q_row + h * Dqk;
  const E* kb = k + b * d.kv_rows * d.k_row + hk * Dqk;
  const E* vb = v + b * d.kv_rows * d.v_row + hk * Dv;
  const float scale_log2 = scale * kLog2e;

  const int64_t key_limit = key_limit_of(d, m, b);  // keys at or past this are never visible
  const int64_t q_off = causal_offset(m, b);  // query i sits at position q_off + i
  const int n_tiles = key_tiles_of<BlockM, BlockN>(d, m, b, i0, key_limit);

  load_rows<Dqk, BlockM, F::Threads>(Qs, qb, q_row, i0, d.Tq);
  tc::cp_async_commit();
  // Key/value tile j into stage j & 1.
  auto load_tile = [&](int64_t j) {
    load_rows<Dqk, BlockN, F::Threads>(Ks + (j & 1) * F::k_elems, kb, d.k_row, j * BlockN, d.Tk);
    load_rows<Dv, BlockN, F::Threads>(Vs + (j & 1) * F::v_elems, vb, d.v_row, j * BlockN, d.Tk);
  };
  stream_begin(n_tiles, load_tile);  // Q and tile 0 landed; tile 1 in flight

  float acc[MT][Dv / 8][4] = {};
  float row_max[MT][2], row_sum[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    row_max[mt][0] = row_max[mt][1] = -INFINITY;
    row_sum[mt][0] = row_sum[mt][1] = 0.0f;
  }
  // This warp's first row; the lane's rows are warp_row + 16·mt + g and 8 more, for each tile mt.
  const int64_t warp_row = i0 + warp * F::WarpRows, row0 = warp_row + g;

  for (int tile = 0; tile < n_tiles; ++tile) {
    const int stage = tile & 1;
    const int64_t j0 = static_cast<int64_t>(tile) * BlockN;
    const E* Kt = Ks + stage * F::k_elems;
    const E* Vt = Vs + stage * F::v_elems;

    float s[MT][BlockN / 8][4] = {};
    rows_times_rows<E, Dqk, BlockN, MT>(s, Qs, F::QS, warp * F::WarpRows, Kt, F::KS);
    const bool needs_mask = m.q_seg || j0 + BlockN > key_limit || (m.causal && j0 + BlockN - 1 > q_off + warp_row);
    if (needs_mask) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int n = 0; n < BlockN / 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (!visible(d, m, b, row0 + 16 * mt + (e >> 1) * 8, j0 + n * 8 + 2 * t + (e & 1))) s[mt][n][e] = -INFINITY;
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = row_max[mt][r];
#pragma unroll
        for (int n = 0; n < BlockN / 8; ++n) mx = fmaxf(mx, fmaxf(s[mt][n][2 * r], s[mt][n][2 * r + 1]));
        mx = quad_max(mx);
        const float base = mx == -INFINITY ? 0.0f : mx * scale_log2;  // a row with nothing visible yet stays at 0
        const float alpha = exp2f(row_max[mt][r] * scale_log2 - base);
        row_max[mt][r] = mx;
        float sum = 0.0f;
#pragma unroll
        for (int n = 0; n < BlockN / 8; ++n) {
          s[mt][n][2 * r] = exp2f(s[mt][n][2 * r] * scale_log2 - base);
          s[mt][n][2 * r + 1] = exp2f(s[mt][n][2 * r + 1] * scale_log2 - base);
          sum += s[mt][n][2 * r] + s[mt][n][2 * r + 1];
        }
        row_sum[mt][r] = row_sum[mt][r] * alpha + sum;
#pragma unroll
        for (int n = 0; n < Dv / 8; ++n) {
          acc[mt][n][2 * r] *= alpha;
          acc[mt][n][2 * r + 1] *= alpha;
        }
      }
    }
    accumulators_times_rows<E, BlockN, Dv, MT>(acc, s, Vt, F::VS);
    stream_advance(tile, n_tiles, load_tile);  // tile + 1 visible, tile + 2 queued into this stage
  }
  tc::cp_async_wait<0>();

#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float sum = quad_sum(row_sum[mt][r]);
      const int64_t i = row0 + 16 * mt + r * 8;
      if (i >= d.Tq) continue;
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;  // a row that saw no key writes zeros
      E* out = o + (b * d.Tq + i) * o_row + h * Dv;
#pragma unroll
      for (int n = 0; n < Dv / 8; ++n)
        store2(out + n * 8 + 2 * t, acc[mt][n][2 * r] * inv, acc[mt][n][2 * r + 1] * inv);
      if (t == 0) lse[(b * d.Hq + h) * d.Tq + i] = sum > 0.0f ? row_max[mt][r] * scale + logf(sum) : -INFINITY;
    }
  }
  cta_trace_end(d.trace);
}

// The tiles per head dim: wide for ≥ 160 KiB of shared memory per block, narrow for 99 KiB; tall
// (FlashTiles::Tall, value head dims up to 64) four warps of two row tiles each, the wide tiles'
// 128 queries per block at 55 KiB, every key and value fragment read once per 32 query rows.
template <int Dqk, int Dv, bool Wide>
using ForwardTilesFor = ForwardTiles<Dqk, Dv, Wide ? 8 : 4, (!Wide && Dqk > 128) ? 32 : 64>;
template <int Dqk, int Dv>
using ForwardTilesTall = ForwardTiles<Dqk, Dv, 4, 64, 2>;
template <int Dv>
constexpr bool kHasTallForward = Dv <= 64;

}  // namespace flash_tc
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
