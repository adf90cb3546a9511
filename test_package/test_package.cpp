/// @file test_package.cpp
/// @brief A consumer of the Conan package. It uses each dependency through the installed headers and fails on a wrong
/// result: stb (a PNG written and read back in memory), zlib and nlohmann_json (the CLIP tokenizer reads the gzip'd
/// vocabulary installed in the package's share/sdlora, found through SDLORA_BUNDLED_DATA_DIR), Eigen (the tensors).
#include <sdlora/io/image.hpp>                  // encode_png, decode_image
#include <sdlora/tokenizer/clip_tokenizer.hpp>  // ClipTokenizer, find_bundled_vocab

#include <cmath>     // std::fabs
#include <cstdio>    // std::printf
#include <vector>    // std::vector

int main() {
  using sdlora::Cpu;
  using sdlora::Tensor;
  bool ok = true;

  // A 2 x 3 RGB image with values on the 8-bit grid survives PNG encoding exactly.
  Tensor<float, Cpu> img(sdlora::Shape{3, 2, 3});  // (3, H, W)
  for (sdlora::Index i = 0; i < img.numel(); ++i) img.data()[i] = float((i * 37) % 256) / 255.0f;
  std::string const png = sdlora::io::encode_png(img, sdlora::io::ImageRange::ZeroToOne);
  Tensor<float, Cpu> back = sdlora::io::decode_image(png, "memory.png", sdlora::io::ImageRange::ZeroToOne);
  float max_diff = back.shape() == img.shape() ? 0.0f : 1.0f;
  for (sdlora::Index i = 0; max_diff == 0.0f && i < img.numel(); ++i)
    max_diff = std::fmax(max_diff, std::fabs(back.data()[i] - img.data()[i]));
  std::printf("png round trip: %zu bytes, max difference %g\n", png.size(), double(max_diff));
  ok = ok && max_diff < 1e-6f;

  // The vocabulary shipped in the package, and the ids of transformers' CLIPTokenizer.
  std::printf("vocabulary: %s\n", sdlora::tokenizer::find_bundled_vocab().c_str());
  auto const tokenizer = sdlora::tokenizer::ClipTokenizer::bundled();
  bool const ids_ok = tokenizer.encode("a photo of a cat") == std::vector<int>{49406, 320, 1125, 539, 320, 2368, 49407};
  std::printf("tokenizer: %s\n", ids_ok ? "ids as transformers" : "WRONG ids");
  ok = ok && ids_ok;

  std::printf("sdlora test_package: %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
