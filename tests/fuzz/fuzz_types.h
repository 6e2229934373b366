// The value types the fuzz targets decode into, how two values are compared,
// and the round-trip checks they share; make_corpus.cc encodes the same types.
//
// The types stand for what a cache holds: a string, a vector of numbers, a
// map of vectors of doubles, and a user struct (Record) with an optional, a
// variant, a set, and recursion both through a vector of Records and through
// a std::unique_ptr<Record>. Doubles compare as "the same value": every NaN
// equals every NaN (JSON writes NaN without its payload bits), otherwise ==
// with the sign of zero kept.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "dogpile/codec.h"
#include "dogpile/type_info.h"

namespace dogpile::fuzz {

using NumberTable = std::map<std::string, std::vector<double>>;

struct Record {
  std::string name;
  std::int32_t id = 0;
  bool enabled = false;
  std::optional<std::string> note;
  std::variant<std::monostate, std::int64_t, double, std::string> extra;
  std::set<std::uint16_t> flags;
  NumberTable table;
  std::vector<Record> children;
  std::unique_ptr<Record> next;

  Record() = default;
  Record(Record&&) noexcept = default;
  Record& operator=(Record&&) noexcept = default;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(CEREAL_NVP(name), CEREAL_NVP(id), CEREAL_NVP(enabled), CEREAL_NVP(note),
       CEREAL_NVP(extra), CEREAL_NVP(flags), CEREAL_NVP(table), CEREAL_NVP(children),
       CEREAL_NVP(next));
  }
};

// ---- same_value: equality that a codec must preserve ----

template <class T>
bool same_value(const T& a, const T& b);

inline bool same_double(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return a == b && std::signbit(a) == std::signbit(b);
}

template <class T>
bool same_sequence(const T& a, const T& b) {
  if (a.size() != b.size()) return false;
  auto ib = b.begin();
  for (auto ia = a.begin(); ia != a.end(); ++ia, ++ib) {
    if (!same_value(*ia, *ib)) return false;
  }
  return true;
}

template <class T>
bool same_value(const T& a, const T& b) {
  if constexpr (std::is_same_v<T, Record>) {
    return a.name == b.name && a.id == b.id && a.enabled == b.enabled && a.note == b.note &&
           same_value(a.extra, b.extra) && a.flags == b.flags && same_value(a.table, b.table) &&
           same_value(a.children, b.children) && same_value(a.next, b.next);
  } else if constexpr (std::is_floating_point_v<T>) {
    return same_double(a, b);
  } else if constexpr (requires { a.index(); std::get_if<0>(&a); }) {  // std::variant
    if (a.index() != b.index()) return false;
    return std::visit(
        [&b](const auto& va) {
          using V = std::decay_t<decltype(va)>;
          return same_value(va, std::get<V>(b));
        },
        a);
  } else if constexpr (requires { typename T::deleter_type; }) {  // std::unique_ptr
    if (!a || !b) return !a && !b;
    return same_value(*a, *b);
  } else if constexpr (requires { a.first; a.second; }) {  // map elements
    return same_value(a.first, b.first) && same_value(a.second, b.second);
  } else if constexpr (std::is_same_v<T, std::string> || std::is_arithmetic_v<T> ||
                       std::is_same_v<T, std::monostate>) {
    return a == b;
  } else {
    return same_sequence(a, b);
  }
}

// Whether any string inside `value` holds a NUL byte (what the JSON codec
// refuses to write inside anything but a top-level string).
template <class T>
bool contains_nul(const T& value) {
  if constexpr (std::is_same_v<T, Record>) {
    return contains_nul(value.name) || contains_nul(value.note) || contains_nul(value.extra) ||
           contains_nul(value.table) || contains_nul(value.children) || contains_nul(value.next);
  } else if constexpr (std::is_same_v<T, std::string>) {
    return value.find('\0') != std::string::npos;
  } else if constexpr (requires { value.index(); std::get_if<0>(&value); }) {
    return std::visit([](const auto& v) { return contains_nul(v); }, value);
  } else if constexpr (requires { value.has_value(); *value; }) {  // std::optional
    return value.has_value() && contains_nul(*value);
  } else if constexpr (requires { typename T::deleter_type; }) {  // std::unique_ptr
    return value != nullptr && contains_nul(*value);
  } else if constexpr (requires { value.first; value.second; }) {
    return contains_nul(value.first) || contains_nul(value.second);
  } else if constexpr (requires { value.begin(); value.end(); }) {
    for (const auto& element : value) {
      if (contains_nul(element)) return true;
    }
    return false;
  } else {
    return false;
  }
}

// ---- round trips ----

// Stops the run where the fuzzer can see it, with the reason on stderr.
[[noreturn]] inline void violation(const char* what) {
  std::fprintf(stderr, "fuzz invariant violated: %s\n", what);
  __builtin_trap();
}

// Encodes `value` with `codec`, decodes the bytes, and requires the same
// value back; then encodes that and requires the same bytes (encoding is a
// function of the value). Returns false, checking nothing, when the codec
// refuses the value for a documented reason: the raw codec cannot carry T,
// or a string with a NUL inside a type the JSON codec writes.
template <class T>
bool check_round_trip(CodecId codec, const T& value) {
  std::string bytes;
  try {
    encode_payload(codec, value, bytes);
  } catch (const std::invalid_argument&) {
    if (codec == CodecId::kJson && !std::is_same_v<T, std::string> && contains_nul(value)) {
      if (!bytes.empty()) violation("a refused encode left bytes behind");
      return false;
    }
    if (!codec_supports<T>(codec)) return false;
    violation("encode_payload refused a value its codec carries");
  }
  T decoded{};
  if (!decode_payload(codec, bytes, decoded)) violation("decode(encode(x)) failed");
  if (!same_value(decoded, value)) violation("decode(encode(x)) != x");
  std::string again;
  encode_payload(codec, decoded, again);
  if (again != bytes) violation("encode(decode(encode(x))) != encode(x)");
  return true;
}

// Decodes arbitrary `bytes` as a T; when they decode, the value must survive
// a round trip. The raw codec must decode exactly the types it carries, each
// to the bytes themselves.
template <class T>
void check_decode(CodecId codec, std::string_view bytes) {
  T value{};
  const bool ok = decode_payload(codec, bytes, value);
  if (codec == CodecId::kRaw) {
    if (ok != kIsRawCodable<T>) violation("raw decode of a type raw does not carry");
    if constexpr (kIsRawCodable<T>) {
      if (std::string_view(reinterpret_cast<const char*>(value.data()), value.size()) != bytes) {
        violation("raw decode is not the bytes");
      }
    }
  }
  if (ok) check_round_trip(codec, value);
}

}  // namespace dogpile::fuzz

DOGPILE_REGISTER_TYPE(dogpile::fuzz::NumberTable, "fuzz.NumberTable", 1);
DOGPILE_REGISTER_TYPE(dogpile::fuzz::Record, "fuzz.Record", 1);
