// The FlashAttention-2 backward on the tensor cores. P is recomputed from the forward's lse, so no
// T × T matrix exists.
//
// A block owns BlockN = 16·Warps keys of one key/value head, each warp 16 of them, with their K
// and V rows in shared memory. It walks every query tile (BlockM queries) of every query head of
// its GQA group that can see those keys, the next tile's Q, dO, lse and D arriving by cp.async
// while the current one is computed. Per tile, each warp
//   Sᵀ = K Qᵀ, dPᵀ = V dOᵀ          (16 keys × BlockM queries, fp32 in registers)
//   Pᵀ = exp2(Sᵀ·scale·log2 e − lse·log2 e), dSᵀ = Pᵀ ∘ (dPᵀ − D)·scale   (masked where needed)
//   dV += Pᵀ dO, dK += dSᵀ Q        (Pᵀ and dSᵀ reused from the accumulators as A operands)
// and writes dSᵀ to shared memory; then the block computes the tile's dQ = dS K, each warp a
// 16-query × Dqk/splits piece, and adds it into an fp32 accumulator in global memory with
// atomics (a separate pass converts it). dK and dV are written once per key, summed over the group.
// One barrier a tile: dSᵀ alternates between two buffers, and the next-but-one tile's copies are
// queued only once that barrier shows every warp has finished reading the stage they overwrite.
// With WithDq false the kernel leaves dQ alone: the deterministic backward computes it query-major
// instead (attention_flash_tc_backward_dq.h), with no atomics and so no run-to-run variation.
#pragma once

#include <cmath>
#include <string>

#include "cuda/attention_flash_tc_backward_wgmma.h"
#include "cuda/attention_flash_tc_common.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace flash_tc {

// MinBlocks: the blocks one SM must hold at once (__launch_bounds__), which caps the registers.
template <int Dqk_, int Dv_, int Warps_, int BlockM_, int MinBlocks_ = 1>
struct BackwardTiles {
  static constexpr int Dqk = Dqk_, Dv = Dv_, Warps = Warps_, BlockM = BlockM_, MinBlocks = MinBlocks_;
  static constexpr int BlockN = 16 * Warps, Threads = 32 * Warps;
  static constexpr int KS = Dqk + kPad, VS = Dv + kPad, QS = Dqk + kPad, OS = Dv + kPad, SS = BlockM + kPad;
  static constexpr int k_elems = BlockN * KS, v_elems = BlockN * VS, q_elems = BlockM * QS, o_elems = BlockM * OS,
                       s_elems = BlockN * SS;
  // dSᵀ is double-buffered only where dQ is computed here; the size covers both kernels.
  static constexpr size_t elem_bytes =
      2 * static_cast<size_t>(k_elems + v_elems + 2 * q_elems + 2 * o_elems + 2 * s_elems);
  static constexpr size_t bytes = elem_bytes + sizeof(float) * 4 * BlockM;  // lse·log2 e and D, two stages each
  // dQ's pieces: BlockM / 16 row groups, each split over Splits warps along Dqk.
  static constexpr int RowGroups = BlockM / 16, Splits = Warps / RowGroups, DqCols = Dqk / Splits;
  static_assert(Warps % RowGroups == 0 && Dqk % (16 * Splits) == 0, "dQ pieces must tile the warps");
  static_assert(Dqk % 16 == 0 && Dv % 16 == 0 && BlockM % 16 == 0, "tiles are whole 16 × 16 fragments");
  static_assert(Warps > 4 || bytes <= 99 * 1024, "4-warp tiles must fit the 99 KiB a block of sm_86 and sm_89");
};

template <typename E, typename F, bool WithDq>
__global__ void __launch_bounds__(F::Threads, F::MinBlocks)
    flash_backward_tc_kernel(Dims d, Mask m, float scale, const E* __restrict__ q, const E* __restrict__ k,
                             const E* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ dsum,
                             const E* __restrict__ dout, float* __restrict__ dq_accum, E* __restrict__ dk,
                             E* __restrict__ dv) {
  constexpr int Dqk = F::Dqk, Dv = F::Dv, BlockM = F::BlockM, BlockN = F::BlockN;
  cta_trace_begin(d.trace);  // nothing unless a CtaTrace records
  FLASHGPT_DYNAMIC_SHARED(E, smem);
  E* Ks = smem;
  E* Vs = Ks + F::k_elems;
  E* Qs = Vs + F::v_elems;      // two stages
  E* dOs = Qs + 2 * F::q_elems;  // two stages
  E* dSs = dOs + 2 * F::o_elems;  // two buffers of [BlockN keys][BlockM queries]
  float* Ls = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(smem) + F::elem_bytes);  // [2][BlockM]
  float* Ds = Ls + 2 * BlockM;                                                                   // [2][BlockM]
  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int64_t b = blockIdx.z, hk = blockIdx.y, j0 = static_cast<int64_t>(blockIdx.x) * BlockN;
  const int64_t q_row = d.q_row, acc_row = d.Hq * Dqk, o_row = d.Hq * Dv;  // acc_row: dq_accum's, dense
  const E* kb = k + b * d.kv_rows * d.k_row + hk * Dqk;
  const E* vb = v + b * d.kv_rows * d.v_row + hk * Dv;
  const float scale_log2 = scale * kLog2e;

  load_rows<Dqk, BlockN, F::Threads>(Ks, kb, d.k_row, j0, d.Tk);
  load_rows<Dv, BlockN, F::Threads>(Vs, vb, d.v_row, j0, d.Tk);
  tc::cp_async_commit();

  const int64_t key_limit = key_limit_of(d, m, b);
  const int64_t q_off = causal_offset(m, b);  // query i sits at position q_off + i
  // The first query tile that can see key j0, and the (head, tile) pairs to walk.
  const int64_t first_tile = m.causal ? max(int64_t{0}, j0 - q_off) / BlockM : 0;
  const int64_t tiles_per_head = max(int64_t{0}, (d.Tq + BlockM - 1) / BlockM - first_tile);
  const int64_t total = j0 < key_limit ? d.group * tiles_per_head : 0;
  // Queues pair p's Q and dO rows and stores its lse (·log2 e; +∞ where a query sees nothing, so
  // its P is 0) and D into stage p & 1 (stream_begin / stream_advance call it).
  auto load_pair = [&](int64_t p) {
    const int st = static_cast<int>(p & 1);
    const int64_t h = hk * d.group + p / tiles_per_head, i0 = (first_tile + p % tiles_per_head) * BlockM;
    load_rows<Dqk, BlockM, F::Threads>(Qs + st * F::q_elems, q + b * d.Tq * q_row + h * Dqk, q_row, i0, d.Tq);
    load_rows<Dv, BlockM, F::Threads>(dOs + st * F::o_elems, dout + b * d.Tq * o_row + h * Dv, o_row, i0, d.Tq);
    for (int r = tid; r < BlockM; r += F::Threads) {
      const int64_t i = i0 + r;
      const float l = i < d.Tq ? lse[(b * d.Hq + h) * d.Tq + i] : -INFINITY;
      Ls[st * BlockM + r] = l == -INFINITY ? INFINITY : l * kLog2e;
      Ds[st * BlockM + r] = i < d.Tq ? dsum[(b * d.Hq + h) * d.Tq + i] : 0.0f;
    }
  };
  stream_begin(total, load_pair);  // K, V and pair 0 landed; pair 1 in flight

  float acc_dk[Dqk / 8][4] = {}, acc_dv[Dv / 8][4] = {};
  const int64_t key0 = j0 + warp * 16 + g;  // this lane's keys: key0, key0 + 8
  const int rg = warp % F::RowGroups, split = warp / F::RowGroups;

  for (int64_t p = 0; p < total; ++p) {
    const int st = static_cast<int>(p & 1);
    const int64_t h = hk * d.group + p / tiles_per_head, i0 = (first_tile + p % tiles_per_head) * BlockM;
    const E* Qt = Qs + st * F::q_elems;
    const E* dOt = dOs + st * F::o_elems;
    const float* Lt = Ls + st * BlockM;
    const float* Dt = Ds + st * BlockM;
    E* dSt = dSs + st * F::s_elems;

    float s[BlockM / 8][4] = {}, dp[BlockM / 8][4] = {};
    rows_times_rows<E, Dqk, BlockM>(s, Ks, F::KS, warp * 16, Qt, F::QS);
    rows_times_rows<E, Dv, BlockM>(dp, Vs, F::VS, warp * 16, dOt, F::OS);
    // Pᵀ into s and dSᵀ into dp. Element e of n-tile n: key key0 + (e >> 1)·8, query column
    // c = n·8 + 2t + (e & 1) of the tile.
    const bool needs_mask = m.q_seg || j0 + BlockN > key_limit || i0 + BlockM > d.Tq ||
                            (m.causal && j0 + warp * 16 + 15 > q_off + i0);
#pragma unroll
    for (int n = 0; n < BlockM / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = n * 8 + 2 * t + (e & 1);
        float pv = exp2f(s[n][e] * scale_log2 - Lt[c]);
        if (needs_mask && !visible(d, m, b, i0 + c, key0 + (e >> 1) * 8)) pv = 0.0f;
        s[n][e] = pv;
        dp[n][e] = pv * (dp[n][e] - Dt[c]) * scale;
      }
    accumulators_times_rows<E, BlockM, Dv>(acc_dv, s, dOt, F::OS);
    accumulators_times_rows<E, BlockM, Dqk>(acc_dk, dp, Qt, F::QS);
    if constexpr (WithDq) {
      // dSᵀ to this pair's buffer for the block's dQ product. The buffer was last read in pair
      // p − 2's dQ product, which every warp finished before pair p − 1's barrier.
#pragma unroll
      for (int n = 0; n < BlockM / 8; ++n) {
        store2(dSt + (warp * 16 + g) * F::SS + n * 8 + 2 * t, dp[n][0], dp[n][1]);
        store2(dSt + (warp * 16 + g + 8) * F::SS + n * 8 + 2 * t, dp[n][2], dp[n][3]);
      }
    }
    // The tile's one barrier: pair p + 1 visible, dSᵀ complete, pair p + 2 queued into stage st.
    stream_advance(p, total, load_pair);
    if constexpr (WithDq) {
      // dQ rows rg·16 … + 15, columns split·DqCols … + DqCols: dS (queries × keys) · K.
      float dq[F::DqCols / 8][4] = {};
#pragma unroll
      for (int kk = 0; kk < BlockN / 16; ++kk) {
        uint32_t a[4];
        load_a_transposed(a, dSt, F::SS, rg * 16, kk * 16);
#pragma unroll
        for (int n = 0; n < F::DqCols / 16; ++n) {
          uint32_t bk[4];
          load_b_from_cols(bk, Ks, F::KS, split * F::DqCols + n * 16, kk * 16);
          mma_pair<E>(dq[2 * n], dq[2 * n + 1], a, bk);
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t i = i0 + rg * 16 + g + r * 8;
        if (i >= d.Tq) continue;
        float* row = dq_accum + (b * d.Tq + i) * acc_row + h * Dqk + split * F::DqCols + 2 * t;
#pragma unroll
        for (int n = 0; n < F::DqCols / 8; ++n) {
          atomicAdd(row + n * 8, dq[n][2 * r]);
          atomicAdd(row + n * 8 + 1, dq[n][2 * r + 1]);
        }
      }
    }
  }
  tc::cp_async_wait<0>();

  write_key_gradients<E, Dqk, Dv>(d, b, hk, key0, t, acc_dk, acc_dv, dk, dv);
  cta_trace_end(d.trace);
}

// Wide: 128 keys per block; narrow: 64. Query tiles of 32 rows once Dv reaches 128 (register room).
template <int Dqk, int Dv, bool Wide>
using BackwardTilesFor = BackwardTiles<Dqk, Dv, Wide ? 8 : 4, Dv >= 128 ? 32 : 64>;

// Short (FlashTiles::Short, value head dims up to 64): the narrow blocks' 64 keys, walking query
// tiles of 32 rows. Half the score and dP accumulators a lane holds lets three blocks share an SM
// (≤ 168 registers): 12 warps to hide each other's latency instead of 8, for the same shared-memory
// reads per mma, twice the barriers per query, and (64 keys a block) twice the dQ atomics of wide.
template <int Dqk, int Dv>
using BackwardTilesShort = BackwardTiles<Dqk, Dv, 4, 32, 3>;
template <int Dv>
constexpr bool kHasShortBackward = Dv <= 64;

// The backward kernel of tiles F: the warpgroup one for Hopper's tiles (warp-specialized or not),
// else the mma.sync one.
template <typename E, typename F, bool WithDq>
constexpr auto backward_kernel() {
  if constexpr (has_producer<F>) {
    return flash_backward_wgmma_ws_kernel<E, F, WithDq>;
  } else if constexpr (requires { F::kWarpgroup; }) {
    return flash_backward_wgmma_kernel<E, F, WithDq>;
  } else {
    return flash_backward_tc_kernel<E, F, WithDq>;
  }
}

// Launches the backward kernel of tiles F under `name`: the warp-specialized one takes q and dO as
// tensor maps.
template <typename E, typename F, bool WithDq>
void launch_backward_kernel(const char* name, const dim3& grid, const Dims& d, const Mask& m, float scale, const E* q,
                            const E* k, const E* v, const float* lse, const float* dsum, const E* dout,
                            float* dq_accum, E* dk, E* dv) {
  allow_shared(backward_kernel<E, F, WithDq>(), F::bytes, name);
  if constexpr (has_producer<F>) {
    launch_kernel(name, backward_kernel<E, F, WithDq>(), grid, F::Threads, F::bytes, nullptr, traced(d, name, grid),
                  m, scale, backward_maps<F>(d, q, dout), k, v, lse, dsum, dq_accum, dk, dv);
  } else {
    launch_kernel(name, backward_kernel<E, F, WithDq>(), grid, F::Threads, F::bytes, nullptr, traced(d, name, grid),
                  m, scale, q, k, v, lse, dsum, dout, dq_accum, dk, dv);
  }
}

// dq_accum null: dK and dV only (the deterministic backward's first kernel).
template <typename E, typename F>
void launch_backward(const Dims& d, const Mask& m, float scale, const E* q, const E* k, const E* v, const float* lse,
                     const float* dsum, const E* dout, float* dq_accum, E* dk, E* dv) {
  const dim3 grid(static_cast<unsigned>((d.Tk + F::BlockN - 1) / F::BlockN), static_cast<unsigned>(d.Hkv),
                  static_cast<unsigned>(d.B));
  const char* name = [] {
    if constexpr (requires { F::kWarpgroup; }) {
      return has_producer<F> ? "Hopper flash backward (warp-specialized)" : "Hopper flash backward";
    }
    return "tensor-core flash backward";
  }();
  if (dq_accum) {
    launch_backward_kernel<E, F, true>(name, grid, d, m, scale, q, k, v, lse, dsum, dout, dq_accum, dk, dv);
  } else {
    const std::string dkdv = std::string(name) + " (dK, dV)";
    launch_backward_kernel<E, F, false>(dkdv.c_str(), grid, d, m, scale, q, k, v, lse, dsum, dout, dq_accum, dk, dv);
  }
}

}  // namespace flash_tc
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
