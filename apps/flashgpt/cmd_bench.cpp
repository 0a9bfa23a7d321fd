// flashgpt bench train: training throughput and model-FLOP utilisation against the sgemm rate
// measured on the same machine in the same run.
#include <algorithm>
#include <cmath>
#include <memory>

#include "commands.h"

extern "C" char* openblas_get_corename(void);
#include "flashgpt/core/error.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/core/threads.h"
#include "flashgpt/core/timer.h"
#include "flashgpt/model/gpt.h"
#include "flashgpt/ops/adamw.h"
#include "flashgpt/train/trainer.h"

namespace flashgpt::cli {

namespace {

struct BenchTrainCli {
  ModelFlags model;
  int64_t batch_size = 4, seq_len = 64;
  int steps = 5, warmup = 1;
  int gemm_size = 1024;
  bool json = false;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void run_bench_train(const BenchTrainCli& c) {
  const GPTConfig cfg = c.model.resolve("d12");
  FLASHGPT_CHECK(c.seq_len > 0 && c.seq_len <= cfg.block_size, "--seq-len: must be in 1…{}", cfg.block_size);
  FLASHGPT_CHECK(c.batch_size > 0 && c.steps > 0 && c.warmup >= 0, "--batch-size and --steps must be positive");
  const double gemm_before = measure_sgemm_gflops(c.gemm_size, 7);

  GPT<float> model(cfg);
  model.init_weights(1);
  const int64_t B = c.batch_size, T = c.seq_len, n = model.num_params();
  std::vector<float> m(static_cast<size_t>(n), 0.0f), v(static_cast<size_t>(n), 0.0f);
  std::vector<int> x(static_cast<size_t>(B * T)), y(x.size());
  Rng rng(2);
  for (auto& t : x) t = static_cast<int>(rng.next_u64() % static_cast<uint64_t>(cfg.vocab_size));
  for (auto& t : y) t = static_cast<int>(rng.next_u64() % static_cast<uint64_t>(cfg.vocab_size));
  std::vector<double> times;
  double loss = 0;
  for (int s = 0; s < c.warmup + c.steps; ++s) {
    Timer t;
    model.zero_grad();
    loss = model.forward(x.data(), y.data(), B, T);
    model.backward();
    ops::AdamWParams hp;
    hp.lr = 1e-4f;
    hp.weight_decay = 0.1f;
    hp.step = s + 1;
    for (const ParamSpec& p : model.specs()) {
      ops::adamw_update(model.params().data() + p.offset, model.grads().data() + p.offset, m.data() + p.offset,
                        v.data() + p.offset, p.numel(), hp, p.decay, 1.0f);
    }
    if (s >= c.warmup) times.push_back(t.seconds());
  }
  FLASHGPT_CHECK(std::isfinite(loss), "bench: the model produced a non-finite loss");
  const double gemm_after = measure_sgemm_gflops(c.gemm_size, 7);
  const double gemm = std::max(gemm_before, gemm_after);  // the higher of the two is the fairer ceiling
  const double step_s = median(times);
  const double tok_s = static_cast<double>(B * T) / step_s;
  const ModelStats stats = model_stats(cfg, static_cast<int>(T));
  const double model_gflops = stats.train_flops_per_token * tok_s / 1e9;
  const double mfu = model_gflops / gemm;
  if (c.json) {
    nlohmann::json j = {{"bench", "train"},
                        {"params", n},
                        {"batch", B},
                        {"seq", T},
                        {"threads", num_threads()},
                        {"blas_kernels", openblas_get_corename()},
                        {"steps", c.steps},
                        {"step_s_median", step_s},
                        {"step_s_min", *std::min_element(times.begin(), times.end())},
                        {"step_s_max", *std::max_element(times.begin(), times.end())},
                        {"tokens_per_s", tok_s},
                        {"model_gflops", model_gflops},
                        {"gemm_gflops", gemm},
                        {"gemm_gflops_before", gemm_before},
                        {"gemm_gflops_after", gemm_after},
                        {"gemm_size", c.gemm_size},
                        {"mfu", mfu},
                        {"loss", loss}};
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("train step: %.2fM params, B=%lld T=%lld, %d threads\n", static_cast<double>(n) / 1e6,
              static_cast<long long>(B), static_cast<long long>(T), num_threads());
  std::printf("  step time  median %.3f s (min %.3f, max %.3f over %d steps)\n", step_s,
              *std::min_element(times.begin(), times.end()), *std::max_element(times.begin(), times.end()), c.steps);
  std::printf("  throughput %.0f tokens/s, %.1f model GFLOP/s (6N + 6LCT per token)\n", tok_s, model_gflops);
  std::printf("  sgemm      %.1f GFLOP/s (%d³, best of before/after: %.1f / %.1f; OpenBLAS %s kernels)\n", gemm,
              c.gemm_size, gemm_before, gemm_after, openblas_get_corename());
  std::printf("  MFU        %.1f%% of the measured sgemm rate\n", mfu * 100);
}

}  // namespace

void register_bench(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks, checked and timed on this machine");
  bench->require_subcommand(1, 1);
  auto c = std::make_shared<BenchTrainCli>();
  CLI::App* tr = bench->add_subcommand("train", "Training-step throughput and MFU against the measured sgemm rate");
  add_model_flags(*tr, c->model);
  tr->add_option("-b,--batch-size", c->batch_size, "Sequences per step")->capture_default_str();
  tr->add_option("-t,--seq-len", c->seq_len, "Tokens per sequence")->capture_default_str();
  tr->add_option("--steps", c->steps, "Timed steps (median reported)")->capture_default_str();
  tr->add_option("--warmup", c->warmup, "Untimed warm-up steps")->capture_default_str();
  tr->add_option("--gemm-size", c->gemm_size, "Square sgemm size for the reference rate")->capture_default_str();
  tr->add_flag("--json", c->json, "Print one JSON object");
  tr->callback([c] { run_bench_train(*c); });
  register_bench_attention(*bench);
  register_bench_decode(*bench);
}

}  // namespace flashgpt::cli
