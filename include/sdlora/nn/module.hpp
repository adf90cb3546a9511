/// @file module.hpp
/// @brief What every layer shares: Parameter (value, gradient, trainable flag), Mode (inference or training),
/// dotted names, the Adapter interface that LoRA implements, and the parameter visitor.
/// Include <sdlora/sdlora.hpp> instead.
///
/// Conventions every module follows (see docs/architecture.md):
///  - A module is a class template `<T, B>` whose parameters and children are named like diffusers' modules.
///  - `forward(ctx, x, mode)` returns a new tensor. With Mode::Train it keeps in `saved_` exactly what `backward`
///    needs, nothing more (each field says why).
///  - `backward(ctx, dy)` returns dx and *accumulates* (+=) into the `grad` of trainable parameters only.
///    A frozen module never touches gradients. Composite modules call children's backward in reverse order.
///  - `visit(prefix, visitor)` calls `visitor(name, leaf)` for every leaf module (Linear, Conv2d, norms,
///    embeddings) under its full dotted name; parameters are reached through leaves (`leaf.for_each_parameter`).
#pragma once

#include <algorithm>    // std::any_of
#include <cstdint>      // std::uint16_t
#include <functional>   // std::function
#include <memory>       // std::shared_ptr
#include <string>       // std::string
#include <type_traits>  // std::is_same_v
#include <vector>      // std::vector

#include <sdlora/backend/cpu/convert16.hpp>  // cpu::narrow16, cpu::widen16
#include <sdlora/core/backend.hpp>           // Context
#include <sdlora/core/dtype.hpp>             // DType, half, bfloat16
#include <sdlora/core/error.hpp>             // SDLORA_EXPECTS
#include <sdlora/core/tensor.hpp>            // Tensor, TensorView

namespace sdlora::nn {

/// Infer: no dropout, nothing kept. Train: dropout on, keep what backward needs. TrainDiscard: dropout on but keep
/// nothing — the first pass of a gradient-checkpointed block, which recomputes with Train inside its backward.
enum class Mode { Infer, Train, TrainDiscard };

/// Whether a forward in this mode must keep what backward needs.
inline constexpr bool keeps_saved(Mode mode) { return mode == Mode::Train; }
/// Whether training behaviour (dropout) is on.
inline constexpr bool is_training(Mode mode) { return mode != Mode::Infer; }

/// "a.b" from prefix "a" and name "b"; no leading dot when the prefix is empty.
inline std::string join(std::string const& prefix, std::string const& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

/// A learnable tensor: its value, its gradient (allocated only while trainable) and whether it is trained.
template <class T, class B = Cpu>
struct Parameter {
  Tensor<T, B> value;
  Tensor<T, B> grad;  // same shape as value when trainable, empty otherwise
  bool trainable = false;
  /// A frozen float weight may be kept in 16 bits instead (store_16bit): `value` is then empty and `value16` holds
  /// the F16 or BF16 bits in the same shape; the CPU GEMM widens them while packing its panels, so no float copy
  /// ever exists (Linear and Conv2d read either form; see weight_dtype).
  Tensor<std::uint16_t, B> value16;
  DType storage = dtype_of<T>();

  Parameter() = default;
  explicit Parameter(Shape shape) : value(shape) {}

  /// Turns training on (allocating a zero gradient) or off (dropping the gradient).
  void set_trainable(bool on) {
    if (on && is_16bit()) set_storage(dtype_of<T>());  // gradients and updates need the full-precision value
    trainable = on;
    grad = on ? Tensor<T, B>(value.shape()) : Tensor<T, B>();
  }
  void zero_grad() {
    if (trainable) grad.fill_zero();
  }
  Shape const& shape() const { return is_16bit() ? value16.shape() : value.shape(); }
  bool is_16bit() const { return storage == DType::F16 || storage == DType::BF16; }

  /// Keeps the value in 16 bits (DType::F16 or BF16, rounded to nearest even) and frees the float tensor; DType F32
  /// (or the value's own type) widens it back. Only for frozen CPU parameters.
  void set_storage(DType d) {
    if (d == storage) return;
    SDLORA_EXPECTS(d == dtype_of<T>() || d == DType::F16 || d == DType::BF16,
                   "[parameter] storage must be " << dtype_name(dtype_of<T>()) << ", F16 or BF16, got " << dtype_name(d));
    if (is_16bit()) {  // widen first
      value = widened();
      value16 = Tensor<std::uint16_t, B>();
      storage = dtype_of<T>();
    }
    if (d == dtype_of<T>()) return;
    SDLORA_EXPECTS(!trainable, "[parameter] a trainable parameter stays in " << dtype_name(dtype_of<T>()));
    if constexpr (std::is_same_v<B, Cpu>) {
      value16 = Tensor<std::uint16_t, B>::uninitialized(value.shape());
      T const* src = value.data();
      std::uint16_t* dst = value16.data();
      if constexpr (std::is_same_v<T, float>) {
        cpu::narrow16(dst, src, value.numel(), d);
      } else {
        for (Index i = 0; i < value.numel(); ++i)
          dst[i] = d == DType::F16 ? half(float(src[i])).bits : bfloat16(float(src[i])).bits;
      }
      value = Tensor<T, B>();
      storage = d;
    } else {
      SDLORA_THROW(ConfigError, "[parameter] 16-bit storage of frozen weights is implemented for the CPU backend");
    }
  }
  /// Replaces the value by `v` and keeps it in `d` (as set_storage): a loader narrows each frozen weight as soon as
  /// it has read it, so a model with 16-bit weights never holds all of them in float.
  void assign(Tensor<T, B>&& v, DType d) {
    value16 = Tensor<std::uint16_t, B>();
    storage = dtype_of<T>();
    value = std::move(v);
    set_storage(d);
  }
  /// Replaces the value by F16 or BF16 bits `bits` as stored in a file (no float copy at all). Frozen only.
  void assign_bits(Tensor<std::uint16_t, B>&& bits, DType d) {
    SDLORA_EXPECTS(d == DType::F16 || d == DType::BF16, "[parameter] 16-bit bits must be F16 or BF16, got "
                                                            << dtype_name(d));
    SDLORA_EXPECTS(!trainable, "[parameter] a trainable parameter stays in " << dtype_name(dtype_of<T>()));
    value = Tensor<T, B>();
    value16 = std::move(bits);
    storage = d;
  }
  /// The value as T (a copy widened from the 16 bits when stored so).
  Tensor<T, B> widened() const {
    if (!is_16bit()) return value;
    auto out = Tensor<T, B>::uninitialized(value16.shape());
    std::uint16_t const* src = value16.data();
    T* dst = out.data();
    if constexpr (std::is_same_v<T, float> && std::is_same_v<B, Cpu>) {
      cpu::widen16(dst, src, value16.numel(), storage);
    } else {
      for (Index i = 0; i < value16.numel(); ++i)
        dst[i] = T(storage == DType::F16 ? float(half::from_bits(src[i])) : float(bfloat16::from_bits(src[i])));
    }
    return out;
  }
  /// Calls f(TensorView<T, B>) on the value in T and stores the result back in the parameter's storage (rounding to
  /// 16 bits again when stored so): merging a LoRA into a 16-bit weight, as PEFT does with fp16 weights.
  template <class F>
  void edit(F&& f) {
    DType const keep = storage;
    set_storage(dtype_of<T>());
    f(value.view());
    set_storage(keep);
  }
};

/// A side branch attached to a Linear or Conv2d: `y += branch(x)`. LoRA implements it (lora/); the layer calls
/// every attached, enabled adapter after its own product, and their backward after its own.
template <class T, class B = Cpu>
struct Adapter {
  virtual ~Adapter() = default;
  /// y += branch(x). x and y are the layer's input and output (Linear: (..., in) / (..., out);
  /// Conv2d: (N, C_in, H, W) / (N, C_out, H', W')). Mode::Train keeps what backward needs.
  virtual void forward(Context<B>& ctx, TensorView<T, B> y, TensorView<T const, B> x, Mode mode) = 0;
  /// dx += d branch / dx applied to dy; accumulates the adapter's own trainable gradients.
  virtual void backward(Context<B>& ctx, TensorView<T, B> dx, TensorView<T const, B> dy) = 0;
  /// Calls f(name, parameter) for the adapter's parameters, named under `prefix` (e.g. "<layer>.lora_A.default").
  virtual void for_each_parameter(std::string const& prefix,
                                  std::function<void(std::string const&, Parameter<T, B>&)> const& f) = 0;
  /// The adapter's name (e.g. "default"); several adapters on one layer have distinct names.
  virtual std::string const& name() const = 0;
  bool enabled = true;
};

template <class T, class B>
using AdapterList = std::vector<std::shared_ptr<Adapter<T, B>>>;

/// Whether any adapter of a layer is enabled (it then reads the layer's input and output in forward).
template <class T, class B>
bool any_enabled(AdapterList<T, B> const& adapters) {
  return std::any_of(adapters.begin(), adapters.end(), [](auto const& a) { return a->enabled; });
}

/// Visits `items[i]` as "<prefix>.<field>.<i>" (diffusers' ModuleList naming).
template <class Seq, class V>
void visit_each(std::string const& prefix, std::string const& field, Seq& items, V&& visitor) {
  for (std::size_t i = 0; i < items.size(); ++i) items[i].visit(join(prefix, field + "." + std::to_string(i)), visitor);
}

/// Calls f(full_name, parameter) for every parameter of a module tree, adapters' parameters included.
template <class Module, class F>
void for_each_parameter(Module& module, F&& f, std::string const& prefix = "") {
  module.visit(prefix, [&](std::string const& name, auto& leaf) { leaf.for_each_parameter(name, f); });
}

/// Sets every parameter of a module tree trainable or frozen.
template <class Module>
void set_trainable(Module& module, bool on) {
  for_each_parameter(module, [&](std::string const&, auto& p) { p.set_trainable(on); });
}

/// Zeroes the gradient of every trainable parameter of a module tree.
template <class Module>
void zero_grad(Module& module) {
  for_each_parameter(module, [&](std::string const&, auto& p) { p.zero_grad(); });
}

}  // namespace sdlora::nn
