// Batches of (inputs, targets) [B, T] from one or more token shards, as llm.c reads them: a window of
// B·T + 1 consecutive tokens, targets shifted by one. The `world` processes of a data-parallel job
// read a block of `world` consecutive windows per batch, process `rank` the rank-th, so together
// they read exactly the windows one process would read in `world` batches. When the next block no
// longer fits in a shard, every process moves to the next shard at once, and after the last back
// to the first (a new epoch). The saved position is the block's, the same on every process, so a
// run resumes on any number of processes.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace flashgpt {

// Document ids for document masking: in each of the B rows of tokens [B, T], a new document
// starts at every end-of-text token after the first position (the token opens the document it
// precedes, as `flashgpt prepare` and llm.c write them).
void document_segments(const int* tokens, int64_t B, int64_t T, int eot_token, int32_t* segments);

class DataLoader {
 public:
  // pattern: a shard path or glob. vocab_size: tokens at or above it are an error naming the shard.
  DataLoader(const std::string& pattern, int64_t B, int64_t T, int vocab_size, int rank = 0, int world = 1);

  // Fills inputs and targets, each B·T ints.
  void next_batch(int* inputs, int* targets);
  void reset();
  int64_t total_tokens() const { return total_tokens_; }
  size_t num_shards() const { return shards_.size(); }
  const std::string& pattern() const { return pattern_; }

  // Position for checkpoints: resuming from it continues with exactly the next batch.
  nlohmann::json state() const;
  void set_state(const nlohmann::json& s, const std::string& source);

 private:
  struct Shard {
    std::string path;
    int64_t ntokens;
  };
  void start_shard(size_t index);

  std::string pattern_;
  int64_t B_, T_;
  int vocab_size_, rank_, world_;
  std::vector<Shard> shards_;
  int64_t total_tokens_ = 0;
  size_t shard_ = 0;
  int64_t pos_ = 0;
  int64_t epoch_ = 0;
  std::vector<uint16_t> window_;
};

}  // namespace flashgpt
