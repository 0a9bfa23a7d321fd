// Streams and CUDA graphs. Every piece of GPU work flashgpt queues (launch_kernel's kernels, the
// copies and fills of device_memory.h, the GEMMs of matmul_cuda.h) goes to the calling thread's
// current stream: the legacy default stream, unless a StreamScope names another. A Graph records
// what a piece of host code queues on a stream once, and replays it later with one launch, so a
// step of a few hundred small kernels (a decoding step) costs one launch instead of hundreds.
//
// Compiled for the GPU and for the emulator (cuda/simt), whose streams run work at once but
// capture it as the hardware does: see simt.h.
#pragma once

#include <functional>

#include "cuda/cuda_check.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

// The stream this thread queues its GPU work on (null: the legacy default stream).
cudaStream_t current_stream();

// Makes `stream` this thread's current stream for the scope's lifetime.
class StreamScope {
 public:
  explicit StreamScope(cudaStream_t stream);
  ~StreamScope();
  StreamScope(const StreamScope&) = delete;
  StreamScope& operator=(const StreamScope&) = delete;

 private:
  cudaStream_t saved_;
};

// An owned stream. It is a blocking stream: work on it and work on the legacy default stream wait
// for each other, so code that still queues on the default stream stays ordered with it.
class Stream {
 public:
  Stream();
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

// A graph of GPU work and its executable instance.
//
// capture(stream, body) runs body with `stream` current and records what it queues there (kernels
// with their arguments as given, copies, fills, GEMMs) without running any of it. launch() then
// queues the whole recording on a stream. Everything is taken by value at capture: the pointers,
// the sizes, the scalar arguments. Whatever must differ from one launch to the next has to live in
// device memory that the graph reads, and every buffer the graph names must outlive it unmoved.
// Inside body nothing may synchronise with the host or allocate (copies to or from pageable host
// memory, cudaMalloc, cudaFree, waiting for the device): the runtime refuses the call, and capture
// throws flashgpt::Error with its reason, leaving the graph empty and the stream usable.
class Graph {
 public:
  Graph() = default;
  ~Graph() { reset(); }
  Graph(Graph&& o) noexcept : exec_(o.exec_) { o.exec_ = nullptr; }
  Graph& operator=(Graph&& o) noexcept;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  void capture(cudaStream_t stream, const std::function<void()>& body);
  void launch(cudaStream_t stream) const;
  bool empty() const { return exec_ == nullptr; }
  void reset();

 private:
  cudaGraphExec_t exec_ = nullptr;
};

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
