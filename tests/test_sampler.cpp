// Sampling: token choice rules and generation with the KV cache.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "flashgpt/core/error.h"
#include "flashgpt/infer/sampler.h"
#include "testing/errors.h"

namespace flashgpt {
namespace {

TEST(SampleToken, GreedyTopKTopPAndNeverThePadding) {
  // Real vocabulary of 4; two padding columns with huge logits must never be chosen.
  std::vector<float> logits = {1.0f, 3.0f, 2.0f, 0.5f, 100.0f, 100.0f};
  Rng rng(1);
  SampleOptions greedy;
  greedy.temperature = 0;
  EXPECT_EQ(sample_token(logits.data(), 4, greedy, rng), 1);
  SampleOptions top2;
  top2.top_k = 2;
  std::set<int> seen;
  for (int i = 0; i < 500; ++i) seen.insert(sample_token(logits.data(), 4, top2, rng));
  EXPECT_EQ(seen, (std::set<int>{1, 2}));
  SampleOptions nucleus;
  nucleus.top_p = 0.5f;  // token 1 alone holds ~0.64 of the mass
  for (int i = 0; i < 200; ++i) EXPECT_EQ(sample_token(logits.data(), 4, nucleus, rng), 1);
  SampleOptions all;
  seen.clear();
  for (int i = 0; i < 2000; ++i) seen.insert(sample_token(logits.data(), 4, all, rng));
  EXPECT_EQ(seen, (std::set<int>{0, 1, 2, 3}));
}

// The rules written as plainly as possible: every token ranked by a full sort, softmax over the
// candidates, the nucleus as the shortest ranked prefix holding top_p of the mass.
int reference_sample(const std::vector<float>& logits, int vocab, const SampleOptions& opt, Rng& rng) {
  std::vector<int> ids(static_cast<size_t>(vocab));
  for (int i = 0; i < vocab; ++i) ids[static_cast<size_t>(i)] = i;
  const auto before = [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  if (opt.top_k > 0 && opt.top_k < vocab) {
    std::sort(ids.begin(), ids.end(), before);
    ids.resize(static_cast<size_t>(opt.top_k));
  } else if (opt.top_p < 1.0f) {
    std::sort(ids.begin(), ids.end(), before);
  }
  double mx = -INFINITY;
  for (int id : ids) mx = std::max(mx, static_cast<double>(logits[id]));
  std::vector<double> w;
  double sum = 0;
  for (int id : ids) {
    w.push_back(std::exp((logits[id] - mx) / opt.temperature));
    sum += w.back();
  }
  size_t n = w.size();
  if (opt.top_p < 1.0f) {
    double cum = 0;
    n = 0;
    while (n < w.size() && cum < opt.top_p * sum) cum += w[n++];
    sum = cum;
  }
  const double u = rng.uniform() * sum;
  double cum = 0;
  for (size_t i = 0; i < n; ++i) {
    cum += w[i];
    if (u < cum) return ids[i];
  }
  return ids[n - 1];
}

// At GPT-2's vocabulary, with logits spread like a trained model's and many ties, every rule draws
// what the plain computation draws from the same stream (the nucleus found without ranking every
// token: only those in the highest bins of weight that hold enough mass are ranked). Temperatures
// from 0.05 (the logits' spread far past the bins: most tokens share the last) to 50 (a few bins
// hold every token).
TEST(SampleToken, EqualsAPlainSortAtFullVocabulary) {
  const int V = 50257;
  Rng data(4);
  std::vector<float> logits(50304, 1e4f);  // padding columns: never chosen
  for (int i = 0; i < V; ++i) logits[static_cast<size_t>(i)] = std::round(static_cast<float>(data.normal()) * 12.0f) / 4.0f;
  struct Rule {
    float temperature, top_p;
    int top_k;
  };
  for (const Rule& r : {Rule{1.0f, 1.0f, 0}, Rule{0.8f, 0.9f, 0}, Rule{1.0f, 0.5f, 0}, Rule{1.0f, 0.999f, 0},
                        Rule{2.0f, 0.95f, 0}, Rule{0.05f, 0.9f, 0}, Rule{50.0f, 0.999f, 0}, Rule{1.0f, 1.0f, 40},
                        Rule{0.7f, 0.8f, 40}, Rule{50.0f, 1.0f, 40}}) {
    SampleOptions o;
    o.temperature = r.temperature;
    o.top_p = r.top_p;
    o.top_k = r.top_k;
    Rng a(11), b(11);
    for (int i = 0; i < 60; ++i) {
      ASSERT_EQ(sample_token(logits.data(), V, o, a), reference_sample(logits, V, o, b))
          << "temperature " << r.temperature << ", top-p " << r.top_p << ", top-k " << r.top_k << ", draw " << i;
    }
  }
}

// A decoder's candidates (each row's best k, ranked) draw what the whole row draws: greedy and
// top-k, with and without top-p and temperature, at GPT-2's vocabulary with ties.
TEST(SampleRanked, DrawsWhatSampleTokenDrawsFromTheWholeRow) {
  const int V = 50257;
  Rng data(8);
  std::vector<float> logits(static_cast<size_t>(V));
  for (float& x : logits) x = std::round(static_cast<float>(data.normal()) * 12.0f) / 4.0f;
  std::vector<int32_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)] ||
           (logits[static_cast<size_t>(a)] == logits[static_cast<size_t>(b)] && a < b);
  });
  struct Rule {
    float temperature, top_p;
    int top_k;
  };
  for (const Rule& r : {Rule{0.0f, 1.0f, 0}, Rule{1.0f, 1.0f, 40}, Rule{0.7f, 0.8f, 40}, Rule{50.0f, 1.0f, 40},
                        Rule{1.0f, 0.5f, 1}, Rule{2.0f, 0.95f, 128}}) {
    SampleOptions o;
    o.temperature = r.temperature;
    o.top_p = r.top_p;
    o.top_k = r.top_k;
    const int n = r.temperature <= 0.0f ? 1 : r.top_k;
    std::vector<float> best(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) best[static_cast<size_t>(i)] = logits[static_cast<size_t>(order[static_cast<size_t>(i)])];
    Rng a(21), b(21);
    for (int i = 0; i < 60; ++i) {
      ASSERT_EQ(sample_ranked(order.data(), best.data(), n, o, a), sample_token(logits.data(), V, o, b))
          << "temperature " << r.temperature << ", top-p " << r.top_p << ", top-k " << r.top_k << ", draw " << i;
    }
  }
}

// Among equal logits the lower id ranks first, so top-k 5 over a flat row with one larger logit
// keeps that token and the first four others, wherever the larger one stands (found by a heap that
// passes over whole blocks whose best cannot enter it, and looks into the block holding the larger).
TEST(SampleToken, TopKBreaksTiesByTheLowerId) {
  for (int V : {7, 300, 5000}) {
    for (int high : {0, 2, V / 2, V - 1}) {
      std::vector<float> logits(static_cast<size_t>(V), 0.5f);
      logits[static_cast<size_t>(high)] = 0.75f;
      std::vector<int> kept = {high};
      for (int t = 0; kept.size() < 5; ++t)
        if (t != high) kept.push_back(t);
      SampleOptions o;
      o.top_k = 5;
      Rng rng(2);
      std::vector<int> seen(static_cast<size_t>(V), 0);
      for (int i = 0; i < 400; ++i) ++seen[static_cast<size_t>(sample_token(logits.data(), V, o, rng))];
      int drawn_from_kept = 0;
      for (int t : kept) {
        EXPECT_GT(seen[static_cast<size_t>(t)], 30) << "V " << V << ", larger logit at " << high << ": id " << t;
        drawn_from_kept += seen[static_cast<size_t>(t)];
      }
      EXPECT_EQ(drawn_from_kept, 400) << "V " << V << ", larger logit at " << high << ": drew outside the best 5";
    }
  }
}

TEST(SampleToken, FrequenciesFollowTheSoftmax) {
  std::vector<float> logits = {0.0f, std::log(3.0f)};  // p = 1/4, 3/4
  Rng rng(9);
  SampleOptions o;
  int ones = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ones += sample_token(logits.data(), 2, o, rng);
  EXPECT_NEAR(static_cast<double>(ones) / n, 0.75, 0.015);
}

GPTConfig tiny_model_config() {
  GPTConfig c = GPTConfig::preset("tiny");
  c.vocab_size = 20;
  c.block_size = 16;
  return c;
}

TEST(Generate, StopsCleanlyAtTheContextLimit) {
  GPT<float> model(tiny_model_config());
  model.init_weights(3);
  Rng rng(4);
  SampleOptions o;
  o.max_new_tokens = 100;
  o.stop_at_eot = false;
  std::vector<int> prompt = {1, 2, 3, 4, 5};
  SampleResult r = generate(model, prompt, o, rng);
  EXPECT_EQ(r.stop_reason, "context_limit");
  EXPECT_EQ(prompt.size() + r.tokens.size(), 17u);  // 16 positions of context, the last one predicts one more
  for (int t : r.tokens) EXPECT_TRUE(t >= 0 && t < 20);
}

TEST(Generate, GreedyDecodingMatchesArgmaxOfTheFullForward) {
  GPT<float> model(tiny_model_config());
  model.init_weights(8);
  Rng rng(1);
  SampleOptions o;
  o.temperature = 0;
  o.max_new_tokens = 6;
  o.stop_at_eot = false;
  std::vector<int> seq = {7, 3};
  SampleResult r = generate(model, seq, o, rng);
  ASSERT_EQ(r.tokens.size(), 6u);
  EXPECT_EQ(r.stop_reason, "max_new_tokens");
  // Recompute each step with a full (uncached) forward and compare the argmax.
  const int64_t Vp = model.config().padded_vocab_size();
  for (int t : r.tokens) {
    model.forward(seq.data(), nullptr, 1, static_cast<int64_t>(seq.size()));
    const float* last = model.logits() + (seq.size() - 1) * Vp;
    EXPECT_EQ(static_cast<int>(std::max_element(last, last + 20) - last), t);
    seq.push_back(t);
  }
}

TEST(Generate, StopsAtEndOfTextAndRejectsBadOptions) {
  GPT<float> model(tiny_model_config());
  model.init_weights(8);
  Rng rng(1);
  SampleOptions o;
  o.temperature = 0;
  std::vector<int> prompt = {7, 3};
  SampleResult first = generate(model, prompt, o, rng);
  o.eot_token = first.tokens[0];  // make the first greedy choice the end-of-text token
  SampleResult r = generate(model, prompt, o, rng);
  EXPECT_TRUE(r.tokens.empty());
  EXPECT_EQ(r.stop_reason, "end_of_text");
  o.top_p = 0;
  EXPECT_THROW(generate(model, prompt, o, rng), Error);
  EXPECT_THROW(generate(model, std::vector<int>{}, SampleOptions{}, rng), Error);
}


TEST(Generate, EachSampleHasItsOwnStream) {
  Rng zero = sample_rng(42, 0), plain(42);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(zero.next_u64(), plain.next_u64());
  // Stream 1 is not stream 0 shifted by a few draws, nor stream 2.
  std::vector<uint64_t> s0, s1, s2;
  Rng a = sample_rng(42, 0), b = sample_rng(42, 1), c = sample_rng(42, 2);
  for (int i = 0; i < 16; ++i) {
    s0.push_back(a.next_u64());
    s1.push_back(b.next_u64());
    s2.push_back(c.next_u64());
  }
  for (uint64_t x : s1) {
    EXPECT_EQ(std::count(s0.begin(), s0.end(), x), 0);
    EXPECT_EQ(std::count(s2.begin(), s2.end(), x), 0);
  }
  Rng again = sample_rng(42, 1);
  EXPECT_EQ(again.next_u64(), s1[0]);
}

// A batch decodes what each sample decodes alone with the same stream, including the samples that
// stopped early and sat out the later steps.
TEST(Generate, ABatchDrawsWhatEachSampleDrawsAlone) {
  GPT<float> model(tiny_model_config());
  model.init_weights(11);
  SampleOptions o;
  o.max_new_tokens = 10;
  o.stop_at_eot = false;
  const std::vector<int> prompt = {4, 9, 2};
  const int B = 5;
  CpuDecoder decoder(model);
  auto streams = [&] {
    std::vector<Rng> r;
    for (int k = 0; k < B; ++k) r.push_back(sample_rng(7, k));
    return r;
  };
  std::vector<Rng> rngs = streams();
  const std::vector<SampleResult> free_run = generate_batch(decoder, prompt, o, rngs);
  ASSERT_EQ(free_run.size(), static_cast<size_t>(B));
  EXPECT_NE(free_run[0].tokens, free_run[1].tokens);  // independent streams
  // End-of-text: sample 0's second token, which some other sample never draws.
  o.stop_at_eot = true;
  o.eot_token = free_run[0].tokens[1];
  int runs_on = -1;
  for (int b = 1; b < B; ++b) {
    const auto& t = free_run[static_cast<size_t>(b)].tokens;
    if (std::find(t.begin(), t.end(), o.eot_token) == t.end()) runs_on = b;
  }
  ASSERT_GE(runs_on, 0) << "every sample drew token " << o.eot_token << "; pick another seed";
  rngs = streams();
  std::vector<std::vector<int>> streamed(B);
  const std::vector<SampleResult> batch =
      generate_batch(decoder, prompt, o, rngs, [&](int64_t b, int id) { streamed[static_cast<size_t>(b)].push_back(id); });
  EXPECT_EQ(batch[0].stop_reason, "end_of_text");
  EXPECT_LE(batch[0].tokens.size(), 1u);
  EXPECT_EQ(batch[static_cast<size_t>(runs_on)].stop_reason, "max_new_tokens");
  EXPECT_EQ(batch[static_cast<size_t>(runs_on)].tokens.size(), 10u);
  for (int b = 0; b < B; ++b) {
    Rng alone = sample_rng(7, b);
    const SampleResult one = generate(decoder, prompt, o, alone);
    EXPECT_EQ(batch[static_cast<size_t>(b)].tokens, one.tokens) << "sample " << b;
    EXPECT_EQ(batch[static_cast<size_t>(b)].stop_reason, one.stop_reason) << "sample " << b;
    EXPECT_EQ(streamed[static_cast<size_t>(b)], one.tokens) << "sample " << b;
  }
}

TEST(Generate, ABatchStopsTogetherAtTheContextLimit) {
  GPT<float> model(tiny_model_config());
  model.init_weights(3);
  SampleOptions o;
  o.max_new_tokens = 100;
  o.stop_at_eot = false;
  std::vector<Rng> rngs = {sample_rng(1, 0), sample_rng(1, 1), sample_rng(1, 2)};
  CpuDecoder decoder(model);
  const std::vector<int> prompt = {1, 2, 3, 4, 5};
  for (const SampleResult& r : generate_batch(decoder, prompt, o, rngs)) {
    EXPECT_EQ(r.stop_reason, "context_limit");
    EXPECT_EQ(r.tokens.size(), 12u);  // 16 positions of context: 5 given, 11 cached and one more predicted
  }
  std::vector<Rng> none;
  EXPECT_THROW(generate_batch(decoder, prompt, o, none), Error);
}

// Prompts of different lengths decoded together: each sample is what its prompt gives alone, the
// longest stopping at the context limit while the others go on.
TEST(Generate, PromptsOfDifferentLengthsDrawWhatEachDrawsAlone) {
  GPT<float> model(tiny_model_config());
  model.init_weights(5);
  CpuDecoder decoder(model);
  const std::vector<std::vector<int>> prompts = {{1, 2, 3, 4, 5}, {7}, {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8}};
  for (float temperature : {0.0f, 1.0f}) {
    SampleOptions o;
    o.max_new_tokens = 9;
    o.stop_at_eot = temperature > 0;
    o.eot_token = 4;
    o.temperature = temperature;
    std::vector<Rng> rngs = {sample_rng(3, 0), sample_rng(3, 1), sample_rng(3, 2)};
    const std::vector<SampleResult> batch = generate_batch(decoder, prompts, o, rngs);
    ASSERT_EQ(batch.size(), 3u);
    if (temperature == 0) {
      EXPECT_EQ(batch[2].stop_reason, "context_limit");
      EXPECT_EQ(batch[2].tokens.size(), 5u);  // 12 given, 4 read back, one more predicted
      EXPECT_EQ(batch[1].tokens.size(), 9u);
    }
    for (size_t b = 0; b < prompts.size(); ++b) {
      Rng alone = sample_rng(3, static_cast<int64_t>(b));
      const SampleResult one = generate(decoder, prompts[b], o, alone);
      EXPECT_EQ(batch[b].tokens, one.tokens) << "temperature " << temperature << ", prompt " << b;
      EXPECT_EQ(batch[b].stop_reason, one.stop_reason) << "temperature " << temperature << ", prompt " << b;
    }
  }
  std::vector<Rng> two = {sample_rng(3, 0), sample_rng(3, 1)};
  EXPECT_THROW(generate_batch(decoder, prompts, SampleOptions{}, two), Error);
}

// What each prompt draws alone, prompt k from the stream sample_rng(seed, k).
std::vector<SampleResult> each_alone(Decoder& d, const std::vector<std::vector<int>>& prompts, const SampleOptions& o,
                                     uint64_t seed) {
  std::vector<SampleResult> alone;
  for (size_t k = 0; k < prompts.size(); ++k) {
    Rng rng = sample_rng(seed, static_cast<int64_t>(k));
    alone.push_back(generate(d, prompts[k], o, rng));
  }
  return alone;
}

// Passes every call on to another decoder; the test decoders below override what they watch.
class ForwardingDecoder : public Decoder {
 public:
  explicit ForwardingDecoder(Decoder& inner) : inner_(inner) {}
  const GPTConfig& config() const override { return inner_.config(); }
  void start(int64_t B, int64_t capacity) override { inner_.start(B, capacity); }
  int64_t length() const override { return inner_.length(); }
  std::vector<int64_t> lengths() const override { return inner_.lengths(); }
  void restart(int64_t b) override { inner_.restart(b); }
  void step(const int* tokens, int64_t B, int64_t Tn, float* logits) override { inner_.step(tokens, B, Tn, logits); }
  void step(const int* tokens, int64_t B, int64_t Tn, std::span<const int32_t> counts, float* logits) override {
    inner_.step(tokens, B, Tn, counts, logits);
  }

 protected:
  Decoder& inner_;
};

// A decoder that records how it is driven: restarts, and steps where a sequence reads several
// tokens (a prompt) while another reads one (a running sample) — a prompt joining mid-run.
class RecordingDecoder final : public ForwardingDecoder {
 public:
  using ForwardingDecoder::ForwardingDecoder;
  using ForwardingDecoder::step;
  void restart(int64_t b) override {
    if (inner_.lengths()[static_cast<size_t>(b)] > 0) ++reused_slots;
    inner_.restart(b);
  }
  void start(int64_t B, int64_t capacity) override {
    capacity_ = capacity;
    inner_.start(B, capacity);
  }
  void step(const int* tokens, int64_t B, int64_t Tn, std::span<const int32_t> counts, float* logits) override {
    const bool prompt = std::any_of(counts.begin(), counts.end(), [](int32_t n) { return n > 1; });
    const bool running = std::any_of(counts.begin(), counts.end(), [](int32_t n) { return n == 1; });
    if (prompt && running) ++joins;
    const std::vector<int64_t> lengths = inner_.lengths();
    for (size_t b = 0; b < counts.size(); ++b) {
      if (counts[b] == 1 && lengths[b] + Tn > capacity_) ++short_of_a_row;
    }
    inner_.step(tokens, B, Tn, counts, logits);
  }
  int reused_slots = 0, joins = 0;
  int short_of_a_row = 0;  // running samples that read with less room than the step's padded row

 private:
  int64_t capacity_ = 0;
};

// A decoder that gives candidates, as the GPU's does: the CPU's logits ranked by a plain sort.
class RankingDecoder final : public ForwardingDecoder {
 public:
  using ForwardingDecoder::ForwardingDecoder;
  using ForwardingDecoder::step;
  void step(const int* tokens, int64_t B, int64_t Tn, std::span<const int32_t> counts, float* logits) override {
    ++whole_steps;
    inner_.step(tokens, B, Tn, counts, logits);
  }
  int max_top_k() const override { return 8; }
  void step_top(const int* tokens, int64_t B, int64_t Tn, std::span<const int32_t> counts, int k, int32_t* ids,
                float* logits) override {
    EXPECT_TRUE(k >= 1 && k <= max_top_k()) << k;
    ++ranked_steps;
    const int64_t Vp = config().padded_vocab_size(), V = config().vocab_size;
    std::vector<float> all(static_cast<size_t>(B * Vp));
    inner_.step(tokens, B, Tn, counts, all.data());
    for (int64_t b = 0; b < B; ++b) {
      const float* row = all.data() + b * Vp;
      std::vector<int32_t> order(static_cast<size_t>(V));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [row](int32_t x, int32_t y) { return row[x] > row[y]; });
      for (int i = 0; i < k; ++i) {
        ids[b * k + i] = order[static_cast<size_t>(i)];
        logits[b * k + i] = row[order[static_cast<size_t>(i)]];
      }
    }
  }
  int whole_steps = 0, ranked_steps = 0;
};

// With a decoder that gives candidates, greedy and top-k (up to its limit) sample from them and
// draw what whole logits draw; other rules still read whole logits.
TEST(Generate, CandidatesFromTheDecoderDrawWhatWholeLogitsDraw) {
  GPT<float> model(tiny_model_config());
  model.init_weights(8);
  CpuDecoder cpu(model);
  const std::vector<std::vector<int>> prompts = {{1, 2, 3}, {7}, {3, 1, 4, 1, 5}, {2, 7}};
  struct Rule {
    float temperature, top_p;
    int top_k;
    bool ranked;
  };
  for (const Rule& r : {Rule{0.0f, 1.0f, 0, true}, Rule{1.0f, 1.0f, 5, true}, Rule{0.8f, 0.7f, 8, true},
                        Rule{1.0f, 1.0f, 9, false}, Rule{1.0f, 0.9f, 0, false}, Rule{1.0f, 1.0f, 0, false}}) {
    SCOPED_TRACE("temperature " + std::to_string(r.temperature) + ", top-p " + std::to_string(r.top_p) + ", top-k " +
                 std::to_string(r.top_k));
    SampleOptions o;
    o.max_new_tokens = 6;
    o.eot_token = 4;
    o.temperature = r.temperature;
    o.top_p = r.top_p;
    o.top_k = r.top_k;
    const auto run = [&](Decoder& d) {
      std::vector<Rng> rngs;
      for (size_t k = 0; k < prompts.size(); ++k) rngs.push_back(sample_rng(9, static_cast<int64_t>(k)));
      return generate_continuous(d, prompts, o, rngs, 2);
    };
    const std::vector<SampleResult> want = run(cpu);
    RankingDecoder ranking(cpu);
    const std::vector<SampleResult> got = run(ranking);
    for (size_t k = 0; k < prompts.size(); ++k) {
      EXPECT_EQ(got[k].tokens, want[k].tokens) << "sample " << k;
      EXPECT_EQ(got[k].stop_reason, want[k].stop_reason) << "sample " << k;
    }
    EXPECT_EQ(ranking.ranked_steps > 0, r.ranked);
    EXPECT_EQ(ranking.whole_steps > 0, !r.ranked);
  }
}

// Seven prompts of different lengths through 1, 2, 3 and 7 slots: a sample that stops hands its
// slot to the next prompt, read whole beside the running samples, and every sample draws what it
// draws alone (greedy, and sampled with early stops at end-of-text); each is reported done once.
TEST(Generate, ContinuousBatchingDrawsWhatEachDrawsAlone) {
  GPT<float> model(tiny_model_config());
  model.init_weights(5);
  CpuDecoder cpu(model);
  const std::vector<std::vector<int>> prompts = {{1, 2, 3, 4, 5}, {7},       {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8},
                                                 {2, 7, 1},       {8, 8, 8}, {5},
                                                 {9, 9, 1, 2, 3, 4, 5, 6}};
  const auto N = static_cast<int64_t>(prompts.size());
  for (float temperature : {0.0f, 1.0f}) {
    SampleOptions o;
    o.max_new_tokens = 6;
    o.stop_at_eot = temperature > 0;
    o.eot_token = 4;
    o.temperature = temperature;
    const std::vector<SampleResult> alone = each_alone(cpu, prompts, o, 8);
    for (int64_t slots : {1, 2, 3, 7}) {
      SCOPED_TRACE(::testing::Message() << "temperature " << temperature << ", " << slots << " slots");
      std::vector<Rng> rngs;
      for (int64_t k = 0; k < N; ++k) rngs.push_back(sample_rng(8, k));
      RecordingDecoder rec(cpu);
      std::vector<int> done(static_cast<size_t>(N), 0);
      const std::vector<SampleResult> got = generate_continuous(
          rec, prompts, o, rngs, slots, {}, [&](int64_t k, const SampleResult& r) {
            ++done[static_cast<size_t>(k)];
            EXPECT_EQ(r.tokens, alone[static_cast<size_t>(k)].tokens) << "reported done, sample " << k;
          });
      for (int64_t k = 0; k < N; ++k) {
        EXPECT_EQ(got[static_cast<size_t>(k)].tokens, alone[static_cast<size_t>(k)].tokens) << "sample " << k;
        EXPECT_EQ(got[static_cast<size_t>(k)].stop_reason, alone[static_cast<size_t>(k)].stop_reason) << k;
        EXPECT_EQ(done[static_cast<size_t>(k)], 1) << "sample " << k;
      }
      EXPECT_EQ(rec.reused_slots, N - slots) << "every prompt past the first slots takes a used slot";
      if (slots > 1 && slots < N) {
        EXPECT_GT(rec.joins, 0) << "no prompt joined running samples";
      }
    }
  }
  std::vector<Rng> rngs(static_cast<size_t>(N), Rng(1));
  EXPECT_NE(flashgpt::testing::error_of([&] { generate_continuous(cpu, prompts, SampleOptions{}, rngs, 0); })
                .find("at least 1"),
            std::string::npos);
}

// Samples running up to the context while long prompts join: a step reading a prompt of Tn tokens
// pads every reading row to Tn, so a sample without room for Tn more sits that step out (reading
// its token at the next), and every sample still draws what it draws alone, stopping where it
// would alone (all but the one-token prompt at the context limit).
TEST(Generate, ContinuousBatchingNearTheContextLimit) {
  GPT<float> model(tiny_model_config());  // block_size 16
  model.init_weights(6);
  CpuDecoder cpu(model);
  const std::vector<std::vector<int>> prompts = {{1},          {2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}, {3, 3},
                                                 {4, 5, 6, 7, 8, 9, 10, 11, 12, 13}, {5, 1, 2},
                                                 {6, 5, 4, 3, 2, 1, 1, 2, 3, 4, 5, 6, 7, 8}};
  const auto N = static_cast<int64_t>(prompts.size());
  SampleOptions o;
  o.max_new_tokens = 16;
  o.stop_at_eot = false;
  const std::vector<SampleResult> alone = each_alone(cpu, prompts, o, 3);
  for (int64_t k = 0; k < N; ++k) {
    EXPECT_EQ(alone[static_cast<size_t>(k)].stop_reason, k == 0 ? "max_new_tokens" : "context_limit") << "sample " << k;
  }
  int short_of_a_row = 0;
  for (int64_t slots : {2, 3, 4}) {
    SCOPED_TRACE("slots " + std::to_string(slots));
    std::vector<Rng> rngs;
    for (int64_t k = 0; k < N; ++k) rngs.push_back(sample_rng(3, k));
    RecordingDecoder rec(cpu);
    const std::vector<SampleResult> got = generate_continuous(rec, prompts, o, rngs, slots);
    for (int64_t k = 0; k < N; ++k) {
      EXPECT_EQ(got[static_cast<size_t>(k)].tokens, alone[static_cast<size_t>(k)].tokens) << "sample " << k;
      EXPECT_EQ(got[static_cast<size_t>(k)].stop_reason, alone[static_cast<size_t>(k)].stop_reason) << k;
    }
    EXPECT_GT(rec.joins, 0) << "no prompt joined running samples";
    short_of_a_row += rec.short_of_a_row;
  }
  // A running sample near the limit reads its token in the step a long prompt joins: only the
  // tokens read need room in the cache.
  EXPECT_GT(short_of_a_row, 0) << "no step had a running sample without room for the padded row";
}

}  // namespace
}  // namespace flashgpt
