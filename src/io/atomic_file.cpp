// AtomicFile: temp file + fflush + fsync + rename + directory fsync, with cleanup on
// every error path; plus the byte-order helper the file formats share.
#include "io/atomic_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "barbell/core/error.hpp"

namespace barbell::io::detail {

namespace {

std::string parent_dir(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

AtomicFile::AtomicFile(std::string path, const char* op) : path_(std::move(path)), op_(op) {
  BB_CHECK(!path_.empty(), IOError, "{}: empty path", op_);
  // The pid keeps two processes writing the same checkpoint from sharing a temp file.
  tmp_ = path_ + ".tmp." + std::to_string(static_cast<long long>(::getpid()));
  file_ = std::fopen(tmp_.c_str(), "wb");
  if (!file_) {
    int err = errno;
    throw IOError(
        fmt::format("{}: {}: cannot create temp file {}: {}", op_, path_, tmp_, std::strerror(err)));
  }
}

AtomicFile::~AtomicFile() {
  if (done_) return;
  close_quietly();
  std::remove(tmp_.c_str());
}

void AtomicFile::close_quietly() noexcept {
  if (file_) std::fclose(file_);
  file_ = nullptr;
}

void AtomicFile::fail(const char* step, int err) {
  close_quietly();
  std::remove(tmp_.c_str());
  done_ = true;
  throw IOError(fmt::format("{}: {}: {} failed: {}", op_, path_, step, std::strerror(err)));
}

void AtomicFile::write(const void* data, size_t nbytes) {
  BB_CHECK(file_ && !done_, IOError, "{}: {}: write after commit or failure", op_, path_);
  if (nbytes == 0) return;
  errno = 0;
  if (std::fwrite(data, 1, nbytes, file_) != nbytes) fail("write", errno ? errno : EIO);
}

void AtomicFile::commit() {
  BB_CHECK(file_ && !done_, IOError, "{}: {}: commit twice or after failure", op_, path_);
  errno = 0;
  if (std::fflush(file_) != 0) fail("fflush", errno ? errno : EIO);
  if (::fsync(::fileno(file_)) != 0) fail("fsync", errno);
  std::FILE* f = file_;
  file_ = nullptr;
  if (std::fclose(f) != 0) fail("close", errno ? errno : EIO);
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) fail("rename", errno);
  done_ = true;
  // Without this the rename itself may not survive a power loss. Some filesystems
  // cannot fsync a directory (EINVAL); the data is then as safe as they allow.
  std::string dir = parent_dir(path_);
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    throw IOError(
        fmt::format("{}: {}: open directory {} for fsync failed: {}", op_, path_, dir, std::strerror(err)));
  }
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0 && err != EINVAL && err != ENOTSUP) {
    throw IOError(
        fmt::format("{}: {}: fsync of directory {} failed: {}", op_, path_, dir, std::strerror(err)));
  }
}

void swap_bytes(void* data, size_t nelems, size_t width) {
  if (width <= 1) return;
  auto* p = static_cast<unsigned char*>(data);
  for (size_t i = 0; i < nelems; ++i, p += width) {
    for (size_t a = 0, b = width - 1; a < b; ++a, --b) std::swap(p[a], p[b]);
  }
}

}  // namespace barbell::io::detail
