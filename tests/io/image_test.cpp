/// @file image_test.cpp
/// @brief Images: PNG round trips (exact at 8 bits), PNG text chunks, grey/alpha conversion, JPEG and BMP loading,
/// libjpeg / libpng against the stb_image they replace, the fuzz findings, crops, flips, resizing, grids and errors.
#include <catch2/catch.hpp>

#include <algorithm>    // std::max
#include <cmath>        // std::abs
#include <cstdint>      // std::uint8_t
#include <fstream>      // std::ofstream, std::ifstream
#include <iterator>     // std::istreambuf_iterator
#include <string>       // std::string
#include <string_view>  // std::string_view
#include <utility>      // std::pair
#include <vector>       // std::vector

#include "support.hpp"

// After sdlora's header, a program can still declare its own global stb (image.hpp leaves no include guard set).
#include <stb_image.h>
using ProgramsOwnStbiInfo = decltype(&::stbi_info);  // unevaluated: needs the declaration, not a definition

using namespace sdlora;
using Catch::Matchers::Contains;

namespace {

/// A (H, W, C) uint8 image whose every pixel and channel differs: (y * 37 + x * 11 + c * 101) mod 256.
Tensor<std::uint8_t> pattern(Index h, Index w, Index c) {
  Tensor<std::uint8_t> p(Shape{h, w, c});
  for (Index y = 0; y < h; ++y)
    for (Index x = 0; x < w; ++x)
      for (Index k = 0; k < c; ++k) p((y * w + x) * c + k) = std::uint8_t((y * 37 + x * 11 + k * 101) % 256);
  return p;
}

/// A (C, H, W) float image with value k * 100 + y * 10 + x at (k, y, x).
Tensor<float> indexed(Index c, Index h, Index w) {
  Tensor<float> t(Shape{c, h, w});
  for (Index k = 0; k < c; ++k)
    for (Index y = 0; y < h; ++y)
      for (Index x = 0; x < w; ++x) t.at({k, y, x}) = float(k * 100 + y * 10 + x);
  return t;
}

}  // namespace

TEST_CASE("image: uint8 -> float -> uint8 is the identity for every value, in both ranges", "[io][image]") {
  Tensor<std::uint8_t> all(Shape{1, 256, 1});
  for (Index i = 0; i < 256; ++i) all(i) = std::uint8_t(i);
  for (auto range : {io::ImageRange::MinusOneToOne, io::ImageRange::ZeroToOne}) {
    auto f = io::from_uint8(all, range);  // (1, 1, 256)
    REQUIRE(f.shape() == Shape{1, 1, 256});
    auto back = io::to_uint8(f, range);
    for (Index i = 0; i < 256; ++i) REQUIRE(back(i) == all(i));
  }
  auto f = io::from_uint8(all);  // torchvision: ToTensor then Normalize([0.5], [0.5]), in float
  CHECK(f(0) == -1.0f);
  CHECK(f(255) == 1.0f);
  CHECK(f(128) == (128.0f / 255.0f - 0.5f) / 0.5f);
  Tensor<float> out_of_range(Shape{1, 1, 3});
  out_of_range(0) = -7.0f;
  out_of_range(1) = 7.0f;
  out_of_range(2) = std::nanf("");
  auto clamped = io::to_uint8(out_of_range);
  CHECK(clamped(0) == 0);
  CHECK(clamped(1) == 255);
  CHECK(clamped(2) == 0);
}

TEST_CASE("image: PNG round trip is exact at 8 bits", "[io][image]") {
  auto const img = io::from_uint8(pattern(7, 9, 3));  // (3, 7, 9)
  io::save_png("img_roundtrip.png", img);
  auto back = io::load_image("img_roundtrip.png");
  REQUIRE(back.shape() == Shape{3, 7, 9});
  for (Index i = 0; i < img.numel(); ++i) REQUIRE(back(i) == img(i));
  auto back01 = io::load_image("img_roundtrip.png", io::ImageRange::ZeroToOne);
  auto const ref01 = io::from_uint8(pattern(7, 9, 3), io::ImageRange::ZeroToOne);
  for (Index i = 0; i < img.numel(); ++i) REQUIRE(back01(i) == ref01(i));
}

TEST_CASE("image: PNG text chunks round trip", "[io][image]") {
  CHECK(io::detail::crc32(reinterpret_cast<unsigned char const*>("123456789"), 9) == 0xCBF43926u);  // the check value
  io::PngText const text = {{"prompt", "a photo of sks dog, \"quoted\""},
                            {"seed", "1234"},
                            {"negative", "caf\xc3\xa9 \xe2\x98\x95"},  // UTF-8: stored as iTXt
                            {"empty", ""}};
  auto const img = io::from_uint8(pattern(4, 5, 3));
  io::save_png("img_text.png", img, io::ImageRange::MinusOneToOne, text);
  CHECK(io::read_png_text("img_text.png") == text);
  auto pixels = io::load_image("img_text.png");  // the chunks do not disturb decoding
  for (Index i = 0; i < img.numel(); ++i) REQUIRE(pixels(i) == img(i));

  SECTION("a corrupted text chunk fails its CRC") {
    std::string bytes = io::encode_png(img, io::ImageRange::MinusOneToOne, {{"k", "value"}});
    std::size_t const at = bytes.find("value");
    REQUIRE(at != std::string::npos);
    bytes[at] = 'V';
    CHECK_THROWS_WITH(io::decode_png_text(bytes, "corrupt.png"), Contains("corrupt.png") && Contains("bad CRC"));
  }
  SECTION("bad keywords are refused") {
    CHECK_THROWS_AS(io::encode_png(img, io::ImageRange::MinusOneToOne, {{"", "x"}}), ConfigError);
    CHECK_THROWS_AS(io::encode_png(img, io::ImageRange::MinusOneToOne, {{std::string(80, 'k'), "x"}}), ConfigError);
    CHECK_THROWS_AS(io::encode_png(img, io::ImageRange::MinusOneToOne, {{"k", std::string("a\0b", 3)}}), ConfigError);
  }
  SECTION("not a PNG") {
    CHECK_THROWS_WITH(io::decode_png_text("GIF89a....", "x.gif"), Contains("x.gif") && Contains("not a PNG"));
  }
}

TEST_CASE("image: grey, grey+alpha and RGBA files load as RGB with alpha dropped", "[io][image]") {
  auto const grey = io::from_uint8(pattern(3, 4, 1));   // (1, 3, 4)
  auto const ga = io::from_uint8(pattern(3, 4, 2));     // (2, 3, 4): channel 1 is alpha
  auto const rgba = io::from_uint8(pattern(3, 4, 4));   // (4, 3, 4): channel 3 is alpha
  io::save_png("img_grey.png", grey);
  io::save_png("img_ga.png", ga);
  io::save_png("img_rgba.png", rgba);
  auto g = io::load_image("img_grey.png");
  auto a = io::load_image("img_ga.png");
  auto r = io::load_image("img_rgba.png");
  REQUIRE(g.shape() == Shape{3, 3, 4});
  REQUIRE(a.shape() == Shape{3, 3, 4});
  REQUIRE(r.shape() == Shape{3, 3, 4});
  for (Index k = 0; k < 3; ++k)
    for (Index i = 0; i < 12; ++i) {
      CHECK(g(k * 12 + i) == grey(i));  // grey replicated into R, G, B
      CHECK(a(k * 12 + i) == ga(i));    // the grey channel, alpha dropped
      CHECK(r(k * 12 + i) == rgba(k * 12 + i));
    }
}

TEST_CASE("image: BMP loads exactly and JPEG within JPEG's loss", "[io][image]") {
  auto const p = pattern(8, 8, 3);
  REQUIRE(io::detail::stb::stbi_write_bmp("img.bmp", 8, 8, 3, p.data()) != 0);
  auto bmp = io::load_image("img.bmp");
  auto const ref = io::from_uint8(p);
  for (Index i = 0; i < ref.numel(); ++i) REQUIRE(bmp(i) == ref(i));

  // A smooth 16x16 gradient at quality 100 (no chroma subsampling): JPEG's quantisation and the colour transform
  // round-trip within a few levels; 4 levels (4 / 255 in [0, 1]) is loose enough for any conforming codec and
  // tight enough to catch a channel swap, transposition or range error.
  Tensor<std::uint8_t> smooth(Shape{16, 16, 3});
  for (Index y = 0; y < 16; ++y)
    for (Index x = 0; x < 16; ++x)
      for (Index k = 0; k < 3; ++k) smooth((y * 16 + x) * 3 + k) = std::uint8_t(40 + 8 * y + 4 * x + 30 * k);
  REQUIRE(io::detail::stb::stbi_write_jpg("img.jpg", 16, 16, 3, smooth.data(), 100) != 0);
  auto jpg = io::load_image("img.jpg", io::ImageRange::ZeroToOne);
  auto const smooth_ref = io::from_uint8(smooth, io::ImageRange::ZeroToOne);
  REQUIRE(jpg.shape() == smooth_ref.shape());
  for (Index i = 0; i < jpg.numel(); ++i) REQUIRE(std::abs(jpg(i) - smooth_ref(i)) <= 4.0f / 255.0f);
}

TEST_CASE("image: unreadable files are IoErrors naming the path and the reason", "[io][image]") {
  CHECK_THROWS_AS(io::load_image("img_missing.png"), IoError);
  CHECK_THROWS_WITH(io::load_image("img_missing.png"), Contains("img_missing.png") && Contains("No such file"));
  std::ofstream("img_garbage.png", std::ios::binary) << "this is not an image";
  CHECK_THROWS_AS(io::load_image("img_garbage.png"), IoError);
  CHECK_THROWS_WITH(io::load_image("img_garbage.png"), Contains("img_garbage.png") && Contains("unknown image type"));
  CHECK_THROWS_AS(io::read_png_text("img_missing.png"), IoError);
  CHECK_THROWS_AS(io::save_png("no_such_dir/x.png", io::from_uint8(pattern(2, 2, 3))), IoError);
}

namespace {
void put_le(std::string& s, std::uint32_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) s += char((v >> (8 * i)) & 0xffu);
}
void put_be32(std::string& s, std::uint32_t v) {
  for (int i = 3; i >= 0; --i) s += char((v >> (8 * i)) & 0xffu);
}
/// A 54-byte BMP whose header claims w x h 24-bit pixels and holds none: stb would allocate and decode w * h * 3
/// bytes of zeros.
std::string bmp_header_only(std::uint32_t w, std::uint32_t h) {
  std::string s = "BM";
  put_le(s, 54, 4);
  put_le(s, 0, 4);
  put_le(s, 54, 4);  // pixel data offset
  put_le(s, 40, 4);  // BITMAPINFOHEADER
  put_le(s, w, 4);
  put_le(s, h, 4);
  put_le(s, 1, 2);   // planes
  put_le(s, 24, 2);  // bits per pixel
  for (int i = 0; i < 6; ++i) put_le(s, 0, 4);
  return s;
}
/// A PNG signature and an IHDR claiming w x h RGB (CRC correct), then IEND: no pixel data at all.
std::string png_header_only(std::uint32_t w, std::uint32_t h) {
  std::string ihdr = "IHDR";
  put_be32(ihdr, w);
  put_be32(ihdr, h);
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8 bits, RGB, deflate, no filter, no interlace
  std::string s("\x89PNG\r\n\x1a\n", 8);
  put_be32(s, 13);
  s += ihdr;
  put_be32(s, io::detail::crc32(reinterpret_cast<unsigned char const*>(ihdr.data()), ihdr.size()));
  put_be32(s, 0);
  s += "IEND";
  put_be32(s, io::detail::crc32(reinterpret_cast<unsigned char const*>("IEND"), 4));
  return s;
}
}  // namespace

TEST_CASE("image: a file over the pixel limit is refused from its header, naming the file and its size",
          "[io][image]") {
  REQUIRE(io::kDefaultMaxImagePixels == 89478485);  // PIL.Image.MAX_IMAGE_PIXELS
  REQUIRE(io::max_image_pixels() == io::kDefaultMaxImagePixels);
  // A 54-byte BMP claiming 10000 x 10000 would decode to 300 MB of zeros; a 57-byte PNG claims 12000 x 8000 (stb
  // itself refuses PNGs of more than 2^30 bytes).
  CHECK_THROWS_WITH(io::decode_image(bmp_header_only(10000, 10000), "bomb.bmp"),
                    Contains("bomb.bmp is 10000 x 10000 = 100000000 pixels, over the limit of 89478485") &&
                        Contains("--max-image-pixels"));
  CHECK_THROWS_AS(io::decode_image(png_header_only(12000, 8000), "bomb.png"), IoError);
  CHECK_THROWS_WITH(io::decode_image(png_header_only(12000, 8000), "bomb.png"),
                    Contains("bomb.png is 12000 x 8000 = 96000000 pixels") && !Contains("\n"));
  // Under the limit the same kind of header goes on to the decoder (a 100 x 100 BMP of zeros).
  auto const small = io::decode_image(bmp_header_only(100, 100), "small.bmp", io::ImageRange::ZeroToOne);
  CHECK(small.shape() == Shape{3, 100, 100});

  // The limit of one call, and the process-wide default that --max-image-pixels sets.
  io::save_png("img_limit.png", io::from_uint8(pattern(4, 5, 3)));  // 20 pixels
  io::ImageLoadOptions o;
  o.max_pixels = 19;
  CHECK_THROWS_WITH(io::load_image("img_limit.png", o), Contains("img_limit.png is 5 x 4 = 20 pixels"));
  o.max_pixels = 20;
  CHECK(io::load_image("img_limit.png", o).shape() == Shape{3, 4, 5});
  o.max_pixels = 0;  // no limit
  CHECK(io::load_image("img_limit.png", o).shape() == Shape{3, 4, 5});
  io::set_max_image_pixels(10);
  CHECK(io::ImageLoadOptions{}.max_pixels == 10);
  CHECK_THROWS_WITH(io::load_image("img_limit.png"), Contains("over the limit of 10"));
  io::set_max_image_pixels(io::kDefaultMaxImagePixels);
  CHECK_NOTHROW(io::load_image("img_limit.png"));
}

namespace sdlora::test {
bool stb_reference_decode(std::string_view bytes, std::vector<unsigned char>& rgb, int& width, int& height);
}

namespace {
std::string file_bytes(std::string const& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
/// The message of the IoError `f` throws, or "no IoError".
template <class F>
std::string io_error(F&& f) {
  try {
    f();
  } catch (IoError const& e) {
    return e.what();
  }
  return "no IoError";
}
}  // namespace

TEST_CASE("image: the committed JPEG / PNG / BMP fixtures decode as with stb_image before", "[io][image]") {
#if defined(SDLORA_WITH_LIBJPEG)
  CHECK(io::detail::decoder_for(file_bytes(test::fixture("fuzz/image/baseline.jpg"))) == io::detail::Decoder::LibJpeg);
#endif
#if defined(SDLORA_WITH_LIBPNG)
  CHECK(io::detail::decoder_for(file_bytes(test::fixture("fuzz/image/rgb.png"))) == io::detail::Decoder::LibPng);
#endif
  CHECK(io::detail::decoder_for(file_bytes(test::fixture("fuzz/image/rgb.bmp"))) == io::detail::Decoder::Stb);
  // PNG (RGB, grey + alpha, palette, 16-bit grey, the evaluation images) and BMP: every sample identical. JPEG
  // (baseline 4:2:0 and progressive): libjpeg's accurate integer IDCT and fancy upsampling round differently from
  // stb's, at most 1 level of 255 (measured: 3 of the 105 samples of each file differ, by 1).
  std::vector<std::string> files;
  for (char const* f : {"baseline.jpg", "progressive.jpg", "rgb.png", "la.png", "palette.png", "grey16.png", "rgb.bmp"})
    files.push_back(test::fixture(std::string("fuzz/image/") + f));
  for (char const* dir : {"eval/generated/g", "eval/reference/r"})
    for (int i = 0; i < 5; ++i) files.push_back(test::fixture(dir + std::to_string(i) + ".png"));
  for (std::string const& file : files) {
    INFO(file);
    std::string const bytes = file_bytes(file);
    std::vector<unsigned char> ref;
    int w = 0, h = 0;
    REQUIRE(test::stb_reference_decode(bytes, ref, w, h));
    auto const img = io::decode_image(bytes, file, io::ImageRange::ZeroToOne);  // (3, H, W)
    REQUIRE(img.shape() == Shape{3, h, w});
    auto const ours = io::to_uint8(img, io::ImageRange::ZeroToOne);  // (H, W, 3), exact for 8-bit values
    int const tolerance = file.ends_with(".jpg") ? 1 : 0;
    int worst = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::abs(int(ours(Index(i))) - int(ref[i])));
    CHECK(worst <= tolerance);
    CHECK(io::decode_image_size(bytes, file) == std::pair<Index, Index>{w, h});
  }
}

TEST_CASE("image: crafted JPEGs the fuzzer found are one-line IoErrors naming the file", "[io][image][fuzz]") {
  // image_fuzz's findings in stb_image 2.27 (Debian's libstb): a DHT segment of more than 256 codes (a heap write past
  // its Huffman tables), the same behind FF fill bytes before SOI, and a negative Huffman symbol index (a heap read
  // before its tables). libjpeg refuses all three; stb's decoder, the fallback without libjpeg, refuses the first two
  // by io::detail::jpeg_refusal and is not safe on the third.
  for (char const* name : {"jpeg-dht-over-256-codes.jpg", "jpeg-dht-after-fill-bytes.jpg",
                           "jpeg-huffman-negative-index.jpg"}) {
    INFO(name);
#if !defined(SDLORA_WITH_LIBJPEG)
    if (std::string_view(name) == "jpeg-huffman-negative-index.jpg") {
      WARN("built without libjpeg: stb_image's JPEG decoder reads out of bounds on " << name);
      continue;
    }
#endif
    std::string const file = test::fixture(std::string("fuzz/findings/") + name);
    CHECK_THAT(io_error([&] { io::load_image(file); }), Contains(name) && Contains("corrupt JPEG") && !Contains("\n"));
  }
  // The dataset reads headers alone: the first two already fail there (the third's header is well-formed).
  for (char const* name : {"jpeg-dht-over-256-codes.jpg", "jpeg-dht-after-fill-bytes.jpg"}) {
    std::string const file = test::fixture(std::string("fuzz/findings/") + name);
    CHECK_THAT(io_error([&] { io::decode_image_size(file_bytes(file), file); }),
               Contains(name) && Contains("corrupt JPEG"));
  }
#if defined(SDLORA_WITH_LIBJPEG)
  CHECK_THAT(io_error([] { io::load_image(test::fixture("fuzz/findings/jpeg-dht-over-256-codes.jpg")); }),
             Contains("corrupt JPEG (Bogus Huffman table definition)"));
  CHECK_THAT(io_error([] { io::load_image(test::fixture("fuzz/findings/jpeg-huffman-negative-index.jpg")); }),
             Contains("corrupt JPEG (Quantization table 0x00 was not defined)"));
#else
  CHECK_THAT(io_error([] { io::load_image(test::fixture("fuzz/findings/jpeg-dht-over-256-codes.jpg")); }),
             Contains("corrupt JPEG (a Huffman table of"));
#endif
}

TEST_CASE("image: a top-down BMP (negative height) is measured by its magnitude", "[io][image][fuzz]") {
  // image_fuzz, first run on libjpeg / libpng: stbi_info reports a top-down BMP's height as stored, negative, and
  // decode_image took it as 0 pixels, so a 54-byte BMP claiming 10000 x -10000 passed the pixel limit (300 MB).
  CHECK_THAT(io_error([] { io::decode_image(bmp_header_only(10000, std::uint32_t(-10000)), "top-down.bmp"); }),
             Contains("top-down.bmp is 10000 x 10000 = 100000000 pixels, over the limit"));
  // The committed finding: 155 x -2, whose header size (0 rows) disagreed with the decoded image (2 rows).
  std::string const file = test::fixture("fuzz/findings/bmp-top-down-negative-height.bmp");
  CHECK(io::decode_image_size(file_bytes(file), file) == std::pair<Index, Index>{155, 2});
  CHECK(io::load_image(file).shape() == Shape{3, 2, 155});
  // image_fuzz, third run (a slow unit, not a crash): width 0 and 16,498,703 rows passed the pixel limit (0 pixels)
  // and stb spent 14 s walking the rows. An image without pixels is refused from its header.
  CHECK_THAT(io_error([] { io::decode_image(bmp_header_only(0, 16498703), "no-columns.bmp"); }),
             Contains("cannot read no-columns.bmp: empty image (0 x 16498703 pixels)"));
  std::uint64_t w = 1, h = 1;
  CHECK(io::detail::image_size(bmp_header_only(5, 0), w, h) == "empty image (5 x 0 pixels)");
}

TEST_CASE("image: PNM, PSD, PIC and HDR files are not decoded (stb_image's PNM read past its buffer)",
          "[io][image][fuzz]") {
  // image_fuzz, second run on libjpeg / libpng: a 22-byte 16-bit PGM (maxval 555) made stb_image 2.27 convert its
  // samples as 8-bit ones and read past the buffer (ASan heap-buffer-overflow in stbi__convert_16_to_8). stb's PNM,
  // PSD, PIC and HDR decoders are no longer compiled: none of these is a training or evaluation image extension.
  std::string const file = test::fixture("fuzz/findings/pnm-16-bit-grey.pgm");
  CHECK_THAT(io_error([&] { io::load_image(file); }),
             Contains("cannot read") && Contains("pnm-16-bit-grey.pgm: unknown image type") && !Contains("\n"));
  CHECK_THAT(io_error([&] { io::decode_image_size(file_bytes(file), file); }), Contains("unknown image type"));
  CHECK_THAT(io_error([] { io::decode_image("P6\n2 1\n255\nabcdef", "eight-bit.ppm"); }),
             Contains("eight-bit.ppm: unknown image type"));
  CHECK_THAT(io_error([] { io::decode_image("8BPS" + std::string(40, '\0'), "x.psd"); }),
             Contains("unknown image type"));
  CHECK_THAT(io_error([] { io::decode_image("#?RADIANCE\n", "x.hdr"); }), Contains("unknown image type"));
}

TEST_CASE("image: truncated, corrupt and oversized JPEG / PNG files are one-line IoErrors naming the file",
          "[io][image]") {
  std::string const jpg = file_bytes(test::fixture("fuzz/image/baseline.jpg"));
  std::string const png = file_bytes(test::fixture("fuzz/image/rgb.png"));
  // Cut inside the header: an error. (Cut inside the entropy-coded data, libjpeg, like stb and PIL with
  // LOAD_TRUNCATED_IMAGES, fills the rest; that is not an error.)
  CHECK_THAT(io_error([&] { io::decode_image(jpg.substr(0, 100), "cut.jpg"); }),
             Contains("cannot read cut.jpg: ") && !Contains("\n"));
  CHECK_THAT(io_error([&] { io::decode_image(std::string_view(jpg).substr(0, 2), "soi.jpg"); }),
             Contains("cannot read soi.jpg"));
  CHECK_THAT(io_error([&] { io::decode_image(png.substr(0, png.size() / 2), "cut.png"); }),
             Contains("cannot read cut.png: ") && !Contains("\n"));
#if defined(SDLORA_WITH_LIBJPEG)
  CHECK_THAT(io_error([&] { io::decode_image(jpg.substr(0, 100), "cut.jpg"); }), Contains("corrupt JPEG ("));
#endif
#if defined(SDLORA_WITH_LIBPNG)  // stb_image does not check CRCs
  CHECK_THAT(io_error([&] { io::decode_image(png.substr(0, png.size() / 2), "cut.png"); }), Contains("corrupt PNG ("));
  std::string bad_crc = png;
  std::size_t const idat = bad_crc.find("IDAT");
  REQUIRE(idat != std::string::npos);
  bad_crc[idat + 6] = char(bad_crc[idat + 6] ^ 0x40);  // a data byte: the chunk's CRC no longer matches
  CHECK_THAT(io_error([&] { io::decode_image(bad_crc, "crc.png"); }), Contains("cannot read crc.png: corrupt PNG"));
#endif
  // A JPEG whose SOF claims 10000 x 10000 is refused from its header by the pixel limit, before any allocation.
  std::string bomb = jpg;
  std::size_t const sof = bomb.find("\xFF\xC0");
  REQUIRE(sof != std::string::npos);
  for (std::size_t i : {sof + 5, sof + 7}) {  // height, width (big-endian 16 bits)
    bomb[i] = char(10000 >> 8);
    bomb[i + 1] = char(10000 & 0xff);
  }
  CHECK_THAT(io_error([&] { io::decode_image(bomb, "bomb.jpg"); }),
             Contains("bomb.jpg is 10000 x 10000 = 100000000 pixels, over the limit of 89478485"));
  CHECK(io::decode_image_size(bomb, "bomb.jpg") == std::pair<Index, Index>{10000, 10000});
}

TEST_CASE("image: crop, center_crop, random_crop and hflip on a tiny image", "[io][image]") {
  auto const img = indexed(3, 5, 6);  // (3, 5, 6), value k*100 + y*10 + x
  auto c = io::crop(img, 1, 2, 3, 2);
  REQUIRE(c.shape() == Shape{3, 3, 2});
  CHECK(c.at({0, 0, 0}) == 12.0f);
  CHECK(c.at({2, 2, 1}) == 233.0f);
  CHECK_THROWS_AS(io::crop(img, 3, 0, 3, 2), ShapeError);

  // torchvision CenterCrop: top = round((5 - 2) / 2) = round(1.5) = 2 (ties to even), left = round((6 - 3) / 2) = 2
  auto cc = io::center_crop(img, 2, 3);
  CHECK(cc.at({0, 0, 0}) == 22.0f);
  auto cc2 = io::center_crop(img, 4, 5);  // top = round(0.5) = 0, left = round(0.5) = 0
  CHECK(cc2.at({1, 0, 0}) == 100.0f);
  auto same = io::center_crop(img, 5, 6);
  for (Index i = 0; i < img.numel(); ++i) REQUIRE(same(i) == img(i));

  auto f = io::hflip(img);
  CHECK(f.at({0, 0, 0}) == 5.0f);
  CHECK(f.at({2, 4, 5}) == 240.0f);
  auto ff = io::hflip(f);
  for (Index i = 0; i < img.numel(); ++i) REQUIRE(ff(i) == img(i));

  std::uint64_t s1 = 42, s2 = 42;
  bool moved = false;
  float first = -1;
  for (int i = 0; i < 20; ++i) {
    auto a = io::random_crop(img, 2, 3, s1);
    auto b = io::random_crop(img, 2, 3, s2);
    REQUIRE(a.shape() == Shape{3, 2, 3});
    for (Index j = 0; j < a.numel(); ++j) REQUIRE(a(j) == b(j));  // same seed, same crops
    float const top_left = a(0);  // = y*10 + x of the window origin
    REQUIRE(top_left >= 0.0f);
    REQUIRE(int(top_left) / 10 <= 3);  // top <= 5 - 2
    REQUIRE(int(top_left) % 10 <= 3);  // left <= 6 - 3
    REQUIRE(a.at({1, 1, 2}) == top_left + 100 + 10 + 2);
    if (i == 0) first = top_left;
    moved = moved || top_left != first;
  }
  CHECK(moved);  // 20 draws from 12 positions do not all coincide
}

TEST_CASE("image: resize", "[io][image]") {
  SECTION("a constant image stays constant with every filter") {
    Tensor<float> k(Shape{3, 10, 14});
    k.fill(0.375f);
    for (auto f : {io::Filter::Bilinear, io::Filter::Bicubic, io::Filter::Area})
      for (auto [h, w] : {std::pair<Index, Index>{5, 7}, {23, 31}}) {
        auto r = io::resize(k, h, w, f);
        REQUIRE(r.shape() == Shape{3, h, w});
        for (Index i = 0; i < r.numel(); ++i) REQUIRE(std::abs(r(i) - 0.375f) < 1e-6f);  // float rounding only
      }
  }
  SECTION("Area halving averages 2x2 blocks") {
    auto const img = indexed(2, 4, 6);
    auto r = io::resize(img, 2, 3, io::Filter::Area);
    // block (0, 0) of channel 1: (100 + 101 + 110 + 111) / 4 = 105.5; float sums of small integers: 1e-4 abs
    CHECK(std::abs(r.at({1, 0, 0}) - 105.5f) < 1e-4f);
    CHECK(std::abs(r.at({0, 1, 2}) - 29.5f) < 1e-4f);  // (24 + 25 + 34 + 35) / 4
  }
  SECTION("Bilinear doubling interpolates a ramp linearly away from the border") {
    Tensor<float> ramp(Shape{1, 1, 8});
    for (Index x = 0; x < 8; ++x) ramp(x) = float(x);
    auto r = io::resize(ramp, 1, 16, io::Filter::Bilinear);
    // output pixel centre u = (i + 0.5) / 2 - 0.5 in input coordinates, interior only (no clamping)
    for (Index i = 2; i < 14; ++i) CHECK(std::abs(r(i) - (float(i) + 0.5f) / 2.0f + 0.5f) < 1e-5f);
  }
  SECTION("resize_shorter_side keeps the aspect ratio like torchvision's Resize(int)") {
    CHECK(io::resize_shorter_side(Tensor<float>(Shape{3, 40, 60}), 20).shape() == Shape{3, 20, 30});
    CHECK(io::resize_shorter_side(Tensor<float>(Shape{3, 60, 41}), 20).shape() == Shape{3, 29, 20});
  }
}

TEST_CASE("image: make_grid tiles row by row", "[io][image]") {
  std::vector<Tensor<float>> images;
  for (int i = 0; i < 3; ++i) {
    Tensor<float> t(Shape{3, 2, 4});
    t.fill(float(i) / 4.0f);
    images.push_back(t);
  }
  auto g = io::make_grid(images, 2);
  REQUIRE(g.shape() == Shape{3, 4, 8});
  CHECK(g.at({0, 0, 0}) == 0.0f);
  CHECK(g.at({1, 1, 4}) == 0.25f);
  CHECK(g.at({2, 2, 3}) == 0.5f);
  CHECK(g.at({2, 3, 7}) == -1.0f);  // the empty fourth cell
  images.push_back(Tensor<float>(Shape{3, 2, 5}));
  CHECK_THROWS_AS(io::make_grid(images, 2), ShapeError);
}
