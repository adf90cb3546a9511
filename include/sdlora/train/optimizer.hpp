/// @file optimizer.hpp
/// @brief Optimizers with PyTorch's semantics, operation for operation: AdamW and SGD as torch.optim's single-tensor
/// (`foreach=False`) path, Adafactor as transformers.optimization.Adafactor, and bitsandbytes' AdamW8bit (in
/// adamw8bit.hpp, included at the end). Their state is keyed by parameter name
/// and saves to / loads from a safetensors file. Include <sdlora/train.hpp> instead.
///
/// Backends: AdamW and SGD keep their state on the parameters' backend B and update every element there with one
/// host+device rule (ops/update.hpp), all trainable tensors in one ops::update_many pass (torch's `foreach` grouping,
/// with the single-tensor path's arithmetic); the scalars (bias corrections, learning rate) are made on the host each
/// step. Adafactor's row / column means are host loops: on another backend it keeps its state on the
/// host and copies each parameter's value and gradient down and the value back up per step (correct, not fast).
/// State dicts are host tensors for every backend. AdamW8bit is CPU only.
///
/// Precision follows torch: elementwise math in T (float32 for float parameters); hyperparameter arithmetic that
/// torch does on Python floats (bias corrections, `1 - lr * weight_decay`, `1 - beta2t`) in double, cast to T where
/// torch passes the Python float to a tensor op. Reductions (Adafactor's RMS and means) accumulate in double and
/// round once, which is at least as accurate as torch's float accumulation (they agree to ~1 ulp).
#pragma once

#include <algorithm>    // std::max, std::min
#include <cmath>        // std::abs, std::pow, std::sqrt
#include <cstdint>      // std::int64_t
#include <map>          // std::map
#include <memory>       // std::unique_ptr
#include <optional>     // std::optional
#include <set>          // std::set
#include <string>       // std::string
#include <string_view>  // std::string_view
#include <type_traits>  // std::is_same_v
#include <utility>      // std::move
#include <vector>       // std::vector

#include <nlohmann/json.hpp>  // nlohmann::json

#include <sdlora/backend/cpu/update.hpp>  // Impl<Update, Cpu>, Impl<UpdateMany, Cpu>
#include <sdlora/core/backend.hpp>     // Cpu
#include <sdlora/core/dtype.hpp>       // DType
#include <sdlora/core/error.hpp>       // SDLORA_EXPECTS, SDLORA_THROW
#include <sdlora/core/json.hpp>        // check_json_depth
#include <sdlora/core/tensor.hpp>      // Tensor
#include <sdlora/io/safetensors.hpp>   // io::SafetensorsWriter, io::SafetensorsFile
#include <sdlora/ops/update.hpp>       // ops::update_many, ops::UpdateSlice, ops::fn::AdamWUpdate, ops::fn::SgdUpdate
#include <sdlora/train/param_ref.hpp>  // ParamRef

namespace sdlora::train {

/// An optimizer's state as named host tensors and scalars. Tensor keys are "<param name>.<torch state key>"
/// ("unet.x.weight.exp_avg"); scalars hold per-parameter step counts ("<param name>.step") and hyperparameters
/// ("lr"). Doubles hold step counts exactly (below 2^53). 8-bit optimizers keep their quantized moments in `codes`.
template <class T>
struct OptimizerState {
  std::string type;                                         // "adamw", "adamw8bit", "sgd", "adafactor"
  std::map<std::string, Tensor<T, Cpu>> tensors;            // each in the shape of torch's state tensor
  std::map<std::string, double> scalars;
  std::map<std::string, Tensor<std::uint8_t, Cpu>> codes;  // uint8 state tensors (AdamW8bit's "state1", "state2")
};

/// Writes an optimizer state as one safetensors file (atomically): tensors as tensors, `type` and the scalars as
/// metadata ("sdlora.optimizer" and "sdlora.scalars", a JSON object whose doubles round-trip exactly).
template <class T>
void save_optimizer_state(OptimizerState<T> const& state, std::string const& path) {
  io::SafetensorsWriter w;
  for (auto const& [key, t] : state.tensors) w.add(key, t);
  for (auto const& [key, t] : state.codes) w.add(key, t);  // stored as U8
  w.set_metadata("sdlora.optimizer", state.type);
  w.set_metadata("sdlora.scalars", nlohmann::json(state.scalars).dump());
  w.write(path);
}

/// Reads a file written by save_optimizer_state; FormatError when the metadata is missing.
template <class T>
OptimizerState<T> load_optimizer_state(std::string const& path) {
  io::SafetensorsFile f(path);
  auto const& meta = f.metadata();
  auto type = meta.find("sdlora.optimizer");
  auto scalars = meta.find("sdlora.scalars");
  if (type == meta.end() || scalars == meta.end())
    SDLORA_THROW(FormatError, "[optimizer] " << path
                                             << " has no sdlora.optimizer / sdlora.scalars metadata: not an "
                                                "optimizer state written by sdlora");
  OptimizerState<T> s;
  s.type = type->second;
  check_json_depth(scalars->second, "[optimizer] " + path + ": sdlora.scalars");
  try {
    s.scalars = nlohmann::json::parse(scalars->second).get<std::map<std::string, double>>();
  } catch (nlohmann::json::exception const& e) {
    SDLORA_THROW(FormatError,
                 "[optimizer] " << path << ": sdlora.scalars is not a JSON object of numbers: " << e.what());
  }
  for (auto const& key : f.keys()) {
    if (f.info(key).dtype == DType::U8) s.codes.emplace(key, f.template load<std::uint8_t>(key));
    else s.tensors.emplace(key, f.template load<T>(key));
  }
  return s;
}

/// What every optimizer offers. Parameters whose `trainable` flag is off are skipped (torch skips `grad is None`).
template <class T, class B = Cpu>
class Optimizer {
 public:
  Optimizer(std::vector<ParamRef<T, B>> params, double lr) : params_(std::move(params)), lr_(lr) {
    for (auto const& p : params_)
      SDLORA_EXPECTS(p.param != nullptr, "[optimizer] parameter '" << p.name << "' is a null pointer");
    for (std::size_t i = 0; i < params_.size(); ++i)
      for (std::size_t j = i + 1; j < params_.size(); ++j)
        SDLORA_EXPECTS(params_[i].name != params_[j].name,
                       "[optimizer] parameter name '" << params_[i].name << "' appears twice");
  }
  virtual ~Optimizer() = default;
  Optimizer(Optimizer const&) = delete;
  Optimizer& operator=(Optimizer const&) = delete;

  /// One update of every trainable parameter from its current gradient.
  virtual void step() = 0;
  /// The state as named tensors and scalars (a deep copy).
  virtual OptimizerState<T> state_dict() const = 0;
  /// Restores a state from state_dict(); FormatError names a missing key or a wrong shape or type.
  virtual void load_state_dict(OptimizerState<T> const& state) = 0;
  virtual std::string_view type() const = 0;

  void zero_grad() {
    for (auto& p : params_) p.param->zero_grad();
  }
  /// The learning rate of the next step (an LR schedule sets it before every step).
  void set_lr(double lr) { lr_ = lr; }
  double lr() const { return lr_; }
  std::vector<ParamRef<T, B>> const& params() const { return params_; }

 protected:
  bool active(ParamRef<T, B> const& p) const { return p.param->trainable && !p.param->grad.empty(); }

  void check_type(OptimizerState<T> const& s) const {
    if (s.type != type())
      SDLORA_THROW(FormatError, "[optimizer] state of a '" << s.type << "' optimizer loaded into '" << type() << "'");
  }
  static double scalar(OptimizerState<T> const& s, std::string const& key) {
    auto it = s.scalars.find(key);
    if (it == s.scalars.end()) SDLORA_THROW(FormatError, "[optimizer] state has no scalar '" << key << "'");
    return it->second;
  }
  /// The state tensor `key`, which must have `shape`.
  static Tensor<T, Cpu> const& tensor(OptimizerState<T> const& s, std::string const& key, Shape const& shape) {
    auto it = s.tensors.find(key);
    if (it == s.tensors.end()) SDLORA_THROW(FormatError, "[optimizer] state has no tensor '" << key << "'");
    if (!(it->second.shape() == shape))
      SDLORA_THROW(FormatError, "[optimizer] state tensor '" << key << "' has shape " << it->second.shape()
                                                             << ", expected " << shape);
    return it->second;
  }
  /// Every tensor key of a loaded state must belong to one of our parameters: a state from another run's
  /// parameter set is refused rather than silently half-applied.
  void check_no_strangers(OptimizerState<T> const& s, std::vector<std::string> const& suffixes) const {
    std::set<std::string> known;
    for (auto const& p : params_)
      for (auto const& suffix : suffixes) known.insert(p.name + "." + suffix);
    for (auto const& [key, t] : s.tensors)
      if (!known.count(key))
        SDLORA_THROW(FormatError, "[optimizer] state tensor '" << key << "' belongs to no parameter");
  }

  /// A state tensor as a host tensor (state_dict) and back on B (load_state_dict).
  static Tensor<T, Cpu> host_copy(Tensor<T, B> const& t) {
    if constexpr (std::is_same_v<B, Cpu>) return t;
    else return t.empty() ? Tensor<T, Cpu>() : to_cpu<T, B>(t.view());
  }
  static Tensor<T, B> backend_copy(Tensor<T, Cpu> const& t) {
    if constexpr (std::is_same_v<B, Cpu>) return t;
    else return t.empty() ? Tensor<T, B>() : to_backend<B>(t.view());
  }

  std::vector<ParamRef<T, B>> params_;
  double lr_;
  Context<B> ctx_;  // where the updates run (Cuda: its own stream, ordered with the legacy default stream)
};

// ---------------------------------------------------------------------------------------------------------------
// AdamW
// ---------------------------------------------------------------------------------------------------------------

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;  // torch.optim.AdamW's default; diffusers' scripts pass 1e-2 too
};

/// torch.optim.AdamW (amsgrad=False, maximize=False), `_single_tensor_adam` with decoupled weight decay:
///   p *= 1 - lr*wd;  m = lerp(m, g, 1-b1);  v = v*b2 + (1-b2)*g*g;
///   p += -(lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)
template <class T, class B = Cpu>
class AdamW final : public Optimizer<T, B> {
  using Base = Optimizer<T, B>;

 public:
  AdamW(std::vector<ParamRef<T, B>> params, AdamWOptions const& o) : Base(std::move(params), o.lr), o_(o) {
    for (auto const& p : this->params_) state_.emplace(p.name, Slot{});
  }

  std::string_view type() const override { return "adamw"; }
  AdamWOptions const& options() const { return o_; }

  /// One pass over every trainable tensor (ops::update_many), each with its own step count.
  void step() override {
    std::vector<ops::UpdateSlice<T, B, ops::fn::AdamWUpdate<T>>> slices;
    slices.reserve(this->params_.size());
    for (auto& ref : this->params_) {
      if (!this->active(ref)) continue;
      nn::Parameter<T, B>& p = *ref.param;
      Slot& s = state_.at(ref.name);
      if (s.exp_avg.empty()) {
        s.exp_avg = Tensor<T, B>(p.shape());
        s.exp_avg_sq = Tensor<T, B>(p.shape());
      }
      s.step += 1;
      double const lr = this->lr_;
      T const decay = T(1.0 - lr * o_.weight_decay);  // param.mul_(1 - lr * weight_decay)
      T const w1 = T(1.0 - o_.beta1);                 // exp_avg.lerp_(grad, 1 - beta1)
      T const b2 = T(o_.beta2);                       // exp_avg_sq.mul_(beta2)
      T const c2 = T(1.0 - o_.beta2);                 //   .addcmul_(grad, grad, value=1 - beta2)
      double const bias1 = 1.0 - std::pow(o_.beta1, double(s.step));
      double const bias2 = 1.0 - std::pow(o_.beta2, double(s.step));
      T const neg_step_size = T(-(lr / bias1));      // addcdiv_ value=-step_size
      T const bias2_sqrt = T(std::pow(bias2, 0.5));  // bias_correction2 ** 0.5
      T const eps = T(o_.eps);
      bool const decays = o_.weight_decay != 0;
      ops::fn::AdamWUpdate<T> const rule{decay, w1, b2, c2, neg_step_size, bias2_sqrt, eps, decays};
      slices.push_back({p.value.view(), p.grad.view(), s.exp_avg.view(), s.exp_avg_sq.view(), rule});
    }
    ops::update_many<T, B, ops::fn::AdamWUpdate<T>>(this->ctx_, slices);
  }

  OptimizerState<T> state_dict() const override {
    OptimizerState<T> out;
    out.type = std::string(type());
    out.scalars["lr"] = this->lr_;
    for (auto const& [name, s] : state_) {
      if (s.step == 0) continue;
      out.scalars[name + ".step"] = double(s.step);
      out.tensors.emplace(name + ".exp_avg", Base::host_copy(s.exp_avg));
      out.tensors.emplace(name + ".exp_avg_sq", Base::host_copy(s.exp_avg_sq));
    }
    return out;
  }

  void load_state_dict(OptimizerState<T> const& in) override {
    this->check_type(in);
    this->check_no_strangers(in, {"exp_avg", "exp_avg_sq"});
    this->lr_ = Base::scalar(in, "lr");
    for (auto const& ref : this->params_) {
      Slot& s = state_.at(ref.name);
      s = Slot{};
      auto it = in.scalars.find(ref.name + ".step");
      if (it == in.scalars.end()) continue;  // never stepped
      s.step = std::int64_t(it->second);
      s.exp_avg = Base::backend_copy(Base::tensor(in, ref.name + ".exp_avg", ref.param->shape()));
      s.exp_avg_sq = Base::backend_copy(Base::tensor(in, ref.name + ".exp_avg_sq", ref.param->shape()));
    }
  }

 private:
  struct Slot {
    std::int64_t step = 0;
    Tensor<T, B> exp_avg;     // (param shape)
    Tensor<T, B> exp_avg_sq;  // (param shape)
  };
  AdamWOptions o_;
  std::map<std::string, Slot> state_;
};

// ---------------------------------------------------------------------------------------------------------------
// SGD
// ---------------------------------------------------------------------------------------------------------------

struct SgdOptions {
  double lr = 1e-3;
  double momentum = 0;
  double dampening = 0;
  double weight_decay = 0;
  bool nesterov = false;
};

/// torch.optim.SGD, `_single_tensor_sgd`:
///   g += wd * p;  buf = (first step) g  else  buf*momentum + (1-dampening)*g;
///   g = nesterov ? g + momentum*buf : buf;  p += -lr * g
template <class T, class B = Cpu>
class Sgd final : public Optimizer<T, B> {
  using Base = Optimizer<T, B>;

 public:
  Sgd(std::vector<ParamRef<T, B>> params, SgdOptions const& o) : Base(std::move(params), o.lr), o_(o) {
    if (o.nesterov && (o.momentum <= 0 || o.dampening != 0))
      SDLORA_THROW(ConfigError, "[sgd] Nesterov momentum requires a momentum and zero dampening (as torch)");
    for (auto const& p : this->params_) buffers_.emplace(p.name, Tensor<T, B>());
  }

  std::string_view type() const override { return "sgd"; }
  SgdOptions const& options() const { return o_; }

  /// One pass over every trainable tensor (ops::update_many).
  void step() override {
    std::vector<ops::UpdateSlice<T, B, ops::fn::SgdUpdate<T>>> slices;
    slices.reserve(this->params_.size());
    T const wd = T(o_.weight_decay);
    T const mom = T(o_.momentum);
    T const keep = T(1.0 - o_.dampening);
    T const neg_lr = T(-this->lr_);
    for (auto& ref : this->params_) {
      if (!this->active(ref)) continue;
      nn::Parameter<T, B>& p = *ref.param;
      Tensor<T, B>& buf = buffers_.at(ref.name);
      bool const first = buf.empty();
      if (o_.momentum != 0 && first) buf = Tensor<T, B>::uninitialized(p.shape());
      bool const decays = o_.weight_decay != 0, has_momentum = o_.momentum != 0;
      ops::fn::SgdUpdate<T> const rule{wd, mom, keep, neg_lr, decays, has_momentum, first, o_.nesterov};
      slices.push_back({p.value.view(), p.grad.view(), buf.view(), TensorView<T, B>(), rule});
    }
    ops::update_many<T, B, ops::fn::SgdUpdate<T>>(this->ctx_, slices);
  }

  OptimizerState<T> state_dict() const override {
    OptimizerState<T> out;
    out.type = std::string(type());
    out.scalars["lr"] = this->lr_;
    for (auto const& [name, b] : buffers_)
      if (!b.empty()) out.tensors.emplace(name + ".momentum_buffer", Base::host_copy(b));
    return out;
  }

  void load_state_dict(OptimizerState<T> const& in) override {
    this->check_type(in);
    this->check_no_strangers(in, {"momentum_buffer"});
    this->lr_ = Base::scalar(in, "lr");
    for (auto const& ref : this->params_) {
      Tensor<T, B>& b = buffers_.at(ref.name);
      b = in.tensors.count(ref.name + ".momentum_buffer")
              ? Base::backend_copy(Base::tensor(in, ref.name + ".momentum_buffer", ref.param->shape()))
              : Tensor<T, B>();
    }
  }

 private:
  SgdOptions o_;
  std::map<std::string, Tensor<T, B>> buffers_;  // (param shape) each, empty before the first step
};

// ---------------------------------------------------------------------------------------------------------------
// Adafactor
// ---------------------------------------------------------------------------------------------------------------

struct AdafactorOptions {
  std::optional<double> lr;  // required unless relative_step
  double eps1 = 1e-30;       // eps[0], added to grad^2
  double eps2 = 1e-3;        // eps[1], floor of the parameter scale
  double clip_threshold = 1.0;
  double decay_rate = -0.8;
  std::optional<double> beta1;  // None: no first moment
  double weight_decay = 0;
  bool scale_parameter = true;
  bool relative_step = true;
  bool warmup_init = false;

  /// kohya's fixed learning rate: Adafactor(params, lr=lr, relative_step=False, scale_parameter=False,
  /// warmup_init=False).
  static AdafactorOptions fixed_lr(double lr) {
    AdafactorOptions o;
    o.lr = lr;
    o.relative_step = false;
    o.scale_parameter = false;
    return o;
  }
};

/// transformers.optimization.Adafactor. Parameters of rank >= 2 keep a factored second moment: row means over the
/// last axis, `(..., R)`, and column means over the second-to-last, `(..., C)`; others keep a full one.
///   beta2t = 1 - t^decay;  r = mean(g^2 + eps1, -1), c = mean(g^2 + eps1, -2) blended by beta2t;
///   u = rsqrt(r / mean(r)) ⊗ rsqrt(c) * g;  u /= max(rms(u) / clip, 1);  u *= lr;  [m = b1*m + (1-b1)*u; u = m]
///   p += -wd*lr*p;  p -= u
/// with lr = param_scale * step_size, param_scale = max(eps2, rms(p)) when scale_parameter, step_size = lr or
/// min(warmup_init ? 1e-6 t : 1e-2, 1/sqrt(t)) when relative_step.
template <class T, class B = Cpu>
class Adafactor final : public Optimizer<T, B> {
  using Base = Optimizer<T, B>;

 public:
  Adafactor(std::vector<ParamRef<T, B>> params, AdafactorOptions const& o)
      : Base(std::move(params), o.lr.value_or(0.0)), o_(o) {
    if (o.lr.has_value() && o.relative_step)
      SDLORA_THROW(ConfigError, "[adafactor] cannot combine a manual lr with relative_step=True (as transformers)");
    if (o.warmup_init && !o.relative_step)
      SDLORA_THROW(ConfigError, "[adafactor] warmup_init requires relative_step=True (as transformers)");
    if (!o.lr.has_value() && !o.relative_step)
      SDLORA_THROW(ConfigError, "[adafactor] a fixed learning rate (relative_step=False) needs lr");
    for (auto const& p : this->params_) state_.emplace(p.name, Slot{});
  }

  std::string_view type() const override { return "adafactor"; }
  AdafactorOptions const& options() const { return o_; }

  /// One pass over every trainable tensor (ops::update_many), each with its own step count.
  void step() override {
    std::vector<ops::UpdateSlice<T, B, ops::fn::AdamWUpdate<T>>> slices;
    slices.reserve(this->params_.size());
    for (auto& ref : this->params_) {
      if (!this->active(ref)) continue;
      nn::Parameter<T, B>& p = *ref.param;
      Slot& s = state_.at(ref.name);
      // The arithmetic below reads host memory: another backend's value and gradient are copied down first and the
      // value back up at the end.
      Tensor<T, Cpu> value_host, grad_host;
      if constexpr (!std::is_same_v<B, Cpu>) {
        value_host = to_cpu<T, B>(p.value.view());
        grad_host = to_cpu<T, B>(p.grad.view());
      }
      T* const xs = host_data(p.value, value_host);       // (numel)
      T const* const gs = host_data(p.grad, grad_host);  // (numel)
      bool const factored = p.value.rank() >= 2;
      Index const n = p.value.numel();
      Index const cols = factored ? p.value.dim(-1) : n;
      Index const rows = factored ? p.value.dim(-2) : 1;
      Index const batch = factored ? n / (rows * cols) : 1;
      if (s.step == 0) {
        if (o_.beta1) s.exp_avg = Tensor<T, Cpu>(p.shape());
        if (factored) {
          s.row = Tensor<T, Cpu>(drop_axis(p.shape(), -1));
          s.col = Tensor<T, Cpu>(drop_axis(p.shape(), -2));
        } else {
          s.sq = Tensor<T, Cpu>(p.shape());
        }
      }
      s.step += 1;
      T const rms_p = rms(xs, n);
      // _get_lr: Python's max(eps2, RMS) returns the float32 RMS tensor when it is larger, and then the learning
      // rate is a float32 product; otherwise it is a Python (double) product.
      double step_size = this->lr_;
      if (o_.relative_step) {
        double const min_step = o_.warmup_init ? 1e-6 * double(s.step) : 1e-2;
        step_size = std::min(min_step, 1.0 / std::sqrt(double(s.step)));
      }
      bool const lr_is_tensor = o_.scale_parameter && rms_p > T(o_.eps2);
      double const lr_py = (o_.scale_parameter ? o_.eps2 : 1.0) * step_size;
      T const lr = lr_is_tensor ? rms_p * T(step_size) : T(lr_py);

      double const beta2t = 1.0 - std::pow(double(s.step), o_.decay_rate);
      T const keep = T(beta2t);
      T const blend = T(1.0 - beta2t);
      T const eps1 = T(o_.eps1);
      T const* g = gs;  // (batch, rows, cols) or (n)
      Tensor<T, Cpu> u = Tensor<T, Cpu>::uninitialized(p.shape());
      T* ud = u.data();
      if (factored) {
        T* r = s.row.data();  // (batch, rows)
        T* c = s.col.data();  // (batch, cols)
        for (Index b = 0; b < batch; ++b) {
          T const* gb = g + b * rows * cols;
          // exp_avg_sq_row.mul_(beta2t).add_(update.mean(dim=-1), alpha=1 - beta2t), update = grad**2 + eps1
          for (Index i = 0; i < rows; ++i) {
            double acc = 0;
            for (Index j = 0; j < cols; ++j) acc += double(gb[i * cols + j] * gb[i * cols + j] + eps1);
            T const mean = T(T(acc) / T(cols));
            r[b * rows + i] = r[b * rows + i] * keep + blend * mean;
          }
          for (Index j = 0; j < cols; ++j) {
            double acc = 0;
            for (Index i = 0; i < rows; ++i) acc += double(gb[i * cols + j] * gb[i * cols + j] + eps1);
            T const mean = T(T(acc) / T(rows));
            c[b * cols + j] = c[b * cols + j] * keep + blend * mean;
          }
          // _approx_sq_grad: rsqrt(row / row.mean(-1)) ⊗ rsqrt(col), then times grad
          double racc = 0;
          for (Index i = 0; i < rows; ++i) racc += double(r[b * rows + i]);
          T const rmean = T(T(racc) / T(rows));
          for (Index i = 0; i < rows; ++i) {
            T const rf = T(1) / std::sqrt(r[b * rows + i] / rmean);
            for (Index j = 0; j < cols; ++j) {
              T const cf = T(1) / std::sqrt(c[b * cols + j]);
              ud[b * rows * cols + i * cols + j] = (rf * cf) * gb[i * cols + j];
            }
          }
        }
      } else {
        T* v = s.sq.data();  // (n)
        for (Index i = 0; i < n; ++i) {
          v[i] = v[i] * keep + blend * (g[i] * g[i] + eps1);  // exp_avg_sq.mul_(beta2t).add_(update, alpha=...)
          ud[i] = (T(1) / std::sqrt(v[i])) * g[i];            // exp_avg_sq.rsqrt().mul_(grad)
        }
      }
      // update.div_((rms(update) / clip_threshold).clamp_(min=1.0)); update.mul_(lr)
      T const clip = std::max(rms(ud, n) / T(o_.clip_threshold), T(1));
      for (Index i = 0; i < n; ++i) ud[i] = (ud[i] / clip) * lr;
      if (o_.beta1) {
        T const b1 = T(*o_.beta1), a1 = T(1.0 - *o_.beta1);
        T* m = s.exp_avg.data();
        for (Index i = 0; i < n; ++i) ud[i] = m[i] = m[i] * b1 + a1 * ud[i];
      }
      T* x = xs;
      if (o_.weight_decay != 0) {
        // p.add_(p, alpha=-weight_decay * lr): alpha is the Python product, or a float tensor when lr is one.
        T const alpha = lr_is_tensor ? T(-o_.weight_decay) * lr : T(-o_.weight_decay * lr_py);
        for (Index i = 0; i < n; ++i) x[i] = x[i] + alpha * x[i];
      }
      for (Index i = 0; i < n; ++i) x[i] = x[i] + (-ud[i]);
      if constexpr (!std::is_same_v<B, Cpu>) BackendMemory<B>::upload(p.value.data(), xs, p.value.bytes());
    }
  }

  OptimizerState<T> state_dict() const override {
    OptimizerState<T> out;
    out.type = std::string(type());
    out.scalars["lr"] = this->lr_;
    for (auto const& [name, s] : state_) {
      if (s.step == 0) continue;
      out.scalars[name + ".step"] = double(s.step);
      if (!s.exp_avg.empty()) out.tensors.emplace(name + ".exp_avg", s.exp_avg);
      if (!s.row.empty()) out.tensors.emplace(name + ".exp_avg_sq_row", s.row);
      if (!s.col.empty()) out.tensors.emplace(name + ".exp_avg_sq_col", s.col);
      if (!s.sq.empty()) out.tensors.emplace(name + ".exp_avg_sq", s.sq);
    }
    return out;
  }

  void load_state_dict(OptimizerState<T> const& in) override {
    this->check_type(in);
    this->check_no_strangers(in, {"exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq"});
    this->lr_ = Base::scalar(in, "lr");
    for (auto const& ref : this->params_) {
      Slot& s = state_.at(ref.name);
      s = Slot{};
      auto it = in.scalars.find(ref.name + ".step");
      if (it == in.scalars.end()) continue;
      s.step = std::int64_t(it->second);
      Shape const shape = ref.param->shape();
      if (o_.beta1) s.exp_avg = Base::tensor(in, ref.name + ".exp_avg", shape);
      if (shape.rank() >= 2) {
        s.row = Base::tensor(in, ref.name + ".exp_avg_sq_row", drop_axis(shape, -1));
        s.col = Base::tensor(in, ref.name + ".exp_avg_sq_col", drop_axis(shape, -2));
      } else {
        s.sq = Base::tensor(in, ref.name + ".exp_avg_sq", shape);
      }
    }
  }

 private:
  /// The host elements of a parameter tensor: its own data on the Cpu, else the host copy made for this step.
  template <class Tensor_>
  static auto* host_data(Tensor_& t, Tensor<T, Cpu>& host) {
    if constexpr (std::is_same_v<B, Cpu>) return t.data();
    else return host.data();
  }
  /// Adafactor._rms: ||x||_2 / sqrt(numel), the norm rounded to T before the division as torch's does.
  static T rms(T const* x, Index n) {
    double acc = 0;
    for (Index i = 0; i < n; ++i) acc += double(x[i]) * double(x[i]);
    return T(std::sqrt(acc)) / T(std::pow(double(n), 0.5));
  }
  static Shape drop_axis(Shape const& s, int axis) {
    std::vector<Index> d = s.to_vector();
    d.erase(d.begin() + (axis < 0 ? axis + s.rank() : axis));
    return Shape(d);
  }

  struct Slot {
    std::int64_t step = 0;
    Tensor<T, Cpu> exp_avg;  // (param shape) when beta1 is set; host tensors on every backend
    Tensor<T, Cpu> row;      // (..., R) factored second moment, rank >= 2
    Tensor<T, Cpu> col;      // (..., C)
    Tensor<T, Cpu> sq;       // (param shape) full second moment, rank < 2
  };
  AdafactorOptions o_;
  std::map<std::string, Slot> state_;
};

// ---------------------------------------------------------------------------------------------------------------
// By name
// ---------------------------------------------------------------------------------------------------------------

/// The options of every optimizer, for configuration files and command lines (diffusers/kohya flag names).
struct OptimizerOptions {
  std::string type = "adamw";  // "adamw" | "adamw8bit" | "sgd" | "adafactor"
  double lr = 1e-4;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 1e-2;
  double momentum = 0, dampening = 0;
  bool nesterov = false;
};

/// bitsandbytes' AdamW8bit from the common options (defined in adamw8bit.hpp, included at the end of this file).
template <class T, class B>
std::unique_ptr<Optimizer<T, B>> make_adamw8bit(OptimizerOptions const& o, std::vector<ParamRef<T, B>> params);

/// Builds an optimizer by name. "adafactor" is kohya's fixed-lr form (see AdafactorOptions::fixed_lr).
template <class T, class B = Cpu>
std::unique_ptr<Optimizer<T, B>> make_optimizer(OptimizerOptions const& o, std::vector<ParamRef<T, B>> params) {
  if (o.type == "adamw")
    return std::make_unique<AdamW<T, B>>(std::move(params),
                                         AdamWOptions{o.lr, o.beta1, o.beta2, o.eps, o.weight_decay});
  if (o.type == "adamw8bit") {
    if constexpr (std::is_same_v<B, Cpu>) return make_adamw8bit<T, B>(o, std::move(params));
    else SDLORA_THROW(ConfigError, "[optimizer] adamw8bit runs on the CPU backend only; use adamw, sgd or adafactor");
  }
  if (o.type == "sgd")
    return std::make_unique<Sgd<T, B>>(std::move(params),
                                       SgdOptions{o.lr, o.momentum, o.dampening, o.weight_decay, o.nesterov});
  if (o.type == "adafactor") {
    AdafactorOptions a = AdafactorOptions::fixed_lr(o.lr);
    a.weight_decay = o.weight_decay;
    return std::make_unique<Adafactor<T, B>>(std::move(params), a);
  }
  SDLORA_THROW(ConfigError, "[optimizer] unknown optimizer '" << o.type << "' (expected adamw, adamw8bit, sgd or adafactor)");
}

}  // namespace sdlora::train

#include <sdlora/train/adamw8bit.hpp>  // AdamW8bit, make_adamw8bit: last, as it derives from Optimizer
