/// @file launch.hpp
/// @brief Launch geometry shared by the host side of CUDA ops and their kernels (grid-stride loops). Host C++.
/// Include <sdlora/cuda.hpp> instead.
#pragma once

#include <algorithm>  // std::min

#include <sdlora/core/shape.hpp>  // Index

namespace sdlora::ops::gpu {

inline constexpr int kBlockSize = 256;        // threads per block of the elementwise and reduction kernels
inline constexpr Index kMaxGridSize = 65535;  // grid-stride loops cover larger tensors
inline constexpr Index kMaxReduceBlocks = 1024;  // per-block partials of a reduction copied to the host: 8 KiB

/// Blocks for a grid-stride loop over n > 0 elements.
inline int grid_size(Index n) { return int(std::min<Index>((n + kBlockSize - 1) / kBlockSize, kMaxGridSize)); }
/// Blocks (and per-block partials) of a whole-tensor reduction over n > 0 elements.
inline int reduce_blocks(Index n) { return int(std::min<Index>(grid_size(n), kMaxReduceBlocks)); }

}  // namespace sdlora::ops::gpu

/// Applies M to every storage type the CUDA kernels are instantiated for (explicit instantiation lists).
#define SDLORA_CUDA_STORAGE_TYPES(M) M(float) M(double) M(::sdlora::half) M(::sdlora::bfloat16)
