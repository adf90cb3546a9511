/// @file update.hpp
/// @brief The optimizers' elementwise update: `ops::update(ctx, x, g, s1, s2, f)` calls f(x[i], g[i], s1 + i, s2 + i)
/// for every element of a parameter x, its gradient g and up to two state tensors (null when absent);
/// `ops::update_many(ctx, slices)` does it for every tensor of an optimizer in one pass (each with its own rule); and
/// the update rules of AdamW and SGD as functors with a host+device call operator, written once for every backend
/// (train/optimizer.hpp builds them). Include <sdlora/train.hpp> instead.
#pragma once

#include <algorithm>  // std::sort, std::adjacent_find
#include <cmath>      // std::abs, std::sqrt
#include <span>       // std::span
#include <vector>     // std::vector

#include <sdlora/core/backend.hpp>  // Context
#include <sdlora/core/config.hpp>   // SDLORA_HOST_DEVICE
#include <sdlora/core/error.hpp>    // SDLORA_EXPECTS
#include <sdlora/core/tensor.hpp>   // TensorView
#include <sdlora/ops/impl.hpp>      // Impl

namespace sdlora::ops {

struct Update {};      // f(x[i], g[i], s1 + i, s2 + i), x and the states updated in place
struct UpdateMany {};  // Update over a list of tensors, each with its own f

/// One tensor of a multi-tensor update: a parameter x, its gradient g, up to two state tensors (empty views when
/// absent) and the rule for this tensor (its own step count, hence its own bias corrections).
template <class T, class B, class F>
struct UpdateSlice {
  TensorView<T, B> x;
  TensorView<T const, B> g;
  TensorView<T, B> s1, s2;
  F f;
};

namespace fn {
/// torch.optim.AdamW's `_single_tensor_adam` per element, in T (the scalars are cast to T by the optimizer as torch
/// casts its Python floats):  x *= decay;  m = lerp(m, g, w1);  v = v*b2 + c2*g*g;
/// x += neg_step_size * m / (sqrt(v) / bias2_sqrt + eps).  s1 = exp_avg, s2 = exp_avg_sq.
template <class T>
struct AdamWUpdate {
  T decay, w1, b2, c2, neg_step_size, bias2_sqrt, eps;
  bool decays;
  /// at::lerp: self + w * (end - self) for |w| < 0.5, else end - (end - self) * (1 - w).
  SDLORA_HOST_DEVICE static T lerp(T self, T end, T w) {
    return std::abs(w) < T(0.5) ? self + w * (end - self) : end - (end - self) * (T(1) - w);
  }
  SDLORA_HOST_DEVICE void operator()(T& x, T g, T* m, T* v) const {
    T xi = x;
    if (decays) xi = xi * decay;
    *m = lerp(*m, g, w1);
    *v = *v * b2 + c2 * g * g;
    T const denom = std::sqrt(*v) / bias2_sqrt + eps;
    x = xi + neg_step_size * *m / denom;
  }
};

/// torch.optim.SGD's `_single_tensor_sgd` per element: d = g + wd*x;  buf = first ? d : buf*momentum + keep*d;
/// d = nesterov ? d + momentum*buf : buf;  x += neg_lr * d.  s1 = momentum_buffer (null without momentum).
template <class T>
struct SgdUpdate {
  T wd, momentum, keep, neg_lr;
  bool decays, has_momentum, first, nesterov;
  SDLORA_HOST_DEVICE void operator()(T& x, T g, T* buf, T* /*unused*/) const {
    T d = g;
    if (decays) d = d + wd * x;  // grad.add(param, alpha=weight_decay)
    if (has_momentum) {
      *buf = first ? d : *buf * momentum + keep * d;  // buf.mul_(momentum).add_(grad, alpha=1 - dampening)
      d = nesterov ? d + momentum * *buf : *buf;
    }
    x = x + neg_lr * d;  // param.add_(grad, alpha=-lr)
  }
};
}  // namespace fn

/// The operands of one tensor's update: x and g contiguous of one size, each state absent or contiguous of that size.
template <class T, class B>
void check_update_operands(char const* op, TensorView<T, B> x, TensorView<T const, B> g, TensorView<T, B> s1,
                           TensorView<T, B> s2) {
  SDLORA_EXPECTS(x.is_contiguous() && g.is_contiguous() && g.numel() == x.numel(),
                 "[" << op << "] parameter " << x.shape() << " and gradient " << g.shape()
                     << " must be contiguous, of one size");
  for (auto const* s : {&s1, &s2})
    SDLORA_EXPECTS(s->empty() || (s->is_contiguous() && s->numel() == x.numel()),
                   "[" << op << "] state " << s->shape() << " does not match the parameter " << x.shape());
}

/// f(x[i], g[i], s1 + i, s2 + i) for every i; s1 / s2 may be empty views (f then gets null pointers). Contiguous
/// tensors of one size.
template <class T, class B, class F>
void update(Context<B>& ctx, TensorView<T, B> x, TensorView<T const, B> g, TensorView<T, B> s1, TensorView<T, B> s2,
            F f) {
  check_update_operands<T, B>("update", x, g, s1, s2);
  Impl<Update, B>::run(ctx, x, g, s1, s2, f);
}

/// update(ctx, s.x, s.g, s.s1, s.s2, s.f) for every slice, as one pass over all of them: the Cpu backend splits the
/// concatenated elements into fixed chunks over its threads (a LoRA's hundreds of small factors run in parallel as
/// one job instead of one after another), so every element gets exactly the arithmetic of `update` and the result
/// does not depend on the thread count. The slices must not share a parameter tensor.
template <class T, class B, class F>
void update_many(Context<B>& ctx, std::span<UpdateSlice<T, B, F> const> slices) {
  std::vector<T const*> starts;
  starts.reserve(slices.size());
  for (auto const& s : slices) {
    check_update_operands<T, B>("update_many", s.x, s.g, s.s1, s.s2);
    if (s.x.numel() > 0) starts.push_back(s.x.data());
  }
  std::sort(starts.begin(), starts.end());
  SDLORA_EXPECTS(std::adjacent_find(starts.begin(), starts.end()) == starts.end(),
                 "[update_many] two slices update the same parameter tensor");
  Impl<UpdateMany, B>::run(ctx, slices);
}

}  // namespace sdlora::ops
