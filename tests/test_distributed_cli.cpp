// `mpirun -np N flashgpt train …` as a user runs it: the same losses as one process with only rank
// 0 writing, one error line for a bad layout or mismatched ranks, and a dead or hung rank ending
// the whole job in bounded time with the last checkpoint still good. Skipped without MPI.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "flashgpt/core/device.h"
#include "flashgpt/core/io.h"
#include "flashgpt/data/shard.h"
#include "flashgpt/model/checkpoint.h"
#include "flashgpt/tokenizer/tokenizer.h"
#include "testing/run.h"
#include "testing/temp_dir.h"

namespace flashgpt {
namespace {

using testing::run_command;
using testing::RunResult;
using testing::shell_quote;

#ifdef FLASHGPT_MPIEXEC
constexpr const char* kMpiexec = FLASHGPT_MPIEXEC;
#else
constexpr const char* kMpiexec = "";
#endif

std::string mpirun(int ranks) {
  return fmt::format("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 {} -np {} {}",
                     kMpiexec, ranks, FLASHGPT_MPIEXEC_OVERSUBSCRIBE);
}

class DistributedCli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string(kMpiexec).empty()) GTEST_SKIP() << "built without MPI";
    std::string text;
    const char* lines[] = {"the cat sat on the mat. ", "a dog ran in the park! ", "birds sing at dawn; "};
    for (int i = 0; i < 600; ++i) text += lines[i % 3];
    auto tok = train_char_tokenizer(text);
    const std::vector<int> ids = tok->encode(text);
    write_shard(dir / "train_000.bin", ids);
    write_shard(dir / "val_000.bin", std::span<const int>(ids.data(), 4000));
    save_tokenizer(*tok, dir / "tokenizer.json");
  }
  // A tiny model and schedule; extra flags appended (batch: `batch` sequences per rank).
  std::string train_args(const std::string& out, const std::string& extra = "", int batch = 2) const {
    return fmt::format("train --data {} --preset tiny --block-size 32 -b {} -t 32 --total-batch-size 256 --lr 3e-3 "
                       "--val-every 4 --val-batches 4 --no-progress --out {} {}",
                       shell_quote(dir.str()), batch, shell_quote(out), extra);
  }
  testing::TempDir dir;
};

std::map<int64_t, double> losses(const std::string& metrics) {
  std::map<int64_t, double> m;
  std::istringstream in(read_text_file(metrics));
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) m[j["step"]] = j["loss"];
  }
  return m;
}

int count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST_F(DistributedCli, TwoRanksTrainLikeOneProcessAndOnlyRankZeroWrites) {
  const RunResult one = testing::run_flashgpt(train_args(dir / "one", "-n 6"));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  const RunResult two = run_command(mpirun(2) + " " + FLASHGPT_BINARY + " " + train_args(dir / "two", "-n 6 --zero 1"));
  ASSERT_EQ(two.exit_code, 0) << two.output;
  EXPECT_EQ(count(two.output, "trained 6 steps"), 1) << two.output;
  EXPECT_NE(two.output.find("ranks: 2 (2 data-parallel, ZeRO-1 optimizer shards), over mpi"), std::string::npos)
      << two.output;
  const auto a = losses(dir / "one/metrics.jsonl"), b = losses(dir / "two/metrics.jsonl");
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 6u);
  for (const auto& [step, loss] : a) EXPECT_NEAR(b.at(step), loss, 1e-5 * loss) << "step " << step;
  // The gradients in bf16: said once, the losses one process's to bf16's rounding of the sums, and
  // the benchmark's traffic the bf16 prediction (half the fp32 all-reduce).
  const RunResult half =
      run_command(mpirun(2) + " " + FLASHGPT_BINARY + " " + train_args(dir / "half", "-n 6 --reduce-dtype bf16"));
  ASSERT_EQ(half.exit_code, 0) << half.output;
  EXPECT_EQ(count(half.output, "gradients travel between the ranks in bf16"), 1) << half.output;
  const auto h = losses(dir / "half/metrics.jsonl");
  ASSERT_EQ(h.size(), 6u);
  for (const auto& [step, loss] : a) EXPECT_NEAR(h.at(step), loss, 1e-2 * loss) << "step " << step;
  const RunResult bench = run_command(mpirun(2) + " " + FLASHGPT_BINARY +
                                      " bench train --preset tiny -b 2 -t 32 --steps 2 --warmup 1 --gemm-size 64 "
                                      "--reduce-dtype bf16 --json");
  ASSERT_EQ(bench.exit_code, 0) << bench.output;
  const nlohmann::json j = nlohmann::json::parse(bench.output.substr(bench.output.find('{')));
  EXPECT_EQ(j["reduce_dtype"].get<std::string>(), "bf16") << bench.output;
  // (N−1)/N · 2 · P values of 2 bytes.
  const double want = 0.5 * 2 * static_cast<double>(model_stats(GPTConfig::preset("tiny")).n_params) * 2.0;
  EXPECT_NEAR(j["comm_bytes_per_step_predicted"].get<double>(), want, 1e-9 * want) << bench.output;
  EXPECT_GE(j["comm_bytes_per_step"].get<double>(), want) << bench.output;
  EXPECT_LT(j["comm_bytes_per_step"].get<double>(), 1.01 * want) << bench.output;
  // The checkpoint holds the whole optimizer state and resumes in one process.
  const RunResult resumed = testing::run_flashgpt(
      train_args(dir / "two", "-n 8 --resume " + shell_quote(dir / "two/ckpt.safetensors")));
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
}

TEST_F(DistributedCli, ABadLayoutIsOneErrorLine) {
  const RunResult r =
      run_command(mpirun(2) + " " + FLASHGPT_BINARY + " " + train_args(dir / "bad", "-n 2 --context-parallel 3"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(count(r.output, "flashgpt: error:"), 1) << r.output;
  EXPECT_NE(r.output.find("--context-parallel 3: needs a multiple of 3 processes, but this run has 2"),
            std::string::npos)
      << r.output;
  const RunResult single = testing::run_flashgpt(train_args(dir / "bad", "-n 2 --context-parallel 2"));
  EXPECT_NE(single.exit_code, 0);
  EXPECT_NE(single.output.find("mpirun -np 2"), std::string::npos) << single.output;
}

// GPU ranks: a bad --gpu-comm is one error line; without a GPU, --device cuda is one error line
// and auto trains on the CPU, saying so once. (With GPUs, tests/test_distributed_cuda.cpp.)
TEST_F(DistributedCli, GpuRanksWithoutAGpuSayWhyOnce) {
  const std::string two = mpirun(2) + " " + FLASHGPT_BINARY + " ";
  const RunResult bad = run_command(two + train_args(dir / "g", "-n 2 --device auto --gpu-comm mpi"));
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_EQ(count(bad.output, "--gpu-comm"), 1) << bad.output;
  const RunResult cpu = run_command(two + train_args(dir / "g", "-n 2 --device cpu --gpu-comm nccl"));
  EXPECT_NE(cpu.exit_code, 0);
  EXPECT_NE(cpu.output.find("--gpu-comm nccl: a GPU option"), std::string::npos) << cpu.output;
  EXPECT_EQ(count(cpu.output, "flashgpt: error:"), 1) << cpu.output;
  if (!probe_devices().gpus.empty()) GTEST_SKIP() << "this machine has a GPU";
  const RunResult cuda = run_command(two + train_args(dir / "g", "-n 2 --device cuda --gpu-comm nccl"));
  EXPECT_NE(cuda.exit_code, 0);
  EXPECT_EQ(count(cuda.output, "flashgpt: error:"), 1) << cuda.output;
  EXPECT_NE(cuda.output.find("--device cuda: "), std::string::npos) << cuda.output;
  const RunResult automatic = run_command(two + train_args(dir / "g", "-n 2 --device auto"));
  ASSERT_EQ(automatic.exit_code, 0) << automatic.output;
  EXPECT_EQ(count(automatic.output, "device: cpu (--device auto: "), 1) << automatic.output;
  EXPECT_EQ(automatic.output.find("gradients summed"), std::string::npos) << automatic.output;
}

// GPU ranks on the command line, each an emulated GPU (the command line built over the CPU
// emulator, in every CUDA build): `mpirun -np 2 … train --device cuda --zero 1` trains like one GPU,
// saying once how it sums, with the gradient traffic of a ring each step; `bench train` under
// mpirun measures the same traffic, and its prediction agrees.
TEST_F(DistributedCli, GpuRanksTrainLikeOneGpuAndBenchTheirTraffic) {
#ifndef FLASHGPT_EMULATED_BINARY
  GTEST_SKIP() << "no emulated GPU command line in this build";
#else
  const std::string bin = std::string("ASAN_OPTIONS=detect_leaks=0 ") + FLASHGPT_EMULATED_BINARY + " ";
  const std::string gpu = "-n 6 --device cuda --precision fp32";
  const RunResult one = run_command("OMP_NUM_THREADS=1 " + bin + train_args(dir / "one", gpu));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  const RunResult two = run_command("ASAN_OPTIONS=detect_leaks=0 " + mpirun(2) + " " + FLASHGPT_EMULATED_BINARY + " " +
                                    train_args(dir / "two", gpu + " --zero 1"));
  ASSERT_EQ(two.exit_code, 0) << two.output;
  EXPECT_EQ(count(two.output, "device: cuda:0 (CPU emulator"), 1) << two.output;
  EXPECT_EQ(count(two.output, "gradients summed through host memory"), 1) << two.output;
  EXPECT_EQ(count(two.output, "trained 6 steps"), 1) << two.output;
  const auto a = losses(dir / "one/metrics.jsonl"), b = losses(dir / "two/metrics.jsonl");
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 6u);
  for (const auto& [step, loss] : a) EXPECT_NEAR(b.at(step), loss, 1e-5 * loss) << "step " << step;
  // ZeRO-1 over 2 ranks: a reduce-scatter and an all-gather of the fp32 parameters, each sending
  // half of them, plus a few scalars (the loss, the norm).
  const CheckpointData ck = load_checkpoint(dir / "two/ckpt.safetensors");
  const double ring = 2 * 0.5 * 4.0 * static_cast<double>(ck.params.size());
  // Each of the 6 steps' comm_bytes in a run's metrics within 1% above `want`.
  auto expect_step_bytes = [](const std::string& metrics, double want) {
    std::istringstream in(read_text_file(metrics));
    int steps = 0;
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line);
      if (!j.contains("comm_bytes")) continue;
      ++steps;
      EXPECT_GE(j["comm_bytes"].get<double>(), want) << line;
      EXPECT_LT(j["comm_bytes"].get<double>(), 1.01 * want) << line;
    }
    EXPECT_EQ(steps, 6) << metrics;
  };
  expect_step_bytes(dir / "two/metrics.jsonl", ring);
  // The gradients in bf16: half the bytes, the losses one GPU's to bf16's rounding of the sums.
  const RunResult half = run_command("ASAN_OPTIONS=detect_leaks=0 " + mpirun(2) + " " + FLASHGPT_EMULATED_BINARY + " " +
                                     train_args(dir / "half", gpu + " --reduce-dtype bf16"));
  ASSERT_EQ(half.exit_code, 0) << half.output;
  EXPECT_EQ(count(half.output, "gradients travel between the ranks in bf16"), 1) << half.output;
  const auto h = losses(dir / "half/metrics.jsonl");
  ASSERT_EQ(h.size(), 6u);
  for (const auto& [step, loss] : a) EXPECT_NEAR(h.at(step), loss, 1e-2 * loss) << "step " << step;
  expect_step_bytes(dir / "half/metrics.jsonl", ring / 2);
  // Context parallelism: both GPUs share each sequence, and train like the one. Each step sends the
  // gradient's all-reduce (half of it each way) and, per layer and micro-batch (4 of B·T = 2·32
  // tokens), the gathers of the keys and values and the reduce-scatters of their gradients, half
  // of the [B, T, kv_dim] fp32 values each.
  const RunResult cp = run_command("ASAN_OPTIONS=detect_leaks=0 " + mpirun(2) + " " + FLASHGPT_EMULATED_BINARY + " " +
                                   train_args(dir / "cp", gpu + " --context-parallel 2"));
  ASSERT_EQ(cp.exit_code, 0) << cp.output;
  EXPECT_EQ(count(cp.output, "1 data-parallel × 2 context-parallel"), 1) << cp.output;
  const auto c = losses(dir / "cp/metrics.jsonl");
  ASSERT_EQ(c.size(), 6u);
  for (const auto& [step, loss] : a) EXPECT_NEAR(c.at(step), loss, 1e-5 * loss) << "step " << step;
  const GPTConfig tiny = GPTConfig::preset("tiny");
  expect_step_bytes(dir / "cp/metrics.jsonl", ring + tiny.n_layer * 4 * 4 * 0.5 * (2 * 32 * tiny.kv_dim()) * 4.0);
  // The benchmark's figures for the same layout: every rank alone, then together.
  const RunResult bench = run_command("ASAN_OPTIONS=detect_leaks=0 " + mpirun(2) + " " + FLASHGPT_EMULATED_BINARY +
                                      " bench train --device cuda --precision fp32 --preset tiny -b 2 -t 32 --steps 2 "
                                      "--warmup 1 --zero 1 --json");
  ASSERT_EQ(bench.exit_code, 0) << bench.output;
  const nlohmann::json j = nlohmann::json::parse(bench.output.substr(bench.output.find('{')));
  EXPECT_EQ(j["ranks"].get<int>(), 2) << bench.output;
  EXPECT_EQ(j["gpu_comm"].get<std::string>(), "host") << bench.output;
  EXPECT_GT(j["scaling_efficiency"].get<double>(), 0.0) << bench.output;
  const double bytes = j["comm_bytes_per_step"].get<double>(), predicted = j["comm_bytes_per_step_predicted"];
  EXPECT_GE(bytes, predicted) << bench.output;
  EXPECT_LT(bytes, 1.01 * predicted) << bench.output;
  // And with both GPUs sharing each sequence, the gradients travelling in bf16: half the gradient's
  // all-reduce, plus the keys' and values' traffic as the train run above sent it.
  const RunResult bench_cp = run_command("ASAN_OPTIONS=detect_leaks=0 " + mpirun(2) + " " + FLASHGPT_EMULATED_BINARY +
                                         " bench train --device cuda --precision fp32 --preset tiny -b 2 -t 32 "
                                         "--steps 2 --warmup 1 --context-parallel 2 --reduce-dtype bf16 --json");
  ASSERT_EQ(bench_cp.exit_code, 0) << bench_cp.output;
  const nlohmann::json k = nlohmann::json::parse(bench_cp.output.substr(bench_cp.output.find('{')));
  EXPECT_EQ(k["context_parallel"].get<int>(), 2) << bench_cp.output;
  EXPECT_EQ(k["data_parallel"].get<int>(), 1) << bench_cp.output;
  EXPECT_GT(k["scaling_efficiency"].get<double>(), 0.0) << bench_cp.output;
  const double cp_bytes = k["comm_bytes_per_step"].get<double>();
  EXPECT_EQ(k["reduce_dtype"].get<std::string>(), "bf16") << bench_cp.output;
  const double cp_want = predicted / 2 + tiny.n_layer * 4 * 0.5 * (2 * 32 * tiny.kv_dim()) * 4.0;
  EXPECT_NEAR(k["comm_bytes_per_step_predicted"].get<double>(), cp_want, 1e-9 * cp_want) << bench_cp.output;
  EXPECT_GE(cp_bytes, cp_want) << bench_cp.output;
  EXPECT_LT(cp_bytes, 1.01 * cp_want) << bench_cp.output;
#endif
}

TEST_F(DistributedCli, RanksWithDifferentConfigsAreRefused) {
  const std::string bin = FLASHGPT_BINARY;
  const RunResult r = run_command(mpirun(1) + " " + bin + " " + train_args(dir / "mm", "-n 2") + " : -np 1 " + bin +
                                  " " + train_args(dir / "mm", "-n 2 --n-embd 64"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("the model config and training options differ across ranks: rank 1"), std::string::npos)
      << r.output;
}

// Starts a long run, waits for its first checkpoint, then does `action` to rank 1's process.
RunResult disturb_rank_one(const std::string& command, const std::string& ckpt, const std::string& action,
                           const std::string& log) {
  const std::string script = fmt::format(
      "{} > {} 2>&1 &\n"
      "job=$!\n"
      "for i in $(seq 1 600); do [ -f {} ] && break; kill -0 $job 2>/dev/null || break; sleep 0.1; done\n"
      "sleep 0.5\n"
      "victim=\n"
      "for p in $(pgrep -P $job); do\n"
      "  if tr '\\0' '\\n' < /proc/$p/environ | grep -qx OMPI_COMM_WORLD_RANK=1; then victim=$p; fi\n"
      "done\n"
      "[ -n \"$victim\" ] || {{ echo 'no rank 1 found'; cat {}; kill -9 $job; exit 90; }}\n"
      "kill -{} $victim\n"
      "start=$SECONDS\n"
      "for i in $(seq 1 900); do kill -0 $job 2>/dev/null || break; sleep 0.1; done\n"
      "kill -9 $job $victim 2>/dev/null\n"
      "wait $job; rc=$?\n"
      "echo \"job ended: exit $rc after $((SECONDS - start)) s\"\n"
      "cat {}\n"
      "[ $rc -ne 0 ]",
      command, shell_quote(log), shell_quote(ckpt), shell_quote(log), action, shell_quote(log));
  return run_command(script);
}

int seconds_to_end(const std::string& output) {
  const size_t at = output.find("job ended: exit ");
  if (at == std::string::npos) return -1;
  const size_t after = output.find(" after ", at);
  return std::stoi(output.substr(after + 7));
}

TEST_F(DistributedCli, AKilledRankEndsTheJobAndTheLastCheckpointResumes) {
  const std::string out = dir / "killed";
  const RunResult r = disturb_rank_one(
      mpirun(2) + " " + FLASHGPT_BINARY + " " + train_args(out, "-n 1000000 --save-every 20"),
      out + "/ckpt.safetensors", "KILL", dir / "killed.log");
  ASSERT_EQ(r.exit_code, 0) << r.output;  // the script's own check: the job ended non-zero
  EXPECT_GE(seconds_to_end(r.output), 0) << r.output;
  EXPECT_LE(seconds_to_end(r.output), 60) << r.output;
  EXPECT_NE(r.output.find("rank 1"), std::string::npos) << r.output;  // the launcher names the dead rank
  const CheckpointData c = load_checkpoint(out + "/ckpt.safetensors");
  const int64_t step = c.train_state.at("step").get<int64_t>();
  EXPECT_EQ(step % 20, 0);
  const RunResult resumed = testing::run_flashgpt(train_args(
      dir / "resumed", fmt::format("-n {} --resume {}", step + 2, shell_quote(out + "/ckpt.safetensors"))));
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find(fmt::format("trained {} steps", step + 2)), std::string::npos) << resumed.output;
}

TEST_F(DistributedCli, AHungRankEndsTheJobWithinTheTimeout) {
  const std::string out = dir / "hung";
  const RunResult r = disturb_rank_one(mpirun(2) + " " + FLASHGPT_BINARY + " " +
                                           train_args(out, "-n 1000000 --save-every 20 --comm-timeout 3 --n-layer 4 "
                                                           "--n-embd 128", 4),
                                       out + "/ckpt.safetensors", "STOP", dir / "hung.log");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const int seconds = seconds_to_end(r.output);
  EXPECT_GE(seconds, 2) << r.output;  // it waited for the timeout…
  EXPECT_LE(seconds, 40) << r.output;  // …and not much longer
  // Rank 0 names the rank when the hang caught it computing (nearly always); a hang inside a
  // collective is reported by the waiting rank with where it waited.
  const bool named = r.output.find("rank 1 did not reach the gradient reduction") != std::string::npos;
  const bool waited = r.output.find("for the other ranks in") != std::string::npos;
  EXPECT_TRUE(named || waited) << r.output;
  EXPECT_NO_THROW(load_checkpoint(out + "/ckpt.safetensors"));
}

}  // namespace
}  // namespace flashgpt
