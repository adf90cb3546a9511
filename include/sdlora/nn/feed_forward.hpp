/// @file feed_forward.hpp
/// @brief Transformer MLPs: diffusers' GEGLU and FeedForward (net.0 = GEGLU, net.1 = dropout, net.2 = Linear), and
/// transformers' CLIPMLP (fc1, quick_gelu, fc2). Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <string>   // std::string
#include <utility>  // std::move

#include <sdlora/nn/dropout.hpp>  // Dropout
#include <sdlora/nn/gelu.hpp>     // QuickGelu
#include <sdlora/nn/linear.hpp>   // Linear
#include <sdlora/nn/module.hpp>   // Mode, join
#include <sdlora/nn/saved.hpp>    // SavedTensor
#include <sdlora/ops/gelu.hpp>    // ops::Geglu, ops::geglu_forward, ops::geglu_backward, GeluApproximation

namespace sdlora::nn {

/// diffusers.models.activations.GEGLU: h = proj(x) (..., 2 dim_out), hidden, gate = h.chunk(2, -1),
/// y = hidden * gelu(gate).
template <class T, class B = Cpu>
class Geglu {
 public:
  Geglu() = default;
  Geglu(Index dim_in, Index dim_out, bool bias = true,
        ops::GeluApproximation approximate = ops::GeluApproximation::None)
      : proj(dim_in, 2 * dim_out, bias), approximate(approximate) {}

  Linear<T, B> proj;  // dim_in -> 2 dim_out
  ops::GeluApproximation approximate = ops::GeluApproximation::None;

  /// y (..., dim_out) from x (..., dim_in).
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, Mode mode = Mode::Infer) {
    Tensor<T, B> h = proj.forward(ctx, x, mode);  // (..., 2 dim_out)
    Shape out = h.shape();
    out[-1] /= 2;
    auto const in = saved_.h.keep(ctx, std::move(h), mode);  // h, or h rounded to the 16 bits kept
    auto y = Tensor<T, B>::uninitialized(out);  // (..., dim_out)
    ops::geglu_forward<T, B>(ctx, ops::Geglu{approximate}, y.view(), in.x);
    return y;
  }
  /// dx (..., dim_in) from dy (..., dim_out).
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) {
    SDLORA_EXPECTS(!saved_.h.empty(), "[geglu.backward] run forward with Mode::Train first");
    auto dh = Tensor<T, B>::uninitialized(saved_.h.shape());  // (..., 2 dim_out)
    auto const h = saved_.h.take(ctx);
    ops::geglu_backward<T, B>(ctx, ops::Geglu{approximate}, dh.view(), h.view(), dy);
    saved_ = {};  // one backward per forward
    return proj.backward(ctx, dh.view());
  }

  template <class V>
  void visit(std::string const& prefix, V&& visitor) {
    proj.visit(join(prefix, "proj"), visitor);
  }

 private:
  struct Saved {
    SavedTensor<T, B> h;  // (..., 2 dim_out): both halves enter the product's derivative (hidden, and gelu'(gate))
  } saved_;
};

/// diffusers.models.attention.FeedForward with activation_fn "geglu" (or "geglu-approximate" with
/// GeluApproximation::Tanh): net.0 = GEGLU(dim, inner_dim), net.1 = Dropout, net.2 = Linear(inner_dim, dim_out).
/// Other activations (gelu, gelu-approximate, swiglu, ...) are not used by SD 1.x/2.x/XL and are not provided.
template <class T, class B = Cpu>
class FeedForward {
 public:
  FeedForward() = default;
  /// As diffusers' FeedForward(dim, dim_out=None, mult=4, dropout=0.0, activation_fn="geglu", inner_dim=None,
  /// bias=True): dim_out = 0 means dim, inner_dim = 0 means mult * dim.
  FeedForward(Index dim, Index dim_out = 0, Index mult = 4, double dropout = 0.0, Index inner_dim = 0,
              bool bias = true, ops::GeluApproximation approximate = ops::GeluApproximation::None)
      : net_0(dim, inner_dim ? inner_dim : mult * dim, bias, approximate),
        net_1(dropout),
        net_2(inner_dim ? inner_dim : mult * dim, dim_out ? dim_out : dim, bias) {}

  Geglu<T, B> net_0;    // "net.0"
  Dropout<T, B> net_1;  // "net.1"
  Linear<T, B> net_2;   // "net.2"

  /// y (..., dim_out) from x (..., dim).
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, Mode mode = Mode::Infer) {
    Tensor<T, B> h = net_0.forward(ctx, x, mode);  // (..., inner)
    if (net_1.p > 0.0) h = net_1.forward(ctx, h.view(), mode);
    return net_2.forward(ctx, h.view(), mode);
  }
  /// What backward needs after forward(x, mode), without net.2's product: nothing in backward reads the output
  /// (gradient checkpointing's recompute). Returns false, having kept nothing, where an adapter on net.2 must see it.
  bool keep_for_backward(Context<B>& ctx, TensorView<T const, B> x, Mode mode) {
    if (net_2.adapted()) return false;
    Tensor<T, B> h = net_0.forward(ctx, x, mode);  // (..., inner)
    if (net_1.p > 0.0) h = net_1.forward(ctx, h.view(), mode);
    net_2.keep_for_backward(ctx, h.view(), mode);
    return true;
  }
  /// dx (..., dim) from dy (..., dim_out).
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) {
    Tensor<T, B> dh = net_2.backward(ctx, dy);  // (..., inner)
    if (net_1.p > 0.0) dh = net_1.backward(ctx, dh.view());
    return net_0.backward(ctx, dh.view());
  }

  template <class V>
  void visit(std::string const& prefix, V&& visitor) {
    net_0.visit(join(prefix, "net.0"), visitor);
    net_2.visit(join(prefix, "net.2"), visitor);
  }
};

/// transformers.models.clip.modeling_clip.CLIPMLP with hidden_act "quick_gelu": fc2(quick_gelu(fc1(x))).
template <class T, class B = Cpu>
class ClipMlp {
 public:
  ClipMlp() = default;
  ClipMlp(Index hidden_size, Index intermediate_size) : fc1(hidden_size, intermediate_size),
                                                        fc2(intermediate_size, hidden_size) {}

  Linear<T, B> fc1;  // hidden -> intermediate
  QuickGelu<T, B> activation_fn;
  Linear<T, B> fc2;  // intermediate -> hidden

  /// y (..., hidden) from x (..., hidden).
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, Mode mode = Mode::Infer) {
    Tensor<T, B> h = fc1.forward(ctx, x, mode);   // (..., intermediate)
    Tensor<T, B> a = activation_fn.forward(ctx, h.view(), mode);  // (..., intermediate)
    return fc2.forward(ctx, a.view(), mode);
  }
  /// dx (..., hidden) from dy (..., hidden).
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) {
    Tensor<T, B> da = fc2.backward(ctx, dy);                  // (..., intermediate)
    Tensor<T, B> dh = activation_fn.backward(ctx, da.view());  // (..., intermediate)
    return fc1.backward(ctx, dh.view());
  }

  template <class V>
  void visit(std::string const& prefix, V&& visitor) {
    fc1.visit(join(prefix, "fc1"), visitor);
    fc2.visit(join(prefix, "fc2"), visitor);
  }
};

}  // namespace sdlora::nn
