// Codecs: how a payload of type T becomes bytes and back.
//
// Four codecs share one contract: cereal binary (the default), cereal portable
// binary, cereal JSON, and raw (byte-like payloads only, no cereal). User types
// take part through cereal's own serialize/save/load functions, nothing else.
// encode_value writes a whole envelope (header, payload, checksum) in one
// buffer; decode_payload turns checksum-verified payload bytes back into T.
//
// Thread safety: all functions are reentrant.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "dogpile/envelope.h"
#include "dogpile/type_info.h"

namespace dogpile {

// Byte-like payloads the raw codec can carry.
template <class T>
inline constexpr bool kIsRawCodable =
    std::is_same_v<T, std::string> || std::is_same_v<T, std::vector<std::uint8_t>> ||
    std::is_same_v<T, std::vector<char>>;

template <class T>
constexpr bool codec_supports(CodecId codec) noexcept {
  return codec == CodecId::kRaw ? kIsRawCodable<T>
                                : (codec == CodecId::kBinary || codec == CodecId::kPortableBinary ||
                                   codec == CodecId::kJson);
}

// Appends the encoding of `value` to `out`. Throws std::invalid_argument when
// the codec cannot carry T, and whatever cereal throws for the value.
template <class T>
void encode_payload(CodecId codec, const T& value, std::string& out);

// Decodes `bytes` into `out`. Returns false when the bytes do not decode as a
// T under `codec` (or the codec cannot carry T); never throws.
template <class T>
bool decode_payload(CodecId codec, std::string_view bytes, T& out) noexcept;

// Encodes a whole envelope for `value` into `out` (cleared first). The codec
// and type fields of meta are filled in from `codec` and T.
template <RegisteredType T>
void encode_value(CodecId codec, const T& value, EnvelopeMeta meta,
                  std::optional<std::string_view> full_key, std::string& out) {
  meta.codec = codec;
  meta.type_tag = type_tag<T>();
  meta.schema_version = schema_version<T>();
  const std::size_t payload_offset = begin_envelope(out, meta, full_key);
  encode_payload(codec, value, out);
  finish_envelope(out, payload_offset);
}

}  // namespace dogpile

#include "dogpile/codec_impl.h"  // IWYU pragma: export
