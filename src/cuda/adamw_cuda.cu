// AdamW over fp32 master weights and the squared norm for clipping, on the GPU (CPU twin:
// cpu/adamw_cpu.cpp). Four parameters a thread where the offsets allow (cuda/packed.h), else one; the
// update optionally writes the bf16 copy the next forward reads, so no separate conversion pass runs.
#include <cmath>

#include "cuda/device_math.h"
#include "cuda/packed.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

constexpr int kThreads = 256;

struct AdamW {
  float lr, b1, b2, bc1, bc2, eps, wd, grad_scale;
  // One parameter's update: its new value, with m and v updated in place.
  __device__ float operator()(float p, float g, float& m, float& v) const {
    g *= grad_scale;
    m = b1 * m + (1.0f - b1) * g;
    v = b2 * v + (1.0f - b2) * g * g;
    return p - lr * ((m / bc1) / (sqrtf(v / bc2) + eps) + wd * p);
  }
};

// The run of parameter i: the first r with ends[r] > i (ends ascending, the last past every i).
__device__ __forceinline__ int run_of(const int64_t* __restrict__ ends, int runs, int64_t i) {
  int lo = 0, hi = runs - 1;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (ends[mid] > i) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// Parameters [first, first + n); m and v hold the moments of parameters from `moments_first` on
// (ZeRO-1's shard: only its own), so parameter i's are m[i − moments_first]. Weight decay: where runs > 0, parameter i's run (run_of) says
// whether it applies (decay[r]); else it applies to all (op) or none, as `op` was built.
// packed: four parameters a step (16-byte loads of params, grads, m, v; 8 bytes of the bf16 copy),
// which the launch allows when n is a multiple of 4 and every pointer aligned for it.
__global__ void adamw_kernel(float* __restrict__ params, const float* __restrict__ grads, float* __restrict__ m,
                             float* __restrict__ v, __nv_bfloat16* __restrict__ copy, int64_t first, int64_t n,
                             bool packed, AdamW op, const int64_t* __restrict__ ends,
                             const uint8_t* __restrict__ decay, int runs, int64_t moments_first) {
  using P = Packed<float>;
  using Copy = Packed<__nv_bfloat16, P::kSize>;
  constexpr int64_t K = P::kSize;
  AdamW plain = op;
  plain.wd = 0.0f;
  // The update of parameter i, with its run's weight decay; r follows i upwards.
  auto update = [&](int64_t i, int& r, float p, float g, float& mi, float& vi) {
    if (runs == 0) return op(p, g, mi, vi);
    while (ends[r] <= i) ++r;
    return decay[r] ? op(p, g, mi, vi) : plain(p, g, mi, vi);
  };
  const int64_t start = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
                stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t packs = packed ? n / K : 0;
  for (int64_t q = start; q < packs; q += stride) {
    const int64_t i = first + q * K;
    int r = runs > 0 ? run_of(ends, runs, i) : 0;
    const int64_t im = i - moments_first;
    P p = P::load(params + i), mi = P::load(m + im), vi = P::load(v + im);
    const P g = P::load(grads + i);
    Copy c;
    for (int j = 0; j < K; ++j) {
      p.v[j] = update(i + j, r, p.v[j], g.v[j], mi.v[j], vi.v[j]);
      c.set(j, p.v[j]);
    }
    p.store(params + i);
    mi.store(m + im);
    vi.store(v + im);
    if (copy) c.store(copy + i);
  }
  for (int64_t i = first + packs * K + start; i < first + n; i += stride) {
    int r = runs > 0 ? run_of(ends, runs, i) : 0;
    const int64_t im = i - moments_first;
    float mi = m[im], vi = v[im];
    const float p = update(i, r, params[i], grads[i], mi, vi);
    m[im] = mi;
    v[im] = vi;
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

namespace {

AdamW adamw_op(const ops::AdamWParams& p, bool decay, float grad_scale) {
  // Bias corrections in double on the host, as the CPU computes them.
  const float bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(p.beta1), static_cast<double>(p.step)));
  const float bc2 = static_cast<float>(1.0 - std::pow(static_cast<double>(p.beta2), static_cast<double>(p.step)));
  return AdamW{p.lr, p.beta1, p.beta2, bc1, bc2, p.eps, decay ? p.weight_decay : 0.0f, grad_scale};
}

void launch_adamw(float* params, const float* grads, float* m, float* v, int64_t first, int64_t n, const AdamW& op,
                  bf16* copy, const int64_t* ends, const uint8_t* decay, int runs, int64_t moments_first = 0) {
  if (n <= 0) return;
  const int64_t mf = first - moments_first;  // the first moment's index in m and v
  const bool packed = packable<float>(n, {params + first, grads + first, m + mf, v + mf}) &&
                      reinterpret_cast<uintptr_t>(copy ? copy + first : nullptr) % 8 == 0;
  launch_kernel("adamw", adamw_kernel, grid_for(packed ? n / pack_size<float>() : n, kThreads), kThreads, 0, nullptr,
                params, grads, m, v, dev(copy), first, n, packed, op, ends, decay, runs, moments_first);
}

}  // namespace

void adamw_update(float* params, const float* grads, float* m, float* v, int64_t n, const ops::AdamWParams& p,
                  bool decay, float grad_scale, bf16* copy) {
  launch_adamw(params, grads, m, v, 0, n, adamw_op(p, decay, grad_scale), copy, nullptr, nullptr, 0);
}

void adamw_update_runs(float* params, const float* grads, float* m, float* v, const AdamWRuns& runs,
                       const ops::AdamWParams& p, float grad_scale, bf16* copy) {
  if (runs.count == 0) return;
  FLASHGPT_CUDA_REQUIRE(runs.moments_first <= runs.first, "adamw: the moments start after the first parameter");
  launch_adamw(params, grads, m, v, runs.first, runs.last - runs.first, adamw_op(p, true, grad_scale), copy,
               runs.ends, runs.decay, runs.count, runs.moments_first);
}

void sum_squares(double* out, const float* x, int64_t n) {
  const unsigned blocks = grid_for(n, kThreads, kSumBlocks);
  auto* partials = static_cast<double*>(reduction_scratch(sizeof(double) * blocks));
  if (n > 0) launch_kernel("sum of squares", sum_squares_kernel, blocks, kThreads, 0, nullptr, partials, x, n);
  launch_kernel("sum of squares (total)", sum_partials_kernel, 1, kSumBlocks, 0, nullptr, out,
                static_cast<const double*>(partials), n > 0 ? static_cast<int>(blocks) : 0);
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
