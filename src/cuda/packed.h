// Wide loads and stores for the memory-bound kernels (elementwise ops, norms, the loss, AdamW): a
// thread moves 16 bytes at a time (8 bf16 or 4 floats) in one instruction instead of 2 or 4 bytes,
// so far fewer instructions keep the memory system busy. A kernel takes the packed path only where
// its host side has checked, with packable(), that every pointer is 16-byte aligned and the
// length (or row width) is a whole number of packs; otherwise it runs one element per step.
#pragma once

#include <cstdint>
#include <cstring>
#include <initializer_list>

#include "cuda/device_math.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace packed_detail {
template <int Bytes>
struct Word;
template <>
struct Word<2> {
  using type = unsigned short;
};
template <>
struct Word<4> {
  using type = unsigned;
};
template <>
struct Word<8> {
  using type = uint2;
};
template <>
struct Word<16> {
  using type = uint4;
};
}  // namespace packed_detail

// N elements of T read or written as one aligned word of N·sizeof(T) bytes (2 to 16).
template <typename T, int N = static_cast<int>(16 / sizeof(T))>
struct Packed {
  static constexpr int kSize = N;
  using Word = typename packed_detail::Word<static_cast<int>(N * sizeof(T))>::type;
  T v[N];

  __device__ __forceinline__ static Packed load(const T* p) {
    const Word w = *reinterpret_cast<const Word*>(p);
    Packed r;
    std::memcpy(static_cast<void*>(r.v), &w, sizeof w);
    return r;
  }
  __device__ __forceinline__ void store(T* p) const {
    Word w;
    std::memcpy(&w, static_cast<const void*>(v), sizeof w);
    *reinterpret_cast<Word*>(p) = w;
  }
  __device__ __forceinline__ float get(int i) const { return to_f32(v[i]); }
  __device__ __forceinline__ void set(int i, float x) { v[i] = from_f32<T>(x); }
};

// Elements of T in one 16-byte pack.
template <typename T>
constexpr int64_t pack_size() {
  return static_cast<int64_t>(16 / sizeof(T));
}

// Whether n elements of T (a length, or a row width) split into whole 16-byte packs at every
// pointer given (null pointers, the optional operands, are ignored).
template <typename T>
bool packable(int64_t n, std::initializer_list<const void*> pointers) {
  if (n % pack_size<T>() != 0) return false;
  for (const void* p : pointers) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  }
  return true;
}

// The body of an elementwise kernel over a grid-stride loop: out[i] = op(a[i]) (Inputs 1) or
// op(a[i], b[i]) (Inputs 2), in fp32 arithmetic, for i < n. `packed` (from packable) moves whole
// packs; the elements past the last whole pack, or all of them unpacked, go one at a time. out may
// be a (in place): each element is read before it is written, by the same thread.
template <typename T, int Inputs, typename Op>
__device__ __forceinline__ void map_elements(T* out, const T* a, const T* b, int64_t n, bool packed, Op op) {
  using P = Packed<T>;
  constexpr int64_t K = P::kSize;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
                stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t packs = packed ? n / K : 0;
  for (int64_t p = first; p < packs; p += stride) {
    const P x = P::load(a + p * K);
    P y;
    if constexpr (Inputs == 2) {
      const P z = P::load(b + p * K);
      for (int j = 0; j < K; ++j) y.set(j, op(x.get(j), z.get(j)));
    } else {
      for (int j = 0; j < K; ++j) y.set(j, op(x.get(j)));
    }
    y.store(out + p * K);
  }
  for (int64_t i = packs * K + first; i < n; i += stride) {
    if constexpr (Inputs == 2) {
      out[i] = from_f32<T>(op(to_f32(a[i]), to_f32(b[i])));
    } else {
      out[i] = from_f32<T>(op(to_f32(a[i])));
    }
  }
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
