/// @file support.hpp
/// @brief Test helpers: relative L2 error, fixture paths, finite-difference gradient checks.
#pragma once

#include <cmath>     // std::sqrt
#include <string>    // std::string

#include <sdlora/sdlora.hpp>

namespace sdlora::test {

/// Path of a fixture file under tests/fixtures/.
inline std::string fixture(std::string const& name) { return std::string(SDLORA_FIXTURE_DIR) + "/" + name; }

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

}  // namespace sdlora::test
