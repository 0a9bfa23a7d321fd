// The emulator's runtime (simt.h): device memory, fenced off from host code by page protection;
// streams and graph capture; copies, fills and device attributes; the runtime's errors.
#include <sys/mman.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cuda/simt/simt.h"
#include "cuda/simt/simt_internal.h"
#include "flashgpt/core/error.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

namespace flashgpt::simt {

using namespace detail;

namespace {

// Device memory is off limits to host code, as on the hardware, where a host read of a cudaMalloc'd
// pointer faults. Every allocation is its own mapping, [guard page][data pages][guard page], and
// its data pages are readable only inside a DeviceAccess scope (kernels, copies, memsets, the
// emulated GEMMs). Host code touching device memory anywhere else — in any library, instrumented
// or not — faults, and the fault handler names the buffer. The guard pages, and under
// AddressSanitizer the poisoned slack past the last byte, catch kernels running off either end.
struct Mapping {
  unsigned char* base;  // the leading guard page
  size_t total;         // bytes mapped, guards included
  size_t data_pages;    // bytes of the data pages
  size_t bytes;         // bytes asked for
};
struct Allocations {
  std::map<const void*, Mapping> live;  // data start → its mapping
  int open_scopes = 0;
  struct sigaction previous_segv {};
};
Allocations& allocations() {
  static Allocations a;
  return a;
}
size_t page_bytes() {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return page;
}
void set_open(const void* data, const Mapping& m, bool open) {
  if (mprotect(const_cast<void*>(data), m.data_pages, open ? PROT_READ | PROT_WRITE : PROT_NONE) != 0) {
    fail("simt: cannot change the protection of a {}-byte device buffer", m.bytes);
  }
}

// A fault on a device buffer outside a DeviceAccess scope: say so, then let the previous handler
// (the sanitizer's, with its stack trace, or the default) take the signal.
void on_segv(int sig, siginfo_t* info, void* context) {
  const Allocations& a = allocations();
  const auto* addr = static_cast<const unsigned char*>(info->si_addr);
  auto it = a.live.upper_bound(addr);
  if (it != a.live.begin()) {
    --it;
    const auto* data = static_cast<const unsigned char*>(it->first);
    if (addr < data + it->second.data_pages && a.open_scopes == 0) {
      char line[200];
      const int n = std::snprintf(line, sizeof line,
                                  "simt: host code touched device memory: byte %zu of a %zu-byte cudaMalloc'd buffer "
                                  "(a fault on the GPU too)\n",
                                  static_cast<size_t>(addr - data), it->second.bytes);
      if (n > 0) (void)!write(STDERR_FILENO, line, static_cast<size_t>(n));
    }
  }
  const struct sigaction& prev = a.previous_segv;
  if ((prev.sa_flags & SA_SIGINFO) && prev.sa_sigaction) {
    prev.sa_sigaction(sig, info, context);
    return;
  }
  if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN && prev.sa_handler) {
    prev.sa_handler(sig);
    return;
  }
  signal(sig, SIG_DFL);  // returning re-runs the access, which now kills the process
}

void install_segv_handler() {
  static const bool installed = [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &allocations().previous_segv);
    return true;
  }();
  (void)installed;
}

}  // namespace

// --- streams and graphs ---------------------------------------------------------------------------

namespace {

struct Queued {
  std::string what;
  std::function<void()> work;
};
using Recording = std::vector<Queued>;

struct StreamState {
  bool capturing = false, invalidated = false;
  Recording recorded;
};

struct Streams {
  std::map<const void*, std::unique_ptr<StreamState>> streams;
  std::map<const void*, std::unique_ptr<Recording>> graphs;                 // captured, not instantiated
  std::map<const void*, std::shared_ptr<const Recording>> execs;          // instantiated
  int capturing = 0;  // streams capturing now
};
Streams& streams() {
  static Streams s;
  return s;
}

// A call the hardware refuses while a capture is open: every open capture is invalidated.
cudaError_t refuse(cudaError_t e) {
  for (auto& [handle, st] : streams().streams) {
    if (st->capturing) st->invalidated = true;
  }
  return e;
}
bool capture_open() { return streams().capturing > 0; }

StreamState* stream_state(cudaStream_t stream) {
  const auto it = streams().streams.find(stream);
  return it == streams().streams.end() ? nullptr : it->second.get();
}

void run_now(const Queued& q) {
  const DeviceAccess device_access;
  q.work();
}

}  // namespace

cudaError_t submit(cudaStream_t stream, const char* what, std::function<void()> work) {
  Queued q{what, std::move(work)};
  if (stream == nullptr) {  // the legacy stream waits for every blocking stream, a capturing one too
    if (capture_open()) return refuse(cudaErrorStreamCaptureImplicit);
    run_now(q);
    return cudaSuccess;
  }
  StreamState* st = stream_state(stream);
  if (st == nullptr) return cudaErrorInvalidResourceHandle;
  if (st->capturing) {
    if (st->invalidated) return cudaErrorStreamCaptureInvalidated;
    st->recorded.push_back(std::move(q));
    return cudaSuccess;
  }
  run_now(q);
  return cudaSuccess;
}

void launch_grid(const char* name, dim3 grid, dim3 block, size_t shared, cudaStream_t stream,
                 std::function<void()> body) {
  if (const cudaError_t e = launch_config_error(grid, block, shared); e != cudaSuccess) {
    g_last_error = e;
    return;
  }
  const cudaError_t e = submit(stream, name, [kernel = std::string(name), grid, block, shared, body = std::move(body)] {
    run_grid(kernel.c_str(), grid, block, shared, body);
  });
  if (e != cudaSuccess) g_last_error = e;
}

bool any_capture_open() { return capture_open(); }

cudaError_t stream_create(cudaStream_t* stream) {
  auto st = std::make_unique<StreamState>();
  *stream = reinterpret_cast<cudaStream_t>(st.get());
  streams().streams.emplace(*stream, std::move(st));
  return cudaSuccess;
}

cudaError_t stream_destroy(cudaStream_t stream) {
  const auto it = streams().streams.find(stream);
  if (it == streams().streams.end()) return cudaErrorInvalidResourceHandle;
  if (it->second->capturing) --streams().capturing;
  streams().streams.erase(it);
  return cudaSuccess;
}

cudaError_t stream_synchronize(cudaStream_t stream) {
  if (stream != nullptr && stream_state(stream) == nullptr) return cudaErrorInvalidResourceHandle;
  if (capture_open()) return refuse(cudaErrorStreamCaptureUnsupported);
  return cudaSuccess;  // everything queued has run
}

cudaError_t begin_capture(cudaStream_t stream, cudaStreamCaptureMode) {
  if (stream == nullptr) return cudaErrorStreamCaptureUnsupported;
  StreamState* st = stream_state(stream);
  if (st == nullptr) return cudaErrorInvalidResourceHandle;
  if (st->capturing) return cudaErrorIllegalState;
  st->capturing = true;
  st->invalidated = false;
  st->recorded.clear();
  ++streams().capturing;
  return cudaSuccess;
}

cudaError_t end_capture(cudaStream_t stream, cudaGraph_t* graph) {
  *graph = nullptr;
  StreamState* st = stream_state(stream);
  if (st == nullptr) return cudaErrorInvalidResourceHandle;
  if (!st->capturing) return cudaErrorIllegalState;
  st->capturing = false;
  --streams().capturing;
  Recording recorded = std::move(st->recorded);
  st->recorded.clear();
  if (st->invalidated) return cudaErrorStreamCaptureInvalidated;
  auto g = std::make_unique<Recording>(std::move(recorded));
  *graph = reinterpret_cast<cudaGraph_t>(g.get());
  streams().graphs.emplace(*graph, std::move(g));
  return cudaSuccess;
}

cudaError_t graph_instantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  const auto it = streams().graphs.find(graph);
  if (it == streams().graphs.end()) return cudaErrorInvalidValue;
  auto e = std::make_shared<const Recording>(*it->second);
  *exec = reinterpret_cast<cudaGraphExec_t>(const_cast<Recording*>(e.get()));
  streams().execs.emplace(*exec, std::move(e));
  return cudaSuccess;
}

cudaError_t graph_launch(cudaGraphExec_t exec, cudaStream_t stream) {
  const auto it = streams().execs.find(exec);
  if (it == streams().execs.end()) return cudaErrorInvalidValue;
  return submit(stream, "graph launch", [recording = it->second] {
    for (const Queued& q : *recording) q.work();
  });
}

cudaError_t graph_destroy(cudaGraph_t graph) {
  return streams().graphs.erase(graph) == 1 ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t graph_exec_destroy(cudaGraphExec_t exec) {
  return streams().execs.erase(exec) == 1 ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t copy_async(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t stream) {
  return submit(stream, "memcpy", [dst, src, bytes] {
    if (bytes > 0) std::memmove(dst, src, bytes);
  });
}

cudaError_t set_bytes_async(void* ptr, int value, size_t bytes, cudaStream_t stream) {
  return submit(stream, "memset", [ptr, value, bytes] { std::memset(ptr, value, bytes); });
}

DeviceAccess::DeviceAccess() {
  Allocations& a = allocations();
  if (a.open_scopes++ == 0) {
    for (const auto& [data, m] : a.live) set_open(data, m, true);
  }
}

DeviceAccess::~DeviceAccess() {
  Allocations& a = allocations();
  if (--a.open_scopes == 0) {
    for (const auto& [data, m] : a.live) set_open(data, m, false);
  }
}

bool is_device_pointer(const void* p) {
  const Allocations& a = allocations();
  auto it = a.live.upper_bound(p);
  if (it == a.live.begin()) return false;
  --it;
  return static_cast<const unsigned char*>(p) <= static_cast<const unsigned char*>(it->first) + it->second.bytes;
}

void bad_kernel_pointer(const char* kernel, size_t argument) {
  fail("simt: kernel {}: pointer argument {} is not device memory (a kernel reading it faults on a GPU)", kernel,
       argument);
}

cudaError_t malloc_device(void** ptr, size_t bytes) {
  if (capture_open()) return refuse(cudaErrorStreamCaptureUnsupported);
  install_segv_handler();
  const size_t page = page_bytes();
  const size_t data_pages = (std::max<size_t>(bytes, 1) + page - 1) / page * page;
  const size_t total = data_pages + 2 * page;
  void* base = mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) return cudaErrorMemoryAllocation;
  const Mapping m{static_cast<unsigned char*>(base), total, data_pages, bytes};
  unsigned char* data = m.base + page;
  set_open(data, m, true);
  std::memset(data, 0xFF, data_pages);  // unwritten device memory reads as NaN
#if defined(__SANITIZE_ADDRESS__)
  ASAN_POISON_MEMORY_REGION(data + bytes, data_pages - bytes);  // a kernel reading past the end is reported
#endif
  Allocations& a = allocations();
  if (a.open_scopes == 0) set_open(data, m, false);
  a.live.emplace(data, m);
  *ptr = data;
  return cudaSuccess;
}

cudaError_t free_device(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  if (capture_open()) return refuse(cudaErrorStreamCaptureUnsupported);
  Allocations& a = allocations();
  const auto it = a.live.find(ptr);
  if (it == a.live.end()) return cudaErrorInvalidValue;  // not from malloc_device, or freed twice
  const Mapping m = it->second;
  a.live.erase(it);
#if defined(__SANITIZE_ADDRESS__)
  ASAN_UNPOISON_MEMORY_REGION(m.base, m.total);
#endif
  munmap(m.base, m.total);
  return cudaSuccess;
}

cudaError_t copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (capture_open()) return refuse(cudaErrorStreamCaptureImplicit);  // the legacy stream's copy
  const DeviceAccess device_access;
  if (bytes > 0) std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t set_bytes(void* ptr, int value, size_t bytes) {
  if (capture_open()) return refuse(cudaErrorStreamCaptureImplicit);
  const DeviceAccess device_access;
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}

cudaError_t get_device(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t device_attribute(int* value, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(kSharedOptIn); return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 49152; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = kSmCount; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *value = kMaxThreads; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = 2048; return cudaSuccess;
    case cudaDevAttrWarpSize: *value = 32; return cudaSuccess;
    default: return cudaErrorInvalidValue;
  }
}

int max_blocks_per_sm(int threads, size_t shared) {
  constexpr int kThreadsPerSm = 2048, kBlocksPerSm = 32;
  constexpr size_t kSharedPerSm = 233472, kReservedPerBlock = 1024;  // 228 KiB, less 1 KiB per block
  if (threads <= 0 || threads > kMaxThreads || shared > kSharedOptIn) return 0;
  const int by_threads = kThreadsPerSm / threads;
  const int by_shared = static_cast<int>(kSharedPerSm / (shared + kReservedPerBlock));
  return std::min({by_threads, by_shared, kBlocksPerSm});
}

cudaError_t last_error() {
  const cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}

cudaError_t device_synchronize() { return capture_open() ? refuse(cudaErrorStreamCaptureUnsupported) : cudaSuccess; }

const char* error_string(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureImplicit:
      return "operation would make the legacy stream depend on a capturing blocking stream";
    default: return "unknown error";
  }
}

const char* error_name(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureImplicit: return "cudaErrorStreamCaptureImplicit";
    default: return "cudaErrorUnknown";
  }
}

}  // namespace flashgpt::simt

namespace nvcuda::wmma::detail {

void check_pointer(const void* p, unsigned ldm, size_t element_bytes, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    flashgpt::fail("simt: {}: pointer {} is not 32-byte aligned", what, p);
  }
  if ((ldm * element_bytes) % 16 != 0) {
    flashgpt::fail("simt: {}: leading dimension {} is not a multiple of 16 bytes", what, ldm);
  }
}

}  // namespace nvcuda::wmma::detail
