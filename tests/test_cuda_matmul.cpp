// The GPU GEMM seam (cuda/matmul_cuda.h) against the CPU matmul (ops/matmul.h) on the same inputs:
// fp32 within 1e-5 relative to the largest value; bf16 within twice the error of a plain bf16
// computation (fp32 arithmetic on the bf16 inputs, rounded to bf16) against fp64. Every
// transpose, leading dimensions wider than the rows, sizes of 1 and odd sizes, accumulation into
// the output and the fp32 weight gradient from bf16 inputs. Outputs are poisoned (NaN) before
// each product whose beta is 0, which must not read them. Skipped without a GPU; the simt build
// runs the same calls through its host stand-in.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "flashgpt/core/device.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/matmul_cuda.h"
#include "flashgpt/ops/matmul.h"
#include "testing/bf16.h"
#include "testing/device_buffers.h"
#include "testing/errors.h"

namespace flashgpt {
namespace {

using cuda::bf16;
using cuda::DeviceBuffer;
using testing::round_bf16;
using testing::error_of;
using testing::up_bf16;

#define SKIP_WITHOUT_GPU() \
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none

std::vector<float> normal(Rng& rng, size_t n, double sd = 1.0) {
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(rng.normal() * sd);
  return v;
}

// max |a − b| / max(1, max |b|); a non-finite value (unwritten output) fails.
double rel_error(const std::vector<float>& a, const std::vector<double>& b) {
  double scale = 1.0, worst = 0.0;
  for (double x : b) scale = std::max(scale, std::abs(x));
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return std::numeric_limits<double>::infinity();
    worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  return worst / scale;
}

DeviceBuffer up_f32(const std::vector<float>& h) { return testing::up(h); }
std::vector<float> down_f32(const DeviceBuffer& d, size_t n) { return testing::down_as<float>(d, n); }
std::vector<float> down_bf16(const DeviceBuffer& d, size_t n) { return testing::down_as<bf16>(d, n); }

// C = alpha·op(A)·op(B) + beta·C in double, row-major with leading dimensions.
std::vector<double> gemm_ref(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha,
                             const std::vector<float>& A, int64_t lda, const std::vector<float>& B, int64_t ldb,
                             double beta, const std::vector<float>& C, int64_t ldc) {
  std::vector<double> out(C.begin(), C.end());
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) {
        s += static_cast<double>(ta ? A[k * lda + i] : A[i * lda + k]) * (tb ? B[j * ldb + k] : B[k * ldb + j]);
      }
      out[i * ldc + j] = alpha * s + (beta != 0 ? beta * C[i * ldc + j] : 0.0);
    }
  }
  return out;
}

struct Shape {
  int64_t M, N, K;
  bool ta, tb;
  int64_t pad;  // extra columns in every leading dimension
};

const Shape kShapes[] = {{1, 1, 1, false, false, 0},   {7, 5, 3, false, true, 0},   {33, 17, 65, true, false, 3},
                         {64, 128, 32, true, true, 0}, {96, 50, 129, false, true, 5}, {13, 200, 40, false, false, 1}};

TEST(CudaMatmul, Fp32GemmMatchesTheCpuForEveryTransposeAndStride) {
  SKIP_WITHOUT_GPU();
  Rng rng(5);
  for (const Shape& s : kShapes) {
    for (float beta : {0.0f, 0.5f}) {
      const int64_t lda = (s.ta ? s.M : s.K) + s.pad, ldb = (s.tb ? s.K : s.N) + s.pad, ldc = s.N + s.pad;
      const std::vector<float> A = normal(rng, static_cast<size_t>((s.ta ? s.K : s.M) * lda));
      const std::vector<float> B = normal(rng, static_cast<size_t>((s.tb ? s.N : s.K) * ldb));
      std::vector<float> C = normal(rng, static_cast<size_t>(s.M * ldc));
      DeviceBuffer dA = up_f32(A), dB = up_f32(B), dC(C.size() * 4);
      if (beta == 0.0f) {
        dC.fill_bytes(0xFF);  // NaN: must not be read
        // The padding columns keep their poison, so the reference holds NaN there too.
        C.assign(C.size(), std::numeric_limits<float>::quiet_NaN());
      } else {
        dC.upload(C.data(), C.size() * 4);
      }
      cuda::gemm<float, float>(s.ta, s.tb, s.M, s.N, s.K, 1.5f, dA.as<float>(), lda, dB.as<float>(), ldb, beta,
                               dC.as<float>(), ldc);
      const std::vector<float> got = down_f32(dC, C.size());
      const std::vector<double> want = gemm_ref(s.ta, s.tb, s.M, s.N, s.K, 1.5, A, lda, B, ldb, beta, C, ldc);
      // Compare the written columns only.
      std::vector<float> g;
      std::vector<double> w;
      for (int64_t i = 0; i < s.M; ++i) {
        for (int64_t j = 0; j < s.N; ++j) {
          g.push_back(got[i * ldc + j]);
          w.push_back(want[i * ldc + j]);
        }
      }
      EXPECT_LT(rel_error(g, w), 1e-5) << s.M << "x" << s.N << "x" << s.K << " ta=" << s.ta << " tb=" << s.tb
                                       << " beta=" << beta;
    }
  }
}

TEST(CudaMatmul, Bf16GemmIsWithinTwiceAPlainBf16Computation) {
  SKIP_WITHOUT_GPU();
  Rng rng(6);
  for (const Shape& s : kShapes) {
    const int64_t lda = (s.ta ? s.M : s.K) + s.pad, ldb = (s.tb ? s.K : s.N) + s.pad, ldc = s.N;
    // bf16 inputs: the reference and the plain computation see the same rounded values.
    const std::vector<float> A = round_bf16(normal(rng, static_cast<size_t>((s.ta ? s.K : s.M) * lda)));
    const std::vector<float> B = round_bf16(normal(rng, static_cast<size_t>((s.tb ? s.N : s.K) * ldb)));
    const std::vector<float> zero(static_cast<size_t>(s.M * ldc), 0.0f);
    const std::vector<double> want = gemm_ref(s.ta, s.tb, s.M, s.N, s.K, 1.0, A, lda, B, ldb, 0.0, zero, ldc);
    std::vector<float> plain(want.size());
    {
      const std::vector<double> f = gemm_ref(s.ta, s.tb, s.M, s.N, s.K, 1.0, A, lda, B, ldb, 0.0, zero, ldc);
      for (size_t i = 0; i < f.size(); ++i) plain[i] = round_bf16(static_cast<float>(f[i]));
    }
    const double plain_err = std::max(rel_error(plain, want), 1e-7);
    DeviceBuffer dA = up_bf16(A), dB = up_bf16(B), dC(zero.size() * 2), dCf(zero.size() * 4);
    dC.fill_bytes(0xFF);
    cuda::gemm<bf16, bf16>(s.ta, s.tb, s.M, s.N, s.K, 1.0f, dA.as<bf16>(), lda, dB.as<bf16>(), ldb, 0.0f,
                           dC.as<bf16>(), ldc);
    EXPECT_LE(rel_error(down_bf16(dC, zero.size()), want), 2 * plain_err)
        << s.M << "x" << s.N << "x" << s.K << " ta=" << s.ta << " tb=" << s.tb;
    // fp32 output from bf16 inputs (the weight gradient's form): fp32-accurate.
    dCf.fill_bytes(0xFF);
    cuda::gemm<bf16, float>(s.ta, s.tb, s.M, s.N, s.K, 1.0f, dA.as<bf16>(), lda, dB.as<bf16>(), ldb, 0.0f,
                            dCf.as<float>(), ldc);
    EXPECT_LT(rel_error(down_f32(dCf, zero.size()), want), 1e-5)
        << s.M << "x" << s.N << "x" << s.K << " ta=" << s.ta << " tb=" << s.tb;
  }
}

// Strided batches as latent attention uses them: per-head slices of interleaved rows (A and C
// strided by a head's width inside wide rows), per-head weight matrices (B strided by a whole
// matrix); each product against the reference on its own slices, the gaps between slices left
// alone (poisoned, beta = 0).
TEST(CudaMatmul, StridedBatchesEqualOneGemmPerBatch) {
  SKIP_WITHOUT_GPU();
  Rng rng(8);
  struct Case {
    int64_t heads, M, N, K;
    bool tb;
  };
  for (const Case& cs : {Case{1, 3, 5, 7, false}, Case{4, 9, 16, 8, false}, Case{3, 5, 8, 16, true}}) {
    const int64_t H = cs.heads, M = cs.M, N = cs.N, K = cs.K;
    const int64_t lda = H * (K + 2), ldc = H * (N + 3), stride_a = K + 2, stride_c = N + 3;  // gaps between heads
    const int64_t ldb = cs.tb ? K : N, stride_b = K * N;
    const std::vector<float> A = round_bf16(normal(rng, static_cast<size_t>(M * lda)));
    const std::vector<float> B = round_bf16(normal(rng, static_cast<size_t>(H * stride_b)));
    for (bool bf16_io : {false, true}) {
      DeviceBuffer dA = bf16_io ? up_bf16(A) : up_f32(A), dB = bf16_io ? up_bf16(B) : up_f32(B);
      DeviceBuffer dC(static_cast<size_t>(M * ldc) * (bf16_io ? 2 : 4));
      dC.fill_bytes(0xFF);
      if (bf16_io) {
        cuda::gemm_batched<bf16, bf16>(false, cs.tb, M, N, K, 1.0f, dA.as<bf16>(), lda, stride_a, dB.as<bf16>(), ldb,
                                       stride_b, 0.0f, dC.as<bf16>(), ldc, stride_c, H);
      } else {
        cuda::gemm_batched<float, float>(false, cs.tb, M, N, K, 1.0f, dA.as<float>(), lda, stride_a, dB.as<float>(),
                                         ldb, stride_b, 0.0f, dC.as<float>(), ldc, stride_c, H);
      }
      const std::vector<float> got = bf16_io ? down_bf16(dC, static_cast<size_t>(M * ldc))
                                             : down_f32(dC, static_cast<size_t>(M * ldc));
      for (int64_t h = 0; h < H; ++h) {
        const std::vector<float> Ah(A.begin() + h * stride_a, A.end());
        const std::vector<float> Bh(B.begin() + h * stride_b, B.begin() + (h + 1) * stride_b);
        const std::vector<float> zero(static_cast<size_t>(M * N), 0.0f);
        const std::vector<double> want = gemm_ref(false, cs.tb, M, N, K, 1.0, Ah, lda, Bh, ldb, 0.0, zero, N);
        std::vector<float> g, plain;
        for (int64_t i = 0; i < M; ++i) {
          for (int64_t j = 0; j < N; ++j) g.push_back(got[static_cast<size_t>(i * ldc + h * stride_c + j)]);
        }
        for (double w : want) plain.push_back(round_bf16(static_cast<float>(w)));
        const double tol = bf16_io ? 2 * std::max(rel_error(plain, want), 1e-7) : 1e-5;
        EXPECT_LE(rel_error(g, want), tol) << "head " << h << " of " << H << (bf16_io ? " bf16" : " fp32");
      }
      // The gap after each head's columns was never written.
      for (int64_t i = 0; i < M; ++i) {
        for (int64_t h = 0; h < H; ++h) {
          EXPECT_TRUE(std::isnan(got[static_cast<size_t>(i * ldc + h * stride_c + N)])) << "row " << i << " head " << h;
        }
      }
    }
  }
  DeviceBuffer d(64);
  EXPECT_NE(error_of([&] {
              cuda::gemm_batched<float, float>(false, false, 1, 1, 1, 1.0f, d.as<float>(), 1, 0, d.as<float>(), 1, 1,
                                               0.0f, d.as<float>(), 1, 1, 2);
            }).find("bad batch"),
            std::string::npos);
}

// The layer-level calls against the CPU's matmul_forward / matmul_backward.
TEST(CudaMatmul, MatmulForwardAndBackwardMatchTheCpuOps) {
  SKIP_WITHOUT_GPU();
  Rng rng(8);
  for (auto [N, C, OC] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {37, 24, 40}, {64, 96, 33}}) {
    for (bool bias : {false, true}) {
      const std::vector<float> inp = normal(rng, static_cast<size_t>(N * C)), w = normal(rng, static_cast<size_t>(OC * C));
      const std::vector<float> b = normal(rng, static_cast<size_t>(OC)), dout = normal(rng, static_cast<size_t>(N * OC));
      const std::vector<float> dinp0 = normal(rng, static_cast<size_t>(N * C)), dw0 = normal(rng, static_cast<size_t>(OC * C));
      const std::vector<float> db0 = normal(rng, static_cast<size_t>(OC));
      // CPU in double.
      std::vector<double> out(static_cast<size_t>(N * OC)), dinp(dinp0.begin(), dinp0.end()), dw(dw0.begin(), dw0.end()),
          db(db0.begin(), db0.end());
      auto dd = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
      const std::vector<double> inp_d = dd(inp), w_d = dd(w), b_d = dd(b), dout_d = dd(dout);
      ops::matmul_forward<double>(out.data(), inp_d.data(), w_d.data(), bias ? b_d.data() : nullptr, N, C, OC);
      ops::matmul_backward<double>(dinp.data(), dw.data(), bias ? db.data() : nullptr, dout_d.data(), inp_d.data(),
                                   w_d.data(), N, C, OC, /*accumulate_dinp=*/true);
      // GPU in fp32.
      DeviceBuffer d_inp = up_f32(inp), d_w = up_f32(w), d_b = up_f32(b), d_dout = up_f32(dout), d_out(out.size() * 4);
      DeviceBuffer d_dinp = up_f32(dinp0), d_dw = up_f32(dw0), d_db = up_f32(db0);
      d_out.fill_bytes(0xFF);
      cuda::matmul_forward<float>(d_out.as<float>(), d_inp.as<float>(), d_w.as<float>(), bias ? d_b.as<float>() : nullptr,
                                  N, C, OC);
      cuda::matmul_backward<float>(d_dinp.as<float>(), d_dw.as<float>(), bias ? d_db.as<float>() : nullptr,
                                   d_dout.as<float>(), d_inp.as<float>(), d_w.as<float>(), N, C, OC, true);
      EXPECT_LT(rel_error(down_f32(d_out, out.size()), out), 1e-5) << N << "," << C << "," << OC << " bias " << bias;
      EXPECT_LT(rel_error(down_f32(d_dinp, dinp.size()), dinp), 1e-5) << N << "," << C << "," << OC;
      EXPECT_LT(rel_error(down_f32(d_dw, dw.size()), dw), 1e-5) << N << "," << C << "," << OC;
      if (bias) {
        EXPECT_LT(rel_error(down_f32(d_db, db.size()), db), 1e-5) << N << "," << C << "," << OC;
      }
      // The input gradient written rather than added; no input gradient at all.
      ops::matmul_backward<double>(dinp.data(), dw.data(), nullptr, dout_d.data(), inp_d.data(), w_d.data(), N, C, OC,
                                   false);
      d_dinp.fill_bytes(0xFF);
      cuda::matmul_backward<float>(d_dinp.as<float>(), d_dw.as<float>(), nullptr, d_dout.as<float>(), d_inp.as<float>(),
                                   d_w.as<float>(), N, C, OC, false);
      EXPECT_LT(rel_error(down_f32(d_dinp, dinp.size()), dinp), 1e-5) << N << "," << C << "," << OC;
      cuda::matmul_backward<float>(nullptr, d_dw.as<float>(), nullptr, d_dout.as<float>(), d_inp.as<float>(),
                                   d_w.as<float>(), N, C, OC, false);
      ops::matmul_backward<double>(nullptr, dw.data(), nullptr, dout_d.data(), inp_d.data(), w_d.data(), N, C, OC, false);
      EXPECT_LT(rel_error(down_f32(d_dw, dw.size()), dw), 1e-5) << N << "," << C << "," << OC;
    }
  }
}

// GELU (tanh approximation) and its derivative in double.
double gelu_d(double x) {
  const double u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
  return 0.5 * x * (1.0 + std::tanh(u));
}
double gelu_grad_d(double x) {
  const double u = 0.7978845608028654 * (x + 0.044715 * x * x * x), t = std::tanh(u);
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x);
}

// The MLP's GELU inside its GEMMs (cuBLASLt's GELU and DGELU epilogues on the GPU; a width that is
// not a multiple of 8 takes the separate passes) against fp64 on the same bf16 inputs: each bf16
// output within twice the error of the plain separate computation (the product rounded, then GELU
// or GELU' of it rounded); the fp32 weight and bias gradients within 1e-5.
TEST(CudaMatmul, GeluEpiloguesAreWithinTwiceThePlainSeparatePasses) {
  SKIP_WITHOUT_GPU();
  Rng rng(9);
  auto within = [](const std::vector<float>& got, const std::vector<float>& plain, const std::vector<double>& want) {
    return rel_error(got, want) <= 2 * std::max(rel_error(plain, want), 1e-7);
  };
  for (auto [N, C, OC] : {std::tuple<int64_t, int64_t, int64_t>{1, 8, 8}, {37, 24, 40}, {64, 96, 64}, {5, 16, 12}}) {
    for (bool bias : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "forward " << N << "×" << C << "→" << OC << (bias ? " with bias" : ""));
      const std::vector<float> inp = round_bf16(normal(rng, static_cast<size_t>(N * C)));
      const std::vector<float> w = round_bf16(normal(rng, static_cast<size_t>(OC * C), 0.3));
      const std::vector<float> b = round_bf16(normal(rng, static_cast<size_t>(OC)));
      std::vector<double> pre(static_cast<size_t>(N * OC)), act(pre.size());
      std::vector<float> pre_plain(pre.size()), act_plain(pre.size());
      for (int64_t i = 0; i < N; ++i) {
        for (int64_t j = 0; j < OC; ++j) {
          double v = bias ? b[static_cast<size_t>(j)] : 0.0;
          for (int64_t k = 0; k < C; ++k) v += static_cast<double>(inp[i * C + k]) * w[j * C + k];
          const size_t e = static_cast<size_t>(i * OC + j);
          pre[e] = v;
          act[e] = gelu_d(v);
          pre_plain[e] = round_bf16(static_cast<float>(v));
          act_plain[e] = round_bf16(static_cast<float>(gelu_d(pre_plain[e])));
        }
      }
      DeviceBuffer d_inp = up_bf16(inp), d_w = up_bf16(w), d_b = up_bf16(b), d_pre(pre.size() * 2), d_act(pre.size() * 2);
      d_pre.fill_bytes(0xFF);
      d_act.fill_bytes(0xFF);
      cuda::matmul_gelu_forward(d_act.as<bf16>(), d_pre.as<bf16>(), d_inp.as<bf16>(), d_w.as<bf16>(),
                                bias ? d_b.as<bf16>() : nullptr, N, C, OC);
      EXPECT_TRUE(within(down_bf16(d_pre, pre.size()), pre_plain, pre)) << "the pre-activation";
      EXPECT_TRUE(within(down_bf16(d_act, pre.size()), act_plain, act)) << "GELU of it";
    }
  }
  // Backward: a layer of input width C (a multiple of 8 but the last) whose input was GELU(pre).
  for (auto [N, C, OC] : {std::tuple<int64_t, int64_t, int64_t>{1, 8, 8}, {37, 40, 24}, {64, 64, 96}, {5, 12, 16}}) {
    SCOPED_TRACE(::testing::Message() << "backward " << N << "×" << C << "→" << OC);
    const std::vector<float> pre = round_bf16(normal(rng, static_cast<size_t>(N * C), 2.0));
    std::vector<float> act(pre.size());
    for (size_t e = 0; e < pre.size(); ++e) act[e] = round_bf16(static_cast<float>(gelu_d(pre[e])));
    const std::vector<float> w = round_bf16(normal(rng, static_cast<size_t>(OC * C), 0.3));
    const std::vector<float> dout = round_bf16(normal(rng, static_cast<size_t>(N * OC)));
    const std::vector<float> dw0 = normal(rng, static_cast<size_t>(OC * C)), db0 = normal(rng, static_cast<size_t>(OC));
    std::vector<double> dpre(pre.size()), dw(dw0.begin(), dw0.end()), db(db0.begin(), db0.end());
    std::vector<float> dpre_plain(pre.size());
    for (int64_t i = 0; i < N; ++i) {
      for (int64_t k = 0; k < C; ++k) {
        double v = 0;
        for (int64_t j = 0; j < OC; ++j) v += static_cast<double>(dout[i * OC + j]) * w[j * C + k];
        const size_t e = static_cast<size_t>(i * C + k);
        dpre[e] = v * gelu_grad_d(pre[e]);
        dpre_plain[e] = round_bf16(static_cast<float>(round_bf16(static_cast<float>(v)) * gelu_grad_d(pre[e])));
      }
    }
    for (int64_t j = 0; j < OC; ++j) {
      for (int64_t i = 0; i < N; ++i) {
        db[static_cast<size_t>(j)] += dout[i * OC + j];
        for (int64_t k = 0; k < C; ++k) dw[static_cast<size_t>(j * C + k)] += static_cast<double>(dout[i * OC + j]) * act[i * C + k];
      }
    }
    DeviceBuffer d_pre = up_bf16(pre), d_act = up_bf16(act), d_w = up_bf16(w), d_dout = up_bf16(dout);
    DeviceBuffer d_dw = up_f32(dw0), d_db = up_f32(db0), d_dpre(pre.size() * 2), d_scratch(pre.size() * 2);
    d_dpre.fill_bytes(0xFF);
    d_scratch.fill_bytes(0xFF);
    cuda::matmul_backward_dgelu(d_dpre.as<bf16>(), d_scratch.as<bf16>(), d_dw.as<float>(), d_db.as<float>(),
                                d_dout.as<bf16>(), d_act.as<bf16>(), d_pre.as<bf16>(), d_w.as<bf16>(), N, C, OC);
    EXPECT_TRUE(within(down_bf16(d_dpre, pre.size()), dpre_plain, dpre)) << "the gradient through GELU";
    EXPECT_LT(rel_error(down_f32(d_dw, dw.size()), dw), 1e-5) << "the weight gradient";
    EXPECT_LT(rel_error(down_f32(d_db, db.size()), db), 1e-5) << "the bias gradient";
  }
}

TEST(CudaMatmul, BadSizesAreErrors) {
  SKIP_WITHOUT_GPU();
  DeviceBuffer a(64), b(64), c(64);
  float* A = a.as<float>();
  float* B = b.as<float>();
  float* C = c.as<float>();
  // lda 3 < K 4; a negative size.
  EXPECT_NE(error_of([&] { cuda::gemm<float, float>(false, false, 2, 2, 4, 1.0f, A, 3, B, 2, 0.0f, C, 2); })
                .find("GPU gemm: bad sizes M=2 N=2 K=4 lda=3"),
            std::string::npos);
  EXPECT_NE(error_of([&] { cuda::gemm<float, float>(false, false, -1, 2, 2, 1.0f, A, 2, B, 2, 0.0f, C, 2); })
                .find("bad sizes"),
            std::string::npos);
}

}  // namespace
}  // namespace flashgpt
