/// @file main.cpp
/// @brief Catch2 main of the CUDA tests: exits 77 (ctest's SKIP_RETURN_CODE) when no CUDA device is usable, since
/// Catch2 v2 has no SKIP().
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>  // std::fprintf

#include <cuda_runtime_api.h>  // cudaGetDeviceCount

int main(int argc, char** argv) {
  int devices = 0;
  cudaError_t const status = cudaGetDeviceCount(&devices);
  if (status != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "cuda_test: no usable CUDA device (%s): skipped\n",
                 status != cudaSuccess ? cudaGetErrorString(status) : "0 devices");
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
