/// @file saved.hpp
/// @brief SavedTensor: what a layer keeps from a training forward for its backward (an input, q/k/v, a
/// checkpointed block's input). It keeps a copy in the tensor's own type, or, when the context asks for 16-bit saved
/// activations (`Context::saved_activations` = F16 or BF16) and the tensor is float on the CPU, the copy rounded to
/// 16 bits (nearest even), widened back to float when backward takes it. That halves the activation memory of a
/// training step; it is what a torch.autocast step saves (its matmul and convolution outputs are 16-bit), while our
/// compute stays float. Gradients then differ from a float step by what rounding the saved inputs does (about 2^-8
/// relative for BF16, 2^-11 for F16; F16 overflows to infinity above 65504, which the trainer's non-finite check
/// catches). Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <algorithm>    // std::min
#include <atomic>       // std::atomic
#include <cstdint>      // std::int64_t, std::uint16_t
#include <type_traits>  // std::is_same_v
#include <utility>      // std::move

#include <sdlora/backend/cpu/convert16.hpp>  // cpu::narrow16, cpu::widen16
#include <sdlora/backend/cpu/parallel.hpp>   // cpu::parallel_for
#include <sdlora/core/backend.hpp>           // Context
#include <sdlora/core/dtype.hpp>             // DType, dtype_name
#include <sdlora/core/error.hpp>             // SDLORA_EXPECTS, SDLORA_THROW
#include <sdlora/core/tensor.hpp>            // Tensor, TensorView
#include <sdlora/nn/module.hpp>              // Mode, is_training

namespace sdlora::nn {

/// Whether a training forward under `ctx` keeps float activations of T on B in 16 bits (and which), or in T.
template <class T, class B>
DType saved_storage(Context<B> const& ctx) {
  DType const d = ctx.saved_activations;
  if (d == DType::F32 || d == dtype_of<T>()) return dtype_of<T>();
  SDLORA_EXPECTS(d == DType::F16 || d == DType::BF16,
                 "[saved activations] must be F32, F16 or BF16, got " << dtype_name(d));
  if constexpr (std::is_same_v<T, float> && std::is_same_v<B, Cpu>) {
    return d;
  } else {
    SDLORA_THROW(ConfigError, "[saved activations] " << dtype_name(d) << " storage is implemented for float models on "
                                                     "the CPU backend; this model is " << dtype_name(dtype_of<T>())
                                                     << (std::is_same_v<B, Cpu> ? "" : " on CUDA"));
  }
}

/// The input a training forward computes from after SavedTensor::keep: the tensor itself, or its copy rounded to
/// the 16 bits kept, so that backward (which widens what was kept) differentiates exactly the forward that ran.
template <class T, class B>
struct KeptInput {
  Tensor<T, B> owned;         // what `x` points into when it is not the caller's tensor (the rounded copy)
  TensorView<T const, B> x;   // compute the forward from this
};

/// Bytes that every SavedTensor of the process holds right now (what training layers keep for backward): the
/// activation memory of a training step between its forward and its backward, and the figure that halves with
/// 16-bit saved activations.
inline std::atomic<std::int64_t>& saved_tensor_bytes() {
  static std::atomic<std::int64_t> bytes{0};
  return bytes;
}

template <class T, class B>
class SavedTensor {
 public:
  static constexpr Index kChunk = Index(1) << 15;  // values per task of the conversions

  SavedTensor() = default;
  SavedTensor(SavedTensor const& other) { *this = other; }
  SavedTensor& operator=(SavedTensor const& other) {  // a copied layer keeps its own copy
    if (this == &other) return *this;
    reset();
    value_ = other.value_;
    bits_ = other.bits_;
    storage_ = other.storage_;
    shape_ = other.shape_;
    kept_ = other.kept_;
    count(other.bytes_);
    return *this;
  }
  SavedTensor(SavedTensor&& other) noexcept { *this = std::move(other); }
  SavedTensor& operator=(SavedTensor&& other) noexcept {
    if (this == &other) return *this;
    reset();
    value_ = std::move(other.value_);
    bits_ = std::move(other.bits_);
    storage_ = other.storage_;
    shape_ = other.shape_;
    kept_ = other.kept_;
    bytes_ = other.bytes_;  // the count moves with the tensors
    other.bytes_ = 0;
    other.reset();
    return *this;
  }
  ~SavedTensor() { reset(); }

  /// A forward's input x under `mode`: Mode::Train keeps a copy of it (a strided view is made contiguous), in 16
  /// bits when `ctx` asks for it; Mode::TrainDiscard (a checkpointed block's first pass) keeps nothing. In both
  /// training modes with 16-bit storage the forward must compute from the returned rounded copy, so that the first
  /// pass, the recomputation and the backward all see one input; otherwise the returned view is x.
  KeptInput<T, B> keep(Context<B>& ctx, TensorView<T const, B> x, Mode mode) {
    if (mode == Mode::Train) reset();
    if (!is_training(mode)) return {{}, x};
    DType const storage = saved_storage<T, B>(ctx);
    if (storage == dtype_of<T>()) {
      if (mode == Mode::Train) set(Tensor<T, B>::from_view(x));
      return {{}, x};
    }
    if (x.is_contiguous()) return round(ctx, x.data(), x.shape(), storage, mode);
    auto const compact = Tensor<T, B>::from_view(x);
    return round(ctx, compact.data(), x.shape(), storage, mode);
  }
  KeptInput<T, B> keep(Context<B>& ctx, TensorView<T, B> x, Mode mode) {
    return keep(ctx, TensorView<T const, B>(x), mode);
  }

  /// As keep(ctx, view, mode) for a tensor the forward made and needs no more (q, k, v): kept without a copy when
  /// kept in T; narrowed and freed when kept in 16 bits.
  KeptInput<T, B> keep(Context<B>& ctx, Tensor<T, B>&& x, Mode mode) {
    if (mode == Mode::Train) reset();
    DType const storage = is_training(mode) ? saved_storage<T, B>(ctx) : dtype_of<T>();
    if (storage == dtype_of<T>()) {
      if (mode != Mode::Train) {
        KeptInput<T, B> in{std::move(x), {}};
        in.x = in.owned.view();
        return in;
      }
      set(std::move(x));
      return {{}, value_.view()};
    }
    Tensor<T, B> const held = std::move(x);
    return round(ctx, held.data(), held.shape(), storage, mode);
  }

  /// Nothing kept (or a tensor of no elements), as Tensor::empty.
  bool empty() const { return !kept_ || shape_.numel() == 0; }
  Shape const& shape() const { return shape_; }
  /// F16 / BF16 when kept in 16 bits, else T's own type.
  DType storage() const { return storage_; }

  /// The kept values in T (widened into a new tensor when kept in 16 bits); this SavedTensor is empty afterwards:
  /// one backward per forward.
  Tensor<T, B> take(Context<B>& ctx) {
    Tensor<T, B> out;
    if (storage_ != dtype_of<T>()) {
      if constexpr (std::is_same_v<T, float> && std::is_same_v<B, Cpu>) {
        out = Tensor<T, B>::uninitialized(shape_);
        float* dst = out.data();
        std::uint16_t const* src = bits_.data();
        DType const d = storage_;
        for_chunks(ctx, shape_.numel(), [&](Index begin, Index len) { cpu::widen16(dst + begin, src + begin, len, d); });
      }
    } else {
      out = std::move(value_);
    }
    reset();
    return out;
  }

  /// Forgets what was kept.
  void reset() {
    value_ = Tensor<T, B>();
    bits_ = Tensor<std::uint16_t, B>();
    shape_ = Shape();
    storage_ = dtype_of<T>();
    kept_ = false;
    count(-bytes_);
  }

 private:
  template <class F>
  static void for_chunks(Context<B>& ctx, Index n, F&& f) {
    Index const chunks = (n + kChunk - 1) / kChunk;
    cpu::parallel_for(ctx, chunks, n > 4 * kChunk, [&](Index c) {
      Index const begin = c * kChunk;
      f(begin, std::min(kChunk, n - begin));
    });
  }

  void count(std::int64_t delta) {
    bytes_ += delta;
    if (delta != 0) saved_tensor_bytes().fetch_add(delta, std::memory_order_relaxed);
  }

  void set(Tensor<T, B>&& x) {
    shape_ = x.shape();
    value_ = std::move(x);
    kept_ = true;
    count(std::int64_t(value_.bytes()));
  }

  /// Rounds src to `storage` (kept under Mode::Train) and returns the rounded values widened back, for the forward.
  KeptInput<T, B> round(Context<B>& ctx, T const* src, Shape const& shape, DType storage, Mode mode) {
    KeptInput<T, B> in;
    if constexpr (std::is_same_v<T, float> && std::is_same_v<B, Cpu>) {
      auto bits = Tensor<std::uint16_t, B>::uninitialized(shape);
      in.owned = Tensor<T, B>::uninitialized(shape);
      std::uint16_t* b = bits.data();
      float* dst = in.owned.data();
      for_chunks(ctx, shape.numel(), [&](Index begin, Index len) {
        cpu::narrow16(b + begin, src + begin, len, storage);
        cpu::widen16(dst + begin, b + begin, len, storage);
      });
      if (mode == Mode::Train) {
        bits_ = std::move(bits);
        storage_ = storage;
        shape_ = shape;
        kept_ = true;
        count(std::int64_t(bits_.bytes()));
      }
    }
    in.x = in.owned.view();
    return in;
  }

  Tensor<T, B> value_;                // kept in T
  Tensor<std::uint16_t, B> bits_;     // or kept in 16 bits (F16 / BF16: storage_)
  DType storage_ = dtype_of<T>();     // T's own type (value_) or the 16-bit format of bits_
  Shape shape_;
  bool kept_ = false;
  std::int64_t bytes_ = 0;   // counted in saved_tensor_bytes()
};

}  // namespace sdlora::nn
