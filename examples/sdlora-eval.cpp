/// @file sdlora-eval.cpp
/// @brief sdlora-eval: CLIP score, CLIP image similarity (CLIP-I), DINO similarity and SSIM of image folders, with
/// transformers CLIPModel / ViTModel folders as the encoders, computed as torchmetrics and the DreamBooth paper do;
/// a LoRA-scale sweep (generate, score, plot, grid; with --toy-measures the toy world's pixel measures against each
/// prompt's parsed colour, background and shape) and a comparison table of several output folders.
/// Reference: docs/cli.md.
#include <algorithm>   // std::sort
#include <cctype>      // std::tolower
#include <filesystem>  // std::filesystem
#include <fstream>     // std::ifstream
#include <iomanip>     // std::setprecision
#include <iostream>    // std::cout, std::cerr
#include <cmath>       // std::nan, std::isfinite, std::floor
#include <sstream>     // std::ostringstream
#include <map>         // std::map
#include <optional>    // std::optional
#include <string>      // std::string
#include <vector>      // std::vector


#include <nlohmann/json.hpp>  // nlohmann::json

#include <sdlora/eval.hpp>           // eval::ClipEncoder, eval::DinoEncoder, eval::clip_score, eval::ssim, eval::line_plot,
                                     // eval::measure_toy_image
#include <sdlora/pipeline.hpp>       // models::load_stable_diffusion, pipeline::apply_loras, pipeline::txt2img
#include <sdlora/train/dataset.hpp>  // train::detail::read_metadata
#include <sdlora/instances.hpp>  // compiled once in sdlora::instances (examples/CMakeLists.txt)

#include "common/cli.hpp"  // cli::normalize_flags, cli::parse, cli::run_main

namespace {

namespace fs = std::filesystem;
namespace po = boost::program_options;
using namespace sdlora;

inline constexpr char kProgram[] = "sdlora-eval";

constexpr char kUsage[] =
    "Usage: sdlora-eval COMMAND [options]   (sdlora-eval COMMAND --help for its flags)\n"
    "Commands:\n"
    "  clip-score  --clip DIR --images DIR (--prompts FILE | --metadata metadata.csv)\n"
    "              text-image agreement, max(100 * mean cos(image, text), 0) as torchmetrics' CLIPScore\n"
    "  clip-i      --clip DIR --images DIR --reference DIR [--pairing all|index]\n"
    "              mean cosine of CLIP image embeddings (DreamBooth's CLIP-I)\n"
    "  dino        --dino DIR --images DIR --reference DIR [--pairing all|index]\n"
    "              mean cosine of DINO ViT class tokens (DreamBooth's DINO)\n"
    "  ssim        --images DIR --reference DIR\n"
    "              SSIM of image pairs in file-name order (torchmetrics defaults: Gaussian 11, sigma 1.5)\n"
    "  sweep       --model M --lora FILE --prompts FILE (--reference DIR --clip DIR [--dino DIR] | --toy-measures)\n"
    "              [--unseen-prompts FILE] [--scales 0,0.25,..,1] [--seeds 1,2] --out DIR\n"
    "              generates every prompt at every LoRA scale with fixed seeds; writes results.csv, plot.png\n"
    "              (CLIP score and CLIP-I / DINO vs scale) and grid.png (columns labelled with the scales);\n"
    "              --toy-measures: toy-world pixel measures per image (results.csv), per scale (summary.csv)\n"
    "  compare     --clip DIR [--dino DIR] --prompts FILE --reference DIR --run NAME=DIR ... --out DIR\n"
    "              one table (results.csv, results.md) of CLIP score, CLIP-I, DINO and SSIM per output folder\n"
    "Metric commands print one line, or with --json one object {\"metric\", \"value\", \"n\", \"per_image\"}.\n"
    "--clip is a transformers CLIPModel folder (e.g. openai/clip-vit-large-patch14 from the Hugging Face Hub);\n"
    "--dino a ViTModel folder (e.g. facebook/dino-vits16). Errors print one line: exit 2 for usage, 1 otherwise.\n";

/// Flags of all commands (each command offers and requires its own subset).
struct Args {
  std::string clip, dino, images, reference, prompts, metadata, pairing = "all";
  bool json = false;
  bool toy_measures = false;  // sweep
  int batch = 8;
  int threads = 0;
  long long max_image_pixels = static_cast<long long>(io::kDefaultMaxImagePixels);
  // sweep
  std::string model, lora, unseen_prompts, scales = "0,0.25,0.5,0.75,1", seeds = "0", out, sampler;
  int steps = 30, width = 0, height = 0;
  double cfg = 7.5;
  // compare
  std::vector<std::string> runs;
};

po::options_description options(std::string const& command, Args& a) {
  po::options_description d("Usage: sdlora-eval " + command + " [options]\n\nOptions", 120, 60);
  bool const metric = command == "clip-score" || command == "clip-i" || command == "dino" || command == "ssim";
  bool const experiment = command == "sweep" || command == "compare";
  // clang-format off
  d.add_options()
    ("help,h", "show this help and exit")
    ("threads", po::value(&a.threads)->value_name("N")->default_value(0), "CPU threads (0: all)");
  if (metric)
    d.add_options()
      ("images", po::value(&a.images)->value_name("DIR"), "the images to score (PNG/JPEG/BMP), in file-name order")
      ("max-image-pixels", po::value(&a.max_image_pixels)->value_name("N")->default_value(a.max_image_pixels),
                           "refuse images of more pixels, from their header (default: Pillow's MAX_IMAGE_PIXELS; 0: no limit)")
      ("json", po::bool_switch(&a.json), "print one JSON object {\"metric\", \"value\", \"n\", \"per_image\"}");
  if (command != "ssim")
    d.add_options()("batch", po::value(&a.batch)->value_name("N")->default_value(8), "images per encoder batch");
  if (command != "dino" && command != "ssim")
    d.add_options()("clip", po::value(&a.clip)->value_name("DIR"), "a transformers CLIPModel folder (config.json, "
                    "model.safetensors, preprocessor_config.json, vocab.json, merges.txt)");
  // Boost copies descriptions, so these temporaries may end with the statement.
  std::string const dino_help = std::string("a transformers ViTModel folder (config.json, model.safetensors, "
                                            "preprocessor_config.json), e.g. facebook/dino-vits16") +
                                (experiment ? " (optional: adds the DINO column)" : "");
  std::string const prompts_help =
      "one prompt per line" +
      std::string(command == "clip-score" ? ", one per image in file-name order"
                  : command == "sweep"    ? " (the prompts the LoRA was meant for)"
                                          : "; each folder holds k images per prompt, grouped by prompt in file-name order");
  if (command == "dino" || experiment)
    d.add_options()("dino", po::value(&a.dino)->value_name("DIR"), dino_help.c_str());
  if (command == "clip-score" || experiment)
    d.add_options()("prompts", po::value(&a.prompts)->value_name("FILE"), prompts_help.c_str());
  if (command == "clip-score")
    d.add_options()("metadata", po::value(&a.metadata)->value_name("CSV"), "a diffusers ImageFolder metadata.csv (file_name, text)");
  if (command != "clip-score")
    d.add_options()("reference", po::value(&a.reference)->value_name("DIR"), "the reference (instance / style) images");
  if (command == "clip-i" || command == "dino")
    d.add_options()("pairing", po::value(&a.pairing)->value_name("all|index")->default_value("all"),
                    "all: every image x every reference (DreamBooth); index: image i with reference i");
  if (experiment)
    d.add_options()("out", po::value(&a.out)->value_name("DIR"), "output folder (results.csv, ...); created if needed");
  if (command == "sweep")
    d.add_options()
      ("model", po::value(&a.model)->value_name("PATH"), "checkpoint: a diffusers folder or an SD 1.x / 2.x .safetensors file")
      ("lora", po::value(&a.lora)->value_name("FILE"), "the LoRA file (kohya or diffusers / PEFT) to sweep")
      ("scales", po::value(&a.scales)->value_name("S1,S2,..")->default_value(a.scales), "LoRA scales")
      ("unseen-prompts", po::value(&a.unseen_prompts)->value_name("FILE"), "a second prompt set (e.g. prompts unlike the "
                                                                           "training captions), one line each")
      ("seeds", po::value(&a.seeds)->value_name("N1,N2,..")->default_value(a.seeds), "seeds; every prompt at every scale with each")
      ("steps", po::value(&a.steps)->value_name("N")->default_value(30), "denoising steps")
      ("cfg", po::value(&a.cfg)->value_name("S")->default_value(7.5), "classifier-free guidance scale")
      ("sampler", po::value(&a.sampler)->value_name("NAME"), "ddpm | ddim | pndm | euler | euler_a | dpmpp_2m (default: the "
                                                             "checkpoint's scheduler)")
      ("width", po::value(&a.width)->value_name("W"), "image width (default: the model's native size)")
      ("height", po::value(&a.height)->value_name("H"), "image height (default: the model's native size)")
      ("toy-measures", po::bool_switch(&a.toy_measures), "toy-world pixel measures of every image against its prompt "
                       "('a red circle on a blue background'): dominant colour, background, outline fraction, shape; "
                       "results.csv per image, summary.csv per scale; --clip / --reference become optional");
  if (command == "compare")
    d.add_options()("run", po::value(&a.runs)->value_name("NAME=DIR")->composing(), "a folder of generated images and "
                    "its name in the table (base, lora, dreambooth, ti, ...); repeatable");
  // clang-format on
  return d;
}

// ---- stages -------------------------------------------------------------------------------------------------------

/// The image files of `dir` (PNG, JPEG, BMP, TGA, GIF) in file-name order.
std::vector<fs::path> list_images(std::string const& dir, char const* flag) {
  if (dir.empty()) SDLORA_THROW(ConfigError, "--" << flag << " is required (a folder of images)");
  if (!fs::is_directory(dir)) SDLORA_THROW(IoError, "--" << flag << " " << dir << " is not a folder");
  std::vector<fs::path> out;
  for (auto const& e : fs::directory_iterator(dir)) {
    std::string ext = e.path().extension().string();
    for (char& c : ext) c = char(std::tolower(static_cast<unsigned char>(c)));
    if (e.is_regular_file() && (ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp" || ext == ".tga" ||
                                ext == ".gif"))
      out.push_back(e.path());
  }
  std::sort(out.begin(), out.end(), [](fs::path const& x, fs::path const& y) { return x.filename() < y.filename(); });
  if (out.empty()) SDLORA_THROW(IoError, "--" << flag << " " << dir << " holds no images (png, jpg, bmp, tga, gif)");
  return out;
}

std::vector<std::string> names(std::vector<fs::path> const& files) {
  std::vector<std::string> out;
  for (auto const& f : files) out.push_back(f.string());
  return out;
}

std::vector<Tensor<std::uint8_t, Cpu>> load_all(std::vector<fs::path> const& files) {
  std::vector<Tensor<std::uint8_t, Cpu>> out;
  for (auto const& f : files) out.push_back(eval::load_rgb8(f.string()));  // IoError names the unreadable file
  return out;
}

/// One line per encoder batch on stderr when there is more than one batch.
eval::Progress progress_line(char const* what, std::size_t batch) {
  return [what, batch](std::size_t done, std::size_t total, double per_second) {
    if (total <= batch) return;
    std::cerr << kProgram << ": " << what << " " << done << "/" << total << " images (" << std::fixed
              << std::setprecision(1) << per_second << " images/s)\n"
              << std::defaultfloat;
  };
}

/// The non-empty lines of a text file (a prompt list).
std::vector<std::string> read_lines(std::string const& path, char const* flag) {
  std::ifstream in(path);
  if (!in) SDLORA_THROW(IoError, "--" << flag << " " << path << " cannot be read");
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) out.push_back(line);
  }
  if (out.empty()) SDLORA_THROW(ConfigError, "--" << flag << " " << path << " holds no prompts");
  return out;
}

/// Prompts for `images`: one line each from --prompts, or looked up by file name in --metadata.
std::vector<std::string> read_prompts(Args const& a, std::vector<fs::path> const& images) {
  if (a.prompts.empty() == a.metadata.empty())
    SDLORA_THROW(ConfigError, "clip-score needs exactly one of --prompts FILE and --metadata metadata.csv");
  std::vector<std::string> out;
  if (!a.prompts.empty()) {
    out = read_lines(a.prompts, "prompts");
    if (out.size() != images.size())
      SDLORA_THROW(ConfigError, "--prompts " << a.prompts << " has " << out.size() << " prompts for "
                                             << images.size() << " images in " << a.images
                                             << " (one prompt per line, one per image in file-name order)");
    return out;
  }
  if (!fs::exists(a.metadata)) SDLORA_THROW(IoError, "--metadata " << a.metadata << " does not exist");
  std::map<std::string, std::string> by_name;
  for (auto const& [file, caption] : train::detail::read_metadata(a.metadata, train::DatasetOptions{}))
    by_name[fs::path(file).filename().string()] = caption;
  for (auto const& img : images) {
    auto it = by_name.find(img.filename().string());
    if (it == by_name.end())
      SDLORA_THROW(ConfigError, "--metadata " << a.metadata << " has no row for " << img.filename().string());
    out.push_back(it->second);
  }
  return out;
}

void report(eval::MetricResult const& r, bool json) {
  if (json) {
    nlohmann::json j{{"metric", r.metric}, {"value", r.value}, {"n", r.n()}, {"per_image", r.per_image}};
    std::cout << j.dump() << "\n";
  } else {
    std::cout << r.metric << ": " << std::setprecision(6) << r.value << " (n=" << r.n() << ")\n";
  }
}

void require_dir(std::string const& dir, char const* flag, char const* what) {
  if (dir.empty()) SDLORA_THROW(ConfigError, "--" << flag << " is required (" << what << ")");
  if (!fs::is_directory(dir)) SDLORA_THROW(IoError, "--" << flag << " " << dir << " is not a folder (" << what << ")");
}

// ---- commands -----------------------------------------------------------------------------------------------------

eval::MetricResult run_clip_score(Args const& a) {
  auto const files = list_images(a.images, "images");
  auto const prompts = read_prompts(a, files);
  require_dir(a.clip, "clip", "a transformers CLIPModel folder");
  auto clip = eval::ClipEncoder::load(a.clip);
  auto const batch = std::size_t(a.batch);
  auto const e_img = clip.encode_files(names(files), batch, progress_line("clip-score: encoded", batch));
  auto const e_txt = clip.encode_texts(prompts);
  return eval::clip_score(e_img.view(), e_txt.view());
}

eval::MetricResult run_similarity(std::string const& command, Args const& a) {
  auto const pairing = eval::parse_pairing(a.pairing);
  auto const files = list_images(a.images, "images"), ref_files = list_images(a.reference, "reference");
  if (pairing == eval::Pairing::Index && files.size() != ref_files.size())
    SDLORA_THROW(ConfigError, "--pairing index needs as many images as references: " << files.size() << " in "
                                                                                       << a.images << ", "
                                                                                       << ref_files.size() << " in "
                                                                                       << a.reference);
  if (command == "clip-i") require_dir(a.clip, "clip", "a transformers CLIPModel folder");
  else require_dir(a.dino, "dino", "a transformers ViTModel folder such as facebook/dino-vits16");
  auto const batch = std::size_t(a.batch);
  if (command == "clip-i") {
    auto clip = eval::ClipEncoder::load(a.clip);
    auto const g = clip.encode_files(names(files), batch, progress_line("clip-i: encoded", batch));
    auto const r = clip.encode_files(names(ref_files), batch, progress_line("clip-i: encoded references", batch));
    return eval::embedding_similarity("clip_i", g.view(), r.view(), pairing);
  }
  auto dino = eval::DinoEncoder::load(a.dino);
  auto const g = dino.encode_files(names(files), batch, progress_line("dino: encoded", batch));
  auto const r = dino.encode_files(names(ref_files), batch, progress_line("dino: encoded references", batch));
  return eval::embedding_similarity("dino", g.view(), r.view(), pairing);
}

eval::MetricResult run_ssim(Args const& a) {
  auto const files = list_images(a.images, "images"), ref_files = list_images(a.reference, "reference");
  if (files.size() != ref_files.size())
    SDLORA_THROW(ConfigError, "ssim pairs images by file-name order: " << files.size() << " in " << a.images << ", "
                                                                       << ref_files.size() << " in " << a.reference);
  eval::MetricResult r{"ssim", 0.0, {}};
  for (std::size_t i = 0; i < files.size(); ++i) {
    auto const x = io::load_image(files[i].string(), io::ImageRange::ZeroToOne);      // (3, H, W)
    auto const y = io::load_image(ref_files[i].string(), io::ImageRange::ZeroToOne);  // (3, H, W)
    if (!(x.shape() == y.shape()))
      SDLORA_THROW(ConfigError, "ssim needs each pair at the same size: " << files[i].string() << " is "
                                                                          << x.dim(2) << "x" << x.dim(1) << ", "
                                                                          << ref_files[i].string() << " is "
                                                                          << y.dim(2) << "x" << y.dim(1));
    r.per_image.push_back(eval::ssim(x.view(), y.view()));
  }
  r.value = eval::mean_of(r.per_image);
  return r;
}

// ---- experiments --------------------------------------------------------------------------------------------

/// The encoders an experiment scores with: CLIP always, DINO when --dino is given.
struct Scorers {
  eval::ClipEncoder clip;
  std::optional<eval::DinoEncoder> dino;
  Tensor<float, Cpu> clip_ref, dino_ref;  // (M, D) reference embeddings
  std::size_t batch = 8;

  static Scorers load(Args const& a, std::vector<Tensor<std::uint8_t, Cpu>> const& refs) {
    Scorers s{eval::ClipEncoder::load(a.clip), std::nullopt, {}, {}, std::size_t(a.batch)};
    s.clip_ref = s.clip.encode_images(refs, s.batch, progress_line("encoded references", s.batch));
    if (!a.dino.empty()) {
      s.dino = eval::DinoEncoder::load(a.dino);
      s.dino_ref = s.dino->encode_images(refs, s.batch, progress_line("encoded references", s.batch));
    }
    return s;
  }
};

/// One row of an experiment's table.
struct Row {
  std::string name;  // prompt set (sweep) or run (compare)
  double scale = 0;  // sweep only
  std::size_t n = 0;
  double clip_score = 0, clip_i = 0, dino = std::nan(""), ssim = std::nan("");
};

/// CLIP score of images vs their prompts, CLIP-I and DINO (all pairs) vs the references.
Row score(Scorers& s, std::vector<Tensor<std::uint8_t, Cpu>> const& images, std::vector<std::string> const& prompts) {
  Row r;
  r.n = images.size();
  auto const e = s.clip.encode_images(images, s.batch, progress_line("encoded", s.batch));
  r.clip_score = eval::clip_score(e.view(), s.clip.encode_texts(prompts).view()).value;
  r.clip_i = eval::embedding_similarity("clip_i", e.view(), s.clip_ref.view(), eval::Pairing::All).value;
  if (s.dino) {
    auto const d = s.dino->encode_images(images, s.batch, progress_line("encoded", s.batch));
    r.dino = eval::embedding_similarity("dino", d.view(), s.dino_ref.view(), eval::Pairing::All).value;
  }
  return r;
}

/// Mean cosine between distinct references (the ceiling a generated image's similarity can be compared with).
double self_similarity(Tensor<float, Cpu> const& e) {
  double total = 0;
  Index pairs = 0;
  for (Index i = 0; i < e.dim(0); ++i)
    for (Index j = 0; j < e.dim(0); ++j)
      if (i != j) total += eval::cosine(e.view(), i, e.view(), j), ++pairs;
  return pairs ? total / double(pairs) : std::nan("");
}

std::string cell(double v) { return std::isfinite(v) ? eval::short_number(v) : ""; }

/// Images (H, W, 3) uint8 -> (3, H, W) in [0, 1] for figures.
Tensor<float, Cpu> to_unit(Tensor<std::uint8_t, Cpu> const& px) { return io::from_uint8(px.view(), io::ImageRange::ZeroToOne); }

// ---- sweep stages ---------------------------------------------------------------------------------------------

/// What a sweep will do, checked before any model is loaded.
struct SweepPlan {
  std::vector<double> scales;
  std::vector<std::uint64_t> seeds;
  std::vector<std::pair<std::string, std::vector<std::string>>> sets;  // (name, prompts): "prompts", "unseen"
  std::vector<Tensor<std::uint8_t, Cpu>> references;                   // (H, W, 3) each
  std::size_t images() const {
    std::size_t n = 0;
    for (auto const& set : sets) n += set.second.size() * seeds.size() * scales.size();
    return n;
  }
};

SweepPlan plan_sweep(Args const& a) {
  if (a.model.empty() || !fs::exists(a.model)) SDLORA_THROW(IoError, "--model '" << a.model << "' does not exist");
  if (a.lora.empty() || !fs::exists(a.lora)) SDLORA_THROW(IoError, "--lora '" << a.lora << "' does not exist");
  if (a.prompts.empty()) SDLORA_THROW(ConfigError, "--prompts is required (one prompt per line)");
  if (a.out.empty()) SDLORA_THROW(ConfigError, "--out is required (a folder for results.csv, plot.png, grid.png)");
  if (a.steps <= 0) SDLORA_THROW(ConfigError, "--steps must be positive, got " << a.steps);
  if (a.clip.empty() && !a.toy_measures)
    SDLORA_THROW(ConfigError, "sweep needs --clip DIR (CLIP score, CLIP-I against --reference) or --toy-measures "
                              "(toy-world pixel measures), or both");
  if (!a.clip.empty()) require_dir(a.clip, "clip", "a transformers CLIPModel folder");
  if (!a.dino.empty() && a.clip.empty()) SDLORA_THROW(ConfigError, "--dino needs --clip (DINO is scored with CLIP-I)");
  if (!a.dino.empty()) require_dir(a.dino, "dino", "a transformers ViTModel folder");
  SweepPlan p;
  p.scales = cli::parse_list(a.scales, "scales");
  for (double v : cli::parse_list(a.seeds, "seeds")) {
    if (v < 0 || v != std::floor(v)) SDLORA_THROW(ConfigError, "--seeds: '" << v << "' is not a non-negative integer");
    p.seeds.push_back(std::uint64_t(v));
  }
  p.sets.emplace_back("prompts", read_lines(a.prompts, "prompts"));
  if (!a.unseen_prompts.empty()) p.sets.emplace_back("unseen", read_lines(a.unseen_prompts, "unseen-prompts"));
  if (!a.clip.empty()) p.references = load_all(list_images(a.reference, "reference"));
  return p;
}

/// The generated images: per (set, scale) the images in (prompt, seed) order with their prompts, and the grid's
/// cells in (set, prompt, seed, scale) order with one label per row.
struct SweepImages {
  std::vector<std::vector<std::vector<Tensor<std::uint8_t, Cpu>>>> by_set_scale;  // [set][scale][i]: (H, W, 3)
  std::vector<std::vector<std::string>> prompts;                                  // [set][i]
  std::vector<Tensor<float, Cpu>> cells;                                          // (3, H, W) in [0, 1]
  std::vector<std::string> row_labels;
};

/// Every set x prompt x seed x scale through txt2img, the LoRA as an adapter whose multiplier changes per column
/// (the same seed gives the same initial latents at every scale); each image is written to out/images/.
SweepImages generate_sweep(Args const& a, SweepPlan const& p) {
  Context<Cpu> ctx;
  ctx.num_threads = a.threads;
  auto sd = models::load_stable_diffusion<float>(a.model, models::LoadOptions{});
  auto loaded = pipeline::apply_loras(sd, {pipeline::LoraSpec{a.lora, 1.0}}, lora::ApplyMode::Adapter);
  int const f = sd.vae_scale();
  pipeline::GenerateOptions g;
  g.steps = a.steps;
  g.guidance_scale = a.cfg;
  g.sampler = a.sampler;
  g.width = a.width > 0 ? a.width : sd.unet.config().sample_size * f;
  g.height = a.height > 0 ? a.height : sd.unet.config().sample_size * f;
  fs::create_directories(fs::path(a.out) / "images");
  SweepImages out;
  out.by_set_scale.assign(p.sets.size(), std::vector<std::vector<Tensor<std::uint8_t, Cpu>>>(p.scales.size()));
  out.prompts.resize(p.sets.size());
  std::size_t done = 0;
  for (std::size_t si = 0; si < p.sets.size(); ++si)
    for (std::size_t pi = 0; pi < p.sets[si].second.size(); ++pi)
      for (std::uint64_t seed : p.seeds) {
        g.prompt = p.sets[si].second[pi];
        g.seed = seed;
        out.prompts[si].push_back(g.prompt);
        out.row_labels.push_back(p.sets[si].first.substr(0, 6) + " " + std::to_string(pi + 1) + " s" +
                                 std::to_string(seed));
        for (std::size_t k = 0; k < p.scales.size(); ++k) {
          pipeline::set_lora_scale(sd, loaded[0], p.scales[k]);
          auto const gen = pipeline::txt2img(ctx, sd, g);                                 // (1, 3, H, W) in [-1, 1]
          auto const px = io::to_uint8(gen.images[0], io::ImageRange::MinusOneToOne);  // (H, W, 3), as the PNG
          std::string const name = p.sets[si].first + "-p" + std::to_string(pi + 1) + "-seed" + std::to_string(seed) +
                                   "-scale" + eval::short_number(p.scales[k]) + ".png";
          io::save_png((fs::path(a.out) / "images" / name).string(), gen.images[0], io::ImageRange::MinusOneToOne);
          out.cells.push_back(to_unit(px));
          out.by_set_scale[si][k].push_back(px);
          std::cerr << kProgram << ": generated " << ++done << "/" << p.images() << " (" << name << ")\n";
        }
      }
  return out;
}

/// One row per (set, scale): CLIP score against the prompts, CLIP-I and DINO against the references.
std::vector<Row> score_sweep(Scorers& sc, SweepPlan const& p, SweepImages const& images) {
  std::vector<Row> rows;
  for (std::size_t si = 0; si < p.sets.size(); ++si)
    for (std::size_t k = 0; k < p.scales.size(); ++k) {
      Row r = score(sc, images.by_set_scale[si][k], images.prompts[si]);
      r.name = p.sets[si].first;
      r.scale = p.scales[k];
      rows.push_back(r);
    }
  return rows;
}

/// results.csv: a row per (set, scale) and one for the references' own mean pairwise similarity.
void write_sweep_csv(fs::path const& file, std::vector<Row> const& rows, std::size_t references, double ref_clip_i,
                     double ref_dino) {
  std::ofstream csv(file);
  csv << "prompt_set,scale,n,clip_score,clip_i,dino\n";
  for (auto const& r : rows)
    csv << r.name << "," << eval::short_number(r.scale) << "," << r.n << "," << cell(r.clip_score) << ","
        << cell(r.clip_i) << "," << cell(r.dino) << "\n";
  csv << "reference,," << references << ",," << cell(ref_clip_i) << "," << cell(ref_dino) << "\n";
  csv.close();
  if (!csv) SDLORA_THROW(IoError, "cannot write " << file.string());
}

/// plot.png's CLIP panels: CLIP score (prompt fidelity) vs scale, similarity to the references vs scale with the
/// references' own similarity dashed.
std::vector<Tensor<float, Cpu>> clip_panels(SweepPlan const& p, std::vector<Row> const& rows, bool dino,
                                            double ref_clip_i, double ref_dino) {
  std::vector<eval::Series> text_series, image_series;
  for (auto const& set : p.sets) {
    eval::Series t{"clip score (" + set.first + ")", {}, {}}, c{"clip-i (" + set.first + ")", {}, {}},
        d{"dino (" + set.first + ")", {}, {}};
    for (auto const& r : rows)
      if (r.name == set.first) {
        t.x.push_back(r.scale), t.y.push_back(r.clip_score);
        c.x.push_back(r.scale), c.y.push_back(r.clip_i);
        d.x.push_back(r.scale), d.y.push_back(r.dino);
      }
    text_series.push_back(t);
    image_series.push_back(c);
    if (dino) image_series.push_back(d);
  }
  if (std::isfinite(ref_clip_i)) image_series.push_back({"clip-i among references", {}, {ref_clip_i}, true});
  if (std::isfinite(ref_dino)) image_series.push_back({"dino among references", {}, {ref_dino}, true});
  return {eval::line_plot(text_series, {"CLIP score vs LoRA scale", "LoRA scale", "CLIP score", 640, 360}),
          eval::line_plot(image_series, {"Similarity to the references", "LoRA scale", "cosine", 640, 360})};
}

/// Panels (3, 360, 640) each, stacked top to bottom into plot.png.
void write_panels(fs::path const& file, std::vector<Tensor<float, Cpu>> const& panels) {
  Index const h = 360, w = 640;
  Tensor<float, Cpu> plot(Shape{3, h * Index(panels.size()), w});  // (3, H, W)
  for (std::size_t i = 0; i < panels.size(); ++i)
    for (Index k = 0; k < 3; ++k)
      for (Index y = 0; y < h; ++y)
        for (Index x = 0; x < w; ++x) plot.at({k, Index(i) * h + y, x}) = panels[i].at({k, y, x});
  io::save_png(file.string(), plot.view(), io::ImageRange::ZeroToOne);
}

/// grid.png: one row per (set, prompt, seed), one column per scale, both labelled.
void write_sweep_grid(fs::path const& file, SweepPlan const& p, SweepImages const& images) {
  std::vector<std::string> columns;
  for (double v : p.scales) columns.push_back(eval::short_number(v));
  auto const grid = eval::labelled_grid(images.cells, Index(p.scales.size()), columns, images.row_labels, "LoRA scale");
  io::save_png(file.string(), grid.view(), io::ImageRange::ZeroToOne);
}

// ---- toy-world measures ---------------------------------------------------------------------------------------

/// One generated image with its toy measures.
struct ToyRow {
  std::string set, prompt, image;
  double scale = 0;
  std::uint64_t seed = 0;
  eval::ToyImageMeasures m;
};

/// Every image of the sweep through eval::measure_toy_image, in (set, scale, prompt, seed) order.
std::vector<ToyRow> measure_sweep(SweepPlan const& p, SweepImages const& images) {
  std::vector<ToyRow> out;
  for (std::size_t si = 0; si < p.sets.size(); ++si)
    for (std::size_t k = 0; k < p.scales.size(); ++k)
      for (std::size_t i = 0; i < images.by_set_scale[si][k].size(); ++i) {
        ToyRow r;
        r.set = p.sets[si].first;
        r.scale = p.scales[k];
        r.seed = p.seeds[i % p.seeds.size()];
        r.prompt = images.prompts[si][i];
        r.image = "images/" + r.set + "-p" + std::to_string(i / p.seeds.size() + 1) + "-seed" +
                  std::to_string(r.seed) + "-scale" + eval::short_number(r.scale) + ".png";
        r.m = eval::measure_toy_image(to_unit(images.by_set_scale[si][k][i]), r.prompt);
        out.push_back(std::move(r));
      }
  return out;
}

/// Per (set, scale): the accuracies over the images whose prompt parses, the mean outline fraction over all.
struct ToySummary {
  std::string set;
  double scale = 0;
  std::size_t n = 0, parsed = 0, color = 0, background = 0, shape = 0;
  double outline = 0, shape_score = 0;  // means: over all images, over the parsed ones
  double accuracy(std::size_t hits) const { return parsed ? double(hits) / double(parsed) : std::nan(""); }
};

std::vector<ToySummary> summarize_toy(SweepPlan const& p, std::vector<ToyRow> const& rows) {
  std::vector<ToySummary> out;
  for (auto const& set : p.sets)
    for (double scale : p.scales) {
      ToySummary s{set.first, scale};
      for (auto const& r : rows) {
        if (r.set != set.first || r.scale != scale) continue;
        ++s.n;
        s.outline += r.m.outline;
        if (!r.m.caption) continue;
        ++s.parsed;
        s.color += *r.m.color_match, s.background += *r.m.background_match, s.shape += *r.m.shape_first;
        s.shape_score += r.m.shape_score.value_or(0.0);
      }
      s.outline = s.n ? s.outline / double(s.n) : std::nan("");
      s.shape_score = s.parsed ? s.shape_score / double(s.parsed) : std::nan("");
      out.push_back(s);
    }
  return out;
}

/// A measure with 6 significant digits; empty when not finite (no parsed prompt).
std::string precise(double v) {
  if (!std::isfinite(v)) return "";
  std::ostringstream os;
  os << std::setprecision(6) << v;
  return os.str();
}
std::string flag(std::optional<bool> b) { return b ? (*b ? "1" : "0") : ""; }
std::string csv_field(std::string const& v) {
  if (v.find_first_of(",\"\n\r") == std::string::npos) return v;
  std::string out = "\"";
  for (char c : v) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

/// results.csv with --toy-measures: one row per image; the prompt's fields and the matches empty when it does not
/// parse as a toy caption.
void write_toy_results(fs::path const& file, std::vector<ToyRow> const& rows) {
  std::ofstream csv(file);
  csv << "prompt_set,scale,seed,prompt,image,color,background,shape,dominant_color,dominant_share,color_match,"
         "background_color,background_match,outline_fraction,shape_score,shape_first,best_shape\n";
  for (auto const& r : rows) {
    auto const& m = r.m;
    csv << r.set << "," << eval::short_number(r.scale) << "," << r.seed << "," << csv_field(r.prompt) << ","
        << r.image << "," << (m.caption ? m.caption->color : "") << "," << (m.caption ? m.caption->background : "")
        << "," << (m.caption ? m.caption->shape : "") << "," << m.dominant.name << "," << precise(m.dominant.share)
        << "," << flag(m.color_match) << "," << m.background << "," << flag(m.background_match) << ","
        << precise(m.outline) << "," << (m.shape_score ? precise(*m.shape_score) : "") << "," << flag(m.shape_first)
        << "," << (m.shapes.empty() ? "" : m.shapes.front().shape) << "\n";
  }
  csv.close();
  if (!csv) SDLORA_THROW(IoError, "cannot write " << file.string());
}

/// summary.csv: one row per (set, scale).
void write_toy_summary(fs::path const& file, std::vector<ToySummary> const& rows) {
  std::ofstream csv(file);
  csv << "prompt_set,scale,n,parsed,color_accuracy,background_accuracy,shape_accuracy,mean_outline_fraction,"
         "mean_shape_score\n";
  for (auto const& s : rows)
    csv << s.set << "," << eval::short_number(s.scale) << "," << s.n << "," << s.parsed << ","
        << precise(s.accuracy(s.color)) << "," << precise(s.accuracy(s.background)) << ","
        << precise(s.accuracy(s.shape)) << "," << precise(s.outline) << "," << precise(s.shape_score) << "\n";
  csv.close();
  if (!csv) SDLORA_THROW(IoError, "cannot write " << file.string());
}

/// plot.png's toy panels: the outline fraction (the scribble-style measure) vs scale, and the colour, background and
/// shape accuracies vs scale.
std::vector<Tensor<float, Cpu>> toy_panels(SweepPlan const& p, std::vector<ToySummary> const& rows) {
  std::vector<eval::Series> outline, accuracy;
  for (auto const& set : p.sets) {
    std::string const tag = p.sets.size() > 1 ? " (" + set.first + ")" : "";
    eval::Series o{"outline fraction" + tag, {}, {}}, c{"colour accuracy" + tag, {}, {}},
        b{"background accuracy" + tag, {}, {}}, s{"shape accuracy" + tag, {}, {}};
    for (auto const& r : rows)
      if (r.set == set.first) {
        o.x.push_back(r.scale), o.y.push_back(r.outline);
        c.x.push_back(r.scale), c.y.push_back(r.accuracy(r.color));
        b.x.push_back(r.scale), b.y.push_back(r.accuracy(r.background));
        s.x.push_back(r.scale), s.y.push_back(r.accuracy(r.shape));
      }
    outline.push_back(o);
    accuracy.insert(accuracy.end(), {c, b, s});
  }
  return {eval::line_plot(outline, {"Outline fraction vs LoRA scale", "LoRA scale", "outline fraction (style)", 640,
                                    360}),
          eval::line_plot(accuracy, {"Toy-prompt accuracy vs LoRA scale", "LoRA scale", "fraction of prompts", 640,
                                     360})};
}

int run_sweep(Args const& a) {
  SweepPlan const plan = plan_sweep(a);  // cheap checks before any model loads
  SweepImages const images = generate_sweep(a, plan);
  fs::path const out(a.out);
  std::vector<Tensor<float, Cpu>> panels;
  std::vector<std::string> written{"results.csv"};
  if (!a.clip.empty()) {
    Scorers sc = Scorers::load(a, plan.references);
    std::vector<Row> const rows = score_sweep(sc, plan, images);
    double const ref_clip_i = self_similarity(sc.clip_ref);
    double const ref_dino = sc.dino ? self_similarity(sc.dino_ref) : std::nan("");
    // With --toy-measures results.csv is the per-image toy table and the CLIP table is clip.csv.
    std::string const table = a.toy_measures ? "clip.csv" : "results.csv";
    write_sweep_csv(out / table, rows, plan.references.size(), ref_clip_i, ref_dino);
    if (a.toy_measures) written.push_back(table);
    panels = clip_panels(plan, rows, sc.dino.has_value(), ref_clip_i, ref_dino);
    for (auto const& r : rows)
      std::cout << r.name << " scale " << eval::short_number(r.scale) << ": clip_score " << cell(r.clip_score)
                << ", clip_i " << cell(r.clip_i) << (sc.dino ? ", dino " + cell(r.dino) : std::string()) << "\n";
  }
  if (a.toy_measures) {
    auto const toy = measure_sweep(plan, images);
    auto const summary = summarize_toy(plan, toy);
    write_toy_results(out / "results.csv", toy);
    write_toy_summary(out / "summary.csv", summary);
    written.push_back("summary.csv");
    for (auto& panel : toy_panels(plan, summary)) panels.push_back(std::move(panel));
    for (auto const& s : summary)
      std::cout << s.set << " scale " << eval::short_number(s.scale) << ": colour " << s.color << "/" << s.parsed
                << ", background " << s.background << "/" << s.parsed << ", shape " << s.shape << "/" << s.parsed
                << ", mean outline fraction " << precise(s.outline) << "\n";
  }
  write_panels(out / "plot.png", panels);
  write_sweep_grid(out / "grid.png", plan, images);
  std::cerr << kProgram << ": wrote " << plan.images() << " images, ";
  for (auto const& w : written) std::cerr << w << ", ";
  std::cerr << "plot.png and grid.png to " << a.out << "\n";
  return 0;
}

// ---- compare stages -------------------------------------------------------------------------------------------

/// The --run NAME=DIR folders with their images, each holding k images per prompt.
std::vector<std::pair<std::string, std::vector<fs::path>>> plan_compare(Args const& a, std::size_t prompts) {
  if (a.runs.empty()) SDLORA_THROW(ConfigError, "compare needs at least one --run NAME=DIR");
  if (a.out.empty()) SDLORA_THROW(ConfigError, "--out is required (a folder for results.csv and results.md)");
  require_dir(a.clip, "clip", "a transformers CLIPModel folder");
  if (!a.dino.empty()) require_dir(a.dino, "dino", "a transformers ViTModel folder");
  std::vector<std::pair<std::string, std::vector<fs::path>>> runs;
  for (auto const& spec : a.runs) {
    std::size_t const eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
      SDLORA_THROW(ConfigError, "--run '" << spec << "' is not NAME=DIR");
    auto files = list_images(spec.substr(eq + 1), "run");
    if (files.size() % prompts != 0)
      SDLORA_THROW(ConfigError, "--run " << spec << " holds " << files.size() << " images for " << prompts
                                         << " prompts (k images per prompt, grouped by prompt in file-name order)");
    runs.emplace_back(spec.substr(0, eq), std::move(files));
  }
  return runs;
}

/// Mean SSIM over every image x reference pair; a reference of another size is resized (Pillow bicubic) first.
double ssim_to_references(std::vector<Tensor<std::uint8_t, Cpu>> const& images,
                          std::vector<Tensor<std::uint8_t, Cpu>> const& refs) {
  double total = 0;
  for (auto const& img : images) {
    auto const x = to_unit(img);  // (3, H, W)
    for (auto const& ref : refs) {
      auto const y = ref.dim(0) == x.dim(1) && ref.dim(1) == x.dim(2)
                         ? to_unit(ref)
                         : to_unit(eval::pil_resize(ref.view(), x.dim(1), x.dim(2), eval::Resample::Bicubic));
      total += eval::ssim(x.view(), y.view());
    }
  }
  return total / double(images.size() * refs.size());
}

/// results.csv and results.md (the Markdown table is also printed).
void write_compare_tables(fs::path const& dir, std::vector<Row> const& rows) {
  fs::create_directories(dir);
  std::ofstream csv(dir / "results.csv"), md(dir / "results.md");
  csv << "run,n,clip_score,clip_i,dino,ssim\n";
  md << "| run | n | CLIP score | CLIP-I | DINO | SSIM |\n|---|---:|---:|---:|---:|---:|\n";
  for (auto const& r : rows) {
    csv << r.name << "," << r.n << "," << cell(r.clip_score) << "," << cell(r.clip_i) << "," << cell(r.dino) << ","
        << cell(r.ssim) << "\n";
    md << "| " << r.name << " | " << r.n << " | " << cell(r.clip_score) << " | " << cell(r.clip_i) << " | "
       << (std::isfinite(r.dino) ? cell(r.dino) : "-") << " | " << cell(r.ssim) << " |\n";
  }
  csv.close();
  md.close();
  if (!csv || !md) SDLORA_THROW(IoError, "cannot write results.csv / results.md in " << dir.string());
  std::cout << std::ifstream(dir / "results.md").rdbuf();
}

int run_compare(Args const& a) {
  if (a.prompts.empty()) SDLORA_THROW(ConfigError, "--prompts is required (one prompt per line)");
  auto const prompts = read_lines(a.prompts, "prompts");
  auto const runs = plan_compare(a, prompts.size());
  auto const refs = load_all(list_images(a.reference, "reference"));
  Scorers sc = Scorers::load(a, refs);
  std::vector<Row> rows;
  for (auto const& [name, files] : runs) {
    auto const images = load_all(files);
    std::size_t const k = files.size() / prompts.size();
    std::vector<std::string> per_image;
    for (std::size_t i = 0; i < files.size(); ++i) per_image.push_back(prompts[i / k]);
    Row r = score(sc, images, per_image);
    r.name = name;
    r.ssim = ssim_to_references(images, refs);
    rows.push_back(r);
  }
  write_compare_tables(a.out, rows);
  return 0;
}

int run(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  std::string const command = argv[1];
  if (command != "clip-score" && command != "clip-i" && command != "dino" && command != "ssim" && command != "sweep" &&
      command != "compare")
    SDLORA_THROW(ConfigError, "unknown command '" << command
                                                  << "' (clip-score, clip-i, dino, ssim, sweep, compare; see --help)");
  Args a;
  auto const desc = options(command, a);
  auto const vm = cli::parse(desc, cli::normalize_flags(argc - 1, argv + 1, '-'));
  if (vm.count("help")) {
    std::cout << desc;
    return 0;
  }
  if (a.batch <= 0) SDLORA_THROW(ConfigError, "--batch must be positive, got " << a.batch);
  if (a.threads < 0) SDLORA_THROW(ConfigError, "--threads must be >= 0, got " << a.threads);
  cpu::set_default_thread_count(a.threads);  // every Context<Cpu> the program makes
  if (a.max_image_pixels < 0)
    SDLORA_THROW(ConfigError, "--max-image-pixels must be >= 0 (0: no limit), got " << a.max_image_pixels);
  io::set_max_image_pixels(std::uint64_t(a.max_image_pixels));  // every image the encoders and metrics read
  if (command == "sweep") return run_sweep(a);
  if (command == "compare") return run_compare(a);
  eval::MetricResult const r = command == "clip-score" ? run_clip_score(a)
                               : command == "ssim"     ? run_ssim(a)
                                                       : run_similarity(command, a);
  report(r, a.json);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run_main(kProgram, [&] { return run(argc, argv); });
}
