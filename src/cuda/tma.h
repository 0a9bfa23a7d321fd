// Hopper's tensor memory accelerator (TMA, sm_90) and the shared-memory barriers it signals
// (mbarrier), one spelling for nvcc (inline PTX) and one for the emulated build (simt::, which
// copies boxes and keeps barrier phases as the PTX ISA describes them):
//   mbarrier_init(bar, count)        a barrier in shared memory expecting `count` arrivals a phase;
//                                    then fence_mbarrier_init() and a block barrier before use;
//   mbarrier_arrive_expect_tx(bar, bytes)  one arrival, and `bytes` more to land before the phase
//                                    can complete (what the TMA copies signalling it will bring);
//   mbarrier_arrive(bar)             one arrival;
//   mbarrier_wait(bar, parity)       until the phase of that parity has completed (phases count
//                                    from 0; a consumer waits on 0, 1, 0, … for a barrier's uses);
//   tma_load_4d(dst, map, c0…c3, bar) one box of the tensor `map` describes, from coordinates
//                                    c0…c3 (innermost first), into shared memory at dst (128-byte
//                                    aligned), completing its bytes on bar. Coordinates past the
//                                    tensor's extent read as zeros.
// The data a copy brings may be read only after a wait on its barrier's phase has returned.
//
// Host side: encode_tensor_map_16bit fills a CUtensorMap for 16-bit elements in the 128-byte
// swizzle (cuda/warpgroup.h's SwizzledTile: a box 64 elements wide lands as one panel of such a
// tile when dst is 1024-byte aligned) or the 64-byte one (a box 32 wide lands as a tile's
// half panel when dst is 512-byte aligned), the map a kernel takes as a `const __grid_constant__
// CUtensorMap` parameter.
#pragma once

#include <cstdint>

#include "cuda/platform.h"
#include "cuda/warpgroup.h"

#include <cuda.h>  // CUtensorMap (the type alone; the encoder comes through the runtime)

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace tma {

// Whether this compilation can emit TMA and mbarrier instructions: nvcc for sm_90 or newer, or the
// emulated build.
#if defined(FLASHGPT_SIMT) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900)
#define FLASHGPT_HAS_TMA 1
#else
#define FLASHGPT_HAS_TMA 0
#endif

// A tensor of `rank` (1…5) dimensions of 16-bit elements at `base` (16-byte aligned): dims[i]
// elements along dimension i (innermost first), strides_bytes[i − 1] bytes between consecutive
// indices of dimension i ≥ 1 (multiples of 16; dimension 0 is contiguous), boxes of box[i]
// elements (box[0] · 2 ≤ swizzle_bytes, a multiple of 16), the 128- or 64-byte swizzle, zeros past
// the extent. Throws naming the field the driver refused.
void encode_tensor_map_16bit(CUtensorMap* map, const void* base, int rank, const uint64_t* dims,
                             const uint64_t* strides_bytes, const uint32_t* box, int swizzle_bytes = 128);

// The map of an attention tensor (q, k, v, o, dO) laid out [B][rows][row] with each row's first
// H·D elements its heads [H][D]: four dimensions, innermost first (d, head, position, sequence), of
// T positions, in boxes of box_cols columns by box_rows positions: 64 (one panel of a SwizzledTile,
// the 128-byte swizzle) or 32 (a tile's half panel, the 64-byte swizzle).
void encode_attention_map(CUtensorMap* map, const void* base, int64_t D, int64_t H, int64_t T, int64_t rows,
                          int64_t row, int64_t B, int box_rows, int box_cols = 64);

#if FLASHGPT_HAS_TMA
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, int count) {
#if defined(FLASHGPT_SIMT)
  simt::mbarrier_init(bar, count);
#else
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(wg::smem_address(bar)), "r"(count) : "memory");
#endif
}

// Makes barrier initialisations visible to the asynchronous proxy (the TMA unit).
__device__ __forceinline__ void fence_mbarrier_init() {
#if !defined(FLASHGPT_SIMT)
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
#if defined(FLASHGPT_SIMT)
  simt::mbarrier_arrive(bar, bytes);
#else
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(wg::smem_address(bar)), "r"(bytes)
               : "memory");
#endif
}

__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
#if defined(FLASHGPT_SIMT)
  simt::mbarrier_arrive(bar, 0);
#else
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(wg::smem_address(bar)) : "memory");
#endif
}

__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
#if defined(FLASHGPT_SIMT)
  simt::mbarrier_wait(bar, parity);
#else
  const uint32_t address = wg::smem_address(bar);
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred complete;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 complete, [%1], %2;\n"
        "selp.u32 %0, 1, 0, complete;\n}\n"
        : "=r"(done)
        : "r"(address), "r"(parity)
        : "memory");
  } while (done == 0);
#endif
}

__device__ __forceinline__ void tma_load_4d(void* dst, const CUtensorMap* map, int c0, int c1, int c2, int c3,
                                            uint64_t* bar) {
#if defined(FLASHGPT_SIMT)
  const int coords[4] = {c0, c1, c2, c3};
  simt::bulk_tensor_load(dst, map, 4, coords, bar);
#else
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(wg::smem_address(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(wg::smem_address(bar))
      : "memory");
#endif
}
#endif  // FLASHGPT_HAS_TMA

}  // namespace tma
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
