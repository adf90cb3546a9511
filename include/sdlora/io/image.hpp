/// @file image.hpp
/// @brief Images as float tensors (3, H, W): loading (JPEG through libjpeg-turbo, PNG through libpng, BMP, TGA and GIF
/// through stb_image), saving PNG with tEXt/iTXt text chunks, reading those chunks back, resizing
/// (stb_image_resize), crops, flips and grids. Include <sdlora/sdlora.hpp> instead.
///
/// Decoders: JPEG and PNG, the images that come from strangers, go through the OSS-Fuzz-hardened system libraries
/// when the build found them (SDLORA_WITH_LIBJPEG / SDLORA_WITH_LIBPNG, set by CMake on the sdlora target; see
/// image_codecs.hpp), and stb_image's JPEG / PNG decoders are then not compiled at all: Debian 12's stb_image 2.27
/// reads and writes outside its Huffman tables on crafted JPEGs (docs/security.md). Without the libraries stb_image
/// decodes them, behind a check of the JPEG Huffman tables. BMP, TGA and GIF always go through stb; its PNM, PSD, PIC
/// and HDR decoders are not compiled (see below).
///
/// stb is compiled into every translation unit that includes this header, with internal linkage (STB_*_STATIC inside
/// an anonymous namespace), so a program needs no STB_*_IMPLEMENTATION file of its own and links no stb symbol.
/// After this header, <stb_image.h> can still be included for a program's own (global) stb.
///
/// Conventions, chosen to match diffusers' training scripts and pipelines:
/// - load_image converts like PIL's `image.convert("RGB")`: grey is replicated, alpha is dropped (not composited).
///   16-bit PNGs are reduced to 8 bits (v >> 8). EXIF orientation is not applied (diffusers' DreamBooth script
///   calls exif_transpose; rotate such images beforehand). With libjpeg, JPEG pixels are those of PIL (the same
///   accurate integer IDCT and fancy upsampling); stb's JPEG decoder (the fallback) can differ from them by a few
///   levels. PNG/BMP are exact either way.
/// - from_uint8 computes `u / 255.f` (torchvision ToTensor) and then `(v - 0.5f) / 0.5f` (Normalize([0.5], [0.5]))
///   for ImageRange::MinusOneToOne, in float, so it is bit-identical to the torchvision transform.
/// - to_uint8 computes `clamp(x / 2 + 0.5, 0, 1)` (VaeImageProcessor.denormalize) then `round(v * 255)` with ties to
///   even (numpy's round in numpy_to_pil), in float.
/// - resize uses stb_image_resize with clamped edges on each channel: Filter::Bilinear is stb's triangle filter,
///   Filter::Bicubic Catmull-Rom (the a = -0.5 cubic of PIL's BICUBIC), Filter::Area a box. When shrinking, the
///   filter is widened by the scale (antialiasing), as PIL and torchvision's antialias=True do; pixels near the
///   border differ from PIL, which renormalises truncated weights instead of clamping. torchvision's Resize on PIL
///   images (the training scripts' default) is bilinear with antialias.
/// - center_crop rounds the offsets like torchvision (round half to even of (H - h) / 2).
#pragma once

#include <algorithm>    // std::clamp, std::min
#include <array>        // std::array
#include <atomic>       // std::atomic
#include <cerrno>       // errno
#include <cmath>        // std::nearbyint, std::isnan
#include <cstdint>      // std::uint8_t, std::uint32_t, std::uint64_t
#include <cstdlib>      // std::free
#include <cstring>      // std::memcpy, std::strerror
#include <fstream>      // std::ifstream, std::ofstream
#include <iterator>     // std::istreambuf_iterator
#include <memory>       // std::unique_ptr
#include <sstream>      // std::ostringstream
#include <string>       // std::string
#include <string_view>  // std::string_view
#include <utility>      // std::pair
#include <vector>       // std::vector

#include <sdlora/core/error.hpp>       // IoError, FormatError, ConfigError, SDLORA_EXPECTS
#include <sdlora/core/tensor.hpp>      // Tensor, TensorView
#include <sdlora/io/image_codecs.hpp>  // detail::jpeg_decode, detail::png_decode (with the libraries)

// The C headers stb includes, included here at global scope so that stb's own #includes inside the namespace below
// are no-ops (libstdc++'s <math.h> and <stdlib.h> wrappers add using-declarations that belong in the global scope).
#include <assert.h>  // NOLINT: assert, for stb
#include <limits.h>  // NOLINT: INT_MAX, for stb
#include <math.h>    // NOLINT: pow, ldexp, for stb
#include <stdarg.h>  // NOLINT: va_list, for stb
#include <stddef.h>  // NOLINT: ptrdiff_t, for stb
#include <stdint.h>  // NOLINT: uint32_t, for stb
#include <stdio.h>   // NOLINT: FILE, for stb
#include <stdlib.h>  // NOLINT: malloc, free, for stb
#include <string.h>  // NOLINT: memcpy, for stb
#if defined(__SSE2__)
#include <emmintrin.h>  // __m128i, for stb_image's SIMD JPEG path
#endif

namespace sdlora::io::detail::stb {
namespace {
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-variable"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#endif
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
// The formats a dataset or sdlora-eval picks up (train/dataset.hpp, sdlora-eval: .png .jpg .jpeg .bmp .tga .gif)
// and nothing else: stb_image 2.27's PNM decoder reads past its buffer on a 16-bit PGM (image_fuzz), and its PSD,
// PIC and HDR decoders, which no training set needs, are left out with it (less 2022 decoder facing strangers' files).
#define STBI_NO_PNM
#define STBI_NO_PSD
#define STBI_NO_PIC
#define STBI_NO_HDR
#if defined(SDLORA_WITH_LIBJPEG)
#define STBI_NO_JPEG  // libjpeg decodes JPEG (image_codecs.hpp)
#endif
#if defined(SDLORA_WITH_LIBPNG)
#define STBI_NO_PNG        // libpng decodes PNG (image_codecs.hpp)
#define STBI_SUPPORT_ZLIB  // stbi_zlib_decode_malloc still inflates PNG text chunks
#endif
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_RESIZE_STATIC
#define STB_IMAGE_RESIZE_IMPLEMENTATION
#if __has_include(<stb_image.h>)
#include <stb_image.h>         // stbi_load_from_memory, stbi_zlib_decode_malloc
#include <stb_image_resize.h>  // stbir_resize_float_generic
#include <stb_image_write.h>   // stbi_write_png_to_mem
#else  // Debian's libstb-dev without its include directory on the path
#include <stb/stb_image.h>
#include <stb/stb_image_resize.h>
#include <stb/stb_image_write.h>
#endif
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
}  // namespace
}  // namespace sdlora::io::detail::stb

// Let a later #include <stb_image.h> in the same file declare the program's own global, external stb again.
#undef STB_IMAGE_STATIC
#undef STB_IMAGE_IMPLEMENTATION
#undef STB_IMAGE_WRITE_STATIC
#undef STB_IMAGE_WRITE_IMPLEMENTATION
#undef STB_IMAGE_RESIZE_STATIC
#undef STB_IMAGE_RESIZE_IMPLEMENTATION
#undef STBI_NO_JPEG
#undef STBI_NO_PNM
#undef STBI_NO_PSD
#undef STBI_NO_PIC
#undef STBI_NO_HDR
#undef STBI_NO_PNG
#undef STBI_SUPPORT_ZLIB
#undef STBI_NO_ZLIB
#undef STBI_INCLUDE_STB_IMAGE_H
#undef INCLUDE_STB_IMAGE_WRITE_H
#undef STBIR_INCLUDE_STB_IMAGE_RESIZE_H
#undef STBIDEF
#undef STBIWDEF
#undef STBIRDEF

namespace sdlora::io {

/// The value range of image tensors: diffusers' VAE works in [-1, 1]; [0, 1] is torchvision's ToTensor.
enum class ImageRange { MinusOneToOne, ZeroToOne };

/// Resampling filters for resize (see the file comment for how they compare with PIL/torchvision).
enum class Filter { Bilinear, Bicubic, Area };

/// PNG text chunks: (keyword, text) pairs in file order.
using PngText = std::vector<std::pair<std::string, std::string>>;

namespace detail {

/// The CRC-32 of PNG chunks (ISO 3309, reflected polynomial 0xEDB88320), continuing from `crc`.
inline std::uint32_t crc32(unsigned char const* p, std::size_t n, std::uint32_t crc = 0) {
  static constexpr std::array<std::uint32_t, 256> kTable = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (std::size_t i = 0; i < n; ++i) crc = kTable[(crc ^ p[i]) & 0xffu] ^ (crc >> 8);
  return ~crc;
}

inline std::string read_file_bytes(std::string const& path, char const* op) {
  std::ifstream in(path, std::ios::binary);
  if (!in) SDLORA_THROW(IoError, op << " cannot open " << path << ": " << std::strerror(errno));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) SDLORA_THROW(IoError, op << " cannot read " << path << ": " << std::strerror(errno));
  return bytes;
}

inline void write_file_bytes(std::string const& path, std::string_view bytes, char const* op) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) SDLORA_THROW(IoError, op << " cannot write " << path << ": " << std::strerror(errno));
  out.write(bytes.data(), std::streamsize(bytes.size()));
  out.flush();
  if (!out) SDLORA_THROW(IoError, op << " write to " << path << " failed: " << std::strerror(errno));
}

inline void check_image(TensorView<float const, Cpu> const& img, char const* op) {
  SDLORA_EXPECTS(img.rank() == 3 && img.dim(0) >= 1 && img.dim(0) <= 4,
                 op << " image must be (C, H, W) with C in 1..4, got " << img.shape());
}

inline void put_u32(std::string& s, std::uint32_t v) {
  for (int i = 3; i >= 0; --i) s += char((v >> (8 * i)) & 0xffu);
}
inline std::uint32_t get_u32(unsigned char const* p) {
  return std::uint32_t(p[0]) << 24 | std::uint32_t(p[1]) << 16 | std::uint32_t(p[2]) << 8 | std::uint32_t(p[3]);
}

/// One PNG chunk: length, type, data, CRC over type and data.
inline std::string png_chunk(char const (&type)[5], std::string const& data) {
  std::string chunk;
  put_u32(chunk, std::uint32_t(data.size()));
  chunk.append(type, 4);
  chunk += data;
  put_u32(chunk, crc32(reinterpret_cast<unsigned char const*>(chunk.data()) + 4, 4 + data.size()));
  return chunk;
}

/// Latin-1 bytes (tEXt, zTXt) as UTF-8.
inline std::string latin1_to_utf8(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x80) {
      out += char(c);
    } else {
      out += char(0xC0 | (c >> 6));
      out += char(0x80 | (c & 0x3F));
    }
  }
  return out;
}

/// zlib-inflates `data` (zTXt, compressed iTXt) with stb's decoder.
inline std::string inflate(std::string_view data, std::string const& path) {
  int size = 0;
  char* out = stb::stbi_zlib_decode_malloc(data.data(), int(data.size()), &size);
  if (!out) SDLORA_THROW(FormatError, "[read_png_text] " << path << ": corrupt compressed text chunk");
  std::string s(out, std::size_t(size));
  stb::stbi_image_free(out);  // STBI_FREE
  return s;
}

}  // namespace detail

/// Float (C, H, W) to interleaved 8-bit (H, W, C): clamp to the range, scale to 0..255, round half to even.
inline Tensor<std::uint8_t, Cpu> to_uint8(TensorView<float const, Cpu> img,
                                          ImageRange range = ImageRange::MinusOneToOne) {
  detail::check_image(img, "[to_uint8]");
  Index const c = img.dim(0), h = img.dim(1), w = img.dim(2);
  Tensor<std::uint8_t, Cpu> out(Shape{h, w, c});  // (H, W, C)
  for (Index k = 0; k < c; ++k)
    for (Index y = 0; y < h; ++y)
      for (Index x = 0; x < w; ++x) {
        float v = img.data()[k * img.stride(0) + y * img.stride(1) + x * img.stride(2)];
        if (range == ImageRange::MinusOneToOne) v = v / 2.0f + 0.5f;
        v = std::isnan(v) ? 0.0f : std::clamp(v, 0.0f, 1.0f);
        out((y * w + x) * c + k) = static_cast<std::uint8_t>(std::nearbyint(v * 255.0f));
      }
  return out;
}

/// Interleaved 8-bit (H, W, C) to float (C, H, W) in `range`, exactly as torchvision's ToTensor (+ Normalize).
inline Tensor<float, Cpu> from_uint8(TensorView<std::uint8_t const, Cpu> pixels,
                                     ImageRange range = ImageRange::MinusOneToOne) {
  SDLORA_EXPECTS(pixels.rank() == 3 && pixels.is_contiguous(),
                 "[from_uint8] pixels must be contiguous (H, W, C), got " << pixels.shape());
  Index const h = pixels.dim(0), w = pixels.dim(1), c = pixels.dim(2);
  auto out = Tensor<float, Cpu>::uninitialized(Shape{c, h, w});  // (C, H, W)
  for (Index y = 0; y < h; ++y)
    for (Index x = 0; x < w; ++x)
      for (Index k = 0; k < c; ++k) {
        float v = float(pixels.data()[(y * w + x) * c + k]) / 255.0f;
        if (range == ImageRange::MinusOneToOne) v = (v - 0.5f) / 0.5f;
        out((k * h + y) * w + x) = v;
      }
  return out;
}

namespace detail {
/// The reason stb_image must not see `bytes`, or "" when it may (only stb's JPEG decoder needs it: without libjpeg).
/// stb_image 2.27 (the libstb-dev snapshot of Debian
/// 12) trusts the 16 code counts of a JPEG DHT segment: counts adding up to more than 256 write up to about 4 KB past
/// its Huffman tables, inside the decoder's heap-allocated state (image_fuzz found it; newer stb_image refuses such a
/// segment). This walks the marker segments as stb does (fill bytes, byte-wise resynchronisation, lengths,
/// entropy-coded data up to the next marker) and checks every table stb would build, before stbi_info or stbi_load.
inline std::string jpeg_refusal(std::string_view bytes) {
  auto const u = [&](std::size_t i) -> std::size_t {  // stb reads 0 past the end
    return i < bytes.size() ? static_cast<unsigned char>(bytes[i]) : 0;
  };
  std::size_t pos = 1;  // stb takes any number of 0xFF fill bytes before SOI: FF FF D8 is a JPEG too
  while (pos < bytes.size() && u(pos) == 0xFF) ++pos;
  if (u(0) != 0xFF || u(pos) != 0xD8) return "";
  ++pos;
  while (pos < bytes.size()) {
    if (u(pos) != 0xFF) {  // not at a marker: stb skips byte by byte (and so through entropy-coded data)
      ++pos;
      continue;
    }
    while (pos < bytes.size() && u(pos) == 0xFF) ++pos;  // fill bytes
    if (pos >= bytes.size()) break;
    std::size_t const m = u(pos++);
    if (m == 0x00 || m == 0x01 || m == 0xD8 || (m >= 0xD0 && m <= 0xD7)) continue;  // stuffed 0xFF, TEM, SOI, RSTn
    if (m == 0xD9) break;                                                          // EOI
    std::size_t const len = u(pos) << 8 | u(pos + 1);
    if (m == 0xC4) {  // DHT: tables of (class/id, 16 counts, values) while stb's length has bytes left
      for (std::size_t p = pos + 2; p < pos + len && p < bytes.size();) {
        std::size_t n = 0;
        for (std::size_t i = 1; i <= 16; ++i) n += u(p + i);
        if (n > 256)
          return "corrupt JPEG (a Huffman table of " + std::to_string(n) + " codes at byte " + std::to_string(p) +
                 "; at most 256)";
        p += 17 + n;
      }
    }
    pos += len;
  }
  return "";
}
}  // namespace detail

/// Pillow's `Image.MAX_IMAGE_PIXELS` (1024 * 1024 * 1024 // 4 // 3), the limit diffusers' users get: the default
/// pixel limit of load_image / decode_image. Pillow warns above it and refuses twice as many; sdlora refuses above it.
inline constexpr std::uint64_t kDefaultMaxImagePixels = 89'478'485;

namespace detail {
inline std::atomic<std::uint64_t>& max_image_pixels_default() {
  static std::atomic<std::uint64_t> limit{kDefaultMaxImagePixels};
  return limit;
}
}  // namespace detail

/// The process-wide default of ImageLoadOptions::max_pixels, like Pillow's module-level `Image.MAX_IMAGE_PIXELS`:
/// the programs' `--max-image-pixels` sets it once, so that every image their libraries load (datasets, evaluation
/// encoders) obeys it. 0 means no limit.
inline void set_max_image_pixels(std::uint64_t limit) { detail::max_image_pixels_default().store(limit); }
inline std::uint64_t max_image_pixels() { return detail::max_image_pixels_default().load(); }

/// How load_image / decode_image read a file.
struct ImageLoadOptions {
  ImageRange range = ImageRange::MinusOneToOne;
  /// Width x height above which the file is refused from its header, before anything is decoded (a small PNG can
  /// claim 30000 x 30000 pixels, 2.7 GB of RGB); 0 means no limit.
  std::uint64_t max_pixels = max_image_pixels();
};

namespace detail {

/// Which decoder reads `bytes`: libjpeg for what stb_image would take for a JPEG (0xFF fill bytes, then SOI: libjpeg
/// refuses fill bytes, so such a file is an error rather than a trip into stb), libpng for the PNG signature, stb
/// for the rest (and for everything without the libraries).
enum class Decoder { LibJpeg, LibPng, Stb };

inline Decoder decoder_for([[maybe_unused]] std::string_view bytes) {
#if defined(SDLORA_WITH_LIBPNG)
  if (bytes.substr(0, 8) == std::string_view("\x89PNG\r\n\x1a\n", 8)) return Decoder::LibPng;
#endif
#if defined(SDLORA_WITH_LIBJPEG)
  std::size_t pos = 0;
  while (pos < bytes.size() && bytes[pos] == '\xFF') ++pos;
  if (pos > 0 && pos < bytes.size() && bytes[pos] == '\xD8') return Decoder::LibJpeg;
#endif
  return Decoder::Stb;
}

/// Runs libjpeg / libpng on `bytes` (see image_codecs.hpp); `why` is set to the reason of a failure.
inline DecodedImage decode_with_library([[maybe_unused]] Decoder decoder, std::string_view bytes,
                                        [[maybe_unused]] std::uint64_t max_pixels, [[maybe_unused]] bool header_only,
                                        std::string& why) {
  DecodedImage out{};
  [[maybe_unused]] auto const* data = reinterpret_cast<unsigned char const*>(bytes.data());
  char const* format = "";
#if defined(SDLORA_WITH_LIBJPEG)
  if (decoder == Decoder::LibJpeg) {
    format = "JPEG";
    jpeg_decode(data, bytes.size(), max_pixels, header_only, &out);
  }
#endif
#if defined(SDLORA_WITH_LIBPNG)
  if (decoder == Decoder::LibPng) {
    format = "PNG";
    png_decode(data, bytes.size(), max_pixels, header_only, &out);
  }
#endif
  if (out.message[0] != '\0') why = std::string("corrupt ") + format + " (" + out.message + ")";
  return out;
}

/// A width or height from stbi_info: its magnitude. stb reports a top-down BMP's height as stored, negative (and
/// decodes |h| rows): taken as 0 it let a BMP claiming 10000 x -10000 pixels past the pixel limit (image_fuzz).
inline std::uint64_t stb_extent(int v) { return v < 0 ? std::uint64_t(-std::int64_t(v)) : std::uint64_t(v); }

/// The reason for refusing an image of no pixels: stb decodes a BMP of width 0 and 16 million rows row by row (a
/// 58-byte file took 14 s under the fuzzer) and it has nothing to train on.
inline std::string empty_image(std::uint64_t w, std::uint64_t h) {
  return "empty image (" + std::to_string(w) + " x " + std::to_string(h) + " pixels)";
}

/// Width and height from the header of an image held in memory (nothing decoded), or the reason no decoder can
/// read it ("" when it can).
inline std::string image_size(std::string_view bytes, std::uint64_t& width, std::uint64_t& height) {
  if (bytes.size() > std::size_t(INT_MAX)) return "file larger than 2 GB";
  std::string why;
  if (Decoder const d = decoder_for(bytes); d != Decoder::Stb) {
    DecodedImage const info = decode_with_library(d, bytes, 0, /*header_only=*/true, why);
    width = info.width;
    height = info.height;
    return why;
  }
  if (why = jpeg_refusal(bytes); !why.empty()) return why;
  int w = 0, h = 0, channels = 0;
  if (!stb::stbi_info_from_memory(reinterpret_cast<unsigned char const*>(bytes.data()), int(bytes.size()), &w, &h,
                                  &channels))
    return stb::stbi_failure_reason();
  width = stb_extent(w);
  height = stb_extent(h);
  if (width == 0 || height == 0) return empty_image(width, height);
  return "";
}

inline void check_pixel_limit(std::string const& name, std::uint64_t w, std::uint64_t h, std::uint64_t limit) {
  if (limit != 0 && w * h > limit)
    SDLORA_THROW(IoError, "[load_image] " << name << " is " << w << " x " << h << " = " << w * h
                                          << " pixels, over the limit of " << limit
                                          << " (--max-image-pixels raises it)");
}

}  // namespace detail

/// Width and height of an image held in memory, from its header alone (nothing is decoded); `name` stands for the
/// path in messages. IoError naming the file when no decoder can read the header.
inline std::pair<Index, Index> decode_image_size(std::string_view bytes, std::string const& name) {
  std::uint64_t w = 0, h = 0;
  if (std::string const why = detail::image_size(bytes, w, h); !why.empty())
    SDLORA_THROW(IoError, "[load_image] cannot read " << name << ": " << why);
  return {Index(w), Index(h)};
}

/// Decodes an image file held in memory to RGB (3, H, W); `name` stands for the path in messages. The header is
/// read first: an image of more than `options.max_pixels` pixels is an IoError naming the file and its size, and
/// nothing is allocated for it or decoded. A file no decoder can read is an IoError naming it and the reason.
inline Tensor<float, Cpu> decode_image(std::string_view bytes, std::string const& name,
                                       ImageLoadOptions const& options) {
  if (bytes.size() > std::size_t(INT_MAX))
    SDLORA_THROW(IoError, "[load_image] cannot read " << name << ": file larger than 2 GB");
  if (detail::Decoder const d = detail::decoder_for(bytes); d != detail::Decoder::Stb) {
    std::string why;
    detail::DecodedImage const img = detail::decode_with_library(d, bytes, options.max_pixels, false, why);
    if (!why.empty()) SDLORA_THROW(IoError, "[load_image] cannot read " << name << ": " << why);
    detail::check_pixel_limit(name, img.width, img.height, options.max_pixels);  // then nothing was decoded
    if (!img.pixels) SDLORA_THROW(IoError, "[load_image] cannot read " << name << ": no pixels decoded");
    std::unique_ptr<unsigned char, decltype(&std::free)> const owned(img.pixels, &std::free);
    return from_uint8(TensorView<std::uint8_t const, Cpu>(owned.get(), Shape{Index(img.height), Index(img.width), 3}),
                      options.range);  // (3, H, W)
  }
  if (std::string const why = detail::jpeg_refusal(bytes); !why.empty())
    SDLORA_THROW(IoError, "[load_image] cannot read " << name << ": " << why);
  auto const* data = reinterpret_cast<unsigned char const*>(bytes.data());
  int w = 0, h = 0, channels = 0;
  if (!detail::stb::stbi_info_from_memory(data, int(bytes.size()), &w, &h, &channels))
    SDLORA_THROW(IoError, "[load_image] cannot read " << name << ": " << detail::stb::stbi_failure_reason());
  detail::check_pixel_limit(name, detail::stb_extent(w), detail::stb_extent(h), options.max_pixels);
  if (w == 0 || h == 0)
    SDLORA_THROW(IoError, "[load_image] cannot read "
                              << name << ": " << detail::empty_image(detail::stb_extent(w), detail::stb_extent(h)));
  unsigned char* p = detail::stb::stbi_load_from_memory(data, int(bytes.size()), &w, &h, &channels, 3);
  if (!p)
    SDLORA_THROW(IoError, "[load_image] cannot read " << name << ": " << detail::stb::stbi_failure_reason());
  std::unique_ptr<unsigned char, decltype(&detail::stb::stbi_image_free)> const owned(p, &detail::stb::stbi_image_free);
  return from_uint8(TensorView<std::uint8_t const, Cpu>(p, Shape{h, w, 3}), options.range);  // (3, H, W)
}

inline Tensor<float, Cpu> decode_image(std::string_view bytes, std::string const& name,
                                       ImageRange range = ImageRange::MinusOneToOne) {
  return decode_image(bytes, name, ImageLoadOptions{range});
}

/// Loads an image file (JPEG, PNG, BMP, TGA, GIF) as RGB float (3, H, W) in `options.range`. An
/// unreadable or undecodable file, or one over `options.max_pixels`, throws IoError naming the path and the reason.
inline Tensor<float, Cpu> load_image(std::string const& path, ImageLoadOptions const& options) {
  return decode_image(detail::read_file_bytes(path, "[load_image]"), path, options);
}

inline Tensor<float, Cpu> load_image(std::string const& path, ImageRange range = ImageRange::MinusOneToOne) {
  return load_image(path, ImageLoadOptions{range});
}

/// Resizes (C, H, W) to (C, out_h, out_w), each channel on its own (see the file comment for the filters).
inline Tensor<float, Cpu> resize(TensorView<float const, Cpu> img, Index out_h, Index out_w,
                                 Filter filter = Filter::Bilinear) {
  detail::check_image(img, "[resize]");
  SDLORA_EXPECTS(out_h > 0 && out_w > 0 && out_h <= INT_MAX / 4 && out_w <= INT_MAX / 4,
                 "[resize] bad output size " << out_h << " x " << out_w << " for " << img.shape());
  SDLORA_EXPECTS(img.dim(1) > 0 && img.dim(2) > 0, "[resize] empty image " << img.shape());
  Tensor<float, Cpu> const src = Tensor<float, Cpu>::from_view(img);  // (C, H, W), contiguous
  Index const c = img.dim(0), h = img.dim(1), w = img.dim(2);
  Tensor<float, Cpu> out(Shape{c, out_h, out_w});  // (C, out_h, out_w)
  detail::stb::stbir_filter const f = filter == Filter::Bilinear  ? detail::stb::STBIR_FILTER_TRIANGLE
                                      : filter == Filter::Bicubic ? detail::stb::STBIR_FILTER_CATMULLROM
                                                                  : detail::stb::STBIR_FILTER_BOX;
  for (Index k = 0; k < c; ++k) {
    int const ok = detail::stb::stbir_resize_float_generic(
        src.data() + k * h * w, int(w), int(h), int(w * sizeof(float)), out.data() + k * out_h * out_w, int(out_w),
        int(out_h), int(out_w * sizeof(float)), 1, STBIR_ALPHA_CHANNEL_NONE, 0, detail::stb::STBIR_EDGE_CLAMP, f,
        detail::stb::STBIR_COLORSPACE_LINEAR, nullptr);
    if (!ok) SDLORA_THROW(Error, "[resize] stb_image_resize failed on " << img.shape() << " -> " << out_h << " x "
                                                                        << out_w);
  }
  return out;
}

/// Resizes so that the shorter side becomes `size`, keeping the aspect ratio; the longer side is
/// int(size * long / short), as torchvision's Resize(int).
inline Tensor<float, Cpu> resize_shorter_side(TensorView<float const, Cpu> img, Index size,
                                              Filter filter = Filter::Bilinear) {
  detail::check_image(img, "[resize_shorter_side]");
  Index const h = img.dim(1), w = img.dim(2);
  SDLORA_EXPECTS(size > 0 && h > 0 && w > 0, "[resize_shorter_side] size " << size << " for " << img.shape());
  if (h <= w) return resize(img, size, Index(double(size) * double(w) / double(h)), filter);
  return resize(img, Index(double(size) * double(h) / double(w)), size, filter);
}

/// The (C, h, w) window at (top, left).
inline Tensor<float, Cpu> crop(TensorView<float const, Cpu> img, Index top, Index left, Index h, Index w) {
  detail::check_image(img, "[crop]");
  SDLORA_EXPECTS(top >= 0 && left >= 0 && h >= 0 && w >= 0 && top + h <= img.dim(1) && left + w <= img.dim(2),
                 "[crop] window (" << top << ", " << left << ") + (" << h << ", " << w << ") outside "
                                   << img.shape());
  auto out = Tensor<float, Cpu>::uninitialized(Shape{img.dim(0), h, w});  // (C, h, w)
  for (Index k = 0; k < img.dim(0); ++k)
    for (Index y = 0; y < h; ++y)
      for (Index x = 0; x < w; ++x)
        out((k * h + y) * w + x) =
            img.data()[k * img.stride(0) + (top + y) * img.stride(1) + (left + x) * img.stride(2)];
  return out;
}

/// The centred (C, h, w) window; offsets round((H - h) / 2) with ties to even, as torchvision's CenterCrop.
inline Tensor<float, Cpu> center_crop(TensorView<float const, Cpu> img, Index h, Index w) {
  detail::check_image(img, "[center_crop]");
  SDLORA_EXPECTS(h <= img.dim(1) && w <= img.dim(2), "[center_crop] (" << h << ", " << w << ") larger than "
                                                                      << img.shape());
  Index const top = Index(std::nearbyint(double(img.dim(1) - h) / 2.0));
  Index const left = Index(std::nearbyint(double(img.dim(2) - w) / 2.0));
  return crop(img, top, left, h, w);
}

/// A uniformly placed (C, h, w) window. `rng_state` is a splitmix64 state advanced by one step per call (the same
/// seed gives the same crops; it does not reproduce torch's RandomCrop draws).
inline Tensor<float, Cpu> random_crop(TensorView<float const, Cpu> img, Index h, Index w, std::uint64_t& rng_state) {
  detail::check_image(img, "[random_crop]");
  SDLORA_EXPECTS(h <= img.dim(1) && w <= img.dim(2), "[random_crop] (" << h << ", " << w << ") larger than "
                                                                      << img.shape());
  rng_state += 0x9E3779B97F4A7C15ull;  // splitmix64
  std::uint64_t z = rng_state;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  std::uint64_t const rows = std::uint64_t(img.dim(1) - h + 1), cols = std::uint64_t(img.dim(2) - w + 1);
  Index const top = Index((z >> 32) % rows), left = Index((z & 0xffffffffu) % cols);
  return crop(img, top, left, h, w);
}

/// Mirrors (C, H, W) left to right.
inline Tensor<float, Cpu> hflip(TensorView<float const, Cpu> img) {
  detail::check_image(img, "[hflip]");
  Index const c = img.dim(0), h = img.dim(1), w = img.dim(2);
  auto out = Tensor<float, Cpu>::uninitialized(Shape{c, h, w});  // (C, H, W)
  for (Index k = 0; k < c; ++k)
    for (Index y = 0; y < h; ++y)
      for (Index x = 0; x < w; ++x)
        out((k * h + y) * w + x) = img.data()[k * img.stride(0) + y * img.stride(1) + (w - 1 - x) * img.stride(2)];
  return out;
}

/// Tiles equally shaped (C, H, W) images row by row into (C, rows * H, cols * W), rows = ceil(n / cols), like
/// diffusers.utils.make_image_grid; cells past the last image hold `fill` (black in [-1, 1]).
inline Tensor<float, Cpu> make_grid(std::vector<Tensor<float, Cpu>> const& images, Index cols, float fill = -1.0f) {
  SDLORA_EXPECTS(!images.empty() && cols > 0, "[make_grid] needs images and cols > 0, got " << images.size()
                                                                                             << " and " << cols);
  Shape const s = images[0].shape();
  detail::check_image(images[0].view(), "[make_grid]");
  for (auto const& im : images)
    SDLORA_EXPECTS(im.shape() == s, "[make_grid] images differ in shape: " << s << " vs " << im.shape());
  Index const n = Index(images.size()), rows = (n + cols - 1) / cols;
  Index const c = s[0], h = s[1], w = s[2], gh = rows * h, gw = cols * w;
  Tensor<float, Cpu> grid(Shape{c, gh, gw});  // (C, rows * H, cols * W)
  grid.fill(fill);
  for (Index i = 0; i < n; ++i) {
    Index const y0 = (i / cols) * h, x0 = (i % cols) * w;
    for (Index k = 0; k < c; ++k)
      for (Index y = 0; y < h; ++y)
        std::memcpy(grid.data() + (k * gh + y0 + y) * gw + x0, images[std::size_t(i)].data() + (k * h + y) * w,
                    std::size_t(w) * sizeof(float));
  }
  return grid;
}

/// Encodes (C, H, W), C in 1..4, as a PNG in memory with `text` chunks before IEND: tEXt for ASCII text, iTXt
/// (UTF-8, uncompressed) otherwise. Keywords must be 1..79 printable ASCII characters; no NUL in texts.
inline std::string encode_png(TensorView<float const, Cpu> img, ImageRange range = ImageRange::MinusOneToOne,
                              PngText const& text = {}) {
  detail::check_image(img, "[save_png]");
  SDLORA_EXPECTS(img.dim(1) > 0 && img.dim(2) > 0 && img.dim(1) < (1 << 24) && img.dim(2) < (1 << 24),
                 "[save_png] cannot encode an image of shape " << img.shape());
  std::string chunks;
  for (auto const& [key, value] : text) {
    bool key_ok = !key.empty() && key.size() <= 79;
    for (char ch : key) key_ok = key_ok && ch >= 32 && ch <= 126;
    if (!key_ok)
      SDLORA_THROW(ConfigError, "[save_png] text keyword '" << key << "' must be 1..79 printable ASCII characters");
    if (value.find('\0') != std::string::npos)
      SDLORA_THROW(ConfigError, "[save_png] text for '" << key << "' holds a NUL byte");
    bool const ascii = std::all_of(value.begin(), value.end(), [](char ch) { return (unsigned char)ch < 0x80; });
    if (ascii) {
      chunks += detail::png_chunk("tEXt", key + '\0' + value);
    } else {  // keyword, NUL, compression flag 0, method 0, empty language tag, NUL, empty translation, NUL, text
      chunks += detail::png_chunk("iTXt", key + '\0' + '\0' + '\0' + '\0' + '\0' + value);
    }
  }
  Tensor<std::uint8_t, Cpu> const pixels = to_uint8(img, range);  // (H, W, C)
  int const c = int(img.dim(0)), h = int(img.dim(1)), w = int(img.dim(2));
  int len = 0;
  unsigned char* png = detail::stb::stbi_write_png_to_mem(pixels.data(), w * c, w, h, c, &len);
  if (!png || len < 8 + 12) SDLORA_THROW(Error, "[save_png] stb_image_write failed on " << img.shape());
  std::string out(reinterpret_cast<char const*>(png), std::size_t(len));
  std::free(png);  // STBIW_FREE
  static constexpr char kIend[8] = {0, 0, 0, 0, 'I', 'E', 'N', 'D'};
  if (std::memcmp(out.data() + out.size() - 12, kIend, 8) != 0)
    SDLORA_THROW(Error, "[save_png] stb_image_write's PNG does not end with IEND");
  out.insert(out.size() - 12, chunks);
  return out;
}

/// Writes (C, H, W) (values in `range`) as an 8-bit PNG with `text` chunks (see encode_png); IoError naming the
/// path when it cannot be written.
inline void save_png(std::string const& path, TensorView<float const, Cpu> img,
                     ImageRange range = ImageRange::MinusOneToOne, PngText const& text = {}) {
  detail::write_file_bytes(path, encode_png(img, range, text), "[save_png]");
}

/// The text chunks (tEXt, zTXt, iTXt) of a PNG held in memory, in file order, as UTF-8; `name` stands for the path.
/// FormatError for a file that is not a PNG, a truncated chunk or a text chunk whose CRC does not match.
inline PngText decode_png_text(std::string_view bytes, std::string const& name) {
  static constexpr unsigned char kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  auto const* d = reinterpret_cast<unsigned char const*>(bytes.data());
  if (bytes.size() < 8 || std::memcmp(d, kSignature, 8) != 0)
    SDLORA_THROW(FormatError, "[read_png_text] " << name << ": not a PNG file (bad signature)");
  PngText out;
  std::size_t pos = 8;
  while (pos < bytes.size()) {
    if (bytes.size() - pos < 12) SDLORA_THROW(FormatError, "[read_png_text] " << name << ": truncated chunk at " << pos);
    std::uint32_t const len = detail::get_u32(d + pos);
    std::string_view const type = bytes.substr(pos + 4, 4);
    if (len > bytes.size() - pos - 12)
      SDLORA_THROW(FormatError, "[read_png_text] " << name << ": chunk '" << type << "' at " << pos << " of " << len
                                                   << " bytes runs past the end of the file");
    std::string_view const data = bytes.substr(pos + 8, len);
    if (type == "tEXt" || type == "zTXt" || type == "iTXt") {
      if (detail::crc32(d + pos + 4, 4 + std::size_t(len)) != detail::get_u32(d + pos + 8 + len))
        SDLORA_THROW(FormatError, "[read_png_text] " << name << ": chunk '" << type << "' at " << pos
                                                     << " has a bad CRC");
      std::size_t const nul = data.find('\0');
      if (nul == std::string_view::npos || nul == 0)
        SDLORA_THROW(FormatError, "[read_png_text] " << name << ": " << type << " chunk without a keyword");
      std::string const key = detail::latin1_to_utf8(data.substr(0, nul));
      std::string_view rest = data.substr(nul + 1);
      if (type == "tEXt") {
        out.emplace_back(key, detail::latin1_to_utf8(rest));
      } else if (type == "zTXt") {
        if (rest.empty()) SDLORA_THROW(FormatError, "[read_png_text] " << name << ": zTXt without a method byte");
        out.emplace_back(key, detail::latin1_to_utf8(detail::inflate(rest.substr(1), name)));
      } else {  // iTXt: flag, method, language\0, translated keyword\0, text
        if (rest.size() < 2) SDLORA_THROW(FormatError, "[read_png_text] " << name << ": truncated iTXt '" << key << "'");
        bool const compressed = rest[0] != 0;
        rest = rest.substr(2);
        for (int skip = 0; skip < 2; ++skip) {
          std::size_t const z = rest.find('\0');
          if (z == std::string_view::npos)
            SDLORA_THROW(FormatError, "[read_png_text] " << name << ": truncated iTXt '" << key << "'");
          rest = rest.substr(z + 1);
        }
        out.emplace_back(key, compressed ? detail::inflate(rest, name) : std::string(rest));
      }
    }
    if (type == "IEND") break;
    pos += 12 + std::size_t(len);
  }
  return out;
}

/// The text chunks of the PNG file at `path` (see decode_png_text); IoError naming the path if it cannot be read.
inline PngText read_png_text(std::string const& path) {
  return decode_png_text(detail::read_file_bytes(path, "[read_png_text]"), path);
}

}  // namespace sdlora::io
