/// @file train_files_fuzz.cpp
/// @brief libFuzzer target for the text files a training run reads: the first byte picks metadata.csv,
/// metadata.jsonl or a checkpoint's state.json (next to valid parameter and optimizer files); the rest is the file.
/// Any bytes must give rows / a state or a sdlora::Error naming the file; never another exception or a crash.
#include <unistd.h>  // getpid

#include <cstddef>     // std::size_t
#include <cstdint>     // std::uint8_t
#include <filesystem>  // std::filesystem
#include <fstream>     // std::ofstream
#include <string>      // std::string

#include <sdlora/train/dataset.hpp>  // train::detail::read_metadata
#include <sdlora/train/state.hpp>    // train::load_checkpoint, save_checkpoint

namespace fs = std::filesystem;

namespace {
/// A scratch folder holding a complete checkpoint whose state.json each input replaces.
fs::path const& scratch() {
  static fs::path const dir = [] {
    fs::path const d = fs::temp_directory_path() / ("sdlora-train-files-fuzz-" + std::to_string(::getpid()));
    fs::remove_all(d);
    sdlora::train::TrainingState<float> s;
    s.parameters.emplace("unet.a.lora_A.weight", sdlora::Tensor<float>(sdlora::Shape{2, 3}));
    s.optimizer.type = "adamw";
    s.optimizer.scalars["lr"] = 1e-4;
    sdlora::train::save_checkpoint(d.string(), s);
    return d;
  }();
  return dir;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  if (size == 0) return 0;
  int const kind = data[0] % 3;
  fs::path const file = kind == 0   ? scratch() / "metadata.csv"
                        : kind == 1 ? scratch() / "metadata.jsonl"
                                    : scratch() / "checkpoint-0" / "state.json";
  std::ofstream(file, std::ios::binary | std::ios::trunc).write(reinterpret_cast<char const*>(data + 1),
                                                                 std::streamsize(size - 1));
  try {
    if (kind < 2) {
      sdlora::train::DatasetOptions o;
      auto const rows = sdlora::train::detail::read_metadata(file, o);
      for (auto const& [name, caption] : rows)
        if (name.size() + caption.size() > size) __builtin_trap();
    } else {
      auto const s = sdlora::train::load_checkpoint<float>((scratch() / "checkpoint-0").string());
      if (s.data_order.size() > size) __builtin_trap();
    }
  } catch (sdlora::Error const&) {
  }
  return 0;
}
