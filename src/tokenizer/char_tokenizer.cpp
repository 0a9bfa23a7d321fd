#include "tokenizer/char_tokenizer.h"

#include <set>

#include "flashgpt/core/error.h"
#include "tokenizer/utf8.h"

namespace flashgpt {

CharTokenizer::CharTokenizer(std::vector<uint32_t> extra_chars) : chars_(std::move(extra_chars)) {
  for (size_t i = 0; i < chars_.size(); ++i) ids_[chars_[i]] = kFirstChar + static_cast<int>(i);
}

std::unique_ptr<Tokenizer> train_char_tokenizer(std::string_view corpus) {
  std::set<uint32_t> seen;
  for (size_t i = 0; i < corpus.size();) {
    uint32_t cp = 0;
    size_t n = utf8::decode(corpus, i, &cp);
    if (n > 1) seen.insert(cp);
    i += n > 0 ? n : 1;
  }
  return std::make_unique<CharTokenizer>(std::vector<uint32_t>(seen.begin(), seen.end()));
}

std::unique_ptr<Tokenizer> CharTokenizer::from_json(const nlohmann::json& j, const std::string& source) {
  std::vector<uint32_t> chars = j.at("chars").get<std::vector<uint32_t>>();
  for (size_t i = 0; i < chars.size(); ++i) {
    FLASHGPT_CHECK(chars[i] >= 0x80 && chars[i] <= 0x10FFFF && (i == 0 || chars[i] > chars[i - 1]),
                   "{}: field 'chars' must list increasing non-ASCII code points (entry {})", source, i);
  }
  return std::make_unique<CharTokenizer>(std::move(chars));
}

std::vector<int> CharTokenizer::encode(std::string_view text) const {
  std::vector<int> out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    if (text.compare(i, kEndOfText.size(), kEndOfText) == 0) {
      out.push_back(kEot);
      i += kEndOfText.size();
      continue;
    }
    uint32_t cp = 0;
    size_t n = utf8::decode(text, i, &cp);
    if (n > 1) {
      auto it = ids_.find(cp);
      if (it != ids_.end()) {
        out.push_back(it->second);
        i += n;
        continue;
      }
    }
    // ASCII, unseen characters and invalid bytes: one token per byte.
    size_t bytes = n > 0 ? n : 1;
    for (size_t k = 0; k < bytes; ++k) out.push_back(static_cast<unsigned char>(text[i + k]));
    i += bytes;
  }
  return out;
}

std::string CharTokenizer::token_bytes(int id) const {
  FLASHGPT_CHECK(id >= 0 && id < vocab_size(), "token id {} is out of range for this tokenizer (vocab {})", id,
                 vocab_size());
  if (id < 256) return std::string(1, static_cast<char>(id));
  if (id == kEot) return std::string(kEndOfText);
  return utf8::encode(chars_[static_cast<size_t>(id - kFirstChar)]);
}

nlohmann::json CharTokenizer::to_json() const { return {{"type", "char"}, {"chars", chars_}}; }

}  // namespace flashgpt
