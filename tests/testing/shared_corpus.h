// What the training tests under mpirun share across ranks: a directory every rank sees, and a
// corpus of random tokens written once into it (test_distributed, test_distributed_cuda).
#pragma once

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "flashgpt/core/rng.h"
#include "flashgpt/data/shard.h"
#include "flashgpt/dist/comm.h"

namespace flashgpt::testing {

// Rank 0 makes the directory and tells the others; rank 0 removes it once every rank is done.
class SharedDir {
 public:
  SharedDir() {
    char buf[256] = {};
    if (dist::world().rank() == 0) {
      static int counter = 0;
      path_ = std::filesystem::temp_directory_path() /
              ("flashgpt-dist-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
      std::filesystem::remove_all(path_);
      std::filesystem::create_directories(path_);
      std::snprintf(buf, sizeof buf, "%s", path_.c_str());
    }
    dist::world().broadcast(buf, sizeof buf, 0);
    path_ = buf;
  }
  ~SharedDir() {
    dist::world().arrive("test cleanup", 0);
    std::error_code ec;
    if (dist::world().rank() == 0) std::filesystem::remove_all(path_, ec);
  }
  SharedDir(const SharedDir&) = delete;
  SharedDir& operator=(const SharedDir&) = delete;
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// Random tokens over a vocabulary of 50: enough that no run of these tests leaves the first shard.
struct SharedCorpus {
  SharedDir dir;
  std::string train, val;
  SharedCorpus() {
    train = dir / "train.bin";
    val = dir / "val.bin";
    if (dist::world().rank() == 0) {
      Rng rng(5);
      std::vector<int> ids(60000);
      for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int>((i * 7 + rng.next_u64() % 5) % 50);
      write_shard(train, ids);
      write_shard(val, std::span<const int>(ids.data(), 20000));
    }
    dist::world().arrive("corpus written", 0);
  }
};

}  // namespace flashgpt::testing
