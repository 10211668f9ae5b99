// The training text: documents read from --data (or the python3.11-doc corpus), the held-out split
// by document, the SentencePiece tokenizer learned from the training documents, and the token
// streams, all cached on disk and keyed by the corpus's files.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace onebit::train {

// Token ids fixed at tokenizer training: BERT's specials, then the learned pieces.
struct SpecialIds {
  static constexpr int32_t kPad = 0, kUnk = 1, kCls = 2, kSep = 3, kMask = 4;
  static constexpr int32_t kFirstPiece = 5;  // first id that is not a special token
};

// Where Debian's python3.11-doc puts the reStructuredText sources of the Python documentation.
inline constexpr const char* kDefaultCorpus = "/usr/share/doc/python3.11/html/_sources";

struct Document {
  std::string name;  // stable across machines: the argument's index and the path inside it
  std::string text;
};

// Every readable text file under the given files and directories, sorted by name. With no paths,
// the default corpus (an error naming the package when it is missing). Files without any text
// are skipped; with fewer than 20 files, each file is cut at blank lines into documents of about
// 4 KB so that a held-out split by document is still possible.
std::vector<Document> read_documents(const std::vector<std::string>& paths);

// The held-out split: a hash of the document's name, so it depends neither on the seed nor on the
// other documents, and a document is always on the same side.
bool is_heldout(const std::string& name, double fraction);

// SentencePiece, reached through libonebit_spm.so (see spm_shim.h for why it is loaded apart).
class Tokenizer {
 public:
  // Learns a unigram SentencePiece model with `vocab` pieces (fewer when the text is too small)
  // from the lines of `texts`.
  static Tokenizer learn(const std::vector<const std::string*>& texts, int vocab);
  static Tokenizer from_serialized(std::string model);

  Tokenizer(Tokenizer&& o) noexcept;
  Tokenizer& operator=(Tokenizer&& o) noexcept;
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;
  ~Tokenizer();

  // Ids of every non-empty line of `text`, lines concatenated.
  std::vector<int32_t> encode(std::string_view text) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  int vocab_size() const;
  const std::string& serialized() const { return model_; }

 private:
  Tokenizer() = default;
  std::string model_;
  void* sp_ = nullptr;  // the shim's processor
};

// A corpus ready to train on: both token streams hold the documents in name order, each followed
// by [SEP].
struct PreparedCorpus {
  std::string key;              // the cache key: files, sizes, times, vocabulary, split
  std::string tokenizer_model;  // serialized SentencePiece model
  std::vector<int32_t> train, heldout;
  int64_t train_documents = 0, heldout_documents = 0;
};

struct CorpusOptions {
  std::vector<std::string> data;
  int vocab = 4096;
  double heldout = 0.05;
  std::string cache_dir;  // empty: default_cache_dir()
  bool verbose = true;    // say on stderr when the tokenizer is being learned
};

std::string default_cache_dir();

// Loads the corpus from the cache, or reads, splits, learns and tokenizes it and fills the cache
// (written to a temporary name and renamed, so concurrent preparers never see half a file).
PreparedCorpus prepare_corpus(const CorpusOptions& o);

// Packs a stream into sequences of `seq` tokens, [CLS] + seq-2 tokens + [SEP], the tail dropped.
// Returns [num_sequences * seq] ids.
std::vector<int32_t> pack_sequences(const std::vector<int32_t>& stream, int seq);

}  // namespace onebit::train
