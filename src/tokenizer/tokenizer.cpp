#include "flashgpt/tokenizer/tokenizer.h"

#include "flashgpt/core/error.h"
#include "flashgpt/core/io.h"
#include "tokenizer/bpe.h"
#include "tokenizer/char_tokenizer.h"

namespace flashgpt {

std::string Tokenizer::decode(std::span<const int> ids) const {
  std::string out;
  for (int id : ids) out += token_bytes(id);
  return out;
}

void save_tokenizer(const Tokenizer& tok, const std::string& path) {
  write_text_file_atomic(path, tok.to_json().dump());
}

std::unique_ptr<Tokenizer> tokenizer_from_json(const nlohmann::json& j, const std::string& source) {
  FLASHGPT_CHECK(j.is_object() && j.contains("type") && j["type"].is_string(),
                 "{}: not a flashgpt tokenizer (no \"type\" field)", source);
  const std::string type = j["type"].get<std::string>();
  try {
    if (type == "char") return CharTokenizer::from_json(j, source);
    if (type == "bpe" || type == "gpt2") return ByteBPE::from_json(j, source);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed tokenizer: {}", source, e.what());
  }
  fail("{}: unknown tokenizer type '{}' (expected char, bpe or gpt2)", source, type);
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", path, e.what());
  }
  return tokenizer_from_json(j, path);
}

}  // namespace flashgpt
