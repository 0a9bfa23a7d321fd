// Rotary position embedding on the GPU (CPU twin: cpu/rope_cpu.cpp): half-split pairs, one thread
// per pair, rotated in place by the cached cos/sin tables.
#include "cuda/device_math.h"
#include "cuda/rope_pairs.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

constexpr int kThreads = 256;

// sign = 1 rotates forward, −1 applies the inverse rotation (the backward).
template <typename T>
__global__ void rope_kernel(T* __restrict__ x, const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                            int64_t B, int64_t Tn, int64_t H, int64_t half, int64_t head_stride, int64_t token_stride,
                            int64_t pos_offset, const int32_t* __restrict__ seq_pos, float sign) {
  const int64_t n = B * Tn * H * half;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx % half, h = (idx / half) % H, bt = idx / (half * H);
    const int64_t pos = rope_position(bt, Tn, pos_offset, seq_pos);
    T* v = x + bt * token_stride + h * head_stride;
    float a = to_f32(v[i]), b = to_f32(v[i + half]);
    rotate_pair(a, b, cos_t[pos * half + i], sign * sin_t[pos * half + i]);
    v[i] = from_f32<T>(a);
    v[i + half] = from_f32<T>(b);
  }
}

template <typename T>
void rotate(const char* name, T* x, const float* cos_t, const float* sin_t, int64_t B, int64_t Tn, int64_t H,
            int64_t D, int64_t head_stride, int64_t token_stride, int64_t pos_offset, const int32_t* seq_pos,
            float sign) {
  const int64_t half = D / 2, n = B * Tn * H * half;
  if (n <= 0) return;
  launch_kernel(name, rope_kernel<device_t<T>>, grid_for(n, kThreads), kThreads, 0, nullptr, dev(x), cos_t, sin_t, B,
                Tn, H, half, head_stride, token_stride > 0 ? token_stride : H * head_stride, pos_offset, seq_pos,
                sign);
}

}  // namespace

template <typename T>
void rope_forward(T* x, const float* cos_t, const float* sin_t, int64_t B, int64_t Tn, int64_t H, int64_t D,
                  int64_t head_stride, int64_t pos_offset, const int32_t* seq_pos, int64_t token_stride) {
  rotate("rope forward", x, cos_t, sin_t, B, Tn, H, D, head_stride, token_stride, pos_offset, seq_pos, 1.0f);
}

template <typename T>
void rope_backward(T* dx, const float* cos_t, const float* sin_t, int64_t B, int64_t Tn, int64_t H, int64_t D,
                   int64_t head_stride, int64_t pos_offset, const int32_t* seq_pos, int64_t token_stride) {
  rotate("rope backward", dx, cos_t, sin_t, B, Tn, H, D, head_stride, token_stride, pos_offset, seq_pos, -1.0f);
}

#define FLASHGPT_INSTANTIATE(T)                                                                                  \
  template void rope_forward<T>(T*, const float*, const float*, int64_t, int64_t, int64_t, int64_t, int64_t,     \
                                int64_t, const int32_t*, int64_t);                                             \
  template void rope_backward<T>(T*, const float*, const float*, int64_t, int64_t, int64_t, int64_t, int64_t,    \
                                 int64_t, const int32_t*, int64_t);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(bf16)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
