#include "flashgpt/core/io.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "flashgpt/core/error.h"

namespace flashgpt {

namespace {

struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f) std::fclose(f);
  }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

FilePtr open_or_throw(const std::string& path, const char* mode) {
  std::FILE* f = std::fopen(path.c_str(), mode);
  if (!f) fail("{}: cannot open: {}", path, std::strerror(errno));
  return FilePtr(f);
}

}  // namespace

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

uint64_t file_size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail("{}: cannot open: {}", path, std::strerror(errno));
  if (S_ISDIR(st.st_mode)) fail("{}: is a directory, expected a file", path);
  return static_cast<uint64_t>(st.st_size);
}

std::vector<char> read_binary_file(const std::string& path) {
  uint64_t n = file_size(path);
  FilePtr f = open_or_throw(path, "rb");
  std::vector<char> data(n);
  if (n > 0 && std::fread(data.data(), 1, n, f.get()) != n) fail("{}: read failed", path);
  return data;
}

std::string read_text_file(const std::string& path) {
  std::vector<char> data = read_binary_file(path);
  return std::string(data.begin(), data.end());
}

void write_all(std::FILE* f, const void* bytes, size_t n, const std::string& path) {
  if (n > 0 && std::fwrite(bytes, 1, n, f) != n) {
    fail("{}: write failed: {}", path, std::strerror(errno));
  }
}

void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& write) {
  namespace fs = std::filesystem;
  fs::path target(path);
  fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  if (!fs::exists(dir)) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) fail("{}: cannot create directory: {}", dir.string(), ec.message());
  }
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  try {
    FilePtr f = open_or_throw(tmp, "wb");
    write(f.get());
    if (std::fflush(f.get()) != 0) fail("{}: write failed: {}", tmp, std::strerror(errno));
    if (::fsync(::fileno(f.get())) != 0) fail("{}: fsync failed: {}", tmp, std::strerror(errno));
    std::FILE* raw = f.release();
    if (std::fclose(raw) != 0) fail("{}: close failed: {}", tmp, std::strerror(errno));
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      fail("{}: cannot replace with {}: {}", path, tmp, std::strerror(errno));
    }
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void write_text_file_atomic(const std::string& path, const std::string& text) {
  write_file_atomic(path, [&](std::FILE* f) { write_all(f, text.data(), text.size(), path); });
}

std::vector<std::string> expand_glob(const std::string& pattern) {
  glob_t g{};
  int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
  std::vector<std::string> out;
  if (rc == 0) {
    for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
  }
  ::globfree(&g);
  if (out.empty()) fail("{}: no such file (nothing matches this path or pattern)", pattern);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace flashgpt
