// Tests of io::save_hf_gpt2 / load_hf_gpt2: the folder's exact layout (names, Conv1D transposes, no lm_head,
// config.json), round trips, the variants transformers writes (no prefix, mask buffers, lm_head, shards,
// f16), training after a load, and every config and tensor that must be refused.
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "testing.hpp"

namespace bb = barbell;
namespace io = barbell::io;
namespace nn = barbell::nn;
namespace fs = std::filesystem;
using Catch::Contains;
using json = nlohmann::ordered_json;

namespace {

nn::GPTConfig tiny_config() {
  nn::GPTConfig c;
  c.vocab_size = 50;
  c.block_size = 16;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 16;
  c.seed = 5;
  return c;
}

// Every parameter random (LayerNorm weights and biases too, which start at 1 and 0), so that a transpose or
// a swapped tensor anywhere changes the logits.
void randomize(nn::GPT& model, uint64_t seed) {
  bb::Generator gen(seed);
  bb::NoGradGuard g;
  for (auto& p : model.parameters()) {
    bb::Tensor t = p;
    t.copy_(bb::randn(p.shape(), {p.dtype()}, &gen) * 0.3);
  }
}

std::string fresh_dir(const std::string& name) {
  std::string dir = bbtest::tmp_path(name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

json read_json(const std::string& path) {
  std::ifstream f(path);
  REQUIRE(f.good());
  return json::parse(std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()));
}

void write_json(const std::string& path, const json& j) {
  std::ofstream f(path, std::ios::trunc);
  f << j.dump(2);
  REQUIRE(f.good());
}

bb::Tensor ids_for(const nn::GPTConfig& c) {
  std::vector<int64_t> v;
  for (int64_t i = 0; i < 2 * c.block_size; ++i) v.push_back((i * 7 + 3) % c.vocab_size);
  return bb::from_vector(v, {2, c.block_size});
}

bool same(const bb::Tensor& a, const bb::Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && a.to_vector<double>() == b.to_vector<double>();
}

// A saved tiny model's folder, its model and its tensors (for the variants below).
struct Saved {
  std::string dir;
  std::unique_ptr<nn::GPT> model;
  io::TensorMap tensors;
};
Saved saved_model(const std::string& name) {
  Saved s;
  s.dir = fresh_dir(name);
  s.model = std::make_unique<nn::GPT>(tiny_config());
  randomize(*s.model, 17);
  io::save_hf_gpt2(*s.model, s.dir);
  s.tensors = io::load_safetensors(s.dir + "/model.safetensors").tensors;
  return s;
}

void rewrite_tensors(const std::string& dir, const io::TensorMap& t) {
  io::save_safetensors(dir + "/model.safetensors", t, {{"format", "pt"}});
}

}  // namespace

TEST_CASE("hf gpt2: the saved folder is Hugging Face's layout", "[io][hf_gpt2]") {
  Saved s = saved_model("hf_layout");
  const nn::GPTConfig c = tiny_config();
  auto st = io::load_safetensors(s.dir + "/model.safetensors");
  CHECK(st.metadata.at("format") == "pt");
  CHECK_FALSE(st.contains("lm_head.weight"));
  CHECK(st.tensors.size() == 2 + 12 * static_cast<size_t>(c.n_layer) + 2);
  const auto& tr = *s.model->transformer;
  auto block = std::static_pointer_cast<nn::Block>((*tr.h)[1]);
  // Conv1D weights are [in, out]: the transpose of barbell's Linear.
  const bb::Tensor& c_attn = st.at("transformer.h.1.attn.c_attn.weight");
  CHECK(c_attn.shape() == bb::Shape{c.n_embd, 3 * c.n_embd});
  CHECK(same(c_attn, block->attn->c_attn->weight.t().contiguous()));
  CHECK(st.at("transformer.h.1.attn.c_proj.weight").shape() == bb::Shape{c.n_embd, c.n_embd});
  CHECK(same(st.at("transformer.h.1.mlp.c_fc.weight"), block->mlp->c_fc->weight.t().contiguous()));
  CHECK(st.at("transformer.h.1.mlp.c_proj.weight").shape() == bb::Shape{4 * c.n_embd, c.n_embd});
  CHECK(same(st.at("transformer.h.1.mlp.c_proj.bias"), block->mlp->c_proj->bias));
  CHECK(same(st.at("transformer.wte.weight"), tr.wte->weight));
  CHECK(same(st.at("transformer.wpe.weight"), tr.wpe->weight));
  CHECK(same(st.at("transformer.ln_f.bias"), tr.ln_f->bias));

  json cfg = read_json(s.dir + "/config.json");
  CHECK(cfg.at("model_type") == "gpt2");
  CHECK(cfg.at("architectures") == json::array({"GPT2LMHeadModel"}));
  CHECK(cfg.at("activation_function") == "gelu_new");
  CHECK(cfg.at("n_embd") == c.n_embd);
  CHECK(cfg.at("n_layer") == c.n_layer);
  CHECK(cfg.at("n_head") == c.n_head);
  CHECK(cfg.at("n_positions") == c.block_size);
  CHECK(cfg.at("vocab_size") == c.vocab_size);
  CHECK(cfg.at("layer_norm_epsilon") == 1e-5);
  CHECK(cfg.at("tie_word_embeddings") == true);
  CHECK(cfg.at("torch_dtype") == "float32");
  CHECK(cfg.at("n_inner").is_null());
  CHECK(cfg.at("bos_token_id").is_null());  // vocab 50 is not GPT-2's, so no 50256
  for (const char* k : {"attn_pdrop", "embd_pdrop", "resid_pdrop"}) CHECK(cfg.at(k) == 0.0);
}

TEST_CASE("hf gpt2: save then load gives the same model", "[io][hf_gpt2]") {
  Saved s = saved_model("hf_roundtrip");
  auto loaded = io::load_hf_gpt2(s.dir);
  const nn::GPTConfig a = s.model->config(), b = loaded->config();
  CHECK((b.vocab_size == a.vocab_size && b.block_size == a.block_size && b.n_layer == a.n_layer &&
         b.n_head == a.n_head && b.n_embd == a.n_embd && b.dropout == a.dropout));
  auto sa = s.model->state_dict(), sb = loaded->state_dict();
  REQUIRE(sa.size() == sb.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    INFO(sa[i].first);
    CHECK(sa[i].first == sb[i].first);
    CHECK(same(sa[i].second, sb[i].second));
  }
  bb::Tensor idx = ids_for(a);
  CHECK(same(s.model->forward(idx), loaded->forward(idx)));

  // Saving the loaded model writes the same bytes.
  const std::string again = fresh_dir("hf_roundtrip_again");
  io::save_hf_gpt2(*loaded, again);
  auto t1 = io::load_safetensors(s.dir + "/model.safetensors"),
       t2 = io::load_safetensors(again + "/model.safetensors");
  REQUIRE(t1.tensors.size() == t2.tensors.size());
  for (size_t i = 0; i < t1.tensors.size(); ++i) CHECK(same(t1.tensors[i].second, t2.tensors[i].second));
  CHECK(read_json(s.dir + "/config.json") == read_json(again + "/config.json"));

  // An f64 model saves as F64, torch_dtype float64, and loads back into an f32 model as its f32 values.
  nn::GPT m64(tiny_config());
  randomize(m64, 3);
  m64.to(bb::kF64);
  const std::string d64 = fresh_dir("hf_f64");
  io::save_hf_gpt2(m64, d64);
  CHECK(read_json(d64 + "/config.json").at("torch_dtype") == "float64");
  CHECK(io::load_safetensors(d64 + "/model.safetensors").at("transformer.wte.weight").dtype() == bb::kF64);
  auto back = io::load_hf_gpt2(d64);
  CHECK(same(back->transformer->wte->weight, m64.transformer->wte->weight.to(bb::kF32)));
}

TEST_CASE("hf gpt2: the variants transformers writes load", "[io][hf_gpt2]") {
  Saved s = saved_model("hf_variants");
  bb::Tensor idx = ids_for(tiny_config());
  const bb::Tensor want = s.model->forward(idx);

  SECTION("GPT2Model names (no 'transformer.'), the old mask buffers, and lm_head.weight equal to wte") {
    io::TensorMap t;
    for (auto& [n, v] : s.tensors) t.emplace_back(n.substr(12), v);
    t.emplace_back("h.0.attn.bias", bb::ones({1, 1, 16, 16}));
    t.emplace_back("h.0.attn.masked_bias", bb::full({}, -1e4));
    t.emplace_back("lm_head.weight", s.tensors[0].second.clone());
    rewrite_tensors(s.dir, t);
    CHECK(same(io::load_hf_gpt2(s.dir)->forward(idx), want));
  }
  SECTION("shards named by model.safetensors.index.json") {
    io::TensorMap a(s.tensors.begin(), s.tensors.begin() + 10), b(s.tensors.begin() + 10, s.tensors.end());
    io::save_safetensors(s.dir + "/model-00001-of-00002.safetensors", a);
    io::save_safetensors(s.dir + "/model-00002-of-00002.safetensors", b);
    json map = json::object();
    for (auto& [n, v] : a) map[n] = "model-00001-of-00002.safetensors";
    for (auto& [n, v] : b) map[n] = "model-00002-of-00002.safetensors";
    write_json(s.dir + "/model.safetensors.index.json",
               json{{"metadata", json::object()}, {"weight_map", map}});
    fs::remove(s.dir + "/model.safetensors");
    CHECK(same(io::load_hf_gpt2(s.dir)->forward(idx), want));
  }
  SECTION("f16 weights are converted to the model's dtype") {
    io::TensorMap t;
    for (auto& [n, v] : s.tensors) t.emplace_back(n, v.to(bb::kF16));
    rewrite_tensors(s.dir, t);
    auto m = io::load_hf_gpt2(s.dir);
    CHECK(m->transformer->wte->weight.dtype() == bb::kF32);
    CHECK(same(m->transformer->wte->weight, s.model->transformer->wte->weight.to(bb::kF16).to(bb::kF32)));
  }
  SECTION("config.json's defaults, and its layer_norm_epsilon") {
    json cfg = read_json(s.dir + "/config.json");
    cfg["layer_norm_epsilon"] = 1e-3;
    for (const char* k : {"activation_function", "n_inner", "attn_pdrop", "embd_pdrop", "resid_pdrop",
                          "scale_attn_weights", "architectures", "torch_dtype"})
      cfg.erase(k);
    write_json(s.dir + "/config.json", cfg);
    auto m = io::load_hf_gpt2(s.dir);
    CHECK(m->config().dropout == 0.1);  // GPT2Config's default
    auto block = std::static_pointer_cast<nn::Block>((*m->transformer->h)[0]);
    CHECK(block->ln_1->eps == 1e-3);
    CHECK(m->transformer->ln_f->eps == 1e-3);
    CHECK_FALSE(same(m->forward(idx), want));  // the epsilon is used
    const std::string out = fresh_dir("hf_eps_out");
    io::save_hf_gpt2(*m, out);
    CHECK(read_json(out + "/config.json").at("layer_norm_epsilon") == 1e-3);
    CHECK(read_json(out + "/config.json").at("resid_pdrop") == 0.1);
  }
}

TEST_CASE("hf gpt2: a loaded model trains", "[io][hf_gpt2]") {
  Saved s = saved_model("hf_train");
  auto m = io::load_hf_gpt2(s.dir);
  bb::optim::AdamWOptions o;
  o.lr = 1e-2;
  bb::optim::AdamW opt(m->named_parameters(), o);
  bb::Tensor x = ids_for(m->config());
  bb::Tensor y = bb::from_vector(std::vector<int64_t>(static_cast<size_t>(x.numel()), 7), x.shape());
  double first = 0, last = 0;
  for (int step = 0; step < 20; ++step) {
    bb::Tensor loss = m->loss(x, y);
    (step == 0 ? first : last) = loss.item<double>();
    loss.backward();
    opt.step();
    opt.zero_grad();
  }
  CHECK(last < 0.5 * first);
}

TEST_CASE("hf gpt2: configs barbell cannot build are refused with the file and the field", "[io][hf_gpt2]") {
  Saved s = saved_model("hf_bad_config");
  const json good = read_json(s.dir + "/config.json");
  const std::string path = s.dir + "/config.json";
  auto refuse = [&](const char* field, const json& value, const std::string& why) {
    json cfg = good;
    cfg[field] = value;
    write_json(path, cfg);
    INFO(field << " = " << value.dump());
    CHECK_THROWS_WITH(io::load_hf_gpt2(s.dir), Contains(path) && Contains(field) && Contains(why));
    CHECK_THROWS_AS(io::read_hf_gpt2_config(s.dir), bb::IOError);
  };
  refuse("model_type", "llama", "not gpt2");
  refuse("activation_function", "relu", "tanh GELU");
  refuse("activation_function", "gelu", "tanh GELU");
  refuse("n_inner", 100, "4 * n_embd");
  refuse("scale_attn_weights", false, "1/sqrt");
  refuse("scale_attn_by_inverse_layer_idx", true, "by layer");
  refuse("add_cross_attention", true, "decoder-only");
  refuse("tie_word_embeddings", false, "ties");
  refuse("attn_pdrop", 0.2, "one dropout");
  refuse("resid_pdrop", 1.5, "one dropout");
  refuse("quantization_config", json{{"quant_method", "gptq"}}, "quantized");
  refuse("n_head", 3, "not a multiple");
  refuse("n_embd", "16", "not a positive integer");
  refuse("vocab_size", -1, "not a positive integer");
  refuse("layer_norm_epsilon", 0, "positive");
  refuse("eos_token_id", "x", "not a token id");
  write_json(path, good);
  CHECK_NOTHROW(io::load_hf_gpt2(s.dir));
  fs::remove(path);
  CHECK_THROWS_WITH(io::load_hf_gpt2(s.dir), Contains(path) && Contains("cannot open"));
  write_json(path, json::array());
  CHECK_THROWS_WITH(io::load_hf_gpt2(s.dir), Contains(path) && Contains("JSON object"));
}

TEST_CASE("hf gpt2: tensors that do not make this GPT-2 are refused with the file and the tensor",
          "[io][hf_gpt2]") {
  Saved s = saved_model("hf_bad_tensors");
  const std::string file = s.dir + "/model.safetensors";
  auto with = [&](const std::function<void(io::TensorMap&)>& edit) {
    io::TensorMap t = s.tensors;
    edit(t);
    rewrite_tensors(s.dir, t);
  };
  auto find = [](io::TensorMap& t, const std::string& name) -> bb::Tensor& {
    for (auto& [n, v] : t)
      if (n == name) return v;
    FAIL("no tensor " << name);
    throw std::logic_error("unreachable");
  };
  with([](io::TensorMap& t) { t.erase(t.begin() + 5); });
  CHECK_THROWS_WITH(io::load_hf_gpt2(s.dir), Contains(file) && Contains("no tensor 'h.0.attn.c_attn.bias'"));
  with([&](io::TensorMap& t) { find(t, "transformer.h.1.attn.c_attn.weight") = bb::zeros({48, 16}); });
  CHECK_THROWS_WITH(io::load_hf_gpt2(s.dir), Contains(file) &&
                                                 Contains("'h.1.attn.c_attn.weight' is [48, 16]") &&
                                                 Contains("[16, 48]"));
  with([&](io::TensorMap& t) { find(t, "transformer.wpe.weight") = bb::zeros({16, 16}, {bb::kI64}); });
  CHECK_THROWS_WITH(io::load_hf_gpt2(s.dir),
                    Contains(file) && Contains("'wpe.weight' is i64, not floating point"));
  with([](io::TensorMap& t) { t.emplace_back("score.weight", bb::zeros({2, 16})); });
  CHECK_THROWS_WITH(io::load_hf_gpt2(s.dir), Contains(file) && Contains("'score.weight' is not part of"));
  with([](io::TensorMap& t) { t.emplace_back("lm_head.weight", bb::zeros({50, 16})); });
  CHECK_THROWS_WITH(io::load_hf_gpt2(s.dir),
                    Contains(file) && Contains("lm_head.weight differs from wte.weight"));
  with([](io::TensorMap& t) { t.emplace_back("ln_f.bias", bb::zeros({16})); });
  CHECK_THROWS_WITH(io::load_hf_gpt2(s.dir), Contains(file) && Contains("appears twice"));

  fs::remove(file);
  CHECK_THROWS_WITH(io::load_hf_gpt2(s.dir), Contains(s.dir) && Contains("no model.safetensors"));
  std::ofstream(s.dir + "/pytorch_model.bin") << "pickle";
  CHECK_THROWS_WITH(io::load_hf_gpt2(s.dir), Contains("pytorch_model.bin") && Contains("safe_serialization"));

  // A model of other sizes, or without biases, is not the folder's GPT-2.
  Saved t = saved_model("hf_bad_model");
  nn::GPTConfig other = tiny_config();
  other.n_embd = 32;
  nn::GPT wide(other);
  CHECK_THROWS_WITH(io::load_hf_gpt2_weights(wide, t.dir), Contains("n_embd 16 but the model has 32"));
  other = tiny_config();
  other.bias = false;
  nn::GPT nobias(other);
  CHECK_THROWS_WITH(io::save_hf_gpt2(nobias, bbtest::tmp_path("hf_nobias")), Contains("bias = false"));
}
