// libFuzzer harness for the token-shard reader: any bytes must read or throw
// barbell::Error, and a shard that reads must write and read back the same tokens.
#include "barbell/barbell.hpp"
#include "fuzz_common.hpp"

namespace bb = barbell;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::input_file("in.bin", data, size);
  std::vector<uint16_t> tokens;
  try {
    tokens = bb::io::read_token_shard(path);
  } catch (const bb::Error&) { return 0; }
  try {
    // load_tokens widens the same tokens, and refuses an empty shard.
    const std::vector<int32_t> wide = bb::io::load_tokens(path);
    if (wide.size() != tokens.size()) fuzz::finding("load_tokens and read_token_shard disagree");
  } catch (const bb::Error&) {
    if (!tokens.empty()) fuzz::finding("load_tokens refused a non-empty shard");
  }
  const std::string again = fuzz::scratch_dir() + "/again.bin";
  bb::io::write_token_shard(again, tokens);
  if (bb::io::read_token_shard(again) != tokens) fuzz::finding("the round trip changed the tokens");
  return 0;
}
