// Hopper's TMA (cuda/tma.h): the host's tensor-map encoder, and one box loaded through it for the
// test that holds the hardware (or the emulator) to the 128-byte-swizzled tile layout the wgmma
// kernels read (flashgpt/cuda/warpgroup_cuda.h, tma_load_attention_tile).
#include <string>

#include "cuda/tma.h"
#include "flashgpt/cuda/device_memory.h"
#include "flashgpt/cuda/warpgroup_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace tma {

void encode_tensor_map_16bit(CUtensorMap* map, const void* base, int rank, const uint64_t* dims,
                             const uint64_t* strides_bytes, const uint32_t* box, int swizzle_bytes) {
  const std::string what = "TMA tensor map: ";
  FLASHGPT_CUDA_REQUIRE(rank >= 1 && rank <= 5, what + "rank " + std::to_string(rank) + " is not 1…5");
  FLASHGPT_CUDA_REQUIRE(swizzle_bytes == 128 || swizzle_bytes == 64,
                        what + "a swizzle of " + std::to_string(swizzle_bytes) + " bytes (128 or 64)");
  FLASHGPT_CUDA_REQUIRE(reinterpret_cast<uintptr_t>(base) % 16 == 0, what + "the tensor must start 16-byte aligned");
  FLASHGPT_CUDA_REQUIRE(box[0] * 2 <= static_cast<uint32_t>(swizzle_bytes) && box[0] * 2 % 16 == 0,
                        what + "the box's rows must be 16 to " + std::to_string(swizzle_bytes) + " bytes in steps of 16 (" +
                            std::to_string(swizzle_bytes) + "-byte swizzle), not " + std::to_string(box[0] * 2));
  for (int i = 0; i < rank; ++i) {
    FLASHGPT_CUDA_REQUIRE(dims[i] >= 1 && dims[i] <= (uint64_t{1} << 32),
                          what + "dimension " + std::to_string(i) + " has " + std::to_string(dims[i]) + " elements");
    FLASHGPT_CUDA_REQUIRE(box[i] >= 1 && box[i] <= 256,
                          what + "box dimension " + std::to_string(i) + " is " + std::to_string(box[i]) + " (1…256)");
    if (i >= 1) {
      FLASHGPT_CUDA_REQUIRE(strides_bytes[i - 1] % 16 == 0 && strides_bytes[i - 1] < (uint64_t{1} << 40),
                            what + "the stride of dimension " + std::to_string(i) + " (" +
                                std::to_string(strides_bytes[i - 1]) + " bytes) is not a multiple of 16 below 2⁴⁰");
    }
  }
#if defined(FLASHGPT_SIMT)
  simt::encode_tensor_map(map, base, rank, 2, dims, strides_bytes, box, swizzle_bytes);
#else
  using Encode = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                              const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                              CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
  // The driver's encoder, found through the runtime so that nothing links against the driver.
  static const Encode encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    FLASHGPT_CUDA_CHECK(
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
    FLASHGPT_CUDA_REQUIRE(found == cudaDriverEntryPointSuccess && fn != nullptr,
                          "TMA tensor map: the driver has no cuTensorMapEncodeTiled (a driver for CUDA 12 or newer)");
    return reinterpret_cast<Encode>(fn);
  }();
  cuuint64_t d[5], s[4];
  cuuint32_t b[5], unit[5] = {1, 1, 1, 1, 1};
  for (int i = 0; i < rank; ++i) {
    d[i] = dims[i];
    b[i] = box[i];
    if (i >= 1) s[i - 1] = strides_bytes[i - 1];
  }
  const CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT16, static_cast<cuuint32_t>(rank), const_cast<void*>(base),
                            d, s, b, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
                            swizzle_bytes == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  FLASHGPT_CUDA_REQUIRE(r == CUDA_SUCCESS, what + "the driver refused it (CUresult " + std::to_string(r) + ")");
#endif
}

void encode_attention_map(CUtensorMap* map, const void* base, int64_t D, int64_t H, int64_t T, int64_t rows,
                          int64_t row, int64_t B, int box_rows, int box_cols) {
  const uint64_t dims[4] = {static_cast<uint64_t>(D), static_cast<uint64_t>(H), static_cast<uint64_t>(T),
                            static_cast<uint64_t>(B)};
  const uint64_t strides[3] = {static_cast<uint64_t>(D) * 2, static_cast<uint64_t>(row) * 2,
                               static_cast<uint64_t>(rows * row) * 2};
  const uint32_t box[4] = {static_cast<uint32_t>(box_cols), 1, static_cast<uint32_t>(box_rows), 1};
  encode_tensor_map_16bit(map, base, 4, dims, strides, box, 2 * box_cols);
}

}  // namespace tma

namespace {

constexpr int kTileAlign = 1024;

// One box {cols elements, 1 head, rows, 1 sequence} into a 1024-byte-aligned shared tile, then the
// tile back out byte for byte, in shared-memory order. The barrier sits after the tile.
__global__ void __launch_bounds__(128) tma_tile_kernel(const __grid_constant__ CUtensorMap map, int c0, int c1, int c2,
                                                       int c3, int rows, int cols, uint16_t* __restrict__ out) {
#if FLASHGPT_HAS_TMA
  FLASHGPT_DYNAMIC_SHARED(unsigned char, raw);
  uint16_t* tile = reinterpret_cast<uint16_t*>(raw + (kTileAlign - wg::smem_address(raw) % kTileAlign) % kTileAlign);
  uint64_t* bar = reinterpret_cast<uint64_t*>(tile + rows * 64);
  const int tid = static_cast<int>(threadIdx.x);
  if (tid == 0) {
    tma::mbarrier_init(bar, 1);
    tma::fence_mbarrier_init();
  }
  __syncthreads();
  if (tid == 0) {
    tma::mbarrier_arrive_expect_tx(bar, static_cast<uint32_t>(rows * cols * 2));
    tma::tma_load_4d(tile, &map, c0, c1, c2, c3, bar);
  }
  tma::mbarrier_wait(bar, 0);
  for (int i = tid; i < rows * cols; i += 128) out[i] = tile[i];
#else
  (void)map, (void)c0, (void)c1, (void)c2, (void)c3, (void)rows, (void)cols, (void)out;
  __trap();  // not built for sm_90: the host side never launches it there
#endif
}

}  // namespace

void tma_load_attention_tile(const uint16_t* x, int64_t B, int64_t T, int64_t H, int64_t D, int64_t row_stride,
                             int64_t b, int64_t t0, int64_t h, int64_t d0, int rows, uint16_t* out, int cols) {
  const std::string what = "TMA attention tile: ";
  FLASHGPT_CUDA_REQUIRE(rows >= 8 && rows <= 256 && rows % 8 == 0,
                        what + "rows must be a multiple of 8 in 8…256, not " + std::to_string(rows));
  FLASHGPT_CUDA_REQUIRE(cols == 64 || cols == 32, what + "columns must be 64 or 32, not " + std::to_string(cols));
  FLASHGPT_CUDA_REQUIRE(D % 8 == 0 && row_stride >= H * D && row_stride % 8 == 0,
                        what + "rows of whole 16-byte chunks (D " + std::to_string(D) + ", row stride " +
                            std::to_string(row_stride) + ")");
  FLASHGPT_CUDA_REQUIRE(warpgroup_mma_supported(), what + "needs a compute capability 9.0 GPU and sm_90a code");
  CUtensorMap map;
  tma::encode_attention_map(&map, x, D, H, T, T, row_stride, B, rows, cols);
  const size_t bytes = static_cast<size_t>(rows) * 128 + 8 + kTileAlign;
  allow_shared(tma_tile_kernel, bytes, "TMA attention tile");
  launch_kernel("TMA attention tile", tma_tile_kernel, 1, 128, bytes, nullptr, map, static_cast<int>(d0),
                static_cast<int>(h), static_cast<int>(t0), static_cast<int>(b), rows, cols, out);
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
