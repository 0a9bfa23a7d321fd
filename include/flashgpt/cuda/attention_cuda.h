// Attention on the GPU, behind the same seam as the CPU kernels (attention/attention.h): the same
// layouts, masks and results, with every pointer — q, k, v, o, lse, the gradients and the mask's
// kv_lengths and segment ids — in device memory. Runs on the current device's default stream and
// returns when the work is queued; errors (launch, bad sizes) are flashgpt::Error.
//
// Kernels:
//   flash_forward_fp32 / flash_backward_fp32 — the fp32 parity path: FlashAttention-2's tiling
//   and online softmax with one thread per query (forward, dQ) or key (dK, dV) row and the tiles
//   in shared memory. Correct first: it is the reference the tensor-core kernels are held to on
//   the GPU, as the CPU's standard kernel is on the CPU.
//   flash_forward_tc / flash_backward_tc — FlashAttention-2 on the tensor cores (Ampere and
//   newer): bf16 or fp16 q, k, v, o and gradients (stored as uint16_t bit patterns, so host code
//   needs no CUDA headers), fp32 accumulation, softmax statistics and lse; mma.m16n8k16 with
//   operands through ldmatrix and key/value (forward) or query (backward) tiles double-buffered by
//   cp.async. Head dims (Dqk, Dv): 64/64, 128/128, and latent attention's 96/64 and 192/128.
//   Tiles come in two shapes, chosen per GPU by its shared memory, and the forward and the
//   backward each have a third (FlashTiles).
//   flash_forward_bf16 / flash_backward_bf16 — the same in bf16.
//   standard_forward_cuda / standard_backward_cuda — the textbook computation that keeps the
//   probability matrix P of every head (B·Hq·Tq·Tk elements in the workspace), with the products
//   on cuBLASLt: the point the flash kernels' memory and speed are measured against, in fp32 or
//   bf16 (bf16 products with fp32 accumulation, P rounded to bf16 as the flash kernels round it).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "flashgpt/attention/attention.h"
#include "flashgpt/core/device.h"
#include "flashgpt/cuda/abi.h"
#include "flashgpt/cuda/device_memory.h"
#include "flashgpt/cuda/ops_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

// The GPUs this backend runs on: the CUDA driver's (probe_devices), or for the CPU emulator its
// one emulated GPU. What `--device` chooses from.
DeviceReport devices();
// True when this build has the CUDA backend and a GPU is usable.
bool gpu_available();

void flash_forward_fp32(const AttentionDims& d, const AttentionMask& m, float scale, const float* q, const float* k,
                        const float* v, float* o, float* lse);
// dq, dk, dv are written (not accumulated); dk and dv rows at or beyond Tk are left alone.
void flash_backward_fp32(const AttentionDims& d, const AttentionMask& m, float scale, const float* q, const float* k,
                         const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk,
                         float* dv);

// Element type of the tensor-core kernels.
enum class TensorCoreType { bf16, fp16 };

// Tile shapes of the tensor-core kernels. Wide (8 warps; 128 queries per forward block, 128 keys
// per backward block) needs the 160 KiB+ of shared memory per block of sm_80 and sm_90; Narrow
// (4 warps) fits the 99 KiB of sm_86 and sm_89. Auto takes Wide where the GPU allows it. Tall
// changes the forward only, for value head dims up to 64 (elsewhere it is Auto): 4 warps of 32
// query rows each, 128 queries per block, so each warp reads every key and value fragment once
// per 32 rows instead of 16 (the shape FlashAttention-2's forward uses), at more registers. Short
// changes the backward only, for value head dims up to 64 (elsewhere it is Auto): 4-warp blocks of
// 64 keys walking query tiles of 32 rows, held to 168 registers so that three blocks share an SM
// (12 warps instead of 8), for twice the dQ atomics of Wide. Wgmma is Hopper's (compute capability
// 9.0, a build with sm_90a code; elsewhere it is Auto): the warpgroup MMA (wgmma) from
// 128-byte-swizzled shared tiles. Its forward (all four head dims; at 96/64 Q and K end in a
// 32-column panel in the 64-byte swizzle) has two warpgroups of 64 query rows multiply whole
// 128-key tiles; its backward (64/64, 96/64 and 128/128; else
// Auto's) two warpgroups of 64 keys walk query tiles of 64 rows. WgmmaTma is Wgmma with the
// forward's Q, K and V tiles copied by Hopper's tensor memory accelerator (one thread issues a
// copy per 64-column panel, every thread waits on the stage's mbarrier) instead of by every
// thread's cp.async (a half panel as a 32-column box in the 64-byte swizzle); its backward is
// Wgmma's. WgmmaWs is WgmmaTma warp-specialized, as
// FlashAttention-3 is: a third warpgroup, its registers given to the other two, issues the copies
// and refills a stage once both have released it (no block barrier in the loop), and the two
// computing warpgroups take turns at the tensor cores so that one's softmax overlaps the other's
// products (ping-pong); its backward (64/64, 96/64 and 128/128) is warp-specialized too: the producer
// fills each stage with Q and dO through the TMA, and lse and D, and the computing warpgroups
// meet only at a barrier of their own before dQ. WgmmaWsNoPingPong is WgmmaWs without the
// forward's turns (each computing warpgroup issues whenever it is ready): the measurement that
// separates what the ping-pong gains from what the producer does; its backward is WgmmaWs's.
enum class FlashTiles { Auto, Wide, Narrow, Tall, Short, Wgmma, WgmmaTma, WgmmaWs, WgmmaWsNoPingPong };

// The tiles' names on the command line (bench attention --tiles, bench train --tiles).
inline constexpr std::array<std::pair<std::string_view, FlashTiles>, 9> kFlashTilesNames = {{
    {"auto", FlashTiles::Auto},
    {"wide", FlashTiles::Wide},
    {"narrow", FlashTiles::Narrow},
    {"tall", FlashTiles::Tall},
    {"short", FlashTiles::Short},
    {"wgmma", FlashTiles::Wgmma},
    {"wgmma-tma", FlashTiles::WgmmaTma},
    {"wgmma-ws", FlashTiles::WgmmaWs},
    {"wgmma-ws-no-pingpong", FlashTiles::WgmmaWsNoPingPong},
}};

// Every name of kFlashTilesNames, for a command line's choices.
inline std::vector<std::string> flash_tiles_names() {
  std::vector<std::string> names;
  for (const auto& [name, tiles] : kFlashTilesNames) names.emplace_back(name);
  return names;
}

// The tiles called `name`, or nothing for a name kFlashTilesNames lacks.
inline std::optional<FlashTiles> flash_tiles_named(std::string_view name) {
  for (const auto& [n, tiles] : kFlashTilesNames) {
    if (n == name) return tiles;
  }
  return std::nullopt;
}

// The name kFlashTilesNames gives these tiles.
inline std::string_view flash_tiles_name(FlashTiles tiles) {
  for (const auto& [n, t] : kFlashTilesNames) {
    if (t == tiles) return n;
  }
  return "?";
}

// Whether these tiles are Hopper's warpgroup MMA (they need compute capability 9.0 and sm_90a code).
constexpr bool flash_tiles_use_wgmma(FlashTiles tiles) {
  return tiles == FlashTiles::Wgmma || tiles == FlashTiles::WgmmaTma || tiles == FlashTiles::WgmmaWs ||
         tiles == FlashTiles::WgmmaWsNoPingPong;
}

// Whether the tensor-core kernels have an instantiation for these head dims.
bool flash_tc_supports(int64_t Dqk, int64_t Dv);

// Theoretical occupancy of the tensor-core kernels at these head dims on this GPU: the share of an
// SM's thread slots their resident blocks fill (registers and shared memory permitting), 0…1.
struct FlashOccupancy {
  double forward = 0, backward = 0;
  int forward_blocks_per_sm = 0, backward_blocks_per_sm = 0;
};
FlashOccupancy flash_tc_occupancy(TensorCoreType type, const AttentionDims& d, FlashTiles tiles = FlashTiles::Auto);

void flash_forward_tc(TensorCoreType type, const AttentionDims& d, const AttentionMask& m, float scale,
                      const uint16_t* q, const uint16_t* k, const uint16_t* v, uint16_t* o, float* lse,
                      FlashTiles tiles = FlashTiles::Auto);

// Device memory the backward needs besides its outputs: D = rowsum(dO ∘ O) and, unless
// deterministic, an fp32 dQ accumulator.
size_t flash_backward_workspace_bytes(const AttentionDims& d, bool deterministic = false);

// P recomputed from lse; dq, dk, dv written (dk and dv summed over each GQA group; their rows at or
// beyond Tk left alone). `workspace`: flash_backward_workspace_bytes(d, deterministic) of device
// memory, or null to have the call allocate it (and wait for the GPU before freeing it). `deterministic`: dQ by a
// second, query-major kernel instead of fp32 atomics, so the same inputs give the same bits on
// every run (at the cost of recomputing S and P once more).
void flash_backward_tc(TensorCoreType type, const AttentionDims& d, const AttentionMask& m, float scale,
                       const uint16_t* q, const uint16_t* k, const uint16_t* v, const uint16_t* o, const float* lse,
                       const uint16_t* dout, uint16_t* dq, uint16_t* dk, uint16_t* dv, void* workspace = nullptr,
                       FlashTiles tiles = FlashTiles::Auto, bool deterministic = false);

// The standard kernel's workspace: P for every head, plus one head's scores, dS and fp32 dK/dV sums.
// T is float or bf16.
template <typename T>
size_t standard_workspace_bytes(const AttentionDims& d);
// Writes o, lse and P (into the workspace, for the backward).
template <typename T>
void standard_forward_cuda(const AttentionDims& d, const AttentionMask& m, float scale, const T* q, const T* k,
                           const T* v, T* o, float* lse, void* workspace);
// From the P the forward left in `workspace`; dq, dk, dv written (dk and dv summed over each GQA
// group; their rows at or beyond Tk left alone).
template <typename T>
void standard_backward_cuda(const AttentionDims& d, const AttentionMask& m, float scale, const T* q, const T* k,
                            const T* v, const T* dout, T* dq, T* dk, T* dv, void* workspace);

inline void flash_forward_bf16(const AttentionDims& d, const AttentionMask& m, float scale, const uint16_t* q,
                               const uint16_t* k, const uint16_t* v, uint16_t* o, float* lse) {
  flash_forward_tc(TensorCoreType::bf16, d, m, scale, q, k, v, o, lse);
}
inline void flash_backward_bf16(const AttentionDims& d, const AttentionMask& m, float scale, const uint16_t* q,
                                const uint16_t* k, const uint16_t* v, const uint16_t* o, const float* lse,
                                const uint16_t* dout, uint16_t* dq, uint16_t* dk, uint16_t* dv,
                                void* workspace = nullptr, bool deterministic = false) {
  flash_backward_tc(TensorCoreType::bf16, d, m, scale, q, k, v, o, lse, dout, dq, dk, dv, workspace,
                    FlashTiles::Auto, deterministic);
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
