// safetensors files (the Hugging Face format): save a named set of tensors atomically,
// load one back with every header field validated against the file.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "barbell/core/tensor.hpp"

namespace barbell::io {

// Ordered (the order is kept through a save and a load); names are unique.
using TensorMap = std::vector<std::pair<std::string, Tensor>>;

struct Safetensors {
  TensorMap tensors;                            // CPU, contiguous, owning their memory
  std::map<std::string, std::string> metadata;  // the header's "__metadata__"
  std::string path;                             // the file it came from, for error messages

  // Throws IOError naming the file and the tensor when there is no such tensor.
  const Tensor& at(const std::string& name) const;
  bool contains(const std::string& name) const;
};

// Writes `tensors` (any device, any strides) to `path` atomically: a temp file next to
// it, fsync, rename, fsync of the directory. On any error the previous file is left as
// it was and the temp file is removed. Duplicate, empty or reserved names and undefined
// tensors throw ValueError; I/O failures throw IOError with the path and errno text.
void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Reads a whole file. Anything malformed (truncation, bad header, unknown dtype, sizes
// or offsets that disagree with the file) throws IOError naming the path and the fault.
Safetensors load_safetensors(const std::string& path);

}  // namespace barbell::io
