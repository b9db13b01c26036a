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

// The metadata key where save_safetensors puts each tensor's CRC-32C (a JSON object of
// name: 8 hex digits, over the tensor's bytes in the file); reserved.
inline constexpr const char* kChecksumMetadataKey = "barbell.crc32c";

struct Safetensors {
  TensorMap tensors;                            // CPU, contiguous, owning their memory
  std::map<std::string, std::string> metadata;  // the header's "__metadata__" (without the checksums)
  std::string path;                             // the file it came from, for error messages
  // The file carried checksums and every tensor's bytes matched. False for files of
  // other writers (and of barbell before it wrote checksums): their bytes are not checked.
  bool checksums_verified = false;

  // Throws IOError naming the file and the tensor when there is no such tensor.
  const Tensor& at(const std::string& name) const;
  bool contains(const std::string& name) const;
};

// Writes `tensors` (any device, any strides) to `path` atomically: a temp file next to
// it, fsync, rename, fsync of the directory. On any error the previous file is left as
// it was and the temp file is removed; temp files of writers that were killed are removed
// (see detail::AtomicFile). Each tensor's CRC-32C goes into the metadata under
// kChecksumMetadataKey. Duplicate, empty or reserved names (also the metadata key
// kChecksumMetadataKey), more than 2^18 tensors and undefined tensors throw ValueError;
// I/O failures throw IOError with the path and errno text.
void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Reads a whole file. Anything malformed (truncation, bad header, unknown dtype, sizes
// or offsets that disagree with the file, an empty or duplicate name, a header nested
// deeper than 8 levels, more than 2^18 tensors or a shape of more than 64 dimensions,
// bytes that do not match their checksum) throws IOError naming the path and the fault;
// no other exception escapes.
Safetensors load_safetensors(const std::string& path);

}  // namespace barbell::io
