// The API example shown in the README, compiled by the build so it cannot rot:
// a tiny GPT learns to continue a repeating byte pattern in a few AdamW steps.
#include <barbell/barbell.hpp>

namespace bb = barbell;

int main() {
  bb::manual_seed(0);
  bb::nn::GPTConfig cfg = bb::nn::GPTConfig::tiny();  // 2 layers, 4 heads, width 64
  cfg.vocab_size = 256;
  cfg.block_size = 16;
  bb::nn::GPT model(cfg);
  bb::optim::AdamW opt(model.named_parameters(), {/*lr=*/3e-3});

  bb::io::ByteTokenizer tok;
  auto ids = tok.encode("abcabcabcabcabcab");  // 17 bytes -> x, y of 16
  std::vector<int64_t> v(ids.begin(), ids.end());
  bb::Tensor x = bb::from_vector(std::vector<int64_t>(v.begin(), v.end() - 1), {1, 16});
  bb::Tensor y = bb::from_vector(std::vector<int64_t>(v.begin() + 1, v.end()), {1, 16});

  double first = 0, last = 0;
  for (int step = 0; step < 50; ++step) {
    bb::Tensor loss = model.loss(x, y);  // cross-entropy of next-token logits
    loss.backward();                     // fills .grad of every parameter
    opt.step();
    opt.zero_grad();
    (step == 0 ? first : last) = loss.item();
  }
  auto out = model.generate(tok.encode("abca"), 8);  // greedy
  fmt::print("loss {:.3f} -> {:.3f}; 'abca' continues as '{}'\n", first, last, tok.decode(out));
  return last < first ? 0 : 1;
}
