// Proxy backends: the pass-through base and chains, StatsProxy, MemoryTier
// (in one process and across fork()ed processes on lmdb), and wrap_from_config.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "dogpile/dogpile.h"
#include "backend_util.h"
#include "test_util.h"

using namespace dogpile;
using namespace std::chrono_literals;
using dogpile::test::FakeClock;
using dogpile::test::TempDir;
using dogpile::test::get;
using dogpile::test::set;

namespace {

std::vector<std::optional<std::string>> get_multi(Backend& b, std::vector<std::string> keys) {
  std::vector<std::optional<std::string>> values;
  const Status s = b.get_multi(keys, values);
  INFO(s.to_string());
  REQUIRE(s.is_ok());
  REQUIRE(values.size() == keys.size());
  return values;
}

using Values = std::vector<std::optional<std::string>>;

// What a CountingBackend's creation locks were asked to do.
struct MutexLog {
  std::atomic<int> try_locks{0}, locks{0}, unlocks{0}, queries{0};
};

// Records its calls; excludes nothing, which single-threaded tests do not need.
class FakeMutex final : public CreationMutex {
 public:
  explicit FakeMutex(std::shared_ptr<MutexLog> log) : log_(std::move(log)) {}
  Status try_lock() override { return ++log_->try_locks, Status::ok(); }
  Status lock(Timeout) override { return ++log_->locks, Status::ok(); }
  void unlock() noexcept override { ++log_->unlocks; }
  bool is_locked_anywhere() override { return ++log_->queries, false; }

 private:
  std::shared_ptr<MutexLog> log_;
};

// A memory backend that counts calls, remembers the keys of the last call,
// can be told to fail, and hands out FakeMutexes. raw() reaches the stored
// entries without counting, as another process would.
class CountingBackend final : public Backend {
 public:
  struct Calls {
    int get = 0, set = 0, erase = 0, get_multi = 0, set_multi = 0, erase_multi = 0, get_mutex = 0;
  };

  Status get(std::string_view key, std::optional<std::string>& value) override {
    if (Status s = note(&Calls::get, {std::string(key)}); !s) return s;
    return raw_->get(key, value);
  }
  Status set(std::string_view key, std::string_view value) override {
    if (Status s = note(&Calls::set, {std::string(key)}); !s) return s;
    if (set_delay_ > 0ms) std::this_thread::sleep_for(set_delay_);
    return raw_->set(key, value);
  }
  Status erase(std::string_view key) override {
    if (Status s = note(&Calls::erase, {std::string(key)}); !s) return s;
    return raw_->erase(key);
  }
  Status get_multi(std::span<const std::string> keys,
                   std::vector<std::optional<std::string>>& values) override {
    if (Status s = note(&Calls::get_multi, {keys.begin(), keys.end()}); !s) return s;
    return raw_->get_multi(keys, values);
  }
  Status set_multi(std::span<const KeyValue> items) override {
    std::vector<std::string> keys;
    for (const auto& item : items) keys.push_back(item.first);
    if (Status s = note(&Calls::set_multi, std::move(keys)); !s) return s;
    return raw_->set_multi(items);
  }
  Status erase_multi(std::span<const std::string> keys) override {
    if (Status s = note(&Calls::erase_multi, {keys.begin(), keys.end()}); !s) return s;
    return raw_->erase_multi(keys);
  }
  std::unique_ptr<CreationMutex> get_mutex(std::string_view key) override {
    (void)note(&Calls::get_mutex, {std::string(key)});
    return std::make_unique<FakeMutex>(mutex_log);
  }
  std::string_view name() const noexcept override { return "counting"; }

  Calls calls() const {
    std::lock_guard lock(mutex_);
    return calls_;
  }
  std::vector<std::string> last_keys() const {
    std::lock_guard lock(mutex_);
    return last_keys_;
  }
  Backend& raw() { return *raw_; }
  void set_failing(bool failing) { failing_ = failing; }
  void set_delay(std::chrono::milliseconds delay) { set_delay_ = delay; }

  const std::shared_ptr<MutexLog> mutex_log = std::make_shared<MutexLog>();

 private:
  Status note(int Calls::*counter, std::vector<std::string> keys) {
    std::lock_guard lock(mutex_);
    ++(calls_.*counter);
    last_keys_ = std::move(keys);
    if (failing_) return Status::error(StatusCode::kIOError, "told to fail", "/fake", EIO);
    return Status::ok();
  }

  mutable std::mutex mutex_;
  Calls calls_;
  std::vector<std::string> last_keys_;
  std::atomic<bool> failing_{false};
  std::chrono::milliseconds set_delay_{0};
  std::unique_ptr<Backend> raw_ = make_memory_backend();
};

// A monotonic clock that moves only when told to, for MemoryTierOptions::now.
class FakeSteadyClock {
 public:
  std::function<SteadyTime()> now() const {
    return [ns = ns_] {
      return SteadyTime(std::chrono::duration_cast<SteadyTime::duration>(
          std::chrono::nanoseconds(ns->load())));
    };
  }
  void advance(std::chrono::nanoseconds d) { *ns_ += d.count(); }

 private:
  std::shared_ptr<std::atomic<std::int64_t>> ns_ =
      std::make_shared<std::atomic<std::int64_t>>(std::int64_t{1} << 40);
};

// A memory backend whose gets and sets can be parked, before or after they
// touch the store, until the test releases them: races made deterministic.
class ParkingBackend final : public Backend {
 public:
  enum class Op { kGet, kSet };
  enum class When { kBefore, kAfter };

  // The next call of `op` not yet parked parks at `when`; returns its ticket.
  std::size_t park_next(Op op, When when) {
    std::lock_guard lock(mutex_);
    parks_.push_back({op, when});
    return parks_.size() - 1;
  }
  void wait_parked(std::size_t ticket) {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [&] { return parks_[ticket].parked; });
  }
  void release(std::size_t ticket) {
    std::lock_guard lock(mutex_);
    parks_[ticket].released = true;
    cv_.notify_all();
  }

  Status get(std::string_view key, std::optional<std::string>& value) override {
    const std::optional<std::size_t> park = claim(Op::kGet);
    wait_if(park, When::kBefore);
    Status s = raw_->get(key, value);
    wait_if(park, When::kAfter);
    return s;
  }
  Status set(std::string_view key, std::string_view value) override {
    const std::optional<std::size_t> park = claim(Op::kSet);
    wait_if(park, When::kBefore);
    Status s = raw_->set(key, value);
    wait_if(park, When::kAfter);
    return s;
  }
  Status erase(std::string_view key) override { return raw_->erase(key); }
  std::unique_ptr<CreationMutex> get_mutex(std::string_view) override {
    return std::make_unique<FakeMutex>(std::make_shared<MutexLog>());
  }
  std::string_view name() const noexcept override { return "parking"; }

  Backend& raw() { return *raw_; }

 private:
  struct Park {
    Op op;
    When when;
    bool claimed = false, parked = false, released = false;
  };

  std::optional<std::size_t> claim(Op op) {
    std::lock_guard lock(mutex_);
    for (std::size_t i = 0; i < parks_.size(); ++i) {
      if (!parks_[i].claimed && parks_[i].op == op) {
        parks_[i].claimed = true;
        return i;
      }
    }
    return std::nullopt;
  }
  void wait_if(const std::optional<std::size_t>& park, When when) {
    if (!park) return;
    std::unique_lock lock(mutex_);
    if (parks_[*park].when != when) return;
    parks_[*park].parked = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return parks_[*park].released; });
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<Park> parks_;
  std::unique_ptr<Backend> raw_ = make_memory_backend();
};

// Prepends its tag to every value written and appends "<tag" to every value
// read, logging each call, so a chain shows the order its links run in.
class TaggingProxy final : public ProxyBackend {
 public:
  TaggingProxy(std::shared_ptr<Backend> inner, std::string tag,
               std::shared_ptr<std::vector<std::string>> log)
      : ProxyBackend(std::move(inner)), tag(std::move(tag)), log_(std::move(log)) {}

  Status set(std::string_view key, std::string_view value) override {
    log_->push_back(tag + ":set");
    return ProxyBackend::set(key, tag + std::string(value));
  }
  Status get(std::string_view key, std::optional<std::string>& value) override {
    log_->push_back(tag + ":get");
    Status s = ProxyBackend::get(key, value);
    if (s && value) *value += "<" + tag;
    return s;
  }

  const std::string tag;

 private:
  std::shared_ptr<std::vector<std::string>> log_;
};

template <typename F>
std::string config_error_of(F&& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  } catch (...) {
    return "<not a ConfigError>";
  }
  return "<no exception>";
}

}  // namespace

// ---- ProxyBackend and chains ----

TEST_CASE("A pass-through proxy forwards every call, the multi forms as multi calls", "[proxy]") {
  auto fake = std::make_shared<CountingBackend>();
  ProxyBackend proxy(fake);
  CHECK(&proxy.inner() == fake.get());
  CHECK(proxy.name() == "counting");
  CHECK(proxy.invalidation_strategy() == fake->invalidation_strategy());

  set(proxy, "a", "1");
  CHECK(fake->calls().set == 1);
  CHECK(get(fake->raw(), "a") == "1");
  CHECK(get(proxy, "a") == "1");
  CHECK(fake->calls().get == 1);

  CHECK(get_multi(proxy, {"a", "b"}) == Values{"1", std::nullopt});
  CHECK(fake->calls().get_multi == 1);
  CHECK(fake->last_keys() == std::vector<std::string>{"a", "b"});

  const std::vector<KeyValue> items = {{"b", "2"}, {"c", "3"}};
  REQUIRE(proxy.set_multi(items));
  CHECK(fake->calls().set_multi == 1);
  CHECK(get(fake->raw(), "c") == "3");

  const std::vector<std::string> doomed = {"a", "c"};
  REQUIRE(proxy.erase_multi(doomed));
  CHECK(fake->calls().erase_multi == 1);
  REQUIRE(proxy.erase("b"));
  CHECK(fake->calls().erase == 1);
  CHECK(get_multi(fake->raw(), {"a", "b", "c"}) == Values(3));

  // Only multi calls reached the fake for multi forms: the base class
  // defaults (loops over single calls) were not used.
  const auto calls = fake->calls();
  CHECK(calls.get == 1);
  CHECK(calls.set == 1);
  CHECK(calls.erase == 1);

  std::unique_ptr<CreationMutex> mutex = proxy.get_mutex("k");
  REQUIRE(mutex);
  CHECK(fake->calls().get_mutex == 1);
  CHECK(fake->last_keys() == std::vector<std::string>{"k"});
  REQUIRE(mutex->try_lock());
  CHECK(fake->mutex_log->try_locks == 1);
  mutex->unlock();
  CHECK(fake->mutex_log->unlocks == 1);

  SECTION("failures come back unchanged") {
    fake->set_failing(true);
    std::optional<std::string> value;
    std::vector<std::optional<std::string>> values;
    const std::vector<std::string> keys = {"a"};
    for (const Status& s : {proxy.get("a", value), proxy.set("a", "x"), proxy.erase("a"),
                            proxy.get_multi(keys, values), proxy.set_multi(items),
                            proxy.erase_multi(keys)}) {
      CHECK(s.code() == StatusCode::kIOError);
      CHECK(s.message() == "told to fail");
      CHECK(s.sys_errno() == EIO);
    }
  }
}

TEST_CASE("A proxy needs an inner backend", "[proxy]") {
  CHECK_THROWS_AS(ProxyBackend(nullptr), ConfigError);
  CHECK_THROWS_AS(StatsProxy(nullptr), ConfigError);
  CHECK_THROWS_AS(MemoryTier(nullptr), ConfigError);
}

TEST_CASE("wrap applies proxies in list order: the first is outermost", "[proxy]") {
  auto fake = std::make_shared<CountingBackend>();
  auto log = std::make_shared<std::vector<std::string>>();
  std::shared_ptr<Backend> chain =
      wrap(fake, {proxy<TaggingProxy>(std::string("a"), log),
                  proxy<TaggingProxy>(std::string("b"), log)});

  set(*chain, "k", "v");
  CHECK(*log == std::vector<std::string>{"a:set", "b:set"});
  // a prepended its tag first, then b prepended its own.
  CHECK(get(fake->raw(), "k") == "bav");

  log->clear();
  // On the way back the innermost proxy touches the value first.
  CHECK(get(*chain, "k") == "bav<b<a");
  CHECK(*log == std::vector<std::string>{"a:get", "b:get"});

  // Calls the tagging proxies do not override pass through both.
  REQUIRE(chain->erase("k"));
  CHECK(fake->calls().erase == 1);
  CHECK(chain->name() == "counting");

  TaggingProxy* outer = find_proxy<TaggingProxy>(*chain);
  REQUIRE(outer != nullptr);
  CHECK(outer->tag == "a");
  auto* inner = dynamic_cast<TaggingProxy*>(&outer->inner());
  REQUIRE(inner != nullptr);
  CHECK(inner->tag == "b");
  CHECK(&inner->inner() == fake.get());
  CHECK(find_proxy<StatsProxy>(*chain) == nullptr);
  CHECK(find_proxy<CountingBackend>(*chain) == fake.get());
}

TEST_CASE("wrap with no proxies returns the backend; bad arguments are ConfigErrors", "[proxy]") {
  auto fake = std::make_shared<CountingBackend>();
  CHECK(wrap(fake, {}) == fake);
  CHECK_THROWS_AS(wrap(nullptr, {}), ConfigError);
  CHECK_THROWS_AS(wrap(fake, {ProxyFactory{}}), ConfigError);
  CHECK_THROWS_AS(wrap(fake, {[](std::shared_ptr<Backend>) { return std::shared_ptr<Backend>(); }}),
                  ConfigError);
}

// ---- StatsProxy ----

TEST_CASE("StatsProxy counts gets, hits, misses, sets, erases and bytes, per key", "[stats]") {
  StatsProxy stats(make_memory_backend());
  set(stats, "a", "12345");
  set(stats, "b", "xy");
  CHECK(get(stats, "a") == "12345");
  CHECK(get(stats, "c") == std::nullopt);
  CHECK(get_multi(stats, {"a", "b", "c"}) == Values{"12345", "xy", std::nullopt});
  const std::vector<KeyValue> items = {{"c", "123"}, {"d", ""}};
  REQUIRE(stats.set_multi(items));
  REQUIRE(stats.erase("a"));
  const std::vector<std::string> doomed = {"b", "never-there"};
  REQUIRE(stats.erase_multi(doomed));

  const BackendStats s = stats.snapshot();
  CHECK(s.gets == 5);
  CHECK(s.hits == 3);
  CHECK(s.misses == 2);
  CHECK(s.sets == 4);
  CHECK(s.erases == 3);
  CHECK(s.bytes_read == 5 + 5 + 2);
  CHECK(s.bytes_written == 5 + 2 + 3 + 0);
  CHECK(s.errors == 0);
  CHECK(s.latency.get.calls == 2);
  CHECK(s.latency.set.calls == 2);
  CHECK(s.latency.erase.calls == 1);
  CHECK(s.latency.get_multi.calls == 1);
  CHECK(s.latency.set_multi.calls == 1);
  CHECK(s.latency.erase_multi.calls == 1);
  for (const LatencyStats& l : {s.latency.get, s.latency.set, s.latency.erase,
                                s.latency.get_multi, s.latency.set_multi, s.latency.erase_multi}) {
    CHECK(l.max_ns <= l.total_ns);
  }

  stats.reset();
  const BackendStats z = stats.snapshot();
  CHECK(z.gets + z.hits + z.misses + z.sets + z.erases + z.bytes_read + z.bytes_written +
            z.errors ==
        0);
  for (const LatencyStats& l : {z.latency.get, z.latency.set, z.latency.erase,
                                z.latency.get_multi, z.latency.set_multi, z.latency.erase_multi}) {
    CHECK(l.calls + l.total_ns + l.max_ns == 0);
  }
  // Counting resumes after a reset.
  CHECK(get(stats, "c") == "123");
  CHECK(stats.snapshot().hits == 1);
}

TEST_CASE("StatsProxy counts failed calls as errors, not as hits or misses", "[stats]") {
  auto fake = std::make_shared<CountingBackend>();
  StatsProxy stats(fake);
  fake->set_failing(true);
  std::optional<std::string> value;
  std::vector<std::optional<std::string>> values;
  const std::vector<std::string> keys = {"a", "b", "c"};
  const std::vector<KeyValue> items = {{"a", "1234"}, {"b", "5"}};
  CHECK(stats.get("a", value).code() == StatusCode::kIOError);
  CHECK(stats.get_multi(keys, values).code() == StatusCode::kIOError);
  CHECK(stats.set("a", "xyz").code() == StatusCode::kIOError);
  CHECK(stats.set_multi(items).code() == StatusCode::kIOError);
  CHECK(stats.erase("a").code() == StatusCode::kIOError);
  CHECK(stats.erase_multi(keys).code() == StatusCode::kIOError);

  const BackendStats s = stats.snapshot();
  CHECK(s.errors == 6);
  CHECK(s.gets == 4);
  CHECK(s.hits == 0);
  CHECK(s.misses == 0);
  CHECK(s.bytes_read == 0);
  CHECK(s.sets == 3);
  CHECK(s.bytes_written == 3 + 4 + 1);
  CHECK(s.erases == 4);
  CHECK(s.latency.get.calls == 1);
  CHECK(s.latency.erase_multi.calls == 1);

  fake->set_failing(false);
  set(stats, "a", "ok");
  CHECK(get(stats, "a") == "ok");
  CHECK(stats.snapshot().errors == 6);
  CHECK(stats.snapshot().hits == 1);
}

TEST_CASE("StatsProxy latency covers the time spent in the inner backend", "[stats]") {
  auto fake = std::make_shared<CountingBackend>();
  StatsProxy stats(fake);
  fake->set_delay(2ms);  // sleep_for sleeps at least this long on the steady clock
  set(stats, "k", "v");
  const BackendStats s = stats.snapshot();
  CHECK(s.latency.set.calls == 1);
  CHECK(s.latency.set.max_ns >= 2'000'000);
  CHECK(s.latency.set.total_ns == s.latency.set.max_ns);
}

TEST_CASE("StatsProxy counts exactly from 8 threads", "[stats]") {
  StatsProxy stats(make_memory_backend());
  constexpr int kThreads = 8, kRounds = 500;
  std::atomic<bool> done{false};
  std::atomic<int> wrong{0};
  // A reader of snapshots alongside the traffic: counters only grow.
  std::thread watcher([&] {
    std::uint64_t last = 0;
    while (!done) {
      const std::uint64_t now = stats.snapshot().gets;
      if (now < last) ++wrong;
      last = now;
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRounds; ++i) {
        const std::string key = std::to_string(t) + ":" + std::to_string(i);
        const std::string value(static_cast<std::size_t>(i % 7 + 1), 'x');
        std::optional<std::string> got;
        std::vector<std::optional<std::string>> values;
        const std::vector<std::string> keys = {key, "none:" + key};
        if (!stats.set(key, value)) ++wrong;
        if (!stats.get(key, got) || got != value) ++wrong;
        if (!stats.get("none:" + key, got) || got) ++wrong;
        if (!stats.get_multi(keys, values) || values[0] != value || values[1]) ++wrong;
      }
    });
  }
  for (auto& t : threads) t.join();
  done = true;
  watcher.join();
  CHECK(wrong == 0);

  std::uint64_t value_bytes = 0;
  for (int i = 0; i < kRounds; ++i) value_bytes += static_cast<std::uint64_t>(i % 7 + 1);
  value_bytes *= kThreads;
  const BackendStats s = stats.snapshot();
  CHECK(s.sets == kThreads * kRounds);
  CHECK(s.bytes_written == value_bytes);
  CHECK(s.gets == 4 * kThreads * kRounds);
  CHECK(s.hits == 2 * kThreads * kRounds);
  CHECK(s.misses == 2 * kThreads * kRounds);
  CHECK(s.bytes_read == 2 * value_bytes);
  CHECK(s.latency.get.calls == 2 * kThreads * kRounds);
  CHECK(s.latency.get_multi.calls == kThreads * kRounds);
  CHECK(s.latency.set.calls == kThreads * kRounds);
  CHECK(s.errors == 0);
}

TEST_CASE("A Region over a StatsProxy over memory: the counts match the region's calls",
          "[stats][region]") {
  auto stats = std::make_shared<StatsProxy>(make_memory_backend());
  Region region({.name = "counted"}, stats);

  region.set<std::string>("a", "alpha");
  const std::uint64_t envelope_a = stats->snapshot().bytes_written;
  region.set<std::string>("b", "bravo");
  const std::uint64_t envelope_b = stats->snapshot().bytes_written - envelope_a;
  CHECK(region.get<std::string>("a") == "alpha");  // hit
  CHECK(region.get<std::string>("c") == std::nullopt);  // miss
  region.erase("a");
  CHECK(region.get<std::string>("a") == std::nullopt);  // miss
  int created = 0;
  const auto make_delta = [&] {
    ++created;
    return std::string("delta");
  };
  // A miss: one read, then (under the creation lock) the re-read, then the write.
  const std::uint64_t before_create = stats->snapshot().bytes_written;
  CHECK(region.get_or_create<std::string>("d", make_delta) == "delta");
  const std::uint64_t envelope_d = stats->snapshot().bytes_written - before_create;
  CHECK(region.get_or_create<std::string>("d", make_delta) == "delta");  // hit
  CHECK(created == 1);

  const BackendStats s = stats->snapshot();
  const RegionStats r = region.stats();
  CHECK(s.sets == 3);
  CHECK(s.erases == 1);
  CHECK(s.gets == 6);
  CHECK(s.hits == 2);
  CHECK(s.misses == 4);
  CHECK(s.errors == 0);
  CHECK(r.hits == s.hits);
  CHECK(r.misses + r.creations == s.misses);  // each creation re-read once more
  CHECK(r.store_errors == s.errors);
  // Every byte read back is an envelope the region wrote.
  CHECK(s.bytes_read == envelope_a + envelope_d);
  CHECK(s.bytes_written == envelope_a + envelope_b + envelope_d);
}

// ---- MemoryTier in one process ----

TEST_CASE("MemoryTier serves a copy younger than max_age without the inner backend",
          "[memory_tier]") {
  auto fake = std::make_shared<CountingBackend>();
  FakeSteadyClock clock;
  MemoryTier tier(fake, {.max_age = 10s, .now = clock.now()});
  set(fake->raw(), "k", "v1");

  CHECK(get(tier, "k") == "v1");
  CHECK(fake->calls().get == 1);
  CHECK(get(tier, "k") == "v1");
  CHECK(fake->calls().get == 1);
  CHECK(tier.size() == 1);
  CHECK(tier.bytes() == 1 + 2);

  set(fake->raw(), "k", "v2");  // as another process would
  clock.advance(10s - 1ns);
  CHECK(get(tier, "k") == "v1");
  CHECK(fake->calls().get == 1);

  clock.advance(1ns);  // the copy is max_age old: read through
  CHECK(get(tier, "k") == "v2");
  CHECK(fake->calls().get == 2);
  CHECK(get(tier, "k") == "v2");  // refreshed
  CHECK(fake->calls().get == 2);

  SECTION("misses are not copied") {
    CHECK(get(tier, "absent") == std::nullopt);
    CHECK(get(tier, "absent") == std::nullopt);
    CHECK(fake->calls().get == 4);
  }
  SECTION("a key gone from the store loses its copy at the next read-through") {
    REQUIRE(fake->raw().erase("k"));
    clock.advance(10s);
    CHECK(get(tier, "k") == std::nullopt);
    CHECK(tier.size() == 0);
    CHECK(tier.bytes() == 0);
  }
  SECTION("a failed read-through returns the failure") {
    clock.advance(10s);
    fake->set_failing(true);
    std::optional<std::string> value;
    CHECK(tier.get("k", value).code() == StatusCode::kIOError);
    fake->set_failing(false);
    CHECK(get(tier, "k") == "v2");
  }
}

TEST_CASE("MemoryTier writes through and reads its own writes at once", "[memory_tier]") {
  auto fake = std::make_shared<CountingBackend>();
  FakeSteadyClock clock;
  MemoryTier tier(fake, {.max_age = 10s, .now = clock.now()});

  set(fake->raw(), "k", "old");
  CHECK(get(tier, "k") == "old");  // copied
  set(tier, "k", "mine");
  CHECK(fake->calls().set == 1);
  CHECK(get(fake->raw(), "k") == "mine");
  CHECK(get(tier, "k") == "mine");
  CHECK(fake->calls().get == 1);  // the write refreshed the copy

  REQUIRE(tier.erase("k"));
  CHECK(fake->calls().erase == 1);
  CHECK(get(fake->raw(), "k") == std::nullopt);
  CHECK(get(tier, "k") == std::nullopt);
  CHECK(fake->calls().get == 2);  // no copy left: read through

  SECTION("a failed write leaves no copy") {
    set(tier, "f", "1");
    fake->set_failing(true);
    CHECK(tier.set("f", "2").code() == StatusCode::kIOError);
    fake->set_failing(false);
    CHECK(get(tier, "f") == "1");
    CHECK(fake->calls().get == 3);
  }

  SECTION("multi forms") {
    const std::vector<KeyValue> items = {{"m1", "a"}, {"m2", "b"}};
    REQUIRE(tier.set_multi(items));
    CHECK(fake->calls().set_multi == 1);
    CHECK(get_multi(fake->raw(), {"m1", "m2"}) == Values{"a", "b"});

    set(fake->raw(), "x", "from store");
    CHECK(get_multi(tier, {"m1", "x", "m2", "y"}) ==
          Values{"a", "from store", "b", std::nullopt});
    CHECK(fake->calls().get_multi == 1);
    // Only the keys without a copy went to the store.
    CHECK(fake->last_keys() == std::vector<std::string>{"x", "y"});
    CHECK(get_multi(tier, {"x", "m2"}) == Values{"from store", "b"});
    CHECK(fake->calls().get_multi == 1);

    const std::vector<std::string> doomed = {"m1", "x"};
    REQUIRE(tier.erase_multi(doomed));
    CHECK(fake->calls().erase_multi == 1);
    CHECK(get_multi(tier, {"m1", "x", "m2"}) == Values{std::nullopt, std::nullopt, "b"});
    CHECK(fake->calls().get_multi == 2);
    CHECK(fake->last_keys() == std::vector<std::string>{"m1", "x"});

    // A key written twice in one batch keeps the last value, as the store does.
    const std::vector<KeyValue> twice = {{"d", "1"}, {"d", "2"}};
    REQUIRE(tier.set_multi(twice));
    CHECK(get(fake->raw(), "d") == "2");
    CHECK(get(tier, "d") == "2");
  }
}

TEST_CASE("MemoryTier keeps within max_entries and max_bytes, dropping the least recently used",
          "[memory_tier]") {
  auto fake = std::make_shared<CountingBackend>();
  FakeSteadyClock clock;
  for (const char* key : {"a", "b", "c", "d"}) set(fake->raw(), key, "v");

  SECTION("max_entries") {
    MemoryTier tier(fake, {.max_age = 10s, .max_entries = 3, .now = clock.now()});
    for (const char* key : {"a", "b", "c"}) CHECK(get(tier, key) == "v");
    CHECK(fake->calls().get == 3);
    CHECK(get(tier, "a") == "v");  // now b is the least recently used
    CHECK(fake->calls().get == 3);
    CHECK(get(tier, "d") == "v");
    CHECK(fake->calls().get == 4);
    CHECK(tier.size() == 3);
    for (const char* key : {"a", "c", "d"}) CHECK(get(tier, key) == "v");
    CHECK(fake->calls().get == 4);
    CHECK(get(tier, "b") == "v");  // evicted: read through
    CHECK(fake->calls().get == 5);
    CHECK(tier.size() == 3);
  }

  SECTION("max_bytes") {
    MemoryTier tier(fake, {.max_age = 10s, .max_bytes = 100, .now = clock.now()});
    const std::string value(30, 'x');  // 32 bytes with a two-byte key
    for (int i = 0; i < 4; ++i) set(tier, "k" + std::to_string(i), value);
    CHECK(tier.size() == 3);
    CHECK(tier.bytes() == 96);
    const int before = fake->calls().get;
    for (int i = 1; i < 4; ++i) CHECK(get(tier, "k" + std::to_string(i)) == value);
    CHECK(fake->calls().get == before);
    CHECK(get(tier, "k0") == value);  // the oldest was dropped
    CHECK(fake->calls().get == before + 1);
    CHECK(tier.bytes() <= 100);

    // A value that alone exceeds max_bytes is never copied, and evicts nothing.
    const std::string big(200, 'b');
    set(tier, "big", big);
    CHECK(get(tier, "big") == big);
    CHECK(get(tier, "big") == big);
    CHECK(fake->calls().get == before + 3);
    CHECK(tier.size() == 3);
  }
}

TEST_CASE("MemoryTier rejects out-of-range options", "[memory_tier]") {
  auto inner = std::shared_ptr<Backend>(make_memory_backend());
  CHECK_THAT(config_error_of([&] { MemoryTier(inner, {.max_age = 0s}); }),
             Catch::Contains("'max_age': must be above 0"));
  CHECK_THAT(config_error_of([&] { MemoryTier(inner, {.max_age = -1s}); }),
             Catch::Contains("'max_age'"));
  CHECK_THAT(config_error_of([&] { MemoryTier(inner, {.max_entries = 0}); }),
             Catch::Contains("'max_entries'"));
  CHECK_THAT(config_error_of([&] { MemoryTier(inner, {.max_bytes = 0}); }),
             Catch::Contains("'max_bytes'"));
  MemoryTier defaults(inner);
  CHECK(defaults.options().max_age == 1s);
  CHECK(defaults.options().max_entries == 10000);
  CHECK(defaults.options().max_bytes == std::uint64_t{64} << 20);
  CHECK(defaults.options().now);
}

TEST_CASE("MemoryTier drops its copy when the key's creation lock is tried", "[memory_tier]") {
  auto fake = std::make_shared<CountingBackend>();
  FakeSteadyClock clock;
  MemoryTier tier(fake, {.max_age = 10s, .now = clock.now()});
  set(fake->raw(), "k", "v1");
  CHECK(get(tier, "k") == "v1");
  set(fake->raw(), "k", "v2");

  std::unique_ptr<CreationMutex> mutex = tier.get_mutex("k");
  REQUIRE(mutex);
  CHECK(fake->calls().get_mutex == 1);
  CHECK_FALSE(mutex->is_locked_anywhere());  // asking forgets nothing
  CHECK(fake->mutex_log->queries == 1);
  CHECK(get(tier, "k") == "v1");

  REQUIRE(mutex->try_lock());
  CHECK(fake->mutex_log->try_locks == 1);
  CHECK(get(tier, "k") == "v2");  // the re-read under the lock reaches the store
  mutex->unlock();
  CHECK(fake->mutex_log->unlocks == 1);

  set(fake->raw(), "k", "v3");
  CHECK(get(tier, "k") == "v2");
  REQUIRE(tier.get_mutex("k")->lock(std::nullopt));
  CHECK(fake->mutex_log->locks == 1);
  CHECK(get(tier, "k") == "v3");

  // Over a backend without creation locks there is nothing to wrap.
  MemoryTier over_null(make_null_backend());
  CHECK(over_null.get_mutex("k") == nullptr);
}

TEST_CASE("MemoryTier: a read-through that overlaps a write does not copy what it read",
          "[memory_tier]") {
  using Op = ParkingBackend::Op;
  using When = ParkingBackend::When;
  auto inner = std::make_shared<ParkingBackend>();
  FakeSteadyClock clock;  // never advanced: a wrong copy would be served on
  MemoryTier tier(inner, {.max_age = 1h, .now = clock.now()});
  set(inner->raw(), "k", "v1");

  SECTION("a write of the key while the read is under way") {
    const auto parked_read = inner->park_next(Op::kGet, When::kAfter);
    std::optional<std::string> read;
    std::thread reader([&] { (void)tier.get("k", read); });
    inner->wait_parked(parked_read);  // the reader holds v1, not yet copied
    set(tier, "k", "v2");
    inner->release(parked_read);
    reader.join();
    CHECK(read == "v1");  // it began before the write ended: either value was right
    CHECK(get(tier, "k") == "v2");  // but this process must now read its write
    CHECK(get(inner->raw(), "k") == "v2");
  }

  SECTION("a write of the key under way when the read starts") {
    const auto parked_write = inner->park_next(Op::kSet, When::kBefore);
    const auto parked_read = inner->park_next(Op::kGet, When::kAfter);
    std::thread writer([&] { (void)tier.set("k", "v2"); });
    inner->wait_parked(parked_write);
    std::thread reader([&] {
      std::optional<std::string> read;
      (void)tier.get("k", read);
    });
    inner->wait_parked(parked_read);  // read v1: the write has not landed
    inner->release(parked_write);
    writer.join();
    inner->release(parked_read);
    reader.join();
    CHECK(get(inner->raw(), "k") == "v2");
    CHECK(get(tier, "k") == "v2");
  }

  SECTION("a creation lock taken while the read is under way") {
    const auto parked_read = inner->park_next(Op::kGet, When::kAfter);
    std::thread reader([&] {
      std::optional<std::string> read;
      (void)tier.get("k", read);
    });
    inner->wait_parked(parked_read);
    set(inner->raw(), "k", "v2");  // another process's creator stores v2
    REQUIRE(tier.get_mutex("k")->try_lock());
    inner->release(parked_read);
    reader.join();
    CHECK(get(tier, "k") == "v2");  // the re-read under the lock reaches the store
  }
}

TEST_CASE("MemoryTier: overlapping writes of one key leave no copy that disagrees with the store",
          "[memory_tier]") {
  using Op = ParkingBackend::Op;
  using When = ParkingBackend::When;
  auto inner = std::make_shared<ParkingBackend>();
  FakeSteadyClock clock;
  MemoryTier tier(inner, {.max_age = 1h, .now = clock.now()});

  // The first writer parks before or after its store write; the second
  // writes meanwhile. Either way the store ends with one of the values and
  // the tier must serve that one.
  const When when = GENERATE(When::kBefore, When::kAfter);
  INFO((when == When::kBefore ? "first writer parked before its write"
                              : "first writer parked after its write"));
  const auto parked_first = inner->park_next(Op::kSet, when);
  std::thread first([&] { (void)tier.set("k", "first"); });
  inner->wait_parked(parked_first);
  set(tier, "k", "second");
  inner->release(parked_first);
  first.join();
  const std::optional<std::string> stored = get(inner->raw(), "k");
  CHECK(stored == (when == When::kBefore ? "first" : "second"));
  CHECK(get(tier, "k") == stored);
}

TEST_CASE("MemoryTier from 8 threads: own writes read back, copies agree with the store",
          "[memory_tier]") {
  auto inner = std::shared_ptr<Backend>(make_memory_backend());
  FakeSteadyClock clock;  // never advanced: a wrong copy would be served forever
  MemoryTier tier(inner, {.max_age = 1h, .max_entries = 40, .now = clock.now()});
  constexpr int kThreads = 8, kRounds = 2000;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::optional<std::string> got;
      std::vector<std::optional<std::string>> values;
      for (int i = 0; i < kRounds; ++i) {
        const std::string own = "own:" + std::to_string(t) + ":" + std::to_string(i % 8);
        const std::string shared = "shared:" + std::to_string(i % 3);
        const std::string value = std::to_string(t) + "/" + std::to_string(i);
        // Only this thread writes `own`, so it must read back what it wrote.
        if (!tier.set(own, value)) ++wrong;
        if (!tier.get(own, got) || got != value) ++wrong;
        switch (i % 4) {
          case 0: (void)tier.set(shared, value); break;
          case 1: (void)tier.get(shared, got); break;
          case 2: {
            const std::vector<KeyValue> items = {{shared, value}, {own, value}};
            (void)tier.set_multi(items);
            break;
          }
          case 3: {
            const std::vector<std::string> keys = {shared, own};
            if (!tier.get_multi(keys, values) || values[1] != value) ++wrong;
            if (i % 8 == 7) (void)tier.erase(shared);
            break;
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(wrong == 0);
  CHECK(tier.size() <= 40);

  std::vector<std::string> keys;
  for (int i = 0; i < 3; ++i) keys.push_back("shared:" + std::to_string(i));
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < 8; ++i) {
      keys.push_back("own:" + std::to_string(t) + ":" + std::to_string(i));
    }
  }
  for (const std::string& key : keys) {
    INFO(key);
    CHECK(get(tier, key) == get(*inner, key));
  }
}

TEST_CASE("A Region over MemoryTiers on lmdb: one creation per expiry still holds",
          "[memory_tier][region]") {
  TempDir dir;
  auto wall = std::make_shared<FakeClock>();
  FakeSteadyClock steady;  // never advanced: the tiers' copies never age out
  const auto tiered = [&] {
    return std::make_shared<MemoryTier>(
        open_lmdb_backend({.path = dir.path(), .region = "r", .durability = Durability::kNoSync}),
        MemoryTierOptions{.max_age = 1h, .now = steady.now()});
  };
  // Two regions with their own tiers on one directory, as two processes have.
  const RegionOptions options{.name = "r", .expiration_time = 10s, .clock = wall};
  Region a(options, tiered());
  Region b(options, tiered());
  int created = 0;
  const auto creator = [&](std::string value) {
    return [&created, value] {
      ++created;
      return value;
    };
  };

  CHECK(a.get_or_create<std::string>("k", creator("v1")) == "v1");
  wall->advance(11s);
  CHECK(b.get_or_create<std::string>("k", creator("v2")) == "v2");
  CHECK(created == 2);
  // a's copy is the expired v1; the region judges it stale, takes the lock,
  // and its re-read reaches lmdb and b's fresh value instead of creating.
  CHECK(a.get_or_create<std::string>("k", creator("v3")) == "v2");
  CHECK(created == 2);
  CHECK(a.get<std::string>("k") == "v2");
}

// ---- wrap_from_config ----

TEST_CASE("wrap_from_config builds the chain a string map describes", "[proxy][config]") {
  auto base = std::shared_ptr<Backend>(make_memory_backend());
  CHECK(wrap_from_config(base, {{"cache.backend", "memory"}}, "cache.") == base);
  CHECK(wrap_from_config(base, {{"cache.wrap", " "}}, "cache.") == base);

  const ConfigMap config = {{"cache.backend", "memory"},
                            {"cache.wrap", "stats, memory_tier"},
                            {"cache.wrap.memory_tier.max_age", "2s"},
                            {"cache.wrap.memory_tier.max_entries", "5"},
                            {"cache.wrap.memory_tier.max_bytes", "1KiB"}};
  std::shared_ptr<Backend> chain = wrap_from_config(base, config, "cache.");
  auto* stats = dynamic_cast<StatsProxy*>(chain.get());
  REQUIRE(stats != nullptr);
  auto* tier = dynamic_cast<MemoryTier*>(&stats->inner());
  REQUIRE(tier != nullptr);
  CHECK(&tier->inner() == base.get());
  CHECK(tier->options().max_age == 2s);
  CHECK(tier->options().max_entries == 5);
  CHECK(tier->options().max_bytes == 1024);

  // With make_backend_from_config, as an application reads its config file.
  std::shared_ptr<Backend> built =
      wrap_from_config(make_backend_from_config(config, "cache."), config, "cache.");
  set(*built, "k", "v");
  CHECK(get(*built, "k") == "v");
  CHECK(find_proxy<StatsProxy>(*built)->snapshot().hits == 1);
  CHECK(find_proxy<MemoryTier>(*built)->size() == 1);
}

TEST_CASE("wrap_from_config names the bad key", "[proxy][config]") {
  auto base = std::shared_ptr<Backend>(make_memory_backend());
  const auto error = [&](ConfigMap config) {
    return config_error_of([&] { wrap_from_config(base, config, "cache."); });
  };
  CHECK_THAT(error({{"cache.wrap", "stats, tier"}}),
             Catch::Contains("'cache.wrap': unknown proxy 'tier'") &&
                 Catch::Contains("known proxies: memory_tier, stats"));
  CHECK_THAT(error({{"cache.wrap", "stats,,memory_tier"}}), Catch::Contains("unknown proxy ''"));
  CHECK_THAT(error({{"cache.wrap", "memory_tier"}, {"cache.wrap.memory_tier.max_age", "soon"}}),
             Catch::Contains("'max_age'") &&
                 Catch::Contains("config keys 'cache.wrap.memory_tier.*'"));
  CHECK_THAT(error({{"cache.wrap", "memory_tier"}, {"cache.wrap.memory_tier.max_age", "0s"}}),
             Catch::Contains("'max_age': must be above 0"));
  CHECK_THAT(error({{"cache.wrap", "memory_tier"}, {"cache.wrap.memory_tier.max_agee", "2s"}}),
             Catch::Contains("unknown memory tier option 'max_agee'"));
  CHECK_THAT(error({{"cache.wrap", "stats"}, {"cache.wrap.memory_tier.max_age", "2s"}}),
             Catch::Contains("'cache.wrap.memory_tier.max_age' configures proxy 'memory_tier'") &&
                 Catch::Contains("does not list"));
  CHECK_THAT(error({{"cache.wrap.memory_tier.max_age", "2s"}}), Catch::Contains("does not list"));
  CHECK_THAT(error({{"cache.wrap", "stats"}, {"cache.wrap.stats.x", "1"}}),
             Catch::Contains("unknown stats proxy option 'x'"));
  CHECK_THAT(error({{"cache.wrap", "stats"}, {"cache.wrap.foo.x", "1"}}),
             Catch::Contains("config key 'cache.wrap.foo.x' is not"));
  CHECK_THAT(error({{"cache.wrap", "stats"}, {"cache.wrap.stats", "1"}}),
             Catch::Contains("config key 'cache.wrap.stats' is not"));
}

// ---- MemoryTier across processes ----

namespace {

// One byte through a pipe from one process to another.
class Signal {
 public:
  Signal() {
    if (::pipe2(fds_, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
  }
  ~Signal() {
    close_end(0);
    close_end(1);
  }
  Signal(const Signal&) = delete;
  Signal& operator=(const Signal&) = delete;

  // After fork() each side keeps only its end, so a reader sees end-of-file,
  // not a hang, when the writer dies.
  void keep_sending_end() { close_end(0); }
  void keep_waiting_end() { close_end(1); }

  void send() {
    const char c = 1;
    if (::write(fds_[1], &c, 1) != 1) throw std::runtime_error("signal write failed");
  }
  // True when the byte came; false when the sender closed without sending.
  bool wait() {
    char c = 0;
    ssize_t n;
    while ((n = ::read(fds_[0], &c, 1)) < 0 && errno == EINTR) {
    }
    return n == 1;
  }

 private:
  void close_end(int i) {
    if (fds_[i] >= 0) ::close(fds_[i]);
    fds_[i] = -1;
  }
  int fds_[2];
};

// A fork()ed child running `body` (its exit status is the return value, 99
// for an exception); killed and reaped on destruction if not yet reaped.
class Child {
 public:
  explicit Child(const std::function<int()>& body) {
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      int rc = 99;
      try {
        rc = body();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "child: %s\n", e.what());
      }
      _exit(rc);
    }
  }
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      (void)exit_status();
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  // The exit status (0 = success), or -1 when the child did not exit normally.
  int exit_status() {
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

 private:
  pid_t pid_ = -1;
};

LmdbOptions lmdb_options(const TempDir& dir) {
  return {.path = dir.path(), .region = "tier", .durability = Durability::kNoSync};
}

// Process B: when told, writes k = v2 through its own tier over its own lmdb
// backend, then says so.
int write_v2_when_told(const TempDir& dir, Signal& go, Signal& done) {
  go.keep_waiting_end();
  done.keep_sending_end();
  if (!go.wait()) return 2;
  MemoryTier tier(open_lmdb_backend(lmdb_options(dir)));
  if (!tier.set("k", "v2")) return 3;
  std::optional<std::string> value;
  if (!tier.get("k", value) || value != "v2") return 4;
  done.send();
  return 0;
}

}  // namespace

TEST_CASE("Across processes: A serves its copy until max_age, then sees B's write",
          "[memory_tier][multiprocess]") {
  TempDir dir;
  Signal go, done;
  Child b([&] { return write_v2_when_told(dir, go, done); });
  go.keep_sending_end();
  done.keep_waiting_end();

  // Process A (this one): a plain lmdb backend, and a tier in front of it.
  std::shared_ptr<Backend> plain = open_lmdb_backend(lmdb_options(dir));
  FakeSteadyClock clock;
  MemoryTier tier(plain, {.max_age = 5s, .now = clock.now()});
  set(*plain, "k", "v1");
  CHECK(get(tier, "k") == "v1");  // copied now

  go.send();
  REQUIRE(done.wait());  // B has committed v2
  CHECK(get(*plain, "k") == "v2");  // without the tier: at once

  CHECK(get(tier, "k") == "v1");
  clock.advance(5s - 1ns);
  CHECK(get(tier, "k") == "v1");  // still younger than max_age
  clock.advance(1ns);
  CHECK(get(tier, "k") == "v2");  // max_age old: read through
  CHECK(b.exit_status() == 0);
}

TEST_CASE("Across processes on the real steady clock: v1 while young, v2 once max_age passed",
          "[memory_tier][multiprocess]") {
  using Steady = std::chrono::steady_clock;
  constexpr auto kMaxAge = 300ms;
  TempDir dir;
  Signal go, done;
  Child b([&] { return write_v2_when_told(dir, go, done); });
  go.keep_sending_end();
  done.keep_waiting_end();

  std::shared_ptr<Backend> plain = open_lmdb_backend(lmdb_options(dir));
  MemoryTier tier(plain, {.max_age = kMaxAge});
  set(*plain, "k", "v1");
  // The copy is taken between these two instants.
  const auto copy_not_before = Steady::now();
  CHECK(get(tier, "k") == "v1");
  const auto copy_not_after = Steady::now();

  go.send();
  REQUIRE(done.wait());
  CHECK(get(*plain, "k") == "v2");

  // Poll until the copy is surely max_age old. Each read is checked only
  // against what its timing makes certain; nothing asserts how long anything
  // took.
  bool seen_v2 = false;
  for (;;) {
    const auto start = Steady::now();
    const std::optional<std::string> value = get(tier, "k");
    const auto end = Steady::now();
    INFO("read " << std::chrono::duration_cast<std::chrono::microseconds>(start - copy_not_before)
                         .count()
                 << " us after the copy");
    if (end - copy_not_before < kMaxAge) CHECK(value == "v1");  // the copy was young throughout
    if (seen_v2) CHECK(value == "v2");  // the refreshed copy holds v2
    seen_v2 = seen_v2 || value == "v2";
    if (start - copy_not_after >= kMaxAge) {
      CHECK(value == "v2");  // the copy was max_age old before this read
      break;
    }
    std::this_thread::sleep_for(5ms);
  }
  CHECK(b.exit_status() == 0);
}
