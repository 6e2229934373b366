#include "dogpile/envelope.h"

#include <xxhash.h>

#include <array>
#include <limits>
#include <stdexcept>
#include <string>

#ifdef DOGPILE_HAVE_XXH3_AVX2
#include "xxh3_avx2.h"
#endif

namespace dogpile {
namespace {

// Header field offsets; docs/format.md is the reference for all of them.
constexpr std::size_t kMagicOffset = 0;
constexpr std::size_t kVersionOffset = 4;
constexpr std::size_t kCodecOffset = 5;
constexpr std::size_t kFlagsOffset = 6;
constexpr std::size_t kTypeTagOffset = 8;
constexpr std::size_t kSchemaOffset = 16;
constexpr std::size_t kKeyLengthOffset = 20;
constexpr std::size_t kCreatedOffset = 24;
constexpr std::size_t kExpiresOffset = 32;
constexpr std::size_t kSequenceOffset = 40;
constexpr std::size_t kPayloadLengthOffset = 48;
static_assert(kPayloadLengthOffset + 8 == kEnvelopeHeaderSize);

constexpr std::uint16_t kFlagExpires = 1u << 0;
constexpr std::uint16_t kFlagFullKey = 1u << 1;
constexpr std::uint16_t kKnownFlags = kFlagExpires | kFlagFullKey;

constexpr std::size_t kMinEnvelopeSize = kEnvelopeHeaderSize + kEnvelopeTrailerSize;
constexpr std::uint8_t kHighestCodecId = static_cast<std::uint8_t>(CodecId::kJson);

// Little-endian stores and loads, byte by byte, so the layout does not depend
// on the host's endianness or on struct padding.
template <class U>
void store_le(char* dst, U value) noexcept {
  for (std::size_t i = 0; i < sizeof(U); ++i) {
    dst[i] = static_cast<char>(static_cast<unsigned char>(value >> (8 * i)));
  }
}

template <class U>
U load_le(const char* src) noexcept {
  U value = 0;
  for (std::size_t i = 0; i < sizeof(U); ++i) {
    value |= static_cast<U>(static_cast<U>(static_cast<unsigned char>(src[i])) << (8 * i));
  }
  return value;
}

// XXH3-64 of the envelope bytes, with AVX2 when the CPU has it: the
// checksum is then cheaper than copying the value (xxh3_avx2.h).
std::uint64_t checksum(const char* data, std::size_t size) noexcept {
#ifdef DOGPILE_HAVE_XXH3_AVX2
  static const bool have_avx2 = [] {
    __builtin_cpu_init();  // may run before static constructors have
    return __builtin_cpu_supports("avx2") != 0;
  }();
  if (have_avx2) return internal::xxh3_64_avx2(data, size);
#endif
  return XXH3_64bits(data, size);
}

template <class U>
void append_le(std::string& out, U value) {
  std::array<char, sizeof(U)> bytes;
  store_le(bytes.data(), value);
  out.append(bytes.data(), bytes.size());
}

}  // namespace

std::string_view codec_name(CodecId codec) noexcept {
  switch (codec) {
    case CodecId::kRaw:
      return "raw";
    case CodecId::kBinary:
      return "binary";
    case CodecId::kPortableBinary:
      return "portable_binary";
    case CodecId::kJson:
      return "json";
  }
  return "unknown";
}

std::optional<CodecId> codec_from_name(std::string_view name) noexcept {
  for (const CodecId codec :
       {CodecId::kRaw, CodecId::kBinary, CodecId::kPortableBinary, CodecId::kJson}) {
    if (codec_name(codec) == name) return codec;
  }
  return std::nullopt;
}

std::size_t begin_envelope(std::string& out, const EnvelopeMeta& meta,
                           std::optional<std::string_view> full_key) {
  // An empty full key would be indistinguishable from "no full key" on disk
  // (key length 0), so it is refused rather than silently dropped.
  if (full_key && full_key->empty()) {
    throw std::invalid_argument("dogpile: envelope full key must not be empty");
  }
  if (full_key && full_key->size() > std::numeric_limits<std::uint32_t>::max()) {
    throw std::length_error("dogpile: envelope full key longer than 4 GiB");
  }
  const std::uint32_t key_length = full_key ? static_cast<std::uint32_t>(full_key->size()) : 0;
  std::uint16_t flags = 0;
  if (meta.expires_at_ns) flags |= kFlagExpires;
  if (full_key) flags |= kFlagFullKey;

  out.clear();
  out.reserve(kEnvelopeHeaderSize + key_length + kEnvelopeTrailerSize);
  append_le<std::uint32_t>(out, kEnvelopeMagic);
  append_le<std::uint8_t>(out, kEnvelopeFormatVersion);
  append_le<std::uint8_t>(out, static_cast<std::uint8_t>(meta.codec));
  append_le<std::uint16_t>(out, flags);
  append_le<std::uint64_t>(out, meta.type_tag);
  append_le<std::uint32_t>(out, meta.schema_version);
  append_le<std::uint32_t>(out, key_length);
  append_le<std::uint64_t>(out, static_cast<std::uint64_t>(meta.created_at_ns));
  append_le<std::uint64_t>(out, static_cast<std::uint64_t>(meta.expires_at_ns.value_or(0)));
  append_le<std::uint64_t>(out, static_cast<std::uint64_t>(meta.sequence));
  append_le<std::uint64_t>(out, 0);  // payload length, patched by finish_envelope
  if (full_key) out.append(*full_key);
  return out.size();
}

void finish_envelope(std::string& out, std::size_t payload_offset) {
  if (payload_offset < kEnvelopeHeaderSize || payload_offset > out.size()) {
    throw std::logic_error("dogpile: finish_envelope called without begin_envelope");
  }
  store_le<std::uint64_t>(out.data() + kPayloadLengthOffset, out.size() - payload_offset);
  append_le<std::uint64_t>(out, checksum(out.data(), out.size()));
}

std::string encode_envelope(const EnvelopeMeta& meta, std::optional<std::string_view> full_key,
                            std::string_view payload) {
  std::string out;
  // One allocation: begin_envelope only reserves room for the header.
  out.reserve(kEnvelopeHeaderSize + (full_key ? full_key->size() : 0) + payload.size() +
              kEnvelopeTrailerSize);
  const std::size_t payload_offset = begin_envelope(out, meta, full_key);
  out.append(payload);
  finish_envelope(out, payload_offset);
  return out;
}

std::optional<std::int64_t> peek_envelope_expiry(std::string_view bytes) noexcept {
  if (bytes.size() < kMinEnvelopeSize) return std::nullopt;
  const char* const data = bytes.data();
  if (load_le<std::uint32_t>(data + kMagicOffset) != kEnvelopeMagic ||
      static_cast<std::uint8_t>(data[kVersionOffset]) != kEnvelopeFormatVersion) {
    return std::nullopt;
  }
  const std::uint16_t flags = load_le<std::uint16_t>(data + kFlagsOffset);
  if ((flags & ~kKnownFlags) != 0 || (flags & kFlagExpires) == 0) return std::nullopt;
  return static_cast<std::int64_t>(load_le<std::uint64_t>(data + kExpiresOffset));
}

std::optional<std::int64_t> peek_envelope_created_at(std::string_view bytes) noexcept {
  if (bytes.size() < kMinEnvelopeSize) return std::nullopt;
  const char* const data = bytes.data();
  if (load_le<std::uint32_t>(data + kMagicOffset) != kEnvelopeMagic ||
      static_cast<std::uint8_t>(data[kVersionOffset]) != kEnvelopeFormatVersion ||
      (load_le<std::uint16_t>(data + kFlagsOffset) & ~kKnownFlags) != 0) {
    return std::nullopt;
  }
  return static_cast<std::int64_t>(load_le<std::uint64_t>(data + kCreatedOffset));
}

DecodeStatus decode_envelope(std::string_view bytes, std::size_t max_value_size,
                             EnvelopeView& out) noexcept {
  const std::size_t size = bytes.size();
  if (size < kMinEnvelopeSize) return DecodeStatus::kCorrupt;
  const char* const data = bytes.data();
  if (load_le<std::uint32_t>(data + kMagicOffset) != kEnvelopeMagic) return DecodeStatus::kCorrupt;
  if (static_cast<std::uint8_t>(data[kVersionOffset]) != kEnvelopeFormatVersion) {
    return DecodeStatus::kOtherVersion;
  }

  const std::uint16_t flags = load_le<std::uint16_t>(data + kFlagsOffset);
  if ((flags & ~kKnownFlags) != 0) return DecodeStatus::kCorrupt;
  const std::uint64_t expires_at = load_le<std::uint64_t>(data + kExpiresOffset);
  if ((flags & kFlagExpires) == 0 && expires_at != 0) return DecodeStatus::kCorrupt;

  // Lengths come from the bytes and are not trusted: compare each against
  // what is left, never add them up (a sum could wrap around).
  const std::uint64_t key_length = load_le<std::uint32_t>(data + kKeyLengthOffset);
  const std::uint64_t payload_length = load_le<std::uint64_t>(data + kPayloadLengthOffset);
  if (((flags & kFlagFullKey) != 0) != (key_length != 0)) return DecodeStatus::kCorrupt;
  const std::size_t room = size - kMinEnvelopeSize;
  if (key_length > room) return DecodeStatus::kCorrupt;
  if (payload_length != room - key_length) return DecodeStatus::kCorrupt;
  if (payload_length > max_value_size) return DecodeStatus::kTooLarge;

  const std::size_t checked = size - kEnvelopeTrailerSize;
  if (checksum(data, checked) != load_le<std::uint64_t>(data + checked)) {
    return DecodeStatus::kCorrupt;
  }
  const std::uint8_t codec = static_cast<std::uint8_t>(data[kCodecOffset]);
  if (codec > kHighestCodecId) return DecodeStatus::kCorrupt;

  out.meta.type_tag = load_le<std::uint64_t>(data + kTypeTagOffset);
  out.meta.schema_version = load_le<std::uint32_t>(data + kSchemaOffset);
  out.meta.codec = static_cast<CodecId>(codec);
  out.meta.created_at_ns = static_cast<std::int64_t>(load_le<std::uint64_t>(data + kCreatedOffset));
  out.meta.sequence = static_cast<std::int64_t>(load_le<std::uint64_t>(data + kSequenceOffset));
  if ((flags & kFlagExpires) != 0) {
    out.meta.expires_at_ns = static_cast<std::int64_t>(expires_at);
  } else {
    out.meta.expires_at_ns.reset();
  }
  if (key_length != 0) {
    out.full_key = bytes.substr(kEnvelopeHeaderSize, key_length);
  } else {
    out.full_key.reset();
  }
  out.payload = bytes.substr(kEnvelopeHeaderSize + key_length, payload_length);
  return DecodeStatus::kOk;
}

std::string describe_decode_failure(std::string_view bytes, DecodeStatus status) {
  if (bytes.size() < kMinEnvelopeSize) {
    return "truncated: " + std::to_string(bytes.size()) + " bytes, less than the " +
           std::to_string(kMinEnvelopeSize) + " of an envelope's header and checksum";
  }
  const char* const data = bytes.data();
  if (load_le<std::uint32_t>(data + kMagicOffset) != kEnvelopeMagic) {
    return "not an envelope (bad magic)";
  }
  const auto version = static_cast<std::uint8_t>(data[kVersionOffset]);
  if (status == DecodeStatus::kOtherVersion || version != kEnvelopeFormatVersion) {
    return "envelope format version " + std::to_string(version) +
           ", which this build does not read";
  }
  if (status == DecodeStatus::kTooLarge) return "payload larger than this build can hold";
  const std::uint16_t flags = load_le<std::uint16_t>(data + kFlagsOffset);
  const std::uint64_t key_length = load_le<std::uint32_t>(data + kKeyLengthOffset);
  const std::uint64_t expires_at = load_le<std::uint64_t>(data + kExpiresOffset);
  const std::uint64_t payload_length = load_le<std::uint64_t>(data + kPayloadLengthOffset);
  if ((flags & ~kKnownFlags) != 0 || ((flags & kFlagExpires) == 0 && expires_at != 0) ||
      ((flags & kFlagFullKey) != 0) != (key_length != 0)) {
    return "bad envelope flags";
  }
  const std::size_t room = bytes.size() - kMinEnvelopeSize;
  if (key_length > room || payload_length != room - key_length) {
    return "envelope lengths do not match its " + std::to_string(bytes.size()) +
           " bytes (truncated or overwritten)";
  }
  const auto codec = static_cast<std::uint8_t>(data[kCodecOffset]);
  if (codec > kHighestCodecId) {
    // The checksum is checked first; a bad codec with a good checksum is
    // rare enough to name both.
    return "bad checksum or unknown codec id " + std::to_string(codec);
  }
  return "bad checksum";
}

}  // namespace dogpile
