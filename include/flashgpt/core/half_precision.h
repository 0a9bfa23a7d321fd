// bf16 and fp16 on the host, as bit patterns: float to bits with round to nearest even (what
// __float2bfloat16 and __float2half_rn do on the GPU) and back, exactly. For host code that fills
// or reads device tensors of those types without CUDA headers.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace flashgpt {

inline uint16_t float_to_bf16_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN stays NaN
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float bf16_bits_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

inline uint16_t float_to_fp16_bits(float x) {
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

inline float fp16_bits_to_float(uint16_t h) {
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

}  // namespace flashgpt
