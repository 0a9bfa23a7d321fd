// AdamW (Loshchilov & Hutter) with bias correction; decoupled weight decay applied only where
// `decay` is true (matrices).
//   m = β1·m + (1−β1)·g ;  v = β2·v + (1−β2)·g²
//   p −= lr·( m/(1−β1^t) / (sqrt(v/(1−β2^t)) + ε) + wd·p )
#pragma once

#include <cstdint>

namespace flashgpt::ops {

struct AdamWParams {
  float lr = 0;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0;
  int64_t step = 1;  // 1-based, for bias correction
};

// grad_scale multiplies every gradient first (used by global-norm clipping).
template <typename T>
void adamw_update(T* params, const T* grads, T* m, T* v, int64_t n, const AdamWParams& p, bool decay, T grad_scale);

// Σ g² over n values, in double.
template <typename T>
double sum_squares(const T* x, int64_t n);

}  // namespace flashgpt::ops
