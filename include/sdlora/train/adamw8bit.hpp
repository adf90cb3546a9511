/// @file adamw8bit.hpp
/// @brief bitsandbytes' AdamW8bit (`bnb.optim.AdamW8bit`): AdamW whose two moments are stored as one byte each,
/// block-wise dynamically quantized, plus one float absmax per block of 256 values. Include <sdlora/train.hpp>
/// instead.
///
/// The algorithm, as bitsandbytes 0.50 runs it on the CPU (`backends/cpu/ops.py`,
/// `_optimizer_update_8bit_blockwise_cpu`, and `csrc/cpu_ops.cpp`), which is the reference our fixture comes from:
///   m = code1[c1] * absmax1[block],  v = code2[c2] * absmax2[block]         dequantize
///   m = m*b1 + (1-b1)*g,  v = v*b2 + (1-b2)*g*g                             update the moments (float32)
///   p *= 1 - lr*wd;  p += -(lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)
///   absmax = max |block|;  c = code nearest to x / absmax                   requantize with the new absmax
/// code1 is `create_dynamic_map(signed=True)`, code2 `create_dynamic_map(signed=False)` (dynamic_map() below).
/// "Nearest" is bitsandbytes' CPU table: x / absmax is rounded to one of 65536 grid points spaced 2 / 65535 over
/// [-1, 1], and each grid point holds the code nearest to it (so a value within half a grid step, 1.5e-5, of a code
/// midpoint may take the farther code, and values near 0 take the code nearest +-1.5e-5 rather than 0). A block whose
/// absmax is 0 stores code 0. Parameters with fewer than `min_8bit_size` (4096)
/// elements keep float32 moments and take bitsandbytes' 32-bit update:
///   p *= 1 - lr*wd;  p += -(lr * sqrt(1-b2^t) / (1-b1^t)) * m / (sqrt(v) + eps * sqrt(1-b2^t)).
/// bitsandbytes' CUDA kernel (`kOptimizerStatic8bit2StateBlockwise`) differs in three details: it decays the
/// parameter after the step instead of before (a difference of order lr^2 * wd), uses the 32-bit form of the
/// denominator above, and rounds to the exact nearest code, nudging a first-moment code whose sign flipped back by
/// one. percentile_clipping (100 = off) and max_unorm (0 = off) are AdamW8bit's defaults and are not offered.
///
/// Elementwise math is float32 in torch's order; `x*b + a*g` is one fused multiply-add as torch's vectorised
/// `mul_().add_(alpha=)` and `addcmul_` compute it, which makes the stored codes and absmax bit-identical to
/// bitsandbytes' (tests/train/optimizer_test.cpp).
#pragma once

#include <algorithm>    // std::clamp, std::max, std::sort
#include <array>        // std::array
#include <cmath>        // std::fma, std::pow, std::sqrt, std::abs
#include <cstdint>      // std::uint8_t, std::uint16_t, std::int64_t
#include <map>          // std::map
#include <memory>       // std::unique_ptr, std::make_unique
#include <set>          // std::set
#include <string>       // std::string
#include <string_view>  // std::string_view
#include <type_traits>  // std::is_same_v
#include <utility>      // std::move
#include <vector>       // std::vector

#include <sdlora/backend/cpu/parallel.hpp>  // cpu::parallel_for
#include <sdlora/core/error.hpp>            // SDLORA_THROW, FormatError
#include <sdlora/core/tensor.hpp>           // Tensor
#include <sdlora/train/optimizer.hpp>       // Optimizer, OptimizerState, OptimizerOptions
#include <sdlora/train/param_ref.hpp>       // ParamRef

namespace sdlora::train {

/// Values per absmax block: bitsandbytes' block size for 8-bit optimizer states.
inline constexpr Index kQuantBlockSize = 256;

/// A 256-entry quantization map, ascending: code c stands for map[c] * absmax.
using QuantMap = std::array<float, 256>;

/// bitsandbytes.functional.create_dynamic_map(signed, max_exponent_bits=7, total_bits=8): for each decade
/// 10^(i-6), i = 0..6, the midpoints of torch.linspace(0.1, 1, k + 1) scaled by 10^(i-6), with k = 2^i (signed,
/// plus their negatives) or 2^(i+1) (unsigned); then 0 and 1; sorted. 256 values either way. float32 as torch
/// computes it (linspace as fma(step, i, start) below the halfway point and fma(-step, k - i, end) from it).
inline QuantMap dynamic_map(bool is_signed) {
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    int const points = (is_signed ? (1 << i) : (1 << (i + 1))) + 1;
    float const start = 0.1f, end = 1.0f;
    float const step = (end - start) / float(points - 1);
    std::vector<float> b(std::size_t(points), 0.0f);  // torch.linspace(0.1, 1, points)
    for (int k = 0; k < points; ++k)
      b[std::size_t(k)] =
          k < points / 2 ? std::fma(step, float(k), start) : std::fma(-step, float(points - 1 - k), end);
    float const scale = float(std::pow(10.0, i - 6));  // the Python float 10 ** (i - 6), as a float32 scalar
    for (int k = 0; k + 1 < points; ++k) {
      float const mean = (b[std::size_t(k)] + b[std::size_t(k) + 1]) / 2.0f;
      data.push_back(scale * mean);
      if (is_signed) data.push_back(-(scale * mean));
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  SDLORA_EXPECTS(data.size() == 256, "[adamw8bit] dynamic map has " << data.size() << " values, expected 256");
  std::sort(data.begin(), data.end());
  QuantMap out{};
  std::copy(data.begin(), data.end(), out.begin());
  return out;
}

/// Block-wise quantization to a QuantMap as bitsandbytes' CPU backend does it (csrc/cpu_ops.cpp quantize_cpu /
/// dequantize_cpu): absmax per block of 256, then x / absmax looked up in a table of 65536 bins over [-1, 1].
class BlockwiseQuantizer {
 public:
  static constexpr int kBins = 65536;

  explicit BlockwiseQuantizer(QuantMap const& map) : map_(map), table_(kBins) {
    // Grid point i is -1 + 2i / 65535; it holds the first code whose upper midpoint is not below it (the nearest).
    std::array<float, 255> mid{};
    for (std::size_t c = 0; c < mid.size(); ++c) mid[c] = 0.5f * (map[c] + map[c + 1]);
    std::size_t code = 0;
    for (int i = 0; i < kBins; ++i) {
      float const value = -1.0f + (2.0f * float(i)) / float(kBins - 1);
      while (code < mid.size() && mid[code] < value) ++code;
      table_[std::size_t(i)] = std::uint8_t(code);
    }
  }

  QuantMap const& map() const { return map_; }

  /// The code of x / absmax (the quotient clamped to [-1, 1]).
  std::uint8_t code(float normalized) const {
    float const v = std::clamp(normalized, -1.0f, 1.0f);
    return table_[std::size_t(std::uint16_t((v + 1.0f) * 0.5f * float(kBins - 1) + 0.5f))];
  }

  /// One block: absmax = max |x| and each code; a block of zeros gets absmax 0 and code 0.
  float quantize_block(float const* x, Index n, std::uint8_t* codes) const {
    float absmax = 0.0f;
    for (Index i = 0; i < n; ++i) absmax = std::max(absmax, std::abs(x[i]));
    if (absmax == 0.0f) {
      std::fill(codes, codes + n, std::uint8_t(0));
      return absmax;
    }
    float const inv = 1.0f / absmax;
    for (Index i = 0; i < n; ++i) codes[i] = code(x[i] * inv);
    return absmax;
  }
  void dequantize_block(std::uint8_t const* codes, Index n, float absmax, float* x) const {
    for (Index i = 0; i < n; ++i) x[i] = map_[codes[i]] * absmax;
  }

  /// The two quantizers AdamW8bit uses, built once: the signed map for the first moment, the unsigned one for the
  /// second.
  static BlockwiseQuantizer const& signed_dynamic() {
    static BlockwiseQuantizer const q(dynamic_map(true));
    return q;
  }
  static BlockwiseQuantizer const& unsigned_dynamic() {
    static BlockwiseQuantizer const q(dynamic_map(false));
    return q;
  }

 private:
  QuantMap map_;
  std::vector<std::uint8_t> table_;  // (65536) code per bin
};

/// bnb.optim.AdamW8bit's defaults (lr 1e-3 as bitsandbytes; sdlora-train passes --learning_rate).
struct AdamW8bitOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
  Index min_8bit_size = 4096;  // parameters with fewer elements keep float32 moments
};

/// bitsandbytes' AdamW8bit (see the file comment). State keys, as bitsandbytes names them: "<param>.state1" and
/// "<param>.state2" (uint8 codes in the parameter's shape, or float32 moments for a small parameter),
/// "<param>.absmax1" and "<param>.absmax2" (float32, one per block of 256), scalar "<param>.step".
template <class T, class B = Cpu>
class AdamW8bit final : public Optimizer<T, B> {
  using Base = Optimizer<T, B>;
  static_assert(std::is_same_v<T, float>, "AdamW8bit computes in float32 as bitsandbytes: use float parameters");

 public:
  AdamW8bit(std::vector<ParamRef<T, B>> params, AdamW8bitOptions const& o) : Base(std::move(params), o.lr), o_(o) {
    if (o.min_8bit_size < 0) SDLORA_THROW(ConfigError, "[adamw8bit] min_8bit_size must be >= 0");
    for (auto const& p : this->params_) state_.emplace(p.name, Slot{});
  }

  std::string_view type() const override { return "adamw8bit"; }
  AdamW8bitOptions const& options() const { return o_; }

  /// Whether a parameter of `numel` elements keeps 8-bit moments.
  bool quantized(Index numel) const { return numel >= o_.min_8bit_size; }
  static Index blocks(Index numel) { return (numel + kQuantBlockSize - 1) / kQuantBlockSize; }

  /// Bytes of optimizer state a parameter of `numel` elements needs: 2 codes + 2 absmax floats per block when
  /// quantized, else 2 float32 moments.
  static std::int64_t state_bytes(Index numel, Index min_8bit_size) {
    return numel >= min_8bit_size ? 2 * std::int64_t(numel) + 2 * 4 * std::int64_t(blocks(numel))
                                  : 2 * 4 * std::int64_t(numel);
  }

  void step() override {
    for (auto& ref : this->params_) {
      if (!this->active(ref)) continue;
      nn::Parameter<T, B>& p = *ref.param;
      Slot& s = state_.at(ref.name);
      Index const n = p.value.numel();
      if (s.step == 0) init(s, p.shape());
      s.step += 1;
      if (quantized(n))
        step_8bit(p, s);
      else
        step_32bit(p, s);
    }
  }

  OptimizerState<T> state_dict() const override {
    OptimizerState<T> out;
    out.type = std::string(type());
    out.scalars["lr"] = this->lr_;
    for (auto const& [name, s] : state_) {
      if (s.step == 0) continue;
      out.scalars[name + ".step"] = double(s.step);
      if (!s.codes1.empty()) {
        out.codes.emplace(name + ".state1", s.codes1);
        out.codes.emplace(name + ".state2", s.codes2);
        out.tensors.emplace(name + ".absmax1", s.absmax1);
        out.tensors.emplace(name + ".absmax2", s.absmax2);
      } else {
        out.tensors.emplace(name + ".state1", s.m);
        out.tensors.emplace(name + ".state2", s.v);
      }
    }
    return out;
  }

  void load_state_dict(OptimizerState<T> const& in) override {
    this->check_type(in);
    this->check_no_strangers(in, {"state1", "state2", "absmax1", "absmax2"});
    std::set<std::string> known;
    for (auto const& p : this->params_) known.insert({p.name + ".state1", p.name + ".state2"});
    for (auto const& [key, t] : in.codes)
      if (!known.count(key))
        SDLORA_THROW(FormatError, "[optimizer] state tensor '" << key << "' belongs to no parameter");
    this->lr_ = Base::scalar(in, "lr");
    for (auto const& ref : this->params_) {
      Slot& s = state_.at(ref.name);
      s = Slot{};
      auto it = in.scalars.find(ref.name + ".step");
      if (it == in.scalars.end()) continue;  // never stepped
      s.step = std::int64_t(it->second);
      Shape const shape = ref.param->shape();
      if (quantized(shape.numel())) {
        s.codes1 = codes(in, ref.name + ".state1", shape);
        s.codes2 = codes(in, ref.name + ".state2", shape);
        s.absmax1 = Base::tensor(in, ref.name + ".absmax1", Shape{blocks(shape.numel())});
        s.absmax2 = Base::tensor(in, ref.name + ".absmax2", Shape{blocks(shape.numel())});
      } else {
        if (in.codes.count(ref.name + ".state1"))
          SDLORA_THROW(FormatError, "[adamw8bit] state of '" << ref.name << "' is 8-bit, but " << shape.numel()
                                                             << " elements < min_8bit_size " << o_.min_8bit_size
                                                             << " keep float32 moments");
        s.m = Base::tensor(in, ref.name + ".state1", shape);
        s.v = Base::tensor(in, ref.name + ".state2", shape);
      }
    }
  }

 private:
  struct Slot {
    std::int64_t step = 0;
    Tensor<std::uint8_t, Cpu> codes1, codes2;  // (param shape) quantized first / second moment
    Tensor<float, Cpu> absmax1, absmax2;       // (blocks) one scale per 256 values
    Tensor<float, Cpu> m, v;                   // (param shape) float32 moments of a small parameter
  };

  void init(Slot& s, Shape const& shape) const {
    if (quantized(shape.numel())) {  // bitsandbytes starts from zero codes and zero absmax
      s.codes1 = Tensor<std::uint8_t, Cpu>(shape);
      s.codes2 = Tensor<std::uint8_t, Cpu>(shape);
      s.absmax1 = Tensor<float, Cpu>(Shape{blocks(shape.numel())});
      s.absmax2 = Tensor<float, Cpu>(Shape{blocks(shape.numel())});
    } else {
      s.m = Tensor<float, Cpu>(shape);
      s.v = Tensor<float, Cpu>(shape);
    }
  }

  static Tensor<std::uint8_t, Cpu> const& codes(OptimizerState<T> const& s, std::string const& key,
                                                Shape const& shape) {
    auto it = s.codes.find(key);
    if (it == s.codes.end()) SDLORA_THROW(FormatError, "[optimizer] state has no uint8 tensor '" << key << "'");
    if (!(it->second.shape() == shape))
      SDLORA_THROW(FormatError, "[optimizer] state tensor '" << key << "' has shape " << it->second.shape()
                                                             << ", expected " << shape);
    return it->second;
  }

  /// bitsandbytes' _optimizer_update_8bit_blockwise_cpu for "adam": dequantize, update, requantize, block by block
  /// (each block's new absmax depends on its own values only, so blocks run in parallel).
  void step_8bit(nn::Parameter<T, B>& p, Slot& s) const {
    double const lr = this->lr_;
    double const bias1 = 1.0 - std::pow(o_.beta1, double(s.step));
    double const bias2_sqrt = std::sqrt(1.0 - std::pow(o_.beta2, double(s.step)));
    float const b1 = float(o_.beta1), a1 = float(1.0 - o_.beta1);  // m.mul_(beta1).add_(g, alpha=1 - beta1)
    float const b2 = float(o_.beta2), a2 = float(1.0 - o_.beta2);  // v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    float const c2 = float(bias2_sqrt);                            // (v.sqrt() / correction2).add_(eps)
    float const eps = float(o_.eps);
    float const decay = float(1.0 - lr * o_.weight_decay);  // p.mul_(1 - lr * weight_decay) when weight_decay > 0
    float const neg_step = float(-lr / bias1);              // p.addcdiv_(m, denom, value=-lr / correction1)
    bool const decays = o_.weight_decay > 0;
    BlockwiseQuantizer const& q1 = BlockwiseQuantizer::signed_dynamic();
    BlockwiseQuantizer const& q2 = BlockwiseQuantizer::unsigned_dynamic();

    float* x = p.value.data();            // (numel)
    float const* g = p.grad.data();       // (numel)
    std::uint8_t* c1 = s.codes1.data();   // (numel)
    std::uint8_t* c2s = s.codes2.data();  // (numel)
    float* amax1 = s.absmax1.data();      // (blocks)
    float* amax2 = s.absmax2.data();      // (blocks)
    Index const n = p.value.numel(), nb = blocks(n);
    sdlora::cpu::parallel_for(Context<Cpu>{}, nb, n > kParallelMin, [&](Index b) {
      Index const begin = b * kQuantBlockSize, len = std::min(kQuantBlockSize, n - begin);
      std::array<float, kQuantBlockSize> m{}, v{};  // the block's moments in float32
      q1.dequantize_block(c1 + begin, len, amax1[b], m.data());
      q2.dequantize_block(c2s + begin, len, amax2[b], v.data());
      for (Index i = 0; i < len; ++i) {
        float const gi = g[begin + i];
        m[std::size_t(i)] = std::fma(gi, a1, m[std::size_t(i)] * b1);
        v[std::size_t(i)] = std::fma(a2 * gi, gi, v[std::size_t(i)] * b2);
        float const denom = std::sqrt(v[std::size_t(i)]) / c2 + eps;
        float xi = x[begin + i];
        if (decays) xi = xi * decay;
        x[begin + i] = xi + (neg_step * m[std::size_t(i)]) / denom;  // addcdiv: self + value * t1 / t2
      }
      amax1[b] = q1.quantize_block(m.data(), len, c1 + begin);
      amax2[b] = q2.quantize_block(v.data(), len, c2s + begin);
    });
  }

  /// bitsandbytes' _optimizer_update_32bit_cpu for "adam" (parameters below min_8bit_size).
  void step_32bit(nn::Parameter<T, B>& p, Slot& s) const {
    double const lr = this->lr_;
    double const bias1 = 1.0 - std::pow(o_.beta1, double(s.step));
    double const bias2_sqrt = std::sqrt(1.0 - std::pow(o_.beta2, double(s.step)));
    float const b1 = float(o_.beta1), a1 = float(1.0 - o_.beta1);
    float const b2 = float(o_.beta2), a2 = float(1.0 - o_.beta2);
    float const eps_c2 = float(o_.eps * bias2_sqrt);          // state2.sqrt() + eps * correction2
    float const step_size = float(-lr * bias2_sqrt / bias1);  // p.add_(update, alpha=step_size)
    float const decay = float(1.0 - lr * o_.weight_decay);
    bool const decays = o_.weight_decay > 0;
    float* x = p.value.data();       // (numel)
    float const* g = p.grad.data();  // (numel)
    float* m = s.m.data();           // (numel)
    float* v = s.v.data();           // (numel)
    Index const n = p.value.numel();
    for (Index i = 0; i < n; ++i) {
      m[i] = std::fma(g[i], a1, m[i] * b1);
      v[i] = std::fma(a2 * g[i], g[i], v[i] * b2);
      float xi = x[i];
      if (decays) xi = xi * decay;
      x[i] = std::fma(step_size, m[i] / (std::sqrt(v[i]) + eps_c2), xi);  // add_(alpha=): a vectorised fmadd
    }
  }

  static constexpr Index kParallelMin = 1 << 16;
  AdamW8bitOptions o_;
  std::map<std::string, Slot> state_;
};

/// make_optimizer's "adamw8bit": bitsandbytes' defaults but for the common options (lr, betas, eps, weight decay).
template <class T, class B>
std::unique_ptr<Optimizer<T, B>> make_adamw8bit(OptimizerOptions const& o, std::vector<ParamRef<T, B>> params) {
  if constexpr (std::is_same_v<T, float>) {
    AdamW8bitOptions a;
    a.lr = o.lr;
    a.beta1 = o.beta1;
    a.beta2 = o.beta2;
    a.eps = o.eps;
    a.weight_decay = o.weight_decay;
    return std::make_unique<AdamW8bit<T, B>>(std::move(params), a);
  } else {
    SDLORA_THROW(ConfigError, "[optimizer] adamw8bit computes in float32: it needs float parameters");
  }
}

}  // namespace sdlora::train
