/// @file weights.hpp
/// @brief Filling a module tree's parameters from safetensors tensors by diffusers name, with one error that lists
/// every missing key, unexpected key and shape mismatch. Include <sdlora/models.hpp> instead.
#pragma once

#include <cstdint>      // std::uint16_t
#include <cstring>      // std::memcpy
#include <map>          // std::map
#include <set>          // std::set
#include <sstream>      // std::ostringstream
#include <string>       // std::string
#include <string_view>  // std::string_view
#include <type_traits>  // std::remove_cvref_t
#include <vector>       // std::vector

#include <sdlora/io/safetensors.hpp>      // io::SafetensorsFile
#include <sdlora/models/single_file.hpp>  // KeySource
#include <sdlora/nn/module.hpp>           // nn::Parameter::assign
#include <sdlora/nn/storage.hpp>          // nn::WeightLeaf

namespace sdlora::models {

/// Where the tensor for one parameter name comes from.
struct TensorSource {
  io::SafetensorsFile const* file = nullptr;
  KeySource source;
};
/// Parameter name (diffusers, relative to the module) -> source.
using SourceMap = std::map<std::string, TensorSource>;

/// Every tensor of `file` whose key starts with `prefix`, named by the rest of the key (optionally with `add`
/// prepended).
inline SourceMap sources_from_file(io::SafetensorsFile const& file, std::string const& prefix = "",
                                   std::string const& add = "") {
  SourceMap m;
  for (auto const& key : file.keys())
    if (key.compare(0, prefix.size(), prefix) == 0) m[add + key.substr(prefix.size())] = {&file, KeySource{key}};
  return m;
}

/// Reads one source tensor as T, applying its slice (Squeeze: drop trailing 1-extents; Third: one third of axis 0;
/// Transpose: a matrix's transpose).
template <class T>
Tensor<T, Cpu> read_source(TensorSource const& s) {
  auto t = s.file->load<T>(s.source.key);
  switch (s.source.take) {
    case KeySource::Take::Whole: return t;
    case KeySource::Take::Squeeze: {
      std::vector<Index> dims(t.shape().begin(), t.shape().end());
      while (dims.size() > 2 && dims.back() == 1) dims.pop_back();
      return std::move(t).reshaped(Shape(dims));
    }
    case KeySource::Take::Third: {
      SDLORA_EXPECTS(t.dim(0) % 3 == 0, "[load] " << s.file->path() << ": '" << s.source.key << "' of shape "
                                                  << t.shape() << " does not split in three along axis 0");
      Index const rows = t.dim(0) / 3;
      return Tensor<T, Cpu>::from_view(t.slice(rows * s.source.part, rows * (s.source.part + 1)));
    }
    case KeySource::Take::Transpose: {
      SDLORA_EXPECTS(t.rank() == 2, "[load] " << s.file->path() << ": '" << s.source.key << "' of shape " << t.shape()
                                              << " is not a matrix to transpose");
      Tensor<T, Cpu> out(Shape{t.dim(1), t.dim(0)});
      for (Index r = 0; r < t.dim(0); ++r)
        for (Index c = 0; c < t.dim(1); ++c) out.at({c, r}) = t.at({r, c});
      return out;
    }
  }
  return t;
}

/// What a load did.
struct LoadReport {
  std::size_t loaded = 0;
  std::vector<std::string> unexpected;  // sources no parameter used (when not strict about them)
};

/// Fills every parameter of `module` from `sources`. Missing parameters and shape mismatches always fail; sources no
/// parameter uses fail unless their name matches one of `ignore` (prefixes). One FormatError names them all.
/// `what` names the component in messages (e.g. "unet from /models/sd15/unet/...safetensors").
/// `weight_storage` F16 / BF16 keeps every frozen Linear and Conv2d weight in 16 bits (nn::set_weight_storage)
/// as it is read: tensor by tensor (a 16-bit file's bits are copied as they are), so the load never holds more than
/// the 16-bit model, one float tensor and the pages of the file being read.
template <class T, class Module>
LoadReport load_parameters(Module& module, SourceMap const& sources, std::string const& what,
                           std::vector<std::string> const& ignore = {}, DType weight_storage = dtype_of<T>()) {
  std::vector<std::string> missing, mismatched;
  std::set<std::string> used;
  LoadReport report;
  bool const sixteen = weight_storage == DType::F16 || weight_storage == DType::BF16;
  module.visit("", [&](std::string const& leaf_name, auto& leaf) {
    using L = std::remove_cvref_t<decltype(leaf)>;
    leaf.for_each_parameter(leaf_name, [&](std::string const& name, auto& p) {
      auto it = sources.find(name);
      if (it == sources.end()) {
        missing.push_back(name);
        return;
      }
      used.insert(name);
      TensorSource const& src = it->second;
      bool narrow = false;
      if constexpr (nn::WeightLeaf<L>) narrow = sixteen && &p == &leaf.weight && !p.trainable;
      auto mismatch = [&](Shape const& file_shape) {
        std::ostringstream os;
        os << name << " (file key '" << src.source.key << "'): expected " << p.shape() << ", file has " << file_shape;
        mismatched.push_back(os.str());
      };
      io::TensorInfo const& info = src.file->info(src.source.key);
      if (narrow && src.source.take == KeySource::Take::Whole && info.dtype == weight_storage) {
        if (!(info.shape == p.shape())) return mismatch(info.shape);
        auto bits = Tensor<std::uint16_t, Cpu>::uninitialized(info.shape);
        std::string_view const raw = src.file->bytes(src.source.key);
        if (bits.bytes() > 0) std::memcpy(bits.data(), raw.data(), bits.bytes());
        p.assign_bits(std::move(bits), weight_storage);
      } else {
        auto t = read_source<T>(src);
        if (!(t.shape() == p.shape())) return mismatch(t.shape());
        p.assign(std::move(t), narrow ? weight_storage : dtype_of<T>());
        // The float copy just freed would otherwise wait in the host block cache (up to 1 GiB of it).
        if (narrow) BackendMemory<Cpu>::release_cached();
      }
      src.file->release(src.source.key);
      ++report.loaded;
    });
  });
  for (auto const& [name, src] : sources) {
    if (used.count(name)) continue;
    bool ignored = false;
    for (auto const& prefix : ignore) ignored = ignored || name.compare(0, prefix.size(), prefix) == 0;
    if (!ignored) report.unexpected.push_back(src.source.key);
  }
  if (!missing.empty() || !mismatched.empty() || !report.unexpected.empty()) {
    std::ostringstream os;
    os << "[load] " << what << ": ";
    auto list = [&](char const* label, std::vector<std::string> const& v) {
      if (v.empty()) return;
      os << "\n  " << v.size() << " " << label << ":";
      for (std::size_t i = 0; i < v.size() && i < 20; ++i) os << "\n    " << v[i];
      if (v.size() > 20) os << "\n    ... and " << v.size() - 20 << " more";
    };
    list("missing keys", missing);
    list("shape mismatches", mismatched);
    list("unexpected keys", report.unexpected);
    throw FormatError(os.str());
  }
  return report;
}

}  // namespace sdlora::models
