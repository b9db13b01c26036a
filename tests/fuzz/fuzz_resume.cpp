// libFuzzer harness for barbell-train's resume path (train::resume_checkpoint, the code
// --resume runs): any checkpoint bytes must resume or throw barbell::Error. The model,
// optimizer and run settings are those of the seed checkpoints, made by
//   barbell-train --preset tiny --n-layer 1 --n-head 2 --n-embd 8 --digits 1 --steps 2 --batch 4
//                 --eval-problems 0 --samples 0 --seed 1 --out DIR
// (scripts/fuzz.sh makes them), so that mutations of a valid file reach every check.
#include <cstdlib>

#include "barbell/barbell.hpp"
#include "fuzz_common.hpp"
#include "train_checkpoint.hpp"

namespace bb = barbell;

namespace {

struct Target {
  bb::nn::GPTConfig cfg;
  std::unique_ptr<bb::nn::GPT> model;
  std::unique_ptr<bb::optim::AdamW> opt;
  train::ResumeExpect expect;
};

Target& target() {
  static Target t = [] {
    Target x;
    x.cfg = bb::nn::GPTConfig::tiny();
    x.cfg.n_layer = 1;
    x.cfg.n_head = 2;
    x.cfg.n_embd = 8;
    x.cfg.vocab_size = bb::io::AdditionTask::kVocab;
    x.cfg.block_size = bb::io::AdditionTask(1).seq_len();
    x.cfg.seed = 1;
    x.model = std::make_unique<bb::nn::GPT>(x.cfg);
    x.opt = std::make_unique<bb::optim::AdamW>(x.model->named_parameters(), bb::optim::AdamWOptions{});
    x.expect.model_json = train::model_json(x.cfg);
    // barbell-train's run_json for the flags above.
    x.expect.run = train::json::parse(
        R"({"batch":4,"data":"addition","digits":1,"dropout":0.0,"dtype":"f32","grad_clip":1.0,"lr":0.002,)"
        R"("min_lr":0.0002,"reverse":false,"seed":1,"seq_len":0,"warmup":50,"weight_decay":0.1})");
    x.expect.data_like = {{"offset", 0}};
    return x;
  }();
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  bb::set_num_threads(1);
  target();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Target& t = target();
  const std::string path = fuzz::input_file("checkpoint.safetensors", data, size);
  // BARBELL_FUZZ_EXPECT_OK=1: every input must resume (scripts/fuzz.sh checks the seeds so).
  // (libFuzzer runs the empty input first: not a seed.)
  static const bool expect_ok = std::getenv("BARBELL_FUZZ_EXPECT_OK") != nullptr;
  if (expect_ok && size == 0) return 0;
  try {
    std::string note;
    const train::TrainState s = train::resume_checkpoint(path, t.expect, *t.model, *t.opt, &note);
    if (s.step != t.opt->steps() || s.step < 0)
      fuzz::finding("resume returned a step the optimizer does not hold");
  } catch (const bb::Error& e) {
    if (expect_ok) {
      std::fprintf(stderr, "barbell fuzz: a seed did not resume: %s\n", e.what());
      std::abort();
    }
  }
  return 0;
}
