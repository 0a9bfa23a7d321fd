// AdamW over fp32 master weights and the squared norm for clipping, on the GPU (CPU twin:
// cpu/adamw_cpu.cpp). One thread per parameter; the update optionally writes the bf16 copy the
// next forward reads, so no separate conversion pass runs.
#include <cmath>

#include "cuda/device_math.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

constexpr int kThreads = 256;

__global__ void adamw_kernel(float* __restrict__ params, const float* __restrict__ grads, float* __restrict__ m,
                             float* __restrict__ v, __nv_bfloat16* __restrict__ copy, int64_t n, float lr, float b1,
                             float b2, float bc1, float bc2, float eps, float wd, float grad_scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = grads[i] * grad_scale;
    const float mi = b1 * m[i] + (1.0f - b1) * g;
    const float vi = b2 * v[i] + (1.0f - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float p = params[i] - lr * ((mi / bc1) / (sqrtf(vi / bc2) + eps) + wd * params[i]);
    params[i] = p;
    if (copy) copy[i] = __float2bfloat16(p);
  }
}

// Σ x² in two passes with no atomics, so the clipping norm has the same bits on every run: each
// block writes its sum (fixed grid, fixed per-thread strides, a fixed tree) to partials, then one
// block adds the partials up a fixed tree in double.
constexpr int kSumBlocks = 1024;

__global__ void sum_squares_kernel(double* __restrict__ partials, const float* __restrict__ x, int64_t n) {
  __shared__ float scratch[32];
  float s = 0.0f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    s += x[i] * x[i];
  }
  const float total = block_sum(s, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = static_cast<double>(total);
}

// One block of kSumBlocks threads.
__global__ void sum_partials_kernel(double* __restrict__ out, const double* __restrict__ partials, int count) {
  __shared__ double tree[kSumBlocks];
  const int t = static_cast<int>(threadIdx.x);
  tree[t] = t < count ? partials[t] : 0.0;
  for (int half = kSumBlocks / 2; half > 0; half /= 2) {
    __syncthreads();
    if (t < half) tree[t] += tree[t + half];
  }
  if (t == 0) *out = tree[0];
}

}  // namespace

void adamw_update(float* params, const float* grads, float* m, float* v, int64_t n, const ops::AdamWParams& p,
                  bool decay, float grad_scale, bf16* copy) {
  if (n <= 0) return;
  // Bias corrections in double on the host, as the CPU computes them.
  const float bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(p.beta1), static_cast<double>(p.step)));
  const float bc2 = static_cast<float>(1.0 - std::pow(static_cast<double>(p.beta2), static_cast<double>(p.step)));
  launch_kernel("adamw", adamw_kernel, grid_for(n, kThreads), kThreads, 0, nullptr, params, grads, m, v, dev(copy), n,
                p.lr, p.beta1, p.beta2, bc1, bc2, p.eps, decay ? p.weight_decay : 0.0f, grad_scale);
}

void sum_squares(double* out, const float* x, int64_t n) {
  const unsigned blocks = grid_for(n, kThreads, kSumBlocks);
  auto* partials = static_cast<double*>(reduction_scratch(sizeof(double) * blocks));
  if (n > 0) launch_kernel("sum of squares", sum_squares_kernel, blocks, kThreads, 0, nullptr, partials, x, n);
  launch_kernel("sum of squares (total)", sum_partials_kernel, 1, kSumBlocks, 0, nullptr, out,
                static_cast<const double*>(partials), n > 0 ? static_cast<int>(blocks) : 0);
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
