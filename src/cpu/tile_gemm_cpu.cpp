#include "cpu/tile_gemm.h"

#include <immintrin.h>

#include <atomic>
#include <cstdlib>
#include <string_view>

namespace flashgpt::cpu {

namespace {

constexpr int kMR = 8;   // rows of C per block
constexpr int kNR = 32;  // columns of C per block: two 16-float vectors

template <int MR>
__attribute__((target("avx512f"), always_inline)) inline void block(int64_t K, float alpha, const float* a,
                                                                      int64_t a_m, int64_t a_k, const float* b,
                                                                      int64_t ldb, float* c, int64_t ldc,
                                                                      bool accumulate, __mmask16 m0, __mmask16 m1) {
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    c0[r] = _mm512_setzero_ps();
    c1[r] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < K; ++k) {
    const float* bk = b + k * ldb;
    const __m512 b0 = _mm512_maskz_loadu_ps(m0, bk);
    const __m512 b1 = _mm512_maskz_loadu_ps(m1, bk + 16);
    const float* ak = a + k * a_k;
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(ak[r * a_m]);
      c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
      c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
    }
  }
  const __m512 al = _mm512_set1_ps(alpha);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    float* cr = c + r * ldc;
    __m512 v0 = _mm512_mul_ps(al, c0[r]), v1 = _mm512_mul_ps(al, c1[r]);
    if (accumulate) {
      v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, cr));
      v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, cr + 16));
    }
    _mm512_mask_storeu_ps(cr, m0, v0);
    _mm512_mask_storeu_ps(cr + 16, m1, v1);
  }
}

__attribute__((target("avx512f"))) void tile_gemm_avx512(int64_t M, int64_t N, int64_t K, float alpha,
                                                          const float* a, int64_t a_m, int64_t a_k, const float* b,
                                                          int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  for (int64_t n0 = 0; n0 < N; n0 += kNR) {
    const int64_t nr = N - n0 < kNR ? N - n0 : kNR;
    const __mmask16 m0 = nr >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << nr) - 1);
    const __mmask16 m1 = nr >= 32 ? __mmask16(0xFFFF) : nr > 16 ? __mmask16((1u << (nr - 16)) - 1) : __mmask16(0);
    int64_t m = 0;
    for (; m + kMR <= M; m += kMR) {
      block<kMR>(K, alpha, a + m * a_m, a_m, a_k, b + n0, ldb, c + m * ldc + n0, ldc, accumulate, m0, m1);
    }
    const float* am = a + m * a_m;
    float* cm = c + m * ldc + n0;
    switch (M - m) {
      case 7: block<7>(K, alpha, am, a_m, a_k, b + n0, ldb, cm, ldc, accumulate, m0, m1); break;
      case 6: block<6>(K, alpha, am, a_m, a_k, b + n0, ldb, cm, ldc, accumulate, m0, m1); break;
      case 5: block<5>(K, alpha, am, a_m, a_k, b + n0, ldb, cm, ldc, accumulate, m0, m1); break;
      case 4: block<4>(K, alpha, am, a_m, a_k, b + n0, ldb, cm, ldc, accumulate, m0, m1); break;
      case 3: block<3>(K, alpha, am, a_m, a_k, b + n0, ldb, cm, ldc, accumulate, m0, m1); break;
      case 2: block<2>(K, alpha, am, a_m, a_k, b + n0, ldb, cm, ldc, accumulate, m0, m1); break;
      case 1: block<1>(K, alpha, am, a_m, a_k, b + n0, ldb, cm, ldc, accumulate, m0, m1); break;
      default: break;
    }
  }
}

}  // namespace

namespace {

std::atomic<bool>& tile_kernel_enabled() {
  static std::atomic<bool> on{[] {
    const char* env = std::getenv("FLASHGPT_TILE_KERNEL");
    return !(env && std::string_view(env) == "0");
  }()};
  return on;
}

}  // namespace

bool tile_gemm_available() {
  static const bool cpu_has_it = __builtin_cpu_supports("avx512f");
  return cpu_has_it && tile_kernel_enabled().load(std::memory_order_relaxed);
}

void set_tile_kernel_enabled(bool on) { tile_kernel_enabled() = on; }

void tile_gemm(int64_t M, int64_t N, int64_t K, float alpha, const float* a, int64_t a_m, int64_t a_k,
               const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if (tile_gemm_available()) {
    tile_gemm_avx512(M, N, K, alpha, a, a_m, a_k, b, ldb, c, ldc, accumulate);
    return;
  }
  for (int64_t m = 0; m < M; ++m) {  // portable fallback (callers prefer BLAS on such CPUs)
    for (int64_t n = 0; n < N; ++n) {
      float s = 0;
      for (int64_t k = 0; k < K; ++k) s += a[m * a_m + k * a_k] * b[k * ldb + n];
      c[m * ldc + n] = alpha * s + (accumulate ? c[m * ldc + n] : 0.0f);
    }
  }
}

namespace {

// One 16 × 16 block in registers: rows of src in, rows of dst (src's columns) out. (GCC 12's
// unpack and shuffle intrinsics pass an undefined vector as the unused merge source, which its
// -Wuninitialized reports as a false positive inside the header.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
__attribute__((target("avx512f"))) void transpose16(const float* src, int64_t ls, float* dst, int64_t ld) {
  __m512 r[16], t[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ls);
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {  // interleave row pairs
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {  // 4 × 4 blocks within each 128-bit lane
    r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
#pragma GCC unroll 2
  for (int g = 0; g < 2; ++g) {  // then the lanes themselves
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      t[8 * g + j] = _mm512_shuffle_f32x4(r[8 * g + j], r[8 * g + j + 4], 0x88);
      t[8 * g + j + 4] = _mm512_shuffle_f32x4(r[8 * g + j], r[8 * g + j + 4], 0xDD);
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xDD);
  }
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ld, r[i]);
}
#pragma GCC diagnostic pop

}  // namespace

void transpose_rows(const float* src, int64_t src_row, int64_t N, int64_t K, float* dst, int64_t ld) {
  constexpr int64_t kB = 16;  // 16 × 16 blocks keep both sides in cache lines
  const bool vector = tile_gemm_available();
  for (int64_t n0 = 0; n0 < N; n0 += kB) {
    const int64_t n1 = n0 + kB < N ? n0 + kB : N;
    for (int64_t k0 = 0; k0 < K; k0 += kB) {
      const int64_t k1 = k0 + kB < K ? k0 + kB : K;
      if (vector && n1 - n0 == kB && k1 - k0 == kB) {
        transpose16(src + n0 * src_row + k0, src_row, dst + k0 * ld + n0, ld);
        continue;
      }
      for (int64_t n = n0; n < n1; ++n) {
        for (int64_t k = k0; k < k1; ++k) dst[k * ld + n] = src[n * src_row + k];
      }
    }
  }
}

}  // namespace flashgpt::cpu
