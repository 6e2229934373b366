// Features that meet: each case pairs two features whose single paths hold
// and checks the promise that only their combination can break.
//
// - memoize × AsyncRunner: a stale hit hands memoize's creator to a runner
//   thread that runs it after the call has returned. The creator must own
//   copies of the call's arguments (docs/design.md rule L5): arguments
//   built as temporaries in the call are gone by then, and ASan (which
//   scripts/test runs this suite under) reports any read of them.
// - max_concurrent_creations × nested creation: a caller never waits for a
//   creation slot while holding a key's lock (docs/design.md rule L1),
//   so a creator holding the only slot can take a key another caller has
//   locked. Threads and processes.
// - max_concurrent_creations × get_or_create_multi: a multi creator takes a
//   slot like any creator.
// - serve_stale_on_error × get_or_create_multi, on_lock_timeout × slot
//   waits, lock_timeout = Duration::max() × the in-process lock table.
// - nested creation × nested creation: creators waiting for each other's
//   keys (a cycle no lock order prevents) end in LockTimeout within
//   nested_lock_timeout, in threads and in processes.
// - fork() × AsyncRunner, lock tables and pending jobs: a child made while
//   the parent's threads hold locks starts its own (docs/design.md F1).
// Scenarios that could hang run in a child process under alarm(), so a
// regression fails the test instead of stopping the suite.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dogpile/dogpile.h"
#include "process_util.h"
#include "reliability_util.h"
#include "test_util.h"

using namespace dogpile;
using namespace std::chrono_literals;
using dogpile::test::FakeClock;
using dogpile::test::count_prefix;
using dogpile::test::log_line;
using dogpile::test::read_lines;
using dogpile::test::str_cat;
using dogpile::test::TempDir;
using dogpile::test::wait_status;

namespace {

// Holds runner threads until opened, so a background creator runs only
// after the call that queued it has returned and its temporaries are gone.
class Gate {
 public:
  void wait() {
    std::unique_lock lock(mu_);
    open_cv_.wait(lock, [&] { return open_; });
  }
  void open() {
    {
      std::lock_guard lock(mu_);
      open_ = true;
    }
    open_cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable open_cv_;
  bool open_ = false;
};

// Longer than any small-string buffer, so each lives on the heap and its
// bytes are freed (and poisoned under ASan) when the temporary dies.
std::string long_argument(const char* what, int i) {
  return str_cat(what, "-", i, "-", std::string(40, static_cast<char>('a' + i % 26)));
}

// Runs `body` in a forked child under alarm(seconds); returns what went
// wrong ("" when the child returned 0). A hang is SIGALRM, reported as such.
std::string in_bounded_child(unsigned seconds, const std::function<int()>& body) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return "fork failed";
  if (pid == 0) {
    ::alarm(seconds);
    int rc = 98;
    try {
      rc = body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: unexpected exception: %s\n", e.what());
    }
    std::fflush(nullptr);
    ::_exit(rc);
  }
  const int status = wait_status(pid);
  if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM) {
    return "hung: no answer within " + std::to_string(seconds) + " s";
  }
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return "child failed with status " + std::to_string(WEXITSTATUS(status));
  }
  return "";
}

// A child's check: prints what failed and counts it.
struct ChildChecks {
  int failed = 0;
  void expect(bool ok, const std::string& what) {
    if (ok) return;
    std::fprintf(stderr, "child check failed: %s\n", what.c_str());
    ++failed;
  }
};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

TEST_CASE("memoize × AsyncRunner: a background creator owns copies of the call's arguments",
          "[combinations][memoize][async]") {
  constexpr int kKeys = 24;
  auto clock = std::make_shared<FakeClock>();
  auto runner = std::make_shared<AsyncRunner>(2);
  Region region({.name = "combinations", .expiration_time = 10s, .async_runner = runner,
                 .clock = clock},
                "memory");
  auto gate = std::make_shared<Gate>();
  std::atomic<bool> gated{false};
  std::atomic<int> calls{0};
  auto join = memoize(region, "join",
                      [gate, &gated, &calls](const std::string& a, const std::string& b) {
                        if (gated.load()) gate->wait();
                        calls.fetch_add(1);
                        return a + "+" + b;
                      });

  for (int i = 0; i < kKeys; ++i) {
    REQUIRE(join(long_argument("a", i), long_argument("b", i)) ==
            long_argument("a", i) + "+" + long_argument("b", i));
  }
  REQUIRE(calls.load() == kKeys);

  // Every entry stale: each call returns the stale value at once and queues
  // its regeneration, whose arguments were temporaries of that call.
  clock->advance(11s);
  gated.store(true);
  for (int i = 0; i < kKeys; ++i) {
    CHECK(join(long_argument("a", i), long_argument("b", i)) ==
          long_argument("a", i) + "+" + long_argument("b", i));
  }
  // Reuse the freed memory before the background creators read anything.
  std::vector<std::string> scribble;
  for (int i = 0; i < 4 * kKeys; ++i) scribble.push_back(std::string(60, '#'));
  gate->open();
  runner->drain();

  CHECK(calls.load() == 2 * kKeys);
  for (int i = 0; i < kKeys; ++i) {
    const std::optional<std::string> stored =
        region.get<std::string>(join.key(long_argument("a", i), long_argument("b", i)));
    REQUIRE(stored.has_value());
    CHECK(*stored == long_argument("a", i) + "+" + long_argument("b", i));
  }
  CHECK(region.stats().stale_served == kKeys);
}

TEST_CASE("max_concurrent_creations × nested creation: threads never deadlock",
          "[combinations][slots][nested]") {
  // Thread B creates k2 in the only slot and, nested, asks for k1; thread A
  // has taken k1's lock meanwhile and needs a slot to create it. Waiting for
  // the slot with k1 held closed the cycle for ever (no lock_timeout).
  const std::string failure = in_bounded_child(20, [] {
    ChildChecks checks;
    Region region({.name = "slots", .max_concurrent_creations = 1}, "memory");
    std::atomic<int> k1_creations{0};
    std::atomic<bool> b_in_creator{false};
    std::thread b([&] {
      region.get_or_create<std::string>("k2", [&] {
        b_in_creator.store(true);
        std::this_thread::sleep_for(300ms);  // A takes k1's lock meanwhile
        return "k2 from " + region.get_or_create<std::string>("k1", [&] {
          k1_creations.fetch_add(1);
          return std::string("k1 by B");
        });
      });
    });
    while (!b_in_creator.load()) std::this_thread::sleep_for(1ms);
    const std::string a = region.get_or_create<std::string>("k1", [&] {
      k1_creations.fetch_add(1);
      return std::string("k1 by A");
    });
    b.join();
    checks.expect(k1_creations.load() == 1, "k1 created " + std::to_string(k1_creations.load()) +
                                                 " times");
    checks.expect(a == "k1 by B" || a == "k1 by A", "A got '" + a + "'");
    checks.expect(region.get<std::string>("k2") == "k2 from " + a, "k2 is built on k1");
    return checks.failed;
  });
  CHECK(failure == "");
}

TEST_CASE("max_concurrent_creations × nested creation: processes never deadlock",
          "[combinations][slots][nested][fork]") {
  TempDir dir;
  const std::string log = dir / "log";
  const std::string cache = dir / "cache";
  const auto region_options = [] {
    return RegionOptions{.name = "slots", .max_concurrent_creations = 1};
  };
  // B: creates k2 in the only slot, then (nested) k1. A: asks for k1 while
  // B is inside k2's creator.
  const std::string failure = in_bounded_child(30, [&] {
    const pid_t b = ::fork();
    if (b == 0) {
      ::alarm(30);  // alarms are not inherited: a hung B must end too
      int rc = 1;
      try {
        Region region(region_options(), "lmdb", {{"path", cache}});
        const std::string v = region.get_or_create<std::string>("k2", [&] {
          log_line(log, "b-in-creator");
          std::this_thread::sleep_for(500ms);
          return "k2 from " + region.get_or_create<std::string>("k1", [&] {
            log_line(log, "create k1");
            return std::string("k1 by B");
          });
        });
        rc = v.rfind("k2 from k1 by ", 0) == 0 ? 0 : 2;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "B: %s\n", e.what());
      }
      ::_exit(rc);
    }
    ChildChecks checks;
    checks.expect(dogpile::test::wait_for_line(log, "b-in-creator"), "B never started");
    Region region(region_options(), "lmdb", {{"path", cache}});
    const std::string a = region.get_or_create<std::string>("k1", [&] {
      log_line(log, "create k1");
      return std::string("k1 by A");
    });
    const int b_status = wait_status(b);
    checks.expect(WIFEXITED(b_status) && WEXITSTATUS(b_status) == 0, "B failed");
    checks.expect(count_prefix(read_lines(log), "create k1") == 1, "k1 created more than once");
    checks.expect(a == "k1 by B" || a == "k1 by A", "A got '" + a + "'");
    return checks.failed;
  });
  CHECK(failure == "");
}

TEST_CASE("max_concurrent_creations × get_or_create_multi: a multi creator takes a slot",
          "[combinations][slots][multi]") {
  Region region({.name = "slots", .max_concurrent_creations = 1}, "memory");
  std::atomic<int> running{0};
  std::atomic<int> most{0};
  const auto creator = [&](std::span<const std::string> keys) {
    const int now = running.fetch_add(1) + 1;
    int seen = most.load();
    while (now > seen && !most.compare_exchange_weak(seen, now)) {
    }
    std::this_thread::sleep_for(100ms);
    running.fetch_sub(1);
    return std::vector<std::string>(keys.begin(), keys.end());
  };
  std::vector<std::thread> threads;
  std::array<bool, 4> right{};  // Catch's assertions are for the main thread only
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const std::vector<std::string> keys{str_cat("t", t, "-a"), str_cat("t", t, "-b")};
      right[static_cast<std::size_t>(t)] =
          region.get_or_create_multi<std::string>(keys, creator) == keys;
    });
  }
  for (std::thread& t : threads) t.join();
  for (const bool r : right) CHECK(r);
  CHECK(most.load() == 1);
  CHECK(region.stats().creations == 8);
}

TEST_CASE("serve_stale_on_error × get_or_create_multi: a failing creator serves stale values",
          "[combinations][multi]") {
  auto clock = std::make_shared<FakeClock>();
  std::vector<std::string> logged;
  std::mutex log_mu;
  Region region({.name = "stale", .expiration_time = 10s, .serve_stale_on_error = true,
                 .clock = clock,
                 .logger = [&](LogLevel, std::string_view m) {
                   std::lock_guard lock(log_mu);
                   logged.emplace_back(m);
                 }},
                "memory");
  const std::vector<std::string> keys{"a", "b"};
  REQUIRE(region.get_or_create_multi<std::string>(keys, [](std::span<const std::string> ks) {
    return std::vector<std::string>{ks[0] + "1", ks[1] + "1"};
  }) == std::vector<std::string>{"a1", "b1"});
  clock->advance(11s);
  const auto failing = [](std::span<const std::string>) -> std::vector<std::string> {
    throw std::runtime_error("upstream down");
  };
  CHECK(region.get_or_create_multi<std::string>(keys, failing) ==
        std::vector<std::string>{"a1", "b1"});
  CHECK(region.stats().creation_failures == 1);
  CHECK(region.stats().stale_served == 2);
  REQUIRE(logged.size() == 1);
  CHECK(logged[0].find("upstream down") != std::string::npos);
  // A key with no stale value to stand in: the error reaches the caller.
  const std::vector<std::string> with_new{"a", "new"};
  CHECK_THROWS_WITH(region.get_or_create_multi<std::string>(with_new, failing), "upstream down");
  CHECK(region.stats().creation_failures == 2);
}

TEST_CASE("on_lock_timeout × creation slots: the policy applies and the message names the limit",
          "[combinations][slots]") {
  for (const LockTimeoutPolicy policy :
       {LockTimeoutPolicy::kRaise, LockTimeoutPolicy::kCreateUnlocked}) {
    INFO("policy " << static_cast<int>(policy));
    Region region({.name = "slots",
                   .lock_timeout = 100ms,
                   .on_lock_timeout = policy,
                   .max_concurrent_creations = 1},
                  "memory");
    Gate gate;
    std::atomic<bool> in_creator{false};
    std::thread holder([&] {
      region.get_or_create<std::string>("busy", [&] {
        in_creator.store(true);
        gate.wait();
        return std::string("busy");
      });
    });
    while (!in_creator.load()) std::this_thread::sleep_for(1ms);
    const auto create_k = [&] {
      return region.get_or_create<std::string>("k", [] { return std::string("made anyway"); });
    };
    if (policy == LockTimeoutPolicy::kRaise) {
      CHECK_THROWS_AS(create_k(), LockTimeout);
      CHECK_THROWS_WITH(create_k(), Catch::Contains("max_concurrent_creations") &&
                                        Catch::Contains("'k'") &&
                                        !Catch::Contains("another caller creating"));
      CHECK_FALSE(region.get<std::string>("k"));
    } else {
      // The caller chose availability over the throttle: it creates now.
      CHECK(create_k() == "made anyway");
      CHECK(region.get<std::string>("k") == "made anyway");
    }
    CHECK(region.stats().lock_timeouts >= 1);
    gate.open();
    holder.join();
  }
}

TEST_CASE("lock_timeout = Duration::max() × the in-process lock table waits, never times out",
          "[combinations][time]") {
  Region region({.name = "forever", .lock_timeout = Duration::max()}, "memory");
  std::atomic<bool> creating{false};
  std::thread holder([&] {
    region.get_or_create<std::string>("k", [&] {
      creating.store(true);
      std::this_thread::sleep_for(300ms);
      return std::string("made");
    });
  });
  while (!creating.load()) std::this_thread::sleep_for(1ms);
  std::string got;
  CHECK_NOTHROW(got = region.get_or_create<std::string>("k", [] { return std::string("again"); }));
  holder.join();
  CHECK(got == "made");
  CHECK(region.stats().creations == 1);
  CHECK(region.stats().lock_timeouts == 0);
}

namespace {

// How one side of an A <-> B cycle ended.
enum class CycleEnd { kValue, kNestedTimeout, kOther };

// Asks for `mine` with a creator that, once `other_started` says the other
// side is inside its creator too, asks for `theirs`.
CycleEnd one_side_of_cycle(Region& region, const std::string& mine, const std::string& theirs,
                           const std::function<void()>& announce,
                           const std::function<void()>& wait_for_other, double& seconds) {
  const auto start = std::chrono::steady_clock::now();
  CycleEnd end = CycleEnd::kOther;
  try {
    region.get_or_create<std::string>(mine, [&] {
      announce();
      wait_for_other();
      return mine + " needs " + region.get_or_create<std::string>(theirs, [&] { return theirs; });
    });
    end = CycleEnd::kValue;
  } catch (const LockTimeout& e) {
    const std::string what = e.what();
    if (what.find("nested_lock_timeout") != std::string::npos &&
        what.find("'" + mine + "'") != std::string::npos) {
      end = CycleEnd::kNestedTimeout;
    } else {
      std::fprintf(stderr, "unexpected LockTimeout: %s\n", what.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unexpected exception: %s\n", e.what());
  }
  seconds = seconds_since(start);
  return end;
}

constexpr auto kCycleBound = 1s;

}  // namespace

TEST_CASE("nested × nested: two threads' creators waiting for each other end in LockTimeout",
          "[combinations][nested][cycle]") {
  const std::string failure = in_bounded_child(20, [] {
    ChildChecks checks;
    Region region({.name = "cycle", .nested_lock_timeout = kCycleBound}, "memory");
    std::atomic<int> inside{0};
    const auto announce = [&] { inside.fetch_add(1); };
    const auto wait_for_other = [&] {
      while (inside.load() < 2) std::this_thread::sleep_for(1ms);
    };
    CycleEnd a_end = CycleEnd::kOther, b_end = CycleEnd::kOther;
    double a_s = 0, b_s = 0;
    std::thread a([&] { a_end = one_side_of_cycle(region, "A", "B", announce, wait_for_other, a_s); });
    std::thread b([&] { b_end = one_side_of_cycle(region, "B", "A", announce, wait_for_other, b_s); });
    a.join();
    b.join();
    std::fprintf(stderr, "figure: thread cycle ended after %.3f s and %.3f s (bound 1 s)\n", a_s,
                 b_s);
    checks.expect(a_end != CycleEnd::kOther && b_end != CycleEnd::kOther, "an unexpected end");
    checks.expect(a_end == CycleEnd::kNestedTimeout || b_end == CycleEnd::kNestedTimeout,
                  "no side ended in the nested LockTimeout");
    checks.expect(a_s < 2.0 && b_s < 2.0, "a side took 2x the bound or longer");
    return checks.failed;
  });
  CHECK(failure == "");
}

TEST_CASE("nested × nested: two processes' creators waiting for each other end in LockTimeout",
          "[combinations][nested][cycle][fork]") {
  TempDir dir;
  const std::string log = dir / "log";
  const std::string cache = dir / "cache";
  const auto side = [&](const std::string& mine, const std::string& theirs) {
    const pid_t pid = ::fork();
    if (pid != 0) return pid;
    ::alarm(30);  // alarms are not inherited: a hung side must end too
    int rc = 3;
    try {
      Region region({.name = "cycle", .nested_lock_timeout = kCycleBound}, "lmdb",
                    {{"path", cache}});
      double seconds = 0;
      const CycleEnd end = one_side_of_cycle(
          region, mine, theirs, [&] { log_line(log, "inside " + mine); },
          [&] { dogpile::test::wait_for_line(log, "inside " + theirs); }, seconds);
      log_line(log, str_cat("seconds ", mine, " ", static_cast<int>(seconds * 1000)));
      rc = end == CycleEnd::kValue ? 0 : end == CycleEnd::kNestedTimeout ? 10 : 2;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s: %s\n", mine.c_str(), e.what());
    }
    std::fflush(nullptr);
    ::_exit(rc);
  };
  const std::string failure = in_bounded_child(30, [&] {
    ChildChecks checks;
    const pid_t a = side("A", "B");
    const pid_t b = side("B", "A");
    const int a_status = wait_status(a);
    const int b_status = wait_status(b);
    const auto code = [](int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; };
    checks.expect((code(a_status) == 0 || code(a_status) == 10) &&
                      (code(b_status) == 0 || code(b_status) == 10),
                  str_cat("exit codes ", code(a_status), " and ", code(b_status)));
    checks.expect(code(a_status) == 10 || code(b_status) == 10,
                  "no side ended in the nested LockTimeout");
    for (const std::string& line : read_lines(log)) {
      if (line.rfind("seconds ", 0) != 0) continue;
      std::fprintf(stderr, "figure: process cycle: %s ms (bound 1000 ms)\n", line.c_str() + 8);
      checks.expect(std::stoi(line.substr(10)) < 2000, "a side took 2x the bound: " + line);
    }
    return checks.failed;
  });
  CHECK(failure == "");
}

TEST_CASE("fork × AsyncRunner and lock tables: pre-forked workers never hang",
          "[combinations][fork][async]") {
  // A pre-forking server: the parent makes its regions (one on lmdb with an
  // AsyncRunner, one in memory), has threads inside creators (holding key
  // locks and the runner's and lock table's state) when it forks 4 workers.
  // Each worker serves stale values and regenerates them through the runner,
  // creates in the memory region (whose table the parent's threads held) and
  // destroys its regions. Before fork()-aware state, a worker's job queued
  // for ever with the key's lock held and its ~Region hung.
#if defined(__SANITIZE_THREAD__)
  // ThreadSanitizer cannot start threads in the child of a multi-threaded
  // fork(), which is this test's very point; the g++ and ASan runs have it.
  SUCCEED("not run under ThreadSanitizer");
  return;
#endif
  constexpr int kWorkers = 4;
  constexpr int kKeys = 8;
  TempDir dir;
  const std::string log = dir / "log";
  const std::string cache = dir / "cache";
  auto clock = std::make_shared<FakeClock>();
  auto runner = std::make_shared<AsyncRunner>(2);
  auto shared = std::make_unique<Region>(
      RegionOptions{.name = "shared", .expiration_time = 10s, .async_runner = runner,
                    .clock = clock},
      "lmdb", ConfigMap{{"path", cache}});
  auto local = std::make_unique<Region>(RegionOptions{.name = "local"}, "memory");
  for (int k = 0; k < kKeys; ++k) shared->set<std::string>(str_cat("s", k), "old");
  clock->advance(11s);  // every worker inherits a clock past the entries' expiry

  // Threads inside creators at the moment of the fork.
  Gate gate;
  std::atomic<int> inside{0};
  std::thread in_local([&] {
    local->get_or_create<std::string>("m", [&] {
      inside.fetch_add(1);
      gate.wait();
      return std::string("parent");
    });
  });
  std::thread in_shared([&] {
    shared->get_or_create<std::string>("busy", [&] {
      inside.fetch_add(1);
      gate.wait();
      return std::string("parent");
    });
  });
  while (inside.load() < 2) std::this_thread::sleep_for(1ms);

  std::vector<pid_t> workers;
  for (int w = 0; w < kWorkers; ++w) {
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid != 0) {
      workers.push_back(pid);
      continue;
    }
    ::alarm(30);
    int failed = 0;
    try {
      for (int k = 0; k < kKeys; ++k) {
        const std::string key = str_cat("s", k);
        const std::string got = shared->get_or_create<std::string>(key, [&log, key] {
          log_line(log, "create " + key);
          return std::string("new");
        });
        failed += got != "old" && got != "new";
      }
      runner->drain();  // the child's own runner threads ran the jobs
      // The parent's thread held "m" in the table at the fork; not here.
      failed += local->get_or_create<std::string>("m", [] { return std::string("child"); }) !=
                "child";
      failed += local->get_or_create<std::string>(
                    str_cat("m", ::getpid()), [] { return std::string("child"); }) != "child";
      shared.reset();  // waits for this process's jobs only
      local.reset();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "worker: %s\n", e.what());
      failed += 100;
    }
    std::fflush(nullptr);
    ::_exit(failed == 0 ? 0 : 1);
  }
  gate.open();
  in_local.join();
  in_shared.join();

  for (const pid_t pid : workers) {
    const int status = wait_status(pid);
    // SIGALRM (14) is a worker that hung.
    const int killed_by = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    const int exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    INFO("worker " << pid);
    CHECK(killed_by == 0);
    CHECK(exit_code == 0);
  }
  const std::vector<std::string> lines = read_lines(log);
  for (int k = 0; k < kKeys; ++k) {
    const std::string key = str_cat("s", k);
    INFO(key);
    CHECK(count_prefix(lines, "create " + key) == 1);
    CHECK_FALSE(shared->key_is_locked(key));
    CHECK(shared->get<std::string>(key, {.ignore_expiration = true}) == "new");
  }
  CHECK_FALSE(local->key_is_locked("m"));
  CHECK(local->get<std::string>("m") == "parent");
  // The parent's runner still works after its children came and went.
  clock->advance(11s);
  CHECK(shared->get_or_create<std::string>("s0", [] { return std::string("newer"); }) == "new");
  runner->drain();
  CHECK(shared->get<std::string>("s0") == "newer");
}

TEST_CASE("max_value_size × reading a larger entry: judged before anything is copied",
          "[combinations][limits][fork]") {
  // Another process stored a 200 MiB value under a generous limit; a reader
  // with max_value_size = 1 MiB gets a counted miss on every read path
  // without copying (or touching) the 200 MiB. Before, each read copied it.
  constexpr std::size_t kBig = std::size_t{200} << 20;
  TempDir dir;
  const std::string cache = dir / "cache";
  const std::string writer_failure = in_bounded_child(120, [&] {
    Region region({.name = "big"}, "lmdb", {{"path", cache}, {"max_size", "1GiB"}});
    region.set<std::string>("big", std::string(kBig, 'b'));
    return region.get_value_metadata("big") ? 0 : 1;
  });
  REQUIRE(writer_failure == "");
  const std::string reader_failure = in_bounded_child(120, [&] {
    ChildChecks checks;
    Region region({.name = "big", .max_value_size = std::size_t{1} << 20}, "lmdb",
                  {{"path", cache}, {"max_size", "1GiB"}});
    const long hwm_before = dogpile::test::proc_status_kib("VmHWM");
    checks.expect(!region.get<std::string>("big"), "get<string> (in place) found a value");
    checks.expect(!region.get<std::vector<std::int64_t>>("big"),
                  "get<vector> (copying) found a value");
    checks.expect(!region.get_value_metadata("big"), "get_value_metadata found a value");
    const std::vector<std::string> keys{"big"};
    checks.expect(!region.get_multi<std::string>(keys)[0], "get_multi found a value");
    const long growth_kib = dogpile::test::proc_status_kib("VmHWM") - hwm_before;
    std::fprintf(stderr, "figure: 4 reads of a 200 MiB entry over a 1 MiB limit: peak RSS +%ld KiB\n",
                 growth_kib);
    // Sanitizer runtimes move RSS on their own; the figure is printed anyway.
    if (!dogpile::test::kSanitized) checks.expect(growth_kib < 32 * 1024, "RSS grew");
    checks.expect(region.stats().corruptions >= 3, "the misses were not counted as corrupt");
    return checks.failed;
  });
  CHECK(reader_failure == "");
}

TEST_CASE("fork × memory backend writes: a child gets whole entries and a free lock",
          "[combinations][fork]") {
  // A thread of the parent writes all the time, so fork() often comes while
  // it holds the backend's lock: the child must neither hang on that lock
  // nor see a half-changed table.
#if defined(__SANITIZE_THREAD__)
  SUCCEED("not run under ThreadSanitizer (a fork() of a multi-threaded process)");
  return;
#endif
  std::shared_ptr<Backend> backend = make_memory_backend();
  std::vector<KeyValue> batch;
  for (int i = 0; i < 2000; ++i) batch.emplace_back(str_cat("k", i), std::string(64, 'v'));
  REQUIRE(backend->set_multi(batch));
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    while (!stop.load()) (void)backend->set_multi(batch);
  });
  constexpr int kChildren = 40;
  int hung = 0;
  int failed = 0;
  for (int c = 0; c < kChildren; ++c) {
    const std::string outcome = in_bounded_child(5, [&] {
      std::optional<std::string> got;
      if (!backend->get("k1999", got) || got != std::string(64, 'v')) return 1;
      if (!backend->set("child", "x") || !backend->get("child", got) || got != "x") return 2;
      std::vector<std::optional<std::string>> all;
      std::vector<std::string> keys;
      for (int i = 0; i < 2000; ++i) keys.push_back(str_cat("k", i));
      if (!backend->get_multi(keys, all)) return 3;
      for (const auto& v : all) {
        if (v != std::string(64, 'v')) return 4;
      }
      return 0;
    });
    hung += outcome.rfind("hung", 0) == 0;
    failed += !outcome.empty();
    INFO("child " << c << ": " << outcome);
    CHECK(outcome.empty());
  }
  stop = true;
  writer.join();
  dogpile::test::figure("fork × memory writes: %d children, %d hung, %d failed", kChildren, hung, failed);
}
