// flashgpt bench ops: the training step's memory-bound ops (elementwise, norms, the fused loss,
// AdamW) at a training batch's sizes on the GPU, each on its packed path and one element at a
// time, beside the GPU's own device-to-device copy rate measured in the same run.
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <utility>

#include "commands.h"
#include "flashgpt/core/device.h"
#include "flashgpt/core/error.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/ops_bench_cuda.h"

namespace flashgpt::cli {

namespace {

struct BenchOpsCli {
  cuda::OpsBenchCase c;
  bool json = false;
};

void run_bench_ops(const BenchOpsCli& cli) {
  const cuda::OpsBenchCase& c = cli.c;
  for (auto [v, flag] : {std::pair{c.rows, "--rows"}, {c.width, "--width"}, {c.vocab, "--vocab"},
                         {c.loss_rows, "--loss-rows"}, {c.params, "--params"}}) {
    FLASHGPT_CHECK(v > 0, "{}: must be positive (got {})", flag, v);
  }
  FLASHGPT_CHECK(c.repeats > 0, "--repeats: must be positive");
  const DeviceReport dev = cuda::devices();
  FLASHGPT_CHECK(cuda::gpu_available(), "bench ops: needs a GPU: {}", dev.why_none);
  const cuda::OpsBenchResult r = cuda::bench_ops(c);
  const std::string gpu = dev.gpus.empty() ? "GPU" : dev.gpus.front().name;
  // Rows come in pairs: an op's first path (packed, or fused), then the other, whose time is also
  // given as a multiple of the first's.
  auto ratio = [&](size_t i) { return i % 2 == 1 ? r.rows[i].ms / r.rows[i - 1].ms : 1.0; };
  if (cli.json) {
    for (size_t i = 0; i < r.rows.size(); ++i) {
      const cuda::OpsBenchRow& row = r.rows[i];
      std::printf("%s\n", nlohmann::json{{"program", "flashgpt"}, {"bench", "ops"}, {"gpu", gpu}, {"op", row.op},
                                         {"path", row.path}, {"rows", c.rows}, {"width", c.width}, {"ms", row.ms},
                                         {"time_vs_first", ratio(i)},
                                         {"bytes", row.bytes}, {"gbps", row.gbps}, {"copy_gbps", r.copy_gbps},
                                         {"of_copy", row.gbps / r.copy_gbps}, {"max_diff", row.max_diff}}
                              .dump()
                              .c_str());
    }
    return;
  }
  std::printf("%s, memory-bound ops in bf16: %lld rows × %lld (MLP %lld), loss %lld × %lld, AdamW over %lld; "
              "device-to-device copy %.0f GB/s\n\n",
              gpu.c_str(), static_cast<long long>(c.rows), static_cast<long long>(c.width),
              static_cast<long long>(4 * c.width), static_cast<long long>(c.loss_rows), static_cast<long long>(c.vocab),
              static_cast<long long>(c.params), r.copy_gbps);
  std::printf("| op | path | ms | time / first path's | GB/s | of copy | max rel diff |\n|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < r.rows.size(); ++i) {
    const cuda::OpsBenchRow& row = r.rows[i];
    std::printf("| %s | %s | %.3f | %.2f | %.0f | %.0f%% | %.1e |\n", row.op.c_str(), row.path.c_str(), row.ms, ratio(i),
                row.gbps, 100.0 * row.gbps / r.copy_gbps, row.max_diff);
  }
}

}  // namespace

void register_bench_ops(CLI::App& bench) {
  auto cli = std::make_shared<BenchOpsCli>();
  cuda::OpsBenchCase& c = cli->c;
  CLI::App* sub = bench.add_subcommand(
      "ops", "GPU: the training step's memory-bound ops, packed and one element at a time, against the copy bandwidth");
  sub->add_option("--rows", c.rows, "Tokens in the batch (B·T)")->capture_default_str();
  sub->add_option("--width", c.width, "n_embd (the MLP is 4× as wide)")->capture_default_str();
  sub->add_option("--vocab", c.vocab, "Vocabulary of the loss (padded to a multiple of 64)")->capture_default_str();
  sub->add_option("--loss-rows", c.loss_rows, "Rows of logits per classifier chunk")->capture_default_str();
  sub->add_option("--params", c.params, "Parameters AdamW updates")->capture_default_str();
  sub->add_option("--repeats", c.repeats, "Timed samples (median reported)")->capture_default_str();
  sub->add_flag("--json", cli->json, "One JSON object per row");
  sub->callback([cli] { run_bench_ops(*cli); });
}

}  // namespace flashgpt::cli
