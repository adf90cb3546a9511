/// @file tensor.hpp
/// @brief Tensor<T, B>: an owning, contiguous, row-major array on backend B; TensorView<T, B>: a non-owning strided
/// view. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <algorithm>    // std::copy_n
#include <array>        // std::array
#include <cstddef>      // std::size_t
#include <span>         // std::span
#include <type_traits>  // std::is_const_v, std::remove_const_t
#include <utility>      // std::exchange
#include <vector>       // std::vector

#include <sdlora/core/backend.hpp>  // Backend, BackendMemory, Cpu
#include <sdlora/core/dtype.hpp>    // half, bfloat16
#include <sdlora/core/error.hpp>    // SDLORA_EXPECTS
#include <sdlora/core/shape.hpp>    // Shape, Index

namespace sdlora {

/// A non-owning view: pointer + shape + strides (in elements). `T` may be const. Views never outlive their tensor.
template <class T, class B = Cpu>
class TensorView {
 public:
  using value_type = std::remove_const_t<T>;
  using backend = B;

  TensorView() = default;
  TensorView(T* data, Shape shape) : data_(data), shape_(shape), strides_(contiguous_strides(shape)) {}
  TensorView(T* data, Shape shape, std::array<Index, kMaxRank> strides)
      : data_(data), shape_(shape), strides_(strides) {}
  /// A view of mutable data converts to a view of const data.
  template <class U>
    requires(std::is_const_v<T> && std::is_same_v<U, value_type>)
  TensorView(TensorView<U, B> const& other) : TensorView(other.data(), other.shape(), other.strides()) {}

  T* data() const { return data_; }
  Shape const& shape() const { return shape_; }
  std::array<Index, kMaxRank> const& strides() const { return strides_; }
  Index stride(int axis) const { return strides_[axis < 0 ? axis + shape_.rank() : axis]; }
  int rank() const { return shape_.rank(); }
  Index numel() const { return shape_.numel(); }
  Index dim(int axis) const { return shape_[axis]; }

  bool is_contiguous() const { return strides_ == contiguous_strides(shape_); }
  /// True for a default-constructed view (no data) or one with a zero extent.
  bool empty() const { return data_ == nullptr || numel() == 0; }

  /// Rows [begin, end) of the first axis.
  TensorView slice(Index begin, Index end) const {
    SDLORA_EXPECTS(rank() >= 1 && 0 <= begin && begin <= end && end <= shape_[0],
                   "[slice] rows [" << begin << ", " << end << ") out of range for " << shape_);
    return TensorView(data_ + begin * strides_[0], shape_.with_first(end - begin), strides_);
  }
  /// The sub-tensor at index i of the first axis (rank drops by one).
  TensorView operator[](Index i) const {
    SDLORA_EXPECTS(rank() >= 1 && 0 <= i && i < shape_[0], "[index] " << i << " out of range for " << shape_);
    std::vector<Index> rest(shape_.begin() + 1, shape_.end());
    std::array<Index, kMaxRank> st{};
    for (int a = 1; a < rank(); ++a) st[a - 1] = strides_[a];
    return TensorView(data_ + i * strides_[0], Shape(rest), st);
  }
  /// The same elements with another shape; requires contiguity.
  TensorView reshaped(Shape shape) const {
    SDLORA_EXPECTS(is_contiguous(), "[reshape] view is not contiguous: " << shape_);
    SDLORA_EXPECTS(shape.numel() == numel(), "[reshape] " << shape_ << " -> " << shape << " changes the size");
    return TensorView(data_, shape);
  }

  /// Element access by full index (host memory only; for tests and small host-side loops).
  T& at(std::initializer_list<Index> index) const
    requires std::same_as<B, Cpu>
  {
    SDLORA_EXPECTS(int(index.size()) == rank(), "[at] index of rank " << index.size() << " for " << shape_);
    Index offset = 0;
    int a = 0;
    for (Index i : index) {
      SDLORA_EXPECTS(0 <= i && i < shape_[a], "[at] index " << i << " out of range on axis " << a << " of "
                                                            << shape_);
      offset += i * strides_[a++];
    }
    return data_[offset];
  }
  /// Contiguous host elements as a span.
  std::span<T> span() const
    requires std::same_as<B, Cpu>
  {
    SDLORA_EXPECTS(is_contiguous(), "[span] view is not contiguous: " << shape_);
    return {data_, std::size_t(numel())};
  }

 private:
  T* data_ = nullptr;
  Shape shape_;
  std::array<Index, kMaxRank> strides_{};
};

/// An owning contiguous row-major tensor with value semantics: copying copies the elements (like std::vector),
/// moving is free. New tensors are zero-filled unless made with Tensor::uninitialized.
template <class T, class B = Cpu>
  requires Backend<B>
class Tensor {
 public:
  using value_type = T;
  using backend = B;

  Tensor() = default;
  explicit Tensor(Shape shape) {
    if constexpr (requires(std::size_t n) { BackendMemory<B>::allocate_zeroed(n); }) {
      shape_ = shape;  // zeroed by the allocator: the CPU's fresh pages are not touched (a model built to be loaded)
      data_ = static_cast<T*>(BackendMemory<B>::allocate_zeroed(bytes()));
    } else {
      *this = uninitialized(shape);
      fill_zero();
    }
  }
  static Tensor uninitialized(Shape shape) {
    Tensor t;
    t.shape_ = shape;
    t.data_ = static_cast<T*>(BackendMemory<B>::allocate(t.bytes()));
    return t;
  }
  static Tensor zeros(Shape shape) { return Tensor(shape); }

  Tensor(Tensor const& other) {
    if (other.data_ == nullptr) return;  // an empty tensor copies to an empty tensor
    *this = uninitialized(other.shape_);
    BackendMemory<B>::copy(data_, other.data_, bytes());
  }
  Tensor(Tensor&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), shape_(std::exchange(other.shape_, Shape{})) {}
  Tensor& operator=(Tensor const& other) {
    if (this != &other) *this = Tensor(other);
    return *this;
  }
  Tensor& operator=(Tensor&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      shape_ = std::exchange(other.shape_, Shape{});
    }
    return *this;
  }
  ~Tensor() { release(); }

  /// A contiguous copy of any (possibly strided) view. Another backend copies a contiguous view with
  /// BackendMemory<B>::copy and a strided one with BackendMemory<B>::copy_strided (on the backend's memory).
  static Tensor from_view(TensorView<T const, B> v) {
    Tensor t = uninitialized(v.shape());
    if (v.is_contiguous()) BackendMemory<B>::copy(t.data_, v.data(), t.bytes());  // saved activations: one memcpy
    else if constexpr (std::same_as<B, Cpu>) copy_strided(t.data_, v);
    else BackendMemory<B>::copy_strided(t.data_, v.data(), v.shape(), v.strides(), sizeof(T));
    return t;
  }

  T* data() { return data_; }
  T const* data() const { return data_; }
  Shape const& shape() const { return shape_; }
  int rank() const { return shape_.rank(); }
  Index numel() const { return shape_.numel(); }
  Index dim(int axis) const { return shape_[axis]; }
  std::size_t bytes() const { return std::size_t(numel()) * sizeof(T); }
  bool empty() const { return numel() == 0 || data_ == nullptr; }

  TensorView<T, B> view() { return {data_, shape_}; }
  TensorView<T const, B> view() const { return {data_, shape_}; }
  operator TensorView<T, B>() { return view(); }
  operator TensorView<T const, B>() const { return view(); }

  TensorView<T, B> slice(Index begin, Index end) { return view().slice(begin, end); }
  TensorView<T const, B> slice(Index begin, Index end) const { return view().slice(begin, end); }
  TensorView<T, B> operator[](Index i) { return view()[i]; }
  TensorView<T const, B> operator[](Index i) const { return view()[i]; }

  /// Changes the shape in place; the element count must not change.
  Tensor& reshape(Shape shape) {
    SDLORA_EXPECTS(shape.numel() == numel(), "[reshape] " << shape_ << " -> " << shape << " changes the size");
    shape_ = shape;
    return *this;
  }
  /// The same elements as a new tensor with another shape (moves out of an rvalue, copies an lvalue).
  Tensor reshaped(Shape shape) const& { return Tensor(*this).reshape(shape); }
  Tensor reshaped(Shape shape) && { return std::move(reshape(shape)); }

  void fill_zero() { BackendMemory<B>::zero(data_, bytes()); }

  // Host-only conveniences.
  T& at(std::initializer_list<Index> index)
    requires std::same_as<B, Cpu>
  {
    return view().at(index);
  }
  T const& at(std::initializer_list<Index> index) const
    requires std::same_as<B, Cpu>
  {
    return view().at(index);
  }
  std::span<T> span()
    requires std::same_as<B, Cpu>
  {
    return {data_, std::size_t(numel())};
  }
  std::span<T const> span() const
    requires std::same_as<B, Cpu>
  {
    return {data_, std::size_t(numel())};
  }
  T& operator()(Index i)
    requires std::same_as<B, Cpu>
  {
    return data_[i];
  }
  T const& operator()(Index i) const
    requires std::same_as<B, Cpu>
  {
    return data_[i];
  }
  /// Every element = value (another backend: a host buffer uploaded with BackendMemory<B>::upload).
  void fill(T value) {
    if constexpr (std::same_as<B, Cpu>) {
      for (Index i = 0; i < numel(); ++i) data_[i] = value;
    } else {
      std::vector<T> const host(std::size_t(numel()), value);
      BackendMemory<B>::upload(data_, host.data(), bytes());
    }
  }

 private:
  void release() {
    if (data_) BackendMemory<B>::deallocate(data_);
    data_ = nullptr;
  }
  /// Copies v to dst in row-major order. The trailing axes that v lays out contiguously (an extent-1 axis counts as
  /// laid out whatever its stride) form one run copied with std::copy_n; a strided innermost axis is one loop.
  static void copy_strided(T* dst, TensorView<T const, B> const& v) {
    int inner = v.rank();  // axes [inner, rank) form runs of `run` contiguous elements
    Index run = 1;
    while (inner > 0 && (v.dim(inner - 1) == 1 || v.stride(inner - 1) == run)) run *= v.dim(--inner);
    copy_runs(dst, v, 0, 0, inner, run);
  }
  static T* copy_runs(T* dst, TensorView<T const, B> const& v, int axis, Index offset, int inner, Index run) {
    if (axis == inner) return std::copy_n(v.data() + offset, run, dst);
    Index const n = v.dim(axis), stride = v.stride(axis);
    if (axis + 1 == inner && run == 1) {  // the innermost axis is strided: element by element
      T const* src = v.data() + offset;
      for (Index i = 0; i < n; ++i) dst[i] = src[i * stride];
      return dst + n;
    }
    for (Index i = 0; i < n; ++i) dst = copy_runs(dst, v, axis + 1, offset + i * stride, inner, run);
    return dst;
  }

  T* data_ = nullptr;
  Shape shape_;
};

namespace detail {
/// Widens a stored scalar without loss: double stays double, everything else becomes float.
template <class T>
auto widen(T v) {
  if constexpr (std::is_same_v<T, double>) return v;
  else return static_cast<float>(v);
}
}  // namespace detail

/// Converts the elements of a host view to another scalar type (round-to-nearest-even into half/bfloat16).
template <class To, class From>
Tensor<To, Cpu> convert(TensorView<From const, Cpu> src) {
  auto out = Tensor<To, Cpu>::uninitialized(src.shape());
  Tensor<From, Cpu> const contiguous = src.is_contiguous() ? Tensor<From, Cpu>() : Tensor<From, Cpu>::from_view(src);
  From const* p = src.is_contiguous() ? src.data() : contiguous.data();
  for (Index i = 0; i < src.numel(); ++i) out(i) = from_scalar<To>(detail::widen(p[i]));
  return out;
}
template <class To, class From>
  requires(!std::is_const_v<From>)
Tensor<To, Cpu> convert(TensorView<From, Cpu> src) {
  return convert<To, From>(TensorView<From const, Cpu>(src));
}
template <class To, class From>
Tensor<To, Cpu> convert(Tensor<From, Cpu> const& src) {
  return convert<To, From>(src.view());
}

/// A copy of a host view on backend B (B = Cpu: a contiguous host copy). Other backends upload with
/// BackendMemory<B>::upload, which returns after the copy; this header needs no backend's headers.
template <class B, class T>
Tensor<T, B> to_backend(TensorView<T const, Cpu> host) {
  if constexpr (std::same_as<B, Cpu>) {
    return Tensor<T, Cpu>::from_view(host);
  } else {
    Tensor<T, Cpu> const contiguous = Tensor<T, Cpu>::from_view(host);
    auto out = Tensor<T, B>::uninitialized(host.shape());
    BackendMemory<B>::upload(out.data(), contiguous.data(), out.bytes());
    return out;
  }
}
template <class B, class T>
  requires(!std::is_const_v<T>)
Tensor<T, B> to_backend(TensorView<T, Cpu> host) {
  return to_backend<B, T>(TensorView<T const, Cpu>(host));
}
template <class B, class T>
Tensor<T, B> to_backend(Tensor<T, Cpu> const& host) {
  return to_backend<B, T>(host.view());
}
/// A host tensor that is no longer needed on the host: moved, not copied, when B is Cpu; uploaded otherwise.
template <class B, class T>
Tensor<T, B> to_backend(Tensor<T, Cpu>&& host) {
  if constexpr (std::same_as<B, Cpu>) return std::move(host);
  else return to_backend<B, T>(host.view());
}
/// A host copy of a view on any backend (a strided one is made contiguous on its backend first). Other backends
/// download with BackendMemory<B>::download, which waits for the work queued before it.
template <class T, class B>
Tensor<T, Cpu> to_cpu(TensorView<T const, B> v) {
  if constexpr (std::same_as<B, Cpu>) {
    return Tensor<T, Cpu>::from_view(v);
  } else {
    Tensor<T, B> const contiguous = v.is_contiguous() ? Tensor<T, B>() : Tensor<T, B>::from_view(v);
    auto out = Tensor<T, Cpu>::uninitialized(v.shape());
    BackendMemory<B>::download(out.data(), v.is_contiguous() ? v.data() : contiguous.data(), out.bytes());
    return out;
  }
}

template <class T, class B>
  requires(!std::is_const_v<T>)
Tensor<T, Cpu> to_cpu(TensorView<T, B> v) {
  return to_cpu<T, B>(TensorView<T const, B>(v));
}
template <class T, class B>
Tensor<T, Cpu> to_cpu(Tensor<T, B> const& v) {
  return to_cpu<T, B>(v.view());
}

}  // namespace sdlora
