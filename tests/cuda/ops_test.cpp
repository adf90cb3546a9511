/// @file ops_test.cpp
/// @brief The core ops (gemm, map/zip, reductions, bias) on Cuda compared with the Cpu backend on the same inputs.
///
/// Tolerances (relative L2 against the CPU result, or the CPU result rounded to the storage type):
/// - float, TF32 off: 1e-5. cuBLAS and Eigen sum the k products in different orders; each rounding is 2^-24.
/// - float elementwise: 1e-6. nvcc contracts a + alpha * b into one FMA (one rounding fewer than the CPU).
/// - double: 1e-12 (both accumulate in double, in different orders).
/// - bfloat16 / half storage (fp32 accumulation): 1e-2, the design's bound; bfloat16 rounding alone is 2^-9 = 2e-3
///   relative per element, half's 2^-11.
/// - float with TF32 on: 1e-2 (10-bit mantissa products, ~1e-3 relative).
/// Reductions accumulate in double on both backends: 1e-12 relative.
#include <catch2/catch.hpp>

#include <cmath>        // std::abs
#include <cstdint>      // std::uint32_t
#include <type_traits>  // std::is_same_v

#include <sdlora/cuda.hpp>
#include <sdlora/sdlora.hpp>

#include "cuda/functors.hpp"  // SquarePlusOne
#include "support.hpp"        // rel_l2, random_tensor

using namespace sdlora;

namespace {

/// A host tensor rounded to T (half, bfloat16) and widened back to float: the exact values a 16-bit kernel sees.
template <class T>
Tensor<float, Cpu> rounded_to(Tensor<float, Cpu> const& x) {
  return convert<float, T>(convert<T, float>(x).view());
}

/// CPU reference of a (batch?, rows, cols) operand whose rows are `ld` apart (ld >= cols): a view into a wider tensor,
/// so that gemm's leading dimensions are tested too.
struct Operand {
  Tensor<float, Cpu> storage;  // (batch?, rows, ld)
  Shape shape;                 // (batch?, rows, cols)
};
Operand make_operand(Shape shape, Index ld, std::uint32_t seed) {
  Shape storage_shape = shape;
  storage_shape[-1] = ld;
  return {test::random_tensor<float>(storage_shape, seed), shape};
}

/// Runs gemm on Cuda with storage type T on the same (rounded) inputs as the CPU float gemm; returns rel L2.
template <class T>
double gemm_error(Context<Cuda>& gpu, Operand const& a, Operand const& b, Shape c_shape, ops::Gemm op) {
  Context<Cpu> cpu;
  Tensor<float, Cpu> const a_host = rounded_to<T>(a.storage), b_host = rounded_to<T>(b.storage);
  Tensor<float, Cpu> const c_init = rounded_to<T>(test::random_tensor<float>(c_shape, 99));
  auto view_of = [](Tensor<float, Cpu> const& s, Shape shape) {
    return TensorView<float const, Cpu>(s.data(), shape, contiguous_strides(s.shape()));
  };
  Tensor<float, Cpu> c_ref = c_init;
  ops::gemm<float, Cpu>(cpu, c_ref, view_of(a_host, a.shape), view_of(b_host, b.shape), op);

  Tensor<T, Cuda> const a_dev = to_device(convert<T, float>(a_host)), b_dev = to_device(convert<T, float>(b_host));
  Tensor<T, Cuda> c_dev = to_device(convert<T, float>(c_init));
  auto device_view_of = [](Tensor<T, Cuda> const& s, Shape shape) {
    return TensorView<T const, Cuda>(s.data(), shape, contiguous_strides(s.shape()));
  };
  ops::gemm<T, Cuda>(gpu, c_dev, device_view_of(a_dev, a.shape), device_view_of(b_dev, b.shape), op);
  Tensor<float, Cpu> const c_out = convert<float, T>(to_host(c_dev).view());
  return test::rel_l2(c_out, c_ref);
}

}  // namespace

TEMPLATE_TEST_CASE("cuda gemm matches the CPU for every transpose, broadcast and leading dimension", "[cuda][gemm]",
                   float, sdlora::bfloat16, sdlora::half) {
  Context<Cuda> gpu;
  double const tol = std::is_same_v<TestType, float> ? 1e-5 : 1e-2;
  Index const batch = 3, m = 37, k = 53, n = 29;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (int broadcast : {0, 1, 2}) {  // 0: none, 1: a is rank 2, 2: b is rank 2
        CAPTURE(ta, tb, broadcast);
        Shape const a_mat = ta ? Shape{k, m} : Shape{m, k};
        Shape const b_mat = tb ? Shape{n, k} : Shape{k, n};
        Shape const a_shape = broadcast == 1 ? a_mat : Shape{batch, a_mat[0], a_mat[1]};
        Shape const b_shape = broadcast == 2 ? b_mat : Shape{batch, b_mat[0], b_mat[1]};
        Operand const a = make_operand(a_shape, a_shape[-1] + 3, 1);  // row stride > columns
        Operand const b = make_operand(b_shape, b_shape[-1], 2);
        CHECK(gemm_error<TestType>(gpu, a, b, Shape{batch, m, n}, {ta, tb, 1.5, 0.0}) <= tol);
        CHECK(gemm_error<TestType>(gpu, a, b, Shape{batch, m, n}, {ta, tb, 0.5, 2.0}) <= tol);
      }
  // Rank-2 everything.
  Operand const a = make_operand(Shape{m, k}, k, 3), b = make_operand(Shape{k, n}, n, 4);
  CHECK(gemm_error<TestType>(gpu, a, b, Shape{m, n}, {}) <= tol);
}

TEST_CASE("cuda gemm in double and with TF32", "[cuda][gemm]") {
  Context<Cuda> gpu;
  Context<Cpu> cpu;
  auto const a = test::random_tensor<double>(Shape{2, 64, 96}, 5);
  auto const b = test::random_tensor<double>(Shape{96, 80}, 6);
  Tensor<double, Cpu> c_ref(Shape{2, 64, 80});
  ops::gemm<double, Cpu>(cpu, c_ref, a, b);
  Tensor<double, Cuda> c(Shape{2, 64, 80});
  ops::gemm<double, Cuda>(gpu, c, to_device(a), to_device(b));
  CHECK(test::rel_l2(to_host(c), c_ref) <= 1e-12);

  Operand const af = make_operand(Shape{2, 64, 96}, 96, 7), bf = make_operand(Shape{96, 80}, 80, 8);
  gpu.allow_tf32 = true;
  double const tf32_error = gemm_error<float>(gpu, af, bf, Shape{2, 64, 80}, {});
  CHECK(tf32_error <= 1e-2);
  gpu.allow_tf32 = false;
  CHECK(gemm_error<float>(gpu, af, bf, Shape{2, 64, 80}, {}) <= 1e-5);
}

TEMPLATE_TEST_CASE("cuda map and zip match the CPU", "[cuda][elementwise]", float, sdlora::bfloat16, sdlora::half) {
  Context<Cuda> gpu;
  Context<Cpu> cpu;
  bool const is_float = std::is_same_v<TestType, float>;
  double const tol = is_float ? 1e-6 : 1e-2;
  Index const n = 300001;  // more than one grid-stride step is not needed; an odd size is
  Tensor<float, Cpu> const a = rounded_to<TestType>(test::random_tensor<float>(Shape{n}, 11));
  Tensor<float, Cpu> const b = rounded_to<TestType>(test::random_tensor<float>(Shape{n}, 12));
  auto const a_dev = to_device(convert<TestType, float>(a)), b_dev = to_device(convert<TestType, float>(b));
  auto compare = [&](Tensor<TestType, Cuda> const& out, Tensor<float, Cpu> const& ref) {
    return test::rel_l2(convert<float, TestType>(to_host(out).view()), rounded_to<TestType>(ref));
  };

  Tensor<float, Cpu> ref(Shape{n});
  Tensor<TestType, Cuda> out(Shape{n});
  ops::add<float, Cpu>(cpu, ref, a, b);
  ops::add<TestType, Cuda>(gpu, out, a_dev, b_dev);
  CHECK(compare(out, ref) <= tol);

  ops::zip<float, Cpu>(cpu, ref, a, b, ops::fn::Mul{});
  ops::zip<TestType, Cuda>(gpu, out, a_dev, b_dev, ops::fn::Mul{});
  CHECK(compare(out, ref) <= tol);

  ops::axpy<float, Cpu>(cpu, ref, -0.75, b);  // in place: y aliases a
  ops::axpy<TestType, Cuda>(gpu, out, -0.75, b_dev);
  CHECK(compare(out, ref) <= tol);

  ops::scale<float, Cpu>(cpu, ref, 3.0);
  ops::scale<TestType, Cuda>(gpu, out, 3.0);
  CHECK(compare(out, ref) <= tol);

  Tensor<TestType, Cuda> copied(Shape{n});
  ops::copy<TestType, Cuda>(gpu, copied, out);
  CHECK(compare(copied, ref) <= tol);
}

TEST_CASE("a program's own functor runs on the device through its instantiation in kernels.cu", "[cuda][elementwise]") {
  Context<Cuda> gpu;
  Context<Cpu> cpu;
  auto const x = test::random_tensor<float>(Shape{4, 1000}, 13);
  Tensor<float, Cpu> ref(x.shape());
  ops::map<float, Cpu>(cpu, ref, x, test::SquarePlusOne{});
  Tensor<float, Cuda> y(x.shape());
  ops::map<float, Cuda>(gpu, y, to_device(x), test::SquarePlusOne{});
  CHECK(test::rel_l2(to_host(y), ref) <= 1e-6);  // x * x + 1 may be one FMA on the device
}

TEMPLATE_TEST_CASE("cuda reductions match the CPU in double", "[cuda][reduce]", float, double, sdlora::bfloat16) {
  Context<Cuda> gpu;
  Context<Cpu> cpu;
  Index const n = 1 << 20;  // > 1024 blocks of 256: the grid-stride loop and the block cap are exercised
  Tensor<float, Cpu> const a = rounded_to<bfloat16>(test::random_tensor<float>(Shape{n}, 21));
  Tensor<float, Cpu> const b = rounded_to<bfloat16>(test::random_tensor<float>(Shape{n}, 22));
  // Exactly representable in every tested type, so the CPU float reference sees the same numbers.
  auto const a_dev = to_device(convert<TestType, float>(a)), b_dev = to_device(convert<TestType, float>(b));
  auto near = [](double got, double want) { return std::abs(got - want) <= 1e-12 * std::abs(want); };
  CHECK(near(ops::sum<TestType, Cuda>(gpu, a_dev), ops::sum<float, Cpu>(cpu, a)));
  CHECK(near(ops::sum_squares<TestType, Cuda>(gpu, a_dev), ops::sum_squares<float, Cpu>(cpu, a)));
  CHECK(near(ops::dot<TestType, Cuda>(gpu, a_dev, b_dev), ops::dot<float, Cpu>(cpu, a, b)));
  CHECK(ops::max_abs<TestType, Cuda>(gpu, a_dev) == ops::max_abs<float, Cpu>(cpu, a));  // max is exact
  CHECK(ops::sum<TestType, Cuda>(gpu, Tensor<TestType, Cuda>(Shape{0}).view()) == 0.0);
}

TEMPLATE_TEST_CASE("cuda bias add and gradient match the CPU", "[cuda][bias]", float, sdlora::bfloat16) {
  Context<Cuda> gpu;
  Context<Cpu> cpu;
  double const tol = std::is_same_v<TestType, float> ? 1e-6 : 1e-2;
  auto run = [&](Shape shape, Index channels, bool rows) {
    Tensor<float, Cpu> const y0 = rounded_to<TestType>(test::random_tensor<float>(shape, 31));
    Tensor<float, Cpu> const bias = rounded_to<TestType>(test::random_tensor<float>(Shape{channels}, 32));
    Tensor<float, Cpu> y = y0, db = bias;  // db starts non-zero: the gradient accumulates
    Tensor<TestType, Cuda> y_dev = to_device(convert<TestType, float>(y0));
    Tensor<TestType, Cuda> db_dev = to_device(convert<TestType, float>(bias));
    auto const bias_dev = to_device(convert<TestType, float>(bias));
    if (rows) {
      ops::bias_add_rows<float, Cpu>(cpu, y, bias);
      ops::bias_add_rows<TestType, Cuda>(gpu, y_dev, bias_dev);
      ops::bias_grad_rows<float, Cpu>(cpu, db, y0);
      ops::bias_grad_rows<TestType, Cuda>(gpu, db_dev, to_device(convert<TestType, float>(y0)));
    } else {
      ops::bias_add_channels<float, Cpu>(cpu, y, bias);
      ops::bias_add_channels<TestType, Cuda>(gpu, y_dev, bias_dev);
      ops::bias_grad_channels<float, Cpu>(cpu, db, y0);
      ops::bias_grad_channels<TestType, Cuda>(gpu, db_dev, to_device(convert<TestType, float>(y0)));
    }
    CHECK(test::rel_l2(convert<float, TestType>(to_host(y_dev).view()), rounded_to<TestType>(y)) <= tol);
    CHECK(test::rel_l2(convert<float, TestType>(to_host(db_dev).view()), rounded_to<TestType>(db)) <= tol);
  };
  run(Shape{2, 77, 320}, 320, true);       // Linear: (N, L, C)
  run(Shape{2, 64, 9, 11}, 64, false);     // Conv2d: (N, C, H, W)
}
