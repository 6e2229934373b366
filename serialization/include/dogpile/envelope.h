// Envelope: the self-describing byte form of one cached value.
//
// Every stored value is one envelope: a fixed 56-byte little-endian header
// (magic, format version, codec, flags, type tag, schema version, key length,
// created_at, expires_at, sequence, payload length), the full key when the
// stored key was shortened, the payload, and an XXH3-64 checksum over
// everything before it. docs/format.md gives the byte offsets. The header can be read without
// knowing the payload's C++ type, which is what the CLI does.
//
// decode_envelope never trusts a length: every size is checked against the
// bytes at hand and the caller's max_value_size before anything is touched,
// and it allocates nothing.
//
// Thread safety: all functions are reentrant.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace dogpile {

enum class CodecId : std::uint8_t {
  kRaw = 0,             // payload bytes as they are (std::string, byte vectors)
  kBinary = 1,          // cereal::BinaryOutputArchive (default)
  kPortableBinary = 2,  // cereal::PortableBinaryOutputArchive
  kJson = 3,            // cereal::JSONOutputArchive
};

// "raw", "binary", "portable_binary", "json"; "unknown" otherwise.
std::string_view codec_name(CodecId codec) noexcept;
// Inverse of codec_name; nullopt for an unknown name.
std::optional<CodecId> codec_from_name(std::string_view name) noexcept;

inline constexpr std::uint32_t kEnvelopeMagic = 0x4C504744;  // "DGPL" on disk
inline constexpr std::uint8_t kEnvelopeFormatVersion = 2;
inline constexpr std::size_t kEnvelopeHeaderSize = 56;
inline constexpr std::size_t kEnvelopeTrailerSize = 8;
// Keys longer than this are stored under a hash; the envelope then holds the
// full key so a reader can confirm it. LMDB's key limit is 511 bytes and the
// LMDB backend spends one byte of it on a tag that keeps inline and hashed
// keys apart, which leaves 510.
inline constexpr std::size_t kMaxInlineKeySize = 510;

struct EnvelopeMeta {
  std::uint64_t type_tag = 0;                   // type_tag<T>()
  std::uint32_t schema_version = 0;             // schema_version<T>()
  CodecId codec = CodecId::kBinary;             // how the payload is encoded
  std::int64_t created_at_ns = 0;               // wall clock, ns since the Unix epoch
  std::optional<std::int64_t> expires_at_ns{};  // per-entry expiry, same clock
  // The store's invalidation order when the value's creation started
  // (InvalidationStrategy::sequence); invalidations compare it, not times.
  std::int64_t sequence = 0;
};

// A decoded envelope; its views point into the bytes given to decode_envelope.
struct EnvelopeView {
  EnvelopeMeta meta{};
  std::optional<std::string_view> full_key{};  // set when the stored key was shortened
  std::string_view payload{};
};

enum class DecodeStatus {
  kOk,
  kCorrupt,        // bad magic, length, flags or checksum
  kTooLarge,       // payload length above max_value_size
  kOtherVersion,   // valid magic, a format version this build does not read
};

// Starts an envelope in `out` (cleared first): writes the header and the full
// key, if given. The caller appends the payload to `out`, then calls
// finish_envelope. Returns the offset where the payload starts.
std::size_t begin_envelope(std::string& out, const EnvelopeMeta& meta,
                           std::optional<std::string_view> full_key);
// Patches the payload length into the header and appends the checksum.
void finish_envelope(std::string& out, std::size_t payload_offset);

// One-shot form of begin_envelope + append + finish_envelope.
std::string encode_envelope(const EnvelopeMeta& meta, std::optional<std::string_view> full_key,
                            std::string_view payload);

// Validates `bytes` and fills `out` with views into it. On anything but kOk,
// `out` is unspecified and must not be used.
DecodeStatus decode_envelope(std::string_view bytes, std::size_t max_value_size,
                             EnvelopeView& out) noexcept;

// Why decode_envelope answered `status` (not kOk) for `bytes`, in words for
// a person: the first check that failed, in the order decode_envelope makes
// them.
std::string describe_decode_failure(std::string_view bytes, DecodeStatus status);

// The expires_at of `bytes` read from the header alone (magic, version and
// flags checked; lengths and checksum not), or nullopt when the bytes do not
// start like an envelope of this version or carry no expiry. For write paths
// that index entries by expiry without paying for a full decode.
std::optional<std::int64_t> peek_envelope_expiry(std::string_view bytes) noexcept;
// created_at of an envelope, checked as peek_envelope_expiry; nullopt when
// the bytes do not start like an envelope of this version.
std::optional<std::int64_t> peek_envelope_created_at(std::string_view bytes) noexcept;

}  // namespace dogpile
