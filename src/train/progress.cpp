#include "train/progress.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>

namespace flashgpt {

namespace {

std::string format_duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, (s / 60) % 60);
  return fmt::format("{:02}:{:02}", s / 60, s % 60);
}

std::string format_rate(double tokens_per_s) {
  if (tokens_per_s >= 1e6) return fmt::format("{:.2f}M", tokens_per_s / 1e6);
  if (tokens_per_s >= 1e3) return fmt::format("{:.1f}k", tokens_per_s / 1e3);
  return fmt::format("{:.0f}", tokens_per_s);
}

}  // namespace

Progress::~Progress() {
  if (bar_shown_) std::fputc('\n', stderr);
}

void Progress::clear_bar() {
  if (bar_shown_) {
    std::fputs("\r\033[2K", stderr);
    bar_shown_ = false;
  }
}

void Progress::line(const std::string& text) {
  clear_bar();
  std::fprintf(stderr, "%s\n", text.c_str());
  std::fflush(stderr);
}

void Progress::step(int64_t step, int64_t max_steps, double loss, double lr, double grad_norm, double tokens_per_s,
                    double mfu, double step_seconds, int64_t log_every) {
  // Exponential smoothing keeps the ETA steady while the first steps warm up.
  smoothed_step_s_ = smoothed_step_s_ == 0 ? step_seconds : 0.9 * smoothed_step_s_ + 0.1 * step_seconds;
  const double eta = smoothed_step_s_ * static_cast<double>(max_steps - step);
  if (bar_) {
    constexpr int kWidth = 24;
    const int filled = static_cast<int>(kWidth * step / std::max<int64_t>(max_steps, 1));
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(kWidth, '.');
    std::fprintf(stderr, "\r\033[2K[%s] %lld/%lld | loss %.4f | %s tok/s | MFU %.0f%% | ETA %s", bar.c_str(),
                 static_cast<long long>(step), static_cast<long long>(max_steps), loss,
                 format_rate(tokens_per_s).c_str(), mfu * 100, format_duration(eta).c_str());
    std::fflush(stderr);
    bar_shown_ = true;
    return;
  }
  if (step % log_every != 0 && step != max_steps && step != 1) return;
  std::fprintf(stderr, "step %6lld/%lld | loss %.4f | lr %.2e | norm %.3f | %s tok/s | MFU %.1f%% | %.0f ms | ETA %s\n",
               static_cast<long long>(step), static_cast<long long>(max_steps), loss, lr, grad_norm,
               format_rate(tokens_per_s).c_str(), mfu * 100, step_seconds * 1e3, format_duration(eta).c_str());
  std::fflush(stderr);
}

}  // namespace flashgpt
