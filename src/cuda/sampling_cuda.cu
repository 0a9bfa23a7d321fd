// The sampler's candidates on the GPU (CPU twin: sample_token's top-k in infer/sampler.cpp): each
// row's best k logits in rank order, so a decoding step sends B·k ids and logits to the host
// instead of B·Vp logits. One block per row: every thread keeps its own ranked list of the best k
// among the columns it reads (c ≡ thread mod block size, in increasing order, so a later equal
// value ranks after the ones it holds), then k rounds pick the best of the lists' heads by a block
// reduction, the thread whose head it was stepping on to its next.
#include <climits>
#include <string>

#include "cuda/cuda_check.h"
#include "cuda/device_math.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

constexpr int kThreads = 256;

// The rank order: the higher logit first, the lower id first among equals.
__device__ __forceinline__ bool ranks_before(float a, int ia, float b, int ib) { return a > b || (a == b && ia < ib); }

template <typename T>
__global__ void top_k_rows_kernel(const T* __restrict__ logits, int64_t ld, int V, int k, int32_t* __restrict__ ids,
                                  float* __restrict__ vals) {
  __shared__ float best_v[32];
  __shared__ int best_i[32];
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const int warps = static_cast<int>((blockDim.x + 31) / 32);
  const int64_t row = blockIdx.x;
  const T* x = logits + row * ld;
  float lv[kMaxDeviceTopK];
  int li[kMaxDeviceTopK];
  int n = 0;
  for (int c = static_cast<int>(threadIdx.x); c < V; c += static_cast<int>(blockDim.x)) {
    const float v = to_f32(x[c]);
    if (n == k && !ranks_before(v, c, lv[k - 1], li[k - 1])) continue;
    int j = n < k ? n++ : k - 1;
    for (; j > 0 && ranks_before(v, c, lv[j - 1], li[j - 1]); --j) {
      lv[j] = lv[j - 1];
      li[j] = li[j - 1];
    }
    lv[j] = v;
    li[j] = c;
  }
  int head = 0;
  for (int r = 0; r < k; ++r) {
    float v = head < n ? lv[head] : -INFINITY;
    int id = head < n ? li[head] : INT_MAX;
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, v, o);
      const int oi = __shfl_xor_sync(0xffffffffu, id, o);
      if (ranks_before(ov, oi, v, id)) {
        v = ov;
        id = oi;
      }
    }
    __syncthreads();  // the previous round's winners are read by every thread before any overwrites
    if (lane == 0) {
      best_v[warp] = v;
      best_i[warp] = id;
    }
    __syncthreads();
    v = best_v[0];
    id = best_i[0];
    for (int w = 1; w < warps; ++w) {
      if (ranks_before(best_v[w], best_i[w], v, id)) {
        v = best_v[w];
        id = best_i[w];
      }
    }
    if (head < n && li[head] == id) ++head;  // ids are unique: one thread holds the winner
    if (threadIdx.x == 0) {
      ids[row * k + r] = id;
      vals[row * k + r] = v;
    }
  }
}

}  // namespace

template <typename T>
void top_k_rows(const T* logits, int64_t rows, int64_t V, int64_t ld, int k, int32_t* ids, float* vals) {
  FLASHGPT_CUDA_REQUIRE(k >= 1 && k <= kMaxDeviceTopK && k <= V,
                        "top-k on the GPU: k = " + std::to_string(k) + " must be 1…" + std::to_string(kMaxDeviceTopK) +
                            " and at most the row's " + std::to_string(V) + " columns");
  FLASHGPT_CUDA_REQUIRE(V <= INT_MAX && ld >= V, "top-k on the GPU: " + std::to_string(V) +
                                                     " columns in rows " + std::to_string(ld) + " apart");
  if (rows <= 0) return;
  launch_kernel("top-k rows", top_k_rows_kernel<device_t<T>>, static_cast<unsigned>(rows), kThreads, 0, nullptr,
                dev(logits), ld, static_cast<int>(V), k, ids, vals);
}

template void top_k_rows<float>(const float*, int64_t, int64_t, int64_t, int, int32_t*, float*);
template void top_k_rows<bf16>(const bf16*, int64_t, int64_t, int64_t, int, int32_t*, float*);

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
