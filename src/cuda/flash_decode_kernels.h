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
