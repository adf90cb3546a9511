/// @file numerics.hpp
/// @brief The exact arithmetic diffusers' schedulers inherit from torch and numpy: torch.linspace in float32, torch's
/// cumprod (double accumulator), numpy's linspace / arange / round / interp in double, the Karras ramp and
/// `_sigma_to_t`. Include <sdlora/sdlora.hpp> instead.
///
/// Every function names the Python expression it reproduces. Float32 results are rounded after every operation, as
/// torch does between tensor ops; the header turns off GCC's fp-contraction so that `a * b + c` is never fused on its
/// own (the fusions torch's build performs are written with std::fma).
#pragma once

#include <algorithm>  // std::clamp, std::max, std::reverse
#include <cmath>      // std::fma, std::sqrt, std::log, std::pow, std::cos, std::nearbyint, std::ceil
#include <cstdint>    // std::int64_t
#include <numbers>    // std::numbers::pi
#include <vector>     // std::vector

#include <sdlora/schedulers/config.hpp>  // SchedulerConfig, BetaSchedule

#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#define SDLORA_SCHEDULERS_POP_OPTIONS 1
#endif

namespace sdlora::schedulers::numerics {

/// `torch.linspace(start, end, n, dtype=torch.float32)` on the CPU: step = (end - start) / (n - 1) in float; the first
/// half is start + step * i, the second end - step * (n - 1 - i), each one fused multiply-add (torch's build contracts
/// them; checked bit for bit against torch 2.15).
inline std::vector<float> torch_linspace_f32(double start_d, double end_d, int n) {
  std::vector<float> out(static_cast<std::size_t>(n));
  if (n == 1) {
    out[0] = float(start_d);
    return out;
  }
  float const start = float(start_d);
  float const end = float(end_d);
  float const step = (end - start) / float(n - 1);
  int const halfway = n / 2;
  for (int i = 0; i < n; ++i)
    out[std::size_t(i)] = i < halfway ? std::fma(step, float(i), start) : std::fma(-step, float(n - 1 - i), end);
  return out;
}

/// `torch.cumprod(x, 0)` for float32 on the CPU: the running product is kept in double (at::acc_type<float>) and
/// rounded to float at each output.
inline std::vector<float> torch_cumprod_f32(std::vector<float> const& x) {
  std::vector<float> out(x.size());
  double acc = 1.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    acc *= double(x[i]);
    out[i] = float(acc);
  }
  return out;
}

/// `np.linspace(start, stop, n)` in double: start + i * ((stop - start) / (n - 1)), the last element = stop.
inline std::vector<double> np_linspace(double start, double stop, int n) {
  std::vector<double> y(std::size_t(std::max(n, 0)));
  if (n == 1) y[0] = start;
  if (n < 2) return y;
  double const step = (stop - start) / double(n - 1);
  for (int i = 0; i < n; ++i) y[std::size_t(i)] = double(i) * step + start;
  y.back() = stop;
  return y;
}

/// `np.arange(start, stop, step)` for doubles: length ceil((stop - start) / step), values a0 + i * (a1 - a0) with
/// a0 = start, a1 = start + step (numpy's fill rule).
inline std::vector<double> np_arange(double start, double stop, double step) {
  double const len_d = std::ceil((stop - start) / step);
  std::vector<double> y(std::size_t(len_d > 0 ? len_d : 0));
  double const delta = (start + step) - start;
  for (std::size_t i = 0; i < y.size(); ++i) y[i] = i == 0 ? start : i == 1 ? start + step : start + double(i) * delta;
  return y;
}

/// `np.round` (half to even, as rint in the default rounding mode).
inline double np_round(double x) { return std::nearbyint(x); }

/// `np.interp(x, np.arange(len(fp)), fp)` in double (numpy's loop: exact hits return fp[j], otherwise
/// slope * (x - j) + fp[j] with slope = (fp[j + 1] - fp[j]) / 1).
inline double np_interp_arange(double x, std::vector<float> const& fp) {
  std::size_t const n = fp.size();
  if (x <= 0) return double(fp[0]);
  if (x >= double(n - 1)) return double(fp[n - 1]);
  auto const j = std::size_t(x);  // floor for x in (0, n - 1)
  if (double(j) == x) return double(fp[j]);
  double const slope = (double(fp[j + 1]) - double(fp[j])) / 1.0;
  return slope * (x - double(j)) + double(fp[j]);
}

/// `betas_for_alpha_bar(n)` (cosine, max_beta 0.999): Python float math, then float32.
inline std::vector<float> betas_for_alpha_bar_cosine(int n) {
  auto alpha_bar = [](double t) {
    double const c = std::cos((t + 0.008) / 1.008 * std::numbers::pi / 2);
    return c * c;
  };
  std::vector<float> betas(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    double const t1 = double(i) / n;
    double const t2 = double(i + 1) / n;
    betas[std::size_t(i)] = float(std::min(1 - alpha_bar(t2) / alpha_bar(t1), 0.999));
  }
  return betas;
}

/// `rescale_zero_terminal_snr(betas)` (arXiv 2305.08891, Algorithm 1) in float32 as diffusers' torch code.
inline std::vector<float> rescale_zero_terminal_snr(std::vector<float> const& betas) {
  std::size_t const n = betas.size();
  std::vector<float> alphas(n);
  for (std::size_t i = 0; i < n; ++i) alphas[i] = 1.0f - betas[i];
  std::vector<float> s = torch_cumprod_f32(alphas);
  for (float& v : s) v = std::sqrt(v);
  float const s0 = s[0];
  float const st = s[n - 1];
  for (float& v : s) v -= st;
  float const scale = s0 / (s0 - st);
  for (float& v : s) v *= scale;
  std::vector<float> bar(n);
  for (std::size_t i = 0; i < n; ++i) bar[i] = s[i] * s[i];
  std::vector<float> out(n);
  out[0] = 1.0f - bar[0];
  for (std::size_t i = 1; i < n; ++i) out[i] = 1.0f - bar[i] / bar[i - 1];
  return out;
}

/// The `betas` tensor of every scheduler's `__init__` (float32).
inline std::vector<float> make_betas(SchedulerConfig const& c) {
  std::vector<float> betas;
  int const n = c.num_train_timesteps;
  if (c.trained_betas) {
    for (double b : *c.trained_betas) betas.push_back(float(b));
  } else if (c.beta_schedule == BetaSchedule::Linear) {
    betas = torch_linspace_f32(c.beta_start, c.beta_end, n);
  } else if (c.beta_schedule == BetaSchedule::ScaledLinear) {
    // torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n) ** 2: Python's pow, then float32 x * x.
    betas = torch_linspace_f32(std::pow(c.beta_start, 0.5), std::pow(c.beta_end, 0.5), n);
    for (float& b : betas) b = b * b;
  } else {
    betas = betas_for_alpha_bar_cosine(n);
  }
  if (c.rescale_betas_zero_snr) betas = rescale_zero_terminal_snr(betas);
  return betas;
}

/// `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5` in float32, increasing with t.
inline std::vector<float> sigmas_from_alphas_cumprod(std::vector<float> const& ac) {
  std::vector<float> s(ac.size());
  for (std::size_t i = 0; i < ac.size(); ++i) s[i] = std::sqrt((1.0f - ac[i]) / ac[i]);
  return s;
}

/// `_convert_to_karras(in_sigmas, n)`: rho = 7 ramp between sigma_max and sigma_min, in double.
inline std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int n) {
  double const rho = 7.0;
  std::vector<double> const ramp = np_linspace(0, 1, n);
  double const min_inv_rho = std::pow(sigma_min, 1 / rho);
  double const max_inv_rho = std::pow(sigma_max, 1 / rho);
  std::vector<double> out(ramp.size());
  for (std::size_t i = 0; i < ramp.size(); ++i)
    out[i] = std::pow(max_inv_rho + ramp[i] * (min_inv_rho - max_inv_rho), rho);
  return out;
}

/// `np.log(sigmas)` for the float32 training sigmas (the log_sigmas of `_sigma_to_t`), correctly rounded to float.
/// numpy's SIMD float32 log is not always correctly rounded (it differs from this in the last bit for ~20% of SD's
/// sigmas on AVX512 machines); the resulting timesteps differ by at most one float32 ulp.
inline std::vector<float> log_sigmas_f32(std::vector<float> const& sigmas) {
  std::vector<float> out(sigmas.size());
  for (std::size_t i = 0; i < sigmas.size(); ++i) out[i] = float(std::log(double(sigmas[i])));
  return out;
}

/// `_sigma_to_t(sigma, log_sigmas)`: the fractional training timestep whose sigma is `sigma`, interpolating linearly
/// in log sigma between the neighbours (log_sigmas is float32 and increasing).
inline double sigma_to_t(double sigma, std::vector<float> const& log_sigmas) {
  double const log_sigma = std::log(std::max(sigma, 1e-10));
  // low_idx = cumsum(dists >= 0).argmax(): the last index with log_sigmas[k] <= log_sigma (0 if none).
  std::size_t low = 0;
  for (std::size_t k = 0; k < log_sigmas.size(); ++k)
    if (log_sigma - double(log_sigmas[k]) >= 0) low = k;
  low = std::min(low, log_sigmas.size() - 2);
  std::size_t const high = low + 1;
  float const lo = log_sigmas[low];
  float const hi = log_sigmas[high];
  double w = (double(lo) - log_sigma) / double(lo - hi);  // low - high is a float32 subtraction in numpy
  w = std::clamp(w, 0.0, 1.0);
  return (1 - w) * double(low) + w * double(high);
}

/// The integer timesteps of DDPM/DDIM `set_timesteps(n)` (descending), by `timestep_spacing`:
/// linspace: np.linspace(0, N - 1, n).round()[::-1]; leading: np.arange(n) * (N // n), reversed, + steps_offset;
/// trailing: np.round(np.arange(N, 0, -N / n)) - 1.
inline std::vector<double> spaced_timesteps(SchedulerConfig const& c, int n) {
  int const N = c.num_train_timesteps;
  std::vector<double> t;
  if (c.timestep_spacing == TimestepSpacing::Linspace) {
    for (double v : np_linspace(0, N - 1, n)) t.push_back(np_round(v));
    std::reverse(t.begin(), t.end());
  } else if (c.timestep_spacing == TimestepSpacing::Leading) {
    int const ratio = N / n;
    for (int i = n - 1; i >= 0; --i) t.push_back(double(std::int64_t(i) * ratio + c.steps_offset));
  } else {
    for (double v : np_arange(N, 0, -double(N) / n)) t.push_back(np_round(v) - 1);
  }
  return t;
}

}  // namespace sdlora::schedulers::numerics

#ifdef SDLORA_SCHEDULERS_POP_OPTIONS
#pragma GCC pop_options
#undef SDLORA_SCHEDULERS_POP_OPTIONS
#endif
