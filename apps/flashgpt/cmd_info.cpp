// flashgpt info: what a model costs (parameters, FLOPs, KV cache) and what this build offers.
#include <omp.h>

#include <fmt/format.h>

#include <memory>

#include "checkpoint_loading.h"
#include "commands.h"
#include "flashgpt/dist/comm.h"
#include "flashgpt/core/device.h"
#include "flashgpt/core/threads.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/attention_cudnn.h"
#include "flashgpt/cuda/device_comm.h"
#include "flashgpt/cuda/warpgroup_cuda.h"

extern "C" char* openblas_get_config(void);
extern "C" char* openblas_get_corename(void);

namespace flashgpt::cli {

namespace {

struct InfoCli {
  ModelFlags model;
  std::string checkpoint;
  int seq_len = 0;
  bool json = false;
};

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return fmt::format("{:.{}f} {}", b, u == 0 ? 0 : 2, units[u]);
}

std::string cpu_features() {
  std::string f;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) f += "avx2 ";
  if (__builtin_cpu_supports("fma")) f += "fma ";
  if (__builtin_cpu_supports("avx512f")) f += "avx512f ";
  if (__builtin_cpu_supports("avx512bw")) f += "avx512bw ";
  if (!f.empty()) f.pop_back();
  return f.empty() ? "none of avx2/fma/avx512" : f;
}

// This model's sizes under each attention mechanism.
std::vector<GPTConfig> mechanism_variants(const GPTConfig& cfg) {
  std::vector<GPTConfig> out;
  for (AttentionKind k : {AttentionKind::Standard, AttentionKind::Flash, AttentionKind::MLA, AttentionKind::FlashMLA}) {
    out.push_back(cfg.with_attention(k));
  }
  return out;
}

void run_info(const InfoCli& c) {
  GPTConfig cfg;
  if (!c.checkpoint.empty()) {
    cfg = load_model(c.checkpoint, "").model->config();
  } else {
    cfg = c.model.resolve("d12");
  }
  const int T = c.seq_len > 0 ? c.seq_len : cfg.block_size;
  const ModelStats s = model_stats(cfg, T);
  const DeviceReport dev = cuda::devices();
  nlohmann::json devices = {"cpu"}, gpus = nlohmann::json::array();
  for (const GpuInfo& g : dev.gpus) {
    devices.push_back(fmt::format("cuda:{}", g.index));
    gpus.push_back({{"index", g.index}, {"name", g.name}, {"compute_capability", fmt::format("{}.{}", g.cc_major, g.cc_minor)},
                    {"memory_bytes", g.memory_bytes}, {"multiprocessors", g.multiprocessors}});
  }
  // Hopper's warpgroup MMA (the wgmma forward, --tiles wgmma): a compute capability 9.0 GPU and
  // sm_90a code in this build.
  const bool wgmma = !dev.gpus.empty() && cuda::gpu_available() && cuda::warpgroup_mma_supported();
  // cuDNN's fused attention (--backend cudnn): built in, and the library loadable here.
  std::string cudnn_detail;
  const bool cudnn = dev.cuda_built && cuda::cudnn_attention_available(&cudnn_detail);  // else it says why
  if (!dev.cuda_built) cudnn_detail = "no CUDA backend";
  // NCCL, for GPU ranks under mpirun (--gpu-comm nccl): loadable here.
  std::string nccl_detail;
  const bool nccl = cuda::nccl_available(&nccl_detail);
  nlohmann::json cuda = {{"built", dev.cuda_built},       {"architectures", dev.cuda_architectures},
                         {"driver_version", dev.driver_version}, {"runtime_version", dev.runtime_version},
                         {"gpus", gpus},                  {"why_no_gpu", dev.why_none},
                         {"wgmma", wgmma},
                         {"cudnn_attention", {{"available", cudnn}, {"detail", cudnn_detail}}},
                         {"nccl", {{"available", nccl}, {"detail", nccl_detail}}}};
  const dist::LaunchInfo launch = dist::launch_info();
  nlohmann::json mpi = {{"built", launch.mpi_built},
                        {"under_launcher", launch.under_launcher},
                        {"ranks", launch.world_size},
                        {"rank", launch.world_rank}};
  nlohmann::json build = {{"version", FLASHGPT_VERSION},
                          {"blas", openblas_get_config()},
                          {"blas_kernels", openblas_get_corename()},
                          {"threads", num_threads()},
                          {"cpu_features", cpu_features()},
                          {"devices", devices},
                          {"cuda", cuda},
                          {"mpi", mpi},
                          {"attention_kernels", {"standard", "flash"}},
                          {"attention_mechanisms", {"standard", "flash", "mla", "flash_mla"}}};
  nlohmann::json mechanisms = nlohmann::json::array();
  for (const GPTConfig& v : mechanism_variants(cfg)) {
    const AttentionStats a = attention_stats(v);
    mechanisms.push_back({{"mechanism", a.mechanism},
                          {"this_model", v.attention == cfg.attention},
                          {"attention_params", a.params},
                          {"mha_attention_params", a.mha_params},
                          {"param_compression_vs_mha", a.param_compression()},
                          {"kv_cache_floats_per_token_per_layer", a.kv_cache_floats_per_token_layer},
                          {"kv_cache_bytes_per_token", a.kv_cache_bytes_per_token},
                          {"kv_cache_bytes_at_seq_len", a.kv_cache_bytes_per_token * T},
                          {"cache_compression_vs_mha", a.cache_compression()}});
  }
  if (c.json) {
    nlohmann::json j = {{"config", cfg.to_json()},
                        {"padded_vocab_size", cfg.padded_vocab_size()},
                        {"parameters", s.n_params},
                        {"parameters_non_embedding", s.n_params_non_embedding},
                        {"seq_len", T},
                        {"train_flops_per_token", s.train_flops_per_token},
                        {"forward_flops_per_token", s.train_flops_per_token / 3},
                        {"kv_cache_bytes_per_token", s.kv_cache_bytes_per_token},
                        {"kv_cache_bytes_at_seq_len", s.kv_cache_bytes_per_token * T},
                        {"attention", mechanisms},
                        {"build", build}};
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("model\n");
  std::printf("  layers %d, heads %d (kv heads %d), width %d, head dim %d, MLP %s %d, context %d\n", cfg.n_layer,
              cfg.n_head, cfg.kv_heads(), cfg.n_embd, cfg.head_dim(), to_string(cfg.mlp).c_str(), cfg.hidden(),
              cfg.block_size);
  std::printf("  norm %s%s%s, positions %s, attention %s, %s LM head, %s\n", to_string(cfg.norm).c_str(),
              cfg.post_norm ? " + post-norm" : "", cfg.qk_norm ? " + qk-norm" : "", to_string(cfg.pos).c_str(),
              to_string(cfg.attention).c_str(), cfg.tie_embeddings ? "tied" : "untied",
              cfg.bias ? "biases" : "no biases");
  std::printf("  vocab %d (padded to %d)\n", cfg.vocab_size, cfg.padded_vocab_size());
  if (is_latent(cfg.attention)) {
    std::printf("  latent attention: n_latent %d, rope_dim %d (q·k width %d, v width %d), %s%s\n", cfg.latent_dim(),
                cfg.mla_rope_dim(), cfg.mla_qk_dim(), cfg.head_dim(),
                cfg.q_lora_rank > 0 ? fmt::format("queries through rank {}", cfg.q_lora_rank).c_str()
                                    : "full-rank queries",
                cfg.use_svd ? fmt::format(", value up-projection at SVD rank {}", cfg.svd_rank).c_str() : "");
  }
  std::printf("parameters\n  %lld total (%.2fM), %lld without embeddings\n", static_cast<long long>(s.n_params),
              static_cast<double>(s.n_params) / 1e6, static_cast<long long>(s.n_params_non_embedding));
  std::printf("FLOPs per token (T = %d)\n  training %.3g (6N + 3·L·T·H·(Dqk + Dv)), forward %.3g\n", T,
              s.train_flops_per_token, s.train_flops_per_token / 3);
  std::printf("KV cache (fp32)\n  %s per token (%lld bytes), %s for %d tokens\n",
              human_bytes(static_cast<double>(s.kv_cache_bytes_per_token)).c_str(),
              static_cast<long long>(s.kv_cache_bytes_per_token),
              human_bytes(static_cast<double>(s.kv_cache_bytes_per_token) * T).c_str(), T);
  std::printf("attention mechanisms at this size (cache for %d tokens; ratios against multi-head attention)\n", T);
  std::printf("  %-11s %14s %9s %16s %14s %9s\n", "mechanism", "attn params", "MHA/this", "cache/token", "cache", "MHA/this");
  for (const GPTConfig& v : mechanism_variants(cfg)) {
    const AttentionStats a = attention_stats(v);
    std::printf("%s %-11s %14lld %8.2fx %16s %14s %8.2fx\n", v.attention == cfg.attention ? "*" : " ",
                a.mechanism.c_str(), static_cast<long long>(a.params), a.param_compression(),
                human_bytes(static_cast<double>(a.kv_cache_bytes_per_token)).c_str(),
                human_bytes(static_cast<double>(a.kv_cache_bytes_per_token) * T).c_str(), a.cache_compression());
  }
  std::printf("build\n  flashgpt %s | attention kernels: standard, flash | mechanisms: standard, flash, mla, flash_mla\n",
              FLASHGPT_VERSION);
  if (!dev.cuda_built) {
    std::printf("  devices: cpu; %s\n", dev.why_none.c_str());
  } else {
    std::printf("  CUDA backend built for sm %s (runtime %d, driver %d)\n", dev.cuda_architectures.c_str(),
                dev.runtime_version, dev.driver_version);
    for (const GpuInfo& g : dev.gpus) {
      std::printf("  cuda:%d %s, compute capability %d.%d, %s, %d SMs\n", g.index, g.name.c_str(), g.cc_major,
                  g.cc_minor, human_bytes(static_cast<double>(g.memory_bytes)).c_str(), g.multiprocessors);
    }
    if (dev.gpus.empty()) std::printf("  devices: cpu only; no GPU: %s\n", dev.why_none.c_str());
    if (!dev.gpus.empty()) {
      std::printf("  Hopper warpgroup MMA (wgmma, --tiles wgmma): %s\n",
                  wgmma ? "available" : "no (needs compute capability 9.0 and sm_90a in the build's architectures)");
    }
    std::printf("  cuDNN attention backend (--backend cudnn): %s\n",
                cudnn ? cudnn_detail.c_str() : fmt::format("no ({})", cudnn_detail).c_str());
    std::printf("  NCCL for GPU ranks (--gpu-comm nccl): %s\n",
                nccl ? nccl_detail.c_str()
                     : fmt::format("no ({}); GPU ranks sum through host memory", nccl_detail).c_str());
  }
  std::printf("  multi-process training: %s\n",
              !launch.mpi_built ? "not built (no MPI found at build time; install libopenmpi-dev and rebuild)"
              : launch.under_launcher
                  ? fmt::format("MPI, rank {} of {} (data parallel, --zero 1, --context-parallel N)", launch.world_rank,
                                launch.world_size)
                        .c_str()
                  : "MPI (start with mpirun -np N flashgpt train …; --zero 1, --context-parallel N)");
  std::printf("  BLAS: %s | kernels: %s | threads: %d | CPU: %s\n", openblas_get_config(), openblas_get_corename(),
              num_threads(), cpu_features().c_str());
  const std::string core = openblas_get_corename();
  if (cpu_features().find("avx512bw") != std::string::npos && core.find("kylakex") == std::string::npos &&
      core.find("ooperlake") == std::string::npos && core.find("apphire") == std::string::npos) {
    std::printf("  hint: this CPU has AVX-512 but OpenBLAS chose its %s kernels; OPENBLAS_CORETYPE=SkylakeX in the\n"
                "        environment selects the AVX-512 ones (about 1.7x faster training steps on such CPUs)\n",
                core.c_str());
  }
}

}  // namespace

void register_info(CLI::App& app) {
  auto c = std::make_shared<InfoCli>();
  CLI::App* sub = app.add_subcommand("info", "Parameters, FLOPs per token, KV-cache size, and this build's features");
  add_model_flags(*sub, c->model);
  sub->add_option("-c,--checkpoint", c->checkpoint, "Describe this checkpoint's model instead")
      ->check(CLI::ExistingFile);
  sub->add_option("-t,--seq-len", c->seq_len, "Sequence length for FLOPs and the KV cache (default: block size)");
  sub->add_flag("--json", c->json, "Print one JSON object");
  sub->callback([c] { run_info(*c); });
}

}  // namespace flashgpt::cli
