/// @file device.hpp
/// @brief A loaded checkpoint copied to another backend: `on_backend<Cuda>(sd)` builds the same networks from their
/// configs on the device and uploads every parameter by name, so txt2img / img2img run there (txt2img.hpp says what
/// runs where). Checkpoints are read, Textual Inversion tokens added and LoRAs merged on the host first. Include
/// <sdlora/pipeline.hpp> (and <sdlora/cuda.hpp> for the Cuda backend) instead.
#pragma once

#include <map>          // std::map
#include <string>       // std::string
#include <type_traits>  // std::is_same_v

#include <sdlora/core/error.hpp>         // ConfigError
#include <sdlora/core/tensor.hpp>        // to_backend
#include <sdlora/models/checkpoint.hpp>  // models::StableDiffusion
#include <sdlora/nn/module.hpp>          // nn::for_each_parameter, nn::Parameter

namespace sdlora::pipeline {

namespace detail {
/// Uploads every parameter of `host` into the same-named parameter of `device` (built from the same config), widened
/// to T when the host keeps it in 16 bits. ConfigError for an attached LoRA adapter (merge it first: the device tree
/// has no adapters), a parameter missing on either side or a shape that differs.
template <class B, class T, class Module, class DeviceModule>
void upload_parameters(Module& host, DeviceModule& device, std::string const& network) {
  std::map<std::string, nn::Parameter<T, Cpu>*> params;
  host.visit("", [&](std::string const& name, auto& leaf) {
    if constexpr (requires { leaf.adapters; }) {
      if (!leaf.adapters.empty())
        SDLORA_THROW(ConfigError, "[on_backend] " << network << "." << name << " has a LoRA adapter attached: merge "
                                                  << "LoRAs into the weights (ApplyMode::Merge) before copying the "
                                                     "model to the device");
    }
    leaf.for_each_parameter(name, [&](std::string const& pname, nn::Parameter<T, Cpu>& p) { params[pname] = &p; });
  });
  std::size_t uploaded = 0;
  nn::for_each_parameter(device, [&](std::string const& name, nn::Parameter<T, B>& p) {
    auto const it = params.find(name);
    if (it == params.end())
      SDLORA_THROW(ConfigError,
                   "[on_backend] " << network << "." << name << " exists on the device but not on the host");
    nn::Parameter<T, Cpu> const& h = *it->second;
    if (!(h.shape() == p.shape()))
      SDLORA_THROW(ConfigError, "[on_backend] " << network << "." << name << ": host shape " << h.shape()
                                                << ", device shape " << p.shape());
    p.value = to_backend<B>(h.widened().view());
    ++uploaded;
  });
  if (uploaded != params.size())
    SDLORA_THROW(ConfigError, "[on_backend] " << network << ": " << params.size() - uploaded
                                              << " host parameters have no device counterpart");
}
}  // namespace detail

/// A copy of `host` on backend B: tokenizers, configs and scheduler settings as they are, the text encoder(s), UNet
/// and VAE rebuilt from their configs on B with every parameter uploaded (frozen, in T). The host model is unchanged
/// and can be released afterwards.
template <class B, class T>
models::StableDiffusion<T, B> on_backend(models::StableDiffusion<T, Cpu>& host) {
  models::StableDiffusion<T, B> out;
  out.tokenizer = host.tokenizer;
  out.tokenizer_2 = host.tokenizer_2;
  out.scheduler_config = host.scheduler_config;
  out.source = host.source;
  out.base_model = host.base_model;
  out.ignored_keys = host.ignored_keys;
  out.force_zeros_for_empty_prompt = host.force_zeros_for_empty_prompt;
  out.text_encoder = models::ClipTextModel<T, B>(host.text_encoder.config());
  out.unet = models::UNet2DConditionModel<T, B>(host.unet.config());
  out.vae = models::AutoencoderKL<T, B>(host.vae.config());
  detail::upload_parameters<B, T>(host.text_encoder, out.text_encoder, "text_encoder");
  detail::upload_parameters<B, T>(host.unet, out.unet, "unet");
  detail::upload_parameters<B, T>(host.vae, out.vae, "vae");
  if (host.is_sdxl()) {
    out.text_encoder_2 = models::ClipTextModel<T, B>(host.text_encoder_2.config());
    detail::upload_parameters<B, T>(host.text_encoder_2, out.text_encoder_2, "text_encoder_2");
  }
  return out;
}

}  // namespace sdlora::pipeline
