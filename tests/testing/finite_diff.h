// Finite-difference gradient checks in double precision.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "flashgpt/core/rng.h"

namespace flashgpt::testing {

inline std::vector<double> random_vector(size_t n, Rng& rng, double scale = 1.0) {
  std::vector<double> v(n);
  for (double& x : v) x = rng.normal() * scale;
  return v;
}

// Checks grad[i] against (f(x + h·e_i) − f(x − h·e_i)) / 2h for up to max_checks indices (all of
// them when x is small, an evenly spread sample otherwise). x is restored afterwards.
inline void expect_gradient_matches(const std::string& what, double* x, const double* grad, size_t n,
                                    const std::function<double()>& f, size_t max_checks = 64, double h = 1e-5,
                                    double rtol = 1e-5, double atol = 1e-8) {
  size_t stride = std::max<size_t>(1, n / max_checks);
  int failures = 0;
  for (size_t i = 0; i < n && failures < 5; i += stride) {
    double saved = x[i];
    x[i] = saved + h;
    double fp = f();
    x[i] = saved - h;
    double fm = f();
    x[i] = saved;
    double numeric = (fp - fm) / (2 * h);
    double analytic = grad[i];
    double err = std::abs(numeric - analytic);
    double bound = atol + rtol * std::max(std::abs(numeric), std::abs(analytic));
    if (!(err <= bound)) {
      ++failures;
      ADD_FAILURE() << what << "[" << i << "]: analytic " << analytic << " vs numeric " << numeric << " (error "
                    << err << ")";
    }
  }
}

inline double dot(const std::vector<double>& a, const double* b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace flashgpt::testing
