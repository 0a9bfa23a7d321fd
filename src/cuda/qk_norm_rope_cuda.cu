// QK-norm and RoPE of one layer's query and key heads in one launch (CPU twins: the RMSNorm of
// cpu/norm_cpu.cpp over each head, then cpu/rope_cpu.cpp). One warp per head row of the
// N·(Hq + Hkv) rows: token n's query heads first, then its key heads. Lane l holds the row's
// elements i and i + D/2 for i = l, l + 32, …: the RoPE pair (half-split) sits in one lane, so
// after the warp's sum of squares the lane normalises, scales by its head's weight and rotates its
// pairs in registers and writes each element once, rounded once. Without RoPE tables the rows are
// only normalised (QK-norm with learned positions).
#include <string>

#include "cuda/device_math.h"

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
    const int64_t pos = cos_t ? (seq_pos ? seq_pos[n / Tn] : pos_offset) + n % Tn : 0;
    for (int64_t i = lane; i < half; i += 32) {
      const float a = to_f32(x[i]) * r * to_f32(w[i]), b = to_f32(x[i + half]) * r * to_f32(w[i + half]);
      if (cos_t) {
        const float c = cos_t[pos * half + i], sn = sin_t[pos * half + i];
        y[i] = from_f32<T>(a * c - b * sn);
        y[i + half] = from_f32<T>(a * sn + b * c);
      } else {
        y[i] = from_f32<T>(a);
        y[i + half] = from_f32<T>(b);
      }
    }
  }
}

}  // namespace

template <typename T>
void qk_norm_rope_forward(const QkHeads<T>& q, const QkHeads<T>& k, int64_t N, int64_t D, float eps,
                          const RopePositions& rope) {
  FLASHGPT_CUDA_REQUIRE(D > 0 && D % 2 == 0, "qk norm: head dim " + std::to_string(D) + " must be even and positive");
  for (const QkHeads<T>* s : {&q, &k}) {
    const char* what = s == &q ? "qk norm: the query heads' " : "qk norm: the key heads' ";
    FLASHGPT_CUDA_REQUIRE(s->heads >= 1, std::string(what) + "count " + std::to_string(s->heads) + " must be positive");
    FLASHGPT_CUDA_REQUIRE(s->in_ld >= s->heads * D && s->out_ld >= s->heads * D,
                          std::string(what) + "token row strides " + std::to_string(s->in_ld) + " (in) and " +
                              std::to_string(s->out_ld) + " (out) must be at least heads·D = " +
                              std::to_string(s->heads * D));
  }
  FLASHGPT_CUDA_REQUIRE(!rope.cos == !rope.sin, "qk norm: RoPE needs both the cos and the sin table");
  FLASHGPT_CUDA_REQUIRE(!rope.cos || (rope.Tn > 0 && N % rope.Tn == 0),
                        "qk norm: " + std::to_string(N) + " tokens are not whole sequences of " +
                            std::to_string(rope.Tn));
  const int64_t rows = N * (q.heads + k.heads);
  if (rows <= 0) return;
  auto side = [](const QkHeads<T>& s) {
    return Side{dev(s.out), s.rstd, dev(s.in), dev(s.w), s.heads, s.in_ld, s.out_ld};
  };
  launch_kernel(rope.cos ? "qk norm and rope" : "qk norm", qk_norm_rope_kernel<device_t<T>>,
                grid_for(rows, kWarps), kThreads, 0, nullptr, side(q), side(k), N, D, eps, rope.cos, rope.sin,
                rope.Tn > 0 ? rope.Tn : 1, rope.pos_offset, rope.seq_pos);
}

#define FLASHGPT_INSTANTIATE(T)                                                                              \
  template void qk_norm_rope_forward<T>(const QkHeads<T>&, const QkHeads<T>&, int64_t, int64_t, float, \
                                        const RopePositions&);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(bf16)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
