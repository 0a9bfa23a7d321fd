// The standard attention on the GPU (attention_cuda.h): the textbook computation that keeps the
// whole probability matrix, the point the flash kernels' memory and speed are measured against.
// Per query head h of sequence b (key/value head h / group):
//   forward   S = scale·Q Kᵀ (cuBLASLt, fp32 out) → masked softmax → P (kept, T) and lse;
//             O = P V
//   backward  dP = dO Vᵀ (fp32) → dS = P ∘ (dP − rowsum(P ∘ dP)) (T);
//             dV += Pᵀ dO, dK += scale·dSᵀ Q (fp32, summed over the GQA group, then rounded);
//             dQ = scale·dS K
// The workspace holds P for every head — B·Hq·Tq·Tk elements, the standard kernel's defining
// cost — and one head's scores, dS and dK/dV accumulators.
#include <string>
#include <type_traits>

#include "cuda/attention_mask_cuda.h"
#include "cuda/device_math.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/matmul_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

using attention_kernels::Mask;
using attention_kernels::mask_of;
using attention_kernels::visible;

constexpr int kThreads = 256, kRowsPerBlock = kThreads / 32;  // softmax: a warp per row

// One warp per query row i of head (b, h): P[i, ·] = softmax of the visible scores, lse[b, h, i].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    softmax_kernel(int64_t Tq, int64_t Tk, int64_t kv_rows, int64_t Hq, int64_t b, int64_t h, Mask m,
                   const float* __restrict__ s, T* __restrict__ p, float* __restrict__ lse) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  if (i >= Tq) return;  // whole warps leave together
  const float* srow = s + i * Tk;
  T* prow = p + i * Tk;
  float mx = -INFINITY;
  for (int64_t j = lane; j < Tk; j += 32)
    if (visible(m, Tq, kv_rows, b, i, j)) mx = fmaxf(mx, srow[j]);
  mx = warp_max(mx);
  float sum = 0.0f;
  if (mx != -INFINITY) {
    for (int64_t j = lane; j < Tk; j += 32)
      if (visible(m, Tq, kv_rows, b, i, j)) sum += expf(srow[j] - mx);
  }
  sum = warp_sum(sum);
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;  // a row that sees no key: P = 0, lse = −∞
  for (int64_t j = lane; j < Tk; j += 32) {
    const bool vis = mx != -INFINITY && visible(m, Tq, kv_rows, b, i, j);
    prow[j] = from_f32<T>(vis ? expf(srow[j] - mx) * inv : 0.0f);
  }
  if (lane == 0) lse[(b * Hq + h) * Tq + i] = sum > 0.0f ? mx + logf(sum) : -INFINITY;
}

// One warp per query row: ds[i, ·] = P ∘ (dP − Σ_j P dP).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    softmax_backward_kernel(int64_t Tq, int64_t Tk, const T* __restrict__ p, const float* __restrict__ dp,
                            T* __restrict__ ds) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  if (i >= Tq) return;
  const T* prow = p + i * Tk;
  const float* dprow = dp + i * Tk;
  float dot = 0.0f;
  for (int64_t j = lane; j < Tk; j += 32) dot += to_f32(prow[j]) * dprow[j];
  dot = warp_sum(dot);
  for (int64_t j = lane; j < Tk; j += 32) ds[i * Tk + j] = from_f32<T>(to_f32(prow[j]) * (dprow[j] - dot));
}

// dst rows r < rows (row stride ld) = src [rows, cols] rounded to T.
template <typename T>
__global__ void store_rows_kernel(int64_t rows, int64_t cols, const float* __restrict__ src, T* __restrict__ dst,
                                  int64_t ld) {
  const int64_t n = rows * cols;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[(idx / cols) * ld + idx % cols] = from_f32<T>(src[idx]);
  }
}

size_t round_up(size_t n) { return (n + 255) / 256 * 256; }
unsigned row_blocks(int64_t rows) { return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock); }

// The workspace's parts.
template <typename T>
struct Workspace {
  T* p;        // [B, Hq, Tq, Tk]
  float* s;    // [Tq, Tk]: one head's scores, or its dP
  T* ds;       // [Tq, Tk]
  float* dk;   // [Tk, Dqk]
  float* dv;   // [Tk, Dv]
  static size_t bytes(const AttentionDims& d, Workspace* w = nullptr, void* base = nullptr) {
    const size_t tt = static_cast<size_t>(d.Tq * d.Tk);
    const size_t parts[] = {round_up(sizeof(T) * static_cast<size_t>(d.B * d.Hq) * tt), round_up(sizeof(float) * tt),
                            round_up(sizeof(T) * tt), round_up(sizeof(float) * static_cast<size_t>(d.Tk * d.Dqk)),
                            round_up(sizeof(float) * static_cast<size_t>(d.Tk * d.Dv))};
    if (w) {
      auto* c = static_cast<unsigned char*>(base);
      w->p = reinterpret_cast<T*>(c);
      w->s = reinterpret_cast<float*>(c += parts[0]);
      w->ds = reinterpret_cast<T*>(c += parts[1]);
      w->dk = reinterpret_cast<float*>(c += parts[2]);
      w->dv = reinterpret_cast<float*>(c += parts[3]);
    }
    return parts[0] + parts[1] + parts[2] + parts[3] + parts[4];
  }
};

// The host side's element type for gemm (bf16 is the host struct) from the device one.
template <typename E>
using host_t = std::conditional_t<std::is_same_v<E, float>, float, bf16>;

template <typename E>
const host_t<E>* host(const E* p) {
  return reinterpret_cast<const host_t<E>*>(p);
}
template <typename E>
host_t<E>* host(E* p) {
  return reinterpret_cast<host_t<E>*>(p);
}

template <typename E>
void forward_typed(const AttentionDims& d, const AttentionMask& am, float scale, const E* q, const E* k, const E* v,
                   E* o, float* lse, void* workspace) {
  Workspace<E> w{};
  Workspace<E>::bytes(d, &w, workspace);
  const Mask m = mask_of(am);
  const int64_t group = d.Hq / d.Hkv, q_row = d.q_row(), o_row = d.Hq * d.Dv;
  for (int64_t b = 0; b < d.B; ++b) {
    for (int64_t h = 0; h < d.Hq; ++h) {
      const int64_t hk = h / group;
      const E* qh = q + b * d.Tq * q_row + h * d.Dqk;
      const E* kh = k + b * d.kv_rows() * d.k_row() + hk * d.Dqk;
      const E* vh = v + b * d.kv_rows() * d.v_row() + hk * d.Dv;
      E* ph = w.p + (b * d.Hq + h) * d.Tq * d.Tk;
      gemm<host_t<E>, float>(false, true, d.Tq, d.Tk, d.Dqk, scale, host(qh), q_row, host(kh), d.k_row(), 0.0f, w.s,
                             d.Tk);
      launch_kernel("standard attention softmax", softmax_kernel<E>, row_blocks(d.Tq), kThreads, 0,
                    nullptr, d.Tq, d.Tk, d.kv_rows(), d.Hq, b, h, m, static_cast<const float*>(w.s), ph, lse);
      gemm<host_t<E>, host_t<E>>(false, false, d.Tq, d.Dv, d.Tk, 1.0f, host(static_cast<const E*>(ph)), d.Tk,
                                 host(vh), d.v_row(), 0.0f, host(o + b * d.Tq * o_row + h * d.Dv), o_row);
    }
  }
}

template <typename E>
void backward_typed(const AttentionDims& d, float scale, const E* q, const E* k, const E* v, const E* dout, E* dq,
                    E* dk, E* dv, void* workspace) {
  Workspace<E> w{};
  Workspace<E>::bytes(d, &w, workspace);
  const int64_t group = d.Hq / d.Hkv, q_row = d.q_row(), o_row = d.Hq * d.Dv;
  for (int64_t b = 0; b < d.B; ++b) {
    for (int64_t hk = 0; hk < d.Hkv; ++hk) {
      const E* kh = k + b * d.kv_rows() * d.k_row() + hk * d.Dqk;
      const E* vh = v + b * d.kv_rows() * d.v_row() + hk * d.Dv;
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        const float beta = h == hk * group ? 0.0f : 1.0f;  // the group's first head starts the sums
        const E* qh = q + b * d.Tq * q_row + h * d.Dqk;
        const E* doh = dout + b * d.Tq * o_row + h * d.Dv;
        const E* ph = w.p + (b * d.Hq + h) * d.Tq * d.Tk;
        gemm<host_t<E>, float>(false, true, d.Tq, d.Tk, d.Dv, 1.0f, host(doh), o_row, host(vh), d.v_row(), 0.0f, w.s,
                               d.Tk);
        launch_kernel("standard attention softmax backward", softmax_backward_kernel<E>, row_blocks(d.Tq), kThreads, 0,
                      nullptr, d.Tq, d.Tk, ph, static_cast<const float*>(w.s), w.ds);
        gemm<host_t<E>, float>(true, false, d.Tk, d.Dv, d.Tq, 1.0f, host(ph), d.Tk, host(doh), o_row, beta, w.dv,
                               d.Dv);
        gemm<host_t<E>, float>(true, false, d.Tk, d.Dqk, d.Tq, scale, host(static_cast<const E*>(w.ds)), d.Tk,
                               host(qh), q_row, beta, w.dk, d.Dqk);
        gemm<host_t<E>, host_t<E>>(false, false, d.Tq, d.Dqk, d.Tk, scale, host(static_cast<const E*>(w.ds)), d.Tk,
                                   host(kh), d.k_row(), 0.0f, host(dq + b * d.Tq * q_row + h * d.Dqk), q_row);
      }
      launch_kernel("standard attention dK", store_rows_kernel<E>, grid_for(d.Tk * d.Dqk, 256), 256, 0, nullptr, d.Tk,
                    d.Dqk, static_cast<const float*>(w.dk), dk + b * d.kv_rows() * d.k_row() + hk * d.Dqk, d.k_row());
      launch_kernel("standard attention dV", store_rows_kernel<E>, grid_for(d.Tk * d.Dv, 256), 256, 0, nullptr, d.Tk,
                    d.Dv, static_cast<const float*>(w.dv), dv + b * d.kv_rows() * d.v_row() + hk * d.Dv, d.v_row());
    }
  }
}

}  // namespace

template <typename T>
size_t standard_workspace_bytes(const AttentionDims& d) {
  return Workspace<device_t<T>>::bytes(d);
}

template <typename T>
void standard_forward_cuda(const AttentionDims& d, const AttentionMask& m, float scale, const T* q, const T* k,
                           const T* v, T* o, float* lse, void* workspace) {
  check_attention_dims(d, m, MaskMemory::Device);
  FLASHGPT_CUDA_REQUIRE(workspace != nullptr, "standard attention: a workspace of standard_workspace_bytes is needed");
  forward_typed(d, m, scale, dev(q), dev(k), dev(v), dev(o), lse, workspace);
}

template <typename T>
void standard_backward_cuda(const AttentionDims& d, const AttentionMask& m, float scale, const T* q, const T* k,
                            const T* v, const T* dout, T* dq, T* dk, T* dv, void* workspace) {
  check_attention_dims(d, m, MaskMemory::Device);
  FLASHGPT_CUDA_REQUIRE(workspace != nullptr, "standard attention: the forward's workspace is needed");
  backward_typed(d, scale, dev(q), dev(k), dev(v), dev(dout), dev(dq), dev(dk), dev(dv), workspace);
}

template size_t standard_workspace_bytes<float>(const AttentionDims&);
template size_t standard_workspace_bytes<bf16>(const AttentionDims&);
template void standard_forward_cuda<float>(const AttentionDims&, const AttentionMask&, float, const float*,
                                           const float*, const float*, float*, float*, void*);
template void standard_forward_cuda<bf16>(const AttentionDims&, const AttentionMask&, float, const bf16*, const bf16*,
                                          const bf16*, bf16*, float*, void*);
template void standard_backward_cuda<float>(const AttentionDims&, const AttentionMask&, float, const float*,
                                            const float*, const float*, const float*, float*, float*, float*, void*);
template void standard_backward_cuda<bf16>(const AttentionDims&, const AttentionMask&, float, const bf16*,
                                           const bf16*, const bf16*, const bf16*, bf16*, bf16*, bf16*, void*);

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
