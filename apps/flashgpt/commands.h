// The subcommands of the flashgpt command line, one file each.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

#include "flashgpt/model/config.h"

namespace flashgpt::cli {

// Model architecture flags shared by train, info and bench: a preset, a JSON file, then one flag per
// config field, applied in that order (flags override the file, which overrides the preset).
struct ModelFlags {
  std::string preset;
  std::string config_file;
  std::vector<std::function<void(GPTConfig&)>> overrides;
  // validate = false leaves checking to the caller (bench decode validates each mechanism's variant,
  // so latent flags may be given with a multi-head preset).
  GPTConfig resolve(const std::string& default_preset, bool validate = true) const;
};
void add_model_flags(CLI::App& app, ModelFlags& flags);

void register_prepare(CLI::App& app);
void register_train(CLI::App& app);
void register_sample(CLI::App& app);
void register_eval(CLI::App& app);
void register_info(CLI::App& app);
void register_bench(CLI::App& app);
void register_bench_attention(CLI::App& bench);
void register_bench_decode(CLI::App& bench);
void register_bench_latent_decode(CLI::App& bench);
void register_bench_flash_decode(CLI::App& bench);
void register_bench_ops(CLI::App& bench);
void register_convert(CLI::App& app);
void register_plot(CLI::App& app);
void register_compress(CLI::App& app);

}  // namespace flashgpt::cli
