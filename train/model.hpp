// A BERT encoder with the masked-LM head (token, position and token-type embeddings, post-LN
// transformer layers, decoder tied to the token embedding), in libtorch, with the size presets.
// Query, key and value are separate tensors as in BERT: 1-bit LAMB scales each tensor's momentum
// once (docs/algorithm.md §4 step 1), and a fused q/k/v tensor would mix magnitudes that differ by orders.
#pragma once
#include <torch/torch.h>

#include <string>

namespace onebit::train {

struct BertConfig {
  std::string name;
  int hidden = 128;
  int layers = 2;
  int heads = 2;
  int intermediate = 512;
  int max_positions = 512;  // rows of the position table (BERT's 512, whatever --seq is)
  int type_vocab = 2;
  int vocab = 4096;         // overwritten with the tokenizer's size
  int seq = 64;             // default sequence length of the preset
  double dropout = 0.0;
  double lr = 4e-3;         // default peak learning rate of the preset
};

// tiny: H128 L2 A2 (trains in minutes on two cores); mini: H256 L4 A4; small: H512 L4 A8;
// base: H768 L12 A12 and large: H1024 L24 A16 are the BERT shapes.
BertConfig bert_preset(const std::string& name);

class BertForMlmImpl : public torch::nn::Module {
 public:
  explicit BertForMlmImpl(const BertConfig& c);

  // ids: [batch, seq] int64. Returns the final hidden states [batch, seq, hidden].
  torch::Tensor encode(const torch::Tensor& ids);
  // Mean cross-entropy over the positions whose label is not -100; the vocabulary projection runs
  // only on those positions (BERT's gather of the masked positions), which saves most of the head.
  torch::Tensor mlm_loss(const torch::Tensor& ids, const torch::Tensor& labels);

  const BertConfig& config() const { return cfg_; }

 private:
  struct Layer {
    torch::nn::Linear query{nullptr}, key{nullptr}, value{nullptr}, attn_out{nullptr}, ffn_in{nullptr}, ffn_out{nullptr};
    torch::nn::LayerNorm attn_norm{nullptr}, ffn_norm{nullptr};
  };
  torch::Tensor layer_forward(Layer& l, const torch::Tensor& x);

  BertConfig cfg_;
  torch::nn::Embedding word_{nullptr}, position_{nullptr}, token_type_{nullptr};
  torch::nn::LayerNorm emb_norm_{nullptr};
  std::vector<Layer> layers_;
  torch::nn::Linear head_dense_{nullptr};
  torch::nn::LayerNorm head_norm_{nullptr};
  torch::Tensor head_bias_;
};
TORCH_MODULE(BertForMlm);

// The parameter names of the position and token-type tables, for the momentum mask.
inline constexpr const char* kPositionTable = "position_embeddings.weight";
inline constexpr const char* kTokenTypeTable = "token_type_embeddings.weight";
// Every layer's key bias ends with this. Its gradient is zero (softmax ignores a constant added to
// all scores of a query), so 1-bit LAMB masks its momentum like the unused position rows.
inline constexpr const char* kKeyBiasSuffix = "_attention_key.bias";

}  // namespace onebit::train
