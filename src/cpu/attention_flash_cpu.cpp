// FlashAttention-2 on the CPU. The tile products run on the AVX-512 tile kernel (tile_gemm.h) in
// fp32 where the CPU has it, on BLAS otherwise. Forward: with the tile kernel each thread takes one
// (batch, head) and loops key/value tiles outermost over cache-sized sweeps of query tiles
// (flash_forward_kv_outer); else one (batch, head, query tile) each. Backward: one (batch, kv
// head) per thread. The scores of one tile pair, one transposed key (and value) tile and two
// numbers per query row are all the extra memory a thread holds, never a Tq × Tk matrix.
//
// Forward, for a query tile Q_i against key/value tiles K_j, V_j (Dao 2023, Algorithm 1):
//   S = scale·Q_i K_jᵀ;  m' = max(m, rowmax S);  P = exp(S − m');  l = e^{m−m'}·l + rowsum P
//   O = e^{m−m'}·O + P V_j;   finally O /= l and lse = m + log l.
// Backward (Algorithm 2), with D = rowsum(dO ∘ O) first:
//   P = exp(scale·Q_i K_jᵀ − lse);  dV_j += Pᵀ dO_i;  dP = dO_i V_jᵀ;  dS = P ∘ (dP − D)
//   dQ_i += scale·dS K_j;  dK_j += scale·dSᵀ Q_i.
// Tile pairs that the mask hides entirely are skipped.
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/attention_mask.h"
#include "cpu/tile_gemm.h"
#include "cpu/vec_math.h"
#include "flashgpt/core/error.h"
#include "flashgpt/ops/matmul.h"

namespace flashgpt {

AttentionTiling flash_tiles(const AttentionDims& d, const AttentionTiling& requested, size_t element_bytes) {
  FLASHGPT_CHECK(requested.block_q >= 0 && requested.block_kv >= 0, "--flash-block-q/--flash-block-kv: must be ≥ 0");
  long l2 = ::sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (l2 <= 0) l2 = 1 << 20;
  // Q, K and V tiles, the score and gradient tiles, and the output accumulator should fit in half
  // of L2, leaving room for BLAS's packed panels.
  auto working_set = [&](int64_t bq, int64_t bkv) {
    return static_cast<long>((bq * d.Dqk + bkv * (d.Dqk + d.Dv) + 2 * bq * bkv + bq * d.Dv) * element_bytes);
  };
  AttentionTiling t = requested;
  if (t.block_q == 0) t.block_q = 64;
  if (t.block_kv == 0) {
    t.block_kv = 256;
    while (t.block_kv > 32 && working_set(t.block_q, t.block_kv) > l2 / 2) t.block_kv /= 2;
  }
  t.block_q = std::clamp<int64_t>(t.block_q, 1, d.Tq);
  t.block_kv = std::clamp<int64_t>(t.block_kv, 1, d.Tk);
  return t;
}

namespace cpu {

namespace {

struct SegmentRange {
  int32_t lo = std::numeric_limits<int32_t>::max(), hi = std::numeric_limits<int32_t>::min();
  bool overlaps(const SegmentRange& o) const { return lo <= o.hi && o.lo <= hi; }
};

SegmentRange segment_range(const int32_t* seg, int64_t n) {
  SegmentRange r;
  for (int64_t i = 0; i < n; ++i) {
    r.lo = std::min(r.lo, seg[i]);
    r.hi = std::max(r.hi, seg[i]);
  }
  return r;
}

// Where the keys a query tile [i0, i0 + br) of sequence b can see end (exclusive).
int64_t tile_key_end(const AttentionDims& d, const AttentionMask& m, int64_t b, int64_t i0, int64_t br) {
  return key_limit(d, m, b, i0 + br - 1);  // the limit only grows with i
}

// True when no key of [j0, j0 + bc) is visible to any query of [i0, i0 + br).
bool tile_hidden(const AttentionDims& d, const AttentionMask& m, int64_t b, int64_t i0, int64_t br, int64_t j0,
                 int64_t bc) {
  if (j0 >= tile_key_end(d, m, b, i0, br)) return true;
  if (m.q_segments.empty()) return false;
  const SegmentRange qr = segment_range(m.q_segments.data() + b * d.Tq + i0, br);
  const SegmentRange kr = segment_range(m.kv_segments.data() + b * d.kv_rows() + j0, bc);
  return !qr.overlaps(kr);
}

// Decoding-sized grouped queries (Tq · group rows at most) take the packed path.
constexpr int64_t kMaxPackedRows = 256;

// Masks tile S [br, bc] (leading dim lds) in place; true when some entry was masked.
template <typename T>
void mask_tile(const AttentionDims& d, const AttentionMask& m, int64_t b, int64_t i0, int64_t br, int64_t j0,
               int64_t bc, T* S, int64_t lds) {
  if (m.q_segments.empty() && j0 + bc <= key_limit(d, m, b, i0)) return;  // wholly visible
  for (int64_t r = 0; r < br; ++r) {
    const int64_t limit = key_limit(d, m, b, i0 + r);
    T* s = S + r * lds;
    for (int64_t c = 0; c < bc; ++c) {
      if (j0 + c >= limit || !same_segment(d, m, b, i0 + r, j0 + c)) s[c] = kMaskedScore<T>;
    }
  }
}

// Packed grouped-query forward, for decoding (few queries, many heads per key/value head): the
// query rows of every head that shares a key/value head form one tile — row r is query token
// r / group of head hk·group + r % group — so each key/value tile is read once per group and
// multiplied as one GEMM instead of `group` GEMVs. With few such tiles to go round, the key range
// is split across threads (flash-decoding) and the partial softmax states (m, l, unnormalised O)
// are combined at the end:  M = max m_s,  L = Σ l_s·e^{m_s−M},  O = Σ O_s·e^{m_s−M} / L.
template <typename T>
void flash_forward_packed(const AttentionDims& d, const AttentionMask& m, const AttentionTiling& tiles, T scale,
                          const T* q, const T* k, const T* v, T* o, T* lse) {
  const int64_t group = d.Hq / d.Hkv, rows = d.Tq * group;
  const int64_t q_row = d.q_row(), k_row = d.k_row(), v_row = d.v_row(), o_row = d.Hq * d.Dv;
  const int64_t kv_rows = d.kv_rows(), Bc = tiles.block_kv;
  const int64_t items = d.B * d.Hkv;
  int64_t key_end_max = 0;  // splits share out the longest sequence's keys
  for (int64_t b = 0; b < d.B; ++b) key_end_max = std::max(key_end_max, tile_key_end(d, m, b, 0, d.Tq));
  const int64_t key_tiles = (key_end_max + Bc - 1) / Bc;
  const int team = team_size(attention_work(d));
  int64_t splits = 1;
  if (items < 2 * team) splits = std::clamp<int64_t>((2 * team + items - 1) / items, 1, std::max<int64_t>(key_tiles, 1));
  const int64_t tiles_per_split = (std::max<int64_t>(key_tiles, 1) + splits - 1) / splits;
  // Partial states per (item, split): m and l per row, then the unnormalised output.
  const int64_t part = rows * (2 + d.Dv);
  std::vector<T> partial(static_cast<size_t>(items * splits * part));
#pragma omp parallel num_threads(team)
  {
    std::vector<T> Qp(static_cast<size_t>(rows * d.Dqk)), S(static_cast<size_t>(rows * Bc));
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      for (int64_t sp = 0; sp < splits; ++sp) {
        const int64_t b = item / d.Hkv, hk = item % d.Hkv;
        for (int64_t i = 0; i < d.Tq; ++i) {  // pack the group's query rows
          const T* src = q + (b * d.Tq + i) * q_row + hk * group * d.Dqk;
          std::copy(src, src + group * d.Dqk, Qp.data() + i * group * d.Dqk);
        }
        T* row_m = partial.data() + (item * splits + sp) * part;
        T* row_l = row_m + rows;
        T* acc = row_l + rows;
        std::fill(row_m, row_m + rows, kMaskedScore<T>);
        std::fill(row_l, row_l + rows, T(0));
        std::fill(acc, acc + rows * d.Dv, T(0));
        const T* kb = k + b * kv_rows * k_row + hk * d.Dqk;
        const T* vb = v + b * kv_rows * v_row + hk * d.Dv;
        const int64_t key_end = std::min(tile_key_end(d, m, b, 0, d.Tq), (sp + 1) * tiles_per_split * Bc);
        for (int64_t j0 = sp * tiles_per_split * Bc; j0 < key_end; j0 += Bc) {
          const int64_t bc = std::min(Bc, key_end - j0);
          if (tile_hidden(d, m, b, 0, d.Tq, j0, bc)) continue;
          ops::gemm<T>(false, true, rows, bc, d.Dqk, scale, Qp.data(), d.Dqk, kb + j0 * k_row, k_row, T(0), S.data(),
                       Bc);
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t i = r / group;
            T* s = S.data() + r * Bc;
            const int64_t limit = key_limit(d, m, b, i);
            for (int64_t c = 0; c < bc; ++c) {
              if (j0 + c >= limit || !same_segment(d, m, b, i, j0 + c)) s[c] = kMaskedScore<T>;
            }
            const T m_new = std::max(row_m[r], row_max(s, bc));
            if (m_new <= kMaskedScore<T>) {
              std::fill(s, s + bc, T(0));
              continue;
            }
            const T alpha = std::exp(row_m[r] - m_new);
            row_l[r] = row_l[r] * alpha + exp_shifted_sum(s, bc, m_new);
            row_m[r] = m_new;
            if (alpha != T(1)) {
              T* a = acc + r * d.Dv;
              for (int64_t c = 0; c < d.Dv; ++c) a[c] *= alpha;
            }
          }
          ops::gemm<T>(false, false, rows, d.Dv, bc, T(1), S.data(), Bc, vb + j0 * v_row, v_row, T(1), acc, d.Dv);
        }
      }
    }
    // Combine the splits of every row.
#pragma omp for collapse(2) schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t b = item / d.Hkv, hk = item % d.Hkv, i = r / group, h = hk * group + r % group;
        T M = kMaskedScore<T>;
        for (int64_t sp = 0; sp < splits; ++sp) {
          const T* pm = partial.data() + (item * splits + sp) * part;
          if (pm[rows + r] > T(0)) M = std::max(M, pm[r]);
        }
        T* out = o + (b * d.Tq + i) * o_row + h * d.Dv;
        T& l_out = lse[(b * d.Hq + h) * d.Tq + i];
        if (M <= kMaskedScore<T>) {  // the row saw no key
          std::fill(out, out + d.Dv, T(0));
          l_out = -std::numeric_limits<T>::infinity();
          continue;
        }
        std::fill(out, out + d.Dv, T(0));
        T L = 0;
        for (int64_t sp = 0; sp < splits; ++sp) {
          const T* pm = partial.data() + (item * splits + sp) * part;
          const T l_s = pm[rows + r];
          if (l_s <= T(0)) continue;
          const T w = std::exp(pm[r] - M);
          L += l_s * w;
          const T* a = pm + 2 * rows + r * d.Dv;
          for (int64_t c = 0; c < d.Dv; ++c) out[c] += w * a[c];
        }
        const T inv = T(1) / L;
        for (int64_t c = 0; c < d.Dv; ++c) out[c] *= inv;
        l_out = M + std::log(L);
      }
    }
  }
}

}  // namespace

// Query rows per sweep of the key/value-outer loops: as many as keep their Q, O (or dO, dQ) rows
// in half of L2, so each key tile's sweep reads them from cache. A whole number of query tiles.
int64_t query_sweep_rows(int64_t Br, int64_t row_floats) {
  long l2 = ::sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (l2 <= 0) l2 = 1 << 20;
  const int64_t rows = static_cast<int64_t>(l2 / 2) / (row_floats * static_cast<int64_t>(sizeof(float)));
  return std::max<int64_t>(Br, rows / Br * Br);
}

// dst[r·width + c] = src[r·src_row + c]: n strided rows made contiguous, so the tile kernel's
// loads run through consecutive cache lines and pages.
void copy_rows(const float* src, int64_t src_row, int64_t n, int64_t width, float* dst) {
  for (int64_t r = 0; r < n; ++r) std::copy(src + r * src_row, src + r * src_row + width, dst + r * width);
}

// The fp32 forward on the AVX-512 tile kernel, key/value tiles outermost: each thread takes one
// (batch, head), transposes each key tile once (Kᵀ_j, the kernel's B operand) and sweeps every
// query tile that sees it, keeping the online-softmax state (m, l) of every row of the head and
// accumulating O straight in the output rows. Per row the tiles arrive in the same order as in
// the query-outer loop, so the arithmetic is the same; extra memory is one key tile, one score
// tile and two numbers per query row.
void flash_forward_kv_outer(const AttentionDims& d, const AttentionMask& m, const AttentionTiling& tiles, float scale,
                            const float* q, const float* k, const float* v, float* o, float* lse) {
  const int64_t group = d.Hq / d.Hkv;
  const int64_t q_row = d.q_row(), k_row = d.k_row(), v_row = d.v_row(), o_row = d.Hq * d.Dv;
  const int64_t kv_rows = d.kv_rows();
  const int64_t Br = tiles.block_q, Bc = tiles.block_kv;
  const int64_t sweep = query_sweep_rows(Br, d.Dqk + d.Dv);
#pragma omp parallel num_threads(team_size(attention_work(d)))
  {
    std::vector<float> Kt(static_cast<size_t>(d.Dqk * Bc)), S(static_cast<size_t>(Br * Bc));
    std::vector<float> Vc(static_cast<size_t>(Bc * d.Dv)), Qc(static_cast<size_t>(Br * d.Dqk));
    std::vector<float> row_m(static_cast<size_t>(d.Tq)), row_l(static_cast<size_t>(d.Tq));
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t b = 0; b < d.B; ++b) {
      for (int64_t h = 0; h < d.Hq; ++h) {
        const int64_t hk = h / group;
        const float* Qb = q + b * d.Tq * q_row + h * d.Dqk;
        const float* kb = k + b * kv_rows * k_row + hk * d.Dqk;
        const float* vb = v + b * kv_rows * v_row + hk * d.Dv;
        float* Ob = o + b * d.Tq * o_row + h * d.Dv;
        std::fill(row_m.begin(), row_m.end(), kMaskedScore<float>);
        std::fill(row_l.begin(), row_l.end(), 0.0f);
        for (int64_t i = 0; i < d.Tq; ++i) std::fill(Ob + i * o_row, Ob + i * o_row + d.Dv, 0.0f);
        for (int64_t s0 = 0; s0 < d.Tq; s0 += sweep) {  // a sweep of query rows that stays in cache
          const int64_t s1 = std::min(d.Tq, s0 + sweep);
          const int64_t key_end = tile_key_end(d, m, b, s0, s1 - s0);
        for (int64_t j0 = 0; j0 < key_end; j0 += Bc) {
          const int64_t bc = std::min(Bc, key_end - j0);
          bool packed = false;
          for (int64_t i0 = s0; i0 < s1; i0 += Br) {
            const int64_t br = std::min(Br, s1 - i0);
            if (tile_hidden(d, m, b, i0, br, j0, bc)) continue;
            if (!packed) {
              transpose_rows(kb + j0 * k_row, k_row, bc, d.Dqk, Kt.data(), bc);
              copy_rows(vb + j0 * v_row, v_row, bc, d.Dv, Vc.data());
              packed = true;
            }
            copy_rows(Qb + i0 * q_row, q_row, br, d.Dqk, Qc.data());
            tile_gemm(br, bc, d.Dqk, scale, Qc.data(), d.Dqk, 1, Kt.data(), bc, S.data(), Bc, false);
            mask_tile(d, m, b, i0, br, j0, bc, S.data(), Bc);
            for (int64_t r = 0; r < br; ++r) {
              float* s = S.data() + r * Bc;
              float& rm = row_m[static_cast<size_t>(i0 + r)];
              float& rl = row_l[static_cast<size_t>(i0 + r)];
              const float m_new = std::max(rm, row_max(s, bc));
              if (m_new <= kMaskedScore<float>) {  // nothing visible in this row yet
                std::fill(s, s + bc, 0.0f);
                continue;
              }
              const float alpha = std::exp(rm - m_new);  // 0 while the row had seen nothing
              rl = rl * alpha + exp_shifted_sum(s, bc, m_new);
              rm = m_new;
              if (alpha != 1.0f) {
                float* out = Ob + (i0 + r) * o_row;
                for (int64_t c = 0; c < d.Dv; ++c) out[c] *= alpha;
              }
            }
            // O_i += P V_j
            tile_gemm(br, d.Dv, bc, 1.0f, S.data(), Bc, 1, Vc.data(), d.Dv, Ob + i0 * o_row, o_row, true);
          }
        }
        }
        float* lb = lse + (b * d.Hq + h) * d.Tq;
        for (int64_t i = 0; i < d.Tq; ++i) {
          float* out = Ob + i * o_row;
          const float l = row_l[static_cast<size_t>(i)];
          if (l == 0.0f) {  // the row saw no key
            std::fill(out, out + d.Dv, 0.0f);
            lb[i] = -std::numeric_limits<float>::infinity();
            continue;
          }
          const float inv = 1.0f / l;
          for (int64_t c = 0; c < d.Dv; ++c) out[c] *= inv;
          lb[i] = row_m[static_cast<size_t>(i)] + std::log(l);
        }
      }
    }
  }
}

// The key/value-outer forward pays off once every thread has whole heads of full query tiles to
// work on; decoding (a few queries against a long cache) keeps the query-outer loop, which reads
// each key once without transposing it.
bool use_tile_kernel(const AttentionDims& d, int64_t block_q) {
  return tile_gemm_available() && d.Tq >= block_q && d.B * d.Hq >= 2 * static_cast<int64_t>(omp_get_max_threads());
}

template <typename T>
void attention_flash_forward(const AttentionDims& d, const AttentionMask& m, const AttentionTiling& tiles, T scale,
                             const T* q, const T* k, const T* v, T* o, T* lse) {
  const int64_t group = d.Hq / d.Hkv;
  if (group > 1 && d.Tq * group <= kMaxPackedRows) {
    flash_forward_packed(d, m, tiles, scale, q, k, v, o, lse);
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    if (use_tile_kernel(d, tiles.block_q)) {
      flash_forward_kv_outer(d, m, tiles, scale, q, k, v, o, lse);
      return;
    }
  }
  const int64_t q_row = d.q_row(), k_row = d.k_row(), v_row = d.v_row(), o_row = d.Hq * d.Dv;
  const int64_t kv_rows = d.kv_rows();
  const int64_t Br = tiles.block_q, Bc = tiles.block_kv;
  const int64_t n_qt = (d.Tq + Br - 1) / Br;
#pragma omp parallel num_threads(team_size(attention_work(d)))
  {
    std::vector<T> S(static_cast<size_t>(Br * Bc)), acc(static_cast<size_t>(Br * d.Dv));
    std::vector<T> row_m(static_cast<size_t>(Br)), row_l(static_cast<size_t>(Br));
#pragma omp for collapse(3) schedule(dynamic, 1)
    for (int64_t b = 0; b < d.B; ++b) {
      for (int64_t h = 0; h < d.Hq; ++h) {
        for (int64_t qt = 0; qt < n_qt; ++qt) {
          const int64_t i0 = qt * Br, br = std::min(Br, d.Tq - i0), hk = h / group;
          const T* Qi = q + (b * d.Tq + i0) * q_row + h * d.Dqk;
          const T* kb = k + b * kv_rows * k_row + hk * d.Dqk;
          const T* vb = v + b * kv_rows * v_row + hk * d.Dv;
          std::fill(row_m.begin(), row_m.end(), kMaskedScore<T>);
          std::fill(row_l.begin(), row_l.end(), T(0));
          std::fill(acc.begin(), acc.end(), T(0));
          const int64_t key_end = tile_key_end(d, m, b, i0, br);
          for (int64_t j0 = 0; j0 < key_end; j0 += Bc) {
            const int64_t bc = std::min(Bc, key_end - j0);
            if (tile_hidden(d, m, b, i0, br, j0, bc)) continue;
            ops::gemm<T>(false, true, br, bc, d.Dqk, scale, Qi, q_row, kb + j0 * k_row, k_row, T(0), S.data(), Bc);
            mask_tile(d, m, b, i0, br, j0, bc, S.data(), Bc);
            for (int64_t r = 0; r < br; ++r) {
              T* s = S.data() + r * Bc;
              const T m_new = std::max(row_m[r], row_max(s, bc));
              if (m_new <= kMaskedScore<T>) {  // nothing visible in this row yet
                std::fill(s, s + bc, T(0));
                continue;
              }
              const T alpha = std::exp(row_m[r] - m_new);  // 0 while the row had seen nothing
              const T sum = exp_shifted_sum(s, bc, m_new);
              row_l[r] = row_l[r] * alpha + sum;
              row_m[r] = m_new;
              if (alpha != T(1)) {
                T* a = acc.data() + r * d.Dv;
                for (int64_t c = 0; c < d.Dv; ++c) a[c] *= alpha;
              }
            }
            // acc += P V_j
            ops::gemm<T>(false, false, br, d.Dv, bc, T(1), S.data(), Bc, vb + j0 * v_row, v_row, T(1), acc.data(),
                         d.Dv);
          }
          T* Oi = o + (b * d.Tq + i0) * o_row + h * d.Dv;
          T* li = lse + (b * d.Hq + h) * d.Tq + i0;
          for (int64_t r = 0; r < br; ++r) {
            T* out = Oi + r * o_row;
            if (row_l[r] == T(0)) {  // the row saw no key
              std::fill(out, out + d.Dv, T(0));
              li[r] = -std::numeric_limits<T>::infinity();
              continue;
            }
            const T inv = T(1) / row_l[r];
            const T* a = acc.data() + r * d.Dv;
            for (int64_t c = 0; c < d.Dv; ++c) out[c] = a[c] * inv;
            li[r] = row_m[r] + std::log(row_l[r]);
          }
        }
      }
    }
  }
}

// One backward tile pair on the AVX-512 tile kernel (fp32): the products of Algorithm 2 with
// Kᵀ_j and Vᵀ_j already transposed, Pᵀ and dSᵀ read through the kernel's strides.
void backward_tile_f32(const AttentionDims& d, const AttentionMask& m, int64_t b, int64_t i0, int64_t br, int64_t j0,
                       int64_t bc, float scale, const float* Qi, const float* Kj, const float* Kt, const float* Vt,
                       const float* dOi, const float* lse, const float* D, float* P, float* dP, int64_t ld,
                       float* dQi, int64_t dq_row, float* dKj, int64_t dk_row, float* dVj, int64_t dv_row) {
  // Operands packed contiguous: Q_i [br, Dqk], K_j [bc, Dqk], dO_i [br, Dv], Kᵀ_j and Vᵀ_j [D, bc].
  const int64_t Dqk = d.Dqk, Dv = d.Dv;
  // P = exp(scale · Q_i K_jᵀ − lse)
  tile_gemm(br, bc, Dqk, scale, Qi, Dqk, 1, Kt, bc, P, ld, false);
  mask_tile(d, m, b, i0, br, j0, bc, P, ld);
  for (int64_t r = 0; r < br; ++r) {
    float* p = P + r * ld;
    if (!std::isfinite(lse[r])) {  // the row saw no key at all
      std::fill(p, p + bc, 0.0f);
      continue;
    }
    exp_shifted_sum(p, bc, lse[r]);
  }
  // dV_j += Pᵀ dO_i ;  dP = dO_i V_jᵀ
  tile_gemm(bc, Dv, br, 1.0f, P, 1, ld, dOi, Dv, dVj, dv_row, true);
  tile_gemm(br, bc, Dv, 1.0f, dOi, Dv, 1, Vt, bc, dP, ld, false);
  // dS = P ∘ (dP − D)
  for (int64_t r = 0; r < br; ++r) {
    float* p = P + r * ld;
    const float* dp = dP + r * ld;
    const float Di = D[r];
    for (int64_t c = 0; c < bc; ++c) p[c] *= dp[c] - Di;
  }
  // dQ_i += scale · dS K_j ;  dK_j += scale · dSᵀ Q_i
  tile_gemm(br, Dqk, bc, scale, P, ld, 1, Kj, Dqk, dQi, dq_row, true);
  tile_gemm(bc, Dqk, br, scale, P, 1, ld, Qi, Dqk, dKj, dk_row, true);
}

template <typename T>
void attention_flash_backward(const AttentionDims& d, const AttentionMask& m, const AttentionTiling& tiles, T scale,
                              const T* q, const T* k, const T* v, const T* o, const T* lse, const T* dout, T* dq,
                              T* dk, T* dv) {
  const int64_t group = d.Hq / d.Hkv;
  const int64_t q_row = d.q_row(), k_row = d.k_row(), v_row = d.v_row(), o_row = d.Hq * d.Dv;
  const int64_t kv_rows = d.kv_rows();
  const int64_t Br = tiles.block_q, Bc = tiles.block_kv;
  // Each (batch, kv head) belongs to one thread: it alone writes that head's dK, dV and the dQ of
  // its query heads, so no accumulation is shared and results do not depend on scheduling.
  // fp32 on an AVX-512 CPU: the tile kernel, with Kᵀ_j and Vᵀ_j transposed once per key tile.
  bool tile_kernel = false;
  if constexpr (std::is_same_v<T, float>) tile_kernel = tile_gemm_available();
  // One sweep over all query rows per key tile: sweeping cache-sized blocks (as the forward does)
  // re-transposes Kᵀ_j and Vᵀ_j per block and measured no faster here (BENCHMARKS.md).
  const int64_t sweep = d.Tq;
#pragma omp parallel num_threads(team_size(attention_work(d)))
  {
    std::vector<T> P(static_cast<size_t>(Br * Bc)), dP(static_cast<size_t>(Br * Bc)), D(static_cast<size_t>(d.Tq));
    const size_t kv_tile = tile_kernel ? static_cast<size_t>(std::max(d.Dqk, d.Dv) * Bc) : 0;
    const size_t q_tile = tile_kernel ? static_cast<size_t>(std::max(d.Dqk, d.Dv) * Br) : 0;
    std::vector<T> Kt(kv_tile), Vt(kv_tile), Kc(kv_tile), Qc(q_tile), dOc(q_tile);
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
          for (int64_t i = 0; i < d.Tq; ++i) {  // pre-pass: D_i = Σ_c dO_ic O_ic, and dQ = 0
            T Di = 0;
            for (int64_t c = 0; c < d.Dv; ++c) Di += dob[i * o_row + c] * ob[i * o_row + c];
            D[static_cast<size_t>(i)] = Di;
            std::fill(dqb + i * q_row, dqb + i * q_row + d.Dqk, T(0));
          }
          for (int64_t s0 = 0; s0 < d.Tq; s0 += sweep) {  // query rows whose Q, dO, dQ stay in cache
            const int64_t s1 = std::min(d.Tq, s0 + sweep);
          for (int64_t j0 = 0; j0 < d.Tk; j0 += Bc) {
            const int64_t bc = std::min(Bc, d.Tk - j0);
            bool packed = false;
            for (int64_t i0 = s0; i0 < s1; i0 += Br) {
              const int64_t br = std::min(Br, s1 - i0);
              if (tile_hidden(d, m, b, i0, br, j0, bc)) continue;
              const T* Qi = qb + i0 * q_row;
              const T* dOi = dob + i0 * o_row;
              if constexpr (std::is_same_v<T, float>) {
                if (tile_kernel) {
                  if (!packed) {
                    transpose_rows(kb + j0 * k_row, k_row, bc, d.Dqk, Kt.data(), bc);
                    transpose_rows(vb + j0 * v_row, v_row, bc, d.Dv, Vt.data(), bc);
                    copy_rows(kb + j0 * k_row, k_row, bc, d.Dqk, Kc.data());
                    packed = true;
                  }
                  copy_rows(Qi, q_row, br, d.Dqk, Qc.data());
                  copy_rows(dOi, o_row, br, d.Dv, dOc.data());
                  backward_tile_f32(d, m, b, i0, br, j0, bc, scale, Qc.data(), Kc.data(), Kt.data(), Vt.data(),
                                    dOc.data(), lb + i0, D.data() + i0, P.data(), dP.data(), Bc, dqb + i0 * q_row,
                                    q_row, dkb + j0 * k_row, k_row, dvb + j0 * v_row, v_row);
                  continue;
                }
              }
              // P = exp(scale · Q_i K_jᵀ − lse)
              ops::gemm<T>(false, true, br, bc, d.Dqk, scale, Qi, q_row, kb + j0 * k_row, k_row, T(0), P.data(), Bc);
              mask_tile(d, m, b, i0, br, j0, bc, P.data(), Bc);
              for (int64_t r = 0; r < br; ++r) {
                T* p = P.data() + r * Bc;
                if (!std::isfinite(lb[i0 + r])) {  // the row saw no key at all
                  std::fill(p, p + bc, T(0));
                  continue;
                }
                exp_shifted_sum(p, bc, lb[i0 + r]);
              }
              // dV_j += Pᵀ dO_i ;  dP = dO_i V_jᵀ
              ops::gemm<T>(true, false, bc, d.Dv, br, T(1), P.data(), Bc, dOi, o_row, T(1), dvb + j0 * v_row, v_row);
              ops::gemm<T>(false, true, br, bc, d.Dv, T(1), dOi, o_row, vb + j0 * v_row, v_row, T(0), dP.data(), Bc);
              // dS = P ∘ (dP − D)
              for (int64_t r = 0; r < br; ++r) {
                T* p = P.data() + r * Bc;
                const T* dp = dP.data() + r * Bc;
                const T Di = D[static_cast<size_t>(i0 + r)];
                for (int64_t c = 0; c < bc; ++c) p[c] *= dp[c] - Di;
              }
              // dQ_i += scale · dS K_j ;  dK_j += scale · dSᵀ Q_i
              ops::gemm<T>(false, false, br, d.Dqk, bc, scale, P.data(), Bc, kb + j0 * k_row, k_row, T(1),
                           dqb + i0 * q_row, q_row);
              ops::gemm<T>(true, false, bc, d.Dqk, br, scale, P.data(), Bc, Qi, q_row, T(1), dkb + j0 * k_row,
                           k_row);
            }
          }
          }
        }
      }
    }
  }
}

#define FLASHGPT_INSTANTIATE(T)                                                                                    \
  template void attention_flash_forward<T>(const AttentionDims&, const AttentionMask&, const AttentionTiling&, T, \
                                           const T*, const T*, const T*, T*, T*);                                  \
  template void attention_flash_backward<T>(const AttentionDims&, const AttentionMask&, const AttentionTiling&, T, \
                                            const T*, const T*, const T*, const T*, const T*, const T*, T*, T*,   \
                                            T*);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(double)
#undef FLASHGPT_INSTANTIATE

}  // namespace cpu
}  // namespace flashgpt
