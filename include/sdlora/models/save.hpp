/// @file save.hpp
/// @brief Writing a Stable Diffusion checkpoint: a diffusers folder (model_index.json; unet/, vae/, text_encoder/
/// with config.json and weights; tokenizer/; scheduler/) or an original single file (save_single_file.hpp), chosen
/// by the output path; and a checkpoint file's storage dtype changed tensor by tensor (EMA copies dropped).
/// Include this header directly.
#pragma once

#include <filesystem>  // std::filesystem
#include <fstream>     // std::ofstream
#include <functional>  // std::function
#include <map>         // std::map
#include <string>      // std::string
#include <vector>      // std::vector

#include <nlohmann/json.hpp>  // nlohmann::json

#include <sdlora/core/dtype.hpp>                // DType, half, bfloat16
#include <sdlora/core/error.hpp>                // IoError, ConfigError
#include <sdlora/io/safetensors.hpp>            // io::SafetensorsFile, io::SafetensorsWriter
#include <sdlora/models/checkpoint.hpp>         // StableDiffusion
#include <sdlora/models/config.hpp>             // UNetConfig, VaeConfig, ClipTextConfig
#include <sdlora/models/save_single_file.hpp>   // save_single_file, SaveOptions, detail::for_each_weight

namespace sdlora::models {

/// "fp32" / "fp16" / "bf16" (also "float32", "float16", "bfloat16", "f32", ...) -> DType; ConfigError otherwise.
inline DType parse_save_dtype(std::string const& s) {
  if (s == "fp32" || s == "float32" || s == "f32" || s == "float") return DType::F32;
  if (s == "fp16" || s == "float16" || s == "f16" || s == "half") return DType::F16;
  if (s == "bf16" || s == "bfloat16") return DType::BF16;
  SDLORA_THROW(ConfigError, "dtype '" << s << "' is not one of fp32, fp16, bf16");
}

/// diffusers' UNet2DConditionModel config.json for `c` (attention_head_dim carries the head counts, diffusers'
/// naming quirk that SD 1.x / 2.x configs use; num_attention_heads stays null as diffusers requires).
inline nlohmann::json unet_config_json(UNetConfig const& c) {
  auto one_or_list = [](std::vector<int> const& v) -> nlohmann::json {
    for (int x : v)
      if (x != v.front()) return v;
    return v.front();
  };
  nlohmann::json j = {{"_class_name", "UNet2DConditionModel"},
                      {"act_fn", "silu"},
                      {"sample_size", c.sample_size},
                      {"in_channels", c.in_channels},
                      {"out_channels", c.out_channels},
                      {"flip_sin_to_cos", c.flip_sin_to_cos},
                      {"freq_shift", c.freq_shift},
                      {"down_block_types", c.down_block_types},
                      {"mid_block_type", c.mid_block_type},
                      {"up_block_types", c.up_block_types},
                      {"block_out_channels", c.block_out_channels},
                      {"layers_per_block", one_or_list(c.layers_per_block)},
                      {"transformer_layers_per_block", one_or_list(c.transformer_layers_per_block)},
                      {"attention_head_dim", one_or_list(c.num_attention_heads)},
                      {"num_attention_heads", nullptr},
                      {"downsample_padding", c.downsample_padding},
                      {"mid_block_scale_factor", c.mid_block_scale_factor},
                      {"norm_num_groups", c.norm_num_groups},
                      {"norm_eps", c.norm_eps},
                      {"cross_attention_dim", c.cross_attention_dim},
                      {"use_linear_projection", c.use_linear_projection},
                      {"upcast_attention", c.upcast_attention},
                      {"center_input_sample", c.center_input_sample},
                      {"resnet_time_scale_shift", c.resnet_time_scale_shift}};
  if (!c.addition_embed_type.empty()) {
    j["addition_embed_type"] = c.addition_embed_type;
    j["addition_time_embed_dim"] = c.addition_time_embed_dim;
    j["projection_class_embeddings_input_dim"] = c.projection_class_embeddings_input_dim;
  }
  return j;
}

/// diffusers' AutoencoderKL config.json for `c`.
inline nlohmann::json vae_config_json(VaeConfig const& c) {
  std::size_t const n = c.block_out_channels.size();
  return {{"_class_name", "AutoencoderKL"},
          {"act_fn", "silu"},
          {"in_channels", c.in_channels},
          {"out_channels", c.out_channels},
          {"latent_channels", c.latent_channels},
          {"block_out_channels", c.block_out_channels},
          {"down_block_types", std::vector<std::string>(n, "DownEncoderBlock2D")},
          {"up_block_types", std::vector<std::string>(n, "UpDecoderBlock2D")},
          {"layers_per_block", c.layers_per_block},
          {"norm_num_groups", c.norm_num_groups},
          {"sample_size", c.sample_size},
          {"scaling_factor", c.scaling_factor},
          {"mid_block_add_attention", c.mid_block_add_attention},
          {"use_quant_conv", c.use_quant_conv},
          {"use_post_quant_conv", c.use_post_quant_conv}};
}

/// transformers' CLIPTextModel config.json for `c`.
inline nlohmann::json clip_text_config_json(ClipTextConfig const& c) {
  return {{"architectures", {c.with_projection ? "CLIPTextModelWithProjection" : "CLIPTextModel"}},
          {"model_type", "clip_text_model"},
          {"vocab_size", c.vocab_size},
          {"hidden_size", c.hidden_size},
          {"intermediate_size", c.intermediate_size},
          {"projection_dim", c.projection_dim},
          {"num_hidden_layers", c.num_hidden_layers},
          {"num_attention_heads", c.num_attention_heads},
          {"max_position_embeddings", c.max_position_embeddings},
          {"hidden_act", c.hidden_act},
          {"layer_norm_eps", c.layer_norm_eps},
          {"bos_token_id", c.bos_token_id},
          {"eos_token_id", c.eos_token_id},
          {"pad_token_id", c.pad_token_id}};
}

namespace detail {
inline void write_json_file(std::filesystem::path const& path, nlohmann::json const& j) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << j.dump(2) << "\n";
  if (!out) SDLORA_THROW(IoError, "[save] cannot write " << path.string());
}
template <class Module>
void save_component(Module& module, std::string const& what, std::string const& path, DType dtype) {
  io::SafetensorsWriter w;
  for_each_weight(module, what, [&](std::string const& name, Tensor<float> t) { add_in_dtype(w, name, t, dtype); });
  w.set_metadata("format", "pt");
  w.write(path);
}
}  // namespace detail

/// Writes `sd` as a diffusers folder: model_index.json, unet/ and vae/ (config.json +
/// diffusion_pytorch_model.safetensors), text_encoder/ (config.json + model.safetensors with transformers 4's
/// "text_model." keys), tokenizer/ (vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json) and
/// scheduler/scheduler_config.json; SDXL also text_encoder_2/ and tokenizer_2/ and a StableDiffusionXLPipeline
/// model_index.json. `dir` is created; existing files in it are replaced.
template <class T>
void save_diffusers_folder(StableDiffusion<T, Cpu>& sd, std::string const& dir, SaveOptions const& options = {}) {
  namespace fs = std::filesystem;
  fs::path const root(dir);
  std::error_code ec;
  std::vector<std::string> subs = {"unet", "vae", "text_encoder", "tokenizer", "scheduler"};
  if (sd.is_sdxl()) subs.insert(subs.end(), {"text_encoder_2", "tokenizer_2"});
  for (auto const& sub : subs) {
    fs::create_directories(root / sub, ec);
    if (ec) SDLORA_THROW(IoError, "[save] cannot create " << (root / sub).string() << ": " << ec.message());
  }
  detail::write_json_file(root / "unet" / "config.json", unet_config_json(sd.unet.config()));
  detail::save_component(sd.unet, "unet", (root / "unet" / "diffusion_pytorch_model.safetensors").string(),
                         options.dtype);
  detail::write_json_file(root / "vae" / "config.json", vae_config_json(sd.vae.config()));
  detail::save_component(sd.vae, "vae", (root / "vae" / "diffusion_pytorch_model.safetensors").string(),
                         options.dtype);
  detail::write_json_file(root / "text_encoder" / "config.json", clip_text_config_json(sd.text_encoder.config()));
  detail::save_component(sd.text_encoder, "text_encoder", (root / "text_encoder" / "model.safetensors").string(),
                         options.dtype);
  auto write_tokenizer = [&](tokenizer::ClipTokenizer const& t, char const* sub) {
    t.save_vocab_merges((root / sub / "vocab.json").string(), (root / sub / "merges.txt").string());
    std::string const pad = t.id_to_token(t.pad_id());
    nlohmann::json const special = {{"bos_token", "<|startoftext|>"}, {"eos_token", "<|endoftext|>"},
                                    {"unk_token", "<|endoftext|>"}, {"pad_token", pad}};
    detail::write_json_file(root / sub / "special_tokens_map.json", special);
    nlohmann::json tok = special;
    tok["tokenizer_class"] = "CLIPTokenizer";
    tok["model_max_length"] = 77;
    tok["do_lower_case"] = true;
    detail::write_json_file(root / sub / "tokenizer_config.json", tok);
  };
  write_tokenizer(sd.tokenizer, "tokenizer");
  if (sd.is_sdxl()) {  // StableDiffusionXLPipeline: the second encoder (with its projection) and tokenizer
    detail::write_json_file(root / "text_encoder_2" / "config.json", clip_text_config_json(sd.text_encoder_2.config()));
    detail::save_component(sd.text_encoder_2, "text_encoder_2",
                           (root / "text_encoder_2" / "model.safetensors").string(), options.dtype);
    write_tokenizer(sd.tokenizer_2, "tokenizer_2");
  }
  detail::write_json_file(root / "scheduler" / "scheduler_config.json", sd.scheduler_config);
  std::string const scheduler = sd.scheduler_config.value("_class_name", std::string("PNDMScheduler"));
  if (sd.is_sdxl()) {
    detail::write_json_file(root / "model_index.json",
                            {{"_class_name", "StableDiffusionXLPipeline"},
                             {"force_zeros_for_empty_prompt", sd.force_zeros_for_empty_prompt},
                             {"scheduler", {"diffusers", scheduler}},
                             {"text_encoder", {"transformers", "CLIPTextModel"}},
                             {"text_encoder_2", {"transformers", "CLIPTextModelWithProjection"}},
                             {"tokenizer", {"transformers", "CLIPTokenizer"}},
                             {"tokenizer_2", {"transformers", "CLIPTokenizer"}},
                             {"unet", {"diffusers", "UNet2DConditionModel"}},
                             {"vae", {"diffusers", "AutoencoderKL"}}});
    return;
  }
  detail::write_json_file(root / "model_index.json",
                          {{"_class_name", "StableDiffusionPipeline"},
                           {"scheduler", {"diffusers", scheduler}},
                           {"text_encoder", {"transformers", "CLIPTextModel"}},
                           {"tokenizer", {"transformers", "CLIPTokenizer"}},
                           {"unet", {"diffusers", "UNet2DConditionModel"}},
                           {"vae", {"diffusers", "AutoencoderKL"}},
                           {"safety_checker", {nullptr, nullptr}},
                           {"feature_extractor", {nullptr, nullptr}},
                           {"requires_safety_checker", false}});
}

/// Whether `path` names a single-file checkpoint (ends in ".safetensors") rather than a diffusers folder.
inline bool is_single_file_path(std::string const& path) {
  std::string const ext = ".safetensors";
  return path.size() > ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0;
}

/// save_single_file when `path` ends in ".safetensors", else save_diffusers_folder.
template <class T>
void save_stable_diffusion(StableDiffusion<T, Cpu>& sd, std::string const& path, SaveOptions const& options = {}) {
  if (is_single_file_path(path)) save_single_file(sd, path, options);
  else save_diffusers_folder(sd, path, options);
}

/// What convert_file_dtype did.
struct DtypeReport {
  std::size_t converted = 0;  ///< floating-point tensors written in the new dtype
  std::size_t kept = 0;       ///< integer tensors copied as they are
  std::size_t dropped = 0;    ///< tensors left out (EMA copies)
};

/// Copies a `.safetensors` checkpoint with every floating-point tensor stored in `dtype` (rounded to nearest even),
/// integer tensors unchanged, tensors whose key starts with one of `drop_prefixes` (EMA copies `model_ema.*` by
/// default) left out, and the metadata kept. `progress(done, total)` is called after each tensor when given.
inline DtypeReport convert_file_dtype(std::string const& in, std::string const& out, DType dtype,
                                      std::vector<std::string> const& drop_prefixes = {"model_ema."},
                                      std::function<void(std::size_t, std::size_t)> const& progress = {}) {
  io::SafetensorsFile const f(in);
  io::SafetensorsWriter w;
  DtypeReport report;
  auto const keys = f.keys();
  std::size_t done = 0;
  for (auto const& key : keys) {
    bool drop = false;
    for (auto const& p : drop_prefixes) drop = drop || key.rfind(p, 0) == 0;
    DType const stored = f.info(key).dtype;
    if (drop) {
      ++report.dropped;
    } else if (stored == DType::F32 || stored == DType::F16 || stored == DType::BF16 || stored == DType::F64) {
      detail::add_in_dtype(w, key, f.load<float>(key), dtype);
      ++report.converted;
    } else {
      switch (stored) {
        case DType::I64: w.add(key, f.load<std::int64_t>(key)); break;
        case DType::I32: w.add(key, f.load<std::int32_t>(key)); break;
        default: SDLORA_THROW(FormatError, "[dtype] " << in << ": tensor '" << key << "' has dtype "
                                                      << dtype_name(stored) << ", which this conversion does not copy");
      }
      ++report.kept;
    }
    if (progress) progress(++done, keys.size());
  }
  for (auto const& [k, v] : f.metadata()) w.set_metadata(k, v);
  w.write(out);
  return report;
}

}  // namespace sdlora::models
