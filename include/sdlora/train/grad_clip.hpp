/// @file grad_clip.hpp
/// @brief clip_grad_norm: torch.nn.utils.clip_grad_norm_ over the gradients of a parameter list. Include
/// <sdlora/train.hpp> instead.
#pragma once

#include <algorithm>    // std::min
#include <cmath>        // std::sqrt
#include <type_traits>  // std::is_same_v
#include <vector>       // std::vector

#include <sdlora/core/backend.hpp>     // Cpu, Context
#include <sdlora/core/error.hpp>       // SDLORA_EXPECTS
#include <sdlora/ops/elementwise.hpp>  // ops::scale
#include <sdlora/ops/reduce.hpp>       // ops::sum_squares
#include <sdlora/train/param_ref.hpp>  // ParamRef

namespace sdlora::train {

/// The L2 norm of all gradients together (as if concatenated), as torch computes it: each tensor's norm rounded to
/// T, then the norm of those norms. Parameters that are not trainable are left out (torch: `grad is None`). The
/// host loop on Cpu; on another backend each tensor's sum of squares is one backend reduction (in double).
template <class T, class B = Cpu>
T grad_norm(Context<B>& ctx, std::vector<ParamRef<T, B>> const& params) {
  double total_sq = 0;
  for (auto const& ref : params) {
    if (!ref.param->trainable || ref.param->grad.empty()) continue;
    double sq = 0;
    if constexpr (std::is_same_v<B, Cpu>) {
      T const* g = ref.param->grad.data();  // (numel)
      for (Index i = 0; i < ref.param->grad.numel(); ++i) sq += double(g[i]) * double(g[i]);
    } else {
      sq = ops::sum_squares<T, B>(ctx, TensorView<T const, B>(ref.param->grad.view()));
    }
    T const norm = T(std::sqrt(sq));  // torch.linalg.vector_norm(g, 2), a T tensor
    total_sq += double(norm) * double(norm);
  }
  return T(std::sqrt(total_sq));  // vector_norm(stack(norms), 2)
}
template <class T>
T grad_norm(std::vector<ParamRef<T, Cpu>> const& params) {
  Context<Cpu> ctx;
  return grad_norm<T, Cpu>(ctx, params);
}

/// torch.nn.utils.clip_grad_norm_(params, max_norm): scales every gradient by
/// min(max_norm / (total + 1e-6), 1) and returns the total norm before clipping. Like torch, it always multiplies
/// (by exactly 1 when nothing is clipped) and computes the coefficient in T as `reciprocal(total + 1e-6) * max_norm`
/// (Tensor.__rtruediv__). Any backend (the scaling is ops::scale, g * T(coef) as on the host).
template <class T, class B = Cpu>
double clip_grad_norm(Context<B>& ctx, std::vector<ParamRef<T, B>> const& params, double max_norm) {
  SDLORA_EXPECTS(max_norm > 0, "[clip_grad_norm] max_norm must be positive, got " << max_norm);
  T const total = grad_norm<T, B>(ctx, params);
  T const coef = std::min((T(1) / (total + T(1e-6))) * T(max_norm), T(1));
  for (auto const& ref : params) {
    if (!ref.param->trainable || ref.param->grad.empty()) continue;
    if constexpr (std::is_same_v<B, Cpu>) {
      T* g = ref.param->grad.data();  // (numel)
      for (Index i = 0; i < ref.param->grad.numel(); ++i) g[i] = g[i] * coef;
    } else {
      ops::scale<T, B>(ctx, ref.param->grad.view(), double(coef));
    }
  }
  return double(total);
}
template <class T>
double clip_grad_norm(std::vector<ParamRef<T, Cpu>> const& params, double max_norm) {
  Context<Cpu> ctx;
  return clip_grad_norm<T, Cpu>(ctx, params, max_norm);
}

}  // namespace sdlora::train
