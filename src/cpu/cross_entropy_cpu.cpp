#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu/parallel.h"
#include "flashgpt/ops/cross_entropy.h"

namespace flashgpt::ops {

template <typename T>
double softmax_cross_entropy_forward(T* probs, T* losses, const int* targets, int64_t N, int64_t V, int64_t Vp) {
#pragma omp parallel for schedule(static) num_threads(cpu::team_size(N * V))
  for (int64_t i = 0; i < N; ++i) {
    T* row = probs + i * Vp;
    T mx = row[0];
    for (int64_t j = 1; j < V; ++j) mx = std::max(mx, row[j]);
    T sum = 0;
    for (int64_t j = 0; j < V; ++j) {
      row[j] = std::exp(row[j] - mx);
      sum += row[j];
    }
    T inv = T(1) / sum;
    for (int64_t j = 0; j < V; ++j) row[j] *= inv;
    for (int64_t j = V; j < Vp; ++j) row[j] = 0;
    if (targets && losses) {
      int tgt = targets[i];
      losses[i] = tgt >= 0 ? -std::log(std::max(row[tgt], std::numeric_limits<T>::min())) : T(0);
    }
  }
  if (!targets || !losses) return 0.0;
  double total = 0;
  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (targets[i] >= 0) {
      total += static_cast<double>(losses[i]);
      ++count;
    }
  }
  return count > 0 ? total / static_cast<double>(count) : 0.0;
}

template <typename T>
void softmax_cross_entropy_backward(T* probs, const int* targets, int64_t N, int64_t V, int64_t Vp, T scale) {
#pragma omp parallel for schedule(static) num_threads(cpu::team_size(N * V))
  for (int64_t i = 0; i < N; ++i) {
    T* row = probs + i * Vp;
    int tgt = targets[i];
    if (tgt < 0) {
      std::fill(row, row + Vp, T(0));
      continue;
    }
    for (int64_t j = 0; j < V; ++j) row[j] *= scale;
    row[tgt] -= scale;
    for (int64_t j = V; j < Vp; ++j) row[j] = 0;
  }
}

#define FLASHGPT_INSTANTIATE(T)                                                                               \
  template double softmax_cross_entropy_forward<T>(T*, T*, const int*, int64_t, int64_t, int64_t);           \
  template void softmax_cross_entropy_backward<T>(T*, const int*, int64_t, int64_t, int64_t, T);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(double)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt::ops
