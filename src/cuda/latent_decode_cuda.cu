// The paged latent decode's entry point (latent_decode_cuda.h): the checks, the plan (which split
// kernel, how many splits), the scratch for the splits, and the combine step that merges them
// (split_combine.h). The split kernels are in latent_decode_cuda_cores.cu and latent_decode_tc.cu.
#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
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
  if (opt.splits > 0) {
    FLASHGPT_CUDA_REQUIRE(opt.splits <= 65535, "latent decode: at most 65535 splits");
    plan.splits = opt.splits;
  } else {
    int sms = 0;
    FLASHGPT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    const int64_t blocks = pd.B * ((d.rows() + info.rows - 1) / info.rows);
    plan.splits = choose_latent_splits(blocks, pd.max_pages, static_cast<int64_t>(sms) * std::max(1, info.blocks_per_sm));
  }
  plan.workspace_bytes = split_kv::workspace_bytes(query_rows(pd), pd.n_latent, plan.splits);
  return plan;
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
  if (plan.splits > 1 && !ws) {
    own = std::make_unique<DeviceBuffer>(plan.workspace_bytes);
    ws = own->get();
  }
  const split_kv::Partials part = split_kv::partials(ws, query_rows(pd), pd.n_latent, plan.splits);
  const Args<D> a{dev(q_abs), dev(cache), block_table, seq_lens, dev(out), lse, part.o, part.lse};
  if constexpr (std::is_same_v<T, bf16>) {
    if (plan.kernel != LatentDecodeKernel::CudaCores) {
      FLASHGPT_CUDA_REQUIRE(reinterpret_cast<uintptr_t>(q_abs) % 16 == 0 && reinterpret_cast<uintptr_t>(cache) % 16 == 0,
                            "tensor-core latent decode: q_abs and the cache must be 16-byte aligned");
    }
    if (plan.kernel == LatentDecodeKernel::Wgmma) {
      launch_wgmma(d, scale, plan.splits, a);
    } else if (plan.kernel == LatentDecodeKernel::TensorCores) {
      launch_tensor_cores(d, scale, plan.splits, a, tc_wide(d));
    } else {
      launch_cuda_cores<D>(d, scale, plan.splits, a);
    }
  } else {
    launch_cuda_cores<D>(d, scale, plan.splits, a);
  }
  if (plan.splits > 1) {
    split_kv::launch_combine<D>("latent decode combine", pd.B, pd.Tq, pd.H, pd.n_latent, plan.splits, part.o,
                                part.lse, dev(out), lse);
  }
  if (own) synchronize();  // the scratch is freed on return
}

template LatentDecodePlan plan_latent_decode<float>(const PagedLatentDims&, const LatentDecodeOptions&);
template LatentDecodePlan plan_latent_decode<bf16>(const PagedLatentDims&, const LatentDecodeOptions&);
template void latent_decode_paged<float>(const PagedLatentDims&, float, const float*, const float*, const int32_t*,
                                         const int32_t*, float*, float*, const LatentDecodeOptions&);
template void latent_decode_paged<bf16>(const PagedLatentDims&, float, const bf16*, const bf16*, const int32_t*,
                                        const int32_t*, bf16*, float*, const LatentDecodeOptions&);

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
