// AtomicFile: temp file + fflush + fsync + rename + directory fsync, with cleanup on
// every error path; plus the byte-order helper the file formats share.
#include "io/atomic_file.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
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

std::string base_name(const std::string& path) {
  auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// A temp file of another writer is stale when its process is gone: a SIGKILL or a power
// loss skips ~AtomicFile, and each such file is a whole checkpoint's size. A live pid may
// be a reused one, so a file nobody wrote to for a day goes too; a live writer's file is
// never touched. (A writer on another host sharing the directory is not visible to
// kill(): give hosts their own output directories.)
bool stale_temp(const std::string& file, long long pid) {
  if (pid <= 0 || pid == static_cast<long long>(::getpid())) return false;
  const bool alive = ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
  if (!alive) return true;
  struct stat st {};
  return ::stat(file.c_str(), &st) == 0 && std::time(nullptr) - st.st_mtime > 24 * 3600;
}

}  // namespace

void remove_stale_temps(const std::string& path) {
  const std::string dir = parent_dir(path), prefix = base_name(path) + ".tmp.";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;  // best effort: the save itself reports a directory it cannot use
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string digits = name.substr(prefix.size());
    if (digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string file = dir + "/" + name;
    if (stale_temp(file, std::stoll(digits))) ::unlink(file.c_str());
  }
  ::closedir(d);
}

AtomicFile::AtomicFile(std::string path, const char* op) : path_(std::move(path)), op_(op) {
  BB_CHECK(!path_.empty(), IOError, "{}: empty path", op_);
  remove_stale_temps(path_);
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
