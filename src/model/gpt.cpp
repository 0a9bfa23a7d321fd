#include "flashgpt/model/gpt.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "flashgpt/core/error.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/dist/context_parallel.h"
#include "flashgpt/ops/activation.h"
#include "flashgpt/ops/cross_entropy.h"
#include "flashgpt/ops/elementwise.h"
#include "flashgpt/ops/embedding.h"
#include "flashgpt/ops/matmul.h"
#include "flashgpt/ops/norm.h"
#include "flashgpt/ops/svd.h"

namespace flashgpt {

template <typename T>
GPT<T>::GPT(const GPTConfig& config) : config_(config) {
  config_.validate();
  specs_ = param_specs(config_);
  int64_t total = specs_.empty() ? 0 : specs_.back().offset + specs_.back().numel();
  params_.assign(static_cast<size_t>(total), T(0));
  grads_.assign(static_cast<size_t>(total), T(0));
  // Each block's tensors are looked up by name once, here.
  for (int l = 0; l < config_.n_layer; ++l) {
    const std::string prefix = "blocks." + std::to_string(l) + ".";
    std::vector<int64_t>& offsets = layer_param_offsets_.emplace_back();
    for (const LayerField& f : layer_fields()) {
      const std::string name = prefix + f.second;
      auto it = std::find_if(specs_.begin(), specs_.end(), [&](const ParamSpec& s) { return s.name == name; });
      offsets.push_back(it == specs_.end() ? -1 : it->offset);
    }
    block_ranges_.push_back(flashgpt::block_param_range(specs_, l));
  }
  if (config_.pos == PosKind::Rope) {
    // Multi-head attention rotates whole heads; latent attention only its decoupled rope part.
    const int width = is_latent(config_.attention) ? config_.mla_rope_dim() : config_.head_dim();
    rope_ = ops::RopeTable<T>(config_.block_size, width, config_.rope_theta);
  }
}

template <typename T>
const ParamSpec& GPT<T>::spec(const std::string& name) const {
  for (const ParamSpec& s : specs_) {
    if (s.name == name) return s;
  }
  fail("model has no parameter '{}'", name);
}

template <typename T>
void GPT<T>::set_context_parallel(const dist::ContextParallel* cp) {
  FLASHGPT_CHECK(cp == nullptr || cp->seq_len() <= config_.block_size,
                 "--context-parallel: sequence length {} exceeds the model's block_size {}", cp ? cp->seq_len() : 0,
                 config_.block_size);
  cp_ = cp;
}

template <typename T>
std::span<const typename GPT<T>::LayerField> GPT<T>::layer_fields() {
  // Names, not positions, tie the code to params.h; a tensor the config lacks stays null.
  static const LayerField fields[] = {
      {&LayerParams::ln1_w, "ln1.weight"},
      {&LayerParams::ln1_b, "ln1.bias"},
      {&LayerParams::qkv_w, "attn.qkv.weight"},
      {&LayerParams::qkv_b, "attn.qkv.bias"},
      {&LayerParams::q_norm_w, "attn.q_norm.weight"},
      {&LayerParams::k_norm_w, "attn.k_norm.weight"},
      {&LayerParams::proj_w, "attn.proj.weight"},
      {&LayerParams::proj_b, "attn.proj.bias"},
      {&LayerParams::post_attn_w, "post_attn_norm.weight"},
      {&LayerParams::post_attn_b, "post_attn_norm.bias"},
      {&LayerParams::ln2_w, "ln2.weight"},
      {&LayerParams::ln2_b, "ln2.bias"},
      {&LayerParams::fc_w, "mlp.fc.weight"},
      {&LayerParams::fc_b, "mlp.fc.bias"},
      {&LayerParams::mlp_proj_w, "mlp.proj.weight"},
      {&LayerParams::mlp_proj_b, "mlp.proj.bias"},
      {&LayerParams::post_mlp_w, "post_mlp_norm.weight"},
      {&LayerParams::post_mlp_b, "post_mlp_norm.bias"},
      {&LayerParams::q_w, "attn.q.weight"},
      {&LayerParams::q_b, "attn.q.bias"},
      {&LayerParams::q_down_w, "attn.q_down.weight"},
      {&LayerParams::q_down_b, "attn.q_down.bias"},
      {&LayerParams::q_down_norm_w, "attn.q_down_norm.weight"},
      {&LayerParams::q_up_w, "attn.q_up.weight"},
      {&LayerParams::kv_down_w, "attn.kv_down.weight"},
      {&LayerParams::kv_down_b, "attn.kv_down.bias"},
      {&LayerParams::kv_norm_w, "attn.kv_norm.weight"},
      {&LayerParams::k_rope_w, "attn.k_rope.weight"},
      {&LayerParams::k_rope_b, "attn.k_rope.bias"},
      {&LayerParams::k_up_w, "attn.k_up.weight"},
      {&LayerParams::v_up_w, "attn.v_up.weight"},
      {&LayerParams::v_up_u_w, "attn.v_up_u.weight"},
      {&LayerParams::v_up_v_w, "attn.v_up_v.weight"}};
  return fields;
}

template <typename T>
typename GPT<T>::LayerParams GPT<T>::layer_params(const T* base, int l) const {
  LayerParams p;
  const std::vector<int64_t>& offsets = layer_param_offsets_[static_cast<size_t>(l)];
  const auto fields = layer_fields();
  for (size_t i = 0; i < fields.size(); ++i) p.*(fields[i].first) = offsets[i] < 0 ? nullptr : base + offsets[i];
  return p;
}

template <typename T>
void GPT<T>::init_weights(uint64_t seed) {
  Rng rng(seed);
  for (const ParamSpec& s : specs_) {
    T* p = params_.data() + s.offset;
    const int64_t n = s.numel();
    switch (s.init) {
      case ParamInit::Zeros: std::fill(p, p + n, T(0)); break;
      case ParamInit::Ones: std::fill(p, p + n, T(1)); break;
      case ParamInit::Normal:
        for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(rng.normal() * s.init_std);
        break;
    }
  }
  // Padding rows of the vocabulary stay zero: never sampled, never trained.
  const int64_t C = config_.n_embd, V = config_.vocab_size, Vp = config_.padded_vocab_size();
  for (const char* name : {"wte", "lm_head.weight"}) {
    for (const ParamSpec& s : specs_) {
      if (s.name == name) std::fill(params_.data() + s.offset + V * C, params_.data() + s.offset + Vp * C, T(0));
    }
  }
  if (config_.use_svd) {
    // A factored value up-projection starts as the best rank-r approximation (truncated SVD) of a
    // full matrix drawn like every other weight.
    const int64_t rows = static_cast<int64_t>(config_.n_head) * config_.head_dim(), cols = config_.latent_dim();
    std::vector<T> full(static_cast<size_t>(rows * cols));
    for (int l = 0; l < config_.n_layer; ++l) {
      const ParamSpec& u = spec(fmt::format("blocks.{}.attn.v_up_u.weight", l));
      for (T& x : full) x = static_cast<T>(rng.normal() * u.init_std);
      ops::truncated_svd(full.data(), rows, cols, config_.svd_rank, params_.data() + u.offset,
                         param(fmt::format("blocks.{}.attn.v_up_v.weight", l)));
    }
  }
}

template <typename T>
void GPT<T>::zero_grad() {
  grads_.assign(params_.size(), T(0));
}

template <typename T>
AttentionKernel GPT<T>::attention_kernel() const {
  return uses_flash_kernel(config_.attention) ? AttentionKernel::Flash : AttentionKernel::Standard;
}

namespace {

// Widths of the attention buffers, which depend on the mechanism (see LayerActs).
struct AttnWidths {
  int64_t q, k, ka, v, q_rows_per_token, k_rows_per_token;  // q_rows / k_rows: norm statistics per token
  int64_t cq, ckv, kr, v_up, q_abs, o_lat;
};

AttnWidths attn_widths(const GPTConfig& c) {
  AttnWidths w{};
  const int64_t H = c.n_head, hd = c.head_dim();
  if (is_latent(c.attention)) {
    const int64_t nl = c.latent_dim(), dr = c.mla_rope_dim(), dqk = c.mla_qk_dim();
    w.q = H * dqk;
    w.k = dr;
    w.ka = H * dqk;
    w.v = H * hd;
    w.q_rows_per_token = H;
    w.k_rows_per_token = 1;
    w.cq = c.q_lora_rank;
    w.ckv = nl;
    w.kr = dr;
    w.v_up = c.use_svd ? H * hd * nl : 0;
    w.q_abs = H * (nl + dr);
    w.o_lat = H * nl;
  } else {
    w.q = c.q_dim();
    w.k = w.ka = w.v = c.kv_dim();
    w.q_rows_per_token = H;
    w.k_rows_per_token = c.kv_heads();
  }
  return w;
}

}  // namespace

template <typename T>
void GPT<T>::allocate(Activations& a, int64_t B, int64_t Tn, bool per_layer, int64_t logit_rows) {
  if (a.B == B && a.Tn == Tn && a.per_layer == per_layer && !a.storage.empty()) return;
  const GPTConfig& c = config_;
  const int64_t N = B * Tn, C = c.n_embd, qd = c.q_dim(), Hq = c.n_head, Vp = c.padded_vocab_size();
  const AttnWidths w = attn_widths(c);
  const int64_t n_sets = per_layer ? c.n_layer : 1;
  // Buffers are laid out twice: once to count, once to hand out pointers.
  std::vector<std::pair<T**, int64_t>> plan;
  a.layers.assign(static_cast<size_t>(c.n_layer), LayerActs{});
  for (int64_t s = 0; s < n_sets; ++s) {
    LayerActs& L = a.layers[static_cast<size_t>(s)];
    plan.insert(plan.end(), {{&L.ln1, N * C}, {&L.ln1_mean, N}, {&L.ln1_rstd, N}, {&L.q, N * w.q}, {&L.k, N * w.k},
                             {&L.v, N * w.v}, {&L.q_rstd, N * w.q_rows_per_token},
                             {&L.k_rstd, N * w.k_rows_per_token}, {&L.qa, N * w.q}, {&L.ka, N * w.ka},
                             {&L.att, N * qd}, {&L.lse, B * Hq * Tn}, {&L.cq_pre, N * w.cq}, {&L.cq, N * w.cq},
                             {&L.cq_rstd, w.cq > 0 ? N : 0}, {&L.ckv_pre, N * w.ckv}, {&L.ckv, N * w.ckv},
                             {&L.ckv_rstd, w.ckv > 0 ? N : 0}, {&L.kr, N * w.kr}, {&L.v_up, w.v_up},
                             // absorbed decoding buffers exist only in the inference set
                             {&L.q_abs, per_layer ? 0 : N * w.q_abs}, {&L.o_lat, per_layer ? 0 : N * w.o_lat},
                             {&L.proj, N * C}, {&L.post_attn_mean, N}, {&L.post_attn_rstd, N}, {&L.res_mid, N * C},
                             {&L.ln2, N * C}, {&L.ln2_mean, N}, {&L.ln2_rstd, N}, {&L.fc, N * c.fc_out()},
                             {&L.act, N * c.hidden()}, {&L.mlp_proj, N * C}, {&L.post_mlp_mean, N},
                             {&L.post_mlp_rstd, N}});
  }
  a.resid.assign(static_cast<size_t>(c.n_layer + 1), nullptr);
  for (auto& r : a.resid) plan.push_back({&r, N * C});
  plan.insert(plan.end(), {{&a.lnf, N * C}, {&a.branch, N * C}, {&a.lnf_mean, N}, {&a.lnf_rstd, N},
                           {&a.losses, N}, {&a.logits, logit_rows * Vp}});
  int64_t total = 0;
  for (const auto& [ptr, n] : plan) total += n;
  a.storage.assign(static_cast<size_t>(total), T(0));
  T* cursor = a.storage.data();
  for (const auto& [ptr, n] : plan) {
    *ptr = n > 0 ? cursor : nullptr;
    cursor += n;
  }
  for (size_t l = static_cast<size_t>(n_sets); l < a.layers.size(); ++l) a.layers[l] = a.layers[0];
  a.B = B;
  a.Tn = Tn;
  a.per_layer = per_layer;
}

template <typename T>
void GPT<T>::allocate_scratch(int64_t N) {
  const GPTConfig& c = config_;
  const int64_t C = c.n_embd, qd = c.q_dim();
  const AttnWidths w = attn_widths(c);
  Scratch& s = scratch_;
  const std::vector<std::pair<T**, int64_t>> plan = {
      {&s.dres, N * C},       {&s.dln, N * C},       {&s.dbranch, N * C}, {&s.dfc, N * c.fc_out()},
      {&s.dact, N * c.hidden()}, {&s.datt, N * qd},  {&s.dqa, N * w.q},   {&s.dq, N * w.q},
      {&s.dka, N * w.ka},     {&s.dk, N * w.k},      {&s.dv, N * w.v},    {&s.dkr, N * w.kr},
      {&s.dckv, N * w.ckv},   {&s.dckv_pre, N * w.ckv}, {&s.dcq, N * w.cq}, {&s.dcq_pre, N * w.cq},
      {&s.dv_up, w.v_up}};
  int64_t total = 0;
  for (const auto& [ptr, n] : plan) total += n;
  if (static_cast<int64_t>(s.storage.size()) != total) s.storage.assign(static_cast<size_t>(total), T(0));
  T* cursor = s.storage.data();
  for (const auto& [ptr, n] : plan) {
    *ptr = n > 0 ? cursor : nullptr;
    cursor += n;
  }
}

template <typename T>
void GPT<T>::check_tokens(const int* tokens, int64_t n, const char* what) const {
  for (int64_t i = 0; i < n; ++i) {
    FLASHGPT_CHECK(tokens[i] >= 0 && tokens[i] < config_.vocab_size,
                   "{} id {} at index {} is out of range for vocab_size {}", what, tokens[i], i, config_.vocab_size);
  }
}

template <typename T>
void GPT<T>::block_forward(int l, LayerActs& a, const T* x, T* out, T* branch, int64_t B, int64_t Tn,
                           KVCache<T>* cache, const int32_t* segments) {
  const GPTConfig& c = config_;
  const LayerParams P = layer_params(params_.data(), l);
  const int64_t N = B * Tn, C = c.n_embd, qd = c.q_dim();
  const T eps = static_cast<T>(c.norm_eps);

  ops::norm_forward(c.norm, a.ln1, a.ln1_mean, a.ln1_rstd, x, P.ln1_w, P.ln1_b, N, C, eps);
  if (is_latent(c.attention)) {
    mla_forward(l, P, a, B, Tn, cache, segments);
  } else {
    mha_forward(l, P, a, B, Tn, cache, segments);
  }

  ops::matmul_forward(a.proj, a.att, P.proj_w, P.proj_b, N, qd, C);
  const T* attn_out = a.proj;
  if (c.post_norm) {
    ops::norm_forward(c.norm, branch, a.post_attn_mean, a.post_attn_rstd, a.proj, P.post_attn_w, P.post_attn_b, N, C,
                      eps);
    attn_out = branch;
  }
  ops::add(a.res_mid, x, attn_out, N * C);

  ops::norm_forward(c.norm, a.ln2, a.ln2_mean, a.ln2_rstd, a.res_mid, P.ln2_w, P.ln2_b, N, C, eps);
  ops::matmul_forward(a.fc, a.ln2, P.fc_w, P.fc_b, N, C, c.fc_out());
  if (c.mlp == MlpKind::Gelu) {
    ops::gelu_forward(a.act, a.fc, N * c.hidden());
  } else {
    ops::swiglu_forward(a.act, a.fc, N, c.hidden());
  }
  ops::matmul_forward(a.mlp_proj, a.act, P.mlp_proj_w, P.mlp_proj_b, N, c.hidden(), C);
  const T* mlp_out = a.mlp_proj;
  if (c.post_norm) {
    ops::norm_forward(c.norm, branch, a.post_mlp_mean, a.post_mlp_rstd, a.mlp_proj, P.post_mlp_w, P.post_mlp_b, N, C,
                      eps);
    mlp_out = branch;
  }
  ops::add(out, a.res_mid, mlp_out, N * C);
}

template <typename T>
double GPT<T>::forward(const int* tokens, const int* targets, int64_t B, int64_t Tn, const int32_t* segments) {
  const GPTConfig& c = config_;
  FLASHGPT_CHECK(B > 0 && Tn > 0, "forward: batch {} and sequence length {} must be positive", B, Tn);
  FLASHGPT_CHECK(Tn <= c.block_size, "sequence length {} exceeds the model's block_size {}", Tn, c.block_size);
  const int64_t N = B * Tn, C = c.n_embd, V = c.vocab_size, Vp = c.padded_vocab_size();
  check_tokens(tokens, N, "token");
  allocate(train_, B, Tn, /*per_layer=*/true, N);
  Activations& a = train_;
  a.tokens.assign(tokens, tokens + N);
  if (targets) {
    for (int64_t i = 0; i < N; ++i) {
      FLASHGPT_CHECK(targets[i] >= -1 && targets[i] < V, "target id {} at index {} is out of range for vocab_size {}",
                     targets[i], i, V);
    }
    a.targets.assign(targets, targets + N);
  } else {
    a.targets.clear();
  }
  if (segments) {
    segments_.assign(segments, segments + N);
  } else {
    segments_.clear();
  }
  const int32_t* seg = segments_.empty() ? nullptr : segments_.data();

  const T* wte = params_.data() + spec("wte").offset;
  const T* wpe = c.pos == PosKind::Learned ? params_.data() + spec("wpe").offset : nullptr;
  if (cp_) {
    FLASHGPT_CHECK(Tn == cp_->local_len(), "context parallel forward: {} rows per sequence, expected {}", Tn,
                   cp_->local_len());
    if (seg) {
      cp_segments_.resize(static_cast<size_t>(B * cp_->seq_len()));
      cp_->gather(seg, cp_segments_.data(), B, 1);
    }
    const int64_t ch = cp_->chunk();
    for (int64_t b = 0; b < B; ++b) {
      for (int j = 0; j < 2; ++j) {
        const int64_t row = b * Tn + j * ch;
        ops::embedding_forward(a.resid[0] + row * C, tokens + row, wte, wpe, 1, ch, C, cp_->global_chunk(j) * ch);
      }
    }
  } else {
    ops::embedding_forward(a.resid[0], tokens, wte, wpe, B, Tn, C, 0);
  }
  for (int l = 0; l < c.n_layer; ++l) {
    block_forward(l, a.layers[static_cast<size_t>(l)], a.resid[static_cast<size_t>(l)],
                  a.resid[static_cast<size_t>(l) + 1], a.branch, B, Tn, nullptr, seg);
  }
  const T* lnf_w = params_.data() + spec("lnf.weight").offset;
  const T* lnf_b = c.norm == NormKind::LayerNorm && c.bias ? params_.data() + spec("lnf.bias").offset : nullptr;
  ops::norm_forward(c.norm, a.lnf, a.lnf_mean, a.lnf_rstd, a.resid.back(), lnf_w, lnf_b, N, C,
                    static_cast<T>(c.norm_eps));
  const T* w_lm = params_.data() + spec(c.tie_embeddings ? "wte" : "lm_head.weight").offset;
  ops::matmul_forward(a.logits, a.lnf, w_lm, static_cast<const T*>(nullptr), N, C, Vp);
  have_forward_ = targets != nullptr;
  if (!targets) return 0.0;
  a.n_targets = std::count_if(targets, targets + N, [](int t) { return t >= 0; });
  return ops::softmax_cross_entropy_forward(a.logits, a.losses, targets, N, V, Vp);
}

template <typename T>
void GPT<T>::block_backward(int l, LayerActs& a, const T* x, int64_t B, int64_t Tn, const int32_t* segments) {
  const GPTConfig& c = config_;
  const LayerParams P = layer_params(params_.data(), l);
  const LayerParams G = layer_params(grads_.data(), l);
  auto g = [](const T* p) { return const_cast<T*>(p); };
  const int64_t N = B * Tn, C = c.n_embd, qd = c.q_dim(), F = c.hidden();
  Scratch& s = scratch_;

  // MLP branch: s.dres holds the gradient of the block output.
  const T* dmlp = s.dres;
  if (c.post_norm) {
    ops::norm_backward(c.norm, s.dbranch, g(G.post_mlp_w), g(G.post_mlp_b), s.dres, a.mlp_proj, P.post_mlp_w,
                       a.post_mlp_mean, a.post_mlp_rstd, N, C, false);
    dmlp = s.dbranch;
  }
  ops::matmul_backward(s.dact, g(G.mlp_proj_w), g(G.mlp_proj_b), dmlp, a.act, P.mlp_proj_w, N, F, C, false);
  if (c.mlp == MlpKind::Gelu) {
    ops::gelu_backward(s.dfc, a.fc, s.dact, N * F);
  } else {
    ops::swiglu_backward(s.dfc, a.fc, s.dact, N, F);
  }
  ops::matmul_backward(s.dln, g(G.fc_w), g(G.fc_b), s.dfc, a.ln2, P.fc_w, N, C, c.fc_out(), false);
  ops::norm_backward(c.norm, s.dres, g(G.ln2_w), g(G.ln2_b), s.dln, a.res_mid, P.ln2_w, a.ln2_mean, a.ln2_rstd, N, C,
                     true);

  // Attention branch: s.dres now holds the gradient of x'.
  const T* dattn = s.dres;
  if (c.post_norm) {
    ops::norm_backward(c.norm, s.dbranch, g(G.post_attn_w), g(G.post_attn_b), s.dres, a.proj, P.post_attn_w,
                       a.post_attn_mean, a.post_attn_rstd, N, C, false);
    dattn = s.dbranch;
  }
  ops::matmul_backward(s.datt, g(G.proj_w), g(G.proj_b), dattn, a.att, P.proj_w, N, qd, C, false);
  if (is_latent(c.attention)) {
    mla_backward(l, P, G, a, B, Tn, segments);
  } else {
    mha_backward(l, P, G, a, B, Tn, segments);
  }
  ops::norm_backward(c.norm, s.dres, g(G.ln1_w), g(G.ln1_b), s.dln, x, P.ln1_w, a.ln1_mean, a.ln1_rstd, N, C, true);
}

template <typename T>
void GPT<T>::backward(T loss_scale) {
  FLASHGPT_CHECK(have_forward_, "backward: call forward with targets first");
  if (grads_.empty()) grads_.assign(params_.size(), T(0));  // released: accumulate from zero
  const GPTConfig& c = config_;
  Activations& a = train_;
  const int64_t B = a.B, Tn = a.Tn, N = B * Tn, C = c.n_embd, V = c.vocab_size, Vp = c.padded_vocab_size();
  allocate_scratch(N);
  const T per_token = a.n_targets > 0 ? loss_scale / static_cast<T>(a.n_targets) : T(0);
  ops::softmax_cross_entropy_backward(a.logits, a.targets.data(), N, V, Vp, per_token);

  const std::string lm = c.tie_embeddings ? "wte" : "lm_head.weight";
  ops::matmul_backward(scratch_.dln, grad(lm), static_cast<T*>(nullptr), a.logits, a.lnf, param(lm), N, C, Vp, false);
  const bool lnf_bias = c.norm == NormKind::LayerNorm && c.bias;
  ops::norm_backward(c.norm, scratch_.dres, grad("lnf.weight"), lnf_bias ? grad("lnf.bias") : nullptr, scratch_.dln,
                     a.resid.back(), param("lnf.weight"), a.lnf_mean, a.lnf_rstd, N, C, false);
  for (int l = c.n_layer - 1; l >= 0; --l) {
    block_backward(l, a.layers[static_cast<size_t>(l)], a.resid[static_cast<size_t>(l)], B, Tn,
                   segments_.empty() ? nullptr : segments_.data());
    if (grads_ready_) grads_ready_(block_ranges_[static_cast<size_t>(l)].first, block_ranges_[static_cast<size_t>(l)].second);
  }
  T* dwpe = c.pos == PosKind::Learned ? grad("wpe") : nullptr;
  if (cp_) {
    const int64_t ch = cp_->chunk();
    for (int64_t b = 0; b < B; ++b) {
      for (int j = 0; j < 2; ++j) {
        const int64_t row = b * Tn + j * ch;
        ops::embedding_backward(grad("wte"), dwpe, scratch_.dres + row * C, a.tokens.data() + row, 1, ch, C,
                                cp_->global_chunk(j) * ch);
      }
    }
  } else {
    ops::embedding_backward(grad("wte"), dwpe, scratch_.dres, a.tokens.data(), B, Tn, C);
  }
  have_forward_ = false;  // the logits buffer now holds gradients
}

template <typename T>
KVCache<T> make_kv_cache(const GPTConfig& config, int64_t B, int64_t capacity) {
  FLASHGPT_CHECK(B > 0, "KV cache: batch {} must be positive", B);
  FLASHGPT_CHECK(capacity > 0 && capacity <= config.block_size,
                 "KV cache: capacity {} must be between 1 and the model's block_size {}", capacity, config.block_size);
  KVCache<T> cache;
  cache.B = B;
  cache.capacity = capacity;
  cache.lengths.assign(static_cast<size_t>(B), 0);
  if (is_latent(config.attention)) {
    cache.latent_row = config.latent_dim() + config.mla_rope_dim();
    cache.latent.assign(static_cast<size_t>(config.n_layer) * B * capacity * cache.latent_row, T(0));
    return cache;
  }
  const size_t n = static_cast<size_t>(config.n_layer) * B * capacity * config.kv_dim();
  cache.k.assign(n, T(0));
  cache.v.assign(n, T(0));
  return cache;
}
template KVCache<float> make_kv_cache<float>(const GPTConfig&, int64_t, int64_t);
template KVCache<double> make_kv_cache<double>(const GPTConfig&, int64_t, int64_t);

template <typename T>
KVCache<T> GPT<T>::make_cache(int64_t B, int64_t capacity) const {
  return make_kv_cache<T>(config_, B, capacity);
}

template <typename T>
int64_t KVCache<T>::length() const {
  for (int64_t n : lengths) {
    FLASHGPT_CHECK(n == lengths.front(), "KV cache: its sequences hold different lengths ({} and {})", lengths.front(),
                   n);
  }
  return lengths.empty() ? 0 : lengths.front();
}
template <typename T>
void KVCache<T>::restart(int64_t b) {
  FLASHGPT_CHECK(b >= 0 && b < B, "KV cache: no sequence {} in a cache of {}", b, B);
  lengths[static_cast<size_t>(b)] = 0;
}
template struct KVCache<float>;
template struct KVCache<double>;

template <typename T>
std::vector<typename GPT<T>::CachedRun> GPT<T>::cached_runs(const KVCache<T>& cache) const {
  const int64_t B = cache.B;
  if (!step_packed_) return {{0, B, cache.lengths[0], 0, step_tn_}};
  std::vector<CachedRun> runs;
  int64_t first = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = step_counts_[static_cast<size_t>(b)];
    if (n == 0) continue;
    runs.push_back({b, 1, cache.lengths[static_cast<size_t>(b)], first, n});
    first += n;
  }
  return runs;
}

template <typename T>
void GPT<T>::forward_cached(KVCache<T>& cache, const int* tokens, int64_t B, int64_t Tn, T* logits_out,
                            bool all_positions, std::span<const int32_t> counts) {
  const GPTConfig& c = config_;
  FLASHGPT_CHECK(B == cache.B, "decode: batch {} does not match the KV cache's batch {}", B, cache.B);
  FLASHGPT_CHECK(Tn > 0, "decode: no tokens given");
  FLASHGPT_CHECK(counts.empty() || static_cast<int64_t>(counts.size()) == B,
                 "decode: {} token counts given for {} sequences", counts.size(), B);
  step_counts_.assign(static_cast<size_t>(B), static_cast<int32_t>(Tn));
  for (int64_t b = 0; b < B && !counts.empty(); ++b) {
    const int32_t n = counts[static_cast<size_t>(b)];
    FLASHGPT_CHECK(n >= 0 && n <= Tn, "decode: sequence {} reads {} tokens, outside 0…{}", b, n, Tn);
    step_counts_[static_cast<size_t>(b)] = n;
  }
  for (int64_t b = 0; b < B; ++b) {
    const int64_t len = cache.lengths[static_cast<size_t>(b)] + step_counts_[static_cast<size_t>(b)];
    FLASHGPT_CHECK(len <= cache.capacity,
                   "sequence length {} exceeds the KV cache capacity {} (the model's block_size is {})", len,
                   cache.capacity, c.block_size);
  }
  const int64_t C = c.n_embd, Vp = c.padded_vocab_size();
  check_tokens(tokens, B * Tn, "token");
  // Every sequence reading its whole row at one length: one batch [B, Tn]. Otherwise only the
  // tokens read go through the layers, the sequences' rows packed one after another ([1, N]).
  bool together = true;
  int64_t N = 0;
  for (int64_t b = 0; b < B; ++b) {
    together = together && step_counts_[static_cast<size_t>(b)] == Tn &&
               cache.lengths[static_cast<size_t>(b)] == cache.lengths[0];
    N += step_counts_[static_cast<size_t>(b)];
  }
  step_tn_ = Tn;
  step_packed_ = !together;
  if (N == 0) {  // nothing to read
    std::fill_n(logits_out, (all_positions ? B * Tn : B) * Vp, T(0));
    return;
  }
  // Decoding runs whole sequences on this process alone, context parallelism or not.
  struct ContextParallelOff {
    const dist::ContextParallel*& slot;
    const dist::ContextParallel* saved;
    ~ContextParallelOff() { slot = saved; }
  } cp_off{cp_, cp_};
  cp_ = nullptr;
  // Packed, the activations hold N rows, and at least B for the gather of each sequence's last.
  const int64_t logit_rows = all_positions ? N : B;
  if (together) {
    allocate(infer_, B, Tn, /*per_layer=*/false, logit_rows);
  } else {
    allocate(infer_, 1, std::max(N, B), /*per_layer=*/false, logit_rows);
  }
  Activations& a = infer_;
  const T* wpe = c.pos == PosKind::Learned ? param("wpe") : nullptr;
  const std::vector<CachedRun> runs = cached_runs(cache);
  for (const CachedRun& r : runs) {
    const int* from = tokens + r.b0 * Tn;
    if (r.nb == 1) {
      ops::embedding_forward(a.resid[0] + r.first * C, from, param("wte"), wpe, 1, r.rows, C, r.pos);
    } else {
      ops::embedding_forward(a.resid[0] + r.first * C, from, param("wte"), wpe, r.nb, Tn, C, r.pos);
    }
  }
  const int64_t lb = together ? B : 1, lt = together ? Tn : N;  // the layers' view of the rows
  for (int l = 0; l < c.n_layer; ++l) {
    // Layers share one activation set in inference; streams alternate between two buffers.
    block_forward(l, a.layers[0], a.resid[static_cast<size_t>(l % 2)], a.resid[static_cast<size_t>((l + 1) % 2)],
                  a.branch, lb, lt, &cache, nullptr);
  }
  const T* x = a.resid[static_cast<size_t>(c.n_layer % 2)];
  const bool lnf_bias = c.norm == NormKind::LayerNorm && c.bias;
  const T* lm = param(c.tie_embeddings ? "wte" : "lm_head.weight");
  const auto classify = [&](T* out, const T* rows, int64_t n_rows) {
    ops::norm_forward(c.norm, a.lnf, a.lnf_mean, a.lnf_rstd, rows, param("lnf.weight"),
                      lnf_bias ? param("lnf.bias") : nullptr, n_rows, C, static_cast<T>(c.norm_eps));
    ops::matmul_forward(out, a.lnf, lm, static_cast<const T*>(nullptr), n_rows, C, Vp);
  };
  if (all_positions && together) {
    classify(logits_out, x, B * Tn);
  } else if (all_positions) {  // every position read, back at [b, t]; padded positions zero
    std::vector<T> packed(static_cast<size_t>(N * Vp));
    classify(packed.data(), x, N);
    std::fill_n(logits_out, B * Tn * Vp, T(0));
    for (const CachedRun& r : runs) {
      std::copy_n(packed.data() + r.first * Vp, r.rows * Vp, logits_out + r.b0 * Tn * Vp);
    }
  } else {  // only each sequence's last new token needs logits
    std::fill_n(a.branch, B * C, T(0));
    for (const CachedRun& r : runs) {
      for (int64_t b = 0; b < r.nb; ++b) {
        const T* last = x + (r.first + (b + 1) * r.rows - 1) * C;
        std::copy_n(last, C, a.branch + (r.b0 + b) * C);
      }
    }
    classify(logits_out, a.branch, B);
    for (int64_t b = 0; b < B; ++b) {
      if (step_counts_[static_cast<size_t>(b)] == 0) std::fill_n(logits_out + b * Vp, Vp, T(0));
    }
  }
  for (int64_t b = 0; b < B; ++b) cache.lengths[static_cast<size_t>(b)] += step_counts_[static_cast<size_t>(b)];
}

template class GPT<float>;
template class GPT<double>;

}  // namespace flashgpt
