/// @file norm.cuh
/// @brief Kernels and launchers of backend/cuda/norm.hpp. The arithmetic follows backend/cpu/norm.hpp step by step
/// (mean and rstd rounded to T before normalising, the same dx formula), so float results agree with the CPU to
/// rounding. nvcc only. Include <sdlora/cuda_kernels.cuh> instead.
#pragma once

#include <cmath>  // sqrt

#include <sdlora/backend/cuda/check.hpp>           // SDLORA_CUDA_CHECK
#include <sdlora/backend/cuda/kernels/common.cuh>  // block_allreduce, compute_t, load, store, kWarpSize
#include <sdlora/backend/cuda/norm.hpp>            // launcher declarations, GroupNormDims, LayerNormDims
#include <sdlora/ops/activation.hpp>               // fn::Silu, fn::SiluBackward

namespace sdlora::ops::gpu {

inline constexpr int kNormGroupThreads = 256;  // one block per (sample, group): groups are C/G * H * W values
inline constexpr int kNormRowThreads = 128;    // one block per LayerNorm row: D is 320..1280 in SD
inline constexpr int kNormParamThreads = 256;  // threads per block over D for the parameter gradients

/// Mean (double) and 1 / sqrt(biased variance + eps) of x[0, count) by the whole block: two passes, per-thread
/// partials in compute_t<T>, block sums in double.
template <class T>
SDLORA_DEVICE void block_moments(T const* x, Index count, double eps, double* scratch, double& mean, double& rstd) {
  using C = compute_t<T>;
  C acc = 0;
  for (Index i = threadIdx.x; i < count; i += blockDim.x) acc += load(x[i]);
  mean = block_allreduce(double(acc), SumOp{}, threadIdx.x, blockDim.x, scratch) / double(count);
  C const m = C(mean);
  acc = 0;
  for (Index i = threadIdx.x; i < count; i += blockDim.x) {
    C const dev = load(x[i]) - m;
    acc += dev * dev;
  }
  double const var = block_allreduce(double(acc), SumOp{}, threadIdx.x, blockDim.x, scratch) / double(count);
  rstd = 1.0 / sqrt(var + eps);
}

// Block ng = (sample, group) normalises the group's C/G * S values of x (N, C, S) into y.
template <class T>
__global__ void group_norm_forward_kernel(GroupNormDims d, T* y, T* mean, T* rstd, T const* x, T const* gamma,
                                          T const* beta) {
  using C = compute_t<T>;
  __shared__ double scratch[kNormGroupThreads / kWarpSize + 1];
  Index const ng = blockIdx.x, cpg = d.c / d.groups, count = cpg * d.s;
  Index const first = (ng / d.groups) * d.c + (ng % d.groups) * cpg;  // first row of the group in (N*C, S)
  T const* xg = x + first * d.s;
  double m, r;
  block_moments(xg, count, d.eps, scratch, m, r);
  T const tm_store = store<T>(C(m)), tr_store = store<T>(C(r));
  if (threadIdx.x == 0) {
    mean[ng] = tm_store;
    rstd[ng] = tr_store;
  }
  C const tm = load(tm_store), tr = load(tr_store);  // as the CPU: normalise with the values it stores
  T* yg = y + first * d.s;
  for (Index i = threadIdx.x; i < count; i += blockDim.x) {
    Index const ch = (first + i / d.s) % d.c;
    C const gk = gamma ? load(gamma[ch]) : C(1), bk = beta ? load(beta[ch]) : C(0);
    C out = (load(xg[i]) - tm) * tr * gk + bk;
    if (d.silu) out = fn::Silu{}(out);
    yg[i] = store<T>(out);
  }
}

// Block ng = (sample, group): sums[0 or 1][row] = sum over S of dz and dz xhat per channel row, then dx.
template <class T>
__global__ void group_norm_backward_kernel(GroupNormDims d, T* dx, T const* dy, T const* x, T const* mean,
                                           T const* rstd, T const* gamma, T const* beta, double* sums) {
  using C = compute_t<T>;
  __shared__ double scratch[kNormGroupThreads / kWarpSize + 1];
  Index const ng = blockIdx.x, cpg = d.c / d.groups, count = cpg * d.s, rows = d.n * d.c;
  Index const first = (ng / d.groups) * d.c + (ng % d.groups) * cpg;
  C const tm = load(mean[ng]), tr = load(rstd[ng]);
  // dz = dy, or dy * silu'(z) with the pre-activation z recomputed from x and the statistics.
  auto dz_at = [&](Index row, Index i, C xhat) {
    C const g = load(dy[row * d.s + i]);
    if (!d.silu) return g;
    Index const ch = row % d.c;
    C const z = xhat * (gamma ? load(gamma[ch]) : C(1)) + (beta ? load(beta[ch]) : C(0));
    return fn::SiluBackward{}(g, z);
  };
  double m1 = 0, m2 = 0;  // sums over the group of gamma dz and gamma dz xhat
  for (Index k = 0; k < cpg; ++k) {
    Index const row = first + k;
    C a = 0, b = 0;
    for (Index i = threadIdx.x; i < d.s; i += blockDim.x) {
      C const xhat = (load(x[row * d.s + i]) - tm) * tr;
      C const dz = dz_at(row, i, xhat);
      a += dz;
      b += dz * xhat;
    }
    double const sa = block_allreduce(double(a), SumOp{}, threadIdx.x, blockDim.x, scratch);
    double const sb = block_allreduce(double(b), SumOp{}, threadIdx.x, blockDim.x, scratch);
    if (threadIdx.x == 0) {
      sums[row] = sa;
      sums[rows + row] = sb;
    }
    double const gk = gamma ? double(load(gamma[row % d.c])) : 1.0;
    m1 += gk * sa;
    m2 += gk * sb;
  }
  C const t1 = C(m1 / double(count)), t2 = C(m2 / double(count));
  for (Index i = threadIdx.x; i < count; i += blockDim.x) {
    Index const row = first + i / d.s, j = i % d.s;
    C const gk = gamma ? load(gamma[row % d.c]) : C(1);
    C const xhat = (load(x[row * d.s + j]) - tm) * tr;
    dx[row * d.s + j] = store<T>(tr * (gk * dz_at(row, j, xhat) - t1 - xhat * t2));
  }
}

// dgamma (C) += sum over n of sums[1][n, c]; dbeta (C) += sum over n of sums[0][n, c] (fixed order).
template <class T>
__global__ void group_norm_params_kernel(GroupNormDims d, T* dgamma, T* dbeta, double const* sums) {
  using C = compute_t<T>;
  Index const ch = Index(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ch >= d.c) return;
  double a = 0, b = 0;
  for (Index i = 0; i < d.n; ++i) {
    a += sums[i * d.c + ch];
    b += sums[d.n * d.c + i * d.c + ch];
  }
  if (dbeta) dbeta[ch] = store<T>(load(dbeta[ch]) + load(store<T>(C(a))));
  if (dgamma) dgamma[ch] = store<T>(load(dgamma[ch]) + load(store<T>(C(b))));
}

// Block r normalises row r of x (rows, D).
template <class T>
__global__ void layer_norm_forward_kernel(LayerNormDims d, T* y, T* mean, T* rstd, T const* x, T const* gamma,
                                          T const* beta) {
  using C = compute_t<T>;
  __shared__ double scratch[kNormRowThreads / kWarpSize + 1];
  Index const r = blockIdx.x;
  T const* in = x + r * d.d;
  double m, rs;
  block_moments(in, d.d, d.eps, scratch, m, rs);
  T const tm_store = store<T>(C(m)), tr_store = store<T>(C(rs));
  if (threadIdx.x == 0) {
    mean[r] = tm_store;
    rstd[r] = tr_store;
  }
  C const tm = load(tm_store), tr = load(tr_store);
  T* out = y + r * d.d;
  for (Index i = threadIdx.x; i < d.d; i += blockDim.x) {
    C const xhat = (load(in[i]) - tm) * tr;
    out[i] = store<T>((gamma ? xhat * load(gamma[i]) : xhat) + (beta ? load(beta[i]) : C(0)));
  }
}

// Block r: dx row r = rstd * (gamma dy - mean(gamma dy) - xhat * mean(gamma dy xhat)).
template <class T>
__global__ void layer_norm_backward_input_kernel(LayerNormDims d, T* dx, T const* dy, T const* x, T const* mean,
                                                 T const* rstd, T const* gamma) {
  using C = compute_t<T>;
  __shared__ double scratch[kNormRowThreads / kWarpSize + 1];
  Index const r = blockIdx.x;
  T const* in = x + r * d.d;
  T const* g = dy + r * d.d;
  C const tm = load(mean[r]), tr = load(rstd[r]);
  C a = 0, b = 0;
  for (Index i = threadIdx.x; i < d.d; i += blockDim.x) {
    C const xhat = (load(in[i]) - tm) * tr;
    C const gd = gamma ? load(g[i]) * load(gamma[i]) : load(g[i]);
    a += gd;
    b += gd * xhat;
  }
  double const m1 = block_allreduce(double(a), SumOp{}, threadIdx.x, blockDim.x, scratch);
  double const m2 = block_allreduce(double(b), SumOp{}, threadIdx.x, blockDim.x, scratch);
  C const t1 = C(m1 / double(d.d)), t2 = C(m2 / double(d.d));
  T* out = dx + r * d.d;
  for (Index i = threadIdx.x; i < d.d; i += blockDim.x) {
    C const xhat = (load(in[i]) - tm) * tr;
    C const gd = gamma ? load(g[i]) * load(gamma[i]) : load(g[i]);
    out[i] = store<T>(tr * (gd - t1 - xhat * t2));
  }
}

// Thread (column i, chunk q): partials[0][q][i] = sum over the chunk's rows of dy xhat, partials[1][q][i] of dy.
template <class T>
__global__ void layer_norm_partials_kernel(LayerNormDims d, Index chunks, T const* dy, T const* x, T const* mean,
                                           T const* rstd, double* partials) {
  using C = compute_t<T>;
  Index const i = Index(blockIdx.x) * blockDim.x + threadIdx.x, q = blockIdx.y;
  if (i >= d.d) return;
  Index const per = (d.rows + chunks - 1) / chunks, begin = q * per, end = begin + per < d.rows ? begin + per : d.rows;
  C a = 0, b = 0;
  for (Index r = begin; r < end; ++r) {
    C const g = load(dy[r * d.d + i]);
    a += g * ((load(x[r * d.d + i]) - load(mean[r])) * load(rstd[r]));
    b += g;
  }
  partials[q * d.d + i] = double(a);
  partials[(chunks + q) * d.d + i] = double(b);
}

// dgamma (D) += sum over chunks of partials[0]; dbeta (D) += sum of partials[1] (fixed order).
template <class T>
__global__ void layer_norm_params_kernel(LayerNormDims d, Index chunks, T* dgamma, T* dbeta, double const* partials) {
  using C = compute_t<T>;
  Index const i = Index(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= d.d) return;
  double a = 0, b = 0;
  for (Index q = 0; q < chunks; ++q) {
    a += partials[q * d.d + i];
    b += partials[(chunks + q) * d.d + i];
  }
  if (dgamma) dgamma[i] = store<T>(load(dgamma[i]) + load(store<T>(C(a))));
  if (dbeta) dbeta[i] = store<T>(load(dbeta[i]) + load(store<T>(C(b))));
}

inline unsigned norm_grid(char const* op, Index blocks) {
  SDLORA_EXPECTS(blocks <= 0x7fffffff, "[" << op << "] " << blocks << " blocks exceed the grid limit");
  return unsigned(blocks);
}

template <class T>
void launch_group_norm_forward(cudaStream_t stream, GroupNormDims const& d, T* y, T* mean, T* rstd, T const* x,
                               T const* gamma, T const* beta) {
  if (d.n * d.c * d.s == 0) return;
  group_norm_forward_kernel<T>
      <<<norm_grid("group_norm", d.n * d.groups), kNormGroupThreads, 0, stream>>>(d, y, mean, rstd, x, gamma, beta);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "group_norm");
}

template <class T>
void launch_group_norm_backward(cudaStream_t stream, GroupNormDims const& d, T* dx, T* dgamma, T* dbeta, T const* dy,
                                T const* x, T const* mean, T const* rstd, T const* gamma, T const* beta, double* sums) {
  if (d.n * d.c * d.s == 0) return;
  group_norm_backward_kernel<T><<<norm_grid("group_norm.backward", d.n * d.groups), kNormGroupThreads, 0, stream>>>(
      d, dx, dy, x, mean, rstd, gamma, beta, sums);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "group_norm.backward");
  if (dgamma == nullptr && dbeta == nullptr) return;
  group_norm_params_kernel<T><<<norm_grid("group_norm.backward", (d.c + kNormParamThreads - 1) / kNormParamThreads),
                                kNormParamThreads, 0, stream>>>(d, dgamma, dbeta, sums);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "group_norm.backward");
}

template <class T>
void launch_layer_norm_forward(cudaStream_t stream, LayerNormDims const& d, T* y, T* mean, T* rstd, T const* x,
                               T const* gamma, T const* beta) {
  if (d.rows == 0) return;
  layer_norm_forward_kernel<T>
      <<<norm_grid("layer_norm", d.rows), kNormRowThreads, 0, stream>>>(d, y, mean, rstd, x, gamma, beta);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "layer_norm");
}

template <class T>
void launch_layer_norm_backward_input(cudaStream_t stream, LayerNormDims const& d, T* dx, T const* dy, T const* x,
                                      T const* mean, T const* rstd, T const* gamma) {
  if (d.rows == 0) return;
  layer_norm_backward_input_kernel<T>
      <<<norm_grid("layer_norm.backward", d.rows), kNormRowThreads, 0, stream>>>(d, dx, dy, x, mean, rstd, gamma);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "layer_norm.backward");
}

template <class T>
void launch_layer_norm_backward_params(cudaStream_t stream, LayerNormDims const& d, T* dgamma, T* dbeta, T const* dy,
                                       T const* x, T const* mean, T const* rstd, double* partials) {
  if (d.rows == 0 || d.d == 0) return;
  Index const chunks = layer_norm_chunks(d.rows);
  dim3 const grid(norm_grid("layer_norm.backward", (d.d + kNormParamThreads - 1) / kNormParamThreads),
                  unsigned(chunks));
  layer_norm_partials_kernel<T><<<grid, kNormParamThreads, 0, stream>>>(d, chunks, dy, x, mean, rstd, partials);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "layer_norm.backward");
  layer_norm_params_kernel<T><<<grid.x, kNormParamThreads, 0, stream>>>(d, chunks, dgamma, dbeta, partials);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "layer_norm.backward");
}

}  // namespace sdlora::ops::gpu

/// Explicit instantiation definitions of the norm launchers for storage type T (in the one kernels .cu file).
#define SDLORA_CUDA_INSTANTIATE_NORM(T) SDLORA_CUDA_NORM_LAUNCHERS(template, T)
