// Writes the seed corpus of the fuzz targets with the library's own encoders,
// so every seed is a valid payload or envelope the fuzzer mutates from.
//
// To regenerate (from the repository root, in a build configured with clang):
//   ninja -C build-clang tests/fuzz/make_corpus
//   build-clang/tests/fuzz/make_corpus tests/fuzz/corpus
// Seeds are named gen-*; they are overwritten, and other files in the corpus
// directories (inputs kept from fuzzer findings) are left as they are. The
// output is the same on every run: values and times are fixed.
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "dogpile/codec.h"
#include "dogpile/envelope.h"
#include "fuzz_types.h"

namespace dogpile::fuzz {
namespace {

namespace fs = std::filesystem;

constexpr std::size_t kMaxSeedSize = 4096;

std::vector<std::string> strings() {
  std::string binary;
  for (int i = 0; i < 200; ++i) binary.push_back(static_cast<char>(i * 37));
  return {"", "hello", std::string("nul\0inside", 10), "\"quoted\" \\ {[json]}", binary};
}

std::vector<std::vector<std::int64_t>> number_vectors() {
  return {{},
          {42},
          {0, -1, 1, std::numeric_limits<std::int64_t>::min(),
           std::numeric_limits<std::int64_t>::max()}};
}

std::vector<NumberTable> tables() {
  return {{},
          {{"a", {1.5, -0.0, 1e300}}, {"b", {}}},
          {{"nan", {std::numeric_limits<double>::quiet_NaN(),
                    std::numeric_limits<double>::infinity(),
                    -std::numeric_limits<double>::infinity(),
                    std::numeric_limits<double>::denorm_min()}}}};
}

Record leaf(std::string name, std::int32_t id) {
  Record r;
  r.name = std::move(name);
  r.id = id;
  return r;
}

std::vector<Record> records() {
  std::vector<Record> out;
  out.push_back(Record{});

  Record full = leaf("full", 7);
  full.enabled = true;
  full.note = "a note";
  full.extra = std::int64_t{-5};
  full.flags = {1, 2, 65535};
  full.table = {{"x", {0.25}}};
  out.push_back(std::move(full));

  // Recursion both ways: children, and a chain through `next`.
  Record tree = leaf("root", 1);
  tree.extra = std::string("variant string");
  tree.children.push_back(leaf("left", 2));
  tree.children.push_back(leaf("right", 3));
  tree.children[0].extra = 2.5;
  Record* tail = &tree;
  for (int i = 0; i < 2; ++i) {
    tail->next = std::make_unique<Record>(leaf("link", 10 + i));
    tail = tail->next.get();
  }
  out.push_back(std::move(tree));
  return out;
}

void write_seed(const fs::path& dir, const std::string& name, const std::string& bytes) {
  if (bytes.size() > kMaxSeedSize) {
    std::fprintf(stderr, "make_corpus: seed %s is %zu bytes, over %zu\n", name.c_str(),
                 bytes.size(), kMaxSeedSize);
    std::exit(1);
  }
  fs::create_directories(dir);
  std::ofstream out(dir / ("gen-" + name), std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "make_corpus: cannot write %s: %s\n", (dir / name).c_str(),
                 std::strerror(errno));
    std::exit(1);
  }
}

constexpr CodecId kCodecs[] = {CodecId::kRaw, CodecId::kBinary, CodecId::kPortableBinary,
                               CodecId::kJson};

// Payload seeds for one codec target: every value the codec carries.
template <class T>
void write_payloads(const fs::path& dir, CodecId codec, const char* type,
                    const std::vector<T>& values) {
  if (!codec_supports<T>(codec)) return;
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (codec == CodecId::kJson && !std::is_same_v<T, std::string> && contains_nul(values[i])) {
      continue;
    }
    std::string bytes;
    encode_payload(codec, values[i], bytes);
    write_seed(dir, std::string(type) + "-" + std::to_string(i), bytes);
  }
}

// Envelope seeds: each value of a type under each codec that carries it, with
// expiry and without, and the first one also under a long (hashed) key.
template <RegisteredType T>
void write_envelopes(const fs::path& dir, const char* type, const std::vector<T>& values) {
  const std::string long_key(kMaxInlineKeySize + 1, 'L');
  for (const CodecId codec : kCodecs) {
    if (!codec_supports<T>(codec)) continue;
    for (std::size_t i = 0; i < values.size(); ++i) {
      if (codec == CodecId::kJson && !std::is_same_v<T, std::string> && contains_nul(values[i])) {
        continue;
      }
      EnvelopeMeta meta;
      meta.created_at_ns = std::int64_t{1'700'000'000} * 1'000'000'000 - static_cast<std::int64_t>(i) * 1000;
      if (i % 2 == 1) meta.expires_at_ns = meta.created_at_ns + 3'600'000'000'000;
      meta.sequence = meta.created_at_ns + static_cast<std::int64_t>(i);
      std::optional<std::string_view> full_key;
      if (i == 0) full_key = long_key;
      std::string bytes;
      encode_value(codec, values[i], meta, full_key, bytes);
      write_seed(dir, std::string(codec_name(codec)) + "-" + type + "-" + std::to_string(i),
                 bytes);
    }
  }
}

int run(const fs::path& root) {
  std::vector<std::vector<std::uint8_t>> byte_vectors;
  for (const std::string& s : strings()) byte_vectors.emplace_back(s.begin(), s.end());
  for (const CodecId codec : kCodecs) {
    const fs::path dir = root / (std::string(codec_name(codec)) + "_fuzz");
    write_payloads(dir, codec, "string", strings());
    write_payloads(dir, codec, "bytes", byte_vectors);
    write_payloads(dir, codec, "int64s", number_vectors());
    write_payloads(dir, codec, "table", tables());
    write_payloads(dir, codec, "record", records());
  }
  const fs::path dir = root / "envelope_fuzz";
  write_envelopes(dir, "string", strings());
  write_envelopes(dir, "int64s", number_vectors());
  write_envelopes(dir, "table", tables());
  write_envelopes(dir, "record", records());
  return 0;
}

}  // namespace
}  // namespace dogpile::fuzz

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_corpus CORPUS_DIR (tests/fuzz/corpus)\n");
    return 2;
  }
  return dogpile::fuzz::run(argv[1]);
}
