// GPT2Tokenizer: vocab.json / merges.txt parsing, GPT-2's pre-tokenizer over UTF-8 units, BPE by merge rank
// (a heap over a linked list of symbols, O(n log n) in a piece's length), and a bounded per-piece cache.
#include "barbell/io/gpt2_tokenizer.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "barbell/core/error.hpp"
#include "io/unicode.hpp"

namespace barbell::io {

namespace detail {

bool CodeRangeTable::contains(uint32_t cp) const {
  const CodeRange* end = ranges + size;
  const CodeRange* it =
      std::upper_bound(ranges, end, cp, [](uint32_t c, const CodeRange& r) { return c < r.lo; });
  return it != ranges && cp <= (it - 1)->hi;
}

CharClass char_class(uint32_t cp) {
  if (cp < 0x80) {
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return CharClass::Letter;
    if (cp >= '0' && cp <= '9') return CharClass::Number;
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return CharClass::Space;
    return CharClass::Other;
  }
  if (cp == kInvalidByte) return CharClass::Other;
  if (kWhiteSpaceTable.contains(cp)) return CharClass::Space;
  if (kLetterTable.contains(cp)) return CharClass::Letter;
  if (kNumberTable.contains(cp)) return CharClass::Number;
  return CharClass::Other;
}

Utf8Unit decode_utf8(const unsigned char* p, size_t n) {
  const unsigned b0 = p[0];
  if (b0 < 0x80) return {b0, 1};
  // Table 3-7 of the Unicode Standard: the second byte's range depends on the first (which excludes
  // overlong forms, surrogates and code points above U+10FFFF); later bytes are 80..BF.
  uint32_t len = 0, lo = 0x80, hi = 0xBF, cp = 0;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2, cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3, cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4, cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return {kInvalidByte, 1};
  }
  if (n < len) return {kInvalidByte, 1};
  for (uint32_t i = 1; i < len; ++i) {
    const unsigned b = p[i];
    if (b < (i == 1 ? lo : 0x80u) || b > (i == 1 ? hi : 0xBFu)) return {kInvalidByte, 1};
    cp = (cp << 6) | (b & 0x3F);
  }
  return {cp, len};
}

}  // namespace detail

namespace {

using detail::CharClass;

// GPT-2's bytes_to_unicode(): the printable bytes '!'..'~', U+00A1..U+00AC and U+00AE..U+00FF stand for
// themselves, the other 68 bytes for U+0100.. in byte order, so that every token is printable text.
struct ByteMap {
  std::array<uint32_t, 256> cp{};
  std::array<int16_t, 324> byte{};  // code point -> byte, -1 where none
  ByteMap() {
    byte.fill(-1);
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      cp[b] = printable ? b : next++;
      byte[cp[b]] = static_cast<int16_t>(b);
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

void append_utf8(std::string& s, uint32_t cp) {
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string read_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    int err = errno;
    throw IOError(fmt::format("GPT2Tokenizer: {}: cannot open: {}", path, std::strerror(err)));
  }
  std::string out;
  char buf[1 << 16];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, got);
  const bool bad = std::ferror(f) != 0;
  std::fclose(f);
  BB_CHECK(!bad, IOError, "GPT2Tokenizer: {}: read error", path);
  return out;
}

// Calls f(begin, end) for each piece of GPT-2's pattern, left to right. The alternatives are tried in the
// pattern's order; the only backtracking the pattern can do is \s+(?!\S) giving back the last white-space
// character of a run that a non-space follows (which then starts the next piece, e.g. " word").
template <typename F>
void for_each_piece(const std::string& text, F&& f) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  auto class_at = [&](size_t i, size_t* len) {
    detail::Utf8Unit u = detail::decode_utf8(p + i, n - i);
    *len = u.len;
    return detail::char_class(u.cp);
  };
  size_t pos = 0;
  while (pos < n) {
    size_t end = 0;
    if (p[pos] == '\'' && pos + 1 < n) {  // 's 't 'm 'd 're 've 'll (case-sensitive, as in GPT-2)
      const unsigned char c1 = p[pos + 1];
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
        end = pos + 2;
      } else if (pos + 2 < n) {
        const unsigned char c2 = p[pos + 2];
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) end = pos + 3;
      }
    }
    if (end == 0) {
      size_t len = 0;
      CharClass cls = class_at(pos, &len);
      size_t run = pos;  // where the run of one class starts (after an optional leading ' ')
      if (p[pos] == ' ' && pos + 1 < n) {
        size_t len2 = 0;
        CharClass next = class_at(pos + 1, &len2);
        if (next != CharClass::Space) cls = next, run = pos + 1, len = len2;
      }
      end = run + len;
      if (cls != CharClass::Space) {  // ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+
        size_t l = 0;
        while (end < n && class_at(end, &l) == cls) end += l;
      } else {  // \s+(?!\S) | \s+
        size_t last = pos, l = 0;
        while (end < n && class_at(end, &l) == CharClass::Space) last = end, end += l;
        if (end < n && last > pos) end = last;
      }
    }
    f(pos, end);
    pos = end;
  }
}

struct Merge {
  int32_t rank, merged;
};
uint64_t pair_key(int32_t a, int32_t b) {
  return static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32 | static_cast<uint32_t>(b);
}

}  // namespace

struct GPT2Tokenizer::Impl {
  std::unordered_map<std::string, int32_t> vocab;  // vocab.json's strings
  std::vector<std::string> id_bytes;               // id -> the bytes it decodes to
  std::vector<bool> id_known;
  std::array<int32_t, 256> byte_id{};
  std::unordered_map<uint64_t, Merge> merges;

  // Pieces of normal text repeat (" the", " of"); their ids are kept, up to a bound on the entries and on
  // the length of a piece, so that memory stays small on any input.
  static constexpr size_t kCacheEntries = 1 << 16, kCacheMaxPiece = 64;
  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  void load(const std::string& vocab_path, const std::string& merges_path);
  void bpe(const unsigned char* p, size_t n, std::vector<int32_t>& out) const;
};

void GPT2Tokenizer::Impl::load(const std::string& vocab_path, const std::string& merges_path) {
  const ByteMap& bm = byte_map();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(vocab_path));
  } catch (const nlohmann::json::exception& e) {
    throw IOError(fmt::format("GPT2Tokenizer: {}: not valid JSON: {}", vocab_path, e.what()));
  }
  BB_CHECK(j.is_object(), IOError, "GPT2Tokenizer: {}: expected a JSON object of token -> id, found {}",
           vocab_path, j.type_name());
  int64_t max_id = -1;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const auto& v = it.value();
    BB_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() <= INT32_MAX, IOError,
             "GPT2Tokenizer: {}: token '{}' has id {}, not an integer in [0, 2^31)", vocab_path, it.key(),
             v.dump());
    max_id = std::max<int64_t>(max_id, v.get<int64_t>());
  }
  BB_CHECK(max_id >= 0, IOError, "GPT2Tokenizer: {}: the vocabulary is empty", vocab_path);
  id_bytes.assign(static_cast<size_t>(max_id) + 1, std::string());
  id_known.assign(static_cast<size_t>(max_id) + 1, false);
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& tok = it.key();
    const auto id = it.value().get<int32_t>();
    BB_CHECK(!id_known[static_cast<size_t>(id)], IOError,
             "GPT2Tokenizer: {}: id {} is given to two tokens ('{}')", vocab_path, id, tok);
    id_known[static_cast<size_t>(id)] = true;
    vocab.emplace(tok, id);
    // A token of the byte stand-ins decodes to those bytes; any other (an added token written in plain
    // text) to its own UTF-8, as Hugging Face's ByteLevel decoder does.
    std::string bytes;
    bool mapped = true;
    const auto* s = reinterpret_cast<const unsigned char*>(tok.data());
    for (size_t i = 0; i < tok.size() && mapped;) {
      detail::Utf8Unit u = detail::decode_utf8(s + i, tok.size() - i);
      mapped = u.cp < bm.byte.size() && bm.byte[u.cp] >= 0;
      if (mapped) bytes += static_cast<char>(bm.byte[u.cp]);
      i += u.len;
    }
    id_bytes[static_cast<size_t>(id)] = mapped ? bytes : tok;
  }
  for (uint32_t b = 0; b < 256; ++b) {
    std::string sym;
    append_utf8(sym, bm.cp[b]);
    auto it = vocab.find(sym);
    BB_CHECK(it != vocab.end(), IOError,
             "GPT2Tokenizer: {}: no token for byte 0x{:02X} ('{}'); a byte-level vocabulary holds all 256",
             vocab_path, b, sym);
    byte_id[b] = it->second;
  }

  const std::string text = read_file(merges_path);
  size_t line_start = 0;
  int64_t line_no = 0;
  int32_t rank = 0;
  while (line_start < text.size()) {
    size_t nl = text.find('\n', line_start);
    if (nl == std::string::npos) nl = text.size();
    std::string line = text.substr(line_start, nl - line_start);
    line_start = nl + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
    const size_t sp = line.find(' ');
    BB_CHECK(sp != std::string::npos && sp > 0 && sp + 1 < line.size() &&
                 line.find(' ', sp + 1) == std::string::npos,
             IOError, "GPT2Tokenizer: {}: line {}: expected two tokens separated by one space, found '{}'",
             merges_path, line_no, line);
    const std::string a = line.substr(0, sp), b = line.substr(sp + 1);
    auto ia = vocab.find(a), ib = vocab.find(b), im = vocab.find(a + b);
    for (const auto& [name, it] : {std::pair{a, ia}, std::pair{b, ib}, std::pair{a + b, im}}) {
      BB_CHECK(it != vocab.end(), IOError, "GPT2Tokenizer: {}: line {}: '{}' is not in {}", merges_path,
               line_no, name, vocab_path);
    }
    bool fresh = merges.emplace(pair_key(ia->second, ib->second), Merge{rank, im->second}).second;
    BB_CHECK(fresh, IOError, "GPT2Tokenizer: {}: line {}: the merge '{}' appears twice", merges_path, line_no,
             line);
    ++rank;
  }
}

// GPT-2's bpe(): while some adjacent pair has a merge, take the lowest rank and merge every occurrence of
// that pair, left to right. Here all heap entries of the lowest rank are merged before the pairs those
// merges create are queued, which keeps exactly that order for any merges file.
void GPT2Tokenizer::Impl::bpe(const unsigned char* p, size_t n, std::vector<int32_t>& out) const {
  if (n == 1) {
    out.push_back(byte_id[p[0]]);
    return;
  }
  struct Sym {
    int32_t id, prev, next;  // id -1: merged into its left neighbour
  };
  std::vector<Sym> s(n);
  for (size_t i = 0; i < n; ++i)
    s[i] = {byte_id[p[i]], static_cast<int32_t>(i) - 1, i + 1 < n ? static_cast<int32_t>(i + 1) : -1};
  using Entry = std::pair<int32_t, int32_t>;  // (rank, left symbol)
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap;
  std::vector<Entry> created;
  auto rank_of = [&](int32_t left) -> const Merge* {
    if (left < 0 || s[left].id < 0 || s[left].next < 0) return nullptr;
    auto it = merges.find(pair_key(s[left].id, s[s[left].next].id));
    return it == merges.end() ? nullptr : &it->second;
  };
  for (size_t i = 0; i + 1 < n; ++i)
    if (const Merge* m = rank_of(static_cast<int32_t>(i))) heap.emplace(m->rank, static_cast<int32_t>(i));
  while (!heap.empty()) {
    const int32_t rank = heap.top().first;
    while (!heap.empty() && heap.top().first == rank) {
      const int32_t l = heap.top().second;
      heap.pop();
      const Merge* m = rank_of(l);
      if (m == nullptr || m->rank != rank) continue;  // the pair changed since it was queued
      const int32_t r = s[l].next;
      s[l].id = m->merged;
      s[r].id = -1;
      s[l].next = s[r].next;
      if (s[r].next >= 0) s[s[r].next].prev = l;
      if (const Merge* a = rank_of(s[l].prev)) created.emplace_back(a->rank, s[l].prev);
      if (const Merge* b = rank_of(l)) created.emplace_back(b->rank, l);
    }
    for (const Entry& e : created) heap.push(e);
    created.clear();
  }
  for (int32_t i = 0; i >= 0; i = s[i].next) out.push_back(s[i].id);
}

GPT2Tokenizer::GPT2Tokenizer(const std::string& dir)
    : GPT2Tokenizer(dir + "/vocab.json", dir + "/merges.txt") {}

GPT2Tokenizer::GPT2Tokenizer(const std::string& vocab_json, const std::string& merges_txt)
    : impl_(std::make_shared<Impl>()) {
  impl_->load(vocab_json, merges_txt);
}

std::vector<int32_t> GPT2Tokenizer::encode(const std::string& text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  const Impl& im = *impl_;
  std::string key;
  for_each_piece(text, [&](size_t b, size_t e) {
    const auto* p = reinterpret_cast<const unsigned char*>(text.data()) + b;
    const size_t n = e - b;
    if (n > Impl::kCacheMaxPiece) {
      im.bpe(p, n, ids);
      return;
    }
    key.assign(text, b, n);
    {
      std::lock_guard<std::mutex> lock(im.cache_mutex);
      auto it = im.cache.find(key);
      if (it != im.cache.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    const size_t first = ids.size();
    im.bpe(p, n, ids);
    std::lock_guard<std::mutex> lock(im.cache_mutex);
    if (im.cache.size() >= Impl::kCacheEntries) im.cache.clear();
    im.cache.emplace(key, std::vector<int32_t>(ids.begin() + static_cast<std::ptrdiff_t>(first), ids.end()));
  });
  return ids;
}

std::string GPT2Tokenizer::decode(const std::vector<int32_t>& ids) const {
  const Impl& im = *impl_;
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    BB_CHECK(id >= 0 && static_cast<size_t>(id) < im.id_known.size() && im.id_known[static_cast<size_t>(id)],
             IndexError, "GPT2Tokenizer::decode: id {} at position {} is not in the vocabulary (size {})", id,
             i, im.id_known.size());
    out += im.id_bytes[static_cast<size_t>(id)];
  }
  return out;
}

int64_t GPT2Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->id_known.size()); }

std::optional<int32_t> GPT2Tokenizer::token_id(const std::string& token) const {
  auto it = impl_->vocab.find(token);
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> GPT2Tokenizer::pretokenize(const std::string& text) {
  std::vector<std::string> pieces;
  for_each_piece(text, [&](size_t b, size_t e) { pieces.push_back(text.substr(b, e - b)); });
  return pieces;
}

const char* GPT2Tokenizer::unicode_version() { return detail::kUnicodeVersion; }

}  // namespace barbell::io
