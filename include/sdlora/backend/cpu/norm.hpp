/// @file norm.hpp
/// @brief CPU kernels of ops/norm.hpp: one task per (sample, group) or per row on the thread pool; statistics and
/// gradient sums accumulate in double. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <algorithm>  // std::min
#include <cmath>      // std::sqrt
#include <type_traits>  // std::is_same_v
#include <vector>     // std::vector

#include <sdlora/backend/cpu/activation.hpp>  // cpu::silu_span, cpu::silu_backward_span
#include <sdlora/backend/cpu/parallel.hpp>    // cpu::parallel_tasks
#include <sdlora/core/backend.hpp>            // Context
#include <sdlora/ops/norm.hpp>                // GroupNorm, LayerNorm, Impl

namespace sdlora::ops {

namespace cpu {

/// The sum in double of n contiguous values, in 16 interleaved partial sums (element i goes to sum i % 16) added in
/// order at the end: independent chains the compiler vectorises, where one running sum waits 4 cycles per value for
/// the previous add (the statistics passes of a VAE's 512 px GroupNorms were latency-bound). A fixed order, so the
/// result depends on neither the thread count nor the ISA.
template <class T, class F>
double lane_sum(T const* x, Index n, F const& term) {
  constexpr Index kLanes = 16;
  double part[kLanes] = {};
  Index i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (Index l = 0; l < kLanes; ++l) part[l] += term(double(x[i + l]));
  for (Index l = 0; i < n; ++i, ++l) part[l] += term(double(x[i]));
  double s = 0;
  for (double p : part) s += p;
  return s;
}

/// Mean and 1 / sqrt(biased variance + eps) of n contiguous values, two passes in double.
template <class T>
void moments(T const* x, Index n, double eps, double& mean, double& rstd) {
  mean = lane_sum(x, n, [](double v) { return v; }) / double(n);
  double const m = mean;
  double const v = lane_sum(x, n, [m](double v) { return (v - m) * (v - m); });
  rstd = 1.0 / std::sqrt(v / double(n) + eps);
}
}  // namespace cpu

template <>
struct Impl<GroupNorm, Cpu> {
  // x is viewed as (N, G, C/G, S) with S the product of the trailing axes.
  template <HostCompute T>
  static void forward(Context<Cpu>& ctx, GroupNorm const& op, TensorView<T, Cpu> y, TensorView<T, Cpu> mean,
                      TensorView<T, Cpu> rstd, TensorView<T const, Cpu> x, TensorView<T const, Cpu> gamma,
                      TensorView<T const, Cpu> beta) {
    Index const n = x.dim(0), c = x.dim(1), g = op.groups, cpg = c / g, s = n * c == 0 ? 0 : x.numel() / (n * c);
    T const* pg = gamma.data();
    T const* pb = beta.data();
    sdlora::cpu::parallel_for(ctx, n * g, x.numel() > 32768, [&](Index ng) {
      Index const first = (ng / g) * c + (ng % g) * cpg;  // first channel row of this group in (N*C, S)
      double m, r;
      cpu::moments(x.data() + first * s, cpg * s, op.eps, m, r);
      mean.data()[ng] = T(m);
      rstd.data()[ng] = T(r);
      T const tm = T(m), tr = T(r);
      for (Index k = 0; k < cpg; ++k) {
        Index const ch = (first + k) % c;
        T const gk = pg ? pg[ch] : T(1), bk = pb ? pb[ch] : T(0);
        T const* in = x.data() + (first + k) * s;
        T* out = y.data() + (first + k) * s;
        if constexpr (std::is_same_v<T, float>) {  // one vectorised pass, the SiLU included
          if (sdlora::cpu::norm_act_row(out, in, s, tm, tr, gk, bk, op.silu)) continue;
        }
        for (Index i = 0; i < s; ++i) out[i] = (in[i] - tm) * tr * gk + bk;
        if (op.silu) cpu::silu_span(out, out, s);
      }
    });
  }

  // With z = xhat * gamma + beta and dz = dy (or dy * silu'(z)):
  //   dx = rstd * (gamma dz - mean_group(gamma dz) - xhat * mean_group(gamma dz xhat)),
  //   dgamma += sum dz xhat, dbeta += sum dz (over N and S).
  template <HostCompute T>
  static void backward(Context<Cpu>& ctx, GroupNorm const& op, TensorView<T, Cpu> dx, TensorView<T, Cpu> dgamma,
                       TensorView<T, Cpu> dbeta, TensorView<T const, Cpu> dy, TensorView<T const, Cpu> x,
                       TensorView<T const, Cpu> mean, TensorView<T const, Cpu> rstd, TensorView<T const, Cpu> gamma,
                       TensorView<T const, Cpu> beta) {
    Index const n = x.dim(0), c = x.dim(1), g = op.groups, cpg = c / g, s = n * c == 0 ? 0 : x.numel() / (n * c);
    T const* pg = gamma.data();
    T const* pb = beta.data();
    std::vector<double> sum_dz(std::size_t(n * c)), sum_dz_xhat(std::size_t(n * c));  // (N, C) each
    sdlora::cpu::parallel_for(ctx, n * g, x.numel() > 32768, [&](Index ng) {
      Index const first = (ng / g) * c + (ng % g) * cpg;
      T const tm = mean.data()[ng], tr = rstd.data()[ng];
      // With SiLU, dz = dy * silu'(z) for the whole group, computed once (vectorised exp); otherwise dz is dy.
      std::vector<T> dz_group(op.silu ? std::size_t(cpg * s) : 0);  // (C/G, S)
      for (Index k = 0; op.silu && k < cpg; ++k) {
        Index const ch = (first + k) % c;
        T const gk = pg ? pg[ch] : T(1), bk = pb ? pb[ch] : T(0);
        T const* in = x.data() + (first + k) * s;
        T* z = dz_group.data() + k * s;
        for (Index i = 0; i < s; ++i) z[i] = (in[i] - tm) * tr * gk + bk;
        cpu::silu_backward_span(z, dy.data() + (first + k) * s, z, s);
      }
      auto dz_row = [&](Index k) { return op.silu ? dz_group.data() + k * s : dy.data() + (first + k) * s; };
      double m1 = 0, m2 = 0;  // sums over the group of gamma dz and gamma dz xhat
      for (Index k = 0; k < cpg; ++k) {
        T const gk = pg ? pg[(first + k) % c] : T(1);
        T const* in = x.data() + (first + k) * s;
        T const* dz = dz_row(k);
        double a = 0, b = 0;
        for (Index i = 0; i < s; ++i) {
          T const xhat = (in[i] - tm) * tr;
          a += double(dz[i]);
          b += double(dz[i]) * double(xhat);
        }
        sum_dz[std::size_t(first + k)] = a;
        sum_dz_xhat[std::size_t(first + k)] = b;
        m1 += double(gk) * a;
        m2 += double(gk) * b;
      }
      double const count = double(cpg * s);
      T const t1 = T(m1 / count), t2 = T(m2 / count);
      for (Index k = 0; k < cpg; ++k) {
        T const gk = pg ? pg[(first + k) % c] : T(1);
        T const* in = x.data() + (first + k) * s;
        T const* dz = dz_row(k);
        T* out = dx.data() + (first + k) * s;
        for (Index i = 0; i < s; ++i) out[i] = tr * (gk * dz[i] - t1 - (in[i] - tm) * tr * t2);
      }
    });
    for (Index ch = 0; ch < c; ++ch) {
      double a = 0, b = 0;
      for (Index i = 0; i < n; ++i) {
        a += sum_dz[std::size_t(i * c + ch)];
        b += sum_dz_xhat[std::size_t(i * c + ch)];
      }
      if (dbeta.data()) dbeta.data()[ch] += T(a);
      if (dgamma.data()) dgamma.data()[ch] += T(b);
    }
  }
};

template <>
struct Impl<LayerNorm, Cpu> {
  template <HostCompute T>
  static void forward(Context<Cpu>& ctx, LayerNorm const& op, TensorView<T, Cpu> y, TensorView<T, Cpu> mean,
                      TensorView<T, Cpu> rstd, TensorView<T const, Cpu> x, TensorView<T const, Cpu> gamma,
                      TensorView<T const, Cpu> beta) {
    Index const d = x.dim(-1), rows = d == 0 ? 0 : x.numel() / d;
    T const* pg = gamma.data();
    T const* pb = beta.data();
    sdlora::cpu::parallel_for(ctx, rows, x.numel() > 32768, [&](Index r) {
      T const* in = x.data() + r * d;
      T* out = y.data() + r * d;
      double m, rs;
      cpu::moments(in, d, op.eps, m, rs);
      mean.data()[r] = T(m);
      rstd.data()[r] = T(rs);
      T const tm = T(m), tr = T(rs);
      for (Index i = 0; i < d; ++i) {
        T const xhat = (in[i] - tm) * tr;
        out[i] = (pg ? xhat * pg[i] : xhat) + (pb ? pb[i] : T(0));
      }
    });
  }

  // dx = rstd * (gamma dy - mean_row(gamma dy) - xhat * mean_row(gamma dy xhat)); dgamma += sum dy xhat,
  // dbeta += sum dy over rows, accumulated in double per block of kRowsPerBlock rows and the blocks summed in order
  // (the same result on any thread count).
  template <HostCompute T>
  static void backward(Context<Cpu>& ctx, LayerNorm const&, TensorView<T, Cpu> dx, TensorView<T, Cpu> dgamma,
                       TensorView<T, Cpu> dbeta, TensorView<T const, Cpu> dy, TensorView<T const, Cpu> x,
                       TensorView<T const, Cpu> mean, TensorView<T const, Cpu> rstd, TensorView<T const, Cpu> gamma) {
    Index const d = x.dim(-1), rows = d == 0 ? 0 : x.numel() / d;
    T const* pg = gamma.data();
    bool const param_grads = dgamma.data() || dbeta.data();
    constexpr Index kRowsPerBlock = 64;
    Index const blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
    std::vector<double> acc(param_grads ? std::size_t(blocks) * 2 * std::size_t(d) : 0);  // (blocks, 2, D)
    Context<Cpu> serial{.num_threads = 1, .isa = ctx.isa};
    sdlora::cpu::parallel_tasks(x.numel() > 32768 ? ctx : serial, blocks, [&](Index blk, int) {
      double* mine = param_grads ? acc.data() + std::size_t(blk) * 2 * std::size_t(d) : nullptr;
      for (Index r = blk * kRowsPerBlock; r < std::min(rows, (blk + 1) * kRowsPerBlock); ++r) {
        T const* in = x.data() + r * d;
        T const* g = dy.data() + r * d;
        T* out = dx.data() + r * d;
        T const tm = mean.data()[r], tr = rstd.data()[r];
        double m1 = 0, m2 = 0;
        for (Index i = 0; i < d; ++i) {
          T const xhat = (in[i] - tm) * tr;
          double const gd = double(pg ? g[i] * pg[i] : g[i]);
          m1 += gd;
          m2 += gd * double(xhat);
          if (mine) {
            mine[i] += double(g[i]) * double(xhat);
            mine[d + i] += double(g[i]);
          }
        }
        T const t1 = T(m1 / double(d)), t2 = T(m2 / double(d));
        for (Index i = 0; i < d; ++i) {
          T const xhat = (in[i] - tm) * tr;
          out[i] = tr * ((pg ? g[i] * pg[i] : g[i]) - t1 - xhat * t2);
        }
      }
    });
    if (!param_grads) return;
    for (Index i = 0; i < d; ++i) {
      double a = 0, b = 0;
      for (Index t = 0; t < blocks; ++t) {
        a += acc[std::size_t(t) * 2 * std::size_t(d) + std::size_t(i)];
        b += acc[std::size_t(t) * 2 * std::size_t(d) + std::size_t(d + i)];
      }
      if (dgamma.data()) dgamma.data()[i] += T(a);
      if (dbeta.data()) dbeta.data()[i] += T(b);
    }
  }
};

}  // namespace sdlora::ops
