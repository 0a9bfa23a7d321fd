// The training step's GPU ops (cuda/ops_cuda.h) against their CPU twins (ops/*.h) on the same
// inputs: fp32 within 1e-5 relative to the largest value; bf16 within twice the error of a plain
// bf16 computation (fp32 arithmetic on the bf16 inputs, rounded to bf16) against fp64. Outputs
// are poisoned (NaN) before each run; sizes include 1, odd widths and widths past a warp's stride.
// Skipped without a GPU; the simt build runs them on the CPU emulator.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda/stream.h"
#include "flashgpt/core/device.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/kernel_times.h"
#include "flashgpt/cuda/matmul_cuda.h"
#include "flashgpt/cuda/ops_bench_cuda.h"
#include "flashgpt/cuda/ops_cuda.h"
#include "flashgpt/ops/activation.h"
#include "flashgpt/ops/adamw.h"
#include "flashgpt/ops/cross_entropy.h"
#include "flashgpt/ops/elementwise.h"
#include "flashgpt/ops/embedding.h"
#include "flashgpt/ops/matmul.h"
#include "flashgpt/ops/norm.h"
#include "flashgpt/ops/rope.h"
#include "testing/bf16.h"
#include "testing/device_buffers.h"
#include "testing/errors.h"
#include "testing/relative_error.h"
#include "testing/schedule.h"

namespace flashgpt {
namespace {

using cuda::bf16;
using cuda::DeviceBuffer;
using testing::round_bf16;
using testing::from_bf16;
using testing::to_bf16;
using testing::down_as;
using testing::poisoned;
using testing::up;
using testing::up_as;
using testing::up_bf16;

#define SKIP_WITHOUT_GPU() \
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none

// max |a − b| / max(1, max |b|); NaN or infinity (unwritten) fails.
double rel_error(const std::vector<float>& a, const std::vector<double>& b) {
  double scale = 1.0, worst = 0.0;
  for (double x : b) scale = std::max(scale, std::abs(x));
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return std::numeric_limits<double>::infinity();
    worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  return worst / scale;
}
double rel_error(const std::vector<float>& a, const std::vector<float>& b) {
  return rel_error(a, std::vector<double>(b.begin(), b.end()));
}

struct Data {
  Rng rng{1234};
  std::vector<float> normal(size_t n, double sd = 1.0) {
    std::vector<float> v(n);
    for (float& x : v) x = static_cast<float>(rng.normal() * sd);
    return v;
  }
};


// The memory-bound kernels move 16-byte packs where every pointer is 16-byte aligned and the
// length (or row width) a whole number of packs, else one element at a time (cuda/packed.h).
// Skewed places values `skew` elements past an aligned start: skew 0 takes the packed path, skew 1
// (2 or 4 bytes off) the other, on the same values.
template <typename T>
struct Skewed {
  DeviceBuffer buf;
  size_t skew, n;
  Skewed(const std::vector<float>& h, size_t s) : skew(s), n(h.size()) {
    std::vector<float> padded(s, std::numeric_limits<float>::quiet_NaN());
    padded.insert(padded.end(), h.begin(), h.end());
    buf = up_as<T>(padded);
  }
  static Skewed poison(size_t n, size_t s) { return Skewed(std::vector<float>(n, std::nanf("")), s); }
  T* p() { return buf.as<T>() + skew; }
  std::vector<float> down() const {
    const auto all = down_as<T>(buf, skew + n);
    return {all.begin() + static_cast<std::ptrdiff_t>(skew), all.end()};
  }
};

template <typename T>
std::vector<float> as_stored(std::vector<float> v) {
  if constexpr (std::is_same_v<T, bf16>) v = round_bf16(std::move(v));
  return v;
}

// ---------------------------------------------------------------------------------------------
// KernelTimes names every launch, GEMM and copy queued while it records, counts them and times
// them; nothing outside a scope or inside a graph capture; a read starts afresh.
TEST(CudaOps, KernelTimesNameAndCountWhatTheScopeQueues) {
  SKIP_WITHOUT_GPU();
  const std::vector<float> h(1000, 1.0f);
  auto a = up(h), b = up(h), out = poisoned(h.size() * 4);
  DeviceBuffer m = testing::up({1, 2, 3, 4}), prod = testing::poisoned(4 * sizeof(float));
  cuda::KernelTimes times;
  cuda::add(out.as<float>(), a.as<const float>(), b.as<const float>(), 1000);  // before the scope: not timed
  {
    cuda::KernelTimesScope scope(times);
    for (int i = 0; i < 3; ++i) cuda::add(out.as<float>(), a.as<const float>(), b.as<const float>(), 1000);
    cuda::gemm<float, float>(false, true, 2, 2, 2, 1.0f, m.as<float>(), 2, m.as<float>(), 2, 0.0f, prod.as<float>(), 2);
    out.fill_bytes(0);
    const cuda::Stream stream;
    cuda::Graph graph;
    graph.capture(stream.get(), [&] { cuda::add(out.as<float>(), a.as<const float>(), b.as<const float>(), 1000); });
  }
  cuda::add(out.as<float>(), a.as<const float>(), b.as<const float>(), 1000);  // after: not timed
  const std::vector<cuda::KernelTime> got = times.read();
  auto find = [&](const std::string& name) -> const cuda::KernelTime* {
    for (const cuda::KernelTime& k : got)
      if (k.name == name) return &k;
    return nullptr;
  };
  ASSERT_EQ(got.size(), 3u) << "add, the GEMM and the memset";
  ASSERT_NE(find("add"), nullptr);
  EXPECT_EQ(find("add")->launches, 3) << "the captured launch is not timed";
  ASSERT_NE(find("cuBLASLt GEMM 2×2×2 Bᵀ"), nullptr);
  EXPECT_EQ(find("cuBLASLt GEMM 2×2×2 Bᵀ")->launches, 1);
  ASSERT_NE(find("memset"), nullptr);
  for (const cuda::KernelTime& k : got) EXPECT_GE(k.ms, 0.0) << k.name;
  for (size_t i = 1; i < got.size(); ++i) EXPECT_GE(got[i - 1].ms, got[i].ms) << "longest first";
  EXPECT_TRUE(times.read().empty()) << "a read starts afresh";
}

TEST(CudaOps, ElementwiseAddAndConvert) {
  SKIP_WITHOUT_GPU();
  Data data;
  for (int64_t n : {1, 255, 1000}) {
    SCOPED_TRACE("n " + std::to_string(n));
    const auto a = data.normal(static_cast<size_t>(n)), b = data.normal(static_cast<size_t>(n));
    std::vector<float> want(a.size());
    ops::add(want.data(), a.data(), b.data(), n);
    auto da = up(a), db = up(b), out = poisoned(a.size() * 4);
    cuda::add(out.as<float>(), da.as<const float>(), db.as<const float>(), n);
    EXPECT_EQ(rel_error(down_as<float>(out, a.size()), want), 0.0);
    cuda::add_inplace(da.as<float>(), db.as<const float>(), n);
    EXPECT_EQ(rel_error(down_as<float>(da, a.size()), want), 0.0);
    // fp32 → bf16 rounds to nearest even, and back is exact.
    auto half = poisoned(a.size() * 2), back = poisoned(a.size() * 4);
    cuda::convert(half.as<bf16>(), db.as<const float>(), n);
    cuda::convert(back.as<float>(), half.as<const bf16>(), n);
    EXPECT_EQ(rel_error(down_as<float>(back, a.size()), round_bf16(b)), 0.0);
  }
}

// Column sums of fp32 and bf16 rows, packed (OC a whole number of packs) or not, skewed or not.
template <typename T>
void check_bias_gradient() {
  Data data;
  for (auto [N, OC] : {std::pair<int64_t, int64_t>{1, 1}, {37, 45}, {300, 70}, {300, 64}, {129, 256}}) {
    for (size_t skew : {0, 1}) {
      SCOPED_TRACE("N " + std::to_string(N) + " OC " + std::to_string(OC) + " skew " + std::to_string(skew));
      const auto dout = as_stored<T>(data.normal(static_cast<size_t>(N * OC)));
      const auto prior = data.normal(static_cast<size_t>(OC));
      std::vector<double> want(prior.begin(), prior.end());
      for (int64_t r = 0; r < N; ++r)
        for (int64_t c = 0; c < OC; ++c) want[static_cast<size_t>(c)] += dout[static_cast<size_t>(r * OC + c)];
      Skewed<T> ddo(dout, skew);
      auto db = up(prior);
      cuda::bias_backward(db.as<float>(), ddo.p(), N, OC);
      EXPECT_LT(rel_error(down_as<float>(db, prior.size()), want), 1e-5);
    }
  }
}

TEST(CudaOps, BiasGradientSumsColumns) {
  SKIP_WITHOUT_GPU();
  check_bias_gradient<float>();
  check_bias_gradient<bf16>();
}

TEST(CudaOps, BiasIsAddedToEveryRow) {
  SKIP_WITHOUT_GPU();
  Data data;
  for (auto [N, OC] : {std::pair<int64_t, int64_t>{1, 1}, {37, 45}}) {
    const auto out0 = data.normal(static_cast<size_t>(N * OC)), bias = data.normal(static_cast<size_t>(OC));
    std::vector<double> want(out0.begin(), out0.end());
    for (int64_t r = 0; r < N; ++r)
      for (int64_t c = 0; c < OC; ++c) want[static_cast<size_t>(r * OC + c)] += bias[static_cast<size_t>(c)];
    auto dout = up(out0), db = up(bias);
    cuda::add_bias(dout.as<float>(), db.as<const float>(), N, OC);
    EXPECT_LT(rel_error(down_as<float>(dout, out0.size()), want), 1e-6) << N << "x" << OC;
  }
}

// MLA's shared rope key into every head's key, and its gradient back, on heads wider than the slice.
template <typename T>
void check_head_slices() {
  Data data;
  using Case = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>;  // N, H, stride, offset, width
  for (auto [N, H, stride, offset, width] : {Case{1, 1, 4, 0, 4}, Case{7, 3, 96, 64, 32}, Case{33, 5, 20, 13, 7}}) {
    SCOPED_TRACE("N " + std::to_string(N) + " H " + std::to_string(H) + " offset " + std::to_string(offset));
    const auto src = round_bf16(data.normal(static_cast<size_t>(N * width)));
    const auto heads = round_bf16(data.normal(static_cast<size_t>(N * H * stride)));
    auto at = [&](int64_t n, int64_t h, int64_t i) { return static_cast<size_t>((n * H + h) * stride + offset + i); };
    // broadcast: the slice of every head is the source row; the rest of each head is untouched.
    std::vector<double> want(heads.begin(), heads.end());
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < width; ++i) want[at(n, h, i)] = src[static_cast<size_t>(n * width + i)];
    auto d_heads = up_as<T>(heads), d_src = up_as<T>(src);
    cuda::broadcast_to_heads(d_heads.template as<T>(), d_src.template as<const T>(), N, H, stride, offset, width);
    EXPECT_EQ(rel_error(down_as<T>(d_heads, heads.size()), want), 0.0);
    // sum: in fp32, rounded once (bf16), against fp64.
    auto d_sum = poisoned(static_cast<size_t>(N * width) * sizeof(T));
    std::vector<double> sum(static_cast<size_t>(N * width), 0.0);
    std::vector<float> plain(sum.size());
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t i = 0; i < width; ++i) {
        float f = 0;
        for (int64_t h = 0; h < H; ++h) {
          sum[static_cast<size_t>(n * width + i)] += heads[at(n, h, i)];
          f += heads[at(n, h, i)];
        }
        plain[static_cast<size_t>(n * width + i)] = std::is_same_v<T, bf16> ? round_bf16(f) : f;
      }
    }
    auto d_grad = up_as<T>(heads);
    cuda::sum_over_heads(d_sum.template as<T>(), d_grad.template as<const T>(), N, H, stride, offset, width);
    EXPECT_LE(rel_error(down_as<T>(d_sum, sum.size()), sum), std::max(2 * rel_error(plain, sum), 1e-6));
  }
}

TEST(CudaOps, HeadSlicesBroadcastAndSum) {
  SKIP_WITHOUT_GPU();
  check_head_slices<float>();
  check_head_slices<bf16>();
}

// The decode cache's appends: a block of rows into a wider, longer destination, batch by batch;
// everything outside the copied block is left as it was.
template <typename T>
void check_copy_rows() {
  Data data;
  using Case = std::tuple<int64_t, int64_t, int64_t>;  // batches, rows, width
  for (auto [batches, rows, width] : {Case{1, 1, 1}, Case{3, 5, 7}, Case{2, 33, 64}}) {
    SCOPED_TRACE("batches " + std::to_string(batches) + " rows " + std::to_string(rows) + " width " +
                 std::to_string(width));
    const int64_t src_ld = width + 3, src_batch = rows * src_ld + 1;  // padded source rows and batches
    const int64_t dst_ld = width + 11, dst_batch = (rows + 4) * dst_ld, at = 2 * dst_ld + 5;
    const auto src = round_bf16(data.normal(static_cast<size_t>(batches * src_batch)));
    const auto dst = round_bf16(data.normal(static_cast<size_t>(batches * dst_batch)));
    std::vector<double> want(dst.begin(), dst.end());
    for (int64_t b = 0; b < batches; ++b)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < width; ++i)
          want[static_cast<size_t>(b * dst_batch + at + r * dst_ld + i)] = src[static_cast<size_t>(b * src_batch + r * src_ld + i)];
    auto d_dst = up_as<T>(dst), d_src = up_as<T>(src);
    cuda::copy_rows(d_dst.template as<T>() + at, dst_batch, dst_ld, d_src.template as<const T>(), src_batch, src_ld,
                    batches, rows, width);
    EXPECT_EQ(rel_error(down_as<T>(d_dst, dst.size()), want), 0.0);
  }
}

TEST(CudaOps, CopyRowsCopiesAStridedBlock) {
  SKIP_WITHOUT_GPU();
  check_copy_rows<float>();
  check_copy_rows<bf16>();
}

// Each batch's block at its own first row (the cache appends of sequences at different lengths);
// a batch whose row is negative is left alone.
TEST(CudaOps, CopyRowsPlacesEachBatchAtItsOwnRow) {
  SKIP_WITHOUT_GPU();
  Data data;
  const int64_t batches = 4, rows = 2, width = 9, dst_ld = 12, dst_batch = 10 * dst_ld;
  const std::vector<int32_t> row0 = {0, 7, -1, 3};
  const auto src = data.normal(static_cast<size_t>(batches * rows * width));
  const auto dst = data.normal(static_cast<size_t>(batches * dst_batch));
  std::vector<double> want(dst.begin(), dst.end());
  for (int64_t b = 0; b < batches; ++b) {
    if (row0[static_cast<size_t>(b)] < 0) continue;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < width; ++i)
        want[static_cast<size_t>(b * dst_batch + (row0[static_cast<size_t>(b)] + r) * dst_ld + i)] =
            src[static_cast<size_t>((b * rows + r) * width + i)];
  }
  auto d_dst = up(dst), d_src = up(src);
  DeviceBuffer d_row0(row0.size() * 4);
  d_row0.upload(row0.data(), row0.size() * 4);
  cuda::copy_rows(d_dst.as<float>(), dst_batch, dst_ld, d_src.as<const float>(), rows * width, width, batches, rows,
                  width, d_row0.as<const int32_t>());
  EXPECT_EQ(rel_error(down_as<float>(d_dst, dst.size()), want), 0.0);
}

// Two blocks in one launch (a decoding step's key and value appends, the latent cache's c_kv and
// rope key): the bits of the two copies made one after the other, each with its own widths,
// strides and pointers over the same batches, rows and row offsets (a batch with a negative row
// left alone), and a second block of width 0 copying nothing.
TEST(CudaOps, CopyRowsPairEqualsTwoCopies) {
  SKIP_WITHOUT_GPU();
  Data data;
  const int64_t batches = 4, rows = 3, dst_ld = 40, dst_batch = 9 * dst_ld;
  const std::vector<int32_t> to = {0, 5, -1, 2}, from = {1, 0, 2, 0};
  DeviceBuffer d_to(to.size() * 4), d_from(from.size() * 4);
  d_to.upload(to.data(), to.size() * 4);
  d_from.upload(from.data(), from.size() * 4);
  const auto src1 = data.normal(static_cast<size_t>(batches * 6 * 13)), src2 = data.normal(static_cast<size_t>(batches * 6 * 7));
  const auto dst = data.normal(static_cast<size_t>(batches * dst_batch));
  for (const int64_t width2 : {int64_t{5}, int64_t{0}}) {
    for (const bool offsets : {false, true}) {
      SCOPED_TRACE(std::string("second width ") + std::to_string(width2) + (offsets ? ", rows per batch" : ""));
      const int32_t* dr = offsets ? d_to.as<const int32_t>() : nullptr;
      const int32_t* sr = offsets ? d_from.as<const int32_t>() : nullptr;
      auto one = up(dst), two = up(dst), s1 = up(src1), s2 = up(src2);
      float* d = one.as<float>();
      // c_kv-like rows of 11 at column 0, rope-like rows of width2 after them, from sources with
      // their own row and batch strides.
      cuda::copy_rows(d, dst_batch, dst_ld, s1.as<const float>(), 6 * 13, 13, batches, rows, 11, dr, sr);
      if (width2 > 0) cuda::copy_rows(d + 11, dst_batch, dst_ld, s2.as<const float>(), 6 * 7, 7, batches, rows, width2, dr, sr);
      float* p = two.as<float>();
      cuda::copy_rows_pair<float>({p, dst_batch, dst_ld, s1.as<const float>(), 6 * 13, 13, 11},
                                  {p + 11, dst_batch, dst_ld, s2.as<const float>(), 6 * 7, 7, width2}, batches, rows, dr,
                                  sr);
      const auto want = down_as<float>(one, dst.size()), got = down_as<float>(two, dst.size());
      EXPECT_EQ(got, want);
      EXPECT_NE(want, dst) << "the copies must change something";
    }
  }
}

// Each batch's rows read from its own first row (the classifier's gather of each sequence's last
// new token after a prefill of different lengths), and both indices together; a batch whose
// source row is negative is left alone.
TEST(CudaOps, CopyRowsReadsEachBatchFromItsOwnRow) {
  SKIP_WITHOUT_GPU();
  Data data;
  const int64_t batches = 5, rows = 2, width = 7, src_ld = 9, src_batch = 6 * src_ld, dst_ld = 8, dst_batch = 5 * dst_ld;
  const std::vector<int32_t> from = {0, 4, 2, -1, 1}, to = {3, 0, 1, 2, 0};
  const auto src = data.normal(static_cast<size_t>(batches * src_batch));
  const auto dst = data.normal(static_cast<size_t>(batches * dst_batch));
  DeviceBuffer d_from(from.size() * 4), d_to(to.size() * 4);
  d_from.upload(from.data(), from.size() * 4);
  d_to.upload(to.data(), to.size() * 4);
  for (bool both : {false, true}) {
    SCOPED_TRACE(both ? "source and destination rows" : "source rows");
    std::vector<double> want(dst.begin(), dst.end());
    for (int64_t b = 0; b < batches; ++b) {
      const int64_t f = from[static_cast<size_t>(b)], t = both ? to[static_cast<size_t>(b)] : 0;
      if (f < 0) continue;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < width; ++i)
          want[static_cast<size_t>(b * dst_batch + (t + r) * dst_ld + i)] =
              src[static_cast<size_t>(b * src_batch + (f + r) * src_ld + i)];
    }
    auto d_dst = up(dst), d_src = up(src);
    cuda::copy_rows(d_dst.as<float>(), dst_batch, dst_ld, d_src.as<const float>(), src_batch, src_ld, batches, rows,
                    width, both ? d_to.as<const int32_t>() : nullptr, d_from.as<const int32_t>());
    EXPECT_EQ(rel_error(down_as<float>(d_dst, dst.size()), want), 0.0);
  }
}

// ---------------------------------------------------------------------------------------------
template <typename T>
void check_embedding(bool positions, bool deterministic) {
  Data data;
  const int64_t B = 3, Tn = 17, C = 40, V = 11, P = 32, pos0 = 5;
  std::vector<int> tokens(static_cast<size_t>(B * Tn));
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int>((i * 7 + 3) % V);  // repeats: atomics collide
  const auto wte = round_bf16(data.normal(static_cast<size_t>(V * C)));
  const auto wpe = round_bf16(data.normal(static_cast<size_t>(P * C)));
  const auto dout = round_bf16(data.normal(static_cast<size_t>(B * Tn * C)));
  std::vector<float> want(dout.size());
  ops::embedding_forward(want.data(), tokens.data(), wte.data(), positions ? wpe.data() : nullptr, B, Tn, C, pos0);
  std::vector<float> dwte(wte.size(), 0.5f), dwpe(wpe.size(), -0.25f);
  auto dwte_want = dwte, dwpe_want = dwpe;
  ops::embedding_backward(dwte_want.data(), positions ? dwpe_want.data() : nullptr, dout.data(), tokens.data(), B, Tn,
                          C, pos0);

  DeviceBuffer dtok(tokens.size() * 4);
  dtok.upload(tokens.data(), tokens.size() * 4);
  DeviceBuffer gwte = up_as<T>(wte), gwpe = up_as<T>(wpe), gdout = up_as<T>(dout),
               out = poisoned(dout.size() * sizeof(T));
  cuda::embedding_forward(out.as<T>(), dtok.as<const int>(), gwte.as<const T>(),
                          positions ? gwpe.as<const T>() : nullptr, B, Tn, C, pos0);
  const auto got = down_as<T>(out, dout.size());
  // bf16: the sum of two bf16 values rounded once, as the plain computation does.
  EXPECT_LT(rel_error(got, std::is_same_v<T, bf16> ? round_bf16(want) : want), 1e-6);
  auto gdwte = up(dwte), gdwpe = up(dwpe);
  std::vector<int> rows, starts, ids;
  cuda::group_rows_by_token(tokens.data(), B * Tn, rows, starts, ids);
  DeviceBuffer grows(rows.size() * 4), gstarts(starts.size() * 4), gids(ids.size() * 4);
  grows.upload(rows.data(), rows.size() * 4);
  gstarts.upload(starts.data(), starts.size() * 4);
  gids.upload(ids.data(), ids.size() * 4);
  const cuda::TokenRuns runs{grows.as<int>(), gstarts.as<int>(), gids.as<int>(), static_cast<int64_t>(ids.size())};
  cuda::embedding_backward(gdwte.as<float>(), positions ? gdwpe.as<float>() : nullptr, gdout.as<const T>(),
                           dtok.as<const int>(), B, Tn, C, pos0, deterministic ? &runs : nullptr);
  EXPECT_LT(rel_error(down_as<float>(gdwte, dwte.size()), dwte_want), 1e-5);
  EXPECT_LT(rel_error(down_as<float>(gdwpe, dwpe.size()), dwpe_want), 1e-5);
}

TEST(CudaOps, EmbeddingForwardAndBackward) {
  SKIP_WITHOUT_GPU();
  for (bool positions : {true, false}) {
    for (bool deterministic : {false, true}) {
      SCOPED_TRACE(std::string(positions ? "learned positions" : "no position table") +
                   (deterministic ? ", rows grouped by token" : ", atomics"));
      check_embedding<float>(positions, deterministic);
      check_embedding<bf16>(positions, deterministic);
    }
  }
}

// Each sequence's rows at its own positions (decoding sequences of different lengths).
TEST(CudaOps, EmbeddingAndRopeTakePositionsPerSequence) {
  SKIP_WITHOUT_GPU();
  Data data;
  const int64_t B = 3, Tn = 2, C = 24, V = 7, P = 16, H = 2, D = 8;
  const std::vector<int32_t> pos = {0, 9, 4};
  std::vector<int> tokens(static_cast<size_t>(B * Tn));
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int>((i * 5 + 1) % V);
  const auto wte = data.normal(static_cast<size_t>(V * C)), wpe = data.normal(static_cast<size_t>(P * C));
  const auto x = data.normal(static_cast<size_t>(B * Tn * H * D));
  const ops::RopeTable<float> table(P, static_cast<int>(D), 10000.0);
  std::vector<float> emb_want(static_cast<size_t>(B * Tn * C)), rope_want = x;
  for (int64_t b = 0; b < B; ++b) {
    ops::embedding_forward(emb_want.data() + b * Tn * C, tokens.data() + b * Tn, wte.data(), wpe.data(), 1, Tn, C,
                           pos[static_cast<size_t>(b)]);
    ops::rope_forward_strided(rope_want.data() + b * Tn * H * D, table, 1, Tn, H, D, D, pos[static_cast<size_t>(b)]);
  }
  DeviceBuffer dtok(tokens.size() * 4), dpos(pos.size() * 4);
  dtok.upload(tokens.data(), tokens.size() * 4);
  dpos.upload(pos.data(), pos.size() * 4);
  auto gwte = up(wte), gwpe = up(wpe), gx = up(x), gcos = up(table.cos), gsin = up(table.sin);
  DeviceBuffer out = poisoned(emb_want.size() * sizeof(float));
  cuda::embedding_forward(out.as<float>(), dtok.as<const int>(), gwte.as<const float>(), gwpe.as<const float>(), B, Tn,
                          C, 0, dpos.as<const int32_t>());
  EXPECT_LT(rel_error(down_as<float>(out, emb_want.size()), emb_want), 1e-6);
  cuda::rope_forward(gx.as<float>(), gcos.as<const float>(), gsin.as<const float>(), B, Tn, H, D, D, 0,
                     dpos.as<const int32_t>());
  EXPECT_LT(rel_error(down_as<float>(gx, x.size()), rope_want), 1e-6);
}

TEST(CudaOps, RowsGroupedByTokenAscend) {
  const std::vector<int> tokens = {5, 2, 5, 9, 2, 5};
  std::vector<int> rows, starts, ids;
  cuda::group_rows_by_token(tokens.data(), static_cast<int64_t>(tokens.size()), rows, starts, ids);
  EXPECT_EQ(ids, (std::vector<int>{2, 5, 9}));
  EXPECT_EQ(starts, (std::vector<int>{0, 2, 5, 6}));
  EXPECT_EQ(rows, (std::vector<int>{1, 4, 0, 2, 5, 3}));
}

// ---------------------------------------------------------------------------------------------
struct NormCase {
  int64_t N, C;
};
// 300 rows: several chunks of the deterministic weight-gradient pass.
const std::vector<NormCase> kNormCases = {{1, 1}, {5, 31}, {33, 64}, {70, 200}, {9, 768}, {300, 40}};

TEST(CudaOps, NormsEqualTheCpuInFp32) {
  SKIP_WITHOUT_GPU();
  Data data;
  for (const NormCase& c : kNormCases) {
    for (bool layer : {true, false}) {
      SCOPED_TRACE(std::string(layer ? "layernorm" : "rmsnorm") + " N " + std::to_string(c.N) + " C " +
                   std::to_string(c.C));
      const size_t nc = static_cast<size_t>(c.N * c.C), cc = static_cast<size_t>(c.C), n = static_cast<size_t>(c.N);
      const auto x = data.normal(nc, 2.0), w = data.normal(cc), b = data.normal(cc), dy = data.normal(nc);
      const auto dx0 = data.normal(nc), dw0 = data.normal(cc), db0 = data.normal(cc);
      std::vector<float> y(nc), mean(n), rstd(n), dx = dx0, dw = dw0, db = db0;
      if (layer) {
        ops::layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), c.N, c.C, 1e-5f);
        ops::layernorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), mean.data(),
                                rstd.data(), c.N, c.C, true);
      } else {
        ops::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), c.N, c.C, 1e-5f);
        ops::rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), c.N, c.C, true);
      }
      auto gx = up(x), gw = up(w), gb = up(b), gdy = up(dy);
      auto gy = poisoned(nc * 4), gmean = poisoned(n * 4), grstd = poisoned(n * 4);
      if (layer) {
        cuda::layernorm_forward(gy.as<float>(), gmean.as<float>(), grstd.as<float>(), gx.as<const float>(),
                                gw.as<const float>(), gb.as<const float>(), c.N, c.C, 1e-5f);
        EXPECT_LT(rel_error(down_as<float>(gmean, n), mean), 1e-5);
      } else {
        cuda::rmsnorm_forward(gy.as<float>(), grstd.as<float>(), gx.as<const float>(), gw.as<const float>(), c.N, c.C,
                              1e-5f);
      }
      EXPECT_LT(rel_error(down_as<float>(gy, nc), y), 1e-5);
      EXPECT_LT(rel_error(down_as<float>(grstd, n), rstd), 1e-5);
      // The backward takes the CPU's statistics, so it is checked on its own, with the weight
      // gradients by atomics and by the deterministic pass.
      auto cmean = up(mean), crstd = up(rstd);
      for (const bool deterministic : {false, true}) {
        SCOPED_TRACE(deterministic ? "deterministic" : "atomics");
        auto gdx = up(dx0), gdw = up(dw0), gdb = up(db0);
        if (layer) {
          cuda::layernorm_backward(gdx.as<float>(), gdw.as<float>(), gdb.as<float>(), gdy.as<const float>(),
                                   gx.as<const float>(), gw.as<const float>(), cmean.as<const float>(),
                                   crstd.as<const float>(), c.N, c.C, true, deterministic);
          EXPECT_LT(rel_error(down_as<float>(gdb, cc), db), 1e-5);
        } else {
          cuda::rmsnorm_backward(gdx.as<float>(), gdw.as<float>(), gdy.as<const float>(), gx.as<const float>(),
                                 gw.as<const float>(), crstd.as<const float>(), c.N, c.C, true, deterministic);
        }
        EXPECT_LT(rel_error(down_as<float>(gdx, nc), dx), 1e-5);
        EXPECT_LT(rel_error(down_as<float>(gdw, cc), dw), 1e-5);
      }
    }
  }
}

// The error bound for bf16: ‖ours − exact‖ ≤ 2·‖plain − exact‖ (+ a floor for exact cases).
using testing::norm_error;
#define EXPECT_WITHIN_PLAIN_BF16(ours, plain, exact)                                                \
  do {                                                                                              \
    const double e_ours = norm_error(ours, exact), e_plain = norm_error(plain, exact);                 \
    EXPECT_LE(e_ours, 2 * e_plain + 1e-6) << "ours " << e_ours << " against plain bf16 " << e_plain; \
  } while (0)

TEST(CudaOps, NormsInBf16AreAsAccurateAsAPlainBf16Computation) {
  SKIP_WITHOUT_GPU();
  Data data;
  for (const NormCase& c : kNormCases) {
    SCOPED_TRACE("N " + std::to_string(c.N) + " C " + std::to_string(c.C));
    const size_t nc = static_cast<size_t>(c.N * c.C), cc = static_cast<size_t>(c.C), n = static_cast<size_t>(c.N);
    const auto x = round_bf16(data.normal(nc, 2.0)), w = round_bf16(data.normal(cc)), b = round_bf16(data.normal(cc));
    const auto dy = round_bf16(data.normal(nc));
    // Exact (fp64) and plain (fp32 on the bf16 values, rounded to bf16).
    std::vector<double> xd(x.begin(), x.end()), wd(w.begin(), w.end()), bd(b.begin(), b.end()), dyd(dy.begin(), dy.end());
    std::vector<double> y_exact(nc), mean_d(n), rstd_d(n), dx_exact(nc), dw_d(cc, 0.0), db_d(cc, 0.0);
    ops::layernorm_forward(y_exact.data(), mean_d.data(), rstd_d.data(), xd.data(), wd.data(), bd.data(), c.N, c.C,
                           1e-5);
    ops::layernorm_backward(dx_exact.data(), dw_d.data(), db_d.data(), dyd.data(), xd.data(), wd.data(),
                            mean_d.data(), rstd_d.data(), c.N, c.C, false);
    std::vector<float> y_plain(nc), mean(n), rstd(n), dx_plain(nc), dw(cc, 0.0f), db(cc, 0.0f);
    ops::layernorm_forward(y_plain.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), c.N, c.C, 1e-5f);
    ops::layernorm_backward(dx_plain.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), mean.data(),
                            rstd.data(), c.N, c.C, false);
    y_plain = round_bf16(y_plain);
    dx_plain = round_bf16(dx_plain);

    auto gx = up_bf16(x), gw = up_bf16(w), gb = up_bf16(b), gdy = up_bf16(dy);
    auto gy = poisoned(nc * 2), gmean = poisoned(n * 4), grstd = poisoned(n * 4), gdx = poisoned(nc * 2);
    std::vector<float> zeros(cc, 0.0f);
    auto gdw = up(zeros), gdb = up(zeros);
    cuda::layernorm_forward(gy.as<bf16>(), gmean.as<float>(), grstd.as<float>(), gx.as<const bf16>(),
                            gw.as<const bf16>(), gb.as<const bf16>(), c.N, c.C, 1e-5f);
    cuda::layernorm_backward(gdx.as<bf16>(), gdw.as<float>(), gdb.as<float>(), gdy.as<const bf16>(), gx.as<const bf16>(),
                             gw.as<const bf16>(), gmean.as<const float>(), grstd.as<const float>(), c.N, c.C, false);
    EXPECT_WITHIN_PLAIN_BF16(down_as<bf16>(gy, nc), y_plain, y_exact);
    EXPECT_WITHIN_PLAIN_BF16(down_as<bf16>(gdx, nc), dx_plain, dx_exact);
    // Weight gradients stay fp32: as close as the fp32 CPU computation on the same bf16 values.
    EXPECT_LT(rel_error(down_as<float>(gdw, cc), dw_d), 1e-5);
    EXPECT_LT(rel_error(down_as<float>(gdb, cc), db_d), 1e-5);
  }
}

// ---------------------------------------------------------------------------------------------
TEST(CudaOps, ActivationsEqualTheCpu) {
  SKIP_WITHOUT_GPU();
  Data data;
  for (auto [N, F] : {std::pair<int64_t, int64_t>{1, 1}, {7, 33}, {20, 130}}) {
    SCOPED_TRACE("N " + std::to_string(N) + " F " + std::to_string(F));
    const size_t nf = static_cast<size_t>(N * F);
    // GELU over [N, F]
    const auto x = data.normal(nf, 2.0), dy = data.normal(nf);
    std::vector<float> y(nf), dx(nf);
    ops::gelu_forward(y.data(), x.data(), static_cast<int64_t>(nf));
    ops::gelu_backward(dx.data(), x.data(), dy.data(), static_cast<int64_t>(nf));
    auto gx = up(x), gdy = up(dy), gy = poisoned(nf * 4), gdx = poisoned(nf * 4);
    cuda::gelu_forward(gy.as<float>(), gx.as<const float>(), static_cast<int64_t>(nf));
    cuda::gelu_backward(gdx.as<float>(), gx.as<const float>(), gdy.as<const float>(), static_cast<int64_t>(nf));
    EXPECT_LT(rel_error(down_as<float>(gy, nf), y), 1e-5);
    EXPECT_LT(rel_error(down_as<float>(gdx, nf), dx), 1e-5);
    // SwiGLU over [N, 2F] → [N, F]
    const auto xs = data.normal(2 * nf, 2.0);
    std::vector<float> ys(nf), dxs(2 * nf);
    ops::swiglu_forward(ys.data(), xs.data(), N, F);
    ops::swiglu_backward(dxs.data(), xs.data(), dy.data(), N, F);
    auto gxs = up(xs), gys = poisoned(nf * 4), gdxs = poisoned(2 * nf * 4);
    cuda::swiglu_forward(gys.as<float>(), gxs.as<const float>(), N, F);
    cuda::swiglu_backward(gdxs.as<float>(), gxs.as<const float>(), gdy.as<const float>(), N, F);
    EXPECT_LT(rel_error(down_as<float>(gys, nf), ys), 1e-5);
    EXPECT_LT(rel_error(down_as<float>(gdxs, 2 * nf), dxs), 1e-5);
    // bf16 GELU: fp32 arithmetic on the bf16 input, rounded once — exactly the plain computation.
    const auto xb = round_bf16(x);
    std::vector<float> yb(nf);
    ops::gelu_forward(yb.data(), xb.data(), static_cast<int64_t>(nf));
    auto gxb = up_bf16(xb), gyb = poisoned(nf * 2);
    cuda::gelu_forward(gyb.as<bf16>(), gxb.as<const bf16>(), static_cast<int64_t>(nf));
    EXPECT_LT(rel_error(down_as<bf16>(gyb, nf), round_bf16(yb)), 1e-2);  // tanh may differ by an ulp before rounding
  }
}

// ---------------------------------------------------------------------------------------------
// The sampler's candidates: each row's best k columns in rank order (the higher logit first, the
// lower id first among equals), against a plain full sort on the host. Values on a grid of 1/4 so
// that ties are everywhere; padding columns past V larger than any and never chosen; column counts
// that are no multiple of the block; k from 1 (greedy) to the largest; outputs poisoned first.
template <typename T>
void check_top_k_rows() {
  Data data;
  using Case = std::tuple<int64_t, int64_t, int64_t, int>;  // rows, V, ld, k
  for (auto [rows, V, ld, k] : {Case{1, 1, 1, 1}, Case{3, 7, 8, 7}, Case{2, 300, 384, 1}, Case{4, 1000, 1024, 40},
                                Case{5, 700, 700, 128}, Case{2, 50257, 50304, 40}, Case{1, 50257, 50304, 128}}) {
    SCOPED_TRACE("rows " + std::to_string(rows) + " V " + std::to_string(V) + " k " + std::to_string(k));
    std::vector<float> x = data.normal(static_cast<size_t>(rows * ld), 3.0);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < ld; ++c) {
        float& v = x[static_cast<size_t>(r * ld + c)];
        v = c < V ? std::round(v * 4.0f) / 4.0f : 1e4f;
      }
    }
    std::vector<int32_t> want_ids;
    std::vector<float> want_vals;
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = x.data() + r * ld;
      std::vector<int32_t> order(static_cast<size_t>(V));
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [row](int32_t a, int32_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
      for (int i = 0; i < k; ++i) {
        want_ids.push_back(order[static_cast<size_t>(i)]);
        want_vals.push_back(row[order[static_cast<size_t>(i)]]);
      }
    }
    DeviceBuffer d_x = up_as<T>(x), d_ids = poisoned(want_ids.size() * 4), d_vals = poisoned(want_vals.size() * 4);
    cuda::top_k_rows(d_x.template as<const T>(), rows, V, ld, k, d_ids.as<int32_t>(), d_vals.as<float>());
    std::vector<int32_t> ids(want_ids.size());
    d_ids.download(ids.data(), ids.size() * 4);
    EXPECT_EQ(ids, want_ids);
    EXPECT_EQ(down_as<float>(d_vals, want_vals.size()), want_vals);
  }
}

TEST(CudaOps, TopKRowsRankLikeAFullSort) {
  SKIP_WITHOUT_GPU();
  check_top_k_rows<float>();
  check_top_k_rows<bf16>();
  DeviceBuffer x = up(std::vector<float>(8, 0.0f)), ids(8 * 4), vals(8 * 4);
  const std::string too_many = testing::error_of([&] { cuda::top_k_rows(x.as<const float>(), 1, 8, 8, 9, ids.as<int32_t>(), vals.as<float>()); });
  EXPECT_NE(too_many.find("at most the row's 8 columns"), std::string::npos) << too_many;
  const std::string too_few = testing::error_of([&] { cuda::top_k_rows(x.as<const float>(), 1, 8, 8, 0, ids.as<int32_t>(), vals.as<float>()); });
  EXPECT_NE(too_few.find("must be 1…128"), std::string::npos) << too_few;
}

TEST(CudaOps, CrossEntropyForwardAndFusedGradient) {
  SKIP_WITHOUT_GPU();
  Data data;
  for (auto [N, V, Vp] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {6, 50, 64}, {9, 300, 300}, {4, 1000, 1024}}) {
    SCOPED_TRACE("N " + std::to_string(N) + " V " + std::to_string(V) + " Vp " + std::to_string(Vp));
    const size_t nv = static_cast<size_t>(N * Vp);
    auto logits = data.normal(nv, 3.0);
    std::vector<int> targets(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) targets[static_cast<size_t>(i)] = i % 4 == 3 ? -1 : static_cast<int>((i * 37) % V);
    const float scale = 1.0f / static_cast<float>(N);
    std::vector<float> probs = logits, losses(static_cast<size_t>(N));
    ops::softmax_cross_entropy_forward(probs.data(), losses.data(), targets.data(), N, V, Vp);
    ops::softmax_cross_entropy_backward(probs.data(), targets.data(), N, V, Vp, scale);
    auto gl = up(logits), gloss = poisoned(static_cast<size_t>(N) * 4);
    DeviceBuffer gt(targets.size() * 4);
    gt.upload(targets.data(), targets.size() * 4);
    cuda::cross_entropy_forward(gloss.as<float>(), gl.as<const float>(), gt.as<const int>(), N, V, Vp);
    EXPECT_LT(rel_error(down_as<float>(gloss, static_cast<size_t>(N)), losses), 1e-5);
    EXPECT_EQ(rel_error(down_as<float>(gl, nv), logits), 0.0) << "the forward must leave the logits alone";
    gloss.fill_bytes(0xFF);
    cuda::cross_entropy_fused(gl.as<float>(), gloss.as<float>(), gt.as<const int>(), N, V, Vp, scale);
    EXPECT_LT(rel_error(down_as<float>(gloss, static_cast<size_t>(N)), losses), 1e-5);
    EXPECT_LT(rel_error(down_as<float>(gl, nv), probs), 1e-6);
  }
}

// ---------------------------------------------------------------------------------------------
TEST(CudaOps, RopeEqualsTheCpu) {
  SKIP_WITHOUT_GPU();
  Data data;
  const int64_t B = 2, Tn = 9, H = 3, D = 16, pos0 = 4;
  const ops::RopeTable<float> table(32, static_cast<int>(D), 10000.0);
  auto gcos = up(table.cos), gsin = up(table.sin);
  for (int64_t stride : {D, D + 8}) {  // plain heads, and MLA's rope part after 8 nope values
    SCOPED_TRACE("head stride " + std::to_string(stride));
    const auto x = data.normal(static_cast<size_t>(B * Tn * H * stride));
    std::vector<float> fwd = x, bwd = x;
    ops::rope_forward_strided(fwd.data(), table, B, Tn, H, D, stride, pos0);
    ops::rope_backward_strided(bwd.data(), table, B, Tn, H, D, stride, pos0);
    auto gf = up(x), gbk = up(x);
    cuda::rope_forward(gf.as<float>(), gcos.as<const float>(), gsin.as<const float>(), B, Tn, H, D, stride, pos0);
    cuda::rope_backward(gbk.as<float>(), gcos.as<const float>(), gsin.as<const float>(), B, Tn, H, D, stride, pos0);
    EXPECT_LT(rel_error(down_as<float>(gf, x.size()), fwd), 1e-6);
    EXPECT_LT(rel_error(down_as<float>(gbk, x.size()), bwd), 1e-6);
  }
  // The q (or k) block of fused q/k/v rows: tokens W apart, the block `at` columns in; the rest of
  // every row is left alone.
  const int64_t W = H * D + 24, at = 8, rows = B * Tn;
  const auto x = data.normal(static_cast<size_t>(rows * W));
  std::vector<float> fwd(static_cast<size_t>(rows * H * D)), bwd;
  for (int64_t r = 0; r < rows; ++r) std::copy_n(x.begin() + r * W + at, H * D, fwd.begin() + r * H * D);
  bwd = fwd;
  ops::rope_forward_strided(fwd.data(), table, B, Tn, H, D, D, pos0);
  ops::rope_backward_strided(bwd.data(), table, B, Tn, H, D, D, pos0);
  std::vector<float> want_f = x, want_b = x;
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(fwd.begin() + r * H * D, H * D, want_f.begin() + r * W + at);
    std::copy_n(bwd.begin() + r * H * D, H * D, want_b.begin() + r * W + at);
  }
  auto gf = up(x), gbk = up(x);
  cuda::rope_forward(gf.as<float>() + at, gcos.as<const float>(), gsin.as<const float>(), B, Tn, H, D, D, pos0,
                     nullptr, W);
  cuda::rope_backward(gbk.as<float>() + at, gcos.as<const float>(), gsin.as<const float>(), B, Tn, H, D, D, pos0,
                      nullptr, W);
  const auto got_f = down_as<float>(gf, x.size()), got_b = down_as<float>(gbk, x.size());
  EXPECT_LT(rel_error(got_f, want_f), 1e-6) << "token stride";
  EXPECT_LT(rel_error(got_b, want_b), 1e-6) << "token stride";
  int touched = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < W; ++c) {
      if (c >= at && c < at + H * D) continue;
      const size_t i = static_cast<size_t>(r * W + c);
      touched += got_f[i] != x[i] || got_b[i] != x[i];
    }
  }
  EXPECT_EQ(touched, 0) << "values outside the rotated block changed";

  // The backward with each sequence at a position of its own (context parallelism's chunks; the
  // forward's is checked with the embeddings below): sequence b as a batch of one at pos[b].
  const std::vector<int32_t> pos = {11, 3};
  DeviceBuffer gpos(pos.size() * 4);
  gpos.upload(pos.data(), pos.size() * 4);
  const auto xs = data.normal(static_cast<size_t>(B * Tn * H * D));
  std::vector<float> want_s = xs;
  for (int64_t b = 0; b < B; ++b) {
    ops::rope_backward_strided(want_s.data() + b * Tn * H * D, table, 1, Tn, H, D, D, pos[static_cast<size_t>(b)]);
  }
  auto gs = up(xs);
  cuda::rope_backward(gs.as<float>(), gcos.as<const float>(), gsin.as<const float>(), B, Tn, H, D, D, 0,
                      gpos.as<const int32_t>());
  EXPECT_LT(rel_error(down_as<float>(gs, xs.size()), want_s), 1e-6) << "positions per sequence";
}

// ---------------------------------------------------------------------------------------------
TEST(CudaOps, AdamWAndSumOfSquaresEqualTheCpu) {
  SKIP_WITHOUT_GPU();
  Data data;
  const int64_t n = 1000;
  const auto p0 = data.normal(n), g = data.normal(n), m0 = data.normal(n, 0.1);
  auto v0 = data.normal(n, 0.1);
  for (float& x : v0) x = x * x;
  for (bool decay : {true, false}) {
    SCOPED_TRACE(decay ? "decay" : "no decay");
    ops::AdamWParams hp;
    hp.lr = 1e-3f;
    hp.weight_decay = 0.1f;
    hp.step = 7;
    std::vector<float> p = p0, m = m0, v = v0;
    ops::adamw_update(p.data(), g.data(), m.data(), v.data(), n, hp, decay, 0.5f);
    std::vector<std::vector<float>> got[2];
    for (size_t skew : {0, 1}) {  // four parameters at a time, or one
      SCOPED_TRACE("skew " + std::to_string(skew));
      Skewed<float> gp(p0, skew), gg(g, skew), gm(m0, skew), gv(v0, skew);
      auto copy = Skewed<bf16>::poison(static_cast<size_t>(n), skew);
      cuda::adamw_update(gp.p(), gg.p(), gm.p(), gv.p(), n, hp, decay, 0.5f, copy.p());
      EXPECT_LT(rel_error(gp.down(), p), 1e-6);
      EXPECT_LT(rel_error(gm.down(), m), 1e-6);
      EXPECT_LT(rel_error(gv.down(), v), 1e-6);
      EXPECT_EQ(copy.down(), round_bf16(gp.down()));
      got[skew] = {gp.down(), gm.down(), gv.down()};
    }
    EXPECT_TRUE(got[0] == got[1]) << "AdamW's packed and one-at-a-time paths differ";
  }
  DeviceBuffer acc(8);
  acc.fill_bytes(0xFF);  // written, not added to
  auto gg = up(g);
  cuda::sum_squares(acc.as<double>(), gg.as<const float>(), n);
  double got = 0;
  acc.download(&got, 8);
  EXPECT_NEAR(got, ops::sum_squares(g.data(), n), 1e-6 * got);
}

// The training step's AdamW: runs of tensors with and without weight decay in one launch give the
// same bits as one launch per run, on the packed path (with run boundaries inside a pack) and on
// the one-at-a-time path; parameters outside the runs are left alone.
TEST(CudaOps, AdamWOverRunsEqualsOneUpdatePerRun) {
  SKIP_WITHOUT_GPU();
  Data data;
  const std::vector<int64_t> sizes = {5, 1000, 7, 12};  // boundaries at 5, 1005, 1012: not all on a pack
  const std::vector<uint8_t> decay = {1, 0, 1, 0};
  std::vector<int64_t> ends;
  int64_t n = 0;
  for (int64_t s : sizes) ends.push_back(n += s);
  const auto p0 = data.normal(static_cast<size_t>(n)), g = data.normal(static_cast<size_t>(n)),
             m0 = data.normal(static_cast<size_t>(n), 0.1);
  auto v0 = data.normal(static_cast<size_t>(n), 0.1);
  for (float& x : v0) x = x * x;
  ops::AdamWParams hp;
  hp.lr = 1e-3f;
  hp.weight_decay = 0.1f;
  hp.step = 3;
  DeviceBuffer d_ends(ends.size() * sizeof(int64_t)), d_decay(decay.size());
  d_ends.upload(ends.data(), ends.size() * sizeof(int64_t));
  d_decay.upload(decay.data(), decay.size());
  for (size_t skew : {0, 1}) {
    SCOPED_TRACE("skew " + std::to_string(skew));
    Skewed<float> ap(p0, skew), ag(g, skew), am(m0, skew), av(v0, skew), bp(p0, skew), bg(g, skew), bm(m0, skew),
        bv(v0, skew);
    auto acopy = Skewed<bf16>::poison(static_cast<size_t>(n), skew), bcopy = Skewed<bf16>::poison(static_cast<size_t>(n), skew);
    // All but the first run in one launch: the first stays as it was.
    const cuda::AdamWRuns runs{ends[0], n, d_ends.as<int64_t>() + 1, d_decay.as<uint8_t>() + 1,
                               static_cast<int>(sizes.size()) - 1};
    cuda::adamw_update_runs(ap.p(), ag.p(), am.p(), av.p(), runs, hp, 0.5f, acopy.p());
    for (size_t r = 1; r < sizes.size(); ++r) {
      const int64_t off = ends[r] - sizes[r];
      cuda::adamw_update(bp.p() + off, bg.p() + off, bm.p() + off, bv.p() + off, sizes[r], hp, decay[r] != 0, 0.5f,
                         bcopy.p() + off);
    }
    const std::vector<float> got = ap.down();
    EXPECT_TRUE(got == bp.down()) << "weights";
    EXPECT_TRUE(am.down() == bm.down()) << "first moments";
    EXPECT_TRUE(av.down() == bv.down()) << "second moments";
    {  // ZeRO-1's shard: moments kept only from the runs' first parameter on, the same bits
      const auto f = static_cast<std::ptrdiff_t>(ends[0]);
      Skewed<float> sp(p0, skew), sm(std::vector<float>(m0.begin() + f, m0.end()), skew),
          sv(std::vector<float>(v0.begin() + f, v0.end()), skew);
      cuda::AdamWRuns shard = runs;
      shard.moments_first = ends[0];
      cuda::adamw_update_runs(sp.p(), ag.p(), sm.p(), sv.p(), shard, hp, 0.5f, nullptr);
      EXPECT_TRUE(sp.down() == got) << "weights, sharded moments";
      const std::vector<float> full_m = am.down(), full_v = av.down();
      EXPECT_TRUE(sm.down() == std::vector<float>(full_m.begin() + f, full_m.end())) << "first moments, sharded";
      EXPECT_TRUE(sv.down() == std::vector<float>(full_v.begin() + f, full_v.end())) << "second moments, sharded";
      shard.moments_first = ends[0] + 1;  // past the first parameter: refused
      EXPECT_NE(testing::error_of([&] { cuda::adamw_update_runs(sp.p(), ag.p(), sm.p(), sv.p(), shard, hp, 0.5f); })
                    .find("adamw: the moments start after the first parameter"),
                std::string::npos);
    }
    const std::vector<float> ac = acopy.down(), bc = bcopy.down();
    EXPECT_TRUE(std::equal(ac.begin() + 5, ac.end(), bc.begin() + 5)) << "the bf16 copy";
    for (int64_t i = 0; i < ends[0]; ++i) {
      EXPECT_EQ(got[static_cast<size_t>(i)], p0[static_cast<size_t>(i)]) << "outside the runs: " << i;
      EXPECT_TRUE(std::isnan(ac[static_cast<size_t>(i)])) << "outside the runs: " << i;
    }
    // The decay switch is per run: a run updated with the other setting differs.
    std::vector<float> flipped = p0, fm = m0, fv = v0;
    ops::adamw_update(flipped.data() + 5, g.data() + 5, fm.data() + 5, fv.data() + 5, 1000, hp, true, 0.5f);
    EXPECT_NE(std::vector<float>(flipped.begin() + 5, flipped.begin() + 1005),
              std::vector<float>(got.begin() + 5, got.begin() + 1005));
  }
}

// Elementwise ops do the same fp32 arithmetic on each element on either path: the two agree bit
// for bit, and with the CPU (AdamW likewise, in its own test).
template <typename T>
void check_packed_elementwise() {
  Data data;
  for (int64_t n : {int64_t{1000}, int64_t{1003}}) {  // 1000: whole packs of 4 and of 8
    std::vector<std::vector<float>> got[2];
    for (size_t skew : {0, 1}) {
      SCOPED_TRACE("n " + std::to_string(n) + " skew " + std::to_string(skew));
      Data same;  // the same values at both skews
      const auto a = as_stored<T>(same.normal(static_cast<size_t>(n))), b = as_stored<T>(same.normal(static_cast<size_t>(n)));
      Skewed<T> da(a, skew), db(b, skew), out = Skewed<T>::poison(a.size(), skew), g = Skewed<T>::poison(a.size(), skew);
      cuda::add(out.p(), da.p(), db.p(), n);
      std::vector<float> sum(a.size());
      for (size_t i = 0; i < a.size(); ++i) sum[i] = a[i] + b[i];
      EXPECT_EQ(rel_error(out.down(), as_stored<T>(sum)), 0.0);
      cuda::add_inplace(da.p(), db.p(), n);
      EXPECT_EQ(da.down(), out.down());
      cuda::gelu_forward(out.p(), db.p(), n);
      cuda::gelu_backward(g.p(), db.p(), da.p(), n);
      std::vector<float> y(a.size()), dx(a.size());
      ops::gelu_forward(y.data(), b.data(), n);
      ops::gelu_backward(dx.data(), b.data(), sum.data(), n);
      const double tol = std::is_same_v<T, bf16> ? 1e-2 : 1e-5;  // bf16: tanh may differ by an ulp before rounding
      EXPECT_LT(rel_error(out.down(), as_stored<T>(y)), tol);
      EXPECT_LT(rel_error(g.down(), as_stored<T>(dx)), tol);
      got[skew] = {out.down(), g.down()};
      // the bias over rows of 40 (whole packs) or, for n = 1003, 17 rows of 59
      const int64_t OC = n % 8 == 0 ? 40 : 59, N = n / OC;
      const auto bias = as_stored<T>(same.normal(static_cast<size_t>(OC)));
      Skewed<T> dbias(bias, skew), rows(a, skew);
      cuda::add_bias(rows.p(), dbias.p(), N, OC);
      std::vector<float> want = a;
      for (int64_t i = 0; i < N * OC; ++i) want[static_cast<size_t>(i)] += bias[static_cast<size_t>(i % OC)];
      EXPECT_EQ(rel_error(rows.down(), as_stored<T>(want)), 0.0);
      got[skew].push_back(rows.down());
      // SwiGLU over rows [gate | up]: 3 rows of 2·40 (whole packs) or 2·59
      const int64_t F = n % 8 == 0 ? 40 : 59, R = 3;
      const auto xs = as_stored<T>(same.normal(static_cast<size_t>(2 * R * F), 2.0));
      const auto dys = as_stored<T>(same.normal(static_cast<size_t>(R * F)));
      Skewed<T> gxs(xs, skew), gdys(dys, skew), gys = Skewed<T>::poison(dys.size(), skew),
                                               gdxs = Skewed<T>::poison(xs.size(), skew);
      cuda::swiglu_forward(gys.p(), gxs.p(), R, F);
      cuda::swiglu_backward(gdxs.p(), gxs.p(), gdys.p(), R, F);
      std::vector<float> ys(dys.size()), dxs(xs.size());
      ops::swiglu_forward(ys.data(), xs.data(), R, F);
      ops::swiglu_backward(dxs.data(), xs.data(), dys.data(), R, F);
      EXPECT_LT(rel_error(gys.down(), as_stored<T>(ys)), tol);
      EXPECT_LT(rel_error(gdxs.down(), as_stored<T>(dxs)), tol);
      got[skew].push_back(gys.down());
      got[skew].push_back(gdxs.down());
    }
    EXPECT_TRUE(got[0] == got[1]) << "n " << n << ": the packed and the one-at-a-time paths differ";
  }
}

TEST(CudaOps, PackedAndElementwisePathsAgree) {
  SKIP_WITHOUT_GPU();
  check_packed_elementwise<float>();
  check_packed_elementwise<bf16>();
}

// Norms on either path (their sums run in different orders, so each is held to the CPU), and the
// fused residual add + norm: the same bits as the add followed by the norm; with post-norm's branch
// norm before the add, the same bits as that norm, the add and the norm.
template <typename T>
void check_packed_norms() {
  Data data;
  // 768: d12's width (bf16: 3 packs a lane, the registers' weight gradients; fp32: 6, the column
  // sums); 512 and 2048: 2 and 8 packs a lane (bf16).
  for (auto [N, C] : {std::pair<int64_t, int64_t>{9, 768}, {40, 512}, {3, 2048}, {5, 24}}) {
    for (bool layer : {true, false}) {
      for (size_t skew : {0, 1}) {
        SCOPED_TRACE(std::string(layer ? "layernorm" : "rmsnorm") + " N " + std::to_string(N) + " C " +
                     std::to_string(C) + " skew " + std::to_string(skew));
        const size_t nc = static_cast<size_t>(N * C), cc = static_cast<size_t>(C), n = static_cast<size_t>(N);
        const auto ra = as_stored<T>(data.normal(nc, 2.0)), rb = as_stored<T>(data.normal(nc));
        const auto w = as_stored<T>(data.normal(cc)), b = as_stored<T>(data.normal(cc));
        const auto dy = as_stored<T>(data.normal(nc));
        std::vector<float> x(nc);
        for (size_t i = 0; i < nc; ++i) x[i] = ra[i] + rb[i];
        x = as_stored<T>(x);
        // The CPU in fp32 on the stored values.
        std::vector<float> y(nc), mean(n), rstd(n), dx(nc), dw(cc, 0.0f), db(cc, 0.0f);
        if (layer) {
          ops::layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C, 1e-5f);
          ops::layernorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), mean.data(),
                                  rstd.data(), N, C, false);
        } else {
          ops::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
          ops::rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), N, C, false);
        }
        Skewed<T> gra(ra, skew), grb(rb, skew), gx(x, skew), gw(w, skew), gb(b, skew), gdy(dy, skew);
        auto gy = Skewed<T>::poison(nc, skew), gsum = Skewed<T>::poison(nc, skew), gy2 = Skewed<T>::poison(nc, skew);
        auto gdx = Skewed<T>::poison(nc, skew);
        auto gmean = poisoned(n * 4), grstd = poisoned(n * 4), gmean2 = poisoned(n * 4), grstd2 = poisoned(n * 4);
        auto gdw = up(std::vector<float>(cc, 0.0f)), gdb = up(std::vector<float>(cc, 0.0f));
        if (layer) {
          cuda::layernorm_forward(gy.p(), gmean.as<float>(), grstd.as<float>(), gx.p(), gw.p(), gb.p(), N, C, 1e-5f);
          cuda::add_layernorm_forward(gsum.p(), gy2.p(), gmean2.as<float>(), grstd2.as<float>(), gra.p(), grb.p(),
                                      gw.p(), gb.p(), N, C, 1e-5f);
          cuda::layernorm_backward(gdx.p(), gdw.as<float>(), gdb.as<float>(), gdy.p(), gx.p(), gw.p(),
                                   gmean.as<const float>(), grstd.as<const float>(), N, C, false);
          EXPECT_LT(rel_error(down_as<float>(gdb, cc), db), 1e-5);
          EXPECT_EQ(down_as<float>(gmean2, n), down_as<float>(gmean, n));
        } else {
          cuda::rmsnorm_forward(gy.p(), grstd.as<float>(), gx.p(), gw.p(), N, C, 1e-5f);
          cuda::add_rmsnorm_forward(gsum.p(), gy2.p(), grstd2.as<float>(), gra.p(), grb.p(), gw.p(), N, C, 1e-5f);
          cuda::rmsnorm_backward(gdx.p(), gdw.as<float>(), gdy.p(), gx.p(), gw.p(), grstd.as<const float>(), N, C,
                                 false);
        }
        const double tol = std::is_same_v<T, bf16> ? 1e-2 : 1e-5;  // bf16: one rounding of the output
        EXPECT_LT(rel_error(gy.down(), y), tol);
        EXPECT_LT(rel_error(gdx.down(), dx), tol);
        EXPECT_LT(rel_error(down_as<float>(grstd, n), rstd), 1e-5);
        EXPECT_LT(rel_error(down_as<float>(gdw, cc), dw), 1e-5);
        // fused = add, then norm
        EXPECT_EQ(gsum.down(), x);
        EXPECT_EQ(gy2.down(), gy.down());
        EXPECT_EQ(down_as<float>(grstd2, n), down_as<float>(grstd, n));
        // Post-norm: rb normalised with weights of its own before the add. Fused = the branch's norm
        // into a buffer, then the add and norm: the same bits, statistics included (RMSNorm
        // ignores the branch bias, as rmsnorm_forward has none).
        const auto pw = as_stored<T>(data.normal(cc)), pb = as_stored<T>(data.normal(cc));
        Skewed<T> gpw(pw, skew), gpb(pb, skew);
        auto gbranch = Skewed<T>::poison(nc, skew), gsum3 = Skewed<T>::poison(nc, skew);
        auto gy3 = Skewed<T>::poison(nc, skew), gsum4 = Skewed<T>::poison(nc, skew), gy4 = Skewed<T>::poison(nc, skew);
        auto bmean3 = poisoned(n * 4), brstd3 = poisoned(n * 4), bmean4 = poisoned(n * 4), brstd4 = poisoned(n * 4);
        auto mean3 = poisoned(n * 4), rstd3 = poisoned(n * 4), mean4 = poisoned(n * 4), rstd4 = poisoned(n * 4);
        const cuda::BranchNorm<T> post{gpw.p(), gpb.p(), layer ? bmean4.as<float>() : nullptr, brstd4.as<float>()};
        if (layer) {
          cuda::layernorm_forward(gbranch.p(), bmean3.as<float>(), brstd3.as<float>(), grb.p(), gpw.p(), gpb.p(), N, C,
                                  1e-5f);
          cuda::add_layernorm_forward(gsum3.p(), gy3.p(), mean3.as<float>(), rstd3.as<float>(), gra.p(), gbranch.p(),
                                      gw.p(), gb.p(), N, C, 1e-5f);
          cuda::add_layernorm_forward(gsum4.p(), gy4.p(), mean4.as<float>(), rstd4.as<float>(), gra.p(), grb.p(),
                                      gw.p(), gb.p(), N, C, 1e-5f, &post);
          EXPECT_EQ(down_as<float>(mean4, n), down_as<float>(mean3, n));
          EXPECT_EQ(down_as<float>(bmean4, n), down_as<float>(bmean3, n));
        } else {
          cuda::rmsnorm_forward(gbranch.p(), brstd3.as<float>(), grb.p(), gpw.p(), N, C, 1e-5f);
          cuda::add_rmsnorm_forward(gsum3.p(), gy3.p(), rstd3.as<float>(), gra.p(), gbranch.p(), gw.p(), N, C, 1e-5f);
          cuda::add_rmsnorm_forward(gsum4.p(), gy4.p(), rstd4.as<float>(), gra.p(), grb.p(), gw.p(), N, C, 1e-5f,
                                    &post);
        }
        EXPECT_EQ(gsum4.down(), gsum3.down());
        EXPECT_EQ(gy4.down(), gy3.down());
        EXPECT_EQ(down_as<float>(rstd4, n), down_as<float>(rstd3, n));
        EXPECT_EQ(down_as<float>(brstd4, n), down_as<float>(brstd3, n));
        EXPECT_NE(gsum4.down(), gsum.down()) << "the branch norm changed nothing";
      }
    }
  }
}

TEST(CudaOps, PackedNormsAndTheFusedResidualNormEqualTheCpu) {
  SKIP_WITHOUT_GPU();
  check_packed_norms<float>();
  check_packed_norms<bf16>();
}

// QK-norm over the heads inside fused [q | k | v] rows (HeadRows): the same bits as over dense
// copies of the heads (which the tests above hold to the CPU) on the same path: packed, or on a
// token stride that allows no packs against dense rows skewed off their packs; the backward writes only its block of each row (added to it, or
// in place of it), and the weight gradient is the same sum by atomics or in fixed order.
template <typename T>
void check_head_rows_norm() {
  Data data;
  const int64_t tokens = 37, H = 3, D = 32, at = 8, N = tokens * H;
  for (const int64_t ld : {H * D + 24 + at, H * D + at + 5}) {
    SCOPED_TRACE("token stride " + std::to_string(ld));
    const size_t nd = static_cast<size_t>(N * D), dd = static_cast<size_t>(D), n = static_cast<size_t>(N);
    const size_t all = static_cast<size_t>(tokens * ld);
    // The heads at column `at` of each token row, and the dense copy of them.
    const auto block = [&](const std::vector<float>& rows) {
      std::vector<float> dense(nd);
      for (int64_t t = 0; t < tokens; ++t) {
        std::copy_n(rows.begin() + t * ld + at, H * D, dense.begin() + t * H * D);
      }
      return dense;
    };
    const auto rows = as_stored<T>(data.normal(all, 2.0)), prior = as_stored<T>(data.normal(all));
    const auto w = as_stored<T>(data.normal(dd)), dy = as_stored<T>(data.normal(nd));
    const auto x = block(rows);
    const size_t skew = ld % static_cast<int64_t>(16 / sizeof(T)) == 0 ? 0 : 1;  // 16-byte packs
    DeviceBuffer grows = up_as<T>(rows), gw = up_as<T>(w), gdy = up_as<T>(dy);
    Skewed<T> gx(x, skew), dense_dy(dy, skew), dense_y = Skewed<T>::poison(nd, skew);
    const cuda::HeadRows heads{H, ld};
    DeviceBuffer y = poisoned(nd * sizeof(T)), dense_rstd = poisoned(n * 4), rstd = poisoned(n * 4);
    cuda::rmsnorm_forward(dense_y.p(), dense_rstd.as<float>(), gx.p(), gw.as<const T>(), N, D, 1e-5f);
    cuda::rmsnorm_forward(y.as<T>(), rstd.as<float>(), grows.as<const T>() + at, gw.as<const T>(), N, D, 1e-5f,
                          heads);
    EXPECT_EQ(down_as<T>(y, nd), dense_y.down());
    EXPECT_EQ(down_as<float>(rstd, n), down_as<float>(dense_rstd, n));
    for (const bool deterministic : {false, true}) {
      for (const bool accumulate : {false, true}) {
        SCOPED_TRACE(std::string(deterministic ? "deterministic" : "atomics") + (accumulate ? ", added" : ""));
        Skewed<T> dense_dx(block(prior), skew);
        DeviceBuffer dx = up_as<T>(prior);
        DeviceBuffer dense_dw = up(std::vector<float>(dd, 0.0f)), dw = up(std::vector<float>(dd, 0.0f));
        cuda::rmsnorm_backward(dense_dx.p(), dense_dw.as<float>(), dense_dy.p(), gx.p(), gw.as<const T>(),
                               dense_rstd.as<const float>(), N, D, accumulate, deterministic);
        cuda::rmsnorm_backward(dx.as<T>() + at, dw.as<float>(), gdy.as<const T>(), grows.as<const T>() + at,
                               gw.as<const T>(), dense_rstd.as<const float>(), N, D, accumulate, deterministic, heads);
        const auto got = down_as<T>(dx, all);
        EXPECT_EQ(block(got), dense_dx.down());
        int touched = 0;
        for (int64_t t = 0; t < tokens; ++t) {
          for (int64_t c = 0; c < ld; ++c) {
            const size_t i = static_cast<size_t>(t * ld + c);
            touched += (c < at || c >= at + H * D) && got[i] != prior[i];
          }
        }
        EXPECT_EQ(touched, 0) << "values outside the heads' block changed";
        if (deterministic) {
          EXPECT_EQ(down_as<float>(dw, dd), down_as<float>(dense_dw, dd));
        } else {
          EXPECT_LT(rel_error(down_as<float>(dw, dd), down_as<float>(dense_dw, dd)), 1e-5);
        }
      }
    }
  }
  DeviceBuffer out = poisoned(static_cast<size_t>(N * D) * sizeof(T)), rstd = poisoned(static_cast<size_t>(N) * 4);
  DeviceBuffer x = up_as<T>(data.normal(static_cast<size_t>(N * D))), w = up_as<T>(data.normal(static_cast<size_t>(D)));
  T* y = out.as<T>();
  const T* xp = x.as<const T>();
  const T* wp = w.as<const T>();
  EXPECT_NE(testing::error_of([&] {
              cuda::rmsnorm_forward(y, rstd.as<float>(), xp, wp, N, D, 1e-5f, cuda::HeadRows{H, H * D - 1});
            }).find("token row stride 95 is smaller than heads·C = 96"),
            std::string::npos);
}

TEST(CudaOps, QkNormReadsHeadsInsideFusedRows) {
  SKIP_WITHOUT_GPU();
  check_head_rows_norm<float>();
  check_head_rows_norm<bf16>();
}

// The shapes the QK-norm + RoPE tests run: each side's heads, head width and first rotated column.
// Multi-head attention rotates whole heads (GQA: fewer key heads); MLA normalises each query head
// of hd + dr columns and rotates its last dr, and its one shared rope key of dr whole.
struct QkShape {
  int64_t Hq, Dq, q_rope_at, Hk, Dk, k_rope_at;
  std::string name() const {
    return fmt::format("q {}×{} (rope from {}), k {}×{} (rope from {})", Hq, Dq, q_rope_at, Hk, Dk, k_rope_at);
  }
  int64_t rope_width() const { return Dq - q_rope_at; }
};
const std::vector<QkShape> kQkShapes = {
    {4, 16, 0, 2, 16, 0}, {4, 64, 0, 2, 64, 0}, {4, 128, 0, 2, 128, 0},  // multi-head, GQA
    {3, 24, 16, 1, 8, 0}, {2, 96, 64, 1, 32, 0},                         // MLA (d12_flash_mla: 96 = 64 + 32)
};

// The CPU's rotation of the rope part of every head of dense [B·Tn·H, D] rows, forward or back,
// at one position offset for every sequence (rope_mode 1: 6) or one per sequence (2: pos).
void cpu_rope_parts(std::vector<float>& x, bool backward, int rope_mode, const ops::RopeTable<float>& table,
                    const std::vector<int32_t>& pos, int64_t B, int64_t Tn, int64_t H, int64_t D, int64_t rope_at) {
  for (int64_t b = 0; b < B && rope_mode > 0; ++b) {
    const int64_t p0 = rope_mode == 1 ? 6 : pos[static_cast<size_t>(b)];
    float* at = x.data() + b * Tn * H * D + rope_at;
    if (backward) {
      ops::rope_backward_strided(at, table, 1, Tn, H, D - rope_at, D, p0);
    } else {
      ops::rope_forward_strided(at, table, 1, Tn, H, D - rope_at, D, p0);
    }
  }
}

// QK-norm and RoPE in one launch: the query and key heads of fused rows (tokens W apart), each
// normalised with its side's weight and its rope part rotated, into dense-or-padded rows of their
// own — the CPU's rmsnorm over each head, then its rope, at one position offset for every sequence
// or one per sequence, and with no tables the norm alone; for the shapes of multi-head attention
// and of MLA. fp32 within 1e-5 of the CPU; bf16 within twice the error of the four-launch path it
// replaces (norm, rounding, rope), both against the fp32 CPU on the same rounded inputs. Nothing
// outside each output's heads is written.
template <typename T>
void check_qk_norm_rope() {
  Data data;
  const int64_t B = 2, Tn = 5, N = B * Tn, P = 32;
  const float eps = 1e-5f;
  for (const QkShape& sh : kQkShapes) {
    const int64_t Hq = sh.Hq, Hkv = sh.Hk, R = sh.rope_width();
    const int64_t W = Hq * sh.Dq + 2 * Hkv * sh.Dk + 8;          // the fused rows, padded
    const int64_t q_out = Hq * sh.Dq + 8, k_out = Hkv * sh.Dk;  // the query rows padded, the key rows dense
    const ops::RopeTable<float> table(static_cast<int>(P), static_cast<int>(R), 10000.0);
    auto gcos = up(table.cos), gsin = up(table.sin);
    const auto rows = as_stored<T>(data.normal(static_cast<size_t>(N * W), 2.0));
    const auto wq = as_stored<T>(data.normal(static_cast<size_t>(sh.Dq)));
    const auto wk = as_stored<T>(data.normal(static_cast<size_t>(sh.Dk)));
    DeviceBuffer grows = up_as<T>(rows), gwq = up_as<T>(wq), gwk = up_as<T>(wk);
    const std::vector<int32_t> pos = {3, 11};
    DeviceBuffer gpos(pos.size() * 4);
    gpos.upload(pos.data(), pos.size() * 4);
    for (const int rope_mode : {0, 1, 2}) {  // no rope, one offset, positions per sequence
      SCOPED_TRACE(fmt::format("{}, {}", sh.name(), rope_mode == 0   ? "norm only"
                                                    : rope_mode == 1 ? "rope at offset 6"
                                                                     : "rope per sequence"));
      // The CPU: each side's heads as dense [N·H, D] rows, normalised, then rotated.
      auto cpu_side = [&](int64_t at, int64_t H, int64_t D, int64_t rope_at, const std::vector<float>& w,
                          std::vector<float>& rstd) {
        std::vector<float> x(static_cast<size_t>(N * H * D)), y(x.size());
        for (int64_t n = 0; n < N; ++n) std::copy_n(rows.begin() + n * W + at, H * D, x.begin() + n * H * D);
        rstd.assign(static_cast<size_t>(N * H), 0.0f);
        ops::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N * H, D, eps);
        cpu_rope_parts(y, false, rope_mode, table, pos, B, Tn, H, D, rope_at);
        return y;
      };
      std::vector<float> q_rstd_want, k_rstd_want;
      const auto q_want = cpu_side(0, Hq, sh.Dq, sh.q_rope_at, wq, q_rstd_want);
      const auto k_want = cpu_side(Hq * sh.Dq, Hkv, sh.Dk, sh.k_rope_at, wk, k_rstd_want);
      DeviceBuffer qa = poisoned(static_cast<size_t>(N * q_out) * sizeof(T)),
                   ka = poisoned(static_cast<size_t>(N * k_out) * sizeof(T));
      DeviceBuffer q_rstd = poisoned(static_cast<size_t>(N * Hq) * 4), k_rstd = poisoned(static_cast<size_t>(N * Hkv) * 4);
      cuda::RopePositions rope;
      if (rope_mode > 0) {
        rope = {gcos.as<const float>(), gsin.as<const float>(), Tn, rope_mode == 1 ? 6 : 0,
                rope_mode == 2 ? gpos.as<const int32_t>() : nullptr};
      }
      const T* in = grows.as<const T>();
      cuda::qk_norm_rope_forward<T>(
          {qa.as<T>(), q_rstd.as<float>(), in, gwq.as<const T>(), Hq, sh.Dq, W, q_out, sh.q_rope_at},
          {ka.as<T>(), k_rstd.as<float>(), in + Hq * sh.Dq, gwk.as<const T>(), Hkv, sh.Dk, W, k_out, sh.k_rope_at}, N,
          eps, rope);
      // The heads of each output row as dense [N·H, D], and whether the padding was left alone.
      auto heads_of = [&](const DeviceBuffer& buf, int64_t width, int64_t ld, int& written_padding) {
        const auto all = down_as<T>(buf, static_cast<size_t>(N * ld));
        std::vector<float> dense(static_cast<size_t>(N * width));
        for (int64_t n = 0; n < N; ++n) {
          std::copy_n(all.begin() + n * ld, width, dense.begin() + n * width);
          for (int64_t c = width; c < ld; ++c) written_padding += !std::isnan(all[static_cast<size_t>(n * ld + c)]);
        }
        return dense;
      };
      int padding = 0;
      const auto q_got = heads_of(qa, Hq * sh.Dq, q_out, padding), k_got = heads_of(ka, Hkv * sh.Dk, k_out, padding);
      EXPECT_EQ(padding, 0) << "values written past the heads of an output row";
      EXPECT_LT(rel_error(down_as<float>(q_rstd, q_rstd_want.size()), q_rstd_want), 1e-6);
      EXPECT_LT(rel_error(down_as<float>(k_rstd, k_rstd_want.size()), k_rstd_want), 1e-6);
      if constexpr (std::is_same_v<T, float>) {
        EXPECT_LT(rel_error(q_got, q_want), 1e-5);
        EXPECT_LT(rel_error(k_got, k_want), 1e-5);
      } else {
        // The four launches it replaces: each side normalised into dense bf16 rows, then rotated.
        auto two_step = [&](int64_t at, int64_t H, int64_t D, int64_t rope_at, const DeviceBuffer& w) {
          DeviceBuffer y = poisoned(static_cast<size_t>(N * H * D) * sizeof(T)), r = poisoned(static_cast<size_t>(N * H) * 4);
          cuda::rmsnorm_forward(y.as<T>(), r.as<float>(), in + at, w.as<const T>(), N * H, D, eps, cuda::HeadRows{H, W});
          if (rope_mode > 0) {
            cuda::rope_forward(y.as<T>() + rope_at, rope.cos, rope.sin, B, Tn, H, D - rope_at, D, rope.pos_offset,
                               rope.seq_pos);
          }
          return down_as<T>(y, static_cast<size_t>(N * H * D));
        };
        const double q_plain = rel_error(two_step(0, Hq, sh.Dq, sh.q_rope_at, gwq), q_want);
        const double k_plain = rel_error(two_step(Hq * sh.Dq, Hkv, sh.Dk, sh.k_rope_at, gwk), k_want);
        EXPECT_GT(q_plain, 0.0);  // bf16 outputs cannot match fp32 exactly
        EXPECT_LE(rel_error(q_got, q_want), 2 * q_plain) << "against the four launches' " << q_plain;
        EXPECT_LE(rel_error(k_got, k_want), 2 * k_plain) << "against the four launches' " << k_plain;
      }
    }
  }
  // Sizes it cannot take, each named.
  DeviceBuffer out = poisoned(static_cast<size_t>(64 * 8) * sizeof(T)), r = poisoned(64 * 4);
  DeviceBuffer x = up_as<T>(data.normal(64 * 8)), w = up_as<T>(data.normal(8)), tab = up(data.normal(64));
  const cuda::QkHeads<T> ok{out.as<T>(), r.as<float>(), x.as<const T>(), w.as<const T>(), 2, 8, 16, 16};
  cuda::QkHeads<T> narrow = ok, odd = ok, part = ok;
  narrow.in_ld = 15;
  odd.D = 7;
  part.rope_at = 3;
  auto error_of = [&](const cuda::QkHeads<T>& q, const cuda::QkHeads<T>& k, const cuda::RopePositions& rope = {}) {
    return testing::error_of([&] { cuda::qk_norm_rope_forward<T>(q, k, 2, eps, rope); });
  };
  EXPECT_NE(error_of(odd, ok).find("qk norm: the query heads' width 7 must be even"), std::string::npos);
  EXPECT_NE(error_of(ok, narrow).find("the key heads' token row strides 15 (in) and 16 (out) must be at least "
                                      "heads·D = 16"),
            std::string::npos);
  EXPECT_NE(error_of(ok, part).find("the key heads' rope part from column 3 of 8 must start at an even column"),
            std::string::npos);
  part.rope_at = 4;
  const cuda::RopePositions rope{tab.as<const float>(), tab.as<const float>(), 2};
  EXPECT_NE(error_of(ok, part, rope).find("the query and key rope parts (8 and 4 columns) must match"),
            std::string::npos);
}

TEST(CudaOps, QkNormAndRopeInOneLaunchEqualTheCpu) {
  SKIP_WITHOUT_GPU();
  check_qk_norm_rope<float>();
  check_qk_norm_rope<bf16>();
}

// The backward of QK-norm + RoPE in one launch: the output gradients of each side (the query rows
// padded, the key rows dense) rotated back and taken through the norm into the q and k blocks of
// fused rows (nothing else of those rows written), each weight's gradient added to what it held.
// Against the CPU's rope_backward then rmsnorm_backward per side, at the forward's three position
// modes and shapes (and multi-head heads of 320, past the registers), on both weight-gradient paths
// (registers and atomics; the fixed-order column sums). fp32 within 1e-5. bf16: the input gradients
// within twice the error of the four launches it replaces (each side's rotation in place, then its
// norm's backward) against the fp32 CPU; the weight gradients, fp32 sums of the same bf16 values,
// within 1e-5. The deterministic path repeats its bits in any block order.
template <typename T>
void check_qk_norm_rope_backward() {
  Data data;
  const int64_t B = 2, Tn = 5, N = B * Tn, P = 32;
  std::vector<QkShape> shapes = kQkShapes;
  shapes.push_back({4, 320, 0, 2, 320, 0});
  for (const QkShape& sh : shapes) {
    const int64_t Hq = sh.Hq, Hkv = sh.Hk, R = sh.rope_width();
    const int64_t W = Hq * sh.Dq + 2 * Hkv * sh.Dk + 8;          // the fused rows, padded
    const int64_t q_out = Hq * sh.Dq + 8, k_out = Hkv * sh.Dk;  // the query gradient rows padded, the key rows dense
    const ops::RopeTable<float> table(static_cast<int>(P), static_cast<int>(R), 10000.0);
    auto gcos = up(table.cos), gsin = up(table.sin);
    const auto rows = as_stored<T>(data.normal(static_cast<size_t>(N * W), 2.0));
    const auto wq = as_stored<T>(data.normal(static_cast<size_t>(sh.Dq)));
    const auto wk = as_stored<T>(data.normal(static_cast<size_t>(sh.Dk)));
    const auto dq_rows = as_stored<T>(data.normal(static_cast<size_t>(N * q_out)));
    const auto dk_rows = as_stored<T>(data.normal(static_cast<size_t>(N * k_out)));
    const auto prior_q = data.normal(static_cast<size_t>(sh.Dq)), prior_k = data.normal(static_cast<size_t>(sh.Dk));
    DeviceBuffer grows = up_as<T>(rows), gwq = up_as<T>(wq), gwk = up_as<T>(wk);
    // Each side's heads as dense [N·H, D] rows: the input, its rstd (from the CPU's forward), and
    // the output gradient.
    struct Side {
      int64_t at, H, D, rope_at, out_ld;
      std::vector<float> x, rstd, dy;
    };
    auto make_side = [&](int64_t at, int64_t H, int64_t D, int64_t rope_at, const std::vector<float>& w,
                         const std::vector<float>& drows, int64_t out_ld) {
      Side s{at, H, D, rope_at, out_ld, std::vector<float>(static_cast<size_t>(N * H * D)), {}, {}};
      s.dy.resize(s.x.size());
      for (int64_t n = 0; n < N; ++n) {
        std::copy_n(rows.begin() + n * W + at, H * D, s.x.begin() + n * H * D);
        std::copy_n(drows.begin() + n * out_ld, H * D, s.dy.begin() + n * H * D);
      }
      std::vector<float> y(s.x.size());
      s.rstd.assign(static_cast<size_t>(N * H), 0.0f);
      ops::rmsnorm_forward(y.data(), s.rstd.data(), s.x.data(), w.data(), N * H, D, 1e-5f);
      return s;
    };
    const Side qs = make_side(0, Hq, sh.Dq, sh.q_rope_at, wq, dq_rows, q_out);
    const Side ks = make_side(Hq * sh.Dq, Hkv, sh.Dk, sh.k_rope_at, wk, dk_rows, k_out);
    DeviceBuffer q_rstd = up(qs.rstd), k_rstd = up(ks.rstd);
    const std::vector<int32_t> pos = {3, 11};
    DeviceBuffer gpos(pos.size() * 4);
    gpos.upload(pos.data(), pos.size() * 4);
    for (const int rope_mode : {0, 1, 2}) {  // no rope, one offset, positions per sequence
      cuda::RopePositions rope;
      if (rope_mode > 0) {
        rope = {gcos.as<const float>(), gsin.as<const float>(), Tn, rope_mode == 1 ? 6 : 0,
                rope_mode == 2 ? gpos.as<const int32_t>() : nullptr};
      }
      // The CPU: each side's gradient rotated back, then through the norm; dw onto the prior.
      auto cpu_side = [&](const Side& s, const std::vector<float>& w, const std::vector<float>& prior,
                          std::vector<float>& dw) {
        std::vector<float> dy = s.dy, dx(s.x.size());
        cpu_rope_parts(dy, true, rope_mode, table, pos, B, Tn, s.H, s.D, s.rope_at);
        dw = prior;
        ops::rmsnorm_backward(dx.data(), dw.data(), dy.data(), s.x.data(), w.data(), s.rstd.data(), N * s.H, s.D,
                              false);
        return dx;
      };
      std::vector<float> dwq_want, dwk_want;
      const auto dxq_want = cpu_side(qs, wq, prior_q, dwq_want), dxk_want = cpu_side(ks, wk, prior_k, dwk_want);
      // One run of the fused backward: the q and k blocks of the fused gradient rows as dense heads,
      // the weight gradients, and how many values it wrote outside those blocks.
      struct Got {
        std::vector<float> dxq, dxk, dwq, dwk;
        int outside = 0;
      };
      const int64_t q_width = Hq * sh.Dq, k_width = Hkv * sh.Dk;
      auto run = [&](bool deterministic, uint64_t seed) {
        testing::redraw_schedule(seed);
        DeviceBuffer din = poisoned(static_cast<size_t>(N * W) * sizeof(T));
        DeviceBuffer gdq = up_as<T>(dq_rows), gdk = up_as<T>(dk_rows), gdwq = up(prior_q), gdwk = up(prior_k);
        const T* in = grows.as<const T>();
        cuda::qk_norm_rope_backward<T>({din.as<T>(), gdwq.as<float>(), gdq.as<const T>(), in, gwq.as<const T>(),
                                        q_rstd.as<const float>(), Hq, sh.Dq, W, q_out, sh.q_rope_at},
                                       {din.as<T>() + q_width, gdwk.as<float>(), gdk.as<const T>(), in + q_width,
                                        gwk.as<const T>(), k_rstd.as<const float>(), Hkv, sh.Dk, W, k_out,
                                        sh.k_rope_at},
                                       N, rope, deterministic);
        const auto all = down_as<T>(din, static_cast<size_t>(N * W));
        Got g{std::vector<float>(dxq_want.size()), std::vector<float>(dxk_want.size()),
              down_as<float>(gdwq, prior_q.size()), down_as<float>(gdwk, prior_k.size())};
        for (int64_t n = 0; n < N; ++n) {
          std::copy_n(all.begin() + n * W, q_width, g.dxq.begin() + n * q_width);
          std::copy_n(all.begin() + n * W + q_width, k_width, g.dxk.begin() + n * k_width);
          for (int64_t c = q_width + k_width; c < W; ++c) g.outside += !std::isnan(all[static_cast<size_t>(n * W + c)]);
        }
        return g;
      };
      // The four launches it replaces, each side: the rotation in place, then the norm's backward.
      std::vector<float> dxq_plain, dxk_plain;
      if constexpr (!std::is_same_v<T, float>) {
        auto four = [&](const Side& s, const std::vector<float>& drows, const DeviceBuffer& w, const DeviceBuffer& rstd,
                        std::vector<float>& dx) {
          DeviceBuffer dy = up_as<T>(drows), d = poisoned(static_cast<size_t>(N * W) * sizeof(T));
          DeviceBuffer gdw = up(std::vector<float>(static_cast<size_t>(s.D)));  // the weight gradient: not compared
          for (int64_t b = 0; b < B && rope_mode > 0; ++b) {  // the reference: a sequence at a time
            cuda::rope_backward(dy.as<T>() + b * Tn * s.out_ld + s.rope_at, rope.cos, rope.sin, 1, Tn, s.H,
                                s.D - s.rope_at, s.D, rope_mode == 1 ? 6 : pos[static_cast<size_t>(b)], nullptr,
                                s.out_ld);
          }
          // rmsnorm_backward reads a dense output gradient: the heads of each row, packed.
          const auto dyr = down_as<T>(dy, static_cast<size_t>(N * s.out_ld));
          std::vector<float> dense(static_cast<size_t>(N * s.H * s.D));
          for (int64_t n = 0; n < N; ++n) {
            std::copy_n(dyr.begin() + n * s.out_ld, s.H * s.D, dense.begin() + n * s.H * s.D);
          }
          DeviceBuffer gdense = up_as<T>(dense);
          cuda::rmsnorm_backward(d.as<T>() + s.at, gdw.as<float>(), gdense.as<const T>(), grows.as<const T>() + s.at,
                                 w.as<const T>(), rstd.as<const float>(), N * s.H, s.D, false, false,
                                 cuda::HeadRows{s.H, W});
          const auto all = down_as<T>(d, static_cast<size_t>(N * W));
          dx.assign(static_cast<size_t>(N * s.H * s.D), 0.0f);
          for (int64_t n = 0; n < N; ++n) {
            std::copy_n(all.begin() + n * W + s.at, s.H * s.D, dx.begin() + n * s.H * s.D);
          }
        };
        four(qs, dq_rows, gwq, q_rstd, dxq_plain);
        four(ks, dk_rows, gwk, k_rstd, dxk_plain);
      }
      for (const bool deterministic : {false, true}) {
        SCOPED_TRACE(fmt::format("{}, {}{}", sh.name(),
                                 rope_mode == 0   ? "norm only"
                                 : rope_mode == 1 ? "rope at offset 6"
                                                  : "rope per sequence",
                                 deterministic ? ", deterministic" : ""));
        const Got got = run(deterministic, 1);
        EXPECT_EQ(got.outside, 0) << "values written outside the q and k blocks";
        const std::pair<const std::vector<float>*, const std::vector<float>*> pairs[] = {
            {&got.dxq, &dxq_want}, {&got.dxk, &dxk_want}, {&got.dwq, &dwq_want}, {&got.dwk, &dwk_want}};
        const std::vector<float>* plain[] = {&dxq_plain, &dxk_plain};
        const char* what[] = {"dq", "dk", "q weight", "k weight"};
        for (int i = 0; i < 4; ++i) {
          if (std::is_same_v<T, float> || i >= 2) {
            EXPECT_LT(rel_error(*pairs[i].first, *pairs[i].second), 1e-5) << what[i];
          } else {
            const double plain_error = rel_error(*plain[i], *pairs[i].second);
            EXPECT_GT(plain_error, 0.0) << what[i];  // bf16 gradients cannot match fp32 exactly
            EXPECT_LE(rel_error(*pairs[i].first, *pairs[i].second), 2 * plain_error)
                << what[i] << " against the four launches' " << plain_error;
          }
        }
        if (deterministic) {
          const Got again = run(true, 2);
          EXPECT_TRUE(again.dxq == got.dxq && again.dxk == got.dxk && again.dwq == got.dwq && again.dwk == got.dwk)
              << "the deterministic backward changed with the block order";
        }
      }
    }
  }
  // Sizes it cannot take, each named.
  DeviceBuffer din = poisoned(static_cast<size_t>(64 * 8) * sizeof(T)), dout = poisoned(static_cast<size_t>(64 * 8) * sizeof(T));
  DeviceBuffer x = up_as<T>(data.normal(64 * 8)), w = up_as<T>(data.normal(8)), r = up(data.normal(64));
  const cuda::QkHeadGrads<T> ok{din.as<T>(), nullptr, dout.as<const T>(), x.as<const T>(), w.as<const T>(),
                                r.as<const float>(), 2, 8, 16, 16};
  cuda::QkHeadGrads<T> narrow = ok, odd = ok;
  narrow.out_ld = 12;
  odd.D = 7;
  EXPECT_NE(testing::error_of([&] { cuda::qk_norm_rope_backward<T>(ok, odd, 2); })
                .find("qk norm backward: the key heads' width 7 must be even"),
            std::string::npos);
  EXPECT_NE(testing::error_of([&] { cuda::qk_norm_rope_backward<T>(narrow, ok, 2); })
                .find("qk norm backward: the query heads' token row strides 16 (in) and 12 (out) must be at least "
                      "heads·D = 16"),
            std::string::npos);
  const cuda::RopePositions ragged{r.as<const float>(), r.as<const float>(), 3};
  EXPECT_NE(testing::error_of([&] { cuda::qk_norm_rope_backward<T>(ok, ok, 2, ragged); })
                .find("qk norm backward: 2 tokens are not whole sequences of 3"),
            std::string::npos);
}

TEST(CudaOps, QkNormAndRopeBackwardInOneLaunchEqualsTheCpu) {
  SKIP_WITHOUT_GPU();
  check_qk_norm_rope_backward<float>();
  check_qk_norm_rope_backward<bf16>();
}

// The loss over bf16 logits, on either path: the losses as the fp32 CPU computes them on the same
// logits, the gradient within twice the error of a plain bf16 computation.
TEST(CudaOps, CrossEntropyOverBf16LogitsOnEitherPath) {
  SKIP_WITHOUT_GPU();
  Data data;
  for (auto [N, V, Vp] : {std::tuple<int64_t, int64_t, int64_t>{6, 1000, 1024}, {3, 50257, 50304}, {5, 300, 300}}) {
    for (size_t skew : {0, 1}) {
      SCOPED_TRACE("V " + std::to_string(V) + " Vp " + std::to_string(Vp) + " skew " + std::to_string(skew));
      const size_t nv = static_cast<size_t>(N * Vp);
      const auto logits = round_bf16(data.normal(nv, 3.0));
      std::vector<int> targets(static_cast<size_t>(N));
      for (int64_t i = 0; i < N; ++i) targets[static_cast<size_t>(i)] = i == 1 ? -1 : static_cast<int>((i * 7919) % V);
      const float scale = 1.0f / static_cast<float>(N);
      std::vector<float> probs = logits, losses(static_cast<size_t>(N));
      ops::softmax_cross_entropy_forward(probs.data(), losses.data(), targets.data(), N, V, Vp);
      ops::softmax_cross_entropy_backward(probs.data(), targets.data(), N, V, Vp, scale);
      std::vector<double> exact(logits.begin(), logits.end()), exact_losses(static_cast<size_t>(N));
      ops::softmax_cross_entropy_forward(exact.data(), exact_losses.data(), targets.data(), N, V, Vp);
      ops::softmax_cross_entropy_backward(exact.data(), targets.data(), N, V, Vp, static_cast<double>(scale));
      Skewed<bf16> gl(logits, skew);
      DeviceBuffer gt(targets.size() * 4), gloss = poisoned(static_cast<size_t>(N) * 4);
      gt.upload(targets.data(), targets.size() * 4);
      cuda::cross_entropy_forward(gloss.as<float>(), gl.p(), gt.as<const int>(), N, V, Vp);
      EXPECT_LT(rel_error(down_as<float>(gloss, static_cast<size_t>(N)), losses), 1e-5);
      EXPECT_EQ(gl.down(), logits) << "the forward must leave the logits alone";
      cuda::cross_entropy_fused(gl.p(), gloss.as<float>(), gt.as<const int>(), N, V, Vp, scale);
      EXPECT_LT(rel_error(down_as<float>(gloss, static_cast<size_t>(N)), losses), 1e-5);
      EXPECT_WITHIN_PLAIN_BF16(gl.down(), round_bf16(probs), exact);
    }
  }
}

// The ops' benchmark checks each op's two paths against each other before it times them.
TEST(CudaOps, BenchmarkComparesThePathsThenTimes) {
  SKIP_WITHOUT_GPU();
  cuda::OpsBenchCase c;
  c.rows = 64;
  c.width = 64;
  c.vocab = 300;
  c.loss_rows = 16;
  c.params = 4096;
  c.repeats = 2;
  const cuda::OpsBenchResult r = cuda::bench_ops(c);
  EXPECT_GT(r.copy_gbps, 0.0);
  ASSERT_EQ(r.rows.size(), 20u);  // ten ops on two paths each
  for (const cuda::OpsBenchRow& row : r.rows) {
    SCOPED_TRACE(row.op + ", " + row.path);
    EXPECT_GT(row.ms, 0.0);
    EXPECT_GT(row.gbps, 0.0);
    EXPECT_LE(row.max_diff, 2e-2);
    if (row.op == "add" || row.op == "gelu forward" || row.op == "adamw (+ bf16 copy)" ||
        row.op == "bias backward (column sums)") {
      EXPECT_EQ(row.max_diff, 0.0);
    }
  }
  EXPECT_EQ(r.rows.front().op, "add");
  EXPECT_DOUBLE_EQ(r.rows.front().bytes, 3.0 * 64 * 64 * 2);
  EXPECT_EQ(r.rows.back().op, "bias backward (column sums)");
  cuda::OpsBenchCase bad = c;
  bad.width = 0;
  EXPECT_THROW((void)cuda::bench_ops(bad), Error);
}

// The deterministic reductions give the same bits in any block order: the bias gradient and the
// sum of squares always, the norm weight gradients and the embedding table's gradient when asked.
// The norms' and the embedding's atomic paths do vary (where the order is surely redrawn: on the
// emulator), which shows the comparison can fail.
TEST(CudaOps, RowReductionsRepeatTheirBitsInAnyBlockOrder) {
  SKIP_WITHOUT_GPU();
  Data data;
  const int64_t N = 600, C = 48, V = 7;
  const auto x = data.normal(static_cast<size_t>(N * C), 2.0), dy = data.normal(static_cast<size_t>(N * C));
  const auto w = data.normal(static_cast<size_t>(C)), prior = data.normal(static_cast<size_t>(C));
  std::vector<float> y(x.size()), mean(static_cast<size_t>(N)), rstd(static_cast<size_t>(N));
  ops::layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), w.data(), N, C, 1e-5f);
  std::vector<int> tokens(static_cast<size_t>(N));
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int>((i * 5 + 1) % V);  // ~86 rows a token
  std::vector<int> rows, starts, ids;
  cuda::group_rows_by_token(tokens.data(), N, rows, starts, ids);
  auto gx = up(x), gdy = up(dy), gw = up(w), gmean = up(mean), grstd = up(rstd);
  DeviceBuffer gtok(tokens.size() * 4), grows(rows.size() * 4), gstarts(starts.size() * 4), gids(ids.size() * 4);
  gtok.upload(tokens.data(), tokens.size() * 4);
  grows.upload(rows.data(), rows.size() * 4);
  gstarts.upload(starts.data(), starts.size() * 4);
  gids.upload(ids.data(), ids.size() * 4);
  const cuda::TokenRuns runs{grows.as<int>(), gstarts.as<int>(), gids.as<int>(), static_cast<int64_t>(ids.size())};
  const std::vector<float> table(static_cast<size_t>(V * C), 0.5f);

  // Every reduction's output, concatenated, after one run in the block order drawn from seed.
  auto run = [&](bool deterministic, uint64_t seed) {
    testing::redraw_schedule(seed);
    auto gdx = poisoned(x.size() * 4), gdw = up(prior), gdb = up(prior), gbias = up(prior), gtable = up(table);
    cuda::layernorm_backward(gdx.as<float>(), gdw.as<float>(), gdb.as<float>(), gdy.as<const float>(),
                             gx.as<const float>(), gw.as<const float>(), gmean.as<const float>(),
                             grstd.as<const float>(), N, C, false, deterministic);
    cuda::bias_backward(gbias.as<float>(), gdy.as<const float>(), N, C);
    cuda::embedding_backward(gtable.as<float>(), static_cast<float*>(nullptr), gdy.as<const float>(),
                             gtok.as<const int>(), 1, N, C, 0, deterministic ? &runs : nullptr);
    DeviceBuffer sq(8);
    cuda::sum_squares(sq.as<double>(), gx.as<const float>(), N * C);
    std::vector<float> out;
    for (auto* b : {&gdw, &gdb, &gbias}) {
      const auto v = down_as<float>(*b, static_cast<size_t>(C));
      out.insert(out.end(), v.begin(), v.end());
    }
    const auto t = down_as<float>(gtable, table.size());
    out.insert(out.end(), t.begin(), t.end());
    double total = 0;
    sq.download(&total, 8);
    return std::pair{out, total};
  };
  const auto a = run(true, 1), b = run(true, 2);
  EXPECT_TRUE(a.first == b.first) << "a deterministic gradient changed with the block order";
  EXPECT_EQ(a.second, b.second) << "the sum of squares changed with the block order";
  if (testing::kScheduleRedrawn) {
    const auto c = run(false, 1), d = run(false, 2);
    const size_t norm_end = 2 * static_cast<size_t>(C), bias_end = 3 * static_cast<size_t>(C);
    EXPECT_FALSE(std::equal(c.first.begin(), c.first.begin() + norm_end, d.first.begin()))
        << "the norm's atomics gave the same weight gradients twice";
    EXPECT_TRUE(std::equal(c.first.begin() + norm_end, c.first.begin() + bias_end, d.first.begin() + norm_end))
        << "the bias gradient is deterministic in either mode";
    EXPECT_FALSE(std::equal(c.first.begin() + bias_end, c.first.end(), d.first.begin() + bias_end))
        << "the embedding's atomics gave the same table gradient twice";
  }
}

// CUDA graphs (src/cuda/stream.h), on the GPU as in the emulator: a capture runs nothing; a
// launch replays the captured work — kernels with the scalar arguments they were given at capture
// (a position passed by value stays), reading device memory as it is at the launch (a position
// read from device memory follows it), GEMMs included. A call that would wait for the device
// inside a capture, work queued on the legacy default stream meanwhile, and an error thrown by the
// captured code all fail the capture and leave the stream usable.
TEST(CudaGraph, ReplaysKernelsWithTheirCapturedArgumentsOverCurrentMemory) {
  SKIP_WITHOUT_GPU();
  const int64_t V = 8, P = 16, C = 4;
  std::vector<float> wte(static_cast<size_t>(V * C)), wpe(static_cast<size_t>(P * C));
  for (size_t i = 0; i < wte.size(); ++i) wte[i] = static_cast<float>(1000 * (i / C) + i % C);
  for (size_t i = 0; i < wpe.size(); ++i) wpe[i] = static_cast<float>(10 * (i / C));
  const DeviceBuffer d_wte = testing::up(wte), d_wpe = testing::up(wpe);
  DeviceBuffer ints(2 * sizeof(int32_t));  // the token, then its position
  DeviceBuffer baked = testing::poisoned(C * sizeof(float)), followed = testing::poisoned(C * sizeof(float));
  // C = A·B, 2×2: A is read at each launch.
  DeviceBuffer a = testing::up({1, 2, 3, 4}), b = testing::up({1, 0, 0, 2}), prod = testing::poisoned(4 * sizeof(float));
  const auto* tok = ints.as<int>();
  const auto* pos = ints.as<int32_t>() + 1;
  int64_t position = 3;  // passed by value: captured as 3
  const cuda::Stream stream;
  cuda::Graph graph;
  EXPECT_TRUE(graph.empty());
  graph.capture(stream.get(), [&] {
    EXPECT_EQ(cuda::current_stream(), stream.get());
    cuda::embedding_forward(baked.as<float>(), tok, d_wte.as<float>(), d_wpe.as<float>(), 1, 1, C, position);
    cuda::embedding_forward(followed.as<float>(), tok, d_wte.as<float>(), d_wpe.as<float>(), 1, 1, C, 0, pos);
    cuda::gemm<float, float>(false, false, 2, 2, 2, 1.0f, a.as<float>(), 2, b.as<float>(), 2, 0.0f, prod.as<float>(), 2);
  });
  EXPECT_FALSE(graph.empty());
  EXPECT_EQ(cuda::current_stream(), nullptr);
  EXPECT_TRUE(std::isnan(down_as<float>(baked, C)[0])) << "the capture ran the kernel";
  EXPECT_TRUE(std::isnan(down_as<float>(prod, 4)[0])) << "the capture ran the GEMM";
  const auto expect_row = [&](const DeviceBuffer& out, int token, int at) {
    const std::vector<float> got = down_as<float>(out, C);
    for (int64_t c = 0; c < C; ++c) EXPECT_EQ(got[static_cast<size_t>(c)], wte[token * C + c] + wpe[at * C + c]) << c;
  };
  for (const auto& [token, at, first_a] : {std::tuple{5, 7, 1.0f}, std::tuple{2, 11, -3.0f}}) {
    SCOPED_TRACE("token " + std::to_string(token) + " at " + std::to_string(at));
    const std::vector<int32_t> h = {token, at};
    ints.upload(h.data(), sizeof(int32_t) * 2);
    const std::vector<float> h_a = {first_a, 2, 3, 4};
    a.upload(h_a.data(), 4 * sizeof(float));
    position = at;  // no effect on the graph
    graph.launch(stream.get());
    expect_row(baked, token, 3);
    expect_row(followed, token, at);
    EXPECT_EQ(down_as<float>(prod, 4), (std::vector<float>{first_a, 4, 3, 8}));
  }

  const auto refused = [&](const std::function<void()>& body) {
    std::string message;
    try {
      graph.capture(stream.get(), body);
    } catch (const Error& e) {
      message = e.what();
    }
    EXPECT_TRUE(graph.empty());
    return message;
  };
  std::vector<float> host(C);
  EXPECT_NE(refused([&] { baked.download(host.data(), C * sizeof(float)); }).find("captur"), std::string::npos);
  EXPECT_NE(refused([&] {
              const cuda::StreamScope legacy(nullptr);
              baked.fill_bytes(0);
            }).find("captur"),
            std::string::npos);
  EXPECT_EQ(refused([] { fail("stopped mid-capture"); }), "stopped mid-capture");
  EXPECT_NE(testing::error_of([&] { graph.launch(stream.get()); }).find("before anything was captured"), std::string::npos);
  EXPECT_NE(testing::error_of([&] { graph.capture(nullptr, [] {}); }).find("legacy default stream"), std::string::npos);
  // The stream and the graph work as before.
  graph.capture(stream.get(), [&] {
    cuda::embedding_forward(followed.as<float>(), tok, d_wte.as<float>(), d_wpe.as<float>(), 1, 1, C, 0, pos);
  });
  const std::vector<int32_t> h = {4, 1};
  ints.upload(h.data(), sizeof(int32_t) * 2);
  graph.launch(stream.get());
  expect_row(followed, 4, 1);
}

}  // namespace
}  // namespace flashgpt
