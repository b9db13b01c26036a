// Bad-input cases for the file readers and writers: safetensors headers built to crash or
// exhaust the reader, every field wrong, damaged bytes, bad save arguments, stale temp
// files, and token shards (issue 11, item 8).
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "bad_input.hpp"
#include "barbell/barbell.hpp"

namespace bb = barbell;
namespace io = barbell::io;
using bad_input::compute;
using bad_input::refuse;

namespace {

std::string tmp_path(const std::string& name) {
  std::string dir = bad_input::program("BARBELL_BAD_INPUT_TMP");
  if (dir.empty()) dir = "/tmp";
  dir += "/io";  // cases run one at a time
  std::filesystem::create_directories(dir);
  return dir + "/" + name;
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// A safetensors file from a raw header and body, padded as a writer would.
std::string st_file(std::string header, const std::string& body) {
  header.append((8 - header.size() % 8) % 8, ' ');
  return le64(header.size()) + header + body;
}

// load_safetensors must refuse these bytes with an IOError naming the file and `what`.
bad_input::Result load_refuses(const std::string& bytes, std::vector<std::string> what) {
  const std::string path = tmp_path("case.safetensors");
  write_bytes(path, bytes);
  what.push_back("load_safetensors");
  what.push_back(path);
  return refuse([&] { io::load_safetensors(path); }, what);
}

const std::string kEntry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
const std::string kBody(8, '\0');
const std::string kDeep = std::string(100000, '[') + std::string(100000, ']');

bad_input::Result shard_refuses(const std::string& bytes, std::vector<std::string> what) {
  const std::string path = tmp_path("case.bin");
  write_bytes(path, bytes);
  what.push_back(path);
  return refuse([&] { io::read_token_shard(path); }, what);
}

std::string le32(int32_t v) { return le64(static_cast<uint32_t>(v)).substr(0, 4); }
std::string shard_header(int32_t magic, int32_t version, int32_t count) {
  return le32(magic) + le32(version) + le32(count) + std::string(253 * 4, '\0');
}

}  // namespace

// ---- the header: bounds checked while parsing -----------------------------------------
BAD_INPUT_CASE("safetensors header", "a shape of 100,000 nested arrays (200 KB; SIGSEGV before)") {
  return load_refuses(st_file(R"({"a":{"dtype":"F32","shape":)" + kDeep + R"(,"data_offsets":[0,0]}})", ""),
                      {"nested deeper than 8"});
}
BAD_INPUT_CASE("safetensors header", "a header that is 100,000 nested arrays") {
  return load_refuses(st_file(kDeep, ""), {"nested deeper"});
}
BAD_INPUT_CASE("safetensors header", "100,000 nested objects in the metadata") {
  std::string deep;
  for (int i = 0; i < 100000; ++i) deep += R"({"k":)";
  deep += "1" + std::string(100000, '}');
  return load_refuses(st_file(R"({"__metadata__":)" + deep + "}", ""), {"nested deeper"});
}
BAD_INPUT_CASE("safetensors header", "the checksum metadata string nested 100,000 deep") {
  return load_refuses(
      st_file(R"({"__metadata__":{"barbell.crc32c":")" + kDeep + R"("},)" + kEntry + "}", kBody),
      {"barbell.crc32c", "nested deeper"});
}
BAD_INPUT_CASE("safetensors header", "a shape of 65 dimensions") {
  std::string dims = "[1";
  for (int i = 0; i < 64; ++i) dims += ",1";
  return load_refuses(
      st_file(R"({"a":{"dtype":"F32","shape":)" + dims + R"(],"data_offsets":[0,4]}})", std::string(4, '\0')),
      {"more than 64 elements"});
}
BAD_INPUT_CASE("safetensors header", "262,146 tensors (more than 2^18)") {
  std::string many = "{";
  for (int i = 0; i <= (1 << 18) + 1; ++i) many += fmt::format("{}\"t{}\":0", i ? "," : "", i);
  return load_refuses(st_file(many + "}", ""), {"more than 262145 keys"});
}
BAD_INPUT_CASE("safetensors header", "the same tensor name twice") {
  return load_refuses(st_file("{" + kEntry + "," + kEntry + "}", kBody), {"'a'", "appears twice"});
}
BAD_INPUT_CASE("safetensors header", "the key 'dtype' twice in one entry") {
  return load_refuses(
      st_file(R"({"a":{"dtype":"F32","dtype":"I32","shape":[2],"data_offsets":[0,8]}})", kBody),
      {"'dtype'", "appears twice"});
}
BAD_INPUT_CASE("safetensors header", "__metadata__ twice") {
  return load_refuses(st_file(R"({"__metadata__":{},"__metadata__":{}})", ""), {"__metadata__", "twice"});
}
BAD_INPUT_CASE("safetensors header", "an empty tensor name (save refuses one)") {
  return load_refuses(st_file(R"({"":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", kBody),
                      {"empty name"});
}
BAD_INPUT_CASE("safetensors header", "header length 2^40") {
  return load_refuses(le64(uint64_t{1} << 40) + "{}", {"header length", "limit"});
}
BAD_INPUT_CASE("safetensors header", "header length past the end of the file") {
  return load_refuses(le64(1000) + "{}", {"runs past the end"});
}
BAD_INPUT_CASE("safetensors header", "a 5-byte file") { return load_refuses("abcde", {"too short"}); }
BAD_INPUT_CASE("safetensors header", "invalid JSON") {
  return load_refuses(st_file("{\"a\":", ""), {"not valid JSON"});
}
BAD_INPUT_CASE("safetensors header", "invalid UTF-8 in a name") {
  return load_refuses(st_file("{\"\xff\xfe\":{}}", ""), {"not valid JSON"});
}
BAD_INPUT_CASE("safetensors header", "a JSON array, not an object") {
  return load_refuses(st_file("[1,2]", ""), {"not a JSON object"});
}
BAD_INPUT_CASE("safetensors header", "a metadata value that is a number") {
  return load_refuses(st_file(R"({"__metadata__":{"k":1}})", ""), {"metadata value for 'k'"});
}

// ---- the header: entries -----------------------------------------------------------------
#define ENTRY_CASE(what, entry, body, ...) \
  BAD_INPUT_CASE("safetensors entries", what) { return load_refuses(st_file(entry, body), {__VA_ARGS__}); }
ENTRY_CASE("an unknown dtype U8", R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})", kBody, "'U8'")
ENTRY_CASE("dtype a number", R"({"a":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})", kBody,
           "dtype is not a string")
ENTRY_CASE("a negative dimension", R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", kBody,
           "negative", "-2")
ENTRY_CASE("a dimension 2.5", R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", kBody,
           "not an integer")
ENTRY_CASE("a dimension 2^63", R"({"a":{"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,8]}})",
           kBody, "too large")
ENTRY_CASE("a shape whose byte count overflows 64 bits",
           R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", kBody, "too many")
ENTRY_CASE("data_offsets end before they begin", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})",
           kBody, "end before")
ENTRY_CASE("data_offsets past the buffer", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})",
           kBody, "run past")
ENTRY_CASE("data_offsets of three numbers", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}})",
           kBody, "data_offsets")
ENTRY_CASE("a size that disagrees with the shape",
           R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", kBody, "needs 16 bytes")
ENTRY_CASE("two tensors that overlap",
           "{" + kEntry + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", kBody, "overlap")
ENTRY_CASE("bytes that belong to no tensor", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
           kBody, "belong to no tensor")
ENTRY_CASE("trailing bytes", "{" + kEntry + "}", kBody + "x", "data buffer")
ENTRY_CASE("a BOOL byte 2", R"({"a":{"dtype":"BOOL","shape":[8],"data_offsets":[0,8]}})",
           std::string(7, '\0') + "\2", "BOOL byte 7")
ENTRY_CASE("an entry that is a string", R"({"a":"x"})", "", "entry is not an object")

// ---- checksums -------------------------------------------------------------------------------
BAD_INPUT_CASE("safetensors checksums", "one flipped bit in a tensor's bytes") {
  const std::string path = tmp_path("ck.safetensors");
  io::save_safetensors(path, {{"w", bb::arange(16, {bb::kF32})}, {"b", bb::zeros({3})}});
  std::string bytes = read_bytes(path);
  bytes[bytes.size() - 20] = static_cast<char>(bytes[bytes.size() - 20] ^ 1);
  return load_refuses(bytes, {"tensor 'w'", "damaged", "CRC-32C"});
}
BAD_INPUT_CASE("safetensors checksums", "a checksum that is not 8 hex digits") {
  return load_refuses(
      st_file(R"({"__metadata__":{"barbell.crc32c":"{\"a\":\"xyz\"}"},)" + kEntry + "}", kBody),
      {"'a'", "not 8 hex digits"});
}
BAD_INPUT_CASE("safetensors checksums", "a tensor without its checksum") {
  return load_refuses(st_file(R"({"__metadata__":{"barbell.crc32c":"{}"},)" + kEntry + "}", kBody),
                      {"tensor 'a' has no checksum"});
}
BAD_INPUT_CASE("safetensors checksums", "a checksum for a tensor the file lacks") {
  const std::string sum = fmt::format("{:08x}", io::crc32c(kBody.data(), 8));
  return load_refuses(st_file(R"({"__metadata__":{"barbell.crc32c":"{\"a\":\")" + sum +
                                  R"(\",\"zz\":\"00000000\"}"},)" + kEntry + "}",
                              kBody),
                      {"'zz'", "does not hold"});
}
BAD_INPUT_CASE("safetensors checksums",
               "a file of another writer (no checksums) loads, unverified, values right") {
  return compute([](std::string& d) {
    const std::string path = tmp_path("ref.safetensors");
    write_bytes(path, st_file(R"({"b":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})",
                              std::string("\x80\x3f\x00\x40", 4)));
    io::Safetensors f = io::load_safetensors(path);
    auto v = f.at("b").to_vector<float>();
    d = fmt::format("verified {}, b = [{}, {}]", f.checksums_verified, v[0], v[1]);
    return !f.checksums_verified && v == std::vector<float>{1.0f, 2.0f};
  });
}
BAD_INPUT_CASE("safetensors checksums", "save then load: verified, every dtype bit for bit") {
  return compute([](std::string& d) {
    const std::string path = tmp_path("rt.safetensors");
    io::TensorMap m = {{"f", bb::randn({3, 5})},
                       {"h", bb::randn({4}).to(bb::kF16)},
                       {"i", bb::arange(7)},
                       {"t", bb::randn({2, 3}, {bb::kF64}).t()}};
    io::save_safetensors(path, m, {{"k", "v"}});
    io::Safetensors f = io::load_safetensors(path);
    bool same = f.checksums_verified && f.metadata == std::map<std::string, std::string>{{"k", "v"}};
    for (auto& [n, t] : m) same = same && f.at(n).to_vector<double>() == t.to_vector<double>();
    d = fmt::format("verified {}, {} tensors", f.checksums_verified, f.tensors.size());
    return same;
  });
}

// ---- save arguments ----------------------------------------------------------------------
#define SAVE_CASE(what, tensors, meta, ...)                           \
  BAD_INPUT_CASE("safetensors save", what) {                          \
    const std::string path = tmp_path("save.safetensors");            \
    return refuse([&] { io::save_safetensors(path, tensors, meta); }, \
                  {"save_safetensors", path, __VA_ARGS__});           \
  }
SAVE_CASE("an empty name", (io::TensorMap{{"", bb::zeros({1})}}), {}, "empty tensor name")
SAVE_CASE("a name twice", (io::TensorMap{{"a", bb::zeros({1})}, {"a", bb::zeros({2})}}), {}, "duplicate",
          "'a'")
SAVE_CASE("the name __metadata__", (io::TensorMap{{"__metadata__", bb::zeros({1})}}), {}, "reserved")
SAVE_CASE("the metadata key barbell.crc32c", (io::TensorMap{{"a", bb::zeros({1})}}),
          (std::map<std::string, std::string>{{"barbell.crc32c", "x"}}), "reserved", "barbell.crc32c")
SAVE_CASE("an undefined tensor", (io::TensorMap{{"u", bb::Tensor()}}), {}, "'u' is undefined")
SAVE_CASE("a name that is not UTF-8", (io::TensorMap{{"\xff\xfe", bb::zeros({1})}}), {}, "UTF-8")
BAD_INPUT_CASE("safetensors save", "a directory that does not exist") {
  const std::string path = tmp_path("no/such/dir/x.safetensors");
  return refuse([&] { io::save_safetensors(path, {{"a", bb::zeros({1})}}); }, {"save_safetensors", path});
}
BAD_INPUT_CASE("safetensors save", "temp files of dead writers go, a live writer's stays") {
  return compute([](std::string& d) {
    const std::string path = tmp_path("stale.safetensors");
    const pid_t child = ::fork();
    if (child == 0) ::_exit(0);
    int status = 0;
    ::waitpid(child, &status, 0);
    const std::string dead = path + ".tmp." + std::to_string(static_cast<long long>(child));
    const std::string live = path + ".tmp." + std::to_string(static_cast<long long>(::getppid()));
    write_bytes(dead, "killed mid-write");
    write_bytes(live, "still writing");
    io::save_safetensors(path, {{"a", bb::zeros({2})}});
    const bool dead_gone = !std::filesystem::exists(dead), live_kept = std::filesystem::exists(live);
    std::filesystem::remove(live);
    d = fmt::format("dead writer's file removed: {}, live writer's kept: {}", dead_gone, live_kept);
    return dead_gone && live_kept;
  });
}
BAD_INPUT_CASE("safetensors files", "a path that is a directory") {
  const std::string dir = tmp_path("adir");
  std::filesystem::create_directories(dir);
  return refuse([&] { io::load_safetensors(dir); }, {dir, "not a regular file"});
}
BAD_INPUT_CASE("safetensors files", "a file that does not exist") {
  const std::string path = tmp_path("missing.safetensors");
  return refuse([&] { io::load_safetensors(path); }, {path, "cannot open"});
}
BAD_INPUT_CASE("safetensors files", "every truncation of a good file") {
  // One case over all lengths: each must be an IOError naming the file.
  const std::string path = tmp_path("trunc.safetensors");
  io::save_safetensors(path, {{"x", bb::randn({3, 4})}}, {{"k", "v"}});
  const std::string good = read_bytes(path);
  for (size_t len = 0; len + 1 < good.size(); ++len) {
    write_bytes(path, good.substr(0, len));
    bad_input::Result r = refuse([&] { io::load_safetensors(path); }, {path});
    if (r.outcome != bad_input::Outcome::Refused) {
      r.detail = fmt::format("truncated to {} bytes: {}", len, r.detail);
      return r;
    }
  }
  return {bad_input::Outcome::Refused, fmt::format("{} truncations refused", good.size() - 1)};
}

// ---- token shards ----------------------------------------------------------------------------
BAD_INPUT_CASE("token shards", "a wrong magic number") {
  return shard_refuses(shard_header(12345, 1, 0), {"read_token_shard", "magic", "12345"});
}
BAD_INPUT_CASE("token shards", "version 2") {
  return shard_refuses(shard_header(20240520, 2, 0), {"version", "2"});
}
BAD_INPUT_CASE("token shards", "a negative count") {
  return shard_refuses(shard_header(20240520, 1, -5), {"negative token count", "-5"});
}
BAD_INPUT_CASE("token shards", "a body shorter than the count") {
  return shard_refuses(shard_header(20240520, 1, 10) + std::string(6, '\0'), {"10 tokens", "truncated"});
}
BAD_INPUT_CASE("token shards", "a body longer than the count") {
  return shard_refuses(shard_header(20240520, 1, 1) + std::string(6, '\0'), {"trailing data"});
}
BAD_INPUT_CASE("token shards", "a header of 100 bytes") {
  return shard_refuses(std::string(100, '\0'), {"shorter than the 1024-byte header"});
}
BAD_INPUT_CASE("token shards", "count INT32_MAX with 4 tokens") {
  return shard_refuses(shard_header(20240520, 1, INT32_MAX) + std::string(8, '\0'),
                       {"2147483647", "truncated"});
}
BAD_INPUT_CASE("token shards", "load_tokens of an empty shard") {
  const std::string path = tmp_path("empty.bin");
  io::write_token_shard(path, {});
  return refuse([&] { io::load_tokens(path); }, {"load_tokens", path, "no tokens"});
}
BAD_INPUT_CASE("token shards", "write then read: the same tokens") {
  return compute([](std::string& d) {
    const std::string path = tmp_path("rt.bin");
    const std::vector<uint16_t> t = {0, 1, 65535, 50256, 7};
    io::write_token_shard(path, t);
    const bool same = io::read_token_shard(path) == t && io::load_tokens(path).size() == t.size();
    d = fmt::format("{} tokens", t.size());
    return same;
  });
}
