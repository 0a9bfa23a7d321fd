#include "flashgpt/ops/svd.h"

#include <lapacke.h>

#include <algorithm>
#include <cmath>

#include "flashgpt/core/error.h"

namespace flashgpt::ops {

namespace {

lapack_int gesdd(int64_t M, int64_t N, float* a, float* s, float* u, float* vt) {
  const auto m = static_cast<lapack_int>(M), n = static_cast<lapack_int>(N), k = std::min(m, n);
  return LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', m, n, a, n, s, u, k, vt, n);
}
lapack_int gesdd(int64_t M, int64_t N, double* a, double* s, double* u, double* vt) {
  const auto m = static_cast<lapack_int>(M), n = static_cast<lapack_int>(N), k = std::min(m, n);
  return LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', m, n, a, n, s, u, k, vt, n);
}

}  // namespace

template <typename T>
std::vector<T> truncated_svd(const T* A, int64_t M, int64_t N, int64_t rank, T* left, T* right) {
  const int64_t K = std::min(M, N);
  FLASHGPT_CHECK(M > 0 && N > 0, "svd: matrix {}×{} is empty", M, N);
  FLASHGPT_CHECK(rank >= 1 && rank <= K, "svd: rank {} must be between 1 and min({}, {}) = {}", rank, M, N, K);
  std::vector<T> a(A, A + M * N), s(static_cast<size_t>(K)), u(static_cast<size_t>(M * K)), vt(static_cast<size_t>(K * N));
  const lapack_int info = gesdd(M, N, a.data(), s.data(), u.data(), vt.data());
  FLASHGPT_CHECK(info == 0, "svd: LAPACK gesdd failed on a {}×{} matrix (info {})", M, N, static_cast<int>(info));
  for (int64_t j = 0; j < rank; ++j) {
    const T root = std::sqrt(s[static_cast<size_t>(j)]);
    for (int64_t i = 0; i < M; ++i) left[i * rank + j] = u[static_cast<size_t>(i * K + j)] * root;
    for (int64_t i = 0; i < N; ++i) right[j * N + i] = vt[static_cast<size_t>(j * N + i)] * root;
  }
  return s;
}

template std::vector<float> truncated_svd<float>(const float*, int64_t, int64_t, int64_t, float*, float*);
template std::vector<double> truncated_svd<double>(const double*, int64_t, int64_t, int64_t, double*, double*);

}  // namespace flashgpt::ops
