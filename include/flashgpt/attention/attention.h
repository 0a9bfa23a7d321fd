// The attention seam: every attention kernel (the materialised reference today; the flash and
// latent kernels of the attention family behind the same call) computes
//   o = softmax(scale · q kᵀ + mask) v,   lse = log Σ_j exp(scale · q kᵀ + mask)   (per query row)
// and its backward from (q, k, v, o, lse, do) alone, so kernels are interchangeable.
//
// Layouts (row-major, last dimension contiguous):
//   q  [B, Tq, Hq, Dqk]        o  [B, Tq, Hq, Dv]       lse [B, Hq, Tq]
//   k  [B, Tk_stride, Hkv, Dqk] v  [B, Tk_stride, Hkv, Dv]   (only the first Tk rows are read;
//                                Tk_stride ≥ Tk lets a KV cache of larger capacity be used in place)
// Query head h reads key/value head h / (Hq / Hkv): grouped-query attention, MQA when Hkv = 1.
#pragma once

#include <cstdint>

namespace flashgpt {

enum class AttentionKernel { Standard };

struct AttentionDims {
  int64_t B = 1, Hq = 1, Hkv = 1, Tq = 1, Tk = 1, Dqk = 1, Dv = 1;
  int64_t Tk_stride = 0;  // 0: same as Tk
  int64_t kv_rows() const { return Tk_stride > 0 ? Tk_stride : Tk; }
};

struct AttentionMask {
  // Causal, aligned at q_offset: query i sits at absolute position q_offset + i and sees keys
  // 0 … q_offset + i (decoding with a cache uses q_offset = Tk − Tq).
  bool causal = true;
  int64_t q_offset = 0;
};

// Throws flashgpt::Error naming the bad size when the dims are inconsistent.
void check_attention_dims(const AttentionDims& d, const AttentionMask& m);

template <typename T>
void attention_forward(AttentionKernel kernel, const AttentionDims& d, const AttentionMask& m, T scale, const T* q,
                       const T* k, const T* v, T* o, T* lse);

// dq, dk, dv are written (not accumulated).
template <typename T>
void attention_backward(AttentionKernel kernel, const AttentionDims& d, const AttentionMask& m, T scale,
                        const T* q, const T* k, const T* v, const T* o, const T* lse, const T* dout, T* dq, T* dk,
                        T* dv);

namespace cpu {
template <typename T>
void attention_standard_forward(const AttentionDims& d, const AttentionMask& m, T scale, const T* q, const T* k,
                                const T* v, T* o, T* lse);
template <typename T>
void attention_standard_backward(const AttentionDims& d, const AttentionMask& m, T scale, const T* q, const T* k,
                                 const T* v, const T* o, const T* lse, const T* dout, T* dq, T* dk, T* dv);
}  // namespace cpu

}  // namespace flashgpt
