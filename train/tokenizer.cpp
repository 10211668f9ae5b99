// Tokenizer over libonebit_spm.so, loaded once with dlopen(RTLD_LOCAL | RTLD_DEEPBIND) so that
// SentencePiece's embedded protobuf never meets libtorch's (see spm_shim.h).
#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

#include "onebit/error.hpp"
#include "proc/proc.hpp"
#include "train/corpus.hpp"
#include "train/spm_shim.h"

namespace onebit::train {
namespace {

struct SpmApi {
  decltype(&onebit_spm_train) train;
  decltype(&onebit_spm_load) load;
  decltype(&onebit_spm_free) free;
  decltype(&onebit_spm_encode_lines) encode_lines;
  decltype(&onebit_spm_decode) decode;
  decltype(&onebit_spm_vocab_size) vocab_size;
  decltype(&onebit_spm_piece_to_id) piece_to_id;
  decltype(&onebit_spm_free_buffer) free_buffer;
};

// Where the shim may be: $ONEBIT_SPM_LIBRARY, next to this executable, where the build put it.
std::vector<std::string> candidates() {
  std::vector<std::string> c;
  if (const char* e = std::getenv("ONEBIT_SPM_LIBRARY"); e && *e) c.emplace_back(e);
  try {
    c.push_back((std::filesystem::path(proc::self_path()).parent_path() / "libonebit_spm.so").string());
  } catch (const std::exception&) {
  }
#ifdef ONEBIT_SPM_BUILD_PATH
  c.emplace_back(ONEBIT_SPM_BUILD_PATH);
#endif
  return c;
}

const SpmApi& api() {
  static SpmApi a{};
  static std::string error;
  static std::once_flag once;
  std::call_once(once, [] {
    void* h = nullptr;
    std::string tried;
    for (const auto& path : candidates()) {
      if (!std::filesystem::exists(path)) {
        tried += " " + path + " (missing)";
        continue;
      }
      h = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (h) break;
      tried += " " + path + " (" + ::dlerror() + ")";
    }
    if (!h) {
      error = "onebit train: cannot load the SentencePiece shim libonebit_spm.so; tried" + tried +
              " (set ONEBIT_SPM_LIBRARY to its path)";
      return;
    }
    auto sym = [&](const char* name) {
      void* p = ::dlsym(h, name);
      if (!p && error.empty()) error = std::string("onebit train: libonebit_spm.so lacks ") + name;
      return p;
    };
    a.train = reinterpret_cast<decltype(a.train)>(sym("onebit_spm_train"));
    a.load = reinterpret_cast<decltype(a.load)>(sym("onebit_spm_load"));
    a.free = reinterpret_cast<decltype(a.free)>(sym("onebit_spm_free"));
    a.encode_lines = reinterpret_cast<decltype(a.encode_lines)>(sym("onebit_spm_encode_lines"));
    a.decode = reinterpret_cast<decltype(a.decode)>(sym("onebit_spm_decode"));
    a.vocab_size = reinterpret_cast<decltype(a.vocab_size)>(sym("onebit_spm_vocab_size"));
    a.piece_to_id = reinterpret_cast<decltype(a.piece_to_id)>(sym("onebit_spm_piece_to_id"));
    a.free_buffer = reinterpret_cast<decltype(a.free_buffer)>(sym("onebit_spm_free_buffer"));
  });
  ONEBIT_CHECK(error.empty(), error);
  return a;
}

bool blank_line(std::string_view s) {
  for (char c : s)
    if (c != ' ' && c != '\t' && c != '\r') return false;
  return true;
}

// The non-blank lines of the training documents, handed to the trainer one at a time.
struct LineSource {
  const std::vector<const std::string*>& texts;
  size_t doc = 0, pos = 0;
  static int next(void* ctx, const char** line, size_t* len) {
    auto* s = static_cast<LineSource*>(ctx);
    while (s->doc < s->texts.size()) {
      const std::string& t = *s->texts[s->doc];
      if (s->pos >= t.size()) {
        ++s->doc, s->pos = 0;
        continue;
      }
      size_t end = t.find('\n', s->pos);
      if (end == std::string::npos) end = t.size();
      const std::string_view l(t.data() + s->pos, end - s->pos);
      s->pos = end + 1;
      if (blank_line(l)) continue;
      *line = l.data(), *len = l.size();
      return 1;
    }
    return 0;
  }
};

}  // namespace

Tokenizer Tokenizer::learn(const std::vector<const std::string*>& texts, int vocab) {
  const SpmApi& a = api();
  const std::string v = std::to_string(vocab);
  // Unigram, BERT's specials at fixed ids; a small corpus gets a smaller vocabulary, not an error.
  // A sample of 60K lines learns nearly the same pieces as the whole Python docs (0.4% more tokens
  // on them) in a seventh of the time; the sample is seeded, so the result is deterministic.
  const char* keys[] = {"model_type", "vocab_size", "hard_vocab_limit", "pad_id", "unk_id", "bos_id", "eos_id",
                        "pad_piece", "unk_piece", "bos_piece", "eos_piece", "user_defined_symbols",
                        "input_sentence_size", "shuffle_input_sentence", "num_threads", "minloglevel"};
  const char* values[] = {"unigram", v.c_str(), "false", "0", "1", "2", "3", "[PAD]", "[UNK]", "[CLS]", "[SEP]",
                          "[MASK]", "60000", "true", "2", "2"};
  static_assert(std::size(keys) == std::size(values));
  LineSource src{texts};
  char err[512] = "";
  char* model = nullptr;
  size_t len = 0;
  ONEBIT_CHECK(a.train(keys, values, static_cast<int>(std::size(keys)), &LineSource::next, &src, &model, &len, err,
                       sizeof err) == 0,
               "onebit train: learning the SentencePiece tokenizer failed: " << err);
  std::string serialized(model, len);
  a.free_buffer(model);
  Tokenizer t = from_serialized(std::move(serialized));
  ONEBIT_CHECK(a.piece_to_id(t.sp_, "[MASK]") == SpecialIds::kMask,
               "onebit train: the tokenizer put [MASK] at id " << a.piece_to_id(t.sp_, "[MASK]"));
  return t;
}

Tokenizer Tokenizer::from_serialized(std::string model) {
  const SpmApi& a = api();
  Tokenizer t;
  t.model_ = std::move(model);
  char err[512] = "";
  t.sp_ = a.load(t.model_.data(), t.model_.size(), err, sizeof err);
  ONEBIT_CHECK(t.sp_, "onebit train: loading the tokenizer failed: " << err);
  return t;
}

Tokenizer::Tokenizer(Tokenizer&& o) noexcept : model_(std::move(o.model_)), sp_(o.sp_) { o.sp_ = nullptr; }

Tokenizer& Tokenizer::operator=(Tokenizer&& o) noexcept {
  if (this != &o) {
    if (sp_) api().free(sp_);
    model_ = std::move(o.model_);
    sp_ = o.sp_;
    o.sp_ = nullptr;
  }
  return *this;
}

Tokenizer::~Tokenizer() {
  if (sp_) api().free(sp_);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  const SpmApi& a = api();
  int32_t* ids = nullptr;
  size_t n = 0;
  char err[512] = "";
  ONEBIT_CHECK(a.encode_lines(sp_, text.data(), text.size(), &ids, &n, err, sizeof err) == 0,
               "onebit train: tokenizing failed: " << err);
  std::vector<int32_t> out(ids, ids + n);
  a.free_buffer(ids);
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  const SpmApi& a = api();
  char* text = nullptr;
  size_t n = 0;
  char err[512] = "";
  ONEBIT_CHECK(a.decode(sp_, ids.data(), ids.size(), &text, &n, err, sizeof err) == 0,
               "onebit train: detokenizing failed: " << err);
  std::string out(text, n);
  a.free_buffer(text);
  return out;
}

int Tokenizer::vocab_size() const { return api().vocab_size(sp_); }

}  // namespace onebit::train
