// MultiHeadLatentAttention and FlashMLA: whole-model gradients against finite differences in
// double under every option, absorbed decoding against the expanded computation, cached decoding
// against the full forward, the latent cache's size, the two kernels against each other, the
// truncated SVD, and the config's checks.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>

#include "flashgpt/attention/latent_decode.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/model/gpt.h"
#include "flashgpt/ops/matmul.h"
#include "flashgpt/ops/svd.h"
#include "testing/errors.h"
#include "testing/finite_diff.h"
#include "testing/model_agreement.h"
#include "testing/ragged_decoding.h"

namespace flashgpt {
namespace {

using testing::error_of;

// bit 0 post_norm, 1 qk_norm, 2 rope, 3 q_lora_rank, 4 use_svd, 5 flash kernel, 6 no bias, 7 explicit n_latent
GPTConfig mla_config(int bits) {
  GPTConfig c;
  c.vocab_size = 11;
  c.block_size = 8;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 8;  // head_dim 4: default n_latent 2, default rope_dim 2
  c.norm = NormKind::RMSNorm;
  c.post_norm = bits & 1;
  c.qk_norm = bits & 2;
  c.pos = bits & 4 ? PosKind::Rope : PosKind::Learned;
  c.q_lora_rank = bits & 8 ? 3 : 0;
  c.n_latent = bits & 128 ? 5 : 0;
  c.use_svd = bits & 16;
  c.svd_rank = c.use_svd ? c.latent_dim() - 1 : 0;
  c.attention = bits & 32 ? AttentionKind::FlashMLA : AttentionKind::MLA;
  c.bias = !(bits & 64);
  return c;
}

std::string mla_name(int bits) {
  const GPTConfig c = mla_config(bits);
  return fmt::format("{}_{}{}_{}{}{}_latent{}_{}", to_string(c.attention), c.post_norm ? "post" : "pre",
                     c.qk_norm ? "_qknorm" : "", to_string(c.pos), c.q_lora_rank ? "_qlora" : "",
                     c.use_svd ? "_svd" : "", c.latent_dim(), c.bias ? "bias" : "nobias");
}

class MlaGradients : public ::testing::TestWithParam<int> {};

TEST_P(MlaGradients, MatchFiniteDifferences) {
  const int bits = GetParam();
  GPT<double> model(mla_config(bits));
  model.set_attention_tiling({2, 3});
  Rng rng(500 + static_cast<uint64_t>(bits));
  for (double& p : model.params()) p = rng.normal() * 0.5;
  const int64_t B = 2, Tn = 5;
  std::vector<int> tokens(B * Tn), targets(B * Tn);
  for (auto& t : tokens) t = static_cast<int>(rng.next_u64() % 11);
  for (auto& t : targets) t = static_cast<int>(rng.next_u64() % 11);
  std::vector<int32_t> segments = {0, 0, 1, 1, 1, 0, 1, 1, 2, 2};
  const int32_t* seg = bits & 1 ? segments.data() : nullptr;  // document masking on half the cases
  model.zero_grad();
  model.forward(tokens.data(), targets.data(), B, Tn, seg);
  model.backward(1.0);
  std::vector<double> analytic(model.grads().begin(), model.grads().end());
  auto loss = [&] { return model.forward(tokens.data(), targets.data(), B, Tn, seg); };
  int checked_attention = 0;
  for (const ParamSpec& s : model.specs()) {
    int64_t n = s.numel();
    if (s.name == "wte" || s.name == "lm_head.weight") n = 11 * 8;
    if (s.name.find(".attn.") != std::string::npos) ++checked_attention;
    testing::expect_gradient_matches(s.name, model.params().data() + s.offset, analytic.data() + s.offset,
                                     static_cast<size_t>(n), loss, 6, 1e-6);
  }
  EXPECT_GE(checked_attention, 2 * 5);  // q, kv_down, kv_norm, k_up, v_up (or factors), proj per layer
}

INSTANTIATE_TEST_SUITE_P(AllOptions, MlaGradients, ::testing::Range(0, 256),
                         [](const auto& p) { return mla_name(p.param); });

TEST(Mla, ParametersFollowTheConfig) {
  GPTConfig c = mla_config(2 | 4 | 8);  // qk_norm, rope, q_lora
  GPT<float> m(c);
  const int64_t H = 2, hd = 4, nl = 2, dr = 2, dqk = 6, C = 8, r = 3;
  EXPECT_EQ(m.spec("blocks.0.attn.q_down.weight").shape, (std::vector<int64_t>{r, C}));
  EXPECT_EQ(m.spec("blocks.0.attn.q_up.weight").shape, (std::vector<int64_t>{H * dqk, r}));
  EXPECT_EQ(m.spec("blocks.0.attn.kv_down.weight").shape, (std::vector<int64_t>{nl, C}));
  EXPECT_EQ(m.spec("blocks.0.attn.k_rope.weight").shape, (std::vector<int64_t>{dr, C}));
  EXPECT_EQ(m.spec("blocks.0.attn.k_up.weight").shape, (std::vector<int64_t>{H * hd, nl}));
  EXPECT_EQ(m.spec("blocks.0.attn.v_up.weight").shape, (std::vector<int64_t>{H * hd, nl}));
  EXPECT_EQ(m.spec("blocks.0.attn.q_norm.weight").shape, (std::vector<int64_t>{dqk}));
  EXPECT_EQ(m.spec("blocks.0.attn.k_norm.weight").shape, (std::vector<int64_t>{dr}));
  EXPECT_EQ(m.spec("blocks.0.attn.proj.weight").shape, (std::vector<int64_t>{C, H * hd}));
  EXPECT_NE(error_of([&] { m.spec("blocks.0.attn.qkv.weight"); }).find("qkv"), std::string::npos);
}

// A model in double with weights large enough that every path matters.
GPT<double> random_model(const GPTConfig& c, uint64_t seed) {
  GPT<double> m(c);
  m.init_weights(seed);
  Rng rng(seed + 1);
  for (double& p : m.params()) p += rng.normal() * 0.2;
  return m;
}

class MlaDecoding : public ::testing::TestWithParam<int> {};

// Cached decoding (prefill, then one token at a time) equals the full forward, absorbed and
// expanded alike; the cache holds exactly [c_kv, k_rope] per token and layer.
TEST_P(MlaDecoding, AbsorbedAndExpandedEqualTheFullForward) {
  GPTConfig c = mla_config(GetParam());
  c.block_size = 16;
  c.vocab_size = 37;
  GPT<double> model = random_model(c, 21);
  const int64_t B = 2, Tn = 11, Vp = c.padded_vocab_size();
  std::vector<int> tokens(B * Tn);
  Rng rng(4);
  for (auto& t : tokens) t = static_cast<int>(rng.next_u64() % 37);
  model.forward(tokens.data(), nullptr, B, Tn);
  std::vector<double> full(model.logits(), model.logits() + B * Tn * Vp);
  double max_abs = 0;
  for (double v : full) max_abs = std::max(max_abs, std::abs(v));

  for (MlaDecode mode : {MlaDecode::Absorbed, MlaDecode::Expanded}) {
    SCOPED_TRACE(mode == MlaDecode::Absorbed ? "absorbed" : "expanded");
    model.set_mla_decode(mode);
    KVCache<double> cache = model.make_cache(B, 16);
    EXPECT_TRUE(cache.k.empty() && cache.v.empty());
    EXPECT_EQ(cache.latent_row, c.latent_dim() + c.mla_rope_dim());
    EXPECT_EQ(cache.bytes() / static_cast<int64_t>(sizeof(double)) * static_cast<int64_t>(sizeof(float)),
              attention_stats(c).kv_cache_bytes_per_token * 16 * B);
    const int64_t prefill = 4;
    std::vector<int> chunk(B * prefill);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < prefill; ++t) chunk[b * prefill + t] = tokens[b * Tn + t];
    std::vector<double> out(B * prefill * Vp);
    model.forward_cached(cache, chunk.data(), B, prefill, out.data(), true);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < prefill; ++t)
        for (int64_t j = 0; j < Vp; ++j)
          ASSERT_NEAR(out[(b * prefill + t) * Vp + j], full[(b * Tn + t) * Vp + j], 1e-11 * max_abs);
    for (int64_t t = prefill; t < Tn; ++t) {
      int next[2] = {tokens[t], tokens[Tn + t]};
      model.forward_cached(cache, next, B, 1, out.data());
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < Vp; ++j)
          ASSERT_NEAR(out[b * Vp + j], full[(b * Tn + t) * Vp + j], 1e-11 * max_abs) << "t=" << t;
    }
  }
}

// Sequences of different lengths in one latent cache, absorbed and expanded: each sequence's
// logits are its own full forward's.
TEST_P(MlaDecoding, RaggedBatchesEqualEachSequencesFullForward) {
  GPTConfig c = mla_config(GetParam());
  c.block_size = 16;
  c.vocab_size = 37;
  GPT<double> model = random_model(c, 21);
  for (MlaDecode mode : {MlaDecode::Absorbed, MlaDecode::Expanded}) {
    SCOPED_TRACE(mode == MlaDecode::Absorbed ? "absorbed" : "expanded");
    model.set_mla_decode(mode);
    KVCache<double> cache = model.make_cache(3, 16);
    testing::expect_ragged_decoding_equals_full_forward(model, testing::ragged_schedule(),
                                                        testing::cached_step(model, cache), 1e-6);
    EXPECT_EQ(cache.lengths, (std::vector<int64_t>{12, 12, 12}));
  }
}

INSTANTIATE_TEST_SUITE_P(Options, MlaDecoding, ::testing::Values(0, 2, 4, 6, 4 | 8, 4 | 16, 4 | 32, 2 | 4 | 32 | 128, 1 | 2 | 4 | 8 | 16 | 32),
                         [](const auto& p) { return mla_name(p.param); });

// The absorbed attention itself (latent_attention_decode): one query against a latent cache, at
// DeepSeek-like proportions scaled down, equals attention over the expanded keys and values.
TEST(Mla, AbsorbedAttentionEqualsExpandedAttention) {
  const int64_t H = 4, hd = 16, nl = 24, dr = 8, Tk = 37, dqk = hd + dr, row = nl + dr;
  Rng rng(9);
  auto rnd = [&](int64_t n) { return testing::random_vector(static_cast<size_t>(n), rng); };
  std::vector<double> cache = rnd(Tk * row), q = rnd(H * dqk), w_uk = rnd(H * hd * nl), w_uv = rnd(H * hd * nl);
  const double scale = 1.0 / std::sqrt(static_cast<double>(dqk));
  for (AttentionKernel kernel : {AttentionKernel::Standard, AttentionKernel::Flash}) {
    // Expanded: per-head keys [c·W_ukᵀ, k_rope] and values c·W_uvᵀ.
    std::vector<double> keys(Tk * H * dqk), values(Tk * H * hd), o_exp(H * hd), lse_exp(H);
    for (int64_t h = 0; h < H; ++h) {
      ops::gemm<double>(false, true, Tk, hd, nl, 1.0, cache.data(), row, w_uk.data() + h * hd * nl, nl, 0.0,
                        keys.data() + h * dqk, H * dqk);
      for (int64_t t = 0; t < Tk; ++t)
        std::copy(cache.begin() + t * row + nl, cache.begin() + (t + 1) * row, keys.begin() + (t * H + h) * dqk + hd);
    }
    ops::gemm<double>(false, true, Tk, H * hd, nl, 1.0, cache.data(), row, w_uv.data(), nl, 0.0, values.data(), H * hd);
    attention_forward(kernel, AttentionDims{1, H, H, 1, Tk, dqk, hd}, AttentionMask{true, Tk - 1}, scale, q.data(),
                      keys.data(), values.data(), o_exp.data(), lse_exp.data());
    // Absorbed: the decode function, MQA over the cache rows.
    std::vector<double> q_abs(H * row, -7.0), o_lat(H * nl, -7.0), lse_abs(H, -7.0), o_abs(H * hd, -7.0);
    LatentDecodeDims d;
    d.H = H;
    d.Tq = 1;
    d.Tk = Tk;
    d.head_dim = hd;
    d.n_latent = nl;
    d.rope_dim = dr;
    latent_attention_decode(kernel, d, q.data(), w_uk.data(), w_uv.data(), cache.data(), q_abs.data(), o_lat.data(),
                            lse_abs.data(), o_abs.data());
    for (int64_t h = 0; h < H; ++h) EXPECT_NEAR(lse_abs[h], lse_exp[h], 1e-12 * std::abs(lse_exp[h]));
    for (int64_t i = 0; i < H * hd; ++i) EXPECT_NEAR(o_abs[i], o_exp[i], 1e-12) << to_string(kernel) << " " << i;
  }
}

// mla and flash_mla share parameters and agree in fp32 within 1e-5, loss and gradients.
TEST(Mla, FlashMlaEqualsMla) {
  GPTConfig c = mla_config(1 | 2 | 4 | 8);
  c.block_size = 64;
  c.vocab_size = 37;
  c.n_embd = 32;
  c.n_head = 4;
  GPT<float> mla(c);
  c.attention = AttentionKind::FlashMLA;
  GPT<float> flash(c);
  mla.init_weights(5);
  flash.set_attention_tiling({16, 16});
  std::vector<int> tokens(2 * 50), targets(2 * 50);
  for (int i = 0; i < 100; ++i) {
    tokens[i] = (i * 13) % 37;
    targets[i] = (i * 7 + 3) % 37;
  }
  testing::expect_models_agree(mla, flash, tokens, targets, 2, 50);
}

TEST(Mla, StatsCountTheLatentCache) {
  const GPTConfig d12 = GPTConfig::preset("d12_flash_mla");
  EXPECT_EQ(d12.attention, AttentionKind::FlashMLA);
  EXPECT_TRUE(d12.post_norm && d12.qk_norm);
  EXPECT_EQ(d12.n_layer, 12);
  const AttentionStats s = attention_stats(d12);
  // n_latent = 64/2 = 32, learned positions: no rope part; 32 floats per token per layer.
  EXPECT_EQ(s.kv_cache_floats_per_token_layer, 32);
  EXPECT_EQ(s.kv_cache_bytes_per_token, 32 * 12 * 4);
  EXPECT_EQ(s.mha_kv_cache_bytes_per_token, 2 * 768 * 12 * 4);
  EXPECT_DOUBLE_EQ(s.cache_compression(), 48.0);
  // Per layer: q 768·768 + 768, kv_down 32·768 + 32, kv_norm 32, k_up and v_up 768·32, q_norm 64,
  // proj 768·768 + 768 (no k_norm: there is no rope key to norm).
  const int64_t per_layer = (768 * 768 + 768) + (32 * 768 + 32) + 32 + 2 * 768 * 32 + 64 + (768 * 768 + 768);
  EXPECT_EQ(s.params, 12 * per_layer);
  EXPECT_EQ(s.mha_params, 12 * ((3 * 768 * 768 + 3 * 768) + 2 * 64 + (768 * 768 + 768)));
  const AttentionStats mha = attention_stats(GPTConfig::preset("d12"));
  EXPECT_EQ(mha.params, mha.mha_params);
  EXPECT_EQ(mha.kv_cache_bytes_per_token, 2 * 768 * 12 * 4);
  GPTConfig gqa = GPTConfig::preset("d12");
  gqa.n_kv_head = 4;
  EXPECT_EQ(attention_stats(gqa).kv_cache_bytes_per_token, 2 * 4 * 64 * 12 * 4);
}

TEST(Mla, InvalidConfigsNameTheField) {
  auto expect_field = [](GPTConfig c, const char* field) {
    const std::string e = error_of([&] { c.validate(); });
    EXPECT_NE(e.find(std::string("'") + field + "'"), std::string::npos) << e;
  };
  GPTConfig c = mla_config(4);
  c.n_head = 2;
  c.n_kv_head = 1;
  expect_field(c, "n_kv_head");  // latent attention has no grouped heads
  c = mla_config(4);
  c.rope_dim = 3;
  expect_field(c, "rope_dim");
  c = mla_config(0);
  c.rope_dim = 2;  // learned positions: no decoupled RoPE
  expect_field(c, "rope_dim");
  c = mla_config(16);
  c.svd_rank = 3;  // more than n_latent 2
  expect_field(c, "svd_rank");
  c = mla_config(0);
  c.svd_rank = 1;  // without use_svd
  expect_field(c, "svd_rank");
  c = mla_config(0);
  c.n_latent = -1;
  expect_field(c, "n_latent");
  c = mla_config(0);
  c.attention = AttentionKind::Standard;
  c.n_latent = 4;
  expect_field(c, "n_latent");
  c = mla_config(0);
  c.attention = AttentionKind::Flash;
  c.use_svd = true;
  expect_field(c, "use_svd");
}

TEST(Mla, SeedSwitchesSelectTheMechanism) {
  GPTConfig c;
  c.update_from_json({{"use_flash_mla", true}}, "t");
  EXPECT_EQ(c.attention, AttentionKind::FlashMLA);
  c.update_from_json({{"use_latent_attention", false}}, "t");
  EXPECT_EQ(c.attention, AttentionKind::Flash);
  c.update_from_json({{"use_latent_attention", true}, {"use_flash_attention", false}}, "t");
  EXPECT_EQ(c.attention, AttentionKind::MLA);
  c.update_from_json({{"attention", "flash_mla"}, {"n_latent", 48}, {"q_lora_rank", 96}}, "t");
  EXPECT_EQ(c.attention, AttentionKind::FlashMLA);
  EXPECT_EQ(c.latent_dim(), 48);
  GPTConfig d;
  d.update_from_json(c.to_json(), "round trip");
  EXPECT_EQ(c, d);
  EXPECT_NE(error_of([&] { d.update_from_json({{"attention", "linear"}}, "t"); }).find("flash_mla"), std::string::npos);
}

TEST(Svd, TruncationIsTheBestLowRankApproximation) {
  const int64_t M = 12, N = 7;
  Rng rng(2);
  std::vector<double> a = testing::random_vector(M * N, rng);
  for (int64_t rank : {1, 3, 7}) {
    std::vector<double> left(M * rank), right(rank * N), approx(M * N);
    const std::vector<double> s = ops::truncated_svd(a.data(), M, N, rank, left.data(), right.data());
    ASSERT_EQ(static_cast<int64_t>(s.size()), N);
    ops::gemm<double>(false, false, M, N, rank, 1.0, left.data(), rank, right.data(), N, 0.0, approx.data(), N);
    double err2 = 0, tail2 = 0;
    for (int64_t i = 0; i < M * N; ++i) err2 += (a[i] - approx[i]) * (a[i] - approx[i]);
    for (int64_t j = rank; j < N; ++j) tail2 += s[j] * s[j];
    // Eckart–Young: the Frobenius error is exactly the energy of the dropped singular values.
    EXPECT_NEAR(err2, tail2, 1e-10 * (1 + tail2)) << "rank " << rank;
    for (int64_t j = 1; j < N; ++j) EXPECT_GE(s[j - 1], s[j]);
  }
  std::vector<double> l(M), r(N);
  EXPECT_NE(error_of([&] { ops::truncated_svd(a.data(), M, N, 8, l.data(), r.data()); }).find("rank 8"),
            std::string::npos);
}

}  // namespace
}  // namespace flashgpt
