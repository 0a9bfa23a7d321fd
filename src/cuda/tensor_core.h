// The Ampere-and-newer warp-level instructions the flash kernels are built from, one spelling for
// nvcc (inline PTX) and one for the emulated build (simt::, the same PTX ISA layouts as warp
// collectives):
//   mma_16816<E>  — D = A·B + C on the tensor cores, A 16×16 and B 16×8 in bf16 or fp16 (two
//                   elements per 32-bit register, the lower index in the low half), C, D fp32.
//                   Fragments, with g = lane / 4 and t = lane % 4:
//                     A: a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//                     B: b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//                     C: c0, c1 = C[g][2t..2t+1], c2, c3 = C[g+8][2t..2t+1]
//   ldmatrix_x4 / _x2 (and _trans) — 8×8 matrices of 16-bit elements from shared memory; lane
//                   8i + r gives the address of row r of matrix i; register i receives matrix i's
//                   (g, 2t..2t+1) pair, or (2t..2t+1, g) transposed.
//   cp_async_16   — a 16-byte global → shared copy that does not stall the thread; bytes past
//                   `valid` (0 or 16) are zero-filled. cp_async_commit closes a group and
//                   cp_async_wait<N> waits until at most N groups are still in flight.
#pragma once

#include <cstdint>
#include <cstring>

#include "cuda/platform.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace tc {

// Two floats as one register of two 16-bit elements of E (a in the low half).
template <typename E>
__device__ __forceinline__ uint32_t pack2(float a, float b);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float a, float b) {
  const __nv_bfloat16 lo = __float2bfloat16(a), hi = __float2bfloat16(b);
  uint16_t l, h;
  memcpy(&l, &lo, 2);
  memcpy(&h, &hi, 2);
  return static_cast<uint32_t>(l) | static_cast<uint32_t>(h) << 16;
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float a, float b) {
  const __half lo = __float2half_rn(a), hi = __float2half_rn(b);
  uint16_t l, h;
  memcpy(&l, &lo, 2);
  memcpy(&h, &hi, 2);
  return static_cast<uint32_t>(l) | static_cast<uint32_t>(h) << 16;
}

template <typename E>
__device__ __forceinline__ float to_float(E x);
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <>
__device__ __forceinline__ float to_float<__half>(__half x) {
  return __half2float(x);
}

template <typename E>
__device__ __forceinline__ E from_float(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}

#if defined(FLASHGPT_SIMT)

template <typename E>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  constexpr auto type = std::is_same_v<E, __half> ? simt::MmaType::f16 : simt::MmaType::bf16;
  const float c[4] = {d[0], d[1], d[2], d[3]};
  simt::mma_m16n8k16(type, d, a, b, c);
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) { simt::ldmatrix(4, false, r, row); }
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  simt::ldmatrix(4, true, r, row);
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* row) { simt::ldmatrix(2, false, r, row); }
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row) {
  simt::ldmatrix(2, true, r, row);
}
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  simt::cp_async(dst, src, 16, valid ? 16 : 0);
}
__device__ __forceinline__ void cp_async_commit() { simt::cp_async_commit(); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  simt::cp_async_wait(N);
}

#else

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

template <typename E>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<E, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#else
  __trap();  // built for an architecture before Ampere: the host side refuses to launch
#endif
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(shared_address(row)));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(shared_address(row)));
}

__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src),
               "r"(valid ? 16 : 0));
#else
  __trap();
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

#endif

}  // namespace tc
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
