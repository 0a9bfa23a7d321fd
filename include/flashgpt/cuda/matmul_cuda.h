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

// The MLP's first layer and its activation in one product where cuBLASLt has a GELU epilogue for
// the shape: pre[N,OC] = inp · wᵀ + bias (kept for the backward) and act = GELU(pre), both rounded
// once from fp32; else matmul_forward into pre and gelu_forward into act, the same values up to
// the rounding of pre before GELU. bias may be null. bf16 only (the fp32 parity mode keeps its
// separate, exactly specified GELU).
void matmul_gelu_forward(bf16* act, bf16* pre, const bf16* inp, const bf16* w, const bf16* bias, int64_t N, int64_t C,
                         int64_t OC);

// matmul_backward for a layer whose input act[N,C] was GELU(pre), with the gradient carried on
// through GELU: dpre = (dout · w) ∘ GELU'(pre) in one product (cuBLASLt's DGELU epilogue, where it
// has one for the shape; else the product into dact, then gelu_backward), then dw and dbias as
// matmul_backward. dact is scratch of N·C elements, written only on the fallback. bf16 only.
void matmul_backward_dgelu(bf16* dpre, bf16* dact, float* dw, float* dbias, const bf16* dout, const bf16* act,
                           const bf16* pre, const bf16* w, int64_t N, int64_t C, int64_t OC);

// This device's measured GEMM rate in FLOP/s: the median of `repeats` n×n×n products in bf16
// (fp32 accumulation) or fp32, after a warm-up. The denominator of model-FLOP utilisation. (The
// CPU emulator times n ≤ 256.)
double measure_gemm_flops(bool bf16, int n = 4096, int repeats = 5);

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
