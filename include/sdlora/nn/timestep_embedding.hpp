/// @file timestep_embedding.hpp
/// @brief Timesteps (the sinusoidal projection, no parameters) and TimestepEmbedding (linear_1, SiLU, linear_2), as
/// diffusers' `Timesteps` and `TimestepEmbedding` (act_fn = "silu", no cond_proj, no post_act).
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <string>   // std::string
#include <utility>  // std::move

#include <sdlora/nn/linear.hpp>       // Linear
#include <sdlora/nn/module.hpp>       // Mode, join
#include <sdlora/ops/activation.hpp>  // ops::silu_forward, ops::silu_backward
#include <sdlora/ops/timestep.hpp>    // ops::timestep_sinusoidal

namespace sdlora::nn {

/// reference: diffusers/models/embeddings.py, Timesteps
template <class T, class B = Cpu>
class Timesteps {
 public:
  Timesteps() = default;
  Timesteps(Index num_channels, bool flip_sin_to_cos, double downscale_freq_shift, double scale = 1.0)
      : num_channels(num_channels), flip_sin_to_cos(flip_sin_to_cos), downscale_freq_shift(downscale_freq_shift),
        scale(scale) {}

  Index num_channels = 0;
  bool flip_sin_to_cos = false;
  double downscale_freq_shift = 1.0;
  double scale = 1.0;

  /// emb (N, num_channels) from timesteps (N). Not differentiated (timesteps are data).
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> timesteps) const {
    SDLORA_EXPECTS(timesteps.rank() == 1, "[timesteps] timesteps must be (N), got " << timesteps.shape());
    auto emb = Tensor<T, B>::uninitialized(Shape{timesteps.dim(0), num_channels});
    ops::timestep_sinusoidal<T, B>(ctx, emb.view(), timesteps, flip_sin_to_cos, downscale_freq_shift, scale);
    return emb;
  }

  template <class V>
  void visit(std::string const&, V&&) {}
};

/// reference: diffusers/models/embeddings.py, TimestepEmbedding
template <class T, class B = Cpu>
class TimestepEmbedding {
 public:
  TimestepEmbedding() = default;
  /// TimestepEmbedding(in_channels, time_embed_dim, out_dim = time_embed_dim, bias = true)
  TimestepEmbedding(Index in_channels, Index time_embed_dim, Index out_dim = 0, bool bias = true)
      : linear_1(in_channels, time_embed_dim, bias),
        linear_2(time_embed_dim, out_dim > 0 ? out_dim : time_embed_dim, bias) {}

  Linear<T, B> linear_1;
  Linear<T, B> linear_2;

  /// y (N, out) = linear_2(silu(linear_1(sample (N, in)))).
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> sample, Mode mode = Mode::Infer) {
    auto h = linear_1.forward(ctx, sample, mode);  // (N, time_embed_dim)
    auto a = Tensor<T, B>::uninitialized(h.shape());
    ops::silu_forward<T, B>(ctx, a.view(), h.view());
    auto y = linear_2.forward(ctx, a.view(), mode);
    if (keeps_saved(mode)) saved_.h = std::move(h);
    return y;
  }

  /// dsample (N, in); the linears accumulate their trainable gradients.
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) {
    SDLORA_EXPECTS(!saved_.h.empty(), "[timestep_embedding.backward] run forward with Mode::Train first");
    auto da = linear_2.backward(ctx, dy);  // (N, time_embed_dim)
    ops::silu_backward<T, B>(ctx, da.view(), da.view(), saved_.h.view());
    saved_ = {};  // one backward per forward
    return linear_1.backward(ctx, da.view());
  }

  template <class V>
  void visit(std::string const& name, V&& visitor) {
    linear_1.visit(join(name, "linear_1"), visitor);
    linear_2.visit(join(name, "linear_2"), visitor);
  }

 private:
  struct Saved {
    Tensor<T, B> h;  // (N, time_embed_dim): the SiLU input, for silu'(h)
  } saved_;
};

}  // namespace sdlora::nn
