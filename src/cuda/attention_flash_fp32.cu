// The fp32 flash-attention kernels (the GPU's parity path; see attention_cuda.h). FlashAttention-2's
// tiling with one thread per row: a block stages a tile of queries (forward, dQ) or keys (dK, dV)
// in shared memory, streams the other side through it tile by tile, and keeps its own row's
// running state — the online softmax (m, l) and the output or gradient row — in shared memory
// rows padded by one float so that a warp's threads, each on its own row, hit different banks.
//
// Backward: D = rowsum(dO ∘ O) first; then one kernel per query tile for dQ and one per key tile
// for dK and dV (summing the query heads that share a key/value head), each recomputing
// P = exp(scale·q·k − lse) from the forward's lse, so no thread ever writes another's row.
#if defined(FLASHGPT_SIMT)
#include <unistd.h>  // the emulated GPU's memory: the host's
#endif

#include <cmath>
#include <cstdint>
#include <string>

#include "cuda/attention_mask_cuda.h"
#include "cuda/platform.h"
#include "flashgpt/core/device.h"
#include "flashgpt/cuda/attention_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

constexpr float kMasked = -1e30f;
constexpr int kMaxHeadDim = 256;

struct Dims {
  int64_t B, Hq, Hkv, Tq, Tk, Dqk, Dv, kv_rows, q_row, k_row, v_row, group;
};

using attention_kernels::Mask;
using attention_kernels::causal_offset;
using attention_kernels::mask_of;

Dims dims_of(const AttentionDims& d) {
  return {d.B, d.Hq, d.Hkv, d.Tq, d.Tk, d.Dqk, d.Dv, d.kv_rows(), d.q_row(), d.k_row(), d.v_row(), d.Hq / d.Hkv};
}

// Keys [0, limit) pass the causal and padding masks for query i of sequence b.
__device__ __forceinline__ int64_t key_limit(const Dims& d, const Mask& m, int64_t b, int64_t i) {
  int64_t lim = d.Tk;
  if (m.causal) lim = min(lim, causal_offset(m, b) + i + 1);
  if (m.kv_lengths) lim = min(lim, static_cast<int64_t>(m.kv_lengths[b]));
  return max(lim, int64_t{0});
}

__device__ __forceinline__ bool same_document(const Mask& m, const Dims& d, int64_t b, int64_t i, int64_t j) {
  return !m.q_seg || m.q_seg[b * d.Tq + i] == m.kv_seg[b * d.kv_rows + j];
}

// Stages rows [first, first + rows) of a tensor into shared memory, row r at dst + r·ld, width
// values each; rows at or past `valid` are zeros. src points at row 0 of this (batch, head);
// rows sit src_row apart. Every thread of the block takes part (t of n).
__device__ __forceinline__ void stage_rows(float* dst, int64_t ld, const float* __restrict__ src, int64_t src_row,
                                           int64_t first, int64_t valid, int rows, int64_t width, int t, int n) {
  for (int64_t idx = t; idx < rows * width; idx += n) {
    const int64_t r = idx / width, c = idx % width;
    dst[r * ld + c] = first + r < valid ? src[(first + r) * src_row + c] : 0.0f;
  }
}

// ---------------------------------------------------------------------------------------------
constexpr int kFwdRows = 64;  // queries per block (threads)
constexpr int kFwdKeys = 32;  // keys per tile

__global__ void forward_kernel(Dims d, Mask m, float scale, const float* __restrict__ q, const float* __restrict__ k,
                               const float* __restrict__ v, float* __restrict__ o, float* __restrict__ lse) {
  FLASHGPT_DYNAMIC_SHARED(float, sm);
  const int64_t qs = d.Dqk + 1, os = d.Dv + 1;
  float* Qs = sm;
  float* Ks = Qs + kFwdRows * qs;
  float* Vs = Ks + kFwdKeys * d.Dqk;
  float* Os = Vs + kFwdKeys * d.Dv;
  const int64_t b = blockIdx.z, h = blockIdx.y, i0 = static_cast<int64_t>(blockIdx.x) * kFwdRows;
  const int t = threadIdx.x;
  const int64_t i = i0 + t, hk = h / d.group;
  const int64_t q_row = d.q_row, o_row = d.Hq * d.Dv;
  const float* qb = q + b * d.Tq * q_row + h * d.Dqk;
  const float* kb = k + b * d.kv_rows * d.k_row + hk * d.Dqk;
  const float* vb = v + b * d.kv_rows * d.v_row + hk * d.Dv;
  stage_rows(Qs, qs, qb, q_row, i0, d.Tq, kFwdRows, d.Dqk, t, kFwdRows);
  for (int64_t c = 0; c < d.Dv; ++c) Os[t * os + c] = 0.0f;
  const bool active = i < d.Tq;
  const int64_t last = min(i0 + kFwdRows, d.Tq) - 1;
  const int64_t key_end = key_limit(d, m, b, last);  // the largest limit in the block
  const int64_t my_limit = active ? key_limit(d, m, b, i) : 0;
  float row_m = kMasked, row_l = 0.0f;
  for (int64_t j0 = 0; j0 < key_end; j0 += kFwdKeys) {
    __syncthreads();
    stage_rows(Ks, d.Dqk, kb, d.k_row, j0, d.Tk, kFwdKeys, d.Dqk, t, kFwdRows);
    stage_rows(Vs, d.Dv, vb, d.v_row, j0, d.Tk, kFwdKeys, d.Dv, t, kFwdRows);
    __syncthreads();
    if (!active) continue;
    float s[kFwdKeys];
    float mx = row_m;
#pragma unroll
    for (int c = 0; c < kFwdKeys; ++c) {
      const int64_t j = j0 + c;
      s[c] = kMasked;
      if (j < my_limit && same_document(m, d, b, i, j)) {
        float dot = 0.0f;
        for (int64_t x = 0; x < d.Dqk; ++x) dot += Qs[t * qs + x] * Ks[c * d.Dqk + x];
        s[c] = dot * scale;
        mx = fmaxf(mx, s[c]);
      }
    }
    if (mx <= kMasked) continue;  // nothing visible to this row yet
    const float alpha = expf(row_m - mx);  // 0 while the row had seen nothing
    row_l *= alpha;
    for (int64_t c = 0; c < d.Dv; ++c) Os[t * os + c] *= alpha;
#pragma unroll
    for (int c = 0; c < kFwdKeys; ++c) {
      if (s[c] <= kMasked) continue;
      const float p = expf(s[c] - mx);
      row_l += p;
      for (int64_t x = 0; x < d.Dv; ++x) Os[t * os + x] += p * Vs[c * d.Dv + x];
    }
    row_m = mx;
  }
  if (!active) return;
  float* out = o + (b * d.Tq + i) * o_row + h * d.Dv;
  float* l_out = lse + (b * d.Hq + h) * d.Tq + i;
  if (row_l == 0.0f) {  // the row saw no key
    for (int64_t c = 0; c < d.Dv; ++c) out[c] = 0.0f;
    *l_out = -INFINITY;
    return;
  }
  const float inv = 1.0f / row_l;
  for (int64_t c = 0; c < d.Dv; ++c) out[c] = Os[t * os + c] * inv;
  *l_out = row_m + logf(row_l);
}

// D[b, h, i] = Σ_c dO ∘ O over the row.
__global__ void rowdot_kernel(Dims d, const float* __restrict__ o, const float* __restrict__ dout, float* __restrict__ D) {
  const int64_t n = d.B * d.Hq * d.Tq;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx % d.Tq, h = (idx / d.Tq) % d.Hq, b = idx / (d.Tq * d.Hq);
    const float* a = o + (b * d.Tq + i) * d.Hq * d.Dv + h * d.Dv;
    const float* g = dout + (b * d.Tq + i) * d.Hq * d.Dv + h * d.Dv;
    float s = 0.0f;
    for (int64_t c = 0; c < d.Dv; ++c) s += a[c] * g[c];
    D[idx] = s;
  }
}

constexpr int kDqRows = 32;
constexpr int kDqKeys = 32;

__global__ void dq_kernel(Dims d, Mask m, float scale, const float* __restrict__ q, const float* __restrict__ k,
                          const float* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ D,
                          const float* __restrict__ dout, float* __restrict__ dq) {
  FLASHGPT_DYNAMIC_SHARED(float, sm);
  const int64_t qs = d.Dqk + 1, os = d.Dv + 1;
  float* Qs = sm;
  float* dOs = Qs + kDqRows * qs;
  float* dQs = dOs + kDqRows * os;
  float* Ks = dQs + kDqRows * qs;
  float* Vs = Ks + kDqKeys * d.Dqk;
  const int64_t b = blockIdx.z, h = blockIdx.y, i0 = static_cast<int64_t>(blockIdx.x) * kDqRows;
  const int t = threadIdx.x;
  const int64_t i = i0 + t, hk = h / d.group;
  const int64_t q_row = d.q_row, o_row = d.Hq * d.Dv;
  const float* kb = k + b * d.kv_rows * d.k_row + hk * d.Dqk;
  const float* vb = v + b * d.kv_rows * d.v_row + hk * d.Dv;
  stage_rows(Qs, qs, q + b * d.Tq * q_row + h * d.Dqk, q_row, i0, d.Tq, kDqRows, d.Dqk, t, kDqRows);
  stage_rows(dOs, os, dout + b * d.Tq * o_row + h * d.Dv, o_row, i0, d.Tq, kDqRows, d.Dv, t, kDqRows);
  for (int64_t c = 0; c < d.Dqk; ++c) dQs[t * qs + c] = 0.0f;
  const bool active = i < d.Tq;
  const int64_t last = min(i0 + kDqRows, d.Tq) - 1;
  const int64_t key_end = key_limit(d, m, b, last);
  const int64_t my_limit = active ? key_limit(d, m, b, i) : 0;
  const float my_lse = active ? lse[(b * d.Hq + h) * d.Tq + i] : 0.0f;
  const float my_D = active ? D[(b * d.Hq + h) * d.Tq + i] : 0.0f;
  for (int64_t j0 = 0; j0 < key_end; j0 += kDqKeys) {
    __syncthreads();
    stage_rows(Ks, d.Dqk, kb, d.k_row, j0, d.Tk, kDqKeys, d.Dqk, t, kDqRows);
    stage_rows(Vs, d.Dv, vb, d.v_row, j0, d.Tk, kDqKeys, d.Dv, t, kDqRows);
    __syncthreads();
    if (!active) continue;
    for (int c = 0; c < kDqKeys; ++c) {
      const int64_t j = j0 + c;
      if (j >= my_limit || !same_document(m, d, b, i, j)) continue;
      float s = 0.0f, dp = 0.0f;
      for (int64_t x = 0; x < d.Dqk; ++x) s += Qs[t * qs + x] * Ks[c * d.Dqk + x];
      for (int64_t x = 0; x < d.Dv; ++x) dp += dOs[t * os + x] * Vs[c * d.Dv + x];
      const float p = expf(s * scale - my_lse);
      const float ds = p * (dp - my_D) * scale;
      for (int64_t x = 0; x < d.Dqk; ++x) dQs[t * qs + x] += ds * Ks[c * d.Dqk + x];
    }
  }
  if (!active) return;
  float* out = dq + (b * d.Tq + i) * q_row + h * d.Dqk;
  for (int64_t c = 0; c < d.Dqk; ++c) out[c] = dQs[t * qs + c];
}

constexpr int kKvRows = 32;     // keys per block (threads)
constexpr int kKvQueries = 16;  // queries per tile

__global__ void dkv_kernel(Dims d, Mask m, float scale, const float* __restrict__ q, const float* __restrict__ k,
                           const float* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ D,
                           const float* __restrict__ dout, float* __restrict__ dk, float* __restrict__ dv) {
  FLASHGPT_DYNAMIC_SHARED(float, sm);
  const int64_t ks = d.Dqk + 1, vs = d.Dv + 1;
  float* Ks = sm;
  float* Vs = Ks + kKvRows * ks;
  float* dKs = Vs + kKvRows * vs;
  float* dVs = dKs + kKvRows * ks;
  float* Qs = dVs + kKvRows * vs;
  float* dOs = Qs + kKvQueries * d.Dqk;
  float* Ls = dOs + kKvQueries * d.Dv;
  float* Ds = Ls + kKvQueries;
  const int64_t b = blockIdx.z, hk = blockIdx.y, j0 = static_cast<int64_t>(blockIdx.x) * kKvRows;
  const int t = threadIdx.x;
  const int64_t j = j0 + t;
  const int64_t q_row = d.q_row, o_row = d.Hq * d.Dv;
  stage_rows(Ks, ks, k + b * d.kv_rows * d.k_row + hk * d.Dqk, d.k_row, j0, d.Tk, kKvRows, d.Dqk, t, kKvRows);
  stage_rows(Vs, vs, v + b * d.kv_rows * d.v_row + hk * d.Dv, d.v_row, j0, d.Tk, kKvRows, d.Dv, t, kKvRows);
  for (int64_t c = 0; c < d.Dqk; ++c) dKs[t * ks + c] = 0.0f;
  for (int64_t c = 0; c < d.Dv; ++c) dVs[t * vs + c] = 0.0f;
  const bool active = j < d.Tk;
  // The first query that can see key j0 under the causal mask; padding and documents per pair.
  const int64_t i_start = m.causal ? max(int64_t{0}, j0 - causal_offset(m, b)) : 0;
  for (int64_t h = hk * d.group; h < (hk + 1) * d.group; ++h) {
    for (int64_t i0 = i_start / kKvQueries * kKvQueries; i0 < d.Tq; i0 += kKvQueries) {
      __syncthreads();
      stage_rows(Qs, d.Dqk, q + b * d.Tq * q_row + h * d.Dqk, q_row, i0, d.Tq, kKvQueries, d.Dqk, t, kKvRows);
      stage_rows(dOs, d.Dv, dout + b * d.Tq * o_row + h * d.Dv, o_row, i0, d.Tq, kKvQueries, d.Dv, t, kKvRows);
      for (int64_t r = t; r < kKvQueries; r += kKvRows) {
        const bool in = i0 + r < d.Tq;
        Ls[r] = in ? lse[(b * d.Hq + h) * d.Tq + i0 + r] : 0.0f;
        Ds[r] = in ? D[(b * d.Hq + h) * d.Tq + i0 + r] : 0.0f;
      }
      __syncthreads();
      if (!active) continue;
      for (int r = 0; r < kKvQueries; ++r) {
        const int64_t i = i0 + r;
        if (i >= d.Tq || j >= key_limit(d, m, b, i) || !same_document(m, d, b, i, j)) continue;
        float s = 0.0f, dp = 0.0f;
        for (int64_t x = 0; x < d.Dqk; ++x) s += Qs[r * d.Dqk + x] * Ks[t * ks + x];
        for (int64_t x = 0; x < d.Dv; ++x) dp += dOs[r * d.Dv + x] * Vs[t * vs + x];
        const float p = expf(s * scale - Ls[r]);
        const float ds = p * (dp - Ds[r]) * scale;
        for (int64_t x = 0; x < d.Dv; ++x) dVs[t * vs + x] += p * dOs[r * d.Dv + x];
        for (int64_t x = 0; x < d.Dqk; ++x) dKs[t * ks + x] += ds * Qs[r * d.Dqk + x];
      }
    }
  }
  if (!active) return;
  float* gk = dk + (b * d.kv_rows + j) * d.k_row + hk * d.Dqk;
  float* gv = dv + (b * d.kv_rows + j) * d.v_row + hk * d.Dv;
  for (int64_t c = 0; c < d.Dqk; ++c) gk[c] = dKs[t * ks + c];
  for (int64_t c = 0; c < d.Dv; ++c) gv[c] = dVs[t * vs + c];
}

void check_dims(const AttentionDims& d, const AttentionMask& m) {
  check_attention_dims(d, m, MaskMemory::Device);
  FLASHGPT_CUDA_REQUIRE(d.Dqk <= kMaxHeadDim && d.Dv <= kMaxHeadDim,
                        "GPU fp32 attention: head dims up to " + std::to_string(kMaxHeadDim) + " (got " +
                            std::to_string(d.Dqk) + " and " + std::to_string(d.Dv) + ")");
}

unsigned blocks(int64_t n, int per) { return static_cast<unsigned>((n + per - 1) / per); }

}  // namespace

#if defined(FLASHGPT_SIMT)
DeviceReport devices() {  // the emulator is always there, as one GPU of the architecture it emulates
  DeviceReport r;
  r.cuda_built = true;
  r.cuda_architectures = "90a (emulated on the CPU)";
  int sms = 0, major = 0, minor = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0);
  const int64_t memory = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE);  // the host's
  r.gpus.push_back({0, "CPU emulator", major, minor, memory, sms, true});
  return r;
}
#else
DeviceReport devices() { return probe_devices(); }
#endif
bool gpu_available() { return !devices().gpus.empty(); }

void flash_forward_fp32(const AttentionDims& ad, const AttentionMask& am, float scale, const float* q, const float* k,
                        const float* v, float* o, float* lse) {
  check_dims(ad, am);
  const Dims d = dims_of(ad);
  const size_t shared = sizeof(float) * static_cast<size_t>(kFwdRows * (d.Dqk + 1) + kFwdKeys * d.Dqk +
                                                            kFwdKeys * d.Dv + kFwdRows * (d.Dv + 1));
  allow_shared(forward_kernel, shared, "flash forward");
  const dim3 grid(blocks(d.Tq, kFwdRows), static_cast<unsigned>(d.Hq), static_cast<unsigned>(d.B));
  launch_kernel("flash forward", forward_kernel, grid, kFwdRows, shared, nullptr, d, mask_of(am), scale, q, k, v, o,
                lse);
}

void flash_backward_fp32(const AttentionDims& ad, const AttentionMask& am, float scale, const float* q, const float* k,
                         const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk,
                         float* dv) {
  check_dims(ad, am);
  const Dims d = dims_of(ad);
  const Mask m = mask_of(am);
  DeviceBuffer D(sizeof(float) * static_cast<size_t>(d.B * d.Hq * d.Tq));
  launch_kernel("flash backward D = rowsum(dO∘O)", rowdot_kernel, blocks(d.B * d.Hq * d.Tq, 256), 256, 0, nullptr, d, o,
                dout, D.as<float>());

  const size_t dq_shared = sizeof(float) * static_cast<size_t>(kDqRows * (d.Dqk + 1) * 2 + kDqRows * (d.Dv + 1) +
                                                               kDqKeys * (d.Dqk + d.Dv));
  allow_shared(dq_kernel, dq_shared, "flash backward dQ");
  launch_kernel("flash backward dQ", dq_kernel,
                dim3(blocks(d.Tq, kDqRows), static_cast<unsigned>(d.Hq), static_cast<unsigned>(d.B)), kDqRows,
                dq_shared, nullptr, d, m, scale, q, k, v, lse, D.as<float>(), dout, dq);

  const size_t kv_shared = sizeof(float) * static_cast<size_t>(kKvRows * (d.Dqk + 1) * 2 + kKvRows * (d.Dv + 1) * 2 +
                                                               kKvQueries * (d.Dqk + d.Dv) + 2 * kKvQueries);
  allow_shared(dkv_kernel, kv_shared, "flash backward dK, dV");
  launch_kernel("flash backward dK, dV", dkv_kernel,
                dim3(blocks(d.Tk, kKvRows), static_cast<unsigned>(d.Hkv), static_cast<unsigned>(d.B)), kKvRows,
                kv_shared, nullptr, d, m, scale, q, k, v, lse, D.as<float>(), dout, dk, dv);
  synchronize();  // D is freed on return
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
