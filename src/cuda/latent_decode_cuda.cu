// The paged latent decode's entry point (latent_decode_cuda.h): the checks, the plan (which split
// kernel, how many splits), the scratch for the splits, and the combine step that merges them —
// one block per query row, each split weighted by e^{lse_s − lse}. The split kernels are in
// latent_decode_cuda_cores.cu and latent_decode_tc.cu.
#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>

#include "cuda/device_math.h"
#include "cuda/latent_decode_kernels.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/latent_decode_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

using namespace latent_decode;

constexpr int64_t kMaxLatent = 512;
constexpr int kMaxSplits = 64;

template <typename T>
__global__ void combine_kernel(Dims d, int splits, const float* __restrict__ part_o,
                               const float* __restrict__ part_lse, T* __restrict__ out, float* __restrict__ lse) {
  const int64_t rows = d.B * d.rows();
  const int64_t orow = blockIdx.x;  // [B, Tq, H]
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, part_lse[s * rows + orow]);
  float total = 0.0f;
  if (mx != -INFINITY)
    for (int s = 0; s < splits; ++s) total += expf(part_lse[s * rows + orow] - mx);
  const float row_lse = mx == -INFINITY ? -INFINITY : mx + logf(total);
  for (int64_t c = threadIdx.x; c < d.nl; c += blockDim.x) {
    float o = 0.0f;
    if (mx != -INFINITY) {
      for (int s = 0; s < splits; ++s) {
        const float w = expf(part_lse[s * rows + orow] - row_lse);  // 0 for an empty split
        if (w > 0.0f) o += w * part_o[(s * rows + orow) * d.nl + c];
      }
    }
    out[orow * d.nl + c] = from_f32<T>(o);
  }
  if (threadIdx.x == 0) {
    const int64_t h = orow % d.H, tq = (orow / d.H) % d.Tq, b = orow / (d.H * d.Tq);
    lse[(b * d.H + h) * d.Tq + tq] = row_lse;
  }
}

Dims dims_of(const PagedLatentDims& p) { return {p.B, p.H, p.Tq, p.n_latent, p.row(), p.page_size, p.max_pages}; }

void check_dims(const PagedLatentDims& d) {
  FLASHGPT_CUDA_REQUIRE(d.B > 0 && d.H > 0 && d.Tq > 0 && d.page_size > 0 && d.max_pages > 0,
                        "latent decode: B, H, Tq, page_size and max_pages must be positive");
  FLASHGPT_CUDA_REQUIRE(d.n_latent > 0 && d.n_latent <= kMaxLatent && d.rope_dim >= 0,
                        "latent decode: n_latent must be 1…" + std::to_string(kMaxLatent) + " (got " +
                            std::to_string(d.n_latent) + ") and rope_dim not negative");
  FLASHGPT_CUDA_REQUIRE(d.B <= 65535, "latent decode: at most 65535 sequences per call");
}

// The splits' partial results: one fp32 row of n_latent per (split, sequence, query row), and
// one log-sum-exp each after them (from a 256-byte boundary).
size_t partial_rows(const PagedLatentDims& d, int splits) {
  return static_cast<size_t>(splits) * static_cast<size_t>(d.B * d.Tq * d.H);
}
size_t partial_o_bytes(const PagedLatentDims& d, int splits) {
  return (sizeof(float) * partial_rows(d, splits) * static_cast<size_t>(d.n_latent) + 255) / 256 * 256;
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
  const int64_t most = std::min<int64_t>(pages, kMaxSplits);
  int best = 1;
  int64_t best_cost = 0;
  for (int64_t s = 1; s <= most; ++s) {
    const int64_t waves = (blocks * s + slots - 1) / slots;
    const int64_t cost = waves * ((pages + s - 1) / s + 1) + (s > 1 ? 2 : 0);
    if (s == 1 || cost < best_cost) {
      best = static_cast<int>(s);
      best_cost = cost;
    }
  }
  return best;
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
  plan.kernel = opt.kernel == LatentDecodeKernel::CudaCores || !tc_ok ? LatentDecodeKernel::CudaCores
                                                                         : LatentDecodeKernel::TensorCores;
  // What a launch needs and how many blocks an SM holds: asked of the runtime once per kernel and
  // size on each device, since every decode step plans.
  static std::mutex mutex;
  static std::map<std::tuple<int, bool, bool, int64_t, int64_t>, LaunchInfo> known;
  const bool tensor_cores = plan.kernel == LatentDecodeKernel::TensorCores;
  int device = 0;
  FLASHGPT_CUDA_CHECK(cudaGetDevice(&device));
  const auto key = std::make_tuple(device, tensor_cores, is_bf16, d.nl, d.row);
  LaunchInfo info;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    auto it = known.find(key);
    if (it == known.end()) {
      it = known.emplace(key, tensor_cores ? tc_info(d, tc_wide(d)) : cuda_cores_info<device_t<T>>(d)).first;
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
  if (plan.splits > 1) plan.workspace_bytes = partial_o_bytes(pd, plan.splits) + sizeof(float) * partial_rows(pd, plan.splits);
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
  // The scratch: the splits' outputs, then their log-sum-exps.
  float* part_o = plan.splits > 1 ? static_cast<float*>(ws) : nullptr;
  float* part_lse =
      plan.splits > 1 ? reinterpret_cast<float*>(static_cast<char*>(ws) + partial_o_bytes(pd, plan.splits)) : nullptr;
  const Args<D> a{dev(q_abs), dev(cache), block_table, seq_lens, dev(out), lse, part_o, part_lse};
  if constexpr (std::is_same_v<T, bf16>) {
    if (plan.kernel == LatentDecodeKernel::TensorCores) {
      FLASHGPT_CUDA_REQUIRE(reinterpret_cast<uintptr_t>(q_abs) % 16 == 0 && reinterpret_cast<uintptr_t>(cache) % 16 == 0,
                            "tensor-core latent decode: q_abs and the cache must be 16-byte aligned");
      launch_tensor_cores(d, scale, plan.splits, a, tc_wide(d));
    } else {
      launch_cuda_cores<D>(d, scale, plan.splits, a);
    }
  } else {
    launch_cuda_cores<D>(d, scale, plan.splits, a);
  }
  if (plan.splits > 1) {
    launch_kernel("latent decode combine", combine_kernel<D>, static_cast<unsigned>(pd.B * d.rows()), 128, 0, nullptr,
                  d, plan.splits, static_cast<const float*>(part_o), static_cast<const float*>(part_lse), dev(out),
                  lse);
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
