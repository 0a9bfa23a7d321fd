// LayerNorm and RMSNorm on the GPU (CPU twin: cpu/norm_cpu.cpp). One warp per row: the row's
// statistics come from warp shuffles, with two passes over the row as on the CPU (the later passes
// find the row in L1). The residual add can come first (sum = a + b, then its norm), and before it
// post-norm's norm of the branch b, in the same warp, its output never stored. Rows move in 16-byte
// packs where the width and pointers allow (cuda/packed.h), else an element at a time. RMSNorm's
// input rows (and its backward's input gradient) may be heads inside wider token rows (HeadRows:
// QK-norm over the fused [q | k | v] projection); the output and the output gradient are dense.
//
// The backward's weight (and bias) gradients: each lane of a warp owns the same columns in every
// row it visits, so it sums their contributions in registers across its rows; the block's warps
// then add theirs in shared memory and the block adds the total to the global fp32 gradient with
// one atomic per column. That needs the lane's columns to fit its registers (a packed row of at
// most kMaxPacksPerLane packs per lane); wider or unpacked rows, and the deterministic backward,
// leave the weight gradients to a second, fixed-order reduction over the rows (column_sums.h).
#include "cuda/column_sums.h"
#include "cuda/device_math.h"
#include "cuda/packed.h"

#include <string>

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kMaxPacksPerLane = 4;  // d12's 768 bf16 columns are 3 packs a lane

// Where row r of the input starts: dense (heads 1, ld C: r·C), or head r % heads of token r / heads
// with token rows ld elements apart (HeadRows).
struct RowLayout {
  int64_t heads, ld;
  __host__ __device__ int64_t start(int64_t r, int64_t C) const {
    return heads == 1 ? r * ld : (r / heads) * ld + (r % heads) * C;
  }
};

RowLayout layout_of(HeadRows rows, int64_t C) {
  FLASHGPT_CUDA_REQUIRE(rows.heads >= 1, "norm: " + std::to_string(rows.heads) + " heads per token row");
  const int64_t ld = rows.token_stride > 0 ? rows.token_stride : rows.heads * C;
  FLASHGPT_CUDA_REQUIRE(ld >= rows.heads * C, "norm: token row stride " + std::to_string(ld) +
                                                  " is smaller than heads·C = " + std::to_string(rows.heads * C));
  return ld == rows.heads * C ? RowLayout{1, C} : RowLayout{rows.heads, ld};
}

// One row of C values (K a pack), for the lanes of a warp: its mean, and its rstd about mean mu
// (RMSNorm: mu 0); each a pass over the row.
template <typename T, int K>
__device__ __forceinline__ float row_mean(const T* x, int64_t C, int lane) {
  using P = Packed<T, K>;
  float s = 0.0f;
  for (int64_t p = lane; p < C / K; p += 32) {
    const P v = P::load(x + p * K);
    for (int j = 0; j < K; ++j) s += v.get(j);
  }
  return warp_sum(s) / static_cast<float>(C);
}
template <typename T, int K>
__device__ __forceinline__ float row_rstd(const T* x, float mu, int64_t C, float eps, int lane) {
  using P = Packed<T, K>;
  float var = 0.0f;
  for (int64_t p = lane; p < C / K; p += 32) {
    const P v = P::load(x + p * K);
    for (int j = 0; j < K; ++j) {
      const float d = v.get(j) - mu;
      var += d * d;
    }
  }
  return rsqrtf(warp_sum(var) / static_cast<float>(C) + eps);
}

// Post-norm's branch norm (kAdd 2): weights, and where its statistics go.
template <typename T>
struct BranchArgs {
  const T* w;
  const T* b;
  float* mean;
  float* rstd;
};

// K: elements per access (1, or a pack), so the row is C / K accesses, lane l taking l, l + 32, …
// kAdd 1: the row is first made as sum = ra + rb (rounded to T, stored) and normalised from there,
// read back through `sum` (no restrict: written and read in this kernel); kAdd 2: the same with rb
// normalised first (`branch`), each value rounded to T as the branch norm's own output would be;
// kAdd 0: the row is inp.
template <typename T, bool kLayer, int K, int kAdd>
__global__ void norm_forward_kernel(T* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
                                    const T* __restrict__ inp, const T* __restrict__ w, const T* __restrict__ b,
                                    int64_t N, int64_t C, float eps, T* sum, const T* ra, const T* rb,
                                    RowLayout in_rows, BranchArgs<T> branch) {
  using P = Packed<T, K>;
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const int64_t packs = C / K;
  for (int64_t row = blockIdx.x * static_cast<int64_t>(kWarps) + warp; row < N;
       row += static_cast<int64_t>(gridDim.x) * kWarps) {  // the same rows for every lane of the warp
    const T* x = kAdd ? sum + row * C : inp + in_rows.start(row, C);
    float mu = 0.0f;
    if constexpr (kAdd > 0) {
      float bmu = 0.0f, br = 0.0f;
      if constexpr (kAdd == 2) {
        if (kLayer) bmu = row_mean<T, K>(rb + row * C, C, lane);
        br = row_rstd<T, K>(rb + row * C, bmu, C, eps, lane);
        if (lane == 0) {
          if (kLayer) branch.mean[row] = bmu;
          branch.rstd[row] = br;
        }
      }
      float s = 0.0f;
      for (int64_t p = lane; p < packs; p += 32) {
        const P av = P::load(ra + row * C + p * K);
        P bv = P::load(rb + row * C + p * K);
        if constexpr (kAdd == 2) {  // the branch as its norm would have stored it
          const P wv = P::load(branch.w + p * K);
          if (branch.b) {
            const P bb = P::load(branch.b + p * K);
            for (int j = 0; j < K; ++j) bv.set(j, (bv.get(j) - bmu) * br * wv.get(j) + bb.get(j));
          } else {
            for (int j = 0; j < K; ++j) bv.set(j, (bv.get(j) - bmu) * br * wv.get(j));
          }
        }
        P v;
        for (int j = 0; j < K; ++j) {
          v.set(j, av.get(j) + bv.get(j));
          s += v.get(j);
        }
        v.store(sum + row * C + p * K);
      }
      if (kLayer) mu = warp_sum(s) / static_cast<float>(C);
    } else if (kLayer) {
      mu = row_mean<T, K>(x, C, lane);
    }
    const float r = row_rstd<T, K>(x, mu, C, eps, lane);
    if (lane == 0) {
      if (kLayer) mean[row] = mu;
      rstd[row] = r;
    }
    T* y = out + row * C;
    for (int64_t p = lane; p < packs; p += 32) {
      const P v = P::load(x + p * K), wv = P::load(w + p * K);
      P o;
      if (b) {
        const P bv = P::load(b + p * K);
        for (int j = 0; j < K; ++j) o.set(j, (v.get(j) - mu) * r * wv.get(j) + bv.get(j));
      } else {
        for (int j = 0; j < K; ++j) o.set(j, (v.get(j) - mu) * r * wv.get(j));
      }
      o.store(y + p * K);
    }
  }
}

// M: packs of weight gradient each lane keeps in registers (0: none, the weight gradients are left
// to the column sums). Shared memory (M > 0): dw [C], then db [C] for LayerNorm with a bias.
template <typename T, bool kLayer, int K, int M>
__global__ void norm_backward_kernel(T* __restrict__ dinp, float* __restrict__ dw, float* __restrict__ db,
                                     const T* __restrict__ dout, const T* __restrict__ inp, const T* __restrict__ w,
                                     const float* __restrict__ mean, const float* __restrict__ rstd, int64_t N,
                                     int64_t C, bool accumulate, RowLayout in_rows) {
  using P = Packed<T, K>;
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const int64_t packs = C / K;
  const bool with_db = kLayer && db;
  float acc_w[M > 0 ? M : 1][K] = {}, acc_b[M > 0 ? M : 1][K] = {};
  for (int64_t row = blockIdx.x * static_cast<int64_t>(kWarps) + warp; row < N;
       row += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t at = in_rows.start(row, C);
    const T* x = inp + at;
    const T* dy = dout + row * C;
    T* dx = dinp + at;
    const float mu = kLayer ? mean[row] : 0.0f, r = rstd[row];
    float sg = 0.0f, sgx = 0.0f;
    for (int64_t p = lane; p < packs; p += 32) {
      const P xv = P::load(x + p * K), dv = P::load(dy + p * K), wv = P::load(w + p * K);
      for (int j = 0; j < K; ++j) {
        const float g = dv.get(j) * wv.get(j);
        sg += g;
        sgx += g * (xv.get(j) - mu) * r;
      }
    }
    const float mg = kLayer ? warp_sum(sg) / static_cast<float>(C) : 0.0f;
    const float mgx = warp_sum(sgx) / static_cast<float>(C);
    // dx for the pack at p, with its weight-gradient terms added to aw, ab (M > 0).
    auto pass2 = [&](int64_t p, float* aw, float* ab) {
      const P xv = P::load(x + p * K), dv = P::load(dy + p * K), wv = P::load(w + p * K);
      P o;
      if (accumulate) o = P::load(dx + p * K);
      for (int j = 0; j < K; ++j) {
        const float d = dv.get(j), xh = (xv.get(j) - mu) * r;
        float v = r * (d * wv.get(j) - mg - xh * mgx);
        if (accumulate) v += o.get(j);
        o.set(j, v);
        if constexpr (M > 0) {
          aw[j] += d * xh;
          ab[j] += d;
        }
      }
      o.store(dx + p * K);
    };
    if constexpr (M > 0) {  // the launch checked packs ≤ 32·M; the register arrays' indices are constants
#pragma unroll
      for (int i = 0; i < M; ++i) {
        if (lane + 32LL * i < packs) pass2(lane + 32LL * i, acc_w[i], acc_b[i]);
      }
    } else {
      for (int64_t p = lane; p < packs; p += 32) pass2(p, nullptr, nullptr);
    }
  }
  if constexpr (M > 0) {
    FLASHGPT_DYNAMIC_SHARED(float, sdw);
    float* sdb = sdw + C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      sdw[c] = 0.0f;
      if (with_db) sdb[c] = 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < M; ++i) {
      const int64_t p = lane + 32LL * i;
      if (p >= packs) continue;
      for (int j = 0; j < K; ++j) {
        if (dw) atomicAdd(sdw + p * K + j, acc_w[i][j]);
        if (with_db) atomicAdd(sdb + p * K + j, acc_b[i][j]);
      }
    }
    __syncthreads();
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      if (dw) atomicAdd(dw + c, sdw[c]);
      if (with_db) atomicAdd(db + c, sdb[c]);
    }
  }
}

// One row's contributions to a norm's weight gradients, for the column sums: dw gets dout·x̂ and
// db (LayerNorm) dout, x̂ = (x − mean)·rstd (mean 0 for RMSNorm), for columns c0 … c0 + K.
template <typename T, bool kWithDb>
struct NormWeightTerm {
  const T* dout;
  const T* inp;
  const float* mean;  // null for RMSNorm
  const float* rstd;
  int64_t C;
  RowLayout in_rows;  // inp's rows (dout is dense)
  template <int K>
  __device__ void add(int64_t r, int64_t c0, float (&s)[kWithDb ? 2 : 1][K]) const {
    const Packed<T, K> d = Packed<T, K>::load(dout + r * C + c0);
    const Packed<T, K> x = Packed<T, K>::load(inp + in_rows.start(r, C) + c0);
    const float mu = mean ? mean[r] : 0.0f, rs = rstd[r];
    for (int j = 0; j < K; ++j) {
      s[0][j] += d.get(j) * ((x.get(j) - mu) * rs);
      if constexpr (kWithDb) s[1][j] += d.get(j);
    }
  }
};

template <typename T, bool kLayer, int K, int M>
void launch_backward(const char* name, T* dinp, float* dw, float* db, const T* dout, const T* inp, const T* w,
                     const float* mean, const float* rstd, int64_t N, int64_t C, bool accumulate, RowLayout in_rows) {
  using D = device_t<T>;
  auto kernel = norm_backward_kernel<D, kLayer, K, M>;
  const size_t shared = M > 0 ? sizeof(float) * static_cast<size_t>(C) * 2 : 0;
  if (shared > 0) allow_shared(kernel, shared, name);
  launch_kernel(name, kernel, resident_blocks(kernel, kThreads, shared, N, kWarps), kThreads, shared, nullptr,
                dev(dinp), dw, db, dev(dout), dev(inp), dev(w), mean, rstd, N, C, accumulate, in_rows);
}

// out = norm(inp), or with sum: sum = ra + rb, out = norm(sum) (inp unused; the rows dense), and
// with a branch norm too: sum = ra + norm_branch(rb).
template <typename T, bool kLayer>
void forward(const char* name, T* out, float* mean, float* rstd, const T* inp, const T* w, const T* b, int64_t N,
             int64_t C, float eps, T* sum = nullptr, const T* ra = nullptr, const T* rb = nullptr,
             HeadRows in_rows = {}, const BranchNorm<T>* branch = nullptr) {
  if (N <= 0 || C <= 0) return;
  using D = device_t<T>;
  constexpr int K = static_cast<int>(pack_size<T>());
  const RowLayout rows = layout_of(in_rows, C);
  BranchArgs<D> args{};
  if (branch) {
    FLASHGPT_CUDA_REQUIRE(branch->w && branch->rstd && (!kLayer || branch->mean),
                          std::string(name) + ": the branch norm needs its weight, rstd" + (kLayer ? " and mean" : ""));
    args = {dev(branch->w), kLayer ? dev(branch->bias) : nullptr, kLayer ? branch->mean : nullptr, branch->rstd};
  }
  auto run = [&](auto kernel) {
    launch_kernel(name, kernel, grid_for(N, kWarps), kThreads, 0, nullptr, dev(out), mean, rstd, dev(inp), dev(w),
                  dev(b), N, C, eps, dev(sum), dev(ra), dev(rb), rows, args);
  };
  const T* bw = branch ? branch->w : nullptr;
  const T* bb = branch && kLayer ? branch->bias : nullptr;
  const bool packed = packable<T>(C, {out, inp, w, b, sum, ra, rb, bw, bb}) && rows.ld % K == 0;
  if (branch) {
    packed ? run(norm_forward_kernel<D, kLayer, K, 2>) : run(norm_forward_kernel<D, kLayer, 1, 2>);
  } else if (sum) {
    packed ? run(norm_forward_kernel<D, kLayer, K, 1>) : run(norm_forward_kernel<D, kLayer, 1, 1>);
  } else {
    packed ? run(norm_forward_kernel<D, kLayer, K, 0>) : run(norm_forward_kernel<D, kLayer, 1, 0>);
  }
}

template <typename T, bool kLayer>
void backward(const char* name, T* dinp, float* dw, float* db, const T* dout, const T* inp, const T* w,
              const float* mean, const float* rstd, int64_t N, int64_t C, bool accumulate, bool deterministic,
              HeadRows in_rows = {}) {
  if (N <= 0 || C <= 0) return;
  constexpr int K = static_cast<int>(pack_size<T>());
  const RowLayout rows = layout_of(in_rows, C);
  const bool packed = packable<T>(C, {dinp, dout, inp, w}) && rows.ld % K == 0;
  const int64_t per_lane = (C / K + 31) / 32;  // packs per lane
  const bool grads = (dw || (kLayer && db)) && !deterministic;
  if (packed && grads && per_lane <= kMaxPacksPerLane) {
    if (per_lane == 1) {
      launch_backward<T, kLayer, K, 1>(name, dinp, dw, db, dout, inp, w, mean, rstd, N, C, accumulate, rows);
    } else if (per_lane == 2) {
      launch_backward<T, kLayer, K, 2>(name, dinp, dw, db, dout, inp, w, mean, rstd, N, C, accumulate, rows);
    } else {
      launch_backward<T, kLayer, K, kMaxPacksPerLane>(name, dinp, dw, db, dout, inp, w, mean, rstd, N, C, accumulate,
                                                      rows);
    }
    return;
  }
  if (packed) {
    launch_backward<T, kLayer, K, 0>(name, dinp, nullptr, nullptr, dout, inp, w, mean, rstd, N, C, accumulate, rows);
  } else {
    launch_backward<T, kLayer, 1, 0>(name, dinp, nullptr, nullptr, dout, inp, w, mean, rstd, N, C, accumulate, rows);
  }
  if (!dw && !db) return;
  using D = device_t<T>;
  const bool rows_packed = packable<T>(C, {dout, inp}) && rows.ld % K == 0;
  if (kLayer && db) {
    ordered_column_sums<2, K>(name, dw, db, N, C, NormWeightTerm<D, true>{dev(dout), dev(inp), mean, rstd, C, rows},
                              rows_packed);
  } else {
    ordered_column_sums<1, K>(name, dw, nullptr, N, C,
                              NormWeightTerm<D, false>{dev(dout), dev(inp), kLayer ? mean : nullptr, rstd, C, rows},
                              rows_packed);
  }
}

}  // namespace

template <typename T>
void layernorm_forward(T* out, float* mean, float* rstd, const T* inp, const T* w, const T* b, int64_t N, int64_t C,
                       float eps) {
  forward<T, true>("layernorm forward", out, mean, rstd, inp, w, b, N, C, eps);
}

template <typename T>
void layernorm_backward(T* dinp, float* dw, float* db, const T* dout, const T* inp, const T* w, const float* mean,
                        const float* rstd, int64_t N, int64_t C, bool accumulate, bool deterministic) {
  backward<T, true>("layernorm backward", dinp, dw, db, dout, inp, w, mean, rstd, N, C, accumulate, deterministic);
}

template <typename T>
void rmsnorm_forward(T* out, float* rstd, const T* inp, const T* w, int64_t N, int64_t C, float eps,
                     HeadRows in_rows) {
  forward<T, false>("rmsnorm forward", out, static_cast<float*>(nullptr), rstd, inp, w, static_cast<const T*>(nullptr),
                    N, C, eps, nullptr, nullptr, nullptr, in_rows);
}

template <typename T>
void add_layernorm_forward(T* sum, T* out, float* mean, float* rstd, const T* a, const T* b, const T* w,
                           const T* bias, int64_t N, int64_t C, float eps, const BranchNorm<T>* branch) {
  forward<T, true>(branch ? "layernorm + add + layernorm forward" : "add + layernorm forward", out, mean, rstd,
                   static_cast<const T*>(nullptr), w, bias, N, C, eps, sum, a, b, {}, branch);
}

template <typename T>
void add_rmsnorm_forward(T* sum, T* out, float* rstd, const T* a, const T* b, const T* w, int64_t N, int64_t C,
                         float eps, const BranchNorm<T>* branch) {
  forward<T, false>(branch ? "rmsnorm + add + rmsnorm forward" : "add + rmsnorm forward", out,
                    static_cast<float*>(nullptr), rstd, static_cast<const T*>(nullptr), w,
                    static_cast<const T*>(nullptr), N, C, eps, sum, a, b, {}, branch);
}

template <typename T>
void rmsnorm_backward(T* dinp, float* dw, const T* dout, const T* inp, const T* w, const float* rstd, int64_t N,
                      int64_t C, bool accumulate, bool deterministic, HeadRows in_rows) {
  backward<T, false>("rmsnorm backward", dinp, dw, nullptr, dout, inp, w, nullptr, rstd, N, C, accumulate,
                     deterministic, in_rows);
}

#define FLASHGPT_INSTANTIATE(T)                                                                                      \
  template void layernorm_forward<T>(T*, float*, float*, const T*, const T*, const T*, int64_t, int64_t, float);    \
  template void layernorm_backward<T>(T*, float*, float*, const T*, const T*, const T*, const float*, const float*, \
                                      int64_t, int64_t, bool, bool);                                                \
  template void rmsnorm_forward<T>(T*, float*, const T*, const T*, int64_t, int64_t, float, HeadRows);              \
  template void add_layernorm_forward<T>(T*, T*, float*, float*, const T*, const T*, const T*, const T*, int64_t,     \
                                         int64_t, float, const BranchNorm<T>*);                                     \
  template void add_rmsnorm_forward<T>(T*, T*, float*, const T*, const T*, const T*, int64_t, int64_t, float,        \
                                       const BranchNorm<T>*);                                                       \
  template void rmsnorm_backward<T>(T*, float*, const T*, const T*, const T*, const float*, int64_t, int64_t, bool, \
                                    bool, HeadRows);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(bf16)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
