// Flash decode's kernels (flash_decode_cuda.h): what the split kernels share — the key tile,
// 16-byte chunks and their fp32 values, the problem's sizes as the kernels take them, and where
// the outputs go (the combine step is split_combine.h's). The kernels: flash_decode_tiles.h and
// flash_decode_warps.h; the plan and the entry point: flash_decode_cuda.cu.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>

#include "cuda/attention_mask_cuda.h"
#include "cuda/device_math.h"
#include "flashgpt/cuda/flash_decode_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
// Named, not anonymous: the public entry points' lambdas hold these types.
namespace flash_decode_kernels {

using attention_kernels::causal_offset;
using attention_kernels::Mask;
using attention_kernels::mask_of;
using attention_kernels::visible;

constexpr int kKeys = 32;                     // keys per tile
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

// Sequence b's visible keys [0, n), and split `split`'s share [k0, k1) of them in whole tiles of
// kKeys (ntiles of them): both kernels cut the keys the same way.
struct KeyRange {
  int64_t k0, k1, ntiles;
};
__device__ __forceinline__ KeyRange split_keys(const Dims& d, const Mask& m, int64_t b, int split, int splits) {
  int64_t n = d.Tk;
  if (m.kv_lengths) n = min(n, static_cast<int64_t>(m.kv_lengths[b]));
  if (m.causal) n = min(n, causal_offset(m, b) + d.Tq);
  n = max(n, int64_t{0});
  const int64_t tiles = (n + kKeys - 1) / kKeys, per = (tiles + splits - 1) / splits;
  const int64_t k0 = min(static_cast<int64_t>(split) * per * kKeys, n), k1 = min(k0 + per * kKeys, n);
  return {k0, k1, (k1 - k0 + kKeys - 1) / kKeys};
}

// The block's query rows row0 … row0 + Rows − 1 of key/value head kvh (nrows of them real) into
// Qs [Rows][qc·chunk] as fp32, zeros past Dqk and past the real rows; `threads` threads, this one t.
template <int Rows, typename E>
__device__ __forceinline__ void load_queries(float* Qs, const E* q, const Dims& d, int64_t b, int64_t kvh,
                                             int64_t row0, int nrows, int t, int threads) {
  const int qw = d.qc * kChunk<E>;
  for (int idx = t; idx < Rows * qw; idx += threads) {
    const int r = idx / qw, c = idx % qw;
    float x = 0.0f;
    if (r < nrows && c < d.Dqk) {
      const int64_t gr = row0 + r, tq = gr / d.group, hq = kvh * d.group + gr % d.group;
      x = to_f32(q[(b * d.Tq + tq) * d.q_row + hq * d.Dqk + c]);
    }
    Qs[idx] = x;
  }
}

// dot[r] += query row r's chunk c · kx (a key's chunk c in fp32), for the block's nrows real
// rows; the queries are fp32 rows of qw in shared memory, read as 16-byte pieces.
template <int Rows, int CE>
__device__ __forceinline__ void add_chunk_dots(float (&dot)[Rows], const float* Qs, int qw, int c,
                                               const float (&kx)[CE], int nrows) {
#pragma unroll
  for (int r = 0; r < Rows; ++r) {
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

// One online-softmax step of a row over a tile, a lane per key: s is this lane's score (−∞ when
// masked); m_run and l_run, the row's running max and sum, move on; returns this lane's
// probability, and in `a` the factor that rescales what was summed before.
__device__ __forceinline__ float softmax_step(float s, float& m_run, float& l_run, float& a) {
  const float m_new = fmaxf(m_run, warp_max(s));
  float p = 0.0f;
  a = 1.0f;
  if (m_new != -INFINITY) {
    p = s == -INFINITY ? 0.0f : expf(s - m_new);
    a = m_run == -INFINITY ? 0.0f : expf(m_run - m_new);
  }
  l_run = l_run * a + warp_sum(p);
  m_run = m_new;
  return p;
}

struct Out {
  void* o;         // E, [B, Tq, Hq, Dv]
  float* lse;      // [B, Hq, Tq]
  float* part_o;   // null with one split
  float* part_lse;
};

#if defined(FLASHGPT_SIMT)
// The emulator checks that a kernel's outputs point at device memory.
inline std::array<const void*, 4> kernel_pointers(const Out& o) { return {o.o, o.lse, o.part_o, o.part_lse}; }
#endif

}  // namespace flash_decode_kernels
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
