/// @file state.hpp
/// @brief TrainingState: everything a run needs to resume exactly (trainable parameters, optimizer state, counters,
/// RNG states, data order, settings), saved atomically as a directory `checkpoint-STEP/`, plus finding the latest
/// complete checkpoint and pruning old ones. Include <sdlora/train.hpp> instead.
///
/// Layout of `checkpoint-STEP/`:
///   parameters.safetensors   trainable parameters by their dotted names
///   optimizer.safetensors    optimizer state (see optimizer.hpp)
///   state.json               {"format": "sdlora-training-state", "version": 1, counters, rng, data order, settings}
/// Atomicity: every file is written under a temporary name, fsynced and renamed inside `checkpoint-STEP.tmp/`, which
/// is fsynced and renamed to `checkpoint-STEP/` as a whole. A crash leaves at most a `.tmp` directory, which readers
/// ignore and keep_last() removes.
#pragma once

#include <fcntl.h>   // open, O_RDONLY, O_DIRECTORY
#include <unistd.h>  // fsync, close

#include <algorithm>   // std::sort
#include <cerrno>      // errno
#include <cstdint>     // std::int64_t, std::uint64_t
#include <cstring>     // std::strerror
#include <filesystem>  // std::filesystem
#include <fstream>     // std::ofstream, std::ifstream
#include <iterator>    // std::istreambuf_iterator
#include <map>         // std::map
#include <optional>    // std::optional
#include <string>      // std::string
#include <type_traits>  // std::is_same_v
#include <utility>     // std::pair
#include <vector>      // std::vector

#include <nlohmann/json.hpp>  // nlohmann::json

#include <sdlora/core/error.hpp>       // IoError, FormatError
#include <sdlora/core/json.hpp>        // check_json_depth
#include <sdlora/core/tensor.hpp>      // Tensor
#include <sdlora/io/safetensors.hpp>   // io::SafetensorsWriter, io::SafetensorsFile
#include <sdlora/train/optimizer.hpp>  // OptimizerState, save_optimizer_state, load_optimizer_state
#include <sdlora/train/param_ref.hpp>  // ParamRef

namespace sdlora::train {

inline constexpr char const* kStateFormat = "sdlora-training-state";
inline constexpr int kStateVersion = 1;

/// What a resumed run needs to continue exactly where it stopped.
template <class T = float>
struct TrainingState {
  std::int64_t global_step = 0;                      // optimizer steps done
  std::int64_t epoch = 0;                            // the epoch in progress
  std::int64_t lr_schedule_step = 0;                 // LrSchedule::step()
  std::map<std::string, Tensor<T, Cpu>> parameters;  // trainable parameters by dotted name
  OptimizerState<T> optimizer;
  std::map<std::string, std::vector<std::uint64_t>> rng;  // generator states, opaque to this file
  std::vector<std::int64_t> data_order;                   // the epoch's permutation of sample indices
  std::int64_t data_position = 0;                         // next index into data_order
  nlohmann::json settings = nlohmann::json::object();     // the run's settings (for humans and for checks)
};

/// Copies the values of parameters into a name -> tensor map (for TrainingState::parameters), on the host whatever
/// the parameters' backend.
template <class T, class B = Cpu>
std::map<std::string, Tensor<T, Cpu>> capture_parameters(std::vector<ParamRef<T, B>> const& params) {
  std::map<std::string, Tensor<T, Cpu>> out;
  for (auto const& p : params) {
    if constexpr (std::is_same_v<B, Cpu>) out.emplace(p.name, p.param->value);
    else out.emplace(p.name, to_cpu<T, B>(p.param->value.view()));
  }
  return out;
}

/// Writes saved values back into parameters (uploaded to their backend); FormatError names a missing parameter or a shape mismatch.
template <class T, class B = Cpu>
void restore_parameters(std::vector<ParamRef<T, B>> const& params, std::map<std::string, Tensor<T, Cpu>> const& saved) {
  for (auto const& p : params) {
    auto it = saved.find(p.name);
    if (it == saved.end()) SDLORA_THROW(FormatError, "[training_state] checkpoint has no parameter '" << p.name << "'");
    if (!(it->second.shape() == p.param->shape()))
      SDLORA_THROW(FormatError, "[training_state] parameter '" << p.name << "' is " << it->second.shape()
                                                               << " in the checkpoint but " << p.param->shape()
                                                               << " in the model");
    p.param->value = to_backend<B>(it->second);
  }
}

namespace detail {
namespace fs = std::filesystem;

inline void fsync_path(fs::path const& p, bool directory) {
  int const fd = ::open(p.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) SDLORA_THROW(IoError, "[training_state] cannot open " << p << " to sync: " << std::strerror(errno));
  int const rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) SDLORA_THROW(IoError, "[training_state] fsync of " << p << " failed: " << std::strerror(errno));
}

/// The step of a directory named exactly "checkpoint-<digits>", or nothing.
inline std::optional<std::int64_t> checkpoint_step(std::string const& name) {
  std::string const prefix = "checkpoint-";
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  std::string const digits = name.substr(prefix.size());
  if (digits.size() > 18) return std::nullopt;
  for (char c : digits)
    if (c < '0' || c > '9') return std::nullopt;
  return std::stoll(digits);
}

/// A directory is a complete sdlora checkpoint when its state.json names our format (other tools, e.g.
/// accelerate, also write checkpoint-N folders).
inline bool is_complete(fs::path const& dir) {
  std::ifstream in(dir / "state.json");
  if (!in) return false;
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  // Not j.value("format", ""): it throws nlohmann's type_error when "format" holds a number (train_files_fuzz).
  return !j.is_discarded() && j.is_object() && j.contains("format") && j["format"].is_string() &&
         j["format"].get<std::string>() == kStateFormat &&
         fs::exists(dir / "parameters.safetensors") && fs::exists(dir / "optimizer.safetensors");
}

/// Complete checkpoints under output_dir as (step, path), oldest first.
inline std::vector<std::pair<std::int64_t, fs::path>> complete_checkpoints(fs::path const& output_dir) {
  std::vector<std::pair<std::int64_t, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(output_dir, ec)) return out;
  for (auto const& e : fs::directory_iterator(output_dir)) {
    if (!e.is_directory()) continue;
    auto const step = checkpoint_step(e.path().filename().string());
    if (step && is_complete(e.path())) out.emplace_back(*step, e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}
}  // namespace detail

/// Writes `bytes` to `path` through `path`.tmp, fsync and rename: a crash or a failed write (disk full,
/// RLIMIT_FSIZE) leaves the old file or none under `path`, never a partial one. IoError names the file.
inline void write_file_atomic(std::filesystem::path const& path, std::string const& bytes,
                              char const* op = "[training_state]") {
  std::filesystem::path const tmp = path.string() + ".tmp";
  std::error_code ec;
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) SDLORA_THROW(IoError, op << " cannot write " << tmp << ": " << std::strerror(errno));
    out.write(bytes.data(), std::streamsize(bytes.size()));
    out.flush();
    if (!out) {
      int const err = errno;
      out.close();
      std::filesystem::remove(tmp, ec);
      SDLORA_THROW(IoError, op << " cannot write " << path << ": " << std::strerror(err));
    }
  }
  detail::fsync_path(tmp, false);
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    SDLORA_THROW(IoError, op << " cannot rename " << tmp << " to " << path << ": " << ec.message());
  }
}

/// output_dir/checkpoint-STEP
inline std::string checkpoint_path(std::string const& output_dir, std::int64_t step) {
  return (std::filesystem::path(output_dir) / ("checkpoint-" + std::to_string(step))).string();
}

/// Saves `state` as output_dir/checkpoint-<global_step>/ atomically (see the file comment); replaces an existing
/// checkpoint of the same step. Returns the checkpoint's path.
template <class T>
std::string save_checkpoint(std::string const& output_dir, TrainingState<T> const& state) {
  namespace fs = std::filesystem;
  fs::path const final_dir = checkpoint_path(output_dir, state.global_step);
  fs::path const tmp_dir = final_dir.string() + ".tmp";
  std::error_code ec;
  fs::create_directories(output_dir, ec);
  if (ec) SDLORA_THROW(IoError, "[training_state] cannot create " << output_dir << ": " << ec.message());
  fs::remove_all(tmp_dir, ec);  // a crashed earlier attempt
  fs::create_directory(tmp_dir, ec);
  if (ec) SDLORA_THROW(IoError, "[training_state] cannot create " << tmp_dir << ": " << ec.message());

  try {
    io::SafetensorsWriter params;
    for (auto const& [name, t] : state.parameters) params.add(name, t);
    params.set_metadata("format", kStateFormat);
    params.write((tmp_dir / "parameters.safetensors").string());
    save_optimizer_state(state.optimizer, (tmp_dir / "optimizer.safetensors").string());

    nlohmann::json j;
    j["format"] = kStateFormat;
    j["version"] = kStateVersion;
    j["global_step"] = state.global_step;
    j["epoch"] = state.epoch;
    j["lr_schedule_step"] = state.lr_schedule_step;
    j["data_position"] = state.data_position;
    j["data_order"] = state.data_order;
    j["rng"] = state.rng;
    j["settings"] = state.settings;
    write_file_atomic(tmp_dir / "state.json", j.dump(1));
    detail::fsync_path(tmp_dir, true);
  } catch (...) {  // a failed write (full disk) leaves no half checkpoint taking space
    fs::remove_all(tmp_dir, ec);
    throw;
  }

  if (fs::exists(final_dir)) {  // same step saved again: move the old one aside first
    fs::path const old_dir = final_dir.string() + ".old";
    fs::remove_all(old_dir, ec);
    fs::rename(final_dir, old_dir, ec);
    if (ec) SDLORA_THROW(IoError, "[training_state] cannot move " << final_dir << " aside: " << ec.message());
    fs::rename(tmp_dir, final_dir, ec);
    if (ec) SDLORA_THROW(IoError, "[training_state] cannot rename " << tmp_dir << ": " << ec.message());
    fs::remove_all(old_dir, ec);
  } else {
    fs::rename(tmp_dir, final_dir, ec);
    if (ec) SDLORA_THROW(IoError, "[training_state] cannot rename " << tmp_dir << ": " << ec.message());
  }
  detail::fsync_path(output_dir, true);
  return final_dir.string();
}

/// Loads one checkpoint directory; FormatError when it is not a complete sdlora checkpoint.
template <class T = float>
TrainingState<T> load_checkpoint(std::string const& dir) {
  namespace fs = std::filesystem;
  if (!detail::is_complete(dir))
    SDLORA_THROW(FormatError, "[training_state] " << dir
                                                  << " is not a complete sdlora checkpoint (needs state.json "
                                                     "with format '"
                                                  << kStateFormat
                                                  << "', parameters.safetensors and optimizer.safetensors)");
  std::ifstream in(fs::path(dir) / "state.json", std::ios::binary);
  std::string const text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  check_json_depth(text, "[training_state] " + dir + "/state.json");
  nlohmann::json const j = nlohmann::json::parse(text);
  std::string const version = j.contains("version") ? j.at("version").dump() : "none";  // any JSON type
  if (version != std::to_string(kStateVersion))
    SDLORA_THROW(FormatError, "[training_state] " << dir << ": state version " << version
                                                  << ", this build reads " << kStateVersion);
  // nlohmann's get<> of an integer type from a float out of range is undefined behaviour (train_files_fuzz: 8.9e24
  // in an rng list): every integer field must hold integers, at any depth (check_json_depth bounds the recursion).
  auto const integers = [](auto const& self, nlohmann::json const& v) -> bool {
    if (!v.is_array() && !v.is_object()) return v.is_number_integer();
    for (auto const& e : v)
      if (!self(self, e)) return false;
    return true;
  };
  for (char const* key : {"global_step", "epoch", "lr_schedule_step", "data_position", "data_order", "rng"})
    if (j.contains(key) && !integers(integers, j.at(key)))
      SDLORA_THROW(FormatError, "[training_state] " << dir << "/state.json: '" << key << "' must hold integers");
  TrainingState<T> s;
  try {
    s.global_step = j.at("global_step").get<std::int64_t>();
    s.epoch = j.at("epoch").get<std::int64_t>();
    s.lr_schedule_step = j.at("lr_schedule_step").get<std::int64_t>();
    s.data_position = j.at("data_position").get<std::int64_t>();
    s.data_order = j.at("data_order").get<std::vector<std::int64_t>>();
    s.rng = j.at("rng").get<std::map<std::string, std::vector<std::uint64_t>>>();
    s.settings = j.at("settings");
  } catch (nlohmann::json::exception const& e) {
    SDLORA_THROW(FormatError, "[training_state] " << dir << "/state.json: " << e.what());
  }
  io::SafetensorsFile const params((fs::path(dir) / "parameters.safetensors").string());
  for (auto const& key : params.keys()) s.parameters.emplace(key, params.template load<T>(key));
  s.optimizer = load_optimizer_state<T>((fs::path(dir) / "optimizer.safetensors").string());
  return s;
}

/// The path of the highest-step complete checkpoint under output_dir (half-written `.tmp` ones are ignored).
inline std::optional<std::string> latest_checkpoint(std::string const& output_dir) {
  auto const all = detail::complete_checkpoints(output_dir);
  if (all.empty()) return std::nullopt;
  return all.back().second.string();
}

/// The state of the latest complete checkpoint, or nothing when there is none.
template <class T = float>
std::optional<TrainingState<T>> load_latest(std::string const& output_dir) {
  auto const path = latest_checkpoint(output_dir);
  if (!path) return std::nullopt;
  return load_checkpoint<T>(*path);
}

/// Deletes all but the `keep` newest complete checkpoints, and leftover `.tmp`/`.old` directories of steps older
/// than the newest complete one. Returns the removed paths.
inline std::vector<std::string> keep_last(std::string const& output_dir, std::size_t keep) {
  namespace fs = std::filesystem;
  auto const all = detail::complete_checkpoints(output_dir);
  std::vector<std::string> removed;
  for (std::size_t i = 0; i + keep < all.size(); ++i) {
    fs::remove_all(all[i].second);
    removed.push_back(all[i].second.string());
  }
  if (!all.empty()) {
    std::int64_t const newest = all.back().first;
    std::vector<fs::path> stale;  // collected first: removing while iterating a directory is unspecified
    for (auto const& e : fs::directory_iterator(output_dir)) {
      std::string const name = e.path().filename().string();
      for (std::string const suffix : {".tmp", ".old"}) {
        if (!e.is_directory() || name.size() <= suffix.size() ||
            name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
          continue;
        auto const step = detail::checkpoint_step(name.substr(0, name.size() - suffix.size()));
        if (step && *step < newest) stale.push_back(e.path());
      }
    }
    for (auto const& p : stale) {
      fs::remove_all(p);
      removed.push_back(p.string());
    }
  }
  return removed;
}

}  // namespace sdlora::train
