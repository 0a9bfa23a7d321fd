// The paged latent decode's benchmark (latent_decode_bench_cuda.h). Host code over the kernels,
// built for the GPU and for the emulator (where its test runs a tiny case).
//
// The pool holds exactly the sequences' pages, in a random order, filled and timed as
// bench_timing.h does.
#include "flashgpt/cuda/latent_decode_bench_cuda.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "cuda/bench_timing.h"
#include "flashgpt/attention/attention.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/cuda/device_memory.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

using bench::fill_repeating;
using bench::time_per_call;

LatentDecodeBenchResult bench_latent_decode(const LatentDecodeBenchCase& c) {
  PagedLatentDims d = c.dims;
  FLASHGPT_CHECK(c.repeats > 0, "bench latent-decode: repeats must be positive");
  FLASHGPT_CHECK(c.context >= d.Tq && d.Tq > 0, "bench latent-decode: the context ({}) must hold the {} new tokens",
                 c.context, d.Tq);
  FLASHGPT_CHECK(d.page_size > 0, "bench latent-decode: the page size must be positive");
  FLASHGPT_CHECK(c.lengths.empty() || static_cast<int64_t>(c.lengths.size()) == d.B,
                 "bench latent-decode: {} lengths for {} sequences", c.lengths.size(), d.B);
  std::vector<int32_t> lens(static_cast<size_t>(d.B), static_cast<int32_t>(c.context));
  for (size_t b = 0; b < c.lengths.size(); ++b) {
    FLASHGPT_CHECK(c.lengths[b] >= d.Tq && c.lengths[b] <= c.context,
                   "bench latent-decode: sequence {} holds {} tokens (must be {} … {})", b, c.lengths[b], d.Tq,
                   c.context);
    lens[b] = static_cast<int32_t>(c.lengths[b]);
  }
  d.max_pages = (c.context + d.page_size - 1) / d.page_size;
  const int64_t row = d.row(), rows = d.B * d.Tq * d.H, pages = d.B * d.max_pages;
  int64_t total_len = 0;
  for (int32_t n : lens) total_len += n;
  const std::string what = fmt::format("{} B{} H{} Tq{} latent {}+{} context {}{}", c.bf16 ? "bf16" : "fp32", d.B, d.H,
                                       d.Tq, d.n_latent, d.rope_dim, c.context,
                                       c.lengths.empty() ? "" : fmt::format(" (Σ lengths {})", total_len));
  const size_t width = c.bf16 ? 2 : 4;
  Rng rng(c.seed);

  // Inputs: the pool in a random page order, the table, the lengths, the queries.
  std::vector<int32_t> order(static_cast<size_t>(pages));
  std::iota(order.begin(), order.end(), 0);
  for (size_t i = order.size() - 1; i > 0; --i) std::swap(order[i], order[rng.next_u64() % (i + 1)]);
  DeviceBuffer pool(static_cast<size_t>(pages * d.page_size * row) * width), q(static_cast<size_t>(rows * row) * width);
  DeviceBuffer table(order.size() * 4), seq_lens(lens.size() * 4);
  DeviceBuffer out(static_cast<size_t>(rows * d.n_latent) * width), lse(static_cast<size_t>(rows) * 4);
  table.upload(order.data(), order.size() * 4);
  seq_lens.upload(lens.data(), lens.size() * 4);
  fill_repeating(pool.get(), pages * d.page_size * row, c.bf16, rng);
  fill_repeating(q.get(), rows * row, c.bf16, rng);

  LatentDecodeOptions opt = c.options;
  LatentDecodeBenchResult r;
  r.plan = c.bf16 ? plan_latent_decode<bf16>(d, opt) : plan_latent_decode<float>(d, opt);
  DeviceBuffer workspace(std::max<size_t>(r.plan.workspace_bytes, 1));
  opt.workspace = workspace.get();
  opt.splits = r.plan.splits;
  opt.schedule = r.plan.schedule;  // every timed call makes its schedule (schedule_ready stays false)
  const float scale = 1.0f / std::sqrt(static_cast<float>(row));
  auto decode = [&] {
    if (c.bf16) {
      latent_decode_paged<bf16>(d, scale, q.as<const bf16>(), pool.as<const bf16>(), table.as<const int32_t>(),
                                seq_lens.as<const int32_t>(), out.as<bf16>(), lse.as<float>(), opt);
    } else {
      latent_decode_paged<float>(d, scale, q.as<const float>(), pool.as<const float>(), table.as<const int32_t>(),
                                 seq_lens.as<const int32_t>(), out.as<float>(), lse.as<float>(), opt);
    }
  };

  // Checked first: the first and the last sequence against the CPU's attention over their rows.
  out.fill_bytes(0xFF);
  decode();
  synchronize();
  if (r.plan.schedule == LatentSchedule::Balanced) r.chunks = read_latent_schedule(workspace.get());
  {
    auto to_floats = [&](const DeviceBuffer& buf, size_t offset, int64_t n) {
      return bench::download_floats(buf, static_cast<int64_t>(offset), n, c.bf16);
    };
    double worst = 0, top = 0;
    for (int64_t b : {int64_t{0}, d.B - 1}) {
      const int64_t len = lens[static_cast<size_t>(b)];
      std::vector<float> keys(static_cast<size_t>(len * row));
      for (int64_t p = 0; p * d.page_size < len; ++p) {
        const int64_t n = std::min(d.page_size, len - p * d.page_size);
        const auto page = to_floats(pool, static_cast<size_t>(order[static_cast<size_t>(b * d.max_pages + p)] *
                                                              d.page_size * row), n * row);
        std::copy(page.begin(), page.end(), keys.begin() + p * d.page_size * row);
      }
      const auto qb = to_floats(q, static_cast<size_t>(b * d.Tq * d.H * row), d.Tq * d.H * row);
      const auto got = to_floats(out, static_cast<size_t>(b * d.Tq * d.H * d.n_latent), d.Tq * d.H * d.n_latent);
      AttentionDims ad{1, d.H, 1, d.Tq, len, row, d.n_latent};
      ad.k_row_stride = row;
      ad.v_row_stride = row;
      std::vector<float> want(got.size()), want_lse(static_cast<size_t>(d.H * d.Tq));
      attention_forward(AttentionKernel::Standard, ad, AttentionMask{true, len - d.Tq}, scale, qb.data(),
                        keys.data(), keys.data(), want.data(), want_lse.data());
      for (size_t i = 0; i < want.size(); ++i) {
        top = std::max(top, static_cast<double>(std::abs(want[i])));
        const double e = std::abs(static_cast<double>(got[i]) - want[i]);
        worst = std::isfinite(e) ? std::max(worst, e) : INFINITY;
      }
    }
    const double rel = worst / std::max(top, 1e-30), bound = c.bf16 ? 2e-2 : 1e-4;
    FLASHGPT_CHECK(rel <= bound, "bench latent-decode {}: the output disagrees with the CPU (relative error {:.2e} > {:.0e})",
                   what, rel, bound);
    r.max_rel_err = rel;
  }

  r.ms = time_per_call(decode, c.repeats) * 1e3;
  const double cache_bytes = static_cast<double>(total_len) * static_cast<double>(row * width);
  r.bytes = cache_bytes + static_cast<double>(q.bytes() + out.bytes() + lse.bytes() + table.bytes());
  r.gbps = r.bytes / (r.ms * 1e-3) / 1e9;
  r.tflops = 2.0 * static_cast<double>(d.Tq * d.H) * static_cast<double>(total_len) *
             static_cast<double>(row + d.n_latent) / (r.ms * 1e-3) / 1e12;

  r.copy_gbps = bench::copy_gbps(cache_bytes, c.repeats);
  return r;
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
