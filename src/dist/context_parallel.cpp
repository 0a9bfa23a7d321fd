#include "flashgpt/dist/context_parallel.h"

#include <algorithm>
#include <vector>

#include "flashgpt/core/error.h"

namespace flashgpt::dist {

ContextParallel::ContextParallel(Communicator& group, int64_t seq_len) : group_(&group), T_(seq_len) {
  const int64_t n = group.size();
  FLASHGPT_CHECK(seq_len > 0 && seq_len % (2 * n) == 0,
                 "--context-parallel {}: the sequence length {} must be a multiple of 2 × {} = {} (each rank holds two "
                 "equal chunks)",
                 n, seq_len, n, 2 * n);
  chunk_ = seq_len / (2 * n);
}

template <typename T>
void ContextParallel::slice(const T* global, T* local, int64_t B, int64_t width) const {
  const int64_t c = chunk_ * width;
  for (int64_t b = 0; b < B; ++b) {
    for (int j = 0; j < 2; ++j) {
      const T* src = global + b * T_ * width + global_chunk(j) * c;
      std::copy(src, src + c, local + (b * 2 + j) * c);
    }
  }
}

template <typename T>
void ContextParallel::gather(const T* local, T* global, int64_t B, int64_t width) const {
  const int n = ranks();
  const int64_t block = B * local_len() * width;  // one rank's rows
  std::vector<T> all(static_cast<size_t>(block * n));
  std::vector<int64_t> counts(static_cast<size_t>(n), block);
  group_->allgather(local, all.data(), counts, dtype_of<T>());
  const int64_t c = chunk_ * width;
  for (int r = 0; r < n; ++r) {
    for (int64_t b = 0; b < B; ++b) {
      for (int j = 0; j < 2; ++j) {
        const int64_t g = j == 0 ? r : 2 * n - 1 - r;
        const T* src = all.data() + r * block + (b * 2 + j) * c;
        std::copy(src, src + c, global + b * T_ * width + g * c);
      }
    }
  }
}

template <typename T>
void ContextParallel::reduce_scatter(const T* global, T* local, int64_t B, int64_t width) const {
  const int n = ranks();
  const int64_t block = B * local_len() * width;
  std::vector<T> send(static_cast<size_t>(block * n));
  const int64_t c = chunk_ * width;
  for (int r = 0; r < n; ++r) {  // lay the rows out by the rank that owns them
    for (int64_t b = 0; b < B; ++b) {
      for (int j = 0; j < 2; ++j) {
        const int64_t g = j == 0 ? r : 2 * n - 1 - r;
        const T* src = global + b * T_ * width + g * c;
        std::copy(src, src + c, send.data() + r * block + (b * 2 + j) * c);
      }
    }
  }
  std::vector<int64_t> counts(static_cast<size_t>(n), block);
  group_->reduce_scatter_sum(send.data(), local, counts, dtype_of<T>());
}

#define FLASHGPT_INSTANTIATE(T)                                                                 \
  template void ContextParallel::slice<T>(const T*, T*, int64_t, int64_t) const;                \
  template void ContextParallel::gather<T>(const T*, T*, int64_t, int64_t) const;               \
  template void ContextParallel::reduce_scatter<T>(const T*, T*, int64_t, int64_t) const;
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(double)
FLASHGPT_INSTANTIATE(int32_t)
#undef FLASHGPT_INSTANTIATE

}  // namespace flashgpt::dist
