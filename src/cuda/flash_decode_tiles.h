// Flash decode's tiles kernel (FlashDecodeKernel::Tiles).
//
// A block of 128 threads holds up to 16 query rows that read one key/value head — rows r of the
// head's group flattened as token·group + head-in-group — and one split of that sequence's
// visible keys, 32 keys a tile:
//   tiles  — the keys' and values' rows, 16-byte chunks by cp.async into shared memory in two
//            stages, the next tile loading while this one is used (one stage when shared memory
//            is short); rows padded by 16 bytes so the eight
//            lanes of a quarter-warp, each on its own key, hit different banks;
//   scores — four lanes per key, each a quarter of the key's chunks against every row's query
//            (fp32 in shared memory), summed by two shuffles;
//   softmax — a warp per row, a lane per key: the tile's max, the rescale factor and the
//            probabilities, the running max and sum kept in the warp's registers;
//   P·V    — each thread owns 16-byte chunks of some rows' outputs in registers for one residue
//            class of the tile's keys (more classes when the rows are few, so every thread has
//            work); the classes are summed once, after the last tile.
// The products are fp32 on the CUDA cores: decoding does a few flops per cached byte, so the
// cache's bandwidth sets the pace.
#pragma once

#include "cuda/flash_decode_kernels.h"
#include "cuda/tensor_core.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace flash_decode_kernels {

constexpr int kRows = static_cast<int>(kFlashDecodeRows);
constexpr int kSlices = 4;                    // lanes sharing one key's dot products
constexpr int kThreads = kKeys * kSlices;     // 128
constexpr int kWarps = kThreads / 32;
constexpr int kRowsPerWarp = kRows / kWarps;  // softmax rows per warp
constexpr int kAccFloats = 32;                // P·V accumulators per thread

// The shared memory: queries [kRows][qc·chunk] fp32, scores [kRows][kKeys], the rows' rescale
// factors, maxima and sums, then the stages (reused for the classes' sums after the last tile).
struct Layout {
  int64_t q, s, alpha, m, l, stages, total;
};
template <typename E>
__host__ __device__ Layout layout_of(const Dims& d) {
  Layout a{};
  a.q = 0;
  a.s = a.q + sizeof(float) * kRows * d.qc * kChunk<E>;
  a.alpha = a.s + sizeof(float) * kRows * kKeys;
  a.m = a.alpha + sizeof(float) * kRows;
  a.l = a.m + sizeof(float) * kRows;
  a.stages = (a.l + sizeof(float) * kRows + 127) / 128 * 128;
  const int64_t st = d.stages * d.stage_bytes;
  a.total = a.stages + (st > d.red_bytes ? st : d.red_bytes);
  return a;
}

template <typename E, bool kAsync>
__global__ void __launch_bounds__(kThreads)
    split_kernel(Dims d, Mask m, float scale, int splits, const E* __restrict__ q, const E* __restrict__ k,
                 const E* __restrict__ v, Out out) {
  constexpr int CE = kChunk<E>;
  constexpr int kItems = kAccFloats / CE;  // output chunks a thread may own
  FLASHGPT_DYNAMIC_SHARED(unsigned char, sm);
  const Layout lay = layout_of<E>(d);
  float* Qs = reinterpret_cast<float*>(sm + lay.q);
  float* Ss = reinterpret_cast<float*>(sm + lay.s);
  float* alpha_s = reinterpret_cast<float*>(sm + lay.alpha);
  float* m_s = reinterpret_cast<float*>(sm + lay.m);
  float* l_s = reinterpret_cast<float*>(sm + lay.l);
  unsigned char* stage_base = sm + lay.stages;

  const int64_t bh = blockIdx.x, b = bh / d.Hkv, kvh = bh % d.Hkv;
  const int split = static_cast<int>(blockIdx.y);
  const int64_t row0 = static_cast<int64_t>(blockIdx.z) * kRows;
  const int nrows = static_cast<int>(d.rows - row0 < kRows ? d.rows - row0 : kRows);
  const int t = static_cast<int>(threadIdx.x), lane = t % 32, warp = t / 32;

  const KeyRange keys = split_keys(d, m, b, split, splits);
  const int64_t k0 = keys.k0, k1 = keys.k1, ntiles = keys.ntiles;
  const int qw = d.qc * CE;
  load_queries<kRows>(Qs, q, d, b, kvh, row0, nrows, t, kThreads);

  const E* kbase = k + b * d.kv_rows * d.k_row + kvh * d.Dqk;
  const E* vbase = v + b * d.kv_rows * d.v_row + kvh * d.Dv;
  auto tile_k = [&](int st) { return reinterpret_cast<E*>(stage_base + st * d.stage_bytes); };
  auto tile_v = [&](int st) { return tile_k(st) + kKeys * d.ks; };
  // Stages keys and values [j0, j0 + kKeys) into stage st; keys at or past k1 are zeros.
  auto load_tile = [&](int64_t j0, int st) {
    E* kt = tile_k(st);
    E* vt = tile_v(st);
    for (int idx = t; idx < kKeys * (d.qc + d.vc); idx += kThreads) {
      const bool is_k = idx < kKeys * d.qc;
      const int i = is_k ? idx : idx - kKeys * d.qc, w = is_k ? d.qc : d.vc;
      const int key = i / w, c = i % w;
      const int64_t j = j0 + key;
      const bool valid = j < k1;
      const E* src = (is_k ? kbase + (valid ? j : 0) * d.k_row : vbase + (valid ? j : 0) * d.v_row) + c * CE;
      E* dst = (is_k ? kt + key * d.ks : vt + key * d.vs) + c * CE;
      if constexpr (kAsync) {
        tc::cp_async_16(dst, src, valid);
      } else {
        const int64_t width = is_k ? d.Dqk : d.Dv;
#pragma unroll
        for (int e = 0; e < CE; ++e) dst[e] = valid && c * CE + e < width ? src[e] : from_f32<E>(0.0f);
      }
    }
  };

  // Scores: lane (key, slice); its slice of the key's chunks.
  const int skey = warp * 8 + (lane & 7), slice = lane >> 3;
  const int per_slice = (d.qc + kSlices - 1) / kSlices;
  const int c_begin = slice * per_slice, c_end = min(d.qc, c_begin + per_slice);
  // P·V: this thread's key class and output chunks (row, chunk) = item / vc, item % vc.
  const int per_class = kThreads / d.groups, cls = t / per_class, item0 = t % per_class;
  const int items = nrows * d.vc;
  float acc[kItems][CE];
#pragma unroll
  for (int i = 0; i < kItems; ++i)
#pragma unroll
    for (int e = 0; e < CE; ++e) acc[i][e] = 0.0f;
  // The softmax rows of this warp: warp + kWarps·i.
  float m_run[kRowsPerWarp], l_run[kRowsPerWarp];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    m_run[i] = -INFINITY;
    l_run[i] = 0.0f;
  }

  if (ntiles > 0) {
    load_tile(k0, 0);
    tc::cp_async_commit();
  }
  for (int64_t ti = 0; ti < ntiles; ++ti) {
    const int64_t j0 = k0 + ti * kKeys;
    int st = 0;
    if (d.stages == 2) {
      st = static_cast<int>(ti & 1);
      if (ti + 1 < ntiles) {
        load_tile(j0 + kKeys, st ^ 1);  // its stage was last read before the previous tile's barrier
        tc::cp_async_commit();
        tc::cp_async_wait<1>();
      } else {
        tc::cp_async_wait<0>();
      }
    } else {
      if (ti > 0) {
        load_tile(j0, 0);
        tc::cp_async_commit();
      }
      tc::cp_async_wait<0>();
    }
    __syncthreads();  // the tile (and, the first time, the queries) is in shared memory
    const E* kt = tile_k(st);
    const E* vt = tile_v(st);

    {  // scores
      float dot[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) dot[r] = 0.0f;
      for (int c = c_begin; c < c_end; ++c) {
        float kx[CE];
        unpack(load_chunk(kt + skey * d.ks + c * CE), kx);
        add_chunk_dots(dot, Qs, qw, c, kx, nrows);
      }
      const int64_t j = j0 + skey;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (r < nrows) {
          float s = dot[r];
          s += __shfl_xor_sync(0xffffffffu, s, 8);
          s += __shfl_xor_sync(0xffffffffu, s, 16);
          if (slice == 0) {
            const int64_t tq = (row0 + r) / d.group;
            Ss[r * kKeys + skey] = j < k1 && visible(m, d.Tq, d.kv_rows, b, tq, j) ? s * scale : -INFINITY;
          }
        }
      }
    }
    __syncthreads();

#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {  // softmax: this warp's rows, a lane per key
      const int r = warp + kWarps * i;
      if (r < nrows) {
        float a;
        Ss[r * kKeys + lane] = softmax_step(Ss[r * kKeys + lane], m_run[i], l_run[i], a);
        if (lane == 0) alpha_s[r] = a;
      }
    }
    __syncthreads();

#pragma unroll
    for (int i = 0; i < kItems; ++i) {  // P·V: this thread's chunks over its class of keys
      const int item = item0 + i * per_class;
      if (item < items) {
        const int r = item / d.vc, cv = item % d.vc;
        const float a = alpha_s[r];
#pragma unroll
        for (int e = 0; e < CE; ++e) acc[i][e] *= a;
        for (int kk = cls; kk < kKeys; kk += d.groups) {
          const float p = Ss[r * kKeys + kk];
          if (p != 0.0f) {
            float vx[CE];
            unpack(load_chunk(vt + kk * d.vs + cv * CE), vx);
#pragma unroll
            for (int e = 0; e < CE; ++e) acc[i][e] += p * vx[e];
          }
        }
      }
    }
    __syncthreads();  // the stage and the scores are free for the next tile
  }

  // Every row's max and sum; the classes' partial outputs summed through shared memory.
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int r = warp + kWarps * i;
    if (r < nrows && lane == 0) {
      m_s[r] = m_run[i];
      l_s[r] = l_run[i];
    }
  }
  float* red = reinterpret_cast<float*>(stage_base);  // [groups][items][CE]
  if (d.groups > 1) {
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int item = item0 + i * per_class;
      if (item < items && cls > 0) {
#pragma unroll
        for (int e = 0; e < CE; ++e) red[(static_cast<int64_t>(cls) * items + item) * CE + e] = acc[i][e];
      }
    }
  }
  __syncthreads();
  if (cls > 0) return;
  const int64_t out_rows = d.B * d.Tq * d.Hq;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int item = item0 + i * per_class;
    if (item >= items) continue;
    const int r = item / d.vc, cv = item % d.vc;
    for (int g = 1; g < d.groups; ++g)
#pragma unroll
      for (int e = 0; e < CE; ++e) acc[i][e] += red[(static_cast<int64_t>(g) * items + item) * CE + e];
    const float l = l_s[r], inv = l > 0.0f ? 1.0f / l : 0.0f;
    const float row_lse = l > 0.0f ? m_s[r] + logf(l) : -INFINITY;
    const int64_t gr = row0 + r, tq = gr / d.group, hq = kvh * d.group + gr % d.group;
    const int64_t orow = (b * d.Tq + tq) * d.Hq + hq;  // [B, Tq, Hq]
    if (splits == 1) {
      E* o = static_cast<E*>(out.o) + orow * d.Dv;
#pragma unroll
      for (int e = 0; e < CE; ++e)
        if (cv * CE + e < d.Dv) o[cv * CE + e] = from_f32<E>(acc[i][e] * inv);
      if (cv == 0) out.lse[(b * d.Hq + hq) * d.Tq + tq] = row_lse;
    } else {
      float* po = out.part_o + (split * out_rows + orow) * d.Dv;
#pragma unroll
      for (int e = 0; e < CE; ++e)
        if (cv * CE + e < d.Dv) po[cv * CE + e] = acc[i][e] * inv;
      if (cv == 0) out.part_lse[split * out_rows + orow] = row_lse;
    }
  }
}

}  // namespace flash_decode_kernels
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
