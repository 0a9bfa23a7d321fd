// Tokenizers: text ⇄ token ids, exact round trip on any byte string (invalid UTF-8 included).
//   char  — one token per byte value 0–255, one per non-ASCII character seen in the training text,
//           so decode(encode(s)) == s for every s, seen characters or not.
//   bpe   — byte-level BPE (GPT-2's algorithm and pre-tokenizer), trained by `flashgpt prepare`.
//   gpt2  — the GPT-2 BPE itself, loaded from its encoder.json + vocab.bpe.
// Every tokenizer has an end-of-text token; the literal "<|endoftext|>" in text encodes to it.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace flashgpt {

inline constexpr std::string_view kEndOfText = "<|endoftext|>";

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int> encode(std::string_view text) const = 0;
  // The bytes of one token (a piece of a UTF-8 character, possibly).
  virtual std::string token_bytes(int id) const = 0;
  virtual int vocab_size() const = 0;
  virtual int eot_token() const = 0;
  virtual std::string kind() const = 0;
  virtual nlohmann::json to_json() const = 0;

  std::string decode(std::span<const int> ids) const;
};

// Character tokenizer whose extra characters are those found in `corpus`.
std::unique_ptr<Tokenizer> train_char_tokenizer(std::string_view corpus);
// Byte-level BPE trained on `corpus` up to `vocab_size` tokens (256 bytes + merges + end-of-text).
std::unique_ptr<Tokenizer> train_bpe_tokenizer(std::string_view corpus, int vocab_size);
// GPT-2's tokenizer from its two files.
std::unique_ptr<Tokenizer> load_gpt2_tokenizer(const std::string& encoder_json, const std::string& vocab_bpe);

void save_tokenizer(const Tokenizer& tok, const std::string& path);
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);
std::unique_ptr<Tokenizer> tokenizer_from_json(const nlohmann::json& j, const std::string& source);

// Splits text into GPT-2 pre-tokenizer pieces; bytes that are not valid UTF-8 form pieces of their
// own, so the concatenation of the pieces is always the input.
std::vector<std::string_view> gpt2_pretokenize(std::string_view text);

}  // namespace flashgpt
