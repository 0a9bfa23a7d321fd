// GPTCuda (flashgpt/cuda/gpt_cuda.h): the CPU model's forward and backward (model/gpt.cpp,
// model/gpt_attention_mha.cpp) step for step on the GPU. Host code only: it queues the CUDA ops'
// kernels and cuBLASLt GEMMs, so it compiles once for the GPU build and once for the emulator.
//
// Memory: fp32 master weights, gradients and AdamW moments [P] in the CPU's parameter layout; the
// weights the forward reads (the master itself in FP32, a bf16 copy in BF16); and one arena per
// element type for the activations of every layer (kept for the backward) and the backward's
// scratch, laid out for the batch shape of the last forward.
#include "flashgpt/cuda/gpt_cuda.h"

#include <fmt/format.h>

#include "cuda/gpt_cuda_model.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <utility>
#include <vector>

#include "flashgpt/core/device.h"
#include "flashgpt/core/error.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/device_memory.h"
#include "flashgpt/cuda/matmul_cuda.h"
#include "flashgpt/cuda/ops_cuda.h"
#include "flashgpt/model/params.h"
#include "flashgpt/ops/rope.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

std::string GPTCuda::unsupported(const GPTConfig& c, Precision p) {
  // The standard kernel (standard, mla) runs any head dims in either precision.
  if (!uses_flash_kernel(c.attention)) return "";
  if (p == Precision::BF16 && !is_latent(c.attention) && !flash_tc_supports(c.head_dim(), c.head_dim())) {
    return fmt::format("bf16 flash attention on the GPU needs head_dim 64 or 128; this model has {} (n_embd {} / "
                       "n_head {}); train it with --precision fp32, or with --attention standard",
                       c.head_dim(), c.n_embd, c.n_head);
  }
  if (p == Precision::BF16 && is_latent(c.attention) && !flash_tc_supports(c.mla_qk_dim(), c.head_dim())) {
    return fmt::format("bf16 latent attention on the GPU needs query-key/value head dims 64/64, 96/64, 128/128 or "
                       "192/128; this model's are {}/{} (head_dim {} + rope_dim {}); train it with --precision fp32, or with "
                       "--attention mla",
                       c.mla_qk_dim(), c.head_dim(), c.head_dim(), c.mla_rope_dim());
  }
  if (c.head_dim() > 256 || (is_latent(c.attention) && c.mla_qk_dim() > 256)) {
    return fmt::format("GPU attention supports head dims up to 256; this model's is {}",
                       is_latent(c.attention) ? c.mla_qk_dim() : c.head_dim());
  }
  return "";
}

namespace gpt_detail {

LayerOffsets layer_offsets(const GPTCuda::Impl& m, int l) {
  const std::string pre = "blocks." + std::to_string(l) + ".";
  auto at = [&](const char* name) { return m.offset_of(pre + name); };
  return {at("ln1.weight"), at("ln1.bias"), at("attn.qkv.weight"), at("attn.qkv.bias"), at("attn.q_norm.weight"),
          at("attn.k_norm.weight"), at("attn.proj.weight"), at("attn.proj.bias"), at("post_attn_norm.weight"),
          at("post_attn_norm.bias"), at("ln2.weight"), at("ln2.bias"), at("mlp.fc.weight"), at("mlp.fc.bias"),
          at("mlp.proj.weight"), at("mlp.proj.bias"), at("post_mlp_norm.weight"), at("post_mlp_norm.bias"),
          at("attn.q.weight"), at("attn.q.bias"), at("attn.q_down.weight"), at("attn.q_down.bias"),
          at("attn.q_down_norm.weight"), at("attn.q_up.weight"), at("attn.kv_down.weight"), at("attn.kv_down.bias"),
          at("attn.kv_norm.weight"), at("attn.k_rope.weight"), at("attn.k_rope.bias"), at("attn.k_up.weight"),
          at("attn.v_up.weight"), at("attn.v_up_u.weight"), at("attn.v_up_v.weight")};
}

template <typename T>
void Model<T>::allocate(int64_t B, int64_t Tn) {
  if (B == B_ && Tn == Tn_ && chunk_planned_ == chunk_rows(B * Tn) && deterministic_planned_ == deterministic &&
      fused_planned_ == fused_qkv() && cp_planned_ == cp) {
    return;
  }
  chunk_planned_ = chunk_rows(B * Tn);
  deterministic_planned_ = deterministic;
  fused_planned_ = fused_qkv();
  cp_planned_ = cp;
  const GPTConfig& c = config;
  const int64_t N = B * Tn, C = c.n_embd, H = c.n_head, hd = c.head_dim(), F = c.hidden(),
                Vp = c.padded_vocab_size();
  const bool latent = is_latent(c.attention), qkn = c.qk_norm;
  // Widths of the attention buffers (as the CPU model's attn_widths): q and its attention copy qa,
  // the projected key k (latent: the rope key), the keys attention sees ka, the values v, the
  // rows of k QK-norm normalises per token, and the latent attention's own.
  const int64_t dqk = latent ? c.mla_qk_dim() : hd, dr = latent ? c.mla_rope_dim() : 0;
  const int64_t nl = latent ? c.latent_dim() : 0, r = latent ? c.q_lora_rank : 0;
  const int64_t wq = H * dqk, wk = latent ? dr : c.kv_dim(), wka = latent ? H * dqk : c.kv_dim();
  const int64_t wv = latent ? H * hd : c.kv_dim(), k_rows = latent ? (dr > 0 ? 1 : 0) : c.kv_heads();
  const int64_t v_up = latent && c.use_svd ? H * hd * nl : 0;
  // Fused q/k/v: one buffer of rows [q | k | v] in q's slot, and [dq | dk | dv] in dqa_'s (with
  // QK-norm in dq_'s: the attention's dqa_ and dka_ are then dense rows of the normalised q and k).
  const bool fused = fused_qkv();
  const int64_t wqkv = wq + wk + wv;
  using TSlots = std::initializer_list<std::pair<T**, int64_t>>;
  using FSlots = std::initializer_list<std::pair<float**, int64_t>>;
  auto plan_t = [&](TSlots slots) {
    for (const auto& [slot, n] : slots) arena_t_.plan(slot, n);
  };
  auto plan_f = [&](FSlots slots) {
    for (const auto& [slot, n] : slots) arena_f_.plan(slot, n);
  };
  acts_.assign(static_cast<size_t>(c.n_layer), LayerActs{});
  for (LayerActs& a : acts_) {
    // Without QK-norm, RoPE (if any) runs in place on q and k (qa, ka or kr alias them): the
    // backward needs only the rotated values.
    plan_t({{&a.ln1, N * C}, {&a.q, N * (fused ? wqkv : wq)}, {&a.k, fused ? 0 : N * wk}, {&a.v, fused ? 0 : N * wv},
            {&a.att, N * H * hd},
            {&a.proj, N * C}, {&a.res_mid, N * C}, {&a.ln2, N * C}, {&a.fc, N * c.fc_out()}, {&a.act, N * F},
            {&a.mlp_proj, N * C}, {&a.qa, qkn ? N * wq : 0}, {&a.ka, latent || qkn ? N * wka : 0},
            {&a.cq_pre, N * r}, {&a.cq, N * r}, {&a.ckv_pre, N * nl}, {&a.ckv, N * nl},
            {&a.kr, latent && qkn ? N * dr : 0}, {&a.v_up, v_up}});
    plan_f({{&a.ln1_mean, N}, {&a.ln1_rstd, N}, {&a.q_rstd, qkn ? N * H : 0}, {&a.k_rstd, qkn ? N * k_rows : 0},
            {&a.lse, B * H * Tn}, {&a.post_attn_mean, N}, {&a.post_attn_rstd, N}, {&a.ln2_mean, N},
            {&a.ln2_rstd, N}, {&a.post_mlp_mean, N}, {&a.post_mlp_rstd, N}, {&a.cq_rstd, r > 0 ? N : 0},
            {&a.ckv_rstd, latent ? N : 0}});
  }
  // The standard kernel keeps every layer's P (B·H·Tn² elements) from its forward to its backward.
  // Context parallelism: B = 2·Bs runs of Tn = chunk rows, each chunk's Bs of them attending to
  // up to the whole sequences' T keys (P of both chunks kept).
  const int64_t Bs = cp ? B / 2 : B, Tg = cp ? cp->seq_len() : Tn;
  const AttentionDims att_dims{Bs, H, latent ? H : c.kv_heads(), Tn, Tg, dqk, hd, 0};
  const bool standard = !uses_flash_kernel(c.attention);
  cp_standard_ws_ = standard ? static_cast<int64_t>((standard_workspace_bytes<T>(att_dims) + 3) / 4) : 0;
  const int64_t standard_ws = cp_standard_ws_ * (cp ? 2 : 1);
  for (LayerActs& a : acts_) plan_f({{&a.standard_ws, standard_ws}});
  const int64_t cp_kv = cp ? Bs * Tg : 0;  // rows of the whole sequences' keys and values
  for (LayerActs& a : acts_) plan_t({{&a.kg, cp_kv * wka}, {&a.vg, cp_kv * wv}, {&a.ckvg, cp_kv * nl}});
  plan_t({{&cp_dk_, cp_kv * wka}, {&cp_dv_, cp_kv * std::max(wv, dr)}});
  // The fp32 sums: of dK and dV, then (latent) of the latent rows' gradients [dc_kv | dk_rope].
  plan_f({{&cp_acc_, cp_kv * std::max(wka + wv, nl + dr)},
          {&cp_stage_, cp ? cp->stage_floats(Bs, std::max({wka, wv, nl})) : 0}});
  arena_i_.plan(&cp_pos_, cp ? B : 0);
  arena_i_.plan(&cp_kv_segments_, cp_kv);
  resid_.assign(static_cast<size_t>(c.n_layer + 1), nullptr);
  for (T*& x : resid_) arena_t_.plan(&x, N * C);
  plan_t({{&lnf_, N * C}, {&logits_, std::min(N, chunk_rows(N)) * Vp}, {&dres_, N * C}, {&dln_, N * C},
          {&dbranch_, N * C}, {&dfc_, N * c.fc_out()}, {&dact_, N * F}, {&datt_, N * H * hd},
          {&dqa_, N * (fused && !qkn ? wqkv : wq)}, {&dka_, fused && !qkn ? 0 : N * wka}, {&dv_, fused ? 0 : N * wv},
          {&dq_, qkn ? N * (fused ? wqkv : wq) : 0}, {&dk_, qkn && !fused ? N * wk : 0},
          {&dkr_, N * dr}, {&dckv_, N * nl}, {&dckv_pre_, N * nl}, {&dcq_, N * r}, {&dcq_pre_, N * r}});
  // The tensor-core attention backward's workspace: its row sums, and in the atomic mode its fp32
  // dQ accumulator.
  const int64_t flash_ws = std::is_same_v<T, bf16> && !standard
                               ? static_cast<int64_t>(flash_backward_workspace_bytes(att_dims, deterministic) / 4)
                               : 0;
  plan_f({{&lnf_mean_, N}, {&lnf_rstd_, N}, {&losses_, N}, {&dv_up_, v_up}, {&flash_ws_, flash_ws}});
  for (int** slot : {&tokens_, &targets_, &segments_}) arena_i_.plan(slot, N);
  B_ = Tn_ = 0;  // until the arenas exist
  arena_t_.commit();
  arena_f_.commit();
  arena_i_.commit();
  if (fused && qkn) {
    dk_ = dq_ + wq;
    dv_ = dk_ + wk;
  } else if (fused) {
    dka_ = dqa_ + wq;
    dv_ = dka_ + wk;
  }
  for (LayerActs& a : acts_) {
    if (fused) {
      a.k = a.q + wq;
      a.v = a.k + wk;
    }
    if (!qkn) {
      a.qa = a.q;
      if (latent) {
        a.kr = a.k;
      } else {
        a.ka = a.k;
      }
    }
  }
  B_ = B;
  Tn_ = Tn;
}

template <typename T>
void Model<T>::norm_forward(T* out, float* mean, float* rstd, const T* inp, int64_t w, int64_t b, int64_t N,
                            int64_t C) const {
  const float eps = static_cast<float>(config.norm_eps);
  if (config.norm == NormKind::LayerNorm) {
    layernorm_forward(out, mean, rstd, inp, W(w), W(b), N, C, eps);
  } else {
    rmsnorm_forward(out, rstd, inp, W(w), N, C, eps);
  }
}

template <typename T>
void Model<T>::add_norm_forward(T* sum, T* out, float* mean, float* rstd, const T* a, const T* b, int64_t w,
                                int64_t bias, int64_t N, int64_t C, const PostNorm* post) const {
  const float eps = static_cast<float>(config.norm_eps);
  BranchNorm<T> branch{};
  if (post) branch = {W(post->w), W(post->b), post->mean, post->rstd};
  if (config.norm == NormKind::LayerNorm) {
    add_layernorm_forward(sum, out, mean, rstd, a, b, W(w), W(bias), N, C, eps, post ? &branch : nullptr);
  } else {
    add_rmsnorm_forward(sum, out, rstd, a, b, W(w), N, C, eps, post ? &branch : nullptr);
  }
}

template <typename T>
void Model<T>::trunk_forward() {
  const GPTConfig& c = config;
  const int64_t N = B_ * Tn_, C = c.n_embd;
  if (c.n_layer == 0) {
    norm_forward(lnf_, lnf_mean_, lnf_rstd_, resid_[0], lnf_w_, lnf_b_, N, C);
    return;
  }
  LayerActs& first = acts_[0];
  norm_forward(first.ln1, first.ln1_mean, first.ln1_rstd, resid_[0], layers_[0].ln1_w, layers_[0].ln1_b, N, C);
  for (int l = 0; l < c.n_layer; ++l) {
    block_forward(l, acts_[static_cast<size_t>(l)], resid_[static_cast<size_t>(l)], resid_[static_cast<size_t>(l) + 1]);
  }
}

template <typename T>
void Model<T>::norm_backward(T* dinp, const T* dout, const T* inp, int64_t w, int64_t b, const float* mean,
                             const float* rstd, int64_t N, int64_t C, bool accumulate) const {
  if (config.norm == NormKind::LayerNorm) {
    layernorm_backward(dinp, G(w), G(b), dout, inp, W(w), mean, rstd, N, C, accumulate, deterministic);
  } else {
    rmsnorm_backward(dinp, G(w), dout, inp, W(w), rstd, N, C, accumulate, deterministic);
  }
}

template <typename T>
void Model<T>::group_tokens(const int* tokens, int64_t N) {
  std::vector<int> rows, starts, ids;
  group_rows_by_token(tokens, N, rows, starts, ids);
  const size_t need = sizeof(int) * (rows.size() + starts.size() + ids.size());
  if (token_runs_buf_.bytes() < need) token_runs_buf_ = DeviceBuffer(need);
  int* base = token_runs_buf_.as<int>();
  copy_to_device(base, rows.data(), rows.size() * sizeof(int));
  copy_to_device(base + rows.size(), starts.data(), starts.size() * sizeof(int));
  copy_to_device(base + rows.size() + starts.size(), ids.data(), ids.size() * sizeof(int));
  token_runs_ = TokenRuns{base, base + rows.size(), base + rows.size() + starts.size(),
                          static_cast<int64_t>(ids.size())};
}

template <typename T>
AttentionMask Model<T>::mask() const {
  AttentionMask m{true, 0};
  if (have_segments_) m.q_segments = m.kv_segments = {segments_, static_cast<size_t>(B_ * Tn_)};
  return m;
}

template <typename T>
void Model<T>::attention_call_forward(const AttentionCall& c, float scale) const {
  if (!uses_flash_kernel(config.attention)) {
    standard_forward_cuda<T>(c.d, c.m, scale, c.q, c.k, c.v, c.out, c.lse, c.ws);
  } else if constexpr (std::is_same_v<T, bf16>) {
    auto u = [](const bf16* p) { return reinterpret_cast<const uint16_t*>(p); };
    if (attention_backend == AttentionBackend::Cudnn) {
      cudnn_attention_forward(TensorCoreType::bf16, c.d, c.m, scale, u(c.q), u(c.k), u(c.v),
                              reinterpret_cast<uint16_t*>(c.out), c.lse);
      return;
    }
    flash_forward_tc(TensorCoreType::bf16, c.d, c.m, scale, u(c.q), u(c.k), u(c.v), reinterpret_cast<uint16_t*>(c.out),
                     c.lse, flash_tiles);
  } else {
    flash_forward_fp32(c.d, c.m, scale, c.q, c.k, c.v, c.out, c.lse);
  }
}

template <typename T>
void Model<T>::attention_call_backward(const AttentionCall& c, float scale, const T* dout, T* dq, T* dk,
                                       T* dv) const {
  if (!uses_flash_kernel(config.attention)) {
    standard_backward_cuda<T>(c.d, c.m, scale, c.q, c.k, c.v, dout, dq, dk, dv, c.ws);
  } else if constexpr (std::is_same_v<T, bf16>) {
    auto u = [](const bf16* p) { return reinterpret_cast<const uint16_t*>(p); };
    auto w = [](bf16* p) { return reinterpret_cast<uint16_t*>(p); };
    if (attention_backend == AttentionBackend::Cudnn) {
      cudnn_attention_backward(TensorCoreType::bf16, c.d, c.m, scale, u(c.q), u(c.k), u(c.v), u(c.out), c.lse,
                               u(dout), w(dq), w(dk), w(dv), deterministic);
      return;
    }
    flash_backward_tc(TensorCoreType::bf16, c.d, c.m, scale, u(c.q), u(c.k), u(c.v), u(c.out), c.lse, u(dout), w(dq),
                      w(dk), w(dv), flash_ws_, flash_tiles, deterministic);
  } else {
    flash_backward_fp32(c.d, c.m, scale, c.q, c.k, c.v, c.out, c.lse, dout, dq, dk, dv);
  }
}

// Chunk j's queries are one batch of Bs sequences of `chunk` rows at global chunk g, causally
// aligned at position g·chunk over the first (g + 1)·chunk of the gathered keys (as the CPU's
// cp_attention_forward); their outputs, lse rows and gradients sit where they would without
// context parallelism, the chunk-major rows making each chunk's a contiguous block.
template <typename T>
typename Model<T>::AttentionCall Model<T>::cp_call(const AttentionDims& d, const LayerActs& a, int j) const {
  const int64_t Bs = B_ / 2, ch = Tn_, Tg = cp->seq_len(), g = cp->global_chunk(j);
  AttentionDims dj{Bs, d.Hq, d.Hkv, ch, (g + 1) * ch, d.Dqk, d.Dv, Tg};
  dj.q_row_stride = d.q_row_stride;  // the keys and values are dense rows of their own
  AttentionMask m{true, g * ch};
  if (have_segments_) {
    m.q_segments = {segments_ + j * Bs * ch, static_cast<size_t>(Bs * ch)};
    m.kv_segments = {cp_kv_segments_, static_cast<size_t>(Bs * Tg)};
  }
  const int64_t rows = j * Bs * ch;  // this chunk's first row
  return {dj,
          m,
          a.qa + rows * d.q_row(),
          a.kg,
          a.vg,
          a.att + rows * d.Hq * d.Dv,
          a.lse + j * Bs * d.Hq * ch,
          a.standard_ws ? a.standard_ws + j * cp_standard_ws_ : nullptr};
}

template <typename T>
void Model<T>::attention_forward(const AttentionDims& d, float scale, LayerActs& a) const {
  if (!cp) {
    attention_call_forward({d, mask(), a.qa, a.ka, a.v, a.att, a.lse, a.standard_ws}, scale);
    return;
  }
  const int64_t Bs = B_ / 2;
  cp->gather(a.ka, d.k_row(), a.kg, Bs, d.Hkv * d.Dqk, cp_stage_);
  cp->gather(a.v, d.v_row(), a.vg, Bs, d.Hkv * d.Dv, cp_stage_);
  cp_attention_calls_forward(d, scale, a);
}

template <typename T>
void Model<T>::cp_attention_calls_forward(const AttentionDims& d, float scale, const LayerActs& a) const {
  for (int j = 0; j < 2; ++j) attention_call_forward(cp_call(d, a, j), scale);
}

template <typename T>
void Model<T>::attention_backward(const AttentionDims& d, float scale, const LayerActs& a) const {
  if (!cp) {
    attention_call_backward({d, mask(), a.qa, a.ka, a.v, a.att, a.lse, a.standard_ws}, scale, datt_, dqa_, dka_, dv_);
    return;
  }
  // The sums over both chunks' queries, then over the group, each rank keeping its own rows' (as
  // the CPU's cp_attention_backward).
  cp_attention_calls_backward(d, scale, a);
  const int64_t Bs = B_ / 2, kw = d.Hkv * d.Dqk, vw = d.Hkv * d.Dv;
  cp->reduce_scatter(cp_acc_, dka_, d.k_row(), Bs, kw, cp_stage_);
  cp->reduce_scatter(cp_acc_ + Bs * cp->seq_len() * kw, dv_, d.v_row(), Bs, vw, cp_stage_);
}

template <typename T>
void Model<T>::cp_attention_calls_backward(const AttentionDims& d, float scale, const LayerActs& a) const {
  // Each chunk's queries give key and value gradients over the keys they see; summed in fp32.
  const int64_t Bs = B_ / 2, ch = Tn_, Tg = cp->seq_len(), kw = d.Hkv * d.Dqk, vw = d.Hkv * d.Dv;
  float* acc_k = cp_acc_;
  float* acc_v = cp_acc_ + Bs * Tg * kw;
  fill_device_bytes(cp_acc_, 0, static_cast<size_t>(Bs * Tg * (kw + vw)) * sizeof(float));
  for (int j = 0; j < 2; ++j) {
    const AttentionCall c = cp_call(d, a, j);
    const int64_t rows = j * Bs * ch;
    attention_call_backward(c, scale, datt_ + rows * d.Hq * d.Dv, dqa_ + rows * d.q_row(), cp_dk_, cp_dv_);
    cp_add_rows(acc_k, cp_dk_, Bs, c.d.Tk, Tg, kw);
    cp_add_rows(acc_v, cp_dv_, Bs, c.d.Tk, Tg, vw);
  }
}

template <typename T>
void Model<T>::mha_forward(const LayerOffsets& o, LayerActs& a) {
  const GPTConfig& c = config;
  const int64_t N = B_ * Tn_, C = c.n_embd, hd = c.head_dim(), Hq = c.n_head, Hkv = c.kv_heads();
  const int64_t qd = c.q_dim(), kvd = c.kv_dim();
  const float eps = static_cast<float>(c.norm_eps);
  const T* w = W(o.qkv_w);
  const T* b = W(o.qkv_b);
  if (fused_qkv()) {
    matmul_forward(a.q, a.ln1, w, b, N, C, qkv_width());  // a.k and a.v are its column blocks
  } else {
    matmul_forward(a.q, a.ln1, w, b, N, C, qd);
    matmul_forward(a.k, a.ln1, w + qd * C, b ? b + qd : nullptr, N, C, kvd);
    matmul_forward(a.v, a.ln1, w + (qd + kvd) * C, b ? b + qd + kvd : nullptr, N, C, kvd);
  }
  if (c.qk_norm) {  // each head of the projected rows to dense rows of its own, rotated: one launch
    RopePositions rope;
    if (c.pos == PosKind::Rope) rope = {rope_cos_.as<float>(), rope_sin_.as<float>(), Tn_, pos0(), seq_pos()};
    qk_norm_rope_forward<T>({a.qa, a.q_rstd, a.q, W(o.q_norm_w), Hq, hd, q_ld(), qa_ld()},
                            {a.ka, a.k_rstd, a.k, W(o.k_norm_w), Hkv, hd, kv_ld(), ka_ld()}, N, eps, rope);
  } else if (c.pos == PosKind::Rope && qk_adjacent()) {  // the q and k heads side by side: one launch
    rope_forward(a.qa, rope_cos_.as<float>(), rope_sin_.as<float>(), B_, Tn_, Hq + Hkv, hd, hd, pos0(), seq_pos(),
                 qa_ld());
  } else if (c.pos == PosKind::Rope) {
    rope_forward(a.qa, rope_cos_.as<float>(), rope_sin_.as<float>(), B_, Tn_, Hq, hd, hd, pos0(), seq_pos(), qa_ld());
    rope_forward(a.ka, rope_cos_.as<float>(), rope_sin_.as<float>(), B_, Tn_, Hkv, hd, hd, pos0(), seq_pos(),
                 ka_ld());
  }
  if (decoding_) {
    mha_decode_attention(a);
    return;
  }
  attention_forward(mha_dims(B_, Tn_, Tn_, 0, true), 1.0f / std::sqrt(static_cast<float>(hd)), a);
}

template <typename T>
void Model<T>::mha_backward(const LayerOffsets& o, const LayerActs& a) {
  const GPTConfig& c = config;
  const int64_t N = B_ * Tn_, C = c.n_embd, hd = c.head_dim(), Hq = c.n_head, Hkv = c.kv_heads();
  const int64_t qd = c.q_dim(), kvd = c.kv_dim();
  // Fused: the attention writes dq, dk and dv into the rows [dq | dk | dv] at dqa_; with QK-norm
  // it writes dv there (at dq_) and the norm's backward dq and dk.
  attention_backward(mha_dims(B_, Tn_, Tn_, 0, true), 1.0f / std::sqrt(static_cast<float>(hd)), a);
  const T* dq = dqa_;
  const T* dk = dka_;
  if (c.qk_norm) {  // RoPE's inverse and both norms' backward, into the q and k blocks: one launch
    RopePositions rope;
    if (c.pos == PosKind::Rope) rope = {rope_cos_.as<float>(), rope_sin_.as<float>(), Tn_, pos0(), seq_pos()};
    qk_norm_rope_backward<T>({dq_, G(o.q_norm_w), dqa_, a.q, W(o.q_norm_w), a.q_rstd, Hq, hd, q_ld(), qa_ld()},
                             {dk_, G(o.k_norm_w), dka_, a.k, W(o.k_norm_w), a.k_rstd, Hkv, hd, kv_ld(), ka_ld()},
                             N, rope, deterministic);
    dq = dq_;
    dk = dk_;
  } else if (c.pos == PosKind::Rope && qk_adjacent()) {  // dq and dk side by side in [dq | dk | dv]
    rope_backward(dqa_, rope_cos_.as<float>(), rope_sin_.as<float>(), B_, Tn_, Hq + Hkv, hd, hd, 0, seq_pos(),
                  qa_ld());
  } else if (c.pos == PosKind::Rope) {
    rope_backward(dqa_, rope_cos_.as<float>(), rope_sin_.as<float>(), B_, Tn_, Hq, hd, hd, 0, seq_pos(), qa_ld());
    rope_backward(dka_, rope_cos_.as<float>(), rope_sin_.as<float>(), B_, Tn_, Hkv, hd, hd, 0, seq_pos(), ka_ld());
  }
  const T* w = W(o.qkv_w);
  float* gw = G(o.qkv_w);
  float* gb = G(o.qkv_b);
  if (fused_qkv()) {  // dq is the rows [dq | dk | dv]
    matmul_backward(dln_, gw, gb, dq, a.ln1, w, N, C, qkv_width(), false);
    return;
  }
  matmul_backward(dln_, gw, gb, dq, a.ln1, w, N, C, qd, false);
  matmul_backward(dln_, gw + qd * C, gb ? gb + qd : nullptr, dk, a.ln1, w + qd * C, N, C, kvd, true);
  matmul_backward(dln_, gw + (qd + kvd) * C, gb ? gb + qd + kvd : nullptr, dv_, a.ln1, w + (qd + kvd) * C, N, C, kvd,
                  true);
}

template <typename T>
void Model<T>::block_forward(int l, LayerActs& a, const T* x, T* out) {
  const GPTConfig& c = config;
  const LayerOffsets& o = layers_[static_cast<size_t>(l)];
  const int64_t N = B_ * Tn_, C = c.n_embd, F = c.hidden();
  if (is_latent(c.attention)) {
    mla_forward(o, a);
  } else {
    mha_forward(o, a);
  }
  matmul_forward(a.proj, a.att, W(o.proj_w), W(o.proj_b), N, c.q_dim(), C);
  // Post-norm normalises each branch on its way into the residual add: in the add's launch.
  const PostNorm post_attn{o.post_attn_w, o.post_attn_b, a.post_attn_mean, a.post_attn_rstd};
  const PostNorm post_mlp{o.post_mlp_w, o.post_mlp_b, a.post_mlp_mean, a.post_mlp_rstd};
  add_norm_forward(a.res_mid, a.ln2, a.ln2_mean, a.ln2_rstd, x, a.proj, o.ln2_w, o.ln2_b, N, C,
                   c.post_norm ? &post_attn : nullptr);
  bool fused = false;
  if constexpr (std::is_same_v<T, bf16>) {
    if (fused_gelu()) {  // a.fc and a.act from one product
      matmul_gelu_forward(a.act, a.fc, a.ln2, W(o.fc_w), W(o.fc_b), N, C, F);
      fused = true;
    }
  }
  if (!fused) {
    matmul_forward(a.fc, a.ln2, W(o.fc_w), W(o.fc_b), N, C, c.fc_out());
    if (c.mlp == MlpKind::Gelu) {
      gelu_forward(a.act, a.fc, N * F);
    } else {
      swiglu_forward(a.act, a.fc, N, F);
    }
  }
  matmul_forward(a.mlp_proj, a.act, W(o.mlp_proj_w), W(o.mlp_proj_b), N, F, C);
  // The block's output, and its norm for what reads it next: the next block, or the classifier.
  const PostNorm* post = c.post_norm ? &post_mlp : nullptr;
  if (l + 1 < c.n_layer) {
    LayerActs& next = acts_[static_cast<size_t>(l) + 1];
    const LayerOffsets& on = layers_[static_cast<size_t>(l) + 1];
    add_norm_forward(out, next.ln1, next.ln1_mean, next.ln1_rstd, a.res_mid, a.mlp_proj, on.ln1_w, on.ln1_b, N, C,
                     post);
  } else {
    add_norm_forward(out, lnf_, lnf_mean_, lnf_rstd_, a.res_mid, a.mlp_proj, lnf_w_, lnf_b_, N, C, post);
  }
}

template <typename T>
void Model<T>::block_backward(int l, const LayerActs& a, const T* x) {
  const GPTConfig& c = config;
  const LayerOffsets& o = layers_[static_cast<size_t>(l)];
  const int64_t N = B_ * Tn_, C = c.n_embd, F = c.hidden(), qd = c.q_dim();
  // MLP branch: dres_ holds the gradient of the block's output.
  const T* dmlp = dres_;
  if (c.post_norm) {
    norm_backward(dbranch_, dres_, a.mlp_proj, o.post_mlp_w, o.post_mlp_b, a.post_mlp_mean, a.post_mlp_rstd, N, C,
                  false);
    dmlp = dbranch_;
  }
  bool fused = false;
  if constexpr (std::is_same_v<T, bf16>) {
    if (fused_gelu()) {  // dfc_ straight from the product
      matmul_backward_dgelu(dfc_, dact_, G(o.mlp_proj_w), G(o.mlp_proj_b), dmlp, a.act, a.fc, W(o.mlp_proj_w), N, F,
                            C);
      fused = true;
    }
  }
  if (!fused) {
    matmul_backward(dact_, G(o.mlp_proj_w), G(o.mlp_proj_b), dmlp, a.act, W(o.mlp_proj_w), N, F, C, false);
    if (c.mlp == MlpKind::Gelu) {
      gelu_backward(dfc_, a.fc, dact_, N * F);
    } else {
      swiglu_backward(dfc_, a.fc, dact_, N, F);
    }
  }
  matmul_backward(dln_, G(o.fc_w), G(o.fc_b), dfc_, a.ln2, W(o.fc_w), N, C, c.fc_out(), false);
  norm_backward(dres_, dln_, a.res_mid, o.ln2_w, o.ln2_b, a.ln2_mean, a.ln2_rstd, N, C, true);
  // Attention branch: dres_ now holds the gradient of x'.
  const T* dattn = dres_;
  if (c.post_norm) {
    norm_backward(dbranch_, dres_, a.proj, o.post_attn_w, o.post_attn_b, a.post_attn_mean, a.post_attn_rstd, N, C,
                  false);
    dattn = dbranch_;
  }
  matmul_backward(datt_, G(o.proj_w), G(o.proj_b), dattn, a.att, W(o.proj_w), N, qd, C, false);
  if (is_latent(c.attention)) {
    mla_backward(o, a);
  } else {
    mha_backward(o, a);
  }
  norm_backward(dres_, dln_, x, o.ln1_w, o.ln1_b, a.ln1_mean, a.ln1_rstd, N, C, true);
}

template <typename T>
void Model<T>::encode(const int* tokens, const int* targets, int64_t B, int64_t Tn, const int32_t* segments) {
  const GPTConfig& c = config;
  FLASHGPT_CHECK(B > 0 && Tn > 0, "forward: batch {} and sequence length {} must be positive", B, Tn);
  FLASHGPT_CHECK(Tn <= c.block_size, "sequence length {} exceeds the model's block_size {}", Tn, c.block_size);
  if (cp) {
    // This rank's rows [B][2][chunk] become chunk-major [2][B][chunk]: the layers run 2·B runs of
    // one chunk each (every op but attention works row by row, so the order is free), and each
    // chunk's queries are one batch for the attention.
    FLASHGPT_CHECK(Tn == cp->local_len(), "context parallel forward: {} rows per sequence, expected {}", Tn,
                   cp->local_len());
    FLASHGPT_CHECK(targets != nullptr, "context parallel forward: needs targets (a rank's logits are not gathered)");
    const int64_t ch = cp->chunk(), n = B * Tn;
    auto chunk_major = [&](const int* from, std::vector<int>& to) {
      to.resize(static_cast<size_t>(n));
      for (int64_t b = 0; b < B; ++b) {
        for (int j = 0; j < 2; ++j) std::copy_n(from + (b * 2 + j) * ch, ch, to.begin() + (j * B + b) * ch);
      }
      return to.data();
    };
    tokens = chunk_major(tokens, cp_tokens_);
    targets = chunk_major(targets, cp_targets_);
    if (segments) {  // the whole sequences' ids, for the keys; a collective over the group
      cp_segments_global_.resize(static_cast<size_t>(B * cp->seq_len()));
      cp->host().gather(segments, cp_segments_global_.data(), B, 1);
      segments = chunk_major(segments, cp_segments_);
    }
    B *= 2;
    Tn = ch;
  }
  targets_host_ = targets;
  const int64_t N = B * Tn, C = c.n_embd, V = c.vocab_size;
  for (int64_t i = 0; i < N; ++i) {
    FLASHGPT_CHECK(tokens[i] >= 0 && tokens[i] < V, "token id {} at index {} is out of range for vocab_size {}",
                   tokens[i], i, V);
    FLASHGPT_CHECK(!targets || (targets[i] >= -1 && targets[i] < V),
                   "target id {} at index {} is out of range for vocab_size {}", targets ? targets[i] : 0, i, V);
  }
  // The backward's mode is fixed by the forward it follows (the token grouping, the workspace).
  if (targets) deterministic = deterministic_next;
  allocate(B, Tn);
  have_forward_ = have_logits_ = false;
  copy_to_device(tokens_, tokens, static_cast<size_t>(N) * sizeof(int));
  if (targets) copy_to_device(targets_, targets, static_cast<size_t>(N) * sizeof(int));
  have_segments_ = segments != nullptr;
  if (segments) copy_to_device(segments_, segments, static_cast<size_t>(N) * sizeof(int32_t));
  if (deterministic && targets) group_tokens(tokens, N);
  if (cp) {  // each run's position, and the keys' document ids
    std::vector<int32_t> pos(static_cast<size_t>(B));
    for (int64_t e = 0; e < B; ++e) {
      pos[static_cast<size_t>(e)] = static_cast<int32_t>(cp->global_chunk(e < B / 2 ? 0 : 1) * Tn);
    }
    copy_to_device(cp_pos_, pos.data(), pos.size() * sizeof(int32_t));
    if (segments) {
      copy_to_device(cp_kv_segments_, cp_segments_global_.data(), cp_segments_global_.size() * sizeof(int32_t));
    }
  }

  embedding_forward(resid_[0], tokens_, W(wte_), W(wpe_), B, Tn, C, 0, seq_pos());
  trunk_forward();
  n_targets_ = targets ? std::count_if(targets, targets + N, [](int t) { return t >= 0; }) : 0;
}

// classifier_rows when set; else the fewest chunks of at most 256 Mi logits (512 MiB in bf16) that
// cover the N rows, evenly sized in whole multiples of 64 rows (d12 at B·T = 16 Ki: four of 4096).
// Each chunk adds its share of the classifier's weight gradient into the fp32 gradient, a read
// and a write of the whole [Vp, C] matrix, so fewer chunks move less.
template <typename T>
int64_t Model<T>::chunk_rows(int64_t N) const {
  if (classifier_rows > 0) return classifier_rows;
  const int64_t most = std::max<int64_t>(64, (int64_t{1} << 28) / config.padded_vocab_size() / 64 * 64);
  const int64_t chunks = std::max<int64_t>(1, (N + most - 1) / most);
  return ((N + chunks - 1) / chunks + 63) / 64 * 64;
}

template <typename T>
void Model<T>::classifier_loss() {
  const GPTConfig& c = config;
  const int64_t N = B_ * Tn_, C = c.n_embd, V = c.vocab_size, Vp = c.padded_vocab_size(), R = chunk_rows(N);
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    matmul_forward(logits_, lnf_ + r0 * C, W(lm_), static_cast<const T*>(nullptr), rows, C, Vp);
    cross_entropy_forward(losses_ + r0, logits_, targets_ + r0, rows, V, Vp);
  }
}

template <typename T>
void Model<T>::classifier_backward(float per_token) {
  const GPTConfig& c = config;
  const int64_t N = B_ * Tn_, C = c.n_embd, V = c.vocab_size, Vp = c.padded_vocab_size(), R = chunk_rows(N);
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    matmul_forward(logits_, lnf_ + r0 * C, W(lm_), static_cast<const T*>(nullptr), rows, C, Vp);
    cross_entropy_fused(logits_, losses_ + r0, targets_ + r0, rows, V, Vp, per_token);  // logits_ → their gradient
    matmul_backward(dln_ + r0 * C, G(lm_), nullptr, logits_, lnf_ + r0 * C, W(lm_), rows, C, Vp, false);
  }
}

template <typename T>
double Model<T>::mean_loss() {
  const int* targets = targets_host_;
  const int64_t N = B_ * Tn_;
  std::vector<float> losses(static_cast<size_t>(N));
  copy_to_host(losses.data(), losses_, losses.size() * sizeof(float));  // waits for the GPU
  double total = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (targets[i] >= 0) total += losses[static_cast<size_t>(i)];
  }
  return n_targets_ > 0 ? total / static_cast<double>(n_targets_) : 0.0;
}

template <typename T>
void Model<T>::trunk_backward() {
  const GPTConfig& c = config;
  const int64_t N = B_ * Tn_, C = c.n_embd;
  norm_backward(dres_, dln_, resid_.back(), lnf_w_, lnf_b_, lnf_mean_, lnf_rstd_, N, C, false);
  for (int l = c.n_layer - 1; l >= 0; --l) {
    block_backward(l, acts_[static_cast<size_t>(l)], resid_[static_cast<size_t>(l)]);
    if (overlap) {  // this block's gradients are final for the step: they travel while the next computes
      const auto [off, count] = block_ranges[static_cast<size_t>(l)];
      start_sum(*overlap, off, count);
      overlapped = true;
    }
  }
  const TokenRuns* runs = deterministic ? &token_runs_ : nullptr;
  if (!cp) {
    embedding_backward(G(wte_), G(wpe_), dres_, tokens_, B_, Tn_, C, 0, runs);
    return;
  }
  embedding_backward(G(wte_), static_cast<float*>(nullptr), dres_, tokens_, B_, Tn_, C, 0, runs);
  if (wpe_ < 0) return;
  const int64_t Bs = B_ / 2;  // each chunk's positions: one call over its Bs runs
  for (int j = 0; j < 2; ++j) {
    const int64_t rows = j * Bs * Tn_;
    embedding_backward(static_cast<float*>(nullptr), G(wpe_), dres_ + rows * C, tokens_ + rows, Bs, Tn_, C,
                       cp->global_chunk(j) * Tn_);
  }
}

template <typename T>
double Model<T>::forward(const int* tokens, const int* targets, int64_t B, int64_t Tn, const int32_t* segments) {
  encode(tokens, targets, B, Tn, segments);
  const GPTConfig& c = config;
  const int64_t N = B * Tn, Vp = c.padded_vocab_size();
  if (!targets) {  // the whole logits, for get_logits
    const size_t bytes = static_cast<size_t>(N * Vp) * sizeof(T);
    if (full_logits_.bytes() != bytes) full_logits_ = DeviceBuffer(bytes);
    matmul_forward(full_logits_.as<T>(), lnf_, W(lm_), static_cast<const T*>(nullptr), N, c.n_embd, Vp);
    synchronize();
    have_logits_ = true;
    return 0.0;
  }
  full_logits_ = DeviceBuffer();  // a training run never holds them
  classifier_loss();
  have_forward_ = true;
  return mean_loss();
}

template <typename T>
void Model<T>::backward(float loss_scale) {
  FLASHGPT_CHECK(have_forward_, "backward: call forward with targets first");
  // The classifier's logits were never kept: computed again, a chunk at a time.
  classifier_backward(n_targets_ > 0 ? loss_scale / static_cast<float>(n_targets_) : 0.0f);
  trunk_backward();
  have_forward_ = false;
  synchronize();
}

template <typename T>
double Model<T>::forward_backward(const int* tokens, const int* targets, int64_t B, int64_t Tn,
                                  const int32_t* segments, float loss_scale) {
  FLASHGPT_CHECK(targets != nullptr, "forward_backward: a training step needs targets");
  encode(tokens, targets, B, Tn, segments);
  full_logits_ = DeviceBuffer();
  classifier_backward(n_targets_ > 0 ? loss_scale / static_cast<float>(n_targets_) : 0.0f);
  trunk_backward();
  return mean_loss();  // waits for the whole step
}

template <typename T>
void Model<T>::get_logits(std::span<float> out) const {
  FLASHGPT_CHECK(have_logits_, "logits: only a forward without targets keeps them (with targets the classifier "
                 "computes them a chunk at a time for the loss)");
  const int64_t n = B_ * Tn_ * config.padded_vocab_size();
  FLASHGPT_CHECK(static_cast<int64_t>(out.size()) == n, "logits: {} values wanted, the last forward has {}",
                 out.size(), n);
  if constexpr (std::is_same_v<T, bf16>) {
    DeviceBuffer wide(static_cast<size_t>(n) * sizeof(float));
    convert(wide.as<float>(), full_logits_.as<const bf16>(), n);
    wide.download(out.data(), out.size_bytes());
  } else {
    copy_to_host(out.data(), full_logits_.as<const float>(), out.size_bytes());
  }
}

template class Model<float>;
template class Model<bf16>;

}  // namespace gpt_detail

using gpt_detail::Model;

GPTCuda::GPTCuda(const GPTConfig& config, Precision precision) {
  config.validate();
  const std::string why = unsupported(config, precision);
  FLASHGPT_CHECK(why.empty(), "--device cuda: {}", why);
  FLASHGPT_CHECK(gpu_available(), "--device cuda: {}", probe_devices().why_none);
  if (precision == Precision::BF16) {
    impl_ = std::make_unique<Model<bf16>>(config, precision);
  } else {
    impl_ = std::make_unique<Model<float>>(config, precision);
  }
}

GPTCuda::~GPTCuda() = default;

const GPTConfig& GPTCuda::config() const { return impl_->config; }
Precision GPTCuda::precision() const { return impl_->precision; }
int64_t GPTCuda::num_params() const { return impl_->P; }

namespace {
void check_count(size_t got, int64_t want, const char* what) {
  FLASHGPT_CHECK(static_cast<int64_t>(got) == want, "{}: {} values given, the model has {} parameters", what, got,
                 want);
}
}  // namespace

void GPTCuda::set_params(std::span<const float> params) {
  check_count(params.size(), impl_->P, "set_params");
  impl_->master.upload(params.data(), params.size_bytes());
  impl_->refresh_weights();
}

void GPTCuda::get_params(std::span<float> params) const {
  check_count(params.size(), impl_->P, "get_params");
  impl_->master.download(params.data(), params.size_bytes());
}

void GPTCuda::set_optimizer_state(std::span<const float> m, std::span<const float> v) {
  const Impl& s = *impl_;
  check_count(m.size(), s.P, "optimizer state m");
  check_count(v.size(), s.P, "optimizer state v");
  // Sharded: this rank's part of the whole state.
  const size_t at = static_cast<size_t>(s.lo), n = static_cast<size_t>(s.zero ? s.hi - s.lo : s.P);
  impl_->adam_m.upload(m.data() + at, n * sizeof(float));
  impl_->adam_v.upload(v.data() + at, n * sizeof(float));
}

void GPTCuda::get_optimizer_state(std::span<float> m, std::span<float> v) const {
  const Impl& s = *impl_;
  const bool receives = !s.zero || s.zero->host().rank() == 0;
  if (receives) {
    check_count(m.size(), s.P, "optimizer state m");
    check_count(v.size(), s.P, "optimizer state v");
  }
  if (!s.zero) {
    s.adam_m.download(m.data(), m.size_bytes());
    s.adam_v.download(v.data(), v.size_bytes());
    return;
  }
  // Sharded: every rank's part, gathered to rank 0 in rank order.
  dist::Communicator& host = s.zero->host();
  std::vector<int64_t> counts;
  for (int k = 0; k < host.size(); ++k) {
    const int64_t lo = std::min(s.P, k * s.shard);
    counts.push_back(std::min(s.P, lo + s.shard) - lo);
  }
  std::vector<float> mine(static_cast<size_t>(s.hi - s.lo));
  for (auto [from, to] : {std::pair{&s.adam_m, m.data()}, std::pair{&s.adam_v, v.data()}}) {
    from->download(mine.data(), mine.size() * sizeof(float));
    host.gather(mine.data(), receives ? to : nullptr, counts, dist::DType::F32, 0);
  }
}

void GPTCuda::shard_optimizer_state(DeviceComm& comm) {
  Impl& s = *impl_;
  FLASHGPT_CHECK(s.zero == nullptr, "ZeRO-1: the optimizer state is already sharded");
  const int64_t ranks = comm.size(), shard = (s.P + ranks - 1) / ranks;
  const int64_t lo = std::min(s.P, comm.rank() * shard), hi = std::min(s.P, lo + shard);
  const size_t bytes = static_cast<size_t>(s.P) * sizeof(float);
  const size_t padded = static_cast<size_t>(ranks * shard) * sizeof(float);
  auto grow = [&](DeviceBuffer& b) {  // ranks·shard values, the padding zero
    DeviceBuffer wide(padded);
    wide.fill_bytes(0);
    copy_on_device(wide.get(), b.get(), bytes);
    b = std::move(wide);
  };
  grow(s.master);
  grow(s.grads);
  auto keep_own = [&](DeviceBuffer& b) {  // this rank's moments only
    DeviceBuffer own(static_cast<size_t>(std::max<int64_t>(1, hi - lo)) * sizeof(float));
    own.fill_bytes(0);
    if (hi > lo) copy_on_device(own.get(), b.as<float>() + lo, static_cast<size_t>(hi - lo) * sizeof(float));
    b = std::move(own);
  };
  keep_own(s.adam_m);
  keep_own(s.adam_v);
  s.zero = &comm;
  s.shard = shard;
  s.lo = lo;
  s.hi = hi;
}

bool GPTCuda::optimizer_state_sharded() const { return impl_->zero != nullptr; }

void GPTCuda::get_grads(std::span<float> grads) const {
  check_count(grads.size(), impl_->P, "get_grads");
  impl_->grads.download(grads.data(), grads.size_bytes());
}

void GPTCuda::zero_grad() { impl_->grads.fill_bytes(0); }

double GPTCuda::forward(const int* tokens, const int* targets, int64_t B, int64_t Tn, const int32_t* segments) {
  return impl_->forward(tokens, targets, B, Tn, segments);
}

void GPTCuda::backward(float loss_scale) { impl_->backward(loss_scale); }

double GPTCuda::forward_backward(const int* tokens, const int* targets, int64_t B, int64_t Tn,
                                 const int32_t* segments, float loss_scale) {
  return impl_->forward_backward(tokens, targets, B, Tn, segments, loss_scale);
}

void GPTCuda::set_deterministic(bool on) { impl_->deterministic_next = on; }

bool GPTCuda::deterministic() const { return impl_->deterministic_next; }

void GPTCuda::set_flash_tiles(FlashTiles tiles) { impl_->flash_tiles = tiles; }

FlashTiles GPTCuda::flash_tiles() const { return impl_->flash_tiles; }

void GPTCuda::set_attention_backend(AttentionBackend backend) {
  if (backend == AttentionBackend::Cudnn) {
    const GPTConfig& c = impl_->config;
    FLASHGPT_CHECK(impl_->precision == Precision::BF16, "attention backend cudnn: a bf16 option (--precision bf16)");
    FLASHGPT_CHECK(uses_flash_kernel(c.attention),
                   "attention backend cudnn: stands in for the flash kernels (attention flash or flash_mla), not {}",
                   to_string(c.attention));
    std::string why;
    FLASHGPT_CHECK(cudnn_attention_available(&why), "attention backend cudnn: {}", why);
    const bool latent = is_latent(c.attention);
    const int64_t dqk = latent ? c.mla_qk_dim() : c.head_dim();
    const AttentionDims d{1, c.n_head, latent ? c.n_head : c.kv_heads(), 1, 1, dqk, c.head_dim(), 0};
    why = cudnn_attention_unsupported(d, AttentionMask{true, 0});
    FLASHGPT_CHECK(why.empty(), "attention backend cudnn: {}", why);
    FLASHGPT_CHECK(impl_->cp == nullptr, "attention backend cudnn: not with context parallelism (--context-parallel)");
  }
  impl_->attention_backend = backend;
}

AttentionBackend GPTCuda::attention_backend() const { return impl_->attention_backend; }

void GPTCuda::set_gelu_fusion(bool on) { impl_->gelu_fusion = on; }

void GPTCuda::set_qkv_fusion(bool on) { impl_->qkv_fusion = on; }

void GPTCuda::set_context_parallel(const DeviceContextParallel* cp) {
  if (cp != nullptr) {
    FLASHGPT_CHECK(cp->seq_len() <= impl_->config.block_size,
                   "--context-parallel: sequence length {} exceeds the model's block_size {}", cp->seq_len(),
                   impl_->config.block_size);
    FLASHGPT_CHECK(impl_->attention_backend != AttentionBackend::Cudnn,
                   "--context-parallel: runs our attention kernels, not cuDNN's (--attention-backend ours)");
  }
  impl_->cp = cp;
}

bool GPTCuda::qkv_fusion() const { return impl_->qkv_fusion; }

bool GPTCuda::gelu_fusion() const { return impl_->gelu_fusion; }

void GPTCuda::set_classifier_rows(int64_t rows) {
  FLASHGPT_CHECK(rows >= 0, "classifier rows: {} must not be negative", rows);
  impl_->classifier_rows = rows;
}

void GPTCuda::get_logits(std::span<float> logits) const { impl_->get_logits(logits); }

double GPTCuda::grad_sum_squares() {
  Impl& s = *impl_;
  DeviceBuffer& sum = s.sum_squares;  // allocated once: this runs every step
  // Sharded: this rank's summed gradients are its shard's; the shards' sums add up over the ranks.
  cuda::sum_squares(sum.as<double>(), s.grads.as<float>() + s.lo, s.zero ? s.hi - s.lo : s.P);
  double out = 0;
  sum.download(&out, sizeof out);
  return s.zero ? s.zero->host().sum(out) : out;
}

double GPTCuda::accumulate_gradients(int64_t accum, DeviceComm* comm, const std::function<MicroBatch()>& next) {
  FLASHGPT_CHECK(accum > 0, "gradient accumulation: {} micro-batches", accum);
  // Scaled by 1/ranks as well: the ranks' gradients are summed, not averaged, after.
  const float scale = 1.0f / static_cast<float>(accum * (comm ? comm->size() : 1));
  zero_grad();
  double loss = 0;
  for (int64_t a = 0; a < accum; ++a) {
    const MicroBatch mb = next();
    // Its blocks' gradients are final: they travel during the backward (not beside context
    // parallelism's own collectives, which would then run on two streams at once).
    if (comm && a + 1 == accum && impl_->cp == nullptr) overlap_next_backward(*comm);
    loss += forward_backward(mb.tokens, mb.targets, mb.B, mb.Tn, mb.segments, scale) / static_cast<double>(accum);
  }
  return loss;
}

void GPTCuda::overlap_next_backward(DeviceComm& comm) {
  Impl& s = *impl_;
  if (s.zero != nullptr) return;  // ZeRO-1 reduce-scatters once the backward is done
  s.overlap = &comm;
  s.overlapped = false;
  if (s.reduce == Precision::BF16) s.grads16_for(s.P);
}

void GPTCuda::set_reduce_precision(Precision p) { impl_->reduce = p; }
Precision GPTCuda::reduce_precision() const { return impl_->reduce; }

void GPTCuda::reduce_grads(DeviceComm& comm) {
  Impl& s = *impl_;
  const bool half = s.reduce == Precision::BF16 && comm.size() > 1;
  float* g = s.grads.as<float>();
  if (s.zero == nullptr) {
    if (s.overlapped) {  // the blocks' sums started during the backward: the rest, then wait for all
      FLASHGPT_CHECK(&comm == s.overlap, "overlapped gradient sums: reduce them over the ranks they started on");
      int64_t at = 0;
      for (const auto& [off, count] : s.block_ranges) {  // ascending, as the layout has them
        if (off > at) s.start_sum(comm, at, off - at);
        at = std::max(at, off + count);
      }
      if (at < s.P) s.start_sum(comm, at, s.P - at);
      comm.finish_sums();
      if (half) convert(g, reinterpret_cast<const bf16*>(s.grads16.as<uint16_t>()), s.P);
    } else if (half) {
      uint16_t* h = s.grads16_for(s.P);
      convert(reinterpret_cast<bf16*>(h), g, s.P);
      comm.allreduce_sum_bf16(h, s.P);
      convert(g, reinterpret_cast<const bf16*>(h), s.P);
    } else {
      comm.allreduce_sum(g, s.P);
    }
    s.overlap = nullptr;
    s.overlapped = false;
    return;
  }
  FLASHGPT_CHECK(&comm == s.zero, "ZeRO-1: the gradients must be reduced over the ranks sharing the optimizer state");
  if (!half) {
    comm.reduce_scatter_sum(g, s.shard);
    return;
  }
  // In bf16: every block rounded, reduce-scattered, and this rank's block widened back.
  const int64_t n = s.shard * comm.size(), own = comm.rank() * s.shard;
  uint16_t* h = s.grads16_for(n);
  convert(reinterpret_cast<bf16*>(h), g, n);
  comm.reduce_scatter_sum_bf16(h, s.shard);
  convert(g + own, reinterpret_cast<const bf16*>(h + own), s.shard);
}

void GPTCuda::adamw_step(const ops::AdamWParams& hp, float grad_scale) {
  Impl& m = *impl_;
  if (m.adamw_runs.count == 0 && !m.specs.empty()) {
    // One run per stretch of consecutive tensors with the same weight decay, all in one launch.
    std::vector<int64_t> ends;
    std::vector<uint8_t> decay;
    for (const ParamSpec& s : m.specs) {
      if (!decay.empty() && static_cast<bool>(decay.back()) == s.decay && ends.back() == s.offset) {
        ends.back() = s.offset + s.numel();
      } else {
        FLASHGPT_CHECK(ends.empty() ? s.offset == 0 : s.offset == ends.back(),
                       "adamw: parameter {} does not follow the one before it", s.name);
        ends.push_back(s.offset + s.numel());
        decay.push_back(s.decay ? 1 : 0);
      }
    }
    m.adamw_ends = DeviceBuffer(ends.size() * sizeof(int64_t));
    m.adamw_ends.upload(ends.data(), ends.size() * sizeof(int64_t));
    m.adamw_decay = DeviceBuffer(decay.size());
    m.adamw_decay.upload(decay.data(), decay.size());
    m.adamw_runs = {0, ends.back(), m.adamw_ends.as<int64_t>(), m.adamw_decay.as<uint8_t>(),
                    static_cast<int>(ends.size())};
  }
  AdamWRuns runs = m.adamw_runs;
  if (m.zero) {  // this rank's shard, then every rank's weights from their owners
    runs.first = runs.moments_first = m.lo;
    runs.last = m.hi;
  }
  if (runs.last > runs.first) {
    adamw_update_runs(m.master.as<float>(), m.grads.as<float>(), m.adam_m.as<float>(), m.adam_v.as<float>(), runs, hp,
                      grad_scale, m.weight_copy());
  }
  if (m.zero) {
    m.zero->allgather(m.master.as<float>(), m.shard);
    m.refresh_weights();
  }
  synchronize();
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
