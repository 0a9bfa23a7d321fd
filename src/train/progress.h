// Training progress: a live bar on a terminal, plain log lines elsewhere.
#pragma once

#include <cstdint>
#include <string>

namespace flashgpt {

class Progress {
 public:
  explicit Progress(bool bar) : bar_(bar) {}
  ~Progress();
  // Prints a message on its own line (above the bar when there is one).
  void line(const std::string& text);
  void step(int64_t step, int64_t max_steps, double loss, double lr, double grad_norm, double tokens_per_s,
            double mfu, double step_seconds, int64_t log_every);

 private:
  void clear_bar();
  bool bar_;
  bool bar_shown_ = false;
  double smoothed_step_s_ = 0;
};

}  // namespace flashgpt
