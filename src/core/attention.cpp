// Checks and dispatch for the attention seam; the arithmetic lives in src/cpu/attention_*_cpu.cpp.
#include "flashgpt/attention/attention.h"

#include "flashgpt/core/error.h"

namespace flashgpt {

const char* to_string(AttentionKernel k) { return k == AttentionKernel::Flash ? "flash" : "standard"; }

void check_attention_dims(const AttentionDims& d, const AttentionMask& m, MaskMemory where) {
  FLASHGPT_CHECK(d.B > 0 && d.Tq > 0 && d.Tk > 0, "attention: batch {} / Tq {} / Tk {} must be positive", d.B, d.Tq,
                 d.Tk);
  FLASHGPT_CHECK(d.Hq > 0 && d.Hkv > 0, "attention: head counts must be positive (Hq {}, Hkv {})", d.Hq, d.Hkv);
  FLASHGPT_CHECK(d.Hq % d.Hkv == 0, "attention: Hq {} is not a multiple of Hkv {}", d.Hq, d.Hkv);
  FLASHGPT_CHECK(d.Dqk > 0 && d.Dv > 0, "attention: head dims must be positive (Dqk {}, Dv {})", d.Dqk, d.Dv);
  FLASHGPT_CHECK(d.Tk_stride == 0 || d.Tk_stride >= d.Tk, "attention: Tk_stride {} is smaller than Tk {}",
                 d.Tk_stride, d.Tk);
  FLASHGPT_CHECK(d.k_row_stride == 0 || d.k_row_stride >= d.Hkv * d.Dqk,
                 "attention: key row stride {} is smaller than Hkv·Dqk = {}", d.k_row_stride, d.Hkv * d.Dqk);
  FLASHGPT_CHECK(d.v_row_stride == 0 || d.v_row_stride >= d.Hkv * d.Dv,
                 "attention: value row stride {} is smaller than Hkv·Dv = {}", d.v_row_stride, d.Hkv * d.Dv);
  FLASHGPT_CHECK(d.q_row_stride == 0 || d.q_row_stride >= d.Hq * d.Dqk,
                 "attention: query row stride {} is smaller than Hq·Dqk = {}", d.q_row_stride, d.Hq * d.Dqk);
  FLASHGPT_CHECK(!m.causal || m.q_offset >= 0, "attention: causal q_offset {} is negative", m.q_offset);
  FLASHGPT_CHECK(m.q_segments.empty() == m.kv_segments.empty(),
                 "attention: document masking needs segment ids for both queries and keys");
  FLASHGPT_CHECK(m.q_offsets.empty() || static_cast<int64_t>(m.q_offsets.size()) == d.B,
                 "attention: q_offsets holds {} offsets for a batch of {}", m.q_offsets.size(), d.B);
  for (size_t b = 0; where == MaskMemory::Host && m.causal && b < m.q_offsets.size(); ++b) {
    FLASHGPT_CHECK(m.q_offsets[b] >= 0, "attention: causal q_offsets[{}] = {} is negative", b, m.q_offsets[b]);
  }
  FLASHGPT_CHECK(m.kv_lengths.empty() || static_cast<int64_t>(m.kv_lengths.size()) == d.B,
                 "attention: kv_lengths holds {} lengths for a batch of {}", m.kv_lengths.size(), d.B);
  for (size_t b = 0; where == MaskMemory::Host && b < m.kv_lengths.size(); ++b) {
    FLASHGPT_CHECK(m.kv_lengths[b] >= 0 && m.kv_lengths[b] <= d.Tk, "attention: kv_lengths[{}] = {} is outside [0, Tk = {}]",
                   b, m.kv_lengths[b], d.Tk);
  }
  FLASHGPT_CHECK(m.q_segments.empty() || static_cast<int64_t>(m.q_segments.size()) == d.B * d.Tq,
                 "attention: q_segments holds {} ids, not B·Tq = {}", m.q_segments.size(), d.B * d.Tq);
  FLASHGPT_CHECK(m.kv_segments.empty() || static_cast<int64_t>(m.kv_segments.size()) == d.B * d.kv_rows(),
                 "attention: kv_segments holds {} ids, not B·kv_rows = {}", m.kv_segments.size(), d.B * d.kv_rows());
}

template <typename T>
void attention_forward(AttentionKernel kernel, const AttentionDims& d, const AttentionMask& m, T scale, const T* q,
                       const T* k, const T* v, T* o, T* lse, const AttentionTiling& tiling) {
  check_attention_dims(d, m, MaskMemory::Host);
  switch (kernel) {
    case AttentionKernel::Standard:
      cpu::attention_standard_forward(d, m, scale, q, k, v, o, lse);
      return;
    case AttentionKernel::Flash:
      cpu::attention_flash_forward(d, m, flash_tiles(d, tiling, sizeof(T)), scale, q, k, v, o, lse);
      return;
  }
  fail("attention: unknown kernel");
}

template <typename T>
void attention_backward(AttentionKernel kernel, const AttentionDims& d, const AttentionMask& m, T scale,
                        const T* q, const T* k, const T* v, const T* o, const T* lse, const T* dout, T* dq, T* dk,
                        T* dv, const AttentionTiling& tiling) {
  check_attention_dims(d, m, MaskMemory::Host);
  switch (kernel) {
    case AttentionKernel::Standard:
      cpu::attention_standard_backward(d, m, scale, q, k, v, o, lse, dout, dq, dk, dv);
      return;
    case AttentionKernel::Flash:
      cpu::attention_flash_backward(d, m, flash_tiles(d, tiling, sizeof(T)), scale, q, k, v, o, lse, dout, dq, dk,
                                    dv);
      return;
  }
  fail("attention: unknown kernel");
}

#define FLASHGPT_INSTANTIATE(T)                                                                              \
  template void attention_forward<T>(AttentionKernel, const AttentionDims&, const AttentionMask&, T, const T*, \
                                     const T*, const T*, T*, T*, const AttentionTiling&);                    \
  template void attention_backward<T>(AttentionKernel, const AttentionDims&, const AttentionMask&, T, const T*, \
                                      const T*, const T*, const T*, const T*, const T*, T*, T*, T*,           \
                                      const AttentionTiling&);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(double)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt
