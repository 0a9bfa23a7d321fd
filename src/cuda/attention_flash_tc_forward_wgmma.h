// The FlashAttention forward on Hopper's warpgroup MMA (wgmma, sm_90a; FlashTiles::Wgmma): the
// tensor-core forward's algorithm (attention_flash_tc_forward.h) with each warpgroup of four warps
// owning 64 query rows and multiplying whole tiles in one asynchronous instruction stream instead
// of per-warp mma.sync fragments.
//
// A block of Groups warpgroups owns BlockM = 64·Groups queries of one head. Q, and key and value
// tiles of BlockN rows, sit in 128-byte-swizzled shared tiles (warpgroup.h), Q loaded once and K/V
// streamed through three stages by cp.async with one block barrier a tile (stream_begin /
// stream_advance, with the generic-to-async proxy fence the tensor cores' shared-memory reads
// need). Per tile, each warpgroup
//   S = Q Kᵀ   Dqk / 16 wgmmas m64n{BlockN}k16, A (its 64 rows of Q) and B (K, K-major) from shared
//              memory, into registers laid out as mma.sync's C, chunk by chunk;
//   masks and the online softmax exactly as the mma.sync forward, each thread holding two rows;
//   O += P V   BlockN / 16 wgmmas m64n{Dv}k16 with P from registers (the accumulators of S packed
//              into A fragments, as FlashAttention-2 reuses them) and V MN-major from shared memory.
// The two overlap across tiles (FlashAttention-3's intra-warpgroup pipelining): tile j's S = Q Kᵀ
// and tile j − 1's O += P V are issued together, and tile j's softmax runs as soon as its scores
// land, while the tensor cores still multiply P V; O is rescaled once that product has landed. So
// a tile's V is read while the next tile's K is, hence the third stage: the tile queued at a
// barrier goes into the stage whose V the previous iteration finished reading.
//
// With TMA (FlashTiles::WgmmaTma): one thread copies Q and each key/value tile with Hopper's
// tensor memory accelerator (cuda/tma.h) — one box per 64-column panel, landing in exactly the
// swizzled layout the wgmmas read — onto one mbarrier per stage, and every thread waits on the
// barrier of the tile it is about to read instead of on its own cp.async groups; the other 255
// threads issue no copies at all. The stages, the order and the one block barrier a tile (which
// frees a stage for its next copy) are the same.
//
// Warp-specialized (FlashTiles::WgmmaWs, FlashAttention-3's recipe): a third warpgroup produces.
// It gives up most of its registers (setmaxnreg) to the two consuming warpgroups, and one of its
// threads issues every copy, waiting before it refills a stage until all 256 consumers have
// arrived on that stage's `empty` mbarrier (each does once the wgmmas reading the stage have
// landed). There is no block barrier in the loop at all, so the consumers drift apart, and they
// are made to in turn (ping-pong): each warpgroup issues its wgmmas only after the other has
// issued its own (two named barriers), so one's softmax runs while the other's products occupy
// the tensor cores. FlashTiles::WgmmaWsNoPingPong is the same kernel with the turns switched off.
#pragma once

#include <algorithm>
#include <cmath>

#include "cuda/attention_flash_tc_common.h"
#include "cuda/tma.h"
#include "cuda/warpgroup.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace flash_tc {

template <int Dqk_, int Dv_, int BlockN_, int Groups_ = 2, bool Tma_ = false, bool Producer_ = false>
struct ForwardTilesWgmma {
  static constexpr bool kWarpgroup = true, kTma = Tma_ || Producer_, kProducer = Producer_;
  static constexpr int Dqk = Dqk_, Dv = Dv_, BlockN = BlockN_, Groups = Groups_;
  // Groups consuming warpgroups, and with a producer one more after them.
  static constexpr int BlockM = 64 * Groups, Threads = 128 * (Groups + (kProducer ? 1 : 0)), Stages = 3;
  // The producer's registers a thread, and what that leaves each consumer of the block's pool
  // (ptxas starts every thread at 65536 / Threads, rounded down to 8, under launch bounds of one
  // block an SM): 128 · 40 + 256 · 232 = 168 · 384.
  static constexpr int kProducerRegisters = 40;
  static constexpr int kConsumerRegisters =
      std::min(256, (register_pool(Threads) - 128 * kProducerRegisters) / (128 * Groups) / 8 * 8);
  static_assert(!kProducer || Groups == 2, "the ping-pong takes turns between two consuming warpgroups");
  using QTile = wg::SwizzledTile<BlockM, Dqk>;
  using KTile = wg::SwizzledTile<BlockN, Dqk>;
  using VTile = wg::SwizzledTile<BlockN, Dv>;
  // Three stages of K and V (a tile's V is read while the next tile's K is), and 1024 bytes to
  // align the tiles (the swizzle is a function of shared-memory address bits; the window promises 128).
  // With TMA, one 8-byte mbarrier per stage after the tiles (`full`), and with a producer a second
  // (`empty`).
  static constexpr size_t bytes = 2 * static_cast<size_t>(QTile::kElems + Stages * (KTile::kElems + VTile::kElems)) +
                                  1024 + (kTma ? 8 * Stages : 0) + (kProducer ? 8 * Stages : 0);
  static_assert(BlockN == 64 || BlockN == 128 || BlockN == 256, "S is one wgmma wide");
  static_assert(Dv == 64 || Dv == 128 || Dv == 256, "O is one wgmma wide");
};

// Head dims with a Hopper forward: whole 64-element swizzle panels, and Q and K (K-major only) may
// end in a 32-column one in the 64-byte swizzle (latent attention's 96 = 64 + 32).
template <int Dqk, int Dv>
constexpr bool kHasWgmmaForward = (Dqk % 64 == 0 || Dqk % 64 == 32) && Dv % 64 == 0;
// 128 keys a tile up to Dqk = 128 (161 KiB of shared memory at 128/128), 64 beyond.
template <int Dqk, int Dv>
using ForwardTilesWgmmaFor = ForwardTilesWgmma<Dqk, Dv, Dqk <= 128 ? 128 : 64>;
template <int Dqk, int Dv>
using ForwardTilesWgmmaTmaFor = ForwardTilesWgmma<Dqk, Dv, Dqk <= 128 ? 128 : 64, 2, true>;
template <int Dqk, int Dv>
using ForwardTilesWgmmaWsFor = ForwardTilesWgmma<Dqk, Dv, Dqk <= 128 ? 128 : 64, 2, true, true>;

// The tensor maps of the TMA forward's q, k and v (one kernel parameter, __grid_constant__), and
// whether a warp-specialized forward's computing warpgroups take turns (ping-pong; FlashTiles::
// WgmmaWs) or issue their wgmmas whenever ready (WgmmaWsNoPingPong, the experiment that tells
// what the turns cost from what they overlap).
struct ForwardMaps {
  CUtensorMap q, k, v;
  CUtensorMap q_half, k_half;  // where Dqk ends in a half panel: its 32 columns, the 64-byte swizzle
  int pingpong = 1;
};

// The maps for tiles F: each tensor [B][T][row] with each row's heads [H][D], innermost first
// (d, head, position, sequence), boxes of 64 columns by BlockM (q) or BlockN (k, v) positions, and
// of 32 for a half panel.
template <typename F>
ForwardMaps forward_maps(const Dims& d, const void* q, const void* k, const void* v, bool pingpong) {
  ForwardMaps maps;
  maps.pingpong = pingpong ? 1 : 0;
  tma::encode_attention_map(&maps.q, q, F::Dqk, d.Hq, d.Tq, d.Tq, d.q_row, d.B, F::BlockM);
  tma::encode_attention_map(&maps.k, k, F::Dqk, d.Hkv, d.Tk, d.kv_rows, d.k_row, d.B, F::BlockN);
  tma::encode_attention_map(&maps.v, v, F::Dv, d.Hkv, d.Tk, d.kv_rows, d.v_row, d.B, F::BlockN);
  if constexpr (F::QTile::kHalfPanel) {
    tma::encode_attention_map(&maps.q_half, q, F::Dqk, d.Hq, d.Tq, d.Tq, d.q_row, d.B, F::BlockM, 32);
    tma::encode_attention_map(&maps.k_half, k, F::Dqk, d.Hkv, d.Tk, d.kv_rows, d.k_row, d.B, F::BlockN, 32);
  }
  return maps;
}

#if FLASHGPT_HAS_WGMMA
// The kernel's body, for both ways of loading: maps null (cp.async from q, k, v) or, for TMA tiles,
// the tensor maps (q, k and v unused).
template <typename E, typename F>
__device__ __forceinline__ void forward_wgmma(const Dims& d, const Mask& m, float scale, const E* __restrict__ q,
                                              const E* __restrict__ k, const E* __restrict__ v, E* __restrict__ o,
                                              float* __restrict__ lse, const ForwardMaps* maps) {
  constexpr int Dqk = F::Dqk, Dv = F::Dv, BlockM = F::BlockM, BlockN = F::BlockN;
  using QTile = typename F::QTile;
  using KTile = typename F::KTile;
  using VTile = typename F::VTile;
  cta_trace_begin(d.trace);  // nothing unless a CtaTrace records
  FLASHGPT_DYNAMIC_SHARED(unsigned char, raw);
  E* Qs = reinterpret_cast<E*>(raw + (1024 - wg::smem_address(raw) % 1024) % 1024);
  E* Ks = Qs + QTile::kElems;             // Stages
  E* Vs = Ks + F::Stages * KTile::kElems;  // Stages
  const int tid = static_cast<int>(threadIdx.x), group = tid / 128, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t b = blockIdx.z, h = blockIdx.y, hk = h / d.group;
  const int64_t i0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * BlockM;
  const int64_t q_row = d.q_row, o_row = d.Hq * Dv;
  const E* qb = F::kTma ? nullptr : q + b * d.Tq * q_row + h * Dqk;  // TMA reads through maps instead
  const E* kb = F::kTma ? nullptr : k + b * d.kv_rows * d.k_row + hk * Dqk;
  const E* vb = F::kTma ? nullptr : v + b * d.kv_rows * d.v_row + hk * Dv;
  const float scale_log2 = scale * kLog2e;

  const int64_t key_limit = key_limit_of(d, m, b);
  const int64_t q_off = causal_offset(m, b);
  const int n_tiles = key_tiles_of<BlockM, BlockN>(d, m, b, i0, key_limit);

  // TMA: full[st] counts stage st's copies in; tile j is its (j / Stages)-th use (the phase's parity).
  // With a producer, empty[st] counts the consumers out of it.
  uint64_t* full = reinterpret_cast<uint64_t*>(Vs + F::Stages * VTile::kElems);
  uint64_t* empty = full + F::Stages;
  auto load_tile = [&](int64_t j) {
    const int st = static_cast<int>(j % F::Stages);
    // With TMA, by one thread (thread 0, or the producer's first): tile j's panels, tile 0's with Q's;
    // else by every thread, through cp.async.
    if constexpr (F::kTma) {
      constexpr uint32_t kv_bytes = 2 * (KTile::kElems + VTile::kElems);
      tma::mbarrier_arrive_expect_tx(&full[st], kv_bytes + (j == 0 ? 2 * QTile::kElems : 0));
      const int hq = static_cast<int>(h), hkv = static_cast<int>(hk), bi = static_cast<int>(b);
      constexpr int whole = QTile::kWholePanels;
      if (j == 0) {
#pragma unroll
        for (int p = 0; p < whole; ++p)
          tma::tma_load_4d(Qs + p * QTile::kPanelElems, &maps->q, 64 * p, hq, static_cast<int>(i0), bi, &full[st]);
        if constexpr (QTile::kHalfPanel) {
          tma::tma_load_4d(Qs + whole * QTile::kPanelElems, &maps->q_half, 64 * whole, hq, static_cast<int>(i0), bi,
                           &full[st]);
        }
      }
      const int key0 = static_cast<int>(j * BlockN);
      E* Kt = Ks + st * KTile::kElems;
#pragma unroll
      for (int p = 0; p < whole; ++p) tma::tma_load_4d(Kt + p * KTile::kPanelElems, &maps->k, 64 * p, hkv, key0, bi, &full[st]);
      if constexpr (KTile::kHalfPanel) {
        tma::tma_load_4d(Kt + whole * KTile::kPanelElems, &maps->k_half, 64 * whole, hkv, key0, bi, &full[st]);
      }
#pragma unroll
      for (int p = 0; p < Dv / 64; ++p)
        tma::tma_load_4d(Vs + st * VTile::kElems + p * VTile::kPanelElems, &maps->v, 64 * p, hkv, key0, bi, &full[st]);
    } else {
      wg::load_rows_swizzled<Dqk, BlockN, F::Threads>(Ks + st * KTile::kElems, kb, d.k_row, j * BlockN, d.Tk);
      wg::load_rows_swizzled<Dv, BlockN, F::Threads>(Vs + st * VTile::kElems, vb, d.v_row, j * BlockN, d.Tk);
    }
  };
  // Waits until tile j has landed (TMA; with cp.async, stream_begin and stream_advance wait).
  auto wait_tile = [&](int64_t j) {
    if constexpr (F::kTma) tma::mbarrier_wait(&full[j % F::Stages], static_cast<uint32_t>((j / F::Stages) & 1));
  };
  if constexpr (F::kProducer) {
    if (tid == 0) {
#pragma unroll
      for (int st = 0; st < F::Stages; ++st) {
        tma::mbarrier_init(&full[st], 1);
        tma::mbarrier_init(&empty[st], 128 * F::Groups);
      }
      tma::fence_mbarrier_init();
    }
    __syncthreads();
    if (group == F::Groups) {  // the producer: one thread issues every copy, the rest leave
      wg::lower_registers<F::kProducerRegisters>();
      if (tid == 128 * F::Groups) {
        for (int64_t j = 0; j < n_tiles; ++j) {
          // Tile j's stage was last tile j − Stages's: every consumer must be out of it.
          if (j >= F::Stages) tma::mbarrier_wait(&empty[j % F::Stages], static_cast<uint32_t>((j / F::Stages - 1) & 1));
          load_tile(j);
        }
      }
      cta_trace_end(d.trace);
      return;
    }
    wg::raise_registers<F::kConsumerRegisters>();
    // The first turn at the tensor cores is warpgroup 0's.
    if (maps->pingpong != 0 && group == 1 && n_tiles > 0) named_barrier_arrive(1, 256);
    if (n_tiles > 0) wait_tile(0);
  } else if constexpr (F::kTma) {
    if (tid == 0) {
#pragma unroll
      for (int st = 0; st < F::Stages; ++st) tma::mbarrier_init(&full[st], 1);
      tma::fence_mbarrier_init();
    }
    __syncthreads();
    if (tid == 0) {
      if (n_tiles > 0) load_tile(0);
      if (n_tiles > 1) load_tile(1);
    }
    if (n_tiles > 0) wait_tile(0);
  } else {
    wg::load_rows_swizzled<Dqk, BlockM, F::Threads>(Qs, qb, q_row, i0, d.Tq);
    tc::cp_async_commit();
    stream_begin<true>(n_tiles, load_tile);
  }
  // After the block's last read of tile j's stage: tile j + 1 landed, and tile j + 2 queued into
  // the stage tile j − 1 used (every warp is past its reads there once the barrier is passed).
  // With a producer: tile j − 1's stage is released to it instead (this thread's wgmmas reading
  // it have landed), and tile j + 1 waited for.
  auto advance = [&](int64_t j) {
    if constexpr (F::kProducer) {
      if (j >= 1) tma::mbarrier_arrive(&empty[(j - 1) % F::Stages]);
      if (j + 1 < n_tiles) wait_tile(j + 1);
    } else if constexpr (F::kTma) {
      if (j + 1 < n_tiles) wait_tile(j + 1);
      __syncthreads();
      if (tid == 0 && j + 2 < n_tiles) load_tile(j + 2);
    } else {
      stream_advance<true>(j, n_tiles, load_tile);
    }
  };

  float acc[Dv / 8][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  // This warp's 16 rows of its group's 64; the lane's rows are row0 and row0 + 8.
  const int64_t warp_row = i0 + 64 * group + 16 * (tid % 128 / 32), row0 = warp_row + g;

  // The ping-pong (with a producer, unless switched off): warpgroup g issues its wgmmas between
  // turn_begin, which waits for named barrier 1 + g, and turn_end, which lets the other warpgroup
  // go (barrier 2 − g). Each barrier's rounds are 128 waiting and 128 arriving threads: warpgroup 1
  // arrives first (above) and skips its last turn_end, so every round opened is completed.
  const bool pingpong = F::kProducer && maps->pingpong != 0;
  auto turn_begin = [&]() {
    if constexpr (F::kProducer) {
      if (pingpong) named_barrier_sync(1 + group, 256);
    }
  };
  auto turn_end = [&](bool last) {
    if constexpr (F::kProducer) {
      if (pingpong && !(last && group == 1)) named_barrier_arrive(2 - group, 256);
    }
  };

  float s[BlockN / 8][4];
  uint32_t p[BlockN / 16][4];
  float alpha[2];
  // S = Q K_tileᵀ into s, issued and committed as one group.
  auto issue_scores = [&](int tile) {
#pragma unroll
    for (int kk = 0; kk < Dqk / 16; ++kk) {
      wg::mma_ss<E, BlockN, false>(s, QTile::k_major(Qs, 64 * group, 16 * kk),
                                   KTile::k_major(Ks + (tile % F::Stages) * KTile::kElems, 0, 16 * kk), kk > 0);
    }
    wg::commit();
  };
  // O += P V_tile, P from the registers p, as one group.
  auto issue_values = [&](int tile) {
    const E* Vt = Vs + (tile % F::Stages) * VTile::kElems;
#pragma unroll
    for (int kk = 0; kk < BlockN / 16; ++kk) wg::mma_rs<E, Dv, true>(acc, p[kk], VTile::mn_major(Vt, 16 * kk), true);
    wg::commit();
  };
  // The masks and the online softmax of tile's scores in s (once they have landed): s becomes the
  // unnormalised probabilities, row_max and row_sum move on, alpha is what O must be scaled by.
  auto softmax = [&](int tile) {
    const int64_t j0 = static_cast<int64_t>(tile) * BlockN;
    const bool needs_mask = m.q_seg || j0 + BlockN > key_limit || (m.causal && j0 + BlockN - 1 > q_off + warp_row);
    if (needs_mask) {
#pragma unroll
      for (int n = 0; n < BlockN / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (!visible(d, m, b, row0 + (e >> 1) * 8, j0 + n * 8 + 2 * t + (e & 1))) s[n][e] = -INFINITY;
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = row_max[r];
#pragma unroll
      for (int n = 0; n < BlockN / 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
      mx = quad_max(mx);
      const float base = mx == -INFINITY ? 0.0f : mx * scale_log2;  // a row with nothing visible yet stays at 0
      alpha[r] = exp2f(row_max[r] * scale_log2 - base);
      row_max[r] = mx;
      float sum = 0.0f;
#pragma unroll
      for (int n = 0; n < BlockN / 8; ++n) {
        s[n][2 * r] = exp2f(s[n][2 * r] * scale_log2 - base);
        s[n][2 * r + 1] = exp2f(s[n][2 * r + 1] * scale_log2 - base);
        sum += s[n][2 * r] + s[n][2 * r + 1];
      }
      row_sum[r] = row_sum[r] * alpha[r] + sum;
    }
  };
  auto rescale_and_pack = [&]() {
#pragma unroll
    for (int n = 0; n < Dv / 8; ++n) {
      acc[n][0] *= alpha[0];
      acc[n][1] *= alpha[0];
      acc[n][2] *= alpha[1];
      acc[n][3] *= alpha[1];
    }
#pragma unroll
    for (int kk = 0; kk < BlockN / 16; ++kk) accumulators_as_a<E>(p[kk], s, kk);
  };

  if (n_tiles > 0) {
    // Tile 0's scores and softmax alone; then each tile's scores are multiplied while the tensor
    // cores still run the previous tile's P V, and its softmax overlaps that product.
    turn_begin();
    wg::fence();
    issue_scores(0);
    turn_end(false);
    wg::wait<0>();
    wg::hold(s);
    softmax(0);
    rescale_and_pack();
    advance(0);  // tile 1 landed; tile 2 into the third stage
    for (int tile = 1; tile < n_tiles; ++tile) {
      turn_begin();
      wg::fence();
      issue_scores(tile);
      issue_values(tile - 1);
      turn_end(false);
      wg::wait<1>();  // the scores (the older group) have landed; P V may still run
      wg::hold(s);
      softmax(tile);
      wg::wait<0>();
      wg::hold(acc);
      wg::hold(p);
      rescale_and_pack();
      // Every read of tile − 1's stage is done: tile + 1 landed, tile + 2 queued into that stage.
      advance(tile);
    }
    turn_begin();
    wg::fence();
    issue_values(n_tiles - 1);
    turn_end(true);
    wg::wait<0>();
    wg::hold(acc);
    wg::hold(p);
  }
  if constexpr (!F::kTma) tc::cp_async_wait<0>();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float sum = quad_sum(row_sum[r]);
    const int64_t i = row0 + r * 8;
    if (i >= d.Tq) continue;
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;  // a row that saw no key writes zeros
    E* out = o + (b * d.Tq + i) * o_row + h * Dv;
#pragma unroll
    for (int n = 0; n < Dv / 8; ++n) store2(out + n * 8 + 2 * t, acc[n][2 * r] * inv, acc[n][2 * r + 1] * inv);
    if (t == 0) lse[(b * d.Hq + h) * d.Tq + i] = sum > 0.0f ? row_max[r] * scale + logf(sum) : -INFINITY;
  }
  cta_trace_end(d.trace);
}
#endif

template <typename E, typename F>
__global__ void __launch_bounds__(F::Threads)
    flash_forward_wgmma_kernel(Dims d, Mask m, float scale, const E* __restrict__ q, const E* __restrict__ k,
                               const E* __restrict__ v, E* __restrict__ o, float* __restrict__ lse) {
#if FLASHGPT_HAS_WGMMA
  forward_wgmma<E, F>(d, m, scale, q, k, v, o, lse, nullptr);
#else
  (void)d, (void)m, (void)scale, (void)q, (void)k, (void)v, (void)o, (void)lse;
  __trap();  // not built for sm_90a: the host side never launches it there
#endif
}

// Launch bounds of one block an SM: with a producer, ptxas then honours its register reallocation.
template <typename E, typename F>
__global__ void __launch_bounds__(F::Threads, 1)
    flash_forward_wgmma_tma_kernel(Dims d, Mask m, float scale, const __grid_constant__ ForwardMaps maps,
                                   E* __restrict__ o, float* __restrict__ lse) {
#if FLASHGPT_HAS_WGMMA
  forward_wgmma<E, F>(d, m, scale, nullptr, nullptr, nullptr, o, lse, &maps);
#else
  (void)d, (void)m, (void)scale, (void)maps, (void)o, (void)lse;
  __trap();  // not built for sm_90a: the host side never launches it there
#endif
}

}  // namespace flash_tc
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
