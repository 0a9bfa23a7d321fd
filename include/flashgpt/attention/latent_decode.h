// Absorbed latent attention for decoding (FlashMLA's inference path, DeepSeek-V2):
// every query head attends straight over a cache of latent rows [c_kv (n_latent), k_rope (rope_dim)]
// with W_k_up folded into the query and W_v_up into the output,
//   q_abs,h = [W_k_up,hᵀ q_nope,h, q_rope,h]            (n_latent + rope_dim)
//   o_lat,h = attention(q_abs,h, keys = rows, values = rows[:n_latent])   — MQA over the cache
//   att_h   = W_v_up,h o_lat,h                          (head_dim)
// which equals attention over the expanded keys [W_k_up,h c_kv, k_rope] and values W_v_up,h c_kv
// with the softmax scale 1/√(head_dim + rope_dim). The model's decode and `bench decode` both run
// this function.
#pragma once

#include <cstdint>

#include "flashgpt/attention/attention.h"

namespace flashgpt {

struct LatentDecodeDims {
  int64_t B = 1;         // sequences
  int64_t H = 1;         // query heads
  int64_t Tq = 1;        // new tokens per sequence (already in the cache)
  int64_t Tk = 1;        // cached tokens per sequence, the new ones included
  int64_t capacity = 0;  // cache rows per sequence (0: Tk)
  int64_t head_dim = 1, n_latent = 1, rope_dim = 0;
  int64_t row() const { return n_latent + rope_dim; }
};

// q [B·Tq, H, head_dim + rope_dim] (after qk-norm and RoPE); k_up, v_up [H·head_dim, n_latent];
// cache [B, capacity, row]; scratch q_abs [B·Tq, H, row], o_lat [B·Tq, H, n_latent], lse [B, H, Tq];
// writes att [B·Tq, H, head_dim]. Causal with the new tokens at positions Tk − Tq … Tk − 1.
template <typename T>
void latent_attention_decode(AttentionKernel kernel, const LatentDecodeDims& d, const T* q, const T* k_up,
                             const T* v_up, const T* cache, T* q_abs, T* o_lat, T* lse, T* att,
                             const AttentionTiling& tiling = {});

}  // namespace flashgpt
