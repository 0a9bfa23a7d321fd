// flashgpt bench latent-decode: the GPU's paged latent decode (absorbed MLA over a paged cache,
// FlashMLA's inference kernel) at serving sizes, beside the GPU's own device-to-device copy rate
// measured in the same run. Each case is checked against the CPU before it is timed.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "commands.h"
#include "flashgpt/core/device.h"
#include "flashgpt/core/error.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/latent_decode_bench_cuda.h"
#include "flashgpt/cuda/warpgroup_cuda.h"

namespace flashgpt::cli {

namespace {

struct BenchLatentDecodeCli {
  int64_t batch = 128, heads = 128, new_tokens = 1, latent = 512, rope = 64, page = 64;
  std::vector<int64_t> contexts = {1024, 2048, 4096, 8192, 16384, 32768};
  std::vector<std::string> kernels = {"auto"};
  std::string precision = "bf16";
  int splits = 0, repeats = 10;
  bool json = false;
};

cuda::LatentDecodeKernel parse_kernel(const std::string& s) {
  if (s == "tensor-cores") return cuda::LatentDecodeKernel::TensorCores;
  if (s == "cuda-cores") return cuda::LatentDecodeKernel::CudaCores;
  if (s == "wgmma") return cuda::LatentDecodeKernel::Wgmma;
  return cuda::LatentDecodeKernel::Auto;
}

const char* kernel_name(cuda::LatentDecodeKernel k) {
  return k == cuda::LatentDecodeKernel::Wgmma         ? "wgmma"
         : k == cuda::LatentDecodeKernel::TensorCores ? "tensor-cores"
                                                      : "cuda-cores";
}

void run_bench_latent_decode(const BenchLatentDecodeCli& c) {
  for (auto [v, flag] : {std::pair{c.batch, "--batch"}, {c.heads, "--heads"}, {c.new_tokens, "--new-tokens"},
                         {c.latent, "--latent"}, {c.page, "--page"}}) {
    FLASHGPT_CHECK(v > 0, "{}: must be positive (got {})", flag, v);
  }
  FLASHGPT_CHECK(c.rope >= 0, "--rope: must not be negative (got {})", c.rope);
  FLASHGPT_CHECK(c.repeats > 0, "--repeats: must be positive");
  FLASHGPT_CHECK(c.splits >= 0, "--splits: must be 0 (chosen) or positive");
  for (int64_t ctx : c.contexts) {
    FLASHGPT_CHECK(ctx >= c.new_tokens, "--context: {} must hold the {} new tokens", ctx, c.new_tokens);
  }
  const DeviceReport dev = cuda::devices();
  FLASHGPT_CHECK(cuda::gpu_available(), "bench latent-decode: needs a GPU: {}", dev.why_none);
  if (!c.json) {
    std::printf("%s, paged latent decode: %lld sequences × %lld new tokens × %lld heads, rows %lld + %lld, pages of %lld, "
                "%s\n\n",
                dev.gpus.empty() ? "GPU" : dev.gpus.front().name.c_str(), static_cast<long long>(c.batch),
                static_cast<long long>(c.new_tokens), static_cast<long long>(c.heads), static_cast<long long>(c.latent),
                static_cast<long long>(c.rope), static_cast<long long>(c.page), c.precision.c_str());
    std::printf("| kernel | context | splits | rows/block | ms | GB/s | copy GB/s | of copy | TFLOP/s | max rel err |\n"
                "|---|---|---|---|---|---|---|---|---|---|\n");
  }
  // Hopper's kernel where this GPU and build have it; elsewhere its cases are left out, with a note.
  std::vector<std::string> kernels;
  for (const std::string& k : c.kernels) {
    if (k == "wgmma" && !cuda::warpgroup_mma_supported()) {
      std::fprintf(stderr, "--kernel wgmma: this GPU or build has no wgmma (compute capability 9.0 and sm_90a code): "
                           "its cases are left out\n");
      continue;
    }
    kernels.push_back(k);
  }
  for (int64_t ctx : c.contexts) {
    for (const std::string& k : kernels) {
      cuda::LatentDecodeBenchCase bc;
      bc.dims = cuda::PagedLatentDims{c.batch, c.heads, c.new_tokens, c.latent, c.rope, c.page, 1};
      bc.context = ctx;
      bc.bf16 = c.precision == "bf16";
      bc.options.kernel = parse_kernel(k);
      bc.options.splits = c.splits;
      bc.repeats = c.repeats;
      const cuda::LatentDecodeBenchResult r = cuda::bench_latent_decode(bc);
      if (c.json) {
        std::printf("%s\n", nlohmann::json{{"program", "flashgpt"}, {"kernel", kernel_name(r.plan.kernel)},
                                           {"precision", c.precision}, {"batch", c.batch}, {"heads", c.heads},
                                           {"new_tokens", c.new_tokens}, {"n_latent", c.latent}, {"rope_dim", c.rope},
                                           {"page", c.page}, {"context", ctx}, {"splits", r.plan.splits},
                                           {"rows_per_block", r.plan.rows_per_block},
                                           {"blocks_per_sm", r.plan.blocks_per_sm}, {"ms", r.ms}, {"bytes", r.bytes},
                                           {"gbps", r.gbps}, {"copy_gbps", r.copy_gbps},
                                           {"of_copy", r.gbps / r.copy_gbps}, {"tflops", r.tflops},
                                           {"max_rel_err", r.max_rel_err}}
                                .dump()
                                .c_str());
      } else {
        std::printf("| %s | %lld | %d | %d | %.3f | %.0f | %.0f | %.0f%% | %.1f | %.1e |\n", kernel_name(r.plan.kernel),
                    static_cast<long long>(ctx), r.plan.splits, r.plan.rows_per_block, r.ms, r.gbps, r.copy_gbps,
                    100.0 * r.gbps / r.copy_gbps, r.tflops, r.max_rel_err);
      }
      std::fflush(stdout);
    }
  }
}

}  // namespace

void register_bench_latent_decode(CLI::App& bench) {
  auto c = std::make_shared<BenchLatentDecodeCli>();
  CLI::App* sub = bench.add_subcommand(
      "latent-decode", "GPU: the paged latent decode (absorbed MLA, FlashMLA's sizes) against the copy bandwidth");
  sub->add_option("--batch", c->batch, "Sequences decoded together")->capture_default_str();
  sub->add_option("--heads", c->heads, "Query heads")->capture_default_str();
  sub->add_option("--new-tokens", c->new_tokens, "New tokens per sequence (speculative decoding: several)")
      ->capture_default_str();
  sub->add_option("--latent", c->latent, "Latent width n_latent (the values; at most 512)")->capture_default_str();
  sub->add_option("--rope", c->rope, "Decoupled RoPE width (keys are n_latent + rope wide)")->capture_default_str();
  sub->add_option("--page", c->page, "Cache page size in tokens")->capture_default_str();
  sub->add_option("--context", c->contexts, "Cached tokens per sequence, new ones included")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--kernel", c->kernels,
                  "auto, tensor-cores, cuda-cores or wgmma (Hopper's warpgroup MMA, bf16 at 512/64; several: side by "
                  "side)")
      ->delimiter(',')
      ->check(CLI::IsMember({"auto", "tensor-cores", "cuda-cores", "wgmma"}))
      ->capture_default_str();
  sub->add_option("--precision", c->precision, "bf16, or fp32 (the CUDA-core kernel)")
      ->check(CLI::IsMember({"bf16", "fp32"}))
      ->capture_default_str();
  sub->add_option("--splits", c->splits, "Splits of each sequence's cache (0: chosen for the GPU)")
      ->capture_default_str();
  sub->add_option("--repeats", c->repeats, "Timed samples (median reported)")->capture_default_str();
  sub->add_flag("--json", c->json, "One JSON object per case");
  sub->callback([c] { run_bench_latent_decode(*c); });
}

}  // namespace flashgpt::cli
