/// @file clip_tokenizer.hpp
/// @brief ClipTokenizer: the CLIP byte-level BPE tokenizer of Stable Diffusion, giving the same ids as
/// transformers.CLIPTokenizer (5.x, backed by `tokenizers`). Opt-in include: <sdlora/tokenizer/clip_tokenizer.hpp>
/// (also pulled in by <sdlora/sdlora.hpp>); needs zlib for the bundled .gz vocabulary.
///
/// Pipeline (transformers' CLIPTokenizer):
/// 1. special tokens (<|startoftext|>, <|endoftext|>) are cut out of the raw text, case-sensitively;
/// 2. each other piece is normalised: NFC, runs of White_Space -> ' ', per-character lowercase;
/// 3. added tokens (Textual Inversion, `add_tokens`) are cut out of the normalised text as whole units;
/// 4. the CLIP regex `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
///    splits the rest (whitespace dropped); a literal special token found here (e.g. from "<|ENDOFTEXT|>") is split
///    further into "<|", the word, "|>" as the byte-level pre-tokenizer's GPT-2 regex does;
/// 5. each piece's UTF-8 bytes become GPT-2 byte characters, '</w>' is appended to the last, BPE merges are applied
///    lowest rank first; 6. BOS ... EOS around the ids, truncation to max_length keeps EOS, padding with pad_id().
#pragma once

#include <zlib.h>  // gzopen, gzread, gzclose

#include <algorithm>      // std::push_heap, std::pop_heap
#include <array>          // std::array
#include <cstdint>        // std::uint8_t
#include <cstdlib>        // std::getenv
#include <filesystem>     // std::filesystem::path, exists
#include <fstream>        // std::ifstream, std::ofstream
#include <functional>     // std::greater
#include <limits>         // std::numeric_limits
#include <optional>       // std::optional
#include <span>           // std::span
#include <sstream>        // std::ostringstream
#include <string>         // std::string
#include <string_view>    // std::string_view
#include <unordered_map>  // std::unordered_map
#include <utility>        // std::pair
#include <vector>         // std::vector

#include <nlohmann/json.hpp>  // nlohmann::json

#include <sdlora/core/error.hpp>          // SDLORA_THROW, IoError, FormatError
#include <sdlora/core/json.hpp>           // check_json_depth
#include <sdlora/tokenizer/unicode.hpp>  // unicode::nfc, is_letter, ...

namespace sdlora::tokenizer {

/// Number of merges of CLIP's vocabulary (lines 1..48894 of bpe_simple_vocab_16e6.txt) and the resulting size.
inline constexpr int kClipMerges = 49152 - 256 - 2;
inline constexpr int kClipVocabSize = 49408;
inline constexpr int kClipMaxLength = 77;
inline constexpr char kBundledVocabName[] = "bpe_simple_vocab_16e6.txt.gz";

/// The path of bpe_simple_vocab_16e6.txt.gz: in `explicit_dir` if given (and only there), else $SDLORA_DATA_DIR, else the
/// SDLORA_DATA_DIR compile definition (tests), else SDLORA_BUNDLED_DATA_DIR (set by CMake on the sdlora target: the
/// source tree's data/ in a build tree, <prefix>/share/sdlora once installed). Throws IoError if none has the file.
inline std::string find_bundled_vocab(std::string const& explicit_dir = "") {
  std::vector<std::string> tried;
  auto check = [&](std::string const& dir) -> std::optional<std::string> {
    if (dir.empty()) return std::nullopt;
    std::filesystem::path const p = std::filesystem::path(dir) / kBundledVocabName;
    tried.push_back(p.string());
    if (std::filesystem::exists(p)) return p.string();
    return std::nullopt;
  };
  if (!explicit_dir.empty()) {
    if (auto p = check(explicit_dir)) return *p;
    SDLORA_THROW(IoError, "[tokenizer] " << kBundledVocabName << " not found in " << explicit_dir);
  }
  if (char const* env = std::getenv("SDLORA_DATA_DIR"))
    if (auto p = check(env)) return *p;
#if defined(SDLORA_DATA_DIR)
  if (auto p = check(SDLORA_DATA_DIR)) return *p;
#endif
#if defined(SDLORA_BUNDLED_DATA_DIR)
  if (auto p = check(SDLORA_BUNDLED_DATA_DIR)) return *p;
#endif
  std::ostringstream os;
  for (auto const& t : tried) os << " " << t;
  SDLORA_THROW(IoError, "[tokenizer] " << kBundledVocabName << " not found (tried:" << os.str()
                                       << "); pass its folder or set SDLORA_DATA_DIR");
}

namespace detail {

inline std::string read_file(std::string const& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) SDLORA_THROW(IoError, "[tokenizer] cannot open " << path);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

/// A JSON file's text; FormatError naming it when it nests deeper than kMaxJsonDepth.
inline std::string read_json_text(std::string const& path) {
  std::string text = read_file(path);
  check_json_depth(text, "[tokenizer] " + path);
  return text;
}

inline std::string read_gzip(std::string const& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) SDLORA_THROW(IoError, "[tokenizer] cannot open " << path);
  std::string out;
  std::array<char, 1 << 16> buf{};
  int n = 0;
  while ((n = gzread(f, buf.data(), unsigned(buf.size()))) > 0) out.append(buf.data(), std::size_t(n));
  int err = 0;
  char const* msg = gzerror(f, &err);
  std::string const message = msg ? msg : "";
  gzclose(f);
  if (n < 0 || (err != Z_OK && err != Z_STREAM_END)) SDLORA_THROW(FormatError, "[tokenizer] " << path << ": " << message);
  return out;
}

inline std::vector<std::string_view> split_lines(std::string_view s) {
  std::vector<std::string_view> lines;
  std::size_t start = 0;
  while (start <= s.size()) {
    std::size_t end = s.find('\n', start);
    if (end == std::string_view::npos) end = s.size();
    std::string_view line = s.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    start = end + 1;
  }
  return lines;
}

/// GPT-2's byte -> printable character map (bytes_to_unicode): printable Latin-1 bytes map to themselves, the
/// others to U+0100 + n in byte order.
inline std::array<char32_t, 256> byte_chars() {
  std::array<char32_t, 256> map{};
  std::array<bool, 256> direct{};
  for (int b = '!'; b <= '~'; ++b) direct[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
  int n = 0;
  for (int b = 0; b < 256; ++b) map[b] = direct[b] ? char32_t(b) : char32_t(256 + n++);
  return map;
}

/// The vocabulary order of CLIP's SimpleTokenizer: the byte characters in bytes_to_unicode's order (printable
/// ranges first), then the same with '</w>'.
inline std::vector<std::string> byte_vocab() {
  std::array<char32_t, 256> const map = byte_chars();
  std::vector<int> order;
  for (int b = '!'; b <= '~'; ++b) order.push_back(b);
  for (int b = 0xA1; b <= 0xAC; ++b) order.push_back(b);
  for (int b = 0xAE; b <= 0xFF; ++b) order.push_back(b);
  for (int b = 0; b < 256; ++b)
    if (map[b] >= 256) order.push_back(b);
  std::vector<std::string> v;
  for (int b : order) {
    std::string s;
    unicode::append_utf8(s, map[b]);
    v.push_back(s);
  }
  for (int i = 0; i < 256; ++i) v.push_back(v[i] + "</w>");
  return v;
}


/// Byte-pair merging of one word's symbols: repeatedly merges the adjacent pair of lowest rank (`rank(left, right)`,
/// nothing for a pair that never merges), the leftmost of equal ranks, until no pair merges. A heap of candidate
/// pairs keyed (rank, position) with lazily dropped stale entries: O(n log n) rank lookups for n symbols, where the
/// straightforward rescan after every merge (bpe_merge_rescan, kept as the reference) is O(n^2) — a very long word
/// in a stranger's prompt costs milliseconds, not minutes. Both give the same symbols.
template <class Rank>
std::vector<std::string> bpe_merge(std::vector<std::string> sym, Rank const& rank) {
  std::size_t const n = sym.size();
  if (n < 2) return sym;
  std::vector<std::size_t> next(n), prev(n);
  std::vector<std::uint32_t> version(n, 0);  // bumped whenever a symbol changes or is merged away
  std::vector<bool> alive(n, true);
  for (std::size_t i = 0; i < n; ++i) next[i] = i + 1, prev[i] = i - 1;  // prev[0] wraps: never read
  struct Candidate {
    int rank;
    std::size_t left, right;  // symbol indices: a position in the word, so "leftmost" is the smaller left
    std::uint32_t left_version, right_version;
    bool operator>(Candidate const& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::vector<Candidate> heap;
  auto push = [&](std::size_t l, std::size_t r) {
    if (auto const k = rank(sym[l], sym[r])) {
      heap.push_back({*k, l, r, version[l], version[r]});
      std::push_heap(heap.begin(), heap.end(), std::greater<>());
    }
  };
  for (std::size_t i = 0; i + 1 < n; ++i) push(i, i + 1);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    Candidate const c = heap.back();
    heap.pop_back();
    if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right || version[c.left] != c.left_version ||
        version[c.right] != c.right_version)
      continue;  // stale: a neighbour merged since
    sym[c.left] += sym[c.right];
    alive[c.right] = false;
    ++version[c.left];
    ++version[c.right];
    next[c.left] = next[c.right];
    if (next[c.left] < n) prev[next[c.left]] = c.left;
    if (c.left > 0) {
      std::size_t const p = prev[c.left];
      if (p < n && alive[p]) push(p, c.left);
    }
    if (next[c.left] < n) push(c.left, next[c.left]);
  }
  std::vector<std::string> out;
  for (std::size_t i = 0; i < n; i = next[i]) out.push_back(std::move(sym[i]));
  return out;
}

/// The reference: rescan every adjacent pair after each merge (HF's CLIP BPE loop, merged one pair at a time).
template <class Rank>
std::vector<std::string> bpe_merge_rescan(std::vector<std::string> sym, Rank const& rank) {
  while (sym.size() > 1) {
    int best = std::numeric_limits<int>::max();
    std::size_t at = 0;
    for (std::size_t k = 0; k + 1 < sym.size(); ++k)
      if (auto const r = rank(sym[k], sym[k + 1]); r && *r < best) {
        best = *r;
        at = k;
      }
    if (best == std::numeric_limits<int>::max()) break;
    sym[at] += sym[at + 1];
    sym.erase(sym.begin() + std::ptrdiff_t(at) + 1);
  }
  return sym;
}

}  // namespace detail

/// The CLIP BPE tokenizer. Immutable after construction except for add_tokens / set_pad_token; const methods are
/// safe to call from several threads.
class ClipTokenizer {
 public:
  /// From CLIP's bpe_simple_vocab_16e6.txt.gz (the file bundled in data/; see find_bundled_vocab).
  /// An empty tokenizer (no vocabulary): a placeholder to assign a loaded one to.
  ClipTokenizer() = default;

  static ClipTokenizer from_bpe_gz(std::string const& path) {
    std::string const text = detail::read_gzip(path);
    std::vector<std::string_view> const lines = detail::split_lines(text);
    if (lines.size() < std::size_t(kClipMerges) + 1)
      SDLORA_THROW(FormatError, "[tokenizer] " << path << ": " << lines.size() << " lines, need " << kClipMerges + 1);
    std::vector<std::pair<std::string, std::string>> merges;
    merges.reserve(kClipMerges);
    for (int i = 1; i <= kClipMerges; ++i) merges.push_back(split_merge(lines[std::size_t(i)], path, i));
    std::vector<std::string> vocab = detail::byte_vocab();
    for (auto const& [a, b] : merges) vocab.push_back(a + b);
    vocab.push_back("<|startoftext|>");
    vocab.push_back("<|endoftext|>");
    return ClipTokenizer(std::move(vocab), std::move(merges));
  }
  /// The bundled vocabulary (data/bpe_simple_vocab_16e6.txt.gz, found by find_bundled_vocab(dir)).
  static ClipTokenizer bundled(std::string const& dir = "") { return from_bpe_gz(find_bundled_vocab(dir)); }

  /// From a diffusers/transformers `tokenizer/` folder's vocab.json ({token: id}) and merges.txt ("#version" line,
  /// then "a b" per line).
  static ClipTokenizer from_vocab_merges(std::string const& vocab_json, std::string const& merges_txt) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(detail::read_json_text(vocab_json));
    } catch (nlohmann::json::exception const& e) {
      SDLORA_THROW(FormatError, "[tokenizer] " << vocab_json << ": " << e.what());
    }
    if (!j.is_object()) SDLORA_THROW(FormatError, "[tokenizer] " << vocab_json << ": not a JSON object");
    std::vector<std::string> vocab(j.size());
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (!it.value().is_number_integer()) SDLORA_THROW(FormatError, "[tokenizer] " << vocab_json << ": id of '"
                                                                                    << it.key() << "' not an integer");
      auto const id = it.value().get<std::int64_t>();
      if (id < 0 || id >= std::int64_t(vocab.size()) || !vocab[std::size_t(id)].empty())
        SDLORA_THROW(FormatError, "[tokenizer] " << vocab_json << ": ids must be 0.." << vocab.size() - 1
                                                 << " without gaps; '" << it.key() << "' has " << id);
      vocab[std::size_t(id)] = it.key();
    }
    std::string const text = detail::read_file(merges_txt);
    std::vector<std::pair<std::string, std::string>> merges;
    int n = 0;
    for (std::string_view line : detail::split_lines(text)) {
      ++n;
      if (line.empty() || (n == 1 && line.starts_with("#version"))) continue;
      merges.push_back(split_merge(line, merges_txt, n));
    }
    return ClipTokenizer(std::move(vocab), std::move(merges));
  }

  /// From a Hugging Face `tokenizer.json` (tokenizers' BPE model: model.vocab {token: id}, model.merges as "a b"
  /// strings or [a, b] pairs), as CLIPModel folders on the Hub may ship instead of vocab.json + merges.txt.
  static ClipTokenizer from_tokenizer_json(std::string const& path) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(detail::read_json_text(path));
    } catch (nlohmann::json::exception const& e) {
      SDLORA_THROW(FormatError, "[tokenizer] " << path << ": " << e.what());
    }
    auto const model = j.find("model");
    if (model == j.end() || !model->is_object() || model->value("type", "BPE") != "BPE" ||
        !model->contains("vocab") || !model->contains("merges"))
      SDLORA_THROW(FormatError, "[tokenizer] " << path << ": not a BPE tokenizer.json (model.vocab, model.merges)");
    nlohmann::json const& v = (*model)["vocab"];
    std::vector<std::string> vocab(v.size());
    for (auto it = v.begin(); it != v.end(); ++it) {
      auto const id = it.value().get<std::int64_t>();
      if (id < 0 || id >= std::int64_t(vocab.size()) || !vocab[std::size_t(id)].empty())
        SDLORA_THROW(FormatError, "[tokenizer] " << path << ": vocab ids must be 0.." << vocab.size() - 1
                                                 << " without gaps; '" << it.key() << "' has " << id);
      vocab[std::size_t(id)] = it.key();
    }
    std::vector<std::pair<std::string, std::string>> merges;
    int n = 0;
    for (auto const& m : (*model)["merges"]) {
      ++n;
      if (m.is_array() && m.size() == 2) merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      else if (m.is_string()) merges.push_back(split_merge(m.get<std::string>(), path, n));
      else SDLORA_THROW(FormatError, "[tokenizer] " << path << ": merge " << n << " is neither \"a b\" nor [a, b]");
    }
    return ClipTokenizer(std::move(vocab), std::move(merges));
  }

  /// From a diffusers `tokenizer/` folder: vocab.json, merges.txt, and if present added_tokens.json and
  /// special_tokens_map.json / tokenizer_config.json (pad_token: SD 2.x pads with "!").
  static ClipTokenizer from_folder(std::string const& dir) {
    std::filesystem::path const d(dir);
    ClipTokenizer t = from_vocab_merges((d / "vocab.json").string(), (d / "merges.txt").string());
    auto json_of = [](std::filesystem::path const& p) -> std::optional<nlohmann::json> {
      if (!std::filesystem::exists(p)) return std::nullopt;
      try {
        return nlohmann::json::parse(detail::read_json_text(p.string()));
      } catch (nlohmann::json::exception const& e) {
        SDLORA_THROW(FormatError, "[tokenizer] " << p.string() << ": " << e.what());
      }
    };
    auto content = [](nlohmann::json const& v) -> std::optional<std::string> {
      if (v.is_string()) return v.get<std::string>();
      if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
      return std::nullopt;
    };
    if (auto added = json_of(d / "added_tokens.json")) {  // {"<erica>": 49408}, added in id order
      std::vector<std::pair<std::int64_t, std::string>> byid;
      for (auto it = added->begin(); it != added->end(); ++it) byid.emplace_back(it.value().get<std::int64_t>(), it.key());
      std::sort(byid.begin(), byid.end());
      for (auto const& [id, tok] : byid) {
        if (t.token_to_id(tok)) continue;
        if (id != std::int64_t(t.size()))
          SDLORA_THROW(FormatError, "[tokenizer] added_tokens.json: '" << tok << "' has id " << id << ", expected "
                                                                       << t.size());
        t.add_tokens({tok});
      }
    }
    for (char const* name : {"special_tokens_map.json", "tokenizer_config.json"}) {
      if (auto cfg = json_of(d / name)) {
        if (cfg->contains("pad_token"))
          if (auto pad = content((*cfg)["pad_token"])) t.set_pad_token(*pad);
      }
    }
    return t;
  }

  /// Writes vocab.json and merges.txt (the diffusers tokenizer/ layout; added tokens are not part of them).
  void save_vocab_merges(std::string const& vocab_json, std::string const& merges_txt) const {
    nlohmann::json j = nlohmann::json::object();
    for (std::size_t i = 0; i < base_size_; ++i) j[id_to_token_[i]] = i;
    std::ofstream v(vocab_json, std::ios::binary);
    if (!v) SDLORA_THROW(IoError, "[tokenizer] cannot write " << vocab_json);
    v << j.dump();
    std::ofstream m(merges_txt, std::ios::binary);
    if (!m) SDLORA_THROW(IoError, "[tokenizer] cannot write " << merges_txt);
    m << "#version: 0.2\n";
    for (auto const& [a, b] : merges_) m << a << ' ' << b << '\n';
    if (!v || !m) SDLORA_THROW(IoError, "[tokenizer] writing " << vocab_json << " / " << merges_txt << " failed");
  }

  /// Ids of `text` with BOS first and EOS last, no truncation.
  std::vector<int> encode(std::string_view text) const {
    std::vector<int> ids{bos_id_};
    append_ids(ids, text);
    ids.push_back(eos_id_);
    return ids;
  }
  /// Exactly `max_length` ids: BOS, at most max_length - 2 text ids, EOS, then pad_id() (the text encoder input).
  std::vector<int> encode_padded(std::string_view text, int max_length = kClipMaxLength) const {
    SDLORA_EXPECTS(max_length >= 2, "[tokenizer] max_length " << max_length << " leaves no room for BOS and EOS");
    std::vector<int> ids{bos_id_};
    append_ids(ids, text);
    if (ids.size() > std::size_t(max_length - 1)) ids.resize(std::size_t(max_length - 1));
    ids.push_back(eos_id_);
    ids.resize(std::size_t(max_length), pad_id_);
    return ids;
  }
  /// The token strings of `text` (no BOS/EOS): byte characters with '</w>' as in vocab.json.
  std::vector<std::string> tokenize(std::string_view text) const {
    std::vector<int> ids;
    append_ids(ids, text);
    std::vector<std::string> out;
    for (int id : ids) out.push_back(id_to_token_[std::size_t(id)]);
    return out;
  }

  /// Text of `ids` as transformers' decode: byte characters back to bytes (lossy UTF-8), '</w>' -> ' ', stripped.
  std::string decode(std::span<int const> ids, bool skip_special_tokens = true) const {
    std::string bytes;
    for (int id : ids) {
      SDLORA_EXPECTS(id >= 0 && std::size_t(id) < id_to_token_.size(),
                     "[tokenizer] id " << id << " out of range for a vocabulary of " << id_to_token_.size());
      if (skip_special_tokens && is_special(id)) continue;
      for (char32_t c : unicode::from_utf8_lossy(id_to_token_[std::size_t(id)])) {
        auto it = char_to_byte_.find(c);
        if (it != char_to_byte_.end()) bytes += char(it->second);
        else unicode::append_utf8(bytes, c);
      }
    }
    std::u32string const text = unicode::from_utf8_lossy(bytes);
    std::u32string out;
    for (std::size_t i = 0; i < text.size(); ++i) {
      if (text.compare(i, 4, U"</w>") == 0) {
        out += U' ';
        i += 3;
      } else {
        out += text[i];
      }
    }
    std::size_t b = 0, e = out.size();
    while (b < e && unicode::is_python_space(out[b])) ++b;
    while (e > b && unicode::is_python_space(out[e - 1])) --e;
    return unicode::to_utf8(std::u32string_view(out).substr(b, e - b));
  }
  std::string decode(std::vector<int> const& ids, bool skip_special_tokens = true) const {
    return decode(std::span<int const>(ids), skip_special_tokens);
  }

  /// Appends tokens to the vocabulary (ids size(), size() + 1, ...) that are matched as whole units in the
  /// normalised text (Textual Inversion placeholders such as "<erica>"). Tokens already known are skipped, as in
  /// transformers. Returns the number added.
  int add_tokens(std::vector<std::string> const& tokens) {
    int added = 0;
    for (std::string const& t : tokens) {
      SDLORA_EXPECTS(!t.empty(), "[tokenizer] cannot add an empty token");
      if (token_to_id(t)) continue;
      int const id = int(id_to_token_.size());
      id_to_token_.push_back(t);
      vocab_.emplace(t, id);
      added_.push_back({normalize(t), id});
      ++added;
    }
    return added;
  }

  std::optional<int> token_to_id(std::string const& token) const {
    auto it = vocab_.find(token);
    return it == vocab_.end() ? std::nullopt : std::optional<int>(it->second);
  }
  std::string const& id_to_token(int id) const {
    SDLORA_EXPECTS(id >= 0 && std::size_t(id) < id_to_token_.size(), "[tokenizer] id " << id << " out of range");
    return id_to_token_[std::size_t(id)];
  }
  /// Vocabulary size including added tokens.
  std::size_t size() const { return id_to_token_.size(); }
  int bos_id() const { return bos_id_; }
  int eos_id() const { return eos_id_; }
  int pad_id() const { return pad_id_; }
  /// The padding token ("<|endoftext|>" for SD 1.x, "!" for SD 2.x); it must be in the vocabulary.
  void set_pad_token(std::string const& token) {
    auto id = token_to_id(token);
    if (!id) SDLORA_THROW(ConfigError, "[tokenizer] pad token '" << token << "' is not in the vocabulary");
    pad_id_ = *id;
  }
  /// The normalisation transformers applies before splitting: NFC, White_Space runs -> ' ', lowercase.
  static std::string normalize(std::string_view text) {
    std::u32string const n = unicode::nfc(unicode::from_utf8_lossy(text));
    std::u32string spaced;
    for (std::size_t i = 0; i < n.size(); ++i) {
      if (unicode::is_whitespace(n[i])) {
        spaced += U' ';
        while (i + 1 < n.size() && unicode::is_whitespace(n[i + 1])) ++i;
      } else {
        spaced += n[i];
      }
    }
    std::u32string lower;
    lower.reserve(spaced.size());
    for (char32_t c : spaced) unicode::append_lowercase(lower, c);
    return unicode::to_utf8(lower);
  }

 private:
  struct Added {
    std::string text;  // as matched: normalised for added tokens, raw for special tokens
    int id;
  };

  ClipTokenizer(std::vector<std::string> vocab, std::vector<std::pair<std::string, std::string>> merges)
      : id_to_token_(std::move(vocab)), merges_(std::move(merges)) {
    base_size_ = id_to_token_.size();
    for (std::size_t i = 0; i < id_to_token_.size(); ++i) vocab_.emplace(id_to_token_[i], int(i));
    if (vocab_.size() != id_to_token_.size()) SDLORA_THROW(FormatError, "[tokenizer] duplicate tokens in vocabulary");
    for (std::size_t r = 0; r < merges_.size(); ++r) merge_rank_.emplace(merges_[r].first + ' ' + merges_[r].second, int(r));
    auto special = [&](char const* t) {
      auto id = token_to_id(t);
      if (!id) SDLORA_THROW(FormatError, "[tokenizer] vocabulary lacks " << t);
      specials_.push_back({t, *id});
      return *id;
    };
    bos_id_ = special("<|startoftext|>");
    eos_id_ = special("<|endoftext|>");
    pad_id_ = eos_id_;
    std::array<char32_t, 256> const map = detail::byte_chars();
    for (int b = 0; b < 256; ++b) {
      byte_token_[std::size_t(b)].clear();
      unicode::append_utf8(byte_token_[std::size_t(b)], map[std::size_t(b)]);
      char_to_byte_.emplace(map[std::size_t(b)], std::uint8_t(b));
    }
  }

  static std::pair<std::string, std::string> split_merge(std::string_view line, std::string const& file, int n) {
    std::size_t const sp = line.find(' ');
    if (sp == std::string_view::npos || sp == 0 || sp + 1 >= line.size() || line.find(' ', sp + 1) != line.npos)
      SDLORA_THROW(FormatError, "[tokenizer] " << file << " line " << n << ": expected 'a b', got '" << line << "'");
    return {std::string(line.substr(0, sp)), std::string(line.substr(sp + 1))};
  }

  bool is_special(int id) const { return id == bos_id_ || id == eos_id_ || id == pad_id_; }

  /// Leftmost-longest split of `text` on `tokens`: calls piece(text) for the text between matches and
  /// match(id) for each match.
  template <class Piece, class Match>
  static void split_on(std::string_view text, std::vector<Added> const& tokens, Piece&& piece, Match&& match) {
    std::size_t start = 0, i = 0;
    while (i < text.size()) {
      Added const* best = nullptr;
      for (Added const& t : tokens)
        if (text.compare(i, t.text.size(), t.text) == 0 && (!best || t.text.size() > best->text.size())) best = &t;
      if (!best) {
        ++i;
        continue;
      }
      if (i > start) piece(text.substr(start, i - start));
      match(best->id);
      i += best->text.size();
      start = i;
    }
    if (start < text.size()) piece(text.substr(start));
  }

  void append_ids(std::vector<int>& ids, std::string_view text) const {
    split_on(
        text, specials_,
        [&](std::string_view raw) {
          std::string const normalized = normalize(raw);
          split_on(
              normalized, added_, [&](std::string_view part) { append_pretokenized(ids, part); },
              [&](int id) { ids.push_back(id); });
        },
        [&](int id) { ids.push_back(id); });
  }

  /// The CLIP split regex over normalised text, then BPE of each piece.
  void append_pretokenized(std::vector<int>& ids, std::string_view text) const {
    std::u32string const s = unicode::from_utf8_lossy(text);
    std::size_t i = 0;
    auto emit = [&](std::size_t b, std::size_t e) { bpe(ids, unicode::to_utf8(std::u32string_view(s).substr(b, e - b))); };
    while (i < s.size()) {
      char32_t const c = s[i];
      if (unicode::is_whitespace(c)) {
        ++i;
        continue;
      }
      bool special = false;
      for (std::u32string_view lit : {std::u32string_view(U"<|startoftext|>"), std::u32string_view(U"<|endoftext|>")}) {
        if (!special && s.compare(i, lit.size(), lit) == 0) {
          emit(i, i + 2);  // the byte-level pre-tokenizer's GPT-2 regex: "<|", word, "|>"
          emit(i + 2, i + lit.size() - 2);
          emit(i + lit.size() - 2, i + lit.size());
          i += lit.size();
          special = true;
        }
      }
      if (special) continue;
      if (c == U'\'' && i + 1 < s.size()) {
        std::size_t len = 0;
        char32_t const n1 = s[i + 1], n2 = i + 2 < s.size() ? s[i + 2] : 0;
        if (n1 == U's' || n1 == U't' || n1 == U'm' || n1 == U'd') len = 2;
        else if ((n1 == U'r' && n2 == U'e') || (n1 == U'v' && n2 == U'e') || (n1 == U'l' && n2 == U'l')) len = 3;
        if (len) {
          emit(i, i + len);
          i += len;
          continue;
        }
      }
      std::size_t j = i + 1;
      if (unicode::is_letter(c)) {
        while (j < s.size() && unicode::is_letter(s[j])) ++j;
      } else if (!unicode::is_number(c)) {
        while (j < s.size() && !unicode::is_whitespace(s[j]) && !unicode::is_letter(s[j]) && !unicode::is_number(s[j]))
          ++j;
      }
      emit(i, j);
      i = j;
    }
  }

  /// Byte-level BPE of one piece: the lowest-ranked adjacent pair merges first (leftmost on ties).
  void bpe(std::vector<int>& ids, std::string const& piece) const {
    std::vector<std::string> sym;
    sym.reserve(piece.size());
    for (unsigned char b : piece) sym.push_back(byte_token_[b]);
    if (sym.empty()) return;
    sym.back() += "</w>";
    std::string key;
    auto const rank = [&](std::string const& a, std::string const& b) -> std::optional<int> {
      key.assign(a).append(1, ' ').append(b);
      auto const it = merge_rank_.find(key);
      return it == merge_rank_.end() ? std::nullopt : std::optional<int>(it->second);
    };
    sym = detail::bpe_merge(std::move(sym), rank);
    for (std::string const& t : sym) {
      auto it = vocab_.find(t);
      ids.push_back(it != vocab_.end() ? it->second : eos_id_);  // unknown -> unk_token (<|endoftext|>)
    }
  }

  std::vector<std::string> id_to_token_;
  std::unordered_map<std::string, int> vocab_;
  std::vector<std::pair<std::string, std::string>> merges_;
  std::unordered_map<std::string, int> merge_rank_;  // "a b" -> rank
  std::size_t base_size_ = 0;                         // vocab.json entries (before add_tokens)
  std::vector<Added> specials_;                       // matched on the raw text
  std::vector<Added> added_;                          // matched on the normalised text
  std::array<std::string, 256> byte_token_;           // byte -> its GPT-2 character (UTF-8)
  std::unordered_map<char32_t, std::uint8_t> char_to_byte_;
  int bos_id_ = 0, eos_id_ = 0, pad_id_ = 0;
};

}  // namespace sdlora::tokenizer
