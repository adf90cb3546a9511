/// @file sample_data_test.cpp
/// @brief The procedural sample data: determinism (same seed, same bytes), image statistics (not blank, classes
/// differ), and that the written folders open as datasets with the expected captions.
#include <catch2/catch.hpp>
#include <cmath>       // std::sqrt
#include <filesystem>  // std::filesystem
#include <sdlora/train/dataset.hpp>
#include <sdlora/train/sample_data.hpp>
#include <string>  // std::string

#include "data/temp_dir.hpp"
#include "support.hpp"

using namespace sdlora;
using sdlora::test::TempDir;
namespace fs = std::filesystem;

TEST_CASE("Scribbles: deterministic, anti-aliased white strokes on black, distinct classes", "[data]") {
  auto const a = train::make_scribbles("star", 20, 7), b = train::make_scribbles("star", 20, 7);
  REQUIRE(a.shape() == Shape{20, 784});
  CHECK(std::equal(a.data(), a.data() + a.numel(), b.data()));
  auto const c = train::make_scribbles("star", 20, 8);
  CHECK_FALSE(std::equal(a.data(), a.data() + a.numel(), c.data()));
  auto const prefix = train::make_scribbles("star", 5, 7);  // more drawings keep the first ones
  CHECK(std::equal(prefix.data(), prefix.data() + prefix.numel(), a.data()));

  for (auto const& cls : train::scribble_classes()) {
    auto const s = train::make_scribbles(cls, 10, 0);
    for (Index n = 0; n < 10; ++n) {
      int lit = 0, partial = 0, border = 0, max = 0;
      for (Index i = 0; i < 784; ++i) {
        int const v = s(n * 784 + i);
        lit += v > 127;
        partial += v > 0 && v < 255;
        max = std::max(max, v);
        Index const y = i / 28, x = i % 28;
        if (y == 0 || x == 0 || y == 27 || x == 27) border += v > 0;
      }
      INFO(cls << " #" << n << ": lit " << lit << ", partial " << partial << ", border " << border);
      CHECK(max == 255);
      CHECK(lit >= 30);      // a stroke, not a dot
      CHECK(lit <= 350);     // strokes, not a filled page (784 pixels)
      CHECK(partial >= 10);  // anti-aliased edges
      CHECK(border == 0);    // stays inside the frame, as QuickDraw's centred bitmaps
    }
  }
  // Class means differ: the images carry the class.
  auto mean_image = [](std::string const& cls) {
    auto const s = train::make_scribbles(cls, 50, 1);
    std::vector<double> m(784, 0.0);
    for (Index n = 0; n < 50; ++n)
      for (Index i = 0; i < 784; ++i) m[std::size_t(i)] += s(n * 784 + i) / 50.0;
    return m;
  };
  auto const circle = mean_image("circle"), zigzag = mean_image("zigzag");
  double d = 0, n = 0;
  for (std::size_t i = 0; i < 784; ++i) {
    d += (circle[i] - zigzag[i]) * (circle[i] - zigzag[i]);
    n += circle[i] * circle[i];
  }
  CHECK(std::sqrt(d / n) > 0.3);
  CHECK_THROWS_AS(train::make_scribbles("dragon", 1, 0), ConfigError);
}

TEST_CASE("Scenes: colourful, captioned, deterministic", "[data]") {
  for (Index i = 0; i < 12; ++i) {
    auto const s = train::make_scene(i, 32, 5);
    REQUIRE(s.image.shape() == Shape{3, 32, 32});
    double mean = 0, sq = 0;
    for (Index k = 0; k < s.image.numel(); ++k) {
      mean += s.image(k);
      sq += double(s.image(k)) * s.image(k);
    }
    mean /= double(s.image.numel());
    double const stddev = std::sqrt(sq / double(s.image.numel()) - mean * mean);
    INFO(s.caption << ": std " << stddev);
    CHECK(stddev > 0.05);  // not a blank image
    CHECK(!s.caption.empty());
    CHECK(test::rel_l2(train::make_scene(i, 32, 5).image, s.image) == 0.0);
  }
  CHECK(train::make_scene(0, 32, 5).caption.find("circle on a") != std::string::npos);
  CHECK(train::make_scene(3, 32, 5).caption.find("sun over green hills") != std::string::npos);
}

TEST_CASE("write_sample_data: same seed, same bytes; the folders open as datasets", "[data]") {
  TempDir a("samples-a"), b("samples-b"), c("samples-c");
  train::SampleDataOptions o;
  o.seed = 42;
  o.images = 8;
  o.image_size = 32;
  o.scribbles_per_class = 12;
  auto const fa = train::write_sample_data(a.str(), o);
  auto const fb = train::write_sample_data(b.str(), o);
  o.seed = 43;
  auto const fc = train::write_sample_data(c.str(), o);
  REQUIRE(fa.files.size() == 5 + 8 + 1);
  int differ = 0;
  for (std::size_t i = 0; i < fa.files.size(); ++i) {
    std::string const x = io::detail::read_file_bytes(fa.files[i], "[t]");
    CHECK(x == io::detail::read_file_bytes(fb.files[i], "[t]"));
    differ += x != io::detail::read_file_bytes(fc.files[i], "[t]");
  }
  CHECK(differ >= 12);  // another seed changes every drawing (metadata.csv may coincide)

  train::DatasetOptions images;
  images.path = fa.image_dir;
  images.resolution = 32;
  images.log = nullptr;
  auto di = train::open_dataset(images);
  CHECK(di.size() == 8);
  CHECK(di.skipped().empty());
  CHECK(di.caption(0) == train::make_scene(0, 32, 42).caption);  // quoted commas survive the CSV
  CHECK(di.caption(0).find(',') != std::string::npos);
  CHECK(io::read_png_text(di.source(1)).at(0).second == di.caption(1));
  TorchGenerator g(0);
  auto ex = di.get(0, g);
  auto const scene = train::make_scene(0, 32, 42);
  Tensor<float, Cpu> expected = scene.image;
  for (Index i = 0; i < expected.numel(); ++i) expected(i) = expected(i) * 2.0f - 1.0f;
  CHECK(test::rel_l2(ex.image, expected) < 0.01);  // 8-bit PNG quantisation only (<= 1/255 per pixel)

  train::DatasetOptions qd;
  qd.path = fa.quickdraw_dir;
  qd.resolution = 32;
  qd.log = nullptr;
  auto dq = train::open_dataset(qd);
  CHECK(dq.size() == 5 * 12);
  CHECK(dq.caption(0) == "a scribble of circle");
  CHECK(dq.caption(59) == "a scribble of zigzag");
}
