// train_kill_check CHECKPOINT: loads a barbell-train checkpoint as --resume does (every
// header field and each tensor's checksum checked) and prints the step it holds; exit 1
// with the error when it does not load. Used by tests/train_kill_test.sh.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "barbell/barbell.hpp"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CHECKPOINT\n", argv[0]);
    return 2;
  }
  try {
    const barbell::io::Safetensors f = barbell::io::load_safetensors(argv[1]);
    if (!f.checksums_verified) throw barbell::IOError(std::string(argv[1]) + ": no checksums");
    const auto st = nlohmann::json::parse(f.metadata.at("barbell.train_state"));
    std::printf("%lld\n", static_cast<long long>(st.at("step").get<int64_t>()));
  } catch (const std::exception& e) {
    std::printf("%s\n", e.what());
    return 1;
  }
  return 0;
}
