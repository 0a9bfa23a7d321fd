// LayerNorm and RMSNorm on the GPU (CPU twin: cpu/norm_cpu.cpp). One warp per row: the row's
// statistics come from warp shuffles, with two passes over the row as on the CPU. The backward
// gathers each block's weight (and bias) gradient in shared memory and adds it to the global
// fp32 gradient with one atomic per column and block; the deterministic backward leaves those
// to a second, fixed-order reduction over the rows (column_sums.h) instead.
#include "cuda/column_sums.h"
#include "cuda/device_math.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;

template <typename T, bool kLayer>
__global__ void norm_forward_kernel(T* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
                                    const T* __restrict__ inp, const T* __restrict__ w, const T* __restrict__ b,
                                    int64_t N, int64_t C, float eps) {
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  for (int64_t row = blockIdx.x * static_cast<int64_t>(kWarps) + warp; row < N;
       row += static_cast<int64_t>(gridDim.x) * kWarps) {  // the same rows for every lane of the warp
    const T* x = inp + row * C;
    float mu = 0.0f;
    if (kLayer) {
      float s = 0.0f;
      for (int64_t c = lane; c < C; c += 32) s += to_f32(x[c]);
      mu = warp_sum(s) / static_cast<float>(C);
    }
    float v = 0.0f;
    for (int64_t c = lane; c < C; c += 32) {
      const float d = to_f32(x[c]) - mu;
      v += d * d;
    }
    const float r = rsqrtf(warp_sum(v) / static_cast<float>(C) + eps);
    if (lane == 0) {
      if (kLayer) mean[row] = mu;
      rstd[row] = r;
    }
    T* y = out + row * C;
    for (int64_t c = lane; c < C; c += 32) {
      float o = (to_f32(x[c]) - mu) * r * to_f32(w[c]);
      if (b) o += to_f32(b[c]);
      y[c] = from_f32<T>(o);
    }
  }
}

// Shared memory: dw [C], then db [C] for LayerNorm with a bias.
template <typename T, bool kLayer>
__global__ void norm_backward_kernel(T* __restrict__ dinp, float* __restrict__ dw, float* __restrict__ db,
                                     const T* __restrict__ dout, const T* __restrict__ inp, const T* __restrict__ w,
                                     const float* __restrict__ mean, const float* __restrict__ rstd, int64_t N,
                                     int64_t C, bool accumulate) {
  FLASHGPT_DYNAMIC_SHARED(float, sdw);
  float* sdb = sdw + C;
  const bool with_db = kLayer && db;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    sdw[c] = 0.0f;
    if (with_db) sdb[c] = 0.0f;
  }
  __syncthreads();
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  for (int64_t row = blockIdx.x * static_cast<int64_t>(kWarps) + warp; row < N;
       row += static_cast<int64_t>(gridDim.x) * kWarps) {
    const T* x = inp + row * C;
    const T* dy = dout + row * C;
    T* dx = dinp + row * C;
    const float mu = kLayer ? mean[row] : 0.0f, r = rstd[row];
    float sg = 0.0f, sgx = 0.0f;
    for (int64_t c = lane; c < C; c += 32) {
      const float g = to_f32(dy[c]) * to_f32(w[c]);
      sg += g;
      sgx += g * (to_f32(x[c]) - mu) * r;
    }
    const float mg = kLayer ? warp_sum(sg) / static_cast<float>(C) : 0.0f;
    const float mgx = warp_sum(sgx) / static_cast<float>(C);
    for (int64_t c = lane; c < C; c += 32) {
      const float d = to_f32(dy[c]), xh = (to_f32(x[c]) - mu) * r;
      const float g = d * to_f32(w[c]);
      float v = r * (g - mg - xh * mgx);
      if (accumulate) v += to_f32(dx[c]);
      dx[c] = from_f32<T>(v);
      if (dw) atomicAdd(sdw + c, d * xh);
      if (with_db) atomicAdd(sdb + c, d);
    }
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    if (dw) atomicAdd(dw + c, sdw[c]);
    if (with_db) atomicAdd(db + c, sdb[c]);
  }
}

// One row's contributions to a norm's weight gradients, for the deterministic path: dw gets
// dout·x̂ and db (LayerNorm) dout, x̂ = (x − mean)·rstd (mean 0 for RMSNorm).
template <typename T, bool kWithDb>
struct NormWeightTerm {
  const T* dout;
  const T* inp;
  const float* mean;  // null for RMSNorm
  const float* rstd;
  int64_t C;
  __device__ void operator()(int64_t r, int64_t c, float* s) const {
    const float d = to_f32(dout[r * C + c]);
    const float xh = (to_f32(inp[r * C + c]) - (mean ? mean[r] : 0.0f)) * rstd[r];
    s[0] += d * xh;
    if constexpr (kWithDb) s[1] += d;
  }
};

unsigned backward_blocks(int64_t N) {
  int device = 0, sms = 0;
  FLASHGPT_CUDA_CHECK(cudaGetDevice(&device));
  FLASHGPT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return grid_for(N, kWarps, 2LL * sms);  // few blocks: each ends with C atomics
}

template <typename T, bool kLayer>
void backward(const char* name, T* dinp, float* dw, float* db, const T* dout, const T* inp, const T* w,
              const float* mean, const float* rstd, int64_t N, int64_t C, bool accumulate, bool deterministic) {
  if (N <= 0 || C <= 0) return;
  auto kernel = norm_backward_kernel<device_t<T>, kLayer>;
  const size_t shared = sizeof(float) * static_cast<size_t>(C) * 2;
  allow_shared(kernel, shared, name);
  launch_kernel(name, kernel, backward_blocks(N), kThreads, shared, nullptr, dev(dinp), deterministic ? nullptr : dw,
                deterministic ? nullptr : db, dev(dout), dev(inp), dev(w), mean, rstd, N, C, accumulate);
  if (!deterministic || (!dw && !db)) return;
  using D = device_t<T>;
  if (kLayer && db) {
    ordered_column_sums<2>(name, dw, db, N, C, NormWeightTerm<D, true>{dev(dout), dev(inp), mean, rstd, C});
  } else {
    ordered_column_sums<1>(name, dw, nullptr, N, C,
                           NormWeightTerm<D, false>{dev(dout), dev(inp), kLayer ? mean : nullptr, rstd, C});
  }
}

}  // namespace

template <typename T>
void layernorm_forward(T* out, float* mean, float* rstd, const T* inp, const T* w, const T* b, int64_t N, int64_t C,
                       float eps) {
  if (N <= 0 || C <= 0) return;
  launch_kernel("layernorm forward", norm_forward_kernel<device_t<T>, true>, grid_for(N, kWarps), kThreads, 0,
                nullptr, dev(out), mean, rstd, dev(inp), dev(w), dev(b), N, C, eps);
}

template <typename T>
void layernorm_backward(T* dinp, float* dw, float* db, const T* dout, const T* inp, const T* w, const float* mean,
                        const float* rstd, int64_t N, int64_t C, bool accumulate, bool deterministic) {
  backward<T, true>("layernorm backward", dinp, dw, db, dout, inp, w, mean, rstd, N, C, accumulate, deterministic);
}

template <typename T>
void rmsnorm_forward(T* out, float* rstd, const T* inp, const T* w, int64_t N, int64_t C, float eps) {
  if (N <= 0 || C <= 0) return;
  launch_kernel("rmsnorm forward", norm_forward_kernel<device_t<T>, false>, grid_for(N, kWarps), kThreads, 0, nullptr,
                dev(out), static_cast<float*>(nullptr), rstd, dev(inp), dev(w), static_cast<const device_t<T>*>(nullptr),
                N, C, eps);
}

template <typename T>
void rmsnorm_backward(T* dinp, float* dw, const T* dout, const T* inp, const T* w, const float* rstd, int64_t N,
                      int64_t C, bool accumulate, bool deterministic) {
  backward<T, false>("rmsnorm backward", dinp, dw, nullptr, dout, inp, w, nullptr, rstd, N, C, accumulate,
                     deterministic);
}

#define FLASHGPT_INSTANTIATE(T)                                                                                      \
  template void layernorm_forward<T>(T*, float*, float*, const T*, const T*, const T*, int64_t, int64_t, float);    \
  template void layernorm_backward<T>(T*, float*, float*, const T*, const T*, const T*, const float*, const float*, \
                                      int64_t, int64_t, bool, bool);                                                \
  template void rmsnorm_forward<T>(T*, float*, const T*, const T*, int64_t, int64_t, float);                        \
  template void rmsnorm_backward<T>(T*, float*, const T*, const T*, const T*, const float*, int64_t, int64_t, bool, \
                                    bool);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(bf16)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
