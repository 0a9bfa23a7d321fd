// File helpers shared by every reader and writer: whole-file reads with clear errors, and atomic
// writes (temporary file, fsync, rename) so an interrupted write never replaces a good file.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace flashgpt {

std::string read_text_file(const std::string& path);
std::vector<char> read_binary_file(const std::string& path);
uint64_t file_size(const std::string& path);
bool file_exists(const std::string& path);

// Writes `path` atomically: `write` fills a temporary file beside it (a FILE* opened "wb"), which is
// flushed, fsync'ed and renamed over `path`, then the directory is synced. If anything fails the
// temporary file is removed and the previous `path`, if any, is untouched.
void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& write);
void write_text_file_atomic(const std::string& path, const std::string& text);

// Writes all of `bytes` to `f` or throws naming `path`.
void write_all(std::FILE* f, const void* bytes, size_t n, const std::string& path);

// Expands a glob pattern (or a plain path) to the sorted list of matching files; throws naming the
// pattern when nothing matches.
std::vector<std::string> expand_glob(const std::string& pattern);

}  // namespace flashgpt
