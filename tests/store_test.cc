// Store: the operator's view of an lmdb cache directory. Entries are written
// through the lmdb backend (or a Region) and damaged through the layout API
// or raw LMDB calls, in temporary directories; other processes are real
// fork()ed children.
#include <catch2/catch.hpp>

#include <lmdb.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backends/lmdb_env.h"
#include "backends/lmdb_layout.h"
#include "backends/stamp_file.h"
#include "dogpile/dogpile.h"
#include "dogpile/store.h"
#include "process_util.h"
#include "test_util.h"

using namespace dogpile;
using namespace std::chrono_literals;
using dogpile::test::TempDir;
using namespace dogpile::test;

namespace {

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string envelope_for(std::string_view key, std::string_view payload,
                         std::optional<std::int64_t> expires_at = std::nullopt) {
  EnvelopeMeta meta;
  meta.type_tag = 7;
  meta.schema_version = 1;
  meta.codec = CodecId::kRaw;
  meta.created_at_ns = now_ns();
  meta.expires_at_ns = expires_at;
  std::optional<std::string_view> full_key;
  if (key.size() > kMaxInlineKeySize) full_key = key;
  return encode_envelope(meta, full_key, payload);
}

// Writes entries of one region through the lmdb backend, as a Region would.
class Writer {
 public:
  Writer(const std::string& dir, const std::string& region)
      : backend_(open_lmdb_backend(LmdbOptions{.path = dir, .region = region})) {}

  void put(std::string_view key, std::string_view payload,
           std::optional<std::int64_t> expires_at = std::nullopt) {
    throw_if_error(backend_->set(key, envelope_for(key, payload, expires_at)));
  }
  void put_raw(std::string_view key, std::string_view bytes) {
    throw_if_error(backend_->set(key, bytes));
  }

 private:
  std::unique_ptr<Backend> backend_;
};

Store open_store(const std::string& dir) { return Store::open(StoreOptions{.path = dir}); }

// This process's environment of `dir` (shared with the backends above).
std::shared_ptr<internal::LmdbEnv> env_of(const std::string& dir) {
  std::shared_ptr<internal::LmdbEnv> env;
  throw_if_error(internal::LmdbEnv::acquire(dir, internal::LmdbEnvOptions{}, env));
  return env;
}

internal::RegionRef region_ref(internal::LmdbEnv& env, std::string_view name) {
  std::optional<internal::RegionRef> ref;
  throw_if_error(internal::find_region(env, name, ref));
  REQUIRE(ref);
  return *ref;
}

// Runs `body` on a write transaction of `dir` and commits it. The region is
// looked up first: opening its handle may need a write transaction itself.
template <class F>
void raw_write(const std::string& dir, std::string_view region, F&& body) {
  auto env = env_of(dir);
  const internal::RegionRef ref = region_ref(*env, region);
  internal::WriteTxn txn;
  throw_if_error(env->begin_write(txn));
  body(*env, txn.get(), ref);
  throw_if_error(txn.commit());
}

std::uint64_t seq_of(const std::string& dir, std::string_view region, std::string_view key) {
  auto env = env_of(dir);
  const internal::RegionRef ref = region_ref(*env, region);
  internal::ReadTxn txn;
  throw_if_error(env->begin_read(txn));
  internal::StoredKey stored(key);
  MDB_val k = stored.val();
  MDB_val v{};
  REQUIRE(mdb_get(txn.get(), ref.dbi, &k, &v) == MDB_SUCCESS);
  internal::EntryHeader header;
  std::string_view envelope;
  REQUIRE(
      internal::split_entry({static_cast<const char*>(v.mv_data), v.mv_size}, header, envelope));
  return header.seq;
}

std::vector<std::string> keys_of(const std::vector<EntryInfo>& entries) {
  std::vector<std::string> out;
  for (const EntryInfo& e : entries) out.push_back(e.region + "/" + e.key);
  return out;
}

bool has_problem(const VerifyReport& report, std::string_view region, std::string_view key,
                 std::string_view what) {
  return std::any_of(report.problems.begin(), report.problems.end(), [&](const VerifyProblem& p) {
    return p.region == region && p.key == key && p.what.find(what) != std::string::npos;
  });
}

std::string describe(const VerifyReport& report) {
  std::string out;
  for (const VerifyProblem& p : report.problems)
    out += p.region + " | " + p.key + " | " + p.what + "\n";
  return out;
}

std::uint64_t file_size(const std::string& path) {
  return static_cast<std::uint64_t>(std::filesystem::file_size(path));
}

unsigned mode_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

// `call` on region `region`, which the store lacks: a StoreError (ENOENT)
// naming it.
void check_no_region(const std::function<void()>& call, const std::string& region) {
  try {
    call();
    FAIL("no error for the unknown region " + region);
  } catch (const StoreError& e) {
    CHECK(e.sys_errno() == ENOENT);
    CHECK(std::string(e.what()).find("'" + region + "'") != std::string::npos);
  }
}

int run_child(const std::function<int()>& body) {
  StartGate gate;
  const auto pids = spawn(1, gate, [&](int) { return body(); });
  gate.open_gate();
  std::map<pid_t, int> statuses;
  reap(pids, &statuses);
  const int status = statuses.at(pids[0]);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

TEST_CASE("open refuses a directory without a cache and creates nothing", "[store]") {
  TempDir dir;
  const std::string missing = dir / "missing";
  try {
    open_store(missing);
    FAIL("opened a missing directory");
  } catch (const StoreError& e) {
    CHECK(e.sys_errno() == ENOENT);
    CHECK(e.path() == missing);
    CHECK(std::string(e.what()).find(missing) != std::string::npos);
  }
  CHECK_FALSE(std::filesystem::exists(missing));

  // An existing directory without data.mdb is no cache either.
  const std::string empty = dir / "empty";
  std::filesystem::create_directory(empty);
  CHECK_THROWS_AS(open_store(empty), StoreError);
  CHECK(std::filesystem::is_empty(empty));

  // Unless asked to create one.
  Store created = Store::open(StoreOptions{.path = empty, .must_exist = false});
  CHECK(created.path() == empty);
  CHECK(std::filesystem::exists(empty + "/data.mdb"));
  CHECK(created.regions().empty());
  CHECK(created.list().empty());
}

TEST_CASE("open checks its options", "[store]") {
  TempDir dir;
  CHECK_THROWS_AS(Store::open(StoreOptions{.path = dir.path(), .must_exist = false, .max_size = 0}),
                  ConfigError);
  CHECK_THROWS_AS(
      Store::open(StoreOptions{.path = dir.path(), .must_exist = false, .max_regions = 0}),
      ConfigError);
}

TEST_CASE("stats counts entries and bytes per region, and totals", "[store]") {
  TempDir dir;
  {
    Writer a(dir.path(), "alpha");
    Writer b(dir.path(), "beta");
    for (int i = 0; i < 30; ++i) a.put(str_cat("a", i), std::string(100, 'a'));
    for (int i = 0; i < 5; ++i) b.put("b" + std::to_string(i), std::string(5000, 'b'));
  }
  Store store = open_store(dir.path());
  CHECK(store.regions() == std::vector<std::string>{"alpha", "beta"});
  const StoreStats stats = store.stats();
  CHECK(stats.path == dir.path());
  REQUIRE(stats.regions.size() == 2);
  const RegionUsage& alpha = stats.regions[0];
  const RegionUsage& beta = stats.regions[1];
  CHECK(alpha.name == "alpha");
  CHECK(alpha.entries == 30);
  CHECK(beta.name == "beta");
  CHECK(beta.entries == 5);
  const long page = ::sysconf(_SC_PAGESIZE);
  CHECK(alpha.bytes >= static_cast<std::uint64_t>(page));
  CHECK(alpha.bytes % static_cast<std::uint64_t>(page) == 0);
  // Five 5000-byte values need overflow pages: at least their bytes.
  CHECK(beta.bytes >= 5 * 5000);
  CHECK(stats.total.name == "total");
  CHECK(stats.total.entries == 35);
  CHECK(stats.total.bytes == alpha.bytes + beta.bytes);
  CHECK(stats.map_size > 0);
  CHECK(stats.max_size == LmdbOptions{}.max_size);
  CHECK(stats.file_size == file_size(dir / "data.mdb"));
  CHECK(stats.used_bytes >= stats.total.bytes);
  CHECK(stats.used_bytes <= stats.map_size);
  CHECK(stats.max_readers >= LmdbOptions{}.max_readers);
  CHECK(stats.readers_used <= stats.max_readers);
}

// Pages in use in `dir` counted another way than Store does: the two meta
// pages and every tree's pages, the free list's own tree included.
std::uint64_t pages_in_trees(const std::string& dir, std::string_view region) {
  auto env = env_of(dir);
  const internal::RegionRef ref = region_ref(*env, region);
  internal::ReadTxn txn;
  throw_if_error(env->begin_read(txn));
  const internal::StoreDbs& dbs = env->store_dbs();
  std::uint64_t pages = 2;
  for (const MDB_dbi dbi : {MDB_dbi{0}, MDB_dbi{1}, dbs.meta, dbs.written, dbs.expiry, ref.dbi}) {
    MDB_stat st{};
    REQUIRE(mdb_stat(txn.get(), dbi, &st) == MDB_SUCCESS);
    pages += st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages;
  }
  return pages;
}

TEST_CASE("stats counts the pages in use and those on LMDB's free list", "[store]") {
  TempDir dir;
  {
    Writer w(dir.path(), "r");
    // Each value fills an overflow page of its own.
    for (int i = 0; i < 300; ++i) w.put(str_cat("k", i), std::string(3000, 'v'));
  }
  Store store = open_store(dir.path());
  const StoreStats full = store.stats();
  CHECK(full.page_size == static_cast<std::uint32_t>(::sysconf(_SC_PAGESIZE)));
  CHECK(full.used_bytes == full.used_pages * full.page_size);
  CHECK(full.free_bytes == full.free_pages * full.page_size);
  CHECK(full.used_pages == pages_in_trees(dir.path(), "r"));
  CHECK(full.used_pages >= 300);
  CHECK((full.used_pages + full.free_pages) * full.page_size <= full.file_size);

  // The pages of removed entries go on the free list; the file keeps its size.
  CHECK(store.clear("r") == 300);
  const StoreStats cleared = store.stats();
  CHECK(cleared.used_pages == pages_in_trees(dir.path(), "r"));
  CHECK(cleared.used_pages + 290 <= full.used_pages);
  CHECK(cleared.free_pages >= full.free_pages + 290);
  CHECK(cleared.used_pages + cleared.free_pages >= full.used_pages + full.free_pages);
  CHECK(cleared.file_size == full.file_size);
}

TEST_CASE("stats shows the max_size the last program to open the cache recorded",
          "[store][fork]") {
  TempDir dir;
  constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;
  const std::optional<std::uint64_t> not_recorded;
  // A store opens with a max_size of its own, which it does not record.
  Store store = Store::open(StoreOptions{.path = dir.path(), .must_exist = false});
  CHECK(store.stats().max_size == not_recorded);

  const auto open_in_child = [&](std::uint64_t max_size, bool read_only) {
    return run_child([&] {
      auto backend = open_lmdb_backend(LmdbOptions{
          .path = dir.path(), .region = "r", .max_size = max_size, .read_only = read_only});
      return 0;
    });
  };
  REQUIRE(open_in_child(64 * kMiB, false) == 0);
  CHECK(store.stats().max_size == 64 * kMiB);
  CHECK(open_store(dir.path()).stats().max_size == 64 * kMiB);
  // A later program with another max_size replaces it; a read-only one
  // records nothing.
  REQUIRE(open_in_child(3 * kMiB, false) == 0);
  CHECK(store.stats().max_size == 3 * kMiB);
  REQUIRE(open_in_child(512 * kMiB, true) == 0);
  CHECK(store.stats().max_size == 3 * kMiB);

  // In this process the store opened the directory first, so a backend here
  // grows the map to the store's max_size, and records that.
  auto backend = open_lmdb_backend(
      LmdbOptions{.path = dir.path(), .region = "here", .max_size = 8 * kMiB});
  CHECK(store.stats().max_size == StoreOptions{}.max_size);
}

TEST_CASE("stats reads usage counters written in another process", "[store][fork]") {
  TempDir dir;
  Writer(dir.path(), "counted").put("seed", "x");
  const int rc = run_child([&] {
    auto backend = open_lmdb_backend(LmdbOptions{.path = dir.path(), .region = "counted"});
    backend->add_usage(UsageCounters{.hits = 4, .misses = 3, .creations = 1});
    backend->add_usage(UsageCounters{.hits = 1, .corruptions = 2});
    // A region that never stored anything still has its counters.
    auto idle = open_lmdb_backend(LmdbOptions{.path = dir.path(), .region = "idle"});
    idle->add_usage(UsageCounters{.misses = 9});
    return 0;
  });
  REQUIRE(rc == 0);
  Store store = open_store(dir.path());
  const StoreStats stats = store.stats();
  REQUIRE(stats.regions.size() == 2);
  const RegionUsage& counted = stats.regions[0];
  CHECK(counted.name == "counted");
  CHECK(counted.entries == 1);
  CHECK(counted.counters ==
        UsageCounters{.hits = 5, .misses = 3, .creations = 1, .corruptions = 2});
  CHECK(stats.regions[1].name == "idle");
  CHECK(stats.regions[1].entries == 0);
  CHECK(stats.regions[1].counters == UsageCounters{.misses = 9});
  CHECK(stats.total.counters ==
        UsageCounters{.hits = 5, .misses = 12, .creations = 1, .corruptions = 2});
}

TEST_CASE("stats reads the counters of a region in another process", "[store][fork]") {
  TempDir dir;
  const int rc = run_child([&] {
    Region region({.name = "used"}, "lmdb", {{"path", dir.path()}});
    for (int i = 0; i < 3; ++i) {
      if (region.get<std::string>("missing-" + std::to_string(i))) return 1;
    }
    region.set<std::string>("k", "v");
    for (int i = 0; i < 4; ++i) {
      if (!region.get<std::string>("k")) return 2;
    }
    region.get_or_create<std::string>("made", [] { return std::string("new"); });
    region.flush_stats();
    return 0;
  });
  REQUIRE(rc == 0);
  Store store = open_store(dir.path());
  const StoreStats stats = store.stats();
  REQUIRE(stats.regions.size() == 1);
  CHECK(stats.regions[0].name == "used");
  CHECK(stats.regions[0].entries == 2);
  const UsageCounters& c = stats.regions[0].counters;
  CHECK(c.hits == 4);
  CHECK(c.misses == 4);  // three gets, and the get_or_create that created
  CHECK(c.creations == 1);
  CHECK(c.corruptions == 0);
  CHECK(stats.total.counters == c);
}

TEST_CASE("zero_stats resets counters while another process adds to them", "[store][fork]") {
  TempDir dir;
  open_lmdb_backend(LmdbOptions{.path = dir.path(), .region = "calm"})
      ->add_usage(UsageCounters{.hits = 7, .evictions = 2});
  open_lmdb_backend(LmdbOptions{.path = dir.path(), .region = "busy"});
  Store store = open_store(dir.path());

  // One region: the other keeps its counters.
  const ZeroReport calm = store.zero_stats("calm");
  CHECK(calm.regions == 1);
  CHECK(calm.counters == UsageCounters{.hits = 7, .evictions = 2});
  CHECK(store.stats().total.counters.empty());
  CHECK(store.zero_stats("calm").regions == 0);
  check_no_region([&] { store.zero_stats("nosuch"); }, "nosuch");

  // Every region, again and again, while a child adds one at a time until
  // told to stop.
  const std::string stop = dir / "stop";
  const std::string log = dir / "log";
  StartGate gate;
  const std::vector<pid_t> pids = spawn(1, gate, [&](int) {
    auto busy = open_lmdb_backend(
        LmdbOptions{.path = dir.path(), .region = "busy", .durability = Durability::kNoSync});
    std::uint64_t adds = 0;
    for (; !std::filesystem::exists(stop); ++adds) {
      busy->add_usage(UsageCounters{.hits = 1, .misses = 2});
    }
    log_line(log, "adds " + std::to_string(adds));
    return 0;
  });
  gate.open_gate();
  constexpr int kResets = 200;
  UsageCounters removed;
  for (int i = 0; i < kResets; ++i) {
    // Something to reset first: the child is adding.
    while (store.stats().total.counters.empty()) std::this_thread::sleep_for(1ms);
    const ZeroReport report = store.zero_stats();
    CHECK(report.regions == 1);
    removed += report.counters;
  }
  std::ofstream(stop).put('\n');
  REQUIRE(reap(pids) == 0);
  const std::vector<std::string> lines = read_lines(log);
  REQUIRE(lines.size() == 1);
  const std::uint64_t adds = std::stoull(lines[0].substr(5));
  // What was reset and what came after: every addition, exactly once.
  UsageCounters all = removed;
  all += store.stats().total.counters;
  CHECK(all == UsageCounters{.hits = adds, .misses = 2 * adds});
  CHECK(removed.hits >= kResets);
}

TEST_CASE("list walks regions in order, by prefix and limit", "[store]") {
  TempDir dir;
  const std::string long_key = "long:" + std::string(600, 'x');
  {
    Writer a(dir.path(), "a");
    Writer b(dir.path(), "b");
    a.put("user:2", "u2");
    a.put("user:1", "u1");
    a.put("item:1", "i1", now_ns() + 3'600'000'000'000);
    a.put(long_key, "long");
    b.put("user:3", "u3");
  }
  Store store = open_store(dir.path());

  const std::vector<EntryInfo> all = store.list();
  // Region order, then stored-key order: hashed keys ('h') before inline ones ('k').
  CHECK(keys_of(all) ==
        std::vector<std::string>{"a/" + long_key, "a/item:1", "a/user:1", "a/user:2", "b/user:3"});
  for (const EntryInfo& e : all) {
    INFO(e.key);
    CHECK(e.valid);
    CHECK(e.problem.empty());
    CHECK(e.meta.codec == CodecId::kRaw);
    CHECK(e.meta.type_tag == 7);
  }
  const EntryInfo& item = all[1];
  CHECK(item.payload_size == 2);
  CHECK(item.size == envelope_for("item:1", "i1").size());
  REQUIRE(item.meta.expires_at_ns);
  CHECK(*item.meta.expires_at_ns > now_ns());
  CHECK_FALSE(all[2].meta.expires_at_ns);
  // Write order: user:2 before user:1.
  CHECK(all[3].write_seq < all[2].write_seq);

  CHECK(keys_of(store.list({.region = "b"})) == std::vector<std::string>{"b/user:3"});
  CHECK(store.list({.region = "nowhere"}).empty());
  CHECK(keys_of(store.list({.prefix = "user:"})) ==
        std::vector<std::string>{"a/user:1", "a/user:2", "b/user:3"});
  CHECK(keys_of(store.list({.region = "a", .prefix = "user:"})) ==
        std::vector<std::string>{"a/user:1", "a/user:2"});
  CHECK(keys_of(store.list({.prefix = "long:xxx"})) == std::vector<std::string>{"a/" + long_key});
  CHECK(keys_of(store.list({.prefix = long_key.substr(0, 560)})) ==
        std::vector<std::string>{"a/" + long_key});
  CHECK(store.list({.prefix = long_key + "more"}).empty());
  CHECK(store.list({.prefix = "zzz"}).empty());
  CHECK(keys_of(store.list({.limit = 2})) == std::vector<std::string>{"a/" + long_key, "a/item:1"});
  CHECK(keys_of(store.list({.prefix = "user:", .limit = 3})).size() == 3);
  CHECK(keys_of(store.list({.prefix = "user:", .limit = 1})) ==
        std::vector<std::string>{"a/user:1"});
}

TEST_CASE("get returns valid entries, and corrupt ones marked", "[store]") {
  TempDir dir;
  const std::string long_key = std::string(700, 'k');
  std::string flipped = envelope_for("flipped", "payload bytes");
  flipped[kEnvelopeHeaderSize + 2] ^= 0x20;
  {
    Writer w(dir.path(), "r");
    w.put("good", "hello");
    w.put(long_key, "long value");
    w.put_raw("flipped", flipped);
  }
  // Bytes that are no envelope, put in place through the layout so the
  // indexes stay right.
  raw_write(
      dir.path(), "r", [&](internal::LmdbEnv& env, MDB_txn* txn, const internal::RegionRef& r) {
        internal::StoredKey stored("garbage");
        throw_if_error(internal::put_entry(
            txn, env.store_dbs(), r, stored.bytes(),
            "not an envelope at all, just some bytes long enough to hold a header and a checksum"));
      });

  Store store = open_store(dir.path());
  Entry entry;
  REQUIRE(store.get("r", "good", entry));
  CHECK(entry.info.valid);
  CHECK(entry.info.region == "r");
  CHECK(entry.info.key == "good");
  CHECK(entry.payload == "hello");
  CHECK(entry.envelope.size() == entry.info.size);
  CHECK(entry.info.payload_size == 5);

  REQUIRE(store.get("r", long_key, entry));
  CHECK(entry.info.valid);
  CHECK(entry.info.key == long_key);
  CHECK(entry.payload == "long value");

  REQUIRE(store.get("r", "flipped", entry));
  CHECK_FALSE(entry.info.valid);
  CHECK(entry.info.key == "flipped");
  CHECK(entry.info.problem == "bad checksum");
  CHECK(entry.envelope == flipped);
  CHECK(entry.payload.empty());

  REQUIRE(store.get("r", "garbage", entry));
  CHECK_FALSE(entry.info.valid);
  CHECK(entry.info.problem.find("not an envelope") != std::string::npos);
  CHECK(entry.envelope ==
        "not an envelope at all, just some bytes long enough to hold a header and a checksum");

  CHECK_FALSE(store.get("r", "absent", entry));
  CHECK_FALSE(store.get("r", std::string(700, 'z'), entry));
  CHECK_FALSE(store.get("no-such-region", "good", entry));

  // Corrupt entries are listed too.
  const std::vector<EntryInfo> listed = store.list();
  REQUIRE(listed.size() == 4);
  const auto garbage = std::find_if(listed.begin(), listed.end(),
                                    [](const EntryInfo& e) { return e.key == "garbage"; });
  REQUIRE(garbage != listed.end());
  CHECK_FALSE(garbage->valid);
  CHECK_FALSE(garbage->problem.empty());
}

TEST_CASE("erase removes an entry and its index entries", "[store]") {
  TempDir dir;
  {
    Writer w(dir.path(), "r");
    w.put("a", "1", now_ns() + 3'600'000'000'000);
    w.put("b", "2");
    w.put(std::string(600, 'l'), "3");
  }
  Store store = open_store(dir.path());
  CHECK(store.erase("r", "a"));
  CHECK_FALSE(store.erase("r", "a"));
  CHECK(store.erase("r", std::string(600, 'l')));
  CHECK_FALSE(store.erase("other", "b"));
  Entry entry;
  CHECK_FALSE(store.get("r", "a", entry));
  CHECK(store.get("r", "b", entry));
  CHECK(store.stats().total.entries == 1);
  const VerifyReport report = store.verify();
  INFO(describe(report));
  CHECK(report.ok());
  CHECK(report.entries == 1);
  CHECK(report.index_entries == 1);
}

TEST_CASE("purge removes only expired entries, in batches, with progress", "[store]") {
  TempDir dir;
  const std::int64_t hour = 3'600'000'000'000;
  {
    Writer w(dir.path(), "r");
    Writer other(dir.path(), "s");
    for (int i = 0; i < 7; ++i) w.put("old" + std::to_string(i), "x", now_ns() - hour);
    for (int i = 0; i < 3; ++i) other.put("old" + std::to_string(i), "x", now_ns() - 2 * hour);
    for (int i = 0; i < 5; ++i) w.put("fresh" + std::to_string(i), "x", now_ns() + hour);
    for (int i = 0; i < 4; ++i) w.put("forever" + std::to_string(i), "x");
  }
  Store store = open_store(dir.path());
  std::vector<std::pair<std::uint64_t, std::uint64_t>> calls;
  const PurgeReport report = store.purge(
      [&](std::uint64_t done, std::uint64_t total) { calls.emplace_back(done, total); }, 3);
  CHECK(report.removed == 10);
  CHECK(report.scanned == 15);  // every entry with an expiry
  // Four batches of at most 3, each reported, then the end.
  REQUIRE(calls.size() == 5);
  CHECK(calls[0] == std::pair<std::uint64_t, std::uint64_t>{3, 15});
  CHECK(calls[3] == std::pair<std::uint64_t, std::uint64_t>{10, 15});
  CHECK(calls.back() == std::pair<std::uint64_t, std::uint64_t>{15, 15});
  for (std::size_t i = 1; i < calls.size(); ++i) CHECK(calls[i].first >= calls[i - 1].first);

  std::set<std::string> left;
  for (const EntryInfo& e : store.list()) left.insert(e.region + "/" + e.key);
  CHECK(left.size() == 9);
  for (const std::string& key : left) CHECK(key.rfind("r/old", 0) != 0);
  CHECK(store.list({.region = "s"}).empty());
  const StoreStats stats = store.stats();
  REQUIRE(stats.regions.size() == 2);
  CHECK(stats.regions[0].counters.expired_purged == 7);
  CHECK(stats.regions[1].counters.expired_purged == 3);
  CHECK(store.verify().ok());

  // Nothing left to purge: nothing happens.
  CHECK(store.purge().removed == 0);
}

TEST_CASE("purge older_than also removes entries created longer ago, by the store's clock",
          "[store]") {
  TempDir dir;
  auto clock = std::make_shared<FakeClock>();
  {
    Region r({.name = "r", .clock = clock}, "lmdb", {{"path", dir.path()}});
    Region s({.name = "s", .clock = clock}, "lmdb", {{"path", dir.path()}});
    r.set<std::string>("old", "x");
    r.set<std::string>("old-expires-later", "x", {.ttl = 48h});
    s.set<std::string>("old", "x");
    clock->advance(2h);
    r.set<std::string>("mid", "x");
    clock->advance(1h);
    r.set<std::string>("expired", "x", {.ttl = 10min});
    clock->advance(1h);
    r.set<std::string>("new", "x");
  }
  Writer(dir.path(), "r").put_raw("not-an-envelope", std::string(80, 'z'));

  Store store = Store::open(StoreOptions{.path = dir.path(), .clock = clock});
  CHECK_THROWS_AS(store.purge(PurgeOptions{.older_than = 0s}), ConfigError);
  CHECK_THROWS_AS(store.purge(PurgeOptions{.older_than = -1s}), ConfigError);

  std::vector<std::pair<std::uint64_t, std::uint64_t>> calls;
  // Four hours after the first writes: three hours is older than the first three.
  const PurgeReport report = store.purge(
      PurgeOptions{.older_than = 3h, .batch = 2},
      [&](std::uint64_t done, std::uint64_t total) { calls.emplace_back(done, total); });
  CHECK(report.removed == 1);  // "expired", by its ttl
  CHECK(report.scanned == 2);
  CHECK(report.removed_older == 3);
  CHECK(report.examined == 6);  // what the expired ones left of the write index
  std::set<std::string> left;
  for (const EntryInfo& e : store.list()) left.insert(e.region + "/" + e.key);
  CHECK(left == std::set<std::string>{"r/mid", "r/new", "r/not-an-envelope"});
  // The expiry index (2), then the write index (7) in batches of 2.
  REQUIRE_FALSE(calls.empty());
  CHECK(calls.back() == std::pair<std::uint64_t, std::uint64_t>{9, 9});
  for (std::size_t i = 1; i < calls.size(); ++i) CHECK(calls[i].first >= calls[i - 1].first);
  CHECK(calls.size() >= 4);
  // Removals for age are no usage of the regions'.
  const StoreStats stats = store.stats();
  CHECK(stats.total.counters == UsageCounters{.expired_purged = 1});
  // The indexes lost what the entries lost; the bytes that are no envelope stay.
  const VerifyReport verified = store.verify();
  INFO(describe(verified));
  REQUIRE(verified.problems.size() == 1);
  CHECK(verified.problems[0].key == "not-an-envelope");
  CHECK(verified.index_entries == 3);

  // The same age again: nothing is left that old.
  const PurgeReport again = store.purge(PurgeOptions{.older_than = 3h});
  CHECK(again.removed_older == 0);
  CHECK(again.examined == 3);
  // Without older_than, only expired entries go, and nothing is looked at for its age.
  clock->advance(24h);
  const PurgeReport plain = store.purge();
  CHECK(plain.removed == 0);
  CHECK(plain.examined == 0);
  CHECK(store.list().size() == 3);
}

TEST_CASE("clear empties one region or all of them", "[store]") {
  TempDir dir;
  {
    auto a = open_lmdb_backend(LmdbOptions{.path = dir.path(), .region = "a"});
    std::vector<KeyValue> items;
    for (int i = 0; i < 2500; ++i) {
      const std::string key = str_cat("k", i);
      items.emplace_back(
          key, envelope_for(key, "v",
                            i % 2 ? std::optional(now_ns() + 1'000'000'000'000) : std::nullopt));
    }
    throw_if_error(a->set_multi(items));
    Writer b(dir.path(), "b");
    Writer c(dir.path(), "c");
    b.put("x", "1");
    b.put("y", "2");
    c.put("z", "3");
  }
  Store store = open_store(dir.path());
  CHECK(store.clear("a") == 2500);  // more than one batch
  CHECK(store.list({.region = "a"}).empty());
  CHECK(store.list().size() == 3);
  CHECK(store.verify().ok());

  check_no_region([&] { store.clear("nope"); }, "nope");

  CHECK(store.clear() == 3);
  CHECK(store.list().empty());
  CHECK(store.stats().total.entries == 0);
  const VerifyReport report = store.verify();
  CHECK(report.ok());
  CHECK(report.index_entries == 0);
}

TEST_CASE("verify passes on a healthy store and reports progress", "[store]") {
  TempDir dir;
  {
    Writer a(dir.path(), "a");
    Writer b(dir.path(), "b");
    for (int i = 0; i < 5000; ++i) {
      a.put(str_cat("k", i), "v",
            i % 5 == 0 ? std::optional(now_ns() + 1'000'000'000'000) : std::nullopt);
    }
    b.put(std::string(900, 'q'), "long");
  }
  Store store = open_store(dir.path());
  std::vector<std::pair<std::uint64_t, std::uint64_t>> calls;
  const VerifyReport report = store.verify(
      [&](std::uint64_t done, std::uint64_t total) { calls.emplace_back(done, total); });
  INFO(describe(report));
  CHECK(report.ok());
  CHECK(report.entries == 5001);
  CHECK(report.index_entries == 5001 + 1000);
  REQUIRE(calls.size() >= 2);  // 11002 units: some along the way, and the end
  CHECK(calls.back() == std::pair<std::uint64_t, std::uint64_t>{11002, 11002});
  for (const auto& [done, total] : calls) {
    CHECK(total == 11002);
    CHECK(done <= total);
  }
}

TEST_CASE("verify reports damaged envelopes and broken indexes", "[store]") {
  TempDir dir;
  std::string flipped = envelope_for("flipped", "some payload");
  flipped[kEnvelopeHeaderSize + 3] ^= 0x01;
  {
    Writer w(dir.path(), "r");
    w.put("good", "fine");
    w.put_raw("flipped", flipped);
    w.put("orphaned", "its record goes", now_ns() + 3'600'000'000'000);
    w.put("unindexed", "its _written entry goes");
  }
  const std::string long_a = std::string(600, 'a');
  const std::string long_b = std::string(600, 'b');
  const std::uint64_t unindexed_seq = seq_of(dir.path(), "r", "unindexed");
  // A long key's envelope under another long key's hash.
  raw_write(dir.path(), "r",
            [&](internal::LmdbEnv& env, MDB_txn* txn, const internal::RegionRef& ref) {
              internal::StoredKey wrong(long_b);
              throw_if_error(internal::put_entry(txn, env.store_dbs(), ref, wrong.bytes(),
                                                 envelope_for(long_a, "x")));
            });
  raw_write(dir.path(), "r",
            [&](internal::LmdbEnv& env, MDB_txn* txn, const internal::RegionRef& ref) {
              // The primary record goes, bypassing erase_entry: its index entries now
              // point at nothing.
              internal::StoredKey orphaned("orphaned");
              MDB_val k = orphaned.val();
              REQUIRE(mdb_del(txn, ref.dbi, &k, nullptr) == MDB_SUCCESS);
              // The _written entry of another goes: that entry has no index entry.
              std::string seq_key(8, '\0');
              for (int i = 0; i < 8; ++i)
                seq_key[i] = static_cast<char>(unindexed_seq >> (56 - 8 * i));
              MDB_val w{seq_key.size(), seq_key.data()};
              REQUIRE(mdb_del(txn, env.store_dbs().written, &w, nullptr) == MDB_SUCCESS);
            });

  Store store = open_store(dir.path());
  const VerifyReport report = store.verify();
  INFO(describe(report));
  CHECK_FALSE(report.ok());
  CHECK(report.entries == 4);
  CHECK(has_problem(report, "r", "flipped", "bad checksum"));
  CHECK(has_problem(report, "r", long_a, "not under the hash of its full key"));
  CHECK(has_problem(report, "r", "orphaned", "index entry points to a missing entry"));
  CHECK(has_problem(report, "r", "unindexed", "no _written index entry"));
  // Two index entries of "orphaned" (_written and _expiry), one entry each
  // for the other three.
  CHECK(report.problems.size() == 5);
  CHECK_FALSE(has_problem(report, "r", "good", ""));

  // Listing shows the misplaced entry as it is, and get does not find it
  // under either key.
  const std::vector<EntryInfo> listed = store.list({.prefix = "aaa"});
  REQUIRE(listed.size() == 1);
  CHECK_FALSE(listed[0].valid);
  CHECK(listed[0].key == long_a);
  Entry entry;
  CHECK_FALSE(store.get("r", long_a, entry));
  REQUIRE(store.get("r", long_b, entry));
  CHECK_FALSE(entry.info.valid);
}

TEST_CASE("a damaged entry header (outside the checksum) is repaired by the next write",
          "[store]") {
  // The 16-byte entry header (write sequence, expiry) is not covered by the
  // envelope's checksum. One flipped byte of it used to make a rewrite
  // delete the wrong index entries and leave the record's own dangling, a
  // problem verify found and nothing repaired (19 after 200 flips).
  TempDir dir;
  constexpr int kEntries = 200;
  {
    Writer w(dir.path(), "r");
    for (int i = 0; i < kEntries; ++i) {
      w.put(str_cat("k", i), "value",
            i % 2 == 0 ? std::optional<std::int64_t>(now_ns() + 3'600'000'000'000) : std::nullopt);
    }
  }
  std::mt19937_64 rng(20261203);
  raw_write(dir.path(), "r",
            [&](internal::LmdbEnv&, MDB_txn* txn, const internal::RegionRef& ref) {
              for (int i = 0; i < kEntries; ++i) {
                internal::StoredKey key(str_cat("k", i));
                MDB_val k = key.val();
                MDB_val record{};
                REQUIRE(mdb_get(txn, ref.dbi, &k, &record) == MDB_SUCCESS);
                std::string bytes(static_cast<const char*>(record.mv_data), record.mv_size);
                const std::size_t at = rng() % internal::kEntryHeaderSize;
                bytes[at] = static_cast<char>(bytes[at] ^ static_cast<char>(1 + rng() % 255));
                MDB_val damaged{bytes.size(), bytes.data()};
                REQUIRE(mdb_put(txn, ref.dbi, &k, &damaged, 0) == MDB_SUCCESS);
              }
            });
  {
    Store store = open_store(dir.path());
    const VerifyReport damaged = store.verify();
    INFO(describe(damaged));
    CHECK_FALSE(damaged.ok());  // the damage is visible before the rewrite
  }
  {
    // Rewrites, erasures and the other expiry variant all meet damaged headers.
    Writer w(dir.path(), "r");
    for (int i = 0; i < kEntries; ++i) {
      if (i % 5 == 4) continue;
      w.put(str_cat("k", i), "rewritten",
            i % 3 == 0 ? std::optional<std::int64_t>(now_ns() + 7'200'000'000'000) : std::nullopt);
    }
  }
  Store store = open_store(dir.path());
  for (int i = 4; i < kEntries; i += 5) CHECK(store.erase("r", str_cat("k", i)));
  const VerifyReport repaired = store.verify();
  INFO(describe(repaired));
  CHECK(repaired.ok());
  CHECK(repaired.problems.empty());
  CHECK(repaired.entries == kEntries - kEntries / 5);
}

TEST_CASE("compact writes a smaller copy that opens with the same entries", "[store]") {
  TempDir dir;
  {
    Writer w(dir.path(), "r");
    for (int i = 0; i < 2000; ++i) w.put(str_cat("k", i), std::string(1000, 'p'));
    Writer s(dir.path(), "s");
    s.put(std::string(800, 'L'), "long");
  }
  Store store = open_store(dir.path());
  for (int i = 0; i < 2000; ++i) {
    if (i % 10 != 0) REQUIRE(store.erase("r", str_cat("k", i)));
  }
  store.invalidate("s", false);

  const std::string dest = dir / "copy/nested";
  store.compact(dest);
  CHECK(file_size(dest + "/data.mdb") <= file_size(dir / "data.mdb"));
  CHECK(file_size(dest + "/data.mdb") < file_size(dir / "data.mdb") / 2);
  CHECK(mode_of(dest) == 0700);
  CHECK(mode_of(dest + "/data.mdb") == 0600);
  CHECK(mode_of(dest + "/region-stamps") == 0600);

  Store copy = open_store(dest);
  const std::vector<EntryInfo> before = store.list();
  const std::vector<EntryInfo> after = copy.list();
  CHECK(after.size() == 201);
  CHECK(keys_of(after) == keys_of(before));
  Entry a;
  Entry b;
  for (const EntryInfo& e : before) {
    REQUIRE(copy.get(e.region, e.key, b));
    REQUIRE(store.get(e.region, e.key, a));
    CHECK(a.envelope == b.envelope);
  }
  CHECK(copy.verify().ok());
  // The stamps came along: a region reading the copy sees the invalidation.
  {
    std::shared_ptr<internal::StampFile> stamps;
    throw_if_error(internal::StampFile::open(dest + "/region-stamps", stamps));
    const std::int64_t slot = stamps->find(internal::StampFile::region_hash("s"));
    REQUIRE(slot >= 0);
    CHECK(stamps->stamp(static_cast<std::uint32_t>(slot), internal::StampFile::Kind::kSoft) > 0);
  }

  // An empty directory is fine; anything else is refused by name.
  const std::string empty = dir / "empty";
  std::filesystem::create_directory(empty);
  store.compact(empty);
  CHECK(open_store(empty).list().size() == 201);

  const std::string busy = dir / "busy";
  std::filesystem::create_directory(busy);
  std::ofstream(busy + "/keep") << "mine";
  try {
    store.compact(busy);
    FAIL("compacted into a non-empty directory");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find(busy) != std::string::npos);
  }
  CHECK(std::filesystem::exists(busy + "/keep"));
  CHECK_FALSE(std::filesystem::exists(busy + "/data.mdb"));
  CHECK_THROWS_AS(store.compact(busy + "/keep"), Error);
  CHECK_THROWS_AS(store.compact(dir.path()), Error);
}

TEST_CASE("compact reports the bytes it copies, reaching the total when the copy is in place",
          "[store]") {
  TempDir dir;
  {
    Writer w(dir.path(), "r");
    for (int i = 0; i < 3000; ++i) w.put(str_cat("k", i), std::string(1000, 'p'));
  }
  Store store = open_store(dir.path());
  for (int i = 0; i < 3000; ++i) {
    if (i % 10 != 0) REQUIRE(store.erase("r", str_cat("k", i)));
  }

  const std::string dest = dir / "copy";
  struct Call {
    std::uint64_t done, total;
    bool in_place;
  };
  std::vector<Call> calls;
  store.compact(dest, [&](std::uint64_t done, std::uint64_t total) {
    calls.push_back({done, total, std::filesystem::exists(dest + "/data.mdb")});
  });
  const std::uint64_t copied = file_size(dest + "/data.mdb");
  REQUIRE(calls.size() >= 2);  // one as the copy starts, one when it is in place
  // With no other writer the total is exact from the start: the pages the
  // copy holds, not the source's (most of which are free).
  CHECK(calls.front().total == copied);
  CHECK(copied < file_size(dir / "data.mdb") / 2);
  CHECK(calls.back().done == copied);
  CHECK(calls.back().total == copied);
  CHECK(calls.back().in_place);
  for (std::size_t i = 0; i + 1 < calls.size(); ++i) {
    CHECK(calls[i].total == copied);
    CHECK(calls[i].done < calls[i].total);
    CHECK_FALSE(calls[i].in_place);
  }
  CHECK(open_store(dest).list().size() == 300);
}

TEST_CASE("compact stages its copy beside the destination and renames it into place",
          "[store]") {
  TempDir dir;
  {
    Writer w(dir.path(), "r");
    for (int i = 0; i < 50; ++i) w.put(str_cat("k", i), "v");
  }
  Store store = open_store(dir.path());
  const std::string dest = dir / "backup";
  const std::string staging = Store::compact_staging_path(dest);
  CHECK(staging == dir / ".backup.compacting");
  CHECK(Store::compact_staging_path(dest + "/") == staging);

  SECTION("into a shared directory such as /tmp (mode 1777)") {
    const std::string shared = dir / "tmp";
    std::filesystem::create_directory(shared);
    std::filesystem::permissions(shared, static_cast<std::filesystem::perms>(01777));
    store.compact(shared + "/backup");
    CHECK(open_store(shared + "/backup").list().size() == 50);
    CHECK(mode_of(shared + "/backup") == 0700);
  }
  SECTION("a killed compact's partial copy is replaced") {
    std::filesystem::create_directory(staging);
    std::ofstream(staging + "/data.mdb") << "the first bytes of a copy that never finished";
    store.compact(dest);
    CHECK(open_store(dest).list().size() == 50);
    CHECK(open_store(dest).verify().ok());
    CHECK_FALSE(std::filesystem::exists(staging));
  }
  SECTION("a running compact's staging directory is not touched") {
    std::filesystem::create_directory(staging);
    std::ofstream(staging + "/data.mdb") << "being written";
    const int fd = ::open(staging.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    REQUIRE(::flock(fd, LOCK_EX | LOCK_NB) == 0);  // what a running compact holds
    try {
      store.compact(dest);
      FAIL("compacted while another compact held the staging directory");
    } catch (const StoreError& e) {
      CHECK(e.sys_errno() == EWOULDBLOCK);
      CHECK(std::string(e.what()).find("another compact") != std::string::npos);
    }
    ::close(fd);
    CHECK_FALSE(std::filesystem::exists(dest));
    CHECK(file_size(staging + "/data.mdb") == 13);  // left to its writer
  }
  SECTION("a file compact did not write is never removed") {
    std::filesystem::create_directory(staging);
    std::ofstream(staging + "/notes.txt") << "mine";
    CHECK_THROWS_AS(store.compact(dest), Error);
    CHECK(std::filesystem::exists(staging + "/notes.txt"));
    CHECK_FALSE(std::filesystem::exists(dest));
  }
}

TEST_CASE("invalidate is seen by a region in another process", "[store][fork]") {
  TempDir dir;
  {
    // Written ten seconds ago, so an invalidation now comes after them.
    auto past = std::make_shared<FakeClock>(std::chrono::system_clock::now() - 10s);
    Region hard({.name = "hard", .clock = past}, "lmdb", {{"path", dir.path()}});
    hard.set<std::string>("key", "value");
    Region soft({.name = "soft", .clock = past}, "lmdb", {{"path", dir.path()}});
    soft.set<std::string>("key", "value");
  }
  // 1: the child got a fresh value; 2: it found an entry (fresh or stale).
  const auto child_reads = [&](const std::string& region) {
    return run_child([&] {
      Region reader({.name = region}, "lmdb", {{"path", dir.path()}});
      const bool fresh = reader.get<std::string>("key").has_value();
      const bool present = reader.get_value_metadata("key").has_value();
      return (fresh ? 1 : 0) | (present ? 2 : 0);
    });
  };
  REQUIRE(child_reads("hard") == 3);
  REQUIRE(child_reads("soft") == 3);

  Store store = open_store(dir.path());
  store.invalidate("hard");
  store.invalidate("soft", false);
  CHECK(child_reads("hard") == 0);  // missing
  CHECK(child_reads("soft") == 2);  // stale, still there

  // A region that never stored anything may be invalidated; a bad name not.
  store.invalidate("never-used");
  CHECK_THROWS_AS(store.invalidate(""), ConfigError);
}

TEST_CASE("one store serves many threads while a writer writes", "[store]") {
  TempDir dir;
  Writer(dir.path(), "r").put("seed", "x");
  Store store = open_store(dir.path());
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::atomic<int> rounds{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&, t] {
      try {
        while (!stop.load()) {
          Entry entry;
          if (!store.get("r", "seed", entry) || entry.payload != "x") ++failures;
          if (store.list({.limit = 20}).empty()) ++failures;
          if (store.stats().total.entries == 0) ++failures;
          if (t == 0 && !store.verify().ok()) ++failures;
          ++rounds;
        }
      } catch (const std::exception&) {
        ++failures;
      }
    });
  }
  {
    Writer w(dir.path(), "r");
    for (int i = 0; i < 300; ++i) {
      w.put(str_cat("k", i), std::string(200, 'v'),
            i % 2 ? std::optional(now_ns() - 1) : std::nullopt);
      if (i % 50 == 0) store.purge();
    }
  }
  while (rounds.load() < 10) std::this_thread::yield();
  stop = true;
  for (std::thread& t : readers) t.join();
  CHECK(failures.load() == 0);
  CHECK(store.verify().ok());
}

TEST_CASE("a store opened before fork() works in the child", "[store][fork]") {
  TempDir dir;
  {
    Writer w(dir.path(), "r");
    w.put("a", "1");
    w.put("b", "2");
  }
  Store store = open_store(dir.path());
  REQUIRE(store.list().size() == 2);
  const int rc = run_child([&] {
    if (store.list().size() != 2) return 1;
    if (!store.erase("r", "a")) return 2;
    return store.verify().ok() ? 0 : 3;
  });
  CHECK(rc == 0);
  Entry entry;
  CHECK_FALSE(store.get("r", "a", entry));
  CHECK(store.list().size() == 1);
}
