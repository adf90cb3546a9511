/// @file sdlora-generate.cpp
/// @brief sdlora-generate: text-to-image and image-to-image with Stable Diffusion 1.x / 2.x checkpoints, LoRA files
/// (kohya or diffusers / PEFT; adapters or merged; a scale sweep written as a comparison grid) and Textual Inversion
/// embeddings. Every PNG carries its parameters in an A1111-style `parameters` text chunk. Reference: docs/cli.md.
#include <algorithm>   // std::copy_n
#include <cctype>      // std::tolower
#include <cstdint>     // std::uint64_t
#include <filesystem>  // std::filesystem
#include <iostream>    // std::cout, std::cerr
#include <memory>      // std::unique_ptr
#include <optional>    // std::optional
#include <random>      // std::random_device
#include <sstream>     // std::ostringstream
#include <string>      // std::string, std::stoi
#include <tuple>       // std::tie
#include <utility>     // std::pair
#include <vector>      // std::vector


#include <sdlora/eval/plot.hpp>        // eval::scale_sweep_grid
#include <sdlora/io/image.hpp>         // io::load_image, io::resize, io::encode_png, io::make_grid
#include <sdlora/pipeline.hpp>         // pipeline::txt2img, img2img, apply_loras, read_embedding, add_embedding
#include <sdlora/train/interrupt.hpp>  // train::StopSignals
#include <sdlora/train/progress.hpp>   // train::Progress
#include <sdlora/train/state.hpp>      // train::write_file_atomic
#include <sdlora/instances.hpp>  // compiled once in sdlora::instances (examples/CMakeLists.txt)
#if defined(SDLORA_HAS_CUDA)             // a build with -DSDLORA_CUDA=ON: --device cuda
#include <sdlora/cuda.hpp>               // Context<Cuda>
#endif

#include "common/cli.hpp"  // cli::normalize_flags, cli::parse, cli::run_main, cli::path_and_scale, cli::parse_list

#ifndef SDLORA_VERSION_STRING
#define SDLORA_VERSION_STRING "unknown"
#endif

namespace {

namespace fs = std::filesystem;
namespace po = boost::program_options;
using namespace sdlora;

inline constexpr char kProgram[] = "sdlora-generate";
inline constexpr char kSamplers[] = "ddpm, ddim, pndm, euler, euler_a, dpmpp_2m";

struct Args {
  std::string model, config_dir;
  std::string prompt, negative_prompt;
  int steps = 30;
  double cfg = 7.5;
  std::string sampler;
  bool karras = false;
  long long seed = -1;
  int width = 0, height = 0;
  int batch = 1, count = 1;
  std::vector<std::string> loras;
  bool merge_lora = false;
  std::string lora_scales;
  std::string init_image;
  long long max_image_pixels = static_cast<long long>(io::kDefaultMaxImagePixels);
  double strength = 0.8;
  int clip_skip = 0;
  std::vector<std::string> embeddings;
  std::string out = "outputs";
  int threads = 0;
  std::string device = "cpu";
  std::string weights_dtype = "f32";
  std::string compute_dtype = "f32";
  std::string vae;                                   // a replacement VAE
  std::string original_size, target_size, crops;     // SDXL micro-conditioning
};

/// "WxH" -> (W, H), both positive; a ConfigError names the flag otherwise.
std::pair<int, int> parse_size(std::string const& text, char const* flag) {
  auto const x = text.find_first_of("xX");
  try {
    if (x != std::string::npos) {
      std::size_t a = 0, b = 0;
      int const w = std::stoi(text.substr(0, x), &a), h = std::stoi(text.substr(x + 1), &b);
      if (a == x && b == text.size() - x - 1 && w > 0 && h > 0) return {w, h};
    }
  } catch (std::exception const&) {
  }
  SDLORA_THROW(ConfigError, "--" << flag << " must be WxH with positive integers, got '" << text << "'");
}

/// "TOP,LEFT" -> (top, left), both >= 0.
std::pair<int, int> parse_crop(std::string const& text) {
  auto const comma = text.find(',');
  try {
    if (comma != std::string::npos) {
      std::size_t a = 0, b = 0;
      int const top = std::stoi(text.substr(0, comma), &a), left = std::stoi(text.substr(comma + 1), &b);
      if (a == comma && b == text.size() - comma - 1 && top >= 0 && left >= 0) return {top, left};
    }
  } catch (std::exception const&) {
  }
  SDLORA_THROW(ConfigError, "--crops-coords-top-left must be TOP,LEFT with integers >= 0, got '" << text << "'");
}

/// A PNG in [-1, 1] written through a temporary file and a rename: a cancelled, killed or failed write (disk full,
/// RLIMIT_FSIZE) leaves no partial image under `path`.
void save_png_atomic(std::string const& path, TensorView<float const, Cpu> img, io::PngText const& text) {
  train::write_file_atomic(path, io::encode_png(img, io::ImageRange::MinusOneToOne, text), "[save_png]");
}

po::options_description options(Args& a) {
  po::options_description d(
      "Usage: sdlora-generate --model PATH --prompt TEXT [options]\n"
      "Generates images with a Stable Diffusion 1.x / 2.x / SDXL checkpoint (diffusers' semantics: the same seed gives\n"
      "diffusers' image). Flags accept dashes or underscores (--negative-prompt = --negative_prompt).\n\nOptions",
      120, 60);
  // clang-format off
  d.add_options()
    ("help,h", "show this help and exit")
    ("model", po::value(&a.model)->value_name("PATH"), "checkpoint: a diffusers folder (unet/, vae/, text_encoder/, scheduler/) or an "
                                   "SD 1.x / 2.x single .safetensors file (required)")
    ("config-dir", po::value(&a.config_dir)->value_name("DIR"), "diffusers-style folder with unet/vae/text_encoder/scheduler configs for a "
                                             "single file of a non-standard architecture")
    ("prompt", po::value(&a.prompt)->value_name("TEXT"), "the prompt (Textual Inversion tokens may appear in it)")
    ("negative-prompt", po::value(&a.negative_prompt)->value_name("TEXT"), "the negative prompt (default: empty)")
    ("steps", po::value(&a.steps)->value_name("N")->default_value(30), "denoising steps")
    ("cfg", po::value(&a.cfg)->value_name("S")->default_value(7.5), "classifier-free guidance scale (<= 1 disables guidance)")
    ("sampler", po::value(&a.sampler)->value_name("NAME"), "ddpm | ddim | pndm | euler | euler_a | dpmpp_2m (default: the checkpoint's "
                                       "own scheduler)")
    ("karras", po::bool_switch(&a.karras), "Karras sigmas (euler, dpmpp_2m)")
    ("seed", po::value(&a.seed)->value_name("N")->default_value(-1), "random seed; -1 picks one (written into the PNG)")
    ("width", po::value(&a.width)->value_name("W"), "image width in pixels, a multiple of the VAE factor (8) (default: the model's "
                                   "native size, e.g. 512 for SD 1.5)")
    ("height", po::value(&a.height)->value_name("H"), "image height in pixels (default: the model's native size)")
    ("batch", po::value(&a.batch)->value_name("N")->default_value(1), "images per prompt, generated together")
    ("count", po::value(&a.count)->value_name("N")->default_value(1), "number of batches; batch i uses seed + i")
    ("lora", po::value(&a.loras)->value_name("PATH[:SCALE]")->composing(), "a LoRA file (kohya or diffusers/PEFT .safetensors; UNet "
                                               "and text-encoder parts) at SCALE (default 1); repeatable")
    ("merge-lora", po::bool_switch(&a.merge_lora), "merge the LoRAs into the weights (faster sampling)")
    ("lora-scales", po::value(&a.lora_scales)->value_name("S1,S2,.."), "sweep: every --lora at each scale with the same seed; writes "
                                               "the images and a grid with one column per scale (with more than one scale: "
                                               "labelled 'scale S', the prompt above, cells enlarged to fit the labels)")
    ("init-image", po::value(&a.init_image)->value_name("PATH"), "image-to-image: the starting image (resized to --width/--height, or to "
                                             "a multiple of the VAE factor)")
    ("max-image-pixels", po::value(&a.max_image_pixels)->value_name("N")->default_value(a.max_image_pixels),
                                             "refuse an --init-image of more pixels, from its header before decoding "
                                             "(default: Pillow's MAX_IMAGE_PIXELS; 0: no limit)")
    ("strength", po::value(&a.strength)->value_name("S")->default_value(0.8), "image-to-image: how much of the schedule to run, (0, 1]")
    ("clip-skip", po::value(&a.clip_skip)->value_name("N")->default_value(0), "skip the last N text-encoder layers (A1111's 'Clip skip' "
                                                           "minus 1)")
    ("embedding", po::value(&a.embeddings)->value_name("PATH")->composing(), "a Textual Inversion .safetensors file "
                                                         "(diffusers {token: (n, dim)}, or emb_params / "
                                                         "string_to_param with the file name as token); repeatable")
    ("out", po::value(&a.out)->value_name("PATH")->default_value("outputs"), "a .png file (one image; more get -N suffixes), a pattern "
                                                         "with {i} (and {seed}, {scale}) such as out_{i}.png, or a "
                                                         "directory")
    ("weights-dtype", po::value(&a.weights_dtype)->value_name("f32|f16|bf16")->default_value("f32"), "keep the frozen "
                                                         "weights in 16 bits (half the memory; compute stays f32)")
    ("compute-dtype", po::value(&a.compute_dtype)->value_name("f32|bf16")->default_value("f32"), "what the CPU's "
                                                         "matrix products and convolutions multiply: bf16 rounds their "
                                                         "operands and sums in f32 (torch.autocast's bf16): AMX-BF16 or "
                                                         "AVX512-BF16 where the CPU has them, images within bf16 "
                                                         "rounding of f32's")
    ("vae", po::value(&a.vae)->value_name("PATH"), "a replacement VAE: a diffusers AutoencoderKL folder or one .safetensors "
                                                   "file (e.g. the SDXL fp16-fix VAE)")
    ("original-size", po::value(&a.original_size)->value_name("WxH"), "SDXL micro-conditioning: the original image size "
                                                                    "(default: the output size)")
    ("target-size", po::value(&a.target_size)->value_name("WxH"), "SDXL micro-conditioning: the target size (default: "
                                                                "the output size)")
    ("crops-coords-top-left", po::value(&a.crops)->value_name("TOP,LEFT"), "SDXL micro-conditioning: the crop's top-left "
                                                                          "corner (default: 0,0)")
    ("threads", po::value(&a.threads)->value_name("N")->default_value(0), "CPU threads (0: all)")
    ("device", po::value(&a.device)->value_name("cpu|cuda")->default_value("cpu"), "where the text encoder, UNet and VAE "
                                                         "run; cuda needs a build with -DSDLORA_CUDA=ON (LoRAs are "
                                                         "then merged into the weights; no --lora-scales sweep)");
  // clang-format on
  return d;
}

constexpr char kExamples[] =
    "\nExamples:\n"
    "  sdlora-generate --model runwayml/stable-diffusion-v1-5 --prompt \"a photo of a cat\" --seed 42 --out cat.png\n"
    "  sdlora-generate --model v1-5-pruned-emaonly.safetensors --prompt \"a <cat-toy> on a beach\" \\\n"
    "      --embedding learned_embeds.safetensors --lora style.safetensors:0.8 --sampler dpmpp_2m --karras --steps 25\n"
    "  sdlora-generate --model sd15 --prompt \"portrait, style of sks\" --lora sks.safetensors \\\n"
    "      --lora-scales 0,0.25,0.5,0.75,1 --seed 7 --out sweep.png    # grid: one column per scale\n"
    "  sdlora-generate --model sd15 --prompt \"oil painting\" --init-image photo.jpg --strength 0.6 --out painted.png\n"
    "Errors print one line on stderr: exit 2 for usage errors, 1 for everything else.\n";

/// A1111's sampler names.
std::string a1111_sampler(schedulers::SchedulerKind k) {
  switch (k) {
    case schedulers::SchedulerKind::Ddpm: return "DDPM";
    case schedulers::SchedulerKind::Ddim: return "DDIM";
    case schedulers::SchedulerKind::Pndm: return "PLMS";
    case schedulers::SchedulerKind::EulerDiscrete: return "Euler";
    case schedulers::SchedulerKind::EulerAncestralDiscrete: return "Euler a";
    case schedulers::SchedulerKind::DpmSolverMultistep: return "DPM++ 2M";
  }
  return "?";
}

std::string number(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

/// A1111 quotes values that would break its "key: value, key: value" line.
std::string quote(std::string const& v) {
  if (v.find(',') == std::string::npos && v.find('\n') == std::string::npos) return v;
  std::string q = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') q += '\\';
    q += c == '\n' ? ' ' : c;
  }
  return q + "\"";
}

std::string replace_all(std::string s, std::string const& from, std::string const& to) {
  for (std::size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
  return s;
}

/// Where image `index` (of `total`) goes, per the --out rules.
struct OutputNames {
  std::string out;
  Index total = 1;
  bool sweep = false;

  bool is_pattern() const { return out.find("{i}") != std::string::npos; }
  bool is_file() const { return !is_pattern() && fs::path(out).extension() == ".png"; }

  std::string image(Index index, std::uint64_t seed, std::optional<double> scale) const {
    std::string const s = scale ? number(*scale) : std::string();
    if (is_pattern())
      return replace_all(replace_all(replace_all(out, "{i}", std::to_string(index)), "{seed}", std::to_string(seed)),
                         "{scale}", s);
    if (is_file()) {
      if (total == 1 && !sweep) return out;
      fs::path const p(out);
      return (p.parent_path() / (p.stem().string() + "-" + std::to_string(index) + ".png")).string();
    }
    std::ostringstream name;
    name.width(5);
    name.fill('0');
    name << index;
    std::string file = name.str() + "-" + std::to_string(seed) + (scale ? "-lora" + s : "") + ".png";
    return (fs::path(out) / file).string();
  }
  std::string grid() const {
    if (is_pattern()) return replace_all(replace_all(replace_all(out, "{i}", "grid"), "{seed}", "grid"), "{scale}", "");
    if (is_file()) return out;
    return (fs::path(out) / "grid.png").string();
  }
};

void ensure_parent(std::string const& file) {
  fs::path const parent = fs::path(file).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
}

int run(int argc, char** argv) {
  Args a;
  auto const desc = options(a);
  auto const vm = cli::parse(desc, cli::normalize_flags(argc, argv, '-'));
  if (vm.count("help")) {
    std::cout << desc << kExamples;
    return 0;
  }
  // Cheap checks first: a mistake should not cost a model load.
  if (a.model.empty()) SDLORA_THROW(ConfigError, "--model is required (a diffusers folder or a .safetensors file)");
  if (!fs::exists(a.model)) SDLORA_THROW(IoError, "--model " << a.model << " does not exist");
  if (a.steps <= 0) SDLORA_THROW(ConfigError, "--steps must be positive, got " << a.steps);
  if (a.batch <= 0 || a.count <= 0)
    SDLORA_THROW(ConfigError, "--batch and --count must be positive, got " << a.batch << " and " << a.count);
  if (vm.count("width") && a.width <= 0) SDLORA_THROW(ConfigError, "--width must be positive, got " << a.width);
  if (vm.count("height") && a.height <= 0) SDLORA_THROW(ConfigError, "--height must be positive, got " << a.height);
  if (a.clip_skip < 0) SDLORA_THROW(ConfigError, "--clip-skip must be >= 0, got " << a.clip_skip);
  if (!a.init_image.empty() && !(a.strength > 0 && a.strength <= 1))
    SDLORA_THROW(ConfigError, "--strength must be in (0, 1], got " << a.strength);
  if (a.threads < 0) SDLORA_THROW(ConfigError, "--threads must be >= 0, got " << a.threads);
  if (a.device != "cpu" && a.device != "cuda")
    SDLORA_THROW(ConfigError, "--device must be cpu or cuda, got '" << a.device << "'");
#if !defined(SDLORA_HAS_CUDA)
  if (a.device == "cuda")
    SDLORA_THROW(ConfigError, "--device cuda: this sdlora-generate was built without the CUDA backend (configure with "
                              "-DSDLORA_CUDA=ON)");
#endif
  bool const on_gpu = a.device == "cuda";
  if (on_gpu && !a.lora_scales.empty())
    SDLORA_THROW(ConfigError, "--lora-scales is not available with --device cuda yet (the LoRAs are merged before "
                              "the model moves to the GPU): sweep on --device cpu");
  if (a.max_image_pixels < 0)
    SDLORA_THROW(ConfigError, "--max-image-pixels must be >= 0 (0: no limit), got " << a.max_image_pixels);
  std::string sampler = a.sampler;
  for (char& c : sampler) c = c == '-' ? '_' : char(std::tolower(static_cast<unsigned char>(c)));
  if (!sampler.empty() && sampler != "ddpm" && sampler != "ddim" && sampler != "pndm" && sampler != "euler" &&
      sampler != "euler_a" && sampler != "dpmpp_2m")
    SDLORA_THROW(ConfigError, "--sampler '" << a.sampler << "' is unknown (valid: " << kSamplers << ")");
  std::vector<double> sweep;
  if (!a.lora_scales.empty()) {
    sweep = cli::parse_list(a.lora_scales, "lora-scales");
    if (a.loras.empty()) SDLORA_THROW(ConfigError, "--lora-scales needs at least one --lora");
  }
  std::vector<pipeline::LoraSpec> lora_specs;
  for (auto const& spec : a.loras) {
    auto [path, scale] = cli::path_and_scale(spec);
    if (!fs::exists(path)) SDLORA_THROW(IoError, "--lora " << path << " does not exist");
    lora_specs.push_back({path, scale});
  }
  for (auto const& path : a.embeddings)
    if (!fs::exists(path)) SDLORA_THROW(IoError, "--embedding " << path << " does not exist");
  if (!a.init_image.empty() && !fs::exists(a.init_image))
    SDLORA_THROW(IoError, "--init-image " << a.init_image << " does not exist");
  cpu::set_default_thread_count(a.threads);  // every Context<Cpu> the program makes

  Context<Cpu> ctx;
  ctx.num_threads = a.threads;
  ctx.compute = cli::parse_compute_dtype(a.compute_dtype, "--compute-dtype", a.device);
  models::LoadOptions lo;
  lo.config_dir = a.config_dir;
  lo.weights_dtype = nn::parse_weight_dtype(a.weights_dtype);  // narrowed while loading
  auto sd = models::load_stable_diffusion<float>(a.model, lo);
  if (!a.vae.empty()) sd.vae = models::load_vae<float>(a.vae, sd.vae.config());
  bool const micro = !a.original_size.empty() || !a.target_size.empty() || !a.crops.empty();
  if (micro && !sd.is_sdxl())
    SDLORA_THROW(ConfigError, "--original-size, --target-size and --crops-coords-top-left are SDXL's micro-conditioning; "
                                  << a.model << " is not an SDXL checkpoint");
  models::set_weight_storage(sd, nn::parse_weight_dtype(a.weights_dtype));
  int const f = sd.vae_scale();

  // Textual Inversion: tokens and rows before any LoRA touches the text encoder.
  std::vector<std::string> ti_tokens;
  for (auto const& path : a.embeddings) {
    auto ti = pipeline::read_embedding(path);
    pipeline::add_embedding(sd.tokenizer, sd.text_encoder, ti);
    ti_tokens.push_back(ti.token);
  }
  // LoRAs: adapters for a sweep (the scale changes per column; merged per column with --merge-lora).
  bool const sweeping = !sweep.empty();
  auto loaded = pipeline::apply_loras(sd, lora_specs,
                                      (a.merge_lora || on_gpu) && !sweeping ? lora::ApplyMode::Merge
                                                                            : lora::ApplyMode::Adapter);
#if defined(SDLORA_HAS_CUDA)
  // --device cuda: the loaded (TI rows added, LoRAs merged) checkpoint copied to the GPU once; the host copy stays
  // for the scheduler's configuration and the PNG parameters.
  std::unique_ptr<Context<Cuda>> gpu;
  std::unique_ptr<models::StableDiffusion<float, Cuda>> sd_gpu;
  if (on_gpu) {
    gpu = std::make_unique<Context<Cuda>>();
    sd_gpu = std::make_unique<models::StableDiffusion<float, Cuda>>(pipeline::on_backend<Cuda>(sd));
  }
#endif

  // Size: flags, else the init image (rounded down to the VAE factor), else the model's native size.
  Tensor<float, Cpu> init;
  if (!a.init_image.empty()) {
    io::ImageLoadOptions const load{io::ImageRange::MinusOneToOne, std::uint64_t(a.max_image_pixels)};
    init = io::load_image(a.init_image, load);  // (3, H, W) in [-1, 1]
    Index h = a.height > 0 ? a.height : init.dim(1) / f * f, w = a.width > 0 ? a.width : init.dim(2) / f * f;
    if (h <= 0 || w <= 0)
      SDLORA_THROW(ConfigError, "--init-image " << a.init_image << " is " << init.dim(2) << "x" << init.dim(1)
                                                << ", smaller than the VAE factor " << f);
    if (h % f != 0 || w % f != 0)
      SDLORA_THROW(ConfigError, "--width and --height must be multiples of " << f << ", got " << w << "x" << h);
    if (h != init.dim(1) || w != init.dim(2)) init = io::resize(init.view(), h, w, io::Filter::Bicubic);
    a.width = int(w);
    a.height = int(h);
  }
  if (a.width <= 0) a.width = sd.unet.config().sample_size * f;
  if (a.height <= 0) a.height = sd.unet.config().sample_size * f;
  if (a.width % f != 0 || a.height % f != 0)
    SDLORA_THROW(ConfigError, "--width and --height must be multiples of " << f << " (the VAE factor), got "
                                                                         << a.width << "x" << a.height);

  std::uint64_t const seed = a.seed >= 0 ? std::uint64_t(a.seed)
                                         : std::uint64_t(std::random_device{}());
  pipeline::GenerateOptions g;
  g.prompt = a.prompt;
  g.negative_prompt = a.negative_prompt;
  g.steps = a.steps;
  g.guidance_scale = a.cfg;
  g.width = a.width;
  g.height = a.height;
  g.batch_size = a.batch;
  g.sampler = sampler;
  g.karras = a.karras;
  g.clip_skip = a.clip_skip;
  g.strength = a.strength;
  if (!a.original_size.empty()) std::tie(g.original_width, g.original_height) = parse_size(a.original_size, "original-size");
  if (!a.target_size.empty()) std::tie(g.target_width, g.target_height) = parse_size(a.target_size, "target-size");
  if (!a.crops.empty()) std::tie(g.crop_top, g.crop_left) = parse_crop(a.crops);
  auto const kind = pipeline::make_scheduler(sd, g)->config().kind;  // also validates --karras for this sampler

  fs::path model_path(a.model);
  if (model_path.filename().empty()) model_path = model_path.parent_path();
  std::string const model_name = fs::is_directory(model_path) ? model_path.filename().string()
                                                              : model_path.stem().string();
  auto parameters = [&](std::uint64_t image_seed, int batch_pos, std::vector<double> const& scales) {
    std::ostringstream p;
    p << a.prompt << "\n";
    if (!a.negative_prompt.empty()) p << "Negative prompt: " << a.negative_prompt << "\n";
    p << "Steps: " << a.steps << ", Sampler: " << a1111_sampler(kind);
    if (a.karras) p << ", Schedule type: Karras";
    p << ", CFG scale: " << number(a.cfg) << ", Seed: " << image_seed << ", Size: " << a.width << "x" << a.height
      << ", Model: " << quote(model_name);
    if (a.batch > 1) p << ", Batch size: " << a.batch << ", Batch pos: " << batch_pos;
    if (!a.init_image.empty()) p << ", Denoising strength: " << number(a.strength);
    if (a.clip_skip > 0) p << ", Clip skip: " << a.clip_skip + 1;
    if (a.compute_dtype == "bf16") p << ", Compute: bf16";
    if (!a.vae.empty()) p << ", VAE: " << quote(fs::path(a.vae).filename().string());
    if (!a.original_size.empty()) p << ", Original size: " << g.original_width << "x" << g.original_height;
    if (!a.target_size.empty()) p << ", Target size: " << g.target_width << "x" << g.target_height;
    if (!a.crops.empty()) p << ", Crop top-left: " << g.crop_top << "," << g.crop_left;
    if (!loaded.empty()) {
      std::string l;
      for (std::size_t i = 0; i < loaded.size(); ++i)
        l += (i ? ", " : "") + loaded[i].name + ":" + number(scales[i]);
      p << ", Lora: " << quote(l);
      if (a.merge_lora) p << ", Lora merged: True";
    }
    if (!ti_tokens.empty()) {
      std::string t;
      for (std::size_t i = 0; i < ti_tokens.size(); ++i) t += (i ? ", " : "") + ti_tokens[i];
      p << ", TI: " << quote(t);
    }
    p << ", sdlora: " << SDLORA_VERSION_STRING;
    return p.str();
  };

  std::vector<std::optional<double>> columns;
  if (sweeping)
    for (double s : sweep) columns.push_back(s);
  else
    columns.push_back(std::nullopt);
  Index const runs = Index(a.count) * Index(columns.size());
  OutputNames names{a.out, Index(a.count) * a.batch * Index(columns.size()), sweeping};
  if (!names.is_pattern() && !names.is_file()) fs::create_directories(a.out);

  std::unique_ptr<train::Progress> progress;
  std::int64_t done = 0;
  auto callback = [&](pipeline::StepInfo const& info) {
    if (!progress) {
      train::ProgressOptions popt;
      popt.label = "generate";
      popt.total = std::int64_t(runs) * info.total;
      popt.every = info.total;  // plain output: one line per image batch
      progress = std::make_unique<train::Progress>(popt);
    }
    progress->update(++done);
    return train::StopSignals::received() == 0;  // Ctrl-C / SIGTERM: cancel between steps, write nothing more
  };

  // images[c][column] = the batch of count c at that column; written as soon as it exists.
  std::vector<std::vector<Tensor<float, Cpu>>> images(std::size_t(a.count));
  Index written = 0;
  for (int c = 0; c < a.count; ++c) {
    g.seed = seed + std::uint64_t(c);
    for (std::size_t k = 0; k < columns.size(); ++k) {
      std::optional<double> const column = columns[k];
      std::vector<double> scales;
      for (auto& l : loaded) {
        if (column) {
          if (a.merge_lora) pipeline::unmerge_loras(ctx, sd);
          pipeline::set_lora_scale(sd, l, *column);
        }
        scales.push_back(l.scale);
      }
      if (column && a.merge_lora) pipeline::merge_loras(ctx, sd);
      auto generate = [&]() -> pipeline::Generated {
#if defined(SDLORA_HAS_CUDA)
        if (sd_gpu)
          return init.empty() ? pipeline::txt2img(*gpu, *sd_gpu, g, callback)
                              : pipeline::img2img(*gpu, *sd_gpu, init.view(), g, callback);
#endif
        return init.empty() ? pipeline::txt2img(ctx, sd, g, callback)
                            : pipeline::img2img(ctx, sd, init.view(), g, callback);
      };
      auto out = generate();
      Index const per = 3 * Index(a.height) * a.width;
      for (int b = 0; b < a.batch; ++b) {
        Tensor<float, Cpu> img(Shape{3, a.height, a.width});
        std::copy_n(out.images.data() + b * per, per, img.data());
        // Image index: row-major over (count, batch, column), the grid's order.
        Index const row = Index(c) * a.batch + b;
        Index const index = row * Index(columns.size()) + Index(k);
        std::string const path = names.image(index, g.seed, column);
        ensure_parent(path);
        save_png_atomic(path, img.view(), {{"parameters", parameters(g.seed, b, scales)}});
        ++written;
        images[std::size_t(c)].push_back(std::move(img));
      }
    }
  }
  if (progress) progress->finish();
  if (sweeping) {
    // Grid rows are images, columns the scales: reorder (count, column, batch) into (count, batch, column).
    std::vector<Tensor<float, Cpu>> cells;
    for (int c = 0; c < a.count; ++c)
      for (int b = 0; b < a.batch; ++b)
        for (std::size_t k = 0; k < columns.size(); ++k)
          cells.push_back(images[std::size_t(c)][k * std::size_t(a.batch) + std::size_t(b)]);
    Tensor<float, Cpu> grid = io::make_grid(cells, Index(columns.size()));  // (3, rows H, columns W) in [-1, 1]
    if (sweep.size() > 1) {  // a labelled figure: the prompt as the title, "scale S" over the columns
      std::vector<std::string> rows;
      for (int c = 0; c < a.count && a.count * a.batch > 1; ++c)
        for (int b = 0; b < a.batch; ++b)
          rows.push_back("seed " + std::to_string(seed + std::uint64_t(c)) +
                         (a.batch > 1 ? " #" + std::to_string(b) : ""));
      for (auto& cell : cells)
        for (Index i = 0; i < cell.numel(); ++i) cell(i) = cell(i) * 0.5f + 0.5f;
      grid = eval::scale_sweep_grid(cells, sweep, a.prompt, rows);
      for (Index i = 0; i < grid.numel(); ++i) grid(i) = grid(i) * 2.0f - 1.0f;
    }
    std::string const path = names.grid();
    ensure_parent(path);
    save_png_atomic(path, grid.view(),
                    {{"parameters", parameters(seed, 0, std::vector<double>(loaded.size(), sweep.front())) +
                                        ", Lora scales: " + quote(a.lora_scales)}});
    std::cerr << kProgram << ": wrote " << written << " images and the grid " << path << "\n";
  } else {
    std::cerr << kProgram << ": wrote " << written << (written == 1 ? " image" : " images") << " ("
              << (written == 1 ? names.image(0, seed, std::nullopt) : a.out) << ")\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  train::StopSignals const signals;  // Ctrl-C / SIGTERM cancel between denoising steps; SIGXFSZ is an IoError
  int const rc = cli::run_main(kProgram, [&] { return run(argc, argv); });
  int const sig = train::StopSignals::received();
  return rc == 1 && sig != 0 ? train::StopSignals::exit_status(sig) : rc;  // cancelled: 130 / 143
}
