// Template definitions for codec.h; include codec.h, not this file.
//
// Payloads are written straight into the caller's std::string and read
// straight out of the checksum-verified bytes: two small stream buffers stand
// between cereal's std::ostream/std::istream interface and those buffers, so
// no payload is ever copied into an intermediate stringstream.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <istream>
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

// A top-level std::string is read with rapidjson directly, honouring the
// string's length, so strings with NULs round-trip through the JSON codec.
// The bytes are the same {"value": "..."} object cereal writes.
inline bool decode_json_string(std::string_view bytes, std::string& out) {
  ViewReadBuf buf(bytes);
  std::istream stream(&buf);
  RAPIDJSON_NAMESPACE::IStreamWrapper reader(stream);
  RAPIDJSON_NAMESPACE::Document document;
  document.ParseStream(reader);
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

[[noreturn]] inline void throw_codec_cannot_carry(CodecId codec) {
  throw std::invalid_argument("dogpile: the '" + std::string(codec_name(codec)) +
                              "' codec cannot carry this type");
}

template <class T>
void append_payload(CodecId codec, const T& value, std::string& out) {
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

template <class Archive, class T>
bool read_whole_payload(std::string_view bytes, T& out) {
  ViewReadBuf buf(bytes);
  std::istream stream(&buf);
  {
    Archive archive(stream);
    archive(out);
  }
  // Bytes left over mean the payload was not written as one T.
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
    switch (codec) {
      case CodecId::kRaw:
        if constexpr (kIsRawCodable<T>) {
          out.assign(bytes.begin(), bytes.end());
          return true;
        } else {
          return false;
        }
      case CodecId::kBinary:
        return detail::read_whole_payload<cereal::BinaryInputArchive>(bytes, out);
      case CodecId::kPortableBinary:
        return detail::read_whole_payload<cereal::PortableBinaryInputArchive>(bytes, out);
      case CodecId::kJson: {
        if constexpr (std::is_same_v<T, std::string>) {
          return detail::decode_json_string(bytes, out);
        } else {
          if (detail::json_has_nul_escape(bytes)) return false;
          auto value = cereal::make_nvp("value", out);
          return detail::read_whole_payload<cereal::JSONInputArchive>(bytes, value);
        }
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
