/// @file instances.hpp
/// @brief Explicit instantiation declarations of the float / CPU entry points of generation (checkpoint loading,
/// LoRA files, the pipeline stages, the denoising loop, txt2img, img2img), of the LoRA layers (whose virtual forward
/// and backward every user of a LoRA would otherwise compile) and of training (train::run_training). A translation unit that includes this
/// header does not compile these functions (nor the text encoder, UNet and VAE code under them): it calls the copies
/// compiled once in the `sdlora::instances` library (src/instances.cpp), which the program must then link. This cuts a
/// txt2img program's compile from about 24 s to about 9 s of CPU at -O2 (benchmarks/RESULTS.md, "Compile time").
/// Optional: without it every translation unit instantiates what it calls, as for any header-only library. The
/// library target exists in a build of this source tree (add_subdirectory / FetchContent); the installed package is
/// header-only and does not ship it.
#pragma once

#include <string>  // std::string
#include <vector>  // std::vector

#include <iosfwd>  // std::ostream

#include <sdlora/backend/cpu.hpp>         // the CPU kernels the instances run on
#include <sdlora/lora/conv.hpp>           // lora::LoraConv
#include <sdlora/lora/linear.hpp>         // lora::LoraLinear
#include <sdlora/models/checkpoint.hpp>   // models::load_stable_diffusion
#include <sdlora/pipeline/lora.hpp>       // pipeline::apply_loras
#include <sdlora/pipeline/stages.hpp>     // pipeline::encode_prompts, guided_noise, decode_latents, encode_images
#include <sdlora/pipeline/txt2img.hpp>    // pipeline::denoise, txt2img, img2img
#include <sdlora/train/run.hpp>           // train::run_training

// src/instances.cpp defines SDLORA_DEFINE_INSTANCES before including this header: the same list then instantiates.
#ifdef SDLORA_DEFINE_INSTANCES
#define SDLORA_INSTANCE template
#else
#define SDLORA_INSTANCE extern template
#endif

namespace sdlora {
namespace models {
SDLORA_INSTANCE StableDiffusion<float, Cpu> load_stable_diffusion<float>(std::string const&, LoadOptions const&);
}  // namespace models

namespace lora {
SDLORA_INSTANCE class LoraLinear<float, Cpu>;
SDLORA_INSTANCE class LoraConv<float, Cpu>;
}  // namespace lora

namespace pipeline {
SDLORA_INSTANCE std::vector<LoadedLora> apply_loras<float>(models::StableDiffusion<float, Cpu>&,
                                                           std::vector<LoraSpec> const&, lora::ApplyMode);
SDLORA_INSTANCE Tensor<float, Cpu> encode_prompts<float, Cpu>(Context<Cpu>&, models::StableDiffusion<float, Cpu>&,
                                                              std::vector<std::string> const&, int);
SDLORA_INSTANCE Tensor<float, Cpu> guided_noise<float, Cpu>(Context<Cpu>&, models::UNet2DConditionModel<float, Cpu>&,
                                                            TensorView<float const, Cpu>, double,
                                                            TensorView<float const, Cpu>, TensorView<float const, Cpu>,
                                                            double);
SDLORA_INSTANCE Conditioning<float, Cpu> encode_conditioning<float, Cpu>(Context<Cpu>&,
                                                                        models::StableDiffusion<float, Cpu>&,
                                                                        std::vector<std::string> const&, int,
                                                                        SizeConditioning const&, bool);
SDLORA_INSTANCE Tensor<float, Cpu> guided_noise<float, Cpu>(Context<Cpu>&, models::UNet2DConditionModel<float, Cpu>&,
                                                            TensorView<float const, Cpu>, double,
                                                            Conditioning<float, Cpu> const&,
                                                            Conditioning<float, Cpu> const&, double);
SDLORA_INSTANCE Tensor<float, Cpu> decode_latents<float, Cpu>(Context<Cpu>&, models::AutoencoderKL<float, Cpu>&,
                                                              TensorView<float const, Cpu>);
SDLORA_INSTANCE Tensor<float, Cpu> encode_images<float, Cpu>(Context<Cpu>&, models::AutoencoderKL<float, Cpu>&,
                                                             TensorView<float const, Cpu>, TorchGenerator&);
SDLORA_INSTANCE Tensor<float, Cpu> denoise<float>(Context<Cpu>&, models::UNet2DConditionModel<float, Cpu>&,
                                                  schedulers::Scheduler&, Tensor<float, Cpu>,
                                                  std::vector<double> const&, TensorView<float const, Cpu>,
                                                  TensorView<float const, Cpu>, double, TorchGenerator&,
                                                  StepCallback const&);
SDLORA_INSTANCE Tensor<float, Cpu> denoise<float>(Context<Cpu>&, models::UNet2DConditionModel<float, Cpu>&,
                                                  schedulers::Scheduler&, Tensor<float, Cpu>,
                                                  std::vector<double> const&, Conditioning<float, Cpu> const&,
                                                  Conditioning<float, Cpu> const&, double, TorchGenerator&,
                                                  StepCallback const&);
SDLORA_INSTANCE Generated txt2img<float>(Context<Cpu>&, models::StableDiffusion<float, Cpu>&, GenerateOptions const&,
                                         StepCallback const&);
SDLORA_INSTANCE Generated img2img<float>(Context<Cpu>&, models::StableDiffusion<float, Cpu>&,
                                         TensorView<float const, Cpu>, GenerateOptions, StepCallback const&);
}  // namespace pipeline

namespace train {
SDLORA_INSTANCE RunResult run_training<float>(Context<Cpu>&, models::StableDiffusion<float, Cpu>&, ExampleSource&,
                                              RunOptions const&, ExampleSource*, std::ostream&);
}  // namespace train
}  // namespace sdlora

#undef SDLORA_INSTANCE
