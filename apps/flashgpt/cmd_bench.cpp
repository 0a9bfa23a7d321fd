// flashgpt bench train: training throughput and model-FLOP utilisation against the sgemm rate
// measured on the same machine in the same run. Under `mpirun -np N` it also measures the scaling:
// first rank 0 alone times the step (the others wait), then all N ranks train together
// (data-parallel, optionally ZeRO-1 and context-parallel); the efficiency is the N-rank tokens/s
// against N × the one-rank figure, beside the bytes each rank sent per step and the volume
// docs/distributed.md predicts.
#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>

#include "commands.h"

extern "C" char* openblas_get_corename(void);
#include "flashgpt/core/device.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/core/threads.h"
#include "flashgpt/core/timer.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/context_parallel_cuda.h"
#include "flashgpt/cuda/device_comm.h"
#include "flashgpt/cuda/device_memory.h"
#include "flashgpt/cuda/gpt_cuda.h"
#include "flashgpt/cuda/kernel_times.h"
#include "flashgpt/cuda/matmul_cuda.h"
#include "flashgpt/cuda/warpgroup_cuda.h"
#include "flashgpt/dist/comm.h"
#include "flashgpt/dist/context_parallel.h"
#include "flashgpt/train/distributed.h"
#include "flashgpt/model/gpt.h"
#include "flashgpt/ops/adamw.h"
#include "flashgpt/train/trainer.h"

namespace flashgpt::cli {

namespace {

struct BenchTrainCli {
  ModelFlags model;
  int64_t batch_size = 4, seq_len = 64;
  int steps = 5, warmup = 1;
  int gemm_size = 0;  // 0: 1024 on the CPU, 8192 on the GPU
  bool json = false;
  int zero = 0, context_parallel = 1;
  std::string device = "cpu", precision = "bf16";
  bool deterministic = false;  // GPU: the backward without atomics
  std::string tiles = "auto";  // GPU: the flash kernels' tiles
  std::string attention_backend = "ours";  // GPU: ours or cudnn (cuDNN's fused attention)
  std::string gelu_fusion = "on";         // GPU, bf16: GELU in the MLP's GEMM epilogues, or off
  std::string qkv_fusion = "on";          // GPU: q, k and v in one GEMM, or three
  std::string gpu_comm = "auto";          // GPU ranks under mpirun: how they sum gradients
  std::string reduce_dtype = "fp32";      // GPU ranks: the precision the gradients travel in
  bool profile_step = false;   // GPU: the last timed step inside a profiler capture range
  int breakdown = 0;           // GPU: steps after the timed ones with every kernel timed (KernelTimes)
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Median step time of `steps` timed steps (after `warmup`) of forward, backward, gradient
// reduction over `comm` and AdamW; bytes sent per step by this rank, and the last loss.
struct StepTiming {
  double step_s = 0, step_min = 0, step_max = 0, loss = 0;
  double bytes_per_step = 0;
};
StepTiming time_steps(GPT<float>& model, dist::Communicator& comm, int zero, bool bf16_grads,
                      const dist::ContextParallel* cp, int64_t B, int64_t T, int warmup, int steps) {
  model.init_weights(1);
  model.set_context_parallel(cp);
  GradientSync sync(comm, model, zero, bf16_grads);
  const int vocab = model.config().vocab_size;
  std::vector<int> x(static_cast<size_t>(B * T)), y(x.size());
  Rng rng(2 + static_cast<uint64_t>(comm.rank()));
  for (auto& t : x) t = static_cast<int>(rng.next_u64() % static_cast<uint64_t>(vocab));
  for (auto& t : y) t = static_cast<int>(rng.next_u64() % static_cast<uint64_t>(vocab));
  const int64_t Tl = cp ? cp->local_len() : T;
  std::vector<int> xl(static_cast<size_t>(B * Tl)), yl(xl.size());
  if (cp) {
    cp->slice(x.data(), xl.data(), B, 1);
    cp->slice(y.data(), yl.data(), B, 1);
  } else {
    xl = x;
    yl = y;
  }
  std::vector<double> times;
  StepTiming r;
  comm.arrive("the timed steps", 0);  // every rank starts together
  // Bytes sent by this rank: the gradient traffic over comm, the keys and values over the group.
  auto bytes_sent = [&] { return comm.bytes_sent() + (cp ? cp->group().bytes_sent() : 0); };
  uint64_t bytes0 = 0;
  for (int s = 0; s < warmup + steps; ++s) {
    if (s == warmup) bytes0 = bytes_sent();
    Timer t;
    model.zero_grad();
    double loss = model.forward(xl.data(), yl.data(), B, Tl);
    sync.overlap_next_backward();
    model.backward();
    sync.finish_reduction();
    r.loss = comm.sum(loss) / comm.size();
    const double norm = std::sqrt(sync.grad_sum_squares());
    ops::AdamWParams hp;
    hp.lr = 1e-4f;
    hp.weight_decay = 0.1f;
    hp.step = s + 1;
    sync.step(hp, norm > 1.0 ? static_cast<float>(1.0 / norm) : 1.0f);
    if (s >= warmup) times.push_back(t.seconds());
  }
  model.set_context_parallel(nullptr);
  FLASHGPT_CHECK(std::isfinite(r.loss), "bench: the model produced a non-finite loss");
  r.step_s = median(times);
  r.step_min = *std::min_element(times.begin(), times.end());
  r.step_max = *std::max_element(times.begin(), times.end());
  r.bytes_per_step = static_cast<double>(bytes_sent() - bytes0) / steps;
  return r;
}

// The breakdown's groups, by kernel name: the GEMMs, the attention (ours or cuDNN's), AdamW with the
// clipping norm, copies and fills, and the rest (the norms, activations, adds, loss, embeddings).
std::string kernel_group(const std::string& name) {
  auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
  if (name.rfind("cuBLASLt GEMM", 0) == 0) return "GEMMs (cuBLASLt)";
  if (has("flash") || has("attention")) return "attention";
  if (has("adamw") || has("sum of squares")) return "AdamW and the clipping norm";
  if (has("copy") || name == "memset") return "copies and fills";
  return "other kernels (norms, activations, adds, loss, embeddings)";
}

// The same on the GPU (cuda/gpt_cuda.h): forward, backward, the gradient norm and AdamW, each
// step ending in a device synchronisation, against the GEMM rate cuBLASLt reaches here in the
// run's precision (median of n³ products before and after; the higher is the ceiling).
void run_bench_train_gpu(const BenchTrainCli& c, const GPTConfig& cfg) {
  dist::Communicator& world = dist::world();
  const ParallelLayout lay = make_parallel_layout(world, c.context_parallel);
  const bool root = world.rank() == 0, ranks = world.size() > 1;
  // Under mpirun: each rank on its GPU, bound before anything else touches one; with context
  // parallelism, the ranks sharing each sequence get a communicator of their own as well.
  std::unique_ptr<cuda::DeviceComm> comm;
  if (ranks) comm = cuda::DeviceComm::create(world, cuda::parse_gpu_comm(c.gpu_comm, "--gpu-comm"));
  std::unique_ptr<dist::Communicator> cp_group;
  std::unique_ptr<cuda::DeviceComm> cp_comm;
  std::unique_ptr<cuda::DeviceContextParallel> cp;
  if (lay.cp > 1) {
    FLASHGPT_CHECK(c.attention_backend == "ours",
                   "--context-parallel: runs our attention kernels, not cuDNN's (--attention-backend ours)");
    cp_group = world.split(lay.dp_rank, lay.cp_rank);
    cp_comm = comm->subgroup(*cp_group);
    cp = std::make_unique<cuda::DeviceContextParallel>(*cp_comm, c.seq_len);
  }
  const cuda::Precision precision = cuda::parse_precision(c.precision, "--precision");
  const bool bf16 = precision == cuda::Precision::BF16;
  const int gemm_size = c.gemm_size > 0 ? c.gemm_size : 8192;
  cuda::GPTCuda gpu(cfg, precision);
  gpu.set_deterministic(c.deterministic);
  const cuda::FlashTiles tiles = *cuda::flash_tiles_named(c.tiles);  // --tiles took only its names
  FLASHGPT_CHECK(!cuda::flash_tiles_use_wgmma(tiles) || cuda::warpgroup_mma_supported(),
                 "--tiles {}: this GPU or build has no wgmma (compute capability 9.0 and sm_90a code)", c.tiles);
  gpu.set_flash_tiles(tiles);
  if (c.attention_backend == "cudnn") gpu.set_attention_backend(cuda::AttentionBackend::Cudnn);
  gpu.set_gelu_fusion(c.gelu_fusion == "on");
  gpu.set_qkv_fusion(c.qkv_fusion == "on");
  gpu.set_reduce_precision(c.reduce_dtype == "bf16" ? cuda::Precision::BF16 : cuda::Precision::FP32);
  {
    GPT<float> host(cfg);
    host.init_weights(1);
    gpu.set_params(host.params());
  }
  const int64_t B = c.batch_size, T = c.seq_len;
  std::vector<int> x(static_cast<size_t>(B * T)), y(x.size());
  Rng rng(2);
  for (auto& t : x) t = static_cast<int>(rng.next_u64() % static_cast<uint64_t>(cfg.vocab_size));
  for (auto& t : y) t = static_cast<int>(rng.next_u64() % static_cast<uint64_t>(cfg.vocab_size));
  // Under context parallelism each rank's share of every sequence, for the steps together.
  const int64_t Tl = cp ? cp->local_len() : T;
  std::vector<int> xl(static_cast<size_t>(B * Tl)), yl(xl.size());
  if (cp) {
    cp->host().slice(x.data(), xl.data(), B, 1);
    cp->host().slice(y.data(), yl.data(), B, 1);
  }
  const double gemm_before = cuda::measure_gemm_flops(bf16, gemm_size, 7) / 1e9;
  std::vector<double> times;
  double loss = 0;
  const int last = c.warmup + c.steps - 1;
  // With ranks, each step's gradients are summed over them once `together` (the trainer's step);
  // before that, every rank times its steps alone, side by side, for the scaling.
  bool together = false;
  auto train_step = [&](int s) {
    // The trainer's step: together, the losses scaled by 1/ranks and the sums overlapping the backward.
    loss = gpu.accumulate_gradients(1, together ? comm.get() : nullptr, [&] {
      return together && cp ? cuda::MicroBatch{xl.data(), yl.data(), nullptr, B, Tl}
                            : cuda::MicroBatch{x.data(), y.data(), nullptr, B, T};
    });
    if (together) gpu.reduce_grads(*comm);
    const double norm = std::sqrt(gpu.grad_sum_squares());
    ops::AdamWParams hp;
    hp.lr = 1e-4f;
    hp.weight_decay = 0.1f;
    hp.step = s + 1;
    gpu.adamw_step(hp, norm > 1.0 ? static_cast<float>(1.0 / norm) : 1.0f);  // ends in a synchronisation
  };
  for (int s = 0; s <= last; ++s) {
    if (c.profile_step && s == last) {
      cuda::synchronize();
      cuda::profiler_capture(true);
    }
    Timer t;
    train_step(s);
    if (s >= c.warmup) times.push_back(t.seconds());
    if (c.profile_step && s == last) cuda::profiler_capture(false);
  }
  // All the ranks together: the same steps with the gradients summed (and under ZeRO-1 the
  // optimizer state sharded), the job as fast as its slowest rank.
  std::vector<double> together_times;
  uint64_t together_bytes = 0;
  if (ranks) {
    if (c.zero == 1) gpu.shard_optimizer_state(*comm);
    gpu.set_context_parallel(cp.get());
    together = true;
    world.arrive("the benchmark's steps together", 0);
    auto sent = [&] {
      return comm->bytes_sent_beyond_host() + world.bytes_sent() +
             (cp ? cp_comm->bytes_sent_beyond_host() + cp_group->bytes_sent() : 0);
    };
    for (int s = 0; s <= last; ++s) {
      if (s == c.warmup) together_bytes = sent();  // from the first timed step on
      Timer t;
      train_step(s);
      if (s >= c.warmup) together_times.push_back(t.seconds());
    }
    together_bytes = sent() - together_bytes;
  }
  // Where a step's time goes: more steps with every kernel, GEMM and copy timed by events, after the
  // timed ones so that those carry none of the events' cost.
  std::vector<cuda::KernelTime> kernels;
  double breakdown_step_s = 0;
  if (c.breakdown > 0) {
    cuda::KernelTimes recorder;
    std::vector<double> bt;
    {
      cuda::KernelTimesScope scope(recorder);
      for (int s = last + 1; s <= last + c.breakdown; ++s) {
        Timer t;
        train_step(s);
        bt.push_back(t.seconds());
      }
    }
    kernels = recorder.read();
    breakdown_step_s = median(bt);
  }
  FLASHGPT_CHECK(std::isfinite(loss), "bench: the model produced a non-finite loss");
  const double gemm_after = cuda::measure_gemm_flops(bf16, gemm_size, 7) / 1e9;
  const double gemm = std::max(gemm_before, gemm_after);
  const double step = median(times);
  const double tok_s = static_cast<double>(B * T) / step;
  double ranks_step = 0;
  if (ranks) ranks_step = std::ranges::max(world.allgather_one(median(together_times)));
  if (!root) return;
  const ModelStats stats = model_stats(cfg, static_cast<int>(T));
  const double model_gflops = stats.train_flops_per_token * tok_s / 1e9;
  const DeviceReport dev = cuda::devices();
  const std::string gpu_name = dev.gpus.empty() ? "?" : dev.gpus.front().name;
  nlohmann::json j = {{"bench", "train"},
                      {"device", "cuda"},
                      {"gpu", gpu_name},
                      {"precision", c.precision},
                      {"attention", to_string(cfg.attention)},
                      {"deterministic", c.deterministic},
                      {"tiles", c.tiles},
                      {"attention_backend", c.attention_backend},
                      {"gelu_fusion", c.gelu_fusion == "on"},
                      {"qkv_fusion", c.qkv_fusion == "on"},
                      {"params", gpu.num_params()},
                      {"batch", B},
                      {"seq", T},
                      {"steps", c.steps},
                      {"step_s_median", step},
                      {"step_s_min", *std::min_element(times.begin(), times.end())},
                      {"step_s_max", *std::max_element(times.begin(), times.end())},
                      {"tokens_per_s", tok_s},
                      {"model_gflops", model_gflops},
                      {"gemm_gflops", gemm},
                      {"gemm_gflops_before", gemm_before},
                      {"gemm_gflops_after", gemm_after},
                      {"gemm_size", gemm_size},
                      {"mfu", model_gflops / gemm},
                      {"loss", loss}};
  double tok_s_all = 0, efficiency = 0, predicted = 0;
  if (ranks) {
    tok_s_all = static_cast<double>(B * T * lay.dp) / ranks_step;
    efficiency = tok_s_all / (world.size() * tok_s);
    predicted = predicted_bytes_per_step(cfg, B, T, lay, c.zero, bf16 ? 2 : 4, c.reduce_dtype == "bf16" ? 2 : 4);
    j["ranks"] = world.size();
    j["data_parallel"] = lay.dp;
    j["context_parallel"] = lay.cp;
    j["zero"] = c.zero;
    j["gpu_comm"] = comm->backend();
    j["reduce_dtype"] = c.reduce_dtype;
    j["ranks_step_s_median"] = ranks_step;
    j["ranks_tokens_per_s"] = tok_s_all;
    j["scaling_efficiency"] = efficiency;
    j["comm_bytes_per_step"] = static_cast<double>(together_bytes) / c.steps;
    j["comm_bytes_per_step_predicted"] = predicted;
  }
  double kernel_ms = 0;
  if (c.breakdown > 0) {
    nlohmann::json rows = nlohmann::json::array();
    for (const cuda::KernelTime& k : kernels) {
      kernel_ms += k.ms / c.breakdown;
      rows.push_back({{"name", k.name}, {"launches_per_step", static_cast<double>(k.launches) / c.breakdown},
                      {"ms_per_step", k.ms / c.breakdown}});
    }
    std::map<std::string, double> groups;
    for (const cuda::KernelTime& k : kernels) groups[kernel_group(k.name)] += k.ms / c.breakdown;
    j["breakdown"] = {{"steps", c.breakdown}, {"step_s_median", breakdown_step_s}, {"kernel_ms_per_step", kernel_ms},
                      {"groups_ms_per_step", groups}, {"kernels", rows}};
  }
  if (c.json) {
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("train step on %s (%s%s%s%s%s%s): %.2fM params, B=%lld T=%lld\n", gpu_name.c_str(),
              c.precision.c_str(), c.deterministic ? ", deterministic" : "",
              c.tiles == "auto" ? "" : (", " + c.tiles + " tiles").c_str(),
              c.attention_backend == "cudnn" ? ", cuDNN attention" : "",
              c.gelu_fusion == "on" ? "" : ", GELU unfused", c.qkv_fusion == "on" ? "" : ", q/k/v in three GEMMs",
              static_cast<double>(gpu.num_params()) / 1e6, static_cast<long long>(B), static_cast<long long>(T));
  std::printf("  step time  median %.4f s (min %.4f, max %.4f over %d steps)\n", step,
              j["step_s_min"].get<double>(), j["step_s_max"].get<double>(), c.steps);
  std::printf("  throughput %.0f tokens/s, %.1f model TFLOP/s (6N + 6LCT per token)\n", tok_s, model_gflops / 1e3);
  std::printf("  GEMM       %.1f TFLOP/s (cuBLASLt %s, %d³, best of before/after: %.1f / %.1f)\n", gemm / 1e3,
              c.precision.c_str(), gemm_size, gemm_before / 1e3, gemm_after / 1e3);
  std::printf("  MFU        %.1f%% of the measured GEMM rate\n", 100 * model_gflops / gemm);
  if (ranks) {
    std::printf("  %d ranks    (one GPU each, %d data-parallel × %d context-parallel%s, gradients summed by %s in %s): "
                "median step %.4f s, %.0f tokens/s\n",
                world.size(), lay.dp, lay.cp, c.zero ? ", ZeRO-1" : "", comm->backend().c_str(),
                c.reduce_dtype.c_str(), ranks_step, tok_s_all);
    std::printf("  scaling    %.1f%% of %d × one rank's tokens/s (each rank timed alone first, side by side)\n",
                efficiency * 100, world.size());
    std::printf("  traffic    %.2f MB sent per rank per step (predicted %.2f MB)\n",
                j["comm_bytes_per_step"].get<double>() / 1e6, predicted / 1e6);
  }
  if (c.breakdown > 0) {
    const double step_ms = breakdown_step_s * 1e3;
    std::printf("\nwhere a step goes (%d more steps, each kernel timed by CUDA events; step %.2f ms there):\n\n",
                c.breakdown, step_ms);
    std::printf("| group | ms/step | share of step |\n|---|---|---|\n");
    for (const auto& [group, ms] : j["breakdown"]["groups_ms_per_step"].items()) {
      std::printf("| %s | %.3f | %.1f%% |\n", group.c_str(), ms.get<double>(), 100 * ms.get<double>() / step_ms);
    }
    std::printf("\n| kernel | launches/step | ms/step | share of step |\n|---|---|---|---|\n");
    for (const cuda::KernelTime& k : kernels) {
      const double ms = k.ms / c.breakdown;
      std::printf("| %s | %.0f | %.3f | %.1f%% |\n", k.name.c_str(), static_cast<double>(k.launches) / c.breakdown, ms,
                  100 * ms / step_ms);
    }
    std::printf("| all of the above | | %.3f | %.1f%% |\n", kernel_ms, 100 * kernel_ms / step_ms);
    std::printf("| the rest (the GPU idle: waiting for the host, or between kernels) | | %.3f | %.1f%% |\n",
                step_ms - kernel_ms, 100 * (step_ms - kernel_ms) / step_ms);
  }
}

void run_bench_train(const BenchTrainCli& c) {
  const GPTConfig cfg = c.model.resolve("d12");
  FLASHGPT_CHECK(c.seq_len > 0 && c.seq_len <= cfg.block_size, "--seq-len: must be in 1…{}", cfg.block_size);
  FLASHGPT_CHECK(c.batch_size > 0 && c.steps > 0 && c.warmup >= 0, "--batch-size and --steps must be positive");
  if (c.device == "cuda") {
    run_bench_train_gpu(c, cfg);
    return;
  }
  FLASHGPT_CHECK(!c.deterministic, "--deterministic: a GPU option (--device cuda); the CPU repeats its bits anyway");
  FLASHGPT_CHECK(c.tiles == "auto", "--tiles: a GPU option (--device cuda)");
  FLASHGPT_CHECK(c.attention_backend == "ours", "--attention-backend: a GPU option (--device cuda)");
  FLASHGPT_CHECK(c.gelu_fusion == "on", "--gelu-fusion: a GPU option (--device cuda)");
  FLASHGPT_CHECK(c.qkv_fusion == "on", "--qkv-fusion: a GPU option (--device cuda)");
  FLASHGPT_CHECK(!c.profile_step, "--profile-step: a GPU option (--device cuda)");
  FLASHGPT_CHECK(c.breakdown == 0, "--breakdown: a GPU option (--device cuda)");
  dist::Communicator& world = dist::world();
  const ParallelLayout lay = make_parallel_layout(world, c.context_parallel);
  const bool root = world.rank() == 0;
  const int gemm_size = c.gemm_size > 0 ? c.gemm_size : 1024;
  const double gemm_before = measure_sgemm_gflops(gemm_size, 7);

  GPT<float> model(cfg);
  const int64_t B = c.batch_size, T = c.seq_len, n = model.num_params();
  // One rank alone: the baseline the scaling is measured against (the same step, no peers).
  StepTiming one;
  auto single = dist::make_single_process_comm();
  const bool bf16_grads = c.reduce_dtype == "bf16";
  if (world.size() == 1 || root) one = time_steps(model, *single, 0, false, nullptr, B, T, c.warmup, c.steps);
  StepTiming all;
  if (world.size() > 1) {
    world.broadcast(&one, sizeof one, 0);
    std::unique_ptr<dist::Communicator> group;
    std::unique_ptr<dist::ContextParallel> cp;
    if (lay.cp > 1) {
      group = world.split(lay.dp_rank, lay.cp_rank);
      cp = std::make_unique<dist::ContextParallel>(*group, T);
    }
    all = time_steps(model, world, c.zero, bf16_grads, cp.get(), B, T, c.warmup, c.steps);
    // The job moves at the pace of its slowest rank.
    std::vector<double> per_rank = world.allgather_one(all.step_s);
    all.step_s = *std::max_element(per_rank.begin(), per_rank.end());
  }
  const double gemm_after = measure_sgemm_gflops(gemm_size, 7);
  const double gemm = std::max(gemm_before, gemm_after);  // the higher of the two is the fairer ceiling
  const double tok_s = static_cast<double>(B * T) / one.step_s;
  const ModelStats stats = model_stats(cfg, static_cast<int>(T));
  const double model_gflops = stats.train_flops_per_token * tok_s / 1e9;
  const double mfu = model_gflops / gemm;
  if (!root) return;
  nlohmann::json j = {{"bench", "train"},
                      {"params", n},
                      {"batch", B},
                      {"seq", T},
                      {"threads", num_threads()},
                      {"blas_kernels", openblas_get_corename()},
                      {"steps", c.steps},
                      {"step_s_median", one.step_s},
                      {"step_s_min", one.step_min},
                      {"step_s_max", one.step_max},
                      {"tokens_per_s", tok_s},
                      {"model_gflops", model_gflops},
                      {"gemm_gflops", gemm},
                      {"gemm_gflops_before", gemm_before},
                      {"gemm_gflops_after", gemm_after},
                      {"gemm_size", gemm_size},
                      {"mfu", mfu},
                      {"loss", one.loss}};
  double tok_s_all = 0, efficiency = 0, predicted = 0;
  if (world.size() > 1) {
    const int N = world.size();
    tok_s_all = static_cast<double>(B * T * lay.dp) / all.step_s;
    efficiency = tok_s_all / (N * tok_s);
    predicted = predicted_bytes_per_step(cfg, B, T, lay, c.zero, 4, bf16_grads ? 2 : 4);
    j["ranks"] = N;
    j["data_parallel"] = lay.dp;
    j["context_parallel"] = lay.cp;
    j["zero"] = c.zero;
    j["reduce_dtype"] = c.reduce_dtype;
    j["ranks_step_s_median"] = all.step_s;
    j["ranks_tokens_per_s"] = tok_s_all;
    j["scaling_efficiency"] = efficiency;
    j["comm_bytes_per_step"] = all.bytes_per_step;
    j["comm_bytes_per_step_predicted"] = predicted;
  }
  if (c.json) {
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("train step: %.2fM params, B=%lld T=%lld, %d threads\n", static_cast<double>(n) / 1e6,
              static_cast<long long>(B), static_cast<long long>(T), num_threads());
  std::printf("  step time  median %.3f s (min %.3f, max %.3f over %d steps)\n", one.step_s, one.step_min,
              one.step_max, c.steps);
  std::printf("  throughput %.0f tokens/s, %.1f model GFLOP/s (6N + 6LCT per token)\n", tok_s, model_gflops);
  std::printf("  sgemm      %.1f GFLOP/s (%d³, best of before/after: %.1f / %.1f; OpenBLAS %s kernels)\n", gemm,
              gemm_size, gemm_before, gemm_after, openblas_get_corename());
  std::printf("  MFU        %.1f%% of the measured sgemm rate\n", mfu * 100);
  if (world.size() > 1) {
    std::printf("  %d ranks    (%d data-parallel × %d context-parallel%s%s): median step %.3f s, %.0f tokens/s\n",
                world.size(), lay.dp, lay.cp, c.zero ? ", ZeRO-1" : "", bf16_grads ? ", bf16 gradients" : "",
                all.step_s, tok_s_all);
    std::printf("  scaling    %.1f%% of %d × one rank's tokens/s\n", efficiency * 100, world.size());
    std::printf("  traffic    %.2f MB sent per rank per step (predicted %.2f MB)\n", all.bytes_per_step / 1e6,
                predicted / 1e6);
  }
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
  tr->add_option("--gemm-size", c->gemm_size, "Square GEMM size for the reference rate (0: 1024 on the CPU, 8192 on the GPU)")
      ->capture_default_str();
  tr->add_option("--device", c->device, "cpu, or cuda (the training step on the GPU)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  tr->add_option("--precision", c->precision, "GPU arithmetic: bf16 or fp32")
      ->check(CLI::IsMember({"bf16", "fp32"}))
      ->capture_default_str();
  tr->add_flag("--deterministic", c->deterministic, "GPU: time the backward without atomics (train --deterministic)");
  tr->add_option("--tiles", c->tiles,
                 "GPU: the bf16 flash kernels' tiles (as bench attention --tiles): auto, wide, narrow, tall, short, "
                 "wgmma (Hopper's warpgroup MMA), wgmma-tma (its forward loading through the TMA), wgmma-ws "
                 "(forward and backward warp-specialized) or wgmma-ws-no-pingpong (the same without the forward's "
                 "warpgroups' turns)")
      ->check(CLI::IsMember(cuda::flash_tiles_names()))
      ->capture_default_str();
  tr->add_option("--attention-backend", c->attention_backend,
                 "GPU, bf16, flash mechanisms: ours (flashgpt's kernels) or cudnn (cuDNN's fused attention): the "
                 "same step with the other attention, to see what the attention costs it")
      ->check(CLI::IsMember({"ours", "cudnn"}))
      ->capture_default_str();
  tr->add_option("--gelu-fusion", c->gelu_fusion,
                 "GPU, bf16, GELU models: on (GELU inside the MLP's GEMMs, cuBLASLt's epilogues) or off (its own "
                 "kernels): the same step both ways")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  tr->add_option("--qkv-fusion", c->qkv_fusion,
                 "GPU, multi-head attention: on (q, k and v projected by one GEMM into fused rows that QK-norm and "
                 "the attention read in place) or off (three GEMMs each way): the same step both ways")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  tr->add_flag("--profile-step", c->profile_step,
               "GPU: capture only the last timed step for a profiler started with capture off "
               "(ncu --profile-from-start off; scripts/gpu-check.sh's profile part)");
  tr->add_option("--breakdown", c->breakdown,
                 "GPU: N more steps after the timed ones with every kernel, GEMM and copy timed by CUDA events: "
                 "a table of where a step's time goes (no profiler needed)")
      ->check(CLI::NonNegativeNumber);
  tr->add_flag("--json", c->json, "Print one JSON object");
  tr->add_option("--zero", c->zero, "Under mpirun: 1 shards the AdamW state (ZeRO-1)")->check(CLI::IsMember({0, 1}));
  tr->add_option("--gpu-comm", c->gpu_comm,
                 "GPU ranks under mpirun: how they sum gradients, nccl, host (through host memory) or auto")
      ->check(CLI::IsMember({"auto", "nccl", "host"}))
      ->capture_default_str();
  tr->add_option("--reduce-dtype", c->reduce_dtype,
                 "Under mpirun: the precision the ranks' gradients travel in, fp32 or bf16 (half the bytes)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  tr->add_option("--context-parallel", c->context_parallel, "Under mpirun: ranks sharing each sequence")
      ->check(CLI::PositiveNumber);
  tr->callback([c] { run_bench_train(*c); });
  register_bench_attention(*bench);
  register_bench_decode(*bench);
  register_bench_latent_decode(*bench);
  register_bench_flash_decode(*bench);
  register_bench_ops(*bench);
}

}  // namespace flashgpt::cli
