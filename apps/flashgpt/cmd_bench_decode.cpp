// flashgpt bench decode: decoding one new token against a long cache, per mechanism — multi-head
// attention over its key/value cache against absorbed latent attention over its [c_kv, k_rope]
// cache — each checked before it is timed. On the CPU it times the attention of every layer; on
// the GPU (--device cuda) the whole model's decode step, as the sampler runs it.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <memory>

#include "commands.h"
#include "flashgpt/attention/latent_decode.h"
#include "flashgpt/core/device.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/core/threads.h"
#include "flashgpt/core/timer.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/device_memory.h"
#include "flashgpt/cuda/gpt_cuda.h"
#include "flashgpt/model/gpt.h"
#include "flashgpt/ops/matmul.h"

namespace flashgpt::cli {

namespace {

struct BenchDecodeCli {
  ModelFlags model;
  std::vector<std::string> mechanisms = {"standard", "flash", "mla", "flash_mla"};
  std::vector<int64_t> contexts = {4096};
  int64_t batch = 1;
  int repeats = 20;
  bool json = false;
  std::string device = "cpu", precision = "bf16";
  std::vector<std::string> cuda_graphs = {"on"};  // the GPU: each setting timed in turn
  std::vector<std::string> split_kv = {"auto"};   // the GPU, multi-head: flash decode (on, auto) or the flash kernels
  std::vector<std::string> kernels = {"auto"};    // the GPU, flash decode's split kernel: auto, tiles, warps
  bool profile_step = false;  // the GPU: each case's last timed step inside a profiler capture range
};

struct Result {
  std::string mechanism;
  std::string graphs = "-";  // the GPU: "on" or "off"
  std::string split_kv = "-";  // the GPU, multi-head attention: "on", "auto" or "off" (cuda::SplitKv)
  std::string kernel = "-";    // the GPU, with split-KV: flash decode's split kernel (auto, tiles, warps)
  int64_t replays = 0;      // timed steps that replayed the graph
  int64_t context = 0;
  double ms = 0;  // median, all layers, one token per sequence
  int64_t cache_bytes = 0, predicted_bytes = 0;
  double max_rel_err = 0;
};

std::vector<float> randn(size_t n, Rng& rng) {
  std::vector<float> x(n);
  for (float& e : x) e = static_cast<float>(rng.normal());
  return x;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double max_rel(const std::vector<float>& a, const std::vector<float>& ref) {
  double scale = 0, err = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    scale = std::max(scale, static_cast<double>(std::abs(ref[i])));
    err = std::max(err, std::abs(static_cast<double>(a[i]) - ref[i]));
  }
  return scale > 0 ? err / scale : err;
}

Result bench_one(const GPTConfig& base, AttentionKind kind, int64_t context, const BenchDecodeCli& c) {
  GPTConfig cfg = base.with_attention(kind);
  cfg.block_size = std::max<int>(cfg.block_size, static_cast<int>(context) + 1);
  cfg.validate();
  const int64_t B = c.batch, L = cfg.n_layer, H = cfg.n_head, hd = cfg.head_dim(), Tk = context + 1;
  const AttentionKernel kernel = uses_flash_kernel(kind) ? AttentionKernel::Flash : AttentionKernel::Standard;
  Rng rng(1234);
  // The cache as the model lays it out, filled with stand-in values: the timing does not depend on them.
  KVCache<float> cache = make_kv_cache<float>(cfg, B, Tk);
  for (auto* buf : {&cache.k, &cache.v, &cache.latent}) {
    for (float& x : *buf) x = static_cast<float>(rng.normal());
  }
  std::fill(cache.lengths.begin(), cache.lengths.end(), context);
  Result r;
  r.mechanism = to_string(kind);
  r.context = context;
  r.cache_bytes = cache.bytes();
  r.predicted_bytes = attention_stats(cfg).kv_cache_bytes_per_token * B * Tk;
  std::vector<float> att(static_cast<size_t>(B * H * hd)), lse(static_cast<size_t>(B * H));
  std::function<void(int64_t)> layer_step;  // the attention of layer l for the new token

  std::vector<float> q, k_up, v_up, q_abs, o_lat;
  if (is_latent(kind)) {
    const int64_t nl = cfg.latent_dim(), dr = cfg.mla_rope_dim(), row = nl + dr;
    q = randn(static_cast<size_t>(L * B * H * (hd + dr)), rng);
    k_up = randn(static_cast<size_t>(L * H * hd * nl), rng);
    v_up = randn(static_cast<size_t>(L * H * hd * nl), rng);
    for (float& x : k_up) x *= 0.1f;
    q_abs.resize(static_cast<size_t>(B * H * row));
    o_lat.resize(static_cast<size_t>(B * H * nl));
    LatentDecodeDims d;
    d.B = B;
    d.H = H;
    d.Tq = 1;
    d.Tk = Tk;
    d.capacity = Tk;
    d.head_dim = hd;
    d.n_latent = nl;
    d.rope_dim = dr;
    layer_step = [&, d, kernel](int64_t l) {
      latent_attention_decode(kernel, d, q.data() + l * B * H * (hd + dr), k_up.data() + l * H * hd * nl,
                              v_up.data() + l * H * hd * nl, cache.latent.data() + l * B * Tk * row, q_abs.data(),
                              o_lat.data(), lse.data(), att.data());
    };
    // Check: layer 0 against the expanded computation with the standard kernel.
    layer_step(0);
    std::vector<float> keys(static_cast<size_t>(B * Tk * H * (hd + dr))), values(static_cast<size_t>(B * Tk * H * hd)),
        ref(att.size()), ref_lse(lse.size());
    for (int64_t b = 0; b < B; ++b) {
      const float* rows = cache.latent.data() + b * Tk * row;
      for (int64_t h = 0; h < H; ++h) {
        ops::gemm<float>(false, true, Tk, hd, nl, 1.0f, rows, row, k_up.data() + h * hd * nl, nl, 0.0f,
                         keys.data() + b * Tk * H * (hd + dr) + h * (hd + dr), H * (hd + dr));
        for (int64_t t = 0; t < Tk; ++t)
          std::copy(rows + t * row + nl, rows + (t + 1) * row, keys.begin() + ((b * Tk + t) * H + h) * (hd + dr) + hd);
      }
      ops::gemm<float>(false, true, Tk, H * hd, nl, 1.0f, rows, row, v_up.data(), nl, 0.0f,
                       values.data() + b * Tk * H * hd, H * hd);
    }
    attention_forward(AttentionKernel::Standard, AttentionDims{B, H, H, 1, Tk, hd + dr, hd}, AttentionMask{true, context},
                      1.0f / std::sqrt(static_cast<float>(hd + dr)), q.data(), keys.data(), values.data(), ref.data(),
                      ref_lse.data());
    r.max_rel_err = max_rel(att, ref);
  } else {
    const int64_t Hkv = cfg.kv_heads(), kvd = cfg.kv_dim();
    q = randn(static_cast<size_t>(L * B * H * hd), rng);
    const AttentionDims d{B, H, Hkv, 1, Tk, hd, hd, Tk};
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    layer_step = [&, d, kernel, scale](int64_t l) {
      attention_forward(kernel, d, AttentionMask{true, context}, scale, q.data() + l * B * H * hd,
                        cache.k.data() + l * B * Tk * kvd, cache.v.data() + l * B * Tk * kvd, att.data(), lse.data());
    };
    layer_step(0);
    std::vector<float> ref(att.size()), ref_lse(lse.size());
    attention_forward(AttentionKernel::Standard, d, AttentionMask{true, context}, scale, q.data(), cache.k.data(),
                      cache.v.data(), ref.data(), ref_lse.data());
    r.max_rel_err = max_rel(att, ref);
  }
  FLASHGPT_CHECK(r.max_rel_err < 1e-4, "bench decode: {} disagrees with the reference (relative error {:.2e})",
                 r.mechanism, r.max_rel_err);
  std::vector<double> times;
  for (int rep = 0; rep < c.repeats + 1; ++rep) {
    Timer t;
    for (int64_t l = 0; l < L; ++l) layer_step(l);
    if (rep > 0) times.push_back(t.seconds());  // the first pass warms caches and threads
  }
  r.ms = median(times) * 1e3;
  return r;
}

// The GPU: the whole model's decode step (GPTCuda::decode, logits back on the host included) after
// a prefill of `context` tokens, timed one token at a time. Checked first: one step's logits (of
// the first sequence) against the GPU's own forward without a cache over the same tokens.
Result bench_one_cuda(const GPTConfig& base, AttentionKind kind, int64_t context, const BenchDecodeCli& c,
                      cuda::Precision precision, bool graphs, const std::string& split_kv, const std::string& kernel) {
  GPTConfig cfg = base.with_attention(kind);
  const int64_t B = c.batch, capacity = context + 1 + c.repeats + 1, Vp = cfg.padded_vocab_size();
  cfg.block_size = std::max<int>(cfg.block_size, static_cast<int>(capacity));
  cfg.validate();
  const std::string why = cuda::GPTCuda::decode_unsupported(cfg, precision);
  FLASHGPT_CHECK(why.empty(), "bench decode --device cuda: {}: {}", to_string(kind), why);
  cuda::GPTCuda gpu(cfg, precision);
  gpu.set_decode_graphs(graphs);
  if (split_kv != "-") gpu.set_split_kv_decode(cuda::parse_split_kv(split_kv, "--split-kv"));
  if (kernel != "-") gpu.set_flash_decode_kernel(cuda::parse_flash_decode_kernel(kernel, "--flash-decode-kernel"));
  {
    GPT<float> init(cfg);
    init.init_weights(1234);
    gpu.set_params(init.params());
  }
  Rng rng(1234);
  std::vector<int> seqs(static_cast<size_t>(B * (context + 1)));  // the prompt and one more token each
  for (int& t : seqs) t = static_cast<int>(rng.next_u64() % static_cast<uint64_t>(cfg.vocab_size));
  std::vector<int> prompt, next;
  for (int64_t b = 0; b < B; ++b) {
    const auto row = seqs.begin() + b * (context + 1);
    prompt.insert(prompt.end(), row, row + context);
    next.push_back(*(row + context));
  }
  Result r;
  r.mechanism = to_string(kind);
  r.context = context;
  std::vector<float> logits(static_cast<size_t>(B * Vp));
  gpu.start_decoding(B, capacity);
  r.cache_bytes = gpu.decode_cache_bytes();
  // info's fp32 bytes per token, in the cache's precision, over its rows (whole pages of 64 for
  // the latent cache).
  const int64_t rows = is_latent(kind) ? (capacity + 63) / 64 * 64 : capacity;
  r.predicted_bytes = attention_stats(cfg).kv_cache_bytes_per_token * B * rows *
                      (precision == cuda::Precision::BF16 ? 2 : 4) / 4;
  gpu.decode(prompt.data(), B, context, logits);
  gpu.decode(next.data(), B, 1, logits);
  {  // the first sequence (the forward keeps every position's logits)
    std::vector<float> full(static_cast<size_t>((context + 1) * Vp));
    gpu.forward(seqs.data(), nullptr, 1, context + 1);
    gpu.get_logits(full);
    const std::vector<float> first(logits.begin(), logits.begin() + Vp), last(full.end() - Vp, full.end());
    r.max_rel_err = max_rel(first, last);
  }
  const double tol = precision == cuda::Precision::BF16 ? 5e-2 : 1e-4;
  FLASHGPT_CHECK(r.max_rel_err < tol,
                 "bench decode: {} on the GPU disagrees with its forward without a cache (relative error {:.2e})",
                 r.mechanism, r.max_rel_err);
  std::vector<double> times;
  int64_t replays = 0;
  for (int rep = 0; rep < c.repeats + 1; ++rep) {
    if (rep == 1) replays = gpu.decode_graph_replays();
    const bool profiled = c.profile_step && rep == c.repeats;
    if (profiled) cuda::profiler_capture(true);  // the previous step has waited for its logits
    Timer t;
    gpu.decode(next.data(), B, 1, logits);  // waits for the logits
    if (rep > 0) times.push_back(t.seconds());  // the first step warms the GEMMs' plans (and captures)
    if (profiled) cuda::profiler_capture(false);
  }
  r.ms = median(times) * 1e3;
  r.graphs = graphs ? "on" : "off";
  r.split_kv = split_kv;
  r.kernel = kernel;
  r.replays = gpu.decode_graph_replays() - replays;
  return r;
}

void run_bench_decode(const BenchDecodeCli& c) {
  FLASHGPT_CHECK(c.repeats > 0, "--repeats: must be positive");
  FLASHGPT_CHECK(c.batch > 0, "--batch: must be positive");
  const GPTConfig base = c.model.resolve("d12", /*validate=*/false);  // each variant is validated
  std::vector<AttentionKind> kinds;
  for (const std::string& m : c.mechanisms) kinds.push_back(parse_attention_kind(m, "--mechanism"));
  for (int64_t context : c.contexts) FLASHGPT_CHECK(context > 0, "--context: {} must be positive", context);
  FLASHGPT_CHECK(c.device == "cpu" || c.device == "cuda", "--device: unknown device '{}' (expected cpu or cuda)",
                 c.device);
  for (const std::string& g : c.cuda_graphs) {
    FLASHGPT_CHECK(g == "on" || g == "off", "--cuda-graphs: unknown setting '{}' (expected on, off or on,off)", g);
  }
  for (const std::string& g : c.split_kv) {
    (void)cuda::parse_split_kv(g, "--split-kv");
  }
  for (const std::string& k : c.kernels) {
    (void)cuda::parse_flash_decode_kernel(k, "--flash-decode-kernel");
  }
  const bool gpu = c.device == "cuda";
  FLASHGPT_CHECK(gpu || !c.profile_step, "--profile-step: a GPU option (--device cuda)");
  const cuda::Precision precision = cuda::parse_precision(c.precision, "--precision");
  if (gpu) {
    const DeviceReport report = cuda::devices();
    FLASHGPT_CHECK(!report.gpus.empty(), "--device cuda: {}", report.why_none);
    if (!c.json) {
      std::printf("decode step on %s (%s), the whole model, one new token per sequence: batch %lld, %d layers, "
                  "%d heads × %d\n\n",
                  report.gpus.front().name.c_str(), cuda::to_string(precision).c_str(), static_cast<long long>(c.batch),
                  base.n_layer, base.n_head, base.head_dim());
      std::printf("| mechanism | split-KV | kernel | CUDA graphs | context | ms / token | tokens/s | vs launches | "
                  "vs split-KV off | vs tiles | cache MiB | = info's prediction | vs MHA | max rel err |\n"
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    }
  } else if (!c.json) {
    std::printf("decode attention, all %d layers, one new token per sequence: batch %lld, %d heads × %d, %d threads\n\n",
                base.n_layer, static_cast<long long>(c.batch), base.n_head, base.head_dim(), num_threads());
    std::printf("| mechanism | context | ms / token | cache MiB | = info's prediction | GB/s of cache read | vs MHA | max rel err |\n"
                "|---|---|---|---|---|---|---|---|\n");
  }
  for (int64_t context : c.contexts) {
    std::vector<Result> results;
    for (AttentionKind k : kinds) {
      if (!gpu) {
        results.push_back(bench_one(base, k, context, c));
        continue;
      }
      // Multi-head attention at each split-KV setting; latent attention has its own split decode.
      const std::vector<std::string> splits = is_latent(k) ? std::vector<std::string>{"-"} : c.split_kv;
      // Flash decode's kernels where split-KV is on or automatic.
      for (const std::string& sk : splits) {
        const std::vector<std::string> kernels = sk == "-" || sk == "off" ? std::vector<std::string>{"-"} : c.kernels;
        for (const std::string& kn : kernels) {
          for (const std::string& g : c.cuda_graphs) {
            results.push_back(bench_one_cuda(base, k, context, c, precision, g == "on", sk, kn));
          }
        }
      }
    }
    // The yardsticks: the faster multi-head run at the same graphs setting, the same mechanism
    // launched kernel by kernel, and (multi-head) the same with split-KV off.
    const auto mha_ms = [&](const Result& of) {
      double ms = 0;
      for (const Result& r : results) {
        if ((r.mechanism == "standard" || r.mechanism == "flash") && r.graphs == of.graphs) {
          ms = ms > 0 ? std::min(ms, r.ms) : r.ms;
        }
      }
      return ms;
    };
    const auto launched_ms = [&](const Result& of) {
      for (const Result& r : results) {
        if (r.mechanism == of.mechanism && r.split_kv == of.split_kv && r.kernel == of.kernel && r.graphs == "off") {
          return r.ms;
        }
      }
      return 0.0;
    };
    const auto split_off_ms = [&](const Result& of) {
      for (const Result& r : results) {
        if (r.mechanism == of.mechanism && r.graphs == of.graphs && r.split_kv == "off") return r.ms;
      }
      return 0.0;
    };
    // The tiles kernel at the same settings, beside a run of the warps kernel.
    const auto tiles_ms = [&](const Result& of) {
      if (of.kernel != "warps") return 0.0;
      for (const Result& r : results) {
        if (r.mechanism == of.mechanism && r.graphs == of.graphs && r.split_kv == of.split_kv &&
            (r.kernel == "tiles" || r.kernel == "auto")) {
          return r.ms;
        }
      }
      return 0.0;
    };
    for (const Result& r : results) {
      const double speedup = mha_ms(r) > 0 ? mha_ms(r) / r.ms : 0.0;
      const double vs_tiles = tiles_ms(r) > 0 ? tiles_ms(r) / r.ms : 0.0;
      const double vs_launches = launched_ms(r) > 0 ? launched_ms(r) / r.ms : 0.0;
      const double vs_split_off = split_off_ms(r) > 0 ? split_off_ms(r) / r.ms : 0.0;
      const double gbps = static_cast<double>(r.cache_bytes) / (r.ms * 1e-3) / 1e9;
      const double tokens_per_s = static_cast<double>(c.batch) / (r.ms * 1e-3);
      if (c.json) {
        std::printf("%s\n", nlohmann::json{{"mechanism", r.mechanism}, {"context", r.context}, {"batch", c.batch},
                                           {"device", c.device}, {"precision", gpu ? c.precision : "fp32"},
                                           {"tokens_per_s", tokens_per_s},
                                           {"layers", base.n_layer}, {"heads", base.n_head},
                                           {"head_dim", base.head_dim()}, {"ms_per_token", r.ms},
                                           {"cache_bytes", r.cache_bytes}, {"predicted_cache_bytes", r.predicted_bytes},
                                           {"cache_gbps", gbps}, {"speedup_vs_mha", speedup},
                                           {"max_rel_err", r.max_rel_err}, {"threads", num_threads()},
                                           {"cuda_graphs", r.graphs}, {"graph_replays", r.replays},
                                           {"speedup_vs_launches", vs_launches}, {"split_kv", r.split_kv},
                                           {"speedup_vs_split_kv_off", vs_split_off},
                                           {"flash_decode_kernel", r.kernel}, {"speedup_vs_tiles", vs_tiles}}
                                .dump()
                                .c_str());
      } else if (gpu) {
        const std::string graphs = r.graphs == "on" ? fmt::format("on ({} of {} replayed)", r.replays, c.repeats) : "off";
        std::printf("| %s | %s | %s | %s | %lld | %.3f | %.0f | %s | %s | %s | %.2f | %s | %.2fx | %.1e |\n",
                    r.mechanism.c_str(), r.split_kv.c_str(), r.kernel.c_str(), graphs.c_str(),
                    static_cast<long long>(r.context), r.ms, tokens_per_s,
                    vs_launches > 0 ? fmt::format("{:.2f}x", vs_launches).c_str() : "-",
                    vs_split_off > 0 ? fmt::format("{:.2f}x", vs_split_off).c_str() : "-",
                    vs_tiles > 0 ? fmt::format("{:.2f}x", vs_tiles).c_str() : "-",
                    static_cast<double>(r.cache_bytes) / (1 << 20), r.cache_bytes == r.predicted_bytes ? "yes" : "NO",
                    speedup, r.max_rel_err);
      } else {
        std::printf("| %s | %lld | %.3f | %.2f | %s | %.1f | %.2fx | %.1e |\n", r.mechanism.c_str(),
                    static_cast<long long>(r.context), r.ms, static_cast<double>(r.cache_bytes) / (1 << 20),
                    r.cache_bytes == r.predicted_bytes ? "yes" : "NO", gbps, speedup, r.max_rel_err);
      }
      std::fflush(stdout);
    }
  }
}

}  // namespace

void register_bench_decode(CLI::App& bench) {
  auto c = std::make_shared<BenchDecodeCli>();
  CLI::App* sub = bench.add_subcommand(
      "decode", "Decoding attention per mechanism: one token against a long cache (absorbed FlashMLA vs MHA)");
  add_model_flags(*sub, c->model);
  sub->add_option("--mechanism", c->mechanisms, "Mechanisms: standard, flash, mla, flash_mla")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--context", c->contexts, "Cached tokens per sequence")->delimiter(',')->capture_default_str();
  sub->add_option("--batch", c->batch, "Sequences decoded together")->capture_default_str();
  sub->add_option("--repeats", c->repeats, "Timed repeats (median reported)")->capture_default_str();
  sub->add_option("--device", c->device,
                  "cpu: the attention of every layer; cuda: the whole model's decode step on the GPU")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  sub->add_option("--precision", c->precision, "GPU arithmetic: bf16 or fp32")
      ->check(CLI::IsMember({"bf16", "fp32"}))
      ->capture_default_str();
  sub->add_option("--cuda-graphs", c->cuda_graphs,
                  "The GPU: time steps replayed as one CUDA graph (on), launched kernel by kernel (off), or both "
                  "(on,off), side by side")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--split-kv", c->split_kv,
                  "The GPU, multi-head attention: flash decode, split along the cache, where it is expected to win "
                  "(auto) or at every step (on), the flash kernels (off), or several side by side (off,auto,on)")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--flash-decode-kernel", c->kernels,
                  "The GPU, multi-head attention with split-KV auto or on: flash decode's split kernel, tiles (auto) "
                  "or warps (where it runs the step), or both side by side (tiles,warps)")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_flag("--profile-step", c->profile_step,
                "The GPU: capture each case's last timed step for a profiler started with capture off "
                "(ncu --profile-from-start off; scripts/gpu-check.sh's profile part); best with one case");
  sub->add_flag("--json", c->json, "One JSON object per case");
  sub->callback([c] { run_bench_decode(*c); });
}

}  // namespace flashgpt::cli
