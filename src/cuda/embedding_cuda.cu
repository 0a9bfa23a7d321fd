// Token and position embeddings on the GPU (CPU twin: cpu/embedding_cpu.cpp).
#include <algorithm>
#include <vector>

#include "cuda/device_math.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

template <typename T>
__global__ void embedding_forward_kernel(T* __restrict__ out, const int* __restrict__ tokens,
                                         const T* __restrict__ wte, const T* __restrict__ wpe, int64_t Tn, int64_t C,
                                         int64_t n_rows, int64_t pos_offset, const int32_t* __restrict__ seq_pos) {
  const int64_t n = n_rows * C;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / C, c = i % C;
    float x = to_f32(wte[static_cast<int64_t>(tokens[row]) * C + c]);
    if (wpe) x += to_f32(wpe[((seq_pos ? seq_pos[row / Tn] : pos_offset) + row % Tn) * C + c]);
    out[i] = from_f32<T>(x);
  }
}

// dwte: one atomic per element of dout (tokens repeat at random, so rows collide at random).
template <typename T>
__global__ void embedding_backward_wte_kernel(float* __restrict__ dwte, const T* __restrict__ dout,
                                              const int* __restrict__ tokens, int64_t C, int64_t n_rows) {
  const int64_t n = n_rows * C;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / C, c = i % C;
    atomicAdd(dwte + static_cast<int64_t>(tokens[row]) * C + c, to_f32(dout[i]));
  }
}

// dwte without atomics: block k sums the rows of token ids[k] in ascending order, its threads
// striding over the columns; no two blocks share an output row.
template <typename T>
__global__ void embedding_backward_runs_kernel(float* __restrict__ dwte, const T* __restrict__ dout,
                                               const int* __restrict__ rows, const int* __restrict__ starts,
                                               const int* __restrict__ ids, int64_t C) {
  const int k = static_cast<int>(blockIdx.x);
  const int first = starts[k], last = starts[k + 1];
  float* out = dwte + static_cast<int64_t>(ids[k]) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float s = 0.0f;
    for (int r = first; r < last; ++r) s += to_f32(dout[static_cast<int64_t>(rows[r]) * C + c]);
    out[c] += s;
  }
}

// dwpe: each thread owns one (t, c) and sums over the batch, so no two threads share an output.
template <typename T>
__global__ void embedding_backward_wpe_kernel(float* __restrict__ dwpe, const T* __restrict__ dout, int64_t B,
                                              int64_t Tn, int64_t C, int64_t pos_offset) {
  const int64_t n = Tn * C;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float s = 0.0f;
    for (int64_t b = 0; b < B; ++b) s += to_f32(dout[b * n + i]);
    dwpe[pos_offset * C + i] += s;
  }
}

constexpr int kThreads = 256;

}  // namespace

template <typename T>
void embedding_forward(T* out, const int* tokens, const T* wte, const T* wpe, int64_t B, int64_t Tn, int64_t C,
                       int64_t pos_offset, const int32_t* seq_pos) {
  const int64_t rows = B * Tn;
  if (rows <= 0 || C <= 0) return;
  launch_kernel("embedding forward", embedding_forward_kernel<device_t<T>>, grid_for(rows * C, kThreads), kThreads, 0,
                nullptr, dev(out), tokens, dev(wte), dev(wpe), Tn, C, rows, pos_offset, seq_pos);
}

void group_rows_by_token(const int* tokens, int64_t n, std::vector<int>& rows, std::vector<int>& starts,
                         std::vector<int>& ids) {
  std::vector<uint64_t> keys(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) {
    const auto token = static_cast<uint64_t>(static_cast<uint32_t>(tokens[r]));
    keys[static_cast<size_t>(r)] = token << 32 | static_cast<uint32_t>(r);
  }
  std::sort(keys.begin(), keys.end());
  rows.resize(static_cast<size_t>(n));
  starts.clear();
  ids.clear();
  for (size_t i = 0; i < keys.size(); ++i) {
    const int token = static_cast<int>(keys[i] >> 32);
    if (ids.empty() || ids.back() != token) {
      ids.push_back(token);
      starts.push_back(static_cast<int>(i));
    }
    rows[i] = static_cast<int>(keys[i] & 0xffffffffu);
  }
  starts.push_back(static_cast<int>(n));
}

template <typename T>
void embedding_backward(float* dwte, float* dwpe, const T* dout, const int* tokens, int64_t B, int64_t Tn, int64_t C,
                        int64_t pos_offset, const TokenRuns* runs) {
  const int64_t rows = B * Tn;
  if (rows <= 0 || C <= 0) return;
  if (dwte && runs) {
    if (runs->count > 0) {
      launch_kernel("embedding backward (tokens, deterministic)", embedding_backward_runs_kernel<device_t<T>>,
                    static_cast<unsigned>(runs->count), kThreads, 0, nullptr, dwte, dev(dout), runs->rows,
                    runs->starts, runs->ids, C);
    }
  } else if (dwte) {
    launch_kernel("embedding backward (tokens)", embedding_backward_wte_kernel<device_t<T>>,
                  grid_for(rows * C, kThreads), kThreads, 0, nullptr, dwte, dev(dout), tokens, C, rows);
  }
  if (dwpe) {
    launch_kernel("embedding backward (positions)", embedding_backward_wpe_kernel<device_t<T>>,
                  grid_for(Tn * C, kThreads), kThreads, 0, nullptr, dwpe, dev(dout), B, Tn, C, pos_offset);
  }
}

#define FLASHGPT_INSTANTIATE(T)                                                                                  \
  template void embedding_forward<T>(T*, const int*, const T*, const T*, int64_t, int64_t, int64_t, int64_t,     \
                                     const int32_t*);                                                          \
  template void embedding_backward<T>(float*, float*, const T*, const int*, int64_t, int64_t, int64_t, int64_t, \
                                      const TokenRuns*);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(bf16)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
