// GELU (tanh approximation) and SwiGLU on the GPU (CPU twin: cpu/activation_cpu.cpp), in fp32
// arithmetic whatever the storage type, in 16-byte packs where the pointers and widths allow.
#include "cuda/device_math.h"
#include "cuda/packed.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2/π)
constexpr float kGeluCubic = 0.044715f;
constexpr int kThreads = 256;

struct GeluForward {
  __device__ float operator()(float x) const {
    const float u = kGeluScale * (x + kGeluCubic * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
  }
};

struct GeluBackward {  // (x, dy) → dx
  __device__ float operator()(float x, float dy) const {
    const float u = kGeluScale * (x + kGeluCubic * x * x * x);
    const float th = tanhf(u);
    const float du = kGeluScale * (1.0f + 3.0f * kGeluCubic * x * x);
    return dy * (0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du);
  }
};

template <typename T>
__global__ void gelu_forward_kernel(T* __restrict__ out, const T* __restrict__ inp, int64_t n, bool packed) {
  map_elements<T, 1>(out, inp, static_cast<const T*>(nullptr), n, packed, GeluForward{});
}

template <typename T>
__global__ void gelu_backward_kernel(T* __restrict__ dinp, const T* __restrict__ inp, const T* __restrict__ dout,
                                     int64_t n, bool packed) {
  map_elements<T, 2>(dinp, inp, dout, n, packed, GeluBackward{});
}

// inp rows [gate | up] of width 2F; out rows of width F. K elements per access (1, or a pack when F
// is a whole number of packs and the pointers aligned): the pack at column j of a row reads the
// gate's pack at j and the up's at F + j.
template <typename T, int K>
__global__ void swiglu_forward_kernel(T* __restrict__ out, const T* __restrict__ inp, int64_t N, int64_t F) {
  using P = Packed<T, K>;
  const int64_t packs = N * F / K;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < packs;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = q * K / F, j = q * K % F;
    const P gate = P::load(inp + row * 2 * F + j), up = P::load(inp + row * 2 * F + F + j);
    P y;
    for (int e = 0; e < K; ++e) {
      const float a = gate.get(e), s = 1.0f / (1.0f + expf(-a));
      y.set(e, a * s * up.get(e));
    }
    y.store(out + q * K);
  }
}

template <typename T, int K>
__global__ void swiglu_backward_kernel(T* __restrict__ dinp, const T* __restrict__ inp, const T* __restrict__ dout,
                                       int64_t N, int64_t F) {
  using P = Packed<T, K>;
  const int64_t packs = N * F / K;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < packs;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = q * K / F, j = q * K % F;
    const P gate = P::load(inp + row * 2 * F + j), up = P::load(inp + row * 2 * F + F + j), dy = P::load(dout + q * K);
    P dgate, dup;
    for (int e = 0; e < K; ++e) {
      const float a = gate.get(e), s = 1.0f / (1.0f + expf(-a));
      dup.set(e, dy.get(e) * a * s);
      dgate.set(e, dy.get(e) * up.get(e) * s * (1.0f + a * (1.0f - s)));
    }
    dup.store(dinp + row * 2 * F + F + j);
    dgate.store(dinp + row * 2 * F + j);
  }
}

}  // namespace

template <typename T>
void gelu_forward(T* out, const T* inp, int64_t n) {
  if (n <= 0) return;
  const bool packed = packable<T>(n, {out, inp});
  launch_kernel("gelu forward", gelu_forward_kernel<device_t<T>>, grid_for(packed ? n / pack_size<T>() : n, kThreads),
                kThreads, 0, nullptr, dev(out), dev(inp), n, packed);
}

template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, int64_t n) {
  if (n <= 0) return;
  const bool packed = packable<T>(n, {dinp, inp, dout});
  launch_kernel("gelu backward", gelu_backward_kernel<device_t<T>>,
                grid_for(packed ? n / pack_size<T>() : n, kThreads), kThreads, 0, nullptr, dev(dinp), dev(inp),
                dev(dout), n, packed);
}

template <typename T>
void swiglu_forward(T* out, const T* inp, int64_t N, int64_t F) {
  if (N <= 0 || F <= 0) return;
  constexpr int K = static_cast<int>(pack_size<T>());
  if (packable<T>(F, {out, inp})) {
    launch_kernel("swiglu forward", swiglu_forward_kernel<device_t<T>, K>, grid_for(N * F / K, kThreads), kThreads, 0,
                  nullptr, dev(out), dev(inp), N, F);
  } else {
    launch_kernel("swiglu forward", swiglu_forward_kernel<device_t<T>, 1>, grid_for(N * F, kThreads), kThreads, 0,
                  nullptr, dev(out), dev(inp), N, F);
  }
}

template <typename T>
void swiglu_backward(T* dinp, const T* inp, const T* dout, int64_t N, int64_t F) {
  if (N <= 0 || F <= 0) return;
  constexpr int K = static_cast<int>(pack_size<T>());
  if (packable<T>(F, {dinp, inp, dout})) {
    launch_kernel("swiglu backward", swiglu_backward_kernel<device_t<T>, K>, grid_for(N * F / K, kThreads), kThreads,
                  0, nullptr, dev(dinp), dev(inp), dev(dout), N, F);
  } else {
    launch_kernel("swiglu backward", swiglu_backward_kernel<device_t<T>, 1>, grid_for(N * F, kThreads), kThreads, 0,
                  nullptr, dev(dinp), dev(inp), dev(dout), N, F);
  }
}

#define FLASHGPT_INSTANTIATE(T)                                              \
  template void gelu_forward<T>(T*, const T*, int64_t);                      \
  template void gelu_backward<T>(T*, const T*, const T*, int64_t);           \
  template void swiglu_forward<T>(T*, const T*, int64_t, int64_t);           \
  template void swiglu_backward<T>(T*, const T*, const T*, int64_t, int64_t);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(bf16)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
