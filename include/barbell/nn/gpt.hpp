// The GPT-2 architecture (learned positions, pre-LN blocks, tied input/output
// embedding) with presets from a tiny model to gpt2-124m, and sampling.
#pragma once

#include <string>
#include <vector>

#include "barbell/nn/layers.hpp"

namespace barbell::nn {

struct GPTConfig {
  int64_t vocab_size = 256;
  int64_t block_size = 64;  // longest sequence (positions)
  int64_t n_layer = 2, n_head = 4, n_embd = 64;
  double dropout = 0.0;
  bool bias = true;
  uint64_t seed = 1337;  // initialisation
  // Attention implementation (see AttentionBackend): flash kernels on a GPU by default.
  AttentionBackend attn_backend = AttentionBackend::Auto;

  // Presets; vocab_size and block_size can be changed afterwards.
  static GPTConfig tiny();        // 2 layers, 4 heads, 64 wide      (~0.1M + embeddings)
  static GPTConfig small();       // 4 layers, 4 heads, 128 wide     (~0.8M + embeddings)
  static GPTConfig medium();      // 6 layers, 6 heads, 384 wide     (~10.6M + embeddings)
  static GPTConfig gpt2_124m();   // 12 layers, 12 heads, 768 wide, vocab 50257, block 1024
  static GPTConfig preset(const std::string& name);  // "tiny", "small", "medium", "gpt2"
  void validate() const;          // throws ValueError on an inconsistent config
};

// transformer.wte / wpe / h.N / ln_f, exactly Hugging Face GPT-2's module names: GPT::state_dict() names
// are GPT2LMHeadModel's without lm_head.weight (tied to transformer.wte.weight). Linear weights are
// [out, in], the transpose of HF's Conv1D [in, out]: attn.c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj
// weights must be transposed when converting a checkpoint either way; every other tensor has HF's shape.
class Transformer : public Module {
 public:
  Transformer(const GPTConfig& cfg, Generator* gen);
  std::shared_ptr<Embedding> wte, wpe;
  std::shared_ptr<Dropout> drop;
  std::shared_ptr<ModuleList> h;
  std::shared_ptr<LayerNorm> ln_f;
};

class GPT : public Module {
 public:
  explicit GPT(const GPTConfig& cfg);
  // idx [B, T] (i32/i64) -> logits [B, T, V].
  Tensor forward(const Tensor& idx) const;
  // Mean cross-entropy of the next-token predictions; targets equal to
  // ignore_index do not count.
  Tensor loss(const Tensor& idx, const Tensor& targets, int64_t ignore_index = -100) const;
  // Appends up to max_new_tokens tokens to `prompt` (greedy when temperature is 0,
  // else sampled from the top_k most likely); stops after `stop_token` if given.
  std::vector<int32_t> generate(const std::vector<int32_t>& prompt, int64_t max_new_tokens,
                                double temperature = 0.0, int64_t top_k = 0, int32_t stop_token = -1,
                                Generator* gen = nullptr) const;
  const GPTConfig& config() const { return cfg_; }
  std::shared_ptr<Transformer> transformer;

 private:
  GPTConfig cfg_;
};

}  // namespace barbell::nn
