// --device and --precision for the commands that run a trained model (sample, eval); where a run
// goes is flashgpt::choose_device (core/device.h), as for train.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

namespace flashgpt::cli {

struct DeviceFlags {
  std::string device = "auto";  // cpu, cuda or auto
  std::string precision = "bf16";
};

// Adds --device and --precision to a command; `what` says what runs ("sampling", "evaluation").
void add_device_flags(CLI::App& sub, DeviceFlags& flags, const std::string& what);

}  // namespace flashgpt::cli
