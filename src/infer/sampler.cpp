#include "flashgpt/infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>

#include "cpu/vec_math.h"
#include "flashgpt/core/error.h"

namespace flashgpt {

void Decoder::step_top(const int*, int64_t, int64_t, std::span<const int32_t>, int, int32_t*, float*) {
  FLASHGPT_CHECK(false, "decode: this decoder gives whole logits only (max_top_k() is 0)");
}

namespace {

// Draws from the first n of ids (in that order) with weights w, which sum to `sum`.
int draw(const int32_t* ids, const double* w, size_t n, double sum, Rng& rng) {
  const double u = rng.uniform() * sum;
  double cum = 0;
  for (size_t i = 0; i < n; ++i) {
    cum += w[i];
    if (u < cum) return ids ? ids[i] : static_cast<int>(i);
  }
  return ids ? ids[n - 1] : static_cast<int>(n - 1);
}

}  // namespace

int sample_ranked(const int32_t* ids, const float* logits, int n, const SampleOptions& opt, Rng& rng) {
  FLASHGPT_CHECK(n >= 1, "sample: {} candidates; at least 1 is needed", n);
  if (opt.temperature <= 0.0f) return ids[0];
  const double inv_t = 1.0 / static_cast<double>(opt.temperature), best = logits[0];
  std::vector<double> w(static_cast<size_t>(n));
  for (size_t i = 0; i < w.size(); ++i) w[i] = std::exp((static_cast<double>(logits[i]) - best) * inv_t);
  const double total = std::accumulate(w.begin(), w.end(), 0.0);
  if (opt.top_p >= 1.0f) return draw(ids, w.data(), w.size(), total, rng);
  // The nucleus: the shortest prefix holding top_p of the candidates' mass.
  const double target = static_cast<double>(opt.top_p) * total;
  size_t m = 0;
  double cum = 0;
  while (m < w.size() && cum < target) cum += w[m++];
  return draw(ids, w.data(), std::max<size_t>(m, 1), cum, rng);
}

int sample_token(const float* logits, int vocab, const SampleOptions& opt, Rng& rng) {
  if (opt.temperature <= 0.0f) {  // the first of the largest
    const float best = cpu::row_max(logits, vocab);
    return static_cast<int>(std::find(logits, logits + vocab, best) - logits);
  }
  const double inv_t = 1.0 / static_cast<double>(opt.temperature);
  const auto weight = [&](int id, double best) { return std::exp((static_cast<double>(logits[id]) - best) * inv_t); };
  const bool top_k = opt.top_k > 0 && opt.top_k < vocab, nucleus = opt.top_p < 1.0f;
  if (!top_k && !nucleus) {  // every token, in id order: one vectorised pass for the weights
    std::vector<float> z(static_cast<size_t>(vocab));
    for (int i = 0; i < vocab; ++i) z[static_cast<size_t>(i)] = static_cast<float>(logits[i] * inv_t);
    cpu::exp_shifted_sum(z.data(), vocab, cpu::row_max(z.data(), vocab));
    std::vector<double> w(z.begin(), z.end());
    return draw(nullptr, w.data(), w.size(), std::accumulate(w.begin(), w.end(), 0.0), rng);
  }
  // Ranked candidates: higher logit first, the lower id first among equals (a strict order, so the
  // best n are the same tokens in the same order however they are found). Only a prefix is ever
  // ranked: the top_k (then drawn from as sample_ranked draws from a decoder's candidates), or for
  // the nucleus the tokens of the highest bins of weight that hold enough mass.
  const auto before = [logits](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  std::vector<int32_t> ids;
  if (top_k) {
    // One pass with a heap of the best top_k seen so far, its worst on top. Tokens come in id order,
    // so a token that only ties the worst ranks after it: a block of 256 whose largest logit does
    // not beat the worst is passed over whole, and after the first blocks nearly all are.
    const size_t k = static_cast<size_t>(opt.top_k);
    ids.reserve(k);
    int i = 0;
    for (; ids.size() < k; ++i) {
      ids.push_back(i);
      std::push_heap(ids.begin(), ids.end(), before);
    }
    while (i < vocab) {
      const int end = std::min(vocab, i + 256);
      if (cpu::row_max(logits + i, end - i) > logits[ids.front()]) {
        for (int j = i; j < end; ++j) {
          if (logits[j] <= logits[ids.front()]) continue;
          std::pop_heap(ids.begin(), ids.end(), before);
          ids.back() = j;
          std::push_heap(ids.begin(), ids.end(), before);
        }
      }
      i = end;
    }
    std::sort_heap(ids.begin(), ids.end(), before);
    std::vector<float> ranked(ids.size());
    for (size_t j = 0; j < ids.size(); ++j) ranked[j] = logits[ids[j]];
    return sample_ranked(ids.data(), ranked.data(), opt.top_k, opt, rng);
  }
  // The nucleus. Every token's weight relative to the best, e^((l − best)/T), comes from one
  // vectorised pass, and with it the total mass. Tokens fall into bins by (best − l)/T, the
  // highest first, so all tokens above a bin's floor rank before those in later bins (ties share a
  // bin); the bins whose mass first reaches top_p of the total hold the nucleus, and only their
  // tokens are ranked, then summed in rank order (in double, as the draw weighs them) up to the
  // target. Should the rounding of the float bin masses leave that sum short, a bin more is taken.
  const double best = cpu::row_max(logits, vocab);
  std::vector<float> z(static_cast<size_t>(vocab));
  for (int i = 0; i < vocab; ++i) z[static_cast<size_t>(i)] = static_cast<float>((logits[i] - best) * inv_t);
  std::vector<uint16_t> bin(static_cast<size_t>(vocab));
  constexpr int kBins = 1024;
  constexpr float kBinsPerUnit = 16.0f;  // bins per unit of (best − l)/T: 64 units, e^−64 and beyond in the last
  for (int i = 0; i < vocab; ++i) {
    const float at = -z[static_cast<size_t>(i)] * kBinsPerUnit;
    bin[static_cast<size_t>(i)] = static_cast<uint16_t>(at < static_cast<float>(kBins - 1) ? at : kBins - 1);
  }
  cpu::exp_shifted_sum(z.data(), vocab, 0.0f);
  double total = 0;  // the mass of every token
  std::vector<double> bin_mass(kBins, 0.0);
  for (int i = 0; i < vocab; ++i) {
    total += z[static_cast<size_t>(i)];
    bin_mass[bin[static_cast<size_t>(i)]] += z[static_cast<size_t>(i)];
  }
  const double target = static_cast<double>(opt.top_p) * total;
  int last = 0;  // the last bin taken
  for (double mass = bin_mass[0]; mass < target && last < kBins - 1;) mass += bin_mass[++last];
  for (;;) {
    ids.clear();
    for (int i = 0; i < vocab; ++i) {
      if (bin[static_cast<size_t>(i)] <= last) ids.push_back(i);
    }
    std::sort(ids.begin(), ids.end(), before);
    std::vector<double> w(ids.size());
    size_t n = 0;
    double cum = 0;
    while (n < ids.size() && cum < target) {
      w[n] = weight(ids[n], best);
      cum += w[n++];
    }
    if (cum >= target || last == kBins - 1) return draw(ids.data(), w.data(), std::max<size_t>(n, 1), cum, rng);
    ++last;
  }
}

Rng sample_rng(uint64_t seed, int64_t k) {
  if (k == 0) return Rng(seed);
  // A seed for stream k drawn through SplitMix64 itself: seeds seed + k·γ would make stream k
  // stream 0 shifted by k draws.
  Rng mix(seed ^ (static_cast<uint64_t>(k) * 0xD1B54A32D192ED03ull));
  mix.next_u64();
  return Rng(mix.next_u64());
}

std::vector<SampleResult> generate_continuous(Decoder& model, std::span<const std::vector<int>> prompts,
                                              const SampleOptions& opt, std::span<Rng> rngs, int64_t slots,
                                              const std::function<void(int64_t, int)>& on_token,
                                              const std::function<void(int64_t, const SampleResult&)>& on_done) {
  const GPTConfig& c = model.config();
  const int64_t N = static_cast<int64_t>(prompts.size());
  FLASHGPT_CHECK(N > 0, "generate: no samples asked for");
  FLASHGPT_CHECK(static_cast<int64_t>(rngs.size()) == N, "generate: {} prompts for {} random streams", N,
                 rngs.size());
  FLASHGPT_CHECK(slots > 0, "generate: {} sequences decoded together; at least 1 is needed", slots);
  int64_t longest = 0;
  for (const std::vector<int>& prompt : prompts) {
    FLASHGPT_CHECK(!prompt.empty(), "prompt: empty (give at least one token)");
    FLASHGPT_CHECK(static_cast<int64_t>(prompt.size()) <= c.block_size,
                   "prompt: {} tokens exceed the model's context of {} (block_size)", prompt.size(), c.block_size);
    longest = std::max<int64_t>(longest, static_cast<int64_t>(prompt.size()));
  }
  FLASHGPT_CHECK(opt.max_new_tokens >= 0, "--max-tokens: must be ≥ 0, got {}", opt.max_new_tokens);
  FLASHGPT_CHECK(opt.temperature >= 0.0f, "--temperature: must be ≥ 0, got {}", opt.temperature);
  FLASHGPT_CHECK(opt.top_k >= 0, "--top-k: must be ≥ 0, got {}", opt.top_k);
  FLASHGPT_CHECK(opt.top_p > 0.0f && opt.top_p <= 1.0f, "--top-p: must be in (0, 1], got {}", opt.top_p);
  std::vector<SampleResult> results(static_cast<size_t>(N));
  for (SampleResult& r : results) r.stop_reason = "max_new_tokens";
  if (opt.max_new_tokens == 0) {
    for (int64_t k = 0; k < N && on_done; ++k) on_done(k, results[static_cast<size_t>(k)]);
    return results;
  }
  // Every sequence fits: a prompt and all but its last new token are read, up to the context.
  const int64_t S = std::min(slots, N), Vp = c.padded_vocab_size();
  const int64_t capacity = std::min<int64_t>(c.block_size, longest + opt.max_new_tokens);
  model.start(S, capacity);
  std::vector<int64_t> request(static_cast<size_t>(S), -1);  // the sample each slot decodes (−1: none)
  std::vector<int> pending(static_cast<size_t>(S));          // its token to read at the next step
  std::vector<int64_t> length(static_cast<size_t>(S), 0);    // tokens it has cached after that step
  std::vector<int32_t> counts(static_cast<size_t>(S));
  std::vector<int> drawn(static_cast<size_t>(S));  // each slot's new token
  // Greedy and top-k (up to what the decoder can give) need only each row's best few tokens: a
  // decoder that can find them (the GPU's) sends those instead of whole rows of logits.
  const int ranked = opt.temperature <= 0.0f ? 1 : opt.top_k > 0 && opt.top_k < c.vocab_size ? opt.top_k : 0;
  const int cand = ranked > 0 && ranked <= model.max_top_k() ? ranked : 0;
  std::vector<float> logits(static_cast<size_t>(S * (cand > 0 ? cand : Vp)));
  std::vector<int32_t> cand_ids(static_cast<size_t>(S * cand));
  std::vector<int> tokens;
  int64_t next_request = 0;
  for (;;) {
    // Free slots take the next waiting prompts; a step reads every new prompt whole and one token of
    // every running sample (rows padded with their last token to the longest: a ragged step).
    int64_t Tn = 1;
    bool any = false;
    for (int64_t s = 0; s < S; ++s) {
      if (request[static_cast<size_t>(s)] < 0 && next_request < N) {
        model.restart(s);
        request[static_cast<size_t>(s)] = next_request++;
        length[static_cast<size_t>(s)] = 0;
      }
      if (request[static_cast<size_t>(s)] < 0) continue;
      any = true;
      if (length[static_cast<size_t>(s)] == 0) {
        Tn = std::max<int64_t>(Tn, static_cast<int64_t>(prompts[static_cast<size_t>(request[static_cast<size_t>(s)])].size()));
      }
    }
    if (!any) break;
    tokens.assign(static_cast<size_t>(S * Tn), 0);
    for (int64_t s = 0; s < S; ++s) {
      const int64_t k = request[static_cast<size_t>(s)];
      auto row = tokens.begin() + s * Tn;
      int32_t& n = counts[static_cast<size_t>(s)];
      if (k < 0) {
        n = 0;
      } else if (length[static_cast<size_t>(s)] == 0) {
        const std::vector<int>& prompt = prompts[static_cast<size_t>(k)];
        std::fill(std::copy(prompt.begin(), prompt.end(), row), row + Tn, prompt.back());
        n = static_cast<int32_t>(prompt.size());
      } else {
        std::fill(row, row + Tn, pending[static_cast<size_t>(s)]);
        n = 1;
      }
      length[static_cast<size_t>(s)] += n;
    }
    if (cand > 0) {
      model.step_top(tokens.data(), S, Tn, counts, cand, cand_ids.data(), logits.data());
    } else {
      model.step(tokens.data(), S, Tn, counts, logits.data());
    }
    // Each sample that read draws its next token from its own stream: the draws are independent,
    // so they run in parallel and give the same tokens on any number of threads.
#pragma omp parallel for schedule(dynamic, 1) if (S > 1)
    for (int64_t s = 0; s < S; ++s) {
      if (counts[static_cast<size_t>(s)] == 0) continue;
      Rng& rng = rngs[static_cast<size_t>(request[static_cast<size_t>(s)])];
      drawn[static_cast<size_t>(s)] = cand > 0 ? sample_ranked(cand_ids.data() + s * cand, logits.data() + s * cand, cand, opt, rng)
                                               : sample_token(logits.data() + s * Vp, c.vocab_size, opt, rng);
    }
    for (int64_t s = 0; s < S; ++s) {
      if (counts[static_cast<size_t>(s)] == 0) continue;
      const int64_t k = request[static_cast<size_t>(s)];
      SampleResult& r = results[static_cast<size_t>(k)];
      const int next = drawn[static_cast<size_t>(s)];
      bool done = false;
      if (opt.stop_at_eot && next == opt.eot_token) {
        r.stop_reason = "end_of_text";
        done = true;
      } else {
        r.tokens.push_back(next);
        if (on_token) on_token(k, next);
        if (static_cast<int>(r.tokens.size()) == opt.max_new_tokens) {
          done = true;  // stop_reason stays max_new_tokens
        } else if (length[static_cast<size_t>(s)] >= capacity) {  // no room to read it
          r.stop_reason = "context_limit";
          done = true;
        }
      }
      if (done) {
        request[static_cast<size_t>(s)] = -1;
        if (on_done) on_done(k, r);
      } else {
        pending[static_cast<size_t>(s)] = next;
      }
    }
  }
  return results;
}

std::vector<SampleResult> generate_batch(Decoder& model, std::span<const std::vector<int>> prompts,
                                         const SampleOptions& opt, std::span<Rng> rngs,
                                         const std::function<void(int64_t, int)>& on_token) {
  return generate_continuous(model, prompts, opt, rngs, std::max<int64_t>(1, static_cast<int64_t>(prompts.size())),
                             on_token);
}

std::vector<SampleResult> generate_batch(Decoder& model, std::span<const int> prompt, const SampleOptions& opt,
                                         std::span<Rng> rngs, const std::function<void(int64_t, int)>& on_token) {
  const std::vector<std::vector<int>> prompts(rngs.size(), std::vector<int>(prompt.begin(), prompt.end()));
  return generate_batch(model, std::span<const std::vector<int>>(prompts), opt, rngs, on_token);
}

SampleResult generate(Decoder& model, std::span<const int> prompt, const SampleOptions& opt, Rng& rng,
                      const std::function<void(int)>& on_token) {
  std::function<void(int64_t, int)> each;
  if (on_token) each = [&](int64_t, int id) { on_token(id); };
  return std::move(generate_batch(model, prompt, opt, std::span<Rng>(&rng, 1), each)[0]);
}

SampleResult generate(GPT<float>& model, std::span<const int> prompt, const SampleOptions& opt, Rng& rng,
                      const std::function<void(int)>& on_token) {
  CpuDecoder decoder(model);
  return generate(decoder, prompt, opt, rng, on_token);
}

}  // namespace flashgpt
