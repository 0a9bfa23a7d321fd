// --device and --precision for the commands that run a trained model (sample, eval): the flags,
// and where a run goes — the GPU, or the CPU with one line saying why not.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>

#include "flashgpt/cuda/gpt_cuda.h"

namespace flashgpt::cli {

struct DeviceFlags {
  std::string device = "auto";  // cpu, cuda or auto
  std::string precision = "bf16";
};

// Adds --device and --precision to a command; `what` says what runs ("sampling", "evaluation").
void add_device_flags(CLI::App& sub, DeviceFlags& flags, const std::string& what);

struct DeviceChoice {
  bool gpu = false;
  cuda::Precision precision = cuda::Precision::BF16;
  std::string line;  // "device: …", for stderr
};

// `model_reason` says why the model cannot run on the GPU at a precision ("" when it can).
// --device cuda with a reason is an error naming it; auto falls back to the CPU with the reason.
DeviceChoice choose_device(const DeviceFlags& flags,
                           const std::function<std::string(cuda::Precision)>& model_reason);

}  // namespace flashgpt::cli
