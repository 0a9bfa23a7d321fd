// The attention seam: every attention kernel (the materialised reference today; the flash and
// latent kernels of the attention family behind the same call) computes
//   o = softmax(scale · q kᵀ + mask) v,   lse = log Σ_j exp(scale · q kᵀ + mask)   (per query row)
// and its backward from (q, k, v, o, lse, do) alone, so kernels are interchangeable.
//
// Layouts (row-major, last dimension contiguous):
//   q  [B, Tq, Hq, Dqk]        o  [B, Tq, Hq, Dv]       lse [B, Hq, Tq]
//   k  [B, Tk_stride, Hkv, Dqk] v  [B, Tk_stride, Hkv, Dv]   (only the first Tk rows are read;
//                                Tk_stride ≥ Tk lets a KV cache of larger capacity be used in place)
//   k_row_stride / v_row_stride (elements from one key/value token to the next; 0: Hkv·Dqk and
//   Hkv·Dv) let k and v be views into wider rows — absorbed MLA decode reads keys [c_kv, k_rope]
//   and values c_kv out of the same latent cache rows. q_row_stride (0: Hq·Dqk) does the same for
//   q: q, k and v may be the three column blocks of one fused projection's [B, T, Hq·Dqk +
//   Hkv·(Dqk + Dv)] rows. The backward writes dq, dk and dv with the same strides as q, k and v
//   (so into one such buffer of gradients); o, do and lse stay dense.
// Query head h reads key/value head h / (Hq / Hkv): grouped-query attention, MQA when Hkv = 1.
//
// Kernels:
//   Standard — the materialised reference: the whole Tq×Tk score matrix per (batch, head).
//   Flash    — FlashAttention-2 (Dao 2023): tiles of queries against tiles of keys with an online
//              softmax; the forward saves only lse, the backward recomputes each tile's
//              probabilities from it after a D = rowsum(dO ∘ O) pre-pass; tiles wholly masked are
//              skipped; extra memory is O(tile) per thread, never Tq×Tk.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace flashgpt {

enum class AttentionKernel { Standard, Flash };

const char* to_string(AttentionKernel k);

struct AttentionDims {
  int64_t B = 1, Hq = 1, Hkv = 1, Tq = 1, Tk = 1, Dqk = 1, Dv = 1;
  int64_t Tk_stride = 0;  // 0: same as Tk
  int64_t k_row_stride = 0;  // 0: Hkv·Dqk
  int64_t v_row_stride = 0;  // 0: Hkv·Dv
  int64_t q_row_stride = 0;  // 0: Hq·Dqk
  int64_t kv_rows() const { return Tk_stride > 0 ? Tk_stride : Tk; }
  int64_t q_row() const { return q_row_stride > 0 ? q_row_stride : Hq * Dqk; }
  int64_t k_row() const { return k_row_stride > 0 ? k_row_stride : Hkv * Dqk; }
  int64_t v_row() const { return v_row_stride > 0 ? v_row_stride : Hkv * Dv; }
};

// Key j is visible to query i of sequence b when every mask present allows it:
//   causal     — j ≤ q_offset + i: query i sits at absolute position q_offset + i (decoding with a
//                cache uses q_offset = Tk − Tq); with q_offsets, sequence b's offset is
//                q_offsets[b] (sequences of different lengths decoding several tokens at once);
//   kv_lengths — j < kv_lengths[b]: keys beyond a sequence's length are padding;
//   segments   — q_segments[b·Tq + i] == kv_segments[b·kv_rows + j]: packed documents attend only
//                within themselves (document masking).
// A query that sees no key outputs zeros and lse = −∞.
struct AttentionMask {
  bool causal = true;
  int64_t q_offset = 0;
  // Empty: that mask is off. Sizes are checked: B, B·Tq and B·kv_rows.
  std::span<const int32_t> q_offsets{};    // [B], replacing q_offset
  std::span<const int32_t> kv_lengths{};   // [B]
  std::span<const int32_t> q_segments{};   // [B, Tq]
  std::span<const int32_t> kv_segments{};  // [B, kv_rows]
};

// Tile sizes of the flash kernel; 0 chooses from the cache sizes.
struct AttentionTiling {
  int64_t block_q = 0;
  int64_t block_kv = 0;
};

// Where the mask's arrays (q_offsets, kv_lengths, segment ids) live. Host code may read them only on the host:
// the GPU entry points check their sizes alone (on a GPU a host read of device memory faults), and
// their kernels treat a length beyond Tk as Tk and a negative offset as hiding every key.
enum class MaskMemory { Host, Device };

// Throws flashgpt::Error naming the bad size (or, for a mask on the host, the bad length) when the
// dims and mask are inconsistent.
void check_attention_dims(const AttentionDims& d, const AttentionMask& m, MaskMemory where);

template <typename T>
void attention_forward(AttentionKernel kernel, const AttentionDims& d, const AttentionMask& m, T scale, const T* q,
                       const T* k, const T* v, T* o, T* lse, const AttentionTiling& tiling = {});

// dq, dk, dv are written (not accumulated); dk and dv rows at or beyond Tk are left alone.
template <typename T>
void attention_backward(AttentionKernel kernel, const AttentionDims& d, const AttentionMask& m, T scale,
                        const T* q, const T* k, const T* v, const T* o, const T* lse, const T* dout, T* dq, T* dk,
                        T* dv, const AttentionTiling& tiling = {});

// The tile sizes the flash kernel uses for these dims (after automatic choice).
AttentionTiling flash_tiles(const AttentionDims& d, const AttentionTiling& requested, size_t element_bytes);

namespace cpu {
template <typename T>
void attention_standard_forward(const AttentionDims& d, const AttentionMask& m, T scale, const T* q, const T* k,
                                const T* v, T* o, T* lse);
template <typename T>
void attention_standard_backward(const AttentionDims& d, const AttentionMask& m, T scale, const T* q, const T* k,
                                 const T* v, const T* o, const T* lse, const T* dout, T* dq, T* dk, T* dv);
template <typename T>
void attention_flash_forward(const AttentionDims& d, const AttentionMask& m, const AttentionTiling& tiles, T scale,
                             const T* q, const T* k, const T* v, T* o, T* lse);
template <typename T>
void attention_flash_backward(const AttentionDims& d, const AttentionMask& m, const AttentionTiling& tiles, T scale,
                              const T* q, const T* k, const T* v, const T* o, const T* lse, const T* dout, T* dq,
                              T* dk, T* dv);
}  // namespace cpu

}  // namespace flashgpt
