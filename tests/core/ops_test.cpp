#include <catch2/catch.hpp>

#include "support.hpp"

using namespace sdlora;

namespace {
template <class T>
Tensor<T> iota(Shape s, double scale = 1.0, double shift = 0.0) {
  Tensor<T> t(s);
  for (Index i = 0; i < t.numel(); ++i) t(i) = T(std::sin(double(i) * scale + shift));
  return t;
}
// Naive reference product in double.
template <class T>
double ref_entry(Tensor<T> const& a, Tensor<T> const& b, Index bi, Index m, Index n, bool ta, bool tb) {
  auto A = a.rank() == 3 ? TensorView<T const>(a[bi]) : a.view();
  auto B = b.rank() == 3 ? TensorView<T const>(b[bi]) : b.view();
  Index const k = ta ? A.dim(0) : A.dim(1);
  double s = 0;
  for (Index p = 0; p < k; ++p) s += double(ta ? A.at({p, m}) : A.at({m, p})) * double(tb ? B.at({n, p}) : B.at({p, n}));
  return s;
}
}  // namespace

TEMPLATE_TEST_CASE("gemm matches a naive product for every transpose and broadcast", "[core][gemm]", float, double) {
  Context<Cpu> ctx;
  double const tol = std::is_same_v<TestType, float> ? 1e-5 : 1e-12;  // per-entry, relative to sqrt(k)
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      Index const batch = 3, m = 5, k = 7, n = 4;
      auto a = iota<TestType>(ta ? Shape{batch, k, m} : Shape{batch, m, k}, 0.3);
      auto b = iota<TestType>(tb ? Shape{n, k} : Shape{k, n}, 0.7, 1.0);  // broadcast over the batch
      Tensor<TestType> c(Shape{batch, m, n});
      c.fill(TestType(1));
      ops::gemm<TestType, Cpu>(ctx, c, a, b, {ta, tb, 2.0, 0.5});
      for (Index bi = 0; bi < batch; ++bi)
        for (Index i = 0; i < m; ++i)
          for (Index j = 0; j < n; ++j)
            REQUIRE(double(c.at({bi, i, j})) == Approx(2.0 * ref_entry(a, b, bi, i, j, ta, tb) + 0.5).margin(tol));
    }
}

TEST_CASE("gemm reports shapes that do not chain", "[core][gemm]") {
  Context<Cpu> ctx;
  Tensor<float> a(Shape{2, 3}), b(Shape{4, 5}), c(Shape{2, 5});
  CHECK_THROWS_WITH((ops::gemm<float, Cpu>(ctx, c, a, b)), Catch::Contains("(2, 3)") && Catch::Contains("(4, 5)"));
}

TEST_CASE("elementwise and reductions", "[core][ops]") {
  Context<Cpu> ctx;
  auto a = iota<float>(Shape{100000}, 0.01);
  auto b = iota<float>(Shape{100000}, 0.02, 0.5);
  Tensor<float> y(a.shape());
  ops::add<float, Cpu>(ctx, y, a, b);
  CHECK(y(777) == a(777) + b(777));
  ops::axpy<float, Cpu>(ctx, y, -1.0, b);
  CHECK(y(777) == Approx(a(777)));
  ops::scale<float, Cpu>(ctx, y, 2.0);
  CHECK(y(5) == Approx(2 * a(5)));
  double ref = 0;
  for (float v : a.span()) ref += double(v);
  CHECK(ops::sum<float, Cpu>(ctx, a) == Approx(ref).epsilon(1e-12));
  CHECK(ops::max_abs<float, Cpu>(ctx, a) == Approx(1.0).epsilon(1e-6));
  Tensor<float> wrong(Shape{3});
  CHECK_THROWS_AS((ops::add<float, Cpu>(ctx, wrong, a, b)), ShapeError);
}
