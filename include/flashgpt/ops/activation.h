// MLP activations.
//   GELU (tanh approximation, as GPT-2): y = ½x(1 + tanh(√(2/π)(x + 0.044715x³)))
//   SwiGLU on rows [gate | up] of width 2F: y = silu(gate)·up, silu(a) = a·σ(a)
// Input gradients are written, not accumulated.
#pragma once

#include <cstdint>

namespace flashgpt::ops {

template <typename T>
void gelu_forward(T* out, const T* inp, int64_t n);
template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, int64_t n);

// inp [N, 2F] → out [N, F]
template <typename T>
void swiglu_forward(T* out, const T* inp, int64_t N, int64_t F);
template <typename T>
void swiglu_backward(T* dinp, const T* inp, const T* dout, int64_t N, int64_t F);

}  // namespace flashgpt::ops
