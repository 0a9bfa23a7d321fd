// A small corpus of repeated sentences, tokenized by characters, and the metrics a run writes:
// the shared ground of the training-loop tests on the CPU (test_train) and the GPU
// (test_train_cuda).
#pragma once

#include <cstdint>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "flashgpt/core/io.h"
#include "flashgpt/data/shard.h"
#include "flashgpt/tokenizer/tokenizer.h"
#include "flashgpt/train/trainer.h"
#include "testing/temp_dir.h"

namespace flashgpt::testing {

struct Corpus {
  TempDir dir;
  std::string train, val, tokenizer;
  explicit Corpus(int repeats = 40) {
    std::string text;
    const char* lines[] = {"the cat sat on the mat. ", "a dog ran in the park! ", "birds sing at dawn; ",
                           "rain falls on the roof. "};
    for (int i = 0; i < repeats; ++i) text += lines[i % 4];
    auto tok = train_char_tokenizer(text);
    std::vector<int> ids = tok->encode(text);
    train = dir / "train.bin";
    val = dir / "val.bin";
    tokenizer = dir / "tokenizer.json";
    write_shard(train, ids);
    write_shard(val, std::span<const int>(ids.data(), ids.size() / 2));
    save_tokenizer(*tok, tokenizer);
  }
};

// Eight steps of batch 4 × 16 with a validation pass every third, into `out`.
inline TrainOptions corpus_options(const Corpus& corpus, const std::string& out) {
  TrainOptions o;
  o.train_data = corpus.train;
  o.val_data = corpus.val;
  o.tokenizer_path = corpus.tokenizer;
  o.batch_size = 4;
  o.seq_len = 16;
  o.max_steps = 8;
  o.lr.lr = 3e-3;
  o.lr.warmup_steps = 2;
  o.val_every = 3;
  o.val_batches = 2;
  o.out_dir = out;
  o.progress_bar = false;
  o.seed = 42;
  return o;
}

// (step → loss) and (step → val_loss) from a metrics file.
struct Metrics {
  std::map<int64_t, double> loss, val;
};
inline Metrics read_metrics(const std::string& path) {
  Metrics m;
  std::istringstream in(read_text_file(path));
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) m.loss[j["step"]] = j["loss"];
    if (j.contains("val_loss")) m.val[j["step"]] = j["val_loss"];
  }
  return m;
}

}  // namespace flashgpt::testing
