// Context parallelism: the ranks of one group share each sequence. A sequence of T tokens is cut
// into 2N chunks of T/(2N); rank i holds chunks i and 2N−1−i, so under the causal mask every rank
// does the same attention work (the early chunk sees few keys, the late one many). Everything but
// attention is per token and runs on the local rows alone; each layer's attention gathers the
// keys and values of the whole sequence (gather), and its backward returns each rank the sum of
// every rank's gradient for its own rows (reduce_scatter).
//
// Layouts: global [B, T, width] in sequence order; local [B, 2·chunk, width], this rank's early
// chunk then its late chunk.
#pragma once

#include <cstdint>

#include "flashgpt/dist/comm.h"

namespace flashgpt::dist {

class ContextParallel {
 public:
  // group: the ranks sharing the sequences (group.size() = N); seq_len must be a multiple of 2N.
  ContextParallel(Communicator& group, int64_t seq_len);

  Communicator& group() const { return *group_; }
  int ranks() const { return group_->size(); }
  int index() const { return group_->rank(); }
  int64_t seq_len() const { return T_; }
  int64_t chunk() const { return chunk_; }
  int64_t local_len() const { return 2 * chunk_; }
  // Global chunk of local chunk j (0: early, 1: late), and the global position of local row t.
  int64_t global_chunk(int j) const { return j == 0 ? index() : 2 * ranks() - 1 - index(); }
  int64_t position(int64_t t) const { return global_chunk(t < chunk_ ? 0 : 1) * chunk_ + t % chunk_; }

  // This rank's rows of a global tensor.
  template <typename T>
  void slice(const T* global, T* local, int64_t B, int64_t width) const;
  // Every rank's rows, assembled in sequence order.
  template <typename T>
  void gather(const T* local, T* global, int64_t B, int64_t width) const;
  // The sum over ranks of `global`, this rank's rows only.
  template <typename T>
  void reduce_scatter(const T* global, T* local, int64_t B, int64_t width) const;

 private:
  Communicator* group_;
  int64_t T_, chunk_;
};

}  // namespace flashgpt::dist
