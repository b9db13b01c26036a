// Hugging Face GPT-2 folders: config.json checked field by field against what barbell's GPT is, and
// model.safetensors mapped tensor by tensor (names, Conv1D transposes, the tied lm_head) to GPT's state.
#include "barbell/io/hf_gpt2.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "barbell/io/safetensors.hpp"
#include "barbell/nn/layers.hpp"
#include "io/atomic_file.hpp"

namespace barbell::io {

namespace {

using json = nlohmann::ordered_json;

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

json read_json(const std::string& path, const char* op) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    int err = errno;
    throw IOError(fmt::format("{}: {}: cannot open: {}", op, path, std::strerror(err)));
  }
  std::string text;
  char buf[1 << 14];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, got);
  std::fclose(f);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw IOError(fmt::format("{}: {}: not valid JSON: {}", op, path, e.what()));
  }
}

// GPT-2's Conv1D layers: their weights are [in, out] in Hugging Face's files, [out, in] in barbell.
bool is_conv1d_weight(const std::string& name) {
  auto ends = [&](const char* s) {
    const size_t n = std::strlen(s);
    return name.size() >= n && name.compare(name.size() - n, n, s) == 0;
  };
  return ends(".attn.c_attn.weight") || ends(".attn.c_proj.weight") || ends(".mlp.c_fc.weight") ||
         ends(".mlp.c_proj.weight");
}

std::vector<std::shared_ptr<nn::LayerNorm>> layer_norms(const nn::GPT& model) {
  std::vector<std::shared_ptr<nn::LayerNorm>> out;
  const auto& tr = *model.transformer;
  for (size_t i = 0; i < tr.h->size(); ++i) {
    auto block = std::static_pointer_cast<nn::Block>((*tr.h)[i]);
    out.push_back(block->ln_1);
    out.push_back(block->ln_2);
  }
  out.push_back(tr.ln_f);
  return out;
}

const char* torch_dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F64: return "float64";
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    case DType::I32:
    case DType::I64:
    case DType::Bool: break;
  }
  throw ValueError(fmt::format("save_hf_gpt2: a GPT's weights cannot be {}", dtype_name(t)));
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0;
}

}  // namespace

HFGPT2Config read_hf_gpt2_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  constexpr const char* op = "read_hf_gpt2_config";
  const json j = read_json(path, op);
  BB_CHECK(j.is_object(), IOError, "{}: {}: expected a JSON object, found {}", op, path, j.type_name());
  auto bad = [&](const char* field, const std::string& why) {
    return IOError(fmt::format("{}: {}: {}: {}", op, path, field, why));
  };
  auto present = [&](const char* field) { return j.contains(field) && !j.at(field).is_null(); };
  auto get_int = [&](const char* field, int64_t def) -> int64_t {
    if (!present(field)) return def;
    const auto& v = j.at(field);
    if (!v.is_number_integer() || v.get<int64_t>() <= 0)
      throw bad(field, fmt::format("{} is not a positive integer", v.dump()));
    return v.get<int64_t>();
  };
  auto get_num = [&](const char* field, double def) -> double {
    if (!present(field)) return def;
    const auto& v = j.at(field);
    if (!v.is_number()) throw bad(field, fmt::format("{} is not a number", v.dump()));
    return v.get<double>();
  };
  auto get_bool = [&](const char* field, bool def) -> bool {
    if (!present(field)) return def;
    const auto& v = j.at(field);
    if (!v.is_boolean()) throw bad(field, fmt::format("{} is not true or false", v.dump()));
    return v.get<bool>();
  };
  auto get_str = [&](const char* field, const char* def) -> std::string {
    if (!present(field)) return def;
    const auto& v = j.at(field);
    if (!v.is_string()) throw bad(field, fmt::format("{} is not a string", v.dump()));
    return v.get<std::string>();
  };

  const std::string model_type = get_str("model_type", "gpt2");
  if (model_type != "gpt2") throw bad("model_type", fmt::format("'{}' is not gpt2", model_type));
  if (present("quantization_config")) throw bad("quantization_config", "quantized weights are not supported");

  HFGPT2Config c;
  nn::GPTConfig& g = c.gpt;
  g.vocab_size = get_int("vocab_size", 50257);
  g.block_size = get_int("n_positions", 1024);
  g.n_embd = get_int("n_embd", 768);
  g.n_layer = get_int("n_layer", 12);
  g.n_head = get_int("n_head", 12);
  g.bias = true;
  if (g.n_embd % g.n_head != 0)
    throw bad("n_head", fmt::format("n_embd {} is not a multiple of n_head {}", g.n_embd, g.n_head));
  if (present("n_inner") && get_int("n_inner", 0) != 4 * g.n_embd) {
    throw bad("n_inner",
              fmt::format("{}: barbell's MLP is 4 * n_embd = {} wide", j.at("n_inner").dump(), 4 * g.n_embd));
  }
  const std::string act = get_str("activation_function", "gelu_new");
  if (act != "gelu_new" && act != "gelu_pytorch_tanh") {
    throw bad("activation_function",
              fmt::format("'{}': barbell's GPT uses the tanh GELU (gelu_new, gelu_pytorch_tanh)", act));
  }
  c.layer_norm_epsilon = get_num("layer_norm_epsilon", 1e-5);
  if (!(c.layer_norm_epsilon > 0) || !std::isfinite(c.layer_norm_epsilon))
    throw bad("layer_norm_epsilon", fmt::format("{} is not a positive number", c.layer_norm_epsilon));
  if (!get_bool("scale_attn_weights", true))
    throw bad("scale_attn_weights", "false: barbell's attention scales by 1/sqrt(head dim)");
  if (get_bool("scale_attn_by_inverse_layer_idx", false))
    throw bad("scale_attn_by_inverse_layer_idx", "true: barbell's attention does not scale by layer");
  if (get_bool("add_cross_attention", false))
    throw bad("add_cross_attention", "true: barbell's GPT is decoder-only");
  if (!get_bool("tie_word_embeddings", true))
    throw bad("tie_word_embeddings", "false: barbell's GPT ties lm_head to wte");
  // reorder_and_upcast_attn only changes the precision of the attention scores: accepted.
  get_bool("reorder_and_upcast_attn", false);

  const double attn = get_num("attn_pdrop", 0.1), embd = get_num("embd_pdrop", 0.1),
               resid = get_num("resid_pdrop", 0.1);
  if (attn != resid || embd != resid) {
    throw bad("attn_pdrop",
              fmt::format("attn_pdrop {}, embd_pdrop {} and resid_pdrop {} differ: barbell's GPT has "
                          "one dropout probability",
                          attn, embd, resid));
  }
  if (!(resid >= 0 && resid < 1)) throw bad("resid_pdrop", fmt::format("{} is not in [0, 1)", resid));
  g.dropout = resid;

  auto token_id = [&](const char* field) -> std::optional<int64_t> {
    if (!present(field)) return std::nullopt;
    const auto& v = j.at(field);
    if (!v.is_number_integer() || v.get<int64_t>() < 0)
      throw bad(field, fmt::format("{} is not a token id", v.dump()));
    return v.get<int64_t>();
  };
  c.bos_token_id = token_id("bos_token_id");
  c.eos_token_id = token_id("eos_token_id");
  return c;
}

void load_hf_gpt2_weights(nn::GPT& model, const std::string& dir) {
  constexpr const char* op = "load_hf_gpt2";
  const HFGPT2Config hc = read_hf_gpt2_config(dir);
  const nn::GPTConfig& want = hc.gpt;
  const nn::GPTConfig& have = model.config();
  const std::pair<const char*, std::pair<int64_t, int64_t>> sizes[] = {
      {"vocab_size", {want.vocab_size, have.vocab_size}},
      {"n_positions", {want.block_size, have.block_size}},
      {"n_layer", {want.n_layer, have.n_layer}},
      {"n_head", {want.n_head, have.n_head}},
      {"n_embd", {want.n_embd, have.n_embd}}};
  for (const auto& [field, v] : sizes) {
    BB_CHECK(v.first == v.second, ValueError, "{}: {}/config.json has {} {} but the model has {}", op, dir,
             field, v.first, v.second);
  }
  BB_CHECK(have.bias, ValueError, "{}: {}: the model was built with bias = false; GPT-2 has biases", op, dir);

  // The files: one model.safetensors, or the shards an index names.
  std::vector<std::string> files;
  const std::string single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json";
  if (file_exists(single)) {
    files.push_back(single);
  } else if (file_exists(index)) {
    const json ij = read_json(index, op);
    BB_CHECK(ij.is_object() && ij.contains("weight_map") && ij.at("weight_map").is_object(), IOError,
             "{}: {}: no weight_map object", op, index);
    std::set<std::string> seen;
    for (const auto& [name, file] : ij.at("weight_map").items()) {
      BB_CHECK(file.is_string(), IOError, "{}: {}: weight_map['{}'] is not a file name", op, index, name);
      const std::string f = file.get<std::string>();
      BB_CHECK(f.find('/') == std::string::npos, IOError,
               "{}: {}: weight_map['{}'] = '{}' is not a file in {}", op, index, name, f, dir);
      if (seen.insert(f).second) files.push_back(dir + "/" + f);
    }
  } else if (file_exists(dir + "/pytorch_model.bin")) {
    throw IOError(
        fmt::format("{}: {}: only pytorch_model.bin (a pickle) is there; barbell reads model.safetensors "
                    "(write it with model.save_pretrained(dir, safe_serialization=True))",
                    op, dir));
  } else {
    throw IOError(fmt::format("{}: {}: no model.safetensors or model.safetensors.index.json", op, dir));
  }

  // Every tensor under its GPT2Model name (without "transformer."), with the file it came from.
  std::map<std::string, std::pair<Tensor, std::string>> found;
  for (const std::string& f : files) {
    Safetensors st = load_safetensors(f);
    for (auto& [raw, t] : st.tensors) {
      const std::string name = raw.rfind("transformer.", 0) == 0 ? raw.substr(12) : raw;
      BB_CHECK(found.emplace(name, std::make_pair(t, f)).second, IOError,
               "{}: {}: tensor '{}' appears twice (with and without 'transformer.', or in two shards)", op, f,
               raw);
    }
  }

  const int64_t C = want.n_embd, V = want.vocab_size, P = want.block_size;
  std::vector<std::pair<std::string, Shape>> expected = {{"wte.weight", {V, C}}, {"wpe.weight", {P, C}}};
  std::set<std::string> skip;
  for (int64_t i = 0; i < want.n_layer; ++i) {
    const std::string h = fmt::format("h.{}.", i);
    for (const auto& [n, s] : std::vector<std::pair<const char*, Shape>>{{"ln_1.weight", {C}},
                                                                         {"ln_1.bias", {C}},
                                                                         {"attn.c_attn.weight", {C, 3 * C}},
                                                                         {"attn.c_attn.bias", {3 * C}},
                                                                         {"attn.c_proj.weight", {C, C}},
                                                                         {"attn.c_proj.bias", {C}},
                                                                         {"ln_2.weight", {C}},
                                                                         {"ln_2.bias", {C}},
                                                                         {"mlp.c_fc.weight", {C, 4 * C}},
                                                                         {"mlp.c_fc.bias", {4 * C}},
                                                                         {"mlp.c_proj.weight", {4 * C, C}},
                                                                         {"mlp.c_proj.bias", {C}}})
      expected.emplace_back(h + n, s);
    skip.insert(h + "attn.bias");  // the causal mask older transformers versions saved as a buffer
    skip.insert(h + "attn.masked_bias");
  }
  expected.emplace_back("ln_f.weight", Shape{C});
  expected.emplace_back("ln_f.bias", Shape{C});

  NamedTensors state;
  std::set<std::string> used;
  for (const auto& [name, shape] : expected) {
    auto it = found.find(name);
    BB_CHECK(it != found.end(), IOError, "{}: {}: no tensor '{}' (nor 'transformer.{}')", op,
             files.size() == 1 ? files[0] : index, name, name);
    const auto& [t, file] = it->second;
    BB_CHECK(is_floating(t.dtype()), IOError, "{}: {}: tensor '{}' is {}, not floating point", op, file, name,
             dtype_name(t.dtype()));
    BB_CHECK(t.shape() == shape, IOError, "{}: {}: tensor '{}' is {}, config.json's sizes make it {}", op,
             file, name, shape_str(t.shape()), shape_str(shape));
    state.emplace_back("transformer." + name,
                       is_conv1d_weight("." + name) ? t.transpose(0, 1).contiguous() : t);
    used.insert(name);
  }
  for (const auto& [name, entry] : found) {
    if (used.count(name) || skip.count(name)) continue;
    if (name == "lm_head.weight") {
      BB_CHECK(
          same_bytes(entry.first, found.at("wte.weight").first), IOError,
          "{}: {}: lm_head.weight differs from wte.weight; barbell's GPT ties them (tie_word_embeddings)", op,
          entry.second);
      continue;
    }
    throw IOError(
        fmt::format("{}: {}: tensor '{}' is not part of a GPT-2 language model", op, entry.second, name));
  }
  model.load_state_dict(state, /*strict=*/true);
  for (auto& ln : layer_norms(model)) ln->eps = hc.layer_norm_epsilon;
}

std::unique_ptr<nn::GPT> load_hf_gpt2(const std::string& dir) {
  auto model = std::make_unique<nn::GPT>(read_hf_gpt2_config(dir).gpt);
  load_hf_gpt2_weights(*model, dir);
  return model;
}

NamedTensors to_hf_gpt2_tensors(const nn::GPT& model) {
  NamedTensors out;
  for (const auto& [name, t] : model.state_dict())
    out.emplace_back(name, is_conv1d_weight(name) ? t.detach().transpose(0, 1).contiguous() : t.detach());
  return out;
}

void save_hf_gpt2(const nn::GPT& model, const std::string& dir, const HFGPT2SaveOptions& opts) {
  constexpr const char* op = "save_hf_gpt2";
  const nn::GPTConfig& c = model.config();
  BB_CHECK(c.bias, ValueError, "{}: {}: the model was built with bias = false; GPT-2 has biases", op, dir);
  const auto norms = layer_norms(model);
  const double eps = norms.back()->eps;
  for (const auto& ln : norms) {
    BB_CHECK(ln->eps == eps, ValueError, "{}: {}: the LayerNorms' epsilons differ ({} and {}); GPT-2 has one",
             op, dir, ln->eps, eps);
  }
  const DType dtype = model.transformer->wte->weight.dtype();
  const bool gpt2_vocab = c.vocab_size == 50257;
  auto token = [&](const std::optional<int64_t>& v) -> json {
    if (v) return *v;
    return gpt2_vocab ? json(50256) : json(nullptr);
  };
  json cfg = json::object();
  cfg["activation_function"] = "gelu_new";
  cfg["architectures"] = json::array({"GPT2LMHeadModel"});
  cfg["attn_pdrop"] = c.dropout;
  cfg["bos_token_id"] = token(opts.bos_token_id);
  cfg["embd_pdrop"] = c.dropout;
  cfg["eos_token_id"] = token(opts.eos_token_id);
  cfg["initializer_range"] = 0.02;
  cfg["layer_norm_epsilon"] = eps;
  cfg["model_type"] = "gpt2";
  cfg["n_ctx"] = c.block_size;
  cfg["n_embd"] = c.n_embd;
  cfg["n_head"] = c.n_head;
  cfg["n_inner"] = nullptr;
  cfg["n_layer"] = c.n_layer;
  cfg["n_positions"] = c.block_size;
  cfg["reorder_and_upcast_attn"] = false;
  cfg["resid_pdrop"] = c.dropout;
  cfg["scale_attn_by_inverse_layer_idx"] = false;
  cfg["scale_attn_weights"] = true;
  cfg["summary_activation"] = nullptr;
  cfg["summary_first_dropout"] = 0.1;
  cfg["summary_proj_to_labels"] = true;
  cfg["summary_type"] = "cls_index";
  cfg["summary_use_proj"] = true;
  cfg["tie_word_embeddings"] = true;
  cfg["torch_dtype"] = torch_dtype_name(dtype);
  cfg["use_cache"] = true;
  cfg["vocab_size"] = c.vocab_size;

  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  BB_CHECK(!ec, IOError, "{}: {}: cannot create the directory: {}", op, dir, ec.message());
  save_safetensors(dir + "/model.safetensors", to_hf_gpt2_tensors(model), {{"format", "pt"}});
  const std::string text = cfg.dump(2) + "\n";
  detail::AtomicFile f(dir + "/config.json", op);
  f.write(text.data(), text.size());
  f.commit();
}

}  // namespace barbell::io
