/// @file cuda.hpp
/// @brief The umbrella header of the CUDA backend: Tensor<T, Cuda> memory (caching allocator, to_device, to_host),
/// Context<Cuda>, error checks, and ops::Impl<Op, Cuda> for gemm, map/zip, reductions, bias and the layer ops (conv,
/// norms, softmax, attention, GELU/GEGLU, SiLU, upsampling, timestep embedding, embedding, dropout, concat, layout).
/// Host C++: compiles with g++ or nvcc and needs the CUDA toolkit headers (cuda_runtime_api.h, cublas_v2.h,
/// cublasLt.h), never Eigen.
///
/// Link CUDA::cudart, CUDA::cublas and CUDA::cublasLt (the sdlora::cuda CMake target does), and compile exactly one
/// .cu file of your program with nvcc that includes <sdlora/cuda_kernels.cuh>: it defines the kernels these ops call.
/// <sdlora/sdlora.hpp> (the CPU backend) never includes this header.
#pragma once

#include <sdlora/backend/cuda/check.hpp>    // CudaError, SDLORA_CUDA_CHECK, SDLORA_CUBLAS_CHECK
#include <sdlora/backend/cuda/memory.hpp>   // BackendMemory<Cuda>, CudaCachingAllocator, to_device, to_host
#include <sdlora/backend/cuda/context.hpp>  // Context<Cuda>
#include <sdlora/backend/cuda/launch.hpp>   // grid geometry

#include <sdlora/backend/cuda/bias.hpp>         // Impl<Bias, Cuda>
#include <sdlora/backend/cuda/elementwise.hpp>  // Impl<Map, Cuda>, Impl<Zip, Cuda>
#include <sdlora/backend/cuda/gemm.hpp>         // Impl<Gemm, Cuda>
#include <sdlora/backend/cuda/reduce.hpp>       // Impl<Reduce, Cuda>
#include <sdlora/backend/cuda/update.hpp>       // Impl<Update, Cuda> (the optimizers' AdamW / SGD rules)

// Layer ops
#include <sdlora/backend/cuda/activation.hpp>  // Impl<Silu, Cuda>
#include <sdlora/backend/cuda/attention.hpp>   // Impl<Attention, Cuda>
#include <sdlora/backend/cuda/concat.hpp>      // Impl<ConcatChannels, Cuda>
#include <sdlora/backend/cuda/conv.hpp>        // Impl<Conv2d, Cuda>
#include <sdlora/backend/cuda/dropout.hpp>     // Impl<Dropout, Cuda>
#include <sdlora/backend/cuda/embedding.hpp>   // Impl<Embedding, Cuda>
#include <sdlora/backend/cuda/gelu.hpp>        // Impl<Geglu, Cuda>; gelu / quick_gelu map and zip instances
#include <sdlora/backend/cuda/layout.hpp>      // Impl<TransposeLastTwo, Cuda>
#include <sdlora/backend/cuda/norm.hpp>        // Impl<GroupNorm, Cuda>, Impl<LayerNorm, Cuda>
#include <sdlora/backend/cuda/softmax.hpp>     // Impl<Softmax, Cuda>
#include <sdlora/backend/cuda/timestep.hpp>    // Impl<TimestepSinusoidal, Cuda>
#include <sdlora/backend/cuda/upsample.hpp>    // Impl<UpsampleNearest, Cuda>
