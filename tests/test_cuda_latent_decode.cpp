// The paged latent decode (cuda/latent_decode_cuda.h) against the CPU's standard attention over
// each sequence's cache gathered into a dense MQA problem (keys = whole latent rows, values =
// their first n_latent values, causal with the new tokens last): fp32 within 1e-5, bf16 — on the
// CUDA cores and on the tensor cores — within twice the error of a plain bf16 computation against
// fp64. Sequences have different lengths, the block table scatters their pages over a pool whose
// unused pages and rows are NaN, and the split count is automatic, one (no combine) or several.
// Skipped without a GPU; the simt build runs it on the CPU emulator.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "flashgpt/attention/attention.h"
#include "flashgpt/core/device.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/latent_decode_bench_cuda.h"
#include "flashgpt/cuda/latent_decode_cuda.h"
#include "flashgpt/cuda/warpgroup_cuda.h"
#include "testing/bf16.h"

namespace flashgpt {
namespace {

using cuda::bf16;
using cuda::DeviceBuffer;
using testing::from_bf16;
using testing::to_bf16;

struct Case {
  int64_t H, Tq, nl, rope, page;
  std::vector<int32_t> lens;
};

std::string name(const Case& c) {
  return fmt::format("H{} Tq{} latent {}+{} page {} lens {}", c.H, c.Tq, c.nl, c.rope, c.page, fmt::join(c.lens, " "));
}

// A paged cache: the pool, the block table and the dense rows of each sequence.
struct Paged {
  int64_t max_pages = 0;
  std::vector<float> pool;     // [pages, page, row]; unused pages NaN
  std::vector<int32_t> table;  // [B, max_pages]
  std::vector<std::vector<float>> dense;  // per sequence [len, row]
};

Paged make_paged(const Case& c, Rng& rng, bool round) {
  const int64_t row = c.nl + c.rope, B = static_cast<int64_t>(c.lens.size());
  Paged p;
  int64_t used = 0;
  for (int32_t l : c.lens) {
    p.max_pages = std::max<int64_t>(p.max_pages, (l + c.page - 1) / c.page);
    used += (l + c.page - 1) / c.page;
  }
  const int64_t pool_pages = used + 3;  // spare pages stay NaN
  p.pool.assign(static_cast<size_t>(pool_pages * c.page * row), std::numeric_limits<float>::quiet_NaN());
  std::vector<int32_t> ids(static_cast<size_t>(pool_pages));
  std::iota(ids.begin(), ids.end(), 0);
  for (size_t i = ids.size() - 1; i > 0; --i) std::swap(ids[i], ids[static_cast<size_t>(rng.uniform() * (i + 1)) % (i + 1)]);
  p.table.assign(static_cast<size_t>(B * p.max_pages), -1);
  size_t next = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t len = c.lens[static_cast<size_t>(b)];
    std::vector<float> rows(static_cast<size_t>(len * row));
    for (float& x : rows) {
      x = static_cast<float>(rng.normal());
      if (round) x = from_bf16(to_bf16(x));
    }
    for (int64_t pg = 0; pg < (len + c.page - 1) / c.page; ++pg) {
      const int32_t id = ids[next++];
      p.table[static_cast<size_t>(b * p.max_pages + pg)] = id;
      for (int64_t r = 0; r < c.page && pg * c.page + r < len; ++r) {
        std::copy_n(rows.begin() + (pg * c.page + r) * row, row, p.pool.begin() + (id * c.page + r) * row);
      }
    }
    p.dense.push_back(std::move(rows));
  }
  return p;
}

// The CPU reference for sequence b: MQA over its dense rows; out [Tq, H, nl], lse [H, Tq].
template <typename R>
void reference(const Case& c, const std::vector<R>& q_b, const std::vector<R>& rows, int64_t len, R scale,
               std::vector<R>& out, std::vector<R>& lse) {
  const int64_t row = c.nl + c.rope;
  AttentionDims d{1, c.H, 1, c.Tq, len, row, c.nl};
  d.k_row_stride = row;
  d.v_row_stride = row;
  const AttentionMask m{true, len - c.Tq};
  out.assign(static_cast<size_t>(c.Tq * c.H * c.nl), R(0));
  lse.assign(static_cast<size_t>(c.H * c.Tq), R(0));
  attention_forward(AttentionKernel::Standard, d, m, scale, q_b.data(), rows.data(), rows.data(), out.data(),
                    lse.data());
}

const std::vector<Case> kCases = {
    {5, 1, 32, 16, 4, {1, 9, 17}},
    {16, 3, 64, 8, 8, {3, 40}},
    {4, 1, 512, 64, 64, {100, 200}},  // DeepSeek's 576/512 rows
    {20, 2, 40, 0, 16, {64, 2, 33, 90}},
    {6, 2, 24, 8, 64, {2, 64, 30}},  // a table one page wide: nothing to cut, no partial results
};

// The tensor-core kernel's sizes (rows 576/512, 64/32 and 32/32: n_latent 32 with and without a
// rope part, as d12_flash_mla decodes with learned positions): more query rows than one block holds, rows
// that end mid-block, pages smaller and larger than its key tile, sequences shorter than a tile.
const std::vector<Case> kTensorCoreCases = {
    {128, 1, 512, 64, 64, {1, 64, 300}},
    {16, 3, 512, 64, 16, {70, 3}},
    {40, 2, 32, 32, 16, {2, 33, 90, 200}},
    {7, 1, 32, 32, 5, {1, 31, 77}},
    {33, 4, 32, 32, 64, {130, 4}},
    {12, 2, 32, 0, 64, {5, 70, 129}},
};

// The schedules every numeric test runs: balanced (the automatic choice), and uniform with the
// split count chosen, one (no combine) and three.
cuda::LatentDecodeOptions with_schedule(cuda::LatentSchedule schedule, int splits) {
  cuda::LatentDecodeOptions opt;
  opt.schedule = schedule;
  opt.splits = splits;
  return opt;
}
const std::vector<cuda::LatentDecodeOptions> kSchedules = {
    with_schedule(cuda::LatentSchedule::Auto, 0), with_schedule(cuda::LatentSchedule::Uniform, 0),
    with_schedule(cuda::LatentSchedule::Uniform, 1), with_schedule(cuda::LatentSchedule::Uniform, 3)};

// The tensor-core kernels' runs: balanced, and uniform with the count chosen, 1, 2 and 5 splits.
const std::vector<cuda::LatentDecodeOptions> kTensorCoreSchedules = {
    with_schedule(cuda::LatentSchedule::Balanced, 0), with_schedule(cuda::LatentSchedule::Uniform, 0),
    with_schedule(cuda::LatentSchedule::Auto, 1), with_schedule(cuda::LatentSchedule::Auto, 2),
    with_schedule(cuda::LatentSchedule::Uniform, 5)};

std::string name(const cuda::LatentDecodeOptions& opt) {
  if (opt.schedule == cuda::LatentSchedule::Uniform) return fmt::format("uniform, splits {}", opt.splits);
  return opt.splits > 0 ? fmt::format("splits {}", opt.splits) : std::string("balanced");
}

TEST(CudaLatentDecode, Fp32EqualsTheCpuOverEverySplitCount) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  Rng rng(5);
  for (const Case& c : kCases) {
    const int64_t row = c.nl + c.rope, B = static_cast<int64_t>(c.lens.size());
    const Paged p = make_paged(c, rng, false);
    std::vector<float> q(static_cast<size_t>(B * c.Tq * c.H * row));
    for (float& x : q) x = static_cast<float>(rng.normal());
    const float scale = 1.0f / std::sqrt(static_cast<float>(row));
    // Expected, sequence by sequence, in the kernel's layouts.
    std::vector<float> want(static_cast<size_t>(B * c.Tq * c.H * c.nl)), want_lse(static_cast<size_t>(B * c.H * c.Tq));
    for (int64_t b = 0; b < B; ++b) {
      std::vector<float> qb(q.begin() + b * c.Tq * c.H * row, q.begin() + (b + 1) * c.Tq * c.H * row), o, l;
      reference<float>(c, qb, p.dense[static_cast<size_t>(b)], c.lens[static_cast<size_t>(b)], scale, o, l);
      std::copy(o.begin(), o.end(), want.begin() + b * c.Tq * c.H * c.nl);
      std::copy(l.begin(), l.end(), want_lse.begin() + b * c.H * c.Tq);
    }
    DeviceBuffer gq(q.size() * 4), gpool(p.pool.size() * 4), gtab(p.table.size() * 4), glen(c.lens.size() * 4);
    gq.upload(q.data(), q.size() * 4);
    gpool.upload(p.pool.data(), p.pool.size() * 4);
    gtab.upload(p.table.data(), p.table.size() * 4);
    glen.upload(c.lens.data(), c.lens.size() * 4);
    cuda::PagedLatentDims d{B, c.H, c.Tq, c.nl, c.rope, c.page, p.max_pages};
    for (const cuda::LatentDecodeOptions& opt : kSchedules) {
      SCOPED_TRACE(fmt::format("{} {}", name(c), name(opt)));
      DeviceBuffer gout(want.size() * 4), glse(want_lse.size() * 4);
      gout.fill_bytes(0xFF);
      glse.fill_bytes(0xFF);
      cuda::latent_decode_paged(d, scale, gq.as<const float>(), gpool.as<const float>(), gtab.as<const int32_t>(),
                                glen.as<const int32_t>(), gout.as<float>(), glse.as<float>(), opt);
      cuda::synchronize();
      std::vector<float> got(want.size()), got_lse(want_lse.size());
      gout.download(got.data(), got.size() * 4);
      glse.download(got_lse.data(), got_lse.size() * 4);
      double worst = 0, scale_o = 1;
      for (float x : want) scale_o = std::max(scale_o, static_cast<double>(std::abs(x)));
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_TRUE(std::isfinite(got[i])) << "output " << i << " unwritten or read a wrong page";
        worst = std::max(worst, std::abs(static_cast<double>(got[i]) - want[i]));
      }
      EXPECT_LT(worst / scale_o, 1e-5);
      for (size_t i = 0; i < got_lse.size(); ++i) EXPECT_NEAR(got_lse[i], want_lse[i], 1e-5 * std::abs(want_lse[i]) + 1e-5);
    }
  }
}

// Runs the bf16 decode of case c with the given options and returns the largest of (its error
// against fp64) / (a plain bf16 computation's error against fp64), relative norms over all rows.
struct Bf16Run {
  double ours = 0, plain = 0;
  std::vector<uint16_t> out;
  std::vector<float> lse;
};

Bf16Run run_bf16(const Case& c, uint64_t seed, const cuda::LatentDecodeOptions& opt) {
  Rng rng(seed);
  const int64_t row = c.nl + c.rope, B = static_cast<int64_t>(c.lens.size());
  const Paged p = make_paged(c, rng, true);
  std::vector<float> q(static_cast<size_t>(B * c.Tq * c.H * row));
  for (float& x : q) x = from_bf16(to_bf16(static_cast<float>(rng.normal())));
  const double scale = 1.0 / std::sqrt(static_cast<double>(row));
  std::vector<uint16_t> q_bits(q.size()), pool_bits(p.pool.size());
  for (size_t i = 0; i < q.size(); ++i) q_bits[i] = to_bf16(q[i]);
  for (size_t i = 0; i < p.pool.size(); ++i) pool_bits[i] = to_bf16(p.pool[i]);
  DeviceBuffer gq(q_bits.size() * 2), gpool(pool_bits.size() * 2), gtab(p.table.size() * 4), glen(c.lens.size() * 4);
  gq.upload(q_bits.data(), q_bits.size() * 2);
  gpool.upload(pool_bits.data(), pool_bits.size() * 2);
  gtab.upload(p.table.data(), p.table.size() * 4);
  glen.upload(c.lens.data(), c.lens.size() * 4);
  const size_t n_out = static_cast<size_t>(B * c.Tq * c.H * c.nl), n_lse = static_cast<size_t>(B * c.H * c.Tq);
  DeviceBuffer gout(n_out * 2), glse(n_lse * 4);
  gout.fill_bytes(0xFF);
  glse.fill_bytes(0xFF);
  cuda::latent_decode_paged(cuda::PagedLatentDims{B, c.H, c.Tq, c.nl, c.rope, c.page, p.max_pages},
                            static_cast<float>(scale), gq.as<const bf16>(), gpool.as<const bf16>(),
                            gtab.as<const int32_t>(), glen.as<const int32_t>(), gout.as<bf16>(), glse.as<float>(), opt);
  cuda::synchronize();
  Bf16Run r;
  r.out.resize(n_out);
  r.lse.resize(n_lse);
  gout.download(r.out.data(), n_out * 2);
  glse.download(r.lse.data(), n_lse * 4);
  double num_ours = 0, num_plain = 0, den = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t len = c.lens[static_cast<size_t>(b)];
    const auto qf = std::vector<float>(q.begin() + b * c.Tq * c.H * row, q.begin() + (b + 1) * c.Tq * c.H * row);
    const auto& rows = p.dense[static_cast<size_t>(b)];
    std::vector<double> exact, exact_lse;
    reference<double>(c, {qf.begin(), qf.end()}, {rows.begin(), rows.end()}, len, scale, exact, exact_lse);
    std::vector<float> plain, plain_lse;
    reference<float>(c, qf, rows, len, static_cast<float>(scale), plain, plain_lse);
    for (size_t i = 0; i < exact.size(); ++i) {
      const double ours = from_bf16(r.out[static_cast<size_t>(b * c.Tq * c.H * c.nl) + i]);
      EXPECT_TRUE(std::isfinite(ours)) << "output " << i << " of sequence " << b << " unwritten or read a wrong row";
      if (!std::isfinite(ours)) return r;
      const double pl = from_bf16(to_bf16(plain[i]));
      num_ours += (ours - exact[i]) * (ours - exact[i]);
      num_plain += (pl - exact[i]) * (pl - exact[i]);
      den += exact[i] * exact[i];
    }
    for (size_t i = 0; i < exact_lse.size(); ++i) {
      EXPECT_NEAR(r.lse[static_cast<size_t>(b * c.H * c.Tq) + i], exact_lse[i], 1e-3 * std::abs(exact_lse[i]) + 1e-3)
          << "lse " << i << " of sequence " << b;
    }
  }
  r.ours = std::sqrt(num_ours / den);
  r.plain = std::sqrt(num_plain / den);
  return r;
}

TEST(CudaLatentDecode, Bf16IsAsAccurateAsAPlainBf16Computation) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  for (const Case& c : kCases) {
    for (cuda::LatentDecodeOptions opt : kSchedules) {
      SCOPED_TRACE(fmt::format("{} {}", name(c), name(opt)));
      opt.kernel = cuda::LatentDecodeKernel::CudaCores;
      const Bf16Run r = run_bf16(c, 6, opt);
      EXPECT_LE(r.ours, 2 * r.plain + 1e-6) << "ours " << r.ours << " against plain bf16 " << r.plain;
    }
  }
}

TEST(CudaLatentDecode, TensorCoreKernelIsAsAccurateAsAPlainBf16Computation) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  int run = 0;
  for (const Case& c : kTensorCoreCases) {
    for (cuda::LatentDecodeOptions opt : kTensorCoreSchedules) {
      SCOPED_TRACE(fmt::format("{} {}", name(c), name(opt)));
      opt.kernel = cuda::LatentDecodeKernel::TensorCores;
      // Every other run brings its own scratch, poisoned.
      const auto plan = cuda::plan_latent_decode<bf16>(
          cuda::PagedLatentDims{static_cast<int64_t>(c.lens.size()), c.H, c.Tq, c.nl, c.rope, c.page,
                                (*std::max_element(c.lens.begin(), c.lens.end()) + c.page - 1) / c.page},
          opt);
      EXPECT_EQ(plan.kernel, cuda::LatentDecodeKernel::TensorCores);
      DeviceBuffer ws(std::max<size_t>(plan.workspace_bytes, 1));
      ws.fill_bytes(0xFF);
      if (run++ % 2 == 1) opt.workspace = ws.get();
      const Bf16Run r = run_bf16(c, 7, opt);
      EXPECT_LE(r.ours, 2 * r.plain + 1e-6) << "ours " << r.ours << " against plain bf16 " << r.plain;
    }
  }
}

// Hopper's kernel (wgmma) on the tensor-core cases it runs (576/512 rows), held to the same bound.
TEST(CudaLatentDecode, WgmmaKernelIsAsAccurateAsAPlainBf16Computation) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  if (!cuda::warpgroup_mma_supported()) GTEST_SKIP() << "this GPU or build has no wgmma (compute capability 9.0, sm_90a)";
  int run = 0;
  for (const Case& c : kTensorCoreCases) {
    if (c.nl != 512 || c.rope != 64) continue;
    for (cuda::LatentDecodeOptions opt : kTensorCoreSchedules) {
      SCOPED_TRACE(fmt::format("{} {}", name(c), name(opt)));
      opt.kernel = cuda::LatentDecodeKernel::Wgmma;
      const auto plan = cuda::plan_latent_decode<bf16>(
          cuda::PagedLatentDims{static_cast<int64_t>(c.lens.size()), c.H, c.Tq, c.nl, c.rope, c.page,
                                (*std::max_element(c.lens.begin(), c.lens.end()) + c.page - 1) / c.page},
          opt);
      EXPECT_EQ(plan.kernel, cuda::LatentDecodeKernel::Wgmma);
      EXPECT_EQ(plan.rows_per_block, 64);
      DeviceBuffer ws(std::max<size_t>(plan.workspace_bytes, 1));
      ws.fill_bytes(0xFF);
      if (run++ % 2 == 1) opt.workspace = ws.get();
      const Bf16Run r = run_bf16(c, 7, opt);
      EXPECT_LE(r.ours, 2 * r.plain + 1e-6) << "ours " << r.ours << " against plain bf16 " << r.plain;
    }
  }
  // Sizes it has no kernel for are refused by name.
  cuda::LatentDecodeOptions opt;
  opt.kernel = cuda::LatentDecodeKernel::Wgmma;
  try {
    (void)cuda::plan_latent_decode<bf16>(cuda::PagedLatentDims{2, 8, 1, 32, 32, 16, 4}, opt);
    ADD_FAILURE() << "32/32 planned on the wgmma kernel";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("512/64"), std::string::npos) << e.what();
  }
}

TEST(CudaLatentDecode, AutoPicksTheTensorCoresForBf16AtTheirSizes) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  using cuda::LatentDecodeKernel;
  cuda::PagedLatentDims d{128, 128, 1, 512, 64, 64, 64};
  EXPECT_TRUE(cuda::latent_decode_tc_supports(512, 64));
  EXPECT_FALSE(cuda::latent_decode_tc_supports(40, 0));
  EXPECT_TRUE(cuda::latent_decode_tc_supports(32, 0));  // d12_flash_mla's rows
  const auto tc = cuda::plan_latent_decode<bf16>(d);
  EXPECT_EQ(tc.kernel, LatentDecodeKernel::TensorCores);
  EXPECT_EQ(tc.rows_per_block, 64);  // the emulated GPU has an H100's shared memory: wide tiles
  EXPECT_GE(tc.blocks_per_sm, 1);
  EXPECT_GT(tc.shared_bytes, 100u * 1024);
  // Balanced by default: room for the 128 sequences plus a wave of the GPU's blocks (132 SMs, one
  // block each, 2 row blocks a chunk), with their partial results.
  EXPECT_EQ(tc.schedule, cuda::LatentSchedule::Balanced);
  EXPECT_EQ(tc.splits, 0);
  EXPECT_EQ(tc.chunk_slots, 128 + (132 * tc.blocks_per_sm + 1) / 2);
  EXPECT_GE(tc.workspace_bytes, static_cast<size_t>(tc.chunk_slots) * 128 * (512 + 1) * sizeof(float));
  // Uniform: 128 sequences × 2 row blocks fill the 132 SMs twice over: one split, no scratch.
  cuda::LatentDecodeOptions uniform;
  uniform.schedule = cuda::LatentSchedule::Uniform;
  const auto tc_uniform = cuda::plan_latent_decode<bf16>(d, uniform);
  EXPECT_EQ(tc_uniform.schedule, cuda::LatentSchedule::Uniform);
  EXPECT_EQ(tc_uniform.splits, 1);
  EXPECT_EQ(tc_uniform.workspace_bytes, 0u);
  EXPECT_EQ(cuda::plan_latent_decode<float>(d).kernel, LatentDecodeKernel::CudaCores);
  cuda::LatentDecodeOptions cores;
  cores.kernel = LatentDecodeKernel::CudaCores;
  EXPECT_EQ(cuda::plan_latent_decode<bf16>(d, cores).kernel, LatentDecodeKernel::CudaCores);
  // A split count asks for the uniform schedule; the balanced one refuses it by name.
  cuda::LatentDecodeOptions three;
  three.splits = 3;
  EXPECT_EQ(cuda::plan_latent_decode<bf16>(d, three).schedule, cuda::LatentSchedule::Uniform);
  EXPECT_EQ(cuda::plan_latent_decode<bf16>(d, three).splits, 3);
  three.schedule = cuda::LatentSchedule::Balanced;
  try {
    (void)cuda::plan_latent_decode<bf16>(d, three);
    ADD_FAILURE() << "the balanced schedule took a split count";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("uniform schedule"), std::string::npos) << e.what();
  }
  // One long sequence: split along its cache, with scratch for the partial results; balanced has
  // room for at least the uniform choice's splits, at most 64.
  d.B = 1;
  d.max_pages = 512;
  const auto one = cuda::plan_latent_decode<bf16>(d, uniform);
  EXPECT_GT(one.splits, 16);
  EXPECT_GE(one.workspace_bytes, static_cast<size_t>(one.splits) * 128 * (512 + 1) * sizeof(float));
  const auto one_balanced = cuda::plan_latent_decode<bf16>(d);
  EXPECT_GE(one_balanced.chunk_slots, one.splits);
  EXPECT_LE(one_balanced.chunk_slots, 64);
  cuda::LatentDecodeOptions forced;
  forced.kernel = LatentDecodeKernel::TensorCores;
  d.n_latent = 40;
  try {
    (void)cuda::plan_latent_decode<bf16>(d, forced);
    ADD_FAILURE() << "the tensor-core kernel accepted n_latent 40";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("512/64, 32/32 or 32/0"), std::string::npos) << e.what();
  }
  d.n_latent = 512;
  EXPECT_THROW((void)cuda::plan_latent_decode<float>(d, forced), Error);
}

TEST(CudaLatentDecode, SplitChoiceFillsTheGpuWithoutWastingWaves) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  // Enough blocks for every slot: no split (each costs a query load and a combine).
  EXPECT_EQ(cuda::choose_latent_splits(256, 512, 132), 1);
  EXPECT_EQ(cuda::choose_latent_splits(1000, 16, 132), 1);
  // One sequence over 132 slots: split as far as the pages allow, never further.
  EXPECT_EQ(cuda::choose_latent_splits(1, 8, 132), 8);
  EXPECT_EQ(cuda::choose_latent_splits(1, 1, 132), 1);
  const int s = cuda::choose_latent_splits(2, 512, 132);
  EXPECT_GE(s, 32);
  EXPECT_LE(2 * s, 132);  // one wave
  // 100 blocks leave a quarter of 132 slots idle; five splits make 500 blocks, four nearly full
  // waves of 13 pages each instead of one wave of 64.
  EXPECT_EQ(cuda::choose_latent_splits(100, 64, 132), 5);
  EXPECT_THROW((void)cuda::choose_latent_splits(0, 1, 1), Error);
}

// The balanced schedule, made on the GPU from the lengths there, is the host's choice
// (choose_latent_chunks) on batches of equal, skewed, tiny and random lengths, at DeepSeek's decode
// sizes (2 row blocks a chunk) and at a single row block; and it cuts a long sequence among short
// ones where the uniform schedule, sized by the longest, would leave it to one block.
TEST(CudaLatentDecode, BalancedScheduleOnTheGpuIsTheHostsChoice) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  Rng rng(11);
  std::vector<std::pair<std::string, std::vector<int32_t>>> batches;
  batches.emplace_back("equal", std::vector<int32_t>(128, 4096));
  std::vector<int32_t> skewed(128, 1024);
  skewed[37] = 32768;
  batches.emplace_back("one long", skewed);
  batches.emplace_back("one token each", std::vector<int32_t>(300, 1));
  std::vector<int32_t> random(200);
  for (int32_t& n : random) n = 1 + static_cast<int32_t>(rng.next_u64() % 20000);
  batches.emplace_back("random", random);
  batches.emplace_back("alone", std::vector<int32_t>{5000});
  for (int64_t heads : {128, 16}) {
    for (const auto& [what, lens] : batches) {
      SCOPED_TRACE(fmt::format("{} heads, {}", heads, what));
      const int64_t B = static_cast<int64_t>(lens.size()), page = 64;
      const int32_t longest = *std::max_element(lens.begin(), lens.end());
      const cuda::PagedLatentDims d{B, heads, 1, 512, 64, page, (longest + page - 1) / page};
      cuda::LatentDecodeOptions opt;
      const cuda::LatentDecodePlan plan = cuda::plan_latent_decode<bf16>(d, opt);
      ASSERT_EQ(plan.schedule, cuda::LatentSchedule::Balanced);
      DeviceBuffer ws(plan.workspace_bytes), glen(lens.size() * 4);
      ws.fill_bytes(0xFF);
      glen.upload(lens.data(), lens.size() * 4);
      opt.workspace = ws.get();
      cuda::latent_decode_schedule<bf16>(d, glen.as<const int32_t>(), opt);
      const cuda::LatentChunks got = cuda::read_latent_schedule(ws.get());
      std::vector<int64_t> pages;
      for (int32_t n : lens) pages.push_back((n + page - 1) / page);
      const int64_t groups = (heads + plan.rows_per_block - 1) / plan.rows_per_block;
      const cuda::LatentChunks want =
          cuda::choose_latent_chunks(pages, groups, 132 * std::max(1, plan.blocks_per_sm), plan.chunk_slots);
      EXPECT_EQ(got.chunk_pages, want.chunk_pages);
      EXPECT_EQ(got.chunks, want.chunks);
      EXPECT_EQ(got.cut, want.cut);
      EXPECT_EQ(got.whole, want.whole);
      EXPECT_LE(got.chunks, plan.chunk_slots);
      int64_t chunks = 0, cut = 0, whole = 0;  // the header agrees with its own chunk size
      for (int64_t p : pages) {
        chunks += (p + got.chunk_pages - 1) / got.chunk_pages;
        cut += p > got.chunk_pages ? 1 : 0;
        whole += p / got.chunk_pages;
      }
      EXPECT_EQ(got.chunks, chunks);
      EXPECT_EQ(got.cut, cut);
      EXPECT_EQ(got.whole, whole);
      // The launch order: every whole chunk (a full chunk_pages of its sequence), then the shorter
      // last chunks; each sequence's chunks have their partial slots side by side from its first.
      std::vector<int32_t> ints(static_cast<size_t>(4 + 2 * B + 1 + 3 * plan.chunk_slots));
      ws.download(ints.data(), ints.size() * 4);
      const int32_t* first = ints.data() + 4;
      const int32_t* items = ints.data() + 4 + 2 * B + 1;
      std::vector<int> seen(static_cast<size_t>(got.chunks), 0);
      for (int64_t at = 0; at < got.chunks; ++at) {
        const int32_t b = items[3 * at], j = items[3 * at + 1], slot = items[3 * at + 2];
        ASSERT_TRUE(b >= 0 && b < B && j >= 0 && slot >= 0 && slot < got.chunks) << "item " << at;
        const bool full = (j + 1) * got.chunk_pages <= pages[static_cast<size_t>(b)];
        EXPECT_EQ(full, at < got.whole) << "item " << at << ": sequence " << b << " chunk " << j;
        EXPECT_EQ(slot, first[b] + j) << "item " << at;
        ++seen[static_cast<size_t>(slot)];
      }
      EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), got.chunks) << "every partial slot once";
      if (what == "one long") {
        // The 512-page sequence is cut finer than the uniform choice (sized for the table's width
        // over 256 blocks: one split) would; the 16-page ones stay whole.
        EXPECT_LT(got.chunk_pages, 512);
        EXPECT_GE(got.chunk_pages, 16);
        EXPECT_EQ(got.cut, 1);
      }
      if (what == "alone") {
        EXPECT_GT(got.cut, 0);  // one sequence is spread over the GPU
      }
      if (what == "one token each") {
        EXPECT_EQ(got.chunks, B);
      }
    }
  }
  // The host's arithmetic, by hand: one sequence of 512 pages among 127 of 16, 2 row blocks a
  // chunk, 132 slots, room for 194 chunks. Chunks of 16 pages make 32 + 127 = 159 chunks, 318
  // blocks, 3 waves: 3 · 17 + 2 = 53 page-steps, against 2 waves of 513 uncut; 8 pages would make
  // 318 chunks (no room).
  std::vector<int64_t> pages(128, 16);
  pages[0] = 512;
  const cuda::LatentChunks c = cuda::choose_latent_chunks(pages, 2, 132, 194);
  EXPECT_EQ(c.chunk_pages, 16);
  EXPECT_EQ(c.chunks, 159);
  EXPECT_EQ(c.cut, 1);
  EXPECT_EQ(cuda::choose_latent_chunks(pages, 2, 132, 400).chunk_pages, 8);  // 5 waves · 9 + 2 = 47
  EXPECT_THROW((void)cuda::choose_latent_chunks(pages, 2, 132, 100), Error);  // fewer slots than sequences
}

// A batch whose balanced schedule launches a cut sequence's short last chunk after every whole
// chunk of the others (so launch order and partial slots differ): a wave of 2-page sequences
// behind one of 7 pages, cut into chunks of 2 (3 whole, 1 short). fp32 within 1e-5 of the CPU.
TEST(CudaLatentDecode, ShortLastChunksRunLastAndCombineInTheirSequencesSlots) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  const int64_t H = 16, nl = 32, page = 4;
  cuda::LatentDecodeOptions opt;
  opt.kernel = cuda::LatentDecodeKernel::CudaCores;
  const auto probe = cuda::plan_latent_decode<float>(cuda::PagedLatentDims{1, H, 1, nl, 0, page, 7}, opt);
  const int64_t slots = 132 * std::max(1, probe.blocks_per_sm);  // one row group a chunk (16 rows)
  Case c{H, 1, nl, 0, page, std::vector<int32_t>(static_cast<size_t>(slots + 1), 2 * page)};
  c.lens[0] = 7 * page - 1;  // 7 pages, the last one not full
  const int64_t B = static_cast<int64_t>(c.lens.size());
  std::vector<int64_t> pages(static_cast<size_t>(B), 2);
  pages[0] = 7;
  const cuda::PagedLatentDims d{B, H, 1, nl, 0, page, 7};
  const cuda::LatentDecodePlan plan = cuda::plan_latent_decode<float>(d, opt);
  const cuda::LatentChunks want = cuda::choose_latent_chunks(pages, 1, slots, plan.chunk_slots);
  ASSERT_EQ(want.chunk_pages, 2) << "the case no longer makes short last chunks";
  ASSERT_EQ(want.cut, 1);
  Rng rng(13);
  const Paged p = make_paged(c, rng, false);
  std::vector<float> q(static_cast<size_t>(B * H * nl));
  for (float& x : q) x = static_cast<float>(rng.normal());
  const float scale = 1.0f / std::sqrt(static_cast<float>(nl));
  DeviceBuffer gq(q.size() * 4), gpool(p.pool.size() * 4), gtab(p.table.size() * 4), glen(c.lens.size() * 4);
  DeviceBuffer gout(q.size() * 4), glse(static_cast<size_t>(B * H) * 4), ws(plan.workspace_bytes);
  gq.upload(q.data(), q.size() * 4);
  gpool.upload(p.pool.data(), p.pool.size() * 4);
  gtab.upload(p.table.data(), p.table.size() * 4);
  glen.upload(c.lens.data(), c.lens.size() * 4);
  gout.fill_bytes(0xFF);
  ws.fill_bytes(0xFF);
  opt.workspace = ws.get();
  cuda::latent_decode_paged(d, scale, gq.as<const float>(), gpool.as<const float>(), gtab.as<const int32_t>(),
                            glen.as<const int32_t>(), gout.as<float>(), glse.as<float>(), opt);
  const cuda::LatentChunks got = cuda::read_latent_schedule(ws.get());
  EXPECT_EQ(got.chunk_pages, 2);
  EXPECT_EQ(got.whole, B + 2);  // 3 of sequence 0's 4 chunks, and every 2-page sequence
  std::vector<float> out(q.size());
  gout.download(out.data(), out.size() * 4);
  for (int64_t b : {int64_t{0}, int64_t{1}, B / 2, B - 1}) {
    SCOPED_TRACE(fmt::format("sequence {}", b));
    std::vector<float> qb(q.begin() + b * H * nl, q.begin() + (b + 1) * H * nl), o, l;
    reference<float>(c, qb, p.dense[static_cast<size_t>(b)], c.lens[static_cast<size_t>(b)], scale, o, l);
    for (size_t i = 0; i < o.size(); ++i) {
      ASSERT_NEAR(out[static_cast<size_t>(b * H * nl) + i], o[i], 1e-5 * (1 + std::abs(o[i]))) << "output " << i;
    }
  }
}

// A schedule made ahead serves later calls over the same lengths (schedule_ready), as a model's
// layers share one; a call without it makes its own.
TEST(CudaLatentDecode, ScheduleMadeAheadServesLaterCalls) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  const Case c{8, 2, 32, 32, 16, {2, 3, 700, 5, 64, 2}};
  const int64_t B = static_cast<int64_t>(c.lens.size());
  const cuda::PagedLatentDims d{B, c.H, c.Tq, c.nl, c.rope, c.page, (700 + c.page - 1) / c.page};
  cuda::LatentDecodeOptions opt;
  const cuda::LatentDecodePlan plan = cuda::plan_latent_decode<bf16>(d, opt);
  DeviceBuffer ws(plan.workspace_bytes), glen(c.lens.size() * 4);
  ws.fill_bytes(0xFF);
  glen.upload(c.lens.data(), c.lens.size() * 4);
  opt.workspace = ws.get();
  cuda::latent_decode_schedule<bf16>(d, glen.as<const int32_t>(), opt);
  const cuda::LatentChunks made = cuda::read_latent_schedule(ws.get());
  EXPECT_GT(made.cut, 0);  // the 44-page sequence is cut; the result below goes through the combine
  EXPECT_LT(made.cut, B);
  opt.schedule_ready = true;
  const Bf16Run ready = run_bf16(c, 9, opt);
  EXPECT_LE(ready.ours, 2 * ready.plain + 1e-6) << "ours " << ready.ours << " against plain bf16 " << ready.plain;
  opt.schedule_ready = false;
  const Bf16Run fresh = run_bf16(c, 9, opt);
  EXPECT_EQ(ready.out, fresh.out);
  // The uniform schedule's result agrees to bf16 rounding (its splits differ).
  const Bf16Run uniform = run_bf16(c, 9, with_schedule(cuda::LatentSchedule::Uniform, 0));
  EXPECT_LE(uniform.ours, 2 * uniform.plain + 1e-6);
  // Without a workspace there is nothing to make a schedule in ahead.
  cuda::LatentDecodeOptions none;
  EXPECT_THROW(cuda::latent_decode_schedule<bf16>(d, glen.as<const int32_t>(), none), Error);
  EXPECT_THROW(cuda::latent_decode_schedule<bf16>(d, glen.as<const int32_t>(),
                                                  with_schedule(cuda::LatentSchedule::Uniform, 0)),
               Error);
}

// The benchmark checks before it times: a tiny case runs both kernels and reports sane figures.
TEST(CudaLatentDecode, BenchmarkChecksThenTimes) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  for (auto kernel : {cuda::LatentDecodeKernel::TensorCores, cuda::LatentDecodeKernel::CudaCores}) {
    cuda::LatentDecodeBenchCase c;
    c.dims = cuda::PagedLatentDims{3, 8, 2, 32, 32, 16, 1};
    c.context = 70;
    c.options.kernel = kernel;
    c.repeats = 2;
    const cuda::LatentDecodeBenchResult r = cuda::bench_latent_decode(c);
    EXPECT_EQ(r.plan.kernel, kernel);
    EXPECT_GT(r.ms, 0.0);
    EXPECT_GT(r.gbps, 0.0);
    EXPECT_GT(r.copy_gbps, 0.0);
    EXPECT_GT(r.tflops, 0.0);
    EXPECT_LT(r.max_rel_err, 2e-2);
    EXPECT_GT(r.max_rel_err, 0.0);  // bf16 outputs: exact agreement would mean nothing was compared
    // Cache rows (3 × 70 × 64 bf16), queries, outputs, lse and the block table.
    EXPECT_DOUBLE_EQ(r.bytes, 3.0 * 70 * 64 * 2 + 3 * 2 * 8 * 64 * 2 + 3 * 2 * 8 * 32 * 2 + 3 * 2 * 8 * 4 + 3 * 5 * 4);
  }
  // Sequences of their own lengths, balanced: the bytes count what they hold, and the schedule
  // it reports is the one its calls made (the 70-token sequence cut, the 3-token one whole).
  cuda::LatentDecodeBenchCase mixed;
  mixed.dims = cuda::PagedLatentDims{3, 8, 2, 32, 32, 16, 1};
  mixed.context = 70;
  mixed.lengths = {70, 20, 3};
  mixed.repeats = 2;
  const cuda::LatentDecodeBenchResult m = cuda::bench_latent_decode(mixed);
  EXPECT_EQ(m.plan.schedule, cuda::LatentSchedule::Balanced);
  EXPECT_GT(m.chunks.chunk_pages, 0);
  EXPECT_LT(m.chunks.chunk_pages, 5);  // the longest holds 5 pages and one wave has room to spare
  EXPECT_GE(m.chunks.cut, 1);
  EXPECT_EQ(m.chunks.chunks, (5 + m.chunks.chunk_pages - 1) / m.chunks.chunk_pages +
                                 (2 + m.chunks.chunk_pages - 1) / m.chunks.chunk_pages + 1);
  EXPECT_LT(m.max_rel_err, 2e-2);
  EXPECT_DOUBLE_EQ(m.bytes, 93.0 * 64 * 2 + 3 * 2 * 8 * 64 * 2 + 3 * 2 * 8 * 32 * 2 + 3 * 2 * 8 * 4 + 3 * 5 * 4);
  cuda::LatentDecodeBenchCase bad;
  bad.context = 0;
  EXPECT_THROW((void)cuda::bench_latent_decode(bad), Error);
  mixed.lengths = {70, 1, 3};  // shorter than its 2 new tokens
  EXPECT_THROW((void)cuda::bench_latent_decode(mixed), Error);
  mixed.lengths = {70, 3};  // one short
  EXPECT_THROW((void)cuda::bench_latent_decode(mixed), Error);
}

TEST(CudaLatentDecode, RejectsBadSizes) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  cuda::PagedLatentDims d;
  d.n_latent = 1024;
  EXPECT_THROW(cuda::latent_decode_paged<float>(d, 1.0f, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr), Error);
  d.n_latent = 512;
  d.page_size = 0;
  EXPECT_THROW(cuda::latent_decode_paged<float>(d, 1.0f, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr), Error);
  // The tensor-core kernel reads 16-byte pieces: misaligned queries are refused, not misread.
  d.page_size = 64;
  DeviceBuffer buf(4096);
  cuda::LatentDecodeOptions opt;
  opt.kernel = cuda::LatentDecodeKernel::TensorCores;
  opt.splits = 1;
  const auto* base = buf.as<const bf16>();
  EXPECT_THROW(cuda::latent_decode_paged<bf16>(d, 1.0f, base + 1, base, buf.as<const int32_t>(),
                                               buf.as<const int32_t>(), buf.as<bf16>(), buf.as<float>(), opt),
               Error);
}

}  // namespace
}  // namespace flashgpt
