// The bf16 flash-attention backward on tensor cores (WMMA), FlashAttention-2's algorithm with the
// same tiles as the forward (attention_flash_bf16.cu). P is recomputed from the forward's lse, so
// no T×T matrix exists; all products run on bf16 tiles with fp32 accumulators.
//   D = rowsum(dO ∘ O) per query row (fp32)
//   dQ kernel: a block holds 64 queries (4 warps × 16) and their dO; per key tile of 32 each warp
//     computes S = Q Kᵀ and dP = dO Vᵀ, forms dS = P ∘ (dP − D) · scale in shared memory (bf16)
//     and adds dS K into its dQ fragments.
//   dK/dV kernel: a block holds 64 keys and their values; per query tile of 32 (over every query
//     head of the key's GQA group) each warp computes Sᵀ = K Qᵀ and dPᵀ = V dOᵀ, forms Pᵀ and
//     dSᵀ and adds Pᵀ dO into dV and dSᵀ Q into dK.
// Every block owns its output rows, so gradients are written once, in bf16, with no atomics.
#include <string>

#include "cuda/attention_bf16_common.h"
#include "cuda/device_math.h"
#include "cuda/platform.h"
#include "flashgpt/cuda/attention_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

using namespace bf16_attention;

constexpr int kWarps = 4;
constexpr int kBlockRows = 16 * kWarps;  // queries (dQ) or keys (dK/dV) per block
constexpr int kTile = 32;                // keys (dQ) or queries (dK/dV) per streamed tile

__global__ void rowdot_bf16_kernel(Dims d, const __nv_bfloat16* __restrict__ o, const __nv_bfloat16* __restrict__ dout,
                                   float* __restrict__ D) {
  const int64_t n = d.B * d.Hq * d.Tq;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx % d.Tq, h = (idx / d.Tq) % d.Hq, b = idx / (d.Tq * d.Hq);
    const int64_t off = (b * d.Tq + i) * d.Hq * d.D + h * d.D;
    float s = 0.0f;
    for (int64_t c = 0; c < d.D; ++c) s += __bfloat162float(o[off + c]) * __bfloat162float(dout[off + c]);
    D[idx] = s;
  }
}

// C (16 × 32, fp32, ld 32) = A (16 × D rows, ld D) · Bᵀ where B is 32 rows of D (ld D).
template <int D>
__device__ __forceinline__ void product_abt(float* c, const __nv_bfloat16* a, const __nv_bfloat16* b) {
  for (int n = 0; n < kTile / 16; ++n) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int kk = 0; kk < D / 16; ++kk) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
      wmma::load_matrix_sync(fa, a + kk * 16, D);
      wmma::load_matrix_sync(fb, b + n * 16 * D + kk * 16, D);
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(c + n * 16, acc, kTile, wmma::mem_row_major);
  }
}

// acc[n] (16 × 16 blocks of a 16 × D result) += A (16 × 32 bf16, ld 32) · B (32 rows of D, ld D).
template <int D>
__device__ __forceinline__ void accumulate_ab(wmma::fragment<wmma::accumulator, 16, 16, 16, float>* acc,
                                              const __nv_bfloat16* a, const __nv_bfloat16* b) {
  for (int n = 0; n < D / 16; ++n) {
    for (int kk = 0; kk < kTile / 16; ++kk) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
      wmma::load_matrix_sync(fa, a + kk * 16, kTile);
      wmma::load_matrix_sync(fb, b + kk * 16 * D + n * 16, D);
      wmma::mma_sync(acc[n], fa, fb, acc[n]);
    }
  }
}

// Writes a warp's 16 × D fp32 result (through shared staging) as bf16 rows first … of dst.
template <int D>
__device__ __forceinline__ void write_rows(const wmma::fragment<wmma::accumulator, 16, 16, 16, float>* acc,
                                           float* staging, __nv_bfloat16* __restrict__ dst, int64_t row_stride,
                                           int64_t first, int64_t valid, int lane) {
  for (int n = 0; n < D / 16; ++n) wmma::store_matrix_sync(staging + n * 16, acc[n], D, wmma::mem_row_major);
  __syncwarp();
  for (int idx = lane; idx < 16 * D; idx += 32) {
    const int r = idx / D, c = idx % D;
    if (first + r < valid) dst[(first + r) * row_stride + c] = __float2bfloat16(staging[idx]);
  }
  __syncwarp();
}

template <int D>
struct DqShared {  // element offsets into the dynamic shared memory, all multiples of 32 bytes
  static constexpr int q = 0;                                  // bf16 [64][D]
  static constexpr int dout = q + kBlockRows * D * 2;          // bf16 [64][D]
  static constexpr int k = dout + kBlockRows * D * 2;          // bf16 [32][D]
  static constexpr int v = k + kTile * D * 2;                  // bf16 [32][D]
  static constexpr int s = v + kTile * D * 2;                  // fp32 [4][16][32]
  static constexpr int dp = s + kWarps * 16 * kTile * 4;      // fp32 [4][16][32]
  static constexpr int ds = dp + kWarps * 16 * kTile * 4;      // bf16 [4][16][32]
  static constexpr int bytes = ds + kWarps * 16 * kTile * 2;
  static constexpr int staging = k;  // fp32 [4][16][D] at the end, over k, v, s and dp
  static_assert(staging + kWarps * 16 * D * 4 <= ds, "dQ staging must fit before ds");
};

template <int D>
__global__ void __launch_bounds__(32 * kWarps)
    dq_bf16_kernel(Dims d, Mask m, float scale, const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
                   const __nv_bfloat16* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ Dsum,
                   const __nv_bfloat16* __restrict__ dout, __nv_bfloat16* __restrict__ dq) {
  using S = DqShared<D>;
  FLASHGPT_DYNAMIC_SHARED(unsigned char, raw);
  auto* Qs = reinterpret_cast<__nv_bfloat16*>(raw + S::q);
  auto* dOs = reinterpret_cast<__nv_bfloat16*>(raw + S::dout);
  auto* Ks = reinterpret_cast<__nv_bfloat16*>(raw + S::k);
  auto* Vs = reinterpret_cast<__nv_bfloat16*>(raw + S::v);
  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32;
  float* Sw = reinterpret_cast<float*>(raw + S::s) + warp * 16 * kTile;
  float* dPw = reinterpret_cast<float*>(raw + S::dp) + warp * 16 * kTile;
  auto* dSw = reinterpret_cast<__nv_bfloat16*>(raw + S::ds) + warp * 16 * kTile;

  const int64_t b = blockIdx.z, h = blockIdx.y, i0 = static_cast<int64_t>(blockIdx.x) * kBlockRows;
  const int64_t hk = h / d.group, q_row = d.Hq * D;
  stage<D>(Qs, q + b * d.Tq * q_row + h * D, q_row, i0, d.Tq, kBlockRows);
  stage<D>(dOs, dout + b * d.Tq * q_row + h * D, q_row, i0, d.Tq, kBlockRows);
  // Two lanes per query row, 16 of the tile's columns each.
  const int row = lane / 2, half = lane % 2;
  const int64_t i = i0 + warp * 16 + row;
  const float row_lse = i < d.Tq ? lse[(b * d.Hq + h) * d.Tq + i] : 0.0f;
  const float row_D = i < d.Tq ? Dsum[(b * d.Hq + h) * d.Tq + i] : 0.0f;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[D / 16];
  for (auto& f : acc) wmma::fill_fragment(f, 0.0f);

  int64_t key_end = d.Tk;
  if (m.causal) key_end = min(key_end, m.q_offset + min(i0 + kBlockRows, d.Tq));
  for (int64_t j0 = 0; j0 < key_end; j0 += kTile) {
    __syncthreads();
    stage<D>(Ks, k + b * d.kv_rows * d.k_row + hk * D, d.k_row, j0, d.Tk, kTile);
    stage<D>(Vs, v + b * d.kv_rows * d.v_row + hk * D, d.v_row, j0, d.Tk, kTile);
    __syncthreads();
    product_abt<D>(Sw, Qs + warp * 16 * D, Ks);
    product_abt<D>(dPw, dOs + warp * 16 * D, Vs);
    __syncwarp();
    for (int c = half * 16; c < half * 16 + 16; ++c) {
      const bool vis = visible(d, m, b, i, j0 + c);
      const float p = vis ? __expf(Sw[row * kTile + c] * scale - row_lse) : 0.0f;
      dSw[row * kTile + c] = __float2bfloat16(p * (dPw[row * kTile + c] - row_D) * scale);
    }
    __syncwarp();
    accumulate_ab<D>(acc, dSw, Ks);
  }
  __syncthreads();  // k, v, s and dp become the output staging
  float* staging = reinterpret_cast<float*>(raw + S::staging) + warp * 16 * D;
  write_rows<D>(acc, staging, dq + b * d.Tq * q_row + h * D, q_row, i0 + warp * 16, d.Tq, lane);
}

template <int D>
struct DkvShared {
  static constexpr int k = 0;                                  // bf16 [64][D]
  static constexpr int v = k + kBlockRows * D * 2;             // bf16 [64][D]
  static constexpr int q = v + kBlockRows * D * 2;             // bf16 [32][D]
  static constexpr int dout = q + kTile * D * 2;               // bf16 [32][D]
  static constexpr int st = dout + kTile * D * 2;              // fp32 [4][16][32]
  static constexpr int dpt = st + kWarps * 16 * kTile * 4;     // fp32 [4][16][32]
  static constexpr int pt = dpt + kWarps * 16 * kTile * 4;     // bf16 [4][16][32]
  static constexpr int dst = pt + kWarps * 16 * kTile * 2;     // bf16 [4][16][32]
  static constexpr int lse = dst + kWarps * 16 * kTile * 2;    // fp32 [32]
  static constexpr int dsum = lse + kTile * 4;                 // fp32 [32]
  static constexpr int bytes = dsum + kTile * 4;
  static constexpr int staging = q;  // fp32 [4][16][D] at the end, over q, dout, st and dpt
  static_assert(staging + kWarps * 16 * D * 4 <= pt, "dK/dV staging must fit before pt");
};

template <int D>
__global__ void __launch_bounds__(32 * kWarps)
    dkv_bf16_kernel(Dims d, Mask m, float scale, const __nv_bfloat16* __restrict__ q,
                    const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v,
                    const float* __restrict__ lse, const float* __restrict__ Dsum,
                    const __nv_bfloat16* __restrict__ dout, __nv_bfloat16* __restrict__ dk,
                    __nv_bfloat16* __restrict__ dv) {
  using S = DkvShared<D>;
  FLASHGPT_DYNAMIC_SHARED(unsigned char, raw);
  auto* Ks = reinterpret_cast<__nv_bfloat16*>(raw + S::k);
  auto* Vs = reinterpret_cast<__nv_bfloat16*>(raw + S::v);
  auto* Qs = reinterpret_cast<__nv_bfloat16*>(raw + S::q);
  auto* dOs = reinterpret_cast<__nv_bfloat16*>(raw + S::dout);
  auto* Ls = reinterpret_cast<float*>(raw + S::lse);
  auto* Ds = reinterpret_cast<float*>(raw + S::dsum);
  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32;
  float* STw = reinterpret_cast<float*>(raw + S::st) + warp * 16 * kTile;
  float* dPTw = reinterpret_cast<float*>(raw + S::dpt) + warp * 16 * kTile;
  auto* PTw = reinterpret_cast<__nv_bfloat16*>(raw + S::pt) + warp * 16 * kTile;
  auto* dSTw = reinterpret_cast<__nv_bfloat16*>(raw + S::dst) + warp * 16 * kTile;

  const int64_t b = blockIdx.z, hk = blockIdx.y, j0 = static_cast<int64_t>(blockIdx.x) * kBlockRows;
  const int64_t q_row = d.Hq * D;
  stage<D>(Ks, k + b * d.kv_rows * d.k_row + hk * D, d.k_row, j0, d.Tk, kBlockRows);
  stage<D>(Vs, v + b * d.kv_rows * d.v_row + hk * D, d.v_row, j0, d.Tk, kBlockRows);
  // Two lanes per key row of the warp's 16, 16 of the query tile's columns each.
  const int row = lane / 2, half = lane % 2;
  const int64_t j = j0 + warp * 16 + row;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> dk_acc[D / 16], dv_acc[D / 16];
  for (auto& f : dk_acc) wmma::fill_fragment(f, 0.0f);
  for (auto& f : dv_acc) wmma::fill_fragment(f, 0.0f);
  // The first query that can see key j0 under the causal mask.
  const int64_t i_start = m.causal ? max(int64_t{0}, j0 - m.q_offset) : 0;
  for (int64_t h = hk * d.group; h < (hk + 1) * d.group; ++h) {
    for (int64_t i0 = i_start / kTile * kTile; i0 < d.Tq; i0 += kTile) {
      __syncthreads();
      stage<D>(Qs, q + b * d.Tq * q_row + h * D, q_row, i0, d.Tq, kTile);
      stage<D>(dOs, dout + b * d.Tq * q_row + h * D, q_row, i0, d.Tq, kTile);
      for (int r = tid; r < kTile; r += static_cast<int>(blockDim.x)) {
        const bool in = i0 + r < d.Tq;
        Ls[r] = in ? lse[(b * d.Hq + h) * d.Tq + i0 + r] : 0.0f;
        Ds[r] = in ? Dsum[(b * d.Hq + h) * d.Tq + i0 + r] : 0.0f;
      }
      __syncthreads();
      product_abt<D>(STw, Ks + warp * 16 * D, Qs);
      product_abt<D>(dPTw, Vs + warp * 16 * D, dOs);
      __syncwarp();
      for (int c = half * 16; c < half * 16 + 16; ++c) {
        const bool vis = visible(d, m, b, i0 + c, j);
        const float p = vis ? __expf(STw[row * kTile + c] * scale - Ls[c]) : 0.0f;
        PTw[row * kTile + c] = __float2bfloat16(p);
        dSTw[row * kTile + c] = __float2bfloat16(p * (dPTw[row * kTile + c] - Ds[c]) * scale);
      }
      __syncwarp();
      accumulate_ab<D>(dv_acc, PTw, dOs);
      accumulate_ab<D>(dk_acc, dSTw, Qs);
    }
  }
  __syncthreads();  // q, dout, st and dpt become the output staging
  float* staging = reinterpret_cast<float*>(raw + S::staging) + warp * 16 * D;
  write_rows<D>(dv_acc, staging, dv + b * d.kv_rows * d.v_row + hk * D, d.v_row, j0 + warp * 16, d.Tk, lane);
  write_rows<D>(dk_acc, staging, dk + b * d.kv_rows * d.k_row + hk * D, d.k_row, j0 + warp * 16, d.Tk, lane);
}

template <int D>
void run_backward(const Dims& d, const Mask& m, float scale, const __nv_bfloat16* q, const __nv_bfloat16* k,
                  const __nv_bfloat16* v, const __nv_bfloat16* o, const float* lse, const __nv_bfloat16* dout,
                  __nv_bfloat16* dq, __nv_bfloat16* dk, __nv_bfloat16* dv) {
  DeviceBuffer Dsum(sizeof(float) * static_cast<size_t>(d.B * d.Hq * d.Tq));
  launch_kernel("bf16 flash backward D = rowsum(dO∘O)", rowdot_bf16_kernel, grid_for(d.B * d.Hq * d.Tq, 256), 256, 0,
                nullptr, d, o, dout, Dsum.as<float>());
  allow_shared(dq_bf16_kernel<D>, DqShared<D>::bytes, "bf16 flash backward dQ");
  launch_kernel("bf16 flash backward dQ", dq_bf16_kernel<D>,
                dim3(grid_for(d.Tq, kBlockRows), static_cast<unsigned>(d.Hq), static_cast<unsigned>(d.B)),
                32 * kWarps, DqShared<D>::bytes, nullptr, d, m, scale, q, k, v, lse, Dsum.as<const float>(), dout, dq);
  allow_shared(dkv_bf16_kernel<D>, DkvShared<D>::bytes, "bf16 flash backward dK, dV");
  launch_kernel("bf16 flash backward dK, dV", dkv_bf16_kernel<D>,
                dim3(grid_for(d.Tk, kBlockRows), static_cast<unsigned>(d.Hkv), static_cast<unsigned>(d.B)),
                32 * kWarps, DkvShared<D>::bytes, nullptr, d, m, scale, q, k, v, lse, Dsum.as<const float>(), dout,
                dk, dv);
  synchronize();  // Dsum is freed on return
}

}  // namespace

void flash_backward_bf16(const AttentionDims& ad, const AttentionMask& am, float scale, const uint16_t* q,
                         const uint16_t* k, const uint16_t* v, const uint16_t* o, const float* lse,
                         const uint16_t* dout, uint16_t* dq, uint16_t* dk, uint16_t* dv) {
  check_attention_dims(ad, am);
  FLASHGPT_CUDA_REQUIRE(ad.Dqk == ad.Dv && (ad.Dqk == 64 || ad.Dqk == 128),
                        "bf16 flash backward: head dims 64 and 128 with Dqk = Dv (got " + std::to_string(ad.Dqk) +
                            " and " + std::to_string(ad.Dv) + ")");
  const Dims d = dims_of(ad);
  const Mask m = mask_of(am);
  auto bf = [](const uint16_t* p) { return reinterpret_cast<const __nv_bfloat16*>(p); };
  auto bfw = [](uint16_t* p) { return reinterpret_cast<__nv_bfloat16*>(p); };
  if (d.D == 64) {
    run_backward<64>(d, m, scale, bf(q), bf(k), bf(v), bf(o), lse, bf(dout), bfw(dq), bfw(dk), bfw(dv));
  } else {
    run_backward<128>(d, m, scale, bf(q), bf(k), bf(v), bf(o), lse, bf(dout), bfw(dq), bfw(dk), bfw(dv));
  }
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
