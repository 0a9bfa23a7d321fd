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

Rng sample_rng(uint64_t seed, int64_t k) {
  if (k == 0) return Rng(seed);
  // A seed for stream k drawn through SplitMix64 itself: seeds seed + k·γ would make stream k
  // stream 0 shifted by k draws.
  Rng mix(seed ^ (static_cast<uint64_t>(k) * 0xD1B54A32D192ED03ull));
  mix.next_u64();
  return Rng(mix.next_u64());
}

std::vector<SampleResult> generate_batch(Decoder& model, std::span<const std::vector<int>> prompts,
                                         const SampleOptions& opt, std::span<Rng> rngs,
                                         const std::function<void(int64_t, int)>& on_token) {
  const GPTConfig& c = model.config();
  const int64_t B = static_cast<int64_t>(rngs.size());
  FLASHGPT_CHECK(B > 0, "generate: no samples asked for");
  FLASHGPT_CHECK(static_cast<int64_t>(prompts.size()) == B, "generate: {} prompts for {} samples", prompts.size(), B);
  int64_t P = 0;
  for (const std::vector<int>& prompt : prompts) {
    FLASHGPT_CHECK(!prompt.empty(), "prompt: empty (give at least one token)");
    FLASHGPT_CHECK(static_cast<int64_t>(prompt.size()) <= c.block_size,
                   "prompt: {} tokens exceed the model's context of {} (block_size)", prompt.size(), c.block_size);
    P = std::max<int64_t>(P, static_cast<int64_t>(prompt.size()));
  }
  FLASHGPT_CHECK(opt.max_new_tokens >= 0, "--max-tokens: must be ≥ 0, got {}", opt.max_new_tokens);
  FLASHGPT_CHECK(opt.temperature >= 0.0f, "--temperature: must be ≥ 0, got {}", opt.temperature);
  FLASHGPT_CHECK(opt.top_k >= 0, "--top-k: must be ≥ 0, got {}", opt.top_k);
  FLASHGPT_CHECK(opt.top_p > 0.0f && opt.top_p <= 1.0f, "--top-p: must be in (0, 1], got {}", opt.top_p);
  std::vector<SampleResult> results(static_cast<size_t>(B));
  for (SampleResult& r : results) r.stop_reason = "max_new_tokens";
  if (opt.max_new_tokens == 0) return results;
  const int64_t capacity = std::min<int64_t>(c.block_size, P + opt.max_new_tokens);
  const int64_t Vp = c.padded_vocab_size();
  model.start(B, capacity);
  // The prefill: every prompt in one step, each row padded to the longest with its last token.
  std::vector<float> logits(static_cast<size_t>(B * Vp));
  std::vector<int> tokens(static_cast<size_t>(B * P));
  std::vector<int32_t> counts(static_cast<size_t>(B));
  std::vector<int64_t> lengths(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<int>& prompt = prompts[static_cast<size_t>(b)];
    auto row = tokens.begin() + b * P;
    std::fill(std::copy(prompt.begin(), prompt.end(), row), row + P, prompt.back());
    counts[static_cast<size_t>(b)] = static_cast<int32_t>(prompt.size());
    lengths[static_cast<size_t>(b)] = static_cast<int64_t>(prompt.size());
  }
  model.step(tokens.data(), B, P, counts, logits.data());
  int64_t running = B;
  tokens.resize(static_cast<size_t>(B));
  for (int i = 0; i < opt.max_new_tokens && running > 0; ++i) {
    for (int64_t b = 0; b < B; ++b) {
      int32_t& reads = counts[static_cast<size_t>(b)];
      if (reads == 0 && i > 0) continue;  // stopped
      reads = 0;
      SampleResult& r = results[static_cast<size_t>(b)];
      const int next = sample_token(logits.data() + b * Vp, c.vocab_size, opt, rngs[static_cast<size_t>(b)]);
      tokens[static_cast<size_t>(b)] = next;
      if (opt.stop_at_eot && next == opt.eot_token) {
        r.stop_reason = "end_of_text";
        --running;
        continue;
      }
      r.tokens.push_back(next);
      if (on_token) on_token(b, next);
      if (i + 1 == opt.max_new_tokens) continue;
      if (lengths[static_cast<size_t>(b)] >= c.block_size) {  // no room to read it
        r.stop_reason = "context_limit";
        --running;
        continue;
      }
      reads = 1;
      ++lengths[static_cast<size_t>(b)];
    }
    if (running == 0 || i + 1 == opt.max_new_tokens) break;
    model.step(tokens.data(), B, 1, counts, logits.data());
  }
  return results;
}

std::vector<SampleResult> generate_batch(Decoder& model, std::span<const int> prompt, const SampleOptions& opt,
                                         std::span<Rng> rngs, const std::function<void(int64_t, int)>& on_token) {
  const std::vector<std::vector<int>> prompts(rngs.size(), std::vector<int>(prompt.begin(), prompt.end()));
  return generate_batch(model, std::span<const std::vector<int>>(prompts), opt, rngs, on_token);
}

SampleResult generate(Decoder& model, std::span<const int> prompt, const SampleOptions& opt, Rng& rng,
                      const std::function<void(int)>& on_token) {
  std::function<void(int64_t, int)> each;
  if (on_token) each = [&](int64_t, int id) { on_token(id); };
  return std::move(generate_batch(model, prompt, opt, std::span<Rng>(&rng, 1), each)[0]);
}

SampleResult generate(GPT<float>& model, std::span<const int> prompt, const SampleOptions& opt, Rng& rng,
                      const std::function<void(int)>& on_token) {
  CpuDecoder decoder(model);
  return generate(decoder, prompt, opt, rng, on_token);
}

}  // namespace flashgpt
