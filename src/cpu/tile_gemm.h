// A register-blocked matrix product for the small tiles of flash attention, with AVX-512 chosen at
// run time: C = alpha·A·B (+ C when accumulating), where A is read through two strides so the
// same kernel serves A, Aᵀ and strided rows without packing:
//   A(m, k) = a[m·a_m + k·a_k],   B(k, n) = b[k·ldb + n],   C(m, n) = c[m·ldc + n].
// Each 8 × 32 block of C stays in registers for the whole k loop; A's elements are broadcast and
// B's rows loaded 16 at a time (masked at the right edge), so any M, N, K work.
#pragma once

#include <cstdint>

namespace flashgpt::cpu {

// True when this CPU has AVX-512 and the kernel is enabled (the flash kernel then uses it; else
// BLAS). FLASHGPT_TILE_KERNEL=0 in the environment disables it at start; tests switch it to cover
// both paths.
bool tile_gemm_available();
void set_tile_kernel_enabled(bool on);

void tile_gemm(int64_t M, int64_t N, int64_t K, float alpha, const float* a, int64_t a_m, int64_t a_k,
               const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate);

// dst[k·ld + n] = src[n·src_row + k] for n < N, k < K: a K × N transpose of N rows of K values.
void transpose_rows(const float* src, int64_t src_row, int64_t N, int64_t K, float* dst, int64_t ld);

}  // namespace flashgpt::cpu
