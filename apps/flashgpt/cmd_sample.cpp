// flashgpt sample: generate text from a checkpoint with a KV cache, on the CPU or the GPU.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>

#include "checkpoint_loading.h"
#include "commands.h"
#include "device_flags.h"
#include "flashgpt/core/device.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/gpt_cuda.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/io.h"
#include "flashgpt/core/timer.h"
#include "flashgpt/infer/sampler.h"

namespace flashgpt::cli {

namespace {

constexpr int64_t kDefaultBatch = 64;

struct SampleCli {
  std::string checkpoint, tokenizer, prompt_file;
  std::vector<std::string> prompts, prompt_ids;  // each repeatable: one prompt per use
  SampleOptions opt;
  uint64_t seed = 1337;
  int64_t num_samples = 1;
  int64_t batch = 0;  // 0: all samples together, up to kDefaultBatch
  bool no_stop = false;
  DeviceFlags device;
  std::string cuda_graphs = "on";
  std::string split_kv = "auto";
  std::string flash_decode_kernel = "auto";
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

// One prompt: its tokens, and its text when it was given as text (printed before its samples).
struct Prompt {
  std::vector<int> ids;
  std::string text;
};

std::vector<Prompt> read_prompts(const SampleCli& c, const LoadedModel& m) {
  std::vector<Prompt> prompts;
  std::vector<std::pair<std::string, std::string>> texts;  // (flag, text)
  for (const std::string& t : c.prompts) texts.emplace_back("--prompt", t);
  if (!c.prompt_file.empty()) texts.emplace_back("--prompt-file", read_text_file(c.prompt_file));
  for (const auto& [flag, text] : texts) {
    FLASHGPT_CHECK(m.tokenizer != nullptr,
                   "{}: {} has no tokenizer; give --tokenizer tokenizer.json, or token ids with --prompt-ids", flag,
                   c.checkpoint);
    Prompt p{m.tokenizer->encode(text), text};
    FLASHGPT_CHECK(!p.ids.empty(), "{}: the text '{}' encodes to no tokens", flag, text);
    prompts.push_back(std::move(p));
  }
  for (const std::string& ids : c.prompt_ids) prompts.push_back({parse_ids(ids), ""});
  const GPTConfig& cfg = m.model->config();
  const int eot = m.tokenizer ? m.tokenizer->eot_token() : -1;
  if (prompts.empty()) {
    FLASHGPT_CHECK(eot >= 0, "no prompt and no tokenizer to start from end-of-text: give --prompt-ids");
    prompts.push_back({{eot}, ""});  // unconditional sample: start a new document
  }
  for (const Prompt& p : prompts) {
    FLASHGPT_CHECK(!p.ids.empty(), "--prompt-ids: no token ids given");
    for (int id : p.ids) {
      FLASHGPT_CHECK(id >= 0 && id < cfg.vocab_size, "prompt: token id {} is out of range for vocab_size {}", id,
                     cfg.vocab_size);
    }
    FLASHGPT_CHECK(static_cast<int64_t>(p.ids.size()) < cfg.block_size,
                   "prompt: {} tokens leave no room in the model's context of {} tokens", p.ids.size(),
                   cfg.block_size);
  }
  return prompts;
}

void run_sample(SampleCli& c) {
  LoadedModel m = load_model(c.checkpoint, c.tokenizer);
  const std::vector<Prompt> prompts = read_prompts(c, m);
  c.opt.stop_at_eot = !c.no_stop;
  c.opt.eot_token = m.tokenizer ? m.tokenizer->eot_token() : -1;
  const GPTConfig& cfg = m.model->config();
  const cuda::Precision precision = cuda::parse_precision(c.device.precision, "--precision");
  const DeviceChoice where =
      choose_device(cuda::devices(), c.device.device,
                    [&] { return cuda::GPTCuda::decode_unsupported(cfg, precision); }, c.device.precision);
  if (!where.line.empty()) std::fprintf(stderr, "%s\n", where.line.c_str());
  std::unique_ptr<cuda::GPTCuda> gpu;
  std::unique_ptr<Decoder> decoder;
  if (where.gpu) {
    gpu = std::make_unique<cuda::GPTCuda>(cfg, precision);
    gpu->set_params(m.model->params());
    gpu->set_decode_graphs(c.cuda_graphs == "on");
    gpu->set_split_kv_decode(cuda::parse_split_kv(c.split_kv, "--split-kv"));
    gpu->set_flash_decode_kernel(cuda::parse_flash_decode_kernel(c.flash_decode_kernel, "--flash-decode-kernel"));
    decoder = std::make_unique<cuda::GPTCudaDecoder>(*gpu);
  } else {
    decoder = std::make_unique<CpuDecoder>(*m.model);
  }
  const auto print_token = [&](int id) {
    if (m.tokenizer) {
      std::fputs(m.tokenizer->token_bytes(id).c_str(), stdout);
    } else {
      std::printf("%d ", id);
    }
  };
  // Every sample of every prompt, prompt by prompt; sample k of the run draws from stream k.
  const int64_t per_prompt = c.num_samples, total = static_cast<int64_t>(prompts.size()) * per_prompt;
  const auto header = [&](int64_t k) {
    const int64_t prompt = k / per_prompt, sample = k % per_prompt;
    if (prompts.size() > 1 && per_prompt > 1) {
      std::printf("%s--- prompt %lld, sample %lld ---\n", k > 0 ? "\n" : "", static_cast<long long>(prompt + 1),
                  static_cast<long long>(sample + 1));
    } else if (prompts.size() > 1) {
      std::printf("%s--- prompt %lld ---\n", k > 0 ? "\n" : "", static_cast<long long>(prompt + 1));
    } else if (per_prompt > 1) {
      std::printf("%s--- sample %lld ---\n", k > 0 ? "\n" : "", static_cast<long long>(sample + 1));
    }
    std::fputs(prompts[static_cast<size_t>(prompt)].text.c_str(), stdout);
  };
  // Continuous batching: `slots` samples decode together, and a finished sample's place goes to
  // the next one waiting. Samples are printed whole, in order, as soon as they and every sample
  // before them have finished; a single sample streams token by token.
  const int64_t slots = std::min(total, c.batch > 0 ? c.batch : kDefaultBatch);
  std::vector<Rng> rngs;
  std::vector<std::vector<int>> ids;
  for (int64_t k = 0; k < total; ++k) {
    rngs.push_back(sample_rng(c.seed, k));
    ids.push_back(prompts[static_cast<size_t>(k / per_prompt)].ids);
  }
  Timer t;
  std::vector<SampleResult> results;
  if (total == 1) {
    header(0);
    results = generate_continuous(*decoder, ids, c.opt, rngs, 1, [&](int64_t, int id) {
      print_token(id);
      std::fflush(stdout);
    });
    std::printf("\n");
  } else {
    std::vector<std::optional<SampleResult>> finished(static_cast<size_t>(total));
    int64_t printed = 0;
    results = generate_continuous(*decoder, ids, c.opt, rngs, slots, {}, [&](int64_t k, const SampleResult& r) {
      finished[static_cast<size_t>(k)] = r;
      for (; printed < total && finished[static_cast<size_t>(printed)]; ++printed) {
        header(printed);
        for (int id : finished[static_cast<size_t>(printed)]->tokens) print_token(id);
        std::printf("\n");
        finished[static_cast<size_t>(printed)].reset();
      }
      std::fflush(stdout);
    });
  }
  const double secs = t.seconds();
  int64_t tokens = 0;
  std::map<std::string, int> reasons;
  for (const SampleResult& r : results) {
    tokens += static_cast<int64_t>(r.tokens.size());
    ++reasons[r.stop_reason];
  }
  std::fflush(stdout);
  std::string stopped;
  for (const auto& [reason, count] : reasons) {
    stopped += (stopped.empty() ? "" : ", ") + (total > 1 ? fmt::format("{} ×{}", reason, count) : reason);
  }
  const std::string which = total > 1 ? fmt::format("{} samples, {} at a time: ", total, slots) : std::string();
  std::fprintf(stderr, "[%s%lld tokens in %.2f s, %.1f tokens/s; stopped: %s]\n", which.c_str(),
               static_cast<long long>(tokens), secs, static_cast<double>(tokens) / std::max(secs, 1e-9),
               stopped.c_str());
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
  sub->add_option("-p,--prompt", c->prompts,
                  "Prompt text (repeat for several prompts, decoded together; default: start a new document)")
      ->take_all()
      ->allow_extra_args(false);
  sub->add_option("--prompt-file", c->prompt_file, "Read a prompt from a file")->check(CLI::ExistingFile);
  sub->add_option("--prompt-ids", c->prompt_ids, "Prompt as comma-separated token ids (repeatable)")
      ->take_all()
      ->allow_extra_args(false);
  sub->add_option("-n,--max-tokens", c->opt.max_new_tokens, "Most new tokens per sample")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--temperature", c->opt.temperature, "Sampling temperature (0: greedy)")->capture_default_str();
  sub->add_option("--top-k", c->opt.top_k, "Keep the k most likely tokens (0: off)")->capture_default_str();
  sub->add_option("--top-p", c->opt.top_p, "Nucleus sampling: keep the smallest set holding this mass (1: off)")
      ->capture_default_str();
  sub->add_option("--seed", c->seed, "Random seed")->capture_default_str();
  sub->add_option("--num-samples", c->num_samples, "Samples per prompt")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--batch", c->batch,
                  fmt::format("Samples decoded together; a finished sample's place goes to the next (default: all "
                              "of them, up to {})",
                              kDefaultBatch))
      ->check(CLI::PositiveNumber);
  sub->add_flag("--no-stop-at-eot", c->no_stop, "Keep going past the end-of-text token");
  add_device_flags(*sub, c->device, "sampling");
  sub->add_option("--cuda-graphs", c->cuda_graphs,
                  "On the GPU, replay each step that reads one token per sample as one captured CUDA graph "
                  "(on) or launch its kernels one by one (off); the samples are the same")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  sub->add_option("--split-kv", c->split_kv,
                  "On the GPU, multi-head attention by flash decode, split along the cache, where it is expected "
                  "to beat the flash kernels (auto), at every step it can run (on), or never (off)")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
  sub->add_option("--flash-decode-kernel", c->flash_decode_kernel,
                  "On the GPU, flash decode's split kernel: tiles (auto: shared-memory tiles in step) or warps (each "
                  "warp its own keys, where it runs the step); the samples are the same up to rounding")
      ->check(CLI::IsMember({"auto", "tiles", "warps"}))
      ->capture_default_str();
  sub->callback([c] { run_sample(*c); });
}

}  // namespace flashgpt::cli
