// memoize and memoize_multi: dogpile.cache's tests/cache/test_decorator.py
// ported (each case names the test it ports), the default key encoding and
// its ambiguity cases, and the wrappers on lmdb, across threads and processes.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <latch>
#include <limits>
#include <map>
#include <ostream>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <tuple>
#include <variant>
#include <vector>

#include "dogpile/dogpile.h"
#include "process_util.h"
#include "test_util.h"

using namespace dogpile;
using namespace std::chrono_literals;
using dogpile::test::FakeClock;
using dogpile::test::TempDir;
using dogpile::test::log_line;
using dogpile::test::read_lines;

namespace {

// dogpile's fixture returns (counter, a, b).
struct Call {
  int n = 0;
  int a = 0;
  int b = 0;
  bool operator==(const Call&) const = default;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(n, a, b);
  }
};

std::ostream& operator<<(std::ostream& os, const Call& c) {
  return os << "(" << c.n << ", " << c.a << ", " << c.b << ")";
}

}  // namespace

DOGPILE_REGISTER_TYPE(Call, "test.memoize.Call", 1);

namespace geo {

// A user type keyed through the ADL hook.
struct Point {
  int x = 0;
  int y = 0;
};

void dogpile_key_append(std::string& out, const Point& p) {
  dogpile::append_key(out, p.x);
  dogpile::append_key(out, p.y);
}

}  // namespace geo

namespace vendor {
// A "third-party" type keyed through a KeyEncoder specialisation.
struct Id {
  std::string text;
};
}  // namespace vendor

template <>
struct dogpile::KeyEncoder<vendor::Id> {
  static void append(std::string& out, const vendor::Id& id) { out += id.text; }
};

namespace {

enum class Color { kRed = 1, kGreen = 2 };

struct Fixture {
  std::shared_ptr<FakeClock> clock = std::make_shared<FakeClock>();
  std::shared_ptr<Backend> backend = make_memory_backend();
  // dogpile's fixture region expires after 0.25 s.
  Region region{RegionOptions{.name = "memo", .expiration_time = 250ms, .clock = clock}, backend};
};

// The `go(a, b)` of DecoratorTest._fixture.
auto go_fn(std::shared_ptr<int> counter) {
  return [counter](int a, int b) { return Call{++*counter, a, b}; };
}

// The `go(*args)` of DecoratorTest._multi_fixture: one counter value per call.
auto multi_go_fn(std::shared_ptr<int> counter) {
  return [counter](std::span<const int> args) {
    const int val = ++*counter;
    std::vector<std::string> out;
    for (int a : args) out.push_back(std::to_string(val) + " " + std::to_string(a));
    return out;
  };
}

template <class... Args>
std::string key_of(const Args&... args) {
  return memoize_key("f", "", args...);
}

int generate_fn(int x, int y) {
  static int counter = 0;
  return ++counter + x + y;
}

}  // namespace

// ---- DecoratorTest ----

TEST_CASE("test_decorator: results are cached by arguments and expire with the region",
          "[memoize][dogpile]") {
  Fixture f;
  auto go = memoize(f.region, "go", go_fn(std::make_shared<int>(0)));
  CHECK(go(1, 2) == Call{1, 1, 2});
  CHECK(go(3, 4) == Call{2, 3, 4});
  CHECK(go(1, 2) == Call{1, 1, 2});
  f.clock->advance(300ms);
  CHECK(go(1, 2) == Call{3, 1, 2});
}

TEST_CASE("test_decorator_namespace: the namespace is part of the key", "[memoize][dogpile]") {
  Fixture f;
  auto counter = std::make_shared<int>(0);
  auto go = memoize(f.region, "go", go_fn(counter), {.key_namespace = "x"});
  CHECK(go(1, 2) == Call{1, 1, 2});
  CHECK(go(3, 4) == Call{2, 3, 4});
  CHECK(go(1, 2) == Call{1, 1, 2});
  f.clock->advance(300ms);
  CHECK(go(1, 2) == Call{3, 1, 2});

  // The TODO of the original: the same name in another namespace is another
  // function, and no namespace is a third.
  auto other = memoize(f.region, "go", go_fn(counter), {.key_namespace = "y"});
  auto plain = memoize(f.region, "go", go_fn(counter));
  CHECK(other(1, 2) == Call{4, 1, 2});
  CHECK(plain(1, 2) == Call{5, 1, 2});
  CHECK(go(1, 2) == Call{3, 1, 2});
  CHECK(go.key(1, 2) == "go|x|i1:1 i1:2");
  CHECK(other.key(1, 2) == "go|y|i1:1 i1:2");
  CHECK(plain.key(1, 2) == "go||i1:1 i1:2");
}

TEST_CASE("test_decorator_custom_expire: the wrapper's expiration wins over the region's",
          "[memoize][dogpile]") {
  Fixture f;
  auto go = memoize(f.region, "go", go_fn(std::make_shared<int>(0)), {.expiration_time = 500ms});
  CHECK(go(1, 2) == Call{1, 1, 2});
  CHECK(go(3, 4) == Call{2, 3, 4});
  CHECK(go(1, 2) == Call{1, 1, 2});
  f.clock->advance(300ms);
  CHECK(go(1, 2) == Call{1, 1, 2});
  f.clock->advance(300ms);
  CHECK(go(1, 2) == Call{3, 1, 2});
}

TEST_CASE("test_decorator_expire_callable: expiration_time_fn is asked on every call",
          "[memoize][dogpile]") {
  Fixture f;
  auto expiration = std::make_shared<Duration>(500ms);
  auto go = memoize(f.region, "go", go_fn(std::make_shared<int>(0)),
                    {.expiration_time_fn = [expiration]() -> std::optional<Duration> {
                      return *expiration;
                    }});
  CHECK(go(1, 2) == Call{1, 1, 2});
  CHECK(go(3, 4) == Call{2, 3, 4});
  CHECK(go(1, 2) == Call{1, 1, 2});
  f.clock->advance(300ms);
  CHECK(go(1, 2) == Call{1, 1, 2});
  f.clock->advance(300ms);
  CHECK(go(1, 2) == Call{3, 1, 2});
  // A longer expiration from now on makes the same entry fresh for longer.
  *expiration = 10s;
  f.clock->advance(1s);
  CHECK(go(1, 2) == Call{3, 1, 2});
  CHECK(go.get(1, 2) == Call{3, 1, 2});
}

TEST_CASE("test_decorator_expire_callable_zero: a zero expiration recomputes every call",
          "[memoize][dogpile]") {
  Fixture f;
  auto go = memoize(f.region, "go", go_fn(std::make_shared<int>(0)),
                    {.expiration_time_fn = []() -> std::optional<Duration> { return 0s; }});
  CHECK(go(1, 2) == Call{1, 1, 2});
  CHECK(go(1, 2) == Call{2, 1, 2});
  CHECK(go(1, 2) == Call{3, 1, 2});
}

TEST_CASE("test_explicit_expire: invalidate forgets one argument list", "[memoize][dogpile]") {
  Fixture f;
  auto go = memoize(f.region, "go", go_fn(std::make_shared<int>(0)), {.expiration_time = 1s});
  CHECK(go(1, 2) == Call{1, 1, 2});
  CHECK(go(3, 4) == Call{2, 3, 4});
  CHECK(go(1, 2) == Call{1, 1, 2});
  go.invalidate(1, 2);
  CHECK(go(1, 2) == Call{3, 1, 2});
  CHECK(go(3, 4) == Call{2, 3, 4});
  CHECK_NOTHROW(go.invalidate(7, 7));  // nothing there
}

TEST_CASE("test_explicit_set: set stores a value for an argument list", "[memoize][dogpile]") {
  Fixture f;
  auto go = memoize(f.region, "go", go_fn(std::make_shared<int>(0)), {.expiration_time = 1s});
  CHECK(go(1, 2) == Call{1, 1, 2});
  go.set(Call{5, 0, 0}, 1, 2);
  CHECK(go(3, 4) == Call{2, 3, 4});
  CHECK(go(1, 2) == Call{5, 0, 0});
  go.invalidate(1, 2);
  CHECK(go(1, 2) == Call{3, 1, 2});
  go.set(Call{0, 0, 0}, 1, 3);
  CHECK(go(1, 3) == Call{0, 0, 0});
}

TEST_CASE("test_explicit_get: get reads without computing", "[memoize][dogpile]") {
  Fixture f;
  auto go = memoize(f.region, "go", go_fn(std::make_shared<int>(0)), {.expiration_time = 1s});
  CHECK(go(1, 2) == Call{1, 1, 2});
  CHECK(go.get(1, 2) == Call{1, 1, 2});
  CHECK_FALSE(go.get(2, 1).has_value());
  CHECK(go(2, 1) == Call{2, 2, 1});
  CHECK(go.get(2, 1) == Call{2, 2, 1});
  // get uses the wrapper's expiration (1 s), not the region's 0.25 s: it
  // agrees with what a call would return.
  f.clock->advance(500ms);
  CHECK(go.get(2, 1) == Call{2, 2, 1});
  f.clock->advance(600ms);
  CHECK_FALSE(go.get(2, 1).has_value());
}

TEST_CASE("test_explicit_refresh: refresh recomputes and stores", "[memoize][dogpile]") {
  Fixture f;
  auto go = memoize(f.region, "go", go_fn(std::make_shared<int>(0)), {.expiration_time = 1s});
  CHECK(go(1, 2) == Call{1, 1, 2});
  CHECK(go.refresh(1, 2) == Call{2, 1, 2});
  CHECK(go(1, 2) == Call{2, 1, 2});
  CHECK(go(1, 2) == Call{2, 1, 2});
  CHECK(go.refresh(1, 2) == Call{3, 1, 2});
  CHECK(go(1, 2) == Call{3, 1, 2});
}

TEST_CASE("test_decorator_key_generator: a user key generator decides the key",
          "[memoize][dogpile]") {
  Fixture f;
  // Keys on the first argument only, as the original's generate_key_with_first_argument.
  auto go = memoize(f.region, "go", go_fn(std::make_shared<int>(0)),
                    {.key_generator = [](std::string_view name, std::string_view, const int& a,
                                         const int&) {
                      return std::string(name) + "_" + std::to_string(a);
                    }});
  CHECK(go(1, 2) == Call{1, 1, 2});
  CHECK(go(3, 4) == Call{2, 3, 4});
  CHECK(go(1, 3) == Call{1, 1, 2});
  f.clock->advance(300ms);
  CHECK(go(1, 3) == Call{3, 1, 3});
  CHECK(go.key(1, 99) == "go_1");
  CHECK(f.region.get<Call>("go_1") == Call{3, 1, 3});
}

TEST_CASE("test_explicit_get_multi: get of many reads without computing", "[memoize][dogpile]") {
  Fixture f;
  auto go = memoize_multi(f.region, "go", multi_go_fn(std::make_shared<int>(0)),
                          {.expiration_time = 1s});
  CHECK(go({1, 2}) == std::vector<std::string>{"1 1", "1 2"});
  CHECK(go.get({1, 2}) == std::vector<std::optional<std::string>>{"1 1", "1 2"});
  CHECK(go.get({3, 1}) == std::vector<std::optional<std::string>>{std::nullopt, "1 1"});
  CHECK(go({3, 1}) == std::vector<std::string>{"2 3", "1 1"});
  CHECK(go.get({3, 1}) == std::vector<std::optional<std::string>>{"2 3", "1 1"});
}

TEST_CASE("test_explicit_set_multi: set of many stores each value", "[memoize][dogpile]") {
  Fixture f;
  auto go = memoize_multi(f.region, "go", multi_go_fn(std::make_shared<int>(0)),
                          {.expiration_time = 1s});
  CHECK(go({1, 2}) == std::vector<std::string>{"1 1", "1 2"});
  CHECK(go({1, 2}) == std::vector<std::string>{"1 1", "1 2"});
  go.set({{1, "1 5"}, {2, "1 6"}});
  CHECK(go({1, 2}) == std::vector<std::string>{"1 5", "1 6"});
}

TEST_CASE("test_explicit_refresh_multi: refresh of many recomputes all in one call",
          "[memoize][dogpile]") {
  Fixture f;
  auto go = memoize_multi(f.region, "go", multi_go_fn(std::make_shared<int>(0)),
                          {.expiration_time = 1s});
  CHECK(go({1, 2}) == std::vector<std::string>{"1 1", "1 2"});
  CHECK(go({1, 2}) == std::vector<std::string>{"1 1", "1 2"});
  CHECK(go.refresh({1, 2}) == std::vector<std::string>{"2 1", "2 2"});
  CHECK(go({1, 2}) == std::vector<std::string>{"2 1", "2 2"});
  CHECK(go({1, 2}) == std::vector<std::string>{"2 1", "2 2"});
}

TEST_CASE("test_decorator_key_generator_multi: a user key generator per element",
          "[memoize][dogpile]") {
  Fixture f;
  // The original reverses a key list; a per-element generator can instead
  // send two arguments to one key: here 1 and -1 share "go_1".
  auto go = memoize_multi(f.region, "go", multi_go_fn(std::make_shared<int>(0)),
                          {.key_generator = [](std::string_view name, std::string_view,
                                               const int& a) {
                            return std::string(name) + "_" + std::to_string(std::abs(a));
                          }});
  CHECK(go({1, 2}) == std::vector<std::string>{"1 1", "1 2"});
  CHECK(go.get({1, 2}) == std::vector<std::optional<std::string>>{"1 1", "1 2"});
  CHECK(go.get({3, -1}) == std::vector<std::optional<std::string>>{std::nullopt, "1 1"});
  CHECK(go({3, -1}) == std::vector<std::string>{"2 3", "1 1"});
  CHECK(go.get({3, -1}) == std::vector<std::optional<std::string>>{"2 3", "1 1"});
  CHECK(go.keys({-2, 3}) == std::vector<std::string>{"go_2", "go_3"});
}

// ---- KeyGenerationTest ----

TEST_CASE("test_keygen_fn: the default key is name, namespace and argument tokens",
          "[memoize][dogpile]") {
  Fixture f;
  auto one = memoize(f.region, "one",
                     [](std::optional<int> a, int b) { return std::to_string(a.value_or(0) + b); });
  CHECK(one.key(1, 2) == "one||o4:i1:1 i1:2");
  CHECK(one.key(std::nullopt, 5) == "one||n0: i1:5");
  CHECK(memoize_key("one", "", 1, 2) == "one||i1:1 i1:2");
}

TEST_CASE("test_multi_keygen_fn: a multi key per argument, as a one-argument key",
          "[memoize][dogpile]") {
  Fixture f;
  auto one = memoize_multi(f.region, "one", [](const std::vector<int>& args) {
    return std::vector<std::string>(args.size(), "x");
  });
  CHECK(one.keys(std::vector<int>{1, 2}) == std::vector<std::string>{"one||i1:1", "one||i1:2"});
  // A multi function and a one-argument function of one name share entries.
  auto single = memoize(f.region, "one", [](int) { return std::string("single"); });
  CHECK(single.key(7) == one.key(7));
  single.set("from single", 7);
  CHECK(one({7, 8}) == std::vector<std::string>{"from single", "x"});
  CHECK(single(8) == "x");
}

TEST_CASE("test_keygen_fn_namespace: the namespace sits between name and arguments",
          "[memoize][dogpile]") {
  CHECK(memoize_key("one", "mynamespace", 1, 2) == "one|mynamespace|i1:1 i1:2");
  CHECK(memoize_key("one", "mynamespace", std::nullopt, 5) == "one|mynamespace|n0: i1:5");
}

TEST_CASE("test_unicode_key: UTF-8 arguments are kept as bytes, lengths in bytes",
          "[memoize][dogpile]") {
  CHECK(memoize_key("one", "mynamespace", "m\xc3\xa9il", "dr\xc3\xb4le") ==
        "one|mynamespace|s5:m\xc3\xa9il s6:dr\xc3\xb4le");
  Fixture f;
  auto one = memoize_multi(f.region, "one", [](std::span<const std::string> args) {
    return std::vector<std::string>(args.begin(), args.end());
  }, {.key_namespace = "mynamespace"});
  CHECK(one.keys(std::vector<std::string>{"m\xc3\xa9il", "dr\xc3\xb4le"}) ==
        std::vector<std::string>{"one|mynamespace|s5:m\xc3\xa9il",
                                 "one|mynamespace|s6:dr\xc3\xb4le"});
}

TEST_CASE("test_sha1_key_mangler: the region's key_mangler sees the memoize key",
          "[memoize][dogpile]") {
  auto seen = std::make_shared<std::vector<std::string>>();
  Region region({.name = "mangled",
                 .key_mangler =
                     [seen](std::string_view key) {
                       seen->emplace_back(key);
                       return "m:" + std::to_string(key.size());
                     }},
                make_memory_backend());
  auto go = memoize(region, "go", go_fn(std::make_shared<int>(0)));
  CHECK(go(1, 2) == Call{1, 1, 2});
  CHECK(go(1, 2) == Call{1, 1, 2});
  REQUIRE_FALSE(seen->empty());
  for (const auto& k : *seen) CHECK(k == "go||i1:1 i1:2");
  CHECK(region.get<Call>("go||i1:1 i1:2") == Call{1, 1, 2});
}

// ---- CacheDecoratorTest ----

TEST_CASE("test_cache_arg: a two-argument function cached and invalidated",
          "[memoize][dogpile]") {
  Fixture f;
  auto counter = std::make_shared<int>(0);
  auto generate = memoize(f.region, "generate",
                          [counter](int x, int y) { return ++*counter + x + y; });
  CHECK(generate(1, 2) == 4);
  CHECK(generate(2, 1) == 5);
  CHECK(generate(1, 2) == 4);
  generate.invalidate(1, 2);
  CHECK(generate(1, 2) == 6);
}

TEST_CASE("test_original_fn_set: original() is the wrapped function", "[memoize][dogpile]") {
  Fixture f;
  auto decorated = memoize(f.region, "generate", &generate_fn);
  CHECK(decorated.original() == &generate_fn);
  const int cached = decorated(1, 2);
  // The original bypasses the cache.
  CHECK(decorated.original()(1, 2) != cached);
  CHECK(decorated(1, 2) == cached);

  auto counter = std::make_shared<int>(0);
  auto wrapped = memoize(f.region, "go", go_fn(counter));
  CHECK(wrapped.original()(5, 6) == Call{1, 5, 6});
  CHECK(wrapped.original()(5, 6) == Call{2, 5, 6});
  CHECK_FALSE(wrapped.get(5, 6).has_value());
}

TEST_CASE("test_reentrant_call: two namespaces keep a call within a call apart",
          "[memoize][dogpile]") {
  Fixture f;
  auto counter = std::make_shared<int>(0);
  auto foo = memoize(f.region, "generate",
                     [counter](int x, int y) { return ++*counter + x + y; },
                     {.key_namespace = "foo"});
  auto bar = memoize(f.region, "generate", [&foo](int x, int y) { return foo(x, y); },
                     {.key_namespace = "bar"});
  CHECK(bar(1, 2) == 4);
  CHECK(foo(1, 2) == 4);

  // In one namespace the inner call asks for its own key: the region refuses
  // instead of deadlocking.
  auto same = memoize(f.region, "generate", [&foo](int x, int y) { return foo(x, y); },
                      {.key_namespace = "foo"});
  foo.invalidate(3, 4);
  CHECK_THROWS_AS(same(3, 4), ReentrantCreation);
}

TEST_CASE("test_multi: only missing arguments are computed, results in order",
          "[memoize][dogpile]") {
  Fixture f;
  auto counter = std::make_shared<int>(0);
  auto calls = std::make_shared<std::vector<std::vector<int>>>();
  auto generate = memoize_multi(f.region, "generate",
                                [counter, calls](const std::vector<int>& args) {
                                  calls->push_back(args);
                                  std::vector<std::string> out;
                                  for (int a : args)
                                    out.push_back(std::to_string(a) + " " +
                                                  std::to_string(++*counter));
                                  return out;
                                });
  CHECK(generate({2, 8, 10}) == std::vector<std::string>{"2 1", "8 2", "10 3"});
  CHECK(generate({2, 9, 10}) == std::vector<std::string>{"2 1", "9 4", "10 3"});
  generate.invalidate({2});
  CHECK(generate({2, 7, 10}) == std::vector<std::string>{"2 5", "7 6", "10 3"});
  generate.set({{7, "18"}, {10, "15"}});
  CHECK(generate({2, 7, 10}) == std::vector<std::string>{"2 5", "18", "15"});
  CHECK(*calls == std::vector<std::vector<int>>{{2, 8, 10}, {9}, {2, 7}});

  // A repeated argument is computed once and answered twice.
  CHECK(generate({3, 3, 2}) == std::vector<std::string>{"3 7", "3 7", "2 5"});
  CHECK(calls->back() == std::vector<int>{3});
  // Nothing asked, nothing computed.
  CHECK(generate(std::span<const int>()).empty());
  CHECK(calls->size() == 4);
}

TEST_CASE("test_multi_namespace: the stored keys carry the namespace", "[memoize][dogpile]") {
  Fixture f;
  auto counter = std::make_shared<int>(0);
  auto generate = memoize_multi(
      f.region, "generate",
      [counter](std::span<const int> args) {
        std::vector<std::string> out;
        for (int a : args) out.push_back(std::to_string(a) + " " + std::to_string(++*counter));
        return out;
      },
      {.key_namespace = "foo"});
  CHECK(generate({2, 8, 10}) == std::vector<std::string>{"2 1", "8 2", "10 3"});
  CHECK(generate({2, 9, 10}) == std::vector<std::string>{"2 1", "9 4", "10 3"});
  CHECK(f.region.get<std::string>("generate|foo|i2:10") == "10 3");
  CHECK(f.region.get<std::string>("generate|foo|i1:2") == "2 1");
  CHECK(f.region.get<std::string>("generate|foo|i1:8") == "8 2");
  CHECK(f.region.get<std::string>("generate|foo|i1:9") == "9 4");
  CHECK_FALSE(f.region.get<std::string>("generate||i1:2").has_value());
  generate.invalidate({2});
  CHECK(generate({2, 7, 10}) == std::vector<std::string>{"2 5", "7 6", "10 3"});
  generate.set({{7, "18"}, {10, "15"}});
  CHECK(generate({2, 7, 10}) == std::vector<std::string>{"2 5", "18", "15"});
}

TEST_CASE("test_multi_asdict_keys_missing_existing_cache_fn: should_cache per element",
          "[memoize][dogpile]") {
  Fixture f;
  auto counter = std::make_shared<int>(0);
  auto calls = std::make_shared<std::vector<std::vector<int>>>();
  auto generate = memoize_multi(
      f.region, "generate",
      [counter, calls](const std::vector<int>& args) {
        calls->push_back(args);
        std::vector<std::string> out;
        for (int a : args) out.push_back(std::to_string(a) + " " + std::to_string(++*counter));
        return out;
      },
      {.should_cache = [](const std::string& v) { return !v.starts_with("8 "); }});
  CHECK(generate({2, 8, 10}) == std::vector<std::string>{"2 1", "8 2", "10 3"});
  CHECK(generate({2, 8, 10}) == std::vector<std::string>{"2 1", "8 4", "10 3"});
  CHECK(generate({2, 8, 10}) == std::vector<std::string>{"2 1", "8 5", "10 3"});
  CHECK(generate({2, 9, 10}) == std::vector<std::string>{"2 1", "9 6", "10 3"});
  CHECK(*calls == std::vector<std::vector<int>>{{2, 8, 10}, {8}, {8}, {9}});
  CHECK_FALSE(generate.get({8})[0].has_value());
  // refresh stores whatever should_cache says, as dogpile's does.
  CHECK(generate.refresh({8}) == std::vector<std::string>{"8 7"});
  CHECK(generate({8}) == std::vector<std::string>{"8 7"});
}

TEST_CASE("test_cache_preserve_sig: the wrapper takes the function's parameters",
          "[memoize][dogpile]") {
  Fixture f;
  auto go = memoize(f.region, "go", go_fn(std::make_shared<int>(0)));
  STATIC_REQUIRE(std::is_same_v<decltype(go)::result_type, Call>);
  STATIC_REQUIRE(std::is_invocable_r_v<Call, const decltype(go)&, int, int>);
  STATIC_REQUIRE_FALSE(std::is_invocable_v<const decltype(go)&, int>);
  STATIC_REQUIRE_FALSE(std::is_invocable_v<const decltype(go)&, int, int, int>);
  STATIC_REQUIRE_FALSE(std::is_invocable_v<const decltype(go)&, std::string, int>);
  auto multi = memoize_multi(f.region, "m", multi_go_fn(std::make_shared<int>(0)));
  STATIC_REQUIRE(std::is_same_v<decltype(multi)::argument_type, int>);
  STATIC_REQUIRE(std::is_invocable_r_v<std::vector<std::string>, const decltype(multi)&,
                                       const std::vector<int>&>);
}

// ---- beyond the port: options, signatures, errors ----

TEST_CASE("should_cache: a rejected result is returned but not stored", "[memoize]") {
  Fixture f;
  auto counter = std::make_shared<int>(0);
  auto go = memoize(f.region, "go", go_fn(counter),
                    {.should_cache = [](const Call& c) { return c.a != 0; }});
  CHECK(go(0, 1) == Call{1, 0, 1});
  CHECK(go(0, 1) == Call{2, 0, 1});
  CHECK_FALSE(go.get(0, 1).has_value());
  CHECK(go(1, 1) == Call{3, 1, 1});
  CHECK(go(1, 1) == Call{3, 1, 1});
}

TEST_CASE("ttl: results carry their own lifetime", "[memoize]") {
  Fixture f;
  auto go = memoize(f.region, "go", go_fn(std::make_shared<int>(0)), {.ttl = 10s});
  const WallTime start = f.clock->now();
  CHECK(go(1, 2) == Call{1, 1, 2});
  const auto stored = f.region.get_value<Call>(go.key(1, 2));
  REQUIRE(stored);
  CHECK(stored->metadata.expires_at == start + 10s);
  f.clock->advance(5s);  // past the region's 0.25 s, within the ttl
  CHECK(go(1, 2) == Call{1, 1, 2});
  f.clock->advance(6s);
  CHECK(go(1, 2) == Call{2, 1, 2});
  go.set(Call{9, 9, 9}, 3, 3);
  CHECK(f.region.get_value<Call>(go.key(3, 3))->metadata.expires_at == f.clock->now() + 10s);
}

TEST_CASE("signatures: function pointers, std::function, const-ref parameters, explicit",
          "[memoize]") {
  Fixture f;
  std::function<std::string(const std::string&, std::int64_t)> repeat =
      [](const std::string& s, std::int64_t n) {
        std::string out;
        for (std::int64_t i = 0; i < n; ++i) out += s;
        return out;
      };
  auto memo_repeat = memoize(f.region, "repeat", repeat);
  CHECK(memo_repeat("ab", 3) == "ababab");
  CHECK(memo_repeat.key("ab", 3) == "repeat||s2:ab i1:3");

  // A generic lambda needs its signature named; arguments convert to it, so
  // 3 and 3L are one key.
  auto calls = std::make_shared<int>(0);
  auto generic = memoize<std::string(std::int64_t, std::string_view)>(
      f.region, "generic", [calls](auto n, auto s) {
        ++*calls;
        return std::string(s) + std::to_string(n);
      });
  CHECK(generic(3, "x") == "x3");
  CHECK(generic(3L, std::string("x")) == "x3");
  CHECK(*calls == 1);

  auto multi = memoize_multi<std::vector<std::int32_t>(std::vector<std::int32_t>)>(
      f.region, "double", [](const auto& v) {
        std::vector<std::int32_t> out;
        for (auto x : v) out.push_back(2 * x);
        return out;
      });
  CHECK(multi({1, 2}) == std::vector<std::int32_t>{2, 4});

  auto nullary = memoize(f.region, "nullary", [calls] { return ++*calls; });
  CHECK(nullary() == 2);
  CHECK(nullary() == 2);
  CHECK(nullary.key() == "nullary||");
}

TEST_CASE("names: empty, or '|' in the name or namespace, are refused", "[memoize]") {
  Fixture f;
  const auto fn = [](int x) { return x; };
  CHECK_THROWS_AS(memoize(f.region, "", fn), Error);
  CHECK_THROWS_AS(memoize(f.region, "a|b", fn), Error);
  CHECK_THROWS_AS(memoize(f.region, "a", fn, {.key_namespace = "x|y"}), Error);
  CHECK_THROWS_AS(memoize_multi(f.region, "a|b", [](std::span<const int> v) {
                    return std::vector<std::int32_t>(v.begin(), v.end());
                  }),
                  Error);
  CHECK_NOTHROW(memoize(f.region, "module::fn", fn, {.key_namespace = "v2 beta"}));
}

TEST_CASE("multi: a function returning the wrong number of results is an error",
          "[memoize]") {
  Fixture f;
  auto short_by_one = memoize_multi(f.region, "short", [](std::span<const int> args) {
    return std::vector<std::int32_t>(args.size() - 1, 0);
  });
  CHECK_THROWS_AS(short_by_one({1, 2}), Error);
  CHECK_THROWS_AS(short_by_one.refresh({1, 2}), Error);
  CHECK(short_by_one.get({1, 2}) == std::vector<std::optional<std::int32_t>>{std::nullopt,
                                                                             std::nullopt});
}

TEST_CASE("creator exceptions reach the caller and nothing is stored", "[memoize]") {
  Fixture f;
  auto fail = std::make_shared<bool>(true);
  auto go = memoize(f.region, "go", [fail](int x) {
    if (*fail) throw std::runtime_error("backend down");
    return x;
  });
  CHECK_THROWS_WITH(go(1), "backend down");
  CHECK_FALSE(go.get(1).has_value());
  *fail = false;
  CHECK(go(1) == 1);
}

// ---- the default key encoding: each ambiguity case ----

TEST_CASE("key: f(\"a b\") and f(\"a\", \"b\") never share a key", "[memoize][key]") {
  CHECK(key_of("a b") == "f||s3:a b");
  CHECK(key_of("a", "b") == "f||s1:a s1:b");
  CHECK(key_of("a b") != key_of("a", "b"));
  CHECK(key_of(std::vector<std::string>{"a b"}) != key_of(std::vector<std::string>{"a", "b"}));

  // Two functions of one name and different arity on one region.
  Fixture f;
  auto one = memoize(f.region, "f", [](const std::string& s) { return "one:" + s; });
  auto two = memoize(f.region, "f",
                     [](const std::string& a, const std::string& b) { return "two:" + a + b; });
  CHECK(one("a b") == "one:a b");
  CHECK(two("a", "b") == "two:ab");
  // And one function whose argument is a list.
  auto join = memoize(f.region, "join", [](const std::vector<std::string>& v) {
    return std::to_string(v.size());
  });
  CHECK(join({"a b"}) == "1");
  CHECK(join({"a", "b"}) == "2");
}

TEST_CASE("key: f(1) and f(\"1\") never share a key", "[memoize][key]") {
  CHECK(key_of(1) == "f||i1:1");
  CHECK(key_of("1") == "f||s1:1");
  CHECK(key_of(1) != key_of("1"));
  CHECK(key_of(std::variant<int, std::string>(1)) !=
        key_of(std::variant<int, std::string>("1")));

  Fixture f;
  using IntOrString = std::variant<int, std::string>;
  auto describe = memoize(f.region, "describe", [](const IntOrString& v) {
    return std::holds_alternative<int>(v) ? std::string("int") : std::string("string");
  });
  CHECK(describe(1) == "int");
  CHECK(describe("1") == "string");
  // The same value under another alternative index is another argument.
  using TwoInts = std::variant<int, long>;
  CHECK(key_of(TwoInts(std::in_place_index<0>, 1)) != key_of(TwoInts(std::in_place_index<1>, 1)));
}

TEST_CASE("key: f(1, 2) and f(12) never share a key", "[memoize][key]") {
  CHECK(key_of(1, 2) == "f||i1:1 i1:2");
  CHECK(key_of(12) == "f||i2:12");
  CHECK(key_of(1, 2) != key_of(12));
  CHECK(key_of("1", "2") != key_of("12"));
  CHECK(key_of(std::vector<int>{1, 2}) != key_of(std::vector<int>{12}));

  Fixture f;
  auto sum2 = memoize(f.region, "sum", [](int a, int b) { return a + b; });
  auto sum1 = memoize(f.region, "sum", [](int a) { return a * 100; });
  CHECK(sum2(1, 2) == 3);
  CHECK(sum1(12) == 1200);
}

TEST_CASE("key: separators and markers inside strings stay inside", "[memoize][key]") {
  CHECK(key_of(std::string("x|y")) == "f||s3:x|y");
  CHECK(key_of(std::string("x|y")) != key_of("x", "y"));
  CHECK(key_of(std::string("x y")) != key_of("x", "y"));
  // A string spelling out a token sequence is still one string.
  CHECK(key_of(std::string("s1:x s1:y")) != key_of("x", "y"));
  CHECK(key_of(std::string("1:x s1:y")) == "f||s8:1:x s1:y");
  // A namespace slot is always there, so a string cannot pose as a namespace.
  CHECK(memoize_key("f", "", std::string("x|i1:1")) != memoize_key("f", "s6:x", 1));
  CHECK(memoize_key("f", "", std::string("x|i1:1")) == "f||s6:x|i1:1");
  CHECK(memoize_key("f", "s6:x", 1) == "f|s6:x|i1:1");

  Fixture f;
  auto echo = memoize(f.region, "echo", [](const std::string& s) { return s; });
  auto echo2 = memoize(f.region, "echo",
                       [](const std::string& a, const std::string& b) { return a + "+" + b; });
  CHECK(echo("x|y") == "x|y");
  CHECK(echo2("x", "y") == "x+y");
  CHECK(echo("x y") == "x y");
  CHECK(echo(std::string("a\0b", 3)) == std::string("a\0b", 3));
  CHECK(echo(std::string("a")) == "a");
}

TEST_CASE("key: bool and char are not ints", "[memoize][key]") {
  CHECK(key_of(true) == "f||b1:1");
  CHECK(key_of(false) == "f||b1:0");
  CHECK(key_of(true) != key_of(1));
  CHECK(key_of('1') == "f||c1:1");
  CHECK(key_of('1') != key_of(1));
  CHECK(key_of('1') != key_of("1"));
  CHECK(key_of(char32_t{0x263A}) == "f||w4:9786");
  CHECK(key_of(std::int8_t{49}) == "f||i2:49");
  // Integers key by value, whatever their width or signedness.
  CHECK(key_of(7) == key_of(7ULL));
  CHECK(key_of(-1) != key_of(static_cast<unsigned>(-1)));
}

TEST_CASE("key: floating point keys by exact value and round-trips", "[memoize][key]") {
  CHECK(key_of(0.1) == "f||f3:0.1");
  CHECK(key_of(2.5f) == key_of(2.5));   // the same value
  CHECK(key_of(0.1f) != key_of(0.1));   // different values
  CHECK(key_of(1.0) != key_of(1));
  CHECK(key_of(0.0) != key_of(-0.0));
  CHECK(key_of(0.5L) == key_of(0.5));
  if constexpr (std::numeric_limits<long double>::digits > std::numeric_limits<double>::digits) {
    CHECK(key_of(0.1L) != key_of(0.1));
  }
  for (double v : {0.1, 1.0 / 3.0, 1e300, 5e-324, -2.75, 123456789.125,
                   std::nextafter(1.0, 2.0)}) {
    const std::string k = key_of(v);
    const std::string_view payload = std::string_view(k).substr(k.find(':') + 1);
    double back = 0;
    const auto res = std::from_chars(payload.data(), payload.data() + payload.size(), back);
    CHECK(res.ec == std::errc());
    CHECK(back == v);
  }
  CHECK(key_of(std::nextafter(1.0, 2.0)) != key_of(1.0));
}

TEST_CASE("key: optionals, including nested ones", "[memoize][key]") {
  using Opt = std::optional<int>;
  CHECK(key_of(Opt()) == "f||n0:");
  CHECK(key_of(Opt(0)) == "f||o4:i1:0");
  CHECK(key_of(Opt()) != key_of(Opt(0)));
  CHECK(key_of(std::optional<std::string>("")) != key_of(std::optional<std::string>()));
  using Nested = std::optional<std::optional<int>>;
  CHECK(key_of(Nested()) != key_of(Nested(Opt())));
}

TEST_CASE("key: sequences, pairs, tuples and maps", "[memoize][key]") {
  using Strings = std::vector<std::string>;
  CHECK(key_of(Strings{"a", "b"}) == "f||l8:s1:as1:b");
  CHECK(key_of(Strings{"a", "b"}) != key_of(Strings{"ab"}));
  CHECK(key_of(Strings{}) != key_of(Strings{""}));
  using Nested = std::vector<std::vector<int>>;
  CHECK(key_of(Nested{{1}, {2}}) != key_of(Nested{{1, 2}}));
  CHECK(key_of(Nested{{1}, {2}}) != key_of(Nested{{1}, {}, {2}}));
  CHECK(key_of(std::vector<int>{1, 2}) == key_of(std::array<int, 2>{1, 2}));
  CHECK(key_of(std::pair<int, std::string>(1, "a")) == "f||t8:i1:1s1:a");
  CHECK(key_of(std::tuple<int, int>(1, 2)) != key_of(1, 2));
  CHECK(key_of(std::tuple<>()) == "f||t0:");
  const std::map<std::string, int> m{{"b", 2}, {"a", 1}};
  CHECK(key_of(m) == "f||l22:t8:s1:ai1:1t8:s1:bi1:2");
  CHECK(key_of(std::set<int>{3, 1, 2}) == key_of(std::vector<int>{1, 2, 3}));
  CHECK(key_of(std::vector<bool>{true, false}) == "f||l8:b1:1b1:0");
}

TEST_CASE("key: enums key by their underlying value, apart from integers", "[memoize][key]") {
  CHECK(key_of(Color::kRed) == "f||e1:1");
  CHECK(key_of(Color::kRed) != key_of(1));
  CHECK(key_of(Color::kRed) != key_of(Color::kGreen));
}

TEST_CASE("key: user types through dogpile_key_append or KeyEncoder", "[memoize][key]") {
  CHECK(key_of(geo::Point{1, 2}) == "f||x8:i1:1i1:2");
  CHECK(key_of(geo::Point{1, 23}) != key_of(geo::Point{12, 3}));
  CHECK(key_of(std::vector<geo::Point>{{1, 2}}) == "f||l11:x8:i1:1i1:2");
  CHECK(key_of(vendor::Id{"abc"}) == "f||x3:abc");
  CHECK(key_of(vendor::Id{"abc"}) != key_of("abc"));

  Fixture f;
  auto calls = std::make_shared<int>(0);
  auto norm = memoize(f.region, "norm", [calls](const geo::Point& p) {
    ++*calls;
    return p.x * p.x + p.y * p.y;
  });
  CHECK(norm({3, 4}) == 25);
  CHECK(norm({3, 4}) == 25);
  CHECK(norm({4, 3}) == 25);
  CHECK(*calls == 2);
}

TEST_CASE("key: strings of every spelling are one key; a null const char* is refused",
          "[memoize][key]") {
  const char* c_string = "abc";
  char buffer[8] = "abc";
  CHECK(key_of(c_string) == "f||s3:abc");
  CHECK(key_of(buffer) == key_of(c_string));
  CHECK(key_of(std::string_view("abc")) == key_of(std::string("abc")));
  CHECK(key_of(std::monostate()) == key_of(std::nullopt));
  CHECK_THROWS_AS(key_of(static_cast<const char*>(nullptr)), Error);
}

TEST_CASE("key: a std::filesystem::path keys as its string and terminates", "[memoize][key]") {
  // A path is a range whose elements are paths: keyed as a range it recursed
  // until the stack ran out.
  CHECK(key_of(std::filesystem::path("a/b")) == "f||s3:a/b");
  CHECK(key_of(std::filesystem::path("a/b")) != key_of(std::filesystem::path("a/c")));
  CHECK(key_of(std::filesystem::path()) == "f||s0:");
  CHECK(memoize_key("f", "", std::vector<std::filesystem::path>{"x", "y/z"}) ==
        "f||l10:s1:xs3:y/z");
  TempDir dir;
  Region region({.name = "paths"}, "memory");
  int calls = 0;
  auto size_of = memoize(region, "size_of", [&calls](const std::filesystem::path& p) {
    ++calls;
    return static_cast<std::int64_t>(p.native().size());
  });
  CHECK(size_of(std::filesystem::path(dir.path()) / "file") ==
        static_cast<std::int64_t>(dir.path().size() + 5));
  CHECK(size_of(std::filesystem::path(dir.path()) / "file") ==
        static_cast<std::int64_t>(dir.path().size() + 5));
  CHECK(calls == 1);
}

TEST_CASE("key: a fixed key for fixed arguments, in every run and build", "[memoize][key]") {
  // Keys are stored on disk and shared between processes: this is the format.
  CHECK(memoize_key("lookup", "v1", std::int64_t{-42}, std::string("a b|c"), 2.5, true, 'z',
                    std::optional<int>(), std::vector<std::uint8_t>{1, 2}, Color::kGreen,
                    std::pair<std::string, double>("k", 0.25)) ==
        "lookup|v1|i3:-42 s5:a b|c f3:2.5 b1:1 c1:z n0: l8:i1:1i1:2 e1:2 t11:s1:kf4:0.25");
}

// ---- backends, threads and processes ----

TEST_CASE("lmdb: memoized results persist across Region objects", "[memoize][lmdb]") {
  TempDir dir;
  auto calls = std::make_shared<int>(0);
  const auto square = [calls](std::int64_t x, const std::string& tag) {
    ++*calls;
    return tag + ":" + std::to_string(x * x);
  };
  const auto squares = [calls](std::span<const std::int64_t> xs) {
    ++*calls;
    std::vector<std::int64_t> out;
    for (auto x : xs) out.push_back(x * x);
    return out;
  };
  {
    Region region({.name = "memo"}, "lmdb", {{"path", dir.path()}});
    auto memo = memoize(region, "square", square, {.key_namespace = "v1"});
    auto multi = memoize_multi(region, "squares", squares);
    CHECK(memo(12, "sq") == "sq:144");
    CHECK(memo(12, "sq") == "sq:144");
    CHECK(multi({2, 3}) == std::vector<std::int64_t>{4, 9});
    CHECK(*calls == 2);
  }
  Region region({.name = "memo"}, "lmdb", {{"path", dir.path()}});
  auto memo = memoize(region, "square", square, {.key_namespace = "v1"});
  auto multi = memoize_multi(region, "squares", squares);
  CHECK(memo(12, "sq") == "sq:144");
  CHECK(multi({3, 2, 4}) == std::vector<std::int64_t>{9, 4, 16});
  CHECK(*calls == 3);  // only 4 was new
  CHECK(region.get<std::string>("square|v1|i2:12 s2:sq") == "sq:144");
  memo.invalidate(12, "sq");
  multi.invalidate({2, 3});
  CHECK_FALSE(memo.get(12, "sq").has_value());
  CHECK(multi.get({2, 3, 4}) ==
        std::vector<std::optional<std::int64_t>>{std::nullopt, std::nullopt, 16});
  CHECK(memo(12, "sq") == "sq:144");
  CHECK(*calls == 4);
}

TEST_CASE("threads: concurrent calls with the same arguments compute once", "[memoize]") {
  Fixture f;
  std::atomic<int> calls{0};
  std::latch started(1);
  auto go = memoize(f.region, "slow", [&](int x) {
    calls.fetch_add(1);
    started.wait();
    return x * 2;
  });
  std::vector<std::thread> threads;
  std::vector<int> results(8, 0);
  for (int i = 0; i < 8; ++i) threads.emplace_back([&, i] { results[i] = go(21); });
  started.count_down();
  for (auto& t : threads) t.join();
  CHECK(calls.load() == 1);
  for (int r : results) CHECK(r == 42);
}

namespace {

// Forks `n` children that block on a pipe until release(), run body(i) and
// exit with its result (99 on an exception).
class Children {
 public:
  Children(int n, const std::function<int(int)>& body) {
    if (::pipe2(gate_, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    for (int i = 0; i < n; ++i) {
      const pid_t pid = ::fork();
      if (pid < 0) throw std::runtime_error("fork failed");
      if (pid == 0) {
        int rc = 99;
        try {
          ::close(gate_[1]);
          char c;
          while (::read(gate_[0], &c, 1) < 0 && errno == EINTR) {
          }
          rc = body(i);
        } catch (const std::exception& e) {
          std::fprintf(stderr, "child %d: %s\n", i, e.what());
        }
        _exit(rc);
      }
      pids_.push_back(pid);
    }
    ::close(gate_[0]);
  }
  ~Children() {
    if (gate_[1] >= 0) ::close(gate_[1]);
  }
  void release() {
    ::close(gate_[1]);
    gate_[1] = -1;
  }
  // The number of children that did not exit with status 0.
  int reap() {
    int failed = 0;
    for (pid_t pid : pids_) {
      int status = 0;
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    return failed;
  }

 private:
  int gate_[2] = {-1, -1};
  std::vector<pid_t> pids_;
};

}  // namespace

TEST_CASE("processes: 4 processes calling one memoized function compute it once",
          "[memoize][multiprocess]") {
  TempDir dir;
  const std::string log = dir / "log";
  Children children(4, [&](int) {
    Region region({.name = "memo"}, "lmdb", {{"path", dir.path()}});
    auto slow = memoize(region, "slow", [&](std::int64_t x, const std::string& s) {
      log_line(log, "create " + std::to_string(::getpid()));
      // Long enough for the others to find the lock taken, most runs; the
      // assertions hold however the processes interleave.
      std::this_thread::sleep_for(200ms);
      return s + std::to_string(x) + "@" + std::to_string(::getpid());
    });
    log_line(log, "value " + slow(7, "seven"));
    return 0;
  });
  children.release();
  REQUIRE(children.reap() == 0);
  const auto lines = read_lines(log);
  int creates = 0;
  std::set<std::string> values;
  for (const auto& l : lines) {
    if (l.starts_with("create ")) ++creates;
    if (l.starts_with("value ")) values.insert(l);
  }
  CHECK(creates == 1);
  CHECK(values.size() == 1);
  CHECK(std::count_if(lines.begin(), lines.end(),
                      [](const std::string& l) { return l.starts_with("value "); }) == 4);
}

TEST_CASE("processes: overlapping multi calls compute each argument once",
          "[memoize][multiprocess]") {
  TempDir dir;
  const std::string log = dir / "log";
  Children children(4, [&](int i) {
    Region region({.name = "memo"}, "lmdb", {{"path", dir.path()}});
    auto cubes = memoize_multi(region, "cubes", [&](const std::vector<std::int64_t>& xs) {
      for (auto x : xs) log_line(log, "create " + std::to_string(x));
      std::this_thread::sleep_for(100ms);
      std::vector<std::int64_t> out;
      for (auto x : xs) out.push_back(x * x * x);
      return out;
    });
    // Child i asks for i..i+3: neighbours overlap in three arguments.
    std::vector<std::int64_t> xs;
    for (std::int64_t x = i; x < i + 4; ++x) xs.push_back(x);
    const auto got = cubes(xs);
    for (std::size_t j = 0; j < xs.size(); ++j) {
      if (got[j] != xs[j] * xs[j] * xs[j]) return 1;
    }
    return 0;
  });
  children.release();
  REQUIRE(children.reap() == 0);
  std::map<std::string, int> creations;
  for (const auto& l : read_lines(log)) ++creations[l];
  CHECK(creations.size() == 7);  // 0..6
  for (const auto& [line, n] : creations) {
    INFO(line);
    CHECK(n == 1);
  }
}
