// AtomicFile: the one way io writes a file, so a crash or an error never leaves a
// half-written file where a good one was (temp file, fsync, rename, fsync the directory).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

namespace barbell::io::detail {

// Writes go to `path.tmp.<pid>`; commit() makes them durable and renames the temp file
// over `path`. Destroying an uncommitted AtomicFile (an exception on the way) removes the
// temp file and leaves whatever was at `path` untouched. A killed writer cannot clean up:
// the constructor first removes the `path.tmp.<pid>` files whose process is gone (see
// remove_stale_temps). Errors throw IOError with the path, the step and the errno text.
class AtomicFile {
 public:
  // `op` names the caller in error messages, e.g. "save_safetensors".
  AtomicFile(std::string path, const char* op);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t nbytes);
  void commit();
  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return tmp_; }

 private:
  void close_quietly() noexcept;
  [[noreturn]] void fail(const char* step, int err);

  std::string path_;
  const char* op_;
  std::string tmp_;
  std::FILE* file_ = nullptr;
  bool done_ = false;  // committed, or failed and already cleaned up
};

// Removes `path.tmp.<pid>` files next to `path` left by writers that died: those whose
// pid is not a live process, and those not written to for a day (a reused pid). Never
// this process's own, never a live writer's. Best effort: errors are ignored.
void remove_stale_temps(const std::string& path);

// Little-endian helpers shared by the readers and writers.
inline bool host_is_little_endian() {
#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
  return __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;
#else
  const uint16_t one = 1;
  return *reinterpret_cast<const unsigned char*>(&one) == 1;
#endif
}

// Reverses each `width`-byte element of a buffer in place: file order <-> host order
// on a big-endian machine. A no-op for width 1.
void swap_bytes(void* data, size_t nelems, size_t width);

}  // namespace barbell::io::detail
