// barbell-train's resume path (checkpoint metadata parsed within bounds and validated
// field by field) and its metrics log (line-flushed, fsync'ed with each checkpoint, trimmed on resume).
#include "train_checkpoint.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <set>
#include <vector>

namespace bb = barbell;

namespace train {

namespace {

// A value for an error message: JSON from a file can be long.
std::string short_dump(const json& v) {
  std::string s = v.dump();
  return s.size() > 80 ? s.substr(0, 77) + "..." : s;
}

// nlohmann's message without its "[json.exception.parse_error.101] " tag.
std::string json_reason(const std::exception& e) {
  std::string s = e.what();
  if (s.rfind("[json.exception.", 0) == 0 && s.find("] ") != std::string::npos)
    s = s.substr(s.find("] ") + 2);
  return s;
}

constexpr uint64_t kMaxStep = uint64_t{1} << 53;  // as the optimizers' state

}  // namespace

json parse_json_checked(const std::string& text, const std::string& what, size_t max_depth) {
  std::vector<std::set<std::string>> open;  // the keys seen by each open object (arrays: empty)
  auto cb = [&](int /*depth*/, json::parse_event_t ev, json& parsed) -> bool {
    switch (ev) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (open.size() >= max_depth)
          throw bb::IOError(
              fmt::format("{}: nested deeper than {} levels of objects and arrays", what, max_depth));
        open.emplace_back();
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!open.empty()) open.pop_back();
        break;
      case json::parse_event_t::key:
        if (!open.empty() && !open.back().insert(parsed.get<std::string>()).second)
          throw bb::IOError(fmt::format("{}: the key '{}' appears twice", what, parsed.get<std::string>()));
        break;
      case json::parse_event_t::value: break;
    }
    return true;
  };
  try {
    return json::parse(text, cb);
  } catch (const bb::Error&) { throw; } catch (const std::exception& e) {
    throw bb::IOError(fmt::format("{}: not valid JSON: {}", what, json_reason(e)));
  }
}

std::string model_json(const bb::nn::GPTConfig& c) {
  return json{{"vocab_size", c.vocab_size}, {"block_size", c.block_size}, {"n_layer", c.n_layer},
              {"n_head", c.n_head},         {"n_embd", c.n_embd},         {"bias", c.bias}}
      .dump();
}

std::string train_state_json(const TrainState& s) {
  return json{{"step", s.step}, {"data", s.data}, {"rng_seed", s.rng_seed}, {"rng_offset", s.rng_offset}}
      .dump();
}

TrainState parse_train_state(const std::string& text, const json& data_like, const std::string& what) {
  const json st = parse_json_checked(text, what);
  auto fail = [&](const std::string& why) { return bb::IOError(fmt::format("{}: {}", what, why)); };
  if (!st.is_object()) throw fail(fmt::format("not a JSON object: {}", short_dump(st)));
  for (auto it = st.begin(); it != st.end(); ++it)
    if (it.key() != "step" && it.key() != "data" && it.key() != "rng_seed" && it.key() != "rng_offset")
      throw fail(fmt::format("unexpected field '{}'", it.key()));
  auto field = [&](const json& obj, const std::string& k) -> const json& {
    auto it = obj.find(k);
    if (it == obj.end()) throw fail(fmt::format("no '{}'", k));
    return *it;
  };
  auto unsigned_field = [&](const json& obj, const std::string& k, const std::string& label) {
    const json& v = field(obj, k);
    if (!v.is_number_unsigned())
      throw fail(fmt::format("'{}' is {}, not an unsigned integer", label, short_dump(v)));
    return v.get<uint64_t>();
  };
  TrainState s;
  const json& step = field(st, "step");
  if (!step.is_number_unsigned() || step.get<uint64_t>() > kMaxStep)
    throw fail(fmt::format("'step' is {}, not a whole number in [0, 2^53]", short_dump(step)));
  s.step = static_cast<int64_t>(step.get<uint64_t>());
  const json& data = field(st, "data");
  if (!data.is_object()) throw fail(fmt::format("'data' is {}, not an object", short_dump(data)));
  for (auto it = data.begin(); it != data.end(); ++it)
    if (!data_like.contains(it.key()))
      throw fail(fmt::format("'data' has '{}', a field of another data source (this run's has {})", it.key(),
                             short_dump(data_like)));
  s.data = json::object();
  for (auto it = data_like.begin(); it != data_like.end(); ++it)
    s.data[it.key()] = unsigned_field(data, it.key(), "data." + it.key());
  s.rng_seed = unsigned_field(st, "rng_seed", "rng_seed");
  s.rng_offset = unsigned_field(st, "rng_offset", "rng_offset");
  return s;
}

TrainState resume_checkpoint(const std::string& ckpt, const ResumeExpect& expect, bb::nn::GPT& model,
                             bb::optim::Optimizer& opt, std::string* note) {
  const std::string what = "barbell-train: --resume: " + ckpt;
  bb::io::Safetensors f = bb::io::load_safetensors(ckpt);
  const auto& meta = f.metadata;
  auto m = meta.find("barbell.model");
  BB_CHECK(m != meta.end() && m->second == expect.model_json, bb::ValueError,
           "{} holds model {} but the flags give {}", what,
           m != meta.end() ? m->second.substr(0, 300) : std::string("(none)"), expect.model_json);

  auto r = meta.find("barbell.run");
  const json saved_run = parse_json_checked(r != meta.end() ? r->second : "{}", what + ": barbell.run");
  std::string diffs;
  for (auto& [k, v] : expect.run.items())
    if (!saved_run.is_object() || !saved_run.contains(k) || saved_run[k] != v)
      diffs += fmt::format(
          " --{}: checkpoint {}, now {};", k,
          saved_run.is_object() && saved_run.contains(k) ? short_dump(saved_run[k]) : "(none)", v.dump());
  BB_CHECK(diffs.empty(), bb::ValueError, "{} was trained with other settings:{}", what, diffs);

  auto t = meta.find("barbell.train_state");
  if (t == meta.end())
    throw bb::IOError(what + ": no barbell.train_state metadata (not a barbell-train checkpoint?)");
  TrainState s = parse_train_state(t->second, expect.data_like, what + ": barbell.train_state");

  bb::NamedTensors model_state, opt_state;
  for (auto& [n, tensor] : f.tensors) {
    if (n.rfind("optimizer.", 0) == 0)
      opt_state.emplace_back(n.substr(10), tensor);
    else
      model_state.emplace_back(n, tensor);
  }
  try {
    model.load_state_dict(model_state);
    opt.load_state_dict(opt_state);
  } catch (const bb::Error& e) {  // name the file: the state it holds is what is wrong
    throw bb::IOError(fmt::format("{}: {}", what, e.what()));
  }
  // Every training step is one optimizer step and one batch: the three counts agree in
  // any checkpoint barbell-train wrote.
  BB_CHECK(opt.steps() == s.step, bb::IOError,
           "{}: the optimizer state is at step {} but the training state at {}", what, opt.steps(), s.step);
  if (s.data.contains("batches"))
    BB_CHECK(s.data["batches"].get<uint64_t>() == static_cast<uint64_t>(s.step), bb::IOError,
             "{}: the data position is {} batches but the training state is at step {}", what,
             s.data["batches"].get<uint64_t>(), s.step);
  if (note && !f.checksums_verified)
    *note = fmt::format(
        "note: {} has no tensor checksums (written by an older barbell-train): its tensor bytes "
        "cannot be verified",
        ckpt);
  return s;
}

MetricsLog::MetricsLog(const std::string& path, bool append) : path_(path) {
  f_ = std::fopen(path.c_str(), append ? "a" : "w");
  if (!f_) {
    const int err = errno;
    throw bb::IOError(fmt::format("barbell-train: cannot write {}: {}", path, std::strerror(err)));
  }
}

MetricsLog::~MetricsLog() {
  if (f_) std::fclose(f_);
}

MetricsLog::MetricsLog(MetricsLog&& o) noexcept : path_(std::move(o.path_)), f_(o.f_) { o.f_ = nullptr; }

MetricsLog& MetricsLog::operator=(MetricsLog&& o) noexcept {
  if (this != &o) {
    if (f_) std::fclose(f_);
    path_ = std::move(o.path_);
    f_ = o.f_;
    o.f_ = nullptr;
  }
  return *this;
}

void MetricsLog::write(const json& line) {
  if (!f_) return;
  const std::string s = line.dump() + "\n";
  if (std::fwrite(s.data(), 1, s.size(), f_) != s.size() || std::fflush(f_) != 0) {
    const int err = errno;
    throw bb::IOError(fmt::format("barbell-train: writing {} failed: {}", path_, std::strerror(err)));
  }
}

void MetricsLog::sync() {
  if (f_ && ::fsync(::fileno(f_)) != 0 && errno != EINVAL) {
    const int err = errno;
    throw bb::IOError(fmt::format("barbell-train: fsync of {} failed: {}", path_, std::strerror(err)));
  }
}

void trim_metrics(const std::string& path, int64_t step, std::string* note) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (note && step > 0)
      *note = fmt::format("note: {} is missing: the lines of steps 1..{} are lost", path, step);
    return;
  }
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  std::string kept;
  size_t line_no = 0;
  int64_t train_lines = 0;
  for (size_t pos = 0; pos < text.size();) {
    const size_t nl = text.find('\n', pos);
    ++line_no;
    if (nl == std::string::npos) {
      if (note)
        *note =
            fmt::format("note: {}: dropped line {}, cut short by the end of the previous run", path, line_no);
      break;
    }
    const std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = fmt::format("barbell-train: --resume: {} line {}", path, line_no);
    const json m = parse_json_checked(line, where, 2);
    if (!m.is_object() || !m.contains("step") || !m["step"].is_number_integer())
      throw bb::IOError(
          fmt::format("{}: not a JSON object with an integer \"step\": {} (repair or remove the file)", where,
                      short_dump(m)));
    if (m["step"].get<int64_t>() <= step) {
      kept += line + "\n";
      if (m.contains("loss")) ++train_lines;  // a training step's line (evaluations have none)
    }
  }
  if (note && train_lines != step)
    *note += fmt::format("{}note: {} has {} training lines for steps 1..{}", note->empty() ? "" : "\n", path,
                         train_lines, step);
  // One fixed temp name (rank 0 alone writes the log): one a kill left is overwritten here.
  const std::string tmp = path + ".tmp";
  {
    std::FILE* out = std::fopen(tmp.c_str(), "w");
    bool ok = out && std::fwrite(kept.data(), 1, kept.size(), out) == kept.size() && std::fflush(out) == 0 &&
              ::fsync(::fileno(out)) == 0;
    const int err = errno;
    if (out) std::fclose(out);
    if (!ok) {
      std::remove(tmp.c_str());
      throw bb::IOError(fmt::format("barbell-train: cannot rewrite {}: {}", path, std::strerror(err)));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    throw bb::IOError(fmt::format("barbell-train: cannot rewrite {}: {}", path, std::strerror(err)));
  }
}

}  // namespace train
