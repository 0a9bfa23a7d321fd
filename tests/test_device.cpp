// Device discovery: never throws, and either lists GPUs or says why there are none. On a machine
// without a GPU the GPU check reports itself skipped.
#include <gtest/gtest.h>

#include "flashgpt/core/device.h"

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
}  // namespace flashgpt
