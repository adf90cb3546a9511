/// @file loss.hpp
/// @brief The diffusion training losses and their gradients with respect to the prediction: MSE (mean), min-SNR-γ
/// weighted MSE (diffusers' train_text_to_image_lora.py), DreamBooth prior preservation (train_dreambooth_lora.py),
/// and compute_snr from a scheduler's alphas_cumprod. Include <sdlora/train.hpp> instead.
///
/// Values are accumulated in double and returned as double; gradients are tensors in T.
#pragma once

#include <algorithm>  // std::min
#include <cmath>      // std::sqrt, std::pow
#include <cstdint>    // std::int64_t
#include <span>       // std::span
#include <vector>     // std::vector

#include <sdlora/core/backend.hpp>  // Cpu
#include <sdlora/core/error.hpp>    // SDLORA_EXPECTS
#include <sdlora/core/tensor.hpp>   // Tensor, TensorView

namespace sdlora::train {

/// A loss value and d loss / d prediction.
template <class T>
struct LossAndGrad {
  double value = 0;
  Tensor<T, Cpu> grad;  // (shape of the prediction)
};

/// What the model predicts (diffusers' scheduler `prediction_type`).
enum class PredictionType { Epsilon, VPrediction, Sample };

namespace detail {
template <class T>
void check_pair(char const* op, TensorView<T const, Cpu> pred, TensorView<T const, Cpu> target) {
  SDLORA_EXPECTS(pred.shape() == target.shape(),
                 "[" << op << "] prediction " << pred.shape() << " and target " << target.shape() << " differ");
  SDLORA_EXPECTS(pred.is_contiguous() && target.is_contiguous(), "[" << op << "] needs contiguous tensors");
  SDLORA_EXPECTS(pred.rank() >= 1 && pred.numel() > 0, "[" << op << "] empty prediction " << pred.shape());
}
}  // namespace detail

/// F.mse_loss(pred, target, reduction="mean") and its gradient 2 (pred - target) / numel.
template <class T>
LossAndGrad<T> mse_loss(TensorView<T const, Cpu> pred, TensorView<T const, Cpu> target) {
  detail::check_pair("mse_loss", pred, target);
  Index const n = pred.numel();
  LossAndGrad<T> out{0, Tensor<T, Cpu>::uninitialized(pred.shape())};
  T const* p = pred.data();           // (N, ...)
  T const* t = target.data();         // (N, ...)
  T* g = out.grad.data();             // (N, ...)
  T const norm = T(2.0 / double(n));  // mse_loss_backward: norm * (input - target) * grad_output
  double acc = 0;
  for (Index i = 0; i < n; ++i) {
    T const d = p[i] - t[i];
    acc += double(d) * double(d);
    g[i] = norm * d;
  }
  out.value = acc / double(n);
  return out;
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
/// weight[b] * 2 (pred - target) / numel. `weights` holds one value per sample (the first axis).
template <class T>
LossAndGrad<T> weighted_mse_loss(TensorView<T const, Cpu> pred, TensorView<T const, Cpu> target,
                                 std::span<float const> weights) {
  detail::check_pair("weighted_mse_loss", pred, target);
  Index const batch = pred.dim(0);
  SDLORA_EXPECTS(Index(weights.size()) == batch,
                 "[weighted_mse_loss] " << weights.size() << " weights for a batch of " << pred.shape());
  Index const per = pred.numel() / batch;
  LossAndGrad<T> out{0, Tensor<T, Cpu>::uninitialized(pred.shape())};
  T const* p = pred.data();    // (N, ...)
  T const* t = target.data();  // (N, ...)
  T* g = out.grad.data();      // (N, ...)
  double total = 0;
  for (Index b = 0; b < batch; ++b) {
    T const coef = T(2.0 * double(weights[b]) / double(batch * per));
    double acc = 0;
    for (Index i = b * per; i < (b + 1) * per; ++i) {
      T const d = p[i] - t[i];
      acc += double(d) * double(d);
      g[i] = coef * d;
    }
    total += acc / double(per) * double(weights[b]);
  }
  out.value = total / double(batch);
  return out;
}

/// DreamBooth prior preservation (train_dreambooth_lora.py, train_dreambooth_lora_sdxl.py): the batch holds the
/// instance samples in its first half and the class samples in its second; loss = instance loss + prior_weight *
/// mse(class half). The instance loss is mse, or with `instance_weights` (one per instance sample: min-SNR-γ of the
/// instance timesteps, as the scripts compute it) weighted_mse_loss.
template <class T>
LossAndGrad<T> prior_preservation_loss(TensorView<T const, Cpu> pred, TensorView<T const, Cpu> target,
                                       double prior_weight, std::span<float const> instance_weights = {}) {
  detail::check_pair("prior_preservation_loss", pred, target);
  Index const batch = pred.dim(0);
  SDLORA_EXPECTS(batch % 2 == 0,
                 "[prior_preservation_loss] batch " << pred.shape() << " must hold instance and class halves");
  Index const half = batch / 2;
  LossAndGrad<T> instance = instance_weights.empty()
                                ? mse_loss<T>(pred.slice(0, half), target.slice(0, half))
                                : weighted_mse_loss<T>(pred.slice(0, half), target.slice(0, half), instance_weights);
  LossAndGrad<T> prior = mse_loss<T>(pred.slice(half, batch), target.slice(half, batch));
  LossAndGrad<T> out{instance.value + prior_weight * prior.value, Tensor<T, Cpu>::uninitialized(pred.shape())};
  Index const n = instance.grad.numel();
  T const w = T(prior_weight);
  for (Index i = 0; i < n; ++i) {
    out.grad(i) = instance.grad(i);
    out.grad(n + i) = w * prior.grad(i);
  }
  return out;
}

}  // namespace sdlora::train
