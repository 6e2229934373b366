// Codecs: round trips, payload layouts, refusals, and damaged envelopes.
#include "dogpile/codec.h"

#include <xxhash.h>

#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

namespace codec_test {

struct Record {
  std::string name;
  std::vector<int> numbers;
  std::map<std::string, int> counts;
  double score = 0;
  std::optional<std::int64_t> limit;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(CEREAL_NVP(name), CEREAL_NVP(numbers), CEREAL_NVP(counts), CEREAL_NVP(score),
       CEREAL_NVP(limit));
  }
  friend bool operator==(const Record&, const Record&) = default;
};

// A type whose own save and load functions throw after reading or writing a field.
struct Unruly {
  int a = 1;
  template <class Archive>
  void save(Archive& ar) const {
    ar(CEREAL_NVP(a));
    throw std::runtime_error("save refuses");
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(CEREAL_NVP(a));
    throw std::runtime_error("load refuses");
  }
};

// Recursive types: how deep they nest is up to the bytes.
struct Tree {
  std::vector<Tree> children;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(CEREAL_NVP(children));
  }
  friend bool operator==(const Tree&, const Tree&) = default;
};

struct Chain {
  int value = 0;
  std::unique_ptr<Chain> next;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(CEREAL_NVP(value), CEREAL_NVP(next));
  }
};

// Shared pointers of two types; cereal writes a second reference to the
// same object as a back-reference to the first one's id.
struct Shared {
  std::shared_ptr<int> number;
  std::shared_ptr<std::string> text;
  std::shared_ptr<int> same_number;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(CEREAL_NVP(number), CEREAL_NVP(text), CEREAL_NVP(same_number));
  }
};

struct Flags {
  bool on = false;
  std::optional<int> maybe;
  std::array<bool, 3> bits{};
  std::vector<bool> more;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(CEREAL_NVP(on), CEREAL_NVP(maybe), CEREAL_NVP(bits), CEREAL_NVP(more));
  }
  friend bool operator==(const Flags&, const Flags&) = default;
};

}  // namespace codec_test

DOGPILE_REGISTER_TYPE(codec_test::Record, "dogpile.test.Record", 3);

namespace {

using codec_test::Record;
using dogpile::CodecId;
using dogpile::DecodeStatus;
using dogpile::EnvelopeMeta;
using dogpile::EnvelopeView;

constexpr std::size_t kNoLimit = std::numeric_limits<std::size_t>::max();
constexpr std::array kAllCodecs = {CodecId::kRaw, CodecId::kBinary, CodecId::kPortableBinary,
                                   CodecId::kJson};
constexpr std::array kCerealCodecs = {CodecId::kBinary, CodecId::kPortableBinary, CodecId::kJson};

Record make_record() {
  Record r;
  r.name = "record \xc3\xa9 \"quoted\" \\ back";
  r.numbers.reserve(1000);
  for (int i = 0; i < 1000; ++i) r.numbers.push_back(i * i - 500'000);
  for (int i = 0; i < 20; ++i) r.counts["key-" + std::to_string(i)] = i * 37 - 100;
  r.score = -1234.5678e-3;
  r.limit = std::numeric_limits<std::int64_t>::min();
  return r;
}

// Same shape, fewer elements: for tests that decode thousands of variants.
Record make_small_record() {
  Record r = make_record();
  r.numbers.resize(40);
  r.counts.erase(r.counts.upper_bound("key-13"), r.counts.end());
  return r;
}

std::string all_bytes() {
  std::string s;
  for (int i = 0; i < 256; ++i) s.push_back(static_cast<char>(i));
  return s;
}

template <class T>
bool same_value(const T& a, const T& b) {
  return a == b;
}

// Bit-exact, except that any NaN matches any NaN (JSON spells them all "NaN").
bool same_value(double a, double b) {
  if (std::isnan(a)) return std::isnan(b);
  return std::bit_cast<std::uint64_t>(a) == std::bit_cast<std::uint64_t>(b);
}

EnvelopeMeta sample_meta() {
  EnvelopeMeta meta;
  meta.created_at_ns = 1'700'000'000'000'000'000LL;
  meta.expires_at_ns = 1'700'000'600'000'000'000LL;
  return meta;
}

// encode_value, then decode_envelope, then decode_payload.
template <dogpile::RegisteredType T>
std::optional<T> round_trip(CodecId codec, const T& value) {
  std::string envelope = "stale";
  const std::string key(512, 'k');
  encode_value(codec, value, sample_meta(), std::string_view(key), envelope);
  EnvelopeView view;
  REQUIRE(dogpile::decode_envelope(envelope, kNoLimit, view) == DecodeStatus::kOk);
  CHECK(view.meta.codec == codec);
  CHECK(view.meta.type_tag == dogpile::type_tag<T>());
  CHECK(view.meta.schema_version == dogpile::schema_version<T>());
  CHECK(view.meta.created_at_ns == sample_meta().created_at_ns);
  CHECK(view.meta.expires_at_ns == sample_meta().expires_at_ns);
  CHECK(view.full_key == std::string_view(key));
  T decoded{};
  if (!dogpile::decode_payload(codec, view.payload, decoded)) return std::nullopt;
  return decoded;
}

template <dogpile::RegisteredType T>
void check_round_trips(const std::vector<T>& values, const auto& codecs) {
  for (const CodecId codec : codecs) {
    for (std::size_t i = 0; i < values.size(); ++i) {
      CAPTURE(dogpile::codec_name(codec), i);
      const std::optional<T> decoded = round_trip(codec, values[i]);
      REQUIRE(decoded);
      CHECK(same_value(*decoded, values[i]));
    }
  }
}

template <class T>
std::string payload_of(CodecId codec, const T& value) {
  std::string out;
  dogpile::encode_payload(codec, value, out);
  return out;
}

std::string hex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (const char c : bytes) {
    out += kDigits[static_cast<unsigned char>(c) >> 4];
    out += kDigits[static_cast<unsigned char>(c) & 0xF];
  }
  return out;
}

}  // namespace

TEST_CASE("strings round-trip through every codec") {
  std::string big(100'000, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7);
  check_round_trips<std::string>(
      {"", "hello", std::string("\0", 1), std::string("\0a\0b\0", 5),
       "not UTF-8: \xff\xfe\x80\xc0\xc1 \xed\xa0\x80 end",
       "quotes \" and backslashes \\ and \\u0000 as text", all_bytes(), big},
      kAllCodecs);
}

TEST_CASE("numbers round-trip through the cereal codecs") {
  check_round_trips<std::int64_t>(
      {0, 1, -1, 42, 0x0102030405060708LL, std::numeric_limits<std::int64_t>::min(),
       std::numeric_limits<std::int64_t>::max()},
      kCerealCodecs);
  check_round_trips<double>(
      {0.0, -0.0, 1.0 / 3.0, 3.141592653589793, -2.5e-300, 1e-310,
       std::numeric_limits<double>::max(), std::numeric_limits<double>::lowest(),
       std::numeric_limits<double>::min(), std::numeric_limits<double>::denorm_min(),
       std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(),
       std::numeric_limits<double>::quiet_NaN()},
      kCerealCodecs);
}

TEST_CASE("string vectors round-trip through the cereal codecs") {
  std::vector<std::string> many;
  for (int i = 0; i < 1000; ++i)
    many.push_back(std::string(static_cast<std::size_t>(i % 17), 'a' + i % 26));
  check_round_trips<std::vector<std::string>>(
      {{}, {""}, {"a", "bc", "", " spaced ", "\xff\xfe not UTF-8", "\\u0000 as text"}, many},
      kCerealCodecs);
  // NUL bytes inside a nested string: binary codecs only (see the JSON test below).
  check_round_trips<std::vector<std::string>>(
      {{std::string("a\0b", 3), std::string("\0", 1)}},
      std::array{CodecId::kBinary, CodecId::kPortableBinary});
}

TEST_CASE("a registered user struct round-trips through the cereal codecs") {
  const Record record = make_record();
  REQUIRE(record.numbers.size() == 1000);
  REQUIRE(record.counts.size() == 20);
  check_round_trips<Record>({record, Record{}}, kCerealCodecs);
}

TEST_CASE("byte vectors round-trip through every codec, raw keeps the bytes as they are") {
  std::vector<std::uint8_t> bytes;
  for (int i = 0; i < 300; ++i) bytes.push_back(static_cast<std::uint8_t>(i));
  check_round_trips<std::vector<std::uint8_t>>({{}, bytes}, kAllCodecs);

  CHECK(payload_of(CodecId::kRaw, bytes) ==
        std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  CHECK(payload_of(CodecId::kRaw, std::string("a\0b", 3)) == std::string("a\0b", 3));

  // std::vector<char> is raw-codable but not registered: payload functions only.
  const std::vector<char> chars = {'x', '\0', 'y', '\xff'};
  for (const CodecId codec : kAllCodecs) {
    CAPTURE(dogpile::codec_name(codec));
    std::vector<char> decoded;
    REQUIRE(dogpile::decode_payload(codec, payload_of(codec, chars), decoded));
    CHECK(decoded == chars);
  }
}

TEST_CASE("the raw codec refuses types that are not bytes") {
  std::string out = "prefix";
  CHECK_THROWS_AS(dogpile::encode_payload(CodecId::kRaw, std::int64_t{5}, out),
                  std::invalid_argument);
  CHECK_THROWS_WITH(dogpile::encode_payload(CodecId::kRaw, make_record(), out),
                    Catch::Contains("'raw'"));
  CHECK(out == "prefix");  // nothing half-written is left behind
  CHECK_THROWS_AS(dogpile::encode_value(CodecId::kRaw, 1.5, sample_meta(), std::nullopt, out),
                  std::invalid_argument);

  std::int64_t number = 7;
  CHECK_FALSE(dogpile::decode_payload(CodecId::kRaw, "12345678", number));
  Record record;
  CHECK_FALSE(dogpile::decode_payload(CodecId::kRaw, payload_of(CodecId::kBinary, record), record));
  CHECK_FALSE(dogpile::codec_supports<std::int64_t>(CodecId::kRaw));
  CHECK(dogpile::codec_supports<std::string>(CodecId::kRaw));
}

TEST_CASE("an unknown codec id is refused") {
  const auto unknown = static_cast<CodecId>(9);
  std::string out;
  CHECK_THROWS_WITH(dogpile::encode_payload(unknown, std::string("x"), out),
                    Catch::Contains("'unknown'"));
  CHECK_THROWS_AS(dogpile::encode_payload(unknown, std::int64_t{1}, out), std::invalid_argument);
  std::string text;
  CHECK_FALSE(dogpile::decode_payload(unknown, "x", text));
  CHECK_FALSE(dogpile::codec_supports<std::string>(unknown));
}

TEST_CASE("encode_payload appends to what the buffer already holds") {
  for (const CodecId codec : kCerealCodecs) {
    CAPTURE(dogpile::codec_name(codec));
    std::string out = "prefix";
    dogpile::encode_payload(codec, std::int64_t{-77}, out);
    REQUIRE(out.starts_with("prefix"));
    std::int64_t decoded = 0;
    REQUIRE(dogpile::decode_payload(codec, std::string_view(out).substr(6), decoded));
    CHECK(decoded == -77);
  }
}

TEST_CASE("exceptions from a type's own save and load") {
  for (const CodecId codec : kCerealCodecs) {
    CAPTURE(dogpile::codec_name(codec));
    std::string out = "prefix";
    CHECK_THROWS_WITH(dogpile::encode_payload(codec, codec_test::Unruly{}, out), "save refuses");
    CHECK(out == "prefix");  // nothing half-written is left behind
  }
  // load throws after reading a well-formed field: decode_payload returns false.
  codec_test::Unruly unruly;
  CHECK_FALSE(dogpile::decode_payload(CodecId::kBinary, payload_of(CodecId::kBinary, 5), unruly));
  CHECK_FALSE(dogpile::decode_payload(CodecId::kPortableBinary,
                                      payload_of(CodecId::kPortableBinary, 5), unruly));
  CHECK_FALSE(dogpile::decode_payload(CodecId::kJson, R"({"value": {"a": 5}})", unruly));
}

TEST_CASE("payload layouts") {
  SECTION("binary is cereal's host-endian layout") {
    if constexpr (std::endian::native == std::endian::little) {
      CHECK(hex(payload_of(CodecId::kBinary, std::int64_t{0x0102030405060708})) ==
            "0807060504030201");
      CHECK(hex(payload_of(CodecId::kBinary, std::string("abc"))) == "0300000000000000616263");
    }
  }
  SECTION("portable binary is little-endian after a one-byte endianness marker") {
    CHECK(hex(payload_of(CodecId::kPortableBinary, std::int64_t{0x0102030405060708})) ==
          "010807060504030201");
    CHECK(hex(payload_of(CodecId::kPortableBinary, std::string("abc"))) ==
          "010300000000000000616263");
  }
  SECTION("json is one object holding the value under \"value\"") {
    CHECK(payload_of(CodecId::kJson, std::int64_t{42}) == "{\n    \"value\": 42\n}");
    CHECK(payload_of(CodecId::kJson, std::string("a\0b", 3)) ==
          "{\n    \"value\": \"a\\u0000b\"\n}");
    const std::string record = payload_of(CodecId::kJson, make_record());
    CHECK(record.starts_with("{\n    \"value\": {\n        \"name\": "));
    CHECK(record.find("\"counts\": [") != std::string::npos);
  }
}

TEST_CASE("the json codec refuses NUL bytes in strings it cannot read back whole") {
  // cereal's JSON reader would cut such strings at the NUL: a wrong value.
  std::string out = "prefix";
  CHECK_THROWS_WITH(dogpile::encode_payload(CodecId::kJson,
                                            std::vector<std::string>{std::string("a\0b", 3)}, out),
                    Catch::Contains("'json'"));
  CHECK(out == "prefix");
  Record record;
  record.name = std::string("x\0", 2);
  CHECK_THROWS_AS(dogpile::encode_payload(CodecId::kJson, record, out), std::invalid_argument);

  std::vector<std::string> strings;
  CHECK_FALSE(dogpile::decode_payload(CodecId::kJson, R"({"value": ["a\u0000b"]})", strings));
  CHECK_FALSE(dogpile::decode_payload(CodecId::kJson, R"({"value": ["\\\u0000"]})", strings));
  // An escaped backslash followed by "u0000" is text, not a NUL.
  REQUIRE(
      dogpile::decode_payload(CodecId::kJson, R"({"value": ["a\\u0000b", "\\\\u0000"]})", strings));
  CHECK(strings == std::vector<std::string>{"a\\u0000b", "\\\\u0000"});
}

TEST_CASE("payloads that are not exactly one T do not decode") {
  SECTION("trailing bytes") {
    for (const CodecId codec : kCerealCodecs) {
      CAPTURE(dogpile::codec_name(codec));
      const std::string payload = payload_of(codec, make_record());
      Record record;
      REQUIRE(dogpile::decode_payload(codec, payload, record));
      CHECK_FALSE(dogpile::decode_payload(codec, payload + "x", record));
      CHECK_FALSE(dogpile::decode_payload(codec, payload + std::string("\0", 1), record));
      std::string text;
      const std::string text_payload = payload_of(codec, std::string("text"));
      CHECK_FALSE(dogpile::decode_payload(codec, text_payload + "x", text));
      CHECK_FALSE(dogpile::decode_payload(codec, text_payload + std::string("\0junk", 5), text));
    }
    // JSON may end in whitespace; the binary codecs have no such slack.
    std::int64_t number = 0;
    CHECK(dogpile::decode_payload(CodecId::kJson,
                                  R"({"value": 5} )"
                                  "\n\t",
                                  number));
    CHECK(number == 5);
    std::string text;
    CHECK(dogpile::decode_payload(CodecId::kJson,
                                  R"({"value": "5"} )"
                                  "\n",
                                  text));
    CHECK(text == "5");
    CHECK_FALSE(
        dogpile::decode_payload(CodecId::kBinary, payload_of(CodecId::kBinary, 5) + " ", number));
  }
  SECTION("every truncation") {
    for (const CodecId codec : kCerealCodecs) {
      CAPTURE(dogpile::codec_name(codec));
      const std::string record_payload = payload_of(codec, make_small_record());
      const std::string strings_payload =
          payload_of(codec, std::vector<std::string>{"one", "", "three"});
      const std::string text_payload = payload_of(codec, std::string("some text"));
      std::size_t accepted = 0;
      for (std::size_t n = 0; n < record_payload.size(); ++n) {
        Record record;
        if (dogpile::decode_payload(codec, std::string_view(record_payload).substr(0, n), record)) {
          ++accepted;
        }
      }
      for (std::size_t n = 0; n < strings_payload.size(); ++n) {
        std::vector<std::string> strings;
        if (dogpile::decode_payload(codec, std::string_view(strings_payload).substr(0, n),
                                    strings)) {
          ++accepted;
        }
      }
      for (std::size_t n = 0; n < text_payload.size(); ++n) {
        std::string text;
        if (dogpile::decode_payload(codec, std::string_view(text_payload).substr(0, n), text)) {
          ++accepted;
        }
      }
      CHECK(accepted == 0);
    }
  }
  SECTION("another type's bytes") {
    std::int64_t number = 0;
    std::string text;
    Record record;
    // 8 length bytes + 3 characters: an int64 would leave 3 bytes unread.
    CHECK_FALSE(dogpile::decode_payload(CodecId::kBinary,
                                        payload_of(CodecId::kBinary, std::string("abc")), number));
    CHECK_FALSE(dogpile::decode_payload(CodecId::kPortableBinary,
                                        payload_of(CodecId::kPortableBinary, std::string("abc")),
                                        number));
    CHECK_FALSE(dogpile::decode_payload(CodecId::kJson, R"({"value": "text"})", number));
    CHECK_FALSE(dogpile::decode_payload(CodecId::kJson, R"({"value": 5})", text));
    CHECK_FALSE(dogpile::decode_payload(CodecId::kJson, R"({"value": "a", "other": 1})", text));
    CHECK_FALSE(dogpile::decode_payload(CodecId::kJson, R"({"other": 5})", number));
    CHECK_FALSE(dogpile::decode_payload(CodecId::kJson, R"([1, 2])", record));
    CHECK_FALSE(dogpile::decode_payload(CodecId::kJson, R"({"value": [1, 2]})", record));
    CHECK_FALSE(dogpile::decode_payload(CodecId::kJson, "not json", number));
    CHECK_FALSE(dogpile::decode_payload(CodecId::kJson, "", text));
    CHECK_FALSE(dogpile::decode_payload(CodecId::kPortableBinary, "", number));
  }
}

TEST_CASE("every truncated envelope of every codec is rejected") {
  const std::string key(600, 'k');
  for (const CodecId codec : kAllCodecs) {
    CAPTURE(dogpile::codec_name(codec));
    std::string envelope;
    if (codec == CodecId::kRaw) {
      encode_value(codec, all_bytes() + all_bytes(), sample_meta(), std::string_view(key),
                   envelope);
    } else {
      encode_value(codec, make_record(), sample_meta(), std::string_view(key), envelope);
    }
    EnvelopeView whole;
    REQUIRE(dogpile::decode_envelope(envelope, kNoLimit, whole) == DecodeStatus::kOk);
    std::size_t accepted = 0;
    for (std::size_t n = 0; n < envelope.size(); ++n) {
      EnvelopeView view;
      if (dogpile::decode_envelope(std::string_view(envelope).substr(0, n), kNoLimit, view) ==
          DecodeStatus::kOk) {
        ++accepted;
      }
    }
    CHECK(accepted == 0);
  }
}

namespace {

struct FlipOutcome {
  std::size_t accepted = 0;      // decode_envelope said kOk for changed bytes
  std::size_t wrong_values = 0;  // ... and the payload decoded to something else
  std::map<DecodeStatus, std::size_t> statuses;
};

// Flips 1 or 2 distinct bytes of `envelope` per trial (xor with a non-zero
// mask), decodes, and restores the bytes.
template <class T>
FlipOutcome flip_trials(std::string envelope, CodecId codec, const T& original, std::size_t trials,
                        std::mt19937_64& rng) {
  FlipOutcome outcome;
  const std::string pristine = envelope;
  std::uniform_int_distribution<std::size_t> position(0, envelope.size() - 1);
  std::uniform_int_distribution<int> mask(1, 255);
  std::uniform_int_distribution<int> count(1, 2);
  for (std::size_t trial = 0; trial < trials; ++trial) {
    std::size_t positions[2] = {position(rng), 0};
    const int flips = count(rng);
    if (flips == 2) {
      do positions[1] = position(rng);
      while (positions[1] == positions[0]);
    }
    for (int i = 0; i < flips; ++i) {
      envelope[positions[i]] = static_cast<char>(envelope[positions[i]] ^ mask(rng));
    }
    EnvelopeView view;
    const DecodeStatus status = dogpile::decode_envelope(envelope, kNoLimit, view);
    ++outcome.statuses[status];
    if (status == DecodeStatus::kOk) {
      ++outcome.accepted;
      T decoded{};
      if (!dogpile::decode_payload(codec, view.payload, decoded) || !(decoded == original)) {
        ++outcome.wrong_values;
      }
    }
    for (int i = 0; i < flips; ++i) envelope[positions[i]] = pristine[positions[i]];
  }
  return outcome;
}

}  // namespace

TEST_CASE("random byte flips never yield a wrong value") {
  constexpr std::uint64_t kSeed = 0x00D06F11E5EEDULL;
  INFO("std::mt19937_64 seed: " << kSeed);
  std::mt19937_64 rng(kSeed);
  constexpr std::size_t kTrials = 10'000;
  const std::string key(600, 'k');
  for (const CodecId codec : kAllCodecs) {
    CAPTURE(dogpile::codec_name(codec));
    std::string envelope;
    FlipOutcome outcome;
    if (codec == CodecId::kRaw) {
      const std::string value = all_bytes() + "raw payload";
      encode_value(codec, value, sample_meta(), std::string_view(key), envelope);
      outcome = flip_trials(envelope, codec, value, kTrials, rng);
    } else {
      const Record value = make_record();
      encode_value(codec, value, sample_meta(), std::string_view(key), envelope);
      outcome = flip_trials(envelope, codec, value, kTrials, rng);
    }
    CAPTURE(envelope.size(), outcome.statuses[DecodeStatus::kCorrupt],
            outcome.statuses[DecodeStatus::kOtherVersion]);
    CHECK(outcome.statuses[DecodeStatus::kCorrupt] + outcome.statuses[DecodeStatus::kOtherVersion] +
              outcome.statuses[DecodeStatus::kTooLarge] + outcome.accepted ==
          kTrials);
    REQUIRE(outcome.wrong_values == 0);
    REQUIRE(outcome.accepted == 0);
  }
}

TEST_CASE("damaged json payloads decode to false or a value, never a crash") {
  // Below the checksum: decode_payload alone on damaged text. JSON carries no
  // length fields, so this cannot make cereal attempt a huge allocation.
  constexpr std::uint64_t kSeed = 20240601;
  INFO("std::mt19937_64 seed: " << kSeed);
  std::mt19937_64 rng(kSeed);
  std::string payload = payload_of(CodecId::kJson, make_record());
  const std::string pristine = payload;
  std::uniform_int_distribution<std::size_t> position(0, payload.size() - 1);
  std::uniform_int_distribution<int> byte(0, 255);
  std::size_t failures = 0;
  for (int trial = 0; trial < 2'000; ++trial) {
    const std::size_t at = position(rng);
    payload[at] = static_cast<char>(byte(rng));
    Record record;
    if (!dogpile::decode_payload(CodecId::kJson, payload, record)) ++failures;
    payload[at] = pristine[at];
  }
  CHECK(failures > 0);
}

TEST_CASE("type tags") {
  CHECK(dogpile::type_tag<std::string>() == dogpile::type_tag_of("std.string"));
  CHECK(dogpile::type_tag<Record>() == dogpile::type_tag_of("dogpile.test.Record"));
  CHECK(dogpile::schema_version<Record>() == 3);
  // XXH3-64, seed 0: a published test vector pins the hash function.
  CHECK(dogpile::type_tag_of("") == 0x2D06800538D394C2ULL);
  CHECK(dogpile::type_tag_of("my.Point") == XXH3_64bits("my.Point", 8));

  const std::vector<std::uint64_t> tags = {
      dogpile::type_tag<std::string>(),
      dogpile::type_tag<std::vector<std::uint8_t>>(),
      dogpile::type_tag<bool>(),
      dogpile::type_tag<std::int32_t>(),
      dogpile::type_tag<std::int64_t>(),
      dogpile::type_tag<std::uint32_t>(),
      dogpile::type_tag<std::uint64_t>(),
      dogpile::type_tag<double>(),
      dogpile::type_tag<std::vector<std::string>>(),
      dogpile::type_tag<std::vector<std::int64_t>>(),
      dogpile::type_tag<std::map<std::string, std::string>>(),
      dogpile::type_tag<Record>(),
  };
  CHECK(std::set<std::uint64_t>(tags.begin(), tags.end()).size() == tags.size());
  CHECK(dogpile::type_tag_of("my.Point") != dogpile::type_tag_of("my.point"));
}

namespace {

constexpr std::array<std::size_t, 6> kByteSizes = {0, 1, 4095, 4096, 65536, std::size_t{1} << 20};

// `size` bytes of every value, NULs included, in no pattern tied to the size.
template <class Bytes>
Bytes bytes_of_size(std::size_t size) {
  Bytes out(size, typename Bytes::value_type{});
  std::uint32_t x = 0x9E3779B9u ^ static_cast<std::uint32_t>(size);
  for (auto& b : out) {
    x = x * 1664525u + 1013904223u;
    b = static_cast<typename Bytes::value_type>(x >> 24);
  }
  return out;
}

// What cereal's own archive writes for `value`, and reads back from `bytes`.
template <class Archive, class T>
std::string cereal_written(const T& value) {
  std::ostringstream stream;
  {
    Archive archive(stream);
    archive(value);
  }
  return std::move(stream).str();
}

template <class Archive, class T>
T cereal_read(const std::string& bytes) {
  std::istringstream stream(bytes);
  T value{};
  {
    Archive archive(stream);
    archive(value);
  }
  return value;
}

template <class T>
void check_byte_value_sizes() {
  for (const std::size_t size : kByteSizes) {
    CAPTURE(size);
    const T value = bytes_of_size<T>(size);
    for (const CodecId codec : kAllCodecs) {
      // JSON spends a line per byte of a vector; the largest would add only time.
      if (codec == CodecId::kJson && !std::is_same_v<T, std::string> && size > 65536) continue;
      CAPTURE(dogpile::codec_name(codec));
      const std::string payload = payload_of(codec, value);
      T decoded;
      REQUIRE(dogpile::decode_payload(codec, payload, decoded));
      CHECK(decoded == value);
      T reused = bytes_of_size<T>(9);  // a value that already holds bytes is replaced
      REQUIRE(dogpile::decode_payload(codec, payload, reused));
      CHECK(reused == value);
    }
    // The binary codecs write byte for byte what cereal writes, and read what it reads.
    const std::string binary = payload_of(CodecId::kBinary, value);
    CHECK(binary == cereal_written<cereal::BinaryOutputArchive>(value));
    CHECK(cereal_read<cereal::BinaryInputArchive, T>(binary) == value);
    const std::string portable = payload_of(CodecId::kPortableBinary, value);
    CHECK(portable == cereal_written<cereal::PortableBinaryOutputArchive>(value));
    CHECK(cereal_read<cereal::PortableBinaryInputArchive, T>(portable) == value);
  }
}

}  // namespace

TEST_CASE("byte-like values of every size round-trip, in cereal's own layout") {
  check_byte_value_sizes<std::string>();
  check_byte_value_sizes<std::vector<std::uint8_t>>();
  check_byte_value_sizes<std::vector<char>>();
  // Whole envelopes too, with the full key in front of the payload.
  for (const std::size_t size : kByteSizes) {
    CAPTURE(size);
    check_round_trips<std::string>({bytes_of_size<std::string>(size)}, kAllCodecs);
    check_round_trips<std::vector<std::uint8_t>>(
        {bytes_of_size<std::vector<std::uint8_t>>(size)},
        std::array{CodecId::kRaw, CodecId::kBinary, CodecId::kPortableBinary});
  }
}

TEST_CASE("byte payloads that are not exactly one value are refused") {
  for (const CodecId codec : {CodecId::kBinary, CodecId::kPortableBinary}) {
    CAPTURE(dogpile::codec_name(codec));
    const std::string payload = payload_of(codec, std::string("abcdef"));
    const std::size_t prefix_at = codec == CodecId::kPortableBinary ? 1 : 0;
    for (const std::uint64_t lie :
         {std::uint64_t{0}, std::uint64_t{5}, std::uint64_t{7}, (std::uint64_t{1} << 32) + 6,
          std::uint64_t{1} << 63, std::numeric_limits<std::uint64_t>::max()}) {
      CAPTURE(lie);
      std::string bytes = payload;
      // binary: host order; portable_binary: little-endian.
      for (std::size_t i = 0; i < 8; ++i) {
        const std::size_t shift = codec == CodecId::kBinary && std::endian::native == std::endian::big
                                      ? 8 * (7 - i)
                                      : 8 * i;
        bytes[prefix_at + i] = static_cast<char>(static_cast<unsigned char>(lie >> shift));
      }
      std::string text = "kept?";
      std::vector<std::uint8_t> octets;
      CHECK_FALSE(dogpile::decode_payload(codec, bytes, text));
      CHECK_FALSE(dogpile::decode_payload(codec, bytes, octets));
    }
    std::string text;
    for (std::size_t n = 0; n < payload.size(); ++n) {
      CAPTURE(n);
      CHECK_FALSE(dogpile::decode_payload(codec, std::string_view(payload).substr(0, n), text));
    }
    CHECK_FALSE(dogpile::decode_payload(codec, payload + "g", text));
    REQUIRE(dogpile::decode_payload(codec, payload, text));
    CHECK(text == "abcdef");
  }
}

TEST_CASE("a portable payload from a big-endian writer is read as cereal reads it") {
  // Marker 0 (and, as cereal has it, any marker but 1) means a big-endian
  // stream: the length prefix is swapped, the bytes are not.
  const std::string big_endian_six = std::string("\0\0\0\0\0\0\0\x06", 8) + "abcdef";
  for (const char marker : {'\0', '\x02', '\xff'}) {
    CAPTURE(static_cast<int>(marker));
    const std::string payload = std::string(1, marker) + big_endian_six;
    std::string text;
    REQUIRE(dogpile::decode_payload(CodecId::kPortableBinary, payload, text));
    CHECK(text == "abcdef");
    CHECK(cereal_read<cereal::PortableBinaryInputArchive, std::string>(payload) == "abcdef");
    std::vector<std::uint8_t> octets;
    REQUIRE(dogpile::decode_payload(CodecId::kPortableBinary, payload, octets));
    CHECK(octets == std::vector<std::uint8_t>{'a', 'b', 'c', 'd', 'e', 'f'});
  }
  // A little-endian prefix under a big-endian marker is a lie (6 << 56).
  const std::string mixed = std::string(1, '\0') + std::string("\x06\0\0\0\0\0\0\0", 8) + "abcdef";
  std::string text;
  CHECK_FALSE(dogpile::decode_payload(CodecId::kPortableBinary, mixed, text));
}

namespace {

codec_test::Tree tree_of_depth(std::size_t depth) {
  codec_test::Tree root;
  codec_test::Tree* node = &root;
  for (std::size_t i = 0; i < depth; ++i) {
    node->children.resize(1);
    node = &node->children[0];
  }
  return root;
}

// A binary Tree payload nested `depth` levels: a count of 1 per level, then 0.
std::string binary_tree_payload(CodecId codec, std::size_t depth) {
  std::string one("\x01\0\0\0\0\0\0\0", 8);
  std::string out = codec == CodecId::kPortableBinary ? std::string(1, '\x01') : std::string();
  out.reserve(out.size() + 8 * (depth + 1));
  for (std::size_t i = 0; i < depth; ++i) out += one;
  out.append(8, '\0');
  return out;
}

}  // namespace

TEST_CASE("deeply nested payloads are refused, not recursed into") {
  // cereal and rapidjson recurse once per level of nesting; a payload that
  // nests a million levels must not take the stack with it.
  for (const CodecId codec : kCerealCodecs) {
    CAPTURE(dogpile::codec_name(codec));
    const codec_test::Tree deep = tree_of_depth(200);
    codec_test::Tree decoded;
    REQUIRE(dogpile::decode_payload(codec, payload_of(codec, deep), decoded));
    CHECK(decoded == deep);
  }
  if (std::endian::native == std::endian::little) {
    for (const CodecId codec : {CodecId::kBinary, CodecId::kPortableBinary}) {
      CAPTURE(dogpile::codec_name(codec));
      codec_test::Tree decoded;
      REQUIRE(dogpile::decode_payload(codec, binary_tree_payload(codec, 50), decoded));
      CHECK(decoded == tree_of_depth(50));
      CHECK_FALSE(dogpile::decode_payload(codec, binary_tree_payload(codec, 1'000'000), decoded));
      // A linked list through unique_ptr: 4 bytes of value, 1 byte "next
      // follows", again and again.
      std::string chain = codec == CodecId::kPortableBinary ? std::string(1, '\x01') : "";
      for (int i = 0; i < 1'000'000; ++i) chain += std::string("\x07\0\0\0\x01", 5);
      codec_test::Chain head;
      CHECK_FALSE(dogpile::decode_payload(codec, chain, head));
    }
  }
  // JSON nested a million arrays or objects deep, as a user type and as the
  // top-level string that has its own reader.
  for (const std::string& open : {std::string("["), std::string("{\"a\":")}) {
    const std::string deep = "{\"value\": " + [&] {
      std::string s;
      for (int i = 0; i < 1'000'000; ++i) s += open;
      return s;
    }();
    codec_test::Tree tree;
    CHECK_FALSE(dogpile::decode_payload(CodecId::kJson, deep, tree));
    std::vector<int> numbers;
    CHECK_FALSE(dogpile::decode_payload(CodecId::kJson, deep, numbers));
    std::string text;
    CHECK_FALSE(dogpile::decode_payload(CodecId::kJson, deep, text));
  }
  // Brackets inside strings are text, not nesting.
  std::vector<std::string> strings;
  const std::string brackets(100'000, '[');
  REQUIRE(dogpile::decode_payload(CodecId::kJson, payload_of(CodecId::kJson,
                                                             std::vector<std::string>{brackets}),
                                  strings));
  CHECK(strings == std::vector<std::string>{brackets});
}

TEST_CASE("a bool stored as a byte other than 0 or 1 does not decode") {
  // Such a byte would make an invalid bool object; cereal writes 0 or 1.
  codec_test::Flags flags;
  flags.on = true;
  flags.maybe = 5;
  flags.bits = {true, false, true};
  flags.more = {false, true};
  for (const CodecId codec : {CodecId::kBinary, CodecId::kPortableBinary}) {
    CAPTURE(dogpile::codec_name(codec));
    const std::string payload = payload_of(codec, flags);
    codec_test::Flags decoded;
    REQUIRE(dogpile::decode_payload(codec, payload, decoded));
    CHECK(decoded == flags);
    // Every byte that holds 1 here is a bool (the int holds 5, the sizes 2,
    // an engaged optional's "nullopt" 0): each must refuse the value 2.
    std::size_t bools = 0;
    for (std::size_t at = codec == CodecId::kPortableBinary ? 1 : 0; at < payload.size(); ++at) {
      if (payload[at] != '\x01') continue;
      ++bools;
      std::string bytes = payload;
      bytes[at] = '\x02';
      CAPTURE(at);
      CHECK_FALSE(dogpile::decode_payload(codec, bytes, decoded));
    }
    CHECK(bools == 4);  // on, two of bits, one of more
    std::string single = payload_of(codec, true);
    bool value = false;
    REQUIRE(dogpile::decode_payload(codec, single, value));
    CHECK(value);
    single.back() = '\x02';
    CHECK_FALSE(dogpile::decode_payload(codec, single, value));
  }
}

TEST_CASE("a shared pointer referring to one of another type does not decode") {
  codec_test::Shared shared;
  shared.number = std::make_shared<int>(5);
  shared.text = std::make_shared<std::string>("xyz");
  shared.same_number = shared.number;
  for (const CodecId codec : kCerealCodecs) {
    CAPTURE(dogpile::codec_name(codec));
    codec_test::Shared decoded;
    REQUIRE(dogpile::decode_payload(codec, payload_of(codec, shared), decoded));
    REQUIRE(decoded.number);
    REQUIRE(decoded.text);
    CHECK(*decoded.number == 5);
    CHECK(*decoded.text == "xyz");
    CHECK(decoded.same_number == decoded.number);  // one object, as written
  }
  if (std::endian::native != std::endian::little) return;
  for (const CodecId codec : {CodecId::kBinary, CodecId::kPortableBinary}) {
    CAPTURE(dogpile::codec_name(codec));
    const std::string marker = codec == CodecId::kPortableBinary ? std::string(1, '\x01') : "";
    // number: new pointer 1 holding 5; text: a reference to pointer 1, which
    // is an int, not a string; same_number: null.
    const std::string int_then_string = marker + std::string("\x01\0\0\x80\x05\0\0\0", 8) +
                                        std::string("\x01\0\0\0", 4) + std::string(4, '\0');
    codec_test::Shared decoded;
    CHECK_FALSE(dogpile::decode_payload(codec, int_then_string, decoded));
    // The same bytes with text null and same_number the reference decode.
    const std::string int_then_int = marker + std::string("\x01\0\0\x80\x05\0\0\0", 8) +
                                     std::string(4, '\0') + std::string("\x01\0\0\0", 4);
    REQUIRE(dogpile::decode_payload(codec, int_then_int, decoded));
    CHECK(decoded.same_number == decoded.number);
    CHECK_FALSE(decoded.text);
  }
}

TEST_CASE("a json zero spelled so that rapidjson would misread it is refused") {
  // rapidjson 1.1.0 read "0e100" as about -2e146: a number whose digits are
  // all zeros, past its fast path, is refused, never decoded to a wrong value.
  for (const std::string number :
       {"0e100", "-0E+100", "0e-324", "0.00000000000000000000000", "0.0e5"}) {
    CAPTURE(number);
    const std::string payload = "{\"value\": " + number + "}";
    double value = 1.0;
    CHECK_FALSE(dogpile::decode_payload(CodecId::kJson, payload, value));
    std::vector<double> values;
    CHECK_FALSE(dogpile::decode_payload(CodecId::kJson, "{\"value\": [1.5, " + number + "]}",
                                        values));
    std::string text;  // the top-level string reader parses the number too
    CHECK_FALSE(dogpile::decode_payload(CodecId::kJson, payload, text));
  }
  // Zeros as cereal writes them, and as far as rapidjson reads them right;
  // the same characters inside a string are text; other numbers with
  // exponents are numbers.
  for (const auto& [number, expected] : std::vector<std::pair<std::string, double>>{
           {"0.0", 0.0},
           {"-0.0", -0.0},
           {"0", 0.0},
           {"0.0000000000000000000000", 0.0},
           {"1e100", 1e100},
           {"0.5e-3", 0.5e-3},
           {"10e-1", 1.0}}) {
    CAPTURE(number);
    double value = 1.0;
    REQUIRE(dogpile::decode_payload(CodecId::kJson, "{\"value\": " + number + "}", value));
    CHECK(value == expected);
    CHECK(std::signbit(value) == std::signbit(expected));
  }
  std::string text;
  REQUIRE(dogpile::decode_payload(CodecId::kJson, "{\"value\": \"0e100\"}", text));
  CHECK(text == "0e100");
  for (const double zero : {0.0, -0.0}) {
    double value = 1.0;
    REQUIRE(dogpile::decode_payload(CodecId::kJson, payload_of(CodecId::kJson, zero), value));
    CHECK(value == 0.0);
    CHECK(std::signbit(value) == std::signbit(zero));
  }
}
