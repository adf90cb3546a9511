/// @file image_fuzz.cpp
/// @brief libFuzzer target for images through io::decode_image (JPEG: libjpeg-turbo, PNG: libpng, BMP and the rest:
/// stb_image; stb for all of them when built without the libraries): any bytes are rejected with a sdlora::Error or
/// decode to RGB (3, H, W) within the pixel limit, and decode_image_size reads the same size from the header,
/// without reading outside the input. The limit is 2^14 pixels here (128 x 128, not the default 89 M): a TGA or BMP
/// header of a few bytes can claim any size and stb fills the missing pixels, so an accepted input costs time in
/// proportion to its pixel count. At 2^20 the instrumented per-pixel loops (decoding, conversion to float) took most
/// of the run: 371 executions a second on one core from the seed corpus, against 6.1 k at 2^14 (30 s each, same
/// corpus). The limit check and the paths around it are the same at any limit.
#include <cstddef>  // std::size_t
#include <cstdint>  // std::uint8_t
#include <string>   // std::string

#include <sdlora/io/image.hpp>  // io::decode_image, io::ImageLoadOptions

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  sdlora::io::ImageLoadOptions options;
  options.max_pixels = std::uint64_t(1) << 14;
  try {
    std::string_view const bytes(reinterpret_cast<char const*>(data), size);
    auto const img = sdlora::io::decode_image(bytes, "fuzz-input", options);  // (3, H, W)
    if (img.rank() != 3 || img.dim(0) != 3) __builtin_trap();
    if (std::uint64_t(img.dim(1)) * std::uint64_t(img.dim(2)) > options.max_pixels) __builtin_trap();
    auto const [width, height] = sdlora::io::decode_image_size(bytes, "fuzz-input");
    if (width != img.dim(2) || height != img.dim(1)) __builtin_trap();
    for (float const v : img.span())
      if (!(v >= -1.0f && v <= 1.0f)) __builtin_trap();
  } catch (sdlora::Error const&) {
  }
  return 0;
}
