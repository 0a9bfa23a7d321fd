// Runs the flashgpt binary (or any shell command) and captures its output and exit status.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace flashgpt::testing {

struct RunResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Single-quotes s for the shell.
inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Runs `command` under bash (for $'…' quoting and the like).
inline RunResult run_command(const std::string& command) {
  RunResult r;
  std::FILE* pipe = ::popen(("bash -c " + shell_quote(command) + " 2>&1").c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  int status = ::pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

inline RunResult run_flashgpt(const std::string& args) {
  return run_command(std::string("OMP_NUM_THREADS=1 ") + FLASHGPT_BINARY + " " + args);
}

// Number of lines in s that are not empty.
inline int count_lines(const std::string& s) {
  int n = 0;
  bool content = false;
  for (char c : s) {
    if (c == '\n') {
      n += content;
      content = false;
    } else {
      content = true;
    }
  }
  return n + content;
}

}  // namespace flashgpt::testing
