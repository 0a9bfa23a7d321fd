// The paged latent decode's split kernel on the tensor cores (see latent_decode_kernels.h), bf16
// in, fp32 accumulators. The decode of one sequence is MQA: every query row (head × new token)
// attends to the same cached rows, so a block holds many query rows — 64 with the wide tiles —
// and every key it loads serves all of them; the values are the first n_latent columns of those
// same rows, so one shared-memory tile is both K and V.
//
// The 2·RowWarps warps form RowWarps row groups of 16 query rows × 2 halves. Per tile of KeyTile
// keys (gathered row by row through the block table with cp.async, double-buffered):
//   S  = Q Kᵀ   each warp its 16 rows × its half of the tile's keys, over all Dqk columns
//   masks S where the tile needs it (the split's end, the new tokens' causal diagonal)
//   the halves' row maxima meet in shared memory; both warps of a row group then hold the same
//   running maximum m, rescale by e^{m−m'} and exponentiate their own half (base 2)
//   P (bf16) goes to shared memory, and each warp reads back its rows over all the tile's keys
//   O += P V    each warp its 16 rows × its half of the n_latent output columns
// The halves' row sums meet once at the end. A split writes its output normalised (bf16 when it
// is the only split) and its log-sum-exp.
#include <cmath>
#include <string>

#include "cuda/attention_flash_tc_common.h"
#include "cuda/latent_decode_kernels.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace latent_decode {

namespace {

using E = __nv_bfloat16;
using flash_tc::kLog2e;
using flash_tc::kPad;
using flash_tc::load_a;
using flash_tc::load_b_from_cols;
using flash_tc::load_b_from_rows;
using flash_tc::load_rows;
using flash_tc::mma_pair;
using flash_tc::store2;

template <int NL_, int DR_, int RowWarps_, int KeyTile_>
struct Tiles {
  static constexpr int NL = NL_, DR = DR_, Row = NL + DR;
  static constexpr int RowWarps = RowWarps_, Warps = 2 * RowWarps, Threads = 32 * Warps;
  static constexpr int Rows = 16 * RowWarps, KeyTile = KeyTile_, HalfKeys = KeyTile / 2, HalfNL = NL / 2;
  static constexpr int RS = Row + kPad, PS = KeyTile + kPad;  // shared row strides (elements)
  static constexpr int q_elems = Rows * RS, k_elems = KeyTile * RS, p_elems = Rows * PS;
  static constexpr size_t bytes = 2 * static_cast<size_t>(q_elems + 2 * k_elems + p_elems) + sizeof(float) * 2 * Rows;
  static_assert(Row % 16 == 0 && HalfNL % 16 == 0 && KeyTile % 16 == 0 && HalfKeys % 8 == 0,
                "tiles are whole mma fragments");
};

// Queues the copy of keys [j0, j0 + KeyTile) of sequence b's cache into shared [KeyTile][RS],
// gathered through its block-table row; keys at or past k1 are zero-filled (the last page's
// tail may hold anything, and P·V must not meet a NaN there).
template <typename F>
__device__ __forceinline__ void load_keys(E* dst, const E* cache, const int32_t* table_row, int64_t page, int64_t j0,
                                          int64_t k1) {
  constexpr int kChunks = F::Row / 8;  // 16-byte pieces per row
  for (int idx = static_cast<int>(threadIdx.x); idx < F::KeyTile * kChunks; idx += F::Threads) {
    const int r = idx / kChunks, c = idx % kChunks;
    const int64_t j = j0 + r;
    const bool ok = j < k1;
    const E* src = ok ? cache + (static_cast<int64_t>(table_row[j / page]) * page + j % page) * F::Row + c * 8 : cache;
    tc::cp_async_16(dst + r * F::RS + c * 8, src, ok);
  }
}

template <typename F>
__global__ void __launch_bounds__(F::Threads)
    latent_decode_tc_kernel(Dims d, float scale, Split split, const E* __restrict__ q, const E* __restrict__ cache,
                            const int32_t* __restrict__ block_table, const int32_t* __restrict__ seq_lens,
                            E* __restrict__ out, float* __restrict__ lse, float* __restrict__ part_o,
                            float* __restrict__ part_lse) {
  constexpr int Row = F::Row, Rows = F::Rows, KeyTile = F::KeyTile, HalfKeys = F::HalfKeys, HalfNL = F::HalfNL;
  const Work w = work_of(d, split, seq_lens);
  if (w.none) return;
  FLASHGPT_DYNAMIC_SHARED(E, smem);
  E* Qs = smem;                          // [Rows][RS]
  E* Ks = Qs + F::q_elems;               // two stages of [KeyTile][RS]
  E* Ps = Ks + 2 * F::k_elems;           // [Rows][PS]
  float* red = reinterpret_cast<float*>(Ps + F::p_elems);  // [2 halves][Rows]: row maxima, then sums
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4;
  const int rw = warp % F::RowWarps, half = warp / F::RowWarps;
  const int64_t b = w.b, rows = d.rows(), g0 = static_cast<int64_t>(blockIdx.y) * Rows;
  const float scale_log2 = scale * kLog2e;

  const int64_t len = w.len, k0 = w.k0, k1 = w.k1;
  const int n_tiles = static_cast<int>((k1 - k0 + KeyTile - 1) / KeyTile);
  const int32_t* table_row = block_table + b * d.max_pages;

  load_rows<Row, Rows, F::Threads>(Qs, q + b * rows * Row, Row, g0, rows);
  if (n_tiles > 0) load_keys<F>(Ks, cache, table_row, d.page, k0, k1);
  tc::cp_async_commit();

  // This lane's two rows (block-local): lr[0] and lr[0] + 8; the positions they may see up to.
  int lr[2];
  int64_t qpos[2];
  for (int r = 0; r < 2; ++r) {
    lr[r] = rw * 16 + g + r * 8;
    qpos[r] = len - d.Tq + (g0 + lr[r]) / d.H;  // rows past the last are never written
  }
  // A tile needs masking where it reaches past the split's end or the first new token.
  const int64_t first_masked = min(k1, len - d.Tq + 1);

  float acc[HalfNL / 8][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};

  for (int tile = 0; tile < n_tiles; ++tile) {
    const int stage = tile & 1;
    const int64_t j0 = k0 + static_cast<int64_t>(tile) * KeyTile;
    tc::cp_async_wait<0>();
    __syncthreads();  // this tile has landed for every thread; the other stage is no longer read
    if (tile + 1 < n_tiles) load_keys<F>(Ks + (stage ^ 1) * F::k_elems, cache, table_row, d.page, j0 + KeyTile, k1);
    tc::cp_async_commit();
    const E* Kt = Ks + stage * F::k_elems;

    // S = Q Kᵀ over this warp's half of the keys.
    float s[HalfKeys / 8][4] = {};
#pragma unroll 4
    for (int kk = 0; kk < Row / 16; ++kk) {
      uint32_t a[4];
      load_a(a, Qs, F::RS, rw * 16, kk * 16);
      if constexpr (HalfKeys % 16 == 0) {
#pragma unroll
        for (int n = 0; n < HalfKeys / 16; ++n) {
          uint32_t bk[4];
          load_b_from_rows(bk, Kt, F::RS, half * HalfKeys + n * 16, kk * 16);
          mma_pair<E>(s[2 * n], s[2 * n + 1], a, bk);
        }
      } else {  // one n-tile of 8 keys: matrices (keys, k 0–7) and (keys, k 8–15)
        uint32_t bk[2];
        tc::ldmatrix_x2(bk, Kt + (half * HalfKeys + (lane & 7)) * F::RS + kk * 16 + ((lane >> 3) & 1) * 8);
        tc::mma_16816<E>(s[0], a, bk);
      }
    }
    halves_softmax<HalfKeys, HalfNL, Rows>(s, acc, row_max, row_sum, red, lr, qpos, half, j0, k1,
                                           j0 + KeyTile > first_masked, scale_log2,
                                           [&](int row, int key, float p0, float p1) {
                                             store2(Ps + row * F::PS + key, p0, p1);
                                           });
    __syncthreads();  // P of both halves is in shared memory
    // O += P V over the whole tile, this warp's half of the output columns.
#pragma unroll
    for (int kk = 0; kk < KeyTile / 16; ++kk) {
      uint32_t a[4];
      load_a(a, Ps, F::PS, rw * 16, kk * 16);
#pragma unroll
      for (int n = 0; n < HalfNL / 16; ++n) {
        uint32_t bv[4];
        load_b_from_cols(bv, Kt, F::RS, half * HalfNL + n * 16, kk * 16);
        mma_pair<E>(acc[2 * n], acc[2 * n + 1], a, bv);
      }
    }
  }
  tc::cp_async_wait<0>();

  write_halves<F::NL, HalfNL, Rows>(d, scale, w, g0, half, lr, acc, row_max, row_sum, red, out, lse, part_o,
                                    part_lse);
}

// Wide: 8 warps, 64 query rows, 32-key tiles (152 KiB at 576/512). Narrow: 4 warps, 32 rows,
// 16-key tiles (75 KiB), for GPUs with 99 KiB per block.
template <int NL, int DR, bool Wide>
using TilesFor = Tiles<NL, DR, Wide ? 4 : 2, Wide ? 32 : 16>;

template <typename F>
LaunchInfo info_of() {
  LaunchInfo info{F::Rows, F::Threads, F::bytes, 0};
  allow_shared(latent_decode_tc_kernel<F>, F::bytes, "tensor-core latent decode");
  info.blocks_per_sm = max_blocks_per_sm(latent_decode_tc_kernel<F>, F::Threads, F::bytes);
  return info;
}

template <typename F>
void launch(const Dims& d, float scale, const Args<E>& a) {
  allow_shared(latent_decode_tc_kernel<F>, F::bytes, "tensor-core latent decode");
  launch_kernel("tensor-core latent decode", latent_decode_tc_kernel<F>, grid_of(d, a.split, F::Rows), F::Threads,
                F::bytes, nullptr, d, scale, a.split, a.q, a.cache, a.block_table, a.seq_lens, a.out, a.lse, a.part_o,
                a.part_lse);
}

// Calls f.template operator()<Wide tiles, Narrow tiles>() for the built (n_latent, rope_dim) pair.
template <typename F>
void with_tiles(int64_t nl, int64_t rope, F&& f) {
  if (nl == 512 && rope == 64) return f.template operator()<TilesFor<512, 64, true>, TilesFor<512, 64, false>>();
  if (nl == 32 && rope == 32) return f.template operator()<TilesFor<32, 32, true>, TilesFor<32, 32, false>>();
  if (nl == 32 && rope == 0) return f.template operator()<TilesFor<32, 0, true>, TilesFor<32, 0, false>>();
  FLASHGPT_CUDA_REQUIRE(false, "tensor-core latent decode: (n_latent, rope_dim) must be 512/64, 32/32 or 32/0 (got " +
                                   std::to_string(nl) + "/" + std::to_string(rope) + ")");
}

}  // namespace

bool tc_supports(int64_t nl, int64_t rope) {
  return (nl == 512 && rope == 64) || (nl == 32 && (rope == 32 || rope == 0));
}

size_t tc_shared_bytes(const Dims& d, bool wide) {
  size_t bytes = 0;
  with_tiles(d.nl, d.row - d.nl, [&]<typename W, typename N>() { bytes = wide ? W::bytes : N::bytes; });
  return bytes;
}

LaunchInfo tc_info(const Dims& d, bool wide) {
  LaunchInfo info;
  with_tiles(d.nl, d.row - d.nl, [&]<typename W, typename N>() { info = wide ? info_of<W>() : info_of<N>(); });
  return info;
}

void launch_tensor_cores(const Dims& d, float scale, const Args<E>& a, bool wide) {
  with_tiles(d.nl, d.row - d.nl, [&]<typename W, typename N>() {
    if (wide) {
      launch<W>(d, scale, a);
    } else {
      launch<N>(d, scale, a);
    }
  });
}

}  // namespace latent_decode
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
