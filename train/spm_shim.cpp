// libonebit_spm.so: SentencePiece behind the C interface of spm_shim.h, isolated from libtorch's
// protobuf (see there). Nothing here may throw across the C boundary.
#include "train/spm_shim.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

void set_error(char* err, size_t errlen, const std::string& msg) {
  if (!err || errlen == 0) return;
  std::strncpy(err, msg.c_str(), errlen - 1);
  err[errlen - 1] = '\0';
}

bool blank(std::string_view s) {
  for (char c : s)
    if (c != ' ' && c != '\t' && c != '\r') return false;
  return true;
}

class Lines : public sentencepiece::SentenceIterator {
 public:
  Lines(onebit_spm_next_line next, void* ctx) : next_(next), ctx_(ctx) { Next(); }
  bool done() const override { return done_; }
  void Next() override {
    const char* p = nullptr;
    size_t n = 0;
    done_ = next_(ctx_, &p, &n) == 0;
    if (!done_) value_.assign(p, n);
  }
  const std::string& value() const override { return value_; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  onebit_spm_next_line next_;
  void* ctx_;
  bool done_ = false;
  std::string value_;
};

template <class T>
T* copy_out(const T* data, size_t n) {
  T* out = static_cast<T*>(std::malloc(n ? n * sizeof(T) : 1));
  if (out && n) std::memcpy(out, data, n * sizeof(T));
  return out;
}

// Runs f (which returns a sentencepiece Status) with every failure turned into 1 and a message.
template <class F>
int guarded(char* err, size_t errlen, F f) {
  try {
    const sentencepiece::util::Status st = f();
    if (st.ok()) return 0;
    set_error(err, errlen, st.ToString());
  } catch (const std::exception& e) {
    set_error(err, errlen, e.what());
  }
  return 1;
}

}  // namespace

extern "C" {

int onebit_spm_train(const char* const* keys, const char* const* values, int nargs, onebit_spm_next_line next,
                     void* ctx, char** model, size_t* model_len, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    std::unordered_map<std::string, std::string> args;
    for (int i = 0; i < nargs; ++i) args[keys[i]] = values[i];
    sentencepiece::SetRandomGeneratorSeed(12345);  // deterministic sentence sampling
    Lines lines(next, ctx);
    std::string out;
    auto st = sentencepiece::SentencePieceTrainer::Train(args, &lines, &out);
    if (st.ok()) {
      *model = copy_out(out.data(), out.size());
      *model_len = out.size();
    }
    return st;
  });
}

void* onebit_spm_load(const char* model, size_t len, char* err, size_t errlen) {
  try {
    auto* sp = new sentencepiece::SentencePieceProcessor();
    auto st = sp->LoadFromSerializedProto(std::string_view(model, len));
    if (!st.ok()) {
      set_error(err, errlen, st.ToString());
      delete sp;
      return nullptr;
    }
    return sp;
  } catch (const std::exception& e) {
    set_error(err, errlen, e.what());
    return nullptr;
  }
}

void onebit_spm_free(void* processor) { delete static_cast<sentencepiece::SentencePieceProcessor*>(processor); }

int onebit_spm_encode_lines(void* processor, const char* text, size_t len, int32_t** ids, size_t* n, char* err,
                            size_t errlen) {
  return guarded(err, errlen, [&] {
    auto* sp = static_cast<sentencepiece::SentencePieceProcessor*>(processor);
    std::string_view t(text, len);
    std::vector<int32_t> out;
    std::vector<int> line_ids;
    size_t pos = 0;
    while (pos < t.size()) {
      size_t end = t.find('\n', pos);
      if (end == std::string_view::npos) end = t.size();
      const std::string_view line = t.substr(pos, end - pos);
      pos = end + 1;
      if (blank(line)) continue;
      auto st = sp->Encode(line, &line_ids);
      if (!st.ok()) return st;
      out.insert(out.end(), line_ids.begin(), line_ids.end());
    }
    *ids = copy_out(out.data(), out.size());
    *n = out.size();
    return sentencepiece::util::Status();
  });
}

int onebit_spm_decode(void* processor, const int32_t* ids, size_t n, char** text, size_t* len, char* err,
                      size_t errlen) {
  return guarded(err, errlen, [&] {
    auto* sp = static_cast<sentencepiece::SentencePieceProcessor*>(processor);
    std::string out;
    auto st = sp->Decode(std::vector<int>(ids, ids + n), &out);
    if (st.ok()) {
      *text = copy_out(out.data(), out.size());
      *len = out.size();
    }
    return st;
  });
}

int onebit_spm_vocab_size(void* processor) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(processor)->GetPieceSize();
}

int onebit_spm_piece_to_id(void* processor, const char* piece) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(processor)->PieceToId(piece);
}

void onebit_spm_free_buffer(void* p) { std::free(p); }

}  // extern "C"
