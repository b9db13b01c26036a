// Tests of io::GPT2Tokenizer: every record of tests/data/gpt2_bpe's corpus against the ids and pieces the
// reference implementations gave (scripts/gen_gpt2_bpe_testdata.py), decode against the references' bytes,
// the heap BPE against GPT-2's merge loop on random merge tables, and every malformed-file refusal.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "testing.hpp"

namespace io = barbell::io;
namespace fs = std::filesystem;
using Catch::Contains;

namespace {

// The committed data, or a directory made the same way (e.g. from GPT-2's real vocabulary: see the script).
std::string data_dir() {
  const char* env = std::getenv("BARBELL_GPT2_BPE_DATA");
  return env && *env ? std::string(env) : std::string(BARBELL_TEST_DATA_DIR) + "/gpt2_bpe";
}

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

std::vector<int64_t> numbers(const std::string& s) {
  std::istringstream in(s);
  std::vector<int64_t> v;
  for (int64_t x; in >> x;) v.push_back(x);
  return v;
}

// The records the script made: the corpus split after every '\n', then the whole corpus.
std::vector<std::string> records(const std::string& corpus) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t nl; (nl = corpus.find('\n', start)) != std::string::npos; start = nl + 1)
    out.push_back(corpus.substr(start, nl + 1 - start));
  if (start < corpus.size()) out.push_back(corpus.substr(start));
  out.push_back(corpus);
  return out;
}

std::string printable(const std::string& s) {
  std::string o;
  for (unsigned char c : s)
    o += (c >= 0x20 && c < 0x7f) ? std::string(1, static_cast<char>(c)) : fmt::format("\\x{:02x}", c);
  return o.size() > 160 ? o.substr(0, 160) + "..." : o;
}

// GPT-2's bytes_to_unicode() for one byte, as UTF-8 (what vocab.json and merges.txt write).
std::string byte_symbol(int b) {
  int cp = b, next = 256;
  for (int x = 0; x < b; ++x) {
    const bool printable = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE;
    if (!printable) ++next;
  }
  const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
  if (!printable) cp = next;
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// A directory with a vocab.json of the 256 byte symbols plus `extra` tokens and the given merges.txt text.
std::string make_vocab_dir(const std::string& name, const std::vector<std::string>& extra,
                           const std::string& merges, bool all_bytes = true) {
  const std::string dir = bbtest::tmp_path(name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  nlohmann::json v = nlohmann::json::object();
  int id = 0;
  for (int b = 0; b < 256; ++b)
    if (all_bytes || b != 'z') v[byte_symbol(b)] = id++;
  for (const auto& t : extra) v[t] = id++;
  write_bytes(dir + "/vocab.json", v.dump());
  write_bytes(dir + "/merges.txt", merges);
  return dir;
}

}  // namespace

TEST_CASE("gpt2 tokenizer: pre-tokenization follows GPT-2's pattern", "[io][gpt2_tokenizer]") {
  using V = std::vector<std::string>;
  auto pt = [](const std::string& s) { return io::GPT2Tokenizer::pretokenize(s); };
  CHECK(pt("Hello world") == V{"Hello", " world"});
  CHECK(pt("a  b") == V{"a", " ", " b"});  // \s+(?!\S) leaves the last space to " b"
  CHECK(pt("a\tb") == V{"a", "\t", "b"});  // only ' ' joins the next piece
  CHECK(pt("x   ") == V{"x", "   "});      // white space at the end is one piece
  CHECK(pt("\n\nHi") == V{"\n", "\n", "Hi"});
  CHECK(pt("it's they'll I'M") == V{"it", "'s", " they", "'ll", " I", "'", "M"});
  CHECK(pt("''s") == V{"''", "s"});  // no contraction inside a punctuation run
  CHECK(pt(" 'x") == V{" '", "x"});
  CHECK(pt("abc123 456!?") == V{"abc", "123", " 456", "!?"});
  CHECK(pt("caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac") == V{"caf\xc3\xa9", " \xe6\x97\xa5\xe6\x9c\xac"});
  CHECK(pt("e\xcc\x81") == V{"e", "\xcc\x81"});          // a combining mark is not a letter
  CHECK(pt("a\xff\xfe b") == V{"a", "\xff\xfe", " b"});  // invalid bytes: neither letter, number nor space
  CHECK(pt("\xe2\x82z") == V{"\xe2\x82", "z"});          // a truncated sequence is two invalid bytes
  CHECK(pt("x\xc2\xa0y") == V{"x", "\xc2\xa0", "y"});    // U+00A0 is white space
  CHECK(pt("x\x1cy") == V{"x", "\x1c", "y"});  // U+001C is not (str.isspace() says it is; \s does not)
  CHECK(pt("").empty());
}

TEST_CASE("gpt2 tokenizer: every corpus record gives the references' pieces and ids",
          "[io][gpt2_tokenizer]") {
  const std::string dir = data_dir();
  INFO("data: " << dir << ", Unicode " << io::GPT2Tokenizer::unicode_version());
  io::GPT2Tokenizer tok(dir);
  const auto recs = records(read_bytes(dir + "/corpus.txt"));
  std::istringstream expected(read_bytes(dir + "/expected.txt"));
  std::string line;
  REQUIRE(std::getline(expected, line));
  REQUIRE(line == fmt::format("records {}", recs.size()));
  size_t bad = 0, n_ids = 0, n_bytes = 0;
  std::string first_bad;
  for (size_t r = 0; r < recs.size(); ++r) {
    REQUIRE(std::getline(expected, line));
    const size_t tab = line.find('\t');
    REQUIRE(tab != std::string::npos);
    const auto want_ids = numbers(line.substr(0, tab));
    const auto want_lens = numbers(line.substr(tab + 1));
    std::vector<int64_t> lens;
    for (const auto& p : io::GPT2Tokenizer::pretokenize(recs[r]))
      lens.push_back(static_cast<int64_t>(p.size()));
    const auto got = tok.encode(recs[r]);
    const std::vector<int64_t> got_ids(got.begin(), got.end());
    const bool ok = lens == want_lens && got_ids == want_ids && tok.decode(got) == recs[r];
    if (!ok && bad++ == 0) {
      first_bad = fmt::format("record {} '{}': pieces {} (want {}), ids {} (want {})", r, printable(recs[r]),
                              fmt::join(lens, " "), fmt::join(want_lens, " "), fmt::join(got_ids, " "),
                              fmt::join(want_ids, " "));
    }
    n_ids += got.size();
    n_bytes += recs[r].size();
  }
  INFO(first_bad);
  CHECK(bad == 0);
  CHECK(n_ids > 0);
  WARN(fmt::format("gpt2 tokenizer: {} records, {} bytes, {} ids: {} differ from the references", recs.size(),
                   n_bytes, n_ids, bad));
}

TEST_CASE("gpt2 tokenizer: decode gives the references' bytes", "[io][gpt2_tokenizer]") {
  const std::string dir = data_dir();
  io::GPT2Tokenizer tok(dir);
  std::istringstream in(read_bytes(dir + "/decode.txt"));
  std::string line;
  size_t n = 0;
  while (std::getline(in, line)) {
    const size_t tab = line.find('\t');
    REQUIRE(tab != std::string::npos);
    const auto ids64 = numbers(line.substr(0, tab));
    const std::vector<int32_t> ids(ids64.begin(), ids64.end());
    const std::string hex = line.substr(tab + 1);
    std::string want;
    for (size_t i = 0; i + 1 < hex.size(); i += 2)
      want += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
    INFO("ids " << line.substr(0, tab));
    REQUIRE(tok.decode(ids) == want);
    ++n;
  }
  CHECK(n >= 100);
  const auto eot = tok.token_id("<|endoftext|>");
  REQUIRE(eot.has_value());
  CHECK(tok.decode({*eot}) == "<|endoftext|>");
  CHECK(tok.vocab_size() > *eot);
  CHECK_FALSE(tok.token_id("no such token").has_value());
  CHECK_THROWS_WITH(tok.decode({1, -1}),
                    Contains("GPT2Tokenizer::decode") && Contains("id -1") && Contains("position 1"));
  CHECK_THROWS_AS(tok.decode({static_cast<int32_t>(tok.vocab_size())}), barbell::IndexError);
}

TEST_CASE("gpt2 tokenizer: heap BPE equals GPT-2's merge loop on random merge tables",
          "[io][gpt2_tokenizer]") {
  std::mt19937 rng(1234);
  for (int table = 0; table < 20; ++table) {
    // Tokens over {a, b, c}: each merge joins two existing tokens; ranks are then shuffled a little so that
    // some merges rank below the merges that make their parts (the order GPT-2's loop must still follow).
    std::vector<std::string> tokens = {"a", "b", "c"}, extra;
    std::vector<std::pair<std::string, std::string>> merges;
    std::set<std::pair<std::string, std::string>> seen;
    while (merges.size() < 40) {
      const std::string x = tokens[rng() % tokens.size()];
      const std::string y = tokens[rng() % tokens.size()];
      if (x.size() + y.size() > 6 || !seen.insert({x, y}).second) continue;
      merges.emplace_back(x, y);
      if (std::find(tokens.begin(), tokens.end(), x + y) == tokens.end()) {
        tokens.push_back(x + y);
        extra.push_back(x + y);
      }
    }
    for (int s = 0; s < 6; ++s) std::swap(merges[rng() % merges.size()], merges[rng() % merges.size()]);
    std::string text = "#version: 0.2\n";
    for (auto& [x, y] : merges) text += x + " " + y + "\n";
    io::GPT2Tokenizer tok(make_vocab_dir("bpe_random", extra, text));

    std::map<std::pair<int32_t, int32_t>, std::pair<size_t, int32_t>>
        rank;  // (left, right) -> (rank, merged)
    for (size_t i = 0; i < merges.size(); ++i) {
      auto id = [&](const std::string& t) { return *tok.token_id(t); };
      rank[{id(merges[i].first), id(merges[i].second)}] = {i, id(merges[i].first + merges[i].second)};
    }
    for (int w = 0; w < 200; ++w) {
      std::string word;
      const size_t len = 1 + rng() % 30;
      for (size_t i = 0; i < len; ++i) word += static_cast<char>('a' + rng() % 3);
      // GPT-2's bpe(): merge every occurrence of the lowest-ranked pair, left to right, until none is left.
      std::vector<int32_t> syms;
      for (char ch : word) syms.push_back(*tok.token_id(std::string(1, ch)));
      while (true) {
        size_t best = SIZE_MAX;
        std::pair<int32_t, int32_t> pair;
        for (size_t i = 0; i + 1 < syms.size(); ++i) {
          auto it = rank.find({syms[i], syms[i + 1]});
          if (it != rank.end() && it->second.first < best) best = it->second.first, pair = it->first;
        }
        if (best == SIZE_MAX) break;
        std::vector<int32_t> next;
        for (size_t i = 0; i < syms.size();) {
          if (i + 1 < syms.size() && syms[i] == pair.first && syms[i + 1] == pair.second) {
            next.push_back(rank[pair].second);
            i += 2;
          } else {
            next.push_back(syms[i++]);
          }
        }
        syms = next;
      }
      INFO("table " << table << ", word " << word);
      REQUIRE(tok.encode(word) == syms);
    }
  }
}

TEST_CASE("gpt2 tokenizer: long pieces, repeated pieces and threads", "[io][gpt2_tokenizer]") {
  io::GPT2Tokenizer tok(data_dir());
  std::string text;
  for (int i = 0; i < 300; ++i) text += "the model's tokens, " + std::to_string(i * 37) + "\n";
  text += std::string(5000, 'a') + std::string(3000, ' ') + std::string(2000, '9') + "\n";
  const auto once = tok.encode(text);
  CHECK(tok.encode(text) == once);  // the second time from the cache
  CHECK(tok.decode(once) == text);
  io::GPT2Tokenizer copy = tok;  // shares the tables and the cache
  std::vector<int32_t> a, b;
  std::thread t1([&] { a = tok.encode(text); });
  std::thread t2([&] { b = copy.encode(text); });
  t1.join();
  t2.join();
  CHECK(a == once);
  CHECK(b == once);
  // Any bytes at all survive a round trip.
  std::mt19937 rng(99);
  for (int i = 0; i < 200; ++i) {
    std::string s;
    for (size_t k = 0, n = rng() % 64; k < n; ++k) s += static_cast<char>(rng() % 256);
    REQUIRE(tok.decode(tok.encode(s)) == s);
  }
}

TEST_CASE("gpt2 tokenizer: malformed files are refused with the file and the fault", "[io][gpt2_tokenizer]") {
  const std::string ok_merges = "#version: 0.2\na b\n";
  CHECK_NOTHROW(io::GPT2Tokenizer(make_vocab_dir("bpe_ok", {"ab"}, ok_merges)));
  CHECK_NOTHROW(io::GPT2Tokenizer(make_vocab_dir("bpe_crlf", {"ab"}, "a b\r\n\r\n")));  // no #version, CRLF

  const std::string missing = bbtest::tmp_path("bpe_missing_dir");
  fs::remove_all(missing);
  CHECK_THROWS_WITH(io::GPT2Tokenizer(missing), Contains(missing + "/vocab.json") && Contains("cannot open"));

  std::string d = make_vocab_dir("bpe_nobyte", {}, "", /*all_bytes=*/false);
  CHECK_THROWS_WITH(io::GPT2Tokenizer(d), Contains("vocab.json") && Contains("byte 0x7A"));

  d = make_vocab_dir("bpe_badjson", {}, "");
  write_bytes(d + "/vocab.json", "{\"a\": 0,");
  CHECK_THROWS_WITH(io::GPT2Tokenizer(d), Contains("vocab.json") && Contains("not valid JSON"));
  write_bytes(d + "/vocab.json", "[1, 2]");
  CHECK_THROWS_WITH(io::GPT2Tokenizer(d), Contains("expected a JSON object"));
  write_bytes(d + "/vocab.json", "{\"a\": -3}");
  CHECK_THROWS_WITH(io::GPT2Tokenizer(d), Contains("token 'a' has id -3"));
  write_bytes(d + "/vocab.json", "{\"a\": 1, \"b\": 1}");
  CHECK_THROWS_WITH(io::GPT2Tokenizer(d), Contains("id 1 is given to two tokens"));

  d = make_vocab_dir("bpe_badline", {"ab"}, "#version: 0.2\na b\nab\n");
  CHECK_THROWS_WITH(io::GPT2Tokenizer(d), Contains("merges.txt: line 3") && Contains("two tokens"));
  d = make_vocab_dir("bpe_badline2", {"ab"}, "a  b\n");
  CHECK_THROWS_WITH(io::GPT2Tokenizer(d), Contains("merges.txt: line 1"));
  d = make_vocab_dir("bpe_oov", {}, "a b\n");
  CHECK_THROWS_WITH(io::GPT2Tokenizer(d), Contains("merges.txt: line 1") && Contains("'ab' is not in"));
  d = make_vocab_dir("bpe_dup", {"ab"}, "a b\na b\n");
  CHECK_THROWS_WITH(io::GPT2Tokenizer(d), Contains("merges.txt: line 2") && Contains("appears twice"));
}
