/// @file image_codecs.hpp
/// @brief JPEG through libjpeg(-turbo) and PNG through libpng, for io::decode_image (image.hpp), when the build
/// found them (compile definitions SDLORA_WITH_LIBJPEG / SDLORA_WITH_LIBPNG, set on the sdlora target by CMake).
/// Include <sdlora/io/image.hpp> instead.
///
/// Both libraries report errors through a C callback that must not return. Neither a C++ exception nor a longjmp
/// may cross C++ frames with destructors, so each decoder here is written in C style: the function that calls
/// setjmp holds only trivially destructible locals, owns its buffers through the DecodedImage it fills (malloc /
/// free), and the callbacks longjmp back to it through libjpeg's / libpng's own (C) frames only, as libjpeg's
/// example.c does. The C++ caller turns a failure into an IoError naming the file.
///
/// The conversions reproduce what stb_image did before (and what PIL's convert("RGB") does): grey is replicated,
/// alpha is dropped without compositing, 16-bit samples keep their high byte (v >> 8), no gamma is applied (gAMA,
/// iCCP and sRGB chunks are ignored), palettes and low bit depths are expanded; JPEG uses libjpeg's defaults (the
/// accurate integer IDCT, fancy chroma upsampling: PIL's decoder), Adobe CMYK / YCCK become RGB as c * k / 255.
#pragma once

#include <setjmp.h>  // NOLINT: setjmp, longjmp, jmp_buf (the C error-handling protocol of both libraries)
#include <stddef.h>  // NOLINT: size_t (jpeglib.h needs it declared first)
#include <stdio.h>   // NOLINT: FILE (jpeglib.h needs it declared first)
#include <stdlib.h>  // NOLINT: malloc, free
#include <string.h>  // NOLINT: memcpy, strncpy

#if defined(SDLORA_WITH_LIBJPEG)
#include <jpeglib.h>  // jpeg_decompress_struct, jpeg_read_header, jpeg_read_scanlines
#endif
#if defined(SDLORA_WITH_LIBPNG)
#include <png.h>  // png_create_read_struct, png_read_info, png_read_image
#endif

namespace sdlora::io::detail {

/// What a C-style decoder hands back: on success `pixels` (malloc'd, (height, width, 3) interleaved RGB, the caller
/// frees it); otherwise null pixels and `message`. `over_limit` says that the header was read and width x height is
/// more than the pixel limit: nothing was allocated for pixels or decoded.
struct DecodedImage {
  unsigned char* pixels;
  unsigned long width;
  unsigned long height;
  bool over_limit;
  char message[200];
};

/// An empty result: no pixels, no size, no message.
inline void clear_result(DecodedImage* out) {
  out->pixels = nullptr;
  out->width = out->height = 0;
  out->over_limit = false;
  out->message[0] = '\0';
}

inline void set_message(DecodedImage* out, char const* text) {
  strncpy(out->message, text, sizeof(out->message) - 1);
  out->message[sizeof(out->message) - 1] = '\0';
}

/// stb_image's (and Adobe's) inverted-CMYK product c * k / 255, rounded as stb's stbi__blinn_8x8.
inline unsigned char blinn_8x8(unsigned x, unsigned y) {
  unsigned const t = x * y + 128;
  return static_cast<unsigned char>((t + (t >> 8)) >> 8);
}

#if defined(SDLORA_WITH_LIBJPEG)

/// At most this many progressive scans (a valid file has about 10; thousands of tiny scans would each redo the
/// whole image: libjpeg-turbo's own fuzzers use 500).
inline constexpr int kMaxJpegScans = 500;

/// libjpeg's error manager extended with the jump target; `mgr` first, so cinfo->err points at the whole struct.
struct JpegErrorManager {
  jpeg_error_mgr mgr;
  jpeg_progress_mgr progress;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

inline void jpeg_fail(j_common_ptr cinfo) {
  auto* e = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, e->message);
  longjmp(e->jump, 1);  // back to jpeg_decode, through libjpeg's C frames only
}

inline void jpeg_fail_with(j_common_ptr cinfo, char const* text) {
  auto* e = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  strncpy(e->message, text, sizeof(e->message) - 1);
  e->message[sizeof(e->message) - 1] = '\0';
  longjmp(e->jump, 1);
}

inline void jpeg_quiet(j_common_ptr cinfo, int level) {  // warnings are counted, not printed to stderr
  if (level < 0) ++cinfo->err->num_warnings;
}

inline void jpeg_scan_limit(j_common_ptr cinfo) {
  auto* d = reinterpret_cast<j_decompress_ptr>(cinfo);
  if (d->input_scan_number > kMaxJpegScans) jpeg_fail_with(cinfo, "more than 500 progressive scans");
}

/// Decodes (or with `header_only` just measures) a JPEG held in memory into `out` (see DecodedImage). Nothing is
/// allocated for pixels when width x height exceeds `max_pixels` (0: no limit).
inline void jpeg_decode(unsigned char const* data, size_t size, unsigned long long max_pixels, bool header_only,
                        DecodedImage* out) {
  struct State {  // everything the error path reads, in memory (not in registers a longjmp would restore)
    jpeg_decompress_struct cinfo;
    JpegErrorManager err;
    unsigned char* row;  // one CMYK scanline
  };
  auto* s = static_cast<State*>(calloc(1, sizeof(State)));
  clear_result(out);
  if (!s) {
    set_message(out, "out of memory");
    return;
  }
  s->cinfo.err = jpeg_std_error(&s->err.mgr);
  s->err.mgr.error_exit = &jpeg_fail;
  s->err.mgr.emit_message = &jpeg_quiet;
  if (setjmp(s->err.jump)) {  // jpeg_fail / jpeg_fail_with stored the message
    set_message(out, s->err.message);
    jpeg_destroy_decompress(&s->cinfo);
    free(out->pixels);
    out->pixels = nullptr;
    free(s->row);
    free(s);
    return;
  }
  jpeg_create_decompress(&s->cinfo);
  jpeg_mem_src(&s->cinfo, const_cast<unsigned char*>(data), static_cast<unsigned long>(size));
  jpeg_read_header(&s->cinfo, TRUE);
  unsigned long const w = s->cinfo.image_width, h = s->cinfo.image_height;
  out->width = w;
  out->height = h;
  if (max_pixels != 0 && static_cast<unsigned long long>(w) * h > max_pixels) out->over_limit = true;
  if (header_only || out->over_limit) {
    jpeg_destroy_decompress(&s->cinfo);
    free(s);
    return;
  }
  bool const cmyk = s->cinfo.jpeg_color_space == JCS_CMYK || s->cinfo.jpeg_color_space == JCS_YCCK;
  s->cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;  // libjpeg converts grey and YCbCr to RGB itself
  s->err.progress.progress_monitor = &jpeg_scan_limit;
  s->cinfo.progress = &s->err.progress;
  jpeg_start_decompress(&s->cinfo);
  if (s->cinfo.output_width != w || s->cinfo.output_height != h || s->cinfo.output_components != (cmyk ? 4 : 3)) {
    set_message(out, "unexpected output format");
    jpeg_destroy_decompress(&s->cinfo);
    free(s);
    return;
  }
  out->pixels = static_cast<unsigned char*>(malloc(w * h * 3));
  if (cmyk) s->row = static_cast<unsigned char*>(malloc(w * 4));
  auto* const common = reinterpret_cast<j_common_ptr>(&s->cinfo);
  if (!out->pixels || (cmyk && !s->row)) jpeg_fail_with(common, "out of memory");
  while (s->cinfo.output_scanline < h) {
    unsigned char* dst = out->pixels + static_cast<size_t>(s->cinfo.output_scanline) * w * 3;
    JSAMPROW row = cmyk ? s->row : dst;
    if (jpeg_read_scanlines(&s->cinfo, &row, 1) != 1) jpeg_fail_with(common, "no scanline decoded");
    if (cmyk) {  // Adobe writes CMYK inverted: R = C * K / 255 (stb_image and PIL agree)
      for (unsigned long x = 0; x < w; ++x) {
        unsigned char const* p = s->row + 4 * x;
        dst[3 * x + 0] = blinn_8x8(p[0], p[3]);
        dst[3 * x + 1] = blinn_8x8(p[1], p[3]);
        dst[3 * x + 2] = blinn_8x8(p[2], p[3]);
      }
    }
  }
  jpeg_destroy_decompress(&s->cinfo);  // no jpeg_finish_decompress: what follows the last scanline is not needed
  free(s->row);
  free(s);
}

#endif  // SDLORA_WITH_LIBJPEG

#if defined(SDLORA_WITH_LIBPNG)

struct PngState {
  jmp_buf jump;
  char message[200];
  unsigned char const* data;
  size_t size;
  size_t pos;
  unsigned char** rows;
  unsigned char* pixels;
};

inline void png_fail(png_structp png, png_const_charp message) {
  auto* s = static_cast<PngState*>(png_get_error_ptr(png));
  strncpy(s->message, message ? message : "error", sizeof(s->message) - 1);
  s->message[sizeof(s->message) - 1] = '\0';
  longjmp(s->jump, 1);  // back to png_decode, through libpng's C frames only
}

inline void png_quiet(png_structp, png_const_charp) {}  // warnings (bad ancillary chunks) are not printed

inline void png_read_memory(png_structp png, png_bytep dst, size_t n) {
  auto* s = static_cast<PngState*>(png_get_io_ptr(png));
  if (n > s->size - s->pos) png_error(png, "file truncated");
  memcpy(dst, s->data + s->pos, n);
  s->pos += n;
}

/// Decodes (or with `header_only` just measures) a PNG held in memory into `out` (see DecodedImage). Nothing is
/// allocated for pixels when width x height exceeds `max_pixels` (0: no limit).
inline void png_decode(unsigned char const* data, size_t size, unsigned long long max_pixels, bool header_only,
                       DecodedImage* out) {
  struct State {
    PngState io;
    png_structp png;
    png_infop info;
  };
  auto* s = static_cast<State*>(calloc(1, sizeof(State)));
  clear_result(out);
  if (!s) {
    set_message(out, "out of memory");
    return;
  }
  // The limit from IHDR, which must come first, before libpng reads on: png_read_info stops at the first IDAT, and a
  // file of nothing but a header claiming 12000 x 8000 pixels must be refused for its size, not for the chunk after.
  if (size >= 24 && memcmp(data + 12, "IHDR", 4) == 0) {
    auto const be32 = [](unsigned char const* p) {
      return static_cast<unsigned long>(p[0]) << 24 | static_cast<unsigned long>(p[1]) << 16 |
             static_cast<unsigned long>(p[2]) << 8 | static_cast<unsigned long>(p[3]);
    };
    unsigned long long const w = be32(data + 16), h = be32(data + 20);
    if (max_pixels != 0 && w * h > max_pixels) {
      out->width = static_cast<unsigned long>(w);
      out->height = static_cast<unsigned long>(h);
      out->over_limit = true;
      free(s);
      return;
    }
  }
  s->io.data = data;
  s->io.size = size;
  if (setjmp(s->io.jump)) {
    set_message(out, s->io.message);
    png_destroy_read_struct(&s->png, s->info ? &s->info : nullptr, nullptr);
    free(s->io.rows);
    free(s->io.pixels);
    free(s);
    return;
  }
  s->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &s->io, &png_fail, &png_quiet);
  if (s->png) s->info = png_create_info_struct(s->png);
  if (!s->png || !s->info) {
    set_message(out, "out of memory");
    png_destroy_read_struct(&s->png, nullptr, nullptr);
    free(s);
    return;
  }
  png_set_read_fn(s->png, &s->io, &png_read_memory);
  png_read_info(s->png, s->info);
  unsigned long const w = png_get_image_width(s->png, s->info), h = png_get_image_height(s->png, s->info);
  out->width = w;
  out->height = h;
  if (max_pixels != 0 && static_cast<unsigned long long>(w) * h > max_pixels) out->over_limit = true;
  if (!header_only && !out->over_limit) {
    int const color = png_get_color_type(s->png, s->info);
    png_set_expand(s->png);       // palette -> RGB, grey of 1, 2, 4 bits -> 8 bits, tRNS -> alpha
    png_set_strip_16(s->png);     // 16 -> 8 bits keeping the high byte, as stb_image
    png_set_strip_alpha(s->png);  // dropped, not composited
    if ((color & PNG_COLOR_MASK_COLOR) == 0) png_set_gray_to_rgb(s->png);
    png_set_interlace_handling(s->png);
    png_read_update_info(s->png, s->info);
    if (png_get_channels(s->png, s->info) != 3 || png_get_bit_depth(s->png, s->info) != 8 ||
        png_get_rowbytes(s->png, s->info) != w * 3)
      png_error(s->png, "unexpected output format");
    s->io.pixels = static_cast<unsigned char*>(malloc(w * h * 3));
    s->io.rows = static_cast<unsigned char**>(malloc(h * sizeof(unsigned char*)));
    if (!s->io.pixels || !s->io.rows) png_error(s->png, "out of memory");
    for (unsigned long y = 0; y < h; ++y) s->io.rows[y] = s->io.pixels + y * w * 3;
    png_read_image(s->png, s->io.rows);  // what follows the image data (png_read_end) is not needed
    out->pixels = s->io.pixels;
  }
  png_destroy_read_struct(&s->png, &s->info, nullptr);
  free(s->io.rows);
  free(s);
}

#endif  // SDLORA_WITH_LIBPNG

}  // namespace sdlora::io::detail
