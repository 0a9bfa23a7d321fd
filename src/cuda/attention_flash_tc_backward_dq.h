// The deterministic backward's dQ kernel on the tensor cores: dQ computed query-major, so every
// element of dQ is one block's fp32 sum in a fixed order and nothing is added with atomics.
//
// The main backward kernel (attention_flash_tc_backward.h) is key-major: its blocks own keys, and
// the dQ pieces of different key blocks meet in an fp32 accumulator through atomics whose order
// varies from run to run. Here a block owns BlockM = 16·Warps queries of one head, each warp 16 of
// them, with their Q and dO rows in shared memory, and walks the key/value tiles they can see as
// the forward does (two stages, cp.async filling tile j + 1 while tile j is computed, one
// barrier a tile). Per tile,
// each warp
//   S = Q Kᵀ, dP = dO Vᵀ                          (16 × BlockN, fp32 in registers)
//   P = exp2(S·scale·log2 e − lse·log2 e), dS = P ∘ (dP − D)·scale   (masked where needed)
//   dQ += dS K                                    (dS reused from the accumulators as the A operand)
// and writes dQ once at the end, rounded to bf16 or fp16. The price is recomputing S and P once
// more than the atomic backward does, roughly 2 of its 5 tile products again.
#pragma once

#include <cmath>

#include "cuda/attention_flash_tc_common.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace flash_tc {

template <int Dqk_, int Dv_, int Warps_, int BlockN_>
struct DqTiles {
  static constexpr int Dqk = Dqk_, Dv = Dv_, Warps = Warps_, BlockN = BlockN_;
  static constexpr int BlockM = 16 * Warps, Threads = 32 * Warps;
  static constexpr int QS = Dqk + kPad, OS = Dv + kPad, KS = Dqk + kPad, VS = Dv + kPad;
  static constexpr int q_elems = BlockM * QS, o_elems = BlockM * OS, k_elems = BlockN * KS, v_elems = BlockN * VS;
  static constexpr size_t bytes = 2 * static_cast<size_t>(q_elems + o_elems + 2 * k_elems + 2 * v_elems);
  static_assert(Dqk % 16 == 0 && Dv % 16 == 0 && BlockN % 16 == 0, "tiles are whole 16 × 16 fragments");
};

template <typename E, typename F>
__global__ void __launch_bounds__(F::Threads)
    flash_backward_dq_tc_kernel(Dims d, Mask m, float scale, const E* __restrict__ q, const E* __restrict__ k,
                                const E* __restrict__ v, const float* __restrict__ lse,
                                const float* __restrict__ dsum, const E* __restrict__ dout, E* __restrict__ dq) {
  constexpr int Dqk = F::Dqk, Dv = F::Dv, BlockM = F::BlockM, BlockN = F::BlockN;
  cta_trace_begin(d.trace);  // nothing unless a CtaTrace records
  FLASHGPT_DYNAMIC_SHARED(E, smem);
  E* Qs = smem;
  E* dOs = Qs + F::q_elems;
  E* Ks = dOs + F::o_elems;     // two stages
  E* Vs = Ks + 2 * F::k_elems;  // two stages
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t b = blockIdx.z, h = blockIdx.y, hk = h / d.group;
  const int64_t i0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * BlockM;  // heaviest first
  const int64_t q_row = d.q_row, o_row = d.Hq * Dv;
  const E* kb = k + b * d.kv_rows * d.k_row + hk * Dqk;
  const E* vb = v + b * d.kv_rows * d.v_row + hk * Dv;
  const float scale_log2 = scale * kLog2e;

  const int64_t key_limit = key_limit_of(d, m, b);
  const int64_t q_off = causal_offset(m, b);  // query i sits at position q_off + i
  const int n_tiles = key_tiles_of<BlockM, BlockN>(d, m, b, i0, key_limit);

  load_rows<Dqk, BlockM, F::Threads>(Qs, q + b * d.Tq * q_row + h * Dqk, q_row, i0, d.Tq);
  load_rows<Dv, BlockM, F::Threads>(dOs, dout + b * d.Tq * o_row + h * Dv, o_row, i0, d.Tq);
  tc::cp_async_commit();
  // Key/value tile j into stage j & 1.
  auto load_tile = [&](int64_t j) {
    load_rows<Dqk, BlockN, F::Threads>(Ks + (j & 1) * F::k_elems, kb, d.k_row, j * BlockN, d.Tk);
    load_rows<Dv, BlockN, F::Threads>(Vs + (j & 1) * F::v_elems, vb, d.v_row, j * BlockN, d.Tk);
  };
  stream_begin(n_tiles, load_tile);  // Q, dO and tile 0 landed; tile 1 in flight

  const int64_t warp_row = i0 + warp * 16, row0 = warp_row + g;  // this lane's rows: row0, row0 + 8
  // Each row's lse·log2 e (+∞ where the row sees nothing or lies past Tq, so its P is 0) and D.
  float lse2[2], drow[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = row0 + r * 8;
    const float l = i < d.Tq ? lse[(b * d.Hq + h) * d.Tq + i] : -INFINITY;
    lse2[r] = l == -INFINITY ? INFINITY : l * kLog2e;
    drow[r] = i < d.Tq ? dsum[(b * d.Hq + h) * d.Tq + i] : 0.0f;
  }
  float acc[Dqk / 8][4] = {};

  for (int tile = 0; tile < n_tiles; ++tile) {
    const int stage = tile & 1;
    const int64_t j0 = static_cast<int64_t>(tile) * BlockN;
    const E* Kt = Ks + stage * F::k_elems;
    const E* Vt = Vs + stage * F::v_elems;

    float s[BlockN / 8][4] = {}, dp[BlockN / 8][4] = {};
    rows_times_rows<E, Dqk, BlockN>(s, Qs, F::QS, warp * 16, Kt, F::KS);
    rows_times_rows<E, Dv, BlockN>(dp, dOs, F::OS, warp * 16, Vt, F::VS);
    // dS into s. Element e of n-tile n: row row0 + (e >> 1)·8, key j0 + n·8 + 2t + (e & 1).
    const bool needs_mask =
        m.q_seg || j0 + BlockN > key_limit || (m.causal && j0 + BlockN - 1 > q_off + warp_row);
#pragma unroll
    for (int n = 0; n < BlockN / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        float pv = exp2f(s[n][e] * scale_log2 - lse2[r]);
        if (needs_mask && !visible(d, m, b, row0 + r * 8, j0 + n * 8 + 2 * t + (e & 1))) pv = 0.0f;
        s[n][e] = pv * (dp[n][e] - drow[r]) * scale;
      }
    accumulators_times_rows<E, BlockN, Dqk>(acc, s, Kt, F::KS);
    stream_advance(tile, n_tiles, load_tile);  // tile + 1 visible, tile + 2 queued into this stage
  }
  tc::cp_async_wait<0>();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = row0 + r * 8;
    if (i >= d.Tq) continue;
    E* out = dq + (b * d.Tq + i) * q_row + h * Dqk;
#pragma unroll
    for (int n = 0; n < Dqk / 8; ++n) store2(out + n * 8 + 2 * t, acc[n][2 * r], acc[n][2 * r + 1]);
  }
  cta_trace_end(d.trace);
}

// Wide: 128 queries per block; narrow: 64. Key tiles of 32 past head dim 96 (registers and the
// 99 KiB of shared memory of sm_86 and sm_89).
template <int Dqk, int Dv, bool Wide>
using DqTilesFor = DqTiles<Dqk, Dv, Wide ? 8 : 4, (Dqk > 96) ? 32 : 64>;

template <typename E, typename F>
void launch_backward_dq(const Dims& d, const Mask& m, float scale, const E* q, const E* k, const E* v,
                        const float* lse, const float* dsum, const E* dout, E* dq) {
  const char* name = "tensor-core flash backward (deterministic dQ)";
  allow_shared(flash_backward_dq_tc_kernel<E, F>, F::bytes, name);
  const dim3 grid(static_cast<unsigned>((d.Tq + F::BlockM - 1) / F::BlockM), static_cast<unsigned>(d.Hq),
                  static_cast<unsigned>(d.B));
  launch_kernel(name, flash_backward_dq_tc_kernel<E, F>, grid, F::Threads, F::bytes, nullptr, traced(d, name, grid), m,
                scale, q, k, v, lse, dsum, dout, dq);
}

}  // namespace flash_tc
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
