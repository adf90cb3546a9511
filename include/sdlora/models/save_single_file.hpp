/// @file save_single_file.hpp
/// @brief Writing a Stable Diffusion checkpoint as an original single file (the LDM / SGM layout A1111, ComfyUI and
/// diffusers' `from_single_file` read): the inverse of single_file.hpp's key mapping, diffusers name -> LDM key.
/// Include <sdlora/models/save.hpp> instead.
///
/// Layout written (the one load_single_file reads back, key for key):
///   model.diffusion_model.*            UNet in LDM names (input_blocks / middle_block / output_blocks / time_embed / out)
///   first_stage_model.*                VAE (mid.attn_1 q / k / v / proj_out as (C, C, 1, 1) convolutions)
///   cond_stage_model.transformer.*     SD 1.x text encoder in transformers names, plus embeddings.position_ids
///   cond_stage_model.model.*           SD 2.x OpenCLIP text encoder (q / k / v fused into attn.in_proj_*)
/// reference (semantics): diffusers loaders/single_file_utils.py convert_ldm_unet_checkpoint,
/// convert_ldm_vae_checkpoint, convert_open_clip_checkpoint (the direction they read).
#pragma once

#include <cstdint>  // std::int64_t
#include <map>      // std::map
#include <string>   // std::string
#include <vector>   // std::vector

#include <sdlora/core/dtype.hpp>          // DType, half, bfloat16
#include <sdlora/core/error.hpp>          // FormatError, ConfigError
#include <sdlora/core/tensor.hpp>         // Tensor, convert
#include <sdlora/io/safetensors.hpp>      // io::SafetensorsWriter
#include <sdlora/models/checkpoint.hpp>   // StableDiffusion
#include <sdlora/models/config.hpp>       // UNetConfig, VaeConfig
#include <sdlora/models/single_file.hpp>  // kLdm*Prefix, detail::split_dots, detail::join_from
#include <sdlora/nn/module.hpp>           // nn::for_each_parameter

namespace sdlora::models {

/// The LDM UNet key (without "model.diffusion_model.") of a diffusers UNet parameter name, or "" when it has none.
/// The inverse of unet_key_from_ldm.
inline std::string ldm_key_from_unet(std::string const& name, UNetConfig const& config) {
  using detail::join_from;
  static std::map<std::string, std::string> const kFixed = {
      {"time_embedding.linear_1", "time_embed.0"}, {"time_embedding.linear_2", "time_embed.2"},
      {"conv_in", "input_blocks.0.0"},             {"conv_norm_out", "out.0"},
      {"conv_out", "out.2"},                       {"add_embedding.linear_1", "label_emb.0.0"},
      {"add_embedding.linear_2", "label_emb.0.2"}};
  static std::vector<std::pair<std::string, std::string>> const kResnet = {
      {"norm1", "in_layers.0"},  {"conv1", "in_layers.2"},  {"time_emb_proj", "emb_layers.1"},
      {"norm2", "out_layers.0"}, {"conv2", "out_layers.3"}, {"conv_shortcut", "skip_connection"}};
  auto resnet = [&](std::string const& rest) -> std::string {
    for (auto const& [from, to] : kResnet)
      if (detail::starts_with(rest, from + ".")) return to + rest.substr(from.size());
    return "";
  };
  auto const p = detail::split_dots(name);
  if (p.size() < 2) return "";
  std::string const module = join_from(std::vector<std::string>(p.begin(), p.end() - 1), 0);
  if (auto it = kFixed.find(module); it != kFixed.end()) return it->second + "." + p.back();
  int const lpb = config.layers_per_block.at(0);
  auto with = [](std::string head, std::string const& rest) { return rest.empty() ? std::string() : head + rest; };
  if (p[0] == "down_blocks" && p.size() >= 5 && detail::is_number(p[1])) {
    int const block = std::stoi(p[1]);
    if (p[2] == "downsamplers" && p[3] == "0" && p[4] == "conv")
      return "input_blocks." + std::to_string(1 + block * (lpb + 1) + lpb) + ".0.op." + join_from(p, 5);
    if (!detail::is_number(p[3])) return "";
    std::string const idx = std::to_string(1 + block * (lpb + 1) + std::stoi(p[3]));
    if (p[2] == "resnets") return with("input_blocks." + idx + ".0.", resnet(join_from(p, 4)));
    if (p[2] == "attentions") return "input_blocks." + idx + ".1." + join_from(p, 4);
    return "";
  }
  if (p[0] == "mid_block" && p.size() >= 4 && detail::is_number(p[2])) {
    int const j = std::stoi(p[2]);
    if (p[1] == "resnets" && j <= 1) return with("middle_block." + std::to_string(2 * j) + ".", resnet(join_from(p, 3)));
    if (p[1] == "attentions" && j == 0) return "middle_block.1." + join_from(p, 3);
    return "";
  }
  if (p[0] == "up_blocks" && p.size() >= 5 && detail::is_number(p[1])) {
    int const block = std::stoi(p[1]);
    bool const attention = std::size_t(block) < config.up_block_types.size() &&
                           config.up_block_types[std::size_t(block)].find("CrossAttn") != std::string::npos;
    if (p[2] == "upsamplers" && p[3] == "0" && p[4] == "conv")
      return "output_blocks." + std::to_string(block * (lpb + 1) + lpb) + (attention ? ".2" : ".1") + ".conv." +
             join_from(p, 5);
    if (!detail::is_number(p[3])) return "";
    std::string const idx = std::to_string(block * (lpb + 1) + std::stoi(p[3]));
    if (p[2] == "resnets") return with("output_blocks." + idx + ".0.", resnet(join_from(p, 4)));
    if (p[2] == "attentions") return "output_blocks." + idx + ".1." + join_from(p, 4);
    return "";
  }
  return "";
}

/// The LDM VAE key (without "first_stage_model.") of a diffusers VAE parameter name, or "" when it has none.
/// `unsqueeze` is set for the mid-block attention projections, which the LDM VAE stores as (C, C, 1, 1) convolutions.
/// The inverse of vae_key_from_ldm.
inline std::string ldm_key_from_vae(std::string const& name, VaeConfig const& config, bool& unsqueeze) {
  using detail::join_from;
  unsqueeze = false;
  auto const p = detail::split_dots(name);
  if (p.size() < 2) return "";
  if (p[0] == "quant_conv" || p[0] == "post_quant_conv") return p.size() == 2 ? name : "";
  if (p[0] != "encoder" && p[0] != "decoder") return "";
  std::string const side = p[0];
  if (p.size() == 3 && (p[1] == "conv_in" || p[1] == "conv_out")) return name;
  if (p.size() == 3 && p[1] == "conv_norm_out") return side + ".norm_out." + p[2];
  auto resnet = [](std::string rest) {
    if (detail::starts_with(rest, "conv_shortcut.")) rest = "nin_shortcut." + rest.substr(14);
    return rest;
  };
  int const n = int(config.block_out_channels.size());
  if (p.size() >= 6 && p[1] == "down_blocks" && side == "encoder" && detail::is_number(p[2])) {
    if (p[3] == "resnets" && detail::is_number(p[4]))
      return "encoder.down." + p[2] + ".block." + p[4] + "." + resnet(join_from(p, 5));
    if (p[3] == "downsamplers" && p[4] == "0" && p[5] == "conv")
      return "encoder.down." + p[2] + ".downsample.conv." + join_from(p, 6);
    return "";
  }
  if (p.size() >= 6 && p[1] == "up_blocks" && side == "decoder" && detail::is_number(p[2])) {
    std::string const block = std::to_string(n - 1 - std::stoi(p[2]));
    if (p[3] == "resnets" && detail::is_number(p[4]))
      return "decoder.up." + block + ".block." + p[4] + "." + resnet(join_from(p, 5));
    if (p[3] == "upsamplers" && p[4] == "0" && p[5] == "conv") return "decoder.up." + block + ".upsample.conv." + join_from(p, 6);
    return "";
  }
  if (p.size() >= 5 && p[1] == "mid_block") {
    if (p[2] == "resnets" && (p[3] == "0" || p[3] == "1"))
      return side + ".mid.block_" + (p[3] == "0" ? "1" : "2") + "." + resnet(join_from(p, 4));
    if (p[2] == "attentions" && p[3] == "0") {
      static std::map<std::string, std::string> const kAttn = {
          {"group_norm", "norm"}, {"to_q", "q"}, {"to_k", "k"}, {"to_v", "v"}, {"to_out.0", "proj_out"}};
      std::string const module = join_from(std::vector<std::string>(p.begin() + 4, p.end() - 1), 0);
      auto it = kAttn.find(module);
      if (it == kAttn.end()) return "";
      unsqueeze = module != "group_norm" && p.back() == "weight";
      return side + ".mid.attn_1." + it->second + "." + p.back();
    }
  }
  return "";
}

/// The OpenCLIP key (without "cond_stage_model.model.") of a transformers CLIPTextModel parameter name, or "".
/// q_proj / k_proj / v_proj map to "attn.in_proj_weight" / "attn.in_proj_bias" with `part` 0 / 1 / 2 (the third of
/// the fused tensor along axis 0); `part` is -1 for every other name. The inverse of clip_keys_from_openclip.
inline std::string openclip_key_from_clip(std::string const& name, int& part) {
  part = -1;
  static std::map<std::string, std::string> const kFixed = {
      {"text_model.embeddings.token_embedding.weight", "token_embedding.weight"},
      {"text_model.embeddings.position_embedding.weight", "positional_embedding"},
      {"text_model.final_layer_norm.weight", "ln_final.weight"},
      {"text_model.final_layer_norm.bias", "ln_final.bias"}};
  if (auto it = kFixed.find(name); it != kFixed.end()) return it->second;
  auto const p = detail::split_dots(name);
  if (p.size() < 6 || p[0] != "text_model" || p[1] != "encoder" || p[2] != "layers" || !detail::is_number(p[3]))
    return "";
  std::string const base = "transformer.resblocks." + p[3] + ".";
  std::string const module = detail::join_from(std::vector<std::string>(p.begin() + 4, p.end() - 1), 0);
  std::string const leaf = p.back();
  static std::map<std::string, int> const kQkv = {{"self_attn.q_proj", 0}, {"self_attn.k_proj", 1}, {"self_attn.v_proj", 2}};
  if (auto it = kQkv.find(module); it != kQkv.end()) {
    part = it->second;
    return base + (leaf == "weight" ? "attn.in_proj_weight" : "attn.in_proj_bias");
  }
  static std::map<std::string, std::string> const kNames = {
      {"self_attn.out_proj", "attn.out_proj"}, {"layer_norm1", "ln_1"}, {"layer_norm2", "ln_2"},
      {"mlp.fc1", "mlp.c_fc"},                 {"mlp.fc2", "mlp.c_proj"}};
  auto it = kNames.find(module);
  return it == kNames.end() ? "" : base + it->second + "." + leaf;
}

/// Options of save_single_file / save_diffusers_folder.
struct SaveOptions {
  DType dtype = DType::F32;                     ///< storage of floating-point tensors: F32, F16 or BF16
  std::map<std::string, std::string> metadata;  ///< extra safetensors metadata (single files)
};

namespace detail {

/// Adds a float tensor to a writer in `dtype` (rounded to nearest even for F16 / BF16).
inline void add_in_dtype(io::SafetensorsWriter& w, std::string const& key, Tensor<float> const& t, DType dtype) {
  switch (dtype) {
    case DType::F32: w.add_as<float, float>(key, t.view()); return;
    case DType::F16: w.add_as<half, float>(key, t.view()); return;
    case DType::BF16: w.add_as<bfloat16, float>(key, t.view()); return;
    default: SDLORA_THROW(ConfigError, "[save] storage dtype must be F32, F16 or BF16, got " << dtype_name(dtype));
  }
}

/// Calls f(name, float tensor) for every parameter of a module tree (16-bit weights widened); refuses modules that
/// still carry LoRA or other adapters (merge them first: a checkpoint holds plain weights).
template <class Module, class F>
void for_each_weight(Module& module, std::string const& what, F&& f) {
  module.visit("", [&](std::string const& name, auto& leaf) {
    if constexpr (requires { leaf.adapters; })
      if (!leaf.adapters.empty())
        SDLORA_THROW(ConfigError, "[save] " << what << " layer '" << name << "' carries " << leaf.adapters.size()
                                            << " adapter(s): merge them into the weights before saving");
  });
  nn::for_each_parameter(module, [&](std::string const& name, auto& p) {
    using T = typename std::remove_cvref_t<decltype(p.value)>::value_type;
    if constexpr (std::is_same_v<T, float>) f(name, p.widened());
    else f(name, convert<float, T>(p.widened()));
  });
}

}  // namespace detail

/// Writes `sd` as one `.safetensors` file in the original LDM layout (SD 1.x with the transformers text encoder,
/// SD 2.x with OpenCLIP's; SDXL in the SGM layout with both encoders under conditioner.embedders), every
/// floating-point tensor in `options.dtype`. load_single_file reads it back with
/// every parameter identical (for F32). Throws ConfigError for a parameter the layout has no key for.
template <class T>
void save_single_file(StableDiffusion<T, Cpu>& sd, std::string const& path, SaveOptions const& options = {}) {
  io::SafetensorsWriter w;
  auto unmapped = [&](std::string const& what, std::string const& name) {
    SDLORA_THROW(ConfigError, "[save] " << path << ": " << what << " parameter '" << name
                                        << "' has no key in the single-file (LDM) layout");
  };
  UNetConfig const& ucfg = sd.unet.config();
  detail::for_each_weight(sd.unet, "unet", [&](std::string const& name, Tensor<float> t) {
    std::string const key = ldm_key_from_unet(name, ucfg);
    if (key.empty()) unmapped("unet", name);
    detail::add_in_dtype(w, kLdmUnetPrefix + key, t, options.dtype);
  });
  VaeConfig const& vcfg = sd.vae.config();
  detail::for_each_weight(sd.vae, "vae", [&](std::string const& name, Tensor<float> t) {
    bool unsqueeze = false;
    std::string const key = ldm_key_from_vae(name, vcfg, unsqueeze);
    if (key.empty()) unmapped("vae", name);
    if (unsqueeze) t.reshape(Shape{t.dim(0), t.dim(1), 1, 1});  // (C, C) -> (C, C, 1, 1)
    detail::add_in_dtype(w, kLdmVaePrefix + key, t, options.dtype);
  });
  // A transformers CLIPTextModel as it is under `prefix` (SD 1.x: cond_stage_model.transformer., SDXL's first
  // encoder: conditioner.embedders.0.transformer.).
  auto write_transformers_clip = [&](auto& text, std::string const& what, std::string const& prefix) {
    detail::for_each_weight(text, what, [&](std::string const& name, Tensor<float> t) {
      detail::add_in_dtype(w, prefix + name, t, options.dtype);
    });
  };
  // OpenCLIP names under `prefix` (SD 2.x: cond_stage_model.model., SDXL's second encoder:
  // conditioner.embedders.1.model.), q / k / v fused along axis 0; SDXL's text projection stored as OpenCLIP applies
  // it (x @ P: the transpose of transformers' weight).
  auto write_openclip = [&](auto& text, std::string const& what, std::string const& prefix) {
    std::map<std::string, std::vector<Tensor<float>>> fused;  // in_proj key -> its q, k, v parts
    detail::for_each_weight(text, what, [&](std::string const& name, Tensor<float> t) {
      if (name == "text_projection.weight") {
        Tensor<float> pt(Shape{t.dim(1), t.dim(0)});
        for (Index r = 0; r < t.dim(0); ++r)
          for (Index c = 0; c < t.dim(1); ++c) pt.at({c, r}) = t.at({r, c});
        detail::add_in_dtype(w, prefix + "text_projection", pt, options.dtype);
        return;
      }
      int part = -1;
      std::string const key = openclip_key_from_clip(name, part);
      if (key.empty()) unmapped(what, name);
      if (part < 0) {
        detail::add_in_dtype(w, prefix + key, t, options.dtype);
        return;
      }
      auto& parts = fused[key];
      parts.resize(3);
      parts[std::size_t(part)] = std::move(t);
    });
    for (auto& [key, parts] : fused) {
      for (auto const& p : parts)
        if (p.empty()) SDLORA_THROW(ConfigError, "[save] " << path << ": '" << key << "' lacks one of q / k / v");
      Index const rows = parts[0].dim(0), cols = parts[0].numel() / rows;
      std::vector<Index> dims(parts[0].shape().begin(), parts[0].shape().end());
      dims[0] = 3 * rows;
      Tensor<float> all = Tensor<float>::uninitialized(Shape(dims));  // (3C, C) or (3C)
      for (int i = 0; i < 3; ++i)
        std::copy(parts[std::size_t(i)].data(), parts[std::size_t(i)].data() + rows * cols, all.data() + i * rows * cols);
      detail::add_in_dtype(w, prefix + key, all, options.dtype);
    }
  };
  if (sd.is_sdxl()) {  // SGM layout: both encoders under conditioner.embedders
    write_transformers_clip(sd.text_encoder, "text_encoder", kSdxlClipPrefix);
    write_openclip(sd.text_encoder_2, "text_encoder_2", kSdxlOpenClipPrefix);
  } else if (sd.base_model != "sd2") {  // SD 1.x: the transformers CLIPTextModel under cond_stage_model.transformer.
    write_transformers_clip(sd.text_encoder, "text_encoder", kLdmClipPrefix);
    Index const positions = sd.text_encoder.config().max_position_embeddings;
    Tensor<std::int64_t> ids(Shape{1, positions});  // (1, 77): older loaders expect the buffer
    for (Index i = 0; i < positions; ++i) ids(i) = i;
    w.add(std::string(kLdmClipPrefix) + "text_model.embeddings.position_ids", ids);
  } else {  // SD 2.x: OpenCLIP names, q / k / v fused along axis 0
    write_openclip(sd.text_encoder, "text_encoder", kLdmOpenClipPrefix);
  }
  w.set_metadata("format", "pt");
  for (auto const& [k, v] : options.metadata) w.set_metadata(k, v);
  w.write(path);
}

}  // namespace sdlora::models
