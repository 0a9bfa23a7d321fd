// Device discovery: never throws, and either lists GPUs or says why there are none. On a machine
// without a GPU the GPU check reports itself skipped.
#include <gtest/gtest.h>

#include <cmath>

#include "flashgpt/core/device.h"
#include "flashgpt/core/half_precision.h"

namespace flashgpt {
namespace {

TEST(Devices, ProbeReportsGpusOrWhyNot) {
  const DeviceReport r = probe_devices();
#ifdef FLASHGPT_HAVE_CUDA
  EXPECT_TRUE(r.cuda_built);
  EXPECT_FALSE(r.cuda_architectures.empty());
  EXPECT_GT(r.runtime_version, 0);
#else
  EXPECT_FALSE(r.cuda_built);
#endif
  if (r.gpus.empty()) {
    EXPECT_FALSE(r.why_none.empty());
    GTEST_SKIP() << "no GPU here: " << r.why_none;
  }
  for (const GpuInfo& g : r.gpus) {
    EXPECT_FALSE(g.name.empty());
    EXPECT_GT(g.memory_bytes, 0);
    EXPECT_GE(g.cc_major, 7);
  }
}

}  // namespace
// The host's bf16 and fp16 conversions (core/half_precision.h), which fill the GPU tests' and
// benchmarks' tensors: round to nearest even, ties to the even pattern, the range ends, and an
// exact round trip of every finite pattern.
TEST(HalfPrecision, RoundsToNearestEvenAndRoundTrips) {
  EXPECT_EQ(float_to_bf16_bits(1.0f), 0x3F80u);
  EXPECT_EQ(float_to_bf16_bits(1.0f + 0x1p-8f), 0x3F80u);      // tie: to the even pattern
  EXPECT_EQ(float_to_bf16_bits(1.0f + 0x3p-8f), 0x3F82u);      // tie: up to the even pattern
  EXPECT_EQ(float_to_bf16_bits(-2.0f), 0xC000u);
  EXPECT_TRUE(std::isnan(bf16_bits_to_float(float_to_bf16_bits(NAN))));
  EXPECT_EQ(float_to_fp16_bits(1.0f), 0x3C00u);
  EXPECT_EQ(float_to_fp16_bits(1.0f + 0x1p-11f), 0x3C00u);
  EXPECT_EQ(float_to_fp16_bits(1.0f + 0x3p-11f), 0x3C02u);
  EXPECT_EQ(float_to_fp16_bits(65504.0f), 0x7BFFu);             // the largest half
  EXPECT_EQ(float_to_fp16_bits(65519.0f), 0x7BFFu);
  EXPECT_EQ(float_to_fp16_bits(65520.0f), 0x7C00u);             // rounds to ∞
  EXPECT_EQ(float_to_fp16_bits(0x1p-24f), 0x0001u);             // the smallest subnormal
  EXPECT_EQ(float_to_fp16_bits(0x1p-25f), 0x0000u);             // its half: a tie, to zero
  EXPECT_EQ(float_to_fp16_bits(-0x1p-14f), 0x8400u);            // the smallest normal
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const auto bits = static_cast<uint16_t>(h);
    if ((bits & 0x7C00u) == 0x7C00u) continue;  // ∞ and NaN
    ASSERT_EQ(float_to_fp16_bits(fp16_bits_to_float(bits)), bits) << std::hex << h;
    if ((bits & 0x7F80u) != 0x7F80u) {
      ASSERT_EQ(float_to_bf16_bits(bf16_bits_to_float(bits)), bits) << std::hex << h;
    }
  }
}

}  // namespace flashgpt
