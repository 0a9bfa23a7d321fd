#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "flashgpt/tokenizer/tokenizer.h"

namespace flashgpt {

// Ids 0–255: the byte values (ASCII characters are their own ids); 256: end-of-text;
// 257…: the non-ASCII characters of the training text, in code-point order.
class CharTokenizer final : public Tokenizer {
 public:
  explicit CharTokenizer(std::vector<uint32_t> extra_chars);
  static std::unique_ptr<Tokenizer> from_json(const nlohmann::json& j, const std::string& source);

  std::vector<int> encode(std::string_view text) const override;
  std::string token_bytes(int id) const override;
  int vocab_size() const override { return kFirstChar + static_cast<int>(chars_.size()); }
  int eot_token() const override { return kEot; }
  std::string kind() const override { return "char"; }
  nlohmann::json to_json() const override;

 private:
  static constexpr int kEot = 256;
  static constexpr int kFirstChar = 257;
  std::vector<uint32_t> chars_;
  std::unordered_map<uint32_t, int> ids_;
};

}  // namespace flashgpt
