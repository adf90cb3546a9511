/// @file inject.hpp
/// @brief LoRA on a module tree: attach adapters to the leaves whose dotted name matches a pattern (PEFT's
/// inject_adapter_in_model), freeze the base, merge / unmerge, multipliers and enabling by adapter name.
/// Works on any tree with `visit()`; a leaf is LoRA-able when it has `weight` and `adapters` (Linear: rank-2
/// weight, Conv2d: rank-4 weight plus `geometry`). Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <cstdint>  // std::uint64_t
#include <memory>   // std::make_shared, std::dynamic_pointer_cast
#include <regex>    // std::regex, std::regex_match
#include <string>   // std::string
#include <vector>   // std::vector

#include <sdlora/lora/adapter.hpp>  // LoraAdapter, LoraOptions, LoraInit
#include <sdlora/lora/conv.hpp>     // LoraConv
#include <sdlora/lora/linear.hpp>   // LoraLinear

namespace sdlora::lora {

/// A leaf that can carry adapters: a weight Parameter and an adapter list.
template <class L>
concept AdaptableLeaf = requires(L& l) {
  l.adapters;
  l.weight.value;
};
/// A Conv2d-like leaf: an adaptable leaf with a conv geometry (rank-4 weight).
template <class L>
concept ConvLeaf = AdaptableLeaf<L> && requires(L& l) { l.geometry; };

/// The scalar and backend of a leaf's weight.
template <class L>
using LeafScalar = typename decltype(std::declval<L&>().weight.value)::value_type;
template <class L>
using LeafBackend = typename decltype(std::declval<L&>().weight.value)::backend;

/// What inject() wraps and how.
struct InjectOptions {
  /// Matched against the END of each leaf's dotted name: a leaf matches when its full name fully matches
  /// `(.*\.)?(target)`, i.e. it equals the pattern or ends with "." + pattern (PEFT's list semantics), and any full
  /// regex over the whole name works too ("down_blocks\\.0\\..*to_q").
  std::string target = "to_q|to_k|to_v|to_out\\.0";
  Index rank = 4;
  std::optional<double> alpha{};  ///< absent: alpha = rank
  double multiplier = 1.0;
  double dropout = 0.0;
  LoraInit init = LoraInit::Kaiming;
  bool rslora = false;
  std::string adapter_name = "default";
  std::uint64_t seed = 0;
  bool include_conv = false;    ///< also wrap matching Conv2d leaves (LoCon); Linear only otherwise
  bool trainable = true;

  /// A target pattern matching any of `names` literally (dots escaped), PEFT's `target_modules=[...]`.
  static std::string any_of(std::vector<std::string> const& names) {
    std::string out;
    for (auto const& n : names) {
      if (!out.empty()) out += '|';
      for (char c : n) {
        if (std::string("\\^$.|?*+()[]{}").find(c) != std::string::npos) out += '\\';
        out += c;
      }
    }
    return out;
  }
};

/// What inject() did.
struct InjectReport {
  Index layers = 0;      ///< leaves wrapped
  Index parameters = 0;  ///< scalars added (A and B of every adapter)
  std::vector<std::string> names;  ///< dotted names of the wrapped leaves, in visit order
};

/// True when `name` matches `target` with PEFT's end-of-name semantics (see InjectOptions::target).
inline bool target_matches(std::string const& target, std::string const& name) {
  std::regex const re("(?:.*\\.)?(?:" + target + ")");
  return std::regex_match(name, re);
}

/// Adds an adapter to a leaf (Linear or Conv2d) and returns it. Names must be unique per leaf.
template <AdaptableLeaf L>
std::shared_ptr<LoraAdapter<LeafScalar<L>, LeafBackend<L>>> add_adapter(L& leaf, LoraOptions const& options) {
  using T = LeafScalar<L>;
  using B = LeafBackend<L>;
  for (auto const& a : leaf.adapters)
    if (a->name() == options.name)
      SDLORA_THROW(ConfigError, "[lora.inject] the layer already has an adapter named '" << options.name << "'");
  std::shared_ptr<LoraAdapter<T, B>> a;
  Shape const& w = leaf.weight.shape();  // the weight may be stored in 16 bits
  if constexpr (ConvLeaf<L>) {
    SDLORA_EXPECTS(w.rank() == 4 && w[2] == w[3], "[lora.inject] conv weight must be (out, in, k, k), got " << w);
    a = std::make_shared<LoraConv<T, B>>(w[1], w[0], w[2], leaf.geometry, options);
  } else {
    SDLORA_EXPECTS(w.rank() == 2, "[lora.inject] linear weight must be (out, in), got " << w);
    a = std::make_shared<LoraLinear<T, B>>(w[1], w[0], options);
  }
  leaf.adapters.push_back(a);
  return a;
}

/// Wraps every matching Linear (and Conv2d with include_conv) leaf of `module` with a new LoRA adapter. Layer k
/// in visit order gets Philox stream k, so a seed reproduces the whole initialisation.
template <class Module>
InjectReport inject(Module& module, InjectOptions const& o, std::string const& prefix = "") {
  std::regex const re("(?:.*\\.)?(?:" + o.target + ")");
  InjectReport report;
  std::uint64_t stream = 0;
  module.visit(prefix, [&](std::string const& name, auto& leaf) {
    using L = std::remove_cvref_t<decltype(leaf)>;
    if constexpr (AdaptableLeaf<L>) {
      if (!ConvLeaf<L> || o.include_conv) {
        std::uint64_t const s = stream++;
        if (std::regex_match(name, re)) {
          LoraOptions lo{.rank = o.rank, .alpha = o.alpha, .multiplier = o.multiplier, .dropout = o.dropout,
                         .init = o.init, .rslora = o.rslora, .seed = o.seed, .stream = s, .name = o.adapter_name,
                         .trainable = o.trainable};
          auto a = add_adapter(leaf, lo);
          report.layers += 1;
          report.parameters += a->lora_A.value.numel() + a->lora_B.value.numel();
          report.names.push_back(name);
        }
      }
    }
  });
  return report;
}

/// True for the dotted name of a LoRA factor ("....lora_A.<adapter>.weight" / "....lora_B.<adapter>.weight").
inline bool is_lora_parameter(std::string const& name) {
  return name.find(".lora_A.") != std::string::npos || name.find(".lora_B.") != std::string::npos ||
         name.rfind("lora_A.", 0) == 0 || name.rfind("lora_B.", 0) == 0;
}

/// Makes every parameter that is not a LoRA factor non-trainable (drops its gradient); LoRA factors untouched.
template <class Module>
void freeze_base(Module& module) {
  nn::for_each_parameter(module, [](std::string const& name, auto& p) {
    if (!is_lora_parameter(name)) p.set_trainable(false);
  });
}

/// Calls f(layer_name, leaf, adapter) for every LoRA adapter of the tree (all names, or only `adapter_name`).
template <class Module, class F>
void for_each_adapter(Module& module, F&& f, std::string const& adapter_name = "", std::string const& prefix = "") {
  module.visit(prefix, [&](std::string const& name, auto& leaf) {
    using L = std::remove_cvref_t<decltype(leaf)>;
    if constexpr (AdaptableLeaf<L>) {
      for (auto& a : leaf.adapters) {
        auto lora = std::dynamic_pointer_cast<LoraAdapter<LeafScalar<L>, LeafBackend<L>>>(a);
        if (lora && (adapter_name.empty() || lora->name() == adapter_name)) f(name, leaf, *lora);
      }
    }
  });
}

/// Sets the multiplier of every adapter named `adapter_name` ("" = all); returns how many changed.
template <class Module>
Index set_multiplier(Module& module, std::string const& adapter_name, double multiplier) {
  Index n = 0;
  for_each_adapter(module, [&](std::string const&, auto&, auto& a) { a.set_multiplier(multiplier), ++n; },
                   adapter_name);
  return n;
}
/// Enables or disables every adapter named `adapter_name` ("" = all); returns how many changed.
template <class Module>
Index set_enabled(Module& module, std::string const& adapter_name, bool on) {
  Index n = 0;
  for_each_adapter(module, [&](std::string const&, auto&, auto& a) { a.enabled = on, ++n; }, adapter_name);
  return n;
}

/// Merges the layer's enabled LoRA adapters (or the one named `adapter_name`) into its weight:
/// W += scale * B @ A (conv: W (out, in, kh, kw) += scale * (up (out, r) @ down (r, in*kh*kw)) reshaped).
template <AdaptableLeaf L>
void merge(Context<LeafBackend<L>>& ctx, L& leaf, std::string const& adapter_name = "") {
  using T = LeafScalar<L>;
  using B = LeafBackend<L>;
  for (auto& a : leaf.adapters)
    if (auto lora = std::dynamic_pointer_cast<LoraAdapter<T, B>>(a);
        lora && a->enabled && (adapter_name.empty() || lora->name() == adapter_name))
      leaf.weight.edit([&](TensorView<T, B> w) { lora->merge_into(ctx, w); });  // 16-bit weights: rounded again
}
/// Subtracts merged adapters back out of the weight (the reverse of merge()).
template <AdaptableLeaf L>
void unmerge(Context<LeafBackend<L>>& ctx, L& leaf, std::string const& adapter_name = "") {
  using T = LeafScalar<L>;
  using B = LeafBackend<L>;
  for (auto it = leaf.adapters.rbegin(); it != leaf.adapters.rend(); ++it)
    if (auto lora = std::dynamic_pointer_cast<LoraAdapter<T, B>>(*it);
        lora && (adapter_name.empty() || lora->name() == adapter_name))
      leaf.weight.edit([&](TensorView<T, B> w) { lora->unmerge_from(ctx, w); });
}
/// merge() on every adaptable leaf of a tree.
template <class Module, class B>
void merge_all(Context<B>& ctx, Module& module, std::string const& adapter_name = "") {
  module.visit("", [&](std::string const&, auto& leaf) {
    if constexpr (AdaptableLeaf<std::remove_cvref_t<decltype(leaf)>>) merge(ctx, leaf, adapter_name);
  });
}
/// unmerge() on every adaptable leaf of a tree.
template <class Module, class B>
void unmerge_all(Context<B>& ctx, Module& module, std::string const& adapter_name = "") {
  module.visit("", [&](std::string const&, auto& leaf) {
    if constexpr (AdaptableLeaf<std::remove_cvref_t<decltype(leaf)>>) unmerge(ctx, leaf, adapter_name);
  });
}

/// Detaches LoRA adapters named `adapter_name` ("" = all); a merged one is unmerged first. Returns how many.
template <class Module, class B>
Index remove_adapters(Context<B>& ctx, Module& module, std::string const& adapter_name = "") {
  Index n = 0;
  module.visit("", [&](std::string const&, auto& leaf) {
    using L = std::remove_cvref_t<decltype(leaf)>;
    if constexpr (AdaptableLeaf<L>) {
      unmerge(ctx, leaf, adapter_name);
      std::erase_if(leaf.adapters, [&](auto const& a) {
        auto lora = std::dynamic_pointer_cast<LoraAdapter<LeafScalar<L>, LeafBackend<L>>>(a);
        bool const hit = lora && (adapter_name.empty() || lora->name() == adapter_name);
        n += hit;
        return hit;
      });
    }
  });
  return n;
}

}  // namespace sdlora::lora
