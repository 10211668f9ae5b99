// Reading, splitting, tokenizing and caching the corpus (see corpus.hpp). The cache makes every run
// after the first start in a second; its key changes when any file, the vocabulary or the split does.
#include "train/corpus.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "onebit/error.hpp"
#include "train/random.hpp"

namespace fs = std::filesystem;

namespace onebit::train {
namespace {

constexpr int kCacheVersion = 1;
constexpr size_t kFewFiles = 20;           // below this, files are cut into paragraph documents
constexpr size_t kParagraphDocument = 4096;  // bytes per such document

struct FileEntry {
  std::string name;
  fs::path path;
  uintmax_t size = 0;
  int64_t mtime = 0;
};

bool looks_binary(const std::string& head) { return head.find('\0') != std::string::npos; }

std::vector<FileEntry> list_files(const std::vector<std::string>& paths) {
  std::vector<std::string> roots = paths;
  if (roots.empty()) {
    ONEBIT_CHECK(fs::is_directory(kDefaultCorpus),
                 "onebit train: no --data given and the default corpus " << kDefaultCorpus
                     << " is missing; install python3.11-doc (scripts/setup.sh does) or pass --data FILE|DIR");
    roots.push_back(kDefaultCorpus);
  }
  std::vector<FileEntry> files;
  auto add = [&](size_t i, const fs::path& p, const std::string& rel) {
    std::error_code ec;
    FileEntry f{std::to_string(i) + ":" + rel, p, fs::file_size(p, ec), 0};
    if (ec) return;
    f.mtime = static_cast<int64_t>(fs::last_write_time(p, ec).time_since_epoch().count());
    files.push_back(std::move(f));
  };
  for (size_t i = 0; i < roots.size(); ++i) {
    const fs::path root(roots[i]);
    if (fs::is_directory(root)) {
      for (const auto& e : fs::recursive_directory_iterator(
               root, fs::directory_options::follow_directory_symlink | fs::directory_options::skip_permission_denied))
        if (e.is_regular_file()) add(i, e.path(), fs::relative(e.path(), root).generic_string());
    } else if (fs::is_regular_file(root)) {
      add(i, root, root.filename().generic_string());
    } else {
      ONEBIT_CHECK(false, "onebit train: --data " << roots[i] << ": no such file or directory");
    }
  }
  std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  ONEBIT_CHECK(!files.empty(), "onebit train: --data holds no files");
  return files;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

bool blank(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; });
}

std::vector<Document> read_files(const std::vector<FileEntry>& files) {
  std::vector<Document> docs;
  for (const auto& f : files) {
    std::string text = read_file(f.path);
    if (blank(text) || looks_binary(text.substr(0, 8192))) continue;
    docs.push_back({f.name, std::move(text)});
  }
  ONEBIT_CHECK(!docs.empty(), "onebit train: --data holds no text files");
  if (docs.size() >= kFewFiles) return docs;
  // Few files: documents of about kParagraphDocument bytes, cut at blank lines.
  std::vector<Document> parts;
  for (const auto& d : docs) {
    std::string cur;
    std::istringstream in(d.text);
    auto flush = [&] {
      if (blank(cur)) return;
      char idx[16];
      std::snprintf(idx, sizeof idx, "#%06zu", parts.size());
      parts.push_back({d.name + idx, std::move(cur)});
      cur.clear();
    };
    for (std::string line; std::getline(in, line);) {
      if (blank(line) && cur.size() >= kParagraphDocument) flush();
      cur += line;
      cur += '\n';
    }
    flush();
  }
  return parts;
}

void write_tokens(const fs::path& p, const std::vector<int32_t>& v) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(int32_t)));
  ONEBIT_CHECK(out.good(), "onebit train: cannot write the token cache " << p);
}

std::vector<int32_t> read_tokens(const fs::path& p, int64_t count) {
  std::vector<int32_t> v(static_cast<size_t>(count));
  std::ifstream in(p, std::ios::binary);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(int32_t)));
  ONEBIT_CHECK(in.gcount() == static_cast<std::streamsize>(v.size() * sizeof(int32_t)),
               "onebit train: the token cache " << p << " is short; delete it and run again");
  return v;
}

std::optional<PreparedCorpus> load_cache(const fs::path& dir, const std::string& key) {
  if (!fs::exists(dir / "info.json")) return std::nullopt;
  auto info = nlohmann::json::parse(read_file(dir / "info.json"));
  PreparedCorpus c;
  c.key = key;
  c.tokenizer_model = read_file(dir / "tokenizer.model");
  c.train = read_tokens(dir / "train.tokens", info.at("train_tokens").get<int64_t>());
  c.heldout = read_tokens(dir / "heldout.tokens", info.at("heldout_tokens").get<int64_t>());
  c.train_documents = info.at("train_documents");
  c.heldout_documents = info.at("heldout_documents");
  return c;
}

void store_cache(const fs::path& dir, const PreparedCorpus& c) {
  const fs::path tmp = dir.string() + ".tmp-" + std::to_string(::getpid());
  fs::create_directories(tmp);
  {
    std::ofstream m(tmp / "tokenizer.model", std::ios::binary);
    m << c.tokenizer_model;
  }
  write_tokens(tmp / "train.tokens", c.train);
  write_tokens(tmp / "heldout.tokens", c.heldout);
  nlohmann::json info{{"key", c.key},
                      {"train_tokens", c.train.size()},
                      {"heldout_tokens", c.heldout.size()},
                      {"train_documents", c.train_documents},
                      {"heldout_documents", c.heldout_documents}};
  std::ofstream(tmp / "info.json") << info.dump(2) << "\n";
  std::error_code ec;
  fs::rename(tmp, dir, ec);
  if (ec) fs::remove_all(tmp, ec);  // another process filled the cache first: theirs is the same
}

}  // namespace

std::vector<Document> read_documents(const std::vector<std::string>& paths) {
  return read_files(list_files(paths));
}

bool is_heldout(const std::string& name, double fraction) {
  const double u = static_cast<double>(splitmix64(fnv1a(name)) >> 11) * 0x1.0p-53;
  return u < fraction;
}

std::string default_cache_dir() {
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/onebit";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/onebit";
  return (fs::temp_directory_path() / "onebit-cache").string();
}

PreparedCorpus prepare_corpus(const CorpusOptions& o) {
  ONEBIT_CHECK(o.heldout > 0 && o.heldout < 1, "onebit train: --heldout must be in (0, 1), not " << o.heldout);
  ONEBIT_CHECK(o.vocab >= 64, "onebit train: --vocab must be at least 64, not " << o.vocab);
  const auto files = list_files(o.data);
  uint64_t h = fnv1a("onebit-corpus-v" + std::to_string(kCacheVersion));
  for (const auto& f : files)
    h = fnv1a(f.name + "|" + std::to_string(f.size) + "|" + std::to_string(f.mtime) + "|" + f.path.string(), h);
  h = fnv1a("vocab=" + std::to_string(o.vocab) + " heldout=" + std::to_string(o.heldout), h);
  char key[17];
  std::snprintf(key, sizeof key, "%016llx", static_cast<unsigned long long>(h));
  const fs::path dir = fs::path(o.cache_dir.empty() ? default_cache_dir() : o.cache_dir) / ("corpus-" + std::string(key));
  if (auto cached = load_cache(dir, key)) return std::move(*cached);

  auto docs = read_files(files);
  std::vector<const Document*> train, held;
  for (const auto& d : docs) (is_heldout(d.name, o.heldout) ? held : train).push_back(&d);
  // Tiny corpora: make sure both sides hold something (the last document goes to the held-out set).
  if (held.empty() && docs.size() >= 2) held.push_back(train.back()), train.pop_back();
  ONEBIT_CHECK(!train.empty() && !held.empty(),
               "onebit train: cannot split " << docs.size() << " document(s) into training and held-out sets");
  if (o.verbose)
    std::cerr << "onebit train: learning a " << o.vocab << "-piece tokenizer from " << train.size()
              << " training documents (held out: " << held.size() << "); cached in " << dir.string() << "\n";
  std::vector<const std::string*> texts;
  for (const auto* d : train) texts.push_back(&d->text);
  Tokenizer tok = Tokenizer::learn(texts, o.vocab);

  PreparedCorpus c;
  c.key = key;
  c.tokenizer_model = tok.serialized();
  auto tokenize = [&](const std::vector<const Document*>& ds, std::vector<int32_t>& out) {
    for (const auto* d : ds) {
      auto ids = tok.encode(d->text);
      out.insert(out.end(), ids.begin(), ids.end());
      out.push_back(SpecialIds::kSep);
    }
  };
  tokenize(train, c.train);
  tokenize(held, c.heldout);
  c.train_documents = static_cast<int64_t>(train.size());
  c.heldout_documents = static_cast<int64_t>(held.size());
  fs::create_directories(dir.parent_path());
  store_cache(dir, c);
  return c;
}

std::vector<int32_t> pack_sequences(const std::vector<int32_t>& stream, int seq) {
  ONEBIT_CHECK(seq >= 3, "onebit train: sequences need at least 3 tokens, not " << seq);
  const size_t body = static_cast<size_t>(seq - 2);
  const size_t n = stream.size() / body;
  std::vector<int32_t> out(n * static_cast<size_t>(seq));
  for (size_t i = 0; i < n; ++i) {
    int32_t* s = out.data() + i * static_cast<size_t>(seq);
    s[0] = SpecialIds::kCls;
    std::copy_n(stream.data() + i * body, body, s + 1);
    s[seq - 1] = SpecialIds::kSep;
  }
  return out;
}

}  // namespace onebit::train
