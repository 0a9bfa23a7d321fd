// The memory-bound ops' benchmark (ops_bench_cuda.h). Host code over the ops, built for the GPU
// and for the emulator (where its test runs a tiny case).
//
// Every operand is held twice: at the start of a fresh allocation (aligned for the packed path),
// and one element into another (so the kernels fall back to an element at a time), with the same
// values in both.
#include "flashgpt/cuda/ops_bench_cuda.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <type_traits>
#include <vector>

#include "cuda/bench_timing.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/cuda/device_memory.h"
#include "flashgpt/cuda/ops_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

// One operand of n elements of T, aligned and skewed by one element, plus the values it started
// with (restored before the paths are compared, for ops that overwrite their inputs).
template <typename T>
struct Operand {
  int64_t n;
  DeviceBuffer start, aligned, skewed;
  // Random normal values, or with `magnitude` > 0 their absolute values times it (AdamW's second
  // moment must not be negative).
  Operand(int64_t count, Rng& rng, double magnitude = 0.0)
      : n(count), start(bytes()), aligned(bytes()), skewed(bytes() + sizeof(T)) {
    bench::fill_repeating(start.get(), n, std::is_same_v<T, bf16>, rng, magnitude);
    restore();
  }
  size_t bytes() const { return static_cast<size_t>(n) * sizeof(T); }
  T* at(bool skew) { return skew ? skewed.as<T>() + 1 : aligned.as<T>(); }
  void restore() {
    copy_on_device(aligned.get(), start.get(), bytes());
    copy_on_device(skewed.as<T>() + 1, start.get(), bytes());
  }
  std::vector<float> down(bool skew) const {
    const DeviceBuffer& b = skew ? skewed : aligned;
    return bench::download_floats(b, skew ? 1 : 0, n, std::is_same_v<T, bf16>);
  }
};

// max |a − b| / max |b|.
double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0, top = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    top = std::max(top, static_cast<double>(std::abs(b[i])));
    const double e = std::abs(static_cast<double>(a[i]) - b[i]);
    worst = std::isfinite(e) ? std::max(worst, e) : INFINITY;
  }
  return worst / std::max(top, 1e-30);
}

}  // namespace

OpsBenchResult bench_ops(const OpsBenchCase& c) {
  FLASHGPT_CHECK(c.rows > 0 && c.width > 0 && c.vocab > 0 && c.loss_rows > 0 && c.params > 0,
                 "bench ops: rows, width, vocab, loss rows and params must be positive");
  FLASHGPT_CHECK(c.repeats > 0, "bench ops: repeats must be positive");
  const int64_t N = c.rows, C = c.width, F = 4 * C, V = c.vocab, Vp = (V + 63) / 64 * 64,
                R = std::min(c.loss_rows, c.rows), P = c.params;
  Rng rng(c.seed);
  using B16 = Operand<bf16>;
  using F32 = Operand<float>;
  B16 x(N * C, rng), y(N * C, rng), sum(N * C, rng), dx(N * C, rng), dy(N * C, rng), w(C, rng), b(C, rng);
  B16 y2(N * C, rng), sum2(N * C, rng);  // the unfused add and norm's outputs (aligned)
  B16 h(N * F, rng), hg(N * F, rng), hout(N * F, rng), logits(R * Vp, rng);
  F32 params(P, rng), grads(P, rng), m(P, rng), v(P, rng, 0.01);
  B16 copy(P, rng);
  DeviceBuffer mean(static_cast<size_t>(N) * 4), rstd(static_cast<size_t>(N) * 4), losses(static_cast<size_t>(R) * 4);
  DeviceBuffer dw(static_cast<size_t>(C) * 4), db(static_cast<size_t>(C) * 4), dbias(static_cast<size_t>(F) * 4);
  dw.fill_bytes(0);
  db.fill_bytes(0);
  dbias.fill_bytes(0);
  std::vector<int> host_targets(static_cast<size_t>(R));
  for (int64_t i = 0; i < R; ++i) host_targets[static_cast<size_t>(i)] = static_cast<int>(rng.next_u64() % static_cast<uint64_t>(V));
  DeviceBuffer targets(host_targets.size() * 4);
  targets.upload(host_targets.data(), host_targets.size() * 4);
  const float eps = 1e-5f;

  OpsBenchResult result;
  result.copy_gbps = bench::copy_gbps(30.0 * static_cast<double>(P), c.repeats);  // as many bytes as AdamW moves
  // One op on two paths: `first` (packed, or fused) and `other` (one element at a time, or the
  // ops it fuses). After one call of each from the same inputs (`restore` resets those the op
  // overwrites), `output` of the two must agree; then each is timed.
  struct Case {
    const char* op;
    double bytes;
    const char *first_name, *other_name;
    std::function<void()> first, other;
    std::function<std::vector<float>(bool other)> output;
    std::function<void()> restore;
    bool exact;  // else within one bf16 rounding (sums taken in another order)
  };
  auto measure = [&](const Case& k) {
    k.restore();
    k.first();
    synchronize();
    const std::vector<float> want = k.output(false);
    k.restore();
    k.other();
    synchronize();
    const double diff = rel_diff(k.output(true), want);
    const double bound = k.exact ? 0.0 : 2e-2;
    FLASHGPT_CHECK(diff <= bound, "bench ops: {}: the {} and the {} paths disagree (relative difference {:.2e} > {:.0e})",
                   k.op, k.first_name, k.other_name, diff, bound);
    for (const bool second : {false, true}) {
      OpsBenchRow row;
      row.op = k.op;
      row.path = second ? k.other_name : k.first_name;
      row.ms = bench::time_per_call(second ? k.other : k.first, c.repeats) * 1e3;
      row.bytes = k.bytes;
      row.gbps = k.bytes / (row.ms * 1e-3) / 1e9;
      row.max_diff = second ? diff : 0.0;
      result.rows.push_back(row);
    }
  };
  // An op on the aligned operands and on the skewed ones.
  auto both = [&](const char* op, double bytes, std::function<void(bool)> run,
                  std::function<std::vector<float>(bool)> output, std::function<void()> restore, bool exact) {
    measure({op, bytes, "packed", "one at a time", [run] { run(false); }, [run] { run(true); }, std::move(output),
             std::move(restore), exact});
  };
  const double e = 2.0;  // bytes per bf16 element
  const double nc = static_cast<double>(N * C), nf = static_cast<double>(N * F), n = static_cast<double>(N);
  auto none = [] {};

  both("add", 3 * nc * e, [&](bool s) { add(sum.at(s), x.at(s), y.at(s), N * C); }, [&](bool s) { return sum.down(s); },
       none, true);
  both("gelu forward", 2 * nf * e, [&](bool s) { gelu_forward(hout.at(s), h.at(s), N * F); },
       [&](bool s) { return hout.down(s); }, none, true);
  both("gelu backward", 3 * nf * e, [&](bool s) { gelu_backward(hout.at(s), h.at(s), hg.at(s), N * F); },
       [&](bool s) { return hout.down(s); }, none, true);
  both("layernorm forward", 2 * nc * e + 8 * n,
       [&](bool s) {
         layernorm_forward(y.at(s), mean.as<float>(), rstd.as<float>(), x.at(s), w.at(s), b.at(s), N, C, eps);
       },
       [&](bool s) { return y.down(s); }, none, false);
  // The residual add and the norm after it, fused on either path, then against the add followed by
  // the norm (both packed); the bytes are the fused op's in every row.
  auto fused = [&](bool s) {
    add_layernorm_forward(sum.at(s), y.at(s), mean.as<float>(), rstd.as<float>(), x.at(s), dy.at(s), w.at(s),
                          b.at(s), N, C, eps);
  };
  const double add_norm_bytes = 4 * nc * e + 8 * n;
  both("add + layernorm forward (fused)", add_norm_bytes, fused, [&](bool s) { return y.down(s); }, none, false);
  measure({"add + layernorm forward", add_norm_bytes, "fused", "add, then norm", [&] { fused(false); },
           [&] {
             add(sum2.at(false), x.at(false), dy.at(false), N * C);
             layernorm_forward(y2.at(false), mean.as<float>(), rstd.as<float>(), sum2.at(false), w.at(false),
                               b.at(false), N, C, eps);
           },
           [&](bool other) { return other ? y2.down(false) : y.down(false); }, none, false});
  // The backward adds into dx (restored before the comparison) and into the weight gradients; it
  // reads the statistics of x.
  layernorm_forward(y.at(false), mean.as<float>(), rstd.as<float>(), x.at(false), w.at(false), b.at(false), N, C, eps);
  both("layernorm backward", 4 * nc * e + 8 * n,
       [&](bool s) {
         layernorm_backward(dx.at(s), dw.as<float>(), db.as<float>(), dy.at(s), x.at(s), w.at(s),
                            mean.as<const float>(), rstd.as<const float>(), N, C, true);
       },
       [&](bool s) { return dx.down(s); }, [&] { dx.restore(); }, false);
  both("cross-entropy (fused)", 3 * static_cast<double>(R * Vp) * e,
       [&](bool s) {
         cross_entropy_fused(logits.at(s), losses.as<float>(), targets.as<const int>(), R, V, Vp,
                             1.0f / static_cast<float>(R));
       },
       [&](bool s) { return logits.down(s); }, [&] { logits.restore(); }, false);
  ops::AdamWParams hp;
  hp.lr = 1e-4f;
  hp.weight_decay = 0.1f;
  hp.step = 10;
  both("adamw (+ bf16 copy)", 30.0 * static_cast<double>(P),
       [&](bool s) { adamw_update(params.at(s), grads.at(s), m.at(s), v.at(s), P, hp, true, 1.0f, copy.at(s)); },
       [&](bool s) { return params.down(s); },
       [&] {
         params.restore();
         m.restore();
         v.restore();
       },
       true);
  both("bias backward (column sums)", nf * e, [&](bool s) { bias_backward(dbias.as<float>(), hg.at(s), N, F); },
       [&](bool) { return bench::download_floats(dbias, 0, F, false); }, [&] { dbias.fill_bytes(0); }, true);
  return result;
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
