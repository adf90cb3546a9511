/// @file timestep.hpp
/// @brief Sinusoidal timestep embeddings, as diffusers' `get_timestep_embedding` (DDPM / LDM): for i < dim/2,
/// freq_i = exp(-ln(max_period) * i / (dim/2 - downscale_freq_shift)), emb = [sin(scale t freq), cos(scale t freq)]
/// (or [cos, sin] with flip_sin_to_cos), zero-padded by one column when dim is odd. Include <sdlora/sdlora.hpp>.
#pragma once

#include <sdlora/core/backend.hpp>  // Context
#include <sdlora/core/tensor.hpp>   // TensorView
#include <sdlora/ops/impl.hpp>      // Impl

namespace sdlora::ops {

/// Op tag with diffusers' arguments (SD 1.x / 2.x UNets: flip_sin_to_cos = true, downscale_freq_shift = 0).
struct TimestepSinusoidal {
  bool flip_sin_to_cos = false;
  double downscale_freq_shift = 1.0;
  double scale = 1.0;
  double max_period = 10000.0;
};

/// out (N, dim) = the sinusoidal embedding of timesteps (N) (fractional timesteps allowed).
/// With T = float every step rounds to float in diffusers' order (its embedding is computed in float32).
/// reference: diffusers/models/embeddings.py, get_timestep_embedding
template <class T, class B>
void timestep_sinusoidal(Context<B>& ctx, TensorView<T, B> out, TensorView<T const, B> timesteps,
                         bool flip_sin_to_cos, double downscale_freq_shift, double scale = 1.0,
                         double max_period = 10000.0) {
  SDLORA_EXPECTS(timesteps.rank() == 1 && timesteps.is_contiguous(),
                 "[timestep_sinusoidal] timesteps must be (N), got " << timesteps.shape());
  SDLORA_EXPECTS(out.rank() == 2 && out.is_contiguous() && out.dim(0) == timesteps.dim(0) && out.dim(1) >= 2,
                 "[timestep_sinusoidal] out must be (" << timesteps.dim(0) << ", dim >= 2), got " << out.shape());
  SDLORA_EXPECTS(double(out.dim(1) / 2) != downscale_freq_shift,
                 "[timestep_sinusoidal] dim / 2 == downscale_freq_shift divides by zero (dim " << out.dim(1) << ")");
  Impl<TimestepSinusoidal, B>::run(ctx, TimestepSinusoidal{flip_sin_to_cos, downscale_freq_shift, scale, max_period},
                                   out, timesteps);
}

}  // namespace sdlora::ops
