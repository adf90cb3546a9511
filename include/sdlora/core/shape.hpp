/// @file shape.hpp
/// @brief Shape: up to kMaxRank extents, printable as "(N, C, H, W)". Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <array>             // std::array
#include <cstdint>           // std::int64_t
#include <initializer_list>  // std::initializer_list
#include <ostream>           // std::ostream
#include <sstream>           // std::ostringstream
#include <string>            // std::string
#include <vector>            // std::vector

#include <sdlora/core/error.hpp>  // SDLORA_EXPECTS

namespace sdlora {

using Index = std::int64_t;
inline constexpr int kMaxRank = 6;

/// The extents of a tensor, outermost first (row-major). A rank-0 shape is a scalar with one element.
class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<Index> extents) { assign(extents.begin(), extents.end()); }
  explicit Shape(std::vector<Index> const& extents) { assign(extents.begin(), extents.end()); }

  int rank() const { return rank_; }
  Index operator[](int axis) const { return extents_[normalize(axis)]; }
  Index& operator[](int axis) { return extents_[normalize(axis)]; }
  Index const* begin() const { return extents_.data(); }
  Index const* end() const { return extents_.data() + rank_; }

  /// Number of elements: the product of the extents (1 for rank 0).
  Index numel() const {
    Index n = 1;
    for (int i = 0; i < rank_; ++i) n *= extents_[i];
    return n;
  }
  std::vector<Index> to_vector() const { return {begin(), end()}; }

  /// A copy with the first axis replaced by `extent`.
  Shape with_first(Index extent) const {
    Shape s = *this;
    s.extents_[0] = extent;
    return s;
  }

  friend bool operator==(Shape const& a, Shape const& b) {
    if (a.rank_ != b.rank_) return false;
    for (int i = 0; i < a.rank_; ++i)
      if (a.extents_[i] != b.extents_[i]) return false;
    return true;
  }

  std::string str() const {
    std::ostringstream os;
    os << *this;
    return os.str();
  }
  friend std::ostream& operator<<(std::ostream& os, Shape const& s) {
    os << '(';
    for (int i = 0; i < s.rank_; ++i) os << (i ? ", " : "") << s.extents_[i];
    return os << ')';
  }

 private:
  template <class It>
  void assign(It first, It last) {
    rank_ = 0;
    for (; first != last; ++first) {
      SDLORA_EXPECTS(rank_ < kMaxRank, "[shape] rank above " << kMaxRank);
      SDLORA_EXPECTS(*first >= 0, "[shape] negative extent " << *first);
      extents_[rank_++] = static_cast<Index>(*first);
    }
  }
  int normalize(int axis) const {
    int const a = axis < 0 ? axis + rank_ : axis;
    SDLORA_EXPECTS(a >= 0 && a < rank_, "[shape] axis " << axis << " out of range for rank " << rank_);
    return a;
  }

  std::array<Index, kMaxRank> extents_{};
  int rank_ = 0;
};

/// Row-major (contiguous) strides of a shape, in elements.
inline std::array<Index, kMaxRank> contiguous_strides(Shape const& shape) {
  std::array<Index, kMaxRank> strides{};
  Index s = 1;
  for (int i = shape.rank() - 1; i >= 0; --i) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

}  // namespace sdlora
