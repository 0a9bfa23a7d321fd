// The device entry points for a build without the CUDA backend (no CUDA compiler was found):
// probing reports why, and the GPU kernels refuse with a message.
#include "flashgpt/core/device.h"
#include "flashgpt/core/error.h"
#include "flashgpt/cuda/attention_bench_cuda.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/cta_trace.h"
#include "flashgpt/cuda/flash_decode_bench_cuda.h"
#include "flashgpt/cuda/gpt_cuda.h"
#include "flashgpt/cuda/kernel_times.h"
#include "flashgpt/cuda/latent_decode_bench_cuda.h"
#include "flashgpt/cuda/matmul_cuda.h"
#include "flashgpt/cuda/ops_bench_cuda.h"
#include "flashgpt/cuda/ops_cuda.h"
#include "flashgpt/cuda/warpgroup_cuda.h"

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

DeviceReport devices() { return probe_devices(); }
bool gpu_available() { return false; }

struct KernelTimes::Impl {};
KernelTimes::KernelTimes() = default;
KernelTimes::~KernelTimes() = default;
std::vector<KernelTime> KernelTimes::read() { return {}; }
KernelTimesScope::KernelTimesScope(KernelTimes&) : saved_(nullptr) {}
KernelTimesScope::~KernelTimesScope() = default;
void flash_forward_fp32(const AttentionDims&, const AttentionMask&, float, const float*, const float*, const float*,
                        float*, float*) {
  fail("GPU attention: {}", kNoCuda);
}
void flash_backward_fp32(const AttentionDims&, const AttentionMask&, float, const float*, const float*, const float*,
                         const float*, const float*, const float*, float*, float*, float*) {
  fail("GPU attention: {}", kNoCuda);
}
bool flash_tc_supports(int64_t, int64_t) { return false; }
bool warpgroup_mma_supported() { return false; }
void warpgroup_mma_product(TensorCoreType, int, int, WarpgroupA, bool, const uint16_t*, const uint16_t*, float*) {
  fail("warpgroup MMA: {}", kNoCuda);
}
template <typename T>
size_t standard_workspace_bytes(const AttentionDims&) {
  return 0;
}
template <typename T>
void standard_forward_cuda(const AttentionDims&, const AttentionMask&, float, const T*, const T*, const T*, T*, float*,
                           void*) {
  fail("GPU attention: {}", kNoCuda);
}
template <typename T>
void standard_backward_cuda(const AttentionDims&, const AttentionMask&, float, const T*, const T*, const T*, const T*,
                            T*, T*, T*, void*) {
  fail("GPU attention: {}", kNoCuda);
}
#define FLASHGPT_INSTANTIATE(T)                                                                                    \
  template size_t standard_workspace_bytes<T>(const AttentionDims&);                                             \
  template void standard_forward_cuda<T>(const AttentionDims&, const AttentionMask&, float, const T*, const T*,  \
                                         const T*, T*, float*, void*);                                           \
  template void standard_backward_cuda<T>(const AttentionDims&, const AttentionMask&, float, const T*, const T*, \
                                          const T*, const T*, T*, T*, T*, void*);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(bf16)
#undef FLASHGPT_INSTANTIATE
FlashOccupancy flash_tc_occupancy(TensorCoreType, const AttentionDims&, FlashTiles) { fail("GPU attention: {}", kNoCuda); }
void flash_forward_tc(TensorCoreType, const AttentionDims&, const AttentionMask&, float, const uint16_t*,
                      const uint16_t*, const uint16_t*, uint16_t*, float*, FlashTiles) {
  fail("GPU attention: {}", kNoCuda);
}
size_t flash_backward_workspace_bytes(const AttentionDims&, bool) { return 0; }
void flash_backward_tc(TensorCoreType, const AttentionDims&, const AttentionMask&, float, const uint16_t*,
                       const uint16_t*, const uint16_t*, const uint16_t*, const float*, const uint16_t*, uint16_t*,
                       uint16_t*, uint16_t*, void*, FlashTiles, bool) {
  fail("GPU attention: {}", kNoCuda);
}
FlashBenchResult bench_flash_attention(const FlashBenchCase&) { fail("bench attention --device cuda: {}", kNoCuda); }
LatentDecodeBenchResult bench_latent_decode(const LatentDecodeBenchCase&) { fail("bench latent-decode: {}", kNoCuda); }
FlashDecodeBenchResult bench_flash_decode(const FlashDecodeBenchCase&) { fail("bench flash-decode: {}", kNoCuda); }
OpsBenchResult bench_ops(const OpsBenchCase&) { fail("bench ops: {}", kNoCuda); }
DeviceBuffer::DeviceBuffer(size_t) { fail("device memory: {}", kNoCuda); }
DeviceBuffer::~DeviceBuffer() = default;
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&&) noexcept { return *this; }
void DeviceBuffer::upload(const void*, size_t) {}
void DeviceBuffer::download(void*, size_t) const {}
void DeviceBuffer::fill_bytes(int) {}
void copy_to_device(void*, const void*, size_t) { fail("device memory: {}", kNoCuda); }
void copy_to_host(void*, const void*, size_t) { fail("device memory: {}", kNoCuda); }
void copy_on_device(void*, const void*, size_t) { fail("device memory: {}", kNoCuda); }
void fill_device_bytes(void*, int, size_t) { fail("device memory: {}", kNoCuda); }
void synchronize() {}
void profiler_capture(bool) {}

// The GPU model cannot be made here; its other members are unreachable without one.
struct CtaTrace::Impl {};
CtaTrace::CtaTrace(int64_t) { fail("block trace: {}", kNoCuda); }
CtaTrace::~CtaTrace() = default;
std::vector<TracedLaunch> CtaTrace::read() { fail("block trace: {}", kNoCuda); }
int64_t CtaTrace::skipped() const { fail("block trace: {}", kNoCuda); }
int max_warps_per_sm() { fail("block trace: {}", kNoCuda); }

struct GPTCuda::Impl {};
std::string GPTCuda::unsupported(const GPTConfig&, Precision) { return kNoCuda; }
GPTCuda::GPTCuda(const GPTConfig&, Precision) { fail("--device cuda: {}", kNoCuda); }
GPTCuda::~GPTCuda() = default;
const GPTConfig& GPTCuda::config() const { fail("GPU model: {}", kNoCuda); }
Precision GPTCuda::precision() const { fail("GPU model: {}", kNoCuda); }
int64_t GPTCuda::num_params() const { fail("GPU model: {}", kNoCuda); }
void GPTCuda::set_params(std::span<const float>) { fail("GPU model: {}", kNoCuda); }
void GPTCuda::get_params(std::span<float>) const { fail("GPU model: {}", kNoCuda); }
void GPTCuda::set_optimizer_state(std::span<const float>, std::span<const float>) { fail("GPU model: {}", kNoCuda); }
void GPTCuda::get_optimizer_state(std::span<float>, std::span<float>) const { fail("GPU model: {}", kNoCuda); }
void GPTCuda::get_grads(std::span<float>) const { fail("GPU model: {}", kNoCuda); }
void GPTCuda::zero_grad() { fail("GPU model: {}", kNoCuda); }
double GPTCuda::forward(const int*, const int*, int64_t, int64_t, const int32_t*) { fail("GPU model: {}", kNoCuda); }
void GPTCuda::backward(float) { fail("GPU model: {}", kNoCuda); }
double GPTCuda::forward_backward(const int*, const int*, int64_t, int64_t, const int32_t*, float) {
  fail("GPU model: {}", kNoCuda);
}
void GPTCuda::set_classifier_rows(int64_t) { fail("GPU model: {}", kNoCuda); }
void GPTCuda::get_logits(std::span<float>) const { fail("GPU model: {}", kNoCuda); }
void GPTCuda::set_deterministic(bool) { fail("GPU model: {}", kNoCuda); }
bool GPTCuda::deterministic() const { fail("GPU model: {}", kNoCuda); }
void GPTCuda::set_flash_tiles(FlashTiles) { fail("GPU model: {}", kNoCuda); }
void GPTCuda::set_attention_backend(AttentionBackend) { fail("GPU model: {}", kNoCuda); }
AttentionBackend GPTCuda::attention_backend() const { fail("GPU model: {}", kNoCuda); }
FlashTiles GPTCuda::flash_tiles() const { fail("GPU model: {}", kNoCuda); }
void GPTCuda::set_gelu_fusion(bool) { fail("GPU model: {}", kNoCuda); }
bool GPTCuda::gelu_fusion() const { fail("GPU model: {}", kNoCuda); }
void GPTCuda::set_qkv_fusion(bool) { fail("GPU model: {}", kNoCuda); }
bool GPTCuda::qkv_fusion() const { fail("GPU model: {}", kNoCuda); }
void GPTCuda::set_context_parallel(const DeviceContextParallel*) { fail("GPU model: {}", kNoCuda); }
double GPTCuda::grad_sum_squares() { fail("GPU model: {}", kNoCuda); }
void GPTCuda::reduce_grads(DeviceComm&) { fail("GPU model: {}", kNoCuda); }
void GPTCuda::overlap_next_backward(DeviceComm&) { fail("GPU model: {}", kNoCuda); }
void GPTCuda::set_reduce_precision(Precision) { fail("GPU model: {}", kNoCuda); }
Precision GPTCuda::reduce_precision() const { return Precision::FP32; }
double GPTCuda::accumulate_gradients(int64_t, DeviceComm*, const std::function<MicroBatch()>&) {
  fail("GPU model: {}", kNoCuda);
}
void GPTCuda::shard_optimizer_state(DeviceComm&) { fail("GPU model: {}", kNoCuda); }
bool GPTCuda::optimizer_state_sharded() const { fail("GPU model: {}", kNoCuda); }
bool nccl_available(std::string* detail) {
  if (detail) *detail = kNoCuda;
  return false;
}
std::unique_ptr<DeviceComm> DeviceComm::create(dist::Communicator&, GpuComm) {
  fail("GPU communication: {}", kNoCuda);
}
std::unique_ptr<DeviceComm> DeviceComm::subgroup(dist::Communicator&) const { fail("GPU communication: {}", kNoCuda); }
DeviceContextParallel::DeviceContextParallel(DeviceComm& group, int64_t seq_len)
    : group_(&group), host_(group.host(), seq_len) {
  fail("GPU context parallelism: {}", kNoCuda);
}
void GPTCuda::adamw_step(const ops::AdamWParams&, float) { fail("GPU model: {}", kNoCuda); }
std::string GPTCuda::decode_unsupported(const GPTConfig&, Precision) { return kNoCuda; }
void GPTCuda::start_decoding(int64_t, int64_t) { fail("GPU decoding: {}", kNoCuda); }
int64_t GPTCuda::decode_length() const { fail("GPU decoding: {}", kNoCuda); }
std::vector<int64_t> GPTCuda::decode_lengths() const { fail("GPU decoding: {}", kNoCuda); }
void GPTCuda::restart_decoding(int64_t) { fail("GPU decoding: {}", kNoCuda); }
void GPTCuda::decode(const int*, int64_t, int64_t, std::span<float>, std::span<const int32_t>) {
  fail("GPU decoding: {}", kNoCuda);
}
void GPTCuda::decode_top(const int*, int64_t, int64_t, int, std::span<int32_t>, std::span<float>,
                         std::span<const int32_t>) {
  fail("GPU decoding: {}", kNoCuda);
}
int64_t GPTCuda::decode_cache_bytes() const { fail("GPU decoding: {}", kNoCuda); }
void GPTCuda::set_decode_graphs(bool) { fail("GPU decoding: {}", kNoCuda); }
bool GPTCuda::decode_graphs() const { fail("GPU decoding: {}", kNoCuda); }
int64_t GPTCuda::decode_graph_replays() const { fail("GPU decoding: {}", kNoCuda); }
void GPTCuda::set_split_kv_decode(SplitKv) { fail("GPU decoding: {}", kNoCuda); }
SplitKv GPTCuda::split_kv_decode() const { fail("GPU decoding: {}", kNoCuda); }
void GPTCuda::set_flash_decode_kernel(FlashDecodeKernel) { fail("GPU decoding: {}", kNoCuda); }
FlashDecodeKernel GPTCuda::flash_decode_kernel() const { fail("GPU decoding: {}", kNoCuda); }
double measure_gemm_flops(bool, int, int) { fail("GPU GEMM rate: {}", kNoCuda); }

}  // namespace cuda::inline FLASHGPT_CUDA_ABI
}  // namespace flashgpt
