// safetensors save (atomic, tensors laid out widest dtype first so every tensor is
// aligned) and load (every header field checked against the file before any read).
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

#include "io/atomic_file.hpp"

namespace barbell::io {

namespace {

using json = nlohmann::ordered_json;  // keeps the caller's tensor order in the header

// The reference implementation refuses larger headers; so do we, before allocating.
constexpr uint64_t kMaxHeader = 100ull * 1000 * 1000;
constexpr const char* kMetadataKey = "__metadata__";

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

  json header = json::object();
  if (!metadata.empty()) {
    json meta = json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header[kMetadataKey] = std::move(meta);
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    json e = json::object();
    e["dtype"] = st_dtype_name(host[i].dtype());
    e["shape"] = host[i].shape();
    e["data_offsets"] = json::array({begin[i], begin[i] + host[i].nbytes()});
    header[tensors[i].first] = std::move(e);
  }
  std::string text;
  try {
    text = header.dump();
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
  const bool swap = !detail::host_is_little_endian();
  std::vector<unsigned char> scratch;
  for (size_t i : layout) {
    const Tensor& t = host[i];
    if (t.nbytes() == 0) continue;
    if (swap && t.element_size() > 1) {
      scratch.assign(static_cast<const unsigned char*>(t.data_ptr()),
                     static_cast<const unsigned char*>(t.data_ptr()) + t.nbytes());
      detail::swap_bytes(scratch.data(), static_cast<size_t>(t.numel()), t.element_size());
      file.write(scratch.data(), scratch.size());
    } else {
      file.write(t.data_ptr(), t.nbytes());
    }
  }
  file.commit();
}

Safetensors load_safetensors(const std::string& path) {
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

  json header;
  try {
    header = json::parse(text);
  } catch (const json::exception& e) { throw fail(fmt::format("header is not valid JSON: {}", e.what())); }
  if (!header.is_object()) throw fail("header is not a JSON object");
  const uint64_t body = file_size - 8 - n;

  Safetensors out;
  out.path = path;
  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
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
  return out;
}

}  // namespace barbell::io
