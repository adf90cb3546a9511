/// @file toy_measures.hpp
/// @brief Pixel measures for the toy world (train/sample_data.hpp: one named-colour shape on a plain background):
/// the background colour, the dominant non-background named colour, the outline-style measure, the foreground mask
/// and a shape measure against the toy shapes, so that a test can say from pixels alone "this image shows a red
/// shape", "it is drawn as scribbled outlines" or "this image contains a crescent". Images are RGB (3, H, W) float
/// tensors in [0, 1]. Include <sdlora/eval.hpp> instead.
#pragma once

#include <algorithm>                     // std::sort, std::max, std::min, std::clamp, std::nth_element
#include <array>                         // std::array
#include <cctype>                        // std::tolower
#include <cmath>                         // std::sqrt, std::floor
#include <cstdint>                       // std::uint8_t
#include <map>                           // std::map
#include <optional>                      // std::optional
#include <sdlora/core/error.hpp>         // SDLORA_EXPECTS
#include <sdlora/core/tensor.hpp>        // Tensor
#include <sdlora/train/sample_data.hpp>  // train::kToyPalette, train::toy_shapes, train::detail::toy_outline
#include <sstream>                       // std::istringstream
#include <string>                        // std::string
#include <utility>                       // std::pair
#include <vector>                        // std::vector

namespace sdlora::eval {

using ToyRgb = std::array<float, 3>;

/// A named colour and the share of the counted pixels that chose it.
struct ColorShare {
  std::string name;
  double share = 0;  // in [0, 1]
};

/// A shape name and its score (the IoU of the image's foreground with the shape's mask).
struct ShapeScore {
  std::string shape;
  double iou = 0;  // in [0, 1]
};

/// The parameters a toy caption names: "a|an <colour> <shape> on a|an <colour> background".
struct ToyCaption {
  std::string color, shape, background;
};

/// Parses a toy caption (train::make_toy_scene's base / style captions, train::toy_prompts, the concept's captions
/// when its token is "crescent"): the colours must be palette names and the shape one of toy_target_shapes(); words
/// are split at spaces, letters compared in lower case, a final '.' ignored, either article accepted. Anything else
/// ("a sks toy on ...", "a photo of a cat") gives nullopt.
inline std::optional<ToyCaption> parse_toy_caption(std::string const& caption);

/// What the toy measures say about one image, and how that compares with its caption's parameters (the comparisons
/// are empty when the caption does not parse).
struct ToyImageMeasures {
  std::optional<ToyCaption> caption;  // the parsed prompt
  ColorShare dominant;                // dominant_color
  std::string background;             // background_color_name
  double outline = 0;                 // outline_fraction
  std::vector<ShapeScore> shapes;     // shape_scores against toy_target_shapes(), best first
  std::optional<bool> color_match, background_match, shape_first;  // dominant / background / first shape = caption's
  std::optional<double> shape_score;  // the caption's shape's IoU
};

/// Every toy measure of `img` (3, H, W) in [0, 1] against the parameters of `caption`.
inline ToyImageMeasures measure_toy_image(Tensor<float, Cpu> const& img, std::string const& caption);

namespace detail {

inline void check_toy_image(Tensor<float, Cpu> const& img, char const* op) {
  SDLORA_EXPECTS(img.shape().rank() == 3 && img.dim(0) == 3 && img.dim(1) >= 8 && img.dim(2) >= 8,
                 op << " expects an RGB image (3, H, W) with H, W >= 8, got " << img.shape());
}

inline ToyRgb pixel(Tensor<float, Cpu> const& img, Index y, Index x) {
  Index const h = img.dim(1), w = img.dim(2);
  float const* p = img.data();
  return {p[(0 * h + y) * w + x], p[(1 * h + y) * w + x], p[(2 * h + y) * w + x]};
}

inline double rgb_distance(ToyRgb a, ToyRgb b) {
  double const r = a[0] - b[0], g = a[1] - b[1], bl = a[2] - b[2];
  return std::sqrt(r * r + g * g + bl * bl);
}

/// The palette entry nearest to c in RGB.
inline int nearest_toy_color(ToyRgb c) {
  int best = 0;
  double best_d = 1e300;
  for (int k = 0; k < int(train::kToyPalette.size()); ++k) {
    double const d = rgb_distance(c, train::kToyPalette[std::size_t(k)].rgb);
    if (d < best_d) best_d = d, best = k;
  }
  return best;
}

/// Pixels whose colour is within kNear of the background count as background (RGB distance; the closest pair of
/// palette colours, orange and yellow, is 0.36 apart).
inline constexpr double kNearBackground = 0.2;

}  // namespace detail

/// The background colour: the mode of the border pixels (the outermost ring), each quantized to 8 levels per
/// channel; the mean colour of the pixels in the most frequent bin.
inline ToyRgb background_color(Tensor<float, Cpu> const& img) {
  detail::check_toy_image(img, "[background_color]");
  Index const h = img.dim(1), w = img.dim(2);
  std::map<int, std::pair<int, std::array<double, 3>>> bins;  // bin -> (count, sum of colours)
  auto add = [&](Index y, Index x) {
    ToyRgb const c = detail::pixel(img, y, x);
    int key = 0;
    for (float v : c) key = key * 8 + std::clamp(int(std::floor(double(v) * 8)), 0, 7);
    auto& [n, sum] = bins[key];
    ++n;
    for (std::size_t k = 0; k < 3; ++k) sum[k] += c[k];
  };
  for (Index x = 0; x < w; ++x) add(0, x), add(h - 1, x);
  for (Index y = 1; y + 1 < h; ++y) add(y, 0), add(y, w - 1);
  auto const best = std::max_element(bins.begin(), bins.end(),
                                     [](auto const& a, auto const& b) { return a.second.first < b.second.first; });
  auto const& [n, sum] = best->second;
  return {float(sum[0] / n), float(sum[1] / n), float(sum[2] / n)};
}

/// The background colour's palette name.
inline std::string background_color_name(Tensor<float, Cpu> const& img) {
  return train::kToyPalette[std::size_t(detail::nearest_toy_color(background_color(img)))].name;
}

/// The dominant non-background named colour: every pixel farther than 0.2 (RGB distance) from the background votes
/// for its nearest palette entry, weighted by that distance (anti-aliased edge pixels, mixtures of the two colours,
/// count less); the winner and its share of the votes. The background's own entry cannot win. An image without
/// such pixels gives {"", 0}.
inline ColorShare dominant_color(Tensor<float, Cpu> const& img) {
  ToyRgb const bg = background_color(img);
  int const bg_entry = detail::nearest_toy_color(bg);
  Index const h = img.dim(1), w = img.dim(2);
  std::vector<double> votes(train::kToyPalette.size(), 0.0);
  double total = 0;
  for (Index y = 0; y < h; ++y)
    for (Index x = 0; x < w; ++x) {
      ToyRgb const c = detail::pixel(img, y, x);
      double const d = detail::rgb_distance(c, bg);
      if (d <= detail::kNearBackground) continue;
      int const k = detail::nearest_toy_color(c);
      if (k == bg_entry) continue;
      votes[std::size_t(k)] += d;
      total += d;
    }
  if (total <= 0) return {"", 0.0};
  std::size_t const best = std::size_t(std::max_element(votes.begin(), votes.end()) - votes.begin());
  return {train::kToyPalette[best].name, votes[best] / total};
}

/// The outline-style measure: the fraction of the image's pixels that are dark, unsaturated ink in thin lines. A pixel
/// is dark when most of its 3 x 3 neighbourhood has max channel < 0.55 and max - min < 0.35 (the majority vote keeps
/// noise from punching holes in a black region or making dark specks; only black is that dark in the palette). A
/// dark pixel is in a thin line when a morphological opening with a disc of radius sqrt(5) (a 5 x 5 square without
/// its corners; outside the image counts as dark) removes it and at most half of its dark 8-connected region
/// survives that opening, so that the thin tips of a solid black star or the corners of a black square do not count.
/// About 0.02-0.1 at 64 px for the toy world's scribbled outlines (2-3 px strokes), below 0.003 for its flat
/// scenes, black shapes and backgrounds included; the same with uniform noise of +-0.1 after a 3 x 3 blur.
inline double outline_fraction(Tensor<float, Cpu> const& img) {
  detail::check_toy_image(img, "[outline_fraction]");
  Index const h = img.dim(1), w = img.dim(2);
  std::vector<std::uint8_t> dark(std::size_t(h * w)), eroded(std::size_t(h * w), 0), opened(std::size_t(h * w), 0);
  for (Index y = 0; y < h; ++y)
    for (Index x = 0; x < w; ++x) {
      ToyRgb const c = detail::pixel(img, y, x);
      float const hi = std::max({c[0], c[1], c[2]}), lo = std::min({c[0], c[1], c[2]});
      dark[std::size_t(y * w + x)] = hi < 0.55f && hi - lo < 0.35f;
    }
  {  // majority of the 3 x 3 neighbourhood: noise neither punches holes in dark regions nor makes dark specks
    std::vector<std::uint8_t> vote(dark.size());
    for (Index y = 0; y < h; ++y)
      for (Index x = 0; x < w; ++x) {
        int n = 0, total = 0;
        for (Index yy = std::max<Index>(0, y - 1); yy <= std::min(h - 1, y + 1); ++yy)
          for (Index xx = std::max<Index>(0, x - 1); xx <= std::min(w - 1, x + 1); ++xx)
            n += dark[std::size_t(yy * w + xx)], ++total;
        vote[std::size_t(y * w + x)] = 2 * n > total;
      }
    dark.swap(vote);
  }
  auto inside = [&](Index y, Index x) { return y >= 0 && x >= 0 && y < h && x < w; };
  constexpr int kRadius = 2, kRadius2 = 5;  // the disc: dx^2 + dy^2 <= 5
  for (Index y = 0; y < h; ++y)
    for (Index x = 0; x < w; ++x) {
      bool all = true;
      for (int dy = -kRadius; dy <= kRadius && all; ++dy)
        for (int dx = -kRadius; dx <= kRadius && all; ++dx)
          if (dx * dx + dy * dy <= kRadius2) all = !inside(y + dy, x + dx) || dark[std::size_t((y + dy) * w + x + dx)];
      eroded[std::size_t(y * w + x)] = all;
    }
  for (Index y = 0; y < h; ++y)
    for (Index x = 0; x < w; ++x)
      if (eroded[std::size_t(y * w + x)])
        for (int dy = -kRadius; dy <= kRadius; ++dy)
          for (int dx = -kRadius; dx <= kRadius; ++dx)
            if (dx * dx + dy * dy <= kRadius2 && inside(y + dy, x + dx)) opened[std::size_t((y + dy) * w + x + dx)] = 1;
  // Dark regions (8-connected): count the removed pixels of those that are mostly thin.
  std::vector<std::uint8_t> seen(std::size_t(h * w), 0);
  std::vector<Index> stack, region;
  Index ink = 0;
  for (Index start = 0; start < h * w; ++start) {
    if (!dark[std::size_t(start)] || seen[std::size_t(start)]) continue;
    stack.assign(1, start);
    region.clear();
    seen[std::size_t(start)] = 1;
    Index survivors = 0;
    while (!stack.empty()) {
      Index const i = stack.back();
      stack.pop_back();
      region.push_back(i);
      survivors += opened[std::size_t(i)];
      Index const y = i / w, x = i % w;
      for (int dy = -1; dy <= 1; ++dy)
        for (int dx = -1; dx <= 1; ++dx) {
          Index const j = (y + dy) * w + x + dx;
          if (inside(y + dy, x + dx) && dark[std::size_t(j)] && !seen[std::size_t(j)]) {
            seen[std::size_t(j)] = 1;
            stack.push_back(j);
          }
        }
    }
    if (2 * survivors <= Index(region.size()))
      for (Index i : region) ink += !opened[std::size_t(i)];
  }
  return double(ink) / double(h * w);
}

/// The foreground mask (H, W) in [0, 1]: each pixel's RGB distance from the background colour divided by the
/// foreground's typical distance (the 90th percentile over pixels farther than 0.2), clamped; for a two-colour
/// anti-aliased scene that is the shape's coverage of the pixel. Pixels within 0.2 of the background are 0.
inline Tensor<float, Cpu> foreground_mask(Tensor<float, Cpu> const& img) {
  ToyRgb const bg = background_color(img);
  Index const h = img.dim(1), w = img.dim(2);
  std::vector<double> d(std::size_t(h * w)), far;
  for (Index y = 0; y < h; ++y)
    for (Index x = 0; x < w; ++x) {
      double const v = detail::rgb_distance(detail::pixel(img, y, x), bg);
      d[std::size_t(y * w + x)] = v;
      if (v > detail::kNearBackground) far.push_back(v);
    }
  Tensor<float, Cpu> mask(Shape{h, w});  // (H, W)
  mask.fill(0.0f);
  if (far.empty()) return mask;
  auto const nth = far.begin() + std::ptrdiff_t(double(far.size() - 1) * 0.9);
  std::nth_element(far.begin(), nth, far.end());
  double const full = *nth;
  for (Index i = 0; i < h * w; ++i)
    if (d[std::size_t(i)] > detail::kNearBackground) mask(i) = float(std::clamp(d[std::size_t(i)] / full, 0.0, 1.0));
  return mask;
}

/// The mask with enclosed holes filled: pixels below 0.5 that the image border cannot reach through pixels below
/// 0.5 (4-connected) become 1, so that an outline drawing gives the filled shape.
inline Tensor<float, Cpu> fill_holes(Tensor<float, Cpu> const& mask) {
  Index const h = mask.dim(0), w = mask.dim(1);
  std::vector<std::uint8_t> outside(std::size_t(h * w), 0);
  std::vector<Index> stack;
  auto push = [&](Index y, Index x) {
    if (y < 0 || x < 0 || y >= h || x >= w) return;
    std::size_t const i = std::size_t(y * w + x);
    if (outside[i] || mask(Index(i)) >= 0.5f) return;
    outside[i] = 1;
    stack.push_back(Index(i));
  };
  for (Index x = 0; x < w; ++x) push(0, x), push(h - 1, x);
  for (Index y = 0; y < h; ++y) push(y, 0), push(y, w - 1);
  while (!stack.empty()) {
    Index const i = stack.back();
    stack.pop_back();
    Index const y = i / w, x = i % w;
    push(y - 1, x), push(y + 1, x), push(y, x - 1), push(y, x + 1);
  }
  Tensor<float, Cpu> out = mask;
  for (Index i = 0; i < h * w; ++i)
    if (!outside[std::size_t(i)] && out(i) < 0.5f) out(i) = 1.0f;
  return out;
}

/// The median of each 3 x 3 neighbourhood of a mask (H, W) (edge pixels repeated): isolated noise goes, edges stay.
inline Tensor<float, Cpu> median3(Tensor<float, Cpu> const& mask) {
  Index const h = mask.dim(0), w = mask.dim(1);
  Tensor<float, Cpu> out(Shape{h, w});  // (H, W)
  for (Index y = 0; y < h; ++y)
    for (Index x = 0; x < w; ++x) {
      std::array<float, 9> v{};
      std::size_t n = 0;
      for (Index dy = -1; dy <= 1; ++dy)
        for (Index dx = -1; dx <= 1; ++dx)
          v[n++] = mask(std::clamp<Index>(y + dy, 0, h - 1) * w + std::clamp<Index>(x + dx, 0, w - 1));
      std::nth_element(v.begin(), v.begin() + 4, v.end());
      out(y * w + x) = v[4];
    }
  return out;
}

/// The IoU (sum of minima over sum of maxima) of a soft mask (H, W) with the toy shape `shape` (train::toy_shapes()
/// or "crescent") placed at the mask's centroid and scaled to the mask's area, both at the shape's own area
/// centroid; the shape is rendered with 3 x 3 samples per pixel. 0 for an empty mask.
inline double shape_iou(Tensor<float, Cpu> const& mask, std::string const& shape) {
  using train::detail::Point;
  SDLORA_EXPECTS(mask.shape().rank() == 2, "[shape_iou] expects a mask (H, W), got " << mask.shape());
  Index const h = mask.dim(0), w = mask.dim(1);
  double area = 0, cx = 0, cy = 0;
  for (Index y = 0; y < h; ++y)
    for (Index x = 0; x < w; ++x) {
      double const m = mask(y * w + x);
      area += m, cx += m * (x + 0.5), cy += m * (y + 0.5);
    }
  if (area < 1.0) return 0.0;
  cx /= area, cy /= area;
  std::vector<Point> const poly = train::detail::toy_outline(shape);
  // The polygon's area and area centroid (shoelace formula).
  double a2 = 0, gx = 0, gy = 0;
  for (std::size_t i = 0, j = poly.size() - 1; i < poly.size(); j = i++) {
    double const cross = poly[j].x * poly[i].y - poly[i].x * poly[j].y;
    a2 += cross, gx += (poly[j].x + poly[i].x) * cross, gy += (poly[j].y + poly[i].y) * cross;
  }
  gx /= 3 * a2, gy /= 3 * a2;
  double const scale = std::sqrt(area / (std::abs(a2) / 2));  // pixels per shape unit
  constexpr int kSub = 3;
  double inter = 0, uni = 0;
  for (Index y = 0; y < h; ++y)
    for (Index x = 0; x < w; ++x) {
      double cover = 0;
      if (std::abs((x + 0.5 - cx) / scale + gx) < 1.2 && std::abs((y + 0.5 - cy) / scale + gy) < 1.2) {
        for (int qy = 0; qy < kSub; ++qy)
          for (int qx = 0; qx < kSub; ++qx)
            cover += train::detail::inside_polygon(poly, (x + (qx + 0.5) / kSub - cx) / scale + gx,
                                                   (y + (qy + 0.5) / kSub - cy) / scale + gy);
        cover /= kSub * kSub;
      }
      double const m = mask(y * w + x);
      inter += std::min(m, cover), uni += std::max(m, cover);
    }
  return uni > 0 ? inter / uni : 0.0;
}

/// The toy shapes the shape measure compares with by default: the base shapes and the concept's crescent.
inline std::vector<std::string> toy_target_shapes() {
  auto s = train::toy_shapes();
  s.emplace_back(train::kToyConceptShape);
  return s;
}

/// The shape measure: shape_iou of the image's foreground (foreground_mask, enclosed holes filled so that outline
/// drawings count as their shape, then a 3 x 3 median against noise) with each target, best first.
inline std::vector<ShapeScore> shape_scores(Tensor<float, Cpu> const& img,
                                            std::vector<std::string> const& targets = toy_target_shapes()) {
  Tensor<float, Cpu> const mask = median3(fill_holes(foreground_mask(img)));
  std::vector<ShapeScore> out;
  for (auto const& t : targets) out.push_back({t, shape_iou(mask, t)});
  std::stable_sort(out.begin(), out.end(), [](ShapeScore const& a, ShapeScore const& b) { return a.iou > b.iou; });
  return out;
}

inline std::optional<ToyCaption> parse_toy_caption(std::string const& caption) {
  std::istringstream in(caption);
  std::vector<std::string> w;
  for (std::string word; in >> word;) {
    for (char& c : word) c = char(std::tolower(static_cast<unsigned char>(c)));
    w.push_back(word);
  }
  if (!w.empty() && w.back().size() > 1 && w.back().back() == '.') w.back().pop_back();
  auto article = [](std::string const& s) { return s == "a" || s == "an"; };
  auto color = [](std::string const& s) {
    return std::any_of(train::kToyPalette.begin(), train::kToyPalette.end(), [&](auto const& c) { return s == c.name; });
  };
  auto const targets = toy_target_shapes();
  if (w.size() != 7 || !article(w[0]) || !color(w[1]) || std::find(targets.begin(), targets.end(), w[2]) == targets.end() ||
      w[3] != "on" || !article(w[4]) || !color(w[5]) || w[6] != "background")
    return std::nullopt;
  return ToyCaption{w[1], w[2], w[5]};
}

inline ToyImageMeasures measure_toy_image(Tensor<float, Cpu> const& img, std::string const& caption) {
  ToyImageMeasures m;
  m.caption = parse_toy_caption(caption);
  m.dominant = dominant_color(img);
  m.background = background_color_name(img);
  m.outline = outline_fraction(img);
  m.shapes = shape_scores(img);
  if (m.caption) {
    m.color_match = m.dominant.name == m.caption->color;
    m.background_match = m.background == m.caption->background;
    m.shape_first = !m.shapes.empty() && m.shapes.front().shape == m.caption->shape;
    for (auto const& s : m.shapes)
      if (s.shape == m.caption->shape) m.shape_score = s.iou;
  }
  return m;
}

}  // namespace sdlora::eval
