// Hugging Face GPT-2 folders (config.json, model.safetensors as GPT2LMHeadModel.save_pretrained writes
// them) read into and written from nn::GPT, with the Conv1D [in, out] weight layout converted either way.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "barbell/nn/gpt.hpp"

namespace barbell::io {

// What config.json says, in barbell's terms.
struct HFGPT2Config {
  nn::GPTConfig gpt;  // vocab_size, block_size (n_positions), n_layer, n_head, n_embd, dropout, bias
  double layer_norm_epsilon = 1e-5;
  std::optional<int64_t> bos_token_id, eos_token_id;
};

// Reads dir/config.json; fields it lacks take GPT2Config's defaults (so {} is gpt2-124m). IOError naming
// the file and the field when the file is missing or malformed, or describes a model barbell's GPT cannot
// be: model_type other than "gpt2", activation_function other than gelu_new / gelu_pytorch_tanh (the
// tanh GELU), n_inner other than null or 4 * n_embd, scale_attn_weights false,
// scale_attn_by_inverse_layer_idx, add_cross_attention, tie_word_embeddings false, attn_pdrop, embd_pdrop
// and resid_pdrop not all equal (barbell has one dropout probability), or a quantization_config.
HFGPT2Config read_hf_gpt2_config(const std::string& dir);

// Loads dir's weights into `model`, whose sizes must be config.json's (ValueError naming the field
// otherwise); sets the model's LayerNorm epsilon to config.json's. Reads model.safetensors, or the shards
// model.safetensors.index.json names. Tensor names may carry GPT2LMHeadModel's "transformer." prefix or
// not (GPT2Model's); the causal-mask buffers older transformers saved (h.N.attn.bias, h.N.attn.masked_bias)
// are skipped; lm_head.weight, if present, must equal wte (the embedding is tied). IOError naming the file
// and the tensor for a missing, misshapen, non-floating or unknown tensor. Values are converted to the
// model's dtype.
void load_hf_gpt2_weights(nn::GPT& model, const std::string& dir);

// A GPT built from dir/config.json (default seed and attention backend) with dir's weights, f32 on the CPU.
std::unique_ptr<nn::GPT> load_hf_gpt2(const std::string& dir);

struct HFGPT2SaveOptions {
  // config.json's bos_token_id / eos_token_id; unset: GPT-2's 50256 when vocab_size is 50257, else null.
  std::optional<int64_t> bos_token_id, eos_token_id;
};

// Writes dir/config.json and dir/model.safetensors (creating dir) so that
// GPT2LMHeadModel.from_pretrained(dir) builds the same model: GPT2LMHeadModel's tensor names, Conv1D
// weights transposed to [in, out], no lm_head.weight (tied, as save_pretrained writes it), tensors in the
// model's dtype (torch_dtype says which). ValueError for a model built with bias = false (GPT-2 has
// biases) or whose LayerNorms differ in epsilon. Both files are written atomically.
void save_hf_gpt2(const nn::GPT& model, const std::string& dir, const HFGPT2SaveOptions& opts = {});

// The tensors save_hf_gpt2 writes, in its order.
NamedTensors to_hf_gpt2_tensors(const nn::GPT& model);

}  // namespace barbell::io
