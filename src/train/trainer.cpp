#include "flashgpt/train/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>

#include "flashgpt/core/error.h"
#include "flashgpt/core/io.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/core/timer.h"
#include "flashgpt/data/dataloader.h"
#include "flashgpt/infer/sampler.h"
#include "flashgpt/model/checkpoint.h"
#include "flashgpt/model/gpt.h"
#include "flashgpt/ops/adamw.h"
#include "flashgpt/ops/matmul.h"
#include "flashgpt/tokenizer/tokenizer.h"
#include "train/progress.h"

namespace flashgpt {

namespace {

std::atomic<bool> g_stop_requested{false};
extern "C" void on_interrupt(int) { g_stop_requested = true; }

// Restores the previous SIGINT handler when training ends.
struct InterruptGuard {
  using Handler = void (*)(int);
  Handler previous;
  InterruptGuard() : previous(std::signal(SIGINT, on_interrupt)) { g_stop_requested = false; }
  ~InterruptGuard() { std::signal(SIGINT, previous); }
};

void check_options(const TrainOptions& o, const GPTConfig& c) {
  FLASHGPT_CHECK(!o.train_data.empty(), "--train-data: no training shards given");
  FLASHGPT_CHECK(o.batch_size > 0, "--batch-size: must be positive, got {}", o.batch_size);
  FLASHGPT_CHECK(o.seq_len > 0, "--seq-len: must be positive, got {}", o.seq_len);
  FLASHGPT_CHECK(o.seq_len <= c.block_size, "--seq-len: {} exceeds the model's block_size {}", o.seq_len, c.block_size);
  FLASHGPT_CHECK(o.max_steps > 0, "--steps: must be positive, got {}", o.max_steps);
  FLASHGPT_CHECK(o.stop_at_step >= 0, "--stop-at-step: must be ≥ 0, got {}", o.stop_at_step);
  const int64_t micro = o.batch_size * o.seq_len;
  FLASHGPT_CHECK(o.total_batch_tokens == 0 || (o.total_batch_tokens >= micro && o.total_batch_tokens % micro == 0),
                 "--total-batch-size: {} tokens is not a multiple of batch × seq-len = {}", o.total_batch_tokens,
                 micro);
  FLASHGPT_CHECK(o.lr.lr > 0 && std::isfinite(o.lr.lr), "--lr: must be positive, got {}", o.lr.lr);
  FLASHGPT_CHECK(o.lr.final_lr_fraction >= 0 && o.lr.final_lr_fraction <= 1, "--final-lr-fraction: must be in [0, 1]");
  FLASHGPT_CHECK(o.lr.warmup_steps >= 0, "--warmup-steps: must be ≥ 0");
  FLASHGPT_CHECK(o.lr.decay_fraction > 0 && o.lr.decay_fraction <= 1, "--wsd-decay-fraction: must be in (0, 1]");
  FLASHGPT_CHECK(o.beta1 >= 0 && o.beta1 < 1, "--beta1: must be in [0, 1), got {}", o.beta1);
  FLASHGPT_CHECK(o.beta2 >= 0 && o.beta2 < 1, "--beta2: must be in [0, 1), got {}", o.beta2);
  FLASHGPT_CHECK(o.eps > 0, "--eps: must be positive");
  FLASHGPT_CHECK(o.weight_decay >= 0, "--weight-decay: must be ≥ 0 (0 switches it off)");
  FLASHGPT_CHECK(o.grad_clip >= 0, "--grad-clip: must be ≥ 0 (0 switches it off)");
  FLASHGPT_CHECK(o.val_every > 0 && o.val_batches > 0, "--val-every and --val-batches: must be positive");
  FLASHGPT_CHECK(o.log_every > 0, "--log-every: must be positive");
  FLASHGPT_CHECK(o.resume.empty() || o.init_from.empty(), "--resume and --init-from: give one or the other");
}

}  // namespace

double measure_sgemm_gflops(int n, int repeats) {
  std::vector<float> a(static_cast<size_t>(n) * n, 0.5f), b(a.size(), 0.25f), c(a.size(), 0.0f);
  ops::gemm<float>(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);  // warm-up
  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) {
    Timer t;
    ops::gemm<float>(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    times.push_back(t.seconds());
  }
  std::sort(times.begin(), times.end());
  return 2.0 * n * static_cast<double>(n) * n / times[times.size() / 2] / 1e9;
}

TrainResult train(GPTConfig config, const TrainOptions& opt) {
  // --- model, optimizer state, tokenizer: fresh, from a checkpoint, or resumed -------------------
  std::unique_ptr<Tokenizer> tokenizer;
  if (!opt.tokenizer_path.empty()) tokenizer = load_tokenizer(opt.tokenizer_path);
  CheckpointData ckpt;
  const bool resuming = !opt.resume.empty();
  if (resuming) {
    ckpt = load_checkpoint(opt.resume, true);
    FLASHGPT_CHECK(!ckpt.adam_m.empty(), "{}: has no optimizer state, so it cannot be resumed (use --init-from)",
                   opt.resume);
    FLASHGPT_CHECK(ckpt.train_state.is_object(), "{}: has no training state, so it cannot be resumed", opt.resume);
    config = ckpt.config;
  } else if (!opt.init_from.empty()) {
    ckpt = opt.init_from.ends_with(".bin") ? import_llmc_model(opt.init_from) : load_checkpoint(opt.init_from, false);
    config = ckpt.config;
  } else if (tokenizer) {
    config.vocab_size = tokenizer->vocab_size();
  }
  if (!tokenizer && !ckpt.tokenizer.is_null()) tokenizer = tokenizer_from_json(ckpt.tokenizer, opt.resume + opt.init_from);
  if (tokenizer) {
    FLASHGPT_CHECK(tokenizer->vocab_size() == config.vocab_size,
                   "tokenizer: {} tokens, but the model's vocab_size is {}", tokenizer->vocab_size(),
                   config.vocab_size);
  }
  config.validate();
  check_options(opt, config);

  GPT<float> model(config);
  model.set_attention_tiling(opt.attention_tiling);
  const int64_t n_params = model.num_params();
  int eot = opt.eot_token;
  if (opt.document_masking && eot < 0) {
    FLASHGPT_CHECK(tokenizer != nullptr || config.vocab_size == 50257,
                   "--document-masking: no tokenizer to take the end-of-text token from; give --eot-token");
    eot = tokenizer ? tokenizer->eot_token() : 50256;  // GPT-2's <|endoftext|>
  }
  FLASHGPT_CHECK(!opt.document_masking || eot < config.vocab_size, "--eot-token: {} is not below vocab_size {}", eot,
                 config.vocab_size);
  std::vector<float> m(static_cast<size_t>(n_params), 0.0f), v(static_cast<size_t>(n_params), 0.0f);
  Rng rng(opt.seed);
  int64_t start_step = 0;
  if (ckpt.params.empty()) {
    model.init_weights(opt.seed);
  } else {
    std::copy(ckpt.params.begin(), ckpt.params.end(), model.params().begin());
  }
  DataLoader train_loader(opt.train_data, opt.batch_size, opt.seq_len, config.vocab_size);
  if (resuming) {
    m = std::move(ckpt.adam_m);
    v = std::move(ckpt.adam_v);
    try {
      start_step = ckpt.train_state.at("step").get<int64_t>();
      rng.set_state(ckpt.train_state.at("rng").get<uint64_t>());
      train_loader.set_state(ckpt.train_state.at("train_loader"), opt.resume);
    } catch (const nlohmann::json::exception& e) {
      fail("{}: malformed training state: {}", opt.resume, e.what());
    }
    FLASHGPT_CHECK(start_step < opt.max_steps, "{}: already trained {} steps; raise --steps above that to continue",
                   opt.resume, start_step);
  }
  ckpt = CheckpointData{};  // release the loaded copy
  std::unique_ptr<DataLoader> val_loader;
  if (!opt.val_data.empty()) val_loader = std::make_unique<DataLoader>(opt.val_data, opt.batch_size, opt.seq_len, config.vocab_size);

  // --- bookkeeping -------------------------------------------------------------------------------
  const int64_t B = opt.batch_size, T = opt.seq_len, micro = B * T;
  const int64_t total = opt.total_batch_tokens > 0 ? opt.total_batch_tokens : micro;
  const int64_t accum = total / micro;
  const std::string ckpt_path = (std::filesystem::path(opt.out_dir) / "ckpt.safetensors").string();
  const std::string metrics_path =
      opt.metrics_path.empty() ? (std::filesystem::path(opt.out_dir) / "metrics.jsonl").string() : opt.metrics_path;
  std::filesystem::create_directories(opt.out_dir);
  std::ofstream metrics(metrics_path, resuming ? std::ios::app : std::ios::trunc);
  FLASHGPT_CHECK(metrics.good(), "{}: cannot open the metrics file for writing", metrics_path);
  const ModelStats stats = model_stats(config, static_cast<int>(T));
  const double gemm_gflops = measure_sgemm_gflops(1024, 5);  // the MFU denominator
  Progress progress(opt.progress_bar.value_or(::isatty(STDERR_FILENO) != 0));
  progress.line(fmt::format("model: {} layers, {} heads, {} wide, {:.2f}M parameters, vocab {} | batch {}×{} × {} "
                            "accumulation = {} tokens/step | {} steps{}",
                            config.n_layer, config.n_head, config.n_embd, static_cast<double>(n_params) / 1e6,
                            config.vocab_size, B, T, accum, total, opt.max_steps,
                            resuming ? fmt::format(" (resuming at step {})", start_step) : ""));

  nlohmann::json tokenizer_json = tokenizer ? tokenizer->to_json() : nlohmann::json();
  auto save = [&](int64_t steps_done) {
    nlohmann::json state = {{"step", steps_done},
                            {"rng", rng.state()},
                            {"train_loader", train_loader.state()},
                            {"batch_size", B},
                            {"seq_len", T},
                            {"total_batch_tokens", total},
                            {"seed", opt.seed}};
    CheckpointRef ref{config, model.params(), {}, {}, state, tokenizer_json};
    if (opt.save_optimizer) {
      ref.adam_m = m;
      ref.adam_v = v;
    }
    save_checkpoint(ckpt_path, ref);
  };
  std::vector<int32_t> segments(opt.document_masking ? static_cast<size_t>(micro) : 0);
  // Forward with document masking when asked for.
  auto forward = [&](const std::vector<int>& x, const std::vector<int>& y) {
    if (!opt.document_masking) return model.forward(x.data(), y.data(), B, T);
    document_segments(x.data(), B, T, eot, segments.data());
    return model.forward(x.data(), y.data(), B, T, segments.data());
  };
  auto evaluate = [&]() {
    val_loader->reset();
    std::vector<int> x(static_cast<size_t>(micro)), y(static_cast<size_t>(micro));
    double sum = 0;
    for (int64_t i = 0; i < opt.val_batches; ++i) {
      val_loader->next_batch(x.data(), y.data());
      sum += forward(x, y);
    }
    return sum / static_cast<double>(opt.val_batches);
  };
  auto sample = [&]() {
    if (!tokenizer) return;
    SampleOptions so;
    so.max_new_tokens = opt.sample_tokens;
    so.top_k = 40;
    so.eot_token = tokenizer->eot_token();
    const int prompt = tokenizer->eot_token();
    SampleResult r = generate(model, std::span<const int>(&prompt, 1), so, rng);
    progress.line("sample: " + tokenizer->decode(r.tokens));
  };

  InterruptGuard interrupt_guard;
  std::vector<int> x(static_cast<size_t>(micro)), y(static_cast<size_t>(micro));
  if (opt.overfit_single_batch) train_loader.next_batch(x.data(), y.data());
  TrainResult result;
  Timer run_timer;
  double tokens_done = 0, train_seconds = 0;
  int consecutive_skips = 0;
  int64_t step = start_step;
  for (; step < opt.max_steps; ++step) {
    if (val_loader && step % opt.val_every == 0) {
      const double val = evaluate();
      result.final_val_loss = val;
      progress.line(fmt::format("step {:>6} | val loss {:.4f}", step, val));
      metrics << nlohmann::json{{"step", step}, {"val_loss", val}}.dump() << "\n";
    }
    if (opt.sample_every > 0 && step > 0 && step % opt.sample_every == 0) sample();

    Timer step_timer;
    model.zero_grad();
    double loss = 0;
    for (int64_t a = 0; a < accum; ++a) {
      if (!opt.overfit_single_batch) train_loader.next_batch(x.data(), y.data());
      loss += forward(x, y) / static_cast<double>(accum);
      model.backward(1.0f / static_cast<float>(accum));
    }
    const double grad_norm = std::sqrt(ops::sum_squares(model.grads().data(), n_params));
    const double lr = learning_rate(
        LrScheduleParams{opt.lr.kind, opt.lr.lr, opt.lr.final_lr_fraction, opt.lr.warmup_steps, opt.max_steps,
                         opt.lr.decay_fraction},
        step);
    if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
      const std::string what = !std::isfinite(loss) ? fmt::format("loss is {}", loss)
                                                    : fmt::format("gradient norm is {}", grad_norm);
      if (!opt.skip_nonfinite) {
        fail("step {}: {}; stopped before updating the weights (the last checkpoint, if any, is intact). Lower --lr, "
             "or pass --skip-nonfinite to skip such steps",
             step, what);
      }
      progress.line(fmt::format("step {}: {}; step skipped", step, what));
      metrics << nlohmann::json{{"step", step}, {"skipped", what}}.dump() << "\n";
      FLASHGPT_CHECK(++consecutive_skips < 10, "step {}: 10 consecutive non-finite steps; stopping", step);
      continue;
    }
    consecutive_skips = 0;
    const float clip_scale =
        opt.grad_clip > 0 && grad_norm > opt.grad_clip ? static_cast<float>(opt.grad_clip / grad_norm) : 1.0f;
    ops::AdamWParams hp;
    hp.lr = static_cast<float>(lr);
    hp.beta1 = static_cast<float>(opt.beta1);
    hp.beta2 = static_cast<float>(opt.beta2);
    hp.eps = static_cast<float>(opt.eps);
    hp.weight_decay = static_cast<float>(opt.weight_decay);
    hp.step = step + 1;
    for (const ParamSpec& s : model.specs()) {
      ops::adamw_update(model.params().data() + s.offset, model.grads().data() + s.offset, m.data() + s.offset,
                        v.data() + s.offset, s.numel(), hp, s.decay, clip_scale);
    }
    const double dt = step_timer.seconds();
    train_seconds += dt;
    tokens_done += static_cast<double>(total);
    const double tok_s = static_cast<double>(total) / dt;
    const double mfu = stats.train_flops_per_token * tok_s / (gemm_gflops * 1e9);
    result.final_loss = loss;
    metrics << nlohmann::json{{"step", step + 1},  {"loss", loss},  {"lr", lr},
                              {"grad_norm", grad_norm}, {"tokens_per_s", tok_s}, {"mfu", mfu},
                              {"step_ms", dt * 1e3}}
                   .dump()
            << "\n";
    metrics.flush();
    progress.step(step + 1, opt.max_steps, loss, lr, grad_norm, tok_s, mfu, dt, opt.log_every);
    if (opt.save_every > 0 && (step + 1) % opt.save_every == 0 && step + 1 < opt.max_steps) save(step + 1);
    if (g_stop_requested) {
      ++step;
      progress.line(fmt::format("interrupted at step {}: saving a checkpoint", step));
      break;
    }
    if (opt.stop_at_step > 0 && step + 1 >= opt.stop_at_step) {
      ++step;
      progress.line(fmt::format("stopping at step {} as asked (--stop-at-step); resume with --resume", step));
      break;
    }
  }
  if (val_loader) {
    const double val = evaluate();
    result.final_val_loss = val;
    progress.line(fmt::format("step {:>6} | val loss {:.4f}", step, val));
    metrics << nlohmann::json{{"step", step}, {"val_loss", val}}.dump() << "\n";
  }
  save(step);
  progress.line(fmt::format("saved {} (step {})", ckpt_path, step));
  if (opt.sample_every > 0) sample();
  result.steps = step;
  result.tokens_per_second = train_seconds > 0 ? tokens_done / train_seconds : 0;
  result.checkpoint = ckpt_path;
  return result;
}

}  // namespace flashgpt
