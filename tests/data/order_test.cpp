/// @file order_test.cpp
/// @brief Validation of dataset files (skip vs strict, tiny images, empty folders), bucketed datasets and batches,
/// and the resumable DataOrder.
#include <algorithm>  // std::sort
#include <catch2/catch.hpp>
#include <filesystem>  // std::filesystem
#include <map>         // std::map
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

void write_order_png(fs::path const& p, Index h, Index w) {
  Tensor<float, Cpu> img(Shape{3, h, w});  // (3, h, w)
  for (Index i = 0; i < img.numel(); ++i) img(i) = float(i % 17) / 16.0f;
  io::save_png(p.string(), img.view(), io::ImageRange::ZeroToOne);
}

train::DatasetOptions options(std::string const& path, Index resolution = 16) {
  train::DatasetOptions o;
  o.path = path;
  o.resolution = resolution;
  o.instance_prompt = std::string("p");  // not a literal: GCC 12 -Wrestrict false positive (PR 105329)
  o.log = nullptr;
  return o;
}

}  // namespace

TEST_CASE("Unreadable and tiny images: skipped with a warning, or IoError naming the file with strict", "[data]") {
  TempDir dir("validate");
  write_order_png(dir / "a_good.png", 16, 16);
  io::detail::write_file_bytes((dir / "b_garbage.png").string(), "this is not a PNG at all \x01\x02\x03", "[test]");
  write_order_png(dir / "c_tiny.png", 4, 30);
  write_order_png(dir / "d_small.png", 12, 12);

  std::ostringstream log;
  auto o = options(dir.str());
  o.log = &log;
  auto d = train::open_dataset(o);
  CHECK(d.size() == 2);  // a_good and d_small (12 >= 8)
  REQUIRE(d.skipped().size() == 2);
  CHECK(d.skipped()[0].path == (dir / "b_garbage.png").string());
  CHECK(d.skipped()[0].reason.find("not a readable image") != std::string::npos);
  CHECK(d.skipped()[1].path == (dir / "c_tiny.png").string());
  CHECK(d.skipped()[1].reason.find("too small (30x4") != std::string::npos);
  CHECK(log.str().find("b_garbage.png") != std::string::npos);
  CHECK(log.str().find("2 file(s) skipped") != std::string::npos);

  o.min_size = 14;
  CHECK(train::open_dataset(o).size() == 1);  // d_small is below the option's minimum now

  o.strict = true;
  CHECK_THROWS_AS(train::open_dataset(o), IoError);
  CHECK_THROWS_WITH(train::open_dataset(o), Catch::Contains("b_garbage.png"));

  // metadata naming a file that is not there: skipped, or strict IoError.
  TempDir meta("validate-meta");
  write_order_png(meta / "x.png", 16, 16);
  io::detail::write_file_bytes((meta / "metadata.csv").string(), "file_name,text\nx.png,a\nmissing.png,b\n", "[t]");
  auto m = options(meta.str());
  m.instance_prompt.clear();
  CHECK(train::open_dataset(m).skipped().at(0).reason == "no such file");
  m.strict = true;
  CHECK_THROWS_WITH(train::open_dataset(m), Catch::Contains("missing.png"));
}

TEST_CASE("An empty dataset names the folder", "[data]") {
  TempDir dir("empty");
  CHECK_THROWS_WITH(train::open_dataset(options(dir.str())), Catch::Contains("no usable examples in " + dir.str()));
  io::detail::write_file_bytes((dir / "broken.jpg").string(), "garbage", "[test]");
  CHECK_THROWS_WITH(train::open_dataset(options(dir.str())),
                    Catch::Contains("1 skipped") && Catch::Contains("broken.jpg"));
  CHECK_THROWS_AS(train::open_dataset(options((dir / "nope").string())), ConfigError);
}

TEST_CASE("Bucketed dataset: images keep their aspect ratio and batches come from one bucket", "[data]") {
  TempDir dir("buckets");
  // resolution 32, step 8 -> buckets with sides in [16, 64]; three aspect ratios.
  for (int i = 0; i < 5; ++i) write_order_png(dir / ("wide" + std::to_string(i) + ".png"), 30, 60);
  for (int i = 0; i < 3; ++i) write_order_png(dir / ("tall" + std::to_string(i) + ".png"), 64, 32);
  for (int i = 0; i < 2; ++i) write_order_png(dir / ("square" + std::to_string(i) + ".png"), 40, 40);
  auto o = options(dir.str(), 32);
  o.bucketing = true;
  o.bucket_step = 8;
  auto d = train::open_dataset(o);
  REQUIRE(d.size() == 10);
  std::map<std::string, train::Bucket> by_name;
  for (Index i = 0; i < d.size(); ++i) by_name[fs::path(d.source(i)).stem().string().substr(0, 4)] = d.target_size(i);
  // Buckets (w x h): 16x64, 24x40, 32x32, 40x24, 48x16, 56x16, 64x16 and transposes; 2:1 is closest to 40x24 (5:3).
  CHECK(by_name["wide"] == train::Bucket{24, 40});
  CHECK(by_name["tall"] == train::Bucket{40, 24});
  CHECK(by_name["squa"] == train::Bucket{32, 32});

  TorchGenerator g(3);
  for (Index i = 0; i < d.size(); ++i) {
    auto ex = d.get(i, g);
    train::Bucket const b = d.target_size(i);
    CHECK(ex.image.shape() == Shape{3, b.height, b.width});
  }

  Index const batch = 2;
  TorchGenerator og(11);
  auto order = train::epoch_order(d, og, batch);
  REQUIRE(order.size() % std::size_t(batch) == 0);
  std::set<std::int64_t> seen(order.begin(), order.end());
  CHECK(seen.size() == 10);          // every example appears (the odd buckets are filled up with repeats)
  CHECK(order.size() == 6 + 4 + 2);  // wide 5 -> 6, tall 3 -> 4, square 2
  for (std::size_t b = 0; b < order.size(); b += std::size_t(batch))
    CHECK(d.bucket_of(order[b]) == d.bucket_of(order[b + 1]));
}

TEST_CASE("DataOrder: epochs are permutations; a restored order continues the same sequence", "[data]") {
  TempDir dir("order");
  for (int i = 0; i < 7; ++i) write_order_png(dir / ("im" + std::to_string(i) + ".png"), 16, 16);
  auto d = train::open_dataset(options(dir.str()));
  REQUIRE(d.size() == 7);

  train::DataOrder reference(1234);
  std::vector<std::int64_t> sequence;
  for (int i = 0; i < 30; ++i) sequence.push_back(reference.next(d));
  CHECK(reference.epoch() == 4);
  for (int e = 0; e < 4; ++e) {  // each full epoch is a permutation
    std::vector<std::int64_t> epoch(sequence.begin() + 7 * e, sequence.begin() + 7 * (e + 1));
    std::sort(epoch.begin(), epoch.end());
    CHECK(epoch == std::vector<std::int64_t>{0, 1, 2, 3, 4, 5, 6});
  }
  CHECK(std::vector<std::int64_t>(sequence.begin(), sequence.begin() + 7) !=
        std::vector<std::int64_t>(sequence.begin() + 7, sequence.begin() + 14));  // epochs differ

  for (int stop : {0, 5, 7, 13, 20}) {
    train::DataOrder a(1234);
    for (int i = 0; i < stop; ++i) a.next(d);
    // Save (what TrainingState keeps), then continue in a fresh object.
    std::vector<std::int64_t> const saved = a.order();
    std::int64_t const pos = a.position(), epoch = a.epoch();
    train::DataOrder b(1234);
    b.restore(saved, pos, epoch);
    for (int i = stop; i < 30; ++i) REQUIRE(b.next(d) == sequence[std::size_t(i)]);
  }
  train::DataOrder other(99);
  std::vector<std::int64_t> s2;
  for (int i = 0; i < 7; ++i) s2.push_back(other.next(d));
  CHECK(s2 != std::vector<std::int64_t>(sequence.begin(), sequence.begin() + 7));  // the seed matters
  CHECK_THROWS_AS(train::DataOrder(1).restore({0, 1}, 3, 0), ShapeError);
}

TEST_CASE("epoch_order without buckets is torch.randperm of the generator", "[data]") {
  io::SafetensorsFile f(test::fixture("data/transform_draws.safetensors"));
  auto const cases = f.load<std::int64_t>("cases");
  auto const perms = f.load<std::int64_t>("randperm10");  // (S, 10)
  TempDir dir("perm");
  for (int i = 0; i < 10; ++i) write_order_png(dir / ("im" + std::to_string(i) + ".png"), 16, 16);
  auto d = train::open_dataset(options(dir.str()));
  for (Index s = 0; s < perms.dim(0); ++s) {
    TorchGenerator g(std::uint64_t(cases(s * 4 * 8)));  // the fixture's seeds, 4 cases per seed
    auto order = train::epoch_order(d, g);
    for (Index i = 0; i < 10; ++i) CHECK(order[std::size_t(i)] == perms(s * 10 + i));
  }
}
