// The model: configs and presets, cached decoding against the full forward, and learning.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "flashgpt/core/error.h"
#include "testing/errors.h"
#include "testing/model_agreement.h"
#include "testing/ragged_decoding.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/data/dataloader.h"
#include "flashgpt/model/gpt.h"
#include "flashgpt/ops/adamw.h"

namespace flashgpt {
namespace {

using testing::error_of;

TEST(Config, PresetsHaveGpt2Sizes) {
  // llm.c reports 124,475,904 parameters for GPT-2 124M with the vocabulary padded to 50304.
  EXPECT_EQ(model_stats(GPTConfig::preset("d12")).n_params, 124475904);
  EXPECT_EQ(GPTConfig::preset("d12").padded_vocab_size(), 50304);
  EXPECT_EQ(GPTConfig::preset("d24").n_embd, 1024);
  EXPECT_EQ(GPTConfig::preset("d48").n_layer, 48);
  EXPECT_TRUE(GPTConfig::preset("d12_post_norm").post_norm);
  EXPECT_FALSE(GPTConfig::preset("d12_post_norm").qk_norm);
  EXPECT_TRUE(GPTConfig::preset("d12_post_norm_qk_norm").qk_norm);
  for (const auto& name : GPTConfig::preset_names()) EXPECT_NO_THROW(GPTConfig::preset(name).validate()) << name;
}

TEST(Config, InvalidCombinationsNameTheField) {
  GPTConfig c = GPTConfig::preset("tiny");
  c.n_head = 3;
  EXPECT_NE(error_of([&] { c.validate(); }).find("'n_head'"), std::string::npos);
  c = GPTConfig::preset("tiny");
  c.n_kv_head = 3;
  c.n_head = 4;
  EXPECT_NE(error_of([&] { c.validate(); }).find("'n_kv_head'"), std::string::npos);
  c = GPTConfig::preset("tiny");
  c.n_embd = 6;
  c.n_head = 2;  // head dim 3: odd, no RoPE
  c.pos = PosKind::Rope;
  EXPECT_NE(error_of([&] { c.validate(); }).find("'pos'"), std::string::npos);
  EXPECT_NE(error_of([] { GPTConfig::preset("d13"); }).find("d13"), std::string::npos);
  GPTConfig j;
  EXPECT_NE(error_of([&] { j.update_from_json({{"n_layers", 3}}, "my.json"); }).find("unknown config field 'n_layers'"),
            std::string::npos);
  EXPECT_NE(error_of([&] { j.update_from_json({{"norm", "batchnorm"}}, "my.json"); }).find("batchnorm"),
            std::string::npos);
  EXPECT_NE(error_of([&] { j.update_from_json({{"n_layer", "six"}}, "my.json"); }).find("my.json"),
            std::string::npos);
}

TEST(Config, JsonRoundTrip) {
  GPTConfig c = GPTConfig::preset("d12_post_norm_qk_norm");
  c.pos = PosKind::Rope;
  c.mlp = MlpKind::SwiGLU;
  c.n_kv_head = 4;
  GPTConfig d;
  d.update_from_json(c.to_json(), "round trip");
  EXPECT_EQ(c, d);
}

GPTConfig small_config(PosKind pos, int kv_heads, bool qk_norm) {
  GPTConfig c = GPTConfig::preset("tiny");
  c.vocab_size = 37;
  c.block_size = 16;
  c.n_head = 4;
  c.n_kv_head = kv_heads;
  c.pos = pos;
  c.qk_norm = qk_norm;
  c.post_norm = qk_norm;
  return c;
}

class CachedDecode : public ::testing::TestWithParam<std::tuple<PosKind, int, bool, bool>> {
 protected:
  // The parameters' small model (positions, key/value heads, QK-norm, flash or standard kernel).
  static GPT<float> make_model() {
    auto [pos, kv, qkn, flash] = GetParam();
    GPTConfig config = small_config(pos, kv, qkn);
    config.attention = flash ? AttentionKind::Flash : AttentionKind::Standard;
    GPT<float> model(config);
    model.init_weights(7);
    return model;
  }
};

TEST_P(CachedDecode, EqualsFullForward) {
  GPT<float> model = make_model();
  const int64_t B = 2, Tn = 12, Vp = model.config().padded_vocab_size();
  std::vector<int> tokens(B * Tn);
  Rng rng(3);
  for (auto& t : tokens) t = static_cast<int>(rng.next_u64() % 37);
  model.forward(tokens.data(), nullptr, B, Tn);
  std::vector<float> full(model.logits(), model.logits() + B * Tn * Vp);

  // Prefill 5 tokens, then one at a time.
  KVCache<float> cache = model.make_cache(B, 16);
  const int64_t prefill = 5;
  std::vector<float> step_logits(B * prefill * Vp);
  std::vector<int> chunk(B * prefill);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < prefill; ++t) chunk[b * prefill + t] = tokens[b * Tn + t];
  model.forward_cached(cache, chunk.data(), B, prefill, step_logits.data(), true);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < prefill; ++t)
      for (int64_t j = 0; j < Vp; ++j)
        ASSERT_NEAR(step_logits[(b * prefill + t) * Vp + j], full[(b * Tn + t) * Vp + j], 1e-5);
  for (int64_t t = prefill; t < Tn; ++t) {
    int next[2] = {tokens[t], tokens[Tn + t]};
    std::vector<float> last(B * Vp);
    model.forward_cached(cache, next, B, 1, last.data());
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < Vp; ++j) ASSERT_NEAR(last[b * Vp + j], full[(b * Tn + t) * Vp + j], 1e-5) << "t=" << t;
  }
  EXPECT_EQ(cache.length(), Tn);
  // KV-cache bytes: 2 · layers · kv_heads · head_dim · 4 per token.
  EXPECT_EQ(cache.bytes(), model_stats(model.config()).kv_cache_bytes_per_token * 16 * B);
}

INSTANTIATE_TEST_SUITE_P(Mechanisms, CachedDecode,
                         ::testing::Combine(::testing::Values(PosKind::Learned, PosKind::Rope),
                                            ::testing::Values(0, 2, 1), ::testing::Bool(), ::testing::Bool()));

// Sequences of different lengths share the cache: each reads its own tokens at its own positions
// (right-padded prefill, a sequence sitting out a step, steps of several tokens while the lengths
// differ), and its logits are its own full forward's.
TEST_P(CachedDecode, RaggedBatchesEqualEachSequencesFullForward) {
  GPT<float> model = make_model();
  KVCache<float> cache = model.make_cache(3, 16);
  testing::expect_ragged_decoding_equals_full_forward(model, testing::ragged_schedule(),
                                                      testing::cached_step(model, cache), 1e-5);
  EXPECT_EQ(cache.lengths, (std::vector<int64_t>{12, 12, 12}));
  // A sequence must have room for the tokens it reads; the padding of its row needs none.
  std::vector<int> tokens(3 * 9, 1);
  std::vector<float> logits(3 * model.config().padded_vocab_size());
  const std::vector<int32_t> too_long = {5, 0, 0};  // the first: 12 cached + 5 > 16
  EXPECT_THROW(model.forward_cached(cache, tokens.data(), 3, 9, logits.data(), false, too_long), Error);
  const std::vector<int32_t> too_many = {0, 10, 0};
  EXPECT_THROW(model.forward_cached(cache, tokens.data(), 3, 9, logits.data(), false, too_many), Error);
  const std::vector<int32_t> two = {1, 1};
  EXPECT_THROW(model.forward_cached(cache, tokens.data(), 3, 1, logits.data(), false, two), Error);
  EXPECT_EQ(cache.lengths, (std::vector<int64_t>{12, 12, 12}));
  const std::vector<int32_t> counts = {0, 1, 4};  // 12 cached + 9 > 16, but they read 1 and 4
  model.forward_cached(cache, tokens.data(), 3, 9, logits.data(), false, counts);
  EXPECT_EQ(cache.lengths, (std::vector<int64_t>{12, 13, 16}));
  EXPECT_THROW(cache.length(), Error);
}

// A ragged step asking for every position's logits: each read position's are its own full
// forward's, at [b, t] as if unpadded; a padded position's, and a sequence's that reads nothing,
// are zero.
TEST_P(CachedDecode, RaggedStepGivesEveryReadPositionsLogits) {
  GPT<float> model = make_model();
  const int64_t B = 3, Tn = 4, Vp = model.config().padded_vocab_size();
  std::vector<int> tokens(B * 8);
  Rng rng(5);
  for (auto& t : tokens) t = static_cast<int>(rng.next_u64() % 37);
  model.forward(tokens.data(), nullptr, B, 8);
  const std::vector<float> full(model.logits(), model.logits() + B * 8 * Vp);
  KVCache<float> cache = model.make_cache(B, 16);
  // Step 1: sequence 0 reads 4, 1 reads 2, 2 none. Step 2: 0 reads 1, 1 reads 3, 2 reads 4.
  const std::vector<std::vector<int32_t>> steps = {{4, 2, 0}, {1, 3, 4}};
  std::vector<int64_t> done(B, 0);
  for (const std::vector<int32_t>& counts : steps) {
    std::vector<int> chunk(B * Tn, 0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < counts[b]; ++t) chunk[b * Tn + t] = tokens[b * 8 + done[b] + t];
    std::vector<float> logits(B * Tn * Vp, 7.0f);
    model.forward_cached(cache, chunk.data(), B, Tn, logits.data(), true, counts);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < Tn; ++t) {
        for (int64_t j = 0; j < Vp; ++j) {
          const float want = t < counts[b] ? full[(b * 8 + done[b] + t) * Vp + j] : 0.0f;
          ASSERT_NEAR(logits[(b * Tn + t) * Vp + j], want, 1e-5) << "sequence " << b << ", position " << t;
        }
      }
      done[b] += counts[b];
    }
  }
  EXPECT_EQ(cache.lengths, (std::vector<int64_t>{5, 5, 4}));
}

TEST(Model, FlashAttentionModelEqualsStandard) {
  GPTConfig c = small_config(PosKind::Rope, 2, true);
  c.block_size = 64;
  GPT<float> standard(c);
  c.attention = AttentionKind::Flash;
  GPT<float> flash(c);
  standard.init_weights(11);
  std::vector<int> tokens(2 * 50), targets(2 * 50);
  for (int i = 0; i < 100; ++i) {
    tokens[i] = (i * 13) % 37;
    targets[i] = (i * 5 + 1) % 37;
  }
  testing::expect_models_agree(standard, flash, tokens, targets, 2, 50);
}

// A model that only holds weights can drop its gradients; backward brings them back, the same.
TEST(Model, ReleasedGradientsComeBackFromZero) {
  const GPTConfig c = small_config(PosKind::Learned, 0, false);
  GPT<float> a(c), b(c);
  a.init_weights(4);
  b.init_weights(4);
  std::vector<int> x = {1, 2, 3, 4, 5, 6}, y = {2, 3, 4, 5, 6, 7};
  b.release_gradients();
  EXPECT_TRUE(b.grads().empty());
  a.zero_grad();
  for (GPT<float>* m : {&a, &b}) {
    m->forward(x.data(), y.data(), 1, 6);
    m->backward();
  }
  ASSERT_EQ(b.grads().size(), a.grads().size());
  EXPECT_TRUE(std::equal(a.grads().begin(), a.grads().end(), b.grads().begin()));
  EXPECT_TRUE(std::any_of(b.grads().begin(), b.grads().end(), [](float g) { return g != 0.0f; }));
  b.release_gradients();
  b.zero_grad();
  EXPECT_EQ(b.grads().size(), a.grads().size());
}

TEST(Model, DocumentMaskingKeepsDocumentsApart) {
  for (AttentionKind kind : {AttentionKind::Standard, AttentionKind::Flash}) {
    GPTConfig c = small_config(PosKind::Rope, 0, false);
    c.attention = kind;
    GPT<float> model(c);
    model.init_weights(2);
    const int64_t T = 12, Vp = c.padded_vocab_size();
    std::vector<int> a = {5, 6, 7, 8, 9, 0, 11, 12, 13, 14, 15, 16};  // token 0 opens document 2 at t = 5
    std::vector<int> b = a;
    b[1] = 30;  // change document 1 only
    b[3] = 31;
    std::vector<int32_t> seg(T);
    document_segments(a.data(), 1, T, 0, seg.data());
    EXPECT_EQ(seg, (std::vector<int32_t>{0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1}));
    model.forward(a.data(), nullptr, 1, T, seg.data());
    std::vector<float> la(model.logits(), model.logits() + T * Vp);
    model.forward(b.data(), nullptr, 1, T, seg.data());
    std::vector<float> lb(model.logits(), model.logits() + T * Vp);
    // Document 2 (positions 5…) is unaffected by document 1 under masking.
    for (int64_t i = 5 * Vp; i < T * Vp; ++i) ASSERT_EQ(la[i], lb[i]) << to_string(kind) << " logit " << i;
    // Without masking it is affected.
    model.forward(a.data(), nullptr, 1, T);
    std::vector<float> na(model.logits(), model.logits() + T * Vp);
    model.forward(b.data(), nullptr, 1, T);
    EXPECT_NE(na[6 * Vp], model.logits()[6 * Vp]);
  }
}

TEST(Model, RejectsBadTokensAndLengths) {
  GPT<float> model(small_config(PosKind::Learned, 0, false));
  model.init_weights(1);
  std::vector<int> tokens(20, 1);
  EXPECT_NE(error_of([&] { model.forward(tokens.data(), nullptr, 1, 20); }).find("block_size 16"), std::string::npos);
  tokens[3] = 37;
  EXPECT_NE(error_of([&] { model.forward(tokens.data(), nullptr, 1, 8); }).find("out of range"), std::string::npos);
  tokens[3] = 1;
  KVCache<float> cache = model.make_cache(1, 16);
  std::vector<float> logits(model.config().padded_vocab_size());
  model.forward_cached(cache, tokens.data(), 1, 16, logits.data());
  EXPECT_NE(error_of([&] { model.forward_cached(cache, tokens.data(), 1, 1, logits.data()); }).find("exceeds"),
            std::string::npos);
}

TEST(Model, ForwardBackwardIsDeterministic) {
  GPT<float> model(small_config(PosKind::Rope, 2, true));
  model.init_weights(5);
  std::vector<int> tokens(32), targets(32);
  for (int i = 0; i < 32; ++i) {
    tokens[i] = (i * 7) % 37;
    targets[i] = (i * 11 + 3) % 37;
  }
  model.zero_grad();
  double l1 = model.forward(tokens.data(), targets.data(), 2, 16);
  model.backward();
  std::vector<float> g1(model.grads().begin(), model.grads().end());
  model.zero_grad();
  double l2 = model.forward(tokens.data(), targets.data(), 2, 16);
  model.backward();
  EXPECT_EQ(l1, l2);
  EXPECT_TRUE(std::equal(g1.begin(), g1.end(), model.grads().begin()));
  // Initial loss is close to ln(vocab) for a freshly initialised model.
  EXPECT_NEAR(l1, std::log(37.0), 0.3);
}

}  // namespace
}  // namespace flashgpt
