// The device entry points for a build without the CUDA backend (no CUDA compiler was found):
// probing reports why, and the GPU kernels refuse with a message.
#include "flashgpt/core/device.h"
#include "flashgpt/core/error.h"
#include "flashgpt/cuda/attention_cuda.h"

namespace flashgpt {

namespace {
constexpr const char* kNoCuda = "this build has no CUDA backend (configure where nvcc is found, with -DFLASHGPT_CUDA=ON)";
}

DeviceReport probe_devices() {
  DeviceReport r;
  r.why_none = kNoCuda;
  return r;
}

namespace cuda::inline FLASHGPT_CUDA_ABI {

bool gpu_available() { return false; }
void flash_forward_fp32(const AttentionDims&, const AttentionMask&, float, const float*, const float*, const float*,
                        float*, float*) {
  fail("GPU attention: {}", kNoCuda);
}
void flash_backward_fp32(const AttentionDims&, const AttentionMask&, float, const float*, const float*, const float*,
                         const float*, const float*, const float*, float*, float*, float*) {
  fail("GPU attention: {}", kNoCuda);
}
void flash_forward_bf16(const AttentionDims&, const AttentionMask&, float, const uint16_t*, const uint16_t*,
                        const uint16_t*, uint16_t*, float*) {
  fail("GPU attention: {}", kNoCuda);
}
void flash_backward_bf16(const AttentionDims&, const AttentionMask&, float, const uint16_t*, const uint16_t*,
                         const uint16_t*, const uint16_t*, const float*, const uint16_t*, uint16_t*, uint16_t*,
                         uint16_t*) {
  fail("GPU attention: {}", kNoCuda);
}
DeviceBuffer::DeviceBuffer(size_t) { fail("device memory: {}", kNoCuda); }
DeviceBuffer::~DeviceBuffer() = default;
void DeviceBuffer::upload(const void*, size_t) {}
void DeviceBuffer::download(void*, size_t) const {}
void DeviceBuffer::fill_bytes(int) {}
void synchronize() {}

}  // namespace cuda::inline FLASHGPT_CUDA_ABI
}  // namespace flashgpt
