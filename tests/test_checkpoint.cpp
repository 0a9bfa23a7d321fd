// Checkpoints (safetensors) and llm.c model files: round trips and every kind of bad file.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <functional>

#include "flashgpt/core/error.h"
#include "testing/errors.h"
#include "flashgpt/core/io.h"
#include "flashgpt/model/checkpoint.h"
#include "flashgpt/model/gpt.h"
#include "testing/temp_dir.h"

namespace flashgpt {
namespace {

using testing::error_of;

GPTConfig small(bool gpt2 = false) {
  GPTConfig c = GPTConfig::preset("tiny");
  c.vocab_size = 50;
  if (!gpt2) {
    c.pos = PosKind::Rope;
    c.qk_norm = true;
    c.post_norm = true;
    c.n_kv_head = 1;
  }
  return c;
}

TEST(Checkpoint, RoundTripsWeightsOptimizerStateAndMetadata) {
  testing::TempDir dir;
  GPT<float> model(small());
  model.init_weights(3);
  std::vector<float> m(model.params().size(), 0.25f), v(model.params().size(), 0.5f);
  nlohmann::json state = {{"step", 12}, {"rng", 99}}, tok = {{"type", "char"}, {"chars", nlohmann::json::array()}};
  save_checkpoint(dir / "c.safetensors", CheckpointRef{model.config(), model.params(), m, v, state, tok});
  CheckpointData d = load_checkpoint(dir / "c.safetensors");
  EXPECT_EQ(d.config, model.config());
  EXPECT_TRUE(std::equal(d.params.begin(), d.params.end(), model.params().begin()));
  EXPECT_EQ(d.adam_m, m);
  EXPECT_EQ(d.adam_v, v);
  EXPECT_EQ(d.train_state, state);
  EXPECT_EQ(d.tokenizer, tok);
  // Weights only.
  nlohmann::json null;
  save_checkpoint(dir / "w.safetensors", CheckpointRef{model.config(), model.params(), {}, {}, null, null});
  CheckpointData w = load_checkpoint(dir / "w.safetensors");
  EXPECT_TRUE(w.adam_m.empty());
  EXPECT_TRUE(w.train_state.is_null());
}

TEST(Checkpoint, HeaderIsStandardSafetensors) {
  testing::TempDir dir;
  GPT<float> model(small());
  model.init_weights(1);
  nlohmann::json null;
  save_checkpoint(dir / "c.safetensors", CheckpointRef{model.config(), model.params(), {}, {}, null, null});
  std::string bytes = read_text_file(dir / "c.safetensors");
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  nlohmann::json header = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(header["wte"]["dtype"], "F32");
  EXPECT_EQ(header["wte"]["shape"], (std::vector<int64_t>{128, 32}));
  EXPECT_EQ(header["wte"]["data_offsets"][0], 0);
  // Every metadata value is a string, as the format requires.
  for (auto& [k, val] : header["__metadata__"].items()) EXPECT_TRUE(val.is_string()) << k;
}

TEST(Checkpoint, RefusesToSaveNonFiniteWeightsAndKeepsThePreviousFile) {
  testing::TempDir dir;
  GPT<float> model(small());
  model.init_weights(1);
  nlohmann::json null;
  save_checkpoint(dir / "c.safetensors", CheckpointRef{model.config(), model.params(), {}, {}, null, null});
  model.param("blocks.1.mlp.fc.weight")[5] = std::numeric_limits<float>::quiet_NaN();
  std::string msg = error_of([&] {
    save_checkpoint(dir / "c.safetensors", CheckpointRef{model.config(), model.params(), {}, {}, null, null});
  });
  EXPECT_NE(msg.find("blocks.1.mlp.fc.weight"), std::string::npos) << msg;
  EXPECT_NO_THROW(load_checkpoint(dir / "c.safetensors"));
}

TEST(Checkpoint, DamagedFilesGiveOneClearError) {
  testing::TempDir dir;
  GPT<float> model(small());
  model.init_weights(1);
  nlohmann::json null;
  const std::string good = dir / "good.safetensors";
  save_checkpoint(good, CheckpointRef{model.config(), model.params(), {}, {}, null, null});
  const std::string bytes = read_text_file(good);
  auto variant = [&](const std::string& name, std::string content) {
    write_text_file_atomic(dir / name, content);
    return error_of([&] { load_checkpoint(dir / name); });
  };
  EXPECT_NE(variant("trunc.safetensors", bytes.substr(0, bytes.size() - 100)).find("trunc.safetensors: truncated"),
            std::string::npos);
  EXPECT_NE(variant("tiny.safetensors", bytes.substr(0, 5)).find("tiny.safetensors: truncated"), std::string::npos);
  std::string flipped = bytes;
  flipped[bytes.size() - 3] ^= 0x10;
  EXPECT_NE(variant("flip.safetensors", flipped).find("checksum mismatch"), std::string::npos);
  std::string header_damage = bytes;
  header_damage[9] = '#';
  EXPECT_NE(variant("hdr.safetensors", header_damage).find("hdr.safetensors"), std::string::npos);
  EXPECT_NE(variant("text.safetensors", "hello, this is not a checkpoint at all").find("text.safetensors"),
            std::string::npos);
  EXPECT_NE(error_of([&] { load_checkpoint(dir / "nope.safetensors"); }).find("nope.safetensors"), std::string::npos);
}

TEST(Checkpoint, AConfigThatDoesNotMatchTheTensorsIsNamed) {
  testing::TempDir dir;
  GPT<float> model(small());
  model.init_weights(1);
  nlohmann::json null;
  const std::string path = dir / "c.safetensors";
  save_checkpoint(path, CheckpointRef{model.config(), model.params(), {}, {}, null, null});
  // Rewrite the config in the metadata to claim a wider MLP.
  std::string bytes = read_text_file(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  nlohmann::json header = nlohmann::json::parse(bytes.substr(8, n));
  nlohmann::json cfg = nlohmann::json::parse(header["__metadata__"]["config"].get<std::string>());
  cfg["mlp_hidden"] = 64;
  header["__metadata__"]["config"] = cfg.dump();
  std::string text = header.dump();
  const uint64_t len = text.size();
  std::string out(reinterpret_cast<const char*>(&len), 8);
  out += text + bytes.substr(8 + n);
  write_text_file_atomic(dir / "mismatch.safetensors", out);
  std::string msg = error_of([&] { load_checkpoint(dir / "mismatch.safetensors"); });
  EXPECT_NE(msg.find("blocks.0.mlp.fc.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("shape"), std::string::npos) << msg;
}

TEST(LlmcFormat, ExportImportRoundTripAndLayout) {
  testing::TempDir dir;
  GPT<float> model(small(true));
  model.init_weights(4);
  const std::string path = dir / "model.bin";
  export_llmc_model(path, model.config(), model.params());
  const GPTConfig& c = model.config();
  // Header and the first tensors sit where llm.c puts them.
  std::string bytes = read_text_file(path);
  int32_t h[8];
  std::memcpy(h, bytes.data(), sizeof(h));
  EXPECT_EQ(h[0], 20240326);
  EXPECT_EQ(h[1], 3);
  EXPECT_EQ(h[2], c.block_size);
  EXPECT_EQ(h[3], c.vocab_size);
  EXPECT_EQ(h[4], c.n_layer);
  EXPECT_EQ(h[5], c.n_head);
  EXPECT_EQ(h[6], c.n_embd);
  EXPECT_EQ(h[7], c.padded_vocab_size());
  const int64_t C = c.n_embd, Vp = c.padded_vocab_size(), T = c.block_size;
  float first_ln1w_l1;  // ln1w is stacked [L, C] right after wte and wpe
  std::memcpy(&first_ln1w_l1, bytes.data() + 1024 + (Vp * C + T * C + C) * 4, 4);
  EXPECT_EQ(first_ln1w_l1, model.param("blocks.1.ln1.weight")[0]);
  CheckpointData d = import_llmc_model(path);
  EXPECT_EQ(d.config, model.config());
  EXPECT_TRUE(std::equal(d.params.begin(), d.params.end(), model.params().begin()));
}

TEST(LlmcFormat, RejectsOtherArchitecturesAndBadFiles) {
  testing::TempDir dir;
  GPT<float> model(small(false));
  model.init_weights(4);
  std::string msg = error_of([&] { export_llmc_model(dir / "x.bin", model.config(), model.params()); });
  EXPECT_NE(msg.find("config field 'pos'"), std::string::npos) << msg;
  GPT<float> gpt2(small(true));
  gpt2.init_weights(1);
  export_llmc_model(dir / "m.bin", gpt2.config(), gpt2.params());
  std::string bytes = read_text_file(dir / "m.bin");
  write_text_file_atomic(dir / "trunc.bin", bytes.substr(0, bytes.size() - 4));
  EXPECT_NE(error_of([&] { import_llmc_model(dir / "trunc.bin"); }).find("truncated"), std::string::npos);
  std::string bf16 = bytes;
  bf16[4] = 5;
  write_text_file_atomic(dir / "bf16.bin", bf16);
  EXPECT_NE(error_of([&] { import_llmc_model(dir / "bf16.bin"); }).find("version 5"), std::string::npos);
  std::string magic = bytes;
  magic[0] = 0;
  write_text_file_atomic(dir / "magic.bin", magic);
  EXPECT_NE(error_of([&] { import_llmc_model(dir / "magic.bin"); }).find("not an llm.c model file"), std::string::npos);
}

}  // namespace
}  // namespace flashgpt
