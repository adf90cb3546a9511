/// @file safetensors_fuzz.cpp
/// @brief libFuzzer target for the safetensors reader: any byte string must either be rejected with a sdlora::Error
/// or give a file whose every tensor loads without reading outside the input (ASan + UBSan check that).
/// Built only with clang (-fsanitize=fuzzer); see tests/fuzz/CMakeLists.txt.
#include <cstddef>  // std::size_t
#include <cstdint>  // std::uint8_t
#include <string>   // std::string

#include <sdlora/io/safetensors.hpp>  // SafetensorsFile

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  try {
    auto const f = sdlora::io::SafetensorsFile::from_memory(
        std::string(reinterpret_cast<char const*>(data), size), "fuzz-input");
    for (auto const& t : f.tensors()) {
      // Validation guarantees numel * dtype size == the span's bytes <= the input size: loads stay small.
      auto const as_float = f.load<float>(t.key);
      auto const as_double = f.load<double>(t.key, t.shape);
      auto const as_half = f.load<sdlora::half>(t.key);
      if (as_float.numel() != as_double.numel() || as_half.numel() != t.shape.numel()) __builtin_trap();
      if (f.bytes(t.key).size() != t.end - t.begin) __builtin_trap();
    }
    for (auto const& [k, v] : f.metadata())
      if (k.size() + v.size() > size) __builtin_trap();
  } catch (sdlora::Error const&) {
    // rejected with a typed error: fine
  }
  return 0;
}
