// The flashgpt command line end to end: a whole pipeline, --help, and bad input of every kind,
// each of which must give exactly one error line naming the file or flag, and a non-zero exit.
#include <gtest/gtest.h>

#include <csignal>
#include <nlohmann/json.hpp>

#include <sstream>
#include <thread>

#include "flashgpt/core/device.h"
#include "flashgpt/core/io.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "testing/run.h"
#include "testing/temp_dir.h"

namespace flashgpt {
namespace {

using testing::run_flashgpt;
using testing::RunResult;

// A failed command ends with exactly one error line (after any progress it printed) that names
// the problem, and exits non-zero.
void expect_one_error_line(const RunResult& r, const std::string& needle) {
  EXPECT_NE(r.exit_code, 0) << r.output;
  const std::string prefix = "flashgpt: error: ";
  const size_t first = r.output.find(prefix);
  ASSERT_NE(first, std::string::npos) << r.output;
  EXPECT_TRUE(first == 0 || r.output[first - 1] == '\n') << r.output;
  EXPECT_EQ(r.output.find(prefix, first + 1), std::string::npos) << "more than one error line: " << r.output;
  const std::string error_line = r.output.substr(first);
  EXPECT_EQ(testing::count_lines(error_line), 1) << "the error is not the last line: " << r.output;
  EXPECT_NE(error_line.find(needle), std::string::npos) << "expected '" << needle << "' in: " << r.output;
}

const char* kCorpus =
    "Once upon a time there was a small model.\n%\nIt learned to write one character at a time.\n%\n"
    "Every night it read the same stories again.\n%\nAnd every morning it wrote a little better.\n";

struct Pipeline : ::testing::Test {
  testing::TempDir dir;
  void SetUp() override {
    std::string text;
    for (int i = 0; i < 30; ++i) text += kCorpus;
    write_text_file_atomic(dir / "corpus.txt", text);
  }
  std::string prepare() {
    RunResult r = run_flashgpt("prepare " + (dir / "corpus.txt") + " --out " + (dir / "data") +
                               " --tokenizer char --doc-separator $'\\n%\\n' --val-fraction 0.1");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return dir / "data";
  }
  std::string train_tiny(const std::string& extra = "") {
    RunResult r = run_flashgpt("train --data " + prepare() + " --preset tiny -b 2 -t 32 --steps 6 --val-every 3 " +
                               "--val-batches 1 --out " + (dir / "run") + " --no-progress " + extra);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return dir / "run/ckpt.safetensors";
  }
};

TEST_F(Pipeline, PrepareTrainSampleEvalInfoConvertPlot) {
  const std::string ckpt = train_tiny("--sample-every 3 --sample-tokens 8");
  EXPECT_TRUE(file_exists(ckpt));
  RunResult s = run_flashgpt("sample -c " + ckpt + " -p 'Once upon' -n 12 --seed 3 --top-k 5");
  ASSERT_EQ(s.exit_code, 0) << s.output;
  EXPECT_NE(s.output.find("tokens/s"), std::string::npos);  // on stderr, with the device line
  // The text alone on stdout, the prompt first.
  const std::string text = run_flashgpt("sample -c " + ckpt + " -p 'Once upon' -n 12 --seed 3 --top-k 5 2>/dev/null").output;
  EXPECT_EQ(text.rfind("Once upon", 0), 0u) << text;
  // Same seed, same text.
  EXPECT_EQ(run_flashgpt("sample -c " + ckpt + " -p 'Once upon' -n 12 --seed 3 --top-k 5 2>/dev/null").output,
            run_flashgpt("sample -c " + ckpt + " -p 'Once upon' -n 12 --seed 3 --top-k 5 2>/dev/null").output);
  // Several samples decoded together — all at once, or two at a time with the third taking the
  // first freed place — print what they print one at a time, sample 1 what a single sample
  // prints, and the closing line counts them.
  const std::string three = "sample -c " + ckpt + " -p 'Once upon' -n 12 --seed 3 --top-k 5 --num-samples 3 ";
  const std::string together = run_flashgpt(three + "2>/dev/null").output;
  EXPECT_EQ(together, run_flashgpt(three + "--batch 1 2>/dev/null").output);
  EXPECT_EQ(together.rfind("--- sample 1 ---\n" + text, 0), 0u) << together;
  EXPECT_NE(together.find("--- sample 3 ---"), std::string::npos) << together;
  EXPECT_EQ(together, run_flashgpt(three + "--batch 2 2>/dev/null").output);
  RunResult batch_line = run_flashgpt(three + "--batch 2 2>&1 >/dev/null");
  EXPECT_NE(batch_line.output.find("3 samples, 2 at a time"), std::string::npos) << batch_line.output;
  expect_one_error_line(run_flashgpt(three + "--batch 0"), "--batch");
  // Prompts of different lengths decoded together print what they print one at a time.
  const std::string two = "sample -c " + ckpt + " -p 'Once upon' -p 'A' --prompt-ids 5,6,7 -n 10 --seed 4 ";
  const std::string prompts_together = run_flashgpt(two + "2>/dev/null").output;
  EXPECT_EQ(prompts_together, run_flashgpt(two + "--batch 1 2>/dev/null").output);
  EXPECT_EQ(prompts_together, run_flashgpt(two + "--batch 2 2>/dev/null").output);
  EXPECT_EQ(prompts_together.rfind("--- prompt 1 ---\nOnce upon", 0), 0u) << prompts_together;
  EXPECT_NE(prompts_together.find("\n--- prompt 2 ---\nA"), std::string::npos) << prompts_together;
  EXPECT_NE(prompts_together.find("\n--- prompt 3 ---\n"), std::string::npos) << prompts_together;
  expect_one_error_line(run_flashgpt("sample -c " + ckpt + " --prompt-ids ''"), "--prompt-ids");
  RunResult e = run_flashgpt("eval -c " + ckpt + " -d '" + (dir / "data/val_*.bin") + "' -t 32 -b 1 --json");
  ASSERT_EQ(e.exit_code, 0) << e.output;
  EXPECT_GT(nlohmann::json::parse(e.output)["loss"].get<double>(), 0.0);
  RunResult i = run_flashgpt("info -c " + ckpt + " --json");
  ASSERT_EQ(i.exit_code, 0) << i.output;
  EXPECT_EQ(nlohmann::json::parse(i.output)["config"]["n_layer"], 2);
  // To llm.c's format and back: the same weights, so the same eval loss.
  ASSERT_EQ(run_flashgpt("convert " + ckpt + " " + (dir / "model.bin")).exit_code, 0);
  ASSERT_EQ(run_flashgpt("convert " + (dir / "model.bin") + " " + (dir / "back.safetensors") + " --tokenizer " +
                         (dir / "data/tokenizer.json"))
                .exit_code,
            0);
  RunResult e2 = run_flashgpt("eval -c " + (dir / "back.safetensors") + " -d '" + (dir / "data/val_*.bin") +
                              "' -t 32 -b 1 --json");
  EXPECT_EQ(nlohmann::json::parse(e2.output)["loss"], nlohmann::json::parse(e.output)["loss"]);
  RunResult p = run_flashgpt("plot " + (dir / "run/metrics.jsonl") + " -o " + (dir / "loss.svg"));
  ASSERT_EQ(p.exit_code, 0) << p.output;
  EXPECT_NE(read_text_file(dir / "loss.svg").find("<polyline"), std::string::npos);
}

TEST_F(Pipeline, FlashAttentionWithDocumentMaskingTrainsAndSamples) {
  const std::string ckpt = train_tiny("--attention flash --document-masking --flash-block-q 8 --flash-block-kv 16");
  RunResult i = run_flashgpt("info -c " + ckpt + " --json");
  ASSERT_EQ(i.exit_code, 0) << i.output;
  EXPECT_EQ(nlohmann::json::parse(i.output)["config"]["attention"], "flash");
  RunResult s = run_flashgpt("sample -c " + ckpt + " -n 8 --seed 1");
  EXPECT_EQ(s.exit_code, 0) << s.output;
  RunResult b = run_flashgpt("bench attention --batch 1 --seq 64,100 --hidden 128 --repeats 1 --causal both --json");
  ASSERT_EQ(b.exit_code, 0) << b.output;
  int rows = 0;
  std::istringstream lines(b.output);
  for (std::string line; std::getline(lines, line); ++rows) {
    nlohmann::json j = nlohmann::json::parse(line);
    for (const char* key : {"mechanism", "batch", "seq", "hidden", "heads", "causal", "fwd_ms", "fwd_bwd_ms", "gflops",
                            "peak_bytes", "max_rel_err"})
      EXPECT_TRUE(j.contains(key)) << key;
    EXPECT_LT(j["max_rel_err"].get<double>(), 1e-5);
    EXPECT_GE(j["peak_bytes"].get<int64_t>(), 0);
  }
  EXPECT_EQ(rows, 8);  // 2 mechanisms × 2 lengths × causal and not
}

TEST_F(Pipeline, FlashMlaTrainsSamplesAndCompresses) {
  const std::string ckpt = train_tiny("--use-flash-mla --pos rope --latent-dim 8 --q-lora-rank 12 --qk-norm");
  RunResult i = run_flashgpt("info -c " + ckpt + " --json -t 64");
  ASSERT_EQ(i.exit_code, 0) << i.output;
  nlohmann::json info = nlohmann::json::parse(i.output);
  EXPECT_EQ(info["config"]["attention"], "flash_mla");
  EXPECT_EQ(info["config"]["n_latent"], 8);
  // tiny: 2 layers, head_dim 16, rope_dim 8: (8 + 8) floats per token per layer.
  EXPECT_EQ(info["kv_cache_bytes_per_token"], 2 * (8 + 8) * 4);
  ASSERT_EQ(info["attention"].size(), 4u);
  for (const auto& m : info["attention"]) {
    EXPECT_EQ(m["this_model"], m["mechanism"] == "flash_mla");
    EXPECT_EQ(m["kv_cache_bytes_at_seq_len"], m["kv_cache_bytes_per_token"].get<int64_t>() * 64);
  }
  RunResult s = run_flashgpt("sample -c " + ckpt + " -n 8 --seed 1");
  EXPECT_EQ(s.exit_code, 0) << s.output;

  RunResult c = run_flashgpt("compress -c " + ckpt + " --svd-rank 4 -o " + (dir / "svd.safetensors") + " -d '" +
                             (dir / "data/val_*.bin") + "' -b 1 -t 16 --batches 2 --json");
  ASSERT_EQ(c.exit_code, 0) << c.output;
  nlohmann::json cj = nlohmann::json::parse(c.output);
  EXPECT_LT(cj["params_after"].get<int64_t>(), cj["params_before"].get<int64_t>());
  EXPECT_TRUE(cj.contains("loss_before") && cj.contains("loss_after"));
  ASSERT_EQ(cj["layers"].size(), 2u);
  EXPECT_GT(cj["layers"][0]["retained_energy"].get<double>(), 0.0);
  RunResult ci = run_flashgpt("info -c " + (dir / "svd.safetensors") + " --json");
  nlohmann::json cinfo = nlohmann::json::parse(ci.output);
  EXPECT_EQ(cinfo["config"]["use_svd"], true);
  EXPECT_EQ(cinfo["config"]["svd_rank"], 4);
  EXPECT_EQ(run_flashgpt("sample -c " + (dir / "svd.safetensors") + " -n 4 --seed 1").exit_code, 0);
  // A compressed model fine-tunes from its weights.
  RunResult ft = run_flashgpt("train --data " + (dir / "data") + " --init-from " + (dir / "svd.safetensors") +
                              " -b 2 -t 16 --steps 2 --val-every 2 --val-batches 1 --no-progress --out " + (dir / "ft"));
  EXPECT_EQ(ft.exit_code, 0) << ft.output;

  // The benchmarks of the latent mechanisms run, check themselves, and report their shapes.
  RunResult b = run_flashgpt("bench attention --mechanism mla,flash_mla --batch 1 --seq 40 --hidden 128 "
                             "--head-dim 32 --repeats 1 --no-memory --json");
  ASSERT_EQ(b.exit_code, 0) << b.output;
  std::istringstream blines(b.output);
  int brows = 0;
  for (std::string line; std::getline(blines, line); ++brows) {
    nlohmann::json j = nlohmann::json::parse(line);
    EXPECT_EQ(j["dqk"], 48);  // head_dim 32 + rope 16
    EXPECT_EQ(j["dv"], 32);
    EXPECT_LT(j["max_rel_err"].get<double>(), 1e-5);
  }
  EXPECT_EQ(brows, 2);
  RunResult dec = run_flashgpt("bench decode --preset tiny --context 100 --repeats 2 --json");
  ASSERT_EQ(dec.exit_code, 0) << dec.output;
  std::istringstream dlines(dec.output);
  int drows = 0;
  for (std::string line; std::getline(dlines, line); ++drows) {
    nlohmann::json j = nlohmann::json::parse(line);
    EXPECT_EQ(j["cache_bytes"], j["predicted_cache_bytes"]) << line;
    EXPECT_GT(j["ms_per_token"].get<double>(), 0.0);
  }
  EXPECT_EQ(drows, 4);
  RunResult plot = run_flashgpt("bench attention --mechanism standard,flash_mla --batch 1 --seq 32,64 --hidden 64 "
                                "--head-dim 32 --repeats 1 --no-memory --json --plot " + (dir / "attn.svg"));
  ASSERT_EQ(plot.exit_code, 0) << plot.output;
  EXPECT_NE(read_text_file(dir / "attn.svg").find("flash_mla"), std::string::npos);

  expect_one_error_line(run_flashgpt("compress -c " + ckpt + " --svd-rank 9 -o " + (dir / "x.safetensors")),
                        "svd_rank");
  expect_one_error_line(run_flashgpt("compress -c " + ckpt + " --svd-rank 2 -o " + ckpt), "--out");
  const std::string mha = train_tiny("--attention flash");
  expect_one_error_line(run_flashgpt("compress -c " + mha + " --svd-rank 2 -o " + (dir / "y.safetensors")),
                        "latent attention");
}

TEST(Cli, HelpForEveryCommand) {
  for (const char* cmd : {"", "prepare", "train", "sample", "eval", "info", "bench", "bench train", "bench attention",
                          "bench decode", "bench latent-decode", "bench flash-decode", "bench ops", "convert", "plot",
                          "compress"}) {
    RunResult r = run_flashgpt(std::string(cmd) + " --help");
    EXPECT_EQ(r.exit_code, 0) << cmd << ": " << r.output;
    EXPECT_NE(r.output.find("Usage"), std::string::npos) << cmd;
  }
  RunResult t = run_flashgpt("train --help");
  for (const char* flag : {"--post-norm", "--qk-norm", "--pos", "--norm", "--mlp", "--n-kv-head", "--lr-schedule",
                           "--grad-clip", "--weight-decay", "--overfit-single-batch", "--resume", "--total-batch-size",
                           "--use-flash-mla", "--use-latent-attention", "--latent-dim", "--rope-dim", "--q-lora-rank",
                           "--use-svd", "--svd-rank"})
    EXPECT_NE(t.output.find(flag), std::string::npos) << flag;
}

TEST(Cli, ConfigFileThenFlagsOverride) {
  testing::TempDir dir;
  write_text_file_atomic(dir / "model.json",
                         R"({"preset": "d12_post_norm", "n_layer": 4, "pos": "rope", "mlp": "swiglu", "n_kv_head": 4})");
  RunResult r = run_flashgpt("info --config " + (dir / "model.json") + " --n-layer 3 --qk-norm --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  nlohmann::json c = nlohmann::json::parse(r.output)["config"];
  EXPECT_EQ(c["n_layer"], 3);       // the flag wins over the file
  EXPECT_EQ(c["pos"], "rope");      // the file wins over the preset
  EXPECT_EQ(c["post_norm"], true);  // the preset the file names
  EXPECT_EQ(c["qk_norm"], true);
  EXPECT_EQ(c["n_kv_head"], 4);
  EXPECT_EQ(c["n_embd"], 768);
}

TEST(Cli, BadFlagsAndValues) {
  expect_one_error_line(run_flashgpt("train --bogus-flag 3"), "--bogus-flag");
  expect_one_error_line(run_flashgpt("info --n-layer three"), "--n-layer");
  expect_one_error_line(run_flashgpt("info --norm batchnorm"), "--norm");
  expect_one_error_line(run_flashgpt("info --preset d13"), "--preset");
  expect_one_error_line(run_flashgpt("info --n-head 7"), "n_head");
  expect_one_error_line(run_flashgpt("info --n-head 12 --n-kv-head 5"), "n_kv_head");
  expect_one_error_line(run_flashgpt("info --attention linear"), "--attention");
  expect_one_error_line(run_flashgpt("bench attention --mechanism linear"), "--mechanism");
  expect_one_error_line(run_flashgpt("bench attention --device cuda --mechanism standard --precision fp16"),
                        "--precision fp16: the GPU's standard kernel ('standard') runs bf16");
  expect_one_error_line(run_flashgpt("bench attention --tokens 4096"), "--tokens");
  expect_one_error_line(run_flashgpt("bench attention --deterministic"), "--deterministic: a GPU option");
  expect_one_error_line(run_flashgpt("bench train --deterministic"), "--deterministic: a GPU option");
  expect_one_error_line(run_flashgpt("bench train --profile-step"), "--profile-step: a GPU option");
  expect_one_error_line(run_flashgpt("bench decode --profile-step"), "--profile-step: a GPU option");
  expect_one_error_line(run_flashgpt("bench attention --device cuda --precision fp8"), "--precision");
  expect_one_error_line(run_flashgpt("bench decode --mechanism mla --context 0"), "--context");
  expect_one_error_line(run_flashgpt("bench decode --cuda-graphs sometimes"), "--cuda-graphs: unknown setting 'sometimes'");
  expect_one_error_line(run_flashgpt("sample -c /dev/null --cuda-graphs sometimes"), "--cuda-graphs");
  expect_one_error_line(run_flashgpt("sample -c /dev/null --split-kv sometimes"), "--split-kv");
  expect_one_error_line(run_flashgpt("bench latent-decode --context 1 --new-tokens 2"), "--context: 1");
  expect_one_error_line(run_flashgpt("bench latent-decode --kernel magic"), "--kernel");
  expect_one_error_line(run_flashgpt("bench latent-decode --heads 0"), "--heads");
  expect_one_error_line(run_flashgpt("bench decode --split-kv always"), "--split-kv: unknown setting 'always'");
  expect_one_error_line(run_flashgpt("bench decode --flash-decode-kernel tiles,blocks"),
                        "--flash-decode-kernel: unknown kernel 'blocks' (expected auto, tiles or warps)");
  expect_one_error_line(run_flashgpt("sample -c /dev/null --flash-decode-kernel blocks"), "--flash-decode-kernel");
  expect_one_error_line(run_flashgpt("bench flash-decode --kernel blocks"), "--kernel");
  expect_one_error_line(run_flashgpt("bench flash-decode --heads 12 --kv-heads 5"), "--kv-heads: 5 must divide --heads 12");
  expect_one_error_line(run_flashgpt("bench flash-decode --context 1 --new-tokens 2"), "--context: 1");
  expect_one_error_line(run_flashgpt("bench flash-decode --batch 0"), "--batch");
  expect_one_error_line(run_flashgpt("bench flash-decode --precision fp8"), "--precision");
  expect_one_error_line(run_flashgpt("bench attention --device cuda --tiles auto,square"), "--tiles");
  expect_one_error_line(run_flashgpt("bench train --device cuda --tiles square"), "--tiles");
  expect_one_error_line(run_flashgpt("bench attention --device cuda --backend ours,magic"), "--backend");
  expect_one_error_line(run_flashgpt("bench attention --backend cudnn"), "--backend: a GPU option");
  expect_one_error_line(run_flashgpt("bench train --breakdown 3"), "--breakdown: a GPU option");
  expect_one_error_line(run_flashgpt("bench train --attention-backend cudnn"), "--attention-backend: a GPU option");
  expect_one_error_line(run_flashgpt("bench train --gelu-fusion off"), "--gelu-fusion: a GPU option");
  expect_one_error_line(run_flashgpt("bench train --gelu-fusion maybe"), "--gelu-fusion");
  expect_one_error_line(run_flashgpt("bench train --qkv-fusion off"), "--qkv-fusion: a GPU option");
  expect_one_error_line(run_flashgpt("bench train --qkv-fusion maybe"), "--qkv-fusion");
  expect_one_error_line(run_flashgpt("bench train --reduce-dtype fp16"), "--reduce-dtype");
  expect_one_error_line(run_flashgpt("train --attention-backend flash3"), "--attention-backend");
  expect_one_error_line(run_flashgpt("bench ops --rows 0"), "--rows: must be positive");
  expect_one_error_line(run_flashgpt("bench ops --repeats 0"), "--repeats");
  expect_one_error_line(run_flashgpt("info --latent-dim 16"), "n_latent");  // standard attention has no latent
  expect_one_error_line(run_flashgpt("info --attention mla --n-kv-head 4"), "n_kv_head");
  expect_one_error_line(run_flashgpt("info --attention mla --use-svd"), "svd_rank");
  expect_one_error_line(run_flashgpt("info --attention mla --pos rope --rope-dim 7"), "rope_dim");
  expect_one_error_line(run_flashgpt("frobnicate"), "unknown command 'frobnicate'");
  expect_one_error_line(run_flashgpt(""), "subcommand");
}

TEST_F(Pipeline, BadFilesAndData) {
  expect_one_error_line(run_flashgpt("sample -c " + (dir / "missing.safetensors")), "missing.safetensors");
  write_text_file_atomic(dir / "junk.safetensors", "not a checkpoint");
  expect_one_error_line(run_flashgpt("sample -c " + (dir / "junk.safetensors")), "junk.safetensors");
  write_text_file_atomic(dir / "empty.txt", "  \n\n ");
  expect_one_error_line(run_flashgpt("prepare " + (dir / "empty.txt") + " --out " + (dir / "e")), "empty corpus");
  write_text_file_atomic(dir / "bad.json", R"({"n_layer": 2, "n_layers": 3})");
  expect_one_error_line(run_flashgpt("info --config " + (dir / "bad.json")), "unknown config field 'n_layers'");
  const std::string data = prepare();
  expect_one_error_line(run_flashgpt("train --data " + data + " --preset tiny -t 128 --steps 1 --out " + (dir / "o")),
                        "--seq-len");
  // Shard tokens beyond the model's vocabulary.
  expect_one_error_line(run_flashgpt("train --train-data '" + data + "/train_*.bin' --preset tiny --vocab-size 50 " +
                                     "-b 1 -t 16 --steps 2 --no-progress --out " + (dir / "o")),
                        "out of range for vocab_size 50");
  // A truncated shard.
  const std::string shard = data + "/train_000000.bin";
  std::string bytes = read_text_file(shard);
  write_text_file_atomic(dir / "cut.bin", bytes.substr(0, bytes.size() - 3));
  expect_one_error_line(run_flashgpt("eval -c " + train_tiny() + " -d " + (dir / "cut.bin")), "cut.bin");
  // A prompt longer than the context.
  std::string long_prompt(200, 'a');
  expect_one_error_line(run_flashgpt("sample -c " + (dir / "run/ckpt.safetensors") + " -p " + long_prompt), "prompt");
  expect_one_error_line(run_flashgpt("sample -c " + (dir / "run/ckpt.safetensors") + " --prompt-ids 1,99999"),
                        "out of range");
  // A truncated checkpoint given to --resume.
  std::string ck = read_text_file(dir / "run/ckpt.safetensors");
  write_text_file_atomic(dir / "cut.safetensors", ck.substr(0, ck.size() / 2));
  expect_one_error_line(run_flashgpt("train --data " + data + " --resume " + (dir / "cut.safetensors") +
                                     " --steps 10 --no-progress --out " + (dir / "r")),
                        "cut.safetensors");
}

// --device: auto falls back to the CPU with one line saying why; cuda without a usable GPU is one
// error line. With a GPU, a run trains there in both precisions and resumes.
TEST_F(Pipeline, DeviceChoice) {
  const std::string data = prepare();
  const std::string common = "train --data " + data + " --preset tiny -b 2 -t 32 --val-batches 1 --no-progress ";
  // cuDNN's attention is the GPU's, and takes no document masks: refused before anything runs.
  expect_one_error_line(run_flashgpt(common + "--steps 2 --device cpu --attention-backend cudnn --out " + (dir / "x")),
                        "--attention-backend cudnn: a GPU option");
  expect_one_error_line(run_flashgpt(common + "--steps 2 --device auto --attention flash --document-masking "
                                     "--attention-backend cudnn --out " + (dir / "x")),
                        "takes no document masks");
  expect_one_error_line(run_flashgpt(common + "--steps 2 --reduce-dtype fp16 --out " + (dir / "x")), "--reduce-dtype");
  EXPECT_FALSE(std::filesystem::exists(dir / "x"));
  if (cuda::devices().gpus.empty()) {
    RunResult r = run_flashgpt(common + "--steps 2 --deterministic --out " + (dir / "auto"));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("device: cpu (--device auto: "), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("deterministic:"), std::string::npos) << "the CPU repeats its bits anyway: " << r.output;
    expect_one_error_line(run_flashgpt(common + "--steps 2 --device cuda --out " + (dir / "cuda")), "--device cuda: ");
    expect_one_error_line(run_flashgpt("bench attention --device cuda"), "--device cuda: ");
    expect_one_error_line(run_flashgpt("bench latent-decode"), "bench latent-decode: needs a GPU");
    expect_one_error_line(run_flashgpt("bench flash-decode"), "bench flash-decode: needs a GPU");
    expect_one_error_line(run_flashgpt("bench ops"), "bench ops: needs a GPU");
    // Sampling and evaluation choose their device the same way.
    const std::string ckpt = dir / "auto/ckpt.safetensors";
    RunResult s = run_flashgpt("sample -c " + ckpt + " --prompt-ids 1,2 -n 4");
    ASSERT_EQ(s.exit_code, 0) << s.output;
    EXPECT_NE(s.output.find("device: cpu (--device auto: "), std::string::npos) << s.output;
    expect_one_error_line(run_flashgpt("sample -c " + ckpt + " --prompt-ids 1,2 -n 4 --device cuda"),
                          "--device cuda: ");
    expect_one_error_line(run_flashgpt("eval -c " + ckpt + " -d '" + data + "/val_*.bin' -t 32 -b 1 --device cuda"),
                          "--device cuda: ");
    return;
  }
  // The CPU emulator (test_cli_simt) runs the benchmarks below on smaller cases: the same paths.
  const bool emulated = cuda::devices().gpus.front().emulated;
  // The latent decode's benchmark, both kernels side by side beside the copy rate.
  {
    RunResult b = run_flashgpt(std::string("bench latent-decode --kernel tensor-cores,cuda-cores --repeats 2 --json ") +
                               (emulated ? "--batch 2 --heads 16 --context 128" : "--batch 4 --heads 64 --context 512"));
    ASSERT_EQ(b.exit_code, 0) << b.output;
    std::istringstream rows(b.output);
    std::vector<std::string> kernels;
    for (std::string line; std::getline(rows, line);) {
      const nlohmann::json j = nlohmann::json::parse(line);
      kernels.push_back(j["kernel"].get<std::string>());
      EXPECT_GT(j["gbps"].get<double>(), 0.0) << line;
      EXPECT_GT(j["copy_gbps"].get<double>(), 0.0) << line;
      EXPECT_LT(j["max_rel_err"].get<double>(), 2e-2) << line;
    }
    EXPECT_EQ(kernels, (std::vector<std::string>{"tensor-cores", "cuda-cores"})) << b.output;
  }
  // Flash decode's benchmark beside the flash kernel, one JSON line per case.
  {
    RunResult b = run_flashgpt(std::string("bench flash-decode --batch 1,4 --heads 8 --kv-heads 2 --repeats 3 --json ") +
                               (emulated ? "--context 40" : "--context 300"));
    ASSERT_EQ(b.exit_code, 0) << b.output;
    std::istringstream rows(b.output);
    std::vector<int64_t> batches;
    for (std::string line; std::getline(rows, line);) {
      const nlohmann::json j = nlohmann::json::parse(line);
      batches.push_back(j["batch"].get<int64_t>());
      EXPECT_GT(j["speedup_vs_flash"].get<double>(), 0.0) << line;
      EXPECT_GT(j["of_copy"].get<double>(), 0.0) << line;
      EXPECT_LT(j["max_rel_err"].get<double>(), 2e-2) << line;
    }
    EXPECT_EQ(batches, (std::vector<int64_t>{1, 4})) << b.output;
  }
  // The tensor-core kernels' benchmark: checked, then timed, one JSON line per case.
  for (const std::string precision : {"bf16", "fp16", "bf16 --deterministic"}) {
    RunResult b = run_flashgpt("bench attention --device cuda --precision " + precision +
                               " --mechanism flash,flash_mla --batch 1 --repeats 2 --json " +
                               (emulated ? "--seq 128 --hidden 128" : "--seq 256 --hidden 256"));
    ASSERT_EQ(b.exit_code, 0) << b.output;
    std::istringstream rows(b.output);
    int n = 0;
    for (std::string line; std::getline(rows, line); ++n) {
      const nlohmann::json j = nlohmann::json::parse(line);
      EXPECT_GT(j["fwd_tflops"].get<double>(), 0.0) << line;
      EXPECT_GE(j["fwd_bwd_ms"].get<double>(), j["fwd_ms"].get<double>()) << line;
      EXPECT_LT(j["max_rel_err"].get<double>(), 2e-2) << line;
      EXPECT_EQ(j["deterministic"].get<bool>(), precision.find("deterministic") != std::string::npos) << line;
    }
    EXPECT_EQ(n, 2) << b.output;
  }
  // head_dim 16: bf16 flash attention on the GPU needs 64 or 128; the standard kernel takes it.
  expect_one_error_line(run_flashgpt(common + "--attention flash --steps 2 --device cuda --out " + (dir / "c16")),
                        "head_dim 64 or 128");
  RunResult fallback = run_flashgpt(common + "--attention flash --steps 2 --out " + (dir / "a16"));
  EXPECT_NE(fallback.output.find("device: cpu (--device auto: bf16 flash attention"), std::string::npos)
      << fallback.output;
  RunResult standard16 = run_flashgpt(common + "--steps 2 --device cuda --out " + (dir / "s16"));
  EXPECT_EQ(standard16.exit_code, 0) << standard16.output;
  for (const char* precision : {"bf16", "fp32"}) {
    const std::string out = dir / (std::string("gpu_") + precision);
    const std::string gpu = common + "--n-embd 128 --n-head 2 --device cuda --precision " + precision + " --out " + out;
    RunResult r = run_flashgpt(gpu + " --steps 40 --stop-at-step 20 --lr 3e-3");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("device: cuda:0"), std::string::npos) << r.output;
    RunResult resumed = run_flashgpt(gpu + " --steps 40 --lr 3e-3 --resume " + out + "/ckpt.safetensors");
    ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
    // The metrics of both halves: the loss falls over the run.
    std::istringstream lines(read_text_file(out + "/metrics.jsonl"));
    std::vector<double> losses;
    for (std::string line; std::getline(lines, line);) {
      const nlohmann::json j = nlohmann::json::parse(line);
      if (j.contains("loss")) losses.push_back(j["loss"].get<double>());
    }
    ASSERT_EQ(losses.size(), 40u) << precision;
    EXPECT_LT(losses.back(), losses.front() - 0.5) << precision;
  }
  // --deterministic: two bf16 runs on the GPU log the same losses to the last bit.
  {
    std::vector<std::vector<double>> runs;
    for (const char* name : {"det_a", "det_b"}) {
      RunResult r = run_flashgpt(common + "--n-embd 128 --n-head 2 --device cuda --deterministic --steps 6 --out " +
                                 (dir / name));
      ASSERT_EQ(r.exit_code, 0) << r.output;
      EXPECT_NE(r.output.find("deterministic: "), std::string::npos) << r.output;
      std::istringstream lines(read_text_file(dir / name + "/metrics.jsonl"));
      runs.emplace_back();
      for (std::string line; std::getline(lines, line);) {
        const nlohmann::json j = nlohmann::json::parse(line);
        if (j.contains("loss")) runs.back().push_back(j["loss"].get<double>());
      }
    }
    EXPECT_EQ(runs[0].size(), 6u);
    EXPECT_EQ(runs[0], runs[1]);
  }
  // Sampling and evaluation on the GPU: in fp32 the same text and loss as on the CPU.
  const std::string ckpt = dir / "gpu_fp32/ckpt.safetensors";
  const std::string sample = "sample -c " + ckpt + " --prompt-ids 1,2,3 -n 16 --seed 3 --top-k 5 ";
  RunResult on_gpu = run_flashgpt(sample + "--device cuda --precision fp32 2>/dev/null");
  ASSERT_EQ(on_gpu.exit_code, 0) << on_gpu.output;
  EXPECT_EQ(on_gpu.output, run_flashgpt(sample + "--device cpu 2>/dev/null").output);
  EXPECT_EQ(on_gpu.output, run_flashgpt(sample + "--device cuda --precision fp32 --cuda-graphs off 2>/dev/null").output);
  EXPECT_EQ(on_gpu.output, run_flashgpt(sample + "--device cuda --precision fp32 --split-kv off 2>/dev/null").output);
  RunResult bf16_sample = run_flashgpt(sample + "--device cuda");
  ASSERT_EQ(bf16_sample.exit_code, 0) << bf16_sample.output;
  EXPECT_NE(bf16_sample.output.find("device: cuda:0"), std::string::npos) << bf16_sample.output;
  const std::string eval = "eval -c " + ckpt + " -d '" + data + "/val_*.bin' -t 32 -b 2 --batches 2 --json ";
  RunResult eval_gpu = run_flashgpt(eval + "--device cuda --precision fp32 2>/dev/null");
  RunResult eval_cpu = run_flashgpt(eval + "--device cpu 2>/dev/null");
  ASSERT_EQ(eval_gpu.exit_code, 0) << eval_gpu.output;
  ASSERT_EQ(eval_cpu.exit_code, 0) << eval_cpu.output;
  const double gpu_loss = nlohmann::json::parse(eval_gpu.output)["loss"].get<double>();
  const double cpu_loss = nlohmann::json::parse(eval_cpu.output)["loss"].get<double>();
  EXPECT_NEAR(gpu_loss, cpu_loss, 1e-4 * cpu_loss);
}

TEST_F(Pipeline, KillingARunWhileItSavesLeavesALoadableCheckpoint) {
  const std::string data = prepare();
  // Saves after every step; kill -9 lands at varied points, often mid-write.
  for (int delay_ms : {150, 230, 310, 390}) {
    const std::string out = dir / ("kill" + std::to_string(delay_ms));
    const std::string cmd = "OMP_NUM_THREADS=1 " + std::string(FLASHGPT_BINARY) + " train --data " + data +
                            " --preset tiny --n-embd 64 -b 4 -t 32 --steps 100000 --save-every 1 --no-progress --out " +
                            out + " > /dev/null 2>&1 & pid=$!; sleep " + std::to_string(delay_ms / 1000.0) +
                            "; kill -9 $pid; wait $pid";
    testing::run_command(cmd);
    if (!file_exists(out + "/ckpt.safetensors")) continue;  // killed before the first save
    RunResult r = run_flashgpt("info -c " + out + "/ckpt.safetensors --json");
    EXPECT_EQ(r.exit_code, 0) << "delay " << delay_ms << ": " << r.output;
  }
}

}  // namespace
}  // namespace flashgpt
