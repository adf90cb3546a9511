/// @file bucketing.hpp
/// @brief Aspect-ratio bucketing as kohya's sd-scripts does it: a list of (height, width) buckets of about
/// resolution^2 pixels with sides in steps of `step`, each image assigned to the bucket whose aspect ratio is closest
/// to its own, then resized to cover the bucket and cropped to it. Include <sdlora/train.hpp> instead.
///
/// Reference: sd-scripts library/model_util.py `make_bucket_resolutions` and library/train_util.py
/// `BucketManager.select_bucket` (absolute difference of width / height ratios; the first of equals wins) and
/// `trim_and_resize_if_required` (scale = max(bucket_w / w, bucket_h / h), rounded sizes, then a crop).
#pragma once

#include <algorithm>              // std::sort, std::max, std::unique
#include <cmath>                  // std::abs, std::sqrt, std::lround
#include <ostream>                // std::ostream
#include <sdlora/core/error.hpp>  // ConfigError, SDLORA_THROW
#include <sdlora/core/shape.hpp>  // Index
#include <vector>                 // std::vector

namespace sdlora::train {

/// One bucket: the size every image in it is cropped to.
struct Bucket {
  Index height = 0;
  Index width = 0;
  double aspect() const { return double(width) / double(height); }
  friend bool operator==(Bucket const& a, Bucket const& b) { return a.height == b.height && a.width == b.width; }
  friend std::ostream& operator<<(std::ostream& os, Bucket const& b) { return os << b.width << "x" << b.height; }
};

/// kohya's bucket list for a square training resolution: the square bucket (floor(resolution / step) * step) and,
/// for every width from `min_side` to `max_side` in steps of `step`, height = min(max_side, floor(resolution^2 /
/// width / step) * step) when that is >= min_side, plus its transpose. Sorted by (width, height), no duplicates.
/// `min_side` / `max_side` of 0 mean resolution / 2 and resolution * 2 rounded down to the step (kohya's 256 and
/// 1024 at 512).
inline std::vector<Bucket> make_buckets(Index resolution, Index step = 64, Index min_side = 0, Index max_side = 0) {
  if (resolution <= 0 || step <= 0 || resolution < step)
    SDLORA_THROW(ConfigError, "[bucketing] resolution " << resolution << " and step " << step
                                                        << " must be positive with resolution >= step");
  if (min_side == 0) min_side = std::max(step, resolution / 2 / step * step);
  if (max_side == 0) max_side = resolution * 2 / step * step;
  if (min_side < step || max_side < min_side)
    SDLORA_THROW(ConfigError, "[bucketing] bad side limits [" << min_side << ", " << max_side << "] for step " << step);
  Index const area = resolution * resolution;
  std::vector<Bucket> out;
  Index const square = Index(std::sqrt(double(area))) / step * step;
  out.push_back({square, square});
  for (Index w = min_side; w <= max_side; w += step) {
    Index const h = std::min(max_side, area / w / step * step);
    if (h >= min_side) {
      out.push_back({h, w});
      out.push_back({w, h});
    }
  }
  std::sort(out.begin(), out.end(), [](Bucket const& a, Bucket const& b) {
    return a.width != b.width ? a.width < b.width : a.height < b.height;
  });
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

/// The index of the bucket whose width / height is closest to the image's (absolute difference; the first of equals).
inline int closest_bucket(std::vector<Bucket> const& buckets, Index height, Index width) {
  SDLORA_EXPECTS(!buckets.empty() && height > 0 && width > 0,
                 "[bucketing] no buckets or an empty image " << height << "x" << width);
  double const aspect = double(width) / double(height);
  int best = 0;
  double best_error = std::abs(buckets[0].aspect() - aspect);
  for (std::size_t i = 1; i < buckets.size(); ++i) {
    double const e = std::abs(buckets[i].aspect() - aspect);
    if (e < best_error) {
      best_error = e;
      best = int(i);
    }
  }
  return best;
}

/// The size an (height, width) image is resized to before it is cropped to `bucket`: scaled by
/// max(bucket.width / width, bucket.height / height) (it covers the bucket), sides rounded to nearest and never
/// below the bucket's.
inline Bucket cover_size(Bucket const& bucket, Index height, Index width) {
  double const scale = std::max(double(bucket.width) / double(width), double(bucket.height) / double(height));
  return {std::max(bucket.height, Index(std::lround(double(height) * scale))),
          std::max(bucket.width, Index(std::lround(double(width) * scale)))};
}

/// Where an example's pixels came from: the source image's size before resizing and the top-left corner of the crop
/// in the resized image (what SDXL's time ids record: train_dreambooth_lora_sdxl.py's original_size and
/// crop_top_left).
struct Geometry {
  Index original_height = 0, original_width = 0;
  Index crop_top = 0, crop_left = 0;
};

}  // namespace sdlora::train
