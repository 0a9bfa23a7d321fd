#include "device_flags.h"

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

}  // namespace flashgpt::cli
