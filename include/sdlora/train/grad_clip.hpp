/// @file grad_clip.hpp
/// @brief clip_grad_norm: torch.nn.utils.clip_grad_norm_ over the gradients of a parameter list. Include
/// <sdlora/train.hpp> instead.
#pragma once

#include <algorithm>    // std::min
#include <cmath>        // std::sqrt
#include <type_traits>  // std::is_same_v
#include <vector>       // std::vector

#include <sdlora/core/backend.hpp>     // Cpu
#include <sdlora/core/error.hpp>       // SDLORA_EXPECTS
#include <sdlora/train/param_ref.hpp>  // ParamRef

namespace sdlora::train {

/// The L2 norm of all gradients together (as if concatenated), as torch computes it: each tensor's norm rounded to
/// T, then the norm of those norms. Parameters that are not trainable are left out (torch: `grad is None`).
template <class T, class B = Cpu>
T grad_norm(std::vector<ParamRef<T, B>> const& params) {
  static_assert(std::is_same_v<B, Cpu>, "sdlora::train::grad_norm has a CPU kernel only so far");
  double total_sq = 0;
  for (auto const& ref : params) {
    if (!ref.param->trainable || ref.param->grad.empty()) continue;
    T const* g = ref.param->grad.data();  // (numel)
    double sq = 0;
    for (Index i = 0; i < ref.param->grad.numel(); ++i) sq += double(g[i]) * double(g[i]);
    T const norm = T(std::sqrt(sq));  // torch.linalg.vector_norm(g, 2), a T tensor
    total_sq += double(norm) * double(norm);
  }
  return T(std::sqrt(total_sq));  // vector_norm(stack(norms), 2)
}

/// torch.nn.utils.clip_grad_norm_(params, max_norm): scales every gradient by
/// min(max_norm / (total + 1e-6), 1) and returns the total norm before clipping. Like torch, it always multiplies
/// (by exactly 1 when nothing is clipped) and computes the coefficient in T as `reciprocal(total + 1e-6) * max_norm`
/// (Tensor.__rtruediv__).
template <class T, class B = Cpu>
double clip_grad_norm(std::vector<ParamRef<T, B>> const& params, double max_norm) {
  SDLORA_EXPECTS(max_norm > 0, "[clip_grad_norm] max_norm must be positive, got " << max_norm);
  T const total = grad_norm(params);
  T const coef = std::min((T(1) / (total + T(1e-6))) * T(max_norm), T(1));
  for (auto const& ref : params) {
    if (!ref.param->trainable || ref.param->grad.empty()) continue;
    T* g = ref.param->grad.data();  // (numel)
    for (Index i = 0; i < ref.param->grad.numel(); ++i) g[i] = g[i] * coef;
  }
  return double(total);
}

}  // namespace sdlora::train
