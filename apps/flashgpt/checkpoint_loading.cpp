#include "checkpoint_loading.h"

#include "flashgpt/core/error.h"

namespace flashgpt::cli {

LoadedModel load_model(const std::string& path, const std::string& tokenizer_path) {
  CheckpointData data = path.ends_with(".bin") ? import_llmc_model(path) : load_checkpoint(path, false);
  LoadedModel out;
  out.model = std::make_unique<GPT<float>>(data.config);
  std::copy(data.params.begin(), data.params.end(), out.model->params().begin());
  if (!tokenizer_path.empty()) {
    out.tokenizer = load_tokenizer(tokenizer_path);
  } else if (!data.tokenizer.is_null()) {
    out.tokenizer = tokenizer_from_json(data.tokenizer, path);
  }
  if (out.tokenizer) {
    FLASHGPT_CHECK(out.tokenizer->vocab_size() == data.config.vocab_size,
                   "tokenizer: {} tokens, but the model in {} has vocab_size {}", out.tokenizer->vocab_size(), path,
                   data.config.vocab_size);
  }
  return out;
}

}  // namespace flashgpt::cli
