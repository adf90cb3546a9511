/// @file sample_data.hpp
/// @brief Procedural sample data for demos and tests, deterministic from a seed: QuickDraw-style 28 x 28 scribbles
/// (`<class>.npy`, uint8 (N, 784), white anti-aliased strokes on black) and a small captioned image folder (simple
/// flat-colour scenes as PNG + `metadata.csv`), and the "toy world" (one named-colour shape on a named background,
/// captioned from its parameters, plus its style / subject / concept sets for the adapters). Include <sdlora/train.hpp>
/// instead.
///
/// Every drawing has its own random stream (splitmix64 of the seed, the class or image index and the drawing's
/// number), so asking for more drawings keeps the first ones. Geometry uses std::sin / std::cos in double; the bytes
/// are the same for a seed on one platform (a libm that rounds differently in the last ulp could move a pixel by one
/// level).
#pragma once

#include <algorithm>                      // std::clamp, std::min, std::max
#include <array>                          // std::array
#include <cmath>                          // std::sin, std::cos, std::sqrt, std::nearbyint, std::atan2, std::hypot
#include <cstdint>                        // std::uint8_t, std::uint64_t
#include <cstdio>                         // std::snprintf
#include <filesystem>                     // std::filesystem::create_directories
#include <initializer_list>               // std::initializer_list
#include <sdlora/core/error.hpp>          // ConfigError, IoError
#include <sdlora/core/tensor.hpp>         // Tensor
#include <sdlora/io/image.hpp>            // io::save_png
#include <sdlora/io/npy.hpp>              // io::save_npy
#include <sdlora/train/latent_cache.hpp>  // fnv1a64
#include <string>                         // std::string
#include <string_view>                    // std::string_view
#include <utility>                        // std::move
#include <vector>                         // std::vector

namespace sdlora::train {

/// What write_sample_data makes.
struct SampleDataOptions {
  std::uint64_t seed = 0;
  Index images = 16;                // captioned images
  Index image_size = 64;            // their side in pixels
  Index scribbles_per_class = 100;  // rows of each <class>.npy
  std::vector<std::string> classes = {"circle", "square", "triangle", "star", "zigzag"};
};

/// The files write_sample_data wrote.
struct SampleDataFiles {
  std::string quickdraw_dir;       // <out>/quickdraw: <class>.npy
  std::string image_dir;           // <out>/images: NNNN.png + metadata.csv
  std::vector<std::string> files;  // every file written
};

namespace detail {

/// splitmix64: a tiny, well-mixed stream for the generators.
class SampleRng {
 public:
  SampleRng(std::uint64_t seed, std::uint64_t a, std::uint64_t b)
      : state_(seed ^ (a + 1) * 0xD6E8FEB86659FD93ull ^ (b + 1) * 0xA0761D6478BD642Full) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Uniform in [lo, hi).
  double uniform(double lo = 0.0, double hi = 1.0) { return lo + (hi - lo) * double(next() >> 11) * 0x1.0p-53; }
  /// Uniform integer in [0, n).
  int below(int n) { return int(next() % std::uint64_t(n)); }

 private:
  std::uint64_t state_;
};

struct Point {
  double x, y;
};

inline constexpr double kPi = 3.14159265358979323846;

/// The strokes of a scribble class in unit coordinates ([-1, 1]^2, y down), before jitter.
inline std::vector<std::vector<Point>> scribble_strokes(std::string const& cls, SampleRng& rng) {
  std::vector<Point> s;
  if (cls == "circle") {
    double const a0 = rng.uniform(0, 2 * kPi), sweep = 2 * kPi + rng.uniform(-0.35, 0.25);
    double const squash = rng.uniform(0.8, 1.0);
    for (int k = 0; k <= 24; ++k) {
      double const a = a0 + sweep * k / 24.0, r = 1.0 + rng.uniform(-0.05, 0.05);
      s.push_back({r * std::cos(a), squash * r * std::sin(a)});
    }
  } else if (cls == "square") {
    s = {{-0.85, -0.85}, {0.85, -0.85}, {0.85, 0.85}, {-0.85, 0.85}, {-0.85, -0.8}};
  } else if (cls == "triangle") {
    s = {{0.0, -0.95}, {0.95, 0.75}, {-0.95, 0.75}, {0.02, -0.9}};
  } else if (cls == "star") {  // a pentagram drawn in one stroke, as people draw stars
    double const a0 = -kPi / 2;
    for (int k = 0; k <= 5; ++k) {
      double const a = a0 + k * 4 * kPi / 5;
      s.push_back({std::cos(a), std::sin(a) * 1.05 + 0.08});
    }
  } else if (cls == "zigzag") {
    int const n = 4 + rng.below(3);
    double const amp = rng.uniform(0.35, 0.65), up = rng.below(2) ? 1.0 : -1.0;
    for (int k = 0; k <= n; ++k) s.push_back({-1.0 + 2.0 * k / n, (k % 2 ? amp : -amp) * up});
  } else {
    SDLORA_THROW(ConfigError,
                 "[sample_data] unknown scribble class '" << cls << "' (circle, square, triangle, star, zigzag)");
  }
  return {s};
}

/// Distance from p to the segment [a, b].
inline double segment_distance(Point p, Point a, Point b) {
  double const dx = b.x - a.x, dy = b.y - a.y, len2 = dx * dx + dy * dy;
  double t = len2 > 0 ? ((p.x - a.x) * dx + (p.y - a.y) * dy) / len2 : 0.0;
  t = std::clamp(t, 0.0, 1.0);
  double const ex = p.x - (a.x + t * dx), ey = p.y - (a.y + t * dy);
  return std::sqrt(ex * ex + ey * ey);
}

/// One 28 x 28 scribble: the class's strokes scaled, rotated, moved and jittered, fitted inside the frame with a
/// margin, drawn with coverage clamp(half_width + 0.5 - distance, 0, 1) (a one-pixel anti-aliased edge), as 0..255.
inline void draw_scribble(std::uint8_t* out, std::string const& cls, SampleRng& rng) {
  constexpr int kSide = 28;
  auto strokes = scribble_strokes(cls, rng);
  double const half = rng.uniform(8.5, 11.5), angle = rng.uniform(-0.3, 0.3);
  double const cx = 14.0 + rng.uniform(-1.5, 1.5), cy = 14.0 + rng.uniform(-1.5, 1.5);
  double const width = rng.uniform(0.8, 1.3);  // half the stroke width, pixels
  double const c = std::cos(angle), s = std::sin(angle);
  std::vector<std::vector<Point>> px;
  for (auto const& stroke : strokes) {
    std::vector<Point> p;
    for (std::size_t k = 0; k < stroke.size(); ++k) {
      // Subdivide each segment in three so the jitter bends it like a hand-drawn line.
      int const pieces = k + 1 < stroke.size() ? 3 : 1;
      for (int q = 0; q < pieces; ++q) {
        Point u = stroke[k];
        if (q > 0) {
          double const t = q / 3.0;
          u = {u.x + t * (stroke[k + 1].x - u.x), u.y + t * (stroke[k + 1].y - u.y)};
        }
        double const x = (c * u.x - s * u.y) * half + cx + rng.uniform(-0.6, 0.6);
        double const y = (s * u.x + c * u.y) * half + cy + rng.uniform(-0.6, 0.6);
        p.push_back({x, y});
      }
    }
    px.push_back(std::move(p));
  }
  // Fit into the frame with a margin (QuickDraw's bitmaps are centred with empty borders): shrink about the
  // bounding box's centre if needed, then move it inside.
  double lo_x = 1e9, hi_x = -1e9, lo_y = 1e9, hi_y = -1e9;
  for (auto const& stroke : px)
    for (Point const& q : stroke) {
      lo_x = std::min(lo_x, q.x), hi_x = std::max(hi_x, q.x);
      lo_y = std::min(lo_y, q.y), hi_y = std::max(hi_y, q.y);
    }
  double const lo = width + 1.5, hi = kSide - lo;
  double const f = std::min({1.0, (hi - lo) / std::max(hi_x - lo_x, 1e-9), (hi - lo) / std::max(hi_y - lo_y, 1e-9)});
  double const mx = (lo_x + hi_x) / 2, my = (lo_y + hi_y) / 2;
  double const half_w = (hi_x - lo_x) * f / 2, half_h = (hi_y - lo_y) * f / 2;
  double const tx = std::clamp(mx, lo + half_w, hi - half_w), ty = std::clamp(my, lo + half_h, hi - half_h);
  for (auto& stroke : px)
    for (Point& q : stroke) q = {tx + (q.x - mx) * f, ty + (q.y - my) * f};
  for (int y = 0; y < kSide; ++y)
    for (int x = 0; x < kSide; ++x) {
      Point const p{x + 0.5, y + 0.5};
      double d = 1e9;
      for (auto const& stroke : px)
        for (std::size_t k = 0; k + 1 < stroke.size(); ++k)
          d = std::min(d, segment_distance(p, stroke[k], stroke[k + 1]));
      double const cover = std::clamp(width + 0.5 - d, 0.0, 1.0);
      out[y * kSide + x] = static_cast<std::uint8_t>(std::nearbyint(255.0 * cover));
    }
}

struct NamedColor {
  char const* name;
  std::array<float, 3> rgb;
};
inline constexpr std::array<NamedColor, 10> kPalette = {{{"red", {0.86f, 0.15f, 0.15f}},
                                                         {"orange", {0.96f, 0.55f, 0.10f}},
                                                         {"yellow", {0.98f, 0.85f, 0.15f}},
                                                         {"green", {0.20f, 0.65f, 0.25f}},
                                                         {"blue", {0.15f, 0.35f, 0.85f}},
                                                         {"purple", {0.55f, 0.25f, 0.70f}},
                                                         {"pink", {0.95f, 0.55f, 0.70f}},
                                                         {"white", {0.97f, 0.97f, 0.97f}},
                                                         {"black", {0.08f, 0.08f, 0.08f}},
                                                         {"cyan", {0.20f, 0.80f, 0.85f}}}};

/// Two different palette entries.
inline std::pair<NamedColor, NamedColor> two_colors(SampleRng& rng) {
  int const a = rng.below(int(kPalette.size()));
  int b = rng.below(int(kPalette.size()) - 1);
  if (b >= a) ++b;
  return {kPalette[std::size_t(a)], kPalette[std::size_t(b)]};
}

/// Renders `color(x, y)` (x, y in [0, 1) image units) with 4 x 4 samples per pixel into (3, size, size) in [0, 1].
template <class ColorAt>
Tensor<float, Cpu> render(Index size, ColorAt&& color) {
  Tensor<float, Cpu> img(Shape{3, size, size});  // (3, S, S)
  constexpr int kSub = 4;
  for (Index y = 0; y < size; ++y)
    for (Index x = 0; x < size; ++x) {
      std::array<float, 3> acc{0, 0, 0};
      for (int sy = 0; sy < kSub; ++sy)
        for (int sx = 0; sx < kSub; ++sx) {
          double const u = (double(x) + (sx + 0.5) / kSub) / double(size);
          double const v = (double(y) + (sy + 0.5) / kSub) / double(size);
          std::array<float, 3> const c = color(u, v);
          for (int k = 0; k < 3; ++k) acc[std::size_t(k)] += c[std::size_t(k)];
        }
      for (Index k = 0; k < 3; ++k) img((k * size + y) * size + x) = acc[std::size_t(k)] / float(kSub * kSub);
    }
  return img;
}

/// "a red" / "an orange".
inline std::string with_article(char const* word) {
  return std::string(std::string_view("aeiou").find(word[0]) != std::string_view::npos ? "an " : "a ") + word;
}

inline std::string csv_field(std::string const& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char ch : s) out += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return out + "\"";
}

}  // namespace detail

/// The default scribble classes.
inline std::vector<std::string> scribble_classes() { return SampleDataOptions{}.classes; }

/// `n` scribbles of class `cls` (circle, square, triangle, star, zigzag) as uint8 (n, 784), white on black.
inline Tensor<std::uint8_t, Cpu> make_scribbles(std::string const& cls, Index n, std::uint64_t seed) {
  SDLORA_EXPECTS(n >= 0, "[sample_data] negative count " << n);
  Tensor<std::uint8_t, Cpu> out(Shape{n, 784});  // (N, 28 * 28)
  std::uint64_t const class_id = fnv1a64(cls);
  for (Index i = 0; i < n; ++i) {
    detail::SampleRng rng(seed, class_id, std::uint64_t(i));
    detail::draw_scribble(out.data() + i * 784, cls, rng);
  }
  return out;
}

/// One captioned scene: image (3, size, size) in [0, 1] and its caption.
struct SampleScene {
  Tensor<float, Cpu> image;  // (3, S, S) in [0, 1]
  std::string caption;
};

/// Scene `index` (kinds cycle: circle, square, triangle, sun over hills, stripes, checkerboard; colours and
/// placement from the seed).
inline SampleScene make_scene(Index index, Index size, std::uint64_t seed) {
  SDLORA_EXPECTS(size >= 8 && index >= 0, "[sample_data] scene " << index << " of size " << size);
  using detail::kPalette;
  using Rgb = std::array<float, 3>;
  detail::SampleRng rng(seed, 0x5CE7E, std::uint64_t(index));
  // Not a structured binding: the lambdas below capture the two colours, which Clang accepts only from version 16.
  auto const colors = detail::two_colors(rng);
  auto const& fg = colors.first;
  auto const& bg = colors.second;
  SampleScene s;
  int const kind = int(index % 6);
  if (kind == 0) {
    double const cx = rng.uniform(0.35, 0.65), cy = rng.uniform(0.35, 0.65), r = rng.uniform(0.18, 0.3);
    s.image = detail::render(size, [&](double u, double v) -> Rgb {
      return (u - cx) * (u - cx) + (v - cy) * (v - cy) < r * r ? fg.rgb : bg.rgb;
    });
    s.caption =
        detail::with_article(fg.name) + " circle on " + detail::with_article(bg.name) + " background, flat style";
  } else if (kind == 1) {
    double const cx = rng.uniform(0.35, 0.65), cy = rng.uniform(0.35, 0.65), h = rng.uniform(0.15, 0.28);
    s.image = detail::render(size, [&](double u, double v) -> Rgb {
      return std::abs(u - cx) < h && std::abs(v - cy) < h ? fg.rgb : bg.rgb;
    });
    s.caption =
        detail::with_article(fg.name) + " square on " + detail::with_article(bg.name) + " background, flat style";
  } else if (kind == 2) {
    double const cx = rng.uniform(0.4, 0.6), top = rng.uniform(0.12, 0.25), base = rng.uniform(0.75, 0.88);
    double const half = rng.uniform(0.28, 0.4);
    s.image = detail::render(size, [&](double u, double v) -> Rgb {
      if (v < top || v > base) return bg.rgb;
      double const w = half * (v - top) / (base - top);
      return std::abs(u - cx) <= w ? fg.rgb : bg.rgb;
    });
    s.caption =
        detail::with_article(fg.name) + " triangle on " + detail::with_article(bg.name) + " background, flat style";
  } else if (kind == 3) {
    bool const sunset = rng.below(3) == 0;
    Rgb const sky = sunset ? Rgb{0.98f, 0.62f, 0.35f} : Rgb{0.55f, 0.75f, 0.95f};
    Rgb const sun = kPalette[2].rgb, hill = kPalette[3].rgb;
    double const sx = rng.uniform(0.25, 0.75), sy = rng.uniform(0.18, 0.32), sr = rng.uniform(0.09, 0.14);
    double const level = rng.uniform(0.58, 0.7), amp = rng.uniform(0.04, 0.09), freq = rng.uniform(1.0, 2.2);
    double const phase = rng.uniform(0, 2 * detail::kPi);
    s.image = detail::render(size, [&](double u, double v) -> Rgb {
      if (v > level + amp * std::sin(2 * detail::kPi * freq * u + phase)) return hill;
      if ((u - sx) * (u - sx) + (v - sy) * (v - sy) < sr * sr) return sun;
      return sky;
    });
    s.caption = sunset ? "a yellow sun over green hills at sunset" : "a yellow sun over green hills, blue sky";
  } else if (kind == 4) {
    bool const vertical = rng.below(2) == 1;
    int const n = 4 + 2 * rng.below(3);
    s.image = detail::render(
        size, [&](double u, double v) -> Rgb { return int((vertical ? u : v) * n) % 2 == 0 ? fg.rgb : bg.rgb; });
    s.caption = std::string(fg.name) + " and " + bg.name + (vertical ? " vertical" : " horizontal") + " stripes";
  } else {
    int const n = rng.below(2) ? 8 : 4;
    s.image = detail::render(
        size, [&](double u, double v) -> Rgb { return (int(u * n) + int(v * n)) % 2 == 0 ? fg.rgb : bg.rgb; });
    s.caption = detail::with_article(fg.name) + " and " + bg.name + " checkerboard, " + std::to_string(n) + " by " +
                std::to_string(n);
  }
  return s;
}

// ---------------------------------------------------------------------------------------------------------------
// The toy world: one flat shape in a named colour on a plain background of another named colour, captioned from its
// parameters ("a red circle on a blue background"), for a small base model to learn; and three sets derived from it
// for the adapters (a scribbled-outline style for LoRA, one subject for DreamBooth, one unseen shape for Textual
// Inversion).
// ---------------------------------------------------------------------------------------------------------------

/// The shapes of the base set (each one word in CLIP's vocabulary).
inline std::vector<std::string> toy_shapes() { return {"circle", "square", "triangle", "star", "heart", "diamond"}; }

/// The shape only the `concept` set shows (Textual Inversion learns it).
inline constexpr char const* kToyConceptShape = "crescent";

/// The toy world's named colours: hues far apart, plus white and black.
inline constexpr std::array<detail::NamedColor, 8> kToyPalette = {{{"red", {0.90f, 0.12f, 0.12f}},
                                                                   {"orange", {1.00f, 0.55f, 0.05f}},
                                                                   {"yellow", {0.98f, 0.90f, 0.10f}},
                                                                   {"green", {0.15f, 0.70f, 0.20f}},
                                                                   {"blue", {0.12f, 0.30f, 0.90f}},
                                                                   {"purple", {0.55f, 0.18f, 0.75f}},
                                                                   {"white", {0.97f, 0.97f, 0.97f}},
                                                                   {"black", {0.06f, 0.06f, 0.06f}}}};

/// The toy-world sets: `Base` (the base model's training set), `Style` (the same scenes and captions as black
/// scribbled outlines on white), `Subject` (one distinctive object: a yellow star with a red dot, "a sks toy on a
/// green background"), `SubjectClass` (its prior-preservation class images: ordinary shapes, "a toy on a green
/// background") and `Concept` (the unseen crescent, "a white <toy-shape> on a blue background").
enum class ToySet { Base, Style, Subject, SubjectClass, Concept };

/// "base", "style", "subject", "subject-class" or "concept"; ConfigError otherwise.
inline ToySet parse_toy_set(std::string const& name) {
  if (name == "base") return ToySet::Base;
  if (name == "style") return ToySet::Style;
  if (name == "subject") return ToySet::Subject;
  if (name == "subject-class") return ToySet::SubjectClass;
  if (name == "concept") return ToySet::Concept;
  SDLORA_THROW(ConfigError, "[toy_world] unknown set '" << name << "' (base, style, subject, subject-class, concept)");
}

/// One toy scene with the parameters its caption was made from.
struct ToyScene {
  Tensor<float, Cpu> image;  // (3, S, S) in [0, 1]
  std::string caption;
  std::string shape;       // "circle", ..., "crescent", or "sks" for the subject
  std::string color;       // the shape's palette name ("yellow" for the subject; "black" for style outlines)
  std::string background;  // the background's palette name ("white" for style scenes)
  double cx = 0, cy = 0;   // the shape's centre in image units ([0, 1), y down)
  double radius = 0;       // its half-extent in image units
};

namespace detail {

/// The closed outline of a toy shape in unit coordinates (y down, inside [-1, 1]^2, centred on its bounding box).
inline std::vector<Point> toy_outline(std::string const& shape) {
  std::vector<Point> p;
  auto ring = [&](int n, double a0, auto&& radius) {
    for (int k = 0; k < n; ++k) {
      double const a = a0 + 2 * kPi * k / n;
      p.push_back({radius(k) * std::cos(a), radius(k) * std::sin(a)});
    }
  };
  if (shape == "circle") {
    ring(48, 0.0, [](int) { return 1.0; });
  } else if (shape == "square") {
    p = {{-0.8, -0.8}, {0.8, -0.8}, {0.8, 0.8}, {-0.8, 0.8}};
  } else if (shape == "diamond") {  // taller than wide, as on playing cards: not a rotated square
    p = {{0.0, -1.0}, {0.7, 0.0}, {0.0, 1.0}, {-0.7, 0.0}};
  } else if (shape == "triangle") {  // equilateral, pointing up, centred on its bounding box
    p = {{0.0, -0.95}, {0.95, 0.70}, {-0.95, 0.70}};
  } else if (shape == "star") {  // five points, inner radius 0.42
    ring(10, -kPi / 2, [](int k) { return k % 2 ? 0.42 : 1.0; });
    for (Point& q : p) q.y += 0.095;  // centre the bounding box (the lower points reach 0.81)
  } else if (shape == "heart") {      // x = 16 sin^3 t, y = 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t, scaled to [-1, 1]
    for (int k = 0; k < 64; ++k) {
      double const t = 2 * kPi * k / 64, s = std::sin(t);
      double const y = 13 * std::cos(t) - 5 * std::cos(2 * t) - 2 * std::cos(3 * t) - std::cos(4 * t);
      p.push_back({16 * s * s * s / 17.0, -y / 17.0});
    }
    double lo = 1e9, hi = -1e9;
    for (Point const& q : p) lo = std::min(lo, q.y), hi = std::max(hi, q.y);
    for (Point& q : p) q.y = (q.y - (lo + hi) / 2) * 2.0 / (hi - lo) * 0.95;
  } else if (shape == kToyConceptShape) {  // a circle of radius 1 minus a circle of radius 0.8 moved right
    double const d = 0.55, r = 0.8, xi = (1 - r * r + d * d) / (2 * d), yi = std::sqrt(1 - xi * xi);
    double const a_out = std::atan2(yi, xi), a_in = std::atan2(yi, xi - d);
    for (int k = 0; k <= 32; ++k) {  // outer arc through the left side
      double const a = a_out + (2 * kPi - 2 * a_out) * k / 32;
      p.push_back({std::cos(a), std::sin(a)});
    }
    for (int k = 1; k < 24; ++k) {  // inner arc back through the cut circle's left side
      double const a = -a_in - (2 * kPi - 2 * a_in) * k / 24;
      p.push_back({d + r * std::cos(a), r * std::sin(a)});
    }
    double const shift = (1.0 - xi) / 2;  // the crescent spans x in [-1, xi]: centre it
    for (Point& q : p) q.x += shift;
  } else {
    SDLORA_THROW(ConfigError, "[toy_world] unknown shape '" << shape << "' (circle, square, triangle, star, heart, "
                                                            << "diamond, " << kToyConceptShape << ")");
  }
  return p;
}

/// Even-odd point-in-polygon test.
inline bool inside_polygon(std::vector<Point> const& poly, double x, double y) {
  bool in = false;
  for (std::size_t i = 0, j = poly.size() - 1; i < poly.size(); j = i++) {
    Point const a = poly[i], b = poly[j];
    if ((a.y > y) != (b.y > y) && x < (b.x - a.x) * (y - a.y) / (b.y - a.y) + a.x) in = !in;
  }
  return in;
}

/// Where and how big: radius in [0.15, 0.35] of the side, centre keeping the shape (nearly) inside.
struct ToyPlacement {
  double cx, cy, radius;
};
inline ToyPlacement toy_placement(SampleRng& rng) {
  double const r = rng.uniform(0.15, 0.35), lo = 0.9 * r, hi = 1.0 - 0.9 * r;
  return {rng.uniform(lo, hi), rng.uniform(lo, hi), r};
}

/// A palette index other than the ones in `avoid`.
inline int toy_color_except(SampleRng& rng, std::initializer_list<int> avoid) {
  std::vector<int> ok;
  for (int k = 0; k < int(kToyPalette.size()); ++k)
    if (std::find(avoid.begin(), avoid.end(), k) == avoid.end()) ok.push_back(k);
  return ok[std::size_t(rng.below(int(ok.size())))];
}

/// The flat-colour rendering: `fill` inside `outline` (placed at p), `bg` elsewhere, 4 x 4 samples per pixel; `dot`
/// (a colour) paints a disc of 0.28 radius at the centre when set.
inline Tensor<float, Cpu> render_toy(Index size, std::vector<Point> const& outline, ToyPlacement p,
                                     std::array<float, 3> fill, std::array<float, 3> bg,
                                     std::array<float, 3> const* dot = nullptr) {
  return render(size, [&](double u, double v) -> std::array<float, 3> {
    double const x = (u - p.cx) / p.radius, y = (v - p.cy) / p.radius;
    if (std::abs(x) > 1.05 || std::abs(y) > 1.05) return bg;
    if (dot && x * x + y * y < 0.28 * 0.28) return *dot;
    return inside_polygon(outline, x, y) ? fill : bg;
  });
}

/// The scribbled outline: the shape's outline placed at p, slightly distorted (scale, rotation), cut into pieces of
/// at most ~3 px whose ends are jittered by up to 0.6 px, started at a random vertex and overshooting it, drawn in
/// black on white with a stroke of 2-3 px (at 64 px; proportional to the size) and a one-pixel anti-aliased edge.
inline Tensor<float, Cpu> render_toy_scribble(Index size, std::vector<Point> const& outline, ToyPlacement p,
                                              SampleRng& rng) {
  double const side = double(size), unit = side / 64.0;
  double const sx = rng.uniform(0.92, 1.08), sy = rng.uniform(0.92, 1.08), angle = rng.uniform(-0.08, 0.08);
  double const c = std::cos(angle), s = std::sin(angle), half_width = rng.uniform(0.9, 1.4) * std::max(unit, 0.6);
  auto place = [&](Point q) {
    double const x = q.x * sx, y = q.y * sy;
    return Point{(p.cx + (c * x - s * y) * p.radius) * side, (p.cy + (s * x + c * y) * p.radius) * side};
  };
  std::size_t const n = outline.size(), start = std::size_t(rng.below(int(n)));
  std::size_t const extra = 1 + std::size_t(rng.below(std::max(2, int(n) / 8)));  // the overshoot, in vertices
  std::vector<Point> path;
  for (std::size_t k = 0; k <= n + extra - 1; ++k) {
    Point const a = place(outline[(start + k) % n]), b = place(outline[(start + k + 1) % n]);
    double const len = std::hypot(b.x - a.x, b.y - a.y);
    int const pieces = std::max(1, int(std::ceil(len / (3.0 * unit))));
    bool const last = k == n + extra - 1;
    for (int q = 0; q < pieces + (last ? 1 : 0); ++q) {
      double const t = double(q) / pieces;
      path.push_back({a.x + t * (b.x - a.x) + rng.uniform(-0.6, 0.6) * unit,
                      a.y + t * (b.y - a.y) + rng.uniform(-0.6, 0.6) * unit});
    }
  }
  Tensor<float, Cpu> img(Shape{3, size, size});  // (3, S, S)
  std::array<float, 3> const paper = kToyPalette[6].rgb, ink = kToyPalette[7].rgb;
  for (Index y = 0; y < size; ++y)
    for (Index x = 0; x < size; ++x) {
      Point const q{x + 0.5, y + 0.5};
      double d = 1e9;
      for (std::size_t k = 0; k + 1 < path.size(); ++k) d = std::min(d, segment_distance(q, path[k], path[k + 1]));
      float const cover = float(std::clamp(half_width + 0.5 - d, 0.0, 1.0));
      for (Index ch = 0; ch < 3; ++ch)
        img((ch * size + y) * size + x) = paper[std::size_t(ch)] * (1 - cover) + ink[std::size_t(ch)] * cover;
    }
  return img;
}

}  // namespace detail

/// Scene `index` of a toy-world set, deterministic from (seed, set, index). Base and Style scene i have the same
/// shape, colours, placement and caption; base scenes cycle through the shapes and, every 6 scenes, the colours
/// (each shape x colour pair once per 48 scenes), with a random other background. `token` is the subject's
/// identifier ("sks") or the concept's placeholder ("<toy-shape>"); empty gives those defaults.
inline ToyScene make_toy_scene(ToySet set, Index index, Index size, std::uint64_t seed, std::string token = "") {
  SDLORA_EXPECTS(size >= 8 && index >= 0, "[toy_world] scene " << index << " of size " << size);
  ToyScene s;
  auto const shapes = toy_shapes();
  auto name = [](int k) { return std::string(kToyPalette[std::size_t(k)].name); };
  auto ordinary = [&](std::uint64_t stream, bool cycle) {  // a base-like shape, colour, background, placement
    detail::SampleRng rng(seed, stream, std::uint64_t(index));
    int const shape = cycle ? int(index % Index(shapes.size())) : rng.below(int(shapes.size()));
    int const fg =
        cycle ? int(index / Index(shapes.size()) % Index(kToyPalette.size())) : rng.below(int(kToyPalette.size()));
    int const bg = detail::toy_color_except(rng, {fg});
    s.shape = shapes[std::size_t(shape)];
    s.color = name(fg);
    s.background = name(bg);
    auto const p = detail::toy_placement(rng);
    s.cx = p.cx, s.cy = p.cy, s.radius = p.radius;
    return std::pair{fg, bg};
  };
  switch (set) {
    case ToySet::Base:
    case ToySet::Style: {
      auto const [fg, bg] = ordinary(0x70B45E, true);
      s.caption = detail::with_article(s.color.c_str()) + " " + s.shape + " on " +
                  detail::with_article(s.background.c_str()) + " background";
      auto const outline = detail::toy_outline(s.shape);
      if (set == ToySet::Base) {
        s.image = detail::render_toy(size, outline, {s.cx, s.cy, s.radius}, kToyPalette[std::size_t(fg)].rgb,
                                     kToyPalette[std::size_t(bg)].rgb);
      } else {
        detail::SampleRng rng(seed, 0x57E1E, std::uint64_t(index));
        s.image = detail::render_toy_scribble(size, outline, {s.cx, s.cy, s.radius}, rng);
        s.color = "black";
        s.background = "white";
      }
      break;
    }
    case ToySet::SubjectClass: {
      auto const [fg, bg] = ordinary(0xC1A55, false);
      s.image = detail::render_toy(size, detail::toy_outline(s.shape), {s.cx, s.cy, s.radius},
                                   kToyPalette[std::size_t(fg)].rgb, kToyPalette[std::size_t(bg)].rgb);
      s.caption = "a toy on " + detail::with_article(s.background.c_str()) + " background";
      break;
    }
    case ToySet::Subject: {
      detail::SampleRng rng(seed, 0x5B1EC7, std::uint64_t(index));
      int const yellow = 2, red = 0, orange = 1;
      int const bg = detail::toy_color_except(rng, {yellow, red, orange});
      auto const p = detail::toy_placement(rng);
      s.shape = token.empty() ? "sks" : token;
      s.color = "yellow";
      s.background = name(bg);
      s.cx = p.cx, s.cy = p.cy, s.radius = p.radius;
      s.image = detail::render_toy(size, detail::toy_outline("star"), p, kToyPalette[yellow].rgb,
                                   kToyPalette[std::size_t(bg)].rgb, &kToyPalette[red].rgb);
      s.caption = "a " + s.shape + " toy on " + detail::with_article(s.background.c_str()) + " background";
      break;
    }
    case ToySet::Concept: {
      detail::SampleRng rng(seed, 0xC0C3E7, std::uint64_t(index));
      int const fg = rng.below(int(kToyPalette.size())), bg = detail::toy_color_except(rng, {fg});
      auto const p = detail::toy_placement(rng);
      s.shape = kToyConceptShape;
      s.color = name(fg);
      s.background = name(bg);
      s.cx = p.cx, s.cy = p.cy, s.radius = p.radius;
      s.image = detail::render_toy(size, detail::toy_outline(s.shape), p, kToyPalette[std::size_t(fg)].rgb,
                                   kToyPalette[std::size_t(bg)].rgb);
      s.caption = detail::with_article(s.color.c_str()) + " " + (token.empty() ? "<toy-shape>" : token) + " on " +
                  detail::with_article(s.background.c_str()) + " background";
      break;
    }
  }
  return s;
}

/// `count` toy prompts for evaluation ("a red circle on a blue background", as the base captions), deterministic
/// from `seed` and drawn from their own stream (not the base scenes' captions in order). Spread evenly: the shapes
/// run through a fresh shuffle of all 6 every 6 prompts and the colours and backgrounds through fresh shuffles of
/// all 8 every 8 prompts (the background shuffle rearranged so that it never repeats the colour), so each shape,
/// colour and background appears equally often up to one, and all 6 shapes and 8 colours appear once count >= 8.
inline std::vector<std::string> toy_prompts(Index count, std::uint64_t seed) {
  SDLORA_EXPECTS(count >= 0, "[toy_prompts] count " << count);
  auto const shapes = toy_shapes();
  constexpr int kColors = int(kToyPalette.size());
  auto shuffled = [](detail::SampleRng& rng, int n) {  // Fisher-Yates
    std::vector<int> p(static_cast<std::size_t>(n));
    for (int k = 0; k < n; ++k) p[std::size_t(k)] = k;
    for (int k = n - 1; k > 0; --k) std::swap(p[std::size_t(k)], p[std::size_t(rng.below(k + 1))]);
    return p;
  };
  std::vector<std::string> out;
  std::vector<int> shape_block, color_block, bg_block;
  for (Index i = 0; i < count; ++i) {
    if (i % Index(shapes.size()) == 0) {
      detail::SampleRng rng(seed, 0x9307A, std::uint64_t(i));
      shape_block = shuffled(rng, int(shapes.size()));
    }
    if (i % kColors == 0) {
      detail::SampleRng rng(seed, 0x9307B, std::uint64_t(i));
      color_block = shuffled(rng, kColors);
      bg_block = shuffled(rng, kColors);
      // A clash at k is swapped with k + 1 (cyclically): both then differ from their colours, as each block is a
      // permutation, so one pass leaves none.
      for (int k = 0; k < kColors; ++k)
        if (bg_block[std::size_t(k)] == color_block[std::size_t(k)])
          std::swap(bg_block[std::size_t(k)], bg_block[std::size_t((k + 1) % kColors)]);
    }
    std::string const& shape = shapes[std::size_t(shape_block[std::size_t(i % Index(shapes.size()))])];
    char const* color = kToyPalette[std::size_t(color_block[std::size_t(i % kColors)])].name;
    char const* bg = kToyPalette[std::size_t(bg_block[std::size_t(i % kColors)])].name;
    out.push_back(detail::with_article(color) + " " + shape + " on " + detail::with_article(bg) + " background");
  }
  return out;
}

/// What write_toy_world makes.
struct ToyWorldOptions {
  ToySet set = ToySet::Base;
  Index count = 16;  // scenes
  Index size = 64;   // their side in pixels
  std::uint64_t seed = 0;
  std::string token;  // the subject's identifier / the concept's placeholder (empty: "sks" / "<toy-shape>")
};

/// Writes `<out>/NNNN.png` (caption also in a tEXt chunk "caption") and `<out>/metadata.csv` (file_name,text) for
/// `count` scenes of a set; the Subject set also writes its class images (as many) to `<out>/class/`. Returns the
/// files written. IoError when a file cannot be written.
inline std::vector<std::string> write_toy_world(std::string const& out, ToyWorldOptions const& o) {
  namespace fs = std::filesystem;
  if (o.count < 0 || o.size < 8)
    SDLORA_THROW(ConfigError, "[toy_world] bad options: count " << o.count << ", size " << o.size);
  std::vector<std::string> files;
  auto write_set = [&](fs::path const& dir, ToySet set) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (!fs::is_directory(dir)) SDLORA_THROW(IoError, "[toy_world] cannot create " << dir.string());
    std::string csv = "file_name,text\n";
    for (Index i = 0; i < o.count; ++i) {
      ToyScene const s = make_toy_scene(set, i, o.size, o.seed, o.token);
      char name[32];
      std::snprintf(name, sizeof name, "%04lld.png", static_cast<long long>(i));
      std::string const path = (dir / name).string();
      io::save_png(path, s.image.view(), io::ImageRange::ZeroToOne, {{"caption", s.caption}});
      files.push_back(path);
      csv += std::string(name) + "," + detail::csv_field(s.caption) + "\n";
    }
    std::string const path = (dir / "metadata.csv").string();
    io::detail::write_file_bytes(path, csv, "[toy_world]");
    files.push_back(path);
  };
  write_set(fs::path(out), o.set);
  if (o.set == ToySet::Subject) write_set(fs::path(out) / "class", ToySet::SubjectClass);
  return files;
}

/// Writes `<out>/quickdraw/<class>.npy` and `<out>/images/NNNN.png` (caption also in a tEXt chunk "caption") with
/// `<out>/images/metadata.csv` (file_name,text; captions with commas quoted). IoError when a file cannot be written.
inline SampleDataFiles write_sample_data(std::string const& out, SampleDataOptions const& o = {}) {
  namespace fs = std::filesystem;
  if (o.images < 0 || o.scribbles_per_class < 0 || o.image_size < 8)
    SDLORA_THROW(ConfigError, "[sample_data] bad options: images " << o.images << ", size " << o.image_size
                                                                   << ", scribbles " << o.scribbles_per_class);
  SampleDataFiles files;
  fs::path const qd = fs::path(out) / "quickdraw", im = fs::path(out) / "images";
  files.quickdraw_dir = qd.string();
  files.image_dir = im.string();
  std::error_code ec;
  fs::create_directories(qd, ec);
  fs::create_directories(im, ec);
  if (!fs::is_directory(qd) || !fs::is_directory(im))
    SDLORA_THROW(IoError, "[sample_data] cannot create " << qd.string() << " and " << im.string());
  if (o.scribbles_per_class > 0)
    for (auto const& cls : o.classes) {
      std::string const path = (qd / (cls + ".npy")).string();
      io::save_npy(path, make_scribbles(cls, o.scribbles_per_class, o.seed));
      files.files.push_back(path);
    }
  if (o.images > 0) {
    std::string csv = "file_name,text\n";
    for (Index i = 0; i < o.images; ++i) {
      SampleScene const s = make_scene(i, o.image_size, o.seed);
      char name[32];
      std::snprintf(name, sizeof name, "%04lld.png", static_cast<long long>(i));
      std::string const path = (im / name).string();
      io::save_png(path, s.image.view(), io::ImageRange::ZeroToOne, {{"caption", s.caption}});
      files.files.push_back(path);
      csv += std::string(name) + "," + detail::csv_field(s.caption) + "\n";
    }
    std::string const path = (im / "metadata.csv").string();
    io::detail::write_file_bytes(path, csv, "[sample_data]");
    files.files.push_back(path);
  }
  return files;
}

}  // namespace sdlora::train
