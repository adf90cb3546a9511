/// @file json.hpp
/// @brief The nesting limit on JSON that comes from users (diffusers configs, model_index.json, tokenizer files,
/// LoRA / PEFT metadata, metadata.jsonl, a checkpoint's state.json and optimizer scalars). nlohmann parses
/// iteratively, but copying, comparing, dumping and converting a value recurse once per level, so a 1 MB line of
/// `[[[[...` would exhaust the stack later, far from the file. No file sdlora reads nests deeper than a few levels.
#pragma once

#include <cstddef>      // std::size_t
#include <string>       // std::string
#include <string_view>  // std::string_view

#include <sdlora/core/error.hpp>  // FormatError, SDLORA_THROW

namespace sdlora {

/// The deepest nesting of arrays and objects accepted in user JSON (the top-level object is level 1).
inline constexpr int kMaxJsonDepth = 64;

/// The byte offset where `text` first opens more than `limit` nested arrays / objects, or npos when it does not.
/// Brackets inside strings do not count; malformed JSON is left to the parser.
inline std::size_t json_too_deep_at(std::string_view text, int limit = kMaxJsonDepth) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    char const c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return i;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return std::string_view::npos;
}

/// Throws FormatError "<where>: JSON nested deeper than 64 levels (at byte N)" when `text` nests too deep; `where`
/// names the operation and the file, e.g. "[config] unet/config.json".
inline void check_json_depth(std::string_view text, std::string_view where) {
  std::size_t const at = json_too_deep_at(text);
  if (at != std::string_view::npos)
    SDLORA_THROW(FormatError, where << ": JSON nested deeper than " << kMaxJsonDepth << " levels (at byte " << at
                                    << ")");
}

}  // namespace sdlora
