// GPTCuda's incremental decoding (flashgpt/cuda/gpt_cuda.h), the GPU twin of GPT<T>::forward_cached
// (model/gpt.cpp): the cache in device memory, and each step's forward over the new tokens only,
// their attention reading everything cached.
//
// The cache: multi-head attention keeps keys and values [L, B, capacity, kv_dim] and attends with
// the flash kernels (Tk = the tokens cached, the cache's capacity as the row stride, the new
// queries causal from position length on). Latent attention keeps only the rows [c_kv, k_rope]
// [L, B, rows, n_latent + rope_dim], laid out as pages of kLatentPage rows with a block table
// (each sequence's pages are consecutive here), and attends with the absorbed paged decode kernel
// (latent_decode_cuda.h): W_k_up folded into the queries, W_v_up applied to its latent outputs.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "cuda/gpt_cuda_model.h"
#include "flashgpt/core/device.h"
#include "flashgpt/core/error.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/flash_decode_cuda.h"
#include "flashgpt/cuda/latent_decode_cuda.h"
#include "flashgpt/cuda/matmul_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

namespace {

constexpr int64_t kLatentPage = 64;  // rows per page of the latent cache
constexpr int64_t kMaxLatent = 512;  // the widest latent the decode kernels take
constexpr int64_t kMaxFp32HeadDim = 256;  // the fp32 flash kernel's widest head
constexpr int64_t kMaxLatentRows = 65535;  // the most sequences one latent decode call takes

// A scratch buffer of at least `bytes`, grown (never shrunk) as calls need.
void* at_least(DeviceBuffer& buf, size_t bytes) {
  if (buf.bytes() < bytes) buf = DeviceBuffer(bytes);
  return buf.get();
}

}  // namespace

std::string GPTCuda::decode_unsupported(const GPTConfig& c, Precision p) {
  std::string why = unsupported(c, p);
  if (why.empty() && is_latent(c.attention) && c.latent_dim() > kMaxLatent) {
    why = fmt::format("decoding latent attention on the GPU needs n_latent ≤ {}; this model's is {}", kMaxLatent,
                      c.latent_dim());
  }
  return why;
}

namespace gpt_detail {

template <typename T>
void Model<T>::start_decoding(int64_t B, int64_t capacity) {
  const GPTConfig& c = config;
  FLASHGPT_CHECK(B > 0 && B <= 65535, "decode cache: batch {} must be 1…65535", B);
  FLASHGPT_CHECK(cp == nullptr, "decode cache: decoding runs whole sequences on one GPU (context parallelism is on)");
  FLASHGPT_CHECK(capacity > 0 && capacity <= c.block_size, "decode cache: capacity {} must be 1…{} (block_size)",
                 capacity, c.block_size);
  const std::string why = GPTCuda::decode_unsupported(c, precision);
  FLASHGPT_CHECK(why.empty(), "decode: {}", why);
  dec_ = DecodeCache{};
  graph_replays = 0;
  const int64_t L = c.n_layer;
  if (is_latent(c.attention)) {
    const int64_t pages = (capacity + kLatentPage - 1) / kLatentPage, row = c.latent_dim() + c.mla_rope_dim();
    dec_.rows = pages * kLatentPage;
    dec_.latent = DeviceBuffer(static_cast<size_t>(L * B * dec_.rows * row) * sizeof(T));
    dec_.latent.fill_bytes(0);
    std::vector<int32_t> table(static_cast<size_t>(B * pages));
    std::iota(table.begin(), table.end(), 0);  // sequence b's pages are b·pages …
    dec_.block_table = DeviceBuffer(table.size() * sizeof(int32_t));
    dec_.block_table.upload(table.data(), table.size() * sizeof(int32_t));
    dec_.seq_lens = DeviceBuffer(static_cast<size_t>(B) * sizeof(int32_t));
  } else {
    dec_.rows = capacity;
    const size_t bytes = static_cast<size_t>(L * B * capacity * c.kv_dim()) * sizeof(T);
    dec_.k = DeviceBuffer(bytes);
    dec_.v = DeviceBuffer(bytes);
    dec_.k.fill_bytes(0);  // rows past a sequence's length stay finite
    dec_.v.fill_bytes(0);
  }
  dec_.B = B;
  dec_.capacity = capacity;
  dec_.lengths.assign(static_cast<size_t>(B), 0);
  dec_.step_ints = DeviceBuffer(static_cast<size_t>(3 * B) * sizeof(int32_t));
}

template <typename T>
void Model<T>::restart_decoding(int64_t b) {
  FLASHGPT_CHECK(dec_.B > 0, "decode: no cache (call start_decoding first)");
  FLASHGPT_CHECK(b >= 0 && b < dec_.B, "decode: no sequence {} in a cache of {}", b, dec_.B);
  dec_.lengths[static_cast<size_t>(b)] = 0;
}

template <typename T>
void Model<T>::decode(const int* tokens, int64_t B, int64_t Tn, std::span<float> logits,
                      std::span<const int32_t> counts, int top_k, std::span<int32_t> ids) {
  const GPTConfig& c = config;
  FLASHGPT_CHECK(dec_.B > 0, "decode: no cache (call start_decoding first)");
  FLASHGPT_CHECK(B == dec_.B, "decode: {} sequences given, the cache holds {}", B, dec_.B);
  FLASHGPT_CHECK(Tn > 0, "decode: the number of new tokens must be positive, got {}", Tn);
  FLASHGPT_CHECK(counts.empty() || static_cast<int64_t>(counts.size()) == B,
                 "decode: {} token counts given for {} sequences", counts.size(), B);
  const int64_t V = c.vocab_size, Vp = c.padded_vocab_size();
  if (top_k > 0) {
    FLASHGPT_CHECK(top_k <= kMaxDeviceTopK && top_k <= V, "decode: {} candidates per sequence asked for; 1…{} can be",
                   top_k, std::min<int64_t>(kMaxDeviceTopK, V));
    FLASHGPT_CHECK(static_cast<int64_t>(logits.size()) == B * top_k && static_cast<int64_t>(ids.size()) == B * top_k,
                   "decode: room for {} candidate logits and {} ids given, {} wanted", logits.size(), ids.size(),
                   B * top_k);
  } else {
    FLASHGPT_CHECK(static_cast<int64_t>(logits.size()) == B * Vp, "decode: room for {} logits given, {} wanted",
                   logits.size(), B * Vp);
  }
  std::vector<int32_t> count(static_cast<size_t>(B), static_cast<int32_t>(Tn));
  bool ragged = false;  // some sequence reads fewer than Tn tokens
  int64_t N = 0;        // the tokens read
  for (int64_t b = 0; b < B; ++b) {
    if (!counts.empty()) {
      const int32_t n = counts[static_cast<size_t>(b)];
      FLASHGPT_CHECK(n >= 0 && n <= Tn, "decode: sequence {} reads {} tokens, outside 0…{}", b, n, Tn);
      count[static_cast<size_t>(b)] = n;
      ragged = ragged || n != Tn;
    }
    N += count[static_cast<size_t>(b)];
  }
  FLASHGPT_CHECK(Tn <= dec_.capacity, "decode: {} new tokens exceed the cache's capacity of {}", Tn, dec_.capacity);
  bool equal = true;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t len = dec_.lengths[static_cast<size_t>(b)], n = count[static_cast<size_t>(b)];
    equal = equal && len == dec_.lengths[0];
    FLASHGPT_CHECK(len + n <= dec_.capacity,
                   "decode: sequence {} would hold {} tokens ({} cached, {} new), past the cache's capacity of {}", b,
                   len + n, len, n, dec_.capacity);
  }
  for (int64_t i = 0; i < B * Tn; ++i) {
    FLASHGPT_CHECK(tokens[i] >= 0 && tokens[i] < V, "token id {} at index {} is out of range for vocab_size {}",
                   tokens[i], i, V);
  }
  if (N == 0) {  // nothing read: every sequence's logits are zero, as on the CPU
    std::fill(logits.begin(), logits.end(), 0.0f);
    for (int64_t b = 0; b < B && top_k > 0; ++b) std::iota(ids.begin() + b * top_k, ids.begin() + (b + 1) * top_k, 0);
    return;
  }
  // Sequences each reading their whole row at one length run as one batch [B, Tn]; at different
  // lengths each reads at its own position: per-sequence positions (embeddings, RoPE), cache rows
  // (appends), causal offsets and key counts (attention). A ragged step packs the tokens read into
  // rows [N, 1], each at its own position (PackedStep): the layers see no padding, and only the
  // tokens read are appended, so a sequence needs room for its own tokens alone.
  // A one-token step in which some sequences sit out (a batch whose finished samples wait for
  // nothing) is not packed: each sequence sitting out still runs its row — the token it was given,
  // at its own length — whose key and value land in the cache row past its length, where nothing
  // reads them before the sequence's next token overwrites them; its logits are zeroed after. Its
  // launches are then those of any one-token step, so it can replay the same graph. A sequence
  // whose cache is full has no such row: then the step is packed.
  bool sit_out = Tn == 1 && ragged;
  for (int64_t b = 0; b < B && sit_out; ++b) {
    sit_out = count[static_cast<size_t>(b)] == 1 || dec_.lengths[static_cast<size_t>(b)] < dec_.capacity;
  }
  // A steady step (one new token for every sequence, or none for some as above: the sampler's
  // steady state) replays a CUDA graph when graphs are on. It runs apart whatever the lengths, with
  // the cache's rows as its key bound, so that every such step queues the same launches with the
  // same arguments and differs only in device memory: its tokens, positions and key counts.
  const bool one_token = Tn == 1 && (!ragged || sit_out);
  const bool steady = decode_graphs && one_token;
  dec_.packed = !one_token && ragged;
  dec_.apart = !dec_.packed && (!equal || steady || sit_out);
  dec_.step_tn = Tn;
  dec_.pos = 0;
  const StreamScope on_stream(decode_stream_.get());  // every copy and launch below, and the graph
  std::vector<int32_t> keys(static_cast<size_t>(B));  // latent: the keys each sequence sees
  std::vector<int> packed_tokens;
  if (dec_.packed) {
    const bool latent = is_latent(c.attention);
    const int64_t pages = latent ? dec_.rows / kLatentPage : 0;
    packed_ = PackedStep(N, B, pages);
    std::vector<int32_t> ints(static_cast<size_t>(packed_.total));
    const auto at = [&](int64_t offset, int64_t i) -> int32_t& { return ints[static_cast<size_t>(offset + i)]; };
    packed_tokens.reserve(static_cast<size_t>(N));
    int64_t r = 0;
    for (int64_t b = 0; b < B; ++b) {
      const auto len = static_cast<int32_t>(dec_.lengths[static_cast<size_t>(b)]);
      const int32_t n = count[static_cast<size_t>(b)];
      for (int32_t i = 0; i < n; ++i, ++r) {
        packed_tokens.push_back(tokens[b * Tn + i]);
        at(packed_.row_pos, r) = len + i;
        at(packed_.row_cache, r) = static_cast<int32_t>(b * dec_.rows) + len + i;
        at(packed_.row_padded, r) = static_cast<int32_t>(n == 1 ? B * Tn + b : b * Tn + Tn - n + i);
        at(packed_.row_keys, r) = len + i + 1;
        for (int64_t p = 0; p < pages; ++p) at(packed_.row_table + r * pages, p) = static_cast<int32_t>(b * pages + p);
      }
      at(packed_.q_offsets, b) = len + n - static_cast<int32_t>(Tn);
      at(packed_.kv_lengths, b) = n > 1 ? len + n : 0;
      at(packed_.q_offsets1, b) = len;
      at(packed_.kv_lengths1, b) = n == 1 ? len + 1 : 0;
      at(packed_.last_row, b) = n > 0 ? static_cast<int32_t>(r - 1) : -1;
      packed_.max_keys = std::max<int64_t>(packed_.max_keys, at(packed_.kv_lengths, b));
      packed_.max_keys1 = std::max<int64_t>(packed_.max_keys1, at(packed_.kv_lengths1, b));
    }
    at_least(dec_.step_ints, ints.size() * sizeof(int32_t));
    dec_.step_ints.upload(ints.data(), ints.size() * sizeof(int32_t));
    if (!latent) {  // the attention's padded queries: every layer writes the same rows, the rest stay zero
      at_least(dec_.q_pad, static_cast<size_t>(B * (Tn + 1) * c.n_head * c.head_dim()) * sizeof(T));
      dec_.q_pad.fill_bytes(0);
    }
  } else if (dec_.apart) {
    std::vector<int32_t> ints(static_cast<size_t>(2 * B + B * Tn));
    std::copy(tokens, tokens + B * Tn, ints.begin() + 2 * B);
    dec_.max_keys = 1;
    for (int64_t b = 0; b < B; ++b) {
      const auto len = static_cast<int32_t>(dec_.lengths[static_cast<size_t>(b)]);
      keys[static_cast<size_t>(b)] = len + static_cast<int32_t>(Tn);
      ints[static_cast<size_t>(b)] = len;  // position of token 0: its causal offset and cache row
      ints[static_cast<size_t>(B + b)] = keys[static_cast<size_t>(b)];
      dec_.max_keys = std::max<int64_t>(dec_.max_keys, keys[static_cast<size_t>(b)]);
    }
    if (steady) dec_.max_keys = dec_.rows;  // the flash kernels stop at each sequence's own count
    at_least(dec_.step_ints, ints.size() * sizeof(int32_t));
    dec_.step_ints.upload(ints.data(), ints.size() * sizeof(int32_t));
  } else {
    dec_.pos = dec_.lengths[0];
    std::fill(keys.begin(), keys.end(), static_cast<int32_t>(dec_.pos + Tn));
  }
  // The layers' rows: [B, Tn], or packed [N, 1].
  const int64_t lb = dec_.packed ? N : B, lt = dec_.packed ? 1 : Tn;
  allocate(lb, lt);
  have_forward_ = have_logits_ = have_segments_ = false;
  if (!dec_.apart) {  // apart, they came with the positions
    copy_to_device(tokens_, dec_.packed ? packed_tokens.data() : tokens, static_cast<size_t>(N) * sizeof(int));
  }
  if (is_latent(c.attention)) {
    if (!dec_.packed && !dec_.apart) dec_.seq_lens.upload(keys.data(), keys.size() * sizeof(int32_t));
    // Every layer's decode has these sizes: planned once a call. Packed, every row is a sequence
    // of one query with its own block table.
    PagedLatentDims& pd = dec_.latent_dims;
    pd.B = std::min(lb, kMaxLatentRows);
    pd.H = c.n_head;
    pd.Tq = lt;
    pd.n_latent = c.latent_dim();
    pd.rope_dim = c.mla_rope_dim();
    pd.page_size = kLatentPage;
    pd.max_pages = dec_.rows / kLatentPage;
    // Not packed, the step's lengths (read on the GPU, so a replayed graph's too) are scheduled
    // once, at the step's start, for every layer; packed calls split uniformly.
    LatentDecodeOptions opt;
    opt.schedule = dec_.packed ? LatentSchedule::Uniform : LatentSchedule::Auto;
    const LatentDecodePlan plan = plan_latent_decode<T>(pd, opt);
    opt.splits = plan.splits;
    opt.schedule = plan.schedule;
    opt.schedule_ready = plan.schedule == LatentSchedule::Balanced;
    opt.workspace = plan.workspace_bytes > 0 ? at_least(dec_.scratch, plan.workspace_bytes) : nullptr;
    dec_.latent_opt = opt;
  }
  const size_t out_bytes = top_k > 0 ? logits.size_bytes() : static_cast<size_t>(B * Vp) * sizeof(float);
  const float* wide = nullptr;  // the logits, without top_k
  if (!steady) {
    wide = decode_device_work(B, Tn, top_k, out_bytes);
  } else if (!dec_.graph.empty() && dec_.graph_top_k == top_k && dec_.graph_epoch == allocation_epoch() &&
             dec_.graph_fused == fused_qkv() && dec_.graph_split_kv == split_kv_decode &&
             dec_.graph_kernel == flash_decode_kernel) {
    dec_.graph.launch(decode_stream_.get());
    wide = dec_.graph_out;
    ++graph_replays;
  } else {
    // This step runs launch by launch, sizing every buffer; then the same work is captured for
    // the steps after it (the capture runs nothing).
    wide = decode_device_work(B, Tn, top_k, out_bytes);
    try {
      dec_.graph.capture(decode_stream_.get(), [&] { decode_device_work(B, Tn, top_k, out_bytes); });
      dec_.graph_top_k = top_k;
      dec_.graph_epoch = allocation_epoch();
      dec_.graph_fused = fused_qkv();
      dec_.graph_split_kv = split_kv_decode;
      dec_.graph_kernel = flash_decode_kernel;
      dec_.graph_out = wide;
    } catch (const Error& e) {  // the step is done; the next ones run launch by launch
      std::fprintf(stderr, "flashgpt: note: decode: CUDA graph capture failed, decoding without graphs: %s\n",
                   e.what());
      decode_graphs = false;
    }
  }
  if (top_k > 0) {  // only the sampler's candidates cross to the host
    std::vector<char> both(2 * out_bytes);  // one copy (and one wait) for the ids and the logits
    copy_to_host(both.data(), dec_.top.get(), both.size());
    std::memcpy(ids.data(), both.data(), ids.size_bytes());
    std::memcpy(logits.data(), both.data() + out_bytes, logits.size_bytes());
  } else {
    copy_to_host(logits.data(), wide, logits.size_bytes());
  }
  // Those that sat out get what a packed step gives them: zero logits (whose best are ids 0, 1, …).
  for (int64_t b = 0; b < B && sit_out; ++b) {
    if (count[static_cast<size_t>(b)] > 0) continue;
    const int64_t width = top_k > 0 ? top_k : Vp;
    std::fill(logits.begin() + b * width, logits.begin() + (b + 1) * width, 0.0f);
    if (top_k > 0) std::iota(ids.begin() + b * top_k, ids.begin() + (b + 1) * top_k, 0);
  }
  for (int64_t b = 0; b < B; ++b) dec_.lengths[static_cast<size_t>(b)] += count[static_cast<size_t>(b)];
}

template <typename T>
const float* Model<T>::decode_device_work(int64_t B, int64_t Tn, int top_k, size_t out_bytes) {
  const GPTConfig& c = config;
  const int64_t C = c.n_embd, Vp = c.padded_vocab_size(), lb = B_, lt = Tn_;
  struct Decoding {  // the blocks read and extend the cache for this call only
    bool& flag;
    explicit Decoding(bool& f) : flag(f) { flag = true; }
    ~Decoding() { flag = false; }
  } decoding(decoding_);

  // Apart, the tokens follow the positions and key counts in step_ints.
  const int* tokens = dec_.apart ? step_int(2 * B) : tokens_;
  if (is_latent(c.attention) && dec_.latent_opt.schedule == LatentSchedule::Balanced) {
    latent_decode_schedule<T>(dec_.latent_dims, latent_key_counts(), dec_.latent_opt);
  }
  embedding_forward(resid_[0], tokens, W(wte_), W(wpe_), lb, lt, C, pos0(), seq_pos());
  trunk_forward();
  // The classifier over each sequence's last new token only: rows Tn − 1, 2·Tn − 1, …, or packed
  // each sequence's own last row, gathered first (a sequence that read nothing gets a zero row,
  // so zero logits).
  const T* last = lnf_ + (Tn - 1) * C;
  int64_t ld = Tn * C;
  if (dec_.packed) {
    T* gathered = static_cast<T*>(at_least(dec_.last, static_cast<size_t>(B * C) * sizeof(T)));
    dec_.last.fill_bytes(0);
    copy_rows(gathered, C, 0, lnf_, 0, C, B, 1, C, nullptr, step_int(packed_.last_row));
    last = gathered;
    ld = C;
  }
  T* out = static_cast<T*>(at_least(dec_.logits, static_cast<size_t>(B * Vp) * sizeof(T)));
  gemm<T, T>(false, true, B, Vp, C, 1.0f, last, ld, W(lm_), C, 0.0f, out, Vp);
  if (top_k > 0) {
    char* both = static_cast<char*>(at_least(dec_.top, 2 * out_bytes));
    auto* d_ids = reinterpret_cast<int32_t*>(both);
    auto* d_top = reinterpret_cast<float*>(both + out_bytes);
    top_k_rows<T>(out, B, c.vocab_size, Vp, top_k, d_ids, d_top);
    return nullptr;
  }
  if constexpr (std::is_same_v<T, bf16>) {
    float* wide = static_cast<float*>(at_least(dec_.wide_logits, out_bytes));
    convert(wide, out, B * Vp);
    return wide;
  } else {
    return out;
  }
}

template <typename T>
void Model<T>::cached_attention(const AttentionDims& d, const AttentionMask& m, float scale, const T* q, const T* k,
                                const T* v, T* o, float* lse) {
  if (split_kv_decode != SplitKv::Off && d.Tq * (d.Hq / d.Hkv) <= kFlashDecodeRows &&
      flash_decode_supports(d.Dqk, d.Dv)) {
    FlashDecodeOptions opt;
    // The warps kernel where asked for and it runs the step, else the tiles kernel.
    const bool warps = flash_decode_kernel == FlashDecodeKernel::Warps &&
                       d.Tq * (d.Hq / d.Hkv) <= kFlashDecodeWarpRows && flash_decode_warps_run<T>(d, k, v);
    opt.kernel = warps ? FlashDecodeKernel::Warps : FlashDecodeKernel::Tiles;
    const FlashDecodePlan plan = plan_flash_decode<T>(d, opt, q, k, v);
    if (split_kv_decode == SplitKv::On || plan.beats_flash_kernel) {
      opt.splits = plan.splits;
      opt.workspace = at_least(dec_.split_ws, plan.workspace_bytes);
      flash_decode<T>(d, m, scale, q, k, v, o, lse, opt);
      return;
    }
  }
  if constexpr (std::is_same_v<T, bf16>) {
    if (flash_tc_supports(d.Dqk, d.Dv)) {
      auto u = [](const bf16* p) { return reinterpret_cast<const uint16_t*>(p); };
      flash_forward_bf16(d, m, scale, u(q), u(k), u(v), reinterpret_cast<uint16_t*>(o), lse);
      return;
    }
  } else {
    if (d.Dqk <= kMaxFp32HeadDim && d.Dv <= kMaxFp32HeadDim) {
      flash_forward_fp32(d, m, scale, q, k, v, o, lse);
      return;
    }
  }
  void* ws = at_least(dec_.scratch, standard_workspace_bytes<T>(d));
  standard_forward_cuda<T>(d, m, scale, q, k, v, o, lse, ws);
}

template <typename T>
void Model<T>::mha_decode_attention(LayerActs& a) {
  const GPTConfig& c = config;
  const int64_t kvd = c.kv_dim(), hd = c.head_dim(), rows = dec_.rows, pos0 = dec_.pos, B = dec_.B;
  // This step's q, k and v rows (fused: one row each token; k and q dense after QK-norm).
  const int64_t qld = qa_ld(), kld = ka_ld(), vld = kv_ld();
  const int64_t layer = layer_of(a) * B * rows * kvd;
  T* k = dec_.k.template as<T>() + layer;
  T* v = dec_.v.template as<T>() + layer;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  if (dec_.packed) {
    // Each row's key and value to its own cache row. Then the queries are spread out to two
    // layouts (the rest zeros): the sequences reading several tokens as [B, Tn], each one's rows
    // last, and those reading one as [B, 1]; a sequence outside a layout sees no key there, so the
    // flash kernels skip its rows. Each attends over its sequence's keys; the rows read come back.
    const int64_t N = packed_.n, Tn = dec_.step_tn, Hq = c.n_head, qw = Hq * hd;
    const int32_t* to_cache = step_int(packed_.row_cache);
    const int32_t* padded = step_int(packed_.row_padded);
    copy_rows_pair<T>({k, 0, kvd, a.ka, kld, 0, kvd}, {v, 0, kvd, a.v, vld, 0, kvd}, N, 1, to_cache);
    const int64_t pad_rows = B * (Tn + 1);
    T* q = dec_.q_pad.template as<T>();  // zeroed by decode for this step
    T* o = static_cast<T*>(at_least(dec_.o_pad, static_cast<size_t>(pad_rows * qw) * sizeof(T)));
    auto* lse = static_cast<float*>(at_least(dec_.lse_pad, static_cast<size_t>(pad_rows * Hq) * sizeof(float)));
    copy_rows(q, 0, qw, a.qa, qld, 0, N, 1, qw, padded);
    const auto attend = [&](int64_t Tq, int64_t max_keys, int64_t offsets, int64_t lengths, int64_t first) {
      if (max_keys == 0) return;  // no sequence in this layout
      const AttentionDims d{B, Hq, c.kv_heads(), Tq, max_keys, hd, hd, rows};
      AttentionMask m{true, 0};
      m.q_offsets = {step_int(offsets), static_cast<size_t>(B)};
      m.kv_lengths = {step_int(lengths), static_cast<size_t>(B)};
      cached_attention(d, m, scale, q + first * qw, k, v, o + first * qw, lse + first * Hq);
    };
    attend(Tn, packed_.max_keys, packed_.q_offsets, packed_.kv_lengths, 0);
    attend(1, packed_.max_keys1, packed_.q_offsets1, packed_.kv_lengths1, B * Tn);
    copy_rows(a.att, qw, 0, o, 0, qw, N, 1, qw, nullptr, padded);
    return;
  }
  if (dec_.apart) {  // Tn new tokens each, appended at its sequence's own row, seeing its own keys
    const int32_t* ints = step_int(0);
    copy_rows_pair<T>({k, rows * kvd, kvd, a.ka, Tn_ * kld, kld, kvd}, {v, rows * kvd, kvd, a.v, Tn_ * vld, vld, kvd},
                      B, Tn_, ints);
    const AttentionDims d = mha_dims(B, Tn_, dec_.max_keys, rows, false);
    AttentionMask m{true, 0};
    m.q_offsets = {ints, static_cast<size_t>(B)};
    m.kv_lengths = {ints + B, static_cast<size_t>(B)};
    cached_attention(d, m, scale, a.qa, k, v, a.att, a.lse);
    return;
  }
  // Each sequence's Tn new keys (and values) after its pos0 cached ones.
  copy_rows_pair<T>({k + pos0 * kvd, rows * kvd, kvd, a.ka, Tn_ * kld, kld, kvd},
                    {v + pos0 * kvd, rows * kvd, kvd, a.v, Tn_ * vld, vld, kvd}, B, Tn_);
  const AttentionDims d = mha_dims(B, Tn_, pos0 + Tn_, rows, false);
  const AttentionMask m{true, pos0};
  cached_attention(d, m, scale, a.qa, k, v, a.att, a.lse);
}

template <typename T>
void Model<T>::mla_decode_attention(const LayerOffsets& o, LayerActs& a, const T* v_up) {
  const GPTConfig& c = config;
  const int64_t N = B_ * Tn_, H = c.n_head, hd = c.head_dim();
  const int64_t nl = c.latent_dim(), dr = c.mla_rope_dim(), dqk = c.mla_qk_dim(), row = nl + dr;
  const int64_t rows = dec_.rows, pos0 = dec_.pos;
  T* cache = dec_.latent.template as<T>() + layer_of(a) * dec_.B * rows * row;
  // This step's rows [c_kv, k_rope] at positions pos0 … of each sequence, or apart each at its
  // own, or packed each row at its own: both parts in one launch (no rope part when dr is 0).
  if (dec_.packed) {
    copy_rows_pair<T>({cache, 0, row, a.ckv, nl, 0, nl}, {cache + nl, 0, row, a.kr, dr, 0, dr}, N, 1,
                      step_int(packed_.row_cache));
  } else if (dec_.apart) {
    copy_rows_pair<T>({cache, rows * row, row, a.ckv, Tn_ * nl, nl, nl},
                      {cache + nl, rows * row, row, a.kr, Tn_ * dr, dr, dr}, B_, Tn_, step_int(0));
  } else {
    copy_rows_pair<T>({cache + pos0 * row, rows * row, row, a.ckv, Tn_ * nl, nl, nl},
                      {cache + pos0 * row + nl, rows * row, row, a.kr, Tn_ * dr, dr, dr}, B_, Tn_);
  }
  // Absorbed queries q_abs,h = [q_nope,h · W_k_up,h, q_rope,h], [N, H, row]: one batch of H products.
  T* q_abs = static_cast<T*>(at_least(dec_.q_abs, static_cast<size_t>(N * H * row) * sizeof(T)));
  gemm_batched<T, T>(false, false, N, nl, hd, 1.0f, a.qa, H * dqk, dqk, W(o.k_up_w), nl, hd * nl, 0.0f, q_abs, H * row,
                     row, H);
  if (dr > 0) copy_rows(q_abs + nl, 0, row, a.qa + hd, 0, dqk, 1, N * H, dr);
  // MQA over the cache (as decode planned it): out [N, H, n_latent] in latent space. Packed, each
  // row is a sequence of one query, with its own key count and its sequence's block table.
  T* o_lat = static_cast<T*>(at_least(dec_.o_lat, static_cast<size_t>(N * H * nl) * sizeof(T)));
  const float scale = 1.0f / std::sqrt(static_cast<float>(dqk));
  if (dec_.packed) {  // at most kMaxLatentRows rows a call (a launch's grid limit), as planned
    const int64_t pages = dec_.rows / kLatentPage;
    for (int64_t r0 = 0; r0 < N; r0 += kMaxLatentRows) {
      PagedLatentDims pd = dec_.latent_dims;
      pd.B = std::min(kMaxLatentRows, N - r0);
      latent_decode_paged<T>(pd, scale, q_abs + r0 * H * row, cache, step_int(packed_.row_table + r0 * pages),
                             step_int(packed_.row_keys + r0), o_lat + r0 * H * nl, a.lse + r0 * H, dec_.latent_opt);
    }
  } else {
    latent_decode_paged<T>(dec_.latent_dims, scale, q_abs, cache, dec_.block_table.template as<int32_t>(),
                           latent_key_counts(), o_lat, a.lse, dec_.latent_opt);
  }
  // Back to each head's values: att_h = o_lat,h · W_v_up,hᵀ, again one batch of H products.
  gemm_batched<T, T>(false, true, N, hd, nl, 1.0f, o_lat, H * nl, nl, v_up, nl, hd * nl, 0.0f, a.att, H * hd, hd, H);
}

// The class is instantiated in gpt_cuda.cpp; this file instantiates its own members.
#define FLASHGPT_INSTANTIATE(T)                                                                                  \
  template void Model<T>::start_decoding(int64_t, int64_t);                                                     \
  template void Model<T>::restart_decoding(int64_t);                                                            \
  template const float* Model<T>::decode_device_work(int64_t, int64_t, int, size_t);                            \
  template void Model<T>::decode(const int*, int64_t, int64_t, std::span<float>, std::span<const int32_t>, int, \
                                 std::span<int32_t>);                                                          \
  template void Model<T>::cached_attention(const AttentionDims&, const AttentionMask&, float, const T*, const T*, \
                                           const T*, T*, float*);                                              \
  template void Model<T>::mha_decode_attention(LayerActs&);                                                     \
  template void Model<T>::mla_decode_attention(const LayerOffsets&, LayerActs&, const T*);
FLASHGPT_INSTANTIATE(float)
FLASHGPT_INSTANTIATE(bf16)
#undef FLASHGPT_INSTANTIATE

}  // namespace gpt_detail

void GPTCuda::start_decoding(int64_t B, int64_t capacity) { impl_->start_decoding(B, capacity); }
std::vector<int64_t> GPTCuda::decode_lengths() const { return impl_->decode_lengths(); }
int64_t GPTCuda::decode_length() const {
  const std::vector<int64_t> lengths = impl_->decode_lengths();
  for (int64_t n : lengths) {
    FLASHGPT_CHECK(n == lengths.front(), "decode: the cache's sequences hold different lengths ({} and {})",
                   lengths.front(), n);
  }
  return lengths.empty() ? 0 : lengths.front();
}
int64_t GPTCuda::decode_cache_bytes() const { return impl_->decode_cache_bytes(); }
void GPTCuda::set_decode_graphs(bool on) { impl_->decode_graphs = on; }
void GPTCuda::set_split_kv_decode(SplitKv mode) { impl_->split_kv_decode = mode; }
SplitKv GPTCuda::split_kv_decode() const { return impl_->split_kv_decode; }
void GPTCuda::set_flash_decode_kernel(FlashDecodeKernel kernel) { impl_->flash_decode_kernel = kernel; }
FlashDecodeKernel GPTCuda::flash_decode_kernel() const { return impl_->flash_decode_kernel; }
bool GPTCuda::decode_graphs() const { return impl_->decode_graphs; }
int64_t GPTCuda::decode_graph_replays() const { return impl_->graph_replays; }
void GPTCuda::restart_decoding(int64_t b) { impl_->restart_decoding(b); }
void GPTCuda::decode(const int* tokens, int64_t B, int64_t Tn, std::span<float> logits,
                     std::span<const int32_t> counts) {
  impl_->decode(tokens, B, Tn, logits, counts, 0, {});
}
void GPTCuda::decode_top(const int* tokens, int64_t B, int64_t Tn, int k, std::span<int32_t> ids,
                         std::span<float> logits, std::span<const int32_t> counts) {
  FLASHGPT_CHECK(k >= 1, "decode: {} candidates per sequence asked for; at least 1 is needed", k);
  impl_->decode(tokens, B, Tn, logits, counts, k, ids);
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
