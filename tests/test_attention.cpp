// The attention seam: both kernels against a plain triple-loop reference and finite differences
// in double, over GQA/MQA, Tq ≠ Tk with an aligned causal mask, key padding, document segments,
// Dqk ≠ Dv, and (for flash) tiles that do not divide the lengths.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <limits>

#include "cpu/tile_gemm.h"
#include "flashgpt/attention/attention.h"
#include "flashgpt/core/error.h"
#include "testing/errors.h"
#include "testing/finite_diff.h"

namespace flashgpt {
namespace {

// The flash kernel's tile product against a plain triple loop in double, for A read straight,
// transposed and through strided rows, with and without accumulation, over awkward sizes.
TEST(TileGemm, MatchesAPlainProductForEveryLayout) {
  Rng rng(123);
  auto uniform = [&] { return static_cast<float>(static_cast<double>(rng.next_u64() % 20001) / 10000.0 - 1.0); };
  for (int trial = 0; trial < 60; ++trial) {
    const int64_t M = 1 + static_cast<int64_t>(rng.next_u64() % 40), N = 1 + static_cast<int64_t>(rng.next_u64() % 70);
    const int64_t K = 1 + static_cast<int64_t>(rng.next_u64() % 50);
    const bool transposed = trial % 2 == 1, accumulate = trial % 3 == 0;
    const int64_t lda = (transposed ? M : K) + static_cast<int64_t>(rng.next_u64() % 5);
    const int64_t a_m = transposed ? 1 : lda, a_k = transposed ? lda : 1;
    const int64_t ldb = N + static_cast<int64_t>(rng.next_u64() % 7), ldc = N + static_cast<int64_t>(rng.next_u64() % 3);
    std::vector<float> a(static_cast<size_t>((transposed ? K : M) * lda)), b(static_cast<size_t>(K * ldb)),
        c(static_cast<size_t>(M * ldc));
    for (auto& x : a) x = uniform();
    for (auto& x : b) x = uniform();
    for (auto& x : c) x = uniform();
    const std::vector<float> c0 = c;
    const float alpha = 0.75f;
    cpu::tile_gemm(M, N, K, alpha, a.data(), a_m, a_k, b.data(), ldb, c.data(), ldc, accumulate);
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < ldc; ++n) {
        const size_t at = static_cast<size_t>(m * ldc + n);
        if (n >= N) {  // the padding between rows is never written
          ASSERT_EQ(c[at], c0[at]) << "padding written at " << m << "," << n;
          continue;
        }
        double ref = 0;
        for (int64_t k = 0; k < K; ++k) ref += double(a[static_cast<size_t>(m * a_m + k * a_k)]) * b[static_cast<size_t>(k * ldb + n)];
        ref = alpha * ref + (accumulate ? c0[at] : 0.0);
        ASSERT_NEAR(c[at], ref, 1e-5 * (1 + std::abs(ref)) * std::sqrt(double(K)))
            << "M " << M << " N " << N << " K " << K << " at " << m << "," << n;
      }
    }
  }
  // The transposing copy the kernels pack with: whole 16 × 16 blocks (vector) and ragged edges.
  for (const auto& [N, K, src_row, ld] : {std::tuple<int, int, int, int>{7, 11, 13, 9}, {37, 50, 53, 40}, {32, 16, 16, 32}}) {
    std::vector<float> src(static_cast<size_t>(N * src_row)), dst(static_cast<size_t>(K * ld), -1.0f);
    for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<float>(i);
    cpu::transpose_rows(src.data(), src_row, N, K, dst.data(), ld);
    for (int k = 0; k < K; ++k) {
      for (int n = 0; n < ld; ++n) {
        const float want = n < N ? src[static_cast<size_t>(n * src_row + k)] : -1.0f;  // beyond N: untouched
        ASSERT_EQ(dst[static_cast<size_t>(k * ld + n)], want) << N << "x" << K << " at " << k << "," << n;
      }
    }
  }
}

using testing::dot;
using testing::error_of;
using testing::expect_gradient_matches;
using testing::random_vector;

// o[b,i,h,:] = Σ_j softmax_j(scale·q·k_j) v_j over visible keys, written as plainly as possible.
void reference_attention(const AttentionDims& d, const AttentionMask& m, double scale, const std::vector<double>& q,
                         const std::vector<double>& k, const std::vector<double>& v, std::vector<double>& o,
                         std::vector<double>& lse) {
  const int64_t group = d.Hq / d.Hkv;
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.Hq; ++h)
      for (int64_t i = 0; i < d.Tq; ++i) {
        std::vector<double> s(d.Tk, -std::numeric_limits<double>::infinity());
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < d.Tk; ++j) {
          const int64_t offset = m.q_offsets.empty() ? m.q_offset : m.q_offsets[b];
          if (m.causal && j > offset + i) continue;
          if (!m.kv_lengths.empty() && j >= m.kv_lengths[b]) continue;
          if (!m.q_segments.empty() && m.q_segments[b * d.Tq + i] != m.kv_segments[b * d.Tk + j]) continue;
          double acc = 0;
          for (int64_t c = 0; c < d.Dqk; ++c)
            acc += q[((b * d.Tq + i) * d.Hq + h) * d.Dqk + c] * k[((b * d.Tk + j) * d.Hkv + h / group) * d.Dqk + c];
          s[j] = scale * acc;
          mx = std::max(mx, s[j]);
        }
        if (std::isinf(mx)) {  // nothing visible: zeros and lse = −∞
          for (int64_t c = 0; c < d.Dv; ++c) o[((b * d.Tq + i) * d.Hq + h) * d.Dv + c] = 0;
          lse[(b * d.Hq + h) * d.Tq + i] = mx;
          continue;
        }
        double sum = 0;
        for (int64_t j = 0; j < d.Tk; ++j) sum += std::isinf(s[j]) ? 0.0 : std::exp(s[j] - mx);
        for (int64_t c = 0; c < d.Dv; ++c) {
          double acc = 0;
          for (int64_t j = 0; j < d.Tk; ++j)
            if (!std::isinf(s[j])) acc += std::exp(s[j] - mx) / sum * v[((b * d.Tk + j) * d.Hkv + h / group) * d.Dv + c];
          o[((b * d.Tq + i) * d.Hq + h) * d.Dv + c] = acc;
        }
        lse[(b * d.Hq + h) * d.Tq + i] = mx + std::log(sum);
      }
}

// Offsets: sequences at different lengths decoding Tq tokens each — sequence b's queries sit at
// q_offsets[b] = Tk − Tq − 3b (at least 0) and its keys end at q_offsets[b] + Tq.
enum class MaskExtra { None, Padding, Segments, Offsets };

struct Case {
  const char* name;
  AttentionDims dims;
  AttentionMask mask;
  MaskExtra extra = MaskExtra::None;
};

class AttentionKernels : public ::testing::TestWithParam<std::tuple<AttentionKernel, Case>> {};

TEST_P(AttentionKernels, ForwardMatchesReferenceAndBackwardMatchesFiniteDifferences) {
  const AttentionKernel kernel = std::get<0>(GetParam());
  Case tc = std::get<1>(GetParam());
  const AttentionDims& d = tc.dims;
  std::vector<int32_t> lengths(d.B), offsets(d.B), q_seg(d.B * d.Tq), kv_seg(d.B * d.Tk);
  if (tc.extra == MaskExtra::Offsets) {
    for (int64_t b = 0; b < d.B; ++b) {
      offsets[b] = static_cast<int32_t>(std::max<int64_t>(0, d.Tk - d.Tq - 3 * b));
      lengths[b] = offsets[b] + static_cast<int32_t>(d.Tq);
    }
    tc.mask.q_offsets = offsets;
    tc.mask.kv_lengths = lengths;
  }
  if (tc.extra == MaskExtra::Padding) {
    for (int64_t b = 0; b < d.B; ++b) lengths[b] = static_cast<int32_t>(std::max<int64_t>(1, d.Tk - 2 * b - 1));
    tc.mask.kv_lengths = lengths;
  }
  if (tc.extra == MaskExtra::Segments) {  // documents of 3 tokens, offset per sequence
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t j = 0; j < d.Tk; ++j) kv_seg[b * d.Tk + j] = static_cast<int32_t>((j + b) / 3);
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t i = 0; i < d.Tq; ++i) q_seg[b * d.Tq + i] = kv_seg[b * d.Tk + tc.mask.q_offset + i];
    tc.mask.q_segments = q_seg;
    tc.mask.kv_segments = kv_seg;
  }
  const AttentionTiling tiles{2, 3};  // tiles that do not divide the lengths
  Rng rng(11);
  auto q = random_vector(d.B * d.Tq * d.Hq * d.Dqk, rng);
  auto k = random_vector(d.B * d.Tk * d.Hkv * d.Dqk, rng);
  auto v = random_vector(d.B * d.Tk * d.Hkv * d.Dv, rng);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d.Dqk));
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> o(d.B * d.Tq * d.Hq * d.Dv, nan), lse(d.B * d.Hq * d.Tq, nan);
  std::vector<double> o_ref(o.size()), lse_ref(lse.size());
  attention_forward(kernel, d, tc.mask, scale, q.data(), k.data(), v.data(), o.data(), lse.data(), tiles);
  reference_attention(d, tc.mask, scale, q, k, v, o_ref, lse_ref);
  for (size_t i = 0; i < o.size(); ++i) ASSERT_NEAR(o[i], o_ref[i], 1e-12) << "o[" << i << "]";
  for (size_t i = 0; i < lse.size(); ++i) {
    if (std::isinf(lse_ref[i])) {
      ASSERT_EQ(lse[i], lse_ref[i]) << "lse[" << i << "]";
    } else {
      ASSERT_NEAR(lse[i], lse_ref[i], 1e-12) << "lse[" << i << "]";
    }
  }

  auto R = random_vector(o.size(), rng);
  auto loss = [&] {
    attention_forward(kernel, d, tc.mask, scale, q.data(), k.data(), v.data(), o.data(), lse.data(), tiles);
    return dot(R, o.data());
  };
  loss();
  std::vector<double> dq(q.size(), nan), dk(k.size(), nan), dv(v.size(), nan);
  attention_backward(kernel, d, tc.mask, scale, q.data(), k.data(), v.data(), o.data(), lse.data(), R.data(),
                     dq.data(), dk.data(), dv.data(), tiles);
  expect_gradient_matches("dq", q.data(), dq.data(), q.size(), loss);
  expect_gradient_matches("dk", k.data(), dk.data(), k.size(), loss);
  expect_gradient_matches("dv", v.data(), dv.data(), v.size(), loss);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionKernels,
    ::testing::Combine(
        ::testing::Values(AttentionKernel::Standard, AttentionKernel::Flash),
        ::testing::Values(Case{"causal_mha", {2, 3, 3, 5, 5, 4, 4, 0}, {true, 0}},
                          Case{"noncausal", {1, 2, 2, 4, 6, 4, 4, 0}, {false, 0}},
                          Case{"gqa", {2, 4, 2, 6, 6, 8, 8, 0}, {true, 0}},
                          Case{"mqa", {1, 4, 1, 5, 5, 4, 4, 0}, {true, 0}},
                          Case{"decode_aligned", {2, 2, 1, 2, 7, 4, 4, 0}, {true, 5}},
                          Case{"single_token", {1, 2, 2, 1, 1, 4, 4, 0}, {true, 0}},
                          Case{"dqk_ne_dv", {1, 2, 2, 5, 5, 6, 3, 0}, {true, 0}},
                          Case{"key_padding", {3, 2, 1, 5, 7, 4, 4, 0}, {false, 0}, MaskExtra::Padding},
                          Case{"padding_causal", {3, 2, 2, 6, 6, 4, 4, 0}, {true, 0}, MaskExtra::Padding},
                          Case{"documents", {2, 2, 2, 8, 8, 4, 4, 0}, {true, 0}, MaskExtra::Segments},
                          Case{"documents_decode", {2, 2, 1, 3, 9, 4, 4, 0}, {true, 6}, MaskExtra::Segments},
                          Case{"ragged_decode", {3, 4, 2, 3, 9, 4, 4, 0}, {true, 0}, MaskExtra::Offsets},
                          Case{"ragged_decode_mha", {4, 2, 2, 2, 10, 4, 4, 0}, {true, 0}, MaskExtra::Offsets})),
    [](const auto& p) {
      return std::string(to_string(std::get<0>(p.param))) + "_" + std::get<1>(p.param).name;
    });

// q, k and v as the three column blocks of one fused projection's rows (plus padding columns),
// read through q_row_stride / k_row_stride / v_row_stride: both kernels give what they give on
// dense tensors, and the backward writes dq, dk and dv into the same layout of gradient rows,
// leaving the padding alone. Cases: GQA training shapes, Dqk ≠ Dv, and a decoding-sized grouped
// query (the flash kernel's packed path).
TEST(AttentionSeam, FusedProjectionRowsEqualDenseTensors) {
  struct Fused {
    AttentionDims d;
    AttentionMask m;
  };
  for (AttentionKernel kernel : {AttentionKernel::Standard, AttentionKernel::Flash}) {
    for (const Fused& f : {Fused{{2, 4, 2, 6, 6, 8, 8, 0}, {true, 0}}, Fused{{1, 2, 2, 5, 5, 6, 3, 0}, {false, 0}},
                           Fused{{2, 4, 1, 1, 9, 4, 4, 0}, {true, 8}}}) {
      const AttentionDims& d = f.d;
      SCOPED_TRACE(std::string(to_string(kernel)) + " Hq " + std::to_string(d.Hq) + " Hkv " + std::to_string(d.Hkv) +
                   " Tq " + std::to_string(d.Tq));
      const int64_t qw = d.Hq * d.Dqk, kw = d.Hkv * d.Dqk, vw = d.Hkv * d.Dv, W = qw + kw + vw + 3;
      const int64_t rows_q = d.B * d.Tq, rows_k = d.B * d.Tk;
      Rng rng(29);
      const auto q = random_vector(rows_q * qw, rng), k = random_vector(rows_k * kw, rng),
                 v = random_vector(rows_k * vw, rng), dout = random_vector(rows_q * d.Hq * d.Dv, rng);
      // Fused rows: [q | k | v | padding] per token (queries beyond Tq rows only exist for keys).
      const double pad = 7.25;
      std::vector<double> fused(static_cast<size_t>(rows_k * W), pad);
      for (int64_t r = 0; r < rows_k; ++r) {
        if (r < rows_q) std::copy_n(q.begin() + r * qw, qw, fused.begin() + r * W);
        std::copy_n(k.begin() + r * kw, kw, fused.begin() + r * W + qw);
        std::copy_n(v.begin() + r * vw, vw, fused.begin() + r * W + qw + kw);
      }
      AttentionDims strided = d;
      strided.q_row_stride = strided.k_row_stride = strided.v_row_stride = W;
      const double scale = 0.4;
      std::vector<double> o(rows_q * d.Hq * d.Dv), lse(d.B * d.Hq * d.Tq), o2(o.size()), lse2(lse.size());
      attention_forward(kernel, d, f.m, scale, q.data(), k.data(), v.data(), o.data(), lse.data(), {2, 3});
      attention_forward(kernel, strided, f.m, scale, fused.data(), fused.data() + qw, fused.data() + qw + kw, o2.data(),
                        lse2.data(), {2, 3});
      for (size_t i = 0; i < o.size(); ++i) ASSERT_NEAR(o2[i], o[i], 1e-13) << "o " << i;
      for (size_t i = 0; i < lse.size(); ++i) ASSERT_NEAR(lse2[i], lse[i], 1e-13) << "lse " << i;
      std::vector<double> dq(q.size()), dk(k.size()), dv(v.size()), grads(fused.size(), pad);
      attention_backward(kernel, d, f.m, scale, q.data(), k.data(), v.data(), o.data(), lse.data(), dout.data(),
                         dq.data(), dk.data(), dv.data(), {2, 3});
      attention_backward(kernel, strided, f.m, scale, fused.data(), fused.data() + qw, fused.data() + qw + kw,
                         o.data(), lse.data(), dout.data(), grads.data(), grads.data() + qw, grads.data() + qw + kw,
                         {2, 3});
      for (int64_t r = 0; r < rows_k; ++r) {
        for (int64_t c = 0; c < W; ++c) {
          const double got = grads[r * W + c];
          double want = pad;  // padding, and query columns past the queries' rows
          if (c < qw && r < rows_q) want = dq[r * qw + c];
          if (c >= qw && c < qw + kw) want = dk[r * kw + c - qw];
          if (c >= qw + kw && c < qw + kw + vw) want = dv[r * vw + c - qw - kw];
          ASSERT_NEAR(got, want, 1e-13) << "gradient row " << r << " column " << c;
        }
      }
    }
  }
  std::vector<double> buf(64, 0.0);
  AttentionDims narrow{1, 2, 2, 2, 2, 4, 4, 0};
  narrow.q_row_stride = 7;
  EXPECT_NE(error_of([&] {
              attention_forward(AttentionKernel::Flash, narrow, AttentionMask{}, 1.0, buf.data(), buf.data(),
                                buf.data(), buf.data(), buf.data());
            }).find("query row stride 7 is smaller than Hq·Dqk = 8"),
            std::string::npos);
}

TEST(AttentionSeam, RejectsInconsistentShapes) {
  std::vector<double> buf(64, 0.0);
  auto run = [&](AttentionDims d) {
    attention_forward(AttentionKernel::Standard, d, AttentionMask{}, 1.0, buf.data(), buf.data(), buf.data(),
                      buf.data(), buf.data());
  };
  try {
    run({1, 3, 2, 1, 1, 4, 4, 0});
    FAIL() << "Hq not a multiple of Hkv was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a multiple of Hkv"), std::string::npos) << e.what();
  }
  EXPECT_THROW(run({1, 2, 2, 0, 1, 4, 4, 0}), Error);
  EXPECT_THROW(run({1, 2, 2, 2, 4, 4, 4, 3}), Error);  // Tk_stride < Tk
  // Masks of the wrong length, or lengths outside the keys, name the mask.
  const AttentionDims d{2, 2, 2, 2, 3, 2, 2, 0};
  auto run_mask = [&](const AttentionMask& m) {
    attention_forward(AttentionKernel::Flash, d, m, 1.0, buf.data(), buf.data(), buf.data(), buf.data(), buf.data());
  };
  const std::vector<int32_t> one_length = {3}, long_length = {3, 4}, seg4 = {0, 0, 1, 1}, seg5 = {0, 0, 0, 1, 1};
  AttentionMask m;
  m.kv_lengths = one_length;
  EXPECT_NE(error_of([&] { run_mask(m); }).find("kv_lengths holds 1"), std::string::npos);
  m.kv_lengths = long_length;
  EXPECT_NE(error_of([&] { run_mask(m); }).find("kv_lengths[1] = 4"), std::string::npos);
  m = AttentionMask{};
  m.q_segments = seg4;
  m.kv_segments = seg5;  // B·Tk = 6
  EXPECT_NE(error_of([&] { run_mask(m); }).find("kv_segments holds 5"), std::string::npos);
  m.q_segments = seg5;
  EXPECT_NE(error_of([&] { run_mask(m); }).find("q_segments holds 5"), std::string::npos);
  m = AttentionMask{};
  const std::vector<int32_t> negative_offset = {1, -1};
  m.q_offsets = one_length;
  EXPECT_NE(error_of([&] { run_mask(m); }).find("q_offsets holds 1 offsets for a batch of 2"), std::string::npos);
  m.q_offsets = negative_offset;
  EXPECT_NE(error_of([&] { run_mask(m); }).find("q_offsets[1] = -1 is negative"), std::string::npos);
}

// Decoding-sized grouped queries take the flash kernel's packed path, which splits the key range
// across threads and combines the partial softmax states: at DeepSeek's absorbed sizes (128 heads
// over one latent key/value head, Dqk 576, Dv 512 read from the same cache rows), for sequences of
// different lengths, it equals the reference.
TEST(AttentionSeam, PackedDecodeSplitsTheCacheAndCombines) {
  const int64_t B = 3, Hq = 128, Tq = 1, Tk = 300, row = 576, Dv = 512;
  Rng rng(17);
  const std::vector<double> q = random_vector(static_cast<size_t>(B * Tq * Hq * row), rng);
  const std::vector<double> cache = random_vector(static_cast<size_t>(B * Tk * row), rng);
  const int32_t lengths[B] = {300, 1, 77};
  AttentionDims d{B, Hq, 1, Tq, Tk, row, Dv, 0};
  d.k_row_stride = d.v_row_stride = row;
  AttentionMask m{true, Tk - 1};
  m.kv_lengths = lengths;
  // The reference wants plain [B, Tk, 1, D] key and value arrays.
  std::vector<double> values(static_cast<size_t>(B * Tk * Dv));
  for (int64_t t = 0; t < B * Tk; ++t) std::copy(cache.begin() + t * row, cache.begin() + t * row + Dv, values.begin() + t * Dv);
  std::vector<double> o_ref(B * Tq * Hq * Dv), lse_ref(B * Hq * Tq);
  AttentionDims plain = d;
  plain.k_row_stride = plain.v_row_stride = 0;
  reference_attention(plain, m, 0.05, q, cache, values, o_ref, lse_ref);
  const int threads = omp_get_max_threads();
  for (int t : {1, 4, 16}) {  // 4 and 16 threads split each sequence's keys
    omp_set_num_threads(t);
    std::vector<double> o(o_ref.size(), 99.0), lse(lse_ref.size(), 99.0);
    attention_forward<double>(AttentionKernel::Flash, d, m, 0.05, q.data(), cache.data(), cache.data(), o.data(),
                              lse.data(), AttentionTiling{0, 32});
    for (size_t i = 0; i < o.size(); ++i) ASSERT_NEAR(o[i], o_ref[i], 1e-12) << "threads " << t << " at " << i;
    for (size_t i = 0; i < lse.size(); ++i) ASSERT_NEAR(lse[i], lse_ref[i], 1e-12) << "threads " << t;
  }
  omp_set_num_threads(threads);
}

}  // namespace
}  // namespace flashgpt
