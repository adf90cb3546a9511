/// @file init.hpp
/// @brief Random initial weights for a network built from its configuration, for training from scratch: PyTorch's
/// default layer initialisation (what diffusers' UNet2DConditionModel and AutoencoderKL get when built from a config)
/// and the CLIP text model's embedding initialisation; random_stable_diffusion builds a whole model from a folder of
/// diffusers configs. Include <sdlora/sdlora.hpp> instead.
///
/// The rule goes by parameter name and shape, so it covers every network of the library:
///  - a weight of rank >= 2 (Linear (out, in), Conv2d (out, in, kh, kw)): U(-b, b), b = 1 / sqrt(fan_in), fan_in =
///    in * kh * kw — torch's kaiming_uniform_(a = sqrt(5)) of nn.Linear / nn.Conv2d;
///  - its bias: U(-b, b) with the same bound (torch's reset_parameters);
///  - a weight of rank 1 (GroupNorm, LayerNorm): 1, its bias 0;
///  - an embedding table (`*embedding.weight`, rank 2): N(0, 0.02) for tokens, N(0, 0.01) for positions
///    (transformers' CLIPTextEmbeddings init with initializer_factor 1).
/// Every parameter draws from its own generator, seeded from `seed` and the parameter's name, so the values do not
/// depend on the visiting order or on which other networks are initialised.
#pragma once

#include <cmath>    // std::sqrt
#include <cstdint>  // std::uint64_t
#include <map>      // std::map
#include <string>   // std::string

#include <sdlora/core/error.hpp>         // SDLORA_THROW
#include <sdlora/core/rng.hpp>           // TorchGenerator
#include <sdlora/models/checkpoint.hpp>  // StableDiffusion, LoadOptions, detail::load_tokenizer
#include <sdlora/nn/module.hpp>          // nn::for_each_parameter

namespace sdlora::models {

namespace detail {

/// FNV-1a of a parameter name mixed with the seed: each parameter's own stream.
inline std::uint64_t init_seed(std::uint64_t seed, std::string const& name) {
  std::uint64_t h = 1469598103934665603ull ^ (seed * 0x9E3779B97F4A7C15ull);
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h & 0x7FFFFFFFFFFFFFFFull;  // torch.manual_seed takes a non-negative int64
}

inline bool ends_with(std::string const& s, std::string const& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace detail

/// Sets every parameter of `module` to its random initial value (the rules above). Parameters held in 16 bits are
/// refused (initialise before narrowing). Returns the number of parameters set.
template <class T, class Module>
std::size_t init_random(Module& module, std::uint64_t seed) {
  // fan-in of each weight, for its bias.
  std::map<std::string, Index> fan_in;
  nn::for_each_parameter(module, [&](std::string const& name, nn::Parameter<T, Cpu>& p) {
    if (p.is_16bit())
      SDLORA_THROW(ConfigError, "[init] parameter '" << name << "' is held in 16 bits: initialise in full precision");
    Shape const& s = p.value.shape();
    if (detail::ends_with(name, ".weight") && s.rank() >= 2) {
      Index f = 1;
      for (Index d = 1; d < s.rank(); ++d) f *= s[d];
      fan_in[name.substr(0, name.size() - 7)] = f;
    }
  });
  std::size_t count = 0;
  nn::for_each_parameter(module, [&](std::string const& name, nn::Parameter<T, Cpu>& p) {
    TorchGenerator g(detail::init_seed(seed, name));
    Tensor<T, Cpu>& v = p.value;
    Shape const& s = v.shape();
    auto uniform = [&](double bound) {
      auto u = g.rand(s);  // [0, 1)
      for (Index i = 0; i < v.numel(); ++i) v(i) = T((2.0 * double(u(i)) - 1.0) * bound);
    };
    bool const is_weight = detail::ends_with(name, ".weight");
    bool const is_bias = detail::ends_with(name, ".bias");
    std::string const owner = name.substr(0, name.rfind('.'));
    if (is_weight && s.rank() == 2 && detail::ends_with(owner, "embedding")) {
      double const std_dev = detail::ends_with(owner, "position_embedding") ? 0.01 : 0.02;
      auto n = g.randn(s);
      for (Index i = 0; i < v.numel(); ++i) v(i) = T(double(n(i)) * std_dev);
    } else if (is_weight && s.rank() >= 2) {
      uniform(1.0 / std::sqrt(double(fan_in.at(owner))));
    } else if (is_bias && fan_in.count(owner)) {
      uniform(1.0 / std::sqrt(double(fan_in.at(owner))));
    } else if (is_weight && s.rank() == 1) {
      v.fill(T(1));
    } else if (is_bias) {
      v.fill_zero();
    } else {
      SDLORA_THROW(ConfigError, "[init] no initialisation rule for parameter '" << name << "' of shape " << s);
    }
    ++count;
  });
  return count;
}

/// A Stable Diffusion 1.x-shaped model with random weights from a folder laid out like a diffusers checkpoint but
/// holding only configurations: unet/config.json, vae/config.json, text_encoder/config.json, optionally
/// scheduler/scheduler_config.json (default: SD 1.5's) and tokenizer/ (default: the bundled CLIP vocabulary). Each
/// network draws from its own seed (seed + 1, + 2, + 3).
template <class T>
StableDiffusion<T, Cpu> random_stable_diffusion(std::string const& config_dir, std::uint64_t seed,
                                                LoadOptions const& options = {}) {
  namespace fs = std::filesystem;
  fs::path const dir(config_dir);
  for (char const* sub : {"unet", "vae", "text_encoder"})
    if (!fs::exists(dir / sub / "config.json"))
      SDLORA_THROW(IoError, "[init] " << (dir / sub / "config.json").string() << " does not exist");
  StableDiffusion<T, Cpu> sd;
  sd.source = config_dir;
  auto const ucfg = UNetConfig::from_json(read_json((dir / "unet" / "config.json").string()));
  if (ucfg.addition_embed_type == "text_time")
    SDLORA_THROW(ConfigError, "[init] " << config_dir << ": an SDXL-shaped UNet needs two text encoders; "
                                           "random_stable_diffusion builds SD 1.x / 2.x shapes");
  sd.unet = UNet2DConditionModel<T, Cpu>(ucfg);
  sd.vae = AutoencoderKL<T, Cpu>(VaeConfig::from_json(read_json((dir / "vae" / "config.json").string())));
  sd.text_encoder = ClipTextModel<T, Cpu>(ClipTextConfig::from_json(read_json((dir / "text_encoder" / "config.json").string())));
  init_random<T>(sd.unet, seed + 1);
  init_random<T>(sd.vae, seed + 2);
  init_random<T>(sd.text_encoder, seed + 3);
  sd.tokenizer = detail::load_tokenizer(dir / "tokenizer", "", options);
  fs::path const sched = dir / "scheduler" / "scheduler_config.json";
  sd.scheduler_config = fs::exists(sched) ? read_json(sched.string()) : sd15_scheduler_config();
  sd.base_model = ucfg.cross_attention_dim == 1024 ? "sd2" : "sd1";
  return sd;
}

}  // namespace sdlora::models
