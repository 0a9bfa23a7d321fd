// Every layer's backward against finite differences of its forward, in double precision.
// Each check uses the scalar loss L = Σ out ∘ R for a fixed random R, so dL/dout = R.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "cpu/parallel.h"
#include "flashgpt/ops/activation.h"
#include "flashgpt/ops/adamw.h"
#include "flashgpt/ops/cross_entropy.h"
#include "flashgpt/ops/elementwise.h"
#include "flashgpt/ops/embedding.h"
#include "flashgpt/ops/matmul.h"
#include "flashgpt/ops/norm.h"
#include "flashgpt/ops/rope.h"
#include "testing/finite_diff.h"

namespace flashgpt {
namespace {

using testing::dot;
using testing::expect_gradient_matches;
using testing::random_vector;

TEST(Matmul, BackwardMatchesFiniteDifferences) {
  Rng rng(1);
  const int64_t N = 5, C = 7, OC = 4;
  auto x = random_vector(N * C, rng), w = random_vector(OC * C, rng), b = random_vector(OC, rng);
  auto R = random_vector(N * OC, rng);
  std::vector<double> out(N * OC);
  auto loss = [&] {
    ops::matmul_forward(out.data(), x.data(), w.data(), b.data(), N, C, OC);
    return dot(R, out.data());
  };
  std::vector<double> dx(N * C, 0.0), dw(OC * C, 0.0), db(OC, 0.0);
  ops::matmul_backward(dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), N, C, OC, false);
  expect_gradient_matches("dx", x.data(), dx.data(), x.size(), loss);
  expect_gradient_matches("dw", w.data(), dw.data(), w.size(), loss);
  expect_gradient_matches("db", b.data(), db.data(), b.size(), loss);
}

TEST(Matmul, ForwardMatchesNaiveLoopAndAccumulates) {
  Rng rng(2);
  const int64_t N = 3, C = 5, OC = 6;
  auto x = random_vector(N * C, rng), w = random_vector(OC * C, rng), b = random_vector(OC, rng);
  std::vector<double> out(N * OC);
  ops::matmul_forward(out.data(), x.data(), w.data(), b.data(), N, C, OC);
  for (int64_t i = 0; i < N; ++i) {
    for (int64_t o = 0; o < OC; ++o) {
      double s = b[o];
      for (int64_t c = 0; c < C; ++c) s += x[i * C + c] * w[o * C + c];
      EXPECT_NEAR(out[i * OC + o], s, 1e-12);
    }
  }
  // accumulate_dinp adds to what is there; without it the buffer is overwritten.
  std::vector<double> dx(N * C, 1.0), dw(OC * C, 0.0);
  auto R = random_vector(N * OC, rng);
  ops::matmul_backward(dx.data(), dw.data(), static_cast<double*>(nullptr), R.data(), x.data(), w.data(), N, C, OC,
                       true);
  std::vector<double> dx2(N * C, 5.0), dw2(OC * C, 0.0);
  ops::matmul_backward(dx2.data(), dw2.data(), static_cast<double*>(nullptr), R.data(), x.data(), w.data(), N, C, OC,
                       false);
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_NEAR(dx[i], dx2[i] + 1.0, 1e-12);
}

class NormTest : public ::testing::TestWithParam<NormKind> {};

TEST_P(NormTest, BackwardMatchesFiniteDifferences) {
  const NormKind kind = GetParam();
  Rng rng(3);
  const int64_t N = 4, C = 9;
  auto x = random_vector(N * C, rng), w = random_vector(C, rng), b = random_vector(C, rng);
  auto R = random_vector(N * C, rng);
  std::vector<double> out(N * C), mean(N), rstd(N);
  double* bias = kind == NormKind::LayerNorm ? b.data() : nullptr;
  auto loss = [&] {
    ops::norm_forward(kind, out.data(), mean.data(), rstd.data(), x.data(), w.data(), bias, N, C, 1e-5);
    return dot(R, out.data());
  };
  loss();
  std::vector<double> dx(N * C, 0.5), dw(C, 0.0), db(C, 0.0);
  ops::norm_backward(kind, dx.data(), dw.data(), bias ? db.data() : nullptr, R.data(), x.data(), w.data(),
                     mean.data(), rstd.data(), N, C, false);
  expect_gradient_matches("dx", x.data(), dx.data(), x.size(), loss);
  expect_gradient_matches("dw", w.data(), dw.data(), w.size(), loss);
  if (bias) expect_gradient_matches("db", b.data(), db.data(), b.size(), loss);
}

INSTANTIATE_TEST_SUITE_P(Kinds, NormTest, ::testing::Values(NormKind::LayerNorm, NormKind::RMSNorm),
                         [](const auto& p) { return to_string(p.param); });

TEST(Norm, LayerNormOutputHasZeroMeanUnitVariance) {
  Rng rng(4);
  const int64_t N = 3, C = 64;
  auto x = random_vector(N * C, rng, 3.0);
  std::vector<double> w(C, 1.0), out(N * C), mean(N), rstd(N);
  ops::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), static_cast<double*>(nullptr), N,
                         C, 0.0);
  for (int64_t i = 0; i < N; ++i) {
    double m = 0, v = 0;
    for (int64_t j = 0; j < C; ++j) m += out[i * C + j];
    m /= C;
    for (int64_t j = 0; j < C; ++j) v += (out[i * C + j] - m) * (out[i * C + j] - m);
    EXPECT_NEAR(m, 0.0, 1e-12);
    EXPECT_NEAR(v / C, 1.0, 1e-12);
  }
}

TEST(Activation, GeluBackwardMatchesFiniteDifferences) {
  Rng rng(5);
  auto x = random_vector(50, rng, 2.0), R = random_vector(50, rng);
  std::vector<double> out(50), dx(50);
  auto loss = [&] {
    ops::gelu_forward(out.data(), x.data(), 50);
    return dot(R, out.data());
  };
  ops::gelu_backward(dx.data(), x.data(), R.data(), 50);
  expect_gradient_matches("dx", x.data(), dx.data(), x.size(), loss);
  // Known values of the tanh approximation.
  double probe[3] = {0.0, 1.0, -1.0}, y[3];
  ops::gelu_forward(y, probe, 3);
  EXPECT_NEAR(y[0], 0.0, 1e-15);
  EXPECT_NEAR(y[1], 0.8411919906082768, 1e-12);
  EXPECT_NEAR(y[2], -0.15880800939172324, 1e-12);
}

TEST(Activation, SwigluBackwardMatchesFiniteDifferences) {
  Rng rng(6);
  const int64_t N = 3, F = 5;
  auto x = random_vector(N * 2 * F, rng, 2.0), R = random_vector(N * F, rng);
  std::vector<double> out(N * F), dx(N * 2 * F);
  auto loss = [&] {
    ops::swiglu_forward(out.data(), x.data(), N, F);
    return dot(R, out.data());
  };
  ops::swiglu_backward(dx.data(), x.data(), R.data(), N, F);
  expect_gradient_matches("dx", x.data(), dx.data(), x.size(), loss);
}

TEST(Rope, BackwardMatchesFiniteDifferencesAndPreservesNorm) {
  Rng rng(7);
  const int64_t B = 2, Tn = 3, H = 2, D = 8, offset = 5;
  ops::RopeTable<double> table(16, D, 10000.0);
  auto x = random_vector(B * Tn * H * D, rng), R = random_vector(x.size(), rng);
  std::vector<double> y(x.size());
  auto loss = [&] {
    y = x;
    ops::rope_forward(y.data(), table, B, Tn, H, D, offset);
    return dot(R, y.data());
  };
  loss();
  // A rotation keeps each head vector's length.
  for (int64_t r = 0; r < B * Tn * H; ++r) {
    double nx = 0, ny = 0;
    for (int64_t i = 0; i < D; ++i) {
      nx += x[r * D + i] * x[r * D + i];
      ny += y[r * D + i] * y[r * D + i];
    }
    EXPECT_NEAR(nx, ny, 1e-12);
  }
  std::vector<double> dx = R;
  ops::rope_backward(dx.data(), table, B, Tn, H, D, offset);
  expect_gradient_matches("dx", x.data(), dx.data(), x.size(), loss);
}

TEST(Rope, PositionZeroIsIdentityAndPairsAreHalfSplit) {
  const int64_t D = 4;
  ops::RopeTable<double> table(4, D, 10000.0);
  std::vector<double> x = {1, 2, 3, 4};
  std::vector<double> y = x;
  ops::rope_forward(y.data(), table, 1, 1, 1, D, 0);
  EXPECT_EQ(x, y);
  // At position 1, element 0 pairs with element 2 and rotates by angle 1 (frequency θ⁰ = 1).
  y = {1, 0, 0, 0};
  ops::rope_forward(y.data(), table, 1, 1, 1, D, 1);
  EXPECT_NEAR(y[0], std::cos(1.0), 1e-12);
  EXPECT_NEAR(y[2], std::sin(1.0), 1e-12);
  EXPECT_NEAR(y[1], 0.0, 1e-15);
  EXPECT_NEAR(y[3], 0.0, 1e-15);
}

TEST(Embedding, BackwardMatchesFiniteDifferences) {
  Rng rng(8);
  const int64_t B = 2, Tn = 3, C = 4, V = 5;
  std::vector<int> tokens = {0, 3, 3, 1, 4, 0};
  auto wte = random_vector(V * C, rng), wpe = random_vector(Tn * C, rng), R = random_vector(B * Tn * C, rng);
  std::vector<double> out(B * Tn * C);
  auto loss = [&] {
    ops::embedding_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B, Tn, C, 0);
    return dot(R, out.data());
  };
  std::vector<double> dwte(V * C, 0.0), dwpe(Tn * C, 0.0);
  ops::embedding_backward(dwte.data(), dwpe.data(), R.data(), tokens.data(), B, Tn, C);
  expect_gradient_matches("dwte", wte.data(), dwte.data(), wte.size(), loss);
  expect_gradient_matches("dwpe", wpe.data(), dwpe.data(), wpe.size(), loss);
}

TEST(CrossEntropy, BackwardMatchesFiniteDifferencesAndIgnoresPadding) {
  Rng rng(9);
  const int64_t N = 4, V = 6, Vp = 8;
  auto logits = random_vector(N * Vp, rng, 2.0);
  std::vector<int> targets = {1, 5, -1, 0};
  std::vector<double> probs(N * Vp), losses(N);
  auto loss = [&] {
    probs = logits;
    return ops::softmax_cross_entropy_forward(probs.data(), losses.data(), targets.data(), N, V, Vp);
  };
  double l0 = loss();
  // Mean over the three rows with a target.
  EXPECT_NEAR(l0, (losses[0] + losses[1] + losses[3]) / 3.0, 1e-12);
  for (int64_t i = 0; i < N; ++i) {
    EXPECT_EQ(probs[i * Vp + 6], 0.0);
    EXPECT_EQ(probs[i * Vp + 7], 0.0);
  }
  std::vector<double> d = probs;
  ops::softmax_cross_entropy_backward(d.data(), targets.data(), N, V, Vp, 1.0 / 3.0);
  expect_gradient_matches("dlogits", logits.data(), d.data(), logits.size(), loss);
  for (int64_t i = 0; i < N; ++i) {
    EXPECT_EQ(d[i * Vp + 6], 0.0);
    EXPECT_EQ(d[i * Vp + 7], 0.0);
  }
}

TEST(AdamW, MatchesHandComputedStep) {
  std::vector<float> p = {1.0f, -2.0f}, g = {0.5f, 0.25f}, m = {0, 0}, v = {0, 0};
  ops::AdamWParams hp;
  hp.lr = 0.1f;
  hp.beta1 = 0.9f;
  hp.beta2 = 0.99f;
  hp.eps = 1e-8f;
  hp.weight_decay = 0.1f;
  hp.step = 1;
  ops::adamw_update(p.data(), g.data(), m.data(), v.data(), 2, hp, true, 1.0f);
  // At step 1 the bias-corrected update is g/|g| = ±1 (sign of g), plus decoupled decay lr·wd·p.
  EXPECT_NEAR(p[0], 1.0f - 0.1f * (1.0f + 0.1f * 1.0f), 1e-6);
  EXPECT_NEAR(p[1], -2.0f - 0.1f * (1.0f + 0.1f * -2.0f), 1e-6);
  EXPECT_NEAR(m[0], 0.05f, 1e-7);
  EXPECT_NEAR(v[0], 0.01f * 0.25f, 1e-7);
  // No decay on vectors.
  std::vector<float> q = {1.0f}, gq = {0.5f}, mq = {0}, vq = {0};
  ops::adamw_update(q.data(), gq.data(), mq.data(), vq.data(), 1, hp, false, 1.0f);
  EXPECT_NEAR(q[0], 1.0f - 0.1f, 1e-6);
}

TEST(AdamW, SumSquaresIsDeterministicAndExact) {
  std::vector<float> x(100001);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 7) - 3.0f;
  double a = ops::sum_squares(x.data(), static_cast<int64_t>(x.size()));
  double expected = 0;
  for (float f : x) expected += static_cast<double>(f) * f;
  EXPECT_EQ(a, expected);
  EXPECT_EQ(a, ops::sum_squares(x.data(), static_cast<int64_t>(x.size())));
}


// The OpenMP thread count for one scope.
class ThreadCount {
 public:
  explicit ThreadCount(int n) : saved_(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~ThreadCount() { omp_set_num_threads(saved_); }
  ThreadCount(const ThreadCount&) = delete;
  ThreadCount& operator=(const ThreadCount&) = delete;

 private:
  int saved_;
};

TEST(Threads, SmallLoopsStayOnTheCallingThread) {
  {
    ThreadCount four(4);
    EXPECT_EQ(cpu::team_size(0), 1);
    EXPECT_EQ(cpu::team_size(256), 1);  // one decoding step's norm of a small model
    EXPECT_EQ(cpu::team_size(cpu::kParallelGrain - 1), 1);
    EXPECT_EQ(cpu::team_size(cpu::kParallelGrain), 2);
    EXPECT_EQ(cpu::team_size(3 * cpu::kParallelGrain / 2), 3);
    EXPECT_EQ(cpu::team_size(int64_t{1} << 40), 4);
  }
  ThreadCount one(1);
  EXPECT_EQ(cpu::team_size(int64_t{1} << 40), 1);
}

// Every op whose loop a team splits, run at a size that four threads share and again on one
// thread: row- and element-wise results are the same bits, and sums kept per thread agree to
// rounding. (The finite-difference checks above run below the grain, on one thread.)
TEST(Threads, SplitLoopsGiveWhatOneThreadGives) {
  const int64_t N = 64, C = 1024, H = 8, D = C / H, V = 1000, Vp = 1024;
  Rng rng(17);
  const auto x = random_vector(N * C, rng), w = random_vector(C, rng), b = random_vector(C, rng);
  const auto dy = random_vector(N * C, rng), wide = random_vector(N * 2 * C, rng);
  const auto logits = random_vector(N * Vp, rng), wpe = random_vector(N * C, rng), wte = random_vector(V * C, rng);
  std::vector<int> tokens(N), targets(N);
  for (int64_t i = 0; i < N; ++i) {
    tokens[i] = static_cast<int>((i * 37) % V);
    targets[i] = i % 5 == 0 ? -1 : static_cast<int>((i * 11) % V);
  }
  const ops::RopeTable<double> table(static_cast<int>(N), static_cast<int>(D), 10000.0);
  struct Results {
    std::map<std::string, std::vector<double>> exact, summed;
  };
  const auto run = [&] {
    Results r;
    auto& e = r.exact;
    auto& s = r.summed;
    std::vector<double> mean(N), rstd(N);
    e["layernorm"].resize(N * C);
    ops::layernorm_forward(e["layernorm"].data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C, 1e-5);
    e["layernorm dx"].resize(N * C);
    s["layernorm dw"].assign(C, 0.0);
    s["layernorm db"].assign(C, 0.0);
    ops::layernorm_backward(e["layernorm dx"].data(), s["layernorm dw"].data(), s["layernorm db"].data(), dy.data(),
                            x.data(), w.data(), mean.data(), rstd.data(), N, C, false);
    e["rmsnorm"].resize(N * C);
    ops::rmsnorm_forward(e["rmsnorm"].data(), rstd.data(), x.data(), w.data(), N, C, 1e-5);
    e["rmsnorm dx"].resize(N * C);
    s["rmsnorm dw"].assign(C, 0.0);
    ops::rmsnorm_backward(e["rmsnorm dx"].data(), s["rmsnorm dw"].data(), dy.data(), x.data(), w.data(), rstd.data(),
                          N, C, false);
    e["gelu"].resize(N * C);
    ops::gelu_forward(e["gelu"].data(), x.data(), N * C);
    e["gelu dx"].resize(N * C);
    ops::gelu_backward(e["gelu dx"].data(), x.data(), dy.data(), N * C);
    e["swiglu"].resize(N * C);
    ops::swiglu_forward(e["swiglu"].data(), wide.data(), N, C);
    e["swiglu dx"].resize(N * 2 * C);
    ops::swiglu_backward(e["swiglu dx"].data(), wide.data(), dy.data(), N, C);
    e["add"].resize(N * C);
    ops::add(e["add"].data(), x.data(), dy.data(), N * C);
    e["add_inplace"] = x;
    ops::add_inplace(e["add_inplace"].data(), dy.data(), N * C);
    e["embedding"].resize(N * C);
    ops::embedding_forward(e["embedding"].data(), tokens.data(), wte.data(), wpe.data(), 1, N, C, 0);
    e["embedding dwte"].assign(V * C, 0.0);
    e["embedding dwpe"].assign(N * C, 0.0);
    ops::embedding_backward(e["embedding dwte"].data(), e["embedding dwpe"].data(), dy.data(), tokens.data(), 1, N, C,
                            0);
    e["rope"] = x;
    ops::rope_forward(e["rope"].data(), table, 1, N, H, D, 0);
    e["rope dx"] = dy;
    ops::rope_backward(e["rope dx"].data(), table, 1, N, H, D, 0);
    e["matmul"].resize(N * 64);
    ops::matmul_forward(e["matmul"].data(), x.data(), wte.data(), b.data(), N, C, 64);
    s["matmul dbias"].assign(C, 0.0);  // the column sums of dy (its product: [N, N]ᵀ·[N, C])
    ops::matmul_backward(static_cast<double*>(nullptr), std::vector<double>(C * N).data(), s["matmul dbias"].data(),
                         dy.data(), wpe.data(), x.data(), N, N, C, false);
    e["softmax"] = logits;
    e["losses"].resize(N);
    s["loss"] = {ops::softmax_cross_entropy_forward(e["softmax"].data(), e["losses"].data(), targets.data(), N, V, Vp)};
    e["softmax dlogits"] = e["softmax"];
    ops::softmax_cross_entropy_backward(e["softmax dlogits"].data(), targets.data(), N, V, Vp, 1.0 / N);
    e["adamw"] = x;
    std::vector<double> m(N * C, 0.0), v(N * C, 0.0);
    ops::AdamWParams hp;
    hp.step = 1;
    ops::adamw_update(e["adamw"].data(), dy.data(), m.data(), v.data(), N * C, hp, true, 1.0);
    s["sum_squares"] = {ops::sum_squares(x.data(), N * C)};
    return r;
  };
  Results team, alone;
  {
    ThreadCount four(4);
    ASSERT_EQ(cpu::team_size(N * C), 4);
    team = run();
  }
  {
    ThreadCount one(1);
    alone = run();
  }
  const auto compare = [](const auto& split, const auto& serial, double tolerance) {
    for (const auto& [name, values] : serial) {
      const std::vector<double>& got = split.at(name);
      ASSERT_EQ(got.size(), values.size()) << name;
      size_t i = 0;
      while (i < values.size() && std::abs(got[i] - values[i]) <= tolerance * (1.0 + std::abs(values[i]))) ++i;
      EXPECT_EQ(i, values.size()) << name << ": split " << got[i] << ", one thread " << values[i] << " at " << i;
    }
  };
  compare(team.exact, alone.exact, 0.0);
  compare(team.summed, alone.summed, 1e-12);
}

}  // namespace
}  // namespace flashgpt
