/// @file npy_test.cpp
/// @brief The .npy reader against files written by numpy (every supported dtype, v1 and v2 headers, a QuickDraw-like
/// uint8 (3, 784) array) and by save_npy, and its errors. All comparisons are exact: the values are exact in every
/// dtype involved.
#include <catch2/catch.hpp>

#include <cstdint>  // std::uint8_t
#include <fstream>  // std::ofstream
#include <string>   // std::string

#include "support.hpp"

using namespace sdlora;
using Catch::Matchers::Contains;

namespace {

std::string npy_error(std::string const& path) {
  try {
    io::NpyFile f(path);
  } catch (FormatError const& e) {
    return e.what();
  } catch (std::exception const& e) {
    FAIL("expected FormatError, got: " << e.what());
  }
  FAIL("expected FormatError for " << path);
  return {};
}

/// A v1 .npy file with the given header dict text and data bytes.
std::string write_npy(std::string const& name, std::string dict, std::string const& data, std::string magic = "") {
  std::string const path = "npy_" + name + ".npy";
  dict += '\n';
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << (magic.empty() ? std::string("\x93NUMPY\x01\x00", 8) : magic);
  out.put(char(dict.size() & 0xff));
  out.put(char(dict.size() >> 8));
  out << dict << data;
  return path;
}

}  // namespace

TEST_CASE("npy: every dtype numpy writes reads back exactly", "[io][npy]") {
  double const values[6] = {-3, -1, 0, 1, 2, 120};
  for (char const* code : {"i1", "i4", "i8", "f4", "f8", "f4_v2"}) {
    INFO(code);
    io::NpyFile f(test::fixture(std::string("io/values_") + code + ".npy"));
    CHECK(f.shape() == Shape{2, 3});
    auto d = f.load<double>();
    auto s = f.load<float>();
    for (Index i = 0; i < 6; ++i) {
      CHECK(d(i) == values[i]);
      CHECK(s(i) == float(values[i]));
    }
  }
  auto u = io::load_npy<std::uint8_t>(test::fixture("io/values_u1.npy"));
  CHECK(u(0) == 3);
  CHECK(u(5) == 120);
  auto b = io::load_npy<float>(test::fixture("io/values_bool.npy"));
  float const expect_bool[6] = {0, 0, 0, 1, 1, 1};
  for (Index i = 0; i < 6; ++i) CHECK(b(i) == expect_bool[i]);
  CHECK(io::NpyFile(test::fixture("io/values_bool.npy")).dtype() == DType::BOOL);
}

TEST_CASE("npy: a QuickDraw-like uint8 (3, 784) file from numpy", "[io][npy]") {
  io::NpyFile f(test::fixture("io/quickdraw_u8.npy"));
  REQUIRE(f.shape() == Shape{3, 784});
  CHECK(f.descr() == "|u1");
  auto all = f.load<std::uint8_t>();
  // bitmap 0: a vertical bar in rows 4..23, columns 13..14
  CHECK(all.at({0, 4 * 28 + 13}) == 255);
  CHECK(all.at({0, 23 * 28 + 14}) == 255);
  CHECK(all.at({0, 3 * 28 + 13}) == 0);
  CHECK(all.at({0, 4 * 28 + 12}) == 0);
  // bitmap 1: a horizontal bar of 200 in rows 13..14, columns 4..23
  CHECK(all.at({1, 13 * 28 + 4}) == 200);
  CHECK(all.at({1, 14 * 28 + 23}) == 200);
  CHECK(all.at({1, 12 * 28 + 4}) == 0);
  // rows [1, 3) read alone equal the same rows of the whole
  auto rows = f.load_rows<float>(1, 3);
  REQUIRE(rows.shape() == Shape{2, 784});
  for (Index i = 0; i < rows.numel(); ++i) REQUIRE(rows(i) == float(all(784 + i)));
  // and a save_npy round trip reproduces the bytes numpy wrote
  io::save_npy("npy_quickdraw_copy.npy", all);
  std::ifstream a(test::fixture("io/quickdraw_u8.npy"), std::ios::binary), c("npy_quickdraw_copy.npy", std::ios::binary);
  std::string const bytes_a((std::istreambuf_iterator<char>(a)), std::istreambuf_iterator<char>());
  std::string const bytes_c((std::istreambuf_iterator<char>(c)), std::istreambuf_iterator<char>());
  CHECK(bytes_a == bytes_c);
}

TEST_CASE("npy: save_npy round trips every dtype and rank", "[io][npy]") {
  auto const t = test::random_tensor<float>(Shape{2, 3, 4}, 7);
  io::save_npy("npy_f32.npy", t);
  auto back = io::load_npy<float>("npy_f32.npy");
  REQUIRE(back.shape() == t.shape());
  for (Index i = 0; i < t.numel(); ++i) CHECK(back(i) == t(i));

  Tensor<std::int64_t> v(Shape{5});
  for (Index i = 0; i < 5; ++i) v(i) = (std::int64_t(1) << 40) - i;
  io::save_npy("npy_i64.npy", v);
  auto vb = io::load_npy<std::int64_t>("npy_i64.npy");
  REQUIRE(vb.shape() == Shape{5});
  CHECK(vb(4) == (std::int64_t(1) << 40) - 4);

  Tensor<double> s(Shape{});
  s(0) = 0.1;
  io::save_npy("npy_scalar.npy", s);
  auto sb = io::load_npy<double>("npy_scalar.npy");
  CHECK(sb.rank() == 0);
  CHECK(sb(0) == 0.1);

  Tensor<half> h(Shape{0, 2});
  io::save_npy("npy_empty.npy", h);
  CHECK(io::load_npy<float>("npy_empty.npy").shape() == Shape{0, 2});
}

TEST_CASE("npy: errors name the file", "[io][npy]") {
  SECTION("bad magic") {
    std::string const path = write_npy("bad_magic", "{}", "", std::string("\x93NUMPZ\x01\x00", 8));
    CHECK_THAT(npy_error(path), Contains(path) && Contains("bad magic"));
  }
  SECTION("Fortran order (numpy.asfortranarray)") {
    std::string const path = test::fixture("io/values_f4_fortran.npy");
    CHECK_THAT(npy_error(path), Contains(path) && Contains("Fortran"));
  }
  SECTION("big-endian") {
    std::string const path = test::fixture("io/values_f4_big_endian.npy");
    CHECK_THAT(npy_error(path), Contains(path) && Contains("unsupported dtype '>f4'"));
  }
  SECTION("unsupported dtype") {
    std::string const path =
        write_npy("complex", "{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", std::string(8, '\0'));
    CHECK_THAT(npy_error(path), Contains(path) && Contains("unsupported dtype '<c8'"));
  }
  SECTION("structured dtype") {
    std::string const path = write_npy(
        "structured", "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", std::string(4, '\0'));
    CHECK_THAT(npy_error(path), Contains(path) && Contains("structured"));
  }
  SECTION("truncated data") {
    std::string const path =
        write_npy("truncated", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", std::string(20, '\0'));
    CHECK_THAT(npy_error(path), Contains(path) && Contains("truncated data") && Contains("needs 24 bytes"));
  }
  SECTION("header longer than the file") {
    std::string const path = "npy_short_header.npy";
    std::ofstream(path, std::ios::binary) << std::string("\x93NUMPY\x01\x00\xff\x00{", 11);
    CHECK_THAT(npy_error(path), Contains(path) && Contains("longer than the file"));
  }
  SECTION("negative shape") {
    std::string const path =
        write_npy("neg_shape", "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", std::string(8, '\0'));
    CHECK_THAT(npy_error(path), Contains(path) && Contains("non-negative integers"));
  }
  SECTION("missing file") {
    CHECK_THROWS_AS(io::NpyFile("npy_missing.npy"), IoError);
    CHECK_THROWS_WITH(io::NpyFile("npy_missing.npy"), Contains("npy_missing.npy"));
  }
}
