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
#include <sdlora/backend/cuda/kernels/update.cuh>       // launch_update

// Layer ops
#include <sdlora/backend/cuda/kernels/attention.cuh>  // launch_attention_forward, launch_attention_backward
#include <sdlora/backend/cuda/kernels/conv.cuh>       // launch_im2col, launch_col2im
#include <sdlora/backend/cuda/kernels/dropout.cuh>    // launch_dropout
#include <sdlora/backend/cuda/kernels/embedding.cuh>  // launch_embedding_forward, launch_embedding_backward
#include <sdlora/backend/cuda/kernels/gelu.cuh>       // launch_geglu_forward, launch_geglu_backward
#include <sdlora/backend/cuda/kernels/layout.cuh>     // launch_transpose_last_two
#include <sdlora/backend/cuda/kernels/norm.cuh>       // GroupNorm, LayerNorm launchers
#include <sdlora/backend/cuda/kernels/softmax.cuh>    // launch_softmax_forward, launch_softmax_backward
#include <sdlora/backend/cuda/kernels/timestep.cuh>   // launch_timestep_sinusoidal
#include <sdlora/backend/cuda/kernels/upsample.cuh>   // launch_upsample_nearest_forward / _backward

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
SDLORA_CUDA_UPDATE_INSTANCES(SDLORA_CUDA_INSTANTIATE_UPDATE)

// Layer ops: every storage type (float, double, half, bfloat16).
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_INSTANTIATE_ATTENTION)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_INSTANTIATE_CONV)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_INSTANTIATE_DROPOUT)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_INSTANTIATE_EMBEDDING)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_INSTANTIATE_GEGLU)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_INSTANTIATE_GELU)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_INSTANTIATE_LAYOUT)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_INSTANTIATE_NORM)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_INSTANTIATE_SILU)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_INSTANTIATE_SOFTMAX)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_INSTANTIATE_TIMESTEP)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_INSTANTIATE_UPSAMPLE)

// Functors of the model layer that run through map on Cuda: the VAE's posterior sample (the generic pipeline's img2img
// encode). Declared by nothing: a g++ translation unit calling them leaves launch_map<T, F> undefined for these.
#include <sdlora/models/vae.hpp>  // models::LatentDistribution::LogvarToStd
namespace sdlora::ops::gpu::instances {
template <class T>
using VaeSample = typename ::sdlora::models::LatentDistribution<T, ::sdlora::Cuda>::LogvarToStd;  // one macro arg
}  // namespace sdlora::ops::gpu::instances
#define SDLORA_CUDA_INSTANTIATE_VAE_SAMPLE(T) \
  SDLORA_CUDA_INSTANTIATE_MAP(T, ::sdlora::ops::gpu::instances::VaeSample<T>)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_INSTANTIATE_VAE_SAMPLE)
