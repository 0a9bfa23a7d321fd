// The tensor-core flash kernels' benchmark (attention_bench_cuda.h). Host code over the kernels,
// built for the GPU and for the emulator (where its test runs a tiny case).
#include "flashgpt/cuda/attention_bench_cuda.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cuda/bench_timing.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/half_precision.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/core/timer.h"
#include "flashgpt/cuda/device_memory.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

using bench::median;

namespace {

uint16_t to_bits(TensorCoreType t, float x) {
  return t == TensorCoreType::bf16 ? float_to_bf16_bits(x) : float_to_fp16_bits(x);
}
float from_bits(TensorCoreType t, uint16_t h) {
  return t == TensorCoreType::bf16 ? bf16_bits_to_float(h) : fp16_bits_to_float(h);
}

// One rounded random tensor: its bits on the device for the tensor-core kernels, its values in
// fp32 on the device for the reference.
struct Input {
  DeviceBuffer bits, f32;
  Input(TensorCoreType t, int64_t n, Rng& rng) : bits(static_cast<size_t>(n) * 2), f32(static_cast<size_t>(n) * 4) {
    std::vector<uint16_t> b(static_cast<size_t>(n));
    std::vector<float> f(b.size());
    for (size_t i = 0; i < b.size(); ++i) {
      b[i] = to_bits(t, static_cast<float>(rng.normal()));
      f[i] = from_bits(t, b[i]);
    }
    bits.upload(b.data(), b.size() * 2);
    f32.upload(f.data(), f.size() * 4);
  }
};

}  // namespace

FlashBenchResult bench_flash_attention(const FlashBenchCase& c) {
  const AttentionDims& d = c.dims;
  FLASHGPT_CHECK(c.repeats > 0, "bench attention: repeats must be positive");
  FLASHGPT_CHECK(d.Tq == d.Tk, "bench attention: self-attention cases only (Tq = Tk)");
  const char* type = c.type == TensorCoreType::bf16 ? "bf16" : "fp16";
  const bool standard = c.kernel == AttentionKernel::Standard, cudnn = c.backend == AttentionBackend::Cudnn;
  const std::string what = fmt::format("{} {} B{} H{} T{} D{}/{}{}", standard ? "standard" : cudnn ? "cuDNN" : "flash",
                                       type, d.B, d.Hq, d.Tq, d.Dqk, d.Dv, c.causal ? " causal" : "");
  FLASHGPT_CHECK(!(standard && cudnn), "bench attention: the cuDNN backend runs the flash mechanisms, not standard");
  if (cudnn) {
    std::string why;
    FLASHGPT_CHECK(cudnn_attention_available(&why), "bench attention: {}", why);
  } else if (standard) {
    FLASHGPT_CHECK(c.type == TensorCoreType::bf16, "bench attention: the GPU's standard kernel runs bf16 (or fp32), not fp16");
  } else {
    FLASHGPT_CHECK(flash_tc_supports(d.Dqk, d.Dv),
                   "bench attention: the tensor-core kernels have no instantiation for head dims {}/{}", d.Dqk, d.Dv);
  }
  Rng rng(c.seed);
  const int64_t nq = d.B * d.Tq * d.Hq * d.Dqk, nk = d.B * d.Tk * d.Hkv * d.Dqk, nv = d.B * d.Tk * d.Hkv * d.Dv;
  const int64_t no = d.B * d.Tq * d.Hq * d.Dv, nl = d.B * d.Hq * d.Tq;
  Input q(c.type, nq, rng), k(c.type, nk, rng), v(c.type, nv, rng), dout(c.type, no, rng);
  DeviceBuffer o(static_cast<size_t>(no) * 2), lse(static_cast<size_t>(nl) * 4), dq(static_cast<size_t>(nq) * 2),
      dk(static_cast<size_t>(nk) * 2), dv(static_cast<size_t>(nv) * 2);
  const AttentionMask m{c.causal, 0};
  const float scale = 1.0f / std::sqrt(static_cast<float>(d.Dqk));
  // cuDNN keeps its own workspace; its size is counted below as the extra memory.
  DeviceBuffer workspace(standard ? standard_workspace_bytes<bf16>(d)
                         : cudnn  ? 0
                                  : flash_backward_workspace_bytes(d, c.deterministic));

  auto forward = [&] {
    if (cudnn) {
      cudnn_attention_forward(c.type, d, m, scale, q.bits.as<uint16_t>(), k.bits.as<uint16_t>(),
                              v.bits.as<uint16_t>(), o.as<uint16_t>(), lse.as<float>());
    } else if (standard) {
      standard_forward_cuda<bf16>(d, m, scale, q.bits.as<bf16>(), k.bits.as<bf16>(), v.bits.as<bf16>(), o.as<bf16>(),
                                  lse.as<float>(), workspace.get());
    } else {
      flash_forward_tc(c.type, d, m, scale, q.bits.as<uint16_t>(), k.bits.as<uint16_t>(), v.bits.as<uint16_t>(),
                       o.as<uint16_t>(), lse.as<float>(), c.tiles);
    }
  };
  auto backward = [&] {
    if (cudnn) {
      cudnn_attention_backward(c.type, d, m, scale, q.bits.as<uint16_t>(), k.bits.as<uint16_t>(),
                               v.bits.as<uint16_t>(), o.as<uint16_t>(), lse.as<float>(), dout.bits.as<uint16_t>(),
                               dq.as<uint16_t>(), dk.as<uint16_t>(), dv.as<uint16_t>(), c.deterministic);
    } else if (standard) {
      standard_backward_cuda<bf16>(d, m, scale, q.bits.as<bf16>(), k.bits.as<bf16>(), v.bits.as<bf16>(),
                                   dout.bits.as<bf16>(), dq.as<bf16>(), dk.as<bf16>(), dv.as<bf16>(), workspace.get());
    } else {
      flash_backward_tc(c.type, d, m, scale, q.bits.as<uint16_t>(), k.bits.as<uint16_t>(), v.bits.as<uint16_t>(),
                        o.as<uint16_t>(), lse.as<float>(), dout.bits.as<uint16_t>(), dq.as<uint16_t>(),
                        dk.as<uint16_t>(), dv.as<uint16_t>(), workspace.get(), c.tiles, c.deterministic);
    }
  };

  // Checked first: the fp32 kernel on the same rounded values is the reference.
  FlashBenchResult r;
  {
    DeviceBuffer o_ref(static_cast<size_t>(no) * 4), lse_ref(static_cast<size_t>(nl) * 4);
    flash_forward_fp32(d, m, scale, q.f32.as<float>(), k.f32.as<float>(), v.f32.as<float>(), o_ref.as<float>(),
                       lse_ref.as<float>());
    o.fill_bytes(0xFF);
    forward();
    std::vector<float> ref(static_cast<size_t>(no));
    std::vector<uint16_t> got(ref.size());
    o_ref.download(ref.data(), ref.size() * 4);
    o.download(got.data(), got.size() * 2);
    double worst = 0, top = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      top = std::max(top, static_cast<double>(std::abs(ref[i])));
      const double e = std::abs(static_cast<double>(from_bits(c.type, got[i])) - ref[i]);
      worst = std::isfinite(e) ? std::max(worst, e) : INFINITY;
    }
    const double rel = worst / std::max(top, 1e-30), bound = c.type == TensorCoreType::bf16 ? 2e-2 : 4e-3;
    FLASHGPT_CHECK(rel <= bound, "bench attention {}: the forward disagrees with the fp32 flash kernel "
                   "(relative error {:.2e} > {:.0e})", what, rel, bound);
    r.max_rel_err = rel;
  }
  r.extra_bytes = static_cast<int64_t>(lse.bytes() + workspace.bytes());
  if (cudnn) {
    r.extra_bytes += static_cast<int64_t>(std::max(cudnn_attention_workspace_bytes(c.type, d, m, scale, false),
                                                   cudnn_attention_workspace_bytes(c.type, d, m, scale, true)));
  } else if (!standard) {
    r.occupancy = flash_tc_occupancy(c.type, d, c.tiles);
  }

  for (int w = 0; w < 2; ++w) {
    forward();
    backward();
  }
  synchronize();
  std::vector<double> fwd, both;
  for (int rep = 0; rep < c.repeats; ++rep) {
    Timer t;
    forward();
    synchronize();
    const double tf = t.seconds();
    backward();
    synchronize();
    fwd.push_back(tf);
    both.push_back(t.seconds());
  }
  if (!standard && !cudnn) {
    // Every block's span, in one more untimed forward and backward. No launch has more blocks
    // than one per 16 queries or keys of each head.
    CtaTrace trace(2 * d.B * d.Hq * ((std::max(d.Tq, d.Tk) + 15) / 16));
    const int slots = max_warps_per_sm();
    auto first_launch = [&](const char* pass) {
      const std::vector<TracedLaunch> launches = trace.read();
      FLASHGPT_CHECK(!launches.empty(), "bench attention {}: the {} traced no launch", what, pass);
      return achieved_occupancy(launches.front().ctas, slots);
    };
    forward();
    r.achieved_forward = first_launch("forward");
    backward();
    r.achieved_backward = first_launch("backward");
  }
  r.fwd_ms = median(fwd) * 1e3;
  r.fwd_bwd_ms = median(both) * 1e3;
  const double flops = 2.0 * static_cast<double>(d.B * d.Hq) * static_cast<double>(d.Tq) *
                       static_cast<double>(d.Tk) * static_cast<double>(d.Dqk + d.Dv) * (c.causal ? 0.5 : 1.0);
  r.fwd_tflops = flops / (r.fwd_ms * 1e-3) / 1e12;
  r.fwd_bwd_tflops = 3.5 * flops / (r.fwd_bwd_ms * 1e-3) / 1e12;
  return r;
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
