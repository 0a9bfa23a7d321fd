// GPU discovery through the CUDA runtime. Every call is checked; a machine without a driver or a
// GPU is reported, not thrown.
#include <cuda_runtime.h>

#include "flashgpt/core/device.h"

namespace flashgpt {

DeviceReport probe_devices() {
  DeviceReport r;
  r.cuda_built = true;
  r.cuda_architectures = FLASHGPT_CUDA_ARCHITECTURES;
  cudaRuntimeGetVersion(&r.runtime_version);
  if (cudaDriverGetVersion(&r.driver_version) != cudaSuccess || r.driver_version == 0) {
    r.driver_version = 0;
    r.why_none = "no NVIDIA driver on this machine (libcuda is not loadable)";
    cudaGetLastError();
    return r;
  }
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    r.why_none = std::string("the CUDA driver reports: ") + cudaGetErrorString(e);
    cudaGetLastError();  // clear the sticky error so later probes start clean
    return r;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    r.gpus.push_back({i, p.name, p.major, p.minor, static_cast<int64_t>(p.totalGlobalMem), p.multiProcessorCount,
                      false});
  }
  if (r.gpus.empty()) r.why_none = "the CUDA driver lists no usable GPU";
  return r;
}

}  // namespace flashgpt
