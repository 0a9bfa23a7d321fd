// Property tests (RapidCheck): the flash kernel equals the standard one in fp32, forward and
// backward, over random shapes — T = 1, lengths that tiles do not divide, B = 1, Tq ≠ Tk, GQA and
// MQA, every mask, head dims 32…256, Dqk ≠ Dv — with outputs poisoned before each run.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/tile_gemm.h"
#include "flashgpt/attention/attention.h"
#include "flashgpt/core/rng.h"

namespace flashgpt {
namespace {

// max |a − b| ≤ rtol · max(1, max |b|), with −∞ required to match exactly.
bool close(const std::vector<float>& a, const std::vector<float>& b, double rtol, std::string* why) {
  double scale = 1.0, worst = 0.0;
  for (float x : b)
    if (std::isfinite(x)) scale = std::max(scale, static_cast<double>(std::abs(x)));
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isinf(b[i]) || std::isinf(a[i])) {
      if (a[i] != b[i]) {
        *why = "index " + std::to_string(i) + ": " + std::to_string(a[i]) + " vs " + std::to_string(b[i]);
        return false;
      }
      continue;
    }
    if (!std::isfinite(a[i])) {
      *why = "index " + std::to_string(i) + " not finite (unwritten?)";
      return false;
    }
    worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  if (worst > rtol * scale) {
    *why = "max error " + std::to_string(worst) + " at scale " + std::to_string(scale);
    return false;
  }
  return true;
}

RC_GTEST_PROP(FlashAttention, EqualsStandardForwardAndBackward, ()) {
  const int64_t B = *rc::gen::inRange(1, 3);
  const int64_t Hkv = *rc::gen::inRange(1, 3);
  const int64_t Hq = Hkv * *rc::gen::inRange(1, 4);
  const std::vector<int64_t> dims = {32, 64, 96, 128, 192, 256};
  const int64_t Dqk = *rc::gen::elementOf(dims);
  const int64_t Dv = *rc::gen::weightedOneOf<int64_t>({{3, rc::gen::just(Dqk)}, {1, rc::gen::elementOf(dims)}});
  const int64_t Tq = *rc::gen::weightedOneOf<int64_t>({{1, rc::gen::just<int64_t>(1)}, {4, rc::gen::inRange<int64_t>(1, 90)}});
  const int64_t Tk = Tq + *rc::gen::weightedOneOf<int64_t>({{3, rc::gen::just<int64_t>(0)}, {1, rc::gen::inRange<int64_t>(1, 40)}});
  AttentionMask mask;
  mask.causal = *rc::gen::arbitrary<bool>();
  mask.q_offset = Tk - Tq;  // queries are the last Tq positions (decoding with a cache when Tk > Tq)
  const int mask_kind = *rc::gen::inRange(0, 4);  // 0 none, 1 padding, 2 documents, 3 both
  const AttentionTiling tiles{*rc::gen::element<int64_t>(0, 1, 7, 16, 64), *rc::gen::element<int64_t>(0, 1, 5, 32, 128)};
  const uint64_t seed = *rc::gen::arbitrary<uint64_t>();
  const bool tile_kernel = *rc::gen::arbitrary<bool>();  // the AVX-512 tile kernel, or BLAS on the tiles
  RC_TAG(mask.causal ? "causal" : "full", mask_kind, Hq == Hkv ? "mha" : (Hkv == 1 ? "mqa" : "gqa"));

  Rng rng(seed);
  std::vector<int32_t> lengths(B), q_seg(B * Tq), kv_seg(B * Tk);
  if (mask_kind & 1) {
    for (auto& l : lengths) l = static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(Tk + 1));
    mask.kv_lengths = lengths;
  }
  if (mask_kind & 2) {  // packed documents: a new one starts with probability 1/8 at each position
    for (int64_t b = 0; b < B; ++b) {
      int32_t s = 0;
      for (int64_t j = 0; j < Tk; ++j) {
        if (j > 0 && rng.next_u64() % 8 == 0) ++s;
        kv_seg[b * Tk + j] = s;
      }
      for (int64_t i = 0; i < Tq; ++i) q_seg[b * Tq + i] = kv_seg[b * Tk + mask.q_offset + i];
    }
    mask.q_segments = q_seg;
    mask.kv_segments = kv_seg;
  }
  auto randn = [&](int64_t n) {
    std::vector<float> x(static_cast<size_t>(n));
    for (float& e : x) e = static_cast<float>(rng.normal());
    return x;
  };
  const AttentionDims d{B, Hq, Hkv, Tq, Tk, Dqk, Dv, 0};
  auto q = randn(B * Tq * Hq * Dqk), k = randn(B * Tk * Hkv * Dqk), v = randn(B * Tk * Hkv * Dv);
  auto dout = randn(B * Tq * Hq * Dv);
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dqk));
  const float nan = std::numeric_limits<float>::quiet_NaN();
  struct Result {
    std::vector<float> o, lse, dq, dk, dv;
  };
  auto run = [&](AttentionKernel kernel) {
    Result r{std::vector<float>(B * Tq * Hq * Dv, nan), std::vector<float>(B * Hq * Tq, nan),
             std::vector<float>(q.size(), nan), std::vector<float>(k.size(), nan), std::vector<float>(v.size(), nan)};
    attention_forward(kernel, d, mask, scale, q.data(), k.data(), v.data(), r.o.data(), r.lse.data(), tiles);
    attention_backward(kernel, d, mask, scale, q.data(), k.data(), v.data(), r.o.data(), r.lse.data(), dout.data(),
                       r.dq.data(), r.dk.data(), r.dv.data(), tiles);
    return r;
  };
  const Result ref = run(AttentionKernel::Standard);
  cpu::set_tile_kernel_enabled(tile_kernel);
  const Result fl = run(AttentionKernel::Flash);
  cpu::set_tile_kernel_enabled(true);
  RC_TAG(tile_kernel ? "tile kernel" : "blas tiles");
  std::string why;
  RC_ASSERT(close(fl.o, ref.o, 1e-5, &why) || (RC_LOG() << "o: " << why << "\n", false));
  RC_ASSERT(close(fl.lse, ref.lse, 1e-5, &why) || (RC_LOG() << "lse: " << why << "\n", false));
  // The gradients go through dP = dO·Vᵀ and D = rowsum(dO ∘ O), dot products of Dv (and Dqk)
  // terms whose fp32 rounding the two kernels accumulate in different orders, then through a
  // difference (dP − D) that cancels: their tolerance grows as √(D/64), 1e-5 up to D = 64.
  const double grad_tol = 1e-5 * std::sqrt(std::max<double>(64, static_cast<double>(std::max(Dqk, Dv))) / 64.0);
  RC_ASSERT(close(fl.dq, ref.dq, grad_tol, &why) || (RC_LOG() << "dq: " << why << "\n", false));
  RC_ASSERT(close(fl.dk, ref.dk, grad_tol, &why) || (RC_LOG() << "dk: " << why << "\n", false));
  RC_ASSERT(close(fl.dv, ref.dv, grad_tol, &why) || (RC_LOG() << "dv: " << why << "\n", false));
}

}  // namespace
}  // namespace flashgpt
