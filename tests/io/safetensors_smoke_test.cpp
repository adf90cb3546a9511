#include <catch2/catch.hpp>

#include <cstdio>

#include "support.hpp"

using namespace sdlora;

TEST_CASE("safetensors round trip keeps values, dtypes and metadata", "[io][safetensors]") {
  Tensor<float> a(Shape{2, 3});
  for (Index i = 0; i < a.numel(); ++i) a(i) = 0.25f * float(i) - 1.0f;
  io::SafetensorsWriter w;
  w.add("a", a);
  w.add_as<half, float>("a_half", a.view());
  w.set_metadata("format", "pt");
  std::string const path = "roundtrip_smoke.safetensors";
  w.write(path);
  io::SafetensorsFile f(path);
  CHECK(f.size() == 2);
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.info("a_half").dtype == DType::F16);
  auto b = f.load<float>("a");
  auto c = f.load<double>("a_half");
  for (Index i = 0; i < a.numel(); ++i) {
    CHECK(b(i) == a(i));
    CHECK(c(i) == double(a(i)));  // these values are exact in half
  }
  CHECK_THROWS_WITH(f.load<float>("a", Shape{3, 2}), Catch::Contains("'a'") && Catch::Contains("(2, 3)"));
  CHECK_THROWS_WITH(f.load<float>("nope"), Catch::Contains("nope"));
  std::remove(path.c_str());
}
