#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/bpe.h"

#include <pcre2.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "flashgpt/core/error.h"
#include "flashgpt/core/io.h"
#include "tokenizer/utf8.h"

namespace flashgpt {

namespace {

inline uint64_t pair_key(int a, int b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); }

// Replaces every non-overlapping occurrence of the pair (a, b), left to right, by merged_id: the
// one merge rule that training and encoding share.
void apply_merge(std::vector<int>& ids, int a, int b, int merged_id) {
  size_t out = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i + 1 < ids.size() && ids[i] == a && ids[i + 1] == b) {
      ids[out++] = merged_id;
      ++i;
    } else {
      ids[out++] = ids[i];
    }
  }
  ids.resize(out);
}

// GPT-2's pre-tokenizer: contractions, letters, numbers, other symbols, whitespace.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class Pretokenizer {
 public:
  Pretokenizer() {
    int err = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kGpt2Pattern), PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &offset, nullptr);
    if (!code_) fail("tokenizer: cannot compile the GPT-2 pre-tokenizer pattern (PCRE2 error {})", err);
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // optional speed-up; the interpreter is the fallback
  }
  ~Pretokenizer() { pcre2_code_free(code_); }
  Pretokenizer(const Pretokenizer&) = delete;
  Pretokenizer& operator=(const Pretokenizer&) = delete;

  std::vector<std::string_view> split(std::string_view text) const {
    std::vector<std::string_view> pieces;
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    size_t pos = 0;
    while (pos < text.size()) {
      int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), pos, 0, md, nullptr);
      if (rc < 0) {  // no further match: the rest (invalid bytes only) is one piece
        pieces.push_back(text.substr(pos));
        break;
      }
      PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      size_t start = ov[0], end = ov[1];
      if (start > pos) pieces.push_back(text.substr(pos, start - pos));  // invalid bytes between matches
      if (end == start) {  // never expected from this pattern; step one byte to be safe
        end = start + 1;
      }
      pieces.push_back(text.substr(start, end - start));
      pos = end;
    }
    pcre2_match_data_free(md);
    return pieces;
  }

 private:
  pcre2_code* code_ = nullptr;
};

const Pretokenizer& pretokenizer() {
  static const Pretokenizer p;
  return p;
}

// GPT-2's bytes_to_unicode table: printable bytes map to themselves, the rest to 256 + n.
const std::vector<uint32_t>& byte_to_cp() {
  static const std::vector<uint32_t> table = [] {
    std::vector<uint32_t> t(256, 0);
    std::vector<bool> direct(256, false);
    for (int b = '!'; b <= '~'; ++b) direct[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
    uint32_t n = 0;
    for (int b = 0; b < 256; ++b) t[b] = direct[b] ? static_cast<uint32_t>(b) : 256 + n++;
    return t;
  }();
  return table;
}

}  // namespace

std::vector<std::string_view> gpt2_pretokenize(std::string_view text) { return pretokenizer().split(text); }

std::string bytes_to_gpt2_unicode(std::string_view bytes) {
  std::string out;
  for (unsigned char b : bytes) out += utf8::encode(byte_to_cp()[b]);
  return out;
}

bool gpt2_unicode_to_bytes(std::string_view s, std::string* bytes) {
  static const std::unordered_map<uint32_t, unsigned char> inverse = [] {
    std::unordered_map<uint32_t, unsigned char> m;
    for (int b = 0; b < 256; ++b) m[byte_to_cp()[b]] = static_cast<unsigned char>(b);
    return m;
  }();
  bytes->clear();
  for (size_t i = 0; i < s.size();) {
    uint32_t cp = 0;
    size_t n = utf8::decode(s, i, &cp);
    if (n == 0) return false;
    auto it = inverse.find(cp);
    if (it == inverse.end()) return false;
    *bytes += static_cast<char>(it->second);
    i += n;
  }
  return true;
}

ByteBPE::ByteBPE(std::string kind, std::vector<std::string> tokens, std::vector<std::pair<int, int>> merges, int eot)
    : kind_(std::move(kind)), tokens_(std::move(tokens)), merges_(std::move(merges)), eot_(eot) {
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
  std::unordered_map<std::string, int> id_of;
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (static_cast<int>(i) == eot_) continue;
    id_of.emplace(tokens_[i], static_cast<int>(i));
    if (tokens_[i].size() == 1) byte_ids_[static_cast<unsigned char>(tokens_[i][0])] = static_cast<int>(i);
  }
  for (int b = 0; b < 256; ++b) {
    FLASHGPT_CHECK(byte_ids_[b] >= 0, "tokenizer: byte {} has no token (a byte-level BPE needs all 256)", b);
  }
  for (size_t r = 0; r < merges_.size(); ++r) {
    auto [a, b] = merges_[r];
    FLASHGPT_CHECK(a >= 0 && b >= 0 && a < vocab_size() && b < vocab_size(), "tokenizer: merge {} uses an unknown id",
                   r);
    auto it = id_of.find(tokens_[static_cast<size_t>(a)] + tokens_[static_cast<size_t>(b)]);
    FLASHGPT_CHECK(it != id_of.end(), "tokenizer: merge {} makes a token that is not in the vocabulary", r);
    merge_rank_.emplace(pair_key(a, b), std::make_pair(static_cast<int>(r), it->second));
  }
  FLASHGPT_CHECK(eot_ >= 0 && eot_ < vocab_size(), "tokenizer: end-of-text id {} is out of range", eot_);
}

void ByteBPE::encode_piece(std::string_view piece, std::vector<int>& out) const {
  {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = cache_.find(std::string(piece));
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int> ids;
  ids.reserve(piece.size());
  for (unsigned char c : piece) ids.push_back(byte_ids_[c]);
  // Repeatedly merge the adjacent pair of lowest rank.
  while (ids.size() > 1) {
    int best_rank = std::numeric_limits<int>::max(), best_id = -1;
    size_t best_pos = 0;
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
      auto it = merge_rank_.find(pair_key(ids[i], ids[i + 1]));
      if (it != merge_rank_.end() && it->second.first < best_rank) {
        best_rank = it->second.first;
        best_id = it->second.second;
        best_pos = i;
      }
    }
    if (best_id < 0) break;
    apply_merge(ids, ids[best_pos], ids[best_pos + 1], best_id);
  }
  out.insert(out.end(), ids.begin(), ids.end());
  std::lock_guard<std::mutex> lock(cache_mutex_);
  if (cache_.size() < (1u << 20)) cache_.emplace(std::string(piece), std::move(ids));
}

std::vector<int> ByteBPE::encode(std::string_view text) const {
  std::vector<int> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t eot = text.find(kEndOfText, pos);
    std::string_view chunk = text.substr(pos, eot == std::string_view::npos ? std::string_view::npos : eot - pos);
    for (std::string_view piece : gpt2_pretokenize(chunk)) encode_piece(piece, out);
    if (eot == std::string_view::npos) break;
    out.push_back(eot_);
    pos = eot + kEndOfText.size();
  }
  return out;
}

std::string ByteBPE::token_bytes(int id) const {
  FLASHGPT_CHECK(id >= 0 && id < vocab_size(), "token id {} is out of range for this tokenizer (vocab {})", id,
                 vocab_size());
  if (id == eot_) return std::string(kEndOfText);
  return tokens_[static_cast<size_t>(id)];
}

nlohmann::json ByteBPE::to_json() const {
  // Tokens are stored in GPT-2's printable byte encoding so the file is valid UTF-8 JSON.
  nlohmann::json vocab = nlohmann::json::array();
  for (size_t i = 0; i < tokens_.size(); ++i) {
    vocab.push_back(static_cast<int>(i) == eot_ ? std::string(kEndOfText) : bytes_to_gpt2_unicode(tokens_[i]));
  }
  nlohmann::json merges = nlohmann::json::array();
  for (auto [a, b] : merges_) merges.push_back({a, b});
  return {{"type", kind_}, {"vocab", vocab}, {"merges", merges}, {"eot", eot_}};
}

std::unique_ptr<Tokenizer> ByteBPE::from_json(const nlohmann::json& j, const std::string& source) {
  const auto& vocab = j.at("vocab");
  FLASHGPT_CHECK(vocab.is_array() && !vocab.empty(), "{}: field 'vocab' must be a non-empty array", source);
  const int eot = j.at("eot").get<int>();
  std::vector<std::string> tokens;
  for (size_t i = 0; i < vocab.size(); ++i) {
    std::string bytes;
    if (static_cast<int>(i) == eot) {
      tokens.emplace_back();
      continue;
    }
    FLASHGPT_CHECK(gpt2_unicode_to_bytes(vocab[i].get<std::string>(), &bytes),
                   "{}: vocab entry {} is not in GPT-2's byte encoding", source, i);
    tokens.push_back(std::move(bytes));
  }
  std::vector<std::pair<int, int>> merges;
  for (const auto& m : j.at("merges")) merges.emplace_back(m.at(0).get<int>(), m.at(1).get<int>());
  try {
    return std::make_unique<ByteBPE>(j.at("type").get<std::string>(), std::move(tokens), std::move(merges), eot);
  } catch (const Error& e) {
    fail("{}: {}", source, e.what());
  }
}

std::unique_ptr<Tokenizer> load_gpt2_tokenizer(const std::string& encoder_json, const std::string& vocab_bpe) {
  nlohmann::json enc;
  try {
    enc = nlohmann::json::parse(read_text_file(encoder_json));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", encoder_json, e.what());
  }
  FLASHGPT_CHECK(enc.is_object() && !enc.empty(), "{}: expected an object mapping tokens to ids", encoder_json);
  std::vector<std::string> tokens(enc.size());
  std::vector<bool> filled(enc.size(), false);
  std::unordered_map<std::string, int> id_of;
  int eot = -1;
  for (const auto& [text, id_json] : enc.items()) {
    FLASHGPT_CHECK(id_json.is_number_integer(), "{}: id of token {} is not an integer", encoder_json, text);
    const int id = id_json.get<int>();
    FLASHGPT_CHECK(id >= 0 && id < static_cast<int>(tokens.size()) && !filled[static_cast<size_t>(id)],
                   "{}: ids must be 0…{} without repeats (token {} has id {})", encoder_json, tokens.size() - 1, text,
                   id);
    filled[static_cast<size_t>(id)] = true;
    id_of[text] = id;
    if (text == kEndOfText) {
      eot = id;
      continue;
    }
    FLASHGPT_CHECK(gpt2_unicode_to_bytes(text, &tokens[static_cast<size_t>(id)]),
                   "{}: token {} is not in GPT-2's byte encoding", encoder_json, text);
  }
  FLASHGPT_CHECK(eot >= 0, "{}: no <|endoftext|> token", encoder_json);
  std::istringstream lines(read_text_file(vocab_bpe));
  std::string line;
  std::vector<std::pair<int, int>> merges;
  int line_no = 0;
  while (std::getline(lines, line)) {
    ++line_no;
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    size_t space = line.find(' ');
    FLASHGPT_CHECK(space != std::string::npos, "{}:{}: expected two tokens separated by a space", vocab_bpe, line_no);
    auto a = id_of.find(line.substr(0, space));
    auto b = id_of.find(line.substr(space + 1));
    FLASHGPT_CHECK(a != id_of.end() && b != id_of.end(), "{}:{}: merge uses a token not in {}", vocab_bpe, line_no,
                   encoder_json);
    merges.emplace_back(a->second, b->second);
  }
  try {
    return std::make_unique<ByteBPE>("gpt2", std::move(tokens), std::move(merges), eot);
  } catch (const Error& e) {
    fail("{}: {}", vocab_bpe, e.what());
  }
}

std::unique_ptr<Tokenizer> train_bpe_tokenizer(std::string_view corpus, int vocab_size) {
  FLASHGPT_CHECK(vocab_size >= 257 && vocab_size <= 65536,
                 "--vocab-size: a byte-level BPE needs between 257 and 65536 tokens, got {}", vocab_size);
  // Count distinct pre-tokenizer pieces; merges never cross piece boundaries.
  std::unordered_map<std::string_view, int64_t> piece_counts;
  for (std::string_view piece : gpt2_pretokenize(corpus)) ++piece_counts[piece];
  std::vector<std::pair<std::string_view, int64_t>> sorted(piece_counts.begin(), piece_counts.end());
  std::sort(sorted.begin(), sorted.end());  // a fixed order keeps training deterministic
  struct Word {
    std::vector<int> ids;
    int64_t count;
  };
  std::vector<Word> words;
  words.reserve(sorted.size());
  for (auto& [piece, count] : sorted) {
    Word w{{}, count};
    for (unsigned char c : piece) w.ids.push_back(c);
    words.push_back(std::move(w));
  }

  std::unordered_map<uint64_t, int64_t> counts;
  std::unordered_map<uint64_t, std::vector<int>> where;  // pair → words that held it (may be stale)
  std::set<std::pair<int64_t, uint64_t>> ranked;           // (−count, pair): best first, ties by pair
  auto change = [&](uint64_t key, int64_t delta) {
    int64_t& c = counts[key];
    if (c > 0) ranked.erase({-c, key});
    c += delta;
    if (c > 0) ranked.insert({-c, key});
  };
  for (size_t w = 0; w < words.size(); ++w) {
    const auto& ids = words[w].ids;
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
      uint64_t key = pair_key(ids[i], ids[i + 1]);
      change(key, words[w].count);
      where[key].push_back(static_cast<int>(w));
    }
  }

  std::vector<std::string> tokens(256);
  for (int b = 0; b < 256; ++b) tokens[static_cast<size_t>(b)] = std::string(1, static_cast<char>(b));
  std::vector<std::pair<int, int>> merges;
  const int n_merges = vocab_size - 257;
  while (static_cast<int>(merges.size()) < n_merges && !ranked.empty()) {
    auto [neg_count, key] = *ranked.begin();
    if (-neg_count < 2) break;  // nothing repeats any more
    const int a = static_cast<int>(key >> 32), b = static_cast<int>(key & 0xFFFFFFFFu);
    const int new_id = static_cast<int>(tokens.size());
    tokens.push_back(tokens[static_cast<size_t>(a)] + tokens[static_cast<size_t>(b)]);
    merges.emplace_back(a, b);
    std::vector<int> affected = std::move(where[key]);
    where.erase(key);
    std::sort(affected.begin(), affected.end());
    affected.erase(std::unique(affected.begin(), affected.end()), affected.end());
    for (int w : affected) {
      Word& word = words[static_cast<size_t>(w)];
      std::vector<int>& ids = word.ids;
      bool present = false;
      for (size_t i = 0; i + 1 < ids.size(); ++i) present |= ids[i] == a && ids[i + 1] == b;
      if (!present) continue;
      for (size_t i = 0; i + 1 < ids.size(); ++i) change(pair_key(ids[i], ids[i + 1]), -word.count);
      apply_merge(ids, a, b, new_id);
      for (size_t i = 0; i + 1 < ids.size(); ++i) {
        uint64_t k = pair_key(ids[i], ids[i + 1]);
        change(k, word.count);
        if (ids[i] == new_id || ids[i + 1] == new_id) where[k].push_back(w);
      }
    }
  }
  const int eot = static_cast<int>(tokens.size());
  tokens.emplace_back();
  return std::make_unique<ByteBPE>("bpe", std::move(tokens), std::move(merges), eot);
}

}  // namespace flashgpt
