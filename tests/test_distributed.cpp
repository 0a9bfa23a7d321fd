// Training across processes, run under mpirun with 2, 3 and 4 ranks (tests/CMakeLists.txt): the
// communicator's collectives, context-parallel attention and whole-model gradients against one
// process, and whole training runs — data parallel, ZeRO-1, context parallel, resumed on another
// rank count — against the same run in one process. Every rank runs every test; a test that
// fails on any rank fails the job. Only rank 0 prints the usual report.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <numeric>
#include <tuple>

#include "flashgpt/core/error.h"
#include "flashgpt/core/half_precision.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/data/dataloader.h"
#include "flashgpt/data/shard.h"
#include "flashgpt/dist/comm.h"
#include "flashgpt/dist/context_parallel.h"
#include "flashgpt/model/checkpoint.h"
#include "flashgpt/model/gpt.h"
#include "flashgpt/tokenizer/tokenizer.h"
#include "flashgpt/train/distributed.h"
#include "flashgpt/train/trainer.h"
#include "testing/mpi_main.h"
#include "testing/distributed_runs.h"
#include "testing/temp_dir.h"

namespace flashgpt {
namespace {

using dist::Communicator;
using dist::DType;

Communicator& W() { return dist::world(); }

TEST(Communicator, CollectivesOverUnevenParts) {
  Communicator& c = W();
  const int n = c.size(), r = c.rank();
  ASSERT_GE(n, 2) << "run this binary under mpirun with 2 or more ranks";
  EXPECT_EQ(c.backend(), "mpi");
  // allreduce: Σ over ranks of (rank + 1) · i
  std::vector<double> x(5);
  for (int i = 0; i < 5; ++i) x[static_cast<size_t>(i)] = (r + 1) * i;
  c.allreduce_sum(std::span<double>(x));
  for (int i = 0; i < 5; ++i) EXPECT_EQ(x[static_cast<size_t>(i)], n * (n + 1) / 2.0 * i);
  // Uneven parts: rank k owns k + 1 elements.
  std::vector<int64_t> counts(static_cast<size_t>(n));
  std::iota(counts.begin(), counts.end(), 1);
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  std::vector<float> send(static_cast<size_t>(total));
  for (int64_t i = 0; i < total; ++i) send[static_cast<size_t>(i)] = static_cast<float>(i * (r + 1));
  std::vector<float> mine(static_cast<size_t>(r + 1), -1.0f);
  c.reduce_scatter_sum(send.data(), mine.data(), counts, DType::F32);
  const int64_t first = r * (r + 1) / 2;
  for (int64_t i = 0; i <= r; ++i) {
    EXPECT_EQ(mine[static_cast<size_t>(i)], static_cast<float>((first + i) * n * (n + 1) / 2)) << i;
  }
  // all-gather in place: every rank's part lands in order.
  std::vector<float> all(static_cast<size_t>(total), -1.0f);
  for (int64_t i = 0; i <= r; ++i) all[static_cast<size_t>(first + i)] = static_cast<float>(100 * r + i);
  c.allgather(all.data() + first, all.data(), counts, DType::F32);
  for (int k = 0, at = 0; k < n; ++k) {
    for (int i = 0; i <= k; ++i, ++at) EXPECT_EQ(all[static_cast<size_t>(at)], static_cast<float>(100 * k + i));
  }
  // gather to rank 0 only.
  std::vector<float> got(r == 0 ? static_cast<size_t>(total) : 0);
  c.gather(mine.data(), r == 0 ? got.data() : nullptr, counts, DType::F32, 0);
  if (r == 0) {
    for (int64_t i = 0; i < total; ++i) EXPECT_EQ(got[static_cast<size_t>(i)], static_cast<float>(i * n * (n + 1) / 2));
  }
  // broadcast and the typed helpers.
  int64_t v = r == 0 ? 4242 : 0;
  c.broadcast(&v, sizeof v, 0);
  EXPECT_EQ(v, 4242);
  EXPECT_EQ(c.sum(int64_t{1}), n);
  EXPECT_EQ(c.allgather_one(int32_t{r})[static_cast<size_t>(n - 1)], n - 1);
  EXPECT_GT(c.bytes_sent(), 0u);
}

TEST(Communicator, SplitFormsIndependentGroups) {
  Communicator& c = W();
  auto g = c.split(c.rank() % 2, c.rank());
  const int expected = (c.size() + 1 - c.rank() % 2) / 2;  // ranks of my parity
  EXPECT_EQ(g->size(), expected);
  EXPECT_EQ(g->rank(), c.rank() / 2);
  EXPECT_EQ(g->sum(c.rank()), c.rank() % 2 == 0 ? (expected - 1) * expected : expected * expected);
}

TEST(Communicator, ReplicaCheckNamesTheRankThatDiffers) {
  Communicator& c = W();
  std::vector<float> w(100, 0.5f);
  EXPECT_NO_THROW(dist::check_same_on_all_ranks(c, dist::fingerprint(w.data(), w.size() * 4), "the weights"));
  if (c.rank() == c.size() - 1) w[37] = std::nextafter(0.5f, 1.0f);  // one ulp on the last rank
  try {
    dist::check_same_on_all_ranks(c, dist::fingerprint(w.data(), w.size() * 4), "step 7: the weights");
    ADD_FAILURE() << "a one-ulp difference went unnoticed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("step 7: the weights differ across ranks: rank " +
                                         std::to_string(c.size() - 1)),
              std::string::npos)
        << e.what();
  }
}

TEST(ContextParallel, ChunksBalanceTheCausalWorkAndGatherUndoesSlice) {
  Communicator& c = W();
  const int n = c.size();
  const int64_t B = 2, T = 4 * n, width = 3;
  dist::ContextParallel cp(c, T);
  EXPECT_EQ(cp.local_len(), 4);
  // Causal work of a rank: Σ over its query rows of the keys they see — the same on every rank.
  int64_t work = 0;
  for (int64_t t = 0; t < cp.local_len(); ++t) work += cp.position(t) + 1;
  const std::vector<int64_t> works = c.allgather_one(work);
  for (int64_t w : works) EXPECT_EQ(w, works[0]);
  std::vector<double> global(static_cast<size_t>(B * T * width)), local(static_cast<size_t>(B * 4 * width)),
      back(global.size());
  for (size_t i = 0; i < global.size(); ++i) global[i] = static_cast<double>(i);
  cp.slice(global.data(), local.data(), B, width);
  cp.gather(local.data(), back.data(), B, width);
  EXPECT_EQ(back, global);
  // reduce_scatter: every rank contributes (rank + 1) · global; mine are my rows of the sum.
  std::vector<double> contrib(global.size());
  for (size_t i = 0; i < global.size(); ++i) contrib[i] = (c.rank() + 1) * global[i];
  std::vector<double> summed(local.size());
  cp.reduce_scatter(contrib.data(), summed.data(), B, width);
  for (size_t i = 0; i < local.size(); ++i) EXPECT_EQ(summed[i], n * (n + 1) / 2.0 * local[i]);
  EXPECT_THROW(dist::ContextParallel(c, 2 * n + 1), Error);  // not a multiple of 2N
}

// The whole model under context parallelism: loss and every gradient equal one process's, for
// multi-head, grouped-query and latent attention, both kernels, both position schemes.
TEST(ContextParallel, ModelLossAndGradientsEqualOneProcess) {
  Communicator& c = W();
  const int n = c.size();
  for (int variant = 0; variant < 12; ++variant) {
    GPTConfig cfg;
    cfg.vocab_size = 61;
    cfg.block_size = 64;
    cfg.n_layer = 2;
    cfg.n_head = 4;
    cfg.n_embd = 32;
    cfg.attention = variant & 1 ? AttentionKind::Flash : AttentionKind::Standard;
    cfg.pos = variant & 2 ? PosKind::Rope : PosKind::Learned;
    cfg.n_kv_head = variant & 4 ? 2 : 0;
    cfg.qk_norm = variant == 3 || variant == 6;
    cfg.post_norm = variant == 5 || variant == 6;
    if (variant >= 8) {  // latent attention: the expanded keys and values are gathered
      cfg.n_kv_head = 0;
      cfg.attention = variant & 1 ? AttentionKind::FlashMLA : AttentionKind::MLA;
      cfg.n_latent = 12;
      cfg.q_lora_rank = variant == 9 ? 16 : 0;
      cfg.use_svd = variant == 11;
      cfg.svd_rank = variant == 11 ? 6 : 0;
      cfg.qk_norm = variant == 10 || variant == 11;
    }
    const bool documents = variant >= 4 && variant != 8;
    SCOPED_TRACE("variant " + std::to_string(variant));
    const int64_t B = 2, T = 2 * n * 5;
    GPT<double> ref(cfg), par(cfg);
    ref.init_weights(7);
    std::copy(ref.params().begin(), ref.params().end(), par.params().begin());
    Rng rng(11);  // the same tokens on every rank
    std::vector<int> tok(static_cast<size_t>(B * T)), tgt(tok.size());
    for (auto& t : tok) t = static_cast<int>(rng.next_u64() % 61);
    for (auto& t : tgt) t = static_cast<int>(rng.next_u64() % 61);
    std::vector<int32_t> seg(tok.size());
    for (int64_t i = 0; i < B * T; ++i) seg[static_cast<size_t>(i)] = static_cast<int32_t>((i % T) / 7 + i / T);
    ref.zero_grad();
    const double loss_ref = ref.forward(tok.data(), tgt.data(), B, T, documents ? seg.data() : nullptr);
    ref.backward();

    dist::ContextParallel cp(c, T);
    par.set_context_parallel(&cp);
    const int64_t Tl = cp.local_len();
    std::vector<int> ltok(static_cast<size_t>(B * Tl)), ltgt(ltok.size());
    std::vector<int32_t> lseg(ltok.size());
    cp.slice(tok.data(), ltok.data(), B, 1);
    cp.slice(tgt.data(), ltgt.data(), B, 1);
    cp.slice(seg.data(), lseg.data(), B, 1);
    par.zero_grad();
    const double local = par.forward(ltok.data(), ltgt.data(), B, Tl, documents ? lseg.data() : nullptr);
    par.backward(1.0 / n);
    const double loss = c.sum(local) / n;
    c.allreduce_sum(par.grads());
    EXPECT_NEAR(loss, loss_ref, 1e-12 * std::abs(loss_ref));
    double max_err = 0, max_g = 0;
    for (int64_t i = 0; i < ref.num_params(); ++i) {
      max_err = std::max(max_err, std::abs(par.grads()[static_cast<size_t>(i)] - ref.grads()[static_cast<size_t>(i)]));
      max_g = std::max(max_g, std::abs(ref.grads()[static_cast<size_t>(i)]));
    }
    EXPECT_LT(max_err, 1e-10 * max_g) << "largest gradient " << max_g;
  }
}

// --- whole training runs -----------------------------------------------------------------------

using Corpus = testing::SharedCorpus;
using testing::expect_same_losses;

GPTConfig small_model() { return testing::shared_model(); }
TrainOptions options(const Corpus& corpus, const std::string& out, Communicator* comm) {
  return testing::shared_options(corpus, out, comm);
}
TrainResult one_process(const TrainOptions& o) { return testing::run_alone(small_model(), o); }

TEST(Train, DataParallelLossesEqualOneProcessStepByStep) {
  Corpus corpus;
  TrainOptions o = options(corpus, corpus.dir / "dp", &W());
  const TrainResult ref = one_process(o);
  const TrainResult dp = train(small_model(), o);
  expect_same_losses(dp, ref, 1e-5);
  EXPECT_NEAR(dp.final_val_loss, ref.final_val_loss, 1e-5 * ref.final_val_loss);
  EXPECT_LT(ref.losses.back(), ref.losses.front() - 0.1) << "the reference run should learn";
  EXPECT_GT(dp.bytes_sent, 0u);
}

// --reduce-dtype bf16 on CPU ranks (GradientSync): each rank's gradient rounded to bf16 and summed
// in bf16. The average equals the bf16 sum of the rounded gradients worked out here (bitwise on 2
// ranks, where the one addition is the only rounding; within twice the rounding bound on more,
// whose order of additions is MPI's), is within that bound of the exact fp32 average, and costs half
// the fp32 sum's bytes — with and without ZeRO-1.
TEST(GradientSync, Bf16GradientsAreTheRoundedSumAtHalfTheBytes) {
  const int N = W().size(), me = W().rank();
  for (int zero : {0, 1}) {
    SCOPED_TRACE(fmt::format("zero {}", zero));
    GPT<float> model(small_model());
    model.init_weights(1);
    const int64_t n = model.num_params();
    // Rank r's gradient: the same draw on every rank, scaled and shifted by r, so that the sums
    // need rounding.
    auto gradient_of = [&](int r) {
      Rng rng(17);
      std::vector<float> g(static_cast<size_t>(n));
      for (float& x : g) x = static_cast<float>(rng.normal()) * (1.0f + 0.37f * static_cast<float>(r)) + 0.01f * r;
      return g;
    };
    // The exact sum, the sum of the rounded values, and Σ|g| (what bounds each rounding's error).
    std::vector<double> exact(static_cast<size_t>(n), 0.0), rounded(exact), spread(exact);
    for (int r = 0; r < N; ++r) {
      const std::vector<float> g = gradient_of(r);
      for (size_t i = 0; i < g.size(); ++i) {
        exact[i] += g[i];
        rounded[i] += bf16_bits_to_float(float_to_bf16_bits(g[i]));
        spread[i] += std::abs(g[i]);
      }
    }
    auto run = [&](bool bf16) {
      const std::vector<float> mine = gradient_of(me);
      std::copy(mine.begin(), mine.end(), model.grads().begin());
      GradientSync sync(W(), model, zero, bf16);
      EXPECT_EQ(sync.bf16_gradients(), bf16);
      W().reset_bytes_sent();
      sync.finish_reduction();
      const uint64_t bytes = W().bytes_sent();
      // The averaged gradient (ZeRO-1 keeps only its shard, seen here through Σ g² over the ranks).
      std::vector<float> avg;
      if (zero == 0) avg.assign(model.grads().begin(), model.grads().end());
      return std::make_tuple(avg, bytes, sync.grad_sum_squares());
    };
    const auto [f32_avg, f32_bytes, f32_sq] = run(false);
    const auto [b16_avg, b16_bytes, b16_sq] = run(true);
    EXPECT_NEAR(static_cast<double>(b16_bytes), 0.5 * static_cast<double>(f32_bytes), 0.01 * f32_bytes);
    double sq = 0;
    for (double x : exact) sq += (x / N) * (x / N);
    EXPECT_NEAR(f32_sq, sq, 1e-4 * sq);
    EXPECT_NEAR(b16_sq, sq, 2e-2 * sq);  // each element within a bf16 rounding or two
    EXPECT_NE(b16_sq, f32_sq);
    if (zero == 0) {
      // Errors relative to Σ|g|/N: the N roundings of the inputs and the N − 1 of the partial sums
      // each err by at most 2⁻⁸ of Σ|g| (bf16 keeps 8 significant bits), so the average is within
      // (2N − 1)·2⁻⁸ of the exact one
      // (cancellation can make that large against the average itself).
      double worst_vs_bf16 = 0, worst_vs_exact = 0;
      for (size_t i = 0; i < exact.size(); ++i) {
        const double want = bf16_bits_to_float(float_to_bf16_bits(static_cast<float>(rounded[i]))) / N;
        const double got = b16_avg[i], e = exact[i] / N, mag = std::max(spread[i] / N, 1e-6);
        worst_vs_bf16 = std::max(worst_vs_bf16, std::abs(got - want) / mag);
        worst_vs_exact = std::max(worst_vs_exact, std::abs(got - e) / mag);
        EXPECT_NEAR(f32_avg[i], e, 1e-5 * mag) << "fp32 element " << i;
      }
      const double bound = 1.01 * (2 * N - 1) / 256.0;
      if (N == 2) {
        EXPECT_LT(worst_vs_bf16, 1e-6);  // one addition: the host's rounded sum to the bit
      } else {
        EXPECT_LT(worst_vs_bf16, 2 * bound);  // MPI's order of additions is its own
      }
      EXPECT_GT(worst_vs_exact, 1e-5);  // bf16 did round
      EXPECT_LT(worst_vs_exact, bound);
    }
  }
  // One rank sums nothing: bf16 does not apply.
  auto single = dist::make_single_process_comm();
  GPT<float> alone(small_model());
  EXPECT_FALSE(GradientSync(*single, alone, 0, true).bf16_gradients());
}

// The same through whole training runs (the overlapped per-block sums included): losses follow
// the fp32 run's within bf16's rounding, and each step's gradient sum sends half its fp32 bytes
// (the runs' other traffic — the validation losses, the replica checks — is the same in both).
TEST(Train, Bf16GradientsFollowTheFp32RunAtHalfTheBytes) {
  Corpus corpus;
  TrainOptions o = options(corpus, corpus.dir / "f32", &W());
  W().reset_bytes_sent();
  const TrainResult f32 = train(small_model(), o);
  const double f32_bytes = static_cast<double>(W().bytes_sent());
  TrainOptions h = options(corpus, corpus.dir / "bf16", &W());
  h.reduce_dtype = "bf16";
  W().reset_bytes_sent();
  const TrainResult b16 = train(small_model(), h);
  const double b16_bytes = static_cast<double>(W().bytes_sent());
  expect_same_losses(b16, f32, 2e-2);
  const ParallelLayout lay = make_parallel_layout(W(), 1);
  const double saved = static_cast<double>(o.max_steps) *
                       (predicted_bytes_per_step(small_model(), o.batch_size, o.seq_len, lay, 0, 4, 4) -
                        predicted_bytes_per_step(small_model(), o.batch_size, o.seq_len, lay, 0, 4, 2));
  EXPECT_GT(saved, 0.4 * f32_bytes);  // the gradient is most of the traffic
  EXPECT_NEAR(f32_bytes - b16_bytes, saved, 0.01 * saved) << "fp32 " << f32_bytes << " B, bf16 " << b16_bytes << " B";
}

TEST(Train, ZeroOneEqualsDataParallelAndResumesOnAnotherRankCount) {
  Corpus corpus;
  TrainOptions o = options(corpus, corpus.dir / "z", &W());
  const TrainResult ref = one_process(o);
  TrainOptions dp_opt = options(corpus, corpus.dir / "dp", &W());
  const TrainResult dp = train(small_model(), dp_opt);
  o.zero_stage = 1;
  const TrainResult z = train(small_model(), o);
  expect_same_losses(z, dp, 1e-5);
  expect_same_losses(z, ref, 1e-5);
  // The checkpoint holds the whole optimizer state, equal to the plain run's.
  if (W().rank() == 0) {
    const CheckpointData a = load_checkpoint(corpus.dir / "z/ckpt.safetensors");
    const CheckpointData b = load_checkpoint(corpus.dir / "dp/ckpt.safetensors");
    ASSERT_EQ(a.adam_v.size(), b.adam_v.size());
    double max_err = 0;
    for (size_t i = 0; i < a.adam_v.size(); ++i) max_err = std::max(max_err, double(std::abs(a.adam_v[i] - b.adam_v[i])));
    EXPECT_LT(max_err, 1e-9);
  }
  // Stop after 3 steps on every rank, then resume on one rank fewer (or one, from two).
  testing::expect_resumes_on_fewer_ranks(small_model(), options(corpus, "", &W()), corpus.dir / "r", ref);
}

TEST(Train, ContextParallelEqualsOneProcessWithDocumentMasks) {
  Corpus corpus;
  std::vector<int> layouts = {W().size()};  // every rank shares each sequence
  if (W().size() % 2 == 0 && W().size() > 2) layouts.push_back(2);  // 2-way, composed with data parallelism
  for (int cp : layouts) {
    for (AttentionKind kind : {AttentionKind::Flash, AttentionKind::FlashMLA}) {
      SCOPED_TRACE("context parallel " + std::to_string(cp) + ", " + to_string(kind));
      TrainOptions o = options(corpus, corpus.dir / ("cp" + std::to_string(cp)), &W());
      o.document_masking = true;
      o.eot_token = 0;
      o.context_parallel = cp;
      o.attention_tiling = {4, 4};
      o.zero_stage = cp == 2 ? 1 : 0;  // composes with ZeRO-1 too
      GPTConfig m = small_model().with_attention(kind);
      TrainOptions ref_opt = o;
      testing::TempDir mine;
      auto single = dist::make_single_process_comm();
      ref_opt.comm = single.get();
      ref_opt.out_dir = mine / "out";
      ref_opt.context_parallel = 1;
      ref_opt.zero_stage = 0;
      const TrainResult ref = train(m, ref_opt);
      const TrainResult par = train(m, o);
      expect_same_losses(par, ref, 1e-5);
    }
  }
}

TEST(Train, RejectsLayoutsThatDoNotDivide) {
  Corpus corpus;
  TrainOptions o = options(corpus, corpus.dir / "bad", &W());
  o.context_parallel = W().size() + 1;
  EXPECT_THROW(train(small_model(), o), Error);
  o = options(corpus, corpus.dir / "bad", &W());
  o.total_batch_tokens = 2 * 24 * (2 * W().size() + 1);  // not a multiple of B·T·ranks
  EXPECT_THROW(train(small_model(), o), Error);
  o = options(corpus, corpus.dir / "bad", &W());
  o.context_parallel = W().size();
  o.seq_len = 2 * W().size() + 1;  // not a multiple of 2 × ranks
  o.total_batch_tokens = 0;
  EXPECT_THROW(train(small_model(), o), Error);
}

}  // namespace
}  // namespace flashgpt

int main(int argc, char** argv) { return flashgpt::testing::run_tests_on_every_rank(argc, argv, 120); }
