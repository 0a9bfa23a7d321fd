// Hopper's warpgroup tensor-core instructions (wgmma, cuda/warpgroup.h) on their own: whether this
// GPU and build can run them, and one product through them for the tests that hold the
// instruction layer — descriptors, swizzled tiles, fragment layouts — to a plain product, on the
// hardware and on the emulator alike. The kernels built on them (the Hopper flash forward) are
// tested through their own entry points.
#pragma once

#include <cstdint>

#include "flashgpt/cuda/abi.h"
#include "flashgpt/cuda/attention_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

// True when the current GPU is compute capability 9.0 and this build carries sm_90a code for it
// (the architecture-specific instructions exist nowhere else); the emulator counts as one.
bool warpgroup_mma_supported();

// Where a product's A reaches the tensor cores from: registers (mma.m16n8k16's A layout), or a
// shared tile read K-major (the tile's rows are A's rows) or MN-major (its rows are A's columns).
enum class WarpgroupA { Registers, KMajor, MNMajor };

// d (64 × n fp32, row-major) = A (64 × k) · B (k × n). A is given as a = A ([64][k], row-major) or,
// where a_from is MNMajor, a = Aᵀ ([k][64]); B as b = Bᵀ ([n][k], row-major: B K-major) or, where
// b_mn_major, b = B ([k][n]). n ∈ {32, 64, 96, 128, 256} (96: MN-major B only, a 64-column panel and
// a half panel, multiplied by two wgmmas; an MN-major B of 32 is a half panel alone, in the 64-byte
// swizzle), k ∈ {64, 96, 128} (96: a K-major tile's last 32 columns in the 64-byte swizzle); 16-bit
// elements of `type`; device pointers, 16-byte aligned. Throws where !warpgroup_mma_supported().
void warpgroup_mma_product(TensorCoreType type, int n, int k, WarpgroupA a_from, bool b_mn_major, const uint16_t* a,
                           const uint16_t* b, float* d);

// One box of an attention tensor x ([B][T][row_stride] 16-bit elements, each row's heads [H][D])
// through Hopper's TMA (cuda/tma.h): `rows` positions from t0 of head h in sequence b, elements
// d0 … d0 + cols − 1 (cols 64, in the 128-byte swizzle, or 32, in the 64-byte one), into a
// 1024-byte-aligned shared tile that is copied back to out (rows · cols elements) in shared-memory
// order. Positions past T read as zeros. For the test that holds the copy engine's layout to the
// tiles the wgmma kernels read (SwizzledTile's panels and half panels); needs
// warpgroup_mma_supported(); x and out device pointers, 16-byte aligned.
void tma_load_attention_tile(const uint16_t* x, int64_t B, int64_t T, int64_t H, int64_t D, int64_t row_stride,
                             int64_t b, int64_t t0, int64_t h, int64_t d0, int rows, uint16_t* out, int cols = 64);

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
