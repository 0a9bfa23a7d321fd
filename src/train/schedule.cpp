#include "flashgpt/train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "flashgpt/core/error.h"

namespace flashgpt {

LrSchedule parse_lr_schedule(const std::string& s) {
  if (s == "cosine") return LrSchedule::Cosine;
  if (s == "linear") return LrSchedule::Linear;
  if (s == "constant") return LrSchedule::Constant;
  if (s == "wsd") return LrSchedule::WSD;
  fail("--lr-schedule: '{}' is not a schedule (choose cosine, linear, constant or wsd)", s);
}

std::string to_string(LrSchedule s) {
  switch (s) {
    case LrSchedule::Cosine: return "cosine";
    case LrSchedule::Linear: return "linear";
    case LrSchedule::Constant: return "constant";
    case LrSchedule::WSD: return "wsd";
  }
  return "?";
}

double learning_rate(const LrScheduleParams& p, int64_t step) {
  if (step < p.warmup_steps) return p.lr * static_cast<double>(step + 1) / static_cast<double>(p.warmup_steps);
  const double min_lr = p.lr * p.final_lr_fraction;
  const int64_t decay_steps = std::max<int64_t>(1, p.max_steps - p.warmup_steps);
  const double progress = std::clamp(static_cast<double>(step - p.warmup_steps) / static_cast<double>(decay_steps), 0.0, 1.0);
  switch (p.kind) {
    case LrSchedule::Constant: return p.lr;
    case LrSchedule::Linear: return p.lr - (p.lr - min_lr) * progress;
    case LrSchedule::Cosine: return min_lr + 0.5 * (1.0 + std::cos(std::numbers::pi * progress)) * (p.lr - min_lr);
    case LrSchedule::WSD: {
      const double stable = 1.0 - p.decay_fraction;
      if (progress <= stable) return p.lr;
      return p.lr - (p.lr - min_lr) * (progress - stable) / p.decay_fraction;
    }
  }
  return p.lr;
}

}  // namespace flashgpt
