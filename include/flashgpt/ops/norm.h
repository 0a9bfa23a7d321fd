// LayerNorm and RMSNorm over the last dimension of rows [N, C].
//   LayerNorm: y = (x − μ)·r·w + b,  r = 1/sqrt(var + eps)   (saves μ and r per row)
//   RMSNorm:   y = x·r·w,            r = 1/sqrt(mean(x²) + eps) (saves r per row)
// Backward with x̂ = (x − μ)·r (LayerNorm) or x·r (RMSNorm) and g = dy·w:
//   LayerNorm: dx = r·(g − mean(g) − x̂·mean(g·x̂))
//   RMSNorm:   dx = r·(g − x̂·mean(g·x̂))
//   dw += Σ dy·x̂ ;  db += Σ dy
// dx is written (accumulate = false) or added to (accumulate = true, for the residual stream).
#pragma once

#include <cstdint>

#include "flashgpt/model/config.h"

namespace flashgpt::ops {

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* w, const T* b, int64_t N, int64_t C, T eps);
template <typename T>
void layernorm_backward(T* dinp, T* dw, T* db, const T* dout, const T* inp, const T* w, const T* mean,
                        const T* rstd, int64_t N, int64_t C, bool accumulate);

template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* w, int64_t N, int64_t C, T eps);
template <typename T>
void rmsnorm_backward(T* dinp, T* dw, const T* dout, const T* inp, const T* w, const T* rstd, int64_t N, int64_t C,
                      bool accumulate);

// The model's norm of either kind (mean is unused by RMSNorm; b may be null).
template <typename T>
void norm_forward(NormKind kind, T* out, T* mean, T* rstd, const T* inp, const T* w, const T* b, int64_t N,
                  int64_t C, T eps);
template <typename T>
void norm_backward(NormKind kind, T* dinp, T* dw, T* db, const T* dout, const T* inp, const T* w, const T* mean,
                   const T* rstd, int64_t N, int64_t C, bool accumulate);

}  // namespace flashgpt::ops
