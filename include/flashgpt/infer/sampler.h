// Text generation with a KV cache: the prompt is run once (prefill), then one token per step.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <vector>

#include "flashgpt/core/rng.h"
#include "flashgpt/model/gpt.h"

namespace flashgpt {

struct SampleOptions {
  int max_new_tokens = 256;
  float temperature = 1.0f;  // 0: greedy
  int top_k = 0;             // 0: off
  float top_p = 1.0f;        // 1: off
  bool stop_at_eot = true;
  int eot_token = -1;
};

struct SampleResult {
  std::vector<int> tokens;  // the new tokens only
  std::string stop_reason;  // "max_new_tokens", "end_of_text" or "context_limit"
};

// Picks a token id in [0, vocab) from logits (the padding columns beyond vocab are never chosen).
int sample_token(const float* logits, int vocab, const SampleOptions& opt, Rng& rng);

// on_token (optional) is called with each new token as it is produced.
SampleResult generate(GPT<float>& model, std::span<const int> prompt, const SampleOptions& opt, Rng& rng,
                      const std::function<void(int)>& on_token = {});

}  // namespace flashgpt
