// ValueView: a stored value seen without its C++ type, for people.
//
// A cache holds envelopes: a fixed header (type tag, schema version, codec,
// times) and a payload only the type's own code can decode. Tools that list
// or show entries (`dogpile ls`, `dogpile get`) know the types this library
// registers itself: strings, byte vectors, numbers, the standard containers
// of type_info.h, and command results (dogpile.CommandResult). For those they
// can name the type and show the value; for any other type, the tag and the
// bytes are all there is.
//
//   const dogpile::ValueView v = dogpile::view_value(entry.info.meta, entry.payload);
//   // v.type_name == "std.string", v.parts[0].bytes == the string
//
// Thread safety: both functions are reentrant.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "dogpile/envelope.h"

namespace dogpile {

struct ValueView {
  // A named piece of a value: its text, or bytes that may not be text.
  struct Part {
    std::string name{};   // "value", "stdout", "stderr", "command", "directory", "status"...
    std::string bytes{};
  };
  // The registered name of a type this library registers ("std.string",
  // "int64", "dogpile.CommandResult"); empty for other types.
  std::string type_name{};
  // The payload decoded as that type at its current schema version. False
  // for unknown types, older schema versions and payloads that do not decode.
  bool decoded = false;
  // One line saying what the value is, where a type's name is not enough
  // (a command result: its command line, directory and exit status); else empty.
  std::string summary{};
  // Short facts, one line each, in order (a command's "command", "directory",
  // "status"); empty for plain values.
  std::vector<Part> fields{};
  // The value's own bytes: one "value" part for strings, byte vectors,
  // numbers (as text) and containers (one element per line); a command's
  // "stdout" and "stderr". Empty when not decoded.
  std::vector<Part> parts{};
};

// What this library can tell of a stored value from its header and payload.
ValueView view_value(const EnvelopeMeta& meta, std::string_view payload);

// The registered name of a type this library registers, by its tag; empty
// when the tag belongs to some other type.
std::string_view known_type_name(std::uint64_t type_tag) noexcept;

// Whether view_value gives values of this type a summary, so a listing
// need read only those payloads.
bool has_summary(std::uint64_t type_tag) noexcept;

}  // namespace dogpile
