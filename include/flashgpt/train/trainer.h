// The training loop: AdamW with a learning-rate schedule, gradient accumulation to a total batch,
// global-norm clipping, periodic validation, samples and checkpoints, a progress display and a
// JSONL metrics log. A fixed seed gives identical losses on re-runs with the same thread count, and
// a resumed run continues exactly as if it had never stopped.
//
// Under `mpirun -np N` the same loop trains data-parallel (and optionally with ZeRO-1 and context
// parallelism, see train/distributed.h and dist/context_parallel.h): the total batch, the
// accumulation and the learning rate mean what they mean in one process, and only rank 0 logs,
// samples and saves.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "flashgpt/attention/attention.h"
#include "flashgpt/dist/comm.h"
#include "flashgpt/model/config.h"
#include "flashgpt/train/schedule.h"

namespace flashgpt {

class Tokenizer;

struct TrainOptions {
  // Data: shard paths or globs; the tokenizer decodes samples (optional).
  std::string train_data;
  std::string val_data;  // empty: no validation
  std::string tokenizer_path;
  // Batch: micro-batch B × T per data-parallel rank; total_batch_tokens (0: B·T × data-parallel
  // ranks) is the global batch and sets gradient accumulation.
  int64_t batch_size = 4;
  int64_t seq_len = 64;
  int64_t total_batch_tokens = 0;
  int64_t max_steps = 1000;
  // Document masking: tokens attend only within their own document, documents delimited by the
  // end-of-text token (the tokenizer's, or eot_token when set).
  bool document_masking = false;
  int eot_token = -1;
  AttentionTiling attention_tiling;  // flash kernel tiles (0: automatic)
  // Where to train: "cpu"; "cuda" (the GPU, or an error saying why not); "auto" (the GPU when this
  // build has the CUDA backend, a GPU is usable and the model runs there, else the CPU with one
  // line saying why). precision: the GPU's arithmetic, "bf16" (mixed) or "fp32" (parity); the CPU
  // trains in fp32.
  std::string device = "cpu";
  std::string precision = "bf16";
  // The GPU's backward without atomics, so a run repeats its bits on the same GPU and software
  // (GPTCuda::set_deterministic; slower). The CPU's training repeats its bits either way.
  bool deterministic = false;
  // The GPU's attention for the flash mechanisms in bf16: "ours" (our kernels) or "cudnn" (cuDNN's
  // fused attention, GPTCuda::set_attention_backend; not with document masking).
  std::string attention_backend = "ours";
  int64_t stop_at_step = 0;  // >0: save and stop after this step (the schedule still spans max_steps)
  // Optimiser.
  LrScheduleParams lr;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;  // 0: off; matrices only
  double grad_clip = 1.0;     // 0: off
  // Evaluation, samples, logs, checkpoints.
  int64_t val_every = 100;
  int64_t val_batches = 10;
  int64_t sample_every = 0;  // 0: off
  int sample_tokens = 64;
  int64_t log_every = 10;
  int64_t save_every = 0;  // 0: only at the end
  std::string out_dir = "out";
  std::string metrics_path;  // empty: <out_dir>/metrics.jsonl
  bool save_optimizer = true;
  // Reproducibility and robustness.
  uint64_t seed = 1337;
  bool overfit_single_batch = false;
  bool skip_nonfinite = false;  // false: stop with a message on a non-finite loss or gradient
  std::string resume;           // checkpoint to continue from
  std::string init_from;        // checkpoint or llm.c model file to start from (weights only)
  std::optional<bool> progress_bar;  // unset: on when stderr is a terminal
  // Several processes. comm null: dist::world() (one process unless started by mpirun).
  dist::Communicator* comm = nullptr;
  int zero_stage = 0;        // 1: shard the AdamW state across ranks (ZeRO-1)
  // How GPU ranks sum their gradients (cuda/device_comm.h): "auto", "nccl" or "host".
  std::string gpu_comm = "auto";
  // The precision GPU ranks' gradients travel in: "fp32", or "bf16" (half the bytes).
  std::string reduce_dtype = "fp32";
  int context_parallel = 1;  // ranks sharing each sequence
  double comm_timeout_s = 300;        // a rank waiting longer for the others ends the job
  int64_t check_weights_every = 100;  // compare weight fingerprints across ranks every N steps (0: off)
};

struct TrainResult {
  int64_t steps = 0;
  double final_loss = 0;
  double final_val_loss = -1;
  double tokens_per_second = 0;
  std::string checkpoint;
  std::vector<double> losses;      // per step run here (the global mean over ranks)
  std::vector<double> grad_norms;  // per step, before clipping
  uint64_t bytes_sent = 0;     // by this rank, over the whole run
  std::string device;          // where it trained: "cpu" or "cuda"
};

// Trains a model of `config` (ignored when resuming: the checkpoint's config is used).
TrainResult train(GPTConfig config, const TrainOptions& opt);

// Measures this machine's sgemm rate (GFLOP/s) on square matrices of size n, median of `repeats`.
double measure_sgemm_gflops(int n = 1024, int repeats = 5);

}  // namespace flashgpt
