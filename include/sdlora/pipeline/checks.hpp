/// @file checks.hpp
/// @brief Finiteness checks shared by generation and training: `all_finite` over a tensor view and
/// `NonFiniteError`, raised when latents, pixels, a loss or a gradient stop being finite (the message names the
/// step and the stage or module). Include <sdlora/pipeline.hpp> or <sdlora/all.hpp> instead.
#pragma once

#include <cmath>  // std::isfinite
#include <type_traits>  // std::is_same_v

#include <sdlora/core/error.hpp>   // Error
#include <sdlora/core/tensor.hpp>  // Tensor, TensorView, to_cpu

namespace sdlora::pipeline {

/// Generation or training stopped because values became NaN or inf; the message names where.
struct NonFiniteError : Error {
  using Error::Error;
};

/// Whether every element of `x` is finite (a strided view is copied first).
template <class T>
bool all_finite(TensorView<T const, Cpu> x) {
  if (x.empty()) return true;
  if (!x.is_contiguous()) return all_finite<T>(Tensor<T, Cpu>::from_view(x).view());
  T const* p = x.data();
  for (Index i = 0, n = x.numel(); i < n; ++i)
    if (!std::isfinite(static_cast<double>(p[i]))) return false;
  return true;
}
template <class T>
bool all_finite(Tensor<T, Cpu> const& x) {
  return all_finite<T>(x.view());
}
/// The same for a tensor on another backend: copied to the host first (generation checks its prompt embeddings
/// once per request this way).
template <class T, class B>
  requires(!std::is_same_v<B, Cpu>)
bool all_finite(TensorView<T const, B> x) {
  return x.empty() || all_finite<T>(to_cpu<T, B>(x).view());
}
template <class T, class B>
  requires(!std::is_same_v<B, Cpu>)
bool all_finite(Tensor<T, B> const& x) {
  return all_finite<T, B>(x.view());
}

}  // namespace sdlora::pipeline
