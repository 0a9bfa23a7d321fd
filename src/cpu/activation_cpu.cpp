#include <cmath>
#include <numbers>

#include "cpu/parallel.h"
#include "flashgpt/ops/activation.h"

namespace flashgpt::ops {

namespace {

template <typename T>
constexpr T kGeluScale = static_cast<T>(0.7978845608028654);  // sqrt(2/π)
template <typename T>
constexpr T kGeluCubic = static_cast<T>(0.044715);

}  // namespace

template <typename T>
void gelu_forward(T* out, const T* inp, int64_t n) {
#pragma omp parallel for simd schedule(static) num_threads(cpu::team_size(n))
  for (int64_t i = 0; i < n; ++i) {
    T x = inp[i];
    T u = kGeluScale<T> * (x + kGeluCubic<T> * x * x * x);
    out[i] = T(0.5) * x * (T(1) + std::tanh(u));
  }
}

template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, int64_t n) {
#pragma omp parallel for simd schedule(static) num_threads(cpu::team_size(n))
  for (int64_t i = 0; i < n; ++i) {
    T x = inp[i];
    T u = kGeluScale<T> * (x + kGeluCubic<T> * x * x * x);
    T th = std::tanh(u);
    T sech2 = T(1) - th * th;
    T du = kGeluScale<T> * (T(1) + T(3) * kGeluCubic<T> * x * x);
    dinp[i] = dout[i] * (T(0.5) * (T(1) + th) + T(0.5) * x * sech2 * du);
  }
}

template <typename T>
void swiglu_forward(T* out, const T* inp, int64_t N, int64_t F) {
#pragma omp parallel for schedule(static) num_threads(cpu::team_size(N * F))
  for (int64_t i = 0; i < N; ++i) {
    const T* gate = inp + i * 2 * F;
    const T* up = gate + F;
    T* y = out + i * F;
    for (int64_t j = 0; j < F; ++j) {
      T s = T(1) / (T(1) + std::exp(-gate[j]));
      y[j] = gate[j] * s * up[j];
    }
  }
}

template <typename T>
void swiglu_backward(T* dinp, const T* inp, const T* dout, int64_t N, int64_t F) {
#pragma omp parallel for schedule(static) num_threads(cpu::team_size(N * F))
  for (int64_t i = 0; i < N; ++i) {
    const T* gate = inp + i * 2 * F;
    const T* up = gate + F;
    const T* dy = dout + i * F;
    T* dgate = dinp + i * 2 * F;
    T* dup = dgate + F;
    for (int64_t j = 0; j < F; ++j) {
      T a = gate[j];
      T s = T(1) / (T(1) + std::exp(-a));
      T silu = a * s;
      dup[j] = dy[j] * silu;
      dgate[j] = dy[j] * up[j] * s * (T(1) + a * (T(1) - s));
    }
  }
}

#define FLASHGPT_INSTANTIATE(T)                                                \
  template void gelu_forward<T>(T*, const T*, int64_t);                        \
  template void gelu_backward<T>(T*, const T*, const T*, int64_t);             \
  template void swiglu_forward<T>(T*, const T*, int64_t, int64_t);             \
  template void swiglu_backward<T>(T*, const T*, const T*, int64_t, int64_t);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(double)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt::ops
