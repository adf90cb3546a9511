/// @file names.hpp
/// @brief Module names in LoRA files: kohya's flat spelling (dots -> underscores) and back, and the LDM (original
/// Stable Diffusion) UNet block names mapped to diffusers' (input_blocks.i.j -> down_blocks.b.{resnets|attentions}.k,
/// middle_block.0/1/2 -> mid_block.resnets.0/attentions.0/resnets.1, output_blocks -> up_blocks).
/// Include <sdlora/sdlora.hpp> instead.
///
/// The flat spelling is ambiguous in reverse (`to_q`, `transformer_blocks`, `proj_in` contain underscores), so
/// apply() matches flat names against the flattened leaf names of the actual model; `guess_dotted()` is only a
/// best-effort reconstruction from a vocabulary of diffusers / transformers names, for files converted without a
/// model at hand.
#pragma once

#include <array>        // std::array
#include <optional>     // std::optional
#include <string>       // std::string, std::stoi
#include <string_view>  // std::string_view
#include <vector>       // std::vector

namespace sdlora::lora {

/// "a.b.to_q" -> "a_b_to_q": kohya's spelling of a dotted module name.
inline std::string flatten(std::string name) {
  for (char& c : name)
    if (c == '.') c = '_';
  return name;
}

/// Best-effort dotted name of a flat (kohya) name, joining the underscore-separated tokens that form known
/// diffusers / transformers attribute names ("to_out_0" -> "to_out.0", "self_attn_q_proj" -> "self_attn.q_proj").
inline std::string guess_dotted(std::string const& flat) {
  static constexpr std::array<std::string_view, 44> kWords = {
      "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out",
      "proj_in", "proj_out", "conv_shortcut", "time_emb_proj", "conv_in", "conv_out", "conv_norm_out",
      "time_embedding", "linear_1", "linear_2", "add_embedding", "text_model", "self_attn", "q_proj", "k_proj",
      "v_proj", "out_proj", "final_layer_norm", "text_projection", "token_embedding", "position_embedding",
      "add_k_proj", "add_v_proj", "add_q_proj", "to_add_out", "class_embedding", "norm_out", "conv_act",
      "time_proj", "encoder_hid_proj", "quant_conv", "post_quant_conv", "layer_norm1", "layer_norm2",
      "position_ids", "visual_projection"};
  std::vector<std::string> tokens;
  std::size_t start = 0;
  while (start <= flat.size()) {
    std::size_t const end = flat.find('_', start);
    tokens.push_back(flat.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  std::string out;
  for (std::size_t i = 0; i < tokens.size();) {
    std::size_t take = 1;
    for (std::size_t n = 3; n >= 2; --n) {
      if (i + n > tokens.size()) continue;
      std::string joined = tokens[i];
      for (std::size_t k = 1; k < n; ++k) joined += "_" + tokens[i + k];
      bool known = false;
      for (auto w : kWords) known = known || w == joined;
      if (known) {
        take = n;
        break;
      }
    }
    std::string word = tokens[i];
    for (std::size_t k = 1; k < take; ++k) word += "_" + tokens[i + k];
    out += (out.empty() ? "" : ".") + word;
    i += take;
  }
  return out;
}

/// The block structure that decides the LDM -> diffusers UNet mapping. Defaults: SD 1.x / 2.x
/// (CrossAttnDownBlock2D x3 + DownBlock2D, UpBlock2D + CrossAttnUpBlock2D x3, layers_per_block = 2).
struct UnetLayout {
  int layers_per_block = 2;
  std::vector<bool> down_attention = {true, true, true, false};
  std::vector<bool> up_attention = {false, true, true, true};
};

namespace detail {
/// Resnet sub-module names: LDM ResBlock -> diffusers ResnetBlock2D.
inline std::string ldm_resnet_rest(std::string const& rest) {
  static constexpr std::array<std::array<std::string_view, 2>, 6> kMap = {{{"in_layers_2", "conv1"},
                                                                           {"in_layers_0", "norm1"},
                                                                           {"emb_layers_1", "time_emb_proj"},
                                                                           {"out_layers_3", "conv2"},
                                                                           {"out_layers_0", "norm2"},
                                                                           {"skip_connection", "conv_shortcut"}}};
  for (auto const& [from, to] : kMap)
    if (rest == from) return std::string(to);
  return rest;
}
/// Reads "<i>_<j>_<rest>" (or "<i>_<rest>" when `with_j` is false); false when it does not parse.
inline bool ldm_indices(std::string const& s, bool with_j, int& i, int& j, std::string& rest) {
  std::size_t p = 0;
  auto number = [&](int& v) {
    std::size_t q = p;
    while (q < s.size() && s[q] >= '0' && s[q] <= '9') ++q;
    if (q == p || q > p + 4) return false;
    v = std::stoi(s.substr(p, q - p));
    p = q;
    if (p < s.size() && s[p] == '_') ++p;
    return true;
  };
  if (!number(i)) return false;
  if (with_j && !number(j)) return false;
  rest = s.substr(p);
  return true;
}
}  // namespace detail

/// The diffusers flat name of an LDM flat UNet name ("input_blocks_1_1_transformer_blocks_0_attn1_to_q" ->
/// "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"), or nothing when `flat` is not an LDM name.
/// reference (semantics): diffusers loaders/lora_conversion_utils.py _maybe_map_sgm_blocks_to_diffusers,
/// loaders/single_file_utils.py convert_ldm_unet_checkpoint
inline std::optional<std::string> ldm_unet_to_diffusers(std::string const& flat, UnetLayout const& layout = {}) {
  auto starts = [&](std::string_view p) { return flat.compare(0, p.size(), p) == 0; };
  int const per = layout.layers_per_block + 1;  // LDM slots per block: the resnets (+ attentions), then a sampler
  int i = 0, j = 0;
  std::string rest;
  auto with_rest = [](std::string head, std::string const& r) { return r.empty() ? head : head + "_" + r; };
  if (starts("time_embed_0")) return with_rest("time_embedding_linear_1", flat.substr(12 + (flat.size() > 12)));
  if (starts("time_embed_2")) return with_rest("time_embedding_linear_2", flat.substr(12 + (flat.size() > 12)));
  if (flat == "out_0") return "conv_norm_out";
  if (flat == "out_2") return "conv_out";
  if (starts("input_blocks_")) {
    if (!detail::ldm_indices(flat.substr(13), true, i, j, rest)) return std::nullopt;
    if (i == 0) return with_rest("conv_in", rest);
    int const block = (i - 1) / per, slot = (i - 1) % per;
    std::string const head = "down_blocks_" + std::to_string(block) + "_";
    if (slot == layout.layers_per_block) return head + "downsamplers_0_" + (rest == "op" ? "conv" : rest);
    if (j == 0) return with_rest(head + "resnets_" + std::to_string(slot), detail::ldm_resnet_rest(rest));
    return with_rest(head + "attentions_" + std::to_string(slot), rest);
  }
  if (starts("middle_block_")) {
    if (!detail::ldm_indices(flat.substr(13), false, i, j, rest)) return std::nullopt;
    if (i == 0) return with_rest("mid_block_resnets_0", detail::ldm_resnet_rest(rest));
    if (i == 1) return with_rest("mid_block_attentions_0", rest);
    if (i == 2) return with_rest("mid_block_resnets_1", detail::ldm_resnet_rest(rest));
    return std::nullopt;
  }
  if (starts("output_blocks_")) {
    if (!detail::ldm_indices(flat.substr(14), true, i, j, rest)) return std::nullopt;
    int const block = i / per, slot = i % per;
    bool const attention = block < int(layout.up_attention.size()) && layout.up_attention[std::size_t(block)];
    std::string const head = "up_blocks_" + std::to_string(block) + "_";
    if (j == 0) return with_rest(head + "resnets_" + std::to_string(slot), detail::ldm_resnet_rest(rest));
    if (j == 1 && attention) return with_rest(head + "attentions_" + std::to_string(slot), rest);
    return with_rest(head + "upsamplers_0", rest);  // j == 2, or j == 1 in a block without attention
  }
  return std::nullopt;
}

}  // namespace sdlora::lora
