// CtaTrace (flashgpt/cuda/cta_trace.h): one zeroed device array of spans handed out launch by
// launch (the arithmetic over what the kernels write into it is achieved_occupancy.cpp).
#include "flashgpt/cuda/cta_trace.h"

#include <algorithm>
#include <utility>

#include "cuda/cta_trace.h"
#include "cuda/cuda_check.h"
#include "cuda/stream_capture.h"
#include "flashgpt/cuda/device_memory.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

int max_warps_per_sm() {
  int device = 0, threads = 0;
  FLASHGPT_CUDA_CHECK(cudaGetDevice(&device));
  FLASHGPT_CUDA_CHECK(cudaDeviceGetAttribute(&threads, cudaDevAttrMaxThreadsPerMultiProcessor, device));
  return threads / 32;
}

struct CtaTrace::Impl {
  DeviceBuffer slots;
  int64_t capacity = 0, used = 0, skipped = 0;
  struct Launch {
    std::string kernel;
    int64_t first = 0, ctas = 0;
  };
  std::vector<Launch> launches;
};

namespace {
thread_local CtaTrace::Impl* g_tracing = nullptr;
}  // namespace

CtaTrace::CtaTrace(int64_t capacity) : impl_(std::make_unique<Impl>()) {
  FLASHGPT_CUDA_REQUIRE(capacity > 0, "CtaTrace: the capacity must be positive, not " + std::to_string(capacity));
  impl_->capacity = capacity;
  impl_->slots = DeviceBuffer(static_cast<size_t>(capacity) * sizeof(CtaSpan));
  impl_->slots.fill_bytes(0);
  saved_ = std::exchange(g_tracing, impl_.get());
}

CtaTrace::~CtaTrace() {
  if (g_tracing == impl_.get()) g_tracing = saved_;
}

std::vector<TracedLaunch> CtaTrace::read() {
  Impl& t = *impl_;
  std::vector<TracedLaunch> out;
  if (t.used > 0) {
    std::vector<CtaSpan> all(static_cast<size_t>(t.used));
    t.slots.download(all.data(), all.size() * sizeof(CtaSpan));  // waits for the kernels
    for (const Impl::Launch& l : t.launches) {
      out.push_back({l.kernel, std::vector<CtaSpan>(all.begin() + l.first, all.begin() + l.first + l.ctas)});
    }
    fill_device_bytes(t.slots.get(), 0, static_cast<size_t>(t.used) * sizeof(CtaSpan));
  }
  t.launches.clear();
  t.used = t.skipped = 0;
  return out;
}

int64_t CtaTrace::skipped() const { return impl_->skipped; }

CtaSpan* cta_trace_slots(const char* kernel, int64_t ctas, cudaStream_t stream) {
  CtaTrace::Impl* t = g_tracing;
  if (t == nullptr) return nullptr;
  if (stream == nullptr) stream = current_stream();
  if (stream_capturing(stream)) return nullptr;
  if (ctas > t->capacity - t->used) {
    ++t->skipped;
    return nullptr;
  }
  CtaSpan* slots = t->slots.as<CtaSpan>() + t->used;
  t->launches.push_back({kernel, t->used, ctas});
  t->used += ctas;
  return slots;
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
