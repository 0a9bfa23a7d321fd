// flashgpt bench latent-decode: the GPU's paged latent decode (absorbed MLA over a paged cache,
// FlashMLA's inference kernel) at serving sizes, beside the GPU's own device-to-device copy rate
// measured in the same run. Each case is checked against the CPU before it is timed.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
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
  std::vector<std::string> schedules = {"auto"};
  std::vector<std::string> lengths = {"same"};
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

cuda::LatentSchedule parse_schedule(const std::string& s) {
  if (s == "uniform") return cuda::LatentSchedule::Uniform;
  if (s == "balanced") return cuda::LatentSchedule::Balanced;
  return cuda::LatentSchedule::Auto;
}

// Each sequence's cached tokens for a batch of `batch` at most `context` long: "same" (all of
// them, left empty), "one-long" (the first holds the context, the rest a 32nd of it) or "random"
// (uniform in new_tokens … context, the first the longest; a fixed draw).
std::vector<int64_t> lengths_of(const std::string& kind, int64_t batch, int64_t context, int64_t new_tokens) {
  std::vector<int64_t> lens;
  if (kind == "same") return lens;
  lens.assign(static_cast<size_t>(batch), std::max(new_tokens, context / 32));
  if (kind == "random") {
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (int64_t& n : lens) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      n = new_tokens + static_cast<int64_t>(x % static_cast<uint64_t>(context - new_tokens + 1));
    }
  }
  lens[0] = context;
  return lens;
}

std::string splits_text(const cuda::LatentDecodeBenchResult& r) {
  if (r.plan.schedule == cuda::LatentSchedule::Uniform) return std::to_string(r.plan.splits);
  return fmt::format("{} × {} pages ({} cut)", r.chunks.chunks, r.chunks.chunk_pages, r.chunks.cut);
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
  for (const std::string& s : c.schedules) {
    FLASHGPT_CHECK(c.splits == 0 || s != "balanced",
                   "--splits: a split count is for the uniform schedule (the balanced one chooses its chunks)");
  }
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
    std::printf("| kernel | schedule | lengths | context | splits | rows/block | ms | GB/s | copy GB/s | of copy | TFLOP/s "
                "| max rel err |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|\n");
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
    for (const std::string& lengths : c.lengths) {
      for (const std::string& k : kernels) {
        for (const std::string& schedule : c.schedules) {
          cuda::LatentDecodeBenchCase bc;
          bc.dims = cuda::PagedLatentDims{c.batch, c.heads, c.new_tokens, c.latent, c.rope, c.page, 1};
          bc.context = ctx;
          bc.lengths = lengths_of(lengths, c.batch, ctx, c.new_tokens);
          bc.bf16 = c.precision == "bf16";
          bc.options.kernel = parse_kernel(k);
          bc.options.schedule = parse_schedule(schedule);
          bc.options.splits = c.splits;
          bc.repeats = c.repeats;
          const cuda::LatentDecodeBenchResult r = cuda::bench_latent_decode(bc);
          const bool balanced = r.plan.schedule == cuda::LatentSchedule::Balanced;
          if (c.json) {
            std::printf("%s\n", nlohmann::json{{"program", "flashgpt"}, {"kernel", kernel_name(r.plan.kernel)},
                                               {"schedule", balanced ? "balanced" : "uniform"}, {"lengths", lengths},
                                               {"precision", c.precision}, {"batch", c.batch}, {"heads", c.heads},
                                               {"new_tokens", c.new_tokens}, {"n_latent", c.latent},
                                               {"rope_dim", c.rope}, {"page", c.page}, {"context", ctx},
                                               {"splits", r.plan.splits}, {"chunks", r.chunks.chunks},
                                               {"chunk_pages", r.chunks.chunk_pages}, {"cut", r.chunks.cut},
                                               {"rows_per_block", r.plan.rows_per_block},
                                               {"blocks_per_sm", r.plan.blocks_per_sm}, {"ms", r.ms},
                                               {"bytes", r.bytes}, {"gbps", r.gbps}, {"copy_gbps", r.copy_gbps},
                                               {"of_copy", r.gbps / r.copy_gbps}, {"tflops", r.tflops},
                                               {"max_rel_err", r.max_rel_err}}
                                    .dump()
                                    .c_str());
          } else {
            std::printf("| %s | %s | %s | %lld | %s | %d | %.3f | %.0f | %.0f | %.0f%% | %.1f | %.1e |\n",
                        kernel_name(r.plan.kernel), balanced ? "balanced" : "uniform", lengths.c_str(),
                        static_cast<long long>(ctx), splits_text(r).c_str(), r.plan.rows_per_block, r.ms, r.gbps,
                        r.copy_gbps, 100.0 * r.gbps / r.copy_gbps, r.tflops, r.max_rel_err);
          }
          std::fflush(stdout);
        }
      }
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
  sub->add_option("--schedule", c->schedules,
                  "auto, balanced (chunks of equal pages cut on the GPU from the lengths) or uniform (every sequence "
                  "split the same number of ways); several: side by side")
      ->delimiter(',')
      ->check(CLI::IsMember({"auto", "balanced", "uniform"}))
      ->capture_default_str();
  sub->add_option("--lengths", c->lengths,
                  "same (every sequence holds the context), one-long (the first holds it, the rest a 32nd) or random "
                  "(up to the context); several: side by side")
      ->delimiter(',')
      ->check(CLI::IsMember({"same", "one-long", "random"}))
      ->capture_default_str();
  sub->add_option("--splits", c->splits, "Uniform schedule: splits of each sequence's cache (0: chosen for the GPU)")
      ->capture_default_str();
  sub->add_option("--repeats", c->repeats, "Timed samples (median reported)")->capture_default_str();
  sub->add_flag("--json", c->json, "One JSON object per case");
  sub->callback([c] { run_bench_latent_decode(*c); });
}

}  // namespace flashgpt::cli
