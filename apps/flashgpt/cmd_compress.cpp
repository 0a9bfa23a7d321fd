// flashgpt compress: truncated-SVD compression of a trained latent-attention checkpoint's value
// up-projections, with the loss before and after on the same batches.
#include <fmt/format.h>

#include <filesystem>
#include <memory>

#include "commands.h"
#include "flashgpt/core/error.h"
#include "flashgpt/data/dataloader.h"
#include "flashgpt/model/compress.h"
#include "flashgpt/model/gpt.h"

namespace flashgpt::cli {

namespace {

struct CompressCli {
  std::string checkpoint, out, data;
  int rank = 0;
  int64_t batch_size = 4, seq_len = 0, batches = 8;
  bool json = false;
};

// Mean loss over the first `batches` batches of the data (the same batches for every model).
double mean_loss(GPT<float>& model, const CompressCli& c, int64_t T) {
  DataLoader loader(c.data, c.batch_size, T, model.config().vocab_size);
  std::vector<int> x(static_cast<size_t>(c.batch_size * T)), y(x.size());
  double sum = 0;
  for (int64_t i = 0; i < c.batches; ++i) {
    loader.next_batch(x.data(), y.data());
    sum += model.forward(x.data(), y.data(), c.batch_size, T);
  }
  return sum / static_cast<double>(c.batches);
}

std::unique_ptr<GPT<float>> build(const CheckpointData& d) {
  auto m = std::make_unique<GPT<float>>(d.config);
  std::copy(d.params.begin(), d.params.end(), m->params().begin());
  return m;
}

void run_compress(const CompressCli& c) {
  std::error_code ec;
  FLASHGPT_CHECK(!std::filesystem::equivalent(c.checkpoint, c.out, ec),
                 "--out: {} is the input checkpoint; write the compressed model to a new file", c.out);
  const CheckpointData in = load_checkpoint(c.checkpoint, false);
  std::vector<SvdLayerReport> layers;
  const CheckpointData out = compress_value_up_svd(in, c.rank, &layers);
  const int64_t params_before = static_cast<int64_t>(in.params.size()), params_after = static_cast<int64_t>(out.params.size());

  nlohmann::json j = {{"checkpoint", c.checkpoint}, {"out", c.out},       {"svd_rank", c.rank},
                      {"params_before", params_before}, {"params_after", params_after}};
  nlohmann::json jl = nlohmann::json::array();
  for (const SvdLayerReport& r : layers) {
    jl.push_back({{"layer", r.layer}, {"full_rank", r.full_rank}, {"retained_energy", r.retained_energy},
                  {"relative_error", r.relative_error}});
  }
  j["layers"] = jl;
  if (!c.data.empty()) {
    FLASHGPT_CHECK(c.batch_size > 0 && c.batches > 0, "--batch-size and --batches: must be positive");
    const int64_t T = c.seq_len > 0 ? c.seq_len : std::min<int64_t>(in.config.block_size, 256);
    FLASHGPT_CHECK(T <= in.config.block_size, "--seq-len: {} exceeds the model's block_size {}", T,
                   in.config.block_size);
    j["loss_before"] = mean_loss(*build(in), c, T);
    j["loss_after"] = mean_loss(*build(out), c, T);
    j["eval_tokens"] = c.batches * c.batch_size * T;
  }
  const nlohmann::json no_state;
  save_checkpoint(c.out, CheckpointRef{out.config, out.params, {}, {}, no_state, out.tokenizer});

  if (c.json) {
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("value up-projection at rank %d: %lld → %lld parameters (%.2f%% fewer)\n", c.rank,
              static_cast<long long>(params_before), static_cast<long long>(params_after),
              100.0 * static_cast<double>(params_before - params_after) / static_cast<double>(params_before));
  for (const SvdLayerReport& r : layers) {
    std::printf("  layer %2d: rank %d of %d keeps %.2f%% of the energy (relative error %.4f)\n", r.layer, c.rank,
                r.full_rank, 100.0 * r.retained_energy, r.relative_error);
  }
  if (j.contains("loss_before")) {
    std::printf("loss on %lld tokens: %.4f before, %.4f after (%+.4f)\n",
                static_cast<long long>(j["eval_tokens"].get<int64_t>()), j["loss_before"].get<double>(),
                j["loss_after"].get<double>(), j["loss_after"].get<double>() - j["loss_before"].get<double>());
  }
  std::printf("wrote %s\n", c.out.c_str());
}

}  // namespace

void register_compress(CLI::App& app) {
  auto c = std::make_shared<CompressCli>();
  CLI::App* sub = app.add_subcommand(
      "compress", "Factor a latent-attention checkpoint's value up-projections by truncated SVD (use_svd)");
  sub->add_option("-c,--checkpoint", c->checkpoint, "Checkpoint of an mla or flash_mla model (.safetensors)")
      ->required()
      ->check(CLI::ExistingFile);
  sub->add_option("-r,--svd-rank", c->rank, "Rank to keep (1 … min(n_latent, n_head·head_dim))")->required();
  sub->add_option("-o,--out", c->out, "Where to write the compressed checkpoint")->required();
  sub->add_option("-d,--data", c->data, "Token shards (path or glob) to report the loss before and after on");
  sub->add_option("-b,--batch-size", c->batch_size, "Sequences per evaluation batch")->capture_default_str();
  sub->add_option("-t,--seq-len", c->seq_len, "Tokens per sequence (0: block size, at most 256)")
      ->capture_default_str();
  sub->add_option("--batches", c->batches, "Evaluation batches")->capture_default_str();
  sub->add_flag("--json", c->json, "Print one JSON object");
  sub->callback([c] { run_compress(*c); });
}

}  // namespace flashgpt::cli
