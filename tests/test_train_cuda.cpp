// The training loop on the GPU (`train --device cuda`): whole runs of `train()` against the same
// runs on the CPU: the losses, gradient norms and validation losses step by step, the weights and
// optimizer state they leave, exact resume, checkpoints that move between the devices, gradient
// accumulation, and a diverging run stopped before it spoils its checkpoint. Built for GPUs
// (skipped without one) and for the CPU emulator, where the same trainer runs the emulated
// kernels.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "flashgpt/core/device.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/io.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/model/checkpoint.h"
#include "flashgpt/tokenizer/tokenizer.h"
#include "flashgpt/train/trainer.h"
#include "testing/errors.h"
#include "testing/train_corpus.h"

namespace flashgpt {
namespace {

using testing::Corpus;
using testing::corpus_options;
using testing::error_of;
using testing::Metrics;
using testing::read_metrics;

#define SKIP_WITHOUT_GPU() \
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none

// Two layers over the corpus's characters: two heads of 32 for fp32; for bf16 one head of 64, the
// smallest the bf16 flash kernels take.
GPTConfig small_model(AttentionKind attention = AttentionKind::Flash, const std::string& precision = "fp32") {
  GPTConfig c = GPTConfig::preset("tiny");
  c.n_embd = 64;
  c.n_head = precision == "bf16" ? 1 : 2;
  c.block_size = 32;
  return c.with_attention(attention);
}

TrainOptions on(const std::string& device, TrainOptions o, const std::string& precision = "fp32") {
  o.device = device;
  o.precision = precision;
  o.deterministic = device == "cuda";  // the GPU's bits repeat only without atomics
  return o;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, double(std::abs(a[i] - b[i])));
  return m;
}

// Step by step within `tol` (relative): losses, gradient norms and validation losses.
void expect_same_run(const TrainResult& got, const Metrics& got_m, const TrainResult& want, const Metrics& want_m,
                     double tol) {
  ASSERT_EQ(got.losses.size(), want.losses.size());
  for (size_t s = 0; s < want.losses.size(); ++s) {
    EXPECT_NEAR(got.losses[s], want.losses[s], tol * want.losses[s]) << "step " << s + 1;
    EXPECT_NEAR(got.grad_norms[s], want.grad_norms[s], 10 * tol * want.grad_norms[s]) << "step " << s + 1;
  }
  ASSERT_EQ(got_m.val.size(), want_m.val.size());
  for (const auto& [step, v] : want_m.val) EXPECT_NEAR(got_m.val.at(step), v, tol * v) << "val at step " << step;
}

// fp32 on the GPU is the CPU's run to rounding: the same batches, schedule, clipping, weight decay
// and validation windows, for each attention family the GPU trains.
TEST(TrainCuda, Fp32RunsTrackTheCpuStepByStep) {
  SKIP_WITHOUT_GPU();
  Corpus corpus;
  for (AttentionKind kind : {AttentionKind::Flash, AttentionKind::FlashMLA, AttentionKind::Standard}) {
    SCOPED_TRACE(to_string(kind));
    const std::string name = to_string(kind);
    TrainOptions base = corpus_options(corpus, corpus.dir / name);
    base.grad_clip = 0.5;  // clips most steps: the GPU's norm and scale are exercised
    const TrainResult cpu = train(small_model(kind), on("cpu", base));
    const Metrics cpu_m = read_metrics(corpus.dir / (name + "/metrics.jsonl"));
    const CheckpointData cpu_ck = load_checkpoint(corpus.dir / (name + "/ckpt.safetensors"));
    base.out_dir = corpus.dir / (name + "-gpu");
    const TrainResult gpu = train(small_model(kind), on("cuda", base));
    EXPECT_EQ(gpu.device, "cuda");
    EXPECT_EQ(cpu.device, "cpu");
    expect_same_run(gpu, read_metrics(corpus.dir / (name + "-gpu/metrics.jsonl")), cpu, cpu_m, 1e-4);
    EXPECT_LT(cpu.losses.back(), cpu.losses.front() - 0.5) << "the reference run should learn";
    const CheckpointData gpu_ck = load_checkpoint(corpus.dir / (name + "-gpu/ckpt.safetensors"));
    EXPECT_LT(max_abs_diff(gpu_ck.params, cpu_ck.params), 1e-4);
    EXPECT_LT(max_abs_diff(gpu_ck.adam_m, cpu_ck.adam_m), 1e-5);
    EXPECT_EQ(gpu_ck.train_state, cpu_ck.train_state);  // step, data position, rng: the same bookkeeping
  }
}

// bf16 mixed precision: the CPU's run to bf16's rounding, and it learns the corpus. (Step by step
// the losses part by more while they fall fastest: the validation losses are compared.)
TEST(TrainCuda, Bf16RunsFollowTheCpuAndLearn) {
  SKIP_WITHOUT_GPU();
  Corpus corpus;
  TrainOptions base = corpus_options(corpus, corpus.dir / "cpu");
  base.max_steps = 12;
  base.val_every = 4;
  const TrainResult cpu = train(small_model(AttentionKind::Flash, "bf16"), on("cpu", base));
  base.out_dir = corpus.dir / "gpu";
  const TrainResult gpu = train(small_model(AttentionKind::Flash, "bf16"), on("cuda", base, "bf16"));
  const Metrics cpu_m = read_metrics(corpus.dir / "cpu/metrics.jsonl");
  const Metrics gpu_m = read_metrics(corpus.dir / "gpu/metrics.jsonl");
  ASSERT_EQ(gpu_m.val.size(), 4u);  // steps 0, 4, 8, 12
  ASSERT_EQ(gpu_m.val.size(), cpu_m.val.size());
  for (const auto& [step, v] : cpu_m.val) EXPECT_NEAR(gpu_m.val.at(step), v, 0.03 * v) << "val at step " << step;
  EXPECT_NEAR(gpu.losses.front(), cpu.losses.front(), 0.01 * cpu.losses.front());
  EXPECT_LT(gpu.losses.back(), gpu.losses.front() - 0.5);
  EXPECT_LT(gpu_m.val.at(12), gpu_m.val.at(0) - 0.5);
}

// Stopped at step 4 and resumed from its checkpoint, a GPU run repeats the uninterrupted one bit
// for bit (deterministic mode): the fp32 master weights, both moments, the data position and the
// random state all come back.
TEST(TrainCuda, ResumedRunsContinueExactly) {
  SKIP_WITHOUT_GPU();
  Corpus corpus;
  for (const char* precision : {"fp32", "bf16"}) {
    SCOPED_TRACE(precision);
    const std::string p = precision;
    const GPTConfig model = small_model(AttentionKind::Flash, p);
    const TrainOptions whole = on("cuda", corpus_options(corpus, corpus.dir / (p + "-whole")), p);
    train(model, whole);
    TrainOptions part = on("cuda", corpus_options(corpus, corpus.dir / (p + "-part")), p);
    part.stop_at_step = 4;
    EXPECT_EQ(train(model, part).steps, 4);
    part.stop_at_step = 0;
    part.resume = corpus.dir / (p + "-part/ckpt.safetensors");
    EXPECT_EQ(train(GPTConfig::preset("d12"), part).steps, 8);  // the checkpoint's config wins
    const Metrics a = read_metrics(corpus.dir / (p + "-whole/metrics.jsonl"));
    const Metrics b = read_metrics(corpus.dir / (p + "-part/metrics.jsonl"));
    ASSERT_EQ(b.loss.size(), 8u);
    for (int64_t s = 1; s <= 8; ++s) EXPECT_EQ(b.loss.at(s), a.loss.at(s)) << "step " << s;
    EXPECT_EQ(b.val.at(6), a.val.at(6));
    EXPECT_EQ(b.val.at(8), a.val.at(8));
    const CheckpointData ca = load_checkpoint(corpus.dir / (p + "-whole/ckpt.safetensors"));
    const CheckpointData cb = load_checkpoint(corpus.dir / (p + "-part/ckpt.safetensors"));
    EXPECT_EQ(ca.params, cb.params);
    EXPECT_EQ(ca.adam_m, cb.adam_m);
    EXPECT_EQ(ca.adam_v, cb.adam_v);
  }
}

// One checkpoint format for both devices: a run started on the GPU goes on on the CPU, and one
// started on the CPU goes on on the GPU, each as the one device's whole run would (fp32).
TEST(TrainCuda, CheckpointsMoveBetweenTheDevices) {
  SKIP_WITHOUT_GPU();
  Corpus corpus;
  const TrainResult cpu = train(small_model(), on("cpu", corpus_options(corpus, corpus.dir / "cpu")));
  for (const auto& [first, then] : {std::pair{"cuda", "cpu"}, std::pair{"cpu", "cuda"}}) {
    const std::string dir = corpus.dir / (std::string(first) + "-then-" + then);
    SCOPED_TRACE(dir);
    TrainOptions o = on(first, corpus_options(corpus, dir));
    o.stop_at_step = 4;
    train(small_model(), o);
    o = on(then, corpus_options(corpus, dir));
    o.resume = dir + "/ckpt.safetensors";
    const TrainResult rest = train(small_model(), o);
    EXPECT_EQ(rest.device, then);
    ASSERT_EQ(rest.losses.size(), 4u);
    for (size_t s = 0; s < 4; ++s) EXPECT_NEAR(rest.losses[s], cpu.losses[s + 4], 1e-4 * cpu.losses[s + 4]) << s;
  }
}

// Two micro-batches of 2 sequences a step are one batch of 4 on the GPU too.
TEST(TrainCuda, GradientAccumulationMatchesTheLargerBatch) {
  SKIP_WITHOUT_GPU();
  Corpus corpus;
  TrainOptions big = on("cuda", corpus_options(corpus, corpus.dir / "big"));
  big.val_data.clear();
  TrainOptions acc = big;
  acc.out_dir = corpus.dir / "acc";
  acc.batch_size = 2;
  acc.total_batch_tokens = 4 * 16;
  const TrainResult rb = train(small_model(), big);
  const TrainResult ra = train(small_model(), acc);
  ASSERT_EQ(ra.losses.size(), rb.losses.size());
  for (size_t s = 0; s < rb.losses.size(); ++s) {
    EXPECT_NEAR(ra.losses[s], rb.losses[s], 1e-4 * rb.losses[s]) << "step " << s + 1;
    EXPECT_NEAR(ra.grad_norms[s], rb.grad_norms[s], 1e-3 * rb.grad_norms[s]) << "step " << s + 1;
  }
}

// Document masking on the GPU: the trainer's segment ids reach the kernels as on the CPU.
TEST(TrainCuda, DocumentMaskedRunsTrackTheCpu) {
  SKIP_WITHOUT_GPU();
  Corpus corpus;
  TrainOptions o = corpus_options(corpus, corpus.dir / "cpu");
  o.document_masking = true;
  o.eot_token = load_tokenizer(corpus.tokenizer)->encode(" ").at(0);  // several documents in every window
  o.val_data.clear();
  const TrainResult cpu = train(small_model(), on("cpu", o));
  o.out_dir = corpus.dir / "gpu";
  const TrainResult gpu = train(small_model(), on("cuda", o));
  ASSERT_EQ(gpu.losses.size(), cpu.losses.size());
  for (size_t s = 0; s < cpu.losses.size(); ++s) {
    EXPECT_NEAR(gpu.losses[s], cpu.losses[s], 1e-4 * cpu.losses[s]) << "step " << s + 1;
  }
  // And the masks matter: the same run without them takes another path.
  o.document_masking = false;
  o.out_dir = corpus.dir / "unmasked";
  const TrainResult plain = train(small_model(), on("cuda", o));
  EXPECT_GT(std::abs(plain.losses.back() - gpu.losses.back()), 1e-3);
}

// A diverging run on the GPU stops before the bad update; its last checkpoint stays loadable.
TEST(TrainCuda, StopsOnANonFiniteLossAndKeepsTheLastGoodCheckpoint) {
  SKIP_WITHOUT_GPU();
  Corpus corpus;
  TrainOptions o = on("cuda", corpus_options(corpus, corpus.dir / "out"));
  o.lr.lr = 1e30;
  o.lr.warmup_steps = 0;
  o.grad_clip = 0;
  o.save_every = 1;
  o.max_steps = 50;
  o.val_data.clear();
  const std::string msg = error_of([&] { train(small_model(), o); });
  EXPECT_NE(msg.find("stopped before updating the weights"), std::string::npos) << msg;
  ASSERT_TRUE(file_exists(corpus.dir / "out/ckpt.safetensors")) << "step 1 is finite and was saved";
  const CheckpointData d = load_checkpoint(corpus.dir / "out/ckpt.safetensors");
  for (float p : d.params) ASSERT_TRUE(std::isfinite(p));
}

}  // namespace
}  // namespace flashgpt
