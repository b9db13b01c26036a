// Token shards (read checked against the header, written atomically), load_tokens, and
// DataLoader, whose window starts come straight from Philox(seed, rank, counter).
#include "barbell/io/data.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "barbell/core/random.hpp"
#include "barbell/io/tokenizer.hpp"
#include "io/atomic_file.hpp"

namespace barbell::io {

namespace {

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

// Opens a regular file for reading and returns it with its size.
FilePtr open_regular(const char* op, const std::string& path, uint64_t* size) {
  FilePtr f(std::fopen(path.c_str(), "rb"));
  if (!f) {
    int err = errno;
    throw IOError(fmt::format("{}: {}: cannot open: {}", op, path, std::strerror(err)));
  }
  struct stat st {};
  if (::fstat(::fileno(f.get()), &st) != 0) {
    int err = errno;
    throw IOError(fmt::format("{}: {}: cannot stat: {}", op, path, std::strerror(err)));
  }
  BB_CHECK(S_ISREG(st.st_mode), IOError, "{}: {}: not a regular file", op, path);
  *size = static_cast<uint64_t>(st.st_size);
  return f;
}

void read_exact(const char* op, const std::string& path, std::FILE* f, void* dst, size_t n) {
  if (n > 0 && std::fread(dst, 1, n, f) != n) {
    throw IOError(fmt::format("{}: {}: short read (file changed while reading?)", op, path));
  }
}

int32_t load_le32(const unsigned char* p) {
  return static_cast<int32_t>(static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
                              static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24);
}

void store_le32(unsigned char* p, int32_t v) {
  auto u = static_cast<uint32_t>(v);
  for (int i = 0; i < 4; ++i) p[i] = static_cast<unsigned char>(u >> (8 * i));
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

std::vector<uint16_t> read_token_shard(const std::string& path) {
  constexpr const char* op = "read_token_shard";
  uint64_t size = 0;
  FilePtr f = open_regular(op, path, &size);
  constexpr size_t kHeaderBytes = kShardHeaderInts * 4;
  BB_CHECK(size >= kHeaderBytes, IOError, "{}: {}: file is {} bytes, shorter than the {}-byte header", op,
           path, size, kHeaderBytes);
  unsigned char header[kHeaderBytes];
  read_exact(op, path, f.get(), header, kHeaderBytes);
  const int32_t magic = load_le32(header), version = load_le32(header + 4), count = load_le32(header + 8);
  BB_CHECK(magic == kShardMagic, IOError, "{}: {}: wrong magic number: expected {}, found {}", op, path,
           kShardMagic, magic);
  BB_CHECK(version == kShardVersion, IOError, "{}: {}: unsupported version: expected {}, found {}", op, path,
           kShardVersion, version);
  BB_CHECK(count >= 0, IOError, "{}: {}: negative token count {}", op, path, count);
  const uint64_t body = size - kHeaderBytes, want = static_cast<uint64_t>(count) * 2;
  BB_CHECK(body == want, IOError, "{}: {}: header says {} tokens ({} bytes) but the body is {} bytes ({})",
           op, path, count, want, body, body < want ? "truncated" : "trailing data");

  std::vector<uint16_t> tokens(static_cast<size_t>(count));
  read_exact(op, path, f.get(), tokens.data(), tokens.size() * 2);
  if (!detail::host_is_little_endian()) detail::swap_bytes(tokens.data(), tokens.size(), 2);
  return tokens;
}

void write_token_shard(const std::string& path, const std::vector<uint16_t>& tokens) {
  BB_CHECK(tokens.size() <= static_cast<size_t>(INT32_MAX), ValueError,
           "write_token_shard: {}: {} tokens do not fit the int32 count of the header", path, tokens.size());
  unsigned char header[kShardHeaderInts * 4] = {};
  store_le32(header, kShardMagic);
  store_le32(header + 4, kShardVersion);
  store_le32(header + 8, static_cast<int32_t>(tokens.size()));

  detail::AtomicFile file(path, "write_token_shard");
  file.write(header, sizeof(header));
  if (detail::host_is_little_endian()) {
    file.write(tokens.data(), tokens.size() * 2);
  } else {
    std::vector<uint16_t> le(tokens);
    detail::swap_bytes(le.data(), le.size(), 2);
    file.write(le.data(), le.size() * 2);
  }
  file.commit();
}

std::vector<int32_t> load_tokens(const std::string& path) {
  constexpr const char* op = "load_tokens";
  if (ends_with(path, ".bin")) {
    std::vector<uint16_t> shard = read_token_shard(path);
    BB_CHECK(!shard.empty(), IOError, "{}: {}: the token shard holds no tokens", op, path);
    return std::vector<int32_t>(shard.begin(), shard.end());
  }
  uint64_t size = 0;
  FilePtr f = open_regular(op, path, &size);
  BB_CHECK(size > 0, IOError, "{}: {}: file is empty", op, path);
  std::string text(static_cast<size_t>(size), '\0');
  read_exact(op, path, f.get(), text.data(), text.size());
  return ByteTokenizer().encode(text);
}

DataLoader::DataLoader(std::shared_ptr<const std::vector<int32_t>> tokens, int64_t batch, int64_t seq_len,
                       uint64_t seed, int rank, int world)
    : tokens_(std::move(tokens)), batch_(batch), seq_len_(seq_len) {
  BB_CHECK(tokens_ != nullptr, ValueError, "DataLoader: null token vector");
  BB_CHECK(batch >= 1 && seq_len >= 1, ValueError,
           "DataLoader: batch ({}) and seq_len ({}) must be at least 1", batch, seq_len);
  BB_CHECK(world >= 1 && rank >= 0 && rank < world, ValueError,
           "DataLoader: rank {} is outside world size {}", rank, world);
  const auto n = static_cast<int64_t>(tokens_->size());
  // 128-bit products would be exact, but n * world stays far below 2^63 for any
  // dataset that fits in memory.
  begin_ = n * rank / world;
  end_ = n * (rank + 1) / world;
  BB_CHECK(end_ - begin_ >= seq_len + 1, ValueError,
           "DataLoader: rank {} of {} has {} of the {} tokens, fewer than seq_len + 1 = {}", rank, world,
           end_ - begin_, n, seq_len + 1);
  // A separate Philox key per rank, so ranks draw independent start sequences.
  seed_ = splitmix64(seed ^ splitmix64(static_cast<uint64_t>(rank) + 1));
}

int64_t DataLoader::num_tokens() const { return static_cast<int64_t>(tokens_->size()); }

std::pair<Tensor, Tensor> DataLoader::next() {
  Tensor x = empty({batch_, seq_len_}, TensorOptions{DType::I64});  // [B, T]
  Tensor y = empty({batch_, seq_len_}, TensorOptions{DType::I64});  // [B, T]
  int64_t* px = x.data<int64_t>();
  int64_t* py = y.data<int64_t>();
  const int32_t* tok = tokens_->data();
  const auto starts = static_cast<uint64_t>(end_ - begin_ - seq_len_);  // windows of seq_len + 1 tokens
  for (int64_t b = 0; b < batch_; ++b) {
    // Counter = (batch index, row): batch k's windows never depend on how batches
    // before it were drawn, which is what makes set_state() exact.
    uint32_t r[4];
    Generator::philox(seed_, batches_ * static_cast<uint64_t>(batch_) + static_cast<uint64_t>(b), r);
    const uint64_t u = static_cast<uint64_t>(r[0]) << 32 | r[1];
    const int64_t s = begin_ + static_cast<int64_t>(u % starts);  // bias <= starts / 2^64
    for (int64_t t = 0; t < seq_len_; ++t) {
      px[b * seq_len_ + t] = tok[s + t];
      py[b * seq_len_ + t] = tok[s + t + 1];
    }
  }
  ++batches_;
  return {x, y};
}

}  // namespace barbell::io
