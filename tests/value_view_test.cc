// ValueView: naming and showing stored values of the library's own types
// without their C++ type, as `dogpile ls` and `get` do.
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "dogpile/command_cache.h"
#include "dogpile/dogpile.h"
#include "dogpile/value_view.h"

using namespace dogpile;

namespace {

// The header and payload an entry of `value` has under `codec`.
template <class T>
std::pair<EnvelopeMeta, std::string> stored(const T& value, CodecId codec = CodecId::kBinary) {
  EnvelopeMeta meta;
  meta.codec = codec;
  meta.type_tag = type_tag<T>();
  meta.schema_version = schema_version<T>();
  std::string payload;
  encode_payload(codec, value, payload);
  return {meta, payload};
}

}  // namespace

TEST_CASE("known types are named by their registered names", "[value_view]") {
  CHECK(known_type_name(type_tag<std::string>()) == "std.string");
  CHECK(known_type_name(type_tag<std::int64_t>()) == "int64");
  CHECK(known_type_name(type_tag<CommandResult>()) == "dogpile.CommandResult");
  CHECK(known_type_name(type_tag_of("my.Point")).empty());
  CHECK(has_summary(type_tag<CommandResult>()));
  CHECK_FALSE(has_summary(type_tag<std::string>()));
}

TEST_CASE("strings, bytes and numbers show their values", "[value_view]") {
  for (const CodecId codec : {CodecId::kBinary, CodecId::kPortableBinary, CodecId::kJson}) {
    const auto [meta, payload] = stored(std::string("Ada"), codec);
    const ValueView v = view_value(meta, payload);
    CHECK(v.type_name == "std.string");
    REQUIRE(v.decoded);
    REQUIRE(v.parts.size() == 1);
    CHECK(v.parts[0].name == "value");
    CHECK(v.parts[0].bytes == "Ada");
    CHECK(v.summary.empty());
  }
  const auto [bytes_meta, bytes_payload] = stored(std::string("\0\xff", 2), CodecId::kRaw);
  CHECK(view_value(bytes_meta, bytes_payload).parts.at(0).bytes == std::string("\0\xff", 2));
  const auto [int_meta, int_payload] = stored(std::int64_t{-42});
  CHECK(view_value(int_meta, int_payload).parts.at(0).bytes == "-42");
  const auto [list_meta, list_payload] = stored(std::vector<std::string>{"a", "b"});
  CHECK(view_value(list_meta, list_payload).parts.at(0).bytes == "a\nb\n");
}

TEST_CASE("a command result shows what ran where and how it ended", "[value_view]") {
  const CommandResult r{.exit_code = 128 + 9,
                        .signal = 9,
                        .out = "partial\n",
                        .err = "",
                        .argv = {"sh", "-c", "echo it's; kill -9 $$"},
                        .cwd = "/src/app"};
  const auto [meta, payload] = stored(r);
  const ValueView v = view_value(meta, payload);
  REQUIRE(v.decoded);
  CHECK(v.summary == "sh -c 'echo it'\\''s; kill -9 $$'  (in /src/app)  killed by signal 9");
  REQUIRE(v.fields.size() == 3);
  CHECK(v.fields[0].bytes == "sh -c 'echo it'\\''s; kill -9 $$'");
  CHECK(v.fields[1].bytes == "/src/app");
  CHECK(v.fields[2].bytes == "killed by signal 9");
  REQUIRE(v.parts.size() == 2);
  CHECK(v.parts[0].name == "stdout");
  CHECK(v.parts[0].bytes == "partial\n");
  CHECK(v.parts[1].name == "stderr");
}

TEST_CASE("other types, other schema versions and bad payloads are not decoded",
          "[value_view]") {
  auto [meta, payload] = stored(std::string("x"));
  meta.schema_version = 7;
  ValueView v = view_value(meta, payload);
  CHECK(v.type_name == "std.string");  // still named: the tag says what it is
  CHECK_FALSE(v.decoded);
  CHECK(v.parts.empty());

  auto [cmd_meta, cmd_payload] = stored(CommandResult{});
  cmd_payload.resize(cmd_payload.size() / 2);
  CHECK_FALSE(view_value(cmd_meta, cmd_payload).decoded);

  meta.type_tag = type_tag_of("my.Point");
  meta.schema_version = 1;
  v = view_value(meta, payload);
  CHECK(v.type_name.empty());
  CHECK_FALSE(v.decoded);
}
