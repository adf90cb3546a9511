/// @file vae_objective.hpp
/// @brief Training an AutoencoderKL: one forward + backward of the KL-regularised reconstruction objective of
/// diffusers' AutoencoderKL recipe (examples/research_projects/autoencoderkl, without LPIPS or the GAN), leaving the
/// gradients in the trainable parameters for an optimizer (train/optimizer.hpp). Include this header after the CPU
/// backend (<sdlora/sdlora.hpp> or <sdlora/backend/cpu.hpp>); train.hpp, being model-independent, does not include it.
///
///   moments        = quant_conv(encoder(x))                              (N, 2L, h, w)
///   mean, logvar   = split(moments); logvar = clamp(logvar, -30, 20)     DiagonalGaussianDistribution
///   z              = mean + exp(0.5 logvar) * eps                        eps ~ N(0, 1), (N, L, h, w)
///   recon          = decoder(post_quant_conv(z))                         (N, 3, H, W)
///   reconstruction = mean((recon - x)^2)          (or mean |recon - x|)  F.mse_loss / F.l1_loss, reduction "mean"
///   kl             = mean over n of 0.5 * sum_{c,h,w} (mean^2 + exp(logvar) - 1 - logvar)   posterior.kl().mean()
///   loss           = reconstruction + kl_weight * kl
///
/// The images are both the encoder's input and the reconstruction target (as in the recipe), so the returned
/// d loss / d images has both parts. Memory: the encoder and decoder keep their activations for backward (a
/// 64/128/128-channel VAE at batch 16 on 64x64 images peaks near 1.1 GB); setting `gradient_checkpointing` on their
/// ResnetBlock2Ds trades recomputation for memory. Typical loop (CPU, float):
/// @code
///   models::AutoencoderKL<float> vae(config);             // random init, or load_parameters(...)
///   nn::set_trainable(vae, true);
///   train::AdamW<float> opt(train::trainable_parameters<float>(vae), {.lr = 1e-4});
///   Philox4x32 rng(seed);
///   for (...) {
///     nn::zero_grad(vae);
///     auto step = train::vae_training_step(ctx, vae, images.view(), rng, {.kl_weight = 1e-6});
///     opt.step();                                         // step.loss, step.reconstruction_loss, step.kl_loss
///   }
/// @endcode
#pragma once

#include <algorithm>    // std::clamp
#include <cmath>        // std::exp, std::abs
#include <type_traits>  // std::is_same_v, std::type_identity_t

#include <sdlora/core/backend.hpp>    // Context, Cpu
#include <sdlora/core/error.hpp>      // SDLORA_EXPECTS
#include <sdlora/core/rng.hpp>        // Philox4x32
#include <sdlora/core/tensor.hpp>     // Tensor, TensorView
#include <sdlora/models/vae.hpp>      // models::AutoencoderKL
#include <sdlora/nn/module.hpp>       // nn::Mode

namespace sdlora::train {

/// The pixel term of the objective: torch.nn.functional.mse_loss or l1_loss with reduction "mean".
enum class VaeReconstructionLoss { Mse, L1 };

struct VaeObjectiveOptions {
  /// Weight of the KL term. diffusers' train_autoencoderkl.py defaults to kl_scale 1e-6 (with LPIPS and a GAN);
  /// without them a larger weight (1e-4 .. 1e-2) keeps the latents closer to N(0, 1).
  double kl_weight = 1e-6;
  VaeReconstructionLoss reconstruction = VaeReconstructionLoss::Mse;
};

/// What one step returns; the parameter gradients stay in the model's trainable parameters (accumulated, +=).
template <class T, class B = Cpu>
struct VaeStep {
  double loss = 0;                 // reconstruction_loss + kl_weight * kl_loss
  double reconstruction_loss = 0;  // mean (recon - x)^2, or mean |recon - x|
  double kl_loss = 0;              // KL(q(z|x) || N(0, 1)) summed over (L, h, w), averaged over the batch
  Tensor<T, B> reconstruction;     // (N, 3, H, W): the decoded sample, for previews
  Tensor<T, B> dimages;            // (N, 3, H, W): d loss / d images (encoder input and reconstruction target)
};

namespace detail {
/// The clamp diffusers' DiagonalGaussianDistribution applies to the log-variance.
inline constexpr double kVaeLogvarMin = -30.0;
inline constexpr double kVaeLogvarMax = 20.0;
}  // namespace detail

/// One forward and backward of the objective above for `images` (N, 3, H, W) in [-1, 1] and the sampling noise
/// `noise` (N, L, H / f, W / f). Parameter gradients accumulate into the trainable parameters of `vae` (call
/// nn::zero_grad first); frozen parts are left alone. CPU backend.
template <class T, class B = Cpu>
VaeStep<T, B> vae_training_step(Context<B>& ctx, models::AutoencoderKL<T, B>& vae,
                                std::type_identity_t<TensorView<T const, B>> images,
                                std::type_identity_t<TensorView<T const, B>> noise,
                                VaeObjectiveOptions const& options = {}) {
  static_assert(std::is_same_v<B, Cpu>, "vae_training_step computes the loss on the host: use the CPU backend");
  SDLORA_EXPECTS(images.is_contiguous() && noise.is_contiguous(), "[vae_training_step] needs contiguous tensors");
  auto const dist = vae.encode(ctx, images, nn::Mode::Train);  // checks the images' shape
  SDLORA_EXPECTS(noise.shape() == dist.mean.shape(),
                 "[vae_training_step] noise must be " << dist.mean.shape() << ", got " << noise.shape());
  Index const n = dist.mean.dim(0), nl = dist.mean.numel();
  // z = mean + std * eps, with the clamped logvar
  auto z = Tensor<T, B>::uninitialized(dist.mean.shape());  // (N, L, h, w)
  {
    T const* m = dist.mean.data();
    T const* lv = dist.logvar.data();
    T const* e = noise.data();
    T* zp = z.data();
    for (Index i = 0; i < nl; ++i) {
      double const c = std::clamp(double(lv[i]), detail::kVaeLogvarMin, detail::kVaeLogvarMax);
      zp[i] = m[i] + T(std::exp(0.5 * c)) * e[i];
    }
  }
  VaeStep<T, B> out;
  out.reconstruction = vae.decode(ctx, z.view(), nn::Mode::Train);  // (N, 3, H, W)
  SDLORA_EXPECTS(out.reconstruction.shape() == images.shape(), "[vae_training_step] the reconstruction "
                                                                   << out.reconstruction.shape()
                                                                   << " differs from the images " << images.shape());
  // reconstruction loss and d loss / d recon
  Index const np = images.numel();
  auto drecon = Tensor<T, B>::uninitialized(images.shape());  // (N, 3, H, W)
  {
    T const* r = out.reconstruction.data();
    T const* x = images.data();
    T* g = drecon.data();
    double acc = 0;
    if (options.reconstruction == VaeReconstructionLoss::Mse) {
      T const norm = T(2.0 / double(np));  // mse_loss_backward: 2 (input - target) / numel
      for (Index i = 0; i < np; ++i) {
        T const d = r[i] - x[i];
        acc += double(d) * double(d);
        g[i] = norm * d;
      }
    } else {
      T const norm = T(1.0 / double(np));  // l1_loss backward: sign(input - target) / numel (sign(0) = 0)
      for (Index i = 0; i < np; ++i) {
        T const d = r[i] - x[i];
        acc += std::abs(double(d));
        g[i] = d > T(0) ? norm : (d < T(0) ? -norm : T(0));
      }
    }
    out.reconstruction_loss = acc / double(np);
  }
  auto dz = vae.decode_backward(ctx, drecon.view());  // (N, L, h, w)
  // KL and the gradients of mean and logvar: dz flows to mean (1) and logvar (0.5 std eps); the KL adds
  // w mean / N and w 0.5 (var - 1) / N; the clamp passes the logvar gradient only inside [-30, 20] (torch.clamp).
  auto dmean = Tensor<T, B>::uninitialized(dist.mean.shape());    // (N, L, h, w)
  auto dlogvar = Tensor<T, B>::uninitialized(dist.mean.shape());  // (N, L, h, w)
  {
    T const* m = dist.mean.data();
    T const* lv = dist.logvar.data();
    T const* e = noise.data();
    T const* gz = dz.data();
    T* gm = dmean.data();
    T* glv = dlogvar.data();
    double const w = options.kl_weight / double(n);
    double acc = 0;
    for (Index i = 0; i < nl; ++i) {
      double const raw = double(lv[i]);
      double const c = std::clamp(raw, detail::kVaeLogvarMin, detail::kVaeLogvarMax);
      double const var = std::exp(c), sd = std::exp(0.5 * c), mi = double(m[i]);
      acc += mi * mi + var - 1.0 - c;
      gm[i] = gz[i] + T(w * mi);
      bool const inside = raw >= detail::kVaeLogvarMin && raw <= detail::kVaeLogvarMax;
      glv[i] = inside ? T(double(gz[i]) * 0.5 * sd * double(e[i]) + w * 0.5 * (var - 1.0)) : T(0);
    }
    out.kl_loss = 0.5 * acc / double(n);
  }
  out.loss = out.reconstruction_loss + options.kl_weight * out.kl_loss;
  out.dimages = vae.encode_backward(ctx, dmean.view(), dlogvar.view());  // (N, 3, H, W)
  // the images are also the reconstruction target: d loss / d target = -d loss / d recon
  {
    T* gx = out.dimages.data();
    T const* g = drecon.data();
    for (Index i = 0; i < np; ++i) gx[i] -= g[i];
  }
  return out;
}

/// The same step with the sampling noise drawn from `rng` (standard normal, the latent distribution's shape).
template <class T>
VaeStep<T, Cpu> vae_training_step(Context<Cpu>& ctx, models::AutoencoderKL<T, Cpu>& vae,
                                  std::type_identity_t<TensorView<T const, Cpu>> images, Philox4x32& rng,
                                  VaeObjectiveOptions const& options = {}) {
  int const f = vae.config().scale();
  SDLORA_EXPECTS(
      images.rank() == 4 && images.dim(2) % f == 0 && images.dim(3) % f == 0,
      "[vae_training_step] images must be (N, C, H, W) with H, W multiples of " << f << ", got " << images.shape());
  auto noise = Tensor<T, Cpu>::uninitialized(
      Shape{images.dim(0), vae.config().latent_channels, images.dim(2) / f, images.dim(3) / f});  // (N, L, h, w)
  rng.normal(noise);
  return vae_training_step<T, Cpu>(ctx, vae, images, noise.view(), options);
}

}  // namespace sdlora::train
