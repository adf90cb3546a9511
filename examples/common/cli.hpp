/// @file cli.hpp
/// @brief What every sdlora example program shares: flag-name normalisation (dashes and underscores both accepted),
/// one-line errors with a non-zero exit, and "PATH[:SCALE]" parsing.
#pragma once

#include <cstdlib>        // EXIT_FAILURE
#include <exception>      // std::exception
#include <iostream>       // std::cerr, std::istream
#include <iterator>       // std::istreambuf_iterator
#include <sstream>        // std::istringstream
#include <string>         // std::string
#include <string_view>    // std::string_view
#include <utility>        // std::pair
#include <vector>         // std::vector

#include <boost/program_options.hpp>  // boost::program_options

#include <sdlora/core/dtype.hpp>  // sdlora::DType
#include <sdlora/core/error.hpp>  // sdlora::Error

namespace sdlora::cli {

namespace po = boost::program_options;

/// argv with every long flag's name spelt with `separator` ('_' or '-'): `--max-train-steps=5` and
/// `--max_train_steps 5` both reach Boost as the same option. Values are untouched.
inline std::vector<std::string> normalize_flags(int argc, char** argv, char separator) {
  std::vector<std::string> out;
  char const other = separator == '_' ? '-' : '_';
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.size() > 2 && a[0] == '-' && a[1] == '-') {
      std::size_t const end = a.find('=');
      for (std::size_t k = 2; k < std::min(end, a.size()); ++k)
        if (a[k] == other) a[k] = separator;
    }
    out.push_back(std::move(a));
  }
  return out;
}

/// The message of a Boost.Program_Options error about `input` (a config file's text, or the arguments). Boost 1.74
/// (Debian 12's) builds it by replacing placeholders such as %value% or %original_token% with the offending text, in a
/// loop that never ends when that text holds the same placeholder: train_config_fuzz found a 171-byte config file that
/// hung sdlora-train for good while it reported the file's error. So when `input` holds a '%', the message is made
/// here from the error's type and the option's name, and what() is not called.
inline std::string error_text(po::error const& e, std::string_view input) {
  auto const* named = dynamic_cast<po::error_with_option_name const*>(&e);
  if (!named || input.find('%') == std::string_view::npos) return e.what();  // without a name: no placeholders
  char const* kind = "invalid option or value";
  if (dynamic_cast<po::unknown_option const*>(&e)) kind = "unrecognised option";
  else if (dynamic_cast<po::ambiguous_option const*>(&e)) kind = "ambiguous option";
  else if (dynamic_cast<po::multiple_occurrences const*>(&e)) kind = "option given more than once";
  else if (dynamic_cast<po::multiple_values const*>(&e)) kind = "option given more than one value";
  else if (dynamic_cast<po::required_option const*>(&e)) kind = "required option missing";
  else if (dynamic_cast<po::invalid_syntax const*>(&e)) kind = "invalid syntax";
  else if (dynamic_cast<po::validation_error const*>(&e)) kind = "invalid value for option";
  return std::string(kind) + " '" + named->get_option_name() + "'";
}

/// Parses normalised arguments into `vm`; unknown flags and bad values throw po::error.
inline po::variables_map parse(po::options_description const& options, std::vector<std::string> const& args,
                               po::positional_options_description const* positional = nullptr) {
  po::variables_map vm;
  try {
    po::command_line_parser parser(args);
    parser.options(options);
    if (positional) parser.positional(*positional);
    po::store(parser.run(), vm);
    po::notify(vm);
  } catch (po::error const& e) {
    std::string all;
    for (auto const& a : args) all += a;
    if (all.find('%') == std::string::npos) throw;
    throw po::error(error_text(e, all));  // the same type for run_main: a usage error
  }
  return vm;
}

/// Reads a config file of `name = value` lines ('#' comments, `[section]` headers as Boost defines them) from `in`
/// into `vm` against `options`; values already in `vm` (the command line's, stored first) win. Any error in the file
/// is one ConfigError naming `file`: Boost's message alone does not say which file.
inline void read_config_file(std::istream& in, std::string const& file, po::options_description const& options,
                             po::variables_map& vm) {
  std::string const text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  try {
    std::istringstream lines(text);
    po::store(po::parse_config_file(lines, options), vm);
    po::notify(vm);
  } catch (po::error const& e) {
    SDLORA_THROW(ConfigError, "--config " << file << ": " << error_text(e, text));
  }
}

/// --compute-dtype's value: f32 -> F32, bf16 -> BF16 (Context<Cpu>::compute); `device` "cuda" refuses bf16 (the CPU
/// backend's option). ConfigError names the flag and the value.
inline sdlora::DType parse_compute_dtype(std::string const& value, char const* flag, std::string const& device) {
  if (value != "f32" && value != "bf16")
    SDLORA_THROW(ConfigError, flag << " must be f32 or bf16, got '" << value << "'");
  if (value == "bf16" && device == "cuda")
    SDLORA_THROW(ConfigError, flag << " bf16 is the CPU backend's; with --device cuda leave it f32");
  return value == "bf16" ? sdlora::DType::BF16 : sdlora::DType::F32;
}

/// "path[:scale]" -> (path, scale). A trailing ":<number>" is the scale; Windows-style "C:\..." paths are not split.
inline std::pair<std::string, double> path_and_scale(std::string const& spec, double fallback = 1.0) {
  std::size_t const colon = spec.rfind(':');
  if (colon == std::string::npos || colon + 1 == spec.size() || colon < 2) return {spec, fallback};
  try {
    std::size_t used = 0;
    double const v = std::stod(spec.substr(colon + 1), &used);
    if (used == spec.size() - colon - 1) return {spec.substr(0, colon), v};
  } catch (std::exception const&) {
  }
  return {spec, fallback};
}

/// "0,0.5,1" -> {0, 0.5, 1}; ConfigError names the bad entry.
inline std::vector<double> parse_list(std::string const& text, char const* flag) {
  std::vector<double> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t const end = std::min(text.find(',', start), text.size());
    std::string const item = text.substr(start, end - start);
    try {
      std::size_t used = 0;
      out.push_back(std::stod(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (std::exception const&) {
      SDLORA_THROW(ConfigError, "--" << flag << ": '" << item << "' is not a number");
    }
    start = end + 1;
  }
  return out;
}

/// Runs `body`, turning any exception into one line on stderr and exit code 2 (usage) or 1 (everything else).
template <class F>
int run_main(char const* program, F&& body) {
  try {
    return body();
  } catch (po::error const& e) {
    std::cerr << program << ": " << e.what() << " (see --help)\n";
    return 2;
  } catch (sdlora::ConfigError const& e) {
    std::cerr << program << ": " << e.what() << "\n";
    return 2;
  } catch (std::exception const& e) {
    std::cerr << program << ": " << e.what() << "\n";
    return 1;
  }
}

}  // namespace sdlora::cli
