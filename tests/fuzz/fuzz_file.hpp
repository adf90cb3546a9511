/// @file fuzz_file.hpp
/// @brief For fuzz targets of readers that take a path: the input bytes as an in-memory file (memfd), reachable as
/// /proc/self/fd/N, rewritten for every input without touching the disk.
#pragma once

#include <sys/mman.h>  // memfd_create
#include <unistd.h>    // ftruncate, pwrite

#include <cstddef>  // std::size_t
#include <cstdint>  // std::uint8_t
#include <string>   // std::string

namespace sdlora::fuzz {

/// The path of an in-memory file holding exactly `data`.
inline std::string as_file(std::uint8_t const* data, std::size_t size) {
  static int const fd = ::memfd_create("sdlora-fuzz", 0);
  if (fd < 0 || ::ftruncate(fd, 0) != 0) __builtin_trap();
  if (size > 0 && ::pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) __builtin_trap();
  return "/proc/self/fd/" + std::to_string(fd);
}

}  // namespace sdlora::fuzz
