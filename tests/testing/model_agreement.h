// Two fp32 models that should compute the same function (one mechanism's kernels against
// another's): same weights, same batch, loss within 1e-5 relative and every gradient within 1e-5
// of the largest one.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "flashgpt/model/gpt.h"

namespace flashgpt::testing {

// Copies a's weights into b, then runs forward and backward on both over B sequences of T tokens.
inline void expect_models_agree(GPT<float>& a, GPT<float>& b, const std::vector<int>& tokens,
                                const std::vector<int>& targets, int64_t B, int64_t T) {
  std::copy(a.params().begin(), a.params().end(), b.params().begin());
  a.zero_grad();
  b.zero_grad();
  const double la = a.forward(tokens.data(), targets.data(), B, T);
  const double lb = b.forward(tokens.data(), targets.data(), B, T);
  EXPECT_NEAR(lb, la, 1e-5 * la);
  a.backward();
  b.backward();
  double scale = 0, worst = 0;
  for (size_t i = 0; i < a.grads().size(); ++i) {
    scale = std::max(scale, static_cast<double>(std::abs(a.grads()[i])));
    worst = std::max(worst, static_cast<double>(std::abs(a.grads()[i] - b.grads()[i])));
  }
  EXPECT_GT(scale, 0.0);
  EXPECT_LT(worst, 1e-5 * scale);
}

}  // namespace flashgpt::testing
