/// @file safetensors_test.cpp
/// @brief The safetensors reader against malformed files (one case per malformation, each checking the message
/// names the file and the key), round trips of every dtype, and a file written by Python's safetensors.
#include <catch2/catch.hpp>

#include <cstdint>  // std::uint8_t, std::uint64_t
#include <cstdio>   // std::remove
#include <fstream>  // std::ofstream
#include <string>   // std::string
#include <vector>   // std::vector

#include "support.hpp"

using namespace sdlora;
using Catch::Matchers::Contains;

namespace {

/// Writes a safetensors file byte by byte: the 8-byte little-endian header length, the header text, the data.
std::string write_raw(std::string const& name, std::string const& header, std::string const& data,
                      std::uint64_t header_len_override = ~0ull) {
  std::string const path = "st_" + name + ".safetensors";
  std::uint64_t const n = header_len_override == ~0ull ? header.size() : header_len_override;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  for (int i = 0; i < 8; ++i) out.put(char((n >> (8 * i)) & 0xff));
  out << header << data;
  return path;
}

/// The message of the FormatError that opening `path` throws; fails the test on no error or another type.
std::string format_error(std::string const& path) {
  try {
    io::SafetensorsFile f(path);
  } catch (FormatError const& e) {
    return e.what();
  } catch (std::exception const& e) {
    FAIL("expected FormatError, got another exception: " << e.what());
  }
  FAIL("expected FormatError for " << path << ", nothing was thrown");
  return {};
}

std::string const k8 = std::string(8, '\x01');  // 8 data bytes

}  // namespace

TEST_CASE("safetensors: file shorter than 8 bytes", "[io][safetensors]") {
  std::string const path = "st_short.safetensors";
  std::ofstream(path, std::ios::binary) << "abc";
  CHECK_THAT(format_error(path), Contains(path) && Contains("too short"));
}

TEST_CASE("safetensors: header length larger than the file", "[io][safetensors]") {
  std::string const path = write_raw("len_past_end", R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
                                     "x", 1000);
  CHECK_THAT(format_error(path), Contains(path) && Contains("header length 1000 is larger than the file"));
}

TEST_CASE("safetensors: header length above 100 MB", "[io][safetensors]") {
  std::string const path = write_raw("len_huge", "{}", "", (100ull << 20) + 1);
  CHECK_THAT(format_error(path), Contains(path) && Contains("exceeds the 100 MB limit"));
}

TEST_CASE("safetensors: header is not valid JSON", "[io][safetensors]") {
  std::string const path = write_raw("bad_json", R"({"w":{"dtype":"U8",)", "");
  CHECK_THAT(format_error(path), Contains(path) && Contains("not valid JSON"));
}

TEST_CASE("safetensors: header is not an object", "[io][safetensors]") {
  std::string const path = write_raw("not_object", R"([1, 2, 3])", "");
  CHECK_THAT(format_error(path), Contains(path) && Contains("not a JSON object"));
}

TEST_CASE("safetensors: unknown dtype", "[io][safetensors]") {
  std::string const path = write_raw("bad_dtype", R"({"w":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}})", k8);
  CHECK_THAT(format_error(path), Contains(path) && Contains("'w'") && Contains("unknown dtype 'F8_E4M3'"));
}

TEST_CASE("safetensors: offsets outside the data area", "[io][safetensors]") {
  std::string const path = write_raw("outside", R"({"w":{"dtype":"U8","shape":[16],"data_offsets":[0,16]}})", k8);
  CHECK_THAT(format_error(path), Contains(path) && Contains("'w'") && Contains("outside the data area of 8 bytes"));
}

TEST_CASE("safetensors: end before begin", "[io][safetensors]") {
  std::string const path = write_raw("end_before_begin", R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[8,0]}})",
                                     k8);
  CHECK_THAT(format_error(path), Contains(path) && Contains("'w'") && Contains("end before they begin"));
}

TEST_CASE("safetensors: overlapping spans", "[io][safetensors]") {
  std::string const path = write_raw(
      "overlap",
      R"({"a":{"dtype":"U8","shape":[6],"data_offsets":[0,6]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
      k8);
  CHECK_THAT(format_error(path), Contains(path) && Contains("'b'") && Contains("overlaps 'a'"));
}

TEST_CASE("safetensors: gap between spans", "[io][safetensors]") {
  std::string const path = write_raw(
      "gap",
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
      k8);
  CHECK_THAT(format_error(path), Contains(path) && Contains("gap before tensor 'b'"));
}

TEST_CASE("safetensors: trailing bytes not covered by any tensor", "[io][safetensors]") {
  std::string const path = write_raw("trailing", R"({"a":{"dtype":"U8","shape":[6],"data_offsets":[0,6]}})", k8);
  CHECK_THAT(format_error(path), Contains(path) && Contains("2 trailing bytes") && Contains("'a'"));
}

TEST_CASE("safetensors: byte size does not match shape x dtype", "[io][safetensors]") {
  std::string const path = write_raw("size_mismatch", R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", k8);
  CHECK_THAT(format_error(path),
             Contains(path) && Contains("'w'") && Contains("byte size 8 does not match shape (3) x F32 = 12 bytes"));
}

TEST_CASE("safetensors: duplicate names, escaped quotes included", "[io][safetensors]") {
  std::string const entry = R"({"dtype":"U8","shape":[4],"data_offsets":[0,4]})";
  std::string const entry2 = R"({"dtype":"U8","shape":[4],"data_offsets":[4,8]})";
  SECTION("plain") {
    std::string const path = write_raw("dup", "{\"w\":" + entry + ",\"w\":" + entry2 + "}", k8);
    CHECK_THAT(format_error(path), Contains(path) && Contains("duplicate tensor name 'w'"));
  }
  SECTION("a key with an escaped quote, twice") {
    std::string const path = write_raw("dup_escaped", "{\"a\\\"b\":" + entry + ",\"a\\\"b\":" + entry2 + "}", k8);
    CHECK_THAT(format_error(path), Contains(path) && Contains("duplicate tensor name 'a\"b'"));
  }
  SECTION("the same name spelled with and without a \\u escape") {
    std::string const path = write_raw("dup_unicode", "{\"a\":" + entry + ",\"\\u0061\":" + entry2 + "}", k8);
    CHECK_THAT(format_error(path), Contains(path) && Contains("duplicate tensor name 'a'"));
  }
  SECTION("keys that differ only after an escaped quote are not duplicates") {
    std::string const path = write_raw("escaped_distinct", "{\"a\\\"b\":" + entry + ",\"a\\\"c\":" + entry2 + "}", k8);
    io::SafetensorsFile f(path);
    CHECK(f.size() == 2);
    CHECK(f.contains("a\"b"));
    CHECK(f.contains("a\"c"));
    CHECK(f.info("a\"c").begin == 4);
  }
  SECTION("a nested key repeated in another entry is not a duplicate") {
    std::string const path = write_raw("nested_same_keys", "{\"x\":" + entry + ",\"y\":" + entry2 + "}", k8);
    CHECK(io::SafetensorsFile(path).size() == 2);
  }
}

TEST_CASE("safetensors: shape with negative or non-integer entries", "[io][safetensors]") {
  SECTION("negative") {
    std::string const path = write_raw("neg_shape", R"({"w":{"dtype":"U8","shape":[-8],"data_offsets":[0,8]}})", k8);
    CHECK_THAT(format_error(path), Contains(path) && Contains("'w'") && Contains("-8 is not a non-negative integer"));
  }
  SECTION("fractional") {
    std::string const path =
        write_raw("float_shape", R"({"w":{"dtype":"U8","shape":[2,4.5],"data_offsets":[0,8]}})", k8);
    CHECK_THAT(format_error(path), Contains(path) && Contains("'w'") && Contains("4.5 is not a non-negative integer"));
  }
  SECTION("a string") {
    std::string const path = write_raw("str_shape", R"({"w":{"dtype":"U8","shape":["8"],"data_offsets":[0,8]}})", k8);
    CHECK_THAT(format_error(path), Contains(path) && Contains("'w'") && Contains("not a non-negative integer"));
  }
  SECTION("extents whose product overflows") {
    std::string const path = write_raw(
        "huge_shape",
        R"({"w":{"dtype":"U8","shape":[1099511627776,1099511627776,0],"data_offsets":[0,0]},)"
        R"("v":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})",
        k8);
    CHECK_THAT(format_error(path), Contains(path) && Contains("'w'") && Contains("absurdly large"));
  }
}

TEST_CASE("safetensors: metadata value that is not a string", "[io][safetensors]") {
  std::string const path = write_raw(
      "meta_number", R"({"__metadata__":{"step":5},"w":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})", k8);
  CHECK_THAT(format_error(path), Contains(path) && Contains("metadata 'step' is not a string"));
}

TEST_CASE("safetensors: a missing file is an IoError naming the path", "[io][safetensors]") {
  std::string const path = "st_does_not_exist.safetensors";
  std::remove(path.c_str());
  CHECK_THROWS_AS(io::SafetensorsFile(path), IoError);
  CHECK_THROWS_WITH(io::SafetensorsFile(path), Contains(path) && Contains("No such file"));
  CHECK_THROWS_AS(io::SafetensorsFile("."), IoError);  // a directory is not a file
}

TEST_CASE("safetensors: valid edge cases are accepted", "[io][safetensors]") {
  SECTION("an empty tensor sharing its offset with the next one") {
    std::string const path = write_raw(
        "empty_tensor",
        R"({"b":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}})",
        k8);
    io::SafetensorsFile f(path);
    CHECK(f.load<float>("a").shape() == Shape{0, 3});
    CHECK(f.load<float>("b")(7) == 1.0f);
  }
  SECTION("no tensors, padded header") {
    std::string const path = write_raw("no_tensors", "{}      ", "");
    CHECK(io::SafetensorsFile(path).size() == 0);
  }
  SECTION("in memory") {
    std::string bytes(8, '\0');
    std::string const header = R"({"w":{"dtype":"I8","shape":[2],"data_offsets":[0,2]}})";
    bytes[0] = char(header.size());
    bytes += header + "\xff\x05";
    auto f = io::SafetensorsFile::from_memory(bytes, "mem");
    auto w = f.load<float>("w");
    CHECK(w(0) == -1.0f);
    CHECK(w(1) == 5.0f);
    CHECK_THROWS_WITH(io::SafetensorsFile::from_memory("1234", "mem.st"), Contains("mem.st"));
  }
}

namespace {

/// Writes `values` stored as `Stored`, reads them back as float and double, and checks every value exactly (the
/// values are exact in every dtype, so any difference is a bug, not rounding).
template <class Stored>
void round_trip(std::vector<double> const& values, DType expected) {
  Tensor<double> src(Shape{2, 3});
  for (Index i = 0; i < 6; ++i) src(i) = values[std::size_t(i)];
  io::SafetensorsWriter w;
  w.add_as<Stored, double>("t", src.view());
  std::string const path = "st_roundtrip_" + std::string(dtype_name(expected)) + ".safetensors";
  w.write(path);
  io::SafetensorsFile f(path);
  INFO(dtype_name(expected));
  CHECK(f.info("t").dtype == expected);
  CHECK(f.info("t").shape == Shape{2, 3});
  CHECK(f.bytes("t").size() == std::size_t(6 * dtype_size(expected)));
  auto as_float = f.load<float>("t");
  auto as_double = f.load<double>("t");
  auto as_stored = f.load<Stored>("t");
  for (Index i = 0; i < 6; ++i) {
    CHECK(as_float(i) == float(values[std::size_t(i)]));
    CHECK(as_double(i) == values[std::size_t(i)]);
    CHECK(double(to_float(as_stored(i))) == values[std::size_t(i)]);
  }
}

}  // namespace

TEST_CASE("safetensors: round trip of every dtype, read as float and double", "[io][safetensors]") {
  std::vector<double> const floats = {-2.5, -1.0, 0.0, 0.5, 1.25, 3.0};
  std::vector<double> const ints = {-7, -1, 0, 1, 2, 100};
  round_trip<double>(floats, DType::F64);
  round_trip<float>(floats, DType::F32);
  round_trip<half>(floats, DType::F16);
  round_trip<bfloat16>(floats, DType::BF16);
  round_trip<std::int64_t>(ints, DType::I64);
  round_trip<std::int32_t>(ints, DType::I32);
  round_trip<std::int16_t>(ints, DType::I16);
  round_trip<std::int8_t>(ints, DType::I8);
  round_trip<std::uint8_t>({0, 1, 2, 127, 128, 255}, DType::U8);
  round_trip<bool>({1, 0, 1, 1, 0, 0}, DType::BOOL);
}

TEST_CASE("safetensors: the bytes of 16-bit floats are the IEEE / bfloat16 encodings", "[io][safetensors]") {
  Tensor<float> src(Shape{1});
  src(0) = 1.25f;  // half 0x3D00, bfloat16 0x3FA0
  io::SafetensorsWriter w;
  w.add_as<half, float>("h", src.view());
  w.add_as<bfloat16, float>("b", src.view());
  w.write("st_16bit.safetensors");
  io::SafetensorsFile f("st_16bit.safetensors");
  CHECK(f.bytes("h") == std::string("\x00\x3d", 2));
  CHECK(f.bytes("b") == std::string("\xa0\x3f", 2));
}

TEST_CASE("safetensors: a file written by safetensors.torch.save_file reads back exactly", "[io][safetensors]") {
  io::SafetensorsFile f(test::fixture("io/all_dtypes.safetensors"));
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.metadata().at("note") == "quote \" and unicode \xc3\xa9");
  std::vector<double> const base = {-2.5, -1.0, 0.0, 0.5, 1.25, 3.0};
  struct Case {
    char const* key;
    DType dtype;
    Shape shape;
    std::vector<double> values;
  };
  std::vector<double> f64;
  for (double v : base) f64.push_back(v + 1e-10);
  std::vector<Case> const cases = {
      {"f64", DType::F64, Shape{2, 3}, f64},
      {"f32", DType::F32, Shape{3, 2}, base},
      {"f16", DType::F16, Shape{6}, base},
      {"bf16", DType::BF16, Shape{1, 2, 3}, base},
      {"i64", DType::I64, Shape{2, 3}, {-1099511627776.0, -1, 0, 1, 2, 1099511627776.0}},
      {"i32", DType::I32, Shape{2, 3}, {-7, -1, 0, 1, 2, 100}},
      {"i16", DType::I16, Shape{2, 3}, {-30000, -1, 0, 1, 2, 30000}},
      {"i8", DType::I8, Shape{2, 3}, {-128, -1, 0, 1, 2, 127}},
      {"u8", DType::U8, Shape{2, 3}, {0, 1, 2, 127, 128, 255}},
      {"bool", DType::BOOL, Shape{2, 3}, {1, 0, 1, 1, 0, 0}},
      {"scalar_f32", DType::F32, Shape{}, {7.5}},
  };
  for (auto const& c : cases) {
    INFO(c.key);
    REQUIRE(f.contains(c.key));
    CHECK(f.info(c.key).dtype == c.dtype);
    CHECK(f.info(c.key).shape == c.shape);
    auto d = f.load<double>(c.key);
    REQUIRE(d.numel() == Index(c.values.size()));
    for (Index i = 0; i < d.numel(); ++i) CHECK(d(i) == c.values[std::size_t(i)]);
  }
  CHECK(f.load<float>("empty_f32").shape() == Shape{0, 3});
  CHECK(f.load<std::int64_t>("i64")(5) == (std::int64_t(1) << 40));  // exact beyond float's 24 bits
}
