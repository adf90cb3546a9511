/// @file loss.hpp
/// @brief The diffusion training losses and their gradients with respect to the prediction: MSE (mean), min-SNR-γ
/// weighted MSE (diffusers' train_text_to_image_lora.py), DreamBooth prior preservation (train_dreambooth_lora.py),
/// and compute_snr from a scheduler's alphas_cumprod. Include <sdlora/train.hpp> instead.
///
/// Values are accumulated in double and returned as double; gradients are tensors in T on the prediction's backend
/// (the host loop on Cpu, backend ops elsewhere, the same gradient bits).
#pragma once

#include <algorithm>  // std::min
#include <cmath>      // std::sqrt, std::pow
#include <cstdint>    // std::int64_t
#include <span>       // std::span
#include <type_traits>  // std::is_same_v
#include <vector>     // std::vector

#include <sdlora/core/backend.hpp>  // Cpu
#include <sdlora/core/error.hpp>    // SDLORA_EXPECTS
#include <sdlora/core/tensor.hpp>   // Tensor, TensorView
#include <sdlora/ops/elementwise.hpp>  // ops::zip, ops::scale, ops::copy
#include <sdlora/ops/reduce.hpp>       // ops::sum_squares

namespace sdlora::train {

/// A loss value and d loss / d prediction (on the prediction's backend).
template <class T, class B = Cpu>
struct LossAndGrad {
  double value = 0;
  Tensor<T, B> grad;  // (shape of the prediction)
};

/// What the model predicts (diffusers' scheduler `prediction_type`).
enum class PredictionType { Epsilon, VPrediction, Sample };

namespace detail {
template <class T, class B>
void check_pair(char const* op, TensorView<T const, B> pred, TensorView<T const, B> target) {
  SDLORA_EXPECTS(pred.shape() == target.shape(),
                 "[" << op << "] prediction " << pred.shape() << " and target " << target.shape() << " differ");
  SDLORA_EXPECTS(pred.is_contiguous() && target.is_contiguous(), "[" << op << "] needs contiguous tensors");
  SDLORA_EXPECTS(pred.rank() >= 1 && pred.numel() > 0, "[" << op << "] empty prediction " << pred.shape());
}

/// grad = coef * (pred - target) in T (the difference rounded to T first, as torch's mse_loss_backward computes
/// norm * (input - target)); returns the sum of the squared differences in double. The host loop.
template <class T>
double squared_error_loop(TensorView<T, Cpu> grad, TensorView<T const, Cpu> pred, TensorView<T const, Cpu> target,
                          double coef) {
  T const* p = pred.data();    // (n)
  T const* t = target.data();  // (n)
  T* g = grad.data();          // (n)
  T const c = T(coef);
  double acc = 0;
  for (Index i = 0, n = pred.numel(); i < n; ++i) {
    T const d = p[i] - t[i];
    acc += double(d) * double(d);
    g[i] = c * d;
  }
  return acc;
}

/// The same from backend ops (a difference, a double sum of squares, a scale): the same gradient bits, the sum in
/// the backend's reduction order.
template <class T, class B>
double squared_error_ops(Context<B>& ctx, TensorView<T, B> grad, TensorView<T const, B> pred,
                         TensorView<T const, B> target, double coef) {
  ops::zip<T, B>(ctx, grad, pred, target, ops::fn::Sub{});
  double const acc = ops::sum_squares<T, B>(ctx, TensorView<T const, B>(grad));
  ops::scale<T, B>(ctx, grad, coef);
  return acc;
}

/// squared_error_loop on the host, squared_error_ops on every other backend.
template <class T, class B>
double squared_error(Context<B>& ctx, TensorView<T, B> grad, TensorView<T const, B> pred,
                     TensorView<T const, B> target, double coef) {
  if constexpr (std::is_same_v<B, Cpu>) return squared_error_loop<T>(grad, pred, target, coef);
  else return squared_error_ops<T, B>(ctx, grad, pred, target, coef);
}
}  // namespace detail

/// F.mse_loss(pred, target, reduction="mean") and its gradient 2 (pred - target) / numel, on any backend.
template <class T, class B>
LossAndGrad<T, B> mse_loss(Context<B>& ctx, TensorView<T const, B> pred, TensorView<T const, B> target) {
  detail::check_pair<T, B>("mse_loss", pred, target);
  Index const n = pred.numel();
  LossAndGrad<T, B> out{0, Tensor<T, B>::uninitialized(pred.shape())};
  // mse_loss_backward: norm * (input - target) * grad_output with norm = 2 / numel
  out.value = detail::squared_error<T, B>(ctx, out.grad.view(), pred, target, 2.0 / double(n)) / double(n);
  return out;
}
template <class T>
LossAndGrad<T> mse_loss(TensorView<T const, Cpu> pred, TensorView<T const, Cpu> target) {
  Context<Cpu> ctx;
  return mse_loss<T, Cpu>(ctx, pred, target);
}

/// compute_snr (diffusers.training_utils): snr = (sqrt(ac[t]) / sqrt(1 - ac[t]))^2 in float32, from a
/// scheduler's alphas_cumprod (num_train_timesteps) and integer timesteps.
inline std::vector<float> compute_snr(TensorView<float const, Cpu> alphas_cumprod,
                                      std::span<std::int64_t const> timesteps) {
  SDLORA_EXPECTS(alphas_cumprod.rank() == 1 && alphas_cumprod.is_contiguous(),
                 "[compute_snr] alphas_cumprod must be a contiguous vector, got " << alphas_cumprod.shape());
  std::vector<float> snr;
  snr.reserve(timesteps.size());
  for (std::int64_t t : timesteps) {
    SDLORA_EXPECTS(0 <= t && t < alphas_cumprod.numel(),
                   "[compute_snr] timestep " << t << " outside [0, " << alphas_cumprod.numel() << ")");
    float const ac = alphas_cumprod.data()[t];
    float const alpha = std::sqrt(ac);         // alphas_cumprod ** 0.5
    float const sigma = std::sqrt(1.0f - ac);  // (1.0 - alphas_cumprod) ** 0.5
    float const r = alpha / sigma;
    snr.push_back(r * r);  // (alpha / sigma) ** 2
  }
  return snr;
}

/// The min-SNR-γ loss weights of train_text_to_image_lora.py: min(snr, γ) / snr for epsilon, min(snr, γ) /
/// (snr + 1) for v-prediction, min(snr, γ) otherwise (the script divides by nothing for "sample"). In float32.
inline std::vector<float> min_snr_weights(std::span<float const> snr, double gamma, PredictionType type) {
  SDLORA_EXPECTS(gamma > 0, "[min_snr_weights] snr_gamma must be positive, got " << gamma);
  std::vector<float> w;
  w.reserve(snr.size());
  for (float s : snr) {
    float const m = std::min(s, float(gamma));  // stack([snr, gamma * ones]).min(dim=1)
    if (type == PredictionType::Epsilon)
      w.push_back(m / s);
    else if (type == PredictionType::VPrediction)
      w.push_back(m / (s + 1.0f));
    else
      w.push_back(m);
  }
  return w;
}

/// mean_b( weight[b] * mean(over sample b of (pred - target)^2) ), the min-SNR loss, with its gradient
/// weight[b] * 2 (pred - target) / numel, on any backend. `weights` holds one value per sample (the first axis).
template <class T, class B>
LossAndGrad<T, B> weighted_mse_loss(Context<B>& ctx, TensorView<T const, B> pred, TensorView<T const, B> target,
                                    std::span<float const> weights) {
  detail::check_pair<T, B>("weighted_mse_loss", pred, target);
  Index const batch = pred.dim(0);
  SDLORA_EXPECTS(Index(weights.size()) == batch,
                 "[weighted_mse_loss] " << weights.size() << " weights for a batch of " << pred.shape());
  Index const per = pred.numel() / batch;
  LossAndGrad<T, B> out{0, Tensor<T, B>::uninitialized(pred.shape())};
  double total = 0;
  for (Index b = 0; b < batch; ++b) {
    double const coef = 2.0 * double(weights[b]) / double(batch * per);
    double const acc = detail::squared_error<T, B>(ctx, out.grad.view().slice(b, b + 1), pred.slice(b, b + 1),
                                                   target.slice(b, b + 1), coef);
    total += acc / double(per) * double(weights[b]);
  }
  out.value = total / double(batch);
  return out;
}
template <class T>
LossAndGrad<T> weighted_mse_loss(TensorView<T const, Cpu> pred, TensorView<T const, Cpu> target,
                                 std::span<float const> weights) {
  Context<Cpu> ctx;
  return weighted_mse_loss<T, Cpu>(ctx, pred, target, weights);
}

/// DreamBooth prior preservation (train_dreambooth_lora.py, train_dreambooth_lora_sdxl.py): the batch holds the
/// instance samples in its first half and the class samples in its second; loss = instance loss + prior_weight *
/// mse(class half). The instance loss is mse, or with `instance_weights` (one per instance sample: min-SNR-γ of the
/// instance timesteps, as the scripts compute it) weighted_mse_loss. Any backend.
template <class T, class B>
LossAndGrad<T, B> prior_preservation_loss(Context<B>& ctx, TensorView<T const, B> pred, TensorView<T const, B> target,
                                          double prior_weight, std::span<float const> instance_weights = {}) {
  detail::check_pair<T, B>("prior_preservation_loss", pred, target);
  Index const batch = pred.dim(0);
  SDLORA_EXPECTS(batch % 2 == 0,
                 "[prior_preservation_loss] batch " << pred.shape() << " must hold instance and class halves");
  Index const half = batch / 2;
  LossAndGrad<T, B> instance =
      instance_weights.empty()
          ? mse_loss<T, B>(ctx, pred.slice(0, half), target.slice(0, half))
          : weighted_mse_loss<T, B>(ctx, pred.slice(0, half), target.slice(0, half), instance_weights);
  LossAndGrad<T, B> out{0, Tensor<T, B>::uninitialized(pred.shape())};
  auto const prior_grad = out.grad.view().slice(half, batch);
  Index const n = prior_grad.numel();
  // the class half: mse's gradient 2 d / n rounded to T, then times prior_weight in T (torch's two products)
  double const prior = detail::squared_error<T, B>(ctx, prior_grad, pred.slice(half, batch),
                                                   target.slice(half, batch), 2.0 / double(n)) / double(n);
  ops::scale<T, B>(ctx, prior_grad, prior_weight);
  ops::copy<T, B>(ctx, out.grad.view().slice(0, half), TensorView<T const, B>(instance.grad.view()));
  out.value = instance.value + prior_weight * prior;
  return out;
}
template <class T>
LossAndGrad<T> prior_preservation_loss(TensorView<T const, Cpu> pred, TensorView<T const, Cpu> target,
                                       double prior_weight, std::span<float const> instance_weights = {}) {
  Context<Cpu> ctx;
  return prior_preservation_loss<T, Cpu>(ctx, pred, target, prior_weight, instance_weights);
}

}  // namespace sdlora::train
