// ByteTokenizer: bytes to ids and back; decode checks every id because model output
// (argmax over a larger padded vocabulary) can name ids that are not bytes.
#include "barbell/io/tokenizer.hpp"

#include "barbell/core/error.hpp"

namespace barbell::io {

std::vector<int32_t> ByteTokenizer::encode(const std::string& text) const {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string text(ids.size(), '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    BB_CHECK(ids[i] >= 0 && ids[i] < kVocab, IndexError,
             "ByteTokenizer::decode: id {} at position {} is outside [0, {})", ids[i], i, kVocab);
    text[i] = static_cast<char>(static_cast<unsigned char>(ids[i]));
  }
  return text;
}

}  // namespace barbell::io
