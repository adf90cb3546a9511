/// @file program.hpp
/// @brief Running an example program from a test: a per-process scratch folder, the command's exit code and its
/// captured stdout / stderr.
#pragma once

#include <sys/wait.h>  // WIFEXITED, WEXITSTATUS
#include <unistd.h>    // getpid

#include <algorithm>   // std::count
#include <cstdlib>     // std::system
#include <filesystem>  // std::filesystem
#include <fstream>     // std::ifstream
#include <sstream>     // std::ostringstream
#include <string>      // std::string

#include <sdlora/train/sample_data.hpp>  // train::write_sample_data

namespace sdlora::test {

struct ProgramResult {
  int code = -1;
  std::string out, err;
};

/// A folder of its own for this test process (created empty on first use), named after `stem`.
inline std::filesystem::path scratch_dir(std::string const& stem) {
  namespace fs = std::filesystem;
  fs::path d = fs::temp_directory_path() / (stem + "_" + std::to_string(::getpid()));
  if (!fs::exists(d)) fs::create_directories(d);
  return d;
}

/// scratch_dir(stem) emptied, with procedural training samples under samples/ (`images` captioned 24 px images and
/// `scribbles` QuickDraw rows per class): the input the e2e tests give the training program.
inline std::filesystem::path sample_data_dir(std::string const& stem, int images = 4, int scribbles = 4) {
  namespace fs = std::filesystem;
  fs::path d = scratch_dir(stem);
  fs::remove_all(d);
  fs::create_directories(d);
  train::SampleDataOptions o;
  o.images = images;
  o.image_size = 24;
  o.scribbles_per_class = scribbles;
  train::write_sample_data((d / "samples").string(), o);
  return d;
}

/// The number of '\n' in `s` (a program's output lines).
inline long count_lines(std::string const& s) { return long(std::count(s.begin(), s.end(), '\n')); }

inline std::string read_bytes(std::filesystem::path const& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

/// Runs `exe args` (args already shell-quoted), capturing stdout and stderr into files under `dir`.
inline ProgramResult run_program(std::string const& exe, std::string const& args, std::filesystem::path const& dir) {
  static int n = 0;
  auto const out = dir / ("stdout" + std::to_string(n)), err = dir / ("stderr" + std::to_string(n));
  ++n;
  std::string const cmd = "'" + exe + "' " + args + " > '" + out.string() + "' 2> '" + err.string() + "'";
  int const status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_bytes(out), read_bytes(err)};
}

}  // namespace sdlora::test
