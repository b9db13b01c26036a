// libFuzzer harness for load_safetensors: any bytes must load or throw barbell::Error (a
// crash, a sanitizer report or another exception is a finding), and what loads must
// survive save_safetensors and a second load unchanged.
#include <cstring>

#include "barbell/barbell.hpp"
#include "fuzz_common.hpp"

namespace bb = barbell;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  bb::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::input_file("in.safetensors", data, size);
  bb::io::Safetensors f;
  try {
    f = bb::io::load_safetensors(path);
  } catch (const bb::Error&) { return 0; }
  for (const auto& [name, t] : f.tensors)
    if (name.empty() || !t.is_contiguous() || t.nbytes() != static_cast<size_t>(t.numel()) * t.element_size())
      fuzz::finding("a loaded tensor is empty-named, strided or of the wrong size");
  // Round trip: barbell writes what it read, and reads it back bit for bit.
  const std::string again = fuzz::scratch_dir() + "/again.safetensors";
  bb::io::save_safetensors(again, f.tensors, f.metadata);
  const bb::io::Safetensors g = bb::io::load_safetensors(again);
  if (!g.checksums_verified || g.metadata != f.metadata || g.tensors.size() != f.tensors.size())
    fuzz::finding("the round trip changed the metadata or the tensors");
  for (size_t i = 0; i < f.tensors.size(); ++i) {
    const bb::Tensor &a = f.tensors[i].second, &b = g.tensors[i].second;
    if (f.tensors[i].first != g.tensors[i].first || a.dtype() != b.dtype() || a.shape() != b.shape() ||
        (a.nbytes() > 0 && std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) != 0))
      fuzz::finding("the round trip changed a tensor");
  }
  return 0;
}
