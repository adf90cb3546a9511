/// @file attention.cuh
/// @brief Kernels and launchers of backend/cuda/attention.hpp (see its file comment for the algorithm). Tiles live
/// in dynamic shared memory in the compute type (float, or double for double); padding rows and columns of a partial
/// tile hold zeros and masked scores, so every loop runs over the full tile. Causal masks are top-left aligned (key j
/// visible to query i when j <= i), as on the CPU. nvcc only. Include <sdlora/cuda_kernels.cuh> instead.
#pragma once

#include <cmath>   // exp, log
#include <limits>  // std::numeric_limits

#include <sdlora/backend/cuda/attention.hpp>       // launcher declarations, AttentionDims, AttentionRows
#include <sdlora/backend/cuda/check.hpp>           // SDLORA_CUDA_CHECK
#include <sdlora/backend/cuda/kernels/common.cuh>  // compute_t, dynamic_shared, load, store, kWarpSize

namespace sdlora::ops::gpu {

inline constexpr int kAttentionThreads = 128;

/// dst (rows, D) = rows [r0, r0 + n) of head h of x in the compute type, zeros for rows n..rows. All threads.
template <class T, class C>
SDLORA_DEVICE void load_head_tile(C* dst, AttentionRows<T const> x, Index b, Index h, Index r0, Index n, Index rows,
                                  Index d) {
  for (Index e = threadIdx.x; e < rows * d; e += blockDim.x) {
    Index const r = e / d, c = e % d;
    dst[e] = r < n ? C(load(x.row(b, r0 + r)[h * d + c])) : C(0);
  }
}

/// Rows [r0, r0 + n) of head h of x = src (n, D), rounded to T. All threads.
template <class T, class C>
SDLORA_DEVICE void store_head_tile(AttentionRows<T> x, C const* src, Index b, Index h, Index r0, Index n, Index d) {
  for (Index e = threadIdx.x; e < n * d; e += blockDim.x) {
    Index const r = e / d, c = e % d;
    x.row(b, r0 + r)[h * d + c] = store<T>(src[e]);
  }
}

template <class C>
SDLORA_DEVICE C dot_rows(C const* a, C const* b, Index d) {
  C acc = 0;
  for (Index x = 0; x < d; ++x) acc += a[x] * b[x];
  return acc;
}

/// Whether query i0 + r sees key j0 + c (both inside the tile).
SDLORA_DEVICE bool attention_visible(AttentionDims const& g, Index i0, Index r, Index nq, Index j0, Index c, Index nk) {
  return r < nq && c < nk && !(g.causal && j0 + c > i0 + r);
}

// Block (b, h, query tile): online softmax over key tiles.
template <class T>
__global__ void attention_forward_kernel(AttentionDims g, AttentionRows<T> o, T* lse, AttentionRows<T const> q,
                                         AttentionRows<T const> k, AttentionRows<T const> v) {
  using C = compute_t<T>;
  C const inf = std::numeric_limits<C>::infinity();
  Index const bq = g.forward.bq, bk = g.forward.bk, d = g.d, tiles_q = (g.lq + bq - 1) / bq;
  Index const bh = blockIdx.x / tiles_q, b = bh / g.heads, h = bh % g.heads;
  Index const i0 = (blockIdx.x % tiles_q) * bq, nq = bq < g.lq - i0 ? bq : g.lq - i0;
  C* qs = dynamic_shared<C>();  // (bq, D) queries
  C* os = qs + bq * d;          // (bq, D) unnormalised output
  C* kv = os + bq * d;          // (bk, D) keys, then values
  C* s = kv + bk * d;           // (bq, bk) scores, then probabilities
  C* m = s + bq * bk;           // (bq) running row max
  C* l = m + bq;                // (bq) running row sum of exp(s - m)
  C* alpha = l + bq;            // (bq) rescaling of the previous tiles
  C const scale = C(g.scale);

  load_head_tile(qs, q, b, h, i0, nq, bq, d);
  for (Index e = threadIdx.x; e < bq * d; e += blockDim.x) os[e] = 0;
  for (Index r = threadIdx.x; r < bq; r += blockDim.x) {
    m[r] = -inf;
    l[r] = 0;
  }
  Index const kend = g.causal ? (g.lk < i0 + nq ? g.lk : i0 + nq) : g.lk;
  for (Index j0 = 0; j0 < kend; j0 += bk) {
    Index const nk = bk < kend - j0 ? bk : kend - j0;
    __syncthreads();  // the previous tile's values are no longer read
    load_head_tile(kv, k, b, h, j0, nk, bk, d);
    __syncthreads();
    for (Index e = threadIdx.x; e < bq * bk; e += blockDim.x) {
      Index const r = e / bk, c = e % bk;
      s[e] = attention_visible(g, i0, r, nq, j0, c, nk) ? scale * dot_rows(qs + r * d, kv + c * d, d) : -inf;
    }
    __syncthreads();
    load_head_tile(kv, v, b, h, j0, nk, bk, d);  // the scores are complete: the keys may be overwritten
    for (Index r = threadIdx.x; r < bq; r += blockDim.x) {
      C* sr = s + r * bk;
      C m_new = m[r];
      for (Index c = 0; c < bk; ++c) m_new = sr[c] > m_new ? sr[c] : m_new;
      if (m_new == -inf) {  // nothing visible in this row yet (or a padding row)
        for (Index c = 0; c < bk; ++c) sr[c] = 0;
        alpha[r] = 1;
        continue;
      }
      C sum = 0;
      for (Index c = 0; c < bk; ++c) {
        sr[c] = exp(sr[c] - m_new);  // exp(-inf) = 0 for masked and padding columns
        sum += sr[c];
      }
      alpha[r] = exp(m[r] - m_new);  // 0 on the first visible tile
      l[r] = l[r] * alpha[r] + sum;
      m[r] = m_new;
    }
    __syncthreads();
    for (Index e = threadIdx.x; e < bq * d; e += blockDim.x) {
      Index const r = e / d, x = e % d;
      C acc = os[e] * alpha[r];
      for (Index c = 0; c < bk; ++c) acc += s[r * bk + c] * kv[c * d + x];
      os[e] = acc;
    }
  }
  __syncthreads();
  for (Index e = threadIdx.x; e < nq * d; e += blockDim.x) {
    Index const r = e / d;
    os[e] = l[r] > 0 ? os[e] / l[r] : C(0);
  }
  __syncthreads();
  store_head_tile(o, os, b, h, i0, nq, d);
  for (Index r = threadIdx.x; r < nq; r += blockDim.x)
    lse[(b * g.heads + h) * g.lq + i0 + r] = store<T>(m[r] + log(l[r]));
}

// One warp per (b, h, i): delta = sum over D of dout * o, in double.
template <class T>
__global__ void attention_delta_kernel(AttentionDims g, AttentionRows<T const> o, AttentionRows<T const> dout,
                                       double* delta) {
  Index const warps = blockDim.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  Index const row = Index(blockIdx.x) * warps + threadIdx.x / kWarpSize;
  if (row >= g.batch * g.heads * g.lq) return;  // whole warps leave together
  Index const i = row % g.lq, bh = row / g.lq, b = bh / g.heads, h = bh % g.heads;
  T const* orow = o.row(b, i) + h * g.d;
  T const* drow = dout.row(b, i) + h * g.d;
  double acc = 0;
  for (Index x = lane; x < g.d; x += kWarpSize) acc += double(load(orow[x])) * double(load(drow[x]));
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
  if (lane == 0) delta[row] = acc;
}

/// p (bq, bk) and ds (bq, bk) of a (query tile, key tile) pair: P = exp(scale q k^T - lse), dS = P (dout v^T - D);
/// zeros where masked or padding. `p` may be null (only dS is kept). All threads.
template <class C>
SDLORA_DEVICE void attention_probabilities(AttentionDims const& g, AttentionTile t, C const* qs, C const* dos,
                                           C const* ks, C const* vs, C const* lse_s, C const* delta_s, Index i0,
                                           Index nq, Index j0, Index nk, C* p, C* ds) {
  C const scale = C(g.scale);
  for (Index e = threadIdx.x; e < t.bq * t.bk; e += blockDim.x) {
    Index const r = e / t.bk, c = e % t.bk;
    C pv = 0, dsv = 0;
    if (attention_visible(g, i0, r, nq, j0, c, nk)) {
      pv = exp(scale * dot_rows(qs + r * g.d, ks + c * g.d, g.d) - lse_s[r]);
      dsv = pv * (dot_rows(dos + r * g.d, vs + c * g.d, g.d) - delta_s[r]);
    }
    if (p) p[e] = pv;
    ds[e] = dsv;
  }
}

/// lse_s, delta_s (bq) of query rows [i0, i0 + nq) (zeros beyond). All threads.
template <class T, class C>
SDLORA_DEVICE void load_row_stats(AttentionDims const& g, C* lse_s, C* delta_s, T const* lse, double const* delta,
                                  Index b, Index h, Index i0, Index nq, Index bq) {
  for (Index r = threadIdx.x; r < bq; r += blockDim.x) {
    Index const at = (b * g.heads + h) * g.lq + i0 + r;
    lse_s[r] = r < nq ? C(load(lse[at])) : C(0);
    delta_s[r] = r < nq ? C(delta[at]) : C(0);
  }
}

// Block (b, h, key tile): dk, dv of the tile's keys, summed over the query tiles that see them.
template <class T>
__global__ void attention_backward_kv_kernel(AttentionDims g, AttentionRows<T> dk, AttentionRows<T> dv,
                                             AttentionRows<T const> q, AttentionRows<T const> k,
                                             AttentionRows<T const> v, T const* lse, AttentionRows<T const> dout,
                                             double const* delta) {
  using C = compute_t<T>;
  AttentionTile const t = g.backward_kv;
  Index const d = g.d, tiles_k = (g.lk + t.bk - 1) / t.bk;
  Index const bh = blockIdx.x / tiles_k, b = bh / g.heads, h = bh % g.heads;
  Index const j0 = (blockIdx.x % tiles_k) * t.bk, nk = t.bk < g.lk - j0 ? t.bk : g.lk - j0;
  C* qs = dynamic_shared<C>();  // (bq, D)
  C* dos = qs + t.bq * d;       // (bq, D)
  C* ks = dos + t.bq * d;       // (bk, D)
  C* vs = ks + t.bk * d;        // (bk, D)
  C* dks = vs + t.bk * d;       // (bk, D)
  C* dvs = dks + t.bk * d;      // (bk, D)
  C* p = dvs + t.bk * d;        // (bq, bk)
  C* ds = p + t.bq * t.bk;      // (bq, bk)
  C* lse_s = ds + t.bq * t.bk;  // (bq)
  C* delta_s = lse_s + t.bq;    // (bq)
  C const scale = C(g.scale);

  load_head_tile(ks, k, b, h, j0, nk, t.bk, d);
  load_head_tile(vs, v, b, h, j0, nk, t.bk, d);
  for (Index e = threadIdx.x; e < t.bk * d; e += blockDim.x) dks[e] = dvs[e] = 0;
  // Causal: query tiles that end before key j0 see none of these keys.
  for (Index i0 = g.causal ? j0 / t.bq * t.bq : 0; i0 < g.lq; i0 += t.bq) {
    Index const nq = t.bq < g.lq - i0 ? t.bq : g.lq - i0;
    __syncthreads();  // the previous query tile is no longer read
    load_head_tile(qs, q, b, h, i0, nq, t.bq, d);
    load_head_tile(dos, dout, b, h, i0, nq, t.bq, d);
    load_row_stats(g, lse_s, delta_s, lse, delta, b, h, i0, nq, t.bq);
    __syncthreads();
    attention_probabilities(g, t, qs, dos, ks, vs, lse_s, delta_s, i0, nq, j0, nk, p, ds);
    __syncthreads();
    for (Index e = threadIdx.x; e < t.bk * d; e += blockDim.x) {
      Index const c = e / d, x = e % d;
      C av = 0, ak = 0;
      for (Index r = 0; r < t.bq; ++r) {
        av += p[r * t.bk + c] * dos[r * d + x];
        ak += ds[r * t.bk + c] * qs[r * d + x];
      }
      dvs[e] += av;
      dks[e] += scale * ak;
    }
  }
  __syncthreads();
  store_head_tile(dk, dks, b, h, j0, nk, d);
  store_head_tile(dv, dvs, b, h, j0, nk, d);
}

// Block (b, h, query tile): dq of the tile's queries, summed over the key tiles they see.
template <class T>
__global__ void attention_backward_q_kernel(AttentionDims g, AttentionRows<T> dq, AttentionRows<T const> q,
                                            AttentionRows<T const> k, AttentionRows<T const> v, T const* lse,
                                            AttentionRows<T const> dout, double const* delta) {
  using C = compute_t<T>;
  AttentionTile const t = g.backward_q;
  Index const d = g.d, tiles_q = (g.lq + t.bq - 1) / t.bq;
  Index const bh = blockIdx.x / tiles_q, b = bh / g.heads, h = bh % g.heads;
  Index const i0 = (blockIdx.x % tiles_q) * t.bq, nq = t.bq < g.lq - i0 ? t.bq : g.lq - i0;
  C* qs = dynamic_shared<C>();  // (bq, D)
  C* dos = qs + t.bq * d;       // (bq, D)
  C* dqs = dos + t.bq * d;      // (bq, D)
  C* ks = dqs + t.bq * d;       // (bk, D)
  C* vs = ks + t.bk * d;        // (bk, D)
  C* ds = vs + t.bk * d;        // (bq, bk)
  C* lse_s = ds + t.bq * t.bk;  // (bq)
  C* delta_s = lse_s + t.bq;    // (bq)
  C const scale = C(g.scale);

  load_head_tile(qs, q, b, h, i0, nq, t.bq, d);
  load_head_tile(dos, dout, b, h, i0, nq, t.bq, d);
  load_row_stats(g, lse_s, delta_s, lse, delta, b, h, i0, nq, t.bq);
  for (Index e = threadIdx.x; e < t.bq * d; e += blockDim.x) dqs[e] = 0;
  Index const kend = g.causal ? (g.lk < i0 + nq ? g.lk : i0 + nq) : g.lk;
  for (Index j0 = 0; j0 < kend; j0 += t.bk) {
    Index const nk = t.bk < kend - j0 ? t.bk : kend - j0;
    __syncthreads();  // the previous key tile is no longer read
    load_head_tile(ks, k, b, h, j0, nk, t.bk, d);
    load_head_tile(vs, v, b, h, j0, nk, t.bk, d);
    __syncthreads();
    attention_probabilities<C>(g, t, qs, dos, ks, vs, lse_s, delta_s, i0, nq, j0, nk, nullptr, ds);
    __syncthreads();
    for (Index e = threadIdx.x; e < t.bq * d; e += blockDim.x) {
      Index const r = e / d, x = e % d;
      C acc = 0;
      for (Index c = 0; c < t.bk; ++c) acc += ds[r * t.bk + c] * ks[c * d + x];
      dqs[e] += scale * acc;
    }
  }
  __syncthreads();
  store_head_tile(dq, dqs, b, h, i0, nq, d);
}

inline unsigned attention_grid(char const* op, Index blocks) {
  SDLORA_EXPECTS(blocks <= 0x7fffffff, "[" << op << "] " << blocks << " blocks exceed the grid limit");
  return unsigned(blocks);
}

template <class T>
void launch_attention_forward(cudaStream_t stream, AttentionDims const& g, AttentionRows<T> o, T* lse,
                              AttentionRows<T const> q, AttentionRows<T const> k, AttentionRows<T const> v) {
  if (g.batch * g.heads * g.lq == 0) return;
  std::size_t const smem = kAttentionForwardSmem.bytes(g.forward, g.d, sizeof(compute_t<T>));
  Index const blocks = g.batch * g.heads * ((g.lq + g.forward.bq - 1) / g.forward.bq);
  attention_forward_kernel<T>
      <<<attention_grid("attention", blocks), kAttentionThreads, smem, stream>>>(g, o, lse, q, k, v);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "attention");
}

template <class T>
void launch_attention_backward(cudaStream_t stream, AttentionDims const& g, AttentionRows<T> dq, AttentionRows<T> dk,
                               AttentionRows<T> dv, AttentionRows<T const> q, AttentionRows<T const> k,
                               AttentionRows<T const> v, AttentionRows<T const> o, T const* lse,
                               AttentionRows<T const> dout, double* delta) {
  Index const rows = g.batch * g.heads * g.lq;
  if (rows == 0) return;
  Index const warps = kAttentionThreads / kWarpSize;
  attention_delta_kernel<T>
      <<<attention_grid("attention.backward", (rows + warps - 1) / warps), kAttentionThreads, 0, stream>>>(g, o, dout,
                                                                                                           delta);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "attention.backward");

  std::size_t const elem = sizeof(compute_t<T>);
  Index const kv_blocks = g.batch * g.heads * ((g.lk + g.backward_kv.bk - 1) / g.backward_kv.bk);
  attention_backward_kv_kernel<T>
      <<<attention_grid("attention.backward", kv_blocks), kAttentionThreads,
         kAttentionBackwardKvSmem.bytes(g.backward_kv, g.d, elem), stream>>>(g, dk, dv, q, k, v, lse, dout, delta);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "attention.backward");

  Index const q_blocks = g.batch * g.heads * ((g.lq + g.backward_q.bq - 1) / g.backward_q.bq);
  attention_backward_q_kernel<T>
      <<<attention_grid("attention.backward", q_blocks), kAttentionThreads,
         kAttentionBackwardQSmem.bytes(g.backward_q, g.d, elem), stream>>>(g, dq, q, k, v, lse, dout, delta);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "attention.backward");
}

}  // namespace sdlora::ops::gpu

/// Explicit instantiation definitions of the attention launchers for storage type T (in the one kernels .cu file).
#define SDLORA_CUDA_INSTANTIATE_ATTENTION(T) SDLORA_CUDA_ATTENTION_LAUNCHERS(template, T)
