#include <fmt/format.h>

#include "flashgpt/core/device.h"
#include "flashgpt/core/error.h"

namespace flashgpt {

DeviceChoice choose_device(const DeviceReport& r, const std::string& device,
                           const std::function<std::string()>& why_not, const std::string& precision) {
  FLASHGPT_CHECK(device == "cpu" || device == "cuda" || device == "auto",
                 "--device: unknown device '{}' (expected cpu, cuda or auto)", device);
  if (device == "cpu") return {};
  const std::string why = r.gpus.empty() ? r.why_none : why_not();
  if (why.empty()) {
    const GpuInfo& g = r.gpus.front();
    return {true, fmt::format("device: cuda:{} ({}, compute capability {}.{}), {}", g.index, g.name, g.cc_major,
                              g.cc_minor, precision)};
  }
  FLASHGPT_CHECK(device != "cuda", "--device cuda: {}", why);
  return {false, fmt::format("device: cpu (--device auto: {})", why)};
}

}  // namespace flashgpt
