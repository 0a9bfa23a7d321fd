// Deterministic sums down the rows of [N, C] data, for the gradients that reduce over every row
// (biases, norm weights): each output element is the same fp32 sum in the same order on every run,
// whatever order the GPU runs its blocks in. No atomics.
//
// Pass 1, grid (⌈C/(32·K)⌉, chunks), block (32, 8): the rows are cut into `chunks` runs of
// consecutive rows; each block sums 32·K columns of one run — thread x owns K consecutive
// columns, read as one 16-byte pack where the term allows (K > 1), its 8 row lanes each taking
// every 8th row — and adds the 8 lane sums in a fixed order into partials[out][chunk][column].
// Pass 2 adds the chunks of each column in order into the output. The order of the additions is
// the same for any K. `Term` adds one row's contributions to K columns from c0 to each of the
// `Outs` sums (a bias's dout, a norm's dout·x̂ and dout): term.template add<K>(r, c0, s), with
// s[o][j] the sum o of column c0 + j.
#pragma once

#include "cuda/device_math.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace column_sums_detail {

constexpr int kRowLanes = 8;

template <int Outs, int K, typename Term>
__global__ void partials_kernel(float* __restrict__ partials, int64_t N, int64_t C, int64_t rows_per_chunk,
                                Term term) {
  __shared__ float part[Outs][kRowLanes][32 * K + 1];
  const int64_t c0 = (blockIdx.x * 32LL + threadIdx.x) * K, chunk = blockIdx.y, chunks = gridDim.y;
  const int64_t r0 = chunk * rows_per_chunk, r1 = min(N, r0 + rows_per_chunk);
  float s[Outs][K] = {};
  if (c0 < C) {  // C is a multiple of K
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kRowLanes) term.template add<K>(r, c0, s);
  }
  for (int o = 0; o < Outs; ++o) {
    for (int j = 0; j < K; ++j) part[o][threadIdx.y][threadIdx.x * K + j] = s[o][j];
  }
  __syncthreads();
  // Each of the block's 32·K columns is totalled over the row lanes, in lane order, by one thread.
  const int flat = static_cast<int>(threadIdx.y * 32 + threadIdx.x);
  for (int col = flat; col < 32 * K; col += 32 * kRowLanes) {
    const int64_t c = blockIdx.x * 32LL * K + col;
    if (c >= C) continue;
    for (int o = 0; o < Outs; ++o) {
      float total = 0.0f;
      for (int y = 0; y < kRowLanes; ++y) total += part[o][y][col];
      partials[(o * chunks + chunk) * C + c] = total;
    }
  }
}

template <int Outs>
__global__ void finish_kernel(float* __restrict__ out0, float* __restrict__ out1, const float* __restrict__ partials,
                              int64_t chunks, int64_t C) {
  for (int64_t col = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; col < C;
       col += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    for (int o = 0; o < Outs; ++o) {
      float* out = o == 0 ? out0 : out1;
      if (!out) continue;
      float total = 0.0f;
      for (int64_t k = 0; k < chunks; ++k) total += partials[(o * chunks + k) * C + col];
      out[col] += total;
    }
  }
}

}  // namespace column_sums_detail

// out0[c] += Σ_r sum 0 of term(r, c), out1 likewise with sum 1 (Outs = 2; either may be null).
// `packed` (the caller checked that C is a multiple of K and the term's rows are K-aligned) reads
// K columns at a time.
template <int Outs, int K, typename Term>
void ordered_column_sums(const char* name, float* out0, float* out1, int64_t N, int64_t C, Term term, bool packed) {
  static_assert(Outs == 1 || Outs == 2, "one or two sums per column");
  if (N <= 0 || C <= 0) return;
  using namespace column_sums_detail;
  const int64_t rows_per_chunk = std::max<int64_t>(64, (N + 127) / 128);  // ≤ 128 chunks
  const int64_t chunks = (N + rows_per_chunk - 1) / rows_per_chunk;
  auto* partials = static_cast<float*>(reduction_scratch(sizeof(float) * static_cast<size_t>(Outs * chunks * C)));
  if (packed) {
    launch_kernel(name, partials_kernel<Outs, K, Term>, dim3(grid_for(C, 32 * K), static_cast<unsigned>(chunks)),
                  dim3(32, kRowLanes), 0, nullptr, partials, N, C, rows_per_chunk, term);
  } else {
    launch_kernel(name, partials_kernel<Outs, 1, Term>, dim3(grid_for(C, 32), static_cast<unsigned>(chunks)),
                  dim3(32, kRowLanes), 0, nullptr, partials, N, C, rows_per_chunk, term);
  }
  launch_kernel(name, finish_kernel<Outs>, grid_for(C, 256), 256, 0, nullptr, out0, out1,
                static_cast<const float*>(partials), chunks, C);
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
