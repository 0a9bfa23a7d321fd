// Hopper's warpgroup instructions (wgmma, src/cuda/warpgroup.h) against a plain product of the same
// 16-bit values: matrix descriptors, 128-byte-swizzled shared tiles, A from registers and from
// shared memory K-major and MN-major, B K-major and MN-major, every width the kernels use and three depths (one and two
// 64-column panels of A, and one and a half: a K-major tile's last 32 columns in the 64-byte swizzle).
// B MN-major 32 wide is a half panel alone (the 64-byte swizzle read MN-major), and 96 wide a panel
// and a half, as the 96/64 backward's dK and dQ products read Q and K. On an H100 or H200 this holds our reading of the PTX ISA's layouts to
// the hardware; on the emulator, the emulator to the same reading. Skipped, visibly, without a GPU
// that has the instructions (compute capability 9.0 and a build with sm_90a code).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "flashgpt/core/device.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/cuda/device_memory.h"
#include "flashgpt/cuda/warpgroup_cuda.h"
#include "testing/bf16.h"

namespace flashgpt {
namespace {

uint16_t to_bits(cuda::TensorCoreType t, float x) {
  return t == cuda::TensorCoreType::bf16 ? testing::to_bf16(x) : testing::to_f16(x);
}

std::string skip_reason() {
  if (!cuda::gpu_available()) return "no GPU: " + probe_devices().why_none;
  if (!cuda::warpgroup_mma_supported()) return "this GPU or build has no wgmma (compute capability 9.0, sm_90a code)";
  return "";
}

TEST(CudaWarpgroup, ProductsMatchAPlainProductInEveryLayout) {
  if (const std::string why = skip_reason(); !why.empty()) GTEST_SKIP() << why;
  Rng rng(7);
  for (const auto type : {cuda::TensorCoreType::bf16, cuda::TensorCoreType::fp16}) {
    for (const int n : {32, 64, 96, 128, 256}) {
      for (const int k : {64, 96, 128}) {
        for (const auto a_from : {cuda::WarpgroupA::Registers, cuda::WarpgroupA::KMajor, cuda::WarpgroupA::MNMajor}) {
          for (const bool b_mn_major : {false, true}) {
            if (n == 96 && !b_mn_major) continue;  // a panel and a half: MN-major only
            SCOPED_TRACE(fmt::format("{} n {} k {} A from {} B {}", type == cuda::TensorCoreType::bf16 ? "bf16" : "fp16",
                                     n, k,
                                     a_from == cuda::WarpgroupA::Registers ? "registers"
                                     : a_from == cuda::WarpgroupA::KMajor  ? "shared memory, K-major"
                                                                           : "shared memory, MN-major",
                                     b_mn_major ? "MN-major" : "K-major"));
            // Small integers and halves: every product and sum is exact in fp32, so the result
            // must match to the bit whatever order the tensor cores add in.
            std::vector<uint16_t> a(static_cast<size_t>(64 * k)), b(static_cast<size_t>(k * n));
            std::vector<float> af(a.size()), bf(b.size());  // bf as B[kk][nn]
            // af as A[r][kk]; a as A, or Aᵀ where A is read MN-major.
            for (int r = 0; r < 64; ++r)
              for (int kk = 0; kk < k; ++kk) {
                const float v = static_cast<float>(static_cast<int>(rng.uniform() * 9) - 4);
                af[static_cast<size_t>(r * k + kk)] = v;
                const size_t at = a_from == cuda::WarpgroupA::MNMajor ? static_cast<size_t>(kk * 64 + r)
                                                                      : static_cast<size_t>(r * k + kk);
                a[at] = to_bits(type, v);
              }
            for (int kk = 0; kk < k; ++kk)
              for (int nn = 0; nn < n; ++nn) {
                const float v = 0.5f * static_cast<float>(static_cast<int>(rng.uniform() * 7) - 3);
                bf[static_cast<size_t>(kk * n + nn)] = v;
                const size_t at = b_mn_major ? static_cast<size_t>(kk * n + nn) : static_cast<size_t>(nn * k + kk);
                b[at] = to_bits(type, v);
              }
            cuda::DeviceBuffer da(a.size() * 2), db(b.size() * 2), dd(static_cast<size_t>(64 * n) * 4);
            da.upload(a.data(), a.size() * 2);
            db.upload(b.data(), b.size() * 2);
            dd.fill_bytes(0xFF);
            cuda::warpgroup_mma_product(type, n, k, a_from, b_mn_major, da.as<uint16_t>(), db.as<uint16_t>(),
                                        dd.as<float>());
            cuda::synchronize();
            std::vector<float> d(static_cast<size_t>(64 * n));
            dd.download(d.data(), d.size() * 4);
            int wrong = 0;
            for (int r = 0; r < 64; ++r)
              for (int c = 0; c < n; ++c) {
                float want = 0;
                for (int kk = 0; kk < k; ++kk) {
                  want += af[static_cast<size_t>(r * k + kk)] * bf[static_cast<size_t>(kk * n + c)];
                }
                const float got = d[static_cast<size_t>(r * n + c)];
                if (got != want && wrong++ < 5) ADD_FAILURE() << "D[" << r << "][" << c << "] = " << got << ", want " << want;
              }
            EXPECT_EQ(wrong, 0) << "elements wrong of " << 64 * n;
          }
        }
      }
    }
  }
}

// Hopper's TMA (src/cuda/tma.h) into the tile layout the wgmma kernels read: boxes of an attention
// tensor [B][T][row_stride] (each row's heads [H][D], rows padded past H·D) — 64 elements of one
// head over `rows` positions — land with row r's 16-byte chunk c at chunk c ^ (r % 8) of a
// 1024-byte-aligned tile (warpgroup.h's SwizzledTile), 32 elements (the 64-byte swizzle) at chunk
// c ^ ((r / 2) % 4) of 64-byte rows (the tile's half panel), and positions past T as zeros. On an H100 or
// H200 this holds the copy engine to that layout; on the emulator, the emulator to the same reading.
TEST(CudaWarpgroup, TmaBoxesLandInTheSwizzledTileLayout) {
  if (const std::string why = skip_reason(); !why.empty()) GTEST_SKIP() << why;
  const int64_t B = 2, T = 100, H = 3, D = 128, row = H * D + 8;
  std::vector<uint16_t> x(static_cast<size_t>(B * T * row));
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<uint16_t>(i % 65521 + 1);
  cuda::DeviceBuffer gx(x.size() * 2), out(256 * 64 * 2);
  gx.upload(x.data(), x.size() * 2);
  struct Box {
    int64_t b, t0, h, d0;
    int rows, cols = 64;
  };
  // 32 columns: the 64-byte swizzle of a tile's half panel (latent attention's Dqk = 96 ends in one).
  for (const Box& c : {Box{0, 0, 0, 0, 64}, Box{1, 40, 2, 64, 64}, Box{1, 90, 1, 0, 16}, Box{0, 96, 2, 64, 8},
                       Box{1, 0, 1, 64, 128}, Box{0, 0, 1, 64, 64, 32}, Box{1, 88, 2, 96, 24, 32}}) {
    SCOPED_TRACE(fmt::format("b {} t0 {} h {} d0 {} rows {} cols {}", c.b, c.t0, c.h, c.d0, c.rows, c.cols));
    out.fill_bytes(0xFF);
    cuda::tma_load_attention_tile(gx.as<uint16_t>(), B, T, H, D, row, c.b, c.t0, c.h, c.d0, c.rows,
                                  out.as<uint16_t>(), c.cols);
    std::vector<uint16_t> got(static_cast<size_t>(c.rows * c.cols));
    out.download(got.data(), got.size() * 2);
    int wrong = 0;
    for (int r = 0; r < c.rows; ++r) {
      for (int col = 0; col < c.cols; ++col) {
        const int64_t t = c.t0 + r;
        const uint16_t want = t < T ? x[static_cast<size_t>((c.b * T + t) * row + c.h * D + c.d0 + col)] : 0;
        // Row r's 16-byte chunk k at chunk k ^ (r mod 8) (128-byte rows) or k ^ ((r / 2) mod 4) (64-byte ones).
        const int chunk = c.cols == 64 ? (col / 8) ^ (r % 8) : (col / 8) ^ ((r / 2) % 4);
        const uint16_t have = got[static_cast<size_t>(r * c.cols + chunk * 8 + col % 8)];
        if (have != want && ++wrong <= 5) ADD_FAILURE() << "row " << r << " column " << col << ": " << have << " ≠ " << want;
      }
    }
    EXPECT_EQ(wrong, 0);
  }
  // What the copy engine cannot take is refused before any launch.
  std::string err;
  try {
    cuda::tma_load_attention_tile(gx.as<uint16_t>(), B, T, H, D, row, 0, 0, 0, 0, 12, out.as<uint16_t>());
  } catch (const Error& e) {
    err = e.what();
  }
  EXPECT_NE(err.find("multiple of 8"), std::string::npos) << err;
}

TEST(CudaWarpgroup, RefusesSizesItHasNoInstructionFor) {
  if (const std::string why = skip_reason(); !why.empty()) GTEST_SKIP() << why;
  cuda::DeviceBuffer buf(64 * 256 * 4);
  EXPECT_THROW(cuda::warpgroup_mma_product(cuda::TensorCoreType::bf16, 96, 64, cuda::WarpgroupA::KMajor, false, buf.as<uint16_t>(),
                                           buf.as<uint16_t>(), buf.as<float>()),
               Error);
  EXPECT_THROW(cuda::warpgroup_mma_product(cuda::TensorCoreType::bf16, 64, 32, cuda::WarpgroupA::KMajor, false, buf.as<uint16_t>(),
                                           buf.as<uint16_t>(), buf.as<float>()),
               Error);
  EXPECT_THROW(cuda::warpgroup_mma_product(cuda::TensorCoreType::bf16, 48, 64, cuda::WarpgroupA::KMajor, true, buf.as<uint16_t>(),
                                           buf.as<uint16_t>(), buf.as<float>()),
               Error);
}

}  // namespace
}  // namespace flashgpt
