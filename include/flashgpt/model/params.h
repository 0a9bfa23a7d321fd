// The parameter table of a GPTConfig: every tensor's name, shape, weight decay and initial scale,
// in one fixed order. Parameters live in one contiguous buffer in this order, so the optimizer,
// checkpoints and gradient checks all walk the same list.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "flashgpt/model/config.h"

namespace flashgpt {

enum class ParamInit { Normal, Zeros, Ones };

struct ParamSpec {
  std::string name;
  std::vector<int64_t> shape;
  ParamInit init = ParamInit::Normal;
  float init_std = 0.0f;
  bool decay = false;  // weight decay applies to matrices only
  int64_t offset = 0;  // element offset in the parameter buffer
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

std::vector<ParamSpec> param_specs(const GPTConfig& c);
// Block l's parameters, one contiguous stretch of the layout: (offset, count).
std::pair<int64_t, int64_t> block_param_range(const std::vector<ParamSpec>& specs, int l);

}  // namespace flashgpt
