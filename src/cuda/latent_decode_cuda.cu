// The paged latent decode's entry point (latent_decode_cuda.h): the checks, the plan (which split
// kernel, which schedule, how many splits or chunk slots), the scratch for the schedule and the
// splits, and the combine step that merges them (split_combine.h). The split kernels are in
// latent_decode_cuda_cores.cu, latent_decode_tc.cu and latent_decode_wgmma.cu; the balanced
// schedule in latent_decode_schedule.cu.
#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <type_traits>

#include "cuda/device_math.h"
#include "cuda/latent_decode_kernels.h"
#include "cuda/split_combine.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/latent_decode_cuda.h"
#include "flashgpt/cuda/warpgroup_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

using namespace latent_decode;

constexpr int64_t kMaxLatent = 512;
constexpr int kMaxSplits = 64;

Dims dims_of(const PagedLatentDims& p) { return {p.B, p.H, p.Tq, p.n_latent, p.row(), p.page_size, p.max_pages}; }

void check_dims(const PagedLatentDims& d) {
  FLASHGPT_CUDA_REQUIRE(d.B > 0 && d.H > 0 && d.Tq > 0 && d.page_size > 0 && d.max_pages > 0,
                        "latent decode: B, H, Tq, page_size and max_pages must be positive");
  FLASHGPT_CUDA_REQUIRE(d.n_latent > 0 && d.n_latent <= kMaxLatent && d.rope_dim >= 0,
                        "latent decode: n_latent must be 1…" + std::to_string(kMaxLatent) + " (got " +
                            std::to_string(d.n_latent) + ") and rope_dim not negative");
  FLASHGPT_CUDA_REQUIRE(d.B <= 65535, "latent decode: at most 65535 sequences per call");
}

// The splits' partial results (split_combine.h): one fp32 row of n_latent per (split, sequence,
// query row), then their log-sum-exps.
int64_t query_rows(const PagedLatentDims& d) { return d.B * d.Tq * d.H; }

// The row groups (blocks) of one sequence's chunk, and how many split blocks the GPU runs at once.
std::pair<int64_t, int64_t> groups_and_slots(const PagedLatentDims& pd, const LaunchInfo& info) {
  int device = 0, sms = 0;
  FLASHGPT_CUDA_CHECK(cudaGetDevice(&device));
  FLASHGPT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return {(pd.Tq * pd.H + info.rows - 1) / info.rows, static_cast<int64_t>(sms) * std::max(1, info.blocks_per_sm)};
}

// Wide tensor-core tiles where the GPU gives a block their shared memory.
bool tc_wide(const Dims& d) {
  int device = 0, limit = 0;
  FLASHGPT_CUDA_CHECK(cudaGetDevice(&device));
  FLASHGPT_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return tc_shared_bytes(d, true) <= static_cast<size_t>(limit);
}

}  // namespace

bool latent_decode_tc_supports(int64_t n_latent, int64_t rope_dim) { return tc_supports(n_latent, rope_dim); }

int choose_latent_splits(int64_t blocks, int64_t pages, int64_t slots) {
  FLASHGPT_CUDA_REQUIRE(blocks > 0 && pages > 0 && slots > 0, "latent decode: blocks, pages and slots must be positive");
  return split_kv::choose(blocks, pages, slots, kMaxSplits, 1, 2);
}

template <typename T>
LatentDecodePlan plan_latent_decode(const PagedLatentDims& pd, const LatentDecodeOptions& opt) {
  check_dims(pd);
  const Dims d = dims_of(pd);
  constexpr bool is_bf16 = std::is_same_v<T, bf16>;
  const bool tc_ok = is_bf16 && tc_supports(pd.n_latent, pd.rope_dim);
  LatentDecodePlan plan;
  if (opt.kernel == LatentDecodeKernel::TensorCores) {
    FLASHGPT_CUDA_REQUIRE(tc_ok, std::string("latent decode: the tensor-core kernel runs bf16 at n_latent/rope_dim "
                                             "512/64, 32/32 or 32/0 (got ") +
                                     (is_bf16 ? "bf16" : "fp32") + " at " + std::to_string(pd.n_latent) + "/" +
                                     std::to_string(pd.rope_dim) + ")");
  }
  if (opt.kernel == LatentDecodeKernel::Wgmma) {
    FLASHGPT_CUDA_REQUIRE(is_bf16 && wgmma_supports(pd.n_latent, pd.rope_dim),
                          std::string("latent decode: the Hopper (wgmma) kernel runs bf16 at n_latent/rope_dim 512/64 "
                                      "(got ") +
                              (is_bf16 ? "bf16" : "fp32") + " at " + std::to_string(pd.n_latent) + "/" +
                              std::to_string(pd.rope_dim) + ")");
    FLASHGPT_CUDA_REQUIRE(warpgroup_mma_supported(), "latent decode: the Hopper (wgmma) kernel needs a compute "
                                                     "capability 9.0 GPU and a build with sm_90a code");
  }
  plan.kernel = opt.kernel == LatentDecodeKernel::Wgmma                ? LatentDecodeKernel::Wgmma
                : opt.kernel == LatentDecodeKernel::CudaCores || !tc_ok ? LatentDecodeKernel::CudaCores
                                                                         : LatentDecodeKernel::TensorCores;
  // What a launch needs and how many blocks an SM holds: asked of the runtime once per kernel and
  // size on each device, since every decode step plans.
  static std::mutex mutex;
  static std::map<std::tuple<int, LatentDecodeKernel, bool, int64_t, int64_t>, LaunchInfo> known;
  int device = 0;
  FLASHGPT_CUDA_CHECK(cudaGetDevice(&device));
  const auto key = std::make_tuple(device, plan.kernel, is_bf16, d.nl, d.row);
  LaunchInfo info;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    auto it = known.find(key);
    if (it == known.end()) {
      const LaunchInfo made = plan.kernel == LatentDecodeKernel::Wgmma         ? wgmma_info(d)
                              : plan.kernel == LatentDecodeKernel::TensorCores ? tc_info(d, tc_wide(d))
                                                                               : cuda_cores_info<device_t<T>>(d);
      it = known.emplace(key, made).first;
    }
    info = it->second;
  }
  plan.rows_per_block = info.rows;
  plan.blocks_per_sm = info.blocks_per_sm;
  plan.shared_bytes = info.shared_bytes;
  FLASHGPT_CUDA_REQUIRE(opt.splits >= 0 && opt.splits <= 65535, "latent decode: splits must be 0 (chosen) … 65535");
  FLASHGPT_CUDA_REQUIRE(opt.schedule != LatentSchedule::Balanced || opt.splits == 0,
                        "latent decode: a split count is for the uniform schedule (the balanced one chooses its "
                        "chunks on the GPU)");
  plan.schedule = opt.schedule == LatentSchedule::Balanced || (opt.schedule == LatentSchedule::Auto && opt.splits == 0)
                      ? LatentSchedule::Balanced
                      : LatentSchedule::Uniform;
  const auto [groups, slots] = groups_and_slots(pd, info);
  const int uniform = opt.splits > 0 ? opt.splits : choose_latent_splits(pd.B * groups, pd.max_pages, slots);
  if (plan.schedule == LatentSchedule::Uniform) {
    plan.splits = uniform;
    plan.workspace_bytes = split_kv::workspace_bytes(query_rows(pd), pd.n_latent, plan.splits);
    return plan;
  }
  // Balanced: room for as many chunks as the uniform choice over the whole table makes, plus a
  // wave of the GPU's blocks for sequences shorter than the table to be cut finer; never more than
  // the table's pages or kMaxChunkSplits a sequence.
  plan.splits = 0;
  plan.chunk_slots = std::min(pd.B * std::min<int64_t>(pd.max_pages, kMaxChunkSplits),
                              pd.B * uniform + (slots + groups - 1) / groups);
  plan.chunk_slots = std::max(plan.chunk_slots, pd.B);
  FLASHGPT_CUDA_REQUIRE(plan.chunk_slots <= 2147483647 / 2, "latent decode: too many sequences for one call");
  // Partial results only where a sequence can be cut (a table of one page cuts none).
  plan.workspace_bytes = schedule_bytes(pd.B, plan.chunk_slots) +
                         (plan.chunk_slots > pd.B
                              ? split_kv::workspace_bytes(d.rows(), pd.n_latent, static_cast<int>(plan.chunk_slots))
                              : 0);
  return plan;
}

namespace {

// Queues the balanced schedule of a planned call into workspace.
void make_schedule(const PagedLatentDims& pd, const LatentDecodePlan& plan, const int32_t* seq_lens, void* workspace) {
  const LaunchInfo info{plan.rows_per_block, 0, plan.shared_bytes, plan.blocks_per_sm};
  const auto [groups, slots] = groups_and_slots(pd, info);
  launch_schedule(dims_of(pd), seq_lens, groups, slots, plan.chunk_slots, schedule_views(workspace, pd.B));
}

}  // namespace

template <typename T>
void latent_decode_schedule(const PagedLatentDims& pd, const int32_t* seq_lens, const LatentDecodeOptions& opt) {
  const LatentDecodePlan plan = plan_latent_decode<T>(pd, opt);
  FLASHGPT_CUDA_REQUIRE(plan.schedule == LatentSchedule::Balanced,
                        "latent decode: only the balanced schedule is made ahead (these options are uniform)");
  FLASHGPT_CUDA_REQUIRE(opt.workspace != nullptr, "latent decode: the schedule is made in the caller's workspace");
  make_schedule(pd, plan, seq_lens, opt.workspace);
}

LatentChunks read_latent_schedule(const void* workspace) {
  FLASHGPT_CUDA_REQUIRE(workspace != nullptr, "latent decode: no workspace to read the schedule from");
  int32_t header[4] = {};
  synchronize();
  copy_to_host(header, workspace, sizeof(header));
  return {header[0], header[1], header[2], header[3]};
}

template <typename T>
void latent_decode_paged(const PagedLatentDims& pd, float scale, const T* q_abs, const T* cache,
                         const int32_t* block_table, const int32_t* seq_lens, T* out, float* lse,
                         const LatentDecodeOptions& opt) {
  const LatentDecodePlan plan = plan_latent_decode<T>(pd, opt);
  const Dims d = dims_of(pd);
  using D = device_t<T>;
  std::unique_ptr<DeviceBuffer> own;
  void* ws = opt.workspace;
  if (plan.workspace_bytes > 0 && !ws) {
    own = std::make_unique<DeviceBuffer>(plan.workspace_bytes);
    ws = own->get();
  }
  split_kv::Partials part;
  Split split;
  ScheduleViews views{};
  if (plan.schedule == LatentSchedule::Balanced) {
    views = schedule_views(ws, pd.B);
    if (!opt.schedule_ready || own) make_schedule(pd, plan, seq_lens, ws);
    if (plan.chunk_slots > pd.B) {
      part = split_kv::partials(static_cast<char*>(ws) + schedule_bytes(pd.B, plan.chunk_slots), d.rows(),
                                pd.n_latent, static_cast<int>(plan.chunk_slots));
    }
    split = Split{0, views.header, views.items, plan.chunk_slots};
  } else {
    part = split_kv::partials(ws, query_rows(pd), pd.n_latent, plan.splits);
    split = Split{plan.splits, nullptr, nullptr, 0};
  }
  const Args<D> a{dev(q_abs), dev(cache), block_table, seq_lens, dev(out), lse, part.o, part.lse, split};
  if constexpr (std::is_same_v<T, bf16>) {
    if (plan.kernel != LatentDecodeKernel::CudaCores) {
      FLASHGPT_CUDA_REQUIRE(reinterpret_cast<uintptr_t>(q_abs) % 16 == 0 && reinterpret_cast<uintptr_t>(cache) % 16 == 0,
                            "tensor-core latent decode: q_abs and the cache must be 16-byte aligned");
    }
    if (plan.kernel == LatentDecodeKernel::Wgmma) {
      launch_wgmma(d, scale, a);
    } else if (plan.kernel == LatentDecodeKernel::TensorCores) {
      launch_tensor_cores(d, scale, a, tc_wide(d));
    } else {
      launch_cuda_cores<D>(d, scale, a);
    }
  } else {
    launch_cuda_cores<D>(d, scale, a);
  }
  if (plan.schedule == LatentSchedule::Balanced) {
    // At most min(B, chunk_slots − B) sequences are cut (each cut one adds a chunk); the blocks
    // stride over their rows, a few per SM.
    const int64_t most_cut = std::min(pd.B, plan.chunk_slots - pd.B);
    if (most_cut > 0) {
      int device = 0, sms = 0;
      FLASHGPT_CUDA_CHECK(cudaGetDevice(&device));
      FLASHGPT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
      split_kv::launch_combine_chunks<D>("latent decode combine", std::min<int64_t>(most_cut * d.rows(), 8LL * sms),
                                         d.rows(), pd.H, pd.Tq, pd.n_latent, views.header + 2, views.cut, views.first,
                                         part.o, part.lse, dev(out), lse);
    }
  } else if (plan.splits > 1) {
    split_kv::launch_combine<D>("latent decode combine", pd.B, pd.Tq, pd.H, pd.n_latent, plan.splits, part.o,
                                part.lse, dev(out), lse);
  }
  if (own) synchronize();  // the scratch is freed on return
}

template LatentDecodePlan plan_latent_decode<float>(const PagedLatentDims&, const LatentDecodeOptions&);
template LatentDecodePlan plan_latent_decode<bf16>(const PagedLatentDims&, const LatentDecodeOptions&);
template void latent_decode_schedule<float>(const PagedLatentDims&, const int32_t*, const LatentDecodeOptions&);
template void latent_decode_schedule<bf16>(const PagedLatentDims&, const int32_t*, const LatentDecodeOptions&);
template void latent_decode_paged<float>(const PagedLatentDims&, float, const float*, const float*, const int32_t*,
                                         const int32_t*, float*, float*, const LatentDecodeOptions&);
template void latent_decode_paged<bf16>(const PagedLatentDims&, float, const bf16*, const bf16*, const int32_t*,
                                        const int32_t*, bf16*, float*, const LatentDecodeOptions&);

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
