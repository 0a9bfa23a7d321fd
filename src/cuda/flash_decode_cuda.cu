// Flash decode (flash_decode_cuda.h): the plan and the entry point over the two split kernels
// (flash_decode_tiles.h, flash_decode_warps.h, and what they share in flash_decode_kernels.h);
// the combine step is split_combine.h's.
#include "flashgpt/cuda/flash_decode_cuda.h"

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>

#include "cuda/flash_decode_kernels.h"
#include "cuda/flash_decode_tiles.h"
#include "cuda/flash_decode_warps.h"
#include "cuda/split_combine.h"
#include "flashgpt/cuda/device_memory.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace flash_decode_kernels {

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename E>
Dims dims_of(const AttentionDims& a, int stages) {
  constexpr int CE = kChunk<E>;
  Dims d{};
  d.B = a.B, d.Hq = a.Hq, d.Hkv = a.Hkv, d.Tq = a.Tq, d.Tk = a.Tk, d.Dqk = a.Dqk, d.Dv = a.Dv;
  d.kv_rows = a.kv_rows(), d.q_row = a.q_row(), d.k_row = a.k_row(), d.v_row = a.v_row(), d.group = a.Hq / a.Hkv;
  d.rows = a.Tq * d.group;
  d.qc = static_cast<int>((a.Dqk + CE - 1) / CE);
  d.vc = static_cast<int>((a.Dv + CE - 1) / CE);
  d.ks = (d.qc + 1) * CE;  // one spare chunk: consecutive keys start four banks apart
  d.vs = (d.vc + 1) * CE;
  // Key classes: as many as leave every thread some output chunks, at most one key each.
  const int64_t items = std::min<int64_t>(kRows, d.rows) * d.vc;
  d.groups = 1;
  while (d.groups < kKeys && items * d.groups * 2 <= kThreads) d.groups *= 2;
  d.stages = stages;
  d.stage_bytes = static_cast<int64_t>(kKeys) * (d.ks + d.vs) * static_cast<int64_t>(sizeof(E));
  d.red_bytes = d.groups > 1 ? static_cast<int64_t>(sizeof(float)) * d.groups * items * CE : 0;
  return d;
}

template <typename E, typename F>
void with_kernel(FlashDecodeKernel kernel, bool async, F&& f) {
  if (kernel == FlashDecodeKernel::Warps) return f(warps_kernel<E>, kWarpThreads);
  if (async) return f(split_kernel<E, true>, kThreads);
  return f(split_kernel<E, false>, kThreads);
}

int shared_limit() {
  int device = 0, limit = 0;
  FLASHGPT_CUDA_CHECK(cudaGetDevice(&device));
  FLASHGPT_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return limit;
}

void check_dims(const AttentionDims& d) {
  FLASHGPT_CUDA_REQUIRE(d.B > 0 && d.Hq > 0 && d.Hkv > 0 && d.Tq > 0 && d.Tk >= 0,
                        "flash decode: B, Hq, Hkv and Tq must be positive and Tk not negative");
  FLASHGPT_CUDA_REQUIRE(d.Hq % d.Hkv == 0, "flash decode: Hq (" + std::to_string(d.Hq) +
                                               ") must be a multiple of Hkv (" + std::to_string(d.Hkv) + ")");
  FLASHGPT_CUDA_REQUIRE(flash_decode_supports(d.Dqk, d.Dv),
                        "flash decode: head dims must be 1…" + std::to_string(kFlashDecodeMaxHeadDim) + " (got Dqk " +
                            std::to_string(d.Dqk) + ", Dv " + std::to_string(d.Dv) + ")");
  FLASHGPT_CUDA_REQUIRE(d.B * d.Hkv <= 0x7fffffffLL, "flash decode: B·Hkv must be below 2³¹");
  FLASHGPT_CUDA_REQUIRE((d.Tq * (d.Hq / d.Hkv) + kRows - 1) / kRows <= 65535,
                        "flash decode: at most 65535·16 query rows per key/value head");
}

}  // namespace flash_decode_kernels

using namespace flash_decode_kernels;

template <typename T>
bool flash_decode_warps_run(const AttentionDims& d, const T* k, const T* v) {
  return warps_kernel_runs<device_t<T>>(d, k, v);
}

bool flash_decode_supports(int64_t Dqk, int64_t Dv) {
  return Dqk > 0 && Dv > 0 && Dqk <= kFlashDecodeMaxHeadDim && Dv <= kFlashDecodeMaxHeadDim;
}

int choose_flash_decode_splits(int64_t blocks, int64_t tiles, int64_t slots) {
  FLASHGPT_CUDA_REQUIRE(blocks > 0 && tiles > 0 && slots > 0, "flash decode: blocks, tiles and slots must be positive");
  // A split costs about two tiles (its queries, its partial row) and the combine about four.
  return split_kv::choose(blocks, tiles, slots, kMaxSplits, 2, 4);
}

template <typename T>
FlashDecodePlan plan_flash_decode(const AttentionDims& ad, const FlashDecodeOptions& opt, const T* q, const T* k,
                                  const T* v) {
  check_dims(ad);
  using E = device_t<T>;
  constexpr int CE = kChunk<E>;
  FlashDecodePlan plan;
  plan.key_tile = kKeys;
  const int limit = shared_limit();
  const bool warps = opt.kernel == FlashDecodeKernel::Warps;
  Dims d{};
  if (warps) {
    FLASHGPT_CUDA_REQUIRE(warps_kernel_runs<E>(ad, k, v),
                          "flash decode: the warps kernel needs key and value rows of whole 16-byte chunks, 16-byte "
                          "aligned, and a value row of 1, 2, 4, 8, 16 or 32 chunks (Dqk " + std::to_string(ad.Dqk) +
                              ", Dv " + std::to_string(ad.Dv) + ", k row " + std::to_string(ad.k_row()) + ", v row " +
                              std::to_string(ad.v_row()) + ")");
    plan.kernel = FlashDecodeKernel::Warps;
    plan.rows_per_block = kWarpRows;
    plan.stages = 0;
    plan.async_copies = false;
    d = dims_of<E>(ad, 0);
    plan.shared_bytes = static_cast<size_t>(warp_layout_of<E>(d).total);
    FLASHGPT_CUDA_REQUIRE((ad.Tq * (ad.Hq / ad.Hkv) + kWarpRows - 1) / kWarpRows <= 65535,
                          "flash decode: the warps kernel takes at most 65535·4 query rows per key/value head");
  } else {
    plan.kernel = FlashDecodeKernel::Tiles;
    plan.async_copies = ad.Dqk % CE == 0 && ad.Dv % CE == 0 && ad.k_row() % CE == 0 && ad.v_row() % CE == 0 &&
                        aligned16(k) && aligned16(v);
    // Two stages where the GPU gives a block the shared memory, else one.
    d = dims_of<E>(ad, 2);
    if (layout_of<E>(d).total > limit) d = dims_of<E>(ad, 1);
    plan.stages = d.stages;
    plan.shared_bytes = static_cast<size_t>(layout_of<E>(d).total);
  }
  (void)q;
  FLASHGPT_CUDA_REQUIRE(plan.shared_bytes <= static_cast<size_t>(limit),
                        "flash decode: needs " + std::to_string(plan.shared_bytes) +
                            " bytes of shared memory per block, the GPU allows " + std::to_string(limit));
  // Blocks per SM, asked of the runtime once per kernel and size on each device (every decoding
  // step plans).
  static std::mutex mutex;
  static std::map<std::tuple<int, bool, int, size_t>, std::pair<int, int>> known;  // → (blocks per SM, SMs)
  int device = 0;
  FLASHGPT_CUDA_CHECK(cudaGetDevice(&device));
  const int variant = warps ? 2 : plan.async_copies ? 1 : 0;
  const auto key = std::make_tuple(device, std::is_same_v<T, bf16>, variant, plan.shared_bytes);
  std::pair<int, int> occ;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    auto it = known.find(key);
    if (it == known.end()) {
      int sms = 0;
      FLASHGPT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
      int bps = 0;
      with_kernel<E>(plan.kernel, plan.async_copies, [&](auto kernel, int threads) {
        allow_shared(kernel, plan.shared_bytes, "flash decode");
        bps = max_blocks_per_sm(kernel, threads, plan.shared_bytes);
      });
      it = known.emplace(key, std::make_pair(bps, sms)).first;
    }
    occ = it->second;
  }
  plan.blocks_per_sm = occ.first;
  const int64_t blocks = ad.B * ad.Hkv * ((d.rows + plan.rows_per_block - 1) / plan.rows_per_block);
  const int64_t tiles = std::max<int64_t>(1, (ad.Tk + kKeys - 1) / kKeys);
  // The warps kernel's block takes kWarpsPerBlock tiles a step.
  const int64_t steps = warps ? (tiles + kWarpsPerBlock - 1) / kWarpsPerBlock : tiles;
  const int automatic =
      choose_flash_decode_splits(blocks, steps, static_cast<int64_t>(occ.second) * std::max(1, occ.first));
  plan.beats_flash_kernel = d.rows >= 2 || automatic >= kFlashDecodeWinningSplits;
  if (opt.splits > 0) {
    FLASHGPT_CUDA_REQUIRE(opt.splits <= 65535, "flash decode: at most 65535 splits");
    plan.splits = opt.splits;
  } else {
    plan.splits = automatic;
  }
  plan.workspace_bytes = split_kv::workspace_bytes(ad.B * ad.Tq * ad.Hq, ad.Dv, plan.splits);
  return plan;
}

template <typename T>
void flash_decode(const AttentionDims& ad, const AttentionMask& am, float scale, const T* q, const T* k, const T* v,
                  T* o, float* lse, const FlashDecodeOptions& opt) {
  check_attention_dims(ad, am, MaskMemory::Device);
  const FlashDecodePlan plan = plan_flash_decode<T>(ad, opt, q, k, v);
  using E = device_t<T>;
  const Dims d = dims_of<E>(ad, plan.stages);
  const int64_t row_blocks = (d.rows + plan.rows_per_block - 1) / plan.rows_per_block;
  std::unique_ptr<DeviceBuffer> own;
  void* ws = opt.workspace;
  if (plan.splits > 1 && !ws) {
    own = std::make_unique<DeviceBuffer>(plan.workspace_bytes);
    ws = own->get();
  }
  const split_kv::Partials part = split_kv::partials(ws, ad.B * ad.Tq * ad.Hq, ad.Dv, plan.splits);
  const Out out{o, lse, part.o, part.lse};
  const dim3 grid(static_cast<unsigned>(ad.B * ad.Hkv), static_cast<unsigned>(plan.splits),
                  static_cast<unsigned>(row_blocks));
  with_kernel<E>(plan.kernel, plan.async_copies, [&](auto kernel, int threads) {
    allow_shared(kernel, plan.shared_bytes, "flash decode");
    launch_kernel(plan.kernel == FlashDecodeKernel::Warps ? "flash decode (warps)" : "flash decode", kernel, grid,
                  threads, plan.shared_bytes, nullptr, d, mask_of(am), scale, plan.splits, dev(q), dev(k), dev(v),
                  out);
  });
  if (plan.splits > 1) {
    split_kv::launch_combine<E>("flash decode combine", ad.B, ad.Tq, ad.Hq, ad.Dv, plan.splits, part.o, part.lse,
                                dev(o), lse);
  }
  if (own) synchronize();  // the scratch is freed on return
}

template bool flash_decode_warps_run<float>(const AttentionDims&, const float*, const float*);
template bool flash_decode_warps_run<bf16>(const AttentionDims&, const bf16*, const bf16*);
template FlashDecodePlan plan_flash_decode<float>(const AttentionDims&, const FlashDecodeOptions&, const float*,
                                                  const float*, const float*);
template FlashDecodePlan plan_flash_decode<bf16>(const AttentionDims&, const FlashDecodeOptions&, const bf16*,
                                                 const bf16*, const bf16*);
template void flash_decode<float>(const AttentionDims&, const AttentionMask&, float, const float*, const float*,
                                  const float*, float*, float*, const FlashDecodeOptions&);
template void flash_decode<bf16>(const AttentionDims&, const AttentionMask&, float, const bf16*, const bf16*,
                                 const bf16*, bf16*, float*, const FlashDecodeOptions&);

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
