// DeviceComm (flashgpt/cuda/device_comm.h): the ranks' gradient sums over GPU memory, through NCCL
// (loaded at run time) or through host memory and the job's communicator. Also compiled for the
// emulator (cuda/simt), where there is one emulated GPU a process and no NCCL.
#include "flashgpt/cuda/device_comm.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "flashgpt/core/device.h"
#include "flashgpt/core/error.h"
#include "flashgpt/cuda/device_memory.h"
#include "cuda/cuda_check.h"
#include "cuda/stream.h"

#if !defined(FLASHGPT_SIMT) && __has_include(<nccl.h>)
#include <nccl.h>
#define FLASHGPT_NCCL_HEADERS 1
#endif

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

// A collective step that may fail on some ranks only: every rank learns whether all succeeded.
// Those that failed throw their own reason, the others name the ranks that failed, so no rank
// goes on to wait in a collective the failed ones never reach.
void agree(dist::Communicator& host, const std::string& error, const std::string& what) {
  const std::vector<int32_t> failed = host.allgather_one<int32_t>(error.empty() ? 0 : 1);
  if (!error.empty()) fail("{}", error);
  std::string ranks;
  for (size_t k = 0; k < failed.size(); ++k) {
    if (failed[k] != 0) ranks += (ranks.empty() ? "" : ", ") + std::to_string(k);
  }
  FLASHGPT_CHECK(ranks.empty(), "{}: failed on rank(s) {} (their messages say why)", what, ranks);
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// This rank's GPU among the host's: the local rank modulo the GPUs visible. `gpus` gets their count.
int bind_gpu(int local_rank, int* gpus) {
#if defined(FLASHGPT_SIMT)
  (void)local_rank;
  *gpus = 1;  // the emulator: one GPU a process
  return 0;
#else
  const DeviceReport devices = probe_devices();
  FLASHGPT_CHECK(!devices.gpus.empty(), "--device cuda: {}", devices.why_none);
  const int count = static_cast<int>(devices.gpus.size());
  const int gpu = local_rank % count;
  FLASHGPT_CUDA_CHECK(cudaSetDevice(gpu));
  *gpus = count;
  return gpu;
#endif
}

void check_count(int64_t count, const char* what) { FLASHGPT_CHECK(count >= 0, "GPU {}: {} values", what, count); }

// Through host memory: out, summed by the job's communicator, back in.
class HostDeviceComm final : public DeviceComm {
 public:
  HostDeviceComm(dist::Communicator& host, int gpu) : DeviceComm(host, gpu) { through_host_ = true; }
  std::string backend() const override { return "host"; }
  void allreduce_sum(float* device_data, int64_t count) override {
    allreduce(device_data, count, staging_, dist::DType::F32);
  }
  void allreduce_sum_bf16(uint16_t* device_data, int64_t count) override {
    allreduce(device_data, count, staging16_, dist::DType::BF16);
  }
  void reduce_scatter_sum(float* device_data, int64_t shard) override {
    reduce_scatter(device_data, shard, staging_, dist::DType::F32);
  }
  void reduce_scatter_sum_bf16(uint16_t* device_data, int64_t shard) override {
    reduce_scatter(device_data, shard, staging16_, dist::DType::BF16);
  }
  void allgather(float* device_data, int64_t shard) override {
    check_count(shard, "all-gather");
    if (size() == 1 || shard == 0) return;
    const size_t n = static_cast<size_t>(shard) * static_cast<size_t>(size());
    staging_.resize(n + static_cast<size_t>(shard));
    copy_to_host(staging_.data() + n, device_data + static_cast<int64_t>(rank()) * shard,
                 static_cast<size_t>(shard) * sizeof(float));
    const std::vector<int64_t> counts(static_cast<size_t>(size()), shard);
    host().allgather(staging_.data() + n, staging_.data(), counts, dist::DType::F32);
    copy_to_device(device_data, staging_.data(), n * sizeof(float));
    count_sent(static_cast<int64_t>(n * sizeof(float)), 1);
  }

 private:
  template <typename V>
  void allreduce(V* device_data, int64_t count, std::vector<V>& staging, dist::DType t) {
    check_count(count, "allreduce");
    if (size() == 1 || count == 0) return;
    const size_t bytes = static_cast<size_t>(count) * sizeof(V);
    staging.resize(static_cast<size_t>(count));
    copy_to_host(staging.data(), device_data, bytes);  // waits for the work queued before it
    host().allreduce_sum(staging.data(), static_cast<size_t>(count), t);
    copy_to_device(device_data, staging.data(), bytes);
    count_sent(static_cast<int64_t>(bytes), 2);
  }
  template <typename V>
  void reduce_scatter(V* device_data, int64_t shard, std::vector<V>& staging, dist::DType t) {
    check_count(shard, "reduce-scatter");
    if (size() == 1 || shard == 0) return;
    const size_t n = static_cast<size_t>(shard) * static_cast<size_t>(size());
    staging.resize(n + static_cast<size_t>(shard));
    copy_to_host(staging.data(), device_data, n * sizeof(V));
    const std::vector<int64_t> counts(static_cast<size_t>(size()), shard);
    host().reduce_scatter_sum(staging.data(), staging.data() + n, counts, t);
    copy_to_device(device_data + static_cast<int64_t>(rank()) * shard, staging.data() + n,
                   static_cast<size_t>(shard) * sizeof(V));
    count_sent(static_cast<int64_t>(n * sizeof(V)), 1);
  }
  std::vector<float> staging_;
  std::vector<uint16_t> staging16_;
};

#if defined(FLASHGPT_NCCL_HEADERS)
// The few NCCL entry points flashgpt calls, resolved from libnccl.so.2 on first use.
struct NcclApi {
  decltype(&ncclGetVersion) get_version = nullptr;
  decltype(&ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&ncclCommInitRank) comm_init_rank = nullptr;
  decltype(&ncclCommDestroy) comm_destroy = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclReduceScatter) reduce_scatter = nullptr;
  decltype(&ncclAllGather) all_gather = nullptr;
  decltype(&ncclGetErrorString) error_string = nullptr;
  int version = 0;
};

// The loaded library, or null with the reason in *why. Loaded once a process, never unloaded.
const NcclApi* nccl_api(std::string* why) {
  static std::string error;
  static const NcclApi* api = [&]() -> const NcclApi* {
    void* lib = nullptr;
    for (const char* name : {"libnccl.so.2", "libnccl.so"}) {
      if ((lib = ::dlopen(name, RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
    }
    if (lib == nullptr) {
      const char* e = ::dlerror();
      error = std::string("NCCL is not installed where the loader looks (libnccl.so.2: ") + (e ? e : "not found") +
              "); install it or add its directory to LD_LIBRARY_PATH";
      return nullptr;
    }
    static NcclApi a;
    bool ok = true;
    auto resolve = [&](auto& fn, const char* symbol) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(::dlsym(lib, symbol));
      if (fn == nullptr) {
        error = std::string("libnccl.so.2 lacks ") + symbol + " (too old an NCCL)";
        ok = false;
      }
    };
    resolve(a.get_version, "ncclGetVersion");
    resolve(a.get_unique_id, "ncclGetUniqueId");
    resolve(a.comm_init_rank, "ncclCommInitRank");
    resolve(a.comm_destroy, "ncclCommDestroy");
    resolve(a.all_reduce, "ncclAllReduce");
    resolve(a.reduce_scatter, "ncclReduceScatter");
    resolve(a.all_gather, "ncclAllGather");
    resolve(a.error_string, "ncclGetErrorString");
    if (!ok) return nullptr;
    if (a.get_version(&a.version) != ncclSuccess) a.version = 0;
    return &a;
  }();
  if (api == nullptr && why != nullptr) *why = error;
  return api;
}

std::string nccl_version_string(int v) {  // 22801 → 2.28.1 (NCCL ≥ 2.9's encoding)
  return v <= 0 ? std::string("?") : std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
                                         std::to_string(v % 100);
}

class NcclDeviceComm final : public DeviceComm {
 public:
  // Collective: rank 0 makes the unique id, the job's communicator hands it to every rank.
  NcclDeviceComm(dist::Communicator& host, int gpu, const NcclApi& api) : DeviceComm(host, gpu), api_(api) {
    ncclUniqueId id;
    std::memset(&id, 0, sizeof id);
    std::string error;
    if (rank() == 0) error = error_of([&] { check(api_.get_unique_id(&id), "ncclGetUniqueId"); });
    agree(host, error, "NCCL's unique id");
    host.broadcast(&id, sizeof id, 0);
    check(api_.comm_init_rank(&comm_, size(), id, rank()), "ncclCommInitRank");
  }
  ~NcclDeviceComm() override {
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);  // no sum left running on the communicator
    if (comm_ != nullptr) api_.comm_destroy(comm_);
    if (stream_ != nullptr) {
      cudaEventDestroy(ready_);
      cudaEventDestroy(done_);
      cudaStreamDestroy(stream_);
    }
  }
  std::string backend() const override { return "nccl"; }
  void allreduce_sum(float* device_data, int64_t count) override {
    allreduce(device_data, count, ncclFloat32, sizeof(float), false);
  }
  void start_allreduce_sum(float* device_data, int64_t count) override {
    allreduce(device_data, count, ncclFloat32, sizeof(float), true);
  }
  void allreduce_sum_bf16(uint16_t* device_data, int64_t count) override {
    allreduce(device_data, count, ncclBfloat16, sizeof(uint16_t), false);
  }
  void start_allreduce_sum_bf16(uint16_t* device_data, int64_t count) override {
    allreduce(device_data, count, ncclBfloat16, sizeof(uint16_t), true);
  }
  void finish_sums() override {
    if (!pending_) return;
    FLASHGPT_CUDA_CHECK(cudaEventRecord(done_, stream_));
    FLASHGPT_CUDA_CHECK(cudaStreamWaitEvent(current_stream(), done_, 0));
    pending_ = false;
  }
  void reduce_scatter_sum(float* device_data, int64_t shard) override {
    reduce_scatter(device_data, device_data + static_cast<int64_t>(rank()) * shard, shard, ncclFloat32, sizeof(float));
  }
  void reduce_scatter_sum_bf16(uint16_t* device_data, int64_t shard) override {
    reduce_scatter(device_data, device_data + static_cast<int64_t>(rank()) * shard, shard, ncclBfloat16,
                   sizeof(uint16_t));
  }
  void allgather(float* device_data, int64_t shard) override {
    check_count(shard, "all-gather");
    if (shard == 0) return;
    check(api_.all_gather(device_data + static_cast<int64_t>(rank()) * shard, device_data, static_cast<size_t>(shard),
                          ncclFloat32, comm_, current_stream()),
          "ncclAllGather");
    count_sent(shard * size() * static_cast<int64_t>(sizeof(float)), 1);
  }

 private:
  // In place as NCCL defines it: this rank's block (`mine`) is the receive buffer inside the send buffer.
  void reduce_scatter(void* device_data, void* mine, int64_t shard, ncclDataType_t type, size_t bytes) {
    check_count(shard, "reduce-scatter");
    if (shard == 0) return;
    check(api_.reduce_scatter(device_data, mine, static_cast<size_t>(shard), type, ncclSum, comm_, current_stream()),
          "ncclReduceScatter");
    count_sent(shard * size() * static_cast<int64_t>(bytes), 1);
  }
  // In place on the training stream, or (started) on the communicator's own, after the work
  // already queued on the training stream.
  void allreduce(void* device_data, int64_t count, ncclDataType_t type, size_t bytes, bool started) {
    check_count(count, "allreduce");
    if (count == 0) return;
    cudaStream_t stream = current_stream();
    if (started) {
      if (stream_ == nullptr) {  // non-blocking: no implicit order with the legacy default stream
        FLASHGPT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
        FLASHGPT_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
        FLASHGPT_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
      }
      // The wait takes the event as last recorded, so one event serves every start.
      FLASHGPT_CUDA_CHECK(cudaEventRecord(ready_, current_stream()));
      FLASHGPT_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
      stream = stream_;
      pending_ = true;
    }
    check(api_.all_reduce(device_data, device_data, static_cast<size_t>(count), type, ncclSum, comm_, stream),
          "ncclAllReduce");
    count_sent(count * static_cast<int64_t>(bytes), 2);
  }
  void check(ncclResult_t r, const char* what) const {
    FLASHGPT_CHECK(r == ncclSuccess, "NCCL: {} failed on rank {}: {}", what, rank(), api_.error_string(r));
  }
  const NcclApi& api_;
  ncclComm_t comm_ = nullptr;
  // The sums started during a backward: their stream, and the events that order it both ways.
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr, done_ = nullptr;
  bool pending_ = false;
};
#endif

// Why this build cannot use NCCL at all ("" when it can try).
std::string nccl_unbuilt() {
#if defined(FLASHGPT_SIMT)
  return "the CPU emulator has no NCCL";
#elif defined(FLASHGPT_NCCL_HEADERS)
  return "";
#else
  return "this build was compiled without NCCL's header (nccl.h)";
#endif
}

}  // namespace

bool nccl_available(std::string* detail) {
  std::string why = nccl_unbuilt();
#if defined(FLASHGPT_NCCL_HEADERS)
  if (why.empty()) {
    if (const NcclApi* api = nccl_api(&why)) {
      if (detail) *detail = "NCCL " + nccl_version_string(api->version) + " (libnccl.so.2, loaded at run time)";
      return true;
    }
  }
#endif
  if (detail) *detail = why;
  return false;
}

std::unique_ptr<DeviceComm> DeviceComm::create(dist::Communicator& host, GpuComm kind) {
  const dist::HostRanks local = dist::host_ranks(host);
  int gpus = 0, gpu = 0;
  agree(host, error_of([&] { gpu = bind_gpu(local.local_rank, &gpus); }), "choosing the ranks' GPUs");
  // Whether NCCL can serve: built, loadable on every rank, and a GPU for every rank of each host.
  std::string no_nccl = nccl_unbuilt();
#if defined(FLASHGPT_NCCL_HEADERS)
  if (no_nccl.empty() && nccl_api(&no_nccl) == nullptr && no_nccl.empty()) no_nccl = "NCCL did not load";
#endif
  if (no_nccl.empty() && local.local_size > gpus) {
    no_nccl = fmt::format("{} ranks share this host's {} GPU(s), and NCCL needs a GPU for each", local.local_size,
                          gpus);
  }
  const std::vector<int32_t> without = host.allgather_one<int32_t>(no_nccl.empty() ? 0 : 1);
  const auto first_without = std::find(without.begin(), without.end(), 1);
  if (no_nccl.empty() && first_without != without.end()) {
    no_nccl = fmt::format("rank {} cannot use it (its message says why)", first_without - without.begin());
  }
  const std::string where = fmt::format("rank {} on GPU {} of {} on its host", host.rank(), gpu, gpus);
  if (kind == GpuComm::Nccl) agree(host, no_nccl.empty() ? "" : "--gpu-comm nccl: " + no_nccl, "--gpu-comm nccl");
  std::unique_ptr<DeviceComm> comm;
#if defined(FLASHGPT_NCCL_HEADERS)
  if (kind != GpuComm::Host && no_nccl.empty()) {
    const NcclApi& api = *nccl_api(nullptr);
    std::unique_ptr<NcclDeviceComm> nccl;
    agree(host, error_of([&] { nccl = std::make_unique<NcclDeviceComm>(host, gpu, api); }), "starting NCCL");
    nccl->why_ = fmt::format("gradients summed by NCCL {} ({})", nccl_version_string(api.version), where);
    comm = std::move(nccl);
  }
#endif
  if (!comm) {
    auto staged = std::make_unique<HostDeviceComm>(host, gpu);
    staged->why_ = fmt::format("gradients summed through host memory over {} ({}){}", host.backend(), where,
                               kind == GpuComm::Auto ? ", not NCCL: " + no_nccl : std::string());
    comm = std::move(staged);
  }
  return comm;
}

std::unique_ptr<DeviceComm> DeviceComm::subgroup(dist::Communicator& group) const {
  const std::string where = fmt::format("rank {} of {} on GPU {}", group.rank(), group.size(), gpu());
#if defined(FLASHGPT_NCCL_HEADERS)
  if (backend() == "nccl") {
    std::unique_ptr<NcclDeviceComm> nccl;
    agree(group, error_of([&] { nccl = std::make_unique<NcclDeviceComm>(group, gpu(), *nccl_api(nullptr)); }),
          "starting NCCL for a group of ranks");
    nccl->why_ = fmt::format("a group's sums by NCCL ({})", where);
    return nccl;
  }
#endif
  auto staged = std::make_unique<HostDeviceComm>(group, gpu());
  staged->why_ = fmt::format("a group's sums through host memory over {} ({})", group.backend(), where);
  return staged;
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
