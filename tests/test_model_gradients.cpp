// Whole-model gradients against finite differences, in double, under every combination of the
// architecture options (2⁸ = 256 models).
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "flashgpt/model/gpt.h"
#include "testing/finite_diff.h"

namespace flashgpt {
namespace {

GPTConfig config_from_bits(int bits) {
  GPTConfig c;
  c.vocab_size = 11;
  c.block_size = 8;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 8;
  c.post_norm = bits & 1;
  c.qk_norm = bits & 2;
  c.pos = bits & 4 ? PosKind::Rope : PosKind::Learned;
  c.norm = bits & 8 ? NormKind::RMSNorm : NormKind::LayerNorm;
  c.mlp = bits & 16 ? MlpKind::SwiGLU : MlpKind::Gelu;
  c.n_kv_head = bits & 32 ? 1 : 0;
  c.tie_embeddings = !(bits & 64);
  c.bias = !(bits & 128);
  c.mlp_hidden = c.mlp == MlpKind::SwiGLU ? 12 : 0;
  return c;
}

std::string config_name(int bits) {
  GPTConfig c = config_from_bits(bits);
  return fmt::format("{}{}_{}_{}_{}_{}_{}_{}", c.post_norm ? "post" : "pre", c.qk_norm ? "_qknorm" : "",
                     to_string(c.pos), to_string(c.norm), to_string(c.mlp), c.n_kv_head ? "mqa" : "mha",
                     c.tie_embeddings ? "tied" : "untied", c.bias ? "bias" : "nobias");
}

class ModelGradients : public ::testing::TestWithParam<int> {};

TEST_P(ModelGradients, MatchFiniteDifferences) {
  GPT<double> model(config_from_bits(GetParam()));
  Rng rng(100 + static_cast<uint64_t>(GetParam()));
  // Random weights everywhere (not the init's ones and zeros) so every path carries gradient.
  for (double& p : model.params()) p = rng.normal() * 0.5;
  const int64_t B = 2, Tn = 5;
  std::vector<int> tokens(B * Tn), targets(B * Tn);
  for (auto& t : tokens) t = static_cast<int>(rng.next_u64() % 11);
  for (auto& t : targets) t = static_cast<int>(rng.next_u64() % 11);
  targets[3] = -1;  // an ignored position

  model.zero_grad();
  model.forward(tokens.data(), targets.data(), B, Tn);
  model.backward(1.0);
  std::vector<double> analytic(model.grads().begin(), model.grads().end());
  auto loss = [&] { return model.forward(tokens.data(), targets.data(), B, Tn); };
  for (const ParamSpec& s : model.specs()) {
    int64_t n = s.numel();
    if (s.name == "wte" || s.name == "lm_head.weight") n = 11 * 8;  // padding rows: checked below
    testing::expect_gradient_matches(s.name, model.params().data() + s.offset, analytic.data() + s.offset,
                                     static_cast<size_t>(n), loss, 6);
  }
  // The padding rows of the vocabulary get exactly zero gradient.
  for (const char* name : {"wte", "lm_head.weight"}) {
    for (const ParamSpec& s : model.specs()) {
      if (s.name != name) continue;
      for (int64_t i = 11 * 8; i < s.numel(); ++i) ASSERT_EQ(analytic[s.offset + i], 0.0) << name << "[" << i << "]";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllOptionCombinations, ModelGradients, ::testing::Range(0, 256),
                         [](const auto& p) { return config_name(p.param); });

}  // namespace
}  // namespace flashgpt
