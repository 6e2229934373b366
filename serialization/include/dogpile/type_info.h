// TypeInfo: the stable name and schema version of a cached type.
//
// Every type stored in a cache is registered once with a name that does not
// change between builds and a schema version that is bumped whenever its
// serialized form changes. The envelope stores the 64-bit XXH3 hash of the
// name (the type tag) and the schema version; a reader whose tag or version
// differs treats the entry as a mismatch (a miss), never decoding bytes of
// another type. Register at global scope:
//
//   DOGPILE_REGISTER_TYPE(my::Point, "my.Point", 1);
//
// Thread safety: type_tag<T>() is safe to call from any thread.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace dogpile {

// Specialised once per cached type, through DOGPILE_REGISTER_TYPE.
template <class T>
struct TypeInfo;

template <class T>
concept RegisteredType = requires {
  { TypeInfo<T>::name } -> std::convertible_to<std::string_view>;
  { TypeInfo<T>::schema_version } -> std::convertible_to<std::uint32_t>;
};

// XXH3-64 of a registered type name.
std::uint64_t type_tag_of(std::string_view name) noexcept;

template <RegisteredType T>
std::uint64_t type_tag() noexcept {
  static const std::uint64_t tag = type_tag_of(TypeInfo<T>::name);
  return tag;
}

template <RegisteredType T>
constexpr std::uint32_t schema_version() noexcept {
  return TypeInfo<T>::schema_version;
}

}  // namespace dogpile

#define DOGPILE_REGISTER_TYPE(Type, Name, SchemaVersion)                   \
  template <>                                                              \
  struct dogpile::TypeInfo<Type> {                                         \
    static constexpr std::string_view name = Name;                         \
    static constexpr std::uint32_t schema_version = (SchemaVersion);       \
  }

namespace dogpile {
// Aliases so template types with commas fit the macro.
using StringMap = std::map<std::string, std::string>;
}  // namespace dogpile

// Types the library registers itself.
DOGPILE_REGISTER_TYPE(std::string, "std.string", 1);
DOGPILE_REGISTER_TYPE(std::vector<std::uint8_t>, "std.bytes", 1);
DOGPILE_REGISTER_TYPE(bool, "bool", 1);
DOGPILE_REGISTER_TYPE(std::int32_t, "int32", 1);
DOGPILE_REGISTER_TYPE(std::int64_t, "int64", 1);
DOGPILE_REGISTER_TYPE(std::uint32_t, "uint32", 1);
DOGPILE_REGISTER_TYPE(std::uint64_t, "uint64", 1);
DOGPILE_REGISTER_TYPE(double, "double", 1);
DOGPILE_REGISTER_TYPE(std::vector<std::string>, "std.vector<std.string>", 1);
DOGPILE_REGISTER_TYPE(std::vector<std::int64_t>, "std.vector<int64>", 1);
DOGPILE_REGISTER_TYPE(dogpile::StringMap, "std.map<std.string,std.string>", 1);
