// Token shards (llm.c format) and the data loader.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>

#include "flashgpt/core/error.h"
#include "testing/errors.h"
#include "flashgpt/core/io.h"
#include "flashgpt/data/dataloader.h"
#include "flashgpt/data/shard.h"
#include "testing/temp_dir.h"

namespace flashgpt {
namespace {

using testing::error_of;

std::vector<int> iota_tokens(int n, int start = 0) {
  std::vector<int> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) t[static_cast<size_t>(i)] = (start + i) % 1000;
  return t;
}

// A shard written the way llm.c's Python scripts write them: header of 256 int32 then uint16s.
void write_llmc_style_shard(const std::string& path, const std::vector<uint16_t>& tokens) {
  std::vector<int32_t> header(256, 0);
  header[0] = 20240520;
  header[1] = 1;
  header[2] = static_cast<int32_t>(tokens.size());
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(header.data()), 1024);
  f.write(reinterpret_cast<const char*>(tokens.data()), static_cast<std::streamsize>(tokens.size() * 2));
}

TEST(Shard, RoundTripsAndReadsLlmcFiles) {
  testing::TempDir dir;
  std::vector<int> tokens = {0, 1, 65535, 42, 50256};
  write_shard(dir / "a.bin", tokens);
  EXPECT_EQ(file_size(dir / "a.bin"), 1024u + 10u);
  std::vector<uint16_t> back = read_shard(dir / "a.bin");
  EXPECT_EQ(std::vector<int>(back.begin(), back.end()), tokens);
  write_llmc_style_shard(dir / "b.bin", {7, 8, 9});
  EXPECT_EQ(read_shard(dir / "b.bin"), (std::vector<uint16_t>{7, 8, 9}));
}

TEST(Shard, BadFilesNameTheFileAndTheProblem) {
  testing::TempDir dir;
  std::vector<int> tokens = iota_tokens(100);
  write_shard(dir / "good.bin", tokens);
  std::string bytes = read_text_file(dir / "good.bin");
  write_text_file_atomic(dir / "truncated.bin", bytes.substr(0, bytes.size() - 7));
  write_text_file_atomic(dir / "short.bin", bytes.substr(0, 100));
  std::string magic = bytes;
  magic[0] = 'X';
  write_text_file_atomic(dir / "magic.bin", magic);
  std::string version = bytes;
  version[4] = 7;
  write_text_file_atomic(dir / "version.bin", version);
  EXPECT_NE(error_of([&] { read_shard(dir / "truncated.bin"); }).find("truncated.bin: header says 100 tokens"),
            std::string::npos);
  EXPECT_NE(error_of([&] { read_shard(dir / "short.bin"); }).find("short.bin: truncated"), std::string::npos);
  EXPECT_NE(error_of([&] { read_shard(dir / "magic.bin"); }).find("magic.bin: not a token shard"), std::string::npos);
  EXPECT_NE(error_of([&] { read_shard(dir / "version.bin"); }).find("version.bin: unsupported shard version 7"),
            std::string::npos);
  EXPECT_NE(error_of([&] { read_shard(dir / "absent.bin"); }).find("absent.bin"), std::string::npos);
  EXPECT_NE(error_of([&] { write_shard(dir / "big.bin", std::vector<int>{70000}); }).find("uint16"), std::string::npos);
}

TEST(DataLoader, ReadsShiftedWindowsAcrossShardsAndWraps) {
  testing::TempDir dir;
  write_shard(dir / "d_000.bin", iota_tokens(25, 0));
  write_shard(dir / "d_001.bin", iota_tokens(13, 100));
  DataLoader loader(dir / "d_*.bin", 2, 3, 1000);
  EXPECT_EQ(loader.num_shards(), 2u);
  std::vector<int> x(6), y(6);
  // Shard 0 holds 25 tokens: windows of 7 at 0, 6, 12, 18 (18 + 7 = 25 fits).
  for (int w = 0; w < 4; ++w) {
    loader.next_batch(x.data(), y.data());
    for (int i = 0; i < 6; ++i) {
      EXPECT_EQ(x[i], w * 6 + i);
      EXPECT_EQ(y[i], w * 6 + i + 1);
    }
  }
  loader.next_batch(x.data(), y.data());  // shard 1 at 0
  EXPECT_EQ(x[0], 100);
  nlohmann::json saved = loader.state();
  loader.next_batch(x.data(), y.data());  // shard 1 at 6
  EXPECT_EQ(x[0], 106);
  loader.next_batch(x.data(), y.data());  // wraps to shard 0
  EXPECT_EQ(x[0], 0);
  loader.set_state(saved, "test");
  loader.next_batch(x.data(), y.data());
  EXPECT_EQ(x[0], 106);
}

TEST(DataLoader, RanksReadDisjointWindows) {
  testing::TempDir dir;
  write_shard(dir / "d.bin", iota_tokens(100));
  DataLoader r0(dir / "d.bin", 1, 4, 1000, 0, 2), r1(dir / "d.bin", 1, 4, 1000, 1, 2);
  std::vector<int> x0(4), y0(4), x1(4), y1(4);
  r0.next_batch(x0.data(), y0.data());
  r1.next_batch(x1.data(), y1.data());
  EXPECT_EQ(x0[0], 0);
  EXPECT_EQ(x1[0], 4);
  r0.next_batch(x0.data(), y0.data());
  EXPECT_EQ(x0[0], 8);
}

// Together the ranks read exactly the windows one process reads, in blocks of `world`, move to the
// next shard at the same step, and save a position any rank count resumes from.
TEST(DataLoader, RanksTogetherReadWhatOneProcessReadsAcrossShards) {
  testing::TempDir dir;
  write_shard(dir / "d_000.bin", iota_tokens(61, 0));
  write_shard(dir / "d_001.bin", iota_tokens(40, 500));
  const std::string glob = dir / "d_*.bin";
  for (int world : {2, 3}) {
    SCOPED_TRACE("world " + std::to_string(world));
    DataLoader one(glob, 1, 5, 1000);
    std::vector<DataLoader> ranks;
    for (int r = 0; r < world; ++r) ranks.emplace_back(glob, 1, 5, 1000, r, world);
    std::vector<int> x(5), y(5);
    std::vector<int> firsts_one, firsts_ranks;
    for (int step = 0; step < 12; ++step) {
      std::vector<int> block;
      for (int r = 0; r < world; ++r) {
        ranks[static_cast<size_t>(r)].next_batch(x.data(), y.data());
        block.push_back(x[0]);
        EXPECT_EQ(ranks[static_cast<size_t>(r)].state(), ranks[0].state()) << "step " << step;
      }
      // One block: consecutive windows of one shard.
      for (int r = 1; r < world; ++r) EXPECT_EQ(block[static_cast<size_t>(r)], block[0] + 5 * r) << "step " << step;
      firsts_ranks.insert(firsts_ranks.end(), block.begin(), block.end());
    }
    // Within a shard the windows are those one process reads; the ranks skip a shard's tail
    // that holds fewer than `world` windows, so a single process with the same tail agrees.
    for (int i = 0; i < 12 * world; ++i) {
      one.next_batch(x.data(), y.data());
      firsts_one.push_back(x[0]);
    }
    const int per_shard0 = (61 - 1) / 5 / world * world;  // windows of shard 0 the ranks use
    for (int i = 0; i < per_shard0; ++i) EXPECT_EQ(firsts_ranks[static_cast<size_t>(i)], firsts_one[static_cast<size_t>(i)]);
    EXPECT_EQ(firsts_ranks[static_cast<size_t>(per_shard0)], 500) << "every rank moved to shard 1 together";
    // Resuming the state on one process continues at the block the ranks would read next (away
    // from a shard's tail, where the two skip differently).
    DataLoader r0(glob, 1, 5, 1000, 0, world);
    r0.next_batch(x.data(), y.data());
    DataLoader resumed(glob, 1, 5, 1000);
    resumed.set_state(r0.state(), "test");
    resumed.next_batch(x.data(), y.data());
    std::vector<int> x0(5), y0(5);
    r0.next_batch(x0.data(), y0.data());
    EXPECT_EQ(x, x0);
  }
}

TEST(DataLoader, RejectsTooSmallShardsAndOutOfRangeTokens) {
  testing::TempDir dir;
  write_shard(dir / "small.bin", iota_tokens(10));
  EXPECT_NE(error_of([&] { DataLoader(dir / "small.bin", 2, 8, 1000); }).find("small.bin: 10 tokens, fewer than"),
            std::string::npos);
  write_shard(dir / "ids.bin", iota_tokens(50));
  DataLoader loader(dir / "ids.bin", 1, 8, 12);
  std::vector<int> x(8), y(8);
  loader.next_batch(x.data(), y.data());
  EXPECT_NE(error_of([&] { loader.next_batch(x.data(), y.data()); }).find("out of range for vocab_size 12"),
            std::string::npos);
  EXPECT_NE(error_of([&] { DataLoader(dir / "nothing_*.bin", 1, 8, 20); }).find("nothing_*.bin: no such file"),
            std::string::npos);
}

TEST(AtomicWrite, AFailedWriteLeavesThePreviousFile) {
  testing::TempDir dir;
  write_text_file_atomic(dir / "f.txt", "good");
  EXPECT_THROW(write_file_atomic(dir / "f.txt",
                                 [](std::FILE* f) {
                                   std::fputs("half", f);
                                   throw Error("disk full");
                                 }),
               Error);
  EXPECT_EQ(read_text_file(dir / "f.txt"), "good");
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir.str())) files += e.is_regular_file();
  EXPECT_EQ(files, 1) << "the temporary file was left behind";
}

}  // namespace
}  // namespace flashgpt
