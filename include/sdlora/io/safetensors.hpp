/// @file safetensors.hpp
/// @brief Reading and writing `.safetensors` files. Reading memory-maps the file, validates the whole header once
/// and converts tensors lazily, one key at a time, to the requested scalar type. Writing is atomic (temporary
/// file, fsync, rename). Include <sdlora/sdlora.hpp> instead.
///
/// Format: 8-byte little-endian header length N, N bytes of JSON {"key": {"dtype", "shape", "data_offsets"}, ...,
/// "__metadata__": {string: string}}, then the data area. Offsets are relative to the data area.
#pragma once

#include <fcntl.h>     // open
#include <sys/mman.h>  // mmap, munmap, madvise
#include <sys/stat.h>  // fstat
#include <unistd.h>    // close, fsync, sysconf

#include <algorithm>    // std::sort
#include <cerrno>       // errno
#include <cstdint>      // std::uint64_t
#include <cstdio>       // std::rename, std::remove
#include <limits>       // std::numeric_limits
#include <cstring>      // std::memcpy, std::strerror
#include <fstream>      // std::ofstream
#include <map>          // std::map
#include <memory>       // std::shared_ptr
#include <set>          // std::set
#include <sstream>      // std::ostringstream
#include <string>       // std::string
#include <string_view>  // std::string_view
#include <type_traits>  // std::is_same_v
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
inline constexpr std::uint64_t kMaxElements = 1ull << 50;       // no tensor is larger; keeps size arithmetic exact

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
  // A float that an integer type cannot hold (or NaN) is an error, not undefined behaviour (fuzz finding).
  auto from_float = [](double v) -> T {
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      if (!(v >= double(std::numeric_limits<T>::lowest()) && v <= double(std::numeric_limits<T>::max())))
        SDLORA_THROW(FormatError, "[read] the stored value " << v << " does not fit the requested integer type");
    }
    return from_scalar<T>(v);
  };
  switch (d) {
    case DType::F64: return from_float(load(double{}));
    case DType::F32: return from_float(load(float{}));
    case DType::F16: return from_float(half::to_float(load(std::uint16_t{})));
    case DType::BF16: return from_float(float(bfloat16::from_bits(load(std::uint16_t{}))));
    case DType::I64: return from_scalar<T>(load(std::int64_t{}));
    case DType::I32: return from_scalar<T>(load(std::int32_t{}));
    case DType::I16: return from_scalar<T>(load(std::int16_t{}));
    case DType::I8: return from_scalar<T>(load(std::int8_t{}));
    case DType::U8: return from_scalar<T>(load(std::uint8_t{}));
    case DType::BOOL: return from_scalar<T>(*p != 0);
  }
  return T{};
}

/// The bytes a SafetensorsFile reads: a read-only memory map of a file, or an owned in-memory copy.
class Mapping {
 public:
  /// Maps `path` read-only; IoError messages start with `op` (e.g. "[safetensors]").
  Mapping(std::string const& path, char const* op) {
    int const fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) SDLORA_THROW(IoError, op << " cannot open " << path << ": " << std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      int const err = errno;
      ::close(fd);
      SDLORA_THROW(IoError, op << " cannot stat " << path << ": " << std::strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      SDLORA_THROW(IoError, op << " cannot read " << path << ": not a regular file");
    }
    size_ = std::size_t(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        int const err = errno;
        ::close(fd);
        SDLORA_THROW(IoError, op << " cannot map " << path << ": " << std::strerror(err));
      }
      data_ = static_cast<unsigned char const*>(p);
      mapped_ = true;
    }
    ::close(fd);
  }
  /// Owns a copy of `bytes` (SafetensorsFile::from_memory).
  explicit Mapping(std::string&& bytes) : owned_(std::move(bytes)) {
    size_ = owned_.size();
    data_ = reinterpret_cast<unsigned char const*>(owned_.data());
  }
  ~Mapping() {
    if (mapped_) ::munmap(const_cast<unsigned char*>(data_), size_);
  }
  Mapping(Mapping const&) = delete;
  Mapping& operator=(Mapping const&) = delete;
  unsigned char const* data() const { return data_; }
  std::size_t size() const { return size_; }
  /// Drops the resident pages of bytes [begin, end) from this process (a mapped file only; the page cache keeps
  /// them and a later read faults them in again, unchanged: the mapping is private and never written).
  void release(std::size_t begin, std::size_t end) const {
    if (!mapped_ || end <= begin) return;
    std::size_t const page = std::size_t(::sysconf(_SC_PAGESIZE));
    std::size_t const first = begin / page * page, last = std::min(size_, (end + page - 1) / page * page);
    ::madvise(const_cast<unsigned char*>(data_) + first, last - first, MADV_DONTNEED);
  }

 private:
  unsigned char const* data_ = nullptr;
  std::size_t size_ = 0;
  bool mapped_ = false;
  std::string owned_;
};
}  // namespace detail

/// A validated safetensors file (memory-mapped, or held in memory). Cheap to copy (shares the bytes).
///
/// The constructor checks everything the reference reader (huggingface/safetensors) checks, and throws
/// FormatError with a message naming the file and, where there is one, the tensor key: header length within the file
/// and at most 100 MB, the header a JSON object without duplicate names, known dtypes, integer shapes, offsets inside
/// the data area with end >= begin, byte sizes equal to numel x dtype size, and spans that tile the data area exactly
/// (no overlap, no gap, no trailing bytes). After construction, load() cannot read outside the file.
class SafetensorsFile {
 public:
  /// Maps and validates `path`; throws IoError (cannot read) or FormatError naming the file and the key.
  explicit SafetensorsFile(std::string path) : path_(std::move(path)), map_(std::make_shared<detail::Mapping>(path_, "[safetensors]")) {
    parse();
  }
  /// Validates a file held in memory (a download, a fuzzer input); `name` stands for the path in messages.
  static SafetensorsFile from_memory(std::string bytes, std::string name = "<memory>") {
    return SafetensorsFile(std::move(name), std::make_shared<detail::Mapping>(std::move(bytes)));
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

  /// Lets the pages of one tensor leave this process's resident memory once it has been read (loading a model
  /// tensor by tensor then never holds the whole mapped file); the tensor stays readable.
  void release(std::string const& key) const {
    TensorInfo const& t = info(key);
    map_->release(std::size_t(data_begin() - map_->data() + t.begin), std::size_t(data_begin() - map_->data() + t.end));
  }

  /// Reads one tensor converted to T (float/double/half/bfloat16/integers; 16-bit floats round to nearest even).
  /// BOOL reads any non-zero byte as true.
  template <class T>
  Tensor<T, Cpu> load(std::string const& key) const {
    TensorInfo const& t = info(key);
    auto out = Tensor<T, Cpu>::uninitialized(t.shape);
    unsigned char const* p = data_begin() + t.begin;
    if (t.dtype == dtype_of<T>() && !std::is_same_v<T, bool>) {
      if (out.bytes() > 0) std::memcpy(out.data(), p, out.bytes());
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
  SafetensorsFile(std::string name, std::shared_ptr<detail::Mapping> bytes)
      : path_(std::move(name)), map_(std::move(bytes)) {
    parse();
  }

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

    // nlohmann keeps one of two equal keys silently; the parse callback sees every top-level key, already unescaped
    // (so "a\"b" and "\u0061" compare as the strings they denote).
    std::set<std::string> names;
    std::string duplicate;
    bool has_duplicate = false;
    auto on_event = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
      if (depth == 1 && event == nlohmann::json::parse_event_t::key && parsed.is_string() && !has_duplicate &&
          !names.insert(parsed.get<std::string>()).second) {
        duplicate = parsed.get<std::string>();
        has_duplicate = true;
      }
      return true;
    };
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(h, h + n, on_event);
    } catch (nlohmann::json::exception const& e) {
      SDLORA_THROW(FormatError, "[safetensors] " << path_ << ": header is not valid JSON: " << e.what());
    }
    if (!header.is_object())
      SDLORA_THROW(FormatError, "[safetensors] " << path_ << ": header is not a JSON object but " << header.type_name());
    if (has_duplicate)
      SDLORA_THROW(FormatError, "[safetensors] " << path_ << ": duplicate tensor name '" << duplicate << "'");

    for (auto const& [key, value] : header.items()) {
      if (key == "__metadata__") {
        if (!value.is_object())
          SDLORA_THROW(FormatError, "[safetensors] " << path_ << ": __metadata__ is not an object");
        for (auto const& [mk, mv] : value.items()) {
          if (!mv.is_string())
            SDLORA_THROW(FormatError, "[safetensors] " << path_ << ": metadata '" << mk << "' is not a string but "
                                                       << mv.type_name());
          metadata_[mk] = mv.get<std::string>();
        }
        continue;
      }
      tensors_.push_back(parse_entry(key, value, data_size));
    }
    // Sort by (begin, end), as the reference does: an empty tensor [b, b) sorts before [b, e) and does not overlap it.
    std::sort(tensors_.begin(), tensors_.end(),
              [](auto const& a, auto const& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
    std::uint64_t expected = 0;
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      TensorInfo const& t = tensors_[i];
      if (t.begin < expected)
        SDLORA_THROW(FormatError, "[safetensors] " << path_ << ": tensor '" << t.key << "' [" << t.begin << ", "
                                                   << t.end << ") overlaps '" << tensors_[i - 1].key << "' ["
                                                   << tensors_[i - 1].begin << ", " << tensors_[i - 1].end << ")");
      if (t.begin > expected)
        SDLORA_THROW(FormatError, "[safetensors] " << path_ << ": gap before tensor '" << t.key << "' (starts at "
                                                   << t.begin << ", previous data ends at " << expected
                                                   << "): spans must be contiguous");
      expected = t.end;
      index_[t.key] = i;
    }
    if (expected != data_size)
      SDLORA_THROW(FormatError, "[safetensors] " << path_ << ": " << (data_size - expected)
                                                 << " trailing bytes: tensors"
                                                 << (tensors_.empty() ? std::string()
                                                                      : " (last '" + tensors_.back().key + "')")
                                                 << " cover " << expected << " bytes but the data area holds "
                                                 << data_size);
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
    std::uint64_t count = 1;    // the element count
    std::uint64_t nonzero = 1;  // the product of the non-zero extents: bounds every partial product Shape computes
    for (auto const& d : shape) {
      if (!d.is_number_unsigned()) fail("shape entry " + d.dump() + " is not a non-negative integer");
      std::uint64_t const e = d.get<std::uint64_t>();
      if (e > kMaxElements || (e && nonzero > kMaxElements / e)) fail("shape " + shape.dump() + " is absurdly large");
      if (e) nonzero *= e;
      count *= e;
      dims.push_back(Index(e));
    }
    t.shape = Shape(dims);
    auto const& off = value["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail("data_offsets " + off.dump() + " is not [begin, end] of non-negative integers");
    t.begin = off[0].get<std::uint64_t>();
    t.end = off[1].get<std::uint64_t>();
    if (t.end < t.begin) {
      std::ostringstream os;
      os << "data_offsets [" << t.begin << ", " << t.end << "] end before they begin";
      fail(os.str());
    }
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
    std::string text;
    try {
      text = header.dump();
    } catch (nlohmann::json::exception const& e) {  // a name or metadata value that is not valid UTF-8
      SDLORA_THROW(FormatError, "[safetensors] cannot write " << path << ": " << e.what());
    }
    while ((8 + text.size()) % 8 != 0) text += ' ';  // align the data area to 8 bytes, as the reference writer does
    std::string const tmp = path + ".tmp";
    int err = 0;  // a failed write removes its temporary file: a full disk leaves nothing behind
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
      if (!out) err = errno != 0 ? errno : EIO;
    }
    if (err == 0) {
      int const fd = ::open(tmp.c_str(), O_RDONLY);
      if (fd >= 0) {
        if (::fsync(fd) != 0) err = errno;  // some file systems report a full disk only here
        ::close(fd);
      }
    }
    if (err != 0) {
      std::remove(tmp.c_str());
      SDLORA_THROW(IoError, "[safetensors] write to " << tmp << " failed: " << std::strerror(err));
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
