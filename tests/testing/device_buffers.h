// Device copies of host vectors for the GPU tests: up as float or bf16, down to float, and
// buffers poisoned with NaN bytes so that an unwritten output shows.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "flashgpt/cuda/device_memory.h"
#include "flashgpt/cuda/ops_cuda.h"
#include "testing/bf16.h"

namespace flashgpt::testing {

inline cuda::DeviceBuffer up(const std::vector<float>& h) {
  cuda::DeviceBuffer d(h.size() * 4);
  d.upload(h.data(), h.size() * 4);
  return d;
}

inline cuda::DeviceBuffer up_bf16(const std::vector<float>& h) {
  std::vector<uint16_t> bits(h.size());
  for (size_t i = 0; i < h.size(); ++i) bits[i] = to_bf16(h[i]);
  cuda::DeviceBuffer d(bits.size() * 2);
  d.upload(bits.data(), bits.size() * 2);
  return d;
}

template <typename T>
cuda::DeviceBuffer up_as(const std::vector<float>& h) {
  if constexpr (std::is_same_v<T, cuda::bf16>) {
    return up_bf16(h);
  } else {
    return up(h);
  }
}

inline cuda::DeviceBuffer poisoned(size_t bytes) {
  cuda::DeviceBuffer d(bytes);
  d.fill_bytes(0xFF);
  return d;
}

template <typename T>
std::vector<float> down_as(const cuda::DeviceBuffer& d, size_t n) {
  std::vector<float> h(n);
  if constexpr (std::is_same_v<T, cuda::bf16>) {
    std::vector<uint16_t> bits(n);
    d.download(bits.data(), n * 2);
    for (size_t i = 0; i < n; ++i) h[i] = from_bf16(bits[i]);
  } else {
    d.download(h.data(), n * 4);
  }
  return h;
}

}  // namespace flashgpt::testing
