/// @file plot.hpp
/// @brief A small raster line plot (the training loss curve PNG) drawn without any plotting library.
/// Include <sdlora/train.hpp> instead.
#pragma once

#include <algorithm>  // std::min_element, std::max_element
#include <cmath>      // std::isfinite
#include <vector>     // std::vector

#include <sdlora/core/tensor.hpp>  // Tensor

namespace sdlora::train {

/// An RGB image (3, height, width) in [0, 1]: light grey raw values, a dark exponential moving average (weight
/// `smoothing`), a frame and horizontal grid lines at quarters of the value range.
inline Tensor<float, Cpu> plot_curve(std::vector<double> const& ys, Index width = 640, Index height = 360,
                                     double smoothing = 0.9) {
  Tensor<float, Cpu> img(Shape{3, height, width});
  img.fill(1.0f);
  auto put = [&](Index x, Index y, float r, float g, float b) {
    if (x < 0 || y < 0 || x >= width || y >= height) return;
    img.at({0, y, x}) = r;
    img.at({1, y, x}) = g;
    img.at({2, y, x}) = b;
  };
  Index const m = 20;  // margin in pixels
  for (Index x = m; x < width - m; ++x) {
    put(x, m, 0.2f, 0.2f, 0.2f);
    put(x, height - m, 0.2f, 0.2f, 0.2f);
    for (int q = 1; q < 4; ++q) put(x, m + (height - 2 * m) * q / 4, 0.85f, 0.85f, 0.85f);
  }
  for (Index y = m; y <= height - m; ++y) {
    put(m, y, 0.2f, 0.2f, 0.2f);
    put(width - m, y, 0.2f, 0.2f, 0.2f);
  }
  std::vector<double> v;
  for (double y : ys)
    if (std::isfinite(y)) v.push_back(y);
  if (v.size() < 2) return img;
  double const lo = *std::min_element(v.begin(), v.end()), hi = *std::max_element(v.begin(), v.end());
  double const span = hi > lo ? hi - lo : 1.0;
  auto px = [&](std::size_t i) { return m + Index(double(i) / double(v.size() - 1) * double(width - 2 * m)); };
  auto py = [&](double y) { return height - m - Index((y - lo) / span * double(height - 2 * m)); };
  auto line = [&](std::size_t i, double y0, double y1, float shade) {
    Index const x0 = px(i - 1), x1 = px(i), a = py(y0), b = py(y1);
    Index const steps = std::max<Index>({1, std::abs(x1 - x0), std::abs(b - a)});
    for (Index s = 0; s <= steps; ++s)
      put(x0 + (x1 - x0) * s / steps, a + (b - a) * s / steps, shade, shade, shade + 0.1f * (1 - shade));
  };
  for (std::size_t i = 1; i < v.size(); ++i) line(i, v[i - 1], v[i], 0.75f);
  double ema = v[0], prev = v[0];
  for (std::size_t i = 1; i < v.size(); ++i) {
    ema = smoothing * ema + (1 - smoothing) * v[i];
    line(i, prev, ema, 0.1f);
    prev = ema;
  }
  return img;
}

}  // namespace sdlora::train
