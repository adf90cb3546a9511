/// @file sdlora-eval.cpp
/// @brief sdlora-eval: CLIP score, CLIP image similarity (CLIP-I), DINO similarity and SSIM of image folders, with
/// transformers CLIPModel / ViTModel folders as the encoders, computed as torchmetrics and the DreamBooth paper do.
/// Reference: docs/cli.md.
#include <algorithm>   // std::sort
#include <cctype>      // std::tolower
#include <filesystem>  // std::filesystem
#include <fstream>     // std::ifstream
#include <iomanip>     // std::setprecision
#include <iostream>    // std::cout, std::cerr
#include <map>         // std::map
#include <string>      // std::string
#include <vector>      // std::vector

#include <omp.h>  // omp_set_num_threads

#include <nlohmann/json.hpp>  // nlohmann::json

#include <sdlora/eval.hpp>              // eval::ClipEncoder, eval::DinoEncoder, eval::clip_score, eval::ssim
#include <sdlora/train/dataset.hpp>     // train::detail::read_metadata

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
    "Every command prints one line, or with --json one object {\"metric\", \"value\", \"n\", \"per_image\"}.\n"
    "--clip is a transformers CLIPModel folder (e.g. openai/clip-vit-large-patch14 from the Hugging Face Hub);\n"
    "--dino a ViTModel folder (e.g. facebook/dino-vits16). Errors print one line: exit 2 for usage, 1 otherwise.\n";

/// Flags shared by the metric commands (each command requires its own subset).
struct Args {
  std::string clip, dino, images, reference, prompts, metadata, pairing = "all";
  bool json = false;
  int batch = 8;
  int threads = 0;
};

po::options_description options(std::string const& command, Args& a) {
  po::options_description d("Usage: sdlora-eval " + command + " [options]\n\nOptions", 120, 60);
  // clang-format off
  d.add_options()
    ("help,h", "show this help and exit")
    ("images", po::value(&a.images)->value_name("DIR"), "the images to score (PNG/JPEG/BMP), in file-name order")
    ("json", po::bool_switch(&a.json), "print one JSON object {\"metric\", \"value\", \"n\", \"per_image\"}")
    ("threads", po::value(&a.threads)->value_name("N")->default_value(0), "CPU threads (0: all)");
  if (command != "ssim")
    d.add_options()("batch", po::value(&a.batch)->value_name("N")->default_value(8), "images per encoder batch");
  if (command == "clip-score" || command == "clip-i")
    d.add_options()("clip", po::value(&a.clip)->value_name("DIR"), "a transformers CLIPModel folder (config.json, "
                    "model.safetensors, preprocessor_config.json, vocab.json, merges.txt)");
  if (command == "dino")
    d.add_options()("dino", po::value(&a.dino)->value_name("DIR"), "a transformers ViTModel folder (config.json, "
                    "model.safetensors, preprocessor_config.json), e.g. facebook/dino-vits16");
  if (command == "clip-score")
    d.add_options()
      ("prompts", po::value(&a.prompts)->value_name("FILE"), "one prompt per line, one per image in file-name order")
      ("metadata", po::value(&a.metadata)->value_name("CSV"), "a diffusers ImageFolder metadata.csv (file_name, text)");
  if (command == "clip-i" || command == "dino" || command == "ssim")
    d.add_options()("reference", po::value(&a.reference)->value_name("DIR"), "the reference (instance / style) images");
  if (command == "clip-i" || command == "dino")
    d.add_options()("pairing", po::value(&a.pairing)->value_name("all|index")->default_value("all"),
                    "all: every image x every reference (DreamBooth); index: image i with reference i");
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

/// Prompts for `images`: one line each from --prompts, or looked up by file name in --metadata.
std::vector<std::string> read_prompts(Args const& a, std::vector<fs::path> const& images) {
  if (a.prompts.empty() == a.metadata.empty())
    SDLORA_THROW(ConfigError, "clip-score needs exactly one of --prompts FILE and --metadata metadata.csv");
  std::vector<std::string> out;
  if (!a.prompts.empty()) {
    std::ifstream in(a.prompts);
    if (!in) SDLORA_THROW(IoError, "--prompts " << a.prompts << " cannot be read");
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!line.empty()) out.push_back(line);
    }
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
  auto const images = load_all(files);
  auto clip = eval::ClipEncoder::load(a.clip);
  auto const batch = std::size_t(a.batch);
  auto const e_img = clip.encode_images(images, batch, progress_line("clip-score: encoded", batch));
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
  auto const images = load_all(files), refs = load_all(ref_files);
  auto const batch = std::size_t(a.batch);
  if (command == "clip-i") {
    auto clip = eval::ClipEncoder::load(a.clip);
    auto const g = clip.encode_images(images, batch, progress_line("clip-i: encoded", batch));
    auto const r = clip.encode_images(refs, batch, progress_line("clip-i: encoded references", batch));
    return eval::embedding_similarity("clip_i", g.view(), r.view(), pairing);
  }
  auto dino = eval::DinoEncoder::load(a.dino);
  auto const g = dino.encode_images(images, batch, progress_line("dino: encoded", batch));
  auto const r = dino.encode_images(refs, batch, progress_line("dino: encoded references", batch));
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

int run(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  std::string const command = argv[1];
  if (command != "clip-score" && command != "clip-i" && command != "dino" && command != "ssim")
    SDLORA_THROW(ConfigError, "unknown command '" << command << "' (clip-score, clip-i, dino, ssim; see --help)");
  Args a;
  auto const desc = options(command, a);
  auto const vm = cli::parse(desc, cli::normalize_flags(argc - 1, argv + 1, '-'));
  if (vm.count("help")) {
    std::cout << desc;
    return 0;
  }
  if (a.batch <= 0) SDLORA_THROW(ConfigError, "--batch must be positive, got " << a.batch);
  if (a.threads < 0) SDLORA_THROW(ConfigError, "--threads must be >= 0, got " << a.threads);
  if (a.threads > 0) omp_set_num_threads(a.threads);
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
