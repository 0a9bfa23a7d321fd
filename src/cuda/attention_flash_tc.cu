// The tensor-core flash attention's entry points (attention_cuda.h): checks, the choice of tile
// shape, the dispatch to the per-head-dim instantiations (attention_flash_tc_d*.cu), and the
// backward's two small passes around its main kernel —
//   before: D = rowsum(dO ∘ O) per (b, h, i) and the fp32 dQ accumulator zeroed, one warp per row;
//   after:  dQ = the accumulator rounded to bf16 or fp16;
// or, for the deterministic backward, the main kernel for dK and dV only and then the query-major
// dQ kernel (attention_flash_tc_backward_dq.h), with no accumulator.
#include <initializer_list>
#include <string>
#include <type_traits>

#include "cuda/attention_flash_tc_common.h"
#include "cuda/device_math.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/warpgroup_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

using namespace flash_tc;

template <typename E>
__global__ void backward_prologue_kernel(int64_t rows, int64_t Hq, int64_t Tq, int64_t Dqk, int64_t Dv,
                                         const E* __restrict__ o, const E* __restrict__ dout, float* __restrict__ dsum,
                                         float* __restrict__ dq_accum) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
    // r walks (b, i, h) in memory order; D is stored as (b, h, i) like lse.
    const int64_t h = r % Hq, i = (r / Hq) % Tq, b = r / (Hq * Tq);
    float s = 0.0f;
    for (int64_t c = lane; c < Dv; c += 32) s += tc::to_float(o[r * Dv + c]) * tc::to_float(dout[r * Dv + c]);
    s = warp_sum(s);
    if (lane == 0) dsum[(b * Hq + h) * Tq + i] = s;
    if (dq_accum)
      for (int64_t c = lane; c < Dqk; c += 32) dq_accum[r * Dqk + c] = 0.0f;
  }
}

// acc is dense [rows, width]; dq's rows are q_row apart (a fused projection's rows). A block per
// row at a time, its threads across the row: no division per element.
template <typename E>
__global__ void dq_convert_kernel(int64_t rows, int64_t width, int64_t q_row, const float* __restrict__ acc,
                                  E* __restrict__ dq) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    for (int64_t c = threadIdx.x; c < width; c += blockDim.x) dq[r * q_row + c] = tc::from_float<E>(acc[r * width + c]);
  }
}

template <typename T>
auto* dev_bf16(T* p) {
  return reinterpret_cast<std::conditional_t<std::is_const_v<T>, const __nv_bfloat16, __nv_bfloat16>*>(p);
}
template <typename T>
auto* dev_f16(T* p) {
  return reinterpret_cast<std::conditional_t<std::is_const_v<T>, const __half, __half>*>(p);
}

size_t round_up(size_t n) { return (n + 255) / 256 * 256; }

size_t dsum_bytes(const AttentionDims& d) {
  return round_up(sizeof(float) * static_cast<size_t>(d.B * d.Hq * d.Tq));
}

size_t dq_accum_bytes(const AttentionDims& d) {
  return round_up(sizeof(float) * static_cast<size_t>(d.B * d.Tq * d.Hq * d.Dqk));
}

// Calls f.template operator()<Dqk, Dv>() for the instantiated pair, or throws naming `what`.
template <typename F>
void with_head_dims(const AttentionDims& d, const char* what, F&& f) {
  if (d.Dqk == 64 && d.Dv == 64) return f.template operator()<64, 64>();
  if (d.Dqk == 96 && d.Dv == 64) return f.template operator()<96, 64>();
  if (d.Dqk == 128 && d.Dv == 128) return f.template operator()<128, 128>();
  if (d.Dqk == 192 && d.Dv == 128) return f.template operator()<192, 128>();
  FLASHGPT_CUDA_REQUIRE(false, std::string(what) + ": head dims (Dqk, Dv) must be 64/64, 96/64, 128/128 or 192/128 (got " +
                                   std::to_string(d.Dqk) + "/" + std::to_string(d.Dv) + ")");
}

// Wide tiles where asked for, or (Auto; Tall and Short, for the kernels they do not shape) where
// the GPU gives a block `wide_bytes` of shared memory.
bool use_wide(FlashTiles tiles, size_t wide_bytes) {
  if (tiles == FlashTiles::Wide || tiles == FlashTiles::Narrow) return tiles == FlashTiles::Wide;
  int device = 0, limit = 0;
  FLASHGPT_CUDA_CHECK(cudaGetDevice(&device));
  FLASHGPT_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return wide_bytes <= static_cast<size_t>(limit);
}

// cp.async moves 16-byte pieces: every row must start 16-byte aligned.
void check_alignment(const AttentionDims& d, const char* what, std::initializer_list<const void*> pointers) {
  bool ok = d.q_row() % 8 == 0 && d.k_row() % 8 == 0 && d.v_row() % 8 == 0;
  for (const void* p : pointers) ok = ok && reinterpret_cast<uintptr_t>(p) % 16 == 0;
  FLASHGPT_CUDA_REQUIRE(ok, std::string(what) + ": tensors must start 16-byte aligned and query/key/value rows be "
                                                "multiples of 8 elements (q row " + std::to_string(d.q_row()) +
                                ", k row " + std::to_string(d.k_row()) + ", v row " + std::to_string(d.v_row()) + ")");
}

// The forward's tiles for these head dims on this GPU.
template <typename L>
ForwardShape forward_shape(FlashTiles tiles) {
  if (tiles == FlashTiles::Tall && L::has_tall_forward()) return ForwardShape::Tall;
  if (flash_tiles_use_wgmma(tiles) && L::has_wgmma_forward() && warpgroup_mma_supported()) {
    switch (tiles) {
      case FlashTiles::WgmmaTma: return ForwardShape::WgmmaTma;
      case FlashTiles::WgmmaWs: return ForwardShape::WgmmaWs;
      case FlashTiles::WgmmaWsNoPingPong: return ForwardShape::WgmmaWsNoPingPong;
      default: return ForwardShape::Wgmma;
    }
  }
  return use_wide(tiles, L::forward_bytes(ForwardShape::Wide)) ? ForwardShape::Wide : ForwardShape::Narrow;
}

// The backward's (its first kernel's, in deterministic mode): the warp-specialized one for both
// warp-specialized tiles (the ping-pong is the forward's), Wgmma's for the other Hopper tiles.
template <typename L>
BackwardShape backward_shape(FlashTiles tiles) {
  if (tiles == FlashTiles::Short && L::has_short_backward()) return BackwardShape::Short;
  if (flash_tiles_use_wgmma(tiles) && L::has_wgmma_backward() && warpgroup_mma_supported()) {
    const bool ws = tiles == FlashTiles::WgmmaWs || tiles == FlashTiles::WgmmaWsNoPingPong;
    return ws ? BackwardShape::WgmmaWs : BackwardShape::Wgmma;
  }
  return use_wide(tiles, L::backward_bytes(BackwardShape::Wide)) ? BackwardShape::Wide : BackwardShape::Narrow;
}

template <typename E>
void forward_typed(const AttentionDims& ad, const AttentionMask& am, float scale, const E* q, const E* k, const E* v,
                   E* o, float* lse, FlashTiles tiles) {
  with_head_dims(ad, "tensor-core flash forward", [&]<int Dqk, int Dv>() {
    using L = Launchers<E, Dqk, Dv>;
    L::forward(dims_of(ad), mask_of(am), scale, q, k, v, o, lse, forward_shape<L>(tiles));
  });
}

template <typename E>
void backward_typed(const AttentionDims& ad, const AttentionMask& am, float scale, const E* q, const E* k,
                    const E* v, const E* o, const float* lse, const E* dout, E* dq, E* dk, E* dv, void* workspace,
                    FlashTiles tiles, bool deterministic) {
  with_head_dims(ad, "tensor-core flash backward", [&]<int Dqk, int Dv>() {
    using L = Launchers<E, Dqk, Dv>;
    const BackwardShape shape = backward_shape<L>(tiles);
    const bool dq_wide = use_wide(tiles, L::backward_dq_bytes(true));
    DeviceBuffer own;
    if (!workspace) {
      own = DeviceBuffer(flash_backward_workspace_bytes(ad, deterministic));
      workspace = own.get();
    }
    // D first, then (atomic mode only) the dQ accumulator.
    auto* dsum = static_cast<float*>(workspace);
    auto* dq_accum =
        deterministic ? nullptr : reinterpret_cast<float*>(static_cast<unsigned char*>(workspace) + dsum_bytes(ad));
    const int64_t rows = ad.B * ad.Tq * ad.Hq;
    launch_kernel("tensor-core flash backward D = rowsum(dO∘O)", backward_prologue_kernel<E>, grid_for(rows, 8), 256,
                  0, nullptr, rows, ad.Hq, ad.Tq, ad.Dqk, ad.Dv, o, dout, dsum, dq_accum);
    L::backward(dims_of(ad), mask_of(am), scale, q, k, v, lse, dsum, dout, dq_accum, dk, dv, shape);
    if (deterministic) {
      L::backward_dq(dims_of(ad), mask_of(am), scale, q, k, v, lse, dsum, dout, dq, dq_wide);
    } else {
      const int64_t tokens = ad.B * ad.Tq;
      launch_kernel("tensor-core flash backward dQ conversion", dq_convert_kernel<E>, grid_for(tokens, 1), 256, 0,
                    nullptr, tokens, ad.Hq * ad.Dqk, ad.q_row(), dq_accum, dq);
    }
    if (own.get()) synchronize();  // the workspace is freed on return
  });
}

}  // namespace

bool flash_tc_supports(int64_t Dqk, int64_t Dv) {
  return (Dqk == 64 && Dv == 64) || (Dqk == 96 && Dv == 64) || (Dqk == 128 && Dv == 128) ||
         (Dqk == 192 && Dv == 128);
}

FlashOccupancy flash_tc_occupancy(TensorCoreType type, const AttentionDims& d, FlashTiles tiles) {
  FlashOccupancy occ;
  int device = 0, per_sm = 0;
  FLASHGPT_CUDA_CHECK(cudaGetDevice(&device));
  FLASHGPT_CUDA_CHECK(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, device));
  auto fill = [&]<typename E>() {
    with_head_dims(d, "tensor-core flash occupancy", [&]<int Dqk, int Dv>() {
      using L = Launchers<E, Dqk, Dv>;
      const Residency f = L::forward_residency(forward_shape<L>(tiles));
      const Residency b = L::backward_residency(backward_shape<L>(tiles));
      occ.forward_blocks_per_sm = f.blocks_per_sm;
      occ.backward_blocks_per_sm = b.blocks_per_sm;
      occ.forward = static_cast<double>(f.blocks_per_sm * f.threads) / per_sm;
      occ.backward = static_cast<double>(b.blocks_per_sm * b.threads) / per_sm;
    });
  };
  if (type == TensorCoreType::bf16) {
    fill.template operator()<__nv_bfloat16>();
  } else {
    fill.template operator()<__half>();
  }
  return occ;
}

size_t flash_backward_workspace_bytes(const AttentionDims& d, bool deterministic) {
  return dsum_bytes(d) + (deterministic ? 0 : dq_accum_bytes(d));
}

void flash_forward_tc(TensorCoreType type, const AttentionDims& d, const AttentionMask& m, float scale,
                      const uint16_t* q, const uint16_t* k, const uint16_t* v, uint16_t* o, float* lse,
                      FlashTiles tiles) {
  check_attention_dims(d, m, MaskMemory::Device);
  check_alignment(d, "tensor-core flash forward", {q, k, v, o});
  if (type == TensorCoreType::bf16) {
    forward_typed(d, m, scale, dev_bf16(q), dev_bf16(k), dev_bf16(v), dev_bf16(o), lse, tiles);
  } else {
    forward_typed(d, m, scale, dev_f16(q), dev_f16(k), dev_f16(v), dev_f16(o), lse, tiles);
  }
}

void flash_backward_tc(TensorCoreType type, const AttentionDims& d, const AttentionMask& m, float scale,
                       const uint16_t* q, const uint16_t* k, const uint16_t* v, const uint16_t* o, const float* lse,
                       const uint16_t* dout, uint16_t* dq, uint16_t* dk, uint16_t* dv, void* workspace,
                       FlashTiles tiles, bool deterministic) {
  check_attention_dims(d, m, MaskMemory::Device);
  check_alignment(d, "tensor-core flash backward", {q, k, v, o, dout, dq, dk, dv, workspace});
  if (type == TensorCoreType::bf16) {
    backward_typed(d, m, scale, dev_bf16(q), dev_bf16(k), dev_bf16(v), dev_bf16(o), lse, dev_bf16(dout),
                   dev_bf16(dq), dev_bf16(dk), dev_bf16(dv), workspace, tiles, deterministic);
  } else {
    backward_typed(d, m, scale, dev_f16(q), dev_f16(k), dev_f16(v), dev_f16(o), lse, dev_f16(dout), dev_f16(dq),
                   dev_f16(dk), dev_f16(dv), workspace, tiles, deterministic);
  }
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
