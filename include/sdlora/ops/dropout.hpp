/// @file dropout.hpp
/// @brief Dropout with a counter-based mask: element i of call `counter` under `seed` is kept when the Philox
/// uniform philox_uniform_at(seed, counter, 0, i) >= p, and kept elements are scaled by 1 / (1 - p). The mask is a
/// pure function of (seed, counter, i), so nothing is stored: backward (and a gradient-checkpointing recompute)
/// regenerates it, and CPU and CUDA draw the same mask. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <cstdint>  // std::uint64_t

#include <sdlora/core/backend.hpp>     // Context
#include <sdlora/core/config.hpp>      // SDLORA_HOST_DEVICE
#include <sdlora/core/rng.hpp>         // philox_uniform_at
#include <sdlora/core/tensor.hpp>      // TensorView
#include <sdlora/ops/elementwise.hpp>  // detail::expect_same_size
#include <sdlora/ops/impl.hpp>         // Impl

namespace sdlora::ops {

/// Op tag: drop probability and the mask's stream (Philox key = seed, subsequence = counter).
/// reference: https://pytorch.org/docs/stable/generated/torch.nn.Dropout.html (the same distribution; torch's own
/// mask bits are not reproduced)
struct Dropout {
  double p = 0.0;
  std::uint64_t seed = 0;
  std::uint64_t counter = 0;
};

namespace fn {
/// 1 / (1 - p) when element i is kept, 0 when it is dropped.
struct DropoutFactor {
  Dropout op;
  SDLORA_HOST_DEVICE double operator()(std::uint64_t i) const {
    return double(philox_uniform_at(op.seed, op.counter, 0, i)) >= op.p ? 1.0 / (1.0 - op.p) : 0.0;
  }
};
}  // namespace fn

/// y = x * mask / (1 - p) elementwise; y may alias x. The same call on dy gives dx (the mask is regenerated).
template <class T, class B>
void dropout_apply(Context<B>& ctx, Dropout const& op, TensorView<T, B> y, TensorView<T const, B> x) {
  detail::expect_same_size("dropout", y, x);
  SDLORA_EXPECTS(op.p >= 0.0 && op.p < 1.0, "[dropout] p must be in [0, 1), got " << op.p);
  Impl<Dropout, B>::run(ctx, op, y, x);
}

}  // namespace sdlora::ops
