// Checkpoints: one safetensors file (readable by the Python `safetensors` package) holding the
// weights under their parameter names, optionally the AdamW moments as "optimizer.m.<name>" and
// "optimizer.v.<name>", and in its metadata the model config, the training state (step, data
// position, RNG) and the tokenizer, all JSON, plus a CRC-32 of the data so corruption is caught.
// Writes are atomic: a run killed mid-save leaves the previous checkpoint loadable.
#pragma once

#include <nlohmann/json.hpp>

#include <span>
#include <string>
#include <vector>

#include "flashgpt/model/config.h"

namespace flashgpt {

struct CheckpointData {
  GPTConfig config;
  std::vector<float> params;          // in param_specs(config) order
  std::vector<float> adam_m, adam_v;  // empty when saved without optimizer state
  nlohmann::json train_state;         // null when none
  nlohmann::json tokenizer;           // null when none
};

struct CheckpointRef {
  const GPTConfig& config;
  std::span<const float> params;
  std::span<const float> adam_m = {}, adam_v = {};
  const nlohmann::json& train_state;
  const nlohmann::json& tokenizer;
};

// Refuses non-finite weights (names the first bad tensor) and writes atomically.
void save_checkpoint(const std::string& path, const CheckpointRef& ckpt);
// Validates format, config, every tensor's dtype, shape and extent, and the checksum; every error
// names the file and, where it applies, the tensor or field.
CheckpointData load_checkpoint(const std::string& path, bool with_optimizer = true);

// llm.c's GPT-2 model file: header of 256 int32 — [0] = 20240326, [1] = 3 (fp32), [2] max_seq_len,
// [3] vocab, [4] layers, [5] heads, [6] channels, [7] padded vocab — then 16 fp32 tensors in the
// order wte, wpe, ln1w, ln1b, qkvw, qkvb, attprojw, attprojb, ln2w, ln2b, fcw, fcb, fcprojw,
// fcprojb, lnfw, lnfb, the per-layer ones stacked over layers.
inline constexpr int32_t kLlmcModelMagic = 20240326;
inline constexpr int32_t kLlmcModelVersionFp32 = 3;
CheckpointData import_llmc_model(const std::string& path);
// Throws naming the config field when the model is not llm.c's GPT-2 architecture.
void export_llmc_model(const std::string& path, const GPTConfig& config, std::span<const float> params);

}  // namespace flashgpt
