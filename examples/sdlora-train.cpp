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

#include "common/cli.hpp"            // cli::normalize_flags, cli::parse, cli::read_config_file, cli::run_main
#include "common/train_options.hpp"  // cli::TrainArgs, cli::train_options

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

using Args = cli::TrainArgs;

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
  auto const desc = cli::train_options(a);
  auto const args = cli::normalize_flags(argc, argv, '_');
  po::variables_map vm = cli::parse(desc, args);
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return 0;
  }
  if (!a.config_file.empty()) {  // command-line values were stored first and win
    std::ifstream in(a.config_file);
    if (!in) SDLORA_THROW(IoError, "--config: cannot read " << a.config_file);
    cli::read_config_file(in, a.config_file, desc, vm);
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
  cli::Precision const mixed = cli::precision_of(a, vm.count("weights_dtype") && !vm["weights_dtype"].defaulted());
  Context<Cpu> ctx;
  ctx.saved_activations = mixed.saved_activations;
  ctx.compute = cli::parse_compute_dtype(a.compute_dtype, "--compute_dtype", a.device);
  models::LoadOptions lo;
  lo.config_dir = a.config_dir;
  lo.weights_dtype = mixed.weights;  // narrowed while loading
  lo.vae_weights_dtype = mixed.vae_weights;
  auto sd = models::load_stable_diffusion<float>(a.model, lo);
  // whatever the loader left in float (frozen weights only), as the load did the rest
  for (auto* net : {&sd.text_encoder, &sd.text_encoder_2}) nn::set_weight_storage(*net, mixed.weights);
  nn::set_weight_storage(sd.unet, mixed.weights);
  nn::set_weight_storage(sd.vae, mixed.vae_weights);
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
      gpu.saved_activations = mixed.saved_activations;  // 16 bits: refused there with one line (CPU only)
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
