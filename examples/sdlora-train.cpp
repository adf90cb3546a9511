/// @file sdlora-train.cpp
/// @brief sdlora-train: LoRA (style), DreamBooth-LoRA (subject, prior preservation) and Textual Inversion training
/// on a Stable Diffusion 1.x / 2.x checkpoint, with flags named like diffusers' training scripts (dashes or
/// underscores), a config file, checkpoints and resume. Reference: docs/cli.md.
#include <algorithm>   // std::replace
#include <cctype>      // std::isalnum
#include <filesystem>  // std::filesystem
#include <fstream>     // std::ifstream
#include <iostream>    // std::cout, std::cerr
#include <optional>    // std::optional
#include <string>      // std::string
#include <string_view>  // std::string_view
#include <vector>      // std::vector


#include <sdlora/all.hpp>                // models, pipeline, train
#include <sdlora/train/dataset.hpp>      // train::open_dataset
#include <sdlora/train/interrupt.hpp>    // train::StopSignals
#include <sdlora/train/sources.hpp>      // train::DatasetSource, train::TemplateSource
#include <sdlora/instances.hpp>  // compiled once in sdlora::instances (examples/CMakeLists.txt)

#if defined(SDLORA_HAS_CUDA)             // a build with -DSDLORA_CUDA=ON: --device cuda
#include <sdlora/cuda.hpp>               // Context<Cuda>
#endif
#if SDLORA_HAS_MPI
#include <sdlora/train/communicator_mpi.hpp>  // train::MpiCommunicator (mpirun -np N sdlora-train ...)
#endif

#include "common/cli.hpp"  // cli::normalize_flags, cli::parse, cli::run_main

namespace {

namespace fs = std::filesystem;
namespace po = boost::program_options;
using namespace sdlora;

inline constexpr char kProgram[] = "sdlora-train";

// The processes of this run: the ranks of mpirun / srun in a build with SDLORA_MPI=ON (one process without a
// launcher), else one process (docs/scaling.md).
#if SDLORA_HAS_MPI
using Communicator = train::MpiCommunicator;
#else
struct Communicator : train::SingleProcess {
  explicit Communicator(double /*timeout_seconds*/) {}
};
#endif

struct Args {
  std::string method = "lora";
  std::string model, model_alias, config_dir, output_dir = "sdlora-output", output_name = "sdlora_lora";
  std::string train_data_dir, caption_column = "text", image_column = "file_name", caption_template;
  bool invert = false;
  std::string instance_data_dir, instance_prompt, class_data_dir, class_prompt;
  bool with_prior_preservation = false;
  double prior_loss_weight = 1.0;
  int num_class_images = 100;
  int resolution = 512;
  bool center_crop = true, random_crop = false, random_flip = false, bucketing = false, strict = false;
  double caption_dropout = 0;
  int train_batch_size = 1, gradient_accumulation_steps = 1;
  long long max_train_steps = 1000;
  double learning_rate = 1e-4, text_encoder_lr = 0;
  std::string lr_scheduler = "constant";
  long long lr_warmup_steps = 0;
  int lr_num_cycles = 1;
  double lr_power = 1.0;
  std::string optimizer = "adamw";
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_epsilon = 1e-8, adam_weight_decay = 1e-2, momentum = 0;
  double max_grad_norm = 1.0;
  int rank = 4;
  double lora_alpha = 0, lora_dropout = 0;
  std::string target_modules = "to_q|to_k|to_v|to_out.0";
  bool train_conv = false, train_text_encoder = false;
  double snr_gamma = 0, noise_offset = 0;
  std::string prediction_type;
  bool gradient_checkpointing = false, no_cache_latents = false;
  long long checkpointing_steps = 500;
  int checkpoints_total_limit = 0;
  std::string resume_from_checkpoint;
  std::vector<std::string> validation_prompts;
  long long validation_steps = 0;
  int validation_inference_steps = 20;
  unsigned long long seed = 0;
  std::string save_format = "kohya", save_precision = "fp32";
  std::string placeholder_token, initializer_token, learnable_property = "object";
  int num_vectors = 1;
  std::string config_file;
  std::string on_nan = "stop";
  int threads = 0;
  std::string device = "cpu";
  double collective_timeout = 1800;
  std::string weights_dtype = "f32";
  long long max_image_pixels = static_cast<long long>(io::kDefaultMaxImagePixels);
};

po::options_description options(Args& a) {
  po::options_description d(
      "Usage: sdlora-train --pretrained_model PATH (--train_data_dir DIR | --instance_data_dir DIR) [options]\n"
      "Trains a LoRA, a DreamBooth-LoRA or a Textual Inversion embedding. Flags follow diffusers' training scripts;\n"
      "dashes and underscores are interchangeable. Results go to --output_dir.\n\nOptions",
      120, 60);
  // clang-format off
  d.add_options()
    ("help,h", "show this help and exit")
    ("config", po::value(&a.config_file)->value_name("FILE"), "read flags from FILE (lines 'name = value', '#' comments); command-line flags win")
    ("method", po::value(&a.method)->value_name("M")->default_value("lora"), "lora | dreambooth | textual_inversion (--instance_data_dir implies dreambooth)")
    ("pretrained_model", po::value(&a.model)->value_name("PATH"), "base checkpoint: a diffusers folder or an SD 1.x / 2.x single .safetensors file")
    ("pretrained_model_name_or_path", po::value(&a.model_alias)->value_name("PATH"), "same as --pretrained_model (diffusers' name)")
    ("config_dir", po::value(&a.config_dir)->value_name("DIR"), "configs for a single file of a non-standard architecture")
    ("output_dir", po::value(&a.output_dir)->value_name("DIR")->default_value("sdlora-output"), "where the LoRA, checkpoints, loss.csv and images go")
    ("output_name", po::value(&a.output_name)->value_name("NAME")->default_value("sdlora_lora"), "file name of the kohya LoRA (without .safetensors)")
    ("train_data_dir", po::value(&a.train_data_dir)->value_name("DIR"), "images with metadata.csv / metadata.jsonl / .txt captions, kohya N_name/ folders, or QuickDraw .npy files")
    ("caption_column", po::value(&a.caption_column)->value_name("COL")->default_value("text"), "caption column of metadata.csv / .jsonl")
    ("image_column", po::value(&a.image_column)->value_name("COL")->default_value("file_name"), "image path column of metadata.csv / .jsonl")
    ("caption_template", po::value(&a.caption_template)->value_name("TEXT"), "QuickDraw captions, {} = class name (default 'a scribble of {}')")
    ("invert", po::bool_switch(&a.invert), "QuickDraw: black strokes on white")
    ("instance_data_dir", po::value(&a.instance_data_dir)->value_name("DIR"), "DreamBooth / Textual Inversion: photos of the subject")
    ("instance_prompt", po::value(&a.instance_prompt)->value_name("TEXT"), "DreamBooth: e.g. 'a photo of sks toy'")
    ("class_data_dir", po::value(&a.class_data_dir)->value_name("DIR"), "DreamBooth prior images (missing ones are generated and cached here)")
    ("class_prompt", po::value(&a.class_prompt)->value_name("TEXT"), "DreamBooth: e.g. 'a photo of a toy'")
    ("with_prior_preservation", po::bool_switch(&a.with_prior_preservation), "DreamBooth: add the class-image loss")
    ("prior_loss_weight", po::value(&a.prior_loss_weight)->value_name("W")->default_value(1.0), "weight of the class-image loss")
    ("num_class_images", po::value(&a.num_class_images)->value_name("N")->default_value(100), "class images to have (generated when missing)")
    ("resolution", po::value(&a.resolution)->value_name("PX")->default_value(512), "training resolution (a multiple of the VAE factor)")
    ("random_crop", po::bool_switch(&a.random_crop), "random instead of center crop")
    ("random_flip", po::bool_switch(&a.random_flip), "random horizontal flips")
    ("enable_bucket", po::bool_switch(&a.bucketing), "kohya aspect-ratio buckets (each batch from one bucket)")
    ("strict", po::bool_switch(&a.strict), "fail on unreadable or tiny images instead of skipping them")
    ("caption_dropout", po::value(&a.caption_dropout)->value_name("P")->default_value(0.0), "probability of the empty caption")
    ("train_batch_size", po::value(&a.train_batch_size)->value_name("N")->default_value(1), "examples per micro-batch")
    ("gradient_accumulation_steps", po::value(&a.gradient_accumulation_steps)->value_name("N")->default_value(1), "micro-batches per optimizer step")
    ("max_train_steps", po::value(&a.max_train_steps)->value_name("N")->default_value(1000), "optimizer steps (a resumed run with a larger value continues)")
    ("learning_rate", po::value(&a.learning_rate)->value_name("LR")->default_value(1e-4), "learning rate")
    ("text_encoder_lr", po::value(&a.text_encoder_lr)->value_name("LR")->default_value(0.0), "text-encoder LoRA learning rate (0: --learning_rate)")
    ("lr_scheduler", po::value(&a.lr_scheduler)->value_name("NAME")->default_value("constant"), "constant | constant_with_warmup | linear | cosine | cosine_with_restarts | polynomial")
    ("lr_warmup_steps", po::value(&a.lr_warmup_steps)->value_name("N")->default_value(0), "warmup steps")
    ("lr_num_cycles", po::value(&a.lr_num_cycles)->value_name("N")->default_value(1), "cosine_with_restarts cycles")
    ("lr_power", po::value(&a.lr_power)->value_name("P")->default_value(1.0), "polynomial power")
    ("optimizer", po::value(&a.optimizer)->value_name("NAME")->default_value("adamw"), "adamw | adamw8bit (bitsandbytes' 8-bit AdamW) | adafactor | sgd")
    ("adam_beta1", po::value(&a.adam_beta1)->default_value(0.9), "AdamW beta1")
    ("adam_beta2", po::value(&a.adam_beta2)->default_value(0.999), "AdamW beta2")
    ("adam_epsilon", po::value(&a.adam_epsilon)->default_value(1e-8), "AdamW epsilon")
    ("adam_weight_decay", po::value(&a.adam_weight_decay)->default_value(1e-2), "decoupled weight decay")
    ("momentum", po::value(&a.momentum)->default_value(0.0), "SGD momentum (Nesterov when > 0)")
    ("max_grad_norm", po::value(&a.max_grad_norm)->value_name("N")->default_value(1.0), "gradient clipping (0: off)")
    ("rank", po::value(&a.rank)->value_name("R")->default_value(4), "LoRA rank")
    ("lora_alpha", po::value(&a.lora_alpha)->value_name("A")->default_value(0.0), "LoRA alpha (0: = rank, as diffusers); kohya's --network_alpha")
    ("lora_dropout", po::value(&a.lora_dropout)->value_name("P")->default_value(0.0), "dropout on the LoRA input")
    ("target_modules", po::value(&a.target_modules)->value_name("LIST")->default_value("to_q|to_k|to_v|to_out.0"), "UNet layers to adapt, '|' or ',' separated name endings")
    ("train_conv", po::bool_switch(&a.train_conv), "also adapt matching convolutions (LoCon), e.g. with --target_modules ...|conv1|conv2")
    ("train_text_encoder", po::bool_switch(&a.train_text_encoder), "also train text-encoder LoRA (q/k/v/out_proj)")
    ("snr_gamma", po::value(&a.snr_gamma)->value_name("G")->default_value(0.0), "min-SNR-gamma loss weighting (0: off; 5 is typical)")
    ("noise_offset", po::value(&a.noise_offset)->value_name("X")->default_value(0.0), "noise offset")
    ("prediction_type", po::value(&a.prediction_type)->value_name("T"), "epsilon | v_prediction (default: the checkpoint's)")
    ("gradient_checkpointing", po::bool_switch(&a.gradient_checkpointing), "recompute UNet blocks in backward (less memory)")
    ("no_cache_latents", po::bool_switch(&a.no_cache_latents), "encode images with the VAE every step")
    ("checkpointing_steps", po::value(&a.checkpointing_steps)->value_name("N")->default_value(500), "save a resumable checkpoint every N steps (0: only at the end)")
    ("checkpoints_total_limit", po::value(&a.checkpoints_total_limit)->value_name("K")->default_value(0), "keep only the last K checkpoints (0: all)")
    ("resume_from_checkpoint", po::value(&a.resume_from_checkpoint)->value_name("PATH|latest"), "continue a run")
    ("validation_prompt", po::value(&a.validation_prompts)->value_name("TEXT")->composing(), "generate this prompt during training (repeatable)")
    ("validation_steps", po::value(&a.validation_steps)->value_name("N")->default_value(0), "validation images every N steps (0: at the end only)")
    ("validation_inference_steps", po::value(&a.validation_inference_steps)->default_value(20), "denoising steps of validation images")
    ("seed", po::value(&a.seed)->value_name("N")->default_value(0), "seed of everything random")
    ("save_format", po::value(&a.save_format)->value_name("F")->default_value("kohya"), "kohya | peft | both")
    ("save_precision", po::value(&a.save_precision)->value_name("P")->default_value("fp32"), "fp32 | fp16 | bf16 for the saved LoRA")
    ("placeholder_token", po::value(&a.placeholder_token)->value_name("TOK"), "Textual Inversion: the new token, e.g. '<erica>'")
    ("initializer_token", po::value(&a.initializer_token)->value_name("WORD"), "Textual Inversion: one existing token to start from, e.g. 'toy'")
    ("num_vectors", po::value(&a.num_vectors)->value_name("N")->default_value(1), "Textual Inversion: vectors per token")
    ("learnable_property", po::value(&a.learnable_property)->value_name("P")->default_value("object"), "Textual Inversion: object | style prompt templates")
    ("on_nan", po::value(&a.on_nan)->value_name("stop|skip")->default_value("stop"), "a step with a NaN / inf loss or gradient: stop naming the module (no LoRA written), or skip its update (counted in loss.csv)")
    ("weights_dtype", po::value(&a.weights_dtype)->value_name("f32|f16|bf16")->default_value("f32"), "keep the frozen base weights in 16 bits (half the memory; compute, LoRA weights and optimizer state stay f32)")
    ("threads", po::value(&a.threads)->value_name("N")->default_value(0), "CPU threads (0: all)")
    ("device", po::value(&a.device)->value_name("cpu|cuda")->default_value("cpu"), "where the text encoders, UNet and VAE train and run: cuda needs a build with -DSDLORA_CUDA=ON (data, caches, checkpoints and files stay on the host)")
    ("collective_timeout", po::value(&a.collective_timeout)->value_name("S")->default_value(1800), "mpirun -np N: end the job when a rank waits more than S seconds for the others (a hung or lost rank; must exceed a step, a checkpoint and the validation images; 0: forever)")
    ("max_image_pixels", po::value(&a.max_image_pixels)->value_name("N")->default_value(a.max_image_pixels), "skip (with --strict: refuse) training images of more pixels, from their header (default: Pillow's MAX_IMAGE_PIXELS; 0: no limit)");
  // clang-format on
  return d;
}

std::string normalized_targets(std::string t) {
  std::string out;
  for (char c : t) {
    if (c == ',') out += '|';
    else if (c == '.') out += "\\.";
    else if (c != ' ') out += c;
  }
  return out;
}

DType precision(std::string const& p) {
  if (p == "fp32") return DType::F32;
  if (p == "fp16") return DType::F16;
  if (p == "bf16") return DType::BF16;
  SDLORA_THROW(ConfigError, "--save_precision: '" << p << "' (expected fp32, fp16 or bf16)");
}

/// Generates the missing DreamBooth class images with the base model (before any adapter is attached).
/// Generates the missing class images; under mpirun each rank makes its share (image i on rank i mod N, the same
/// pixels as on one process) and all wait for the others.
void ensure_class_images(Context<Cpu>& ctx, models::StableDiffusion<float>& sd, Args const& a, Communicator& comm) {
  fs::create_directories(a.class_data_dir);
  int have = 0;
  for (auto const& e : fs::directory_iterator(a.class_data_dir))
    if (e.path().extension() == ".png" || e.path().extension() == ".jpg") ++have;
  comm.barrier();  // every rank has counted before any writes
  if (have >= a.num_class_images) return;
  if (comm.rank() == 0)
    std::cerr << "generating " << a.num_class_images - have << " class images for '" << a.class_prompt << "'\n";
  for (int i = have; i < a.num_class_images; ++i) {
    if ((i - have) % comm.size() != comm.rank()) continue;
    pipeline::GenerateOptions g;
    g.prompt = a.class_prompt;
    g.width = g.height = a.resolution;
    g.steps = 25;
    g.seed = a.seed + 1000003ull * std::uint64_t(i + 1);
    auto img = pipeline::txt2img(ctx, sd, g);
    train::detail::save_png_atomic((fs::path(a.class_data_dir) / ("class-" + std::to_string(i) + ".png")).string(),
                                   img.images[0], io::ImageRange::MinusOneToOne,
                                   {{"parameters", g.prompt + "\nSeed: " + std::to_string(g.seed)}});
    if (int const sig = train::StopSignals::received())
      SDLORA_THROW(Error, "interrupted by signal " << sig << " while generating class images (" << i + 1 - have
                                                   << " written to " << a.class_data_dir << ")");
  }
  comm.barrier();
}

train::DatasetOptions dataset_options(Args const& a, std::string const& path, std::string const& fixed_prompt) {
  train::DatasetOptions d;
  d.path = path;
  d.instance_prompt = fixed_prompt;
  d.caption_column = a.caption_column;
  d.image_column = a.image_column;
  if (!a.caption_template.empty()) d.caption_template = a.caption_template;
  d.invert = a.invert;
  d.resolution = a.resolution;
  d.center_crop = !a.random_crop;
  d.random_flip = a.random_flip;
  d.caption_dropout = a.caption_dropout;
  d.bucketing = a.bucketing;
  d.strict = a.strict;
  return d;
}

/// `arg` quoted for a POSIX shell when it needs it.
std::string shell_quoted(std::string const& arg) {
  bool plain = !arg.empty();
  for (char c : arg)
    plain = plain && (std::isalnum(static_cast<unsigned char>(c)) || std::string_view("-_./=:,+@%").find(c) !=
                                                                         std::string_view::npos);
  if (plain) return arg;
  std::string out = "'";
  for (char c : arg) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

/// The command line that continues this run: the same arguments with --resume_from_checkpoint latest.
std::string resume_command(int argc, char** argv) {
  std::string out = shell_quoted(argv[0]);
  for (int i = 1; i < argc; ++i) {
    std::string const arg = argv[i];
    std::string flag = arg.substr(0, arg.find('='));
    std::replace(flag.begin(), flag.end(), '-', '_');
    if (flag == "__resume_from_checkpoint") {  // drop it and its value; it is added again below
      if (arg.find('=') == std::string::npos) ++i;
      continue;
    }
    // Two appends, not " " + shell_quoted(arg): GCC 12 at -O3 warns (-Wrestrict, a false positive) about the
    // inlined operator+(char const*, std::string&&).
    out += ' ';
    out += shell_quoted(arg);
  }
  return out + " --resume_from_checkpoint latest";
}

int train_model(Args const& a, train::Method method, std::string const& data_dir, po::variables_map const& vm,
                int argc, char** argv, Communicator& comm, std::ostream& info);

int run(int argc, char** argv) {
  Args a;
  auto const desc = options(a);
  auto const args = cli::normalize_flags(argc, argv, '_');
  po::variables_map vm = cli::parse(desc, args);
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return 0;
  }
  if (!a.config_file.empty()) {  // command-line values were stored first and win
    std::ifstream in(a.config_file);
    if (!in) SDLORA_THROW(IoError, "--config: cannot read " << a.config_file);
    try {
      po::store(po::parse_config_file(in, desc), vm);
      po::notify(vm);
    } catch (po::error const& e) {  // name the file: the message alone does not say which one
      SDLORA_THROW(ConfigError, "--config " << a.config_file << ": " << e.what());
    }
  }
  if (a.device != "cpu" && a.device != "cuda")
    SDLORA_THROW(ConfigError, "--device must be cpu or cuda, got '" << a.device << "'");
#if !defined(SDLORA_HAS_CUDA)
  if (a.device == "cuda")
    SDLORA_THROW(ConfigError, "--device cuda: this sdlora-train was built without the CUDA backend (configure with "
                              "-DSDLORA_CUDA=ON)");
#endif
  if (a.model.empty()) a.model = a.model_alias;
  if (a.model.empty()) SDLORA_THROW(ConfigError, "--pretrained_model is required");
  if (!a.instance_data_dir.empty() && a.method == "lora") a.method = "dreambooth";
  auto const method = train::method_from_name(a.method);
  // LoRA reads --train_data_dir, DreamBooth --instance_data_dir, Textual Inversion either (diffusers'
  // textual_inversion.py calls it --train_data_dir).
  std::string data_dir = method == train::Method::DreamBooth ? a.instance_data_dir : a.train_data_dir;
  if (method == train::Method::TextualInversion && data_dir.empty()) data_dir = a.instance_data_dir;
  if (data_dir.empty())
    SDLORA_THROW(ConfigError, (method == train::Method::DreamBooth ? "--instance_data_dir" : "--train_data_dir")
                                  << " is required for --method " << a.method);
  if (!fs::exists(data_dir)) SDLORA_THROW(IoError, "data folder " << data_dir << " does not exist");
  if (method == train::Method::DreamBooth && a.instance_prompt.empty())
    SDLORA_THROW(ConfigError, "--instance_prompt is required for DreamBooth (e.g. 'a photo of sks toy')");
  if (a.with_prior_preservation && (a.class_data_dir.empty() || a.class_prompt.empty()))
    SDLORA_THROW(ConfigError, "--with_prior_preservation needs --class_data_dir and --class_prompt");
  cpu::set_default_thread_count(a.threads);  // every Context<Cpu> the program makes
  if (a.max_image_pixels < 0)
    SDLORA_THROW(ConfigError, "--max_image_pixels must be >= 0 (0: no limit), got " << a.max_image_pixels);
  io::set_max_image_pixels(std::uint64_t(a.max_image_pixels));  // every image the datasets read

  Communicator comm(a.collective_timeout);
  std::ostream null_stream(nullptr);
  std::ostream& info = comm.rank() == 0 ? std::cerr : null_stream;  // ranks other than 0 report only errors
  if (comm.rank() != 0) std::cout.rdbuf(nullptr);
  try {
    return train_model(a, method, data_dir, vm, argc, argv, comm, info);
  } catch (std::exception const& e) {
    comm.abort(std::string(kProgram) + ": " + e.what());  // ends the other ranks (one process: nothing)
    throw;
  }
}

/// The model, the data and the run, once the flags are checked (every rank of an mpirun job does all of it).
int train_model(Args const& a, train::Method method, std::string const& data_dir, po::variables_map const& vm,
                int argc, char** argv, Communicator& comm, std::ostream& info) {
  Context<Cpu> ctx;
  models::LoadOptions lo;
  lo.config_dir = a.config_dir;
  lo.weights_dtype = nn::parse_weight_dtype(a.weights_dtype);  // narrowed while loading
  auto sd = models::load_stable_diffusion<float>(a.model, lo);
  models::set_weight_storage(sd, nn::parse_weight_dtype(a.weights_dtype));
  if (a.resolution % sd.vae_scale() != 0)
    SDLORA_THROW(ConfigError, "--resolution " << a.resolution << " is not a multiple of the VAE factor " << sd.vae_scale());

  // Data (class images are generated before any adapter exists).
  std::optional<train::DatasetSource> class_source;
  if (a.with_prior_preservation) {
    ensure_class_images(ctx, sd, a, comm);
    class_source.emplace(train::open_dataset(dataset_options(a, a.class_data_dir, a.class_prompt)));
  }
  auto dataset = train::open_dataset(dataset_options(a, data_dir, method == train::Method::DreamBooth ? a.instance_prompt : ""));
  if (!dataset.skipped().empty())
    info << "warning: skipped " << dataset.skipped().size() << " unreadable or tiny images (first: "
              << dataset.skipped()[0].path << ": " << dataset.skipped()[0].reason << ")\n";
  info << "dataset: " << dataset.size() << " examples from " << data_dir << "\n";

  train::RunOptions o;
  auto& t = o.trainer;
  t.method = method;
  t.rank = a.rank;
  if (a.lora_alpha > 0) t.alpha = a.lora_alpha;
  t.lora_dropout = a.lora_dropout;
  t.target_modules = normalized_targets(a.target_modules);
  t.train_conv = a.train_conv;
  t.train_text_encoder = a.train_text_encoder;
  t.text_encoder_lr = a.text_encoder_lr;
  t.placeholder_token = a.placeholder_token;
  t.initializer_token = a.initializer_token;
  t.num_vectors = a.num_vectors;
  t.prediction_type = a.prediction_type;
  t.snr_gamma = a.snr_gamma;
  t.noise_offset = a.noise_offset;
  t.with_prior_preservation = a.with_prior_preservation;
  t.prior_loss_weight = a.prior_loss_weight;
  t.optimizer.type = a.optimizer;
  t.optimizer.lr = a.learning_rate;
  t.optimizer.beta1 = a.adam_beta1;
  t.optimizer.beta2 = a.adam_beta2;
  t.optimizer.eps = a.adam_epsilon;
  t.optimizer.weight_decay = a.adam_weight_decay;
  t.optimizer.momentum = a.momentum;
  t.optimizer.nesterov = a.momentum > 0;
  t.lr_schedule.type = train::schedule_type(a.lr_scheduler);
  t.lr_schedule.warmup_steps = a.lr_warmup_steps;
  t.lr_schedule.training_steps = a.max_train_steps;
  t.lr_schedule.num_cycles = a.lr_num_cycles;
  t.lr_schedule.power = a.lr_power;
  t.gradient_accumulation_steps = a.gradient_accumulation_steps;
  t.max_grad_norm = a.max_grad_norm;
  t.gradient_checkpointing = a.gradient_checkpointing;
  t.seed = a.seed;
  o.output_dir = a.output_dir;
  o.output_name = a.output_name;
  o.train_batch_size = a.train_batch_size;
  o.max_train_steps = a.max_train_steps;
  o.checkpointing_steps = a.checkpointing_steps;
  o.checkpoints_total_limit = std::size_t(a.checkpoints_total_limit);
  o.resume_from_checkpoint = a.resume_from_checkpoint;
  o.cache_latents = !a.no_cache_latents;
  // VAE samples of unaugmented images are kept on disk: a resumed or repeated run skips the encoding.
  o.latent_cache_file = (fs::path(a.output_dir) / "latent_cache.safetensors").string();
  // Frozen text encoders are freed once the captions are encoded (as diffusers' DreamBooth scripts do), unless
  // validation prompts need them or the captions are not known in advance (the log says which).
  o.release_text_encoders = true;
  o.validation_prompts = a.validation_prompts;
  o.validation_steps = a.validation_steps;
  o.validation_steps_count = a.validation_inference_steps;
  o.save_format = a.save_format;
  o.save_dtype = precision(a.save_precision);
  o.on_non_finite = train::on_non_finite_from_name(a.on_nan);
  o.stop_requested = [] { return train::StopSignals::received(); };
  nlohmann::json settings;
  for (auto const& [name, value] : vm) {
    auto const& v = value.value();
    if (auto s = boost::any_cast<std::string>(&v)) settings[name] = *s;
    else if (auto i = boost::any_cast<int>(&v)) settings[name] = *i;
    else if (auto l = boost::any_cast<long long>(&v)) settings[name] = *l;
    else if (auto u = boost::any_cast<unsigned long long>(&v)) settings[name] = *u;
    else if (auto d = boost::any_cast<double>(&v)) settings[name] = *d;
    else if (auto b = boost::any_cast<bool>(&v)) settings[name] = *b;
    else if (auto vs = boost::any_cast<std::vector<std::string>>(&v)) settings[name] = *vs;
  }
  o.settings = settings;

  // The source: captions from the dataset, or Textual Inversion templates around the placeholder.
  std::unique_ptr<train::ExampleSource> source;
  if (method == train::Method::TextualInversion) {
    std::string expanded = a.placeholder_token;
    for (int i = 1; i < a.num_vectors; ++i) expanded += " " + a.placeholder_token + "_" + std::to_string(i);
    auto const prop = a.learnable_property == "style" ? train::LearnableProperty::Style : train::LearnableProperty::Object;
    if (a.learnable_property != "style" && a.learnable_property != "object")
      SDLORA_THROW(ConfigError, "--learnable_property: '" << a.learnable_property << "' (expected object or style)");
    source = std::make_unique<train::TemplateSource>(std::move(dataset), expanded, prop);
  } else {
    source = std::make_unique<train::DatasetSource>(std::move(dataset));
  }
  auto const r = [&] {
#if defined(SDLORA_HAS_CUDA)
    if (a.device == "cuda") {  // the loaded checkpoint copied to the GPU once; the host networks are released
      Context<Cuda> gpu;
      auto sd_gpu = pipeline::on_backend<Cuda>(sd);
      sd.unet = {};
      sd.vae = {};
      sd.text_encoder = {};
      sd.text_encoder_2 = {};
      return train::run_training(gpu, sd_gpu, *source, o, class_source ? &*class_source : nullptr, std::cerr, comm);
    }
#endif
    return train::run_training(ctx, sd, *source, o, class_source ? &*class_source : nullptr, std::cerr, comm);
  }();
  if (r.interrupted_by != 0) {
    std::cerr << "interrupted by signal " << r.interrupted_by << " after step " << r.steps << ": saved "
              << r.checkpoint << "; resume with:\n  " << resume_command(argc, argv) << "\n";
    return train::StopSignals::exit_status(r.interrupted_by);
  }

  std::cout << "trained " << r.steps - r.resumed_from << " steps (" << r.resumed_from << " -> " << r.steps << ") in "
            << r.seconds << " s, " << (r.seconds > 0 ? double(r.steps - r.resumed_from) / r.seconds : 0.0)
            << " it/s; " << r.trainable_parameters << " trainable parameters\n";
  if (r.skipped_steps > 0) std::cout << r.skipped_steps << " steps skipped (non-finite loss or gradient)\n";
  for (auto const& f : r.files) std::cout << "wrote " << f << " (" << fs::file_size(f) << " bytes)\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  train::StopSignals const signals;  // Ctrl-C / SIGTERM finish the step and checkpoint; SIGXFSZ is an IoError
  int const rc = cli::run_main(kProgram, [&] { return run(argc, argv); });
  int const sig = train::StopSignals::received();  // an error after a signal (class images cut short): 130 / 143
  return rc == 1 && sig != 0 ? train::StopSignals::exit_status(sig) : rc;
}
