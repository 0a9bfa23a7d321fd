#include "cpu/parallel.h"
#include "flashgpt/ops/elementwise.h"

namespace flashgpt::ops {

template <typename T>
void add(T* out, const T* a, const T* b, int64_t n) {
#pragma omp parallel for simd schedule(static) num_threads(cpu::team_size(n))
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template <typename T>
void add_inplace(T* y, const T* x, int64_t n) {
#pragma omp parallel for simd schedule(static) num_threads(cpu::team_size(n))
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

template void add<float>(float*, const float*, const float*, int64_t);
template void add<double>(double*, const double*, const double*, int64_t);
template void add_inplace<float>(float*, const float*, int64_t);
template void add_inplace<double>(double*, const double*, int64_t);

}  // namespace flashgpt::ops
