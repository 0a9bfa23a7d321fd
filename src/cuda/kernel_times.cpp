// KernelTimes (flashgpt/cuda/kernel_times.h): a pool of CUDA events reused across reads, one pair
// per span, and the spans' names; on the emulator the host clock instead of events.
#include "flashgpt/cuda/kernel_times.h"

#include <algorithm>
#include <chrono>
#include <map>

#include "cuda/cuda_check.h"
#include "cuda/kernel_timing.h"
#include "cuda/stream_capture.h"
#include "flashgpt/cuda/device_memory.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

struct KernelTimes::Impl {
  struct Span {
    std::string name;
    int start = -1, end = -1;  // marks
  };
  std::vector<Span> spans;
#if defined(FLASHGPT_SIMT)
  std::vector<std::chrono::steady_clock::time_point> marks;
  int mark(cudaStream_t) {
    marks.push_back(std::chrono::steady_clock::now());
    return static_cast<int>(marks.size()) - 1;
  }
  double elapsed_ms(int a, int b) const {
    return std::chrono::duration<double, std::milli>(marks[static_cast<size_t>(b)] - marks[static_cast<size_t>(a)])
        .count();
  }
  void reset() { marks.clear(); }
  void release() {}
#else
  std::vector<cudaEvent_t> events;  // the pool; the first `used` hold this read's marks
  size_t used = 0;
  int mark(cudaStream_t stream) {
    if (used == events.size()) {
      cudaEvent_t e = nullptr;
      FLASHGPT_CUDA_CHECK(cudaEventCreate(&e));
      events.push_back(e);
    }
    FLASHGPT_CUDA_CHECK(cudaEventRecord(events[used], stream));
    return static_cast<int>(used++);
  }
  double elapsed_ms(int a, int b) const {
    float ms = 0;
    FLASHGPT_CUDA_CHECK(cudaEventElapsedTime(&ms, events[static_cast<size_t>(a)], events[static_cast<size_t>(b)]));
    return ms;
  }
  void reset() { used = 0; }
  void release() {
    for (cudaEvent_t e : events) cudaEventDestroy(e);  // at teardown: a failure has nowhere to go
  }
#endif
};

namespace {
thread_local KernelTimes::Impl* g_recording = nullptr;
}  // namespace

KernelTimes::KernelTimes() : impl_(std::make_unique<Impl>()) {}

KernelTimes::~KernelTimes() {
  if (g_recording == impl_.get()) g_recording = nullptr;
  impl_->release();
}

std::vector<KernelTime> KernelTimes::read() {
  synchronize();
  std::map<std::string, KernelTime> by_name;
  for (const Impl::Span& s : impl_->spans) {
    if (s.end < 0) continue;  // a launch that failed
    KernelTime& k = by_name[s.name];
    k.name = s.name;
    ++k.launches;
    k.ms += impl_->elapsed_ms(s.start, s.end);
  }
  impl_->spans.clear();
  impl_->reset();
  std::vector<KernelTime> out;
  for (auto& [name, k] : by_name) out.push_back(std::move(k));
  std::sort(out.begin(), out.end(), [](const KernelTime& a, const KernelTime& b) { return a.ms > b.ms; });
  return out;
}

KernelTimesScope::KernelTimesScope(KernelTimes& times) : saved_(g_recording) { g_recording = times.impl_.get(); }

KernelTimesScope::~KernelTimesScope() { g_recording = saved_; }

bool kernel_timing_active() { return g_recording != nullptr; }

int kernel_timing_begin(std::string_view name, cudaStream_t stream) {
  KernelTimes::Impl* r = g_recording;
  if (!r || stream_capturing(stream)) return -1;
  r->spans.push_back({std::string(name), r->mark(stream), -1});
  return static_cast<int>(r->spans.size()) - 1;
}

void kernel_timing_end(int span, cudaStream_t stream) {
  KernelTimes::Impl* r = g_recording;
  if (!r || span < 0 || static_cast<size_t>(span) >= r->spans.size()) return;
  r->spans[static_cast<size_t>(span)].end = r->mark(stream);
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
