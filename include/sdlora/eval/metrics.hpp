/// @file metrics.hpp
/// @brief Evaluation metrics with the field's definitions: CLIP score as torchmetrics' CLIPScore, embedding
/// similarity (CLIP-I, DINO: mean cosine over all generated x reference pairs, as the DreamBooth paper, or over index
/// pairs) and SSIM as torchmetrics' structural_similarity_index_measure with its defaults. Everything is computed in
/// double on the host. Include <sdlora/eval.hpp> instead.
#pragma once

#include <algorithm>  // std::max
#include <cmath>      // std::exp, std::sqrt
#include <numeric>    // std::accumulate
#include <string>     // std::string
#include <vector>     // std::vector

#include <sdlora/core/error.hpp>   // ConfigError, SDLORA_EXPECTS
#include <sdlora/core/tensor.hpp>  // Tensor, TensorView

namespace sdlora::eval {

/// A metric's value and the values it averages (one per image or pair, in file-name order).
struct MetricResult {
  std::string metric;
  double value = 0.0;
  std::vector<double> per_image;
  std::size_t n() const { return per_image.size(); }
};

/// cos(a_i, b_j) of rows i of a (N, D) and j of b (M, D).
inline double cosine(TensorView<float const, Cpu> a, Index i, TensorView<float const, Cpu> b, Index j) {
  SDLORA_EXPECTS(a.rank() == 2 && b.rank() == 2 && a.dim(1) == b.dim(1) && a.is_contiguous() && b.is_contiguous(),
                 "[cosine] embeddings must be (N, D) and (M, D), got " << a.shape() << " and " << b.shape());
  Index const d = a.dim(1);
  double dot = 0, na = 0, nb = 0;
  for (Index k = 0; k < d; ++k) {
    double const x = a.data()[i * d + k], y = b.data()[j * d + k];
    dot += x * y;
    na += x * x;
    nb += y * y;
  }
  return dot / (std::sqrt(na) * std::sqrt(nb));
}

inline double mean_of(std::vector<double> const& v) {
  return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
}

/// torchmetrics CLIPScore: per pair 100 * cos(E_image_i, E_text_i); the score is max(mean, 0).
/// image (N, D) and text (N, D) embeddings, not necessarily normalised.
inline MetricResult clip_score(TensorView<float const, Cpu> image, TensorView<float const, Cpu> text) {
  SDLORA_EXPECTS(image.rank() == 2 && text.rank() == 2 && image.dim(0) == text.dim(0),
                 "[clip_score] needs as many prompts as images: " << image.shape() << " vs " << text.shape());
  MetricResult r{"clip_score", 0.0, {}};
  for (Index i = 0; i < image.dim(0); ++i) r.per_image.push_back(100.0 * cosine(image, i, text, i));
  r.value = std::max(mean_of(r.per_image), 0.0);
  return r;
}

/// How generated images meet reference images.
enum class Pairing {
  All,    // every generated x every reference (the DreamBooth paper's CLIP-I / DINO)
  Index,  // generated i with reference i
};
inline Pairing parse_pairing(std::string const& s) {
  if (s == "all") return Pairing::All;
  if (s == "index") return Pairing::Index;
  SDLORA_THROW(ConfigError, "[pairing] '" << s << "' is not one of all, index");
}

/// Mean cosine similarity of generated (N, D) and reference (M, D) embeddings. per_image: with Pairing::Index the
/// N pair values; with Pairing::All, per generated image the mean over the references.
inline MetricResult embedding_similarity(std::string metric, TensorView<float const, Cpu> generated,
                                         TensorView<float const, Cpu> reference, Pairing pairing) {
  SDLORA_EXPECTS(generated.rank() == 2 && reference.rank() == 2 && generated.dim(0) > 0 && reference.dim(0) > 0,
                 "[" << metric << "] needs embeddings (N, D) and (M, D), got " << generated.shape() << " and "
                     << reference.shape());
  MetricResult r{std::move(metric), 0.0, {}};
  Index const n = generated.dim(0), m = reference.dim(0);
  if (pairing == Pairing::Index) {
    SDLORA_EXPECTS(n == m, "[" << r.metric << "] index pairing needs as many reference images as generated ones: "
                               << n << " vs " << m);
    for (Index i = 0; i < n; ++i) r.per_image.push_back(cosine(generated, i, reference, i));
    r.value = mean_of(r.per_image);
    return r;
  }
  double total = 0;
  for (Index i = 0; i < n; ++i) {
    double row = 0;
    for (Index j = 0; j < m; ++j) row += cosine(generated, i, reference, j);
    r.per_image.push_back(row / double(m));
    total += row;
  }
  r.value = total / double(n * m);
  return r;
}

/// torchmetrics structural_similarity_index_measure's options (its defaults).
struct SsimOptions {
  double sigma = 1.5;  // Gaussian window of 2 * int(3.5 sigma + 0.5) + 1 = 11 taps
  double k1 = 0.01;
  double k2 = 0.03;
  double data_range = 1.0;
};

namespace detail {
/// torch's reflect padding index (mirror without repeating the edge) for i in [-pad, n + pad).
inline Index reflect(Index i, Index n) {
  if (i < 0) return -i;
  if (i >= n) return 2 * (n - 1) - i;
  return i;
}
}  // namespace detail

/// SSIM of two images (C, H, W) in [0, data_range], as torchmetrics 1.x computes it: both images reflect-padded by
/// the window radius, the five local moments by a Gaussian window over the padded images (so the map is H x W),
/// variances clamped at 0, the SSIM map averaged over channels and all H x W pixels (no border crop).
/// reference: torchmetrics/functional/image/ssim.py, _ssim_update.
inline double ssim(TensorView<float const, Cpu> a, TensorView<float const, Cpu> b, SsimOptions const& o = {}) {
  SDLORA_EXPECTS(a.rank() == 3 && a.shape() == b.shape() && a.is_contiguous() && b.is_contiguous(),
                 "[ssim] images must be the same size (C, H, W), got " << a.shape() << " and " << b.shape());
  int const taps = int(3.5 * o.sigma + 0.5) * 2 + 1;
  Index const pad = (taps - 1) / 2, c = a.dim(0), h = a.dim(1), w = a.dim(2);
  SDLORA_EXPECTS(h > pad && w > pad, "[ssim] images of " << h << "x" << w << " are too small for the " << taps
                                                         << "-tap window (reflect padding needs more than " << pad
                                                         << " pixels a side)");
  std::vector<double> g(static_cast<std::size_t>(taps));
  double gsum = 0;
  for (int t = 0; t < taps; ++t) {
    double const d = (t - pad) / o.sigma;
    g[std::size_t(t)] = std::exp(-d * d / 2.0);
    gsum += g[std::size_t(t)];
  }
  for (auto& v : g) v /= gsum;
  double const c1 = (o.k1 * o.data_range) * (o.k1 * o.data_range), c2 = (o.k2 * o.data_range) * (o.k2 * o.data_range);

  // Horizontal pass over padded columns for all rows of the padded image, then vertical: the five moments.
  Index const hp = h + 2 * pad;
  std::vector<double> rows(std::size_t(5 * hp * w));  // (5, H + 2 pad, W)
  double total = 0;
  for (Index k = 0; k < c; ++k) {
    float const* pa = a.data() + k * h * w;
    float const* pb = b.data() + k * h * w;
    for (Index yp = 0; yp < hp; ++yp) {
      Index const y = detail::reflect(yp - pad, h);
      for (Index x = 0; x < w; ++x) {
        double s[5] = {0, 0, 0, 0, 0};
        for (int t = 0; t < taps; ++t) {
          Index const xs = detail::reflect(x + t - pad, w);
          double const u = pa[y * w + xs], v = pb[y * w + xs], gt = g[std::size_t(t)];
          s[0] += gt * u;
          s[1] += gt * v;
          s[2] += gt * u * u;
          s[3] += gt * v * v;
          s[4] += gt * u * v;
        }
        for (int m = 0; m < 5; ++m) rows[std::size_t((m * hp + yp) * w + x)] = s[m];
      }
    }
    for (Index y = 0; y < h; ++y)
      for (Index x = 0; x < w; ++x) {
        double s[5] = {0, 0, 0, 0, 0};
        for (int t = 0; t < taps; ++t)
          for (int m = 0; m < 5; ++m) s[m] += g[std::size_t(t)] * rows[std::size_t((m * hp + y + t) * w + x)];
        double const mu_a2 = s[0] * s[0], mu_b2 = s[1] * s[1], mu_ab = s[0] * s[1];
        double const var_a = std::max(s[2] - mu_a2, 0.0), var_b = std::max(s[3] - mu_b2, 0.0), cov = s[4] - mu_ab;
        total += ((2 * mu_ab + c1) * (2 * cov + c2)) / ((mu_a2 + mu_b2 + c1) * (var_a + var_b + c2));
      }
  }
  return total / double(c * h * w);
}

}  // namespace sdlora::eval
