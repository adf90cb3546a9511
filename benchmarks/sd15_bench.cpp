/// @file sd15_bench.cpp
/// @brief Whole-model CPU benchmarks at Stable Diffusion 1.5's architecture with random weights (configs from the
/// presets, nothing downloaded): the UNet forward at a CFG batch, the VAE decode of one latent, one LoRA training
/// step through train::Trainer (rank 4 on the attention projections, AdamW, with or without gradient
/// checkpointing), and the size of the rank-4 LoRA file in kohya / PEFT layout. One JSON line per measurement with
/// wall seconds (best and median of `repeats` after one warm-up), the process's peak RSS for that measurement and
/// the thread count. benchmarks/run.sh runs the same measurements in diffusers (run_peers.py) and sd.cpp.
///   usage: sd15_bench unet   [latent=32] [batch=2] [repeats=3]
///          sd15_bench vae    [latent=32] [repeats=3]
///          sd15_bench train  [latent=32] [checkpointing=0] [repeats=3]
///          sd15_bench lora_size [out_dir=/tmp]
///          sd15_bench txt2img [size=512] [steps=20]
///          sd15_bench sdxl_unet  [latent=128] [batch=2] [repeats=1]     SDXL 1.0 base's UNet (1024 px: latent 128)
///          sd15_bench sdxl_train [latent=128] [checkpointing=1] [repeats=1]
///            one DreamBooth-LoRA SDXL step of the UNet (rank 4 on the attention projections, AdamW) with the text
///            encoders frozen: their prompt embeddings are cached by the warm-up step, as diffusers'
///            train_dreambooth_lora_sdxl.py precomputes them, so each timed step is the UNet's
///   BENCH_WEIGHTS=f16|bf16 keeps the frozen weights in 16 bits; BENCH_SAVED=f16|bf16 the training steps' saved
///   activations (Context::saved_activations); BENCH_COMPUTE=bf16 multiplies in bf16 (Context::compute).
#include <algorithm>   // std::sort, std::min
#include <chrono>      // std::chrono::steady_clock
#include <cmath>       // std::sqrt
#include <cstdint>     // std::uint64_t
#include <cstdio>      // std::printf
#include <cstdlib>     // std::atoi
#include <filesystem>  // std::filesystem::file_size
#include <fstream>     // std::ifstream, std::ofstream
#include <string>      // std::string
#include <vector>      // std::vector

#include <sdlora/pipeline.hpp>       // models::StableDiffusion, UNet, VAE, CLIP (pulls in sdlora.hpp)
#include <sdlora/train/trainer.hpp>  // train::Trainer

using namespace sdlora;

namespace {

/// Kilobytes of a "VmHWM:" / "VmRSS:" line of /proc/self/status (0 where unavailable).
double status_kb(std::string const& key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) return std::atof(line.c_str() + key.size());
  return 0;
}
double peak_rss_mb() { return status_kb("VmHWM:") / 1024.0; }
double rss_mb() { return status_kb("VmRSS:") / 1024.0; }
/// Resets the peak RSS to the current RSS (Linux >= 4.0), so that a measurement's peak excludes model building;
/// the peak before the reset (model building included) is kept for the report.
double g_build_peak_mb = 0;
void reset_peak_rss() {
  g_build_peak_mb = peak_rss_mb();
  std::ofstream("/proc/self/clear_refs") << "5";
}

/// Fills a tensor with a deterministic uniform(-bound, bound) sequence (splitmix64 per element; parallel).
template <class T>
void fill_uniform(Tensor<T, Cpu>& t, double bound, std::uint64_t seed) {
  T* const p = t.data();
  Index const n = t.numel();
  cpu::parallel_for(Context<Cpu>{}, n, true, [&](Index i) {
    std::uint64_t z = seed * 0x9E3779B97F4A7C15ull + std::uint64_t(i) + 1;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    double const u = double(z >> 11) * 0x1.0p-53;  // [0, 1)
    p[i] = T((2 * u - 1) * bound);
  });
}

/// Random weights like torch's default init: weights (rank >= 2) uniform(+-1/sqrt(fan_in)); rank-1 parameters
/// (biases, norm scales/offsets) keep their constructed values, which do not change the work done.
template <class M>
void randomize(M& module, std::uint64_t seed) {
  nn::for_each_parameter(module, [&](std::string const&, auto& p) {
    if (p.value.rank() < 2) return;
    double const fan_in = double(p.value.numel()) / double(p.value.dim(0));
    fill_uniform(p.value, 1.0 / std::sqrt(fan_in), seed++);
  });
}

struct Timing {
  double best = 0, median = 0;
  int repeats = 0;
};

template <class F>
Timing time_it(int repeats, F&& f) {
  f();  // warm-up: first-touch allocation, thread pool start
  std::vector<double> s;
  for (int r = 0; r < repeats; ++r) {
    auto const t0 = std::chrono::steady_clock::now();
    f();
    s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(s.begin(), s.end());
  return {s.front(), s[s.size() / 2], repeats};
}

/// Storage of the frozen weights: BENCH_WEIGHTS=f32 (default), f16 or bf16 (compute is float32 in every case).
std::string weights_name() {
  char const* v = std::getenv("BENCH_WEIGHTS");
  return v && *v ? v : "f32";
}
DType weights_dtype() { return nn::parse_weight_dtype(weights_name()); }
/// What training layers keep for backward: BENCH_SAVED=f32 (default), f16 or bf16 (Context::saved_activations).
std::string saved_name() {
  char const* v = std::getenv("BENCH_SAVED");
  return v && *v ? v : "f32";
}

/// What the GEMMs multiply: BENCH_COMPUTE=f32 (default) or bf16 (Context::compute).
std::string compute_name() {
  char const* v = std::getenv("BENCH_COMPUTE");
  return v && *v ? v : "f32";
}
/// A context for one benchmark: default threads and ISA, BENCH_COMPUTE's compute type.
Context<Cpu> bench_context() {
  Context<Cpu> ctx;
  ctx.compute = compute_name() == "bf16" ? DType::BF16 : DType::F32;
  return ctx;
}

void report(std::string const& bench, std::string const& shape, Timing const& t, double peak_mb, double base_mb,
            int threads, std::string const& extra = "") {
  std::printf("{\"bench\": \"%s\", \"impl\": \"sdlora\", \"shape\": \"%s\", \"seconds\": %.4f, \"median_seconds\": "
              "%.4f, \"repeats\": %d, \"peak_rss_mb\": %.0f, \"model_rss_mb\": %.0f, \"build_peak_rss_mb\": %.0f, "
              "\"threads\": %d, \"dtype\": \"%s\", \"weights\": \"%s\", \"saved\": \"%s\"%s}\n",
              bench.c_str(), shape.c_str(), t.best, t.median, t.repeats, peak_mb, base_mb, g_build_peak_mb, threads,
              compute_name() == "bf16" ? "bfloat16" : "float32", weights_name().c_str(), saved_name().c_str(), extra.c_str());
  std::fflush(stdout);
}

std::string dims(Index n, Index c, Index h, Index w) {
  return std::to_string(n) + "x" + std::to_string(c) + "x" + std::to_string(h) + "x" + std::to_string(w);
}

/// SDXL's time ids (batch, 6) for an unscaled, uncropped image of the latents' size: original size, crop top-left,
/// target size (what diffusers builds for a 1024 px generation or an uncropped training image).
Tensor<float> sdxl_time_ids(Index batch, Index latent) {
  float const size = float(latent * 8);
  float const ids[6] = {size, size, 0, 0, size, size};
  Tensor<float> t(Shape{batch, 6});
  for (Index k = 0; k < batch * 6; ++k) t(k) = ids[k % 6];
  return t;
}

/// The UNet forward at a CFG batch: SD 1.5's, or SDXL 1.0 base's with its micro-conditioning (pooled text embedding,
/// sdxl_time_ids).
int bench_unet(Index latent, Index batch, int repeats, bool sdxl = false) {
  Context<Cpu> ctx = bench_context();
  models::UNet2DConditionModel<float> unet(sdxl ? models::UNetConfig::sdxl() : models::UNetConfig::sd15());
  randomize(unet, sdxl ? 11 : 1);
  nn::set_weight_storage(unet, weights_dtype());
  Index const width = unet.config().cross_attention_dim;
  Tensor<float> sample(Shape{batch, 4, latent, latent}), context(Shape{batch, 77, width}), t(Shape{batch});
  fill_uniform(sample, 1.0, 100);
  fill_uniform(context, 1.0, 101);
  for (Index i = 0; i < batch; ++i) t(i) = 981.0f;
  Tensor<float> pooled, time_ids;
  models::UNet2DConditionModel<float>::AddedConditions added;
  if (sdxl) {
    pooled = Tensor<float>(Shape{batch, 1280});
    fill_uniform(pooled, 1.0, 102);
    time_ids = sdxl_time_ids(batch, latent);
    added = {pooled.view(), time_ids.view()};
  }
  double const base = rss_mb();
  reset_peak_rss();
  auto const timing = time_it(repeats, [&] { unet.forward(ctx, sample.view(), t.view(), context.view(), added); });
  report(sdxl ? "sdxl_unet_forward" : "unet_forward",
         dims(batch, 4, latent, latent) + " ctx " + std::to_string(batch) + "x77x" + std::to_string(width), timing,
         peak_rss_mb(), base, ctx.threads());
  return 0;
}

int bench_vae(Index latent, int repeats) {
  Context<Cpu> ctx = bench_context();
  models::AutoencoderKL<float> vae(models::VaeConfig::sd());
  randomize(vae, 2);
  nn::set_weight_storage(vae, weights_dtype());
  Tensor<float> z(Shape{1, 4, latent, latent});
  fill_uniform(z, 1.0, 102);
  double const base = rss_mb();
  reset_peak_rss();
  auto const timing = time_it(repeats, [&] { vae.decode(ctx, z.view()); });
  report("vae_decode", dims(1, 4, latent, latent) + " -> " + dims(1, 3, latent * 8, latent * 8), timing,
         peak_rss_mb(), base, ctx.threads());
  return 0;
}

/// diffusers' SD 1.5 scheduler_config.json (the DDPM noise schedule the training scripts build from it).
nlohmann::json sd15_scheduler() {
  return {{"_class_name", "PNDMScheduler"}, {"beta_start", 0.00085}, {"beta_end", 0.012},
          {"beta_schedule", "scaled_linear"}, {"num_train_timesteps", 1000}, {"prediction_type", "epsilon"},
          {"set_alpha_to_one", false}, {"skip_prk_steps", true}, {"steps_offset", 1}, {"clip_sample", false}};
}

/// Times one LoRA training step through train::Trainer on sd (rank 4 on the UNet's attention projections, alpha 4,
/// AdamW, clipping at 1, as diffusers' LoRA scripts) and reports it as `bench` (with "_checkpointing" appended).
/// With `release_text_encoders` the batch's prompts are encoded first and the frozen encoders freed, as diffusers'
/// DreamBooth scripts do before training.
int time_lora_step(Context<Cpu>& ctx, models::StableDiffusion<float, Cpu>& sd, train::MicroBatch const& batch,
                   std::string bench, bool checkpointing, int repeats, bool release_text_encoders = false) {
  ctx.saved_activations = nn::parse_weight_dtype(saved_name());
  train::TrainerOptions o;
  o.rank = 4;
  o.alpha = 4;
  o.gradient_checkpointing = checkpointing;
  o.max_grad_norm = 1.0;
  train::Trainer<float> trainer(ctx, sd, o);
  if (release_text_encoders) {
    trainer.cache_prompts(batch);
    trainer.release_text_encoders();
    BackendMemory<Cpu>::release_cached();
  }
  std::size_t lora_params = 0;
  for (auto const& p : trainer.parameters()) lora_params += std::size_t(p.param->value.numel());
  double const base = rss_mb();
  reset_peak_rss();
  auto const timing = time_it(repeats, [&] { trainer.step({batch}); });
  if (checkpointing) bench += "_checkpointing";
  report(bench, dims(1, 4, batch.latents.dim(2), batch.latents.dim(3)) + " rank 4 attn", timing, peak_rss_mb(), base,
         ctx.threads(), ", \"trainable_params\": " + std::to_string(lora_params));
  return 0;
}

/// Random latents (1, 4, latent, latent) and SD 1.5's prompt ids (a 10-token prompt, then end-of-text padding).
train::MicroBatch lora_batch(Index latent, std::uint64_t seed) {
  train::MicroBatch batch;
  batch.latents = Tensor<float>(Shape{1, 4, latent, latent});
  fill_uniform(batch.latents, 1.0, seed);
  batch.input_ids = Tensor<std::int32_t, Cpu>(Shape{1, 77});
  for (Index i = 0; i < 77; ++i) batch.input_ids(i) = i == 0 ? 49406 : i < 10 ? std::int32_t(320 + 7 * i) : 49407;
  return batch;
}

/// One LoRA step of diffusers' train_text_to_image_lora.py recipe on SD 1.5 (the text encoder runs every step).
int bench_train(Index latent, bool checkpointing, int repeats) {
  Context<Cpu> ctx = bench_context();
  models::StableDiffusion<float, Cpu> sd;  // no VAE (cached latents) and no tokenizer (ids given)
  sd.text_encoder = models::ClipTextModel<float>(models::ClipTextConfig::sd15());
  sd.unet = models::UNet2DConditionModel<float>(models::UNetConfig::sd15());
  sd.scheduler_config = sd15_scheduler();
  randomize(sd.text_encoder, 3);
  randomize(sd.unet, 4);
  nn::set_weight_storage(sd.text_encoder, weights_dtype());
  nn::set_weight_storage(sd.unet, weights_dtype());
  return time_lora_step(ctx, sd, lora_batch(latent, 103), "lora_train_step", checkpointing, repeats);
}

/// One DreamBooth-LoRA SDXL step through train::Trainer: SDXL 1.0 base's UNet and both text encoders (frozen: the
/// prompt is encoded and the encoders released before timing, as train_dreambooth_lora_sdxl.py deletes them), rank 4
/// on the UNet's attention projections, AdamW, clipping at 1.
int bench_sdxl_train(Index latent, bool checkpointing, int repeats) {
  Context<Cpu> ctx = bench_context();
  models::StableDiffusion<float, Cpu> sd;  // no VAE (cached latents) and no tokenizers (ids given)
  sd.text_encoder = models::ClipTextModel<float>(models::ClipTextConfig::sdxl_l());
  sd.text_encoder_2 = models::ClipTextModel<float>(models::ClipTextConfig::sdxl_g());
  sd.unet = models::UNet2DConditionModel<float>(models::UNetConfig::sdxl());
  sd.scheduler_config = sd15_scheduler();  // SDXL's noise schedule is SD 1.5's (scaled_linear 0.00085 - 0.012)
  randomize(sd.text_encoder, 13);
  randomize(sd.text_encoder_2, 14);
  randomize(sd.unet, 15);
  models::set_weight_storage(sd, weights_dtype());
  train::MicroBatch batch = lora_batch(latent, 113);
  batch.input_ids_2 = Tensor<std::int32_t, Cpu>(Shape{1, 77});
  for (Index i = 0; i < 77; ++i) batch.input_ids_2(i) = i < 11 ? batch.input_ids(i) : 0;  // tokenizer_2 pads with "!"
  batch.time_ids = sdxl_time_ids(1, latent);
  return time_lora_step(ctx, sd, batch, "sdxl_lora_train_step", checkpointing, repeats, true);
}

/// txt2img end to end (text encoder, `steps` UNet steps with CFG, VAE decode) at `size` px, random weights, one
/// timed run without warm-up (a whole generation is long enough to need none).
int bench_txt2img(Index size, int steps) {
  Context<Cpu> ctx = bench_context();
  models::StableDiffusion<float, Cpu> sd;
  sd.tokenizer = tokenizer::ClipTokenizer::bundled();
  sd.text_encoder = models::ClipTextModel<float>(models::ClipTextConfig::sd15());
  sd.unet = models::UNet2DConditionModel<float>(models::UNetConfig::sd15());
  sd.vae = models::AutoencoderKL<float>(models::VaeConfig::sd());
  sd.scheduler_config = sd15_scheduler();
  randomize(sd.text_encoder, 6);
  randomize(sd.unet, 7);
  randomize(sd.vae, 8);
  models::set_weight_storage(sd, weights_dtype());
  pipeline::GenerateOptions g;
  g.prompt = "a photo of a cat";
  g.width = g.height = int(size);
  g.steps = steps;
  g.sampler = "euler_a";
  g.seed = 42;
  double const base = rss_mb();
  reset_peak_rss();
  auto const t0 = std::chrono::steady_clock::now();
  pipeline::txt2img(ctx, sd, g);
  double const s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  report("txt2img", std::to_string(size) + "px " + std::to_string(steps) + " steps euler_a cfg 7.5",
         Timing{s, s, 1}, peak_rss_mb(), base, ctx.threads());
  return 0;
}

int bench_lora_size(std::string const& dir) {
  Context<Cpu> ctx = bench_context();
  models::UNet2DConditionModel<float> unet(models::UNetConfig::sd15());
  lora::InjectOptions io;  // rank 4 on to_q, to_k, to_v, to_out.0 of every attention (SD 1.5: 16 transformers)
  io.rank = 4;
  io.alpha = 4;
  auto const r = lora::inject(unet, io);
  std::size_t params = 0;
  nn::for_each_parameter(unet, [&](std::string const& name, auto& p) {
    if (name.find("lora_") == std::string::npos) return;
    fill_uniform(p.value, 0.01, 5);  // lora_B starts at zero; non-zero factors as after training
    params += std::size_t(p.value.numel());
  });
  auto const file = lora::collect(unet, "unet");
  struct Out {
    std::string name;
    std::string path;
    bool kohya;
    DType dtype;
  };
  std::vector<Out> const outs{{"kohya_fp16", dir + "/sdlora_bench_kohya_fp16.safetensors", true, DType::F16},
                              {"kohya_fp32", dir + "/sdlora_bench_kohya_fp32.safetensors", true, DType::F32},
                              {"peft_fp16", dir + "/sdlora_bench_peft_fp16.safetensors", false, DType::F16},
                              {"peft_fp32", dir + "/sdlora_bench_peft_fp32.safetensors", false, DType::F32}};
  for (auto const& o : outs) {
    if (o.kohya) {
      lora::KohyaSaveOptions ko;
      ko.dtype = o.dtype;
      lora::save_kohya(o.path, file, ko);
    } else {
      lora::PeftSaveOptions po;
      po.dtype = o.dtype;
      lora::save_peft(o.path, file, po);
    }
    auto const bytes = std::filesystem::file_size(o.path);
    std::printf("{\"bench\": \"lora_file_size\", \"impl\": \"sdlora\", \"layout\": \"%s\", \"bytes\": %llu, "
                "\"mb\": %.3f, \"layers\": %zu, \"lora_params\": %zu, \"rank\": 4}\n",
                o.name.c_str(), static_cast<unsigned long long>(bytes), double(bytes) / 1e6, std::size_t(r.layers),
                params);
    std::filesystem::remove(o.path);
  }
  std::fflush(stdout);
  (void)ctx;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string const what = argc > 1 ? argv[1] : "";
  auto arg = [&](int i, int fallback) { return argc > i ? std::atoi(argv[i]) : fallback; };
  try {
    if (what == "unet") return bench_unet(arg(2, 32), arg(3, 2), arg(4, 3));
    if (what == "vae") return bench_vae(arg(2, 32), arg(3, 3));
    if (what == "train") return bench_train(arg(2, 32), arg(3, 0) != 0, arg(4, 3));
    if (what == "lora_size") return bench_lora_size(argc > 2 ? argv[2] : "/tmp");
    if (what == "txt2img") return bench_txt2img(arg(2, 512), arg(3, 20));
    if (what == "sdxl_unet") return bench_unet(arg(2, 128), arg(3, 2), arg(4, 1), true);
    if (what == "sdxl_train") return bench_sdxl_train(arg(2, 128), arg(3, 1) != 0, arg(4, 1));
  } catch (std::exception const& e) {
    std::fprintf(stderr, "sd15_bench %s: %s\n", what.c_str(), e.what());
    return 1;
  }
  std::fprintf(stderr, "usage: sd15_bench unet [latent] [batch] [repeats] | vae [latent] [repeats] | "
                       "train [latent] [checkpointing 0/1] [repeats] | lora_size [out_dir] | txt2img [size] [steps] | "
                       "sdxl_unet [latent] [batch] [repeats] | sdxl_train [latent] [checkpointing 0/1] [repeats]\n"
                       "BENCH_WEIGHTS=f32|f16|bf16 stores the frozen weights so (compute stays float32); "
                       "BENCH_SAVED=f32|f16|bf16 the training steps' saved activations\n");
  return 2;
}
