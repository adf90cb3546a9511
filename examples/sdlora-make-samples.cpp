/// @file sdlora-make-samples.cpp
/// @brief sdlora-make-samples: writes the procedural sample data (train/sample_data.hpp) for demos and tests:
/// `<out>/quickdraw/<class>.npy` (QuickDraw-style 28 x 28 scribbles) and `<out>/images/NNNN.png` + `metadata.csv`
/// (captioned flat-colour scenes), deterministic from --seed; --preview also writes `<out>/preview.png`.
/// `--toy-world base|style|subject|concept` writes one toy-world set instead: `<out>/NNNN.png` + `metadata.csv`
/// (and, for `subject`, its class images in `<out>/class/`); `--toy-world prompts` writes --count held-out toy
/// prompts (train::toy_prompts), one per line, to the file --out.
#include <algorithm>                     // std::min
#include <cstdint>                       // std::uint64_t
#include <iostream>                      // std::cout, std::cerr
#include <sdlora/io/image.hpp>           // io::make_grid, io::save_png, io::resize, io::detail::write_file_bytes
#include <sdlora/train/sample_data.hpp>  // train::write_sample_data, make_scribbles, make_scene, toy_prompts
#include <string>                        // std::string
#include <vector>                        // std::vector

#include "common/cli.hpp"  // cli::normalize_flags, cli::parse, cli::run_main

namespace {

using namespace sdlora;
namespace po = boost::program_options;
constexpr char const* kProgram = "sdlora-make-samples";

/// A grid: one row of scribbles per class (upscaled to the scene size), then the scenes.
void write_preview(std::string const& path, train::SampleDataOptions const& o) {
  std::vector<Tensor<float, Cpu>> cells;
  Index const cols = 8, size = o.image_size;
  for (auto const& cls : o.classes) {
    Index const n = std::min<Index>(cols, o.scribbles_per_class);
    auto const s = train::make_scribbles(cls, n, o.seed);  // (n, 784)
    for (Index i = 0; i < n; ++i) {
      Tensor<float, Cpu> img(Shape{3, 28, 28});  // (3, 28, 28) in [-1, 1]
      for (Index c = 0; c < 3; ++c)
        for (Index p = 0; p < 784; ++p) img(c * 784 + p) = float(s(i * 784 + p)) / 127.5f - 1.0f;
      cells.push_back(io::resize(img.view(), size, size, io::Filter::Bicubic));
    }
    for (Index i = n; i < cols; ++i) cells.push_back(Tensor<float, Cpu>(Shape{3, size, size}));
  }
  for (Index i = 0; i < o.images; ++i) {
    auto scene = train::make_scene(i, size, o.seed).image;  // (3, S, S) in [0, 1]
    for (Index k = 0; k < scene.numel(); ++k) scene(k) = scene(k) * 2.0f - 1.0f;
    cells.push_back(std::move(scene));
  }
  if (cells.empty()) return;
  io::save_png(path, io::make_grid(cells, cols).view());
}

int run(int argc, char** argv) {
  std::string out;
  train::SampleDataOptions o;
  bool preview = false;
  std::string toy_world, token;
  po::options_description flags("sdlora-make-samples: procedural sample data (scribbles + captioned images)");
  // clang-format off
  flags.add_options()
      ("help,h", "this help")
      ("out", po::value(&out)->required(), "output folder (quickdraw/ and images/ are written in it)")
      ("seed", po::value(&o.seed)->default_value(0), "random seed: the same seed writes the same bytes")
      ("count", po::value(&o.images)->default_value(16), "captioned images")
      ("size", po::value(&o.image_size)->default_value(64), "side of the captioned images in pixels (>= 8)")
      ("scribbles", po::value(&o.scribbles_per_class)->default_value(100), "scribbles per class (28 x 28)")
      ("preview", po::bool_switch(&preview), "also write <out>/preview.png (a grid of both)")
      ("toy-world", po::value(&toy_world)->value_name("SET"),
       "write one toy-world set instead (64 px shapes in named colours on named backgrounds, captioned): base "
       "(circle, square, triangle, star, heart, diamond; 8 colours), style (the same scenes and captions as black "
       "scribbled outlines on white), subject (a yellow star with a red dot, 'a sks toy on a green background'; "
       "class images 'a toy on ...' in <out>/class/) or concept (the unseen crescent, 'a white <toy-shape> on a blue "
       "background'); --count scenes of --size px into <out>/NNNN.png + metadata.csv; or prompts: --count toy prompts "
       "for evaluation ('a red circle on a blue background', shapes, colours and backgrounds spread evenly), one per "
       "line, into the file --out")
      ("token", po::value(&token)->value_name("TOK"),
       "--toy-world subject: the identifier (default sks); concept: the placeholder (default <toy-shape>)");
  // clang-format on
  auto const args = cli::normalize_flags(argc, argv, '-');
  for (auto const& a : args)
    if (a == "--help" || a == "-h") {
      std::cout << flags << "\n";
      return 0;
    }
  cli::parse(flags, args);
  if (toy_world == "prompts") {
    if (o.images < 0) SDLORA_THROW(ConfigError, "--count must be >= 0, got " << o.images);
    std::string text;
    for (auto const& p : train::toy_prompts(o.images, o.seed)) text += p + "\n";
    io::detail::write_file_bytes(out, text, "[toy_prompts]");
    std::cerr << kProgram << ": wrote " << o.images << " toy prompts to " << out << "\n";
    return 0;
  }
  if (!toy_world.empty()) {
    train::ToyWorldOptions t;
    t.set = train::parse_toy_set(toy_world);
    t.count = o.images;
    t.size = o.image_size;
    t.seed = o.seed;
    t.token = token;
    auto const files = train::write_toy_world(out, t);
    std::cerr << kProgram << ": wrote " << files.size() << " files: " << t.count << " toy-world '" << toy_world
              << "' scenes of " << t.size << " px in " << out << "\n";
    return 0;
  }
  auto const files = train::write_sample_data(out, o);
  if (preview) write_preview(out + "/preview.png", o);
  std::cerr << kProgram << ": wrote " << files.files.size() << " files: " << o.classes.size() << " x "
            << o.scribbles_per_class << " scribbles in " << files.quickdraw_dir << ", " << o.images << " images of "
            << o.image_size << " px in " << files.image_dir << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run_main(kProgram, [&] { return run(argc, argv); });
}
