// Matmul, the one seam in front of the BLAS library. Row-major throughout.
//   forward:  out[N,OC] = inp[N,C] · w[OC,C]ᵀ + bias[OC]
//   backward: dinp[N,C] (= or +=) dout[N,OC] · w ;  dw[OC,C] += doutᵀ · inp ;  dbias[OC] += Σ_rows dout
#pragma once

#include <cstdint>

namespace flashgpt::ops {

// C[M,N] = alpha · op(A) · op(B) + beta · C, row-major, with leading dimensions.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

template <typename T>
void matmul_forward(T* out, const T* inp, const T* w, const T* bias, int64_t N, int64_t C, int64_t OC);

// dinp may be null (no input gradient wanted); dbias may be null (no bias).
template <typename T>
void matmul_backward(T* dinp, T* dw, T* dbias, const T* dout, const T* inp, const T* w, int64_t N, int64_t C,
                     int64_t OC, bool accumulate_dinp);

}  // namespace flashgpt::ops
