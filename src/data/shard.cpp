#include "flashgpt/data/shard.h"

#include <cstdio>
#include <cstring>

#include "flashgpt/core/error.h"
#include "flashgpt/core/io.h"

namespace flashgpt {

void write_shard(const std::string& path, std::span<const int> tokens) {
  std::vector<uint16_t> data(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    FLASHGPT_CHECK(tokens[i] >= 0 && tokens[i] <= 65535, "{}: token {} at index {} does not fit in uint16", path,
                   tokens[i], i);
    data[i] = static_cast<uint16_t>(tokens[i]);
  }
  int32_t header[kShardHeaderInts] = {};
  header[0] = kShardMagic;
  header[1] = kShardVersion;
  FLASHGPT_CHECK(tokens.size() <= 0x7FFFFFFFu, "{}: {} tokens is more than one shard can hold", path, tokens.size());
  header[2] = static_cast<int32_t>(tokens.size());
  write_file_atomic(path, [&](std::FILE* f) {
    write_all(f, header, sizeof(header), path);
    write_all(f, data.data(), data.size() * sizeof(uint16_t), path);
  });
}

int64_t read_shard_header(const std::string& path) {
  const uint64_t size = file_size(path);
  FLASHGPT_CHECK(size >= static_cast<uint64_t>(kShardHeaderBytes),
                 "{}: truncated token shard ({} bytes, the header alone is {})", path, size, kShardHeaderBytes);
  int32_t header[kShardHeaderInts];
  std::FILE* f = std::fopen(path.c_str(), "rb");
  FLASHGPT_CHECK(f != nullptr, "{}: cannot open: {}", path, std::strerror(errno));
  size_t got = std::fread(header, 1, sizeof(header), f);
  std::fclose(f);
  FLASHGPT_CHECK(got == sizeof(header), "{}: cannot read the shard header", path);
  FLASHGPT_CHECK(header[0] == kShardMagic, "{}: not a token shard (magic {} , expected {})", path, header[0],
                 kShardMagic);
  FLASHGPT_CHECK(header[1] == kShardVersion, "{}: unsupported shard version {} (expected {})", path, header[1],
                 kShardVersion);
  const int64_t ntokens = header[2];
  FLASHGPT_CHECK(ntokens >= 0, "{}: negative token count {} in the header", path, ntokens);
  const uint64_t expected = static_cast<uint64_t>(kShardHeaderBytes) + static_cast<uint64_t>(ntokens) * 2;
  FLASHGPT_CHECK(size == expected, "{}: header says {} tokens ({} bytes) but the file has {} bytes{}", path, ntokens,
                 expected, size, size < expected ? " (truncated)" : "");
  return ntokens;
}

std::vector<uint16_t> read_shard(const std::string& path) {
  const int64_t n = read_shard_header(path);
  std::vector<uint16_t> tokens(static_cast<size_t>(n));
  std::FILE* f = std::fopen(path.c_str(), "rb");
  FLASHGPT_CHECK(f != nullptr, "{}: cannot open: {}", path, std::strerror(errno));
  std::fseek(f, kShardHeaderBytes, SEEK_SET);
  size_t got = n > 0 ? std::fread(tokens.data(), 2, static_cast<size_t>(n), f) : 0;
  std::fclose(f);
  FLASHGPT_CHECK(static_cast<int64_t>(got) == n, "{}: read failed", path);
  return tokens;
}

}  // namespace flashgpt
