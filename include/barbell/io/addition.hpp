// The synthetic addition task the demo GPT learns: prompts "123+456=" completed
// with "579$", generated in process, with held-out problems never used in training.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "barbell/core/random.hpp"
#include "barbell/core/tensor.hpp"

namespace barbell::io {

// Vocabulary: '0'..'9' are 0..9, '+' 10, '=' 11, '$' (end of answer) 12.
// A problem a + b (0 <= a, b < 10^digits) is the sequence
//   a (digits wide, zero padded) '+' b '=' answer '$'
// where the answer is a + b written with digits + 1 digits, zero padded
// ("123+456=0579$"), or least significant digit first when reverse_answer is set
// ("123+456=9750$"), which is easier to learn. Problems whose hash falls in the
// held-out set (about 1 in 20) never appear in training batches.
class AdditionTask {
 public:
  explicit AdditionTask(int digits = 3, bool reverse_answer = false, uint64_t split_seed = 0x5eed);

  static constexpr int kPlus = 10, kEquals = 11, kEnd = 12, kVocab = 13;
  int vocab_size() const { return kVocab; }
  int digits() const { return digits_; }
  bool reverse_answer() const { return reverse_; }
  int64_t prompt_len() const { return 2 * digits_ + 2; }        // "123+456="
  int64_t answer_len() const { return digits_ + 2; }            // "0579$"
  int64_t seq_len() const { return prompt_len() + answer_len() - 1; }  // model input length

  bool is_held_out(int64_t a, int64_t b) const;
  // x [B, seq_len] and y [B, seq_len] (I64): y is x shifted by one, with the prompt
  // positions set to -100 so only the answer is learned. Training problems only.
  std::pair<Tensor, Tensor> batch(int64_t batch_size, Generator& gen) const;
  // The first n held-out problems in a fixed order.
  std::vector<std::pair<int64_t, int64_t>> held_out(int64_t n) const;

  std::vector<int32_t> encode_prompt(int64_t a, int64_t b) const;
  std::vector<int32_t> encode_answer(int64_t a, int64_t b) const;  // includes '$'
  // The value an answer's tokens spell (reverse_answer undone), or -1 if malformed.
  int64_t decode_answer(const std::vector<int32_t>& tokens) const;
  static std::string to_text(const std::vector<int32_t>& tokens);

 private:
  int digits_;
  bool reverse_;
  uint64_t split_seed_;
  int64_t limit_;
};

}  // namespace barbell::io
