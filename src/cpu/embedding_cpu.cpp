#include "cpu/parallel.h"
#include "flashgpt/ops/embedding.h"

namespace flashgpt::ops {

template <typename T>
void embedding_forward(T* out, const int* tokens, const T* wte, const T* wpe, int64_t B, int64_t Tn, int64_t C,
                       int64_t pos_offset) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(cpu::team_size(B * Tn * C))
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < Tn; ++t) {
      T* y = out + (b * Tn + t) * C;
      const T* e = wte + static_cast<int64_t>(tokens[b * Tn + t]) * C;
      if (wpe) {
        const T* p = wpe + (pos_offset + t) * C;
        for (int64_t j = 0; j < C; ++j) y[j] = e[j] + p[j];
      } else {
        for (int64_t j = 0; j < C; ++j) y[j] = e[j];
      }
    }
  }
}

template <typename T>
void embedding_backward(T* dwte, T* dwpe, const T* dout, const int* tokens, int64_t B, int64_t Tn, int64_t C,
                        int64_t pos_offset) {
  // Channels are split across threads; within a channel block rows are visited in order, so the
  // sums are deterministic and no two threads touch the same element.
#pragma omp parallel for schedule(static) num_threads(cpu::team_size(B * Tn * C))
  for (int64_t c0 = 0; c0 < C; c0 += 16) {
    int64_t c1 = c0 + 16 < C ? c0 + 16 : C;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < Tn; ++t) {
        const T* dy = dout + (b * Tn + t) * C;
        T* de = dwte + static_cast<int64_t>(tokens[b * Tn + t]) * C;
        for (int64_t j = c0; j < c1; ++j) de[j] += dy[j];
        if (dwpe) {
          T* dp = dwpe + (pos_offset + t) * C;
          for (int64_t j = c0; j < c1; ++j) dp[j] += dy[j];
        }
      }
    }
  }
}

#define FLASHGPT_INSTANTIATE(T)                                                                          \
  template void embedding_forward<T>(T*, const int*, const T*, const T*, int64_t, int64_t, int64_t, int64_t); \
  template void embedding_backward<T>(T*, T*, const T*, const int*, int64_t, int64_t, int64_t, int64_t);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(double)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt::ops
