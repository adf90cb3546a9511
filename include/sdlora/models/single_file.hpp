/// @file single_file.hpp
/// @brief The original single-file checkpoint layout (A1111 / ComfyUI / CompVis LDM names) mapped to diffusers
/// names: which source tensor (and which slice of it) fills each diffusers parameter. Include
/// <sdlora/models.hpp> instead.
///
/// Layout (reference: diffusers loaders/single_file_utils.py; this is our own mapping, checked by the fixtures
/// that tools/fixtures/make_models.py writes against diffusers' converters):
///   model.diffusion_model.*               UNet (input_blocks / middle_block / output_blocks / time_embed / out)
///   first_stage_model.*                   VAE (encoder.down.N.block.M, mid.attn_1 stored as 1x1 convs, ...)
///   cond_stage_model.transformer.*        SD 1.x text encoder, transformers names
///   cond_stage_model.model.*              SD 2.x OpenCLIP text encoder (fused attn.in_proj_weight)
///   conditioner.embedders.0.transformer.* SDXL text encoder 1 (CLIP ViT-L), transformers names
///   conditioner.embedders.1.model.*       SDXL text encoder 2 (OpenCLIP bigG) with its text_projection;
///                                         the SDXL UNet's label_emb.0.{0,2} is diffusers' add_embedding
#pragma once

#include <cstdlib>  // std::stoi
#include <map>      // std::map
#include <string>   // std::string
#include <vector>   // std::vector

#include <sdlora/models/config.hpp>  // UNetConfig, VaeConfig

namespace sdlora::models {

/// How a diffusers parameter is read from a source tensor.
struct KeySource {
  std::string key;       // the tensor's key in the file
  enum class Take { Whole, Squeeze, Third, Transpose } take = Take::Whole;
  int part = 0;          // Third: which third along axis 0 (q = 0, k = 1, v = 2)
};

/// The component prefixes of the single-file layout.
inline constexpr char const* kLdmUnetPrefix = "model.diffusion_model.";
inline constexpr char const* kLdmVaePrefix = "first_stage_model.";
inline constexpr char const* kLdmClipPrefix = "cond_stage_model.transformer.";
inline constexpr char const* kLdmOpenClipPrefix = "cond_stage_model.model.";
inline constexpr char const* kSdxlClipPrefix = "conditioner.embedders.0.transformer.";
inline constexpr char const* kSdxlOpenClipPrefix = "conditioner.embedders.1.model.";

namespace detail {
inline bool starts_with(std::string const& s, std::string const& p) { return s.compare(0, p.size(), p) == 0; }

/// Splits "a.b.c" into {"a", "b", "c"}.
inline std::vector<std::string> split_dots(std::string const& s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (std::size_t i = 0; i <= s.size(); ++i)
    if (i == s.size() || s[i] == '.') {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  return out;
}
inline std::string join_from(std::vector<std::string> const& parts, std::size_t first) {
  std::string s;
  for (std::size_t i = first; i < parts.size(); ++i) s += (s.empty() ? "" : ".") + parts[i];
  return s;
}
inline bool is_number(std::string const& s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
}

/// LDM ResBlock names -> diffusers ResnetBlock2D names.
inline std::string unet_resnet_name(std::string const& rest) {
  static std::vector<std::pair<std::string, std::string>> const kNames = {
      {"in_layers.0", "norm1"},        {"in_layers.2", "conv1"}, {"emb_layers.1", "time_emb_proj"},
      {"out_layers.0", "norm2"},       {"out_layers.3", "conv2"}, {"skip_connection", "conv_shortcut"}};
  for (auto const& [from, to] : kNames)
    if (starts_with(rest, from + ".")) return to + rest.substr(from.size());
  return "";
}
}  // namespace detail

/// The diffusers UNet name of an LDM UNet key (without "model.diffusion_model."), or "" when it has none.
inline std::string unet_key_from_ldm(std::string const& key, UNetConfig const& config) {
  using namespace detail;
  static std::map<std::string, std::string> const kFixed = {
      {"time_embed.0", "time_embedding.linear_1"}, {"time_embed.2", "time_embedding.linear_2"},
      {"input_blocks.0.0", "conv_in"},             {"out.0", "conv_norm_out"},
      {"out.2", "conv_out"},                        {"label_emb.0.0", "add_embedding.linear_1"},
      {"label_emb.0.2", "add_embedding.linear_2"}};
  auto p = split_dots(key);
  if (p.size() < 2) return "";
  std::string const leaf = p.back();  // weight / bias
  for (auto const& [from, to] : kFixed)
    if (starts_with(key, from + ".") && split_dots(key).size() == split_dots(from).size() + 1) return to + "." + leaf;
  int const lpb = config.layers_per_block.at(0);
  if (p[0] == "input_blocks" && p.size() >= 4 && is_number(p[1]) && is_number(p[2])) {
    int const i = std::stoi(p[1]);
    if (i < 1) return "";
    int const block = (i - 1) / (lpb + 1), layer = (i - 1) % (lpb + 1);
    std::string const rest = join_from(p, 3);
    std::string const base = "down_blocks." + std::to_string(block);
    if (p[2] == "0" && p[3] == "op") return base + ".downsamplers.0.conv." + join_from(p, 4);
    if (p[2] == "0") {
      std::string const r = unet_resnet_name(rest);
      return r.empty() ? "" : base + ".resnets." + std::to_string(layer) + "." + r;
    }
    if (p[2] == "1") return base + ".attentions." + std::to_string(layer) + "." + rest;
    return "";
  }
  if (p[0] == "middle_block" && p.size() >= 3 && is_number(p[1])) {
    std::string const rest = join_from(p, 2);
    if (p[1] == "1") return "mid_block.attentions.0." + rest;
    if (p[1] == "0" || p[1] == "2") {
      std::string const r = unet_resnet_name(rest);
      return r.empty() ? "" : "mid_block.resnets." + std::string(p[1] == "0" ? "0" : "1") + "." + r;
    }
    return "";
  }
  if (p[0] == "output_blocks" && p.size() >= 4 && is_number(p[1]) && is_number(p[2])) {
    int const i = std::stoi(p[1]);
    int const block = i / (lpb + 1), layer = i % (lpb + 1);
    std::string const base = "up_blocks." + std::to_string(block);
    std::string const rest = join_from(p, 3);
    if (p[2] == "0") {
      std::string const r = unet_resnet_name(rest);
      return r.empty() ? "" : base + ".resnets." + std::to_string(layer) + "." + r;
    }
    if ((p[2] == "1" || p[2] == "2") && p[3] == "conv") return base + ".upsamplers.0.conv." + join_from(p, 4);
    if (p[2] == "1") return base + ".attentions." + std::to_string(layer) + "." + rest;
    return "";
  }
  return "";
}

/// The diffusers VAE name of an LDM VAE key (without "first_stage_model."), or "" when it has none.
/// `squeeze` is set when the LDM tensor is a 1x1 conv that diffusers stores as a Linear weight.
inline std::string vae_key_from_ldm(std::string const& key, VaeConfig const& config, bool& squeeze) {
  using namespace detail;
  squeeze = false;
  if (key == "quant_conv.weight" || key == "quant_conv.bias" || key == "post_quant_conv.weight" ||
      key == "post_quant_conv.bias")
    return key;
  auto p = split_dots(key);
  if (p.size() < 3) return "";
  std::string const side = p[0];  // encoder / decoder
  if (side != "encoder" && side != "decoder") return "";
  if (p[1] == "conv_in" || p[1] == "conv_out") return key;
  if (p[1] == "norm_out") return side + ".conv_norm_out." + join_from(p, 2);
  auto resnet = [](std::string rest) {
    if (starts_with(rest, "nin_shortcut.")) rest = "conv_shortcut." + rest.substr(13);
    return rest;
  };
  int const n = int(config.block_out_channels.size());
  if (p[1] == "down" && side == "encoder" && p.size() >= 5 && is_number(p[2])) {
    std::string const base = "encoder.down_blocks." + p[2];
    if (p[3] == "block" && is_number(p[4])) return base + ".resnets." + p[4] + "." + resnet(join_from(p, 5));
    if (p[3] == "downsample" && p[4] == "conv") return base + ".downsamplers.0.conv." + join_from(p, 5);
    return "";
  }
  if (p[1] == "up" && side == "decoder" && p.size() >= 5 && is_number(p[2])) {
    std::string const base = "decoder.up_blocks." + std::to_string(n - 1 - std::stoi(p[2]));
    if (p[3] == "block" && is_number(p[4])) return base + ".resnets." + p[4] + "." + resnet(join_from(p, 5));
    if (p[3] == "upsample" && p[4] == "conv") return base + ".upsamplers.0.conv." + join_from(p, 5);
    return "";
  }
  if (p[1] == "mid" && p.size() >= 4) {
    if (p[2] == "block_1" || p[2] == "block_2")
      return side + ".mid_block.resnets." + (p[2] == "block_1" ? "0" : "1") + "." + resnet(join_from(p, 3));
    if (p[2] == "attn_1") {
      static std::map<std::string, std::string> const kAttn = {
          {"norm", "group_norm"}, {"q", "to_q"}, {"k", "to_k"}, {"v", "to_v"}, {"proj_out", "to_out.0"}};
      auto it = kAttn.find(p[3]);
      if (it == kAttn.end() || p.size() != 5) return "";
      squeeze = p[3] != "norm" && p[4] == "weight";
      return side + ".mid_block.attentions.0." + it->second + "." + p[4];
    }
  }
  return "";
}

/// transformers CLIPTextModel names for an OpenCLIP text key (without its `prefix`: "cond_stage_model.model." for
/// SD 2.x, "conditioner.embedders.1.model." for SDXL). Returns (name, source) pairs: one pair usually, three for the
/// fused in_proj weight/bias; empty when ignored (logit_scale; text_projection unless `with_projection`; layers past
/// `num_layers`, which SD 2.x drops: it uses the penultimate layer). OpenCLIP's text_projection (hidden, proj) is
/// applied as x @ P: it is the transpose of transformers' text_projection.weight.
inline std::vector<std::pair<std::string, KeySource>> clip_keys_from_openclip(
    std::string const& key, int num_layers, std::string const& prefix = kLdmOpenClipPrefix,
    bool with_projection = false) {
  using namespace detail;
  std::string const full = prefix + key;
  auto one = [&](std::string name) {
    return std::vector<std::pair<std::string, KeySource>>{{std::move(name), KeySource{full}}};
  };
  if (key == "text_projection" && with_projection)
    return {{"text_projection.weight", KeySource{full, KeySource::Take::Transpose}}};
  if (key == "token_embedding.weight") return one("text_model.embeddings.token_embedding.weight");
  if (key == "positional_embedding") return one("text_model.embeddings.position_embedding.weight");
  if (key == "ln_final.weight" || key == "ln_final.bias")
    return one("text_model.final_layer_norm." + key.substr(9));
  auto p = split_dots(key);
  if (p.size() < 5 || p[0] != "transformer" || p[1] != "resblocks" || !is_number(p[2])) return {};
  int const layer = std::stoi(p[2]);
  if (layer >= num_layers) return {};
  std::string const base = "text_model.encoder.layers." + p[2] + ".";
  std::string const rest = join_from(p, 3);
  if (rest == "attn.in_proj_weight" || rest == "attn.in_proj_bias") {
    std::string const leaf = rest == "attn.in_proj_weight" ? "weight" : "bias";
    std::vector<std::pair<std::string, KeySource>> out;
    char const* names[3] = {"q_proj", "k_proj", "v_proj"};
    for (int i = 0; i < 3; ++i)
      out.push_back({base + "self_attn." + names[i] + "." + leaf, KeySource{full, KeySource::Take::Third, i}});
    return out;
  }
  static std::map<std::string, std::string> const kNames = {
      {"attn.out_proj", "self_attn.out_proj"}, {"ln_1", "layer_norm1"}, {"ln_2", "layer_norm2"},
      {"mlp.c_fc", "mlp.fc1"},                 {"mlp.c_proj", "mlp.fc2"}};
  std::string const module = join_from(std::vector<std::string>(p.begin(), p.end() - 1), 3);
  auto it = kNames.find(module);
  if (it == kNames.end()) return {};
  return one(base + it->second + "." + p.back());
}

}  // namespace sdlora::models
