// Flash decode (cuda/flash_decode_cuda.h) against the CPU's standard attention on the same
// inputs: fp32 within 1e-5 (relative to the largest output), bf16 within twice the error of a
// plain bf16 computation against fp64. The cases are decoding's: a few new tokens per sequence
// over a cache of larger capacity, sequences of different lengths (per-sequence causal offsets
// and key counts), GQA and MQA groups of up to 16 rows and beyond, documents, head dims that no
// 16-byte chunk divides (plain loads instead of cp.async), keys and values as views into wider
// rows. Cache rows past each sequence's length are NaN on the GPU (the reference sees zeros):
// a kernel that reads them fails. Outputs are poisoned first; split counts automatic, one (no
// combine) and several; both split kernels (Tiles, and Warps wherever it runs the sizes).
// Skipped without a GPU; the simt build runs it on the CPU emulator.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "flashgpt/attention/attention.h"
#include "flashgpt/core/device.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/flash_decode_bench_cuda.h"
#include "flashgpt/cuda/flash_decode_cuda.h"
#include "testing/bf16.h"
#include "testing/relative_error.h"

namespace flashgpt {
namespace {

using cuda::bf16;
using cuda::DeviceBuffer;
using testing::from_bf16;
using testing::to_bf16;

struct Case {
  int64_t Hq, Hkv, Tq, capacity, Dqk, Dv;
  std::vector<int32_t> lens;  // keys per sequence, the new tokens included; empty: all `capacity`, no key counts
  bool causal = true;
  bool documents = false;
  int64_t row_pad = 0;  // extra elements at the end of each key and value row (views into wider rows)
};

std::string name(const Case& c) {
  return fmt::format("Hq{} Hkv{} Tq{} cap{} D{}/{} lens [{}]{}{}{}", c.Hq, c.Hkv, c.Tq, c.capacity, c.Dqk, c.Dv,
                     fmt::join(c.lens, " "), c.causal ? "" : " full", c.documents ? " documents" : "",
                     c.row_pad ? fmt::format(" row pad {}", c.row_pad) : "");
}

int64_t batch(const Case& c) { return c.lens.empty() ? 2 : static_cast<int64_t>(c.lens.size()); }
int64_t len_of(const Case& c, int64_t b) { return c.lens.empty() ? c.capacity : c.lens[static_cast<size_t>(b)]; }

AttentionDims dims_of(const Case& c) {
  AttentionDims d{batch(c), c.Hq, c.Hkv, c.Tq, c.capacity, c.Dqk, c.Dv, 0};
  if (c.row_pad) {
    d.k_row_stride = c.Hkv * c.Dqk + c.row_pad;
    d.v_row_stride = c.Hkv * c.Dv + c.row_pad;
  }
  return d;
}

// One problem's inputs on the host (values, rounded to bf16 when asked) and its masks on both
// sides. The host's cache rows past a sequence's length (and the row padding) are zeros.
struct Problem {
  AttentionDims d;
  std::vector<float> q, k, v;
  std::vector<int32_t> offsets, lengths, qseg, kseg;
  AttentionMask host;

  Problem(const Case& c, Rng& rng, bool round) : d(dims_of(c)) {
    const int64_t B = d.B;
    auto draw = [&] {
      const float x = static_cast<float>(rng.normal());
      return round ? from_bf16(to_bf16(x)) : x;
    };
    q.resize(static_cast<size_t>(B * c.Tq * c.Hq * c.Dqk));
    for (float& x : q) x = draw();
    k.assign(static_cast<size_t>(B * c.capacity * d.k_row()), 0.0f);
    v.assign(static_cast<size_t>(B * c.capacity * d.v_row()), 0.0f);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < len_of(c, b); ++j) {
        for (int64_t i = 0; i < c.Hkv * c.Dqk; ++i) k[static_cast<size_t>((b * c.capacity + j) * d.k_row() + i)] = draw();
        for (int64_t i = 0; i < c.Hkv * c.Dv; ++i) v[static_cast<size_t>((b * c.capacity + j) * d.v_row() + i)] = draw();
      }
    }
    host = AttentionMask{c.causal, c.capacity - c.Tq};
    if (!c.lens.empty()) {
      for (int64_t b = 0; b < B; ++b) {
        offsets.push_back(static_cast<int32_t>(std::max<int64_t>(0, len_of(c, b) - c.Tq)));
        lengths.push_back(static_cast<int32_t>(len_of(c, b)));
      }
      host.kv_lengths = lengths;
      if (c.causal) host.q_offsets = offsets;
    }
    if (c.documents) {  // documents of 13 tokens
      for (int64_t b = 0; b < B; ++b) {
        const int64_t off = c.causal ? (c.lens.empty() ? c.capacity - c.Tq : offsets[static_cast<size_t>(b)]) : 0;
        for (int64_t i = 0; i < c.Tq; ++i) qseg.push_back(static_cast<int32_t>((off + i) / 13));
        for (int64_t j = 0; j < c.capacity; ++j) kseg.push_back(static_cast<int32_t>(j / 13));
      }
      host.q_segments = qseg;
      host.kv_segments = kseg;
    }
  }

  // Is element i of k (or v, with its row width) a real key, not padding past the length?
  bool real(int64_t i, int64_t row, int64_t width) const {
    const int64_t r = i / row, b = r / d.Tk, j = r % d.Tk;
    return j < (lengths.empty() ? d.Tk : lengths[static_cast<size_t>(b)]) && i % row < width;
  }
};

// The mask's arrays and the inputs in device memory; cache padding NaN.
struct OnDevice {
  DeviceBuffer q, k, v, offsets, lengths, qseg, kseg, o, lse;
  AttentionMask mask;

  template <typename Conv, typename E = decltype(std::declval<Conv>()(0.0f))>
  OnDevice(const Problem& p, Conv conv)
      : q(p.q.size() * sizeof(E)),
        k(p.k.size() * sizeof(E)),
        v(p.v.size() * sizeof(E)),
        offsets(std::max<size_t>(1, p.offsets.size()) * 4),
        lengths(std::max<size_t>(1, p.lengths.size()) * 4),
        qseg(std::max<size_t>(1, p.qseg.size()) * 4),
        kseg(std::max<size_t>(1, p.kseg.size()) * 4),
        o(static_cast<size_t>(p.d.B * p.d.Tq * p.d.Hq * p.d.Dv) * sizeof(E)),
        lse(static_cast<size_t>(p.d.B * p.d.Hq * p.d.Tq) * 4),
        mask{p.host.causal, p.host.q_offset} {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    auto put = [&](DeviceBuffer& buf, const std::vector<float>& host, int64_t row, int64_t width) {
      std::vector<E> e(host.size());
      for (size_t i = 0; i < host.size(); ++i) {
        e[i] = conv(row == 0 || p.real(static_cast<int64_t>(i), row, width) ? host[i] : nan);
      }
      buf.upload(e.data(), e.size() * sizeof(E));
    };
    put(q, p.q, 0, 0);
    put(k, p.k, p.d.k_row(), p.d.Hkv * p.d.Dqk);
    put(v, p.v, p.d.v_row(), p.d.Hkv * p.d.Dv);
    auto ints = [](DeviceBuffer& buf, const std::vector<int32_t>& h) -> std::span<const int32_t> {
      if (h.empty()) return {};
      buf.upload(h.data(), h.size() * 4);
      return {buf.as<const int32_t>(), h.size()};
    };
    mask.q_offsets = ints(offsets, p.offsets);
    mask.kv_lengths = ints(lengths, p.lengths);
    mask.q_segments = ints(qseg, p.qseg);
    mask.kv_segments = ints(kseg, p.kseg);
    if (p.host.q_offsets.empty()) mask.q_offsets = {};
  }
};

const std::vector<Case> kCases = {
    {1, 1, 1, 1, 64, 64, {}},                               // one key
    {12, 12, 1, 300, 64, 64, {300, 17, 1, 200}},             // d12-like MHA, ragged
    {8, 2, 1, 129, 128, 128, {129, 64}},                     // GQA: 4 rows per block
    {16, 1, 1, 70, 64, 64, {70, 33, 5}},                     // MQA: 16 rows, one block
    {24, 1, 2, 90, 32, 32, {90, 2}},                         // MQA, 48 rows: three row blocks
    {4, 4, 5, 100, 64, 64, {100, 40, 5}},                    // several new tokens, causal among them
    {6, 3, 1, 77, 96, 64, {77, 50}, true, false, 8},         // Dqk ≠ Dv, views into wider rows
    {4, 2, 3, 60, 40, 24, {60, 31}},                         // bf16: 5 chunks over 4 lanes per key
    {4, 2, 3, 60, 30, 18, {60, 31}},                         // no whole 16-byte chunks: plain loads
    {2, 1, 1, 45, 64, 64, {45, 20}, true, false, 3},         // rows 16-byte chunks do not start: plain loads
    {2, 2, 1, 50, 256, 256, {50, 9}},                        // the widest heads
    {4, 2, 1, 80, 64, 64, {80, 45}, false},                  // not causal: padding only
    {4, 4, 2, 90, 64, 64, {90, 60}, true, true},             // documents
    {4, 2, 2, 75, 64, 32, {}, true, true},                   // one offset for all, documents
    {2, 1, 1, 40, 64, 64, {0, 40}},                          // an empty sequence: zeros, lse −∞
};

using testing::attention_rel_error;

// The CPU's fp32 result for a problem, and the GPU's, outputs poisoned first; within 1e-5.
struct Fp32Check {
  const Problem& p;
  float scale;
  std::vector<float> want, want_lse;
  OnDevice g;

  explicit Fp32Check(const Problem& problem)
      : p(problem),
        scale(1.0f / std::sqrt(static_cast<float>(p.d.Dqk))),
        want(static_cast<size_t>(p.d.B * p.d.Tq * p.d.Hq * p.d.Dv)),
        want_lse(static_cast<size_t>(p.d.B * p.d.Hq * p.d.Tq)),
        g(p, [](float x) { return x; }) {
    attention_forward(AttentionKernel::Standard, p.d, p.host, scale, p.q.data(), p.k.data(), p.v.data(), want.data(),
                      want_lse.data());
  }

  void expect_equal(const cuda::FlashDecodeOptions& opt) {
    g.o.fill_bytes(0xFF);
    g.lse.fill_bytes(0xFF);
    cuda::flash_decode<float>(p.d, g.mask, scale, g.q.as<float>(), g.k.as<float>(), g.v.as<float>(), g.o.as<float>(),
                              g.lse.as<float>(), opt);
    cuda::synchronize();
    std::vector<float> got(want.size()), got_lse(want_lse.size());
    g.o.download(got.data(), got.size() * 4);
    g.lse.download(got_lse.data(), got_lse.size() * 4);
    EXPECT_LT(attention_rel_error(got, want), 1e-5);
    EXPECT_LT(attention_rel_error(got_lse, want_lse), 1e-5);
  }
};

// The kernels that run a problem with its tensors where they are: Tiles always, Warps where it can.
template <typename T>
std::vector<cuda::FlashDecodeKernel> kernels_for(const AttentionDims& d, const T* k, const T* v) {
  std::vector<cuda::FlashDecodeKernel> ks{cuda::FlashDecodeKernel::Tiles};
  if (cuda::flash_decode_warps_run<T>(d, k, v)) ks.push_back(cuda::FlashDecodeKernel::Warps);
  return ks;
}

TEST(CudaFlashDecode, Fp32EqualsTheCpuOverEverySplitCount) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  Rng rng(11);
  int warps_cases = 0;
  for (const Case& c : kCases) {
    const Problem p(c, rng, false);
    Fp32Check check(p);
    // Every other run brings its own workspace, poisoned.
    int run = 0;
    const auto kernels = kernels_for<float>(p.d, check.g.k.as<float>(), check.g.v.as<float>());
    warps_cases += kernels.size() > 1;
    for (const cuda::FlashDecodeKernel kernel : kernels) {
    for (int splits : {0, 1, 3, 7}) {
      SCOPED_TRACE(fmt::format("{} {} splits {}", name(c), cuda::flash_decode_kernel_name(kernel), splits));
      cuda::FlashDecodeOptions opt;
      opt.kernel = kernel;
      opt.splits = splits;
      const auto plan = cuda::plan_flash_decode<float>(p.d, opt, check.g.q.as<float>(), check.g.k.as<float>(),
                                                       check.g.v.as<float>());
      EXPECT_EQ(plan.kernel, kernel);
      if (splits > 0) {
        EXPECT_EQ(plan.splits, splits);
      }
      DeviceBuffer ws(std::max<size_t>(plan.workspace_bytes, 1));
      ws.fill_bytes(0xFF);
      if (run++ % 2 == 1) opt.workspace = ws.get();
      check.expect_equal(opt);
    }
    }
  }
  EXPECT_GE(warps_cases, 10) << "the warps kernel ran too few of the cases";
}

TEST(CudaFlashDecode, RandomShapesEqualTheCpu) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  Rng rng(13);
  const auto pick = [&](int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(rng.next_u64() % (hi - lo + 1)); };
  for (int trial = 0; trial < 24; ++trial) {
    Case c{};
    c.Hkv = pick(1, 3);
    c.Hq = c.Hkv * pick(1, 20);
    c.Tq = pick(1, 4);
    c.capacity = pick(c.Tq, 150);
    c.Dqk = pick(1, 160);
    c.Dv = rng.uniform() < 0.5 ? c.Dqk : pick(1, 160);
    c.causal = rng.uniform() < 0.8;
    c.documents = rng.uniform() < 0.3;
    c.row_pad = rng.uniform() < 0.3 ? pick(1, 9) : 0;
    if (rng.uniform() < 0.8) {  // per-sequence lengths; else every sequence at the capacity
      const int64_t B = pick(1, 4);
      for (int64_t b = 0; b < B; ++b) {
        c.lens.push_back(static_cast<int32_t>(rng.uniform() < 0.1 ? 0 : pick(c.causal ? c.Tq : 1, c.capacity)));
      }
    }
    const int splits = static_cast<int>(pick(0, 9));
    const Problem p(c, rng, false);
    Fp32Check check(p);
    for (const cuda::FlashDecodeKernel kernel : kernels_for<float>(p.d, check.g.k.as<float>(), check.g.v.as<float>())) {
      SCOPED_TRACE(fmt::format("trial {}: {} {} splits {}", trial, name(c), cuda::flash_decode_kernel_name(kernel),
                               splits));
      cuda::FlashDecodeOptions opt;
      opt.kernel = kernel;
      opt.splits = splits;
      check.expect_equal(opt);
    }
  }
}

TEST(CudaFlashDecode, Bf16IsAsAccurateAsAPlainBf16Computation) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  Rng rng(12);
  for (const Case& c : kCases) {
    const Problem p(c, rng, true);
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.Dqk));
    const size_t n_out = static_cast<size_t>(p.d.B * c.Tq * c.Hq * c.Dv), n_lse = static_cast<size_t>(p.d.B * c.Hq * c.Tq);
    // fp64 on the rounded inputs, and a plain fp32 computation on them with its output rounded.
    std::vector<double> exact(n_out), exact_lse(n_lse);
    const std::vector<double> qd(p.q.begin(), p.q.end()), kd(p.k.begin(), p.k.end()), vd(p.v.begin(), p.v.end());
    attention_forward(AttentionKernel::Standard, p.d, p.host, scale, qd.data(), kd.data(), vd.data(), exact.data(),
                      exact_lse.data());
    std::vector<float> plain(n_out), plain_lse(n_lse);
    attention_forward(AttentionKernel::Standard, p.d, p.host, static_cast<float>(scale), p.q.data(), p.k.data(),
                      p.v.data(), plain.data(), plain_lse.data());
    OnDevice g(p, [](float x) { return bf16{to_bf16(x)}; });
    for (const cuda::FlashDecodeKernel kernel : kernels_for<bf16>(p.d, g.k.as<bf16>(), g.v.as<bf16>())) {
    for (int splits : {0, 1, 4}) {
      SCOPED_TRACE(fmt::format("{} {} splits {}", name(c), cuda::flash_decode_kernel_name(kernel), splits));
      cuda::FlashDecodeOptions opt;
      opt.kernel = kernel;
      opt.splits = splits;
      g.o.fill_bytes(0xFF);
      g.lse.fill_bytes(0xFF);
      cuda::flash_decode<bf16>(p.d, g.mask, static_cast<float>(scale), g.q.as<bf16>(), g.k.as<bf16>(), g.v.as<bf16>(),
                               g.o.as<bf16>(), g.lse.as<float>(), opt);
      cuda::synchronize();
      std::vector<uint16_t> bits(n_out);
      std::vector<float> got_lse(n_lse);
      g.o.download(bits.data(), n_out * 2);
      g.lse.download(got_lse.data(), n_lse * 4);
      double ours = 0, pl = 0, den = 0;
      for (size_t i = 0; i < n_out; ++i) {
        const double x = from_bf16(bits[i]), y = from_bf16(to_bf16(plain[i]));
        ASSERT_TRUE(std::isfinite(x)) << "output " << i << " unwritten or read past a sequence";
        ours += (x - exact[i]) * (x - exact[i]);
        pl += (y - exact[i]) * (y - exact[i]);
        den += exact[i] * exact[i];
      }
      if (den > 0) {
        EXPECT_LE(std::sqrt(ours / den), 2 * std::sqrt(pl / den) + 1e-6)
            << "ours " << std::sqrt(ours / den) << " against plain bf16 " << std::sqrt(pl / den);
      } else {
        EXPECT_EQ(ours, 0.0);
      }
      for (size_t i = 0; i < n_lse; ++i) {
        if (std::isinf(exact_lse[i])) {
          EXPECT_TRUE(std::isinf(got_lse[i]) && got_lse[i] < 0) << "lse " << i;
        } else {
          EXPECT_NEAR(got_lse[i], exact_lse[i], 1e-4 * std::abs(exact_lse[i]) + 1e-4) << "lse " << i;
        }
      }
    }
    }
  }
}

// What the plan says follows from the sizes: 16-byte copies only where rows allow them, splits
// when few blocks would leave the GPU idle, scratch only with splits.
TEST(CudaFlashDecode, PlansCopiesAndSplitsFromTheSizes) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  AttentionDims d{1, 12, 12, 1, 4096, 64, 64, 0};
  const auto one = cuda::plan_flash_decode<bf16>(d);
  EXPECT_TRUE(one.async_copies);
  EXPECT_EQ(one.stages, 2);
  EXPECT_EQ(one.key_tile, 32);
  EXPECT_EQ(one.rows_per_block, 16);
  EXPECT_GE(one.blocks_per_sm, 4);  // small tiles: many blocks per SM
  EXPECT_GT(one.splits, 8);         // 12 blocks alone would leave most SMs idle
  EXPECT_GE(one.workspace_bytes, static_cast<size_t>(one.splits) * 12 * (64 + 1) * sizeof(float));
  // Many sequences fill the GPU on their own: no split, no scratch.
  d.B = 512;
  d.Tk = 256;
  const auto many = cuda::plan_flash_decode<bf16>(d);
  EXPECT_EQ(many.splits, 1);
  EXPECT_EQ(many.workspace_bytes, 0u);
  // Expected to beat the flash kernels: one row per block only when split many ways (the 12 heads
  // of one sequence); two or more rows always (a GQA group, two new tokens), however many blocks.
  EXPECT_TRUE(one.beats_flash_kernel);
  EXPECT_FALSE(many.beats_flash_kernel);
  EXPECT_FALSE(cuda::plan_flash_decode<bf16>(d, {.splits = 64}).beats_flash_kernel);  // the case decides, not the options
  AttentionDims grouped = d;
  grouped.Hkv = 3;
  EXPECT_TRUE(cuda::plan_flash_decode<bf16>(grouped).beats_flash_kernel);
  AttentionDims two_tokens = d;
  two_tokens.Tq = 2;
  EXPECT_TRUE(cuda::plan_flash_decode<bf16>(two_tokens).beats_flash_kernel);
  // Rows of 36 bf16 values are not whole 16-byte chunks: plain loads.
  d.Dqk = 36;
  EXPECT_FALSE(cuda::plan_flash_decode<bf16>(d).async_copies);
  EXPECT_TRUE(cuda::plan_flash_decode<float>(d).async_copies);  // 144 bytes
  // Nor is a misaligned pointer.
  d.Dqk = 64;
  DeviceBuffer buf(1024);
  const bf16* base = buf.as<const bf16>();
  EXPECT_TRUE(cuda::plan_flash_decode<bf16>(d, {}, base, base, base).async_copies);
  EXPECT_FALSE(cuda::plan_flash_decode<bf16>(d, {}, base, base + 1, base).async_copies);
  // The widest fp32 heads still fit a block.
  d.Dqk = d.Dv = 256;
  EXPECT_GT(cuda::plan_flash_decode<float>(d).shared_bytes, 0u);
  // Auto takes the tiles kernel; the warps kernel, asked for, holds 4 rows a block, stages
  // nothing, and splits at most a quarter as many ways (each block takes four tiles a step).
  d = AttentionDims{1, 12, 12, 1, 4096, 64, 64, 0};
  EXPECT_EQ(one.kernel, cuda::FlashDecodeKernel::Tiles);
  const auto warps = cuda::plan_flash_decode<bf16>(d, {.kernel = cuda::FlashDecodeKernel::Warps});
  EXPECT_EQ(warps.kernel, cuda::FlashDecodeKernel::Warps);
  EXPECT_EQ(warps.rows_per_block, 4);
  EXPECT_EQ(warps.stages, 0);
  EXPECT_GE(warps.blocks_per_sm, 4);
  EXPECT_GT(warps.splits, 1);
  EXPECT_LE(warps.splits, 4096 / 32 / 4);
  EXPECT_EQ(cuda::plan_flash_decode<bf16>(d, {.kernel = cuda::FlashDecodeKernel::Warps, .splits = 3}).splits, 3);
}

TEST(CudaFlashDecode, SplitChoiceFillsTheGpuWithoutWastingWaves) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  EXPECT_EQ(cuda::choose_flash_decode_splits(4000, 64, 1000), 1);  // four full waves already
  EXPECT_EQ(cuda::choose_flash_decode_splits(1, 1, 1000), 1);
  EXPECT_EQ(cuda::choose_flash_decode_splits(1, 8, 1000), 8);  // never more splits than tiles
  const int s = cuda::choose_flash_decode_splits(12, 128, 1000);
  EXPECT_GE(s, 32);
  EXPECT_LE(12 * s, 1000 + 12);  // about one wave
  EXPECT_THROW((void)cuda::choose_flash_decode_splits(0, 1, 1), Error);
}

// The benchmark checks both kernels before it times them; a tiny case reports sane figures.
TEST(CudaFlashDecode, BenchmarkChecksThenTimes) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  for (bool bf16 : {true, false}) {
    cuda::FlashDecodeBenchCase c;
    c.B = 2;
    c.Hq = 4;
    c.Hkv = 2;
    c.Tq = 1;
    c.head_dim = 64;
    c.context = 70;
    c.bf16 = bf16;
    c.repeats = 3;
    const cuda::FlashDecodeBenchResult r = cuda::bench_flash_decode(c);
    EXPECT_GT(r.ms, 0.0);
    EXPECT_GT(r.flash_ms, 0.0);
    EXPECT_GT(r.gbps, 0.0);
    EXPECT_GT(r.copy_gbps, 0.0);
    EXPECT_GE(r.plan.splits, 1);
    EXPECT_LT(r.max_rel_err, bf16 ? 2e-2 : 1e-4);
    EXPECT_LT(r.flash_max_rel_err, bf16 ? 2e-2 : 1e-4);
    EXPECT_EQ(r.plan.kernel, cuda::FlashDecodeKernel::Tiles);
    // The warps kernel, which runs D = 64, checked and timed beside it.
    EXPECT_GT(r.warps_ms, 0.0);
    EXPECT_GE(r.warps_splits, 1);
    EXPECT_LT(r.warps_max_rel_err, bf16 ? 2e-2 : 1e-4);
    if (bf16) {
      EXPECT_GT(r.max_rel_err, 0.0);  // rounded outputs: exact agreement would mean nothing was compared
      EXPECT_GT(r.warps_max_rel_err, 0.0);
    }
    // Keys and values (2 × 2 × 70 × 2 × 64), queries, outputs and lse.
    const double w = bf16 ? 2 : 4;
    EXPECT_DOUBLE_EQ(r.bytes, 2 * 2 * 70 * 2 * 64 * w + 2 * 4 * 64 * w + 2 * 4 * 64 * w + 2 * 4 * 4);
  }
  cuda::FlashDecodeBenchCase bad;
  bad.context = 0;
  EXPECT_THROW((void)cuda::bench_flash_decode(bad), Error);
}

TEST(CudaFlashDecode, RefusesWhatItCannotRun) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  EXPECT_TRUE(cuda::flash_decode_supports(256, 256));
  EXPECT_FALSE(cuda::flash_decode_supports(257, 64));
  EXPECT_FALSE(cuda::flash_decode_supports(64, 0));
  AttentionDims d{1, 4, 4, 1, 10, 320, 64, 0};
  try {
    (void)cuda::plan_flash_decode<float>(d);
    ADD_FAILURE() << "a 320-wide head was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Dqk 320"), std::string::npos) << e.what();
  }
  d.Dqk = 64;
  d.Hkv = 3;
  EXPECT_THROW((void)cuda::plan_flash_decode<float>(d), Error);
  // The warps kernel takes whole, aligned 16-byte chunks and value rows of 1–32 of them.
  d.Hkv = 4;
  const cuda::FlashDecodeOptions warps{.kernel = cuda::FlashDecodeKernel::Warps};
  EXPECT_TRUE(cuda::flash_decode_warps_run<bf16>(d, static_cast<const bf16*>(nullptr), nullptr));
  DeviceBuffer buf(4096);
  const bf16* base = buf.as<const bf16>();
  EXPECT_FALSE(cuda::flash_decode_warps_run<bf16>(d, base + 1, base));
  // 36 bf16: 4.5 chunks (fp32: 9); 48: 6 chunks (fp32 12), no power of two; 40: 5 (fp32 10).
  struct Sizes {
    int64_t dqk, dv;
    bool bf16_runs, fp32_runs;
  };
  for (const Sizes& z : {Sizes{36, 64, false, true}, Sizes{64, 48, false, false}, Sizes{64, 40, false, false},
                         Sizes{256, 256, true, false}, Sizes{8, 8, true, true}}) {
    d.Dqk = z.dqk;
    d.Dv = z.dv;
    SCOPED_TRACE(fmt::format("Dqk {} Dv {}", z.dqk, z.dv));
    EXPECT_EQ(cuda::flash_decode_warps_run<bf16>(d, static_cast<const bf16*>(nullptr), nullptr), z.bf16_runs);
    EXPECT_EQ(cuda::flash_decode_warps_run<float>(d, static_cast<const float*>(nullptr), nullptr), z.fp32_runs);
  }
  d.Dqk = 36;
  d.Dv = 64;
  try {
    (void)cuda::plan_flash_decode<bf16>(d, warps);
    ADD_FAILURE() << "the warps kernel accepted 36-wide keys in bf16";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("warps kernel needs key and value rows of whole 16-byte chunks"),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("Dqk 36"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace flashgpt
