// ByteTokenizer: the tokenizer that needs no vocabulary file; every byte of UTF-8 (or
// any) text is one token, so any input encodes and decode(encode(s)) == s exactly.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace barbell::io {

class ByteTokenizer {
 public:
  static constexpr int kVocab = 256;

  std::vector<int32_t> encode(const std::string& text) const;
  // Ids outside [0, 256) throw IndexError naming the id and its position.
  std::string decode(const std::vector<int32_t>& ids) const;
  int vocab_size() const { return kVocab; }
};

}  // namespace barbell::io
