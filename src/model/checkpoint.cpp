#include "flashgpt/model/checkpoint.h"

#include <zlib.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>

#include "flashgpt/core/error.h"
#include "flashgpt/core/io.h"
#include "flashgpt/model/params.h"

namespace flashgpt {

namespace {

constexpr char kFormat[] = "flashgpt";
constexpr int kFormatVersion = 1;
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

uint32_t crc32_of(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const Bytef*>(data);
  while (n > 0) {  // zlib takes uInt lengths
    const uInt chunk = static_cast<uInt>(std::min<size_t>(n, 1u << 30));
    crc = static_cast<uint32_t>(::crc32(crc, p, chunk));
    p += chunk;
    n -= chunk;
  }
  return crc;
}

struct Entry {
  std::string name;
  std::vector<int64_t> shape;
  const float* data;
  int64_t numel;
};

}  // namespace

void save_checkpoint(const std::string& path, const CheckpointRef& ckpt) {
  const std::vector<ParamSpec> specs = param_specs(ckpt.config);
  const int64_t total = specs.empty() ? 0 : specs.back().offset + specs.back().numel();
  FLASHGPT_CHECK(static_cast<int64_t>(ckpt.params.size()) == total, "{}: {} parameters given, the config has {}", path,
                 ckpt.params.size(), total);
  const bool with_opt = !ckpt.adam_m.empty();
  FLASHGPT_CHECK(!with_opt || (ckpt.adam_m.size() == ckpt.params.size() && ckpt.adam_v.size() == ckpt.params.size()),
                 "{}: optimizer state does not match the parameters", path);
  std::vector<Entry> entries;
  for (const ParamSpec& s : specs) {
    const float* p = ckpt.params.data() + s.offset;
    for (int64_t i = 0; i < s.numel(); ++i) {
      FLASHGPT_CHECK(std::isfinite(p[i]), "{}: not saved: tensor '{}' holds a non-finite value at index {}", path,
                     s.name, i);
    }
    entries.push_back({s.name, s.shape, p, s.numel()});
  }
  if (with_opt) {
    for (const ParamSpec& s : specs) entries.push_back({"optimizer.m." + s.name, s.shape, ckpt.adam_m.data() + s.offset, s.numel()});
    for (const ParamSpec& s : specs) entries.push_back({"optimizer.v." + s.name, s.shape, ckpt.adam_v.data() + s.offset, s.numel()});
  }
  uint32_t crc = static_cast<uint32_t>(::crc32(0L, Z_NULL, 0));
  for (const Entry& e : entries) crc = crc32_of(e.data, static_cast<size_t>(e.numel) * sizeof(float), crc);

  nlohmann::ordered_json header;
  header["__metadata__"] = {
      {"format", kFormat},
      {"format_version", std::to_string(kFormatVersion)},
      {"config", ckpt.config.to_json().dump()},
      {"train_state", ckpt.train_state.is_null() ? "null" : ckpt.train_state.dump()},
      {"tokenizer", ckpt.tokenizer.is_null() ? "null" : ckpt.tokenizer.dump()},
      {"data_crc32", std::to_string(crc)},
  };
  int64_t offset = 0;
  for (const Entry& e : entries) {
    const int64_t bytes = e.numel * static_cast<int64_t>(sizeof(float));
    header[e.name] = {{"dtype", "F32"}, {"shape", e.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  while (text.size() % 8 != 0) text += ' ';  // keeps the data 8-byte aligned
  const uint64_t header_len = text.size();
  write_file_atomic(path, [&](std::FILE* f) {
    write_all(f, &header_len, sizeof(header_len), path);
    write_all(f, text.data(), text.size(), path);
    for (const Entry& e : entries) write_all(f, e.data, static_cast<size_t>(e.numel) * sizeof(float), path);
  });
}

CheckpointData load_checkpoint(const std::string& path, bool with_optimizer) {
  const uint64_t size = file_size(path);
  FLASHGPT_CHECK(size >= 8, "{}: truncated checkpoint ({} bytes)", path, size);
  std::FILE* f = std::fopen(path.c_str(), "rb");
  FLASHGPT_CHECK(f != nullptr, "{}: cannot open: {}", path, std::strerror(errno));
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> closer(f, &std::fclose);
  uint64_t header_len = 0;
  FLASHGPT_CHECK(std::fread(&header_len, 8, 1, f) == 1, "{}: cannot read the header length", path);
  FLASHGPT_CHECK(header_len <= kMaxHeaderBytes && 8 + header_len <= size,
                 "{}: not a safetensors checkpoint or truncated (header length {} with file size {})", path,
                 header_len, size);
  std::string text(header_len, '\0');
  FLASHGPT_CHECK(std::fread(text.data(), 1, header_len, f) == header_len, "{}: cannot read the header", path);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception&) {
    fail("{}: not a safetensors checkpoint (its header is not JSON) or corrupted", path);
  }
  FLASHGPT_CHECK(header.is_object() && header.contains("__metadata__") && header["__metadata__"].is_object(),
                 "{}: a safetensors file without flashgpt metadata; is it a flashgpt checkpoint?", path);
  const nlohmann::json& meta = header["__metadata__"];
  auto meta_string = [&](const char* key) -> std::string {
    FLASHGPT_CHECK(meta.contains(key) && meta[key].is_string(), "{}: checkpoint metadata has no '{}'", path, key);
    return meta[key].get<std::string>();
  };
  FLASHGPT_CHECK(meta.value("format", "") == kFormat, "{}: not a flashgpt checkpoint (metadata format is '{}')", path,
                 meta.value("format", ""));
  FLASHGPT_CHECK(meta_string("format_version") == std::to_string(kFormatVersion),
                 "{}: checkpoint format version {} is not supported (this build reads version {})", path,
                 meta_string("format_version"), kFormatVersion);
  CheckpointData out;
  auto parse_meta_json = [&](const char* key) {
    try {
      return nlohmann::json::parse(meta_string(key));
    } catch (const nlohmann::json::exception&) {
      fail("{}: checkpoint metadata '{}' is not valid JSON", path, key);
    }
  };
  out.config.update_from_json(parse_meta_json("config"), path + " (config)");
  out.config.validate();
  out.train_state = parse_meta_json("train_state");
  out.tokenizer = parse_meta_json("tokenizer");

  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = size - data_start;
  const std::vector<ParamSpec> specs = param_specs(out.config);
  const int64_t total = specs.empty() ? 0 : specs.back().offset + specs.back().numel();
  uint64_t data_end = 0;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    FLASHGPT_CHECK(info.is_object() && info.contains("data_offsets") && info["data_offsets"].size() == 2,
                   "{}: tensor '{}' has no data_offsets", path, name);
    data_end = std::max<uint64_t>(data_end, info["data_offsets"][1].get<uint64_t>());
  }
  FLASHGPT_CHECK(data_end <= data_size, "{}: truncated checkpoint (data ends at byte {} of {} expected)", path,
                 data_size + data_start, data_end + data_start);
  FLASHGPT_CHECK(data_end == data_size, "{}: {} unexpected bytes after the last tensor", path, data_size - data_end);

  auto read_tensor = [&](const std::string& name, const ParamSpec& s, float* dst) {
    FLASHGPT_CHECK(header.contains(name), "{}: tensor '{}' is missing (does the checkpoint match this config?)", path,
                   name);
    const auto& info = header[name];
    FLASHGPT_CHECK(info.value("dtype", "") == "F32", "{}: tensor '{}' has dtype {}, expected F32", path, name,
                   info.value("dtype", "?"));
    std::vector<int64_t> shape = info.at("shape").get<std::vector<int64_t>>();
    FLASHGPT_CHECK(shape == s.shape, "{}: tensor '{}' has shape {}, the config expects {}", path, name,
                   nlohmann::json(shape).dump(), nlohmann::json(s.shape).dump());
    const uint64_t begin = info["data_offsets"][0].get<uint64_t>(), end = info["data_offsets"][1].get<uint64_t>();
    FLASHGPT_CHECK(end >= begin && end - begin == static_cast<uint64_t>(s.numel()) * 4,
                   "{}: tensor '{}' has data_offsets [{}, {}] for {} elements", path, name, begin, end, s.numel());
    std::fseek(f, static_cast<long>(data_start + begin), SEEK_SET);
    FLASHGPT_CHECK(std::fread(dst, 4, static_cast<size_t>(s.numel()), f) == static_cast<size_t>(s.numel()),
                   "{}: cannot read tensor '{}'", path, name);
  };
  out.params.resize(static_cast<size_t>(total));
  for (const ParamSpec& s : specs) read_tensor(s.name, s, out.params.data() + s.offset);
  const bool has_opt = header.contains("optimizer.m." + specs.front().name);
  if (has_opt) {
    out.adam_m.resize(static_cast<size_t>(total));
    out.adam_v.resize(static_cast<size_t>(total));
    for (const ParamSpec& s : specs) read_tensor("optimizer.m." + s.name, s, out.adam_m.data() + s.offset);
    for (const ParamSpec& s : specs) read_tensor("optimizer.v." + s.name, s, out.adam_v.data() + s.offset);
  }
  // The checksum covers the tensors in file order: params, then the optimizer moments.
  uint32_t crc = static_cast<uint32_t>(::crc32(0L, Z_NULL, 0));
  crc = crc32_of(out.params.data(), out.params.size() * 4, crc);
  if (has_opt) {
    crc = crc32_of(out.adam_m.data(), out.adam_m.size() * 4, crc);
    crc = crc32_of(out.adam_v.data(), out.adam_v.size() * 4, crc);
  }
  FLASHGPT_CHECK(meta_string("data_crc32") == std::to_string(crc),
                 "{}: checksum mismatch: the checkpoint's data is corrupted", path);
  if (!with_optimizer) {
    out.adam_m.clear();
    out.adam_v.clear();
  }
  return out;
}

}  // namespace flashgpt
