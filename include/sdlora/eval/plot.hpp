/// @file plot.hpp
/// @brief Figures for experiments without a plotting library: a 5x7 bitmap font, a line plot with axes, ticks, tick
/// labels, axis labels, a title and a legend (metric vs LoRA scale), and an image grid with a title and column and
/// row labels (a LoRA-scale sweep).
/// Images are RGB (3, H, W) float tensors in [0, 1] (io::save_png with io::ImageRange::ZeroToOne).
/// Include <sdlora/eval.hpp>, or this header alone where the encoders are not wanted (it needs only core/: the
/// trainer's loss plot and sdlora-generate's sweep grid include it directly).
#pragma once

#include <algorithm>  // std::min, std::max, std::clamp
#include <array>      // std::array
#include <cmath>      // std::floor, std::ceil, std::log10, std::pow, std::isfinite
#include <cstdint>    // std::uint8_t
#include <optional>   // std::optional
#include <sstream>    // std::ostringstream, std::istringstream
#include <string>     // std::string
#include <vector>     // std::vector

#include <sdlora/core/error.hpp>   // SDLORA_EXPECTS
#include <sdlora/core/tensor.hpp>  // Tensor

namespace sdlora::eval {

using Rgb = std::array<float, 3>;
inline constexpr Rgb kBlack{0.1f, 0.1f, 0.1f};
inline constexpr Rgb kGrey{0.85f, 0.85f, 0.85f};
/// Line colours in legend order (a colour-blind-safe palette).
inline constexpr std::array<Rgb, 6> kPalette{{{0.00f, 0.45f, 0.70f},
                                              {0.84f, 0.37f, 0.00f},
                                              {0.00f, 0.62f, 0.45f},
                                              {0.80f, 0.47f, 0.65f},
                                              {0.34f, 0.71f, 0.91f},
                                              {0.90f, 0.62f, 0.00f}}};

namespace detail {
/// 5x7 glyph rows (bit 4 = leftmost column). Lower-case letters are drawn as capitals; anything else as '?'.
inline std::array<std::uint8_t, 7> glyph(char c) {
  if (c >= 'a' && c <= 'z') c = char(c - 'a' + 'A');
  switch (c) {
    case '0': return {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E};
    case '1': return {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E};
    case '2': return {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F};
    case '3': return {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E};
    case '4': return {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02};
    case '5': return {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E};
    case '6': return {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E};
    case '7': return {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08};
    case '8': return {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E};
    case '9': return {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C};
    case 'A': return {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11};
    case 'B': return {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E};
    case 'C': return {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E};
    case 'D': return {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C};
    case 'E': return {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F};
    case 'F': return {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10};
    case 'G': return {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F};
    case 'H': return {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11};
    case 'I': return {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E};
    case 'J': return {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C};
    case 'K': return {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11};
    case 'L': return {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F};
    case 'M': return {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11};
    case 'N': return {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11};
    case 'O': return {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E};
    case 'P': return {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10};
    case 'Q': return {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D};
    case 'R': return {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11};
    case 'S': return {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E};
    case 'T': return {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04};
    case 'U': return {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E};
    case 'V': return {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04};
    case 'W': return {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A};
    case 'X': return {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11};
    case 'Y': return {0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04};
    case 'Z': return {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F};
    case ' ': return {0, 0, 0, 0, 0, 0, 0};
    case '.': return {0, 0, 0, 0, 0, 0x0C, 0x0C};
    case ',': return {0, 0, 0, 0, 0x0C, 0x04, 0x08};
    case '-': return {0, 0, 0, 0x1F, 0, 0, 0};
    case '+': return {0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0};
    case ':': return {0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0};
    case '(': return {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02};
    case ')': return {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08};
    case '/': return {0, 0x01, 0x02, 0x04, 0x08, 0x10, 0};
    case '=': return {0, 0, 0x1F, 0, 0x1F, 0, 0};
    case '_': return {0, 0, 0, 0, 0, 0, 0x1F};
    case '%': return {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03};
    case '<': return {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02};
    case '>': return {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08};
    case '\'': return {0x0C, 0x04, 0x08, 0, 0, 0, 0};
    default: return {0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04};
  }
}
}  // namespace detail

/// Sets pixel (x, y) of img (3, H, W); pixels outside are ignored.
inline void put_pixel(Tensor<float, Cpu>& img, Index x, Index y, Rgb c) {
  if (x < 0 || y < 0 || x >= img.dim(2) || y >= img.dim(1)) return;
  for (Index k = 0; k < 3; ++k) img.at({k, y, x}) = c[std::size_t(k)];
}

/// Width in pixels of `text` at `scale` (6 * scale per character: 5 columns and a gap).
inline Index text_width(std::string const& text, int scale = 1) { return Index(text.size()) * 6 * scale; }
inline constexpr Index kTextHeight = 7;  // at scale 1

/// Draws `text` with its top-left corner at (x, y).
inline void draw_text(Tensor<float, Cpu>& img, Index x, Index y, std::string const& text, Rgb color = kBlack,
                      int scale = 1) {
  for (std::size_t i = 0; i < text.size(); ++i) {
    auto const g = detail::glyph(text[i]);
    for (int r = 0; r < 7; ++r)
      for (int c = 0; c < 5; ++c)
        if (g[std::size_t(r)] & (0x10 >> c))
          for (int sy = 0; sy < scale; ++sy)
            for (int sx = 0; sx < scale; ++sx)
              put_pixel(img, x + (Index(i) * 6 + c) * scale + sx, y + r * scale + sy, color);
  }
}

/// Draws `text` rotated a quarter turn counter-clockwise (reading bottom to top), its bottom-left corner at (x, y).
inline void draw_text_vertical(Tensor<float, Cpu>& img, Index x, Index y, std::string const& text, Rgb color = kBlack) {
  for (std::size_t i = 0; i < text.size(); ++i) {
    auto const g = detail::glyph(text[i]);
    for (int r = 0; r < 7; ++r)
      for (int c = 0; c < 5; ++c)
        if (g[std::size_t(r)] & (0x10 >> c)) put_pixel(img, x + r, y - Index(i) * 6 - c, color);
  }
}

/// A straight line from (x0, y0) to (x1, y1), `thickness` pixels wide; dashed lines skip every other 6 pixels.
inline void draw_line(Tensor<float, Cpu>& img, double x0, double y0, double x1, double y1, Rgb color,
                      int thickness = 1, bool dashed = false) {
  double const len = std::max(std::fabs(x1 - x0), std::fabs(y1 - y0));
  Index const steps = std::max<Index>(1, Index(std::ceil(len)));
  for (Index s = 0; s <= steps; ++s) {
    if (dashed && (s / 6) % 2 == 1) continue;
    double const t = double(s) / double(steps);
    Index const x = Index(std::lround(x0 + (x1 - x0) * t)), y = Index(std::lround(y0 + (y1 - y0) * t));
    for (int d = -(thickness / 2); d <= thickness / 2; ++d)
      for (int e = -(thickness / 2); e <= thickness / 2; ++e) put_pixel(img, x + d, y + e, color);
  }
}

/// A number as a short label: up to 4 significant digits, no trailing zeros ("0.25", "12.06", "1e-05").
inline std::string short_number(double v) {
  std::ostringstream os;
  os.precision(4);
  os << (std::fabs(v) < 1e-12 ? 0.0 : v);
  return os.str();
}

/// Tick positions covering [lo, hi] with steps of 1, 2 or 5 times a power of ten, about `target` of them.
inline std::vector<double> nice_ticks(double lo, double hi, int target = 5) {
  if (!(hi > lo)) return {lo};
  double const raw = (hi - lo) / target, mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * mag * 1.0000001) {
      step = m * mag;
      break;
    }
  std::vector<double> out;
  for (double t = std::ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) out.push_back(t);
  return out;
}

/// One line of a plot: points (x[i], y[i]) joined in order, or a horizontal reference line at y[0].
struct Series {
  std::string label;
  std::vector<double> x, y;
  bool horizontal = false;     // a constant y[0] across the whole x range, drawn dashed
  std::optional<Rgb> color{};  // default: kPalette by the series' position
  bool markers = true;         // a mark at each point (off for long curves such as a training loss)
  int thickness = 2;           // of the line, pixels
};

struct PlotOptions {
  std::string title, x_label, y_label;
  Index width = 640, height = 400;
};

/// A line plot: frame, grid and ticks with labels on both axes, axis labels, a title, the series with markers and
/// a legend (top right, on white). The axes cover the data with 5% headroom; non-finite values are skipped.
inline Tensor<float, Cpu> line_plot(std::vector<Series> const& series, PlotOptions const& o) {
  SDLORA_EXPECTS(!series.empty() && o.width >= 200 && o.height >= 150,
                 "[line_plot] needs series and at least 200x150 pixels, got " << o.width << "x" << o.height);
  Tensor<float, Cpu> img(Shape{3, o.height, o.width});  // (3, H, W)
  img.fill(1.0f);
  double xlo = 1e300, xhi = -1e300, ylo = 1e300, yhi = -1e300;
  for (auto const& s : series) {
    for (double v : s.x)
      if (std::isfinite(v)) xlo = std::min(xlo, v), xhi = std::max(xhi, v);
    for (double v : s.y)
      if (std::isfinite(v)) ylo = std::min(ylo, v), yhi = std::max(yhi, v);
  }
  if (!(xhi >= xlo)) xlo = 0, xhi = 1;
  if (!(yhi >= ylo)) ylo = 0, yhi = 1;
  if (xhi == xlo) xlo -= 0.5, xhi += 0.5;
  if (yhi == ylo) ylo -= 0.5, yhi += 0.5;
  double const pad = 0.05 * (yhi - ylo);
  ylo -= pad;
  yhi += pad;
  // Plot area (pixels): room for the title above, tick labels and the axis label below and left.
  Index const left = 70, right = o.width - 20, top = 30, bottom = o.height - 45;
  auto px = [&](double x) { return left + (x - xlo) / (xhi - xlo) * double(right - left); };
  auto py = [&](double y) { return bottom - (y - ylo) / (yhi - ylo) * double(bottom - top); };

  for (double t : nice_ticks(ylo, yhi)) {
    double const y = py(t);
    draw_line(img, double(left), y, double(right), y, kGrey);
    draw_line(img, double(left - 4), y, double(left), y, kBlack);
    std::string const s = short_number(t);
    draw_text(img, left - 7 - text_width(s), Index(std::lround(y)) - 3, s);
  }
  for (double t : nice_ticks(xlo, xhi)) {
    double const x = px(t);
    draw_line(img, x, double(top), x, double(bottom), kGrey);
    draw_line(img, x, double(bottom), x, double(bottom + 4), kBlack);
    std::string const s = short_number(t);
    draw_text(img, Index(std::lround(x)) - text_width(s) / 2, bottom + 8, s);
  }
  draw_line(img, double(left), double(top), double(left), double(bottom), kBlack);
  draw_line(img, double(left), double(bottom), double(right), double(bottom), kBlack);
  draw_line(img, double(right), double(top), double(right), double(bottom), kBlack);
  draw_line(img, double(left), double(top), double(right), double(top), kBlack);
  draw_text(img, (left + right) / 2 - text_width(o.title, 2) / 2, 6, o.title, kBlack, 2);
  draw_text(img, (left + right) / 2 - text_width(o.x_label) / 2, o.height - 14, o.x_label);
  draw_text_vertical(img, 8, (top + bottom) / 2 + text_width(o.y_label) / 2, o.y_label);

  // The legend box, top right over a white background.
  Index legend_w = 0;
  for (auto const& s : series) legend_w = std::max(legend_w, text_width(s.label) + 34);
  Index const box_x = right - 8 - legend_w, box_y = top + 4, box_h = Index(series.size()) * 12 + 6;
  for (std::size_t i = 0; i < series.size(); ++i) {
    auto const& s = series[i];
    Rgb const c = s.color.value_or(kPalette[i % kPalette.size()]);
    if (s.horizontal) {
      if (!s.y.empty() && std::isfinite(s.y[0]))
        draw_line(img, double(left), py(s.y[0]), double(right), py(s.y[0]), c, 1, true);
    } else {
      for (std::size_t k = 0; k < s.x.size() && k < s.y.size(); ++k) {
        if (!std::isfinite(s.x[k]) || !std::isfinite(s.y[k])) continue;
        if (k > 0 && std::isfinite(s.x[k - 1]) && std::isfinite(s.y[k - 1]))
          draw_line(img, px(s.x[k - 1]), py(s.y[k - 1]), px(s.x[k]), py(s.y[k]), c, s.thickness);
        if (s.markers) draw_line(img, px(s.x[k]) - 3, py(s.y[k]), px(s.x[k]) + 3, py(s.y[k]), c, 3);
      }
    }
  }
  for (Index y = box_y; y < box_y + box_h; ++y)
    for (Index x = box_x; x < box_x + legend_w; ++x) put_pixel(img, x, y, {1.0f, 1.0f, 1.0f});
  draw_line(img, double(box_x), double(box_y), double(box_x + legend_w), double(box_y), kGrey);
  draw_line(img, double(box_x), double(box_y + box_h), double(box_x + legend_w), double(box_y + box_h), kGrey);
  draw_line(img, double(box_x), double(box_y), double(box_x), double(box_y + box_h), kGrey);
  draw_line(img, double(box_x + legend_w), double(box_y), double(box_x + legend_w), double(box_y + box_h), kGrey);
  Index legend_y = box_y + 4;
  for (std::size_t i = 0; i < series.size(); ++i) {
    auto const& s = series[i];
    Rgb const c = s.color.value_or(kPalette[i % kPalette.size()]);
    Index const lx = box_x + 6;
    draw_line(img, double(lx), double(legend_y + 3), double(lx + 18), double(legend_y + 3), c, 2, s.horizontal);
    draw_text(img, lx + 24, legend_y, s.label);
    legend_y += 12;
  }
  return img;
}

/// `text` broken at spaces into lines of at most `width` pixels (a word longer than a line is cut).
inline std::vector<std::string> wrap_text(std::string const& text, Index width) {
  std::size_t const per_line = std::size_t(std::max<Index>(1, width / 6));
  std::vector<std::string> lines;
  std::string line;
  std::istringstream words(text);
  for (std::string word; words >> word;) {
    if (word.size() > per_line) word = word.substr(0, per_line);
    if (!line.empty() && line.size() + 1 + word.size() > per_line) lines.push_back(std::move(line)), line.clear();
    line += (line.empty() ? "" : " ") + word;
  }
  if (!line.empty()) lines.push_back(line);
  return lines;
}

/// Images (3, h, w) in [0, 1], row-major in `cols` columns, with a label above each column and left of each row,
/// `corner` above the row labels (what the columns are, e.g. "LoRA scale") and, when not empty, `title` above all
/// (e.g. the prompt; wrapped at spaces to the grid's width).
inline Tensor<float, Cpu> labelled_grid(std::vector<Tensor<float, Cpu>> const& cells, Index cols,
                                        std::vector<std::string> const& column_labels,
                                        std::vector<std::string> const& row_labels = {},
                                        std::string const& corner = "", std::string const& title = "") {
  SDLORA_EXPECTS(!cells.empty() && cols > 0 && Index(cells.size()) % cols == 0,
                 "[labelled_grid] " << cells.size() << " images do not fill rows of " << cols);
  Shape const s = cells[0].shape();
  for (auto const& c : cells)
    SDLORA_EXPECTS(c.shape() == s && s.rank() == 3 && s[0] == 3, "[labelled_grid] images differ in shape: "
                                                                     << s << " vs " << c.shape());
  Index const rows = Index(cells.size()) / cols, h = s[1], w = s[2], gap = 4;
  Index label_w = 0;
  for (auto const& l : row_labels) label_w = std::max(label_w, text_width(l) + 8);
  if (!corner.empty()) label_w = std::max(label_w, text_width(corner) + 8);
  Index const width = label_w + cols * (w + gap) + gap;
  std::vector<std::string> const title_lines = title.empty() ? std::vector<std::string>{} : wrap_text(title, width - 8);
  Index const title_h = Index(title_lines.size()) * (kTextHeight + 4);
  Index const head = title_h + kTextHeight + 8, height = head + rows * (h + gap) + gap;
  Tensor<float, Cpu> img(Shape{3, height, width});  // (3, H, W)
  img.fill(1.0f);
  for (std::size_t i = 0; i < title_lines.size(); ++i)
    draw_text(img, (width - text_width(title_lines[i])) / 2, 4 + Index(i) * (kTextHeight + 4), title_lines[i]);
  draw_text(img, 4, title_h + 4, corner);
  for (Index c = 0; c < cols && c < Index(column_labels.size()); ++c) {
    std::string const& l = column_labels[std::size_t(c)];
    draw_text(img, label_w + gap + c * (w + gap) + (w - text_width(l)) / 2, title_h + 4, l);
  }
  for (Index r = 0; r < rows; ++r) {
    if (r < Index(row_labels.size()))
      draw_text(img, 4, head + gap + r * (h + gap) + h / 2 - kTextHeight / 2, row_labels[std::size_t(r)]);
    for (Index c = 0; c < cols; ++c) {
      auto const& cell = cells[std::size_t(r * cols + c)];
      Index const x0 = label_w + gap + c * (w + gap), y0 = head + gap + r * (h + gap);
      for (Index k = 0; k < 3; ++k)
        for (Index y = 0; y < h; ++y)
          for (Index x = 0; x < w; ++x) img.at({k, y0 + y, x0 + x}) = std::clamp(cell.at({k, y, x}), 0.0f, 1.0f);
    }
  }
  return img;
}

/// img (C, H, W) with every pixel repeated `factor` times in both directions (C, factor H, factor W).
inline Tensor<float, Cpu> upscale_nearest(Tensor<float, Cpu> const& img, Index factor) {
  SDLORA_EXPECTS(img.shape().rank() == 3 && factor >= 1, "[upscale_nearest] (C, H, W) and a factor >= 1, got "
                                                             << img.shape() << " and " << factor);
  Index const c = img.dim(0), h = img.dim(1), w = img.dim(2);
  Tensor<float, Cpu> out(Shape{c, h * factor, w * factor});  // (C, factor H, factor W)
  for (Index k = 0; k < c; ++k)
    for (Index y = 0; y < h * factor; ++y)
      for (Index x = 0; x < w * factor; ++x)
        out((k * h * factor + y) * w * factor + x) = img((k * h + y / factor) * w + x / factor);
  return out;
}

/// A LoRA-scale sweep as a figure: `prompt` as the title, "scale S" over each column (one per entry of `scales`),
/// `row_labels` left of the rows; cells (3, h, w) in [0, 1] are scaled up by the smallest integer factor that makes
/// them wider than their column labels, so that small images (16 px) stay readable.
inline Tensor<float, Cpu> scale_sweep_grid(std::vector<Tensor<float, Cpu>> const& cells,
                                           std::vector<double> const& scales, std::string const& prompt,
                                           std::vector<std::string> const& row_labels = {}) {
  SDLORA_EXPECTS(!cells.empty() && !scales.empty(), "[scale_sweep_grid] needs images and scales");
  std::vector<std::string> labels;
  Index widest = 0;
  for (double v : scales) {
    labels.push_back("scale " + short_number(v));
    widest = std::max(widest, text_width(labels.back()));
  }
  Index const w = cells[0].dim(2), factor = std::max<Index>(1, (widest + 4 + w - 1) / w);
  std::vector<Tensor<float, Cpu>> big;
  for (auto const& c : cells) big.push_back(factor == 1 ? c : upscale_nearest(c, factor));
  return labelled_grid(big, Index(scales.size()), labels, row_labels, "", prompt);
}

}  // namespace sdlora::eval
