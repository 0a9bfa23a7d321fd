// How far a GPU kernel's output is from its reference, as the attention tests grade it.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace flashgpt::testing {

// max |a − b| / max(1, max |b|), with −∞ matching exactly (a query that sees no key) and NaN — an
// output never written, outputs being poisoned first — failing.
inline double attention_rel_error(const std::vector<float>& a, const std::vector<float>& b) {
  double scale = 1.0, worst = 0.0;
  for (float x : b)
    if (std::isfinite(x)) scale = std::max(scale, static_cast<double>(std::abs(x)));
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isinf(b[i]) || std::isinf(a[i])) {
      if (a[i] != b[i]) return std::numeric_limits<double>::infinity();
      continue;
    }
    if (!std::isfinite(a[i])) return std::numeric_limits<double>::infinity();
    worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  return worst / scale;
}

// ‖a − ref‖ / ‖ref‖; NaN (an output never written) makes it infinite. a: float or double.
template <typename A>
double norm_error(const std::vector<A>& a, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return std::numeric_limits<double>::infinity();
    num += (a[i] - ref[i]) * (a[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

}  // namespace flashgpt::testing
