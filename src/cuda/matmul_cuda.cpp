// Matmul on the GPU (flashgpt/cuda/matmul_cuda.h): cuBLASLt in the GPU build, OpenBLAS on the host
// in the emulated one. Host code only; compiled once for each build.
//
// cuBLASLt is column-major, so a row-major product C = op(A)·op(B) is asked for as the
// column-major product Cᵀ = op(B)ᵀ·op(A)ᵀ: the operands swap places and each keeps its storage.
// Each distinct shape (with its types and pointer alignments) gets its descriptors and the
// heuristic's algorithm once; later calls reuse them.
#include "flashgpt/cuda/matmul_cuda.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/kernel_timing.h"
#include "cuda/stream.h"
#include "flashgpt/core/half_precision.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/cuda/device_memory.h"
#include "flashgpt/ops/activation.h"

#if defined(FLASHGPT_SIMT)
#include <cblas.h>
#else
#include <cublasLt.h>
#endif

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

void check_sizes(const char* what, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc, bool ta,
                 bool tb) {
  const bool ok = M >= 0 && N >= 0 && K >= 0 && lda >= std::max<int64_t>(1, ta ? M : K) &&
                  ldb >= std::max<int64_t>(1, tb ? K : N) && ldc >= std::max<int64_t>(1, N);
  if (!ok) {
    raise(std::string(what) + ": bad sizes M=" + std::to_string(M) + " N=" + std::to_string(N) +
          " K=" + std::to_string(K) + " lda=" + std::to_string(lda) + " ldb=" + std::to_string(ldb) +
          " ldc=" + std::to_string(ldc));
  }
}

// Strided batches: product i reads A + i·a, B + i·b and writes C + i·c (elements).
struct Strides {
  int64_t count = 1, a = 0, b = 0, c = 0;
};

// What the product does to each element of A·B before its one rounding into C (cuBLASLt's
// epilogues), with v = alpha·(A·B)[i,j] + beta·C[i,j]:
//   Bias:  C = v + bias[j]
//   Gelu:  aux = v + bias[j] (if bias), C = GELU(aux): the pre-activation kept for the backward
//   DGelu: C = v · GELU'(aux[i,j]): the gradient through GELU, aux being that pre-activation
// GELU is the tanh approximation (as GPT-2, and as cuBLASLt's epilogue). aux is row-major with
// leading dimension aux_ld, of C's type.
enum class EpilogueKind { None, Bias, Gelu, DGelu };
template <typename TC>
struct Epilogue {
  EpilogueKind kind = EpilogueKind::None;
  const TC* bias = nullptr;
  TC* aux = nullptr;
  int64_t aux_ld = 0;
};

#if defined(FLASHGPT_SIMT)

// --- the emulated build: the product on the host, in fp32 ---------------------------------------

float widen(float x) { return x; }
float widen(bf16 x) { return bf16_bits_to_float(x.bits); }
void narrow(float x, float& out) { out = x; }
void narrow(float x, bf16& out) { out.bits = float_to_bf16_bits(x); }  // nearest even; NaN stays NaN

// C = alpha·op(A)·op(B) + beta·C with the epilogue applied before the one rounding, as cuBLASLt
// does, and C read only when beta ≠ 0.
template <typename T, typename TC>
void gemm_host(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const T* A, int64_t lda, const T* B,
               int64_t ldb, float beta, TC* C, int64_t ldc, const Epilogue<TC>& epi) {
  std::vector<float> a(static_cast<size_t>(M * K)), b(static_cast<size_t>(K * N)), c(static_cast<size_t>(M * N), 0.0f);
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t k = 0; k < K; ++k) a[static_cast<size_t>(i * K + k)] = widen(ta ? A[k * lda + i] : A[i * lda + k]);
  }
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t j = 0; j < N; ++j) b[static_cast<size_t>(k * N + j)] = widen(tb ? B[j * ldb + k] : B[k * ldb + j]);
  }
  if (beta != 0.0f) {
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t j = 0; j < N; ++j) c[static_cast<size_t>(i * N + j)] = widen(C[i * ldc + j]);
    }
  }
  if (M > 0 && N > 0) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(M), static_cast<int>(N),
                static_cast<int>(K), alpha, a.data(), static_cast<int>(std::max<int64_t>(K, 1)), b.data(),
                static_cast<int>(N), beta, c.data(), static_cast<int>(N));
  }
  if (epi.bias != nullptr) {
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t j = 0; j < N; ++j) c[static_cast<size_t>(i * N + j)] += widen(epi.bias[j]);
    }
  }
  if (epi.kind == EpilogueKind::Gelu) {
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t j = 0; j < N; ++j) narrow(c[static_cast<size_t>(i * N + j)], epi.aux[i * epi.aux_ld + j]);
    }
    std::vector<float> act(c.size());
    ops::gelu_forward<float>(act.data(), c.data(), static_cast<int64_t>(c.size()));
    c.swap(act);
  } else if (epi.kind == EpilogueKind::DGelu) {
    std::vector<float> pre(c.size()), grad(c.size());
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t j = 0; j < N; ++j) pre[static_cast<size_t>(i * N + j)] = widen(epi.aux[i * epi.aux_ld + j]);
    }
    ops::gelu_backward<float>(grad.data(), pre.data(), c.data(), static_cast<int64_t>(c.size()));
    c.swap(grad);
  }
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) narrow(c[static_cast<size_t>(i * N + j)], C[i * ldc + j]);
  }
}

#else

// --- the GPU build: cuBLASLt ----------------------------------------------------------------------

void check_lt(cublasStatus_t s, const char* what, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    raise(std::string("cuBLASLt: ") + what + " failed at " + file + ":" + std::to_string(line) + ": " +
          cublasLtGetStatusString(s) + " (" + cublasLtGetStatusName(s) + ")");
  }
}
#define FLASHGPT_LT_CHECK(call) check_lt((call), #call, __FILE__, __LINE__)

template <typename T>
constexpr cudaDataType_t data_type() {
  if constexpr (std::is_same_v<T, float>) {
    return CUDA_R_32F;
  } else {
    return CUDA_R_16BF;
  }
}

// The largest power of two (up to 256) dividing the address and, for strided batches, the
// batch stride in bytes: what cuBLASLt may assume of every matrix of the batch.
uint32_t alignment(const void* p, size_t stride_bytes = 0) {
  const auto a = reinterpret_cast<uintptr_t>(p) | static_cast<uintptr_t>(stride_bytes);
  uint32_t al = 256;
  while (al > 1 && a % al != 0) al /= 2;
  return al;
}

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool usable = true;  // false: no algorithm with the requested epilogue
};

// One handle, one workspace and the plans of every shape seen, for the process's lifetime (they are
// released with the CUDA context at exit).
struct Lt {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = size_t{32} << 20;  // what cuBLASLt recommends on Hopper
  std::map<std::tuple<int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, uint32_t, uint32_t,
                      uint32_t, int64_t, int64_t, int64_t, int64_t>,
           Plan>
      plans;
};

// Made at the first product, which may come while a stream captures a graph (thread-local mode
// refuses cudaMalloc then): this thread relaxes its capture mode for the allocation alone.
Lt& lt() {
  static Lt* s = [] {
    auto* l = new Lt;
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    FLASHGPT_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
    const cublasStatus_t created = cublasLtCreate(&l->handle);
    const cudaError_t allocated = cudaMalloc(&l->workspace, l->workspace_bytes);
    FLASHGPT_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
    FLASHGPT_LT_CHECK(created);
    FLASHGPT_CUDA_CHECK(allocated);
    return l;
  }();
  return *s;
}

#endif

}  // namespace

namespace {

// A product's span for KernelTimes, named by its shape (batched: "× count"); -1 unless it records.
int begin_timing(bool ta, bool tb, int64_t M, int64_t N, int64_t K, int64_t count) {
  if (!kernel_timing_active()) return -1;
  return kernel_timing_begin("cuBLASLt GEMM " + std::to_string(M) + "×" + std::to_string(N) + "×" + std::to_string(K) +
                                 (ta ? " Aᵀ" : "") + (tb ? " Bᵀ" : "") +
                                 (count > 1 ? " × " + std::to_string(count) : ""),
                             current_stream());
}

// C = alpha·op(A)·op(B) + beta·C through the epilogue `epi`. Returns false, having done nothing,
// when cuBLASLt has no algorithm for the product with that epilogue (remembered per shape); the
// caller then does the epilogue's work in passes of its own.
template <typename T, typename TC>
bool gemm_impl(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const T* A, int64_t lda, const T* B,
               int64_t ldb, float beta, TC* C, int64_t ldc, const Epilogue<TC>& epi = {}, const Strides& batch = {}) {
  check_sizes("GPU gemm", M, N, K, lda, ldb, ldc, ta, tb);
  if (epi.kind == EpilogueKind::Gelu || epi.kind == EpilogueKind::DGelu) {
    if (epi.aux == nullptr || epi.aux_ld < std::max<int64_t>(1, N) || epi.aux_ld % 8 != 0 || batch.count != 1) {
      raise("GPU gemm: a GELU epilogue needs an unbatched product and its pre-activation with a leading dimension of "
            "at least N = " + std::to_string(N) + " and a multiple of 8 (got " + std::to_string(epi.aux_ld) + ")");
    }
  }
  if (M == 0 || N == 0 || batch.count == 0) return true;
#if defined(FLASHGPT_SIMT)
  // Queued on the current stream as the library call would be (recorded while it captures).
  const int timed = begin_timing(ta, tb, M, N, K, batch.count);
  FLASHGPT_CUDA_CHECK(simt::submit(current_stream(), "gemm", [=] {
    for (int64_t i = 0; i < batch.count; ++i) {
      gemm_host<T, TC>(ta, tb, M, N, K, alpha, A + i * batch.a, lda, B + i * batch.b, ldb, beta, C + i * batch.c, ldc,
                       epi);
    }
  }));
  kernel_timing_end(timed, current_stream());
  return true;
#else
  Lt& l = lt();
  const uint32_t al_a = alignment(A, batch.a * sizeof(T)), al_b = alignment(B, batch.b * sizeof(T)),
                 al_c = alignment(C, batch.c * sizeof(TC));
  const bool with_bias = epi.bias != nullptr, with_aux = epi.aux != nullptr;
  // The aux matrix's leading dimension is part of the plan; its alignment is the 16 bytes that a
  // multiple-of-8 leading dimension and a 16-byte-aligned pointer give.
  const auto key = std::make_tuple(static_cast<int>(ta) | static_cast<int>(with_bias) << 1 |
                                       static_cast<int>(epi.kind) << 2,
                                   static_cast<int>(tb), M, N, K, lda, ldb, ldc, static_cast<int>(data_type<T>()),
                                   static_cast<int>(data_type<TC>()), al_a, al_b, al_c, batch.count,
                                   with_aux ? epi.aux_ld : batch.a, batch.b, batch.c);
  auto it = l.plans.find(key);
  if (it == l.plans.end()) {
    Plan p;
    FLASHGPT_LT_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    if (epi.kind != EpilogueKind::None) {
      const cublasLtEpilogue_t epilogue = epi.kind == EpilogueKind::Bias ? CUBLASLT_EPILOGUE_BIAS
                                          : epi.kind == EpilogueKind::DGelu
                                              ? CUBLASLT_EPILOGUE_DGELU
                                              : (with_bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX);
      FLASHGPT_LT_CHECK(
          cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
    }
    if (with_bias) {
      const cudaDataType_t bias_type = data_type<TC>();
      FLASHGPT_LT_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                       sizeof bias_type));
    }
    if (with_aux) {  // column-major, the aux matrix is [N rows, M columns] like Cᵀ
      const int64_t aux_ld = epi.aux_ld;
      const cudaDataType_t aux_type = data_type<TC>();
      FLASHGPT_LT_CHECK(
          cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof aux_ld));
      FLASHGPT_LT_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, &aux_type,
                                                       sizeof aux_type));
    }
    // The column-major product Cᵀ[N,M] = op(B)ᵀ · op(A)ᵀ (see the top of this file).
    const cublasOperation_t op_first = tb ? CUBLAS_OP_T : CUBLAS_OP_N, op_second = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    FLASHGPT_LT_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof op_first));
    FLASHGPT_LT_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof op_second));
    FLASHGPT_LT_CHECK(cublasLtMatrixLayoutCreate(&p.a, data_type<T>(), static_cast<uint64_t>(tb ? K : N),
                                                 static_cast<uint64_t>(tb ? N : K), ldb));
    FLASHGPT_LT_CHECK(cublasLtMatrixLayoutCreate(&p.b, data_type<T>(), static_cast<uint64_t>(ta ? M : K),
                                                 static_cast<uint64_t>(ta ? K : M), lda));
    FLASHGPT_LT_CHECK(
        cublasLtMatrixLayoutCreate(&p.c, data_type<TC>(), static_cast<uint64_t>(N), static_cast<uint64_t>(M), ldc));
    if (batch.count > 1) {  // column-major A is our B and vice versa
      const int32_t count = static_cast<int32_t>(batch.count);
      for (auto [layout, stride] : {std::pair{p.a, batch.b}, std::pair{p.b, batch.a}, std::pair{p.c, batch.c}}) {
        FLASHGPT_LT_CHECK(
            cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
        FLASHGPT_LT_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                           sizeof stride));
      }
    }
    cublasLtMatmulPreference_t pref = nullptr;
    FLASHGPT_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    FLASHGPT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                           &l.workspace_bytes, sizeof l.workspace_bytes));
    // Column-major A is our B and vice versa.
    FLASHGPT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_b,
                                                           sizeof al_b));
    FLASHGPT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_a,
                                                           sizeof al_a));
    FLASHGPT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c,
                                                           sizeof al_c));
    FLASHGPT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c,
                                                           sizeof al_c));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    FLASHGPT_LT_CHECK(cublasLtMatmulAlgoGetHeuristic(l.handle, p.op, p.a, p.b, p.c, p.c, pref, 1, &result, &found));
    cublasLtMatmulPreferenceDestroy(pref);
    if (found == 0) {
      if (epi.kind != EpilogueKind::None) {
        p.usable = false;  // remembered: this shape does its epilogue's work separately
      } else {
        raise("cuBLASLt: no algorithm for the product M=" + std::to_string(M) + " N=" + std::to_string(N) +
              " K=" + std::to_string(K));
      }
    }
    p.algo = result.algo;
    it = l.plans.emplace(key, p).first;
  }
  const Plan& p = it->second;
  if (!p.usable) return false;
  if (with_bias) {
    FLASHGPT_LT_CHECK(
        cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &epi.bias, sizeof epi.bias));
  }
  if (with_aux) {
    FLASHGPT_LT_CHECK(
        cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &epi.aux, sizeof epi.aux));
  }
  const int timed = begin_timing(ta, tb, M, N, K, batch.count);
  FLASHGPT_LT_CHECK(cublasLtMatmul(l.handle, p.op, &alpha, B, p.a, A, p.b, &beta, C, p.c, C, p.c, &p.algo,
                                   l.workspace, l.workspace_bytes, current_stream()));
  kernel_timing_end(timed, current_stream());
  return true;
#endif
}

}  // namespace

template <typename T, typename TC>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, float beta, TC* C, int64_t ldc) {
  gemm_impl<T, TC>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <typename T, typename TC>
void gemm_batched(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const T* A, int64_t lda,
                  int64_t stride_a, const T* B, int64_t ldb, int64_t stride_b, float beta, TC* C, int64_t ldc,
                  int64_t stride_c, int64_t batch) {
  if (batch < 0 || batch > INT32_MAX || stride_a <= 0 || stride_b <= 0 || stride_c <= 0) {
    raise("GPU batched gemm: bad batch " + std::to_string(batch) + " or strides " + std::to_string(stride_a) + ", " +
          std::to_string(stride_b) + ", " + std::to_string(stride_c));
  }
  gemm_impl<T, TC>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, {}, Strides{batch, stride_a, stride_b, stride_c});
}

template <typename T>
void matmul_forward(T* out, const T* inp, const T* w, const T* bias, int64_t N, int64_t C, int64_t OC) {
  // The bias rides in the product's epilogue where cuBLASLt offers one for the shape (one pass
  // over the output fewer); otherwise it is a pass of its own.
  const Epilogue<T> epi{bias ? EpilogueKind::Bias : EpilogueKind::None, bias};
  if (!gemm_impl<T, T>(false, true, N, OC, C, 1.0f, inp, C, w, C, 0.0f, out, OC, epi)) {
    gemm_impl<T, T>(false, true, N, OC, C, 1.0f, inp, C, w, C, 0.0f, out, OC);
    add_bias(out, bias, N, OC);
  }
}

// The GELU epilogues' pre-activation: a leading dimension of whole 16-byte rows from a 16-byte
// aligned start. Otherwise the separate passes.
static bool gelu_epilogue_fits(const bf16* pre, int64_t ld) {
  return ld % 8 == 0 && reinterpret_cast<uintptr_t>(pre) % 16 == 0;
}

void matmul_gelu_forward(bf16* act, bf16* pre, const bf16* inp, const bf16* w, const bf16* bias, int64_t N, int64_t C,
                         int64_t OC) {
  const Epilogue<bf16> epi{EpilogueKind::Gelu, bias, pre, OC};
  if (!gelu_epilogue_fits(pre, OC) ||
      !gemm_impl<bf16, bf16>(false, true, N, OC, C, 1.0f, inp, C, w, C, 0.0f, act, OC, epi)) {
    matmul_forward(pre, inp, w, bias, N, C, OC);
    gelu_forward(act, pre, N * OC);
  }
}

template <typename T>
void matmul_backward(T* dinp, float* dw, float* dbias, const T* dout, const T* inp, const T* w, int64_t N, int64_t C,
                     int64_t OC, bool accumulate_dinp) {
  if (dinp != nullptr) gemm<T, T>(false, false, N, C, OC, 1.0f, dout, OC, w, C, accumulate_dinp ? 1.0f : 0.0f, dinp, C);
  gemm<T, float>(true, false, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dw, C);
  if (dbias != nullptr) bias_backward(dbias, dout, N, OC);
}

void matmul_backward_dgelu(bf16* dpre, bf16* dact, float* dw, float* dbias, const bf16* dout, const bf16* act,
                           const bf16* pre, const bf16* w, int64_t N, int64_t C, int64_t OC) {
  const Epilogue<bf16> epi{EpilogueKind::DGelu, nullptr, const_cast<bf16*>(pre), C};  // aux is only read
  if (!gelu_epilogue_fits(pre, C) ||
      !gemm_impl<bf16, bf16>(false, false, N, C, OC, 1.0f, dout, OC, w, C, 0.0f, dpre, C, epi)) {
    gemm<bf16, bf16>(false, false, N, C, OC, 1.0f, dout, OC, w, C, 0.0f, dact, C);
    gelu_backward(dpre, pre, dact, N * C);
  }
  matmul_backward<bf16>(nullptr, dw, dbias, dout, act, w, N, C, OC, false);
}

double measure_gemm_flops(bool bf16_inputs, int n, int repeats) {
#if defined(FLASHGPT_SIMT)
  n = std::min(n, 256);  // the emulator's GEMMs are the host's BLAS: a small product says as much
#endif
  const size_t count = static_cast<size_t>(n) * static_cast<size_t>(n);
  std::vector<float> host(count);
  Rng rng(7);
  for (float& x : host) x = static_cast<float>(rng.normal());
  DeviceBuffer a(count * sizeof(float)), b(count * sizeof(float)), c(count * sizeof(float)), staging(count * sizeof(float));
  staging.upload(host.data(), count * sizeof(float));
  auto run = [&] {
    if (bf16_inputs) {
      gemm<bf16, bf16>(false, true, n, n, n, 1.0f, a.as<bf16>(), n, b.as<bf16>(), n, 0.0f, c.as<bf16>(), n);
    } else {
      gemm<float, float>(false, true, n, n, n, 1.0f, a.as<float>(), n, b.as<float>(), n, 0.0f, c.as<float>(), n);
    }
  };
  if (bf16_inputs) {
    convert(a.as<bf16>(), staging.as<float>(), static_cast<int64_t>(count));
    convert(b.as<bf16>(), staging.as<float>(), static_cast<int64_t>(count));
  } else {
    copy_on_device(a.get(), staging.get(), count * sizeof(float));
    copy_on_device(b.get(), staging.get(), count * sizeof(float));
  }
  run();  // warm-up: the plan and the clocks
  synchronize();
  constexpr int kPerTiming = 10;
  std::vector<double> seconds;
  for (int r = 0; r < std::max(1, repeats); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kPerTiming; ++i) run();
    synchronize();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / kPerTiming);
  }
  std::sort(seconds.begin(), seconds.end());
  return 2.0 * n * static_cast<double>(n) * n / seconds[seconds.size() / 2];
}

template void gemm<float, float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                                 int64_t, float, float*, int64_t);
template void gemm<bf16, bf16>(bool, bool, int64_t, int64_t, int64_t, float, const bf16*, int64_t, const bf16*,
                               int64_t, float, bf16*, int64_t);
template void gemm<bf16, float>(bool, bool, int64_t, int64_t, int64_t, float, const bf16*, int64_t, const bf16*,
                                int64_t, float, float*, int64_t);
#define FLASHGPT_INSTANTIATE_BATCHED(T, TC)                                                                       \
  template void gemm_batched<T, TC>(bool, bool, int64_t, int64_t, int64_t, float, const T*, int64_t, int64_t, const T*, \
                                    int64_t, int64_t, float, TC*, int64_t, int64_t, int64_t);
FLASHGPT_INSTANTIATE_BATCHED(float, float)
FLASHGPT_INSTANTIATE_BATCHED(bf16, bf16)
FLASHGPT_INSTANTIATE_BATCHED(bf16, float)
#undef FLASHGPT_INSTANTIATE_BATCHED
#define FLASHGPT_INSTANTIATE(T)                                                                                \
  template void matmul_forward<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t);               \
  template void matmul_backward<T>(T*, float*, float*, const T*, const T*, const T*, int64_t, int64_t, int64_t, \
                                   bool);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(bf16)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
