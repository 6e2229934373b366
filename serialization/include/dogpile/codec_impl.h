// Template definitions for codec.h; include codec.h, not this file.
//
// Payloads are written straight into the caller's std::string and read
// straight out of the checksum-verified bytes: two small stream buffers stand
// between cereal's std::ostream/std::istream interface and those buffers, so
// no payload is ever copied into an intermediate stringstream.
//
// Byte-like values (std::string and byte vectors) skip cereal in the two
// binary codecs: their payload is a length prefix and the bytes, which are
// written and read here directly, byte for byte what cereal writes and reads.
// Reading one is then a single allocation and a single copy, where cereal's
// stream path zero-fills the string before copying into it.
//
// decode_payload is safe on any bytes, not only on what a checksum vouches
// for (a faulty or hostile writer can checksum anything): the binary codecs
// read through the bounded archives of bounded_archive.h, which refuse a
// size larger than the bytes left and nesting deeper than a fixed limit, and
// a JSON payload nested deeper than kMaxJsonDepth is refused before rapidjson,
// which recurses once per level, parses it, as is one spelling a zero in a
// way rapidjson misreads (json_zero_numbers_ok).
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <istream>
#include <iterator>
#include <ostream>
#include <stdexcept>
#include <streambuf>
#include <string>
#include <string_view>
#include <type_traits>

#include <cereal/archives/binary.hpp>
#include <cereal/archives/json.hpp>
#include <cereal/archives/portable_binary.hpp>
#include <cereal/cereal.hpp>
// The standard types cached values commonly hold.
#include <cereal/types/array.hpp>
#include <cereal/types/chrono.hpp>
#include <cereal/types/deque.hpp>
#include <cereal/types/list.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/memory.hpp>
#include <cereal/types/optional.hpp>
#include <cereal/types/set.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/tuple.hpp>
#include <cereal/types/unordered_map.hpp>
#include <cereal/types/unordered_set.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/variant.hpp>
#include <cereal/types/vector.hpp>

#include "dogpile/bounded_archive.h"
#include "dogpile/codec.h"

namespace dogpile {
namespace detail {

// A write-only stream buffer that appends to a std::string.
class StringAppendBuf final : public std::streambuf {
 public:
  explicit StringAppendBuf(std::string& out) : out_(out) {}

 protected:
  int_type overflow(int_type ch) override {
    if (traits_type::eq_int_type(ch, traits_type::eof())) return traits_type::not_eof(ch);
    out_.push_back(traits_type::to_char_type(ch));
    return ch;
  }

  std::streamsize xsputn(const char* s, std::streamsize n) override {
    out_.append(s, static_cast<std::size_t>(n));
    return n;
  }

 private:
  std::string& out_;
};

// A read-only stream buffer over bytes it does not own. The whole view is the
// get area, so there is nothing to refill: underflow only reports the end.
class ViewReadBuf final : public std::streambuf {
 public:
  explicit ViewReadBuf(std::string_view bytes) {
    // std::streambuf wants char*; nothing here writes through it (no put
    // area, and putback only moves the read position back).
    char* begin = const_cast<char*>(bytes.data());
    setg(begin, begin, begin + bytes.size());
  }

  // True once every byte has been read.
  bool exhausted() const noexcept { return gptr() == egptr(); }

 protected:
  int_type underflow() override {
    return gptr() < egptr() ? traits_type::to_int_type(*gptr()) : traits_type::eof();
  }

  std::streamsize xsgetn(char* s, std::streamsize n) override {
    const std::streamsize count = std::min<std::streamsize>(n, egptr() - gptr());
    if (count <= 0) return 0;
    std::memcpy(s, gptr(), static_cast<std::size_t>(count));
    // setg rather than gbump: gbump takes an int and payloads may exceed 2 GiB.
    setg(eback(), gptr() + count, egptr());
    return count;
  }
};

// cereal's JSON reader turns strings into std::string through a C string and
// so stops at the first NUL. Its writer escapes a NUL as \u0000, so a payload
// holding that escape (preceded by an even run of backslashes, i.e. not itself
// an escaped backslash) carries a string the reader would shorten.
inline bool json_has_nul_escape(std::string_view json) noexcept {
  constexpr std::string_view kNulEscape = "\\u0000";
  for (std::size_t pos = json.find(kNulEscape); pos != std::string_view::npos;
       pos = json.find(kNulEscape, pos + 1)) {
    std::size_t backslashes = 1;
    while (backslashes <= pos && json[pos - backslashes] == '\\') ++backslashes;
    if (backslashes % 2 == 1) return true;
  }
  return false;
}

// How deeply arrays and objects may nest in a JSON payload. What cereal
// writes for ordinary types nests a few levels; rapidjson's parser recurses
// once per level, so this bounds the stack a malformed payload can take.
inline constexpr std::size_t kMaxJsonDepth = 512;

// Whether no array or object in `json` is nested deeper than kMaxJsonDepth.
// An upper bound on what rapidjson would see: brackets inside strings are
// skipped as rapidjson skips them, and anything after a syntax error (where
// rapidjson stops) is counted too.
inline bool json_depth_ok(std::string_view json) noexcept {
  std::size_t depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < json.size(); ++i) {
    const char c = json[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // the escaped character, whatever it is
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) return false;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return true;
}

// Debian 12's rapidjson (1.1.0) misreads a number whose digits are all
// zeros when its full-precision path (which cereal's reader takes) goes past
// the fast path: "0e100", or "0." and more than 22 zeros, reads back as a
// large or tiny nonzero value, computed from __builtin_clzll(0)
// (Tencent/rapidjson#1249 and #1441, fixed after 1.1.0). cereal writes zero
// as "0.0", so only other writers spell it so: such a number is refused
// rather than misread. More fraction digits than this, all zero, are refused.
inline constexpr std::size_t kMaxZeroFractionDigits = 22;

// Whether `json` holds no all-zero number with an exponent or with more than
// kMaxZeroFractionDigits fraction digits. Strings are skipped as in
// json_depth_ok; any other digit starts a number (JSON has no names that
// hold digits), so malformed text is judged by the same rule.
inline bool json_zero_numbers_ok(std::string_view json) noexcept {
  const auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  bool in_string = false;
  for (std::size_t i = 0; i < json.size(); ++i) {
    const char c = json[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
      continue;
    }
    if (c != '-' && !is_digit(c)) continue;
    std::size_t j = c == '-' ? i + 1 : i;
    bool nonzero = false;
    for (; j < json.size() && is_digit(json[j]); ++j) nonzero = nonzero || json[j] != '0';
    std::size_t fraction_digits = 0;
    if (j < json.size() && json[j] == '.') {
      for (++j; j < json.size() && is_digit(json[j]); ++j, ++fraction_digits) {
        nonzero = nonzero || json[j] != '0';
      }
    }
    const bool exponent = j < json.size() && (json[j] == 'e' || json[j] == 'E');
    if (!nonzero && (exponent || fraction_digits > kMaxZeroFractionDigits)) return false;
    if (exponent) {
      ++j;
      if (j < json.size() && (json[j] == '+' || json[j] == '-')) ++j;
      while (j < json.size() && is_digit(json[j])) ++j;
    }
    i = j - 1;  // the loop's ++i lands on the character after the number
  }
  return true;
}

// A top-level std::string is read with rapidjson directly, honouring the
// string's length, so strings with NULs round-trip through the JSON codec.
// The bytes are the same {"value": "..."} object cereal writes.
inline bool decode_json_string(std::string_view bytes, std::string& out) {
  if (!json_zero_numbers_ok(bytes)) return false;
  ViewReadBuf buf(bytes);
  std::istream stream(&buf);
  RAPIDJSON_NAMESPACE::IStreamWrapper reader(stream);
  RAPIDJSON_NAMESPACE::Document document;
  // cereal's parse flags (full precision, NaN and infinities), and iterative:
  // no recursion per nesting level, whatever the bytes hold.
  constexpr unsigned kFlags = RAPIDJSON_NAMESPACE::kParseFullPrecisionFlag |
                              RAPIDJSON_NAMESPACE::kParseNanAndInfFlag |
                              RAPIDJSON_NAMESPACE::kParseIterativeFlag;
  document.ParseStream<kFlags>(reader);
  if (document.HasParseError() || !buf.exhausted() || !document.IsObject() ||
      document.MemberCount() != 1) {
    return false;
  }
  // Name compared by hand: rapidjson's iterator operator== is ambiguous under
  // C++20's reversed-operator rules.
  const auto& member = *document.MemberBegin();
  if (std::string_view(member.name.GetString(), member.name.GetStringLength()) != "value" ||
      !member.value.IsString()) {
    return false;
  }
  out.assign(member.value.GetString(), member.value.GetStringLength());
  return true;
}

// cereal's size tag: CEREAL_SIZE_TYPE, std::uint64_t unless a build changes it.
using SizeTag = cereal::size_type;

// portable_binary payloads are little-endian; the fast path takes them on
// little-endian hosts only and leaves the others to cereal.
inline constexpr bool kLittleEndianHost = std::endian::native == std::endian::little;
// What PortableBinaryOutputArchive writes first: 1 for a little-endian stream.
inline constexpr char kPortableLittleEndianMarker = 1;

// Whether `codec` has the prefix-and-bytes fast path for T on this host.
template <class T>
constexpr bool has_byte_fast_path(CodecId codec) noexcept {
  if constexpr (!kIsRawCodable<T>) {
    return false;
  } else {
    return codec == CodecId::kBinary || (codec == CodecId::kPortableBinary && kLittleEndianHost);
  }
}

// Appends what cereal's binary archives write for a byte-like value: the
// portable marker (portable_binary only), the size tag in host order (which
// is little-endian whenever portable_binary takes this path), the bytes.
template <class T>
void append_bytes_payload(CodecId codec, const T& value, std::string& out) {
  const auto size = static_cast<SizeTag>(value.size());
  // Room for an envelope's checksum too, so finishing one does not copy the
  // whole payload into a bigger buffer.
  out.reserve(out.size() + 1 + sizeof(size) + value.size() + kEnvelopeTrailerSize);
  if (codec == CodecId::kPortableBinary) out.push_back(kPortableLittleEndianMarker);
  char prefix[sizeof(size)];
  std::memcpy(prefix, &size, sizeof(size));
  out.append(prefix, sizeof(size));
  out.append(reinterpret_cast<const char*>(value.data()), value.size());
}

// Reads a byte-like value written by append_bytes_payload (or cereal). The
// length prefix is compared with the bytes at hand before anything is
// allocated, so a lying prefix costs nothing. Returns false when the bytes
// are not exactly one such value.
template <class T>
bool read_bytes_payload(CodecId codec, std::string_view bytes, T& out) {
  bool swap = false;
  if (codec == CodecId::kPortableBinary) {
    if (bytes.empty()) return false;
    // As cereal's reader on a little-endian host: any marker but 1 means a
    // big-endian stream, whose size tag is byte-swapped (the bytes are not).
    swap = bytes.front() != kPortableLittleEndianMarker;
    bytes.remove_prefix(1);
  }
  unsigned char prefix[sizeof(SizeTag)];
  if (bytes.size() < sizeof(prefix)) return false;
  std::memcpy(prefix, bytes.data(), sizeof(prefix));
  if (swap) std::reverse(std::begin(prefix), std::end(prefix));
  SizeTag size = 0;
  std::memcpy(&size, prefix, sizeof(size));
  bytes.remove_prefix(sizeof(prefix));
  // Exactly the prefix's length must follow: fewer is a truncation, more is
  // not one T (cereal's path refuses both too).
  if (size != bytes.size()) return false;
  using Element = typename T::value_type;
  const auto* first = reinterpret_cast<const Element*>(bytes.data());
  out.assign(first, first + bytes.size());
  return true;
}

[[noreturn]] inline void throw_codec_cannot_carry(CodecId codec) {
  throw std::invalid_argument("dogpile: the '" + std::string(codec_name(codec)) +
                              "' codec cannot carry this type");
}

template <class T>
void append_payload(CodecId codec, const T& value, std::string& out) {
  if constexpr (kIsRawCodable<T>) {
    if (has_byte_fast_path<T>(codec)) {
      append_bytes_payload(codec, value, out);
      return;
    }
  }
  switch (codec) {
    case CodecId::kRaw:
      if constexpr (kIsRawCodable<T>) {
        out.append(reinterpret_cast<const char*>(value.data()), value.size());
        return;
      } else {
        throw_codec_cannot_carry(codec);
      }
    case CodecId::kBinary: {
      StringAppendBuf buf(out);
      std::ostream stream(&buf);
      cereal::BinaryOutputArchive archive(stream);
      archive(value);
      return;
    }
    case CodecId::kPortableBinary: {
      StringAppendBuf buf(out);
      std::ostream stream(&buf);
      cereal::PortableBinaryOutputArchive archive(stream);
      archive(value);
      return;
    }
    case CodecId::kJson: {
      const std::size_t start = out.size();
      StringAppendBuf buf(out);
      std::ostream stream(&buf);
      {
        // The archive writes its closing braces in its destructor.
        cereal::JSONOutputArchive archive(stream);
        archive(cereal::make_nvp("value", value));
      }
      // rapidjson writes through std::ostream::put, which turns a failure of
      // the buffer (std::bad_alloc) into badbit instead of throwing.
      if (!stream) throw std::runtime_error("dogpile: writing the json payload failed");
      if constexpr (!std::is_same_v<T, std::string>) {
        if (json_has_nul_escape(std::string_view(out).substr(start))) {
          throw std::invalid_argument(
              "dogpile: the 'json' codec cannot carry a string containing NUL bytes inside "
              "this type; use 'binary' or 'portable_binary'");
        }
      }
      return;
    }
  }
  throw_codec_cannot_carry(codec);
}

// Bytes left over mean the payload was not written as one T.
template <class Archive, class T>
bool read_whole_binary_payload(std::string_view bytes, T& out) {
  Archive archive(bytes);
  archive(out);
  return archive.remaining() == 0;
}

template <class T>
bool read_whole_json_payload(std::string_view bytes, T& out) {
  if (json_has_nul_escape(bytes) || !json_depth_ok(bytes) || !json_zero_numbers_ok(bytes)) {
    return false;
  }
  ViewReadBuf buf(bytes);
  std::istream stream(&buf);
  {
    cereal::JSONInputArchive archive(stream);
    auto value = cereal::make_nvp("value", out);
    archive(value);
  }
  return buf.exhausted();
}

}  // namespace detail

template <class T>
void encode_payload(CodecId codec, const T& value, std::string& out) {
  const std::size_t original_size = out.size();
  try {
    detail::append_payload(codec, value, out);
  } catch (...) {
    out.resize(original_size);  // leave no partial payload behind
    throw;
  }
}

template <class T>
bool decode_payload(CodecId codec, std::string_view bytes, T& out) noexcept {
  try {
    if constexpr (kIsRawCodable<T>) {
      if (detail::has_byte_fast_path<T>(codec)) return detail::read_bytes_payload(codec, bytes, out);
    }
    switch (codec) {
      case CodecId::kRaw:
        if constexpr (kIsRawCodable<T>) {
          out.assign(bytes.begin(), bytes.end());
          return true;
        } else {
          return false;
        }
      case CodecId::kBinary:
        return detail::read_whole_binary_payload<detail::BoundedBinaryInputArchive>(bytes, out);
      case CodecId::kPortableBinary:
        return detail::read_whole_binary_payload<detail::BoundedPortableBinaryInputArchive>(bytes,
                                                                                           out);
      case CodecId::kJson:
        if constexpr (std::is_same_v<T, std::string>) {
          return detail::decode_json_string(bytes, out);
        } else {
          return detail::read_whole_json_payload(bytes, out);
        }
    }
    return false;
  } catch (...) {
    // cereal::Exception, rapidjson assertions, std::bad_alloc, and whatever a
    // user's load function throws: the bytes are not a T.
    return false;
  }
}

}  // namespace dogpile
