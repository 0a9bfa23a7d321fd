// Learning-rate schedules: linear warmup over `warmup_steps`, then a decay from `lr` to
// `lr · final_lr_fraction` at `max_steps`:
//   cosine   — half a cosine;   linear — a straight line;   constant — no decay;
//   wsd      — warmup-stable-decay: constant, then linear over the last `decay_fraction` of steps.
#pragma once

#include <cstdint>
#include <string>

namespace flashgpt {

enum class LrSchedule { Cosine, Linear, Constant, WSD };
LrSchedule parse_lr_schedule(const std::string& s);
std::string to_string(LrSchedule s);

struct LrScheduleParams {
  LrSchedule kind = LrSchedule::Cosine;
  double lr = 3e-4;
  double final_lr_fraction = 0.1;
  int64_t warmup_steps = 0;
  int64_t max_steps = 1;
  double decay_fraction = 0.2;  // WSD only
};

// Learning rate at 0-based step `step`.
double learning_rate(const LrScheduleParams& p, int64_t step);

}  // namespace flashgpt
