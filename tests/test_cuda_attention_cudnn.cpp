// cuDNN's fused attention, the second attention backend (cuda/attention_cudnn.h): the cases it
// refuses name their field; its graphs pass the cuDNN frontend's own checks without a GPU (where
// the build has the backend and cuDNN loads); and on a GPU its forward and backward are held to
// the bound our tensor-core kernels meet — within twice the error of a plain same-precision
// computation against fp64 on the same rounded inputs — with outputs poisoned first.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "flashgpt/attention/attention.h"
#include "flashgpt/core/device.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/attention_cudnn.h"
#include "flashgpt/cuda/device_memory.h"
#include "testing/bf16.h"
#include "testing/errors.h"
#include "testing/relative_error.h"

namespace flashgpt {
namespace {

using cuda::TensorCoreType;
using testing::norm_error;

TEST(CudnnAttention, RefusedCasesNameTheirField) {
  const AttentionDims d{2, 8, 2, 64, 64, 64, 64, 0};
  const std::vector<int32_t> seg(2 * 64, 0), two(2, 0);
  AttentionMask m{true, 0};
  EXPECT_EQ(cuda::cudnn_attention_unsupported(d, m), "");
  AttentionMask docs = m;
  docs.q_segments = seg;
  docs.kv_segments = seg;
  EXPECT_NE(cuda::cudnn_attention_unsupported(d, docs).find("document masks"), std::string::npos);
  AttentionMask offsets = m;
  offsets.q_offsets = two;
  EXPECT_NE(cuda::cudnn_attention_unsupported(d, offsets).find("q_offsets"), std::string::npos);
  EXPECT_NE(cuda::cudnn_attention_unsupported({1, 2, 2, 8, 8, 36, 36, 0}, m).find("36/36"), std::string::npos);
  EXPECT_NE(cuda::cudnn_attention_unsupported({1, 2, 2, 8, 8, 256, 256, 0}, m).find("256/256"), std::string::npos);
  EXPECT_EQ(cuda::cudnn_attention_unsupported({1, 2, 2, 8, 8, 192, 128, 0}, m), "");  // MLA's head dims
  EXPECT_NE(cuda::cudnn_attention_unsupported({1, 6, 4, 8, 8, 64, 64, 0}, m).find("multiple of Hkv"),
            std::string::npos);
  // A causal diagonal that starts at the first key or ends at the last; nothing in between.
  const AttentionDims decode{1, 4, 4, 4, 20, 64, 64, 0};
  EXPECT_EQ(cuda::cudnn_attention_unsupported(decode, AttentionMask{true, 16}), "");
  EXPECT_NE(cuda::cudnn_attention_unsupported(decode, AttentionMask{true, 7}).find("q_offset 7"), std::string::npos);
  AttentionMask padded_decode{true, 16};
  padded_decode.kv_lengths = std::span<const int32_t>(two.data(), 1);
  EXPECT_NE(cuda::cudnn_attention_unsupported(decode, padded_decode).find("kv_lengths"), std::string::npos);
  EXPECT_EQ(cuda::cudnn_attention_unsupported(decode, AttentionMask{false, 0}), "");
}

// The frontend checks every tensor and option of the graphs we build — shapes, strides in our
// [B, T, H·D] layouts, GQA's dK/dV shapes, the masks — before any GPU is involved.
TEST(CudnnAttention, GraphsPassTheFrontendsChecksWithoutAGpu) {
  if (!cuda::cudnn_attention_built()) GTEST_SKIP() << "this build has no cuDNN attention backend";
  std::string why;
  if (!cuda::cudnn_attention_available(&why)) GTEST_SKIP() << why;
  const std::vector<int32_t> lengths = {50, 64};
  struct Shape {
    AttentionDims d;
    AttentionMask m;
  };
  AttentionMask padded{true, 0};
  padded.kv_lengths = lengths;
  const std::vector<Shape> shapes = {
      {{2, 12, 12, 64, 64, 64, 64, 0}, {true, 0}},      // d12's heads
      {{2, 8, 2, 64, 64, 128, 128, 0}, {false, 0}},     // GQA
      {{1, 4, 1, 16, 80, 128, 128, 0}, {true, 64}},     // MQA, a diagonal ending at the last key
      {{2, 4, 4, 64, 64, 192, 128, 0}, {true, 0}},      // MLA's 192/128
      {{2, 4, 2, 64, 64, 64, 64, 0}, padded},           // key padding
      {{1, 4, 4, 32, 32, 64, 64, 96, 4 * 128, 4 * 64}, {true, 0}},  // strided rows (a cache's layout)
  };
  for (const Shape& s : shapes) {
    for (const int sm : {80, 90}) {
      // cuDNN's backward at 192/128 is Hopper's (and newer) only.
      if (sm == 80 && s.d.Dqk > 128) continue;
      for (const TensorCoreType type : {TensorCoreType::bf16, TensorCoreType::fp16}) {
        for (const bool backward : {false, true}) {
          SCOPED_TRACE(fmt::format("sm {} B{} Hq{} Hkv{} Tq{} Tk{} D{}/{} {}", sm, s.d.B, s.d.Hq, s.d.Hkv, s.d.Tq,
                                   s.d.Tk, s.d.Dqk, s.d.Dv, backward ? "backward" : "forward"));
          EXPECT_NO_THROW(cuda::cudnn_attention_validate(type, s.d, s.m, 0.125f, backward, sm));
        }
      }
    }
  }
  // What the frontend itself refuses (our own statement of cuDNN's limits lets these through): the
  // checks can fail.
  const AttentionDims mla{2, 4, 4, 64, 64, 192, 128, 0}, mha{2, 4, 4, 64, 64, 64, 64, 0};
  EXPECT_NE(testing::error_of([&] {
              cuda::cudnn_attention_validate(TensorCoreType::bf16, mla, {true, 0}, 0.125f, true, 80);
            }).find("validating the graph failed"),
            std::string::npos)
      << "Ampere's backward stops at head dim 128";
  EXPECT_NE(testing::error_of([&] {
              cuda::cudnn_attention_validate(TensorCoreType::bf16, mha, {true, 0}, 0.125f, false, 70);
            }).find("validating the graph failed"),
            std::string::npos)
      << "cuDNN's attention needs sm_80 or newer";
  AttentionMask docs{true, 0};
  const std::vector<int32_t> seg(2 * 64, 0);
  docs.q_segments = seg;
  docs.kv_segments = seg;
  EXPECT_NE(testing::error_of([&] {
              cuda::cudnn_attention_validate(TensorCoreType::bf16, {2, 4, 4, 64, 64, 64, 64, 0}, docs, 0.125f, false,
                                             90);
            }).find("document masks"),
            std::string::npos);
}

TEST(CudnnAttention, SaysWhyItCannotRun) {
  std::string why;
  const bool ok = cuda::cudnn_attention_available(&why);
  EXPECT_FALSE(why.empty());
  if (!cuda::cudnn_attention_built()) {
    EXPECT_FALSE(ok);
    EXPECT_NE(testing::error_of([] {
                cuda::cudnn_attention_forward(TensorCoreType::bf16, {1, 1, 1, 8, 8, 64, 64, 0}, {true, 0}, 0.125f,
                                              nullptr, nullptr, nullptr, nullptr, nullptr);
              }).find("not in this build"),
              std::string::npos);
  }
}

uint16_t to_bits(TensorCoreType t, float x) {
  return t == TensorCoreType::bf16 ? testing::to_bf16(x) : testing::to_f16(x);
}
float from_bits(TensorCoreType t, uint16_t b) {
  return t == TensorCoreType::bf16 ? testing::from_bf16(b) : testing::from_f16(b);
}
float round_to(TensorCoreType t, float x) { return from_bits(t, to_bits(t, x)); }


template <typename T>
cuda::DeviceBuffer to_device(const std::vector<T>& host) {
  cuda::DeviceBuffer d(host.size() * sizeof(T));
  d.upload(host.data(), host.size() * sizeof(T));
  return d;
}

struct GpuCase {
  int64_t B, Hq, Hkv, Tq, Tk, Dqk, Dv;
  bool causal, padded;
};

// Forward and backward against fp64 on the same rounded inputs, both element types: every output
// within twice the error of a plain computation (fp32 arithmetic on those inputs, rounded).
TEST(CudnnAttention, ForwardAndBackwardAreAsAccurateAsAPlainComputation) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  if (!cuda::cudnn_attention_built()) GTEST_SKIP() << "this build has no cuDNN attention backend";
  std::string why;
  if (!cuda::cudnn_attention_available(&why)) GTEST_SKIP() << why;
  const std::vector<GpuCase> cases = {
      {2, 4, 4, 77, 77, 64, 64, true, false},      {2, 4, 2, 130, 130, 128, 128, true, true},
      {1, 6, 1, 33, 95, 128, 128, true, false},    {2, 2, 2, 100, 100, 64, 64, false, false},
      {1, 2, 1, 50, 81, 192, 128, true, false},    {1, 12, 12, 1024, 1024, 64, 64, true, false},
      {2, 4, 4, 200, 200, 64, 64, false, true},
  };
  Rng rng(101);
  auto as_double = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
  for (const TensorCoreType type : {TensorCoreType::bf16, TensorCoreType::fp16}) {
    for (const GpuCase& c : cases) {
      SCOPED_TRACE(fmt::format("{} B{} Hq{} Hkv{} Tq{} Tk{} D{}/{}{}{}", type == TensorCoreType::bf16 ? "bf16" : "fp16",
                               c.B, c.Hq, c.Hkv, c.Tq, c.Tk, c.Dqk, c.Dv, c.causal ? " causal" : "",
                               c.padded ? " padded" : ""));
      const AttentionDims d{c.B, c.Hq, c.Hkv, c.Tq, c.Tk, c.Dqk, c.Dv, 0};
      auto rounded = [&](int64_t n) {
        std::vector<float> v(static_cast<size_t>(n));
        for (auto& x : v) x = round_to(type, static_cast<float>(rng.normal()));
        return v;
      };
      auto bits_of = [&](const std::vector<float>& v) {
        std::vector<uint16_t> b(v.size());
        for (size_t i = 0; i < v.size(); ++i) b[i] = to_bits(type, v[i]);
        return b;
      };
      auto download = [&](const cuda::DeviceBuffer& buf, size_t n) {
        std::vector<uint16_t> bits(n);
        buf.download(bits.data(), n * 2);
        std::vector<double> out(n);
        for (size_t i = 0; i < n; ++i) out[i] = from_bits(type, bits[i]);
        return out;
      };
      auto rounded_double = [&](const std::vector<float>& x) {
        std::vector<double> r(x.size());
        for (size_t i = 0; i < x.size(); ++i) r[i] = round_to(type, x[i]);
        return r;
      };
      const auto q = rounded(c.B * c.Tq * c.Hq * c.Dqk), k = rounded(c.B * c.Tk * c.Hkv * c.Dqk),
                 v = rounded(c.B * c.Tk * c.Hkv * c.Dv), dout = rounded(c.B * c.Tq * c.Hq * c.Dv);
      std::vector<int32_t> lengths(static_cast<size_t>(c.B));
      for (int64_t b = 0; b < c.B; ++b) lengths[static_cast<size_t>(b)] = static_cast<int32_t>(std::max<int64_t>(1, c.Tk - 37 * b));
      auto glen = to_device(lengths);
      AttentionMask hm{c.causal, c.causal ? c.Tk - c.Tq : 0}, dm = hm;
      if (c.padded) {
        hm.kv_lengths = lengths;
        dm.kv_lengths = {glen.as<int32_t>(), lengths.size()};
      }
      const double scale = 1.0 / std::sqrt(static_cast<double>(c.Dqk));
      const float fscale = static_cast<float>(scale);

      // Forward: fp64 and plain fp32 on the host, cuDNN on the GPU.
      const auto qd = as_double(q), kd = as_double(k), vd = as_double(v), dod = as_double(dout);
      const size_t n_o = dout.size(), n_lse = static_cast<size_t>(c.B * c.Hq * c.Tq);
      std::vector<double> o_exact(n_o), lse_exact(n_lse);
      attention_forward(AttentionKernel::Standard, d, hm, scale, qd.data(), kd.data(), vd.data(), o_exact.data(),
                        lse_exact.data());
      std::vector<float> o_plain(n_o), lse_plain(n_lse);
      attention_forward(AttentionKernel::Standard, d, hm, fscale, q.data(), k.data(), v.data(), o_plain.data(),
                        lse_plain.data());
      auto gq = to_device(bits_of(q)), gk = to_device(bits_of(k)), gv = to_device(bits_of(v));
      cuda::DeviceBuffer go(n_o * 2), glse(n_lse * 4);
      go.fill_bytes(0xFF);
      glse.fill_bytes(0xFF);
      cuda::cudnn_attention_forward(type, d, dm, fscale, gq.as<uint16_t>(), gk.as<uint16_t>(), gv.as<uint16_t>(),
                                    go.as<uint16_t>(), glse.as<float>());
      cuda::synchronize();
      const double e_ours = norm_error(download(go, n_o), o_exact), e_plain = norm_error(rounded_double(o_plain), o_exact);
      EXPECT_LE(e_ours, 2 * e_plain + 1e-6) << "o: cuDNN " << e_ours << " against plain " << e_plain;
      std::vector<float> lse_got(n_lse);
      glse.download(lse_got.data(), n_lse * 4);
      EXPECT_LT(norm_error(as_double(lse_got), lse_exact), 1e-3) << "lse";

      // Backward from the rounded exact output and the fp32 lse, as the tensor-core kernels' test.
      std::vector<float> o(n_o), lse(n_lse);
      for (size_t i = 0; i < n_o; ++i) o[i] = round_to(type, static_cast<float>(o_exact[i]));
      for (size_t i = 0; i < n_lse; ++i) lse[i] = static_cast<float>(lse_exact[i]);
      const auto od = as_double(o), lsed = as_double(lse);
      std::vector<double> dq_e(q.size()), dk_e(k.size()), dv_e(v.size());
      attention_backward(AttentionKernel::Standard, d, hm, scale, qd.data(), kd.data(), vd.data(), od.data(),
                         lsed.data(), dod.data(), dq_e.data(), dk_e.data(), dv_e.data());
      std::vector<float> dq_p(q.size()), dk_p(k.size()), dv_p(v.size());
      attention_backward(AttentionKernel::Standard, d, hm, fscale, q.data(), k.data(), v.data(), o.data(), lse.data(),
                         dout.data(), dq_p.data(), dk_p.data(), dv_p.data());
      auto go2 = to_device(bits_of(o)), glse2 = to_device(lse), gdo = to_device(bits_of(dout));
      cuda::DeviceBuffer gdq(q.size() * 2), gdk(k.size() * 2), gdv(v.size() * 2);
      for (auto* buf : {&gdq, &gdk, &gdv}) buf->fill_bytes(0xFF);
      cuda::cudnn_attention_backward(type, d, dm, fscale, gq.as<uint16_t>(), gk.as<uint16_t>(), gv.as<uint16_t>(),
                                     go2.as<uint16_t>(), glse2.as<float>(), gdo.as<uint16_t>(), gdq.as<uint16_t>(),
                                     gdk.as<uint16_t>(), gdv.as<uint16_t>());
      cuda::synchronize();
      const struct {
        const char* what;
        std::vector<double> got, plain, exact;
      } grads[] = {{"dq", download(gdq, q.size()), rounded_double(dq_p), dq_e},
                   {"dk", download(gdk, k.size()), rounded_double(dk_p), dk_e},
                   {"dv", download(gdv, v.size()), rounded_double(dv_p), dv_e}};
      for (const auto& g : grads) {
        const double eg = norm_error(g.got, g.exact), ep = norm_error(g.plain, g.exact);
        EXPECT_LE(eg, 2 * ep + 1e-6) << g.what << ": cuDNN " << eg << " against plain " << ep;
      }
    }
  }
}

}  // namespace
}  // namespace flashgpt
