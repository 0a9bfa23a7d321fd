// The GPU attention kernels against the CPU's standard kernel on the same inputs, in fp32 within
// 1e-5 (relative to the largest value), forward and backward, over the awkward shapes of the
// attention tests: T = 1, lengths no tile divides, Tq ≠ Tk, GQA and MQA, every mask, head dims
// 32…256 and Dqk ≠ Dv. Outputs are poisoned (NaN) before each run. Skipped without a GPU.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "flashgpt/attention/attention.h"
#include "flashgpt/core/device.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/cuda/attention_bench_cuda.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/cta_trace.h"
#include "flashgpt/cuda/warpgroup_cuda.h"
#include "testing/bf16.h"
#include "testing/relative_error.h"
#include "testing/errors.h"
#include "testing/schedule.h"

namespace flashgpt {
namespace {

using testing::from_bf16;
using testing::to_bf16;

struct Case {
  int64_t B, Hq, Hkv, Tq, Tk, Dqk, Dv;
  bool causal;
  int masks;  // bits: 1 padding, 2 documents, 4 per-sequence causal offsets (CaseMasks)
};

std::string name(const Case& c) {
  return fmt::format("B{} Hq{} Hkv{} Tq{} Tk{} D{}/{} {} masks{}", c.B, c.Hq, c.Hkv, c.Tq, c.Tk, c.Dqk, c.Dv,
                     c.causal ? "causal" : "full", c.masks);
}

using testing::attention_rel_error;
using testing::norm_error;

template <typename T>
cuda::DeviceBuffer to_device(const std::vector<T>& host) {
  cuda::DeviceBuffer d(host.size() * sizeof(T));
  d.upload(host.data(), host.size() * sizeof(T));
  return d;
}

std::vector<float> from_device(const cuda::DeviceBuffer& d, size_t n) {
  std::vector<float> h(n);
  d.download(h.data(), n * sizeof(float));
  return h;
}

// A case's masks, on the host and in device memory; c.masks picks which apply:
//   1 padding   — sequence b is padded to Tk − step·b keys (at least 1);
//   2 documents — documents of doc_len tokens;
//   4 offsets   — sequences at different lengths decoding Tq tokens each: sequence b's queries sit
//                 at q_offsets[b] = Tk − Tq − step·b (at least 0), its padding (with 1) right
//                 after its last query.
struct CaseMasks {
  std::vector<int32_t> offsets, lengths, qseg, kseg;
  cuda::DeviceBuffer goff, glen, gqs, gks;
  AttentionMask host, device;

  CaseMasks(const Case& c, int64_t step, int64_t doc_len)
      : offsets(build_offsets(c, step)),
        lengths(build_lengths(c, step, offsets)),
        qseg(static_cast<size_t>(c.B * c.Tq)),
        kseg(static_cast<size_t>(c.B * c.Tk)),
        goff(offsets.size() * 4),
        glen(lengths.size() * 4),
        gqs(qseg.size() * 4),
        gks(kseg.size() * 4),
        host{c.causal, c.Tk - c.Tq},
        device{c.causal, c.Tk - c.Tq} {
    for (int64_t b = 0; b < c.B; ++b) {
      for (int64_t j = 0; j < c.Tk; ++j) kseg[static_cast<size_t>(b * c.Tk + j)] = static_cast<int32_t>(j / doc_len);
      for (int64_t i = 0; i < c.Tq; ++i) {
        qseg[static_cast<size_t>(b * c.Tq + i)] = static_cast<int32_t>((offsets[static_cast<size_t>(b)] + i) / doc_len);
      }
    }
    goff.upload(offsets.data(), offsets.size() * 4);
    glen.upload(lengths.data(), lengths.size() * 4);
    gqs.upload(qseg.data(), qseg.size() * 4);
    gks.upload(kseg.data(), kseg.size() * 4);
    if (c.masks & 4) {
      host.q_offsets = offsets;
      device.q_offsets = {goff.as<int32_t>(), offsets.size()};
    }
    if (c.masks & 1) {
      host.kv_lengths = lengths;
      device.kv_lengths = {glen.as<int32_t>(), lengths.size()};
    }
    if (c.masks & 2) {
      host.q_segments = qseg;
      host.kv_segments = kseg;
      device.q_segments = {gqs.as<int32_t>(), qseg.size()};
      device.kv_segments = {gks.as<int32_t>(), kseg.size()};
    }
  }

  static std::vector<int32_t> build_offsets(const Case& c, int64_t step) {
    std::vector<int32_t> o(static_cast<size_t>(c.B), static_cast<int32_t>(c.Tk - c.Tq));
    if (c.masks & 4) {
      for (int64_t b = 0; b < c.B; ++b) o[static_cast<size_t>(b)] = static_cast<int32_t>(std::max<int64_t>(0, c.Tk - c.Tq - step * b));
    }
    return o;
  }
  static std::vector<int32_t> build_lengths(const Case& c, int64_t step, const std::vector<int32_t>& offsets) {
    std::vector<int32_t> l(static_cast<size_t>(c.B));
    for (int64_t b = 0; b < c.B; ++b) {
      l[static_cast<size_t>(b)] = (c.masks & 4) ? offsets[static_cast<size_t>(b)] + static_cast<int32_t>(c.Tq)
                                                : static_cast<int32_t>(std::max<int64_t>(1, c.Tk - step * b));
    }
    return l;
  }
};

// The fp32 flash kernel and the GPU's standard kernel against the CPU's standard kernel.
// The command lines' tile names: one per tile shape, each naming its own, and only Hopper's marked
// as needing wgmma.
TEST(CudaAttention, TileNamesNameEveryShapeOnce) {
  const std::vector<std::string> names = cuda::flash_tiles_names();
  ASSERT_EQ(names.size(), cuda::kFlashTilesNames.size());
  for (size_t i = 0; i < names.size(); ++i) {
    const cuda::FlashTiles tiles = cuda::kFlashTilesNames[i].second;
    EXPECT_EQ(static_cast<size_t>(tiles), i) << names[i] << ": the table follows the enum";
    EXPECT_EQ(cuda::flash_tiles_named(names[i]), tiles) << names[i];
    EXPECT_EQ(cuda::flash_tiles_name(tiles), names[i]) << "the name back from the tiles";
    EXPECT_EQ(cuda::flash_tiles_use_wgmma(tiles), names[i].starts_with("wgmma")) << names[i];
  }
  EXPECT_FALSE(cuda::flash_tiles_named("square").has_value());
  EXPECT_FALSE(cuda::flash_tiles_named("").has_value());
  EXPECT_EQ(cuda::flash_tiles_named("wgmma-ws-no-pingpong"), cuda::FlashTiles::WgmmaWsNoPingPong);
}

TEST(CudaAttention, Fp32KernelsEqualTheCpuStandardKernel) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  const std::vector<Case> cases = {
      {1, 1, 1, 1, 1, 64, 64, true, 0},        {2, 4, 4, 77, 77, 64, 64, true, 0},
      {1, 8, 2, 130, 130, 128, 128, true, 3},  {2, 6, 1, 33, 95, 128, 128, true, 1},
      {1, 4, 4, 64, 64, 192, 128, true, 2},    {1, 2, 2, 100, 100, 256, 256, false, 0},
      {3, 4, 2, 45, 45, 32, 96, false, 3},     {1, 16, 16, 1, 300, 64, 64, true, 1},
      {2, 12, 12, 257, 257, 64, 64, true, 2},  {1, 2, 1, 513, 513, 128, 128, true, 0},
      {3, 4, 2, 5, 40, 64, 64, true, 5},       {2, 2, 2, 70, 90, 128, 128, true, 7},
  };
  Rng rng(77);
  auto randn = [&](size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = static_cast<float>(rng.normal());
    return v;
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(name(c));
    AttentionDims d{c.B, c.Hq, c.Hkv, c.Tq, c.Tk, c.Dqk, c.Dv, 0};
    const auto q = randn(static_cast<size_t>(c.B * c.Tq * c.Hq * c.Dqk));
    const auto k = randn(static_cast<size_t>(c.B * c.Tk * c.Hkv * c.Dqk));
    const auto v = randn(static_cast<size_t>(c.B * c.Tk * c.Hkv * c.Dv));
    const auto dout = randn(static_cast<size_t>(c.B * c.Tq * c.Hq * c.Dv));
    const CaseMasks masks(c, 7, 23);
    const AttentionMask& host_mask = masks.host;
    const AttentionMask& dev_mask = masks.device;
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.Dqk));
    // CPU reference.
    std::vector<float> o(dout.size()), lse(static_cast<size_t>(c.B * c.Hq * c.Tq)), dq(q.size()), dk(k.size()),
        dv(v.size());
    attention_forward(AttentionKernel::Standard, d, host_mask, scale, q.data(), k.data(), v.data(), o.data(),
                      lse.data());
    attention_backward(AttentionKernel::Standard, d, host_mask, scale, q.data(), k.data(), v.data(), o.data(),
                       lse.data(), dout.data(), dq.data(), dk.data(), dv.data());
    // GPU, outputs poisoned first.
    auto gq = to_device(q), gk = to_device(k), gv = to_device(v), gdo = to_device(dout);
    cuda::DeviceBuffer go(o.size() * 4), glse(lse.size() * 4), gdq(dq.size() * 4), gdk(dk.size() * 4),
        gdv(dv.size() * 4);
    for (auto* buf : {&go, &glse, &gdq, &gdk, &gdv}) buf->fill_bytes(0xFF);
    cuda::flash_forward_fp32(d, dev_mask, scale, gq.as<float>(), gk.as<float>(), gv.as<float>(), go.as<float>(),
                             glse.as<float>());
    cuda::synchronize();
    EXPECT_LT(attention_rel_error(from_device(go, o.size()), o), 1e-5);
    EXPECT_LT(attention_rel_error(from_device(glse, lse.size()), lse), 1e-5);
    // The backward takes the CPU's forward outputs, so it is checked on its own.
    auto gor = to_device(o), glr = to_device(lse);
    cuda::flash_backward_fp32(d, dev_mask, scale, gq.as<float>(), gk.as<float>(), gv.as<float>(), gor.as<float>(),
                              glr.as<float>(), gdo.as<float>(), gdq.as<float>(), gdk.as<float>(), gdv.as<float>());
    cuda::synchronize();
    EXPECT_LT(attention_rel_error(from_device(gdq, dq.size()), dq), 1e-5);
    EXPECT_LT(attention_rel_error(from_device(gdk, dk.size()), dk), 1e-5);
    EXPECT_LT(attention_rel_error(from_device(gdv, dv.size()), dv), 1e-5);
    // The standard kernel: its backward runs from the P its forward kept.
    for (auto* buf : {&go, &glse, &gdq, &gdk, &gdv}) buf->fill_bytes(0xFF);
    cuda::DeviceBuffer ws(cuda::standard_workspace_bytes<float>(d));
    ws.fill_bytes(0xFF);
    cuda::standard_forward_cuda<float>(d, dev_mask, scale, gq.as<float>(), gk.as<float>(), gv.as<float>(),
                                       go.as<float>(), glse.as<float>(), ws.get());
    cuda::standard_backward_cuda<float>(d, dev_mask, scale, gq.as<float>(), gk.as<float>(), gv.as<float>(),
                                        gdo.as<float>(), gdq.as<float>(), gdk.as<float>(), gdv.as<float>(), ws.get());
    cuda::synchronize();
    EXPECT_LT(attention_rel_error(from_device(go, o.size()), o), 1e-5) << "standard";
    EXPECT_LT(attention_rel_error(from_device(glse, lse.size()), lse), 1e-5) << "standard";
    EXPECT_LT(attention_rel_error(from_device(gdq, dq.size()), dq), 1e-5) << "standard";
    EXPECT_LT(attention_rel_error(from_device(gdk, dk.size()), dk), 1e-5) << "standard";
    EXPECT_LT(attention_rel_error(from_device(gdv, dv.size()), dv), 1e-5) << "standard";
  }
}

// ‖a − ref‖; NaN (unwritten) makes it infinite.
double abs_error(const std::vector<double>& a, const std::vector<double>& ref) {
  double num = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return std::numeric_limits<double>::infinity();
    num += (a[i] - ref[i]) * (a[i] - ref[i]);
  }
  return std::sqrt(num);
}

// (name, ours, plain, exact) per output: our absolute error within twice that of a plain
// same-precision computation, with a floor of fp32 round-off (1e-5 per element): an output that is
// exactly zero (one key per query) leaves only the order of fp32 sums to tell them apart.
using Graded = std::vector<std::tuple<const char*, std::vector<double>, std::vector<double>, std::vector<double>>>;
void expect_within_twice_plain(const Graded& outs, const char* kernel) {
  for (const auto& [what, ours, plain, exact] : outs) {
    const double e_ours = abs_error(ours, exact), e_plain = abs_error(plain, exact);
    const double floor = 1e-5 * std::sqrt(static_cast<double>(exact.size()));
    EXPECT_LE(e_ours, 2 * e_plain + floor) << what << ": " << kernel << " " << e_ours << " against plain " << e_plain;
  }
}


// The tensor-core kernels' variants: element type × tile shape (tall: the forward's own, the
// backward then running its automatic tiles; short: the backward's own, the forward automatic;
// wgmma: both Hopper kernels). Each case runs in every variant. Wgmma runs Hopper's warpgroup
// kernels where the GPU and build have them (the emulator does) and the head dims do (forward:
// 64/64, 96/64, 128/128, 192/128; backward: 64/64, 96/64 and 128/128); elsewhere it is Auto.
struct TcVariant {
  cuda::TensorCoreType type;
  cuda::FlashTiles tiles;
};

std::string name(const TcVariant& v) {
  return fmt::format("{} {}", v.type == cuda::TensorCoreType::bf16 ? "bf16" : "fp16",
                     v.tiles == cuda::FlashTiles::Wide   ? "wide tiles"
                     : v.tiles == cuda::FlashTiles::Tall  ? "tall tiles"
                     : v.tiles == cuda::FlashTiles::Short ? "short tiles"
                     : v.tiles == cuda::FlashTiles::Wgmma ? "wgmma tiles"
                     : v.tiles == cuda::FlashTiles::WgmmaTma ? "wgmma tiles loaded by TMA"
                     : v.tiles == cuda::FlashTiles::WgmmaWs ? "wgmma tiles warp-specialized"
                     : v.tiles == cuda::FlashTiles::WgmmaWsNoPingPong ? "wgmma tiles warp-specialized, no ping-pong"
                                                          : "narrow tiles");
}

const std::vector<TcVariant>& tc_variants() {
  static const std::vector<TcVariant> v = {{cuda::TensorCoreType::bf16, cuda::FlashTiles::Wide},
                                           {cuda::TensorCoreType::bf16, cuda::FlashTiles::Narrow},
                                           {cuda::TensorCoreType::fp16, cuda::FlashTiles::Wide},
                                           {cuda::TensorCoreType::fp16, cuda::FlashTiles::Narrow},
                                           {cuda::TensorCoreType::bf16, cuda::FlashTiles::Tall},
                                           {cuda::TensorCoreType::bf16, cuda::FlashTiles::Short},
                                           {cuda::TensorCoreType::bf16, cuda::FlashTiles::Wgmma},
                                           {cuda::TensorCoreType::fp16, cuda::FlashTiles::Wgmma},
                                           {cuda::TensorCoreType::bf16, cuda::FlashTiles::WgmmaTma},
                                           {cuda::TensorCoreType::fp16, cuda::FlashTiles::WgmmaTma},
                                           {cuda::TensorCoreType::bf16, cuda::FlashTiles::WgmmaWs},
                                           {cuda::TensorCoreType::fp16, cuda::FlashTiles::WgmmaWs},
                                           {cuda::TensorCoreType::bf16, cuda::FlashTiles::WgmmaWsNoPingPong}};
  return v;
}

uint16_t to_bits(cuda::TensorCoreType t, float x) {
  return t == cuda::TensorCoreType::bf16 ? to_bf16(x) : testing::to_f16(x);
}
float from_bits(cuda::TensorCoreType t, uint16_t b) {
  return t == cuda::TensorCoreType::bf16 ? from_bf16(b) : testing::from_f16(b);
}
float round_to(cuda::TensorCoreType t, float x) { return from_bits(t, to_bits(t, x)); }

// The shapes for the tensor-core kernels: every instantiated head-dim pair, GQA and MQA, lengths
// no tile divides, Tq ≠ Tk, every mask. The long sequence runs only on a GPU (the emulator
// executes each tensor-core instruction as a warp-wide exchange between fibers).
std::vector<Case> tc_cases() {
  std::vector<Case> c = {
      {1, 4, 4, 77, 77, 64, 64, true, 0},     {2, 4, 2, 130, 130, 128, 128, true, 3},
      {1, 6, 1, 33, 95, 128, 128, true, 1},   {2, 2, 2, 100, 100, 64, 64, false, 2},
      {1, 2, 2, 70, 70, 96, 64, true, 2},     {1, 2, 1, 50, 81, 192, 128, true, 1},
      {1, 1, 1, 1, 1, 64, 64, true, 0},       {3, 4, 2, 20, 90, 64, 64, true, 5},
      {2, 2, 2, 150, 160, 64, 64, true, 4},
      // Few queries over many keys: every kernel's stages are reused several times over.
      {1, 2, 1, 40, 600, 64, 64, true, 0},    {1, 1, 1, 24, 450, 128, 128, false, 0},
  };
#if !defined(FLASHGPT_SIMT)
  c.push_back({1, 12, 12, 1024, 1024, 64, 64, true, 0});
  c.push_back({2, 16, 16, 700, 700, 192, 128, true, 2});
#endif
  return c;
}

// The tensor-core forward against fp64 on the same rounded inputs: its error must stay within
// twice that of a plain same-precision computation (fp32 arithmetic on the rounded inputs, the
// output rounded), the bound the CUDA issue sets. Outputs are poisoned first.
TEST(CudaAttention, TensorCoreFlashForwardIsAsAccurateAsAPlainComputation) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  Rng rng(91);
  for (const TcVariant& var : tc_variants()) {
    for (const Case& c : tc_cases()) {
      SCOPED_TRACE(name(var) + " " + name(c));
      AttentionDims d{c.B, c.Hq, c.Hkv, c.Tq, c.Tk, c.Dqk, c.Dv, 0};
      auto draw = [&](size_t n, std::vector<uint16_t>& bits, std::vector<double>& exact, std::vector<float>& f32) {
        bits.resize(n);
        exact.resize(n);
        f32.resize(n);
        for (size_t i = 0; i < n; ++i) {
          bits[i] = to_bits(var.type, static_cast<float>(rng.normal()));
          f32[i] = from_bits(var.type, bits[i]);
          exact[i] = f32[i];
        }
      };
      std::vector<uint16_t> qb, kb, vb;
      std::vector<double> qd, kd, vd;
      std::vector<float> qf, kf, vf;
      draw(static_cast<size_t>(c.B * c.Tq * c.Hq * c.Dqk), qb, qd, qf);
      draw(static_cast<size_t>(c.B * c.Tk * c.Hkv * c.Dqk), kb, kd, kf);
      draw(static_cast<size_t>(c.B * c.Tk * c.Hkv * c.Dv), vb, vd, vf);
      const CaseMasks masks(c, 5, 29);
      const AttentionMask& hm = masks.host;
      const AttentionMask& dm = masks.device;
      const size_t n_out = static_cast<size_t>(c.B * c.Tq * c.Hq * c.Dv);
      const size_t n_lse = static_cast<size_t>(c.B * c.Hq * c.Tq);
      std::vector<double> ref(n_out), ref_lse(n_lse);
      attention_forward(AttentionKernel::Standard, d, hm, 1.0 / std::sqrt(static_cast<double>(c.Dqk)), qd.data(),
                        kd.data(), vd.data(), ref.data(), ref_lse.data());
      std::vector<float> plain(n_out), plain_lse(n_lse);
      const float scale = 1.0f / std::sqrt(static_cast<float>(c.Dqk));
      attention_forward(AttentionKernel::Standard, d, hm, scale, qf.data(), kf.data(), vf.data(), plain.data(),
                        plain_lse.data());
      std::vector<double> plain_rounded(n_out);
      for (size_t i = 0; i < n_out; ++i) plain_rounded[i] = round_to(var.type, plain[i]);

      auto gq = to_device(qb), gk = to_device(kb), gv = to_device(vb);
      cuda::DeviceBuffer go(n_out * 2), glse(n_lse * 4);
      go.fill_bytes(0xFF);  // NaN in bf16 and fp16 too
      glse.fill_bytes(0xFF);
      cuda::flash_forward_tc(var.type, d, dm, scale, gq.as<uint16_t>(), gk.as<uint16_t>(), gv.as<uint16_t>(),
                             go.as<uint16_t>(), glse.as<float>(), var.tiles);
      cuda::synchronize();
      std::vector<uint16_t> out_bits(n_out);
      go.download(out_bits.data(), n_out * 2);
      std::vector<double> out(n_out);
      for (size_t i = 0; i < n_out; ++i) out[i] = from_bits(var.type, out_bits[i]);
      const double plain_err = norm_error(plain_rounded, ref), flash_err = norm_error(out, ref);
      EXPECT_LE(flash_err, 2 * plain_err + 1e-6) << "flash " << flash_err << " against plain " << plain_err;
      std::vector<float> lse_out = from_device(glse, n_lse);
      std::vector<double> lse_d(lse_out.begin(), lse_out.end());
      for (size_t i = 0; i < n_lse; ++i) {
        if (std::isinf(ref_lse[i])) {
          EXPECT_TRUE(std::isinf(lse_d[i]) && lse_d[i] < 0) << "row " << i;
          lse_d[i] = ref_lse[i] = 0;
        }
      }
      EXPECT_LT(norm_error(lse_d, ref_lse), 1e-3);
    }
  }
}

// The tensor-core backward: dQ, dK and dV against fp64 on the same rounded inputs (q, k, v, dO
// and the forward's output rounded, its lse in fp32), each within twice the error of a plain
// computation (fp32 arithmetic on those inputs, the gradients rounded), with dQ by atomics and by
// the deterministic query-major kernel. Every other case passes its own workspace, poisoned, to
// check the kernel clears what it accumulates into.
TEST(CudaAttention, TensorCoreFlashBackwardIsAsAccurateAsAPlainComputation) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  Rng rng(93);
  auto as_double = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
  int case_index = 0;
  for (const TcVariant& var : tc_variants()) {
    // Tall shapes the forward only: its backward is Auto's, which the wide variant runs.
    if (var.tiles == cuda::FlashTiles::Tall) continue;
    auto rounded = [&](size_t n) {
      std::vector<float> v(n);
      for (auto& x : v) x = round_to(var.type, static_cast<float>(rng.normal()));
      return v;
    };
    auto bits_of = [&](const std::vector<float>& v) {
      std::vector<uint16_t> b(v.size());
      for (size_t i = 0; i < v.size(); ++i) b[i] = to_bits(var.type, v[i]);
      return b;
    };
    for (const Case& c : tc_cases()) {
      // Hopper's backwards (Wgmma's, and WgmmaWs's warp-specialized one) exist for 64/64, 96/64
      // and 128/128; elsewhere they are Auto's, as the wide variant.
      const bool hopper = var.tiles == cuda::FlashTiles::Wgmma || var.tiles == cuda::FlashTiles::WgmmaWs;
      if (hopper && !((c.Dqk == c.Dv && (c.Dqk == 64 || c.Dqk == 128)) || (c.Dqk == 96 && c.Dv == 64))) continue;
      // Their backwards are Wgmma's and WgmmaWs's, tested above.
      if (var.tiles == cuda::FlashTiles::WgmmaTma || var.tiles == cuda::FlashTiles::WgmmaWsNoPingPong) continue;
      SCOPED_TRACE(name(var) + " " + name(c));
      AttentionDims d{c.B, c.Hq, c.Hkv, c.Tq, c.Tk, c.Dqk, c.Dv, 0};
      const auto q = rounded(static_cast<size_t>(c.B * c.Tq * c.Hq * c.Dqk));
      const auto k = rounded(static_cast<size_t>(c.B * c.Tk * c.Hkv * c.Dqk));
      const auto v = rounded(static_cast<size_t>(c.B * c.Tk * c.Hkv * c.Dv));
      const auto dout = rounded(static_cast<size_t>(c.B * c.Tq * c.Hq * c.Dv));
      const CaseMasks masks(c, 5, 29);
      const AttentionMask& hm = masks.host;
      const AttentionMask& dm = masks.device;
      const double scale = 1.0 / std::sqrt(static_cast<double>(c.Dqk));
      // The forward in fp64; the backward's inputs are its output rounded and its lse in fp32.
      const auto qd = as_double(q), kd = as_double(k), vd = as_double(v), dod = as_double(dout);
      std::vector<double> o_exact(dout.size()), lse_exact(static_cast<size_t>(c.B * c.Hq * c.Tq));
      attention_forward(AttentionKernel::Standard, d, hm, scale, qd.data(), kd.data(), vd.data(), o_exact.data(),
                        lse_exact.data());
      std::vector<float> o(o_exact.size()), lse(lse_exact.size());
      for (size_t i = 0; i < o.size(); ++i) o[i] = round_to(var.type, static_cast<float>(o_exact[i]));
      for (size_t i = 0; i < lse.size(); ++i) lse[i] = static_cast<float>(lse_exact[i]);
      const auto od = as_double(o), lsed = as_double(lse);
      std::vector<double> dq_e(q.size()), dk_e(k.size()), dv_e(v.size());
      attention_backward(AttentionKernel::Standard, d, hm, scale, qd.data(), kd.data(), vd.data(), od.data(),
                         lsed.data(), dod.data(), dq_e.data(), dk_e.data(), dv_e.data());
      std::vector<float> dq_p(q.size()), dk_p(k.size()), dv_p(v.size());
      attention_backward(AttentionKernel::Standard, d, hm, static_cast<float>(scale), q.data(), k.data(), v.data(),
                         o.data(), lse.data(), dout.data(), dq_p.data(), dk_p.data(), dv_p.data());
      auto rounded_double = [&](const std::vector<float>& x) {
        std::vector<double> r(x.size());
        for (size_t i = 0; i < x.size(); ++i) r[i] = round_to(var.type, x[i]);
        return r;
      };

      auto gq = to_device(bits_of(q)), gk = to_device(bits_of(k)), gv = to_device(bits_of(v)),
           gdo = to_device(bits_of(dout)), go = to_device(bits_of(o)), glse = to_device(lse);
      const bool own_workspace = case_index++ % 2 == 1;
      for (const bool deterministic : {false, true}) {
        SCOPED_TRACE(deterministic ? "deterministic dQ" : "dQ by atomics");
        cuda::DeviceBuffer gdq(q.size() * 2), gdk(k.size() * 2), gdv(v.size() * 2);
        for (auto* buf : {&gdq, &gdk, &gdv}) buf->fill_bytes(0xFF);
        cuda::DeviceBuffer workspace;
        if (own_workspace) {
          workspace = cuda::DeviceBuffer(cuda::flash_backward_workspace_bytes(d, deterministic));
          workspace.fill_bytes(0xFF);
        }
        cuda::flash_backward_tc(var.type, d, dm, static_cast<float>(scale), gq.as<uint16_t>(), gk.as<uint16_t>(),
                                gv.as<uint16_t>(), go.as<uint16_t>(), glse.as<float>(), gdo.as<uint16_t>(),
                                gdq.as<uint16_t>(), gdk.as<uint16_t>(), gdv.as<uint16_t>(), workspace.get(), var.tiles,
                                deterministic);
        cuda::synchronize();
        auto download = [&](const cuda::DeviceBuffer& buf, size_t n) {
          std::vector<uint16_t> bits(n);
          buf.download(bits.data(), n * 2);
          std::vector<double> out(n);
          for (size_t i = 0; i < n; ++i) out[i] = from_bits(var.type, bits[i]);
          return out;
        };
        expect_within_twice_plain({{"dq", download(gdq, q.size()), rounded_double(dq_p), dq_e},
                                   {"dk", download(gdk, k.size()), rounded_double(dk_p), dk_e},
                                   {"dv", download(gdv, v.size()), rounded_double(dv_p), dv_e}},
                                  "flash");
      }
    }
  }
}

// The deterministic backward gives the same bits on every run, however the GPU orders its blocks;
// the atomic one does not (checked where the order is surely redrawn: on the emulator), which shows
// the comparison can fail. Keys span several key blocks of every tile shape, with GQA. Every key
// is one shared row plus small noise: since each row of dS sums to zero, dQ = Σ dS·K cancels the
// shared row's large per-block parts, so the order of the atomics shows even after rounding to bf16.
TEST(CudaAttention, DeterministicFlashBackwardRepeatsItsBits) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  Rng rng(97);
  const Case c{1, 4, 2, 32, 448, 64, 64, true, 0};
  AttentionDims d{c.B, c.Hq, c.Hkv, c.Tq, c.Tk, c.Dqk, c.Dv, 0};
  const CaseMasks masks(c, 5, 29);
  auto random_bits = [&](int64_t n, float noise, const std::vector<float>& shared_row) {
    std::vector<uint16_t> b(static_cast<size_t>(n));
    for (size_t i = 0; i < b.size(); ++i) {
      const float base = shared_row.empty() ? 0.0f : shared_row[i % shared_row.size()];
      b[i] = to_bf16(base + noise * static_cast<float>(rng.normal()));
    }
    return b;
  };
  std::vector<float> k_row(static_cast<size_t>(c.Hkv * c.Dqk));
  for (auto& x : k_row) x = static_cast<float>(rng.normal());
  const auto q = random_bits(c.B * c.Tq * c.Hq * c.Dqk, 1.0f, {}),
             k = random_bits(c.B * c.Tk * c.Hkv * c.Dqk, 0.05f, k_row),
             v = random_bits(c.B * c.Tk * c.Hkv * c.Dv, 1.0f, {}),
             dout = random_bits(c.B * c.Tq * c.Hq * c.Dv, 1.0f, {});
  auto gq = to_device(q), gk = to_device(k), gv = to_device(v), gdo = to_device(dout);
  cuda::DeviceBuffer go(dout.size() * 2), glse(static_cast<size_t>(c.B * c.Hq * c.Tq) * 4);
  const float scale = 0.125f;
  cuda::flash_forward_tc(cuda::TensorCoreType::bf16, d, masks.device, scale, gq.as<uint16_t>(), gk.as<uint16_t>(),
                         gv.as<uint16_t>(), go.as<uint16_t>(), glse.as<float>());
  for (const auto tiles : {cuda::FlashTiles::Wide, cuda::FlashTiles::Narrow, cuda::FlashTiles::Short,
                           cuda::FlashTiles::Wgmma, cuda::FlashTiles::WgmmaWs}) {
    for (const bool deterministic : {true, false}) {
      SCOPED_TRACE(std::string(tiles == cuda::FlashTiles::Wide       ? "wide"
                               : tiles == cuda::FlashTiles::Short   ? "short"
                               : tiles == cuda::FlashTiles::Wgmma   ? "wgmma"
                               : tiles == cuda::FlashTiles::WgmmaWs ? "wgmma warp-specialized"
                                                                    : "narrow") +
                   (deterministic ? " deterministic" : " atomic"));
      std::vector<std::vector<uint16_t>> runs;
      for (uint64_t seed = 1; seed <= 3; ++seed) {
        testing::redraw_schedule(seed);
        cuda::DeviceBuffer gdq(q.size() * 2), gdk(k.size() * 2), gdv(v.size() * 2);
        cuda::flash_backward_tc(cuda::TensorCoreType::bf16, d, masks.device, scale, gq.as<uint16_t>(),
                                gk.as<uint16_t>(), gv.as<uint16_t>(), go.as<uint16_t>(), glse.as<float>(),
                                gdo.as<uint16_t>(), gdq.as<uint16_t>(), gdk.as<uint16_t>(), gdv.as<uint16_t>(),
                                nullptr, tiles, deterministic);
        std::vector<uint16_t> all(q.size() + k.size() + v.size());
        gdq.download(all.data(), q.size() * 2);
        gdk.download(all.data() + q.size(), k.size() * 2);
        gdv.download(all.data() + q.size() + k.size(), v.size() * 2);
        runs.push_back(std::move(all));
      }
      const bool same = runs[0] == runs[1] && runs[0] == runs[2];
      if (deterministic) {
        EXPECT_TRUE(same) << "the deterministic backward changed its bits between runs";
      } else if (testing::kScheduleRedrawn) {
        EXPECT_FALSE(same) << "the atomic backward gave the same dQ in three block orders";
      }
    }
  }
}

// q, k and v as the column blocks of one fused projection's rows [q | k | v | 8 padding columns]
// (the model's q/k/v GEMM writes them so), read through q_row_stride / k_row_stride /
// v_row_stride; the backward writes dq, dk and dv into the same layout of gradient rows. Against
// the same kernel on dense tensors: the same values (to the bit where the kernel sums in a fixed
// order; within `slack` of the largest where dQ is summed by atomics), padding never written.
template <typename E>
struct FusedRows {
  using Forward = std::function<void(const AttentionDims&, const E*, const E*, const E*, E*, float*)>;
  using Backward = std::function<void(const AttentionDims&, const E*, const E*, const E*, const E*, const float*,
                                      const E*, E*, E*, E*)>;

  static float value(E x) {
    if constexpr (std::is_same_v<E, float>) {
      return x;
    } else {
      return from_bf16(x);
    }
  }
  static E draw(Rng& rng) {
    const float x = static_cast<float>(rng.normal());
    if constexpr (std::is_same_v<E, float>) {
      return x;
    } else {
      return to_bf16(x);
    }
  }

  static void expect(const Case& c, const std::string& what, double slack, const Forward& forward,
                     const Backward& backward) {
    SCOPED_TRACE(what + " " + name(c));
    ASSERT_EQ(c.Tq, c.Tk);  // one projection of the same tokens
    const int64_t qw = c.Hq * c.Dqk, kw = c.Hkv * c.Dqk, vw = c.Hkv * c.Dv, W = qw + kw + vw + 8;
    const int64_t rows = c.B * c.Tq, ow = c.Hq * c.Dv, n_lse = c.B * c.Hq * c.Tq;
    Rng rng(131);
    auto draws = [&](int64_t n) {
      std::vector<E> x(static_cast<size_t>(n));
      for (auto& e : x) e = draw(rng);
      return x;
    };
    const auto q = draws(rows * qw), k = draws(rows * kw), v = draws(rows * vw), dout = draws(rows * ow);
    const E pad = draw(rng);
    std::vector<E> fused(static_cast<size_t>(rows * W), pad);
    for (int64_t r = 0; r < rows; ++r) {
      std::copy_n(q.begin() + r * qw, qw, fused.begin() + r * W);
      std::copy_n(k.begin() + r * kw, kw, fused.begin() + r * W + qw);
      std::copy_n(v.begin() + r * vw, vw, fused.begin() + r * W + qw + kw);
    }
    const AttentionDims d{c.B, c.Hq, c.Hkv, c.Tq, c.Tk, c.Dqk, c.Dv, 0};
    AttentionDims s = d;
    s.q_row_stride = s.k_row_stride = s.v_row_stride = W;
    cuda::DeviceBuffer gq = to_device(q), gk = to_device(k), gv = to_device(v), gdo = to_device(dout),
                       gf = to_device(fused);
    const auto* f = gf.as<E>();
    const size_t e = sizeof(E);
    cuda::DeviceBuffer go(static_cast<size_t>(rows * ow) * e), go2(go.bytes()), glse(static_cast<size_t>(n_lse) * 4),
        glse2(glse.bytes()), gdq(q.size() * e), gdk(k.size() * e), gdv(v.size() * e);
    for (auto* buf : {&go, &go2, &glse, &glse2, &gdq, &gdk, &gdv}) buf->fill_bytes(0xFF);
    cuda::DeviceBuffer ggrad = to_device(std::vector<E>(fused.size(), pad));
    forward(d, gq.as<E>(), gk.as<E>(), gv.as<E>(), go.as<E>(), glse.as<float>());
    forward(s, f, f + qw, f + qw + kw, go2.as<E>(), glse2.as<float>());
    backward(d, gq.as<E>(), gk.as<E>(), gv.as<E>(), go.as<E>(), glse.as<float>(), gdo.as<E>(), gdq.as<E>(),
             gdk.as<E>(), gdv.as<E>());
    auto* g = ggrad.as<E>();
    backward(s, f, f + qw, f + qw + kw, go.as<E>(), glse.as<float>(), gdo.as<E>(), g, g + qw, g + qw + kw);
    cuda::synchronize();
    auto fetch = [](const cuda::DeviceBuffer& buf, size_t n) {
      std::vector<E> h(n);
      buf.download(h.data(), n * sizeof(E));
      return h;
    };
    EXPECT_EQ(fetch(go2, static_cast<size_t>(rows * ow)), fetch(go, static_cast<size_t>(rows * ow))) << "o";
    EXPECT_EQ(from_device(glse2, static_cast<size_t>(n_lse)), from_device(glse, static_cast<size_t>(n_lse))) << "lse";
    const auto dq = fetch(gdq, q.size()), dk = fetch(gdk, k.size()), dv = fetch(gdv, v.size());
    const auto grads = fetch(ggrad, fused.size());
    float largest = 0.0f;
    for (E x : dq) largest = std::max(largest, std::abs(value(x)));
    int wrong = 0;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t col = 0; col < W; ++col) {
        const E got = grads[static_cast<size_t>(r * W + col)];
        if (col >= qw + kw + vw) {
          wrong += !(got == pad);
        } else if (col >= qw + kw) {
          wrong += !(got == dv[static_cast<size_t>(r * vw + col - qw - kw)]);
        } else if (col >= qw) {
          wrong += !(got == dk[static_cast<size_t>(r * kw + col - qw)]);
        } else {
          const float want = value(dq[static_cast<size_t>(r * qw + col)]);
          wrong += !(std::abs(value(got) - want) <= slack * largest);
        }
      }
    }
    EXPECT_EQ(wrong, 0) << "gradient values in the fused rows differ from the dense run or overwrite the padding";
  }
};

TEST(CudaAttention, FusedProjectionRowsEqualDenseTensors) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  using Bits = FusedRows<uint16_t>;
  const AttentionMask causal{true, 0};
  const Case gqa{2, 4, 2, 70, 70, 64, 64, true, 0}, latent{1, 2, 2, 40, 40, 96, 64, true, 0};
  for (const auto& [tiles, deterministic] :
       std::initializer_list<std::pair<cuda::FlashTiles, bool>>{{cuda::FlashTiles::Auto, true},
                                                                {cuda::FlashTiles::Auto, false},
                                                                {cuda::FlashTiles::Short, true},
                                                                {cuda::FlashTiles::Wgmma, true},
                                                                {cuda::FlashTiles::WgmmaTma, true},
                                                                {cuda::FlashTiles::WgmmaWs, true}}) {
    const auto forward = [&](const AttentionDims& d, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                             uint16_t* o, float* lse) {
      cuda::flash_forward_tc(cuda::TensorCoreType::bf16, d, causal, 0.125f, q, k, v, o, lse, tiles);
    };
    const auto backward = [&](const AttentionDims& d, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                              const uint16_t* o, const float* lse, const uint16_t* dout, uint16_t* dq, uint16_t* dk,
                              uint16_t* dv) {
      cuda::flash_backward_tc(cuda::TensorCoreType::bf16, d, causal, 0.125f, q, k, v, o, lse, dout, dq, dk, dv,
                              nullptr, tiles, deterministic);
    };
    const std::string what = "flash " + std::string(cuda::flash_tiles_name(tiles)) +
                             (deterministic ? " deterministic" : " atomic");
    // Atomic dQ sums in no fixed order: one bf16 rounding either way.
    Bits::expect(gqa, what, deterministic ? 0.0 : 1.0 / 128, forward, backward);
    Bits::expect(latent, what, deterministic ? 0.0 : 1.0 / 128, forward, backward);
  }
  FusedRows<float>::expect(
      {1, 4, 2, 37, 37, 32, 16, true, 0}, "fp32 flash", 0.0,
      [&](const AttentionDims& d, const float* q, const float* k, const float* v, float* o, float* lse) {
        cuda::flash_forward_fp32(d, causal, 0.25f, q, k, v, o, lse);
      },
      [&](const AttentionDims& d, const float* q, const float* k, const float* v, const float* o, const float* lse,
          const float* dout, float* dq, float* dk, float* dv) {
        cuda::flash_backward_fp32(d, causal, 0.25f, q, k, v, o, lse, dout, dq, dk, dv);
      });
  // The standard kernel keeps P from its forward for its backward: one workspace a layout.
  const Case standard{2, 4, 2, 33, 33, 32, 32, true, 0};
  const AttentionDims sd{standard.B, standard.Hq, standard.Hkv, standard.Tq, standard.Tk, standard.Dqk, standard.Dv, 0};
  cuda::DeviceBuffer ws_dense(cuda::standard_workspace_bytes<cuda::bf16>(sd)),
      ws_fused(cuda::standard_workspace_bytes<cuda::bf16>(sd));
  auto ws = [&](const AttentionDims& d) { return d.q_row_stride ? ws_fused.get() : ws_dense.get(); };
  auto bf = [](auto* p) {
    using P = std::remove_pointer_t<decltype(p)>;
    return reinterpret_cast<std::conditional_t<std::is_const_v<P>, const cuda::bf16*, cuda::bf16*>>(p);
  };
  Bits::expect(
      standard, "standard bf16", 0.0,
      [&](const AttentionDims& d, const uint16_t* q, const uint16_t* k, const uint16_t* v, uint16_t* o, float* lse) {
        cuda::standard_forward_cuda<cuda::bf16>(d, causal, 0.25f, bf(q), bf(k), bf(v), bf(o), lse, ws(d));
      },
      [&](const AttentionDims& d, const uint16_t* q, const uint16_t* k, const uint16_t* v, const uint16_t*,
          const float*, const uint16_t* dout, uint16_t* dq, uint16_t* dk, uint16_t* dv) {
        cuda::standard_backward_cuda<cuda::bf16>(d, causal, 0.25f, bf(q), bf(k), bf(v), bf(dout), bf(dq), bf(dk),
                                                 bf(dv), ws(d));
      });
  // A query row stride that breaks the 16-byte rows is refused by name.
  cuda::DeviceBuffer buf(1 << 16), lse(1 << 12);
  AttentionDims odd{1, 1, 1, 8, 8, 64, 64, 0};
  odd.q_row_stride = 68;
  auto* p = buf.as<uint16_t>();
  const std::string err = testing::error_of([&] {
    cuda::flash_forward_tc(cuda::TensorCoreType::bf16, odd, causal, 1.0f, p, p, p, p, lse.as<float>());
  });
  EXPECT_NE(err.find("q row 68"), std::string::npos) << err;
}

// The GPU's standard kernel in bf16 (bf16 products, P and dS rounded to bf16, fp32 sums): output
// and gradients against fp64 on the same rounded inputs, within twice the error of a plain
// computation (fp32 arithmetic on those inputs, the results rounded).
TEST(CudaAttention, Bf16StandardKernelIsAsAccurateAsAPlainComputation) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  Rng rng(95);
  auto as_double = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
  auto rounded = [&](size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = from_bf16(to_bf16(static_cast<float>(rng.normal())));
    return v;
  };
  auto bits_of = [](const std::vector<float>& v) {
    std::vector<uint16_t> b(v.size());
    for (size_t i = 0; i < v.size(); ++i) b[i] = to_bf16(v[i]);
    return b;
  };
  auto rounded_double = [](const std::vector<float>& x) {
    std::vector<double> r(x.size());
    for (size_t i = 0; i < x.size(); ++i) r[i] = from_bf16(to_bf16(x[i]));
    return r;
  };
  auto download = [](const cuda::DeviceBuffer& buf, size_t n) {
    std::vector<uint16_t> bits(n);
    buf.download(bits.data(), n * 2);
    std::vector<double> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = from_bf16(bits[i]);
    return out;
  };
  std::vector<Case> cases = tc_cases();
  cases.push_back({2, 3, 3, 20, 45, 40, 24, false, 3});  // head dims the flash kernels are not built for
  for (const Case& c : cases) {
    SCOPED_TRACE(name(c));
    AttentionDims d{c.B, c.Hq, c.Hkv, c.Tq, c.Tk, c.Dqk, c.Dv, 0};
    const auto q = rounded(static_cast<size_t>(c.B * c.Tq * c.Hq * c.Dqk));
    const auto k = rounded(static_cast<size_t>(c.B * c.Tk * c.Hkv * c.Dqk));
    const auto v = rounded(static_cast<size_t>(c.B * c.Tk * c.Hkv * c.Dv));
    const auto dout = rounded(static_cast<size_t>(c.B * c.Tq * c.Hq * c.Dv));
    const CaseMasks masks(c, 5, 29);
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.Dqk));
    const auto qd = as_double(q), kd = as_double(k), vd = as_double(v), dod = as_double(dout);
    const size_t n_lse = static_cast<size_t>(c.B * c.Hq * c.Tq);
    std::vector<double> o_e(dout.size()), lse_e(n_lse), dq_e(q.size()), dk_e(k.size()), dv_e(v.size());
    attention_forward(AttentionKernel::Standard, d, masks.host, scale, qd.data(), kd.data(), vd.data(), o_e.data(),
                      lse_e.data());
    attention_backward(AttentionKernel::Standard, d, masks.host, scale, qd.data(), kd.data(), vd.data(), o_e.data(),
                       lse_e.data(), dod.data(), dq_e.data(), dk_e.data(), dv_e.data());
    std::vector<float> o_p(dout.size()), lse_p(n_lse), dq_p(q.size()), dk_p(k.size()), dv_p(v.size());
    attention_forward(AttentionKernel::Standard, d, masks.host, static_cast<float>(scale), q.data(), k.data(),
                      v.data(), o_p.data(), lse_p.data());
    attention_backward(AttentionKernel::Standard, d, masks.host, static_cast<float>(scale), q.data(), k.data(),
                       v.data(), o_p.data(), lse_p.data(), dout.data(), dq_p.data(), dk_p.data(), dv_p.data());

    auto gq = to_device(bits_of(q)), gk = to_device(bits_of(k)), gv = to_device(bits_of(v)),
         gdo = to_device(bits_of(dout));
    cuda::DeviceBuffer go(dout.size() * 2), glse(n_lse * 4), gdq(q.size() * 2), gdk(k.size() * 2), gdv(v.size() * 2);
    for (auto* buf : {&go, &glse, &gdq, &gdk, &gdv}) buf->fill_bytes(0xFF);
    cuda::DeviceBuffer ws(cuda::standard_workspace_bytes<cuda::bf16>(d));
    ws.fill_bytes(0xFF);
    cuda::standard_forward_cuda<cuda::bf16>(d, masks.device, static_cast<float>(scale), gq.as<cuda::bf16>(),
                                            gk.as<cuda::bf16>(), gv.as<cuda::bf16>(), go.as<cuda::bf16>(),
                                            glse.as<float>(), ws.get());
    cuda::standard_backward_cuda<cuda::bf16>(d, masks.device, static_cast<float>(scale), gq.as<cuda::bf16>(),
                                             gk.as<cuda::bf16>(), gv.as<cuda::bf16>(), gdo.as<cuda::bf16>(),
                                             gdq.as<cuda::bf16>(), gdk.as<cuda::bf16>(), gdv.as<cuda::bf16>(), ws.get());
    cuda::synchronize();
    expect_within_twice_plain({{"o", download(go, o_e.size()), rounded_double(o_p), o_e},
                               {"dq", download(gdq, q.size()), rounded_double(dq_p), dq_e},
                               {"dk", download(gdk, k.size()), rounded_double(dk_p), dk_e},
                               {"dv", download(gdv, v.size()), rounded_double(dv_p), dv_e}},
                              "standard");
    std::vector<float> lse_got(n_lse);
    glse.download(lse_got.data(), n_lse * 4);
    for (size_t i = 0; i < n_lse; ++i) {
      if (std::isinf(lse_e[i])) {
        EXPECT_EQ(lse_got[i], -std::numeric_limits<float>::infinity()) << "lse " << i;
      } else {
        EXPECT_NEAR(lse_got[i], lse_e[i], 1e-4 * std::abs(lse_e[i]) + 1e-4) << "lse " << i;
      }
    }
  }
}

// Head dims without an instantiation and misaligned rows are refused with what was asked for.
TEST(CudaAttention, TensorCoreKernelsRefuseWhatTheyCannotRun) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  EXPECT_TRUE(cuda::flash_tc_supports(192, 128));
  EXPECT_FALSE(cuda::flash_tc_supports(80, 80));
  cuda::DeviceBuffer buf(1 << 20), lse(1 << 16);
  const AttentionMask m;
  auto* p = buf.as<uint16_t>();
  const std::string dims = testing::error_of([&] {
    cuda::flash_forward_tc(cuda::TensorCoreType::bf16, {1, 1, 1, 8, 8, 80, 80, 0}, m, 1.0f, p, p, p, p,
                           lse.as<float>());
  });
  EXPECT_NE(dims.find("64/64, 96/64, 128/128 or 192/128 (got 80/80)"), std::string::npos) << dims;
  AttentionDims odd{1, 1, 1, 8, 8, 64, 64, 0};
  odd.k_row_stride = 68;
  const std::string rows = testing::error_of([&] {
    cuda::flash_backward_tc(cuda::TensorCoreType::fp16, odd, m, 1.0f, p, p, p, p, lse.as<float>(), p, p, p, p);
  });
  EXPECT_NE(rows.find("16-byte aligned"), std::string::npos) << rows;
}

// Achieved occupancy from block spans, worked by hand: on SM 0 two 8-warp blocks over cycles
// 0–100 and 50–150 (every warp ending with its block), on SM 1 one 4-warp block over 1000–1100
// whose warps end at 1050, 1050, 1100 and 1100, and a span that ended before it began.
TEST(CudaAttention, AchievedOccupancyFromBlockSpans) {
  const std::vector<cuda::CtaSpan> spans{{0, 100, 8 * 100, 0, 8},
                                         {50, 150, 8 * 150, 0, 8},
                                         {1000, 1100, 2 * 1050 + 2 * 1100, 1, 4},
                                         {500, 400, 0, 0, 8}};
  const cuda::AchievedOccupancy a = cuda::achieved_occupancy(spans, 64);
  EXPECT_EQ(a.ctas, 4);
  EXPECT_EQ(a.sms, 2);
  // Active cycles: SM 0 held a block over 0–150, SM 1 over 1000–1100, 250 in all. Warp-cycles:
  // 800 + 800 + (50 + 50 + 100 + 100) = 1900; block-cycles 300.
  EXPECT_DOUBLE_EQ(a.warps, 1900.0 / 250.0);
  EXPECT_DOUBLE_EQ(a.blocks, 300.0 / 250.0);
  EXPECT_DOUBLE_EQ(a.fraction, 1900.0 / 250.0 / 64.0);
  // Two blocks back to back with a gap: the gap is not active time.
  const std::vector<cuda::CtaSpan> apart{{0, 100, 4 * 100, 3, 4}, {300, 400, 4 * 400, 3, 4}};
  const cuda::AchievedOccupancy b = cuda::achieved_occupancy(apart, 32);
  EXPECT_EQ(b.sms, 1);
  EXPECT_DOUBLE_EQ(b.warps, 4.0);
  EXPECT_DOUBLE_EQ(b.fraction, 4.0 / 32.0);
  EXPECT_EQ(cuda::achieved_occupancy({}, 64).fraction, 0.0);
  EXPECT_NE(testing::error_of([&] { cuda::achieved_occupancy(spans, 0); }).find("at least one warp"), std::string::npos);
}

// While a CtaTrace records, every block of each flash kernel's launch writes its span (the slots
// start zeroed, so a block that skipped it shows as 0 warps), the outputs are the same bits as
// untraced, and the achieved occupancy stays within the theoretical.
TEST(CudaAttention, CtaTraceRecordsEveryBlockOfTheFlashKernels) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  Rng rng(5);
  const AttentionDims d{2, 4, 2, 80, 80, 64, 64, 0};
  const AttentionMask m{true, 0};
  auto random_bits = [&](int64_t n) {
    std::vector<uint16_t> b(static_cast<size_t>(n));
    for (auto& x : b) x = to_bf16(static_cast<float>(rng.normal()));
    return b;
  };
  const auto q = random_bits(d.B * d.Tq * d.Hq * d.Dqk), k = random_bits(d.B * d.Tk * d.Hkv * d.Dqk),
             v = random_bits(d.B * d.Tk * d.Hkv * d.Dv), dout = random_bits(d.B * d.Tq * d.Hq * d.Dv);
  auto gq = to_device(q), gk = to_device(k), gv = to_device(v), gdo = to_device(dout);
  const size_t no = dout.size();
  cuda::DeviceBuffer go(no * 2), go_traced(no * 2), glse(static_cast<size_t>(d.B * d.Hq * d.Tq) * 4),
      gdq(q.size() * 2), gdk(k.size() * 2), gdv(v.size() * 2);
  const auto bf16 = cuda::TensorCoreType::bf16;
  auto forward = [&](cuda::DeviceBuffer& o) {
    cuda::flash_forward_tc(bf16, d, m, 0.125f, gq.as<uint16_t>(), gk.as<uint16_t>(), gv.as<uint16_t>(),
                           o.as<uint16_t>(), glse.as<float>());
  };
  auto backward = [&](bool deterministic, cuda::FlashTiles tiles = cuda::FlashTiles::Auto) {
    cuda::flash_backward_tc(bf16, d, m, 0.125f, gq.as<uint16_t>(), gk.as<uint16_t>(), gv.as<uint16_t>(),
                            go.as<uint16_t>(), glse.as<float>(), gdo.as<uint16_t>(), gdq.as<uint16_t>(),
                            gdk.as<uint16_t>(), gdv.as<uint16_t>(), nullptr, tiles, deterministic);
  };
  forward(go);
  const cuda::FlashOccupancy theoretical = cuda::flash_tc_occupancy(bf16, d);
  const int slots = cuda::max_warps_per_sm();
  cuda::CtaTrace trace(4096);
  auto check_spans = [&](const cuda::TracedLaunch& l, double most) {
    SCOPED_TRACE(l.kernel);
    ASSERT_FALSE(l.ctas.empty());
    for (const cuda::CtaSpan& s : l.ctas) {
      ASSERT_GT(s.warps, 0u) << "a block did not record its start";
      EXPECT_GE(s.end, s.start);
      EXPECT_GE(s.warp_end_sum, s.warps * s.start);
      EXPECT_LE(s.warp_end_sum, s.warps * s.end);
    }
    const cuda::AchievedOccupancy a = cuda::achieved_occupancy(l.ctas, slots);
    EXPECT_EQ(a.ctas, static_cast<int64_t>(l.ctas.size()));
    EXPECT_GE(a.sms, 1);
    EXPECT_GT(a.fraction, 0.0);
    EXPECT_LE(a.fraction, most + 1e-9);
  };

  forward(go_traced);
  std::vector<cuda::TracedLaunch> launches = trace.read();
  ASSERT_EQ(launches.size(), 1u);
  EXPECT_NE(launches[0].kernel.find("flash forward"), std::string::npos) << launches[0].kernel;
  check_spans(launches[0], theoretical.forward);
  std::vector<uint16_t> plain(no), traced(no);
  go.download(plain.data(), no * 2);
  go_traced.download(traced.data(), no * 2);
  EXPECT_EQ(plain, traced) << "tracing changed the forward's output";
  EXPECT_TRUE(trace.read().empty()) << "a read starts afresh";
  // Hopper's forwards: every warp ends its block's span, the warp-specialized one's producer
  // warpgroup too (it leaves early), and the output is the untraced one's.
  if (cuda::warpgroup_mma_supported()) {
    for (const auto& [tiles, warps] : {std::pair{cuda::FlashTiles::Wgmma, 8u}, std::pair{cuda::FlashTiles::WgmmaTma, 8u},
                                       std::pair{cuda::FlashTiles::WgmmaWs, 12u},
                                       std::pair{cuda::FlashTiles::WgmmaWsNoPingPong, 12u}}) {
      cuda::flash_forward_tc(bf16, d, m, 0.125f, gq.as<uint16_t>(), gk.as<uint16_t>(), gv.as<uint16_t>(),
                             go_traced.as<uint16_t>(), glse.as<float>(), tiles);
      launches = trace.read();
      ASSERT_EQ(launches.size(), 1u);
      EXPECT_NE(launches[0].kernel.find("Hopper flash forward"), std::string::npos) << launches[0].kernel;
      for (const cuda::CtaSpan& span : launches[0].ctas) ASSERT_EQ(span.warps, warps) << launches[0].kernel;
      check_spans(launches[0], 1.0);
      go_traced.download(traced.data(), no * 2);
      int differ = 0;
      for (size_t i = 0; i < no; ++i) {  // the same attention, rounded to bf16 by another kernel
        const float a = from_bf16(plain[i]), b = from_bf16(traced[i]);
        differ += !(std::fabs(a - b) <= 0.01f + 0.02f * std::fabs(a));
      }
      EXPECT_EQ(differ, 0) << launches[0].kernel;
    }
  }

  backward(false);  // the main kernel is traced; the prologue and dQ's conversion are not
  launches = trace.read();
  ASSERT_EQ(launches.size(), 1u);
  EXPECT_NE(launches[0].kernel.find("flash backward"), std::string::npos) << launches[0].kernel;
  check_spans(launches[0], theoretical.backward);
  backward(true);  // dK and dV, then dQ
  launches = trace.read();
  ASSERT_EQ(launches.size(), 2u);
  EXPECT_NE(launches[1].kernel.find("deterministic dQ"), std::string::npos) << launches[1].kernel;
  check_spans(launches[0], theoretical.backward);
  check_spans(launches[1], 1.0);
  // Hopper's backwards, atomic and deterministic: every warp ends its span, the warp-specialized
  // one's producer warpgroup too, and the gradients are the Auto backward's.
  if (cuda::warpgroup_mma_supported()) {
    const size_t n_grad = q.size() + k.size() + v.size();
    auto gradients = [&] {
      std::vector<uint16_t> all(n_grad);
      gdq.download(all.data(), q.size() * 2);
      gdk.download(all.data() + q.size(), k.size() * 2);
      gdv.download(all.data() + q.size() + k.size(), v.size() * 2);
      return all;
    };
    backward(false);
    trace.read();
    const std::vector<uint16_t> reference = gradients();
    for (const auto& [tiles, warps] : {std::pair{cuda::FlashTiles::Wgmma, 8u}, std::pair{cuda::FlashTiles::WgmmaWs, 12u}}) {
      for (const bool deterministic : {false, true}) {
        for (auto* buf : {&gdq, &gdk, &gdv}) buf->fill_bytes(0xFF);
        backward(deterministic, tiles);
        launches = trace.read();
        ASSERT_EQ(launches.size(), deterministic ? 2u : 1u);
        EXPECT_NE(launches[0].kernel.find("Hopper flash backward"), std::string::npos) << launches[0].kernel;
        for (const cuda::CtaSpan& span : launches[0].ctas) ASSERT_EQ(span.warps, warps) << launches[0].kernel;
        check_spans(launches[0], 1.0);
        const std::vector<uint16_t> got = gradients();
        int differ = 0;
        for (size_t i = 0; i < n_grad; ++i) {  // the same gradients, summed in another order
          const float a = from_bf16(reference[i]), b = from_bf16(got[i]);
          differ += !(std::fabs(a - b) <= 0.02f + 0.02f * std::fabs(a));
        }
        EXPECT_EQ(differ, 0) << launches[0].kernel;
      }
    }
  }

  {  // an inner trace records instead; one too small skips the launch and says so
    cuda::CtaTrace inner(4096);
    forward(go_traced);
    EXPECT_EQ(inner.read().size(), 1u);
  }
  {
    cuda::CtaTrace tiny(1);
    forward(go_traced);
    EXPECT_EQ(tiny.skipped(), 1);
    EXPECT_TRUE(tiny.read().empty());
    EXPECT_EQ(tiny.skipped(), 0) << "a read starts the count afresh";
  }
  EXPECT_TRUE(trace.read().empty()) << "the outer trace recorded while an inner one lived";
  forward(go_traced);
  EXPECT_EQ(trace.read().size(), 1u) << "the outer trace records again once the inner one is gone";
}

// Which kernel each Hopper tile runs, at latent attention's 96/64 (head 64 + rope 32: Q and K end
// in a 64-byte-swizzled half panel, which the TMA tiles copy as a box of 32 columns and the
// backward's dK and dQ products read MN-major as a wgmma of their own) as at 64/64: each its own,
// forward and backward (the backward's main kernel, the first launch traced; without dQ in the
// deterministic backward). The accuracy tests hold what they compute.
TEST(CudaAttention, HopperTilesRunTheirKernels) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  if (!cuda::warpgroup_mma_supported()) GTEST_SKIP() << "this GPU or build has no wgmma";
  cuda::CtaTrace trace(4096);
  for (const auto& [Dqk, Dv] : {std::pair{96, 64}, std::pair{64, 64}}) {
    const AttentionDims d{1, 2, 2, 70, 70, Dqk, Dv, 0};
    const size_t qk_bytes = static_cast<size_t>(70 * 2 * Dqk) * 2, v_bytes = static_cast<size_t>(70 * 2 * Dv) * 2;
    cuda::DeviceBuffer q(qk_bytes), k(qk_bytes), v(v_bytes), o(v_bytes), lse(static_cast<size_t>(2 * 70) * 4);
    cuda::DeviceBuffer dout(v_bytes), dq(qk_bytes), dk(qk_bytes), dv(v_bytes);
    for (auto* buf : {&q, &k, &v, &dout}) buf->fill_bytes(0);
    for (const auto& [tiles, kernel] :
         {std::pair{cuda::FlashTiles::Wgmma, "Hopper flash forward"},
          std::pair{cuda::FlashTiles::WgmmaTma, "Hopper flash forward (TMA)"},
          std::pair{cuda::FlashTiles::WgmmaWs, "Hopper flash forward (warp-specialized)"}}) {
      cuda::flash_forward_tc(cuda::TensorCoreType::bf16, d, AttentionMask{true, 0}, 0.125f, q.as<uint16_t>(),
                             k.as<uint16_t>(), v.as<uint16_t>(), o.as<uint16_t>(), lse.as<float>(), tiles);
      const std::vector<cuda::TracedLaunch> launches = trace.read();
      ASSERT_EQ(launches.size(), 1u);
      EXPECT_EQ(launches[0].kernel, kernel) << Dqk << "/" << Dv;
    }
    for (const auto& [tiles, kernel] : {std::pair{cuda::FlashTiles::Wgmma, "Hopper flash backward"},
                                        std::pair{cuda::FlashTiles::WgmmaWs, "Hopper flash backward (warp-specialized)"}}) {
      for (const bool deterministic : {false, true}) {
        cuda::flash_backward_tc(cuda::TensorCoreType::bf16, d, AttentionMask{true, 0}, 0.125f, q.as<uint16_t>(),
                                k.as<uint16_t>(), v.as<uint16_t>(), o.as<uint16_t>(), lse.as<float>(),
                                dout.as<uint16_t>(), dq.as<uint16_t>(), dk.as<uint16_t>(), dv.as<uint16_t>(), nullptr,
                                tiles, deterministic);
        const std::vector<cuda::TracedLaunch> launches = trace.read();
        ASSERT_EQ(launches.size(), deterministic ? 2u : 1u);
        EXPECT_EQ(launches[0].kernel, std::string(kernel) + (deterministic ? " (dK, dV)" : "")) << Dqk << "/" << Dv;
      }
    }
  }
}

// The benchmark checks the kernel against the fp32 one, then times it: its figures are present and
// consistent, and the extra memory it reports is what the kernels were given.
TEST(CudaAttention, BenchmarkChecksThenTimes) {
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none;
  for (const auto type : {cuda::TensorCoreType::bf16, cuda::TensorCoreType::fp16}) {
    cuda::FlashBenchCase c;
    c.type = type;
    c.dims = AttentionDims{1, 2, 2, 48, 48, 96, 64, 0};
    c.repeats = 1;
    const cuda::FlashBenchResult r = cuda::bench_flash_attention(c);
    EXPECT_GT(r.fwd_ms, 0.0);
    EXPECT_GE(r.fwd_bwd_ms, r.fwd_ms);
    EXPECT_GT(r.fwd_tflops, 0.0);
    EXPECT_NEAR(r.fwd_bwd_tflops / r.fwd_tflops, 3.5 * r.fwd_ms / r.fwd_bwd_ms, 1e-9);
    EXPECT_LT(r.max_rel_err, type == cuda::TensorCoreType::bf16 ? 2e-2 : 4e-3);
    EXPECT_GT(r.max_rel_err, 0.0);  // rounded outputs cannot match fp32 exactly
    EXPECT_GE(static_cast<size_t>(r.extra_bytes), cuda::flash_backward_workspace_bytes(c.dims) + 2 * 48 * 4);
    // One 8-warp block per SM at the wide tiles' shared memory: 256 of 2048 thread slots.
    EXPECT_GE(r.occupancy.forward_blocks_per_sm, 1);
    EXPECT_GE(r.occupancy.backward_blocks_per_sm, 1);
    EXPECT_GT(r.occupancy.forward, 0.0);
    EXPECT_LE(r.occupancy.forward, 1.0);
    EXPECT_NEAR(r.occupancy.backward, r.occupancy.backward_blocks_per_sm * 256 / 2048.0, 1e-12);
    // Achieved: measured, and within the theoretical.
    EXPECT_GT(r.achieved_forward.ctas, 0);
    EXPECT_GT(r.achieved_backward.ctas, 0);
    EXPECT_GT(r.achieved_forward.fraction, 0.0);
    EXPECT_LE(r.achieved_forward.fraction, r.occupancy.forward + 1e-9);
    EXPECT_GT(r.achieved_backward.fraction, 0.0);
    EXPECT_LE(r.achieved_backward.fraction, r.occupancy.backward + 1e-9);
    EXPECT_LE(r.achieved_backward.blocks, r.occupancy.backward_blocks_per_sm + 1e-9);
  }
  // The standard kernel: checked and timed the same way; its extra memory is P for every head.
  cuda::FlashBenchCase st;
  st.kernel = AttentionKernel::Standard;
  st.dims = AttentionDims{2, 2, 1, 40, 40, 64, 64, 0};
  st.repeats = 1;
  const cuda::FlashBenchResult rs = cuda::bench_flash_attention(st);
  EXPECT_GT(rs.fwd_ms, 0.0);
  EXPECT_LT(rs.max_rel_err, 2e-2);
  EXPECT_GE(rs.extra_bytes, 2 * 2 * 40 * 40 * 2);
  EXPECT_EQ(rs.achieved_forward.ctas, 0) << "the standard kernel is not traced";
  st.type = cuda::TensorCoreType::fp16;
  EXPECT_NE(testing::error_of([&] { cuda::bench_flash_attention(st); }).find("runs bf16"), std::string::npos);
  cuda::FlashBenchCase bad;
  bad.dims = AttentionDims{1, 1, 1, 8, 8, 32, 32, 0};
  EXPECT_NE(testing::error_of([&] { cuda::bench_flash_attention(bad); }).find("no instantiation for head dims 32/32"),
            std::string::npos);
}

TEST(CudaAttention, ReportsWhyWithoutAGpu) {
  if (cuda::gpu_available()) GTEST_SKIP() << "a GPU is present";
  // Without a GPU (or a CUDA build) the kernels refuse with a message instead of crashing.
  EXPECT_THROW(cuda::DeviceBuffer(16), Error);
}

}  // namespace
}  // namespace flashgpt
