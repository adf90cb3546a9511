/// @file checkpoint.hpp
/// @brief Loading a Stable Diffusion checkpoint (SD 1.x / 2.x / SDXL) from a diffusers folder or an original single
/// file, detected from the path: tokenizers, text encoders, UNet, VAE and the scheduler configuration.
/// Include <sdlora/models.hpp> instead.
#pragma once

#include <filesystem>  // std::filesystem
#include <map>         // std::map
#include <memory>      // std::unique_ptr
#include <optional>    // std::optional
#include <string>      // std::string
#include <vector>      // std::vector

#include <nlohmann/json.hpp>  // nlohmann::json

#include <sdlora/io/safetensors.hpp>             // io::SafetensorsFile
#include <sdlora/models/clip_text.hpp>           // ClipTextModel
#include <sdlora/models/config.hpp>              // configs
#include <sdlora/models/single_file.hpp>         // LDM key mapping
#include <sdlora/models/unet.hpp>                // UNet2DConditionModel
#include <sdlora/models/vae.hpp>                 // AutoencoderKL
#include <sdlora/models/weights.hpp>             // load_parameters
#include <sdlora/nn/storage.hpp>                 // nn::set_weight_storage
#include <sdlora/tokenizer/clip_tokenizer.hpp>   // tokenizer::ClipTokenizer

namespace sdlora::models {

/// Options for load_stable_diffusion.
struct LoadOptions {
  /// A diffusers-style folder with unet/, vae/, text_encoder/ config.json files (and scheduler/) to use instead of
  /// the presets a single file implies (diffusers' `config=` argument); required for non-standard architectures.
  std::string config_dir;
  /// Weight variant in a diffusers folder: "" (the default file) or "fp16" (`*.fp16.safetensors`).
  std::string variant;
  /// Where the bundled CLIP vocabulary lives when the checkpoint has no tokenizer/ folder ("" = search).
  std::string vocab_dir;
  /// Prediction type override for single files ("" = as detected: epsilon for SD 1.x, v_prediction for SD 2.x).
  std::string prediction_type;
  bool load_vae = true;
  /// Storage of the frozen Linear and Conv2d weights: F32 (the model's own float type), F16 or BF16, narrowed tensor
  /// by tensor as they are read (the programs' --weights-dtype; see models::set_weight_storage), so the load's peak
  /// memory is about the 16-bit model rather than the float one.
  DType weights_dtype = DType::F32;
  /// The VAE's own storage, when it differs from weights_dtype (the programs' --mixed_precision fp16 keeps the VAE in
  /// float, as diffusers advises: an fp16 SD VAE overflows).
  std::optional<DType> vae_weights_dtype;
};

/// The SD 1.5 scheduler configuration (PNDM), used for single files without a config folder.
inline nlohmann::json sd15_scheduler_config() {
  return {{"_class_name", "PNDMScheduler"}, {"beta_end", 0.012},         {"beta_schedule", "scaled_linear"},
          {"beta_start", 0.00085},          {"clip_sample", false},      {"num_train_timesteps", 1000},
          {"prediction_type", "epsilon"},   {"set_alpha_to_one", false}, {"skip_prk_steps", true},
          {"steps_offset", 1},              {"timestep_spacing", "leading"}};
}
/// The SD 2.1 (768-v) scheduler configuration (DDIM, v-prediction).
inline nlohmann::json sd21_scheduler_config() {
  auto j = sd15_scheduler_config();
  j["_class_name"] = "DDIMScheduler";
  j["prediction_type"] = "v_prediction";
  return j;
}

/// The SDXL 1.0 scheduler configuration (Euler, leading spacing), used for single files without a config folder.
inline nlohmann::json sdxl_scheduler_config() {
  auto j = sd15_scheduler_config();
  j["_class_name"] = "EulerDiscreteScheduler";
  j["interpolation_type"] = "linear";
  j["use_karras_sigmas"] = false;
  return j;
}

/// A loaded Stable Diffusion checkpoint.
template <class T, class B = Cpu>
struct StableDiffusion {
  tokenizer::ClipTokenizer tokenizer;
  ClipTextModel<T, B> text_encoder;
  UNet2DConditionModel<T, B> unet;
  AutoencoderKL<T, B> vae;
  nlohmann::json scheduler_config;
  std::string source;             // the path it was loaded from
  std::string base_model;         // "sd1", "sd2" or "sdxl" (kohya's ss_base_model_version uses it)
  std::size_t ignored_keys = 0;   // keys of a single file that belong to no network (EMA copies, position_ids, ...)
  // SDXL only: the second tokenizer (pads with "!") and text encoder (CLIPTextModelWithProjection, OpenCLIP bigG).
  tokenizer::ClipTokenizer tokenizer_2;
  ClipTextModel<T, B> text_encoder_2;
  /// model_index.json's force_zeros_for_empty_prompt (SDXL: true): without a negative prompt, classifier-free
  /// guidance uses zero embeddings instead of the encoded empty prompt.
  bool force_zeros_for_empty_prompt = false;

  /// SDXL: a second text encoder, or a UNet with SDXL's micro-conditioning (once a trainer has released the frozen
  /// text encoders).
  bool is_sdxl() const { return !text_encoder_2.layers.empty() || unet.config().addition_embed_type == "text_time"; }

  std::string prediction_type() const { return scheduler_config.value("prediction_type", std::string("epsilon")); }
  /// Downsampling factor between pixels and latents (8 for SD).
  int vae_scale() const { return vae.config().scale(); }
};

/// Keeps the frozen Linear and Conv2d weights of the text encoder, UNet and VAE in `dtype` (F16 / BF16; F32 widens
/// them back): nn::set_weight_storage on each network. The programs' --weights-dtype.
template <class T>
nn::StorageReport set_weight_storage(StableDiffusion<T, Cpu>& sd, DType dtype) {
  nn::StorageReport total;
  for (nn::StorageReport const r : {nn::set_weight_storage(sd.text_encoder, dtype), nn::set_weight_storage(sd.unet, dtype),
                                    nn::set_weight_storage(sd.vae, dtype),
                                    nn::set_weight_storage(sd.text_encoder_2, dtype)}) {
    total.weights += r.weights;
    total.bytes_saved += r.bytes_saved;
  }
  return total;
}

namespace detail {
namespace fs = std::filesystem;

/// The weights file of a diffusers component folder: `<stem>[.variant].safetensors`, or a sharded index.
/// Returns the shard files (one for an unsharded model).
inline std::vector<std::string> component_weight_files(fs::path const& dir, std::string const& stem,
                                                       std::string const& variant) {
  std::string const base = variant.empty() ? stem : stem + "." + variant;
  if (fs::exists(dir / (base + ".safetensors"))) return {(dir / (base + ".safetensors")).string()};
  fs::path const index = dir / (base + ".safetensors.index.json");
  if (fs::exists(index)) {
    auto j = read_json(index.string());
    std::vector<std::string> files;
    for (auto const& [key, file] : j.at("weight_map").items()) {
      std::string const f = (dir / file.get<std::string>()).string();
      if (std::find(files.begin(), files.end(), f) == files.end()) files.push_back(f);
    }
    return files;
  }
  for (char const* pickle : {".bin", ".ckpt", ".pt"})
    if (fs::exists(dir / (base + pickle)))
      SDLORA_THROW(FormatError, "[load] " << (dir / (base + pickle)).string()
                                          << " is a pickle file, which sdlora never unpickles: convert it to "
                                             ".safetensors (e.g. with diffusers' save_pretrained(safe_serialization="
                                             "True))");
  SDLORA_THROW(IoError, "[load] no " << base << ".safetensors (or sharded index) in " << dir.string());
}

/// LoadOptions::weights_dtype (or, for the VAE, vae_weights_dtype when set) for a model of T: F32 means T's own
/// type (a double model stays double).
template <class T>
DType storage_of(LoadOptions const& options, bool vae = false) {
  DType const d = vae && options.vae_weights_dtype ? *options.vae_weights_dtype : options.weights_dtype;
  SDLORA_EXPECTS(d == DType::F32 || d == DType::F16 || d == DType::BF16,
                 "[load] " << (vae && options.vae_weights_dtype ? "vae_weights_dtype" : "weights_dtype")
                           << " must be F32, F16 or BF16, got " << dtype_name(d));
  return d == DType::F32 ? dtype_of<T>() : d;
}

/// All tensors of several files as one source map (each file must stay alive: kept in `files`).
inline SourceMap sources_of(std::vector<std::string> const& paths, std::vector<std::unique_ptr<io::SafetensorsFile>>& files,
                            std::string const& add_prefix_if_missing = "") {
  SourceMap m;
  for (auto const& p : paths) {
    files.push_back(std::make_unique<io::SafetensorsFile>(p));
    for (auto const& key : files.back()->keys()) {
      std::string name = key;
      // CLIPTextModelWithProjection's text_projection sits beside text_model in every transformers version.
      if (!add_prefix_if_missing.empty() && name.rfind(add_prefix_if_missing, 0) != 0 &&
          name.rfind("text_projection.", 0) != 0)
        name = add_prefix_if_missing + key;
      m[name] = {files.back().get(), KeySource{key}};
    }
  }
  return m;
}
}  // namespace detail

namespace detail {
/// A text encoder of a diffusers folder (`text_encoder` or `text_encoder_2`); `with_projection` when model_index.json
/// names CLIPTextModelWithProjection (also read from config.json's architectures).
template <class T>
ClipTextModel<T, Cpu> load_text_encoder(std::filesystem::path const& dir, std::string const& sub, bool with_projection,
                                        LoadOptions const& options,
                                        std::vector<std::unique_ptr<io::SafetensorsFile>>& files) {
  auto cfg = ClipTextConfig::from_json(read_json((dir / sub / "config.json").string()));
  cfg.with_projection = cfg.with_projection || with_projection;
  ClipTextModel<T, Cpu> text(cfg);
  // transformers 5 writes keys without the "text_model." prefix; 4.x (every SD checkpoint) with it.
  load_parameters<T>(text, sources_of(component_weight_files(dir / sub, "model", options.variant), files, "text_model."),
                     sub + " from " + (dir / sub).string(), {"text_model.embeddings.position_ids"},
                     storage_of<T>(options));
  return text;
}

/// A tokenizer folder when it has vocab.json, else the bundled CLIP vocabulary padded with `default_pad`.
inline tokenizer::ClipTokenizer load_tokenizer(std::filesystem::path const& dir, std::string const& default_pad,
                                               LoadOptions const& options) {
  if (std::filesystem::exists(dir / "vocab.json")) return tokenizer::ClipTokenizer::from_folder(dir.string());
  auto tok = tokenizer::ClipTokenizer::bundled(options.vocab_dir);
  if (!default_pad.empty()) tok.set_pad_token(default_pad);
  return tok;
}
}  // namespace detail

/// Loads a diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/; SDXL also
/// text_encoder_2/ and tokenizer_2/).
template <class T>
StableDiffusion<T, Cpu> load_diffusers_folder(std::string const& path, LoadOptions const& options = {}) {
  namespace fs = std::filesystem;
  fs::path const dir(path);
  StableDiffusion<T, Cpu> sd;
  sd.source = path;
  std::vector<std::unique_ptr<io::SafetensorsFile>> files;
  nlohmann::json const index = fs::exists(dir / "model_index.json") ? read_json((dir / "model_index.json").string())
                                                                     : nlohmann::json::object();
  auto component_class = [&](char const* name) {
    auto it = index.find(name);
    return it != index.end() && it->is_array() && it->size() == 2 && (*it)[1].is_string() ? (*it)[1].get<std::string>()
                                                                                          : std::string();
  };

  auto const ucfg = UNetConfig::from_json(read_json((dir / "unet" / "config.json").string()));
  sd.unet = UNet2DConditionModel<T, Cpu>(ucfg);
  load_parameters<T>(sd.unet,
                     detail::sources_of(detail::component_weight_files(dir / "unet", "diffusion_pytorch_model",
                                                                       options.variant), files),
                     "unet from " + (dir / "unet").string(), {}, detail::storage_of<T>(options));

  sd.text_encoder = detail::load_text_encoder<T>(dir, "text_encoder",
                                                 component_class("text_encoder") == "CLIPTextModelWithProjection",
                                                 options, files);
  if (fs::exists(dir / "text_encoder_2" / "config.json")) {
    sd.text_encoder_2 = detail::load_text_encoder<T>(dir, "text_encoder_2", component_class("text_encoder_2") !=
                                                                                "CLIPTextModel", options, files);
    if (!sd.text_encoder_2.config().with_projection)
      SDLORA_THROW(FormatError, "[load] " << (dir / "text_encoder_2").string()
                                          << ": SDXL's second text encoder needs its text projection "
                                             "(CLIPTextModelWithProjection)");
  }

  if (options.load_vae) {
    auto const vcfg = VaeConfig::from_json(read_json((dir / "vae" / "config.json").string()));
    sd.vae = AutoencoderKL<T, Cpu>(vcfg);
    load_parameters<T>(sd.vae,
                       detail::sources_of(detail::component_weight_files(dir / "vae", "diffusion_pytorch_model",
                                                                         options.variant), files),
                       "vae from " + (dir / "vae").string(), {}, detail::storage_of<T>(options, true));
  }
  sd.tokenizer = detail::load_tokenizer(dir / "tokenizer", "", options);
  fs::path const sched = dir / "scheduler" / "scheduler_config.json";
  sd.scheduler_config = fs::exists(sched) ? read_json(sched.string()) : sd15_scheduler_config();
  sd.base_model = ucfg.cross_attention_dim == 1024 ? "sd2" : "sd1";
  if (sd.is_sdxl()) {
    sd.tokenizer_2 = detail::load_tokenizer(dir / "tokenizer_2", "!", options);  // OpenCLIP pads with "!"
    sd.base_model = "sdxl";
  }
  if (sd.is_sdxl() != (ucfg.addition_embed_type == "text_time"))
    SDLORA_THROW(FormatError, "[load] " << path << ": "
                                        << (sd.is_sdxl() ? "text_encoder_2/ is present but the UNet has no text_time "
                                                           "conditioning"
                                                         : "the UNet is SDXL-shaped (addition_embed_type \"text_time\") "
                                                           "but text_encoder_2/ is missing"));
  auto const zeros = index.find("force_zeros_for_empty_prompt");
  sd.force_zeros_for_empty_prompt = zeros != index.end() && zeros->is_boolean() ? zeros->get<bool>() : sd.is_sdxl();
  return sd;
}

/// Loads an original single-file checkpoint (A1111 / ComfyUI `.safetensors`): SD 1.x, 2.x (OpenCLIP) or SDXL (SGM
/// layout with two text encoders), detected from the keys.
template <class T>
StableDiffusion<T, Cpu> load_single_file(std::string const& path, LoadOptions const& options = {}) {
  namespace fs = std::filesystem;
  io::SafetensorsFile file(path);
  bool has_unet = false, openclip = false, sdxl = false;
  for (auto const& key : file.keys()) {
    has_unet = has_unet || key.rfind(kLdmUnetPrefix, 0) == 0;
    openclip = openclip || key.rfind(kLdmOpenClipPrefix, 0) == 0;
    sdxl = sdxl || key.rfind(kSdxlOpenClipPrefix, 0) == 0 || key.rfind(kSdxlClipPrefix, 0) == 0;
  }
  if (!has_unet)
    SDLORA_THROW(FormatError, "[load] " << path << " has no 'model.diffusion_model.*' tensors: not a Stable Diffusion "
                                                   "single-file checkpoint (is it a LoRA or a VAE?)");
  StableDiffusion<T, Cpu> sd;
  sd.source = path;
  sd.base_model = sdxl ? "sdxl" : openclip ? "sd2" : "sd1";
  fs::path const cfg(options.config_dir);
  bool const has_cfg = !options.config_dir.empty();
  auto read_cfg = [&](char const* sub) { return read_json((cfg / sub / "config.json").string()); };
  auto const ucfg = has_cfg ? UNetConfig::from_json(read_cfg("unet"))
                            : (sdxl ? UNetConfig::sdxl() : openclip ? UNetConfig::sd21(true) : UNetConfig::sd15());
  auto const vcfg = has_cfg ? VaeConfig::from_json(read_cfg("vae")) : (sdxl ? VaeConfig::sdxl() : VaeConfig::sd());
  auto const tcfg = has_cfg ? ClipTextConfig::from_json(read_cfg("text_encoder"))
                            : (sdxl ? ClipTextConfig::sdxl_l() : openclip ? ClipTextConfig::sd21() : ClipTextConfig::sd15());
  sd.unet = UNet2DConditionModel<T, Cpu>(ucfg);
  sd.text_encoder = ClipTextModel<T, Cpu>(tcfg);
  int text_2_layers = 0;
  if (sdxl) {
    auto tcfg2 = has_cfg ? ClipTextConfig::from_json(read_cfg("text_encoder_2")) : ClipTextConfig::sdxl_g();
    tcfg2.with_projection = true;
    text_2_layers = tcfg2.num_hidden_layers;
    sd.text_encoder_2 = ClipTextModel<T, Cpu>(tcfg2);
  }
  if (options.load_vae) sd.vae = AutoencoderKL<T, Cpu>(vcfg);

  SourceMap unet_src, vae_src, text_src, text_2_src;
  std::vector<std::string> unknown;
  auto add_clip = [&](std::string const& key, std::string const& prefix) {
    std::string name = key.substr(prefix.size());
    if (name.rfind("text_model.", 0) != 0) name = "text_model." + name;
    if (name.find("position_ids") != std::string::npos) ++sd.ignored_keys;
    else text_src[name] = {&file, KeySource{key}};
  };
  for (auto const& key : file.keys()) {
    if (key.rfind(kLdmUnetPrefix, 0) == 0) {
      std::string const name = unet_key_from_ldm(key.substr(std::string(kLdmUnetPrefix).size()), ucfg);
      if (name.empty()) unknown.push_back(key);
      else unet_src[name] = {&file, KeySource{key}};
    } else if (key.rfind(kLdmVaePrefix, 0) == 0) {
      bool squeeze = false;
      std::string const name = vae_key_from_ldm(key.substr(std::string(kLdmVaePrefix).size()), vcfg, squeeze);
      if (name.empty()) unknown.push_back(key);
      else vae_src[name] = {&file, KeySource{key, squeeze ? KeySource::Take::Squeeze : KeySource::Take::Whole}};
    } else if (key.rfind(kLdmClipPrefix, 0) == 0) {
      add_clip(key, kLdmClipPrefix);
    } else if (key.rfind(kSdxlClipPrefix, 0) == 0) {
      add_clip(key, kSdxlClipPrefix);
    } else if (key.rfind(kLdmOpenClipPrefix, 0) == 0) {
      auto mapped = clip_keys_from_openclip(key.substr(std::string(kLdmOpenClipPrefix).size()), tcfg.num_hidden_layers);
      if (mapped.empty()) ++sd.ignored_keys;  // text_projection, logit_scale, the layer SD 2.x drops
      for (auto& [name, src] : mapped) text_src[name] = {&file, src};
    } else if (key.rfind(kSdxlOpenClipPrefix, 0) == 0) {
      auto mapped = clip_keys_from_openclip(key.substr(std::string(kSdxlOpenClipPrefix).size()), text_2_layers,
                                            kSdxlOpenClipPrefix, true);
      if (mapped.empty()) ++sd.ignored_keys;  // logit_scale
      for (auto& [name, src] : mapped) text_2_src[name] = {&file, src};
    } else {
      ++sd.ignored_keys;  // model_ema.*, alphas_cumprod, betas, ...
    }
  }
  if (!unknown.empty()) {
    std::ostringstream os;
    os << "[load] " << path << ": " << unknown.size() << " UNet/VAE keys have no diffusers counterpart:";
    for (std::size_t i = 0; i < unknown.size() && i < 20; ++i) os << "\n    " << unknown[i];
    throw FormatError(os.str());
  }
  DType const storage = detail::storage_of<T>(options);
  load_parameters<T>(sd.unet, unet_src, "unet from " + path, {}, storage);
  load_parameters<T>(sd.text_encoder, text_src, "text_encoder from " + path, {}, storage);
  if (sdxl) load_parameters<T>(sd.text_encoder_2, text_2_src, "text_encoder_2 from " + path, {}, storage);
  if (options.load_vae) load_parameters<T>(sd.vae, vae_src, "vae from " + path, {}, detail::storage_of<T>(options, true));
  else sd.ignored_keys += vae_src.size();

  sd.tokenizer = tokenizer::ClipTokenizer::bundled(options.vocab_dir);
  if (openclip) sd.tokenizer.set_pad_token("!");  // SD 2.x's OpenCLIP tokenizer pads with "!" (id 0)
  if (sdxl) {
    sd.tokenizer_2 = tokenizer::ClipTokenizer::bundled(options.vocab_dir);
    sd.tokenizer_2.set_pad_token("!");
    sd.force_zeros_for_empty_prompt = true;
  }
  fs::path const sched = cfg / "scheduler" / "scheduler_config.json";
  sd.scheduler_config = has_cfg && fs::exists(sched)
                            ? read_json(sched.string())
                            : (sdxl ? sdxl_scheduler_config() : openclip ? sd21_scheduler_config() : sd15_scheduler_config());
  if (!options.prediction_type.empty()) sd.scheduler_config["prediction_type"] = options.prediction_type;
  return sd;
}

/// Loads a replacement VAE (diffusers' `vae=` argument; e.g. the community SDXL fp16-fix VAE): a diffusers
/// AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors), or one `.safetensors` file in the diffusers
/// layout (encoder.down_blocks.*) or the original layout (encoder.down.*, with or without "first_stage_model.").
/// A file has no config: `fallback` (the checkpoint's own VAE config) is used, the VAE being a drop-in.
template <class T>
AutoencoderKL<T, Cpu> load_vae(std::string const& path, VaeConfig const& fallback) {
  namespace fs = std::filesystem;
  if (!fs::exists(path)) SDLORA_THROW(IoError, "[load] VAE " << path << " does not exist");
  std::vector<std::unique_ptr<io::SafetensorsFile>> files;
  if (fs::is_directory(path)) {
    fs::path const dir(path);
    auto const cfg = fs::exists(dir / "config.json") ? VaeConfig::from_json(read_json((dir / "config.json").string()))
                                                     : fallback;
    AutoencoderKL<T, Cpu> vae(cfg);
    load_parameters<T>(vae, detail::sources_of(detail::component_weight_files(dir, "diffusion_pytorch_model", ""), files),
                       "vae from " + path);
    return vae;
  }
  io::SafetensorsFile file(path);
  AutoencoderKL<T, Cpu> vae(fallback);
  SourceMap src;
  std::vector<std::string> unknown;
  for (auto const& key : file.keys()) {
    std::string k = key;
    if (k.rfind(kLdmVaePrefix, 0) == 0) k = k.substr(std::string(kLdmVaePrefix).size());
    if (k.find("_blocks.") != std::string::npos || k.find("mid_block.") != std::string::npos ||
        k.find("conv_norm_out") != std::string::npos) {
      src[k] = {&file, KeySource{key}};  // diffusers names already
      continue;
    }
    bool squeeze = false;
    std::string const name = vae_key_from_ldm(k, fallback, squeeze);
    if (name.empty()) unknown.push_back(key);
    else src[name] = {&file, KeySource{key, squeeze ? KeySource::Take::Squeeze : KeySource::Take::Whole}};
  }
  if (!unknown.empty())
    SDLORA_THROW(FormatError, "[load] VAE " << path << ": " << unknown.size() << " keys are not VAE weights, e.g. '"
                                            << unknown.front() << "'");
  load_parameters<T>(vae, src, "vae from " + path);
  return vae;
}

/// Loads a checkpoint from a diffusers folder or a single `.safetensors` file; `.ckpt` / `.pt` pickles are refused
/// with a message to convert them.
template <class T>
StableDiffusion<T, Cpu> load_stable_diffusion(std::string const& path, LoadOptions const& options = {}) {
  namespace fs = std::filesystem;
  if (!fs::exists(path)) SDLORA_THROW(IoError, "[load] " << path << " does not exist");
  if (fs::is_directory(path)) {
    if (!fs::exists(fs::path(path) / "unet" / "config.json"))
      SDLORA_THROW(FormatError, "[load] " << path << " is a folder without unet/config.json: not a diffusers "
                                                     "Stable Diffusion folder");
    return load_diffusers_folder<T>(path, options);
  }
  std::string const ext = fs::path(path).extension().string();
  if (ext == ".ckpt" || ext == ".pt" || ext == ".pth" || ext == ".bin")
    SDLORA_THROW(FormatError, "[load] " << path << " is a pickle checkpoint, which sdlora never unpickles (it can run "
                                                   "code): convert it to .safetensors first");
  return load_single_file<T>(path, options);
}

}  // namespace sdlora::models
