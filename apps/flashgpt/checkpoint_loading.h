// Loading a model (and its tokenizer) for the commands that run one: sample, eval, info, convert.
#pragma once

#include <memory>
#include <string>

#include "flashgpt/model/checkpoint.h"
#include "flashgpt/model/gpt.h"
#include "flashgpt/tokenizer/tokenizer.h"

namespace flashgpt::cli {

struct LoadedModel {
  std::unique_ptr<GPT<float>> model;
  std::unique_ptr<Tokenizer> tokenizer;  // null when neither the checkpoint nor --tokenizer has one
};

// path: a flashgpt checkpoint (.safetensors) or an llm.c model file (.bin).
LoadedModel load_model(const std::string& path, const std::string& tokenizer_path);

}  // namespace flashgpt::cli
