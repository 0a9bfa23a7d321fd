// llm.c's GPT-2 model file, read and written tensor by tensor in llm.c's order. Our per-layer
// tensors are the slices of llm.c's stacked ones, with identical row-major layouts.
#include <cstdio>
#include <cstring>

#include "flashgpt/core/error.h"
#include "flashgpt/core/io.h"
#include "flashgpt/model/checkpoint.h"
#include "flashgpt/model/params.h"

namespace flashgpt {

namespace {

// The 16 llm.c tensors as (our name pattern with {} for the layer, per layer?).
struct LlmcTensor {
  const char* name;  // "blocks.{}.x" for per-layer tensors
  bool per_layer;
};
constexpr LlmcTensor kOrder[] = {
    {"wte", false},
    {"wpe", false},
    {"blocks.{}.ln1.weight", true},
    {"blocks.{}.ln1.bias", true},
    {"blocks.{}.attn.qkv.weight", true},
    {"blocks.{}.attn.qkv.bias", true},
    {"blocks.{}.attn.proj.weight", true},
    {"blocks.{}.attn.proj.bias", true},
    {"blocks.{}.ln2.weight", true},
    {"blocks.{}.ln2.bias", true},
    {"blocks.{}.mlp.fc.weight", true},
    {"blocks.{}.mlp.fc.bias", true},
    {"blocks.{}.mlp.proj.weight", true},
    {"blocks.{}.mlp.proj.bias", true},
    {"lnf.weight", false},
    {"lnf.bias", false},
};

void check_gpt2_architecture(const GPTConfig& c) {
  auto need = [](bool ok, const char* field, const char* why) {
    FLASHGPT_CHECK(ok, "cannot use llm.c's model format: config field '{}' {}", field, why);
  };
  need(c.norm == NormKind::LayerNorm, "norm", "must be layernorm");
  need(c.pos == PosKind::Learned, "pos", "must be learned");
  need(c.mlp == MlpKind::Gelu, "mlp", "must be gelu");
  need(c.hidden() == 4 * c.n_embd, "mlp_hidden", "must be 4·n_embd");
  need(!c.post_norm, "post_norm", "must be false");
  need(!c.qk_norm, "qk_norm", "must be false");
  need(c.tie_embeddings, "tie_embeddings", "must be true");
  need(c.bias, "bias", "must be true");
  need(c.kv_heads() == c.n_head, "n_kv_head", "must equal n_head");
  need(c.attention == AttentionKind::Standard || c.attention == AttentionKind::Flash, "attention",
       "must be standard or flash");
}

const ParamSpec& find_spec(const std::vector<ParamSpec>& specs, const std::string& name) {
  for (const ParamSpec& s : specs)
    if (s.name == name) return s;
  fail("internal: no parameter '{}'", name);
}

// Visits the parameter slices in llm.c's file order.
template <typename Fn>
void for_each_llmc_slice(const GPTConfig& c, Fn fn) {
  const std::vector<ParamSpec> specs = param_specs(c);
  for (const LlmcTensor& t : kOrder) {
    if (!t.per_layer) {
      fn(find_spec(specs, t.name));
      continue;
    }
    for (int l = 0; l < c.n_layer; ++l) {
      std::string name = t.name;
      name.replace(name.find("{}"), 2, std::to_string(l));
      fn(find_spec(specs, name));
    }
  }
}

}  // namespace

CheckpointData import_llmc_model(const std::string& path) {
  const uint64_t size = file_size(path);
  FLASHGPT_CHECK(size >= 1024, "{}: truncated llm.c model file ({} bytes)", path, size);
  std::FILE* f = std::fopen(path.c_str(), "rb");
  FLASHGPT_CHECK(f != nullptr, "{}: cannot open: {}", path, std::strerror(errno));
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> closer(f, &std::fclose);
  int32_t h[256];
  FLASHGPT_CHECK(std::fread(h, 4, 256, f) == 256, "{}: cannot read the header", path);
  FLASHGPT_CHECK(h[0] == kLlmcModelMagic, "{}: not an llm.c model file (magic {}, expected {})", path, h[0],
                 kLlmcModelMagic);
  FLASHGPT_CHECK(h[1] == kLlmcModelVersionFp32,
                 "{}: llm.c model version {} is not supported (version 3 is fp32; bf16 files are version 5)", path,
                 h[1]);
  CheckpointData out;
  GPTConfig& c = out.config;
  c.block_size = h[2];
  c.vocab_size = h[3];
  c.n_layer = h[4];
  c.n_head = h[5];
  c.n_embd = h[6];
  try {
    c.validate();
  } catch (const Error& e) {
    fail("{}: header describes an invalid model: {}", path, e.what());
  }
  FLASHGPT_CHECK(h[7] == c.padded_vocab_size(),
                 "{}: padded vocab {} differs from flashgpt's padding of vocab {} to {} (a multiple of {})", path, h[7],
                 c.vocab_size, c.padded_vocab_size(), kVocabPadMultiple);
  const std::vector<ParamSpec> specs = param_specs(c);
  const int64_t total = specs.back().offset + specs.back().numel();
  const uint64_t expected = 1024 + static_cast<uint64_t>(total) * 4;
  FLASHGPT_CHECK(size == expected, "{}: {} bytes, but its header describes {} parameters ({} bytes){}", path, size,
                 total, expected, size < expected ? " (truncated)" : "");
  out.params.resize(static_cast<size_t>(total));
  for_each_llmc_slice(c, [&](const ParamSpec& s) {
    FLASHGPT_CHECK(std::fread(out.params.data() + s.offset, 4, static_cast<size_t>(s.numel()), f) ==
                       static_cast<size_t>(s.numel()),
                   "{}: cannot read tensor '{}'", path, s.name);
  });
  return out;
}

void export_llmc_model(const std::string& path, const GPTConfig& c, std::span<const float> params) {
  check_gpt2_architecture(c);
  int32_t h[256] = {};
  h[0] = kLlmcModelMagic;
  h[1] = kLlmcModelVersionFp32;
  h[2] = c.block_size;
  h[3] = c.vocab_size;
  h[4] = c.n_layer;
  h[5] = c.n_head;
  h[6] = c.n_embd;
  h[7] = c.padded_vocab_size();
  write_file_atomic(path, [&](std::FILE* f) {
    write_all(f, h, sizeof(h), path);
    for_each_llmc_slice(c, [&](const ParamSpec& s) {
      write_all(f, params.data() + s.offset, static_cast<size_t>(s.numel()) * 4, path);
    });
  });
}

}  // namespace flashgpt
