/// @file layers_test.cpp
/// @brief The layer ops (conv, norms, softmax, attention, GELU/GEGLU, SiLU, upsampling, timestep embedding, embedding,
/// dropout, concat, layout) on Cuda compared with the Cpu backend on the same inputs, forward and backward.
/// Compile-verified only so far: no GPU was available when they were written (the binary exits 77 without one).
///
/// Tolerances (relative L2 against the CPU result; the CPU float result for 16-bit storage, on the same rounded
/// inputs):
/// - float, 1e-5: conv (cuBLAS and Eigen sum the C*kh*kw products in different orders), norms and softmax (block
///   reductions vs sequential sums; exp/erf/tanh of the device libraries are within 2 ulp of glibc's), GELU/GEGLU/SiLU,
///   timestep embeddings, attention forward.
/// - float attention backward, 1e-4: dS = P (dP - D) subtracts nearly equal numbers, so the different summation
///   orders of dP and D (and of dk, dv over Lq queries) are amplified; the double run below holds 1e-12.
/// - double, 1e-12: both backends accumulate in double (or compute in double) in different orders.
/// - bfloat16 storage, 1e-2: the design's bound (one bfloat16 rounding is 2^-9 = 2e-3 relative).
/// - exact (==): upsampling (gather in the CPU's order), embedding (token order per column), dropout (the same Philox
///   words, keep test and product), concat/split and the layout transposes (copies).
#include <catch2/catch.hpp>

#include <array>        // std::array
#include <cstdint>      // std::int32_t, std::uint32_t
#include <limits>       // std::numeric_limits
#include <type_traits>  // std::is_same_v
#include <vector>       // std::vector

#include <sdlora/cuda.hpp>
#include <sdlora/sdlora.hpp>

#include "support.hpp"  // rel_l2, random_tensor

using namespace sdlora;

namespace {

/// A host tensor rounded to T and widened back to float: the exact values a T kernel sees.
template <class T>
Tensor<float, Cpu> rounded(Tensor<float, Cpu> const& x) {
  return convert<float, T>(convert<T, float>(x).view());
}
template <class T>
Tensor<T, Cuda> up(Tensor<float, Cpu> const& x) {
  return to_device(convert<T, float>(x));
}
template <class T>
Tensor<float, Cpu> down(Tensor<T, Cuda> const& x) {
  return convert<float, T>(to_host(x).view());
}
/// Inputs of a T test: random values already rounded to T.
template <class T>
Tensor<float, Cpu> input(Shape shape, std::uint32_t seed) {
  return rounded<T>(test::random_tensor<float>(shape, seed));
}
template <class T>
constexpr double tolerance() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-2;
}
/// Exact equality of two host tensors of one shape.
template <class T>
bool equal(Tensor<T, Cpu> const& a, Tensor<T, Cpu> const& b) {
  if (a.shape() != b.shape()) return false;
  for (Index i = 0; i < a.numel(); ++i)
    if (!(a(i) == b(i))) return false;
  return true;
}

}  // namespace

TEMPLATE_TEST_CASE("cuda conv2d forward and gradients match the CPU", "[cuda][conv]", float, sdlora::bfloat16) {
  Context<Cuda> gpu;
  Context<Cpu> cpu;
  double const tol = tolerance<TestType>();
  struct Case {
    Shape x, w;
    ops::Conv2dGeometry g;
  };
  std::vector<Case> const cases = {
      {Shape{2, 5, 9, 11}, Shape{7, 5, 3, 3}, {1, ops::Pad2d::uniform(1)}},  // resnet conv
      {Shape{2, 4, 9, 8}, Shape{6, 4, 3, 3}, {2, {0, 1, 0, 1}}},             // VAE downsample: asymmetric pad
      {Shape{3, 6, 7, 5}, Shape{4, 6, 1, 1}, {1, {}}},                       // pointwise: a plain GEMM
      {Shape{1, 3, 10, 10}, Shape{5, 3, 4, 2}, {3, {2, 0, 1, 3}}},           // odd kernel, stride 3
  };
  for (Case const& c : cases) {
    CAPTURE(c.x, c.w, c.g);
    Shape const ys = ops::conv2d_output_shape(c.x, c.w, c.g);
    auto const x = input<TestType>(c.x, 1), w = input<TestType>(c.w, 2), b = input<TestType>(Shape{c.w[0]}, 3);
    auto const dy = input<TestType>(ys, 4);
    auto const x_d = up<TestType>(x), w_d = up<TestType>(w), b_d = up<TestType>(b), dy_d = up<TestType>(dy);

    for (bool accumulate : {false, true}) {
      CAPTURE(accumulate);
      auto const y0 = input<TestType>(ys, 5);  // accumulate: y starts non-zero
      Tensor<float, Cpu> y = y0;
      Tensor<TestType, Cuda> y_d = up<TestType>(y0);
      ops::conv2d_forward<float, Cpu>(cpu, y, x, w, b, c.g, accumulate);
      ops::conv2d_forward<TestType, Cuda>(gpu, y_d, x_d, w_d, b_d, c.g, accumulate);
      CHECK(test::rel_l2(down(y_d), y) <= tol);

      auto const dx0 = input<TestType>(c.x, 6);
      Tensor<float, Cpu> dx = dx0;
      Tensor<TestType, Cuda> dx_d = up<TestType>(dx0);
      ops::conv2d_backward_input<float, Cpu>(cpu, dx, dy, w, c.g, accumulate);
      ops::conv2d_backward_input<TestType, Cuda>(gpu, dx_d, dy_d, w_d, c.g, accumulate);
      CHECK(test::rel_l2(down(dx_d), dx) <= tol);
    }
    auto const dw0 = input<TestType>(c.w, 7);  // the weight gradient accumulates
    Tensor<float, Cpu> dw = dw0;
    Tensor<TestType, Cuda> dw_d = up<TestType>(dw0);
    ops::conv2d_backward_weight<float, Cpu>(cpu, dw, dy, x, c.g);
    ops::conv2d_backward_weight<TestType, Cuda>(gpu, dw_d, dy_d, x_d, c.g);
    CHECK(test::rel_l2(down(dw_d), dw) <= tol);
  }
}

TEMPLATE_TEST_CASE("cuda group norm (+ SiLU) forward and backward match the CPU", "[cuda][norm]", float,
                   sdlora::bfloat16) {
  Context<Cuda> gpu;
  Context<Cpu> cpu;
  double const tol = tolerance<TestType>();
  Shape const xs{2, 12, 7, 9};
  Index const groups = 4;
  // Inputs with a non-zero mean per group, so the two-pass variance matters.
  Tensor<float, Cpu> x = test::random_tensor<float>(xs, 11);
  for (Index i = 0; i < x.numel(); ++i) x(i) = x(i) * 2.0f + 0.75f;
  x = rounded<TestType>(x);
  auto const gamma = input<TestType>(Shape{12}, 12), beta = input<TestType>(Shape{12}, 13);
  auto const dy = input<TestType>(xs, 14);
  for (bool silu : {false, true})
    for (bool affine : {true, false}) {
      CAPTURE(silu, affine);
      ops::GroupNorm const op{groups, 1e-5, silu};
      Tensor<float, Cpu> y(xs), mean(Shape{2, groups}), rstd(Shape{2, groups});
      Tensor<float, Cpu> const g = affine ? gamma : Tensor<float, Cpu>(), bt = affine ? beta : Tensor<float, Cpu>();
      ops::group_norm_forward<float, Cpu>(cpu, op, y, mean, rstd, x, g, bt);
      Tensor<TestType, Cuda> y_d(xs), mean_d(Shape{2, groups}), rstd_d(Shape{2, groups});
      auto const x_d = up<TestType>(x);
      Tensor<TestType, Cuda> const g_d = affine ? up<TestType>(gamma) : Tensor<TestType, Cuda>();
      Tensor<TestType, Cuda> const b_d = affine ? up<TestType>(beta) : Tensor<TestType, Cuda>();
      ops::group_norm_forward<TestType, Cuda>(gpu, op, y_d, mean_d, rstd_d, x_d, g_d, b_d);
      CHECK(test::rel_l2(down(y_d), y) <= tol);
      CHECK(test::rel_l2(down(mean_d), mean) <= tol);
      CHECK(test::rel_l2(down(rstd_d), rstd) <= tol);
      if (!std::is_same_v<TestType, float>) continue;  // backward: float only

      Tensor<float, Cpu> dx(xs), dgamma = input<float>(Shape{12}, 15), dbeta = input<float>(Shape{12}, 16);
      Tensor<TestType, Cuda> dx_d(xs), dgamma_d = up<TestType>(dgamma), dbeta_d = up<TestType>(dbeta);
      ops::group_norm_backward<float, Cpu>(cpu, op, dx, affine ? dgamma.view() : TensorView<float, Cpu>(),
                                           affine ? dbeta.view() : TensorView<float, Cpu>(), dy, x, mean, rstd, g, bt);
      ops::group_norm_backward<TestType, Cuda>(gpu, op, dx_d, affine ? dgamma_d.view() : TensorView<TestType, Cuda>(),
                                               affine ? dbeta_d.view() : TensorView<TestType, Cuda>(), up<TestType>(dy),
                                               x_d, mean_d, rstd_d, g_d, b_d);
      CHECK(test::rel_l2(down(dx_d), dx) <= tol);
      CHECK(test::rel_l2(down(dgamma_d), dgamma) <= tol);
      CHECK(test::rel_l2(down(dbeta_d), dbeta) <= tol);
    }
}

TEMPLATE_TEST_CASE("cuda layer norm forward and backward match the CPU", "[cuda][norm]", float, sdlora::bfloat16) {
  Context<Cuda> gpu;
  Context<Cpu> cpu;
  double const tol = tolerance<TestType>();
  Shape const xs{3, 101, 96};  // 303 rows: more rows than the 128 parameter-gradient chunks
  Tensor<float, Cpu> x = test::random_tensor<float>(xs, 21);
  for (Index i = 0; i < x.numel(); ++i) x(i) = x(i) * 3.0f - 0.5f;
  x = rounded<TestType>(x);
  auto const gamma = input<TestType>(Shape{96}, 22), beta = input<TestType>(Shape{96}, 23);
  auto const dy = input<TestType>(xs, 24);
  ops::LayerNorm const op{1e-5};
  Tensor<float, Cpu> y(xs), mean(Shape{303}), rstd(Shape{303});
  ops::layer_norm_forward<float, Cpu>(cpu, op, y, mean, rstd, x, gamma, beta);
  Tensor<TestType, Cuda> y_d(xs), mean_d(Shape{303}), rstd_d(Shape{303});
  auto const x_d = up<TestType>(x), g_d = up<TestType>(gamma), b_d = up<TestType>(beta);
  ops::layer_norm_forward<TestType, Cuda>(gpu, op, y_d, mean_d, rstd_d, x_d, g_d, b_d);
  CHECK(test::rel_l2(down(y_d), y) <= tol);
  CHECK(test::rel_l2(down(mean_d), mean) <= tol);
  CHECK(test::rel_l2(down(rstd_d), rstd) <= tol);

  Tensor<float, Cpu> dx(xs), dgamma = input<TestType>(Shape{96}, 25), dbeta = input<TestType>(Shape{96}, 26);
  Tensor<TestType, Cuda> dx_d(xs), dgamma_d = up<TestType>(dgamma), dbeta_d = up<TestType>(dbeta);
  ops::layer_norm_backward<float, Cpu>(cpu, op, dx, dgamma, dbeta, dy, x, mean, rstd, gamma);
  ops::layer_norm_backward<TestType, Cuda>(gpu, op, dx_d, dgamma_d, dbeta_d, up<TestType>(dy), x_d, mean_d, rstd_d,
                                           g_d);
  CHECK(test::rel_l2(down(dx_d), dx) <= tol);
  CHECK(test::rel_l2(down(dgamma_d), dgamma) <= tol);
  CHECK(test::rel_l2(down(dbeta_d), dbeta) <= tol);

  // Without gamma and parameter gradients (elementwise_affine = false).
  ops::layer_norm_backward<float, Cpu>(cpu, op, dx, {}, {}, dy, x, mean, rstd, {});
  ops::layer_norm_backward<TestType, Cuda>(gpu, op, dx_d, {}, {}, up<TestType>(dy), x_d, mean_d, rstd_d, {});
  CHECK(test::rel_l2(down(dx_d), dx) <= tol);
}

TEMPLATE_TEST_CASE("cuda softmax forward and backward match the CPU; a masked row gives zeros", "[cuda][softmax]",
                   float, sdlora::bfloat16) {
  Context<Cuda> gpu;
  Context<Cpu> cpu;
  double const tol = tolerance<TestType>();
  Shape const xs{5, 7, 333};
  Tensor<float, Cpu> x = test::random_tensor<float>(xs, 31);
  for (Index i = 0; i < x.numel(); ++i) x(i) *= 6.0f;
  x = rounded<TestType>(x);
  for (Index j = 0; j < 333; ++j) x(j) = -std::numeric_limits<float>::infinity();  // row 0: fully masked
  Tensor<float, Cpu> y(xs);
  ops::softmax_forward<float, Cpu>(cpu, y, x);
  Tensor<TestType, Cuda> y_d = up<TestType>(x);
  ops::softmax_forward<TestType, Cuda>(gpu, y_d, y_d);  // in place, as allowed
  Tensor<float, Cpu> const y_out = down(y_d);
  CHECK(test::rel_l2(y_out, y) <= tol);
  bool zero_row = true;
  for (Index j = 0; j < 333; ++j) zero_row = zero_row && y_out(j) == 0.0f;
  CHECK(zero_row);

  auto const dy = input<TestType>(xs, 32), y_in = rounded<TestType>(y);  // both backends see the same y
  Tensor<float, Cpu> dx(xs);
  ops::softmax_backward<float, Cpu>(cpu, dx, y_in, dy);
  Tensor<TestType, Cuda> dx_d = up<TestType>(dy);
  ops::softmax_backward<TestType, Cuda>(gpu, dx_d, up<TestType>(y_in), dx_d);  // dx aliases dy
  CHECK(test::rel_l2(down(dx_d), dx) <= tol);
}

namespace {

/// q, k, v as strided (B, L, W) slices of one fused (B, L, 3W) host tensor (like a fused qkv projection), and the
/// device copy of the same layout.
template <class T, class B, class Storage>
TensorView<T const, B> slice_of(Storage const& fused, Index part, Index width) {
  Shape const s = fused.shape();
  std::array<Index, kMaxRank> strides{};
  strides[0] = s[1] * s[2];
  strides[1] = s[2];
  strides[2] = 1;
  return TensorView<T const, B>(fused.data() + part * width, Shape{s[0], s[1], width}, strides);
}

/// Runs the attention forward and backward on both backends for storage type T (T = double compares double with
/// double); returns the relative errors of o, lse, o from attention_forward_materialized, then dq, dk, dv.
template <class T>
std::vector<double> attention_errors(ops::Attention op, Index batch, Index lq, Index lk, Index width, bool fused) {
  using H = std::conditional_t<std::is_same_v<T, double>, double, float>;  // host type of the reference
  Context<Cuda> gpu;
  Context<Cpu> cpu;
  auto host_input = [](Shape s, std::uint32_t seed) {
    auto const t = test::random_tensor<H>(s, seed);
    if constexpr (std::is_same_v<H, float>)
      return rounded<T>(t);
    else
      return t;
  };
  auto to_gpu = [](Tensor<H, Cpu> const& t) {
    if constexpr (std::is_same_v<H, double>)
      return to_device(t);
    else
      return up<T>(t);
  };
  auto to_cpu = [](Tensor<T, Cuda> const& t) {
    if constexpr (std::is_same_v<H, double>)
      return to_host(t);
    else
      return down(t);
  };
  // Self-attention (lq == lk) may read q, k, v from one fused tensor; cross-attention uses separate tensors.
  Tensor<H, Cpu> const qkv = host_input(Shape{batch, lq, 3 * width}, 41);
  Tensor<H, Cpu> const q_sep = host_input(Shape{batch, lq, width}, 42);
  Tensor<H, Cpu> const k_sep = host_input(Shape{batch, lk, width}, 43), v_sep = host_input(Shape{batch, lk, width}, 44);
  Tensor<T, Cuda> const qkv_d = to_gpu(qkv), q_sep_d = to_gpu(q_sep), k_sep_d = to_gpu(k_sep), v_sep_d = to_gpu(v_sep);
  TensorView<H const, Cpu> const q = fused ? slice_of<H, Cpu>(qkv, 0, width) : q_sep.view();
  TensorView<H const, Cpu> const k = fused ? slice_of<H, Cpu>(qkv, 1, width) : k_sep.view();
  TensorView<H const, Cpu> const v = fused ? slice_of<H, Cpu>(qkv, 2, width) : v_sep.view();
  TensorView<T const, Cuda> const q_d = fused ? slice_of<T, Cuda>(qkv_d, 0, width) : q_sep_d.view();
  TensorView<T const, Cuda> const k_d = fused ? slice_of<T, Cuda>(qkv_d, 1, width) : k_sep_d.view();
  TensorView<T const, Cuda> const v_d = fused ? slice_of<T, Cuda>(qkv_d, 2, width) : v_sep_d.view();

  Shape const lse_shape{batch, op.heads, lq};
  Tensor<H, Cpu> o(Shape{batch, lq, width}), lse(lse_shape);
  ops::attention_forward<H, Cpu>(cpu, op, o, lse, q, k, v);
  Tensor<T, Cuda> o_d(Shape{batch, lq, width}), lse_d(lse_shape);
  ops::attention_forward<T, Cuda>(gpu, op, o_d, lse_d, q_d, k_d, v_d);
  std::vector<double> errors{test::rel_l2(to_cpu(o_d), o), test::rel_l2(to_cpu(lse_d), lse)};
  Tensor<T, Cuda> o_ref_d(Shape{batch, lq, width});  // the "materialised" entry point runs the same kernel on CUDA
  ops::attention_forward_materialized<T, Cuda>(gpu, op, o_ref_d, q_d, k_d, v_d);
  errors.push_back(test::rel_l2(to_cpu(o_ref_d), o));
  if (!std::is_same_v<T, H>) return errors;  // 16-bit storage: forward only

  Tensor<H, Cpu> const dout = host_input(Shape{batch, lq, width}, 45);
  Tensor<H, Cpu> dq(Shape{batch, lq, width}), dk(Shape{batch, lk, width}), dv(Shape{batch, lk, width});
  ops::attention_backward<H, Cpu>(cpu, op, dq, dk, dv, q, k, v, o, lse, dout);
  Tensor<T, Cuda> dq_d(Shape{batch, lq, width}), dk_d(Shape{batch, lk, width}), dv_d(Shape{batch, lk, width});
  ops::attention_backward<T, Cuda>(gpu, op, dq_d, dk_d, dv_d, q_d, k_d, v_d, o_d, lse_d, to_gpu(dout));
  errors.push_back(test::rel_l2(to_cpu(dq_d), dq));
  errors.push_back(test::rel_l2(to_cpu(dk_d), dk));
  errors.push_back(test::rel_l2(to_cpu(dv_d), dv));
  return errors;
}

}  // namespace

TEST_CASE("cuda attention forward and backward match the CPU (heads, causal, strided, cross, wide heads)",
          "[cuda][attention]") {
  struct Case {
    Index heads, batch, lq, lk, width;
    bool causal, fused;
  };
  std::vector<Case> const cases = {
      {2, 2, 70, 70, 80, false, true},    // D = 40 (SD 1.x at 64x64), fused qkv, partial tiles
      {3, 1, 45, 45, 192, true, false},   // causal (CLIP), D = 64
      {2, 2, 37, 77, 320, false, false},  // cross-attention: Lk = 77 text tokens, D = 160
      {1, 1, 20, 20, 512, false, true},   // the VAE's single 512-wide head
  };
  for (Case const& c : cases) {
    CAPTURE(c.heads, c.batch, c.lq, c.lk, c.width, c.causal, c.fused);
    ops::Attention const op{.heads = c.heads, .causal = c.causal};
    std::vector<double> const f = attention_errors<float>(op, c.batch, c.lq, c.lk, c.width, c.fused);
    CHECK(f[0] <= 1e-5);  // o
    CHECK(f[1] <= 1e-5);  // lse
    CHECK(f[2] <= 1e-5);  // o (materialised entry point)
    CHECK(f[3] <= 1e-4);  // dq
    CHECK(f[4] <= 1e-4);  // dk
    CHECK(f[5] <= 1e-4);  // dv
    for (double e : attention_errors<double>(op, c.batch, c.lq, c.lk, c.width, c.fused)) CHECK(e <= 1e-12);
    std::vector<double> const bf = attention_errors<bfloat16>(op, c.batch, c.lq, c.lk, c.width, c.fused);
    CHECK(bf[0] <= 1e-2);
    CHECK(bf[1] <= 1e-2);
    CHECK(bf[2] <= 1e-2);
  }
}

TEST_CASE("cuda GELU, QuickGELU, GEGLU and SiLU match the CPU", "[cuda][activation]") {
  Context<Cuda> gpu;
  Context<Cpu> cpu;
  Shape const xs{4, 9, 130};
  Tensor<float, Cpu> x = test::random_tensor<float>(xs, 51);
  for (Index i = 0; i < x.numel(); ++i) x(i) *= 4.0f;
  auto const dy = test::random_tensor<float>(xs, 52);
  auto const x_d = to_device(x), dy_d = to_device(dy);
  Tensor<float, Cpu> ref(xs);
  Tensor<float, Cuda> out(xs);
  for (auto approx : {ops::GeluApproximation::None, ops::GeluApproximation::Tanh}) {
    ops::gelu_forward<float, Cpu>(cpu, ref, x, approx);
    ops::gelu_forward<float, Cuda>(gpu, out, x_d, approx);
    CHECK(test::rel_l2(to_host(out), ref) <= 1e-5);
    ops::gelu_backward<float, Cpu>(cpu, ref, dy, x, approx);
    ops::gelu_backward<float, Cuda>(gpu, out, dy_d, x_d, approx);
    CHECK(test::rel_l2(to_host(out), ref) <= 1e-5);

    Shape const hs{4, 9, 260};  // [a | g]
    Tensor<float, Cpu> h = test::random_tensor<float>(hs, 53);
    for (Index i = 0; i < h.numel(); ++i) h(i) *= 3.0f;
    auto const h_d = to_device(h);
    ops::Geglu const op{approx};
    ops::geglu_forward<float, Cpu>(cpu, op, ref, h);
    ops::geglu_forward<float, Cuda>(gpu, op, out, h_d);
    CHECK(test::rel_l2(to_host(out), ref) <= 1e-5);
    Tensor<float, Cpu> dh(hs);
    Tensor<float, Cuda> dh_d(hs);
    ops::geglu_backward<float, Cpu>(cpu, op, dh, h, dy);
    ops::geglu_backward<float, Cuda>(gpu, op, dh_d, h_d, dy_d);
    CHECK(test::rel_l2(to_host(dh_d), dh) <= 1e-5);
  }
  ops::quick_gelu_forward<float, Cpu>(cpu, ref, x);
  ops::quick_gelu_forward<float, Cuda>(gpu, out, x_d);
  CHECK(test::rel_l2(to_host(out), ref) <= 1e-5);
  ops::quick_gelu_backward<float, Cpu>(cpu, ref, dy, x);
  ops::quick_gelu_backward<float, Cuda>(gpu, out, dy_d, x_d);
  CHECK(test::rel_l2(to_host(out), ref) <= 1e-5);
  ops::silu_forward<float, Cpu>(cpu, ref, x);
  ops::silu_forward<float, Cuda>(gpu, out, x_d);
  CHECK(test::rel_l2(to_host(out), ref) <= 1e-5);
  ops::silu_backward<float, Cpu>(cpu, ref, dy, x);
  ops::silu_backward<float, Cuda>(gpu, out, dy_d, x_d);
  CHECK(test::rel_l2(to_host(out), ref) <= 1e-5);

  // bfloat16 storage through the same map/zip kernels.
  auto const xb = rounded<bfloat16>(x);
  Tensor<bfloat16, Cuda> outb(xs);
  ops::silu_forward<float, Cpu>(cpu, ref, xb);
  ops::silu_forward<bfloat16, Cuda>(gpu, outb, up<bfloat16>(xb));
  CHECK(test::rel_l2(down(outb), ref) <= 1e-2);
}

TEST_CASE("cuda nearest upsampling equals the CPU exactly (2x, general sizes, backward)", "[cuda][upsample]") {
  Context<Cuda> gpu;
  Context<Cpu> cpu;
  struct Case {
    Shape x, y;
  };
  for (Case const& c : {Case{Shape{2, 3, 5, 7}, Shape{2, 3, 10, 14}}, Case{Shape{1, 4, 5, 7}, Shape{1, 4, 12, 9}},
                        Case{Shape{2, 2, 6, 6}, Shape{2, 2, 4, 13}}, Case{Shape{1, 1, 3, 3}, Shape{1, 1, 3, 3}}}) {
    CAPTURE(c.x, c.y);
    auto const x = test::random_tensor<float>(c.x, 61), dy = test::random_tensor<float>(c.y, 62);
    Tensor<float, Cpu> y(c.y), dx(c.x);
    Tensor<float, Cuda> y_d(c.y), dx_d(c.x);
    ops::upsample_nearest_forward<float, Cpu>(cpu, y, x);
    ops::upsample_nearest_forward<float, Cuda>(gpu, y_d, to_device(x));
    CHECK(equal(to_host(y_d), y));
    ops::upsample_nearest_backward<float, Cpu>(cpu, dx, dy);
    ops::upsample_nearest_backward<float, Cuda>(gpu, dx_d, to_device(dy));
    CHECK(equal(to_host(dx_d), dx));
  }
}

TEST_CASE("cuda sinusoidal timestep embeddings match the CPU", "[cuda][timestep]") {
  Context<Cuda> gpu;
  Context<Cpu> cpu;
  Tensor<float, Cpu> t(Shape{5});
  for (Index i = 0; i < 5; ++i) t(i) = float(i) * 237.25f + 1.0f;  // fractional, up to ~950
  for (Index dim : {320, 33}) {
    for (bool flip : {true, false}) {
      CAPTURE(dim, flip);
      Tensor<float, Cpu> ref(Shape{5, dim});
      Tensor<float, Cuda> out(Shape{5, dim});
      ops::timestep_sinusoidal<float, Cpu>(cpu, ref, t, flip, flip ? 0.0 : 1.0);
      ops::timestep_sinusoidal<float, Cuda>(gpu, out, to_device(t), flip, flip ? 0.0 : 1.0);
      CHECK(test::rel_l2(to_host(out), ref) <= 1e-5);
    }
  }
}

TEST_CASE("cuda embedding gather and scatter-add equal the CPU exactly", "[cuda][embedding]") {
  Context<Cuda> gpu;
  Context<Cpu> cpu;
  auto const weight = test::random_tensor<float>(Shape{50, 24}, 71);
  std::vector<std::int32_t> const ids = {3, 17, 3, 49, 0, 17, 17, 45, 8};  // repeats accumulate
  auto const dy = test::random_tensor<float>(Shape{9, 24}, 72);
  Tensor<float, Cpu> y(Shape{9, 24});
  Tensor<float, Cuda> y_d(Shape{9, 24});
  ops::embedding_forward<float, Cpu>(cpu, y, weight, ids);
  ops::embedding_forward<float, Cuda>(gpu, y_d, to_device(weight), ids);
  CHECK(equal(to_host(y_d), y));
  for (Index row_begin : {0, 10}) {
    CAPTURE(row_begin);
    Tensor<float, Cpu> dw = weight;  // accumulates into a non-zero gradient
    Tensor<float, Cuda> dw_d = to_device(weight);
    ops::embedding_backward<float, Cpu>(cpu, dw, dy, ids, row_begin);
    ops::embedding_backward<float, Cuda>(gpu, dw_d, to_device(dy), ids, row_begin);
    CHECK(equal(to_host(dw_d), dw));
  }
}

TEST_CASE("cuda dropout draws the CPU's mask bit for bit", "[cuda][dropout]") {
  Context<Cuda> gpu;
  Context<Cpu> cpu;
  auto const x = test::random_tensor<float>(Shape{3, 1001}, 81);  // 3003: not a multiple of 4
  ops::Dropout const op{0.3, 1234, 7};
  Tensor<float, Cpu> y(x.shape());
  ops::dropout_apply<float, Cpu>(cpu, op, y, x);
  Tensor<float, Cuda> y_d = to_device(x);
  ops::dropout_apply<float, Cuda>(gpu, op, y_d, y_d);  // in place
  Tensor<float, Cpu> const out = to_host(y_d);
  CHECK(equal(out, y));
  Index dropped = 0;
  for (Index i = 0; i < out.numel(); ++i) dropped += out(i) == 0.0f;
  CHECK(dropped > 700);  // about 30% of 3003: the mask is not trivially all-kept
  CHECK(dropped < 1100);
}

TEST_CASE("cuda concat/split of channels and NCHW <-> NLC equal the CPU exactly", "[cuda][layout]") {
  Context<Cuda> gpu;
  Context<Cpu> cpu;
  auto const a = test::random_tensor<float>(Shape{2, 3, 5, 7}, 91),
             b = test::random_tensor<float>(Shape{2, 4, 5, 7}, 92);
  Tensor<float, Cpu> y(Shape{2, 7, 5, 7});
  Tensor<float, Cuda> y_d(Shape{2, 7, 5, 7});
  ops::concat_channels<float, Cpu>(cpu, y, a, b);
  ops::concat_channels<float, Cuda>(gpu, y_d, to_device(a), to_device(b));
  CHECK(equal(to_host(y_d), y));
  Tensor<float, Cuda> a_d(a.shape()), b_d(b.shape());
  ops::split_channels<float, Cuda>(gpu, a_d, b_d, y_d);
  CHECK(equal(to_host(a_d), a));
  CHECK(equal(to_host(b_d), b));

  auto const x = test::random_tensor<float>(Shape{3, 40, 9, 11}, 93);  // partial 32 x 32 tiles
  Tensor<float, Cpu> nlc(Shape{3, 99, 40}), back(x.shape());
  Tensor<float, Cuda> nlc_d(Shape{3, 99, 40}), back_d(x.shape());
  ops::nchw_to_nlc<float, Cpu>(cpu, nlc, x);
  ops::nchw_to_nlc<float, Cuda>(gpu, nlc_d, to_device(x));
  CHECK(equal(to_host(nlc_d), nlc));
  ops::nlc_to_nchw<float, Cuda>(gpu, back_d, nlc_d);
  CHECK(equal(to_host(back_d), x));
}
