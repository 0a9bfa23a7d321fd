// The classifier's softmax cross-entropy on the GPU (CPU twin: cpu/cross_entropy_cpu.cpp). One
// block per row: the row's max and Σ exp through block reductions, then (fused) the gradient
// written over the logits in place, so the step never holds a second [N, Vp] buffer.
#include "cuda/device_math.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

constexpr int kThreads = 256;

// Returns (max, Σ exp(x − max)) of the row's first V values to every thread.
template <typename T>
__device__ void row_softmax_stats(const T* x, int64_t V, float* scratch, float& mx, float& sum) {
  float m = -INFINITY;
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) m = fmaxf(m, to_f32(x[c]));
  mx = block_max(m, scratch);
  float s = 0.0f;
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) s += expf(to_f32(x[c]) - mx);
  sum = block_sum(s, scratch);
}

template <typename T, bool kFused>
__global__ void cross_entropy_kernel(T* __restrict__ logits, float* __restrict__ losses,
                                     const int* __restrict__ targets, int64_t N, int64_t V, int64_t Vp, float scale) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
    T* x = logits + row * Vp;
    const int tgt = targets[row];
    float mx, sum;
    row_softmax_stats(x, V, scratch, mx, sum);
    if (threadIdx.x == 0) losses[row] = tgt >= 0 ? logf(sum) + mx - to_f32(x[tgt]) : 0.0f;
    if (!kFused) continue;
    __syncthreads();  // x[tgt] is read above before any thread overwrites it
    const float inv = 1.0f / sum;
    for (int64_t c = threadIdx.x; c < Vp; c += blockDim.x) {
      float g = 0.0f;
      if (tgt >= 0 && c < V) g = scale * (expf(to_f32(x[c]) - mx) * inv - (c == tgt ? 1.0f : 0.0f));
      x[c] = from_f32<T>(g);
    }
  }
}

}  // namespace

template <typename T>
void cross_entropy_forward(float* losses, const T* logits, const int* targets, int64_t N, int64_t V, int64_t Vp) {
  if (N <= 0) return;
  launch_kernel("cross-entropy forward", cross_entropy_kernel<device_t<T>, false>, grid_for(N, 1), kThreads, 0,
                nullptr, const_cast<device_t<T>*>(dev(logits)), losses, targets, N, V, Vp, 0.0f);
}

template <typename T>
void cross_entropy_fused(T* logits_inout, float* losses, const int* targets, int64_t N, int64_t V, int64_t Vp,
                         float scale) {
  if (N <= 0) return;
  launch_kernel("cross-entropy fused", cross_entropy_kernel<device_t<T>, true>, grid_for(N, 1), kThreads, 0, nullptr,
                dev(logits_inout), losses, targets, N, V, Vp, scale);
}

#define FLASHGPT_INSTANTIATE(T)                                                                      \
  template void cross_entropy_forward<T>(float*, const T*, const int*, int64_t, int64_t, int64_t); \
  template void cross_entropy_fused<T>(T*, float*, const int*, int64_t, int64_t, int64_t, float);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(bf16)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
