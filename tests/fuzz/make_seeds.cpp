// Writes the barbell-made seed files of the fuzzers' corpora: safetensors files (every
// dtype, views, scalars, empty tensors, metadata) and token shards.
//   fuzz_make_seeds SAFETENSORS_DIR TOKEN_SHARD_DIR
#include <cstdio>

#include "barbell/barbell.hpp"

namespace bb = barbell;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s SAFETENSORS_DIR TOKEN_SHARD_DIR\n", argv[0]);
    return 2;
  }
  const std::string st = argv[1], shards = argv[2];
  bb::manual_seed(5);
  const bb::DType all[] = {bb::kF32, bb::kF64, bb::kBF16, bb::kF16, bb::kI32, bb::kI64, bb::DType::Bool};
  bb::io::TensorMap every;
  for (bb::DType dt : all) {
    const std::string n = bb::dtype_name(dt);
    bb::Tensor base =
        dt == bb::DType::Bool
            ? bb::from_vector<bool>(
                  {true, false, false, true, true, true, false, true, false, false, true, false}, {3, 4})
            : bb::mul(bb::randn({3, 4}), 3.0).to(dt);
    every.emplace_back(n + ".matrix", base);
    every.emplace_back(n + ".transposed", base.t());
    every.emplace_back(n + ".scalar", base.select(0, 1).select(0, 2));
    every.emplace_back(n + ".empty", base.narrow(0, 0, 0));
  }
  bb::io::save_safetensors(st + "/barbell_every_dtype.safetensors", every,
                           {{"format", "pt"}, {"note", "ünïcode"}});
  bb::io::save_safetensors(st + "/barbell_empty.safetensors", {});
  bb::io::save_safetensors(st + "/barbell_one.safetensors", {{"w", bb::arange(6, {bb::kF32}).view({2, 3})}},
                           {{"k", "v"}});
  bb::io::save_safetensors(st + "/barbell_4d.safetensors", {{"x", bb::randn({1, 2, 1, 3})}});
  bb::io::write_token_shard(shards + "/barbell_small.bin", {0, 1, 2, 65535, 50256, 7});
  bb::io::write_token_shard(shards + "/barbell_empty.bin", {});
  std::vector<uint16_t> text;
  for (char c : std::string("hello, token shards")) text.push_back(static_cast<uint16_t>(c));
  bb::io::write_token_shard(shards + "/barbell_text.bin", text);
  return 0;
}
