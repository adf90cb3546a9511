// The float convolution (implicit GEMM: the packed GEMM reads the column matrix from the image) against the
// definition evaluated in double, for forward, input gradient and weight gradient, on every kernel path this CPU
// can run: kernel sizes 1/3/5, strides 1/2/3, asymmetric padding, several images, depths over one GEMM block and
// outputs over one GEMM tile, and the accumulate flags.
#include <catch2/catch.hpp>

#include <vector>

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
  std::vector<cpu::Isa> paths{cpu::Isa::kPortable};
  if (cpu::detected_isa() >= cpu::Isa::kAvx2) paths.push_back(cpu::Isa::kAvx2);
  if (cpu::detected_isa() >= cpu::Isa::kAvx512) paths.push_back(cpu::Isa::kAvx512);
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
