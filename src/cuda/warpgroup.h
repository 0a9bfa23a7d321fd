// Hopper's warpgroup-level tensor-core instructions (sm_90a), one spelling for nvcc (inline PTX)
// and one for the emulated build (simt::, which reads descriptors and fragments as the PTX ISA
// lays them out):
//   mma_ss<E, N, TransB, TransA = false>(d, a_desc, b_desc, accumulate)
//       wgmma.mma_async m64nNk16: D (64 × N, fp32) = A (64 × 16) · B (16 × N) (+ D), A and B in
//       shared memory, described by matrix descriptors; B K-major (TransB false: B's columns are
//       rows of the tile, as K's rows are Kᵀ's columns) or MN-major (TransB: B's rows are rows of
//       the tile, as V's are for P·V); A K-major (its rows are rows of the tile, as Q's are for
//       Q Kᵀ) or MN-major (TransA: its columns are rows of the tile, as dSᵀ's rows are dS's
//       columns for dQ = dS K).
//   mma_rs<E, N, TransB>(d, a, b_desc, accumulate)
//       the same with A from registers, in mma.m16n8k16's A layout for the warp's 16 rows (the
//       FlashAttention-2 register reuse of P as an operand carries over unchanged).
//   D fragments, d[N / 8][4]: of warp w of the warpgroup, with g = lane / 4 and t = lane % 4,
//       d[j][e] = D[16w + g + 8(e >> 1)][8j + 2t + (e & 1)] — m16n8's C layout, chunk by chunk.
//   fence()      wgmma.fence: before the first wgmma that reads accumulators other code wrote;
//   commit()     closes the group of wgmmas issued since the last;
//   wait<N>()    until at most N groups are pending — only then may d (and a) be touched again;
//   fence_proxy_async()  makes this thread's generic writes to shared memory (st.shared,
//                cp.async) visible to the wgmmas that a following barrier orders after them.
//   raise_registers<N>() / lower_registers<N>()  setmaxnreg: from here on each thread of the
//                calling warpgroup (all 128 call it together) may use N registers (24 … 256, a
//                multiple of 8) — a warp-specialized kernel's producers give theirs up for its
//                consumers. ptxas honours it in a kernel whose launch bounds promise one block an
//                SM, starting every thread at 65536 / threads; a raise waits until the block's
//                lowerings have freed enough.
//   hold(x)      tells the compiler the registers of x are read and rewritten here: called after
//                wait<0>() on the accumulators and on register A operands, it keeps the compiler
//                from reading the accumulators before the wait, or from reusing A's registers
//                while the tensor cores may still read them.
//
// Shared-memory tiles: every operand here is a 128-byte-swizzled tile (SwizzledTile): column
// panels of 64 elements, each [Rows][64] with 128-byte rows, panel after panel; row r's 16-byte
// chunk c stored at chunk c ^ (r % 8). Such a tile starts 1024-byte aligned (the swizzle is a
// function of address bits), and serves as a K-major operand whose rows are M or N (Q, K) and as an
// MN-major one whose rows are K (V). A tile 32 columns past its last whole panel (latent
// attention's 96 = 64 + 32 query/key columns) ends in a 32-column panel in the 64-byte swizzle:
// [Rows][32] with 64-byte rows, row r's chunk c at chunk c ^ ((r / 2) % 4); it serves K-major, and
// MN-major to a wgmma of its 32 columns alone (mma_ss_mn and mma_rs_mn split a product there).
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/platform.h"
#include "cuda/tensor_core.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace wg {

// Whether this compilation can emit wgmma: nvcc for sm_90a, or the emulated build.
#if defined(FLASHGPT_SIMT) || (defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL))
#define FLASHGPT_HAS_WGMMA 1
#else
#define FLASHGPT_HAS_WGMMA 0
#endif

__device__ __forceinline__ uint32_t smem_address(const void* p) {
#if defined(FLASHGPT_SIMT)
  return simt::shared_address(p);
#else
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#endif
}

// A 64-bit matrix descriptor: start address, leading and stride byte offsets (each in 16-byte
// units, 14 bits), base offset 0, swizzle mode 1 (128 bytes) or 2 (64 bytes).
__device__ __forceinline__ uint64_t descriptor(uint32_t address, uint32_t lbo_bytes, uint32_t sbo_bytes,
                                               uint64_t mode) {
  return static_cast<uint64_t>((address & 0x3FFFF) >> 4) | static_cast<uint64_t>((lbo_bytes >> 4) & 0x3FFF) << 16 |
         static_cast<uint64_t>((sbo_bytes >> 4) & 0x3FFF) << 32 | mode << 62;
}
__device__ __forceinline__ uint64_t descriptor_128b(uint32_t address, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  return descriptor(address, lbo_bytes, sbo_bytes, 1);
}

// A tile of Rows × Cols 16-bit elements in the swizzled layout above: Cols / 64 panels in the
// 128-byte swizzle, and where Cols % 64 is 32 a last 32-column panel in the 64-byte one.
template <int Rows, int Cols>
struct SwizzledTile {
  static_assert(Rows % 8 == 0 && (Cols % 64 == 0 || Cols % 64 == 32), "whole 8-row, 64- or 32-column swizzle atoms");
  static constexpr int kElems = Rows * Cols;
  static constexpr int kPanelElems = Rows * 64;
  static constexpr int kWholePanels = Cols / 64;  // the 128-byte-swizzled ones
  static constexpr bool kHalfPanel = Cols % 64 == 32;
  // The element offset of (r, c).
  __device__ __forceinline__ static int offset(int r, int c) {
    if (kHalfPanel && c >= 64 * kWholePanels) {
      return kWholePanels * kPanelElems + r * 32 + ((((c % 64) / 8) ^ ((r / 2) % 4)) * 8) + c % 8;
    }
    return (c / 64) * kPanelElems + r * 64 + ((((c % 64) / 8) ^ (r % 8)) * 8) + c % 8;
  }
  // The K-major descriptor of rows [row0, row0 + 64 or N) and columns (k) [k0, k0 + 16): the
  // stride offset steps 8-row groups (1024 bytes; 512 in the 64-byte panel), the leading one is
  // unused.
  __device__ __forceinline__ static uint64_t k_major(const void* tile, int row0, int k0) {
    if (kHalfPanel && k0 >= 64 * kWholePanels) {
      return descriptor(smem_address(tile) + 2 * (kWholePanels * kPanelElems + row0 * 32 + k0 % 64), 16, 512, 2);
    }
    return descriptor_128b(smem_address(tile) + 2 * ((k0 / 64) * kPanelElems + row0 * 64 + k0 % 64), 16, 1024);
  }
  // The MN-major descriptor of rows (k) [k0, k0 + 16) and the columns (n) from n0 (a multiple of
  // 64): the leading offset steps 64-column panels, the stride one 8-row groups. The columns of
  // one wgmma lie in whole panels or are the half panel (n0 = 64 · kWholePanels, N = 32): there one
  // swizzle atom spans the 32 columns (no leading offset) and the stride steps 8-row groups of
  // 64-byte rows.
  __device__ __forceinline__ static uint64_t mn_major(const void* tile, int k0, int n0 = 0) {
    if (kHalfPanel && n0 >= 64 * kWholePanels) {
      return descriptor(smem_address(tile) + 2 * (kWholePanels * kPanelElems + k0 * 32), 2 * Rows * 32, 512, 2);
    }
    return descriptor_128b(smem_address(tile) + 2 * ((n0 / 64) * kPanelElems + k0 * 64), 2 * kPanelElems, 1024);
  }
};

// The first Chunks 8-column chunks of accumulators d, and those from chunk First on, as arrays of
// their own (a wgmma takes its accumulators by array reference).
template <int Chunks, int N>
__device__ __forceinline__ auto leading_chunks(float (&d)[N][4]) -> float (&)[Chunks][4] {
  static_assert(Chunks <= N);
  return *reinterpret_cast<float(*)[Chunks][4]>(&d[0]);
}
template <int First, int N>
__device__ __forceinline__ auto trailing_chunks(float (&d)[N][4]) -> float (&)[N - First][4] {
  static_assert(First < N);
  return *reinterpret_cast<float(*)[N - First][4]>(&d[First]);
}

// Queues the copy of rows [first, first + Rows) of a [·, stride] tensor (D elements each, from
// src) into the swizzled tile dst; rows at or past `valid` are zero-filled. The caller commits.
template <int D, int Rows, int Threads, typename E>
__device__ __forceinline__ void load_rows_swizzled(E* dst, const E* src, int64_t stride, int64_t first, int64_t valid) {
  constexpr int kChunks = D / 8;
  for (int idx = static_cast<int>(threadIdx.x); idx < Rows * kChunks; idx += Threads) {
    const int r = idx / kChunks, c = idx % kChunks;
    const bool ok = first + r < valid;
    tc::cp_async_16(dst + SwizzledTile<Rows, D>::offset(r, c * 8), ok ? src + (first + r) * stride + c * 8 : src, ok);
  }
}

#if defined(FLASHGPT_SIMT)

template <int N>
__device__ __forceinline__ void hold(float (&)[N][4]) {}
template <int N>
__device__ __forceinline__ void hold(uint32_t (&)[N][4]) {}

template <typename E>
constexpr simt::MmaType mma_type() {
  return std::is_same_v<E, __half> ? simt::MmaType::f16 : simt::MmaType::bf16;
}
template <typename E, int N, bool TransB, bool TransA = false>
__device__ __forceinline__ void mma_ss(float (&d)[N / 8][4], uint64_t a_desc, uint64_t b_desc, bool accumulate) {
  simt::warpgroup_mma(mma_type<E>(), N, &d[0][0], nullptr, a_desc, b_desc, TransA, TransB, accumulate);
}
template <typename E, int N, bool TransB>
__device__ __forceinline__ void mma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t b_desc, bool accumulate) {
  simt::warpgroup_mma(mma_type<E>(), N, &d[0][0], a, 0, b_desc, false, TransB, accumulate);
}
__device__ __forceinline__ void fence() {}
__device__ __forceinline__ void commit() { simt::warpgroup_commit(); }
template <int N>
__device__ __forceinline__ void wait() {
  simt::warpgroup_wait(N);
}
__device__ __forceinline__ void fence_proxy_async() {}
template <int N>
__device__ __forceinline__ void raise_registers() {
  simt::warpgroup_set_max_registers(N, true);
}
template <int N>
__device__ __forceinline__ void lower_registers() {
  simt::warpgroup_set_max_registers(N, false);
}

#else

// The accumulators as asm operands, and the register lists and operand tails of the asm text,
// per N (the accumulators are operands 0 … N/2 − 1, the inputs follow).
#define FLASHGPT_WG_F4(i) "+f"(f[i]), "+f"(f[i + 1]), "+f"(f[i + 2]), "+f"(f[i + 3])
#define FLASHGPT_WG_F16(i) FLASHGPT_WG_F4(i), FLASHGPT_WG_F4(i + 4), FLASHGPT_WG_F4(i + 8), FLASHGPT_WG_F4(i + 12)
#define FLASHGPT_WG_F32(i) FLASHGPT_WG_F16(i), FLASHGPT_WG_F16(i + 16)
#define FLASHGPT_WG_OUT_32 FLASHGPT_WG_F16(0)
#define FLASHGPT_WG_OUT_64 FLASHGPT_WG_F32(0)
#define FLASHGPT_WG_OUT_128 FLASHGPT_WG_F32(0), FLASHGPT_WG_F32(32)
#define FLASHGPT_WG_OUT_256 FLASHGPT_WG_F32(0), FLASHGPT_WG_F32(32), FLASHGPT_WG_F32(64), FLASHGPT_WG_F32(96)
#define FLASHGPT_WG_REGS_32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define FLASHGPT_WG_SS_TAIL_32 "%16, %17, p, 1, 1, %20, %19;"
#define FLASHGPT_WG_SS_PRED_32 "%18"
#define FLASHGPT_WG_RS_TAIL_32 "{%16, %17, %18, %19}, %20, p, 1, 1, %22;"
#define FLASHGPT_WG_RS_PRED_32 "%21"
#define FLASHGPT_WG_REGS_64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define FLASHGPT_WG_SS_TAIL_64 "%32, %33, p, 1, 1, %36, %35;"
#define FLASHGPT_WG_SS_PRED_64 "%34"
#define FLASHGPT_WG_RS_TAIL_64 "{%32, %33, %34, %35}, %36, p, 1, 1, %38;"
#define FLASHGPT_WG_RS_PRED_64 "%37"
#define FLASHGPT_WG_REGS_128 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define FLASHGPT_WG_SS_TAIL_128 "%64, %65, p, 1, 1, %68, %67;"
#define FLASHGPT_WG_SS_PRED_128 "%66"
#define FLASHGPT_WG_RS_TAIL_128 "{%64, %65, %66, %67}, %68, p, 1, 1, %70;"
#define FLASHGPT_WG_RS_PRED_128 "%69"
#define FLASHGPT_WG_REGS_256 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define FLASHGPT_WG_SS_TAIL_256 "%128, %129, p, 1, 1, %132, %131;"
#define FLASHGPT_WG_SS_PRED_256 "%130"
#define FLASHGPT_WG_RS_TAIL_256 "{%128, %129, %130, %131}, %132, p, 1, 1, %134;"
#define FLASHGPT_WG_RS_PRED_256 "%133"
#define FLASHGPT_WG_SS(N, TYPE)                                                                            \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " FLASHGPT_WG_SS_PRED_##N ", 0;\n"                          \
               "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TYPE "." TYPE " " FLASHGPT_WG_REGS_##N ", " \
               FLASHGPT_WG_SS_TAIL_##N "\n}\n"                                                           \
               : FLASHGPT_WG_OUT_##N                                                                     \
               : "l"(a_desc), "l"(b_desc), "r"(static_cast<int>(accumulate)), "n"(static_cast<int>(TransB)), \
                 "n"(static_cast<int>(TransA)))
#define FLASHGPT_WG_RS(N, TYPE)                                                                            \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " FLASHGPT_WG_RS_PRED_##N ", 0;\n"                          \
               "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TYPE "." TYPE " " FLASHGPT_WG_REGS_##N ", " \
               FLASHGPT_WG_RS_TAIL_##N "\n}\n"                                                           \
               : FLASHGPT_WG_OUT_##N                                                                     \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(static_cast<int>(accumulate)), \
                 "n"(static_cast<int>(TransB)))

template <typename E, int N, bool TransB, bool TransA = false>
__device__ __forceinline__ void mma_ss(float (&d)[N / 8][4], uint64_t a_desc, uint64_t b_desc, bool accumulate) {
  static_assert(N == 32 || N == 64 || N == 128 || N == 256, "wgmma widths instantiated: 32, 64, 128, 256");
#if FLASHGPT_HAS_WGMMA
  float* f = &d[0][0];
  constexpr bool kHalf = std::is_same_v<E, __half>;
  if constexpr (N == 32) {
    if constexpr (kHalf) FLASHGPT_WG_SS(32, "f16"); else FLASHGPT_WG_SS(32, "bf16");
  } else if constexpr (N == 64) {
    if constexpr (kHalf) FLASHGPT_WG_SS(64, "f16"); else FLASHGPT_WG_SS(64, "bf16");
  } else if constexpr (N == 128) {
    if constexpr (kHalf) FLASHGPT_WG_SS(128, "f16"); else FLASHGPT_WG_SS(128, "bf16");
  } else {
    if constexpr (kHalf) FLASHGPT_WG_SS(256, "f16"); else FLASHGPT_WG_SS(256, "bf16");
  }
#else
  (void)d, (void)a_desc, (void)b_desc, (void)accumulate;
  __trap();  // not built for sm_90a: the host side never launches it there
#endif
}

template <typename E, int N, bool TransB>
__device__ __forceinline__ void mma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t b_desc, bool accumulate) {
  static_assert(N == 32 || N == 64 || N == 128 || N == 256, "wgmma widths instantiated: 32, 64, 128, 256");
#if FLASHGPT_HAS_WGMMA
  float* f = &d[0][0];
  constexpr bool kHalf = std::is_same_v<E, __half>;
  if constexpr (N == 32) {
    if constexpr (kHalf) FLASHGPT_WG_RS(32, "f16"); else FLASHGPT_WG_RS(32, "bf16");
  } else if constexpr (N == 64) {
    if constexpr (kHalf) FLASHGPT_WG_RS(64, "f16"); else FLASHGPT_WG_RS(64, "bf16");
  } else if constexpr (N == 128) {
    if constexpr (kHalf) FLASHGPT_WG_RS(128, "f16"); else FLASHGPT_WG_RS(128, "bf16");
  } else {
    if constexpr (kHalf) FLASHGPT_WG_RS(256, "f16"); else FLASHGPT_WG_RS(256, "bf16");
  }
#else
  (void)d, (void)a, (void)b_desc, (void)accumulate;
  __trap();
#endif
}

template <int N>
__device__ __forceinline__ void hold(float (&x)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(x[i][e])::"memory");
}
template <int N>
__device__ __forceinline__ void hold(uint32_t (&x)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(x[i][e])::"memory");
}

__device__ __forceinline__ void fence() {
#if FLASHGPT_HAS_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void commit() {
#if FLASHGPT_HAS_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wait() {
#if FLASHGPT_HAS_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
__device__ __forceinline__ void fence_proxy_async() {
#if FLASHGPT_HAS_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void raise_registers() {
  static_assert(N >= 24 && N <= 256 && N % 8 == 0, "setmaxnreg: 24 … 256 registers in multiples of 8");
#if FLASHGPT_HAS_WGMMA
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void lower_registers() {
  static_assert(N >= 24 && N <= 256 && N % 8 == 0, "setmaxnreg: 24 … 256 registers in multiples of 8");
#if FLASHGPT_HAS_WGMMA
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

#endif

// D (64 × N) = A · B (+ D) with B the columns [n0, n0 + N) of a swizzled tile read MN-major (its
// rows k0 … k0 + 15): one wgmma where those columns are whole panels, else one over the whole
// panels among them and an m64n32k16 over the tile's half panel (latent attention's Dqk = 96).
// A from shared memory (mma_ss_mn) or from registers (mma_rs_mn), as mma_ss and mma_rs take it.
template <typename E, typename Tile, int N, bool TransA = false>
__device__ __forceinline__ void mma_ss_mn(float (&d)[N / 8][4], uint64_t a_desc, const void* tile, int k0, int n0,
                                          bool accumulate) {
  constexpr int Wide = N / 64 * 64;
  static_assert(N == Wide || N - Wide == 32, "MN-major columns: whole 64-column panels, then at most a half panel");
  if constexpr (N == Wide) {
    mma_ss<E, N, true, TransA>(d, a_desc, Tile::mn_major(tile, k0, n0), accumulate);
  } else {
    if constexpr (Wide > 0) {
      mma_ss<E, Wide, true, TransA>(leading_chunks<Wide / 8>(d), a_desc, Tile::mn_major(tile, k0, n0), accumulate);
    }
    mma_ss<E, 32, true, TransA>(trailing_chunks<Wide / 8>(d), a_desc, Tile::mn_major(tile, k0, n0 + Wide), accumulate);
  }
}
template <typename E, typename Tile, int N>
__device__ __forceinline__ void mma_rs_mn(float (&d)[N / 8][4], const uint32_t (&a)[4], const void* tile, int k0,
                                          int n0, bool accumulate) {
  constexpr int Wide = N / 64 * 64;
  static_assert(N == Wide || N - Wide == 32, "MN-major columns: whole 64-column panels, then at most a half panel");
  if constexpr (N == Wide) {
    mma_rs<E, N, true>(d, a, Tile::mn_major(tile, k0, n0), accumulate);
  } else {
    if constexpr (Wide > 0) mma_rs<E, Wide, true>(leading_chunks<Wide / 8>(d), a, Tile::mn_major(tile, k0, n0), accumulate);
    mma_rs<E, 32, true>(trailing_chunks<Wide / 8>(d), a, Tile::mn_major(tile, k0, n0 + Wide), accumulate);
  }
}

}  // namespace wg
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
