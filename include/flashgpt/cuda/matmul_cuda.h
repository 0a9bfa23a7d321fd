// Matmul on the GPU: the seam in front of cuBLASLt, with the CPU matmul's semantics (ops/matmul.h),
// row-major throughout and every pointer in device memory.
//   forward:  out[N,OC] = inp[N,C] · w[OC,C]ᵀ + bias[OC]
//   backward: dinp[N,C] (= or +=) dout[N,OC] · w ;  dw[OC,C] += doutᵀ · inp ;  dbias[OC] += Σ_rows dout
// T is float (fp32 inputs, fp32 arithmetic: the parity mode) or bf16 (bf16 inputs, fp32
// accumulation). Weight and bias gradients are fp32 in both, accumulated in place.
//
// The emulated build (src/cuda/simt) has no cuBLASLt: there the same calls run on the host through
// OpenBLAS, with the inputs widened to fp32 and bf16 outputs rounded to nearest even, which is
// what the tensor cores' fp32 accumulation gives up to the order of the additions.
#pragma once

#include <cstdint>

#include "flashgpt/cuda/abi.h"
#include "flashgpt/cuda/ops_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

// C[M,N] = alpha · op(A) · op(B) + beta · C, row-major with leading dimensions; A and B of type T,
// C of type TC (T, or float with bf16 inputs). Instantiated for <float, float>, <bf16, bf16> and
// <bf16, float>.
template <typename T, typename TC>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, float beta, TC* C, int64_t ldc);

// `batch` products in one launch (latent attention's per-head products): product i is the gemm
// above on A + i·stride_a, B + i·stride_b and C + i·stride_c (in elements, each positive).
template <typename T, typename TC>
void gemm_batched(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const T* A, int64_t lda,
                  int64_t stride_a, const T* B, int64_t ldb, int64_t stride_b, float beta, TC* C, int64_t ldc,
                  int64_t stride_c, int64_t batch);

// bias may be null.
template <typename T>
void matmul_forward(T* out, const T* inp, const T* w, const T* bias, int64_t N, int64_t C, int64_t OC);

// dinp may be null (no input gradient wanted); dbias may be null (no bias).
template <typename T>
void matmul_backward(T* dinp, float* dw, float* dbias, const T* dout, const T* inp, const T* w, int64_t N, int64_t C,
                     int64_t OC, bool accumulate_dinp);

// This device's measured GEMM rate in FLOP/s: the median of `repeats` n×n×n products in bf16
// (fp32 accumulation) or fp32, after a warm-up. The denominator of model-FLOP utilisation.
double measure_gemm_flops(bool bf16, int n = 4096, int repeats = 5);

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
