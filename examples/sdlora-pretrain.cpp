/// @file sdlora-pretrain.cpp
/// @brief sdlora-pretrain: trains a small Stable Diffusion model from scratch on a captioned image folder, the way
/// the bundled toy-world model (data/models/toy-world) was made: stage `vae` trains an AutoencoderKL (reconstruction
/// + KL), then stage `unet` trains every weight of a UNet on the VAE's latents, conditioned on a frozen text encoder
/// (random weights from the config's seed: the toy world has no pretrained CLIP of its size). Each stage writes a
/// complete diffusers folder (the other networks as they are), its loss.csv and a loss plot.
///
///   sdlora-make-samples --toy-world base --count 4000 --out toy-data
///   sdlora-pretrain --config data/configs/toy-world --data toy-data --out toy-model
#include <algorithm>   // std::min, std::clamp
#include <cmath>       // std::abs
#include <filesystem>  // std::filesystem
#include <fstream>     // std::ofstream
#include <iostream>    // std::cout, std::cerr
#include <string>      // std::string
#include <vector>      // std::vector

#include <sdlora/backend/cpu.hpp>          // cpu::set_default_thread_count
#include <sdlora/eval/plot.hpp>            // eval::line_plot
#include <sdlora/io/image.hpp>             // io::save_png
#include <sdlora/models/init.hpp>          // models::random_stable_diffusion
#include <sdlora/models/save.hpp>          // models::save_diffusers_folder
#include <sdlora/train/dataset.hpp>        // train::open_dataset
#include <sdlora/train/pretrain.hpp>       // train::pretrain_vae, pretrain_unet
#include <sdlora/instances.hpp>  // compiled once in sdlora::instances (examples/CMakeLists.txt)

#include "common/cli.hpp"  // cli::normalize_flags, cli::parse, cli::run_main

namespace {

using namespace sdlora;
namespace po = boost::program_options;
namespace fs = std::filesystem;
constexpr char const* kProgram = "sdlora-pretrain";

/// loss.csv (step,loss) and a plot with axes of the raw and smoothed loss.
void write_losses(fs::path const& dir, std::string const& stage, std::vector<double> const& losses) {
  fs::create_directories(dir);
  std::ofstream csv(dir / (stage + "_loss.csv"));
  csv << "step,loss\n";
  for (std::size_t i = 0; i < losses.size(); ++i) csv << i + 1 << "," << losses[i] << "\n";
  if (!csv) SDLORA_THROW(IoError, "[pretrain] cannot write " << (dir / (stage + "_loss.csv")).string());
  // The 100-step moving average at about 200 points (a marker per point stays readable).
  eval::Series smooth{"loss, moving average of 100 steps", {}, {}};
  std::size_t const stride = std::max<std::size_t>(1, losses.size() / 200);
  double acc = 0;
  for (std::size_t i = 0; i < losses.size(); ++i) {
    acc += losses[i];
    if (i >= 100) acc -= losses[i - 100];
    if ((i + 1) % stride == 0 || i + 1 == losses.size()) {
      smooth.x.push_back(double(i + 1));
      smooth.y.push_back(acc / double(std::min<std::size_t>(i + 1, 100)));
    }
  }
  auto const png = eval::line_plot({smooth}, {stage + " training loss", "optimizer step", "loss", 640, 360});
  io::save_png((dir / (stage + "_loss.png")).string(), png.view(), io::ImageRange::ZeroToOne);
}

/// The first 8 images (top row) over their reconstructions (the latent means decoded), and the mean absolute error
/// of those reconstructions in [0, 1] units over the first 64 images.
double write_reconstructions(Context<Cpu>& ctx, models::AutoencoderKL<float>& vae, train::Dataset const& data,
                             fs::path const& path) {
  TorchGenerator unused(0);
  std::vector<Tensor<float, Cpu>> top, bottom;
  double err = 0;
  Index count = 0;
  for (Index i = 0; i < std::min<Index>(64, data.size()); ++i) {
    auto const img = data.get(i, unused).image;  // (3, H, W) in [-1, 1]
    TensorView<float const, Cpu> const batch(img.data(), Shape{1, img.dim(0), img.dim(1), img.dim(2)});
    auto const rec = vae.decode(ctx, vae.encode(ctx, batch).mean.view());  // (1, 3, H, W)
    for (Index k = 0; k < img.numel(); ++k) err += std::abs(std::clamp(rec(k), -1.0f, 1.0f) - img(k)) / 2.0;
    count += img.numel();
    if (i < 8) {
      top.push_back(img);
      Tensor<float, Cpu> r(img.shape());
      std::copy_n(rec.data(), rec.numel(), r.data());
      bottom.push_back(std::move(r));
    }
  }
  top.insert(top.end(), bottom.begin(), bottom.end());
  io::save_png(path.string(), io::make_grid(top, Index(bottom.size())).view());
  return err / double(count);
}

int run(int argc, char** argv) {
  std::string config = "data/configs/toy-world", data_dir, out, stage = "all", from, save_dtype = "fp16";
  Index resolution = 64;
  int threads = 0;
  std::uint64_t seed = 0;
  train::VaePretrainOptions vo;
  std::int64_t decoder_steps = 0;
  double decoder_lr = 5e-4;
  train::UnetPretrainOptions uo;
  po::options_description flags("sdlora-pretrain: train a small Stable Diffusion model from scratch");
  // clang-format off
  flags.add_options()
      ("help,h", "this help")
      ("data", po::value(&data_dir)->required(), "captioned image folder (metadata.csv, metadata.jsonl or caption files)")
      ("out", po::value(&out)->required(), "output diffusers folder (written after each stage; losses in <out>/logs)")
      ("stage", po::value(&stage)->default_value("all"),
       "vae, unet, all (vae then unet) or decoder (the VAE decoder only, encoder frozen: the latents, and so a "
       "trained UNet, stay valid)")
      ("config", po::value(&config)->default_value(config),
       "folder of diffusers configs (unet/, vae/, text_encoder/ config.json, scheduler/): the model's shape, random "
       "weights from --seed")
      ("from", po::value(&from), "start from this diffusers folder instead of random weights (e.g. --stage unet on "
                                 "the output of --stage vae)")
      ("resolution", po::value(&resolution)->default_value(64), "training resolution (centre crop)")
      ("seed", po::value(&seed)->default_value(0), "seed of the initial weights and of every draw")
      ("threads", po::value(&threads)->default_value(0), "CPU threads (0: all)")
      ("save-dtype", po::value(&save_dtype)->default_value(save_dtype), "fp32, fp16 or bf16")
      ("vae-steps", po::value(&vo.steps)->default_value(vo.steps), "VAE optimizer steps")
      ("vae-batch-size", po::value(&vo.batch_size)->default_value(vo.batch_size), "VAE batch size")
      ("vae-lr", po::value(&vo.optimizer.lr)->default_value(vo.optimizer.lr), "VAE learning rate (AdamW)")
      ("kl-weight", po::value(&vo.objective.kl_weight)->default_value(vo.objective.kl_weight), "weight of the KL term")
      ("decoder-steps", po::value(&decoder_steps)->default_value(decoder_steps),
       "then VAE decoder steps with the encoder frozen (sharper images, same latents; 0: none)")
      ("decoder-lr", po::value(&decoder_lr)->default_value(decoder_lr), "decoder stage learning rate")
      ("unet-steps", po::value(&uo.steps)->default_value(uo.steps), "UNet optimizer steps")
      ("unet-batch-size", po::value(&uo.batch_size)->default_value(uo.batch_size), "UNet batch size")
      ("unet-lr", po::value(&uo.optimizer.lr)->default_value(uo.optimizer.lr), "UNet learning rate (AdamW, cosine)")
      ("train-text-encoder", po::bool_switch(&uo.train_text_encoder),
       "the UNet stage also trains the text encoder (random weights from the config tell prompts apart poorly)")
      ("caption-dropout", po::value(&uo.caption_dropout)->default_value(uo.caption_dropout),
       "probability of the empty caption (classifier-free guidance)")
      ("ema-decay", po::value(&uo.ema_decay)->default_value(uo.ema_decay), "EMA of the UNet weights (0: off)");
  // clang-format on
  auto const args = cli::normalize_flags(argc, argv, '-');
  for (auto const& a : args)
    if (a == "--help" || a == "-h") {
      std::cout << flags << "\n";
      return 0;
    }
  cli::parse(flags, args);
  if (stage != "vae" && stage != "unet" && stage != "all" && stage != "decoder")
    SDLORA_THROW(ConfigError, "--stage must be vae, unet, all or decoder, got '" << stage << "'");
  if (stage == "decoder" && from.empty())
    SDLORA_THROW(ConfigError, "--stage decoder fine-tunes a trained VAE: give the model with --from");
  if (stage == "decoder" && decoder_steps <= 0)
    SDLORA_THROW(ConfigError, "--stage decoder needs --decoder-steps > 0");
  cpu::set_default_thread_count(threads);
  vo.seed = uo.seed = seed;
  DType const dtype = models::parse_save_dtype(save_dtype);
  Context<Cpu> ctx;

  auto sd = from.empty() ? models::random_stable_diffusion<float>(config, seed)
                         : models::load_stable_diffusion<float>(from);
  train::DatasetOptions dopt;
  dopt.path = data_dir;
  dopt.resolution = resolution;
  auto const data = train::open_dataset(dopt);
  std::cerr << kProgram << ": " << data.size() << " images from " << data_dir << "\n";
  fs::path const logs = fs::path(out) / "logs";

  auto vae_stage = [&](train::VaePretrainOptions const& o, std::string const& name) {
    auto const r = train::pretrain_vae<float>(ctx, sd.vae, data, o);
    write_losses(logs, name, r.losses);
    fs::path const png = logs / (name + "_reconstructions.png");
    double const mae = write_reconstructions(ctx, sd.vae, data, png);
    std::cerr << kProgram << ": " << name << " trained, final loss " << r.final_loss << ", mean |reconstruction - image| "
              << mae << " (first 64 images, [0, 1] units): " << png.string() << "\n";
  };
  if (stage == "vae" || stage == "all") vae_stage(vo, "vae");
  if (stage != "decoder") {
    // The latent scaling factor that gives unit-variance latents (how SD's 0.18215 was chosen), from this data.
    auto const table = train::encode_dataset<float>(ctx, sd.vae, data);
    if (stage == "vae" || stage == "all") {
      sd.vae.set_scaling_factor(train::latent_scaling_factor(table));
      std::cerr << kProgram << ": latent scaling factor " << sd.vae.config().scaling_factor << "\n";
    }
    if (stage == "unet" || stage == "all") {
      auto const r = train::pretrain_unet<float>(ctx, sd, table, uo);
      write_losses(logs, "unet", r.losses);
      std::cerr << kProgram << ": UNet trained, final loss " << r.final_loss << "\n";
    }
  }
  if (stage == "decoder" || (stage == "all" && decoder_steps > 0)) {
    train::VaePretrainOptions d = vo;
    d.steps = decoder_steps;
    d.optimizer.lr = decoder_lr;
    d.train_encoder = false;
    vae_stage(d, "decoder");
  }
  models::SaveOptions so;
  so.dtype = dtype;
  models::save_diffusers_folder(sd, out, so);
  std::cout << "wrote " << out << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run_main(kProgram, [&] { return run(argc, argv); });
}
