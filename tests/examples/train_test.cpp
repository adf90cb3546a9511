/// @file train_test.cpp
/// @brief End-to-end tests of the sdlora-train program on the tiny model and procedural sample data: help, flag
/// errors, a short run with its outputs, resume with a larger --max_train_steps, and Textual Inversion outputs.
#include <catch2/catch.hpp>

#include <filesystem>  // std::filesystem


#include "examples/program.hpp"
#include "support.hpp"

using namespace sdlora;
namespace fs = std::filesystem;

namespace {
using Result = test::ProgramResult;
using test::read_bytes;

fs::path train_scratch() {
  static fs::path const dir = test::sample_data_dir("sdlora_train_test");
  return dir;
}

Result run_train(std::string const& args) { return test::run_program(SDLORA_TRAIN_EXE, args, train_scratch()); }

std::string base(std::string const& out_dir) {
  return "--pretrained-model '" + test::fixture("models/tiny-sd1") + "' --train-data-dir '" +
         (train_scratch() / "samples" / "images").string() + "' --resolution 16 --output-dir '" +
         (train_scratch() / out_dir).string() + "' --threads 1 --seed 3";
}
}  // namespace

TEST_CASE("sdlora-train --help lists the diffusers-named flags", "[examples][e2e]") {
  auto r = run_train("--help");
  CHECK(r.code == 0);
  for (char const* flag : {"--pretrained_model", "--train_data_dir", "--resolution", "--train_batch_size",
                           "--gradient_accumulation_steps", "--max_train_steps", "--learning_rate", "--lr_scheduler",
                           "--lr_warmup_steps", "--rank", "--snr_gamma", "--checkpointing_steps",
                           "--resume_from_checkpoint", "--validation_prompt", "--seed", "--output_dir", "--config",
                           "--instance_data_dir", "--with_prior_preservation", "--placeholder_token", "--method"})
    CHECK(r.out.find(flag) != std::string::npos);
}

TEST_CASE("sdlora-train reports bad flags and missing inputs in one line", "[examples][e2e]") {
  auto r = run_train("--no-such-flag 3");
  CHECK(r.code == 2);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  r = run_train("--pretrained-model '" + test::fixture("models/tiny-sd1") + "' --train-data-dir /no/such/folder");
  CHECK(r.code != 0);
  CHECK(r.err.find("/no/such/folder") != std::string::npos);
  r = run_train(base("bad_sched") + " --lr-scheduler sometimes");
  CHECK(r.code != 0);
  CHECK(r.err.find("sometimes") != std::string::npos);
  r = run_train(base("cuda") + " --device cuda --max-train-steps 1 --checkpointing-steps 0");
  if (!SDLORA_TRAIN_HAS_CUDA) {  // refused before anything loads, naming the build option
    CHECK(r.code == 2);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK(r.err.find("--device cuda: this sdlora-train was built without the CUDA backend") != std::string::npos);
    CHECK(r.err.find("-DSDLORA_CUDA=ON") != std::string::npos);
  } else if (r.code != 0) {  // a CUDA build on a machine without a usable GPU: the CUDA runtime's error, one line
    CHECK(r.err.find("cuda") != std::string::npos);
  }
  r = run_train(base("tpu") + " --device tpu");
  CHECK(r.code == 2);
  CHECK(r.err.find("--device must be cpu or cuda, got 'tpu'") != std::string::npos);
}

TEST_CASE("sdlora-train writes the LoRA, loss.csv and checkpoints, and a larger --max_train_steps continues",
          "[examples][e2e]") {
  auto r = run_train(base("short") + " --max-train-steps 4 --checkpointing-steps 2 --save-format both");
  INFO(r.err);
  REQUIRE(r.code == 0);
  fs::path const dir = train_scratch() / "short";
  CHECK(fs::exists(dir / "sdlora_lora.safetensors"));
  CHECK(fs::exists(dir / "pytorch_lora_weights.safetensors"));
  CHECK(fs::exists(dir / "checkpoint-4"));
  CHECK(fs::exists(dir / "loss.png"));
  // The dataset's captions are known in advance and nothing validates: the frozen text encoder is freed.
  CHECK(r.err.find("text encoders released after encoding") != std::string::npos);
  CHECK(read_bytes(dir / "loss.csv").rfind("step,loss,lr,skipped\n", 0) == 0);
  r = run_train(base("short") + " --max-train-steps 6 --checkpointing-steps 2 --resume-from-checkpoint latest");
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("(4 -> 6)") != std::string::npos);
  std::string const csv = read_bytes(dir / "loss.csv");
  CHECK(std::count(csv.begin(), csv.end(), '\n') == 7);  // header + steps 1..6
  io::SafetensorsFile f((dir / "sdlora_lora.safetensors").string());
  CHECK(f.metadata().at("ss_steps") == "6");
  CHECK(f.metadata().at("ss_mixed_precision") == "no");
}

TEST_CASE("sdlora-train --mixed_precision bf16 trains with 16-bit weights and saved activations and records it",
          "[examples][e2e]") {
  auto r = run_train(base("mixed") + " --mixed-precision bf16 --max-train-steps 2 --checkpointing-steps 0");
  INFO(r.err);
  REQUIRE(r.code == 0);
  io::SafetensorsFile f((train_scratch() / "mixed" / "sdlora_lora.safetensors").string());
  CHECK(f.metadata().at("ss_mixed_precision") == "bf16");
  CHECK(f.metadata().at("sdlora_settings").find("\"mixed_precision\":\"bf16\"") != std::string::npos);
  r = run_train(base("mixed_bad") + " --mixed-precision fp8 --max-train-steps 1");
  CHECK(r.code != 0);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  CHECK(r.err.find("--mixed_precision must be no, bf16 or fp16, got 'fp8'") != std::string::npos);
}

TEST_CASE("sdlora-train --method textual_inversion writes both embedding formats", "[examples][e2e]") {
  auto r = run_train(base("ti") +
                     " --method textual_inversion --placeholder-token '<shape>' --initializer-token toy "
                     "--max-train-steps 2 --learning-rate 1e-2 --checkpointing-steps 0");
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK(fs::exists(train_scratch() / "ti" / "learned_embeds.safetensors"));
  CHECK(fs::exists(train_scratch() / "ti" / "shape.safetensors"));  // A1111 takes the trigger word from the name
  r = run_train(base("ti2") + " --method textual_inversion --placeholder-token cat --initializer-token toy");
  CHECK(r.code != 0);
  CHECK(r.err.find("already in the vocabulary") != std::string::npos);
}

TEST_CASE("sdlora-train on SDXL: DreamBooth-LoRA with both text encoders, min-SNR, random crops; the LoRA loads in "
          "sdlora-generate", "[examples][e2e][sdxl]") {
  std::string const sdxl = "--pretrained-model '" + test::fixture("models/tiny-sdxl") + "' --instance-data-dir '" +
                           (train_scratch() / "samples" / "images").string() + "' --resolution 16 --output-dir '" +
                           (train_scratch() / "sdxl").string() + "' --threads 1 --seed 3";
  auto r = run_train(sdxl +
                     " --method dreambooth --instance-prompt 'a photo of sks dog' --train-text-encoder "
                     "--snr-gamma 5 --random-crop --max-train-steps 2 --checkpointing-steps 0 --save-format both");
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK(r.err.find("text encoders kept: they train") != std::string::npos);
  fs::path const dir = train_scratch() / "sdxl";
  io::SafetensorsFile kohya((dir / "sdlora_lora.safetensors").string());
  CHECK(kohya.metadata().at("ss_base_model_version") == "sdxl_base_v1-0");
  bool te1 = false, te2 = false, unet = false;
  for (auto const& k : kohya.keys()) {
    te1 = te1 || k.rfind("lora_te1_", 0) == 0;
    te2 = te2 || k.rfind("lora_te2_", 0) == 0;
    unet = unet || k.rfind("lora_unet_", 0) == 0;
  }
  CHECK((te1 && te2 && unet));
  io::SafetensorsFile peft((dir / "pytorch_lora_weights.safetensors").string());
  bool peft_te2 = false;
  for (auto const& k : peft.keys()) peft_te2 = peft_te2 || k.rfind("text_encoder_2.", 0) == 0;
  CHECK(peft_te2);
  std::string const csv = read_bytes(dir / "loss.csv");
  CHECK(std::count(csv.begin(), csv.end(), '\n') == 3);  // header + 2 steps
  CHECK(csv.find("nan") == std::string::npos);
  // The trained file is an SDXL LoRA the generator applies to all three networks.
  auto g = test::run_program(SDLORA_GENERATE_EXE_FOR_TRAIN,
                             "--model '" + test::fixture("models/tiny-sdxl") +
                                 "' --prompt 'a photo of sks dog' "
                                 "--steps 2 --seed 1 --threads 1 --lora '" +
                                 (dir / "sdlora_lora.safetensors").string() + "' --out '" +
                                 (dir / "with_lora.png").string() + "'",
                             train_scratch());
  INFO(g.err);
  CHECK(g.code == 0);
  CHECK(fs::exists(dir / "with_lora.png"));
}
