// flashgpt bench flash-decode: the GPU's flash decode (multi-head attention of a few new tokens
// over a long cache, split along the cache) at decoding sizes, beside the flash kernel on the same
// case, the warps kernel beside the tiles kernel, and the GPU's own device-to-device copy rate, all
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
#include "flashgpt/cuda/flash_decode_bench_cuda.h"
#include "flashgpt/cuda/gpt_cuda.h"

namespace flashgpt::cli {

namespace {

struct BenchFlashDecodeCli {
  std::vector<int64_t> batches = {1, 16};
  int64_t heads = 12, kv_heads = 0, head_dim = 64, new_tokens = 1;
  std::vector<int64_t> contexts = {1024, 4096, 16384};
  std::string precision = "bf16", kernel = "auto";
  int splits = 0, repeats = 10;
  bool json = false;
};

void run_bench_flash_decode(const BenchFlashDecodeCli& c) {
  const int64_t kv_heads = c.kv_heads > 0 ? c.kv_heads : c.heads;
  for (auto [v, flag] : {std::pair{c.heads, "--heads"}, {c.head_dim, "--head-dim"}, {c.new_tokens, "--new-tokens"}}) {
    FLASHGPT_CHECK(v > 0, "{}: must be positive (got {})", flag, v);
  }
  for (int64_t b : c.batches) FLASHGPT_CHECK(b > 0, "--batch: must be positive (got {})", b);
  FLASHGPT_CHECK(c.kv_heads >= 0, "--kv-heads: must be 0 (as many as --heads) or positive (got {})", c.kv_heads);
  FLASHGPT_CHECK(c.heads % kv_heads == 0, "--kv-heads: {} must divide --heads {}", kv_heads, c.heads);
  FLASHGPT_CHECK(c.repeats > 0, "--repeats: must be positive");
  FLASHGPT_CHECK(c.splits >= 0, "--splits: must be 0 (chosen) or positive");
  for (int64_t ctx : c.contexts) {
    FLASHGPT_CHECK(ctx >= c.new_tokens, "--context: {} must hold the {} new tokens", ctx, c.new_tokens);
  }
  const DeviceReport dev = cuda::devices();
  FLASHGPT_CHECK(cuda::gpu_available(), "bench flash-decode: needs a GPU: {}", dev.why_none);
  if (!c.json) {
    std::printf("%s, flash decode: %lld query heads, %lld key/value heads, head dim %lld, %lld new tokens, %s\n\n",
                dev.gpus.empty() ? "GPU" : dev.gpus.front().name.c_str(), static_cast<long long>(c.heads),
                static_cast<long long>(kv_heads), static_cast<long long>(c.head_dim),
                static_cast<long long>(c.new_tokens), c.precision.c_str());
    std::printf("| batch | context | kernel | splits | blocks/SM | ms | flash kernel ms | vs flash kernel | GB/s | copy GB/s "
                "| of copy | max rel err | warps kernel ms | warps vs it |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  }
  for (int64_t batch : c.batches) {
    for (int64_t ctx : c.contexts) {
      cuda::FlashDecodeBenchCase bc;
      bc.B = batch;
      bc.Hq = c.heads;
      bc.Hkv = kv_heads;
      bc.Tq = c.new_tokens;
      bc.head_dim = c.head_dim;
      bc.context = ctx;
      bc.bf16 = c.precision == "bf16";
      bc.options.splits = c.splits;
      bc.options.kernel = cuda::parse_flash_decode_kernel(c.kernel, "--kernel");
      bc.repeats = c.repeats;
      const cuda::FlashDecodeBenchResult r = cuda::bench_flash_decode(bc);
      const double warps_gbps = r.warps_ms > 0 ? r.bytes / (r.warps_ms * 1e-3) / 1e9 : 0.0;
      if (c.json) {
        std::printf("%s\n", nlohmann::json{{"program", "flashgpt"}, {"bench", "flash-decode"},
                                           {"precision", c.precision}, {"batch", batch}, {"heads", c.heads},
                                           {"kv_heads", kv_heads}, {"head_dim", c.head_dim},
                                           {"new_tokens", c.new_tokens}, {"context", ctx},
                                           {"kernel", cuda::flash_decode_kernel_name(r.plan.kernel)},
                                           {"splits", r.plan.splits},
                                           {"blocks_per_sm", r.plan.blocks_per_sm}, {"stages", r.plan.stages},
                                           {"ms", r.ms}, {"flash_ms", r.flash_ms},
                                           {"speedup_vs_flash", r.flash_ms / r.ms}, {"bytes", r.bytes},
                                           {"gbps", r.gbps}, {"copy_gbps", r.copy_gbps},
                                           {"of_copy", r.gbps / r.copy_gbps}, {"max_rel_err", r.max_rel_err},
                                           {"flash_max_rel_err", r.flash_max_rel_err},
                                           // the warps kernel beside it (null where not timed)
                                           {"warps_ms", r.warps_ms > 0 ? nlohmann::json(r.warps_ms) : nullptr},
                                           {"warps_splits", r.warps_ms > 0 ? nlohmann::json(r.warps_splits) : nullptr},
                                           {"warps_speedup", r.warps_ms > 0 ? nlohmann::json(r.ms / r.warps_ms) : nullptr},
                                           {"warps_of_copy", r.warps_ms > 0 ? nlohmann::json(warps_gbps / r.copy_gbps)
                                                                            : nullptr},
                                           {"warps_max_rel_err", r.warps_ms > 0 ? nlohmann::json(r.warps_max_rel_err) : nullptr}}
                                .dump()
                                .c_str());
      } else {
        const std::string warps_ms = r.warps_ms > 0 ? fmt::format("{:.4f}", r.warps_ms) : "—";
        const std::string warps_vs = r.warps_ms > 0 ? fmt::format("{:.2f}×", r.ms / r.warps_ms) : "—";
        std::printf("| %lld | %lld | %s | %d | %d | %.4f | %.4f | %.2f× | %.0f | %.0f | %.0f%% | %.1e | %s | %s |\n",
                    static_cast<long long>(batch), static_cast<long long>(ctx),
                    cuda::flash_decode_kernel_name(r.plan.kernel), r.plan.splits, r.plan.blocks_per_sm, r.ms,
                    r.flash_ms, r.flash_ms / r.ms, r.gbps, r.copy_gbps, 100.0 * r.gbps / r.copy_gbps, r.max_rel_err,
                    warps_ms.c_str(), warps_vs.c_str());
      }
      std::fflush(stdout);
    }
  }
}

}  // namespace

void register_bench_flash_decode(CLI::App& bench) {
  auto c = std::make_shared<BenchFlashDecodeCli>();
  CLI::App* sub = bench.add_subcommand(
      "flash-decode", "GPU: flash decode (split-KV attention for decoding) against the flash kernel and the copy bandwidth");
  sub->add_option("--batch", c->batches, "Sequences decoded together (several: one row each)")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--heads", c->heads, "Query heads")->capture_default_str();
  sub->add_option("--kv-heads", c->kv_heads, "Key/value heads (GQA; 0: as many as --heads)")->capture_default_str();
  sub->add_option("--head-dim", c->head_dim, "Head dim (the flash kernel's: 64 or 128 in bf16, up to 256 in fp32)")
      ->capture_default_str();
  sub->add_option("--new-tokens", c->new_tokens, "New tokens per sequence")->capture_default_str();
  sub->add_option("--context", c->contexts, "Cached tokens per sequence, new ones included")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--precision", c->precision, "bf16 or fp32")
      ->check(CLI::IsMember({"bf16", "fp32"}))
      ->capture_default_str();
  sub->add_option("--splits", c->splits, "Splits of each sequence's cache (0: chosen for the GPU)")
      ->capture_default_str();
  sub->add_option("--kernel", c->kernel,
                  "Split kernel: tiles (shared-memory tiles, block barriers), warps (each warp its own keys) or auto "
                  "(tiles); the warps kernel is also timed beside any other where it runs the case")
      ->check(CLI::IsMember({"auto", "tiles", "warps"}))
      ->capture_default_str();
  sub->add_option("--repeats", c->repeats, "Timed samples (median reported)")->capture_default_str();
  sub->add_flag("--json", c->json, "One JSON object per case");
  sub->callback([c] { run_bench_flash_decode(*c); });
}

}  // namespace flashgpt::cli
