/// @file sources.hpp
/// @brief Example sources for training runs built on datasets: a Dataset as it is (captions from its files), with
/// one fixed prompt (DreamBooth instance / class images), or with Textual Inversion prompt templates around a
/// placeholder token. Include <sdlora/train/run.hpp> users include this too.
#pragma once

#include <array>        // std::array
#include <optional>     // std::optional
#include <set>          // std::set
#include <string>       // std::string
#include <string_view>  // std::string_view
#include <vector>       // std::vector

#include <sdlora/train/dataset.hpp>  // Dataset
#include <sdlora/train/run.hpp>      // ExampleSource, TrainExample

namespace sdlora::train {

/// A Dataset as an ExampleSource: the example's generator is seeded from the run's per-example seed.
class DatasetSource : public ExampleSource {
 public:
  explicit DatasetSource(Dataset dataset) : dataset_(std::move(dataset)) {}
  Dataset const& dataset() const { return dataset_; }

  std::int64_t size() const override { return dataset_.size(); }
  bool random_augmentation() const override { return dataset_.random_augmentation(); }
  TrainExample get(std::int64_t index, std::uint64_t seed) override {
    TorchGenerator g(seed);
    auto ex = dataset_.get(index, g);
    return {std::move(ex.image), std::move(ex.caption), ex.geometry};
  }
  Geometry geometry(std::int64_t index) override { return dataset_.geometry(index); }
  /// Without random crop / flip, the only draw is caption dropout's: replay it without loading the image.
  std::string caption(std::int64_t index, std::uint64_t seed) override {
    if (dataset_.random_augmentation()) return get(index, seed).caption;
    double const p = dataset_.options().caption_dropout;
    if (p > 0) {
      TorchGenerator g(seed);
      if (double(g.rand(Shape{1})(0)) < p) return "";
    }
    return dataset_.caption(index);
  }
  std::optional<std::uint64_t> content_hash(std::int64_t index) const override { return dataset_.content_hash(index); }
  std::vector<std::int64_t> epoch_order(TorchGenerator& g, int batch_size) const override {
    return train::epoch_order(dataset_, g, batch_size);
  }
  /// The dataset's distinct captions, and the empty one under caption dropout.
  std::optional<std::vector<std::string>> all_captions() override {
    std::set<std::string> distinct;
    for (std::int64_t i = 0; i < dataset_.size(); ++i) distinct.insert(dataset_.caption(i));
    if (dataset_.options().caption_dropout > 0) distinct.insert("");
    return std::vector<std::string>(distinct.begin(), distinct.end());
  }

 private:
  Dataset dataset_;
};

/// What a Textual Inversion token stands for (diffusers' --learnable_property).
enum class LearnableProperty { Object, Style };

/// Prompt templates for Textual Inversion, "{}" standing for the placeholder token.
inline constexpr std::array<std::string_view, 12> kObjectTemplates = {
    "a photo of a {}",          "a rendering of a {}",   "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}",    "a close-up photo of a {}", "a bright photo of the {}", "a photo of my {}",
    "a good photo of the {}",   "a photo of one {}",     "a photo of the small {}",   "a rendition of the {}"};
inline constexpr std::array<std::string_view, 8> kStyleTemplates = {
    "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
    "the painting in the style of {}", "a clean painting in the style of {}", "a picture in the style of {}",
    "a good painting in the style of {}", "a close-up painting in the style of {}"};

/// Textual Inversion: every example's caption is a template (chosen by the example's seed) around the
/// placeholder, expanded to all of its vectors ("<tok> <tok>_1 ...").
class TemplateSource : public ExampleSource {
 public:
  TemplateSource(Dataset dataset, std::string placeholder, LearnableProperty property)
      : inner_(std::move(dataset)), placeholder_(std::move(placeholder)), property_(property) {}

  std::int64_t size() const override { return inner_.size(); }
  bool random_augmentation() const override { return inner_.random_augmentation(); }
  TrainExample get(std::int64_t index, std::uint64_t seed) override {
    auto ex = inner_.get(index, seed);
    ex.caption = caption(index, seed);
    return ex;
  }
  /// Every template around the placeholder.
  std::optional<std::vector<std::string>> all_captions() override {
    std::vector<std::string> out;
    auto add = [&](auto const& templates) {
      for (std::string_view t : templates) {
        std::string c(t);
        out.push_back(c.replace(c.find("{}"), 2, placeholder_));
      }
    };
    if (property_ == LearnableProperty::Object) add(kObjectTemplates);
    else add(kStyleTemplates);
    return out;
  }
  std::string caption(std::int64_t, std::uint64_t seed) override {
    std::uint64_t const pick = mix_seed(seed, 0x7E3);
    std::string_view const t = property_ == LearnableProperty::Object
                                   ? kObjectTemplates[pick % kObjectTemplates.size()]
                                   : kStyleTemplates[pick % kStyleTemplates.size()];
    std::string out(t);
    out.replace(out.find("{}"), 2, placeholder_);
    return out;
  }
  std::optional<std::uint64_t> content_hash(std::int64_t index) const override { return inner_.content_hash(index); }
  std::vector<std::int64_t> epoch_order(TorchGenerator& g, int batch_size) const override {
    return inner_.epoch_order(g, batch_size);
  }
  Geometry geometry(std::int64_t index) override { return inner_.geometry(index); }

 private:
  DatasetSource inner_;
  std::string placeholder_;  // already expanded to every vector's token
  LearnableProperty property_;
};

}  // namespace sdlora::train
