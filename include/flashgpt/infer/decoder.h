// A model that generates with a cache of the tokens it has read, on either device: the CPU's
// GPT<float> with its KVCache (CpuDecoder, infer/sampler.h), or the GPU's GPTCuda with its cache
// in device memory (GPTCudaDecoder, cuda/gpt_cuda.h). The sampler drives one through this seam.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "flashgpt/model/config.h"

namespace flashgpt {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual const GPTConfig& config() const = 0;
  // Empties the cache and lays it out for B sequences of up to `capacity` tokens (≤ block_size).
  virtual void start(int64_t B, int64_t capacity) = 0;
  // Tokens cached by every sequence (an error when they hold different lengths), and by each.
  virtual int64_t length() const = 0;
  virtual std::vector<int64_t> lengths() const = 0;
  // Sequence b starts over at length 0, the others untouched: a new prompt takes a finished
  // sequence's place in the batch.
  virtual void restart(int64_t b) = 0;
  // Reads Tn new tokens per sequence (tokens [B, Tn]) after those cached, caches them, and writes
  // the fp32 logits [B, padded_vocab] of each sequence's last new token.
  virtual void step(const int* tokens, int64_t B, int64_t Tn, float* logits) = 0;
  // The same, ragged: sequence b reads only the first counts[b] ≤ Tn tokens of its row (the rest
  // is padding) and its logits are those of its last one; a sequence with count 0 is left alone.
  // Sequences may hold different lengths: each reads at its own position, and needs room in the
  // cache for the tokens it reads (not for the padding).
  virtual void step(const int* tokens, int64_t B, int64_t Tn, std::span<const int32_t> counts, float* logits) = 0;
  // The most candidates step_top gives per sequence; 0 (the default): it gives none, and the
  // sampler reads whole logits.
  virtual int max_top_k() const { return 0; }
  // The ragged step, giving each sequence's best k tokens instead of its logits (1 ≤ k ≤
  // max_top_k()): ids [B, k] in rank order — the higher logit first, the lower id first among
  // equals — and their fp32 logits [B, k]. Enough for greedy and top-k sampling.
  virtual void step_top(const int* tokens, int64_t B, int64_t Tn, std::span<const int32_t> counts, int k,
                        int32_t* ids, float* logits);
};

}  // namespace flashgpt
