// The paged latent decode (see latent_decode_cuda.h). First version, on the CUDA cores and
// correct before fast:
//   split kernel — a block of 128 threads holds 16 query rows (head × new token) of one sequence
//   in shared memory and streams one split of that sequence's cache through it, 16 keys a tile,
//   gathering rows through the block table. Eight threads share a query row: each computes two of
//   the tile's sixteen scores (a whole-row dot product), the row's scores meet in shared memory,
//   and each of the eight keeps the online softmax state and an eighth of the row's output
//   columns in registers. A split writes its normalised output and log-sum-exp.
//   combine kernel — per query row, weights each split by e^{lse_s − lse} and sums.
// The cache is read once per 16 query rows; holding more heads per block (FlashMLA holds 64 on
// the tensor cores) is the next step, measured against the copy bandwidth on a GPU.
#include <algorithm>
#include <memory>
#include <string>

#include "cuda/device_math.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/latent_decode_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

constexpr int kRows = 16;              // query rows per block
constexpr int kKeys = 16;              // keys per tile
constexpr int kLanesPerRow = 8;        // threads sharing a query row
constexpr int kThreads = kRows * kLanesPerRow;
constexpr int kMaxLatent = 512;

struct Dims {
  int64_t B, H, Tq, nl, row, page, max_pages;
};

// Rows of the group are (token, head) pairs flattened as token·H + head.
// kCols: output columns per thread (n_latent / 8 rounded up to a power of two).
template <typename T, int kCols>
__global__ void __launch_bounds__(kThreads)
    split_kernel(Dims d, float scale, const T* __restrict__ q, const T* __restrict__ cache,
                 const int32_t* __restrict__ block_table, const int32_t* __restrict__ seq_lens, int splits,
                 T* __restrict__ out, float* __restrict__ lse, float* __restrict__ part_o,
                 float* __restrict__ part_lse) {
  FLASHGPT_DYNAMIC_SHARED(float, sm);
  float* Qs = sm;                    // [kRows][row]
  float* Ks = Qs + kRows * d.row;    // [kKeys][row]
  float* Ss = Ks + kKeys * d.row;    // [kRows][kKeys + 1]
  const int split = static_cast<int>(blockIdx.x), group = static_cast<int>(blockIdx.y);
  const int64_t b = blockIdx.z;
  const int t = static_cast<int>(threadIdx.x), r = t / kLanesPerRow, part = t % kLanesPerRow;
  const int64_t rows = d.Tq * d.H, gr = static_cast<int64_t>(group) * kRows + r;
  const bool valid = gr < rows;
  const int64_t tq = gr / d.H, h = gr % d.H;

  const int64_t len = seq_lens[b];
  const int64_t pages = (len + d.page - 1) / d.page;
  const int64_t per = (pages + splits - 1) / splits;
  const int64_t k0 = min(len, split * per * d.page), k1 = min(len, (split + 1) * per * d.page);
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
  if (splits == 1) {
    for (int c = 0; c < kCols; ++c)
      if (col0 + c < d.nl) out[orow * d.nl + col0 + c] = from_f32<T>(acc[c] * inv);
    if (part == 0) lse[(b * d.H + h) * d.Tq + tq] = row_lse;
    return;
  }
  float* po = part_o + (static_cast<int64_t>(split) * d.B * rows + orow) * d.nl;
  for (int c = 0; c < kCols; ++c)
    if (col0 + c < d.nl) po[col0 + c] = acc[c] * inv;
  if (part == 0) part_lse[static_cast<int64_t>(split) * d.B * rows + orow] = row_lse;
}

// One block per query row: merges the splits' outputs by their log-sum-exp.
template <typename T>
__global__ void combine_kernel(Dims d, int splits, const float* __restrict__ part_o,
                               const float* __restrict__ part_lse, T* __restrict__ out, float* __restrict__ lse) {
  const int64_t rows = d.B * d.Tq * d.H;
  const int64_t orow = blockIdx.x;  // [B, Tq, H]
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, part_lse[s * rows + orow]);
  float total = 0.0f;
  if (mx != -INFINITY)
    for (int s = 0; s < splits; ++s) total += expf(part_lse[s * rows + orow] - mx);
  const float row_lse = mx == -INFINITY ? -INFINITY : mx + logf(total);
  for (int64_t c = threadIdx.x; c < d.nl; c += blockDim.x) {
    float o = 0.0f;
    if (mx != -INFINITY) {
      for (int s = 0; s < splits; ++s) {
        const float w = expf(part_lse[s * rows + orow] - row_lse);  // 0 for an empty split
        if (w > 0.0f) o += w * part_o[(s * rows + orow) * d.nl + c];
      }
    }
    out[orow * d.nl + c] = from_f32<T>(o);
  }
  if (threadIdx.x == 0) {
    const int64_t h = orow % d.H, tq = (orow / d.H) % d.Tq, b = orow / (d.H * d.Tq);
    lse[(b * d.H + h) * d.Tq + tq] = row_lse;
  }
}

template <typename T, int kCols>
void run(const Dims& d, float scale, const T* q, const T* cache, const int32_t* table, const int32_t* lens, T* out,
         float* lse, int splits) {
  const int64_t rows = d.Tq * d.H;
  const size_t shared = sizeof(float) * static_cast<size_t>((kRows + kKeys) * d.row + kRows * (kKeys + 1));
  auto kernel = split_kernel<T, kCols>;
  allow_shared(kernel, shared, "latent decode");
  std::unique_ptr<DeviceBuffer> part_o, part_lse;
  if (splits > 1) {
    part_o = std::make_unique<DeviceBuffer>(sizeof(float) * static_cast<size_t>(splits * d.B * rows * d.nl));
    part_lse = std::make_unique<DeviceBuffer>(sizeof(float) * static_cast<size_t>(splits * d.B * rows));
  }
  const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>((rows + kRows - 1) / kRows),
                  static_cast<unsigned>(d.B));
  launch_kernel("latent decode", kernel, grid, kThreads, shared, nullptr, d, scale, q, cache, table, lens, splits, out,
                lse, part_o ? part_o->as<float>() : nullptr, part_lse ? part_lse->as<float>() : nullptr);
  if (splits > 1) {
    launch_kernel("latent decode combine", combine_kernel<T>, static_cast<unsigned>(d.B * rows), 128, 0, nullptr, d,
                  splits, part_o->as<const float>(), part_lse->as<const float>(), out, lse);
    synchronize();  // the partial buffers are freed on return
  }
}

}  // namespace

template <typename T>
void latent_decode_paged(const PagedLatentDims& pd, float scale, const T* q_abs, const T* cache,
                         const int32_t* block_table, const int32_t* seq_lens, T* out, float* lse, int splits) {
  FLASHGPT_CUDA_REQUIRE(pd.B > 0 && pd.H > 0 && pd.Tq > 0 && pd.page_size > 0 && pd.max_pages > 0,
                        "latent decode: B, H, Tq, page_size and max_pages must be positive");
  FLASHGPT_CUDA_REQUIRE(pd.n_latent > 0 && pd.n_latent <= kMaxLatent && pd.rope_dim >= 0,
                        "latent decode: n_latent must be 1…" + std::to_string(kMaxLatent) + " (got " +
                            std::to_string(pd.n_latent) + ") and rope_dim not negative");
  FLASHGPT_CUDA_REQUIRE(pd.B <= 65535, "latent decode: at most 65535 sequences per call");
  const Dims d{pd.B, pd.H, pd.Tq, pd.n_latent, pd.row(), pd.page_size, pd.max_pages};
  if (splits <= 0) {
    // Enough blocks to fill the GPU twice over, each split at least one page.
    int device = 0, sms = 0;
    FLASHGPT_CUDA_CHECK(cudaGetDevice(&device));
    FLASHGPT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    const int64_t blocks = pd.B * ((pd.Tq * pd.H + kRows - 1) / kRows);
    splits = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(pd.max_pages, (2 * sms + blocks - 1) / blocks)));
  }
  FLASHGPT_CUDA_REQUIRE(splits <= 65535, "latent decode: too many splits");
  auto* q = dev(q_abs);
  auto* c = dev(cache);
  auto* o = dev(out);
  using D = device_t<T>;
  const int64_t per_thread = (pd.n_latent + kLanesPerRow - 1) / kLanesPerRow;
  if (per_thread <= 4) {
    run<D, 4>(d, scale, q, c, block_table, seq_lens, o, lse, splits);
  } else if (per_thread <= 8) {
    run<D, 8>(d, scale, q, c, block_table, seq_lens, o, lse, splits);
  } else if (per_thread <= 16) {
    run<D, 16>(d, scale, q, c, block_table, seq_lens, o, lse, splits);
  } else if (per_thread <= 32) {
    run<D, 32>(d, scale, q, c, block_table, seq_lens, o, lse, splits);
  } else {
    run<D, 64>(d, scale, q, c, block_table, seq_lens, o, lse, splits);
  }
}

template void latent_decode_paged<float>(const PagedLatentDims&, float, const float*, const float*, const int32_t*,
                                         const int32_t*, float*, float*, int);
template void latent_decode_paged<bf16>(const PagedLatentDims&, float, const bf16*, const bf16*, const int32_t*,
                                        const int32_t*, bf16*, float*, int);

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
