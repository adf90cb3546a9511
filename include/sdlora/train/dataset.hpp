/// @file dataset.hpp
/// @brief Training datasets: captioned image folders (diffusers ImageFolder `metadata.csv` / `metadata.jsonl`,
/// kohya `.txt` captions and `N_name` repeat folders, one fixed DreamBooth prompt) and QuickDraw `.npy` bitmaps, with
/// diffusers' train_text_to_image transforms, caption dropout, aspect-ratio buckets, validation of the files, and the
/// resumable epoch order. Include <sdlora/train.hpp> instead.
///
/// Transforms (diffusers examples/text_to_image/train_text_to_image.py, torchvision semantics):
/// - `Resize(resolution)` on the shorter side (longer side int(resolution * long / short)), bilinear by default
///   (`Filter::Bicubic` selectable; QuickDraw bitmaps use bicubic), skipped when the size already matches; the result
///   is clamped to [-1, 1] (PIL resamples 8-bit images, which clamps the cubic's overshoot);
/// - `CenterCrop(resolution)` or `RandomCrop(resolution)`: top = randint(0, H - h + 1), then left =
///   randint(0, W - w + 1), both drawn from the example's TorchGenerator exactly as torchvision's
///   RandomCrop.get_params draws them from torch's generator (nothing is drawn when the window is the image);
/// - `RandomHorizontalFlip()`: flip when rand(1) < 0.5 (torchvision's draw);
/// - `ToTensor` + `Normalize([0.5], [0.5])`: u / 255 then (v - 0.5) / 0.5 in float (io::load_image does this);
/// - caption dropout (kohya's caption_dropout_rate): the empty caption when rand(1) < p, drawn after the flip.
/// With bucketing, the image is resized to cover its bucket (bucketing.hpp) and cropped (centre or random) to it.
///
/// Validation at open: every image's header is read (stb_image's info); unreadable files and images whose shorter
/// side is below max(8, min_size) are skipped with a warning naming the file (`skipped()` lists them), or throw
/// IoError naming the file with `strict`. An empty result is a ConfigError naming the folder.
#pragma once

#include <algorithm>                      // std::sort, std::find, std::min, std::max, std::clamp
#include <cctype>                         // std::isdigit, std::tolower
#include <cmath>                          // std::abs, std::nearbyint
#include <cstdint>                        // std::uint8_t, std::uint64_t, std::int64_t
#include <filesystem>                     // std::filesystem
#include <fstream>                        // std::ifstream
#include <iostream>                       // std::cerr
#include <map>                            // std::map
#include <memory>                         // std::shared_ptr, std::make_shared
#include <nlohmann/json.hpp>              // nlohmann::json (metadata.jsonl)
#include <optional>                       // std::optional
#include <ostream>                        // std::ostream
#include <sdlora/core/error.hpp>          // ConfigError, FormatError, IoError, SDLORA_THROW
#include <sdlora/core/json.hpp>           // check_json_depth
#include <sdlora/core/rng.hpp>            // TorchGenerator
#include <sdlora/core/tensor.hpp>         // Tensor
#include <sdlora/io/image.hpp>            // io::decode_image, io::resize, io::crop, io::hflip, io::Filter
#include <sdlora/io/npy.hpp>              // io::NpyFile
#include <sdlora/train/bucketing.hpp>     // Bucket, make_buckets, closest_bucket, cover_size
#include <sdlora/train/latent_cache.hpp>  // Fnv1a64
#include <sstream>                        // std::ostringstream
#include <string>                         // std::string
#include <string_view>                    // std::string_view
#include <utility>                        // std::move
#include <vector>                         // std::vector

namespace sdlora::train {

/// One example after the transforms.
struct Example {
  Tensor<float, Cpu> image;  // (3, H, W) in [-1, 1]; H = W = resolution, or the bucket's size
  std::string caption;       // after caption dropout
  std::string source;        // the image path or "file.npy#17", for errors and logs
  Geometry geometry;         // the source size and the crop (SDXL's micro-conditioning)
};

/// Where the examples come from. Auto: a `.npy` file, or a folder with `.npy` files and no images, is QuickDraw;
/// anything else an image folder.
enum class DatasetKind { Auto, ImageFolder, QuickDraw };

/// How open_dataset finds and transforms the examples (defaults follow diffusers' train_text_to_image).
struct DatasetOptions {
  std::string path;  // an image folder, a QuickDraw .npy file or a folder of them
  DatasetKind kind = DatasetKind::Auto;

  // Image folders. Captions come from, in this order: instance_prompt (every image of the folder), metadata.csv or
  // metadata.jsonl (both present is an error), per-image caption files; an image in a kohya `N_name` folder without
  // a caption file gets `name` (kohya's class-token caption), one in the root folder the empty caption.
  std::string instance_prompt;             // DreamBooth: one fixed prompt, metadata and caption files ignored
  std::string image_column = "file_name";  // metadata column with the path relative to the folder
  std::string caption_column = "text";     // metadata column with the caption
  std::string caption_extension = ".txt";  // kohya caption files: <stem><caption_extension> next to the image
  bool kohya_repeats = true;               // `N_name/` subfolders repeat their images N times

  // QuickDraw: (N, 784) uint8, white strokes on black, 28 x 28.
  std::string caption_template = "a scribble of {}";  // {} = class name (file stem, '_' -> ' ')
  bool invert = false;                                // black strokes on white
  Index max_per_class = 0;                            // first rows of each file only (0: all)

  // Transforms.
  Index resolution = 512;
  io::Filter filter = io::Filter::Bilinear;  // image folders; QuickDraw always uses Filter::Bicubic
  bool center_crop = true;                   // false: random crop
  bool random_flip = false;
  double caption_dropout = 0.0;  // probability of the empty caption

  // Aspect-ratio buckets (kohya): examples keep their aspect ratio and batches come from one bucket.
  bool bucketing = false;
  Index bucket_step = 64;
  Index bucket_min_side = 0;  // 0: resolution / 2
  Index bucket_max_side = 0;  // 0: resolution * 2

  // Validation.
  Index min_size = 8;              // shorter side below max(8, min_size): skipped (or an error with strict)
  bool strict = false;             // unreadable / tiny / missing images throw IoError instead of being skipped
  std::ostream* log = &std::cerr;  // one warning line per skipped file and a summary; nullptr: silent
};

/// A file open_dataset left out, and why.
struct SkippedFile {
  std::string path;
  std::string reason;
};

namespace detail {
/// Reads an image header (defined below).
inline bool image_info(std::string const& path, Index& height, Index& width, std::string& reason);
namespace fs = std::filesystem;

/// RFC 4180 CSV: comma-separated fields, double-quoted fields may hold commas, line breaks and "" for a quote;
/// LF or CRLF line ends; a UTF-8 byte-order mark is skipped; blank lines are ignored. `name` is for messages.
inline std::vector<std::vector<std::string>> parse_csv(std::string_view text, std::string const& name) {
  if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
  std::string field;
  bool quoted = false, field_started = false;
  std::size_t line = 1;
  auto end_row = [&] {
    if (field_started || !row.empty() || !field.empty()) {
      row.push_back(std::move(field));
      rows.push_back(std::move(row));
    }
    row.clear();
    field.clear();
    field_started = false;
  };
  for (std::size_t i = 0; i < text.size(); ++i) {
    char const c = text[i];
    if (quoted) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          field += '"';
          ++i;
        } else {
          quoted = false;
        }
      } else {
        if (c == '\n') ++line;
        field += c;
      }
    } else if (c == '"') {
      if (!field.empty())
        SDLORA_THROW(FormatError, "[dataset] " << name << " line " << line << ": a quote inside an unquoted field");
      quoted = true;
      field_started = true;
    } else if (c == ',') {
      row.push_back(std::move(field));
      field.clear();
      field_started = true;
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      end_row();
      ++line;
    } else {
      if (field_started && field.empty() && i > 0 && text[i - 1] == '"')
        SDLORA_THROW(FormatError, "[dataset] " << name << " line " << line << ": text after a closing quote");
      field += c;
    }
  }
  if (quoted) SDLORA_THROW(FormatError, "[dataset] " << name << ": unterminated quoted field");
  end_row();
  return rows;
}

inline std::string read_text_file(fs::path const& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) SDLORA_THROW(IoError, "[dataset] cannot open " << p.string());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// Trailing and leading whitespace removed (caption files often end with a newline).
inline std::string trim(std::string s) {
  auto const space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (!s.empty() && space(s.back())) s.pop_back();
  std::size_t b = 0;
  while (b < s.size() && space(s[b])) ++b;
  return s.substr(b);
}

inline std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

inline bool is_image_file(fs::path const& p) {
  static constexpr char const* kExtensions[] = {".png", ".jpg", ".jpeg", ".bmp", ".tga", ".gif", ".webp"};
  std::string const e = lower(p.extension().string());
  for (char const* k : kExtensions)
    if (e == k) return true;
  return false;
}

/// Regular files of a folder, sorted by name (the order of the dataset does not depend on the file system).
inline std::vector<fs::path> sorted_files(fs::path const& dir) {
  std::vector<fs::path> out;
  for (auto const& e : fs::directory_iterator(dir))
    if (e.is_regular_file()) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

/// kohya's repeat folder "10_sks dog" -> (10, "sks dog"); nothing for other names.
inline std::optional<std::pair<int, std::string>> kohya_repeats(std::string const& name) {
  std::size_t i = 0;
  while (i < name.size() && std::isdigit(static_cast<unsigned char>(name[i]))) ++i;
  if (i == 0 || i >= name.size() || name[i] != '_' || i > 6) return std::nullopt;
  int const n = std::stoi(name.substr(0, i));
  if (n <= 0) return std::nullopt;
  return std::make_pair(n, name.substr(i + 1));
}

/// QuickDraw class name of a file stem: "full_numpy_bitmap_hot_air_balloon" -> "hot air balloon".
inline std::string quickdraw_class(std::string stem) {
  std::string_view constexpr kPrefix = "full_numpy_bitmap_";
  if (stem.rfind(kPrefix, 0) == 0) stem = stem.substr(kPrefix.size());
  for (char& c : stem)
    if (c == '_') c = ' ';
  return stem;
}

inline std::string apply_template(std::string const& tmpl, std::string const& name) {
  std::size_t const at = tmpl.find("{}");
  if (at == std::string::npos) return tmpl;
  return tmpl.substr(0, at) + name + tmpl.substr(at + 2);
}

/// splitmix64 of (seed, epoch): the seed of an epoch's generator.
inline std::uint64_t epoch_seed(std::uint64_t seed, std::int64_t epoch) {
  std::uint64_t z = seed + 0x9E3779B97F4A7C15ull * (std::uint64_t(epoch) + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace detail

/// Examples by index; `get` applies the augmentation with the caller's generator. Copyable; `get` is const and
/// safe to call from several threads with different generators (files are read, QuickDraw files memory-mapped).
class Dataset {
 public:
  /// One source example (repeated `repeats` times in the index space).
  struct Record {
    std::string path;     // image file, or the .npy file
    Index row = -1;       // npy row, -1 for an image file
    std::string caption;  // before dropout
    Index height = 0;     // source size
    Index width = 0;
    int bucket = -1;  // index into buckets(), -1 without bucketing
    int npy = -1;     // index into the open .npy files
  };

  Dataset() = default;

  /// Examples, kohya repeats included.
  Index size() const { return Index(items_.size()); }
  bool empty() const { return items_.empty(); }
  DatasetOptions const& options() const { return options_; }
  /// The folder or file the dataset was opened from.
  std::string const& root() const { return options_.path; }

  /// Example `index` with its transforms; randomness (random crop, flip, caption dropout) is drawn from `g` in that
  /// order, only for the enabled options. An image that cannot be decoded throws IoError naming it.
  Example get(Index index, TorchGenerator& g) const {
    Record const& r = record(index);
    Example ex;
    ex.source = source(index);
    Tensor<float, Cpu> img = load_source(r);  // (3, h, w) in [-1, 1]
    Bucket const target = target_size(index);
    Index const h = img.dim(1), w = img.dim(2);
    Bucket const resized = resized_size(index, h, w);
    ex.geometry = centre_geometry(target, resized, h, w);
    if (resized.height != h || resized.width != w) {
      io::Filter const f = r.row >= 0 ? io::Filter::Bicubic : options_.filter;
      img = io::resize(img.view(), resized.height, resized.width, f);  // (3, rh, rw)
      for (Index i = 0; i < img.numel(); ++i) img(i) = std::clamp(img(i), -1.0f, 1.0f);
    }
    // Crop.
    if (img.dim(1) != target.height || img.dim(2) != target.width) {
      if (options_.center_crop) {
        img = io::center_crop(img.view(), target.height, target.width);  // (3, H, W)
      } else {
        Index const top = g.randint(0, img.dim(1) - target.height + 1, Shape{1})(0);
        Index const left = g.randint(0, img.dim(2) - target.width + 1, Shape{1})(0);
        img = io::crop(img.view(), top, left, target.height, target.width);  // (3, H, W)
        ex.geometry.crop_top = top;
        ex.geometry.crop_left = left;
      }
    }  // a window equal to the image draws nothing (torchvision returns early too)
    if (options_.random_flip && g.rand(Shape{1})(0) < 0.5f) img = io::hflip(img.view());
    ex.caption = r.caption;
    if (options_.caption_dropout > 0 && double(g.rand(Shape{1})(0)) < options_.caption_dropout) ex.caption.clear();
    ex.image = std::move(img);
    return ex;
  }

  /// The caption of `index` before dropout (what get() returns without augmentation).
  std::string const& caption(Index index) const { return record(index).caption; }
  /// "path" or "file.npy#row".
  std::string source(Index index) const {
    Record const& r = record(index);
    return r.row < 0 ? r.path : r.path + "#" + std::to_string(r.row);
  }
  /// Whether get() draws from its generator for the image (random crop or flip): latents can then not be cached
  /// per example.
  bool random_augmentation() const { return !options_.center_crop || options_.random_flip; }
  /// Whether get() draws from its generator at all.
  bool uses_generator() const { return random_augmentation() || options_.caption_dropout > 0; }

  /// The geometry get() gives `index` without random crop, from the image header alone (no decode): what a cached
  /// example's SDXL time ids need.
  Geometry geometry(Index index) const {
    Record const& r = record(index);
    Index h = 28, w = 28;  // QuickDraw rows
    if (r.row < 0) {
      std::string reason;
      if (!detail::image_info(r.path, h, w, reason)) SDLORA_THROW(IoError, "[dataset] " << r.path << ": " << reason);
    }
    return centre_geometry(target_size(index), resized_size(index, h, w), h, w);
  }

  /// The (height, width) get() returns for `index`: the bucket's, or resolution x resolution.
  Bucket target_size(Index index) const {
    Record const& r = record(index);
    return r.bucket >= 0 ? buckets_[std::size_t(r.bucket)] : Bucket{options_.resolution, options_.resolution};
  }
  /// The bucket of `index` (-1 without bucketing), and the bucket list.
  int bucket_of(Index index) const { return record(index).bucket; }
  std::vector<Bucket> const& buckets() const { return buckets_; }

  /// Hash of everything the image of `index` depends on before random augmentation: the file's bytes (or the npy
  /// row's), the resolution / bucket, the filter, crop and flip settings and the QuickDraw inversion. With
  /// latent_key(content_hash, vae) it keys the LatentCache.
  std::uint64_t content_hash(Index index) const {
    Record const& r = record(index);
    Fnv1a64 h;
    h.text("sdlora.example.v1");
    if (r.row >= 0) {
      Tensor<std::uint8_t, Cpu> const row = npy_[std::size_t(r.npy)]->load_rows<std::uint8_t>(r.row, r.row + 1);
      h.text("npy").bytes(row.data(), row.bytes()).integer(std::int64_t(options_.invert));
    } else {
      h.text("file").text(io::detail::read_file_bytes(r.path, "[dataset]"));
    }
    Bucket const t = target_size(index);
    h.integer(std::int64_t(t.height)).integer(std::int64_t(t.width)).integer(std::int64_t(options_.bucketing));
    h.integer(std::int64_t(r.row >= 0 ? int(io::Filter::Bicubic) : int(options_.filter)));
    h.integer(std::int64_t(options_.center_crop)).integer(std::int64_t(options_.random_flip));
    return h.digest();
  }

  Record const& record(Index index) const {
    SDLORA_EXPECTS(index >= 0 && index < size(),
                   "[dataset] index " << index << " out of range for " << size() << " examples of " << options_.path);
    return records_[std::size_t(items_[std::size_t(index)])];
  }
  /// Distinct source examples (before repeats).
  std::vector<Record> const& records() const { return records_; }
  /// Files open_dataset left out, with the reason.
  std::vector<SkippedFile> const& skipped() const { return skipped_; }
  /// Images in the root of a caption-file folder that had no caption file (trained with the empty caption).
  Index missing_captions() const { return missing_captions_; }

 private:
  friend Dataset open_dataset(DatasetOptions const& options);

  /// The size an (h, w) source is resized to: shorter side to the resolution, or covering the bucket.
  Bucket resized_size(Index index, Index h, Index w) const {
    Bucket const target = target_size(index);
    if (options_.bucketing) return cover_size(target, h, w);
    if (h <= w) return {target.height, Index(double(target.height) * double(w) / double(h))};
    return {Index(double(target.width) * double(h) / double(w)), target.width};
  }
  /// The original size and the centre crop's corner (io::center_crop's rounding) of a resized image.
  static Geometry centre_geometry(Bucket target, Bucket resized, Index h, Index w) {
    Geometry g;
    g.original_height = h;
    g.original_width = w;
    g.crop_top = Index(std::nearbyint(double(resized.height - target.height) / 2.0));
    g.crop_left = Index(std::nearbyint(double(resized.width - target.width) / 2.0));
    return g;
  }

  Tensor<float, Cpu> load_source(Record const& r) const {
    if (r.row < 0) return io::decode_image(io::detail::read_file_bytes(r.path, "[dataset]"), r.path);
    Tensor<std::uint8_t, Cpu> const row = npy_[std::size_t(r.npy)]->load_rows<std::uint8_t>(r.row, r.row + 1);
    Index const side = 28;
    auto img = Tensor<float, Cpu>::uninitialized(Shape{3, side, side});  // (3, 28, 28)
    for (Index i = 0; i < side * side; ++i) {
      float const u = float(options_.invert ? 255 - row(i) : row(i)) / 255.0f;
      float const v = (u - 0.5f) / 0.5f;
      for (Index c = 0; c < 3; ++c) img(c * side * side + i) = v;
    }
    return img;
  }

  DatasetOptions options_;
  std::vector<Record> records_;
  std::vector<std::int32_t> items_;  // index -> record (repeats expanded)
  std::vector<std::shared_ptr<io::NpyFile>> npy_;
  std::vector<Bucket> buckets_;
  std::vector<SkippedFile> skipped_;
  Index missing_captions_ = 0;
};

namespace detail {

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // inside stb's PNG header parser, inlined here
#endif
/// Reads an image header (no decode): false with a reason when no decoder can read it.
inline bool image_info(std::string const& path, Index& height, Index& width, std::string& reason) {
  std::string bytes;
  try {
    bytes = io::detail::read_file_bytes(path, "[dataset]");
  } catch (IoError const& e) {
    reason = e.what();
    return false;
  }
  std::uint64_t w = 0, h = 0;
  if (std::string const why = io::detail::image_size(bytes, w, h); !why.empty()) {  // header only
    reason = "not a readable image: " + why;
    return false;
  }
  if (std::uint64_t const limit = io::max_image_pixels(); limit != 0 && w * h > limit) {
    reason = std::to_string(w) + " x " + std::to_string(h) + " pixels, over the limit of " + std::to_string(limit) +
             " (--max-image-pixels raises it)";
    return false;
  }
  height = Index(h);
  width = Index(w);
  return true;
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

/// The caption table of metadata.csv / metadata.jsonl: (file_name, caption) rows in file order.
inline std::vector<std::pair<std::string, std::string>> read_metadata(fs::path const& file, DatasetOptions const& o) {
  std::vector<std::pair<std::string, std::string>> out;
  std::string const name = file.string();
  std::string const text = read_text_file(file);
  if (file.extension() == ".csv") {
    auto rows = parse_csv(text, name);
    if (rows.empty()) SDLORA_THROW(FormatError, "[dataset] " << name << " is empty (no header row)");
    auto const& header = rows[0];
    auto column = [&](std::string const& col) {
      auto const it = std::find(header.begin(), header.end(), col);
      if (it == header.end()) {
        std::ostringstream cols;
        for (std::size_t i = 0; i < header.size(); ++i) cols << (i ? ", " : "") << header[i];
        SDLORA_THROW(FormatError,
                     "[dataset] " << name << " has no column '" << col << "' (columns: " << cols.str() << ")");
      }
      return std::size_t(it - header.begin());
    };
    std::size_t const fcol = column(o.image_column), ccol = column(o.caption_column);
    for (std::size_t r = 1; r < rows.size(); ++r) {
      if (rows[r].size() != header.size())
        SDLORA_THROW(FormatError, "[dataset] " << name << " row " << r + 1 << " has " << rows[r].size()
                                               << " fields, the header " << header.size());
      out.emplace_back(rows[r][fcol], rows[r][ccol]);
    }
    return out;
  }
  std::istringstream lines(text);
  std::string line;
  std::size_t n = 0;
  while (std::getline(lines, line)) {
    ++n;
    if (trim(line).empty()) continue;
    check_json_depth(line, "[dataset] " + name + " line " + std::to_string(n));
    nlohmann::json const j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_object()) SDLORA_THROW(FormatError, "[dataset] " << name << " line " << n << " is not a JSON object");
    for (std::string const& col : {o.image_column, o.caption_column})
      if (!j.contains(col) || !j[col].is_string()) {
        std::ostringstream keys;
        bool first = true;
        for (auto const& [k, v] : j.items()) {
          keys << (first ? "" : ", ") << k;
          first = false;
        }
        SDLORA_THROW(FormatError, "[dataset] " << name << " line " << n << " has no string field '" << col
                                               << "' (fields: " << keys.str() << ")");
      }
    out.emplace_back(j[o.image_column].get<std::string>(), j[o.caption_column].get<std::string>());
  }
  return out;
}

}  // namespace detail

/// Opens a dataset (see DatasetOptions for the layouts). Throws ConfigError for a missing path or an empty result,
/// FormatError for a bad metadata file or npy shape, IoError (strict) for a bad image.
inline Dataset open_dataset(DatasetOptions const& options) {
  namespace fs = std::filesystem;
  Dataset d;
  d.options_ = options;
  DatasetOptions const& o = d.options_;
  if (o.resolution < 8) SDLORA_THROW(ConfigError, "[dataset] resolution " << o.resolution << " is below 8");
  if (o.caption_dropout < 0 || o.caption_dropout > 1)
    SDLORA_THROW(ConfigError, "[dataset] caption_dropout " << o.caption_dropout << " is not a probability");
  fs::path const root(o.path);
  if (o.path.empty() || !fs::exists(root))
    SDLORA_THROW(ConfigError, "[dataset] no such file or folder: '" << o.path << "'");

  Index const min_side = std::max<Index>(8, o.min_size);
  auto skip = [&](std::string const& path, std::string const& reason) {
    if (o.strict) SDLORA_THROW(IoError, "[dataset] " << path << ": " << reason);
    if (o.log) *o.log << "warning: [dataset] skipping " << path << ": " << reason << "\n";
    d.skipped_.push_back({path, reason});
  };
  std::vector<int> repeats;  // per record
  auto add_image = [&](fs::path const& p, std::string caption, int repeat) {
    std::string const path = p.string();
    if (!fs::is_regular_file(p)) return skip(path, "no such file");
    Dataset::Record r;
    std::string reason;
    if (!detail::image_info(path, r.height, r.width, reason)) return skip(path, reason);
    if (std::min(r.height, r.width) < min_side) {
      std::ostringstream why;
      why << "too small (" << r.width << "x" << r.height << ", the minimum side is " << min_side << ")";
      return skip(path, why.str());
    }
    r.path = path;
    r.caption = std::move(caption);
    d.records_.push_back(std::move(r));
    repeats.push_back(repeat);
  };

  bool quickdraw = o.kind == DatasetKind::QuickDraw;
  if (o.kind == DatasetKind::Auto) {
    if (fs::is_regular_file(root)) {
      quickdraw = detail::lower(root.extension().string()) == ".npy";
    } else {
      bool any_npy = false, any_image = false;
      for (auto const& p : detail::sorted_files(root)) {
        any_npy = any_npy || detail::lower(p.extension().string()) == ".npy";
        any_image = any_image || detail::is_image_file(p);
      }
      quickdraw = any_npy && !any_image;
    }
  }

  if (quickdraw) {
    std::vector<fs::path> files;
    if (fs::is_regular_file(root))
      files.push_back(root);
    else
      for (auto const& p : detail::sorted_files(root))
        if (detail::lower(p.extension().string()) == ".npy") files.push_back(p);
    for (auto const& p : files) {
      auto npy = std::make_shared<io::NpyFile>(p.string());
      if (npy->shape().rank() != 2 || npy->shape()[1] != 784 || npy->dtype() != DType::U8)
        SDLORA_THROW(FormatError, "[dataset] " << p.string() << ": QuickDraw bitmaps must be uint8 (N, 784), got "
                                               << npy->descr() << " " << npy->shape());
      Index n = npy->shape()[0];
      if (o.max_per_class > 0) n = std::min(n, o.max_per_class);
      std::string const caption =
          detail::apply_template(o.caption_template, detail::quickdraw_class(p.stem().string()));
      int const id = int(d.npy_.size());
      d.npy_.push_back(npy);
      for (Index row = 0; row < n; ++row) {
        Dataset::Record r;
        r.path = p.string();
        r.row = row;
        r.caption = caption;
        r.height = r.width = 28;
        r.npy = id;
        d.records_.push_back(std::move(r));
        repeats.push_back(1);
      }
    }
  } else {
    if (!fs::is_directory(root)) SDLORA_THROW(ConfigError, "[dataset] " << o.path << " is not a folder of images");
    fs::path const csv = root / "metadata.csv", jsonl = root / "metadata.jsonl";
    bool const has_csv = fs::exists(csv), has_jsonl = fs::exists(jsonl);
    if (!o.instance_prompt.empty()) {
      for (auto const& p : detail::sorted_files(root))
        if (detail::is_image_file(p)) add_image(p, o.instance_prompt, 1);
    } else if (has_csv || has_jsonl) {
      if (has_csv && has_jsonl)
        SDLORA_THROW(ConfigError, "[dataset] " << o.path << " holds both metadata.csv and metadata.jsonl; keep one");
      for (auto& [file, caption] : detail::read_metadata(has_csv ? csv : jsonl, o)) add_image(root / file, caption, 1);
    } else {
      auto add_folder = [&](fs::path const& dir, int repeat, std::optional<std::string> const& class_caption) {
        for (auto const& p : detail::sorted_files(dir)) {
          if (!detail::is_image_file(p)) continue;
          fs::path const txt = fs::path(p).replace_extension(o.caption_extension);
          std::string caption;
          if (fs::exists(txt)) {
            caption = detail::trim(detail::read_text_file(txt));
          } else if (class_caption) {
            caption = *class_caption;
          } else {
            ++d.missing_captions_;
          }
          add_image(p, caption, repeat);
        }
      };
      add_folder(root, 1, std::nullopt);
      if (o.kohya_repeats) {
        std::vector<fs::path> subdirs;
        for (auto const& e : fs::directory_iterator(root))
          if (e.is_directory()) subdirs.push_back(e.path());
        std::sort(subdirs.begin(), subdirs.end());
        for (auto const& sub : subdirs)
          if (auto const rep = detail::kohya_repeats(sub.filename().string())) add_folder(sub, rep->first, rep->second);
      }
      if (d.missing_captions_ > 0 && o.log)
        *o.log << "warning: [dataset] " << d.missing_captions_ << " image(s) in " << o.path << " have no "
               << o.caption_extension << " caption file: trained with the empty caption\n";
    }
  }

  if (d.records_.empty()) {
    std::ostringstream why;
    if (!d.skipped_.empty())
      why << " (" << d.skipped_.size() << " skipped; first: " << d.skipped_[0].path << ": " << d.skipped_[0].reason
          << ")";
    SDLORA_THROW(ConfigError, "[dataset] no usable examples in " << o.path << why.str());
  }
  for (std::size_t i = 0; i < d.records_.size(); ++i)
    for (int k = 0; k < repeats[i]; ++k) d.items_.push_back(std::int32_t(i));

  if (o.bucketing) {
    d.buckets_ = make_buckets(o.resolution, o.bucket_step, o.bucket_min_side, o.bucket_max_side);
    for (auto& r : d.records_) r.bucket = closest_bucket(d.buckets_, r.height, r.width);
  }
  if (!d.skipped_.empty() && o.log)
    *o.log << "warning: [dataset] " << d.skipped_.size() << " file(s) skipped in " << o.path << "\n";
  return d;
}

/// One epoch's order of example indices, drawn from `g`. Without bucketing: g.randperm(size). With bucketing:
/// each bucket's members in randperm order, the last partial batch of a bucket filled up with randomly drawn members
/// of the same bucket (randint), then the batches of all buckets in randperm order, so that every run of
/// `batch_size` consecutive entries starting at a multiple of batch_size comes from one bucket.
inline std::vector<std::int64_t> epoch_order(Dataset const& data, TorchGenerator& g, Index batch_size = 1) {
  SDLORA_EXPECTS(batch_size >= 1, "[dataset] batch_size " << batch_size << " must be >= 1");
  if (data.buckets().empty()) return g.randperm(data.size());
  std::vector<std::vector<std::int64_t>> members(data.buckets().size());
  for (Index i = 0; i < data.size(); ++i) members[std::size_t(data.bucket_of(i))].push_back(i);
  std::vector<std::vector<std::int64_t>> batches;
  for (auto const& m : members) {
    if (m.empty()) continue;
    std::vector<std::int64_t> const perm = g.randperm(std::int64_t(m.size()));
    std::vector<std::int64_t> shuffled;
    for (std::int64_t p : perm) shuffled.push_back(m[std::size_t(p)]);
    while (std::int64_t(shuffled.size()) % batch_size != 0)
      shuffled.push_back(m[std::size_t(g.randint(0, std::int64_t(m.size()), Shape{1})(0))]);
    for (std::size_t b = 0; b < shuffled.size(); b += std::size_t(batch_size))
      batches.emplace_back(shuffled.begin() + std::ptrdiff_t(b), shuffled.begin() + std::ptrdiff_t(b + batch_size));
  }
  std::vector<std::int64_t> out;
  for (std::int64_t b : g.randperm(std::int64_t(batches.size())))
    out.insert(out.end(), batches[std::size_t(b)].begin(), batches[std::size_t(b)].end());
  return out;
}

/// The position in the training data across epochs: the current epoch's order and the next position in it. Epoch e
/// draws its order from a TorchGenerator seeded with a splitmix64 of (seed, e), so (order, position, epoch) is the
/// whole state: a resumed run restores it (TrainingState::data_order / data_position / epoch) and continues the
/// same sequence, later epochs included.
class DataOrder {
 public:
  explicit DataOrder(std::uint64_t seed = 0, Index batch_size = 1) : seed_(seed), batch_size_(batch_size) {
    SDLORA_EXPECTS(batch_size >= 1, "[data_order] batch_size " << batch_size << " must be >= 1");
  }

  /// The next example index; starts the next epoch (a new order) when the current one is used up.
  std::int64_t next(Dataset const& data) {
    if (order_.empty() || position_ >= std::int64_t(order_.size())) {
      if (!order_.empty()) ++epoch_;
      TorchGenerator g(detail::epoch_seed(seed_, epoch_));
      order_ = epoch_order(data, g, batch_size_);
      position_ = 0;
    }
    std::int64_t const index = order_[std::size_t(position_++)];
    SDLORA_EXPECTS(index >= 0 && index < data.size(), "[data_order] index " << index << " of a restored order is "
                                                                            << "out of range for " << data.size()
                                                                            << " examples");
    return index;
  }
  /// `batch_size` next indices (with bucketing, one bucket's batch: epochs hold whole batches).
  std::vector<std::int64_t> next_batch(Dataset const& data) {
    std::vector<std::int64_t> out;
    for (Index b = 0; b < batch_size_; ++b) out.push_back(next(data));
    return out;
  }

  std::vector<std::int64_t> const& order() const { return order_; }
  std::int64_t position() const { return position_; }
  std::int64_t epoch() const { return epoch_; }
  std::uint64_t seed() const { return seed_; }
  /// Continues from a saved state (order(), position(), epoch()).
  void restore(std::vector<std::int64_t> order, std::int64_t position, std::int64_t epoch) {
    SDLORA_EXPECTS(position >= 0 && position <= std::int64_t(order.size()) && epoch >= 0,
                   "[data_order] bad saved state: position " << position << " in an order of " << order.size()
                                                             << ", epoch " << epoch);
    order_ = std::move(order);
    position_ = position;
    epoch_ = epoch;
  }

 private:
  std::uint64_t seed_;
  Index batch_size_;
  std::vector<std::int64_t> order_;
  std::int64_t position_ = 0;
  std::int64_t epoch_ = 0;
};

}  // namespace sdlora::train
