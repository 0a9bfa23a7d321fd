// The paged latent decode's split kernel on the CUDA cores (see latent_decode_kernels.h): the fp32
// parity path and every size the tensor-core kernel is not built for.
//   A block of 128 threads holds 16 query rows (head × new token) of one sequence in shared
//   memory and streams one split of that sequence's cache through it, 16 keys a tile, gathering
//   rows through the block table. Eight threads share a query row: each computes two of the
//   tile's sixteen scores (a whole-row dot product), the row's scores meet in shared memory, and
//   each of the eight keeps the online softmax state and an eighth of the row's output columns in
//   registers. The cache is read once per 16 query rows.
#include "cuda/device_math.h"
#include "cuda/latent_decode_kernels.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace latent_decode {

namespace {

constexpr int kRows = 16;        // query rows per block
constexpr int kKeys = 16;        // keys per tile
constexpr int kLanesPerRow = 8;  // threads sharing a query row
constexpr int kThreads = kRows * kLanesPerRow;

// Rows of the group are (token, head) pairs flattened as token·H + head.
// kCols: output columns per thread (n_latent / 8 rounded up to a power of two).
template <typename T, int kCols>
__global__ void __launch_bounds__(kThreads)
    split_kernel(Dims d, float scale, Split split, const T* __restrict__ q, const T* __restrict__ cache,
                 const int32_t* __restrict__ block_table, const int32_t* __restrict__ seq_lens, T* __restrict__ out,
                 float* __restrict__ lse, float* __restrict__ part_o, float* __restrict__ part_lse) {
  const Work w = work_of(d, split, seq_lens);
  if (w.none) return;
  FLASHGPT_DYNAMIC_SHARED(float, sm);
  float* Qs = sm;                    // [kRows][row]
  float* Ks = Qs + kRows * d.row;    // [kKeys][row]
  float* Ss = Ks + kKeys * d.row;    // [kRows][kKeys + 1]
  const int group = static_cast<int>(blockIdx.y);
  const int64_t b = w.b;
  const int t = static_cast<int>(threadIdx.x), r = t / kLanesPerRow, part = t % kLanesPerRow;
  const int64_t rows = d.rows(), gr = static_cast<int64_t>(group) * kRows + r;
  const bool valid = gr < rows;
  const int64_t tq = gr / d.H, h = gr % d.H;

  const int64_t len = w.len, k0 = w.k0, k1 = w.k1;
  const int64_t qpos = len - d.Tq + tq;  // this row's position: it sees keys 0 … qpos

  for (int64_t idx = t; idx < kRows * d.row; idx += kThreads) {
    const int64_t rr = idx / d.row, c = idx % d.row, g = static_cast<int64_t>(group) * kRows + rr;
    Qs[idx] = g < rows ? to_f32(q[((b * d.Tq + g / d.H) * d.H + g % d.H) * d.row + c]) : 0.0f;
  }
  const int64_t col0 = static_cast<int64_t>(part) * kCols;  // this thread's output columns
  float acc[kCols];
#pragma unroll
  for (int c = 0; c < kCols; ++c) acc[c] = 0.0f;
  float m = -INFINITY, l = 0.0f;

  for (int64_t j0 = k0; j0 < k1; j0 += kKeys) {
    __syncthreads();  // the previous tile is no longer read
    for (int64_t idx = t; idx < kKeys * d.row; idx += kThreads) {
      const int64_t kk = idx / d.row, c = idx % d.row, j = j0 + kk;
      float x = 0.0f;
      if (j < k1) {
        const int64_t page = block_table[b * d.max_pages + j / d.page];
        x = to_f32(cache[(page * d.page + j % d.page) * d.row + c]);
      }
      Ks[idx] = x;
    }
    __syncthreads();
    // Two scores per thread: keys 2·part and 2·part + 1 of the tile.
    for (int e = 0; e < kKeys / kLanesPerRow; ++e) {
      const int kk = part * (kKeys / kLanesPerRow) + e;
      const int64_t j = j0 + kk;
      float s = -INFINITY;
      if (valid && j < k1 && j <= qpos) {
        float dot = 0.0f;
        for (int64_t c = 0; c < d.row; ++c) dot += Qs[r * d.row + c] * Ks[kk * d.row + c];
        s = dot * scale;
      }
      Ss[r * (kKeys + 1) + kk] = s;
    }
    __syncwarp();  // a row's eight threads are in one warp
    float mx = m;
    for (int kk = 0; kk < kKeys; ++kk) mx = fmaxf(mx, Ss[r * (kKeys + 1) + kk]);
    if (mx != -INFINITY) {
      const float alpha = m == -INFINITY ? 0.0f : expf(m - mx);
      l *= alpha;
#pragma unroll
      for (int c = 0; c < kCols; ++c) acc[c] *= alpha;
      for (int kk = 0; kk < kKeys; ++kk) {
        const float s = Ss[r * (kKeys + 1) + kk];
        if (s == -INFINITY) continue;
        const float p = expf(s - mx);
        l += p;
        const float* v = Ks + kk * d.row + col0;
#pragma unroll
        for (int c = 0; c < kCols; ++c)
          if (col0 + c < d.nl) acc[c] += p * v[c];
      }
      m = mx;
    }
    __syncwarp();  // Ss is rewritten only after the next tile's barrier, but keep the row's reads together
  }
  if (!valid) return;
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  const float row_lse = l > 0.0f ? m + logf(l) : -INFINITY;
  const int64_t orow = (b * d.Tq + tq) * d.H + h;  // [B, Tq, H] row of out
  if (w.direct) {
    for (int c = 0; c < kCols; ++c)
      if (col0 + c < d.nl) out[orow * d.nl + col0 + c] = from_f32<T>(acc[c] * inv);
    if (part == 0) lse[(b * d.H + h) * d.Tq + tq] = row_lse;
    return;
  }
  float* po = part_o + (w.prow0 + gr) * d.nl;
  for (int c = 0; c < kCols; ++c)
    if (col0 + c < d.nl) po[col0 + c] = acc[c] * inv;
  if (part == 0) part_lse[w.prow0 + gr] = row_lse;
}

size_t shared_bytes(const Dims& d) {
  return sizeof(float) * static_cast<size_t>((kRows + kKeys) * d.row + kRows * (kKeys + 1));
}

// Calls f with the kernel whose per-thread column count covers n_latent.
template <typename T, typename F>
void with_kernel(const Dims& d, F&& f) {
  const int64_t per_thread = (d.nl + kLanesPerRow - 1) / kLanesPerRow;
  if (per_thread <= 4) return f(split_kernel<T, 4>);
  if (per_thread <= 8) return f(split_kernel<T, 8>);
  if (per_thread <= 16) return f(split_kernel<T, 16>);
  if (per_thread <= 32) return f(split_kernel<T, 32>);
  return f(split_kernel<T, 64>);
}

}  // namespace

template <typename E>
LaunchInfo cuda_cores_info(const Dims& d) {
  LaunchInfo info{kRows, kThreads, shared_bytes(d), 0};
  with_kernel<E>(d, [&](auto kernel) {
    allow_shared(kernel, info.shared_bytes, "latent decode");
    info.blocks_per_sm = max_blocks_per_sm(kernel, kThreads, info.shared_bytes);
  });
  return info;
}

template <typename E>
void launch_cuda_cores(const Dims& d, float scale, const Args<E>& a) {
  const size_t shared = shared_bytes(d);
  with_kernel<E>(d, [&](auto kernel) {
    allow_shared(kernel, shared, "latent decode");
    launch_kernel("latent decode", kernel, grid_of(d, a.split, kRows), kThreads, shared, nullptr, d, scale, a.split,
                  a.q, a.cache, a.block_table, a.seq_lens, a.out, a.lse, a.part_o, a.part_lse);
  });
}

template LaunchInfo cuda_cores_info<float>(const Dims&);
template LaunchInfo cuda_cores_info<__nv_bfloat16>(const Dims&);
template void launch_cuda_cores<float>(const Dims&, float, const Args<float>&);
template void launch_cuda_cores<__nv_bfloat16>(const Dims&, float, const Args<__nv_bfloat16>&);

}  // namespace latent_decode
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
