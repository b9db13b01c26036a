// GPT2Tokenizer: GPT-2's byte-level BPE from a vocab.json and merges.txt (the files Hugging Face and
// OpenAI ship), with GPT-2's pre-tokenization regex implemented by hand over generated Unicode tables.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace barbell::io {

// encode() splits the text as GPT-2's pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// does under Python's `regex` module (\p{L}, \p{N}: Unicode general categories; \s: White_Space; the Unicode
// version is unicode_version()), maps each piece's bytes to GPT-2's printable stand-ins, and applies the
// merges in rank order (merges.txt's line order) as GPT-2's encoder.py does. Bytes that are not well-formed
// UTF-8 are each a character of their own that is neither letter, number nor space (what Python's
// surrogateescape decoding makes of them), so every byte string encodes and decode(encode(s)) == s.
// Special tokens such as "<|endoftext|>" are not recognised in the text (tiktoken's encode_ordinary);
// token_id() finds their ids. Copies share the tables and the cache; all methods are thread-safe.
class GPT2Tokenizer {
 public:
  // Reads dir/vocab.json and dir/merges.txt.
  explicit GPT2Tokenizer(const std::string& dir);
  // IOError naming the file (and line or token) when a file is missing or malformed: vocab.json must be
  // an object of distinct non-negative ids holding a token for each of the 256 bytes; every merges.txt
  // line (after an optional "#version" line) is two tokens separated by one space, both in the
  // vocabulary, as is their concatenation, and no merge appears twice.
  GPT2Tokenizer(const std::string& vocab_json, const std::string& merges_txt);

  std::vector<int32_t> encode(const std::string& text) const;
  // The bytes the ids stand for (not necessarily UTF-8: a token can end inside a character). IndexError
  // naming the id and its position for an id the vocabulary does not hold.
  std::string decode(const std::vector<int32_t>& ids) const;

  // The largest id + 1 (GPT-2: 50257).
  int64_t vocab_size() const;
  // The id of a vocab.json entry, written as it is there ("<|endoftext|>", "Ġthe").
  std::optional<int32_t> token_id(const std::string& token) const;

  // GPT-2's pre-tokenization alone: the pieces encode() runs BPE on, in order; they concatenate to text.
  static std::vector<std::string> pretokenize(const std::string& text);
  static const char* unicode_version();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace barbell::io
