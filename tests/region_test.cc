// Region semantics on in-process backends: fresh / stale / missing, the
// dogpile lock between threads, expiry, mismatches, corruption and errors.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <future>
#include <latch>
#include <mutex>
#include <thread>
#include <vector>

#include "dogpile/dogpile.h"
#include "test_util.h"

using namespace dogpile;
using namespace std::chrono_literals;
using dogpile::test::FakeClock;

namespace {

struct Point {
  int x = 0;
  int y = 0;
  bool operator==(const Point&) const = default;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(x, y);
  }
};

struct PointV2 {
  int x = 0;
  int y = 0;
  int z = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(x, y, z);
  }
};

}  // namespace

DOGPILE_REGISTER_TYPE(Point, "test.Point", 1);
// Same name, newer schema: reading old entries must be a mismatch.
DOGPILE_REGISTER_TYPE(PointV2, "test.Point", 2);

namespace {

// Wraps a backend, counting calls and failing on demand.
class FaultyBackend final : public Backend {
 public:
  explicit FaultyBackend(std::shared_ptr<Backend> inner) : inner_(std::move(inner)) {}
  Status get(std::string_view key, std::optional<std::string>& value) override {
    ++gets;
    if (fail_reads) return Status::io_error("injected read failure", "fake", EIO);
    return inner_->get(key, value);
  }
  Status set(std::string_view key, std::string_view value) override {
    ++sets;
    if (fail_writes) return Status::error(StatusCode::kFull, "injected full store");
    return inner_->set(key, value);
  }
  Status erase(std::string_view key) override { return inner_->erase(key); }
  std::string_view name() const noexcept override { return "faulty"; }

  std::atomic<int> gets{0}, sets{0};
  std::atomic<bool> fail_reads{false}, fail_writes{false};

 private:
  std::shared_ptr<Backend> inner_;
};

// A thread whose get_or_create of `key` keeps its creator, and so the key's
// creation lock, busy until release().
class BusyCreator {
 public:
  BusyCreator(Region& region, std::string key, std::string value)
      : thread_([&region, key = std::move(key), value = std::move(value), this] {
          region.get_or_create<std::string>(key, [&] {
            entered_.set_value();
            finish_.get_future().wait();
            return value;
          });
        }) {
    entered_.get_future().wait();
  }
  BusyCreator(const BusyCreator&) = delete;
  BusyCreator& operator=(const BusyCreator&) = delete;
  ~BusyCreator() { release(); }

  void release() {
    if (!thread_.joinable()) return;
    finish_.set_value();
    thread_.join();
  }

 private:
  std::promise<void> entered_;
  std::promise<void> finish_;
  std::thread thread_;
};

struct Fixture {
  std::shared_ptr<FakeClock> clock = std::make_shared<FakeClock>();
  std::shared_ptr<Backend> backend = make_memory_backend();
  std::vector<std::string> logs;
  std::mutex logs_mu;

  RegionOptions options(std::optional<Duration> expiration = std::nullopt) {
    return RegionOptions{.name = "test",
                         .expiration_time = expiration,
                         .clock = clock,
                         .logger = [this](LogLevel, std::string_view m) {
                           std::lock_guard lock(logs_mu);
                           logs.emplace_back(m);
                         }};
  }
};

}  // namespace

TEST_CASE("a miss is nullopt, never an exception", "[region]") {
  Fixture f;
  Region region(f.options(), f.backend);
  CHECK_FALSE(region.get<std::string>("absent").has_value());
  CHECK_FALSE(region.get_value_metadata("absent").has_value());
  CHECK(region.stats().misses == 1);
  CHECK_NOTHROW(region.erase("absent"));
}

TEST_CASE("set then get returns the value with its metadata", "[region]") {
  Fixture f;
  Region region(f.options(), f.backend);
  region.set("p", Point{1, 2});
  CHECK(region.get<Point>("p") == Point{1, 2});
  const auto cached = region.get_value<Point>("p");
  REQUIRE(cached);
  CHECK(cached->payload == Point{1, 2});
  CHECK(cached->metadata.created_at == f.clock->now());
  CHECK(cached->metadata.type_tag == type_tag<Point>());
  CHECK(cached->metadata.schema_version == 1);
  CHECK(cached->metadata.codec == CodecId::kBinary);
  region.erase("p");
  CHECK_FALSE(region.get<Point>("p"));
}

TEST_CASE("another type or schema at a key is a mismatch: a miss, then overwritten",
          "[region]") {
  Fixture f;
  Region region(f.options(), f.backend);
  region.set("k", Point{3, 4});
  CHECK_FALSE(region.get<std::string>("k").has_value());
  CHECK_FALSE(region.get<PointV2>("k").has_value());
  CHECK(region.stats().mismatches == 2);
  int calls = 0;
  const PointV2 v = region.get_or_create<PointV2>("k", [&] {
    ++calls;
    return PointV2{5, 6, 7};
  });
  CHECK(calls == 1);
  CHECK(v.z == 7);
  CHECK(region.get<PointV2>("k").has_value());
  CHECK_FALSE(region.get<Point>("k").has_value());  // the old schema is now the mismatch
  // Metadata is readable whatever the type.
  const auto meta = region.get_value_metadata("k");
  REQUIRE(meta);
  CHECK(meta->schema_version == 2);
}

TEST_CASE("get_or_create creates once, then serves the stored value", "[region]") {
  Fixture f;
  Region region(f.options(), f.backend);
  int calls = 0;
  auto creator = [&] {
    ++calls;
    return std::string("value-") + std::to_string(calls);
  };
  CHECK(region.get_or_create<std::string>("k", creator) == "value-1");
  CHECK(region.get_or_create<std::string>("k", creator) == "value-1");
  CHECK(calls == 1);
  CHECK(region.stats().creations == 1);
  CHECK(region.stats().hits == 1);
}

TEST_CASE("expiration: region, per call, ignore, and entries from the future", "[region]") {
  Fixture f;
  Region region(f.options(10s), f.backend);
  int calls = 0;
  auto creator = [&] { return ++calls; };

  CHECK(region.get_or_create<std::int32_t>("k", creator) == 1);
  f.clock->advance(9s);
  CHECK(region.get<std::int32_t>("k") == 1);
  SECTION("stale after expiration_time; get misses, ignore_expiration reads it") {
    f.clock->advance(1s);
    CHECK_FALSE(region.get<std::int32_t>("k"));
    CHECK(region.get<std::int32_t>("k", {.ignore_expiration = true}) == 1);
    CHECK(region.get_value_metadata("k").has_value());
    CHECK(region.get_or_create<std::int32_t>("k", creator) == 2);
    CHECK(calls == 2);
    CHECK(region.get<std::int32_t>("k") == 2);
  }
  SECTION("a per-call expiration overrides the region's") {
    CHECK_FALSE(region.get<std::int32_t>("k", {.expiration_time = 5s}));
    CHECK(region.get<std::int32_t>("k", {.expiration_time = 1h}) == 1);
    f.clock->advance(1h);
    CHECK(region.get<std::int32_t>("k", {.expiration_time = 2h}) == 1);
    CHECK(region.get_or_create<std::int32_t>("k", creator, {.expiration_time = 2h}) == 1);
    CHECK(calls == 1);
  }
  SECTION("an entry created in the future beyond the tolerance is stale") {
    Region no_expiry(f.options(), f.backend);
    no_expiry.set<std::int32_t>("future", 7);
    CHECK(no_expiry.get<std::int32_t>("future") == 7);
    // The clock steps back two hours: the entry now looks created in the future.
    auto back = std::make_shared<FakeClock>(f.clock->now() - 2h);
    RegionOptions o = f.options();
    o.clock = back;
    Region stepped(o, f.backend);
    CHECK_FALSE(stepped.get<std::int32_t>("future"));
    // Within the tolerance it stays fresh.
    auto slightly = std::make_shared<FakeClock>(f.clock->now() - 30s);
    o.clock = slightly;
    Region skewed(o, f.backend);
    CHECK(skewed.get<std::int32_t>("future") == 7);
  }
}

TEST_CASE("a per-entry expires_at in the envelope is honoured", "[region]") {
  Fixture f;
  Region region(f.options(), f.backend);
  EnvelopeMeta meta;
  const auto now_ns = [&] {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               f.clock->now().time_since_epoch())
        .count();
  };
  meta.created_at_ns = now_ns();
  meta.expires_at_ns = now_ns() + std::chrono::nanoseconds(5s).count();
  std::string bytes;
  encode_value(CodecId::kBinary, std::string("ttl"), meta, std::nullopt, bytes);
  REQUIRE(f.backend->set("k", bytes));
  CHECK(region.get<std::string>("k") == "ttl");
  const auto md = region.get_value_metadata("k");
  REQUIRE(md);
  REQUIRE(md->expires_at);
  f.clock->advance(5s);
  CHECK_FALSE(region.get<std::string>("k"));
}

TEST_CASE("values written with any codec are read; the region's codec is written",
          "[region]") {
  Fixture f;
  for (CodecId codec : {CodecId::kBinary, CodecId::kPortableBinary, CodecId::kJson, CodecId::kRaw}) {
    INFO(codec_name(codec));
    RegionOptions o = f.options();
    o.codec = codec;
    Region writer(o, f.backend);
    Region reader(f.options(), f.backend);
    writer.set<std::string>("s", "hello \0 world");
    CHECK(reader.get<std::string>("s") == std::string("hello \0 world"));
    CHECK(reader.get_value_metadata("s")->codec == codec);
  }
  RegionOptions o = f.options();
  o.codec = CodecId::kJson;
  Region json(o, f.backend);
  json.set("p", Point{8, 9});
  std::optional<std::string> raw;
  REQUIRE(f.backend->get("p", raw));
  REQUIRE(raw);
  CHECK(raw->find("\"value\"") != std::string::npos);
}

TEST_CASE("the key mangler is applied to every call", "[region]") {
  Fixture f;
  RegionOptions o = f.options();
  o.key_mangler = [](std::string_view k) { return "ns:" + std::string(k); };
  Region region(o, f.backend);
  region.set<std::string>("a", "x");
  std::optional<std::string> raw;
  REQUIRE(f.backend->get("ns:a", raw));
  CHECK(raw.has_value());
  CHECK(region.get<std::string>("a") == "x");
  CHECK(region.get_or_create<std::string>("a", [] { return std::string("no"); }) == "x");
  region.erase("a");
  REQUIRE(f.backend->get("ns:a", raw));
  CHECK_FALSE(raw.has_value());
}

TEST_CASE("long keys carry the full key, which must match on read", "[region]") {
  Fixture f;
  Region region(f.options(), f.backend);
  const std::string long_a(600, 'a');
  std::string long_b = long_a;
  long_b.back() = 'b';
  region.set<std::string>(long_a, "A");
  CHECK(region.get<std::string>(long_a) == "A");
  // The same envelope found under another long key (a hash collision in a
  // hashing backend) is a mismatch, not a wrong value.
  std::optional<std::string> raw;
  REQUIRE(f.backend->get(long_a, raw));
  REQUIRE(f.backend->set(long_b, *raw));
  CHECK_FALSE(region.get<std::string>(long_b));
  // Found under a short key, a shortened entry is a mismatch too.
  REQUIRE(f.backend->set("short", *raw));
  CHECK_FALSE(region.get<std::string>("short"));
  CHECK(region.stats().mismatches == 2);
  // And a short key's envelope under a long key lacks the full key.
  // The cut-off: a key the LMDB backend hashes (over kMaxInlineKeySize) always
  // carries its full key; one it stores inline never does.
  for (std::size_t size : {kMaxInlineKeySize, kMaxInlineKeySize + 1}) {
    const std::string key(size, 'k');
    region.set<std::string>(key, "edge");
    REQUIRE(f.backend->get(key, raw));
    EnvelopeView view;
    REQUIRE(decode_envelope(*raw, 1 << 20, view) == DecodeStatus::kOk);
    CHECK(view.full_key.has_value() == (size > kMaxInlineKeySize));
    CHECK(region.get<std::string>(key) == "edge");
  }
  region.set<std::string>("short2", "S");
  REQUIRE(f.backend->get("short2", raw));
  REQUIRE(f.backend->set(long_b, *raw));
  CHECK_FALSE(region.get<std::string>(long_b));
}

TEST_CASE("corrupt entries are misses, counted, logged once per key per minute", "[region]") {
  Fixture f;
  Region region(f.options(), f.backend);
  region.set<std::string>("k", "good value");
  std::optional<std::string> raw;
  REQUIRE(f.backend->get("k", raw));
  (*raw)[raw->size() / 2] ^= 0x5a;
  REQUIRE(f.backend->set("k", *raw));
  CHECK_FALSE(region.get<std::string>("k"));
  CHECK_FALSE(region.get<std::string>("k"));
  CHECK(region.stats().corruptions == 2);
  CHECK(f.logs.size() == 1);
  CHECK(f.logs[0].find("corrupt") != std::string::npos);
  REQUIRE(f.backend->set("k", "not an envelope at all"));
  CHECK(region.get_or_create<std::string>("k", [] { return std::string("regenerated"); }) ==
        "regenerated");
  CHECK(region.get<std::string>("k") == "regenerated");
}

TEST_CASE("backend failures: reads miss, get_or_create still returns, set throws", "[region]") {
  Fixture f;
  auto faulty = std::make_shared<FaultyBackend>(f.backend);
  Region region(f.options(), faulty);
  region.set<std::string>("k", "v");
  faulty->fail_reads = true;
  CHECK_FALSE(region.get<std::string>("k"));
  CHECK(region.stats().store_errors == 1);
  faulty->fail_reads = false;
  faulty->fail_writes = true;
  CHECK(region.get_or_create<std::string>("new", [] { return std::string("made"); }) == "made");
  CHECK(region.stats().store_errors == 2);
  CHECK_THROWS_AS(region.set<std::string>("k", "w"), CacheFull);
  CHECK(region.get<std::string>("k") == "v");
}

TEST_CASE("creator exceptions reach the caller and release the lock", "[region]") {
  Fixture f;
  Region region(f.options(), f.backend);
  CHECK_THROWS_WITH(region.get_or_create<std::string>(
                        "k", []() -> std::string { throw std::runtime_error("creator failed"); }),
                    "creator failed");
  CHECK_FALSE(region.key_is_locked("k"));
  CHECK(region.get_or_create<std::string>("k", [] { return std::string("ok"); }) == "ok");
}

TEST_CASE("a waiter becomes the creator when the creator throws", "[region][threads]") {
  Fixture f;
  Region region(f.options(), f.backend);
  std::promise<void> creator_entered;
  std::promise<void> let_fail;
  std::atomic<int> second_calls{0};
  // Catch2 assertions are not thread-safe: threads record, the test checks.
  std::atomic<bool> first_threw{false};
  std::thread first([&] {
    try {
      region.get_or_create<std::string>("k", [&]() -> std::string {
        creator_entered.set_value();
        let_fail.get_future().wait();
        throw std::runtime_error("boom");
      });
    } catch (const std::runtime_error&) {
      first_threw = true;
    }
  });
  creator_entered.get_future().wait();
  std::future<std::string> second = std::async(std::launch::async, [&] {
    return region.get_or_create<std::string>("k", [&] {
      ++second_calls;
      return std::string("second");
    });
  });
  // The second caller is blocked on the lock until the first one fails.
  CHECK(second.wait_for(100ms) == std::future_status::timeout);
  let_fail.set_value();
  CHECK(second.get() == "second");
  first.join();
  CHECK(first_threw);
  CHECK(second_calls == 1);
}

TEST_CASE("many threads on a cold key: one creation, one value", "[region][threads]") {
  Fixture f;
  Region region(f.options(), f.backend);
  std::atomic<int> calls{0};
  constexpr int kThreads = 16;
  std::latch start(kThreads);
  std::vector<std::string> results(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      results[i] = region.get_or_create<std::string>("cold", [&] {
        std::this_thread::sleep_for(50ms);
        return "made-by-" + std::to_string(++calls);
      });
    });
  }
  for (auto& t : threads) t.join();
  CHECK(calls == 1);
  for (const auto& r : results) CHECK(r == "made-by-1");
}

TEST_CASE("a stale value is served at once while another thread regenerates it",
          "[region][threads]") {
  Fixture f;
  Region region(f.options(10s), f.backend);
  region.set<std::string>("k", "old");
  f.clock->advance(11s);
  std::promise<void> creator_entered;
  std::promise<void> finish;
  std::string created;  // checked after join: Catch2 assertions are not thread-safe
  std::thread creator([&] {
    created = region.get_or_create<std::string>("k", [&] {
      creator_entered.set_value();
      finish.get_future().wait();
      return std::string("new");
    });
  });
  creator_entered.get_future().wait();
  CHECK(region.key_is_locked("k"));
  int others = 0;
  for (int i = 0; i < 5; ++i) {
    CHECK(region.get_or_create<std::string>("k", [&] {
      ++others;
      return std::string("duplicate");
    }) == "old");
  }
  CHECK(others == 0);
  CHECK(region.stats().stale_served == 5);
  finish.set_value();
  creator.join();
  CHECK(created == "new");
  CHECK(region.get<std::string>("k") == "new");
}

TEST_CASE("the stale path re-reads after winning the lock", "[region]") {
  // A backend whose first read returns a stale entry while the store already
  // holds a fresh one: the winner must re-read and not create again.
  Fixture f;
  Region region(f.options(10s), f.backend);
  region.set<std::string>("k", "old");
  std::optional<std::string> stale_bytes;
  REQUIRE(f.backend->get("k", stale_bytes));
  f.clock->advance(11s);
  region.set<std::string>("k", "fresh");  // "another process" finished meanwhile

  class FirstReadStale final : public Backend {
   public:
    FirstReadStale(std::shared_ptr<Backend> inner, std::string stale)
        : inner_(std::move(inner)), stale_(std::move(stale)) {}
    Status get(std::string_view key, std::optional<std::string>& value) override {
      if (first_) {
        first_ = false;
        value = stale_;
        return Status::ok();
      }
      return inner_->get(key, value);
    }
    Status set(std::string_view key, std::string_view value) override {
      return inner_->set(key, value);
    }
    Status erase(std::string_view key) override { return inner_->erase(key); }
    std::string_view name() const noexcept override { return "first-read-stale"; }

   private:
    std::shared_ptr<Backend> inner_;
    std::string stale_;
    bool first_ = true;
  };
  Region reader(f.options(10s), std::make_shared<FirstReadStale>(f.backend, *stale_bytes));
  int calls = 0;
  CHECK(reader.get_or_create<std::string>("k", [&] {
    ++calls;
    return std::string("duplicate");
  }) == "fresh");
  CHECK(calls == 0);
}

TEST_CASE("lock_timeout: raise, or create unlocked, per policy", "[region][threads]") {
  Fixture f;
  RegionOptions o = f.options();
  o.lock_timeout = 50ms;
  SECTION("raise") {}
  SECTION("create unlocked") { o.on_lock_timeout = LockTimeoutPolicy::kCreateUnlocked; }
  Region region(o, f.backend);
  std::promise<void> creator_entered;
  std::promise<void> finish;
  std::thread holder([&] {
    region.get_or_create<std::string>("k", [&] {
      creator_entered.set_value();
      finish.get_future().wait();
      return std::string("slow");
    });
  });
  creator_entered.get_future().wait();
  const auto started = std::chrono::steady_clock::now();
  if (o.on_lock_timeout == LockTimeoutPolicy::kRaise) {
    CHECK_THROWS_AS(region.get_or_create<std::string>("k", [] { return std::string("x"); }),
                    LockTimeout);
  } else {
    CHECK(region.get_or_create<std::string>("k", [] { return std::string("unlocked"); }) ==
          "unlocked");
  }
  CHECK(std::chrono::steady_clock::now() - started >= 50ms);
  CHECK(region.stats().lock_timeouts == 1);
  finish.set_value();
  holder.join();
}

TEST_CASE("nested get_or_create: other keys work, the same key is a typed error", "[region]") {
  Fixture f;
  Region region(f.options(), f.backend);
  const std::string outer = region.get_or_create<std::string>("outer", [&] {
    return "outer+" + region.get_or_create<std::string>("inner", [] { return std::string("in"); });
  });
  CHECK(outer == "outer+in");
  CHECK_THROWS_AS(region.get_or_create<std::string>("self",
                                                    [&] {
                                                      return region.get_or_create<std::string>(
                                                          "self", [] { return std::string(); });
                                                    }),
                  ReentrantCreation);
  CHECK_FALSE(region.key_is_locked("self"));
}

TEST_CASE("the null backend stores nothing: every get_or_create creates", "[region]") {
  Fixture f;
  Region region(f.options(), make_null_backend());
  int calls = 0;
  region.get_or_create<std::int32_t>("k", [&] { return ++calls; });
  region.get_or_create<std::int32_t>("k", [&] { return ++calls; });
  CHECK(calls == 2);
}

TEST_CASE("regions from the registry; bad configuration names what is wrong", "[region]") {
  Fixture f;
  Region memory(f.options(), "memory");
  memory.set<std::string>("k", "v");
  CHECK(memory.get<std::string>("k") == "v");
  try {
    Region bad(f.options(), "no-such-backend");
    FAIL("no exception");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find("no-such-backend") != std::string::npos);
  }
  CHECK_THROWS_AS(Region(RegionOptions{.name = ""}, "memory"), ConfigError);
  CHECK_THROWS_AS(Region(f.options(), std::shared_ptr<Backend>()), ConfigError);
}

TEST_CASE("a region on lmdb keeps values across reopen", "[region][lmdb]") {
  dogpile::test::TempDir dir;
  {
    Region region({.name = "persist"}, "lmdb", {{"path", dir.path()}});
    region.set<std::string>("k", "on disk");
  }
  Region reopened({.name = "persist"}, "lmdb", {{"path", dir.path()}});
  CHECK(reopened.get<std::string>("k") == "on disk");
  Region other({.name = "other"}, "lmdb", {{"path", dir.path()}});
  CHECK_FALSE(other.get<std::string>("k"));
}

TEST_CASE("a per-entry ttl wins over the region's expiration; a per-call one wins over both",
          "[region][expiration]") {
  Fixture f;
  Region region(f.options(1h), f.backend);
  region.set<std::string>("short", "s", {.ttl = 30s});
  region.set<std::string>("long", "l", {.ttl = 2h});
  region.set<std::string>("plain", "p");
  REQUIRE(region.get_value_metadata("short")->expires_at == f.clock->now() + 30s);
  CHECK_FALSE(region.get_value_metadata("plain")->expires_at.has_value());
  f.clock->advance(31s);
  CHECK_FALSE(region.get<std::string>("short"));
  CHECK(region.get<std::string>("long") == "l");
  CHECK(region.get<std::string>("plain") == "p");
  f.clock->advance(1h);
  CHECK(region.get<std::string>("long") == "l");  // its own 2 h beat the region's 1 h
  CHECK_FALSE(region.get<std::string>("plain"));
  CHECK_FALSE(region.get<std::string>("long", {.expiration_time = 1min}));
  CHECK(region.get<std::string>("short", {.expiration_time = 1h + 2min}) == "s");
  // get_or_create stores its ttl too.
  int calls = 0;
  region.get_or_create<std::int32_t>("made", [&] { return ++calls; }, {.ttl = 10s});
  f.clock->advance(11s);
  CHECK(region.get_or_create<std::int32_t>("made", [&] { return ++calls; }, {.ttl = 10s}) == 2);
}

TEST_CASE("should_cache decides whether a created value is stored", "[region]") {
  Fixture f;
  Region region(f.options(), f.backend);
  int calls = 0;
  const CreateOptions<std::int32_t> only_even{.should_cache = [](const std::int32_t& v) {
    return v % 2 == 0;
  }};
  CHECK(region.get_or_create<std::int32_t>("k", [&] { return ++calls; }, only_even) == 1);
  CHECK_FALSE(region.get<std::int32_t>("k"));  // odd: returned, not stored
  CHECK(region.get_or_create<std::int32_t>("k", [&] { return ++calls; }, only_even) == 2);
  CHECK(region.get<std::int32_t>("k") == 2);
  CHECK(region.get_or_create<std::int32_t>("k", [&] { return ++calls; }, only_even) == 2);
  CHECK(calls == 2);
}

TEST_CASE("get_multi, set_multi and erase_multi keep the caller's order", "[region][multi]") {
  Fixture f;
  Region region(f.options(), f.backend);
  const std::vector<std::pair<std::string, std::string>> items{{"a", "A"}, {"b", "B"}, {"c", "C"}};
  region.set_multi<std::string>(items);
  const std::vector<std::string> keys{"c", "missing", "a", "b", "a"};
  const auto values = region.get_multi<std::string>(keys);
  REQUIRE(values.size() == 5);
  CHECK(values[0] == "C");
  CHECK_FALSE(values[1]);
  CHECK(values[2] == "A");
  CHECK(values[3] == "B");
  CHECK(values[4] == "A");
  const std::vector<std::string> gone{"a", "c", "never-set"};
  region.erase_multi(gone);
  const auto after = region.get_multi<std::string>(keys);
  CHECK_FALSE(after[0]);
  CHECK(after[3] == "B");
}

TEST_CASE("get_or_create_multi creates only what is missing, in one call", "[region][multi]") {
  Fixture f;
  Region region(f.options(10s), f.backend);
  region.set<std::string>("have", "cached");
  std::vector<std::vector<std::string>> calls;
  auto creator = [&](std::span<const std::string> missing) {
    calls.emplace_back(missing.begin(), missing.end());
    std::vector<std::string> out;
    for (const auto& k : missing) out.push_back("made:" + k);
    return out;
  };
  const std::vector<std::string> keys{"x", "have", "y", "x"};
  const auto values = region.get_or_create_multi<std::string>(keys, creator);
  CHECK(values == std::vector<std::string>{"made:x", "cached", "made:y", "made:x"});
  REQUIRE(calls.size() == 1);
  CHECK(calls[0] == std::vector<std::string>{"x", "y"});  // duplicates once, caller's order
  CHECK(region.get<std::string>("y") == "made:y");
  // Everything fresh now: no creator call.
  CHECK(region.get_or_create_multi<std::string>(keys, creator) == values);
  CHECK(calls.size() == 1);
  // Expired: regenerated (nobody else holds the locks).
  f.clock->advance(11s);
  region.set<std::string>("have", "fresh again");
  region.get_or_create_multi<std::string>(keys, creator);
  REQUIRE(calls.size() == 2);
  CHECK(calls[1] == std::vector<std::string>{"x", "y"});
}

TEST_CASE("get_or_create_multi: a creator returning the wrong count is an error",
          "[region][multi]") {
  Fixture f;
  Region region(f.options(), f.backend);
  const std::vector<std::string> keys{"a", "b"};
  CHECK_THROWS_AS(region.get_or_create_multi<std::string>(
                      keys, [](std::span<const std::string>) { return std::vector<std::string>{"x"}; }),
                  Error);
  CHECK_FALSE(region.key_is_locked("a"));
  CHECK_FALSE(region.get<std::string>("a"));
}

TEST_CASE("get_or_create_multi serves stale keys another caller is regenerating",
          "[region][multi][threads]") {
  Fixture f;
  Region region(f.options(10s), f.backend);
  region.set<std::string>("s", "old");
  f.clock->advance(11s);
  std::promise<void> entered;
  std::promise<void> finish;
  std::thread holder([&] {
    region.get_or_create<std::string>("s", [&] {
      entered.set_value();
      finish.get_future().wait();
      return std::string("new");
    });
  });
  entered.get_future().wait();
  std::vector<std::string> created;
  const std::vector<std::string> keys{"s", "m"};
  const auto values =
      region.get_or_create_multi<std::string>(keys, [&](std::span<const std::string> missing) {
        created.assign(missing.begin(), missing.end());
        return std::vector<std::string>(missing.size(), "made");
      });
  CHECK(values == std::vector<std::string>{"old", "made"});
  CHECK(created == std::vector<std::string>{"m"});
  finish.set_value();
  holder.join();
}

TEST_CASE("get_or_create_multi re-reads after locking: a value made meanwhile is not remade",
          "[region][multi][threads]") {
  Fixture f;
  Region region(f.options(), f.backend);
  BusyCreator holder(region, "k", "single");
  std::atomic<int> multi_created{0};
  auto multi = std::async(std::launch::async, [&] {
    const std::vector<std::string> keys{"k", "other"};
    return region.get_or_create_multi<std::string>(keys, [&](std::span<const std::string> missing) {
      multi_created += static_cast<int>(missing.size());
      return std::vector<std::string>(missing.size(), "multi");
    });
  });
  CHECK(multi.wait_for(100ms) == std::future_status::timeout);  // waits on "k"
  holder.release();
  CHECK(multi.get() == std::vector<std::string>{"single", "multi"});
  CHECK(multi_created == 1);
}

TEST_CASE("a read counts once: waiting for another creator and then its value is one hit",
          "[region][stats][threads]") {
  const bool multi = GENERATE(false, true);
  Fixture f;
  auto backend = std::make_shared<FaultyBackend>(f.backend);
  Region region(f.options(10s), backend);
  BusyCreator holder(region, "k", "made");
  const int gets_before = backend->gets;
  std::atomic<int> duplicates{0};
  auto waiter = std::async(std::launch::async, [&] {
    if (multi) {
      const std::vector<std::string> keys{"k", "other"};
      return region.get_or_create_multi<std::string>(
          keys, [&](std::span<const std::string> missing) {
            duplicates += static_cast<int>(std::count(missing.begin(), missing.end(), "k"));
            return std::vector<std::string>(missing.size(), "multi");
          });
    }
    return std::vector<std::string>{region.get_or_create<std::string>("k", [&] {
      ++duplicates;
      return std::string("duplicate");
    })};
  });
  // The waiter's first read finds the key missing; then it waits for the lock.
  while (backend->gets == gets_before) std::this_thread::sleep_for(1ms);
  CHECK(waiter.wait_for(50ms) == std::future_status::timeout);
  holder.release();
  const std::vector<std::string> got = waiter.get();
  CHECK(got.front() == "made");
  CHECK(duplicates == 0);
  const RegionStats s = region.stats();
  // The holder missed and created; the waiter's "k" is a hit, not a miss
  // followed by a hit; "other" of the multi call is a miss it created.
  CHECK(s.hits == 1);
  CHECK(s.misses == (multi ? 2 : 1));
  CHECK(s.creations == (multi ? 2 : 1));
  CHECK(s.stale_served == 0);

  // A stale value regenerated by its caller is a miss: each read counts once.
  f.clock->advance(11s);
  CHECK(region.get_or_create<std::string>("k", [] { return std::string("again"); }) == "again");
  const RegionStats after = region.stats();
  CHECK(after.hits == s.hits);
  CHECK(after.misses == s.misses + 1);
  CHECK(after.stale_served == 0);
}

TEST_CASE("two get_or_create_multi calls over reversed key lists do not deadlock",
          "[region][multi][threads]") {
  Fixture f;
  Region region(f.options(), f.backend);
  std::vector<std::string> forward;
  for (int i = 0; i < 50; ++i) forward.push_back("key-" + std::to_string(i));
  std::vector<std::string> backward(forward.rbegin(), forward.rend());
  std::atomic<int> created{0};
  auto make = [&](std::span<const std::string> missing) {
    created += static_cast<int>(missing.size());
    std::this_thread::sleep_for(1ms);
    return std::vector<std::string>(missing.begin(), missing.end());
  };
  for (int round = 0; round < 20; ++round) {
    region.erase_multi(forward);
    created = 0;
    auto a = std::async(std::launch::async, [&] {
      return region.get_or_create_multi<std::string>(forward, make);
    });
    auto b = std::async(std::launch::async, [&] {
      return region.get_or_create_multi<std::string>(backward, make);
    });
    CHECK(a.get() == forward);
    CHECK(b.get() == backward);
    CHECK(created == 50);
  }
}

TEST_CASE("wait_for_fresh: a stale read waits for the regenerated value", "[region][policy]") {
  Fixture f;
  RegionOptions o = f.options(10s);
  o.wait_for_fresh = true;
  Region region(o, f.backend);
  region.set<std::string>("k", "old");
  f.clock->advance(11s);
  std::promise<void> entered;
  std::promise<void> finish;
  std::thread creator([&] {
    region.get_or_create<std::string>("k", [&] {
      entered.set_value();
      finish.get_future().wait();
      return std::string("new");
    });
  });
  entered.get_future().wait();
  int others = 0;
  auto reader = std::async(std::launch::async, [&] {
    return region.get_or_create<std::string>("k", [&] {
      ++others;
      return std::string("duplicate");
    });
  });
  CHECK(reader.wait_for(100ms) == std::future_status::timeout);  // not served stale
  finish.set_value();
  CHECK(reader.get() == "new");
  creator.join();
  CHECK(others == 0);
  CHECK(region.stats().stale_served == 0);
  CHECK(region.stats().lock_waits >= 1);
  CHECK(region.stats().lock_wait_ns > 0);
}

TEST_CASE("serve_stale_on_error: a failing creator yields the stale value, counted and logged",
          "[region][policy]") {
  Fixture f;
  RegionOptions o = f.options(10s);
  o.serve_stale_on_error = true;
  Region region(o, f.backend);
  auto failing = []() -> std::string { throw std::runtime_error("backend of truth is down"); };
  // Nothing stale to serve: the exception reaches the caller.
  CHECK_THROWS_WITH(region.get_or_create<std::string>("k", failing), "backend of truth is down");
  region.set<std::string>("k", "old");
  f.clock->advance(11s);
  CHECK(region.get_or_create<std::string>("k", failing) == "old");
  CHECK(region.get_or_create<std::string>("k", failing) == "old");
  const RegionStats st = region.stats();
  CHECK(st.creation_failures == 3);
  CHECK(st.stale_served == 2);
  CHECK(f.logs.size() == 1);  // once per key per minute
  CHECK(f.logs[0].find("backend of truth is down") != std::string::npos);
  CHECK_FALSE(region.key_is_locked("k"));
  // Without the option the error propagates even with a stale value.
  Region strict(f.options(10s), f.backend);
  CHECK_THROWS(strict.get_or_create<std::string>("k", failing));
}

TEST_CASE("max_concurrent_creations bounds creators across threads; nesting never deadlocks",
          "[region][policy][threads]") {
  Fixture f;
  RegionOptions o = f.options();
  o.max_concurrent_creations = 2;
  Region region(o, f.backend);
  std::atomic<int> running{0};
  std::atomic<int> peak{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      region.get_or_create<std::string>("key-" + std::to_string(i), [&] {
        const int now = ++running;
        int seen = peak.load();
        while (now > seen && !peak.compare_exchange_weak(seen, now)) {
        }
        std::this_thread::sleep_for(20ms);
        --running;
        return std::string("v");
      });
    });
  }
  for (auto& t : threads) t.join();
  CHECK(peak.load() == 2);
  CHECK(region.stats().creations == 8);

  // A creator creating other keys runs them inside its own slot.
  RegionOptions one = f.options();
  one.max_concurrent_creations = 1;
  Region single(one, f.backend);
  const std::string nested = single.get_or_create<std::string>("outer", [&] {
    return single.get_or_create<std::string>("inner-1", [] { return std::string("a"); }) +
           single.get_or_create<std::string>("inner-2", [] { return std::string("b"); });
  });
  CHECK(nested == "ab");
}

TEST_CASE("a region declared first and configured later; unconfigured use is a typed error",
          "[region][config]") {
  Region region({.name = "later"});
  CHECK_FALSE(region.is_configured());
  CHECK_THROWS_AS(region.get<std::string>("k"), RegionNotConfigured);
  CHECK_THROWS_AS(region.get_or_create<std::string>("k", [] { return std::string(); }),
                  RegionNotConfigured);
  CHECK_THROWS_AS(region.erase("k"), RegionNotConfigured);
  CHECK_THROWS_AS(region.backend(), RegionNotConfigured);
  region.configure("memory");
  CHECK(region.is_configured());
  region.set<std::string>("k", "v");
  CHECK(region.get<std::string>("k") == "v");
  CHECK_THROWS_AS(region.configure("memory"), ConfigError);
  CHECK(region.get<std::string>("k") == "v");
}

TEST_CASE("configure_from_config reads settings and backend arguments under a prefix",
          "[region][config]") {
  dogpile::test::TempDir dir;
  const ConfigMap config{{"cache.backend", "lmdb"},
                         {"cache.expiration_time", "1h 30m"},
                         {"cache.lock_timeout", "250ms"},
                         {"cache.on_lock_timeout", "create_unlocked"},
                         {"cache.codec", "json"},
                         {"cache.max_value_size", "2MiB"},
                         {"cache.wait_for_fresh", "yes"},
                         {"cache.serve_stale_on_error", "true"},
                         {"cache.max_concurrent_creations", "3"},
                         {"cache.arguments.path", dir.path()},
                         {"cache.arguments.max_size", "2GiB"},
                         {"other.backend", "memory"}};
  Region region({.name = "configured"});
  region.configure_from_config(config, "cache.");
  const RegionOptions& o = region.options();
  CHECK(o.expiration_time == Duration(90min));
  CHECK(o.lock_timeout == Duration(250ms));
  CHECK(o.on_lock_timeout == LockTimeoutPolicy::kCreateUnlocked);
  CHECK(o.codec == CodecId::kJson);
  CHECK(o.max_value_size == 2u << 20);
  CHECK(o.wait_for_fresh);
  CHECK(o.serve_stale_on_error);
  CHECK(o.max_concurrent_creations == 3);
  CHECK(region.backend().name() == "lmdb");
  region.set<std::string>("k", "v");
  CHECK(region.get_value_metadata("k")->codec == CodecId::kJson);

  Region never({.name = "n", .expiration_time = 1s});
  never.configure_from_config({{"c.backend", "memory"}, {"c.expiration_time", "none"}}, "c.");
  CHECK_FALSE(never.options().expiration_time.has_value());
}

TEST_CASE("configure_from_config names every bad key", "[region][config]") {
  const auto message_of = [](const ConfigMap& config) {
    Region region({.name = "bad"});
    try {
      region.configure_from_config(config, "cache.");
    } catch (const ConfigError& e) {
      CHECK_FALSE(region.is_configured());
      return std::string(e.what());
    }
    FAIL("no ConfigError");
    return std::string();
  };
  using Catch::Contains;
  CHECK_THAT(message_of({{"cache.expiration_time", "10m"}}), Contains("cache.backend"));
  CHECK_THAT(message_of({{"cache.backend", "memory"}, {"cache.expiration_tim", "10m"}}),
             Contains("'expiration_tim'"));
  CHECK_THAT(message_of({{"cache.backend", "memory"}, {"cache.expiration_time", "10 parsecs"}}),
             Contains("'expiration_time'"));
  // The offending text is quoted, whatever part of it is wrong.
  CHECK_THAT(message_of({{"cache.backend", "memory"}, {"cache.expiration_time", "1h30x"}}),
             Contains("'1h30x'"));
  CHECK_THAT(message_of({{"cache.backend", "memory"}, {"cache.max_value_size", "lots"}}),
             Contains("'max_value_size'"));
  CHECK_THAT(message_of({{"cache.backend", "memory"}, {"cache.wait_for_fresh", "maybe"}}),
             Contains("'wait_for_fresh'"));
  CHECK_THAT(message_of({{"cache.backend", "memory"}, {"cache.codec", "xml"}}),
             Contains("'codec'"));
  CHECK_THAT(message_of({{"cache.backend", "memory"}, {"cache.on_lock_timeout", "panic"}}),
             Contains("'on_lock_timeout'"));
  CHECK_THAT(message_of({{"cache.backend", "nosuch"}}), Contains("nosuch"));
  CHECK_THAT(message_of({{"cache.backend", "lmdb"}, {"cache.arguments.max_size", "2 parsecs"}}),
             Contains("max_size"));
  CHECK_THAT(message_of({{"cache.backend", "lmdb"}, {"cache.arguments.colour", "blue"}}),
             Contains("colour"));
}

TEST_CASE("async runner: stale served at once, one background creation, lock held until stored",
          "[region][async][threads]") {
  Fixture f;
  auto runner = std::make_shared<AsyncRunner>(2);
  RegionOptions o = f.options(10s);
  o.async_runner = runner;
  Region region(o, f.backend);
  region.set<std::string>("k", "old");
  f.clock->advance(11s);

  auto release = std::make_shared<std::promise<void>>();
  std::shared_future<void> released = release->get_future().share();
  auto calls = std::make_shared<std::atomic<int>>(0);
  auto creator = [calls, released] {
    ++*calls;
    released.wait();
    return std::string("new");
  };
  CHECK(region.get_or_create<std::string>("k", creator) == "old");
  // The runner holds the lock now; this same thread asking again is served
  // stale, not told it is reentrant.
  for (int i = 0; i < 5; ++i) CHECK(region.get_or_create<std::string>("k", creator) == "old");
  CHECK(region.key_is_locked("k"));
  release->set_value();
  runner->drain();
  CHECK(*calls == 1);
  CHECK_FALSE(region.key_is_locked("k"));
  CHECK(region.get<std::string>("k") == "new");
  CHECK(region.stats().stale_served == 6);
}

TEST_CASE("async runner: a failing background creator is counted and logged",
          "[region][async]") {
  Fixture f;
  auto runner = std::make_shared<AsyncRunner>(1);
  RegionOptions o = f.options(10s);
  o.async_runner = runner;
  Region region(o, f.backend);
  region.set<std::string>("k", "old");
  f.clock->advance(11s);
  CHECK(region.get_or_create<std::string>(
            "k", []() -> std::string { throw std::runtime_error("regeneration broke"); }) == "old");
  runner->drain();
  CHECK(region.stats().creation_failures == 1);
  REQUIRE(f.logs.size() == 1);
  CHECK(f.logs[0].find("regeneration broke") != std::string::npos);
  CHECK_FALSE(region.key_is_locked("k"));
  // The next caller tries again.
  CHECK(region.get_or_create<std::string>("k", [] { return std::string("fixed"); }) == "old");
  runner->drain();
  CHECK(region.get<std::string>("k") == "fixed");
}

TEST_CASE("async runner: a region waits for its pending jobs when destroyed", "[region][async]") {
  Fixture f;
  auto runner = std::make_shared<AsyncRunner>(1);
  auto done = std::make_shared<std::atomic<bool>>(false);
  {
    RegionOptions o = f.options(10s);
    o.async_runner = runner;
    Region region(o, f.backend);
    region.set<std::string>("k", "old");
    f.clock->advance(11s);
    region.get_or_create<std::string>("k", [done] {
      std::this_thread::sleep_for(50ms);
      *done = true;
      return std::string("new");
    });
  }
  CHECK(*done);
  Region reader(f.options(10s), f.backend);
  CHECK(reader.get<std::string>("k") == "new");
}

TEST_CASE("a callable expiration is asked on every read", "[region][expiration]") {
  Fixture f;
  std::atomic<int> asked{0};
  std::optional<Duration> current = 10s;
  RegionOptions o = f.options(1h);  // replaced by the callable
  o.expiration_time_fn = [&]() -> std::optional<Duration> {
    ++asked;
    return current;
  };
  Region region(o, f.backend);
  region.set<std::string>("k", "v");
  f.clock->advance(11s);
  CHECK_FALSE(region.get<std::string>("k"));
  current = 1min;
  CHECK(region.get<std::string>("k") == "v");
  current = std::nullopt;  // never expires
  f.clock->advance(24h);
  CHECK(region.get<std::string>("k") == "v");
  CHECK(asked == 3);
  // A per-call expiration still wins, and an entry's own ttl too.
  CHECK_FALSE(region.get<std::string>("k", {.expiration_time = 1s}));
  region.set<std::string>("t", "ttl", {.ttl = 5s});
  f.clock->advance(6s);
  CHECK_FALSE(region.get<std::string>("t"));
}

TEST_CASE("two Region objects over one memory backend share its creation locks",
          "[region][threads]") {
  Fixture f;
  Region a(f.options(), f.backend);
  Region b(f.options(), f.backend);
  std::promise<void> entered;
  std::promise<void> finish;
  std::thread holder([&] {
    a.get_or_create<std::string>("k", [&] {
      entered.set_value();
      finish.get_future().wait();
      return std::string("from a");
    });
  });
  entered.get_future().wait();
  CHECK(b.key_is_locked("k"));
  int b_calls = 0;
  auto waiter = std::async(std::launch::async, [&] {
    return b.get_or_create<std::string>("k", [&] {
      ++b_calls;
      return std::string("from b");
    });
  });
  CHECK(waiter.wait_for(100ms) == std::future_status::timeout);
  finish.set_value();
  holder.join();
  CHECK(waiter.get() == "from a");
  CHECK(b_calls == 0);
}

TEST_CASE("values over max_value_size or that cannot be encoded are refused, never stored",
          "[region]") {
  Fixture f;
  RegionOptions o = f.options();
  o.max_value_size = 100;
  Region region(o, f.backend);
  const std::string big(200, 'x');
  try {
    region.set<std::string>("big", big);
    FAIL("no exception");
  } catch (const Error& e) {
    CHECK(e.code() == StatusCode::kTooLarge);
    CHECK_THAT(std::string(e.what()), Catch::Contains("max_value_size"));
  }
  std::optional<std::string> raw;
  REQUIRE(f.backend->get("big", raw));
  CHECK_FALSE(raw);
  // get_or_create still returns the value; it is logged, not stored.
  CHECK(region.get_or_create<std::string>("big", [&] { return big; }) == big);
  CHECK(region.stats().store_errors == 1);
  REQUIRE(f.backend->get("big", raw));
  CHECK_FALSE(raw);
  const std::vector<std::pair<std::string, std::string>> items{{"ok", "small"}, {"big", big}};
  CHECK_THROWS_AS(region.set_multi<std::string>(items), Error);

  RegionOptions raw_codec = f.options();
  raw_codec.codec = CodecId::kRaw;
  Region raw_region(raw_codec, f.backend);
  try {
    raw_region.set<std::int64_t>("n", 5);  // raw carries bytes only
    FAIL("no exception");
  } catch (const Error& e) {
    CHECK(e.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(std::string(e.what()), Catch::Contains("raw"));
  }
}

TEST_CASE("a full creation throttle serves the stale value instead of raising",
          "[region][policy][threads]") {
  Fixture f;
  RegionOptions o = f.options(10s);
  o.max_concurrent_creations = 1;
  o.lock_timeout = 50ms;
  Region region(o, f.backend);
  region.set<std::string>("stale", "old");
  f.clock->advance(11s);
  std::promise<void> entered;
  std::promise<void> finish;
  std::thread busy([&] {
    region.get_or_create<std::string>("other", [&] {
      entered.set_value();
      finish.get_future().wait();
      return std::string("x");
    });
  });
  entered.get_future().wait();
  CHECK(region.get_or_create<std::string>("stale", [] { return std::string("new"); }) == "old");
  CHECK_THROWS_AS(region.get_or_create<std::string>("missing", [] { return std::string("m"); }),
                  LockTimeout);
  finish.set_value();
  busy.join();
}

TEST_CASE("configure_from_config builds the proxy chain named under <prefix>wrap",
          "[region][config]") {
  Region region({.name = "wrapped"});
  region.configure_from_config({{"cache.backend", "memory"},
                                {"cache.wrap", "stats"},
                                {"cache.expiration_time", "1m"}},
                               "cache.");
  StatsProxy* stats = find_proxy<StatsProxy>(region.backend());
  REQUIRE(stats != nullptr);
  region.set<std::string>("k", "v");
  CHECK(region.get<std::string>("k") == "v");
  CHECK(stats->snapshot().sets == 1);
  CHECK(stats->snapshot().hits == 1);
  Region bad({.name = "bad"});
  CHECK_THROWS_WITH(bad.configure_from_config({{"cache.backend", "memory"},
                                               {"cache.wrap", "telescope"}},
                                              "cache."),
                    Catch::Contains("telescope"));
  CHECK_FALSE(bad.is_configured());
}

TEST_CASE("a full store is logged once per region and get_or_create still returns",
          "[region][full]") {
  Fixture f;
  auto faulty = std::make_shared<FaultyBackend>(f.backend);
  Region region(f.options(), faulty);
  faulty->fail_writes = true;
  CHECK_THROWS_AS(region.set<std::string>("a", "v"), CacheFull);
  CHECK_THROWS_AS(region.set<std::string>("b", "v"), CacheFull);
  CHECK(region.get_or_create<std::string>("c", [] { return std::string("made"); }) == "made");
  CHECK(region.get_or_create<std::string>("d", [] { return std::string("made too"); }) ==
        "made too");
  const std::vector<std::string> keys{"e", "f"};
  CHECK(region.get_or_create_multi<std::string>(keys, [](std::span<const std::string> ks) {
          return std::vector<std::string>(ks.begin(), ks.end());
        }) == keys);
  CHECK_FALSE(region.get<std::string>("c").has_value());
  CHECK(region.stats().store_errors == 5);
  REQUIRE(f.logs.size() == 1);
  CHECK_THAT(f.logs[0], Catch::Contains("region 'test'") && Catch::Contains("injected full store"));
  faulty->fail_writes = false;
  region.set<std::string>("a", "stored");
  CHECK(region.get<std::string>("a") == "stored");
}

namespace {

// Records what a region publishes through add_usage.
class UsageRecorder final : public ProxyBackend {
 public:
  using ProxyBackend::ProxyBackend;
  void add_usage(const UsageCounters& delta) noexcept override {
    std::lock_guard lock(mu);
    calls.push_back(delta);
  }
  UsageCounters total() {
    std::lock_guard lock(mu);
    UsageCounters sum;
    for (const UsageCounters& c : calls) sum += c;
    return sum;
  }
  std::size_t call_count() {
    std::lock_guard lock(mu);
    return calls.size();
  }

  std::mutex mu;
  std::vector<UsageCounters> calls;
};

}  // namespace

TEST_CASE("a region publishes its counters in batches", "[region][stats]") {
  Fixture f;
  auto recorder = std::make_shared<UsageRecorder>(f.backend);
  // A proxy in between forwards the counts to the backend it wraps.
  auto chain = std::make_shared<StatsProxy>(recorder);

  SECTION("not before the interval has passed; flush_stats and the destructor publish") {
    {
      RegionOptions options = f.options();
      options.stats_interval = std::chrono::hours(1);
      Region region(options, chain);
      for (int i = 0; i < 100; ++i) (void)region.get<std::string>("absent");
      region.set<std::string>("k", "v");
      for (int i = 0; i < 50; ++i) CHECK(region.get<std::string>("k") == "v");
      CHECK(recorder->call_count() == 0);  // hits and misses cost no publication
      region.flush_stats();
      REQUIRE(recorder->call_count() == 1);
      UsageCounters expected;
      expected.hits = 50;
      expected.misses = 100;
      CHECK(recorder->total() == expected);
      region.flush_stats();  // nothing new: nothing published
      CHECK(recorder->call_count() == 1);
      (void)region.get_or_create<std::string>("new", [] { return std::string("x"); });
    }
    REQUIRE(recorder->call_count() == 2);
    UsageCounters last;
    last.misses = 1;
    last.creations = 1;
    CHECK(recorder->calls[1] == last);
  }

  SECTION("a zero interval publishes after every operation") {
    RegionOptions options = f.options();
    options.stats_interval = Duration::zero();
    Region region(options, chain);
    (void)region.get<std::string>("absent");
    CHECK(recorder->call_count() == 1);
    region.set<std::string>("k", "v");  // no counter moved: nothing to publish
    CHECK(recorder->call_count() == 1);
    (void)region.get<std::string>("k");
    (void)region.get<Point>("k");  // a mismatch, and a miss
    REQUIRE(recorder->call_count() == 3);
    UsageCounters expected;
    expected.hits = 1;
    expected.misses = 2;
    expected.mismatches = 1;
    CHECK(recorder->total() == expected);
  }

  SECTION("stats_interval comes from config") {
    Region region(f.options());
    region.configure_from_config({{"c.backend", "memory"}, {"c.stats_interval", "250ms"}}, "c.");
    CHECK(region.options().stats_interval == std::chrono::milliseconds(250));
    RegionOptions negative = f.options();
    negative.stats_interval = -std::chrono::seconds(1);
    CHECK_THROWS_AS(Region(negative, chain), ConfigError);
  }
}

// The same cases on a real lmdb backend. Byte-like values (std::string, byte
// vectors) are decoded straight from the lmdb read; a struct takes the copying
// path. Every check must hold on both, so a shortcut that skips one shows here.
namespace {

// Laid out like Point (two ints, cereal binary): only the type tag tells them apart.
struct Pair {
  int a = 0;
  int b = 0;
  bool operator==(const Pair&) const = default;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(a, b);
  }
};

}  // namespace

DOGPILE_REGISTER_TYPE(Pair, "test.Pair", 1);

namespace {

using Bytes = std::vector<std::uint8_t>;

// A type whose payload decodes as T's payload would: only the type check
// keeps one from being read as the other.
template <class T>
struct OtherOf;
template <>
struct OtherOf<std::string> {
  using type = Bytes;
};
template <>
struct OtherOf<Bytes> {
  using type = std::string;
};
template <>
struct OtherOf<Point> {
  using type = Pair;
};

template <class T>
T sample(int n) {
  if constexpr (std::is_same_v<T, Point>) {
    return Point{n, 1000 + n};
  } else if constexpr (std::is_same_v<T, Pair>) {
    return Pair{n, 1000 + n};
  } else {
    const std::string s = "value-" + std::to_string(n) + std::string(40, 'x');
    return T(s.begin(), s.end());
  }
}

std::int64_t ns_of(WallTime t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

struct LmdbFixture {
  dogpile::test::TempDir dir;
  std::shared_ptr<FakeClock> clock = std::make_shared<FakeClock>();
  std::shared_ptr<Backend> backend =
      open_lmdb_backend(LmdbOptions{.path = dir.path(), .region = "fast"});
  std::vector<std::string> logs;
  std::mutex logs_mu;

  RegionOptions options(std::optional<Duration> expiration = std::nullopt) {
    return RegionOptions{.name = "fast",
                         .expiration_time = expiration,
                         .clock = clock,
                         .logger = [this](LogLevel, std::string_view m) {
                           std::lock_guard lock(logs_mu);
                           logs.emplace_back(m);
                         }};
  }
  std::size_t logs_containing(std::string_view word) {
    std::lock_guard lock(logs_mu);
    std::size_t n = 0;
    for (const std::string& m : logs) n += m.find(word) != std::string::npos ? 1 : 0;
    return n;
  }
  // A valid envelope of T as the region would write it now.
  template <class T>
  std::string envelope(const T& value, std::optional<std::string_view> full_key = std::nullopt) {
    const EnvelopeMeta meta{.type_tag = type_tag<T>(),
                            .schema_version = schema_version<T>(),
                            .codec = CodecId::kBinary,
                            .created_at_ns = ns_of(clock->now())};
    std::string payload;
    encode_payload(CodecId::kBinary, value, payload);
    return encode_envelope(meta, full_key, payload);
  }
};

}  // namespace

TEMPLATE_TEST_CASE("lmdb: a hit returns the exact value and metadata", "[region][lmdb][inplace]",
                   std::string, Bytes, Point) {
  using T = TestType;
  LmdbFixture f;
  Region region(f.options(1h), f.backend);
  const T v = sample<T>(1);
  region.set<T>("k", v);
  CHECK(region.get<T>("k") == v);
  const auto cached = region.get_value<T>("k");
  REQUIRE(cached);
  CHECK(cached->payload == v);
  CHECK(cached->metadata.created_at == f.clock->now());
  CHECK_FALSE(cached->metadata.expires_at.has_value());
  CHECK(cached->metadata.type_tag == type_tag<T>());
  CHECK(cached->metadata.schema_version == schema_version<T>());
  CHECK(cached->metadata.codec == CodecId::kBinary);
  f.clock->advance(10min);
  int calls = 0;
  CHECK(region.get_or_create<T>("k", [&] {
    ++calls;
    return sample<T>(2);
  }) == v);
  CHECK(calls == 0);

  // A per-entry ttl comes back in the metadata.
  const WallTime stored_at = f.clock->now();
  region.set<T>("ttl", sample<T>(3), SetOptions{.ttl = 5min});
  const auto with_ttl = region.get_value<T>("ttl");
  REQUIRE(with_ttl);
  CHECK(with_ttl->payload == sample<T>(3));
  CHECK(with_ttl->metadata.created_at == stored_at);
  REQUIRE(with_ttl->metadata.expires_at.has_value());
  CHECK(*with_ttl->metadata.expires_at == stored_at + 5min);

  // Neighbouring keys do not bleed into each other.
  region.set<T>("k2", sample<T>(4));
  CHECK(region.get<T>("k") == v);
  CHECK(region.get<T>("k2") == sample<T>(4));
  CHECK_FALSE(region.get<T>("k3"));

  const RegionStats s = region.stats();
  CHECK(s.hits == 6);
  CHECK(s.misses == 1);
  CHECK(s.creations == 0);
  CHECK(s.corruptions == 0);
  CHECK(s.mismatches == 0);
  CHECK(f.logs.empty());
}

TEMPLATE_TEST_CASE("lmdb: a stale entry is regenerated by get_or_create",
                   "[region][lmdb][inplace]", std::string, Bytes, Point) {
  using T = TestType;
  LmdbFixture f;
  Region region(f.options(1min), f.backend);
  region.set<T>("k", sample<T>(1));
  CHECK(region.get<T>("k") == sample<T>(1));
  f.clock->advance(2min);
  CHECK_FALSE(region.get<T>("k"));
  CHECK_FALSE(region.get_value<T>("k"));
  CHECK(region.get<T>("k", GetOptions{.ignore_expiration = true}) == sample<T>(1));
  CHECK(region.get<T>("k", GetOptions{.expiration_time = Duration(1h)}) == sample<T>(1));
  int calls = 0;
  const auto create = [&] {
    ++calls;
    return sample<T>(2);
  };
  CHECK(region.get_or_create<T>("k", create) == sample<T>(2));
  CHECK(calls == 1);
  CHECK(region.get_or_create<T>("k", create) == sample<T>(2));
  CHECK(calls == 1);
  const auto cached = region.get_value<T>("k");
  REQUIRE(cached);
  CHECK(cached->payload == sample<T>(2));
  CHECK(cached->metadata.created_at == f.clock->now());
  // A per-entry ttl that ran out makes it stale too.
  region.set<T>("ttl", sample<T>(3), SetOptions{.ttl = 30s});
  f.clock->advance(31s);
  CHECK_FALSE(region.get<T>("ttl"));
  CHECK(region.get_or_create<T>("ttl", [] { return sample<T>(4); }) == sample<T>(4));
  CHECK(region.stats().creations == 2);
  CHECK(region.stats().corruptions == 0);
  CHECK(region.stats().mismatches == 0);
}

TEMPLATE_TEST_CASE("lmdb: corrupt entries are misses, counted, logged once, regenerated",
                   "[region][lmdb][inplace]", std::string, Bytes, Point) {
  using T = TestType;
  LmdbFixture f;
  Region region(f.options(), f.backend);
  const T v = sample<T>(1);

  SECTION("garbage bytes under the key") {
    region.set<T>("k", v);
    REQUIRE(f.backend->set("k", "definitely not an envelope, just some bytes"));
  }
  SECTION("a valid envelope with one payload byte flipped") {
    // The hand-built envelope reads back as the value, so the flipped byte
    // is the only thing wrong with it.
    std::string bytes = f.envelope(v);
    REQUIRE(f.backend->set("k", bytes));
    REQUIRE(region.get<T>("k") == v);
    REQUIRE(region.stats().corruptions == 0);
    bytes[bytes.size() - kEnvelopeTrailerSize - 1] ^= 0x01;  // last payload byte
    REQUIRE(f.backend->set("k", bytes));
  }
  SECTION("a valid envelope with a header byte flipped") {
    std::string bytes = f.envelope(v);
    bytes[kEnvelopeHeaderSize - 9] ^= 0x01;  // inside the payload length
    REQUIRE(f.backend->set("k", bytes));
  }
  SECTION("a valid envelope cut short") {
    std::string bytes = f.envelope(v);
    bytes.pop_back();
    REQUIRE(f.backend->set("k", bytes));
  }

  CHECK_FALSE(region.get<T>("k"));
  CHECK_FALSE(region.get<T>("k"));
  CHECK_FALSE(region.get_value<T>("k"));
  CHECK_FALSE(region.get_value_metadata("k"));
  CHECK(region.stats().corruptions == 4);
  CHECK(region.stats().mismatches == 0);
  CHECK(f.logs.size() == 1);
  CHECK(f.logs_containing("corrupt") == 1);
  int calls = 0;
  CHECK(region.get_or_create<T>("k", [&] {
    ++calls;
    return sample<T>(2);
  }) == sample<T>(2));
  CHECK(calls == 1);
  CHECK(region.get<T>("k") == sample<T>(2));
  CHECK(region.stats().corruptions == 6);  // get_or_create reads before and after locking
}

TEMPLATE_TEST_CASE("lmdb: raw bytes that are not an envelope are a corruption miss",
                   "[region][lmdb][inplace]", std::string, Bytes, Point) {
  using T = TestType;
  LmdbFixture f;
  Region region(f.options(), f.backend);
  // The bare payload, as a raw store would hold it.
  std::string payload;
  encode_payload(CodecId::kBinary, sample<T>(1), payload);
  REQUIRE(f.backend->set("payload", payload));
  REQUIRE(f.backend->set("empty", ""));
  // A good envelope's header with nothing after it.
  REQUIRE(f.backend->set("header", f.envelope(sample<T>(1)).substr(0, kEnvelopeHeaderSize)));
  for (const char* key : {"payload", "empty", "header"}) {
    INFO(key);
    CHECK_FALSE(region.get<T>(key));
    CHECK_FALSE(region.get_value<T>(key));
  }
  CHECK(region.stats().corruptions == 6);
  CHECK(region.stats().mismatches == 0);
  CHECK(f.logs_containing("corrupt") == 3);
  CHECK(region.get_or_create<T>("payload", [] { return sample<T>(2); }) == sample<T>(2));
  CHECK(region.get<T>("payload") == sample<T>(2));
}

TEMPLATE_TEST_CASE("lmdb: an entry of another type is a mismatch, never decoded",
                   "[region][lmdb][inplace]", std::string, Bytes, Point) {
  using T = TestType;
  using Other = typename OtherOf<T>::type;
  LmdbFixture f;
  Region region(f.options(), f.backend);
  // Another Region object over the same directory and region name.
  Region other(f.options(), "lmdb", {{"path", f.dir.path()}});
  other.set<Other>("k", sample<Other>(1));
  REQUIRE(other.get<Other>("k") == sample<Other>(1));
  CHECK_FALSE(region.get<T>("k"));
  CHECK_FALSE(region.get_value<T>("k"));
  CHECK(region.stats().mismatches == 2);
  CHECK(region.stats().corruptions == 0);
  CHECK(f.logs_containing("corrupt") == 0);
  const auto meta = region.get_value_metadata("k");  // of any type
  REQUIRE(meta);
  CHECK(meta->type_tag == type_tag<Other>());
  int calls = 0;
  CHECK(region.get_or_create<T>("k", [&] {
    ++calls;
    return sample<T>(2);
  }) == sample<T>(2));
  CHECK(calls == 1);
  CHECK(region.get<T>("k") == sample<T>(2));
  // Now the other side sees a mismatch.
  CHECK_FALSE(other.get<Other>("k"));
  CHECK(other.stats().mismatches == 1);

  // Same type tag, another schema version: a mismatch too.
  EnvelopeMeta newer{.type_tag = type_tag<T>(),
                     .schema_version = schema_version<T>() + 1,
                     .codec = CodecId::kBinary,
                     .created_at_ns = ns_of(f.clock->now())};
  std::string payload;
  encode_payload(CodecId::kBinary, sample<T>(3), payload);
  REQUIRE(f.backend->set("schema", encode_envelope(newer, std::nullopt, payload)));
  CHECK_FALSE(region.get<T>("schema"));
  CHECK(region.stats().mismatches == 5);  // 2, get_or_create's two reads, this
  CHECK(region.stats().corruptions == 0);
}

TEMPLATE_TEST_CASE("lmdb: long keys round-trip; another full key is a mismatch",
                   "[region][lmdb][inplace]", std::string, Bytes, Point) {
  using T = TestType;
  LmdbFixture f;
  Region region(f.options(), f.backend);
  const std::string long_a(600, 'a');
  std::string long_b = long_a;
  long_b.back() = 'b';
  region.set<T>(long_a, sample<T>(1));
  region.set<T>(long_b, sample<T>(2));
  CHECK(region.get<T>(long_a) == sample<T>(1));
  CHECK(region.get<T>(long_b) == sample<T>(2));
  const auto cached = region.get_value<T>(long_a);
  REQUIRE(cached);
  CHECK(cached->payload == sample<T>(1));
  for (std::size_t size : {kMaxInlineKeySize, kMaxInlineKeySize + 1, std::size_t{4000}}) {
    const std::string key(size, 'k');
    region.set<T>(key, sample<T>(static_cast<int>(size)));
    CHECK(region.get<T>(key) == sample<T>(static_cast<int>(size)));
  }
  CHECK(region.stats().mismatches == 0);

  // A hand-built envelope with the right full key reads back...
  REQUIRE(f.backend->set(long_a, f.envelope(sample<T>(3), long_a)));
  CHECK(region.get<T>(long_a) == sample<T>(3));
  // ...one carrying another full key at long_a's place is a mismatch.
  REQUIRE(f.backend->set(long_a, f.envelope(sample<T>(4), long_b)));
  CHECK_FALSE(region.get<T>(long_a));
  CHECK_FALSE(region.get_value<T>(long_a));
  CHECK(region.stats().mismatches == 2);
  // So is one without any full key under a long key, and one with a full key under a short key.
  REQUIRE(f.backend->set(long_a, f.envelope(sample<T>(5))));
  CHECK_FALSE(region.get<T>(long_a));
  REQUIRE(f.backend->set("short", f.envelope(sample<T>(6), std::string_view("short"))));
  CHECK_FALSE(region.get<T>("short"));
  CHECK(region.stats().mismatches == 4);
  CHECK(region.stats().corruptions == 0);
  // long_b was not touched, and long_a is regenerated.
  CHECK(region.get<T>(long_b) == sample<T>(2));
  CHECK(region.get_or_create<T>(long_a, [] { return sample<T>(7); }) == sample<T>(7));
  CHECK(region.get<T>(long_a) == sample<T>(7));
}

TEMPLATE_TEST_CASE("lmdb: hard invalidation makes values missing, soft regenerates once",
                   "[region][lmdb][inplace]", std::string, Bytes, Point) {
  using T = TestType;
  LmdbFixture f;
  Region region(f.options(), f.backend);
  int calls = 0;
  const auto create = [&] {
    ++calls;
    return sample<T>(10 + calls);
  };
  region.set<T>("k", sample<T>(1));
  f.clock->advance(1s);

  SECTION("hard") {
    region.invalidate(true);
    f.clock->advance(1s);
    CHECK_FALSE(region.get<T>("k"));
    CHECK_FALSE(region.get_value<T>("k"));
    CHECK_FALSE(region.get<T>("k", GetOptions{.ignore_expiration = true}));
    CHECK_FALSE(region.get_value_metadata("k"));
    CHECK(region.get_or_create<T>("k", create) == sample<T>(11));
    CHECK(calls == 1);
    CHECK(region.get<T>("k") == sample<T>(11));
  }
  SECTION("soft") {
    region.invalidate(false);
    f.clock->advance(1s);
    CHECK_FALSE(region.get<T>("k"));
    CHECK(region.get<T>("k", GetOptions{.ignore_expiration = true}) == sample<T>(1));
    CHECK(region.get_value_metadata("k").has_value());
    CHECK(region.get_or_create<T>("k", create) == sample<T>(11));
    CHECK(calls == 1);
    CHECK(region.get_or_create<T>("k", create) == sample<T>(11));
    CHECK(calls == 1);
    CHECK(region.get<T>("k") == sample<T>(11));
  }
  // Another region object over the same directory sees the same stamps.
  Region again(f.options(), "lmdb", {{"path", f.dir.path()}});
  CHECK(again.get<T>("k") == sample<T>(11));
  CHECK(region.stats().corruptions == 0);
  CHECK(region.stats().mismatches == 0);
}

TEST_CASE("creation times and ttls at the ends of the int64 range are judged without overflow",
          "[region][expiry]") {
  LmdbFixture f;
  Region region(f.options(1h), f.backend);
  std::string payload;
  encode_payload(CodecId::kBinary, std::string("v"), payload);
  const auto store_created_at = [&](const std::string& key, std::int64_t created_at_ns) {
    const EnvelopeMeta meta{.type_tag = type_tag<std::string>(),
                            .schema_version = schema_version<std::string>(),
                            .codec = CodecId::kBinary,
                            .created_at_ns = created_at_ns};
    REQUIRE(f.backend->set(key, encode_envelope(meta, std::nullopt, payload)));
  };
  // Stored bytes can hold any time. The earliest is ancient, whichever
  // expiration judges it; `now - created_at` would overflow.
  store_created_at("ancient", std::numeric_limits<std::int64_t>::min());
  CHECK_FALSE(region.get<std::string>("ancient"));
  CHECK_FALSE(region.get<std::string>("ancient", {.expiration_time = Duration(1h)}));
  CHECK(region.get<std::string>("ancient", {.ignore_expiration = true}) == "v");
  // The latest is from the future, beyond any tolerance.
  store_created_at("future", std::numeric_limits<std::int64_t>::max());
  CHECK_FALSE(region.get<std::string>("future"));
  // A ttl too long to add to the creation time never expires.
  region.set<std::string>("forever", "v", {.ttl = Duration::max()});
  f.clock->advance(24h);
  CHECK(region.get<std::string>("forever") == "v");
}
