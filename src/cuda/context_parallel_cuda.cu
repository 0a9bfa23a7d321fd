// Context parallelism's row layouts on the GPU (the collectives around them:
// context_parallel_cuda.cpp; the CPU's: dist/context_parallel.cpp). One thread per value.
#include "cuda/device_math.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

constexpr int kThreads = 256;

// Where value (b, t, c) of the whole sequences sits among the ranks' rows [ranks][2][B][chunk][width].
__device__ __forceinline__ int64_t rank_major_index(int64_t b, int64_t t, int64_t c, int ranks, int64_t B,
                                                    int64_t chunk, int64_t width) {
  const int64_t g = t / chunk;  // the global chunk: rank g's early one, or rank 2·ranks−1−g's late one
  const int64_t r = g < ranks ? g : 2 * ranks - 1 - g, j = g < ranks ? 0 : 1;
  return (((r * 2 + j) * B + b) * chunk + t % chunk) * width + c;
}

template <typename T>
__global__ void assemble_kernel(T* __restrict__ global, const T* __restrict__ rank_major, int ranks, int64_t B,
                                int64_t chunk, int64_t width) {
  const int64_t seq = 2 * ranks * chunk, n = B * seq * width;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = e % width, t = (e / width) % seq, b = e / (width * seq);
    global[e] = rank_major[rank_major_index(b, t, c, ranks, B, chunk, width)];
  }
}

__global__ void disassemble_kernel(float* __restrict__ rank_major, const float* __restrict__ global, int ranks,
                                   int64_t B, int64_t chunk, int64_t width) {
  const int64_t seq = 2 * ranks * chunk, n = B * seq * width;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = e % width, t = (e / width) % seq, b = e / (width * seq);
    rank_major[rank_major_index(b, t, c, ranks, B, chunk, width)] = global[e];
  }
}

template <typename T>
__global__ void add_rows_kernel(float* __restrict__ acc, const T* __restrict__ part, int64_t B, int64_t rows,
                                int64_t seq_rows, int64_t width) {
  const int64_t n = B * rows * width;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e % (rows * width), b = e / (rows * width);
    const int64_t at = b * seq_rows * width + i;
    acc[at] += to_f32(part[at]);
  }
}

template <typename T>
__global__ void store_rows_kernel(T* __restrict__ out, int64_t ld, const float* __restrict__ in, int64_t rows,
                                  int64_t width) {
  const int64_t n = rows * width;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[(e / width) * ld + e % width] = from_f32<T>(in[e]);
  }
}

}  // namespace

template <typename T>
void cp_assemble(T* global, const T* rank_major, int ranks, int64_t B, int64_t chunk, int64_t width) {
  FLASHGPT_CUDA_REQUIRE(ranks > 0 && B >= 0 && chunk >= 0 && width >= 0, "context parallel assemble: bad sizes");
  const int64_t n = B * 2 * ranks * chunk * width;
  if (n == 0) return;
  launch_kernel("context parallel assemble", assemble_kernel<device_t<T>>, grid_for(n, kThreads), kThreads, 0,
                nullptr, dev(global), dev(rank_major), ranks, B, chunk, width);
}

void cp_disassemble(float* rank_major, const float* global, int ranks, int64_t B, int64_t chunk, int64_t width) {
  FLASHGPT_CUDA_REQUIRE(ranks > 0 && B >= 0 && chunk >= 0 && width >= 0, "context parallel disassemble: bad sizes");
  const int64_t n = B * 2 * ranks * chunk * width;
  if (n == 0) return;
  launch_kernel("context parallel disassemble", disassemble_kernel, grid_for(n, kThreads), kThreads, 0, nullptr,
                rank_major, global, ranks, B, chunk, width);
}

template <typename T>
void cp_add_rows(float* acc, const T* part, int64_t B, int64_t rows, int64_t seq_rows, int64_t width) {
  FLASHGPT_CUDA_REQUIRE(B >= 0 && rows >= 0 && rows <= seq_rows && width >= 0, "context parallel add rows: bad sizes");
  const int64_t n = B * rows * width;
  if (n == 0) return;
  launch_kernel("context parallel add rows", add_rows_kernel<device_t<T>>, grid_for(n, kThreads), kThreads, 0,
                nullptr, acc, dev(part), B, rows, seq_rows, width);
}

template <typename T>
void cp_store_rows(T* out, int64_t ld, const float* in, int64_t rows, int64_t width) {
  FLASHGPT_CUDA_REQUIRE(rows >= 0 && width >= 0 && ld >= width, "context parallel store rows: bad sizes");
  const int64_t n = rows * width;
  if (n == 0) return;
  launch_kernel("context parallel store rows", store_rows_kernel<device_t<T>>, grid_for(n, kThreads), kThreads, 0,
                nullptr, dev(out), ld, in, rows, width);
}

#define FLASHGPT_INSTANTIATE(T)                                                                   \
  template void cp_assemble<T>(T*, const T*, int, int64_t, int64_t, int64_t);                     \
  template void cp_add_rows<T>(float*, const T*, int64_t, int64_t, int64_t, int64_t);             \
  template void cp_store_rows<T>(T*, int64_t, const float*, int64_t, int64_t);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(bf16)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
