// The synthetic addition task: encoding, the held-out split, and training batches
// (targets masked on the prompt, held-out problems never drawn).
#include <set>

#include "testing.hpp"

namespace bb = barbell;
using bb::io::AdditionTask;

TEST_CASE("AdditionTask encodes problems and decodes answers", "[io][addition]") {
  AdditionTask task(3);
  REQUIRE(AdditionTask::to_text(task.encode_prompt(123, 45)) == "123+045=");
  REQUIRE(AdditionTask::to_text(task.encode_answer(123, 456)) == "0579$");
  REQUIRE(AdditionTask::to_text(task.encode_answer(999, 999)) == "1998$");
  REQUIRE(task.decode_answer(task.encode_answer(999, 999)) == 1998);
  REQUIRE(task.prompt_len() == 8);
  REQUIRE(task.answer_len() == 5);
  REQUIRE(task.seq_len() == 12);
  // Malformed completions decode to -1: a missing end mark, a non-digit, too short.
  REQUIRE(task.decode_answer({0, 5, 7, 9, 0}) == -1);
  REQUIRE(task.decode_answer({0, 5, AdditionTask::kPlus, 9, AdditionTask::kEnd}) == -1);
  REQUIRE(task.decode_answer({0, 5}) == -1);
  REQUIRE_THROWS_AS(task.encode_prompt(1000, 1), bb::ValueError);
  REQUIRE_THROWS_AS(AdditionTask(0), bb::ValueError);

  AdditionTask rev(3, /*reverse_answer=*/true);
  REQUIRE(AdditionTask::to_text(rev.encode_answer(123, 456)) == "9750$");
  REQUIRE(rev.decode_answer(rev.encode_answer(123, 456)) == 579);
}

TEST_CASE("AdditionTask batches: shifted targets, prompt masked, no held-out problem", "[io][addition]") {
  AdditionTask task(3);
  bb::Generator gen(7);
  auto [x, y] = task.batch(256, gen);
  REQUIRE(x.shape() == bb::Shape{256, 12});
  REQUIRE(y.shape() == bb::Shape{256, 12});
  auto xv = x.to_vector<int64_t>();
  auto yv = y.to_vector<int64_t>();
  for (int64_t i = 0; i < 256; ++i) {
    const int64_t* xr = xv.data() + i * 12;
    const int64_t* yr = yv.data() + i * 12;
    int64_t a = xr[0] * 100 + xr[1] * 10 + xr[2], b = xr[4] * 100 + xr[5] * 10 + xr[6];
    REQUIRE(xr[3] == AdditionTask::kPlus);
    REQUIRE(xr[7] == AdditionTask::kEquals);
    REQUIRE_FALSE(task.is_held_out(a, b));
    for (int64_t t = 0; t < 7; ++t) REQUIRE(yr[t] == -100);  // prompt positions
    for (int64_t t = 7; t < 11; ++t) REQUIRE(yr[t] == xr[t + 1]);  // y is x shifted
    std::vector<int32_t> ans;
    for (int64_t t = 7; t < 12; ++t) ans.push_back(static_cast<int32_t>(yr[t]));
    REQUIRE(task.decode_answer(ans) == a + b);
  }
  // The same generator state gives the same batch.
  bb::Generator g1(3), g2(3);
  REQUIRE(task.batch(8, g1).first.to_vector<int64_t>() == task.batch(8, g2).first.to_vector<int64_t>());
}

TEST_CASE("AdditionTask held-out set: about 1 in 20 problems, fixed, all held out", "[io][addition]") {
  AdditionTask task(3);
  int64_t held = 0;
  for (int64_t a = 0; a < 1000; a += 7)
    for (int64_t b = 0; b < 1000; b += 3) held += task.is_held_out(a, b);
  const double frac = static_cast<double>(held) / (143.0 * 334.0);
  REQUIRE(frac > 0.04);
  REQUIRE(frac < 0.06);
  auto h1 = task.held_out(100), h2 = task.held_out(100);
  REQUIRE(h1 == h2);
  for (auto& [a, b] : h1) REQUIRE(task.is_held_out(a, b));
}

TEST_CASE("AdditionTask held-out problems are distinct; asking for too many throws", "[io][addition]") {
  AdditionTask task(3);
  auto h = task.held_out(2000);
  std::set<std::pair<int64_t, int64_t>> distinct(h.begin(), h.end());
  REQUIRE(distinct.size() == 2000);
  AdditionTask one(1);  // 100 problems, about 5 held out
  REQUIRE_THROWS_AS(one.held_out(100), bb::ValueError);
}
