// bf16 and fp16 on the host for the GPU tests: float to their bits with round to nearest even
// (what __float2bfloat16 and __float2half_rn do) and back, exactly.
#pragma once

#include <cmath>
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

inline uint16_t to_f16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  const auto sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7FFFFFFFu;
  if (u >= 0x7F800000u) return sign | (u > 0x7F800000u ? 0x7E00u : 0x7C00u);  // NaN, ∞
  if (u >= 0x477FF000u) return sign | 0x7C00u;  // 65520 and up round to ∞
  if (u < 0x38800000u) {  // below 2^-14: a subnormal half, in units of 2^-24
    float f;
    std::memcpy(&f, &u, 4);
    return sign | static_cast<uint16_t>(std::nearbyint(std::ldexp(f, 24)));
  }
  u += 0xFFFu + ((u >> 13) & 1u);  // round the 23-bit mantissa to 10 bits, ties to even
  return sign | static_cast<uint16_t>((u >> 13) - ((127u - 15u) << 10));
}

inline float from_f16(uint16_t h) {
  const int e = (h >> 10) & 0x1F;
  const auto m = static_cast<float>(h & 0x3FFu);
  float f;
  if (e == 0) {
    f = std::ldexp(m, -24);
  } else if (e == 31) {
    f = (h & 0x3FFu) ? NAN : INFINITY;
  } else {
    f = std::ldexp(m + 1024.0f, e - 25);
  }
  return (h & 0x8000u) ? -f : f;
}

}  // namespace flashgpt::testing
