// Bad-input cases for barbell-train, run as a subprocess ($BARBELL_TRAIN): every numeric
// flag out of its range, impossible sizes, and --resume from checkpoints and metrics logs
// damaged field by field (issue 11, item 9). A signal is a crash, exit 0 on a bad value is
// a wrong result, and a refusal must name the flag or field and the value.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>

#include "bad_input.hpp"
#include "barbell/barbell.hpp"

namespace bb = barbell;
namespace io = barbell::io;
namespace fs = std::filesystem;
using bad_input::Outcome;
using bad_input::Result;

namespace {

std::string scratch(const std::string& name) {
  std::string dir = bad_input::program("BARBELL_BAD_INPUT_TMP");
  if (dir.empty()) dir = "/tmp";
  return dir + "/train/" + name;
}

struct Run {
  bool ran = false, signaled = false;
  int code = 0;
  std::string out;  // stdout and stderr
};

Run run_train(const std::vector<std::string>& args) {
  Run r;
  const std::string exe = bad_input::program("BARBELL_TRAIN");
  if (exe.empty()) {
    r.out = "BARBELL_TRAIN is not set (the probe runs barbell-train from there)";
    return r;
  }
  fs::create_directories(scratch(""));
  const std::string out = scratch("output.txt");
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    std::vector<char*> argv{const_cast<char*>(exe.c_str())};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(exe.c_str(), argv.data());
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  std::ifstream f(out);
  r.out.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  r.ran = true;
  r.signaled = WIFSIGNALED(status);
  r.code = r.signaled ? WTERMSIG(status) : WEXITSTATUS(status);
  return r;
}

// The smallest run (a 1-layer model, 2 steps, no evaluation) with `flags` added; a flag
// given in `flags` replaces the base run's (CLI11 refuses a flag given twice).
std::vector<std::string> train_args(const std::string& out, const std::vector<std::string>& flags) {
  const std::vector<std::pair<std::string, std::string>> base = {
      {"--preset", "tiny"},     {"--n-layer", "1"}, {"--n-head", "2"},     {"--n-embd", "8"},
      {"--steps", "2"},         {"--batch", "4"},   {"--seed", "3"},       {"--threads", "1"},
      {"--eval-problems", "0"}, {"--samples", "0"}, {"--log-every", "100"}};
  std::vector<std::string> args = flags;
  for (const auto& [k, v] : base)
    if (std::find(flags.begin(), flags.end(), k) == flags.end() &&
        std::none_of(flags.begin(), flags.end(),
                     [&](const std::string& f) { return f.rfind(k + "=", 0) == 0; })) {
      args.push_back(k);
      args.push_back(v);
    }
  args.push_back("--out");
  args.push_back(out);
  return args;
}

// The error part of an output: its "error:" line, or CLI11's first line.
std::string error_line(const std::string& out) {
  const size_t e = out.find("error:");
  const size_t from = e == std::string::npos ? 0 : e;
  return out.substr(from, out.find('\n', from) - from);
}

Result classify_refusal(const Run& r, const std::vector<std::string>& mention) {
  if (!r.ran) return {Outcome::Wrong, r.out};
  if (r.signaled) return {Outcome::Crash, fmt::format("signal {}: {}", strsignal(r.code), error_line(r.out))};
  if (r.code == 0) return {Outcome::Wrong, "accepted (exit 0): " + r.out.substr(0, 300)};
  for (const char* raw : {"[json.exception", "bad_alloc", "terminate called", "length_error", "out_of_range"})
    if (r.out.find(raw) != std::string::npos) return {Outcome::Foreign, error_line(r.out)};
  for (const auto& m : mention)
    if (r.out.find(m) == std::string::npos)
      return {Outcome::BadMessage, fmt::format("message lacks '{}': {}", m, error_line(r.out))};
  return {Outcome::Refused, error_line(r.out)};
}

// The flags (added to the base run's) must be refused with a message naming `mention`.
Result flag_refused(std::vector<std::string> flags, const std::vector<std::string>& mention) {
  const std::string out = scratch("flags");
  fs::remove_all(out);
  return classify_refusal(run_train(train_args(out, flags)), mention);
}

// A run with these flags must succeed, and `ok` judge its output.
Result flag_accepted(std::vector<std::string> flags,
                     std::function<bool(const std::string&, std::string&)> ok) {
  const std::string out = scratch("flags");
  fs::remove_all(out);
  const Run r = run_train(train_args(out, flags));
  if (!r.ran) return {Outcome::Wrong, r.out};
  if (r.signaled) return {Outcome::Crash, fmt::format("signal {}", strsignal(r.code))};
  if (r.code != 0) return {Outcome::Wrong, "a legal run failed: " + error_line(r.out)};
  std::string detail;
  return {ok(r.out, detail) ? Outcome::Correct : Outcome::Wrong, detail};
}

// A trained run to resume from: 3 steps, a checkpoint each step (made once, then copied).
std::string base_run() {
  const std::string dir = scratch("base");
  if (!fs::exists(dir + "/checkpoint.safetensors")) {
    fs::remove_all(dir);
    const Run r = run_train(train_args(dir, {"--steps", "3", "--save-every", "1"}));
    if (!r.ran || r.signaled || r.code != 0) throw std::runtime_error("the base run failed: " + r.out);
  }
  return dir;
}

// A copy of the base run changed by `edit(dir)`, then resumed to step 5.
Run resume_after(const std::function<void(const std::string& dir)>& edit) {
  const std::string dir = scratch("case");
  fs::remove_all(dir);
  fs::copy(base_run(), dir);
  edit(dir);
  return run_train(train_args(dir, {"--steps", "5", "--save-every", "1", "--resume"}));
}

// Rewrites the checkpoint with edited metadata or tensors (fresh checksums: the edit is
// then the only thing wrong with it).
void edit_checkpoint(const std::string& dir, const std::function<void(io::Safetensors&)>& edit) {
  const std::string path = dir + "/checkpoint.safetensors";
  io::Safetensors f = io::load_safetensors(path);
  edit(f);
  io::save_safetensors(path, f.tensors, f.metadata);
}

void replace_in(std::string& s, const std::string& from, const std::string& to) {
  const size_t at = s.find(from);
  if (at == std::string::npos) throw std::runtime_error("'" + from + "' not in '" + s + "'");
  s.replace(at, from.size(), to);
}

Result state_refused(const std::string& from, const std::string& to,
                     const std::vector<std::string>& mention) {
  return classify_refusal(resume_after([&](const std::string& dir) {
                            edit_checkpoint(dir, [&](io::Safetensors& f) {
                              replace_in(f.metadata["barbell.train_state"], from, to);
                            });
                          }),
                          mention);
}

// The train_state with field `key`'s value replaced by `value` ("<erase>": the field removed).
Result field_refused(const std::string& key, const std::string& value,
                     const std::vector<std::string>& mention) {
  return classify_refusal(resume_after([&](const std::string& dir) {
                            edit_checkpoint(dir, [&](io::Safetensors& f) {
                              std::string& st = f.metadata["barbell.train_state"];
                              const std::string k = "\"" + key + "\":";
                              const size_t a = st.find(k);
                              if (a == std::string::npos) throw std::runtime_error(key + " not in " + st);
                              const size_t b = st.find_first_of(",}", a + k.size());
                              if (value == "<erase>")
                                st.erase(st[a - 1] == ',' ? a - 1 : a, b - a + (st[a - 1] == ',' ? 1 : 0));
                              else
                                st.replace(a + k.size(), b - a - k.size(), value);
                            });
                          }),
                          mention);
}

Result meta_refused(const std::string& key, const std::string& value,
                    const std::vector<std::string>& mention) {
  return classify_refusal(resume_after([&](const std::string& dir) {
                            edit_checkpoint(dir, [&](io::Safetensors& f) {
                              if (value == "<erase>")
                                f.metadata.erase(key);
                              else
                                f.metadata[key] = value;
                            });
                          }),
                          mention);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}
void write_file(const std::string& path, const std::string& s) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << s;
}

}  // namespace

// ---- flags --------------------------------------------------------------------------------
#define FLAG_CASE(flag, value, ...)                          \
  BAD_INPUT_CASE("barbell-train flags", flag " " value) {    \
    return flag_refused({flag, value}, {flag, __VA_ARGS__}); \
  }
FLAG_CASE("--lr", "-1", "-1", ">= 0")
FLAG_CASE("--lr", "nan", "nan")
FLAG_CASE("--lr", "inf", "inf", "finite")
FLAG_CASE("--lr", "abc", "abc", "not a number")
FLAG_CASE("--lr", "1e400", "1e400")
FLAG_CASE("--min-lr", "-0.1", "-0.1")
FLAG_CASE("--weight-decay", "-0.1", "-0.1")
FLAG_CASE("--weight-decay", "nan", "nan")
FLAG_CASE("--grad-clip", "0", "0", "> 0")
FLAG_CASE("--grad-clip", "-1", "-1")
FLAG_CASE("--grad-clip", "inf", "inf")
FLAG_CASE("--dropout", "1", "1", "[0, 1)")
FLAG_CASE("--dropout", "-0.1", "-0.1")
FLAG_CASE("--threads", "-1", "-1")
FLAG_CASE("--threads", "100000", "100000", "[0, 1024]")
FLAG_CASE("--save-every", "-3", "-3")
FLAG_CASE("--eval-every", "-1", "-1")
FLAG_CASE("--log-every", "0", "0", ">= 1")
FLAG_CASE("--time-limit", "-1", "-1")
FLAG_CASE("--time-limit", "nan", "nan")
FLAG_CASE("--eval-problems", "-5", "-5")
FLAG_CASE("--eval-problems", "2000000", "2000000", "1000000")
FLAG_CASE("--samples", "-1", "-1")
FLAG_CASE("--steps", "0", "0")
FLAG_CASE("--steps", "-1", "-1")
FLAG_CASE("--steps", "1e3", "1e3", "not an integer")
FLAG_CASE("--steps", "1152921504606846976", "1152921504606846976", "2^53")
FLAG_CASE("--steps", "99999999999999999999", "99999999999999999999")
FLAG_CASE("--batch", "0", "0")
FLAG_CASE("--seq-len", "0", "0")
FLAG_CASE("--warmup", "-5", "-5")
FLAG_CASE("--n-layer", "-1", "-1")
FLAG_CASE("--n-embd", "-8", "-8")
FLAG_CASE("--digits", "0", "0", "[1, 9]")
FLAG_CASE("--digits", "10", "10")
FLAG_CASE("--seed", "-1", "-1")
FLAG_CASE("--preset", "huge", "huge")
FLAG_CASE("--dtype", "f8", "f8")
FLAG_CASE("--attention", "fast", "fast")
FLAG_CASE("--device", "foo", "foo")
BAD_INPUT_CASE("barbell-train flags", "--device cuda:7 (no such GPU)") {
  return flag_refused({"--device", "cuda:7"}, {"--device", "cuda:7"});
}
BAD_INPUT_CASE("barbell-train flags", "--batch 100000000000 (std::bad_alloc before)") {
  return flag_refused({"--batch", "100000000000"}, {"--batch 100000000000", "do not fit", "GiB"});
}
BAD_INPUT_CASE("barbell-train flags", "--n-embd 100000 (std::bad_alloc before)") {
  return flag_refused({"--n-embd", "100000", "--n-head", "4"}, {"--n-embd 100000", "do not fit"});
}
BAD_INPUT_CASE("barbell-train flags", "--n-layer 100000000 --n-embd 1024") {
  return flag_refused({"--n-layer", "100000000", "--n-embd", "1024"}, {"--n-layer 100000000", "do not fit"});
}
BAD_INPUT_CASE("barbell-train flags", "--n-embd 9223372036854775807 (int64 max)") {
  return flag_refused({"--n-embd", "9223372036854775807", "--n-head", "1"}, {"--n-embd 9223372036854775807"});
}
BAD_INPUT_CASE("barbell-train flags", "--n-head 3 with --n-embd 8") {
  return flag_refused({"--n-head", "3"}, {"--n-head", "--n-embd", "8", "3"});
}
BAD_INPUT_CASE("barbell-train flags", "--n-head 16 with --n-embd 8") {
  return flag_refused({"--n-head", "16"}, {"--n-head", "16"});
}
BAD_INPUT_CASE("barbell-train flags", "--eval-problems 10 --digits 1 (9 held-out problems exist)") {
  return flag_refused({"--eval-problems", "10", "--digits", "1"}, {"--eval-problems 10", "--digits 1"});
}
BAD_INPUT_CASE("barbell-train flags", "--data of a missing file") {
  return flag_refused({"--data", scratch("no_such_data.txt")}, {"no_such_data.txt", "cannot open"});
}
BAD_INPUT_CASE("barbell-train flags", "--seq-len 9223372036854775807 with --data (seq_len + 1 overflowed)") {
  write_file(scratch("text.txt"),
             "some text to train on, a few hundred bytes of it. " + std::string(300, 'x'));
  return flag_refused({"--data", scratch("text.txt"), "--seq-len", "9223372036854775807"},
                      {"--seq-len", "9223372036854775807"});
}
BAD_INPUT_CASE("barbell-train flags", "--seq-len 1000 with --data of 350 bytes") {
  write_file(scratch("text.txt"),
             "some text to train on, a few hundred bytes of it. " + std::string(300, 'x'));
  return flag_refused({"--data", scratch("text.txt"), "--seq-len", "1000"}, {"--seq-len 1000", "too few"});
}
BAD_INPUT_CASE("barbell-train flags", "--data of an empty file") {
  write_file(scratch("empty.txt"), "");
  return flag_refused({"--data", scratch("empty.txt")}, {"empty.txt", "empty"});
}
BAD_INPUT_CASE("barbell-train flags", "--data with --seq-len 64: trains on the text") {
  write_file(scratch("text.txt"),
             "some text to train on, a few hundred bytes of it. " + std::string(300, 'x'));
  return flag_accepted({"--data", scratch("text.txt"), "--seq-len", "64", "--samples", "1"},
                       [](const std::string& out, std::string& d) {
                         d = out.find("validation loss") != std::string::npos ? "evaluated"
                                                                              : "no validation loss";
                         return out.find("validation loss") != std::string::npos;
                       });
}
BAD_INPUT_CASE("barbell-train flags", "--eval-problems -5 after training (SIGSEGV before)") {
  return flag_refused({"--eval-problems=-5"}, {"--eval-problems", "-5"});
}
BAD_INPUT_CASE("barbell-train flags", "--threads 1000: capped at the cores, with a note") {
  return flag_accepted({"--threads", "1000"}, [](const std::string& out, std::string& d) {
    d = error_line(out.substr(out.find("note:") == std::string::npos ? 0 : out.find("note:")));
    return out.find("note: --threads 1000") != std::string::npos &&
           out.find("1000 CPU threads") == std::string::npos;
  });
}
BAD_INPUT_CASE("barbell-train flags", "--lr 0 (legal): trains, loss finite") {
  return flag_accepted({"--lr", "0", "--min-lr", "0"}, [](const std::string& out, std::string& d) {
    d = out.find("done in") != std::string::npos ? "done" : "no 'done' line";
    return out.find("done in") != std::string::npos;
  });
}

// ---- resume -------------------------------------------------------------------------------
BAD_INPUT_CASE("barbell-train resume", "train_state step -3") {
  return field_refused("step", "-3", {"--resume", "'step'", "-3"});
}
BAD_INPUT_CASE("barbell-train resume", "train_state step 1e300") {
  return field_refused("step", "1e300", {"--resume", "'step'", "1e+300"});
}
BAD_INPUT_CASE("barbell-train resume", "train_state step 2.5") {
  return field_refused("step", "2.5", {"'step'", "2.5"});
}
BAD_INPUT_CASE("barbell-train resume", "train_state step \"3\" (a string)") {
  return field_refused("step", "\"3\"", {"'step'", "\"3\""});
}
BAD_INPUT_CASE("barbell-train resume", "train_state step 2 (the optimizer is at 3)") {
  return field_refused("step", "2", {"optimizer state is at step 3", "2"});
}
BAD_INPUT_CASE("barbell-train resume", "train_state step missing") {
  return field_refused("step", "<erase>", {"barbell.train_state", "no 'step'"});
}
BAD_INPUT_CASE("barbell-train resume", "data offset -5") {
  return field_refused("offset", "-5", {"'data.offset'", "-5"});
}
BAD_INPUT_CASE("barbell-train resume", "data offset 1e30 (a float)") {
  return field_refused("offset", "1e30", {"'data.offset'", "1e+30"});
}
BAD_INPUT_CASE("barbell-train resume", "data an array") {
  return classify_refusal(resume_after([](const std::string& dir) {
                            edit_checkpoint(dir, [](io::Safetensors& f) {
                              std::string& st = f.metadata["barbell.train_state"];
                              const size_t a = st.find("\"data\":") + 7, b = st.find('}', a) + 1;
                              st.replace(a, b - a, "[1,2]");
                            });
                          }),
                          {"'data'", "[1,2]", "not an object"});
}
BAD_INPUT_CASE("barbell-train resume", "data of a token source (batches) for the addition task") {
  return state_refused("\"offset\"", "\"batches\"", {"'batches'", "another data source"});
}
BAD_INPUT_CASE("barbell-train resume", "rng_seed -1") {
  return field_refused("rng_seed", "-1", {"'rng_seed'", "-1"});
}
BAD_INPUT_CASE("barbell-train resume", "rng_offset true") {
  return field_refused("rng_offset", "true", {"'rng_offset'", "true"});
}
BAD_INPUT_CASE("barbell-train resume", "rng_offset missing") {
  return field_refused("rng_offset", "<erase>", {"no 'rng_offset'"});
}
BAD_INPUT_CASE("barbell-train resume", "an unknown field") {
  return state_refused("\"rng_offset\"", "\"rng_offzet\"", {"unexpected field 'rng_offzet'"});
}
BAD_INPUT_CASE("barbell-train resume", "the key step twice") {
  return state_refused("\"step\":", "\"step\":0,\"step\":", {"'step'", "twice"});
}
BAD_INPUT_CASE("barbell-train resume", "train_state not JSON") {
  return meta_refused("barbell.train_state", "{garbage", {"barbell.train_state", "not valid JSON"});
}
BAD_INPUT_CASE("barbell-train resume", "train_state nested 100,000 deep") {
  return meta_refused("barbell.train_state", std::string(100000, '[') + std::string(100000, ']'),
                      {"barbell.train_state", "nested deeper"});
}
BAD_INPUT_CASE("barbell-train resume", "train_state a JSON array") {
  return meta_refused("barbell.train_state", "[1, 2]", {"barbell.train_state", "not a JSON object"});
}
BAD_INPUT_CASE("barbell-train resume", "train_state missing") {
  return meta_refused("barbell.train_state", "<erase>", {"no barbell.train_state"});
}
BAD_INPUT_CASE("barbell-train resume", "barbell.run not JSON") {
  return meta_refused("barbell.run", "{{{", {"barbell.run", "not valid JSON"});
}
BAD_INPUT_CASE("barbell-train resume", "barbell.run nested 100,000 deep") {
  return meta_refused("barbell.run", std::string(100000, '[') + std::string(100000, ']'),
                      {"barbell.run", "nested deeper"});
}
BAD_INPUT_CASE("barbell-train resume", "barbell.run of another learning rate") {
  return classify_refusal(resume_after([](const std::string& dir) {
                            edit_checkpoint(dir, [](io::Safetensors& f) {
                              replace_in(f.metadata["barbell.run"], "\"lr\":0.002", "\"lr\":0.5");
                            });
                          }),
                          {"--lr", "0.5", "other settings"});
}
BAD_INPUT_CASE("barbell-train resume", "another model's checkpoint") {
  return meta_refused("barbell.model", "{\"n_layer\":7}", {"--resume", "n_layer", "7"});
}
BAD_INPUT_CASE("barbell-train resume", "optimizer step 1e300 (an f64 tensor)") {
  return classify_refusal(resume_after([](const std::string& dir) {
                            edit_checkpoint(dir, [](io::Safetensors& f) {
                              for (auto& [n, t] : f.tensors)
                                if (n == "optimizer.step")
                                  t = bb::from_vector<double>({1e300}, {}, {bb::kF64});
                            });
                          }),
                          {"'step'", "1e+300"});
}
BAD_INPUT_CASE("barbell-train resume", "exp_avg_sq with a negative element") {
  return classify_refusal(resume_after([](const std::string& dir) {
                            edit_checkpoint(dir, [](io::Safetensors& f) {
                              for (auto& [n, t] : f.tensors)
                                if (n == "optimizer.transformer.wte.weight.exp_avg_sq") {
                                  t = t.clone();
                                  t.data<float>()[5] = -1.0f;
                                }
                            });
                          }),
                          {"exp_avg_sq'", "-1", "flat index 5"});
}
BAD_INPUT_CASE("barbell-train resume", "a model weight of the wrong shape") {
  return classify_refusal(resume_after([](const std::string& dir) {
                            edit_checkpoint(dir, [](io::Safetensors& f) {
                              for (auto& [n, t] : f.tensors)
                                if (n == "transformer.wpe.weight") t = bb::zeros({3, 3});
                            });
                          }),
                          {"transformer.wpe.weight", "[3, 3]"});
}
BAD_INPUT_CASE("barbell-train resume", "one flipped bit in the tensor bytes (loss nan at step 4 before)") {
  return classify_refusal(resume_after([](const std::string& dir) {
                            const std::string path = dir + "/checkpoint.safetensors";
                            std::string b = read_file(path);
                            b[b.size() - 100] = static_cast<char>(b[b.size() - 100] ^ 0x40);
                            write_file(path, b);
                          }),
                          {"checkpoint.safetensors", "damaged", "CRC-32C"});
}
BAD_INPUT_CASE("barbell-train resume", "the checkpoint cut in half") {
  return classify_refusal(resume_after([](const std::string& dir) {
                            const std::string path = dir + "/checkpoint.safetensors";
                            const std::string b = read_file(path);
                            write_file(path, b.substr(0, b.size() / 2));
                          }),
                          {"checkpoint.safetensors", "load_safetensors"});
}
BAD_INPUT_CASE("barbell-train resume", "a checkpoint header nested 100,000 deep (SIGSEGV before)") {
  return classify_refusal(resume_after([](const std::string& dir) {
                            std::string h = R"({"a":{"dtype":"F32","shape":)" + std::string(100000, '[') +
                                            std::string(100000, ']') + R"(,"data_offsets":[0,0]}})";
                            h.append((8 - h.size() % 8) % 8, ' ');
                            std::string len(8, '\0');
                            for (int i = 0; i < 8; ++i)
                              len[i] = static_cast<char>((h.size() >> (8 * i)) & 0xff);
                            write_file(dir + "/checkpoint.safetensors", len + h);
                          }),
                          {"checkpoint.safetensors", "nested deeper"});
}
BAD_INPUT_CASE("barbell-train resume", "no checkpoint") {
  return classify_refusal(
      resume_after([](const std::string& dir) { fs::remove(dir + "/checkpoint.safetensors"); }),
      {"checkpoint.safetensors", "cannot open"});
}
BAD_INPUT_CASE("barbell-train resume", "a metrics line that is not JSON") {
  return classify_refusal(resume_after([](const std::string& dir) {
                            std::string m = read_file(dir + "/metrics.jsonl");
                            m.insert(m.find('\n') + 1, "garbage\n");
                            write_file(dir + "/metrics.jsonl", m);
                          }),
                          {"metrics.jsonl line 2", "not valid JSON"});
}
BAD_INPUT_CASE("barbell-train resume", "a metrics line whose step is a string") {
  return classify_refusal(resume_after([](const std::string& dir) {
                            write_file(dir + "/metrics.jsonl",
                                       read_file(dir + "/metrics.jsonl") + "{\"step\":\"x\"}\n");
                          }),
                          {"metrics.jsonl line", "integer \"step\"", "\"x\""});
}
BAD_INPUT_CASE("barbell-train resume", "a metrics line nested 100,000 deep") {
  return classify_refusal(resume_after([](const std::string& dir) {
                            write_file(dir + "/metrics.jsonl",
                                       std::string(100000, '[') + std::string(100000, ']') + "\n");
                          }),
                          {"metrics.jsonl line 1", "nested deeper"});
}
BAD_INPUT_CASE("barbell-train resume",
               "a metrics line cut short by a kill: dropped, one line per step after") {
  const Run r = resume_after([](const std::string& dir) {
    write_file(dir + "/metrics.jsonl", read_file(dir + "/metrics.jsonl") + "{\"step\":4,\"lo");
  });
  if (r.signaled || r.code != 0) return classify_refusal(r, {});
  std::string log = read_file(scratch("case/metrics.jsonl")), steps;
  for (size_t at = 0; (at = log.find("\"loss\"", at)) != std::string::npos; ++at) {
    const size_t s = log.rfind("\"step\":", log.find('}', at)) + 7;
    steps += log.substr(s, log.find_first_of(",}", s) - s) + " ";
  }
  const bool ok = r.out.find("cut short") != std::string::npos && steps == "1 2 3 4 5 ";
  return {ok ? Outcome::Correct : Outcome::Wrong, "training lines for steps " + steps};
}
BAD_INPUT_CASE("barbell-train resume",
               "a checkpoint without checksums (an older barbell): resumes with a note") {
  const Run r = resume_after([](const std::string& dir) {
    // The reference layout of a file without barbell's checksum key: rewrite the header by hand.
    const std::string path = dir + "/checkpoint.safetensors";
    std::string b = read_file(path);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = n << 8 | static_cast<unsigned char>(b[static_cast<size_t>(i)]);
    std::string h = b.substr(8, n);
    const size_t k = h.find("\"barbell.crc32c\":\"");
    const size_t end = h.find("}\",", k) + 3;  // the checksum string ends with }", before the next key
    h.erase(k, end - k);
    h.append((8 - h.size() % 8) % 8, ' ');
    std::string len(8, '\0');
    for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((h.size() >> (8 * i)) & 0xff);
    write_file(path, len + h + b.substr(8 + n));
  });
  if (r.signaled || r.code != 0) return {Outcome::Wrong, "did not resume: " + error_line(r.out)};
  const bool ok = r.out.find("no tensor checksums") != std::string::npos;
  return {ok ? Outcome::Correct : Outcome::Wrong,
          ok ? "resumed, with the note" : "no note: " + r.out.substr(0, 200)};
}
BAD_INPUT_CASE("barbell-train resume", "temp checkpoints of killed runs are removed by the next save") {
  const Run r = resume_after([](const std::string& dir) {
    write_file(dir + "/checkpoint.safetensors.tmp.999999999", "left by a killed run");
  });
  if (r.signaled || r.code != 0) return {Outcome::Wrong, "did not resume: " + error_line(r.out)};
  const bool gone = !fs::exists(scratch("case/checkpoint.safetensors.tmp.999999999"));
  return {gone ? Outcome::Correct : Outcome::Wrong, gone ? "removed" : "still there"};
}
BAD_INPUT_CASE("barbell-train resume", "a token source's batch count that disagrees with the step") {
  const std::string dir = scratch("tokens");
  fs::remove_all(dir);
  write_file(scratch("text.txt"),
             "some text to train on, a few hundred bytes of it. " + std::string(300, 'x'));
  const std::vector<std::string> flags = {"--data", scratch("text.txt"), "--seq-len",
                                          "16",     "--save-every",      "1"};
  std::vector<std::string> first = flags, again = flags;
  first.insert(first.end(), {"--steps", "3"});
  again.insert(again.end(), {"--steps", "5", "--resume"});
  const Run r0 = run_train(train_args(dir, first));
  if (!r0.ran || r0.signaled || r0.code != 0)
    return {Outcome::Wrong, "the first run failed: " + error_line(r0.out)};
  edit_checkpoint(dir, [](io::Safetensors& f) {
    replace_in(f.metadata["barbell.train_state"], "\"batches\":3", "\"batches\":2");
  });
  return classify_refusal(run_train(train_args(dir, again)), {"data position is 2 batches", "step 3"});
}
