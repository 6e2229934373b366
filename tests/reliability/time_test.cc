// Time: the wall clock is injected (RegionOptions::clock) and stepped, and
// the cache neither keeps entries fresh too long, nor regenerates a key
// twice, nor lets a wall-clock step change the length of a lock wait.
//
//   - Stepped back. The engine judges an entry whose created_at is more than
//     future_tolerance (60 s by default) ahead of now as stale at once
//     (spec §3). Entries created at T, read at T-1h, are regenerated on their
//     next get_or_create (get misses them), once per key; the new entries,
//     created at T-1h, are fresh until T-1h+expiration_time and stale from
//     then on: an hour earlier than the old ones would have been. A step back
//     of at most future_tolerance leaves entries fresh for the rest of their
//     expiration time, so no entry is ever fresh for longer than
//     expiration_time + future_tolerance of clock time after a step back:
//     both edges are checked to the nanosecond.
//   - Stepped forward a day. 200 keys expiring after an hour; the clock jumps
//     a day; 3 processes of 4 threads each call get_or_create on every key at
//     once. Every key's creator runs exactly once across all of them (the
//     others are served the old value or find the new one), every call
//     returns a value, and later reads are hits.
//   - Lock waits. A creation-lock wait with lock_timeout 300 ms, on a missing
//     key and on a stale key with wait_for_fresh, over the lmdb backend (OFD
//     locks) and the memory backend (in-process locks), while another thread
//     moves the injected wall clock by +1 day or -1 day in steps: the wait
//     ends after 250 ms to 5 s by std::chrono::steady_clock. A wait timed by
//     the injected clock would end at once (+1 day) or never (-1 day).
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "dogpile/dogpile.h"
#include "process_util.h"
#include "reliability_util.h"
#include "test_util.h"

using namespace dogpile;
using namespace dogpile::test;
using namespace std::chrono_literals;

namespace {

// A wall clock that can be set anywhere, backwards included.
class SettableClock final : public Clock {
 public:
  explicit SettableClock(WallTime start) : ns_(to_ns(start)) {}
  WallTime now() const override {
    return WallTime(std::chrono::duration_cast<WallTime::duration>(
        std::chrono::nanoseconds(ns_.load(std::memory_order_relaxed))));
  }
  void set(WallTime t) { ns_.store(to_ns(t), std::memory_order_relaxed); }
  void advance(std::chrono::nanoseconds d) { ns_.fetch_add(d.count(), std::memory_order_relaxed); }

 private:
  static std::int64_t to_ns(WallTime t) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  }
  std::atomic<std::int64_t> ns_;
};

// Some fixed day in 2024, far from the real clock so nothing falls back on it.
const WallTime kStart = WallTime(std::chrono::seconds(1'718'000'000));

ConfigMap lmdb_args(const std::string& dir) {
  return {{"path", dir}, {"durability", "nosync"}};
}

RegionOptions options_with(std::shared_ptr<Clock> clock, Duration expiration) {
  RegionOptions options;
  options.name = "time";
  options.expiration_time = expiration;
  options.clock = std::move(clock);
  options.logger = [](LogLevel, std::string_view) {};
  return options;
}

std::string key_name(int i) { return "key-" + std::to_string(i); }

}  // namespace

TEST_CASE("a wall clock stepped back does not keep entries fresh for the step", "[time]") {
  constexpr int kKeys = 50;
  const Duration expiration = 10min;
  auto clock = std::make_shared<SettableClock>(kStart);
  TempDir dir;
  Region region(options_with(clock, expiration), "lmdb", lmdb_args(dir / "cache"));
  const Duration tolerance = region.options().future_tolerance;
  REQUIRE(tolerance == Duration(60s));

  std::vector<int> creations(kKeys, 0);
  auto get_all = [&](int generation) {
    for (int i = 0; i < kKeys; ++i) {
      const std::string v = region.get_or_create<std::string>(key_name(i), [&] {
        ++creations[i];
        return "gen" + std::to_string(generation) + ":" + key_name(i);
      });
      REQUIRE(v.rfind("gen", 0) == 0);
    }
  };
  auto total = [&] {
    int n = 0;
    for (int c : creations) n += c;
    return n;
  };
  auto fresh_count = [&] {
    int n = 0;
    for (int i = 0; i < kKeys; ++i) n += region.get<std::string>(key_name(i)).has_value();
    return n;
  };

  get_all(1);  // created at T
  REQUIRE(total() == kKeys);

  SECTION("a step back of more than future_tolerance makes the entries stale at once") {
    clock->set(kStart - 1h);
    CHECK(fresh_count() == 0);
    get_all(2);  // each key regenerated once, created at T-1h
    CHECK(total() == 2 * kKeys);
    CHECK(std::all_of(creations.begin(), creations.end(), [](int c) { return c == 2; }));
    get_all(3);
    CHECK(total() == 2 * kKeys);  // the regenerated entries are fresh: no creator runs
    // Fresh until T-1h + expiration, stale from then on (not from T + expiration).
    clock->set(kStart - 1h + expiration - 1ns);
    CHECK(fresh_count() == kKeys);
    clock->set(kStart - 1h + expiration);
    CHECK(fresh_count() == 0);
    get_all(4);
    CHECK(total() == 3 * kKeys);
    figure("time[step back 1h]: %d keys created at T read at T-1h: 0 fresh, each regenerated "
           "once; the new entries expire at T-1h+%lld s",
           kKeys, static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(expiration).count()));
  }

  SECTION("the edge of future_tolerance is exact") {
    clock->set(kStart - tolerance);  // created_at - now == tolerance: not from the future
    CHECK(fresh_count() == kKeys);
    clock->set(kStart - tolerance - 1ns);
    CHECK(fresh_count() == 0);
  }

  SECTION("a step back within future_tolerance keeps entries fresh only until T + expiration") {
    clock->set(kStart - 30s);
    CHECK(fresh_count() == kKeys);
    get_all(2);
    CHECK(total() == kKeys);
    // Fresh for expiration + 30 s of clock time after the step, the most any
    // step back can add being future_tolerance.
    clock->set(kStart + expiration - 1ns);
    CHECK(fresh_count() == kKeys);
    clock->set(kStart + expiration);
    CHECK(fresh_count() == 0);
    get_all(3);
    CHECK(total() == 2 * kKeys);
  }
}

TEST_CASE("a wall clock stepped forward a day regenerates every key exactly once",
          "[time][threaded]") {
  const int keys = kSanitized ? 100 : 200;
  constexpr int kProcesses = 3;  // the parent and two children
  constexpr int kThreads = 4;    // in each process
  // Drawn before the fork, so every process orders its keys from one seed.
  const std::uint64_t seed = reliability_seed();
  TempDir dir;
  const std::string cache = dir / "cache";
  const std::string log = dir / "creations";

  // Old values, created at T in a child so the parent forks with no
  // environment or thread of its own.
  {
    StartGate gate;
    const std::vector<pid_t> writer = spawn(1, gate, [&](int) {
      auto clock = std::make_shared<SettableClock>(kStart);
      Region region(options_with(clock, 1h), "lmdb", lmdb_args(cache));
      for (int i = 0; i < keys; ++i) region.set<std::string>(key_name(i), "old:" + key_name(i));
      return 0;
    });
    gate.open_gate();
    REQUIRE(reap(writer) == 0);
  }

  // Every thread of every process walks all keys, each in its own order.
  auto run = [&](int process) -> int {
    auto clock = std::make_shared<SettableClock>(kStart + 24h);
    Region region(options_with(clock, 1h), "lmdb", lmdb_args(cache));
    std::atomic<int> bad{0};
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        std::vector<int> order(keys);
        for (int i = 0; i < keys; ++i) order[i] = i;
        std::mt19937_64 rng(seed + static_cast<std::uint64_t>(process * 100 + t));
        std::shuffle(order.begin(), order.end(), rng);
        ++ready;
        while (ready.load() < kThreads) std::this_thread::yield();
        for (int i : order) {
          try {
            const std::string v = region.get_or_create<std::string>(key_name(i), [&] {
              log_line(log, key_name(i));
              return "new:" + key_name(i);
            });
            if (v != "old:" + key_name(i) && v != "new:" + key_name(i)) {
              std::fprintf(stderr, "process %d: %s read '%s'\n", process, key_name(i).c_str(),
                           v.c_str());
              ++bad;
            }
          } catch (const std::exception& e) {
            std::fprintf(stderr, "process %d: %s threw %s\n", process, key_name(i).c_str(),
                         e.what());
            ++bad;
          }
        }
      });
    }
    for (auto& t : threads) t.join();
    return bad.load() == 0 ? 0 : 3;
  };

  StartGate gate;
  const std::vector<pid_t> children = spawn(kProcesses - 1, gate, [&](int p) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    return run(p + 1);
  });
  const auto started = std::chrono::steady_clock::now();
  gate.open_gate();
  const int parent_result = run(0);
  std::map<pid_t, int> statuses;
  const int failed_children = reap(children, &statuses);
  for (const auto& [pid, status] : statuses) UNSCOPED_INFO("child wait status " << status);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  CHECK(parent_result == 0);
  CHECK(failed_children == 0);

  // Once everyone is done, every key holds its new value, fresh.
  int later_fresh = 0;
  {
    auto clock = std::make_shared<SettableClock>(kStart + 24h);
    Region region(options_with(clock, 1h), "lmdb", lmdb_args(cache));
    for (int i = 0; i < keys; ++i) {
      const std::optional<std::string> v = region.get<std::string>(key_name(i));
      later_fresh += v && *v == "new:" + key_name(i);
    }
  }
  CHECK(later_fresh == keys);

  std::map<std::string, int> per_key;
  const std::vector<std::string> lines = read_lines(log);
  for (const std::string& key : lines) ++per_key[key];
  int once = 0;
  int most = 0;
  for (const auto& [key, count] : per_key) {
    once += count == 1;
    most = std::max(most, count);
  }
  CHECK(static_cast<int>(per_key.size()) == keys);
  CHECK(once == keys);
  CHECK(static_cast<int>(lines.size()) == keys);
  figure("time[step forward 1 day]: %d keys, %d processes x %d threads: %zu creations, %d keys "
         "created exactly once, at most %d for one key; %.2f s",
         keys, kProcesses, kThreads, lines.size(), once, most, seconds);
}

TEST_CASE("lock waits keep their length while the wall clock jumps", "[time][threaded]") {
  constexpr Duration kTimeout = 300ms;
  const auto kShortest = std::chrono::milliseconds(250);
  const auto kLongest = std::chrono::seconds(5);

  for (const char* backend : {"lmdb", "memory"}) {
    for (const bool stale_wait : {false, true}) {
      for (const int direction : {+1, -1}) {
        CAPTURE(backend, stale_wait, direction);
        TempDir dir;
        auto clock = std::make_shared<SettableClock>(kStart);
        RegionOptions options = options_with(clock, 1h);
        options.lock_timeout = kTimeout;
        options.on_lock_timeout = LockTimeoutPolicy::kRaise;
        options.wait_for_fresh = stale_wait;
        Region region(options, backend,
                      std::string(backend) == "lmdb" ? lmdb_args(dir / "cache") : ConfigMap{});
        const std::string key = "contended";
        if (stale_wait) {
          region.set<std::string>(key, "stale");
          clock->advance(2h);  // expired: the waiter is served it after its wait
        }

        // A holder: a creator that keeps the key's lock until told to return.
        std::atomic<bool> holding{false};
        std::atomic<bool> release{false};
        // A missing key is locked for creation; a stale one is regenerated
        // under a try-lock, which the holder wins as the first caller.
        std::thread holder([&] {
          region.get_or_create<std::string>(key, [&] {
            holding = true;
            while (!release) std::this_thread::sleep_for(1ms);
            return std::string("holder");
          });
        });
        while (!holding) std::this_thread::sleep_for(1ms);

        // The wall clock moves a day in hour steps while the waiter waits.
        std::atomic<bool> waiting_done{false};
        std::thread stepper([&] {
          for (int i = 0; i < 24 && !waiting_done; ++i) {
            clock->advance(direction * std::chrono::nanoseconds(1h));
            std::this_thread::sleep_for(5ms);
          }
        });

        const auto started = std::chrono::steady_clock::now();
        bool timed_out = false;
        std::string got;
        try {
          got = region.get_or_create<std::string>(key, [] { return std::string("waiter"); });
        } catch (const LockTimeout&) {
          timed_out = true;
        }
        const auto waited = std::chrono::steady_clock::now() - started;
        waiting_done = true;
        stepper.join();
        release = true;
        holder.join();

        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(waited).count();
        // Missing key: LockTimeout; stale key: the stale value after the wait.
        if (stale_wait) {
          CHECK(!timed_out);
          CHECK(got == "stale");
        } else {
          CHECK(timed_out);
        }
        CHECK(waited >= kShortest);
        CHECK(waited <= kLongest);
        CHECK(region.stats().lock_timeouts == 1);
        figure("time[lock wait, %s, %s, wall clock %s1 day]: a 300 ms lock_timeout waited %lld ms "
               "(steady clock)",
               backend, stale_wait ? "stale key with wait_for_fresh" : "missing key",
               direction > 0 ? "+" : "-", static_cast<long long>(ms));
      }
    }
  }
}
