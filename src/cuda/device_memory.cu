// Device memory and copies (flashgpt/cuda/device_memory.h), compiled for the GPU and for the
// emulator alike.
#include <algorithm>
#include <atomic>
#include <string>

#include "cuda/device_math.h"
#include "cuda/platform.h"
#include "flashgpt/cuda/device_memory.h"

#if !defined(FLASHGPT_SIMT)
#include <cuda_profiler_api.h>
#endif

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {
std::atomic<uint64_t> g_allocations{0};
}  // namespace

uint64_t allocation_epoch() { return g_allocations.load(std::memory_order_relaxed); }

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  FLASHGPT_CUDA_CHECK(cudaMalloc(&ptr_, bytes > 0 ? bytes : 1));
  g_allocations.fetch_add(1, std::memory_order_relaxed);
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

void DeviceBuffer::upload(const void* host, size_t bytes) {
  FLASHGPT_CUDA_REQUIRE(bytes <= bytes_, "device buffer: uploading " + std::to_string(bytes) + " bytes into " +
                                             std::to_string(bytes_));
  copy_to_device(ptr_, host, bytes);
}

void DeviceBuffer::download(void* host, size_t bytes) const {
  FLASHGPT_CUDA_REQUIRE(bytes <= bytes_, "device buffer: downloading " + std::to_string(bytes) + " bytes from " +
                                             std::to_string(bytes_));
  copy_to_host(host, ptr_, bytes);
}

void DeviceBuffer::fill_bytes(int value) { fill_device_bytes(ptr_, value, bytes_); }

// The host copies wait for their stream, so the host may reuse or read its buffer on return.
void copy_to_device(void* device_dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return;
  const int timed = kernel_timing_begin("copy host to device", current_stream());
  FLASHGPT_CUDA_CHECK(cudaMemcpyAsync(device_dst, host_src, bytes, cudaMemcpyHostToDevice, current_stream()));
  kernel_timing_end(timed, current_stream());
  FLASHGPT_CUDA_CHECK(cudaStreamSynchronize(current_stream()));
}

void copy_to_host(void* host_dst, const void* device_src, size_t bytes) {
  if (bytes == 0) return;
  const int timed = kernel_timing_begin("copy device to host", current_stream());
  FLASHGPT_CUDA_CHECK(cudaMemcpyAsync(host_dst, device_src, bytes, cudaMemcpyDeviceToHost, current_stream()));
  kernel_timing_end(timed, current_stream());
  FLASHGPT_CUDA_CHECK(cudaStreamSynchronize(current_stream()));
}

void copy_on_device(void* device_dst, const void* device_src, size_t bytes) {
  if (bytes > 0) {
    const int timed = kernel_timing_begin("copy on device", current_stream());
    FLASHGPT_CUDA_CHECK(cudaMemcpyAsync(device_dst, device_src, bytes, cudaMemcpyDeviceToDevice, current_stream()));
    kernel_timing_end(timed, current_stream());
  }
}

void fill_device_bytes(void* device_dst, int value, size_t bytes) {
  if (bytes == 0) return;
  const int timed = kernel_timing_begin("memset", current_stream());
  FLASHGPT_CUDA_CHECK(cudaMemsetAsync(device_dst, value, bytes, current_stream()));
  kernel_timing_end(timed, current_stream());
}

void* reduction_scratch(size_t bytes) {
  static DeviceBuffer scratch;
  if (scratch.bytes() < bytes) {
    synchronize();  // kernels queued earlier may still use the old buffer
    scratch = DeviceBuffer(std::max(bytes, 2 * scratch.bytes()));
  }
  return scratch.get();
}

void synchronize() {
  FLASHGPT_CUDA_CHECK(cudaDeviceSynchronize());
  FLASHGPT_CUDA_CHECK(cudaGetLastError());
}

void profiler_capture(bool on) {
#if defined(FLASHGPT_SIMT)
  (void)on;
#else
  FLASHGPT_CUDA_CHECK(on ? cudaProfilerStart() : cudaProfilerStop());
#endif
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
