/// @file layout.cuh
/// @brief Kernel and launcher of backend/cuda/layout.hpp. nvcc only. Include <sdlora/cuda_kernels.cuh> instead.
#pragma once

#include <sdlora/backend/cuda/check.hpp>           // SDLORA_CUDA_CHECK
#include <sdlora/backend/cuda/kernels/common.cuh>  // Index
#include <sdlora/backend/cuda/layout.hpp>          // launcher declaration

namespace sdlora::ops::gpu {

inline constexpr int kTransposeTile = 32;
inline constexpr int kTransposeRows = 8;  // threads per block: 32 x 8, each moves 4 elements

// Block (column tile, flattened (matrix, row tile)): reads a 32 x 32 tile of x row-wise and writes it transposed
// row-wise. The tile holds compute-type values (exact for every storage type: 16-bit values widen to float exactly).
template <class T>
__global__ void transpose_last_two_kernel(T* y, T const* x, Index n, Index rows, Index cols, Index row_tiles,
                                          Index grid_y) {
  __shared__ compute_t<T> tile[kTransposeTile][kTransposeTile + 1];  // +1: no bank conflicts on the column read
  Index const m = Index(blockIdx.z) * grid_y + blockIdx.y;           // matrix * row_tiles + row tile
  Index const b = m / row_tiles, r0 = (m % row_tiles) * kTransposeTile, c0 = Index(blockIdx.x) * kTransposeTile;
  bool const active = b < n;  // the last grid z-slice may run past the matrices (no return: __syncthreads below)
  T const* src = x + b * rows * cols;
  T* dst = y + b * rows * cols;
  for (int k = threadIdx.y; k < kTransposeTile; k += kTransposeRows) {
    Index const r = r0 + k, c = c0 + threadIdx.x;
    if (active && r < rows && c < cols) tile[k][threadIdx.x] = load(src[r * cols + c]);
  }
  __syncthreads();
  for (int k = threadIdx.y; k < kTransposeTile; k += kTransposeRows) {
    Index const c = c0 + k, r = r0 + threadIdx.x;
    if (active && r < rows && c < cols) dst[c * rows + r] = store<T>(tile[threadIdx.x][k]);
  }
}

template <class T>
void launch_transpose_last_two(cudaStream_t stream, T* y, T const* x, Index n, Index rows, Index cols) {
  if (n * rows * cols == 0) return;
  Index const row_tiles = (rows + kTransposeTile - 1) / kTransposeTile;
  Index const col_tiles = (cols + kTransposeTile - 1) / kTransposeTile;
  // Grid: x = column tiles, (z, y) = the flattened (matrix, row tile) index, y below 65535.
  Index const flat = n * row_tiles;
  Index const grid_y = flat < 65535 ? flat : 65535, grid_z = (flat + grid_y - 1) / grid_y;
  SDLORA_EXPECTS(col_tiles <= 0x7fffffff && grid_z <= 65535,
                 "[transpose] (" << n << ", " << rows << ", " << cols << ") exceeds the grid limit");
  dim3 const grid{unsigned(col_tiles), unsigned(grid_y), unsigned(grid_z)};
  transpose_last_two_kernel<T>
      <<<grid, dim3(kTransposeTile, kTransposeRows), 0, stream>>>(y, x, n, rows, cols, row_tiles, grid_y);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "transpose");
}

}  // namespace sdlora::ops::gpu

/// Explicit instantiation definition of the transpose launcher for storage type T (in the one kernels .cu file).
#define SDLORA_CUDA_INSTANTIATE_LAYOUT(T) SDLORA_CUDA_LAYOUT_LAUNCHERS(template, T)
