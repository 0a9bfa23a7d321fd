#include <cmath>

#include "cpu/parallel.h"
#include "flashgpt/ops/rope.h"

namespace flashgpt::ops {

template <typename T>
RopeTable<T>::RopeTable(int max_pos_, int head_dim, double theta) : max_pos(max_pos_), half(head_dim / 2) {
  cos.resize(static_cast<size_t>(max_pos) * half);
  sin.resize(cos.size());
  for (int p = 0; p < max_pos; ++p) {
    for (int i = 0; i < half; ++i) {
      // Angles in double so the float table is the correctly rounded value.
      double freq = std::pow(theta, -2.0 * i / static_cast<double>(head_dim));
      double angle = p * freq;
      cos[static_cast<size_t>(p) * half + i] = static_cast<T>(std::cos(angle));
      sin[static_cast<size_t>(p) * half + i] = static_cast<T>(std::sin(angle));
    }
  }
}

namespace {

// sign = +1 rotates forward, −1 applies the inverse rotation.
template <typename T>
void rotate(T* x, const RopeTable<T>& table, int64_t B, int64_t Tn, int64_t H, int64_t D, int64_t head_stride,
            int64_t pos_offset, T sign) {
  const int64_t half = D / 2;
#pragma omp parallel for collapse(2) schedule(static) num_threads(cpu::team_size(B * Tn * H * D))
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < Tn; ++t) {
      const T* c = table.cos.data() + (pos_offset + t) * half;
      const T* s = table.sin.data() + (pos_offset + t) * half;
      for (int64_t h = 0; h < H; ++h) {
        T* v = x + ((b * Tn + t) * H + h) * head_stride;
        for (int64_t i = 0; i < half; ++i) {
          T a = v[i], bb = v[i + half];
          T si = sign * s[i];
          v[i] = a * c[i] - bb * si;
          v[i + half] = a * si + bb * c[i];
        }
      }
    }
  }
}

}  // namespace

template <typename T>
void rope_forward(T* x, const RopeTable<T>& table, int64_t B, int64_t Tn, int64_t H, int64_t D, int64_t pos_offset) {
  rotate(x, table, B, Tn, H, D, D, pos_offset, T(1));
}

template <typename T>
void rope_backward(T* dx, const RopeTable<T>& table, int64_t B, int64_t Tn, int64_t H, int64_t D,
                   int64_t pos_offset) {
  rotate(dx, table, B, Tn, H, D, D, pos_offset, T(-1));
}

template <typename T>
void rope_forward_strided(T* x, const RopeTable<T>& table, int64_t B, int64_t Tn, int64_t H, int64_t D,
                          int64_t head_stride, int64_t pos_offset) {
  rotate(x, table, B, Tn, H, D, head_stride, pos_offset, T(1));
}

template <typename T>
void rope_backward_strided(T* dx, const RopeTable<T>& table, int64_t B, int64_t Tn, int64_t H, int64_t D,
                           int64_t head_stride, int64_t pos_offset) {
  rotate(dx, table, B, Tn, H, D, head_stride, pos_offset, T(-1));
}

template struct RopeTable<float>;
template struct RopeTable<double>;
#define FLASHGPT_INSTANTIATE(T)                                                                             \
  template void rope_forward<T>(T*, const RopeTable<T>&, int64_t, int64_t, int64_t, int64_t, int64_t);     \
  template void rope_backward<T>(T*, const RopeTable<T>&, int64_t, int64_t, int64_t, int64_t, int64_t);     \
  template void rope_forward_strided<T>(T*, const RopeTable<T>&, int64_t, int64_t, int64_t, int64_t, int64_t, \
                                        int64_t);                                                             \
  template void rope_backward_strided<T>(T*, const RopeTable<T>&, int64_t, int64_t, int64_t, int64_t, int64_t,\
                                         int64_t);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(double)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt::ops
