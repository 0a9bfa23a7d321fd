// Elementwise ops, precision conversion and the bias gradient on the GPU (CPU twin:
// cpu/elementwise_cpu.cpp; the bias gradient is matmul_cpu.cpp's column sum). The sums run in
// 16-byte packs where the pointers and lengths allow (cuda/packed.h).
#include "cuda/column_sums.h"
#include "cuda/device_math.h"
#include "cuda/packed.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

struct Sum {
  __device__ float operator()(float a, float b) const { return a + b; }
};

template <typename T>
__global__ void add_kernel(T* out, const T* a, const T* b, int64_t n, bool packed) {  // out may be a
  map_elements<T, 2>(out, a, b, n, packed, Sum{});
}

template <typename To, typename From>
__global__ void convert_kernel(To* __restrict__ out, const From* __restrict__ in, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = from_f32<To>(to_f32(in[i]));
  }
}

// out[n, oc] += bias[oc] over rows [N, OC] (the matmul's bias, added after the GEMM); packed
// when OC is a whole number of packs, so that a pack never straddles two rows.
template <typename T>
__global__ void add_bias_kernel(T* __restrict__ out, const T* __restrict__ bias, int64_t N, int64_t OC, bool packed) {
  using P = Packed<T>;
  constexpr int64_t K = P::kSize;
  const int64_t n = N * OC, first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
                stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t packs = packed ? n / K : 0;
  for (int64_t p = first; p < packs; p += stride) {
    P y = P::load(out + p * K);
    const P c = P::load(bias + (p * K) % OC);
    for (int j = 0; j < K; ++j) y.set(j, y.get(j) + c.get(j));
    y.store(out + p * K);
  }
  for (int64_t i = packs * K + first; i < n; i += stride) out[i] = from_f32<T>(to_f32(out[i]) + to_f32(bias[i % OC]));
}

// dst[n, h·stride + offset + i] = src[n, i] for every head h.
template <typename T>
__global__ void broadcast_to_heads_kernel(T* __restrict__ dst, const T* __restrict__ src, int64_t N, int64_t H,
                                          int64_t stride, int64_t offset, int64_t width) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < N * H * width;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e % width, h = (e / width) % H, n = e / (width * H);
    dst[(n * H + h) * stride + offset + i] = src[n * width + i];
  }
}

// dst[n, i] = Σ_h src[n, h·stride + offset + i], summed in fp32 in head order.
template <typename T>
__global__ void sum_over_heads_kernel(T* __restrict__ dst, const T* __restrict__ src, int64_t N, int64_t H,
                                      int64_t stride, int64_t offset, int64_t width) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < N * width;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e % width, n = e / width;
    float s = 0.0f;
    for (int64_t h = 0; h < H; ++h) s += to_f32(src[(n * H + h) * stride + offset + i]);
    dst[e] = from_f32<T>(s);
  }
}

// One or two row copies over the same batches, rows and row offsets (RowCopy in ops_cuda.h):
// element e of the first's batches·rows·a.width, then of the second's batches·rows·b.width, with
// to = dst_row0[b] and from = src_row0[b] (a batch with either negative skipped) or 0.
template <typename T>
__global__ void copy_rows_kernel(RowCopy<T> a, RowCopy<T> b, int64_t batches, int64_t rows,
                                 const int32_t* __restrict__ dst_row0, const int32_t* __restrict__ src_row0) {
  const int64_t n1 = batches * rows * a.width, n = n1 + batches * rows * b.width;
  for (int64_t e0 = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e0 < n;
       e0 += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const bool first = e0 < n1;
    const int64_t e = first ? e0 : e0 - n1, width = first ? a.width : b.width;
    const int64_t i = e % width, r = (e / width) % rows, bi = e / (width * rows);
    const int64_t to = dst_row0 ? dst_row0[bi] : 0, from = src_row0 ? src_row0[bi] : 0;
    if (to < 0 || from < 0) continue;
    // Field by field: a parameter chosen through a reference would be copied to the stack.
    T* dst = first ? a.dst : b.dst;
    const T* src = first ? a.src : b.src;
    dst[bi * (first ? a.dst_batch : b.dst_batch) + (to + r) * (first ? a.dst_ld : b.dst_ld) + i] =
        src[bi * (first ? a.src_batch : b.src_batch) + (from + r) * (first ? a.src_ld : b.src_ld) + i];
  }
}

// One row's contribution to a bias gradient: dout[r, c0 … c0 + K).
template <typename T>
struct BiasTerm {
  const T* dout;
  int64_t OC;
  template <int K>
  __device__ void add(int64_t r, int64_t c0, float (&s)[1][K]) const {
    const Packed<T, K> d = Packed<T, K>::load(dout + r * OC + c0);
    for (int j = 0; j < K; ++j) s[0][j] += d.get(j);
  }
};

constexpr int kThreads = 256;

}  // namespace

template <typename T>
void add(T* out, const T* a, const T* b, int64_t n) {
  if (n <= 0) return;
  const bool packed = packable<T>(n, {out, a, b});
  launch_kernel("add", add_kernel<device_t<T>>, grid_for(packed ? n / pack_size<T>() : n, kThreads), kThreads, 0,
                nullptr, dev(out), dev(a), dev(b), n, packed);
}

template <typename T>
void add_inplace(T* y, const T* x, int64_t n) {
  add(y, y, x, n);
}

void convert(bf16* out, const float* in, int64_t n) {
  if (n <= 0) return;
  launch_kernel("convert fp32 → bf16", convert_kernel<__nv_bfloat16, float>, grid_for(n, kThreads), kThreads, 0,
                nullptr, dev(out), in, n);
}

void convert(float* out, const bf16* in, int64_t n) {
  if (n <= 0) return;
  launch_kernel("convert bf16 → fp32", convert_kernel<float, __nv_bfloat16>, grid_for(n, kThreads), kThreads, 0,
                nullptr, out, dev(in), n);
}

template <typename T>
void add_bias(T* out, const T* bias, int64_t N, int64_t OC) {
  if (N <= 0 || OC <= 0) return;
  const bool packed = packable<T>(OC, {out, bias});
  launch_kernel("add bias", add_bias_kernel<device_t<T>>,
                grid_for(packed ? N * OC / pack_size<T>() : N * OC, kThreads), kThreads, 0, nullptr, dev(out),
                dev(bias), N, OC, packed);
}

template <typename T>
void broadcast_to_heads(T* dst, const T* src, int64_t N, int64_t H, int64_t head_stride, int64_t offset,
                        int64_t width) {
  if (N <= 0 || H <= 0 || width <= 0) return;
  launch_kernel("broadcast to heads", broadcast_to_heads_kernel<device_t<T>>, grid_for(N * H * width, kThreads),
                kThreads, 0, nullptr, dev(dst), dev(src), N, H, head_stride, offset, width);
}

template <typename T>
void sum_over_heads(T* dst, const T* src, int64_t N, int64_t H, int64_t head_stride, int64_t offset, int64_t width) {
  if (N <= 0 || width <= 0) return;
  launch_kernel("sum over heads", sum_over_heads_kernel<device_t<T>>, grid_for(N * width, kThreads), kThreads, 0,
                nullptr, dev(dst), dev(src), N, H, head_stride, offset, width);
}

template <typename T>
void copy_rows(T* dst, int64_t dst_batch, int64_t dst_ld, const T* src, int64_t src_batch, int64_t src_ld,
               int64_t batches, int64_t rows, int64_t width, const int32_t* dst_row0, const int32_t* src_row0) {
  copy_rows_pair<T>({dst, dst_batch, dst_ld, src, src_batch, src_ld, width}, {}, batches, rows, dst_row0, src_row0);
}

template <typename T>
void copy_rows_pair(const RowCopy<T>& a, const RowCopy<T>& b, int64_t batches, int64_t rows, const int32_t* dst_row0,
                    const int32_t* src_row0) {
  FLASHGPT_CUDA_REQUIRE(a.width >= 0 && b.width >= 0, "copy rows: a negative width");
  const int64_t n = batches * rows * (a.width + b.width);
  if (batches <= 0 || rows <= 0 || n <= 0) return;
  auto on_device = [](const RowCopy<T>& c) {
    return RowCopy<device_t<T>>{dev(c.dst), c.dst_batch, c.dst_ld, dev(c.src), c.src_batch, c.src_ld, c.width};
  };
  launch_kernel(b.width > 0 ? "copy rows (two blocks)" : "copy rows", copy_rows_kernel<device_t<T>>,
                grid_for(n, kThreads), kThreads, 0, nullptr, on_device(a), on_device(b), batches, rows, dst_row0,
                src_row0);
}

template <typename T>
void bias_backward(float* db, const T* dout, int64_t N, int64_t OC) {
  constexpr int K = static_cast<int>(pack_size<T>());
  ordered_column_sums<1, K>("bias backward", db, nullptr, N, OC, BiasTerm<device_t<T>>{dev(dout), OC},
                            packable<T>(OC, {dout}));
}

#define FLASHGPT_INSTANTIATE(T)                                  \
  template void add<T>(T*, const T*, const T*, int64_t);         \
  template void add_inplace<T>(T*, const T*, int64_t);           \
  template void add_bias<T>(T*, const T*, int64_t, int64_t);      \
  template void broadcast_to_heads<T>(T*, const T*, int64_t, int64_t, int64_t, int64_t, int64_t); \
  template void sum_over_heads<T>(T*, const T*, int64_t, int64_t, int64_t, int64_t, int64_t);     \
  template void bias_backward<T>(float*, const T*, int64_t, int64_t);                              \
  template void copy_rows<T>(T*, int64_t, int64_t, const T*, int64_t, int64_t, int64_t, int64_t, int64_t,     \
                             const int32_t*, const int32_t*);                                             \
  template void copy_rows_pair<T>(const RowCopy<T>&, const RowCopy<T>&, int64_t, int64_t, const int32_t*,     \
                                  const int32_t*);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(bf16)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
