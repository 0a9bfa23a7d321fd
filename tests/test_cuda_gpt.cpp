// The GPU training step (cuda/gpt_cuda.h) against the CPU model (model/gpt.h) from the same
// weights on the same batches, for multi-head and latent attention:
//   FP32 — the loss within 1e-5 relative, logits and every parameter's gradient within 1e-4 of the
//          largest, and a few AdamW steps whose losses and weights track the CPU's;
//   BF16 — the loss within 2%, the gradient pointing the CPU's way (cosine > 0.99), and a few steps
//          whose losses fall with the CPU's.
// Over the architecture switches the GPU runs (GPT-2's; a Llama-like block with RMSNorm, SwiGLU,
// RoPE, QK-norm, GQA, no biases, untied embeddings and post-norm; FlashMLA with decoupled RoPE and
// low-rank queries; MLA with SVD-factored values) and document masking. Skipped
// without a GPU; the simt build runs it on the CPU emulator.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "flashgpt/core/device.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/device_comm.h"
#include "flashgpt/cuda/device_memory.h"
#include "flashgpt/dist/comm.h"
#include "flashgpt/cuda/gpt_cuda.h"
#include "flashgpt/cuda/kernel_times.h"
#include "flashgpt/infer/sampler.h"
#include "flashgpt/model/gpt.h"
#include "flashgpt/ops/adamw.h"
#include "flashgpt/cuda/warpgroup_cuda.h"
#include "testing/errors.h"
#include "testing/ragged_decoding.h"
#include "testing/schedule.h"

namespace flashgpt {
namespace {

using cuda::GPTCuda;
using cuda::Precision;
using testing::error_of;

#define SKIP_WITHOUT_GPU() \
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none

GPTConfig gpt2_like() {
  GPTConfig c;
  c.vocab_size = 97;  // padded to 128: the padding columns must stay out of the loss
  c.block_size = 32;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 128;  // head_dim 64, as the bf16 kernels need
  return c;
}

GPTConfig llama_like() {
  GPTConfig c = gpt2_like();
  c.n_head = 4;
  c.n_kv_head = 2;
  c.n_embd = 256;
  c.norm = NormKind::RMSNorm;
  c.pos = PosKind::Rope;
  c.mlp = MlpKind::SwiGLU;
  c.qk_norm = true;
  c.bias = false;
  c.tie_embeddings = false;
  c.post_norm = true;
  c.attention = AttentionKind::Flash;
  return c;
}

struct Batch {
  int64_t B = 2, T = 16;
  std::vector<int> x, y;
  std::vector<int32_t> seg;
};

Batch make_batch(const GPTConfig& c, uint64_t seed, int64_t B = 2, int64_t T = 16) {
  Batch b;
  b.B = B;
  b.T = T;
  Rng rng(seed);
  for (int64_t i = 0; i < B * T; ++i) {
    b.x.push_back(static_cast<int>(rng.next_u64() % static_cast<uint64_t>(c.vocab_size)));
    b.y.push_back(static_cast<int>(rng.next_u64() % static_cast<uint64_t>(c.vocab_size)));
  }
  b.y[3] = -1;  // an ignored target
  // Documents: sequence 0 splits at t = 5 and 11, sequence 1 is one document.
  for (int64_t s = 0; s < B; ++s) {
    for (int64_t t = 0; t < T; ++t) b.seg.push_back(s == 0 ? static_cast<int32_t>((t >= 5) + (t >= 11)) : 0);
  }
  return b;
}

// max |a − b| / max |b|.
double rel_error(std::span<const float> a, std::span<const float> b) {
  double scale = 0, worst = 0;
  for (float x : b) scale = std::max(scale, static_cast<double>(std::abs(x)));
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return std::numeric_limits<double>::infinity();
    worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  return scale > 0 ? worst / scale : worst;
}

double cosine(std::span<const float> a, std::span<const float> b) {
  double ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ab += static_cast<double>(a[i]) * b[i];
    aa += static_cast<double>(a[i]) * a[i];
    bb += static_cast<double>(b[i]) * b[i];
  }
  return ab / std::sqrt(aa * bb);
}

// The CPU model and the GPU model from the same initial weights.
struct Pair {
  GPT<float> cpu;
  GPTCuda gpu;
  std::vector<float> m, v;  // the CPU's AdamW moments
  Pair(const GPTConfig& c, Precision p) : cpu(c), gpu(c, p) {
    cpu.init_weights(42);
    gpu.set_params(cpu.params());
    m.assign(static_cast<size_t>(cpu.num_params()), 0.0f);
    v = m;
  }
  std::vector<float> gpu_grads() {
    std::vector<float> g(static_cast<size_t>(gpu.num_params()));
    gpu.get_grads(g);
    return g;
  }
  std::vector<float> gpu_params() {
    std::vector<float> p(static_cast<size_t>(gpu.num_params()));
    gpu.get_params(p);
    return p;
  }
  void cpu_adamw(const ops::AdamWParams& hp) {
    for (const ParamSpec& s : cpu.specs()) {
      ops::adamw_update(cpu.params().data() + s.offset, cpu.grads().data() + s.offset, m.data() + s.offset,
                        v.data() + s.offset, s.numel(), hp, s.decay, 1.0f);
    }
  }
};

// AdamW divides each gradient element by its own running size, so an element whose true gradient
// is zero moves by ±lr on whatever round-off it carries; an eps above that round-off keeps such
// elements still on both devices, and the comparison about the real updates.
ops::AdamWParams adamw(int64_t step) {
  ops::AdamWParams hp;
  hp.lr = 3e-3f;
  hp.weight_decay = 0.1f;
  hp.eps = 1e-5f;
  hp.step = step;
  return hp;
}

// The largest weight difference, as a fraction of the learning rate (one step moves a weight by
// at most about lr).
double max_diff_in_lr(std::span<const float> a, std::span<const float> b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
  return worst / 3e-3;
}

// alternate_qkv_fusion: q, k and v by three GEMMs in steps 1 and 3 (and the first forward), by
// one in step 2, so the activations are laid out again each step.
void expect_fp32_parity(const GPTConfig& c, bool doc_mask, bool alternate_qkv_fusion = false) {
  Pair p(c, Precision::FP32);
  EXPECT_TRUE(p.gpu.qkv_fusion()) << "on by default";
  if (alternate_qkv_fusion) p.gpu.set_qkv_fusion(false);
  const Batch b = make_batch(c, 7);
  const int32_t* seg = doc_mask ? b.seg.data() : nullptr;
  // Logits of a forward without targets.
  p.cpu.forward(b.x.data(), nullptr, b.B, b.T, seg);
  p.gpu.forward(b.x.data(), nullptr, b.B, b.T, seg);
  const int64_t n_logits = b.B * b.T * c.padded_vocab_size();
  std::vector<float> logits(static_cast<size_t>(n_logits), std::numeric_limits<float>::quiet_NaN());
  p.gpu.get_logits(logits);
  EXPECT_LT(rel_error(logits, {p.cpu.logits(), static_cast<size_t>(n_logits)}), 1e-4);
  // Three steps: the loss, every gradient, and the weights after AdamW. The classifier runs in
  // one chunk (step 1), in chunks of 10 rows with the fused forward_backward (step 2: 32 rows as
  // 10 + 10 + 10 + 2), and in chunks of 7 with forward, then backward computing them again.
  for (int64_t step = 1; step <= 3; ++step) {
    p.cpu.zero_grad();
    p.gpu.zero_grad();
    p.gpu.set_classifier_rows(step == 1 ? 0 : step == 2 ? 10 : 7);
    if (alternate_qkv_fusion) p.gpu.set_qkv_fusion(step == 2);
    const double cpu_loss = p.cpu.forward(b.x.data(), b.y.data(), b.B, b.T, seg);
    p.cpu.backward(0.5f);
    double gpu_loss = 0;
    if (step == 2) {
      gpu_loss = p.gpu.forward_backward(b.x.data(), b.y.data(), b.B, b.T, seg, 0.5f);
    } else {
      gpu_loss = p.gpu.forward(b.x.data(), b.y.data(), b.B, b.T, seg);
      p.gpu.backward(0.5f);
    }
    EXPECT_NEAR(gpu_loss, cpu_loss, 1e-5 * cpu_loss) << "step " << step;
    const std::vector<float> g = p.gpu_grads();
    EXPECT_LT(rel_error(g, p.cpu.grads()), 1e-4) << "step " << step;
    // Per tensor, so that a wrong small tensor (a norm gain, a bias) is not hidden by a large one.
    for (const ParamSpec& s : p.cpu.specs()) {
      const std::span<const float> gs(g.data() + s.offset, static_cast<size_t>(s.numel()));
      const std::span<const float> cs(p.cpu.grads().data() + s.offset, static_cast<size_t>(s.numel()));
      EXPECT_LT(rel_error(gs, cs), 1e-3) << s.name << " at step " << step;
    }
    double cpu_sq = 0;
    for (float x : p.cpu.grads()) cpu_sq += static_cast<double>(x) * x;
    EXPECT_NEAR(p.gpu.grad_sum_squares(), cpu_sq, 1e-4 * cpu_sq);
    p.cpu_adamw(adamw(step));
    p.gpu.adamw_step(adamw(step), 1.0f);
    EXPECT_LT(max_diff_in_lr(p.gpu_params(), p.cpu.params()), 0.02) << "step " << step;
  }
}

TEST(CudaGpt, Fp32TracksTheCpuModelGpt2Block) {
  SKIP_WITHOUT_GPU();
  expect_fp32_parity(gpt2_like(), false);
}

TEST(CudaGpt, Fp32TracksTheCpuModelLlamaBlockWithDocumentMasks) {
  SKIP_WITHOUT_GPU();
  expect_fp32_parity(llama_like(), true);
}

// The standard kernel's mechanism: every layer keeps its P from the forward for the backward.
TEST(CudaGpt, Fp32TracksTheCpuModelStandardAttentionWithGqaAndDocumentMasks) {
  SKIP_WITHOUT_GPU();
  expect_fp32_parity(llama_like().with_attention(AttentionKind::Standard), true);
}

TEST(CudaGpt, Fp32TracksTheCpuModelWithRopeWithoutQkNorm) {
  SKIP_WITHOUT_GPU();
  GPTConfig c = gpt2_like();
  c.pos = PosKind::Rope;
  c.n_head = 4;  // head_dim 32: fp32 has no head-dim limit
  c.n_kv_head = 1;
  expect_fp32_parity(c, false);
}

// q, k and v by three GEMMs (set_qkv_fusion(false), what bench train --qkv-fusion off times) and by
// one into fused rows (the default, which the tests above run), switched between steps, with RoPE
// rotating the q and k blocks in place, GQA and the flash kernels; then with QK-norm reading its
// heads inside the rows (and its backward writing dq and dk back into them).
TEST(CudaGpt, Fp32TracksTheCpuModelWithQkvInOneGemmOrThree) {
  SKIP_WITHOUT_GPU();
  GPTConfig c = gpt2_like();
  c.pos = PosKind::Rope;
  c.n_head = 4;
  c.n_kv_head = 2;
  c.attention = AttentionKind::Flash;
  expect_fp32_parity(c, true, true);
  expect_fp32_parity(llama_like(), true, true);
}

// FlashMLA with decoupled RoPE, low-rank queries and QK-norm (Dqk 96 ≠ Dv 64).
GPTConfig mla_rope() {
  GPTConfig c = gpt2_like().with_attention(AttentionKind::FlashMLA);
  c.pos = PosKind::Rope;
  c.q_lora_rank = 48;
  c.qk_norm = true;
  c.norm = NormKind::RMSNorm;
  c.mlp = MlpKind::SwiGLU;
  return c;
}

// The same with head_dim 32: Dqk 48, Dv 32, which the tensor-core kernels do not instantiate.
GPTConfig narrow_mla_rope() {
  GPTConfig c = mla_rope();
  c.n_head = 4;
  return c;
}

// MLA (the standard kernel's mechanism) with learned positions, post-norm and the value
// up-projection factored by SVD.
GPTConfig mla_svd() {
  GPTConfig c = gpt2_like().with_attention(AttentionKind::MLA);
  c.post_norm = true;
  c.use_svd = true;
  c.svd_rank = 8;
  return c;
}

// d12_flash_mla's block at a small width: FlashMLA, post-norm, QK-norm, learned positions, so
// Dqk = Dv = 64 and the bf16 kernels apply.
GPTConfig flash_mla_like() {
  GPTConfig c = gpt2_like().with_attention(AttentionKind::FlashMLA);
  c.post_norm = true;
  c.qk_norm = true;
  return c;
}

TEST(CudaGpt, Fp32TracksTheCpuModelFlashMlaWithRopeAndLowRankQueries) {
  SKIP_WITHOUT_GPU();
  expect_fp32_parity(mla_rope(), true);
}

TEST(CudaGpt, Fp32TracksTheCpuModelMlaWithSvdFactors) {
  SKIP_WITHOUT_GPU();
  expect_fp32_parity(mla_svd(), false);
}

TEST(CudaGpt, Bf16TrainingFollowsTheCpu) {
  SKIP_WITHOUT_GPU();
  // The last: standard attention at head_dim 32, which only the standard kernel runs in bf16.
  GPTConfig narrow_standard = gpt2_like().with_attention(AttentionKind::Standard);
  narrow_standard.n_head = 4;
  for (const GPTConfig& c : {gpt2_like(), llama_like(), flash_mla_like(), mla_rope(), narrow_standard}) {
    Pair p(c, Precision::BF16);
    const Batch b = make_batch(c, 9);
    std::vector<double> cpu_losses, gpu_losses;
    for (int64_t step = 1; step <= 4; ++step) {
      p.cpu.zero_grad();
      p.gpu.zero_grad();
      cpu_losses.push_back(p.cpu.forward(b.x.data(), b.y.data(), b.B, b.T, b.seg.data()));
      // The training loop's fused step, its logits in chunks of 12 rows.
      p.gpu.set_classifier_rows(12);
      gpu_losses.push_back(p.gpu.forward_backward(b.x.data(), b.y.data(), b.B, b.T, b.seg.data(), 1.0f));
      EXPECT_NEAR(gpu_losses.back(), cpu_losses.back(), 0.02 * cpu_losses.back())
          << to_string(c.attention) << " step " << step;
      p.cpu.backward(1.0f);
      const std::vector<float> g = p.gpu_grads();
      EXPECT_GT(cosine(g, p.cpu.grads()), 0.99) << to_string(c.attention) << " step " << step;
      p.cpu_adamw(adamw(step));
      p.gpu.adamw_step(adamw(step), 1.0f);
    }
    // Both learn the batch.
    EXPECT_LT(gpu_losses.back(), gpu_losses.front() - 0.1);
    EXPECT_LT(cpu_losses.back(), cpu_losses.front() - 0.1);
  }
}

// Two bf16 training steps (fused forward and backward, AdamW) on both models from the same weights:
// the GPU's loss within 2% of the CPU's and its gradients pointing the same way. `documents`: with
// the batch's document masks.
void expect_two_steps_follow_the_cpu(Pair& p, const Batch& b, bool documents) {
  const int32_t* seg = documents ? b.seg.data() : nullptr;
  for (int64_t step = 1; step <= 2; ++step) {
    p.cpu.zero_grad();
    p.gpu.zero_grad();
    const double cpu_loss = p.cpu.forward(b.x.data(), b.y.data(), b.B, b.T, seg);
    const double gpu_loss = p.gpu.forward_backward(b.x.data(), b.y.data(), b.B, b.T, seg, 1.0f);
    EXPECT_NEAR(gpu_loss, cpu_loss, 0.02 * cpu_loss) << "step " << step;
    p.cpu.backward(1.0f);
    EXPECT_GT(cosine(p.gpu_grads(), p.cpu.grads()), 0.99) << "step " << step;
    p.cpu_adamw(adamw(step));
    p.gpu.adamw_step(adamw(step), 1.0f);
  }
}

// GELU inside the MLP's GEMMs (the default in bf16) and in its own kernels (set_gelu_fusion(false),
// what bench train --gelu-fusion off times): both follow the CPU, and each other closely — the
// same products, only the pre-activation's rounding before GELU differs.
TEST(CudaGpt, Bf16TrainingWithGeluInOrOutsideTheGemmsFollowsTheCpu) {
  SKIP_WITHOUT_GPU();
  const GPTConfig c = gpt2_like().with_attention(AttentionKind::Flash);
  Pair fused(c, Precision::BF16), apart(c, Precision::BF16);
  EXPECT_TRUE(fused.gpu.gelu_fusion()) << "on by default";
  apart.gpu.set_gelu_fusion(false);
  EXPECT_FALSE(apart.gpu.gelu_fusion());
  const Batch b = make_batch(c, 9);
  for (int64_t step = 1; step <= 2; ++step) {
    fused.gpu.zero_grad();
    apart.gpu.zero_grad();
    const double lf = fused.gpu.forward_backward(b.x.data(), b.y.data(), b.B, b.T, nullptr, 1.0f);
    const double la = apart.gpu.forward_backward(b.x.data(), b.y.data(), b.B, b.T, nullptr, 1.0f);
    // From the same weights, then after one AdamW step (which may move a weight whose gradient is
    // near 0 the other way in the two models).
    EXPECT_NEAR(lf, la, (step == 1 ? 2e-3 : 1e-2) * la) << "step " << step;
    EXPECT_GT(cosine(fused.gpu_grads(), apart.gpu_grads()), step == 1 ? 0.999 : 0.99) << "step " << step;
    fused.gpu.adamw_step(adamw(step), 1.0f);
    apart.gpu.adamw_step(adamw(step), 1.0f);
  }
  Pair p(c, Precision::BF16);
  p.gpu.set_gelu_fusion(false);
  expect_two_steps_follow_the_cpu(p, b, true);
}

// The training step with Hopper's flash kernels, forward and backward (set_flash_tiles(Wgmma), what
// bench train --tiles wgmma times; head dims 64/64 and latent attention's 96/64 have both), follows
// the CPU as the automatic tiles do, and runs them: one forward and one backward a layer a step.
TEST(CudaGpt, Bf16TrainingWithTheWgmmaKernelsFollowsTheCpu) {
  SKIP_WITHOUT_GPU();
  if (!cuda::warpgroup_mma_supported()) GTEST_SKIP() << "this GPU or build has no wgmma (compute capability 9.0, sm_90a)";
  // The flash mechanism (gpt2_like's own, standard, never reaches the flash kernels), with document
  // masks, in MHA and in GQA with RoPE and QK-norm; and FlashMLA with RoPE (head 64 + rope 32).
  GPTConfig mla = flash_mla_like();
  mla.pos = PosKind::Rope;
  for (const GPTConfig& c : {gpt2_like().with_attention(AttentionKind::Flash), llama_like(), mla}) {
    SCOPED_TRACE(to_string(c.attention) + (c.kv_heads() < c.n_head ? " GQA" : ""));
    Pair p(c, Precision::BF16);
    p.gpu.set_flash_tiles(cuda::FlashTiles::Wgmma);
    EXPECT_EQ(p.gpu.flash_tiles(), cuda::FlashTiles::Wgmma);
    cuda::KernelTimes times;
    {
      cuda::KernelTimesScope scope(times);
      expect_two_steps_follow_the_cpu(p, make_batch(c, 9), true);
    }
    int64_t forwards = 0, backwards = 0;
    for (const cuda::KernelTime& k : times.read()) {
      forwards += k.name == "Hopper flash forward" ? k.launches : 0;
      backwards += k.name == "Hopper flash backward" ? k.launches : 0;
    }
    EXPECT_EQ(forwards, 2 * c.n_layer);
    EXPECT_EQ(backwards, 2 * c.n_layer);
  }
}

// The fused norms run where they should. QK-norm with RoPE is one launch each way a layer:
// multi-head attention's query and key heads (llama_like: GQA), and latent attention's query heads
// with their rope parts and its shared rope key (mla_rope); a training step runs one "qk norm and
// rope" and one "qk norm and rope backward" a layer and no separate rotation, and a decode step one
// "qk norm and rope" a layer. Post-norm (llama_like) normalises each branch in the launch of the
// residual add after it: two "rmsnorm + add + rmsnorm forward" a layer, in training and decoding.
TEST(CudaGpt, FusedNormsRunWhereTheyShould) {
  SKIP_WITHOUT_GPU();
  for (const GPTConfig& c : {llama_like(), mla_rope()}) {
    SCOPED_TRACE(to_string(c.attention));
    Pair p(c, Precision::BF16);
    const Batch b = make_batch(c, 5);
    auto launches = [](const std::vector<cuda::KernelTime>& times, const std::string& name) {
      int64_t n = 0;
      for (const cuda::KernelTime& k : times) n += k.name == name ? k.launches : 0;
      return n;
    };
    cuda::KernelTimes times;
    std::vector<cuda::KernelTime> step, decode;
    {
      cuda::KernelTimesScope scope(times);
      (void)p.gpu.forward_backward(b.x.data(), b.y.data(), b.B, b.T, b.seg.data(), 1.0f);
      step = times.read();
      p.gpu.set_decode_graphs(false);
      p.gpu.start_decoding(1, 8);
      std::vector<float> logits(static_cast<size_t>(c.padded_vocab_size()));
      p.gpu.decode(b.x.data(), 1, 3, logits);
      decode = times.read();
    }
    EXPECT_EQ(launches(step, "qk norm and rope"), c.n_layer);
    EXPECT_EQ(launches(step, "qk norm and rope backward"), c.n_layer);
    EXPECT_EQ(launches(step, "rope forward") + launches(step, "rope backward"), 0);
    EXPECT_EQ(launches(decode, "qk norm and rope"), c.n_layer);
    EXPECT_EQ(launches(decode, "rope forward"), 0);
    const int64_t post_norms = c.post_norm ? 2 * c.n_layer : 0;
    EXPECT_EQ(launches(step, "rmsnorm + add + rmsnorm forward"), post_norms);
    EXPECT_EQ(launches(decode, "rmsnorm + add + rmsnorm forward"), post_norms);
  }
}

// cuDNN's fused attention in the training step (set_attention_backend(Cudnn), what bench train
// --attention-backend cudnn times): where cuDNN runs, two steps follow the CPU as our kernels do;
// everywhere the model runs, what it cannot take is refused with the reason.
TEST(CudaGpt, CudnnAttentionBackendTrainsOrSaysWhyNot) {
  SKIP_WITHOUT_GPU();
  const GPTConfig flash = gpt2_like().with_attention(AttentionKind::Flash);
  {
    GPTCuda fp32(flash, Precision::FP32);
    EXPECT_NE(error_of([&] { fp32.set_attention_backend(cuda::AttentionBackend::Cudnn); }).find("a bf16 option"),
              std::string::npos);
    GPTCuda standard(gpt2_like(), Precision::BF16);
    EXPECT_NE(error_of([&] { standard.set_attention_backend(cuda::AttentionBackend::Cudnn); })
                  .find("stands in for the flash kernels"),
              std::string::npos);
    EXPECT_EQ(standard.attention_backend(), cuda::AttentionBackend::Ours);
  }
  std::string why;
  if (!cuda::cudnn_attention_available(&why) || !cuda::gpu_available()) {
    GPTCuda gpu(flash, Precision::BF16);
    EXPECT_NE(error_of([&] { gpu.set_attention_backend(cuda::AttentionBackend::Cudnn); })
                  .find("attention backend cudnn: " + why),
              std::string::npos);
    GTEST_SKIP() << "cuDNN: " << why;
  }
  for (const GPTConfig& c : {flash, llama_like(), flash_mla_like()}) {
    SCOPED_TRACE(to_string(c.attention) + (c.kv_heads() < c.n_head ? " GQA" : ""));
    Pair p(c, Precision::BF16);
    p.gpu.set_attention_backend(cuda::AttentionBackend::Cudnn);
    EXPECT_EQ(p.gpu.attention_backend(), cuda::AttentionBackend::Cudnn);
    const Batch b = make_batch(c, 9);
    expect_two_steps_follow_the_cpu(p, b, false);
    // Document masks are ours alone.
    EXPECT_NE(error_of([&] { p.gpu.forward_backward(b.x.data(), b.y.data(), b.B, b.T, b.seg.data(), 1.0f); })
                  .find("document masks"),
              std::string::npos);
  }
}

// Deterministic training gives the same bits on every run: a step (the fused forward and backward
// with document masks, the clipping norm, AdamW) from the same weights, under different block orders,
// leave identical gradients and weights. Without it the atomics show (checked where the order is
// surely redrawn: on the emulator), which shows the comparison can fail; and both modes compute
// the same step up to rounding.
TEST(CudaGpt, DeterministicTrainingRepeatsItsBits) {
  SKIP_WITHOUT_GPU();
  for (const GPTConfig& c : {gpt2_like(), llama_like(), flash_mla_like()}) {
    SCOPED_TRACE(to_string(c.attention) + (c.norm == NormKind::RMSNorm ? " rmsnorm" : " layernorm"));
    const Batch b = make_batch(c, 11);
    GPT<float> init(c);
    init.init_weights(42);
    auto train = [&](bool deterministic, uint64_t seed) {
      testing::redraw_schedule(seed);
      GPTCuda gpu(c, Precision::BF16);
      gpu.set_params(init.params());
      gpu.set_deterministic(deterministic);
      EXPECT_EQ(gpu.deterministic(), deterministic);
      gpu.set_classifier_rows(12);
      std::vector<float> grads(static_cast<size_t>(gpu.num_params())), params(grads.size());
      gpu.zero_grad();
      gpu.forward_backward(b.x.data(), b.y.data(), b.B, b.T, b.seg.data(), 1.0f);
      const double norm = std::sqrt(gpu.grad_sum_squares());
      gpu.get_grads(grads);
      gpu.adamw_step(adamw(1), static_cast<float>(std::min(1.0, 0.5 / norm)));  // clipped
      gpu.get_params(params);
      return std::pair{grads, params};
    };
    const auto a = train(true, 1), again = train(true, 2);
    EXPECT_TRUE(a.first == again.first) << "gradients changed between runs";
    EXPECT_TRUE(a.second == again.second) << "weights changed between runs";
    if (c.attention == AttentionKind::FlashMLA) {
      // Switched on after an atomic step, the mode (and the workspace it is sized for) holds from
      // the next forward: the same bits as a model deterministic from the start.
      testing::redraw_schedule(3);
      GPTCuda gpu(c, Precision::BF16);
      gpu.set_params(init.params());
      gpu.set_classifier_rows(12);
      gpu.forward_backward(b.x.data(), b.y.data(), b.B, b.T, b.seg.data(), 1.0f);
      gpu.set_deterministic(true);
      gpu.zero_grad();
      gpu.forward_backward(b.x.data(), b.y.data(), b.B, b.T, b.seg.data(), 1.0f);
      std::vector<float> grads(static_cast<size_t>(gpu.num_params()));
      gpu.get_grads(grads);
      EXPECT_TRUE(grads == a.first) << "switching to the deterministic mode changed its gradients";
    }
    const auto loose = train(false, 1);
    if (testing::kScheduleRedrawn && c.norm == NormKind::LayerNorm) {  // once: each run costs the emulator seconds
      EXPECT_FALSE(loose.first == train(false, 2).first) << "the atomic backward gave the same gradients twice";
    }
    EXPECT_GT(cosine(a.first, loose.first), 0.9999);
    EXPECT_LT(rel_error(a.second, loose.second), 1e-2);
  }
}

// Decoding with the cache on the GPU against the CPU's cached decoding (GPT::forward_cached) from
// the same weights: two sequences, a prompt of 5 tokens, then 1, 1, 2 and 3 at a time until the
// cache (12 rows, not a whole page of the latent cache) is full; each step's logits within `tol`
// of the largest. Multi-head caches keys and values; latent attention caches [c_kv, k_rope] rows
// and decodes with weight absorption, on the CPU and on the GPU.
// split_kv: multi-head attention by flash decode wherever it runs (on, the helpers' default, so that
// these tests reach it at their small sizes), by the flash kernels (off), or by the model's choice;
// kernel: flash decode's split kernel.
void expect_decoding_tracks_the_cpu(const GPTConfig& c, Precision precision, double tol,
                                    cuda::SplitKv split_kv = cuda::SplitKv::On,
                                    cuda::FlashDecodeKernel kernel = cuda::FlashDecodeKernel::Auto) {
  SCOPED_TRACE(to_string(c.attention) + " " + cuda::to_string(precision) + " split-KV " + cuda::to_string(split_kv) +
               " kernel " + cuda::flash_decode_kernel_name(kernel));
  Pair p(c, precision);
  p.gpu.set_split_kv_decode(split_kv);
  EXPECT_EQ(p.gpu.split_kv_decode(), split_kv);
  EXPECT_EQ(p.gpu.flash_decode_kernel(), cuda::FlashDecodeKernel::Auto) << "the default";
  p.gpu.set_flash_decode_kernel(kernel);
  EXPECT_EQ(p.gpu.flash_decode_kernel(), kernel);
  const int64_t B = 2, capacity = 12, Vp = c.padded_vocab_size();
  KVCache<float> cache = p.cpu.make_cache(B, capacity);
  p.gpu.start_decoding(B, capacity);
  EXPECT_GT(p.gpu.decode_cache_bytes(), 0);
  Rng rng(5);
  for (int64_t Tn : {5, 1, 1, 2, 3}) {
    std::vector<int> tokens(static_cast<size_t>(B * Tn));
    for (int& t : tokens) t = static_cast<int>(rng.next_u64() % static_cast<uint64_t>(c.vocab_size));
    std::vector<float> want(static_cast<size_t>(B * Vp)), got(want.size(), std::numeric_limits<float>::quiet_NaN());
    p.cpu.forward_cached(cache, tokens.data(), B, Tn, want.data());
    p.gpu.decode(tokens.data(), B, Tn, got);
    EXPECT_LT(rel_error(got, want), tol) << "after " << cache.length() << " tokens";
    EXPECT_EQ(p.gpu.decode_length(), cache.length());
  }
}

// Sequences of different lengths in one GPU cache — a right-padded prefill of 5, 2 and 4 tokens,
// then steps of one or several tokens each at its own position, with sequences sitting out steps —
// each with the logits of its own full forward on the CPU; a step past the capacity is an error
// that leaves the cache as it was.
void expect_ragged_decoding_tracks_the_cpu(const GPTConfig& c, Precision precision, double tol,
                                           cuda::SplitKv split_kv = cuda::SplitKv::On,
                                           cuda::FlashDecodeKernel kernel = cuda::FlashDecodeKernel::Auto) {
  SCOPED_TRACE(to_string(c.attention) + " " + cuda::to_string(precision) + " split-KV " + cuda::to_string(split_kv) +
               " kernel " + cuda::flash_decode_kernel_name(kernel));
  Pair p(c, precision);
  p.gpu.set_split_kv_decode(split_kv);
  p.gpu.set_flash_decode_kernel(kernel);
  const int64_t B = 3, Vp = c.padded_vocab_size();
  p.gpu.start_decoding(B, 12);
  testing::expect_ragged_decoding_equals_full_forward(
      p.cpu, testing::ragged_schedule(),
      [&](const std::vector<int>& tokens, const testing::RaggedStep& st, std::vector<float>& logits) {
        p.gpu.decode(tokens.data(), B, st.Tn, logits, st.counts);
      },
      tol);
  EXPECT_EQ(p.gpu.decode_lengths(), (std::vector<int64_t>{12, 12, 12}));
  std::vector<int> tokens(static_cast<size_t>(B * 2), 1);
  std::vector<float> logits(static_cast<size_t>(B * Vp), NAN);
  EXPECT_NE(testing::error_of([&] { p.gpu.decode(tokens.data(), B, 2, logits, std::vector<int32_t>{0, 1, 0}); })
                .find("sequence 1 would hold 13 tokens (12 cached, 1 new), past the cache's capacity of 12"),
            std::string::npos);
  // A step where no sequence reads leaves the cache alone and gives zero logits, as on the CPU.
  p.gpu.decode(tokens.data(), B, 2, logits, std::vector<int32_t>{0, 0, 0});
  EXPECT_EQ(p.gpu.decode_lengths(), (std::vector<int64_t>{12, 12, 12}));
  EXPECT_EQ(std::count(logits.begin(), logits.end(), 0.0f), B * Vp);
}

TEST(CudaGpt, RaggedDecodingTracksEachSequencesFullForward) {
  SKIP_WITHOUT_GPU();
  for (const GPTConfig& c : {gpt2_like(), llama_like(), mla_rope(), flash_mla_like()}) {
    expect_ragged_decoding_tracks_the_cpu(c, Precision::FP32, 1e-5);
  }
  expect_ragged_decoding_tracks_the_cpu(flash_mla_like(), Precision::BF16, 3e-2);
  expect_ragged_decoding_tracks_the_cpu(llama_like(), Precision::BF16, 3e-2);
}

TEST(CudaGpt, Fp32DecodingTracksTheCpuCache) {
  SKIP_WITHOUT_GPU();
  GPTConfig narrow_standard = gpt2_like().with_attention(AttentionKind::Standard);
  narrow_standard.n_head = 4;  // head_dim 32
  GPTConfig rope_gqa = gpt2_like();  // RoPE without QK-norm: q and k rotated in the fused rows at once
  rope_gqa.pos = PosKind::Rope;
  rope_gqa.n_head = 4;
  rope_gqa.n_kv_head = 2;
  rope_gqa.attention = AttentionKind::Flash;
  for (const GPTConfig& c :
       {gpt2_like(), llama_like(), narrow_standard, rope_gqa, mla_rope(), mla_svd(), flash_mla_like()}) {
    expect_decoding_tracks_the_cpu(c, Precision::FP32, 1e-5);
  }
}

// The flash kernels, which multi-head decoding used before flash decode, stay a working choice.
// The other two settings: the flash kernels alone (off), and the model's own choice step by step
// (auto: here gpt2_like's one row per head takes the flash kernels, llama_like's GQA flash decode).
TEST(CudaGpt, DecodingWithTheFlashKernelsOrTheAutomaticChoiceTracksTheCpu) {
  SKIP_WITHOUT_GPU();
  for (cuda::SplitKv mode : {cuda::SplitKv::Off, cuda::SplitKv::Auto}) {
    for (const GPTConfig& c : {gpt2_like(), llama_like()}) expect_decoding_tracks_the_cpu(c, Precision::FP32, 1e-5, mode);
    expect_ragged_decoding_tracks_the_cpu(llama_like(), Precision::FP32, 1e-5, mode);
    expect_ragged_decoding_tracks_the_cpu(llama_like(), Precision::BF16, 3e-2, mode);
  }
}

// Flash decode's warps kernel (one row per key/value head in gpt2_like, a GQA pair in llama_like)
// tracks the CPU as the tiles kernel does, cache by cache and ragged.
TEST(CudaGpt, DecodingWithTheWarpsKernelTracksTheCpu) {
  SKIP_WITHOUT_GPU();
  const auto warps = cuda::FlashDecodeKernel::Warps;
  for (const GPTConfig& c : {gpt2_like(), llama_like()}) {
    expect_decoding_tracks_the_cpu(c, Precision::FP32, 1e-5, cuda::SplitKv::On, warps);
  }
  expect_decoding_tracks_the_cpu(llama_like(), Precision::BF16, 0.03, cuda::SplitKv::On, warps);
  expect_ragged_decoding_tracks_the_cpu(llama_like(), Precision::FP32, 1e-5, cuda::SplitKv::On, warps);
  expect_ragged_decoding_tracks_the_cpu(gpt2_like(), Precision::BF16, 3e-2, cuda::SplitKv::On, warps);
  // The model does run it: a prompt of 6 tokens (6 rows a head, past the warps kernel's 4) takes the
  // tiles kernel, the one-token step after it the warps kernel, once a layer each.
  const GPTConfig c = gpt2_like();
  Pair p(c, Precision::FP32);
  p.gpu.set_split_kv_decode(cuda::SplitKv::On);
  p.gpu.set_flash_decode_kernel(warps);
  p.gpu.set_decode_graphs(false);
  p.gpu.start_decoding(1, 8);
  std::vector<int> prompt{1, 2, 3, 4, 5, 6}, next{7};
  std::vector<float> logits(static_cast<size_t>(c.padded_vocab_size()));
  cuda::KernelTimes times;
  int64_t tiles = 0, by_warps = 0;
  {
    cuda::KernelTimesScope scope(times);
    p.gpu.decode(prompt.data(), 1, 6, logits);
    for (const cuda::KernelTime& k : times.read()) tiles += k.name == "flash decode" ? k.launches : 0;
    p.gpu.decode(next.data(), 1, 1, logits);
    for (const cuda::KernelTime& k : times.read()) by_warps += k.name == "flash decode (warps)" ? k.launches : 0;
  }
  EXPECT_EQ(tiles, c.n_layer);
  EXPECT_EQ(by_warps, c.n_layer);
}

// bf16 weights and activations: within a few percent of the fp32 CPU. mla_rope's latent rows
// (32 + 32) take the tensor-core decode kernel; head_dim 32 the standard kernel.
TEST(CudaGpt, Bf16DecodingTracksTheCpuCache) {
  SKIP_WITHOUT_GPU();
  GPTConfig narrow_standard = gpt2_like().with_attention(AttentionKind::Standard);
  narrow_standard.n_head = 4;
  for (const GPTConfig& c : {gpt2_like(), llama_like(), narrow_standard, mla_rope(), flash_mla_like()}) {
    expect_decoding_tracks_the_cpu(c, Precision::BF16, 0.03);
  }
}

// The check `bench decode --device cuda` makes before it times: a prefill and one more token
// give the logits the GPU's own forward without a cache gives at that last position (fp32 1e-5,
// bf16 2e-2 of the largest: the two paths round in different places; the bench allows 5e-2 at
// its longer contexts).
TEST(CudaGpt, DecodingEqualsTheForwardWithoutACache) {
  SKIP_WITHOUT_GPU();
  for (Precision precision : {Precision::FP32, Precision::BF16}) {
    for (const GPTConfig& c : {llama_like(), mla_rope(), flash_mla_like()}) {
      Pair p(c, precision);
      const Batch b = make_batch(c, 13, 2, 10);
      const int64_t Vp = c.padded_vocab_size();
      std::vector<int> prompt, next;
      for (int64_t s = 0; s < b.B; ++s) {
        prompt.insert(prompt.end(), b.x.begin() + s * b.T, b.x.begin() + (s + 1) * b.T - 1);
        next.push_back(b.x[static_cast<size_t>((s + 1) * b.T - 1)]);
      }
      std::vector<float> got(static_cast<size_t>(b.B * Vp));
      p.gpu.start_decoding(b.B, b.T);
      p.gpu.decode(prompt.data(), b.B, b.T - 1, got);
      p.gpu.decode(next.data(), b.B, 1, got);
      std::vector<float> full(static_cast<size_t>(b.B * b.T * Vp)), want;
      p.gpu.forward(b.x.data(), nullptr, b.B, b.T);
      p.gpu.get_logits(full);
      for (int64_t s = 0; s < b.B; ++s) {
        want.insert(want.end(), full.begin() + ((s + 1) * b.T - 1) * Vp, full.begin() + (s + 1) * b.T * Vp);
      }
      EXPECT_LT(rel_error(got, want), precision == Precision::FP32 ? 1e-5 : 2e-2)
          << to_string(c.attention) << " " << cuda::to_string(precision);
    }
  }
}

// The sampler on the GPU picks what it picks on the CPU (greedy, fp32), and decoding leaves the
// training step as it was.
TEST(CudaGpt, GreedySamplesEqualTheCpusAndTrainingIsUntouched) {
  SKIP_WITHOUT_GPU();
  for (const GPTConfig& c : {llama_like(), mla_rope()}) {
    Pair p(c, Precision::FP32);
    const Batch b = make_batch(c, 3);
    const double before = p.gpu.forward(b.x.data(), b.y.data(), b.B, b.T);
    SampleOptions opt;
    opt.max_new_tokens = 12;
    opt.temperature = 0.0f;
    const std::vector<int> prompt = {3, 14, 15, 92};
    Rng r1(1), r2(1);
    cuda::GPTCudaDecoder gpu(p.gpu);
    const SampleResult on_gpu = generate(gpu, prompt, opt, r1);
    const SampleResult on_cpu = generate(p.cpu, prompt, opt, r2);
    EXPECT_EQ(on_gpu.tokens, on_cpu.tokens) << to_string(c.attention);
    EXPECT_EQ(on_gpu.tokens.size(), 12u);
    EXPECT_EQ(p.gpu.forward(b.x.data(), b.y.data(), b.B, b.T), before) << to_string(c.attention);
  }
}

// A batch of samples decoded together on the GPU draws what each draws alone on the CPU (fp32,
// top-k sampling, each sample its own stream; one stops at end-of-text and sits out the rest).
TEST(CudaGpt, BatchedSamplesEqualTheCpusOneAtATime) {
  SKIP_WITHOUT_GPU();
  for (const GPTConfig& c : {llama_like(), mla_rope()}) {
    Pair p(c, Precision::FP32);
    SampleOptions opt;
    opt.max_new_tokens = 8;
    opt.top_k = 4;
    opt.stop_at_eot = false;
    const std::vector<int> prompt = {3, 14, 15};
    const int B = 3;
    std::vector<Rng> rngs;
    for (int k = 0; k < B; ++k) rngs.push_back(sample_rng(5, k));
    cuda::GPTCudaDecoder gpu(p.gpu);
    const std::vector<SampleResult> free_run = generate_batch(gpu, prompt, opt, rngs);
    opt.stop_at_eot = true;
    opt.eot_token = free_run[0].tokens[0];  // sample 0 stops at once
    for (int k = 0; k < B; ++k) rngs[static_cast<size_t>(k)] = sample_rng(5, k);
    const std::vector<SampleResult> on_gpu = generate_batch(gpu, prompt, opt, rngs);
    EXPECT_EQ(on_gpu[0].stop_reason, "end_of_text") << to_string(c.attention);
    for (int k = 0; k < B; ++k) {
      Rng alone = sample_rng(5, k);
      const SampleResult on_cpu = generate(p.cpu, prompt, opt, alone);
      EXPECT_EQ(on_gpu[static_cast<size_t>(k)].tokens, on_cpu.tokens) << to_string(c.attention) << " sample " << k;
      EXPECT_EQ(on_gpu[static_cast<size_t>(k)].stop_reason, on_cpu.stop_reason) << to_string(c.attention);
    }
  }
}

// Continuous batching on the GPU: five prompts of different lengths through two slots, each new
// prompt read whole beside a running sample in its own slot (a several-token step while the
// lengths differ), every sample what the CPU draws for it alone.
TEST(CudaGpt, ContinuousBatchingEqualsTheCpuOneAtATime) {
  SKIP_WITHOUT_GPU();
  for (const GPTConfig& c : {llama_like(), mla_rope()}) {
    Pair p(c, Precision::FP32);
    SampleOptions opt;
    opt.max_new_tokens = 5;
    opt.top_k = 4;
    opt.stop_at_eot = false;
    const std::vector<std::vector<int>> prompts = {{3, 14, 15}, {9}, {2, 6, 5, 3, 5, 8, 9}, {7, 9}, {3, 2, 3, 8}};
    std::vector<Rng> rngs;
    for (int k = 0; k < 5; ++k) rngs.push_back(sample_rng(6, k));
    cuda::GPTCudaDecoder gpu(p.gpu);
    const std::vector<SampleResult> free_run = generate_continuous(gpu, prompts, opt, rngs, 2);
    opt.stop_at_eot = true;
    opt.eot_token = free_run[0].tokens[0];  // sample 0 stops at once: prompt 2 joins sample 1 mid-run
    for (int k = 0; k < 5; ++k) rngs[static_cast<size_t>(k)] = sample_rng(6, k);
    const std::vector<SampleResult> on_gpu = generate_continuous(gpu, prompts, opt, rngs, 2);
    EXPECT_EQ(on_gpu[0].stop_reason, "end_of_text");
    for (int k = 0; k < 5; ++k) {
      Rng alone = sample_rng(6, k);
      const SampleResult on_cpu = generate(p.cpu, prompts[static_cast<size_t>(k)], opt, alone);
      EXPECT_EQ(on_gpu[static_cast<size_t>(k)].tokens, on_cpu.tokens) << to_string(c.attention) << " sample " << k;
    }
  }
}

// decode_top gives each sequence's best k tokens of the very logits decode gives, ranked (the
// higher first, the lower id first among equals), in fp32 and bf16, for a right-padded prefill
// and a ragged step with a sequence sitting out; bad requests are errors naming the limit.
TEST(CudaGpt, DecodeTopRanksTheLogitsDecodeGives) {
  SKIP_WITHOUT_GPU();
  const GPTConfig c = llama_like();
  const int64_t B = 3, Vp = c.padded_vocab_size(), V = c.vocab_size;
  for (Precision prec : {Precision::FP32, Precision::BF16}) {
    Pair p(c, prec);
    for (int k : {1, 5, 97}) {
      SCOPED_TRACE(std::string(prec == Precision::FP32 ? "fp32" : "bf16") + ", k " + std::to_string(k));
      const std::vector<int> prefill = {3, 14, 15, 9, 2, 6, 0, 0, 8, 9, 7, 0};  // rows of 4: read 4, 2, 3
      const std::vector<int32_t> first = {4, 2, 3}, second = {1, 0, 2};
      const std::vector<int> next = {5, 0, 11, 0, 1, 12};  // rows of 2
      // The whole logits of both steps, then the same steps again asking for candidates.
      p.gpu.start_decoding(B, 8);
      std::vector<float> l1(static_cast<size_t>(B * Vp)), l2(l1.size());
      p.gpu.decode(prefill.data(), B, 4, l1, first);
      p.gpu.decode(next.data(), B, 2, l2, second);
      p.gpu.start_decoding(B, 8);
      std::vector<int32_t> ids(static_cast<size_t>(B * k), -7);
      std::vector<float> top(static_cast<size_t>(B * k), std::nanf(""));
      for (int step = 0; step < 2; ++step) {
        const std::vector<float>& want = step == 0 ? l1 : l2;
        const std::vector<int32_t>& counts = step == 0 ? first : second;
        if (step == 0) {
          p.gpu.decode_top(prefill.data(), B, 4, k, ids, top, first);
        } else {
          p.gpu.decode_top(next.data(), B, 2, k, ids, top, second);
        }
        for (int64_t b = 0; b < B; ++b) {
          if (counts[static_cast<size_t>(b)] == 0) continue;  // its row means nothing
          const float* row = want.data() + b * Vp;
          std::vector<int32_t> order(static_cast<size_t>(V));
          for (int32_t i = 0; i < V; ++i) order[static_cast<size_t>(i)] = i;
          std::stable_sort(order.begin(), order.end(), [row](int32_t x, int32_t y) { return row[x] > row[y]; });
          for (int i = 0; i < k; ++i) {
            ASSERT_EQ(ids[static_cast<size_t>(b * k + i)], order[static_cast<size_t>(i)]) << "step " << step << ", sequence " << b << ", rank " << i;
            ASSERT_EQ(top[static_cast<size_t>(b * k + i)], row[order[static_cast<size_t>(i)]]) << "step " << step << ", rank " << i;
          }
        }
      }
      EXPECT_EQ(p.gpu.decode_lengths(), (std::vector<int64_t>{5, 2, 5}));
    }
    p.gpu.start_decoding(B, 8);
    const std::vector<int> one = {1, 2, 3};
    std::vector<int32_t> ids(B * 200);
    std::vector<float> top(B * 200);
    EXPECT_NE(error_of([&] { p.gpu.decode_top(one.data(), B, 1, 98, {ids.data(), B * 98u}, {top.data(), B * 98u}); })
                  .find("1…97 can be"),
              std::string::npos);
    EXPECT_NE(error_of([&] { p.gpu.decode_top(one.data(), B, 1, 0, {ids.data(), 0}, {top.data(), 0}); })
                  .find("at least 1"),
              std::string::npos);
    EXPECT_NE(error_of([&] { p.gpu.decode_top(one.data(), B, 1, 4, {ids.data(), B * 4u}, {top.data(), 5}); })
                  .find("room for 5 candidate logits"),
              std::string::npos);
  }
}

// CUDA graphs: two GPU models from the same weights run one schedule, graphs on and off, and give
// the same bits at every step. A prefill of 4 tokens each; steady steps (the first is captured,
// the rest replay, each at the next position); a ragged step
// reading more rows than any before (buffers grow: the next steady step captures anew); steady
// steps, now at different positions; a restarted sequence's new prompt beside two running ones
// (nothing grows: the graph replays across it); one-token steps, one with a sequence sitting out
// (it replays too, and that sequence's logits are zero); steps asking for candidates (another
// capture), one with a sequence sitting out; and a step where the sequence sitting out has a full
// cache (packed, launch by launch).
void expect_graph_steps_equal_launched_ones(const GPTConfig& c, Precision precision) {
  SCOPED_TRACE(to_string(c.attention) + " " + cuda::to_string(precision));
  GPT<float> init(c);
  init.init_weights(42);
  GPTCuda graphs(c, precision), launches(c, precision);
  graphs.set_params(init.params());
  launches.set_params(init.params());
  launches.set_decode_graphs(false);
  EXPECT_TRUE(graphs.decode_graphs());
  EXPECT_FALSE(launches.decode_graphs());
  const int64_t B = 3, Vp = c.padded_vocab_size();
  for (GPTCuda* m : {&graphs, &launches}) m->start_decoding(B, 24);
  struct Step {
    int64_t Tn;
    std::vector<int32_t> counts;
    int top_k;
    int64_t restart;
  };
  const Step steady{1, {}, 0, -1}, steady_top{1, {}, 5, -1};
  const std::vector<Step> schedule = {
      {4, {}, 0, -1},                                                    // prefill: lengths 4, 4, 4
      steady, steady, steady,                                            // capture, 2 replays
      {6, {6, 1, 6}, 0, -1},                                             // the activations grow
      steady, steady, steady,                                            // capture, 2 replays
      {5, {1, 5, 1}, 0, 1},                                              // sequence 1 starts over
      steady, {1, {1, 0, 1}, 0, -1}, steady,                             // 3 replays
      steady_top, {1, {0, 1, 1}, 5, -1}, steady_top, steady_top,         // capture, 3 replays
      {1, {1, 1, 0}, 5, -1}};                                            // sequence 2 is full: packed
  // The model without graphs runs the schedule first: any device allocation (this process's, any
  // model's) makes a graph be captured anew, so the two models do not take turns.
  std::vector<std::vector<float>> want_logits;
  std::vector<std::vector<int32_t>> want_ids;
  for (GPTCuda* m : {&launches, &graphs}) {
    Rng rng(9);
    for (size_t k = 0; k < schedule.size(); ++k) {
      SCOPED_TRACE("step " + std::to_string(k) + (m == &graphs ? ", graphs" : ", launches"));
      const Step& st = schedule[k];
      std::vector<int> tokens(static_cast<size_t>(B * st.Tn));
      for (int& t : tokens) t = static_cast<int>(rng.next_u64() % static_cast<uint64_t>(c.vocab_size));
      const size_t n = st.top_k > 0 ? static_cast<size_t>(B * st.top_k) : static_cast<size_t>(B * Vp);
      std::vector<float> logits(n, std::nanf(""));
      std::vector<int32_t> ids(st.top_k > 0 ? n : 0, -1);
      if (st.restart >= 0) m->restart_decoding(st.restart);
      if (st.top_k > 0) {
        m->decode_top(tokens.data(), B, st.Tn, st.top_k, ids, logits, st.counts);
      } else {
        m->decode(tokens.data(), B, st.Tn, logits, st.counts);
      }
      if (m == &launches) {
        want_logits.push_back(logits);
        want_ids.push_back(ids);
      } else {
        ASSERT_EQ(std::memcmp(logits.data(), want_logits[k].data(), n * sizeof(float)), 0)
            << "replays so far " << graphs.decode_graph_replays();
        ASSERT_EQ(ids, want_ids[k]);
      }
      for (int64_t b = 0; b < static_cast<int64_t>(st.counts.size()); ++b) {  // sitting out: zero logits
        if (st.counts[static_cast<size_t>(b)] > 0) continue;
        const size_t width = n / B;
        EXPECT_EQ(std::count(logits.begin() + b * width, logits.begin() + (b + 1) * width, 0.0f), width) << b;
        for (int i = 0; i < st.top_k; ++i) EXPECT_EQ(ids[static_cast<size_t>(b * st.top_k + i)], i) << b;
      }
    }
  }
  EXPECT_EQ(launches.decode_lengths(), (std::vector<int64_t>{24, 12, 24}));
  EXPECT_EQ(graphs.decode_lengths(), (std::vector<int64_t>{24, 12, 24}));
  // Replays: 2 after the first capture, 2 after the one the growing step forced, the 3 one-token
  // steps after the restarted prompt (one with a sequence sitting out), 3 after the candidates'
  // capture (one with a sequence sitting out). The last step is packed: the sequence sitting it
  // out has a full cache, no row to spare.
  EXPECT_EQ(graphs.decode_graph_replays(), 10);
  EXPECT_EQ(launches.decode_graph_replays(), 0);
  graphs.start_decoding(B, 24);  // a new cache drops the graph and the count
  EXPECT_EQ(graphs.decode_graph_replays(), 0);
}

TEST(CudaGpt, GraphReplayedStepsGiveTheBitsOfLaunchedOnes) {
  SKIP_WITHOUT_GPU();
  for (const GPTConfig& c : {gpt2_like(), llama_like(), mla_rope(), flash_mla_like()}) {
    expect_graph_steps_equal_launched_ones(c, Precision::FP32);
  }
  expect_graph_steps_equal_launched_ones(llama_like(), Precision::BF16);
  expect_graph_steps_equal_launched_ones(flash_mla_like(), Precision::BF16);
}

// A graph captured under one split-KV setting or flash decode kernel is captured again when either
// changes between steps: the steps after each switch give the bits of a model launching kernel by
// kernel under the same switches, and the replays count only the steps after each new capture.
TEST(CudaGpt, SwitchingSplitKvOrItsKernelBetweenStepsCapturesAgain) {
  SKIP_WITHOUT_GPU();
  const GPTConfig c = llama_like();
  GPT<float> init(c);
  init.init_weights(42);
  GPTCuda graphs(c, Precision::FP32), launches(c, Precision::FP32);
  for (GPTCuda* m : {&graphs, &launches}) {
    m->set_params(init.params());
    m->set_split_kv_decode(cuda::SplitKv::On);
  }
  launches.set_decode_graphs(false);
  const int64_t B = 2, Vp = c.padded_vocab_size();
  std::vector<std::vector<float>> want;
  for (GPTCuda* m : {&launches, &graphs}) {  // one model after the other (see above)
    m->start_decoding(B, 16);
    Rng rng(3);
    for (int step = 0; step < 10; ++step) {
      SCOPED_TRACE("step " + std::to_string(step) + (m == &graphs ? ", graphs" : ", launches"));
      if (step == 4) m->set_flash_decode_kernel(cuda::FlashDecodeKernel::Warps);
      if (step == 7) m->set_split_kv_decode(cuda::SplitKv::Off);
      const int64_t Tn = step == 0 ? 4 : 1;
      std::vector<int> tokens(static_cast<size_t>(B * Tn));
      for (int& t : tokens) t = static_cast<int>(rng.next_u64() % static_cast<uint64_t>(c.vocab_size));
      std::vector<float> logits(static_cast<size_t>(B * Vp), std::nanf(""));
      m->decode(tokens.data(), B, Tn, logits);
      if (m == &launches) {
        want.push_back(logits);
      } else {
        ASSERT_EQ(std::memcmp(logits.data(), want[static_cast<size_t>(step)].data(), logits.size() * 4), 0);
      }
    }
  }
  // Steps 1, 4 and 7 capture; 2–3, 5–6 and 8–9 replay.
  EXPECT_EQ(graphs.decode_graph_replays(), 6);
}

TEST(CudaGpt, BadDecodingIsAnErrorNamingIt) {
  SKIP_WITHOUT_GPU();
  const GPTConfig c = gpt2_like();
  GPTCuda gpu(c, Precision::FP32);
  std::vector<int> tokens = {1, 2, 3, 4};
  std::vector<float> logits(static_cast<size_t>(2 * c.padded_vocab_size()));
  EXPECT_NE(error_of([&] { gpu.decode(tokens.data(), 2, 2, logits); }).find("call start_decoding first"),
            std::string::npos);
  EXPECT_NE(error_of([&] { gpu.start_decoding(1, c.block_size + 1); }).find("capacity 33 must be 1…32"),
            std::string::npos);
  gpu.start_decoding(2, 3);
  EXPECT_NE(error_of([&] { gpu.decode(tokens.data(), 1, 2, logits); }).find("1 sequences given, the cache holds 2"),
            std::string::npos);
  tokens[3] = c.vocab_size;
  EXPECT_NE(error_of([&] { gpu.decode(tokens.data(), 2, 2, logits); }).find("token id 97 at index 3"),
            std::string::npos);
  tokens[3] = 4;
  gpu.decode(tokens.data(), 2, 2, logits);
  EXPECT_NE(error_of([&] { gpu.decode(tokens.data(), 2, 2, logits); })
                .find("sequence 0 would hold 4 tokens (2 cached, 2 new), past the cache's capacity of 3"),
            std::string::npos);
  std::vector<float> small(3);
  EXPECT_NE(error_of([&] { gpu.decode(tokens.data(), 2, 1, small); }).find("room for 3 logits"), std::string::npos);
  GPTConfig wide = mla_rope();
  wide.n_latent = 640;
  EXPECT_NE(GPTCuda::decode_unsupported(wide, Precision::FP32).find("n_latent ≤ 512"), std::string::npos);
  EXPECT_EQ(GPTCuda::decode_unsupported(mla_rope(), Precision::BF16), "");
}

TEST(CudaGpt, ClippingScalesTheGradientsOfTheStep) {
  SKIP_WITHOUT_GPU();
  const GPTConfig c = gpt2_like();
  Pair p(c, Precision::FP32);
  const Batch b = make_batch(c, 11);
  p.cpu.forward(b.x.data(), b.y.data(), b.B, b.T);
  p.gpu.forward(b.x.data(), b.y.data(), b.B, b.T);
  p.cpu.backward();
  p.gpu.backward();
  for (const ParamSpec& s : p.cpu.specs()) {
    ops::adamw_update(p.cpu.params().data() + s.offset, p.cpu.grads().data() + s.offset, p.m.data() + s.offset,
                      p.v.data() + s.offset, s.numel(), adamw(1), s.decay, 0.25f);
  }
  p.gpu.adamw_step(adamw(1), 0.25f);
  EXPECT_LT(max_diff_in_lr(p.gpu_params(), p.cpu.params()), 1e-3);
  std::vector<float> m(p.m.size()), v(p.v.size());
  p.gpu.get_optimizer_state(m, v);
  EXPECT_LT(rel_error(m, p.m), 1e-4);
  EXPECT_LT(rel_error(v, p.v), 1e-4);
}

TEST(CudaGpt, OptimizerStateRoundTrips) {
  SKIP_WITHOUT_GPU();
  const GPTConfig c = gpt2_like();
  GPTCuda gpu(c, Precision::BF16);
  Rng rng(3);
  std::vector<float> m(static_cast<size_t>(gpu.num_params())), v(m.size());
  for (size_t i = 0; i < m.size(); ++i) {
    m[i] = static_cast<float>(rng.normal());
    v[i] = static_cast<float>(std::abs(rng.normal()));
  }
  gpu.set_optimizer_state(m, v);
  std::vector<float> m2(m.size()), v2(m.size());
  gpu.get_optimizer_state(m2, v2);
  EXPECT_EQ(m, m2);
  EXPECT_EQ(v, v2);
}

TEST(CudaGpt, WhatTheGpuCannotTrainIsNamed) {
  // Pure config checks: no GPU needed.
  EXPECT_EQ(GPTCuda::unsupported(mla_rope(), Precision::FP32), "");
  EXPECT_EQ(GPTCuda::unsupported(flash_mla_like(), Precision::BF16), "");
  EXPECT_EQ(GPTCuda::unsupported(mla_rope(), Precision::BF16), "");  // Dqk 96, Dv 64
  EXPECT_NE(GPTCuda::unsupported(narrow_mla_rope(), Precision::BF16).find("this model's are 48/32"), std::string::npos)
      << GPTCuda::unsupported(narrow_mla_rope(), Precision::BF16);
  GPTConfig odd = gpt2_like().with_attention(AttentionKind::Flash);
  odd.n_head = 4;  // head_dim 32
  EXPECT_NE(GPTCuda::unsupported(odd, Precision::BF16).find("head_dim 64 or 128"), std::string::npos)
      << GPTCuda::unsupported(odd, Precision::BF16);
  // The standard kernel's mechanisms run any head dims.
  EXPECT_EQ(GPTCuda::unsupported(odd.with_attention(AttentionKind::Standard), Precision::BF16), "");
  EXPECT_EQ(GPTCuda::unsupported(narrow_mla_rope().with_attention(AttentionKind::MLA), Precision::BF16), "");
  EXPECT_EQ(cuda::parse_precision("bf16", "--precision"), Precision::BF16);
  EXPECT_NE(error_of([] { cuda::parse_precision("fp8", "--precision"); }).find("--precision: unknown precision 'fp8'"),
            std::string::npos);
}

TEST(CudaGpt, BadInputIsAnErrorNamingIt) {
  SKIP_WITHOUT_GPU();
  EXPECT_NE(error_of([&] { GPTCuda g(narrow_mla_rope(), Precision::BF16); }).find("--device cuda: bf16 latent attention"),
            std::string::npos);
  const GPTConfig c = gpt2_like();
  GPTCuda gpu(c, Precision::FP32);
  const Batch b = make_batch(c, 1);
  std::vector<int> bad = b.x;
  bad[5] = c.vocab_size;
  EXPECT_NE(error_of([&] { gpu.forward(bad.data(), b.y.data(), b.B, b.T); }).find("token id 97 at index 5"),
            std::string::npos);
  EXPECT_NE(error_of([&] { gpu.forward(b.x.data(), b.y.data(), 1, c.block_size + 1); }).find("block_size"),
            std::string::npos);
  EXPECT_NE(error_of([&] { gpu.backward(); }).find("call forward with targets first"), std::string::npos);
  // With targets the classifier keeps no logits to hand out.
  gpu.forward(b.x.data(), b.y.data(), b.B, b.T);
  std::vector<float> logits(static_cast<size_t>(b.B * b.T * c.padded_vocab_size()));
  EXPECT_NE(error_of([&] { gpu.get_logits(logits); }).find("only a forward without targets"), std::string::npos);
  EXPECT_NE(error_of([&] { gpu.forward_backward(b.x.data(), nullptr, b.B, b.T, nullptr); }).find("needs targets"),
            std::string::npos);
  EXPECT_NE(error_of([&] { gpu.set_classifier_rows(-1); }).find("must not be negative"), std::string::npos);
  std::vector<float> wrong(10);
  EXPECT_NE(error_of([&] { gpu.set_params(wrong); }).find("the model has"), std::string::npos);
}

// One rank: both ways of summing gradients run and leave the buffer as it is (a sum over one
// rank), sending nothing; NCCL where it loads (this build's, on a GPU) — the multi-rank sums are
// tests/test_distributed_cuda.cpp's.
TEST(GpuComm, OneRankSumsLeaveTheGradientsAsTheyAre) {
  SKIP_WITHOUT_GPU();
  auto single = dist::make_single_process_comm();
  std::vector<float> x(300), back(300);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.25f * static_cast<float>(i) - 7.0f;
  for (cuda::GpuComm kind : {cuda::GpuComm::Host, cuda::GpuComm::Nccl}) {
    std::unique_ptr<cuda::DeviceComm> comm;
    const std::string e = error_of([&] { comm = cuda::DeviceComm::create(*single, kind); });
#if defined(FLASHGPT_SIMT)
    if (kind == cuda::GpuComm::Nccl) {
      EXPECT_NE(e.find("--gpu-comm nccl: the CPU emulator has no NCCL"), std::string::npos) << e;
      continue;
    }
#endif
    if (kind == cuda::GpuComm::Nccl && e.find("NCCL is not installed") != std::string::npos) {
      GTEST_SKIP() << e;
    }
    ASSERT_EQ(e, "no error");
    EXPECT_EQ(comm->backend(), cuda::to_string(kind));
    EXPECT_EQ(comm->gpu(), 0);
    cuda::DeviceBuffer buf(x.size() * sizeof(float));
    buf.upload(x.data(), x.size() * sizeof(float));
    comm->allreduce_sum(buf.as<float>(), static_cast<int64_t>(x.size()));
    // The started sums (on NCCL's own stream) in two pieces, and ZeRO-1's pair over one block.
    comm->start_allreduce_sum(buf.as<float>(), 100);
    comm->start_allreduce_sum(buf.as<float>() + 100, static_cast<int64_t>(x.size()) - 100);
    comm->finish_sums();
    comm->reduce_scatter_sum(buf.as<float>(), static_cast<int64_t>(x.size()));
    comm->allgather(buf.as<float>(), static_cast<int64_t>(x.size()));
    buf.download(back.data(), back.size() * sizeof(float));
    EXPECT_EQ(back, x) << comm->backend();
    EXPECT_EQ(comm->bytes_sent(), 0u);
  }
}

}  // namespace
}  // namespace flashgpt
