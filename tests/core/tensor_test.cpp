#include <catch2/catch.hpp>

#include <algorithm>  // std::next_permutation
#include <array>      // std::array
#include <cstdint>    // std::uintptr_t
#include <utility>    // std::move
#include <vector>     // std::vector

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

TEST_CASE("from_view copies every strided layout in row-major order", "[core]") {
  // A 2x3x4x5 tensor of distinct values viewed through every axis permutation, with the innermost run contiguous,
  // strided or of extent 1, sliced on one axis, and with an extent-1 axis of an arbitrary stride: each copy must
  // equal the element-by-element walk over the view's index space.
  Tensor<float> t(Shape{2, 3, 4, 5});
  for (Index i = 0; i < t.numel(); ++i) t(i) = float(i);
  std::array<Index, 4> const dims = {2, 3, 4, 5}, strides = {60, 20, 5, 1};
  auto expect_copy = [](TensorView<float const> v) {
    Tensor<float> const c = Tensor<float>::from_view(v);
    REQUIRE(c.shape() == v.shape());
    std::array<Index, kMaxRank> index{};
    for (Index k = 0; k < v.numel(); ++k) {  // the view's index space in row-major order
      Index offset = 0;
      for (int a = 0; a < v.rank(); ++a) offset += index[a] * v.stride(a);
      INFO("shape " << v.shape() << ", element " << k);
      REQUIRE(c(k) == v.data()[offset]);
      for (int a = v.rank() - 1; a >= 0 && ++index[a] == v.dim(a); --a) index[a] = 0;
    }
  };
  std::array<int, 4> perm = {0, 1, 2, 3};
  int views = 0;
  do {
    std::array<Index, kMaxRank> st{};
    std::vector<Index> shape;
    for (int a = 0; a < 4; ++a) {
      st[a] = strides[perm[a]];
      shape.push_back(dims[perm[a]]);
    }
    TensorView<float const> v(t.data(), Shape(shape), st);
    expect_copy(v);
    expect_copy(v.slice(1, v.dim(0)));  // a slice of the first axis
    std::array<Index, kMaxRank> st1 = st;  // the last axis cut to extent 1, given a stride nothing else has
    std::vector<Index> shape1 = shape;
    shape1.back() = 1;
    st1[3] = 1000;
    expect_copy(TensorView<float const>(t.data(), Shape(shape1), st1));
    views += 3;
  } while (std::next_permutation(perm.begin(), perm.end()));
  CHECK(views == 72);
  // An extent-1 axis with an odd stride inside a contiguous run; rank 0; a zero extent.
  expect_copy(TensorView<float const>(t.data() + 7, Shape{2, 1, 5}, {60, 999, 1}));
  expect_copy(TensorView<float const>(t.data() + 7, Shape{}, {}));
  CHECK(Tensor<float>::from_view(TensorView<float const>(t.data(), Shape{3, 0}, {1, 3})).numel() == 0);
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

TEST_CASE("to_backend<Cpu> copies a host tensor it may not take and moves one it may", "[core]") {
  Tensor<float> t(Shape{2, 3});
  for (Index i = 0; i < t.numel(); ++i) t(i) = float(i);
  float const* storage = t.data();
  Tensor<float> const copied = to_backend<Cpu>(t);  // an lvalue: a copy, t unchanged
  CHECK(copied.data() != storage);
  CHECK(t.data() == storage);
  Tensor<float> const moved = to_backend<Cpu>(std::move(t));  // an rvalue: the same storage, nothing copied
  CHECK(moved.data() == storage);
  CHECK(moved.shape() == Shape{2, 3});
  for (Index i = 0; i < moved.numel(); ++i) CHECK(moved(i) == float(i));
}
