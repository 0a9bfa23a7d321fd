// flashgpt eval: loss and perplexity of a checkpoint on token shards, on the CPU or the GPU.
#include <cmath>
#include <memory>

#include "checkpoint_loading.h"
#include "commands.h"
#include "device_flags.h"
#include "flashgpt/core/device.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/gpt_cuda.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/timer.h"
#include "flashgpt/data/dataloader.h"

namespace flashgpt::cli {

namespace {

struct EvalCli {
  std::string checkpoint, data;
  int64_t batch_size = 4, seq_len = 0, batches = 0;
  bool json = false;
  DeviceFlags device;
};

void run_eval(const EvalCli& c) {
  LoadedModel m = load_model(c.checkpoint, "");
  const GPTConfig& cfg = m.model->config();
  const int64_t T = c.seq_len > 0 ? c.seq_len : std::min<int64_t>(cfg.block_size, 1024);
  FLASHGPT_CHECK(T <= cfg.block_size, "--seq-len: {} exceeds the model's block_size {}", T, cfg.block_size);
  FLASHGPT_CHECK(c.batch_size > 0, "--batch-size: must be positive");
  DataLoader loader(c.data, c.batch_size, T, cfg.vocab_size);
  const int64_t per_batch = c.batch_size * T;
  const int64_t available = loader.total_tokens() / per_batch;  // one pass over the data
  const int64_t n = c.batches > 0 ? c.batches : std::max<int64_t>(1, available);
  const cuda::Precision precision = cuda::parse_precision(c.device.precision, "--precision");
  const DeviceChoice where =
      choose_device(cuda::devices(), c.device.device, [&] { return cuda::GPTCuda::unsupported(cfg, precision); },
                    c.device.precision);
  if (!c.json && !where.line.empty()) std::fprintf(stderr, "%s\n", where.line.c_str());  // --json: in its object
  std::unique_ptr<cuda::GPTCuda> gpu;
  if (where.gpu) {
    gpu = std::make_unique<cuda::GPTCuda>(cfg, precision);
    gpu->set_params(m.model->params());
  }
  std::vector<int> x(static_cast<size_t>(per_batch)), y(static_cast<size_t>(per_batch));
  Timer t;
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    loader.next_batch(x.data(), y.data());
    sum += gpu ? gpu->forward(x.data(), y.data(), c.batch_size, T) : m.model->forward(x.data(), y.data(), c.batch_size, T);
  }
  const double loss = sum / static_cast<double>(n);
  if (c.json) {
    std::printf("%s\n", nlohmann::json{{"loss", loss},
                                       {"perplexity", std::exp(loss)},
                                       {"tokens", n * per_batch},
                                       {"device", where.gpu ? "cuda" : "cpu"},
                                       {"precision", where.gpu ? c.device.precision : "fp32"},
                                       {"seconds", t.seconds()}}
                            .dump()
                            .c_str());
  } else {
    std::printf("loss %.4f | perplexity %.2f | %lld tokens in %lld batches of %lld×%lld | %.1f s\n", loss,
                std::exp(loss), static_cast<long long>(n * per_batch), static_cast<long long>(n),
                static_cast<long long>(c.batch_size), static_cast<long long>(T), t.seconds());
  }
}

}  // namespace

void register_eval(CLI::App& app) {
  auto c = std::make_shared<EvalCli>();
  CLI::App* sub = app.add_subcommand("eval", "Loss and perplexity of a checkpoint on token shards");
  sub->add_option("-c,--checkpoint", c->checkpoint, "Checkpoint (.safetensors) or llm.c model (.bin)")
      ->required()
      ->check(CLI::ExistingFile);
  sub->add_option("-d,--data", c->data, "Token shards: a path or glob")->required();
  sub->add_option("-b,--batch-size", c->batch_size, "Sequences per batch")->capture_default_str();
  sub->add_option("-t,--seq-len", c->seq_len, "Tokens per sequence (0: the model's block size, at most 1024)")
      ->capture_default_str();
  sub->add_option("--batches", c->batches, "Batches to evaluate (0: one pass over the data)")->capture_default_str();
  sub->add_flag("--json", c->json, "Print one JSON object");
  add_device_flags(*sub, c->device, "evaluation");
  sub->callback([c] { run_eval(*c); });
}

}  // namespace flashgpt::cli
