/// @file custom_training.cpp
/// @brief A LoRA training loop assembled from the trainer's pieces: a captioned image folder (train/dataset.hpp), the
/// VAE latents and token ids of each example, the Trainer's step (noise, timestep, min-SNR weighted MSE loss,
/// backward, clipping, AdamW at a cosine learning-rate schedule), a checkpoint of the whole training state, and the
/// LoRA in kohya's layout. Run it again with more steps and it resumes from the latest checkpoint, exactly where it
/// stopped. Walk-through: docs/tutorials/library.md.
///
///   sdlora-example-train MODEL IMAGE_FOLDER OUT_DIR STEPS [STOP_AT=STEPS] [RESOLUTION=512]
/// (STOP_AT < STEPS stops early, as a preempted job would; the schedule still spans STEPS)
#include <cstdio>      // std::printf, std::fprintf
#include <filesystem>  // std::filesystem::create_directories
#include <fstream>     // std::ofstream
#include <string>      // std::string, std::stoi

#include <sdlora/backend/cpu.hpp>        // the CPU kernels
#include <sdlora/lora/format.hpp>        // lora::save_kohya
#include <sdlora/models/checkpoint.hpp>  // models::load_stable_diffusion
#include <sdlora/pipeline/stages.hpp>    // pipeline::encode_images, tokenize
#include <sdlora/train/dataset.hpp>      // train::open_dataset
#include <sdlora/train/state.hpp>        // train::save_checkpoint, latest_checkpoint, load_checkpoint
#include <sdlora/train/trainer.hpp>      // train::Trainer

using namespace sdlora;

int main(int argc, char** argv) try {
  if (argc < 5) return std::fprintf(stderr, "usage: %s MODEL IMAGES OUT_DIR STEPS [STOP_AT] [RES]\n", argv[0]), 2;
  std::string const out_dir = argv[3];
  int const steps = std::stoi(argv[4]), stop_at = argc > 5 ? std::stoi(argv[5]) : steps;

  Context<Cpu> ctx;
  auto sd = models::load_stable_diffusion<float>(argv[1]);
  train::DatasetOptions d;
  d.path = argv[2];  // images with metadata.csv / .txt captions, as diffusers' and kohya's scripts read them
  d.resolution = argc > 6 ? std::stoi(argv[6]) : 512;
  train::Dataset const data = train::open_dataset(d);

  train::TrainerOptions o;  // LoRA of rank 4 on the UNet's attention projections
  o.rank = 4;
  o.snr_gamma = 5.0;  // the loss: min-SNR-weighted MSE (0 = plain MSE)
  o.optimizer.lr = 1e-3;
  o.lr_schedule.type = train::ScheduleType::Cosine;  // one warm-up step, then a cosine decay over all the steps
  o.lr_schedule.warmup_steps = 1;
  o.lr_schedule.training_steps = steps;
  train::Trainer<float> trainer(ctx, sd, o);  // attaches the adapters and freezes the rest

  if (auto dir = train::latest_checkpoint(out_dir)) {  // parameters, AdamW moments, step, noise generator
    trainer.load_state(train::load_checkpoint<float>(*dir));
    std::printf("resumed from %s at step %lld\n", dir->c_str(), (long long)trainer.global_step());
  }
  std::filesystem::create_directories(out_dir);
  std::ofstream loss_log(out_dir + "/loss.csv", std::ios::app);  // step,loss: one line per step
  while (trainer.global_step() < stop_at) {
    std::int64_t const step = trainer.global_step();
    TorchGenerator g{std::uint64_t(step)};  // per-step seed: a resumed run draws what an uninterrupted one would
    auto example = data.get(step % data.size(), g);  // (3, H, W) in [-1, 1] and its caption
    Index const h = example.image.dim(1), w = example.image.dim(2);
    auto image = std::move(example.image).reshaped(Shape{1, 3, h, w});
    train::MicroBatch batch;
    batch.latents = pipeline::encode_images<float, Cpu>(ctx, sd.vae, image.view(), g);  // (1, 4, h/8, w/8)
    batch.input_ids = pipeline::tokenize(sd.tokenizer, {example.caption});               // (1, 77)
    auto const r = trainer.step({std::move(batch)});  // one micro-batch per optimizer step
    std::printf("step %lld loss %.6f lr %.3g\n", (long long)trainer.global_step(), r.loss, r.lr);
    loss_log << trainer.global_step() << "," << r.loss << "\n";
  }
  std::printf("checkpoint %s\n", train::save_checkpoint(out_dir, trainer.state()).c_str());
  lora::save_kohya(out_dir + "/lora.safetensors", trainer.lora_file());  // loads in A1111, ComfyUI, diffusers
  return 0;
} catch (std::exception const& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
