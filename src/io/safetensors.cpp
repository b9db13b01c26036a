// safetensors save (atomic, tensors laid out widest dtype first so every tensor is
// aligned, a CRC-32C of each tensor in the metadata) and load (the header parsed within
// bounds, every field checked against the file before any read, checksums verified).
#include "barbell/io/safetensors.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "barbell/io/checksum.hpp"
#include "io/atomic_file.hpp"
#include "io/json_bounded.hpp"

namespace barbell::io {

namespace {

// std::map objects: nlohmann's ordered_map finds keys by a linear search, quadratic over
// 2^18 tensors. The header's order is kept by writing the text in order and by reading the
// root's keys in the order the parser meets them.
using json = nlohmann::json;

// The reference implementation refuses larger headers; so do we, before allocating.
constexpr uint64_t kMaxHeader = 100ull * 1000 * 1000;
constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kChecksumKey = kChecksumMetadataKey;
// The header's limits, checked while it is parsed (see parse_json_bounded): a valid header
// nests three deep (header, tensor entry, shape) and a shape has a few dimensions, so
// these only ever refuse files built to exhaust the stack or the memory of the reader.
constexpr size_t kMaxTensors = 1u << 18;
constexpr size_t kMaxDepth = 8;
constexpr size_t kMaxDims = 64;

const char* st_dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::Bool: return "BOOL";
  }
  return "?";
}

bool st_dtype_parse(const std::string& s, DType* out) {
  static const std::pair<const char*, DType> kNames[] = {
      {"F32", DType::F32}, {"F64", DType::F64}, {"BF16", DType::BF16}, {"F16", DType::F16},
      {"I32", DType::I32}, {"I64", DType::I64}, {"BOOL", DType::Bool}};
  for (const auto& [name, t] : kNames) {
    if (s == name) {
      *out = t;
      return true;
    }
  }
  return false;
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

// One tensor's header entry once validated.
struct Entry {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t begin = 0, end = 0;
};

}  // namespace

const Tensor& Safetensors::at(const std::string& name) const {
  for (const auto& [n, t] : tensors) {
    if (n == name) return t;
  }
  throw IOError(fmt::format("safetensors: {}: no tensor named '{}' (the file has {} tensors)", path, name,
                            tensors.size()));
}

bool Safetensors::contains(const std::string& name) const {
  return std::any_of(tensors.begin(), tensors.end(), [&](const auto& p) { return p.first == name; });
}

void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // Everything that can be wrong with the arguments is checked before the temp file
  // exists, so a bad call never touches the disk.
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    BB_CHECK(!name.empty(), ValueError, "save_safetensors: {}: empty tensor name", path);
    BB_CHECK(name != kMetadataKey, ValueError, "save_safetensors: {}: '{}' is reserved for metadata", path,
             name);
    BB_CHECK(t.defined(), ValueError, "save_safetensors: {}: tensor '{}' is undefined", path, name);
    BB_CHECK(seen.insert(name).second, ValueError, "save_safetensors: {}: duplicate tensor name '{}'", path,
             name);
  }
  BB_CHECK(
      !metadata.count(kChecksumKey), ValueError,
      "save_safetensors: {}: the metadata key '{}' is reserved (barbell writes the tensors' checksums there)",
      path, kChecksumKey);
  BB_CHECK(
      tensors.size() <= kMaxTensors, ValueError,
      "save_safetensors: {}: {} tensors, more than the {} a file may hold (load_safetensors would refuse it)",
      path, tensors.size(), kMaxTensors);

  std::vector<Tensor> host;
  host.reserve(tensors.size());
  for (const auto& [name, t] : tensors)
    host.push_back(t.detach().to(Device::cpu()).contiguous());  // to the host first: strided GPU tensors too

  // Widest element first: with the header padded to 8 bytes every tensor starts at a
  // multiple of its element size, which mmap readers need. Stable, so equal widths
  // keep the caller's order. The header itself stays in the caller's order.
  std::vector<size_t> layout(tensors.size());
  std::iota(layout.begin(), layout.end(), size_t{0});
  std::stable_sort(layout.begin(), layout.end(),
                   [&](size_t a, size_t b) { return host[a].element_size() > host[b].element_size(); });
  std::vector<uint64_t> begin(tensors.size());
  uint64_t pos = 0;
  for (size_t i : layout) {
    begin[i] = pos;
    pos += host[i].nbytes();
  }

  // Each tensor's checksum over its bytes as the file holds them (little-endian).
  const bool swap = !detail::host_is_little_endian();
  std::vector<unsigned char> scratch;
  auto file_bytes = [&](const Tensor& t) -> const void* {
    if (!swap || t.element_size() == 1) return t.data_ptr();
    scratch.assign(static_cast<const unsigned char*>(t.data_ptr()),
                   static_cast<const unsigned char*>(t.data_ptr()) + t.nbytes());
    detail::swap_bytes(scratch.data(), static_cast<size_t>(t.numel()), t.element_size());
    return scratch.data();
  };
  std::string text;
  try {
    // {"name":"crc",...} in the caller's order, then the header itself, in the caller's order.
    std::string sums = "{";
    for (size_t i = 0; i < tensors.size(); ++i)
      sums += fmt::format("{}{}:\"{:08x}\"", i ? "," : "", json(tensors[i].first).dump(),
                          crc32c(file_bytes(host[i]), host[i].nbytes()));
    sums += "}";
    json meta = json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    meta[kChecksumKey] = sums;
    text = "{" + json(kMetadataKey).dump() + ":" + meta.dump();
    for (size_t i = 0; i < tensors.size(); ++i) {
      // The reference writer's key order (nlohmann would sort them).
      text += fmt::format(",{}:{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{},{}]}}",
                          json(tensors[i].first).dump(), st_dtype_name(host[i].dtype()),
                          json(host[i].shape()).dump(), begin[i], begin[i] + host[i].nbytes());
    }
    text += "}";
  } catch (const json::exception& e) {
    throw ValueError(
        fmt::format("save_safetensors: {}: a name or metadata string is not UTF-8: {}", path, e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');

  unsigned char len[8];
  for (int i = 0; i < 8; ++i)
    len[i] = static_cast<unsigned char>(static_cast<uint64_t>(text.size()) >> (8 * i));

  detail::AtomicFile file(path, "save_safetensors");
  file.write(len, sizeof(len));
  file.write(text.data(), text.size());
  for (size_t i : layout) {
    const Tensor& t = host[i];
    if (t.nbytes() > 0) file.write(file_bytes(t), t.nbytes());
  }
  file.commit();
}

namespace {

// The checksums of the metadata's kChecksumKey: a JSON object {tensor name: 8 hex digits}.
std::map<std::string, uint32_t> parse_checksums(const std::string& path, const std::string& text) {
  detail::JsonLimits lim;
  lim.max_depth = 1;
  lim.max_keys = kMaxTensors;
  lim.max_elements = 1;  // an array is refused below, as not an object
  const std::string what = fmt::format("load_safetensors: {}: metadata '{}'", path, kChecksumKey);
  json j = detail::parse_json_bounded<json>(text, lim, what);
  if (!j.is_object()) throw IOError(what + ": not a JSON object");
  std::map<std::string, uint32_t> out;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string* h = it.value().is_string() ? &it.value().get_ref<const std::string&>() : nullptr;
    if (!h || h->size() != 8 || h->find_first_not_of("0123456789abcdef") != std::string::npos)
      throw IOError(
          fmt::format("{}: the checksum of '{}' is {}, not 8 hex digits", what, it.key(), it.value().dump()));
    out[it.key()] = static_cast<uint32_t>(std::stoul(*h, nullptr, 16));
  }
  return out;
}

Safetensors load_impl(const std::string& path) {
  auto fail = [&](const std::string& what) -> IOError {
    return IOError(fmt::format("load_safetensors: {}: {}", path, what));
  };

  FilePtr file(std::fopen(path.c_str(), "rb"));
  if (!file) {
    int err = errno;
    throw fail(fmt::format("cannot open: {}", std::strerror(err)));
  }
  struct stat st {};
  if (::fstat(::fileno(file.get()), &st) != 0) {
    int err = errno;
    throw fail(fmt::format("cannot stat: {}", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) throw fail("not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8)
    throw fail(fmt::format("file is {} bytes, too short for the 8-byte header length", file_size));

  unsigned char len[8];
  if (std::fread(len, 1, 8, file.get()) != 8) throw fail("cannot read the header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
  if (n > kMaxHeader) throw fail(fmt::format("header length {} is over the {} byte limit", n, kMaxHeader));
  if (n > file_size - 8) {
    throw fail(fmt::format("header length {} runs past the end of the file ({} bytes)", n, file_size));
  }
  std::string text(static_cast<size_t>(n), '\0');
  if (n > 0 && std::fread(text.data(), 1, text.size(), file.get()) != text.size()) {
    throw fail("cannot read the header");
  }

  detail::JsonLimits lim;
  lim.max_depth = kMaxDepth;
  lim.max_keys = kMaxTensors + 1;  // and __metadata__
  lim.max_elements = kMaxDims;
  std::vector<std::string> order_in_file;
  json header = detail::parse_json_bounded<json>(text, lim, fmt::format("load_safetensors: {}: header", path),
                                                 &order_in_file);
  if (!header.is_object()) throw fail("header is not a JSON object");
  const uint64_t body = file_size - 8 - n;

  Safetensors out;
  out.path = path;
  std::vector<Entry> entries;
  for (const std::string& name : order_in_file) {
    const json& v = header.at(name);
    if (name == kMetadataKey) {
      if (!v.is_object()) throw fail("__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          throw fail(fmt::format("metadata value for '{}' is not a string", m.key()));
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& what) { return fail(fmt::format("tensor '{}': {}", name, what)); };
    if (name.empty()) throw fail("a tensor has an empty name (save_safetensors refuses one too)");
    if (!v.is_object()) throw bad("entry is not an object");
    Entry e;
    e.name = name;

    auto dt = v.find("dtype");
    if (dt == v.end()) throw bad("missing dtype");
    if (!dt->is_string()) throw bad("dtype is not a string");
    if (!st_dtype_parse(dt->get<std::string>(), &e.dtype)) {
      throw bad(fmt::format("unsupported dtype '{}'", dt->get<std::string>()));
    }

    auto sh = v.find("shape");
    if (sh == v.end()) throw bad("missing shape");
    if (!sh->is_array()) throw bad("shape is not an array");
    uint64_t numel = 1;
    bool overflow = false;
    for (const auto& d : *sh) {
      if (d.is_number_integer() && !d.is_number_unsigned())
        throw bad(fmt::format("negative dimension {}", d.dump()));
      if (!d.is_number_unsigned()) throw bad(fmt::format("dimension {} is not an integer", d.dump()));
      uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(INT64_MAX)) throw bad(fmt::format("dimension {} is too large", dim));
      e.shape.push_back(static_cast<int64_t>(dim));
      overflow = overflow || __builtin_mul_overflow(numel, dim, &numel);
    }

    auto off = v.find("data_offsets");
    if (off == v.end()) throw bad("missing data_offsets");
    if (!off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned()) {
      throw bad(fmt::format("data_offsets {} is not a pair of non-negative integers", off->dump()));
    }
    e.begin = (*off)[0].get<uint64_t>();
    e.end = (*off)[1].get<uint64_t>();
    if (e.begin > e.end)
      throw bad(fmt::format("data_offsets [{}, {}] end before they begin", e.begin, e.end));
    if (e.end > body) {
      throw bad(fmt::format("data_offsets [{}, {}] run past the {}-byte data buffer", e.begin, e.end, body));
    }
    uint64_t want = 0;
    if (overflow || __builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(e.dtype)), &want) ||
        want != e.end - e.begin) {
      throw bad(fmt::format("shape {} of {} needs {} bytes, data_offsets [{}, {}] hold {}",
                            shape_str(e.shape), st_dtype_name(e.dtype),
                            overflow ? std::string("too many") : std::to_string(want), e.begin, e.end,
                            e.end - e.begin));
    }
    entries.push_back(std::move(e));
  }

  // Checksums (files from barbell): one per tensor, none for a tensor the file lacks.
  std::map<std::string, uint32_t> sums;
  const bool has_sums = out.metadata.count(kChecksumKey) > 0;
  if (has_sums) {
    sums = parse_checksums(path, out.metadata[kChecksumKey]);
    out.metadata.erase(kChecksumKey);
    for (const Entry& e : entries)
      if (!sums.count(e.name))
        throw fail(fmt::format("tensor '{}' has no checksum in '{}'", e.name, kChecksumKey));
    if (sums.size() != entries.size()) {
      std::set<std::string> names;
      for (const Entry& e : entries) names.insert(e.name);
      for (const auto& sum : sums)
        if (!names.count(sum.first))
          throw fail(fmt::format("'{}' has a checksum for '{}', a tensor the file does not hold",
                                 kChecksumKey, sum.first));
    }
  }

  // Like the reference reader: the tensors must tile the buffer exactly, so an
  // overlap, a hole or trailing bytes all mean the file is not what it claims.
  std::vector<size_t> order(entries.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return entries[a].begin != entries[b].begin ? entries[a].begin < entries[b].begin
                                                : entries[a].end < entries[b].end;
  });
  uint64_t expect = 0;
  const Entry* prev = nullptr;
  for (size_t i : order) {
    const Entry& e = entries[i];
    if (e.begin < expect) {
      throw fail(fmt::format("tensors '{}' and '{}' overlap (bytes [{}, {}) and [{}, {}))", prev->name,
                             e.name, prev->begin, prev->end, e.begin, e.end));
    }
    if (e.begin > expect)
      throw fail(
          fmt::format("bytes [{}, {}) before tensor '{}' belong to no tensor", expect, e.begin, e.name));
    expect = e.end;
    prev = &e;
  }
  if (expect != body) {
    throw fail(fmt::format("tensors cover {} bytes but the data buffer has {}", expect, body));
  }

  // Contiguous and in file order now, so one sequential read per tensor straight
  // into memory the tensor owns.
  std::vector<Tensor> loaded(entries.size());
  if (::fseeko(file.get(), static_cast<off_t>(8 + n), SEEK_SET) != 0) {
    int err = errno;
    throw fail(fmt::format("seek failed: {}", std::strerror(err)));
  }
  const bool swap = !detail::host_is_little_endian();
  for (size_t i : order) {
    const Entry& e = entries[i];
    Tensor t = empty(e.shape, TensorOptions{e.dtype});
    const size_t nbytes = static_cast<size_t>(e.end - e.begin);
    if (nbytes > 0) {
      if (std::fread(t.data_ptr(), 1, nbytes, file.get()) != nbytes) {
        throw fail(fmt::format("short read of tensor '{}' (file changed while reading?)", e.name));
      }
      if (has_sums) {
        const uint32_t c = crc32c(t.data_ptr(), nbytes), want = sums.at(e.name);
        if (c != want)
          throw fail(fmt::format("tensor '{}': its bytes are damaged: CRC-32C {:08x}, the header says {:08x}",
                                 e.name, c, want));
      }
      if (e.dtype == DType::Bool) {
        const auto* b = static_cast<const unsigned char*>(t.data_ptr());
        for (size_t k = 0; k < nbytes; ++k) {
          if (b[k] > 1)
            throw fail(fmt::format("tensor '{}': BOOL byte {} is {}, not 0 or 1", e.name, k, int{b[k]}));
        }
      }
      if (swap) detail::swap_bytes(t.data_ptr(), nbytes / t.element_size(), t.element_size());
    }
    loaded[i] = std::move(t);
  }
  out.tensors.reserve(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) out.tensors.emplace_back(entries[i].name, std::move(loaded[i]));
  out.checksums_verified = has_sums;
  return out;
}

}  // namespace

Safetensors load_safetensors(const std::string& path) {
  try {
    return load_impl(path);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {  // the JSON library's, or the allocator's: never let them escape
    throw IOError(fmt::format("load_safetensors: {}: {}", path, e.what()));
  }
}

}  // namespace barbell::io
