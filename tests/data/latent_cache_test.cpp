/// @file latent_cache_test.cpp
/// @brief FNV-1a known answers, content hashes of examples, and the on-disk LatentCache (hit, miss, invalidation).
#include <catch2/catch.hpp>
#include <filesystem>  // std::filesystem
#include <sdlora/train/dataset.hpp>
#include <sdlora/train/latent_cache.hpp>
#include <string>  // std::string

#include "data/temp_dir.hpp"
#include "support.hpp"

using namespace sdlora;
using sdlora::test::TempDir;
namespace fs = std::filesystem;

TEST_CASE("FNV-1a 64: published test vectors", "[data]") {
  // From the FNV reference test suite (Landon Curt Noll, fnv/test_fnv.c, FNV-1a 64-bit).
  CHECK(train::fnv1a64("") == 0xcbf29ce484222325ull);
  CHECK(train::fnv1a64("a") == 0xaf63dc4c8601ec8cull);
  CHECK(train::fnv1a64("foobar") == 0x85944171f73967e8ull);
  // Incremental feeding equals one call; length prefixes separate ("ab", "c") from ("a", "bc").
  CHECK(train::Fnv1a64().bytes("foo").bytes("bar").digest() == train::fnv1a64("foobar"));
  CHECK(train::Fnv1a64().text("ab").text("c").digest() != train::Fnv1a64().text("a").text("bc").digest());
  CHECK(train::key_hex(0xaf63dc4c8601ec8cull) == "af63dc4c8601ec8c");
}

TEST_CASE("Example content hashes change with the file, the resolution and the augmentation settings", "[data]") {
  TempDir dir("hash");
  Tensor<float, Cpu> img(Shape{3, 20, 20});  // (3, 20, 20)
  for (Index i = 0; i < img.numel(); ++i) img(i) = float(i % 7) / 6.0f;
  io::save_png((dir / "a.png").string(), img.view(), io::ImageRange::ZeroToOne);
  train::DatasetOptions o;
  o.path = dir.str();
  o.resolution = 16;
  o.instance_prompt = "p";
  o.log = nullptr;
  auto const h0 = train::open_dataset(o).content_hash(0);
  CHECK(train::open_dataset(o).content_hash(0) == h0);  // stable
  auto o2 = o;
  o2.resolution = 12;
  CHECK(train::open_dataset(o2).content_hash(0) != h0);
  o2 = o;
  o2.random_flip = true;
  CHECK(train::open_dataset(o2).content_hash(0) != h0);
  o2 = o;
  o2.center_crop = false;
  CHECK(train::open_dataset(o2).content_hash(0) != h0);
  o2 = o;
  o2.filter = io::Filter::Bicubic;
  CHECK(train::open_dataset(o2).content_hash(0) != h0);
  o2 = o;
  o2.instance_prompt = "another caption";  // captions do not change the latent
  CHECK(train::open_dataset(o2).content_hash(0) == h0);
  img(5) = 0.0f;  // one pixel changed in the file
  io::save_png((dir / "a.png").string(), img.view(), io::ImageRange::ZeroToOne);
  CHECK(train::open_dataset(o).content_hash(0) != h0);
  CHECK(train::latent_key(h0, "vae-a") != train::latent_key(h0, "vae-b"));
}

TEST_CASE("LatentCache: store, flush, reopen (hit), other keys (miss), another VAE (invalidated)", "[data]") {
  TempDir dir("cache");
  std::string const path = (dir / "cache" / "latents.safetensors").string();
  auto const lat1 = test::random_tensor<float>(Shape{4, 3, 2}, 1);  // (C, h, w)
  auto const lat2 = test::random_tensor<float>(Shape{4, 2, 3}, 2);
  std::uint64_t const k1 = train::latent_key(111, "vae-a"), k2 = train::latent_key(222, "vae-a");
  {
    train::LatentCache c(path, "vae-a");
    CHECK(c.size() == 0);
    CHECK_FALSE(c.lookup(k1).has_value());
    c.store(k1, lat1, "a.png");
    c.store(k2, lat2, "b.npy#3");
    auto hit = c.lookup(k1);  // pending entries are found before the flush
    REQUIRE(hit.has_value());
    CHECK(test::rel_l2(*hit, lat1) == 0.0);
    CHECK(c.hits() == 1);
    CHECK(c.misses() == 1);
    c.flush();
  }
  REQUIRE(fs::exists(path));
  {
    io::SafetensorsFile f(path);  // the index: key -> source in the metadata
    CHECK(f.metadata().at("vae") == "vae-a");
    CHECK(f.metadata().at("index").find("b.npy#3") != std::string::npos);
    CHECK(f.contains(train::key_hex(k2)));
  }
  {
    train::LatentCache c(path, "vae-a");
    CHECK(c.size() == 2);
    auto h2 = c.lookup(k2);
    REQUIRE(h2.has_value());
    CHECK(h2->shape() == Shape{4, 2, 3});
    CHECK(test::rel_l2(*h2, lat2) == 0.0);                               // bit-exact round trip (float32 on disk)
    CHECK_FALSE(c.lookup(train::latent_key(111, "vae-b")).has_value());  // same content, other VAE: other key
    c.flush(/*drop_untouched=*/true);                                    // keeps only k2, the entry read this session
  }
  {
    train::LatentCache c(path, "vae-a");
    CHECK(c.size() == 1);
    CHECK_FALSE(c.lookup(k1).has_value());
    CHECK(c.lookup(k2).has_value());
  }
  {
    train::LatentCache c(path, "vae-b");  // written for vae-a: every entry is stale
    CHECK(c.invalidated() == 1);
    CHECK(c.size() == 0);
    CHECK_FALSE(c.lookup(k2).has_value());
    c.store(train::latent_key(222, "vae-b"), lat1, "b.npy#3");
  }  // the destructor flushes
  {
    train::LatentCache c(path, "vae-b");
    CHECK(c.size() == 1);
    CHECK(c.lookup(train::latent_key(222, "vae-b")).has_value());
  }
  io::detail::write_file_bytes((dir / "other.safetensors").string(), "", "[test]");
  io::SafetensorsWriter w;
  w.add("x", lat1);
  w.write((dir / "other.safetensors").string());
  CHECK_THROWS_WITH(train::LatentCache((dir / "other.safetensors").string(), "vae-a"),
                    Catch::Contains("not an sdlora latent cache"));
}
