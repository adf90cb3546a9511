/// @file custom_denoise.cpp
/// @brief A denoising loop written out step by step: a checkpoint, two LoRA files at different scales, the prompt
/// encoded once, classifier-free guidance by hand around each UNet call, a scheduler step, the VAE decode and a PNG.
/// The same arithmetic as pipeline::txt2img with sampler "euler", seed 42 and guidance 7.5 (tests/library_examples
/// checks the pixels). Walk-through: docs/tutorials/library.md.
///
///   sdlora-example-denoise MODEL LORA_A LORA_B OUT.png [SIZE=512] [STEPS=20]
#include <cstdio>     // std::printf, std::fprintf
#include <exception>  // std::exception
#include <string>     // std::stoi

#include <sdlora/backend/cpu.hpp>         // the CPU kernels every model call below runs on
#include <sdlora/io/image.hpp>            // io::save_png
#include <sdlora/models/checkpoint.hpp>   // models::load_stable_diffusion
#include <sdlora/pipeline/lora.hpp>       // pipeline::apply_loras
#include <sdlora/pipeline/stages.hpp>     // pipeline::encode_prompts, initial_latents, decode_latents
#include <sdlora/schedulers/factory.hpp>  // schedulers::make_scheduler

using namespace sdlora;

int main(int argc, char** argv) try {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s MODEL LORA_A LORA_B OUT.png [SIZE=512] [STEPS=20]\n", argv[0]);
    return 2;
  }
  int const size = argc > 5 ? std::stoi(argv[5]) : 512, steps = argc > 6 ? std::stoi(argv[6]) : 20;
  float const guidance = 7.5f;

  Context<Cpu> ctx;  // scratch memory and threads of the CPU backend
  auto sd = models::load_stable_diffusion<float>(argv[1]);  // a diffusers folder or a single .safetensors file
  // Adapters (not merged): each LoRA layer adds scale * alpha / r * B(A(x)); A at 0.8, B at 0.4.
  pipeline::apply_loras(sd, {{argv[2], 0.8}, {argv[3], 0.4}});

  auto scheduler = schedulers::make_scheduler("euler", sd.scheduler_config);
  scheduler->set_timesteps(steps);
  // The prompt and the empty negative prompt, (1, 77, C) each, encoded once for all steps.
  auto cond = pipeline::encode_prompts(ctx, sd, {"a photo of a cat"});
  auto uncond = pipeline::encode_prompts(ctx, sd, {""});

  TorchGenerator generator(42);  // draws torch.randn's numbers: seed 42 gives diffusers' initial latents
  int const f = sd.vae_scale();  // 8 for SD 1.x / 2.x: latents are size / 8 pixels wide
  Shape const shape{1, sd.unet.config().in_channels, size / f, size / f};
  auto latents = pipeline::initial_latents(generator, shape, scheduler->init_noise_sigma());

  for (double t : scheduler->timesteps()) {
    auto x = scheduler->scale_model_input(latents.view(), t);  // (1, 4, h, w)
    Tensor<float, Cpu> timestep(Shape{1});
    timestep(0) = float(t);
    auto eps_uncond = sd.unet.forward(ctx, x.view(), timestep.view(), uncond.view());
    auto eps = sd.unet.forward(ctx, x.view(), timestep.view(), cond.view());
    for (Index i = 0; i < eps.numel(); ++i)  // guidance: eps_u + g * (eps_c - eps_u)
      eps(i) = eps_uncond(i) + guidance * (eps(i) - eps_uncond(i));
    Tensor<float, Cpu> noise;  // ancestral samplers (euler_a, ddpm) add fresh noise at each step
    if (scheduler->step_uses_noise(t)) noise = generator.randn(eps.shape());
    latents = std::move(scheduler->step(eps.view(), t, latents.view(), noise.view()).prev_sample);
    std::printf("timestep %g done\n", t);
  }

  auto images = pipeline::decode_latents<float, Cpu>(ctx, sd.vae, latents.view());  // (1, 3, H, W) in [-1, 1]
  io::save_png(argv[4], images.view().reshaped(Shape{3, size, size}));
  std::printf("wrote %s\n", argv[4]);
  return 0;
} catch (std::exception const& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
