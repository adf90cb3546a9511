/// @file kernels.cu
/// @brief The test program's one nvcc translation unit: sdlora's kernels plus the tests' own map instance.
#include <sdlora/cuda_kernels.cuh>

#include "cuda/functors.hpp"  // SquarePlusOne

SDLORA_CUDA_INSTANTIATE_MAP(float, ::sdlora::test::SquarePlusOne)
