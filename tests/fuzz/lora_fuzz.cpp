/// @file lora_fuzz.cpp
/// @brief libFuzzer target for LoRA files (kohya, PEFT / diffusers, LoCon, LyCORIS LoHa / LoKr): any bytes are rejected
/// with a sdlora::Error or read into entries whose factors have consistent shapes, without reading outside the input.
#include <cstddef>  // std::size_t
#include <cstdint>  // std::uint8_t

#include <sdlora/lora/format.hpp>  // lora::read_lora

#include "fuzz_file.hpp"  // fuzz::as_file

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  std::string const path = sdlora::fuzz::as_file(data, size);
  try {
    auto const f = sdlora::lora::read_lora(path);
    for (auto const& e : f.entries) {
      if (e.lycoris) {  // LoHa / LoKr: their own factors (checked against each other by the reader), no down / up
        if (!e.down.empty() || !e.up.empty() || e.rank() < 1) __builtin_trap();
        (void)e.scale(1.0);
        continue;
      }
      if (e.down.rank() < 2 || e.up.rank() < 2) __builtin_trap();
      if (e.up.dim(1) != e.down.dim(0)) __builtin_trap();  // up (out, r) after down (r, in)
      (void)e.scale(1.0);
    }
  } catch (sdlora::Error const&) {
  }
  return 0;
}
