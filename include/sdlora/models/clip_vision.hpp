/// @file clip_vision.hpp
/// @brief transformers' CLIP vision transformer (patch convolution, class token, position embeddings, pre-LN,
/// bidirectional encoder, post-LN) and CLIPModel (text and vision towers with their projections), loaded from a
/// transformers `CLIPModel` folder (config.json + model.safetensors). The encoder layers are the text encoder's
/// (ClipEncoderLayer) with the causal mask off. Include <sdlora/models.hpp> or <sdlora/eval.hpp> instead.
#pragma once

#include <filesystem>  // std::filesystem::exists
#include <string>      // std::string
#include <utility>     // std::move
#include <vector>      // std::vector

#include <nlohmann/json.hpp>  // nlohmann::json

#include <sdlora/io/safetensors.hpp>   // io::SafetensorsFile
#include <sdlora/models/clip_text.hpp>  // ClipEncoderLayer, ClipTextModel
#include <sdlora/models/config.hpp>     // ClipTextConfig, read_json, detail::get_or
#include <sdlora/models/weights.hpp>    // load_parameters, sources_from_file
#include <sdlora/nn/conv2d.hpp>         // nn::Conv2d
#include <sdlora/nn/embedding.hpp>      // nn::Embedding
#include <sdlora/nn/layer_norm.hpp>     // nn::LayerNorm
#include <sdlora/nn/linear.hpp>         // nn::Linear
#include <sdlora/ops/elementwise.hpp>   // ops::add
#include <sdlora/ops/layout.hpp>        // ops::nchw_to_nlc

namespace sdlora::models {

/// transformers CLIPVisionConfig (and the vision side of ViTConfig: the same transformer with other names).
struct ClipVisionConfig {
  int hidden_size = 768;
  int intermediate_size = 3072;
  int num_hidden_layers = 12;
  int num_attention_heads = 12;
  int num_channels = 3;
  int image_size = 224;
  int patch_size = 32;
  std::string hidden_act = "quick_gelu";
  double layer_norm_eps = 1e-5;

  int grid() const { return image_size / patch_size; }
  int num_patches() const { return grid() * grid(); }
  int num_positions() const { return num_patches() + 1; }

  static ClipVisionConfig from_json(nlohmann::json const& j) {
    using detail::get_or;
    ClipVisionConfig c;
    c.hidden_size = get_or(j, "hidden_size", 768);
    c.intermediate_size = get_or(j, "intermediate_size", 3072);
    c.num_hidden_layers = get_or(j, "num_hidden_layers", 12);
    c.num_attention_heads = get_or(j, "num_attention_heads", 12);
    c.num_channels = get_or(j, "num_channels", 3);
    c.image_size = get_or(j, "image_size", 224);
    c.patch_size = get_or(j, "patch_size", 32);
    c.hidden_act = get_or(j, "hidden_act", std::string("quick_gelu"));
    c.layer_norm_eps = get_or(j, "layer_norm_eps", 1e-5);
    c.validate("clip vision config");
    return c;
  }
  void validate(char const* what) const {
    if (hidden_size % num_attention_heads != 0)
      SDLORA_THROW(ConfigError, "[" << what << "] hidden_size " << hidden_size << " does not split into "
                                    << num_attention_heads << " heads");
    if (patch_size <= 0 || image_size % patch_size != 0)
      SDLORA_THROW(ConfigError, "[" << what << "] image_size " << image_size << " is not a multiple of patch_size "
                                    << patch_size);
    if (hidden_act != "quick_gelu" && hidden_act != "gelu")
      SDLORA_THROW(ConfigError, "[" << what << "] hidden_act '" << hidden_act << "' is not supported");
  }
  /// The configuration ClipEncoderLayer is built from (the fields both towers share).
  ClipTextConfig layer_config() const {
    ClipTextConfig t;
    t.hidden_size = hidden_size;
    t.intermediate_size = intermediate_size;
    t.num_attention_heads = num_attention_heads;
    t.hidden_act = hidden_act;
    t.layer_norm_eps = layer_norm_eps;
    return t;
  }

  /// openai/clip-vit-base-patch32, -base-patch16, -large-patch14, -large-patch14-336.
  static ClipVisionConfig vit_b32() { return from_json(nlohmann::json::object()); }
  static ClipVisionConfig vit_b16() { return from_json({{"patch_size", 16}}); }
  static ClipVisionConfig vit_l14(int image_size = 224) {
    return from_json({{"hidden_size", 1024}, {"intermediate_size", 4096}, {"num_hidden_layers", 24},
                      {"num_attention_heads", 16}, {"patch_size", 14}, {"image_size", image_size}});
  }
  static ClipVisionConfig vit_l14_336() { return vit_l14(336); }
};

/// transformers CLIPConfig: both towers and the shared embedding width.
struct ClipModelConfig {
  ClipTextConfig text;
  ClipVisionConfig vision;
  int projection_dim = 512;

  static ClipModelConfig from_json(nlohmann::json const& j) {
    ClipModelConfig c;
    auto sub = [&](char const* field) {
      auto it = j.find(field);
      return it == j.end() || it->is_null() ? nlohmann::json::object() : *it;
    };
    c.text = ClipTextConfig::from_json(sub("text_config"));
    c.vision = ClipVisionConfig::from_json(sub("vision_config"));
    c.projection_dim = detail::get_or(j, "projection_dim", 512);
    return c;
  }
};

/// A single tensor leaf for the parameter visitor (class token, position table stored as a bare nn.Parameter).
template <class T, class B = Cpu>
struct ParameterLeaf {
  nn::Parameter<T, B> param;
  ParameterLeaf() = default;
  explicit ParameterLeaf(Shape shape) : param(shape) {}
  template <class F>
  void for_each_parameter(std::string const& name, F&& f) {
    f(name, param);
  }
};

namespace detail {
/// Patch tokens with a class token in front plus the position table: the ViT/CLIP embedding.
/// pixels (N, Cin, H, W) -> conv (N, C, g, g) -> (N, g*g, C) -> h (N, 1 + g*g, C) = [cls; patches] + positions.
template <class T, class B>
Tensor<T, B> patch_embed(Context<B>& ctx, nn::Conv2d<T, B>& conv, TensorView<T const, B> cls,
                         TensorView<T const, B> positions, TensorView<T const, B> pixels, char const* what) {
  Index const p = conv.kernel_size(), c = conv.out_channels(), l = positions.numel() / c;
  SDLORA_EXPECTS(pixels.rank() == 4 && pixels.dim(1) == conv.in_channels() && pixels.dim(2) == pixels.dim(3) &&
                     (pixels.dim(2) / p) * (pixels.dim(2) / p) + 1 == l && pixels.dim(2) % p == 0,
                 "[" << what << "] pixels must be (N, " << conv.in_channels() << ", S, S) with (S / " << p
                     << ")^2 + 1 = " << l << " positions, got " << pixels.shape());
  Index const n = pixels.dim(0);
  Tensor<T, B> grid = conv.forward(ctx, pixels, nn::Mode::Infer);  // (N, C, g, g)
  auto tokens = Tensor<T, B>::uninitialized(Shape{n, l - 1, c});  // (N, g*g, C)
  ops::nchw_to_nlc<T, B>(ctx, tokens.view(), grid.view());
  auto h = Tensor<T, B>::uninitialized(Shape{n, l, c});  // (N, 1 + g*g, C)
  for (Index b = 0; b < n; ++b) {
    BackendMemory<B>::copy(h.data() + b * l * c, cls.data(), std::size_t(c) * sizeof(T));
    BackendMemory<B>::copy(h.data() + b * l * c + c, tokens.data() + b * (l - 1) * c, std::size_t((l - 1) * c) * sizeof(T));
    TensorView<T, B> const row = h.view()[b].reshaped(Shape{l, c});  // (L, C)
    ops::add<T, B>(ctx, row, row, positions.reshaped(Shape{l, c}));
  }
  return h;
}
/// The first token of each sequence: h (N, L, C) -> (N, C).
template <class T, class B>
Tensor<T, B> first_token(TensorView<T const, B> h) {
  Index const n = h.dim(0), l = h.dim(1), c = h.dim(2);
  auto out = Tensor<T, B>::uninitialized(Shape{n, c});  // (N, C)
  for (Index b = 0; b < n; ++b)
    BackendMemory<B>::copy(out.data() + b * c, h.data() + b * l * c, std::size_t(c) * sizeof(T));
  return out;
}
}  // namespace detail

/// What the vision tower returns.
template <class T, class B>
struct ClipVisionOutput {
  Tensor<T, B> last_hidden_state;  // (N, 1 + g*g, C): the last encoder layer's output (no post-LN, as transformers)
  Tensor<T, B> pooler_output;      // (N, C): post_layernorm of the class token
};

/// reference: transformers/models/clip/modeling_clip.py, CLIPVisionTransformer. Parameters are named as in a
/// CLIPModel checkpoint ("vision_model.embeddings.patch_embedding.weight", "vision_model.pre_layrnorm.weight", ...).
template <class T, class B = Cpu>
class ClipVisionModel {
  ClipVisionConfig config_;  // first: the members below are built from it

 public:
  ClipVisionModel() = default;
  explicit ClipVisionModel(ClipVisionConfig config)
      : config_(std::move(config)),
        class_embedding(Shape{config_.hidden_size}),
        patch_embedding(config_.num_channels, config_.hidden_size, config_.patch_size, config_.patch_size, 0, false),
        position_embedding(config_.num_positions(), config_.hidden_size),
        pre_layrnorm(config_.hidden_size, config_.layer_norm_eps),
        post_layernorm(config_.hidden_size, config_.layer_norm_eps) {
    ClipTextConfig const lc = config_.layer_config();
    for (int i = 0; i < config_.num_hidden_layers; ++i) {
      layers.emplace_back(lc);
      layers.back().self_attn.op().causal = false;  // the vision tower attends both ways
    }
  }
  ClipVisionConfig const& config() const { return config_; }

  ParameterLeaf<T, B> class_embedding;         // (C)              vision_model.embeddings.class_embedding
  nn::Conv2d<T, B> patch_embedding;            // (C, Cin, P, P)   vision_model.embeddings.patch_embedding
  nn::Embedding<T, B> position_embedding;      // (1 + g*g, C)     vision_model.embeddings.position_embedding
  nn::LayerNorm<T, B> pre_layrnorm;            // transformers' spelling
  std::vector<ClipEncoderLayer<T, B>> layers;  // vision_model.encoder.layers.N
  nn::LayerNorm<T, B> post_layernorm;

  /// pixels (N, 3, S, S), already preprocessed (eval/preprocess.hpp).
  ClipVisionOutput<T, B> forward(Context<B>& ctx, TensorView<T const, B> pixels) {
    Tensor<T, B> h = detail::patch_embed<T, B>(ctx, patch_embedding, class_embedding.param.value.view(),
                                               position_embedding.weight.value.view(), pixels, "clip_vision");
    h = pre_layrnorm.forward(ctx, h.view());  // (N, L, C)
    for (auto& layer : layers) h = layer.forward(ctx, h.view(), nn::Mode::Infer);
    ClipVisionOutput<T, B> out;
    Tensor<T, B> const cls = detail::first_token<T, B>(h.view());  // (N, C)
    out.pooler_output = post_layernorm.forward(ctx, cls.view());  // (N, C)
    out.last_hidden_state = std::move(h);
    return out;
  }

  template <class V>
  void visit(std::string const& name, V&& visitor) {
    std::string const vm = nn::join(name, "vision_model");
    visitor(nn::join(vm, "embeddings.class_embedding"), class_embedding);
    patch_embedding.visit(nn::join(vm, "embeddings.patch_embedding"), visitor);
    position_embedding.visit(nn::join(vm, "embeddings.position_embedding"), visitor);
    pre_layrnorm.visit(nn::join(vm, "pre_layrnorm"), visitor);
    for (std::size_t i = 0; i < layers.size(); ++i)
      layers[i].visit(nn::join(vm, "encoder.layers." + std::to_string(i)), visitor);
    post_layernorm.visit(nn::join(vm, "post_layernorm"), visitor);
  }
};

/// reference: transformers CLIPModel. get_image_features = visual_projection(vision pooler_output);
/// get_text_features = text_projection(text pooler_output at the first EOS). logit_scale is not needed for
/// cosine similarities and is not loaded.
template <class T, class B = Cpu>
class ClipModel {
  ClipModelConfig config_;

 public:
  ClipModel() = default;
  explicit ClipModel(ClipModelConfig config)
      : config_(std::move(config)),
        text_model(config_.text),
        vision_model(config_.vision),
        visual_projection(config_.vision.hidden_size, config_.projection_dim, false),
        text_projection(config_.text.hidden_size, config_.projection_dim, false) {}
  ClipModelConfig const& config() const { return config_; }

  ClipTextModel<T, B> text_model;
  ClipVisionModel<T, B> vision_model;
  nn::Linear<T, B> visual_projection;  // (proj, C_vision), no bias
  nn::Linear<T, B> text_projection;    // (proj, C_text), no bias

  /// Image embeddings (N, proj) of preprocessed pixels (N, 3, S, S), not normalised.
  Tensor<T, B> image_features(Context<B>& ctx, TensorView<T const, B> pixels) {
    auto out = vision_model.forward(ctx, pixels);
    return visual_projection.forward(ctx, out.pooler_output.view(), nn::Mode::Infer);
  }
  /// Text embeddings (N, proj) of token ids (N, L) (BOS ... EOS, then padding), not normalised. The causal mask
  /// keeps padding after the EOS token out of the pooled output, so no attention mask is needed.
  Tensor<T, B> text_features(Context<B>& ctx, Tensor<std::int32_t, Cpu> const& ids) {
    auto out = text_model.forward(ctx, ids);
    return text_projection.forward(ctx, out.pooler_output.view(), nn::Mode::Infer);
  }

  template <class V>
  void visit(std::string const& name, V&& visitor) {
    text_model.visit(name, visitor);
    vision_model.visit(name, visitor);
    visual_projection.visit(nn::join(name, "visual_projection"), visitor);
    text_projection.visit(nn::join(name, "text_projection"), visitor);
  }
};

/// Throws IoError when `dir/name` is missing, naming it and saying where such folders come from.
inline std::string require_model_file(std::string const& dir, std::string const& name, char const* what,
                                      char const* example) {
  std::filesystem::path const p = std::filesystem::path(dir) / name;
  if (!std::filesystem::exists(p))
    SDLORA_THROW(IoError, "[" << what << "] " << p.string() << " not found: point at a transformers " << what
                              << " folder as the Hugging Face Hub publishes it (e.g. a download of " << example
                              << ")");
  return p.string();
}

inline constexpr char const* kClipModelExample = "openai/clip-vit-base-patch32";

/// A CLIPModel from a transformers folder's config.json and model.safetensors (fp16/bf16 weights are widened to T).
template <class T, class B = Cpu>
ClipModel<T, B> load_clip_model(std::string const& dir) {
  std::string const config = require_model_file(dir, "config.json", "CLIPModel", kClipModelExample);
  std::string const weights = require_model_file(dir, "model.safetensors", "CLIPModel", kClipModelExample);
  ClipModel<T, B> model(ClipModelConfig::from_json(read_json(config)));
  io::SafetensorsFile file(weights);
  SourceMap sources = sources_from_file(file);
  load_parameters<T>(model, sources, "CLIPModel from " + weights,
                     {"logit_scale", "text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"});
  return model;
}

}  // namespace sdlora::models
