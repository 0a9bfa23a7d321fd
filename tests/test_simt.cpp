// The CPU emulator of the CUDA execution model (src/cuda/simt) that the CUDA kernels' tests run
// on where no GPU exists: its shuffles, votes, barriers and WMMA tiles against their documented
// semantics, and the faults it must report — a missing barrier, a deadlock, a warp mask naming an
// exited lane, a bad launch, a misaligned tensor-core load. Built only with the emulator.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda/platform.h"
#include "flashgpt/core/error.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "testing/errors.h"

namespace flashgpt {
namespace {

using cuda::launch_kernel;
using testing::error_of;

// ---------------------------------------------------------------------------------------------
__global__ void shuffles_kernel(int* out) {
  const int t = static_cast<int>(threadIdx.x);
  const int v = 100 * t;
  const int n = static_cast<int>(blockDim.x);
  out[0 * n + t] = __shfl_xor_sync(0xffffffffu, v, 1);
  out[1 * n + t] = __shfl_down_sync(0xffffffffu, v, 3, 8);
  out[2 * n + t] = __shfl_up_sync(0xffffffffu, v, 2);
  out[3 * n + t] = __shfl_sync(0xffffffffu, v, 5, 16);
  out[4 * n + t] = static_cast<int>(__ballot_sync(0xffffffffu, t % 3 == 0));
  out[5 * n + t] = __all_sync(0xffffffffu, t < 1000) + 2 * __any_sync(0xffffffffu, t == 40);
}

TEST(Simt, ShufflesAndVotesFollowTheirDocumentedLaneArithmetic) {
  const int n = 64;
  cuda::DeviceBuffer out(6 * n * sizeof(int));
  launch_kernel("shuffles", shuffles_kernel, 1, n, 0, nullptr, out.as<int>());
  std::vector<int> h(6 * n);
  out.download(h.data(), h.size() * sizeof(int));
  for (int t = 0; t < n; ++t) {
    const int lane = t % 32, base = t - lane;
    SCOPED_TRACE("thread " + std::to_string(t));
    EXPECT_EQ(h[t], 100 * (base + (lane ^ 1)));
    const int down = lane % 8 + 3 < 8 ? lane + 3 : lane;  // past its group of 8: own value
    EXPECT_EQ(h[n + t], 100 * (base + down));
    EXPECT_EQ(h[2 * n + t], 100 * (base + (lane >= 2 ? lane - 2 : lane)));
    EXPECT_EQ(h[3 * n + t], 100 * (base + lane / 16 * 16 + 5));
    unsigned bits = 0;
    for (int o = 0; o < 32; ++o)
      if ((base + o) % 3 == 0) bits |= 1u << o;
    EXPECT_EQ(static_cast<unsigned>(h[4 * n + t]), bits);
    EXPECT_EQ(h[5 * n + t], 1 + (base == 32 ? 2 : 0));
  }
}

// ---------------------------------------------------------------------------------------------
// A block sum through static shared memory, with (correct) and without (racy) the barrier.
template <bool kSync>
__global__ void block_sum_kernel(const float* in, float* out) {
  __shared__ float part[128];
  const int t = static_cast<int>(threadIdx.x);
  part[t] = in[blockIdx.x * 128 + t];
  for (int stride = 64; stride > 0; stride /= 2) {
    if (kSync) __syncthreads();
    if (t < stride) part[t] += part[t + stride];
  }
  if (t == 0) out[blockIdx.x] = part[0];
}

TEST(Simt, StaticSharedMemoryIsPerBlockAndBarriersOrderIt) {
  const int blocks = 5;
  std::vector<float> in(blocks * 128);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i % 17);
  cuda::DeviceBuffer din(in.size() * 4), dout(blocks * 4);
  din.upload(in.data(), in.size() * 4);
  launch_kernel("block sum", block_sum_kernel<true>, blocks, 128, 0, nullptr, din.as<const float>(), dout.as<float>());
  std::vector<float> out(blocks);
  dout.download(out.data(), blocks * 4);
  for (int b = 0; b < blocks; ++b) {
    float want = 0;
    for (int t = 0; t < 128; ++t) want += in[static_cast<size_t>(b * 128 + t)];
    EXPECT_EQ(out[static_cast<size_t>(b)], want) << "block " << b;
  }
  // Without the barrier, threads run in shuffled order and read partial sums not yet written:
  // the emulator must make that visible rather than let the race pass.
  launch_kernel("racy block sum", block_sum_kernel<false>, blocks, 128, 0, nullptr, din.as<const float>(),
                dout.as<float>());
  dout.download(out.data(), blocks * 4);
  int wrong = 0;
  for (int b = 0; b < blocks; ++b) {
    float want = 0;
    for (int t = 0; t < 128; ++t) want += in[static_cast<size_t>(b * 128 + t)];
    wrong += out[static_cast<size_t>(b)] != want;
  }
  EXPECT_GT(wrong, 0) << "a missing __syncthreads went unnoticed";
}

// ---------------------------------------------------------------------------------------------
__global__ void dynamic_shared_kernel(float* out) {
  FLASHGPT_DYNAMIC_SHARED(float, sm);
  const int t = static_cast<int>(threadIdx.x);
  out[blockIdx.x * 64 + t] = sm[t];  // read before anyone wrote: poison
  __syncthreads();
  sm[t] = static_cast<float>(t);
}

TEST(Simt, DynamicSharedMemoryStartsPoisonedInEveryBlock) {
  cuda::DeviceBuffer out(2 * 64 * 4);
  launch_kernel("dynamic shared", dynamic_shared_kernel, 2, 64, 64 * sizeof(float), nullptr, out.as<float>());
  std::vector<float> h(128);
  out.download(h.data(), h.size() * 4);
  for (float x : h) EXPECT_TRUE(std::isnan(x));
}

TEST(Simt, DeviceMemoryStartsPoisoned) {
  cuda::DeviceBuffer buf(16);
  std::vector<float> h(4);
  buf.download(h.data(), 16);
  for (float x : h) EXPECT_TRUE(std::isnan(x));
}

// ---------------------------------------------------------------------------------------------
__global__ void deadlock_kernel(int* out) {
  const int t = static_cast<int>(threadIdx.x);
  if (t >= 32 && t < 48) {
    __syncwarp();  // waits for lanes 16–31 of warp 1, which are at the block barrier
  } else {
    __syncthreads();
  }
  out[t] = t;
}

__global__ void exited_lane_kernel(int* out) {
  const int t = static_cast<int>(threadIdx.x);
  if (t == 31) return;
  out[t] = __shfl_xor_sync(0xffffffffu, t, 1);
}

__global__ void outside_mask_kernel(int* out) {
  const int t = static_cast<int>(threadIdx.x);
  if (t < 16) out[t] = __shfl_sync(0x0000ffffu, t, 20);
}

TEST(Simt, ReportsDeadlocksAndBadWarpMasks) {
  cuda::DeviceBuffer out(64 * sizeof(int));
  const std::string deadlock =
      error_of([&] { launch_kernel("deadlock", deadlock_kernel, 1, 64, 0, nullptr, out.as<int>()); });
  EXPECT_NE(deadlock.find("deadlocks"), std::string::npos) << deadlock;
  EXPECT_NE(deadlock.find("kernel deadlock"), std::string::npos) << deadlock;

  const std::string exited =
      error_of([&] { launch_kernel("exited lane", exited_lane_kernel, 1, 32, 0, nullptr, out.as<int>()); });
  EXPECT_NE(exited.find("lane 31, which has exited"), std::string::npos) << exited;

  const std::string outside =
      error_of([&] { launch_kernel("outside mask", outside_mask_kernel, 1, 32, 0, nullptr, out.as<int>()); });
  EXPECT_NE(outside.find("reads lane 20, outside its mask"), std::string::npos) << outside;
}

TEST(Simt, BadLaunchConfigurationsFailLikeTheRuntime) {
  cuda::DeviceBuffer out(64 * sizeof(int));
  const std::string too_many =
      error_of([&] { launch_kernel("huge block", exited_lane_kernel, 1, 2048, 0, nullptr, out.as<int>()); });
  EXPECT_NE(too_many.find("huge block"), std::string::npos) << too_many;
  EXPECT_NE(too_many.find("invalid configuration"), std::string::npos) << too_many;
  const std::string grid_y = error_of(
      [&] { launch_kernel("tall grid", exited_lane_kernel, dim3(1, 70000), 32, 0, nullptr, out.as<int>()); });
  EXPECT_NE(grid_y.find("invalid configuration"), std::string::npos) << grid_y;
  const std::string smem = error_of(
      [&] { launch_kernel("big shared", dynamic_shared_kernel, 1, 64, 300 * 1024, nullptr, out.as<float>()); });
  EXPECT_NE(smem.find("invalid argument"), std::string::npos) << smem;
}

// ---------------------------------------------------------------------------------------------
namespace wmma = nvcuda::wmma;

// C = A·B + C for one 16×16×16 tile; B column-major when kColB.
template <bool kColB>
__global__ void wmma_kernel(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c, int offset) {
  using LayoutB = std::conditional_t<kColB, wmma::col_major, wmma::row_major>;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::load_matrix_sync(fa, a + offset, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::load_matrix_sync(fc, c, 16, wmma::mem_row_major);
  wmma::mma_sync(fc, fa, fb, fc);
  for (int i = 0; i < fc.num_elements; ++i) fc.x[i] *= 2.0f;
  wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}

TEST(Simt, WmmaTilesMultiplyAndCheckAlignment) {
  std::vector<__nv_bfloat16> a(256), b(256);
  std::vector<float> c(256);
  for (int i = 0; i < 256; ++i) {
    a[static_cast<size_t>(i)] = __float2bfloat16(static_cast<float>(i % 7 - 3));
    b[static_cast<size_t>(i)] = __float2bfloat16(static_cast<float>(i % 5 - 2) * 0.5f);
    c[static_cast<size_t>(i)] = static_cast<float>(i);
  }
  cuda::DeviceBuffer da(512), db(512), dc(1024);
  da.upload(a.data(), 512);
  db.upload(b.data(), 512);
  for (bool col : {false, true}) {
    dc.upload(c.data(), 1024);
    if (col) {
      launch_kernel("wmma", wmma_kernel<true>, 1, 32, 0, nullptr, da.as<const __nv_bfloat16>(),
                    db.as<const __nv_bfloat16>(), dc.as<float>(), 0);
    } else {
      launch_kernel("wmma", wmma_kernel<false>, 1, 32, 0, nullptr, da.as<const __nv_bfloat16>(),
                    db.as<const __nv_bfloat16>(), dc.as<float>(), 0);
    }
    std::vector<float> got(256);
    dc.download(got.data(), 1024);
    for (int r = 0; r < 16; ++r)
      for (int n = 0; n < 16; ++n) {
        double want = c[static_cast<size_t>(r * 16 + n)];
        for (int k = 0; k < 16; ++k) {
          const float bk = __bfloat162float(b[static_cast<size_t>(col ? n * 16 + k : k * 16 + n)]);
          want += static_cast<double>(__bfloat162float(a[static_cast<size_t>(r * 16 + k)])) * bk;
        }
        EXPECT_EQ(got[static_cast<size_t>(r * 16 + n)], static_cast<float>(2 * want)) << r << "," << n;
      }
  }
  // Tensor-core loads need 32-byte aligned pointers: 8 bf16 past an aligned one is not.
  const std::string misaligned = error_of([&] {
    launch_kernel("misaligned wmma", wmma_kernel<false>, 1, 32, 0, nullptr, da.as<const __nv_bfloat16>(),
                  db.as<const __nv_bfloat16>(), dc.as<float>(), 8);
  });
  EXPECT_NE(misaligned.find("not 32-byte aligned"), std::string::npos) << misaligned;
}

}  // namespace
}  // namespace flashgpt
