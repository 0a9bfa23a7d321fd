// The CPU emulator of the CUDA execution model (src/cuda/simt) that the CUDA kernels' tests run
// on where no GPU exists: its shuffles, votes, barriers and WMMA tiles against their documented
// semantics, and the faults it must report — a missing barrier, a deadlock, a warp mask naming an
// exited lane, a bad launch, a misaligned tensor-core load — and the Ampere instructions
// (mma.m16n8k16, ldmatrix, cp.async) against the PTX ISA's fragment layouts, and the misuse of
// Hopper's warpgroup MMA it must expose (its products are tested by test_cuda_warpgroup),
// Hopper's mbarriers and tensor copies (TMA), and its register reallocation (setmaxnreg). Built
// only with the emulator.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "cuda/platform.h"
#include "cuda/tensor_core.h"
#include "cuda/tma.h"
#include "cuda/warpgroup.h"
#include "flashgpt/core/error.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/device_memory.h"
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

// Each block records when it ran and adds its value into one float: the order of the blocks is
// drawn afresh per launch, repeatable from a seed, and shows in an fp32 atomic sum.
__global__ void block_order_kernel(int* ticket, int* ran_at, const float* values, float* sum) {
  if (threadIdx.x != 0) return;
  ran_at[blockIdx.x] = atomicAdd(ticket, 1);
  atomicAdd(sum, values[blockIdx.x]);
}

TEST(Simt, BlocksRunInARandomOrderThatASeedRepeats) {
  const int blocks = 64;
  std::vector<float> values(blocks);
  for (int i = 0; i < blocks; ++i) values[i] = (i % 2 ? 1.0f : -1.0f) * std::ldexp(1.0f + 0.37f * i, i % 24);
  cuda::DeviceBuffer ticket(sizeof(int)), ran_at(blocks * sizeof(int)), dvalues(blocks * sizeof(float)),
      sum(sizeof(float));
  dvalues.upload(values.data(), values.size() * sizeof(float));
  auto run = [&](uint64_t seed) {
    simt::reseed(seed);
    const int zero = 0;
    const float fzero = 0.0f;
    ticket.upload(&zero, sizeof(int));
    sum.upload(&fzero, sizeof(float));
    launch_kernel("block order", block_order_kernel, blocks, 32, 0, nullptr, ticket.as<int>(), ran_at.as<int>(),
                  dvalues.as<float>(), sum.as<float>());
    std::pair<std::vector<int>, float> r{std::vector<int>(blocks), 0.0f};
    ran_at.download(r.first.data(), blocks * sizeof(int));
    sum.download(&r.second, sizeof(float));
    return r;
  };
  const auto a = run(1), again = run(1), b = run(2);
  EXPECT_EQ(a.first, again.first);
  EXPECT_EQ(a.second, again.second);
  std::vector<int> in_order(blocks);
  for (int i = 0; i < blocks; ++i) in_order[i] = i;
  EXPECT_NE(a.first, in_order) << "blocks ran in grid order";
  EXPECT_NE(a.first, b.first);
  auto sorted = a.first;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, in_order) << "every block ran exactly once";
  bool sums_differ = a.second != b.second;
  for (uint64_t seed = 3; seed < 10 && !sums_differ; ++seed) sums_differ = run(seed).second != a.second;
  EXPECT_TRUE(sums_differ) << "an fp32 atomic sum came out the same in every block order";
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

// On the hardware a host read of a cudaMalloc'd pointer faults; here too, naming the buffer.
TEST(Simt, HostCodeTouchingDeviceMemoryFaults) {
  cuda::DeviceBuffer buf(64);
  const std::vector<int> ones(16, 1);
  buf.upload(ones.data(), 64);  // inside the runtime call, device memory is open to it
  std::vector<int> back(16);
  buf.download(back.data(), 64);
  EXPECT_EQ(back, ones);
  const volatile int* p = buf.as<int>();
  EXPECT_DEATH((void)p[3], "host code touched device memory: byte 12 of a 64-byte cudaMalloc'd buffer");
  volatile int* w = buf.as<int>();
  EXPECT_DEATH(w[15] = 0, "byte 60 of a 64-byte");
}

__global__ void copy_one_kernel(const int* in, int* out) { out[threadIdx.x] = in[threadIdx.x]; }

// A kernel handed a host pointer would fault on the GPU; the launch is refused here, naming it.
TEST(Simt, KernelsTakeDevicePointersOnly) {
  cuda::DeviceBuffer in(4 * 4), out(4 * 4);
  const std::vector<int> host{1, 2, 3, 4};
  in.upload(host.data(), 16);
  launch_kernel("copy one", copy_one_kernel, 1, 4, 0, nullptr, in.as<int>() + 0, out.as<int>());
  std::vector<int> back(4);
  out.download(back.data(), 16);
  EXPECT_EQ(back, host);
  const std::string e =
      error_of([&] { launch_kernel("copy one", copy_one_kernel, 1, 4, 0, nullptr, host.data(), out.as<int>()); });
  EXPECT_NE(e.find("kernel copy one: pointer argument 0 is not device memory"), std::string::npos) << e;

  // The same for pointers inside a struct argument: an attention mask whose lengths are on the host.
  const AttentionDims d{1, 1, 1, 1, 1, 4, 4};
  cuda::DeviceBuffer qkv(3 * 4 * 4), o(4 * 4), lse(4);
  const std::vector<float> values(12, 0.5f);
  qkv.upload(values.data(), values.size() * 4);
  const std::vector<int32_t> lengths{1};
  AttentionMask m{false, 0};
  m.kv_lengths = lengths;
  const float* q = qkv.as<float>();
  const std::string e2 = error_of([&] { cuda::flash_forward_fp32(d, m, 0.5f, q, q + 4, q + 8, o.as<float>(), lse.as<float>()); });
  EXPECT_NE(e2.find("kernel flash forward: pointer argument 1 is not device memory"), std::string::npos) << e2;
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

// ---------------------------------------------------------------------------------------------
// Producer and consumer warps over named barriers, as the wgmma backward exchanges dQ: warps 2–3
// write a round's values into shared memory and arrive at barrier 1; warps 0–1 wait there and read
// them. The next round's writes come after a block barrier that the readers reach only once done.
template <bool Barrier>
__global__ void producer_consumer_kernel(int* out, int rounds) {
  __shared__ int box[64];
  const int t = static_cast<int>(threadIdx.x);
  for (int r = 0; r < rounds; ++r) {
    __syncthreads();
    if (t >= 64) {
      box[t - 64] = 1000 * r + t;
      if (Barrier) cuda::named_barrier_arrive(1, 128);
    } else {
      if (Barrier) cuda::named_barrier_sync(1, 128);
      out[r * 64 + t] = box[t];
    }
  }
}

__global__ void named_misuse_kernel(int* out, int which) {
  const int t = static_cast<int>(threadIdx.x);
  if (which == 0) cuda::named_barrier_sync(0, 64);                // id 0 is __syncthreads'
  if (which == 1) cuda::named_barrier_sync(1, t < 32 ? 64 : 32);  // two counts for one barrier
  if (which == 2 && t < 32) cuda::named_barrier_sync(2, 64);      // the other warp never comes
  if (which == 3 && t < 32) cuda::named_barrier_arrive(3, 64);   // a round left open at the end
  out[t] = t;
}

TEST(Simt, NamedBarriersOrderProducersAndConsumers) {
  const int rounds = 6;
  cuda::DeviceBuffer out(rounds * 64 * sizeof(int));
  std::vector<int> got(rounds * 64);
  launch_kernel("producer consumer", producer_consumer_kernel<true>, 3, 128, 0, nullptr, out.as<int>(), rounds);
  out.download(got.data(), got.size() * sizeof(int));
  for (int r = 0; r < rounds; ++r)
    for (int t = 0; t < 64; ++t) ASSERT_EQ(got[static_cast<size_t>(r * 64 + t)], 1000 * r + 64 + t) << r << " " << t;
  // Without the barrier the consumers read what the producers have not yet written, in some block.
  launch_kernel("racy producer consumer", producer_consumer_kernel<false>, 8, 128, 0, nullptr, out.as<int>(), rounds);
  out.download(got.data(), got.size() * sizeof(int));
  int wrong = 0;
  for (int r = 0; r < rounds; ++r)
    for (int t = 0; t < 64; ++t) wrong += got[static_cast<size_t>(r * 64 + t)] != 1000 * r + 64 + t;
  EXPECT_GT(wrong, 0) << "a missing named barrier went unnoticed";

  cuda::DeviceBuffer small(64 * sizeof(int));
  auto misuse = [&](int which) {
    return error_of([&] { launch_kernel("named misuse", named_misuse_kernel, 1, 64, 0, nullptr, small.as<int>(), which); });
  };
  EXPECT_NE(misuse(0).find("ids 1…15"), std::string::npos) << misuse(0);
  // Two counts in one round: a fault when the second joins, or, where a warp's own count completes
  // a round alone, the other warp's round that never completes.
  const std::string mixed = misuse(1);
  EXPECT_TRUE(mixed.find("joined with a count of") != std::string::npos || mixed.find("deadlocks") != std::string::npos)
      << mixed;
  const std::string stuck = misuse(2);
  EXPECT_NE(stuck.find("deadlocks"), std::string::npos) << stuck;
  EXPECT_NE(stuck.find("at a named barrier (barrier 2)"), std::string::npos) << stuck;
  EXPECT_NE(misuse(3).find("named barrier 3 was left with 32 of its round's 64 arrivals"), std::string::npos)
      << misuse(3);
}

// Hopper's TMA and mbarriers (cuda/tma.h): a box of a [40][64] tensor (as a 4-d map {64, 1, 40, 1})
// per round into one shared tile, 16 rows at a time, announced on one barrier that every thread
// waits on (parity r & 1); the tile read back in shared-memory order. Without the waits (a block
// barrier after the copy is issued instead) the reads see tiles that have not landed. The last round's rows 40–47 lie past the tensor: zeros.
template <bool Wait>
__global__ void tma_rounds_kernel(const __grid_constant__ CUtensorMap map, int rounds, uint16_t* out) {
  FLASHGPT_DYNAMIC_SHARED(unsigned char, raw);
  uint16_t* tile = reinterpret_cast<uint16_t*>(raw + (1024 - cuda::wg::smem_address(raw) % 1024) % 1024);
  uint64_t* bar = reinterpret_cast<uint64_t*>(tile + 16 * 64);
  const int t = static_cast<int>(threadIdx.x), n = static_cast<int>(blockDim.x);
  if (t == 0) {
    cuda::tma::mbarrier_init(bar, 1);
    cuda::tma::fence_mbarrier_init();
  }
  __syncthreads();
  for (int r = 0; r < rounds; ++r) {
    if (t == 0) {
      cuda::tma::mbarrier_arrive_expect_tx(bar, 16 * 128);
      cuda::tma::tma_load_4d(tile, &map, 0, 0, 16 * r, 0, bar);
    }
    if (Wait) {
      cuda::tma::mbarrier_wait(bar, static_cast<uint32_t>(r & 1));
    } else {
      __syncthreads();  // the copy has been issued: only its landing is left unordered
    }
    for (int i = t; i < 16 * 64; i += n) out[(blockIdx.x * rounds + r) * 16 * 64 + i] = tile[i];
    __syncthreads();  // every read of the tile before the next round's copy overwrites it
  }
  if (!Wait && t == 0) cuda::tma::mbarrier_wait(bar, static_cast<uint32_t>((rounds - 1) & 1));
}

__global__ void tma_misuse_kernel(const __grid_constant__ CUtensorMap map, int which) {
  FLASHGPT_DYNAMIC_SHARED(unsigned char, raw);
  unsigned char* tile = raw + (1024 - cuda::wg::smem_address(raw) % 1024) % 1024;
  uint64_t* bar = reinterpret_cast<uint64_t*>(tile + 16 * 128);
  if (threadIdx.x != 0) return;
  if (which == 0) cuda::tma::mbarrier_wait(bar, 0);  // never initialised
  cuda::tma::mbarrier_init(bar, which == 3 ? 2 : 1);
  if (which == 1) {  // two arrivals in a phase of one
    cuda::tma::mbarrier_arrive_expect_tx(bar, 256);
    cuda::tma::mbarrier_arrive(bar);
  }
  if (which == 2) {  // a destination 64 bytes off the 128-byte alignment
    cuda::tma::mbarrier_arrive_expect_tx(bar, 16 * 128);
    cuda::tma::tma_load_4d(tile + 64, &map, 0, 0, 0, 0, bar);
  }
  if (which == 3) {  // one of two arrivals: the phase never completes
    cuda::tma::mbarrier_arrive(bar);
    cuda::tma::mbarrier_wait(bar, 0);
  }
}

TEST(Simt, TensorCopiesLandSwizzledAndOnlyWaitsOrderThem) {
  const int T = 40, rounds = 3, blocks = 8;
  std::vector<uint16_t> host(static_cast<size_t>(T * 64));
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<uint16_t>(i + 1);
  cuda::DeviceBuffer x(host.size() * 2), out(static_cast<size_t>(blocks * rounds * 16 * 64) * 2);
  x.upload(host.data(), host.size() * 2);
  const uint64_t dims[4] = {64, 1, static_cast<uint64_t>(T), 1}, strides[3] = {128, 128, 128 * T};
  const uint32_t box[4] = {64, 1, 16, 1};
  CUtensorMap map;
  cuda::tma::encode_tensor_map_16bit(&map, x.get(), 4, dims, strides, box);
  const size_t shared = 16 * 128 + 8 + 1024;
  std::vector<uint16_t> got(static_cast<size_t>(blocks * rounds * 16 * 64));
  // Row r, column c of a round's box sits at chunk (c / 8) ^ (r % 8) of row r (the 128-byte swizzle).
  auto wrong_in = [&](const std::vector<uint16_t>& g) {
    int wrong = 0;
    for (int k = 0; k < blocks; ++k)
      for (int r = 0; r < rounds; ++r)
        for (int row = 0; row < 16; ++row)
          for (int c = 0; c < 64; ++c) {
            const int t = 16 * r + row;
            const uint16_t want = t < T ? host[static_cast<size_t>(t * 64 + c)] : 0;
            const size_t at = static_cast<size_t>(((k * rounds + r) * 16 + row) * 64 + ((c / 8) ^ (row % 8)) * 8 + c % 8);
            wrong += g[at] != want;
          }
    return wrong;
  };
  launch_kernel("tma rounds", tma_rounds_kernel<true>, blocks, 64, shared, nullptr, map, rounds, out.as<uint16_t>());
  out.download(got.data(), got.size() * 2);
  EXPECT_EQ(wrong_in(got), 0);
  out.fill_bytes(0);
  launch_kernel("tma rounds without waits", tma_rounds_kernel<false>, blocks, 64, shared, nullptr, map, rounds,
                out.as<uint16_t>());
  out.download(got.data(), got.size() * 2);
  EXPECT_GT(wrong_in(got), 0) << "reads before the barrier's wait went unnoticed";

  auto misuse = [&](int which) {
    return error_of([&] { launch_kernel("tma misuse", tma_misuse_kernel, 1, 32, shared, nullptr, map, which); });
  };
  EXPECT_NE(misuse(0).find("never initialised"), std::string::npos) << misuse(0);
  EXPECT_NE(misuse(1).find("more arrivals"), std::string::npos) << misuse(1);
  EXPECT_NE(misuse(2).find("128-byte aligned"), std::string::npos) << misuse(2);
  const std::string stuck = misuse(3);
  EXPECT_NE(stuck.find("deadlocks"), std::string::npos) << stuck;
  EXPECT_NE(stuck.find("waiting on an mbarrier"), std::string::npos) << stuck;
  // The host side refuses what the driver would.
  const uint32_t wide[4] = {128, 1, 16, 1};
  EXPECT_NE(error_of([&] { cuda::tma::encode_tensor_map_16bit(&map, x.get(), 4, dims, strides, wide); })
                .find("16 to 128 bytes"),
            std::string::npos);
  EXPECT_NE(error_of([&] { cuda::tma::encode_tensor_map_16bit(&map, x.get(), 4, dims, strides, box, 64); })
                .find("16 to 64 bytes"),
            std::string::npos)
      << "a 64-element box row in the 64-byte swizzle";
  EXPECT_NE(error_of([&] { cuda::tma::encode_tensor_map_16bit(&map, x.get(), 4, dims, strides, box, 32); })
                .find("a swizzle of 32 bytes"),
            std::string::npos);
  const uint64_t odd[3] = {128, 120, 128 * T};
  EXPECT_NE(error_of([&] { cuda::tma::encode_tensor_map_16bit(&map, x.get(), 4, dims, odd, box); })
                .find("multiple of 16"),
            std::string::npos);
}

// Register reallocation (setmaxnreg) in a block of three warpgroups, each thread starting at 168.
// which 0: a warp-specialized block's (warpgroup 2 lowers to 40 and gives the others enough to
// raise to 232: 64512 of 65536); then the misuses — 1: raises no lowering pays for; 2: a "raise"
// to fewer; 3: two counts in one warpgroup; 4: a count out of range.
__global__ void registers_kernel(int which, int* out) {
  const int group = static_cast<int>(threadIdx.x) / 128;
  if (which == 0) {
    if (group == 2) {
      cuda::wg::lower_registers<40>();
    } else {
      cuda::wg::raise_registers<232>();
    }
  } else if (which == 1) {
    if (group < 2) cuda::wg::raise_registers<232>();
  } else if (which == 2) {
    cuda::wg::raise_registers<160>();
  } else if (which == 3) {
    if (threadIdx.x % 128 < 64) {
      cuda::wg::raise_registers<176>();
    } else {
      cuda::wg::raise_registers<184>();
    }
  } else {
    simt::warpgroup_set_max_registers(100, true);
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = 1;
}

TEST(Simt, RegisterRaisesWaitForTheBlocksLowerings) {
  constexpr int blocks = 8, threads = 384;
  cuda::DeviceBuffer out(static_cast<size_t>(blocks * threads) * sizeof(int));
  out.fill_bytes(0);
  launch_kernel("registers", registers_kernel, blocks, threads, 0, nullptr, 0, out.as<int>());
  std::vector<int> got(static_cast<size_t>(blocks * threads));
  out.download(got.data(), got.size() * sizeof(int));
  EXPECT_EQ(std::count(got.begin(), got.end(), 1), blocks * threads) << "every thread went on past its reallocation";
  auto misuse = [&](int which, int block_threads) {
    return error_of(
        [&] { launch_kernel("registers misuse", registers_kernel, 1, block_threads, 0, nullptr, which, out.as<int>()); });
  };
  const std::string unpaid = misuse(1, threads);
  EXPECT_NE(unpaid.find("deadlocks"), std::string::npos) << unpaid;
  EXPECT_NE(unpaid.find("waiting for registers"), std::string::npos) << unpaid;
  EXPECT_NE(misuse(2, threads).find("has 168 registers a thread and asks to raise that to 160"), std::string::npos) << misuse(2, threads);
  const std::string mixed = misuse(3, threads);  // whichever thread comes first sets the warpgroup's request
  EXPECT_TRUE(mixed.find("ask for 176 and 184") != std::string::npos ||
              mixed.find("ask for 184 and 176") != std::string::npos)
      << mixed;
  EXPECT_NE(misuse(4, threads).find("multiples of 8, not 100"), std::string::npos) << misuse(4, threads);
  EXPECT_NE(misuse(0, 96).find("whole warpgroups"), std::string::npos) << misuse(0, 96);
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

// ---------------------------------------------------------------------------------------------
// One m16n8k16 product through the Ampere instructions: A (16×16) and B (16×8) reach shared
// memory by cp.async, the fragments come from ldmatrix — B once from its n-major copy and once,
// transposed, from its k-major copy — and D is written from the accumulator layout. seen[0] is
// what thread 0 read of A before its wait (the old contents), seen[1] after.
constexpr int kPad = 8;  // elements of padding per shared row

template <typename E>
__global__ void mma_kernel(const E* a, const E* bt, const E* bk, float* d, float* seen) {
  FLASHGPT_DYNAMIC_SHARED(E, smem);
  E* As = smem;                     // [16][16 + kPad]
  E* Bts = As + 16 * (16 + kPad);   // [8][16 + kPad]  (n-major: Bᵀ)
  E* Bks = Bts + 8 * (16 + kPad);   // [16][8 + kPad]  (k-major: B)
  const int l = static_cast<int>(threadIdx.x);
  cuda::tc::cp_async_16(As + (l / 2) * (16 + kPad) + (l % 2) * 8, a + (l / 2) * 16 + (l % 2) * 8, true);
  if (l < 16) cuda::tc::cp_async_16(Bts + (l / 2) * (16 + kPad) + (l % 2) * 8, bt + (l / 2) * 16 + (l % 2) * 8, true);
  if (l < 16) cuda::tc::cp_async_16(Bks + l * (8 + kPad), bk + l * 8, true);
  cuda::tc::cp_async_commit();
  const int mine = (l / 2) * (16 + kPad) + (l % 2) * 8;  // the first element this thread copies
  seen[l] = cuda::tc::to_float(As[mine]);
  cuda::tc::cp_async_wait<0>();
  __syncwarp();
  seen[32 + l] = cuda::tc::to_float(As[mine]);
  uint32_t fa[4], fb[2], fbt[2];
  cuda::tc::ldmatrix_x4(fa, As + (l & 15) * (16 + kPad) + (l >> 4) * 8);
  cuda::tc::ldmatrix_x2(fb, Bts + (l & 7) * (16 + kPad) + ((l >> 3) & 1) * 8);
  cuda::tc::ldmatrix_x2_trans(fbt, Bks + ((l >> 3) & 1) * 8 * (8 + kPad) + (l & 7) * (8 + kPad));
  float acc[2][4] = {{1, 1, 1, 1}, {1, 1, 1, 1}};  // C = 1
  cuda::tc::mma_16816<E>(acc[0], fa, fb);
  cuda::tc::mma_16816<E>(acc[1], fa, fbt);
  const int g = l / 4, t = l % 4;
  for (int v = 0; v < 2; ++v)
    for (int e = 0; e < 4; ++e) d[v * 128 + (g + (e >> 1) * 8) * 8 + 2 * t + (e & 1)] = acc[v][e];
}

template <typename E>
void check_mma(E (*convert)(float), float (*back)(E)) {
  std::vector<E> a(256), bt(128), bk(128);
  std::vector<float> af(256), bf(128);
  for (int i = 0; i < 256; ++i) {
    af[static_cast<size_t>(i)] = static_cast<float>((i * 7) % 11 - 5);
    a[static_cast<size_t>(i)] = convert(af[static_cast<size_t>(i)]);
  }
  for (int k = 0; k < 16; ++k)
    for (int n = 0; n < 8; ++n) {
      const float v = static_cast<float>((k * 3 + n * 5) % 9 - 4) * 0.5f;
      bf[static_cast<size_t>(k * 8 + n)] = v;
      bk[static_cast<size_t>(k * 8 + n)] = convert(v);
      bt[static_cast<size_t>(n * 16 + k)] = convert(v);
    }
  cuda::DeviceBuffer da(512), dbt(256), dbk(256), dd(1024), dseen(64 * 4);
  da.upload(a.data(), 512);
  dbt.upload(bt.data(), 256);
  dbk.upload(bk.data(), 256);
  const size_t shared = sizeof(E) * (16 * (16 + kPad) + 8 * (16 + kPad) + 16 * (8 + kPad));
  launch_kernel("mma", mma_kernel<E>, 1, 32, shared, nullptr, da.as<const E>(), dbt.as<const E>(), dbk.as<const E>(),
                dd.as<float>(), dseen.as<float>());
  std::vector<float> d(256), seen(64);
  dd.download(d.data(), 1024);
  dseen.download(seen.data(), 64 * 4);
  // Copies land at random before or at their wait: of 32, some must still be missing before it
  // (the chance that none is: 2^-32), and after the wait every one has landed.
  int early = 0;
  for (int l = 0; l < 32; ++l) {
    const float want = back(a[static_cast<size_t>((l / 2) * 16 + (l % 2) * 8)]);
    early += !std::isnan(seen[static_cast<size_t>(l)]);
    EXPECT_EQ(seen[static_cast<size_t>(32 + l)], want) << "thread " << l << " after its wait";
  }
  EXPECT_LT(early, 32) << "no cp.async waited for its wait";
  for (int v = 0; v < 2; ++v)
    for (int r = 0; r < 16; ++r)
      for (int n = 0; n < 8; ++n) {
        float want = 1.0f;
        for (int k = 0; k < 16; ++k) want += af[static_cast<size_t>(r * 16 + k)] * bf[static_cast<size_t>(k * 8 + n)];
        EXPECT_EQ(d[static_cast<size_t>(v * 128 + r * 8 + n)], want) << (v ? "transposed B " : "B ") << r << "," << n;
      }
}

TEST(Simt, AmpereMmaLdmatrixAndCpAsyncFollowThePtxLayouts) {
  check_mma<__nv_bfloat16>([](float x) { return __float2bfloat16(x); }, [](__nv_bfloat16 x) { return __bfloat162float(x); });
  check_mma<__half>([](float x) { return __float2half(x); }, [](__half x) { return __half2float(x); });
}

__global__ void ldmatrix_global_kernel(const __nv_bfloat16* g) {
  uint32_t r[4];
  cuda::tc::ldmatrix_x4(r, g + (threadIdx.x % 8) * 8);
}

__global__ void unwaited_copy_kernel(const __nv_bfloat16* g) {
  FLASHGPT_DYNAMIC_SHARED(__nv_bfloat16, smem);
  cuda::tc::cp_async_16(smem + threadIdx.x * 8, g + threadIdx.x * 8, true);
  cuda::tc::cp_async_commit();
}

TEST(Simt, AmpereInstructionsReportMisuse) {
  cuda::DeviceBuffer g(4096);
  const std::string global = error_of(
      [&] { launch_kernel("ldmatrix on global", ldmatrix_global_kernel, 1, 32, 0, nullptr, g.as<const __nv_bfloat16>()); });
  EXPECT_NE(global.find("outside the block's dynamic shared memory"), std::string::npos) << global;
  const std::string unwaited = error_of(
      [&] { launch_kernel("unwaited", unwaited_copy_kernel, 1, 32, 512, nullptr, g.as<const __nv_bfloat16>()); });
  EXPECT_NE(unwaited.find("never waited for"), std::string::npos) << unwaited;
}

// ---------------------------------------------------------------------------------------------
// Hopper's warpgroup MMA: a product lands only at its wait, its shared operands may be read as
// late as the wait, and it needs all four warps of a warpgroup.
constexpr int kWgN = 64;
using WgTile = cuda::wg::SwizzledTile<64, 64>;

// D = A·B with A = B = the 64 × 64 tile of ones (bf16 1.0 = 0x3F80): every element 64.
// out[0] is what thread 0 read of D[0][0] before the wait, out[1] after it. With overwrite, the
// block writes zeros over the operands between the issue and the wait.
__global__ void wgmma_misuse_kernel(float* out, bool overwrite) {
  FLASHGPT_DYNAMIC_SHARED(unsigned char, raw);
  auto* tile = reinterpret_cast<__nv_bfloat16*>(raw + (1024 - cuda::wg::smem_address(raw) % 1024) % 1024);
  for (int i = static_cast<int>(threadIdx.x); i < WgTile::kElems; i += 128) tile[i] = __float2bfloat16(1.0f);
  __syncthreads();
  float d[kWgN / 8][4] = {};
  for (int kk = 0; kk < 4; ++kk) {
    cuda::wg::mma_ss<__nv_bfloat16, kWgN, false>(d, WgTile::k_major(tile, 0, 16 * kk), WgTile::k_major(tile, 0, 16 * kk),
                                                 kk > 0);
  }
  cuda::wg::commit();
  const float before = d[0][0];
  if (overwrite) {
    __syncthreads();
    for (int i = static_cast<int>(threadIdx.x); i < WgTile::kElems; i += 128) tile[i] = __float2bfloat16(0.0f);
  }
  cuda::wg::wait<0>();
  if (threadIdx.x == 0) {
    out[0] = before;
    out[1] = d[0][0];
  }
}

__global__ void wgmma_partial_kernel() {
  FLASHGPT_DYNAMIC_SHARED(unsigned char, raw);
  float d[kWgN / 8][4] = {};
  const uint64_t desc = WgTile::k_major(raw, 0, 0);
  if (threadIdx.x < 96) cuda::wg::mma_ss<__nv_bfloat16, kWgN, false>(d, desc, desc, false);  // warp 3 never comes
  cuda::wg::commit();
  cuda::wg::wait<0>();
}

__global__ void wgmma_unwaited_kernel() {
  FLASHGPT_DYNAMIC_SHARED(unsigned char, raw);
  auto* tile = reinterpret_cast<__nv_bfloat16*>(raw + (1024 - cuda::wg::smem_address(raw) % 1024) % 1024);
  for (int i = static_cast<int>(threadIdx.x); i < WgTile::kElems; i += 128) tile[i] = __float2bfloat16(1.0f);
  __syncthreads();
  float d[kWgN / 8][4] = {};
  cuda::wg::mma_ss<__nv_bfloat16, kWgN, false>(d, WgTile::k_major(tile, 0, 0), WgTile::k_major(tile, 0, 0), false);
  cuda::wg::commit();
}

TEST(Simt, WarpgroupMmaLandsAtItsWaitAndReportsMisuse) {
  const size_t shared = 2 * WgTile::kElems + 1024;
  cuda::DeviceBuffer out(2 * sizeof(float));
  launch_kernel("wgmma", wgmma_misuse_kernel, 1, 128, shared, nullptr, out.as<float>(), false);
  float got[2];
  out.download(got, sizeof got);
  EXPECT_EQ(got[0], 0.0f) << "the accumulators changed before the wait";
  EXPECT_EQ(got[1], 64.0f);
  // Zeros written over the operands before the wait: the operands are read at issue or at the
  // wait, drawn per instruction, so over a few launches some product must come out short of 64.
  bool short_of = false;
  for (int run = 0; run < 8 && !short_of; ++run) {
    launch_kernel("wgmma, operands overwritten", wgmma_misuse_kernel, 1, 128, shared, nullptr, out.as<float>(), true);
    out.download(got, sizeof got);
    short_of = got[1] != 64.0f;
  }
  EXPECT_TRUE(short_of) << "operands overwritten before the wait never showed";
  const std::string partial = error_of([&] { launch_kernel("partial", wgmma_partial_kernel, 1, 128, shared, nullptr); });
  EXPECT_NE(partial.find("which has exited"), std::string::npos) << partial;
  const std::string small = error_of([&] { launch_kernel("small", wgmma_partial_kernel, 1, 96, shared, nullptr); });
  EXPECT_NE(small.find("whole warpgroup"), std::string::npos) << small;
  const std::string unwaited = error_of([&] { launch_kernel("unwaited", wgmma_unwaited_kernel, 1, 128, shared, nullptr); });
  EXPECT_NE(unwaited.find("warpgroup MMAs never waited for"), std::string::npos) << unwaited;
}

}  // namespace
}  // namespace flashgpt
