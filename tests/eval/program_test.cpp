/// @file program_test.cpp
/// @brief End-to-end tests of the sdlora-eval program on the tiny CLIP / ViT fixtures: each metric command's JSON
/// against the transformers / torchmetrics references, and the one-line errors with their exit codes (wrong prompt
/// count, unreadable image, missing model file); the LoRA-scale sweep with CLIP and with the toy-world measures (whose
/// per-image columns are recomputed from the written images). The executable's path comes from CMake (SDLORA_EVAL_EXE).
#include <catch2/catch.hpp>

#include <algorithm>   // std::count
#include <cmath>       // std::fabs
#include <filesystem>  // std::filesystem
#include <fstream>     // std::ofstream, std::ifstream
#include <map>         // std::map
#include <sstream>     // std::stringstream
#include <string>      // std::string
#include <vector>      // std::vector

#include <nlohmann/json.hpp>  // nlohmann::json

#include <sdlora/eval/toy_measures.hpp>  // eval::measure_toy_image
#include <sdlora/io/image.hpp>           // io::load_image
#include <sdlora/io/safetensors.hpp>     // io::SafetensorsFile

#include "examples/program.hpp"
#include "support.hpp"

using namespace sdlora;
namespace fs = std::filesystem;

namespace {

fs::path eval_scratch() {
  static fs::path const dir = [] {
    fs::path d = test::scratch_dir("sdlora_eval_test");
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

test::ProgramResult run_eval(std::string const& args) {
  return test::run_program(SDLORA_EVAL_EXE, args, eval_scratch());
}

std::string fx(std::string const& name) { return "'" + test::fixture("eval/" + name) + "'"; }
double expected(std::string const& key) {
  io::SafetensorsFile ref(test::fixture("eval/expected.safetensors"));
  return ref.load<double>(key)(0);
}
/// The rows of a CSV file without quoted fields, split at commas (empty fields kept).
std::vector<std::vector<std::string>> read_csv(fs::path const& file) {
  std::ifstream in(file);
  std::vector<std::vector<std::string>> rows;
  for (std::string line; std::getline(in, line);) {
    rows.emplace_back();
    std::stringstream ss(line);
    for (std::string f; std::getline(ss, f, ',');) rows.back().push_back(f);
    if (!line.empty() && line.back() == ',') rows.back().emplace_back();
  }
  return rows;
}

}  // namespace

TEST_CASE("sdlora-eval prints every command's metric as JSON, matching the references", "[examples][e2e]") {
  // Tolerances as in eval_test.cpp: CLIP score 0.05 (0-100 scale), CLIP-I / DINO 1e-3, SSIM 1e-5.
  struct Case {
    std::string args, metric, key;
    double tol;
    std::size_t n;
  };
  Case const cases[] = {
      {"clip-score --clip " + fx("clip") + " --images " + fx("generated") + " --prompts " + fx("prompts.txt") +
           " --batch 2",
       "clip_score", "metric.clip_score", 0.05, 5},
      {"clip-i --clip " + fx("clip") + " --images " + fx("generated") + " --reference " + fx("reference"), "clip_i",
       "metric.clip_i_all", 1e-3, 5},
      {"clip-i --clip " + fx("clip") + " --images " + fx("generated") + " --reference " + fx("reference") +
           " --pairing index",
       "clip_i", "metric.clip_i_index", 1e-3, 5},
      {"dino --dino " + fx("dino") + " --images " + fx("generated") + " --reference " + fx("reference"), "dino",
       "metric.dino_all", 1e-3, 5},
      {"ssim --images " + fx("generated") + " --reference " + fx("reference"), "ssim", "metric.ssim", 1e-5, 5},
  };
  for (auto const& c : cases) {
    auto const r = run_eval(c.args + " --json");
    INFO(c.args << "\nstderr: " << r.err);
    REQUIRE(r.code == 0);
    REQUIRE(test::count_lines(r.out) == 1);
    auto const j = nlohmann::json::parse(r.out);
    CHECK(j["metric"] == c.metric);
    CHECK(j["n"] == c.n);
    CHECK(j["per_image"].size() == c.n);
    CHECK(std::fabs(j["value"].get<double>() - expected(c.key)) < c.tol);
  }
  auto const plain = run_eval("ssim --images " + fx("generated") + " --reference " + fx("reference"));
  CHECK(plain.code == 0);
  CHECK(plain.out.rfind("ssim: 0.44", 0) == 0);
}

TEST_CASE("sdlora-eval --metadata reads prompts by file name", "[examples][e2e]") {
  fs::path const csv = eval_scratch() / "metadata.csv";
  {
    std::ofstream out(csv);
    out << "file_name,text\n";
    std::ifstream in(test::fixture("eval/prompts.txt"));
    std::string line;
    for (int i = 0; std::getline(in, line); ++i) out << "g" << (4 - i) << ".png,\"" << line << "\"\n";
  }
  // Rows pair g4 with prompt 0, g3 with prompt 1, ...: looked up by file name, the score must differ from the
  // in-order reference; then the in-order table must reproduce it.
  auto const r = run_eval("clip-score --clip " + fx("clip") + " --images " + fx("generated") + " --metadata '" +
                          csv.string() + "' --json");
  REQUIRE(r.code == 0);
  auto const j = nlohmann::json::parse(r.out);
  CHECK(std::fabs(j["value"].get<double>() - expected("metric.clip_score")) > 0.1);
  {
    std::ofstream out(csv);
    out << "file_name,text\n";
    std::ifstream in(test::fixture("eval/prompts.txt"));
    std::string line;
    for (int i = 0; std::getline(in, line); ++i) out << "g" << i << ".png,\"" << line << "\"\n";
  }
  auto const ok = run_eval("clip-score --clip " + fx("clip") + " --images " + fx("generated") + " --metadata '" +
                           csv.string() + "' --json");
  REQUIRE(ok.code == 0);
  CHECK(std::fabs(nlohmann::json::parse(ok.out)["value"].get<double>() - expected("metric.clip_score")) < 0.05);
}

TEST_CASE("sdlora-eval errors are one line with a non-zero exit code", "[examples][e2e]") {
  // Wrong prompt count.
  fs::path const prompts = eval_scratch() / "three.txt";
  std::ofstream(prompts) << "a\nb\nc\n";
  auto r = run_eval("clip-score --clip " + fx("clip") + " --images " + fx("generated") + " --prompts '" +
                    prompts.string() + "'");
  CHECK(r.code == 2);
  CHECK(test::count_lines(r.err) == 1);
  CHECK(r.err.find("3 prompts for 5 images") != std::string::npos);

  // Unreadable image.
  fs::path const bad = eval_scratch() / "bad";
  fs::create_directories(bad);
  for (auto const& e : fs::directory_iterator(test::fixture("eval/generated")))
    fs::copy_file(e.path(), bad / e.path().filename(), fs::copy_options::overwrite_existing);
  std::ofstream(bad / "g9.png") << "not a png";
  r = run_eval("ssim --images '" + bad.string() + "' --reference '" + bad.string() + "'");
  CHECK(r.code == 1);
  CHECK(test::count_lines(r.err) == 1);
  CHECK(r.err.find("g9.png") != std::string::npos);

  // Missing model file.
  fs::path const clip = eval_scratch() / "clip";
  fs::create_directories(clip);
  for (auto const& e : fs::directory_iterator(test::fixture("eval/clip")))
    if (e.path().filename() != "model.safetensors")
      fs::copy_file(e.path(), clip / e.path().filename(), fs::copy_options::overwrite_existing);
  r = run_eval("clip-i --clip '" + clip.string() + "' --images " + fx("generated") + " --reference " + fx("reference"));
  CHECK(r.code == 1);
  CHECK(test::count_lines(r.err) == 1);
  CHECK(r.err.find("model.safetensors not found") != std::string::npos);
  CHECK(r.err.find("Hugging Face Hub") != std::string::npos);

  // Usage errors.
  r = run_eval("dino --images " + fx("generated") + " --reference " + fx("reference"));
  CHECK(r.code == 2);
  CHECK(r.err.find("--dino is required") != std::string::npos);
  r = run_eval("ssim --images " + fx("generated") + " --reference " + fx("reference") + " --pairing index");
  CHECK(r.code == 2);  // ssim has no --pairing
  CHECK(test::count_lines(r.err) == 1);
  r = run_eval("nonsense");
  CHECK(r.code == 2);
}

TEST_CASE("sdlora-eval sweep generates, scores, plots and grids on the tiny model", "[examples][e2e]") {
  fs::path const out = eval_scratch() / "sweep";
  std::ofstream(eval_scratch() / "seen.txt") << "a photo of a cat\n";
  std::ofstream(eval_scratch() / "unseen.txt") << "a red dog\n";
  auto const r =
      run_eval("sweep --model '" + test::fixture("models/tiny-sd1") + "' --lora '" +
               test::fixture("pipeline/lora_kohya.safetensors") + "' --scales 0,1 --seeds 3 --prompts '" +
               (eval_scratch() / "seen.txt").string() + "' --unseen-prompts '" +
               (eval_scratch() / "unseen.txt").string() + "' --reference " + fx("reference") + " --clip " + fx("clip") +
               " --dino " + fx("dino") + " --steps 2 --width 16 --height 16 --threads 2 --out '" + out.string() + "'");
  INFO(r.err);
  REQUIRE(r.code == 0);
  std::ifstream csv(out / "results.csv");
  std::vector<std::string> rows;
  for (std::string line; std::getline(csv, line);) rows.push_back(line);
  REQUIRE(rows.size() == 6);  // header, 2 sets x 2 scales, the references
  CHECK(rows[0] == "prompt_set,scale,n,clip_score,clip_i,dino");
  CHECK(rows[1].rfind("prompts,0,1,", 0) == 0);
  CHECK(rows[4].rfind("unseen,1,1,", 0) == 0);
  CHECK(rows[5].rfind("reference,,5,,0.", 0) == 0);
  // The LoRA changes the images: scale 0 and 1 differ.
  auto const s0 = io::load_image((out / "images" / "prompts-p1-seed3-scale0.png").string());
  auto const s1 = io::load_image((out / "images" / "prompts-p1-seed3-scale1.png").string());
  CHECK(test::rel_l2(s0, s1) > 1e-3);
  auto const plot = io::load_image((out / "plot.png").string());
  CHECK(plot.shape() == Shape{3, 720, 640});
  auto const grid = io::load_image((out / "grid.png").string());
  CHECK(grid.dim(2) > 2 * 16);  // row labels and two scale columns
  CHECK(grid.dim(1) > 2 * 16);  // column labels and two rows
  // Scores are reproducible: the same command gives the same table.
  auto const again = run_eval(
      "sweep --model '" + test::fixture("models/tiny-sd1") + "' --lora '" +
      test::fixture("pipeline/lora_kohya.safetensors") + "' --scales 0,1 --seeds 3 --prompts '" +
      (eval_scratch() / "seen.txt").string() + "' --unseen-prompts '" + (eval_scratch() / "unseen.txt").string() +
      "' --reference " + fx("reference") + " --clip " + fx("clip") + " --dino " + fx("dino") +
      " --steps 2 --width 16 --height 16 --threads 2 --out '" + (eval_scratch() / "sweep2").string() + "'");
  REQUIRE(again.code == 0);
  CHECK(test::read_bytes(out / "results.csv") == test::read_bytes(eval_scratch() / "sweep2" / "results.csv"));
}

TEST_CASE("sdlora-eval sweep and compare reject bad input with one line", "[examples][e2e]") {
  auto r = run_eval("sweep --model /no/such/model --lora x --prompts x --reference x --clip x --out x");
  CHECK(r.code == 1);
  CHECK(test::count_lines(r.err) == 1);
  CHECK(r.err.find("/no/such/model") != std::string::npos);
  // Neither CLIP nor the toy measures asked for; DINO without CLIP.
  std::string const model_lora = "sweep --model '" + test::fixture("models/tiny-sd1") + "' --lora '" +
                                 test::fixture("pipeline/lora_kohya.safetensors") + "' --prompts x --out x";
  r = run_eval(model_lora);
  CHECK(r.code == 2);
  CHECK(test::count_lines(r.err) == 1);
  CHECK(r.err.find("sweep needs --clip DIR") != std::string::npos);
  CHECK(r.err.find("--toy-measures") != std::string::npos);
  r = run_eval(model_lora + " --toy-measures --dino " + fx("dino"));
  CHECK(r.code == 2);
  CHECK(test::count_lines(r.err) == 1);
  CHECK(r.err.find("--dino needs --clip") != std::string::npos);
  r = run_eval("compare --clip " + fx("clip") + " --prompts " + fx("prompts.txt") + " --reference " + fx("reference") +
               " --run nodir --out '" + (eval_scratch() / "cmp-bad").string() + "'");
  CHECK(r.code == 2);
  CHECK(r.err.find("NAME=DIR") != std::string::npos);
  std::ofstream(eval_scratch() / "two.txt") << "a\nb\n";
  r = run_eval("compare --clip " + fx("clip") + " --prompts '" + (eval_scratch() / "two.txt").string() +
               "' --reference " + fx("reference") + " --run g=" + fx("generated") + " --out '" +
               (eval_scratch() / "cmp-bad").string() + "'");
  CHECK(r.code == 2);
  CHECK(r.err.find("5 images for 2 prompts") != std::string::npos);
}

TEST_CASE("sdlora-eval compare tabulates every metric per run", "[examples][e2e]") {
  fs::path const out = eval_scratch() / "compare";
  auto const r = run_eval("compare --clip " + fx("clip") + " --dino " + fx("dino") + " --prompts " + fx("prompts.txt") +
                          " --reference " + fx("reference") + " --run base=" + fx("generated") +
                          " --run ref=" + fx("reference") + " --out '" + out.string() + "'");
  INFO(r.err);
  REQUIRE(r.code == 0);
  std::ifstream csv(out / "results.csv");
  std::string header, base, ref;
  std::getline(csv, header);
  std::getline(csv, base);
  std::getline(csv, ref);
  CHECK(header == "run,n,clip_score,clip_i,dino,ssim");
  // The base row reproduces the single-metric references (CLIP-I and DINO over all pairs), rounded to 4 digits.
  std::vector<double> v;
  std::stringstream ss(base.substr(base.find(',') + 1));
  for (std::string f; std::getline(ss, f, ',');) v.push_back(std::stod(f));
  REQUIRE(v.size() == 5);
  CHECK(v[0] == 5);
  CHECK(std::fabs(v[1] - expected("metric.clip_score")) < 0.05);
  CHECK(std::fabs(v[2] - expected("metric.clip_i_all")) < 1e-3);
  CHECK(std::fabs(v[3] - expected("metric.dino_all")) < 1e-3);
  CHECK(v[4] > 0);
  CHECK(v[4] < 1);
  auto const md = test::read_bytes(out / "results.md");
  CHECK(md.find("| run | n | CLIP score | CLIP-I | DINO | SSIM |") == 0);
  CHECK(md.find("| base | 5 |") != std::string::npos);
  CHECK(md.find("| ref | 5 |") != std::string::npos);
  CHECK(r.out == md);
}

TEST_CASE("sdlora-eval sweep --toy-measures: toy measures per image and per scale, without CLIP", "[examples][e2e]") {
  // The tiny model's images are noise: this proves the plumbing (every column is the measure of the image written
  // next to it, every summary the aggregate of its rows), not the values.
  fs::path const out = eval_scratch() / "toy-sweep";
  std::ofstream(eval_scratch() / "toy.txt")
      << "a red circle on a blue background\nan orange star on a white background\n"
         "a photo of a cat\n";
  auto const r = run_eval("sweep --model '" + test::fixture("models/tiny-sd1") + "' --lora '" +
                          test::fixture("pipeline/lora_kohya.safetensors") +
                          "' --scales 0,0.5,1 --seeds 3 --prompts '" + (eval_scratch() / "toy.txt").string() +
                          "' --toy-measures --steps 2 --width 16 --height 16 --threads 2 --out '" + out.string() + "'");
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK_FALSE(fs::exists(out / "clip.csv"));

  auto const rows = read_csv(out / "results.csv");
  REQUIRE(rows.size() == 1 + 3 * 3);  // header, 3 scales x 3 prompts x 1 seed
  std::vector<std::string> const header{"prompt_set", "scale", "seed", "prompt", "image", "color", "background",
                                        "shape", "dominant_color", "dominant_share", "color_match",
                                        "background_color", "background_match", "outline_fraction", "shape_score",
                                        "shape_first", "best_shape"};
  CHECK(rows[0] == header);
  std::map<std::string, std::vector<std::vector<std::string>>> by_scale;
  for (std::size_t i = 1; i < rows.size(); ++i) {
    auto const& row = rows[i];
    INFO("results.csv row " << i);
    REQUIRE(row.size() == header.size());
    CHECK(row[0] == "prompts");
    CHECK(row[2] == "3");
    by_scale[row[1]].push_back(row);
    // Every column is the measure of the written image (6 significant digits in the file).
    auto const img = io::load_image((out / row[4]).string(), io::ImageRange::ZeroToOne);  // (3, 16, 16)
    auto const m = eval::measure_toy_image(img, row[3]);
    CHECK(row[8] == m.dominant.name);
    CHECK(std::stod(row[13]) == Approx(m.outline).margin(1e-6));
    CHECK(row[11] == m.background);
    CHECK(row[16] == m.shapes.front().shape);
    if (row[3] == "a photo of a cat") {  // not a toy caption: its fields and comparisons are empty
      for (int k : {5, 6, 7, 10, 12, 14, 15}) CHECK(row[std::size_t(k)].empty());
    } else {
      REQUIRE(m.caption);
      CHECK(row[5] == m.caption->color);
      CHECK(row[6] == m.caption->background);
      CHECK(row[7] == m.caption->shape);
      CHECK(row[10] == (*m.color_match ? "1" : "0"));
      CHECK(row[12] == (*m.background_match ? "1" : "0"));
      CHECK(row[15] == (*m.shape_first ? "1" : "0"));
      CHECK(std::stod(row[14]) == Approx(*m.shape_score).margin(1e-6));
    }
  }
  CHECK(rows[1][3] == "a red circle on a blue background");
  CHECK(rows[1][4] == "images/prompts-p1-seed3-scale0.png");
  CHECK(rows[5][4] == "images/prompts-p2-seed3-scale0.5.png");

  // summary.csv: one row per scale, the accuracies over the 2 parsed prompts, the outline mean over all 3.
  auto const summary = read_csv(out / "summary.csv");
  REQUIRE(summary.size() == 1 + 3);
  CHECK(summary[0] == std::vector<std::string>{"prompt_set", "scale", "n", "parsed", "color_accuracy",
                                               "background_accuracy", "shape_accuracy", "mean_outline_fraction",
                                               "mean_shape_score"});
  for (std::size_t i = 1; i < summary.size(); ++i) {
    auto const& s = summary[i];
    REQUIRE(s.size() == 9);
    CHECK(s[0] == "prompts");
    CHECK(s[1] == std::vector<std::string>{"0", "0.5", "1"}[i - 1]);
    CHECK(s[2] == "3");
    CHECK(s[3] == "2");
    auto const& images = by_scale[s[1]];
    REQUIRE(images.size() == 3);
    double color = 0, background = 0, shape = 0, outline = 0;
    for (auto const& row : images) {
      outline += std::stod(row[13]) / 3;
      if (row[10].empty()) continue;
      color += std::stod(row[10]) / 2, background += std::stod(row[12]) / 2, shape += std::stod(row[15]) / 2;
    }
    CHECK(std::stod(s[4]) == Approx(color).margin(1e-6));
    CHECK(std::stod(s[5]) == Approx(background).margin(1e-6));
    CHECK(std::stod(s[6]) == Approx(shape).margin(1e-6));
    CHECK(std::stod(s[7]) == Approx(outline).margin(1e-5));
    CHECK(r.out.find("prompts scale " + s[1] + ": colour ") != std::string::npos);
  }
  // The LoRA changes the images, and the figures are there: two toy panels (outline fraction, accuracies), the grid.
  CHECK(test::rel_l2(io::load_image((out / "images" / "prompts-p1-seed3-scale0.png").string()),
                     io::load_image((out / "images" / "prompts-p1-seed3-scale1.png").string())) > 1e-3);
  CHECK(io::load_image((out / "plot.png").string()).shape() == Shape{3, 720, 640});
  auto const grid = io::load_image((out / "grid.png").string());
  CHECK(grid.dim(2) > 3 * 16);
  CHECK(grid.dim(1) > 3 * 16);
}
