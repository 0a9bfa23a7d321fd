#include <omp.h>

#include <cmath>
#include <vector>

#include "cpu/parallel.h"
#include "flashgpt/ops/norm.h"

namespace flashgpt::ops {

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* w, const T* b, int64_t N, int64_t C, T eps) {
#pragma omp parallel for schedule(static) num_threads(cpu::team_size(N * C))
  for (int64_t i = 0; i < N; ++i) {
    const T* x = inp + i * C;
    T* y = out + i * C;
    T m = 0;
    for (int64_t j = 0; j < C; ++j) m += x[j];
    m /= static_cast<T>(C);
    T var = 0;
    for (int64_t j = 0; j < C; ++j) {
      T d = x[j] - m;
      var += d * d;
    }
    var /= static_cast<T>(C);
    T r = T(1) / std::sqrt(var + eps);
    for (int64_t j = 0; j < C; ++j) y[j] = (x[j] - m) * r * w[j] + (b ? b[j] : T(0));
    mean[i] = m;
    rstd[i] = r;
  }
}

// Parameter gradients are reduced over rows per thread into private buffers and then summed in
// thread order, so results are identical run to run for a fixed thread count.
template <typename T, typename RowFn>
static void norm_backward_rows(T* dw, T* db, int64_t N, int64_t C, RowFn row_fn) {
#pragma omp parallel num_threads(cpu::team_size(N * C))
  {
    std::vector<T> dw_local(static_cast<size_t>(C), T(0));
    std::vector<T> db_local(db ? static_cast<size_t>(C) : 0, T(0));
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < N; ++i) row_fn(i, dw_local.data(), db ? db_local.data() : nullptr);
#pragma omp for ordered schedule(static, 1)
    for (int t = 0; t < omp_get_num_threads(); ++t) {
#pragma omp ordered
      {
        for (int64_t j = 0; j < C; ++j) dw[j] += dw_local[j];
        if (db)
          for (int64_t j = 0; j < C; ++j) db[j] += db_local[j];
      }
    }
  }
}

template <typename T>
void layernorm_backward(T* dinp, T* dw, T* db, const T* dout, const T* inp, const T* w, const T* mean,
                        const T* rstd, int64_t N, int64_t C, bool accumulate) {
  norm_backward_rows<T>(dw, db, N, C, [&](int64_t i, T* dwl, T* dbl) {
    const T* dy = dout + i * C;
    const T* x = inp + i * C;
    T* dx = dinp + i * C;
    T m = mean[i], r = rstd[i];
    T g_mean = 0, gx_mean = 0;
    for (int64_t j = 0; j < C; ++j) {
      T xhat = (x[j] - m) * r;
      T g = dy[j] * w[j];
      g_mean += g;
      gx_mean += g * xhat;
    }
    g_mean /= static_cast<T>(C);
    gx_mean /= static_cast<T>(C);
    for (int64_t j = 0; j < C; ++j) {
      T xhat = (x[j] - m) * r;
      T g = dy[j] * w[j];
      T d = r * (g - g_mean - xhat * gx_mean);
      dx[j] = accumulate ? dx[j] + d : d;
      dwl[j] += dy[j] * xhat;
      if (dbl) dbl[j] += dy[j];
    }
  });
}

template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* w, int64_t N, int64_t C, T eps) {
#pragma omp parallel for schedule(static) num_threads(cpu::team_size(N * C))
  for (int64_t i = 0; i < N; ++i) {
    const T* x = inp + i * C;
    T* y = out + i * C;
    T ss = 0;
    for (int64_t j = 0; j < C; ++j) ss += x[j] * x[j];
    T r = T(1) / std::sqrt(ss / static_cast<T>(C) + eps);
    for (int64_t j = 0; j < C; ++j) y[j] = x[j] * r * w[j];
    rstd[i] = r;
  }
}

template <typename T>
void rmsnorm_backward(T* dinp, T* dw, const T* dout, const T* inp, const T* w, const T* rstd, int64_t N, int64_t C,
                      bool accumulate) {
  norm_backward_rows<T>(dw, nullptr, N, C, [&](int64_t i, T* dwl, T*) {
    const T* dy = dout + i * C;
    const T* x = inp + i * C;
    T* dx = dinp + i * C;
    T r = rstd[i];
    T gx_mean = 0;
    for (int64_t j = 0; j < C; ++j) gx_mean += dy[j] * w[j] * x[j] * r;
    gx_mean /= static_cast<T>(C);
    for (int64_t j = 0; j < C; ++j) {
      T xhat = x[j] * r;
      T d = r * (dy[j] * w[j] - xhat * gx_mean);
      dx[j] = accumulate ? dx[j] + d : d;
      dwl[j] += dy[j] * xhat;
    }
  });
}

template <typename T>
void norm_forward(NormKind kind, T* out, T* mean, T* rstd, const T* inp, const T* w, const T* b, int64_t N,
                  int64_t C, T eps) {
  if (kind == NormKind::LayerNorm) {
    layernorm_forward(out, mean, rstd, inp, w, b, N, C, eps);
  } else {
    rmsnorm_forward(out, rstd, inp, w, N, C, eps);
  }
}

template <typename T>
void norm_backward(NormKind kind, T* dinp, T* dw, T* db, const T* dout, const T* inp, const T* w, const T* mean,
                   const T* rstd, int64_t N, int64_t C, bool accumulate) {
  if (kind == NormKind::LayerNorm) {
    layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C, accumulate);
  } else {
    rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, C, accumulate);
  }
}

#define FLASHGPT_INSTANTIATE(T)                                                                                  \
  template void layernorm_forward<T>(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t, T);             \
  template void layernorm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, int64_t,     \
                                      int64_t, bool);                                                            \
  template void rmsnorm_forward<T>(T*, T*, const T*, const T*, int64_t, int64_t, T);                             \
  template void rmsnorm_backward<T>(T*, T*, const T*, const T*, const T*, const T*, int64_t, int64_t, bool);     \
  template void norm_forward<T>(NormKind, T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t, T);        \
  template void norm_backward<T>(NormKind, T*, T*, T*, const T*, const T*, const T*, const T*, const T*, int64_t, \
                                 int64_t, bool);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(double)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt::ops
