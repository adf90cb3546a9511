/// @file npy_fuzz.cpp
/// @brief libFuzzer target for the .npy reader (QuickDraw bitmaps): any bytes are either rejected with a
/// sdlora::Error or load as a tensor whose size matches the header, without reading outside the input.
#include <cstddef>  // std::size_t
#include <cstdint>  // std::uint8_t

#include <sdlora/io/npy.hpp>  // io::NpyFile

#include "fuzz_file.hpp"  // fuzz::as_file

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  try {
    sdlora::io::NpyFile const f(sdlora::fuzz::as_file(data, size));
    auto const t = f.load<float>();
    if (std::size_t(t.numel()) > size) __builtin_trap();  // every element comes from at least one input byte
    auto const u = f.load<std::uint8_t>();
    if (u.numel() != t.numel()) __builtin_trap();
  } catch (sdlora::Error const&) {
  }
  return 0;
}
