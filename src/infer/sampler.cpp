#include "flashgpt/infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "flashgpt/core/error.h"

namespace flashgpt {

int sample_token(const float* logits, int vocab, const SampleOptions& opt, Rng& rng) {
  if (opt.temperature <= 0.0f) return static_cast<int>(std::max_element(logits, logits + vocab) - logits);
  std::vector<int> ids(static_cast<size_t>(vocab));
  std::iota(ids.begin(), ids.end(), 0);
  size_t keep = ids.size();
  if (opt.top_k > 0 && static_cast<size_t>(opt.top_k) < keep) {
    keep = static_cast<size_t>(opt.top_k);
    std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(keep), ids.end(),
                      [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  } else if (opt.top_p < 1.0f) {
    std::sort(ids.begin(), ids.end(),
              [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  }
  ids.resize(keep);
  const double inv_t = 1.0 / static_cast<double>(opt.temperature);
  double mx = -INFINITY;
  for (int id : ids) mx = std::max(mx, static_cast<double>(logits[id]) * inv_t);
  std::vector<double> probs(ids.size());
  double sum = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    probs[i] = std::exp(static_cast<double>(logits[ids[i]]) * inv_t - mx);
    sum += probs[i];
  }
  for (double& p : probs) p /= sum;
  if (opt.top_p < 1.0f) {  // nucleus: the smallest prefix (ids are sorted) holding top_p of the mass
    double cum = 0;
    size_t n = 0;
    while (n < probs.size() && cum < opt.top_p) cum += probs[n++];
    probs.resize(std::max<size_t>(n, 1));
    double s = std::accumulate(probs.begin(), probs.end(), 0.0);
    for (double& p : probs) p /= s;
  }
  double u = rng.uniform();
  double cum = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    cum += probs[i];
    if (u < cum) return ids[i];
  }
  return ids[probs.size() - 1];
}

SampleResult generate(Decoder& model, std::span<const int> prompt, const SampleOptions& opt, Rng& rng,
                      const std::function<void(int)>& on_token) {
  const GPTConfig& c = model.config();
  FLASHGPT_CHECK(!prompt.empty(), "prompt: empty (give at least one token)");
  FLASHGPT_CHECK(static_cast<int64_t>(prompt.size()) <= c.block_size,
                 "prompt: {} tokens exceed the model's context of {} (block_size)", prompt.size(), c.block_size);
  FLASHGPT_CHECK(opt.temperature >= 0.0f, "--temperature: must be ≥ 0, got {}", opt.temperature);
  FLASHGPT_CHECK(opt.top_k >= 0, "--top-k: must be ≥ 0, got {}", opt.top_k);
  FLASHGPT_CHECK(opt.top_p > 0.0f && opt.top_p <= 1.0f, "--top-p: must be in (0, 1], got {}", opt.top_p);
  const int64_t capacity = std::min<int64_t>(c.block_size, static_cast<int64_t>(prompt.size()) + opt.max_new_tokens);
  model.start(1, capacity);
  std::vector<float> logits(static_cast<size_t>(c.padded_vocab_size()));
  model.step(prompt.data(), 1, static_cast<int64_t>(prompt.size()), logits.data());
  SampleResult result;
  result.stop_reason = "max_new_tokens";
  for (int i = 0; i < opt.max_new_tokens; ++i) {
    const int next = sample_token(logits.data(), c.vocab_size, opt, rng);
    if (opt.stop_at_eot && next == opt.eot_token) {
      result.stop_reason = "end_of_text";
      break;
    }
    result.tokens.push_back(next);
    if (on_token) on_token(next);
    if (i + 1 == opt.max_new_tokens) break;
    if (model.length() >= c.block_size) {
      result.stop_reason = "context_limit";
      break;
    }
    model.step(&next, 1, 1, logits.data());
  }
  return result;
}

SampleResult generate(GPT<float>& model, std::span<const int> prompt, const SampleOptions& opt, Rng& rng,
                      const std::function<void(int)>& on_token) {
  CpuDecoder decoder(model);
  return generate(decoder, prompt, opt, rng, on_token);
}

}  // namespace flashgpt
