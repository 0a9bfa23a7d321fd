// Compiled with -ffast-math (see src/CMakeLists.txt) so the exp loops call glibc's SIMD exp; each
// function is built for AVX-512, AVX2 and a baseline, and the loader picks the best the CPU has.
// Inputs are finite by contract: masked scores hold kMaskedScore, never −∞.
#include "cpu/vec_math.h"

#include <cmath>  // declares the SIMD variants of exp under -ffast-math

namespace flashgpt::cpu {

#define FLASHGPT_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))

namespace {

template <typename T>
inline T row_max_impl(const T* x, int64_t n) {
  T m = x[0];
#pragma omp simd reduction(max : m)
  for (int64_t j = 1; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

}  // namespace

FLASHGPT_MULTIVERSION float row_max(const float* x, int64_t n) { return row_max_impl(x, n); }
FLASHGPT_MULTIVERSION double row_max(const double* x, int64_t n) { return row_max_impl(x, n); }

// Arguments below the floor give exactly 0 (their true values are under 1e-34 of the row's largest
// term, which is 1). Clamping first keeps every lane in the vector exp's fast range: out-of-range
// lanes (masked scores among them) would otherwise drop to a scalar fallback.
constexpr float kExpFloorF = -80.0f;
constexpr double kExpFloorD = -700.0;

FLASHGPT_MULTIVERSION float exp_shifted_sum(float* x, int64_t n, float shift) {
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    const float z = x[j] - shift;
    const float e = std::exp(z > kExpFloorF ? z : kExpFloorF);
    x[j] = z > kExpFloorF ? e : 0.0f;
    sum += x[j];
  }
  return sum;
}

FLASHGPT_MULTIVERSION double exp_shifted_sum(double* x, int64_t n, double shift) {
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    const double z = x[j] - shift;
    const double e = std::exp(z > kExpFloorD ? z : kExpFloorD);
    x[j] = z > kExpFloorD ? e : 0.0;
    sum += x[j];
  }
  return sum;
}

}  // namespace flashgpt::cpu
