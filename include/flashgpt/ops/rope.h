// Rotary position embedding, half-split pairing (GPT-NeoX / Llama): within each head of width D,
// element i pairs with element i + D/2 and both rotate by angle pos·θ^(−2i/D).
//   y_i       = x_i·cos − x_{i+D/2}·sin
//   y_{i+D/2} = x_i·sin + x_{i+D/2}·cos
// The backward is the inverse rotation of the gradient.
#pragma once

#include <cstdint>
#include <vector>

namespace flashgpt::ops {

// cos/sin tables [max_pos, D/2].
template <typename T>
struct RopeTable {
  int max_pos = 0;
  int half = 0;
  std::vector<T> cos, sin;
  RopeTable() = default;
  RopeTable(int max_pos, int head_dim, double theta);
};

// x: [B, Tn, H, D] in place; token t of every sequence sits at position pos_offset + t.
template <typename T>
void rope_forward(T* x, const RopeTable<T>& table, int64_t B, int64_t Tn, int64_t H, int64_t D, int64_t pos_offset);
template <typename T>
void rope_backward(T* dx, const RopeTable<T>& table, int64_t B, int64_t Tn, int64_t H, int64_t D, int64_t pos_offset);

// The same over the first D elements of heads that sit head_stride apart, rows H·head_stride apart:
// MLA rotates only the rope part of each query head ([q_nope, q_rope]: x = q + d_nope,
// head_stride = d_nope + d_rope) and its one shared rope key.
template <typename T>
void rope_forward_strided(T* x, const RopeTable<T>& table, int64_t B, int64_t Tn, int64_t H, int64_t D,
                          int64_t head_stride, int64_t pos_offset);
template <typename T>
void rope_backward_strided(T* dx, const RopeTable<T>& table, int64_t B, int64_t Tn, int64_t H, int64_t D,
                           int64_t head_stride, int64_t pos_offset);

}  // namespace flashgpt::ops
