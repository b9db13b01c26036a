// The CPU thread pool (cpu::parallel_for): every index once, nesting, exceptions, two
// callers at once; and training results that do not depend on the thread count.
#include <atomic>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cpu/gemm.hpp"
#include "cpu/parallel.hpp"
#include "testing.hpp"

namespace bb = barbell;

namespace {

// Restores the thread count a test changed.
struct ThreadsGuard {
  int saved = bb::num_threads();
  ~ThreadsGuard() { bb::set_num_threads(saved); }
};

// Losses and final parameters of a few AdamW steps of a tiny GPT (with dropout, so the
// random masks are in it too).
std::pair<std::vector<double>, std::vector<bb::Tensor>> train_tiny() {
  auto cfg = bb::nn::GPTConfig::tiny();
  cfg.dropout = 0.1;
  bb::nn::GPT model(cfg);
  bb::optim::AdamW opt(model.named_parameters(), {});
  bb::Generator gen(5);
  bb::Tensor x = bb::randint(0, cfg.vocab_size, {8, 64}, {bb::DType::I64}, &gen);
  bb::Tensor y = bb::randint(0, cfg.vocab_size, {8, 64}, {bb::DType::I64}, &gen);
  bb::manual_seed(11);
  std::vector<double> losses;
  for (int s = 0; s < 3; ++s) {
    bb::Tensor loss = model.loss(x, y);
    loss.backward();
    bb::optim::clip_grad_norm_(model.parameters(), 1.0);
    opt.step();
    opt.zero_grad();
    losses.push_back(loss.item<double>());
  }
  std::vector<bb::Tensor> params;
  for (auto& p : model.parameters()) params.push_back(p.detach().clone());
  return {losses, params};
}

}  // namespace

TEST_CASE("parallel_for: covers [0, n) exactly once at every thread count", "[cpu][parallel]") {
  ThreadsGuard g;
  for (int threads : {1, 2, 3, 5}) {
    bb::set_num_threads(threads);
    REQUIRE(bb::num_threads() == threads);
    for (int64_t n : {int64_t(0), int64_t(1), int64_t(7), int64_t(1000), int64_t(100003)}) {
      for (int64_t grain : {int64_t(1), int64_t(16), int64_t(5000)}) {
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        std::atomic<int> empty_chunks{0};  // Catch's REQUIRE is not for other threads
        bb::cpu::parallel_for(n, grain, [&](int64_t b, int64_t e) {
          if (b >= e) empty_chunks++;
          for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;
        });
        REQUIRE(empty_chunks.load() == 0);
        for (int64_t i = 0; i < n; ++i) REQUIRE(hits[static_cast<size_t>(i)].load() == 1);
      }
    }
  }
  REQUIRE_THROWS_AS(bb::set_num_threads(0), bb::ValueError);
}

TEST_CASE("parallel_for: nested loops run, an exception reaches the caller", "[cpu][parallel]") {
  ThreadsGuard g;
  bb::set_num_threads(2);
  std::atomic<int64_t> total{0};
  bb::cpu::parallel_for(64, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      bb::cpu::parallel_for(100, 1, [&](int64_t b2, int64_t e2) { total += e2 - b2; });
  });
  REQUIRE(total.load() == 6400);
  REQUIRE_THROWS_WITH(bb::cpu::parallel_for(1000, 1,
                                            [&](int64_t b, int64_t) {
                                              if (b > 500) throw std::runtime_error("chunk failed");
                                            }),
                      "chunk failed");
  // The pool still works afterwards.
  std::atomic<int64_t> n{0};
  bb::cpu::parallel_for(1000, 1, [&](int64_t b, int64_t e) { n += e - b; });
  REQUIRE(n.load() == 1000);
}

TEST_CASE("parallel_for: two threads calling at once both finish", "[cpu][parallel]") {
  ThreadsGuard g;
  bb::set_num_threads(2);
  std::atomic<int64_t> a{0}, b{0};
  auto work = [](std::atomic<int64_t>& acc) {
    for (int r = 0; r < 200; ++r)
      bb::cpu::parallel_for(5000, 100, [&](int64_t x, int64_t y) { acc += y - x; });
  };
  std::thread t1(work, std::ref(a)), t2(work, std::ref(b));
  t1.join();
  t2.join();
  REQUIRE(a.load() == 200 * 5000);
  REQUIRE(b.load() == 200 * 5000);
}

TEST_CASE("training: losses and weights are bit-identical at 1, 2 and 3 threads", "[cpu][parallel][train]") {
  ThreadsGuard g;
  const std::string saved = bb::cpu::gemm_backend();
  for (const char* gemm : {"openblas", "onednn"}) {
    if (std::string(gemm) == "onednn" && saved != "onednn") continue;  // oneDNN is not installed
    INFO("GEMM " << gemm);
    bb::cpu::set_gemm_backend(gemm);
    bb::set_num_threads(1);
    auto [l1, p1] = train_tiny();
    for (int threads : {2, 3}) {
      INFO(threads << " threads");
      bb::set_num_threads(threads);
      auto [ln, pn] = train_tiny();
      REQUIRE(ln == l1);
      REQUIRE(pn.size() == p1.size());
      for (size_t i = 0; i < pn.size(); ++i) bbtest::require_close(pn[i], p1[i], 0, 0);
    }
  }
  bb::cpu::set_gemm_backend(saved.c_str());
}
