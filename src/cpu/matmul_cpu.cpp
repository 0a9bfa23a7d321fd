#include <cblas.h>

#include "cpu/parallel.h"
#include "flashgpt/ops/matmul.h"

namespace flashgpt::ops {

namespace {

inline CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }

}  // namespace

template <>
void gemm<float>(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, tr(trans_a), tr(trans_b), static_cast<blasint>(M), static_cast<blasint>(N),
              static_cast<blasint>(K), alpha, A, static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C,
              static_cast<blasint>(ldc));
}

template <>
void gemm<double>(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                  int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, tr(trans_a), tr(trans_b), static_cast<blasint>(M), static_cast<blasint>(N),
              static_cast<blasint>(K), alpha, A, static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C,
              static_cast<blasint>(ldc));
}

template <typename T>
void matmul_forward(T* out, const T* inp, const T* w, const T* bias, int64_t N, int64_t C, int64_t OC) {
  if (bias) {
#pragma omp parallel for schedule(static) num_threads(cpu::team_size(N * OC))
    for (int64_t i = 0; i < N; ++i) {
      T* row = out + i * OC;
      for (int64_t o = 0; o < OC; ++o) row[o] = bias[o];
    }
  }
  gemm<T>(false, true, N, OC, C, T(1), inp, C, w, C, bias ? T(1) : T(0), out, OC);
}

template <typename T>
void matmul_backward(T* dinp, T* dw, T* dbias, const T* dout, const T* inp, const T* w, int64_t N, int64_t C,
                     int64_t OC, bool accumulate_dinp) {
  if (dinp) gemm<T>(false, false, N, C, OC, T(1), dout, OC, w, C, accumulate_dinp ? T(1) : T(0), dinp, C);
  gemm<T>(true, false, OC, C, N, T(1), dout, OC, inp, C, T(1), dw, C);
  if (dbias) {
    // Columns split across threads; each thread sums its columns over all rows in a fixed order.
#pragma omp parallel num_threads(cpu::team_size(N * OC))
    {
#pragma omp for schedule(static)
      for (int64_t o = 0; o < OC; o += 64) {
        int64_t end = o + 64 < OC ? o + 64 : OC;
        for (int64_t i = 0; i < N; ++i) {
          const T* row = dout + i * OC;
          for (int64_t j = o; j < end; ++j) dbias[j] += row[j];
        }
      }
    }
  }
}

#define FLASHGPT_INSTANTIATE(T)                                                                       \
  template void matmul_forward<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t);       \
  template void matmul_backward<T>(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, bool);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(double)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt::ops
