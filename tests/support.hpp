/// @file support.hpp
/// @brief Test helpers: relative L2 error, fixture paths, finite-difference gradient checks.
#pragma once

#include <cmath>     // std::sqrt
#include <cstring>   // std::memcmp
#include <string>    // std::string
#include <vector>    // std::vector

#include <sdlora/sdlora.hpp>

namespace sdlora::test {

/// Path of a fixture file under tests/fixtures/.
inline std::string fixture(std::string const& name) { return std::string(SDLORA_FIXTURE_DIR) + "/" + name; }

/// "a,b,c" -> {"a", "b", "c"}: the comma-separated lists the fixture scripts store in safetensors metadata.
inline std::vector<std::string> split_commas(std::string const& s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start < s.size()) {
    std::size_t const end = s.find(',', start);
    out.push_back(s.substr(start, end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

/// Whether two float tensors have the same shape and the same bits (NaN payloads and signed zeros included).
inline bool same_bits(Tensor<float, Cpu> const& a, Tensor<float, Cpu> const& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.bytes()) == 0;
}

/// ||out - ref|| / ||ref||, accumulated in double. Refuses an all-zero reference (a comparison on zeros proves
/// nothing).
template <class T, class U>
double rel_l2(TensorView<T const, Cpu> out, TensorView<U const, Cpu> ref) {
  SDLORA_EXPECTS(out.numel() == ref.numel(), "[rel_l2] sizes differ: " << out.shape() << " vs " << ref.shape());
  Tensor<T, Cpu> const o = Tensor<T, Cpu>::from_view(out);
  Tensor<U, Cpu> const r = Tensor<U, Cpu>::from_view(ref);
  double num = 0, den = 0;
  for (Index i = 0; i < o.numel(); ++i) {
    double const d = double(o(i)) - double(r(i));
    num += d * d;
    den += double(r(i)) * double(r(i));
  }
  SDLORA_EXPECTS(den > 0, "[rel_l2] the reference is all zeros: comparing against it proves nothing");
  return std::sqrt(num / den);
}
template <class T, class U>
double rel_l2(Tensor<T, Cpu> const& out, Tensor<U, Cpu> const& ref) {
  return rel_l2<T, U>(out.view(), ref.view());
}

/// Central finite differences of a scalar function with respect to every element of `wrt`, in double:
/// g[i] = (loss(wrt + eps e_i) - loss(wrt - eps e_i)) / (2 eps). `loss` reads `wrt` by reference.
/// Use with Tensor<double> and eps = 1e-6: truncation error O(eps^2) and rounding O(1e-16 / eps) stay below 1e-8.
template <class Loss>
Tensor<double, Cpu> numeric_gradient(Tensor<double, Cpu>& wrt, Loss&& loss, double eps = 1e-6) {
  Tensor<double, Cpu> g(wrt.shape());
  for (Index i = 0; i < wrt.numel(); ++i) {
    double const keep = wrt(i);
    wrt(i) = keep + eps;
    double const up = loss();
    wrt(i) = keep - eps;
    double const down = loss();
    wrt(i) = keep;
    g(i) = (up - down) / (2 * eps);
  }
  return g;
}

/// <a, b> in double: the scalar loss whose gradient with respect to `a` is `b` (an upstream gradient).
template <class T>
double inner(Tensor<T, Cpu> const& a, Tensor<T, Cpu> const& b) {
  SDLORA_EXPECTS(a.numel() == b.numel(), "[inner] sizes differ: " << a.shape() << " vs " << b.shape());
  double s = 0;
  for (Index i = 0; i < a.numel(); ++i) s += double(a(i)) * double(b(i));
  return s;
}

/// A tensor of deterministic pseudo-random values in [-1, 1) (a fixed LCG: tests must not depend on libstdc++'s
/// distributions).
template <class T>
Tensor<T, Cpu> random_tensor(Shape shape, std::uint32_t seed) {
  Tensor<T, Cpu> t(shape);
  std::uint64_t state = 0x9E3779B97F4A7C15ull ^ seed;
  for (Index i = 0; i < t.numel(); ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    t(i) = T(double(state >> 11) / double(1ull << 53) * 2.0 - 1.0);
  }
  return t;
}

}  // namespace sdlora::test
