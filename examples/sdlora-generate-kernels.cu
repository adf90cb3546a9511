/// @file sdlora-generate-kernels.cu
/// @brief sdlora-generate's one nvcc translation unit in a build with -DSDLORA_CUDA=ON (--device cuda): the CUDA
/// backend's kernels and launcher instances.
#include <sdlora/cuda_kernels.cuh>
