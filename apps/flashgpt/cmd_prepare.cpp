// flashgpt prepare: text files → tokenizer.json + train/val token shards (llm.c format).
#include <filesystem>
#include <memory>

#include "commands.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/io.h"
#include "flashgpt/core/timer.h"
#include "flashgpt/data/shard.h"
#include "flashgpt/tokenizer/tokenizer.h"

namespace flashgpt::cli {

namespace {

struct PrepareOptions {
  std::vector<std::string> inputs;
  std::string out_dir;
  std::string tokenizer = "bpe";
  int vocab_size = 4096;
  std::string gpt2_encoder, gpt2_vocab;
  std::string existing_tokenizer;
  std::string doc_separator;
  double val_fraction = 0.05;
  int64_t shard_tokens = 100'000'000;
};

bool is_blank(std::string_view s) {
  return s.find_first_not_of(" \t\r\n\f\v") == std::string_view::npos;
}

void run_prepare(const PrepareOptions& o) {
  Timer timer;
  FLASHGPT_CHECK(o.val_fraction >= 0 && o.val_fraction < 1, "--val-fraction: must be in [0, 1), got {}",
                 o.val_fraction);
  FLASHGPT_CHECK(o.shard_tokens > 0, "--shard-tokens: must be positive");
  // Documents: each input file, split at the separator when one is given.
  std::vector<std::string> docs;
  std::vector<std::string> files;
  for (const std::string& in : o.inputs) {
    for (const std::string& path : expand_glob(in)) files.push_back(path);
  }
  for (const std::string& path : files) {
    std::string text = read_text_file(path);
    if (o.doc_separator.empty()) {
      if (!is_blank(text)) docs.push_back(std::move(text));
      continue;
    }
    size_t pos = 0;
    while (pos <= text.size()) {
      size_t next = text.find(o.doc_separator, pos);
      std::string_view doc = std::string_view(text).substr(pos, next == std::string::npos ? std::string::npos : next - pos);
      if (!is_blank(doc)) docs.emplace_back(doc);
      if (next == std::string::npos) break;
      pos = next + o.doc_separator.size();
    }
  }
  FLASHGPT_CHECK(!docs.empty(), "empty corpus: {} contain{} no text", files.size() == 1 ? files[0] : "the input files",
                 files.size() == 1 ? "s" : "");

  std::unique_ptr<Tokenizer> tok;
  if (!o.existing_tokenizer.empty()) {
    tok = load_tokenizer(o.existing_tokenizer);
  } else if (o.tokenizer == "gpt2") {
    FLASHGPT_CHECK(!o.gpt2_encoder.empty() && !o.gpt2_vocab.empty(),
                   "--tokenizer gpt2: give --gpt2-encoder encoder.json and --gpt2-vocab vocab.bpe");
    tok = load_gpt2_tokenizer(o.gpt2_encoder, o.gpt2_vocab);
  } else {
    std::string corpus;
    for (const std::string& d : docs) {
      corpus += d;
      corpus += '\n';
    }
    tok = o.tokenizer == "char" ? train_char_tokenizer(corpus) : train_bpe_tokenizer(corpus, o.vocab_size);
  }
  FLASHGPT_CHECK(tok->vocab_size() <= 65536, "tokenizer: {} tokens do not fit the uint16 shard format",
                 tok->vocab_size());

  // Every document is preceded by the end-of-text token (llm.c's convention). Validation takes an
  // evenly spread share of the documents, or the tail of the token stream when there are few.
  std::vector<int> train_tokens, val_tokens;
  const bool split_by_docs = docs.size() >= 20 && o.val_fraction > 0;
  for (size_t i = 0; i < docs.size(); ++i) {
    const bool to_val = split_by_docs && static_cast<int64_t>((i + 1) * o.val_fraction) >
                                             static_cast<int64_t>(i * o.val_fraction);
    std::vector<int>& dst = to_val ? val_tokens : train_tokens;
    dst.push_back(tok->eot_token());
    std::vector<int> ids = tok->encode(docs[i]);
    dst.insert(dst.end(), ids.begin(), ids.end());
  }
  if (!split_by_docs && o.val_fraction > 0) {
    const size_t n_val = static_cast<size_t>(static_cast<double>(train_tokens.size()) * o.val_fraction);
    val_tokens.assign(train_tokens.end() - static_cast<std::ptrdiff_t>(n_val), train_tokens.end());
    train_tokens.resize(train_tokens.size() - n_val);
  }

  std::filesystem::create_directories(o.out_dir);
  const std::filesystem::path dir(o.out_dir);
  save_tokenizer(*tok, (dir / "tokenizer.json").string());
  auto write_split = [&](const std::vector<int>& tokens, const char* name) {
    int n_shards = 0;
    for (size_t begin = 0; begin < tokens.size(); begin += static_cast<size_t>(o.shard_tokens)) {
      const size_t end = std::min(tokens.size(), begin + static_cast<size_t>(o.shard_tokens));
      write_shard((dir / fmt::format("{}_{:06}.bin", name, n_shards++)).string(),
                  std::span<const int>(tokens.data() + begin, end - begin));
    }
    return n_shards;
  };
  const int train_shards = write_split(train_tokens, "train");
  const int val_shards = write_split(val_tokens, "val");
  std::printf("prepared %zu documents from %zu file%s: %zu train tokens (%d shard%s), %zu val tokens (%d shard%s)\n",
              docs.size(), files.size(), files.size() == 1 ? "" : "s", train_tokens.size(), train_shards,
              train_shards == 1 ? "" : "s", val_tokens.size(), val_shards, val_shards == 1 ? "" : "s");
  std::printf("tokenizer: %s, %d tokens -> %s\n", tok->kind().c_str(), tok->vocab_size(),
              (dir / "tokenizer.json").c_str());
  std::printf("done in %.1f s; train with: flashgpt train --data %s\n", timer.seconds(), o.out_dir.c_str());
}

}  // namespace

void register_prepare(CLI::App& app) {
  auto o = std::make_shared<PrepareOptions>();
  CLI::App* sub = app.add_subcommand("prepare", "Tokenize text files into train/val token shards");
  sub->add_option("inputs", o->inputs, "Text files or globs (each file is a document unless --doc-separator splits it)")
      ->required();
  sub->add_option("-o,--out", o->out_dir, "Output directory for tokenizer.json, train_*.bin and val_*.bin")->required();
  sub->add_option("--tokenizer", o->tokenizer, "char, bpe (trained here) or gpt2 (from its files)")
      ->check(CLI::IsMember({"char", "bpe", "gpt2"}))
      ->capture_default_str();
  sub->add_option("--vocab-size", o->vocab_size, "Tokens in a trained BPE vocabulary (257–65536)")
      ->capture_default_str();
  sub->add_option("--gpt2-encoder", o->gpt2_encoder, "GPT-2's encoder.json (with --tokenizer gpt2)")
      ->check(CLI::ExistingFile);
  sub->add_option("--gpt2-vocab", o->gpt2_vocab, "GPT-2's vocab.bpe (with --tokenizer gpt2)")->check(CLI::ExistingFile);
  sub->add_option("--use-tokenizer", o->existing_tokenizer, "Reuse an existing tokenizer.json instead of training one")
      ->check(CLI::ExistingFile);
  sub->add_option("--doc-separator", o->doc_separator,
                  "Split files into documents at this exact string (e.g. $'\\n%\\n' for fortune files)");
  sub->add_option("--val-fraction", o->val_fraction, "Share of documents (or tokens) held out for validation")
      ->capture_default_str();
  sub->add_option("--shard-tokens", o->shard_tokens, "Most tokens per shard file")->capture_default_str();
  sub->callback([o] { run_prepare(*o); });
}

}  // namespace flashgpt::cli
