#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "flashgpt/tokenizer/tokenizer.h"

namespace flashgpt {

// Byte-level BPE: every token is a byte string; the 256 single bytes are always tokens, so any
// input encodes. Pieces from the GPT-2 pre-tokenizer are merged pair by pair in rank order.
class ByteBPE final : public Tokenizer {
 public:
  // tokens[id] = bytes of token id; merges in rank order as pairs of ids; eot = end-of-text id.
  ByteBPE(std::string kind, std::vector<std::string> tokens, std::vector<std::pair<int, int>> merges, int eot);
  static std::unique_ptr<Tokenizer> from_json(const nlohmann::json& j, const std::string& source);

  std::vector<int> encode(std::string_view text) const override;
  std::string token_bytes(int id) const override;
  int vocab_size() const override { return static_cast<int>(tokens_.size()); }
  int eot_token() const override { return eot_; }
  std::string kind() const override { return kind_; }
  nlohmann::json to_json() const override;

 private:
  void encode_piece(std::string_view piece, std::vector<int>& out) const;

  std::string kind_;
  std::vector<std::string> tokens_;
  std::vector<std::pair<int, int>> merges_;
  int eot_;
  int byte_ids_[256];
  std::unordered_map<uint64_t, std::pair<int, int>> merge_rank_;  // (a, b) → (rank, merged id)
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int>> cache_;
};

// GPT-2's reversible map from bytes to printable characters, used in its vocabulary files.
std::string bytes_to_gpt2_unicode(std::string_view bytes);
// The inverse; false when the string uses a character outside the map.
bool gpt2_unicode_to_bytes(std::string_view s, std::string* bytes);

}  // namespace flashgpt
