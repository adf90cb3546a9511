/// @file run.hpp
/// @brief A whole training run: the data order over epochs, latents (cached when augmentation is deterministic),
/// micro-batches, prior-preservation batches, checkpoints every N steps with `--resume` continuing bit-exactly,
/// validation images, loss.csv and a loss-curve PNG, and the final LoRA / embedding files; on one process or data
/// parallel over the ranks of a Communicator (docs/scaling.md). Include <sdlora/train.hpp> instead.
#pragma once

#include <chrono>      // std::chrono::steady_clock
#include <cmath>       // std::isfinite
#include <limits>      // std::numeric_limits
#include <span>        // std::span
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
#include <type_traits>  // std::is_same_v
#include <utility>     // std::pair
#include <vector>      // std::vector

#include <nlohmann/json.hpp>  // nlohmann::json

#include <sdlora/io/image.hpp>          // io::save_png
#include <sdlora/io/safetensors.hpp>    // io::SafetensorsWriter
#include <sdlora/pipeline/stages.hpp>   // pipeline::tokenize, encode_images
#include <sdlora/pipeline/txt2img.hpp>  // pipeline::txt2img (validation)
#include <sdlora/train/bucketing.hpp>    // Geometry
#include <sdlora/train/communicator.hpp>  // Communicator, SingleProcess
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
  Geometry geometry;  // source size and crop corner (SDXL's time ids)
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
  /// Every caption get() can give, when the source knows them in advance (a fixed prompt, the dataset's own
  /// captions); nothing when it cannot tell.
  virtual std::optional<std::vector<std::string>> all_captions() { return std::nullopt; }
  /// The geometry of `index` without random augmentation (SDXL time ids of a cached example).
  virtual Geometry geometry(std::int64_t index) { return get(index, 0).geometry; }
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
  /// Frozen text encoders: encode every caption the sources can give before the first step and free the encoders
  /// (diffusers' DreamBooth scripts delete them so), when the captions are known in advance (at most 256 distinct)
  /// and no validation prompt needs the encoders; otherwise they are kept (the log says why).
  bool release_text_encoders = false;
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

/// A training run as named stages: prepare() (options, resume, loss.csv, latent caches), step() (one optimizer step
/// over freshly drawn micro-batches, its loss.csv row and non-finite handling), checkpoint(), validate() and
/// finish() (the final state, the LoRA or embedding files, loss.png, the last validation images). run() strings them
/// together; run_training() is the one-call form.
///
/// Data parallel over the N ranks of `comm` (every rank runs the same Run): the global micro-batch is
/// train_batch_size × N examples taken in the single-process order at that batch size, rank r trains on its r-th
/// slice (noise and timesteps drawn for the whole global batch on every rank, so they match the single-process run
/// too), the trainable gradients and the loss are summed over the ranks from one flat buffer and divided by N (the
/// mean over the global batch) once per optimizer step, and every rank applies the same update. Rank 0 alone writes
/// loss.csv, checkpoints, validation images and outputs, and logs; latents are encoded once, split over the ranks.
///
/// The model may live on any backend B (Trainer says what runs where): the data, the latent caches, the data order
/// and every file stay on the host; images cross to B to be encoded, latents come back to be cached, and data
/// parallel exchanges the gradients through a host buffer.
template <class T, Communicator C = SingleProcess, class B = Cpu>
class Run {
 public:
  /// One process.
  Run(Context<B>& ctx, models::StableDiffusion<T, B>& sd, ExampleSource& data, RunOptions const& o,
      ExampleSource* class_data = nullptr, std::ostream& log = std::cerr)
    requires std::is_same_v<C, SingleProcess>
      : Run(ctx, sd, data, o, class_data, log, own_single_) {}
  /// One rank of `comm` (which must outlive the Run).
  Run(Context<B>& ctx, models::StableDiffusion<T, B>& sd, ExampleSource& data, RunOptions const& o,
      ExampleSource* class_data, std::ostream& log, C& comm)
      : ctx_(ctx), sd_(sd), data_(data), class_data_(class_data), o_(o), comm_(comm),
        log_(comm.rank() == 0 ? log : null_log_), seed_(o.trainer.seed), out_dir_(o.output_dir),
        csv_(out_dir_ / "loss.csv") {
    check_options();
    std::filesystem::create_directories(o_.output_dir);
    trainer_ = std::make_unique<Trainer<T, B>>(ctx_, sd_, o_.trainer);
    for (auto const& p : trainer_->parameters()) result_.trainable_parameters += p.param->value.numel();
  }

  Run(Run const&) = delete;
  Run& operator=(Run const&) = delete;

  /// Runs (or resumes) to `max_train_steps` optimizer steps, or until stop_requested() says so.
  RunResult run() {
    prepare();
    ProgressOptions po;
    po.label = "train";
    po.total = o_.max_train_steps;
    po.initial = trainer_->global_step();
    po.every = o_.log_every;
    Progress progress(po, log_);
    auto const start = std::chrono::steady_clock::now();
    auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
    while (trainer_->global_step() < o_.max_train_steps) {
      auto const r = step();
      std::int64_t const s = trainer_->global_step();
      progress.update(s, {{"loss", r.loss}, {"lr", r.lr}});
      bool const saved = o_.checkpointing_steps > 0 && s % o_.checkpointing_steps == 0 && s < o_.max_train_steps;
      if (saved) checkpoint(s);
      if (int const sig = stop_signal(); sig != 0 && s < o_.max_train_steps) {
        if (!saved) checkpoint(s);  // Ctrl-C / SIGTERM: this step is done; keep it and stop
        progress.finish();
        result_.interrupted_by = sig;
        result_.steps = s;
        result_.seconds = elapsed();
        return result_;
      }
      if (o_.validation_steps > 0 && s % o_.validation_steps == 0 && s < o_.max_train_steps) validate(s);
    }
    progress.finish();
    result_.seconds = elapsed();
    return finish();
  }

  /// Resumes from a checkpoint when asked, draws the first data order, starts or truncates loss.csv and opens the
  /// on-disk latent caches.
  void prepare() {
    resume();
    if (order_.empty()) new_order();
    if (comm_.rank() == 0) {
      if (result_.resumed_from > 0) detail::truncate_loss_csv(csv_, result_.resumed_from);
      else std::ofstream(csv_, std::ios::trunc) << "step,loss,lr,skipped\n";
    }
    open_latent_caches();
    if (o_.release_text_encoders) cache_prompts_and_release();
    if (comm_.size() > 1) {  // each rank encodes its share of the examples, then every rank has them all
      share_latents(data_, cache_, disk_.get());
      if (o_.trainer.with_prior_preservation) share_latents(*class_data_, class_cache_, class_disk_.get());
    }
  }

  /// One optimizer step over `gradient_accumulation_steps` micro-batches; appends its loss.csv row. A non-finite
  /// step stops the run (NonFiniteError) or, with OnNonFinite::Skip, is counted and logged.
  StepReport step() {
    std::vector<MicroBatch> micro;
    for (int a = 0; a < o_.trainer.gradient_accumulation_steps; ++a) micro.push_back(draw_micro_batch());
    auto const r = comm_.size() == 1 ? trainer_->step(std::move(micro)) : data_parallel_step(std::move(micro));
    std::int64_t const s = trainer_->global_step();
    result_.losses.push_back(r.loss);
    if (comm_.rank() == 0)
      std::ofstream(csv_, std::ios::app) << s << ',' << r.loss << ',' << r.lr << ',' << (r.skipped ? 1 : 0) << '\n';
    if (!r.non_finite_parameter.empty())
      SDLORA_THROW(train::NonFiniteError, "[train] step " << s << ": the optimizer update left parameter "
                                                   << r.non_finite_parameter << " non-finite; stopped without "
                                                   << "writing the LoRA (lower the learning rate; the last "
                                                   << "checkpoint is intact)");
    if (r.skipped) {
      if (o_.on_non_finite == OnNonFinite::Stop)
        SDLORA_THROW(train::NonFiniteError, "[train] step " << s << ": loss " << r.loss << ", gradient norm "
                                                     << r.grad_norm << "; first non-finite value: "
                                                     << (comm_.size() == 1 ? trainer_->locate_non_finite()
                                                                           : "not located in a data-parallel run "
                                                                             "(resume on one process to locate it)")
                                                     << "; stopped without writing the LoRA (the last checkpoint "
                                                     << "is intact; lower the learning rate or use --on_nan skip)");
      ++result_.skipped_steps;
      log_ << "\nstep " << s << ": loss " << r.loss << ", gradient norm " << r.grad_norm
           << ": update skipped (--on_nan skip)\n";
    }
    return r;
  }

  /// Writes checkpoint-`step` (trainer state, data order, settings) and prunes old ones (rank 0: every rank holds
  /// the same state).
  void checkpoint(std::int64_t step) {
    if (comm_.rank() != 0) return;
    flush_caches();
    auto state = trainer_->state();
    state.epoch = epoch_;
    state.data_order = order_;
    state.data_position = position_;
    state.settings = o_.settings;
    result_.checkpoint = save_checkpoint(o_.output_dir, state);
    if (o_.checkpoints_total_limit > 0) keep_last(o_.output_dir, o_.checkpoints_total_limit);
    log_ << "\nsaved " << result_.checkpoint << " (step " << step << ")\n";
  }

  /// Validation images validation/step-<step>-<i>.png (nothing without prompts).
  void validate(std::int64_t step) {
    if (o_.validation_prompts.empty() || comm_.rank() != 0) return;
    std::filesystem::create_directories(out_dir_ / "validation");
    for (std::size_t i = 0; i < o_.validation_prompts.size(); ++i) {
      pipeline::GenerateOptions g;
      g.prompt = o_.validation_prompts[i];
      g.steps = o_.validation_steps_count;
      int const size = int(o_.settings.value("resolution", 512));
      g.width = g.height = size;
      g.seed = seed_;
      auto img = pipeline::txt2img(ctx_, sd_, g);
      std::ostringstream name;
      name << "step-" << step << "-" << i << ".png";
      std::string const parameters = g.prompt + "\nSteps: " + std::to_string(g.steps) + ", Seed: " +
                                     std::to_string(g.seed) + ", Training step: " + std::to_string(step);
      detail::save_png_atomic((out_dir_ / "validation" / name.str()).string(), img.images[0],
                              io::ImageRange::MinusOneToOne, {{"parameters", parameters}});
    }
  }

  /// The final checkpoint (so that a longer run can continue), the LoRA or embedding files, loss.png and the last
  /// validation images.
  RunResult finish() {
    flush_caches();
    result_.steps = trainer_->global_step();
    // The final state, so that a longer run can continue it (a resumed run that had nothing left to do has it).
    if (o_.checkpointing_steps > 0 && result_.steps > result_.resumed_from) checkpoint(result_.steps);
    if (comm_.rank() == 0) write_outputs();
    if (!o_.validation_prompts.empty()) validate(result_.steps);
    return result_;
  }

  Trainer<T, B>& trainer() { return *trainer_; }
  RunResult const& result() const { return result_; }

 private:
  using LatentMap = std::map<std::int64_t, Tensor<float, Cpu>>;

  void check_options() const {
    if (data_.size() <= 0) SDLORA_THROW(ConfigError, "[train] the dataset is empty");
    if (o_.train_batch_size < 1) SDLORA_THROW(ConfigError, "[train] train_batch_size must be >= 1");
    if (o_.max_train_steps < 1) SDLORA_THROW(ConfigError, "[train] max_train_steps must be >= 1");
    if (o_.trainer.with_prior_preservation && (!class_data_ || class_data_->size() == 0))
      SDLORA_THROW(ConfigError, "[train] prior preservation needs class images");
  }

  /// The most captions encoded up front to release the encoders: more would delay the first step and hold every
  /// embedding at once (0.6 MB each on SDXL); the encoders are kept and encode each prompt when first used.
  static constexpr std::size_t kMaxCaptionsToRelease = 256;

  /// RunOptions::release_text_encoders: every caption of the sources encoded alone (as the trainer's prompt cache
  /// does on first use, so the steps are the same bits) and the frozen encoders freed.
  void cache_prompts_and_release() {
    auto const why_not = [&]() -> std::string {
      if (o_.trainer.method == Method::TextualInversion || o_.trainer.train_text_encoder) return "they train";
      if (!o_.validation_prompts.empty()) return "validation prompts need them";
      return "";
    }();
    std::optional<std::vector<std::string>> captions = data_.all_captions();
    if (captions && class_data_) {
      auto more = class_data_->all_captions();
      if (more) captions->insert(captions->end(), more->begin(), more->end());
      else captions.reset();
    }
    if (!why_not.empty() || !captions || captions->size() > kMaxCaptionsToRelease) {
      log_ << "text encoders kept: "
           << (!why_not.empty() ? why_not
               : !captions      ? std::string("the captions are not known in advance")
                                : std::to_string(captions->size()) + " captions, more than " +
                                      std::to_string(kMaxCaptionsToRelease) + " to encode before the first step")
           << "\n";
      return;
    }
    for (auto const& c : *captions) {
      MicroBatch m;
      m.input_ids = pipeline::tokenize(sd_.tokenizer, {c});
      if (sd_.is_sdxl()) m.input_ids_2 = pipeline::tokenize(sd_.tokenizer_2, {c});
      trainer_->cache_prompts(m);
    }
    trainer_->release_text_encoders();
    if constexpr (requires { BackendMemory<B>::release_cached(); }) BackendMemory<B>::release_cached();
    log_ << "text encoders released after encoding " << trainer_->cached_prompts() << " distinct prompts\n";
  }

  /// Data order: one permutation per epoch, from the seed and the epoch only (bucketed sources group runs of the
  /// global batch size, train_batch_size × ranks).
  void new_order() {
    TorchGenerator g(mix_seed(seed_, 0x0D17A0, std::uint64_t(epoch_)));
    order_ = data_.epoch_order(g, o_.train_batch_size * comm_.size());
    position_ = 0;
  }

  /// Ctrl-C / SIGTERM: on one process stop_requested() after the step; data parallel, the signals the ranks saw
  /// before the step's all-reduce (the first rank's that saw one), so that every rank stops after the same step.
  int stop_signal() const {
    if (comm_.size() > 1) return agreed_stop_;
    return o_.stop_requested ? o_.stop_requested() : 0;
  }

  /// The data-parallel step: this rank's micro-batches forward and backward, then one all-reduce of
  /// [every trainable gradient, the loss, each rank's stop signal] (Σ in rank order), the mean over the ranks, and
  /// the optimizer step every rank takes alike. A non-finite global loss drops the update as Trainer::step does.
  StepReport data_parallel_step(std::vector<MicroBatch> micro) {
    double loss = 0;
    for (auto& m : micro) loss += trainer_->forward_backward(std::move(m));
    loss /= double(micro.size());
    auto const params = trainer_->parameters();
    std::size_t n = 0;
    for (auto const& p : params) n += std::size_t(p.param->grad.numel() - exchanged_from(p));
    int const ranks = comm_.size();
    flat_.assign(n + 1 + std::size_t(ranks), 0.0f);  // (gradients..., loss, stop signal of each rank)
    std::size_t at = 0;
    for (auto const& p : params) {
      auto const g = host_elements(p.param->grad, exchanged_from(p));  // (numel - from)
      for (Index i = 0; i < g.numel(); ++i) flat_[at++] = float(g(i));
    }
    flat_[n] = float(loss);
    flat_[n + 1 + std::size_t(comm_.rank())] = float(o_.stop_requested ? o_.stop_requested() : 0);
    comm_.all_reduce_sum(std::span<float>(flat_));
    float const inv = 1.0f / float(ranks);
    at = 0;
    for (auto const& p : params) {
      Index const from = exchanged_from(p);
      Tensor<T, Cpu> g(Shape{p.param->grad.numel() - from});
      for (Index i = 0; i < g.numel(); ++i) g(i) = T(flat_[at++] * inv);
      set_elements(p.param->grad, from, g);
    }
    double const global_loss = double(flat_[n] * inv);
    agreed_stop_ = 0;
    for (int r = ranks - 1; r >= 0; --r)
      if (flat_[n + 1 + std::size_t(r)] != 0) agreed_stop_ = int(flat_[n + 1 + std::size_t(r)]);
    // A non-finite loss with finite gradients must still drop the update: a NaN gradient makes optimizer_step skip.
    if (!std::isfinite(global_loss) && !params.empty() && params[0].param->grad.numel() > 0) {
      Tensor<T, Cpu> nan(Shape{1});
      nan(0) = std::numeric_limits<T>::quiet_NaN();
      set_elements(params[0].param->grad, 0, nan);
    }
    StepReport r = trainer_->optimizer_step();
    r.loss = global_loss;
    return r;
  }

  /// Where a parameter's exchanged gradient starts: Textual Inversion trains only the new token rows at the end of
  /// the embedding (the backward pass leaves the gradient of every row before them zero), so only those rows travel,
  /// not the whole (vocabulary, width) gradient (152 MB on SD 1.5).
  Index exchanged_from(ParamRef<T, B> const& p) const {
    auto const& ids = trainer_->placeholder_ids();
    if (o_.trainer.method != Method::TextualInversion || ids.empty() ||
        p.param != &sd_.text_encoder.token_embedding.weight)
      return 0;
    return Index(ids.front()) * p.param->grad.dim(1);
  }

  /// Data parallel: the latents of every cacheable example, encoded once over all ranks (rank 0 reads the ones its
  /// disk cache has, the rest go round-robin) and broadcast by their encoder, so that every rank holds them all.
  void share_latents(ExampleSource& src, LatentMap& c, LatentCache* d) {
    if (!o_.cache_latents || src.random_augmentation()) return;
    std::int64_t const count = src.size();
    std::vector<float> on_disk(std::size_t(count), 0.0f);  // 1: rank 0 has it from the disk cache
    std::string caption;
    if (comm_.rank() == 0 && d)
      for (std::int64_t i = 0; i < count; ++i)
        if (auto h = src.content_hash(i))
          if (auto z = d->lookup(latent_key(*h, d->vae_identity()))) {
            c[i] = std::move(*z);
            on_disk[std::size_t(i)] = 1;
            ++result_.latents_from_disk;
          }
    comm_.broadcast(std::span<float>(on_disk), 0);
    std::int64_t misses = 0;
    for (std::int64_t i = 0; i < count; ++i) {
      int const owner = on_disk[std::size_t(i)] != 0 ? 0 : int(misses++ % comm_.size());
      Tensor<float, Cpu> z;
      std::vector<float> dims(4, 0.0f);  // (1, C, h, w) of the owner's latents
      if (comm_.rank() == owner) {
        z = latents_of(src, c, d, i, mix_seed(seed_, 0xCAC4E, std::uint64_t(i)), caption);
        for (int k = 0; k < 4; ++k) dims[std::size_t(k)] = float(z.dim(k));
      }
      comm_.broadcast(std::span<float>(dims), owner);
      if (comm_.rank() != owner)
        z = Tensor<float, Cpu>(Shape{Index(dims[0]), Index(dims[1]), Index(dims[2]), Index(dims[3])});
      comm_.broadcast(std::span<float>(z.data(), std::size_t(z.numel())), owner);
      if (comm_.rank() != owner) {
        if (d && on_disk[std::size_t(i)] == 0)
          if (auto h = src.content_hash(i)) d->store(latent_key(*h, d->vae_identity()), z);
        c[i] = std::move(z);
      }
    }
  }

  void resume() {
    if (o_.resume_from_checkpoint.empty()) return;
    std::optional<std::string> dir = o_.resume_from_checkpoint == "latest" ? latest_checkpoint(o_.output_dir)
                                                                          : std::optional(o_.resume_from_checkpoint);
    if (!dir) {
      log_ << "no checkpoint in " << o_.output_dir << ": starting a new run\n";
      return;
    }
    auto state = load_checkpoint<T>(*dir);
    detail::check_data_state(state, data_.size(), *dir);
    try {
      trainer_->load_state(state);
    } catch (FormatError const& e) {
      SDLORA_THROW(FormatError, "[train] " << *dir << ": " << e.what());
    }
    epoch_ = state.epoch;
    order_ = state.data_order;
    position_ = state.data_position;
    result_.resumed_from = state.global_step;
    log_ << "resumed from " << *dir << " at step " << state.global_step << "\n";
  }

  /// Latents are cached per example when augmentation is deterministic: in memory, and on disk when a cache file is
  /// given and the source can hash its images. The identity covers what the cached samples depend on besides the
  /// image: the VAE and the noise seed.
  void open_latent_caches() {
    if (o_.latent_cache_file.empty() || !o_.cache_latents || comm_.rank() != 0) return;  // one writer
    std::string const vae_identity = sd_.source + "#vae#seed=" + std::to_string(seed_);
    disk_ = std::make_unique<LatentCache>(o_.latent_cache_file, vae_identity);
    if (class_data_) {
      std::filesystem::path const p(o_.latent_cache_file);
      class_disk_ = std::make_unique<LatentCache>(
          (p.parent_path() / (p.stem().string() + "_class" + p.extension().string())).string(),
          vae_identity + "#class");
    }
  }

  void flush_caches() {
    if (disk_) disk_->flush();
    if (class_disk_) class_disk_->flush();
  }

  /// The latents (1, 4, h, w) of example `index` of `src`; VAE sampling noise from the example's seed (from the
  /// index alone when cached).
  Tensor<float, Cpu> latents_of(ExampleSource& src, LatentMap& c, LatentCache* d, std::int64_t index,
                                std::uint64_t example_seed, std::string& caption, Geometry* geometry = nullptr) {
    bool const cacheable = o_.cache_latents && !src.random_augmentation();
    auto const hit = c.find(index);
    if (cacheable && hit != c.end()) {
      caption = src.caption(index, example_seed);
      if (geometry) *geometry = src.geometry(index);
      return hit->second;
    }
    std::optional<std::uint64_t> key;
    if (cacheable && d) {
      if (auto h = src.content_hash(index)) key = latent_key(*h, d->vae_identity());
      if (key)
        if (auto z = d->lookup(*key)) {
          caption = src.caption(index, example_seed);
          if (geometry) *geometry = src.geometry(index);
          c[index] = *z;
          ++result_.latents_from_disk;
          return std::move(*z);
        }
    }
    TrainExample ex = src.get(index, example_seed);
    caption = ex.caption;
    if (geometry) *geometry = ex.geometry;
    Index const h = ex.image.dim(1), w = ex.image.dim(2);
    auto batch = std::move(ex.image).reshaped(Shape{1, 3, h, w});
    TorchGenerator g(cacheable ? mix_seed(seed_, 0x1A7E, std::uint64_t(index)) : example_seed);
    auto const pixels = to_backend<B>(convert<T>(batch.view()));
    auto const encoded = pipeline::encode_images<T, B>(ctx_, sd_.vae, pixels.view(), g);  // (1, C, h, w) on B
    Tensor<float, Cpu> z;
    if constexpr (std::is_same_v<B, Cpu>) z = convert<float>(encoded.view());
    else z = convert<float>(to_cpu<T, B>(encoded.view()).view());
    if (cacheable) c[index] = z;
    if (key) d->store(*key, z);
    return z;
  }

  /// The next `train_batch_size` examples of the data order (a new epoch's order when one runs out), followed by as
  /// many class examples under prior preservation. Data parallel: this rank's slice of the next global micro-batch
  /// (train_batch_size × ranks examples), with its rows of the noise and timesteps drawn for the whole global batch.
  MicroBatch draw_micro_batch() {
    std::vector<Tensor<float, Cpu>> lat;
    std::vector<std::string> captions;
    std::vector<std::int64_t> class_indices;
    std::vector<Geometry> geometry;  // SDXL's time ids
    int const batch = o_.train_batch_size, ranks = comm_.size();
    for (int b = 0; b < batch * ranks; ++b) {
      if (position_ >= std::int64_t(order_.size())) {
        ++epoch_;
        new_order();
      }
      if (b / batch != comm_.rank()) {  // another rank's example
        ++position_;
        continue;
      }
      std::int64_t const index = order_[std::size_t(position_)];
      std::uint64_t const ex_seed = mix_seed(seed_, std::uint64_t(epoch_), std::uint64_t(position_));
      std::string caption;  // caption dropout, if any, is the source's (from the example's seed)
      geometry.emplace_back();
      lat.push_back(latents_of(data_, cache_, disk_.get(), index, ex_seed, caption, &geometry.back()));
      captions.push_back(caption);
      class_indices.push_back((epoch_ * std::int64_t(order_.size()) + position_));
      ++position_;
    }
    if (o_.trainer.with_prior_preservation) {  // the class half follows the instance half
      for (int b = 0; b < o_.train_batch_size; ++b) {
        std::int64_t const k = class_indices[std::size_t(b)] % class_data_->size();
        std::string caption;
        geometry.emplace_back();
        lat.push_back(latents_of(*class_data_, class_cache_, class_disk_.get(), k,
                                 mix_seed(seed_, 0xC1A55, std::uint64_t(k)), caption, &geometry.back()));
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
    m.input_ids = pipeline::tokenize(sd_.tokenizer, captions);
    if (sd_.is_sdxl()) {  // train_dreambooth_lora_sdxl.py: compute_time_ids(original_size, crop_top_left)
      m.input_ids_2 = pipeline::tokenize(sd_.tokenizer_2, captions);
      m.time_ids = Tensor<float, Cpu>(Shape{n, 6});
      Index const f = sd_.vae_scale();
      for (Index i = 0; i < n; ++i) {
        Geometry const& g = geometry[std::size_t(i)];
        float const row[6] = {float(g.original_height), float(g.original_width), float(g.crop_top),
                              float(g.crop_left),       float(m.latents.dim(2) * f), float(m.latents.dim(3) * f)};
        for (int k = 0; k < 6; ++k) m.time_ids.at({i, k}) = row[k];
      }
    }
    if (ranks > 1) take_noise_rows(m);
    return m;
  }

  /// Draws the noise and timesteps of the whole global micro-batch (instance rows of every rank, then their class
  /// rows) from the trainer's generator, as the single-process run at batch train_batch_size × ranks does, and keeps
  /// this rank's rows.
  void take_noise_rows(MicroBatch& m) {
    Index const batch = o_.train_batch_size, ranks = comm_.size(), halves = m.latents.dim(0) / batch;
    MicroBatch global;
    global.latents = Tensor<float, Cpu>(Shape{batch * ranks * halves, m.latents.dim(1), m.latents.dim(2),
                                              m.latents.dim(3)});
    trainer_->draw_noise(global);
    m.noise = Tensor<float, Cpu>(m.latents.shape());
    m.timesteps.clear();
    Index const row = m.latents.numel() / m.latents.dim(0);
    for (Index h = 0; h < halves; ++h)
      for (Index b = 0; b < batch; ++b) {
        Index const from = h * batch * ranks + Index(comm_.rank()) * batch + b, to = h * batch + b;
        std::copy_n(global.noise.data() + from * row, row, m.noise.data() + to * row);
        m.timesteps.push_back(global.timesteps[std::size_t(from)]);
      }
  }

  /// The LoRA (kohya and/or PEFT) or the Textual Inversion embeddings (diffusers and A1111), then loss.png.
  void write_outputs() {
    namespace fs = std::filesystem;
    std::map<std::string, std::string> meta;
    meta["ss_base_model_version"] = sd_.is_sdxl() ? "sdxl_base_v1-0" : sd_.base_model == "sd2" ? "sd_v2" : "sd_v1";
    meta["ss_sd_model_name"] = fs::path(sd_.source).filename().string();
    meta["ss_steps"] = std::to_string(result_.steps);
    meta["ss_network_dim"] = std::to_string(o_.trainer.rank);
    meta["ss_network_alpha"] = std::to_string(o_.trainer.alpha.value_or(double(o_.trainer.rank)));
    meta["ss_num_train_images"] = std::to_string(data_.size());
    meta["ss_resolution"] = std::to_string(int(o_.settings.value("resolution", 512)));
    meta["ss_learning_rate"] = std::to_string(o_.trainer.optimizer.lr);
    meta["ss_seed"] = std::to_string(seed_);
    DType const kept = ctx_.saved_activations;  // kohya's key; weights_dtype and the rest are in sdlora_settings
    meta["ss_mixed_precision"] = kept == DType::BF16 ? "bf16" : kept == DType::F16 ? "fp16" : "no";
    meta["ss_training_comment"] = "trained with sdlora";
    meta["sdlora_settings"] = o_.settings.dump();
    if (o_.trainer.method == Method::TextualInversion) {
      auto const vectors = convert<float>(trainer_->learned_embeddings().view());
      detail::check_finite_output<float>("the learned embedding", vectors.view(), o_.output_dir);
      io::SafetensorsWriter diffusers;  // diffusers: {token: (num_vectors, dim)}
      diffusers.add(o_.trainer.placeholder_token, vectors);
      for (auto const& [k, v] : meta) diffusers.set_metadata(k, v);
      std::string const a = (out_dir_ / "learned_embeds.safetensors").string();
      diffusers.write(a);
      io::SafetensorsWriter a1111;  // A1111: {"emb_params": (num_vectors, dim)}, token = file stem
      a1111.add("emb_params", vectors);
      a1111.set_metadata("name", o_.trainer.placeholder_token);
      // A1111 and ComfyUI take the trigger word from the file name: "<zorbl>" is written as zorbl.safetensors.
      std::string stem = o_.trainer.placeholder_token;
      while (!stem.empty() && !std::isalnum(static_cast<unsigned char>(stem.front()))) stem.erase(stem.begin());
      while (!stem.empty() && !std::isalnum(static_cast<unsigned char>(stem.back()))) stem.pop_back();
      for (char& c : stem)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') c = '_';
      if (stem.empty() || stem == "learned_embeds") stem = "embedding";
      std::string const b = (out_dir_ / (stem + ".safetensors")).string();
      a1111.write(b);
      result_.files = {a, b};
    } else {
      auto file = trainer_->lora_file();
      for (auto const& e : file.entries) {
        detail::check_finite_output<float>("the LoRA factor " + e.key, e.down.view(), o_.output_dir);
        detail::check_finite_output<float>("the LoRA factor of " + e.module + " (up)", e.up.view(), o_.output_dir);
      }
      if (o_.save_format == "kohya" || o_.save_format == "both") {
        lora::KohyaSaveOptions ko;
        ko.base_model_version = meta["ss_base_model_version"];
        ko.sdxl_text_encoders = sd_.is_sdxl();  // lora_te1_ / lora_te2_
        ko.dtype = o_.save_dtype;
        ko.metadata = meta;
        std::string const path = (out_dir_ / (o_.output_name + ".safetensors")).string();
        lora::save_kohya(path, file, ko);
        result_.files.push_back(path);
      }
      if (o_.save_format == "peft" || o_.save_format == "both") {
        lora::PeftSaveOptions po;
        po.dtype = o_.save_dtype;
        po.metadata = meta;
        std::string const path = (out_dir_ / "pytorch_lora_weights.safetensors").string();
        lora::save_peft(path, file, po);
        result_.files.push_back(path);
      }
      if (o_.save_format != "kohya" && o_.save_format != "peft" && o_.save_format != "both")
        SDLORA_THROW(ConfigError, "[train] save format '" << o_.save_format << "' (expected kohya, peft or both)");
    }
    std::string const png = (out_dir_ / "loss.png").string();
    detail::save_png_atomic(png, plot_curve(detail::read_losses(csv_)).view(), io::ImageRange::ZeroToOne,
                            {{"Title", "training loss"}});
    result_.files.push_back(png);
  }

  /// Elements [from, numel) of a tensor on B as a host tensor (a copy).
  static Tensor<T, Cpu> host_elements(Tensor<T, B> const& t, Index from) {
    auto const rows = t.view().reshaped(Shape{t.numel()}).slice(from, t.numel());
    if constexpr (std::is_same_v<B, Cpu>) return Tensor<T, Cpu>::from_view(rows);
    else return to_cpu<T, B>(rows);
  }
  /// Writes `values` over elements [from, from + values.numel()) of a tensor on B.
  static void set_elements(Tensor<T, B>& t, Index from, Tensor<T, Cpu> const& values) {
    if constexpr (std::is_same_v<B, Cpu>) std::copy_n(values.data(), values.numel(), t.data() + from);
    else BackendMemory<B>::upload(t.data() + from, values.data(), values.bytes());
  }

  SingleProcess own_single_;  // the communicator of a Run constructed without one
  std::ostream null_log_{nullptr};  // ranks other than 0 log nothing (errors are exceptions)
  Context<B>& ctx_;
  models::StableDiffusion<T, B>& sd_;
  ExampleSource& data_;
  ExampleSource* class_data_;
  RunOptions const& o_;
  C& comm_;
  std::ostream& log_;
  std::uint64_t const seed_;
  std::filesystem::path const out_dir_, csv_;
  std::unique_ptr<Trainer<T, B>> trainer_;
  RunResult result_;
  std::int64_t epoch_ = 0, position_ = 0;  // the data order's epoch and the next example's position in it
  std::vector<std::int64_t> order_;        // this epoch's order of example indices
  LatentMap cache_, class_cache_;          // in-memory latents (1, 4, h, w) by example index
  std::unique_ptr<LatentCache> disk_, class_disk_;
  std::vector<float> flat_;  // the all-reduced buffer: every trainable gradient, the loss, each rank's stop signal
  int agreed_stop_ = 0;      // data parallel: the stop signal every rank agreed on at the last step
};

/// Runs (or resumes) training to `o.max_train_steps` optimizer steps, on the model's backend.
template <class T, class B>
RunResult run_training(Context<B>& ctx, models::StableDiffusion<T, B>& sd, ExampleSource& data, RunOptions const& o,
                       ExampleSource* class_data = nullptr, std::ostream& log = std::cerr) {
  return Run<T, SingleProcess, B>(ctx, sd, data, o, class_data, log).run();
}

/// Data parallel over the ranks of `comm` (every rank calls it alike): see Run.
template <class T, Communicator C, class B>
RunResult run_training(Context<B>& ctx, models::StableDiffusion<T, B>& sd, ExampleSource& data, RunOptions const& o,
                       ExampleSource* class_data, std::ostream& log, C& comm) {
  return Run<T, C, B>(ctx, sd, data, o, class_data, log, comm).run();
}

}  // namespace sdlora::train
