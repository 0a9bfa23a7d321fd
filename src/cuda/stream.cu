// Streams and graphs (stream.h), compiled for the GPU and for the emulator alike.
#include "cuda/stream.h"
#include "cuda/stream_capture.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {
thread_local cudaStream_t g_current = nullptr;
}  // namespace

cudaStream_t current_stream() { return g_current; }

bool stream_capturing(cudaStream_t stream) {
#if defined(FLASHGPT_SIMT)
  (void)stream;
  return simt::any_capture_open();
#else
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  FLASHGPT_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  return status != cudaStreamCaptureStatusNone;
#endif
}

StreamScope::StreamScope(cudaStream_t stream) : saved_(g_current) { g_current = stream; }
StreamScope::~StreamScope() { g_current = saved_; }

Stream::Stream() { FLASHGPT_CUDA_CHECK(cudaStreamCreate(&stream_)); }

Stream::~Stream() {
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

Graph& Graph::operator=(Graph&& o) noexcept {
  if (this != &o) {
    reset();
    exec_ = o.exec_;
    o.exec_ = nullptr;
  }
  return *this;
}

void Graph::reset() {
  if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
  exec_ = nullptr;
}

void Graph::capture(cudaStream_t stream, const std::function<void()>& body) {
  FLASHGPT_CUDA_REQUIRE(stream != nullptr, "CUDA graph: the legacy default stream cannot be captured");
  reset();
  // Thread-local mode: only this thread's calls are held to the capture's rules.
  FLASHGPT_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  cudaGraph_t graph = nullptr;
  try {
    const StreamScope scope(stream);
    body();
  } catch (...) {
    cudaStreamEndCapture(stream, &graph);  // ends the capture whatever went wrong; the stream is usable again
    if (graph != nullptr) cudaGraphDestroy(graph);
    cudaGetLastError();  // the refused call's error is the one thrown
    throw;
  }
  FLASHGPT_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  const cudaError_t e = cudaGraphInstantiate(&exec_, graph, 0);
  cudaGraphDestroy(graph);
  if (e != cudaSuccess) exec_ = nullptr;
  check(e, "cudaGraphInstantiate", __FILE__, __LINE__);
}

void Graph::launch(cudaStream_t stream) const {
  FLASHGPT_CUDA_REQUIRE(exec_ != nullptr, "CUDA graph: launched before anything was captured");
  FLASHGPT_CUDA_CHECK(cudaGraphLaunch(exec_, stream));
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
