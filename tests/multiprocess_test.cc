// The dogpile lock across real processes: fork()ed children share one cache
// directory on the lmdb backend and record what they do in a creation log.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "dogpile/dogpile.h"
#include "process_util.h"
#include "test_util.h"

using namespace dogpile;
using namespace std::chrono_literals;
using dogpile::test::TempDir;
using namespace dogpile::test;

namespace {

Region open_region(const std::string& dir, std::optional<Duration> expiration = std::nullopt) {
  return Region({.name = "mp", .expiration_time = expiration}, "lmdb", {{"path", dir}});
}

// Stores `value` as written an hour ago: stale for a region expiring after 10 minutes.
void write_hour_old(const std::string& dir, const std::string& key, const std::string& value) {
  auto past = std::make_shared<dogpile::test::FakeClock>(std::chrono::system_clock::now() - 1h);
  Region writer({.name = "mp", .clock = past}, "lmdb", {{"path", dir}});
  writer.set<std::string>(key, value);
}

}  // namespace

TEST_CASE("16 processes on a cold key: exactly one creation, 16 identical values",
          "[multiprocess]") {
  for (int round = 0; round < 10; ++round) {
    INFO("round " << round);
    TempDir dir;
    const std::string log = dir / "log";
    StartGate gate;
    const auto pids = spawn(16, gate, [&](int) {
      Region region = open_region(dir.path());
      const std::string v = region.get_or_create<std::string>("cold", [&] {
        log_line(log, "start " + std::to_string(::getpid()));
        std::this_thread::sleep_for(200ms);
        log_line(log, "done " + std::to_string(::getpid()));
        return "value-from-" + std::to_string(::getpid());
      });
      log_line(log, "value " + v);
      return 0;
    });
    gate.open_gate();
    REQUIRE(reap(pids) == 0);
    const auto lines = read_lines(log);
    CHECK(count_prefix(lines, "start ") == 1);
    CHECK(count_prefix(lines, "done ") == 1);
    std::set<std::string> values;
    for (const auto& l : lines)
      if (l.rfind("value ", 0) == 0) values.insert(l);
    CHECK(count_prefix(lines, "value ") == 16);
    CHECK(values.size() == 1);
  }
}

TEST_CASE("16 processes on an expired key: one creation, 15 served stale at once",
          "[multiprocess]") {
  TempDir dir;
  const std::string log = dir / "log";
  write_hour_old(dir.path(), "k", "old");
  StartGate gate;
  const auto pids = spawn(16, gate, [&](int) {
    Region region = open_region(dir.path(), 10min);
    const auto started = std::chrono::steady_clock::now();
    const std::string v = region.get_or_create<std::string>("k", [&] {
      log_line(log, "start");
      std::this_thread::sleep_for(1500ms);
      log_line(log, "done");
      return std::string("new");
    });
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::steady_clock::now() - started)
                        .count();
    log_line(log, "value " + v + " " + std::to_string(ms));
    return 0;
  });
  gate.open_gate();
  REQUIRE(reap(pids) == 0);
  const auto lines = read_lines(log);
  CHECK(count_prefix(lines, "start") == 1);
  CHECK(count_prefix(lines, "value new ") == 1);
  // Had they waited for the creator they would have read "new".
  CHECK(count_prefix(lines, "value old ") == 15);
  long slowest_stale = 0;
  for (const auto& l : lines) {
    if (l.rfind("value old ", 0) == 0) slowest_stale = std::max(slowest_stale, std::stol(l.substr(10)));
  }
  WARN("slowest stale read: " << slowest_stale << " ms (the creator takes 1500 ms)");
  Region region = open_region(dir.path(), 10min);
  CHECK(region.get<std::string>("k") == "new");
}

TEST_CASE("the lock holder killed mid-creation: another process takes over", "[multiprocess]") {
  TempDir dir;
  const std::string log = dir / "log";
  // The first child takes the lock and hangs in its creator until killed.
  StartGate first_gate;
  const auto victim = spawn(1, first_gate, [&](int) {
    Region region = open_region(dir.path());
    region.get_or_create<std::string>("k", [&] {
      log_line(log, "start victim");
      std::this_thread::sleep_for(60s);
      log_line(log, "done victim");
      return std::string("victim");
    });
    return 0;
  });
  first_gate.open_gate();
  REQUIRE(wait_for_line(log, "start victim"));
  StartGate gate;
  const auto waiters = spawn(6, gate, [&](int) {
    Region region = open_region(dir.path());
    const std::string v = region.get_or_create<std::string>("k", [&] {
      log_line(log, "start " + std::to_string(::getpid()));
      std::this_thread::sleep_for(100ms);
      log_line(log, "done " + std::to_string(::getpid()));
      return std::string("survivor");
    });
    log_line(log, "value " + v);
    return 0;
  });
  gate.open_gate();
  std::this_thread::sleep_for(200ms);  // let the waiters block on the lock
  ::kill(victim[0], SIGKILL);
  std::map<pid_t, int> statuses;
  reap(victim, &statuses);
  CHECK(WIFSIGNALED(statuses[victim[0]]));
  REQUIRE(reap(waiters) == 0);
  const auto lines = read_lines(log);
  CHECK(count_prefix(lines, "done ") == 1);
  CHECK(count_prefix(lines, "done victim") == 0);
  CHECK(count_prefix(lines, "value survivor") == 6);
}

TEST_CASE("a value written by an exited process is read by a fresh one", "[multiprocess]") {
  TempDir dir;
  StartGate gate1;
  const auto writer = spawn(1, gate1, [&](int) {
    Region region = open_region(dir.path());
    region.set<std::string>("k", "written by a process that has exited");
    return 0;
  });
  gate1.open_gate();
  REQUIRE(reap(writer) == 0);
  StartGate gate2;
  const auto reader = spawn(1, gate2, [&](int) {
    Region region = open_region(dir.path());
    return region.get<std::string>("k") == "written by a process that has exited" ? 0 : 1;
  });
  gate2.open_gate();
  CHECK(reap(reader) == 0);
}

TEST_CASE("8 threads in each of 2 processes on one key: one creation", "[multiprocess]") {
  TempDir dir;
  const std::string log = dir / "log";
  StartGate gate;
  const auto pids = spawn(2, gate, [&](int) {
    Region region = open_region(dir.path());
    std::vector<std::thread> threads;
    std::atomic<int> wrong{0};
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&] {
        const std::string v = region.get_or_create<std::string>("k", [&] {
          log_line(log, "start");
          std::this_thread::sleep_for(200ms);
          return std::string("shared");
        });
        if (v != "shared") ++wrong;
      });
    }
    for (auto& t : threads) t.join();
    return wrong == 0 ? 0 : 1;
  });
  gate.open_gate();
  REQUIRE(reap(pids) == 0);
  CHECK(count_prefix(read_lines(log), "start") == 1);
}

TEST_CASE("different keys create in parallel across processes", "[multiprocess]") {
  TempDir dir;
  const std::string log = dir / "log";
  StartGate gate;
  const auto pids = spawn(4, gate, [&](int i) {
    Region region = open_region(dir.path());
    region.get_or_create<std::string>("key-" + std::to_string(i), [&] {
      log_line(log, "start");
      std::this_thread::sleep_for(500ms);
      log_line(log, "done");
      return std::string("v");
    });
    return 0;
  });
  gate.open_gate();
  REQUIRE(reap(pids) == 0);
  const auto lines = read_lines(log);
  REQUIRE(lines.size() == 8);
  // Serialised creations would alternate start/done; parallel ones all start
  // before the first is done.
  CHECK(count_prefix(std::vector<std::string>(lines.begin(), lines.begin() + 4), "start") == 4);
}

TEST_CASE("get_or_create_multi from 8 processes over overlapping key sets: each key once",
          "[multiprocess][multi]") {
  TempDir dir;
  const std::string log = dir / "log";
  StartGate gate;
  // Process i asks for keys i .. i+7 of 0..14, in its own rotated order, so
  // every key is wanted by several processes and lists overlap both ways.
  const auto pids = spawn(8, gate, [&](int i) {
    Region region = open_region(dir.path());
    std::vector<std::string> keys;
    for (int j = 0; j < 8; ++j) keys.push_back(str_cat("k", i + (j + i) % 8));
    const auto values =
        region.get_or_create_multi<std::string>(keys, [&](std::span<const std::string> missing) {
          std::vector<std::string> out;
          for (const auto& k : missing) {
            log_line(log, "create " + k);
            out.push_back("v-" + k);
          }
          std::this_thread::sleep_for(100ms);
          return out;
        });
    for (std::size_t j = 0; j < keys.size(); ++j) {
      if (values[j] != "v-" + keys[j]) return 1;
    }
    return 0;
  });
  gate.open_gate();
  REQUIRE(reap(pids) == 0);
  const auto lines = read_lines(log);
  std::map<std::string, int> per_key;
  for (const auto& l : lines) ++per_key[l];
  CHECK(per_key.size() == 15);
  for (const auto& [line, n] : per_key) {
    INFO(line);
    CHECK(n == 1);
  }
}

TEST_CASE("max_concurrent_creations = 2 holds across 8 processes", "[multiprocess][policy]") {
  TempDir dir;
  const std::string log = dir / "log";
  StartGate gate;
  const auto pids = spawn(8, gate, [&](int i) {
    Region region({.name = "mp", .max_concurrent_creations = 2}, "lmdb", {{"path", dir.path()}});
    for (int round = 0; round < 3; ++round) {
      region.get_or_create<std::string>(
          "p" + std::to_string(i) + "-" + std::to_string(round), [&] {
            log_line(log, "start");
            std::this_thread::sleep_for(30ms);
            log_line(log, "end");
            return std::string("v");
          });
    }
    return 0;
  });
  gate.open_gate();
  REQUIRE(reap(pids) == 0);
  // Lines are appended in the order the creators wrote them, inside their
  // slots, so the running count is the number of creators overlapping.
  int running = 0;
  int peak = 0;
  const auto lines = read_lines(log);
  for (const auto& l : lines) {
    running += l == "start" ? 1 : -1;
    peak = std::max(peak, running);
  }
  CHECK(lines.size() == 48);
  CHECK(peak == 2);
}

TEST_CASE("async runner: 16 processes on a stale key, one background creation",
          "[multiprocess][async]") {
  TempDir dir;
  const std::string log = dir / "log";
  write_hour_old(dir.path(), "k", "old");
  StartGate gate;
  const auto pids = spawn(16, gate, [&](int) {
    std::string v;
    {
      Region region({.name = "mp",
                     .expiration_time = 10min,
                     .async_runner = std::make_shared<AsyncRunner>(1)},
                    "lmdb", {{"path", dir.path()}});
      v = region.get_or_create<std::string>("k", [log] {
        log_line(log, "create");
        std::this_thread::sleep_for(300ms);
        return std::string("new");
      });
    }  // the region drains its background job before the process exits
    log_line(log, "value " + v);
    return 0;
  });
  gate.open_gate();
  REQUIRE(reap(pids) == 0);
  const auto lines = read_lines(log);
  CHECK(count_prefix(lines, "create") == 1);
  CHECK(count_prefix(lines, "value old") == 16);
  Region region = open_region(dir.path(), 10min);
  CHECK(region.get<std::string>("k") == "new");
}

TEST_CASE("key_is_locked sees another process's creation lock through the key mangler",
          "[multiprocess]") {
  TempDir dir;
  const std::string log = dir / "log";
  const auto mangler = [](std::string_view k) { return "m:" + std::string(k); };
  StartGate gate;
  const auto holder = spawn(1, gate, [&](int) {
    Region region({.name = "mp", .key_mangler = mangler}, "lmdb", {{"path", dir.path()}});
    region.get_or_create<std::string>("k", [&] {
      log_line(log, "holding");
      std::this_thread::sleep_for(60s);
      return std::string("never");
    });
    return 0;
  });
  gate.open_gate();
  REQUIRE(wait_for_line(log, "holding"));
  Region mangled({.name = "mp", .key_mangler = mangler}, "lmdb", {{"path", dir.path()}});
  Region plain({.name = "mp"}, "lmdb", {{"path", dir.path()}});
  CHECK(mangled.key_is_locked("k"));
  CHECK(plain.key_is_locked("m:k"));  // the same stored key
  CHECK_FALSE(plain.key_is_locked("k"));
  CHECK_FALSE(mangled.key_is_locked("other"));
  ::kill(holder[0], SIGKILL);
  reap(holder);
  CHECK_FALSE(mangled.key_is_locked("k"));  // the kernel dropped the dead holder's lock
}
