// What the GPU benchmarks (the *_bench_cuda.cpp files) share: medians, a large input filled
// quickly, outputs read back in fp32, per-call times of work too short to time once, and the GPU's own device-to-device
// copy rate, the bandwidth figure the bandwidth-bound kernels are held to.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "flashgpt/core/half_precision.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/core/timer.h"
#include "flashgpt/cuda/abi.h"
#include "flashgpt/cuda/device_memory.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace bench {

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Fills n elements (bf16 or fp32) at dst with one random block of kBlock elements, repeated:
// writing gigabytes of fresh random numbers from the host would take longer than the benchmark.
// The block's length is prime, so no two cache pages or rows hold the same values. The values are
// normal, or with `magnitude` > 0 their absolute values times it (never negative).
inline void fill_repeating(void* dst, int64_t n, bool bf16, Rng& rng, double magnitude = 0.0) {
  auto draw = [&] {
    const double x = rng.normal();
    return static_cast<float>(magnitude > 0 ? magnitude * std::abs(x) : x);
  };
  constexpr int64_t kBlock = 1048573;  // prime
  const int64_t first = std::min(n, kBlock);
  const size_t width = bf16 ? 2 : 4;
  if (bf16) {
    std::vector<uint16_t> h(static_cast<size_t>(first));
    for (auto& x : h) x = float_to_bf16_bits(draw());
    copy_to_device(dst, h.data(), h.size() * 2);
  } else {
    std::vector<float> h(static_cast<size_t>(first));
    for (auto& x : h) x = draw();
    copy_to_device(dst, h.data(), h.size() * 4);
  }
  auto* base = static_cast<char*>(dst);
  for (int64_t done = first; done < n;) {
    const int64_t step = std::min(done, n - done);
    copy_on_device(base + done * width, base, static_cast<size_t>(step) * width);
    done += step;
  }
}

// n elements (bf16 or fp32) of a device buffer from element `offset` on, in fp32 on the host.
inline std::vector<float> download_floats(const DeviceBuffer& buf, int64_t offset, int64_t n, bool bf16) {
  std::vector<float> f(static_cast<size_t>(n));
  if (bf16) {
    std::vector<uint16_t> h(f.size());
    copy_to_host(h.data(), static_cast<const char*>(buf.get()) + offset * 2, h.size() * 2);
    for (size_t i = 0; i < h.size(); ++i) f[i] = bf16_bits_to_float(h[i]);
  } else {
    copy_to_host(f.data(), static_cast<const char*>(buf.get()) + offset * 4, f.size() * 4);
  }
  return f;
}

// Median seconds of one call of f, over `repeats` samples of enough back-to-back calls to last
// about 5 ms, so the launch and the wait are spread thin.
template <typename F>
double time_per_call(F&& f, int repeats) {
  f();
  synchronize();
  Timer warm;
  f();
  synchronize();
  const double once = std::max(warm.seconds(), 1e-6);
  const int inner = static_cast<int>(std::clamp(5e-3 / once, 1.0, 200.0));
  std::vector<double> samples;
  for (int r = 0; r < repeats; ++r) {
    Timer t;
    for (int i = 0; i < inner; ++i) f();
    synchronize();
    samples.push_back(t.seconds() / inner);
  }
  return median(samples);
}

// GB/s of a device-to-device copy of `bytes` (at least 64 MiB, more than any L2 holds, and at
// most 1 GiB, where the rate no longer changes), counting the bytes read and written.
inline double copy_gbps(double bytes, int repeats) {
  const size_t n = std::clamp<size_t>(static_cast<size_t>(bytes), size_t{64} << 20, size_t{1} << 30);
  DeviceBuffer from(n), to(n);
  from.fill_bytes(0);
  const double s = time_per_call([&] { copy_on_device(to.get(), from.get(), n); }, repeats);
  return 2.0 * static_cast<double>(n) / s / 1e9;
}

}  // namespace bench
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
