// Small device helpers shared by the CUDA op files: the public bf16 type mapped to CUDA's, loads
// and stores through fp32, warp and block reductions, launch-size arithmetic, and reduction scratch.
#pragma once

#include <cmath>
#include <cstdint>

#include "cuda/platform.h"
#include "flashgpt/cuda/ops_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

// The device type behind a public element type: float stays float, bf16 is __nv_bfloat16.
template <typename T>
struct DeviceType {
  using type = T;
};
template <>
struct DeviceType<bf16> {
  using type = __nv_bfloat16;
};
template <typename T>
using device_t = typename DeviceType<T>::type;

template <typename T>
device_t<T>* dev(T* p) {
  return reinterpret_cast<device_t<T>*>(p);
}
template <typename T>
const device_t<T>* dev(const T* p) {
  return reinterpret_cast<const device_t<T>*>(p);
}

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);  // round to nearest even
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The sum (or max) of v over the block, returned to every thread; scratch holds 32 floats of
// shared memory and may be reused once this returns.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const int warps = static_cast<int>((blockDim.x + 31) / 32);
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < warps; ++w) total += scratch[w];
  return total;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const int warps = static_cast<int>((blockDim.x + 31) / 32);
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float m = scratch[0];
  for (int w = 1; w < warps; ++w) m = fmaxf(m, scratch[w]);
  return m;
}

// Device scratch for multi-pass reductions (column sums, the clipping norm's partials), kept for
// the process's lifetime and grown on demand (growing waits for the GPU first; device_memory.cu).
// Valid until the next call.
void* reduction_scratch(size_t bytes);

// Blocks of `per` threads covering n items, capped for grid-stride loops.
inline unsigned grid_for(int64_t n, int per, int64_t cap = 65535LL * 16) {
  int64_t b = (n + per - 1) / per;
  if (b < 1) b = 1;
  return static_cast<unsigned>(b < cap ? b : cap);
}

// Blocks of `threads` threads, each taking `per` of n items a turn, for a grid-stride loop: as many
// as the SMs hold at once (fewer where n is small).
template <typename Kernel>
unsigned resident_blocks(Kernel kernel, int threads, size_t shared, int64_t n, int per) {
  int device = 0, sms = 0;
  FLASHGPT_CUDA_CHECK(cudaGetDevice(&device));
  FLASHGPT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int per_sm = max_blocks_per_sm(kernel, threads, shared);
  return grid_for(n, per, static_cast<int64_t>(sms) * (per_sm > 1 ? per_sm : 1));
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
