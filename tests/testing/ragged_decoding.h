// Sequences of different lengths decoded together in one cache: a schedule of ragged steps, and
// the check that every reading sequence's logits at every step are what its own full forward
// over its tokens so far gives.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "flashgpt/core/rng.h"
#include "flashgpt/model/gpt.h"

namespace flashgpt::testing {

// One step: Tn tokens a row, sequence b reading counts[b] of them.
struct RaggedStep {
  int64_t Tn;
  std::vector<int32_t> counts;
};

// Three sequences: a right-padded prefill of 5, 2 and 4 tokens, steps of one token (in the second
// the middle sequence sits out), a step of up to three tokens while the lengths differ, one where
// the middle sequence reads four (as a new prompt joining the others would) while the first sits
// out, one more token each, and a last step of up to three where the first, 11 tokens long,
// reads one. The lengths end at 12 each: 12 rows of cache suffice, though the first's padded row
// of the last step would not fit.
inline std::vector<RaggedStep> ragged_schedule() {
  return {{5, {5, 2, 4}}, {1, {1, 1, 1}}, {1, {1, 0, 1}}, {3, {3, 1, 2}},
          {4, {0, 4, 1}}, {1, {1, 1, 1}}, {3, {1, 3, 2}}};
}

// The reference's own cache, as a step.
template <typename T>
auto cached_step(GPT<T>& model, KVCache<T>& cache) {
  return [&model, &cache](const std::vector<int>& tokens, const RaggedStep& st, std::vector<float>& logits) {
    std::vector<T> out(logits.size());
    model.forward_cached(cache, tokens.data(), cache.B, st.Tn, out.data(), false, st.counts);
    std::copy(out.begin(), out.end(), logits.begin());
  };
}

// Runs the schedule through `step` (tokens [B, Tn], counts, logits [B, Vp] out) and holds each
// reading sequence's logits to the reference's full forward over that sequence alone, within
// tol × the largest logit. Padding tokens are random, so a leak shows.
template <typename T, typename Step>
void expect_ragged_decoding_equals_full_forward(GPT<T>& reference, const std::vector<RaggedStep>& schedule,
                                                Step&& step, double tol) {
  const GPTConfig& c = reference.config();
  const int64_t B = static_cast<int64_t>(schedule.front().counts.size()), Vp = c.padded_vocab_size();
  std::vector<std::vector<int>> history(static_cast<size_t>(B));
  Rng rng(17);
  auto draw = [&] { return static_cast<int>(rng.next_u64() % static_cast<uint64_t>(c.vocab_size)); };
  for (size_t s = 0; s < schedule.size(); ++s) {
    const RaggedStep& st = schedule[s];
    std::vector<int> tokens(static_cast<size_t>(B * st.Tn));
    for (int& t : tokens) t = draw();
    std::vector<float> logits(static_cast<size_t>(B * Vp), NAN);
    step(tokens, st, logits);
    for (int64_t b = 0; b < B; ++b) {
      const int32_t n = st.counts[static_cast<size_t>(b)];
      auto& h = history[static_cast<size_t>(b)];
      h.insert(h.end(), tokens.begin() + b * st.Tn, tokens.begin() + b * st.Tn + n);
      if (n == 0) continue;
      const int64_t len = static_cast<int64_t>(h.size());
      reference.forward(h.data(), nullptr, 1, len);
      const T* want = reference.logits() + (len - 1) * Vp;
      double scale = 0, worst = 0;
      for (int64_t j = 0; j < c.vocab_size; ++j) {
        scale = std::max(scale, std::abs(static_cast<double>(want[j])));
        const double d = std::abs(static_cast<double>(logits[static_cast<size_t>(b * Vp + j)]) -
                                  static_cast<double>(want[j]));
        if (!(d <= worst)) worst = d;  // a NaN sticks
      }
      EXPECT_LE(worst, tol * scale) << "step " << s << ", sequence " << b << " after " << len << " tokens";
    }
  }
}

}  // namespace flashgpt::testing
