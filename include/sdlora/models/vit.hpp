/// @file vit.hpp
/// @brief transformers' ViTModel (e.g. facebook/dino-vits16, the DINO metric's encoder): patch convolution with
/// bias, class token, position table, pre-LN encoder layers, final LayerNorm. The layers are ClipEncoderLayer
/// (the same math: x += attn(LN(x)); x += fc2(gelu(fc1(LN(x))))) visited under ViT's names.
/// Include <sdlora/models.hpp> or <sdlora/eval.hpp> instead.
#pragma once

#include <string>   // std::string
#include <utility>  // std::move
#include <vector>   // std::vector

#include <nlohmann/json.hpp>  // nlohmann::json

#include <sdlora/models/clip_text.hpp>    // ClipEncoderLayer
#include <sdlora/models/clip_vision.hpp>  // ClipVisionConfig, ParameterLeaf, detail::patch_embed, require_model_file
#include <sdlora/models/config.hpp>       // read_json, detail::get_or
#include <sdlora/models/weights.hpp>      // load_parameters, sources_from_file

namespace sdlora::models {

/// transformers ViTConfig (the fields ViTModel uses), as a ClipVisionConfig with ViT's defaults.
inline ClipVisionConfig vit_config_from_json(nlohmann::json const& j) {
  using detail::get_or;
  ClipVisionConfig c;
  c.hidden_size = get_or(j, "hidden_size", 768);
  c.intermediate_size = get_or(j, "intermediate_size", 3072);
  c.num_hidden_layers = get_or(j, "num_hidden_layers", 12);
  c.num_attention_heads = get_or(j, "num_attention_heads", 12);
  c.num_channels = get_or(j, "num_channels", 3);
  c.image_size = get_or(j, "image_size", 224);
  c.patch_size = get_or(j, "patch_size", 16);
  c.hidden_act = get_or(j, "hidden_act", std::string("gelu"));
  c.layer_norm_eps = get_or(j, "layer_norm_eps", 1e-12);
  if (!get_or(j, "qkv_bias", true)) SDLORA_THROW(ConfigError, "[vit config] qkv_bias false is not supported");
  c.validate("vit config");
  return c;
}

/// One ViTLayer: a ClipEncoderLayer (non-causal) under transformers' ViT names.
template <class T, class B = Cpu>
class VitLayer {
 public:
  VitLayer() = default;
  explicit VitLayer(ClipVisionConfig const& c) : layer(c.layer_config()) { layer.self_attn.op().causal = false; }
  ClipEncoderLayer<T, B> layer;

  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x) { return layer.forward(ctx, x, nn::Mode::Infer); }

  template <class V>
  void visit(std::string const& name, V&& visitor) {
    layer.layer_norm1.visit(nn::join(name, "layernorm_before"), visitor);
    layer.self_attn.q_proj.visit(nn::join(name, "attention.attention.query"), visitor);
    layer.self_attn.k_proj.visit(nn::join(name, "attention.attention.key"), visitor);
    layer.self_attn.v_proj.visit(nn::join(name, "attention.attention.value"), visitor);
    layer.self_attn.out_proj.visit(nn::join(name, "attention.output.dense"), visitor);
    layer.layer_norm2.visit(nn::join(name, "layernorm_after"), visitor);
    layer.mlp.fc1.visit(nn::join(name, "intermediate.dense"), visitor);
    layer.mlp.fc2.visit(nn::join(name, "output.dense"), visitor);
  }
};

/// reference: transformers/models/vit/modeling_vit.py, ViTModel without interpolate_pos_encoding (images at the
/// config's image_size). The pooler (dense + tanh) is not used: DINO's embedding is the class token of
/// last_hidden_state, which ViTModel returns after the final layernorm.
template <class T, class B = Cpu>
class VitModel {
  ClipVisionConfig config_;

 public:
  VitModel() = default;
  explicit VitModel(ClipVisionConfig config)
      : config_(std::move(config)),
        cls_token(Shape{1, 1, config_.hidden_size}),
        position_embeddings(Shape{1, config_.num_positions(), config_.hidden_size}),
        projection(config_.num_channels, config_.hidden_size, config_.patch_size, config_.patch_size, 0, true),
        layernorm(config_.hidden_size, config_.layer_norm_eps) {
    for (int i = 0; i < config_.num_hidden_layers; ++i) layers.emplace_back(config_);
  }
  ClipVisionConfig const& config() const { return config_; }

  ParameterLeaf<T, B> cls_token;            // (1, 1, C)         embeddings.cls_token
  ParameterLeaf<T, B> position_embeddings;  // (1, 1 + g*g, C)   embeddings.position_embeddings
  nn::Conv2d<T, B> projection;              // (C, Cin, P, P)    embeddings.patch_embeddings.projection
  std::vector<VitLayer<T, B>> layers;       // encoder.layer.N
  nn::LayerNorm<T, B> layernorm;

  /// last_hidden_state (N, 1 + g*g, C) after the final LayerNorm, for pixels (N, 3, S, S).
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> pixels) {
    Tensor<T, B> h = detail::patch_embed<T, B>(ctx, projection, cls_token.param.value.view(),
                                               position_embeddings.param.value.view(), pixels, "vit");
    for (auto& layer : layers) h = layer.forward(ctx, h.view());
    return layernorm.forward(ctx, h.view());
  }
  /// The class token of last_hidden_state (N, C): the DINO image embedding.
  Tensor<T, B> class_features(Context<B>& ctx, TensorView<T const, B> pixels) {
    Tensor<T, B> const h = forward(ctx, pixels);  // (N, L, C)
    return detail::first_token<T, B>(h.view());
  }

  template <class V>
  void visit(std::string const& name, V&& visitor) {
    visitor(nn::join(name, "embeddings.cls_token"), cls_token);
    visitor(nn::join(name, "embeddings.position_embeddings"), position_embeddings);
    projection.visit(nn::join(name, "embeddings.patch_embeddings.projection"), visitor);
    for (std::size_t i = 0; i < layers.size(); ++i) layers[i].visit(nn::join(name, "encoder.layer." + std::to_string(i)), visitor);
    layernorm.visit(nn::join(name, "layernorm"), visitor);
  }
};

inline constexpr char const* kVitModelExample = "facebook/dino-vits16";

/// A ViTModel from a transformers folder's config.json and model.safetensors. Keys may carry a "vit." prefix (a
/// ViTFor... checkpoint); the pooler and any head are ignored.
template <class T, class B = Cpu>
VitModel<T, B> load_vit_model(std::string const& dir) {
  std::string const config = require_model_file(dir, "config.json", "ViTModel", kVitModelExample);
  std::string const weights = require_model_file(dir, "model.safetensors", "ViTModel", kVitModelExample);
  VitModel<T, B> model(vit_config_from_json(read_json(config)));
  io::SafetensorsFile file(weights);
  bool prefixed = false;
  for (auto const& key : file.keys()) prefixed = prefixed || key.starts_with("vit.embeddings.");
  SourceMap sources = sources_from_file(file, prefixed ? "vit." : "");
  if (prefixed)  // a ViTFor... checkpoint: keep only the ViTModel part
    std::erase_if(sources, [](auto const& kv) { return kv.second.source.key.compare(0, 4, "vit.") != 0; });
  load_parameters<T>(model, sources, "ViTModel from " + weights, {"pooler.", "embeddings.mask_token"});
  return model;
}

}  // namespace sdlora::models
