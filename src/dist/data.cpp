// The distributed sampler: each rank reads only the token range it owns from the shards
// (headers first, then a seek per shard) and samples it with io::DataLoader.
#include "barbell/dist/data.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "io/atomic_file.hpp"

namespace barbell::dist {

namespace {

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

FilePtr open_shard(const char* op, const std::string& path) {
  FilePtr f(std::fopen(path.c_str(), "rb"));
  if (!f) {
    int err = errno;
    throw IOError(fmt::format("{}: {}: cannot open: {}", op, path, std::strerror(err)));
  }
  return f;
}

int32_t le32(const unsigned char* p) {
  return static_cast<int32_t>(static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
                              static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24);
}

constexpr size_t kHeaderBytes = io::kShardHeaderInts * 4;

// The token count of a shard, its header checked as io::read_token_shard checks it.
int64_t shard_count(const char* op, const std::string& path) {
  FilePtr f = open_shard(op, path);
  struct stat st {};
  BB_CHECK(::fstat(::fileno(f.get()), &st) == 0 && S_ISREG(st.st_mode), IOError, "{}: {}: not a regular file",
           op, path);
  const auto size = static_cast<uint64_t>(st.st_size);
  BB_CHECK(size >= kHeaderBytes, IOError, "{}: {}: file is {} bytes, shorter than the {}-byte header", op,
           path, size, kHeaderBytes);
  unsigned char h[12];
  BB_CHECK(std::fread(h, 1, sizeof(h), f.get()) == sizeof(h), IOError, "{}: {}: short read", op, path);
  const int32_t magic = le32(h), version = le32(h + 4), count = le32(h + 8);
  BB_CHECK(magic == io::kShardMagic, IOError, "{}: {}: wrong magic number: expected {}, found {}", op, path,
           io::kShardMagic, magic);
  BB_CHECK(version == io::kShardVersion, IOError, "{}: {}: unsupported version: expected {}, found {}", op,
           path, io::kShardVersion, version);
  BB_CHECK(count >= 0 && size - kHeaderBytes == static_cast<uint64_t>(count) * 2, IOError,
           "{}: {}: header says {} tokens but the body is {} bytes", op, path, count, size - kHeaderBytes);
  return count;
}

}  // namespace

int64_t count_tokens(const std::vector<std::string>& paths) {
  int64_t n = 0;
  for (const auto& p : paths) n += shard_count("count_tokens", p);
  return n;
}

std::vector<int32_t> read_token_range(const std::vector<std::string>& paths, int64_t begin, int64_t end) {
  constexpr const char* op = "read_token_range";
  BB_CHECK(0 <= begin && begin <= end, ValueError, "{}: bad range [{}, {})", op, begin, end);
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(end - begin));
  std::vector<uint16_t> buf;
  int64_t base = 0;  // first token of the current shard in the concatenation
  for (const auto& path : paths) {
    if (base >= end) break;
    const int64_t n = shard_count(op, path);
    const int64_t b = std::max(begin, base), e = std::min(end, base + n);
    if (b < e) {
      FilePtr f = open_shard(op, path);
      BB_CHECK(std::fseek(f.get(), static_cast<long>(kHeaderBytes + 2 * (b - base)), SEEK_SET) == 0, IOError,
               "{}: {}: cannot seek", op, path);
      buf.resize(static_cast<size_t>(e - b));
      BB_CHECK(std::fread(buf.data(), 2, buf.size(), f.get()) == buf.size(), IOError,
               "{}: {}: short read (file changed while reading?)", op, path);
      if (!io::detail::host_is_little_endian()) io::detail::swap_bytes(buf.data(), buf.size(), 2);
      out.insert(out.end(), buf.begin(), buf.end());
    }
    base += n;
  }
  BB_CHECK(static_cast<int64_t>(out.size()) == end - begin, IOError,
           "{}: asked for tokens [{}, {}) but the {} shard(s) hold {}", op, begin, end, paths.size(), base);
  return out;
}

namespace {
// As in io::DataLoader (src/io/data.cpp): its per-rank Philox key is
// splitmix64(seed ^ splitmix64(rank + 1)). A loader of rank 0 of 1 over the slice alone
// draws the same windows if given seed ^ splitmix64(rank + 1) ^ splitmix64(1); the
// dist.data test checks the batches against io::DataLoader over all tokens.
uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

DistributedTokenLoader::DistributedTokenLoader(const std::vector<std::string>& paths, int64_t batch,
                                               int64_t seq_len, uint64_t seed, int rank, int world)
    : rank_(rank), world_(world) {
  BB_CHECK(!paths.empty(), ValueError, "DistributedTokenLoader: no token shards given");
  BB_CHECK(world >= 1 && rank >= 0 && rank < world, ValueError,
           "DistributedTokenLoader: rank {} outside world {}", rank, world);
  total_ = count_tokens(paths);
  begin_ = total_ * rank / world;
  end_ = total_ * (rank + 1) / world;
  BB_CHECK(end_ - begin_ >= seq_len + 1, ValueError,
           "DistributedTokenLoader: rank {} of {} owns {} of the {} tokens, fewer than seq_len + 1 = {}",
           rank, world, end_ - begin_, total_, seq_len + 1);
  auto slice = std::make_shared<const std::vector<int32_t>>(read_token_range(paths, begin_, end_));
  const uint64_t key = seed ^ splitmix64(static_cast<uint64_t>(rank) + 1) ^ splitmix64(1);
  loader_ = std::make_unique<io::DataLoader>(slice, batch, seq_len, key, 0, 1);
}

}  // namespace barbell::dist
