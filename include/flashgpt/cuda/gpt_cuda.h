// GPTCuda: the GPT model's training step on the GPU — the CPU model's forward and backward
// (model/gpt.h) on device memory, with cuBLASLt GEMMs (cuda/matmul_cuda.h), our flash-attention
// kernels (cuda/attention_cuda.h) and the op kernels (cuda/ops_cuda.h), and AdamW over fp32 master
// weights on the device. Parameters use the CPU model's layout (model/params.h), so checkpoints,
// optimizer state and the CPU sampler move between the two by plain copies.
//
// Precision:
//   FP32 — every activation and weight in fp32, fp32 attention kernels: the parity mode, which
//          tracks the CPU model to rounding.
//   BF16 — mixed precision: weights used in bf16 (a copy refreshed by each AdamW step), bf16
//          activations and tensor-core attention, with fp32 accumulation, fp32 norm statistics,
//          losses, gradients, master weights and optimizer state.
//
// What runs on the GPU: every attention mechanism (standard and flash through the flash kernels,
// which compute the same maths; mla and flash_mla with their latent expanded into per-head keys
// and values, low-rank queries and SVD-factored value up-projections included), grouped-query
// heads, learned or rotary positions, QK-norm, pre- or post-norm, LayerNorm or RMSNorm, GELU or
// SwiGLU, biases or none, tied or untied embeddings, and document masking. unsupported() names
// what does not (in BF16: head dims other than 64 and 128, and latent attention with decoupled
// RoPE, whose query-key and value head dims differ), so `--device auto` can fall back to the CPU
// with that reason. Several processes train data-parallel, one GPU each, their gradients summed by DeviceComm
// (device_comm.h), with ZeRO-1 optionally, and context-parallel (set_context_parallel): the ranks
// of a group share each sequence.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "flashgpt/core/error.h"
#include "flashgpt/cuda/abi.h"
#include "flashgpt/cuda/flash_decode_cuda.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/attention_cudnn.h"
#include "flashgpt/cuda/context_parallel_cuda.h"
#include "flashgpt/cuda/device_comm.h"
#include "flashgpt/cuda/ops_cuda.h"
#include "flashgpt/infer/decoder.h"
#include "flashgpt/model/config.h"
#include "flashgpt/ops/adamw.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

enum class Precision { FP32, BF16 };
inline std::string to_string(Precision p) { return p == Precision::FP32 ? "fp32" : "bf16"; }
// "fp32" or "bf16"; anything else is an error naming `field`.
inline Precision parse_precision(const std::string& s, const std::string& field) {
  if (s == "fp32") return Precision::FP32;
  if (s == "bf16") return Precision::BF16;
  fail("{}: unknown precision '{}' (expected fp32 or bf16)", field, s);
}

// Which decoding steps attend with flash decode (split-KV) rather than the flash kernels: none;
// those where it is expected to win (FlashDecodePlan::beats_flash_kernel: GQA groups and several
// new tokens always, one row per key/value head only over long caches at small batches); or every
// step it can run.
enum class SplitKv { Off, Auto, On };
inline std::string to_string(SplitKv s) { return s == SplitKv::Off ? "off" : s == SplitKv::Auto ? "auto" : "on"; }
// "off", "auto" or "on"; anything else is an error naming `field`.
inline SplitKv parse_split_kv(const std::string& s, const std::string& field) {
  if (s == "off") return SplitKv::Off;
  if (s == "auto") return SplitKv::Auto;
  if (s == "on") return SplitKv::On;
  fail("{}: unknown setting '{}' (expected off, auto or on)", field, s);
}
// "auto", "tiles" or "warps" (flash_decode_kernel_name's); anything else is an error naming `field`.
inline FlashDecodeKernel parse_flash_decode_kernel(const std::string& s, const std::string& field) {
  for (FlashDecodeKernel k : {FlashDecodeKernel::Auto, FlashDecodeKernel::Tiles, FlashDecodeKernel::Warps}) {
    if (s == flash_decode_kernel_name(k)) return k;
  }
  fail("{}: unknown kernel '{}' (expected auto, tiles or warps)", field, s);
}

// A micro-batch in host memory: tokens and targets [B, Tn], document ids or null.
struct MicroBatch {
  const int* tokens = nullptr;
  const int* targets = nullptr;
  const int32_t* segments = nullptr;
  int64_t B = 0, Tn = 0;
};

class GPTCuda {
 public:
  // Allocates the parameters, gradients and optimizer state on the current GPU (zero weights:
  // set_params next). Throws flashgpt::Error with unsupported()'s reason, or on a CUDA failure.
  GPTCuda(const GPTConfig& config, Precision precision);
  ~GPTCuda();
  GPTCuda(const GPTCuda&) = delete;
  GPTCuda& operator=(const GPTCuda&) = delete;

  // Why this config cannot train on the GPU at this precision, or "" when it can.
  static std::string unsupported(const GPTConfig& config, Precision precision);

  const GPTConfig& config() const;
  Precision precision() const;
  int64_t num_params() const;

  // Weights and AdamW moments, host ↔ device, in the CPU model's layout (num_params() floats).
  void set_params(std::span<const float> params);
  void get_params(std::span<float> params) const;
  void set_optimizer_state(std::span<const float> m, std::span<const float> v);
  void get_optimizer_state(std::span<float> m, std::span<float> v) const;
  void get_grads(std::span<float> grads) const;

  void zero_grad();
  // As GPT<T>::forward, with host arrays (tokens and targets are checked on the host first): the
  // mean loss over the targets ≥ 0, or 0 without targets, when the logits stay for get_logits.
  // With targets the classifier never holds all the logits: it computes them a chunk of rows at
  // a time for the loss (set_classifier_rows), so they cost chunk × padded_vocab values, not N ×.
  double forward(const int* tokens, const int* targets, int64_t B, int64_t Tn, const int32_t* segments = nullptr);
  // Adds the gradient of loss_scale · (the last forward's loss) into the gradients. The
  // classifier's logits are computed again, chunk by chunk; forward_backward avoids that.
  void backward(float loss_scale = 1.0f);
  // The training step's forward and backward in one: each chunk of logits becomes its loss and
  // its gradient at once, which feed the classifier's weight gradient and the rest of the
  // backward. Returns the mean loss, as forward does, after the whole step.
  double forward_backward(const int* tokens, const int* targets, int64_t B, int64_t Tn, const int32_t* segments,
                          float loss_scale = 1.0f);
  // The logits [B·Tn, padded_vocab] of the last forward without targets.
  void get_logits(std::span<float> logits) const;
  // Rows of logits per classifier chunk (0: the fewest even chunks of at most 256 Mi logits), from
  // the next forward.
  void set_classifier_rows(int64_t rows);
  // Deterministic training: from the next forward with targets (a backward keeps the mode of the
  // forward it follows), the backward adds nothing with atomics — the flash attention's dQ by its
  // query-major kernel, the norm weights' gradients by a fixed-order pass, the token embedding's
  // by one sum per token (grouped on the host) — so the same weights, data and seed give the
  // same bits on every run on the same GPU and software. It costs time (the flash backward
  // recomputes S and P once more) but not memory (its workspace drops the fp32 dQ accumulator).
  // Off by default.
  void set_deterministic(bool on);
  bool deterministic() const;
  // The tiles of the bf16 flash kernels in the training step (attention_cuda.h's FlashTiles, each
  // falling back to Auto where it does not apply): what `bench train --tiles` compares. Auto by
  // default; decoding always runs Auto.
  void set_flash_tiles(FlashTiles tiles);
  FlashTiles flash_tiles() const;
  // Whose attention the bf16 training step runs for the flash mechanisms (attention_cudnn.h): our
  // kernels (Ours, the default) or cuDNN's fused attention (Cudnn; its flash tiles then unused),
  // what `bench train --attention-backend` and `train --attention-backend` choose. Throws, naming
  // the reason, where cuDNN cannot take this model (fp32, the standard mechanisms, head dims,
  // cuDNN missing); a step with document masks then fails with the same kind of message.
  // Decoding always runs our kernels.
  void set_attention_backend(AttentionBackend backend);
  AttentionBackend attention_backend() const;
  // The GELU MLP's activation inside its GEMMs in bf16 (matmul_cuda.h): forward, the first layer's
  // product writes both the pre-activation and GELU of it; backward, the second layer's input
  // gradient comes out already multiplied by GELU' (cuBLASLt's GELU and DGELU epilogues, where it
  // has them for the shape). Two passes over the [tokens, 4·n_embd] activations fewer a layer. On
  // by default; off, the separate GELU kernels (what `bench train --gelu-fusion off` compares).
  // fp32 and SwiGLU models always run the separate kernels.
  void set_gelu_fusion(bool on);
  bool gelu_fusion() const;
  // Multi-head attention's q, k and v projected by one GEMM into rows [q | k | v] (and the
  // gradients by one GEMM each), the attention reading them through row strides; on by default.
  // Off, three GEMMs each way (what `bench train --qkv-fusion off` compares). QK-norm reads its
  // heads inside the fused rows. Latent attention always runs its own products.
  void set_qkv_fusion(bool on);
  bool qkv_fusion() const;
  // Context parallelism (context_parallel_cuda.h), from the next forward: `cp`'s ranks share each
  // sequence of cp->seq_len() tokens, and forward and forward_backward take this rank's rows of
  // them, tokens and targets [B, cp->local_len()] in dist::ContextParallel's layout (as its
  // slice() cuts them; document ids too). Each layer's attention gathers the group's keys and
  // values; the backward returns each rank its rows' share of every rank's key and value
  // gradients, so that summing the weight gradients over every rank (reduce_grads) gives those of
  // the whole sequences. The losses are this rank's rows' (their mean over the group is the
  // sequences'). Collective over cp's group: its ranks call forward (and backward) together.
  // Null switches it off. Training only: no logits without targets, no decoding; not with cuDNN's
  // attention; the blocks' gradient sums wait for the whole backward (no overlap_next_backward).
  // `cp` must outlive its use.
  void set_context_parallel(const DeviceContextParallel* cp);

  // Data parallelism: sums the gradients over the ranks of `comm` in place, each rank holding the
  // same model and its own micro-batches' gradients (scale each rank's losses by 1/ranks for the
  // mean). Collective: every rank calls it once a step, after its backward. An all-reduce; under
  // shard_optimizer_state a reduce-scatter, after which only this rank's shard is summed.
  void reduce_grads(DeviceComm& comm);
  // Data parallelism overlapped with the backward: during the next backward (the step's last
  // micro-batch: earlier ones must not be summed yet) each block's gradients start their sum over
  // `comm` as soon as the block is done (DeviceComm::start_allreduce_sum: with NCCL on a stream of
  // its own, beside the next block's backward); reduce_grads then sums the rest (embeddings, final
  // norm, head) and waits for all of it. Nothing under shard_optimizer_state (its reduce-scatter
  // waits for the whole backward).
  void overlap_next_backward(DeviceComm& comm);
  // The precision the gradients travel in between the ranks (reduce_grads and its overlapped
  // sums): FP32 (the default), or BF16, half the bytes: each rank's fp32 gradient is rounded to
  // bf16, the ranks' values are summed in bf16 (each addition rounded) and the sum is widened back
  // into the fp32 gradient, which the clipping norm and AdamW then read as before. The replicas
  // stay identical (every rank widens the same sum). Set it alike on every rank.
  void set_reduce_precision(Precision p);
  Precision reduce_precision() const;
  // One optimizer step's gradients, as `flashgpt train` computes them: zero_grad, then `accum`
  // micro-batches from next() through forward_backward, each loss scaled by 1/(accum · ranks of
  // comm), and with comm (data parallelism) the last one's backward starting the blocks' sums
  // (overlap_next_backward). Returns this rank's mean loss over them; reduce_grads(*comm) next.
  double accumulate_gradients(int64_t accum, DeviceComm* comm, const std::function<MicroBatch()>& next);
  // ZeRO-1 over the ranks of `comm` (which must outlive the model), before the first step: this
  // rank keeps the AdamW moments of only its shard of the parameters, [rank·S, (rank+1)·S) with
  // S = ⌈P/ranks⌉ (the whole state's 2·4P bytes become 2·4S). From then on, collectively:
  // reduce_grads reduce-scatters; grad_sum_squares adds every rank's shard; adamw_step updates
  // this rank's shard and all-gathers the weights; get_optimizer_state gathers the whole state on
  // rank 0 (whose spans take it; the other ranks' may be empty); set_optimizer_state takes the
  // whole state on every rank and keeps this rank's part. get_grads holds the sums only in the shard.
  void shard_optimizer_state(DeviceComm& comm);
  bool optimizer_state_sharded() const;
  // Σ g² over every gradient (for global-norm clipping).
  double grad_sum_squares();
  // One AdamW step over every tensor (weight decay on the tensors the parameter table marks),
  // gradients multiplied by grad_scale first (clipping); refreshes the bf16 weight copy.
  void adamw_step(const ops::AdamWParams& hp, float grad_scale);

  // Incremental decoding (the sampler's path), as GPT<T>::forward_cached: start_decoding empties
  // the cache in device memory and lays it out for B sequences of up to `capacity` tokens;
  // decode reads Tn new tokens per sequence (tokens [B, Tn]) at positions decode_lengths()[b] … ,
  // appends their keys and values, and writes the fp32 logits [B, padded_vocab] of each
  // sequence's last new token. `counts` makes the batch ragged, as GPT<T>::forward_cached's: sequence
  // b reads the first counts[b] tokens of its row (the rest is padding; 0 leaves it alone), at its
  // own position whatever the others hold: a right-padded prefill, or new prompts joining
  // sequences already decoding. Such a ragged step runs only the tokens read through the layers,
  // and a sequence needs room in the cache for those alone (lengths + counts ≤ capacity). Multi-head attention caches keys and values [L, B, capacity, kv_dim]
  // and attends with the flash kernels (the standard kernel for bf16 head dims they lack); latent
  // attention caches only the rows [c_kv, k_rope] [L, B, capacity, n_latent + rope_dim] in pages
  // of 64 and attends with weight absorption straight over them (latent_decode_paged). Decoding
  // overwrites the activations a training step keeps: a backward must follow a new forward.
  void start_decoding(int64_t B, int64_t capacity);
  std::vector<int64_t> decode_lengths() const;
  // Sequence b of the cache starts over at length 0 (its old rows are never read again).
  void restart_decoding(int64_t b);
  int64_t decode_length() const;  // the length every sequence holds (an error if they differ)
  void decode(const int* tokens, int64_t B, int64_t Tn, std::span<float> logits,
              std::span<const int32_t> counts = {});
  // The same step, returning only what the sampler needs from each sequence's logits: its best k
  // tokens (1 ≤ k ≤ kMaxDeviceTopK and vocab_size), ids [B, k] in rank order — the higher logit
  // first, the lower id first among equals — and their fp32 logits [B, k], found on the GPU
  // (top_k_rows), so 8·k bytes per sequence cross to the host instead of 4·padded_vocab.
  void decode_top(const int* tokens, int64_t B, int64_t Tn, int k, std::span<int32_t> ids, std::span<float> logits,
                  std::span<const int32_t> counts = {});
  // The cache's size in bytes (0 before start_decoding).
  int64_t decode_cache_bytes() const;
  // CUDA graphs for steady steps. A step in which every sequence reads one new token or sits out
  // (the sampler's steady state; not a prefill) queues a few hundred small kernels,
  // and at small batches launching them costs more than running them. With graphs on (the
  // default) the first such step runs launch by launch and its work is captured as a CUDA graph;
  // later ones upload their tokens, positions and key counts and replay the graph with one launch.
  // A step whose buffers had to grow since (a bigger ragged step came between) or that asks for a
  // different top_k is captured anew. Should the runtime refuse a capture, decoding goes on
  // without graphs after one note on stderr. Replayed and launched steps give the same bits.
  void set_decode_graphs(bool on);
  bool decode_graphs() const;
  // Steps since start_decoding that replayed the graph.
  int64_t decode_graph_replays() const;
  // Multi-head attention while decoding. Steps whose new tokens × query heads per key/value head
  // are at most 16 can attend with flash decode (flash_decode_cuda.h: the cache split across the
  // GPU, a combine step after) or with the flash kernels, whose blocks each take a tile of queries
  // and walk the whole cache. Auto (the default) picks flash decode where it is expected to win;
  // on, wherever it runs; off, never. Latent attention has its own split decode.
  void set_split_kv_decode(SplitKv mode);
  SplitKv split_kv_decode() const;
  // Flash decode's split kernel for those steps (FlashDecodeKernel): Auto (the default) and Tiles
  // run the tiles kernel; Warps the warps kernel wherever it runs the step (up to
  // kFlashDecodeWarpRows rows per key/value head, rows of whole 16-byte chunks), else the tiles one.
  void set_flash_decode_kernel(FlashDecodeKernel kernel);
  FlashDecodeKernel flash_decode_kernel() const;
  // Why this config cannot decode on the GPU at this precision, or "" when it can.
  static std::string decode_unsupported(const GPTConfig& config, Precision precision);

  struct Impl;  // the implementation, one per precision (gpt_cuda.cpp)

 private:
  std::unique_ptr<Impl> impl_;
};

// The sampler's view of a GPU model (infer/decoder.h).
class GPTCudaDecoder final : public Decoder {
 public:
  explicit GPTCudaDecoder(GPTCuda& model) : model_(model) {}
  const GPTConfig& config() const override { return model_.config(); }
  void start(int64_t B, int64_t capacity) override { model_.start_decoding(B, capacity); }
  int64_t length() const override { return model_.decode_length(); }
  std::vector<int64_t> lengths() const override { return model_.decode_lengths(); }
  void restart(int64_t b) override { model_.restart_decoding(b); }
  void step(const int* tokens, int64_t B, int64_t Tn, float* logits) override {
    model_.decode(tokens, B, Tn, {logits, static_cast<size_t>(B * model_.config().padded_vocab_size())});
  }
  void step(const int* tokens, int64_t B, int64_t Tn, std::span<const int32_t> counts, float* logits) override {
    model_.decode(tokens, B, Tn, {logits, static_cast<size_t>(B * model_.config().padded_vocab_size())}, counts);
  }
  int max_top_k() const override { return kMaxDeviceTopK; }
  void step_top(const int* tokens, int64_t B, int64_t Tn, std::span<const int32_t> counts, int k, int32_t* ids,
                float* logits) override {
    const auto n = static_cast<size_t>(B * k);
    model_.decode_top(tokens, B, Tn, k, {ids, n}, {logits, n}, counts);
  }

 private:
  GPTCuda& model_;
};

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
