// Flash decode (flash_decode_cuda.h): the split kernel, its plan and the entry point; the
// combine step is split_combine.h's.
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
#include "flashgpt/cuda/flash_decode_cuda.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>

#include "cuda/attention_mask_cuda.h"
#include "cuda/device_math.h"
#include "cuda/split_combine.h"
#include "cuda/tensor_core.h"
#include "flashgpt/cuda/device_memory.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

// Named, not anonymous: the public entry points' lambdas hold these types.
namespace flash_decode_kernels {

using attention_kernels::causal_offset;
using attention_kernels::Mask;
using attention_kernels::mask_of;
using attention_kernels::visible;

constexpr int kRows = static_cast<int>(kFlashDecodeRows);
constexpr int kKeys = 32;                     // keys per tile
constexpr int kSlices = 4;                    // lanes sharing one key's dot products
constexpr int kThreads = kKeys * kSlices;     // 128
constexpr int kWarps = kThreads / 32;
constexpr int kRowsPerWarp = kRows / kWarps;  // softmax rows per warp
constexpr int kAccFloats = 32;                // P·V accumulators per thread
constexpr int kMaxSplits = 128;

// A 16-byte chunk as it sits in shared memory.
struct alignas(16) Chunk {
  uint32_t w[4];
};

// Elements per chunk, and a chunk's values in fp32.
template <typename E>
constexpr int kChunk = 16 / static_cast<int>(sizeof(E));

__device__ __forceinline__ Chunk load_chunk(const void* p) {
#if defined(FLASHGPT_SIMT)
  Chunk c;
  std::memcpy(&c, p, sizeof c);  // the emulator's shared memory is bytes of every type
  return c;
#else
  return *static_cast<const Chunk*>(p);  // one 16-byte shared-memory load
#endif
}

__device__ __forceinline__ void unpack(const Chunk& c, float (&x)[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) x[i] = __uint_as_float(c.w[i]);
}
__device__ __forceinline__ void unpack(const Chunk& c, float (&x)[8]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    x[2 * i] = __uint_as_float(c.w[i] << 16);  // bf16 is fp32's upper half
    x[2 * i + 1] = __uint_as_float(c.w[i] & 0xffff0000u);
  }
}

struct Dims {
  int64_t B, Hq, Hkv, Tq, Tk, Dqk, Dv, kv_rows, q_row, k_row, v_row, group;
  int64_t rows;        // query rows per key/value head: Tq · group
  int qc, vc;          // 16-byte chunks of a key row and of a value row (the last zero-padded)
  int ks, vs;          // shared-memory row strides of the key and value tiles, in elements
  int groups;          // P·V key classes (a power of two dividing kKeys)
  int stages;          // tiles in flight
  int64_t stage_bytes, red_bytes;  // one stage's key and value tiles; the classes' sums
};

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

struct Out {
  void* o;         // E, [B, Tq, Hq, Dv]
  float* lse;      // [B, Hq, Tq]
  float* part_o;   // null with one split
  float* part_lse;
};

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

  // This sequence's visible keys [0, n) and this split's share [k0, k1), in whole tiles.
  int64_t n = d.Tk;
  if (m.kv_lengths) n = min(n, static_cast<int64_t>(m.kv_lengths[b]));
  if (m.causal) n = min(n, causal_offset(m, b) + d.Tq);
  n = max(n, int64_t{0});
  const int64_t tiles = (n + kKeys - 1) / kKeys, per = (tiles + splits - 1) / splits;
  const int64_t k0 = min(static_cast<int64_t>(split) * per * kKeys, n), k1 = min(k0 + per * kKeys, n);
  const int64_t ntiles = (k1 - k0 + kKeys - 1) / kKeys;

  // The queries, fp32, zeros past Dqk and past the block's rows.
  const int qw = d.qc * CE;
  for (int idx = t; idx < kRows * qw; idx += kThreads) {
    const int r = idx / qw, c = idx % qw;
    float x = 0.0f;
    if (r < nrows && c < d.Dqk) {
      const int64_t gr = row0 + r, tq = gr / d.group, hq = kvh * d.group + gr % d.group;
      x = to_f32(q[(b * d.Tq + tq) * d.q_row + hq * d.Dqk + c]);
    }
    Qs[idx] = x;
  }

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
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          if (r < nrows) {
            const float* qr = Qs + r * qw + c * CE;
#pragma unroll
            for (int h = 0; h < CE / 4; ++h) {
              float qx[4];
              unpack(load_chunk(qr + 4 * h), qx);
#pragma unroll
              for (int e = 0; e < 4; ++e) dot[r] += qx[e] * kx[4 * h + e];
            }
          }
        }
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
        const float s = Ss[r * kKeys + lane];
        const float m_new = fmaxf(m_run[i], warp_max(s));
        float p = 0.0f, a = 1.0f;
        if (m_new != -INFINITY) {
          p = s == -INFINITY ? 0.0f : expf(s - m_new);
          a = m_run[i] == -INFINITY ? 0.0f : expf(m_run[i] - m_new);
        }
        l_run[i] = l_run[i] * a + warp_sum(p);
        m_run[i] = m_new;
        Ss[r * kKeys + lane] = p;
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

  // This sequence's visible keys [0, n) and this split's share [k0, k1), in whole tiles (as the
  // tiles kernel cuts them).
  int64_t n = d.Tk;
  if (m.kv_lengths) n = min(n, static_cast<int64_t>(m.kv_lengths[b]));
  if (m.causal) n = min(n, causal_offset(m, b) + d.Tq);
  n = max(n, int64_t{0});
  const int64_t tiles = (n + kKeys - 1) / kKeys, per = (tiles + splits - 1) / splits;
  const int64_t k0 = min(static_cast<int64_t>(split) * per * kKeys, n), k1 = min(k0 + per * kKeys, n);
  const int64_t ntiles = (k1 - k0 + kKeys - 1) / kKeys;

  const int qw = d.qc * CE;
  for (int idx = t; idx < R * qw; idx += kWarpThreads) {
    const int r = idx / qw, c = idx % qw;
    float x = 0.0f;
    if (r < nrows) {
      const int64_t gr = row0 + r, tq = gr / d.group, hq = kvh * d.group + gr % d.group;
      x = to_f32(q[(b * d.Tq + tq) * d.q_row + hq * d.Dqk + c]);
    }
    Qs[idx] = x;
  }
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
#pragma unroll
          for (int r = 0; r < R; ++r) {
            if (r < nrows) {
              const float* qr = Qs + r * qw + (c0 + u) * CE;
#pragma unroll
              for (int h = 0; h < CE / 4; ++h) {
                float qx[4];
                unpack(load_chunk(qr + 4 * h), qx);
#pragma unroll
                for (int e = 0; e < 4; ++e) dot[r] += qx[e] * kx[4 * h + e];
              }
            }
          }
        }
      }
    }
    __syncwarp();  // the previous tile's probabilities are read
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (r < nrows) {
        const float s = valid && visible(m, d.Tq, d.kv_rows, b, tq_of[r], j) ? dot[r] * scale : -INFINITY;
        const float m_new = fmaxf(m_run[r], warp_max(s));
        float p = 0.0f, a = 1.0f;
        if (m_new != -INFINITY) {
          p = s == -INFINITY ? 0.0f : expf(s - m_new);
          a = m_run[r] == -INFINITY ? 0.0f : expf(m_run[r] - m_new);
        }
        l_run[r] = l_run[r] * a + warp_sum(p);
        m_run[r] = m_new;
        Ps[r * kKeys + lane] = p;
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

#if defined(FLASHGPT_SIMT)
// The emulator checks that a kernel's outputs point at device memory.
std::array<const void*, 4> kernel_pointers(const Out& o) { return {o.o, o.lse, o.part_o, o.part_lse}; }
#endif

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename E>
Dims dims_of(const AttentionDims& a, int stages) {
  constexpr int CE = kChunk<E>;
  Dims d{};
  d.B = a.B, d.Hq = a.Hq, d.Hkv = a.Hkv, d.Tq = a.Tq, d.Tk = a.Tk, d.Dqk = a.Dqk, d.Dv = a.Dv;
  d.kv_rows = a.kv_rows(), d.q_row = a.q_row(), d.k_row = a.k_row(), d.v_row = a.v_row(), d.group = a.Hq / a.Hkv;
  d.rows = a.Tq * d.group;
  d.qc = static_cast<int>((a.Dqk + CE - 1) / CE);
  d.vc = static_cast<int>((a.Dv + CE - 1) / CE);
  d.ks = (d.qc + 1) * CE;  // one spare chunk: consecutive keys start four banks apart
  d.vs = (d.vc + 1) * CE;
  // Key classes: as many as leave every thread some output chunks, at most one key each.
  const int64_t items = std::min<int64_t>(kRows, d.rows) * d.vc;
  d.groups = 1;
  while (d.groups < kKeys && items * d.groups * 2 <= kThreads) d.groups *= 2;
  d.stages = stages;
  d.stage_bytes = static_cast<int64_t>(kKeys) * (d.ks + d.vs) * static_cast<int64_t>(sizeof(E));
  d.red_bytes = d.groups > 1 ? static_cast<int64_t>(sizeof(float)) * d.groups * items * CE : 0;
  return d;
}

template <typename E, typename F>
void with_kernel(FlashDecodeKernel kernel, bool async, F&& f) {
  if (kernel == FlashDecodeKernel::Warps) return f(warps_kernel<E>, kWarpThreads);
  if (async) return f(split_kernel<E, true>, kThreads);
  return f(split_kernel<E, false>, kThreads);
}

int shared_limit() {
  int device = 0, limit = 0;
  FLASHGPT_CUDA_CHECK(cudaGetDevice(&device));
  FLASHGPT_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return limit;
}

void check_dims(const AttentionDims& d) {
  FLASHGPT_CUDA_REQUIRE(d.B > 0 && d.Hq > 0 && d.Hkv > 0 && d.Tq > 0 && d.Tk >= 0,
                        "flash decode: B, Hq, Hkv and Tq must be positive and Tk not negative");
  FLASHGPT_CUDA_REQUIRE(d.Hq % d.Hkv == 0, "flash decode: Hq (" + std::to_string(d.Hq) +
                                               ") must be a multiple of Hkv (" + std::to_string(d.Hkv) + ")");
  FLASHGPT_CUDA_REQUIRE(flash_decode_supports(d.Dqk, d.Dv),
                        "flash decode: head dims must be 1…" + std::to_string(kFlashDecodeMaxHeadDim) + " (got Dqk " +
                            std::to_string(d.Dqk) + ", Dv " + std::to_string(d.Dv) + ")");
  FLASHGPT_CUDA_REQUIRE(d.B * d.Hkv <= 0x7fffffffLL, "flash decode: B·Hkv must be below 2³¹");
  FLASHGPT_CUDA_REQUIRE((d.Tq * (d.Hq / d.Hkv) + kRows - 1) / kRows <= 65535,
                        "flash decode: at most 65535·16 query rows per key/value head");
}

}  // namespace flash_decode_kernels

using namespace flash_decode_kernels;

const char* flash_decode_kernel_name(FlashDecodeKernel k) {
  switch (k) {
    case FlashDecodeKernel::Auto: return "auto";
    case FlashDecodeKernel::Tiles: return "tiles";
    case FlashDecodeKernel::Warps: return "warps";
  }
  return "?";
}

template <typename T>
bool flash_decode_warps_run(const AttentionDims& d, const T* k, const T* v) {
  return warps_kernel_runs<device_t<T>>(d, k, v);
}

bool flash_decode_supports(int64_t Dqk, int64_t Dv) {
  return Dqk > 0 && Dv > 0 && Dqk <= kFlashDecodeMaxHeadDim && Dv <= kFlashDecodeMaxHeadDim;
}

int choose_flash_decode_splits(int64_t blocks, int64_t tiles, int64_t slots) {
  FLASHGPT_CUDA_REQUIRE(blocks > 0 && tiles > 0 && slots > 0, "flash decode: blocks, tiles and slots must be positive");
  // A split costs about two tiles (its queries, its partial row) and the combine about four.
  return split_kv::choose(blocks, tiles, slots, kMaxSplits, 2, 4);
}

template <typename T>
FlashDecodePlan plan_flash_decode(const AttentionDims& ad, const FlashDecodeOptions& opt, const T* q, const T* k,
                                  const T* v) {
  check_dims(ad);
  using E = device_t<T>;
  constexpr int CE = kChunk<E>;
  FlashDecodePlan plan;
  plan.key_tile = kKeys;
  const int limit = shared_limit();
  const bool warps = opt.kernel == FlashDecodeKernel::Warps;
  Dims d{};
  if (warps) {
    FLASHGPT_CUDA_REQUIRE(warps_kernel_runs<E>(ad, k, v),
                          "flash decode: the warps kernel needs key and value rows of whole 16-byte chunks, 16-byte "
                          "aligned, and a value row of 1, 2, 4, 8, 16 or 32 chunks (Dqk " + std::to_string(ad.Dqk) +
                              ", Dv " + std::to_string(ad.Dv) + ", k row " + std::to_string(ad.k_row()) + ", v row " +
                              std::to_string(ad.v_row()) + ")");
    plan.kernel = FlashDecodeKernel::Warps;
    plan.rows_per_block = kWarpRows;
    plan.stages = 0;
    plan.async_copies = false;
    d = dims_of<E>(ad, 0);
    plan.shared_bytes = static_cast<size_t>(warp_layout_of<E>(d).total);
    FLASHGPT_CUDA_REQUIRE((ad.Tq * (ad.Hq / ad.Hkv) + kWarpRows - 1) / kWarpRows <= 65535,
                          "flash decode: the warps kernel takes at most 65535·4 query rows per key/value head");
  } else {
    plan.kernel = FlashDecodeKernel::Tiles;
    plan.async_copies = ad.Dqk % CE == 0 && ad.Dv % CE == 0 && ad.k_row() % CE == 0 && ad.v_row() % CE == 0 &&
                        aligned16(k) && aligned16(v);
    // Two stages where the GPU gives a block the shared memory, else one.
    d = dims_of<E>(ad, 2);
    if (layout_of<E>(d).total > limit) d = dims_of<E>(ad, 1);
    plan.stages = d.stages;
    plan.shared_bytes = static_cast<size_t>(layout_of<E>(d).total);
  }
  (void)q;
  FLASHGPT_CUDA_REQUIRE(plan.shared_bytes <= static_cast<size_t>(limit),
                        "flash decode: needs " + std::to_string(plan.shared_bytes) +
                            " bytes of shared memory per block, the GPU allows " + std::to_string(limit));
  // Blocks per SM, asked of the runtime once per kernel and size on each device (every decoding
  // step plans).
  static std::mutex mutex;
  static std::map<std::tuple<int, bool, int, size_t>, std::pair<int, int>> known;  // → (blocks per SM, SMs)
  int device = 0;
  FLASHGPT_CUDA_CHECK(cudaGetDevice(&device));
  const int variant = warps ? 2 : plan.async_copies ? 1 : 0;
  const auto key = std::make_tuple(device, std::is_same_v<T, bf16>, variant, plan.shared_bytes);
  std::pair<int, int> occ;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    auto it = known.find(key);
    if (it == known.end()) {
      int sms = 0;
      FLASHGPT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
      int bps = 0;
      with_kernel<E>(plan.kernel, plan.async_copies, [&](auto kernel, int threads) {
        allow_shared(kernel, plan.shared_bytes, "flash decode");
        bps = max_blocks_per_sm(kernel, threads, plan.shared_bytes);
      });
      it = known.emplace(key, std::make_pair(bps, sms)).first;
    }
    occ = it->second;
  }
  plan.blocks_per_sm = occ.first;
  const int64_t blocks = ad.B * ad.Hkv * ((d.rows + plan.rows_per_block - 1) / plan.rows_per_block);
  const int64_t tiles = std::max<int64_t>(1, (ad.Tk + kKeys - 1) / kKeys);
  // The warps kernel's block takes kWarpsPerBlock tiles a step.
  const int64_t steps = warps ? (tiles + kWarpsPerBlock - 1) / kWarpsPerBlock : tiles;
  const int automatic =
      choose_flash_decode_splits(blocks, steps, static_cast<int64_t>(occ.second) * std::max(1, occ.first));
  plan.beats_flash_kernel = d.rows >= 2 || automatic >= kFlashDecodeWinningSplits;
  if (opt.splits > 0) {
    FLASHGPT_CUDA_REQUIRE(opt.splits <= 65535, "flash decode: at most 65535 splits");
    plan.splits = opt.splits;
  } else {
    plan.splits = automatic;
  }
  plan.workspace_bytes = split_kv::workspace_bytes(ad.B * ad.Tq * ad.Hq, ad.Dv, plan.splits);
  return plan;
}

template <typename T>
void flash_decode(const AttentionDims& ad, const AttentionMask& am, float scale, const T* q, const T* k, const T* v,
                  T* o, float* lse, const FlashDecodeOptions& opt) {
  check_attention_dims(ad, am, MaskMemory::Device);
  const FlashDecodePlan plan = plan_flash_decode<T>(ad, opt, q, k, v);
  using E = device_t<T>;
  const Dims d = dims_of<E>(ad, plan.stages);
  const int64_t row_blocks = (d.rows + plan.rows_per_block - 1) / plan.rows_per_block;
  std::unique_ptr<DeviceBuffer> own;
  void* ws = opt.workspace;
  if (plan.splits > 1 && !ws) {
    own = std::make_unique<DeviceBuffer>(plan.workspace_bytes);
    ws = own->get();
  }
  const split_kv::Partials part = split_kv::partials(ws, ad.B * ad.Tq * ad.Hq, ad.Dv, plan.splits);
  const Out out{o, lse, part.o, part.lse};
  const dim3 grid(static_cast<unsigned>(ad.B * ad.Hkv), static_cast<unsigned>(plan.splits),
                  static_cast<unsigned>(row_blocks));
  with_kernel<E>(plan.kernel, plan.async_copies, [&](auto kernel, int threads) {
    allow_shared(kernel, plan.shared_bytes, "flash decode");
    launch_kernel(plan.kernel == FlashDecodeKernel::Warps ? "flash decode (warps)" : "flash decode", kernel, grid,
                  threads, plan.shared_bytes, nullptr, d, mask_of(am), scale, plan.splits, dev(q), dev(k), dev(v),
                  out);
  });
  if (plan.splits > 1) {
    split_kv::launch_combine<E>("flash decode combine", ad.B, ad.Tq, ad.Hq, ad.Dv, plan.splits, part.o, part.lse,
                                dev(o), lse);
  }
  if (own) synchronize();  // the scratch is freed on return
}

template bool flash_decode_warps_run<float>(const AttentionDims&, const float*, const float*);
template bool flash_decode_warps_run<bf16>(const AttentionDims&, const bf16*, const bf16*);
template FlashDecodePlan plan_flash_decode<float>(const AttentionDims&, const FlashDecodeOptions&, const float*,
                                                  const float*, const float*);
template FlashDecodePlan plan_flash_decode<bf16>(const AttentionDims&, const FlashDecodeOptions&, const bf16*,
                                                 const bf16*, const bf16*);
template void flash_decode<float>(const AttentionDims&, const AttentionMask&, float, const float*, const float*,
                                  const float*, float*, float*, const FlashDecodeOptions&);
template void flash_decode<bf16>(const AttentionDims&, const AttentionMask&, float, const bf16*, const bf16*,
                                 const bf16*, bf16*, float*, const FlashDecodeOptions&);

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
