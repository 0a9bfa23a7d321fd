// Token (+ learned position) embedding.  out[b,t,:] = wte[tok[b,t]] + wpe[pos_offset + t]
// Backward adds into dwte and dwpe (wpe may be null: RoPE models have no position table).
#pragma once

#include <cstdint>

namespace flashgpt::ops {

template <typename T>
void embedding_forward(T* out, const int* tokens, const T* wte, const T* wpe, int64_t B, int64_t Tn, int64_t C,
                       int64_t pos_offset);
template <typename T>
void embedding_backward(T* dwte, T* dwpe, const T* dout, const int* tokens, int64_t B, int64_t Tn, int64_t C,
                        int64_t pos_offset = 0);

}  // namespace flashgpt::ops
