/// @file run.hpp
/// @brief A whole training run: the data order over epochs, latents (cached when augmentation is deterministic),
/// micro-batches, prior-preservation batches, checkpoints every N steps with `--resume` continuing bit-exactly,
/// validation images, loss.csv and a loss-curve PNG, and the final LoRA / embedding files.
/// Include <sdlora/train.hpp> instead.
#pragma once

#include <chrono>      // std::chrono::steady_clock
#include <cmath>       // std::isfinite
#include <cstdint>     // std::uint64_t
#include <cstdlib>     // std::strtoll, std::strtod
#include <filesystem>  // std::filesystem
#include <fstream>     // std::ofstream
#include <functional>  // std::function
#include <map>         // std::map
#include <memory>      // std::unique_ptr
#include <optional>    // std::optional
#include <ostream>     // std::ostream
#include <sstream>     // std::ostringstream
#include <string>      // std::string
#include <utility>     // std::pair
#include <vector>      // std::vector

#include <nlohmann/json.hpp>  // nlohmann::json

#include <sdlora/io/image.hpp>          // io::save_png
#include <sdlora/io/safetensors.hpp>    // io::SafetensorsWriter
#include <sdlora/pipeline/stages.hpp>   // pipeline::tokenize, encode_images
#include <sdlora/pipeline/txt2img.hpp>  // pipeline::txt2img (validation)
#include <sdlora/train/latent_cache.hpp>  // LatentCache, latent_key
#include <sdlora/train/non_finite.hpp>  // NonFiniteError, all_finite
#include <sdlora/train/plot.hpp>        // plot_curve
#include <sdlora/train/progress.hpp>    // Progress
#include <sdlora/train/state.hpp>       // save_checkpoint, load_checkpoint
#include <sdlora/train/trainer.hpp>     // Trainer

namespace sdlora::train {

/// One training example: an image (3, H, W) in [-1, 1] at the training resolution and its caption.
struct TrainExample {
  Tensor<float, Cpu> image;
  std::string caption;
};

/// Where a run's examples come from (an image folder, QuickDraw bitmaps, DreamBooth instance or class images).
class ExampleSource {
 public:
  virtual ~ExampleSource() = default;
  virtual std::int64_t size() const = 0;
  /// Example `index`; any randomness (crop, flip, caption template) must come from `seed` alone, so that a resumed
  /// run sees the same examples.
  virtual TrainExample get(std::int64_t index, std::uint64_t seed) = 0;
  /// Whether get() depends on its seed (random crop / flip); latents are cached only when it does not.
  virtual bool random_augmentation() const = 0;
  /// The caption alone (used with cached latents); override when loading the image is the expensive part.
  virtual std::string caption(std::int64_t index, std::uint64_t seed) { return get(index, seed).caption; }
  /// A hash of everything the (unaugmented) image of `index` depends on, for the on-disk latent cache; nothing when
  /// the source cannot tell (its latents are then cached in memory only).
  virtual std::optional<std::uint64_t> content_hash(std::int64_t /*index*/) const { return std::nullopt; }
  /// One epoch's order of indices drawn from `g`; sources with aspect-ratio buckets keep every run of `batch_size`
  /// entries (starting at a multiple of it) within one bucket.
  virtual std::vector<std::int64_t> epoch_order(TorchGenerator& g, int /*batch_size*/) const {
    return g.randperm(size());
  }
};

/// splitmix64 of a combination: the per-example seeds of a run.
inline std::uint64_t mix_seed(std::uint64_t a, std::uint64_t b, std::uint64_t c = 0) {
  std::uint64_t z = a * 0x9E3779B97F4A7C15ull ^ (b + 0x632BE59BD9B4E019ull) * 0xBF58476D1CE4E5B9ull ^
                    (c + 0x94D049BB133111EBull) * 0xD6E8FEB86659FD93ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// What a run does at a step whose loss or gradient norm is not finite.
enum class OnNonFinite {
  Stop,  // re-run the step to find the first module that went non-finite, report it and stop (no LoRA written)
  Skip,  // drop that step's update, count it in loss.csv (skipped = 1) and go on
};

inline OnNonFinite on_non_finite_from_name(std::string const& name) {
  if (name == "stop") return OnNonFinite::Stop;
  if (name == "skip") return OnNonFinite::Skip;
  SDLORA_THROW(ConfigError, "[train] --on_nan '" << name << "' (expected stop or skip)");
}

/// The settings of a run beyond the training step itself.
struct RunOptions {
  TrainerOptions trainer;
  std::string output_dir = "sdlora-output";
  std::string output_name = "sdlora_lora";  // kohya file name (without .safetensors)
  int train_batch_size = 1;
  std::int64_t max_train_steps = 100;
  std::int64_t checkpointing_steps = 0;      // 0: no intermediate checkpoints
  std::size_t checkpoints_total_limit = 0;   // 0: keep all
  std::string resume_from_checkpoint;        // "", "latest" or a checkpoint directory
  bool cache_latents = true;                 // when augmentation is deterministic
  std::string latent_cache_file;             // "" = memory only; else one .safetensors per run (class images: +_class)
  std::vector<std::string> validation_prompts;
  std::int64_t validation_steps = 0;         // 0: only at the end (when prompts are given)
  int validation_steps_count = 20;           // denoising steps of validation images
  std::string save_format = "kohya";         // kohya | peft | both
  DType save_dtype = DType::F32;
  std::int64_t log_every = 10;               // plain-text progress lines
  OnNonFinite on_non_finite = OnNonFinite::Stop;
  /// Polled after every step: a non-zero value (a signal number, see StopSignals) ends the run there with a
  /// checkpoint and no LoRA (RunResult::interrupted_by).
  std::function<int()> stop_requested;
  nlohmann::json settings = nlohmann::json::object();  // recorded in checkpoints and file metadata
};

/// What a run did.
struct RunResult {
  std::int64_t steps = 0;             // optimizer steps at the end
  std::int64_t resumed_from = 0;      // step the run started from
  double seconds = 0;                 // wall time of this invocation's steps
  std::vector<double> losses;         // this invocation's per-step losses
  std::int64_t trainable_parameters = 0;
  std::vector<std::string> files;     // written outputs (LoRA / embeddings / loss curve)
  std::int64_t latents_from_disk = 0;  // examples whose latents came from the on-disk cache
  std::int64_t skipped_steps = 0;     // steps of this invocation whose update was dropped (OnNonFinite::Skip)
  int interrupted_by = 0;             // stop_requested()'s value when the run stopped early, else 0
  std::string checkpoint;             // the last checkpoint written by this invocation ("" if none)
};

namespace detail {
namespace fs = std::filesystem;

/// Rewrites loss.csv keeping the header and the rows of steps <= `step` (a resumed run continues the file); through a
/// temporary file, so that a run killed meanwhile keeps the old rows. Lines that do not parse (a row cut by a kill)
/// are dropped.
inline void truncate_loss_csv(fs::path const& path, std::int64_t step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string keep, line;
  bool header = true;
  while (std::getline(in, line)) {
    if (header) {
      keep += line + '\n';
      header = false;
      continue;
    }
    char* end = nullptr;
    long long const row = std::strtoll(line.c_str(), &end, 10);
    if (end != line.c_str() && *end == ',' && row <= step) keep += line + '\n';
  }
  in.close();
  write_file_atomic(path, keep, "[train]");
}

/// The finite losses of loss.csv (skipped steps have none).
inline std::vector<double> read_losses(fs::path const& path) {
  std::vector<double> out;
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) {
    std::size_t const a = line.find(','), b = line.find(',', a + 1);
    if (a == std::string::npos) continue;
    double const v = std::strtod(line.substr(a + 1, b - a - 1).c_str(), nullptr);  // "nan" / "inf" too
    if (std::isfinite(v)) out.push_back(v);
  }
  return out;
}

/// A checkpoint's data order must index this dataset: a corrupt or foreign state.json is a FormatError naming it.
template <class T>
void check_data_state(TrainingState<T> const& s, std::int64_t dataset_size, std::string const& dir) {
  bool ok = s.epoch >= 0 && s.data_position >= 0 && s.data_position <= std::int64_t(s.data_order.size());
  for (std::int64_t i : s.data_order) ok = ok && i >= 0 && i < dataset_size;
  if (!ok)
    SDLORA_THROW(FormatError, "[train] " << dir << "/state.json: epoch " << s.epoch << ", data position "
                                         << s.data_position << " or the data order (" << s.data_order.size()
                                         << " entries) does not fit this dataset of " << dataset_size
                                         << " examples");
}

/// Refuses to write an output file from non-finite values.
template <class T>
void check_finite_output(std::string const& what, TensorView<T const, Cpu> values, std::string const& path) {
  if (!all_finite(values))
    SDLORA_THROW(train::NonFiniteError, "[train] " << what << " holds NaN or inf: " << path << " not written");
}

/// io::save_png through a temporary file and a rename: never a partial PNG under `path`.
inline void save_png_atomic(std::string const& path, TensorView<float const, Cpu> img, io::ImageRange range,
                            io::PngText const& text) {
  write_file_atomic(path, io::encode_png(img, range, text), "[save_png]");
}

inline std::string dtype_label(DType d) { return d == DType::F16 ? "fp16" : d == DType::BF16 ? "bf16" : "fp32"; }
}  // namespace detail

/// Runs (or resumes) training to `o.max_train_steps` optimizer steps.
template <class T>
RunResult run_training(Context<Cpu>& ctx, models::StableDiffusion<T, Cpu>& sd, ExampleSource& data,
                       RunOptions const& o, ExampleSource* class_data = nullptr, std::ostream& log = std::cerr) {
  namespace fs = std::filesystem;
  if (data.size() <= 0) SDLORA_THROW(ConfigError, "[train] the dataset is empty");
  if (o.train_batch_size < 1) SDLORA_THROW(ConfigError, "[train] train_batch_size must be >= 1");
  if (o.max_train_steps < 1) SDLORA_THROW(ConfigError, "[train] max_train_steps must be >= 1");
  if (o.trainer.with_prior_preservation && (!class_data || class_data->size() == 0))
    SDLORA_THROW(ConfigError, "[train] prior preservation needs class images");
  fs::create_directories(o.output_dir);
  fs::path const out_dir(o.output_dir);
  std::uint64_t const seed = o.trainer.seed;

  Trainer<T> trainer(ctx, sd, o.trainer);
  RunResult result;
  for (auto const& p : trainer.parameters()) result.trainable_parameters += p.param->value.numel();

  // Data order: one permutation per epoch, from the seed and the epoch only.
  std::int64_t epoch = 0, position = 0;
  std::vector<std::int64_t> order;
  auto new_order = [&] {
    TorchGenerator g(mix_seed(seed, 0x0D17A0, std::uint64_t(epoch)));
    order = data.epoch_order(g, o.train_batch_size);
    position = 0;
  };

  // Resume.
  if (!o.resume_from_checkpoint.empty()) {
    std::optional<std::string> dir = o.resume_from_checkpoint == "latest" ? latest_checkpoint(o.output_dir)
                                                                         : std::optional(o.resume_from_checkpoint);
    if (dir) {
      auto state = load_checkpoint<T>(*dir);
      detail::check_data_state(state, data.size(), *dir);
      try {
        trainer.load_state(state);
      } catch (FormatError const& e) {
        SDLORA_THROW(FormatError, "[train] " << *dir << ": " << e.what());
      }
      epoch = state.epoch;
      order = state.data_order;
      position = state.data_position;
      result.resumed_from = state.global_step;
      log << "resumed from " << *dir << " at step " << state.global_step << "\n";
    } else {
      log << "no checkpoint in " << o.output_dir << ": starting a new run\n";
    }
  }
  if (order.empty()) new_order();
  fs::path const csv = out_dir / "loss.csv";
  if (result.resumed_from > 0) detail::truncate_loss_csv(csv, result.resumed_from);
  else std::ofstream(csv, std::ios::trunc) << "step,loss,lr,skipped\n";

  // Latents: cached per example when augmentation is deterministic (in memory, and on disk when a cache file is
  // given and the source can hash its images); VAE sampling noise from the example's seed.
  std::map<std::int64_t, Tensor<float, Cpu>> cache, class_cache;
  std::unique_ptr<LatentCache> disk, class_disk;
  // The identity covers what the cached samples depend on besides the image: the VAE and the noise seed.
  std::string const vae_identity = sd.source + "#vae#seed=" + std::to_string(seed);
  if (!o.latent_cache_file.empty() && o.cache_latents) {
    disk = std::make_unique<LatentCache>(o.latent_cache_file, vae_identity);
    if (class_data) {
      fs::path const p(o.latent_cache_file);
      class_disk = std::make_unique<LatentCache>((p.parent_path() / (p.stem().string() + "_class" + p.extension().string()))
                                                     .string(), vae_identity + "#class");
    }
  }
  auto latents_of = [&](ExampleSource& src, std::map<std::int64_t, Tensor<float, Cpu>>& c, LatentCache* d,
                        std::int64_t index, std::uint64_t example_seed, std::string& caption) {
    bool const cacheable = o.cache_latents && !src.random_augmentation();
    auto const hit = c.find(index);
    if (cacheable && hit != c.end()) {
      caption = src.caption(index, example_seed);
      return hit->second;
    }
    std::optional<std::uint64_t> key;
    if (cacheable && d) {
      if (auto h = src.content_hash(index)) key = latent_key(*h, d->vae_identity());
      if (key)
        if (auto z = d->lookup(*key)) {
          caption = src.caption(index, example_seed);
          c[index] = *z;
          ++result.latents_from_disk;
          return std::move(*z);
        }
    }
    TrainExample ex = src.get(index, example_seed);
    caption = ex.caption;
    Index const h = ex.image.dim(1), w = ex.image.dim(2);
    auto batch = std::move(ex.image).reshaped(Shape{1, 3, h, w});
    TorchGenerator g(cacheable ? mix_seed(seed, 0x1A7E, std::uint64_t(index)) : example_seed);
    auto z = convert<float>(pipeline::encode_images<T, Cpu>(ctx, sd.vae, convert<T>(batch.view()).view(), g).view());
    if (cacheable) c[index] = z;
    if (key) d->store(*key, z);
    return z;
  };
  auto flush_caches = [&] {
    if (disk) disk->flush();
    if (class_disk) class_disk->flush();
  };

  auto draw_micro_batch = [&]() {
    std::vector<Tensor<float, Cpu>> lat;
    std::vector<std::string> captions;
    std::vector<std::int64_t> class_indices;
    for (int b = 0; b < o.train_batch_size; ++b) {
      if (position >= std::int64_t(order.size())) {
        ++epoch;
        new_order();
      }
      std::int64_t const index = order[std::size_t(position)];
      std::uint64_t const ex_seed = mix_seed(seed, std::uint64_t(epoch), std::uint64_t(position));
      std::string caption;  // caption dropout, if any, is the source's (from the example's seed)
      lat.push_back(latents_of(data, cache, disk.get(), index, ex_seed, caption));
      captions.push_back(caption);
      class_indices.push_back((epoch * std::int64_t(order.size()) + position));
      ++position;
    }
    if (o.trainer.with_prior_preservation) {  // the class half follows the instance half
      for (int b = 0; b < o.train_batch_size; ++b) {
        std::int64_t const k = class_indices[std::size_t(b)] % class_data->size();
        std::string caption;
        lat.push_back(latents_of(*class_data, class_cache, class_disk.get(), k, mix_seed(seed, 0xC1A55, std::uint64_t(k)),
                                 caption));
        captions.push_back(caption);
      }
    }
    MicroBatch m;
    Index const n = Index(lat.size());
    m.latents = Tensor<float, Cpu>(Shape{n, lat[0].dim(1), lat[0].dim(2), lat[0].dim(3)});
    for (Index i = 0; i < n; ++i) {
      SDLORA_EXPECTS(lat[std::size_t(i)].numel() * n == m.latents.numel(),
                     "[train] examples of different sizes in one batch: " << lat[0].shape() << " vs "
                                                                          << lat[std::size_t(i)].shape());
      std::copy_n(lat[std::size_t(i)].data(), lat[std::size_t(i)].numel(), m.latents.data() + i * lat[0].numel());
    }
    m.input_ids = pipeline::tokenize(sd.tokenizer, captions);
    return m;
  };

  auto save_state = [&](std::int64_t step) {
    flush_caches();
    auto state = trainer.state();
    state.epoch = epoch;
    state.data_order = order;
    state.data_position = position;
    state.settings = o.settings;
    result.checkpoint = save_checkpoint(o.output_dir, state);
    if (o.checkpoints_total_limit > 0) keep_last(o.output_dir, o.checkpoints_total_limit);
    log << "\nsaved " << result.checkpoint << " (step " << step << ")\n";
  };

  auto validate = [&](std::int64_t step) {
    if (o.validation_prompts.empty()) return;
    fs::create_directories(out_dir / "validation");
    for (std::size_t i = 0; i < o.validation_prompts.size(); ++i) {
      pipeline::GenerateOptions g;
      g.prompt = o.validation_prompts[i];
      g.steps = o.validation_steps_count;
      int const size = int(o.settings.value("resolution", 512));
      g.width = g.height = size;
      g.seed = seed;
      auto img = pipeline::txt2img(ctx, sd, g);
      std::ostringstream name;
      name << "step-" << step << "-" << i << ".png";
      std::string const parameters = g.prompt + "\nSteps: " + std::to_string(g.steps) + ", Seed: " +
                                     std::to_string(g.seed) + ", Training step: " + std::to_string(step);
      detail::save_png_atomic((out_dir / "validation" / name.str()).string(), img.images[0],
                              io::ImageRange::MinusOneToOne, {{"parameters", parameters}});
    }
  };

  ProgressOptions po;
  po.label = "train";
  po.total = o.max_train_steps;
  po.initial = trainer.global_step();
  po.every = o.log_every;
  Progress progress(po, log);
  auto const start = std::chrono::steady_clock::now();
  while (trainer.global_step() < o.max_train_steps) {
    std::vector<MicroBatch> micro;
    for (int a = 0; a < o.trainer.gradient_accumulation_steps; ++a) micro.push_back(draw_micro_batch());
    auto const r = trainer.step(std::move(micro));
    std::int64_t const step = trainer.global_step();
    result.losses.push_back(r.loss);
    std::ofstream(csv, std::ios::app) << step << ',' << r.loss << ',' << r.lr << ',' << (r.skipped ? 1 : 0) << '\n';
    if (!r.non_finite_parameter.empty())
      SDLORA_THROW(train::NonFiniteError, "[train] step " << step << ": the optimizer update left parameter "
                                                   << r.non_finite_parameter << " non-finite; stopped without "
                                                   << "writing the LoRA (lower the learning rate; the last "
                                                   << "checkpoint is intact)");
    if (r.skipped) {
      if (o.on_non_finite == OnNonFinite::Stop)
        SDLORA_THROW(train::NonFiniteError, "[train] step " << step << ": loss " << r.loss << ", gradient norm "
                                                     << r.grad_norm << "; first non-finite value: "
                                                     << trainer.locate_non_finite()
                                                     << "; stopped without writing the LoRA (the last checkpoint "
                                                     << "is intact; lower the learning rate or use --on_nan skip)");
      ++result.skipped_steps;
      log << "\nstep " << step << ": loss " << r.loss << ", gradient norm " << r.grad_norm
          << ": update skipped (--on_nan skip)\n";
    }
    progress.update(step, {{"loss", r.loss}, {"lr", r.lr}});
    bool const saved = o.checkpointing_steps > 0 && step % o.checkpointing_steps == 0 && step < o.max_train_steps;
    if (saved) save_state(step);
    if (int const sig = o.stop_requested ? o.stop_requested() : 0; sig != 0 && step < o.max_train_steps) {
      if (!saved) save_state(step);  // Ctrl-C / SIGTERM: this step is done; keep it and stop
      progress.finish();
      result.interrupted_by = sig;
      result.steps = step;
      result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      return result;
    }
    if (o.validation_steps > 0 && step % o.validation_steps == 0 && step < o.max_train_steps) validate(step);
  }
  progress.finish();
  flush_caches();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.steps = trainer.global_step();
  // The final state, so that a longer run can continue it (a resumed run that had nothing left to do has it).
  if (o.checkpointing_steps > 0 && result.steps > result.resumed_from) save_state(result.steps);

  // Outputs.
  std::map<std::string, std::string> meta;
  meta["ss_base_model_version"] = sd.base_model == "sd2" ? "sd_v2" : "sd_v1";
  meta["ss_sd_model_name"] = fs::path(sd.source).filename().string();
  meta["ss_steps"] = std::to_string(result.steps);
  meta["ss_network_dim"] = std::to_string(o.trainer.rank);
  meta["ss_network_alpha"] = std::to_string(o.trainer.alpha.value_or(double(o.trainer.rank)));
  meta["ss_num_train_images"] = std::to_string(data.size());
  meta["ss_resolution"] = std::to_string(int(o.settings.value("resolution", 512)));
  meta["ss_learning_rate"] = std::to_string(o.trainer.optimizer.lr);
  meta["ss_seed"] = std::to_string(seed);
  meta["ss_training_comment"] = "trained with sdlora";
  meta["sdlora_settings"] = o.settings.dump();
  if (o.trainer.method == Method::TextualInversion) {
    auto const vectors = convert<float>(trainer.learned_embeddings().view());
    detail::check_finite_output<float>("the learned embedding", vectors.view(), o.output_dir);
    io::SafetensorsWriter diffusers;  // diffusers: {token: (num_vectors, dim)}
    diffusers.add(o.trainer.placeholder_token, vectors);
    for (auto const& [k, v] : meta) diffusers.set_metadata(k, v);
    std::string const a = (out_dir / "learned_embeds.safetensors").string();
    diffusers.write(a);
    io::SafetensorsWriter a1111;  // A1111: {"emb_params": (num_vectors, dim)}, token = file stem
    a1111.add("emb_params", vectors);
    a1111.set_metadata("name", o.trainer.placeholder_token);
    // A1111 and ComfyUI take the trigger word from the file name: "<zorbl>" is written as zorbl.safetensors.
    std::string stem = o.trainer.placeholder_token;
    while (!stem.empty() && !std::isalnum(static_cast<unsigned char>(stem.front()))) stem.erase(stem.begin());
    while (!stem.empty() && !std::isalnum(static_cast<unsigned char>(stem.back()))) stem.pop_back();
    for (char& c : stem)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') c = '_';
    if (stem.empty() || stem == "learned_embeds") stem = "embedding";
    std::string const b = (out_dir / (stem + ".safetensors")).string();
    a1111.write(b);
    result.files = {a, b};
  } else {
    auto file = trainer.lora_file();
    for (auto const& e : file.entries) {
      detail::check_finite_output<float>("the LoRA factor " + e.key, e.down.view(), o.output_dir);
      detail::check_finite_output<float>("the LoRA factor of " + e.module + " (up)", e.up.view(), o.output_dir);
    }
    if (o.save_format == "kohya" || o.save_format == "both") {
      lora::KohyaSaveOptions ko;
      ko.base_model_version = meta["ss_base_model_version"];
      ko.dtype = o.save_dtype;
      ko.metadata = meta;
      std::string const path = (out_dir / (o.output_name + ".safetensors")).string();
      lora::save_kohya(path, file, ko);
      result.files.push_back(path);
    }
    if (o.save_format == "peft" || o.save_format == "both") {
      lora::PeftSaveOptions po2;
      po2.dtype = o.save_dtype;
      po2.metadata = meta;
      std::string const path = (out_dir / "pytorch_lora_weights.safetensors").string();
      lora::save_peft(path, file, po2);
      result.files.push_back(path);
    }
    if (o.save_format != "kohya" && o.save_format != "peft" && o.save_format != "both")
      SDLORA_THROW(ConfigError, "[train] save format '" << o.save_format << "' (expected kohya, peft or both)");
  }
  std::string const png = (out_dir / "loss.png").string();
  detail::save_png_atomic(png, plot_curve(detail::read_losses(csv)).view(), io::ImageRange::ZeroToOne,
                          {{"Title", "training loss"}});
  result.files.push_back(png);
  if (!o.validation_prompts.empty()) validate(result.steps);
  return result;
}

}  // namespace sdlora::train
