// Token shards in llm.c's format: a header of 256 int32 — [0] = 20240520 (magic), [1] = 1
// (version), [2] = number of tokens — followed by the tokens as uint16.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace flashgpt {

inline constexpr int32_t kShardMagic = 20240520;
inline constexpr int32_t kShardVersion = 1;
inline constexpr int kShardHeaderInts = 256;
inline constexpr int64_t kShardHeaderBytes = kShardHeaderInts * 4;

// Writes atomically; every token must fit in uint16.
void write_shard(const std::string& path, std::span<const int> tokens);
// Validates the header against the file size and returns the token count; errors name the file.
int64_t read_shard_header(const std::string& path);
std::vector<uint16_t> read_shard(const std::string& path);

}  // namespace flashgpt
