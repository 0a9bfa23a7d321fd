// What this build and this machine offer beyond the CPU: whether the CUDA backend was compiled in,
// and the GPUs the CUDA driver reports. Probing never fails: no driver or no GPU is a report with
// the driver's reason, so `--device auto` can fall back to the CPU with one clear line.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace flashgpt {

struct GpuInfo {
  int index = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;  // compute capability
  int64_t memory_bytes = 0;
  int multiprocessors = 0;
  bool emulated = false;  // the CPU emulator's (src/cuda/simt): right answers, no speed
};

struct DeviceReport {
  bool cuda_built = false;          // this build has the CUDA backend
  std::string cuda_architectures;   // the architectures it was compiled for, e.g. "80,86,89,90a"
  int driver_version = 0;           // CUDA driver API version (e.g. 13000), 0 when no driver
  int runtime_version = 0;          // CUDA runtime the build links
  std::vector<GpuInfo> gpus;
  std::string why_none;             // when gpus is empty: the reason (no driver, no device, CPU-only build)
};

DeviceReport probe_devices();

// Where a command runs for `--device` (cpu, cuda or auto) among the GPUs of `report` (the CUDA
// backend's cuda::devices(): the driver's, or the CPU emulator's one), given why its model cannot
// run on the GPU (why_not: "" when it can; asked only when a GPU is there): the GPU, with the line
// naming it and `precision`; or the CPU, with (for auto) the line saying why. --device cuda with a
// reason is an error naming it; an explicit cpu has no line.
struct DeviceChoice {
  bool gpu = false;
  std::string line;
};
DeviceChoice choose_device(const DeviceReport& report, const std::string& device,
                           const std::function<std::string()>& why_not, const std::string& precision);

}  // namespace flashgpt
