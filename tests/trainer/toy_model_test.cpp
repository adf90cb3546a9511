// The bundled toy-world model (data/models/toy-world, trained from scratch by sdlora-pretrain): diffusers draws the
// same images with it, and it learned what its prompts' colours mean. Every measure is computed from pixels
// (eval/toy_measures.hpp); every bar is stated next to its check with the value measured when the test was written.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <sdlora/backend/cpu.hpp>
#include <sdlora/eval/toy_measures.hpp>
#include <sdlora/io/safetensors.hpp>
#include <sdlora/models/checkpoint.hpp>
#include <sdlora/pipeline/lora.hpp>
#include <sdlora/pipeline/txt2img.hpp>
#include <sdlora/train/dataset.hpp>
#include <sdlora/train/run.hpp>
#include <sdlora/train/sample_data.hpp>
#include <sdlora/train/sources.hpp>
#include <sdlora/instances.hpp>  // compiled once: the sdlora::instances library every test links

#include "support.hpp"

using namespace sdlora;

namespace {

std::string const kShipped = std::string(SDLORA_DATA_DIR) + "/models/toy-world";

/// The model the measuring tests run on: the shipped one, or the folder SDLORA_TOY_MODEL names (a model made again by
/// scripts/make-toy-model, held to the same bars). diffusers' reference images are of the shipped model only.
std::string toy_model() {
  char const* dir = std::getenv("SDLORA_TOY_MODEL");
  return dir && *dir ? dir : kShipped;
}

models::StableDiffusion<float, Cpu> load_toy(std::string const& dir = toy_model()) {
  return models::load_stable_diffusion<float>(dir);
}

/// One 64 x 64 image in [0, 1] for a prompt and seed (20 DDIM steps, guidance 5).
Tensor<float, Cpu> draw(Context<Cpu>& ctx, models::StableDiffusion<float, Cpu>& sd, std::string const& prompt,
                        std::uint64_t seed) {
  pipeline::GenerateOptions o;
  o.prompt = prompt;
  o.steps = 20;
  o.sampler = "ddim";
  o.guidance_scale = 5.0;
  o.width = o.height = 64;
  o.seed = seed;
  auto const g = pipeline::txt2img<float, Cpu>(ctx, sd, o);
  Tensor<float, Cpu> img(Shape{3, 64, 64});
  for (Index k = 0; k < img.numel(); ++k) img(k) = std::clamp((g.images(k) + 1.0f) * 0.5f, 0.0f, 1.0f);
  return img;
}

/// Writes the first `count` scenes of a toy-world set whose background is not `avoid_background` to `dir` (PNGs and
/// metadata.csv with their captions); returns the folder.
std::string write_scenes(std::string const& dir, train::ToySet set, int count, std::string const& avoid_background) {
  namespace fs = std::filesystem;
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string csv = "file_name,text\n";
  for (Index i = 0, written = 0; written < count; ++i) {
    auto const scene = train::make_toy_scene(set, i, 64, 0);
    if (scene.background == avoid_background) continue;
    std::string const name = "scene-" + std::to_string(i) + ".png";
    io::save_png(dir + "/" + name, scene.image.view(), io::ImageRange::ZeroToOne);
    csv += name + "," + scene.caption + "\n";
    ++written;
  }
  std::ofstream(dir + "/metadata.csv") << csv;
  return dir;
}

/// The training run the adapter tests use: batch 4, seed 0, rank 8, the given steps, learning rate and targets, on
/// the captioned 64 px images of `data_dir`, writing to `out` (Textual Inversion: its token options from
/// `textual_inversion`).
train::RunResult train_on_toy(Context<Cpu>& ctx, models::StableDiffusion<float, Cpu>& sd, std::string const& data_dir,
                              std::string const& out, train::Method method, std::int64_t steps, double lr,
                              std::string const& targets, bool train_conv,
                              train::TrainerOptions const* textual_inversion = nullptr) {
  train::DatasetOptions d;
  d.path = data_dir;
  d.resolution = 64;
  train::DatasetSource source(train::open_dataset(d));
  train::RunOptions o;
  o.output_dir = out;
  o.max_train_steps = steps;
  o.train_batch_size = 4;
  o.log_every = 100000;
  if (textual_inversion) o.trainer = *textual_inversion;
  o.trainer.method = method;
  o.trainer.seed = 0;
  o.trainer.rank = 8;
  o.trainer.train_conv = train_conv;
  o.trainer.optimizer.lr = lr;
  o.trainer.target_modules = targets;
  o.settings["resolution"] = 64;
  std::ostringstream log;
  return train::run_training(ctx, sd, source, o, nullptr, log);
}

}  // namespace

TEST_CASE("sdlora draws diffusers' images with the toy model", "[toy][e2e]") {
  // tools/fixtures/make_toy_model.py: StableDiffusionPipeline.from_pretrained(data/models/toy-world) with DDIM,
  // 20 steps, guidance 5, 64 px, torch.Generator("cpu").manual_seed(seed). Tolerance: mean |diff| <= 1/255 and
  // max |diff| <= 8/255 per image (float32 on both sides; summation order differs). Four prompts: the last names no
  // shape ("an orange shape on a green background", how the model saw crescents).
  Context<Cpu> ctx;
  auto sd = load_toy(kShipped);
  io::SafetensorsFile ref(test::fixture("toy_model/reference.safetensors"));
  int prompts = 0;  // prompt_0, prompt_1, ... (the metadata also holds the libraries' versions)
  while (ref.metadata().count("prompt_" + std::to_string(prompts))) ++prompts;
  REQUIRE(prompts >= 4);
  for (int i = 0; i < prompts; ++i) {
    std::string const prompt = ref.metadata().at("prompt_" + std::to_string(i));
    auto const seed = std::stoull(ref.metadata().at("seed_" + std::to_string(i)));
    auto const expected = ref.load<float>("image_" + std::to_string(i));  // (1, 3, 64, 64)
    auto const got = draw(ctx, sd, prompt, seed);
    double sum = 0, worst = 0;
    for (Index k = 0; k < got.numel(); ++k) {
      double const d = std::abs(double(got(k)) - double(expected(k)));
      sum += d;
      worst = std::max(worst, d);
    }
    INFO(prompt << ": mean |diff| " << sum / double(got.numel()) * 255 << "/255, max " << worst * 255 << "/255");
    CHECK(sum / double(got.numel()) <= 1.0 / 255);
    CHECK(worst <= 8.0 / 255);
  }
}

TEST_CASE("The toy model draws the colour its prompt names", "[toy][e2e]") {
  // 20 evaluation prompts (train::toy_prompts(20, 1)), one image each. Chance is about 1 in 7 for the colour, the
  // background and the shape. Measured with the shipped model: colour 20/20, background 20/20, shape first 6/20 (the
  // shapes are often blobs). Bars: issue 14's 16/20 for the colour, and a margin under the measured values for the
  // background and the shape (another CPU's kernel path rounds differently, which can move a borderline image).
  Context<Cpu> ctx;
  auto sd = load_toy();
  auto const prompts = train::toy_prompts(20, 1);
  int colour = 0, background = 0, shape = 0;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    auto const m = eval::measure_toy_image(draw(ctx, sd, prompts[i], 100 + i), prompts[i]);
    colour += m.color_match.value_or(false);
    background += m.background_match.value_or(false);
    shape += m.shape_first.value_or(false);
  }
  INFO("colour " << colour << "/20, background " << background << "/20, shape first " << shape << "/20");
  CHECK(colour >= 16);
  CHECK(background >= 17);
  CHECK(shape >= 4);
}

TEST_CASE("A style LoRA trained on the toy model draws its style at scale 1 and not at scale 0", "[toy][e2e]") {
  // scripts/demo's recipe: 64 style scenes (train::ToySet::Style: the base scenes as black scribbled outlines on
  // white), 300 steps of rank 8 on attention and ResNet convolutions at 2e-3, batch 4, seed 0. Then the 20 evaluation
  // prompts at LoRA scales 0, 0.5 and 1 (seeds as above). Style measures: the mean outline fraction and the images
  // whose background is white. Measured (scales 0 / 0.5 / 1): outline 0.0022 / 0.0024 / 0.0184, white 2 / 3 / 15 of
  // 20; on the model scripts/make-toy-model made again (session 14, AVX2 kernels) 0.0010 / 0.0025 / 0.0241 and
  // 2 / 2 / 16. (At 1e-3, the recipe until then, this model gave 8 white backgrounds and the remade one 5; 500 steps
  // at 1e-3 gave 12 and 13, 400 at 1.5e-3 12 and 11.) Bars: at scale 1 the outline fraction at least twice scale 0's
  // and at least 7 white backgrounds against at most 4 at scale 0, where the prompts' own colours still win
  // (colour >= 16 of 20, as the base model). At 0.5 the measures are still close to scale 0's.
  namespace fs = std::filesystem;
  std::string const data = "toy_style_images", out = "toy_style_lora";
  fs::remove_all(data);
  train::ToyWorldOptions w;
  w.set = train::ToySet::Style;
  w.count = 64;
  train::write_toy_world(data, w);
  {
    Context<Cpu> ctx;
    auto sd = load_toy();
    train_on_toy(ctx, sd, data, out, train::Method::Lora, 300, 2e-3,
                 "to_q|to_k|to_v|to_out\\.0|conv1|conv2|proj_in|proj_out", true);
  }
  Context<Cpu> ctx;
  auto const prompts = train::toy_prompts(20, 1);
  double outline[3] = {};
  int white[3] = {}, colour[3] = {};
  double const scales[3] = {0.0, 0.5, 1.0};
  for (int k = 0; k < 3; ++k) {
    auto sdk = load_toy();
    pipeline::apply_loras(sdk, {{out + "/sdlora_lora.safetensors", scales[k]}});
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      auto const m = eval::measure_toy_image(draw(ctx, sdk, prompts[i], 100 + i), prompts[i]);
      outline[k] += m.outline / double(prompts.size());
      white[k] += m.background == "white";
      colour[k] += m.color_match.value_or(false);
    }
  }
  INFO("outline " << outline[0] << " / " << outline[1] << " / " << outline[2] << "; white backgrounds " << white[0]
                  << " / " << white[1] << " / " << white[2] << "; colour " << colour[0] << " / " << colour[1] << " / "
                  << colour[2] << " (scales 0 / 0.5 / 1)");
  CHECK(outline[2] >= 2 * outline[0]);
  CHECK(white[2] >= 7);
  CHECK(white[0] <= 4);
  CHECK(colour[0] >= 16);
}

TEST_CASE("DreamBooth teaches the toy model the sks subject and draws it on a background it never saw",
          "[toy][e2e][subject]") {
  // The subject (train::ToySet::Subject): a yellow star with a red dot, captioned "a sks toy on a <colour> background";
  // the first 8 instance scenes that are not on green. Then "a sks toy on a green background", 8 seeds. An image shows
  // the subject when the star ranks first by the shape measure, its dominant colour is the subject's (yellow, or the
  // orange and red its dot blends into) and its background is green. DreamBooth-LoRA without prior preservation:
  // rank 8 on the attention projections, 600 steps at 2e-3, batch 4, seed 0. Measured: 0 of 8 before (the untrained
  // identifier draws purple circles), 4 of 8 after (5 before the model's crescent stage). Bars: <= 1 before, >= 3
  // after. With prior preservation (16 class scenes) the same run gave 2 of 8.
  Context<Cpu> ctx;
  auto sd = load_toy();
  std::string const prompt = "a sks toy on a green background";
  auto subject_count = [&](models::StableDiffusion<float, Cpu>& m) {
    int n = 0;
    for (std::uint64_t seed = 1; seed <= 8; ++seed) {
      auto const img = draw(ctx, m, prompt, seed);
      auto const shapes = eval::shape_scores(img);
      auto const colour = eval::dominant_color(img).name;
      n += shapes.front().shape == "star" && (colour == "yellow" || colour == "orange" || colour == "red") &&
           eval::background_color_name(img) == "green";
    }
    return n;
  };
  int const before = subject_count(sd);
  train_on_toy(ctx, sd, write_scenes("toy_dreambooth_instances", train::ToySet::Subject, 8, "green"), "toy_dreambooth",
               train::Method::DreamBooth, 600, 2e-3, "to_q|to_k|to_v|to_out\\.0", false);
  int const after = subject_count(sd);
  INFO("the subject in " << before << " of 8 images before DreamBooth, " << after << " of 8 after");
  CHECK(before <= 1);
  CHECK(after >= 3);
}

TEST_CASE("Textual Inversion finds the crescent the toy model draws without a word for it",
          "[toy][e2e][subject]") {
  // The toy model's UNet saw crescents only as "a <colour> shape on a <colour> background" (600 of the 4600 scenes
  // of its crescent stage; data/models/toy-world/README.md): no word names them. Textual Inversion: "<toy-shape>"
  // initialised from "circle", on the first 16 concept scenes (train::ToySet::Concept, "a white <toy-shape> on a blue
  // background"), AdamW at 5e-2, 300 steps, batch 4, seed 0; only the new token's embedding row trains. Then 8 prompts
  // (the captions of concept scenes 100 to 107, which it does not train on), seed 1 to 8, once with "circle" in the
  // token's place (what the token meant before training) and once with the learned token; also with "shape", the word
  // the crescents were seen with. Measure: how many images the crescent ranks first in by the shape measure. Measured:
  // 0 of 8 with "circle", 3 with the learned token (1 with "shape"). Bars: at most 1 before, at least 2 after and at
  // least 2 more than before. The crescent's mean IoU is printed, not checked: a circle's mask overlaps a crescent's by
  // ~0.45, so it does not tell the two apart (measured 0.46 with "circle", 0.37 with the learned token).
  Context<Cpu> ctx;
  auto sd = load_toy();
  std::vector<std::string> prompts;
  for (Index i = 100; i < 108; ++i) prompts.push_back(train::make_toy_scene(train::ToySet::Concept, i, 64, 0).caption);
  auto crescents = [&](std::string const& word) {
    int first = 0;
    double iou = 0;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      std::string p = prompts[i];
      p.replace(p.find("<toy-shape>"), std::string("<toy-shape>").size(), word);
      auto const scores = eval::shape_scores(draw(ctx, sd, p, 1 + i));
      first += scores.front().shape == train::kToyConceptShape;
      for (auto const& s : scores)
        if (s.shape == train::kToyConceptShape) iou += s.iou / double(prompts.size());
    }
    return std::pair{first, iou};
  };
  auto const [circle_first, circle_iou] = crescents("circle");
  auto const [shape_first, shape_iou] = crescents("shape");
  train::TrainerOptions ti;
  ti.placeholder_token = "<toy-shape>";
  ti.initializer_token = "circle";
  train_on_toy(ctx, sd, write_scenes("toy_ti_concept", train::ToySet::Concept, 16, ""), "toy_textual_inversion",
               train::Method::TextualInversion, 300, 5e-2, "", false, &ti);
  auto const [token_first, token_iou] = crescents("<toy-shape>");
  INFO("crescent first in " << circle_first << " / " << shape_first << " / " << token_first
                            << " of 8, mean crescent IoU " << circle_iou << " / " << shape_iou << " / " << token_iou
                            << " ('circle' / the generic 'shape' / the learned token)");
  CHECK(circle_first <= 1);
  CHECK(token_first >= 2);
  CHECK(token_first >= circle_first + 2);
}
