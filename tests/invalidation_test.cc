// Invalidation (spec §3): hard and soft invalidate() per region, the
// pluggable strategy, and the lmdb backend's stamps file shared by processes
// and kept across restarts.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>
#include <functional>
#include <future>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "backends/stamp_file.h"
#include "dogpile/dogpile.h"
#include "test_util.h"

using namespace dogpile;
using namespace std::chrono_literals;
using dogpile::internal::StampFile;
using dogpile::test::FakeClock;
using dogpile::test::str_cat;
using dogpile::test::TempDir;

namespace {

struct Fixture {
  std::shared_ptr<FakeClock> clock = std::make_shared<FakeClock>();
  std::shared_ptr<Backend> backend = make_memory_backend();

  RegionOptions options(std::optional<Duration> expiration = std::nullopt) {
    return RegionOptions{.name = "inval",
                         .expiration_time = expiration,
                         .clock = clock,
                         .logger = [](LogLevel, std::string_view) {}};
  }
};

// A strategy that records what the region asks and answers as told.
class CountingStrategy final : public InvalidationStrategy {
 public:
  std::int64_t sequence() const noexcept override {
    ++sequence_queries;
    return next.load();
  }
  Status invalidate(bool hard) override {
    ++invalidations;
    last_hard = hard;
    return Status::ok();
  }
  bool is_hard_invalidated(std::int64_t sequence) const noexcept override {
    ++hard_queries;
    last_sequence = sequence;
    return hard.load();
  }
  bool is_soft_invalidated(std::int64_t) const noexcept override {
    ++soft_queries;
    return soft.load();
  }
  bool was_hard_invalidated() const noexcept override { return hard.load(); }
  bool was_soft_invalidated() const noexcept override { return soft.load(); }

  std::atomic<bool> hard{false}, soft{false};
  std::atomic<std::int64_t> next{1000};
  std::atomic<int> invalidations{0};
  mutable std::atomic<int> hard_queries{0}, soft_queries{0}, sequence_queries{0};
  bool last_hard = false;
  mutable std::atomic<std::int64_t> last_sequence{0};
};

// ---- processes ----

// Two pipes between the test and one child; a read returns false at EOF, so
// a child that dies makes the test fail instead of hang.
class Channel {
 public:
  Channel() {
    if (::pipe2(down_, O_CLOEXEC) != 0 || ::pipe2(up_, O_CLOEXEC) != 0) {
      throw std::runtime_error("pipe2 failed");
    }
  }
  ~Channel() {
    for (int fd : {down_[0], down_[1], up_[0], up_[1]})
      if (fd >= 0) ::close(fd);
  }
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  void in_child() { close_ends(down_[1], up_[0]); }
  void in_parent() { close_ends(down_[0], up_[1]); }
  bool to_child(char c) { return ::write(down_[1], &c, 1) == 1; }
  bool to_parent(char c) { return ::write(up_[1], &c, 1) == 1; }
  bool from_parent(char& c) { return read_one(down_[0], c); }
  bool from_child(char& c) { return read_one(up_[0], c); }

 private:
  void close_ends(int& a, int& b) {
    ::close(a);
    ::close(b);
    a = b = -1;
  }
  static bool read_one(int fd, char& c) {
    for (;;) {
      const ssize_t n = ::read(fd, &c, 1);
      if (n == 1) return true;
      if (n < 0 && errno == EINTR) continue;
      return false;
    }
  }

  int down_[2];
  int up_[2];
};

// Runs `body` in a fork()ed child; its return value is the exit status (an
// exception is 99).
pid_t fork_child(const std::function<int()>& body) {
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    int rc = 99;
    try {
      rc = body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
    }
    _exit(rc);
  }
  return pid;
}

// The child's exit status, or -1 when it did not exit normally.
int reap(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

Region lmdb_region(const std::string& dir, std::string name = "shared",
                   std::optional<Duration> expiration = std::nullopt) {
  return Region({.name = std::move(name), .expiration_time = expiration}, "lmdb",
                {{"path", dir}});
}

// The region hashes of the claimed slots of a stamps file, read straight
// from its bytes as docs/format.md lays them out.
std::multiset<std::uint64_t> claimed_slots(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  REQUIRE(bytes.size() == StampFile::kFileSize);
  std::uint32_t magic = 0, version = 0, slot_size = 0, slot_count = 0;
  std::memcpy(&magic, bytes.data(), 4);
  std::memcpy(&version, bytes.data() + 4, 4);
  std::memcpy(&slot_size, bytes.data() + 8, 4);
  std::memcpy(&slot_count, bytes.data() + 12, 4);
  CHECK(std::string(bytes.data(), 4) == "DGPS");
  CHECK(magic == StampFile::kMagic);
  CHECK(version == 2);
  CHECK(slot_size == 32);
  CHECK(slot_count == 2046);
  std::multiset<std::uint64_t> out;
  for (std::size_t i = 0; i < slot_count; ++i) {
    std::uint64_t hash = 0;
    std::memcpy(&hash, bytes.data() + 64 + i * 32, 8);
    if (hash != 0) out.insert(hash);
  }
  return out;
}

std::int64_t ns(WallTime t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

// ---- region semantics (in-process stamps) ----

TEST_CASE("hard invalidation: older entries are missing, get_or_create makes them again",
          "[invalidation]") {
  Fixture f;
  Region region(f.options(), f.backend);
  region.set<std::string>("k", "old");
  f.clock->advance(1s);
  region.invalidate();  // hard by default, as dogpile.cache's
  CHECK_FALSE(region.get<std::string>("k"));
  CHECK_FALSE(region.get_value<std::string>("k"));
  CHECK_FALSE(region.get<std::string>("k", {.ignore_expiration = true}));
  CHECK_FALSE(region.get_value_metadata("k"));
  int calls = 0;
  CHECK(region.get_or_create<std::string>("k", [&] {
    ++calls;
    return std::string("new");
  }) == "new");
  CHECK(calls == 1);
  CHECK(region.get<std::string>("k") == "new");
  CHECK(region.stats().stale_served == 0);
}

TEST_CASE("soft invalidation: older entries are stale, regenerated once", "[invalidation]") {
  Fixture f;
  Region region(f.options(1h), f.backend);
  region.set<std::string>("k", "old");
  f.clock->advance(1s);
  region.invalidate(false);
  // As dogpile.cache's get: a stale value is no value...
  CHECK_FALSE(region.get<std::string>("k"));
  // ...unless expiration is ignored; the entry and its metadata are still there.
  CHECK(region.get<std::string>("k", {.ignore_expiration = true}) == "old");
  const auto meta = region.get_value_metadata("k");
  REQUIRE(meta);
  CHECK(meta->created_at == f.clock->now() - 1s);
  int calls = 0;
  const auto make = [&] {
    ++calls;
    return std::string("new");
  };
  CHECK(region.get_or_create<std::string>("k", make) == "new");
  CHECK(region.get_or_create<std::string>("k", make) == "new");
  CHECK(calls == 1);
}

TEST_CASE("soft invalidation needs no expiration_time", "[invalidation]") {
  // dogpile.cache refuses soft invalidation without an expiration time; here
  // the entries are simply stale.
  Fixture f;
  Region region(f.options(), f.backend);
  region.set<std::string>("a", "old-a");
  region.set<std::string>("b", "old-b");
  f.clock->advance(1ms);
  region.invalidate(false);
  CHECK_FALSE(region.get<std::string>("a"));
  int calls = 0;
  CHECK(region.get_or_create<std::string>("a", [&] {
    ++calls;
    return std::string("new-a");
  }) == "new-a");
  CHECK(calls == 1);
  CHECK(region.get<std::string>("a") == "new-a");
  // Multi reads see it too.
  const std::vector<std::string> keys{"a", "b"};
  const auto values = region.get_multi<std::string>(keys);
  CHECK(values[0] == "new-a");
  CHECK_FALSE(values[1]);
  const auto made = region.get_or_create_multi<std::string>(
      keys, [&](std::span<const std::string> missing) {
        CHECK(missing.size() == 1);
        return std::vector<std::string>(missing.size(), "new-b");
      });
  CHECK(made == std::vector<std::string>{"new-a", "new-b"});
}

TEST_CASE("soft invalidation: one thread regenerates, the others are served stale at once",
          "[invalidation][threads]") {
  Fixture f;
  Region region(f.options(), f.backend);
  region.set<std::string>("k", "old");
  f.clock->advance(1s);
  region.invalidate(false);

  std::atomic<int> calls{0};
  std::promise<void> creator_entered;
  std::promise<void> finish;
  std::thread creator([&] {
    CHECK(region.get_or_create<std::string>("k", [&] {
      ++calls;
      creator_entered.set_value();
      finish.get_future().wait();
      return std::string("new");
    }) == "new");
  });
  creator_entered.get_future().wait();
  // The creator is parked: every other caller must return without it.
  std::vector<std::thread> others;
  std::vector<std::string> got(6);
  for (std::size_t i = 0; i < got.size(); ++i) {
    others.emplace_back([&, i] {
      got[i] = region.get_or_create<std::string>("k", [&] {
        ++calls;
        return std::string("duplicate");
      });
    });
  }
  for (auto& t : others) t.join();
  for (const auto& g : got) CHECK(g == "old");
  CHECK(region.stats().stale_served == got.size());
  finish.set_value();
  creator.join();
  CHECK(calls == 1);
  CHECK(region.get<std::string>("k") == "new");
}

TEST_CASE("entries created at or after the stamp are fresh", "[invalidation]") {
  Fixture f;
  Region region(f.options(), f.backend);
  region.set<std::string>("before", "x");
  f.clock->advance(1s);
  region.invalidate(true);
  region.set<std::string>("same-instant", "y");
  f.clock->advance(1ns);
  region.set<std::string>("after", "z");
  CHECK_FALSE(region.get<std::string>("before"));
  CHECK(region.get<std::string>("same-instant") == "y");
  CHECK(region.get<std::string>("after") == "z");
  const auto& strategy = *region.options().invalidation;
  CHECK(strategy.was_hard_invalidated());
  CHECK_FALSE(strategy.was_soft_invalidated());
}

TEST_CASE("stamps only move forward; a soft invalidation does not undo a hard one",
          "[invalidation]") {
  Fixture f;
  Region region(f.options(), f.backend);
  const auto& strategy = *region.options().invalidation;
  region.set<std::string>("first", "a");
  region.set<std::string>("second", "b");
  const std::int64_t before = strategy.sequence();
  CHECK(region.get_value_metadata("second")->sequence == before);
  region.invalidate(true);
  CHECK(strategy.sequence() > before);
  region.invalidate(true);  // a second hard invalidation changes nothing for older entries
  CHECK_FALSE(region.get<std::string>("second"));
  region.set<std::string>("third", "c");
  const std::int64_t third = region.get_value_metadata("third")->sequence;
  region.invalidate(false);
  CHECK_FALSE(region.get<std::string>("first", {.ignore_expiration = true}));  // still missing
  CHECK_FALSE(region.get_value_metadata("second"));
  CHECK(region.get<std::string>("third", {.ignore_expiration = true}) == "c");  // stale
  CHECK_FALSE(region.get<std::string>("third"));
  CHECK(strategy.was_hard_invalidated());
  CHECK(strategy.was_soft_invalidated());
  CHECK(strategy.is_soft_invalidated(third));
  CHECK_FALSE(strategy.is_hard_invalidated(third));
  CHECK(strategy.is_invalidated(third));
  CHECK(strategy.is_hard_invalidated(before));
  CHECK_FALSE(strategy.is_invalidated(strategy.sequence()));
}

TEST_CASE("a user strategy is consulted on every read and receives invalidate()",
          "[invalidation]") {
  Fixture f;
  auto counting = std::make_shared<CountingStrategy>();
  RegionOptions o = f.options();
  o.invalidation = counting;
  Region region(o, f.backend);
  Region plain(f.options(), f.backend);  // the same entries, the backend's stamps
  CHECK(region.options().invalidation == counting);
  CHECK(plain.options().invalidation == f.backend->invalidation_strategy());

  counting->next = 4242;
  region.set<std::string>("k", "v");
  counting->next = 5000;
  CHECK(counting->sequence_queries == 1);
  CHECK(region.get<std::string>("k") == "v");
  CHECK(counting->hard_queries >= 1);
  CHECK(counting->soft_queries >= 1);
  CHECK(counting->last_sequence == 4242);  // what the entry recorded, not the time
  CHECK(region.get_value_metadata("k")->sequence == 4242);

  region.invalidate(false);
  CHECK(counting->invalidations == 1);
  CHECK_FALSE(counting->last_hard);

  counting->soft = true;
  CHECK_FALSE(region.get<std::string>("k"));
  CHECK(region.get<std::string>("k", {.ignore_expiration = true}) == "v");
  counting->hard = true;
  CHECK_FALSE(region.get<std::string>("k", {.ignore_expiration = true}));
  CHECK_FALSE(region.get_value_metadata("k"));
  // The backend's own stamps were never touched.
  CHECK(plain.get<std::string>("k") == "v");
  CHECK_FALSE(f.backend->invalidation_strategy()->was_hard_invalidated());
}

TEST_CASE("in-process stamps belong to the backend object", "[invalidation]") {
  Fixture f;
  Region one(f.options(), f.backend);
  Region two(f.options(), f.backend);
  Fixture g;
  g.clock = f.clock;
  Region other(g.options(), g.backend);
  one.set<std::string>("k", "v");
  other.set<std::string>("k", "v");
  f.clock->advance(1s);
  one.invalidate(true);
  CHECK_FALSE(two.get<std::string>("k"));
  CHECK(other.get<std::string>("k") == "v");
}

// ---- the lmdb stamps file ----

TEST_CASE("lmdb: two regions of one directory are invalidated independently",
          "[invalidation][lmdb]") {
  TempDir dir;
  Region a = lmdb_region(dir.path(), "a");
  Region b = lmdb_region(dir.path(), "b");
  a.set<std::string>("k", "a");
  b.set<std::string>("k", "b");
  a.invalidate(true);
  CHECK_FALSE(a.get<std::string>("k"));
  CHECK(b.get<std::string>("k") == "b");
  b.invalidate(false);
  CHECK_FALSE(b.get<std::string>("k"));
  CHECK(b.get_value_metadata("k"));
  CHECK(a.options().invalidation->was_hard_invalidated());
  CHECK_FALSE(a.options().invalidation->was_soft_invalidated());
  CHECK_FALSE(b.options().invalidation->was_hard_invalidated());
  CHECK(claimed_slots(dir / StampFile::kFileName) ==
        std::multiset<std::uint64_t>{StampFile::region_hash("a"), StampFile::region_hash("b")});
  // A second backend object on the same region shares the stamps.
  Region a2 = lmdb_region(dir.path(), "a");
  CHECK_FALSE(a2.get<std::string>("k"));
}

TEST_CASE("lmdb: a process with the region open sees another's invalidation at its next read",
          "[invalidation][lmdb][multiprocess]") {
  const bool hard = GENERATE(true, false);
  INFO((hard ? "hard" : "soft"));
  TempDir dir;
  Channel ch;
  // B opens the region, reads a fresh value, then reads again after A invalidated.
  const pid_t b = fork_child([&] {
    ch.in_child();
    Region region = lmdb_region(dir.path());
    region.set<std::string>("k", "old");
    if (region.get<std::string>("k") != "old") return 10;
    ch.to_parent('r');
    char c = 0;
    if (!ch.from_parent(c)) return 11;
    if (region.get<std::string>("k")) return 12;  // invalidated: no fresh value
    const bool has_meta = region.get_value_metadata("k").has_value();
    if (has_meta == hard) return 13;  // soft: stale, still there; hard: missing
    int calls = 0;
    if (region.get_or_create<std::string>("k", [&] {
          ++calls;
          return std::string("new");
        }) != "new")
      return 14;
    if (calls != 1) return 15;
    ch.to_parent('d');
    return 0;
  });
  ch.in_parent();
  char c = 0;
  REQUIRE(ch.from_child(c));
  {
    Region a = lmdb_region(dir.path());
    a.invalidate(hard);
  }
  REQUIRE(ch.to_child('g'));
  CHECK(ch.from_child(c));
  CHECK(reap(b) == 0);
  Region region = lmdb_region(dir.path());
  CHECK(region.get<std::string>("k") == "new");
}

TEST_CASE("lmdb: a forked child invalidates through the region it inherited",
          "[invalidation][lmdb][multiprocess]") {
  TempDir dir;
  Region region = lmdb_region(dir.path());
  region.set<std::string>("k", "v");
  CHECK(region.get<std::string>("k") == "v");
  const pid_t child = fork_child([&] {
    if (region.get<std::string>("k") != "v") return 10;
    region.invalidate(true);
    return region.get<std::string>("k") ? 11 : 0;
  });
  REQUIRE(reap(child) == 0);
  CHECK_FALSE(region.get<std::string>("k"));
  region.set<std::string>("k", "again");
  CHECK(region.get<std::string>("k") == "again");
}

TEST_CASE("lmdb: invalidation survives a restart", "[invalidation][lmdb][multiprocess]") {
  TempDir dir;
  // The first "run": writes, invalidates, writes again, and exits.
  const pid_t first = fork_child([&] {
    Region hard = lmdb_region(dir.path(), "hard");
    Region soft = lmdb_region(dir.path(), "soft");
    hard.set<std::string>("old", "x");
    soft.set<std::string>("old", "x");
    hard.invalidate(true);
    soft.invalidate(false);
    hard.set<std::string>("new", "y");
    soft.set<std::string>("new", "y");
    return 0;
  });
  REQUIRE(reap(first) == 0);
  // The second run: a fresh process that never had the directory open.
  const pid_t second = fork_child([&] {
    Region hard = lmdb_region(dir.path(), "hard");
    Region soft = lmdb_region(dir.path(), "soft");
    if (hard.get<std::string>("old") || hard.get_value_metadata("old")) return 10;
    if (hard.get<std::string>("new") != "y") return 11;
    if (soft.get<std::string>("old") || !soft.get_value_metadata("old")) return 12;
    if (soft.get<std::string>("new") != "y") return 13;
    return 0;
  });
  CHECK(reap(second) == 0);
}

TEST_CASE("lmdb: 8 processes invalidating at once draw distinct stamps from one sequence",
          "[invalidation][lmdb][multiprocess]") {
  TempDir dir;
  constexpr int kProcesses = 8;
  constexpr int kRegions = 16;
  std::int64_t first = 0;
  {
    std::shared_ptr<StampFile> file;
    REQUIRE(StampFile::open(dir / StampFile::kFileName, file));
    first = file->sequence();
  }
  int gate[2];
  REQUIRE(::pipe2(gate, O_CLOEXEC) == 0);
  std::vector<pid_t> pids;
  for (int p = 0; p < kProcesses; ++p) {
    pids.push_back(fork_child([&, p] {
      ::close(gate[1]);
      char c;
      while (::read(gate[0], &c, 1) < 0 && errno == EINTR) {
      }
      // Every process claims the same regions in its own order.
      std::vector<int> order(kRegions);
      for (int r = 0; r < kRegions; ++r) order[r] = r;
      std::shuffle(order.begin(), order.end(), std::mt19937(static_cast<unsigned>(p)));
      for (int r : order) {
        std::shared_ptr<InvalidationStrategy> s;
        const Status opened = internal::open_stamp_invalidation(
            dir.path(), "region-" + std::to_string(r), /*sync=*/p % 2 == 0, s);
        if (!opened) return 10;
        if (!s->invalidate(true)) return 11;
        if (!s->invalidate(false)) return 12;
      }
      return 0;
    }));
  }
  ::close(gate[0]);
  ::close(gate[1]);  // opens the gate
  for (pid_t pid : pids) CHECK(reap(pid) == 0);

  std::multiset<std::uint64_t> expected;
  for (int r = 0; r < kRegions; ++r) {
    expected.insert(StampFile::region_hash("region-" + std::to_string(r)));
  }
  CHECK(claimed_slots(dir / StampFile::kFileName) == expected);  // one slot per region
  std::shared_ptr<StampFile> file;
  REQUIRE(StampFile::open(dir / StampFile::kFileName, file));
  // Every invalidation advanced the sequence by exactly one...
  CHECK(file->sequence() == first + 2 * kProcesses * kRegions);
  // ...and each stamp is one of the numbers drawn, none shared by two kinds
  // or regions.
  std::set<std::int64_t> stamps;
  for (int r = 0; r < kRegions; ++r) {
    const std::int64_t slot = file->find(StampFile::region_hash("region-" + std::to_string(r)));
    REQUIRE(slot >= 0);
    for (const auto kind : {StampFile::Kind::kHard, StampFile::Kind::kSoft}) {
      const std::int64_t stamp = file->stamp(static_cast<std::uint32_t>(slot), kind);
      CHECK(stamp > first);
      CHECK(stamp <= file->sequence());
      stamps.insert(stamp);
    }
  }
  CHECK(stamps.size() == 2 * kRegions);
}

TEST_CASE("lmdb: a symlink at the stamps file is refused, naming the path",
          "[invalidation][lmdb]") {
  TempDir dir;
  const std::string stamps = dir / StampFile::kFileName;
  const std::string target = dir / "elsewhere";
  REQUIRE(::symlink(target.c_str(), stamps.c_str()) == 0);
  try {
    Region region = lmdb_region(dir.path());
    FAIL("a symlinked stamps file was accepted");
  } catch (const Error& e) {
    CHECK(e.path() == stamps);
    CHECK(std::string(e.what()).find(stamps) != std::string::npos);
    CHECK(std::string(e.what()).find("symlink") != std::string::npos);
  }
  CHECK(::access(target.c_str(), F_OK) != 0);  // nothing was created through it
}

TEST_CASE("lmdb: a stamps file of another size, magic or version is refused; an empty one is "
          "rebuilt",
          "[invalidation][lmdb]") {
  TempDir dir;
  const std::string stamps = dir / StampFile::kFileName;
  std::string header(StampFile::kFileSize, '\0');

  SECTION("empty file") {
    write_file(stamps, "");
    Region region = lmdb_region(dir.path());
    region.invalidate(true);
    CHECK(claimed_slots(stamps).size() == 1);
  }
  SECTION("right size, all zero (its creator died before the header)") {
    write_file(stamps, header);
    Region region = lmdb_region(dir.path());
    region.invalidate(false);
    CHECK(claimed_slots(stamps).size() == 1);
  }
  SECTION("wrong size") {
    write_file(stamps, "not a stamps file");
    try {
      Region region = lmdb_region(dir.path());
      FAIL("accepted");
    } catch (const Error& e) {
      CHECK(e.code() == StatusCode::kCorruption);
      CHECK(e.path() == stamps);
      CHECK(std::string(e.what()).find("17 bytes") != std::string::npos);
    }
  }
  SECTION("bad magic") {
    header.replace(0, 4, "XXXX");
    write_file(stamps, header);
    try {
      Region region = lmdb_region(dir.path());
      FAIL("accepted");
    } catch (const Error& e) {
      CHECK(e.code() == StatusCode::kCorruption);
      CHECK(std::string(e.what()).find("magic") != std::string::npos);
    }
  }
  SECTION("another version") {
    const std::uint32_t magic = StampFile::kMagic, version = 3;
    std::memcpy(header.data(), &magic, 4);
    std::memcpy(header.data() + 4, &version, 4);
    write_file(stamps, header);
    try {
      Region region = lmdb_region(dir.path());
      FAIL("accepted");
    } catch (const Error& e) {
      CHECK(e.code() == StatusCode::kNotSupported);
      CHECK(std::string(e.what()).find("version 3") != std::string::npos);
    }
  }
}

namespace {

// A stamps file of `version` with sequence `sequence` (version 2) and region
// "shared"'s hard stamp at `hard`, laid out as docs/format.md says.
std::string stamps_file_bytes(std::uint32_t version, std::int64_t sequence, std::int64_t hard) {
  std::string bytes(StampFile::kFileSize, '\0');
  const std::uint32_t header[] = {StampFile::kMagic, version, 32, 2046};
  std::memcpy(bytes.data(), header, sizeof header);
  if (version >= 2) std::memcpy(bytes.data() + 16, &sequence, 8);
  const std::uint64_t hash = StampFile::region_hash("shared");
  const std::size_t slot = 64 + (hash % 2046) * 32;
  std::memcpy(bytes.data() + slot, &hash, 8);
  std::memcpy(bytes.data() + slot + 8, &hard, 8);
  return bytes;
}

std::uint32_t stamps_version(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::uint32_t header[2] = {};
  in.read(reinterpret_cast<char*>(header), sizeof header);
  return header[1];
}

}  // namespace

TEST_CASE("lmdb: a version 1 stamps file (wall-clock stamps) is upgraded in place",
          "[invalidation][lmdb]") {
  TempDir dir;
  const std::string stamps = dir / StampFile::kFileName;
  // Written by a clock an hour fast: new entries must still be fresh.
  const std::int64_t old_stamp = ns(std::chrono::system_clock::now() + 1h);
  write_file(stamps, stamps_file_bytes(1, 0, old_stamp));
  Region region = lmdb_region(dir.path());
  CHECK(stamps_version(stamps) == 2);
  const auto& strategy = *region.options().invalidation;
  CHECK(strategy.was_hard_invalidated());  // the old stamp is kept
  CHECK(strategy.sequence() >= old_stamp);
  region.set<std::string>("k", "v");
  CHECK(region.get<std::string>("k") == "v");
  region.invalidate(true);
  CHECK_FALSE(region.get<std::string>("k"));
}

TEST_CASE("lmdb: a sequence left behind a stamp (a crash between the writes) is raised at open",
          "[invalidation][lmdb]") {
  TempDir dir;
  const std::string stamps = dir / StampFile::kFileName;
  write_file(stamps, stamps_file_bytes(2, 5, 1'000'000));
  Region region = lmdb_region(dir.path());
  CHECK(region.options().invalidation->sequence() == 1'000'000);
  region.set<std::string>("k", "v");
  CHECK(region.get<std::string>("k") == "v");  // not older than the stamp
  std::shared_ptr<StampFile> file;
  REQUIRE(StampFile::open(stamps, file));
  CHECK(file->sequence() == 1'000'000);
}

TEST_CASE("stamps file: a new file's sequence starts at the real clock, above 0",
          "[invalidation]") {
  TempDir dir;
  const std::int64_t before = ns(std::chrono::system_clock::now());
  std::shared_ptr<StampFile> file;
  REQUIRE(StampFile::open(dir / StampFile::kFileName, file));
  CHECK(file->sequence() >= before);
  CHECK(file->sequence() <= ns(std::chrono::system_clock::now()));
  std::int64_t drawn = 0;
  REQUIRE(file->next_sequence(/*sync=*/true, drawn));
  CHECK(drawn == file->sequence());
}

TEST_CASE("stamps file: every slot taken is a typed error; the claimed slots still work",
          "[invalidation]") {
  TempDir dir;
  std::shared_ptr<StampFile> file;
  REQUIRE(StampFile::open(dir / StampFile::kFileName, file));
  std::vector<std::uint32_t> slots;
  for (std::uint32_t i = 0; i < StampFile::kSlotCount; ++i) {
    std::uint32_t slot = 0;
    REQUIRE(file->claim(StampFile::region_hash(str_cat("r", i)), slot));
    slots.push_back(slot);
  }
  CHECK(std::set<std::uint32_t>(slots.begin(), slots.end()).size() == StampFile::kSlotCount);
  std::uint32_t slot = 0;
  const Status full = file->claim(StampFile::region_hash("one-too-many"), slot);
  CHECK(full.code() == StatusCode::kFull);
  CHECK(full.path() == dir / StampFile::kFileName);
  CHECK(file->find(StampFile::region_hash("one-too-many")) == -1);
  // Claiming an existing region again finds its slot.
  REQUIRE(file->claim(StampFile::region_hash("r7"), slot));
  CHECK(slot == slots[7]);
  CHECK(file->find(StampFile::region_hash("r7")) == slots[7]);
  REQUIRE(file->raise(slot, StampFile::Kind::kHard, 42, /*sync=*/false));
  REQUIRE(file->raise(slot, StampFile::Kind::kHard, 41, /*sync=*/false));
  CHECK(file->stamp(slot, StampFile::Kind::kHard) == 42);
  CHECK(file->stamp(slot, StampFile::Kind::kSoft) == 0);
}

// ---- order, not the wall clock (docs/design.md, rule I1) ----
//
// Each case fails when stamps compare wall-clock times: the clock decides
// nothing about which entries an invalidation covers.

TEST_CASE("clock stepped back after a hard invalidation: new entries are fresh",
          "[invalidation][clock]") {
  Fixture f;
  Region region(f.options(), f.backend);
  region.set<std::string>("old", "x");
  region.invalidate(true);
  f.clock->advance(-1h);  // e.g. NTP corrects a clock that ran an hour fast
  region.set<std::string>("k", "v");
  CHECK(region.get<std::string>("k") == "v");
  int calls = 0;
  for (int i = 0; i < 5; ++i) {
    CHECK(region.get_or_create<std::string>("made", [&] {
      ++calls;
      return std::string("m");
    }) == "m");
  }
  CHECK(calls == 1);
  CHECK_FALSE(region.get<std::string>("old"));
}

TEST_CASE("clock stepped back less than future_tolerance: older entries are still invalidated",
          "[invalidation][clock]") {
  Fixture f;
  Region region(f.options(), f.backend);
  region.set<std::string>("old", "x");
  f.clock->advance(-30s);  // within the 60 s an entry may come from the future
  region.invalidate(true);
  CHECK_FALSE(region.get<std::string>("old"));
  CHECK_FALSE(region.get_value_metadata("old"));
  region.set<std::string>("soft", "y");
  region.invalidate(false);
  CHECK_FALSE(region.get<std::string>("soft"));
  CHECK(region.get<std::string>("soft", {.ignore_expiration = true}) == "y");
}

TEST_CASE("invalidate() while a creator runs: its value is returned, not kept",
          "[invalidation][threads]") {
  const bool hard = GENERATE(true, false);
  INFO((hard ? "hard" : "soft"));
  Fixture f;
  Region region(f.options(), f.backend);
  std::promise<void> entered;
  std::promise<void> finish;
  std::thread creator([&] {
    CHECK(region.get_or_create<std::string>("k", [&] {
      entered.set_value();
      finish.get_future().wait();
      return std::string("from old data");
    }) == "from old data");
  });
  entered.get_future().wait();
  f.clock->advance(1s);  // the invalidation is even later by the clock
  region.invalidate(hard);
  finish.set_value();
  creator.join();
  CHECK_FALSE(region.get<std::string>("k"));
  CHECK(region.get_or_create<std::string>("k", [] { return std::string("new"); }) == "new");
  CHECK(region.get<std::string>("k") == "new");
}

namespace {

// An lmdb region of `dir` whose clock is `clock`.
Region lmdb_clock_region(const std::string& dir, std::shared_ptr<Clock> clock) {
  return Region({.name = "shared", .clock = std::move(clock)}, "lmdb", {{"path", dir}});
}

// Runs `body` in a fork()ed child with a fake clock at `start` + `offset`.
int in_child_at(WallTime start, Duration offset, const std::function<int(Region&)>& body,
                const std::string& dir) {
  return reap(fork_child([&] {
    Region region = lmdb_clock_region(dir, std::make_shared<FakeClock>(start + offset));
    return body(region);
  }));
}

}  // namespace

TEST_CASE("lmdb across processes: clock steps back after a hard invalidation",
          "[invalidation][clock][lmdb][multiprocess]") {
  TempDir dir;
  const WallTime t0 = std::chrono::system_clock::now();
  // A process whose clock runs an hour fast invalidates...
  REQUIRE(in_child_at(t0, 1h, [](Region& r) {
            r.set<std::string>("old", "x");
            r.invalidate(true);
            return 0;
          }, dir.path()) == 0);
  // ...then processes with the right time store and read.
  REQUIRE(in_child_at(t0, 0s, [](Region& r) {
            r.set<std::string>("k", "v");
            return r.get<std::string>("k") == "v" ? 0 : 10;
          }, dir.path()) == 0);
  int calls = 0;
  Region region = lmdb_clock_region(dir.path(), std::make_shared<FakeClock>(t0 + 1s));
  CHECK(region.get<std::string>("k") == "v");
  CHECK_FALSE(region.get<std::string>("old"));
  for (int i = 0; i < 5; ++i) {
    region.get_or_create<std::string>("made", [&] {
      ++calls;
      return std::string("m");
    });
  }
  CHECK(calls == 1);
}

TEST_CASE("lmdb across processes: an invalidation by a clock 30 s behind covers older entries",
          "[invalidation][clock][lmdb][multiprocess]") {
  TempDir dir;
  const WallTime t0 = std::chrono::system_clock::now();
  REQUIRE(in_child_at(t0, 0s, [](Region& r) {
            r.set<std::string>("old", "x");
            return 0;
          }, dir.path()) == 0);
  REQUIRE(in_child_at(t0, -30s, [](Region& r) {
            r.invalidate(true);
            return 0;
          }, dir.path()) == 0);
  Region region = lmdb_clock_region(dir.path(), std::make_shared<FakeClock>(t0));
  CHECK_FALSE(region.get<std::string>("old"));
  CHECK_FALSE(region.get_value_metadata("old"));
}

TEST_CASE("lmdb across processes: invalidate() while another process's creator runs",
          "[invalidation][lmdb][multiprocess]") {
  TempDir dir;
  const WallTime t0 = std::chrono::system_clock::now();
  Channel ch;
  const pid_t creator = fork_child([&] {
    ch.in_child();
    Region region = lmdb_clock_region(dir.path(), std::make_shared<FakeClock>(t0));
    const std::string got = region.get_or_create<std::string>("k", [&] {
      ch.to_parent('c');
      char c = 0;
      ch.from_parent(c);
      return std::string("from old data");
    });
    return got == "from old data" ? 0 : 10;
  });
  ch.in_parent();
  char c = 0;
  REQUIRE(ch.from_child(c));
  REQUIRE(in_child_at(t0, -1s, [](Region& r) {  // an earlier clock than the creator's
            r.invalidate(true);
            return 0;
          }, dir.path()) == 0);
  REQUIRE(ch.to_child('g'));
  REQUIRE(reap(creator) == 0);
  Region region = lmdb_clock_region(dir.path(), std::make_shared<FakeClock>(t0));
  CHECK_FALSE(region.get<std::string>("k"));
  CHECK_FALSE(region.get_value_metadata("k"));
}
