// A rank that fails mid-training must bring the whole job down with a clear error in
// bounded time. Run under mpirun by expect_failure.sh with one of three modes:
//   throw  the last rank throws in its training step; main catches and calls abort_job
//   hang   the last rank stops calling collectives; the others time out in finish()
//   exit   the last rank throws and returns 1 without abort_job (a program without the helper)
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "barbell/barbell.hpp"

namespace bb = barbell;
namespace dist = barbell::dist;

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "throw";
  bb::set_num_threads(1);
  auto pg = dist::init_mpi();
  pg->set_timeout(2);
  const bool culprit = pg->rank() == pg->size() - 1;
  try {
    bb::nn::GPTConfig c = bb::nn::GPTConfig::tiny();
    c.vocab_size = bb::io::AdditionTask::kVocab;
    c.block_size = 16;
    bb::nn::GPT model(c);
    dist::DataParallel ddp(model, pg);
    bb::optim::AdamW opt(model.named_parameters(), {});
    bb::io::AdditionTask task(2);
    bb::Generator gen(pg->rank());
    for (int step = 0; step < 1000; ++step) {
      if (step == 2 && culprit) {
        if (mode == "hang") {
          std::fprintf(stderr, "[rank %d] stuck (not calling collectives) at step %d\n", pg->rank(), step);
          std::this_thread::sleep_for(std::chrono::seconds(120));
        } else {
          throw bb::Error(fmt::format("injected failure on rank {} at step {}", pg->rank(), step));
        }
      }
      auto [x, y] = task.batch(4, gen);
      model.loss(x, y).backward();
      ddp.finish();
      opt.step();
      opt.zero_grad();
    }
    std::printf("[rank %d] finished without noticing the failure\n", pg->rank());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[rank %d] error: %s\n", pg->rank(), e.what());
    if (mode == "exit") return 1;
    dist::abort_job(fmt::format("training failed: {}", e.what()));
    return 1;
  }
}
