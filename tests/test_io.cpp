// Tests of barbell::io: safetensors (round trips, the exact bytes, every corruption the
// loader must catch, atomic saves), the byte tokenizer, token shards and DataLoader.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>

#include "testing.hpp"

namespace bb = barbell;
namespace io = barbell::io;
namespace fs = std::filesystem;
using Catch::Contains;

namespace {

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE(f.good());
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(f.good());
}

// A fresh, empty directory under the test tmp dir, so temp-file checks see only our files.
std::string fresh_dir(const std::string& name) {
  std::string dir = bbtest::tmp_path(name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::vector<std::string> dir_entries(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

std::string le32(int32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; ++i) s[i] = static_cast<char>((static_cast<uint32_t>(v) >> (8 * i)) & 0xff);
  return s;
}

// A safetensors file from a raw header text and body, no checks: for corruption tests.
std::string st_file(const std::string& header, const std::string& body) {
  return le64(header.size()) + header + body;
}

// The bytes of a CPU tensor in row-major order: exact comparison for every dtype.
std::string tensor_bytes(const bb::Tensor& t) {
  bb::Tensor c = t.contiguous().to(bb::Device::cpu()).contiguous();
  const char* p = static_cast<const char*>(c.data_ptr());
  return std::string(p, p + c.nbytes());
}

bb::Tensor make_tensor(bb::DType dtype, const bb::Shape& shape, uint64_t seed) {
  bb::Generator gen(seed);
  std::vector<double> v(static_cast<size_t>(bb::shape_numel(shape)));
  for (auto& x : v) {
    double u = gen.next_double();
    if (dtype == bb::kBool)
      x = u < 0.5 ? 0 : 1;
    else if (bb::is_integral(dtype))
      x = std::floor((u - 0.5) * 2e6);
    else
      x = (u - 0.5) * 8;
  }
  return bb::from_vector<double>(v, shape, {dtype});
}

void require_same(const bb::Tensor& got, const bb::Tensor& want) {
  REQUIRE(got.dtype() == want.dtype());
  REQUIRE(got.shape() == want.shape());
  REQUIRE(got.is_cpu());
  REQUIRE(tensor_bytes(got) == tensor_bytes(want));
}

const std::vector<bb::DType> kAllDTypes = {bb::kF32, bb::kF64, bb::kBF16, bb::kF16,
                                           bb::kI32, bb::kI64, bb::kBool};

// One valid tensor entry for hand-made headers.
const std::string kGoodEntry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";

}  // namespace

TEST_CASE("io: safetensors round trip of every dtype, views and metadata", "[io]") {
  io::TensorMap map;
  uint64_t seed = 1;
  for (bb::DType dt : kAllDTypes) {
    std::string n = bb::dtype_name(dt);
    map.emplace_back(n + ".plain", make_tensor(dt, {3, 5}, seed++));
    map.emplace_back(n + ".transposed", make_tensor(dt, {4, 6}, seed++).t());
    map.emplace_back(n + ".narrowed", make_tensor(dt, {5, 7}, seed++).narrow(1, 2, 3));
    map.emplace_back(n + ".selected", make_tensor(dt, {3, 4, 2}, seed++).select(2, 1));
    map.emplace_back(n + ".expanded", make_tensor(dt, {1, 3}, seed++).expand({4, 3}));
    map.emplace_back(n + ".scalar", make_tensor(dt, {}, seed++));
    map.emplace_back(n + ".empty", make_tensor(dt, {0, 3}, seed++));
  }
  REQUIRE_FALSE(map[1].second.is_contiguous());
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"step", "1200"}, {"note", "ünïcode ✓"}};
  std::string path = bbtest::tmp_path("io_roundtrip.safetensors");
  io::save_safetensors(path, map, meta);

  io::Safetensors st = io::load_safetensors(path);
  REQUIRE(st.path == path);
  REQUIRE(st.metadata == meta);
  REQUIRE(st.tensors.size() == map.size());
  for (size_t i = 0; i < map.size(); ++i) {
    INFO(map[i].first);
    REQUIRE(st.tensors[i].first == map[i].first);  // the order survives
    require_same(st.tensors[i].second, map[i].second);
    require_same(st.at(map[i].first), map[i].second);
    REQUIRE(st.tensors[i].second.is_contiguous());
  }
  REQUIRE(st.contains(std::string(bb::dtype_name(bb::kF32)) + ".plain"));
  REQUIRE_FALSE(st.contains("nope"));
  REQUIRE_THROWS_AS(st.at("nope"), bb::IOError);
  REQUIRE_THROWS_WITH(st.at("nope"), Contains(path) && Contains("nope"));

  // No metadata and no tensors are both valid files.
  io::save_safetensors(path, {});
  io::Safetensors empty = io::load_safetensors(path);
  REQUIRE(empty.tensors.empty());
  REQUIRE(empty.metadata.empty());

  if (bb::cuda::is_available()) {
    bb::Tensor x = make_tensor(bb::kF32, {8, 4}, 99);
    io::save_safetensors(path, {{"x", x.to(bb::Device::cuda(0))}});
    require_same(io::load_safetensors(path).at("x"), x);
  }
}

TEST_CASE("io: safetensors writes the exact Hugging Face byte layout", "[io]") {
  io::TensorMap map = {
      {"w", bb::from_vector<float>({1.0f, -2.0f}, {2})},
      {"i", bb::from_vector<int64_t>({7}, {1})},
      {"h", bb::zeros({0, 3}, {bb::kF16})},
      {"b", bb::from_vector<bool>({true, false, true}, {3})},
  };
  std::string path = bbtest::tmp_path("io_exact.safetensors");
  io::save_safetensors(path, map, {{"format", "pt"}});

  // Header in the caller's order; data widest dtype first (i, w, h, b) so each tensor
  // is aligned to its element size; each tensor's CRC-32C (of its bytes in the file) in the
  // metadata after the caller's keys; header padded with spaces to 8 bytes.
  const std::string i_bytes("\x07\x00\x00\x00\x00\x00\x00\x00", 8);  // i = 7
  const std::string w_bytes =
      std::string("\x00\x00\x80\x3f", 4) + std::string("\x00\x00\x00\xc0", 4);  // 1, -2
  const std::string b_bytes("\x01\x00\x01", 3);
  auto crc = [](const std::string& b) { return fmt::format("{:08x}", io::crc32c(b.data(), b.size())); };
  REQUIRE(crc("") == "00000000");
  // (The metadata's keys come sorted.)
  std::string header = R"({"__metadata__":{"barbell.crc32c":"{\"w\":\")" + crc(w_bytes) + R"(\",\"i\":\")" +
                       crc(i_bytes) + R"(\",\"h\":\"00000000\",\"b\":\")" + crc(b_bytes) +
                       R"(\"}","format":"pt"},)"
                       R"("w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
                       R"("i":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
                       R"("h":{"dtype":"F16","shape":[0,3],"data_offsets":[16,16]},)"
                       R"("b":{"dtype":"BOOL","shape":[3],"data_offsets":[16,19]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string expected = le64(header.size()) + header + i_bytes + w_bytes + b_bytes;
  REQUIRE(read_bytes(path) == expected);

  // Files written by other writers (this one in the reference writer's own layout,
  // header in offset order, tensors covering the buffer) load too.
  std::string ref =
      R"({"b":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},"a":{"dtype":"I32","shape":[1],)"
      R"("data_offsets":[4,8]}})";
  write_bytes(path, st_file(ref, std::string("\x80\x3f\x00\x40", 4) + std::string("\xff\xff\xff\xff", 4)));
  io::Safetensors st = io::load_safetensors(path);
  REQUIRE_FALSE(st.checksums_verified);  // another writer's file: no checksums
  REQUIRE(st.tensors[0].first == "b");
  REQUIRE(st.at("b").to_vector<float>() == std::vector<float>{1.0f, 2.0f});
  REQUIRE(st.at("a").to_vector<int32_t>() == std::vector<int32_t>{-1});
}

TEST_CASE("io: safetensors load rejects every kind of corrupt file", "[io]") {
  std::string path = bbtest::tmp_path("io_corrupt.safetensors");
  auto expect_error = [&](const std::string& bytes, const std::string& what) {
    write_bytes(path, bytes);
    INFO("expected error: " << what);
    REQUIRE_THROWS_AS(io::load_safetensors(path), bb::IOError);
    REQUIRE_THROWS_WITH(io::load_safetensors(path), Contains(path) && Contains(what));
  };

  SECTION("truncated at every length") {
    io::save_safetensors(
        path, {{"x", make_tensor(bb::kF32, {3, 4}, 5)}, {"y", make_tensor(bb::kI64, {2}, 6)}}, {{"k", "v"}});
    const std::string good = read_bytes(path);
    REQUIRE_NOTHROW(io::load_safetensors(path));
    for (size_t len = 0; len < good.size(); ++len) {
      INFO("truncated to " << len << " of " << good.size() << " bytes");
      write_bytes(path, good.substr(0, len));
      REQUIRE_THROWS_WITH(io::load_safetensors(path), Contains("load_safetensors") && Contains(path));
    }
    expect_error(good + "x", "data buffer");  // a trailing byte
  }
  SECTION("flipped header bytes") {
    io::save_safetensors(path, {{"x", make_tensor(bb::kF32, {3, 4}, 5)}});
    const std::string good = read_bytes(path);
    const uint64_t n = static_cast<unsigned char>(good[0]) | static_cast<unsigned char>(good[1]) << 8;
    // A flip in the checksum key's name makes it plain metadata: the file then loads as
    // one without checksums, and says so.
    const size_t key_at = good.find(io::kChecksumMetadataKey);
    REQUIRE(key_at != std::string::npos);
    const size_t key_end = key_at + std::string(io::kChecksumMetadataKey).size();
    int rejected = 0, unverified = 0;
    for (size_t pos = 0; pos < 8 + n; ++pos) {
      std::string bad = good;
      bad[pos] = static_cast<char>(bad[pos] ^ 0x5a);
      write_bytes(path, bad);
      try {
        io::Safetensors f = io::load_safetensors(path);
        INFO("flip at " << pos << " loaded");
        REQUIRE((pos >= key_at && pos < key_end));
        REQUIRE_FALSE(f.checksums_verified);
        ++unverified;
      } catch (const bb::IOError& e) {
        REQUIRE_THAT(e.what(), Contains(path));
        ++rejected;
      }
    }
    // With this mask every other flip breaks the JSON, a key, a number, a checksum or the
    // length ('x' becomes '"', a space 'z'), and any other exception type fails the test.
    REQUIRE(rejected + unverified == static_cast<int>(8 + n));
    REQUIRE(unverified <= static_cast<int>(key_end - key_at));
  }
  SECTION("flipped data bytes: the checksum names the damaged tensor") {
    io::save_safetensors(path,
                         {{"x", make_tensor(bb::kF32, {3, 4}, 5)}, {"y", make_tensor(bb::kI64, {2}, 6)}});
    const std::string good = read_bytes(path);
    REQUIRE(io::load_safetensors(path).checksums_verified);
    const uint64_t n = static_cast<unsigned char>(good[0]) | static_cast<unsigned char>(good[1]) << 8;
    // y (I64, 16 bytes) is laid out first, then x.
    for (size_t pos = 8 + n; pos < good.size(); ++pos) {
      std::string bad = good;
      bad[pos] = static_cast<char>(bad[pos] ^ 0x01);
      INFO("flip at " << pos);
      expect_error(
          bad, pos < 8 + n + 16 ? "tensor 'y': its bytes are damaged" : "tensor 'x': its bytes are damaged");
    }
  }
  SECTION("checksum metadata") {
    const std::string body(8, '\0');
    const std::string sum = fmt::format("{:08x}", io::crc32c(body.data(), 8));
    auto with_sums = [&](const std::string& sums) {
      std::string q;
      for (char c : sums) q += c == '"' ? std::string("\\\"") : std::string(1, c);
      return st_file(R"({"__metadata__":{"barbell.crc32c":")" + q + R"("},)" + kGoodEntry + "}", body);
    };
    write_bytes(path, with_sums(R"({"a":")" + sum + R"("})"));
    io::Safetensors ok = io::load_safetensors(path);
    REQUIRE(ok.checksums_verified);
    REQUIRE(ok.metadata.empty());  // the checksums are not handed back as metadata
    expect_error(with_sums(R"({"a":"00000001"})"), "its bytes are damaged");
    expect_error(with_sums(R"({"a":"xyz"})"), "not 8 hex digits");
    expect_error(with_sums(R"({"a":7})"), "not 8 hex digits");
    expect_error(with_sums(R"({})"), "tensor 'a' has no checksum");
    expect_error(with_sums(R"({"a":")" + sum + R"(","b":"00000000"})"), "a tensor the file does not hold");
    expect_error(with_sums(R"({"a":")" + sum + R"(","a":"00000000"})"), "appears twice");
    expect_error(with_sums("[1]"), "not a JSON object");
    expect_error(with_sums("{"), "not valid JSON");
    expect_error(with_sums(std::string(100000, '[') + std::string(100000, ']')), "nested deeper");
  }
  SECTION("bounds checked while parsing: depth, dimensions, tensors, duplicates, empty names") {
    const std::string body(8, '\0');
    // The header of ~100,000 nested arrays that overflowed the stack (issue 11).
    const std::string deep = std::string(100000, '[') + std::string(100000, ']');
    expect_error(st_file(R"({"a":{"dtype":"F32","shape":)" + deep + R"(,"data_offsets":[0,0]}})", ""),
                 "nested deeper than 8 levels");
    expect_error(st_file(deep, ""), "nested deeper");
    expect_error(st_file(R"({"__metadata__":{"k":)" + deep + "}}", ""), "nested deeper");
    std::string dims65 = "[1";
    for (int i = 0; i < 64; ++i) dims65 += ",1";
    expect_error(st_file(R"({"a":{"dtype":"F32","shape":)" + dims65 + R"(],"data_offsets":[0,4]}})",
                         std::string(4, '\0')),
                 "more than 64 elements");
    std::string many = "{";
    for (int i = 0; i <= (1 << 18) + 1; ++i) many += fmt::format("{}\"t{}\":0", i ? "," : "", i);
    expect_error(st_file(many + "}", ""), "more than 262145 keys");
    expect_error(st_file("{" + kGoodEntry + "," + kGoodEntry + "}", body), "the key 'a' appears twice");
    expect_error(st_file(R"({"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", body),
                 "the key 'dtype' appears twice");
    expect_error(st_file(R"({"":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", body), "empty name");
    // Exactly 64 dimensions load.
    std::string dims64 = "[1";
    for (int i = 0; i < 63; ++i) dims64 += ",1";
    write_bytes(path, st_file(R"({"a":{"dtype":"F32","shape":)" + dims64 + R"(],"data_offsets":[0,4]}})",
                              std::string(4, '\0')));
    REQUIRE(io::load_safetensors(path).at("a").dim() == 64);
  }
  SECTION("header length") {
    expect_error("1234567", "too short");
    expect_error(le64(1000) + "{}", "runs past the end");
    expect_error(le64(uint64_t{1} << 40) + "{}", "limit");
    expect_error(le64(~uint64_t{0}) + "{}", "limit");
  }
  SECTION("header JSON") {
    expect_error(st_file("{\"a\":", ""), "not valid JSON");
    expect_error(st_file("", ""), "not valid JSON");
    expect_error(st_file("[1, 2]", ""), "not a JSON object");
    expect_error(st_file("\"hi\"", ""), "not a JSON object");
    expect_error(st_file(R"({"a": 3})", ""), "entry is not an object");
    expect_error(st_file(R"({"__metadata__": [1]})", ""), "__metadata__");
    expect_error(st_file(R"({"__metadata__": {"k": 1}})", ""), "metadata value for 'k'");
  }
  SECTION("entry fields") {
    const std::string body(8, '\0');
    expect_error(st_file(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", body), "missing dtype");
    expect_error(st_file(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", body), "missing shape");
    expect_error(st_file(R"({"a":{"dtype":"F32","shape":[2]}})", body), "missing data_offsets");
    expect_error(st_file(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})", body), "dtype 'U8'");
    expect_error(st_file(R"({"a":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})", body),
                 "dtype is not a string");
    expect_error(st_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", body), "negative");
    expect_error(st_file(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", body),
                 "not an integer");
    expect_error(st_file(R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", body), "not an array");
    expect_error(st_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", body), "data_offsets");
    expect_error(st_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-1,7]}})", body), "data_offsets");
  }
  SECTION("offsets and sizes") {
    const std::string body(8, '\0');
    expect_error(st_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", body), "end before");
    expect_error(st_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", body), "run past");
    expect_error(st_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", body), "run past");
    // Wrong dtype size: 2 F64 need 16 bytes, not 8.
    expect_error(st_file(R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", body),
                 "needs 16 bytes");
    expect_error(st_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", body),
                 "needs 12 bytes");
    // A shape whose byte count overflows 64 bits.
    expect_error(
        st_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", body),
        "too many");
    expect_error(
        st_file("{" + kGoodEntry + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", body),
        "overlap");
    expect_error(st_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", body),
                 "belong to no tensor");
    expect_error(st_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", body), "data buffer");
    expect_error(
        st_file(R"({"a":{"dtype":"BOOL","shape":[8],"data_offsets":[0,8]}})", std::string(7, '\0') + "\2"),
        "BOOL byte 7");
    // Sanity: the same entry with matching sizes loads.
    write_bytes(path, st_file("{" + kGoodEntry + "}", body));
    REQUIRE(io::load_safetensors(path).at("a").to_vector<float>() == std::vector<float>{0.0f, 0.0f});
  }
  SECTION("missing file or not a file") {
    std::string missing = bbtest::tmp_path("io_no_such_file.safetensors");
    std::remove(missing.c_str());
    REQUIRE_THROWS_AS(io::load_safetensors(missing), bb::IOError);
    REQUIRE_THROWS_WITH(io::load_safetensors(missing), Contains(missing) && Contains("cannot open"));
    std::string dir = fresh_dir("io_a_directory");
    REQUIRE_THROWS_WITH(io::load_safetensors(dir), Contains(dir) && Contains("not a regular file"));
  }
}

TEST_CASE("io: safetensors save is atomic and validates its arguments", "[io]") {
  std::string dir = fresh_dir("io_atomic");
  std::string path = dir + "/model.safetensors";
  bb::Tensor a = make_tensor(bb::kF32, {4, 4}, 11);
  io::save_safetensors(path, {{"a", a}});
  const std::string good = read_bytes(path);

  SECTION("a failed save leaves the previous file intact and no temp file") {
    bb::Tensor b = make_tensor(bb::kF32, {2}, 12);
    REQUIRE_THROWS_AS(io::save_safetensors(path, {{"b", b}, {"c", b}, {"b", b}}), bb::ValueError);
    REQUIRE_THROWS_WITH(io::save_safetensors(path, {{"b", b}, {"b", b}}),
                        Contains(path) && Contains("duplicate tensor name 'b'"));
    REQUIRE_THROWS_WITH(io::save_safetensors(path, {{"", b}}), Contains("empty tensor name"));
    REQUIRE_THROWS_WITH(io::save_safetensors(path, {{"__metadata__", b}}), Contains("reserved"));
    REQUIRE_THROWS_WITH(io::save_safetensors(path, {{"u", bb::Tensor()}}), Contains("'u' is undefined"));
    REQUIRE_THROWS_WITH(io::save_safetensors(path, {{std::string("\xff\xfe"), b}}), Contains("UTF-8"));
    REQUIRE_THROWS_WITH(io::save_safetensors(path, {{"b", b}}, {{io::kChecksumMetadataKey, "x"}}),
                        Contains("reserved") && Contains(io::kChecksumMetadataKey));
    REQUIRE(read_bytes(path) == good);
    REQUIRE(dir_entries(dir) == std::vector<std::string>{"model.safetensors"});
  }
  SECTION("a save that fails after writing the temp file removes it") {
    // The target is a directory: the temp file is written and synced, then the rename
    // over the directory fails.
    std::string target = dir + "/occupied";
    fs::create_directories(target);
    REQUIRE_THROWS_AS(io::save_safetensors(target, {{"a", a}}), bb::IOError);
    REQUIRE_THROWS_WITH(io::save_safetensors(target, {{"a", a}}), Contains(target) && Contains("rename"));
    REQUIRE(dir_entries(dir) == std::vector<std::string>{"model.safetensors", "occupied"});
    REQUIRE(fs::is_directory(target));
  }
  SECTION("a stale temp file from a crashed writer is replaced") {
    std::string stale = path + ".tmp." + std::to_string(static_cast<long long>(::getpid()));
    write_bytes(stale, "garbage from an interrupted write");
    REQUIRE(io::load_safetensors(path).at("a").numel() == 16);  // the good file is untouched
    bb::Tensor c = make_tensor(bb::kBF16, {3}, 13);
    io::save_safetensors(path, {{"c", c}});
    require_same(io::load_safetensors(path).at("c"), c);
    REQUIRE(dir_entries(dir) == std::vector<std::string>{"model.safetensors"});
  }
  SECTION("temp files of killed writers are removed by the next save, a live writer's are not") {
    // A pid that is surely dead: a child that has exited and been reaped.
    const pid_t child = ::fork();
    if (child == 0) ::_exit(0);
    REQUIRE(child > 0);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    const std::string dead = path + ".tmp." + std::to_string(static_cast<long long>(child));
    const std::string live = path + ".tmp." + std::to_string(static_cast<long long>(::getppid()));
    const std::string other = dir + "/other.safetensors.tmp." + std::to_string(static_cast<long long>(child));
    const std::string odd = path + ".tmp.notapid";
    for (const auto& f : {dead, live, other, odd}) write_bytes(f, "an interrupted write");
    io::save_safetensors(path, {{"a", a}});
    REQUIRE_FALSE(fs::exists(dead));
    REQUIRE(fs::exists(live));   // its writer may still be writing
    REQUIRE(fs::exists(other));  // another file's temp files are that file's saves' business
    REQUIRE(fs::exists(odd));
    for (const auto& f : {live, other, odd}) fs::remove(f);
  }
  SECTION("a missing directory is an IOError naming the path") {
    std::string bad = dir + "/no/such/dir/model.safetensors";
    REQUIRE_THROWS_AS(io::save_safetensors(bad, {{"a", a}}), bb::IOError);
    REQUIRE_THROWS_WITH(io::save_safetensors(bad, {{"a", a}}), Contains(bad) && Contains("save_safetensors"));
    REQUIRE(read_bytes(path) == good);
  }
}

TEST_CASE("io: CRC-32C", "[io]") {
  const std::string check = "123456789";
  REQUIRE(io::crc32c(check.data(), check.size()) == 0xE3069283u);  // the standard check value
  REQUIRE(io::detail::crc32c_portable(check.data(), check.size()) == 0xE3069283u);
  REQUIRE(io::crc32c(nullptr, 0) == 0u);
  const std::string zeros(32, '\0');
  REQUIRE(io::crc32c(zeros.data(), zeros.size()) == 0x8A9136AAu);  // RFC 3720's 32 zero bytes
  // Both paths agree on every length and alignment, and chaining equals one pass.
  std::string data(1000, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 131 + 7) & 0xff);
  for (size_t off : {0, 1, 3, 7})
    for (size_t len : {0, 1, 7, 8, 9, 63, 64, 65, 500, 993}) {
      INFO("offset " << off << " length " << len);
      const uint32_t c = io::crc32c(data.data() + off, len);
      REQUIRE(c == io::detail::crc32c_portable(data.data() + off, len));
      REQUIRE(c ==
              io::crc32c(data.data() + off + len / 2, len - len / 2, io::crc32c(data.data() + off, len / 2)));
    }
}

TEST_CASE("io: byte tokenizer round trip and bad ids", "[io]") {
  io::ByteTokenizer tok;
  REQUIRE(tok.vocab_size() == 256);
  std::string text = "Hello, wörld! \n\t";
  text.push_back('\0');
  text.push_back('\xff');
  std::vector<int32_t> ids = tok.encode(text);
  REQUIRE(ids.size() == text.size());
  REQUIRE(ids[0] == 'H');
  REQUIRE(ids[ids.size() - 2] == 0);
  REQUIRE(ids.back() == 255);
  for (int32_t id : ids) REQUIRE((id >= 0 && id < 256));
  REQUIRE(tok.decode(ids) == text);
  REQUIRE(tok.encode("").empty());
  REQUIRE(tok.decode({}).empty());

  REQUIRE_THROWS_AS(tok.decode({72, 256}), bb::IndexError);
  REQUIRE_THROWS_WITH(tok.decode({72, 105, 256}),
                      Contains("ByteTokenizer::decode") && Contains("id 256") && Contains("position 2"));
  REQUIRE_THROWS_WITH(tok.decode({-1}), Contains("id -1") && Contains("position 0"));
}

TEST_CASE("io: token shards round trip and reject bad files", "[io]") {
  std::string path = bbtest::tmp_path("io_tokens.bin");
  std::vector<uint16_t> tokens = {0, 1, 50256, 65535, 42, 7};
  io::write_token_shard(path, tokens);
  REQUIRE(io::read_token_shard(path) == tokens);

  // The llm.c layout: 256 little-endian int32, then uint16 tokens.
  const std::string bytes = read_bytes(path);
  REQUIRE(bytes.size() == 1024 + 2 * tokens.size());
  REQUIRE(bytes.substr(0, 12) == le32(20240520) + le32(1) + le32(6));
  REQUIRE(bytes.substr(12, 1012) == std::string(1012, '\0'));
  REQUIRE(bytes.substr(1024 + 4, 6) == std::string("\x50\xc4\xff\xff\x2a\x00", 6));

  io::write_token_shard(path, {});
  REQUIRE(io::read_token_shard(path).empty());

  auto header = [](int32_t magic, int32_t version, int32_t count) {
    return le32(magic) + le32(version) + le32(count) + std::string(1012, '\0');
  };
  auto expect_error = [&](const std::string& file_bytes, const std::string& what) {
    write_bytes(path, file_bytes);
    INFO("expected error: " << what);
    REQUIRE_THROWS_AS(io::read_token_shard(path), bb::IOError);
    REQUIRE_THROWS_WITH(io::read_token_shard(path), Contains(path) && Contains(what));
  };
  expect_error(header(123, 1, 2) + "abcd", "expected 20240520, found 123");
  expect_error(header(20240520, 2, 2) + "abcd", "expected 1, found 2");
  expect_error(header(20240520, 1, 3) + "abcd", "truncated");
  expect_error(header(20240520, 1, 1) + "abcd", "trailing data");
  expect_error(header(20240520, 1, -5), "negative token count");
  expect_error(header(20240520, 1, 2).substr(0, 500), "shorter than the 1024-byte header");
  expect_error("", "shorter than the 1024-byte header");

  std::string missing = bbtest::tmp_path("io_no_such_shard.bin");
  std::remove(missing.c_str());
  REQUIRE_THROWS_WITH(io::read_token_shard(missing), Contains(missing) && Contains("read_token_shard"));
}

TEST_CASE("io: load_tokens reads shards and text files", "[io]") {
  std::string bin = bbtest::tmp_path("io_load.bin");
  io::write_token_shard(bin, {5, 60000, 9});
  REQUIRE(io::load_tokens(bin) == std::vector<int32_t>{5, 60000, 9});

  std::string txt = bbtest::tmp_path("io_load.txt");
  write_bytes(txt, "ab\xff");
  REQUIRE(io::load_tokens(txt) == std::vector<int32_t>{'a', 'b', 255});

  write_bytes(txt, "");
  REQUIRE_THROWS_AS(io::load_tokens(txt), bb::IOError);
  REQUIRE_THROWS_WITH(io::load_tokens(txt), Contains(txt) && Contains("empty"));
  io::write_token_shard(bin, {});
  REQUIRE_THROWS_WITH(io::load_tokens(bin), Contains(bin) && Contains("no tokens"));
  std::string missing = bbtest::tmp_path("io_no_such_text.txt");
  std::remove(missing.c_str());
  REQUIRE_THROWS_WITH(io::load_tokens(missing), Contains(missing) && Contains("cannot open"));
}

TEST_CASE("io: DataLoader batches, determinism, resume and rank slices", "[io]") {
  // Token i has value i, so a window shows where it came from.
  auto tokens = std::make_shared<std::vector<int32_t>>(1000);
  for (int32_t i = 0; i < 1000; ++i) (*tokens)[i] = i;
  const int64_t B = 4, T = 16;

  SECTION("shapes and y = x shifted by one") {
    io::DataLoader dl(tokens, B, T, 42);
    REQUIRE(dl.num_tokens() == 1000);
    REQUIRE(dl.slice_begin() == 0);
    REQUIRE(dl.slice_end() == 1000);
    for (int k = 0; k < 20; ++k) {
      auto [x, y] = dl.next();
      REQUIRE(x.shape() == bb::Shape{B, T});
      REQUIRE(y.shape() == bb::Shape{B, T});
      REQUIRE(x.dtype() == bb::kI64);
      REQUIRE(y.dtype() == bb::kI64);
      REQUIRE(x.is_cpu());
      auto vx = x.to_vector<int64_t>(), vy = y.to_vector<int64_t>();
      for (int64_t b = 0; b < B; ++b) {
        REQUIRE(vx[b * T] >= 0);
        REQUIRE(vx[b * T] + T < 1000);
        for (int64_t t = 0; t < T; ++t) {
          REQUIRE(vx[b * T + t] == vx[b * T] + t);  // a contiguous window
          REQUIRE(vy[b * T + t] == vx[b * T + t] + 1);
        }
      }
    }
    REQUIRE(dl.state() == 20);
  }
  SECTION("a seed gives one sequence; state() resumes it exactly") {
    io::DataLoader a(tokens, B, T, 7), b(tokens, B, T, 7), c(tokens, B, T, 8);
    std::vector<std::vector<int64_t>> seq;
    bool differs = false;
    for (int k = 0; k < 10; ++k) {
      auto xa = a.next().first.to_vector<int64_t>();
      REQUIRE(xa == b.next().first.to_vector<int64_t>());
      differs = differs || xa != c.next().first.to_vector<int64_t>();
      seq.push_back(xa);
    }
    REQUIRE(differs);
    // Starts vary within a run too.
    REQUIRE(seq[0] != seq[1]);

    io::DataLoader resumed(tokens, B, T, 7);
    resumed.set_state(6);
    for (int k = 6; k < 10; ++k) REQUIRE(resumed.next().first.to_vector<int64_t>() == seq[k]);
    uint64_t s = a.state();
    auto [x1, y1] = a.next();
    auto [x2, y2] = a.next();
    a.set_state(s);
    REQUIRE(a.next().first.to_vector<int64_t>() == x1.to_vector<int64_t>());
    REQUIRE(a.next().second.to_vector<int64_t>() == y2.to_vector<int64_t>());
  }
  SECTION("ranks draw from disjoint slices") {
    const int world = 3;
    std::vector<std::set<int64_t>> seen(world);
    int64_t covered = 0;
    for (int r = 0; r < world; ++r) {
      io::DataLoader dl(tokens, B, T, 1234, r, world);
      REQUIRE(dl.slice_begin() == covered);
      covered = dl.slice_end();
      for (int k = 0; k < 50; ++k) {
        auto [x, y] = dl.next();
        for (int64_t v : x.to_vector<int64_t>()) {
          REQUIRE(v >= dl.slice_begin());
          seen[r].insert(v);
        }
        for (int64_t v : y.to_vector<int64_t>()) {
          REQUIRE(v < dl.slice_end());
          seen[r].insert(v);
        }
      }
      REQUIRE(seen[r].size() > 100);  // the rank really samples across its slice
    }
    REQUIRE(covered == 1000);
    for (int r = 0; r < world; ++r) {
      for (int q = r + 1; q < world; ++q) {
        for (int64_t v : seen[r]) REQUIRE(seen[q].count(v) == 0);
      }
    }
  }
  SECTION("too little data and bad arguments") {
    auto few = std::make_shared<std::vector<int32_t>>(16, 1);
    REQUIRE_THROWS_AS(io::DataLoader(few, 1, 16, 0), bb::ValueError);
    REQUIRE_THROWS_WITH(io::DataLoader(few, 1, 16, 0),
                        Contains("DataLoader") && Contains("16") && Contains("seq_len + 1 = 17"));
    REQUIRE_NOTHROW(io::DataLoader(few, 1, 15, 0));
    // Enough tokens overall but not in each rank's slice.
    REQUIRE_THROWS_WITH(io::DataLoader(tokens, 1, 300, 0, 3, 4), Contains("rank 3 of 4") && Contains("250"));
    REQUIRE_THROWS_AS(io::DataLoader(tokens, 0, 8, 0), bb::ValueError);
    REQUIRE_THROWS_AS(io::DataLoader(tokens, 2, 0, 0), bb::ValueError);
    REQUIRE_THROWS_AS(io::DataLoader(tokens, 2, 8, 0, 2, 2), bb::ValueError);
    REQUIRE_THROWS_AS(io::DataLoader(nullptr, 2, 8, 0), bb::ValueError);
    // The smallest valid slice has exactly one window.
    io::DataLoader one(few, 2, 15, 3);
    auto [x, y] = one.next();
    REQUIRE(x.to_vector<int64_t>() == std::vector<int64_t>(30, 1));
  }
}
