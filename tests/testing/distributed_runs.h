// What the training tests under mpirun share (test_distributed on the CPU, test_distributed_cuda
// on the ranks' GPUs): a directory every rank sees, a corpus of random tokens written once into it,
// one small run of `train()` on it, the same run in this process alone, and the comparisons.
#pragma once

#include <unistd.h>

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "flashgpt/core/rng.h"
#include "flashgpt/data/shard.h"
#include "flashgpt/dist/comm.h"
#include "flashgpt/model/config.h"
#include "flashgpt/train/trainer.h"
#include "testing/temp_dir.h"

namespace flashgpt::testing {

// Rank 0 makes the directory and tells the others; rank 0 removes it once every rank is done.
class SharedDir {
 public:
  SharedDir() {
    char buf[256] = {};
    if (dist::world().rank() == 0) {
      static int counter = 0;
      path_ = std::filesystem::temp_directory_path() /
              ("flashgpt-dist-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
      std::filesystem::remove_all(path_);
      std::filesystem::create_directories(path_);
      std::snprintf(buf, sizeof buf, "%s", path_.c_str());
    }
    dist::world().broadcast(buf, sizeof buf, 0);
    path_ = buf;
  }
  ~SharedDir() {
    dist::world().arrive("test cleanup", 0);
    std::error_code ec;
    if (dist::world().rank() == 0) std::filesystem::remove_all(path_, ec);
  }
  SharedDir(const SharedDir&) = delete;
  SharedDir& operator=(const SharedDir&) = delete;
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// Random tokens over a vocabulary of 50: enough that no run of these tests leaves the first shard.
struct SharedCorpus {
  SharedDir dir;
  std::string train, val;
  SharedCorpus() {
    train = dir / "train.bin";
    val = dir / "val.bin";
    if (dist::world().rank() == 0) {
      Rng rng(5);
      std::vector<int> ids(60000);
      for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int>((i * 7 + rng.next_u64() % 5) % 50);
      write_shard(train, ids);
      write_shard(val, std::span<const int>(ids.data(), 20000));
    }
    dist::world().arrive("corpus written", 0);
  }
};

// The tiny preset over the corpus's 50 tokens.
inline GPTConfig shared_model() {
  GPTConfig c = GPTConfig::preset("tiny");
  c.vocab_size = 50;
  c.block_size = 48;
  return c;
}

// Six steps of 12 sequences of 24 tokens, micro-batches of 2 (divisible among 1, 2, 3 and 4
// data-parallel ranks), validated every third step, the replicas' weights compared every step.
inline TrainOptions shared_options(const SharedCorpus& corpus, const std::string& out, dist::Communicator* comm) {
  TrainOptions o;
  o.train_data = corpus.train;
  o.val_data = corpus.val;
  o.batch_size = 2;
  o.seq_len = 24;
  o.total_batch_tokens = 2 * 24 * 12;
  o.max_steps = 6;
  o.lr.lr = 3e-3;
  o.lr.warmup_steps = 2;
  o.val_every = 3;
  o.val_batches = 6;
  o.out_dir = out;
  o.progress_bar = false;
  o.seed = 9;
  o.comm = comm;
  o.check_weights_every = 1;
  return o;
}

// The same run in this process alone, on the same device (every rank computes it privately).
inline TrainResult run_alone(const GPTConfig& model, TrainOptions o) {
  TempDir mine;
  auto single = dist::make_single_process_comm();
  o.comm = single.get();
  o.out_dir = mine / "out";
  o.zero_stage = 0;
  o.context_parallel = 1;
  return train(model, o);
}

// Step by step: the losses and the gradient norms (which a wrongly scaled average would change
// while AdamW, being scale-free, would hide it in the losses).
inline void expect_same_losses(const TrainResult& got, const TrainResult& want, double tol) {
  ASSERT_EQ(got.losses.size(), want.losses.size());
  ASSERT_EQ(got.grad_norms.size(), want.grad_norms.size());
  for (size_t s = 0; s < want.losses.size(); ++s) {
    EXPECT_NEAR(got.losses[s], want.losses[s], tol * std::abs(want.losses[s])) << "step " << s + 1;
    EXPECT_NEAR(got.grad_norms[s], want.grad_norms[s], 10 * tol * want.grad_norms[s]) << "step " << s + 1;
  }
}

// `base` (ZeRO-1, into `out`) stopped after 3 steps on every rank, then resumed on one rank fewer
// (or on one, from two): its last 3 steps are those of `want`, a whole run of the same schedule.
inline void expect_resumes_on_fewer_ranks(const GPTConfig& model, TrainOptions base, const std::string& out,
                                          const TrainResult& want) {
  dist::Communicator& w = dist::world();
  base.out_dir = out;
  base.comm = &w;
  base.zero_stage = 1;
  base.stop_at_step = 3;
  EXPECT_EQ(train(model, base).steps, 3);
  const int fewer = w.size() - 1;
  auto sub = w.split(w.rank() < fewer ? 0 : 1, w.rank());
  if (w.rank() < fewer) {
    base.comm = sub.get();
    base.stop_at_step = 0;
    base.resume = out + "/ckpt.safetensors";
    const TrainResult rest = train(model, base);
    ASSERT_EQ(rest.losses.size(), 3u);
    for (size_t s = 0; s < 3; ++s) EXPECT_NEAR(rest.losses[s], want.losses[s + 3], 1e-5 * want.losses[s + 3]) << s;
  }
  w.arrive("resumed", 0);
}

}  // namespace flashgpt::testing
