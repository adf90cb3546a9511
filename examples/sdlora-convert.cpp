/// @file sdlora-convert.cpp
/// @brief sdlora-convert: LoRA layout conversion (kohya <-> diffusers / PEFT), LoRAs merged into a checkpoint
/// (single file or diffusers folder), checkpoint storage dtype, LoRA extraction from a fine-tune by truncated SVD,
/// and LoRA rank reduction. The work is library calls (lora/convert.hpp, lora/extract.hpp, models/save.hpp); this
/// file parses flags. Reference: docs/cli.md.
#include <iostream>  // std::cout
#include <string>    // std::string
#include <vector>    // std::vector

#include <sdlora/backend/cpu.hpp>           // the CPU kernels the models' and adapters' layers refer to
#include <sdlora/backend/cpu/parallel.hpp>  // cpu::set_default_thread_count
#include <sdlora/lora/convert.hpp>          // lora::convert_lora, lora::resize_lora, lora::save_lora
#include <sdlora/lora/extract.hpp>          // lora::extract_lora
#include <sdlora/models/checkpoint.hpp>     // models::load_stable_diffusion
#include <sdlora/models/save.hpp>           // models::save_stable_diffusion, models::convert_file_dtype
#include <sdlora/pipeline/lora.hpp>         // pipeline::apply_loras
#include <sdlora/instances.hpp>  // compiled once in sdlora::instances (examples/CMakeLists.txt)

#include "common/cli.hpp"  // cli::normalize_flags, cli::parse, cli::run_main, cli::path_and_scale

namespace {

namespace po = boost::program_options;
using namespace sdlora;

inline constexpr char kProgram[] = "sdlora-convert";

constexpr char kUsage[] =
    "Usage: sdlora-convert COMMAND [options]   (sdlora-convert COMMAND --help for its flags)\n"
    "Commands:\n"
    "  lora     --in FILE --to kohya|peft --out FILE\n"
    "           rewrite a LoRA in the kohya (A1111 / ComfyUI) or diffusers / PEFT layout; factors unchanged\n"
    "  merge    --model M --lora FILE[:SCALE] [--lora ...] --out OUT\n"
    "           merge LoRAs into a checkpoint; OUT ending in .safetensors is an A1111 / ComfyUI single file,\n"
    "           anything else a diffusers folder\n"
    "  dtype    --model M --to fp32|fp16|bf16 --out OUT\n"
    "           store a checkpoint's weights in another dtype (EMA copies model_ema.* dropped)\n"
    "  extract  --base A --tuned B --rank R [--conv-rank R] [--clamp-quantile Q] --out FILE\n"
    "           a kohya LoRA from the difference of a fine-tune and its base (truncated SVD per layer)\n"
    "  resize   --in FILE --rank R --out FILE\n"
    "           reduce a LoRA's rank (the best rank-R approximation of each layer's delta)\n"
    "Checkpoints (M, A, B) are diffusers folders or SD 1.x / 2.x .safetensors files. Errors print one line: exit 2\n"
    "for usage, 1 otherwise.\n";

struct Args {
  std::string in, out, to, model, config, base, tuned, save_precision, svd = "exact";
  std::vector<std::string> loras;
  int rank = 0, conv_rank = 0, threads = 0;
  double clamp_quantile = 0.99, min_diff = 0.01;
};

po::options_description options(std::string const& command, Args& a) {
  po::options_description d("Usage: sdlora-convert " + command + " [options]\n\nOptions", 120, 60);
  // clang-format off
  d.add_options()
    ("help,h", "show this help and exit")
    ("out", po::value(&a.out)->value_name("PATH"), "output file (or folder, for merge / dtype)")
    ("threads", po::value(&a.threads)->value_name("N")->default_value(0), "CPU threads (0: all)");
  if (command == "lora" || command == "resize")
    d.add_options()("in", po::value(&a.in)->value_name("FILE"), "the LoRA file (kohya or diffusers / PEFT .safetensors)");
  if (command == "lora")
    d.add_options()("to", po::value(&a.to)->value_name("kohya|peft"), "the layout to write");
  if (command == "dtype")
    d.add_options()("to", po::value(&a.to)->value_name("fp32|fp16|bf16"), "the storage dtype to write");
  if (command == "merge" || command == "dtype")
    d.add_options()
      ("model", po::value(&a.model)->value_name("PATH"), "checkpoint: a diffusers folder or an SD 1.x / 2.x .safetensors file");
  if (command == "merge")
    d.add_options()
      ("lora", po::value(&a.loras)->value_name("FILE[:SCALE]")->composing(), "a LoRA file and its scale (default 1); repeatable");
  if (command == "merge" || command == "dtype" || command == "extract")
    d.add_options()
      ("config", po::value(&a.config)->value_name("DIR"), "a diffusers folder whose unet/ vae/ text_encoder/ config.json "
                                                          "describe a single-file checkpoint of a non-standard architecture");
  if (command == "extract")
    d.add_options()
      ("base", po::value(&a.base)->value_name("PATH"), "the base checkpoint")
      ("tuned", po::value(&a.tuned)->value_name("PATH"), "the fine-tuned checkpoint")
      ("conv-rank", po::value(&a.conv_rank)->value_name("R")->default_value(0), "rank of 3x3 convolutions (0: leave them out)")
      ("clamp-quantile", po::value(&a.clamp_quantile)->value_name("Q")->default_value(0.99),
       "clamp factor entries at this quantile of their magnitudes (1: no clamp)")
      ("min-diff", po::value(&a.min_diff)->value_name("D")->default_value(0.01),
       "leave the text encoder out when no weight changed by more than this")
      ("svd", po::value(&a.svd)->value_name("exact|randomized")->default_value("exact"),
       "exact: full SVD per layer (BDCSVD); randomized: range finder + small SVD, ~50x faster on SD 1.5 layers");
  if (command == "extract" || command == "resize")
    d.add_options()("rank", po::value(&a.rank)->value_name("R"), "the LoRA rank (extract: of Linear and 1x1 conv layers)");
  if (command != "dtype")
    d.add_options()("save-precision", po::value(&a.save_precision)->value_name("fp32|fp16|bf16"),
                    command == "merge" ? "dtype of the written weights (default fp32)"
                                       : "dtype of the written factors (default: as read; extract: fp32)");
  // clang-format on
  return d;
}

void require(std::string const& value, char const* flag, char const* what) {
  if (value.empty()) SDLORA_THROW(ConfigError, "--" << flag << " is required (" << what << ")");
}

models::LoadOptions load_options(Args const& a) {
  models::LoadOptions o;
  o.config_dir = a.config;
  return o;
}

lora::SaveLoraOptions lora_save_options(Args const& a) {
  lora::SaveLoraOptions o;
  if (!a.save_precision.empty()) o.dtype = models::parse_save_dtype(a.save_precision);
  return o;
}

// ---- commands -----------------------------------------------------------------------------------------------------

int run_lora(Args const& a) {
  require(a.in, "in", "a LoRA file");
  require(a.out, "out", "the file to write");
  if (a.to != "kohya" && a.to != "peft") SDLORA_THROW(ConfigError, "--to must be kohya or peft, got '" << a.to << "'");
  auto const to = a.to == "kohya" ? lora::LoraFormat::Kohya : lora::LoraFormat::Peft;
  auto const file = lora::convert_lora(a.in, to, a.out, lora_save_options(a));
  std::cout << "wrote " << a.out << ": " << file.entries.size() << " layers in the " << a.to << " layout\n";
  return 0;
}

int run_merge(Args const& a) {
  require(a.model, "model", "a checkpoint");
  require(a.out, "out", "a .safetensors file or a folder");
  if (a.loras.empty()) SDLORA_THROW(ConfigError, "--lora is required (FILE[:SCALE], repeatable)");
  std::cout << "loading " << a.model << "\n" << std::flush;
  auto sd = models::load_stable_diffusion<float>(a.model, load_options(a));
  std::vector<pipeline::LoraSpec> specs;
  for (auto const& s : a.loras) {
    auto const [path, scale] = cli::path_and_scale(s);
    specs.push_back({path, scale});
  }
  auto const loaded = pipeline::apply_loras(sd, specs, lora::ApplyMode::Merge);
  for (auto const& l : loaded)
    std::cout << "merged " << l.path << " at " << l.scale << ": " << l.unet_layers << " UNet and "
              << l.text_encoder_layers << " text-encoder layers\n";
  models::SaveOptions o;
  o.dtype = a.save_precision.empty() ? DType::F32 : models::parse_save_dtype(a.save_precision);
  std::string merged;
  for (auto const& l : loaded) merged += (merged.empty() ? "" : ", ") + l.name + ":" + std::to_string(l.scale);
  o.metadata["sdlora_merged_loras"] = merged;
  std::cout << "writing " << a.out << (models::is_single_file_path(a.out) ? " (single file)" : " (diffusers folder)")
            << "\n" << std::flush;
  models::save_stable_diffusion(sd, a.out, o);
  return 0;
}

int run_dtype(Args const& a) {
  require(a.model, "model", "a checkpoint");
  require(a.out, "out", "a .safetensors file or a folder");
  require(a.to, "to", "fp32, fp16 or bf16");
  DType const dtype = models::parse_save_dtype(a.to);
  bool const file_in = models::is_single_file_path(a.model), file_out = models::is_single_file_path(a.out);
  if (file_in && file_out) {  // tensor by tensor: every key kept but the EMA copies
    auto const r = models::convert_file_dtype(a.model, a.out, dtype, {"model_ema."}, [](std::size_t done, std::size_t n) {
      if (done % 200 == 0 || done == n) std::cout << "[dtype] " << done << "/" << n << " tensors\n" << std::flush;
    });
    std::cout << "wrote " << a.out << ": " << r.converted << " tensors as " << a.to << ", " << r.kept
              << " integer tensors kept, " << r.dropped << " EMA tensors dropped\n";
    return 0;
  }
  std::cout << "loading " << a.model << "\n" << std::flush;
  auto sd = models::load_stable_diffusion<float>(a.model, load_options(a));
  models::save_stable_diffusion(sd, a.out, {.dtype = dtype, .metadata = {}});
  std::cout << "wrote " << a.out << " as " << a.to << (sd.ignored_keys ? " (" + std::to_string(sd.ignored_keys) +
                                                                             " extra keys such as EMA copies dropped)"
                                                                       : std::string())
            << "\n";
  return 0;
}

int run_extract(Args const& a) {
  require(a.base, "base", "the base checkpoint");
  require(a.tuned, "tuned", "the fine-tuned checkpoint");
  require(a.out, "out", "the LoRA file to write");
  if (a.rank < 1) SDLORA_THROW(ConfigError, "--rank must be at least 1, got " << a.rank);
  if (a.conv_rank < 0) SDLORA_THROW(ConfigError, "--conv-rank must be >= 0, got " << a.conv_rank);
  if (a.svd != "exact" && a.svd != "randomized")
    SDLORA_THROW(ConfigError, "--svd must be exact or randomized, got '" << a.svd << "'");
  std::cout << "loading " << a.base << " and " << a.tuned << "\n" << std::flush;
  auto base = models::load_stable_diffusion<float>(a.base, load_options(a));
  auto tuned = models::load_stable_diffusion<float>(a.tuned, load_options(a));
  lora::ExtractOptions o;
  o.rank = a.rank;
  o.conv_rank = a.conv_rank;
  o.clamp_quantile = a.clamp_quantile;
  o.svd = a.svd == "randomized" ? lora::SvdMethod::Randomized : lora::SvdMethod::Exact;
  o.progress = [](std::string const& name, std::size_t done, std::size_t n) {
    std::cout << "[extract] " << done << "/" << n << " " << name << "\n" << std::flush;
  };
  lora::LoraFile file = lora::extract_lora(base.unet, tuned.unet, "unet", o);
  o.min_diff = a.min_diff;  // kohya: an unchanged text encoder is left out
  lora::LoraFile te = lora::extract_lora(base.text_encoder, tuned.text_encoder, "text_encoder", o);
  if (te.entries.empty()) std::cout << "text encoder unchanged (max difference below " << a.min_diff << "): left out\n";
  file.append(std::move(te));
  if (file.entries.empty()) SDLORA_THROW(ConfigError, "[extract] " << a.tuned << ": no layer to extract");
  auto so = lora_save_options(a);
  so.metadata["ss_base_model_version"] = base.base_model == "sd2" ? "sd_v2" : "sd_v1";
  so.metadata["ss_training_comment"] = "extracted by sdlora-convert from " + a.tuned + " - " + a.base;
  lora::save_lora(a.out, file, lora::LoraFormat::Kohya, so);
  std::cout << "wrote " << a.out << ": " << file.entries.size() << " layers, rank " << a.rank << "\n";
  return 0;
}

int run_resize(Args const& a) {
  require(a.in, "in", "a LoRA file");
  require(a.out, "out", "the file to write");
  if (a.rank < 1) SDLORA_THROW(ConfigError, "--rank must be at least 1, got " << a.rank);
  lora::LoraFile const file = lora::read_lora(a.in);
  std::vector<lora::ResizedLayer> report;
  lora::LoraFile const resized = lora::resize_lora(file, a.rank, &report);
  double worst = 1;
  for (auto const& r : report) worst = std::min(worst, r.kept_energy);
  lora::save_lora(a.out, resized, file.format, lora_save_options(a));
  std::cout << "wrote " << a.out << ": " << report.size() << " layers at rank <= " << a.rank
            << "; the worst layer keeps " << 100 * worst << "% of its delta's squared Frobenius norm\n";
  return 0;
}

int run(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  std::string const command = argv[1];
  if (command != "lora" && command != "merge" && command != "dtype" && command != "extract" && command != "resize")
    SDLORA_THROW(ConfigError, "unknown command '" << command << "' (lora, merge, dtype, extract, resize; see --help)");
  Args a;
  auto const desc = options(command, a);
  auto const vm = cli::parse(desc, cli::normalize_flags(argc - 1, argv + 1, '-'));
  if (vm.count("help")) {
    std::cout << desc;
    return 0;
  }
  if (a.threads < 0) SDLORA_THROW(ConfigError, "--threads must be >= 0, got " << a.threads);
  cpu::set_default_thread_count(a.threads);
  if (command == "lora") return run_lora(a);
  if (command == "merge") return run_merge(a);
  if (command == "dtype") return run_dtype(a);
  if (command == "extract") return run_extract(a);
  return run_resize(a);
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run_main(kProgram, [&] { return run(argc, argv); });
}
