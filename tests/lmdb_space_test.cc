// The self-managing LMDB store: the layout's indexes, map growth, eviction at
// max_size, CacheFull, purging expired entries and usage counters shared
// between processes. Real files in temporary directories, real processes.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "backends/lmdb_env.h"
#include "backends/lmdb_layout.h"
#include "dogpile/dogpile.h"
#include "dogpile/envelope.h"
#include "dogpile/lmdb_backend.h"

#include "backend_util.h"
#include "process_util.h"
#include "test_util.h"

namespace {

using dogpile::Backend;
using dogpile::KeyValue;
using dogpile::Status;
using dogpile::StatusCode;
using dogpile::UsageCounters;
using dogpile::internal::EntryHeader;
using dogpile::internal::IndexTarget;
using dogpile::internal::LmdbEnv;
using dogpile::internal::ReadTxn;
using dogpile::internal::RegionRef;
using dogpile::internal::RemovalStep;
using dogpile::internal::StoreDbs;
using dogpile::test::str_cat;
using dogpile::test::TempDir;
using dogpile::test::get;
using dogpile::test::set;

constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;

std::unique_ptr<Backend> open_backend(const std::string& dir, std::uint64_t max_size,
                                      const std::string& region = "default") {
  return dogpile::open_lmdb_backend({.path = dir,
                                     .region = region,
                                     .max_size = max_size,
                                     .durability = dogpile::Durability::kNoSync});
}

// The environment this process has open on `dir` (a backend holds it).
std::shared_ptr<LmdbEnv> env_of(const std::string& dir) {
  std::shared_ptr<LmdbEnv> env;
  const Status s = LmdbEnv::acquire(dir, {}, env);
  INFO(s.to_string());
  REQUIRE(s.is_ok());
  return env;
}

// Bytes that tell which key and size they were written for.
std::string value_for(std::uint64_t i, std::size_t size) {
  std::string out(size, '\0');
  std::uint32_t x = static_cast<std::uint32_t>(i) * 2654435761u + 17;
  for (char& c : out) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return out;
}

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// An envelope of `size` payload bytes expiring at `expires_at_ns` (none when
// nullopt).
std::string envelope(std::uint64_t i, std::size_t size, std::optional<std::int64_t> expires_at_ns) {
  dogpile::EnvelopeMeta meta;
  meta.codec = dogpile::CodecId::kRaw;
  meta.created_at_ns = now_ns();
  meta.expires_at_ns = expires_at_ns;
  return dogpile::encode_envelope(meta, std::nullopt, value_for(i, size));
}

std::uint64_t file_size(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return static_cast<std::uint64_t>(st.st_size);
}

UsageCounters usage(LmdbEnv& env, const std::string& region) {
  ReadTxn txn;
  REQUIRE(env.begin_read(txn).is_ok());
  UsageCounters out;
  const Status s = dogpile::internal::read_usage(txn.get(), env.store_dbs(), region, out);
  INFO(s.to_string());
  REQUIRE(s.is_ok());
  return out;
}

std::string_view view(const MDB_val& v) { return {static_cast<const char*>(v.mv_data), v.mv_size}; }

// Every entry of `dbi` as (key, value) copies.
std::vector<std::pair<std::string, std::string>> dump(MDB_txn* txn, MDB_dbi dbi) {
  std::vector<std::pair<std::string, std::string>> out;
  MDB_cursor* cursor = nullptr;
  REQUIRE(mdb_cursor_open(txn, dbi, &cursor) == MDB_SUCCESS);
  MDB_val k{};
  MDB_val v{};
  for (int rc = mdb_cursor_get(cursor, &k, &v, MDB_FIRST); rc == MDB_SUCCESS;
       rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)) {
    out.emplace_back(std::string(view(k)), std::string(view(v)));
  }
  mdb_cursor_close(cursor);
  return out;
}

// What a consistency walk found; empty `problems` means consistent.
struct IndexReport {
  std::size_t entries = 0;
  std::size_t expiring = 0;
  std::vector<std::string> problems;
};

// Walks every region and both indexes and checks them against each other in
// both directions (docs/format.md, "LMDB store layout").
IndexReport check_indexes(LmdbEnv& env) {
  IndexReport report;
  std::vector<RegionRef> regions;
  REQUIRE(dogpile::internal::list_regions(env, regions).is_ok());
  ReadTxn txn;
  REQUIRE(env.begin_read(txn).is_ok());
  const StoreDbs& dbs = env.store_dbs();

  struct Seen {
    std::uint32_t region_id;
    std::string stored_key;
    std::int64_t expires_at;
  };
  std::map<std::uint64_t, Seen> by_seq;  // from the entries
  std::map<std::uint32_t, MDB_dbi> dbi_of;
  for (const RegionRef& region : regions) {
    dbi_of[region.id] = region.dbi;
    for (const auto& [key, record] : dump(txn.get(), region.dbi)) {
      ++report.entries;
      EntryHeader header;
      std::string_view env_bytes;
      if (!dogpile::internal::split_entry(record, header, env_bytes)) {
        report.problems.push_back("short record in " + region.name);
        continue;
      }
      if (header.expires_at_ns != dogpile::internal::envelope_expiry(env_bytes)) {
        report.problems.push_back("header expiry differs from the envelope's");
      }
      if (header.expires_at_ns != dogpile::internal::kNoExpiry) ++report.expiring;
      if (!by_seq.emplace(header.seq, Seen{region.id, key, header.expires_at_ns}).second) {
        report.problems.push_back("write sequence used twice");
      }
    }
  }
  // _written: one entry per stored entry, naming it.
  std::size_t written = 0;
  for (const auto& [key, value] : dump(txn.get(), dbs.written)) {
    ++written;
    std::uint64_t seq = 0;
    IndexTarget target;
    if (!dogpile::internal::split_written_key(key, seq) ||
        !dogpile::internal::split_index_value(value, target)) {
      report.problems.push_back("malformed _written entry");
      continue;
    }
    const auto it = by_seq.find(seq);
    if (it == by_seq.end() || it->second.region_id != target.region_id ||
        it->second.stored_key != target.stored_key) {
      report.problems.push_back("_written entry " + std::to_string(seq) +
                                " names no entry with that sequence");
    }
  }
  if (written != report.entries) {
    report.problems.push_back(std::to_string(report.entries) + " entries but " +
                              std::to_string(written) + " _written entries");
  }
  // _expiry: one entry per expiring entry, naming it with its expiry.
  std::size_t expiry = 0;
  for (const auto& [key, value] : dump(txn.get(), dbs.expiry)) {
    ++expiry;
    std::int64_t expires_at = 0;
    std::uint64_t seq = 0;
    IndexTarget target;
    if (!dogpile::internal::split_expiry_key(key, expires_at, seq) ||
        !dogpile::internal::split_index_value(value, target)) {
      report.problems.push_back("malformed _expiry entry");
      continue;
    }
    const auto it = by_seq.find(seq);
    if (it == by_seq.end() || it->second.region_id != target.region_id ||
        it->second.stored_key != target.stored_key || it->second.expires_at != expires_at) {
      report.problems.push_back("_expiry entry " + std::to_string(seq) + " names no such entry");
    }
  }
  if (expiry != report.expiring) {
    report.problems.push_back(std::to_string(report.expiring) + " expiring entries but " +
                              std::to_string(expiry) + " _expiry entries");
  }
  return report;
}

// Runs `body` in a fork()ed child; its exit code (128 + signal when killed).
int in_child(const std::function<int()>& body) {
  const pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int code = 99;
    try {
      code = body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
      code = 98;
    }
    ::_exit(code);
  }
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -2;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

TEST_CASE("the map starts small and eviction keeps a store within max_size", "[lmdb][space]") {
  TempDir dir;
  const std::uint64_t max_size = 8 * kMiB;
  std::unique_ptr<Backend> b = open_backend(dir.path(), max_size, "fill");
  std::shared_ptr<LmdbEnv> env = env_of(dir.path());
  CHECK(env->map_size() == LmdbEnv::kDefaultMapSize);

  std::mt19937 rng(5);
  std::uniform_int_distribution<std::size_t> sizes(4 << 10, 64 << 10);
  std::vector<std::size_t> written_sizes;
  std::uint64_t total = 0;
  std::uint64_t largest_file = 0;
  std::uint64_t largest_map = 0;
  int failures = 0;
  while (total < 64 * kMiB) {
    const std::uint64_t i = written_sizes.size();
    const std::size_t size = sizes(rng);
    const Status s = b->set("key" + std::to_string(i), value_for(i, size));
    if (!s) {
      ++failures;
      UNSCOPED_INFO("write " << i << ": " << s.to_string());
    }
    written_sizes.push_back(size);
    total += size;
    largest_file = std::max(largest_file, file_size(dir / "data.mdb"));
    largest_map = std::max(largest_map, env->map_size());
    if (i == 4) {
      // A few writes in: still LMDB's default map, a file to match.
      CHECK(env->map_size() == LmdbEnv::kDefaultMapSize);
      CHECK(file_size(dir / "data.mdb") <= LmdbEnv::kDefaultMapSize);
    }
  }
  CHECK(failures == 0);
  // The map stops at max_size, and the file never outgrows the map.
  CHECK(largest_map == max_size);
  CHECK(largest_file <= max_size);

  // Every key is either its exact value or cleanly gone; recent ones stay.
  std::size_t present = 0;
  for (std::uint64_t i = 0; i < written_sizes.size(); ++i) {
    const std::optional<std::string> value = get(*b, "key" + std::to_string(i));
    if (!value) continue;
    ++present;
    REQUIRE(*value == value_for(i, written_sizes[i]));
  }
  CHECK(present > 0);
  CHECK(present < written_sizes.size());
  CHECK(get(*b, "key" + std::to_string(written_sizes.size() - 1)).has_value());
  const UsageCounters counted = usage(*env, "fill");
  CHECK(counted.evictions == written_sizes.size() - present);
  CHECK(counted.expired_purged == 0);

  // Writes keep succeeding after the store is full.
  for (std::uint64_t i = 0; i < 32; ++i) set(*b, "later" + std::to_string(i), value_for(i, 60 << 10));
  CHECK(get(*b, "later31") == value_for(31, 60 << 10));
  const IndexReport report = check_indexes(*env);
  CHECK(report.problems.empty());
  CHECK(report.entries > 0);
}

TEST_CASE("eviction takes expired entries first, then the least recently written",
          "[lmdb][space]") {
  TempDir dir;
  std::unique_ptr<Backend> b = open_backend(dir.path(), 4 * kMiB);
  std::shared_ptr<LmdbEnv> env = env_of(dir.path());
  constexpr std::size_t kSize = 16 << 10;
  const std::int64_t past = now_ns() - std::int64_t{3600} * 1000000000;
  const std::int64_t future = now_ns() + std::int64_t{3600} * 1000000000;

  // Fresh and expired entries interleaved in write order; some fresh ones
  // carry an expiry that is still ahead.
  std::vector<std::string> fresh_order;  // write order of the fresh keys
  std::vector<std::string> expired;
  std::map<std::string, std::string> values;
  std::uint64_t n = 0;
  const auto write = [&](const std::string& key, std::optional<std::int64_t> expires_at) {
    values[key] = envelope(n++, kSize, expires_at);
    set(*b, key, values[key]);
  };
  for (int i = 0; i < 30; ++i) {
    const std::string f = "fresh" + std::to_string(i);
    write(f, i % 3 == 0 ? std::optional<std::int64_t>(future) : std::nullopt);
    fresh_order.push_back(f);
    if (i % 3 == 1) {
      const std::string e = "expired" + std::to_string(i);
      write(e, past);
      expired.push_back(e);
    }
  }
  // Fill until the first eviction round has run.
  for (int i = 0; usage(*env, "default").empty(); ++i) {
    REQUIRE(i < 1000);
    const std::string f = "fill" + std::to_string(i);
    write(f, std::nullopt);
    fresh_order.push_back(f);
  }
  const UsageCounters counted = usage(*env, "default");
  CHECK(counted.expired_purged == expired.size());
  CHECK(counted.evictions > 0);
  for (const std::string& e : expired) CHECK_FALSE(get(*b, e).has_value());
  // The fresh entries gone are exactly the oldest ones.
  std::size_t gone = 0;
  while (gone < fresh_order.size() && !get(*b, fresh_order[gone]).has_value()) ++gone;
  CHECK(gone == counted.evictions);
  for (std::size_t i = gone; i < fresh_order.size(); ++i) {
    INFO(fresh_order[i]);
    CHECK(get(*b, fresh_order[i]) == values[fresh_order[i]]);
  }
  CHECK(check_indexes(*env).problems.empty());
}

TEST_CASE("eviction takes entries stale by their region's expiration before fresh ones",
          "[lmdb][space]") {
  // Region "fast" expires entries after a minute, region "slow" after an
  // hour; neither kind is in the expiry index (no per-entry ttl). "slow"'s
  // fresh entries are written first, "fast"'s stale ones after them: write
  // order alone evicted the fresh ones and kept the stale.
  TempDir dir;
  std::unique_ptr<Backend> slow = open_backend(dir.path(), 4 * kMiB, "slow");
  std::unique_ptr<Backend> fast = open_backend(dir.path(), 4 * kMiB, "fast");
  // Regions tell their backends their expiration, which records it in the store.
  const dogpile::ConfigMap args{{"path", dir.path()}, {"max_size", "4MiB"}};
  dogpile::Region slow_region({.name = "slow", .expiration_time = std::chrono::hours(1)}, "lmdb",
                              args);
  dogpile::Region fast_region({.name = "fast", .expiration_time = std::chrono::minutes(1)},
                              "lmdb", args);
  std::shared_ptr<LmdbEnv> env = env_of(dir.path());
  constexpr std::size_t kSize = 16 << 10;
  const std::int64_t two_minutes_ago = now_ns() - std::int64_t{120} * 1000000000;
  std::uint64_t n = 0;
  std::vector<std::string> slow_order;  // write order of "slow"'s keys
  std::map<std::string, std::string> values;
  const auto write_slow = [&](const std::string& key) {
    values[key] = envelope(n++, kSize, std::nullopt);
    set(*slow, key, values[key]);
    slow_order.push_back(key);
  };
  for (int i = 0; i < 80; ++i) write_slow(str_cat("slow", i));  // > one eviction round
  std::vector<std::string> stale;
  for (int i = 0; i < 10; ++i) {
    dogpile::EnvelopeMeta meta;
    meta.codec = dogpile::CodecId::kRaw;
    meta.created_at_ns = two_minutes_ago;
    stale.push_back(str_cat("fast", i));
    set(*fast, stale.back(), dogpile::encode_envelope(meta, std::nullopt, value_for(n++, kSize)));
  }
  for (int i = 0; usage(*env, "slow").empty() && usage(*env, "fast").empty(); ++i) {
    REQUIRE(i < 1000);
    write_slow(str_cat("fill", i));
  }
  const UsageCounters fast_counted = usage(*env, "fast");
  const UsageCounters slow_counted = usage(*env, "slow");
  CHECK(fast_counted.expired_purged == stale.size());
  CHECK(fast_counted.evictions == 0);
  for (const std::string& key : stale) CHECK_FALSE(get(*fast, key).has_value());
  // Then the least recently written of the fresh ones, oldest first.
  std::size_t gone = 0;
  while (gone < slow_order.size() && !get(*slow, slow_order[gone]).has_value()) ++gone;
  CHECK(gone == slow_counted.evictions);
  for (std::size_t i = gone; i < slow_order.size(); ++i) {
    INFO(slow_order[i]);
    CHECK(get(*slow, slow_order[i]) == values[slow_order[i]]);
  }
  CHECK(check_indexes(*env).problems.empty());
}

TEST_CASE("a reader process keeps reading while a writer process grows the map",
          "[lmdb][space][fork]") {
  TempDir dir;
  const std::string done_flag = dir / "writer-done";
  constexpr int kInitial = 200;
  {
    std::unique_ptr<Backend> b = open_backend(dir.path(), std::uint64_t{1} << 30);
    for (int i = 0; i < kInitial; ++i) set(*b, "init" + std::to_string(i), value_for(i, 1000));
    CHECK(env_of(dir.path())->map_size() == LmdbEnv::kDefaultMapSize);
  }
  constexpr std::uint64_t kTargetMap = 64 * kMiB;
  constexpr std::size_t kBig = 64 << 10;

  dogpile::test::StartGate gate;
  const std::vector<pid_t> pids = dogpile::test::spawn(2, gate, [&](int role) -> int {
    std::unique_ptr<Backend> b = open_backend(dir.path(), std::uint64_t{1} << 30);
    std::shared_ptr<LmdbEnv> env;
    if (!LmdbEnv::acquire(dir.path(), {}, env).is_ok()) return 2;
    if (role == 0) {
      // Writer: grows the map from 1 MiB to kTargetMap.
      int i = 0;
      for (; env->map_size() < kTargetMap; ++i) {
        if (!b->set("big" + std::to_string(i), value_for(100000 + i, kBig)).is_ok()) return 3;
      }
      dogpile::test::log_line(done_flag, std::to_string(i));
      return 0;
    }
    // Reader: two threads read the first entries and whatever big ones they
    // find, checking every byte, until the writer is done; each makes one
    // more round after it has seen that, so both begin transactions on the
    // grown file.
    std::atomic<int> bad{0};
    std::atomic<long> reads{0};
    std::atomic<bool> writer_done{false};
    const auto reader = [&](unsigned seed) {
      std::mt19937 rng(seed);
      for (bool last = false; !last;) {
        last = writer_done.load();
        const int i = static_cast<int>(rng() % kInitial);
        std::optional<std::string> value;
        if (!b->get("init" + std::to_string(i), value).is_ok() || value != value_for(i, 1000)) {
          bad.fetch_add(1);
        }
        const int j = static_cast<int>(rng() % 2000);
        if (!b->get("big" + std::to_string(j), value).is_ok() ||
            (value && *value != value_for(100000 + j, kBig))) {
          bad.fetch_add(1);
        }
        reads.fetch_add(2);
      }
    };
    std::thread t1(reader, 1);
    std::thread t2(reader, 2);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (dogpile::test::read_lines(done_flag).empty() &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    writer_done.store(true);
    t1.join();
    t2.join();
    if (bad.load() != 0) return 4;
    if (reads.load() == 0) return 5;
    // Reads on the grown file adopted the writer's map (the data alone is
    // past half of kTargetMap).
    if (env->map_size() < kTargetMap / 2) return 6;
    return 0;
  });
  gate.open_gate();
  std::map<pid_t, int> statuses;
  CHECK(dogpile::test::reap(pids, &statuses) == 0);
  for (const auto& [pid, status] : statuses) {
    INFO("pid " << pid << " status " << status);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  REQUIRE(dogpile::test::read_lines(done_flag).size() == 1);
  // The parent's own fresh environment sees everything.
  std::unique_ptr<Backend> b = open_backend(dir.path(), std::uint64_t{1} << 30);
  CHECK(get(*b, "init7") == value_for(7, 1000));
  CHECK(get(*b, "big0") == value_for(100000, kBig));
}

TEST_CASE("a value above half of max_size is CacheFull and evicts nothing", "[lmdb][space]") {
  TempDir dir;
  const std::uint64_t max_size = 4 * kMiB;
  std::unique_ptr<Backend> b = open_backend(dir.path(), max_size, "full");
  for (int i = 0; i < 20; ++i) set(*b, "k" + std::to_string(i), value_for(i, 50000));
  const std::string big = value_for(999, max_size / 2 + 1);
  const Status s = b->set("big", big);
  CHECK(s.code() == StatusCode::kFull);
  CHECK_THAT(s.to_string(), Catch::Contains("max_size") && Catch::Contains("4194304") &&
                                Catch::Contains(std::to_string(big.size() + 16)));
  CHECK_FALSE(get(*b, "big").has_value());
  for (int i = 0; i < 20; ++i) CHECK(get(*b, "k" + std::to_string(i)) == value_for(i, 50000));
  CHECK(usage(*env_of(dir.path()), "full").evictions == 0);
  // The multi form is refused the same way, as a whole.
  const std::vector<KeyValue> items{{"a", value_for(1, max_size / 4)},
                                    {"b", value_for(2, max_size / 4 + 64)}};
  CHECK(b->set_multi(items).code() == StatusCode::kFull);
  CHECK_FALSE(get(*b, "a").has_value());

  SECTION("through a Region") {
    std::vector<std::string> logged;
    dogpile::Region region(
        {.name = "full",
         .logger = [&](dogpile::LogLevel, std::string_view m) { logged.emplace_back(m); }},
        std::shared_ptr<Backend>(std::move(b)));
    const std::string huge(max_size / 2 + 100, 'x');
    CHECK_THROWS_AS(region.set<std::string>("big", huge), dogpile::CacheFull);
    CHECK_THROWS_AS(region.set<std::string>("big2", huge), dogpile::CacheFull);
    int calls = 0;
    const std::string created = region.get_or_create<std::string>("made", [&] {
      ++calls;
      return huge;
    });
    CHECK(created == huge);
    CHECK(calls == 1);
    CHECK_FALSE(region.get<std::string>("made").has_value());
    // Logged once for the region, with the sizes.
    REQUIRE(logged.size() == 1);
    CHECK_THAT(logged[0], Catch::Contains("'full'") && Catch::Contains("max_size"));
    // Smaller values still go in.
    region.set<std::string>("small", "fits");
    CHECK(region.get<std::string>("small") == "fits");
  }
}

TEST_CASE("usage counters written by processes are read by another", "[lmdb][space][fork]") {
  TempDir dir;
  const std::string path = dir.path();
  // Each writer: 3 get_or_create, 4 hits, 1 mismatch (a miss).
  const auto work = [&](dogpile::Region& region) {
    for (int i = 0; i < 3; ++i) {
      region.get_or_create<std::string>("k" + std::to_string(i), [] { return std::string("v"); });
    }
    for (int i = 0; i < 4; ++i) (void)region.get<std::string>("k1");
    (void)region.get<std::int64_t>("k1");  // a string: a mismatch (and a miss)
  };
  dogpile::test::StartGate gate;
  const std::vector<pid_t> pids = dogpile::test::spawn(2, gate, [&](int i) -> int {
    if (i == 0) {
      // Publishes after every operation.
      dogpile::Region region({.name = "counted", .stats_interval = dogpile::Duration::zero()},
                             "lmdb", {{"path", path}});
      work(region);
    } else {
      // Publishes when the region goes (the interval never passes here).
      dogpile::Region region({.name = "counted", .stats_interval = std::chrono::hours(1)}, "lmdb",
                             {{"path", path}});
      work(region);
    }
    return 0;
  });
  gate.open_gate();
  REQUIRE(dogpile::test::reap(pids) == 0);

  // A third process (this one, which has not opened the directory) reads.
  std::unique_ptr<Backend> b = open_backend(path, std::uint64_t{1} << 30, "reader");
  const UsageCounters u = usage(*env_of(path), "counted");
  // The two writers race for the keys, and the creation lock makes one
  // creation per key in all. Each get_or_create counts once: a miss where
  // it created, a hit where it found the value (at once, or after waiting
  // for the other creator). The hits add up to 2 * 4 + 2 * 3 - 3 whoever
  // won, the misses to 2 (mismatches) + 3.
  CHECK(u.creations == 3);
  CHECK(u.mismatches == 2);
  CHECK(u.hits == 11);
  CHECK(u.misses == 5);
  CHECK(u.stale_served == 0);
  CHECK(u.evictions == 0);

  SECTION("flush_stats publishes at once; nothing is published twice") {
    dogpile::Region region({.name = "counted", .stats_interval = std::chrono::hours(1)}, "lmdb",
                           {{"path", path}});
    (void)region.get<std::string>("k0");
    (void)region.get<std::string>("absent");
    CHECK(usage(*env_of(path), "counted") == u);  // not yet: the interval has not passed
    region.flush_stats();
    UsageCounters expected = u;
    expected.hits += 1;
    expected.misses += 1;
    CHECK(usage(*env_of(path), "counted") == expected);
    region.flush_stats();
    CHECK(usage(*env_of(path), "counted") == expected);
  }
}

TEST_CASE("the indexes follow every set, overwrite, erase and expiry", "[lmdb][space]") {
  TempDir dir;
  std::unique_ptr<Backend> a = open_backend(dir.path(), 64 * kMiB, "a");
  std::unique_ptr<Backend> c = open_backend(dir.path(), 64 * kMiB, "c");
  std::shared_ptr<LmdbEnv> env = env_of(dir.path());
  std::map<std::pair<int, std::string>, std::string> model;
  std::mt19937 rng(11);
  const std::int64_t now = now_ns();
  const auto key_of = [&](unsigned k) {
    // Some keys are long enough to be stored under their hash.
    return k % 7 == 0 ? std::string(600, 'L') + std::to_string(k) : "key" + std::to_string(k);
  };
  const auto make_value = [&](unsigned n) -> std::string {
    switch (rng() % 4) {
      case 0: return envelope(n, 100 + rng() % 3000, now - 1000000);       // expired
      case 1: return envelope(n, 100 + rng() % 3000, now + 3600000000000);  // expires later
      case 2: return envelope(n, 100 + rng() % 3000, std::nullopt);
      default: return value_for(n, rng() % 200);  // not an envelope
    }
  };
  for (unsigned step = 0; step < 3000; ++step) {
    const int r = static_cast<int>(rng() % 2);
    Backend& b = r == 0 ? *a : *c;
    const std::string key = key_of(rng() % 150);
    switch (rng() % 6) {
      case 0:
      case 1:
      case 2: {
        const std::string v = make_value(step);
        set(b, key, v);
        model[{r, key}] = v;
        break;
      }
      case 3:
        REQUIRE(b.erase(key).is_ok());
        model.erase({r, key});
        break;
      case 4: {
        std::vector<KeyValue> items;
        for (int i = 0; i < 3; ++i) items.emplace_back(key_of(rng() % 150), make_value(step));
        REQUIRE(b.set_multi(items).is_ok());
        for (auto& [k, v] : items) model[{r, k}] = v;
        break;
      }
      default: {
        std::vector<std::string> keys{key, key_of(rng() % 150)};
        REQUIRE(b.erase_multi(keys).is_ok());
        for (const auto& k : keys) model.erase({r, k});
      }
    }
    if (step % 500 == 499) {
      // Purge the expired ones now and then.
      RemovalStep removed;
      REQUIRE(env->write(
                     [&](MDB_txn* txn) {
                       return dogpile::internal::purge_expired(*env, txn, env->store_dbs(),
                                                               now_ns(), 1000, removed);
                     },
                     0)
                  .is_ok());
      for (auto it = model.begin(); it != model.end();) {
        const std::int64_t e = dogpile::internal::envelope_expiry(it->second);
        it = e <= now_ns() ? model.erase(it) : std::next(it);
      }
      const IndexReport report = check_indexes(*env);
      for (const auto& p : report.problems) UNSCOPED_INFO(p);
      REQUIRE(report.problems.empty());
    }
  }
  const IndexReport report = check_indexes(*env);
  for (const auto& p : report.problems) UNSCOPED_INFO(p);
  CHECK(report.problems.empty());
  CHECK(report.entries == model.size());
  for (const auto& [rk, v] : model) {
    INFO(rk.second.substr(0, 20));
    CHECK(get(rk.first == 0 ? *a : *c, rk.second) == v);
  }
}

TEST_CASE("purging expired entries works in bounded batches", "[lmdb][space]") {
  TempDir dir;
  std::unique_ptr<Backend> b = open_backend(dir.path(), 64 * kMiB, "purge");
  std::shared_ptr<LmdbEnv> env = env_of(dir.path());
  const std::int64_t now = now_ns();
  const int expired_count = GENERATE(25, 20);
  for (int i = 0; i < expired_count; ++i) {
    set(*b, "old" + std::to_string(i), envelope(i, 500, now - 1000 * (i + 1)));
  }
  const std::int64_t hour = std::int64_t{3600} * 1000000000;
  for (int i = 0; i < 10; ++i) set(*b, "later" + std::to_string(i), envelope(i, 500, now + hour));
  for (int i = 0; i < 10; ++i) set(*b, "never" + std::to_string(i), envelope(i, 500, std::nullopt));
  for (int i = 0; i < 5; ++i) set(*b, "raw" + std::to_string(i), "not an envelope");

  std::vector<RemovalStep> steps;
  for (bool more = true; more;) {
    REQUIRE(steps.size() < 10);
    RemovalStep step;
    REQUIRE(env->write(
                   [&](MDB_txn* txn) {
                     return dogpile::internal::purge_expired(*env, txn, env->store_dbs(), now, 10,
                                                             step);
                   },
                   0)
                .is_ok());
    steps.push_back(step);
    more = step.more;
  }
  std::uint64_t removed = 0;
  for (const RemovalStep& step : steps) {
    CHECK(step.removed <= 10);
    CHECK(step.bytes == step.removed * (16 + 500 + dogpile::kEnvelopeHeaderSize +
                                        dogpile::kEnvelopeTrailerSize));
    removed += step.removed;
  }
  CHECK(removed == static_cast<std::uint64_t>(expired_count));
  CHECK(steps.size() == static_cast<std::size_t>((expired_count + 9) / 10));
  CHECK(steps.back().more == false);
  for (int i = 0; i < expired_count; ++i) CHECK_FALSE(get(*b, "old" + std::to_string(i)).has_value());
  for (int i = 0; i < 10; ++i) CHECK(get(*b, "later" + std::to_string(i)).has_value());
  for (int i = 0; i < 10; ++i) CHECK(get(*b, "never" + std::to_string(i)).has_value());
  CHECK(usage(*env, "purge").expired_purged == static_cast<std::uint64_t>(expired_count));
  const IndexReport report = check_indexes(*env);
  CHECK(report.problems.empty());
  CHECK(report.entries == 25);
  CHECK(report.expiring == 10);

  // Clearing a region removes its entries and their index entries, in batches.
  std::optional<RegionRef> region;
  REQUIRE(dogpile::internal::find_region(*env, "purge", region).is_ok());
  REQUIRE(region);
  RemovalStep cleared;
  REQUIRE(env->write(
                 [&](MDB_txn* txn) {
                   return dogpile::internal::clear_region(txn, env->store_dbs(), *region, 20,
                                                          cleared);
                 },
                 0)
              .is_ok());
  CHECK(cleared.removed == 20);
  CHECK(cleared.more);
  CHECK(check_indexes(*env).problems.empty());
  CHECK(check_indexes(*env).entries == 5);
}

TEST_CASE("regions get ids; finding one creates nothing", "[lmdb][space]") {
  TempDir dir;
  std::unique_ptr<Backend> a = open_backend(dir.path(), 64 * kMiB, "alpha");
  std::unique_ptr<Backend> z = open_backend(dir.path(), 64 * kMiB, "zeta");
  std::unique_ptr<Backend> m = open_backend(dir.path(), 64 * kMiB, "mid");
  std::shared_ptr<LmdbEnv> env = env_of(dir.path());
  std::vector<RegionRef> regions;
  REQUIRE(dogpile::internal::list_regions(*env, regions).is_ok());
  REQUIRE(regions.size() == 3);
  CHECK(regions[0].name == "alpha");
  CHECK(regions[1].name == "mid");
  CHECK(regions[2].name == "zeta");
  CHECK(regions[0].id == 1);
  CHECK(regions[1].id == 3);
  CHECK(regions[2].id == 2);

  std::optional<RegionRef> found;
  REQUIRE(dogpile::internal::find_region(*env, "nowhere", found).is_ok());
  CHECK_FALSE(found);
  REQUIRE(dogpile::internal::list_regions(*env, regions).is_ok());
  CHECK(regions.size() == 3);

  // Another process finds them by name, with the same ids, and reads entries.
  set(*z, "k", "v");
  CHECK(in_child([&] {
          std::shared_ptr<LmdbEnv> own;
          if (!LmdbEnv::acquire(dir.path(), {}, own).is_ok()) return 1;
          std::optional<RegionRef> ref;
          if (!dogpile::internal::find_region(*own, "zeta", ref).is_ok() || !ref) return 2;
          if (ref->id != 2) return 3;
          std::optional<RegionRef> none;
          if (!dogpile::internal::find_region(*own, "nowhere", none).is_ok() || none) return 4;
          ReadTxn txn;
          if (!own->begin_read(txn).is_ok()) return 5;
          dogpile::internal::StoredKey key("k");
          MDB_val k = key.val();
          MDB_val v{};
          if (mdb_get(txn.get(), ref->dbi, &k, &v) != MDB_SUCCESS) return 6;
          EntryHeader header;
          std::string_view value;
          if (!dogpile::internal::split_entry(view(v), header, value) || value != "v") return 7;
          return 0;
        }) == 0);
  REQUIRE(dogpile::internal::list_regions(*env, regions).is_ok());
  CHECK(regions.size() == 3);
}

TEST_CASE("a store in another layout is emptied and rewritten", "[lmdb][space]") {
  TempDir dir;
  {
    // A store as the first layout wrote it: region sub-databases of bare
    // envelopes, no store tables.
    MDB_env* raw = nullptr;
    REQUIRE(mdb_env_create(&raw) == MDB_SUCCESS);
    REQUIRE(mdb_env_set_maxdbs(raw, 4) == MDB_SUCCESS);
    REQUIRE(mdb_env_open(raw, dir.path().c_str(), MDB_NOTLS, 0600) == MDB_SUCCESS);
    MDB_txn* txn = nullptr;
    REQUIRE(mdb_txn_begin(raw, nullptr, 0, &txn) == MDB_SUCCESS);
    for (const char* name : {"region:old", "region:other"}) {
      MDB_dbi dbi = 0;
      REQUIRE(mdb_dbi_open(txn, name, MDB_CREATE, &dbi) == MDB_SUCCESS);
      std::string k = "kkey";
      std::string v = envelope(1, 10, std::nullopt);
      MDB_val kv{k.size(), k.data()};
      MDB_val vv{v.size(), v.data()};
      REQUIRE(mdb_put(txn, dbi, &kv, &vv, 0) == MDB_SUCCESS);
    }
    REQUIRE(mdb_txn_commit(txn) == MDB_SUCCESS);
    mdb_env_close(raw);
  }
  // The opener says so on stderr, once.
  const std::string log = dir / "stderr.log";
  std::fflush(stderr);
  const int saved = ::dup(2);
  REQUIRE(saved >= 0);
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  ::dup2(fd, 2);
  ::close(fd);
  std::unique_ptr<Backend> b = open_backend(dir.path(), 64 * kMiB, "old");
  std::unique_ptr<Backend> again = open_backend(dir.path(), 64 * kMiB, "other");
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  const std::vector<std::string> lines = dogpile::test::read_lines(log);
  REQUIRE(lines.size() == 1);
  CHECK_THAT(lines[0], Catch::Contains(dir.path()) && Catch::Contains("another store layout") &&
                           Catch::Contains("2 region"));
  CHECK_FALSE(get(*again, "key").has_value());
  CHECK_FALSE(get(*b, "key").has_value());  // emptied, not misread
  set(*b, "key", "new");
  CHECK(get(*b, "key") == "new");
  std::shared_ptr<LmdbEnv> env = env_of(dir.path());
  {
    ReadTxn txn;
    REQUIRE(env->begin_read(txn).is_ok());
    std::string layout_key = "layout";
    MDB_val k{layout_key.size(), layout_key.data()};
    MDB_val v{};
    REQUIRE(mdb_get(txn.get(), env->store_dbs().meta, &k, &v) == MDB_SUCCESS);
    CHECK(view(v) == std::string("\x02\0\0\0", 4));
  }
  std::vector<RegionRef> regions;
  REQUIRE(dogpile::internal::list_regions(*env, regions).is_ok());
  // Both were emptied; they got ids when opened again.
  REQUIRE(regions.size() == 2);
  CHECK(regions[0].name == "old");
  CHECK(regions[1].name == "other");
  CHECK(check_indexes(*env).problems.empty());
}

TEST_CASE("values near half of max_size keep replacing each other", "[lmdb][space]") {
  // Each write finds one old entry to evict: a round of a single removal,
  // whose pages the retried write must still be able to reuse.
  TempDir dir;
  const std::uint64_t max_size = 3 * kMiB;
  std::unique_ptr<Backend> b = open_backend(dir.path(), max_size);
  const std::size_t size = max_size / 2 - 64 * 1024;
  for (std::uint64_t i = 0; i < 10; ++i) {
    const Status s = b->set("k" + std::to_string(i), value_for(i, size));
    INFO("write " << i << ": " << s.to_string());
    REQUIRE(s.is_ok());
  }
  CHECK(get(*b, "k9") == value_for(9, size));
  CHECK_FALSE(get(*b, "k0").has_value());
  CHECK(file_size(dir / "data.mdb") <= max_size);
  CHECK(usage(*env_of(dir.path()), "default").evictions >= 8);
}

TEST_CASE("eviction reaches regions this process never opened", "[lmdb][space][fork]") {
  TempDir dir;
  const std::uint64_t max_size = 4 * kMiB;
  // Another process fills region "theirs" first: those entries are the oldest.
  REQUIRE(in_child([&] {
            std::unique_ptr<Backend> theirs = open_backend(dir.path(), max_size, "theirs");
            for (int i = 0; i < 20; ++i) {
              if (!theirs->set(str_cat("t", i), value_for(i, 20000)).is_ok()) return 1;
            }
            return 0;
          }) == 0);
  std::unique_ptr<Backend> mine = open_backend(dir.path(), max_size, "mine");
  std::shared_ptr<LmdbEnv> env = env_of(dir.path());
  int i = 0;
  for (; usage(*env, "theirs").evictions < 20; ++i) {
    REQUIRE(i < 2000);
    set(*mine, "m" + std::to_string(i), value_for(i, 30000));
  }
  CHECK(usage(*env, "mine").evictions < static_cast<std::uint64_t>(i));
  CHECK(check_indexes(*env).problems.empty());
  CHECK(get(*mine, "m" + std::to_string(i - 1)) == value_for(i - 1, 30000));
}

TEST_CASE("a region used on both sides of fork() counts each operation once",
          "[lmdb][space][fork]") {
  TempDir dir;
  dogpile::Region region({.name = "forked", .stats_interval = std::chrono::hours(1)}, "lmdb",
                         {{"path", dir.path()}});
  region.set<std::string>("k", "v");
  for (int i = 0; i < 3; ++i) CHECK_FALSE(region.get<std::string>("absent").has_value());
  // The parent's three misses are not published yet when the child starts.
  CHECK(in_child([&] {
          for (int i = 0; i < 2; ++i) {
            if (region.get<std::string>("k") != "v") return 1;
          }
          region.flush_stats();
          return 0;
        }) == 0);
  CHECK(region.get<std::string>("k") == "v");
  region.flush_stats();
  const UsageCounters u = usage(*env_of(dir.path()), "forked");
  CHECK(u.hits == 3);
  CHECK(u.misses == 3);
}
