// Data-parallel training on GPUs (cuda/device_comm.h, GPTCuda::reduce_grads), run under mpirun
// with 2 and 3 ranks (tests/CMakeLists.txt), each rank with a GPU of its own: on the CPU emulator
// in every build, where each process emulates one. Each rank's model runs its own micro-batches,
// the ranks sum their gradients, and the sum must be one model's gradient over the whole batch;
// the AdamW steps that follow must keep every rank's weights bit-identical and on the one model's
// path, with the optimizer state whole on every rank or sharded (ZeRO-1). Then whole runs of the
// trainer (`train --device cuda` under mpirun) against one GPU's, data-parallel and
// context-parallel (the ranks sharing each sequence). Every rank runs every test; a failure on any
// rank fails the job.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "flashgpt/core/device.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/half_precision.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/context_parallel_cuda.h"
#include "flashgpt/cuda/device_comm.h"
#include "flashgpt/cuda/device_memory.h"
#include "flashgpt/cuda/gpt_cuda.h"
#include "flashgpt/dist/comm.h"
#include "flashgpt/dist/context_parallel.h"
#include "flashgpt/model/checkpoint.h"
#include "flashgpt/model/gpt.h"
#include "flashgpt/ops/adamw.h"
#include "flashgpt/train/distributed.h"
#include "flashgpt/train/trainer.h"
#include "testing/bf16.h"
#include "testing/device_buffers.h"
#include "testing/errors.h"
#include "testing/mpi_main.h"
#include "testing/distributed_runs.h"

namespace flashgpt {
namespace {

using cuda::DeviceComm;
using cuda::GPTCuda;
using cuda::GpuComm;
using cuda::Precision;
using testing::error_of;

dist::Communicator& W() { return dist::world(); }

#define SKIP_WITHOUT_GPU() \
  if (!cuda::gpu_available()) GTEST_SKIP() << "no GPU: " << probe_devices().why_none

// Rank r holds (r + 1)·i: the sums are whole numbers, exact in fp32 whatever the order.
void expect_sums_in_place(DeviceComm& comm) {
  const int n = W().size(), r = W().rank();
  constexpr int64_t kCount = 1000;
  std::vector<float> mine(kCount), back(kCount, -1.0f);
  for (int64_t i = 0; i < kCount; ++i) mine[static_cast<size_t>(i)] = static_cast<float>((r + 1) * i);
  cuda::DeviceBuffer buf(kCount * sizeof(float));
  buf.upload(mine.data(), kCount * sizeof(float));
  const uint64_t sent = comm.bytes_sent(), host_sent = comm.host().bytes_sent();
  comm.allreduce_sum(buf.as<float>(), kCount);
  comm.allreduce_sum(buf.as<float>(), 0);  // nothing to do, on every rank alike
  // Through host memory the bytes are the host communicator's too, and a total counts them once.
  if (comm.backend() == "host") {
    EXPECT_EQ(comm.host().bytes_sent() - host_sent, comm.bytes_sent() - sent);
    EXPECT_EQ(comm.bytes_sent_beyond_host(), 0u);
  } else {
    EXPECT_EQ(comm.host().bytes_sent(), host_sent) << comm.backend();
    EXPECT_EQ(comm.bytes_sent_beyond_host(), comm.bytes_sent()) << comm.backend();
  }
  buf.download(back.data(), kCount * sizeof(float));
  for (int64_t i = 0; i < kCount; ++i) {
    ASSERT_EQ(back[static_cast<size_t>(i)], static_cast<float>(n * (n + 1) / 2 * i)) << comm.backend() << " " << i;
  }
  EXPECT_EQ(comm.bytes_sent() - sent, static_cast<uint64_t>(2.0 * (n - 1) / n * kCount * sizeof(float)));
  EXPECT_NE(error_of([&] { comm.allreduce_sum(buf.as<float>(), -1); }).find("GPU allreduce"), std::string::npos);

  // ZeRO-1's pair over blocks of 7: the reduce-scatter sums this rank's block (the others are
  // whatever the backend leaves), the all-gather hands every block to every rank.
  constexpr int64_t kShard = 7;
  std::vector<float> blocks(static_cast<size_t>(n * kShard)), got(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) blocks[i] = static_cast<float>((r + 1) * static_cast<int>(i));
  cuda::DeviceBuffer wide(blocks.size() * sizeof(float));
  wide.upload(blocks.data(), blocks.size() * sizeof(float));
  comm.reduce_scatter_sum(wide.as<float>(), kShard);
  wide.download(got.data(), got.size() * sizeof(float));
  for (int64_t i = r * kShard; i < (r + 1) * kShard; ++i) {
    EXPECT_EQ(got[static_cast<size_t>(i)], static_cast<float>(n * (n + 1) / 2 * i)) << comm.backend() << " " << i;
  }
  // Each rank's block now holds its rank number times 1000 plus the position: one all-gather.
  for (int64_t i = r * kShard; i < (r + 1) * kShard; ++i) {
    got[static_cast<size_t>(i)] = static_cast<float>(1000 * r + i);
  }
  wide.upload(got.data(), got.size() * sizeof(float));
  const uint64_t before = comm.bytes_sent();
  comm.allgather(wide.as<float>(), kShard);
  wide.download(got.data(), got.size() * sizeof(float));
  for (int64_t i = 0; i < n * kShard; ++i) {
    EXPECT_EQ(got[static_cast<size_t>(i)], static_cast<float>(1000 * (i / kShard) + i)) << comm.backend() << " " << i;
  }
  EXPECT_EQ(comm.bytes_sent() - before, static_cast<uint64_t>(1.0 * (n - 1) / n * n * kShard * sizeof(float)));
}

TEST(DeviceComm, HostSumsEveryRanksBufferInPlace) {
  SKIP_WITHOUT_GPU();
  ASSERT_GE(W().size(), 2) << "run this binary under mpirun with 2 or more ranks";
  auto comm = DeviceComm::create(W(), GpuComm::Host);
  EXPECT_EQ(comm->backend(), "host");
  EXPECT_EQ(comm->rank(), W().rank());
  EXPECT_EQ(comm->size(), W().size());
  EXPECT_NE(comm->why().find("host memory"), std::string::npos) << comm->why();
  expect_sums_in_place(*comm);
}

// NCCL runs where every rank has a GPU of its own and the library loads; elsewhere every rank
// refuses it alike (none is left waiting in a collective), naming the flag and the reason, and
// auto falls back to host memory saying why.
TEST(DeviceComm, NcclSumsOrEveryRankRefusesItAlike) {
  SKIP_WITHOUT_GPU();
  std::unique_ptr<DeviceComm> nccl;
  const std::string e = error_of([&] { nccl = DeviceComm::create(W(), GpuComm::Nccl); });
  const bool ran = e == "no error";
  const std::vector<int32_t> refused = W().allgather_one<int32_t>(ran ? 0 : 1);
  EXPECT_EQ(std::count(refused.begin(), refused.end(), refused[0]), W().size()) << "the ranks disagree: " << e;
  auto automatic = DeviceComm::create(W(), GpuComm::Auto);
#if defined(FLASHGPT_SIMT)
  EXPECT_NE(e.find("--gpu-comm nccl: the CPU emulator has no NCCL"), std::string::npos) << e;
#endif
  if (ran) {
    EXPECT_EQ(nccl->backend(), "nccl");
    EXPECT_NE(nccl->why().find("NCCL"), std::string::npos) << nccl->why();
    expect_sums_in_place(*nccl);
    EXPECT_EQ(automatic->backend(), "nccl");
  } else {
    EXPECT_EQ(e.rfind("--gpu-comm nccl", 0), 0u) << e;
    EXPECT_EQ(automatic->backend(), "host");
    EXPECT_NE(automatic->why().find("not NCCL: "), std::string::npos) << automatic->why();
  }
  const std::string bad = error_of([] { cuda::parse_gpu_comm("mpi", "--gpu-comm"); });
  EXPECT_NE(bad.find("--gpu-comm: unknown GPU communication 'mpi'"), std::string::npos) << bad;
}

GPTConfig small_model() {
  GPTConfig c;
  c.vocab_size = 61;
  c.block_size = 16;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 32;
  c.attention = AttentionKind::Flash;
  return c;
}

// A batch of `rows` sequences of T tokens, the same on every rank.
struct Batch {
  int64_t rows, T;
  std::vector<int> x, y;
};
Batch whole_batch(const GPTConfig& c, int64_t rows, int64_t T, uint64_t seed) {
  Batch b{rows, T, {}, {}};
  Rng rng(seed);
  for (int64_t i = 0; i < rows * T; ++i) {
    b.x.push_back(static_cast<int>(rng.next_u64() % static_cast<uint64_t>(c.vocab_size)));
    b.y.push_back(static_cast<int>(rng.next_u64() % static_cast<uint64_t>(c.vocab_size)));
  }
  return b;
}

std::vector<float> grads_of(const GPTCuda& m) {
  std::vector<float> g(static_cast<size_t>(m.num_params()));
  m.get_grads(g);
  return g;
}
std::vector<float> params_of(const GPTCuda& m) {
  std::vector<float> p(static_cast<size_t>(m.num_params()));
  m.get_params(p);
  return p;
}

// max |a − b| / max |b|.
double rel_error(const std::vector<float>& a, const std::vector<float>& b) {
  double scale = 0, worst = 0;
  for (float v : b) scale = std::max(scale, static_cast<double>(std::abs(v)));
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  return worst / scale;
}

// The trainer's step on N ranks: each rank's `accum` micro-batches of B sequences (its own rows of
// the whole batch, every rank's micro-batch a at rows (a·N + rank)·B …), losses scaled by
// 1/(accum·N), the gradients summed across ranks; against one model taking the whole batch at once
// on every rank. Three steps, clipped: the gradients (the shard's, under ZeRO-1), their norms and
// the weights after each; then the optimizer state, gathered or whole.
enum class Mode { Plain, Overlapped, Zero };

void expect_data_parallel_equals_one_model(Mode mode) {
  const bool zero = mode == Mode::Zero;
  const int n = W().size(), r = W().rank();
  auto comm = DeviceComm::create(W(), GpuComm::Host);
  const GPTConfig c = small_model();
  constexpr int64_t B = 2, T = 16, kAccum = 2;
  GPT<float> init(c);
  init.init_weights(7);
  GPTCuda one(c, Precision::FP32), dp(c, Precision::FP32);
  one.set_params(init.params());
  dp.set_params(init.params());
  if (zero) dp.shard_optimizer_state(*comm);
  EXPECT_EQ(dp.optimizer_state_sharded(), zero);
  const int64_t P = one.num_params(), shard = (P + n - 1) / n;
  const int64_t lo = std::min(P, r * shard), hi = std::min(P, lo + shard);
  ops::AdamWParams hp;
  hp.lr = 3e-3f;
  hp.weight_decay = 0.1f;
  for (int step = 0; step < 3; ++step) {
    const Batch all = whole_batch(c, B * kAccum * n, T, 100 + static_cast<uint64_t>(step));
    one.zero_grad();
    const double loss_one = one.forward_backward(all.x.data(), all.y.data(), all.rows, T, nullptr, 1.0f);
    double loss_dp = 0;
    if (mode == Mode::Overlapped) {  // the trainer's step
      int64_t a = 0;
      loss_dp = dp.accumulate_gradients(kAccum, comm.get(), [&] {
        const size_t at = static_cast<size_t>(((a++ * n + r) * B) * T);
        return cuda::MicroBatch{all.x.data() + at, all.y.data() + at, nullptr, B, T};
      });
      EXPECT_EQ(a, kAccum);
    } else {  // by hand: the sums after the backward
      dp.zero_grad();
      for (int64_t a = 0; a < kAccum; ++a) {
        const size_t at = static_cast<size_t>(((a * n + r) * B) * T);
        loss_dp += dp.forward_backward(all.x.data() + at, all.y.data() + at, B, T, nullptr,
                                       1.0f / static_cast<float>(kAccum * n)) /
                   kAccum;
      }
    }
    dp.reduce_grads(*comm);
    loss_dp = W().sum(loss_dp) / n;
    EXPECT_NEAR(loss_dp, loss_one, 1e-5 * loss_one) << "step " << step;
    std::vector<float> g_one = grads_of(one), g_dp = grads_of(dp);
    if (zero) {  // only this rank's shard is summed
      g_one = std::vector<float>(g_one.begin() + lo, g_one.begin() + hi);
      g_dp = std::vector<float>(g_dp.begin() + lo, g_dp.begin() + hi);
    }
    EXPECT_LT(rel_error(g_dp, g_one), 1e-5) << "step " << step;
    const double norm_one = std::sqrt(one.grad_sum_squares()), norm_dp = std::sqrt(dp.grad_sum_squares());
    EXPECT_NEAR(norm_dp, norm_one, 1e-5 * norm_one) << "step " << step;
    hp.step = step + 1;
    const float clip = static_cast<float>(std::min(1.0, 0.5 / norm_dp));  // clipping on: the norm must be right
    one.adamw_step(hp, clip);
    dp.adamw_step(hp, clip);
    const std::vector<float> p_dp = params_of(dp);
    // Every rank summed the same values in the same order: the replicas agree to the bit.
    dist::check_same_on_all_ranks(W(), dist::fingerprint(p_dp.data(), p_dp.size() * sizeof(float)),
                                  "the weights after step " + std::to_string(step + 1));
    EXPECT_LT(rel_error(p_dp, params_of(one)), 1e-5) << "step " << step;
  }
  EXPECT_GT(comm->bytes_sent(), 0u);
  // The optimizer state: whole on every rank, or gathered to rank 0 (the others pass nothing).
  std::vector<float> m_one(static_cast<size_t>(P)), v_one(m_one.size());
  one.get_optimizer_state(m_one, v_one);
  const bool receives = !zero || r == 0;
  std::vector<float> m_dp(receives ? m_one.size() : 0), v_dp(m_dp.size());
  dp.get_optimizer_state(m_dp, v_dp);
  if (receives) {
    EXPECT_LT(rel_error(m_dp, m_one), 1e-5);
    EXPECT_LT(rel_error(v_dp, v_one), 1e-5);
  }
  if (!zero) return;
  // Resuming: a new sharded model takes the whole state on every rank, and its next step is the
  // one model's.
  GPTCuda again(c, Precision::FP32);
  again.set_params(params_of(one));
  again.shard_optimizer_state(*comm);
  again.set_optimizer_state(m_one, v_one);
  const Batch all = whole_batch(c, B * n, T, 200);
  one.zero_grad();
  one.forward_backward(all.x.data(), all.y.data(), all.rows, T, nullptr, 1.0f);
  again.zero_grad();
  const size_t at = static_cast<size_t>(r * B * T);
  again.forward_backward(all.x.data() + at, all.y.data() + at, B, T, nullptr, 1.0f / static_cast<float>(n));
  again.reduce_grads(*comm);
  hp.step = 4;
  one.adamw_step(hp, 1.0f);
  again.adamw_step(hp, 1.0f);
  EXPECT_LT(rel_error(params_of(again), params_of(one)), 1e-5) << "the step after resuming";
  EXPECT_NE(error_of([&] { again.shard_optimizer_state(*comm); }).find("already sharded"), std::string::npos);
}

TEST(DataParallel, GradientsAndStepsEqualOneModelOverTheWholeBatch) {
  SKIP_WITHOUT_GPU();
  expect_data_parallel_equals_one_model(Mode::Plain);
}

// The trainer's step (accumulate_gradients): each block's sum started as its backward ends (the
// last micro-batch only), the rest after.
TEST(DataParallel, SumsStartedDuringTheBackwardEqualOneModel) {
  SKIP_WITHOUT_GPU();
  expect_data_parallel_equals_one_model(Mode::Overlapped);
}

// --reduce-dtype bf16 (GPTCuda::set_reduce_precision): each rank's gradient rounded to bf16, the
// ranks' values summed in bf16, the sum widened back. Against the sum worked out here from every
// rank's own gradient: on 2 ranks the one rounded addition is exact to the bit; on more, where the
// order of the additions is MPI's, within a few bf16 roundings. Plain, overlapped with the backward
// and under ZeRO-1 (its own block); half the fp32 sum's bytes; replicas identical.
TEST(DataParallel, GradientsTravelInBf16WhenAsked) {
  SKIP_WITHOUT_GPU();
  const int n = W().size(), r = W().rank();
  auto comm = DeviceComm::create(W(), GpuComm::Host);
  const GPTConfig c = small_model();
  constexpr int64_t B = 2, T = 16;
  GPT<float> init(c);
  init.init_weights(7);
  const Batch all = whole_batch(c, B * n, T, 300);
  const size_t at = static_cast<size_t>(r * B * T);
  const int64_t P = init.num_params(), shard = (P + n - 1) / n;
  for (Mode mode : {Mode::Plain, Mode::Overlapped, Mode::Zero}) {
    SCOPED_TRACE("mode " + std::to_string(static_cast<int>(mode)));
    GPTCuda dp(c, Precision::FP32);
    dp.set_params(init.params());
    dp.set_deterministic(true);  // the overlapped mode's second backward repeats the first's bits
    if (mode == Mode::Zero) dp.shard_optimizer_state(*comm);
    dp.set_reduce_precision(Precision::BF16);
    EXPECT_EQ(dp.reduce_precision(), Precision::BF16);
    auto micro = [&] { return cuda::MicroBatch{all.x.data() + at, all.y.data() + at, nullptr, B, T}; };
    dp.zero_grad();
    dp.forward_backward(all.x.data() + at, all.y.data() + at, B, T, nullptr, 1.0f / static_cast<float>(n));
    const std::vector<float> mine = grads_of(dp);  // before the sum
    // Every rank's gradient, and the sums expected of them.
    std::vector<float> every(static_cast<size_t>(P) * n);
    const std::vector<int64_t> counts(static_cast<size_t>(n), P);
    W().allgather(mine.data(), every.data(), counts, dist::DType::F32);
    std::vector<float> exact(static_cast<size_t>(P), 0.0f), rounded(exact.size());
    for (int64_t i = 0; i < P; ++i) {
      float acc = 0;
      for (int k = 0; k < n; ++k) {
        const float v = bf16_bits_to_float(float_to_bf16_bits(every[static_cast<size_t>(k * P + i)]));
        acc = k == 0 ? v : bf16_bits_to_float(float_to_bf16_bits(acc + v));
        exact[static_cast<size_t>(i)] += every[static_cast<size_t>(k * P + i)];
      }
      rounded[static_cast<size_t>(i)] = acc;
    }
    const uint64_t bytes0 = comm->bytes_sent();
    if (mode == Mode::Overlapped) {  // again, with the blocks' sums started during the backward
      dp.accumulate_gradients(1, comm.get(), micro);
    }
    dp.reduce_grads(*comm);
    const double sent = static_cast<double>(comm->bytes_sent() - bytes0);
    // What the fp32 sum sends (an all-reduce, or ZeRO-1's reduce-scatter of the padded blocks),
    // halved; each collective's count rounds down to whole bytes.
    const double fp32_bytes = mode == Mode::Zero ? 1.0 * (n - 1) / n * 4.0 * static_cast<double>(shard * n)
                                                 : 2.0 * (n - 1) / n * 4.0 * static_cast<double>(P);
    EXPECT_NEAR(sent, fp32_bytes / 2, 64.0);
    std::vector<float> got = grads_of(dp);
    if (mode == Mode::Zero) {  // only this rank's block is summed
      const int64_t lo = std::min(P, r * shard), hi = std::min(P, lo + shard);
      got = std::vector<float>(got.begin() + lo, got.begin() + hi);
      rounded = std::vector<float>(rounded.begin() + lo, rounded.begin() + hi);
      exact = std::vector<float>(exact.begin() + lo, exact.begin() + hi);
    } else {
      dist::check_same_on_all_ranks(W(), dist::fingerprint(got.data(), got.size() * sizeof(float)),
                                    "the gradients summed in bf16");
    }
    if (n == 2) {
      EXPECT_EQ(got, rounded);
    } else {
      EXPECT_LT(rel_error(got, rounded), 1.0 / 64);
    }
    // Rounded, not fp32 sums: off the exact sum by about bf16's precision, and no further.
    const double off = rel_error(got, exact);
    EXPECT_GT(off, 1e-5);
    EXPECT_LT(off, 1.0 / 64);
  }
}

TEST(DataParallel, ZeroOneShardsTheOptimizerStateAndEqualsOneModel) {
  SKIP_WITHOUT_GPU();
  expect_data_parallel_equals_one_model(Mode::Zero);
}

// Context parallelism's collectives on GPUs against the CPU's (dist::ContextParallel) on the same
// rows: the gather assembles every rank's rows in sequence order, bit for bit, from local rows
// laid out chunk-major and `ld` apart; the reduce-scatter hands each rank the sum of its rows over
// the ranks (whole numbers: exact in any order), into rows `ld` apart, the rest of each row
// untouched; bf16 rows travel alike.
template <typename E>
void expect_cp_collectives_match_the_cpus(DeviceComm& comm) {
  const int n = W().size(), r = W().rank();
  const int64_t B = 3, T = 4 * n, width = 5, ld = 7;
  cuda::DeviceContextParallel cp(comm, T);
  ASSERT_EQ(cp.chunk(), 2);
  const int64_t ch = cp.chunk(), rows = B * cp.local_len();
  auto value = [](int64_t i, int rank) { return static_cast<float>((rank + 1) * 1000 + i % 997); };
  // This rank's rows in the CPU's layout [B][2][chunk], and the GPU model's [2][B][chunk] with ld.
  std::vector<float> global_host(static_cast<size_t>(B * T * width));
  for (size_t i = 0; i < global_host.size(); ++i) global_host[i] = static_cast<float>(i % 251) - 100.0f;
  std::vector<float> local(static_cast<size_t>(rows * width));
  cp.host().slice(global_host.data(), local.data(), B, width);
  std::vector<float> local_ld(static_cast<size_t>(rows * ld), -7.0f);
  for (int64_t b = 0; b < B; ++b) {
    for (int j = 0; j < 2; ++j) {
      for (int64_t t = 0; t < ch; ++t) {
        for (int64_t c = 0; c < width; ++c) {
          local_ld[static_cast<size_t>(((j * B + b) * ch + t) * ld + c)] =
              local[static_cast<size_t>(((b * 2 + j) * ch + t) * width + c)];
        }
      }
    }
  }
  auto to_device = [](const std::vector<float>& h) {
    if constexpr (std::is_same_v<E, cuda::bf16>) return testing::up_bf16(h);
    cuda::DeviceBuffer d(h.size() * 4);
    d.upload(h.data(), h.size() * 4);
    return d;
  };
  auto to_host = [](const cuda::DeviceBuffer& d, size_t count) {
    std::vector<float> h(count);
    if constexpr (std::is_same_v<E, cuda::bf16>) {
      std::vector<uint16_t> bits(count);
      d.download(bits.data(), count * 2);
      for (size_t i = 0; i < count; ++i) h[i] = testing::from_bf16(bits[i]);
    } else {
      d.download(h.data(), count * 4);
    }
    return h;
  };
  cuda::DeviceBuffer stage(static_cast<size_t>(cp.stage_floats(B, width)) * 4);
  cuda::DeviceBuffer dlocal = to_device(local_ld), dglobal(static_cast<size_t>(B * T * width) * sizeof(E));
  dglobal.fill_bytes(0xFF);
  cp.gather(dlocal.as<const E>(), ld, dglobal.as<E>(), B, width, stage.as<float>());
  EXPECT_EQ(to_host(dglobal, global_host.size()), global_host) << "gather";

  // Rank k holds (k + 1)·1000 + i % 997 at position i of the whole sequences.
  std::vector<float> mine(global_host.size()), want_global(global_host.size(), 0.0f);
  for (size_t i = 0; i < mine.size(); ++i) {
    mine[i] = value(static_cast<int64_t>(i), r);
    for (int k = 0; k < n; ++k) want_global[i] += value(static_cast<int64_t>(i), k);
  }
  std::vector<float> want(static_cast<size_t>(rows * width));
  cp.host().slice(want_global.data(), want.data(), B, width);
  cuda::DeviceBuffer dmine(mine.size() * 4);
  dmine.upload(mine.data(), mine.size() * 4);
  cuda::DeviceBuffer dout = to_device(std::vector<float>(static_cast<size_t>(rows * ld), -7.0f));
  cp.reduce_scatter(dmine.as<const float>(), dout.as<E>(), ld, B, width, stage.as<float>());
  const std::vector<float> got = to_host(dout, static_cast<size_t>(rows * ld));
  for (int64_t b = 0; b < B; ++b) {
    for (int j = 0; j < 2; ++j) {
      for (int64_t t = 0; t < ch; ++t) {
        for (int64_t c = 0; c < ld; ++c) {
          const float g = got[static_cast<size_t>(((j * B + b) * ch + t) * ld + c)];
          float w = c < width ? want[static_cast<size_t>(((b * 2 + j) * ch + t) * width + c)] : -7.0f;
          if constexpr (std::is_same_v<E, cuda::bf16>) w = testing::round_bf16(w);
          ASSERT_EQ(g, w) << "reduce-scatter: b " << b << " chunk " << j << " row " << t << " column " << c;
        }
      }
    }
  }
}

TEST(ContextParallelOnGpus, GatherAndReduceScatterMatchTheCpus) {
  SKIP_WITHOUT_GPU();
  for (const char* kind : {"auto", "host"}) {
    SCOPED_TRACE(kind);
    auto comm = DeviceComm::create(W(), cuda::parse_gpu_comm(kind, "kind"));
    expect_cp_collectives_match_the_cpus<float>(*comm);
    expect_cp_collectives_match_the_cpus<cuda::bf16>(*comm);
    // A group of part of the ranks (each alone here, when the ranks split in two groups or more).
    auto halves = W().split(W().rank() % 2, W().rank());
    auto group = comm->subgroup(*halves);
    EXPECT_EQ(group->backend(), comm->backend());
    EXPECT_EQ(group->size(), halves->size());
    EXPECT_EQ(group->gpu(), comm->gpu());
    const int64_t odd = 2 * group->size() + 1;  // not a multiple of 2 × ranks
    EXPECT_NE(error_of([&] { cuda::DeviceContextParallel(*group, odd); }).find("--context-parallel"), std::string::npos);
  }
}

// The GPU model under context parallelism (GPTCuda::set_context_parallel): each rank's forward and
// backward over its rows of the sequences give, summed over the ranks, one GPU's loss and every
// gradient over the whole sequences: multi-head, grouped-query and latent attention (with and
// without a rope part, the query latent and the factored value up-projection), both kernels, both
// position schemes, QK-norm, document masks; fp32 and, for the tensor-core kernels, bf16. The
// group sends per layer what predicted_bytes_per_step counts: keys and values, or latent attention's
// latent rows, and their gradients.
TEST(ContextParallelOnGpus, ModelLossAndGradientsEqualOneGpu) {
  SKIP_WITHOUT_GPU();
  const int n = W().size();
  auto comm = DeviceComm::create(W(), GpuComm::Host);
  for (int variant = 0; variant < 10; ++variant) {
    GPTConfig cfg;
    cfg.vocab_size = 61;
    cfg.block_size = 64;
    cfg.n_layer = 2;
    cfg.n_head = 4;
    cfg.n_embd = 32;
    cfg.attention = variant & 1 ? AttentionKind::Flash : AttentionKind::Standard;
    cfg.pos = variant & 2 ? PosKind::Rope : PosKind::Learned;
    cfg.n_kv_head = variant == 2 || variant == 3 ? 2 : 0;
    cfg.qk_norm = variant == 3;
    if (variant == 4 || variant == 5) {  // latent attention: the latent rows are gathered
      cfg.attention = variant == 5 ? AttentionKind::FlashMLA : AttentionKind::MLA;
      cfg.pos = PosKind::Rope;
      cfg.n_latent = 12;
      cfg.qk_norm = variant == 5;
    }
    if (variant == 8) {  // no rope part (c_kv alone), the query latent, v_up factored
      cfg.attention = AttentionKind::MLA;
      cfg.n_latent = 12;
      cfg.q_lora_rank = 8;
      cfg.use_svd = true;
      cfg.svd_rank = 4;
    }
    Precision precision = Precision::FP32;
    if (variant >= 6 && variant != 8) {  // bf16: head dim 64 for the tensor-core kernels
      precision = Precision::BF16;
      cfg.attention = variant == 9 ? AttentionKind::FlashMLA : AttentionKind::Flash;
      cfg.n_embd = 128;
      cfg.n_head = 2;
      cfg.pos = variant != 6 ? PosKind::Rope : PosKind::Learned;
      cfg.qk_norm = variant == 9;  // FlashMLA at 96/64
    }
    const bool documents = variant != 1;
    SCOPED_TRACE("variant " + std::to_string(variant));
    const int64_t B = 2, T = 2 * n * 5;
    GPT<float> init(cfg);
    init.init_weights(7);
    GPTCuda one(cfg, precision), par(cfg, precision);
    one.set_params(init.params());
    par.set_params(init.params());
    Rng rng(11);  // the same tokens on every rank
    std::vector<int> tok(static_cast<size_t>(B * T)), tgt(tok.size());
    for (auto& t : tok) t = static_cast<int>(rng.next_u64() % 61);
    for (auto& t : tgt) t = static_cast<int>(rng.next_u64() % 61);
    tgt[3] = -1;  // an ignored target
    std::vector<int32_t> seg(tok.size());
    for (int64_t i = 0; i < B * T; ++i) seg[static_cast<size_t>(i)] = static_cast<int32_t>((i % T) / 7 + i / T);
    one.zero_grad();
    const double loss_one = one.forward_backward(tok.data(), tgt.data(), B, T, documents ? seg.data() : nullptr);

    cuda::DeviceContextParallel cp(*comm, T);
    par.set_context_parallel(&cp);
    const int64_t Tl = cp.local_len();
    std::vector<int> ltok(static_cast<size_t>(B * Tl)), ltgt(ltok.size());
    std::vector<int32_t> lseg(ltok.size());
    cp.host().slice(tok.data(), ltok.data(), B, 1);
    cp.host().slice(tgt.data(), ltgt.data(), B, 1);
    cp.host().slice(seg.data(), lseg.data(), B, 1);
    // Each rank's rows are its own sequences' worth of rows: a forward of other lengths is refused.
    EXPECT_NE(error_of([&] { par.forward(tok.data(), tgt.data(), B, T); }).find("context parallel"),
              std::string::npos);
    par.zero_grad();
    // The ignored target makes the ranks' counts differ: weight each rank's mean by its count.
    const int64_t mine = std::count_if(ltgt.begin(), ltgt.end(), [](int t) { return t >= 0; });
    const int64_t all = std::count_if(tgt.begin(), tgt.end(), [](int t) { return t >= 0; });
    const double frac = static_cast<double>(mine) / static_cast<double>(all);
    const uint64_t bytes0 = comm->bytes_sent();
    const double local = par.forward_backward(ltok.data(), ltgt.data(), B, Tl, documents ? lseg.data() : nullptr,
                                              static_cast<float>(frac));
    const double sent = static_cast<double>(comm->bytes_sent() - bytes0);
    ParallelLayout lay;
    lay.world = lay.cp = n;
    const double want = predicted_bytes_per_step(cfg, B, T, lay, 0, precision == Precision::BF16 ? 2 : 4) -
                        predicted_bytes_per_step(cfg, B, T, ParallelLayout{.world = n}, 0);
    EXPECT_NEAR(sent, want, 1e-9 * want);
    par.reduce_grads(*comm);
    const double loss = W().sum(local * frac);
    const double tol = precision == Precision::FP32 ? 1e-5 : 2e-2;
    EXPECT_NEAR(loss, loss_one, tol * loss_one);
    EXPECT_LT(rel_error(grads_of(par), grads_of(one)), precision == Precision::FP32 ? 1e-5 : 5e-2);
    par.set_context_parallel(nullptr);  // and back: whole sequences again
    EXPECT_NEAR(par.forward(tok.data(), tgt.data(), B, T, documents ? seg.data() : nullptr), loss_one, tol * loss_one);
  }
}

// --- whole training runs: train() on every rank's GPU ---------------------------------------------

GPTConfig run_model() { return testing::shared_model(); }

// The shared six steps, in fp32 on the GPU.
TrainOptions run_options(const testing::SharedCorpus& corpus, const std::string& out, dist::Communicator* comm) {
  TrainOptions o = testing::shared_options(corpus, out, comm);
  o.device = "cuda";
  o.precision = "fp32";
  return o;
}

// `train --device cuda` under mpirun: data parallel over the ranks' GPUs, with every kind of
// gradient sum the machine has, is the one-GPU run step by step.
TEST(TrainOnGpus, DataParallelRunsEqualOneGpuStepByStep) {
  SKIP_WITHOUT_GPU();
  testing::SharedCorpus corpus;
  const TrainResult ref = testing::run_alone(run_model(), run_options(corpus, "", &W()));
  EXPECT_EQ(ref.device, "cuda");
  EXPECT_LT(ref.losses.back(), ref.losses.front() - 0.1) << "the reference run should learn";
  for (const char* kind : {"auto", "host"}) {
    SCOPED_TRACE(kind);
    TrainOptions o = run_options(corpus, corpus.dir / kind, &W());
    o.gpu_comm = kind;
    const TrainResult dp = train(run_model(), o);
    EXPECT_EQ(dp.device, "cuda");
    testing::expect_same_losses(dp, ref, 1e-5);
    EXPECT_NEAR(dp.final_val_loss, ref.final_val_loss, 1e-5 * ref.final_val_loss);
    EXPECT_GT(dp.bytes_sent, 0u);
  }
}

// ZeRO-1 on GPUs: the same run with the optimizer state sharded; its checkpoint holds the whole
// state, equal to the plain run's, and resumes on one rank fewer (or on one GPU, from two).
TEST(TrainOnGpus, ZeroOneEqualsDataParallelAndResumesOnAnotherRankCount) {
  SKIP_WITHOUT_GPU();
  testing::SharedCorpus corpus;
  const TrainResult dp = train(run_model(), run_options(corpus, corpus.dir / "dp", &W()));
  TrainOptions o = run_options(corpus, corpus.dir / "z", &W());
  o.zero_stage = 1;
  const TrainResult z = train(run_model(), o);
  testing::expect_same_losses(z, dp, 1e-5);
  if (W().rank() == 0) {
    const CheckpointData a = load_checkpoint(corpus.dir / "z/ckpt.safetensors");
    const CheckpointData b = load_checkpoint(corpus.dir / "dp/ckpt.safetensors");
    ASSERT_EQ(a.adam_m.size(), b.adam_m.size());
    ASSERT_EQ(a.adam_v.size(), b.adam_v.size());
    // The reduce-scatter adds the ranks' gradients in another order than the all-reduce, and six
    // AdamW steps amplify that rounding (6e-5 of the largest moment at 3 ranks, 3e-7 at 2); a state
    // lost or misplaced in the gather is off by its whole size.
    auto rel_diff = [](const std::vector<float>& x, const std::vector<float>& y) {
      double err = 0, big = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        err = std::max(err, double(std::abs(x[i] - y[i])));
        big = std::max(big, double(std::abs(y[i])));
      }
      return err / big;
    };
    EXPECT_LT(rel_diff(a.adam_m, b.adam_m), 1e-3);
    EXPECT_LT(rel_diff(a.adam_v, b.adam_v), 1e-3);
    EXPECT_LT(rel_diff(a.params, b.params), 1e-3);
  }
  testing::expect_resumes_on_fewer_ranks(run_model(), run_options(corpus, "", &W()), corpus.dir / "r", dp);
}

// `train --device cuda --context-parallel N` under mpirun: every rank shares each sequence, and the
// run is the one-GPU run step by step, for the multi-head mechanisms with grouped-query heads,
// RoPE and QK-norm, latent attention with decoupled RoPE, and the standard kernel (with ZeRO-1 over
// every rank beside the context-parallel group), all with document masks; and in bf16, where the
// chunks' attention and the summed key gradients round differently, close to it.
TEST(TrainOnGpus, ContextParallelRunsEqualOneGpuStepByStep) {
  SKIP_WITHOUT_GPU();
  testing::SharedCorpus corpus;
  struct Case {
    const char* name;
    GPTConfig model;
    const char* precision;
    double tol;
    int zero = 0;
  };
  GPTConfig gqa = run_model().with_attention(AttentionKind::Flash);
  gqa.n_head = 4;
  gqa.n_kv_head = 2;
  gqa.pos = PosKind::Rope;
  gqa.qk_norm = true;
  GPTConfig mla = run_model().with_attention(AttentionKind::FlashMLA);
  mla.pos = PosKind::Rope;
  GPTConfig standard = run_model().with_attention(AttentionKind::Standard);
  GPTConfig wide = run_model().with_attention(AttentionKind::Flash);  // head dim 64: the tensor-core kernels
  wide.n_embd = 128;
  const std::vector<Case> cases = {{"flash, GQA, RoPE, QK-norm", gqa, "fp32", 1e-5},
                                   {"flash_mla, RoPE", mla, "fp32", 1e-5},
                                   {"standard, ZeRO-1", standard, "fp32", 1e-5, 1},
                                   {"flash bf16", wide, "bf16", 2e-2}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    TrainOptions o = run_options(corpus, corpus.dir / "cp", &W());
    o.precision = c.precision;
    o.document_masking = true;
    o.eot_token = 0;
    o.total_batch_tokens = 2 * 24 * 4;  // a third of the shared batch: every rank runs the reference too
    if (o.precision == "bf16") o.max_steps = 3;  // the emulated tensor-core kernels are slow
    const TrainResult ref = testing::run_alone(c.model, o);
    o.context_parallel = W().size();
    o.zero_stage = c.zero;
    const TrainResult cp = train(c.model, o);
    EXPECT_EQ(cp.device, "cuda");
    EXPECT_LT(cp.losses.back(), cp.losses.front() - 0.1) << "the run should learn";
    testing::expect_same_losses(cp, ref, c.tol);
    EXPECT_NEAR(cp.final_val_loss, ref.final_val_loss, c.tol * ref.final_val_loss);
    EXPECT_GT(cp.bytes_sent, 0u);
  }
  // cuDNN's attention does not take part.
  TrainOptions o = run_options(corpus, corpus.dir / "cudnn", &W());
  o.context_parallel = W().size();
  o.precision = "bf16";
  o.attention_backend = "cudnn";
  EXPECT_NE(error_of([&] { train(wide, o); }).find("--context-parallel"), std::string::npos);
}

}  // namespace
}  // namespace flashgpt

int main(int argc, char** argv) { return flashgpt::testing::run_tests_on_every_rank(argc, argv, 300); }
