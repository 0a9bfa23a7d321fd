#include "flashgpt/train/distributed.h"

#include <algorithm>

#include "flashgpt/core/error.h"
#include "flashgpt/core/half_precision.h"

namespace flashgpt {

ParallelLayout make_parallel_layout(const dist::Communicator& world, int context_parallel) {
  ParallelLayout p;
  p.world = world.size();
  p.rank = world.rank();
  FLASHGPT_CHECK(context_parallel >= 1, "--context-parallel: must be ≥ 1, got {}", context_parallel);
  FLASHGPT_CHECK(p.world % context_parallel == 0,
                 "--context-parallel {}: needs a multiple of {} processes, but this run has {}{}", context_parallel,
                 context_parallel, p.world,
                 p.world == 1 ? fmt::format(" (start it with mpirun -np {} flashgpt train …)", context_parallel) : "");
  p.cp = context_parallel;
  p.cp_rank = p.rank % p.cp;
  p.dp = p.world / p.cp;
  p.dp_rank = p.rank / p.cp;
  return p;
}

double predicted_bytes_per_step(const GPTConfig& config, int64_t B, int64_t T, const ParallelLayout& layout,
                                int zero_stage, int kv_bytes, int grad_bytes) {
  // ZeRO-1 moves the all-reduce's volume in two halves, the gradient's reduce-scatter and the
  // fp32 weights' all-gather.
  const double N = layout.world, P = static_cast<double>(model_stats(config).n_params);
  const double per_param = zero_stage == 1 ? grad_bytes + 4.0 : 2.0 * grad_bytes;
  double bytes = N > 1 ? (N - 1) / N * per_param * P : 0.0;
  if (layout.cp > 1) {  // keys and values gathered, their gradients reduce-scattered, per layer
    const double cp = layout.cp;
    // Multi-head: keys and values, kv_dim each. Latent attention: its latent rows [c_kv, k_rope].
    const double width = is_latent(config.attention) ? static_cast<double>(config.latent_dim() + config.mla_rope_dim())
                                                     : 2.0 * config.kv_dim();
    bytes += config.n_layer * (cp - 1) / cp * static_cast<double>(B * T) * width * (kv_bytes + 4.0);
  }
  return bytes;
}

namespace {

// dst[i] = bf16(src[i]), to nearest even.
void round_to_bf16(const float* src, uint16_t* dst, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) dst[i] = float_to_bf16_bits(src[i]);
}

// dst[i] = float(src[i]) · scale.
void widen_scaled(const uint16_t* src, float* dst, int64_t n, float scale) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_bits_to_float(src[i]) * scale;
}

}  // namespace

GradientSync::GradientSync(dist::Communicator& comm, GPT<float>& model, int zero_stage, bool bf16_gradients)
    : comm_(comm), model_(model), zero_(zero_stage), bf16_(bf16_gradients && comm.size() > 1) {
  FLASHGPT_CHECK(zero_stage == 0 || zero_stage == 1, "--zero: stage {} is not supported (0: off, 1: shard the "
                 "optimizer state)", zero_stage);
  const int64_t n = model.num_params(), N = comm.size();
  if (zero_ == 1) {
    for (int64_t r = 0; r < N; ++r) counts_.push_back((r + 1) * n / N - r * n / N);
    lo_ = comm.rank() * n / N;
    hi_ = (comm.rank() + 1) * n / N;
    shard_grad_.assign(static_cast<size_t>(hi_ - lo_), 0.0f);
  } else {
    lo_ = 0;
    hi_ = n;
  }
  m_.assign(static_cast<size_t>(hi_ - lo_), 0.0f);
  v_.assign(static_cast<size_t>(hi_ - lo_), 0.0f);
  if (bf16_) {
    g16_.assign(static_cast<size_t>(n), 0);
    if (zero_ == 1) shard16_.assign(static_cast<size_t>(hi_ - lo_), 0);
  }
  // The parameters outside every block, reduced once the backward has returned.
  std::vector<std::pair<int64_t, int64_t>> blocks;
  for (int l = 0; l < model.config().n_layer; ++l) blocks.push_back(model.block_param_range(l));
  std::sort(blocks.begin(), blocks.end());
  int64_t at = 0;
  for (const auto& [off, count] : blocks) {
    if (off > at) rest_.emplace_back(at, off - at);
    at = std::max(at, off + count);
  }
  if (at < n) rest_.emplace_back(at, n - at);
}

void GradientSync::overlap_next_backward() {
  if (comm_.size() == 1 || zero_ == 1) return;  // ZeRO-1 reduce-scatters once the backward is done
  overlapping_ = true;
  float* g = model_.grads().data();
  model_.set_grads_ready_hook([this, g](int64_t off, int64_t count) { start_sum(g, off, count); });
}

void GradientSync::start_sum(float* g, int64_t off, int64_t count) {
  if (bf16_) {
    round_to_bf16(g + off, g16_.data() + off, count);
    comm_.start_allreduce_sum(g16_.data() + off, static_cast<size_t>(count), dist::DType::BF16);
  } else {
    comm_.start_allreduce_sum(g + off, static_cast<size_t>(count), dist::DType::F32);
  }
}

void GradientSync::finish_reduction() {
  model_.set_grads_ready_hook(nullptr);
  const float inv = 1.0f / static_cast<float>(comm_.size());
  float* g = model_.grads().data();
  if (comm_.size() == 1) return;
  const int64_t n = model_.num_params();
  if (zero_ == 1) {
    if (bf16_) {
      round_to_bf16(g, g16_.data(), n);
      comm_.reduce_scatter_sum(g16_.data(), shard16_.data(), counts_, dist::DType::BF16);
      widen_scaled(shard16_.data(), shard_grad_.data(), static_cast<int64_t>(shard16_.size()), inv);
      return;
    }
    comm_.reduce_scatter_sum(g, shard_grad_.data(), counts_, dist::DType::F32);
    for (float& x : shard_grad_) x *= inv;
    return;
  }
  if (overlapping_) {
    for (const auto& [off, count] : rest_) start_sum(g, off, count);
  } else {
    start_sum(g, 0, n);
  }
  comm_.wait_all();
  overlapping_ = false;
  if (bf16_) {
    widen_scaled(g16_.data(), g, n, inv);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) g[i] *= inv;
}

double GradientSync::grad_sum_squares() {
  if (zero_ == 1 && comm_.size() > 1) {
    return comm_.sum(ops::sum_squares(shard_grad_.data(), static_cast<int64_t>(shard_grad_.size())));
  }
  return ops::sum_squares(model_.grads().data(), model_.num_params());
}

void GradientSync::step(const ops::AdamWParams& hp, float clip_scale) {
  float* p = model_.params().data();
  const bool sharded = zero_ == 1 && comm_.size() > 1;
  for (const ParamSpec& s : model_.specs()) {  // each tensor's part inside [lo_, hi_)
    const int64_t a = std::max(lo_, s.offset), b = std::min(hi_, s.offset + s.numel());
    if (a >= b) continue;
    // ZeRO-1 holds this rank's averaged gradient in its own buffer, indexed from lo_.
    const float* g = sharded ? shard_grad_.data() + (a - lo_) : model_.grads().data() + a;
    ops::adamw_update(p + a, g, m_.data() + (a - lo_), v_.data() + (a - lo_), b - a, hp, s.decay, clip_scale);
  }
  if (zero_ == 1 && comm_.size() > 1) comm_.allgather(p + lo_, p, counts_, dist::DType::F32);
}

void GradientSync::gather_state(std::vector<float>& m_full, std::vector<float>& v_full) {
  if (zero_ == 0 || comm_.size() == 1) {
    m_full.assign(m_.begin(), m_.end());
    v_full.assign(v_.begin(), v_.end());
    return;
  }
  const bool root = comm_.rank() == 0;
  m_full.assign(root ? static_cast<size_t>(model_.num_params()) : 0, 0.0f);
  v_full.assign(m_full.size(), 0.0f);
  comm_.gather(m_.data(), root ? m_full.data() : nullptr, counts_, dist::DType::F32, 0);
  comm_.gather(v_.data(), root ? v_full.data() : nullptr, counts_, dist::DType::F32, 0);
}

void GradientSync::load_state(std::span<const float> m_full, std::span<const float> v_full) {
  FLASHGPT_CHECK(static_cast<int64_t>(m_full.size()) == model_.num_params() && m_full.size() == v_full.size(),
                 "optimizer state: {} values for {} parameters", m_full.size(), model_.num_params());
  std::copy(m_full.begin() + lo_, m_full.begin() + hi_, m_.begin());
  std::copy(v_full.begin() + lo_, v_full.begin() + hi_, v_.begin());
}

}  // namespace flashgpt
