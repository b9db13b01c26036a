// barbell-train's checkpoints and metrics log: resuming from a checkpoint with everything
// it holds validated, and metrics.jsonl written line by line and trimmed on resume.
// Its own file so that the resume fuzzer (tests/fuzz) runs the code barbell-train runs.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "barbell/barbell.hpp"

namespace train {

using json = nlohmann::json;

// Parses JSON that came from a file (checkpoint metadata), with at most `max_depth` open
// objects and arrays (a DOM nested deeper would overflow the stack when copied, compared
// or printed) and no key twice in an object. Any failure is an IOError "<what>: ...".
json parse_json_checked(const std::string& text, const std::string& what, size_t max_depth = 4);

// The model config a checkpoint's "barbell.model" metadata holds (compared as text).
std::string model_json(const barbell::nn::GPTConfig& c);

// Where training stands, as the checkpoint's "barbell.train_state" metadata records it.
struct TrainState {
  int64_t step = 0;
  json data;  // the data source's position (Source::state()): {"offset": n} or {"batches": n}
  uint64_t rng_seed = 0, rng_offset = 0;
};
std::string train_state_json(const TrainState& s);
// Every field present and of its type: step an integer in [0, 2^53], data an object with
// exactly the keys of `data_like` (the running source's state()), each an unsigned
// integer, and rng_seed / rng_offset unsigned integers. IOError naming the field otherwise.
TrainState parse_train_state(const std::string& text, const json& data_like, const std::string& what);

// What a checkpoint must agree with to be resumed.
struct ResumeExpect {
  std::string model_json;  // the model config (exact match)
  json run;                // the settings that change the losses (each must match)
  json data_like;          // the data source's state(), for its keys
};
// Loads `ckpt` into `model` and `opt` after checking everything first: the file
// (load_safetensors: bounds, sizes, per-tensor checksums), the model config, the run
// settings, the training state, and that the optimizer's step count equals the state's
// step (a token source's batch count too). Returns the state; `note` gets a line to print
// when the file had no checksums (written before barbell wrote them). Throws a
// barbell::Error naming the file and the fault; nothing is changed when the file itself
// is bad, while a state the model or optimizer refuses may leave them partly loaded.
TrainState resume_checkpoint(const std::string& ckpt, const ResumeExpect& expect, barbell::nn::GPT& model,
                             barbell::optim::Optimizer& opt, std::string* note);

// metrics.jsonl: one JSON object per line, each line handed to the kernel as it is
// written (a killed run loses no line), and fsync'ed by sync() before each checkpoint, so
// that a checkpoint never outlives the lines of the steps it contains.
class MetricsLog {
 public:
  MetricsLog() = default;
  MetricsLog(const std::string& path, bool append);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  MetricsLog(MetricsLog&& o) noexcept;
  MetricsLog& operator=(MetricsLog&& o) noexcept;

  void write(const json& line);
  void sync();
  bool is_open() const { return f_ != nullptr; }

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
};

// On resume: keeps the lines of steps <= `step` (those steps are not run again), so that
// the resumed run leaves exactly one line per step; rewritten atomically (temp file,
// rename). A last line without its newline is a write the kill interrupted: dropped, with
// a note. Any other line that is not a JSON object with an integer "step" is an IOError
// naming the file and the line: a damaged log is not silently cut. A missing file is
// an empty log. `note` also says when the kept lines do not hold one training line per
// step (a log lost, or written by a barbell-train that buffered its lines).
void trim_metrics(const std::string& path, int64_t step, std::string* note);

}  // namespace train
