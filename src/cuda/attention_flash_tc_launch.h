// The launchers' definitions (declared in attention_flash_tc_common.h), included once by each
// per-head-dim instantiation file attention_flash_tc_d*.cu so those compile in parallel.
#pragma once

#include <type_traits>

#include "cuda/attention_flash_tc_backward.h"
#include "cuda/attention_flash_tc_backward_dq.h"
#include "cuda/attention_flash_tc_forward.h"
#include "cuda/attention_flash_tc_forward_wgmma.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace flash_tc {

// Calls f(std::type_identity<Tiles>{}) with the forward's tiles for `shape` (tall and wgmma fall
// back to wide where the head dims have none).
template <int Dqk, int Dv, typename F>
decltype(auto) with_forward_tiles(ForwardShape shape, F&& f) {
  if constexpr (kHasTallForward<Dv>) {
    if (shape == ForwardShape::Tall) return f(std::type_identity<ForwardTilesTall<Dqk, Dv>>{});
  }
  if constexpr (kHasWgmmaForward<Dqk, Dv>) {
    if (shape == ForwardShape::Wgmma) return f(std::type_identity<ForwardTilesWgmmaFor<Dqk, Dv>>{});
    if (shape == ForwardShape::WgmmaTma) return f(std::type_identity<ForwardTilesWgmmaTmaFor<Dqk, Dv>>{});
    if (shape == ForwardShape::WgmmaWs || shape == ForwardShape::WgmmaWsNoPingPong) {
      return f(std::type_identity<ForwardTilesWgmmaWsFor<Dqk, Dv>>{});
    }
  }
  if (shape == ForwardShape::Narrow) return f(std::type_identity<ForwardTilesFor<Dqk, Dv, false>>{});
  return f(std::type_identity<ForwardTilesFor<Dqk, Dv, true>>{});
}

// The same for the backward's tiles (short and wgmma fall back to wide where the head dims have none).
template <int Dqk, int Dv, typename F>
decltype(auto) with_backward_tiles(BackwardShape shape, F&& f) {
  if constexpr (kHasShortBackward<Dv>) {
    if (shape == BackwardShape::Short) return f(std::type_identity<BackwardTilesShort<Dqk, Dv>>{});
  }
  if constexpr (kHasWgmmaBackward<Dqk, Dv>) {
    if (shape == BackwardShape::Wgmma) return f(std::type_identity<BackwardTilesWgmma<Dqk, Dv>>{});
    if (shape == BackwardShape::WgmmaWs) return f(std::type_identity<BackwardTilesWgmmaWs<Dqk, Dv>>{});
  }
  if (shape == BackwardShape::Narrow) return f(std::type_identity<BackwardTilesFor<Dqk, Dv, false>>{});
  return f(std::type_identity<BackwardTilesFor<Dqk, Dv, true>>{});
}

template <typename E, int Dqk, int Dv>
bool Launchers<E, Dqk, Dv>::has_tall_forward() {
  return kHasTallForward<Dv>;
}

template <typename E, int Dqk, int Dv>
bool Launchers<E, Dqk, Dv>::has_wgmma_forward() {
  return kHasWgmmaForward<Dqk, Dv>;
}

// The forward kernel of tiles F: the warpgroup one for Hopper's tiles (TMA or not), else the
// mma.sync one.
template <typename E, typename F>
constexpr auto forward_kernel() {
  if constexpr (uses_tma<F>) {
    return flash_forward_wgmma_tma_kernel<E, F>;
  } else if constexpr (requires { F::kWarpgroup; }) {
    return flash_forward_wgmma_kernel<E, F>;
  } else {
    return flash_forward_tc_kernel<E, F>;
  }
}

// One launch of the forward with tiles F: a block per BlockM queries of each (head, sequence);
// pingpong matters to warp-specialized tiles alone.
template <typename E, typename F>
void launch_forward(const Dims& d, const Mask& m, float scale, const E* q, const E* k, const E* v, E* o, float* lse,
                    bool pingpong = true) {
  const char* name = [pingpong] {
    if constexpr (requires { F::kProducer; }) {
      if (F::kProducer) {
        return pingpong ? "Hopper flash forward (warp-specialized)"
                        : "Hopper flash forward (warp-specialized, no ping-pong)";
      }
      return F::kTma ? "Hopper flash forward (TMA)" : "Hopper flash forward";
    }
    return "tensor-core flash forward";
  }();
  allow_shared(forward_kernel<E, F>(), F::bytes, name);
  const dim3 grid(static_cast<unsigned>((d.Tq + F::BlockM - 1) / F::BlockM), static_cast<unsigned>(d.Hq),
                  static_cast<unsigned>(d.B));
  if constexpr (uses_tma<F>) {
    launch_kernel(name, forward_kernel<E, F>(), grid, F::Threads, F::bytes, nullptr, traced(d, name, grid), m, scale,
                  forward_maps<F>(d, q, k, v, pingpong), o, lse);
  } else {
    launch_kernel(name, forward_kernel<E, F>(), grid, F::Threads, F::bytes, nullptr, traced(d, name, grid), m, scale,
                  q, k, v, o, lse);
  }
}

template <typename E, int Dqk, int Dv>
bool Launchers<E, Dqk, Dv>::has_short_backward() {
  return kHasShortBackward<Dv>;
}

template <typename E, int Dqk, int Dv>
bool Launchers<E, Dqk, Dv>::has_wgmma_backward() {
  return kHasWgmmaBackward<Dqk, Dv>;
}

template <typename E, int Dqk, int Dv>
size_t Launchers<E, Dqk, Dv>::forward_bytes(ForwardShape shape) {
  return with_forward_tiles<Dqk, Dv>(shape, [](auto tiles) { return decltype(tiles)::type::bytes; });
}

template <typename E, int Dqk, int Dv>
size_t Launchers<E, Dqk, Dv>::backward_bytes(BackwardShape shape) {
  return with_backward_tiles<Dqk, Dv>(shape, [](auto tiles) { return decltype(tiles)::type::bytes; });
}

template <typename E, int Dqk, int Dv>
size_t Launchers<E, Dqk, Dv>::backward_dq_bytes(bool wide) {
  return wide ? DqTilesFor<Dqk, Dv, true>::bytes : DqTilesFor<Dqk, Dv, false>::bytes;
}

template <typename Kernel>
Residency residency_of(Kernel kernel, int threads, size_t bytes, const char* name) {
  allow_shared(kernel, bytes, name);
  return {threads, max_blocks_per_sm(kernel, threads, bytes)};
}

template <typename E, int Dqk, int Dv>
Residency Launchers<E, Dqk, Dv>::forward_residency(ForwardShape shape) {
  return with_forward_tiles<Dqk, Dv>(shape, [](auto tiles) {
    using F = typename decltype(tiles)::type;
    return residency_of(forward_kernel<E, F>(), F::Threads, F::bytes, "tensor-core flash forward");
  });
}

template <typename E, int Dqk, int Dv>
Residency Launchers<E, Dqk, Dv>::backward_residency(BackwardShape shape) {
  return with_backward_tiles<Dqk, Dv>(shape, [](auto tiles) {
    using F = typename decltype(tiles)::type;
    return residency_of(backward_kernel<E, F, true>(), F::Threads, F::bytes, "tensor-core flash backward");
  });
}

template <typename E, int Dqk, int Dv>
void Launchers<E, Dqk, Dv>::forward(const Dims& d, const Mask& m, float scale, const E* q, const E* k, const E* v,
                                    E* o, float* lse, ForwardShape shape) {
  with_forward_tiles<Dqk, Dv>(shape, [&](auto tiles) {
    launch_forward<E, typename decltype(tiles)::type>(d, m, scale, q, k, v, o, lse,
                                                      shape != ForwardShape::WgmmaWsNoPingPong);
  });
}

template <typename E, int Dqk, int Dv>
void Launchers<E, Dqk, Dv>::backward(const Dims& d, const Mask& m, float scale, const E* q, const E* k, const E* v,
                                     const float* lse, const float* dsum, const E* dout, float* dq_accum, E* dk,
                                     E* dv, BackwardShape shape) {
  with_backward_tiles<Dqk, Dv>(shape, [&](auto tiles) {
    launch_backward<E, typename decltype(tiles)::type>(d, m, scale, q, k, v, lse, dsum, dout, dq_accum, dk, dv);
  });
}

template <typename E, int Dqk, int Dv>
void Launchers<E, Dqk, Dv>::backward_dq(const Dims& d, const Mask& m, float scale, const E* q, const E* k,
                                        const E* v, const float* lse, const float* dsum, const E* dout, E* dq,
                                        bool wide) {
  if (wide) {
    launch_backward_dq<E, DqTilesFor<Dqk, Dv, true>>(d, m, scale, q, k, v, lse, dsum, dout, dq);
  } else {
    launch_backward_dq<E, DqTilesFor<Dqk, Dv, false>>(d, m, scale, q, k, v, lse, dsum, dout, dq);
  }
}

}  // namespace flash_tc
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI

#define FLASHGPT_FLASH_TC_INSTANTIATE(DQK, DV)                                                        \
  namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI::flash_tc {                                      \
  template struct Launchers<__nv_bfloat16, DQK, DV>;                                                  \
  template struct Launchers<__half, DQK, DV>;                                                         \
  }
