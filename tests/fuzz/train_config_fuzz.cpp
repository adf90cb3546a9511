/// @file train_config_fuzz.cpp
/// @brief libFuzzer target for sdlora-train's `--config` file: any bytes read as a config file against the program's
/// own options (examples/common/train_options.hpp, through cli::read_config_file as the program reads it) either set
/// flags or raise one sdlora::Error naming the file; never another exception or a crash. Boost.Program_Options'
/// parser is the system library's (not instrumented): the campaign checks what sdlora hands it and gets back.
#include <cstddef>  // std::size_t
#include <cstdint>  // std::uint8_t
#include <sstream>  // std::istringstream
#include <string>   // std::string

#include "../../examples/common/cli.hpp"            // cli::read_config_file
#include "../../examples/common/train_options.hpp"  // cli::TrainArgs, cli::train_options

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  // Built once: describing the ~60 options (help text, defaults) costs more than parsing most inputs. Parsing
  // stores into `args`; each input starts from an empty variables_map, so nothing carries over but those values.
  static sdlora::cli::TrainArgs args;
  static auto const options = sdlora::cli::train_options(args);
  boost::program_options::variables_map vm;
  std::istringstream in(std::string(reinterpret_cast<char const*>(data), size));
  try {
    sdlora::cli::read_config_file(in, "fuzz.cfg", options, vm);
  } catch (sdlora::Error const& e) {
    if (std::string(e.what()).find("fuzz.cfg") == std::string::npos) __builtin_trap();  // the file is named
  }
  return 0;
}
