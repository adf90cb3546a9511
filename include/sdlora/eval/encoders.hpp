/// @file encoders.hpp
/// @brief The evaluation encoders as folders on disk: a transformers CLIPModel folder (weights, tokenizer,
/// preprocessor) and a ViTModel folder (DINO), each encoding images in batches with a progress callback and
/// returning host embeddings for eval/metrics.hpp. Include <sdlora/eval.hpp> instead.
#pragma once

#include <algorithm>   // std::min, std::copy
#include <chrono>      // std::chrono::steady_clock
#include <cstdint>     // std::int32_t, std::uint8_t
#include <filesystem>  // std::filesystem::exists
#include <functional>  // std::function
#include <string>      // std::string
#include <vector>      // std::vector

#include <sdlora/eval/preprocess.hpp>         // ImageProcessorConfig, preprocess
#include <sdlora/models/clip_vision.hpp>      // ClipModel, load_clip_model, require_model_file
#include <sdlora/models/vit.hpp>              // VitModel, load_vit_model
#include <sdlora/tokenizer/clip_tokenizer.hpp>  // tokenizer::ClipTokenizer

namespace sdlora::eval {

/// Called after each batch: images done, images in all, images per second so far.
using Progress = std::function<void(std::size_t done, std::size_t total, double per_second)>;

namespace detail {
/// Runs `encode` on batches of preprocessed images and stacks the rows: (N, D). `image(i)` gives image i as RGB
/// 8-bit (H, W, 3); it is called once per image, batch by batch, so files can be read as they are needed.
template <class Image, class Encode>
Tensor<float, Cpu> encode_batches(std::size_t count, Image&& image, ImageProcessorConfig const& pre,
                                  std::size_t batch, Progress const& progress, Encode&& encode) {
  SDLORA_EXPECTS(count > 0 && batch > 0, "[encode_images] needs images and a batch size > 0");
  auto const start = std::chrono::steady_clock::now();
  std::vector<float> rows;
  Index dim = 0;
  for (std::size_t b0 = 0; b0 < count; b0 += batch) {
    std::size_t const nb = std::min(batch, count - b0);
    std::vector<Tensor<float, Cpu>> px;
    for (std::size_t i = 0; i < nb; ++i) {
      Tensor<std::uint8_t, Cpu> const img = image(b0 + i);  // (H, W, 3)
      px.push_back(preprocess(img.view(), pre));             // (3, S, S)
    }
    Index const s = px[0].dim(1), t = px[0].dim(2);
    auto pixels = Tensor<float, Cpu>::uninitialized(Shape{Index(nb), 3, s, t});  // (B, 3, S, S)
    for (std::size_t i = 0; i < nb; ++i)
      std::copy(px[i].data(), px[i].data() + px[i].numel(), pixels.data() + Index(i) * px[i].numel());
    Tensor<float, Cpu> const e = encode(pixels);  // (B, D)
    dim = e.dim(1);
    rows.insert(rows.end(), e.data(), e.data() + e.numel());
    if (progress) {
      double const secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      progress(b0 + nb, count, secs > 0 ? double(b0 + nb) / secs : 0.0);
    }
  }
  Tensor<float, Cpu> out(Shape{Index(count), dim});  // (N, D)
  std::copy(rows.begin(), rows.end(), out.data());
  return out;
}
}  // namespace detail

/// A transformers CLIPModel folder: config.json, model.safetensors, preprocessor_config.json, and vocab.json +
/// merges.txt or tokenizer.json (the openai/clip-vit-* layout on the Hugging Face Hub).
class ClipEncoder {
 public:
  static ClipEncoder load(std::string const& dir) {
    using models::require_model_file;
    char const* ex = models::kClipModelExample;
    std::string const pre = require_model_file(dir, "preprocessor_config.json", "CLIPModel", ex);
    bool const split_files = std::filesystem::exists(std::filesystem::path(dir) / "vocab.json") ||
                             !std::filesystem::exists(std::filesystem::path(dir) / "tokenizer.json");
    if (split_files) {  // the error names vocab.json when neither form is there
      require_model_file(dir, "vocab.json", "CLIPModel", ex);
      require_model_file(dir, "merges.txt", "CLIPModel", ex);
    }
    ClipEncoder e;
    e.model = models::load_clip_model<float>(dir);
    e.preprocessor = ImageProcessorConfig::from_file(pre);
    e.tokenizer = split_files ? tokenizer::ClipTokenizer::from_folder(dir)
                              : tokenizer::ClipTokenizer::from_tokenizer_json(
                                    (std::filesystem::path(dir) / "tokenizer.json").string());
    return e;
  }

  models::ClipModel<float> model;
  tokenizer::ClipTokenizer tokenizer;
  ImageProcessorConfig preprocessor;

  /// Image embeddings (N, projection_dim) of RGB 8-bit images (H, W, 3), any sizes.
  Tensor<float, Cpu> encode_images(std::vector<Tensor<std::uint8_t, Cpu>> const& images, std::size_t batch = 8,
                                   Progress const& progress = {}) {
    return detail::encode_batches(
        images.size(), [&](std::size_t i) { return images[i]; }, preprocessor, batch, progress,
        [&](Tensor<float, Cpu> const& px) { return model.image_features(ctx_, px.view()); });
  }
  /// The same for image files, read one batch at a time (eval::load_rgb8; an unreadable file throws IoError).
  Tensor<float, Cpu> encode_files(std::vector<std::string> const& files, std::size_t batch = 8,
                                  Progress const& progress = {}) {
    return detail::encode_batches(
        files.size(), [&](std::size_t i) { return load_rgb8(files[i]); }, preprocessor, batch, progress,
        [&](Tensor<float, Cpu> const& px) { return model.image_features(ctx_, px.view()); });
  }
  /// Token ids of one prompt as torchmetrics feeds them: BOS, text, EOS, cut to max_position_embeddings.
  std::vector<int> text_ids(std::string const& prompt) const {
    std::vector<int> ids = tokenizer.encode(prompt);
    std::size_t const max = std::size_t(model.config().text.max_position_embeddings);
    if (ids.size() > max) ids.resize(max);
    return ids;
  }
  /// Text embeddings (N, projection_dim), one prompt at a time (the causal mask makes padding irrelevant).
  Tensor<float, Cpu> encode_texts(std::vector<std::string> const& prompts) {
    SDLORA_EXPECTS(!prompts.empty(), "[encode_texts] needs prompts");
    Index const d = model.config().projection_dim;
    Tensor<float, Cpu> out(Shape{Index(prompts.size()), d});  // (N, D)
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      std::vector<int> const ids = text_ids(prompts[i]);
      Tensor<std::int32_t, Cpu> t(Shape{1, Index(ids.size())});  // (1, L)
      for (std::size_t k = 0; k < ids.size(); ++k) t(Index(k)) = ids[k];
      Tensor<float, Cpu> const e = model.text_features(ctx_, t);  // (1, D)
      std::copy(e.data(), e.data() + d, out.data() + Index(i) * d);
    }
    return out;
  }

 private:
  Context<Cpu> ctx_;
};

/// A transformers ViTModel folder (facebook/dino-vits16 layout): config.json, model.safetensors,
/// preprocessor_config.json. The embedding is the class token of the last hidden state.
class DinoEncoder {
 public:
  static DinoEncoder load(std::string const& dir) {
    std::string const pre =
        models::require_model_file(dir, "preprocessor_config.json", "ViTModel", models::kVitModelExample);
    DinoEncoder e;
    e.model = models::load_vit_model<float>(dir);
    e.preprocessor = ImageProcessorConfig::from_file(pre);
    return e;
  }

  models::VitModel<float> model;
  ImageProcessorConfig preprocessor;

  /// Class-token embeddings (N, hidden_size) of RGB 8-bit images (H, W, 3).
  Tensor<float, Cpu> encode_images(std::vector<Tensor<std::uint8_t, Cpu>> const& images, std::size_t batch = 8,
                                   Progress const& progress = {}) {
    return detail::encode_batches(
        images.size(), [&](std::size_t i) { return images[i]; }, preprocessor, batch, progress,
        [&](Tensor<float, Cpu> const& px) { return model.class_features(ctx_, px.view()); });
  }
  /// The same for image files, read one batch at a time.
  Tensor<float, Cpu> encode_files(std::vector<std::string> const& files, std::size_t batch = 8,
                                  Progress const& progress = {}) {
    return detail::encode_batches(
        files.size(), [&](std::size_t i) { return load_rgb8(files[i]); }, preprocessor, batch, progress,
        [&](Tensor<float, Cpu> const& px) { return model.class_features(ctx_, px.view()); });
  }

 private:
  Context<Cpu> ctx_;
};

}  // namespace sdlora::eval
