/// @file upsample.hpp
/// @brief Nearest-neighbour upsampling of NCHW tensors (torch.nn.functional.interpolate(mode="nearest")): forward and
/// backward (the sum of dy over the output pixels that copy each input pixel). Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <sdlora/core/backend.hpp>  // Context
#include <sdlora/core/tensor.hpp>   // TensorView
#include <sdlora/ops/impl.hpp>      // Impl

namespace sdlora::ops {

/// Op tag. The source of output index o along an axis of input size `in` and output size `out` is torch's:
/// o when out == in, o / 2 when out == 2 in, else min(floor(o * float(in) / out), in - 1).
struct UpsampleNearest {};

namespace upsample_detail {
template <class VY, class VX>
void expect_pair(char const* op, VY const& y, VX const& x) {
  SDLORA_EXPECTS(x.rank() == 4 && y.rank() == 4 && x.is_contiguous() && y.is_contiguous() && x.dim(0) == y.dim(0) &&
                     x.dim(1) == y.dim(1) && y.dim(2) >= 1 && y.dim(3) >= 1 && x.dim(2) >= 1 && x.dim(3) >= 1,
                 "[" << op << "] need contiguous (N, C, H, W) input and (N, C, H', W') output, got input "
                     << x.shape() << ", output " << y.shape());
}
}  // namespace upsample_detail

/// y (N, C, H', W') = nearest(x (N, C, H, W)); the output size is y's (diffusers' `output_size`).
template <class T, class B>
void upsample_nearest_forward(Context<B>& ctx, TensorView<T, B> y, TensorView<T const, B> x) {
  upsample_detail::expect_pair("upsample_nearest", y, x);
  Impl<UpsampleNearest, B>::forward(ctx, y, x);
}

/// dx (N, C, H, W) = the sum of dy (N, C, H', W') over the output pixels copied from each input pixel (overwrites).
template <class T, class B>
void upsample_nearest_backward(Context<B>& ctx, TensorView<T, B> dx, TensorView<T const, B> dy) {
  upsample_detail::expect_pair("upsample_nearest.backward", dy, dx);
  Impl<UpsampleNearest, B>::backward(ctx, dx, dy);
}

/// y (N, C, 2H, 2W) = nearest 2x of x (N, C, H, W): F.interpolate(x, scale_factor=2.0, mode="nearest").
template <class T, class B>
void upsample_nearest2x_forward(Context<B>& ctx, TensorView<T, B> y, TensorView<T const, B> x) {
  SDLORA_EXPECTS(x.rank() == 4 && y.rank() == 4 && y.dim(2) == 2 * x.dim(2) && y.dim(3) == 2 * x.dim(3),
                 "[upsample_nearest2x] y must be (N, C, 2H, 2W) for x " << x.shape() << ", got " << y.shape());
  upsample_nearest_forward(ctx, y, x);
}

/// dx (N, C, H, W) = sum of each 2x2 block of dy (N, C, 2H, 2W).
template <class T, class B>
void upsample_nearest2x_backward(Context<B>& ctx, TensorView<T, B> dx, TensorView<T const, B> dy) {
  SDLORA_EXPECTS(dx.rank() == 4 && dy.rank() == 4 && dy.dim(2) == 2 * dx.dim(2) && dy.dim(3) == 2 * dx.dim(3),
                 "[upsample_nearest2x.backward] dy must be (N, C, 2H, 2W) for dx " << dx.shape() << ", got "
                                                                                   << dy.shape());
  upsample_nearest_backward(ctx, dx, dy);
}

}  // namespace sdlora::ops
