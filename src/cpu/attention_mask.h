// The visibility rule of AttentionMask and the work measure shared by the CPU attention kernels.
#pragma once

#include <algorithm>

#include "cpu/parallel.h"
#include "flashgpt/attention/attention.h"

namespace flashgpt::cpu {

// Where sequence b's queries sit: query i at absolute position causal_offset + i.
inline int64_t causal_offset(const AttentionMask& m, int64_t b) {
  return m.q_offsets.empty() ? m.q_offset : m.q_offsets[static_cast<size_t>(b)];
}

// Keys [0, key_limit) may be visible to query i of sequence b (causal and padding limits only).
inline int64_t key_limit(const AttentionDims& d, const AttentionMask& m, int64_t b, int64_t i) {
  int64_t limit = d.Tk;
  if (m.causal) limit = std::min(limit, causal_offset(m, b) + i + 1);
  if (!m.kv_lengths.empty()) limit = std::min<int64_t>(limit, m.kv_lengths[b]);
  return std::max<int64_t>(limit, 0);
}

inline bool same_segment(const AttentionDims& d, const AttentionMask& m, int64_t b, int64_t i, int64_t j) {
  return m.q_segments.empty() || m.q_segments[b * d.Tq + i] == m.kv_segments[b * d.kv_rows() + j];
}

// Multiply-adds of every score and output product, unmasked: what cpu::team_size sizes a team by.
inline int64_t attention_work(const AttentionDims& d) { return d.B * d.Hq * d.Tq * d.Tk * (d.Dqk + d.Dv); }

inline bool key_visible(const AttentionDims& d, const AttentionMask& m, int64_t b, int64_t i, int64_t j) {
  return j < key_limit(d, m, b, i) && same_segment(d, m, b, i, j);
}

}  // namespace flashgpt::cpu
