// Envelope layout, validation order and the allocation-free decode; the
// checksum at every size; byte payloads' and cereal's length prefixes.
#include "dogpile/envelope.h"

#include "dogpile/codec.h"  // byte payloads' length prefixes

#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <list>
#include <map>
#include <limits>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <catch2/catch.hpp>

// ---- allocation counting ----------------------------------------------------
// Global operator new/delete are replaced for this test binary so a test can
// prove that decode_envelope allocates nothing. Only allocations made while
// g_counting is set are counted.
namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_allocations{0};
std::atomic<std::size_t> g_largest_allocation{0};  // bytes, of any one counted allocation

void* counted_alloc(std::size_t size) {
  if (g_counting.load(std::memory_order_relaxed)) {
    g_allocations.fetch_add(1, std::memory_order_relaxed);
    std::size_t largest = g_largest_allocation.load(std::memory_order_relaxed);
    while (size > largest &&
           !g_largest_allocation.compare_exchange_weak(largest, size, std::memory_order_relaxed)) {
    }
  }
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
}  // namespace

// The nothrow forms too: sanitizer runtimes replace them separately, and
// every pointer must come from, and go back to, malloc.
void* operator new(std::size_t size) { return counted_alloc(size); }
void* operator new[](std::size_t size) { return counted_alloc(size); }
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  try {
    return counted_alloc(size);
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
}
void* operator new[](std::size_t size, const std::nothrow_t& tag) noexcept {
  return operator new(size, tag);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace {

using dogpile::CodecId;
using dogpile::DecodeStatus;
using dogpile::EnvelopeMeta;
using dogpile::EnvelopeView;

constexpr std::size_t kNoLimit = std::numeric_limits<std::size_t>::max();

// Runs decode_envelope while counting allocations.
struct CountedDecode {
  DecodeStatus status;
  long allocations;
};

CountedDecode counted_decode(std::string_view bytes, std::size_t max_value_size,
                             EnvelopeView& view) {
  g_allocations.store(0);
  g_counting.store(true);
  const DecodeStatus status = dogpile::decode_envelope(bytes, max_value_size, view);
  g_counting.store(false);
  return {status, g_allocations.load()};
}

DecodeStatus decode(std::string_view bytes, std::size_t max_value_size = kNoLimit) {
  EnvelopeView view;
  return dogpile::decode_envelope(bytes, max_value_size, view);
}

EnvelopeMeta sample_meta() {
  EnvelopeMeta meta;
  meta.type_tag = 0x1122334455667788ULL;
  meta.schema_version = 0xA1B2C3D4U;
  meta.codec = CodecId::kPortableBinary;
  meta.created_at_ns = 1'700'000'000'123'456'789LL;
  meta.expires_at_ns = 1'700'000'060'000'000'000LL;
  meta.sequence = 0x0A0B0C0D0E0F1011LL;
  return meta;
}

void put_u64(std::string& bytes, std::size_t offset, std::uint64_t value) {
  for (std::size_t i = 0; i < 8; ++i) {
    bytes[offset + i] = static_cast<char>(static_cast<unsigned char>(value >> (8 * i)));
  }
}

void put_u32(std::string& bytes, std::size_t offset, std::uint32_t value) {
  for (std::size_t i = 0; i < 4; ++i) {
    bytes[offset + i] = static_cast<char>(static_cast<unsigned char>(value >> (8 * i)));
  }
}

// Recomputes the trailing checksum after a deliberate edit, so that only the
// structural checks stand between the edit and kOk.
void reseal(std::string& bytes) {
  const std::size_t body = bytes.size() - dogpile::kEnvelopeTrailerSize;
  put_u64(bytes, body, XXH3_64bits(bytes.data(), body));
}

std::string le_bytes(std::uint64_t value, std::size_t width) {
  std::string out;
  for (std::size_t i = 0; i < width; ++i) {
    out.push_back(static_cast<char>(static_cast<unsigned char>(value >> (8 * i))));
  }
  return out;
}

std::string patterned(std::size_t size) {
  std::string s(size, '\0');
  for (std::size_t i = 0; i < size; ++i) s[i] = static_cast<char>((i * 131 + 7) & 0xFF);
  return s;
}

}  // namespace

TEST_CASE("header fields sit at their documented offsets, little-endian") {
  EnvelopeMeta meta = sample_meta();
  meta.created_at_ns = -2;  // before the epoch: two's complement on disk
  meta.expires_at_ns = 0x0102030405060708LL;
  const std::string bytes = dogpile::encode_envelope(meta, std::string_view("KEY"), "payload");

  std::string expected = "DGPL";
  expected += '\x02';                           // format version
  expected += '\x02';                           // codec: portable_binary
  expected += le_bytes(0x0003, 2);              // flags: expires_at + full key
  expected += le_bytes(0x1122334455667788, 8);  // type tag
  expected += le_bytes(0xA1B2C3D4, 4);          // schema version
  expected += le_bytes(3, 4);                   // full key length
  expected += le_bytes(0xFFFFFFFFFFFFFFFE, 8);  // created_at = -2
  expected += le_bytes(0x0102030405060708, 8);  // expires_at
  expected += le_bytes(0x0A0B0C0D0E0F1011, 8);  // sequence
  expected += le_bytes(7, 8);                   // payload length
  REQUIRE(expected.size() == dogpile::kEnvelopeHeaderSize);
  expected += "KEY";
  expected += "payload";
  expected += le_bytes(XXH3_64bits(expected.data(), expected.size()), 8);
  CHECK(bytes == expected);
  CHECK(static_cast<unsigned char>(bytes[0]) == 0x44);  // 'D' is the low byte of the magic
}

TEST_CASE("envelopes round-trip every header field") {
  struct Case {
    const char* name;
    std::optional<std::int64_t> expires;
    std::optional<std::string> full_key;
    std::string payload;
  };
  const std::string long_key(600, 'k');
  const std::vector<Case> cases = {
      {"no expiry, no key", std::nullopt, std::nullopt, "hello"},
      {"expiry only", 1'800'000'000'000'000'000LL, std::nullopt, "hello"},
      {"expiry present and zero", 0, std::nullopt, "hello"},
      {"negative expiry", -5, std::nullopt, "x"},
      {"full key only", std::nullopt, long_key, "hello"},
      {"expiry and full key", 42, long_key, std::string("a\0b", 3)},
      {"one-byte full key", std::nullopt, std::string("\0", 1), "v"},
      {"empty payload", std::nullopt, std::nullopt, ""},
      {"empty payload with key and expiry", 7, long_key, ""},
      {"1 MiB payload", 99, long_key, patterned(1 << 20)},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    for (const CodecId codec :
         {CodecId::kRaw, CodecId::kBinary, CodecId::kPortableBinary, CodecId::kJson}) {
      CAPTURE(dogpile::codec_name(codec));
      EnvelopeMeta meta = sample_meta();
      meta.codec = codec;
      meta.expires_at_ns = c.expires;
      std::optional<std::string_view> key;
      if (c.full_key) key = *c.full_key;
      const std::string bytes = dogpile::encode_envelope(meta, key, c.payload);
      REQUIRE(bytes.size() == dogpile::kEnvelopeHeaderSize + (key ? key->size() : 0) +
                                  c.payload.size() + dogpile::kEnvelopeTrailerSize);

      EnvelopeView view;
      const CountedDecode result = counted_decode(bytes, c.payload.size(), view);
      REQUIRE(result.status == DecodeStatus::kOk);
      CHECK(result.allocations == 0);
      CHECK(view.meta.type_tag == meta.type_tag);
      CHECK(view.meta.schema_version == meta.schema_version);
      CHECK(view.meta.codec == codec);
      CHECK(view.meta.created_at_ns == meta.created_at_ns);
      CHECK(view.meta.sequence == meta.sequence);
      CHECK(view.meta.expires_at_ns == c.expires);
      CHECK(view.full_key == key);
      CHECK(view.payload == c.payload);
      // The views point into the given bytes, not into copies.
      CHECK(view.payload.data() ==
            bytes.data() + bytes.size() - dogpile::kEnvelopeTrailerSize - c.payload.size());
    }
  }
}

TEST_CASE("begin_envelope and finish_envelope build the same bytes as encode_envelope") {
  const EnvelopeMeta meta = sample_meta();
  const std::string key(700, 'q');
  std::string out = "stale contents are cleared";
  const std::size_t payload_offset = dogpile::begin_envelope(out, meta, std::string_view(key));
  CHECK(payload_offset == dogpile::kEnvelopeHeaderSize + key.size());
  CHECK(out.size() == payload_offset);
  out += "the payload";
  dogpile::finish_envelope(out, payload_offset);
  CHECK(out == dogpile::encode_envelope(meta, std::string_view(key), "the payload"));
}

TEST_CASE("envelope writer refuses inputs it cannot represent") {
  std::string out;
  CHECK_THROWS_AS(dogpile::begin_envelope(out, sample_meta(), std::string_view()),
                  std::invalid_argument);
  out = "short";
  CHECK_THROWS_AS(dogpile::finish_envelope(out, 0), std::logic_error);
  CHECK_THROWS_AS(dogpile::finish_envelope(out, out.size() + 1), std::logic_error);
}

TEST_CASE("every truncation of an envelope is rejected") {
  const std::string long_key(520, 'k');
  const std::vector<std::string> envelopes = {
      dogpile::encode_envelope(sample_meta(), std::nullopt, ""),
      dogpile::encode_envelope(sample_meta(), std::nullopt, "some payload"),
      dogpile::encode_envelope(sample_meta(), std::string_view(long_key), patterned(3000)),
      dogpile::encode_envelope(sample_meta(), std::string_view(long_key), patterned(1 << 20)),
  };
  for (const std::string& bytes : envelopes) {
    REQUIRE(decode(bytes) == DecodeStatus::kOk);
    std::size_t accepted = 0;
    for (std::size_t length = 0; length < bytes.size(); ++length) {
      if (decode(std::string_view(bytes).substr(0, length)) == DecodeStatus::kOk) ++accepted;
    }
    CAPTURE(bytes.size());
    CHECK(accepted == 0);
  }
}

TEST_CASE("every single-bit flip of an envelope is rejected") {
  EnvelopeMeta meta = sample_meta();
  const std::string key(515, 'z');
  const std::string original = dogpile::encode_envelope(meta, std::string_view(key), "payload!");
  std::string bytes = original;
  std::size_t accepted = 0;
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      bytes[i] = static_cast<char>(bytes[i] ^ (1 << bit));
      if (decode(bytes) == DecodeStatus::kOk) ++accepted;
      bytes[i] = original[i];
    }
  }
  CHECK(accepted == 0);
}

TEST_CASE("decode_envelope reports each kind of damage") {
  const std::string key(600, 'k');
  const std::string valid =
      dogpile::encode_envelope(sample_meta(), std::string_view(key), "0123456789");
  REQUIRE(decode(valid) == DecodeStatus::kOk);

  SECTION("too short to be an envelope") {
    CHECK(decode("") == DecodeStatus::kCorrupt);
    CHECK(decode(std::string(63, '\0')) == DecodeStatus::kCorrupt);
  }
  SECTION("bad magic") {
    std::string bytes = valid;
    bytes[3] = 'X';
    reseal(bytes);
    CHECK(decode(bytes) == DecodeStatus::kCorrupt);
  }
  SECTION("another format version, checked before the checksum") {
    for (const int version : {0, 1, 3, 255}) {
      CAPTURE(version);
      std::string bytes = valid;
      bytes[4] = static_cast<char>(version);
      CHECK(decode(bytes) == DecodeStatus::kOtherVersion);
      reseal(bytes);
      CHECK(decode(bytes) == DecodeStatus::kOtherVersion);
    }
  }
  SECTION("unknown flag bits") {
    for (int bit = 2; bit < 16; ++bit) {
      CAPTURE(bit);
      std::string bytes = valid;
      const unsigned flags = 0x3u | (1u << bit);
      bytes[6] = static_cast<char>(flags & 0xFF);
      bytes[7] = static_cast<char>(flags >> 8);
      reseal(bytes);
      CHECK(decode(bytes) == DecodeStatus::kCorrupt);
    }
  }
  SECTION("full-key flag and key length disagree") {
    std::string bytes = valid;
    bytes[6] = 0x01;  // key flag cleared, key length still 600
    reseal(bytes);
    CHECK(decode(bytes) == DecodeStatus::kCorrupt);

    std::string keyless = dogpile::encode_envelope(sample_meta(), std::nullopt, "0123456789");
    keyless[6] = 0x03;  // key flag set, key length 0
    reseal(keyless);
    CHECK(decode(keyless) == DecodeStatus::kCorrupt);
  }
  SECTION("expires_at set although its flag is clear") {
    EnvelopeMeta meta = sample_meta();
    meta.expires_at_ns.reset();
    std::string bytes = dogpile::encode_envelope(meta, std::nullopt, "v");
    REQUIRE(decode(bytes) == DecodeStatus::kOk);
    put_u64(bytes, 32, 1);
    reseal(bytes);
    CHECK(decode(bytes) == DecodeStatus::kCorrupt);
  }
  SECTION("codec ids") {
    for (int codec = 0; codec < 256; ++codec) {
      CAPTURE(codec);
      std::string bytes = valid;
      bytes[5] = static_cast<char>(codec);
      reseal(bytes);
      CHECK(decode(bytes) == (codec <= 3 ? DecodeStatus::kOk : DecodeStatus::kCorrupt));
    }
  }
  SECTION("checksum") {
    std::string bytes = valid;
    bytes.back() = static_cast<char>(bytes.back() ^ 0x40);
    CHECK(decode(bytes) == DecodeStatus::kCorrupt);
    bytes = valid;
    bytes[dogpile::kEnvelopeHeaderSize + key.size()] ^= 0x01;  // first payload byte
    CHECK(decode(bytes) == DecodeStatus::kCorrupt);
  }
  SECTION("trailing bytes after the checksum") {
    std::string bytes = valid + "x";
    CHECK(decode(bytes) == DecodeStatus::kCorrupt);
    reseal(bytes);
    CHECK(decode(bytes) == DecodeStatus::kCorrupt);
  }
}

TEST_CASE("payloads above max_value_size are too large") {
  const std::string bytes = dogpile::encode_envelope(sample_meta(), std::nullopt, patterned(100));
  CHECK(decode(bytes, 99) == DecodeStatus::kTooLarge);
  CHECK(decode(bytes, 0) == DecodeStatus::kTooLarge);
  CHECK(decode(bytes, 100) == DecodeStatus::kOk);
  const std::string empty = dogpile::encode_envelope(sample_meta(), std::nullopt, "");
  CHECK(decode(empty, 0) == DecodeStatus::kOk);
}

TEST_CASE("hostile length fields are caught without allocating, even with a valid checksum") {
  const std::string key(600, 'k');
  const std::string valid =
      dogpile::encode_envelope(sample_meta(), std::string_view(key), "0123456789abcdef");
  const std::size_t room = valid.size() - dogpile::kEnvelopeHeaderSize -
                           dogpile::kEnvelopeTrailerSize;  // key + payload bytes at hand
  constexpr std::uint64_t kMax64 = std::numeric_limits<std::uint64_t>::max();
  constexpr std::uint32_t kMax32 = std::numeric_limits<std::uint32_t>::max();

  SECTION("payload length") {
    const std::vector<std::uint64_t> lengths = {1ULL << 30,
                                                1ULL << 40,
                                                kMax64,
                                                kMax64 - 15,
                                                1ULL << 63,
                                                room - key.size() + 1,
                                                room - key.size() - 1,
                                                0};
    for (const std::uint64_t length : lengths) {
      for (const std::size_t limit : {kNoLimit, std::size_t{1} << 20}) {
        CAPTURE(length, limit);
        std::string bytes = valid;
        put_u64(bytes, 48, length);
        reseal(bytes);
        EnvelopeView view;
        const CountedDecode result = counted_decode(bytes, limit, view);
        CHECK(
            (result.status == DecodeStatus::kCorrupt || result.status == DecodeStatus::kTooLarge));
        CHECK(result.allocations == 0);
      }
    }
  }
  SECTION("key length") {
    // The key length field is 32 bits wide, so 2^32-1 is its largest value.
    const std::vector<std::uint32_t> lengths = {1U << 30, 1U << 31, kMax32,
                                                static_cast<std::uint32_t>(room + 1),
                                                static_cast<std::uint32_t>(room - 16 + 1)};
    for (const std::uint32_t length : lengths) {
      CAPTURE(length);
      std::string bytes = valid;
      put_u32(bytes, 20, length);
      reseal(bytes);
      EnvelopeView view;
      const CountedDecode result = counted_decode(bytes, kNoLimit, view);
      CHECK(result.status == DecodeStatus::kCorrupt);
      CHECK(result.allocations == 0);
    }
  }
  SECTION("key and payload lengths that only add up modulo 2^64") {
    for (const std::uint32_t key_length :
         {kMax32, 1U << 31, static_cast<std::uint32_t>(room + 1)}) {
      CAPTURE(key_length);
      std::string bytes = valid;
      put_u32(bytes, 20, key_length);
      // 56 + key_length + payload_length + 8 == size (mod 2^64).
      put_u64(bytes, 48, static_cast<std::uint64_t>(room) - key_length);
      reseal(bytes);
      EnvelopeView view;
      const CountedDecode result = counted_decode(bytes, kNoLimit, view);
      CHECK(result.status == DecodeStatus::kCorrupt);
      CHECK(result.allocations == 0);
    }
  }
  SECTION("both lengths at their maxima") {
    std::string bytes = valid;
    put_u32(bytes, 20, kMax32);
    put_u64(bytes, 48, kMax64);
    reseal(bytes);
    EnvelopeView view;
    const CountedDecode result = counted_decode(bytes, kNoLimit, view);
    CHECK(result.status == DecodeStatus::kCorrupt);
    CHECK(result.allocations == 0);
  }
}

TEST_CASE("the allocation counter sees allocations") {
  // Guards the zero-allocation checks above against a counter that never counts.
  g_allocations.store(0);
  g_counting.store(true);
  auto* p = new std::string(100, 'x');
  g_counting.store(false);
  delete p;
  CHECK(g_allocations.load() >= 1);
}

TEST_CASE("codec names") {
  for (const CodecId codec :
       {CodecId::kRaw, CodecId::kBinary, CodecId::kPortableBinary, CodecId::kJson}) {
    CHECK(dogpile::codec_from_name(dogpile::codec_name(codec)) == codec);
  }
  CHECK(dogpile::codec_name(CodecId::kRaw) == "raw");
  CHECK(dogpile::codec_name(CodecId::kBinary) == "binary");
  CHECK(dogpile::codec_name(CodecId::kPortableBinary) == "portable_binary");
  CHECK(dogpile::codec_name(CodecId::kJson) == "json");
  CHECK(dogpile::codec_name(static_cast<CodecId>(9)) == "unknown");
  CHECK_FALSE(dogpile::codec_from_name("unknown"));
  CHECK_FALSE(dogpile::codec_from_name(""));
  CHECK_FALSE(dogpile::codec_from_name("JSON"));
}

TEST_CASE("the checksum is XXH3-64 of the bytes before it, at every size") {
  // The envelope may compute XXH3 with a build of its own for the CPU at
  // hand (xxh3_avx2.h); it must match libxxhash's at every length and
  // alignment, both when writing and when checking.
  std::vector<std::size_t> sizes;
  for (std::size_t size = 0; size <= 2'100; ++size) sizes.push_back(size);
  for (const std::size_t size : {4'095, 4'096, 65'535, 65'536, 65'537, (1 << 20) + 3}) {
    sizes.push_back(static_cast<std::size_t>(size));
  }
  for (const std::size_t key_length : {0, 511, 1'000}) {
    const std::string key = patterned(key_length);
    const std::optional<std::string_view> full_key =
        key_length == 0 ? std::nullopt : std::optional<std::string_view>(key);
    for (const std::size_t size : sizes) {
      const std::string bytes =
          dogpile::encode_envelope(sample_meta(), full_key, patterned(size + key_length));
      const std::size_t body = bytes.size() - dogpile::kEnvelopeTrailerSize;
      if (bytes.substr(body) != le_bytes(XXH3_64bits(bytes.data(), body), 8)) {
        CAPTURE(key_length, size);
        FAIL("checksum differs from XXH3_64bits");
      }
      EnvelopeView view;
      if (dogpile::decode_envelope(bytes, kNoLimit, view) != DecodeStatus::kOk) {
        CAPTURE(key_length, size);
        FAIL("a sound envelope does not decode");
      }
    }
    // And one flipped bit is caught at a size the vector code handles.
    std::string bytes = dogpile::encode_envelope(sample_meta(), full_key, patterned(65'536));
    bytes[bytes.size() / 2] = static_cast<char>(bytes[bytes.size() / 2] ^ 0x01);
    CHECK(decode(bytes) == DecodeStatus::kCorrupt);
  }
}

TEST_CASE("byte payloads with a lying length prefix are refused without allocating") {
  // std::string and byte vectors skip cereal in the binary codecs; their
  // length prefix is compared with the bytes at hand before any allocation.
  constexpr std::uint64_t kMax64 = std::numeric_limits<std::uint64_t>::max();
  const std::vector<std::uint64_t> lies = {1ULL << 30, 1ULL << 40, 1ULL << 62, kMax64, 17, 15, 0};
  for (const CodecId codec : {CodecId::kBinary, CodecId::kPortableBinary}) {
    // binary's prefix is in host order; put_u64 writes little-endian.
    if (codec == CodecId::kBinary && std::endian::native != std::endian::little) continue;
    CAPTURE(dogpile::codec_name(codec));
    std::string payload;
    dogpile::encode_payload(codec, patterned(16), payload);
    const std::size_t prefix_at = codec == CodecId::kPortableBinary ? 1 : 0;
    REQUIRE(payload.substr(prefix_at, 8) == le_bytes(16, 8));
    for (const std::uint64_t lie : lies) {
      CAPTURE(lie);
      std::string bytes = payload;
      put_u64(bytes, prefix_at, lie);
      std::string text;
      std::vector<std::uint8_t> octets;
      g_allocations.store(0);
      g_counting.store(true);
      const bool text_decoded = dogpile::decode_payload(codec, bytes, text);
      const bool octets_decoded = dogpile::decode_payload(codec, bytes, octets);
      g_counting.store(false);
      CHECK_FALSE(text_decoded);
      CHECK_FALSE(octets_decoded);
      CHECK(g_allocations.load() == 0);
    }
  }
}

TEST_CASE("peek_envelope_expiry reads expires_at from the header alone") {
  EnvelopeMeta meta;
  meta.created_at_ns = 1'000;
  meta.expires_at_ns = -5;  // any time, the epoch's past included
  std::string bytes = dogpile::encode_envelope(meta, std::nullopt, "payload");
  CHECK(dogpile::peek_envelope_expiry(bytes) == -5);

  // The checksum is not read: a flipped payload byte still peeks.
  std::string damaged = bytes;
  damaged[dogpile::kEnvelopeHeaderSize] ^= 1;
  CHECK(dogpile::peek_envelope_expiry(damaged) == -5);

  meta.expires_at_ns.reset();
  CHECK_FALSE(dogpile::peek_envelope_expiry(dogpile::encode_envelope(meta, std::nullopt, "p")));

  std::string bad_magic = bytes;
  bad_magic[0] ^= 1;
  CHECK_FALSE(dogpile::peek_envelope_expiry(bad_magic));
  std::string other_version = bytes;
  other_version[4] = 1;  // the previous layout: its expiry sits elsewhere
  CHECK_FALSE(dogpile::peek_envelope_expiry(other_version));
  std::string unknown_flag = bytes;
  unknown_flag[6] |= 0x4;
  CHECK_FALSE(dogpile::peek_envelope_expiry(unknown_flag));
  CHECK_FALSE(dogpile::peek_envelope_expiry(
      std::string_view(bytes).substr(0, dogpile::kEnvelopeHeaderSize + 7)));
  CHECK_FALSE(dogpile::peek_envelope_expiry("not an envelope"));
}

namespace envelope_test {

// A user type with the containers cached values commonly hold.
struct Listing {
  std::string title;
  std::vector<int> ids;
  std::map<std::string, int> counts;
  std::vector<std::string> tags;
  std::deque<std::string> queue;
  std::list<std::int64_t> history;
  std::vector<std::vector<int>> rows;
  std::unordered_map<std::string, std::string> attributes;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(CEREAL_NVP(title), CEREAL_NVP(ids), CEREAL_NVP(counts), CEREAL_NVP(tags),
       CEREAL_NVP(queue), CEREAL_NVP(history), CEREAL_NVP(rows), CEREAL_NVP(attributes));
  }
  friend bool operator==(const Listing&, const Listing&) = default;
};

}  // namespace envelope_test

namespace {

envelope_test::Listing sample_listing() {
  envelope_test::Listing l;
  l.title = "listing";
  l.ids = {1, 2, 3, 40000};
  l.counts = {{"a", 1}, {"bb", 2}};
  l.tags = {"x", "", "zzz"};
  l.queue = {"q1", "q2"};
  l.history = {7, -7};
  l.rows = {{1}, {}, {2, 3}};
  l.attributes = {{"k", "v"}};
  return l;
}

// Overwrites 8 bytes at every offset of `payload` with each lie, in the
// codec's byte order, decodes, and returns the largest single allocation
// any decode made. Every decode must fail or give a value.
template <class T>
std::size_t largest_allocation_with_lies(CodecId codec, const std::string& payload) {
  constexpr std::uint64_t kMax64 = std::numeric_limits<std::uint64_t>::max();
  std::size_t largest = 0;
  for (std::size_t at = 0; at + 8 <= payload.size(); ++at) {
    for (const std::uint64_t lie : {std::uint64_t{1} << 30, std::uint64_t{1} << 40, kMax64,
                                    std::uint64_t{payload.size() - at - 7}}) {
      std::string bytes = payload;
      // binary is host order (little-endian here, checked by the caller),
      // portable_binary little-endian.
      put_u64(bytes, at, lie);
      T value;
      g_largest_allocation.store(0);
      g_counting.store(true);
      static_cast<void>(dogpile::decode_payload(codec, bytes, value));
      g_counting.store(false);
      largest = std::max(largest, g_largest_allocation.load());
    }
  }
  return largest;
}

}  // namespace

TEST_CASE("cereal size prefixes that lie are refused before anything that large is allocated") {
  // cereal's own binary archives resize a container to whatever its size
  // prefix says before reading an element. A prefix at any offset, of 2^30,
  // 2^40, 2^64-1 or one more than the bytes left, must cost at most a small
  // multiple of the payload.
  if (std::endian::native != std::endian::little) return;  // put_u64 writes little-endian
  for (const CodecId codec : {CodecId::kBinary, CodecId::kPortableBinary}) {
    CAPTURE(dogpile::codec_name(codec));
    const auto check = [&]<class T>(const T& value) {
      std::string payload;
      dogpile::encode_payload(codec, value, payload);
      T decoded;
      REQUIRE(dogpile::decode_payload(codec, payload, decoded));
      REQUIRE(decoded == value);
      const std::size_t largest = largest_allocation_with_lies<T>(codec, payload);
      CAPTURE(payload.size(), largest);
      CHECK(largest <= 8 * payload.size() + 256);
    };
    check(sample_listing());
    check(std::vector<int>{1, 2, 3, 4, 5});
    check(std::vector<std::string>{"one", "two", "", "four"});
    check(std::map<std::string, int>{{"a", 1}, {"b", 2}});
    check(std::vector<envelope_test::Listing>{sample_listing(), sample_listing()});
  }
}

TEST_CASE("the largest-allocation counter sees a large allocation") {
  g_largest_allocation.store(0);
  g_counting.store(true);
  auto* p = new std::vector<char>(1 << 20);
  g_counting.store(false);
  delete p;
  CHECK(g_largest_allocation.load() >= std::size_t{1} << 20);
}
