#include <omp.h>

#include <cmath>
#include <vector>

#include "cpu/parallel.h"
#include "flashgpt/ops/adamw.h"

namespace flashgpt::ops {

template <typename T>
void adamw_update(T* params, const T* grads, T* m, T* v, int64_t n, const AdamWParams& p, bool decay, T grad_scale) {
  const T b1 = p.beta1, b2 = p.beta2;
  const T bc1 = T(1) - static_cast<T>(std::pow(static_cast<double>(p.beta1), static_cast<double>(p.step)));
  const T bc2 = T(1) - static_cast<T>(std::pow(static_cast<double>(p.beta2), static_cast<double>(p.step)));
  const T lr = p.lr, eps = p.eps;
  const T wd = decay ? static_cast<T>(p.weight_decay) : T(0);
#pragma omp parallel for simd schedule(static) num_threads(cpu::team_size(n))
  for (int64_t i = 0; i < n; ++i) {
    T g = grads[i] * grad_scale;
    T mi = b1 * m[i] + (T(1) - b1) * g;
    T vi = b2 * v[i] + (T(1) - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    T mhat = mi / bc1;
    T vhat = vi / bc2;
    params[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + wd * params[i]);
  }
}

template <typename T>
double sum_squares(const T* x, int64_t n) {
  // Per-thread partial sums combined in thread order: the same result on every run with the same
  // thread count (an OpenMP reduction clause does not promise an order).
  std::vector<double> partial(static_cast<size_t>(omp_get_max_threads()), 0.0);
#pragma omp parallel num_threads(cpu::team_size(n))
  {
    double local = 0;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) local += static_cast<double>(x[i]) * static_cast<double>(x[i]);
    partial[static_cast<size_t>(omp_get_thread_num())] = local;
  }
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

template void adamw_update<float>(float*, const float*, float*, float*, int64_t, const AdamWParams&, bool, float);
template void adamw_update<double>(double*, const double*, double*, double*, int64_t, const AdamWParams&, bool,
                                   double);
template double sum_squares<float>(const float*, int64_t);
template double sum_squares<double>(const double*, int64_t);

}  // namespace flashgpt::ops
