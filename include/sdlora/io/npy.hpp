/// @file npy.hpp
/// @brief Reading and writing NumPy `.npy` files (format versions 1.0, 2.0 and 3.0; little-endian, C order), e.g.
/// the QuickDraw `numpy_bitmap` files (uint8 (N, 784)). Include <sdlora/sdlora.hpp> instead.
///
/// Format (numpy/lib/format.py): the magic "\x93NUMPY", a major and a minor version byte, the header length as
/// uint16 (v1) or uint32 (v2, v3) little-endian, then a Python dict literal
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 784), }` padded with spaces and a newline, then the
/// elements. Supported dtypes: |u1 |i1 <i2 <i4 <i8 <f2 <f4 <f8 |b1. Elements after the last one numpy would read
/// are ignored, as numpy.load ignores them.
///
/// An own parser rather than xtensor's xnpy: loading converts any stored dtype to the requested scalar type and the
/// errors name the file, which xt::load_npy (one compile-time type, std::runtime_error) does not; and rows can be
/// read from a memory-mapped file without loading a whole 100 MB QuickDraw category.
#pragma once

#include <cerrno>       // errno
#include <cstdint>      // std::uint8_t, std::uint64_t
#include <cstring>      // std::memcpy, std::memcmp, std::strerror
#include <fstream>      // std::ofstream
#include <memory>       // std::shared_ptr
#include <sstream>      // std::ostringstream
#include <string>       // std::string
#include <string_view>  // std::string_view
#include <type_traits>  // std::is_same_v
#include <vector>       // std::vector

#include <sdlora/core/dtype.hpp>      // DType, dtype_of, dtype_size
#include <sdlora/core/error.hpp>      // FormatError, IoError
#include <sdlora/core/tensor.hpp>     // Tensor, TensorView
#include <sdlora/io/safetensors.hpp>  // detail::Mapping, detail::read_element, kMaxElements

namespace sdlora::io {

namespace detail {

/// The dtype of a numpy `descr` string such as "<f4", or false for one sdlora does not read.
inline bool npy_dtype(std::string const& descr, DType& out) {
  if (descr.size() != 3) return false;
  char const order = descr[0];
  std::string_view const kind = std::string_view(descr).substr(1);
  bool const one_byte = kind == "u1" || kind == "i1" || kind == "b1";
  if (!(order == '<' || order == '|' || (one_byte && (order == '>' || order == '=')))) return false;
  if (order == '|' && !one_byte) return false;
  if (kind == "u1") out = DType::U8;
  else if (kind == "i1") out = DType::I8;
  else if (kind == "b1") out = DType::BOOL;
  else if (kind == "i2") out = DType::I16;
  else if (kind == "i4") out = DType::I32;
  else if (kind == "i8") out = DType::I64;
  else if (kind == "f2") out = DType::F16;
  else if (kind == "f4") out = DType::F32;
  else if (kind == "f8") out = DType::F64;
  else return false;
  return true;
}

/// The numpy `descr` of a scalar type sdlora writes.
template <class T>
constexpr char const* npy_descr() {
  constexpr DType d = dtype_of<T>();
  static_assert(d != DType::BF16, "save_npy: numpy has no bfloat16; convert to float first");
  switch (d) {
    case DType::F64: return "<f8";
    case DType::F32: return "<f4";
    case DType::F16: return "<f2";
    case DType::I64: return "<i8";
    case DType::I32: return "<i4";
    case DType::I16: return "<i2";
    case DType::I8: return "|i1";
    case DType::U8: return "|u1";
    case DType::BOOL: return "|b1";
    default: return "?";
  }
}

/// A reader of the Python literal subset numpy writes in a header: a dict of str keys to str, bool and int tuples.
class NpyHeaderParser {
 public:
  NpyHeaderParser(std::string_view text, std::string const& file) : text_(text), file_(file) {}

  void parse(std::string& descr, bool& fortran_order, std::vector<Index>& shape) {
    bool seen_descr = false, seen_order = false, seen_shape = false;
    expect('{');
    while (!peek('}')) {
      std::string const key = string();
      expect(':');
      if (key == "descr") {
        if (!peek('\'') && !peek('"'))
          fail("descr is not a simple dtype string (structured arrays are not supported)");
        descr = string();
        seen_descr = true;
      } else if (key == "fortran_order") {
        fortran_order = boolean();
        seen_order = true;
      } else if (key == "shape") {
        shape = tuple();
        seen_shape = true;
      } else {
        fail("unexpected key '" + key + "'");
      }
      if (!peek('}')) expect(',');
    }
    expect('}');
    if (!seen_descr || !seen_order || !seen_shape) fail("header lacks one of descr, fortran_order, shape");
  }

 private:
  [[noreturn]] void fail(std::string const& what) const {
    SDLORA_THROW(FormatError, "[npy] " << file_ << ": bad header at byte " << pos_ << ": " << what << " in \""
                                       << text_ << "\"");
  }
  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\n' || text_[pos_] == '\t')) ++pos_;
  }
  bool peek(char c) {
    skip_space();
    return pos_ < text_.size() && text_[pos_] == c;
  }
  void expect(char c) {
    if (!peek(c)) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  std::string string() {
    skip_space();
    if (pos_ >= text_.size() || (text_[pos_] != '\'' && text_[pos_] != '"')) fail("expected a string");
    char const quote = text_[pos_++];
    std::size_t const end = text_.find(quote, pos_);
    if (end == std::string_view::npos) fail("unterminated string");
    std::string s(text_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return s;
  }
  bool boolean() {
    skip_space();
    if (text_.substr(pos_, 4) == "True") {
      pos_ += 4;
      return true;
    }
    if (text_.substr(pos_, 5) == "False") {
      pos_ += 5;
      return false;
    }
    fail("expected True or False");
  }
  std::vector<Index> tuple() {
    std::vector<Index> dims;
    expect('(');
    while (!peek(')')) {
      skip_space();
      std::uint64_t v = 0;
      std::size_t const start = pos_;
      while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
        v = v * 10 + std::uint64_t(text_[pos_++] - '0');
        if (v > kMaxElements) fail("shape extent too large");
      }
      if (pos_ == start) fail("shape entries must be non-negative integers");
      if (dims.size() == std::size_t(kMaxRank)) fail("rank above 6");
      dims.push_back(Index(v));
      if (!peek(')')) expect(',');
    }
    expect(')');
    return dims;
  }

  std::string_view text_;
  std::string const& file_;
  std::size_t pos_ = 0;
};

}  // namespace detail

/// A validated `.npy` file, memory-mapped; rows are converted to the requested type on load.
class NpyFile {
 public:
  /// Maps and validates `path`: IoError if it cannot be read, FormatError naming the file for a bad magic or
  /// header, Fortran order, an unsupported or big-endian dtype, or fewer data bytes than the shape needs.
  explicit NpyFile(std::string path) : path_(std::move(path)), map_(std::make_shared<detail::Mapping>(path_, "[npy]")) {
    parse();
  }

  std::string const& path() const { return path_; }
  Shape const& shape() const { return shape_; }
  DType dtype() const { return dtype_; }
  std::string const& descr() const { return descr_; }

  /// All elements, converted to T, with the file's shape. Booleans read any non-zero byte as true.
  template <class T>
  Tensor<T, Cpu> load() const {
    return shape_.rank() == 0 ? convert_range<T>(0, 1, Shape{}) : load_rows<T>(0, shape_[0]);
  }
  /// Rows [begin, end) of the first axis (for large files: read a few QuickDraw bitmaps without the rest).
  template <class T>
  Tensor<T, Cpu> load_rows(Index begin, Index end) const {
    SDLORA_EXPECTS(shape_.rank() >= 1 && 0 <= begin && begin <= end && end <= shape_[0],
                   "[npy] " << path_ << ": rows [" << begin << ", " << end << ") out of range for " << shape_);
    Index const row = shape_[0] == 0 ? 0 : shape_.numel() / shape_[0];
    return convert_range<T>(begin * row, end * row, shape_.with_first(end - begin));
  }

 private:
  template <class T>
  Tensor<T, Cpu> convert_range(Index first, Index last, Shape shape) const {
    auto out = Tensor<T, Cpu>::uninitialized(shape);
    int const size = dtype_size(dtype_);
    unsigned char const* p = map_->data() + data_offset_ + std::size_t(first) * std::size_t(size);
    if (dtype_ == dtype_of<T>() && !std::is_same_v<T, bool>) {
      if (out.bytes() > 0) std::memcpy(out.data(), p, out.bytes());
    } else {
      for (Index i = 0; i < last - first; ++i) out(i) = detail::read_element<T>(p + i * size, dtype_);
    }
    return out;
  }

  void parse() {
    unsigned char const* d = map_->data();
    std::size_t const size = map_->size();
    static constexpr unsigned char kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
    if (size < 10 || std::memcmp(d, kMagic, 6) != 0)
      SDLORA_THROW(FormatError, "[npy] " << path_ << ": not a .npy file (bad magic; " << size << " bytes)");
    int const major = d[6];
    std::size_t header_len = 0, prefix = 0;
    if (major == 1) {
      header_len = std::size_t(d[8]) | std::size_t(d[9]) << 8;
      prefix = 10;
    } else if (major == 2 || major == 3) {
      if (size < 12) SDLORA_THROW(FormatError, "[npy] " << path_ << ": truncated header");
      header_len = std::size_t(d[8]) | std::size_t(d[9]) << 8 | std::size_t(d[10]) << 16 | std::size_t(d[11]) << 24;
      prefix = 12;
    } else {
      SDLORA_THROW(FormatError, "[npy] " << path_ << ": unsupported format version " << major << "." << int(d[7]));
    }
    if (header_len > size - prefix)
      SDLORA_THROW(FormatError, "[npy] " << path_ << ": header of " << header_len << " bytes is longer than the file ("
                                         << size << " bytes)");
    std::string_view const text(reinterpret_cast<char const*>(d + prefix), header_len);
    bool fortran_order = false;
    std::vector<Index> dims;
    detail::NpyHeaderParser(text, path_).parse(descr_, fortran_order, dims);
    if (!detail::npy_dtype(descr_, dtype_))
      SDLORA_THROW(FormatError, "[npy] " << path_ << ": unsupported dtype '" << descr_
                                         << "' (supported: little-endian u1 i1 i2 i4 i8 f2 f4 f8 b1)");
    if (fortran_order && dims.size() > 1)
      SDLORA_THROW(FormatError, "[npy] " << path_ << ": Fortran-ordered arrays are not supported (save with "
                                         << "numpy.ascontiguousarray)");
    std::uint64_t count = 1;
    for (Index e : dims) {
      if (e && count > kMaxElements / std::uint64_t(e))
        SDLORA_THROW(FormatError, "[npy] " << path_ << ": shape too large");
      count *= std::uint64_t(e == 0 ? 1 : e);
    }
    shape_ = Shape(dims);
    data_offset_ = prefix + header_len;
    std::uint64_t const need = std::uint64_t(shape_.numel()) * std::uint64_t(dtype_size(dtype_));
    if (need > size - data_offset_)
      SDLORA_THROW(FormatError, "[npy] " << path_ << ": truncated data: shape " << shape_ << " of " << descr_
                                         << " needs " << need << " bytes, the file holds " << (size - data_offset_));
  }

  std::string path_;
  std::shared_ptr<detail::Mapping> map_;
  std::string descr_;
  DType dtype_ = DType::F32;
  Shape shape_;
  std::size_t data_offset_ = 0;
};

/// Reads a whole `.npy` file as Tensor<T> (see NpyFile for the errors).
template <class T>
Tensor<T, Cpu> load_npy(std::string const& path) {
  return NpyFile(path).load<T>();
}

/// Writes `v` as a version 1.0 `.npy` file (2.0 if the header needs more than 65535 bytes), header padded to 64
/// bytes as numpy does. Throws IoError naming the path when it cannot be written.
template <class T>
void save_npy(std::string const& path, TensorView<T const, Cpu> v) {
  std::ostringstream dict;
  dict << "{'descr': '" << detail::npy_descr<T>() << "', 'fortran_order': False, 'shape': (";
  for (int a = 0; a < v.rank(); ++a) dict << v.dim(a) << (v.rank() == 1 || a + 1 < v.rank() ? ", " : "");
  dict << "), }";
  std::string header = dict.str();
  if (v.rank() == 1) header.replace(header.find(", ), }"), 6, ",), }");  // numpy writes (n,)
  bool const v2 = header.size() + 1 + 10 > 65535;
  std::size_t const prefix = v2 ? 12 : 10;
  std::size_t const total = (prefix + header.size() + 1 + 63) / 64 * 64;
  header.append(total - prefix - header.size() - 1, ' ');
  header += '\n';
  Tensor<T, Cpu> const data = Tensor<T, Cpu>::from_view(v);

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) SDLORA_THROW(IoError, "[npy] cannot write " << path << ": " << std::strerror(errno));
  unsigned char head[12] = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<unsigned char>(v2 ? 2 : 1), 0};
  std::size_t const n = header.size();
  for (std::size_t i = 0; i < (v2 ? 4u : 2u); ++i) head[8 + i] = static_cast<unsigned char>(n >> (8 * i));
  out.write(reinterpret_cast<char const*>(head), std::streamsize(prefix));
  out.write(header.data(), std::streamsize(header.size()));
  if (data.bytes() > 0) out.write(reinterpret_cast<char const*>(data.data()), std::streamsize(data.bytes()));
  out.flush();
  if (!out) SDLORA_THROW(IoError, "[npy] write to " << path << " failed: " << std::strerror(errno));
}
template <class T>
void save_npy(std::string const& path, Tensor<T, Cpu> const& t) {
  save_npy<T>(path, t.view());
}

}  // namespace sdlora::io
