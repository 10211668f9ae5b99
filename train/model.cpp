// The BERT encoder and masked-LM head: BERT's initialisation (normal 0.02, LayerNorm eps 1e-12),
// GELU, post-LN residual blocks.
#include "train/model.hpp"

#include <cmath>

#include "onebit/error.hpp"

namespace onebit::train {

namespace {
// name, hidden, layers, heads, intermediate, vocab, seq, dropout, lr.
// tiny: the vocabulary is 1024 pieces: a tiny run sees ~8K tokens per step, and in a larger table
// most rows are rare in any one step; 1-bit compression gives every element of a tensor about the
// same magnitude, so such rows carry sign noise scaled up by 1/sqrt(v). Measured on the default
// compare (120 steps): 1-bit LAMB / LAMB held-out loss 1.010 with 1024 pieces, 1.016 with 4096.
// Short runs on a few cores underfit; dropout would only slow them down, so tiny has none.
struct Preset {
  const char* name;
  int hidden, layers, heads, intermediate, vocab, seq;
  double dropout, lr;
};
constexpr Preset kPresets[] = {
    {"tiny", 128, 2, 2, 512, 1024, 64, 0.0, 1e-2},     {"mini", 256, 4, 4, 1024, 8192, 128, 0.1, 3e-3},
    {"small", 512, 4, 8, 2048, 16384, 128, 0.1, 2e-3}, {"base", 768, 12, 12, 3072, 30522, 128, 0.1, 1.5e-3},
    {"large", 1024, 24, 16, 4096, 30522, 128, 0.1, 1e-3},
};
}  // namespace

BertConfig bert_preset(const std::string& name) {
  for (const Preset& p : kPresets)
    if (name == p.name) {
      BertConfig c;
      c.name = name;
      c.hidden = p.hidden, c.layers = p.layers, c.heads = p.heads, c.intermediate = p.intermediate;
      c.vocab = p.vocab, c.seq = p.seq, c.dropout = p.dropout, c.lr = p.lr;
      return c;
    }
  throw Error("onebit train: --model must be tiny, mini, small, base or large, not '" + name + "'");
}

BertForMlmImpl::BertForMlmImpl(const BertConfig& c) : cfg_(c) {
  ONEBIT_CHECK(c.hidden % c.heads == 0, "onebit train model: hidden " << c.hidden
                                                                      << " is not a multiple of heads " << c.heads);
  ONEBIT_CHECK(c.seq >= 8 && c.seq <= c.max_positions,
               "onebit train model: --seq " << c.seq << " must be in [8, " << c.max_positions << "]");
  word_ = register_module("word_embeddings", torch::nn::Embedding(c.vocab, c.hidden));
  position_ = register_module("position_embeddings", torch::nn::Embedding(c.max_positions, c.hidden));
  token_type_ = register_module("token_type_embeddings", torch::nn::Embedding(c.type_vocab, c.hidden));
  auto ln = [&](const std::string& name) {
    return register_module(name, torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden}).eps(1e-12)));
  };
  emb_norm_ = ln("embeddings_norm");
  for (int i = 0; i < c.layers; ++i) {
    const std::string p = "layer" + std::to_string(i) + "_";
    Layer l;
    l.query = register_module(p + "attention_query", torch::nn::Linear(c.hidden, c.hidden));
    l.key = register_module(p + "attention_key", torch::nn::Linear(c.hidden, c.hidden));
    l.value = register_module(p + "attention_value", torch::nn::Linear(c.hidden, c.hidden));
    l.attn_out = register_module(p + "attention_out", torch::nn::Linear(c.hidden, c.hidden));
    l.attn_norm = ln(p + "attention_norm");
    l.ffn_in = register_module(p + "ffn_in", torch::nn::Linear(c.hidden, c.intermediate));
    l.ffn_out = register_module(p + "ffn_out", torch::nn::Linear(c.intermediate, c.hidden));
    l.ffn_norm = ln(p + "ffn_norm");
    layers_.push_back(l);
  }
  head_dense_ = register_module("mlm_dense", torch::nn::Linear(c.hidden, c.hidden));
  head_norm_ = ln("mlm_norm");
  head_bias_ = register_parameter("mlm_bias", torch::zeros({c.vocab}));

  // BERT's initialisation: every weight matrix and table N(0, 0.02), biases 0, LayerNorm 1/0.
  torch::NoGradGuard no_grad;
  for (auto& p : named_parameters()) {
    const std::string& n = p.key();
    if (n.find("norm") != std::string::npos) {
      if (n.ends_with("weight")) p.value().fill_(1.0);
      else p.value().zero_();
    } else if (n.ends_with("bias")) {
      p.value().zero_();
    } else {
      p.value().normal_(0.0, 0.02);
    }
  }
}

torch::Tensor BertForMlmImpl::layer_forward(Layer& l, const torch::Tensor& x) {
  namespace F = torch::nn::functional;
  const int64_t b = x.size(0), s = x.size(1), h = cfg_.hidden, nh = cfg_.heads, hd = h / nh;
  // [b, s, h] -> [b, nh, s, hd]
  auto heads = [&](const torch::Tensor& t) { return t.view({b, s, nh, hd}).transpose(1, 2); };
  auto q = heads(l.query(x)), k = heads(l.key(x)), v = heads(l.value(x));
  auto scores = torch::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(hd)));
  auto probs = F::dropout(torch::softmax(scores, -1), F::DropoutFuncOptions().p(cfg_.dropout).training(is_training()));
  auto ctx = torch::matmul(probs, v).permute({0, 2, 1, 3}).reshape({b, s, h});
  auto drop = [&](const torch::Tensor& t) {
    return F::dropout(t, F::DropoutFuncOptions().p(cfg_.dropout).training(is_training()));
  };
  auto a = l.attn_norm(x + drop(l.attn_out(ctx)));
  return l.ffn_norm(a + drop(l.ffn_out(torch::gelu(l.ffn_in(a)))));
}

torch::Tensor BertForMlmImpl::encode(const torch::Tensor& ids) {
  namespace F = torch::nn::functional;
  const int64_t s = ids.size(1);
  auto pos = torch::arange(s, ids.options().dtype(torch::kLong));
  // Packed single-segment sequences: every token is type 0 (no next-sentence task).
  auto types = torch::zeros_like(ids);
  auto x = word_(ids) + position_(pos).unsqueeze(0) + token_type_(types);
  x = F::dropout(emb_norm_(x), F::DropoutFuncOptions().p(cfg_.dropout).training(is_training()));
  for (auto& l : layers_) x = layer_forward(l, x);
  return x;
}

torch::Tensor BertForMlmImpl::mlm_loss(const torch::Tensor& ids, const torch::Tensor& labels) {
  auto hidden = encode(ids).reshape({-1, cfg_.hidden});
  auto flat_labels = labels.reshape({-1});
  auto where = flat_labels.ne(-100).nonzero().squeeze(1);
  // LayerNorm in fp32: under --precision bf16 the dense layer's output is bf16, which torch 1.13's CPU
  // LayerNorm refuses next to fp32 weights (a no-op in fp32).
  auto h = head_norm_(torch::gelu(head_dense_(hidden.index_select(0, where))).to(torch::kFloat));
  auto logits = torch::matmul(h, word_->weight.t()) + head_bias_;
  // fp32 loss under --precision bf16 too (a no-op in fp32).
  return torch::nn::functional::cross_entropy(logits.to(torch::kFloat), flat_labels.index_select(0, where));
}

}  // namespace onebit::train
