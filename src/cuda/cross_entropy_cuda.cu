// The classifier's softmax cross-entropy on the GPU (CPU twin: cpu/cross_entropy_cpu.cpp). One
// block per row: one pass finds the row's max and Σ exp (an online softmax: each thread keeps a
// running max and rescales its sum when the max grows, then the block merges them), then (fused) a
// second pass writes the gradient over the logits in place, so the step never holds a second
// [N, Vp] buffer. Rows move in 16-byte packs where Vp and the pointer allow (cuda/packed.h).
#include "cuda/device_math.h"
#include "cuda/packed.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

constexpr int kThreads = 256;

// Folds value x into a running (max m, Σ exp(· − m) s).
__device__ __forceinline__ void online_add(float x, float& m, float& s) {
  if (x > m) {
    s *= expf(m - x);  // 0 while m is still −∞
    m = x;
  }
  s += expf(x - m);
}

// Returns (max, Σ exp(x − max)) of the row's first V values to every thread, K values per access.
template <typename T, int K>
__device__ void row_softmax_stats(const T* x, int64_t V, float* scratch, float& mx, float& sum) {
  using P = Packed<T, K>;
  float m = -INFINITY, s = 0.0f;
  const int64_t packs = V / K;  // whole packs inside the first V columns; the rest one at a time
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    const P v = P::load(x + p * K);
    for (int j = 0; j < K; ++j) online_add(v.get(j), m, s);
  }
  for (int64_t c = packs * K + threadIdx.x; c < V; c += blockDim.x) online_add(to_f32(x[c]), m, s);
  mx = block_max(m, scratch);
  sum = block_sum(m == -INFINITY ? 0.0f : s * expf(m - mx), scratch);
}

template <typename T, int K, bool kFused>
__global__ void cross_entropy_kernel(T* __restrict__ logits, float* __restrict__ losses,
                                     const int* __restrict__ targets, int64_t N, int64_t V, int64_t Vp, float scale) {
  using P = Packed<T, K>;
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
    T* x = logits + row * Vp;
    const int tgt = targets[row];
    float mx, sum;
    row_softmax_stats<T, K>(x, V, scratch, mx, sum);
    if (threadIdx.x == 0) losses[row] = tgt >= 0 ? logf(sum) + mx - to_f32(x[tgt]) : 0.0f;
    if (!kFused) continue;
    __syncthreads();  // x[tgt] is read above before any thread overwrites it
    const float inv = 1.0f / sum;
    for (int64_t p = threadIdx.x; p < Vp / K; p += blockDim.x) {
      P v = P::load(x + p * K);
      for (int j = 0; j < K; ++j) {
        const int64_t c = p * K + j;
        float g = 0.0f;
        if (tgt >= 0 && c < V) g = scale * (expf(v.get(j) - mx) * inv - (c == tgt ? 1.0f : 0.0f));
        v.set(j, g);
      }
      v.store(x + p * K);
    }
  }
}

template <typename T, bool kFused>
void launch(const char* name, T* logits, float* losses, const int* targets, int64_t N, int64_t V, int64_t Vp,
            float scale) {
  if (N <= 0) return;
  using D = device_t<T>;
  constexpr int K = static_cast<int>(pack_size<T>());
  if (packable<T>(Vp, {logits})) {
    launch_kernel(name, cross_entropy_kernel<D, K, kFused>, grid_for(N, 1), kThreads, 0, nullptr, dev(logits), losses,
                  targets, N, V, Vp, scale);
  } else {
    launch_kernel(name, cross_entropy_kernel<D, 1, kFused>, grid_for(N, 1), kThreads, 0, nullptr, dev(logits), losses,
                  targets, N, V, Vp, scale);
  }
}

}  // namespace

template <typename T>
void cross_entropy_forward(float* losses, const T* logits, const int* targets, int64_t N, int64_t V, int64_t Vp) {
  launch<T, false>("cross-entropy forward", const_cast<T*>(logits), losses, targets, N, V, Vp, 0.0f);
}

template <typename T>
void cross_entropy_fused(T* logits_inout, float* losses, const int* targets, int64_t N, int64_t V, int64_t Vp,
                         float scale) {
  launch<T, true>("cross-entropy fused", logits_inout, losses, targets, N, V, Vp, scale);
}

#define FLASHGPT_INSTANTIATE(T)                                                                      \
  template void cross_entropy_forward<T>(float*, const T*, const int*, int64_t, int64_t, int64_t); \
  template void cross_entropy_fused<T>(T*, float*, const int*, int64_t, int64_t, int64_t, float);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(bf16)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
