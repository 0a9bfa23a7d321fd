// The attention seam: the standard kernel against a plain triple-loop reference and finite
// differences, over GQA/MQA, Tq ≠ Tk with an aligned causal mask, and Dqk ≠ Dv.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "flashgpt/attention/attention.h"
#include "flashgpt/core/error.h"
#include "testing/finite_diff.h"

namespace flashgpt {
namespace {

using testing::dot;
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
          if (m.causal && j > m.q_offset + i) continue;
          double acc = 0;
          for (int64_t c = 0; c < d.Dqk; ++c)
            acc += q[((b * d.Tq + i) * d.Hq + h) * d.Dqk + c] * k[((b * d.Tk + j) * d.Hkv + h / group) * d.Dqk + c];
          s[j] = scale * acc;
          mx = std::max(mx, s[j]);
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

struct Case {
  const char* name;
  AttentionDims dims;
  AttentionMask mask;
};

class StandardAttention : public ::testing::TestWithParam<Case> {};

TEST_P(StandardAttention, ForwardMatchesReferenceAndBackwardMatchesFiniteDifferences) {
  const Case& tc = GetParam();
  const AttentionDims& d = tc.dims;
  Rng rng(11);
  auto q = random_vector(d.B * d.Tq * d.Hq * d.Dqk, rng);
  auto k = random_vector(d.B * d.Tk * d.Hkv * d.Dqk, rng);
  auto v = random_vector(d.B * d.Tk * d.Hkv * d.Dv, rng);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d.Dqk));
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> o(d.B * d.Tq * d.Hq * d.Dv, nan), lse(d.B * d.Hq * d.Tq, nan);
  std::vector<double> o_ref(o.size()), lse_ref(lse.size());
  attention_forward(AttentionKernel::Standard, d, tc.mask, scale, q.data(), k.data(), v.data(), o.data(), lse.data());
  reference_attention(d, tc.mask, scale, q, k, v, o_ref, lse_ref);
  for (size_t i = 0; i < o.size(); ++i) ASSERT_NEAR(o[i], o_ref[i], 1e-12) << "o[" << i << "]";
  for (size_t i = 0; i < lse.size(); ++i) ASSERT_NEAR(lse[i], lse_ref[i], 1e-12) << "lse[" << i << "]";

  auto R = random_vector(o.size(), rng);
  auto loss = [&] {
    attention_forward(AttentionKernel::Standard, d, tc.mask, scale, q.data(), k.data(), v.data(), o.data(),
                      lse.data());
    return dot(R, o.data());
  };
  loss();
  std::vector<double> dq(q.size(), nan), dk(k.size(), nan), dv(v.size(), nan);
  attention_backward(AttentionKernel::Standard, d, tc.mask, scale, q.data(), k.data(), v.data(), o.data(), lse.data(),
                     R.data(), dq.data(), dk.data(), dv.data());
  expect_gradient_matches("dq", q.data(), dq.data(), q.size(), loss);
  expect_gradient_matches("dk", k.data(), dk.data(), k.size(), loss);
  expect_gradient_matches("dv", v.data(), dv.data(), v.size(), loss);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, StandardAttention,
    ::testing::Values(Case{"causal_mha", {2, 3, 3, 5, 5, 4, 4, 0}, {true, 0}},
                      Case{"noncausal", {1, 2, 2, 4, 6, 4, 4, 0}, {false, 0}},
                      Case{"gqa", {2, 4, 2, 6, 6, 8, 8, 0}, {true, 0}},
                      Case{"mqa", {1, 4, 1, 5, 5, 4, 4, 0}, {true, 0}},
                      Case{"decode_aligned", {2, 2, 1, 2, 7, 4, 4, 0}, {true, 5}},
                      Case{"single_token", {1, 2, 2, 1, 1, 4, 4, 0}, {true, 0}},
                      Case{"dqk_ne_dv", {1, 2, 2, 5, 5, 6, 3, 0}, {true, 0}}),
    [](const auto& p) { return std::string(p.param.name); });

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
}

}  // namespace
}  // namespace flashgpt
