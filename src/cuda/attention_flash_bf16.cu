// The bf16 flash-attention forward on tensor cores (WMMA), FlashAttention-2's algorithm: a block
// holds 64 queries (4 warps × 16 rows) in shared memory and streams key/value tiles of 32 through
// it. Per tile each warp computes its 16 × 32 scores S = Q Kᵀ on the tensor cores (fp32
// accumulators), runs the online softmax on them in shared memory — two lanes per row, each
// with half the columns, combining through a shuffle — writes P in bf16, rescales its fp32 output
// rows by e^{m−m'} and adds P V on the tensor cores. At the end each row is divided by l and
// written in bf16 with lse = m + log l.
#include <cmath>
#include <cstdint>
#include <string>

#include "cuda/attention_bf16_common.h"
#include "cuda/platform.h"
#include "flashgpt/cuda/attention_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

using namespace bf16_attention;

constexpr int kWarps = 4;
constexpr int kRows = 16 * kWarps;  // queries per block
constexpr int kKeys = 32;           // keys per tile

template <int D>
__global__ void __launch_bounds__(32 * kWarps)
    forward_bf16_kernel(Dims d, Mask m, float scale, const __nv_bfloat16* __restrict__ q,
                        const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v,
                        __nv_bfloat16* __restrict__ o, float* __restrict__ lse) {
  FLASHGPT_DYNAMIC_SHARED(unsigned char, raw);
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(raw);  // [kRows][D]
  __nv_bfloat16* Ks = Qs + kRows * D;                          // [kKeys][D]
  __nv_bfloat16* Vs = Ks + kKeys * D;                          // [kKeys][D]
  __nv_bfloat16* Ps = Vs + kKeys * D;                          // [kWarps][16][kKeys]
  float* Ss = reinterpret_cast<float*>(Ps + kWarps * 16 * kKeys);  // [kWarps][16][kKeys]
  float* Os = Ss + kWarps * 16 * kKeys;                            // [kWarps][16][D]

  const int64_t b = blockIdx.z, h = blockIdx.y, i0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int64_t hk = h / d.group;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t q_row = d.Hq * D;
  stage<D>(Qs, q + b * d.Tq * q_row + h * D, q_row, i0, d.Tq, kRows);
  float* Ow = Os + warp * 16 * D;
  for (int idx = lane; idx < 16 * D; idx += 32) Ow[idx] = 0.0f;
  float* Sw = Ss + warp * 16 * kKeys;
  __nv_bfloat16* Pw = Ps + warp * 16 * kKeys;
  // Two lanes per row: `row` of this warp's 16, columns [half·16, half·16 + 16) of each tile.
  const int row = lane / 2, half = lane % 2;
  const int64_t i = i0 + warp * 16 + row;
  float row_m = -INFINITY, row_l = 0.0f;

  // Keys any query of the block can see end here (the causal limit grows with the row).
  int64_t key_end = d.Tk;
  if (m.causal) key_end = min(key_end, m.q_offset + min(i0 + kRows, d.Tq));
  for (int64_t j0 = 0; j0 < key_end; j0 += kKeys) {
    __syncthreads();
    stage<D>(Ks, k + b * d.kv_rows * d.k_row + hk * D, d.k_row, j0, d.Tk, kKeys);
    stage<D>(Vs, v + b * d.kv_rows * d.v_row + hk * D, d.v_row, j0, d.Tk, kKeys);
    __syncthreads();
    // S = Q_w Kᵀ (16 × kKeys), fp32 accumulators, into shared memory.
    for (int n = 0; n < kKeys / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int kk = 0; kk < D / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;  // Kᵀ
        wmma::load_matrix_sync(fa, Qs + warp * 16 * D + kk * 16, D);
        wmma::load_matrix_sync(fb, Ks + n * 16 * D + kk * 16, D);
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(Sw + n * 16, acc, kKeys, wmma::mem_row_major);
    }
    __syncwarp();
    // Online softmax of this row's half tile; the pair combines max and sum by a shuffle.
    float s[16];
    float mx = -INFINITY;
#pragma unroll
    for (int c = 0; c < 16; ++c) {
      const int col = half * 16 + c;
      s[c] = visible(d, m, b, i, j0 + col) ? Sw[row * kKeys + col] * scale : -INFINITY;
      mx = fmaxf(mx, s[c]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float m_new = fmaxf(row_m, mx);
    float sum = 0.0f, alpha = 1.0f;
    if (m_new != -INFINITY) {
      alpha = row_m == -INFINITY ? 0.0f : __expf(row_m - m_new);
#pragma unroll
      for (int c = 0; c < 16; ++c) {
        const float p = s[c] == -INFINITY ? 0.0f : __expf(s[c] - m_new);
        sum += p;
        Pw[row * kKeys + half * 16 + c] = __float2bfloat16(p);
      }
    } else {
#pragma unroll
      for (int c = 0; c < 16; ++c) Pw[row * kKeys + half * 16 + c] = __float2bfloat16(0.0f);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    row_l = row_l * alpha + sum;
    row_m = m_new;
    for (int c = half * (D / 2); c < (half + 1) * (D / 2); ++c) Ow[row * D + c] *= alpha;
    __syncwarp();
    // O_w += P V on the tensor cores, the accumulator round-tripping through shared memory.
    for (int n = 0; n < D / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, Ow + n * 16, D, wmma::mem_row_major);
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
        wmma::load_matrix_sync(fa, Pw + kk * 16, kKeys);
        wmma::load_matrix_sync(fb, Vs + kk * 16 * D + n * 16, D);
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(Ow + n * 16, acc, D, wmma::mem_row_major);
    }
    __syncwarp();
  }
  if (i >= d.Tq) return;
  __nv_bfloat16* out = o + (b * d.Tq + i) * q_row + h * D;
  const float inv = row_l > 0.0f ? 1.0f / row_l : 0.0f;  // a row that saw no key writes zeros
  for (int c = half * (D / 2); c < (half + 1) * (D / 2); ++c) out[c] = __float2bfloat16(Ow[row * D + c] * inv);
  if (half == 0) lse[(b * d.Hq + h) * d.Tq + i] = row_l > 0.0f ? row_m + logf(row_l) : -INFINITY;
}

template <int D>
void launch(const Dims& d, const Mask& m, float scale, const uint16_t* q, const uint16_t* k, const uint16_t* v,
            uint16_t* o, float* lse) {
  const size_t shared = sizeof(__nv_bfloat16) * (kRows * D + 2 * kKeys * D + kWarps * 16 * kKeys) +
                        sizeof(float) * (kWarps * 16 * kKeys + kWarps * 16 * D);
  allow_shared(forward_bf16_kernel<D>, shared, "bf16 flash forward");
  const dim3 grid(static_cast<unsigned>((d.Tq + kRows - 1) / kRows), static_cast<unsigned>(d.Hq),
                  static_cast<unsigned>(d.B));
  launch_kernel("bf16 flash forward", forward_bf16_kernel<D>, grid, 32 * kWarps, shared, nullptr, d, m, scale,
                reinterpret_cast<const __nv_bfloat16*>(q), reinterpret_cast<const __nv_bfloat16*>(k),
                reinterpret_cast<const __nv_bfloat16*>(v), reinterpret_cast<__nv_bfloat16*>(o), lse);
}

}  // namespace

void flash_forward_bf16(const AttentionDims& ad, const AttentionMask& am, float scale, const uint16_t* q,
                        const uint16_t* k, const uint16_t* v, uint16_t* o, float* lse) {
  check_attention_dims(ad, am);
  FLASHGPT_CUDA_REQUIRE(ad.Dqk == ad.Dv && (ad.Dqk == 64 || ad.Dqk == 128),
                        "bf16 flash forward: head dims 64 and 128 with Dqk = Dv (got " + std::to_string(ad.Dqk) +
                            " and " + std::to_string(ad.Dv) + ")");
  const Dims d = dims_of(ad);
  const Mask m = mask_of(am);
  if (d.D == 64) {
    launch<64>(d, m, scale, q, k, v, o, lse);
  } else {
    launch<128>(d, m, scale, q, k, v, o, lse);
  }
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
