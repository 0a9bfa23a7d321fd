// probe_devices for a build without the CUDA backend (no CUDA compiler was found).
#include "flashgpt/core/device.h"

namespace flashgpt {

DeviceReport probe_devices() {
  DeviceReport r;
  r.why_none = "this build has no CUDA backend (configure where nvcc is found, with -DFLASHGPT_CUDA=ON)";
  return r;
}

}  // namespace flashgpt
