// What the libFuzzer harnesses share: a private scratch directory (in /dev/shm when there
// is one) for the file each input becomes, since the readers under test take paths.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace fuzz {

// A directory of this process alone, removed at exit.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    const char* base = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
    std::string tmpl = std::string(base) + "/barbell-fuzz-XXXXXX";
    if (!mkdtemp(tmpl.data())) {
      std::perror("barbell fuzz: mkdtemp");
      std::abort();
    }
    static std::string keep = tmpl;
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(keep, ec);
    });
    return tmpl;
  }();
  return dir;
}

// Writes the input to `name` in the scratch directory and returns its path.
inline std::string input_file(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = scratch_dir() + "/" + name;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || (size > 0 && std::fwrite(data, 1, size, f) != size) || std::fclose(f) != 0) {
    std::perror("barbell fuzz: writing the input");
    std::abort();
  }
  return path;
}

// A property the harness checks failed: a finding, reported like a crash.
[[noreturn]] inline void finding(const char* what) {
  std::fprintf(stderr, "barbell fuzz: property failed: %s\n", what);
  std::abort();
}

}  // namespace fuzz
