/// @file stb_reference.cpp
/// @brief The decoder sdlora used before libjpeg / libpng: the system stb_image with all its formats, in a
/// translation unit of its own (image.hpp compiles stb without JPEG and PNG when the libraries are found, and a
/// second stb implementation cannot share a translation unit with it). Used only on the committed, well-formed
/// fixtures: stb_image 2.27 is not safe on crafted JPEGs (docs/security.md).
#include <string>       // std::string
#include <string_view>  // std::string_view
#include <vector>       // std::vector

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wunused-variable"
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#if __has_include(<stb_image.h>)
#include <stb_image.h>
#else
#include <stb/stb_image.h>
#endif
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace sdlora::test {

/// stb_image's RGB (H, W, 3) pixels of `bytes` and true, or false when stb cannot decode it.
bool stb_reference_decode(std::string_view bytes, std::vector<unsigned char>& rgb, int& width, int& height) {
  int channels = 0;
  unsigned char* p = stbi_load_from_memory(reinterpret_cast<unsigned char const*>(bytes.data()), int(bytes.size()),
                                           &width, &height, &channels, 3);
  if (!p) return false;
  rgb.assign(p, p + std::size_t(width) * std::size_t(height) * 3);
  stbi_image_free(p);
  return true;
}

}  // namespace sdlora::test
