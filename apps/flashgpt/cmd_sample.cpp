// flashgpt sample: generate text from a checkpoint with a KV cache, on the CPU or the GPU.
#include <cstdio>
#include <memory>

#include "checkpoint_loading.h"
#include "commands.h"
#include "device_flags.h"
#include "flashgpt/core/device.h"
#include "flashgpt/cuda/gpt_cuda.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/io.h"
#include "flashgpt/core/timer.h"
#include "flashgpt/infer/sampler.h"

namespace flashgpt::cli {

namespace {

struct SampleCli {
  std::string checkpoint, tokenizer, prompt, prompt_file, prompt_ids;
  SampleOptions opt;
  uint64_t seed = 1337;
  int num_samples = 1;
  bool no_stop = false;
  DeviceFlags device;
};

std::vector<int> parse_ids(const std::string& s) {
  std::vector<int> ids;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t next = s.find(',', pos);
    std::string item = s.substr(pos, next == std::string::npos ? std::string::npos : next - pos);
    try {
      size_t used = 0;
      ids.push_back(std::stoi(item, &used));
      FLASHGPT_CHECK(used == item.size(), "--prompt-ids: '{}' is not an integer", item);
    } catch (const std::logic_error&) {
      fail("--prompt-ids: '{}' is not an integer", item);
    }
    if (next == std::string::npos) break;
    pos = next + 1;
  }
  return ids;
}

void run_sample(SampleCli& c) {
  LoadedModel m = load_model(c.checkpoint, c.tokenizer);
  std::vector<int> prompt;
  std::string prompt_text = c.prompt;
  if (!c.prompt_file.empty()) prompt_text = read_text_file(c.prompt_file);
  if (!c.prompt_ids.empty()) {
    prompt = parse_ids(c.prompt_ids);
  } else if (!prompt_text.empty()) {
    FLASHGPT_CHECK(m.tokenizer != nullptr,
                   "--prompt: {} has no tokenizer; give --tokenizer tokenizer.json, or token ids with --prompt-ids",
                   c.checkpoint);
    prompt = m.tokenizer->encode(prompt_text);
  }
  const int eot = m.tokenizer ? m.tokenizer->eot_token() : -1;
  if (prompt.empty()) {
    FLASHGPT_CHECK(eot >= 0, "no prompt and no tokenizer to start from end-of-text: give --prompt-ids");
    prompt.push_back(eot);  // unconditional sample: start a new document
  }
  for (size_t i = 0; i < prompt.size(); ++i) {
    FLASHGPT_CHECK(prompt[i] >= 0 && prompt[i] < m.model->config().vocab_size,
                   "prompt: token id {} is out of range for vocab_size {}", prompt[i], m.model->config().vocab_size);
  }
  FLASHGPT_CHECK(static_cast<int64_t>(prompt.size()) < m.model->config().block_size,
                 "prompt: {} tokens leave no room in the model's context of {} tokens", prompt.size(),
                 m.model->config().block_size);
  c.opt.stop_at_eot = !c.no_stop;
  c.opt.eot_token = eot;
  const GPTConfig& cfg = m.model->config();
  const cuda::Precision precision = cuda::parse_precision(c.device.precision, "--precision");
  const DeviceChoice where = choose_device(
      c.device.device, [&] { return cuda::GPTCuda::decode_unsupported(cfg, precision); }, c.device.precision);
  if (!where.line.empty()) std::fprintf(stderr, "%s\n", where.line.c_str());
  std::unique_ptr<cuda::GPTCuda> gpu;
  std::unique_ptr<Decoder> decoder;
  if (where.gpu) {
    gpu = std::make_unique<cuda::GPTCuda>(cfg, precision);
    gpu->set_params(m.model->params());
    decoder = std::make_unique<cuda::GPTCudaDecoder>(*gpu);
  } else {
    decoder = std::make_unique<CpuDecoder>(*m.model);
  }
  Rng rng(c.seed);
  for (int s = 0; s < c.num_samples; ++s) {
    if (c.num_samples > 1) std::printf("%s--- sample %d ---\n", s > 0 ? "\n" : "", s + 1);
    if (m.tokenizer && prompt_text.size() > 0) std::fputs(prompt_text.c_str(), stdout);
    Timer t;
    SampleResult r = generate(*decoder, prompt, c.opt, rng, [&](int id) {
      if (m.tokenizer) {
        std::fputs(m.tokenizer->token_bytes(id).c_str(), stdout);
      } else {
        std::printf("%d ", id);
      }
      std::fflush(stdout);
    });
    const double secs = t.seconds();
    std::printf("\n");
    std::fflush(stdout);
    std::fprintf(stderr, "[%zu tokens in %.2f s, %.1f tokens/s; stopped: %s]\n", r.tokens.size(), secs,
                 static_cast<double>(r.tokens.size()) / std::max(secs, 1e-9), r.stop_reason.c_str());
  }
}

}  // namespace

void register_sample(CLI::App& app) {
  auto c = std::make_shared<SampleCli>();
  CLI::App* sub = app.add_subcommand("sample", "Generate text from a checkpoint (KV-cached decoding)");
  sub->add_option("-c,--checkpoint", c->checkpoint, "Checkpoint (.safetensors) or llm.c model (.bin)")
      ->required()
      ->check(CLI::ExistingFile);
  sub->add_option("--tokenizer", c->tokenizer, "tokenizer.json (default: the one in the checkpoint)")
      ->check(CLI::ExistingFile);
  sub->add_option("-p,--prompt", c->prompt, "Prompt text (default: start a new document)");
  sub->add_option("--prompt-file", c->prompt_file, "Read the prompt from a file")->check(CLI::ExistingFile);
  sub->add_option("--prompt-ids", c->prompt_ids, "Prompt as comma-separated token ids");
  sub->add_option("-n,--max-tokens", c->opt.max_new_tokens, "Most new tokens per sample")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--temperature", c->opt.temperature, "Sampling temperature (0: greedy)")->capture_default_str();
  sub->add_option("--top-k", c->opt.top_k, "Keep the k most likely tokens (0: off)")->capture_default_str();
  sub->add_option("--top-p", c->opt.top_p, "Nucleus sampling: keep the smallest set holding this mass (1: off)")
      ->capture_default_str();
  sub->add_option("--seed", c->seed, "Random seed")->capture_default_str();
  sub->add_option("--num-samples", c->num_samples, "Number of samples")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_flag("--no-stop-at-eot", c->no_stop, "Keep going past the end-of-text token");
  add_device_flags(*sub, c->device, "sampling");
  sub->callback([c] { run_sample(*c); });
}

}  // namespace flashgpt::cli
