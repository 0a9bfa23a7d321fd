// Text generation with a KV cache: the prompt is run once (prefill), then one token per step, on
// the CPU (CpuDecoder) or the GPU (cuda::GPTCudaDecoder, cuda/gpt_cuda.h).
#pragma once

#include <functional>
#include <span>
#include <string>
#include <vector>

#include "flashgpt/core/rng.h"
#include "flashgpt/infer/decoder.h"
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

// The CPU model as a Decoder: GPT<float> with its KVCache.
class CpuDecoder final : public Decoder {
 public:
  explicit CpuDecoder(GPT<float>& model) : model_(model) {}
  const GPTConfig& config() const override { return model_.config(); }
  void start(int64_t B, int64_t capacity) override { cache_ = model_.make_cache(B, capacity); }
  int64_t length() const override { return cache_.length; }
  void step(const int* tokens, int64_t B, int64_t Tn, float* logits) override {
    model_.forward_cached(cache_, tokens, B, Tn, logits);
  }

 private:
  GPT<float>& model_;
  KVCache<float> cache_;
};

// on_token (optional) is called with each new token as it is produced.
SampleResult generate(Decoder& model, std::span<const int> prompt, const SampleOptions& opt, Rng& rng,
                      const std::function<void(int)>& on_token = {});
// The same on the CPU.
SampleResult generate(GPT<float>& model, std::span<const int> prompt, const SampleOptions& opt, Rng& rng,
                      const std::function<void(int)>& on_token = {});

}  // namespace flashgpt
