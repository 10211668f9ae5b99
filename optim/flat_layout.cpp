// FlatLayout: layer offsets in one flat buffer, and a BERT-shaped layout for benchmarks.
#include "onebit/flat_layout.hpp"

#include <algorithm>
#include <string>

#include "onebit/error.hpp"

namespace onebit {

FlatLayout::FlatLayout(const std::vector<size_t>& sizes, const std::vector<std::string>& names) {
  ONEBIT_CHECK(names.empty() || names.size() == sizes.size(),
               "layout: " << names.size() << " names for " << sizes.size() << " layers");
  for (size_t i = 0; i < sizes.size(); ++i) {
    layers_.push_back({names.empty() ? "layer" + std::to_string(i) : names[i], total_, sizes[i]});
    total_ += sizes[i];
  }
}

std::vector<size_t> FlatLayout::boundaries() const {
  std::vector<size_t> b;
  for (const auto& l : layers_) b.push_back(l.offset);
  b.push_back(total_);
  return b;
}

FlatLayout FlatLayout::bert_like(size_t params) {
  // BERT-Large (335M in 391 tensors): hidden 1024, embeddings (5 tensors, 31.8M), 24 encoder
  // layers of 16 tensors (12.6M each), pooler (2 tensors, 1.05M).
  // Keep the hidden size and embedding shape and vary the number of encoder layers to reach the
  // target; tiny targets shrink the hidden size instead.
  size_t hidden = 1024, vocab = 30522, positions = 512;
  auto per_layer = [&] { return 12 * hidden * hidden + 13 * hidden; };
  auto embedding = [&] { return (vocab + positions + 2) * hidden + 2 * hidden; };
  while (hidden > 16 && embedding() + per_layer() > params) hidden /= 2;
  const size_t pooler = hidden * hidden + hidden;
  const size_t rest = params > embedding() + pooler ? params - embedding() - pooler : 0;
  const size_t n_layers = std::max<size_t>(1, rest / per_layer());
  std::vector<size_t> sizes;
  std::vector<std::string> names;
  auto add = [&](std::string name, size_t n) {
    names.push_back(std::move(name));
    sizes.push_back(n);
  };
  add("embeddings.word", vocab * hidden);
  add("embeddings.position", positions * hidden);
  add("embeddings.token_type", 2 * hidden);
  add("embeddings.norm.weight", hidden);
  add("embeddings.norm.bias", hidden);
  for (size_t l = 0; l < n_layers; ++l) {
    const std::string p = "encoder." + std::to_string(l) + ".";
    for (const char* t : {"query", "key", "value", "attn_out"}) {
      add(p + t + ".weight", hidden * hidden);
      add(p + t + ".bias", hidden);
    }
    add(p + "attn_norm.weight", hidden);
    add(p + "attn_norm.bias", hidden);
    add(p + "ffn_in.weight", 4 * hidden * hidden);
    add(p + "ffn_in.bias", 4 * hidden);
    add(p + "ffn_out.weight", 4 * hidden * hidden);
    add(p + "ffn_out.bias", hidden);
    add(p + "ffn_norm.weight", hidden);
    add(p + "ffn_norm.bias", hidden);
  }
  add("pooler.weight", hidden * hidden);
  add("pooler.bias", hidden);
  return FlatLayout(sizes, names);
}

}  // namespace onebit
