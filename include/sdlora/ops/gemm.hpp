/// @file gemm.hpp
/// @brief Batched matrix multiply: C = alpha * op(A) @ op(B) + beta * C. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <sdlora/core/backend.hpp>  // Context
#include <sdlora/core/tensor.hpp>   // TensorView
#include <sdlora/ops/impl.hpp>      // Impl

namespace sdlora::ops {

/// Op tag and options. Matrices are the last two axes of each view, inner stride 1, any row stride (so the
/// per-head slices of a (B, L, H*D) activation are valid operands). A leading batch axis is optional on each
/// operand; a rank-2 operand is broadcast over C's batch.
struct Gemm {
  bool trans_a = false;
  bool trans_b = false;
  double alpha = 1.0;
  double beta = 0.0;  // beta == 0 never reads C (it may hold garbage)
};

namespace detail {
template <class V>
inline Index mat_rows(V const& v, bool trans) {
  return trans ? v.dim(-1) : v.dim(-2);
}
template <class V>
inline Index mat_cols(V const& v, bool trans) {
  return trans ? v.dim(-2) : v.dim(-1);
}
}  // namespace detail

/// c (Batch?, M, N) = alpha * op(a) (Batch?, M, K) @ op(b) (Batch?, K, N) + beta * c
template <class T, class B>
void gemm(Context<B>& ctx, TensorView<T, B> c, TensorView<T const, B> a, TensorView<T const, B> b, Gemm op = {}) {
  SDLORA_EXPECTS(c.rank() >= 2 && c.rank() <= 3 && a.rank() >= 2 && a.rank() <= 3 && b.rank() >= 2 && b.rank() <= 3,
                 "[gemm] operands must be rank 2 or 3, got c " << c.shape() << ", a " << a.shape() << ", b "
                                                               << b.shape());
  Index const m = detail::mat_rows(a, op.trans_a), k = detail::mat_cols(a, op.trans_a);
  Index const kb = detail::mat_rows(b, op.trans_b), n = detail::mat_cols(b, op.trans_b);
  SDLORA_EXPECTS(k == kb && c.dim(-2) == m && c.dim(-1) == n,
                 "[gemm] shapes do not chain: c " << c.shape() << " = a " << a.shape() << (op.trans_a ? "^T" : "")
                                                  << " @ b " << b.shape() << (op.trans_b ? "^T" : ""));
  Index const batch = c.rank() == 3 ? c.dim(0) : 1;
  SDLORA_EXPECTS((a.rank() == 2 || a.dim(0) == batch) && (b.rank() == 2 || b.dim(0) == batch),
                 "[gemm] batch mismatch: c " << c.shape() << ", a " << a.shape() << ", b " << b.shape());
  SDLORA_EXPECTS(c.stride(-1) == 1 && a.stride(-1) == 1 && b.stride(-1) == 1,
                 "[gemm] the last axis of every operand must be contiguous");
  Impl<Gemm, B>::run(ctx, op, c, a, b);
}

}  // namespace sdlora::ops
