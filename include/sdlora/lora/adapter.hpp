/// @file adapter.hpp
/// @brief What LoRA on a Linear and on a Conv2d share: the options (rank, alpha, multiplier, init, dropout, seed),
/// the scale rule, the factor parameters lora_A / lora_B named like PEFT, seeded initialisation and the dropout mask,
/// and merge / unmerge of `scale * B @ A` into the base weight. Include <sdlora/sdlora.hpp> instead.
///
/// ## Random streams (Philox4x32-10 of core/rng.hpp, the same numbers on every backend)
/// An adapter owns a seed and a stream id (inject() gives each wrapped layer its visit index as stream id).
///  - initialisation of lora_A: Philox stream (seed, subsequence = stream << 32), from offset 0;
///  - dropout mask of the c-th training forward (c = 0, 1, ...): ops::dropout_apply with seed = seed and
///    counter = (stream << 32) | (c + 1): element i kept iff philox_uniform_at(seed, counter, 0, i) >= p, scaled by
///    1 / (1 - p) (torch.nn.Dropout semantics: P(keep) = 1 - p); backward regenerates the mask, nothing is stored. `dropout_calls()` / `set_dropout_calls()` expose c, so a test
///    or a resumed run can replay a mask.
#pragma once

#include <cmath>        // std::sqrt
#include <cstdint>      // std::uint64_t
#include <functional>   // std::function
#include <optional>     // std::optional
#include <string>       // std::string
#include <type_traits>  // std::is_same_v
#include <utility>      // std::move

#include <sdlora/core/error.hpp>      // SDLORA_EXPECTS, SDLORA_THROW, ConfigError
#include <sdlora/core/rng.hpp>        // Philox4x32
#include <sdlora/core/tensor.hpp>     // Tensor, TensorView, convert
#include <sdlora/nn/module.hpp>       // nn::Adapter, nn::Parameter, nn::Mode, nn::join
#include <sdlora/nn/saved.hpp>        // nn::SavedTensor, nn::KeptInput
#include <sdlora/ops/dropout.hpp>     // ops::Dropout, ops::dropout_apply
#include <sdlora/ops/gemm.hpp>        // ops::gemm

namespace sdlora::lora {

/// How lora_A starts (lora_B always starts at zero, so a fresh adapter leaves the layer unchanged).
enum class LoraInit {
  Kaiming,   ///< PEFT's default (init_lora_weights=True): kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), +)
  Gaussian,  ///< PEFT's init_lora_weights="gaussian": N(0, (1/rank)^2)
};

/// The hyper-parameters of one adapter.
struct LoraOptions {
  Index rank = 4;
  std::optional<double> alpha{};  ///< absent: alpha = rank (scale 1), as kohya and diffusers read a missing alpha
  double multiplier = 1.0;      ///< the "LoRA weight" a user dials at generation time
  double dropout = 0.0;         ///< probability of zeroing an adapter input element in Mode::Train
  LoraInit init = LoraInit::Kaiming;
  bool rslora = false;          ///< PEFT use_rslora: scale = alpha / sqrt(rank) instead of alpha / rank
  std::uint64_t seed = 0;
  std::uint64_t stream = 0;     ///< distinguishes layers sharing a seed (see the file comment)
  std::string name = "default";
  bool trainable = true;
};

/// multiplier * alpha / rank (or / sqrt(rank) with rslora).
inline double lora_scale(LoraOptions const& o) {
  double const alpha = o.alpha.value_or(double(o.rank));
  return o.multiplier * alpha / (o.rslora ? std::sqrt(double(o.rank)) : double(o.rank));
}

namespace detail {
/// Philox fill in float/double, converted to T for other scalar types.
template <class T>
void philox_fill(Tensor<T, Cpu>& out, Philox4x32& g, bool normal, double a, double b) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    if (normal) g.normal(out, T(a), T(b));
    else g.uniform(out);
    if (!normal)
      for (Index i = 0; i < out.numel(); ++i) out(i) = T(a + (b - a) * double(out(i)));
  } else {
    Tensor<float, Cpu> tmp(out.shape());
    philox_fill(tmp, g, normal, a, b);
    out = convert<T, float>(tmp);
  }
}
}  // namespace detail

/// The part of LoraLinear / LoraConv that does not depend on the layer type: factors, options, merge state,
/// dropout. lora_A is (r, in[, kh, kw]) ("down"), lora_B is (out, r[, 1, 1]) ("up").
template <class T, class B = Cpu>
class LoraAdapter : public nn::Adapter<T, B> {
 public:
  nn::Parameter<T, B> lora_A;  // (r, in) or (r, in, kh, kw)
  nn::Parameter<T, B> lora_B;  // (out, r) or (out, r, 1, 1)

  std::string const& name() const override { return options_.name; }
  LoraOptions const& options() const { return options_; }
  Index rank() const { return options_.rank; }
  double alpha() const { return options_.alpha.value_or(double(options_.rank)); }
  double multiplier() const { return options_.multiplier; }
  /// multiplier * alpha / rank: the factor on B(A(x)).
  double scale() const { return lora_scale(options_); }
  bool merged() const { return merged_scale_.has_value(); }

  /// Changes the multiplier; refused while merged (unmerge, change, merge again).
  void set_multiplier(double m) {
    if (merged())
      SDLORA_THROW(ConfigError, "[lora] adapter '" << name() << "' is merged: unmerge it before changing the "
                                                   << "multiplier");
    options_.multiplier = m;
  }
  void set_alpha(double a) {
    if (merged()) SDLORA_THROW(ConfigError, "[lora] adapter '" << name() << "' is merged: unmerge it first");
    options_.alpha = a;
  }
  void set_dropout(double p) {
    SDLORA_EXPECTS(p >= 0 && p < 1, "[lora] dropout must be in [0, 1), got " << p);
    options_.dropout = p;
  }
  std::uint64_t dropout_calls() const { return dropout_calls_; }
  void set_dropout_calls(std::uint64_t c) { dropout_calls_ = c; }

  void for_each_parameter(std::string const& prefix,
                          std::function<void(std::string const&, nn::Parameter<T, B>&)> const& f) override {
    f(nn::join(prefix, "lora_A." + name() + ".weight"), lora_A);
    f(nn::join(prefix, "lora_B." + name() + ".weight"), lora_B);
  }

  /// weight (out, in[, kh, kw]) += factor * scale * B @ A: the exact delta of the adapter branch (for a conv, a
  /// 1x1 up-projection after the k x k down-projection composes into one k x k kernel).
  void add_delta(Context<B>& ctx, TensorView<T, B> weight, double factor) const {
    Index const out = lora_B.value.dim(0), r = rank();
    Index const fan = lora_A.value.numel() / r;
    SDLORA_EXPECTS(weight.numel() == out * fan && weight.dim(0) == out,
                   "[lora.merge] adapter '" << name() << "' with A " << lora_A.shape() << ", B " << lora_B.shape()
                                            << " does not fit the weight " << weight.shape());
    ops::gemm<T, B>(ctx, weight.reshaped(Shape{out, fan}), lora_B.value.view().reshaped(Shape{out, r}),
                    lora_A.value.view().reshaped(Shape{r, fan}), {.alpha = factor * scale(), .beta = 1.0});
  }
  /// weight += scale * B @ A and mark merged (forward and backward then skip the branch).
  void merge_into(Context<B>& ctx, TensorView<T, B> weight) {
    if (merged()) return;
    add_delta(ctx, weight, 1.0);
    merged_scale_ = scale();
  }
  /// weight -= the merged delta (the same scale that was merged) and mark unmerged.
  void unmerge_from(Context<B>& ctx, TensorView<T, B> weight) {
    if (!merged()) return;
    merged_scale_.reset();
    add_delta(ctx, weight, -1.0);
  }

 protected:
  LoraAdapter(LoraOptions options, Shape a_shape, Shape b_shape)
      : lora_A(a_shape), lora_B(b_shape), options_(std::move(options)) {
    SDLORA_EXPECTS(options_.rank >= 1, "[lora] rank must be >= 1, got " << options_.rank);
    SDLORA_EXPECTS(options_.dropout >= 0 && options_.dropout < 1,
                   "[lora] dropout must be in [0, 1), got " << options_.dropout);
    initialize();
    lora_A.set_trainable(options_.trainable);
    lora_B.set_trainable(options_.trainable);
  }

  /// A from the seed (Kaiming-uniform or Gaussian), B = 0. On another backend the same values are drawn on the host
  /// (the generator stays there) and uploaded once.
  void initialize() {
    Tensor<T, Cpu> a(lora_A.shape());
    Philox4x32 g(options_.seed, options_.stream << 32);
    Index const fan_in = a.numel() / rank();
    if (options_.init == LoraInit::Kaiming) {
      // kaiming_uniform_(a = sqrt(5)): gain = sqrt(2 / (1 + 5)), bound = gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in)
      double const bound = 1.0 / std::sqrt(double(fan_in));
      detail::philox_fill(a, g, false, -bound, bound);
    } else {
      detail::philox_fill(a, g, true, 0.0, 1.0 / double(rank()));
    }
    if constexpr (std::is_same_v<B, Cpu>) lora_A.value = std::move(a);
    else lora_A.value = to_backend<B>(a);
    lora_B.value.fill_zero();
  }

  /// Whether this forward applies dropout (and consumes a mask index): any training mode (Train, or the first pass
  /// of a gradient-checkpointed block, which restores dropout_calls() before its recompute) with p > 0.
  bool dropout_active(nn::Mode mode) const { return mode != nn::Mode::Infer && options_.dropout > 0; }

  /// The ops::Dropout of mask index `call`: Philox key = seed, subsequence = (stream << 32) | (call + 1).
  ops::Dropout dropout_op(std::uint64_t call) const {
    return ops::Dropout{options_.dropout, options_.seed, (options_.stream << 32) | (call + 1)};
  }

  /// What the down projection of a forward reads, and the dropout mask index it used (-1: no dropout).
  struct DownInput {
    nn::KeptInput<T, B> in;  // in.x: x, or dropout(x); rounded to the 16 bits kept when kept so
    std::int64_t dropout_call = -1;
  };
  /// Applies dropout to the layer's input x when active (consuming a mask index) and, when lora_A trains, keeps the
  /// result in `saved` for dA (nn::SavedTensor::keep; the forward must then compute from the returned view). A
  /// Mode::Train forward with A frozen forgets what `saved` held.
  DownInput down_input(Context<B>& ctx, TensorView<T const, B> x, nn::SavedTensor<T, B>& saved, nn::Mode mode) {
    DownInput down;
    Tensor<T, B> xd;  // dropout(x), when dropout is active
    bool const drop = dropout_active(mode);
    if (drop) {
      down.dropout_call = std::int64_t(dropout_calls_);
      xd = Tensor<T, B>::uninitialized(x.shape());
      ops::dropout_apply<T, B>(ctx, dropout_op(dropout_calls_), xd.view(), x);
      ++dropout_calls_;
    }
    if (lora_A.trainable) {
      down.in = drop ? saved.keep(ctx, std::move(xd), mode) : saved.keep(ctx, x, mode);
      return down;
    }
    if (mode == nn::Mode::Train) saved.reset();
    down.in.owned = std::move(xd);
    down.in.x = drop ? down.in.owned.view() : x;
    return down;
  }

  LoraOptions options_;
  std::optional<double> merged_scale_;  // the scale merged into the base weight, while merged
  std::uint64_t dropout_calls_ = 0;     // Mode::Train forwards with dropout so far (the mask stream index)
};

}  // namespace sdlora::lora
