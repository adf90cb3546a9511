/// @file dataset_test.cpp
/// @brief Datasets (train/dataset.hpp): CSV / jsonl / caption files / kohya repeats / DreamBooth prompt / QuickDraw,
/// transforms and their draws against torch, bucketing, validation (skip vs strict), the resumable data order.
#include <algorithm>  // std::sort, std::count
#include <catch2/catch.hpp>
#include <cstdint>     // std::uint8_t
#include <filesystem>  // std::filesystem
#include <sdlora/train/dataset.hpp>
#include <set>      // std::set
#include <sstream>  // std::ostringstream
#include <string>   // std::string
#include <vector>   // std::vector

#include "data/temp_dir.hpp"
#include "support.hpp"

using namespace sdlora;
using sdlora::test::TempDir;
namespace fs = std::filesystem;

namespace {

/// An RGB image (3, h, w) in [0, 1] whose pixels encode their position: channel 0 = x / 255, channel 1 = y / 255,
/// channel 2 = a constant, so a crop's first pixel gives (top, left) exactly through 8-bit PNG storage.
Tensor<float, Cpu> position_image(Index h, Index w, float blue = 0.5f) {
  Tensor<float, Cpu> img(Shape{3, h, w});  // (3, h, w)
  for (Index y = 0; y < h; ++y)
    for (Index x = 0; x < w; ++x) {
      img((0 * h + y) * w + x) = float(x % 256) / 255.0f;
      img((1 * h + y) * w + x) = float(y % 256) / 255.0f;
      img((2 * h + y) * w + x) = blue;
    }
  return img;
}

void write_png(fs::path const& p, Index h, Index w, float blue = 0.5f) {
  io::save_png(p.string(), position_image(h, w, blue).view(), io::ImageRange::ZeroToOne);
}

void write_text(fs::path const& p, std::string const& s) { io::detail::write_file_bytes(p.string(), s, "[test]"); }

/// The 8-bit value of a [-1, 1] pixel.
int level(float v) { return int(std::lround((v + 1.0f) * 0.5f * 255.0f)); }

train::DatasetOptions quiet(std::string const& path, Index resolution = 32) {
  train::DatasetOptions o;
  o.path = path;
  o.resolution = resolution;
  o.log = nullptr;
  return o;
}

std::vector<std::string> captions_of(train::Dataset const& d) {
  std::vector<std::string> out;
  for (Index i = 0; i < d.size(); ++i) out.push_back(d.caption(i));
  return out;
}

}  // namespace

TEST_CASE("CSV parser: quotes, commas, line breaks, CRLF, BOM", "[data]") {
  auto rows = train::detail::parse_csv(
      "\xEF\xBB\xBF"
      "file_name,text\r\na.png,\"a red circle, flat style\"\r\n\"b.png\",\"say \"\"hi\"\"\"\n"
      "c.png,\"two\nlines\"\n\nd.png,\n",
      "t.csv");
  REQUIRE(rows.size() == 5);
  CHECK(rows[0] == std::vector<std::string>{"file_name", "text"});
  CHECK(rows[1] == std::vector<std::string>{"a.png", "a red circle, flat style"});
  CHECK(rows[2] == std::vector<std::string>{"b.png", "say \"hi\""});
  CHECK(rows[3] == std::vector<std::string>{"c.png", "two\nlines"});
  CHECK(rows[4] == std::vector<std::string>{"d.png", ""});  // an empty last field is kept
  CHECK_THROWS_WITH(train::detail::parse_csv("a,\"open\n", "t.csv"), Catch::Contains("unterminated"));
  CHECK_THROWS_WITH(train::detail::parse_csv("a,b\"c\"\n", "t.csv"), Catch::Contains("quote inside"));
}

TEST_CASE("Image folder with metadata.csv: captions, custom column, missing column error", "[data]") {
  TempDir dir("csv");
  write_png(dir / "a.png", 32, 32);
  fs::create_directories(dir / "sub");
  write_png(dir / "sub" / "b.png", 40, 48);
  write_text(dir / "metadata.csv",
             "file_name,text,extra\na.png,\"a red circle, flat style\",x\nsub/b.png,plain caption,y\n");
  auto d = train::open_dataset(quiet(dir.str()));
  REQUIRE(d.size() == 2);
  CHECK(captions_of(d) == std::vector<std::string>{"a red circle, flat style", "plain caption"});
  CHECK(d.source(1) == (dir / "sub" / "b.png").string());

  auto o = quiet(dir.str());
  o.caption_column = "extra";
  CHECK(captions_of(train::open_dataset(o)) == std::vector<std::string>{"x", "y"});

  o.caption_column = "caption";
  try {
    train::open_dataset(o);
    FAIL("a missing caption column must throw");
  } catch (FormatError const& e) {
    std::string const m = e.what();
    CHECK(m.find((dir / "metadata.csv").string()) != std::string::npos);
    CHECK(m.find("'caption'") != std::string::npos);
    CHECK(m.find("columns: file_name, text, extra") != std::string::npos);
  }
}

TEST_CASE("Image folder with metadata.jsonl", "[data]") {
  TempDir dir("jsonl");
  write_png(dir / "a.png", 32, 32);
  write_png(dir / "b.png", 32, 32);
  write_text(dir / "metadata.jsonl",
             "{\"file_name\": \"b.png\", \"text\": \"second, with comma\"}\n\n"
             "{\"file_name\": \"a.png\", \"text\": \"first \\\"quoted\\\"\"}\n");
  auto d = train::open_dataset(quiet(dir.str()));
  CHECK(captions_of(d) == std::vector<std::string>{"second, with comma", "first \"quoted\""});
  auto o = quiet(dir.str());
  o.caption_column = "prompt";
  CHECK_THROWS_WITH(train::open_dataset(o),
                    Catch::Contains("no string field 'prompt'") && Catch::Contains("fields: file_name, text"));
  write_text(dir / "metadata.csv", "file_name,text\na.png,x\n");
  CHECK_THROWS_AS(train::open_dataset(quiet(dir.str())), ConfigError);  // both files: ambiguous
}

TEST_CASE("Caption files and kohya repeat folders", "[data]") {
  TempDir dir("kohya");
  write_png(dir / "root.png", 32, 32);  // no caption file: empty caption, counted
  write_png(dir / "cap.png", 32, 32);
  write_text(dir / "cap.txt", "  a captioned image\n");
  fs::create_directories(dir / "3_sks dog");
  write_png(dir / "3_sks dog" / "x.png", 32, 32);  // no caption file: the folder's class words
  write_png(dir / "3_sks dog" / "y.png", 32, 32);
  write_text(dir / "3_sks dog" / "y.txt", "sks dog on grass");
  fs::create_directories(dir / "notes");  // not a repeat folder: ignored
  write_png(dir / "notes" / "z.png", 32, 32);
  auto d = train::open_dataset(quiet(dir.str()));
  CHECK(d.records().size() == 4);
  CHECK(d.size() == 2 + 3 * 2);
  CHECK(d.missing_captions() == 1);
  auto caps = captions_of(d);
  CHECK(std::count(caps.begin(), caps.end(), "sks dog") == 3);
  CHECK(std::count(caps.begin(), caps.end(), "sks dog on grass") == 3);
  CHECK(std::count(caps.begin(), caps.end(), "a captioned image") == 1);
  CHECK(std::count(caps.begin(), caps.end(), "") == 1);

  auto o = quiet(dir.str());
  o.kohya_repeats = false;
  CHECK(train::open_dataset(o).size() == 2);
  o.instance_prompt = "a photo of sks dog";  // DreamBooth: the root folder's images, one prompt
  auto db = train::open_dataset(o);
  CHECK(captions_of(db) == std::vector<std::string>{"a photo of sks dog", "a photo of sks dog"});
}

TEST_CASE("QuickDraw bitmaps: caption template, inversion, bicubic upscale, max count", "[data]") {
  TempDir dir("quickdraw");
  Tensor<std::uint8_t, Cpu> bitmaps(Shape{5, 784});  // (N, 784)
  for (Index n = 0; n < 5; ++n)
    for (Index y = 10; y < 18; ++y)  // a white 8 x 8 block, moved right by n
      for (Index x = 4 + n; x < 12 + n; ++x) bitmaps(n * 784 + y * 28 + x) = 255;
  io::save_npy((dir / "full_numpy_bitmap_hot_air_balloon.npy").string(), bitmaps);
  io::save_npy((dir / "cat.npy").string(), bitmaps);

  auto o = quiet(dir.str(), 64);
  o.max_per_class = 3;
  auto d = train::open_dataset(o);
  REQUIRE(d.size() == 6);
  CHECK(d.caption(0) == "a scribble of cat");
  CHECK(d.caption(3) == "a scribble of hot air balloon");
  CHECK(d.source(4) == (dir / "full_numpy_bitmap_hot_air_balloon.npy").string() + "#1");
  CHECK_FALSE(d.random_augmentation());

  TorchGenerator g(0);
  auto ex = d.get(1, g);
  REQUIRE(ex.image.shape() == Shape{3, 64, 64});
  // Row 1's block covers source pixels x 5..12, y 10..17 (centre (14, 9)), i.e. about (32, 21) at 64 px (scale 64/28):
  // white there, black far away, all channels equal, and the cubic's overshoot clamped to [-1, 1].
  auto px = [&](Tensor<float, Cpu> const& im, Index c, Index y, Index x) { return im((c * 64 + y) * 64 + x); };
  CHECK(px(ex.image, 0, 32, 21) == Approx(1.0f));
  CHECK(px(ex.image, 0, 5, 60) == Approx(-1.0f));
  float lo = 1, hi = -1;
  for (Index i = 0; i < ex.image.numel(); ++i) {
    lo = std::min(lo, ex.image(i));
    hi = std::max(hi, ex.image(i));
  }
  CHECK(lo == -1.0f);
  CHECK(hi == 1.0f);
  for (Index i = 0; i < 64 * 64; ++i) REQUIRE(ex.image(i) == ex.image(64 * 64 + i));

  o.invert = true;
  o.caption_template = "{} doodle";
  auto inv = train::open_dataset(o);
  CHECK(inv.caption(0) == "cat doodle");
  auto ex_inv = inv.get(1, g);
  CHECK(px(ex_inv.image, 0, 32, 21) == Approx(-1.0f));
  CHECK(px(ex_inv.image, 0, 5, 60) == Approx(1.0f));
  // Inversion is exact in [-1, 1]: (255 - u) / 255 * 2 - 1 = -(u / 255 * 2 - 1), and bicubic is linear.
  double worst = 0;
  for (Index i = 0; i < ex.image.numel(); ++i) worst = std::max(worst, double(std::abs(ex.image(i) + ex_inv.image(i))));
  CHECK(worst < 1e-5);  // float rounding of the two resizes

  io::save_npy((dir / "bad.npy").string(), Tensor<std::uint8_t, Cpu>(Shape{2, 28, 28}));
  CHECK_THROWS_WITH(train::open_dataset(o), Catch::Contains("bad.npy") && Catch::Contains("(N, 784)"));
}

TEST_CASE("Random crop and flip draw exactly what torchvision draws from the same seed", "[data]") {
  // Fixture: torch.Generator().manual_seed(seed); RandomCrop.get_params; RandomHorizontalFlip; a dropout uniform.
  io::SafetensorsFile f(test::fixture("data/transform_draws.safetensors"));
  auto const cases = f.load<std::int64_t>("cases");    // (K, 8): seed h w th tw top left flip
  auto const drop = f.load<float>("dropout_uniform");  // (K,)
  TempDir dir("crops");
  Index const k = cases.dim(0);
  REQUIRE(k >= 16);
  int flips = 0, moved = 0;
  for (Index c = 0; c < k; ++c) {
    auto at = [&](int j) { return cases(c * 8 + j); };
    Index const h = at(1), w = at(2), th = at(3);
    fs::path const sub = dir / ("case" + std::to_string(c));
    fs::create_directories(sub);
    write_png(sub / "img.png", h, w);
    auto o = quiet(sub.string(), th);
    o.instance_prompt = "x";
    o.center_crop = false;
    o.random_flip = true;
    o.caption_dropout = 0.5;
    auto d = train::open_dataset(o);
    TorchGenerator g(std::uint64_t(at(0)));
    auto ex = d.get(0, g);
    REQUIRE(ex.image.shape() == Shape{3, th, th});
    bool const flip = at(7) != 0;
    Index const top = at(5), left = at(6);
    // The crop's corner pixel encodes its source position; a flipped crop has it at the right edge.
    Index const x0 = flip ? th - 1 : 0;
    CHECK(level(ex.image((0 * th + 0) * th + x0)) == int(left % 256));
    CHECK(level(ex.image((1 * th + 0) * th + x0)) == int(top % 256));
    CHECK(ex.caption == (drop(c) < 0.5f ? "" : "x"));
    // SDXL's micro-conditioning: the source size and the crop's corner (train_dreambooth_lora_sdxl.py).
    CHECK(ex.geometry.original_height == h);
    CHECK(ex.geometry.original_width == w);
    CHECK(ex.geometry.crop_top == top);
    CHECK(ex.geometry.crop_left == left);
    flips += flip;
    moved += top + left > 0;
  }
  CHECK(flips > 0);
  CHECK(flips < k);  // both outcomes occur, so the check can tell them apart
  CHECK(moved > 0);
}

TEST_CASE("Resize + centre crop: shorter side to the resolution, deterministic without draws", "[data]") {
  TempDir dir("center");
  write_png(dir / "wide.png", 48, 96);
  auto o = quiet(dir.str(), 24);
  o.instance_prompt = "p";
  auto d = train::open_dataset(o);
  TorchGenerator g1(1), g2(99);
  auto a = d.get(0, g1), b = d.get(0, g2);
  REQUIRE(a.image.shape() == Shape{3, 24, 24});
  CHECK(test::rel_l2(a.image, b.image) == 0.0);  // no randomness: the generator does not matter
  CHECK(g1.state().engine.next == TorchGenerator(1).state().engine.next);  // and is not advanced
  // 48x96 -> 24x48 (scale 1/2), centre crop left = 12: column 0 of the crop is source column 24..25 -> x ~ 24.5.
  double const x_first = (a.image(0) + 1.0) / 2.0 * 255.0;
  CHECK(x_first == Approx(24.5).margin(0.6));
  // The geometry SDXL's time ids take: from get(), and from the header alone (what cached latents use).
  for (auto const& geo : {a.geometry, d.geometry(0)}) {
    CHECK(geo.original_height == 48);
    CHECK(geo.original_width == 96);
    CHECK(geo.crop_top == 0);
    CHECK(geo.crop_left == 12);
  }
}

TEST_CASE("Aspect-ratio buckets: kohya's list at 512 and assignment", "[data]") {
  auto const b = train::make_buckets(512);
  std::set<std::pair<Index, Index>> got;  // (width, height)
  for (auto const& x : b) got.insert({x.width, x.height});
  std::set<std::pair<Index, Index>> const kohya = {
      {256, 1024}, {256, 832}, {256, 896}, {256, 960}, {320, 704}, {320, 768}, {384, 640}, {448, 576}, {512, 512},
      {576, 448},  {640, 384}, {704, 320}, {768, 320}, {832, 256}, {896, 256}, {960, 256}, {1024, 256}};
  CHECK(got == kohya);
  CHECK(b[std::size_t(train::closest_bucket(b, 768, 1024))] == train::Bucket{448, 576});  // 4:3 landscape
  CHECK(b[std::size_t(train::closest_bucket(b, 1000, 1000))] == train::Bucket{512, 512});
  CHECK(b[std::size_t(train::closest_bucket(b, 1920, 1080))] == train::Bucket{640, 384});  // 9:16 portrait
}
