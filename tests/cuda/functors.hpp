/// @file functors.hpp
/// @brief A functor of the tests' own, to show (and test) how a program adds a map instance beyond the shipped ones:
/// declared here for the g++ test files, instantiated in kernels.cu with SDLORA_CUDA_INSTANTIATE_MAP.
#pragma once

#include <sdlora/core/config.hpp>  // SDLORA_HOST_DEVICE
#include <sdlora/cuda.hpp>         // SDLORA_CUDA_DECLARE_MAP

namespace sdlora::test {
/// x * x + 1: written once, run by the CPU loop and the CUDA kernel.
struct SquarePlusOne {
  template <class T>
  SDLORA_HOST_DEVICE T operator()(T x) const {
    return x * x + T(1);
  }
};
}  // namespace sdlora::test

SDLORA_CUDA_DECLARE_MAP(float, ::sdlora::test::SquarePlusOne)
