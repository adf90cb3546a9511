/// @file lora.hpp
/// @brief LoRA files on a whole Stable Diffusion checkpoint: each file's UNet and text-encoder parts go to the right
/// network, as adapters (scale adjustable afterwards, e.g. for a scale sweep) or merged into the weights. The scale is
/// diffusers' `set_adapters(..., weights)`: the layer adds weight * alpha / r * B(A(x)). Include
/// <sdlora/pipeline.hpp> instead.
#pragma once

#include <filesystem>  // std::filesystem::path
#include <sstream>     // std::ostringstream
#include <string>      // std::string
#include <vector>      // std::vector

#include <sdlora/lora/format.hpp>        // lora::read_lora, lora::apply, lora::LoraFile
#include <sdlora/lora/inject.hpp>        // lora::set_multiplier, lora::merge_all, lora::unmerge_all
#include <sdlora/lora/lycoris.hpp>       // lora::set_lycoris_multiplier, lora::merge_lycoris_all (LoHa / LoKr)
#include <sdlora/models/checkpoint.hpp>  // models::StableDiffusion

namespace sdlora::pipeline {

/// One LoRA to load: a kohya (LoRA, LoCon, LyCORIS LoHa / LoKr) or diffusers / PEFT `.safetensors` file and its scale
/// (diffusers' adapter weight; for LoHa / LoKr the multiplier on LyCORIS' alpha / rank delta).
struct LoraSpec {
  std::string path;
  double scale = 1.0;
};

/// What apply_loras did with one file.
struct LoadedLora {
  std::string path;
  std::string name;          ///< the file name without extension (A1111's "Lora: name:scale")
  std::string adapter_name;  ///< the adapters' name in both networks ("lora0", "lora1", ...)
  double scale = 1.0;
  lora::ApplyMode mode = lora::ApplyMode::Adapter;
  Index unet_layers = 0;          ///< layers of the UNet it changed
  Index text_encoder_layers = 0;  ///< layers of the text encoder(s) it changed (SDXL: both)
};

/// The UNet block layout kohya's LDM-named files (input_blocks / output_blocks) are mapped with.
inline lora::UnetLayout unet_layout(models::UNetConfig const& c) {
  lora::UnetLayout l;
  if (!c.layers_per_block.empty()) l.layers_per_block = c.layers_per_block.front();
  l.down_attention.clear();
  l.up_attention.clear();
  for (auto const& t : c.down_block_types) l.down_attention.push_back(t.find("CrossAttn") != std::string::npos);
  for (auto const& t : c.up_block_types) l.up_attention.push_back(t.find("CrossAttn") != std::string::npos);
  return l;
}

/// Routes entries without a component (a PEFT file saved from a bare model: "base_model.model.<module>") by their
/// module name: CLIP's "text_model." belongs to the text encoder, everything else to the UNet. Throws FormatError for
/// components the checkpoint does not have (text_encoder_2 without SDXL, "transformer" of other model families).
inline void route_components(lora::LoraFile& file, bool sdxl = false) {
  for (auto& e : file.entries) {
    if (e.component.empty()) e.component = e.module.rfind("text_model.", 0) == 0 ? "text_encoder" : "unet";
    if (e.component != "unet" && e.component != "text_encoder" && !(sdxl && e.component == "text_encoder_2"))
      SDLORA_THROW(FormatError, "[lora] " << file.path << ": '" << e.key << "' belongs to '" << e.component << "', which "
                                          << (sdxl ? "an SDXL checkpoint" : "a Stable Diffusion 1.x / 2.x checkpoint")
                                          << " does not have" << (sdxl ? "" : " (an SDXL LoRA?)"));
  }
}

/// Reads every file and applies it at its scale: adapters named "lora<i>" (ApplyMode::Adapter; scales can change
/// later with set_lora_scale) or merged into the weights (ApplyMode::Merge; faster, fixed). Every file is checked
/// strictly: unknown keys, modules the model lacks and shape mismatches throw one FormatError naming the file, and a
/// file that changes nothing is an error too.
template <class T>
std::vector<LoadedLora> apply_loras(models::StableDiffusion<T, Cpu>& sd, std::vector<LoraSpec> const& specs,
                                    lora::ApplyMode mode = lora::ApplyMode::Adapter) {
  std::vector<LoadedLora> out;
  lora::UnetLayout const layout = unet_layout(sd.unet.config());
  for (std::size_t i = 0; i < specs.size(); ++i) {
    lora::LoraFile file = lora::read_lora(specs[i].path, layout);
    route_components(file, sd.is_sdxl());
    LoadedLora l;
    l.path = specs[i].path;
    l.name = std::filesystem::path(specs[i].path).stem().string();
    l.adapter_name = "lora" + std::to_string(i);
    l.scale = specs[i].scale;
    l.mode = mode;
    lora::ApplyOptions const o{.multiplier = l.scale, .mode = mode, .adapter_name = l.adapter_name};
    l.unet_layers = lora::apply(sd.unet, file, "unet", o).applied;
    l.text_encoder_layers = lora::apply(sd.text_encoder, file, "text_encoder", o).applied;
    if (sd.is_sdxl()) l.text_encoder_layers += lora::apply(sd.text_encoder_2, file, "text_encoder_2", o).applied;
    if (l.unet_layers + l.text_encoder_layers == 0)
      SDLORA_THROW(FormatError, "[lora] " << l.path << ": no layer of the model matched");
    out.push_back(std::move(l));
  }
  return out;
}

/// Sets the scale of an adapter-mode LoRA in both networks. Merged ones are unmerged, rescaled and merged again
/// (merge_loras); a LoRA applied with ApplyMode::Merge has no factors left and is refused.
template <class T>
void set_lora_scale(models::StableDiffusion<T, Cpu>& sd, LoadedLora& l, double scale) {
  if (l.mode == lora::ApplyMode::Merge)
    SDLORA_THROW(ConfigError, "[lora] " << l.path << " was merged into the weights; its scale cannot change (apply "
                                        << "it as an adapter to sweep scales)");
  lora::set_multiplier(sd.unet, l.adapter_name, scale);
  lora::set_multiplier(sd.text_encoder, l.adapter_name, scale);
  lora::set_lycoris_multiplier(sd.unet, l.adapter_name, scale);
  lora::set_lycoris_multiplier(sd.text_encoder, l.adapter_name, scale);
  if (sd.is_sdxl()) {
    lora::set_multiplier(sd.text_encoder_2, l.adapter_name, scale);
    lora::set_lycoris_multiplier(sd.text_encoder_2, l.adapter_name, scale);
  }
  l.scale = scale;
}

/// Merges adapter-mode LoRAs into the weights (one GEMM per layer instead of two small ones per forward).
template <class T>
void merge_loras(Context<Cpu>& ctx, models::StableDiffusion<T, Cpu>& sd) {
  lora::merge_all(ctx, sd.unet);
  lora::merge_all(ctx, sd.text_encoder);
  lora::merge_lycoris_all(sd.unet);
  lora::merge_lycoris_all(sd.text_encoder);
  if (sd.is_sdxl()) {
    lora::merge_all(ctx, sd.text_encoder_2);
    lora::merge_lycoris_all(sd.text_encoder_2);
  }
}
/// Subtracts merged adapters back out (before set_lora_scale on a merged model).
template <class T>
void unmerge_loras(Context<Cpu>& ctx, models::StableDiffusion<T, Cpu>& sd) {
  lora::unmerge_lycoris_all(sd.unet);
  lora::unmerge_lycoris_all(sd.text_encoder);
  lora::unmerge_all(ctx, sd.unet);
  lora::unmerge_all(ctx, sd.text_encoder);
  if (sd.is_sdxl()) {
    lora::unmerge_lycoris_all(sd.text_encoder_2);
    lora::unmerge_all(ctx, sd.text_encoder_2);
  }
}

}  // namespace sdlora::pipeline
