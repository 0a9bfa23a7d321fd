// The paged latent decode's split kernel on Hopper's warpgroup MMA (wgmma, sm_90a; see
// latent_decode_kernels.h), bf16 in, fp32 accumulators, for DeepSeek's rows: n_latent 512 +
// rope 64. The same algorithm as the mma.sync kernel (latent_decode_tc.cu) — MQA over the cache,
// one shared tile serving as both K and V — with its two halves now two warpgroups:
//
// A block of 256 threads holds 64 query rows (heads × new tokens) of one sequence. Q (64 × 576)
// and two stages of 64-key tiles (gathered row by row through the block table by cp.async) sit
// in 128-byte-swizzled shared tiles (warpgroup.h): 72 KiB each, 226 KiB in all with P. Per tile,
// warpgroup h
//   S_h = Q K_hᵀ   over its 32 keys of the tile: 36 wgmmas m64n32k16, both operands in shared memory;
//   masks S_h where the tile reaches past the split's end or the first new token;
//   the halves' row maxima meet in shared memory (one barrier), then each warpgroup rescales by
//   e^{m−m'}, exponentiates its half (base 2) and writes it, bf16, into the shared P tile;
//   O_h += P V_h   over all 64 keys, its 256 of the 512 output columns: 4 wgmmas m64n256k16, P
//                  K-major and V (the tile's first 512 columns) MN-major, both from shared memory.
// The halves' row sums meet once at the end. A split writes its output normalised (bf16 when it
// is the only split) and its log-sum-exp, as the other split kernels do.
#include <cmath>

#include "cuda/attention_flash_tc_common.h"
#include "cuda/latent_decode_kernels.h"
#include "cuda/warpgroup.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace latent_decode {

namespace {

using E = __nv_bfloat16;
using flash_tc::kLog2e;
using flash_tc::store2;

struct WgmmaTiles {
  static constexpr int NL = 512, DR = 64, Row = NL + DR;
  static constexpr int Rows = 64, KeyTile = 64, HalfKeys = KeyTile / 2, HalfNL = NL / 2, Threads = 256;
  using RowTile = wg::SwizzledTile<64, Row>;  // Q, and each stage of keys
  using PTile = wg::SwizzledTile<Rows, KeyTile>;
  // Q, two stages, P, the row maxima/sums of both halves, and 1024 bytes to align the tiles.
  static constexpr size_t bytes =
      2 * static_cast<size_t>(3 * RowTile::kElems + PTile::kElems) + sizeof(float) * 2 * Rows + 1024;
};

// Queues keys [j0, j0 + KeyTile) of sequence b's cache into the swizzled tile dst, gathered
// through its block-table row; keys at or past k1 are zero-filled.
__device__ __forceinline__ void load_keys_swizzled(E* dst, const E* cache, const int32_t* table_row, int64_t page,
                                                   int64_t j0, int64_t k1) {
  using F = WgmmaTiles;
  constexpr int kChunks = F::Row / 8;
  for (int idx = static_cast<int>(threadIdx.x); idx < F::KeyTile * kChunks; idx += F::Threads) {
    const int r = idx / kChunks, c = idx % kChunks;
    const int64_t j = j0 + r;
    const bool ok = j < k1;
    const E* src = ok ? cache + (static_cast<int64_t>(table_row[j / page]) * page + j % page) * F::Row + c * 8 : cache;
    tc::cp_async_16(dst + F::RowTile::offset(r, c * 8), src, ok);
  }
}

__global__ void __launch_bounds__(WgmmaTiles::Threads, 1)
    latent_decode_wgmma_kernel(Dims d, float scale, Split split, const E* __restrict__ q, const E* __restrict__ cache,
                               const int32_t* __restrict__ block_table, const int32_t* __restrict__ seq_lens,
                               E* __restrict__ out, float* __restrict__ lse, float* __restrict__ part_o,
                               float* __restrict__ part_lse) {
#if FLASHGPT_HAS_WGMMA
  using F = WgmmaTiles;
  using RowTile = F::RowTile;
  using PTile = F::PTile;
  constexpr int Row = F::Row, Rows = F::Rows, KeyTile = F::KeyTile, HalfKeys = F::HalfKeys, HalfNL = F::HalfNL;
  const Work w = work_of(d, split, seq_lens);
  if (w.none) return;
  FLASHGPT_DYNAMIC_SHARED(unsigned char, raw);
  E* Qs = reinterpret_cast<E*>(raw + (1024 - wg::smem_address(raw) % 1024) % 1024);
  E* Ks = Qs + RowTile::kElems;      // two stages
  E* Ps = Ks + 2 * RowTile::kElems;
  float* red = reinterpret_cast<float*>(Ps + PTile::kElems);  // [2 halves][Rows]: row maxima, then sums
  const int tid = static_cast<int>(threadIdx.x), half = tid / 128, lane = tid % 32;
  const int g = lane / 4, wq = tid % 128 / 32;  // wq: the warp within its warpgroup
  const int64_t b = w.b, rows = d.rows(), g0 = static_cast<int64_t>(blockIdx.y) * Rows;
  const float scale_log2 = scale * kLog2e;

  const int64_t len = w.len, k0 = w.k0, k1 = w.k1;
  const int n_tiles = static_cast<int>((k1 - k0 + KeyTile - 1) / KeyTile);
  const int32_t* table_row = block_table + b * d.max_pages;

  wg::load_rows_swizzled<Row, Rows, F::Threads>(Qs, q + b * rows * Row, Row, g0, rows);
  tc::cp_async_commit();
  auto load_tile = [&](int64_t j) {
    load_keys_swizzled(Ks + (j & 1) * RowTile::kElems, cache, table_row, d.page, k0 + j * KeyTile, k1);
  };
  flash_tc::stream_begin<true>(n_tiles, load_tile);

  // This lane's two rows (block-local): lr[0] and lr[0] + 8; the positions they may see up to.
  int lr[2];
  int64_t qpos[2];
  for (int r = 0; r < 2; ++r) {
    lr[r] = wq * 16 + g + r * 8;
    qpos[r] = len - d.Tq + (g0 + lr[r]) / d.H;  // rows past the last are never written
  }
  const int64_t first_masked = min(k1, len - d.Tq + 1);

  float acc[HalfNL / 8][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};

  for (int tile = 0; tile < n_tiles; ++tile) {
    const int64_t j0 = k0 + static_cast<int64_t>(tile) * KeyTile;
    const E* Kt = Ks + (tile & 1) * RowTile::kElems;

    // S = Q Kᵀ over this warpgroup's half of the keys.
    float s[HalfKeys / 8][4];
    wg::fence();
#pragma unroll
    for (int kk = 0; kk < Row / 16; ++kk) {
      wg::mma_ss<E, HalfKeys, false>(s, RowTile::k_major(Qs, 0, 16 * kk), RowTile::k_major(Kt, half * HalfKeys, 16 * kk),
                                     kk > 0);
    }
    wg::commit();
    wg::wait<0>();
    wg::hold(s);
    halves_softmax<HalfKeys, HalfNL, Rows>(s, acc, row_max, row_sum, red, lr, qpos, half, j0, k1,
                                           j0 + KeyTile > first_masked, scale_log2,
                                           [&](int row, int key, float p0, float p1) {
                                             store2(Ps + PTile::offset(row, key), p0, p1);
                                           });
    wg::fence_proxy_async();  // P, written by plain stores, is read by the tensor cores
    __syncthreads();          // P of both halves is in shared memory
    // O += P V over the whole tile, this warpgroup's half of the output columns.
    wg::fence();
#pragma unroll
    for (int kk = 0; kk < KeyTile / 16; ++kk) {
      wg::mma_ss<E, HalfNL, true>(acc, PTile::k_major(Ps, 0, 16 * kk), RowTile::mn_major(Kt, 16 * kk, half * HalfNL),
                                  true);
    }
    wg::commit();
    wg::wait<0>();
    wg::hold(acc);
    flash_tc::stream_advance<true>(tile, n_tiles, load_tile);
  }
  tc::cp_async_wait<0>();

  write_halves<F::NL, HalfNL, Rows>(d, scale, w, g0, half, lr, acc, row_max, row_sum, red, out, lse, part_o,
                                    part_lse);
#else
  (void)d, (void)scale, (void)split, (void)q, (void)cache, (void)block_table, (void)seq_lens, (void)out, (void)lse,
      (void)part_o, (void)part_lse, (void)WgmmaTiles::HalfKeys, (void)WgmmaTiles::HalfNL, (void)&load_keys_swizzled;
  __trap();  // not built for sm_90a: the host side never launches it there
#endif
}

}  // namespace

bool wgmma_supports(int64_t nl, int64_t rope) { return nl == WgmmaTiles::NL && rope == WgmmaTiles::DR; }

LaunchInfo wgmma_info(const Dims&) {
  using F = WgmmaTiles;
  allow_shared(latent_decode_wgmma_kernel, F::bytes, "Hopper latent decode");
  return {F::Rows, F::Threads, F::bytes, max_blocks_per_sm(latent_decode_wgmma_kernel, F::Threads, F::bytes)};
}

void launch_wgmma(const Dims& d, float scale, const Args<E>& a) {
  using F = WgmmaTiles;
  allow_shared(latent_decode_wgmma_kernel, F::bytes, "Hopper latent decode");
  launch_kernel("Hopper latent decode", latent_decode_wgmma_kernel, grid_of(d, a.split, F::Rows), F::Threads, F::bytes,
                nullptr, d, scale, a.split, a.q, a.cache, a.block_table, a.seq_lens, a.out, a.lse, a.part_o,
                a.part_lse);
}

}  // namespace latent_decode
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
