// flashgpt train: train a model from scratch, from a checkpoint, or resume a run.
#include <filesystem>
#include <memory>

#include "commands.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/io.h"
#include "flashgpt/dist/comm.h"
#include "flashgpt/train/trainer.h"

namespace flashgpt::cli {

namespace {

struct TrainCli {
  ModelFlags model;
  TrainOptions opt;
  std::string data_dir;
  std::string schedule = "cosine";
  bool progress = false, no_progress = false, no_optimizer_state = false;
};

void run_train(TrainCli& c) {
  TrainOptions opt = c.opt;
  if (!c.data_dir.empty()) {
    namespace fs = std::filesystem;
    FLASHGPT_CHECK(fs::is_directory(c.data_dir), "--data: {} is not a directory (made by `flashgpt prepare`)",
                   c.data_dir);
    if (opt.train_data.empty()) opt.train_data = (fs::path(c.data_dir) / "train_*.bin").string();
    if (opt.val_data.empty()) {
      const std::string val = (fs::path(c.data_dir) / "val_*.bin").string();
      try {
        expand_glob(val);
        opt.val_data = val;
      } catch (const Error&) {
        // no validation shards: train without validation
      }
    }
    const std::string tok = (fs::path(c.data_dir) / "tokenizer.json").string();
    if (opt.tokenizer_path.empty() && file_exists(tok)) opt.tokenizer_path = tok;
  }
  FLASHGPT_CHECK(!opt.train_data.empty(), "no training data: give --data DIR or --train-data GLOB");
  opt.lr.kind = parse_lr_schedule(c.schedule);
  if (c.progress) opt.progress_bar = true;
  if (c.no_progress) opt.progress_bar = false;
  opt.save_optimizer = !c.no_optimizer_state;
  const GPTConfig config = c.model.resolve("d12");
  TrainResult r = train(config, opt);
  if (dist::world().rank() != 0) return;
  std::printf("trained %lld steps: loss %.4f%s, %.0f tokens/s; checkpoint %s\n", static_cast<long long>(r.steps),
              r.final_loss, r.final_val_loss >= 0 ? fmt::format(", val loss {:.4f}", r.final_val_loss).c_str() : "",
              r.tokens_per_second, r.checkpoint.c_str());
}

}  // namespace

void register_train(CLI::App& app) {
  auto c = std::make_shared<TrainCli>();
  TrainOptions& o = c->opt;
  CLI::App* sub = app.add_subcommand("train", "Train a GPT model (fresh, from a checkpoint, or resumed)");
  add_model_flags(*sub, c->model);
  const char* data = "Data";
  sub->add_option("--data", c->data_dir, "Directory from `flashgpt prepare` (train_*.bin, val_*.bin, tokenizer.json)")
      ->group(data);
  sub->add_option("--train-data", o.train_data, "Training shards: a path or glob (llm.c .bin format)")->group(data);
  sub->add_option("--val-data", o.val_data, "Validation shards: a path or glob")->group(data);
  sub->add_option("--tokenizer", o.tokenizer_path, "tokenizer.json, to decode samples (and set the vocab size)")
      ->check(CLI::ExistingFile)
      ->group(data);
  const char* batch = "Batch and length";
  sub->add_option("-b,--batch-size", o.batch_size, "Sequences per micro-batch")->capture_default_str()->group(batch);
  sub->add_option("-t,--seq-len", o.seq_len, "Tokens per sequence")->capture_default_str()->group(batch);
  sub->add_option("--total-batch-size", o.total_batch_tokens,
                  "Tokens per optimizer step; a multiple of batch × seq-len sets gradient accumulation (0: one "
                  "micro-batch)")
      ->capture_default_str()
      ->group(batch);
  sub->add_option("-n,--steps", o.max_steps, "Optimizer steps")->capture_default_str()->group(batch);
  sub->add_flag("--document-masking", o.document_masking,
                "Attend only within each document (documents start at the end-of-text token)")
      ->group(batch);
  sub->add_option("--eot-token", o.eot_token, "End-of-text token id for --document-masking (default: the tokenizer's)")
      ->group(batch);
  sub->add_option("--flash-block-q", o.attention_tiling.block_q, "Flash attention query tile (0: from cache sizes)")
      ->group(batch);
  sub->add_option("--flash-block-kv", o.attention_tiling.block_kv, "Flash attention key/value tile (0: automatic)")
      ->group(batch);
  sub->add_option("--stop-at-step", o.stop_at_step,
                  "Save and stop after this step, keeping the schedule of --steps (continue with --resume)")
      ->group(batch);
  const char* device = "Device";
  o.device = "auto";
  sub->add_option("--device", o.device,
                  "cpu, cuda, or auto: the GPU when this build and machine have one and the model runs there, else "
                  "the CPU with a line saying why")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}))
      ->capture_default_str()
      ->group(device);
  sub->add_option("--precision", o.precision,
                  "GPU arithmetic: bf16 (mixed precision: bf16 weights and activations, fp32 master weights, "
                  "statistics and optimizer state) or fp32 (parity with the CPU); the CPU trains in fp32")
      ->check(CLI::IsMember({"bf16", "fp32"}))
      ->capture_default_str()
      ->group(device);
  sub->add_flag("--deterministic", o.deterministic,
                "GPU: a backward without atomics (flash dQ by a second kernel, ordered norm and embedding "
                "gradient sums), so the same run repeats its bits on the same GPU and software; slower. The CPU "
                "repeats its bits either way")
      ->group(device);
  sub->add_option("--attention-backend", o.attention_backend,
                  "GPU, bf16, flash mechanisms: ours (flashgpt's attention kernels) or cudnn (cuDNN's fused "
                  "attention, where cuDNN 9 loads; not with --document-masking)")
      ->check(CLI::IsMember({"ours", "cudnn"}))
      ->capture_default_str()
      ->group(device);
  const char* optim = "Optimizer";
  sub->add_option("--lr", o.lr.lr, "Peak learning rate")->capture_default_str()->group(optim);
  sub->add_option("--lr-schedule", c->schedule, "cosine, linear, constant or wsd (warmup-stable-decay)")
      ->check(CLI::IsMember({"cosine", "linear", "constant", "wsd"}))
      ->capture_default_str()
      ->group(optim);
  sub->add_option("--warmup-steps", o.lr.warmup_steps, "Linear warmup steps")->capture_default_str()->group(optim);
  sub->add_option("--final-lr-fraction", o.lr.final_lr_fraction, "Final learning rate as a fraction of --lr")
      ->capture_default_str()
      ->group(optim);
  sub->add_option("--wsd-decay-fraction", o.lr.decay_fraction, "Share of steps the wsd schedule spends decaying")
      ->capture_default_str()
      ->group(optim);
  sub->add_option("--beta1", o.beta1, "AdamW β1")->capture_default_str()->group(optim);
  sub->add_option("--beta2", o.beta2, "AdamW β2")->capture_default_str()->group(optim);
  sub->add_option("--eps", o.eps, "AdamW ε")->capture_default_str()->group(optim);
  sub->add_option("--weight-decay", o.weight_decay, "Decoupled weight decay on matrices (0: off)")
      ->capture_default_str()
      ->group(optim);
  sub->add_option("--grad-clip", o.grad_clip, "Clip the global gradient norm to this (0: off)")
      ->capture_default_str()
      ->group(optim);
  const char* mon = "Evaluation, samples, output";
  sub->add_option("--val-every", o.val_every, "Validation loss every N steps")->capture_default_str()->group(mon);
  sub->add_option("--val-batches", o.val_batches, "Batches per validation")->capture_default_str()->group(mon);
  sub->add_option("--sample-every", o.sample_every, "Print a sample every N steps (0: off)")
      ->capture_default_str()
      ->group(mon);
  sub->add_option("--sample-tokens", o.sample_tokens, "Tokens per sample")->capture_default_str()->group(mon);
  sub->add_option("--log-every", o.log_every, "Log line every N steps (without a progress bar)")
      ->capture_default_str()
      ->group(mon);
  sub->add_option("--save-every", o.save_every, "Checkpoint every N steps (0: only at the end)")
      ->capture_default_str()
      ->group(mon);
  sub->add_option("-o,--out", o.out_dir, "Output directory (ckpt.safetensors, metrics.jsonl)")
      ->capture_default_str()
      ->group(mon);
  sub->add_option("--metrics", o.metrics_path, "Metrics JSONL file (default: <out>/metrics.jsonl)")->group(mon);
  sub->add_flag("--no-optimizer-state", c->no_optimizer_state, "Save weights only (smaller, cannot be resumed)")
      ->group(mon);
  sub->add_flag("--progress", c->progress, "Force the progress bar")->group(mon);
  sub->add_flag("--no-progress", c->no_progress, "Plain log lines even on a terminal")->group(mon);
  const char* par = "Several processes (start with mpirun -np N flashgpt train …)";
  sub->add_option("--zero", o.zero_stage, "1: shard the AdamW state across ranks (ZeRO-1); 0: every rank keeps it all")
      ->check(CLI::IsMember({0, 1}))
      ->capture_default_str()
      ->group(par);
  sub->add_option("--context-parallel", o.context_parallel,
                  "Ranks sharing each sequence (context parallelism); must divide the rank count")
      ->check(CLI::PositiveNumber)
      ->capture_default_str()
      ->group(par);
  sub->add_option("--gpu-comm", o.gpu_comm,
                  "How GPU ranks sum their gradients: nccl (NCCL, a GPU per rank), host (through host memory "
                  "over MPI), auto (nccl where it can run, else host)")
      ->check(CLI::IsMember({"auto", "nccl", "host"}))
      ->capture_default_str()
      ->group(par);
  sub->add_option("--reduce-dtype", o.reduce_dtype,
                  "Precision the ranks' gradients travel in: fp32, or bf16 (half the bytes; each rank's gradient "
                  "rounded to bf16 and summed in bf16)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str()
      ->group(par);
  sub->add_option("--comm-timeout", o.comm_timeout_s,
                  "Seconds a rank waits for the others before ending the job (a rank died or hangs)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str()
      ->group(par);
  sub->add_option("--check-weights-every", o.check_weights_every,
                  "Compare weight fingerprints across ranks every N steps (0: off)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str()
      ->group(par);
  const char* run = "Run";
  sub->add_option("--seed", o.seed, "Seed for weights and sampling")->capture_default_str()->group(run);
  sub->add_flag("--overfit-single-batch", o.overfit_single_batch, "Train on the first batch again and again (debug)")
      ->group(run);
  sub->add_flag("--skip-nonfinite", o.skip_nonfinite,
                "Skip steps with a non-finite loss or gradient instead of stopping")
      ->group(run);
  sub->add_option("--resume", o.resume, "Continue the run saved in this checkpoint exactly")
      ->check(CLI::ExistingFile)
      ->group(run);
  sub->add_option("--init-from", o.init_from, "Start from these weights (a checkpoint or an llm.c model .bin)")
      ->check(CLI::ExistingFile)
      ->group(run);
  sub->callback([c] { run_train(*c); });
}

}  // namespace flashgpt::cli
