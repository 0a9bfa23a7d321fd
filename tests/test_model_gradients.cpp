// Whole-model gradients against finite differences, in double, under every combination of the
// architecture options and both attention kernels (2⁹ = 512 models), and with document masking.
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
  c.attention = bits & 256 ? AttentionKind::Flash : AttentionKind::Standard;
  return c;
}

std::string config_name(int bits) {
  GPTConfig c = config_from_bits(bits);
  return fmt::format("{}_{}{}_{}_{}_{}_{}_{}_{}", to_string(c.attention), c.post_norm ? "post" : "pre",
                     c.qk_norm ? "_qknorm" : "", to_string(c.pos), to_string(c.norm), to_string(c.mlp),
                     c.n_kv_head ? "mqa" : "mha", c.tie_embeddings ? "tied" : "untied", c.bias ? "bias" : "nobias");
}

class ModelGradients : public ::testing::TestWithParam<int> {};

void check_model_gradients(int bits, bool document_masking) {
  GPT<double> model(config_from_bits(bits));
  model.set_attention_tiling({2, 3});  // tiles that do not divide the length
  Rng rng(100 + static_cast<uint64_t>(bits));
  // Random weights everywhere (not the init's ones and zeros) so every path carries gradient.
  for (double& p : model.params()) p = rng.normal() * 0.5;
  const int64_t B = 2, Tn = 5;
  std::vector<int> tokens(B * Tn), targets(B * Tn);
  for (auto& t : tokens) t = static_cast<int>(rng.next_u64() % 11);
  for (auto& t : targets) t = static_cast<int>(rng.next_u64() % 11);
  targets[3] = -1;  // an ignored position
  std::vector<int32_t> segments = {0, 0, 1, 1, 1, 0, 1, 1, 2, 2};  // documents inside each row
  const int32_t* seg = document_masking ? segments.data() : nullptr;

  model.zero_grad();
  model.forward(tokens.data(), targets.data(), B, Tn, seg);
  model.backward(1.0);
  std::vector<double> analytic(model.grads().begin(), model.grads().end());
  auto loss = [&] { return model.forward(tokens.data(), targets.data(), B, Tn, seg); };
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

TEST_P(ModelGradients, MatchFiniteDifferences) { check_model_gradients(GetParam(), false); }

TEST(ModelGradientsWithDocumentMasking, MatchFiniteDifferences) {
  for (int bits : {0, 1 | 2 | 4, 256, 256 | 1 | 2 | 4 | 32}) {
    SCOPED_TRACE(config_name(bits));
    check_model_gradients(bits, true);
  }
}

INSTANTIATE_TEST_SUITE_P(AllOptionCombinations, ModelGradients, ::testing::Range(0, 512),
                         [](const auto& p) { return config_name(p.param); });

}  // namespace
}  // namespace flashgpt
