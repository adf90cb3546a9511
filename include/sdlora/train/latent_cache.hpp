/// @file latent_cache.hpp
/// @brief Content hashing (64-bit FNV-1a) and an on-disk cache of VAE latents: one `.safetensors` file per dataset
/// whose tensors are named by the 16-hex-digit key and whose metadata holds the VAE identity and an index
/// (key -> example source). Include <sdlora/train.hpp> instead.
///
/// A key hashes everything the latent depends on: the source bytes (image file or npy row), the transform settings
/// (resolution, bucket, crop, flip, filter, inversion; `Dataset::content_hash`) and the VAE identity string
/// (`latent_key`). A change in any of them gives another key, so a stale entry is never found: it is a miss and the
/// trainer encodes and stores again. Opening a cache whose file was written for another VAE identity drops all of
/// its entries (they could never be hit); `flush(true)` also drops the entries this session neither read nor wrote.
#pragma once

#include <cstdint>                    // std::uint64_t
#include <cstdio>                     // std::snprintf
#include <filesystem>                 // std::filesystem::exists, create_directories
#include <map>                        // std::map
#include <nlohmann/json.hpp>          // nlohmann::json (the index in the file's metadata)
#include <optional>                   // std::optional
#include <sdlora/core/error.hpp>      // FormatError, SDLORA_THROW
#include <sdlora/core/tensor.hpp>     // Tensor
#include <sdlora/io/safetensors.hpp>  // io::SafetensorsFile, io::SafetensorsWriter
#include <set>                        // std::set
#include <string>                     // std::string
#include <string_view>                // std::string_view
#include <utility>                    // std::move

namespace sdlora::train {

/// 64-bit FNV-1a (offset basis 0xcbf29ce484222325, prime 0x100000001b3), byte by byte, fed incrementally.
/// Integers are fed as 8 little-endian bytes and strings with their length first, so that ("ab", "c") and
/// ("a", "bc") hash differently.
class Fnv1a64 {
 public:
  static constexpr std::uint64_t kOffsetBasis = 0xcbf29ce484222325ull;
  static constexpr std::uint64_t kPrime = 0x100000001b3ull;

  /// Raw bytes, without a length prefix (Fnv1a64().bytes("a").digest() is the published FNV-1a value of "a").
  Fnv1a64& bytes(void const* data, std::size_t n) {
    auto const* p = static_cast<unsigned char const*>(data);
    std::uint64_t h = h_;
    for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * kPrime;
    h_ = h;
    return *this;
  }
  Fnv1a64& bytes(std::string_view s) { return bytes(s.data(), s.size()); }
  /// A length-prefixed string.
  Fnv1a64& text(std::string_view s) {
    integer(std::uint64_t(s.size()));
    return bytes(s);
  }
  Fnv1a64& integer(std::uint64_t v) {
    unsigned char b[8];
    for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(v >> (8 * i));
    return bytes(b, 8);
  }
  Fnv1a64& integer(std::int64_t v) { return integer(std::uint64_t(v)); }
  std::uint64_t digest() const { return h_; }

 private:
  std::uint64_t h_ = kOffsetBasis;
};

/// FNV-1a of a byte string.
inline std::uint64_t fnv1a64(std::string_view s) { return Fnv1a64().bytes(s).digest(); }

/// The cache key of an example's latent: its content hash (Dataset::content_hash) combined with the VAE identity
/// (e.g. the checkpoint path + file size + dtype, or a hash of the VAE weights).
inline std::uint64_t latent_key(std::uint64_t content_hash, std::string_view vae_identity) {
  return Fnv1a64().text("sdlora.latent.v1").integer(content_hash).text(vae_identity).digest();
}

/// A key as the 16 lowercase hex digits used for tensor names.
inline std::string key_hex(std::uint64_t key) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(key));
  return buf;
}

/// Latents on disk: lookup / store by key, written to `path` by flush() (whole file via a temporary and a rename).
/// Not thread-safe: one trainer thread uses it.
class LatentCache {
 public:
  /// Opens `path` if it exists. A file written for another `vae_identity` is treated as empty (its entries are
  /// dropped at the next flush); a file that is not a latent cache is a FormatError naming it.
  LatentCache(std::string path, std::string vae_identity) : path_(std::move(path)), vae_(std::move(vae_identity)) {
    if (!std::filesystem::exists(path_)) return;
    io::SafetensorsFile file(path_);
    auto const& meta = file.metadata();
    auto const format = meta.find("format");
    if (format == meta.end() || format->second != kFormat)
      SDLORA_THROW(FormatError, "[latent_cache] " << path_ << " is not an sdlora latent cache (metadata 'format' is '"
                                                  << (format == meta.end() ? std::string() : format->second) << "')");
    auto const vae = meta.find("vae");
    if (vae == meta.end() || vae->second != vae_) {
      invalidated_ = file.size();
      dirty_ = true;  // the next flush rewrites the file without the stale entries
      return;
    }
    auto const index = meta.find("index");
    if (index != meta.end()) {
      nlohmann::json const j = nlohmann::json::parse(index->second, nullptr, false);
      if (j.is_object())
        for (auto const& [k, v] : j.items())
          if (v.is_string()) sources_[k] = v.get<std::string>();
    }
    file_.emplace(std::move(file));
  }
  LatentCache(LatentCache const&) = delete;
  LatentCache& operator=(LatentCache const&) = delete;
  /// Flushes pending entries; errors are swallowed here (call flush() to see them).
  ~LatentCache() {
    try {
      if (dirty_) flush();
    } catch (...) {
    }
  }

  std::string const& path() const { return path_; }
  std::string const& vae_identity() const { return vae_; }

  bool contains(std::uint64_t key) const {
    std::string const name = key_hex(key);
    return added_.count(name) || (file_ && file_->contains(name));
  }
  /// The latent stored under `key`, or nothing (a miss).
  std::optional<Tensor<float, Cpu>> lookup(std::uint64_t key) {
    std::string const name = key_hex(key);
    if (auto it = added_.find(name); it != added_.end()) {
      ++hits_;
      return it->second;
    }
    if (file_ && file_->contains(name)) {
      ++hits_;
      used_.insert(name);
      return file_->load<float>(name);
    }
    ++misses_;
    return std::nullopt;
  }
  /// Stores (or replaces) the latent of `key`; `source` ("path" or "file.npy#17") goes into the index.
  void store(std::uint64_t key, Tensor<float, Cpu> latent, std::string source = {}) {
    SDLORA_EXPECTS(latent.numel() > 0, "[latent_cache] refusing to store an empty latent for " << source);
    std::string const name = key_hex(key);
    added_[name] = std::move(latent);
    sources_[name] = std::move(source);
    dirty_ = true;
  }

  /// Writes every entry (the file's and the new ones) to `path()`; with `drop_untouched`, only those looked up or
  /// stored since the cache was opened. Creates the parent directory.
  void flush(bool drop_untouched = false) {
    if (!dirty_ && !drop_untouched) return;
    io::SafetensorsWriter w;
    nlohmann::json index = nlohmann::json::object();
    if (file_)
      for (auto const& name : file_->keys()) {
        if (added_.count(name) || (drop_untouched && !used_.count(name))) continue;
        w.add(name, file_->load<float>(name));
        index[name] = sources_.count(name) ? sources_.at(name) : std::string();
      }
    for (auto const& [name, t] : added_) {
      w.add(name, t);
      index[name] = sources_.count(name) ? sources_.at(name) : std::string();
    }
    w.set_metadata("format", kFormat);
    w.set_metadata("vae", vae_);
    w.set_metadata("index", index.dump());
    std::filesystem::path const parent = std::filesystem::path(path_).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent);
    w.write(path_);  // a temporary file renamed over the old one: the mapping of file_ stays valid until reset
    file_.emplace(path_);
    added_.clear();
    used_.clear();
    dirty_ = false;
  }

  /// Entries currently available (file + pending).
  std::size_t size() const {
    std::size_t n = added_.size();
    if (file_)
      for (auto const& name : file_->keys()) n += added_.count(name) ? 0 : 1;
    return n;
  }
  std::size_t hits() const { return hits_; }
  std::size_t misses() const { return misses_; }
  /// Entries dropped at open because the file was written for another VAE identity.
  std::size_t invalidated() const { return invalidated_; }

 private:
  static constexpr char const* kFormat = "sdlora.latent_cache.v1";
  std::string path_;
  std::string vae_;
  std::optional<io::SafetensorsFile> file_;
  std::map<std::string, Tensor<float, Cpu>> added_;  // (C, h, w) each, not yet on disk
  std::map<std::string, std::string> sources_;       // key -> example source
  std::set<std::string> used_;                       // file entries looked up this session
  std::size_t hits_ = 0, misses_ = 0, invalidated_ = 0;
  bool dirty_ = false;
};

}  // namespace sdlora::train
