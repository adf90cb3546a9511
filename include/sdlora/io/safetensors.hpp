/// @file safetensors.hpp
/// @brief Reading and writing `.safetensors` files. Reading memory-maps the file, validates the whole header once
/// and converts tensors lazily, one key at a time, to the requested scalar type. Writing is atomic (temporary
/// file, fsync, rename). Include <sdlora/sdlora.hpp> instead.
///
/// Format: 8-byte little-endian header length N, N bytes of JSON {"key": {"dtype", "shape", "data_offsets"}, ...,
/// "__metadata__": {string: string}}, then the data area. Offsets are relative to the data area.
#pragma once

#include <fcntl.h>     // open
#include <sys/mman.h>  // mmap, munmap
#include <sys/stat.h>  // fstat
#include <unistd.h>    // close, fsync

#include <algorithm>    // std::sort
#include <cstdint>      // std::uint64_t
#include <cstdio>       // std::rename, std::remove
#include <cstring>      // std::memcpy, std::strerror
#include <fstream>      // std::ofstream
#include <map>          // std::map
#include <memory>       // std::shared_ptr
#include <string>       // std::string
#include <string_view>  // std::string_view
#include <utility>      // std::pair
#include <vector>       // std::vector

#include <nlohmann/json.hpp>  // nlohmann::json

#include <sdlora/core/dtype.hpp>   // DType, half, bfloat16
#include <sdlora/core/error.hpp>   // FormatError, IoError
#include <sdlora/core/tensor.hpp>  // Tensor

namespace sdlora::io {

/// Where one tensor lies in the data area, and what it is.
struct TensorInfo {
  std::string key;
  DType dtype;
  Shape shape;
  std::uint64_t begin;  // byte offset in the data area
  std::uint64_t end;    // one past the last byte
};

inline constexpr std::uint64_t kMaxHeaderBytes = 100ull << 20;  // 100 MB, the limit of the reference reader

namespace detail {
inline DType parse_dtype(std::string const& s, std::string const& file, std::string const& key) {
  for (DType d : {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32, DType::I16, DType::I8,
                  DType::U8, DType::BOOL})
    if (s == dtype_name(d)) return d;
  SDLORA_THROW(FormatError, "[safetensors] " << file << ": tensor '" << key << "' has unknown dtype '" << s << "'");
}

template <class T>
T read_element(unsigned char const* p, DType d) {
  auto load = [&](auto tag) {
    decltype(tag) v;
    std::memcpy(&v, p, sizeof v);
    return v;
  };
  switch (d) {
    case DType::F64: return from_scalar<T>(load(double{}));
    case DType::F32: return from_scalar<T>(load(float{}));
    case DType::F16: return from_scalar<T>(half::to_float(load(std::uint16_t{})));
    case DType::BF16: return from_scalar<T>(float(bfloat16::from_bits(load(std::uint16_t{}))));
    case DType::I64: return from_scalar<T>(load(std::int64_t{}));
    case DType::I32: return from_scalar<T>(load(std::int32_t{}));
    case DType::I16: return from_scalar<T>(load(std::int16_t{}));
    case DType::I8: return from_scalar<T>(load(std::int8_t{}));
    case DType::U8: return from_scalar<T>(load(std::uint8_t{}));
    case DType::BOOL: return from_scalar<T>(*p != 0);
  }
  return T{};
}

/// The memory-mapped bytes of a file; unmapped when the last reader is gone.
class Mapping {
 public:
  explicit Mapping(std::string const& path) {
    int const fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) SDLORA_THROW(IoError, "[safetensors] cannot open " << path << ": " << std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      SDLORA_THROW(IoError, "[safetensors] cannot stat " << path << ": " << std::strerror(errno));
    }
    size_ = std::size_t(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        ::close(fd);
        SDLORA_THROW(IoError, "[safetensors] cannot map " << path << ": " << std::strerror(errno));
      }
      data_ = static_cast<unsigned char const*>(p);
    }
    ::close(fd);
  }
  ~Mapping() {
    if (data_) ::munmap(const_cast<unsigned char*>(data_), size_);
  }
  Mapping(Mapping const&) = delete;
  Mapping& operator=(Mapping const&) = delete;
  unsigned char const* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  unsigned char const* data_ = nullptr;
  std::size_t size_ = 0;
};
}  // namespace detail

/// A validated, memory-mapped safetensors file. Cheap to copy (shares the mapping).
class SafetensorsFile {
 public:
  /// Maps and validates `path`; throws IoError (cannot read) or FormatError naming the file and the key.
  explicit SafetensorsFile(std::string path) : path_(std::move(path)), map_(std::make_shared<detail::Mapping>(path_)) {
    parse();
  }

  std::string const& path() const { return path_; }
  /// Keys in data-offset order.
  std::vector<std::string> keys() const {
    std::vector<std::string> k;
    for (auto const& t : tensors_) k.push_back(t.key);
    return k;
  }
  std::size_t size() const { return tensors_.size(); }
  bool contains(std::string const& key) const { return index_.count(key) != 0; }
  TensorInfo const& info(std::string const& key) const {
    auto it = index_.find(key);
    if (it == index_.end()) SDLORA_THROW(FormatError, "[safetensors] " << path_ << ": no tensor '" << key << "'");
    return tensors_[it->second];
  }
  std::vector<TensorInfo> const& tensors() const { return tensors_; }
  std::map<std::string, std::string> const& metadata() const { return metadata_; }

  /// The raw bytes of one tensor (little-endian, as stored).
  std::string_view bytes(std::string const& key) const {
    TensorInfo const& t = info(key);
    return {reinterpret_cast<char const*>(data_begin() + t.begin), std::size_t(t.end - t.begin)};
  }

  /// Reads one tensor converted to T (float/double/half/bfloat16/integers; 16-bit floats round to nearest even).
  template <class T>
  Tensor<T, Cpu> load(std::string const& key) const {
    TensorInfo const& t = info(key);
    auto out = Tensor<T, Cpu>::uninitialized(t.shape);
    unsigned char const* p = data_begin() + t.begin;
    if (t.dtype == dtype_of<T>()) {
      std::memcpy(out.data(), p, out.bytes());
    } else {
      int const size = dtype_size(t.dtype);
      for (Index i = 0; i < out.numel(); ++i) out(i) = detail::read_element<T>(p + i * size, t.dtype);
    }
    return out;
  }
  /// Reads one tensor and checks its shape: a ShapeError names the file, key, expected and actual shape.
  template <class T>
  Tensor<T, Cpu> load(std::string const& key, Shape const& expected) const {
    TensorInfo const& t = info(key);
    if (!(t.shape == expected))
      SDLORA_THROW(ShapeError, "[safetensors] " << path_ << ": tensor '" << key << "' has shape " << t.shape
                                                << ", expected " << expected);
    return load<T>(key);
  }

 private:
  unsigned char const* data_begin() const { return map_->data() + 8 + header_size_; }

  void parse() {
    std::size_t const file_size = map_->size();
    if (file_size < 8)
      SDLORA_THROW(FormatError, "[safetensors] " << path_ << ": file of " << file_size
                                                 << " bytes is too short for the 8-byte header length");
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | map_->data()[i];
    if (n > kMaxHeaderBytes)
      SDLORA_THROW(FormatError, "[safetensors] " << path_ << ": header length " << n << " exceeds the 100 MB limit");
    if (n > file_size - 8)
      SDLORA_THROW(FormatError, "[safetensors] " << path_ << ": header length " << n << " is larger than the file ("
                                                 << file_size << " bytes)");
    header_size_ = n;
    std::uint64_t const data_size = file_size - 8 - n;
    char const* h = reinterpret_cast<char const*>(map_->data() + 8);
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(h, h + n);
    } catch (nlohmann::json::exception const& e) {
      SDLORA_THROW(FormatError, "[safetensors] " << path_ << ": header is not valid JSON: " << e.what());
    }
    if (!header.is_object())
      SDLORA_THROW(FormatError, "[safetensors] " << path_ << ": header is not a JSON object");
    // Duplicate keys: nlohmann keeps the last one silently, so count keys in the raw text against the object.
    check_duplicates(std::string_view(h, n), header.size());

    for (auto const& [key, value] : header.items()) {
      if (key == "__metadata__") {
        if (!value.is_object())
          SDLORA_THROW(FormatError, "[safetensors] " << path_ << ": __metadata__ is not an object");
        for (auto const& [mk, mv] : value.items()) {
          if (!mv.is_string())
            SDLORA_THROW(FormatError, "[safetensors] " << path_ << ": metadata '" << mk << "' is not a string");
          metadata_[mk] = mv.get<std::string>();
        }
        continue;
      }
      tensors_.push_back(parse_entry(key, value, data_size));
    }
    std::sort(tensors_.begin(), tensors_.end(), [](auto const& a, auto const& b) { return a.begin < b.begin; });
    std::uint64_t expected = 0;
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      TensorInfo const& t = tensors_[i];
      if (t.begin < expected)
        SDLORA_THROW(FormatError, "[safetensors] " << path_ << ": tensor '" << t.key << "' [" << t.begin << ", "
                                                   << t.end << ") overlaps '" << tensors_[i - 1].key << "'");
      if (t.begin > expected)
        SDLORA_THROW(FormatError, "[safetensors] " << path_ << ": gap before tensor '" << t.key << "' (starts at "
                                                   << t.begin << ", previous data ends at " << expected
                                                   << "): spans must be contiguous");
      expected = t.end;
      index_[t.key] = i;
    }
    if (expected != data_size)
      SDLORA_THROW(FormatError, "[safetensors] " << path_ << ": tensors cover " << expected
                                                 << " bytes but the data area holds " << data_size);
  }

  TensorInfo parse_entry(std::string const& key, nlohmann::json const& value, std::uint64_t data_size) const {
    auto fail = [&](auto const& what) {
      SDLORA_THROW(FormatError, "[safetensors] " << path_ << ": tensor '" << key << "': " << what);
    };
    if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") || !value.contains("data_offsets"))
      fail("entry needs dtype, shape and data_offsets");
    if (!value["dtype"].is_string()) fail("dtype is not a string");
    TensorInfo t;
    t.key = key;
    t.dtype = detail::parse_dtype(value["dtype"].get<std::string>(), path_, key);
    auto const& shape = value["shape"];
    if (!shape.is_array() || shape.size() > std::size_t(kMaxRank)) fail("shape is not an array of rank <= 6");
    std::vector<Index> dims;
    std::uint64_t count = 1;
    for (auto const& d : shape) {
      if (!d.is_number_unsigned()) fail("shape holds a value that is not a non-negative integer");
      std::uint64_t const e = d.get<std::uint64_t>();
      if (e > (1ull << 40) || (e && count > (1ull << 50) / e)) fail("shape is absurdly large");
      count *= e;
      dims.push_back(Index(e));
    }
    t.shape = Shape(dims);
    auto const& off = value["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail("data_offsets is not [begin, end]");
    t.begin = off[0].get<std::uint64_t>();
    t.end = off[1].get<std::uint64_t>();
    if (t.end < t.begin) fail("data_offsets end before they begin");
    if (t.end > data_size) {
      std::ostringstream os;
      os << "data_offsets [" << t.begin << ", " << t.end << ") lie outside the data area of " << data_size
         << " bytes";
      fail(os.str());
    }
    std::uint64_t const expected = count * std::uint64_t(dtype_size(t.dtype));
    if (t.end - t.begin != expected) {
      std::ostringstream os;
      os << "byte size " << (t.end - t.begin) << " does not match shape " << t.shape << " x "
         << dtype_name(t.dtype) << " = " << expected << " bytes";
      fail(os.str());
    }
    return t;
  }

  // Counts the top-level keys of the JSON object text and compares with the parsed object's size.
  void check_duplicates(std::string_view text, std::size_t parsed) const {
    std::vector<std::string> seen;
    int depth = 0;
    bool in_string = false, expect_key = false;
    std::string current;
    for (std::size_t i = 0; i < text.size(); ++i) {
      char const c = text[i];
      if (in_string) {
        if (c == '\\' && i + 1 < text.size()) {
          if (depth == 1 && expect_key) current += text.substr(i, 2);
          ++i;
        } else if (c == '"') {
          in_string = false;
          if (depth == 1 && expect_key) {
            seen.push_back(current);
            expect_key = false;
          }
        } else if (depth == 1 && expect_key) {
          current += c;
        }
        continue;
      }
      if (c == '"') {
        in_string = true;
        current.clear();
      } else if (c == '{' || c == '[') {
        ++depth;
        if (depth == 1) expect_key = true;
      } else if (c == '}' || c == ']') {
        --depth;
      } else if (c == ',' && depth == 1) {
        expect_key = true;
      }
    }
    if (seen.size() != parsed) {
      std::sort(seen.begin(), seen.end());
      auto dup = std::adjacent_find(seen.begin(), seen.end());
      SDLORA_THROW(FormatError, "[safetensors] " << path_ << ": duplicate tensor name '"
                                                 << (dup != seen.end() ? *dup : std::string("?")) << "'");
    }
  }

  std::string path_;
  std::shared_ptr<detail::Mapping> map_;
  std::uint64_t header_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

/// Collects tensors (stored in their own dtype, or converted on add) and writes one file atomically.
class SafetensorsWriter {
 public:
  /// Adds a tensor stored as `Stored` (default: its own type). Keys must be unique.
  template <class Stored, class T>
  void add_as(std::string const& key, TensorView<T const, Cpu> v) {
    SDLORA_EXPECTS(!key.empty() && key != "__metadata__", "[safetensors] invalid tensor name '" << key << "'");
    for (auto const& e : entries_)
      if (e.key == key) SDLORA_THROW(FormatError, "[safetensors] duplicate tensor name '" << key << "' on write");
    Tensor<Stored, Cpu> t;
    if constexpr (std::is_same_v<Stored, T>) t = Tensor<Stored, Cpu>::from_view(v);
    else t = convert<Stored, T>(v);
    Entry e{key, dtype_of<Stored>(), t.shape(), std::string(reinterpret_cast<char const*>(t.data()), t.bytes())};
    entries_.push_back(std::move(e));
  }
  template <class T>
  void add(std::string const& key, TensorView<T const, Cpu> v) {
    add_as<T, T>(key, v);
  }
  template <class T>
  void add(std::string const& key, Tensor<T, Cpu> const& t) {
    add_as<T, T>(key, t.view());
  }
  void set_metadata(std::string const& key, std::string const& value) { metadata_[key] = value; }

  /// Writes to `path` + ".tmp", fsyncs, and renames over `path`: a crash leaves either the old or the new file.
  void write(std::string const& path) const {
    nlohmann::json header = nlohmann::json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::uint64_t offset = 0;
    for (auto const& e : entries_) {
      header[e.key] = {{"dtype", std::string(dtype_name(e.dtype))},
                       {"shape", e.shape.to_vector()},
                       {"data_offsets", {offset, offset + e.bytes.size()}}};
      offset += e.bytes.size();
    }
    std::string text = header.dump();
    while ((8 + text.size()) % 8 != 0) text += ' ';  // align the data area to 8 bytes, as the reference writer does
    std::string const tmp = path + ".tmp";
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      if (!out) SDLORA_THROW(IoError, "[safetensors] cannot write " << tmp << ": " << std::strerror(errno));
      std::uint64_t const n = text.size();
      unsigned char len[8];
      for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
      out.write(reinterpret_cast<char const*>(len), 8);
      out.write(text.data(), std::streamsize(text.size()));
      for (auto const& e : entries_) out.write(e.bytes.data(), std::streamsize(e.bytes.size()));
      out.flush();
      if (!out) SDLORA_THROW(IoError, "[safetensors] write to " << tmp << " failed: " << std::strerror(errno));
    }
    int const fd = ::open(tmp.c_str(), O_RDONLY);
    if (fd >= 0) {
      ::fsync(fd);
      ::close(fd);
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      std::remove(tmp.c_str());
      SDLORA_THROW(IoError, "[safetensors] cannot rename " << tmp << " to " << path << ": " << std::strerror(errno));
    }
  }

 private:
  struct Entry {
    std::string key;
    DType dtype;
    Shape shape;
    std::string bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace sdlora::io
