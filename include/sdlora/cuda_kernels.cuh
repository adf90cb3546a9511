/// @file cuda_kernels.cuh
/// @brief The kernels of the CUDA backend and the explicit instantiations of every launcher that sdlora's ops use.
/// Include it from exactly ONE .cu file of your program, compiled by nvcc (e.g. `sdlora_kernels.cu` containing only
/// this include); everything else includes <sdlora/cuda.hpp> and may be compiled by g++. Two .cu files including it
/// define the same instances twice (a link error).
///
/// Instances of your own (a functor for map/zip, a new type) go after the include, at global scope:
///   #include <sdlora/cuda_kernels.cuh>
///   SDLORA_CUDA_INSTANTIATE_MAP(float, my::Softplus)
#pragma once

#if !defined(__CUDACC__)
#error "sdlora/cuda_kernels.cuh defines __global__ functions: include it from one .cu file compiled by nvcc, and <sdlora/cuda.hpp> everywhere else"
#endif

#include <sdlora/cuda.hpp>  // the host side: Impl<Op, Cuda> and the launcher declarations

#include <sdlora/backend/cuda/kernels/bias.cuh>         // launch_bias_add, launch_bias_grad
#include <sdlora/backend/cuda/kernels/elementwise.cuh>  // launch_map, launch_zip
#include <sdlora/backend/cuda/kernels/reduce.cuh>       // launch_reduce

// The instances declared `extern template` by the backend/cuda/*.hpp headers.
SDLORA_CUDA_ELEMENTWISE_INSTANCES(SDLORA_CUDA_INSTANTIATE_MAP, SDLORA_CUDA_INSTANTIATE_ZIP)
SDLORA_CUDA_INSTANTIATE_REDUCE(float)
SDLORA_CUDA_INSTANTIATE_REDUCE(double)
SDLORA_CUDA_INSTANTIATE_REDUCE(::sdlora::half)
SDLORA_CUDA_INSTANTIATE_REDUCE(::sdlora::bfloat16)
SDLORA_CUDA_INSTANTIATE_BIAS(float)
SDLORA_CUDA_INSTANTIATE_BIAS(double)
SDLORA_CUDA_INSTANTIATE_BIAS(::sdlora::half)
SDLORA_CUDA_INSTANTIATE_BIAS(::sdlora::bfloat16)
