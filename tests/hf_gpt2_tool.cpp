// hf_gpt2_tool: barbell's side of the Hugging Face GPT-2 checks that Python drives (CTest hf_gpt2.reference,
// scripts/hf_transformers_check.py): load a folder, compute logits, generate greedily, train and save.
//   hf_gpt2_tool reference IN OUT         IN from hf_gpt2_reference.py make: logits in f64 against its
//                                         reference.safetensors, then 10 AdamW steps, save_hf_gpt2 to OUT and
//                                         OUT/barbell_logits.safetensors for hf_gpt2_reference.py check
//   hf_gpt2_tool logits DIR IN OUT f32|f64  logits of IN's "input_ids" [B, T] into OUT's "logits"
//   hf_gpt2_tool generate DIR N f32|f64 ID...  greedy generation of N tokens after the prompt; prints the ids
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "barbell/barbell.hpp"

namespace bb = barbell;

namespace {

bb::DType parse_dtype(const std::string& s) {
  if (s == "f32") return bb::kF32;
  if (s == "f64") return bb::kF64;
  throw bb::ValueError("hf_gpt2_tool: dtype must be f32 or f64, got " + s);
}

double max_abs_diff(const bb::Tensor& a, const bb::Tensor& b) {
  BB_CHECK(a.shape() == b.shape(), bb::ShapeError, "hf_gpt2_tool: shapes {} and {} differ",
           bb::shape_str(a.shape()), bb::shape_str(b.shape()));
  auto va = a.to_vector<double>(), vb = b.to_vector<double>();
  double m = 0;
  for (size_t i = 0; i < va.size(); ++i)
    m = std::isnan(va[i] - vb[i]) ? INFINITY : std::max(m, std::abs(va[i] - vb[i]));
  return m;
}

int reference(const std::string& in, const std::string& out) {
  auto model = bb::io::load_hf_gpt2(in);
  model->to(bb::kF64);
  model->eval();
  auto ref = bb::io::load_safetensors(in + "/reference.safetensors");
  const bb::Tensor& ids = ref.at("input_ids");
  double d;
  {
    bb::NoGradGuard ng;
    d = max_abs_diff(model->forward(ids), ref.at("logits"));
  }
  std::printf("hf_gpt2_tool: %s: barbell's f64 logits vs numpy's float64 forward pass: max |diff| %.3e\n",
              in.c_str(), d);
  if (!(d <= 1e-9)) return 1;

  model->train();  // dropout 0.1 from config.json: training as transformers would
  bb::optim::AdamWOptions o;
  o.lr = 3e-3;
  bb::optim::AdamW opt(model->named_parameters(), o);
  const int64_t T = ids.size(1);
  bb::Tensor x = ids.narrow(1, 0, T - 1).contiguous(), y = ids.narrow(1, 1, T - 1).contiguous();
  double first = 0, last = 0;
  for (int step = 0; step < 10; ++step) {
    bb::Tensor loss = model->loss(x, y);
    (step == 0 ? first : last) = loss.item<double>();
    loss.backward();
    opt.step();
    opt.zero_grad();
  }
  std::printf("hf_gpt2_tool: 10 AdamW steps on the loaded model: loss %.4f -> %.4f\n", first, last);
  if (!(last < first)) return 1;
  model->eval();
  bb::io::save_hf_gpt2(*model, out);
  bb::NoGradGuard ng;
  bb::io::save_safetensors(out + "/barbell_logits.safetensors",
                           {{"input_ids", ids}, {"logits", model->forward(ids)}});
  return 0;
}

int logits(const std::string& dir, const std::string& in, const std::string& out, bb::DType dtype) {
  auto model = bb::io::load_hf_gpt2(dir);
  model->to(dtype);
  model->eval();
  bb::NoGradGuard ng;
  auto f = bb::io::load_safetensors(in);
  bb::io::save_safetensors(out, {{"logits", model->forward(f.at("input_ids"))}});
  return 0;
}

int generate(const std::string& dir, int64_t n, bb::DType dtype, const std::vector<int32_t>& prompt) {
  auto model = bb::io::load_hf_gpt2(dir);
  model->to(dtype);
  model->eval();
  auto out = model->generate(prompt, n);
  for (size_t i = 0; i < out.size(); ++i) std::printf("%s%d", i ? " " : "", out[i]);
  std::printf("\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> a(argv + 1, argv + argc);
  try {
    if (a.size() == 3 && a[0] == "reference") return reference(a[1], a[2]);
    if (a.size() == 5 && a[0] == "logits") return logits(a[1], a[2], a[3], parse_dtype(a[4]));
    if (a.size() >= 5 && a[0] == "generate") {
      std::vector<int32_t> prompt;
      for (size_t i = 4; i < a.size(); ++i) prompt.push_back(std::stoi(a[i]));
      return generate(a[1], std::stoll(a[2]), parse_dtype(a[3]), prompt);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hf_gpt2_tool: error: %s\n", e.what());
    return 1;
  }
  std::fprintf(
      stderr,
      "usage: hf_gpt2_tool reference IN OUT | logits DIR IN OUT f32|f64 | generate DIR N f32|f64 ID...\n");
  return 2;
}
