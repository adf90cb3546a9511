/// @file param_ref.hpp
/// @brief ParamRef: a named pointer to a trainable nn::Parameter, the unit optimizers, gradient clipping and the
/// training state work on; trainable_parameters() collects them from a module tree. Include <sdlora/train.hpp>
/// instead.
#pragma once

#include <string>  // std::string
#include <vector>  // std::vector

#include <sdlora/core/backend.hpp>  // Cpu
#include <sdlora/nn/module.hpp>     // nn::Parameter, nn::for_each_parameter

namespace sdlora::train {

/// A parameter under its full dotted name (e.g. "down_blocks.0.attentions.0.proj_in.lora_A.default.weight").
/// The pointer does not own: the module tree must outlive every optimizer built on it.
template <class T, class B = Cpu>
struct ParamRef {
  std::string name;
  nn::Parameter<T, B>* param = nullptr;
};

/// The trainable parameters of a module tree, in visiting order: `trainable_parameters<float>(unet)`.
template <class T, class B = Cpu, class Module>
std::vector<ParamRef<T, B>> trainable_parameters(Module& module, std::string const& prefix = "") {
  std::vector<ParamRef<T, B>> out;
  nn::for_each_parameter(
      module,
      [&](std::string const& name, nn::Parameter<T, B>& p) {
        if (p.trainable) out.push_back({name, &p});
      },
      prefix);
  return out;
}

}  // namespace sdlora::train
