// The materialised reference attention: per (batch, head) the full Tq×Tk score matrix is formed
// with BLAS, masked, soft-maxed and multiplied by V. Its backward recomputes the probabilities
// from the saved log-sum-exp, exactly as the flash kernel does, so both share one interface.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/attention_mask.h"
#include "cpu/vec_math.h"
#include "flashgpt/ops/matmul.h"

namespace flashgpt::cpu {

namespace {

// Overwrites the scores of invisible keys in row i with kMaskedScore; returns the visible count.
template <typename T>
int64_t mask_row(const AttentionDims& d, const AttentionMask& m, int64_t b, int64_t i, T* s) {
  const int64_t limit = key_limit(d, m, b, i);
  std::fill(s + limit, s + d.Tk, kMaskedScore<T>);
  if (m.q_segments.empty()) return limit;
  int64_t visible = 0;
  for (int64_t j = 0; j < limit; ++j) {
    if (same_segment(d, m, b, i, j)) {
      ++visible;
    } else {
      s[j] = kMaskedScore<T>;
    }
  }
  return visible;
}

}  // namespace

template <typename T>
void attention_standard_forward(const AttentionDims& d, const AttentionMask& m, T scale, const T* q, const T* k,
                                const T* v, T* o, T* lse) {
  const int64_t group = d.Hq / d.Hkv;
  const int64_t q_row = d.q_row(), k_row = d.k_row(), v_row = d.v_row(), o_row = d.Hq * d.Dv;
  const int64_t kv_rows = d.kv_rows();
#pragma omp parallel num_threads(team_size(attention_work(d)))
  {
    std::vector<T> scores(static_cast<size_t>(d.Tq * d.Tk));
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t b = 0; b < d.B; ++b) {
      for (int64_t h = 0; h < d.Hq; ++h) {
        const int64_t hk = h / group;
        const T* qb = q + b * d.Tq * q_row + h * d.Dqk;
        const T* kb = k + b * kv_rows * k_row + hk * d.Dqk;
        const T* vb = v + b * kv_rows * v_row + hk * d.Dv;
        T* ob = o + b * d.Tq * o_row + h * d.Dv;
        T* lb = lse + (b * d.Hq + h) * d.Tq;
        // S = scale · Q Kᵀ   [Tq, Tk]
        ops::gemm<T>(false, true, d.Tq, d.Tk, d.Dqk, scale, qb, q_row, kb, k_row, T(0), scores.data(), d.Tk);
        for (int64_t i = 0; i < d.Tq; ++i) {
          T* s = scores.data() + i * d.Tk;
          if (mask_row(d, m, b, i, s) == 0) {  // a row that sees nothing outputs zeros
            std::fill(s, s + d.Tk, T(0));
            lb[i] = -std::numeric_limits<T>::infinity();
            continue;
          }
          const T mx = row_max(s, d.Tk);
          const T sum = exp_shifted_sum(s, d.Tk, mx);
          const T inv = T(1) / sum;
          for (int64_t j = 0; j < d.Tk; ++j) s[j] *= inv;
          lb[i] = mx + std::log(sum);
        }
        // O = P V   [Tq, Dv]
        ops::gemm<T>(false, false, d.Tq, d.Dv, d.Tk, T(1), scores.data(), d.Tk, vb, v_row, T(0), ob, o_row);
      }
    }
  }
}

template <typename T>
void attention_standard_backward(const AttentionDims& d, const AttentionMask& m, T scale, const T* q, const T* k,
                                 const T* v, const T* o, const T* lse, const T* dout, T* dq, T* dk, T* dv) {
  const int64_t group = d.Hq / d.Hkv;
  const int64_t q_row = d.q_row(), k_row = d.k_row(), v_row = d.v_row(), o_row = d.Hq * d.Dv;
  const int64_t kv_rows = d.kv_rows();
  // Work is split over (batch, kv head): the query heads of a group all add into the same dk, dv.
#pragma omp parallel num_threads(team_size(attention_work(d)))
  {
    std::vector<T> P(static_cast<size_t>(d.Tq * d.Tk));
    std::vector<T> dP(static_cast<size_t>(d.Tq * d.Tk));
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t b = 0; b < d.B; ++b) {
      for (int64_t hk = 0; hk < d.Hkv; ++hk) {
        const T* kb = k + b * kv_rows * k_row + hk * d.Dqk;
        const T* vb = v + b * kv_rows * v_row + hk * d.Dv;
        T* dkb = dk + b * kv_rows * k_row + hk * d.Dqk;
        T* dvb = dv + b * kv_rows * v_row + hk * d.Dv;
        for (int64_t j = 0; j < d.Tk; ++j) {
          std::fill(dkb + j * k_row, dkb + j * k_row + d.Dqk, T(0));
          std::fill(dvb + j * v_row, dvb + j * v_row + d.Dv, T(0));
        }
        for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
          const T* qb = q + b * d.Tq * q_row + h * d.Dqk;
          const T* ob = o + b * d.Tq * o_row + h * d.Dv;
          const T* dob = dout + b * d.Tq * o_row + h * d.Dv;
          const T* lb = lse + (b * d.Hq + h) * d.Tq;
          T* dqb = dq + b * d.Tq * q_row + h * d.Dqk;
          // P = exp(scale · Q Kᵀ − lse), zero where masked
          ops::gemm<T>(false, true, d.Tq, d.Tk, d.Dqk, scale, qb, q_row, kb, k_row, T(0), P.data(), d.Tk);
          for (int64_t i = 0; i < d.Tq; ++i) {
            T* p = P.data() + i * d.Tk;
            if (mask_row(d, m, b, i, p) == 0) {
              std::fill(p, p + d.Tk, T(0));
              continue;
            }
            exp_shifted_sum(p, d.Tk, lb[i]);
          }
          // dV += Pᵀ dO ;  dP = dO Vᵀ
          ops::gemm<T>(true, false, d.Tk, d.Dv, d.Tq, T(1), P.data(), d.Tk, dob, o_row, T(1), dvb, v_row);
          ops::gemm<T>(false, true, d.Tq, d.Tk, d.Dv, T(1), dob, o_row, vb, v_row, T(0), dP.data(), d.Tk);
          // dS = P ∘ (dP − D),  D_i = Σ_c dO_ic O_ic
          for (int64_t i = 0; i < d.Tq; ++i) {
            T Di = 0;
            for (int64_t c = 0; c < d.Dv; ++c) Di += dob[i * o_row + c] * ob[i * o_row + c];
            T* p = P.data() + i * d.Tk;
            const T* dp = dP.data() + i * d.Tk;
            for (int64_t j = 0; j < d.Tk; ++j) p[j] = p[j] * (dp[j] - Di);
          }
          // dQ = scale · dS K ;  dK += scale · dSᵀ Q
          ops::gemm<T>(false, false, d.Tq, d.Dqk, d.Tk, scale, P.data(), d.Tk, kb, k_row, T(0), dqb, q_row);
          ops::gemm<T>(true, false, d.Tk, d.Dqk, d.Tq, scale, P.data(), d.Tk, qb, q_row, T(1), dkb, k_row);
        }
      }
    }
  }
}

#define FLASHGPT_INSTANTIATE(T)                                                                                   \
  template void attention_standard_forward<T>(const AttentionDims&, const AttentionMask&, T, const T*, const T*, \
                                              const T*, T*, T*);                                                  \
  template void attention_standard_backward<T>(const AttentionDims&, const AttentionMask&, T, const T*, const T*, \
                                               const T*, const T*, const T*, const T*, T*, T*, T*);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(double)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt::cpu
