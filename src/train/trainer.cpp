#include "flashgpt/train/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <optional>

#include "flashgpt/core/device.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/io.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/core/timer.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/device_comm.h"
#include "flashgpt/cuda/gpt_cuda.h"
#include "flashgpt/cuda/matmul_cuda.h"
#include "flashgpt/data/dataloader.h"
#include "flashgpt/dist/context_parallel.h"
#include "flashgpt/infer/sampler.h"
#include "flashgpt/model/checkpoint.h"
#include "flashgpt/model/gpt.h"
#include "flashgpt/ops/adamw.h"
#include "flashgpt/ops/matmul.h"
#include "flashgpt/tokenizer/tokenizer.h"
#include "flashgpt/train/distributed.h"
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
  cuda::parse_gpu_comm(o.gpu_comm, "--gpu-comm");
  FLASHGPT_CHECK(o.reduce_dtype == "fp32" || o.reduce_dtype == "bf16", "--reduce-dtype: '{}' is not one of fp32, bf16",
                 o.reduce_dtype);
}

// Where this run trains, and the line that says so.
DeviceChoice choose_train_device(const TrainOptions& o, const GPTConfig& c, cuda::Precision precision) {
  return choose_device(
      cuda::devices(), o.device, [&] { return cuda::GPTCuda::unsupported(c, precision); },
      cuda::to_string(precision));
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
  dist::Communicator& comm = opt.comm ? *opt.comm : dist::world();
  comm.set_timeout(opt.comm_timeout_s);
  const ParallelLayout lay = make_parallel_layout(comm, opt.context_parallel);
  const bool root = comm.rank() == 0;

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
  const int64_t B = opt.batch_size, T = opt.seq_len, micro = B * T;
  const int64_t group_micro = micro * lay.dp;  // tokens in one micro-batch of every data-parallel rank
  const int64_t total = opt.total_batch_tokens > 0 ? opt.total_batch_tokens : group_micro;
  FLASHGPT_CHECK(total % group_micro == 0,
                 "--total-batch-size: {} tokens is not a multiple of batch {} × seq-len {} × {} data-parallel ranks = "
                 "{}",
                 total, B, T, lay.dp, group_micro);
  const int64_t accum = total / group_micro;
  // Every rank must run the same model on the same schedule: compare what defines the run.
  {
    const std::string run_key = config.to_json().dump() +
                                fmt::format("|{}|{}|{}|{}|{}|{}|{}|{}", B, T, total, opt.max_steps, opt.seed,
                                            opt.zero_stage, opt.context_parallel, opt.lr.lr);
    dist::check_same_on_all_ranks(comm, dist::fingerprint(run_key.data(), run_key.size()),
                                  "the model config and training options");
  }

  const cuda::Precision precision = cuda::parse_precision(opt.precision, "--precision");
  FLASHGPT_CHECK(opt.attention_backend == "ours" || opt.attention_backend == "cudnn",
                 "--attention-backend: '{}' is not one of ours, cudnn", opt.attention_backend);
  const bool cudnn = opt.attention_backend == "cudnn";
  FLASHGPT_CHECK(!cudnn || opt.device != "cpu", "--attention-backend cudnn: a GPU option (--device cuda or auto)");
  FLASHGPT_CHECK(opt.gpu_comm == "auto" || opt.device != "cpu", "--gpu-comm {}: a GPU option (--device cuda or auto)",
                 opt.gpu_comm);
  FLASHGPT_CHECK(!cudnn || !opt.document_masking,
                 "--attention-backend cudnn: cuDNN's attention takes no document masks (--document-masking)");
  FLASHGPT_CHECK(!cudnn || lay.cp == 1, "--attention-backend cudnn: not with --context-parallel (our kernels run it)");
  const DeviceChoice where = choose_train_device(opt, config, precision);
  const int gpu_ranks = comm.sum(where.gpu ? 1 : 0);
  FLASHGPT_CHECK(gpu_ranks == 0 || gpu_ranks == comm.size(),
                 "--device {}: {} of the {} ranks can train on a GPU and the others cannot; every rank must train "
                 "on the same kind of device{}",
                 opt.device, gpu_ranks, comm.size(), where.line.empty() ? "" : " (this rank: " + where.line + ")");
  // Data parallelism on GPUs: each rank binds to its GPU and joins the ranks' GPU communicator
  // before anything else touches the device.
  std::unique_ptr<cuda::DeviceComm> gpu_comm;
  if (where.gpu && comm.size() > 1) {
    gpu_comm = cuda::DeviceComm::create(comm, cuda::parse_gpu_comm(opt.gpu_comm, "--gpu-comm"));
  }
  // The host model holds the weights for checkpoints and samples in both cases; on the GPU the
  // training step runs on the device copy.
  GPT<float> model(config);
  model.set_attention_tiling(opt.attention_tiling);
  std::unique_ptr<cuda::GPTCuda> gpu;
  if (where.gpu) {
    gpu = std::make_unique<cuda::GPTCuda>(config, precision);
    gpu->set_deterministic(opt.deterministic);
    if (cudnn) gpu->set_attention_backend(cuda::AttentionBackend::Cudnn);
    model.release_gradients();  // the GPU keeps its own
    if (gpu_comm && opt.zero_stage == 1) gpu->shard_optimizer_state(*gpu_comm);
    gpu->set_reduce_precision(opt.reduce_dtype == "bf16" ? cuda::Precision::BF16 : cuda::Precision::FP32);
  }
  std::unique_ptr<dist::Communicator> cp_group;
  std::unique_ptr<dist::ContextParallel> cp;
  std::unique_ptr<cuda::DeviceComm> cp_gpu_comm;  // on GPUs: the group's collectives over device memory
  std::unique_ptr<cuda::DeviceContextParallel> cp_gpu;
  if (lay.cp > 1) {
    cp_group = comm.split(lay.dp_rank, lay.cp_rank);
    cp = std::make_unique<dist::ContextParallel>(*cp_group, T);
    model.set_context_parallel(cp.get());
    if (gpu) {
      cp_gpu_comm = gpu_comm->subgroup(*cp_group);
      cp_gpu = std::make_unique<cuda::DeviceContextParallel>(*cp_gpu_comm, T);
      gpu->set_context_parallel(cp_gpu.get());
    }
  }
  const int64_t n_params = model.num_params();
  int eot = opt.eot_token;
  if (opt.document_masking && eot < 0) {
    FLASHGPT_CHECK(tokenizer != nullptr || config.vocab_size == 50257,
                   "--document-masking: no tokenizer to take the end-of-text token from; give --eot-token");
    eot = tokenizer ? tokenizer->eot_token() : 50256;  // GPT-2's <|endoftext|>
  }
  FLASHGPT_CHECK(!opt.document_masking || eot < config.vocab_size, "--eot-token: {} is not below vocab_size {}", eot,
                 config.vocab_size);
  std::optional<GradientSync> sync;  // the CPU path's gradient reduction and optimizer
  if (!gpu) sync.emplace(comm, model, opt.zero_stage, opt.reduce_dtype == "bf16");
  Rng rng(opt.seed);
  int64_t start_step = 0;
  if (ckpt.params.empty()) {
    model.init_weights(opt.seed);
  } else {
    std::copy(ckpt.params.begin(), ckpt.params.end(), model.params().begin());
  }
  // Every replica starts from rank 0's weights.
  comm.broadcast(model.params().data(), static_cast<size_t>(n_params) * sizeof(float), 0);
  if (gpu) gpu->set_params(model.params());
  DataLoader train_loader(opt.train_data, B, T, config.vocab_size, lay.dp_rank, lay.dp);
  if (resuming) {
    if (gpu) {
      FLASHGPT_CHECK(static_cast<int64_t>(ckpt.adam_m.size()) == n_params && ckpt.adam_v.size() == ckpt.adam_m.size(),
                     "{}: the optimizer state has {} values, the model {} parameters", opt.resume, ckpt.adam_m.size(),
                     n_params);
      gpu->set_optimizer_state(ckpt.adam_m, ckpt.adam_v);
    } else {
      sync->load_state(ckpt.adam_m, ckpt.adam_v);
    }
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
  if (!opt.val_data.empty()) {
    val_loader = std::make_unique<DataLoader>(opt.val_data, B, T, config.vocab_size, lay.dp_rank, lay.dp);
  }

  // --- bookkeeping -------------------------------------------------------------------------------
  const std::string ckpt_path = (std::filesystem::path(opt.out_dir) / "ckpt.safetensors").string();
  const std::string metrics_path =
      opt.metrics_path.empty() ? (std::filesystem::path(opt.out_dir) / "metrics.jsonl").string() : opt.metrics_path;
  std::ofstream metrics;
  if (root) {
    std::filesystem::create_directories(opt.out_dir);
    metrics.open(metrics_path, resuming ? std::ios::app : std::ios::trunc);
    FLASHGPT_CHECK(metrics.good(), "{}: cannot open the metrics file for writing", metrics_path);
  }
  const ModelStats stats = model_stats(config, static_cast<int>(T));
  // The MFU denominator: this device's measured GEMM rate (one rank's), in the run's precision.
  const double gemm_gflops = gpu ? cuda::measure_gemm_flops(precision == cuda::Precision::BF16, 4096, 5) / 1e9
                                 : measure_sgemm_gflops(1024, 5);
  Progress progress(root && opt.progress_bar.value_or(::isatty(STDERR_FILENO) != 0));
  auto say = [&](const std::string& line) {
    if (root) progress.line(line);
  };
  say(fmt::format("model: {} layers, {} heads, {} wide, {:.2f}M parameters, vocab {} | batch {}×{} × {} "
                  "accumulation{} = {} tokens/step | {} steps{}",
                  config.n_layer, config.n_head, config.n_embd, static_cast<double>(n_params) / 1e6,
                  config.vocab_size, B, T, accum, lay.dp > 1 ? fmt::format(" × {} data-parallel ranks", lay.dp) : "",
                  total, opt.max_steps, resuming ? fmt::format(" (resuming at step {})", start_step) : ""));
  if (!where.line.empty()) say(where.line);
  if (gpu_comm) say(gpu_comm->why());
  if (opt.reduce_dtype == "bf16") {
    say(comm.size() > 1
            ? std::string("gradients travel between the ranks in bf16 (--reduce-dtype bf16: half the bytes)")
            : fmt::format("--reduce-dtype bf16 does not apply to one {} (nothing is summed)", gpu ? "GPU" : "process"));
  }
  if (gpu && opt.deterministic) say("deterministic: the GPU's backward adds nothing with atomics (slower)");
  if (cudnn) {
    std::string detail;
    cuda::cudnn_attention_available(&detail);
    say(gpu ? fmt::format("attention: cuDNN's fused attention ({})", detail)
            : std::string("attention: --attention-backend cudnn does not apply on the CPU"));
  }
  if (comm.size() > 1) {
    say(fmt::format("ranks: {} ({} data-parallel{}{}), over {}", comm.size(), lay.dp,
                    lay.cp > 1 ? fmt::format(" × {} context-parallel, {} tokens per rank per sequence", lay.cp,
                                             cp->local_len())
                               : "",
                    opt.zero_stage == 1 ? ", ZeRO-1 optimizer shards" : "", comm.backend()));
  }

  nlohmann::json tokenizer_json = tokenizer ? tokenizer->to_json() : nlohmann::json();
  std::vector<float> m_full, v_full;
  auto pull_params = [&] {  // the GPU's weights into the host model
    if (gpu) gpu->get_params(model.params());
  };
  auto save = [&](int64_t steps_done) {  // collective: ZeRO-1 gathers the optimizer state to rank 0
    if (opt.save_optimizer) {
      if (!gpu) {
        sync->gather_state(m_full, v_full);
      } else if (root || gpu->optimizer_state_sharded()) {  // sharded: gathered to rank 0
        m_full.resize(root ? static_cast<size_t>(n_params) : 0);
        v_full.resize(m_full.size());
        gpu->get_optimizer_state(m_full, v_full);
      }
    }
    if (!root) return;
    pull_params();
    nlohmann::json state = {{"step", steps_done},
                            {"rng", rng.state()},
                            {"train_loader", train_loader.state()},
                            {"batch_size", B},
                            {"seq_len", T},
                            {"total_batch_tokens", total},
                            {"seed", opt.seed},
                            {"ranks", comm.size()}};
    CheckpointRef ref{config, model.params(), {}, {}, state, tokenizer_json};
    if (opt.save_optimizer) {
      ref.adam_m = m_full;
      ref.adam_v = v_full;
    }
    save_checkpoint(ckpt_path, ref);
  };
  // A micro-batch of this rank: the loader's [B, T] window, or under context parallelism this
  // rank's rows of it (document ids are taken from the whole sequences first).
  const int64_t Tl = cp ? cp->local_len() : T;
  std::vector<int> xg(cp ? static_cast<size_t>(micro) : 0), yg(xg.size());  // whole windows (context parallel)
  std::vector<int> x(static_cast<size_t>(B * Tl)), y(x.size());
  std::vector<int32_t> seg_g(opt.document_masking ? xg.size() : 0), seg(opt.document_masking ? x.size() : 0);
  auto next_micro_batch = [&](DataLoader& loader) {
    if (!cp) {  // the window is this rank's micro-batch
      loader.next_batch(x.data(), y.data());
      if (opt.document_masking) document_segments(x.data(), B, T, eot, seg.data());
      return;
    }
    loader.next_batch(xg.data(), yg.data());
    if (opt.document_masking) document_segments(xg.data(), B, T, eot, seg_g.data());
    cp->slice(xg.data(), x.data(), B, 1);
    cp->slice(yg.data(), y.data(), B, 1);
    if (opt.document_masking) cp->slice(seg_g.data(), seg.data(), B, 1);
  };
  auto forward = [&]() {
    const int32_t* s = opt.document_masking ? seg.data() : nullptr;
    return gpu ? gpu->forward(x.data(), y.data(), B, Tl, s) : model.forward(x.data(), y.data(), B, Tl, s);
  };
  // The mean validation loss over val_batches windows, the same windows one process would read.
  auto evaluate = [&]() {
    val_loader->reset();
    double sum = 0;
    for (int64_t i = lay.dp_rank; i < opt.val_batches; i += lay.dp) {
      next_micro_batch(*val_loader);
      sum += forward();
    }
    return comm.sum(sum) / static_cast<double>(opt.val_batches * lay.cp);
  };
  auto sample = [&]() {
    if (!tokenizer || !root) return;
    SampleOptions so;
    so.max_new_tokens = opt.sample_tokens;
    so.top_k = 40;
    so.eot_token = tokenizer->eot_token();
    const int prompt = tokenizer->eot_token();
    pull_params();  // samples come from the host model
    SampleResult r = generate(model, std::span<const int>(&prompt, 1), so, rng);
    progress.line("sample: " + tokenizer->decode(r.tokens));
  };
  auto log_metrics = [&](const nlohmann::json& j) {
    if (!root) return;
    metrics << j.dump() << "\n";
    metrics.flush();
  };

  auto bytes_sent = [&] {  // by this rank, over every communicator
    return comm.bytes_sent() + (cp_group ? cp_group->bytes_sent() : 0) +
           (gpu_comm ? gpu_comm->bytes_sent_beyond_host() : 0) +
           (cp_gpu_comm ? cp_gpu_comm->bytes_sent_beyond_host() : 0);
  };
  InterruptGuard interrupt_guard;
  if (opt.overfit_single_batch) next_micro_batch(train_loader);
  TrainResult result;
  Timer run_timer;
  double tokens_done = 0, train_seconds = 0;
  int consecutive_skips = 0;
  int64_t step = start_step;
  for (; step < opt.max_steps; ++step) {
    if (val_loader && step % opt.val_every == 0) {
      const double val = evaluate();
      result.final_val_loss = val;
      say(fmt::format("step {:>6} | val loss {:.4f}", step, val));
      log_metrics({{"step", step}, {"val_loss", val}});
    }
    if (opt.sample_every > 0 && step > 0 && step % opt.sample_every == 0) sample();

    Timer step_timer;
    const uint64_t bytes_before = bytes_sent();
    double loss = 0;
    if (gpu) {  // the GPU's micro-batches, the last one's gradient sums started during its backward
      loss = gpu->accumulate_gradients(accum, gpu_comm.get(), [&] {
        if (!opt.overfit_single_batch) next_micro_batch(train_loader);
        return cuda::MicroBatch{x.data(), y.data(), opt.document_masking ? seg.data() : nullptr, B, Tl};
      });
    } else {
      model.zero_grad();
      for (int64_t a = 0; a < accum; ++a) {
        if (!opt.overfit_single_batch) next_micro_batch(train_loader);
        loss += forward() / static_cast<double>(accum);
        if (a + 1 == accum) sync->overlap_next_backward();
        model.backward(1.0f / static_cast<float>(accum));
      }
    }
    // Rank 0 names any rank that does not get here (compute is where a rank spends its time, so
    // where it dies or hangs), then the reduction started during the backward completes.
    comm.arrive("the gradient reduction", step);
    if (sync) sync->finish_reduction();
    if (gpu_comm) gpu->reduce_grads(*gpu_comm);
    // The global mean loss, and whether any rank was interrupted, in one reduction.
    double shared[2] = {loss, g_stop_requested ? 1.0 : 0.0};
    comm.allreduce_sum(shared, 2, dist::DType::F64);
    loss = shared[0] / comm.size();
    const bool stop_requested = shared[1] > 0;
    const double grad_norm = std::sqrt(gpu ? gpu->grad_sum_squares() : sync->grad_sum_squares());
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
      say(fmt::format("step {}: {}; step skipped", step, what));
      log_metrics({{"step", step}, {"skipped", what}});
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
    if (gpu) {
      gpu->adamw_step(hp, clip_scale);
    } else {
      sync->step(hp, clip_scale);
    }
    if (comm.size() > 1 && opt.check_weights_every > 0 && (step + 1) % opt.check_weights_every == 0) {
      pull_params();
      dist::check_same_on_all_ranks(comm, dist::fingerprint(model.params().data(), model.params().size_bytes()),
                                    fmt::format("step {}: the weights", step + 1));
    }
    const double dt = step_timer.seconds();
    train_seconds += dt;
    tokens_done += static_cast<double>(total);
    const double tok_s = static_cast<double>(total) / dt;
    const double mfu = stats.train_flops_per_token * tok_s / (gemm_gflops * 1e9 * comm.size());
    result.final_loss = loss;
    result.losses.push_back(loss);
    result.grad_norms.push_back(grad_norm);
    nlohmann::json line = {{"step", step + 1},  {"loss", loss},  {"lr", lr},
                           {"grad_norm", grad_norm}, {"tokens_per_s", tok_s}, {"mfu", mfu},
                           {"step_ms", dt * 1e3}};
    if (comm.size() > 1) line["comm_bytes"] = bytes_sent() - bytes_before;
    log_metrics(line);
    if (root) progress.step(step + 1, opt.max_steps, loss, lr, grad_norm, tok_s, mfu, dt, opt.log_every);
    if (opt.save_every > 0 && (step + 1) % opt.save_every == 0 && step + 1 < opt.max_steps) save(step + 1);
    if (stop_requested) {
      ++step;
      say(fmt::format("interrupted at step {}: saving a checkpoint", step));
      break;
    }
    if (opt.stop_at_step > 0 && step + 1 >= opt.stop_at_step) {
      ++step;
      say(fmt::format("stopping at step {} as asked (--stop-at-step); resume with --resume", step));
      break;
    }
  }
  if (val_loader) {
    const double val = evaluate();
    result.final_val_loss = val;
    say(fmt::format("step {:>6} | val loss {:.4f}", step, val));
    log_metrics({{"step", step}, {"val_loss", val}});
  }
  save(step);
  comm.arrive("the end of training", step);  // the checkpoint is on disk before any rank returns
  say(fmt::format("saved {} (step {})", ckpt_path, step));
  if (opt.sample_every > 0) sample();
  result.steps = step;
  result.tokens_per_second = train_seconds > 0 ? tokens_done / train_seconds : 0;
  result.checkpoint = ckpt_path;
  result.bytes_sent = bytes_sent();
  result.device = gpu ? "cuda" : "cpu";
  return result;
}

}  // namespace flashgpt
