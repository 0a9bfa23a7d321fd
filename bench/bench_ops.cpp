// Micro-benchmarks of the CPU ops at GPT-2 124M sizes (B·T = 256 rows), with Google Benchmark.
// Each reports FLOP/s or bytes/s as counters so runs compare by rate, not by wall time alone.
#include <benchmark/benchmark.h>

#include <cmath>
#include <vector>

#include "cpu/tile_gemm.h"
#include "flashgpt/attention/attention.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/infer/sampler.h"
#include "flashgpt/ops/activation.h"
#include "flashgpt/ops/adamw.h"
#include "flashgpt/ops/cross_entropy.h"
#include "flashgpt/ops/matmul.h"
#include "flashgpt/ops/norm.h"

namespace {

using namespace flashgpt;

std::vector<float> random_floats(size_t n, uint64_t seed = 1) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(rng.normal() * 0.02);
  return v;
}

void BM_MatmulForward(benchmark::State& state) {
  const int64_t N = state.range(0), C = state.range(1), OC = state.range(2);
  auto x = random_floats(N * C), w = random_floats(OC * C), b = random_floats(OC);
  std::vector<float> out(N * OC);
  for (auto _ : state) {
    ops::matmul_forward(out.data(), x.data(), w.data(), b.data(), N, C, OC);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["FLOP/s"] = benchmark::Counter(2.0 * N * C * OC, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_MatmulForward)->Args({256, 768, 2304})->Args({256, 768, 3072})->Args({256, 768, 50304})
    ->Unit(benchmark::kMillisecond);

void BM_MatmulBackward(benchmark::State& state) {
  const int64_t N = state.range(0), C = state.range(1), OC = state.range(2);
  auto x = random_floats(N * C), w = random_floats(OC * C), dout = random_floats(N * OC);
  std::vector<float> dx(N * C), dw(OC * C), db(OC);
  for (auto _ : state) {
    ops::matmul_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), N, C, OC, false);
    benchmark::DoNotOptimize(dw.data());
  }
  state.counters["FLOP/s"] = benchmark::Counter(4.0 * N * C * OC, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_MatmulBackward)->Args({256, 768, 3072})->Args({256, 768, 50304})->Unit(benchmark::kMillisecond);

void BM_LayerNormForwardBackward(benchmark::State& state) {
  const int64_t N = 256, C = 768;
  auto x = random_floats(N * C), w = random_floats(C), b = random_floats(C), dy = random_floats(N * C);
  std::vector<float> y(N * C), mean(N), rstd(N), dx(N * C), dw(C), db(C);
  for (auto _ : state) {
    ops::layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C, 1e-5f);
    ops::layernorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), mean.data(), rstd.data(),
                            N, C, false);
    benchmark::DoNotOptimize(dx.data());
  }
  state.counters["bytes/s"] = benchmark::Counter(4.0 * N * C * 5, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_LayerNormForwardBackward)->Unit(benchmark::kMicrosecond);

void BM_Gelu(benchmark::State& state) {
  const int64_t n = 256 * 3072;
  auto x = random_floats(n), dy = random_floats(n);
  std::vector<float> y(n), dx(n);
  for (auto _ : state) {
    ops::gelu_forward(y.data(), x.data(), n);
    ops::gelu_backward(dx.data(), x.data(), dy.data(), n);
    benchmark::DoNotOptimize(dx.data());
  }
}
BENCHMARK(BM_Gelu)->Unit(benchmark::kMicrosecond);

void BM_CrossEntropy(benchmark::State& state) {
  const int64_t N = 256, V = 50257, Vp = 50304;
  auto logits = random_floats(N * Vp);
  std::vector<float> probs(N * Vp), losses(N);
  std::vector<int> targets(N, 7);
  for (auto _ : state) {
    probs = logits;
    ops::softmax_cross_entropy_forward(probs.data(), losses.data(), targets.data(), N, V, Vp);
    ops::softmax_cross_entropy_backward(probs.data(), targets.data(), N, V, Vp, 1.0f / N);
    benchmark::DoNotOptimize(probs.data());
  }
}
BENCHMARK(BM_CrossEntropy)->Unit(benchmark::kMillisecond);

void BM_AdamW(benchmark::State& state) {
  const int64_t n = state.range(0);
  auto p = random_floats(n), g = random_floats(n, 2);
  std::vector<float> m(n), v(n);
  ops::AdamWParams hp;
  hp.lr = 1e-4f;
  int64_t step = 1;
  for (auto _ : state) {
    hp.step = step++;
    ops::adamw_update(p.data(), g.data(), m.data(), v.data(), n, hp, true, 1.0f);
    benchmark::DoNotOptimize(p.data());
  }
  state.counters["bytes/s"] = benchmark::Counter(28.0 * n, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_AdamW)->Arg(124475904)->Unit(benchmark::kMillisecond);

void BM_AttentionStandard(benchmark::State& state) {
  const int64_t B = 4, H = 12, T = state.range(0), D = 64;
  AttentionDims d{B, H, H, T, T, D, D, 0};
  auto q = random_floats(B * T * H * D, 1), k = random_floats(B * T * H * D, 2), v = random_floats(B * T * H * D, 3);
  std::vector<float> o(B * T * H * D), lse(B * H * T);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  for (auto _ : state) {
    attention_forward(AttentionKernel::Standard, d, AttentionMask{true, 0}, scale, q.data(), k.data(), v.data(),
                      o.data(), lse.data());
    benchmark::DoNotOptimize(o.data());
  }
  // flash-attention's convention: 4·B·H·T²·D, halved for causal.
  state.counters["FLOP/s"] =
      benchmark::Counter(2.0 * B * H * T * T * D, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_AttentionStandard)->Arg(64)->Arg(256)->Arg(1024)->Unit(benchmark::kMillisecond);

}  // namespace

// One flash-attention tile product, M × N × K, through the AVX-512 tile kernel against OpenBLAS.
// Arguments: M, N, K, and 0 for S = Q Kᵀ (B packed), 1 for P V (B rows), 2 for Pᵀ dO (A transposed).
void BM_TileProduct(benchmark::State& state, bool blas) {
  const int64_t M = state.range(0), N = state.range(1), K = state.range(2), layout = state.range(3);
  std::vector<float> a(static_cast<size_t>(M * K), 0.5f), b(static_cast<size_t>(K * N), 0.25f), c(static_cast<size_t>(M * N));
  Rng rng(1);
  for (auto& x : a) x = static_cast<float>(rng.next_u64() % 1000) / 1000.0f;
  for (auto& x : b) x = static_cast<float>(rng.next_u64() % 1000) / 1000.0f;
  const bool at = layout == 2;
  for (auto _ : state) {
    if (blas) {
      ops::gemm<float>(at, false, M, N, K, 1.0f, a.data(), at ? M : K, b.data(), N, 1.0f, c.data(), N);
    } else {
      cpu::tile_gemm(M, N, K, 1.0f, a.data(), at ? 1 : K, at ? M : 1, b.data(), N, c.data(), N, true);
    }
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * M * N * K, benchmark::Counter::kIsIterationInvariantRate,
                                                  benchmark::Counter::kIs1000);
}
BENCHMARK_CAPTURE(BM_TileProduct, tile, false)->Args({64, 128, 128, 0})->Args({64, 128, 128, 1})->Args({128, 128, 64, 2});
BENCHMARK_CAPTURE(BM_TileProduct, openblas, true)->Args({64, 128, 128, 0})->Args({64, 128, 128, 1})->Args({128, 128, 64, 2});

// One draw from GPT-2's 50257 logits (padded to 50304): greedy, top-k 40, nucleus 0.9 and plain
// temperature sampling — the host-side work of every sample at every decoding step.
void BM_SampleToken(benchmark::State& state) {
  const std::vector<float> logits = [] {
    std::vector<float> v = random_floats(50304, 7);
    for (float& x : v) x *= 150.0f;  // logits with a spread like a trained model's (σ = 3)
    return v;
  }();
  SampleOptions opt;
  switch (state.range(0)) {
    case 0: opt.temperature = 0.0f; break;
    case 1: opt.top_k = 40; break;
    case 2: opt.top_p = 0.9f; break;
    default: break;
  }
  Rng rng(3);
  for (auto _ : state) benchmark::DoNotOptimize(sample_token(logits.data(), 50257, opt, rng));
  state.SetLabel(state.range(0) == 0 ? "greedy" : state.range(0) == 1 ? "top-k 40" : state.range(0) == 2 ? "top-p 0.9" : "temperature 1");
}
BENCHMARK(BM_SampleToken)->DenseRange(0, 3)->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
