/// @file extract.hpp
/// @brief A LoRA from the difference of two models (a fine-tune and its base), as kohya sd-scripts'
/// extract_lora_from_models.py does: per Linear / Conv2d, a truncated SVD of tuned - base (conv weights flattened to
/// (out, in * kh * kw)), up = U S, down = Vh, entries clamped at a quantile of their magnitudes, alpha = rank
/// (scale 1). Include this header directly.
#pragma once

#include <algorithm>   // std::sort, std::min, std::clamp
#include <cmath>       // std::abs, std::floor
#include <functional>  // std::function
#include <map>         // std::map
#include <string>      // std::string
#include <vector>      // std::vector

#include <Eigen/Dense>  // Eigen::MatrixXd, Eigen::BDCSVD

#include <sdlora/core/dtype.hpp>   // DType
#include <sdlora/core/error.hpp>   // ConfigError, ShapeError
#include <sdlora/core/tensor.hpp>  // Tensor, convert
#include <sdlora/lora/format.hpp>  // LoraFile, LoraEntry
#include <sdlora/lora/inject.hpp>  // AdaptableLeaf, ConvLeaf, LeafScalar
#include <sdlora/lora/names.hpp>   // flatten

namespace sdlora::lora {

/// Options of extract_lora.
struct ExtractOptions {
  Index rank = 4;        ///< rank of Linear and 1x1 Conv2d layers
  Index conv_rank = 0;   ///< rank of 3x3 Conv2d layers (ResNet blocks, samplers); 0 leaves them out (no LoCon)
  double clamp_quantile = 0.99;  ///< clamp U S and Vh entries at this quantile of their |values|; 1 = no clamp
  /// A component whose largest |tuned - base| over the selected layers is below this is left out entirely (kohya's
  /// --min_diff, which it applies to the text encoder). 0 keeps every component.
  double min_diff = 0.0;
  /// Called after each layer: (dotted name, layers done, layers selected).
  std::function<void(std::string const&, std::size_t, std::size_t)> progress;
};

/// Which layers kohya's LoRA networks cover, and at what rank (0 = not covered): in the UNet every Linear / 1x1
/// conv of a Transformer2DModel (`attentions.`), plus with conv_rank the ResNet blocks' and samplers' layers (3x3
/// at conv_rank, Linear / 1x1 at rank); in the text encoder the attention and MLP projections.
inline Index extract_rank(std::string const& component, std::string const& name, bool conv3x3, ExtractOptions const& o) {
  auto has = [&](char const* s) { return name.find(s) != std::string::npos; };
  if (component == "unet") {
    if (has("attentions.")) return conv3x3 ? 0 : o.rank;
    if (o.conv_rank > 0 && (has("resnets.") || has("samplers."))) return conv3x3 ? o.conv_rank : o.rank;
    return 0;
  }
  if (has("self_attn.") || has("mlp.")) return conv3x3 ? 0 : o.rank;
  return 0;
}

namespace detail {

/// torch.quantile(values, q) with linear interpolation between the two nearest ranks.
inline double quantile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  double const pos = q * double(values.size() - 1);
  std::size_t const lo = std::size_t(std::floor(pos));
  std::size_t const hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (values[hi] - values[lo]) * (pos - double(lo));
}

/// The LoRA entry of one weight difference `diff` (out, fan) at `rank`: the truncated SVD (double), U S and Vh
/// clamped at the `q`-quantile of |U S| and |Vh| together.
inline void factor_difference(Eigen::MatrixXd const& diff, Index rank, double q, Eigen::MatrixXd& up,
                              Eigen::MatrixXd& down) {
  Eigen::BDCSVD<Eigen::MatrixXd> svd(diff, Eigen::ComputeThinU | Eigen::ComputeThinV);
  Index const k = std::min<Index>(rank, svd.singularValues().size());
  up = svd.matrixU().leftCols(k) * svd.singularValues().head(k).asDiagonal();  // (out, k)
  down = svd.matrixV().leftCols(k).transpose();                                // (k, fan)
  if (q >= 1.0) return;
  std::vector<double> mags;
  mags.reserve(std::size_t(up.size() + down.size()));
  for (Index i = 0; i < up.size(); ++i) mags.push_back(std::abs(up.data()[i]));
  for (Index i = 0; i < down.size(); ++i) mags.push_back(std::abs(down.data()[i]));
  double const hi = quantile(std::move(mags), q);
  up = up.cwiseMax(-hi).cwiseMin(hi);
  down = down.cwiseMax(-hi).cwiseMin(hi);
}

/// A leaf's weight as a float tensor (16-bit storage widened).
template <class L>
Tensor<float> float_weight(L& leaf) {
  using T = LeafScalar<L>;
  if constexpr (std::is_same_v<T, float>) return leaf.weight.widened();
  else return convert<float, T>(leaf.weight.widened());
}

}  // namespace detail

/// Extracts a LoRA (entries of `component`, alpha = rank) from `tuned` - `base`, two module trees of the same
/// architecture (e.g. the UNets of a fine-tune and of its base). Layers are chosen by extract_rank(); their weights
/// must have equal shapes (ShapeError naming the layer otherwise). Factors are stored as F32.
template <class Module>
LoraFile extract_lora(Module& base, Module& tuned, std::string const& component, ExtractOptions const& o = {}) {
  if (o.rank < 1) SDLORA_THROW(ConfigError, "[lora.extract] the rank must be at least 1, got " << o.rank);
  if (o.clamp_quantile <= 0 || o.clamp_quantile > 1)
    SDLORA_THROW(ConfigError, "[lora.extract] the clamp quantile must be in (0, 1], got " << o.clamp_quantile);
  struct Layer {
    std::string name;
    Index rank = 0;
    Shape shape;
    std::function<Tensor<float>()> base, tuned;  // the weights as float, read when needed (no copies kept)
  };
  auto weight_reader = [](auto& leaf) {
    auto* p = &leaf;
    return std::function<Tensor<float>()>([p] { return detail::float_weight(*p); });
  };
  std::vector<Layer> layers;
  base.visit("", [&](std::string const& name, auto& leaf) {
    using L = std::remove_cvref_t<decltype(leaf)>;
    if constexpr (AdaptableLeaf<L>) {
      Shape const& w = leaf.weight.shape();
      bool const conv3x3 = w.rank() == 4 && (w[2] > 1 || w[3] > 1);
      Index const r = extract_rank(component, name, conv3x3, o);
      if (r > 0) layers.push_back({name, r, w, weight_reader(leaf), {}});
    }
  });
  std::map<std::string, std::size_t> index;
  for (std::size_t i = 0; i < layers.size(); ++i) index[layers[i].name] = i;
  tuned.visit("", [&](std::string const& name, auto& leaf) {
    using L = std::remove_cvref_t<decltype(leaf)>;
    if constexpr (AdaptableLeaf<L>) {
      auto it = index.find(name);
      if (it == index.end()) {
        Shape const& w = leaf.weight.shape();
        if (extract_rank(component, name, w.rank() == 4 && (w[2] > 1 || w[3] > 1), o) > 0)
          SDLORA_THROW(ShapeError, "[lora.extract] " << component << " layer '" << name
                                                     << "' is in the tuned model but not in the base one");
        return;
      }
      Layer& l = layers[it->second];
      if (!(leaf.weight.shape() == l.shape))
        SDLORA_THROW(ShapeError, "[lora.extract] " << component << " layer '" << name << "': base weight " << l.shape
                                                   << ", tuned weight " << leaf.weight.shape());
      l.tuned = weight_reader(leaf);
    }
  });
  for (auto const& l : layers)
    if (!l.tuned)
      SDLORA_THROW(ShapeError, "[lora.extract] " << component << " layer '" << l.name
                                                 << "' is in the base model but not in the tuned one");
  // tuned - base of one layer as an (out, fan) double matrix.
  auto difference = [](Layer const& l) {
    Tensor<float> const b = l.base(), t = l.tuned();
    Index const rows = l.shape[0], cols = l.shape.numel() / rows;
    Eigen::MatrixXd d(rows, cols);
    for (Index i = 0; i < rows; ++i)
      for (Index j = 0; j < cols; ++j) d(i, j) = double(t(i * cols + j)) - double(b(i * cols + j));
    return d;
  };
  LoraFile out;
  out.format = LoraFormat::Kohya;
  if (o.min_diff > 0) {  // an unchanged component gives no entries
    double largest = 0;
    for (auto const& l : layers) largest = std::max(largest, difference(l).cwiseAbs().maxCoeff());
    if (largest < o.min_diff) return out;
  }
  for (std::size_t i = 0; i < layers.size(); ++i) {
    Layer const& l = layers[i];
    Eigen::MatrixXd up, down;
    detail::factor_difference(difference(l), l.rank, o.clamp_quantile, up, down);
    Index const k = up.cols();
    LoraEntry e;
    e.component = component;
    e.module = l.name;
    e.flat = flatten(l.name);
    e.key = l.name;
    std::vector<Index> ds(l.shape.begin(), l.shape.end());
    ds[0] = k;
    std::vector<Index> us = l.shape.rank() == 4 ? std::vector<Index>{l.shape[0], k, 1, 1} : std::vector<Index>{l.shape[0], k};
    e.down = Tensor<float>::uninitialized(Shape(ds));
    e.up = Tensor<float>::uninitialized(Shape(us));
    for (Index r = 0; r < k; ++r)
      for (Index j = 0; j < down.cols(); ++j) e.down(r * down.cols() + j) = float(down(r, j));
    for (Index r = 0; r < up.rows(); ++r)
      for (Index j = 0; j < k; ++j) e.up(r * k + j) = float(up(r, j));
    e.alpha = double(k);
    e.has_alpha = true;
    e.dtype = DType::F32;
    out.entries.push_back(std::move(e));
    if (o.progress) o.progress(l.name, i + 1, layers.size());
  }
  return out;
}

}  // namespace sdlora::lora
