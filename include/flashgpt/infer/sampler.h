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
// The same choice from candidates already ranked — ids[0 … n) in rank order (the higher logit
// first, the lower id first among equals) with their logits — when n is all the rule looks at:
// the best 1 for greedy, the best top_k for top-k (with or without top-p). Draws exactly what
// sample_token draws from the whole row with the same stream (Decoder::step_top's candidates).
int sample_ranked(const int32_t* ids, const float* logits, int n, const SampleOptions& opt, Rng& rng);

// The CPU model as a Decoder: GPT<float> with its KVCache.
class CpuDecoder final : public Decoder {
 public:
  explicit CpuDecoder(GPT<float>& model) : model_(model) {}
  const GPTConfig& config() const override { return model_.config(); }
  void start(int64_t B, int64_t capacity) override { cache_ = model_.make_cache(B, capacity); }
  int64_t length() const override { return cache_.length(); }
  std::vector<int64_t> lengths() const override { return cache_.lengths; }
  void restart(int64_t b) override { cache_.restart(b); }
  void step(const int* tokens, int64_t B, int64_t Tn, float* logits) override {
    model_.forward_cached(cache_, tokens, B, Tn, logits);
  }
  void step(const int* tokens, int64_t B, int64_t Tn, std::span<const int32_t> counts, float* logits) override {
    model_.forward_cached(cache_, tokens, B, Tn, logits, false, counts);
  }

 private:
  GPT<float>& model_;
  KVCache<float> cache_;
};

// The random stream of sample k (from 0) of a run seeded with `seed`: sample 0 draws from
// Rng(seed) itself, the others from independent streams, so a sample's tokens do not depend on
// how many samples are drawn beside it.
Rng sample_rng(uint64_t seed, int64_t k);

// on_token (optional) is called with each new token as it is produced.
SampleResult generate(Decoder& model, std::span<const int> prompt, const SampleOptions& opt, Rng& rng,
                      const std::function<void(int)>& on_token = {});
// rngs.size() samples from one prompt, decoded together as one batch: the prompt is read once
// per sequence in one prefill, then every step reads one token per sequence. Sample b draws from
// rngs[b] alone, so each result is what generate() gives for that prompt and stream, up to the
// rounding of a batched product. A sample that has stopped sits out the later steps (its count is
// 0: the decoder leaves its cache alone). on_token (optional) is called with (b, id) for each new
// token, in step order.
std::vector<SampleResult> generate_batch(Decoder& model, std::span<const int> prompt, const SampleOptions& opt,
                                         std::span<Rng> rngs,
                                         const std::function<void(int64_t, int)>& on_token = {});
// The same with a prompt per sample (prompts.size() == rngs.size()), of any lengths: one
// right-padded prefill reads them all, then each sample goes on from its own length, and stops at
// the model's context limit on its own.
std::vector<SampleResult> generate_batch(Decoder& model, std::span<const std::vector<int>> prompts,
                                         const SampleOptions& opt, std::span<Rng> rngs,
                                         const std::function<void(int64_t, int)>& on_token = {});
// Continuous batching: prompts.size() samples (prompt k drawing from rngs[k]) decoded `slots` at a
// time. The first `slots` prompts are read in one right-padded prefill; whenever a sample stops,
// its place in the batch goes to the next waiting prompt, which is read whole in the next step
// beside the running samples' one token each (the decoder's restart and ragged steps). Each result
// is what generate() gives for that prompt and stream, whatever `slots` is. on_token (optional)
// gets (k, id) for each new token in step order; on_done (optional) gets (k, result) as sample k
// stops, in the order they stop.
std::vector<SampleResult> generate_continuous(
    Decoder& model, std::span<const std::vector<int>> prompts, const SampleOptions& opt, std::span<Rng> rngs,
    int64_t slots, const std::function<void(int64_t, int)>& on_token = {},
    const std::function<void(int64_t, const SampleResult&)>& on_done = {});
// The same on the CPU.
SampleResult generate(GPT<float>& model, std::span<const int> prompt, const SampleOptions& opt, Rng& rng,
                      const std::function<void(int)>& on_token = {});

}  // namespace flashgpt
