// DeviceContextParallel (flashgpt/cuda/context_parallel_cuda.h): the gather and reduce-scatter of
// context parallelism over the group's GPU communicator, around the layout kernels of
// context_parallel_cuda.cu.
#include "flashgpt/cuda/context_parallel_cuda.h"

#include "flashgpt/core/error.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

DeviceContextParallel::DeviceContextParallel(DeviceComm& group, int64_t seq_len)
    : group_(&group), host_(group.host(), seq_len) {
  FLASHGPT_CHECK(group.host().size() == group.size(), "context parallel: the GPU group has {} ranks, its host {}",
                 group.size(), group.host().size());
}

template <typename T>
void DeviceContextParallel::gather(const T* local, int64_t ld, T* global, int64_t B, int64_t width,
                                   float* stage) const {
  static_assert(sizeof(T) == 2 || sizeof(T) == 4, "context parallel gather: fp32 or bf16 rows");
  // Each rank's rows travel as the fp32 words of their bytes: 2·B·chunk rows of 2- or 4-byte
  // values are always a whole number of words. Copies only: nothing is added, so the bits arrive.
  const int64_t rows = local_len() * B, shard = rows * width * static_cast<int64_t>(sizeof(T)) / 4;
  T* mine = reinterpret_cast<T*>(stage + index() * shard);
  copy_rows(mine, 0, width, local, 0, ld, 1, rows, width);
  group_->allgather(stage, shard);
  cp_assemble(global, reinterpret_cast<const T*>(stage), ranks(), B, chunk(), width);
}

template <typename T>
void DeviceContextParallel::reduce_scatter(const float* global, T* local, int64_t ld, int64_t B, int64_t width,
                                           float* stage) const {
  const int64_t rows = local_len() * B, shard = rows * width;
  cp_disassemble(stage, global, ranks(), B, chunk(), width);
  group_->reduce_scatter_sum(stage, shard);
  cp_store_rows(local, ld, stage + index() * shard, rows, width);
}

#define FLASHGPT_INSTANTIATE(T)                                                                                    \
  template void DeviceContextParallel::gather<T>(const T*, int64_t, T*, int64_t, int64_t, float*) const;         \
  template void DeviceContextParallel::reduce_scatter<T>(const float*, T*, int64_t, int64_t, int64_t, float*) const;
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(bf16)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
