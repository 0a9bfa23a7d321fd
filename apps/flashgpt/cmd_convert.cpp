// flashgpt convert: between flashgpt checkpoints (.safetensors) and llm.c model files (.bin).
#include <memory>

#include "commands.h"
#include "flashgpt/core/error.h"
#include "flashgpt/model/checkpoint.h"
#include "flashgpt/tokenizer/tokenizer.h"

namespace flashgpt::cli {

namespace {

struct ConvertCli {
  std::string input, output, tokenizer;
};

void run_convert(const ConvertCli& c) {
  const bool in_llmc = c.input.ends_with(".bin"), out_llmc = c.output.ends_with(".bin");
  FLASHGPT_CHECK(in_llmc || c.input.ends_with(".safetensors"), "{}: expected a .bin (llm.c) or .safetensors file",
                 c.input);
  FLASHGPT_CHECK(out_llmc || c.output.ends_with(".safetensors"), "{}: expected a .bin (llm.c) or .safetensors file",
                 c.output);
  CheckpointData d = in_llmc ? import_llmc_model(c.input) : load_checkpoint(c.input, false);
  if (out_llmc) {
    export_llmc_model(c.output, d.config, d.params);
  } else {
    nlohmann::json tok = d.tokenizer;
    if (!c.tokenizer.empty()) tok = load_tokenizer(c.tokenizer)->to_json();
    nlohmann::json state;
    save_checkpoint(c.output, CheckpointRef{d.config, d.params, {}, {}, state, tok});
  }
  std::printf("wrote %s (%zu parameters)\n", c.output.c_str(), d.params.size());
}

}  // namespace

void register_convert(CLI::App& app) {
  auto c = std::make_shared<ConvertCli>();
  CLI::App* sub = app.add_subcommand(
      "convert", "Convert weights between flashgpt checkpoints (.safetensors) and llm.c model files (.bin)");
  sub->add_option("input", c->input, "Source: ckpt.safetensors or an llm.c model .bin")
      ->required()
      ->check(CLI::ExistingFile);
  sub->add_option("output", c->output, "Destination: .safetensors or .bin (by extension)")->required();
  sub->add_option("--tokenizer", c->tokenizer, "Embed this tokenizer.json in a .safetensors output")
      ->check(CLI::ExistingFile);
  sub->callback([c] { run_convert(*c); });
}

}  // namespace flashgpt::cli
