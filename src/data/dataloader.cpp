#include "flashgpt/data/dataloader.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "flashgpt/core/error.h"
#include "flashgpt/core/io.h"
#include "flashgpt/data/shard.h"

namespace flashgpt {

void document_segments(const int* tokens, int64_t B, int64_t T, int eot_token, int32_t* segments) {
  for (int64_t b = 0; b < B; ++b) {
    int32_t seg = 0;
    for (int64_t t = 0; t < T; ++t) {
      if (t > 0 && tokens[b * T + t] == eot_token) ++seg;
      segments[b * T + t] = seg;
    }
  }
}

DataLoader::DataLoader(const std::string& pattern, int64_t B, int64_t T, int vocab_size, int rank, int world)
    : pattern_(pattern), B_(B), T_(T), vocab_size_(vocab_size), rank_(rank), world_(world) {
  FLASHGPT_CHECK(B > 0 && T > 0, "data loader: batch {} and sequence length {} must be positive", B, T);
  FLASHGPT_CHECK(world > 0 && rank >= 0 && rank < world, "data loader: rank {} of {} is invalid", rank, world);
  const int64_t needed = B * T * world + 1;
  for (const std::string& path : expand_glob(pattern)) {
    const int64_t n = read_shard_header(path);
    FLASHGPT_CHECK(n >= needed,
                   "{}: {} tokens, fewer than the {} one batch needs (batch {} × sequence {}{} + 1): use a smaller "
                   "--batch-size or --seq-len",
                   path, n, needed, B, T, world > 1 ? fmt::format(" × {} processes", world) : std::string());
    shards_.push_back({path, n});
    total_tokens_ += n;
  }
  window_.resize(static_cast<size_t>(B * T + 1));
  reset();
}

void DataLoader::reset() {
  epoch_ = 0;
  start_shard(0);
}

void DataLoader::start_shard(size_t index) {
  shard_ = index;
  pos_ = 0;
}

void DataLoader::next_batch(int* inputs, int* targets) {
  // pos_ is where the whole group's block of world windows starts; every process moves to the next
  // shard at the same time, when the block no longer fits.
  const int64_t n = B_ * T_;
  if (pos_ + n * world_ + 1 > shards_[shard_].ntokens) {
    size_t next = (shard_ + 1) % shards_.size();
    if (next == 0) ++epoch_;
    start_shard(next);
  }
  const Shard& s = shards_[shard_];
  const int64_t at = pos_ + n * rank_;
  std::FILE* f = std::fopen(s.path.c_str(), "rb");
  FLASHGPT_CHECK(f != nullptr, "{}: cannot open: {}", s.path, std::strerror(errno));
  std::fseek(f, kShardHeaderBytes + at * 2, SEEK_SET);
  size_t got = std::fread(window_.data(), 2, window_.size(), f);
  std::fclose(f);
  FLASHGPT_CHECK(got == window_.size(), "{}: read failed at token {} (file changed since it was opened?)", s.path,
                 at);
  for (int64_t i = 0; i <= n; ++i) {
    FLASHGPT_CHECK(window_[static_cast<size_t>(i)] < vocab_size_,
                   "{}: token id {} at position {} is out of range for vocab_size {}", s.path,
                   window_[static_cast<size_t>(i)], at + i, vocab_size_);
  }
  for (int64_t i = 0; i < n; ++i) {
    inputs[i] = window_[static_cast<size_t>(i)];
    targets[i] = window_[static_cast<size_t>(i + 1)];
  }
  pos_ += n * world_;
}

nlohmann::json DataLoader::state() const {
  return {{"shard", shard_}, {"position", pos_}, {"epoch", epoch_}, {"num_shards", shards_.size()}};
}

void DataLoader::set_state(const nlohmann::json& s, const std::string& source) {
  try {
    const size_t shard = s.at("shard").get<size_t>();
    const int64_t pos = s.at("position").get<int64_t>();
    FLASHGPT_CHECK(s.at("num_shards").get<size_t>() == shards_.size(),
                   "{}: the data loader state was saved over {} shards, but {} matches {}", source,
                   s.at("num_shards").get<size_t>(), pattern_, shards_.size());
    FLASHGPT_CHECK(shard < shards_.size() && pos >= 0 && pos <= shards_[shard].ntokens,
                   "{}: the data loader position is outside the shards of {}", source, pattern_);
    shard_ = shard;
    pos_ = pos;
    epoch_ = s.at("epoch").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed data loader state: {}", source, e.what());
  }
}

}  // namespace flashgpt
