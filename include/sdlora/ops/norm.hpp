/// @file norm.hpp
/// @brief Group normalisation over (N, C, *) with an optional fused SiLU, and layer normalisation over the last
/// axis: forward (keeps mean and 1/std per group or row) and backward. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <sdlora/core/backend.hpp>  // Context
#include <sdlora/core/tensor.hpp>   // TensorView
#include <sdlora/ops/impl.hpp>      // Impl

namespace sdlora::ops {

/// Op tag. `silu` applies SiLU to the normalised, affine output (GroupNorm + SiLU, everywhere in SD's resnets);
/// its backward recomputes the pre-activation from x, mean, rstd, gamma and beta.
struct GroupNorm {
  Index groups;
  double eps = 1e-5;
  bool silu = false;
};

/// Op tag: normalisation over the last axis.
struct LayerNorm {
  double eps = 1e-5;
};

namespace norm_detail {
template <class V>
bool present(V const& v) {
  return v.data() != nullptr;
}
template <class V>
void expect_vector(char const* op, char const* name, V const& v, Index n) {
  SDLORA_EXPECTS(!present(v) || (v.rank() == 1 && v.dim(0) == n && v.is_contiguous()),
                 "[" << op << "] " << name << " must be (" << n << ") or absent, got " << v.shape());
}
template <class V>
void expect_group_stats(char const* op, V const& stats, Index n, Index g) {
  SDLORA_EXPECTS(stats.rank() == 2 && stats.dim(0) == n && stats.dim(1) == g && stats.is_contiguous(),
                 "[" << op << "] mean and rstd must be (" << n << ", " << g << "), got " << stats.shape());
}
}  // namespace norm_detail

/// y (N, C, *) = (x - mean) * rstd * gamma (C) + beta (C), statistics over each of `groups` channel groups of each
/// sample; then silu(y) with op.silu. Writes mean (N, G) and rstd (N, G) = 1 / sqrt(var + eps) (biased variance).
/// gamma and beta may be absent (null data): affine = false. y may not alias x.
/// reference: https://pytorch.org/docs/stable/generated/torch.nn.GroupNorm.html
template <class T, class B>
void group_norm_forward(Context<B>& ctx, GroupNorm const& op, TensorView<T, B> y, TensorView<T, B> mean,
                        TensorView<T, B> rstd, TensorView<T const, B> x, TensorView<T const, B> gamma,
                        TensorView<T const, B> beta) {
  SDLORA_EXPECTS(x.rank() >= 2 && x.is_contiguous() && y.is_contiguous() && y.shape() == x.shape(),
                 "[group_norm] x and y must be contiguous (N, C, *) of one shape, got x " << x.shape() << ", y "
                                                                                          << y.shape());
  SDLORA_EXPECTS(op.groups >= 1 && x.dim(1) % op.groups == 0,
                 "[group_norm] " << x.dim(1) << " channels do not split into " << op.groups << " groups");
  norm_detail::expect_vector("group_norm", "gamma", gamma, x.dim(1));
  norm_detail::expect_vector("group_norm", "beta", beta, x.dim(1));
  norm_detail::expect_group_stats("group_norm", mean, x.dim(0), op.groups);
  norm_detail::expect_group_stats("group_norm", rstd, x.dim(0), op.groups);
  Impl<GroupNorm, B>::forward(ctx, op, y, mean, rstd, x, gamma, beta);
}

/// dx (N, C, *) = d GroupNorm / dx applied to dy; dgamma (C) += sum dy * xhat and dbeta (C) += sum dy (with op.silu,
/// dy is first multiplied by silu' of the pre-activation). dgamma / dbeta may be absent (frozen or affine = false).
/// beta is read only with op.silu.
template <class T, class B>
void group_norm_backward(Context<B>& ctx, GroupNorm const& op, TensorView<T, B> dx, TensorView<T, B> dgamma,
                         TensorView<T, B> dbeta, TensorView<T const, B> dy, TensorView<T const, B> x,
                         TensorView<T const, B> mean, TensorView<T const, B> rstd, TensorView<T const, B> gamma,
                         TensorView<T const, B> beta) {
  SDLORA_EXPECTS(x.rank() >= 2 && x.is_contiguous() && dy.is_contiguous() && dx.is_contiguous() &&
                     dy.shape() == x.shape() && dx.shape() == x.shape(),
                 "[group_norm.backward] x, dy, dx must be contiguous (N, C, *) of one shape, got x "
                     << x.shape() << ", dy " << dy.shape() << ", dx " << dx.shape());
  SDLORA_EXPECTS(op.groups >= 1 && x.dim(1) % op.groups == 0,
                 "[group_norm.backward] " << x.dim(1) << " channels do not split into " << op.groups << " groups");
  Index const c = x.dim(1);
  norm_detail::expect_vector("group_norm.backward", "gamma", gamma, c);
  norm_detail::expect_vector("group_norm.backward", "beta", beta, c);
  norm_detail::expect_vector("group_norm.backward", "dgamma", dgamma, c);
  norm_detail::expect_vector("group_norm.backward", "dbeta", dbeta, c);
  norm_detail::expect_group_stats("group_norm.backward", mean, x.dim(0), op.groups);
  norm_detail::expect_group_stats("group_norm.backward", rstd, x.dim(0), op.groups);
  Impl<GroupNorm, B>::backward(ctx, op, dx, dgamma, dbeta, dy, x, mean, rstd, gamma, beta);
}

/// y (..., D) = (x - mean) * rstd * gamma (D) + beta (D) over the last axis; writes mean and rstd, each (rows) with
/// rows = numel / D. gamma and beta may be absent (elementwise_affine = false). y may not alias x.
/// reference: https://pytorch.org/docs/stable/generated/torch.nn.LayerNorm.html
template <class T, class B>
void layer_norm_forward(Context<B>& ctx, LayerNorm const& op, TensorView<T, B> y, TensorView<T, B> mean,
                        TensorView<T, B> rstd, TensorView<T const, B> x, TensorView<T const, B> gamma,
                        TensorView<T const, B> beta) {
  SDLORA_EXPECTS(x.rank() >= 1 && x.is_contiguous() && y.is_contiguous() && y.shape() == x.shape(),
                 "[layer_norm] x and y must be contiguous (..., D) of one shape, got x " << x.shape() << ", y "
                                                                                         << y.shape());
  Index const d = x.dim(-1), rows = d == 0 ? 0 : x.numel() / d;
  norm_detail::expect_vector("layer_norm", "gamma", gamma, d);
  norm_detail::expect_vector("layer_norm", "beta", beta, d);
  SDLORA_EXPECTS(mean.numel() == rows && rstd.numel() == rows && mean.is_contiguous() && rstd.is_contiguous(),
                 "[layer_norm] mean and rstd must hold " << rows << " rows, got " << mean.shape() << ", "
                                                         << rstd.shape());
  Impl<LayerNorm, B>::forward(ctx, op, y, mean, rstd, x, gamma, beta);
}

/// dx (..., D) = d LayerNorm / dx applied to dy; dgamma (D) += sum over rows of dy * xhat, dbeta (D) += sum dy.
/// dgamma / dbeta may be absent.
template <class T, class B>
void layer_norm_backward(Context<B>& ctx, LayerNorm const& op, TensorView<T, B> dx, TensorView<T, B> dgamma,
                         TensorView<T, B> dbeta, TensorView<T const, B> dy, TensorView<T const, B> x,
                         TensorView<T const, B> mean, TensorView<T const, B> rstd, TensorView<T const, B> gamma) {
  SDLORA_EXPECTS(x.rank() >= 1 && x.is_contiguous() && dy.is_contiguous() && dx.is_contiguous() &&
                     dy.shape() == x.shape() && dx.shape() == x.shape(),
                 "[layer_norm.backward] x, dy, dx must be contiguous (..., D) of one shape, got x "
                     << x.shape() << ", dy " << dy.shape() << ", dx " << dx.shape());
  Index const d = x.dim(-1), rows = d == 0 ? 0 : x.numel() / d;
  norm_detail::expect_vector("layer_norm.backward", "gamma", gamma, d);
  norm_detail::expect_vector("layer_norm.backward", "dgamma", dgamma, d);
  norm_detail::expect_vector("layer_norm.backward", "dbeta", dbeta, d);
  SDLORA_EXPECTS(mean.numel() == rows && rstd.numel() == rows,
                 "[layer_norm.backward] mean and rstd must hold " << rows << " rows, got " << mean.shape() << ", "
                                                                  << rstd.shape());
  Impl<LayerNorm, B>::backward(ctx, op, dx, dgamma, dbeta, dy, x, mean, rstd, gamma);
}

}  // namespace sdlora::ops
