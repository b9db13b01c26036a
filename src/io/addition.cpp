// The synthetic addition task: encoding, the train/held-out split, batches.
#include "barbell/io/addition.hpp"

#include <algorithm>
#include <set>

namespace barbell::io {

AdditionTask::AdditionTask(int digits, bool reverse_answer, uint64_t split_seed)
    : digits_(digits), reverse_(reverse_answer), split_seed_(split_seed) {
  BB_CHECK(digits >= 1 && digits <= 9, ValueError, "AdditionTask: digits must be in [1, 9], got {}", digits);
  limit_ = 1;
  for (int i = 0; i < digits; ++i) limit_ *= 10;
}

bool AdditionTask::is_held_out(int64_t a, int64_t b) const {
  uint32_t w[4];
  Generator::philox(split_seed_, static_cast<uint64_t>(a * limit_ + b), w);
  return w[0] % 20 == 0;
}

namespace {
void put_number(std::vector<int32_t>& out, int64_t v, int width) {
  std::vector<int32_t> d(static_cast<size_t>(width));
  for (int i = width - 1; i >= 0; --i, v /= 10) d[static_cast<size_t>(i)] = static_cast<int32_t>(v % 10);
  out.insert(out.end(), d.begin(), d.end());
}
}  // namespace

std::vector<int32_t> AdditionTask::encode_prompt(int64_t a, int64_t b) const {
  BB_CHECK(a >= 0 && a < limit_ && b >= 0 && b < limit_, ValueError, "AdditionTask: operands {} and {} not in [0, {})",
           a, b, limit_);
  std::vector<int32_t> t;
  put_number(t, a, digits_);
  t.push_back(kPlus);
  put_number(t, b, digits_);
  t.push_back(kEquals);
  return t;
}

std::vector<int32_t> AdditionTask::encode_answer(int64_t a, int64_t b) const {
  std::vector<int32_t> t;
  put_number(t, a + b, digits_ + 1);
  if (reverse_) std::reverse(t.begin(), t.end());
  t.push_back(kEnd);
  return t;
}

int64_t AdditionTask::decode_answer(const std::vector<int32_t>& tokens) const {
  if (static_cast<int64_t>(tokens.size()) < answer_len()) return -1;
  std::vector<int32_t> d(tokens.begin(), tokens.begin() + digits_ + 1);
  if (tokens[static_cast<size_t>(digits_ + 1)] != kEnd) return -1;
  if (reverse_) std::reverse(d.begin(), d.end());
  int64_t v = 0;
  for (int32_t x : d) {
    if (x < 0 || x > 9) return -1;
    v = v * 10 + x;
  }
  return v;
}

std::string AdditionTask::to_text(const std::vector<int32_t>& tokens) {
  std::string s;
  for (int32_t t : tokens) s += t >= 0 && t <= 9 ? static_cast<char>('0' + t) : t == kPlus ? '+' : t == kEquals ? '=' : t == kEnd ? '$' : '?';
  return s;
}

std::pair<Tensor, Tensor> AdditionTask::batch(int64_t batch_size, Generator& gen) const {
  BB_CHECK(batch_size >= 1, ValueError, "AdditionTask::batch: batch size must be positive, got {}", batch_size);
  const int64_t T = seq_len(), P = prompt_len();
  std::vector<int64_t> x(static_cast<size_t>(batch_size * T)), y(static_cast<size_t>(batch_size * T));
  for (int64_t i = 0; i < batch_size; ++i) {
    int64_t a, b;
    do {
      a = static_cast<int64_t>(gen.next_u32() % static_cast<uint32_t>(limit_));
      b = static_cast<int64_t>(gen.next_u32() % static_cast<uint32_t>(limit_));
    } while (is_held_out(a, b));
    std::vector<int32_t> seq = encode_prompt(a, b);
    auto ans = encode_answer(a, b);
    seq.insert(seq.end(), ans.begin(), ans.end());
    for (int64_t t = 0; t < T; ++t) {
      x[static_cast<size_t>(i * T + t)] = seq[static_cast<size_t>(t)];
      // Position t predicts token t+1; only answer tokens (t+1 >= P) are learned.
      y[static_cast<size_t>(i * T + t)] = t + 1 >= P ? seq[static_cast<size_t>(t + 1)] : -100;
    }
  }
  return {from_vector(x, {batch_size, T}), from_vector(y, {batch_size, T})};
}

std::vector<std::pair<int64_t, int64_t>> AdditionTask::held_out(int64_t n) const {
  // Count first, so asking for more distinct problems than exist is an error, not a hang.
  int64_t total = 0;
  if (limit_ <= 10000)
    for (int64_t a = 0; a < limit_; ++a)
      for (int64_t b = 0; b < limit_; ++b) total += is_held_out(a, b);
  BB_CHECK(limit_ > 10000 || n <= total, ValueError,
           "AdditionTask::held_out: {} problems asked for, but only {} of the {}-digit problems are held out", n, total,
           digits_);
  std::vector<std::pair<int64_t, int64_t>> r;
  std::set<std::pair<int64_t, int64_t>> seen;
  // Walk the problem space in a scrambled but fixed order so the set mixes sizes; each
  // problem once.
  Generator g(split_seed_ ^ 0x9e3779b97f4a7c15ull);
  while (static_cast<int64_t>(r.size()) < n) {
    int64_t a = static_cast<int64_t>(g.next_u32() % static_cast<uint32_t>(limit_));
    int64_t b = static_cast<int64_t>(g.next_u32() % static_cast<uint32_t>(limit_));
    if (is_held_out(a, b) && seen.emplace(a, b).second) r.emplace_back(a, b);
  }
  return r;
}

}  // namespace barbell::io
