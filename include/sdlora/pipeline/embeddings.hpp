/// @file embeddings.hpp
/// @brief Textual Inversion embeddings: reading and writing `.safetensors` files (diffusers `{token: (n, dim)}`,
/// sd-scripts / A1111 `{"emb_params": (n, dim)}` with the file name as token, flattened A1111 `string_to_param.*`),
/// adding their tokens to the CLIP tokenizer and their vectors to the text encoder, and diffusers' multi-vector prompt
/// expansion ("<tok>" -> "<tok> <tok>_1 ..."). Semantics follow diffusers' TextualInversionLoaderMixin.
/// Include <sdlora/pipeline.hpp> instead.
#pragma once

#include <filesystem>  // std::filesystem::path
#include <set>         // std::set
#include <sstream>     // std::ostringstream
#include <string>      // std::string
#include <vector>      // std::vector

#include <sdlora/core/error.hpp>                // FormatError, ConfigError
#include <sdlora/core/tensor.hpp>               // Tensor
#include <sdlora/io/safetensors.hpp>            // io::SafetensorsFile, io::SafetensorsWriter
#include <sdlora/models/clip_text.hpp>          // models::ClipTextModel
#include <sdlora/tokenizer/clip_tokenizer.hpp>  // tokenizer::ClipTokenizer

namespace sdlora::pipeline {

/// One Textual Inversion embedding: its placeholder token and its vectors.
struct TextualInversion {
  std::string path;
  std::string token;                // the placeholder as written in prompts, e.g. "<cat-toy>"
  Tensor<float, Cpu> vectors;       // (n, dim): n vectors, one token each ("<tok>", "<tok>_1", ...)
};

/// Reads an embedding file. The token is `token` when given, else the file's own key (diffusers), else the file
/// name without extension (emb_params / string_to_param files, as A1111 names them). Pickle files (.pt, .bin) are
/// refused; SDXL files (clip_l / clip_g) too, since SD 1.x / 2.x has one text encoder.
inline TextualInversion read_embedding(std::string const& path, std::string const& token = "") {
  std::string const ext = std::filesystem::path(path).extension().string();
  if (ext == ".pt" || ext == ".bin" || ext == ".ckpt")
    SDLORA_THROW(FormatError, "[embedding] " << path << " is a pickle file, which sdlora never unpickles (it can run "
                                                        "code): convert it to .safetensors");
  io::SafetensorsFile const f(path);
  std::vector<std::string> const keys = f.keys();
  TextualInversion ti;
  ti.path = path;
  std::string const stem = std::filesystem::path(path).stem().string();
  std::string key;
  if (f.contains("clip_l") || f.contains("clip_g")) {
    SDLORA_THROW(FormatError, "[embedding] " << path << " is an SDXL embedding (clip_l / clip_g); Stable Diffusion "
                                                        "1.x / 2.x has one text encoder");
  } else if (f.contains("emb_params")) {
    key = "emb_params";
    ti.token = stem;
  } else if (f.contains("string_to_param.*")) {
    key = "string_to_param.*";
    auto const& meta = f.metadata();
    auto it = meta.find("name");
    ti.token = it != meta.end() && !it->second.empty() ? it->second : stem;
  } else if (keys.size() == 1) {
    key = keys.front();
    ti.token = key;
  } else {
    std::ostringstream os;
    os << "[embedding] " << path << ": expected one tensor {token: (n, dim)}, 'emb_params' or 'string_to_param.*', got "
       << keys.size() << " tensors:";
    for (std::size_t i = 0; i < keys.size() && i < 8; ++i) os << " '" << keys[i] << "'";
    SDLORA_THROW(FormatError, os.str());
  }
  if (!token.empty()) ti.token = token;
  ti.vectors = f.load<float>(key);
  if (ti.vectors.rank() == 1) ti.vectors.reshape(Shape{1, ti.vectors.dim(0)});
  if (ti.vectors.rank() != 2 || ti.vectors.dim(0) < 1 || ti.vectors.dim(1) < 1)  // (2^40, 0) holds no bytes
    SDLORA_THROW(FormatError, "[embedding] " << path << ": '" << key << "' must be (n, dim) or (dim), got "
                                             << ti.vectors.shape());
  if (ti.token.empty()) SDLORA_THROW(FormatError, "[embedding] " << path << ": empty token");
  return ti;
}

/// Writes `vectors` (n, dim) in diffusers' layout (`learned_embeds.safetensors`: one tensor named after the token).
inline void save_embedding(std::string const& path, std::string const& token, TensorView<float const, Cpu> vectors) {
  SDLORA_EXPECTS(vectors.rank() == 2, "[embedding] vectors must be (n, dim), got " << vectors.shape());
  SDLORA_EXPECTS(!token.empty(), "[embedding] empty token");
  io::SafetensorsWriter w;
  w.add(token, vectors);
  w.write(path);
}

/// The tokens of an n-vector embedding: "<tok>", "<tok>_1", ..., "<tok>_{n-1}" (diffusers' multi-vector names).
inline std::vector<std::string> embedding_tokens(std::string const& token, Index n) {
  std::vector<std::string> out{token};
  for (Index i = 1; i < n; ++i) out.push_back(token + "_" + std::to_string(i));
  return out;
}

/// Adds the embedding's tokens to the tokenizer and its vectors as new rows of the token embedding (the row index is
/// the token id). Throws ConfigError if a token is already known (as diffusers) or the vector width is not the text
/// encoder's hidden size. Returns the new token ids.
template <class T>
std::vector<int> add_embedding(tokenizer::ClipTokenizer& tok, models::ClipTextModel<T, Cpu>& text_encoder,
                               TextualInversion const& ti) {
  Index const n = ti.vectors.dim(0), dim = ti.vectors.dim(1);
  Index const hidden = text_encoder.token_embedding.embedding_dim();
  if (dim != hidden)
    SDLORA_THROW(ConfigError, "[embedding] " << ti.path << ": vectors " << ti.vectors.shape() << " have width " << dim
                                             << ", the text encoder's hidden size is " << hidden
                                             << " (an embedding for another model?)");
  auto const tokens = embedding_tokens(ti.token, n);
  for (auto const& t : tokens)
    if (tok.token_to_id(t))
      SDLORA_THROW(ConfigError, "[embedding] " << ti.path << ": token '" << t << "' is already in the vocabulary");
  if (Index(tok.size()) < text_encoder.token_embedding.num_embeddings())
    SDLORA_THROW(ConfigError, "[embedding] the tokenizer has " << tok.size() << " tokens but the text encoder "
                                                               << text_encoder.token_embedding.num_embeddings()
                                                               << " rows: new ids would reuse existing rows");
  std::vector<int> ids;
  for (Index k = 0; k < n; ++k) {
    tok.add_tokens({tokens[std::size_t(k)]});
    int const id = *tok.token_to_id(tokens[std::size_t(k)]);
    Index const rows = text_encoder.token_embedding.num_embeddings();
    if (id >= rows) text_encoder.add_tokens(id + 1 - rows, 0);
    T* row = text_encoder.token_embedding.weight.value.data() + Index(id) * dim;  // (dim)
    for (Index j = 0; j < dim; ++j) row[j] = T(ti.vectors.at({k, j}));
    ids.push_back(id);
  }
  return ids;
}

/// diffusers' maybe_convert_prompt: every added token of the prompt that has "<tok>_1" siblings is replaced by
/// "<tok> <tok>_1 ... <tok>_{n-1}" (a plain, case-sensitive text replacement, as diffusers does). Prompts without
/// multi-vector tokens come back unchanged.
inline std::string expand_prompt(tokenizer::ClipTokenizer const& tok, std::string const& prompt) {
  std::set<int> seen;
  std::string out = prompt;
  for (int id : tok.encode(prompt)) {
    if (!seen.insert(id).second) continue;
    std::string const& t = tok.id_to_token(id);
    if (t.empty() || !tok.token_to_id(t + "_1")) continue;
    std::string replacement = t;
    for (int i = 1; tok.token_to_id(t + "_" + std::to_string(i)); ++i) replacement += " " + t + "_" + std::to_string(i);
    std::string next;
    for (std::size_t pos = 0;;) {  // single pass, like str.replace
      std::size_t const hit = out.find(t, pos);
      if (hit == std::string::npos) {
        next += out.substr(pos);
        break;
      }
      next += out.substr(pos, hit - pos) + replacement;
      pos = hit + t.size();
    }
    out = std::move(next);
  }
  return out;
}

}  // namespace sdlora::pipeline
