/// @file non_finite.hpp
/// @brief Finding where a NaN / inf starts: finiteness checks of tensors and parameters, and a probe adapter that,
/// attached to every Linear and Conv2d of a model, throws at the first layer whose input, output or output gradient
/// is not finite (the trainer re-runs a failed step with probes to name the module). Include <sdlora/train.hpp>
/// instead.
#pragma once

#include <functional>  // std::function
#include <memory>      // std::make_shared
#include <optional>    // std::optional
#include <string>      // std::string
#include <vector>      // std::vector, std::erase_if

#include <sdlora/core/error.hpp>       // Error
#include <sdlora/core/tensor.hpp>      // TensorView
#include <sdlora/nn/module.hpp>        // nn::Adapter, nn::Parameter, nn::Mode
#include <sdlora/pipeline/checks.hpp>  // pipeline::NonFiniteError, pipeline::all_finite

namespace sdlora::train {

/// A run stopped because the loss, a gradient or a parameter stopped being finite; the message names the step and,
/// when it could be found, the first module whose output or gradient went non-finite.
using NonFiniteError = pipeline::NonFiniteError;
using pipeline::all_finite;

/// The dotted name of the first parameter of `module` (visiting order, frozen ones included, 16-bit stored ones
/// widened) holding a NaN or inf.
template <class Module>
std::optional<std::string> first_non_finite_parameter(Module& module, std::string const& prefix) {
  std::optional<std::string> found;
  nn::for_each_parameter(
      module,
      [&](std::string const& name, auto& p) {
        if (!found && !(p.is_16bit() ? all_finite(p.widened()) : all_finite(p.value))) found = name;
      },
      prefix);
  return found;
}

namespace detail {

/// Thrown by a probe at the first non-finite tensor; caught by the trainer's diagnosis.
struct NonFiniteFound : Error {
  using Error::Error;
};

inline std::string const& probe_name() {
  static std::string const name = "sdlora_non_finite_probe";
  return name;
}

/// An adapter that computes nothing: it checks the layer's input and output in forward (it runs after the layer and
/// its other adapters) and the output gradient in backward (on another backend each check downloads the tensor:
/// probes only run in the diagnosis of a failed step).
template <class T, class B = Cpu>
class NonFiniteProbe final : public nn::Adapter<T, B> {
 public:
  explicit NonFiniteProbe(std::string module) : module_(std::move(module)) {}
  void forward(Context<B>&, TensorView<T, B> y, TensorView<T const, B> x, nn::Mode) override {
    if (!all_finite<T>(x)) throw NonFiniteFound("the input of " + module_);
    if (!all_finite<T>(TensorView<T const, B>(y))) throw NonFiniteFound("the output of " + module_);
  }
  void backward(Context<B>&, TensorView<T, B>, TensorView<T const, B> dy) override {
    if (!all_finite<T>(dy)) throw NonFiniteFound("the gradient of the output of " + module_);
  }
  void for_each_parameter(std::string const&,
                          std::function<void(std::string const&, nn::Parameter<T, B>&)> const&) override {}
  std::string const& name() const override { return probe_name(); }

 private:
  std::string module_;
};

}  // namespace detail

/// Attaches a probe to every Linear and Conv2d of `module` (on backend B) for its lifetime and removes them
/// afterwards.
template <class T, class Module, class B = Cpu>
class NonFiniteProbes {
 public:
  NonFiniteProbes(Module& module, std::string const& prefix) : module_(module) {
    module_.visit(prefix, [](std::string const& name, auto& leaf) {
      if constexpr (requires { leaf.adapters; })
        leaf.adapters.push_back(std::make_shared<detail::NonFiniteProbe<T, B>>(name));
    });
  }
  ~NonFiniteProbes() {
    module_.visit("", [](std::string const&, auto& leaf) {
      if constexpr (requires { leaf.adapters; })
        std::erase_if(leaf.adapters, [](auto const& a) { return a->name() == detail::probe_name(); });
    });
  }
  NonFiniteProbes(NonFiniteProbes const&) = delete;
  NonFiniteProbes& operator=(NonFiniteProbes const&) = delete;

 private:
  Module& module_;
};

}  // namespace sdlora::train
