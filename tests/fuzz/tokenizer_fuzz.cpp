/// @file tokenizer_fuzz.cpp
/// @brief libFuzzer target for the CLIP tokenizer: any bytes (invalid UTF-8 included) give ids in the vocabulary,
/// wrapped in BOS ... EOS, or a sdlora::Error; never a crash or a read out of bounds.
#include <cstddef>      // std::size_t
#include <cstdint>      // std::uint8_t
#include <string_view>  // std::string_view

#include <sdlora/tokenizer/clip_tokenizer.hpp>  // tokenizer::ClipTokenizer

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  static auto const tok = sdlora::tokenizer::ClipTokenizer::bundled();
  try {
    auto const ids = tok.encode(std::string_view(reinterpret_cast<char const*>(data), size));
    if (ids.size() < 2) __builtin_trap();
    for (int id : ids)
      if (id < 0 || std::size_t(id) >= tok.size()) __builtin_trap();
  } catch (sdlora::Error const&) {
  }
  return 0;
}
