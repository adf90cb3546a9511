/// @file embedding.hpp
/// @brief Embedding: a (num, dim) table looked up by token id (torch.nn.Embedding); also the position embedding.
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <cstdint>  // std::int32_t
#include <span>     // std::span
#include <string>   // std::string
#include <vector>   // std::vector

#include <sdlora/nn/module.hpp>      // Parameter, Mode, join
#include <sdlora/ops/embedding.hpp>  // ops::embedding_forward, ops::embedding_backward

namespace sdlora::nn {

/// reference: https://pytorch.org/docs/stable/generated/torch.nn.Embedding.html
/// Textual Inversion: make `weight` trainable and set `grad_row_begin` to the original vocabulary size; backward
/// then adds gradients only to the rows of the added tokens (the other rows' grad stays zero, so an optimizer step
/// leaves them unchanged apart from weight decay, which the trainer must skip for them).
template <class T, class B = Cpu>
class Embedding {
 public:
  Embedding() = default;
  Embedding(Index num_embeddings, Index embedding_dim) : weight(Shape{num_embeddings, embedding_dim}) {}

  Parameter<T, B> weight;  // (num, dim)
  Index grad_row_begin = 0;  // rows below it get no gradient

  Index num_embeddings() const { return weight.value.dim(0); }
  Index embedding_dim() const { return weight.value.dim(1); }

  /// y (..., dim) = weight[ids (...)] for ids of any shape.
  Tensor<T, B> forward(Context<B>& ctx, Tensor<std::int32_t, Cpu> const& ids, Mode mode = Mode::Infer) {
    Shape out = ids.shape();
    SDLORA_EXPECTS(out.rank() < kMaxRank, "[embedding] ids of rank " << out.rank() << " leave no axis for dim");
    std::vector<Index> extents = out.to_vector();
    extents.push_back(embedding_dim());
    auto y = lookup(ctx, ids.span(), mode);
    return std::move(y).reshaped(Shape(extents));
  }
  /// y (N, dim) = weight[ids (N)].
  Tensor<T, B> forward(Context<B>& ctx, std::vector<std::int32_t> const& ids, Mode mode = Mode::Infer) {
    return lookup(ctx, std::span<std::int32_t const>(ids), mode);
  }

  /// weight.grad[ids[n]] += dy[n] for ids[n] >= grad_row_begin when trainable. Token ids have no gradient, so
  /// nothing is returned.
  void backward(Context<B>& ctx, TensorView<T const, B> dy) {
    if (!weight.trainable) return;
    Index const n = Index(saved_.ids.size());
    SDLORA_EXPECTS(dy.numel() == n * embedding_dim() && dy.dim(-1) == embedding_dim(),
                   "[embedding.backward] dy must hold " << n << " rows of " << embedding_dim()
                                                         << " (run forward with Mode::Train first), got "
                                                         << dy.shape());
    ops::embedding_backward<T, B>(ctx, weight.grad.view(), dy.reshaped(Shape{n, embedding_dim()}),
                                  std::span<std::int32_t const>(saved_.ids), grad_row_begin);
  }

  template <class V>
  void visit(std::string const& name, V&& visitor) {
    visitor(name, *this);
  }
  template <class F>
  void for_each_parameter(std::string const& prefix, F&& f) {
    f(join(prefix, "weight"), weight);
  }

 private:
  Tensor<T, B> lookup(Context<B>& ctx, std::span<std::int32_t const> ids, Mode mode) {
    auto y = Tensor<T, B>::uninitialized(Shape{Index(ids.size()), embedding_dim()});
    ops::embedding_forward<T, B>(ctx, y.view(), weight.value.view(), ids);
    if (mode == Mode::Train && weight.trainable) saved_.ids.assign(ids.begin(), ids.end());
    return y;
  }

  struct Saved {
    std::vector<std::int32_t> ids;  // (N): the rows backward scatters dy into; kept only when weight is trainable
  } saved_;
};

}  // namespace sdlora::nn
