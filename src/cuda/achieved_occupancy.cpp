// achieved_occupancy (flashgpt/cuda/cta_trace.h): the arithmetic over the spans the traced
// kernels wrote. Host code alone, so it is built everywhere, the CPU-only build included.
#include <algorithm>
#include <map>
#include <utility>
#include <vector>

#include "flashgpt/core/error.h"
#include "flashgpt/cuda/cta_trace.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

AchievedOccupancy achieved_occupancy(std::span<const CtaSpan> ctas, int max_warps_per_sm) {
  FLASHGPT_CHECK(max_warps_per_sm > 0, "achieved occupancy: an SM must hold at least one warp");
  std::map<unsigned, std::vector<std::pair<unsigned long long, unsigned long long>>> by_sm;
  double warp_cycles = 0, block_cycles = 0;
  AchievedOccupancy r;
  for (const CtaSpan& s : ctas) {
    ++r.ctas;
    if (s.end < s.start || s.warps == 0) continue;
    by_sm[s.sm].emplace_back(s.start, s.end);
    block_cycles += static_cast<double>(s.end - s.start);
    // Σ (end of warp w − start) over its warps; each warp ended at or after the block began.
    const long double warps_from_start = static_cast<long double>(s.warp_end_sum) -
                                         static_cast<long double>(s.warps) * static_cast<long double>(s.start);
    warp_cycles += static_cast<double>(std::max<long double>(0, warps_from_start));
  }
  // The cycles each SM held at least one block: the union of its blocks' spans.
  double active = 0;
  for (auto& [sm, spans] : by_sm) {
    std::sort(spans.begin(), spans.end());
    unsigned long long open = spans.front().first, close = spans.front().second;
    for (const auto& [start, end] : spans) {
      if (start > close) {
        active += static_cast<double>(close - open);
        open = start;
        close = end;
      } else {
        close = std::max(close, end);
      }
    }
    active += static_cast<double>(close - open);
  }
  r.sms = static_cast<int>(by_sm.size());
  if (active > 0) {
    r.warps = warp_cycles / active;
    r.blocks = block_cycles / active;
    r.fraction = r.warps / max_warps_per_sm;
  }
  return r;
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
