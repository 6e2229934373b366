// One behavioural suite for every backend that stores ("memory", "lmdb"), the
// "null" backend's own contract, and the backend registry.
#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "dogpile/backend.h"
#include "dogpile/error.h"
#include "dogpile/lmdb_backend.h"
#include "dogpile/memory_backend.h"

#include "backend_util.h"
#include "test_util.h"

namespace {

using dogpile::Backend;
using dogpile::ConfigError;
using dogpile::ConfigMap;
using dogpile::KeyValue;
using dogpile::Status;
using dogpile::StatusCode;

using dogpile::test::str_cat;
using dogpile::test::TempDir;
using dogpile::test::erase;
using dogpile::test::get;
using dogpile::test::set;

struct MemoryFixture {
  static constexpr bool kHasMutex = true;  // in-process, shared by every region on it
  std::unique_ptr<Backend> backend = dogpile::make_memory_backend();
};

struct LmdbFixture {
  static constexpr bool kHasMutex = true;
  TempDir dir;  // declared first: outlives the backend
  // nosync: these checks do not depend on fsync, which makes a loaded
  // machine's 1,000 commits take seconds; lmdb_backend_test covers durable.
  std::unique_ptr<Backend> backend =
      dogpile::open_lmdb_backend({.path = dir.path(), .durability = dogpile::Durability::kNoSync});
};

std::string pattern(std::size_t size, unsigned seed) {
  std::string out(size, '\0');
  std::uint32_t x = seed * 2654435761u + 1;
  for (char& c : out) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return out;
}

// The what() of the ConfigError `f` throws; a marker for anything else.
template <typename F>
std::string config_error_of(F&& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<not a ConfigError: ") + e.what() + ">";
  }
  return "<no exception>";
}

}  // namespace

TEMPLATE_TEST_CASE("storing backends keep their contract", "[backend][conformance]", MemoryFixture,
                   LmdbFixture) {
  TestType fixture;
  Backend& b = *fixture.backend;

  SECTION("a missing key reads as nullopt, not an error") {
    CHECK(get(b, "absent") == std::nullopt);
  }

  SECTION("set, get and overwrite") {
    set(b, "a", "one");
    CHECK(get(b, "a") == "one");
    set(b, "a", "a longer second value");
    CHECK(get(b, "a") == "a longer second value");
    set(b, "a", "3");
    CHECK(get(b, "a") == "3");
    CHECK(get(b, "b") == std::nullopt);
  }

  SECTION("erase is idempotent") {
    set(b, "a", "one");
    set(b, "b", "two");
    erase(b, "a");
    CHECK(get(b, "a") == std::nullopt);
    CHECK(get(b, "b") == "two");
    erase(b, "a");
    erase(b, "never set");
    CHECK(get(b, "b") == "two");
  }

  SECTION("multi forms, present and missing keys mixed") {
    const std::vector<KeyValue> items = {{"a", "1"}, {"b", "2"}, {"c", "3"}};
    REQUIRE(b.set_multi(items).is_ok());
    const std::vector<std::string> keys = {"a", "missing", "c", "b", "a"};
    std::vector<std::optional<std::string>> values(7, std::string("junk"));
    REQUIRE(b.get_multi(keys, values).is_ok());
    REQUIRE(values.size() == keys.size());
    CHECK(values[0] == "1");
    CHECK(values[1] == std::nullopt);
    CHECK(values[2] == "3");
    CHECK(values[3] == "2");
    CHECK(values[4] == "1");

    const std::vector<std::string> doomed = {"a", "missing", "c"};
    REQUIRE(b.erase_multi(doomed).is_ok());
    REQUIRE(b.erase_multi(doomed).is_ok());
    REQUIRE(b.get_multi(keys, values).is_ok());
    CHECK(values == std::vector<std::optional<std::string>>{std::nullopt, std::nullopt,
                                                            std::nullopt, "2", std::nullopt});

    // Overwrites within and across batches; empty batches are no-ops.
    const std::vector<KeyValue> again = {{"b", "x"}, {"d", "4"}, {"b", "y"}};
    REQUIRE(b.set_multi(again).is_ok());
    CHECK(get(b, "b") == "y");
    CHECK(get(b, "d") == "4");
    REQUIRE(b.set_multi({}).is_ok());
    REQUIRE(b.erase_multi({}).is_ok());
    REQUIRE(b.get_multi({}, values).is_ok());
    CHECK(values.empty());
  }

  SECTION("awkward keys stay distinct") {
    const std::string long_prefix(1 << 20, 'p');
    std::vector<std::string> keys = {
        "",
        std::string("\0", 1),
        std::string("\0\0", 2),
        std::string("a\0b", 3),
        std::string("a\0c", 3),
        "\xff\xfe",
        "\xfe\xff",
        "k",   // the inline form of "" (an implementation detail worth probing)
        "kk",  // the inline form of "k"
        "h" + std::string(16, '\0'),
        std::string(510, 'x'),
        std::string(511, 'x'),
        std::string(511, 'x').replace(510, 1, "y"),
        std::string(512, 'x'),
        std::string(512, 'x').replace(511, 1, "y"),
        "k" + std::string(510, 'x'),  // the inline form of a 510-byte key
        std::string(4096, 'x'),
        std::string(4096, 'x').replace(4095, 1, "y"),
        std::string(4096, 'x').replace(0, 1, "y"),
        long_prefix,
        long_prefix + "a",
        long_prefix + "b",
        long_prefix.substr(1) + "a",
    };
    for (std::size_t i = 0; i < keys.size(); ++i) set(b, keys[i], "value " + std::to_string(i));
    for (std::size_t i = 0; i < keys.size(); ++i) {
      INFO("key #" << i << " of " << keys[i].size() << " bytes");
      CHECK(get(b, keys[i]) == "value " + std::to_string(i));
    }
    std::vector<std::optional<std::string>> values;
    REQUIRE(b.get_multi(keys, values).is_ok());
    for (std::size_t i = 0; i < keys.size(); ++i) {
      INFO("key #" << i);
      CHECK(values[i] == "value " + std::to_string(i));
    }
    // Erasing one long key leaves its siblings alone.
    erase(b, long_prefix + "a");
    CHECK(get(b, long_prefix + "a") == std::nullopt);
    CHECK(get(b, long_prefix + "b") == "value 21");
    CHECK(get(b, long_prefix) == "value 19");
    erase(b, "");
    CHECK(get(b, "") == std::nullopt);
    CHECK(get(b, "k") == "value 7");
  }

  SECTION("awkward values round trip") {
    std::string all_bytes;
    for (int c = 0; c < 256; ++c) all_bytes.push_back(static_cast<char>(c));
    const std::string big = pattern(1 << 20, 7);
    set(b, "empty", "");
    set(b, "binary", all_bytes);
    set(b, "big", big);
    const std::optional<std::string> empty = get(b, "empty");
    REQUIRE(empty.has_value());  // an empty value is a hit, not a miss
    CHECK(empty->empty());
    CHECK(get(b, "binary") == all_bytes);
    CHECK(get(b, "big") == big);
    set(b, "big", "small now");
    CHECK(get(b, "big") == "small now");
  }

  SECTION("1,000 keys round trip") {
    std::vector<std::string> keys;
    for (int i = 0; i < 1000; ++i) {
      keys.push_back("key-" + std::to_string(i));
      set(b, keys.back(), pattern(static_cast<std::size_t>(i % 300), static_cast<unsigned>(i)));
    }
    std::vector<std::optional<std::string>> values;
    REQUIRE(b.get_multi(keys, values).is_ok());
    int wrong = 0;
    for (int i = 0; i < 1000; ++i) {
      const std::string expected =
          pattern(static_cast<std::size_t>(i % 300), static_cast<unsigned>(i));
      if (values[static_cast<std::size_t>(i)] != expected) ++wrong;
      if (get(b, keys[static_cast<std::size_t>(i)]) != expected) ++wrong;
    }
    CHECK(wrong == 0);
  }

  SECTION("8 threads at once, on disjoint keys and then on the same keys") {
    constexpr int kThreads = 8;
    constexpr int kOps = 100;
    std::atomic<int> errors{0};
    std::atomic<int> wrong{0};
    {
      std::vector<std::jthread> threads;
      for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
          for (int i = 0; i < kOps; ++i) {
            const std::string key = str_cat("t", t, "-", i);
            const std::string value =
                pattern(static_cast<std::size_t>(i * 7), static_cast<unsigned>(t * 1000 + i));
            std::optional<std::string> got;
            if (!b.set(key, value).is_ok()) ++errors;
            if (!b.get(key, got).is_ok()) ++errors;
            if (got != value) ++wrong;
            if (i % 10 == 0 && !b.erase(key).is_ok()) ++errors;
          }
        });
      }
    }
    CHECK(errors == 0);
    CHECK(wrong == 0);
    {
      // Same keys: every read sees some complete value written for that key.
      std::vector<std::jthread> threads;
      for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
          for (int i = 0; i < kOps; ++i) {
            const std::string key = "shared-" + std::to_string(i % 5);
            if (!b.set(key, key + "/" + std::to_string(t) + "/" + std::to_string(i)).is_ok()) {
              ++errors;
            }
            std::optional<std::string> got;
            if (!b.get(key, got).is_ok()) ++errors;
            if (!got || got->rfind(key + "/", 0) != 0) ++wrong;
            const std::vector<std::string> keys = {key, "shared-none"};
            std::vector<std::optional<std::string>> values;
            if (!b.get_multi(keys, values).is_ok()) ++errors;
            if (values.size() != 2 || !values[0] || values[1]) ++wrong;
          }
        });
      }
    }
    CHECK(errors == 0);
    CHECK(wrong == 0);
  }

  SECTION("get_mutex") {
    std::unique_ptr<dogpile::CreationMutex> mine = b.get_mutex("key");
    if constexpr (!TestType::kHasMutex) {
      CHECK(mine == nullptr);  // the region falls back to its in-process lock
    } else {
      REQUIRE(mine != nullptr);
      REQUIRE(mine->try_lock().is_ok());
      CHECK(mine->is_locked_anywhere());
      Status same;
      Status other;
      std::thread([&] {
        std::unique_ptr<dogpile::CreationMutex> theirs = b.get_mutex("key");
        same = theirs ? theirs->try_lock() : Status::error(StatusCode::kNotSupported, "null");
        std::unique_ptr<dogpile::CreationMutex> elsewhere = b.get_mutex("another key");
        other =
            elsewhere ? elsewhere->try_lock() : Status::error(StatusCode::kNotSupported, "null");
      }).join();
      CHECK(same.code() == StatusCode::kBusy);
      CHECK(other.is_ok());
      mine->unlock();
      std::thread([&] {
        std::unique_ptr<dogpile::CreationMutex> theirs = b.get_mutex("key");
        same = theirs->try_lock();
      }).join();
      CHECK(same.is_ok());
    }
  }

  CHECK_FALSE(b.name().empty());
}

TEST_CASE("the null backend stores nothing", "[backend][null]") {
  std::unique_ptr<Backend> b = dogpile::make_null_backend();
  CHECK(b->name() == "null");
  set(*b, "a", "one");
  CHECK(get(*b, "a") == std::nullopt);
  erase(*b, "a");
  erase(*b, "a");
  const std::vector<KeyValue> items = {{"a", "1"}, {"b", "2"}};
  REQUIRE(b->set_multi(items).is_ok());
  const std::vector<std::string> keys = {"a", "b", "c"};
  std::vector<std::optional<std::string>> values(1, std::string("junk"));
  REQUIRE(b->get_multi(keys, values).is_ok());
  CHECK(values == std::vector<std::optional<std::string>>(3));
  REQUIRE(b->erase_multi(keys).is_ok());
  CHECK(b->get_mutex("a") == nullptr);
}

namespace {

// A backend relying on the Backend defaults for the multi forms, failing on
// a chosen key, to check that they loop and stop at the first error.
class CountingBackend final : public Backend {
 public:
  Status get(std::string_view key, std::optional<std::string>& value) override {
    ++calls;
    if (key == "bad") return Status::error(StatusCode::kIOError, "bad key");
    value = std::string(key);
    return Status::ok();
  }
  Status set(std::string_view key, std::string_view) override {
    ++calls;
    return key == "bad" ? Status::error(StatusCode::kIOError, "bad key") : Status::ok();
  }
  Status erase(std::string_view key) override { return set(key, {}); }
  std::string_view name() const noexcept override { return "counting"; }

  int calls = 0;
};

}  // namespace

TEST_CASE("Backend's default multi forms loop and stop at the first error", "[backend]") {
  CountingBackend b;
  const std::vector<std::string> good = {"x", "y"};
  std::vector<std::optional<std::string>> values;
  REQUIRE(b.get_multi(good, values).is_ok());
  CHECK(values == std::vector<std::optional<std::string>>{"x", "y"});

  const std::vector<std::string> keys = {"a", "bad", "c"};
  b.calls = 0;
  CHECK(b.get_multi(keys, values).code() == StatusCode::kIOError);
  CHECK(b.calls == 2);
  b.calls = 0;
  const std::vector<KeyValue> items = {{"a", "1"}, {"bad", "2"}, {"c", "3"}};
  CHECK(b.set_multi(items).code() == StatusCode::kIOError);
  CHECK(b.calls == 2);
  b.calls = 0;
  CHECK(b.erase_multi(keys).code() == StatusCode::kIOError);
  CHECK(b.calls == 2);
  CHECK(b.get_mutex("a") == nullptr);
}

TEST_CASE("the backend registry", "[backend][registry]") {
  TempDir dir;

  SECTION("built-in names, sorted") {
    const std::vector<std::string> names = dogpile::backend_names();
    CHECK(std::is_sorted(names.begin(), names.end()));
    for (const char* name : {"lmdb", "memory", "null"}) {
      CHECK(std::find(names.begin(), names.end(), name) != names.end());
    }
  }

  SECTION("memory and null take no arguments") {
    CHECK(dogpile::make_backend("memory", {})->name() == "memory");
    CHECK(dogpile::make_backend("null", {})->name() == "null");
    CHECK_THROWS_WITH(dogpile::make_backend("memory", {{"size", "10"}}), Catch::Contains("'size'"));
    CHECK_THROWS_AS(dogpile::make_backend("null", {{"x", "1"}}), ConfigError);
  }

  SECTION("lmdb by name") {
    std::unique_ptr<Backend> b = dogpile::make_backend("lmdb", {{"path", dir.path()}});
    CHECK(b->name() == "lmdb");
    set(*b, "k", "v");
    CHECK(get(*b, "k") == "v");
    struct stat st {};
    CHECK(::stat((dir.path() + "/data.mdb").c_str(), &st) == 0);
  }

  SECTION("an unknown backend is named, with the known ones") {
    try {
      dogpile::make_backend("nosuch", {});
      FAIL("no exception");
    } catch (const ConfigError& e) {
      CHECK_THAT(e.what(), Catch::Contains("'nosuch'") && Catch::Contains("lmdb") &&
                               Catch::Contains("memory"));
    }
  }

  SECTION("bad lmdb arguments are named") {
    const std::string path = dir.path();
    CHECK_THAT(config_error_of([&] {
                 dogpile::make_backend("lmdb", {{"path", path}, {"pathh", "x"}});
               }),
               Catch::Contains("'pathh'"));
    CHECK_THAT(config_error_of([&] {
                 dogpile::make_backend("lmdb", {{"path", path}, {"max_size", "12 parsecs"}});
               }),
               Catch::Contains("'max_size'"));
    CHECK_THAT(config_error_of([&] {
                 dogpile::make_backend("lmdb", {{"path", path}, {"durability", "fast"}});
               }),
               Catch::Contains("'durability'") && Catch::Contains("durable, nometasync or nosync"));
    CHECK_THAT(config_error_of([&] {
                 dogpile::make_backend("lmdb", {{"path", path}, {"max_regions", "many"}});
               }),
               Catch::Contains("'max_regions'"));
    CHECK_THAT(config_error_of([&] {
                 dogpile::make_backend("lmdb", {{"path", path}, {"max_readers", "-1"}});
               }),
               Catch::Contains("'max_readers'"));
    CHECK_THAT(config_error_of([&] {
                 dogpile::make_backend("lmdb", {{"path", path}, {"max_regions", "0"}});
               }),
               Catch::Contains("'max_regions'"));
    CHECK_THAT(config_error_of([&] {
                 dogpile::make_backend("lmdb", {{"path", path}, {"max_readers", "99999999999"}});
               }),
               Catch::Contains("'max_readers'"));
    // Nothing was opened by the failed attempts.
    struct stat st {};
    CHECK(::stat((path + "/data.mdb").c_str(), &st) != 0);
  }

  SECTION("lmdb arguments with units and names") {
    std::unique_ptr<Backend> b = dogpile::make_backend("lmdb", {{"path", dir.path()},
                                                                {"max_size", "64MiB"},
                                                                {"max_regions", "4"},
                                                                {"max_readers", "64"},
                                                                {"durability", "nosync"}});
    set(*b, "k", "v");
    CHECK(get(*b, "k") == "v");
  }

  SECTION("the region parameter picks the keyspace") {
    std::unique_ptr<Backend> a = dogpile::make_backend("lmdb", {{"path", dir.path()}}, "a");
    std::unique_ptr<Backend> b = dogpile::make_backend("lmdb", {{"path", dir.path()}}, "b");
    std::unique_ptr<Backend> a2 =
        dogpile::make_backend("lmdb", {{"path", dir.path()}, {"region", "a"}}, "ignored");
    set(*a, "k", "in a");
    CHECK(get(*b, "k") == std::nullopt);
    CHECK(get(*a2, "k") == "in a");
  }

  SECTION("from config with a prefix") {
    const ConfigMap config = {{"cache.backend", "lmdb"},
                              {"cache.arguments.path", dir.path()},
                              {"cache.arguments.durability", "nometasync"},
                              {"cache.expiration_time", "10s"},  // the region's, not ours
                              {"other.backend", "nosuch"}};
    std::unique_ptr<Backend> b = dogpile::make_backend_from_config(config, "cache.");
    CHECK(b->name() == "lmdb");
    set(*b, "k", "v");
    CHECK(get(*b, "k") == "v");
    CHECK(dogpile::make_backend_from_config({{"backend", "memory"}}, "")->name() == "memory");
  }

  SECTION("from config: a missing backend key and bad arguments are named") {
    CHECK_THAT(config_error_of([&] {
                 dogpile::make_backend_from_config({{"cache.arguments.path", "/x"}}, "cache.");
               }),
               Catch::Contains("'cache.backend'"));
    CHECK_THAT(config_error_of([&] {
                 dogpile::make_backend_from_config({{"cache.backend", "lmdb"},
                                                    {"cache.arguments.path", dir.path()},
                                                    {"cache.arguments.bogus", "1"}},
                                                   "cache.");
               }),
               Catch::Contains("'bogus'") && Catch::Contains("cache.arguments."));
    CHECK_THAT(config_error_of([&] {
                 dogpile::make_backend_from_config(
                     {{"cache.backend", "memory"}, {"cache.arguments.size", "1"}}, "cache.");
               }),
               Catch::Contains("'size'"));
  }

  SECTION("register_backend adds and replaces names") {
    std::string seen_region;
    dogpile::register_backend(
        "conformance-test",
        [&seen_region](std::string_view region, const ConfigMap&, std::unique_ptr<Backend>& out) {
          seen_region = std::string(region);
          out = dogpile::make_memory_backend();
          return Status::ok();
        });
    const std::vector<std::string> names = dogpile::backend_names();
    CHECK(std::find(names.begin(), names.end(), "conformance-test") != names.end());
    CHECK(dogpile::make_backend("conformance-test", {}, "r1")->name() == "memory");
    CHECK(seen_region == "r1");

    dogpile::register_backend(
        "conformance-test", [](std::string_view, const ConfigMap&, std::unique_ptr<Backend>&) {
          return Status::error(StatusCode::kInvalidArgument, "replaced factory says no");
        });
    CHECK_THAT(config_error_of([&] { dogpile::make_backend("conformance-test", {}); }),
               Catch::Contains("replaced factory says no"));
  }
}
