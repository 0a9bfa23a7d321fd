#include "device_choice.h"

#include <fmt/format.h>

#include "flashgpt/core/device.h"
#include "flashgpt/core/error.h"

namespace flashgpt::cli {

void add_device_flags(CLI::App& sub, DeviceFlags& flags, const std::string& what) {
  sub.add_option("--device", flags.device,
                 "cpu, cuda, or auto: the GPU when this build and machine have one and the model runs there, else "
                 "the CPU with a line saying why")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}))
      ->capture_default_str();
  sub.add_option("--precision", flags.precision,
                 "GPU arithmetic for " + what +
                     ": bf16 (bf16 weights and activations, fp32 accumulation) or fp32 (parity with the CPU)")
      ->check(CLI::IsMember({"bf16", "fp32"}))
      ->capture_default_str();
}

DeviceChoice choose_device(const DeviceFlags& flags,
                           const std::function<std::string(cuda::Precision)>& model_reason) {
  FLASHGPT_CHECK(flags.device == "cpu" || flags.device == "cuda" || flags.device == "auto",
                 "--device: unknown device '{}' (expected cpu, cuda or auto)", flags.device);
  DeviceChoice choice;
  choice.precision = cuda::parse_precision(flags.precision, "--precision");
  if (flags.device == "cpu") {
    choice.line = "device: cpu";
    return choice;
  }
  const DeviceReport r = probe_devices();
  const std::string why = r.gpus.empty() ? r.why_none : model_reason(choice.precision);
  if (why.empty()) {
    const GpuInfo& g = r.gpus.front();
    choice.gpu = true;
    choice.line = fmt::format("device: cuda:{} ({}, compute capability {}.{}), {}", g.index, g.name, g.cc_major,
                              g.cc_minor, cuda::to_string(choice.precision));
    return choice;
  }
  FLASHGPT_CHECK(flags.device != "cuda", "--device cuda: {}", why);
  choice.line = fmt::format("device: cpu (--device auto: {})", why);
  return choice;
}

}  // namespace flashgpt::cli
