/// @file preprocess.hpp
/// @brief Image preprocessing for the evaluation encoders exactly as transformers' CLIPImageProcessor and
/// ViTImageProcessor do on their PIL path: Pillow's separable resampling of 8-bit images (its filters, support
/// widened by the scale when downsizing, coefficients in 22-bit fixed point, each pass rounded to 8 bits),
/// shortest-edge or fixed-size resize, center crop (floor offsets, zero padding when the crop is larger), rescale
/// in double then float, normalise in float. Include <sdlora/eval.hpp> instead.
///
/// references (read, not copied): Pillow src/libImaging/Resample.c (precompute_coeffs, normalize_coeffs_8bpc,
/// ImagingResampleHorizontal_8bpc / Vertical, ImagingResampleInner's pass order in Pillow 13); transformers image_transforms.py (resize,
/// center_crop, rescale, normalize, get_resize_output_image_size) and models/{clip,vit}/image_processing_*.py.
#pragma once

#include <algorithm>  // std::clamp, std::max, std::min
#include <array>      // std::array
#include <cmath>      // std::ceil, std::sin, std::cos, std::fabs
#include <cstdint>    // std::uint8_t, std::int32_t, std::int64_t
#include <numbers>    // std::numbers::pi
#include <string>     // std::string
#include <vector>     // std::vector

#include <nlohmann/json.hpp>  // nlohmann::json

#include <sdlora/core/error.hpp>   // ConfigError, SDLORA_EXPECTS
#include <sdlora/core/tensor.hpp>  // Tensor
#include <sdlora/io/image.hpp>     // io::load_image, io::to_uint8
#include <sdlora/models/config.hpp>  // models::read_json

namespace sdlora::eval {

/// Pillow's resampling filters, numbered as PIL.Image.Resampling (the `resample` field of preprocessor_config.json).
enum class Resample { Nearest = 0, Lanczos = 1, Bilinear = 2, Bicubic = 3, Box = 4, Hamming = 5 };

namespace detail {
inline constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow's fixed-point precision for 8-bit images

struct PilFilter {
  double support;
  double (*fn)(double);
};
inline double sinc(double x) {
  if (x == 0.0) return 1.0;
  x *= std::numbers::pi;
  return std::sin(x) / x;
}
inline PilFilter pil_filter(Resample r) {
  switch (r) {
    case Resample::Box: return {0.5, [](double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }};
    case Resample::Bilinear: return {1.0, [](double x) { return std::fabs(x) < 1.0 ? 1.0 - std::fabs(x) : 0.0; }};
    case Resample::Hamming:
      return {1.0, [](double x) {
                if (x == 0.0) return 1.0;
                if (x >= 1.0 || x <= -1.0) return 0.0;
                x *= std::numbers::pi;
                return std::sin(x) / x * (double(0.54f) + double(0.46f) * std::cos(x));  // Pillow: float literals
              }};
    case Resample::Bicubic:
      return {2.0, [](double x) {  // Keys' cubic with a = -0.5
                double const a = -0.5;
                x = std::fabs(x);
                if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
                if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
                return 0.0;
              }};
    case Resample::Lanczos:
      return {3.0, [](double x) { return (-3.0 <= x && x < 3.0) ? sinc(x) * sinc(x / 3.0) : 0.0; }};
    case Resample::Nearest: break;
  }
  SDLORA_THROW(ConfigError, "[resize] resample " << int(r) << " (nearest or unknown) is not supported");
}

/// Per output pixel: the first input pixel, how many follow, and fixed-point weights (ksize per pixel).
struct Coefficients {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<std::int32_t> weights;  // (out, ksize)
};
inline Coefficients precompute_coefficients(int in_size, int out_size, Resample r) {
  PilFilter const f = pil_filter(r);
  double const scale = double(in_size) / out_size;
  double const filterscale = std::max(scale, 1.0);  // widen the filter when downsizing (antialiasing)
  double const support = f.support * filterscale;
  Coefficients c;
  c.ksize = int(std::ceil(support)) * 2 + 1;
  c.first.resize(std::size_t(out_size));
  c.count.resize(std::size_t(out_size));
  c.weights.assign(std::size_t(out_size) * std::size_t(c.ksize), 0);
  std::vector<double> k(std::size_t(c.ksize));
  double const inv_filterscale = 1.0 / filterscale;  // Pillow multiplies by the inverse (rounding matters)
  for (int xx = 0; xx < out_size; ++xx) {
    double const center = (xx + 0.5) * scale;
    int xmin = int(center - support + 0.5);  // C truncation, as Pillow
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[std::size_t(x)] = f.fn((x + xmin - center + 0.5) * inv_filterscale);
      ww += k[std::size_t(x)];
    }
    for (int x = 0; x < xmax; ++x) {
      double const w = ww != 0.0 ? k[std::size_t(x)] / ww : k[std::size_t(x)];
      double const fixed = w * double(1 << kPrecisionBits);
      c.weights[std::size_t(xx) * std::size_t(c.ksize) + std::size_t(x)] =
          std::int32_t(fixed < 0 ? fixed - 0.5 : fixed + 0.5);  // round half away from zero
    }
    c.first[std::size_t(xx)] = xmin;
    c.count[std::size_t(xx)] = xmax;
  }
  return c;
}
inline std::uint8_t clip8(std::int64_t acc) {
  std::int64_t const v = acc >> kPrecisionBits;  // arithmetic shift: floor
  return std::uint8_t(std::clamp<std::int64_t>(v, 0, 255));
}
}  // namespace detail

/// Resizes interleaved 8-bit pixels (H, W, C) to (out_h, out_w, C) as PIL's Image.resize((out_w, out_h), resample)
/// without reducing_gap: two separable passes, each rounded to 8 bits; a pass whose size does not change is
/// skipped. Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many pixels as the
/// width (h - out_h > 0 and h - out_h > 2 (w - out_w)); earlier Pillow always ran the horizontal pass first, which
/// differs by one level on some pixels of such images.
inline Tensor<std::uint8_t, Cpu> pil_resize(TensorView<std::uint8_t const, Cpu> pixels, Index out_h, Index out_w,
                                            Resample resample) {
  SDLORA_EXPECTS(pixels.rank() == 3 && pixels.is_contiguous() && out_h > 0 && out_w > 0,
                 "[pil_resize] pixels must be contiguous (H, W, C) and the size positive, got " << pixels.shape()
                                                                                                << " -> " << out_h
                                                                                                << "x" << out_w);
  Index const ch = pixels.dim(2);
  // One pass along axis 1 (horizontal) or 0 (vertical) of cur (H, W, C).
  auto pass = [&](Tensor<std::uint8_t, Cpu> const& cur, int axis, Index out) {
    Index const h = cur.dim(0), w = cur.dim(1), in = axis == 1 ? w : h;
    auto const c = detail::precompute_coefficients(int(in), int(out), resample);
    Index const oh = axis == 1 ? h : out, ow = axis == 1 ? out : w;
    Tensor<std::uint8_t, Cpu> dst(Shape{oh, ow, ch});  // (oh, ow, C)
    for (Index y = 0; y < oh; ++y)
      for (Index x = 0; x < ow; ++x) {
        Index const o = axis == 1 ? x : y;  // the output index along the resampled axis
        std::int32_t const* wt = c.weights.data() + o * c.ksize;
        for (Index k = 0; k < ch; ++k) {
          std::int64_t acc = std::int64_t(1) << (detail::kPrecisionBits - 1);
          for (int i = 0; i < c.count[std::size_t(o)]; ++i) {
            Index const s = c.first[std::size_t(o)] + i;
            acc += std::int64_t(axis == 1 ? cur((y * w + s) * ch + k) : cur((s * w + x) * ch + k)) * wt[i];
          }
          dst((y * ow + x) * ch + k) = detail::clip8(acc);
        }
      }
    return dst;
  };
  Index const h = pixels.dim(0), w = pixels.dim(1);
  bool const vertical_first = (h - out_h) > 0 && (h - out_h) > 2 * (w - out_w);
  Tensor<std::uint8_t, Cpu> cur = Tensor<std::uint8_t, Cpu>::from_view(pixels);  // (H, W, C)
  if (vertical_first) {
    cur = pass(cur, 0, out_h);
    if (out_w != w) cur = pass(cur, 1, out_w);
  } else {
    if (out_w != w) cur = pass(cur, 1, out_w);
    if (out_h != h) cur = pass(cur, 0, out_h);
  }
  return cur;
}

/// transformers' center_crop of (H, W, C): offsets floor((H - h) / 2), floor((W - w) / 2); an image smaller than the
/// crop is first padded with zeros, centred with ceil((h - H) / 2) above.
inline Tensor<std::uint8_t, Cpu> center_crop_hwc(TensorView<std::uint8_t const, Cpu> pixels, Index crop_h,
                                                 Index crop_w) {
  SDLORA_EXPECTS(pixels.rank() == 3 && pixels.is_contiguous() && crop_h > 0 && crop_w > 0,
                 "[center_crop] pixels must be contiguous (H, W, C), got " << pixels.shape());
  Index const h = pixels.dim(0), w = pixels.dim(1), ch = pixels.dim(2);
  auto floor_half = [](Index v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); };
  Index top = floor_half(h - crop_h), left = floor_half(w - crop_w);
  Index const pad_top = h < crop_h ? (crop_h - h + 1) / 2 : 0, pad_left = w < crop_w ? (crop_w - w + 1) / 2 : 0;
  top += pad_top;
  left += pad_left;
  Tensor<std::uint8_t, Cpu> out(Shape{crop_h, crop_w, ch});  // (crop_h, crop_w, C), zeros where padded
  for (Index y = 0; y < crop_h; ++y)
    for (Index x = 0; x < crop_w; ++x) {
      Index const sy = top + y - pad_top, sx = left + x - pad_left;  // in the unpadded image
      if (sy < 0 || sy >= h || sx < 0 || sx >= w) continue;
      for (Index k = 0; k < ch; ++k) out((y * crop_w + x) * ch + k) = pixels.data()[(sy * w + sx) * ch + k];
    }
  return out;
}

/// What preprocessor_config.json asks for (CLIPImageProcessor or ViTImageProcessor fields).
struct ImageProcessorConfig {
  bool do_resize = true;
  bool shortest_edge = true;  // true: resize the shorter side to `size`; false: to exactly height x width
  int size = 224;             // shortest edge
  int height = 224, width = 224;
  Resample resample = Resample::Bicubic;
  bool do_center_crop = true;
  int crop_height = 224, crop_width = 224;
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  std::array<double, 3> image_mean{0.48145466, 0.4578275, 0.40821073};  // OPENAI_CLIP_MEAN
  std::array<double, 3> image_std{0.26862954, 0.26130258, 0.27577711};   // OPENAI_CLIP_STD

  /// CLIPImageProcessor's defaults.
  static ImageProcessorConfig clip() { return {}; }
  /// ViTImageProcessor's defaults: 224x224 bilinear, no crop, mean = std = 0.5 (IMAGENET_STANDARD).
  static ImageProcessorConfig vit() {
    ImageProcessorConfig c;
    c.shortest_edge = false;
    c.resample = Resample::Bilinear;
    c.do_center_crop = false;
    c.image_mean = {0.5, 0.5, 0.5};
    c.image_std = {0.5, 0.5, 0.5};
    return c;
  }

  /// From preprocessor_config.json; the processor type (image_processor_type or feature_extractor_type: "CLIP..."
  /// or "ViT...") picks the defaults and how a bare integer `size` reads (shortest edge for CLIP, square for ViT).
  static ImageProcessorConfig from_json(nlohmann::json const& j) {
    using models::detail::get_or;
    std::string type = get_or(j, "image_processor_type", std::string());
    if (type.empty()) type = get_or(j, "feature_extractor_type", std::string("CLIPImageProcessor"));
    bool const vit_like = type.starts_with("ViT") || type.starts_with("DeiT") || type.starts_with("BeiT");
    if (!vit_like && !type.starts_with("CLIP"))
      SDLORA_THROW(ConfigError, "[preprocessor config] image processor '" << type
                                                                          << "' is not supported (CLIP..., ViT...)");
    ImageProcessorConfig c = vit_like ? vit() : clip();
    c.do_resize = get_or(j, "do_resize", true);
    if (auto it = j.find("size"); it != j.end() && !it->is_null()) {
      if (it->is_number_integer()) {
        c.shortest_edge = !vit_like;
        c.size = c.height = c.width = it->get<int>();
      } else if (it->contains("longest_edge") || it->contains("max_height")) {
        SDLORA_THROW(ConfigError, "[preprocessor config] size " << it->dump()
                                                                << " is not supported (shortest_edge, or height and width)");
      } else if (it->contains("shortest_edge")) {
        c.shortest_edge = true;
        c.size = (*it)["shortest_edge"].get<int>();
      } else if (it->contains("height") && it->contains("width")) {
        c.shortest_edge = false;
        c.height = (*it)["height"].get<int>();
        c.width = (*it)["width"].get<int>();
      } else {
        SDLORA_THROW(ConfigError, "[preprocessor config] size " << it->dump() << " is not supported");
      }
    }
    c.resample = Resample(get_or(j, "resample", int(c.resample)));
    c.do_center_crop = get_or(j, "do_center_crop", c.do_center_crop);
    if (auto it = j.find("crop_size"); it != j.end() && !it->is_null()) {
      if (it->is_number_integer()) {
        c.crop_height = c.crop_width = it->get<int>();
      } else {
        c.crop_height = it->value("height", c.crop_height);
        c.crop_width = it->value("width", c.crop_width);
      }
    }
    c.do_rescale = get_or(j, "do_rescale", true);
    c.rescale_factor = get_or(j, "rescale_factor", 1.0 / 255.0);
    c.do_normalize = get_or(j, "do_normalize", true);
    auto triple = [&](char const* field, std::array<double, 3> fallback) {
      auto v = get_or(j, field, std::vector<double>(fallback.begin(), fallback.end()));
      if (v.size() == 1) v.assign(3, v[0]);
      if (v.size() != 3) SDLORA_THROW(ConfigError, "[preprocessor config] " << field << " needs 3 values");
      return std::array<double, 3>{v[0], v[1], v[2]};
    };
    c.image_mean = triple("image_mean", c.image_mean);
    c.image_std = triple("image_std", c.image_std);
    return c;
  }
  static ImageProcessorConfig from_file(std::string const& path) { return from_json(models::read_json(path)); }

  /// The (height, width) the pipeline produces.
  std::array<Index, 2> output_size(Index h, Index w) const {
    if (do_center_crop) return {crop_height, crop_width};
    return do_resize ? resized_size(h, w) : std::array<Index, 2>{h, w};
  }
  /// transformers' get_resize_output_image_size (default_to_square=False) for shortest_edge, else (height, width).
  std::array<Index, 2> resized_size(Index h, Index w) const {
    if (!shortest_edge) return {height, width};
    Index const s = std::min(h, w), l = std::max(h, w);
    if (s == size) return {h, w};
    Index const new_long = Index(double(size * l) / double(s));  // Python int(size * long / short)
    return w <= h ? std::array<Index, 2>{new_long, size} : std::array<Index, 2>{size, new_long};
  }
};

/// The 8-bit stage: resize and crop of RGB pixels (H, W, 3) -> (h, w, 3).
inline Tensor<std::uint8_t, Cpu> resize_and_crop(TensorView<std::uint8_t const, Cpu> pixels,
                                                 ImageProcessorConfig const& c) {
  Tensor<std::uint8_t, Cpu> img = Tensor<std::uint8_t, Cpu>::from_view(pixels);  // (H, W, 3)
  if (c.do_resize) {
    auto const [h, w] = c.resized_size(pixels.dim(0), pixels.dim(1));
    img = pil_resize(img.view(), h, w, c.resample);
  }
  if (c.do_center_crop) img = center_crop_hwc(img.view(), c.crop_height, c.crop_width);
  return img;
}

/// pixel_values (3, h, w) of RGB pixels (H, W, 3) as the processor computes them: float32(double(u) * factor),
/// then (x - float32(mean)) / float32(std) in float32.
inline Tensor<float, Cpu> preprocess(TensorView<std::uint8_t const, Cpu> pixels, ImageProcessorConfig const& c) {
  SDLORA_EXPECTS(pixels.rank() == 3 && pixels.dim(2) == 3, "[preprocess] pixels must be RGB (H, W, 3), got "
                                                               << pixels.shape());
  Tensor<std::uint8_t, Cpu> const img = resize_and_crop(pixels, c);  // (h, w, 3)
  Index const h = img.dim(0), w = img.dim(1);
  auto out = Tensor<float, Cpu>::uninitialized(Shape{3, h, w});  // (3, h, w)
  for (Index k = 0; k < 3; ++k) {
    float const mean = float(c.image_mean[std::size_t(k)]), std = float(c.image_std[std::size_t(k)]);
    for (Index y = 0; y < h; ++y)
      for (Index x = 0; x < w; ++x) {
        float v = float(img((y * w + x) * 3 + k));
        if (c.do_rescale) v = float(double(img((y * w + x) * 3 + k)) * c.rescale_factor);
        if (c.do_normalize) v = (v - mean) / std;
        out((k * h + y) * w + x) = v;
      }
  }
  return out;
}

/// An image file as RGB 8-bit pixels (H, W, 3) (PIL's convert("RGB"); see io/image.hpp for what stb decodes).
inline Tensor<std::uint8_t, Cpu> load_rgb8(std::string const& path) {
  Tensor<float, Cpu> const img = io::load_image(path, io::ImageRange::ZeroToOne);  // (3, H, W), u / 255
  return io::to_uint8(img.view(), io::ImageRange::ZeroToOne);  // exact: round(u / 255 * 255) = u
}

}  // namespace sdlora::eval
