// flashgpt bench attention: the attention mechanisms side by side over batch, sequence and width,
// each checked against a reference at the same shapes before it is timed (on the CPU the standard
// kernel, on the GPU the fp32 flash kernel). standard and
// flash run multi-head attention's shapes (Dqk = Dv = head_dim); mla and flash_mla the training
// shapes of latent attention (per head Dqk = head_dim + rope_dim, Dv = head_dim) with the standard
// and the flash kernel.
#include <sys/resource.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <sstream>
#include <tuple>

#include "commands.h"
#include "flashgpt/attention/attention.h"
#include "flashgpt/core/device.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/io.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/core/threads.h"
#include "flashgpt/core/timer.h"
#include "flashgpt/cuda/attention_bench_cuda.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/warpgroup_cuda.h"
#include "flashgpt/train/trainer.h"
#include "svg_chart.h"

namespace flashgpt::cli {

namespace {

struct BenchAttentionCli {
  std::vector<std::string> mechanisms = {"standard", "flash"};
  int64_t rope_dim = -1;  // latent mechanisms' rope width; -1: head_dim / 2
  std::vector<int64_t> batches = {1, 4};
  std::vector<int64_t> seqs = {512, 1024, 2048};
  std::vector<int64_t> hiddens = {768};
  int64_t head_dim = 64;
  std::string causal = "yes";
  int repeats = 3;
  bool json = false, csv = false, no_memory = false, probe_memory = false;
  std::string plot;  // SVG file: time and memory against sequence length per mechanism
  AttentionTiling tiles;
  // On the GPU (--device cuda): the tensor-core kernels' element type and tiles, and the batch as
  // tokens / seq when --tokens is given (flash-attention's benchmark shapes).
  std::string device = "cpu", precision = "bf16";
  std::vector<std::string> gpu_tiles = {"auto"};
  std::vector<std::string> backends = {"ours"};  // GPU: ours (the tiles above) and/or cudnn
  bool deterministic = false;  // GPU: the flash backward's dQ without atomics
  int64_t tokens = 0;
  bool mechanisms_given = false;
};

struct Case {
  std::string mechanism;
  int64_t batch, seq, hidden, heads, head_dim;
  bool causal;
  double fwd_ms = 0, fwd_bwd_ms = 0, gflops_fwd = 0, gflops = 0, max_rel_err = 0;
  int64_t peak_bytes = -1;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int64_t max_rss_bytes() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<int64_t>(u.ru_maxrss) * 1024;
}

struct Buffers {
  std::vector<float> q, k, v, dout, o, lse, dq, dk, dv;
};

Buffers make_buffers(const AttentionDims& d, uint64_t seed) {
  Rng rng(seed);
  auto randn = [&](int64_t n) {
    std::vector<float> x(static_cast<size_t>(n));
    for (float& e : x) e = static_cast<float>(rng.normal());
    return x;
  };
  Buffers b;
  b.q = randn(d.B * d.Tq * d.Hq * d.Dqk);
  b.k = randn(d.B * d.Tk * d.Hkv * d.Dqk);
  b.v = randn(d.B * d.Tk * d.Hkv * d.Dv);
  b.dout = randn(d.B * d.Tq * d.Hq * d.Dv);
  b.o.assign(static_cast<size_t>(d.B * d.Tq * d.Hq * d.Dv), 0.0f);
  b.lse.assign(static_cast<size_t>(d.B * d.Hq * d.Tq), 0.0f);
  b.dq.assign(b.q.size(), 0.0f);
  b.dk.assign(b.k.size(), 0.0f);
  b.dv.assign(b.v.size(), 0.0f);
  return b;
}

void forward(AttentionKernel kern, const AttentionDims& d, const AttentionMask& m, const AttentionTiling& t,
             Buffers& b) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(d.Dqk));
  attention_forward(kern, d, m, scale, b.q.data(), b.k.data(), b.v.data(), b.o.data(), b.lse.data(), t);
}

void backward(AttentionKernel kern, const AttentionDims& d, const AttentionMask& m, const AttentionTiling& t,
              Buffers& b) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(d.Dqk));
  attention_backward(kern, d, m, scale, b.q.data(), b.k.data(), b.v.data(), b.o.data(), b.lse.data(),
                     b.dout.data(), b.dq.data(), b.dk.data(), b.dv.data(), t);
}

// Extra memory of one forward + backward beyond the inputs and outputs: the growth of peak resident
// memory in a fresh process (this program again, with --probe-memory) that has already touched its
// buffers. A fresh process, not fork(): OpenMP's thread pool does not survive a fork.
int64_t probe_peak_bytes(AttentionKernel kern, const AttentionDims& d, const AttentionMask& m,
                         const AttentionTiling& t) {
  Buffers b = make_buffers(d, 1);
  const int64_t before = max_rss_bytes();
  forward(kern, d, m, t, b);
  backward(kern, d, m, t, b);
  return std::max<int64_t>(0, max_rss_bytes() - before);
}

int64_t measure_peak_bytes(const std::string& mech, const AttentionDims& d, bool causal, const AttentionTiling& t) {
  const std::string cmd = fmt::format(
      "/proc/{}/exe --threads {} bench attention --probe-memory --mechanism {} --batch {} --seq {} --hidden {} "
      "--head-dim {} --rope-dim {} --causal {} --flash-block-q {} --flash-block-kv {}",
      ::getpid(), num_threads(), mech, d.B, d.Tq, d.Hq * d.Dv, d.Dv, d.Dqk - d.Dv, causal ? "yes" : "no", t.block_q,
      t.block_kv);
  std::FILE* pipe = ::popen(cmd.c_str(), "r");
  if (!pipe) return -1;
  long long bytes = -1;
  if (std::fscanf(pipe, "%lld", &bytes) != 1) bytes = -1;
  ::pclose(pipe);
  return bytes;
}

struct Mechanism {
  AttentionKernel kernel;
  bool latent;
};

Mechanism parse_mechanism(const std::string& s) {
  const AttentionKind k = parse_attention_kind(s, "--mechanism");
  return {uses_flash_kernel(k) ? AttentionKernel::Flash : AttentionKernel::Standard, is_latent(k)};
}

// The attention shapes of a mechanism at B, T, H heads of head_dim.
AttentionDims mechanism_dims(const Mechanism& mech, int64_t B, int64_t T, int64_t H, int64_t head_dim,
                             int64_t rope_dim) {
  const int64_t dqk = mech.latent ? head_dim + rope_dim : head_dim;
  return AttentionDims{B, H, H, T, T, dqk, head_dim, 0};
}

// Forward+backward time and extra peak memory against sequence length, one line per mechanism, for
// the largest batch and width measured (causal when measured both ways).
void write_plot(const std::string& path, const std::vector<Case>& cases) {
  const Case* pick = &cases.front();
  for (const Case& r : cases) {
    if (std::tie(r.batch, r.hidden, r.causal) > std::tie(pick->batch, pick->hidden, pick->causal)) pick = &r;
  }
  std::vector<std::string> mechs;
  std::vector<Series> time, memory;
  double x_max = 1;
  for (const Case& r : cases) {
    if (r.batch != pick->batch || r.hidden != pick->hidden || r.causal != pick->causal) continue;
    auto it = std::find(mechs.begin(), mechs.end(), r.mechanism);
    if (it == mechs.end()) {
      mechs.push_back(r.mechanism);
      time.emplace_back();
      memory.emplace_back();
      it = mechs.end() - 1;
    }
    const size_t i = static_cast<size_t>(it - mechs.begin());
    time[i].x.push_back(static_cast<double>(r.seq));
    time[i].y.push_back(r.fwd_bwd_ms);
    if (r.peak_bytes >= 0) {
      memory[i].x.push_back(static_cast<double>(r.seq));
      memory[i].y.push_back(static_cast<double>(r.peak_bytes) / (1 << 20));
    }
    x_max = std::max(x_max, static_cast<double>(r.seq));
  }
  const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};
  std::vector<std::pair<const Series*, std::string>> t_series, m_series;
  for (size_t i = 0; i < mechs.size(); ++i) {
    const std::string label = mechs[i] + "|" + colors[i % 6];
    t_series.push_back({&time[i], label});
    m_series.push_back({&memory[i], label});
  }
  std::ostringstream svg;
  svg << R"(<svg xmlns="http://www.w3.org/2000/svg" width="900" height="660" font-family="sans-serif">)" << "\n"
      << R"(<rect width="100%" height="100%" fill="white"/>)" << "\n";
  const std::string shape = fmt::format("batch {}, hidden {}, {} heads{}", pick->batch, pick->hidden, pick->heads,
                                        pick->causal ? ", causal" : "");
  draw_panel(svg, {70, 40, 800, 300}, "forward+backward ms (" + shape + ")", t_series, x_max);
  draw_panel(svg, {70, 400, 800, 220}, "extra peak memory, MiB", m_series, x_max);
  svg << R"(<text x="470" y="652" font-size="12" text-anchor="middle">sequence length</text>)" << "\n</svg>\n";
  write_text_file_atomic(path, svg.str());
}

// The tensor-core kernels on the GPU: flash (Dqk = Dv = head dim) and flash_mla (Dqk = head dim +
// rope dim), each case checked against the fp32 kernel before it is timed.
void run_bench_attention_cuda(const BenchAttentionCli& c, int64_t rope_dim) {
  std::vector<std::string> mechs = c.mechanisms_given ? c.mechanisms : std::vector<std::string>{"flash"};
  for (const std::string& mech : mechs) {
    FLASHGPT_CHECK(uses_flash_kernel(parse_attention_kind(mech, "--mechanism")) || c.precision == "bf16",
                   "--precision {}: the GPU's standard kernel ('{}') runs bf16", c.precision, mech);
  }
  FLASHGPT_CHECK(c.tiles.block_q == 0 && c.tiles.block_kv == 0,
                 "--flash-block-q/--flash-block-kv: CPU tiles; the GPU takes --tiles");
  const DeviceReport dev = cuda::devices();
  FLASHGPT_CHECK(cuda::gpu_available(), "--device cuda: {}", dev.why_none);
  if (!c.json) {
    std::printf("%s: tensor-core flash kernels (flash, flash_mla), standard kernel on cuBLASLt (standard, mla)\n\n",
                dev.gpus.empty() ? "GPU" : dev.gpus.front().name.c_str());
  }
  // Hopper's wgmma forward where this GPU and build have it; elsewhere its cases are left out, not
  // run under its name with the automatic tiles.
  std::vector<std::string> gpu_tiles;
  for (const std::string& t : c.gpu_tiles) {
    if (cuda::flash_tiles_use_wgmma(*cuda::flash_tiles_named(t)) && !cuda::warpgroup_mma_supported()) {
      std::fprintf(stderr,
                   "--tiles %s: this GPU or build has no wgmma (compute capability 9.0 and sm_90a code): "
                   "its cases are left out\n",
                   t.c_str());
      continue;
    }
    gpu_tiles.push_back(t);
  }
  // The variants each case runs back to back: our kernels with each tile shape, then cuDNN's.
  struct Variant {
    cuda::AttentionBackend backend;
    std::string tiles;
  };
  std::vector<Variant> variants;
  for (const std::string& b : c.backends) {
    if (b == "ours") {
      for (const std::string& t : gpu_tiles) variants.push_back({cuda::AttentionBackend::Ours, t});
      continue;
    }
    std::string why;
    if (!cuda::cudnn_attention_available(&why)) {
      std::fprintf(stderr, "--backend cudnn: %s: its cases are left out\n", why.c_str());
      continue;
    }
    if (!c.json) std::printf("cuDNN backend: %s\n\n", why.c_str());
    variants.push_back({cuda::AttentionBackend::Cudnn, "auto"});
  }
  cuda::FlashBenchCase bc;
  bc.type = c.precision == "fp16" ? cuda::TensorCoreType::fp16 : cuda::TensorCoreType::bf16;
  bc.repeats = c.repeats;
  bc.deterministic = c.deterministic;
  std::vector<bool> causal_modes;
  if (c.causal == "no" || c.causal == "both") causal_modes.push_back(false);
  if (c.causal == "yes" || c.causal == "both") causal_modes.push_back(true);
  if (!c.json) {
    std::printf("| mechanism | precision | batch | seq | heads | Dqk/Dv | causal | fwd ms | fwd+bwd ms | fwd TFLOP/s | "
                "fwd+bwd TFLOP/s | extra MiB | max rel err | occupancy fwd/bwd | achieved fwd/bwd |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  }
  for (int64_t hidden : c.hiddens) {
    FLASHGPT_CHECK(hidden % c.head_dim == 0, "--hidden: {} is not a multiple of --head-dim {}", hidden, c.head_dim);
    const int64_t H = hidden / c.head_dim;
    for (int64_t T : c.seqs) {
      std::vector<int64_t> batches = c.batches;
      if (c.tokens > 0) batches = {std::max<int64_t>(1, c.tokens / T)};
      for (int64_t B : batches) {
        for (bool causal : causal_modes) {
          for (const std::string& mech : mechs) {
            for (const Variant& variant : variants) {  // several: the same case back to back
              const std::string& tiles = variant.tiles;
              const bool cudnn = variant.backend == cuda::AttentionBackend::Cudnn;
              const Mechanism mk = parse_mechanism(mech);
              if (cudnn && mk.kernel != AttentionKernel::Flash) continue;  // cuDNN stands in for the flash kernels
              bc.dims = mechanism_dims(mk, B, T, H, c.head_dim, rope_dim);
              bc.kernel = mk.kernel;
              bc.causal = causal;
              bc.tiles = *cuda::flash_tiles_named(tiles);  // --tiles took only its names
              bc.backend = variant.backend;
              const cuda::FlashBenchResult r = cuda::bench_flash_attention(bc);
              std::string label = c.deterministic ? mech + " (deterministic)" : mech;
              if (cudnn) {
                label += " [cudnn]";
              } else if (tiles != "auto") {
                label += " [" + tiles + " tiles]";
              }
              if (c.json) {
                std::printf("%s\n", nlohmann::json{{"program", "flashgpt"}, {"mechanism", mech},
                                                   {"precision", c.precision}, {"batch", B}, {"seq", T}, {"heads", H},
                                                   {"head_dim", c.head_dim}, {"dqk", bc.dims.Dqk}, {"dv", bc.dims.Dv},
                                                   {"causal", causal}, {"deterministic", c.deterministic},
                                                   {"tiles", tiles}, {"backend", cudnn ? "cudnn" : "ours"},
                                                   {"fwd_ms", r.fwd_ms},
                                                   {"fwd_bwd_ms", r.fwd_bwd_ms}, {"fwd_tflops", r.fwd_tflops},
                                                   {"fwd_bwd_tflops", r.fwd_bwd_tflops},
                                                   {"extra_bytes", r.extra_bytes}, {"max_rel_err", r.max_rel_err},
                                                   {"fwd_occupancy", r.occupancy.forward},
                                                   {"bwd_occupancy", r.occupancy.backward},
                                                   {"fwd_achieved_occupancy", r.achieved_forward.fraction},
                                                   {"bwd_achieved_occupancy", r.achieved_backward.fraction},
                                                   {"fwd_achieved_blocks_per_sm", r.achieved_forward.blocks},
                                                   {"bwd_achieved_blocks_per_sm", r.achieved_backward.blocks}}
                                        .dump()
                                        .c_str());
              } else {
                const std::string achieved =
                    r.achieved_forward.ctas > 0 ? fmt::format("{:.0f}%/{:.0f}%", 100 * r.achieved_forward.fraction,
                                                              100 * r.achieved_backward.fraction)
                                                : "–";
                std::printf("| %s | %s | %lld | %lld | %lld | %lld/%lld | %s | %.3f | %.3f | %.1f | %.1f | %.1f | %.1e | "
                            "%.0f%%/%.0f%% | %s |\n",
                            label.c_str(), c.precision.c_str(),
                            static_cast<long long>(B), static_cast<long long>(T),
                            static_cast<long long>(H), static_cast<long long>(bc.dims.Dqk),
                            static_cast<long long>(bc.dims.Dv), causal ? "yes" : "no", r.fwd_ms, r.fwd_bwd_ms,
                            r.fwd_tflops, r.fwd_bwd_tflops, static_cast<double>(r.extra_bytes) / (1 << 20),
                            r.max_rel_err, 100 * r.occupancy.forward, 100 * r.occupancy.backward, achieved.c_str());
              }
              std::fflush(stdout);
            }
          }
        }
      }
    }
  }
}

void run_bench_attention(const BenchAttentionCli& c) {
  FLASHGPT_CHECK(c.repeats > 0, "--repeats: must be positive");
  FLASHGPT_CHECK(c.head_dim > 0, "--head-dim: must be positive");
  const int64_t rope_dim = c.rope_dim >= 0 ? c.rope_dim : c.head_dim / 2;
  for (const std::string& m : c.mechanisms) parse_mechanism(m);  // names a bad one before any work
  if (c.device == "cuda") return run_bench_attention_cuda(c, rope_dim);
  FLASHGPT_CHECK(!c.deterministic, "--deterministic: a GPU option (--device cuda); the CPU's backward has no atomics");
  FLASHGPT_CHECK(c.tokens == 0, "--tokens: only with --device cuda (the CPU takes --batch)");
  FLASHGPT_CHECK(c.backends == std::vector<std::string>{"ours"}, "--backend: a GPU option (--device cuda)");
  if (c.probe_memory) {  // internal: one case, print the extra peak bytes
    const Mechanism mech = parse_mechanism(c.mechanisms.at(0));
    const AttentionDims d = mechanism_dims(mech, c.batches.at(0), c.seqs.at(0), c.hiddens.at(0) / c.head_dim,
                                           c.head_dim, rope_dim);
    std::printf("%lld\n", static_cast<long long>(
                              probe_peak_bytes(mech.kernel, d, AttentionMask{c.causal == "yes", 0}, c.tiles)));
    return;
  }
  std::vector<bool> causal_modes;
  if (c.causal == "yes" || c.causal == "both") causal_modes.push_back(true);
  if (c.causal == "no" || c.causal == "both") causal_modes.push_back(false);
  // The machine's own sgemm rate, measured in this run: the ceiling the kernels are compared with.
  const double gemm_gflops = measure_sgemm_gflops(1024, 7);
  std::vector<Case> cases;
  if (!c.json && !c.csv) {
    std::printf("sgemm rate on this machine now: %.1f GFLOP/s (1024³, %d threads)\n\n", gemm_gflops, num_threads());
    std::printf("| mechanism | batch | seq | hidden | heads | causal | fwd ms | fwd+bwd ms | fwd GFLOP/s | fwd+bwd GFLOP/s | "
                "extra peak MiB | max rel err |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  } else if (c.csv) {
    std::printf("mechanism,batch,seq,hidden,heads,causal,fwd_ms,fwd_bwd_ms,gflops_fwd,gflops,peak_bytes,max_rel_err\n");
  }
  for (int64_t hidden : c.hiddens) {
    FLASHGPT_CHECK(hidden % c.head_dim == 0, "--hidden: {} is not a multiple of --head-dim {}", hidden, c.head_dim);
    const int64_t H = hidden / c.head_dim;
    for (int64_t B : c.batches) {
      for (int64_t T : c.seqs) {
        for (bool causal : causal_modes) {
          const AttentionMask m{causal, 0};
          // The standard kernel's output at the same shapes is the yardstick for every mechanism's error.
          std::vector<float> ref_o[2];
          double ref_scale[2] = {0, 0};
          for (const std::string& mech : c.mechanisms) {
            const Mechanism mk = parse_mechanism(mech);
            const AttentionKernel kern = mk.kernel;
            const AttentionDims d = mechanism_dims(mk, B, T, H, c.head_dim, rope_dim);
            if (ref_o[mk.latent].empty()) {
              Buffers ref = make_buffers(d, 1);
              forward(AttentionKernel::Standard, d, m, c.tiles, ref);
              ref_o[mk.latent] = ref.o;
              for (float x : ref.o) ref_scale[mk.latent] = std::max(ref_scale[mk.latent], static_cast<double>(std::abs(x)));
            }
            const std::vector<float>& ref_out = ref_o[mk.latent];
            Case r{mech, B, T, hidden, H, c.head_dim, causal};
            Buffers b = make_buffers(d, 1);
            forward(kern, d, m, c.tiles, b);  // check before timing (and warm up)
            for (size_t i = 0; i < b.o.size(); ++i)
              r.max_rel_err =
                  std::max(r.max_rel_err, std::abs(static_cast<double>(b.o[i]) - ref_out[i]) / ref_scale[mk.latent]);
            FLASHGPT_CHECK(r.max_rel_err < 1e-4, "bench: {} disagrees with the standard kernel (relative error {:.2e})",
                           mech, r.max_rel_err);
            std::vector<double> fwd, fwd_bwd;
            for (int rep = 0; rep < c.repeats; ++rep) {
              Timer t;
              forward(kern, d, m, c.tiles, b);
              const double tf = t.seconds();
              backward(kern, d, m, c.tiles, b);
              fwd.push_back(tf);
              fwd_bwd.push_back(t.seconds());
            }
            r.fwd_ms = median(fwd) * 1e3;
            r.fwd_bwd_ms = median(fwd_bwd) * 1e3;
            // flash-attention's convention: forward 2·B·H·T²·(Dqk + Dv) — 4·B·H·T²·D when they are
            // equal — halved when causal; the backward 2.5× the forward.
            const double flops_fwd =
                2.0 * B * H * T * static_cast<double>(T) * static_cast<double>(d.Dqk + d.Dv) * (causal ? 0.5 : 1.0);
            r.gflops_fwd = flops_fwd / (r.fwd_ms * 1e-3) / 1e9;
            r.gflops = 3.5 * flops_fwd / (r.fwd_bwd_ms * 1e-3) / 1e9;
            if (!c.no_memory) r.peak_bytes = measure_peak_bytes(mech, d, causal, c.tiles);
            if (c.json) {
              std::printf("%s\n", nlohmann::json{{"mechanism", r.mechanism}, {"batch", B}, {"seq", T},
                                                 {"hidden", hidden}, {"heads", H}, {"head_dim", c.head_dim},
                                                 {"dqk", d.Dqk}, {"dv", d.Dv},
                                                 {"causal", causal}, {"deterministic", c.deterministic},
                                                 {"fwd_ms", r.fwd_ms},
                                                 {"fwd_bwd_ms", r.fwd_bwd_ms}, {"gflops_fwd", r.gflops_fwd},
                                                 {"gflops", r.gflops}, {"peak_bytes", r.peak_bytes},
                                                 {"max_rel_err", r.max_rel_err}, {"threads", num_threads()},
                                                 {"gemm_gflops", gemm_gflops},
                                                 {"fwd_vs_gemm", r.gflops_fwd / gemm_gflops}}
                                      .dump()
                                      .c_str());
            } else if (c.csv) {
              std::printf("%s,%lld,%lld,%lld,%lld,%d,%.3f,%.3f,%.2f,%.2f,%lld,%.3e\n", mech.c_str(),
                          static_cast<long long>(B), static_cast<long long>(T), static_cast<long long>(hidden),
                          static_cast<long long>(H), causal ? 1 : 0, r.fwd_ms, r.fwd_bwd_ms, r.gflops_fwd, r.gflops,
                          static_cast<long long>(r.peak_bytes), r.max_rel_err);
            } else {
              const std::string peak = r.peak_bytes >= 0
                                           ? fmt::format("{:.1f}", static_cast<double>(r.peak_bytes) / (1 << 20))
                                           : std::string("—");  // not measured (--no-memory) or the probe failed
              std::printf("| %s | %lld | %lld | %lld | %lld | %s | %.2f | %.2f | %.1f | %.1f | %s | %.1e |\n",
                          mech.c_str(), static_cast<long long>(B), static_cast<long long>(T),
                          static_cast<long long>(hidden), static_cast<long long>(H), causal ? "yes" : "no", r.fwd_ms,
                          r.fwd_bwd_ms, r.gflops_fwd, r.gflops, peak.c_str(), r.max_rel_err);
            }
            std::fflush(stdout);
            cases.push_back(r);
          }
        }
      }
    }
  }
  if (!c.plot.empty() && !cases.empty()) {
    write_plot(c.plot, cases);
    if (!c.json && !c.csv) std::printf("\nwrote %s\n", c.plot.c_str());
  }
}

}  // namespace

void register_bench_attention(CLI::App& bench) {
  auto c = std::make_shared<BenchAttentionCli>();
  CLI::App* sub = bench.add_subcommand("attention", "Attention kernels: time, GFLOP/s, extra memory, error");
  sub->add_option("--mechanism", c->mechanisms, "Mechanisms to compare: standard, flash, mla, flash_mla")
      ->delimiter(',')
      ->capture_default_str()
      ->each([c](const std::string&) { c->mechanisms_given = true; });
  sub->add_option("--device", c->device, "cpu, or cuda: on the GPU (flash, flash_mla: tensor-core kernels; standard, mla: the standard kernel)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  sub->add_option("--precision", c->precision, "GPU element type: bf16 or fp16")
      ->check(CLI::IsMember({"bf16", "fp16"}))
      ->capture_default_str();
  sub->add_option("--tiles", c->gpu_tiles,
                  "GPU tile shapes: auto, wide (sm_80/sm_90), narrow (sm_86/sm_89), tall (the forward's 32 query "
                  "rows a warp) or short (the backward's 32-query tiles, three blocks an SM), those two for value "
                  "head dims up to 64, or wgmma (Hopper's warpgroup MMA, sm_90a: the forward at every head dim, the "
                  "backward at 64/64, 96/64 and 128/128), wgmma-tma (the same with the forward's tiles copied by the "
                  "TMA), wgmma-ws (forward and backward warp-specialized: a producer warpgroup "
                  "filling the stages, and in the forward two computing warpgroups in turns) or wgmma-ws-no-pingpong "
                  "(the same without the turns); several: each case "
                  "with each, back to back")
      ->delimiter(',')
      ->check(CLI::IsMember(cuda::flash_tiles_names()))
      ->capture_default_str();
  sub->add_option("--backend", c->backends,
                  "GPU attention for the flash mechanisms: ours (our kernels, with each of --tiles) or cudnn (cuDNN's "
                  "fused attention, where this build and machine have it); several: each case with each, back to back")
      ->delimiter(',')
      ->check(CLI::IsMember({"ours", "cudnn"}))
      ->capture_default_str();
  sub->add_flag("--deterministic", c->deterministic,
                "GPU: time the deterministic flash backward (dQ by a second, query-major kernel, no atomics)");
  sub->add_option("--tokens", c->tokens, "GPU: batch = tokens / seq for each length (overrides --batch)");
  sub->add_option("--rope-dim", c->rope_dim, "Rope width of the latent mechanisms' heads (default: head dim / 2)");
  sub->add_option("--batch", c->batches, "Batch sizes")->delimiter(',')->capture_default_str();
  sub->add_option("--seq", c->seqs, "Sequence lengths")->delimiter(',')->capture_default_str();
  sub->add_option("--hidden", c->hiddens, "Model widths (heads = hidden / head dim)")->delimiter(',')->capture_default_str();
  sub->add_option("--head-dim", c->head_dim, "Head dimension")->capture_default_str();
  sub->add_option("--causal", c->causal, "yes, no or both")->check(CLI::IsMember({"yes", "no", "both"}))->capture_default_str();
  sub->add_option("--repeats", c->repeats, "Timed repeats (median reported)")->capture_default_str();
  sub->add_option("--flash-block-q", c->tiles.block_q, "Flash query tile (0: automatic)");
  sub->add_option("--flash-block-kv", c->tiles.block_kv, "Flash key/value tile (0: automatic)");
  sub->add_flag("--no-memory", c->no_memory, "Skip the peak-memory measurement (it forks a process per case)");
  sub->add_flag("--probe-memory", c->probe_memory)->group("");  // internal, see measure_peak_bytes
  sub->add_flag("--json", c->json, "One JSON object per case");
  sub->add_flag("--csv", c->csv, "CSV instead of a markdown table");
  sub->add_option("--plot", c->plot, "Also write an SVG chart of time and memory against sequence length");
  sub->callback([c] { run_bench_attention(*c); });
}

}  // namespace flashgpt::cli
