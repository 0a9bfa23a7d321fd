// One product through the warpgroup instructions (flashgpt/cuda/warpgroup_cuda.h): a single
// warpgroup loads A (64 × K) and B into swizzled shared tiles by cp.async and multiplies them with
// K / 16 wgmmas — A from registers or from shared memory K-major or MN-major, B K-major or MN-major
// (where N ends in a half panel, 32 or 96, the MN-major product is mma_ss_mn's or mma_rs_mn's:
// a 64-byte-swizzled wgmma of its own for those 32 columns) — the first of them discarding what
// the accumulators held (they start at a value no product gives).
#include <string>

#include "cuda/warpgroup.h"
#include "flashgpt/cuda/warpgroup_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

__global__ void wgmma_probe_kernel(int* out) { *out = FLASHGPT_HAS_WGMMA; }

template <typename E, int N, int K>
size_t product_bytes() {
  return 2 * static_cast<size_t>(64 * K + N * K) + 1024;  // + the alignment of the tiles
}

template <typename E, int N, int K>
__global__ void __launch_bounds__(128)
    wgmma_product_kernel(const E* __restrict__ a, const E* __restrict__ b, float* __restrict__ d, WarpgroupA a_from,
                         bool b_mn_major) {
  using TileA = wg::SwizzledTile<64, K>;                // rows m, columns k
  using TileAt = wg::SwizzledTile<K, 64>;               // rows k, columns m
  using TileBk = wg::SwizzledTile<N, K>;                // rows n, columns k
  using TileBn = wg::SwizzledTile<K, N>;  // rows k, columns n (n = 32 or 96 ends in a half panel)
  FLASHGPT_DYNAMIC_SHARED(unsigned char, raw);
  const uint32_t pad = (1024 - wg::smem_address(raw) % 1024) % 1024;
  E* As = reinterpret_cast<E*>(raw + pad);
  E* Bs = As + TileA::kElems;
  if (a_from == WarpgroupA::MNMajor) {
    wg::load_rows_swizzled<64, K, 128>(As, a, 64, 0, K);
  } else {
    wg::load_rows_swizzled<K, 64, 128>(As, a, K, 0, 64);
  }
  if (b_mn_major) {
    wg::load_rows_swizzled<N, K, 128>(Bs, b, N, 0, K);
  } else if constexpr (N % 64 == 0 || N == 32) {
    wg::load_rows_swizzled<K, N, 128>(Bs, b, K, 0, N);
  }
  tc::cp_async_commit();
  tc::cp_async_wait<0>();
  wg::fence_proxy_async();
  __syncthreads();

  const int w = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  float acc[N / 8][4];
  for (auto& chunk : acc)
    for (float& x : chunk) x = 12345.0f;
  // A in mma.m16n8k16's A layout for this warp's 16 rows, straight from global memory.
  uint32_t af[K / 16][4] = {};
  for (int kk = 0; kk < K / 16 && a_from == WarpgroupA::Registers; ++kk) {
    for (int r = 0; r < 4; ++r) {
      const int row = 16 * w + g + 8 * (r & 1), col = 16 * kk + 2 * t + 8 * (r >> 1);
      af[kk][r] = tc::pack2<E>(tc::to_float(a[row * K + col]), tc::to_float(a[row * K + col + 1]));
    }
  }
  wg::fence();
  for (int kk = 0; kk < K / 16; ++kk) {
    const bool accumulate = kk > 0;
    if (a_from == WarpgroupA::Registers) {
      if (b_mn_major) {
        wg::mma_rs_mn<E, TileBn, N>(acc, af[kk], Bs, 16 * kk, 0, accumulate);
      } else if constexpr (N % 64 == 0 || N == 32) {
        wg::mma_rs<E, N, false>(acc, af[kk], TileBk::k_major(Bs, 0, 16 * kk), accumulate);
      }
    } else if (a_from == WarpgroupA::KMajor) {
      const uint64_t a_desc = TileA::k_major(As, 0, 16 * kk);
      if (b_mn_major) {
        wg::mma_ss_mn<E, TileBn, N>(acc, a_desc, Bs, 16 * kk, 0, accumulate);
      } else if constexpr (N % 64 == 0 || N == 32) {
        wg::mma_ss<E, N, false>(acc, a_desc, TileBk::k_major(Bs, 0, 16 * kk), accumulate);
      }
    } else {
      const uint64_t a_desc = TileAt::mn_major(As, 16 * kk);
      if (b_mn_major) {
        wg::mma_ss_mn<E, TileBn, N, true>(acc, a_desc, Bs, 16 * kk, 0, accumulate);
      } else if constexpr (N % 64 == 0 || N == 32) {
        wg::mma_ss<E, N, false, true>(acc, a_desc, TileBk::k_major(Bs, 0, 16 * kk), accumulate);
      }
    }
  }
  wg::commit();
  wg::wait<0>();
  wg::hold(acc);
  wg::hold(af);
  for (int j = 0; j < N / 8; ++j)
    for (int e = 0; e < 4; ++e) d[(16 * w + g + 8 * (e >> 1)) * N + 8 * j + 2 * t + (e & 1)] = acc[j][e];
}

template <typename E, int N, int K>
void launch_product(WarpgroupA a_from, bool b_mn_major, const uint16_t* a, const uint16_t* b, float* d) {
  const size_t bytes = product_bytes<E, N, K>();
  allow_shared(wgmma_product_kernel<E, N, K>, bytes, "warpgroup MMA product");
  launch_kernel("warpgroup MMA product", wgmma_product_kernel<E, N, K>, 1, 128, bytes, nullptr,
                reinterpret_cast<const E*>(a), reinterpret_cast<const E*>(b), d, a_from, b_mn_major);
}

template <typename E, int N>
void launch_product_k(int k, WarpgroupA a_from, bool b_mn_major, const uint16_t* a, const uint16_t* b, float* d) {
  if (k == 64) return launch_product<E, N, 64>(a_from, b_mn_major, a, b, d);
  if (k == 96) return launch_product<E, N, 96>(a_from, b_mn_major, a, b, d);
  launch_product<E, N, 128>(a_from, b_mn_major, a, b, d);
}

template <typename E>
void launch_product_nk(int n, int k, WarpgroupA a_from, bool b_mn_major, const uint16_t* a, const uint16_t* b,
                       float* d) {
  if (n == 32) return launch_product_k<E, 32>(k, a_from, b_mn_major, a, b, d);
  if (n == 64) return launch_product_k<E, 64>(k, a_from, b_mn_major, a, b, d);
  if (n == 96) return launch_product_k<E, 96>(k, a_from, b_mn_major, a, b, d);
  if (n == 128) return launch_product_k<E, 128>(k, a_from, b_mn_major, a, b, d);
  launch_product_k<E, 256>(k, a_from, b_mn_major, a, b, d);
}

}  // namespace

bool warpgroup_mma_supported() {
  static const bool supported = [] {
    int device = 0, major = 0, minor = 0;
    FLASHGPT_CUDA_CHECK(cudaGetDevice(&device));
    FLASHGPT_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    FLASHGPT_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    if (major != 9 || minor != 0) return false;
    DeviceBuffer flag(sizeof(int));
    launch_kernel("warpgroup MMA probe", wgmma_probe_kernel, 1, 1, 0, nullptr, flag.as<int>());
    int compiled = 0;
    flag.download(&compiled, sizeof compiled);
    return compiled == 1;
  }();
  return supported;
}

void warpgroup_mma_product(TensorCoreType type, int n, int k, WarpgroupA a_from, bool b_mn_major, const uint16_t* a,
                           const uint16_t* b, float* d) {
  FLASHGPT_CUDA_REQUIRE(n == 32 || n == 64 || n == 96 || n == 128 || n == 256,
                        "warpgroup MMA product: n must be 32, 64, 96, 128 or 256 (got " + std::to_string(n) + ")");
  FLASHGPT_CUDA_REQUIRE(n != 96 || b_mn_major,
                        "warpgroup MMA product: n 96 needs an MN-major B (a panel and a half, two wgmmas)");
  FLASHGPT_CUDA_REQUIRE(k == 64 || k == 96 || k == 128,
                        "warpgroup MMA product: k must be 64, 96 or 128 (got " + std::to_string(k) + ")");
  FLASHGPT_CUDA_REQUIRE(warpgroup_mma_supported(),
                        "warpgroup MMA product: needs a compute capability 9.0 GPU and a build with sm_90a code");
  if (type == TensorCoreType::bf16) {
    launch_product_nk<__nv_bfloat16>(n, k, a_from, b_mn_major, a, b, d);
  } else {
    launch_product_nk<__half>(n, k, a_from, b_mn_major, a, b, d);
  }
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
