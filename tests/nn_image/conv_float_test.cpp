// The float convolution (implicit GEMM: the packed GEMM reads the column matrix from the image) against the
// definition evaluated in double, for forward, input gradient and weight gradient, on every kernel path this CPU
// can run: kernel sizes 1/3/5, strides 1/2/3, asymmetric padding, several images, depths over one GEMM block and
// outputs over one GEMM tile, and the accumulate flags.
#include <catch2/catch.hpp>

#include <algorithm>  // std::min
#include <vector>     // std::vector

#include "support.hpp"

using namespace sdlora;
using test::random_tensor;
using test::rel_l2;

namespace {

struct Geometry {
  Index n, c, o, k, h, w;
  ops::Conv2dGeometry g;
};

Tensor<double> to_double(Tensor<float> const& t) {
  Tensor<double> d(t.shape());
  for (Index i = 0; i < t.numel(); ++i) d(i) = t(i);
  return d;
}

/// The three sums of the definition at once: y = conv(x, w); dx = conv^T(dy, w); dw = corr(dy, x); in double. Flat
/// NCHW / OCkk offsets: the sums run ~10 M times for the largest case, which the sanitizer build must also afford.
void direct(Geometry const& s, Tensor<double> const& x, Tensor<double> const& w, Tensor<double> const& dy,
            Tensor<double>& y, Tensor<double>& dx, Tensor<double>& dw) {
  y = Tensor<double>(dy.shape());
  dx = Tensor<double>(x.shape());
  dw = Tensor<double>(w.shape());
  Index const oh_n = dy.dim(2), ow_n = dy.dim(3);
  for (Index n = 0; n < s.n; ++n)
    for (Index o = 0; o < s.o; ++o)
      for (Index oh = 0; oh < oh_n; ++oh)
        for (Index ow = 0; ow < ow_n; ++ow) {
          Index const out = ((n * s.o + o) * oh_n + oh) * ow_n + ow;  // (n, o, oh, ow)
          for (Index c = 0; c < s.c; ++c)
            for (Index i = 0; i < s.k; ++i)
              for (Index j = 0; j < s.k; ++j) {
                Index const ih = oh * s.g.stride - s.g.pad.top + i, iw = ow * s.g.stride - s.g.pad.left + j;
                if (ih < 0 || ih >= s.h || iw < 0 || iw >= s.w) continue;
                Index const in = ((n * s.c + c) * s.h + ih) * s.w + iw;  // (n, c, ih, iw)
                Index const wi = ((o * s.c + c) * s.k + i) * s.k + j;    // (o, c, i, j)
                y(out) += w(wi) * x(in);
                dx(in) += w(wi) * dy(out);
                dw(wi) += dy(out) * x(in);
              }
        }
}

/// Every kernel path this CPU can run.
std::vector<cpu::Isa> kernel_paths() {
  std::vector<cpu::Isa> paths{cpu::Isa::kPortable};
  if (cpu::detected_isa() >= cpu::Isa::kAvx2) paths.push_back(cpu::Isa::kAvx2);
  if (cpu::detected_isa() >= cpu::Isa::kAvx512) paths.push_back(cpu::Isa::kAvx512);
  return paths;
}

}  // namespace

TEST_CASE("float conv2d (implicit GEMM) equals the definition on every kernel path", "[nn_image][conv2d][isa]") {
  // Tolerance 2e-6 relative L2: float sums of up to ~1500 products of values in [-1, 1] (about 1e-7 measured).
  std::vector<Geometry> const cases{
      {2, 3, 4, 3, 6, 7, {1, ops::Pad2d::uniform(1)}},  {2, 3, 4, 3, 7, 6, {2, ops::Pad2d::uniform(1)}},
      {1, 3, 2, 3, 7, 8, {2, {0, 1, 0, 1}}},            {2, 2, 3, 3, 5, 5, {3, {1, 2, 2, 0}}},
      {1, 2, 3, 5, 4, 6, {1, ops::Pad2d::uniform(2)}},  {1, 5, 4, 1, 4, 4, {2, {}}},
      {2, 32, 40, 3, 20, 22, {1, ops::Pad2d::uniform(1)}},  // K = 288 > one depth block, P = 440 > one tile
      {1, 30, 13, 3, 9, 31, {1, {0, 2, 1, 0}}},
      {3, 8, 12, 3, 8, 8, {1, ops::Pad2d::uniform(1)}},  // 64 pixels per image: images side by side in one GEMM
      {2, 16, 5, 1, 8, 4, {1, {}}},                      // pointwise, 32 pixels per image
  };
  std::vector<cpu::Isa> const paths = kernel_paths();
  for (Geometry const& s : cases) {
    auto const x = random_tensor<float>(Shape{s.n, s.c, s.h, s.w}, 1);
    auto const w = random_tensor<float>(Shape{s.o, s.c, s.k, s.k}, 2);
    auto const dy = random_tensor<float>(ops::conv2d_output_shape(x.shape(), w.shape(), s.g), 3);
    Tensor<double> y_once, dx_once, dw_once;  // the definition, the same for every path
    direct(s, to_double(x), to_double(w), to_double(dy), y_once, dx_once, dw_once);
    for (cpu::Isa isa : paths) {
      INFO("isa " << cpu::isa_name(isa) << ", N " << s.n << ", C " << s.c << ", O " << s.o << ", k " << s.k << ", "
                  << s.g);
      Context<Cpu> ctx;
      ctx.isa = isa;
      Tensor<double> y_ref = y_once, dx_ref = dx_once, dw_ref = dw_once;

      Tensor<float> y(dy.shape()), dx(x.shape()), dw(w.shape());
      ops::conv2d_forward<float, Cpu>(ctx, y.view(), x.view(), w.view(), {}, s.g);
      CHECK(rel_l2(y, y_ref) < 2e-6);
      ops::conv2d_backward_input<float, Cpu>(ctx, dx.view(), dy.view(), w.view(), s.g);
      CHECK(rel_l2(dx, dx_ref) < 2e-6);
      ops::conv2d_backward_weight<float, Cpu>(ctx, dw.view(), dy.view(), x.view(), s.g);
      CHECK(rel_l2(dw, dw_ref) < 2e-6);

      // accumulate: a second forward / input gradient adds onto the first; the weight gradient always adds.
      ops::conv2d_forward<float, Cpu>(ctx, y.view(), x.view(), w.view(), {}, s.g, true);
      ops::conv2d_backward_input<float, Cpu>(ctx, dx.view(), dy.view(), w.view(), s.g, true);
      ops::conv2d_backward_weight<float, Cpu>(ctx, dw.view(), dy.view(), x.view(), s.g);
      for (Tensor<double>* r : {&y_ref, &dx_ref, &dw_ref})
        for (Index i = 0; i < r->numel(); ++i) (*r)(i) *= 2;
      CHECK(rel_l2(y, y_ref) < 2e-6);
      CHECK(rel_l2(dx, dx_ref) < 2e-6);
      CHECK(rel_l2(dw, dw_ref) < 2e-6);
    }
  }
}

TEST_CASE("The implicit GEMM's column packers write the column matrix of the definition", "[nn_image][conv2d]") {
  // ImageColumns packs cols(img) (C*kh*kw, P) straight from the image, counting channel and tap as it goes down a
  // panel. Checked value for value (a copy: exact) against cols(row (c, i, j), column (oh, ow)) = img[c, oh * stride
  // - pad_top + i, ow * stride - pad_left + j] or 0 outside the image: depth ranges starting inside a channel's taps,
  // column ranges starting inside an output row, panels inside one output row and across rows (output widths 32, 8
  // and 5), the last panel partly filled (its padding must be zero), panel widths 16 and 32.
  struct Case {
    Index c, h, w, k, stride, pad_top, pad_left;
  };
  std::vector<Case> const cases{{3, 32, 32, 3, 1, 1, 1}, {4, 8, 8, 3, 1, 1, 1}, {2, 9, 7, 3, 2, 0, 1},
                                {3, 5, 5, 1, 1, 0, 0},   {2, 6, 9, 5, 1, 2, 3}, {5, 10, 11, 3, 3, 2, 0}};
  for (Case const& s : cases) {
    Index const ho = (s.h + 2 * s.pad_top - s.k) / s.stride + 1, wo = (s.w + 2 * s.pad_left - s.k) / s.stride + 1;
    auto const img = random_tensor<float>(Shape{s.c, s.h, s.w}, 4);
    ops::cpu::ImageColumns const cols{img.data(), s.c, s.h, s.w, s.k, s.k, s.stride, s.pad_top, s.pad_left, wo};
    auto value = [&](Index row, Index col) {
      Index const ch = row / (s.k * s.k), i = (row / s.k) % s.k, j = row % s.k;
      Index const ih = col / wo * s.stride - s.pad_top + i, iw = col % wo * s.stride - s.pad_left + j;
      return ih < 0 || ih >= s.h || iw < 0 || iw >= s.w ? 0.f : img((ch * s.h + ih) * s.w + iw);
    };
    Index const rows = s.c * s.k * s.k, columns = ho * wo;
    for (Index nr : {Index(16), Index(32)})
      for (Index k0 : {Index(0), std::min<Index>(rows - 1, 5)})
        for (Index n0 : {Index(0), std::min<Index>(columns - 1, 19)}) {
          INFO("C " << s.c << ", " << s.h << "x" << s.w << ", k " << s.k << ", stride " << s.stride << ", nr " << nr
                    << ", rows from " << k0 << ", columns from " << n0);
          Index const kc = rows - k0, nc = columns - n0, panels = (nc + nr - 1) / nr;
          std::vector<float> b(std::size_t(panels * nr * kc), -1.f);
          std::vector<float> bt(std::size_t((kc + nr - 1) / nr * nr * nc), -1.f);
          cols.pack_as_b(b.data(), k0, kc, n0, nc, nr);  // panel q: (kc, nr), columns n0 + q * nr ...
          int wrong = 0;
          for (Index q = 0; q < panels; ++q)
            for (Index d = 0; d < kc; ++d)
              for (Index t = 0; t < nr; ++t) {
                Index const col = n0 + q * nr + t;
                float const want = col < columns ? value(k0 + d, col) : 0.f;
                wrong += b[std::size_t((q * kc + d) * nr + t)] != want;
              }
          cols.pack_transposed_as_b(bt.data(), n0, nc, k0, kc, nr);  // panel q: (nc, nr), rows k0 + q * nr ...
          for (Index q = 0; q * nr < kc; ++q)
            for (Index d = 0; d < nc; ++d)
              for (Index t = 0; t < nr; ++t) {
                Index const row = k0 + q * nr + t;
                float const want = row < rows ? value(row, n0 + d) : 0.f;
                wrong += bt[std::size_t((q * nc + d) * nr + t)] != want;
              }
          CHECK(wrong == 0);
        }
  }
}

TEST_CASE("Winograd F(2x2, 3x3) convolutions equal the definition on every kernel path", "[nn_image][conv2d][isa]") {
  // winograd::convolve directly, for the forward problem (x -> y) and the input gradient's (dy -> dx, the kernel
  // flipped and transposed): odd output sizes (tiles cut by the border), pads 0, 1, 2 and asymmetric ones, output
  // channels not a multiple of any MR, several images and several 64-tile blocks per image, input channels in one
  // range of two depth blocks (300 > 256) and in three ranges (range 128), with and without accumulate and bias.
  // Tolerance 2e-6 relative L2, as for the direct path (measured below 5e-7: the transforms add and halve).
  std::vector<Geometry> const cases{
      {2, 20, 13, 3, 9, 11, {1, ops::Pad2d::uniform(1)}},   {1, 9, 7, 3, 10, 12, {1, {}}},
      {1, 6, 14, 3, 7, 5, {1, ops::Pad2d::uniform(2)}},     {2, 5, 9, 3, 8, 9, {1, {1, 0, 2, 1}}},
      {1, 12, 7, 3, 20, 18, {1, {0, 2, 2, 0}}},             {1, 300, 7, 3, 6, 7, {1, ops::Pad2d::uniform(1)}},
  };
  std::vector<cpu::Isa> const paths = kernel_paths();
  for (Geometry const& s : cases) {
    auto const x = random_tensor<float>(Shape{s.n, s.c, s.h, s.w}, 5);
    auto const w = random_tensor<float>(Shape{s.o, s.c, s.k, s.k}, 6);
    auto const dy = random_tensor<float>(ops::conv2d_output_shape(x.shape(), w.shape(), s.g), 7);
    auto const bias = random_tensor<float>(Shape{s.o}, 8);
    Tensor<double> y_ref, dx_ref, dw_ref;
    direct(s, to_double(x), to_double(w), to_double(dy), y_ref, dx_ref, dw_ref);
    ops::cpu::ConvDims const d = ops::cpu::conv_dims(x.shape(), w.shape(), dy.shape());
    for (cpu::Isa isa : paths)
      for (Index range : {Index(0), Index(128)}) {
        if (range > 0 && s.c <= range) continue;
        INFO("isa " << cpu::isa_name(isa) << ", N " << s.n << ", C " << s.c << ", O " << s.o << ", " << s.h << "x"
                    << s.w << ", " << s.g << ", range " << range);
        Context<Cpu> ctx;
        ctx.isa = isa;
        cpu::winograd::Problem forward = ops::cpu::winograd_problem(s.n, d, s.g, false);
        cpu::winograd::Problem gradient = ops::cpu::winograd_problem(s.n, d, s.g, true);
        forward.range = gradient.range = range;
        cpu::WeightSource const ws{w.data(), DType::F32, 0, false};
        Tensor<float> y(dy.shape()), dx(x.shape());
        y.fill(0.5f);  // overwritten: accumulate is off
        dx.fill(0.25f);
        cpu::winograd::convolve(ctx, forward, y.data(), x.data(), ws, false, nullptr);
        CHECK(rel_l2(y, y_ref) < 2e-6);
        cpu::winograd::convolve(ctx, gradient, dx.data(), dy.data(), ws, false, nullptr);
        CHECK(rel_l2(dx, dx_ref) < 2e-6);

        // accumulate onto the first result, then the bias last: y = 2 conv(x) + b.
        cpu::winograd::convolve(ctx, forward, y.data(), x.data(), ws, true, bias.data());
        Tensor<double> y2 = y_ref;
        for (Index i = 0; i < y2.numel(); ++i) y2(i) = 2 * y2(i) + bias(i / (dy.dim(2) * dy.dim(3)) % s.o);
        CHECK(rel_l2(y, y2) < 2e-6);
        cpu::winograd::convolve(ctx, gradient, dx.data(), dy.data(), ws, true, nullptr);
        for (Index i = 0; i < dx_ref.numel(); ++i) dx_ref(i) *= 2;
        CHECK(rel_l2(dx, dx_ref) < 2e-6);
        for (Index i = 0; i < dx_ref.numel(); ++i) dx_ref(i) /= 2;
      }
  }
}

TEST_CASE("Big 3x3 convolutions take the Winograd path unless the context or SDLORA_WINOGRAD says not",
          "[nn_image][conv2d]") {
  // 32x32 outputs with 64 channels in and 70 out: 256 tiles, the smallest the path takes (winograd::worth_it).
  // conv2d_forward and conv2d_backward_input then match the definition (2e-6 relative L2) with other bits than the
  // direct path's (ctx.winograd = false), the same bits on 1 and 2 threads; a 16-bit weight gives the same result
  // as its float widening. 30x32 outputs (240 tiles) stay on the direct path.
  Geometry const s{1, 64, 70, 3, 32, 32, {1, ops::Pad2d::uniform(1)}};
  auto const x = random_tensor<float>(Shape{s.n, s.c, s.h, s.w}, 9);
  auto const w = random_tensor<float>(Shape{s.o, s.c, s.k, s.k}, 10);
  auto const dy = random_tensor<float>(ops::conv2d_output_shape(x.shape(), w.shape(), s.g), 11);
  Tensor<double> y_ref, dx_ref, dw_ref;
  direct(s, to_double(x), to_double(w), to_double(dy), y_ref, dx_ref, dw_ref);
  auto run = [&](Context<Cpu>& ctx, Tensor<float>& y, Tensor<float>& dx) {
    y = Tensor<float>(dy.shape());
    dx = Tensor<float>(x.shape());
    ops::conv2d_forward<float, Cpu>(ctx, y.view(), x.view(), w.view(), {}, s.g);
    ops::conv2d_backward_input<float, Cpu>(ctx, dx.view(), dy.view(), w.view(), s.g);
  };
  Context<Cpu> two;
  two.num_threads = 2;
  Context<Cpu> one = two;
  one.num_threads = 1;
  Context<Cpu> direct_only = two;
  direct_only.winograd = false;
  Tensor<float> y2, dx2, y1, dx1, yd, dxd;
  run(two, y2, dx2);
  run(one, y1, dx1);
  run(direct_only, yd, dxd);
  REQUIRE(cpu::winograd::environment_allows());  // (the suite never sets SDLORA_WINOGRAD=0)
  CHECK(rel_l2(y2, y_ref) < 2e-6);
  CHECK(rel_l2(dx2, dx_ref) < 2e-6);
  CHECK(rel_l2(yd, y_ref) < 2e-6);
  CHECK_FALSE(test::same_bits(y2, yd));
  CHECK_FALSE(test::same_bits(dx2, dxd));
  CHECK(test::same_bits(y2, y1));
  CHECK(test::same_bits(dx2, dx1));
  CHECK(ops::cpu::use_winograd(two, 1, ops::cpu::conv_dims(x.shape(), w.shape(), dy.shape()), s.g, false));
  CHECK_FALSE(ops::cpu::use_winograd(two, 1, ops::cpu::ConvDims{64, 30, 32, 70, 3, 3, 30, 32}, s.g, false));
  CHECK_FALSE(ops::cpu::use_winograd(two, 1, ops::cpu::ConvDims{32, 32, 32, 70, 3, 3, 32, 32}, s.g, false));
  CHECK_FALSE(ops::cpu::use_winograd(direct_only, 1, ops::cpu::conv_dims(x.shape(), w.shape(), dy.shape()), s.g,
                                     false));

  // A 16-bit weight is widened while the weight transform reads it: the same bits as its widened float copy.
  std::vector<std::uint16_t> half(std::size_t(w.numel()));
  cpu::narrow16(half.data(), w.data(), w.numel(), DType::F16);
  Tensor<float> widened(w.shape());
  cpu::widen16(widened.data(), half.data(), w.numel(), DType::F16);
  Tensor<float> y16(dy.shape()), y32(dy.shape());
  ops::Impl<ops::Conv2d, Cpu>::forward_stored(two, {s.g}, y16.view(), x.view(), {half.data(), DType::F16, 0, false},
                                              w.shape(), {});
  ops::conv2d_forward<float, Cpu>(two, y32.view(), x.view(), widened.view(), {}, s.g);
  CHECK(test::same_bits(y16, y32));
  CHECK(rel_l2(y16, y_ref) < 2e-3);  // (half precision weights)
}
