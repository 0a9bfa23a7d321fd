// Device memory: an owning buffer, copies between host and device, and waiting for the device.
// Every call is checked; a failure is a flashgpt::Error naming the call and the runtime's reason.
// (In the emulated build, src/cuda/simt, "device" memory is host memory that starts as NaN bytes.)
#pragma once

#include <cstddef>
#include <cstdint>

#include "flashgpt/cuda/abi.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

// Device memory, copies in and out, freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;  // empty
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }
  void upload(const void* host, size_t bytes);
  void download(void* host, size_t bytes) const;
  void fill_bytes(int value);  // e.g. 0xFF poisons floats with NaN

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// How many DeviceBuffers this process has allocated so far. Work recorded with pointers into
// device buffers (a CUDA graph) stays valid while this count stands still: no buffer can have been
// replaced without an allocation.
uint64_t allocation_epoch();

// Copies of `bytes` between host and device memory, or within the device, and fills, queued on the
// calling thread's current stream (src/cuda/stream.h; the default stream unless set); the host
// copies return when the data has arrived.
void copy_to_device(void* device_dst, const void* host_src, size_t bytes);
void copy_to_host(void* host_dst, const void* device_src, size_t bytes);
void copy_on_device(void* device_dst, const void* device_src, size_t bytes);
void fill_device_bytes(void* device_dst, int value, size_t bytes);

// Waits for the device and throws on any error a kernel raised.
void synchronize();

// Starts (true) or stops (false) the profilers' capture, for a program run under one that starts
// with capture off (`ncu --profile-from-start off`, `nsys profile --capture-range=cudaProfilerApi`),
// so that it records just the work between. Does nothing on the emulator.
void profiler_capture(bool on);

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
