/// @file cuda-kernels.cu
/// @brief The programs' one nvcc translation unit in a build with -DSDLORA_CUDA=ON (--device cuda in sdlora-generate
/// and sdlora-train): the CUDA backend's kernels and launcher instances, compiled once and linked into both.
#include <sdlora/cuda_kernels.cuh>
