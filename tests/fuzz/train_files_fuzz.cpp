/// @file train_files_fuzz.cpp
/// @brief libFuzzer target for the text files a training run reads: the first byte picks metadata.csv,
/// metadata.jsonl, a checkpoint's state.json (next to valid parameter and optimizer files) or a caption .txt file;
/// the rest is the file. Any bytes must give rows / a state / a caption or a sdlora::Error naming the file; never
/// another exception or a crash.
///
/// The readers take paths, and the first version of this target wrote every input to a file (about 300 executions
/// a second, bound by file I/O). Now the file is in memory: one memfd, rewritten for every input, which the
/// readers reach through symlinks with the names they expect (the extension picks the CSV or JSON Lines parser),
/// so the same code runs without a disk write.
#include <sys/mman.h>  // memfd_create
#include <unistd.h>    // ftruncate, pwrite, getpid

#include <cstddef>     // std::size_t
#include <cstdint>     // std::uint8_t
#include <filesystem>  // std::filesystem
#include <string>      // std::string

#include <sdlora/train/dataset.hpp>  // train::detail::read_metadata, read_text_file, trim
#include <sdlora/train/state.hpp>    // train::load_checkpoint, save_checkpoint

namespace fs = std::filesystem;

namespace {
/// The in-memory file every input is written to.
int memory_file() {
  static int const fd = ::memfd_create("sdlora-train-files-fuzz", 0);
  if (fd < 0) __builtin_trap();
  return fd;
}

/// A scratch folder holding a complete checkpoint whose state.json, and metadata.csv / metadata.jsonl /
/// caption.txt, are symlinks to the in-memory file.
fs::path const& scratch() {
  static fs::path const dir = [] {
    fs::path const d = fs::temp_directory_path() / ("sdlora-train-files-fuzz-" + std::to_string(::getpid()));
    fs::remove_all(d);
    sdlora::train::TrainingState<float> s;
    s.parameters.emplace("unet.a.lora_A.weight", sdlora::Tensor<float>(sdlora::Shape{2, 3}));
    s.optimizer.type = "adamw";
    s.optimizer.scalars["lr"] = 1e-4;
    sdlora::train::save_checkpoint(d.string(), s);
    fs::path const memory = "/proc/self/fd/" + std::to_string(memory_file());
    fs::remove(d / "checkpoint-0" / "state.json");
    for (fs::path const& link :
         {d / "metadata.csv", d / "metadata.jsonl", d / "caption.txt", d / "checkpoint-0" / "state.json"})
      fs::create_symlink(memory, link);
    return d;
  }();
  return dir;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  if (size == 0) return 0;
  fs::path const& dir = scratch();
  int const kind = data[0] % 4;
  int const fd = memory_file();
  if (::ftruncate(fd, 0) != 0) __builtin_trap();
  if (size > 1 && ::pwrite(fd, data + 1, size - 1, 0) != static_cast<ssize_t>(size - 1)) __builtin_trap();
  try {
    if (kind < 2) {
      sdlora::train::DatasetOptions o;
      auto const rows = sdlora::train::detail::read_metadata(dir / (kind == 0 ? "metadata.csv" : "metadata.jsonl"), o);
      for (auto const& [name, caption] : rows)
        if (name.size() + caption.size() > size) __builtin_trap();
    } else if (kind == 2) {
      auto const s = sdlora::train::load_checkpoint<float>((dir / "checkpoint-0").string());
      if (s.data_order.size() > size) __builtin_trap();
    } else {  // a caption file, as the dataset reads one next to its image
      std::string const caption =
          sdlora::train::detail::trim(sdlora::train::detail::read_text_file(dir / "caption.txt"));
      if (caption.size() >= size) __builtin_trap();
    }
  } catch (sdlora::Error const&) {
  }
  return 0;
}
