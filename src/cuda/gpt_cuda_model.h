// GPTCuda's implementation (the public side is flashgpt/cuda/gpt_cuda.h): the model class with
// its device buffers, shared by gpt_cuda.cpp (the model, multi-head attention, the step) and
// gpt_cuda_mla.cpp (latent attention), as the CPU model splits gpt.cpp and gpt_attention_*.cpp.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "flashgpt/attention/attention.h"
#include "flashgpt/cuda/context_parallel_cuda.h"
#include "flashgpt/cuda/device_memory.h"
#include "flashgpt/cuda/gpt_cuda.h"
#include "flashgpt/cuda/latent_decode_cuda.h"
#include "flashgpt/cuda/ops_cuda.h"
#include "flashgpt/model/params.h"
#include "flashgpt/ops/rope.h"
#include "cuda/stream.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

struct GPTCuda::Impl {
  GPTConfig config;
  Precision precision;
  std::vector<ParamSpec> specs;
  int64_t P = 0;
  DeviceBuffer master, grads, adam_m, adam_v;  // fp32 [P] (ZeRO-1: see zero below)
  // ZeRO-1 (GPTCuda::shard_optimizer_state): the ranks' communicator, and this rank's shard
  // [lo, hi) of the parameters, blocks of `shard` = ⌈P/ranks⌉. master and grads then hold
  // ranks·shard values (the tail past P padding) for the collectives, adam_m and adam_v `shard`.
  DeviceComm* zero = nullptr;
  int64_t shard = 0, lo = 0, hi = 0;
  // GPTCuda::overlap_next_backward: the communicator the next backward hands each finished block's
  // gradients to (null: none), whether a backward did since, and each block's (offset, count).
  DeviceComm* overlap = nullptr;
  bool overlapped = false;
  std::vector<std::pair<int64_t, int64_t>> block_ranges;
  // GPTCuda::set_reduce_precision: BF16 sums the gradients over the ranks as bf16, rounded into
  // grads16 (as many values as grads) before they travel and widened back after.
  Precision reduce = Precision::FP32;
  DeviceBuffer grads16;
  uint16_t* grads16_for(int64_t count) {  // grads16, made to hold `count` values
    if (grads16.bytes() != static_cast<size_t>(count) * sizeof(uint16_t)) {
      grads16 = DeviceBuffer(static_cast<size_t>(count) * sizeof(uint16_t));
    }
    return grads16.as<uint16_t>();
  }
  // Starts the sum of grads [off, off + count) over `comm` in the reduce precision (bf16: rounded
  // into grads16 first, on the current stream).
  void start_sum(DeviceComm& comm, int64_t off, int64_t count) {
    if (reduce == Precision::FP32) {
      comm.start_allreduce_sum(grads.as<float>() + off, count);
      return;
    }
    uint16_t* h = grads16.as<uint16_t>() + off;
    convert(reinterpret_cast<bf16*>(h), grads.as<const float>() + off, count);
    comm.start_allreduce_sum_bf16(h, count);
  }
  DeviceBuffer sum_squares{sizeof(double)};     // grad_sum_squares' accumulator
  // AdamW's runs of consecutive tensors with the same weight decay (adamw_update_runs), made once.
  DeviceBuffer adamw_ends, adamw_decay;
  AdamWRuns adamw_runs;
  explicit Impl(const GPTConfig& c, Precision p) : config(c), precision(p), specs(param_specs(c)) {
    P = specs.empty() ? 0 : specs.back().offset + specs.back().numel();
    for (int l = 0; l < c.n_layer; ++l) block_ranges.push_back(block_param_range(specs, l));
    const size_t bytes = static_cast<size_t>(P) * sizeof(float);
    master = DeviceBuffer(bytes);
    grads = DeviceBuffer(bytes);
    adam_m = DeviceBuffer(bytes);
    adam_v = DeviceBuffer(bytes);
    master.fill_bytes(0);
    grads.fill_bytes(0);
    adam_m.fill_bytes(0);
    adam_v.fill_bytes(0);
  }
  virtual ~Impl() = default;
  int64_t offset_of(const std::string& name) const {
    for (const ParamSpec& s : specs) {
      if (s.name == name) return s.offset;
    }
    return -1;
  }
  virtual void refresh_weights() = 0;  // the forward's weights from the master copy
  virtual bf16* weight_copy() = 0;     // the bf16 copy AdamW refreshes (null in FP32)
  virtual double forward(const int* tokens, const int* targets, int64_t B, int64_t Tn, const int32_t* segments) = 0;
  virtual void backward(float loss_scale) = 0;
  virtual double forward_backward(const int* tokens, const int* targets, int64_t B, int64_t Tn,
                                  const int32_t* segments, float loss_scale) = 0;
  virtual void get_logits(std::span<float> out) const = 0;
  virtual void start_decoding(int64_t B, int64_t capacity) = 0;
  // top_k = 0: logits [B, Vp]; top_k > 0: each sequence's best top_k, ids and logits [B, top_k].
  virtual void decode(const int* tokens, int64_t B, int64_t Tn, std::span<float> logits,
                      std::span<const int32_t> counts, int top_k, std::span<int32_t> ids) = 0;
  virtual std::vector<int64_t> decode_lengths() const = 0;
  virtual void restart_decoding(int64_t b) = 0;
  virtual int64_t decode_cache_bytes() const = 0;
  int64_t classifier_rows = 0;  // rows per classifier chunk; 0 chooses
  bool decode_graphs = true;     // steady decoding steps replay a captured CUDA graph
  SplitKv split_kv_decode = SplitKv::Auto;  // multi-head decoding: flash decode (split-KV) or flash kernels
  FlashDecodeKernel flash_decode_kernel = FlashDecodeKernel::Auto;  // flash decode's split kernel
  int64_t graph_replays = 0;     // steps that did, since start_decoding
  bool deterministic_next = false;  // set_deterministic: what the next forward with targets latches
  bool deterministic = false;       // the step in flight: no atomics in its backward
  FlashTiles flash_tiles = FlashTiles::Auto;  // set_flash_tiles: the bf16 flash kernels' tiles in training
  AttentionBackend attention_backend = AttentionBackend::Ours;  // set_attention_backend: training's bf16 flash attention
  bool gelu_fusion = true;  // set_gelu_fusion: GELU in the MLP's GEMM epilogues (bf16)
  bool qkv_fusion = true;   // set_qkv_fusion: q, k and v in one GEMM (multi-head, no QK-norm)
  const DeviceContextParallel* cp = nullptr;  // set_context_parallel: the group sharing each sequence
};

namespace gpt_detail {

// The tensors of one block by their offsets in the parameter buffer (−1: the config has none).
struct LayerOffsets {
  int64_t ln1_w, ln1_b, qkv_w, qkv_b, q_norm_w, k_norm_w, proj_w, proj_b, post_attn_w, post_attn_b, ln2_w, ln2_b,
      fc_w, fc_b, mlp_proj_w, mlp_proj_b, post_mlp_w, post_mlp_b;
  // latent attention
  int64_t q_w, q_b, q_down_w, q_down_b, q_down_norm_w, q_up_w, kv_down_w, kv_down_b, kv_norm_w, k_rope_w, k_rope_b,
      k_up_w, v_up_w, v_up_u_w, v_up_v_w;
};

// Block l's tensors, by their names in the parameter table (model/params.cpp).
LayerOffsets layer_offsets(const GPTCuda::Impl& m, int l);

// An arena of device memory for values of one type, handed out in order. It only grows: decoding
// changes shape at every ragged step (packed rows, then one row per sequence again), and a
// reallocation each time would free (synchronising the device) and allocate twice per step.
template <typename E>
class Arena {
 public:
  void plan(E** slot, int64_t n) { plan_.emplace_back(slot, n); }
  void commit() {
    int64_t total = 0;
    for (const auto& [slot, n] : plan_) total += round_up(n);
    if (static_cast<int64_t>(buf_.bytes() / sizeof(E)) < total) buf_ = DeviceBuffer(static_cast<size_t>(total) * sizeof(E));
    E* cursor = buf_.as<E>();
    for (const auto& [slot, n] : plan_) {
      *slot = n > 0 ? cursor : nullptr;
      cursor += round_up(n);
    }
    plan_.clear();
  }

 private:
  // Every buffer starts 256 bytes after the last, as cuBLASLt's fastest kernels want.
  static int64_t round_up(int64_t n) {
    constexpr int64_t per = static_cast<int64_t>(256 / sizeof(E));
    return (n + per - 1) / per * per;
  }
  std::vector<std::pair<E**, int64_t>> plan_;
  DeviceBuffer buf_;
};

template <typename T>
class Model final : public GPTCuda::Impl {
 public:
  Model(const GPTConfig& c, Precision p) : Impl(c, p) {
    if constexpr (std::is_same_v<T, bf16>) copy_ = DeviceBuffer(static_cast<size_t>(P) * sizeof(bf16));
    for (int l = 0; l < c.n_layer; ++l) layers_.push_back(layer_offsets(*this, l));
    wte_ = offset_of("wte");
    wpe_ = offset_of("wpe");
    lnf_w_ = offset_of("lnf.weight");
    lnf_b_ = offset_of("lnf.bias");
    lm_ = c.tie_embeddings ? wte_ : offset_of("lm_head.weight");
    if (c.pos == PosKind::Rope) {
      // Multi-head attention rotates whole heads; latent attention only its decoupled rope part.
      const int width = is_latent(c.attention) ? c.mla_rope_dim() : c.head_dim();
      const ops::RopeTable<float> table(c.block_size, width, c.rope_theta);
      rope_cos_ = DeviceBuffer(table.cos.size() * sizeof(float));
      rope_sin_ = DeviceBuffer(table.sin.size() * sizeof(float));
      rope_cos_.upload(table.cos.data(), table.cos.size() * sizeof(float));
      rope_sin_.upload(table.sin.data(), table.sin.size() * sizeof(float));
    }
    refresh_weights();
  }

  void refresh_weights() override {
    if constexpr (std::is_same_v<T, bf16>) convert(copy_.as<bf16>(), master.as<float>(), P);
  }
  bf16* weight_copy() override {
    if constexpr (std::is_same_v<T, bf16>) return copy_.as<bf16>();
    return nullptr;
  }

  double forward(const int* tokens, const int* targets, int64_t B, int64_t Tn, const int32_t* segments) override;
  void backward(float loss_scale) override;
  double forward_backward(const int* tokens, const int* targets, int64_t B, int64_t Tn, const int32_t* segments,
                          float loss_scale) override;
  void get_logits(std::span<float> out) const override;
  void start_decoding(int64_t B, int64_t capacity) override;
  void decode(const int* tokens, int64_t B, int64_t Tn, std::span<float> logits, std::span<const int32_t> counts,
              int top_k, std::span<int32_t> ids) override;
  std::vector<int64_t> decode_lengths() const override { return dec_.lengths; }
  void restart_decoding(int64_t b) override;
  int64_t decode_cache_bytes() const override {
    return static_cast<int64_t>(dec_.k.bytes() + dec_.v.bytes() + dec_.latent.bytes());
  }

 private:
  // Saved activations of one block, N = B·Tn rows (widths as in the CPU model's LayerActs).
  // With fused q/k/v (fused_qkv()), q is the whole projection [N, q_dim + 2·kv_dim] and k and v
  // point at its column blocks; qa and ka are q and k themselves, or with QK-norm dense rows of
  // their own.
  struct LayerActs {
    T *ln1, *q, *k, *v, *qa, *ka, *att, *proj, *res_mid, *ln2, *fc, *act, *mlp_proj;
    float *ln1_mean, *ln1_rstd, *q_rstd, *k_rstd, *lse, *post_attn_mean, *post_attn_rstd, *ln2_mean, *ln2_rstd,
        *post_mlp_mean, *post_mlp_rstd;
    // latent attention only
    T *cq_pre, *cq, *ckv_pre, *ckv, *kr, *v_up;
    float *cq_rstd, *ckv_rstd;
    // the standard kernel only: its workspace, with this layer's P kept from forward to backward
    float* standard_ws;
    // context parallelism only: the whole sequences' keys [Bs, T, Hkv·Dqk] and values [Bs, T, Hkv·Dv]
    // as the attention read them, kept for the backward; latent attention's gathered latent rows
    // c_kv [Bs, T, n_latent] they were expanded from
    T *kg, *vg, *ckvg;
  };

  // The weights the forward reads (T) and the fp32 gradients, by offset.
  const T* W(int64_t off) const {
    if (off < 0) return nullptr;
    if constexpr (std::is_same_v<T, bf16>) {
      return copy_.as<bf16>() + off;
    } else {
      return master.as<float>() + off;
    }
  }
  float* G(int64_t off) const { return off < 0 ? nullptr : grads.as<float>() + off; }
  const float* M(int64_t off) const { return off < 0 ? nullptr : master.as<float>() + off; }  // fp32 master

  void allocate(int64_t B, int64_t Tn);
  void group_tokens(const int* tokens, int64_t N);  // token_runs_ for this batch
  // The forward up to the final norm (checks, copies, embeddings, blocks); the number of targets.
  void encode(const int* tokens, const int* targets, int64_t B, int64_t Tn, const int32_t* segments);
  // The classifier, chunk by chunk (classifier_rows rows of logits at a time, never all of them):
  // the losses only, or the losses and the gradient — the logits' gradient scaled by per_token
  // feeds dW of the classifier and dln_ at once.
  int64_t chunk_rows(int64_t N) const;  // rows per chunk of a batch of N rows
  void classifier_loss();
  void classifier_backward(float per_token);
  double mean_loss();                    // waits for the losses
  void trunk_backward();                 // from dln_ down to the embeddings
  void norm_forward(T* out, float* mean, float* rstd, const T* inp, int64_t w, int64_t b, int64_t N, int64_t C) const;
  // Post-norm's norm of a branch: its weight and bias (offsets) and where its statistics go.
  struct PostNorm {
    int64_t w, b;
    float *mean, *rstd;
  };
  // sum = a + b, then out = the norm with weights w, bias of sum (the residual add and the next norm);
  // with `post`, b is that norm of the branch (one launch: BranchNorm in ops_cuda.h).
  void add_norm_forward(T* sum, T* out, float* mean, float* rstd, const T* a, const T* b, int64_t w, int64_t bias,
                        int64_t N, int64_t C, const PostNorm* post = nullptr) const;
  // The blocks from the embeddings in resid_[0] to the final norm in lnf_.
  void trunk_forward();
  void norm_backward(T* dinp, const T* dout, const T* inp, int64_t w, int64_t b, const float* mean, const float* rstd,
                     int64_t N, int64_t C, bool accumulate) const;
  AttentionMask mask() const;
  // Multi-head attention projects q, k and v with one GEMM into rows [q | k | v] (and its
  // gradients with one GEMM each from rows [dq | dk | dv]); the attention kernels, RoPE, QK-norm
  // and the decode cache's appends read the blocks through their row strides. QK-norm reads its
  // heads inside the rows and writes dense normalised q and k (qa, ka), and its backward writes
  // dq and dk back into the rows.
  bool fused_qkv() const { return qkv_fusion && !is_latent(config.attention); }
  int64_t qkv_width() const { return config.q_dim() + 2 * config.kv_dim(); }
  // Elements from one token's projected q (k or v) to the next one's.
  int64_t q_ld() const { return fused_qkv() ? qkv_width() : config.q_dim(); }
  int64_t kv_ld() const { return fused_qkv() ? qkv_width() : config.kv_dim(); }
  // The same for the q and k the attention reads (qa, ka; and dqa_, dka_): dense after QK-norm.
  int64_t qa_ld() const { return config.qk_norm ? config.q_dim() : q_ld(); }
  int64_t ka_ld() const { return config.qk_norm ? config.kv_dim() : kv_ld(); }
  // Whether the q and k the attention reads are the fused rows' first blocks, the q heads then the
  // k heads (and dq, dk likewise): RoPE rotates them as Hq + Hkv heads in one launch.
  bool qk_adjacent() const { return fused_qkv() && !config.qk_norm; }
  // Multi-head attention over Tk keys of batch B, Tq queries each (Tk_stride: the cache's rows),
  // reading this model's q (and, outside decoding, k and v) through their row strides.
  AttentionDims mha_dims(int64_t B, int64_t Tq, int64_t Tk, int64_t Tk_stride, bool kv_in_rows) const {
    const GPTConfig& c = config;
    AttentionDims d{B, c.n_head, c.kv_heads(), Tq, Tk, c.head_dim(), c.head_dim(), Tk_stride};
    d.q_row_stride = qa_ld();
    if (kv_in_rows) {
      d.k_row_stride = ka_ld();
      d.v_row_stride = kv_ld();
    }
    return d;
  }
  // GELU rides in the MLP's GEMM epilogues (gelu_fusion, bf16 GELU models).
  bool fused_gelu() const { return std::is_same_v<T, bf16> && gelu_fusion && config.mlp == MlpKind::Gelu; }
  void attention_forward(const AttentionDims& d, float scale, LayerActs& a) const;
  void attention_backward(const AttentionDims& d, float scale, const LayerActs& a) const;
  // Context parallelism's part of both, over keys and values already in a.kg and a.vg: both
  // chunks' calls, and in the backward the sums of their key and value gradients over the whole
  // sequences, fp32 [Bs, T, Hkv·Dqk] then [Bs, T, Hkv·Dv] in cp_acc_ (dqa_ gets the local rows').
  void cp_attention_calls_forward(const AttentionDims& d, float scale, const LayerActs& a) const;
  void cp_attention_calls_backward(const AttentionDims& d, float scale, const LayerActs& a) const;
  // One kernel call of either: the chosen kernel over these inputs (P of the standard kernel in ws).
  struct AttentionCall {
    AttentionDims d;
    AttentionMask m;
    const T *q, *k, *v;
    T* out;
    float* lse;
    float* ws;
  };
  void attention_call_forward(const AttentionCall& c, float scale) const;
  void attention_call_backward(const AttentionCall& c, float scale, const T* dout, T* dq, T* dk, T* dv) const;
  // Context parallelism: the call of chunk j (0: early, 1: late) of this rank's rows, over the
  // gathered keys and values of layer a. d: the layer's attention as it would run without it.
  AttentionCall cp_call(const AttentionDims& d, const LayerActs& a, int j) const;
  // Block l from its input x (a.ln1 already holds its norm) to its output out, ending with the
  // norm the next block (or the classifier) reads.
  void block_forward(int l, LayerActs& a, const T* x, T* out);
  void block_backward(int l, const LayerActs& a, const T* x);
  // The attention sublayer from a.ln1 to a.att, and from datt_ back into dln_ (written):
  // multi-head here in gpt_cuda.cpp, latent in gpt_cuda_mla.cpp.
  void mha_forward(const LayerOffsets& o, LayerActs& a);
  void mha_backward(const LayerOffsets& o, const LayerActs& a);
  void mla_forward(const LayerOffsets& o, LayerActs& a);
  void mla_backward(const LayerOffsets& o, const LayerActs& a);
  // Latent attention under context parallelism (gpt_cuda_mla.cpp): the group exchanges latent rows
  // [c_kv, k_rope], n_latent + rope_dim values a token, not the expanded keys and values. Forward:
  // gather them and expand every head's keys and values over the whole sequences into a.kg and
  // a.vg. Backward: from cp_attention_calls_backward's sums, dW_k_up and dW_v_up over the whole
  // sequences (this rank's queries' share) and the latent rows' gradients, reduce-scattered into
  // this rank's dckv_ and dkr_.
  void mla_cp_expand(const LayerOffsets& o, LayerActs& a, const T* v_up);
  void mla_cp_latent_backward(const LayerOffsets& o, const LayerActs& a);
  // decode's attention: this step's keys and values (or latent rows) appended to the cache, then
  // the new queries over everything cached.
  void mha_decode_attention(LayerActs& a);
  void mla_decode_attention(const LayerOffsets& o, LayerActs& a, const T* v_up);
  // Causal attention of Tq new queries over a cache: flash decode (split along the cache) while
  // the rows per key/value head are few, else the flash kernels where they run the head dims,
  // else the standard kernel.
  void cached_attention(const AttentionDims& d, const AttentionMask& m, float scale, const T* q, const T* k,
                        const T* v, T* o, float* lse);
  int64_t layer_of(const LayerActs& a) const { return &a - acts_.data(); }
  // Where this forward's tokens sit in their sequences: after the cached ones while decoding.
  // Decoding: the position of this call's first new token, shared by the batch (pos0), or each
  // sequence's own (seq_pos, device int32 [B]; null when shared), or in a packed step each row's.
  int64_t pos0() const { return decoding_ ? dec_.pos : 0; }
  // Context parallelism (training): each chunk's, device int32 [2·Bs] (cp_pos_).
  const int32_t* seq_pos() const {
    if (!decoding_) return cp != nullptr ? cp_pos_ : nullptr;
    return dec_.apart || dec_.packed ? dec_.step_ints.template as<int32_t>() : nullptr;
  }

  // Decoding a latent cache, not packed: each sequence's key count, device int32 [B] (apart,
  // step_ints' second row).
  const int32_t* latent_key_counts() const {
    return dec_.apart ? step_int(dec_.B) : dec_.seq_lens.template as<int32_t>();
  }

  DeviceBuffer copy_;  // bf16 weights (BF16 only)
  std::vector<LayerOffsets> layers_;
  int64_t wte_ = -1, wpe_ = -1, lnf_w_ = -1, lnf_b_ = -1, lm_ = -1;
  DeviceBuffer rope_cos_, rope_sin_;

  // The shape the buffers are laid out for, and the last forward's inputs.
  int64_t B_ = 0, Tn_ = 0;
  Arena<T> arena_t_;
  Arena<float> arena_f_;
  Arena<int> arena_i_;
  std::vector<LayerActs> acts_;
  std::vector<T*> resid_;
  T *lnf_ = nullptr, *logits_ = nullptr;  // logits_: one chunk
  DeviceBuffer full_logits_;  // [N, Vp], only for a forward without targets (get_logits)
  bool have_logits_ = false;
  int64_t chunk_planned_ = 0;  // the classifier chunk the arena holds
  bool deterministic_planned_ = false;  // the flash backward mode the workspace is sized for
  bool fused_planned_ = false;          // whether the arena holds q, k and v as fused rows
  float *lnf_mean_ = nullptr, *lnf_rstd_ = nullptr, *losses_ = nullptr;
  int *tokens_ = nullptr, *targets_ = nullptr, *segments_ = nullptr;
  bool have_segments_ = false, have_forward_ = false;
  int64_t n_targets_ = 0;
  // Backward scratch, reused by every block.
  T *dres_ = nullptr, *dln_ = nullptr, *dbranch_ = nullptr, *dfc_ = nullptr, *dact_ = nullptr, *datt_ = nullptr,
    *dqa_ = nullptr, *dka_ = nullptr, *dv_ = nullptr, *dq_ = nullptr, *dk_ = nullptr;
  T *dkr_ = nullptr, *dckv_ = nullptr, *dckv_pre_ = nullptr, *dcq_ = nullptr, *dcq_pre_ = nullptr;  // latent
  float* dv_up_ = nullptr;  // the factored value up-projection's gradient [H·hd, n_latent]
  float* flash_ws_ = nullptr;  // the bf16 attention backward's workspace
  // Context parallelism: the arenas are laid out for cp_planned_. The layers run B_ = 2·Bs
  // "sequences" of Tn_ = chunk rows (chunk-major: context_parallel_cuda.h); cp_pos_ holds their
  // positions, cp_kv_segments_ the whole sequences' document ids [Bs, T]; the backward's key and
  // value gradients of one chunk's queries (cp_dk_, cp_dv_ [Bs, T, ·]), their sums (cp_acc_, fp32)
  // and the collectives' scratch (cp_stage_). The host side: this forward's tokens, targets and
  // document ids rearranged chunk-major, and the whole sequences' ids.
  const DeviceContextParallel* cp_planned_ = nullptr;
  int64_t cp_standard_ws_ = 0;  // floats of the standard kernel's workspace per chunk
  int32_t *cp_pos_ = nullptr, *cp_kv_segments_ = nullptr;
  T *cp_dk_ = nullptr, *cp_dv_ = nullptr;
  float *cp_acc_ = nullptr, *cp_stage_ = nullptr;
  std::vector<int> cp_tokens_, cp_targets_;
  std::vector<int32_t> cp_segments_, cp_segments_global_;
  const int* targets_host_ = nullptr;  // the targets of the rows as laid out (mean_loss)
  // The deterministic backward's rows of the batch grouped by token (group_rows_by_token).
  DeviceBuffer token_runs_buf_;
  TokenRuns token_runs_;

  // The decoding cache (start_decoding), and decode's scratch (grown as calls need).
  struct DecodeCache {
    int64_t B = 0, capacity = 0;
    std::vector<int64_t> lengths;  // tokens cached per sequence
    int64_t rows = 0;  // cache rows per sequence: capacity, in whole pages for latent attention
    // This call: the sequences at one position `pos`, each reading its whole row of Tn tokens;
    // or apart (different lengths, or a steady step; Tn new tokens each), when step_ints holds
    // int32 [2 + Tn, B]: each sequence's position (that of its first new token, also its causal
    // offset and the cache row it appends at), the keys it sees (max_keys is the largest, or the
    // cache's rows in a steady step), then the tokens [B, Tn]. Or packed (a ragged
    // step: some sequence reads fewer than Tn tokens): only the N tokens read run through the
    // layers, as rows [N, 1], and step_ints holds the int32 arrays PackedStep names.
    bool apart = false, packed = false;
    int64_t pos = 0, max_keys = 0, step_tn = 0;
    DeviceBuffer step_ints;
    DeviceBuffer k, v;                   // multi-head: [L, B, rows, kv_dim]
    DeviceBuffer latent;                 // latent: [L, B, rows, n_latent + rope_dim]
    DeviceBuffer block_table, seq_lens;  // latent: int32 [B, rows / page], [B]
    DeviceBuffer q_abs, o_lat, scratch, split_ws, logits, wide_logits;
    DeviceBuffer top;  // top_k: the candidates' ids [B, k], then their logits [B, k] (one copy back)
    DeviceBuffer q_pad, o_pad, lse_pad, last;  // a packed step's padded attention, its last rows
    PagedLatentDims latent_dims;        // latent: this call's decode, the same for every layer
    LatentDecodeOptions latent_opt;     // its planned schedule (made once a step) and workspace
    // A steady step's device work (one new token per sequence, run apart with the cache's rows as
    // the key bound), captured once and replayed while nothing it names has been reallocated: it
    // was captured for top_k `graph_top_k` at allocation epoch `graph_epoch`, with q, k and v fused
    // or not as `graph_fused` and multi-head attention's choices as `graph_split_kv` and
    // `graph_kernel` (switching any of them between steps captures again). Its activations are
    // its own business (it writes each before reading it, so another step's layout of the arenas
    // in between does no harm); it meets host code only in buffers of their own: the cache,
    // step_ints (its tokens, positions and key counts, one upload) and its outputs.
    Graph graph;
    int graph_top_k = -1;
    uint64_t graph_epoch = 0;
    bool graph_fused = false;
    SplitKv graph_split_kv = SplitKv::Auto;
    FlashDecodeKernel graph_kernel = FlashDecodeKernel::Auto;
    const float* graph_out = nullptr;  // where it leaves the logits (top_k = 0)
  };
  DecodeCache dec_;
  Stream decode_stream_;  // decoding queues its work here (a graph captures from it)
  // decode's device work from the embeddings to the classifier's output: top_k candidates per
  // sequence into dec_.top (ids, then logits), or fp32 logits [B, Vp] (returned).
  const float* decode_device_work(int64_t B, int64_t Tn, int top_k, size_t out_bytes);
  // Where a packed step's arrays sit in dec_.step_ints (N rows read, B sequences, P pages each):
  //   row_pos    [N]  each row's position (the embeddings' and RoPE's seq_pos, rows as sequences)
  //   row_cache  [N]  the cache row it appends at: b·rows + position
  //   row_padded [N]  multi-head: its row in the attention's two query layouts, one after the
  //                   other: [B, Tn] for the sequences reading several tokens, each sequence's
  //                   rows right-aligned (b·Tn + Tn − count_b + i), then [B, 1] for those reading
  //                   one (B·Tn + b)
  //   q_offsets  [B]  multi-head, the [B, Tn] layout: causal offsets lengths_b + count_b − Tn
  //   kv_lengths [B]  multi-head, the [B, Tn] layout: lengths_b + count_b for a sequence reading
  //                   several tokens, else 0 (its rows see no key, and the flash kernels skip them)
  //   q_offsets1, kv_lengths1 [B]  the same for the [B, 1] layout: lengths_b, and lengths_b + 1
  //                   for a sequence reading one token, else 0
  //   last_row   [B]  the row of each sequence's last token (−1 when it reads none: zero logits)
  //   row_keys   [N]  latent: the keys each row sees, position + 1 (rows decode as sequences of 1)
  //   row_table  [N, P] latent: each row's block table, its sequence's
  struct PackedStep {
    int64_t n = 0, row_pos = 0, row_cache = 0, row_padded = 0, q_offsets = 0, kv_lengths = 0, q_offsets1 = 0,
            kv_lengths1 = 0, last_row = 0, row_keys = 0, row_table = 0, total = 0;
    int64_t max_keys = 0, max_keys1 = 0;  // the largest kv_lengths, kv_lengths1 (0: no such sequence)
    PackedStep() = default;
    PackedStep(int64_t N, int64_t B, int64_t pages)
        : n(N), row_pos(0), row_cache(N), row_padded(2 * N), q_offsets(3 * N), kv_lengths(3 * N + B),
          q_offsets1(3 * N + 2 * B), kv_lengths1(3 * N + 3 * B), last_row(3 * N + 4 * B), row_keys(3 * N + 5 * B),
          row_table(4 * N + 5 * B), total(4 * N + 5 * B + N * pages) {}
  };
  PackedStep packed_;
  const int32_t* step_int(int64_t offset) const { return dec_.step_ints.template as<int32_t>() + offset; }
  bool decoding_ = false;  // the blocks' attention reads and extends dec_
};

}  // namespace gpt_detail

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
