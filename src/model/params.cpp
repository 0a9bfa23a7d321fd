#include "flashgpt/model/params.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cmath>

#include "flashgpt/core/error.h"

namespace flashgpt {

namespace {

constexpr float kInitStd = 0.02f;

}  // namespace

std::vector<ParamSpec> param_specs(const GPTConfig& c) {
  std::vector<ParamSpec> specs;
  const int64_t C = c.n_embd;
  const int64_t hd = c.head_dim();
  const bool norm_bias = c.norm == NormKind::LayerNorm && c.bias;
  // Residual-stream output projections are scaled down by sqrt(2·L) (GPT-2).
  const float proj_std = kInitStd / std::sqrt(2.0f * static_cast<float>(c.n_layer));

  auto matrix = [&](std::string name, std::vector<int64_t> shape, float std) {
    specs.push_back({std::move(name), std::move(shape), ParamInit::Normal, std, true, 0});
  };
  auto vector = [&](std::string name, int64_t n, ParamInit init) {
    specs.push_back({std::move(name), {n}, init, 0.0f, false, 0});
  };
  auto norm = [&](const std::string& prefix) {
    vector(prefix + ".weight", C, ParamInit::Ones);
    if (norm_bias) vector(prefix + ".bias", C, ParamInit::Zeros);
  };
  auto linear = [&](const std::string& prefix, int64_t out, int64_t in, float std) {
    matrix(prefix + ".weight", {out, in}, std);
    if (c.bias) vector(prefix + ".bias", out, ParamInit::Zeros);
  };

  // Multi-head latent attention (DeepSeek-V2). Up-projections have no bias, so weight absorption
  // stays exact; the latents' RMSNorms carry a gain only.
  auto mla_params = [&](const std::string& b) {
    const int64_t H = c.n_head, nl = c.latent_dim(), dr = c.mla_rope_dim(), dqk = c.mla_qk_dim();
    if (c.q_lora_rank > 0) {
      linear(b + "attn.q_down", c.q_lora_rank, C, kInitStd);
      vector(b + "attn.q_down_norm.weight", c.q_lora_rank, ParamInit::Ones);
      matrix(b + "attn.q_up.weight", {H * dqk, c.q_lora_rank}, kInitStd);
    } else {
      linear(b + "attn.q", H * dqk, C, kInitStd);
    }
    linear(b + "attn.kv_down", nl, C, kInitStd);
    vector(b + "attn.kv_norm.weight", nl, ParamInit::Ones);
    if (dr > 0) linear(b + "attn.k_rope", dr, C, kInitStd);
    matrix(b + "attn.k_up.weight", {H * hd, nl}, kInitStd);
    if (c.use_svd) {  // v_up ≈ v_up_u · v_up_v, rank svd_rank
      matrix(b + "attn.v_up_u.weight", {H * hd, c.svd_rank}, kInitStd);
      matrix(b + "attn.v_up_v.weight", {c.svd_rank, nl}, kInitStd);
    } else {
      matrix(b + "attn.v_up.weight", {H * hd, nl}, kInitStd);
    }
    if (c.qk_norm) {
      vector(b + "attn.q_norm.weight", dqk, ParamInit::Ones);
      if (dr > 0) vector(b + "attn.k_norm.weight", dr, ParamInit::Ones);
    }
  };

  matrix("wte", {c.padded_vocab_size(), C}, kInitStd);
  if (c.pos == PosKind::Learned) matrix("wpe", {c.block_size, C}, kInitStd);
  for (int l = 0; l < c.n_layer; ++l) {
    std::string b = fmt::format("blocks.{}.", l);
    norm(b + "ln1");
    if (is_latent(c.attention)) {
      mla_params(b);
    } else {
      linear(b + "attn.qkv", c.q_dim() + 2 * c.kv_dim(), C, kInitStd);
      if (c.qk_norm) {
        vector(b + "attn.q_norm.weight", hd, ParamInit::Ones);
        vector(b + "attn.k_norm.weight", hd, ParamInit::Ones);
      }
    }
    linear(b + "attn.proj", C, c.q_dim(), proj_std);
    if (c.post_norm) norm(b + "post_attn_norm");
    norm(b + "ln2");
    linear(b + "mlp.fc", c.fc_out(), C, kInitStd);
    linear(b + "mlp.proj", C, c.hidden(), proj_std);
    if (c.post_norm) norm(b + "post_mlp_norm");
  }
  norm("lnf");
  if (!c.tie_embeddings) matrix("lm_head.weight", {c.padded_vocab_size(), C}, kInitStd);

  int64_t offset = 0;
  for (ParamSpec& s : specs) {
    s.offset = offset;
    offset += s.numel();
  }
  return specs;
}

std::pair<int64_t, int64_t> block_param_range(const std::vector<ParamSpec>& specs, int l) {
  const std::string prefix = "blocks." + std::to_string(l) + ".";
  int64_t lo = INT64_MAX, hi = 0;
  for (const ParamSpec& s : specs) {
    if (s.name.starts_with(prefix)) {
      lo = std::min(lo, s.offset);
      hi = std::max(hi, s.offset + s.numel());
    }
  }
  FLASHGPT_CHECK(hi > 0, "block {}: no parameters", l);
  return {lo, hi - lo};
}

}  // namespace flashgpt
