// Types and versions: programs that disagree about what is stored at a key,
// and a store whose pages were overwritten.
//
//   - Type mismatch across programs. One process stores PointA, int64 and
//     std::string values; another process reads the same keys as PointB,
//     double and std::vector<uint8_t>. Each pair decodes from the other's
//     bytes (checked first, with the codec alone), so only the envelope's type
//     tag can tell them apart. Every read is a miss counted as a mismatch,
//     PointB's load() is never called on PointA's bytes, get_or_create then
//     replaces each entry once, and the first program in turn misses on them.
//   - Older schema version. Entries of Profile schema 1 are read by three
//     processes at once running schema 2 (same name, same layout, another
//     meaning of the fields): get_or_create runs each key's creator exactly
//     once over all processes, schema 2 never decodes schema 1 bytes, and
//     every later read is a hit with no creator call.
//   - Overwritten pages. A cache of many entries (small values on leaf pages,
//     large ones on overflow pages) is copied, and in each round some pages of
//     the copy's data.mdb are overwritten: whole pages with random bytes or
//     zeros, a 512-byte sector inside a page (a torn write), or one of the two
//     meta pages. A forked child opens the damaged cache and reads every key
//     with get_multi, get and get_or_create, reporting each read as a correct
//     hit, a miss, a typed dogpile::Error, or a wrong value. LMDB does not
//     checksum its pages and may fault on a garbage page, so a child may die:
//     crashes are counted and reported by the phase they happened in; wrong
//     values must be zero, and the parent, which keeps a healthy cache open
//     through every round, is unaffected.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "dogpile/dogpile.h"
#include "dogpile/store.h"
#include "process_util.h"
#include "reliability_util.h"
#include "test_util.h"

namespace types_versions {

// Calls of each type's load(), in this process.
inline std::atomic<int> g_a_loads{0};
inline std::atomic<int> g_b_loads{0};
inline std::atomic<int> g_v2_loads{0};

// Two types with one layout: either decodes from the other's bytes.
struct PointA {
  std::int64_t x = 0;
  std::int64_t y = 0;
  template <class Archive>
  void save(Archive& ar) const {
    ar(CEREAL_NVP(x), CEREAL_NVP(y));
  }
  template <class Archive>
  void load(Archive& ar) {
    ++g_a_loads;
    ar(CEREAL_NVP(x), CEREAL_NVP(y));
  }
};

struct PointB {
  std::int64_t x = 0;
  std::int64_t y = 0;
  template <class Archive>
  void save(Archive& ar) const {
    ar(CEREAL_NVP(x), CEREAL_NVP(y));
  }
  template <class Archive>
  void load(Archive& ar) {
    ++g_b_loads;
    ar(CEREAL_NVP(x), CEREAL_NVP(y));
  }
};

// Two schema versions of one registered type, as two builds of a program
// would have them: the layout is the same, the meaning of `size` is not
// (bytes in schema 1, KiB in schema 2), so decoding old bytes would succeed
// and be wrong.
struct ProfileV1 {
  std::string name;
  std::int64_t size = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(CEREAL_NVP(name), CEREAL_NVP(size));
  }
};

struct ProfileV2 {
  std::string name;
  std::int64_t size = 0;
  template <class Archive>
  void save(Archive& ar) const {
    ar(CEREAL_NVP(name), CEREAL_NVP(size));
  }
  template <class Archive>
  void load(Archive& ar) {
    ++g_v2_loads;
    ar(CEREAL_NVP(name), CEREAL_NVP(size));
  }
};

}  // namespace types_versions

DOGPILE_REGISTER_TYPE(types_versions::PointA, "dogpile.test.types_versions.PointA", 1);
DOGPILE_REGISTER_TYPE(types_versions::PointB, "dogpile.test.types_versions.PointB", 1);
DOGPILE_REGISTER_TYPE(types_versions::ProfileV1, "dogpile.test.types_versions.Profile", 1);
DOGPILE_REGISTER_TYPE(types_versions::ProfileV2, "dogpile.test.types_versions.Profile", 2);

using namespace dogpile;
using namespace dogpile::test;
using namespace types_versions;

namespace {

constexpr const char* kRegionName = "tv";

ConfigMap lmdb_args(const std::string& dir) {
  // Durability does not matter here; syncing every creation would only slow the test.
  return {{"path", dir}, {"durability", "nosync"}};
}

RegionOptions region_options() {
  RegionOptions options;
  options.name = kRegionName;
  options.logger = [](LogLevel, std::string_view) {};
  return options;
}

// Forks a child running `body` (its exit status is the return value; an
// exception is 99) and waits for it; returns the wait status.
int run_process(const std::function<int()>& body) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    int rc = 99;
    try {
      rc = body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
    }
    ::_exit(rc);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

bool exited_ok(int status) { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }

// "name value" lines a child wrote; the last value of each name wins.
std::map<std::string, std::int64_t> read_report(const std::string& path) {
  std::map<std::string, std::int64_t> out;
  for (const std::string& line : read_lines(path)) {
    const auto space = line.find(' ');
    if (space == std::string::npos) continue;
    out[line.substr(0, space)] = std::strtoll(line.c_str() + space + 1, nullptr, 10);
  }
  return out;
}

void report(const std::string& path, const std::string& name, std::int64_t value) {
  log_line(path, name + " " + std::to_string(value));
}

std::string point_key(int i) { return "point-" + std::to_string(i); }
std::string number_key(int i) { return "number-" + std::to_string(i); }
std::string text_key(int i) { return "text-" + std::to_string(i); }

}  // namespace

TEST_CASE("a type stored by one program is a counted miss for a program reading another type",
          "[types]") {
  const int n = kSanitized ? 100 : 300;
  TempDir dir;
  const std::string cache = dir / "cache";
  const std::string log = dir / "report";

  // Teeth: without the envelope's type tag these reads would decode. The
  // codec alone turns PointA's bytes into a PointB and int64's into a double.
  {
    std::string bytes;
    encode_payload(CodecId::kBinary, PointA{7, -9}, bytes);
    PointB b;
    REQUIRE(decode_payload(CodecId::kBinary, bytes, b));
    REQUIRE((b.x == 7 && b.y == -9));
    REQUIRE(g_b_loads.exchange(0) == 1);
    std::string number;
    encode_payload(CodecId::kBinary, std::int64_t{42}, number);
    double d = 0;
    REQUIRE(decode_payload(CodecId::kBinary, number, d));
    std::string text;
    encode_payload(CodecId::kBinary, std::string("abc"), text);
    std::vector<std::uint8_t> bytes_out;
    REQUIRE(decode_payload(CodecId::kBinary, text, bytes_out));
    REQUIRE(bytes_out.size() == 3);
  }

  // Program 1 stores type A.
  REQUIRE(exited_ok(run_process([&] {
    Region region(region_options(), "lmdb", lmdb_args(cache));
    for (int i = 0; i < n; ++i) {
      region.set<PointA>(point_key(i), PointA{i, -i});
      region.set<std::int64_t>(number_key(i), 1000 + i);
      region.set<std::string>(text_key(i), "text of " + std::to_string(i));
    }
    return 0;
  })));

  // Program 2 reads the same keys as type B, then creates its own values.
  REQUIRE(exited_ok(run_process([&] {
    int found = 0;
    RegionStats after_reads;
    int creations = 0;
    {
      Region region(region_options(), "lmdb", lmdb_args(cache));
      for (int i = 0; i < n; ++i) {
        found += region.get<PointB>(point_key(i)).has_value();
        found += region.get<double>(number_key(i)).has_value();
        found += region.get<std::vector<std::uint8_t>>(text_key(i)).has_value();
        // The get_multi path checks types separately.
        const std::vector<std::string> keys{point_key(i)};
        found += region.get_multi<PointB>(keys)[0].has_value();
      }
      after_reads = region.stats();
      report(log, "b_loads_after_reads", g_b_loads.load());
      for (int i = 0; i < n; ++i) {
        const PointB b = region.get_or_create<PointB>(point_key(i), [&] {
          ++creations;
          return PointB{-i, i};
        });
        if (b.x != -i || b.y != i) return 3;
      }
      report(log, "b_loads_after_create", g_b_loads.load());
      // Now the entries are B's: B decodes them (the counter is live).
      for (int i = 0; i < n; ++i) {
        const std::optional<PointB> b = region.get<PointB>(point_key(i));
        if (!b || b->x != -i || b->y != i) return 4;
      }
      report(log, "b_loads_after_hits", g_b_loads.load());
    }
    report(log, "b_found", found);
    report(log, "b_misses", static_cast<std::int64_t>(after_reads.misses));
    report(log, "b_mismatches", static_cast<std::int64_t>(after_reads.mismatches));
    report(log, "b_corruptions", static_cast<std::int64_t>(after_reads.corruptions));
    report(log, "b_creations", creations);
    return 0;
  })));

  // Program 1 again: the keys now hold B, a miss for A.
  REQUIRE(exited_ok(run_process([&] {
    Region region(region_options(), "lmdb", lmdb_args(cache));
    int found = 0;
    for (int i = 0; i < n; ++i) found += region.get<PointA>(point_key(i)).has_value();
    report(log, "a_found", found);
    report(log, "a_loads", g_a_loads.load());
    report(log, "a_mismatches", static_cast<std::int64_t>(region.stats().mismatches));
    return 0;
  })));

  auto r = read_report(log);
  CHECK(r["b_found"] == 0);
  CHECK(r["b_misses"] == 4 * n);
  CHECK(r["b_mismatches"] == 4 * n);
  CHECK(r["b_corruptions"] == 0);
  CHECK(r["b_loads_after_reads"] == 0);
  CHECK(r["b_loads_after_create"] == 0);
  CHECK(r["b_loads_after_hits"] == n);
  CHECK(r["b_creations"] == n);
  CHECK(r["a_found"] == 0);
  CHECK(r["a_loads"] == 0);
  CHECK(r["a_mismatches"] == n);

  // The store's shared counters hold both programs' mismatches: B's reads
  // (4n), B's get_or_create (a first read and a re-read under the lock: 2n)
  // and A's second run (n).
  const StoreStats stats = Store::open(StoreOptions{.path = cache}).stats();
  std::uint64_t mismatches = 0;
  for (const RegionUsage& region : stats.regions) {
    if (region.name == kRegionName) mismatches = region.counters.mismatches;
  }
  CHECK(mismatches == static_cast<std::uint64_t>(7 * n));
  figure("types_versions[type mismatch]: %d keys x 3 type pairs; reader found %lld values, "
         "counted %lld mismatches, PointB::load calls on PointA bytes %lld; store-wide "
         "mismatches %llu",
         n, static_cast<long long>(r["b_found"]), static_cast<long long>(r["b_mismatches"]),
         static_cast<long long>(r["b_loads_after_create"]),
         static_cast<unsigned long long>(mismatches));
}

TEST_CASE("entries of an older schema version are regenerated exactly once", "[versions]") {
  const int n = kSanitized ? 100 : 300;
  constexpr int kProcesses = 3;
  // Drawn before the fork, so every child orders its keys from one seed.
  const std::uint64_t seed = reliability_seed();
  TempDir dir;
  const std::string cache = dir / "cache";
  const std::string creations_log = dir / "creations";
  const std::string log = dir / "report";

  {
    // Teeth: schema 2 decodes schema 1's bytes without complaint.
    std::string bytes;
    encode_payload(CodecId::kBinary, ProfileV1{"old", 2048}, bytes);
    ProfileV2 v2;
    REQUIRE(decode_payload(CodecId::kBinary, bytes, v2));
    REQUIRE((v2.name == "old" && v2.size == 2048));
    g_v2_loads = 0;
  }

  // The old build: schema 1 at every key.
  REQUIRE(exited_ok(run_process([&] {
    Region region(region_options(), "lmdb", lmdb_args(cache));
    for (int i = 0; i < n; ++i) {
      region.set<ProfileV1>("profile-" + std::to_string(i),
                            ProfileV1{"v1:" + std::to_string(i), 2048 * i});
    }
    return 0;
  })));

  // The new build, in three processes at once, each walking the keys in its
  // own order: every key's creator runs once over all of them.
  StartGate gate;
  const std::vector<pid_t> pids = spawn(kProcesses, gate, [&](int p) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    std::vector<int> order(n);
    for (int i = 0; i < n; ++i) order[i] = i;
    std::mt19937_64 rng(seed + static_cast<std::uint64_t>(p));
    std::shuffle(order.begin(), order.end(), rng);
    Region region(region_options(), "lmdb", lmdb_args(cache));
    for (int i : order) {
      const std::string key = "profile-" + std::to_string(i);
      const ProfileV2 v = region.get_or_create<ProfileV2>(key, [&] {
        log_line(creations_log, key);
        return ProfileV2{"v2:" + std::to_string(i), 2 * i};
      });
      if (v.name != "v2:" + std::to_string(i) || v.size != 2 * i) return 3;
    }
    const RegionStats s = region.stats();
    report(log, "p" + std::to_string(p) + "_corruptions", static_cast<std::int64_t>(s.corruptions));
    report(log, "p" + std::to_string(p) + "_mismatches", static_cast<std::int64_t>(s.mismatches));
    return 0;
  });
  gate.open_gate();
  REQUIRE(reap(pids) == 0);

  const std::vector<std::string> created = read_lines(creations_log);
  std::map<std::string, int> per_key;
  for (const std::string& key : created) ++per_key[key];
  int once = 0;
  for (const auto& [key, count] : per_key) once += count == 1;
  auto r = read_report(log);
  std::int64_t mismatches = 0;
  for (int p = 0; p < kProcesses; ++p) {
    CHECK(r["p" + std::to_string(p) + "_corruptions"] == 0);
    mismatches += r["p" + std::to_string(p) + "_mismatches"];
  }
  CHECK(static_cast<int>(created.size()) == n);
  CHECK(static_cast<int>(per_key.size()) == n);
  CHECK(once == n);
  // Every key was seen as schema 1 at least once (its first read and the
  // re-read under the lock of the process that created it).
  CHECK(mismatches >= 2 * n);

  // Later reads, by a fresh process of the new build: hits, no creator call,
  // and schema 2's load runs only on schema 2 bytes.
  REQUIRE(exited_ok(run_process([&] {
    Region region(region_options(), "lmdb", lmdb_args(cache));
    int creations = 0;
    for (int i = 0; i < n; ++i) {
      const ProfileV2 v = region.get_or_create<ProfileV2>("profile-" + std::to_string(i), [&] {
        ++creations;
        return ProfileV2{};
      });
      if (v.name != "v2:" + std::to_string(i)) return 3;
    }
    report(log, "later_creations", creations);
    report(log, "later_hits", static_cast<std::int64_t>(region.stats().hits));
    report(log, "later_loads", g_v2_loads.load());
    return 0;
  })));
  r = read_report(log);
  CHECK(r["later_creations"] == 0);
  CHECK(r["later_hits"] == n);
  CHECK(r["later_loads"] == n);
  figure("types_versions[schema upgrade]: %d keys of schema 1, %d processes of schema 2: %zu "
         "creations (%d keys created exactly once), %lld mismatches seen, later reads %lld hits "
         "and %lld creations",
         n, kProcesses, created.size(), once, static_cast<long long>(mismatches),
         static_cast<long long>(r["later_hits"]), static_cast<long long>(r["later_creations"]));
}

// ---- overwritten pages ----

namespace {

constexpr std::uint32_t kLmdbMagic = 0xBEEFC0DE;
constexpr rlim_t kChildAddressSpace = rlim_t{4} << 30;

std::string page_key(int i) { return "page-key-" + std::to_string(i); }

// The value of key i names its key, so a value read under another key is seen
// as wrong. One value in ten is large enough for LMDB's overflow pages.
std::string page_value(int i, std::uint64_t seed) {
  std::mt19937_64 rng(seed * 1000003 + static_cast<std::uint64_t>(i));
  const std::size_t size = rng() % 10 == 0 ? 3000 + rng() % 6000 : 20 + rng() % 400;
  std::string v = "value of " + page_key(i) + "|";
  while (v.size() < size) v.push_back(static_cast<char>('a' + rng() % 26));
  return v;
}

std::string regenerated(int i) { return "regenerated " + page_key(i); }

// LMDB's page size, from the first meta page (the free DB's md_pad field,
// after the page header, magic, version, address and map size); 4096 when
// the header is not readable.
std::uint32_t lmdb_page_size(const std::string& data_mdb) {
  std::ifstream in(data_mdb, std::ios::binary);
  char header[48] = {};
  if (!in.read(header, sizeof header)) return 4096;
  std::uint32_t magic = 0;
  std::uint32_t page_size = 0;
  std::memcpy(&magic, header + 16, 4);
  std::memcpy(&page_size, header + 40, 4);
  if (magic != kLmdbMagic || page_size < 512 || page_size > 65536 ||
      (page_size & (page_size - 1)) != 0) {
    return 4096;
  }
  return page_size;
}

void copy_cache(const std::string& from, const std::string& to) {
  namespace fs = std::filesystem;
  REQUIRE(::mkdir(to.c_str(), 0700) == 0);
  for (const auto& entry : fs::directory_iterator(from)) {
    const std::string name = entry.path().filename();
    // lock.mdb is made anew by the first opener.
    if (name == "lock.mdb") continue;
    fs::copy_file(entry.path(), to + "/" + name);
  }
}

enum class Damage { kRandomPages, kZeroPages, kTornSector, kMetaPage };
constexpr const char* kDamageNames[] = {"random pages", "zeroed pages", "torn sector",
                                        "meta page"};
constexpr int kDamageKinds = 4;

// Overwrites part of data.mdb; returns a description.
std::string damage_file(const std::string& data_mdb, Damage kind, std::mt19937_64& rng) {
  const std::uint32_t page = lmdb_page_size(data_mdb);
  const auto pages = static_cast<std::uint64_t>(std::filesystem::file_size(data_mdb) / page);
  REQUIRE(pages > 8);
  std::fstream f(data_mdb, std::ios::in | std::ios::out | std::ios::binary);
  REQUIRE(f.good());
  std::string what;
  auto overwrite = [&](std::uint64_t offset, std::size_t size, bool zeros) {
    std::string bytes(size, '\0');
    if (!zeros) {
      for (char& c : bytes) c = static_cast<char>(rng());
    }
    f.seekp(static_cast<std::streamoff>(offset));
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    what += " " + std::to_string(offset / page);
  };
  switch (kind) {
    case Damage::kRandomPages:
    case Damage::kZeroPages: {
      // Pages 0 and 1 are the meta pages, damaged in rounds of their own.
      const int count = 1 + static_cast<int>(rng() % 4);
      for (int i = 0; i < count; ++i) {
        overwrite((2 + rng() % (pages - 2)) * page, page, kind == Damage::kZeroPages);
      }
      break;
    }
    case Damage::kTornSector: {
      const std::uint64_t sectors = page / 512;
      overwrite((2 + rng() % (pages - 2)) * page + (rng() % sectors) * 512, 512, false);
      break;
    }
    case Damage::kMetaPage:
      overwrite((rng() % 2) * page, page, rng() % 2 == 0);
      break;
  }
  f.flush();
  REQUIRE(f.good());
  return what;
}

// What one child saw of a damaged cache.
struct Outcome {
  bool crashed = false;     // no "done" line: a signal, or a sanitizer report
  std::int64_t read_errors_before_writes = -1;  // -1: the child did not get that far
  int signal = 0;           // the signal that ended it, if one did
  std::string last_phase;   // the phase it reached
  std::map<std::string, std::int64_t> counts;
  std::vector<std::string> wrong;  // reads that returned another value
};

// Opens the damaged cache in a forked child and reads every key; the child
// logs each wrong value as it sees it, so a later crash cannot hide it.
Outcome read_damaged(const std::string& cache, const std::string& log, int keys,
                     std::uint64_t seed, std::chrono::seconds limit) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    // A fault here ends this child, not Catch's report of the parent's test.
    for (int sig : {SIGSEGV, SIGBUS, SIGABRT, SIGILL, SIGFPE}) ::signal(sig, SIG_DFL);
    // A garbage free-list record can make LMDB grow a page list without
    // end: bound the child's address space (the sanitizers reserve terabytes
    // of it up front, so there only the time limit applies).
    if (!kSanitized) {
      const rlimit limit{kChildAddressSpace, kChildAddressSpace};
      ::setrlimit(RLIMIT_AS, &limit);
    }
    // LMDB or a sanitizer may print a fault report: keep it out of the test log.
    const int devnull = ::open("/dev/null", O_WRONLY);
    if (devnull >= 0) {
      ::dup2(devnull, 1);
      ::dup2(devnull, 2);
    }
    std::map<std::string, std::int64_t> counts;
    auto phase = [&](const char* name) { log_line(log, std::string("phase ") + name); };
    auto wrong = [&](const std::string& what, int i) {
      log_line(log, "wrong " + what + " " + page_key(i));
      ++counts["wrong"];
    };
    try {
      phase("open");
      std::optional<Region> region;
      try {
        region.emplace(region_options(), "lmdb", lmdb_args(cache));
      } catch (const Error&) {
        ++counts["open_error"];
      }
      if (region) {
        phase("get_multi");
        std::vector<std::string> all;
        for (int i = 0; i < keys; ++i) all.push_back(page_key(i));
        try {
          const std::vector<std::optional<std::string>> values =
              region->get_multi<std::string>(all);
          for (int i = 0; i < keys; ++i) {
            if (!values[i]) {
              ++counts["miss"];
            } else if (*values[i] == page_value(i, seed)) {
              ++counts["hit"];
            } else {
              wrong("get_multi", i);
            }
          }
        } catch (const Error&) {
          ++counts["error"];
        }
        phase("get");
        for (int i = 0; i < keys; ++i) {
          try {
            const std::optional<std::string> v = region->get<std::string>(page_key(i));
            if (!v) {
              ++counts["miss"];
            } else if (*v == page_value(i, seed)) {
              ++counts["hit"];
            } else {
              wrong("get", i);
            }
          } catch (const Error&) {
            ++counts["error"];
          }
        }
        // Whether the reads so far met a broken page (LMDB's MDB_CORRUPTED
        // or MDB_PAGE_NOTFOUND, counted as store errors): the writes below
        // walk the same trees.
        report(log, "read_errors_before_writes",
               static_cast<std::int64_t>(region->stats().store_errors));
        phase("get_or_create");
        for (int i = 0; i < keys; ++i) {
          try {
            const std::string v =
                region->get_or_create<std::string>(page_key(i), [&] { return regenerated(i); });
            if (v == page_value(i, seed)) {
              ++counts["hit"];
            } else if (v == regenerated(i)) {
              ++counts["created"];
            } else {
              wrong("get_or_create", i);
            }
          } catch (const Error&) {
            ++counts["error"];
          }
        }
        phase("reread");
        for (int i = 0; i < keys; ++i) {
          try {
            const std::optional<std::string> v = region->get<std::string>(page_key(i));
            if (!v) {
              ++counts["miss"];
            } else if (*v == page_value(i, seed) || *v == regenerated(i)) {
              ++counts["hit"];
            } else {
              wrong("reread", i);
            }
          } catch (const Error&) {
            ++counts["error"];
          }
        }
        phase("close");
        region.reset();
      }
    } catch (const std::exception&) {
      // Anything but dogpile::Error is an untyped failure.
      ++counts["untyped"];
    }
    for (const auto& [name, value] : counts) report(log, "count_" + name, value);
    log_line(log, "done");
    ::_exit(0);
  }

  const auto deadline = std::chrono::steady_clock::now() + limit;
  int status = 0;
  bool hung = false;
  for (;;) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    REQUIRE((r == 0 || errno == EINTR));
    if (!hung && std::chrono::steady_clock::now() >= deadline) {
      hung = true;
      ::kill(pid, SIGKILL);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  Outcome out;
  const std::vector<std::string> lines = read_lines(log);
  out.crashed = count_prefix(lines, "done") == 0;
  if (WIFSIGNALED(status)) out.signal = WTERMSIG(status);
  if (hung) out.last_phase = "hung in ";
  for (const std::string& line : lines) {
    if (line.rfind("phase ", 0) == 0) out.last_phase = (hung ? "hung in " : "") + line.substr(6);
    if (line.rfind("wrong ", 0) == 0) out.wrong.push_back(line.substr(6));
    if (line.rfind("read_errors_before_writes ", 0) == 0) {
      out.read_errors_before_writes = std::strtoll(line.c_str() + 26, nullptr, 10);
    }
    if (line.rfind("count_", 0) == 0) {
      const auto space = line.find(' ');
      out.counts[line.substr(6, space - 6)] = std::strtoll(line.c_str() + space + 1, nullptr, 10);
    }
  }
  return out;
}

}  // namespace

TEST_CASE("overwritten pages of data.mdb are misses or typed errors, never wrong values",
          "[pages]") {
  const int keys = kSanitized ? 400 : 1200;
  const int rounds = scaled(kSanitized ? 24 : 48, 400);
  const std::uint64_t seed = reliability_seed();
  std::mt19937_64 rng(seed);
  TempDir dir;
  const std::string pristine = dir / "pristine";
  const auto started = std::chrono::steady_clock::now();

  {
    Region region(region_options(), "lmdb", lmdb_args(pristine));
    std::vector<std::pair<std::string, std::string>> items;
    for (int i = 0; i < keys; ++i) items.emplace_back(page_key(i), page_value(i, seed));
    region.set_multi<std::string>(items);
  }
  const std::uint32_t page = lmdb_page_size(pristine + "/data.mdb");
  const auto file_pages = std::filesystem::file_size(pristine + "/data.mdb") / page;

  // The parent's own cache stays open through every round: a child's crash
  // must not reach it.
  const std::string healthy = dir / "healthy";
  Region parent_region(region_options(), "lmdb", lmdb_args(healthy));
  for (int i = 0; i < 50; ++i) parent_region.set<std::string>(page_key(i), page_value(i, seed));

  int crashed[kDamageKinds] = {};
  int ran[kDamageKinds] = {};
  int open_errors[kDamageKinds] = {};
  std::map<std::string, int> crash_phases;
  std::map<int, int> crash_signals;
  std::int64_t hits = 0, misses = 0, errors = 0, created = 0, untyped = 0;
  std::vector<std::string> wrong;
  for (int round = 0; round < rounds; ++round) {
    const auto kind = static_cast<Damage>(round % kDamageKinds);
    const std::string cache = dir / ("round-" + std::to_string(round));
    copy_cache(pristine, cache);
    const std::string what = damage_file(cache + "/data.mdb", kind, rng);
    const Outcome out =
        read_damaged(cache, dir / ("log-" + std::to_string(round)), keys, seed,
                     std::chrono::seconds(kSanitized ? 20 : 10));
    const int k = static_cast<int>(kind);
    ++ran[k];
    if (out.crashed) {
      ++crashed[k];
      ++crash_phases[out.last_phase];
      ++crash_signals[out.signal];
      std::fprintf(stderr,
                   "round %d (%s, pages%s): child died in %s (signal %d); read errors before "
                   "the writes: %lld\n",
                   round, kDamageNames[k], what.c_str(), out.last_phase.c_str(), out.signal,
                   static_cast<long long>(out.read_errors_before_writes));
    }
    for (const std::string& w : out.wrong) {
      wrong.push_back("round " + std::to_string(round) + " (" + kDamageNames[k] + "): " + w);
    }
    auto count = [&](const char* name) {
      const auto it = out.counts.find(name);
      return it == out.counts.end() ? std::int64_t{0} : it->second;
    };
    open_errors[k] += count("open_error") > 0;
    hits += count("hit");
    misses += count("miss");
    errors += count("error");
    created += count("created");
    untyped += count("untyped");
    std::filesystem::remove_all(cache);

    // The parent is unaffected.
    for (int i = 0; i < 50; ++i) {
      const std::optional<std::string> v = parent_region.get<std::string>(page_key(i));
      REQUIRE(v);
      REQUIRE(*v == page_value(i, seed));
    }
  }

  for (const std::string& w : wrong) UNSCOPED_INFO(w);
  CHECK(wrong.empty());
  CHECK(untyped == 0);
  // LMDB checks both meta pages' flags and magic at open: a broken one
  // fails the open with a typed error, before any tree is walked.
  const int meta = static_cast<int>(Damage::kMetaPage);
  CHECK(open_errors[meta] == ran[meta]);
  CHECK(crashed[meta] == 0);

  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  int total_crashed = 0;
  for (int k = 0; k < kDamageKinds; ++k) {
    total_crashed += crashed[k];
    figure("types_versions[pages]: %s: %d rounds, %d children crashed, %d failed to open "
           "(typed error)",
           kDamageNames[k], ran[k], crashed[k], open_errors[k]);
  }
  std::string phases;
  for (const auto& [phase, count] : crash_phases) phases += " " + phase + "=" + std::to_string(count);
  std::string signals;
  for (const auto& [sig, count] : crash_signals) {
    signals += " " + std::to_string(sig) + "=" + std::to_string(count);
  }
  figure("types_versions[pages]: %d keys, %llu pages of %u bytes, %d rounds: %d children "
         "crashed (phases:%s; signals:%s), reads: %lld correct hits, %lld misses, %lld "
         "regenerated, %lld typed errors, %lld untyped, %zu wrong values; %.1f s",
         keys, static_cast<unsigned long long>(file_pages), page, rounds, total_crashed,
         phases.empty() ? " none" : phases.c_str(), signals.empty() ? " none" : signals.c_str(),
         static_cast<long long>(hits), static_cast<long long>(misses),
         static_cast<long long>(created), static_cast<long long>(errors),
         static_cast<long long>(untyped), wrong.size(), seconds);
}
