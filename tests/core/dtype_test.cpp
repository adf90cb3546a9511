#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "support.hpp"

using namespace sdlora;

namespace {
// Exact reference rounding through long double arithmetic: the nearest half to f, ties to even, by brute force
// over the neighbouring representable values.
float ref_round_half(float f) {
  // half values near f: scan all 65536 bit patterns once and cache positives, sorted.
  static std::vector<float> const positives = [] {
    std::vector<float> v;
    for (unsigned b = 0; b < 0x7c00u; ++b) v.push_back(half::to_float(std::uint16_t(b)));
    return v;
  }();
  float const a = std::fabs(f);
  float const max_half = 65504.0f;
  if (a >= 65520.0f) return std::copysign(std::numeric_limits<float>::infinity(), f);  // rounds past max
  auto it = std::lower_bound(positives.begin(), positives.end(), a);
  float hi = it == positives.end() ? max_half : *it;
  float lo = it == positives.begin() ? 0.0f : *(it - 1);
  if (hi == a) return std::copysign(hi, f);
  double const dlo = double(a) - lo, dhi = double(hi) - a;
  float pick;
  if (dlo < dhi) pick = lo;
  else if (dhi < dlo) pick = hi;
  else pick = (half(lo).bits & 1u) ? hi : lo;  // tie: even mantissa
  return std::copysign(pick, f);
}
}  // namespace

TEST_CASE("half round-trips every finite value exactly", "[core][dtype]") {
  for (unsigned b = 0; b < 0x10000u; ++b) {
    std::uint16_t const bits = std::uint16_t(b);
    float const f = half::to_float(bits);
    if (std::isnan(f)) {
      CHECK(std::isnan(float(half(f))));
      continue;
    }
    REQUIRE(half(f).bits == bits);
  }
}

TEST_CASE("half rounds float to nearest even, subnormals and overflow included", "[core][dtype]") {
  CHECK(half(1.0f).bits == 0x3c00);
  CHECK(half(65504.0f).bits == 0x7bff);
  CHECK(half(65520.0f).bits == 0x7c00);                 // halfway to 2^16 rounds up to infinity
  CHECK(half(65519.0f).bits == 0x7bff);
  CHECK(half(std::ldexp(1.0f, -24)).bits == 0x0001);   // smallest subnormal
  CHECK(half(std::ldexp(1.0f, -25)).bits == 0x0000);   // exactly half of it: tie to even (0)
  CHECK(half(std::ldexp(1.5f, -25)).bits == 0x0001);
  CHECK(half(1.0f + std::ldexp(1.0f, -11)).bits == 0x3c00);  // tie between 1 and 1+2^-10: even is 1
  CHECK(half(1.0f + 3 * std::ldexp(1.0f, -11)).bits == 0x3c02);
  // A sweep of floats against the brute-force reference.
  std::uint32_t state = 12345;
  for (int i = 0; i < 200000; ++i) {
    state = state * 1664525u + 1013904223u;
    float const f = std::ldexp(float(state >> 8) / float(1 << 24), int(state % 46) - 30) * ((state & 1) ? -1 : 1);
    REQUIRE(float(half(f)) == ref_round_half(f));
  }
}

TEST_CASE("bfloat16 rounds to nearest even and keeps NaN", "[core][dtype]") {
  CHECK(bfloat16(1.0f).bits == 0x3f80);
  CHECK(bfloat16(std::bit_cast<float>(0x3f808000u)).bits == 0x3f80);  // tie, even stays
  CHECK(bfloat16(std::bit_cast<float>(0x3f818000u)).bits == 0x3f82);  // tie, odd rounds up
  CHECK(bfloat16(std::bit_cast<float>(0x3f808001u)).bits == 0x3f81);
  CHECK(std::isnan(float(bfloat16(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(std::isinf(float(bfloat16(std::numeric_limits<float>::max()))));  // rounds up past the largest bf16
  for (unsigned b = 0; b < 0x10000u; ++b) {
    float const f = float(bfloat16::from_bits(std::uint16_t(b)));
    if (!std::isnan(f)) REQUIRE(bfloat16(f).bits == b);
  }
}

TEST_CASE("convert widens and narrows tensors", "[core][dtype]") {
  Tensor<float> t(Shape{3});
  t(0) = 1.0f;
  t(1) = -2.5f;
  t(2) = 1.0f / 3.0f;
  auto h = convert<half>(t);
  auto back = convert<float>(h);
  CHECK(back(0) == 1.0f);
  CHECK(back(1) == -2.5f);
  CHECK(back(2) == half::to_float(half(1.0f / 3.0f).bits));
  CHECK(std::fabs(back(2) - 1.0f / 3.0f) < 1e-3f);
}
