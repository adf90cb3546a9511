/// @file train_options.hpp
/// @brief sdlora-train's flags: the values (TrainArgs) and their Boost.Program_Options description, which the command
/// line and the `--config` file both go through. A header of its own so that the config-file fuzz target
/// (tests/fuzz/train_config_fuzz.cpp) parses files against exactly the options the program has.
#pragma once

#include <string>  // std::string
#include <vector>  // std::vector

#include <boost/program_options.hpp>  // boost::program_options

#include <sdlora/core/dtype.hpp>  // DType
#include <sdlora/core/error.hpp>  // SDLORA_THROW, ConfigError
#include <sdlora/io/image.hpp>    // io::kDefaultMaxImagePixels
#include <sdlora/nn/storage.hpp>  // nn::parse_weight_dtype

namespace sdlora::cli {

namespace po = boost::program_options;

/// Every flag of sdlora-train, with diffusers' training scripts' defaults.
struct TrainArgs {
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
  std::string mixed_precision = "no";
  std::string compute_dtype = "f32";
  long long max_image_pixels = static_cast<long long>(io::kDefaultMaxImagePixels);
};

/// The flags' description (names, defaults, help); parsing stores into `a`.
inline po::options_description train_options(TrainArgs& a) {
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
    ("mixed_precision", po::value(&a.mixed_precision)->value_name("no|bf16|fp16")->default_value("no"), "keep the frozen weights (unless --weights_dtype says otherwise; the VAE's stay f32 with fp16) and the activations kept for backward in 16 bits: about half a step's memory; compute, LoRA weights, gradients and optimizer state stay f32 (CPU)")
    ("compute_dtype", po::value(&a.compute_dtype)->value_name("f32|bf16")->default_value("f32"), "what the CPU's matrix products and convolutions multiply: bf16 rounds their operands and sums in f32, as torch.autocast with --mixed_precision bf16 in diffusers: AMX-BF16 or AVX512-BF16 where the CPU has them (faster), results within bf16 rounding of f32")
    ("threads", po::value(&a.threads)->value_name("N")->default_value(0), "CPU threads (0: all)")
    ("device", po::value(&a.device)->value_name("cpu|cuda")->default_value("cpu"), "where the text encoders, UNet and VAE train and run: cuda needs a build with -DSDLORA_CUDA=ON (data, caches, checkpoints and files stay on the host)")
    ("collective_timeout", po::value(&a.collective_timeout)->value_name("S")->default_value(1800), "mpirun -np N: end the job when a rank waits more than S seconds for the others (a hung or lost rank; must exceed a step, a checkpoint and the validation images; 0: forever)")
    ("max_image_pixels", po::value(&a.max_image_pixels)->value_name("N")->default_value(a.max_image_pixels), "skip (with --strict: refuse) training images of more pixels, from their header (default: Pillow's MAX_IMAGE_PIXELS; 0: no limit)");
  // clang-format on
  return d;
}

/// What --mixed_precision and --weights_dtype ask for: the frozen weights' storage (the VAE's apart), and what
/// training layers keep for backward (Context::saved_activations).
struct Precision {
  DType weights = DType::F32, vae_weights = DType::F32, saved_activations = DType::F32;
};

/// --mixed_precision no|bf16|fp16 as diffusers' and kohya's flag of that name, on sdlora's terms: bf16 keeps the
/// frozen weights (VAE included) and the saved activations in BF16; fp16 keeps them in F16 but the VAE's weights in
/// float. An explicit --weights_dtype (`weights_given`) decides the weights of every network instead.
inline Precision precision_of(TrainArgs const& a, bool weights_given) {
  Precision p;
  if (a.mixed_precision == "bf16") p.weights = p.vae_weights = p.saved_activations = DType::BF16;
  else if (a.mixed_precision == "fp16") p.weights = p.saved_activations = DType::F16;
  else if (a.mixed_precision != "no")
    SDLORA_THROW(ConfigError, "--mixed_precision must be no, bf16 or fp16, got '" << a.mixed_precision << "'");
  if (weights_given || a.mixed_precision == "no") p.weights = p.vae_weights = nn::parse_weight_dtype(a.weights_dtype);
  return p;
}

}  // namespace sdlora::cli
