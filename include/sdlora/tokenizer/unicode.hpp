/// @file unicode.hpp
/// @brief The Unicode pieces the CLIP tokenizer needs: UTF-8 decoding/encoding (lossy, as Rust's from_utf8_lossy),
/// the letter / number / White_Space classes of the CLIP split regex, per-character lowercase and NFC.
/// Include <sdlora/tokenizer/clip_tokenizer.hpp> instead.
///
/// Why own tables and not ICU or utf8proc: the library is header-only and these four properties fit in a generated
/// table (unicode_tables.hpp, made by tools/fixtures/make_tokenizer.py from Python's unicodedata); a link dependency
/// for them would burden every consumer. The tables follow Python 3.11's Unicode 14.0; the `tokenizers` library
/// that transformers uses may be a version or two newer, which only matters for characters assigned since.
#pragma once

#include <algorithm>    // std::upper_bound, std::lower_bound
#include <cstddef>      // std::size_t
#include <cstdint>      // std::uint32_t, std::uint8_t
#include <iterator>     // std::size
#include <string>       // std::string, std::u32string
#include <string_view>  // std::string_view
#include <utility>      // std::pair, std::swap

#include <sdlora/tokenizer/unicode_tables.hpp>  // unicode_data::k*

namespace sdlora::tokenizer::unicode {

inline constexpr char32_t kReplacement = 0xFFFD;

/// Appends the UTF-8 encoding of `c`.
inline void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += char(c);
  } else if (c < 0x800) {
    out += char(0xC0 | (c >> 6));
    out += char(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += char(0xE0 | (c >> 12));
    out += char(0x80 | ((c >> 6) & 0x3F));
    out += char(0x80 | (c & 0x3F));
  } else {
    out += char(0xF0 | (c >> 18));
    out += char(0x80 | ((c >> 12) & 0x3F));
    out += char(0x80 | ((c >> 6) & 0x3F));
    out += char(0x80 | (c & 0x3F));
  }
}

inline std::string to_utf8(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

/// Decodes UTF-8, replacing each maximal invalid subpart by U+FFFD (the Unicode recommendation that Python's
/// errors="replace" and Rust's String::from_utf8_lossy follow).
inline std::u32string from_utf8_lossy(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  std::size_t i = 0;
  auto byte = [&](std::size_t k) { return std::uint8_t(s[k]); };
  while (i < s.size()) {
    std::uint8_t const b = byte(i);
    if (b < 0x80) {
      out += char32_t(b);
      ++i;
      continue;
    }
    int need = 0;
    char32_t c = 0;
    std::uint8_t lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
    if (b >= 0xC2 && b <= 0xDF) {
      need = 1;
      c = b & 0x1F;
    } else if (b >= 0xE0 && b <= 0xEF) {
      need = 2;
      c = b & 0x0F;
      if (b == 0xE0) lo = 0xA0;
      if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
      need = 3;
      c = b & 0x07;
      if (b == 0xF0) lo = 0x90;
      if (b == 0xF4) hi = 0x8F;
    } else {
      out += kReplacement;
      ++i;
      continue;
    }
    std::size_t j = i + 1;
    bool ok = true;
    for (int k = 0; k < need; ++k, ++j) {
      std::uint8_t const lo_k = k == 0 ? lo : 0x80, hi_k = k == 0 ? hi : 0xBF;
      if (j >= s.size() || byte(j) < lo_k || byte(j) > hi_k) {
        ok = false;
        break;
      }
      c = (c << 6) | (byte(j) & 0x3F);
    }
    out += ok ? c : kReplacement;
    i = j;  // a broken sequence consumes its valid prefix (at least the lead byte)
  }
  return out;
}

namespace detail {
template <std::size_t N>
bool in_ranges(std::uint32_t const (&table)[N][2], char32_t c) {
  auto it = std::upper_bound(std::begin(table), std::end(table), std::uint32_t(c),
                             [](std::uint32_t v, auto const& r) { return v < r[0]; });
  return it != std::begin(table) && c <= (*(it - 1))[1];
}
}  // namespace detail

/// General_Category L* (the regex class \p{L}).
inline bool is_letter(char32_t c) {
  if (c < 0x80) return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
  return detail::in_ranges(unicode_data::kLetters, c);
}
/// General_Category N* (the regex class \p{N}).
inline bool is_number(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  return detail::in_ranges(unicode_data::kNumbers, c);
}
/// The White_Space property (Oniguruma's \s on UTF-8 text).
inline bool is_whitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}
/// Python's str.isspace (White_Space plus the separators U+001C..U+001F): what str.strip() removes.
inline bool is_python_space(char32_t c) { return is_whitespace(c) || (c >= 0x1C && c <= 0x1F); }

/// Appends the lowercase of `c` (per character, without context, as Rust's char::to_lowercase: U+03A3 -> U+03C3,
/// U+0130 -> U+0069 U+0307).
inline void append_lowercase(std::u32string& out, char32_t c) {
  if (c < 0x80) {
    out += (c >= 'A' && c <= 'Z') ? char32_t(c + 32) : c;
    return;
  }
  if (c == 0x130) {
    out += U'\u0069';
    out += U'\u0307';
    return;
  }
  auto const& t = unicode_data::kLowercase;
  auto it = std::lower_bound(std::begin(t), std::end(t), std::uint32_t(c),
                             [](auto const& r, std::uint32_t v) { return r[0] < v; });
  out += (it != std::end(t) && (*it)[0] == c) ? char32_t((*it)[1]) : c;
}

/// Canonical combining class (0 for starters).
inline int combining_class(char32_t c) {
  if (c < 0x300) return 0;
  auto const& t = unicode_data::kCombiningClass;
  auto it = std::upper_bound(std::begin(t), std::end(t), std::uint32_t(c),
                             [](std::uint32_t v, auto const& r) { return v < r[0]; });
  return (it != std::begin(t) && c <= (*(it - 1))[1]) ? int((*(it - 1))[2]) : 0;
}

namespace detail {
inline constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
inline constexpr int kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

inline void decompose(std::u32string& out, char32_t c) {
  if (c >= kSBase && c < kSBase + kSCount) {  // Hangul syllable: algorithmic
    int const s = int(c - kSBase);
    out += char32_t(kLBase + s / kNCount);
    out += char32_t(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out += char32_t(kTBase + s % kTCount);
    return;
  }
  if (c >= 0xC0) {
    auto const& t = unicode_data::kDecompositions;
    auto it = std::lower_bound(std::begin(t), std::end(t), std::uint32_t(c),
                               [](auto const& r, std::uint32_t v) { return r[0] < v; });
    if (it != std::end(t) && (*it)[0] == c) {
      decompose(out, char32_t((*it)[1]));
      if ((*it)[2]) decompose(out, char32_t((*it)[2]));
      return;
    }
  }
  out += c;
}

/// The primary composite of (a, b), or 0.
inline char32_t compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + char32_t((int(a - kLBase) * kVCount + int(b - kVBase)) * kTCount);
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
    return a + (b - kTBase);
  auto const& t = unicode_data::kCompositions;
  auto it = std::lower_bound(std::begin(t), std::end(t), std::pair<std::uint32_t, std::uint32_t>(a, b),
                             [](auto const& r, std::pair<std::uint32_t, std::uint32_t> const& v) {
                               return r[0] < v.first || (r[0] == v.first && r[1] < v.second);
                             });
  return (it != std::end(t) && (*it)[0] == a && (*it)[1] == b) ? char32_t((*it)[2]) : 0;
}
}  // namespace detail

/// Unicode Normalization Form C: canonical decomposition, canonical ordering, canonical composition (UAX #15).
inline std::u32string nfc(std::u32string const& s) {
  bool simple = true;
  for (char32_t c : s) simple = simple && c < 0x300;
  if (simple) return s;  // nothing below U+0300 decomposes or combines
  std::u32string d;
  d.reserve(s.size() + 8);
  for (char32_t c : s) detail::decompose(d, c);
  for (std::size_t i = 1; i < d.size(); ++i) {  // canonical ordering: stable insertion sort of combining runs
    int const cc = combining_class(d[i]);
    if (cc == 0) continue;
    std::size_t j = i;
    while (j > 0 && combining_class(d[j - 1]) > cc) {
      std::swap(d[j], d[j - 1]);
      --j;
    }
  }
  std::u32string r;
  r.reserve(d.size());
  std::ptrdiff_t starter = -1;
  for (char32_t c : d) {
    int const cc = combining_class(c);
    if (starter >= 0) {
      bool const adjacent = std::size_t(starter) + 1 == r.size();
      int const last = adjacent ? -1 : combining_class(r.back());
      if (adjacent || (last != 0 && last < cc)) {
        if (char32_t const p = detail::compose(r[std::size_t(starter)], c)) {
          r[std::size_t(starter)] = p;
          continue;
        }
      }
    }
    if (cc == 0) starter = std::ptrdiff_t(r.size());
    r += c;
  }
  return r;
}

}  // namespace sdlora::tokenizer::unicode
