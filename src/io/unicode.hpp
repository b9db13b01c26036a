// The Unicode character classes GPT-2's pre-tokenizer needs (letter, number, white space, other) and the
// UTF-8 decoding it runs on; the tables are generated (src/io/unicode_tables.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

namespace barbell::io::detail {

struct CodeRange {
  uint32_t lo, hi;  // inclusive
};
struct CodeRangeTable {
  const CodeRange* ranges;
  size_t size;
  bool contains(uint32_t cp) const;
};

extern const char* const kUnicodeVersion;      // of the generated tables
extern const CodeRangeTable kLetterTable;      // general category L* (\p{L})
extern const CodeRangeTable kNumberTable;      // general category N* (\p{N})
extern const CodeRangeTable kWhiteSpaceTable;  // the White_Space property (\s of the regex module)

enum class CharClass : uint8_t { Letter, Number, Space, Other };

CharClass char_class(uint32_t cp);

// One unit of a byte string: a well-formed UTF-8 sequence (Unicode's Table 3-7) or, where the bytes are
// not one, a single byte on its own (cp = kInvalidByte). An invalid byte is of class Other, as Python's
// surrogateescape decoding makes it (a lone surrogate, category Cs).
inline constexpr uint32_t kInvalidByte = 0xFFFFFFFFu;
struct Utf8Unit {
  uint32_t cp;
  uint32_t len;  // bytes, 1..4
};
Utf8Unit decode_utf8(const unsigned char* p, size_t n);  // n >= 1 bytes available at p

}  // namespace barbell::io::detail
