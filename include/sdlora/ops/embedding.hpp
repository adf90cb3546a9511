/// @file embedding.hpp
/// @brief Embedding lookup (gather rows of a table by token id) and its gradient (scatter-add of rows).
/// Token ids are host integers on every backend (a CUDA kernel uploads them). Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <cstdint>  // std::int32_t
#include <span>     // std::span

#include <sdlora/core/backend.hpp>  // Context
#include <sdlora/core/tensor.hpp>   // TensorView
#include <sdlora/ops/impl.hpp>      // Impl

namespace sdlora::ops {

/// Op tag. reference: https://pytorch.org/docs/stable/generated/torch.nn.Embedding.html
struct Embedding {};

namespace detail {
template <class VY, class VW>
void expect_embedding_shapes(char const* op, VY const& y, VW const& w, std::span<std::int32_t const> ids) {
  SDLORA_EXPECTS(w.rank() == 2 && y.rank() == 2 && y.dim(0) == Index(ids.size()) && y.dim(1) == w.dim(1),
                 "[" << op << "] rows must be (" << ids.size() << ", D) for a (V, D) table, got " << y.shape()
                     << " and table " << w.shape());
  SDLORA_EXPECTS(y.is_contiguous() && w.is_contiguous(), "[" << op << "] operands must be contiguous");
  for (std::size_t i = 0; i < ids.size(); ++i)
    SDLORA_EXPECTS(ids[i] >= 0 && ids[i] < w.dim(0),
                   "[" << op << "] token id " << ids[i] << " at position " << i << " is outside a table of "
                       << w.dim(0) << " rows");
}
}  // namespace detail

/// y (N, D) = weight (V, D)[ids (N)].
template <class T, class B>
void embedding_forward(Context<B>& ctx, TensorView<T, B> y, TensorView<T const, B> weight,
                       std::span<std::int32_t const> ids) {
  detail::expect_embedding_shapes("embedding", y, weight, ids);
  Impl<Embedding, B>::forward(ctx, y, weight, ids);
}

/// dweight (V, D)[ids[n]] += dy (N, D)[n] for every n with ids[n] >= row_begin (rows below row_begin are frozen,
/// e.g. the original vocabulary while Textual Inversion trains the added tokens). Repeated ids accumulate.
template <class T, class B>
void embedding_backward(Context<B>& ctx, TensorView<T, B> dweight, TensorView<T const, B> dy,
                        std::span<std::int32_t const> ids, Index row_begin = 0) {
  detail::expect_embedding_shapes("embedding.backward", dy, dweight, ids);
  Impl<Embedding, B>::backward(ctx, dweight, dy, ids, row_begin);
}

}  // namespace sdlora::ops
