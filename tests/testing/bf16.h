// bf16 on the host for the GPU tests: float to bf16 bits with round to nearest even (what
// __float2bfloat16 does) and back, exactly.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

namespace flashgpt::testing {

inline uint16_t to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u += 0x7FFF + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

inline float from_bf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

inline float round_bf16(float x) { return from_bf16(to_bf16(x)); }

inline std::vector<float> round_bf16(std::vector<float> v) {
  for (float& x : v) x = round_bf16(x);
  return v;
}

}  // namespace flashgpt::testing
