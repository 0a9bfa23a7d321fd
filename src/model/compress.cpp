#include "flashgpt/model/compress.h"

#include <fmt/format.h>

#include <cmath>
#include <map>

#include "flashgpt/core/error.h"
#include "flashgpt/model/params.h"
#include "flashgpt/ops/matmul.h"
#include "flashgpt/ops/svd.h"

namespace flashgpt {

CheckpointData compress_value_up_svd(const CheckpointData& in, int rank, std::vector<SvdLayerReport>* report) {
  const GPTConfig& src = in.config;
  FLASHGPT_CHECK(is_latent(src.attention),
                 "svd compression: the model's attention is {}; only latent attention (mla, flash_mla) has a value "
                 "up-projection to compress",
                 to_string(src.attention));
  CheckpointData out;
  out.config = src;
  out.config.use_svd = true;
  out.config.svd_rank = rank;
  out.config.validate();  // names 'svd_rank' when the rank is out of range
  out.tokenizer = in.tokenizer;

  std::map<std::string, const float*> old;
  for (const ParamSpec& s : param_specs(src)) old[s.name] = in.params.data() + s.offset;
  const std::vector<ParamSpec> specs = param_specs(out.config);
  out.params.assign(static_cast<size_t>(specs.back().offset + specs.back().numel()), 0.0f);
  const int64_t rows = static_cast<int64_t>(src.n_head) * src.head_dim(), cols = src.latent_dim();
  std::vector<double> w(static_cast<size_t>(rows * cols)), left(static_cast<size_t>(rows * rank)),
      right(static_cast<size_t>(rank * cols));
  if (report) report->clear();
  for (const ParamSpec& s : specs) {
    float* dst = out.params.data() + s.offset;
    if (auto it = old.find(s.name); it != old.end()) {
      std::copy(it->second, it->second + s.numel(), dst);
      continue;
    }
    if (!s.name.ends_with("attn.v_up_u.weight")) continue;  // v_up_v is written with its partner
    const std::string prefix = s.name.substr(0, s.name.size() - std::string("v_up_u.weight").size());
    // The full up-projection, in double for the decomposition.
    if (src.use_svd) {
      const float* u = old.at(prefix + "v_up_u.weight");
      const float* v = old.at(prefix + "v_up_v.weight");
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) {
          double acc = 0;
          for (int64_t k = 0; k < src.svd_rank; ++k) acc += static_cast<double>(u[i * src.svd_rank + k]) * v[k * cols + j];
          w[static_cast<size_t>(i * cols + j)] = acc;
        }
    } else {
      const float* full = old.at(prefix + "v_up.weight");
      std::copy(full, full + rows * cols, w.begin());
    }
    const std::vector<double> sigma = ops::truncated_svd(w.data(), rows, cols, rank, left.data(), right.data());
    std::copy(left.begin(), left.end(), dst);
    const ParamSpec* partner = nullptr;
    for (const ParamSpec& p : specs) {
      if (p.name == prefix + "v_up_v.weight") partner = &p;
    }
    FLASHGPT_CHECK(partner, "internal: no {}v_up_v.weight", prefix);
    std::copy(right.begin(), right.end(), out.params.data() + partner->offset);
    if (report) {
      double total = 0, kept = 0;
      for (size_t i = 0; i < sigma.size(); ++i) {
        total += sigma[i] * sigma[i];
        if (static_cast<int>(i) < rank) kept += sigma[i] * sigma[i];
      }
      SvdLayerReport r;
      r.layer = std::stoi(prefix.substr(std::string("blocks.").size()));
      r.full_rank = static_cast<int>(sigma.size());
      r.retained_energy = total > 0 ? kept / total : 1.0;
      r.relative_error = total > 0 ? std::sqrt(std::max(0.0, total - kept) / total) : 0.0;
      report->push_back(r);
    }
  }
  return out;
}

}  // namespace flashgpt
