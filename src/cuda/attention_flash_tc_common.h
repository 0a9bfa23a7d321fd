// What the tensor-core flash kernels share (attention_flash_tc_*.{h,cu}): their sizes and mask in
// device form, the visibility test of one (query, key) pair, the asynchronous tile loader, and
// the per-head-dim launchers each instantiation file defines.
//
// Shared-memory tiles are row-major with 8 elements (16 bytes) of padding per row, so the eight
// row addresses of an ldmatrix fall in different banks.
#pragma once

#include <array>
#include <cstdint>

#include "cuda/attention_mask_cuda.h"
#include "cuda/cta_trace.h"
#include "cuda/platform.h"
#include "cuda/tensor_core.h"
#include "cuda/warpgroup.h"
#include "flashgpt/attention/attention.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace flash_tc {

struct Dims {
  int64_t B, Hq, Hkv, Tq, Tk, kv_rows, q_row, k_row, v_row, group;  // q_row: q's and dq's
  CtaSpan* trace = nullptr;  // where each block records its span, while a CtaTrace records (cta_trace.h)
};

// d, with the trace slots of one launch of `kernel` over `grid` when a CtaTrace records.
inline Dims traced(const Dims& d, const char* kernel, dim3 grid) {
  Dims t = d;
  t.trace = cta_trace_slots(kernel, static_cast<int64_t>(grid.x) * grid.y * grid.z, nullptr);
  return t;
}

// The emulator checks that the trace points at device memory (simt::check_kernel_pointers).
inline std::array<const void*, 1> kernel_pointers(const Dims& d) { return {d.trace}; }

using attention_kernels::Mask;
using attention_kernels::causal_offset;
using attention_kernels::mask_of;

inline Dims dims_of(const AttentionDims& a) {
  return {a.B, a.Hq, a.Hkv, a.Tq, a.Tk, a.kv_rows(), a.q_row(), a.k_row(), a.v_row(), a.Hq / a.Hkv, nullptr};
}

constexpr int kPad = 8;  // elements of padding per shared-memory row
constexpr float kLog2e = 1.4426950408889634f;

// The mask's rule, with queries and keys past the ends of a tile invisible too.
__device__ __forceinline__ bool visible(const Dims& d, const Mask& m, int64_t b, int64_t i, int64_t j) {
  return i < d.Tq && j < d.Tk && attention_kernels::visible(m, d.Tq, d.kv_rows, b, i, j);
}

// The keys batch row b can see at all: those before its padding length (Tk without padding).
__device__ __forceinline__ int64_t key_limit_of(const Dims& d, const Mask& m, int64_t b) {
  int64_t limit = d.Tk;
  if (m.kv_lengths) limit = min(limit, static_cast<int64_t>(m.kv_lengths[b]));
  return limit;
}

// The key tiles of BlockN a block of BlockM queries from i0 walks: up to its last visible key
// (padding, and the causal diagonal of its last query). Tiles past it are never loaded.
template <int BlockM, int BlockN>
__device__ __forceinline__ int key_tiles_of(const Dims& d, const Mask& m, int64_t b, int64_t i0, int64_t key_limit) {
  int64_t key_end = key_limit;
  if (m.causal) key_end = min(key_end, causal_offset(m, b) + min(i0 + BlockM, d.Tq));
  return key_end > 0 ? static_cast<int>((key_end + BlockN - 1) / BlockN) : 0;
}

// Queues the copy of rows [first, first + Rows) of a [·, stride] tensor (D elements each, from
// src) into shared [Rows][D + kPad]; rows at or past `valid` are zero-filled. The caller commits.
template <int D, int Rows, int Threads, typename E>
__device__ __forceinline__ void load_rows(E* dst, const E* src, int64_t stride, int64_t first, int64_t valid) {
  constexpr int kChunks = D / 8;  // 16-byte pieces per row
  for (int idx = static_cast<int>(threadIdx.x); idx < Rows * kChunks; idx += Threads) {
    const int r = idx / kChunks, c = idx % kChunks;
    const bool ok = first + r < valid;
    tc::cp_async_16(dst + r * (D + kPad) + c * 8, ok ? src + (first + r) * stride + c * 8 : src, ok);
  }
}

// The tile loops' double buffering, one block barrier a tile. queue(j) issues tile j's cp.async
// copies (and any plain shared stores of its own) into stage j & 1; every copy issued before
// stream_begin (Q, K, V) is waited for with tile 0.
//   stream_begin(n, queue): tiles 0 and 1 in flight; returns with tile 0 landed and visible.
//   stream_advance(j, n, queue): after the block's last read of tile j's stage (and after any
//     shared stores the whole block must see): waits for tile j + 1 (the only copies in flight),
//     passes the barrier, which makes them visible and shows that no warp reads stage j & 1
//     any more, then queues tile j + 2 into it. Tile j + 2 thus has all of tile j + 1's work
//     to land in, and a warp never waits at a second barrier a tile for the others to finish
//     reading. Block-uniform: every thread calls both with the same n and j.
// ForWgmma: the tiles are read by wgmma (the async proxy), so each thread fences its landed copies
// over to it before the barrier.
template <bool ForWgmma = false, typename Queue>
__device__ __forceinline__ void stream_begin(int64_t n, Queue&& queue) {
  if (n > 0) queue(int64_t{0});
  tc::cp_async_commit();
  if (n > 1) queue(int64_t{1});
  tc::cp_async_commit();
  tc::cp_async_wait<1>();
  if constexpr (ForWgmma) wg::fence_proxy_async();
  __syncthreads();
}

template <bool ForWgmma = false, typename Queue>
__device__ __forceinline__ void stream_advance(int64_t j, int64_t n, Queue&& queue) {
  tc::cp_async_wait<0>();
  if constexpr (ForWgmma) wg::fence_proxy_async();
  __syncthreads();
  if (j + 2 < n) queue(j + 2);
  tc::cp_async_commit();
}

// A 16 × 16 A-operand fragment from row-major shared rows [row0, row0 + 16), columns
// [col0, col0 + 16) (ld elements per row).
template <typename E>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const E* s, int ld, int row0, int col0) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  tc::ldmatrix_x4(a, s + (row0 + (lane & 15)) * ld + col0 + (lane >> 4) * 8);
}

// The A operand of a product whose A is stored transposed: A[r][c] = s[col0 + c][row0 + r].
template <typename E>
__device__ __forceinline__ void load_a_transposed(uint32_t (&a)[4], const E* s, int ld, int row0, int col0) {
  const int lane = static_cast<int>(threadIdx.x) % 32, mtx = lane >> 3;
  tc::ldmatrix_x4_trans(a, s + (col0 + (mtx >> 1) * 8 + (lane & 7)) * ld + row0 + (mtx & 1) * 8);
}

// B operands of two adjacent n-tiles (n0 … n0 + 15) for k rows k0 … k0 + 15, where B[k][n] =
// s[n][k] (the rows of s are B's columns, as K's rows are Kᵀ's): b[0..1] n-tile 0, b[2..3] n-tile 1.
template <typename E>
__device__ __forceinline__ void load_b_from_rows(uint32_t (&b)[4], const E* s, int ld, int n0, int k0) {
  const int lane = static_cast<int>(threadIdx.x) % 32, mtx = lane >> 3;
  tc::ldmatrix_x4(b, s + (n0 + (mtx >> 1) * 8 + (lane & 7)) * ld + k0 + (mtx & 1) * 8);
}

// The same where B[k][n] = s[k][n] (B stored k-major, as V is for P·V).
template <typename E>
__device__ __forceinline__ void load_b_from_cols(uint32_t (&b)[4], const E* s, int ld, int n0, int k0) {
  const int lane = static_cast<int>(threadIdx.x) % 32, mtx = lane >> 3;
  tc::ldmatrix_x4_trans(b, s + (k0 + (mtx & 1) * 8 + (lane & 7)) * ld + n0 + (mtx >> 1) * 8);
}

// acc[n0/8], acc[n0/8 + 1] += A · (the two n-tiles of b).
template <typename E>
__device__ __forceinline__ void mma_pair(float (&c0)[4], float (&c1)[4], const uint32_t (&a)[4], const uint32_t (&b)[4]) {
  const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
  tc::mma_16816<E>(c0, a, b0);
  tc::mma_16816<E>(c1, a, b1);
}

// The A operand for k columns kk·16 … kk·16 + 15 from accumulators laid out as C (16 × 8 per
// n-tile): the FlashAttention-2 register reuse of P (or dS) as the next product's left operand.
template <typename E, int N>
__device__ __forceinline__ void accumulators_as_a(uint32_t (&a)[4], const float (&c)[N][4], int kk) {
  a[0] = tc::pack2<E>(c[2 * kk][0], c[2 * kk][1]);
  a[1] = tc::pack2<E>(c[2 * kk][2], c[2 * kk][3]);
  a[2] = tc::pack2<E>(c[2 * kk + 1][0], c[2 * kk + 1][1]);
  a[3] = tc::pack2<E>(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

// The warp's two kinds of tile product over M row tiles of 16 rows each, fp32 accumulators
// c[M][N / 8][4] (M > 1: every fragment of Y is read from shared memory once for all M tiles):
//   rows_times_rows: c[mt] += X[x_row0 + 16·mt … + 15][0 … K) · Yᵀ, Y's rows [0, N) — S = Q Kᵀ,
//   dP = dO Vᵀ (and Sᵀ = K Qᵀ, dPᵀ = V dOᵀ in the key-major backward);
//   accumulators_times_rows: c[mt] += A[mt] · Y, A[mt] = the accumulators acc[mt] (16 × K, the
//   previous product's result reused as the left operand) and Y's rows [0, K) — O += P V,
//   dQ += dS K, dV += Pᵀ dO.
template <typename E, int K, int N, int M>
__device__ __forceinline__ void rows_times_rows(float (&c)[M][N / 8][4], const E* X, int xs, int x_row0, const E* Y,
                                                int ys) {
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    uint32_t a[M][4];
#pragma unroll
    for (int mt = 0; mt < M; ++mt) load_a(a[mt], X, xs, x_row0 + 16 * mt, kk * 16);
#pragma unroll
    for (int n = 0; n < N / 16; ++n) {
      uint32_t b[4];
      load_b_from_rows(b, Y, ys, n * 16, kk * 16);
#pragma unroll
      for (int mt = 0; mt < M; ++mt) mma_pair<E>(c[mt][2 * n], c[mt][2 * n + 1], a[mt], b);
    }
  }
}

template <typename E, int K, int N, int M>
__device__ __forceinline__ void accumulators_times_rows(float (&c)[M][N / 8][4], const float (&acc)[M][K / 8][4],
                                                        const E* Y, int ys) {
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    uint32_t a[M][4];
#pragma unroll
    for (int mt = 0; mt < M; ++mt) accumulators_as_a<E>(a[mt], acc[mt], kk);
#pragma unroll
    for (int n = 0; n < N / 16; ++n) {
      uint32_t b[4];
      load_b_from_cols(b, Y, ys, n * 16, kk * 16);
#pragma unroll
      for (int mt = 0; mt < M; ++mt) mma_pair<E>(c[mt][2 * n], c[mt][2 * n + 1], a[mt], b);
    }
  }
}

// The same for one row tile (c[N / 8][4]), as the backward kernels use them.
template <typename E, int K, int N>
__device__ __forceinline__ void rows_times_rows(float (&c)[N / 8][4], const E* X, int xs, int x_row0, const E* Y,
                                                int ys) {
  rows_times_rows<E, K, N, 1>(reinterpret_cast<float (&)[1][N / 8][4]>(c), X, xs, x_row0, Y, ys);
}

template <typename E, int K, int N>
__device__ __forceinline__ void accumulators_times_rows(float (&c)[N / 8][4], const float (&acc)[K / 8][4],
                                                        const E* Y, int ys) {
  accumulators_times_rows<E, K, N, 1>(reinterpret_cast<float (&)[1][N / 8][4]>(c),
                                      reinterpret_cast<const float (&)[1][K / 8][4]>(acc), Y, ys);
}

// The max and the sum over the four lanes of a quad (lanes 4g … 4g + 3), which hold one row of
// an mma accumulator between them; every lane of the warp must call them together.
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Stores two elements as one 32-bit word.
template <typename E>
__device__ __forceinline__ void store2(E* p, float a, float b) {
  *reinterpret_cast<uint32_t*>(p) = tc::pack2<E>(a, b);
}

// The backward's last step: a lane's dK and dV rows key0 and key0 + 8 (key/value head hk of
// sequence b) from accumulators in the mma C layout (t = lane % 4); rows at or past Tk are left alone.
template <typename E, int Dqk, int Dv>
__device__ __forceinline__ void write_key_gradients(const Dims& d, int64_t b, int64_t hk, int64_t key0, int t,
                                                    const float (&acc_dk)[Dqk / 8][4], const float (&acc_dv)[Dv / 8][4],
                                                    E* dk, E* dv) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t j = key0 + r * 8;
    if (j >= d.Tk) continue;
    E* dk_row = dk + (b * d.kv_rows + j) * d.k_row + hk * Dqk;
    E* dv_row = dv + (b * d.kv_rows + j) * d.v_row + hk * Dv;
#pragma unroll
    for (int n = 0; n < Dqk / 8; ++n) store2(dk_row + n * 8 + 2 * t, acc_dk[n][2 * r], acc_dk[n][2 * r + 1]);
#pragma unroll
    for (int n = 0; n < Dv / 8; ++n) store2(dv_row + n * 8 + 2 * t, acc_dv[n][2 * r], acc_dv[n][2 * r + 1]);
  }
}

// The launchers, one explicit instantiation per (element, Dqk, Dv) in attention_flash_tc_d*.cu.
// Wide: the tiles for GPUs with ≥ 160 KiB of shared memory per block (A100, H100, H200); narrow:
// those that fit 99 KiB (sm_86, sm_89); for value head dims up to 64 the forward also has tall
// tiles (ForwardShape) and the backward short ones (BackwardShape). *_bytes give the shared memory
// each needs.
// A kernel's threads per block and how many of its blocks one SM holds at once.
struct Residency {
  int threads = 0, blocks_per_sm = 0;
};

// The forward's tiles: narrow, wide, tall (FlashTiles::Tall), or Hopper's warpgroup MMA
// (FlashTiles::Wgmma; WgmmaTma loading through the TMA; WgmmaWs warp-specialized, and
// WgmmaWsNoPingPong the same without the turns), where the head dims have them.
enum class ForwardShape { Narrow, Wide, Tall, Wgmma, WgmmaTma, WgmmaWs, WgmmaWsNoPingPong };
// The backward's: narrow, wide, short (FlashTiles::Short) or Hopper's warpgroup MMA
// (FlashTiles::Wgmma and WgmmaTma; WgmmaWs warp-specialized, for both WgmmaWs tiles), where the
// head dims have them.
enum class BackwardShape { Narrow, Wide, Short, Wgmma, WgmmaWs };

// The registers a block of `threads` holds under launch bounds of one block an SM: ptxas gives each
// thread 65536 / threads rounded down to a multiple of 8, at most 256 (setmaxnreg moves registers
// between warpgroups within this pool, never beyond it).
constexpr int register_pool(int threads) {
  const int each = 65536 / threads / 8 * 8;
  return (each < 256 ? each : 256) * threads;
}

// Whether tiles F are warp-specialized (a producer warpgroup fills the stages), and whether they
// load through Hopper's TMA: the tiles' own flags, false for tiles without them.
template <typename F>
constexpr bool has_producer = requires { requires F::kProducer; };
template <typename F>
constexpr bool uses_tma = requires { requires F::kTma; };

template <typename E, int Dqk, int Dv>
struct Launchers {
  static bool has_tall_forward();
  static bool has_wgmma_forward();
  static bool has_short_backward();
  static bool has_wgmma_backward();
  static size_t forward_bytes(ForwardShape shape);
  static size_t backward_bytes(BackwardShape shape);
  static Residency forward_residency(ForwardShape shape);
  static Residency backward_residency(BackwardShape shape);
  static void forward(const Dims& d, const Mask& m, float scale, const E* q, const E* k, const E* v, E* o,
                      float* lse, ForwardShape shape);
  // dq_accum (fp32, dq's layout) must hold zeros; dsum = rowsum(dO ∘ O) per (b, h, i). A null
  // dq_accum computes dK and dV only.
  static void backward(const Dims& d, const Mask& m, float scale, const E* q, const E* k, const E* v,
                       const float* lse, const float* dsum, const E* dout, float* dq_accum, E* dk, E* dv,
                       BackwardShape shape);
  // The deterministic backward's dQ, query-major and without atomics.
  static size_t backward_dq_bytes(bool wide);
  static void backward_dq(const Dims& d, const Mask& m, float scale, const E* q, const E* k, const E* v,
                          const float* lse, const float* dsum, const E* dout, E* dq, bool wide);
};

}  // namespace flash_tc
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
