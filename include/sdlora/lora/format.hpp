/// @file format.hpp
/// @brief LoRA files: reading kohya (A1111 / ComfyUI / sd-scripts, LyCORIS LoHa / LoKr included) and diffusers / PEFT
/// `.safetensors` into one neutral list of {component, module, down, up, alpha}, applying it to a module tree (as
/// adapters or merged into the weights), and writing both layouts with their metadata. Key layouts: docs/formats.md.
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <array>     // std::array
#include <cmath>     // std::sqrt
#include <cstdint>   // std::uint64_t
#include <functional>  // std::function
#include <map>       // std::map
#include <optional>  // std::optional
#include <regex>     // std::regex, std::smatch
#include <set>       // std::set
#include <sstream>   // std::ostringstream
#include <string>    // std::string
#include <utility>   // std::move
#include <vector>    // std::vector

#include <nlohmann/json.hpp>  // nlohmann::json

#include <sdlora/core/dtype.hpp>      // DType, dtype_name
#include <sdlora/core/error.hpp>      // FormatError
#include <sdlora/core/json.hpp>       // check_json_depth
#include <sdlora/core/tensor.hpp>     // Tensor, convert
#include <sdlora/io/safetensors.hpp>  // io::SafetensorsFile, io::SafetensorsWriter
#include <sdlora/lora/inject.hpp>     // add_adapter, for_each_adapter, AdaptableLeaf
#include <sdlora/lora/lycoris.hpp>    // LycorisFactors, add_lycoris_adapter, merge_lycoris
#include <sdlora/lora/names.hpp>      // flatten, guess_dotted, ldm_unet_to_diffusers, UnetLayout
#include <sdlora/ops/gemm.hpp>        // ops::gemm

namespace sdlora::lora {

/// The layout a file was read from.
enum class LoraFormat { Kohya, Peft };

/// One LoRA layer, independent of the file layout.
struct LoraEntry {
  std::string component;  ///< "unet", "text_encoder", "text_encoder_2", or "" (a bare module tree)
  std::string module;     ///< dotted module path inside the component (best effort for kohya names, see names.hpp)
  std::string flat;       ///< the same path with dots as underscores: what apply() matches against the model
  std::string key;        ///< the file key of the down factor, for messages
  Tensor<float> down;     ///< (r, in) or (r, in, kh, kw)   ("lora_down" / "lora_A")
  Tensor<float> up;       ///< (out, r) or (out, r, 1, 1)   ("lora_up" / "lora_B")
  double alpha = 0;       ///< alpha; the file's value, or rank when it has none
  bool has_alpha = false; ///< whether the file stored alpha (a kohya `.alpha` tensor or PEFT metadata)
  bool rslora = false;    ///< scale alpha / sqrt(r) (PEFT use_rslora)
  DType dtype = DType::F32;  ///< how the factors were stored
  std::optional<LycorisFactors> lycoris;  ///< a LyCORIS LoHa / LoKr layer (kohya files): its factors; down/up empty

  Index rank() const { return lycoris ? lycoris->rank() : down.dim(0); }
  bool conv() const { return !lycoris && down.rank() == 4; }
  /// multiplier * alpha / rank (or / sqrt(rank)); LyCORIS layers: multiplier * LycorisFactors::scale().
  double scale(double multiplier = 1.0) const {
    if (lycoris) return multiplier * lycoris->scale();
    return multiplier * alpha / (rslora ? std::sqrt(double(rank())) : double(rank()));
  }
};

/// The content of a LoRA file.
struct LoraFile {
  std::string path;
  LoraFormat format = LoraFormat::Kohya;
  std::vector<LoraEntry> entries;
  std::map<std::string, std::string> metadata;
  std::vector<std::string> unknown_keys;  ///< keys that belong to no supported layout (DoRA scales, LoHa, ...)

  void append(LoraFile other) {
    for (auto& e : other.entries) entries.push_back(std::move(e));
    for (auto& k : other.unknown_keys) unknown_keys.push_back(std::move(k));
    for (auto& [k, v] : other.metadata) metadata.emplace(k, v);
  }
};

namespace detail {

inline bool ends_with(std::string const& s, std::string const& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
inline bool starts_with(std::string const& s, std::string const& prefix) { return s.rfind(prefix, 0) == 0; }

/// kohya prefix -> component.
/// A LoRA layer's factors must chain: down (r, in[, kh, kw]) then up (out, r[, 1, 1]). One FormatError naming the
/// keys otherwise (found by lora_fuzz: an up of the wrong rank would only fail later, inside a GEMM).
inline void check_factor_shapes(std::string const& path, std::string const& down_key, Tensor<float> const& down,
                                std::string const& up_key, Tensor<float> const& up) {
  bool const ok = (down.rank() == 2 || down.rank() == 4) && (up.rank() == 2 || up.rank() == 4) && down.dim(0) > 0 &&
                  up.dim(1) == down.dim(0);
  if (!ok)
    SDLORA_THROW(FormatError, "[lora.read] " << path << ": '" << down_key << "' " << down.shape() << " and '" << up_key
                                             << "' " << up.shape() << " are not a down (r, in) / up (out, r) pair");
}

inline std::optional<std::pair<std::string, std::string>> kohya_component(std::string const& base) {
  static std::array<std::pair<char const*, char const*>, 4> const kPrefixes = {
      {{"lora_unet_", "unet"}, {"lora_te1_", "text_encoder"}, {"lora_te2_", "text_encoder_2"},
       {"lora_te_", "text_encoder"}}};
  for (auto const& [p, c] : kPrefixes)
    if (starts_with(base, p)) return std::pair<std::string, std::string>{c, base.substr(std::string(p).size())};
  return std::nullopt;
}

/// The LyCORIS key suffixes read (LoHa, LoKr) and those refused with a FormatError naming the key.
inline constexpr std::array<char const*, 13> kLycorisSuffixes = {
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "lokr_w1",
    "lokr_w1_a", "lokr_w1_b", "lokr_w2",   "lokr_w2_a", "lokr_w2_b", "lokr_t2"};
inline bool lycoris_first_key(std::string const& key) {
  return ends_with(key, ".hada_w1_a") || ends_with(key, ".lokr_w1") || ends_with(key, ".lokr_w1_a");
}

/// The tensors of the LyCORIS layer `base` (LoHa when it has hada_w1_a, else LoKr). Missing partners, DoRA scales
/// and lokr_t1 are FormatErrors naming the key.
inline LycorisFactors read_lycoris_layer(io::SafetensorsFile const& f, std::string const& base,
                                         std::set<std::string>& used) {
  LycorisFactors l;
  l.algo = f.contains(base + ".hada_w1_a") ? LycorisAlgo::LoHa : LycorisAlgo::LoKr;
  for (char const* suffix : kLycorisSuffixes)
    if (f.contains(base + "." + suffix)) {
      Tensor<float> t = f.load<float>(base + "." + suffix);
      if (t.rank() < 2 || t.rank() > 4 || t.numel() == 0)
        SDLORA_THROW(FormatError, "[lora.read] " << f.path() << ": '" << base << "." << suffix
                                                 << "' must be a non-empty tensor of 2 to 4 dimensions, got "
                                                 << t.shape());
      l.tensors[suffix] = std::move(t);
      used.insert(base + "." + suffix);
    }
  auto require = [&](char const* have, char const* need) {
    if (l.has(have) && !l.has(need))
      SDLORA_THROW(FormatError, "[lora.read] " << f.path() << ": '" << base << "." << have << "' has no '" << base
                                               << "." << need << "'");
  };
  auto refuse = [&](char const* suffix, char const* why) {
    if (f.contains(base + "." + suffix))
      SDLORA_THROW(FormatError, "[lora.read] " << f.path() << ": '" << base << "." << suffix << "': " << why);
  };
  refuse("dora_scale", "DoRA-decomposed LyCORIS layers (dora_wd) are not supported");
  refuse("lokr_t1", "a Tucker core on the first LoKr factor is not supported (LyCORIS never writes one)");
  if (l.algo == LycorisAlgo::LoHa) {
    for (char const* k : {"hada_w1_b", "hada_w2_a", "hada_w2_b"}) require("hada_w1_a", k);
    require("hada_t1", "hada_t2");
    require("hada_t2", "hada_t1");
    for (char const* k : {"lokr_w1", "lokr_w1_a", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"})
      refuse(k, "a LoKr key in a LoHa layer");
  } else {
    require("lokr_w1_a", "lokr_w1_b");
    require("lokr_w1_b", "lokr_w1_a");
    require("lokr_w2_a", "lokr_w2_b");
    require("lokr_w2_b", "lokr_w2_a");
    require("lokr_t2", "lokr_w2_a");
    if (!l.has("lokr_w2") && !l.has("lokr_w2_a"))
      SDLORA_THROW(FormatError, "[lora.read] " << f.path() << ": '" << base << "' has neither '" << base
                                               << ".lokr_w2' nor '" << base << ".lokr_w2_a'");
    if (l.has("lokr_w1") == l.has("lokr_w1_a") || l.has("lokr_w2") == l.has("lokr_w2_a"))
      SDLORA_THROW(FormatError, "[lora.read] " << f.path() << ": '" << base
                                               << "' has both a full and a decomposed LoKr factor");
    for (char const* k : {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"})
      refuse(k, "a LoHa key in a LoKr layer");
  }
  if (f.contains(base + ".alpha")) {
    auto a = f.load<float>(base + ".alpha");
    SDLORA_EXPECTS(a.numel() == 1, "[lora.read] " << f.path() << ": '" << base << ".alpha' must be a scalar, got "
                                                  << a.shape());
    l.alpha = double(a(0));
    used.insert(base + ".alpha");
  }
  return l;
}

inline LoraFile read_kohya(io::SafetensorsFile const& f, UnetLayout const& layout) {
  LoraFile out;
  out.path = f.path();
  out.format = LoraFormat::Kohya;
  out.metadata = f.metadata();
  std::set<std::string> used;
  // An entry named from its kohya layer: component, module (LDM UNet names mapped with `layout`), key.
  auto named_entry = [&](std::pair<std::string, std::string> const& comp, std::string const& key) {
    LoraEntry e;
    e.component = comp.first;
    e.flat = comp.second;
    if (e.component == "unet")
      if (auto mapped = ldm_unet_to_diffusers(e.flat, layout)) e.flat = *mapped;
    e.module = guess_dotted(e.flat);
    e.key = key;
    return e;
  };
  for (auto const& key : f.keys()) {
    if (!ends_with(key, ".lora_down.weight")) continue;
    std::string const base = key.substr(0, key.size() - std::string(".lora_down.weight").size());
    auto comp = kohya_component(base);
    std::string const up_key = base + ".lora_up.weight", alpha_key = base + ".alpha";
    if (!comp) continue;  // reported as unknown below
    if (!f.contains(up_key))
      SDLORA_THROW(FormatError, "[lora.read] " << f.path() << ": '" << key << "' has no '" << up_key << "'");
    LoraEntry e = named_entry(*comp, key);
    e.down = f.load<float>(key);
    e.up = f.load<float>(up_key);
    check_factor_shapes(f.path(), key, e.down, up_key, e.up);
    e.dtype = f.info(key).dtype;
    used.insert(key);
    used.insert(up_key);
    if (f.contains(alpha_key)) {
      auto a = f.load<float>(alpha_key);
      SDLORA_EXPECTS(a.numel() == 1, "[lora.read] " << f.path() << ": '" << alpha_key << "' must be a scalar, got "
                                                    << a.shape());
      e.alpha = double(a(0));
      e.has_alpha = true;
      used.insert(alpha_key);
    } else {
      e.alpha = double(e.rank());  // missing alpha: alpha = rank (scale 1)
    }
    out.entries.push_back(std::move(e));
  }
  for (auto const& key : f.keys()) {  // LyCORIS LoHa / LoKr layers
    if (!lycoris_first_key(key)) continue;
    std::string const base = key.substr(0, key.rfind('.'));
    auto comp = kohya_component(base);
    if (!comp) continue;  // reported as unknown below
    LoraEntry e = named_entry(*comp, key);
    e.dtype = f.info(key).dtype;
    e.lycoris = read_lycoris_layer(f, base, used);
    e.has_alpha = e.lycoris->alpha.has_value();
    e.alpha = e.lycoris->alpha.value_or(double(e.rank()));
    out.entries.push_back(std::move(e));
  }
  for (auto const& key : f.keys())
    if (!used.count(key)) out.unknown_keys.push_back(key);
  return out;
}

/// PEFT LoraConfig fields for one component, from the `lora_adapter_metadata` JSON (plain or "<component>."-
/// prefixed as diffusers' save_lora_weights writes it).
struct PeftConfig {
  std::optional<double> lora_alpha;
  std::map<std::string, double> alpha_pattern;
  bool use_rslora = false;
};
inline PeftConfig peft_config(nlohmann::json const& meta, std::string const& component) {
  PeftConfig c;
  auto field = [&](std::string const& name) -> nlohmann::json const* {
    std::string const prefixed = component.empty() ? name : component + "." + name;
    if (meta.contains(prefixed)) return &meta[prefixed];
    if (meta.contains(name)) return &meta[name];
    return nullptr;
  };
  if (auto const* a = field("lora_alpha"); a && a->is_number()) c.lora_alpha = a->get<double>();
  if (auto const* p = field("alpha_pattern"); p && p->is_object())
    for (auto const& [k, v] : p->items())
      if (v.is_number()) c.alpha_pattern[k] = v.get<double>();
  if (auto const* r = field("use_rslora"); r && r->is_boolean()) c.use_rslora = r->get<bool>();
  return c;
}

/// Normalises one diffusers / PEFT key into (component, module, is_down); false for keys of no known layout.
inline bool parse_peft_key(std::string const& key, std::string& component, std::string& module, bool& down) {
  static std::regex const kLayouts[] = {
      std::regex(R"(^(.*)\.lora_(A|B)(?:\.[^.]+)?\.weight$)"),              // PEFT, with or without adapter name
      std::regex(R"(^(.*)\.lora(?:_linear_layer)?\.(down|up)\.weight$)"),  // diffusers LoRACompatible / te layers
      std::regex(R"(^(.*?)(?:\.processor)?\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$)"),  // attn procs
  };
  std::smatch m;
  std::string path;
  bool attn_procs = false;
  if (std::regex_match(key, m, kLayouts[0])) {
    path = m[1];
    down = m[2] == "A";
  } else if (std::regex_match(key, m, kLayouts[1])) {
    path = m[1];
    down = m[2] == "down";
  } else if (std::regex_match(key, m, kLayouts[2])) {
    std::string const owner = m[1], proj = m[2];
    bool const clip = ends_with(owner, "self_attn");  // old text-encoder procs: to_q_lora on q_proj
    std::string leaf = proj == "to_out" ? (clip ? "out_proj" : "to_out.0") : proj;
    if (clip && proj != "to_out") leaf = proj.substr(3) + "_proj";
    path = owner + "." + leaf;
    down = m[3] == "down";
    attn_procs = !clip;
  } else {
    return false;
  }
  component.clear();
  for (char const* c : {"unet.", "text_encoder.", "text_encoder_2.", "transformer.", "base_model.model."})
    if (starts_with(path, c)) {
      component = std::string(c) == "base_model.model." ? "" : std::string(c).substr(0, std::string(c).size() - 1);
      path = path.substr(std::string(c).size());
      break;
    }
  if (attn_procs && component.empty() && path.find('.') != std::string::npos &&
      !starts_with(key, "base_model.model."))
    component = "unet";  // diffusers' old save_attn_procs files carry UNet module names without a prefix
  module = path;
  return true;
}

inline LoraFile read_peft(io::SafetensorsFile const& f) {
  LoraFile out;
  out.path = f.path();
  out.format = LoraFormat::Peft;
  out.metadata = f.metadata();
  nlohmann::json meta = nlohmann::json::object();
  if (auto it = out.metadata.find("lora_adapter_metadata"); it != out.metadata.end()) {
    check_json_depth(it->second, "[lora.read] " + f.path() + ": metadata 'lora_adapter_metadata'");
    try {
      meta = nlohmann::json::parse(it->second);
    } catch (nlohmann::json::exception const& e) {
      SDLORA_THROW(FormatError, "[lora.read] " << f.path() << ": metadata 'lora_adapter_metadata' is not JSON: "
                                               << e.what());
    }
  }
  struct Pair {
    std::string down_key, up_key;
  };
  std::map<std::pair<std::string, std::string>, Pair> layers;  // (component, module) -> keys, sorted
  std::vector<std::pair<std::string, std::string>> order;
  std::set<std::string> used;
  for (auto const& key : f.keys()) {
    std::string component, module;
    bool down = false;
    if (!parse_peft_key(key, component, module, down)) continue;
    auto id = std::make_pair(component, module);
    if (!layers.count(id)) order.push_back(id);
    (down ? layers[id].down_key : layers[id].up_key) = key;
  }
  for (auto const& id : order) {
    Pair const& p = layers[id];
    if (p.down_key.empty() || p.up_key.empty())
      SDLORA_THROW(FormatError, "[lora.read] " << f.path() << ": '" << (p.down_key.empty() ? p.up_key : p.down_key)
                                               << "' has no matching " << (p.down_key.empty() ? "down" : "up")
                                               << " factor");
    LoraEntry e;
    e.component = id.first;
    e.module = id.second;
    e.flat = flatten(e.module);
    e.key = p.down_key;
    e.down = f.load<float>(p.down_key);
    e.up = f.load<float>(p.up_key);
    check_factor_shapes(f.path(), p.down_key, e.down, p.up_key, e.up);
    e.dtype = f.info(p.down_key).dtype;
    used.insert(p.down_key);
    used.insert(p.up_key);
    // alpha: a "<module>.alpha" tensor, else alpha_pattern / lora_alpha of the metadata, else rank.
    std::string const prefix = e.component.empty() ? "" : e.component + ".";
    std::string const alpha_key = prefix + e.module + ".alpha";
    PeftConfig const cfg = peft_config(meta, e.component);
    e.rslora = cfg.use_rslora;
    e.alpha = double(e.rank());
    if (f.contains(alpha_key)) {
      e.alpha = double(f.load<float>(alpha_key)(0));
      e.has_alpha = true;
      used.insert(alpha_key);
    } else {
      for (auto const& [pattern, a] : cfg.alpha_pattern)  // PEFT get_pattern_key: re.match((.*\.)?(key)$)
        if (std::regex_match(e.module, std::regex("(.*\\.)?(" + pattern + ")"))) {
          e.alpha = a;
          e.has_alpha = true;
          break;
        }
      if (!e.has_alpha && cfg.lora_alpha) {
        e.alpha = *cfg.lora_alpha;
        e.has_alpha = true;
      }
    }
    out.entries.push_back(std::move(e));
  }
  for (auto const& key : f.keys())
    if (!used.count(key)) out.unknown_keys.push_back(key);
  return out;
}

}  // namespace detail

/// Reads a kohya or diffusers / PEFT LoRA file (detected from its keys). Factors are read as float; `layout` decides
/// how LDM UNet names (input_blocks / middle_block / output_blocks) map to diffusers names.
inline LoraFile read_lora(std::string const& path, UnetLayout const& layout = {}) {
  io::SafetensorsFile const f(path);
  bool kohya = false;
  for (auto const& key : f.keys())
    kohya = kohya || ((detail::ends_with(key, ".lora_down.weight") || detail::lycoris_first_key(key)) &&
                      detail::kohya_component(key).has_value());
  LoraFile out = kohya ? detail::read_kohya(f, layout) : detail::read_peft(f);
  if (out.entries.empty())
    SDLORA_THROW(FormatError, "[lora.read] " << path << ": no LoRA layers found (" << f.size()
                                             << " tensors; expected kohya '*.lora_down.weight' or PEFT "
                                             << "'*.lora_A.weight', or LyCORIS '*.hada_w1_a' / '*.lokr_w1' keys)");
  return out;
}

/// How apply() attaches a file.
enum class ApplyMode {
  Adapter,  ///< attach LoraLinear / LoraConv adapters (multiplier adjustable later, unmergeable)
  Merge,    ///< add multiplier * scale * up @ down into the base weights (fastest inference)
};

struct ApplyOptions {
  double multiplier = 1.0;
  ApplyMode mode = ApplyMode::Adapter;
  std::string adapter_name = "default";
  bool trainable = false;  ///< attached adapters' factors trainable (resuming a training run)
  bool strict = true;      ///< throw on unknown keys, unmatched modules and shape mismatches
};

/// What apply() did.
struct ApplyReport {
  Index applied = 0;                 ///< entries attached or merged
  std::vector<std::string> modules;  ///< dotted leaf names they went to
  std::vector<std::string> problems; ///< unmatched keys, shape mismatches, unknown keys (thrown when strict)
};

/// Applies the entries of `file` whose component is `component` ("unet", "text_encoder", ...; "" for files of a
/// bare module tree) to `module`. Every entry is matched by its flat name against the flattened dotted names of the
/// tree's leaves (exactly, else by a unique "_"-boundary suffix in either direction). Nothing is modified when a
/// problem is found in strict mode: the FormatError lists ALL unknown keys, unmatched keys and shape mismatches.
template <class Module>
ApplyReport apply(Module& module, LoraFile const& file, std::string const& component, ApplyOptions const& o = {}) {
  struct Leaf {
    std::string name;
    Shape weight;
    std::function<void(LoraEntry const&)> attach;
  };
  std::vector<Leaf> leaves;
  std::map<std::string, std::size_t> by_flat;
  module.visit("", [&](std::string const& name, auto& leaf) {
    using L = std::remove_cvref_t<decltype(leaf)>;
    if constexpr (AdaptableLeaf<L>) {
      using T = LeafScalar<L>;
      L* p = &leaf;
      Leaf l{name, leaf.weight.shape(), {}};
      l.attach = [p, &o](LoraEntry const& e) {
        if (e.lycoris) {  // LoHa / LoKr: the delta merged, or a LycorisAdapter
          if (o.mode == ApplyMode::Merge) merge_lycoris(*p, *e.lycoris, o.multiplier);
          else add_lycoris_adapter(*p, *e.lycoris, o.multiplier, o.adapter_name);
          return;
        }
        Shape const w = p->weight.shape();
        Index const r = e.rank();
        Tensor<T> down = convert<T, float>(e.down), up = convert<T, float>(e.up);
        if (o.mode == ApplyMode::Merge) {
          Index const fan = w.numel() / w[0];
          Context<Cpu> ctx;
          p->weight.edit([&](TensorView<T, Cpu> wv) {  // a 16-bit weight is widened, merged and rounded again
            ops::gemm<T, Cpu>(ctx, wv.reshaped(Shape{w[0], fan}), up.view().reshaped(Shape{w[0], r}),
                              down.view().reshaped(Shape{r, fan}), {.alpha = e.scale(o.multiplier), .beta = 1.0});
          });
          return;
        }
        LoraOptions lo{.rank = r, .alpha = e.alpha, .multiplier = o.multiplier, .rslora = e.rslora,
                       .name = o.adapter_name, .trainable = o.trainable};
        auto a = add_adapter(*p, lo);
        a->lora_A.value = std::move(down).reshape(a->lora_A.shape());
        a->lora_B.value = std::move(up).reshape(a->lora_B.shape());
      };
      by_flat.emplace(flatten(name), leaves.size());
      leaves.push_back(std::move(l));
    }
  });

  ApplyReport report;
  for (auto const& k : file.unknown_keys)
    report.problems.push_back("key '" + k + "': not part of a supported LoRA layout");
  std::vector<std::pair<LoraEntry const*, Leaf const*>> plan;
  for (auto const& e : file.entries) {
    if (e.component != component) continue;
    Leaf const* hit = nullptr;
    if (auto it = by_flat.find(e.flat); it != by_flat.end()) {
      hit = &leaves[it->second];
    } else {
      int n = 0;
      for (auto const& [flat, idx] : by_flat)
        if (detail::ends_with(flat, "_" + e.flat) || detail::ends_with(e.flat, "_" + flat)) hit = &leaves[idx], ++n;
      if (n != 1) hit = nullptr;
    }
    if (!hit) {
      report.problems.push_back("key '" + e.key + "': no module '" + e.module + "' in " +
                                (component.empty() ? std::string("the model") : component));
      continue;
    }
    if (e.lycoris) {
      if (std::string const why = detail::lycoris_shape_problem(*e.lycoris, hit->weight); !why.empty()) {
        std::ostringstream os;
        os << "key '" << e.key << "': module '" << hit->name << "' has weight " << hit->weight << ", but " << why;
        report.problems.push_back(os.str());
      } else {
        plan.emplace_back(&e, hit);
      }
      continue;
    }
    // Shapes: Linear (out, in) takes down (r, in) / up (out, r); Conv2d (out, in, k, k) takes down (r, in, k, k) /
    // up (out, r, 1, 1); a 1x1 conv and a linear accept each other's factor shapes.
    Shape const& w = hit->weight;
    Index const r = e.rank(), out = w[0];
    Shape const& d = e.down.shape();
    bool const one_by_one = d.rank() == 2 || (d.rank() == 4 && d[2] == 1 && d[3] == 1);
    bool const down_ok = d[0] == r && d[1] == w[1] && (d.rank() == 2 || d.rank() == 4) &&
                         (w.rank() == 4 ? (d.rank() == 4 ? (d[2] == w[2] && d[3] == w[3]) : (w[2] == 1 && w[3] == 1))
                                        : one_by_one);
    bool const up_ok = e.up.numel() == out * r && e.up.dim(0) == out && e.up.dim(1) == r;
    if (!down_ok || !up_ok) {
      std::ostringstream os;
      os << "key '" << e.key << "': module '" << hit->name << "' has weight " << w << ", so expects down ("
         << r << ", " << w[1] << (w.rank() == 4 ? ", " + std::to_string(w[2]) + ", " + std::to_string(w[3]) : "")
         << ") and up (" << out << ", " << r << (w.rank() == 4 ? ", 1, 1" : "") << "), got down " << e.down.shape()
         << " and up " << e.up.shape();
      report.problems.push_back(os.str());
      continue;
    }
    plan.emplace_back(&e, hit);
  }
  if (o.strict && !report.problems.empty()) {
    std::ostringstream os;
    os << "[lora.apply] " << file.path << ": " << report.problems.size() << " problem(s) applying component '"
       << component << "':";
    for (auto const& p : report.problems) os << "\n  " << p;
    SDLORA_THROW(FormatError, os.str());
  }
  for (auto const& [e, leaf] : plan) {
    leaf->attach(*e);
    report.modules.push_back(leaf->name);
    ++report.applied;
  }
  return report;
}

/// The LoRA adapters named `adapter_name` of a module tree as file entries of `component` (factors as float on the
/// host, downloaded from the module's backend).
template <class Module>
LoraFile collect(Module& module, std::string const& component, std::string const& adapter_name = "default") {
  LoraFile out;
  for_each_adapter(
      module,
      [&](std::string const& name, auto&, auto& a) {
        using T = typename std::remove_cvref_t<decltype(a.lora_A.value)>::value_type;
        using B = typename std::remove_cvref_t<decltype(a.lora_A.value)>::backend;
        LoraEntry e;
        e.component = component;
        e.module = name;
        e.flat = flatten(name);
        e.key = name;
        auto host = [](auto const& t) -> Tensor<float, Cpu> {  // the factor as float on the host
          if constexpr (std::is_same_v<B, Cpu> && std::is_same_v<T, float>) return t;
          else if constexpr (std::is_same_v<B, Cpu>) return convert<float, T>(t);
          else return convert<float, T>(to_cpu<T, B>(t.view()));
        };
        e.down = host(a.lora_A.value);
        e.up = host(a.lora_B.value);
        e.alpha = a.alpha();
        e.has_alpha = true;
        e.rslora = a.options().rslora;
        out.entries.push_back(std::move(e));
      },
      adapter_name);
  return out;
}

/// Options of save_kohya.
struct KohyaSaveOptions {
  std::string base_model_version = "sd_v1";  ///< ss_base_model_version: sd_v1, sd_v2, sdxl_base_v1-0
  std::optional<DType> dtype;                ///< storage dtype (F32, F16, BF16); absent: each entry's own
  bool sdxl_text_encoders = false;           ///< lora_te1_ / lora_te2_ instead of lora_te_
  std::map<std::string, std::string> metadata;  ///< extra / overriding metadata (ss_* strings)
};

namespace detail {
inline void add_stored(io::SafetensorsWriter& w, std::string const& key, Tensor<float> const& t, DType d) {
  switch (d) {
    case DType::F16: w.add_as<half, float>(key, t.view()); break;
    case DType::BF16: w.add_as<bfloat16, float>(key, t.view()); break;
    case DType::F64: w.add_as<double, float>(key, t.view()); break;
    default: w.add_as<float, float>(key, t.view()); break;
  }
}
inline std::string number_string(double v) {
  std::ostringstream os;
  os.precision(9);
  os << v;
  return os.str();
}
}  // namespace detail

/// Writes `file` in kohya's layout: `lora_unet_<flat>` / `lora_te_<flat>` with `.lora_down.weight`,
/// `.lora_up.weight` and a scalar `.alpha`, plus sd-scripts' `ss_*` metadata strings. rslora entries are written
/// with alpha * sqrt(r) (kohya has no rslora; the delta is the same).
inline void save_kohya(std::string const& path, LoraFile const& file, KohyaSaveOptions const& o = {}) {
  SDLORA_EXPECTS(!file.entries.empty(), "[lora.save_kohya] " << path << ": no LoRA layers to write");
  io::SafetensorsWriter w;
  bool any_conv = false, any_lycoris = false;
  Index conv_dim = 0;
  double conv_alpha = 0;
  for (auto const& e : file.entries) {
    std::string prefix;
    if (e.component == "unet") prefix = "lora_unet_";
    else if (e.component == "text_encoder") prefix = o.sdxl_text_encoders ? "lora_te1_" : "lora_te_";
    else if (e.component == "text_encoder_2") prefix = "lora_te2_";
    else SDLORA_THROW(FormatError, "[lora.save_kohya] " << path << ": component '" << e.component << "' of module '"
                                                        << e.module << "' has no kohya prefix");
    std::string const base = prefix + e.flat;
    DType const d = o.dtype.value_or(e.dtype);
    if (e.lycoris) {  // LoHa / LoKr: the same keys back
      any_lycoris = true;
      for (auto const& [suffix, t] : e.lycoris->tensors) detail::add_stored(w, base + "." + suffix, t, d);
      if (e.lycoris->alpha) {
        Tensor<float> alpha(Shape{});
        alpha(0) = float(*e.lycoris->alpha);
        detail::add_stored(w, base + ".alpha", alpha, d);
      }
      continue;
    }
    detail::add_stored(w, base + ".lora_down.weight", e.down, d);
    detail::add_stored(w, base + ".lora_up.weight", e.up, d);
    Tensor<float> alpha(Shape{});
    alpha(0) = float(e.rslora ? e.alpha * std::sqrt(double(e.rank())) : e.alpha);
    detail::add_stored(w, base + ".alpha", alpha, d);
    if (e.conv() && e.down.dim(2) > 1) {
      any_conv = true;
      conv_dim = e.rank();
      conv_alpha = e.alpha;
    }
  }
  // Linear entries decide ss_network_dim / ss_network_alpha (as sd-scripts' network_dim / network_alpha).
  LoraEntry const* first = &file.entries.front();
  for (auto const& e : file.entries)
    if (!(e.conv() && e.down.dim(2) > 1)) {
      first = &e;
      break;
    }
  std::map<std::string, std::string> meta = {
      {"ss_network_module", any_lycoris ? "lycoris.kohya" : "networks.lora"},
      {"ss_network_dim", std::to_string(first->rank())},
      {"ss_network_alpha", detail::number_string(first->alpha)},
      {"ss_base_model_version", o.base_model_version},
      {"ss_v2", o.base_model_version.rfind("sd_v2", 0) == 0 ? "True" : "False"},
      {"ss_training_comment", "written by sdlora"},
  };
  if (any_conv)
    meta["ss_network_args"] = nlohmann::json{{"conv_dim", std::to_string(conv_dim)},
                                             {"conv_alpha", detail::number_string(conv_alpha)}}
                                  .dump();
  for (auto const& [k, v] : o.metadata) meta[k] = v;
  for (auto const& [k, v] : meta) w.set_metadata(k, v);
  w.write(path);
}

/// Options of save_peft.
struct PeftSaveOptions {
  std::optional<DType> dtype;                   ///< storage dtype; absent: each entry's own
  std::map<std::string, std::string> metadata;  ///< extra metadata
};

/// Writes `file` in diffusers / PEFT layout: `<component>.<module>.lora_A.weight` / `.lora_B.weight`, with the
/// safetensors metadata `lora_adapter_metadata` = JSON of each component's LoraConfig fields (r, lora_alpha,
/// target_modules, rank_pattern, alpha_pattern, use_rslora), "<component>."-prefixed as diffusers'
/// save_lora_weights writes them (unprefixed for a bare module tree).
inline void save_peft(std::string const& path, LoraFile const& file, PeftSaveOptions const& o = {}) {
  SDLORA_EXPECTS(!file.entries.empty(), "[lora.save_peft] " << path << ": no LoRA layers to write");
  io::SafetensorsWriter w;
  std::map<std::string, std::vector<LoraEntry const*>> by_component;
  for (auto const& e : file.entries) {
    if (e.lycoris)
      SDLORA_THROW(FormatError, "[lora.save_peft] " << path << ": '" << e.key << "' is a LyCORIS "
                                                    << lycoris_algo_name(e.lycoris->algo)
                                                    << " layer, which the PEFT LoRA layout cannot hold");
    std::string const prefix = e.component.empty() ? "" : e.component + ".";
    DType const d = o.dtype.value_or(e.dtype);
    detail::add_stored(w, prefix + e.module + ".lora_A.weight", e.down, d);
    detail::add_stored(w, prefix + e.module + ".lora_B.weight", e.up, d);
    by_component[e.component].push_back(&e);
  }
  nlohmann::json meta = nlohmann::json::object();
  for (auto const& [component, entries] : by_component) {
    Index const r0 = entries.front()->rank();
    double const a0 = entries.front()->alpha;
    nlohmann::json cfg = {{"r", r0}, {"lora_alpha", a0}, {"use_rslora", entries.front()->rslora},
                          {"rank_pattern", nlohmann::json::object()}, {"alpha_pattern", nlohmann::json::object()},
                          {"peft_type", "LORA"}};
    std::set<std::string> targets;
    for (auto const* e : entries) {
      targets.insert(e->module);
      if (e->rank() != r0) cfg["rank_pattern"][e->module] = e->rank();
      if (e->alpha != a0) cfg["alpha_pattern"][e->module] = e->alpha;
    }
    cfg["target_modules"] = std::vector<std::string>(targets.begin(), targets.end());
    for (auto const& [k, v] : cfg.items()) meta[component.empty() ? k : component + "." + k] = v;
  }
  w.set_metadata("lora_adapter_metadata", meta.dump(2));
  for (auto const& [k, v] : o.metadata) w.set_metadata(k, v);
  w.write(path);
}

/// Convenience: the adapters `adapter_name` of one module tree, as `component`, in kohya's layout.
template <class Module>
void save_kohya(std::string const& path, Module& module, std::string const& component,
                KohyaSaveOptions const& o = {}, std::string const& adapter_name = "default") {
  save_kohya(path, collect(module, component, adapter_name), o);
}
/// Convenience: the adapters `adapter_name` of one module tree, as `component`, in PEFT's layout.
template <class Module>
void save_peft(std::string const& path, Module& module, std::string const& component, PeftSaveOptions const& o = {},
               std::string const& adapter_name = "default") {
  save_peft(path, collect(module, component, adapter_name), o);
}

}  // namespace sdlora::lora
