/// @file full_size.hpp
/// @brief Helpers of the full-size model tests: process memory from /proc and torch-scaled random weights.
#pragma once

#include <cmath>    // std::sqrt
#include <cstdint>  // std::uint64_t
#include <cstdlib>  // std::atof
#include <fstream>  // std::ifstream
#include <string>   // std::string

#include <sdlora/backend/cpu/parallel.hpp>  // cpu::parallel_for
#include <sdlora/nn/module.hpp>             // nn::for_each_parameter

namespace sdlora::test {

/// Megabytes of a "VmHWM:" / "VmRSS:" line of /proc/self/status (0 where unavailable).
inline double status_mb(std::string const& key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) return std::atof(line.c_str() + key.size()) / 1024.0;
  return 0;
}

/// torch's default init scale: uniform(+-1/sqrt(fan_in)) for weights (rank >= 2), from splitmix64 per element;
/// norms and biases keep their initial values.
template <class M>
void randomize_weights(M& module) {
  std::uint64_t seed = 1;
  nn::for_each_parameter(module, [&](std::string const&, auto& p) {
    if (p.value.rank() < 2) return;
    float* const d = p.value.data();
    Index const n = p.value.numel();
    double const bound = 1.0 / std::sqrt(double(n) / double(p.value.dim(0)));
    std::uint64_t const s = seed++;
    cpu::parallel_for(Context<Cpu>{}, n, true, [&](Index i) {
      std::uint64_t z = s * 0x9E3779B97F4A7C15ull + std::uint64_t(i) + 1;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      z ^= z >> 31;
      d[i] = float((2.0 * double(z >> 11) * 0x1.0p-53 - 1.0) * bound);
    });
  });
}

}  // namespace sdlora::test
