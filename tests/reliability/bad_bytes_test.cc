// Bad bytes: damaged and hostile envelopes written straight into LMDB are a
// miss or a regeneration, never a crash, a wrong value or a huge allocation.
//
// 1,000 valid envelopes of mixed types (strings of many sizes, a struct of
// containers, vector<int>) through every codec that carries them, some under
// long keys (full key in the envelope), then, each written with the backend's
// own set() under a key the region reads:
//
//   (a) every truncation of every envelope;
//   (b) random flips of 1 or 2 bytes (xor with a non-zero mask) anywhere in
//       the envelope [100,000; 1,000,000 under --soak];
//   (c) length fields of 2^30, 2^40 and 2^64-1: the envelope's payload length
//       (with the original checksum and with a recomputed one), and every
//       cereal size prefix inside binary and portable_binary payloads, in an
//       envelope with a valid checksum so the bytes reach the codec.
//
// Every variant is read with get_multi, get, get_or_create_multi and (one in
// eight) get_or_create, whose creators return a known value. A read must
// return nothing, the known value, or the original value (only possible when
// the damage left the bytes as they were, which the variants here never do).
// Peak RSS (VmHWM) may grow by less than 64 MiB over the whole run.
#include <xxhash.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "dogpile/dogpile.h"
#include "reliability_util.h"
#include "test_util.h"

#if defined(__SANITIZE_ADDRESS__)
// Under ASan a lying length prefix that reached an allocation of more than
// 64 MiB ends the run with an allocation-size error.
extern "C" const char* __asan_default_options() { return "max_allocation_size_mb=64"; }
#endif

namespace bad_bytes {

// A user type with the containers cached values commonly hold.
struct Item {
  std::string name{};
  std::vector<int> numbers{};
  std::map<std::string, int> counts{};
  std::vector<std::string> tags{};
  double score = 0;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(CEREAL_NVP(name), CEREAL_NVP(numbers), CEREAL_NVP(counts), CEREAL_NVP(tags),
       CEREAL_NVP(score));
  }
  friend bool operator==(const Item&, const Item&) = default;
};

}  // namespace bad_bytes

DOGPILE_REGISTER_TYPE(bad_bytes::Item, "dogpile.test.bad_bytes.Item", 1);
DOGPILE_REGISTER_TYPE(std::vector<int>, "dogpile.test.bad_bytes.vector<int>", 1);

using namespace dogpile;
using namespace dogpile::test;
using bad_bytes::Item;

namespace {

constexpr std::uint64_t kLies[] = {std::uint64_t{1} << 30, std::uint64_t{1} << 40,
                                   std::numeric_limits<std::uint64_t>::max()};
constexpr std::size_t kEnvelopes = 1000;
constexpr std::size_t kBatch = 256;  // variants written in one transaction
constexpr std::size_t kPayloadLengthOffset = 48;

using Value = std::variant<std::string, Item, std::vector<int>>;

// What a creator returns: never equal to an original value.
template <class T>
T regenerated() {
  if constexpr (std::is_same_v<T, std::string>) {
    return "regenerated";
  } else if constexpr (std::is_same_v<T, Item>) {
    return Item{.name = "regenerated", .numbers = {-1}};
  } else {
    return std::vector<int>{-1, -1};
  }
}

struct Sample {
  Value value;
  CodecId codec = CodecId::kBinary;
  bool long_key = false;  // stored under hashed keys, with the full key in the envelope
};

std::string random_bytes(std::mt19937_64& rng, std::size_t size) {
  std::string s(size, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

// Sizes spread over 0..2 KiB, most of them small.
std::size_t random_size(std::mt19937_64& rng) {
  const std::uint64_t bucket = rng() % 10;
  if (bucket < 6) return rng() % 65;
  if (bucket < 9) return 65 + rng() % 448;
  return 513 + rng() % 1536;
}

Sample random_sample(std::mt19937_64& rng) {
  Sample s;
  s.long_key = rng() % 10 == 0;
  const std::uint64_t kind = rng() % 3;
  if (kind == 0) {
    std::string text = random_bytes(rng, random_size(rng));
    s.codec = static_cast<CodecId>(rng() % 4);  // raw, binary, portable_binary, json
    // cereal's JSON reader cannot carry a NUL inside a string; the top-level
    // string has its own reader, so only its JSON needs nothing special.
    s.value = std::move(text);
  } else {
    s.codec = static_cast<CodecId>(1 + rng() % 3);
    if (kind == 1) {
      Item item;
      item.name = "item-" + std::to_string(rng() % 100000);
      for (std::size_t i = rng() % 40; i > 0; --i) item.numbers.push_back(static_cast<int>(rng()));
      for (std::size_t i = rng() % 8; i > 0; --i) {
        item.counts["k" + std::to_string(rng() % 1000)] = static_cast<int>(rng() % 2000) - 1000;
      }
      for (std::size_t i = rng() % 6; i > 0; --i) {
        std::string tag(rng() % 20, 'a');
        for (char& c : tag) c = static_cast<char>('a' + rng() % 26);
        item.tags.push_back(std::move(tag));
      }
      item.score = static_cast<double>(rng() % 1000000) / 7.0;
      s.value = std::move(item);
    } else {
      std::vector<int> numbers(random_size(rng) / 4);
      for (int& n : numbers) n = static_cast<int>(rng());
      s.value = std::move(numbers);
    }
  }
  return s;
}

// Slot keys: all of one length, so every slot's envelope has the same size.
std::string slot_key(bool long_key, std::size_t slot) {
  std::string index = std::to_string(slot);
  index.insert(0, 6 - index.size(), '0');
  return long_key ? std::string(kMaxInlineKeySize + 90, 'L') + index : "slot-" + index;
}

template <class T>
std::string envelope_of(const Sample& sample, const T& value, std::string_view key) {
  EnvelopeMeta meta;
  meta.created_at_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
  std::string out;
  encode_value(sample.codec, value, meta,
               sample.long_key ? std::optional<std::string_view>(key) : std::nullopt, out);
  return out;
}

void put_le64(std::string& bytes, std::size_t at, std::uint64_t value) {
  for (std::size_t i = 0; i < 8; ++i) {
    bytes[at + i] = static_cast<char>(static_cast<unsigned char>(value >> (8 * i)));
  }
}

// Recomputes the checksum after an edit, as a faulty writer would.
void reseal(std::string& envelope) {
  const std::size_t body = envelope.size() - kEnvelopeTrailerSize;
  put_le64(envelope, body, XXH3_64bits(envelope.data(), body));
}

// Offsets of every cereal size prefix in a binary or portable_binary
// payload of `value` (after the portable endianness byte, if any).
void size_prefixes(const std::string& s, std::size_t& at, std::vector<std::size_t>& out) {
  out.push_back(at);
  at += 8 + s.size();
}
void size_prefixes(const std::vector<int>& v, std::size_t& at, std::vector<std::size_t>& out) {
  out.push_back(at);
  at += 8 + 4 * v.size();
}
void size_prefixes(const Item& item, std::size_t& at, std::vector<std::size_t>& out) {
  size_prefixes(item.name, at, out);
  size_prefixes(item.numbers, at, out);
  out.push_back(at);
  at += 8;
  for (const auto& [key, count] : item.counts) {
    size_prefixes(key, at, out);
    at += sizeof(count);
  }
  out.push_back(at);
  at += 8;
  for (const std::string& tag : item.tags) size_prefixes(tag, at, out);
  at += sizeof(item.score);
}

struct Tally {
  std::uint64_t truncations = 0;
  std::uint64_t flips = 0;
  std::uint64_t length_lies = 0;
  std::uint64_t reads = 0;
  std::uint64_t misses = 0;
  std::uint64_t regenerations = 0;
  std::uint64_t originals = 0;  // reads that returned the original value
  std::uint64_t wrong = 0;
};

class Harness {
 public:
  explicit Harness(const std::string& dir)
      : backend_(open_lmdb_backend(
            LmdbOptions{.path = dir, .region = "bad", .durability = Durability::kNoSync})),
        region_(RegionOptions{.name = "bad",
                              .logger = [this](LogLevel, std::string_view) { ++logs_; }},
                backend_) {}

  Tally tally;

  // Writes `count` variants, made one batch at a time by make(i, slot), each
  // under its slot's key, and reads them every way.
  template <class T, class Make>
  void run(const Sample& sample, const T& original, std::size_t total, Make&& make) {
    for (std::size_t first = 0; first < total; first += kBatch) {
      const std::size_t count = std::min(kBatch, total - first);
      std::vector<std::string> variants;
      for (std::size_t i = 0; i < count; ++i) variants.push_back(make(first + i, i));
      std::vector<KeyValue> items;
      std::vector<std::string> keys;
      for (std::size_t i = 0; i < count; ++i) {
        keys.push_back(slot_key(sample.long_key, i));
        items.emplace_back(keys.back(), variants[i]);
      }
      REQUIRE(backend_->set_multi(items));

      const std::vector<std::optional<T>> many = region_.get_multi<T>(keys);
      for (const std::optional<T>& v : many) judge(original, v, false);
      for (const std::string& key : keys) judge(original, region_.get<T>(key), false);

      const std::vector<T> created = region_.get_or_create_multi<T>(
          keys, [](std::span<const std::string> missing) {
            return std::vector<T>(missing.size(), regenerated<T>());
          });
      for (const T& v : created) judge(original, std::optional<T>(v), true);

      // get_or_create one key at a time, on a few of the same bytes again.
      for (std::size_t i = 0; i < count; i += 8) {
        REQUIRE(backend_->set(keys[i], variants[i]));
        judge(original, std::optional<T>(region_.get_or_create<T>(keys[i], [] {
                return regenerated<T>();
              })),
              true);
      }
    }
  }

 private:
  template <class T>
  void judge(const T& original, const std::optional<T>& got, bool created) {
    ++tally.reads;
    if (!got) {
      if (created) ++tally.wrong;  // get_or_create always returns a value
      ++tally.misses;
    } else if (*got == original) {
      ++tally.originals;
    } else if (created && *got == regenerated<T>()) {
      ++tally.regenerations;
    } else {
      ++tally.wrong;
    }
  }

  std::shared_ptr<Backend> backend_;
  Region region_;
  std::uint64_t logs_ = 0;
};

template <class T>
void exercise(Harness& h, const Sample& sample, const T& value, std::size_t flips,
              std::mt19937_64& rng) {
  // Every slot's envelope, for the slot's own key (long keys are in it).
  std::vector<std::string> originals;
  const auto original_for = [&](std::size_t slot) -> const std::string& {
    while (originals.size() <= slot) {
      originals.push_back(envelope_of(sample, value, slot_key(sample.long_key, originals.size())));
    }
    return originals[slot];
  };
  const std::size_t size = original_for(0).size();

  // (a) every truncation, the empty value included.
  h.run(sample, value, size,
        [&](std::size_t n, std::size_t slot) { return original_for(slot).substr(0, n); });
  h.tally.truncations += size;

  // (b) flips of 1 or 2 distinct bytes.
  h.run(sample, value, flips, [&](std::size_t, std::size_t slot) {
    std::string bytes = original_for(slot);
    const std::size_t a = rng() % size;
    bytes[a] = static_cast<char>(bytes[a] ^ static_cast<char>(1 + rng() % 255));
    if (rng() % 2 == 0) {
      std::size_t b = rng() % size;
      while (b == a) b = rng() % size;
      bytes[b] = static_cast<char>(bytes[b] ^ static_cast<char>(1 + rng() % 255));
    }
    return bytes;
  });
  h.tally.flips += flips;

  // (c) length fields: the envelope's payload length, checksum kept and
  // recomputed; then each cereal size prefix, checksum recomputed.
  struct Lie {
    std::size_t at;
    std::uint64_t value;
    bool reseal;
  };
  std::vector<Lie> lies;
  for (const std::uint64_t lie : kLies) {
    lies.push_back({kPayloadLengthOffset, lie, false});
    lies.push_back({kPayloadLengthOffset, lie, true});
  }
  if (sample.codec == CodecId::kBinary || sample.codec == CodecId::kPortableBinary) {
    const std::size_t payload_at =
        kEnvelopeHeaderSize + (sample.long_key ? slot_key(true, 0).size() : 0);
    std::size_t at = payload_at + (sample.codec == CodecId::kPortableBinary ? 1 : 0);
    std::vector<std::size_t> prefixes;
    size_prefixes(value, at, prefixes);
    REQUIRE(at == size - kEnvelopeTrailerSize);  // the layout walk covered the payload
    for (const std::size_t prefix : prefixes) {
      // Little-endian host: both codecs' byte order.
      for (const std::uint64_t lie : kLies) lies.push_back({prefix, lie, true});
    }
  }
  h.run(sample, value, lies.size(), [&](std::size_t i, std::size_t slot) {
    std::string bytes = original_for(slot);
    put_le64(bytes, lies[i].at, lies[i].value);
    if (lies[i].reseal) reseal(bytes);
    return bytes;
  });
  h.tally.length_lies += lies.size();
}

}  // namespace

TEST_CASE("damaged and hostile envelopes in LMDB are misses or regenerations") {
  REQUIRE(std::endian::native == std::endian::little);  // the size-prefix walk writes LE
  std::mt19937_64 rng(reliability_seed());
  const std::size_t total_flips = scaled<std::size_t>(100'000, 1'000'000);

  std::vector<Sample> samples;
  for (std::size_t i = 0; i < kEnvelopes; ++i) samples.push_back(random_sample(rng));

  TempDir dir;
  Harness h(dir.path());
  const long hwm_before = proc_status_kib("VmHWM");
  REQUIRE(hwm_before > 0);

  for (std::size_t i = 0; i < samples.size(); ++i) {
    const Sample& sample = samples[i];
    // Flips spread evenly; the first envelopes take the remainder.
    const std::size_t flips =
        total_flips / kEnvelopes + (i < total_flips % kEnvelopes ? 1 : 0);
    std::visit([&](const auto& value) { exercise(h, sample, value, flips, rng); }, sample.value);
  }

  const long hwm_growth = proc_status_kib("VmHWM") - hwm_before;
  const Tally& t = h.tally;
  figure("bad bytes: %zu envelopes", samples.size());
  figure("bad bytes: %llu truncations tried", static_cast<unsigned long long>(t.truncations));
  figure("bad bytes: %llu flips tried", static_cast<unsigned long long>(t.flips));
  figure("bad bytes: %llu length-field lies tried",
         static_cast<unsigned long long>(t.length_lies));
  figure("bad bytes: %llu reads: %llu misses, %llu regenerations, %llu originals",
         static_cast<unsigned long long>(t.reads), static_cast<unsigned long long>(t.misses),
         static_cast<unsigned long long>(t.regenerations),
         static_cast<unsigned long long>(t.originals));
  figure("bad bytes: %llu wrong values", static_cast<unsigned long long>(t.wrong));
  figure("bad bytes: peak RSS growth %ld KiB", hwm_growth);

  CHECK(t.flips == total_flips);
  CHECK(t.wrong == 0);
  CHECK(t.originals == 0);  // every variant differs from the envelope it came from
  // AddressSanitizer's shadow memory and quarantine make RSS meaningless;
  // there the allocator itself refuses any single allocation over 64 MiB
  // (__asan_default_options below), which aborts the test.
  if (!kSanitized) CHECK(hwm_growth < 64 * 1024);
}
