// Tokenizers: exact round trips (valid and invalid UTF-8), BPE training, GPT-2 files, bad input.
#include <gtest/gtest.h>

#include "flashgpt/core/error.h"
#include "flashgpt/core/io.h"
#include "flashgpt/core/rng.h"
#include "flashgpt/tokenizer/tokenizer.h"
#include "testing/errors.h"
#include "testing/temp_dir.h"

namespace flashgpt {
namespace {

const std::string kText =
    "The quick brown fox jumps over the lazy dog. It's 2026; naïve café — déjà vu! 日本語のテキスト 🦊\n"
    "  Indented line\twith tabs,   spaces and numbers 12345 67.89\n"
    "The quick brown fox again, and again: the the the.";

std::vector<std::string> awkward_strings() {
  Rng rng(5);
  std::vector<std::string> out = {"", " ", "\n\n", "a", "<|endoftext|>", "x<|endoftext|>y<|endoftext|>",
                                  "\xff\xfe", "abc\x80\x81" "def", "\xe6\x97", "caf\xc3", "\xed\xa0\x80",
                                  "\xc0\xaf", "🦊🦊", "'s'll'd", "unseen: ÆØÅ ß Ω"};
  for (int i = 0; i < 50; ++i) {  // random bytes
    std::string s;
    const int n = static_cast<int>(rng.next_u64() % 40);
    for (int k = 0; k < n; ++k) s += static_cast<char>(rng.next_u64() & 0xFF);
    out.push_back(s);
  }
  return out;
}

void expect_round_trips(const Tokenizer& tok) {
  for (const std::string& s : awkward_strings()) {
    std::vector<int> ids = tok.encode(s);
    for (int id : ids) ASSERT_TRUE(id >= 0 && id < tok.vocab_size());
    EXPECT_EQ(tok.decode(ids), s) << tok.kind();
  }
  EXPECT_EQ(tok.decode(tok.encode(kText)), kText);
}

TEST(Pretokenizer, SplitsLikeGpt2AndKeepsEveryByte) {
  std::vector<std::string_view> p = gpt2_pretokenize("Hello world's 123 !!  x");
  std::vector<std::string> got(p.begin(), p.end());
  std::vector<std::string> expected = {"Hello", " world", "'s", " 123", " !!", " ", " x"};
  EXPECT_EQ(got, expected);
  for (const std::string& s : awkward_strings()) {
    std::string joined;
    for (auto piece : gpt2_pretokenize(s)) joined += piece;
    EXPECT_EQ(joined, s);
  }
}

TEST(CharTokenizer, RoundTripsAndGivesSeenCharactersOneToken) {
  auto tok = train_char_tokenizer(kText);
  EXPECT_EQ(tok->kind(), "char");
  expect_round_trips(*tok);
  EXPECT_EQ(tok->encode("é").size(), 1u);    // seen: one token
  EXPECT_EQ(tok->encode("Æ").size(), 2u);    // unseen: its two bytes
  EXPECT_EQ(tok->encode("a<|endoftext|>b"), (std::vector<int>{'a', tok->eot_token(), 'b'}));
  auto again = tokenizer_from_json(tok->to_json(), "test");
  EXPECT_EQ(again->encode(kText), tok->encode(kText));
}

TEST(BpeTokenizer, TrainsMergesThatCompressAndRoundTrips) {
  std::string corpus;
  for (int i = 0; i < 20; ++i) corpus += kText;
  auto tok = train_bpe_tokenizer(corpus, 320);
  EXPECT_EQ(tok->vocab_size(), 320);
  EXPECT_EQ(tok->eot_token(), 319);
  expect_round_trips(*tok);
  // Frequent words become single tokens; the text shrinks well below one token per byte.
  EXPECT_EQ(tok->encode(" quick").size(), 1u);
  EXPECT_LT(tok->encode(kText).size(), kText.size() * 3 / 5);
  // Training is deterministic, and saving and loading gives the same tokenizer.
  EXPECT_EQ(train_bpe_tokenizer(corpus, 320)->to_json(), tok->to_json());
  testing::TempDir dir;
  save_tokenizer(*tok, dir / "tok.json");
  auto loaded = load_tokenizer(dir / "tok.json");
  EXPECT_EQ(loaded->encode(kText), tok->encode(kText));
}

TEST(BpeTokenizer, StopsWhenNothingRepeats) {
  auto tok = train_bpe_tokenizer("abcdefg", 1000);
  EXPECT_EQ(tok->vocab_size(), 257);  // bytes + end-of-text only
  expect_round_trips(*tok);
}

// A miniature vocabulary in GPT-2's own file formats.
void write_gpt2_files(const testing::TempDir& dir) {
  nlohmann::json enc = nlohmann::json::object();
  // GPT-2's printable byte map: bytes 33–126, 161–172, 174–255 map to themselves, the others to 256+.
  std::vector<int> direct;
  for (int b = 33; b <= 126; ++b) direct.push_back(b);
  for (int b = 161; b <= 172; ++b) direct.push_back(b);
  for (int b = 174; b <= 255; ++b) direct.push_back(b);
  auto cp_to_utf8 = [](int cp) {
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
  };
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool is_direct = std::find(direct.begin(), direct.end(), b) != direct.end();
    enc[cp_to_utf8(is_direct ? b : 256 + n++)] = b;
  }
  // "Ġ" is the space byte (0x20 → U+0120).
  enc["Ġt"] = 256;
  enc["he"] = 257;
  enc["Ġthe"] = 258;
  enc["<|endoftext|>"] = 259;
  write_text_file_atomic(dir / "encoder.json", enc.dump());
  write_text_file_atomic(dir / "vocab.bpe", "#version: 0.2\nĠ t\nh e\nĠt he\n");
}

TEST(Gpt2Tokenizer, LoadsItsFilesAndAppliesMergesInRankOrder) {
  testing::TempDir dir;
  write_gpt2_files(dir);
  auto tok = load_gpt2_tokenizer(dir / "encoder.json", dir / "vocab.bpe");
  EXPECT_EQ(tok->kind(), "gpt2");
  EXPECT_EQ(tok->vocab_size(), 260);
  EXPECT_EQ(tok->eot_token(), 259);
  EXPECT_EQ(tok->encode(" the"), (std::vector<int>{258}));
  EXPECT_EQ(tok->encode("the"), (std::vector<int>{'t', 257}));
  expect_round_trips(*tok);
  auto again = tokenizer_from_json(tok->to_json(), "test");
  EXPECT_EQ(again->encode(kText), tok->encode(kText));
}

TEST(Tokenizer, BadFilesGiveOneClearError) {
  testing::TempDir dir;
  write_gpt2_files(dir);
  write_text_file_atomic(dir / "broken.json", "{\"type\": \"bpe\", \"vocab\": ");
  write_text_file_atomic(dir / "alien.json", "{\"type\": \"wordpiece\"}");
  write_text_file_atomic(dir / "bad_merges.bpe", "#version: 0.2\nĠ zzz\n");
  auto message = [](const std::function<void()>& f) { return testing::error_of(f); };
  EXPECT_NE(message([&] { load_tokenizer(dir / "broken.json"); }).find("broken.json"), std::string::npos);
  EXPECT_NE(message([&] { load_tokenizer(dir / "alien.json"); }).find("wordpiece"), std::string::npos);
  EXPECT_NE(message([&] { load_tokenizer(dir / "missing.json"); }).find("missing.json"), std::string::npos);
  EXPECT_NE(message([&] { load_gpt2_tokenizer(dir / "encoder.json", dir / "bad_merges.bpe"); }).find("bad_merges.bpe:2"),
            std::string::npos);
  EXPECT_THROW(train_bpe_tokenizer("abc", 100), Error);
}

}  // namespace
}  // namespace flashgpt
