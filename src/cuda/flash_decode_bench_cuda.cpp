// Flash decode's benchmark (flash_decode_bench_cuda.h). Host code over the kernels, built for the
// GPU and for the emulator (where its test runs a tiny case). Inputs are filled and calls timed
// as bench_timing.h does.
#include "flashgpt/cuda/flash_decode_bench_cuda.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "cuda/bench_timing.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/device_memory.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

FlashDecodeBenchResult bench_flash_decode(const FlashDecodeBenchCase& c) {
  FLASHGPT_CHECK(c.repeats > 0, "bench flash-decode: repeats must be positive");
  FLASHGPT_CHECK(c.Tq > 0 && c.context >= c.Tq, "bench flash-decode: the context ({}) must hold the {} new tokens",
                 c.context, c.Tq);
  FLASHGPT_CHECK(c.B > 0 && c.Hkv > 0 && c.Hq % c.Hkv == 0,
                 "bench flash-decode: B and Hkv must be positive and Hq ({}) a multiple of Hkv ({})", c.Hq, c.Hkv);
  const AttentionDims d{c.B, c.Hq, c.Hkv, c.Tq, c.context, c.head_dim, c.head_dim, 0};
  const AttentionMask host_mask{true, c.context - c.Tq};
  const std::string what = fmt::format("{} B{} Hq{} Hkv{} Tq{} D{} context {}", c.bf16 ? "bf16" : "fp32", c.B, c.Hq,
                                       c.Hkv, c.Tq, c.head_dim, c.context);
  const bool flash_runs = c.bf16 ? flash_tc_supports(d.Dqk, d.Dv) : d.Dqk <= 256;
  FLASHGPT_CHECK(flash_runs, "bench flash-decode {}: the flash kernel has no instantiation for this head dim", what);
  const size_t width = c.bf16 ? 2 : 4;
  const int64_t nq = d.B * d.Tq * d.Hq * d.Dqk, nkv = d.B * d.Tk * d.Hkv * d.Dqk, no = d.B * d.Tq * d.Hq * d.Dv,
                nlse = d.B * d.Hq * d.Tq;
  Rng rng(c.seed);
  // Copies of the cache, used in turn, so that back-to-back calls read at least 256 MiB between
  // two reads of the same bytes: more than any GPU's L2 holds, as a model's layers' caches are.
  const double cache_bytes = 2.0 * static_cast<double>(nkv) * static_cast<double>(width);
  const int64_t copies = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(268435456.0 / cache_bytes)), 1, 64);
  DeviceBuffer q(static_cast<size_t>(nq) * width), k(static_cast<size_t>(copies * nkv) * width),
      v(static_cast<size_t>(copies * nkv) * width), o(static_cast<size_t>(no) * width),
      lse(static_cast<size_t>(nlse) * 4);
  bench::fill_repeating(q.get(), nq, c.bf16, rng);
  bench::fill_repeating(k.get(), copies * nkv, c.bf16, rng);
  bench::fill_repeating(v.get(), copies * nkv, c.bf16, rng);
  int64_t turn = 0;  // the copy the next call reads
  auto kv = [&](const DeviceBuffer& buf) {
    return static_cast<const char*>(buf.get()) + static_cast<size_t>(turn * nkv) * width;
  };

  FlashDecodeOptions opt = c.options;
  FlashDecodeBenchResult r;
  r.plan = c.bf16 ? plan_flash_decode<bf16>(d, opt, q.as<const bf16>(), k.as<const bf16>(), v.as<const bf16>())
                  : plan_flash_decode<float>(d, opt, q.as<const float>(), k.as<const float>(), v.as<const float>());
  DeviceBuffer workspace(std::max<size_t>(r.plan.workspace_bytes, 1));
  opt.workspace = workspace.get();
  opt.splits = r.plan.splits;
  opt.kernel = r.plan.kernel;
  // The warps kernel beside the options' one, planned the same way.
  const bool with_warps =
      r.plan.kernel != FlashDecodeKernel::Warps &&
      (c.bf16 ? flash_decode_warps_run<bf16>(d, k.as<const bf16>(), v.as<const bf16>())
              : flash_decode_warps_run<float>(d, k.as<const float>(), v.as<const float>()));
  FlashDecodeOptions warps_opt = c.options;
  warps_opt.kernel = FlashDecodeKernel::Warps;
  std::unique_ptr<DeviceBuffer> warps_ws;
  if (with_warps) {
    const FlashDecodePlan wp = c.bf16 ? plan_flash_decode<bf16>(d, warps_opt, q.as<const bf16>(), k.as<const bf16>(),
                                                                v.as<const bf16>())
                                      : plan_flash_decode<float>(d, warps_opt, q.as<const float>(),
                                                                 k.as<const float>(), v.as<const float>());
    warps_ws = std::make_unique<DeviceBuffer>(std::max<size_t>(wp.workspace_bytes, 1));
    warps_opt.workspace = warps_ws->get();
    warps_opt.splits = wp.splits;
    r.warps_splits = wp.splits;
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(d.Dqk));
  // The mask as the GPU kernels take it: one causal offset, no arrays.
  const AttentionMask& mask = host_mask;
  auto decode_with = [&](const FlashDecodeOptions& o_opt) {
    if (c.bf16) {
      flash_decode<bf16>(d, mask, scale, q.as<const bf16>(), reinterpret_cast<const bf16*>(kv(k)),
                         reinterpret_cast<const bf16*>(kv(v)), o.as<bf16>(), lse.as<float>(), o_opt);
    } else {
      flash_decode<float>(d, mask, scale, q.as<const float>(), reinterpret_cast<const float*>(kv(k)),
                          reinterpret_cast<const float*>(kv(v)), o.as<float>(), lse.as<float>(), o_opt);
    }
    turn = (turn + 1) % copies;
  };
  auto decode = [&] { decode_with(opt); };
  auto warps = [&] { decode_with(warps_opt); };
  auto flash = [&] {
    if (c.bf16) {
      flash_forward_bf16(d, mask, scale, q.as<const uint16_t>(), reinterpret_cast<const uint16_t*>(kv(k)),
                         reinterpret_cast<const uint16_t*>(kv(v)), o.as<uint16_t>(), lse.as<float>());
    } else {
      flash_forward_fp32(d, mask, scale, q.as<const float>(), reinterpret_cast<const float*>(kv(k)),
                         reinterpret_cast<const float*>(kv(v)), o.as<float>(), lse.as<float>());
    }
    turn = (turn + 1) % copies;
  };

  // Checked first: sequences 0 and B − 1 against the CPU's attention over their keys.
  auto to_floats = [&](const DeviceBuffer& buf, int64_t offset, int64_t n) {
    return bench::download_floats(buf, offset, n, c.bf16);
  };
  auto check = [&](auto&& run, const char* kernel) {
    o.fill_bytes(0xFF);
    turn = 0;
    run();
    synchronize();
    double worst = 0, top = 0;
    for (int64_t b : {int64_t{0}, d.B - 1}) {
      const int64_t sq = d.Tq * d.Hq * d.Dqk, skv = d.Tk * d.Hkv * d.Dqk, so = d.Tq * d.Hq * d.Dv;
      const auto qb = to_floats(q, b * sq, sq), kb = to_floats(k, b * skv, skv), vb = to_floats(v, b * skv, skv);
      const auto got = to_floats(o, b * so, so);
      AttentionDims one = d;
      one.B = 1;
      std::vector<float> want(got.size()), want_lse(static_cast<size_t>(d.Hq * d.Tq));
      attention_forward(AttentionKernel::Standard, one, host_mask, scale, qb.data(), kb.data(), vb.data(), want.data(),
                        want_lse.data());
      for (size_t i = 0; i < want.size(); ++i) {
        top = std::max(top, static_cast<double>(std::abs(want[i])));
        const double e = std::abs(static_cast<double>(got[i]) - want[i]);
        worst = std::isfinite(e) ? std::max(worst, e) : INFINITY;
      }
    }
    const double rel = worst / std::max(top, 1e-30), bound = c.bf16 ? 2e-2 : 1e-4;
    FLASHGPT_CHECK(rel <= bound, "bench flash-decode {}: the {} output disagrees with the CPU (relative error {:.2e} > {:.0e})",
                   what, kernel, rel, bound);
    return rel;
  };
  r.max_rel_err = check(decode, "flash decode");
  r.flash_max_rel_err = check(flash, "flash kernel");
  if (with_warps) r.warps_max_rel_err = check(warps, "flash decode (warps kernel)");

  // Side by side, alternating, so all see the same clocks and neighbours.
  std::vector<double> ours, theirs, by_warps;
  for (int i = 0; i < 3; ++i) {
    ours.push_back(bench::time_per_call(decode, std::max(1, c.repeats / 3)));
    theirs.push_back(bench::time_per_call(flash, std::max(1, c.repeats / 3)));
    if (with_warps) by_warps.push_back(bench::time_per_call(warps, std::max(1, c.repeats / 3)));
  }
  r.ms = bench::median(ours) * 1e3;
  r.flash_ms = bench::median(theirs) * 1e3;
  if (with_warps) r.warps_ms = bench::median(by_warps) * 1e3;
  r.bytes = cache_bytes + static_cast<double>(q.bytes() + o.bytes() + lse.bytes());
  r.gbps = r.bytes / (r.ms * 1e-3) / 1e9;
  r.copy_gbps = bench::copy_gbps(cache_bytes, c.repeats);
  return r;
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
