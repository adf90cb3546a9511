#include <catch2/catch.hpp>

#include <cstdint>  // std::uintptr_t

#include "support.hpp"

using namespace sdlora;

TEST_CASE("Shape prints, counts and checks axes", "[core]") {
  Shape s{2, 3, 4};
  CHECK(s.rank() == 3);
  CHECK(s.numel() == 24);
  CHECK(s[-1] == 4);
  CHECK(s.str() == "(2, 3, 4)");
  CHECK(Shape{}.numel() == 1);
  CHECK_THROWS_AS(s[3], ShapeError);
  CHECK_THROWS_AS((Shape{1, 2, 3, 4, 5, 6, 7}), ShapeError);
}

TEST_CASE("Tensor owns zeroed memory, copies deeply, moves cheaply", "[core]") {
  Tensor<float> t(Shape{2, 3});
  for (float v : t.span()) CHECK(v == 0.0f);
  t.at({1, 2}) = 5.0f;
  Tensor<float> copy = t;
  copy.at({1, 2}) = 7.0f;
  CHECK(t.at({1, 2}) == 5.0f);
  Tensor<float> moved = std::move(copy);
  CHECK(moved.at({1, 2}) == 7.0f);
  CHECK(copy.empty());
  CHECK_THROWS_AS(t.at({2, 0}), ShapeError);
}

TEST_CASE("New tensors are zero whether their block is fresh (calloc) or reused dirty from the block cache",
          "[core]") {
  Shape const big{1 << 17};  // 512 KiB: a cached size class
  for (int round = 0; round < 3; ++round) {
    Tensor<float> fresh(big);
    CHECK(reinterpret_cast<std::uintptr_t>(fresh.data()) % BackendMemory<Cpu>::kAlignment == 0);
    Index nonzero = 0;
    for (float v : fresh.span()) nonzero += v != 0.0f;
    CHECK(nonzero == 0);
    fresh.fill(3.0f);  // dirty: freed into the cache, the next round's tensor may be this block
  }
  auto dirty = Tensor<float>::uninitialized(big);
  dirty.fill(-1.0f);
  float const* block = dirty.data();
  dirty = Tensor<float>();
  Tensor<float> reused(big);
  INFO("reused the dirty block: " << (reused.data() == block));
  Index nonzero = 0;
  for (float v : reused.span()) nonzero += v != 0.0f;
  CHECK(nonzero == 0);
  BackendMemory<Cpu>::release_cached();  // frees calloc'd and aligned_alloc'd blocks alike (ASan / valgrind clean)
}

TEST_CASE("Views slice the first axis, index, reshape and copy out contiguously", "[core]") {
  Tensor<float> t(Shape{4, 3});
  for (Index i = 0; i < t.numel(); ++i) t(i) = float(i);
  auto rows = t.slice(1, 3);
  CHECK(rows.shape() == Shape{2, 3});
  CHECK(rows.at({0, 0}) == 3.0f);
  CHECK(t[3].at({2}) == 11.0f);
  CHECK_THROWS_AS(t.slice(3, 5), ShapeError);

  // A strided (column) view: column 1 of the 4x3 matrix.
  TensorView<float const> column(t.data() + 1, Shape{4}, {3});
  CHECK_FALSE(column.is_contiguous());
  auto c = Tensor<float>::from_view(column);
  CHECK(c(0) == 1.0f);
  CHECK(c(3) == 10.0f);

  t.reshape(Shape{2, 6});
  CHECK(t.at({1, 0}) == 6.0f);
  CHECK_THROWS_AS(t.reshape(Shape{5}), ShapeError);
  auto r = t.reshaped(Shape{12});
  CHECK(r(11) == 11.0f);
}

TEST_CASE("An empty tensor copies to an empty tensor", "[core]") {
  Tensor<float> empty;
  Tensor<float> copy = empty;
  CHECK(copy.empty());
  CHECK(copy.data() == nullptr);
  std::vector<Tensor<float>> many;
  many.assign(3, Tensor<float>());
  CHECK(many[2].empty());
}
