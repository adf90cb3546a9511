/// @file unicode_test.cpp
/// @brief The Unicode helpers of the tokenizer: UTF-8 (lossy), classes, lowercase, NFC. Exact comparisons.
#include <catch2/catch.hpp>

#include <string>  // std::string, std::u32string

#include <sdlora/tokenizer/unicode.hpp>  // unicode::*

using namespace sdlora::tokenizer;

TEST_CASE("UTF-8 round trip and maximal-subpart replacement", "[tokenizer][unicode]") {
  std::string const s = "a\xC3\xA9\xE6\x9D\xB1\xF0\x9F\x98\x80";  // a é 東 😀
  CHECK(unicode::from_utf8_lossy(s) == U"a\u00e9\u6771\U0001F600");
  CHECK(unicode::to_utf8(unicode::from_utf8_lossy(s)) == s);
  // Python: b"\xe6\x9d a \xff \xed\xa0\x80 \xf0\x9f".decode("utf-8", "replace")
  CHECK(unicode::from_utf8_lossy("\xE6\x9D a \xFF \xED\xA0\x80 \xF0\x9F") ==
        U"\ufffd a \ufffd \ufffd\ufffd\ufffd \ufffd");
}

TEST_CASE("Letter, number and White_Space classes follow Unicode categories", "[tokenizer][unicode]") {
  for (char32_t c : {U'a', U'Z', U'\u00e9', U'\u00df', U'\u6771', U'\u30cd', U'\u0416', U'\uac00', U'\u01c5'})
    CHECK(unicode::is_letter(c));
  for (char32_t c : {U'1', U'\u00b2', U'\u2460', U'\u216b', U'\u0663', U'\uff11'}) CHECK(unicode::is_number(c));
  for (char32_t c : {U'!', U'\u0301', U'\u200b', U'\U0001F600', U' ', U'_'}) {
    CHECK_FALSE(unicode::is_letter(c));
    CHECK_FALSE(unicode::is_number(c));
  }
  for (char32_t c : {U'\t', U'\u000b', U'\u0085', U'\u00a0', U'\u3000', U'\u2028', U'\u202f'})
    CHECK(unicode::is_whitespace(c));
  for (char32_t c : {U'\u001c', U'\u200b', U'\u180e', U'\ufeff'}) CHECK_FALSE(unicode::is_whitespace(c));
}

TEST_CASE("Lowercase is per character without context", "[tokenizer][unicode]") {
  std::u32string out;
  for (char32_t c : std::u32string(U"A\u00c4\u03a3\u0130\u1e9e\u0416z")) unicode::append_lowercase(out, c);
  CHECK(out == U"a\u00e4\u03c3i\u0307\u00df\u0436z");
}

TEST_CASE("NFC composes, reorders and leaves composed text alone", "[tokenizer][unicode]") {
  CHECK(unicode::nfc(U"cafe\u0301") == U"caf\u00e9");
  CHECK(unicode::nfc(U"A\u030a") == U"\u00c5");
  CHECK(unicode::nfc(U"\u212b") == U"\u00c5");                      // singleton decomposition
  CHECK(unicode::nfc(U"\u1100\u1161\u11a8") == U"\uac01");          // Hangul jamo
  CHECK(unicode::nfc(U"a\u0323\u0302") == U"\u1ead");               // ạ + circumflex
  CHECK(unicode::nfc(U"a\u0302\u0323") == U"\u1ead");               // reordered first (ccc 230 after 220)
  CHECK(unicode::nfc(U"\u0344") == U"\u0308\u0301");                // composition exclusion
  CHECK(unicode::nfc(U"\u00e9\u6771 ok") == U"\u00e9\u6771 ok");
}
