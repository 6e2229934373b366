#include <catch2/catch.hpp>

#include "dogpile/config.h"
#include "dogpile/error.h"

using namespace dogpile;
using namespace std::chrono_literals;

TEST_CASE("durations parse with units", "[config]") {
  Duration d{};
  REQUIRE(parse_duration("250ms", d));
  CHECK(d == 250ms);
  REQUIRE(parse_duration("10s", d));
  CHECK(d == 10s);
  REQUIRE(parse_duration("10", d));
  CHECK(d == 10s);
  REQUIRE(parse_duration("5m", d));
  CHECK(d == 5min);
  REQUIRE(parse_duration("1.5h", d));
  CHECK(d == 90min);
  REQUIRE(parse_duration(" 2d ", d));
  CHECK(d == 48h);
  REQUIRE(parse_duration("7us", d));
  CHECK(d == 7us);

  for (const char* bad : {"", "ms", "-1s", "10 parsecs", "1e3s", "abc", "1..2s"}) {
    INFO(bad);
    const Status s = parse_duration(bad, d);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.message().find("duration") != std::string::npos);
  }
}

TEST_CASE("durations parse as people type them: several units, long names, weeks",
          "[config]") {
  Duration d{};
  const std::pair<const char*, Duration> cases[] = {
      {"1h30m", 90min},        {"90s", 90s},           {"1w", 7 * 24h},
      {"2d", 48h},             {"2d 12h", 60h},        {"1h 30m 15s", 5415s},
      {"1 hour 30 minutes", 90min}, {"3 weeks", 21 * 24h}, {"500 msec", 500ms},
      {"1m30s", 90s},          {"1.5h30m", 120min},    {"10min", 10min},
      {"2hrs", 2h},            {"45 sec", 45s},        {"1s500ms", 1500ms}};
  for (const auto& [text, expected] : cases) {
    INFO(text);
    REQUIRE(parse_duration(text, d));
    CHECK(d == expected);
  }
  // Garbage is refused with the whole text quoted; a bare number only stands alone.
  for (const char* bad : {"1h30", "30 1h", "1x", "1h 2parsecs", "1hh", "h1", "1 h,30m",
                          "1M", "1h-30m"}) {
    INFO(bad);
    const Status s = parse_duration(bad, d);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    const std::string quoted = std::string(1, '\'').append(bad).append(1, '\'');
    CHECK(s.message().find(quoted) != std::string::npos);
  }
  // Several units that together pass 292 years are refused, never wrapped.
  CHECK(parse_duration("106751d 106751d", d).code() == StatusCode::kInvalidArgument);
}

TEST_CASE("durations at the edge of the range never wrap", "[config][time]") {
  Duration d{};
  REQUIRE(parse_duration("0", d));
  CHECK(d == 0ns);
  REQUIRE(parse_duration("1ns", d));
  CHECK(d == 1ns);
  // 2^63 - 1 ns is not a double; the largest double below 2^63 is 2^63 - 1024.
  REQUIRE(parse_duration("9223372036854774784ns", d));
  CHECK(d.count() == 9223372036854774784);
  REQUIRE(parse_duration("106751d", d));  // 292 years less a little
  CHECK(d == std::chrono::hours(24) * 106751);
  // These round to 2^63 ns or more: refused, never a negative duration.
  for (const char* big : {"9223372036854775807ns", "9223372036854775808ns", "106752d",
                          "9223372036.854775808s", "99999999999999999999999999d",
                          "1e400d"}) {
    INFO(big);
    const Status s = parse_duration(big, d);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.message().find(big) != std::string::npos);
  }
  const std::string huge(100000, '9');
  CHECK(parse_duration(huge + "s", d).code() == StatusCode::kInvalidArgument);
  for (const char* negative : {"-1ns", "-0.5s", "-9223372036854775808ns"}) {
    INFO(negative);
    CHECK(parse_duration(negative, d).code() == StatusCode::kInvalidArgument);
  }
}

TEST_CASE("sizes parse with decimal and binary units", "[config]") {
  std::uint64_t n = 0;
  REQUIRE(parse_size("4096", n));
  CHECK(n == 4096);
  REQUIRE(parse_size("64KiB", n));
  CHECK(n == 64 * 1024);
  REQUIRE(parse_size("2GiB", n));
  CHECK(n == 2ull << 30);
  REQUIRE(parse_size("1MB", n));
  CHECK(n == 1000000);
  REQUIRE(parse_size("1.5KiB", n));
  CHECK(n == 1536);
  for (const char* bad : {"", "GiB", "12 parsecs", "1.3B", "-5", "99999999999TiB"}) {
    INFO(bad);
    CHECK(parse_size(bad, n).code() == StatusCode::kInvalidArgument);
  }
}

TEST_CASE("booleans", "[config]") {
  bool b = false;
  REQUIRE(parse_bool("Yes", b));
  CHECK(b);
  REQUIRE(parse_bool("off", b));
  CHECK_FALSE(b);
  CHECK_FALSE(parse_bool("maybe", b));
}

TEST_CASE("config_with_prefix strips the prefix and keeps only matching keys", "[config]") {
  const ConfigMap config{{"cache.backend", "lmdb"},
                         {"cache.arguments.path", "/tmp/x"},
                         {"cachet", "no"},
                         {"other.backend", "memory"}};
  const ConfigMap args = config_with_prefix(config, "cache.arguments.");
  REQUIRE(args.size() == 1);
  CHECK(args.at("path") == "/tmp/x");
  CHECK(config_with_prefix(config, "cache.").size() == 2);
}

TEST_CASE("ConfigReader names unknown and bad keys", "[config]") {
  SECTION("all known and valid") {
    const ConfigMap m{{"ttl", "5s"}, {"max", "1MiB"}, {"n", "3"}, {"on", "true"}, {"name", "x"}};
    ConfigReader r(m, "test component");
    CHECK(r.duration("ttl") == Duration(5s));
    CHECK(r.size("max") == 1u << 20);
    CHECK(r.unsigned_integer("n") == 3u);
    CHECK(r.boolean("on") == true);
    CHECK(r.string("name") == "x");
    CHECK_FALSE(r.string("absent").has_value());
    CHECK(r.finish());
  }
  SECTION("an unknown key") {
    const ConfigMap m{{"ttl", "5s"}, {"tll", "5s"}};
    ConfigReader r(m, "test component");
    (void)r.duration("ttl");
    const Status s = r.finish();
    REQUIRE_FALSE(s);
    CHECK(s.message().find("'tll'") != std::string::npos);
    CHECK(s.message().find("unknown") != std::string::npos);
  }
  SECTION("a bad value") {
    const ConfigMap m{{"max", "12 parsecs"}, {"n", "-3"}};
    ConfigReader r(m, "test component");
    (void)r.size("max");
    (void)r.unsigned_integer("n");
    const Status s = r.finish();
    REQUIRE_FALSE(s);
    CHECK(s.message().find("'max'") != std::string::npos);
    CHECK(s.message().find("12 parsecs") != std::string::npos);
  }
}

TEST_CASE("errors carry code, path and errno", "[config]") {
  const Status s = Status::io_error("cannot open", "/nowhere/x", ENOENT);
  CHECK(s.to_string().find("/nowhere/x") != std::string::npos);
  CHECK(s.to_string().find("No such file") != std::string::npos);
  try {
    throw_if_error(s);
    FAIL("no exception");
  } catch (const StoreError& e) {
    CHECK(e.code() == StatusCode::kIOError);
    CHECK(e.path() == "/nowhere/x");
    CHECK(e.sys_errno() == ENOENT);
  }
  CHECK_THROWS_AS(throw_if_error(Status::error(StatusCode::kInvalidArgument, "x")), ConfigError);
  CHECK_THROWS_AS(throw_if_error(Status::error(StatusCode::kFull, "x")), CacheFull);
  CHECK_THROWS_AS(throw_if_error(Status::error(StatusCode::kTimedOut, "x")), LockTimeout);
  CHECK_NOTHROW(throw_if_error(Status::ok()));
}
