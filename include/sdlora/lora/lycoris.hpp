/// @file lycoris.hpp
/// @brief LyCORIS LoHa and LoKr layers (the `lycoris-lora` package's kohya-named files, `lora_unet_*.hada_w1_a`,
/// `lora_te_*.lokr_w1`, ...): their factors, the weight delta they stand for, an inference adapter that applies it
/// to a Linear or Conv2d, and merge / unmerge. lora/format.hpp reads the files and attaches these; key layouts are in
/// docs/formats.md. Include <sdlora/sdlora.hpp> (or <sdlora/lora/format.hpp>) instead.
///
/// The delta, for a layer weight W (O, I[, kh, kw]) and K = kh * kw (1 for a Linear):
///  - LoHa: dW = scale * (w1_a @ w1_b) ⊙ (w2_a @ w2_b), each product (O, I*K); with Tucker factors (3x3 convs,
///    `use_tucker`) each half is rebuild(t, a, b)[o, i, k] = sum_{p,q} t[p, q, k] a[p, o] b[q, i] instead, with
///    hada_w?_a (R, O), hada_w?_b (R, I), hada_t? (R, R, kh, kw). scale = alpha / R, R = rows of hada_w1_b.
///  - LoKr: dW = scale * kron(w1, w2): w1 (a, b) = lokr_w1 or lokr_w1_a @ lokr_w1_b; w2 (c, d, K) = lokr_w2, or
///    lokr_w2_a (c, R) @ lokr_w2_b (R, d*K) (stored flattened or as (R, d, kh, kw)), or rebuild(lokr_t2, lokr_w2_a
///    (R, c), lokr_w2_b (R, d)); O = a*c, I = b*d; dW[i*c + p, j*d + q, k] = w1[i, j] * w2[p, q, k]. scale = alpha / R
///    with R the rows of lokr_w1_b (w1 decomposed) or of lokr_w2_b; when neither half is decomposed LyCORIS ignores
///    alpha and uses scale 1.
///  - A missing alpha, or alpha 0, means alpha = R (scale 1), as LyCORIS reads it.
/// reference: lycoris-lora 4.1 (lycoris/modules/loha.py, lokr.py: the rebuild forward, which applies alpha / R once;
/// its merge_to path multiplies by alpha / R a second time for LoHa, which we do not copy: ComfyUI and A1111 apply
/// alpha / R once, as the forward does).
///
/// The adapter is inference-only: it has no trainable parameters; its backward adds dW^T dy to dx so that a LoRA can
/// be trained on top of a model wearing a LoHa. Forward materialises dW * multiplier once (again when the multiplier
/// changes) and applies it as a full-rank branch: y += x dW^T (Linear) or conv(x, dW) with the layer's geometry.
#pragma once

#include <functional>   // std::function
#include <map>          // std::map
#include <memory>       // std::make_shared, std::dynamic_pointer_cast
#include <optional>     // std::optional
#include <sstream>      // std::ostringstream
#include <string>       // std::string
#include <type_traits>  // std::is_same_v, std::remove_cvref_t
#include <vector>       // std::vector

#include <sdlora/core/backend.hpp>  // Context
#include <sdlora/core/error.hpp>    // SDLORA_EXPECTS, SDLORA_THROW, ConfigError, FormatError
#include <sdlora/core/tensor.hpp>   // Tensor, TensorView
#include <sdlora/lora/inject.hpp>   // AdaptableLeaf, ConvLeaf, LeafScalar, LeafBackend
#include <sdlora/nn/module.hpp>     // nn::Adapter, nn::Mode, nn::Parameter
#include <sdlora/ops/conv.hpp>      // ops::conv2d_forward, ops::conv2d_backward_input, ops::Conv2dGeometry
#include <sdlora/ops/gemm.hpp>      // ops::gemm

namespace sdlora::lora {

/// The two LyCORIS algorithms read here.
enum class LycorisAlgo { LoHa, LoKr };

inline char const* lycoris_algo_name(LycorisAlgo a) { return a == LycorisAlgo::LoHa ? "LoHa" : "LoKr"; }

/// The tensors of one LyCORIS layer, by key suffix ("hada_w1_a", "lokr_w2", ...), read as float.
struct LycorisFactors {
  LycorisAlgo algo = LycorisAlgo::LoHa;
  std::map<std::string, Tensor<float>> tensors;
  std::optional<double> alpha;  ///< the file's alpha; absent when it has none

  bool has(std::string const& suffix) const { return tensors.count(suffix) > 0; }
  Tensor<float> const& at(std::string const& suffix) const { return tensors.at(suffix); }

  /// R: the rank alpha is divided by (0 for a LoKr layer without decomposed halves).
  Index rank() const {
    if (algo == LycorisAlgo::LoHa) return at("hada_w1_b").dim(0);
    if (has("lokr_w1_b")) return at("lokr_w1_b").dim(0);
    if (has("lokr_w2_b")) return at("lokr_w2_b").dim(0);
    return 0;
  }
  /// alpha / R; 1 without alpha (or alpha 0) and for LoKr layers whose halves are both full matrices.
  double scale() const {
    Index const r = rank();
    if (r == 0 || !alpha || *alpha == 0.0) return 1.0;
    return *alpha / double(r);
  }
  /// Scalars stored (for reports).
  Index numel() const {
    Index n = 0;
    for (auto const& [k, t] : tensors) n += t.numel();
    return n;
  }
};

namespace detail {

/// t viewed as the matrix (dim 0, the rest).
inline TensorView<float const, Cpu> as_matrix(Tensor<float> const& t) {
  return t.view().reshaped(Shape{t.dim(0), t.numel() / t.dim(0)});
}
/// op(a) @ b with the library's GEMM (the sums torch makes in float, multithreaded). A template so that a translation
/// unit which only reads files needs no backend (ops::Impl<Gemm, Cpu> is instantiated only where a delta is built).
template <class T>
Tensor<T> matmul(TensorView<T const, Cpu> a, TensorView<T const, Cpu> b, bool trans_a = false) {
  Context<Cpu> ctx;
  auto c = Tensor<T>::uninitialized(Shape{trans_a ? a.dim(1) : a.dim(0), b.dim(1)});
  ops::gemm<T, Cpu>(ctx, c.view(), a, b, {.trans_a = trans_a});
  return c;
}
/// rebuild(t (R, R, K), a (R, P), b (R, Q)) [p, q*K + k] = sum_{i,j} t[i, j, k] a[i, p] b[j, q]: (P, Q*K).
/// reference: lycoris/functional/general.py rebuild_tucker (einsum "i j ..., i p, j r -> p r ...")
template <class T>
Tensor<T> rebuild_tucker(Tensor<T> const& t, Tensor<T> const& a, Tensor<T> const& b) {
  Index const r = t.dim(0), kk = t.numel() / (r * r), q_n = b.dim(1);
  Tensor<T> tb(Shape{r, q_n * kk});  // (R, Q*K): [i, q*K + k] = sum_j t[i, j, k] b[j, q]   (small: R*R*K*Q)
  for (Index i = 0; i < r; ++i)
    for (Index j = 0; j < r; ++j)
      for (Index q = 0; q < q_n; ++q) {
        T const bq = b(j * q_n + q);
        for (Index k = 0; k < kk; ++k) tb(i * q_n * kk + q * kk + k) += t((i * r + j) * kk + k) * bq;
      }
  return matmul<T>(a.view(), tb.view(), true);  // a^T (P, R) @ tb (R, Q*K)
}

/// The weight (O, I, K) a layer's delta must have, from its weight shape (O, I[, kh, kw]).
struct WeightDims {
  Index out = 0, in = 0, k = 1, kh = 1, kw = 1;
};
inline WeightDims weight_dims(Shape const& w) {
  WeightDims d{w[0], w[1], 1, 1, 1};
  if (w.rank() == 4) d.kh = w[2], d.kw = w[3], d.k = w[2] * w[3];
  return d;
}

/// "" when the factors fit a weight of shape w, else what does not fit.
inline std::string lycoris_shape_problem(LycorisFactors const& f, Shape const& w) {
  WeightDims const d = weight_dims(w);
  std::ostringstream os;
  auto shape_of = [&](char const* k) { return f.at(k).shape().str(); };
  auto tucker_ok = [&](char const* t, char const* a, char const* b, Index a_cols, Index b_cols) {
    Tensor<float> const &tt = f.at(t), &ta = f.at(a), &tb = f.at(b);
    Index const r = ta.dim(0);
    return tt.rank() == 4 && tt.dim(0) == r && tt.dim(1) == r && tt.dim(2) == d.kh && tt.dim(3) == d.kw &&
           ta.rank() == 2 && ta.dim(1) == a_cols && tb.rank() == 2 && tb.dim(0) == r && tb.dim(1) == b_cols;
  };
  if (f.algo == LycorisAlgo::LoHa) {
    for (char const* half : {"1", "2"}) {
      std::string const a = std::string("hada_w") + half + "_a", b = std::string("hada_w") + half + "_b",
                        t = std::string("hada_t") + half;
      bool ok;
      if (f.has(t)) {
        ok = tucker_ok(t.c_str(), a.c_str(), b.c_str(), d.out, d.in);
        if (!ok)
          os << "LoHa Tucker " << t << " " << shape_of(t.c_str()) << ", " << a << " " << shape_of(a.c_str()) << ", "
             << b << " " << shape_of(b.c_str()) << " do not give (" << d.out << ", " << d.in << ", " << d.kh << ", "
             << d.kw << ")";
      } else {
        Tensor<float> const &ta = f.at(a), &tb = f.at(b);
        ok = ta.rank() == 2 && ta.dim(0) == d.out && tb.rank() >= 2 && tb.dim(0) == ta.dim(1) &&
             tb.numel() == tb.dim(0) * d.in * d.k;
        if (!ok)
          os << "LoHa " << a << " " << ta.shape() << " @ " << b << " " << tb.shape() << " does not give (" << d.out
             << ", " << d.in * d.k << ")";
      }
      if (!ok) return os.str();
    }
    return "";
  }
  // LoKr: w1 (a, b), w2 (c, d, K) with a*c = O, b*d = I.
  Index a = 0, b = 0;
  if (f.has("lokr_w1")) {
    Tensor<float> const& w1 = f.at("lokr_w1");
    if (w1.rank() == 2) a = w1.dim(0), b = w1.dim(1);
  } else {
    Tensor<float> const &w1a = f.at("lokr_w1_a"), &w1b = f.at("lokr_w1_b");
    if (w1a.rank() == 2 && w1b.rank() == 2 && w1a.dim(1) == w1b.dim(0)) a = w1a.dim(0), b = w1b.dim(1);
  }
  if (a == 0 || b == 0 || d.out % a != 0 || d.in % b != 0) {
    os << "LoKr w1 " << (f.has("lokr_w1") ? shape_of("lokr_w1") : shape_of("lokr_w1_a") + " @ " + shape_of("lokr_w1_b"))
       << " does not divide (" << d.out << ", " << d.in << ")";
    return os.str();
  }
  Index const c = d.out / a, dd = d.in / b;
  bool ok;
  if (f.has("lokr_w2")) {
    Tensor<float> const& w2 = f.at("lokr_w2");
    ok = w2.rank() >= 2 && w2.dim(0) == c && w2.dim(1) == dd && w2.numel() == c * dd * d.k;
  } else if (f.has("lokr_t2")) {
    ok = tucker_ok("lokr_t2", "lokr_w2_a", "lokr_w2_b", c, dd);
  } else {
    Tensor<float> const &w2a = f.at("lokr_w2_a"), &w2b = f.at("lokr_w2_b");
    ok = w2a.rank() == 2 && w2a.dim(0) == c && w2b.rank() >= 2 && w2b.dim(0) == w2a.dim(1) &&
         w2b.numel() == w2b.dim(0) * dd * d.k;
  }
  if (!ok) {
    os << "LoKr w2 ";
    for (char const* k : {"lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"})
      if (f.has(k)) os << k << " " << shape_of(k) << " ";
    os << "does not give (" << c << ", " << dd << ", " << d.kh << ", " << d.kw << ") for w1 (" << a << ", " << b << ")";
    return os.str();
  }
  return "";
}

}  // namespace detail

/// The delta scale * product for a weight of shape `w` (O, I[, kh, kw]), before the multiplier: the factor products
/// in float (as LyCORIS computes them), the Hadamard / Kronecker product and the scale in double, rounded once.
/// Throws FormatError when the factors do not fit the weight. (T is the factors' float; a template parameter so that
/// the GEMM is instantiated only where a delta is built.)
template <class T = float>
Tensor<T> lycoris_delta(LycorisFactors const& f, Shape const& w) {
  static_assert(std::is_same_v<T, float>, "LyCORIS factors are read as float");
  if (std::string const why = detail::lycoris_shape_problem(f, w); !why.empty())
    SDLORA_THROW(FormatError, "[lycoris] the factors do not fit the weight " << w << ": " << why);
  detail::WeightDims const d = detail::weight_dims(w);
  auto out = Tensor<float>::uninitialized(w);  // (O, I[, kh, kw])
  double const s = f.scale();
  if (f.algo == LycorisAlgo::LoHa) {
    auto half = [&](char const* n) {  // (O, I*K)
      std::string const a = std::string("hada_w") + n + "_a", b = std::string("hada_w") + n + "_b",
                        t = std::string("hada_t") + n;
      if (f.has(t)) return detail::rebuild_tucker<T>(f.at(t), f.at(a), f.at(b));
      return detail::matmul<T>(detail::as_matrix(f.at(a)), detail::as_matrix(f.at(b)));
    };
    Tensor<float> const h1 = half("1"), h2 = half("2");
    float const *p1 = h1.data(), *p2 = h2.data();
    float* o = out.data();
    for (Index i = 0; i < out.numel(); ++i) o[i] = float(s * double(p1[i]) * double(p2[i]));
    return out;
  }
  Tensor<float> const w1 = f.has("lokr_w1") ? f.at("lokr_w1")
                                            : detail::matmul<T>(detail::as_matrix(f.at("lokr_w1_a")),
                                                                detail::as_matrix(f.at("lokr_w1_b")));  // (a, b)
  Tensor<float> const w2 = f.has("lokr_w2") ? f.at("lokr_w2")
                           : f.has("lokr_t2")
                               ? detail::rebuild_tucker<T>(f.at("lokr_t2"), f.at("lokr_w2_a"), f.at("lokr_w2_b"))
                               : detail::matmul<T>(detail::as_matrix(f.at("lokr_w2_a")),
                                                   detail::as_matrix(f.at("lokr_w2_b")));  // (c, d*K)
  Index const a_n = w1.dim(0), b_n = w1.dim(1), c = w2.dim(0), dk = w2.numel() / c;        // dk = d*K
  // dW[i*c + p, (j*d + q)*K + k] = w1[i, j] * w2[p, q*K + k]   (torch.kron with w1 unsqueezed to (a, b, 1, 1))
  for (Index i = 0; i < a_n; ++i)
    for (Index p = 0; p < c; ++p) {
      float* row = out.data() + (i * c + p) * d.in * d.k;
      float const* w2p = w2.data() + p * dk;
      for (Index j = 0; j < b_n; ++j) {
        double const x = s * double(w1(i * b_n + j));
        for (Index q = 0; q < dk; ++q) row[j * dk + q] = float(x * double(w2p[q]));
      }
    }
  return out;
}

/// A LoHa / LoKr layer attached to a Linear or Conv2d (see the file comment). Not trainable.
template <class T, class B = Cpu>
class LycorisAdapter final : public nn::Adapter<T, B> {
 public:
  /// `weight` is the layer's weight shape; `geometry` the conv's stride and padding (absent for a Linear).
  LycorisAdapter(LycorisFactors factors, Shape weight, std::optional<ops::Conv2dGeometry> geometry, double multiplier,
                 std::string name)
      : factors_(std::move(factors)),
        weight_(weight),
        geometry_(geometry),
        multiplier_(multiplier),
        name_(std::move(name)) {
    if (std::string const why = detail::lycoris_shape_problem(factors_, weight_); !why.empty())
      SDLORA_THROW(FormatError,
                   "[lycoris] adapter '" << name_ << "' does not fit the weight " << weight_ << ": " << why);
  }

  std::string const& name() const override { return name_; }
  LycorisFactors const& factors() const { return factors_; }
  LycorisAlgo algo() const { return factors_.algo; }
  double multiplier() const { return multiplier_; }
  /// alpha / rank (or 1, see LycorisFactors::scale): the factor on the product, before the multiplier.
  double scale() const { return factors_.scale(); }
  bool merged() const { return merged_multiplier_.has_value(); }

  /// Changes the multiplier; refused while merged (unmerge, change, merge again).
  void set_multiplier(double m) {
    if (merged())
      SDLORA_THROW(ConfigError, "[lycoris] adapter '" << name_ << "' is merged: unmerge it before changing the "
                                                      << "multiplier");
    multiplier_ = m;
  }

  /// y += x dW^T (Linear, x (..., in), y (..., out)) or y += conv(x, dW) (Conv2d, x (N, in, H, W)).
  void forward(Context<B>& ctx, TensorView<T, B> y, TensorView<T const, B> x, nn::Mode) override {
    if (merged()) return;
    TensorView<T const, B> const dw = delta().view();  // (out, in[, kh, kw])
    if (geometry_) {
      ops::conv2d_forward<T, B>(ctx, y, x, dw, {}, *geometry_, true);
      return;
    }
    Index const in = weight_[1], out = weight_[0];
    SDLORA_EXPECTS(x.dim(-1) == in && y.dim(-1) == out && x.numel() / in == y.numel() / out,
                   "[lycoris] x must be (..., " << in << ") and y (..., " << out << "), got x " << x.shape() << ", y "
                                                << y.shape());
    Index const rows = x.numel() / in;
    ops::gemm<T, B>(ctx, y.reshaped(Shape{rows, out}), x.reshaped(Shape{rows, in}), dw.reshaped(Shape{out, in}),
                    {.trans_b = true, .beta = 1.0});
  }
  /// dx += dy dW (Linear) or the conv's input gradient with dW (Conv2d). Nothing of the adapter trains.
  void backward(Context<B>& ctx, TensorView<T, B> dx, TensorView<T const, B> dy) override {
    if (merged()) return;
    TensorView<T const, B> const dw = delta().view();
    if (geometry_) {
      ops::conv2d_backward_input<T, B>(ctx, dx, dy, dw, *geometry_, true);
      return;
    }
    Index const in = weight_[1], out = weight_[0], rows = dy.numel() / out;
    ops::gemm<T, B>(ctx, dx.reshaped(Shape{rows, in}), dy.reshaped(Shape{rows, out}), dw.reshaped(Shape{out, in}),
                    {.beta = 1.0});
  }
  void for_each_parameter(std::string const&,
                          std::function<void(std::string const&, nn::Parameter<T, B>&)> const&) override {}

  /// weight += multiplier * dW and mark merged (forward and backward then skip the branch).
  void merge_into(TensorView<T, B> weight) {
    if (merged()) return;
    add_delta(weight, multiplier_);
    merged_multiplier_ = multiplier_;
    delta_ = Tensor<T, B>();  // the base has it now
  }
  /// weight -= the merged delta and mark unmerged.
  void unmerge_from(TensorView<T, B> weight) {
    if (!merged()) return;
    add_delta(weight, -*merged_multiplier_);
    merged_multiplier_.reset();
  }

 private:
  /// multiplier * dW in T, rebuilt when the multiplier changed.
  Tensor<T, B> const& delta() {
    if (delta_.numel() != weight_.numel() || !delta_multiplier_ || *delta_multiplier_ != multiplier_) {
      static_assert(std::is_same_v<B, Cpu>, "LyCORIS adapters are built on the Cpu backend");
      Tensor<float> const d = lycoris_delta(factors_, weight_);
      delta_ = Tensor<T, B>::uninitialized(weight_);
      for (Index i = 0; i < d.numel(); ++i) delta_(i) = T(multiplier_ * double(d(i)));
      delta_multiplier_ = multiplier_;
    }
    return delta_;
  }
  void add_delta(TensorView<T, B> weight, double m) const {
    static_assert(std::is_same_v<B, Cpu>, "LyCORIS merges run on the Cpu backend");
    SDLORA_EXPECTS(
        weight.numel() == weight_.numel() && weight.is_contiguous(),
        "[lycoris.merge] adapter '" << name_ << "' was made for a weight " << weight_ << ", got " << weight.shape());
    Tensor<float> const d = lycoris_delta(factors_, weight_);
    T* w = weight.data();
    for (Index i = 0; i < d.numel(); ++i) w[i] = T(double(w[i]) + m * double(d(i)));
  }

  LycorisFactors factors_;
  Shape weight_;                                 // (out, in[, kh, kw]) of the layer
  std::optional<ops::Conv2dGeometry> geometry_;  // the conv's stride and padding; absent for a Linear
  double multiplier_ = 1.0;
  std::string name_;
  std::optional<double> merged_multiplier_;  // the multiplier merged into the base weight, while merged
  Tensor<T, B> delta_;                       // (out, in[, kh, kw]): multiplier * dW, built on first use
  std::optional<double> delta_multiplier_;   // the multiplier delta_ was built with
};

/// Attaches a LyCORIS layer to a leaf (Linear or Conv2d) as an adapter named `name`. Names must be unique per leaf.
template <AdaptableLeaf L>
std::shared_ptr<LycorisAdapter<LeafScalar<L>, LeafBackend<L>>> add_lycoris_adapter(L& leaf,
                                                                                   LycorisFactors const& factors,
                                                                                   double multiplier,
                                                                                   std::string const& name) {
  using T = LeafScalar<L>;
  using B = LeafBackend<L>;
  for (auto const& a : leaf.adapters)
    if (a->name() == name)
      SDLORA_THROW(ConfigError, "[lycoris] the layer already has an adapter named '" << name << "'");
  std::optional<ops::Conv2dGeometry> geometry;
  if constexpr (ConvLeaf<L>) geometry = leaf.geometry;
  auto a = std::make_shared<LycorisAdapter<T, B>>(factors, leaf.weight.shape(), geometry, multiplier, name);
  leaf.adapters.push_back(a);
  return a;
}

/// Adds multiplier * dW of a LyCORIS layer into a leaf's weight (a 16-bit weight is widened, added to, rounded).
template <AdaptableLeaf L>
void merge_lycoris(L& leaf, LycorisFactors const& factors, double multiplier) {
  using T = LeafScalar<L>;
  Tensor<float> const d = lycoris_delta(factors, leaf.weight.shape());
  leaf.weight.edit([&](TensorView<T, Cpu> w) {
    T* p = w.data();
    for (Index i = 0; i < d.numel(); ++i) p[i] = T(double(p[i]) + multiplier * double(d(i)));
  });
}

/// Calls f(layer_name, leaf, adapter) for every LyCORIS adapter of the tree (all names, or only `adapter_name`).
template <class Module, class F>
void for_each_lycoris_adapter(Module& module, F&& f, std::string const& adapter_name = "") {
  module.visit("", [&](std::string const& name, auto& leaf) {
    using L = std::remove_cvref_t<decltype(leaf)>;
    if constexpr (AdaptableLeaf<L>) {
      for (auto& a : leaf.adapters) {
        auto ly = std::dynamic_pointer_cast<LycorisAdapter<LeafScalar<L>, LeafBackend<L>>>(a);
        if (ly && (adapter_name.empty() || ly->name() == adapter_name)) f(name, leaf, *ly);
      }
    }
  });
}
/// Sets the multiplier of every LyCORIS adapter named `adapter_name` ("" = all); returns how many changed.
template <class Module>
Index set_lycoris_multiplier(Module& module, std::string const& adapter_name, double multiplier) {
  Index n = 0;
  for_each_lycoris_adapter(
      module, [&](std::string const&, auto&, auto& a) { a.set_multiplier(multiplier), ++n; }, adapter_name);
  return n;
}
/// Merges the enabled LyCORIS adapters (or those named `adapter_name`) into their layers' weights.
template <class Module>
void merge_lycoris_all(Module& module, std::string const& adapter_name = "") {
  for_each_lycoris_adapter(
      module,
      [](std::string const&, auto& leaf, auto& a) {
        using T = LeafScalar<std::remove_cvref_t<decltype(leaf)>>;
        if (a.enabled) leaf.weight.edit([&](TensorView<T, Cpu> w) { a.merge_into(w); });
      },
      adapter_name);
}
/// Subtracts merged LyCORIS adapters back out of their weights.
template <class Module>
void unmerge_lycoris_all(Module& module, std::string const& adapter_name = "") {
  for_each_lycoris_adapter(
      module,
      [](std::string const&, auto& leaf, auto& a) {
        using T = LeafScalar<std::remove_cvref_t<decltype(leaf)>>;
        if (a.merged()) leaf.weight.edit([&](TensorView<T, Cpu> w) { a.unmerge_from(w); });
      },
      adapter_name);
}

}  // namespace sdlora::lora
