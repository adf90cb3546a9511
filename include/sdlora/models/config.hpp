/// @file config.hpp
/// @brief Model configurations mirroring diffusers' / transformers' `config.json` fields, parsed from JSON or made
/// by presets (SD 1.x, SD 2.x base and v, tiny test models). Include <sdlora/models.hpp> instead.
#pragma once

#include <algorithm>    // std::find
#include <cmath>        // std::floor
#include <cstdint>      // std::int64_t, std::uint64_t
#include <fstream>      // std::ifstream
#include <iterator>     // std::istreambuf_iterator
#include <limits>       // std::numeric_limits
#include <optional>     // std::optional
#include <string>       // std::string
#include <type_traits>  // std::is_integral_v, std::is_signed_v
#include <vector>       // std::vector

#include <nlohmann/json.hpp>  // nlohmann::json

#include <sdlora/core/error.hpp>  // ConfigError, IoError
#include <sdlora/core/json.hpp>   // check_json_depth

namespace sdlora::models {

/// Reads a JSON file; IoError when it cannot be read, ConfigError naming the file when it is not JSON, FormatError
/// when it nests deeper than kMaxJsonDepth.
inline nlohmann::json read_json(std::string const& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) SDLORA_THROW(IoError, "[config] cannot open " << path);
  std::string const text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) SDLORA_THROW(IoError, "[config] cannot read " << path);
  check_json_depth(text, "[config] " + path);
  try {
    return nlohmann::json::parse(text);
  } catch (nlohmann::json::exception const& e) {
    SDLORA_THROW(ConfigError, "[config] " << path << " is not valid JSON: " << e.what());
  }
}

namespace detail {
template <class T>
struct is_vector : std::false_type {};
template <class U>
struct is_vector<std::vector<U>> : std::true_type {};

/// `v` as T. An integer field (or list of them) holding a float with a fraction, or a number outside T's range, is
/// a ConfigError naming the field: nlohmann's get<int> of 6.5e23 is undefined behaviour (config_fuzz found it).
template <class T>
T number_as(nlohmann::json const& v, char const* field) {
  if constexpr (is_vector<T>::value) {
    if (!v.is_array()) return v.get<T>();  // nlohmann's type error
    T out;
    for (auto const& e : v) out.push_back(number_as<typename T::value_type>(e, field));
    return out;
  } else if constexpr (std::is_integral_v<T> && std::is_signed_v<T>) {
    constexpr double kLimit = -double(std::numeric_limits<T>::lowest());  // 2^(bits - 1), exact in a double
    bool fits = true;
    if (v.is_number_float()) {
      double const d = v.get<double>();
      fits = d >= -kLimit && d < kLimit && d == std::floor(d);
    } else if (v.is_number_unsigned()) {
      fits = v.get<std::uint64_t>() <= std::uint64_t(std::numeric_limits<T>::max());
    } else if (v.is_number_integer()) {
      std::int64_t const x = v.get<std::int64_t>();
      fits = x >= std::int64_t(std::numeric_limits<T>::lowest()) && x <= std::int64_t(std::numeric_limits<T>::max());
    }
    if (!fits) SDLORA_THROW(ConfigError, "[config] field '" << field << "' is not an integer in range: " << v.dump());
    return v.get<T>();
  } else {
    return v.get<T>();
  }
}

/// `field` as T when present and not null, else `fallback`; a ConfigError names the field on a type mismatch.
template <class T>
T get_or(nlohmann::json const& j, char const* field, T fallback) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return fallback;
  try {
    return number_as<T>(*it, field);
  } catch (nlohmann::json::exception const&) {
    SDLORA_THROW(ConfigError, "[config] field '" << field << "' has the wrong type: " << it->dump());
  }
}
/// An int-or-list field expanded to one value per block.
inline std::vector<int> per_block(nlohmann::json const& j, char const* field, std::size_t blocks, int fallback) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return std::vector<int>(blocks, fallback);
  if (it->is_number()) return std::vector<int>(blocks, number_as<int>(*it, field));
  if (it->is_array()) {
    auto v = number_as<std::vector<int>>(*it, field);
    if (v.size() != blocks)
      SDLORA_THROW(ConfigError, "[config] field '" << field << "' has " << v.size() << " entries for " << blocks
                                                   << " blocks");
    return v;
  }
  SDLORA_THROW(ConfigError, "[config] field '" << field << "' must be an integer or a list: " << it->dump());
}
}  // namespace detail

/// diffusers UNet2DConditionModel config (the fields SD 1.x / 2.x / SDXL use).
struct UNetConfig {
  int sample_size = 64;
  int in_channels = 4;
  int out_channels = 4;
  bool flip_sin_to_cos = true;
  int freq_shift = 0;
  std::vector<std::string> down_block_types;
  std::string mid_block_type = "UNetMidBlock2DCrossAttn";
  std::vector<std::string> up_block_types;
  std::vector<int> block_out_channels;
  std::vector<int> layers_per_block;              // per down block (up blocks use reversed + 1)
  std::vector<int> transformer_layers_per_block;  // per down block
  std::vector<int> num_attention_heads;           // per down block, after diffusers' attention_head_dim quirk
  int downsample_padding = 1;
  double mid_block_scale_factor = 1.0;
  int norm_num_groups = 32;
  double norm_eps = 1e-5;
  int cross_attention_dim = 768;
  bool use_linear_projection = false;
  bool upcast_attention = false;
  bool center_input_sample = false;
  std::string resnet_time_scale_shift = "default";
  std::string addition_embed_type;  // "" or "text_time" (SDXL)
  int addition_time_embed_dim = 0;
  int projection_class_embeddings_input_dim = 0;

  std::size_t num_blocks() const { return block_out_channels.size(); }
  int time_embed_dim() const { return block_out_channels.at(0) * 4; }

  static UNetConfig from_json(nlohmann::json const& j) {
    using detail::get_or;
    UNetConfig c;
    c.sample_size = get_or(j, "sample_size", 64);
    c.in_channels = get_or(j, "in_channels", 4);
    c.out_channels = get_or(j, "out_channels", 4);
    c.flip_sin_to_cos = get_or(j, "flip_sin_to_cos", true);
    c.freq_shift = get_or(j, "freq_shift", 0);
    c.down_block_types = get_or(j, "down_block_types", std::vector<std::string>{"CrossAttnDownBlock2D",
                                                                                 "CrossAttnDownBlock2D",
                                                                                 "CrossAttnDownBlock2D",
                                                                                 "DownBlock2D"});
    c.mid_block_type = get_or(j, "mid_block_type", std::string("UNetMidBlock2DCrossAttn"));
    c.up_block_types = get_or(j, "up_block_types", std::vector<std::string>{"UpBlock2D", "CrossAttnUpBlock2D",
                                                                             "CrossAttnUpBlock2D",
                                                                             "CrossAttnUpBlock2D"});
    c.block_out_channels = get_or(j, "block_out_channels", std::vector<int>{320, 640, 1280, 1280});
    std::size_t const n = c.block_out_channels.size();
    if (c.down_block_types.size() != n || c.up_block_types.size() != n)
      SDLORA_THROW(ConfigError, "[unet config] " << n << " block_out_channels but " << c.down_block_types.size()
                                                 << " down_block_types and " << c.up_block_types.size()
                                                 << " up_block_types");
    c.layers_per_block = detail::per_block(j, "layers_per_block", n, 2);
    c.transformer_layers_per_block = detail::per_block(j, "transformer_layers_per_block", n, 1);
    // diffusers: num_attention_heads = num_attention_heads or attention_head_dim (a historical naming quirk:
    // SD 1.x's "attention_head_dim": 8 means 8 heads).
    auto heads = j.find("num_attention_heads");
    c.num_attention_heads = (heads != j.end() && !heads->is_null())
                                ? detail::per_block(j, "num_attention_heads", n, 8)
                                : detail::per_block(j, "attention_head_dim", n, 8);
    c.downsample_padding = get_or(j, "downsample_padding", 1);
    c.mid_block_scale_factor = get_or(j, "mid_block_scale_factor", 1.0);
    c.norm_num_groups = get_or(j, "norm_num_groups", 32);
    c.norm_eps = get_or(j, "norm_eps", 1e-5);
    c.cross_attention_dim = get_or(j, "cross_attention_dim", 768);
    c.use_linear_projection = get_or(j, "use_linear_projection", false);
    c.upcast_attention = get_or(j, "upcast_attention", false);
    c.center_input_sample = get_or(j, "center_input_sample", false);
    c.resnet_time_scale_shift = get_or(j, "resnet_time_scale_shift", std::string("default"));
    c.addition_embed_type = get_or(j, "addition_embed_type", std::string());
    c.addition_time_embed_dim = get_or(j, "addition_time_embed_dim", 0);
    c.projection_class_embeddings_input_dim = get_or(j, "projection_class_embeddings_input_dim", 0);
    c.validate();
    return c;
  }

  void validate() const {
    if (norm_num_groups <= 0)
      SDLORA_THROW(ConfigError, "[unet config] norm_num_groups must be positive, got " << norm_num_groups);
    for (int h : num_attention_heads)
      if (h <= 0) SDLORA_THROW(ConfigError, "[unet config] attention head counts must be positive, got " << h);
    for (int ch : block_out_channels)
      if (ch % norm_num_groups != 0)
        SDLORA_THROW(ConfigError, "[unet config] block_out_channels " << ch << " is not divisible by norm_num_groups "
                                                                      << norm_num_groups);
    for (std::size_t i = 0; i < num_blocks(); ++i)
      if (block_out_channels[i] % num_attention_heads[i] != 0)
        SDLORA_THROW(ConfigError, "[unet config] block " << i << ": " << block_out_channels[i]
                                                         << " channels do not split into " << num_attention_heads[i]
                                                         << " heads");
    if (resnet_time_scale_shift != "default")
      SDLORA_THROW(ConfigError, "[unet config] resnet_time_scale_shift '" << resnet_time_scale_shift
                                                                          << "' is not supported (only 'default')");
    if (mid_block_type != "UNetMidBlock2DCrossAttn")
      SDLORA_THROW(ConfigError, "[unet config] mid_block_type '" << mid_block_type << "' is not supported");
    for (auto const& t : down_block_types)
      if (t != "CrossAttnDownBlock2D" && t != "DownBlock2D")
        SDLORA_THROW(ConfigError, "[unet config] down block type '" << t << "' is not supported");
    for (auto const& t : up_block_types)
      if (t != "CrossAttnUpBlock2D" && t != "UpBlock2D")
        SDLORA_THROW(ConfigError, "[unet config] up block type '" << t << "' is not supported");
  }

  /// Stable Diffusion 1.4 / 1.5 (runwayml/stable-diffusion-v1-5 unet/config.json).
  static UNetConfig sd15() { return from_json(nlohmann::json::object()); }
  /// Stable Diffusion 2.x (512-base and 768-v share the UNet; 768-v has sample_size 96 and v-prediction).
  static UNetConfig sd21(bool v768 = false) {
    return from_json({{"sample_size", v768 ? 96 : 64},
                      {"attention_head_dim", {5, 10, 20, 20}},
                      {"cross_attention_dim", 1024},
                      {"use_linear_projection", true},
                      {"upcast_attention", v768}});
  }
  /// SDXL 1.0 base (stabilityai/stable-diffusion-xl-base-1.0 unet/config.json).
  static UNetConfig sdxl() {
    return from_json({{"sample_size", 128},
                      {"block_out_channels", {320, 640, 1280}},
                      {"down_block_types", {"DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"}},
                      {"up_block_types", {"CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"}},
                      {"transformer_layers_per_block", {1, 2, 10}},
                      {"attention_head_dim", {5, 10, 20}},
                      {"cross_attention_dim", 2048},
                      {"use_linear_projection", true},
                      {"addition_embed_type", "text_time"},
                      {"addition_time_embed_dim", 256},
                      {"projection_class_embeddings_input_dim", 2816}});
  }
};

/// diffusers AutoencoderKL config.
struct VaeConfig {
  int in_channels = 3;
  int out_channels = 3;
  int latent_channels = 4;
  std::vector<int> block_out_channels{128, 256, 512, 512};
  int layers_per_block = 2;
  int norm_num_groups = 32;
  int sample_size = 512;
  double scaling_factor = 0.18215;
  bool mid_block_add_attention = true;
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;

  static VaeConfig from_json(nlohmann::json const& j) {
    using detail::get_or;
    VaeConfig c;
    c.in_channels = get_or(j, "in_channels", 3);
    c.out_channels = get_or(j, "out_channels", 3);
    c.latent_channels = get_or(j, "latent_channels", 4);
    c.block_out_channels = get_or(j, "block_out_channels", c.block_out_channels);
    c.layers_per_block = get_or(j, "layers_per_block", 2);
    c.norm_num_groups = get_or(j, "norm_num_groups", 32);
    c.sample_size = get_or(j, "sample_size", 512);
    c.scaling_factor = get_or(j, "scaling_factor", 0.18215);
    c.mid_block_add_attention = get_or(j, "mid_block_add_attention", true);
    c.use_quant_conv = get_or(j, "use_quant_conv", true);
    c.use_post_quant_conv = get_or(j, "use_post_quant_conv", true);
    if (c.norm_num_groups <= 0)
      SDLORA_THROW(ConfigError, "[vae config] norm_num_groups must be positive, got " << c.norm_num_groups);
    for (int ch : c.block_out_channels)
      if (ch % c.norm_num_groups != 0)
        SDLORA_THROW(ConfigError, "[vae config] block_out_channels " << ch << " is not divisible by norm_num_groups "
                                                                     << c.norm_num_groups);
    return c;
  }
  /// The SD 1.x / 2.x VAE.
  static VaeConfig sd() { return from_json(nlohmann::json::object()); }
  /// The SDXL VAE: the same network, scaling factor 0.13025.
  static VaeConfig sdxl() { return from_json({{"scaling_factor", 0.13025}, {"sample_size", 1024}}); }
  /// Downsampling factor between image and latents (8 for SD).
  int scale() const { return 1 << (int(block_out_channels.size()) - 1); }
};

/// transformers CLIPTextConfig.
struct ClipTextConfig {
  int vocab_size = 49408;
  int hidden_size = 768;
  int intermediate_size = 3072;
  int num_hidden_layers = 12;
  int num_attention_heads = 12;
  int max_position_embeddings = 77;
  std::string hidden_act = "quick_gelu";
  double layer_norm_eps = 1e-5;
  int bos_token_id = 49406;
  int eos_token_id = 49407;
  int pad_token_id = 1;
  int projection_dim = 512;
  /// CLIPTextModelWithProjection (SDXL's text_encoder_2): a bias-free text_projection of the pooled output. Set from
  /// `architectures` in config.json, or by the loader from model_index.json's class name.
  bool with_projection = false;

  static ClipTextConfig from_json(nlohmann::json const& j) {
    using detail::get_or;
    ClipTextConfig c;
    c.vocab_size = get_or(j, "vocab_size", 49408);
    c.hidden_size = get_or(j, "hidden_size", 768);
    c.intermediate_size = get_or(j, "intermediate_size", 3072);
    c.num_hidden_layers = get_or(j, "num_hidden_layers", 12);
    c.num_attention_heads = get_or(j, "num_attention_heads", 12);
    c.max_position_embeddings = get_or(j, "max_position_embeddings", 77);
    c.hidden_act = get_or(j, "hidden_act", std::string("quick_gelu"));
    c.layer_norm_eps = get_or(j, "layer_norm_eps", 1e-5);
    c.bos_token_id = get_or(j, "bos_token_id", 49406);
    c.eos_token_id = get_or(j, "eos_token_id", 49407);
    c.pad_token_id = get_or(j, "pad_token_id", 1);
    c.projection_dim = get_or(j, "projection_dim", 512);
    auto const arch = get_or(j, "architectures", std::vector<std::string>{});
    c.with_projection = std::find(arch.begin(), arch.end(), "CLIPTextModelWithProjection") != arch.end();
    if (c.projection_dim <= 0)
      SDLORA_THROW(ConfigError, "[clip config] projection_dim must be positive, got " << c.projection_dim);
    if (c.num_attention_heads <= 0 || c.hidden_size % c.num_attention_heads != 0)
      SDLORA_THROW(ConfigError, "[clip config] hidden_size " << c.hidden_size << " does not split into "
                                                             << c.num_attention_heads << " heads");
    if (c.hidden_act != "quick_gelu" && c.hidden_act != "gelu")
      SDLORA_THROW(ConfigError, "[clip config] hidden_act '" << c.hidden_act << "' is not supported");
    return c;
  }
  /// SD 1.x: openai/clip-vit-large-patch14.
  static ClipTextConfig sd15() { return from_json(nlohmann::json::object()); }
  /// SD 2.x: OpenCLIP ViT-H/14 text tower as diffusers stores it (23 of its 24 layers; gelu).
  static ClipTextConfig sd21() {
    return from_json({{"hidden_size", 1024}, {"intermediate_size", 4096}, {"num_hidden_layers", 23},
                      {"num_attention_heads", 16}, {"hidden_act", "gelu"}, {"pad_token_id", 1}});
  }
  /// SDXL's text_encoder: CLIP ViT-L/14 as in SD 1.x (SDXL reads its penultimate layer).
  static ClipTextConfig sdxl_l() { return from_json({{"projection_dim", 768}, {"eos_token_id", 2}}); }
  /// SDXL's text_encoder_2: the OpenCLIP ViT-bigG/14 text tower, all 32 layers, with its text projection.
  static ClipTextConfig sdxl_g() {
    auto c = from_json({{"hidden_size", 1280}, {"intermediate_size", 5120}, {"num_hidden_layers", 32},
                        {"num_attention_heads", 20}, {"hidden_act", "gelu"}, {"projection_dim", 1280},
                        {"eos_token_id", 2}});
    c.with_projection = true;
    return c;
  }
};

}  // namespace sdlora::models
