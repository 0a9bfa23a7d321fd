// The FlashAttention-2 backward on Hopper's warpgroup MMA (wgmma, sm_90a; FlashTiles::Wgmma): the
// tensor-core backward's algorithm (attention_flash_tc_backward.h) with each warpgroup of four warps
// owning 64 keys and multiplying whole tiles in asynchronous instruction streams.
//
// A block of two warpgroups owns BlockN = 128 keys of one key/value head, their K and V rows in
// 128-byte-swizzled shared tiles (warpgroup.h). It walks every query tile of BlockM = 64 queries of
// every query head of its GQA group that can see those keys, Q, dO, lse and D streaming through
// three stages by cp.async with one block barrier a tile. Per tile, warpgroup w (keys 64w … 64w + 63)
//   Sᵀ = K_w Qᵀ, dPᵀ = V_w dOᵀ   wgmma m64n64k16, A (K_w, V_w) and B (Q, dO, K-major) from shared
//                               memory, two groups: the softmax of Sᵀ starts while dPᵀ is computed;
//   Pᵀ, dSᵀ                     exactly as the mma.sync backward, in registers;
//   dV += Pᵀ dO, dK += dSᵀ Q    wgmma with Pᵀ and dSᵀ from registers (the accumulators of Sᵀ and
//                               dPᵀ packed as A fragments) and dO, Q MN-major from shared memory,
//                               left running across the barrier;
// and writes dSᵀ to a swizzled shared tile (two buffers, alternating). After the barrier,
//   dQ = dS K                   wgmma with A = dSᵀ read MN-major (dS) and B = K MN-major: where Dqk
//                               is two or more 64-column panels each warpgroup takes half of them
//                               over all 128 keys, else all of Dqk over its own 64 keys;
// added into the fp32 accumulator in global memory with atomics (two columns an instruction on
// sm_90); where each warpgroup has all of Dqk over its own keys, each hands half its rows to the
// other through shared memory (a named barrier, producer to consumer), so every element is added
// into global memory once. Three stages, not two: the tile queued at a barrier goes into the stage the tile before
// last used, so the dV and dK products of the current tile may still read theirs.
// With WithDq false the kernel leaves dQ alone, for the deterministic backward.
// At latent attention's Dqk = 96, Q and K end in a 32-column half panel in the 64-byte swizzle:
// Sᵀ reads it K-major, and the two products that read Q or K MN-major (dK, dQ) give it a wgmma of
// its own, 32 columns wide (wg::mma_rs_mn, wg::mma_ss_mn).
//
// Warp-specialized (FlashTiles::WgmmaWs, as FlashAttention-3's backward is): a third warpgroup
// produces. It gives most of its registers (setmaxnreg) to the two computing warpgroups, and its
// first warp fills each stage: lse·log2 e and D by its 32 lanes, Q and dO by one lane through the
// TMA (one box per 64-column panel, landing in the swizzled layout the wgmmas read, positions past
// the sequence as zeros), all onto the stage's `full` mbarrier (32 arrivals and the copies' bytes).
// It refills a stage once all 256 computing threads have arrived on its `empty` mbarrier, which
// each does when the wgmmas reading the stage have landed, so the computing warpgroups never wait
// at a block barrier; they meet only at a named barrier of their own once both have written dSᵀ,
// which dQ reads across both warpgroups' keys, and which also orders the dQ exchange and the dSᵀ
// buffers' reuse. K and V are loaded once by the computing threads, as without the producer.
#pragma once

#include <algorithm>
#include <cmath>

#include "cuda/attention_flash_tc_common.h"
#include "cuda/tma.h"
#include "cuda/warpgroup.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace flash_tc {

template <int Dqk_, int Dv_, bool Producer_ = false>
struct BackwardTilesWgmma {
  static constexpr bool kWarpgroup = true, kProducer = Producer_;
  static constexpr int Dqk = Dqk_, Dv = Dv_, Groups = 2, BlockN = 64 * Groups, BlockM = 64;
  // Groups computing warpgroups, and with a producer one more after them.
  static constexpr int Consumers = 128 * Groups, Threads = Consumers + (kProducer ? 128 : 0);
  static constexpr int MinBlocks = 1, Stages = 3;
  // The producer's registers a thread, and what that leaves each computing thread of the block's
  // pool (ptxas starts every thread at 65536 / Threads, rounded down to 8, under launch bounds of
  // one block an SM): 128 · 24 + 256 · 240 = 168 · 384.
  static constexpr int kProducerRegisters = 24;
  static constexpr int kConsumerRegisters =
      std::min(256, (register_pool(Threads) - 128 * kProducerRegisters) / Consumers / 8 * 8);
  // The producer's warp that fills the stages: its lanes load lse and D, one also issues the copies.
  static constexpr int kFillers = 32;
  using KTile = wg::SwizzledTile<BlockN, Dqk>;
  using VTile = wg::SwizzledTile<BlockN, Dv>;
  using QTile = wg::SwizzledTile<BlockM, Dqk>;
  using OTile = wg::SwizzledTile<BlockM, Dv>;
  using STile = wg::SwizzledTile<BlockN, BlockM>;  // dSᵀ: keys × queries
  // dQ's split between the warpgroups: columns where each can have whole panels, else keys.
  static constexpr bool kDqSplitsColumns = Dqk % 128 == 0;
  static constexpr int DqCols = kDqSplitsColumns ? Dqk / Groups : Dqk, DqKeys = kDqSplitsColumns ? BlockN : 64;
  // Where each warpgroup has all of dQ over its own keys, half of each warpgroup's rows go through
  // shared memory to the other, which adds them to its own before the atomics: [DqCols / 8][128]
  // float4s, one per (chunk, warp-and-lane slot).
  static constexpr size_t exchange_bytes = kDqSplitsColumns ? 0 : sizeof(float) * 4 * (DqCols / 8) * 128;
  static constexpr size_t elem_bytes =
      2 * static_cast<size_t>(KTile::kElems + VTile::kElems + Stages * (QTile::kElems + OTile::kElems) +
                              2 * STile::kElems);
  // + lse·log2 e and D per stage, the dQ exchange, with a producer two mbarriers per stage (`full`
  // and `empty`), and 1024 bytes to align the tiles.
  static constexpr size_t bytes = elem_bytes + sizeof(float) * 2 * Stages * BlockM + exchange_bytes +
                                  (kProducer ? 16 * Stages : 0) + 1024;
  static_assert(Dqk <= 128 && Dv <= 128, "the dK and dV accumulators of 64 keys fit the registers up to 128");
};
template <int Dqk, int Dv>
using BackwardTilesWgmmaWs = BackwardTilesWgmma<Dqk, Dv, true>;

// The tensor maps of the warp-specialized backward's q and dO (one kernel parameter,
// __grid_constant__): each [B][Tq][H·D], boxes of 64 columns by BlockM positions.
struct BackwardMaps {
  CUtensorMap q, dout;
  CUtensorMap q_half;  // where Dqk ends in a half panel: its 32 columns, in the 64-byte swizzle
};

template <typename F>
BackwardMaps backward_maps(const Dims& d, const void* q, const void* dout) {
  BackwardMaps maps;
  tma::encode_attention_map(&maps.q, q, F::Dqk, d.Hq, d.Tq, d.Tq, d.q_row, d.B, F::BlockM);
  tma::encode_attention_map(&maps.dout, dout, F::Dv, d.Hq, d.Tq, d.Tq, d.Hq * F::Dv, d.B, F::BlockM);
  if constexpr (F::QTile::kHalfPanel) {
    tma::encode_attention_map(&maps.q_half, q, F::Dqk, d.Hq, d.Tq, d.Tq, d.q_row, d.B, F::BlockM, 32);
  }
  return maps;
}

// Head dims with a Hopper backward: whole swizzle panels (Dqk may end in a half panel: latent
// attention's 96), and accumulators that fit the registers.
template <int Dqk, int Dv>
constexpr bool kHasWgmmaBackward = Dqk % 32 == 0 && Dqk >= 64 && Dv % 64 == 0 && Dqk <= 128 && Dv <= 128;

// Adds two adjacent fp32 values into global memory: one vector reduction on sm_90, else two.
__device__ __forceinline__ void atomic_add2(float* p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(a, b));
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}

#if FLASHGPT_HAS_WGMMA
// The kernel's body, for both ways of filling the stages: maps null (every thread's cp.async from q
// and dout) or, for warp-specialized tiles, the tensor maps of q and dout (those pointers unused).
template <typename E, typename F, bool WithDq>
__device__ __forceinline__ void backward_wgmma(const Dims& d, const Mask& m, float scale, const E* __restrict__ q,
                                               const E* __restrict__ k, const E* __restrict__ v,
                                               const float* __restrict__ lse, const float* __restrict__ dsum,
                                               const E* __restrict__ dout, float* __restrict__ dq_accum,
                                               E* __restrict__ dk, E* __restrict__ dv, const BackwardMaps* maps) {
  constexpr int Dqk = F::Dqk, Dv = F::Dv, BlockM = F::BlockM, BlockN = F::BlockN, Stages = F::Stages;
  constexpr int Consumers = F::Consumers;
  using KTile = typename F::KTile;
  using VTile = typename F::VTile;
  using QTile = typename F::QTile;
  using OTile = typename F::OTile;
  using STile = typename F::STile;
  cta_trace_begin(d.trace);  // nothing unless a CtaTrace records
  FLASHGPT_DYNAMIC_SHARED(unsigned char, raw);
  E* Ks = reinterpret_cast<E*>(raw + (1024 - wg::smem_address(raw) % 1024) % 1024);
  E* Vs = Ks + KTile::kElems;
  E* Qs = Vs + VTile::kElems;             // Stages
  E* dOs = Qs + Stages * QTile::kElems;   // Stages
  E* dSs = dOs + Stages * OTile::kElems;  // two buffers
  float* Ls = reinterpret_cast<float*>(dSs + 2 * STile::kElems);  // [Stages][BlockM]
  float* Ds = Ls + Stages * BlockM;                               // [Stages][BlockM]
  float4* Xs = reinterpret_cast<float4*>(Ds + Stages * BlockM);   // the dQ exchange, if any
  // With a producer: full[st] counts stage st's fill in (pair p is its (p / Stages)-th use, the
  // phase's parity), empty[st] the computing threads out of it.
  uint64_t* full = reinterpret_cast<uint64_t*>(reinterpret_cast<unsigned char*>(Xs) + F::exchange_bytes);
  uint64_t* empty = full + Stages;
  const int tid = static_cast<int>(threadIdx.x), group = tid / 128, wq = tid % 128 / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t b = blockIdx.z, hk = blockIdx.y, j0 = static_cast<int64_t>(blockIdx.x) * BlockN;
  const int64_t q_row = d.q_row, acc_row = d.Hq * Dqk, o_row = d.Hq * Dv;  // acc_row: dq_accum's, dense
  const E* kb = k + b * d.kv_rows * d.k_row + hk * Dqk;
  const E* vb = v + b * d.kv_rows * d.v_row + hk * Dv;
  const float scale_log2 = scale * kLog2e;

  if (tid < Consumers) {  // K and V once, by the computing threads
    wg::load_rows_swizzled<Dqk, BlockN, Consumers>(Ks, kb, d.k_row, j0, d.Tk);
    wg::load_rows_swizzled<Dv, BlockN, Consumers>(Vs, vb, d.v_row, j0, d.Tk);
    tc::cp_async_commit();
  }

  const int64_t key_limit = key_limit_of(d, m, b);
  const int64_t q_off = causal_offset(m, b);
  const int64_t first_tile = m.causal ? max(int64_t{0}, j0 - q_off) / BlockM : 0;
  const int64_t tiles_per_head = max(int64_t{0}, (d.Tq + BlockM - 1) / BlockM - first_tile);
  const int64_t total = j0 < key_limit ? d.group * tiles_per_head : 0;
  auto load_pair = [&](int64_t p) {  // every thread, through cp.async
    const int st = static_cast<int>(p % Stages);
    const int64_t h = hk * d.group + p / tiles_per_head, i0 = (first_tile + p % tiles_per_head) * BlockM;
    wg::load_rows_swizzled<Dqk, BlockM, F::Threads>(Qs + st * QTile::kElems, q + b * d.Tq * q_row + h * Dqk, q_row,
                                                    i0, d.Tq);
    wg::load_rows_swizzled<Dv, BlockM, F::Threads>(dOs + st * OTile::kElems, dout + b * d.Tq * o_row + h * Dv, o_row,
                                                   i0, d.Tq);
    for (int r = tid; r < BlockM; r += F::Threads) {
      const int64_t i = i0 + r;
      const float l = i < d.Tq ? lse[(b * d.Hq + h) * d.Tq + i] : -INFINITY;
      Ls[st * BlockM + r] = l == -INFINITY ? INFINITY : l * kLog2e;
      Ds[st * BlockM + r] = i < d.Tq ? dsum[(b * d.Hq + h) * d.Tq + i] : 0.0f;
    }
  };
  if constexpr (F::kProducer) {
    if (tid == 0) {
#pragma unroll
      for (int st = 0; st < Stages; ++st) {
        tma::mbarrier_init(&full[st], F::kFillers);
        tma::mbarrier_init(&empty[st], Consumers);
      }
      tma::fence_mbarrier_init();
    }
    __syncthreads();
    if (tid >= Consumers) {  // the producer: its first warp fills every stage, the rest leave
      wg::lower_registers<F::kProducerRegisters>();
      if (tid < Consumers + F::kFillers && total > 0) {
        // Lean, in 32-bit indices walking heads and tiles: the producer has 24 registers.
        const int filler = tid - Consumers, tiles = static_cast<int>(tiles_per_head), bi = static_cast<int>(b);
        int st = 0, use = 0;  // pair p's stage p % Stages, and its use p / Stages
        for (int hh = 0; hh < static_cast<int>(d.group); ++hh) {
          const int hq = static_cast<int>(hk * d.group) + hh;
          const float* lse_h = lse + (b * d.Hq + hq) * d.Tq;
          const float* dsum_h = dsum + (b * d.Hq + hq) * d.Tq;
          for (int it = 0; it < tiles; ++it) {
            const int i0 = (static_cast<int>(first_tile) + it) * BlockM;
            // The stage was last used by pair p − Stages: every computing thread must be out of it.
            if (use > 0) tma::mbarrier_wait(&empty[st], static_cast<uint32_t>((use - 1) & 1));
            for (int r = filler; r < BlockM; r += F::kFillers) {
              const bool in = i0 + r < d.Tq;
              const float l = in ? lse_h[i0 + r] : -INFINITY;
              Ls[st * BlockM + r] = l == -INFINITY ? INFINITY : l * kLog2e;
              Ds[st * BlockM + r] = in ? dsum_h[i0 + r] : 0.0f;
            }
            if (filler == 0) {  // its arrival, after its own stores, announces the copies' bytes
              tma::mbarrier_arrive_expect_tx(&full[st], 2 * (QTile::kElems + OTile::kElems));
#pragma unroll
              for (int pp = 0; pp < QTile::kWholePanels; ++pp) {
                tma::tma_load_4d(Qs + st * QTile::kElems + pp * QTile::kPanelElems, &maps->q, 64 * pp, hq, i0, bi,
                                 &full[st]);
              }
              if constexpr (QTile::kHalfPanel) {
                tma::tma_load_4d(Qs + st * QTile::kElems + QTile::kWholePanels * QTile::kPanelElems, &maps->q_half,
                                 64 * QTile::kWholePanels, hq, i0, bi, &full[st]);
              }
#pragma unroll
              for (int pp = 0; pp < Dv / 64; ++pp) {
                tma::tma_load_4d(dOs + st * OTile::kElems + pp * OTile::kPanelElems, &maps->dout, 64 * pp, hq, i0,
                                 bi, &full[st]);
              }
            } else {
              tma::mbarrier_arrive(&full[st]);
            }
            if (++st == Stages) st = 0, ++use;
          }
        }
      }
      cta_trace_end(d.trace);
      return;
    }
    wg::raise_registers<F::kConsumerRegisters>();
    tc::cp_async_wait<0>();  // K and V, visible to both computing warpgroups' wgmmas
    wg::fence_proxy_async();
    named_barrier_sync(2, Consumers);
  } else {
    stream_begin<true>(total, load_pair);
  }

  float acc_dk[Dqk / 8][4] = {}, acc_dv[Dv / 8][4] = {};
  // This warpgroup's keys within the block, this warp's 16 of them, and the lane's two.
  const int key_base = 64 * group, key_row = key_base + 16 * wq + g;
  const int64_t warp_key = j0 + key_base + 16 * wq, key0 = j0 + key_row;

  for (int64_t p = 0; p < total; ++p) {
    const int st = static_cast<int>(p % Stages);
    const int64_t h = hk * d.group + p / tiles_per_head, i0 = (first_tile + p % tiles_per_head) * BlockM;
    const E* Qt = Qs + st * QTile::kElems;
    const E* dOt = dOs + st * OTile::kElems;
    const float* Lt = Ls + st * BlockM;
    const float* Dt = Ds + st * BlockM;
    E* dSt = dSs + (p & 1) * STile::kElems;
    if constexpr (F::kProducer) tma::mbarrier_wait(&full[st], static_cast<uint32_t>((p / Stages) & 1));

    float s[BlockM / 8][4], dp[BlockM / 8][4];
    wg::fence();
#pragma unroll
    for (int kk = 0; kk < Dqk / 16; ++kk) {
      wg::mma_ss<E, BlockM, false>(s, KTile::k_major(Ks, key_base, 16 * kk), QTile::k_major(Qt, 0, 16 * kk), kk > 0);
    }
    wg::commit();
#pragma unroll
    for (int kk = 0; kk < Dv / 16; ++kk) {
      wg::mma_ss<E, BlockM, false>(dp, VTile::k_major(Vs, key_base, 16 * kk), OTile::k_major(dOt, 0, 16 * kk),
                                   kk > 0);
    }
    wg::commit();

    // Element e of chunk n: key key0 + (e >> 1)·8, query column c = n·8 + 2t + (e & 1) of the tile.
    const bool needs_mask = m.q_seg || j0 + BlockN > key_limit || i0 + BlockM > d.Tq ||
                            (m.causal && warp_key + 15 > q_off + i0);
    wg::wait<1>();
    wg::hold(s);
#pragma unroll
    for (int n = 0; n < BlockM / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = n * 8 + 2 * t + (e & 1);
        float pv = exp2f(s[n][e] * scale_log2 - Lt[c]);
        if (needs_mask && !visible(d, m, b, i0 + c, key0 + (e >> 1) * 8)) pv = 0.0f;
        s[n][e] = pv;
      }
    wg::wait<0>();
    wg::hold(dp);
#pragma unroll
    for (int n = 0; n < BlockM / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) dp[n][e] = s[n][e] * (dp[n][e] - Dt[n * 8 + 2 * t + (e & 1)]) * scale;

    uint32_t pa[BlockM / 16][4], da[BlockM / 16][4];
#pragma unroll
    for (int kk = 0; kk < BlockM / 16; ++kk) {
      accumulators_as_a<E>(pa[kk], s, kk);
      accumulators_as_a<E>(da[kk], dp, kk);
    }
    wg::fence();
#pragma unroll
    for (int kk = 0; kk < BlockM / 16; ++kk) wg::mma_rs<E, Dv, true>(acc_dv, pa[kk], OTile::mn_major(dOt, 16 * kk), true);
#pragma unroll
    for (int kk = 0; kk < BlockM / 16; ++kk) wg::mma_rs_mn<E, QTile, Dqk>(acc_dk, da[kk], Qt, 16 * kk, 0, true);
    wg::commit();
    if constexpr (WithDq) {
      // dSᵀ to this pair's buffer, for the block's dQ product after the barrier. The buffer was
      // last read by pair p − 2's dQ product, which every warp waited for before pair p − 1's barrier.
#pragma unroll
      for (int kk = 0; kk < BlockM / 16; ++kk)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int row = key_row + 8 * (r & 1), col = 16 * kk + 8 * (r >> 1) + 2 * t;
          *reinterpret_cast<uint32_t*>(dSt + STile::offset(row, col)) = da[kk][r];
        }
    }
    if constexpr (F::kProducer) {
      // The computing warpgroups' barrier: dSᵀ complete (and fenced over to the wgmmas).
      if constexpr (WithDq) {
        wg::fence_proxy_async();
        named_barrier_sync(2, Consumers);
      }
    } else {
      // The tile's one barrier: pair p + 1 visible, dSᵀ complete, pair p + 2 queued into the stage
      // pair p − 1 used (its products were waited for before this barrier).
      stream_advance<true>(p, total, load_pair);
    }
    if constexpr (WithDq) {
      constexpr int DqCols = F::DqCols;
      const int dq_key0 = F::kDqSplitsColumns ? 0 : key_base, dq_col0 = F::kDqSplitsColumns ? DqCols * group : 0;
      // Whether this warp adds its rows of dQ into global memory (all do where the columns split).
      const bool dq_taker = F::kDqSplitsColumns || (group == 0) == (wq < 2);
      float dq[DqCols / 8][4];
      wg::fence();
#pragma unroll
      for (int kk = 0; kk < F::DqKeys / 16; ++kk) {
        wg::mma_ss_mn<E, KTile, DqCols, true>(dq, STile::mn_major(dSt, dq_key0 + 16 * kk), Ks, dq_key0 + 16 * kk,
                                              dq_col0, kk > 0);
      }
      wg::commit();
      wg::wait<0>();
      wg::hold(dq);
      if constexpr (!F::kDqSplitsColumns) {
        // Both warpgroups hold dQ for the same 64 × Dqk tile, each over its own 64 keys: warp wq's
        // rows 16wq … 16wq + 15 in both. Warps 2–3 of warpgroup 0 and warps 0–1 of warpgroup 1
        // hand theirs over (slot wq·32 + lane, the same rows and columns as the taker's own) and go
        // on; the others add them to their own and alone issue the atomics, so each element of
        // the tile is added into global memory once, not twice. The exchange is next written after
        // the next tile's block barrier, which every taker reaches only once it has read.
        const int slot = 32 * wq + lane;
        if (!dq_taker) {
#pragma unroll
          for (int n = 0; n < DqCols / 8; ++n) Xs[n * 128 + slot] = make_float4(dq[n][0], dq[n][1], dq[n][2], dq[n][3]);
          named_barrier_arrive(1, Consumers);
        } else {
          named_barrier_sync(1, Consumers);
#pragma unroll
          for (int n = 0; n < DqCols / 8; ++n) {
            const float4 o = Xs[n * 128 + slot];
            dq[n][0] += o.x, dq[n][1] += o.y, dq[n][2] += o.z, dq[n][3] += o.w;
          }
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t i = i0 + 16 * wq + g + 8 * r;
        if (!dq_taker || i >= d.Tq) continue;
        float* row = dq_accum + (b * d.Tq + i) * acc_row + h * Dqk + dq_col0 + 2 * t;
#pragma unroll
        for (int n = 0; n < DqCols / 8; ++n) atomic_add2(row + n * 8, dq[n][2 * r], dq[n][2 * r + 1]);
      }
    } else {
      wg::wait<0>();
    }
    wg::hold(acc_dv);
    wg::hold(acc_dk);
    wg::hold(pa);
    wg::hold(da);
    // Every wgmma reading pair p's stage has landed: the producer may refill it.
    if constexpr (F::kProducer) tma::mbarrier_arrive(&empty[st]);
  }
  tc::cp_async_wait<0>();

  write_key_gradients<E, Dqk, Dv>(d, b, hk, key0, t, acc_dk, acc_dv, dk, dv);
  cta_trace_end(d.trace);
}
#endif

template <typename E, typename F, bool WithDq>
__global__ void __launch_bounds__(F::Threads, F::MinBlocks)
    flash_backward_wgmma_kernel(Dims d, Mask m, float scale, const E* __restrict__ q, const E* __restrict__ k,
                                const E* __restrict__ v, const float* __restrict__ lse,
                                const float* __restrict__ dsum, const E* __restrict__ dout,
                                float* __restrict__ dq_accum, E* __restrict__ dk, E* __restrict__ dv) {
#if FLASHGPT_HAS_WGMMA
  backward_wgmma<E, F, WithDq>(d, m, scale, q, k, v, lse, dsum, dout, dq_accum, dk, dv, nullptr);
#else
  (void)d, (void)m, (void)scale, (void)q, (void)k, (void)v, (void)lse, (void)dsum, (void)dout, (void)dq_accum;
  (void)dk, (void)dv;
  __trap();  // not built for sm_90a: the host side never launches it there
#endif
}

// Launch bounds of one block an SM (the MinBlocks of these tiles): ptxas then honours the
// producer's register reallocation.
template <typename E, typename F, bool WithDq>
__global__ void __launch_bounds__(F::Threads, 1)
    flash_backward_wgmma_ws_kernel(Dims d, Mask m, float scale, const __grid_constant__ BackwardMaps maps,
                                   const E* __restrict__ k, const E* __restrict__ v, const float* __restrict__ lse,
                                   const float* __restrict__ dsum, float* __restrict__ dq_accum, E* __restrict__ dk,
                                   E* __restrict__ dv) {
#if FLASHGPT_HAS_WGMMA
  backward_wgmma<E, F, WithDq>(d, m, scale, nullptr, k, v, lse, dsum, nullptr, dq_accum, dk, dv, &maps);
#else
  (void)d, (void)m, (void)scale, (void)maps, (void)k, (void)v, (void)lse, (void)dsum, (void)dq_accum, (void)dk;
  (void)dv;
  __trap();  // not built for sm_90a: the host side never launches it there
#endif
}

}  // namespace flash_tc
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
