// Data parallelism and ZeRO-1 for the trainer (and `bench train`): how the ranks of a job are
// laid out, how gradients are averaged, and how the AdamW state is kept.
//
// Layout: world = data-parallel groups × context-parallel ranks; ranks r·cp … r·cp + cp − 1 share
// sequences (one context-parallel group), data-parallel group r reads its own part of the data.
//
// Plain data parallelism: every rank keeps the whole AdamW state; gradients are all-reduced in
// per-block buckets started as soon as the backward finishes each block, then averaged. With
// bf16 gradients (--reduce-dtype bf16) each bucket is first rounded to bf16 (to nearest even) and
// summed in bf16 (each pair added in fp32 and rounded), half the bytes; the sum is widened back
// to fp32 before the average, so every replica takes the same step.
// ZeRO-1: rank r owns the parameter range [offset, offset + count) of the flat parameter vector
// and only that part of the AdamW state; gradients are reduce-scattered to their owners, each
// rank updates its range, and the updated parameters are all-gathered.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "flashgpt/dist/comm.h"
#include "flashgpt/model/gpt.h"
#include "flashgpt/ops/adamw.h"

namespace flashgpt {

struct ParallelLayout {
  int world = 1, rank = 0;
  int dp = 1, dp_rank = 0;  // data-parallel groups
  int cp = 1, cp_rank = 0;  // ranks sharing each sequence
};
// Throws naming --context-parallel when it does not divide the rank count.
ParallelLayout make_parallel_layout(const dist::Communicator& world, int context_parallel);

// Bytes each rank sends per optimizer step (one micro-batch of B × T per data-parallel rank) under
// bandwidth-optimal collectives: the fp32 gradient all-reduce 2(N−1)/N · 4P (ZeRO-1: a
// reduce-scatter and an all-gather of (N−1)/N · 4P each, the same total), plus under context
// parallelism per layer the all-gather of keys and values and the reduce-scatter of their
// gradients, (cp−1)/cp · B·T·width · (kv_bytes + 4) bytes, width = 2·kv_dim for multi-head
// attention and n_latent + rope_dim for latent attention, which exchanges its latent rows instead;
// kv_bytes is the gathered values' size (4 on the CPU and in fp32, 2 for the GPU's bf16), their
// gradients are summed in fp32. grad_bytes: 4, or 2 where the gradients travel in bf16
// (--reduce-dtype bf16) in place of the 4 above. Scalars (the loss, the norm) are left out.
double predicted_bytes_per_step(const GPTConfig& config, int64_t B, int64_t T, const ParallelLayout& layout,
                                int zero_stage, int kv_bytes = 4, int grad_bytes = 4);

class GradientSync {
 public:
  // comm: every rank holding a replica (the whole job). zero_stage: 0 or 1. bf16_gradients: sum
  // the gradients in bf16 (above).
  GradientSync(dist::Communicator& comm, GPT<float>& model, int zero_stage, bool bf16_gradients = false);

  int zero_stage() const { return zero_; }
  bool bf16_gradients() const { return bf16_; }
  // Before the last micro-batch's backward: start reducing each block as it completes.
  void overlap_next_backward();
  // After the last backward: finish the reduction and average over the ranks.
  void finish_reduction();
  // Σ g² of the averaged gradient over the whole model, the same on every rank.
  double grad_sum_squares();
  // AdamW over this rank's part (everything without ZeRO), then share the updated weights.
  void step(const ops::AdamWParams& hp, float clip_scale);

  // This rank's range of the flat parameter vector (everything without ZeRO).
  int64_t shard_offset() const { return lo_; }
  int64_t shard_count() const { return hi_ - lo_; }
  std::span<float> m() { return m_; }
  std::span<float> v() { return v_; }
  // The whole AdamW state, assembled on rank 0 (empty elsewhere); a collective call.
  void gather_state(std::vector<float>& m_full, std::vector<float>& v_full);
  // Takes this rank's part of a whole AdamW state (from a checkpoint).
  void load_state(std::span<const float> m_full, std::span<const float> v_full);

 private:
  dist::Communicator& comm_;
  // Starts the sum of grads [off, off + count) (in bf16 from g16_ when bf16_).
  void start_sum(float* g, int64_t off, int64_t count);

  GPT<float>& model_;
  int zero_;
  bool bf16_;
  std::vector<uint16_t> g16_, shard16_;  // bf16 gradients: the rounded gradient, ZeRO-1's summed part
  std::vector<int64_t> counts_;  // per rank: parameters owned (ZeRO-1)
  int64_t lo_ = 0, hi_ = 0;
  std::vector<float> m_, v_, shard_grad_;
  std::vector<std::pair<int64_t, int64_t>> rest_;  // ranges no block hook covers (embeddings, final norm)
  bool overlapping_ = false;
};

}  // namespace flashgpt
