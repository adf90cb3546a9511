/// @file plot.hpp
/// @brief The training loss curve PNG (loss.png): eval::line_plot's axes, tick values, axis labels and title over
/// the raw losses and their moving average. eval/plot.hpp is the drawing code (a bitmap font and a line plot on
/// core tensors only: no encoder comes with it). Include <sdlora/train.hpp> instead.
#pragma once

#include <cmath>                   // std::isfinite
#include <sdlora/core/tensor.hpp>  // Tensor
#include <sdlora/eval/plot.hpp>    // eval::line_plot, eval::Series, eval::PlotOptions
#include <string>                  // std::string
#include <vector>                  // std::vector

namespace sdlora::train {

/// An RGB image (3, height, width) in [0, 1]: the loss of each optimizer step (point i is step i + 1, as the rows
/// of loss.csv) in light blue, its exponential moving average (weight `smoothing`) in dark blue, with axes, tick
/// values, the labels "optimizer step" and "loss", the title "training loss" and a legend. Non-finite values are
/// skipped.
inline Tensor<float, Cpu> plot_curve(std::vector<double> const& ys, Index width = 640, Index height = 360,
                                     double smoothing = 0.9) {
  eval::Series raw, smooth;
  raw.label = "loss";
  raw.color = eval::Rgb{0.65f, 0.78f, 0.92f};
  raw.markers = false;
  raw.thickness = 1;
  smooth.label = "moving average (" + eval::short_number(smoothing) + ")";
  smooth.color = eval::Rgb{0.05f, 0.25f, 0.55f};
  smooth.markers = false;
  double ema = 0;
  bool first = true;
  for (std::size_t i = 0; i < ys.size(); ++i) {
    if (!std::isfinite(ys[i])) continue;
    ema = first ? ys[i] : smoothing * ema + (1 - smoothing) * ys[i];
    first = false;
    raw.x.push_back(double(i + 1));
    raw.y.push_back(ys[i]);
    smooth.x.push_back(double(i + 1));
    smooth.y.push_back(ema);
  }
  return eval::line_plot({raw, smooth}, {"training loss", "optimizer step", "loss", width, height});
}

}  // namespace sdlora::train
