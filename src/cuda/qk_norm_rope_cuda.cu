// QK-norm and RoPE of one layer's query and key heads in one launch, forward and backward (CPU
// twins: the RMSNorm of cpu/norm_cpu.cpp over each head, then cpu/rope_cpu.cpp). One warp per head
// row of the N·(Hq + Hkv) rows: token n's query heads first, then its key heads. Lane l holds the
// row's elements i and i + D/2 for i = l, l + 32, …: the RoPE pair (half-split) sits in one lane.
// Forward: after the warp's sum of squares the lane normalises, scales by its head's weight and
// rotates its pairs in registers and writes each element once, rounded once. Backward: the lane
// rotates its pairs of the output gradient back, and the norm's backward follows from one more
// warp sum, the gradient before RoPE never leaving registers; each lane sums its columns' weight
// gradient terms across its rows, one set per side, and the block adds them up in shared memory and
// then to the fp32 gradients with one atomic per column (the deterministic backward instead leaves
// the weights to the fixed-order column sums of column_sums.h, whose terms rotate the output
// gradient back again). Without RoPE tables the rows are only normalised (QK-norm with learned
// positions).
#include <string>

#include "cuda/column_sums.h"
#include "cuda/device_math.h"
#include "cuda/packed.h"
#include "cuda/rope_pairs.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;

struct Side {
  void* out;
  float* rstd;
  const void* in;
  const void* w;
  int64_t heads, in_ld, out_ld;
};

template <typename T>
__global__ void qk_norm_rope_kernel(Side q, Side k, int64_t N, int64_t D, float eps, const float* __restrict__ cos_t,
                                    const float* __restrict__ sin_t, int64_t Tn, int64_t pos_offset,
                                    const int32_t* __restrict__ seq_pos) {
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const int64_t H = q.heads + k.heads, rows = N * H, half = D / 2;
  for (int64_t row = blockIdx.x * static_cast<int64_t>(kWarps) + warp; row < rows;
       row += static_cast<int64_t>(gridDim.x) * kWarps) {  // the same row for every lane of the warp
    const int64_t n = row / H, h = row % H;
    // Field by field, not a reference to one side: a parameter chosen at run time through a
    // reference would be copied to the stack.
    const bool is_q = h < q.heads;
    const int64_t head = is_q ? h : h - q.heads, heads = is_q ? q.heads : k.heads;
    const T* x = static_cast<const T*>(is_q ? q.in : k.in) + n * (is_q ? q.in_ld : k.in_ld) + head * D;
    const T* w = static_cast<const T*>(is_q ? q.w : k.w);
    T* y = static_cast<T*>(is_q ? q.out : k.out) + n * (is_q ? q.out_ld : k.out_ld) + head * D;
    float* rstd = is_q ? q.rstd : k.rstd;
    float ss = 0.0f;
    for (int64_t i = lane; i < half; i += 32) {
      const float a = to_f32(x[i]), b = to_f32(x[i + half]);
      ss += a * a + b * b;
    }
    const float r = rsqrtf(warp_sum(ss) / static_cast<float>(D) + eps);
    if (lane == 0) rstd[n * heads + head] = r;
    const int64_t pos = cos_t ? rope_position(n, Tn, pos_offset, seq_pos) : 0;
    for (int64_t i = lane; i < half; i += 32) {
      float a = to_f32(x[i]) * r * to_f32(w[i]), b = to_f32(x[i + half]) * r * to_f32(w[i + half]);
      if (cos_t) rotate_pair(a, b, cos_t[pos * half + i], sin_t[pos * half + i]);
      y[i] = from_f32<T>(a);
      y[i + half] = from_f32<T>(b);
    }
  }
}


struct GradSide {
  void* din;
  float* dw;
  const void* dout;
  const void* in;
  const void* w;
  const float* rstd;
  int64_t heads, in_ld, out_ld;
};

// Most RoPE pairs a lane keeps weight-gradient sums for in registers: D ≤ 2·32·kMaxPairsPerLane.
constexpr int kMaxPairsPerLane = 4;

// M: the pairs per lane whose weight-gradient terms the lane sums in registers (half ≤ 32·M), one
// set per side; 0: none (the column sums take them).
template <typename T, int M>
__global__ void qk_norm_rope_backward_kernel(GradSide q, GradSide k, int64_t N, int64_t D,
                                             const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                                             int64_t Tn, int64_t pos_offset, const int32_t* __restrict__ seq_pos) {
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const int64_t H = q.heads + k.heads, rows = N * H, half = D / 2;
  float acc_q[M > 0 ? M : 1][2] = {}, acc_k[M > 0 ? M : 1][2] = {};
  // f(j, i) for each pair i of the lane, j its register slot (M > 0; constant after unrolling).
  auto for_pairs = [&](auto&& f) {
    if constexpr (M > 0) {
#pragma unroll
      for (int j = 0; j < M; ++j) {
        if (lane + 32LL * j < half) f(j, lane + 32LL * j);
      }
    } else {
      for (int64_t i = lane; i < half; i += 32) f(0, i);
    }
  };
  for (int64_t row = blockIdx.x * static_cast<int64_t>(kWarps) + warp; row < rows;
       row += static_cast<int64_t>(gridDim.x) * kWarps) {  // the same row for every lane of the warp
    const int64_t n = row / H, h = row % H;
    const bool is_q = h < q.heads;  // field by field, as in the forward
    const int64_t head = is_q ? h : h - q.heads, heads = is_q ? q.heads : k.heads;
    const int64_t in_at = n * (is_q ? q.in_ld : k.in_ld) + head * D;
    const T* x = static_cast<const T*>(is_q ? q.in : k.in) + in_at;
    T* dx = static_cast<T*>(is_q ? q.din : k.din) + in_at;
    const T* dy = static_cast<const T*>(is_q ? q.dout : k.dout) + n * (is_q ? q.out_ld : k.out_ld) + head * D;
    const T* w = static_cast<const T*>(is_q ? q.w : k.w);
    const float r = (is_q ? q.rstd : k.rstd)[n * heads + head];
    const int64_t pos = cos_t ? rope_position(n, Tn, pos_offset, seq_pos) : 0;
    // The gradient before RoPE at pair i: the output gradient's pair rotated back.
    auto grad = [&](int64_t i, float& g0, float& g1) {
      g0 = to_f32(dy[i]);
      g1 = to_f32(dy[i + half]);
      if (cos_t) rotate_pair(g0, g1, cos_t[pos * half + i], -sin_t[pos * half + i]);
    };
    float s = 0.0f;
    for_pairs([&](int, int64_t i) {
      float g0, g1;
      grad(i, g0, g1);
      s += g0 * to_f32(w[i]) * to_f32(x[i]) + g1 * to_f32(w[i + half]) * to_f32(x[i + half]);
    });
    const float mgx = warp_sum(s) * r / static_cast<float>(D);  // mean of g·w·x̂
    for_pairs([&](int j, int64_t i) {
      float g0, g1;
      grad(i, g0, g1);
      const float x0 = to_f32(x[i]) * r, x1 = to_f32(x[i + half]) * r;
      dx[i] = from_f32<T>(r * (g0 * to_f32(w[i]) - x0 * mgx));
      dx[i + half] = from_f32<T>(r * (g1 * to_f32(w[i + half]) - x1 * mgx));
      if constexpr (M > 0) {
        if (is_q) {
          acc_q[j][0] += g0 * x0;
          acc_q[j][1] += g1 * x1;
        } else {
          acc_k[j][0] += g0 * x0;
          acc_k[j][1] += g1 * x1;
        }
      }
    });
  }
  if constexpr (M > 0) {
    FLASHGPT_DYNAMIC_SHARED(float, sdw);  // the query weight's [D], then the key weight's
    for (int64_t c = threadIdx.x; c < 2 * D; c += blockDim.x) sdw[c] = 0.0f;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < M; ++j) {
      const int64_t i = lane + 32LL * j;
      if (i >= half) continue;
      atomicAdd(sdw + i, acc_q[j][0]);
      atomicAdd(sdw + i + half, acc_q[j][1]);
      atomicAdd(sdw + D + i, acc_k[j][0]);
      atomicAdd(sdw + D + i + half, acc_k[j][1]);
    }
    __syncthreads();
    for (int64_t c = threadIdx.x; c < 2 * D; c += blockDim.x) {
      float* dw = c < D ? q.dw : k.dw;
      if (dw) atomicAdd(dw + (c < D ? c : c - D), sdw[c]);
    }
  }
}

// One row's terms of a side's weight gradient for the fixed-order column sums: g·x̂ for columns
// c0 … c0 + K of head row r (token r / heads, head r % heads), g the output gradient rotated back,
// computed again from dout so that it stays fp32 as in the kernel above. The K columns lie in one
// half of the head (the caller packs only where D/2 is a whole number of packs), their RoPE
// partners K columns D/2 away.
template <typename T>
struct QkWeightTerm {
  const T* dout;
  const T* in;
  const float* rstd;
  int64_t D, heads, in_ld, out_ld;
  const float* cos_t;  // null: no rotation
  const float* sin_t;
  int64_t Tn, pos_offset;
  const int32_t* seq_pos;
  template <int K>
  __device__ void add(int64_t r, int64_t c0, float (&s)[1][K]) const {
    const int64_t n = r / heads, head = r % heads, half = D / 2;
    const T* dy = dout + n * out_ld + head * D;
    const Packed<T, K> d = Packed<T, K>::load(dy + c0), x = Packed<T, K>::load(in + n * in_ld + head * D + c0);
    const float rs = rstd[r];
    if (!cos_t) {
      for (int j = 0; j < K; ++j) s[0][j] += d.get(j) * (x.get(j) * rs);
      return;
    }
    const bool low = c0 < half;  // the pair's first element: g = d·c + e·s; its second: g = d·c − e·s
    const int64_t i0 = low ? c0 : c0 - half;
    const Packed<T, K> e = Packed<T, K>::load(dy + (low ? c0 + half : i0));
    const int64_t pos = rope_position(n, Tn, pos_offset, seq_pos);
    for (int j = 0; j < K; ++j) {
      const float c = cos_t[pos * half + i0 + j], sn = sin_t[pos * half + i0 + j];
      const float g = low ? d.get(j) * c + e.get(j) * sn : d.get(j) * c - e.get(j) * sn;
      s[0][j] += g * (x.get(j) * rs);
    }
  }
};

// The shapes both directions take: D even, each side's heads and token row strides, whole sequences
// for RoPE. `op` names the direction in the errors.
struct SideShape {
  int64_t heads, in_ld, out_ld;
};
void check_shapes(const std::string& op, SideShape q, SideShape k, int64_t N, int64_t D, const RopePositions& rope) {
  FLASHGPT_CUDA_REQUIRE(D > 0 && D % 2 == 0, op + ": head dim " + std::to_string(D) + " must be even and positive");
  for (const SideShape* s : {&q, &k}) {
    const std::string what = op + (s == &q ? ": the query heads' " : ": the key heads' ");
    FLASHGPT_CUDA_REQUIRE(s->heads >= 1, what + "count " + std::to_string(s->heads) + " must be positive");
    FLASHGPT_CUDA_REQUIRE(s->in_ld >= s->heads * D && s->out_ld >= s->heads * D,
                          what + "token row strides " + std::to_string(s->in_ld) + " (in) and " +
                              std::to_string(s->out_ld) + " (out) must be at least heads·D = " +
                              std::to_string(s->heads * D));
  }
  FLASHGPT_CUDA_REQUIRE(!rope.cos == !rope.sin, op + ": RoPE needs both the cos and the sin table");
  FLASHGPT_CUDA_REQUIRE(!rope.cos || (rope.Tn > 0 && N % rope.Tn == 0),
                        op + ": " + std::to_string(N) + " tokens are not whole sequences of " +
                            std::to_string(rope.Tn));
}

}  // namespace

template <typename T>
void qk_norm_rope_forward(const QkHeads<T>& q, const QkHeads<T>& k, int64_t N, int64_t D, float eps,
                          const RopePositions& rope) {
  check_shapes("qk norm", {q.heads, q.in_ld, q.out_ld}, {k.heads, k.in_ld, k.out_ld}, N, D, rope);
  const int64_t rows = N * (q.heads + k.heads);
  if (rows <= 0) return;
  auto side = [](const QkHeads<T>& s) {
    return Side{dev(s.out), s.rstd, dev(s.in), dev(s.w), s.heads, s.in_ld, s.out_ld};
  };
  launch_kernel(rope.cos ? "qk norm and rope" : "qk norm", qk_norm_rope_kernel<device_t<T>>,
                grid_for(rows, kWarps), kThreads, 0, nullptr, side(q), side(k), N, D, eps, rope.cos, rope.sin,
                rope.Tn > 0 ? rope.Tn : 1, rope.pos_offset, rope.seq_pos);
}

template <typename T>
void qk_norm_rope_backward(const QkHeadGrads<T>& q, const QkHeadGrads<T>& k, int64_t N, int64_t D,
                           const RopePositions& rope, bool deterministic) {
  check_shapes("qk norm backward", {q.heads, q.in_ld, q.out_ld}, {k.heads, k.in_ld, k.out_ld}, N, D, rope);
  const int64_t rows = N * (q.heads + k.heads);
  if (rows <= 0) return;
  using E = device_t<T>;
  const char* name = rope.cos ? "qk norm and rope backward" : "qk norm backward";
  const bool grads = q.dw || k.dw;
  const int64_t pairs = (D / 2 + 31) / 32;  // per lane
  const int M = grads && !deterministic && pairs <= kMaxPairsPerLane ? (pairs <= 2 ? static_cast<int>(pairs) : 4) : 0;
  auto side = [](const QkHeadGrads<T>& s) {
    return GradSide{dev(s.din), s.dw, dev(s.dout), dev(s.in), dev(s.w), s.rstd, s.heads, s.in_ld, s.out_ld};
  };
  auto run = [&](auto kernel, size_t shared) {
    const unsigned grid = shared > 0 ? resident_blocks(kernel, kThreads, shared, rows, kWarps) : grid_for(rows, kWarps);
    launch_kernel(name, kernel, grid, kThreads, shared, nullptr, side(q), side(k), N, D, rope.cos, rope.sin,
                  rope.Tn > 0 ? rope.Tn : 1, rope.pos_offset, rope.seq_pos);
  };
  const size_t shared = sizeof(float) * 2 * static_cast<size_t>(D);
  switch (M) {
    case 1: run(qk_norm_rope_backward_kernel<E, 1>, shared); return;
    case 2: run(qk_norm_rope_backward_kernel<E, 2>, shared); return;
    case 4: run(qk_norm_rope_backward_kernel<E, kMaxPairsPerLane>, shared); return;
    default: run(qk_norm_rope_backward_kernel<E, 0>, 0); break;
  }
  // The weights' gradients in a fixed order.
  constexpr int K = static_cast<int>(pack_size<T>());
  for (const QkHeadGrads<T>* s : {&q, &k}) {
    if (!s->dw) continue;
    const bool packed = packable<T>(D / 2, {s->dout, s->in}) && s->in_ld % K == 0 && s->out_ld % K == 0;
    ordered_column_sums<1, K>(name, s->dw, nullptr, N * s->heads, D,
                              QkWeightTerm<E>{dev(s->dout), dev(s->in), s->rstd, D, s->heads, s->in_ld, s->out_ld,
                                              rope.cos, rope.sin, rope.Tn > 0 ? rope.Tn : 1, rope.pos_offset,
                                              rope.seq_pos},
                              packed);
  }
}

#define FLASHGPT_INSTANTIATE(T)                                                                              \
  template void qk_norm_rope_forward<T>(const QkHeads<T>&, const QkHeads<T>&, int64_t, int64_t, float,     \
                                        const RopePositions&);                                               \
  template void qk_norm_rope_backward<T>(const QkHeadGrads<T>&, const QkHeadGrads<T>&, int64_t, int64_t,   \
                                         const RopePositions&, bool);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(bf16)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
