// Row kernels of the softmax, vectorised through glibc's vector math library and compiled for
// several instruction sets with the best chosen at run time (vec_math.cpp).
#pragma once

#include <cstdint>

namespace flashgpt::cpu {

// A finite stand-in for −∞ in score buffers (exp of it underflows to exactly 0).
template <typename T>
inline constexpr T kMaskedScore = static_cast<T>(-1e30);

// max_j x[j]
float row_max(const float* x, int64_t n);
double row_max(const double* x, int64_t n);
// x[j] = exp(x[j] − shift); returns Σ_j x[j].
float exp_shifted_sum(float* x, int64_t n, float shift);
double exp_shifted_sum(double* x, int64_t n, double shift);

}  // namespace flashgpt::cpu
