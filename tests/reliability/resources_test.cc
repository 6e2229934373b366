// Resources: the map limit, a full file system, a file size limit, an
// address space that cannot hold a larger map, and a map grown by another
// process while this one reads. Every case that may fail hard runs in a
// fork()ed child whose exit status shows it was not killed by a signal; its
// findings come back over a pipe, and the Catch2 assertions run here.
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "backends/lmdb_env.h"
#include "dogpile/dogpile.h"
#include "dogpile/lmdb_backend.h"
#include "dogpile/store.h"

#include "process_util.h"
#include "reliability_util.h"
#include "test_util.h"

namespace {

using dogpile::Status;
using dogpile::StatusCode;
using dogpile::internal::LmdbEnv;
using dogpile::internal::ReadTxn;
using dogpile::test::figure;
using dogpile::test::read_to_end;
using dogpile::test::reliability_seed;
using dogpile::test::scaled;
using dogpile::test::str_cat;
using dogpile::test::TempDir;
using dogpile::test::wait_status;
using Clock = std::chrono::steady_clock;

constexpr std::uint64_t kKiB = 1024;
constexpr std::uint64_t kMiB = 1024 * kKiB;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Drawn before any fork, so that every process of a run makes the same values.
const std::uint64_t kSeed = reliability_seed();

// Bytes that tell which run, key and size they were made for.
std::string value_of(std::uint64_t i, std::size_t size) {
  std::string out(size, '\0');
  std::uint64_t x = kSeed ^ (i * 0x9e3779b97f4a7c15ull);
  for (std::size_t p = 0; p < size; p += 8) {
    x += 0x9e3779b97f4a7c15ull;
    std::uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    std::memcpy(out.data() + p, &z, std::min<std::size_t>(8, size - p));
  }
  return out;
}

dogpile::Region open_region(const std::string& dir, const std::string& max_size,
                            const std::string& durability = "nosync",
                            std::vector<std::string>* log = nullptr) {
  dogpile::RegionOptions options{.name = "res", .stats_interval = std::chrono::hours(1)};
  if (log != nullptr) {
    options.logger = [log](dogpile::LogLevel, std::string_view m) { log->emplace_back(m); };
  } else {
    options.logger = [](dogpile::LogLevel, std::string_view) {};
  }
  return dogpile::Region(std::move(options), "lmdb",
                         {{"path", dir}, {"max_size", max_size}, {"durability", durability}});
}

// What a child process reports: "name value" lines, in order.
class Report {
 public:
  explicit Report(int fd) : fd_(fd) {}
  void add(const std::string& name, const std::string& value) {
    std::string line = name + " " + value;
    for (char& c : line) {
      if (c == '\n') c = ' ';
    }
    line += '\n';
    // Lines below PIPE_BUF reach the pipe whole even from several processes.
    if (line.size() > 4000) line = line.substr(0, 3999) + "\n";
    for (std::size_t done = 0; done < line.size();) {
      const ssize_t n = ::write(fd_, line.data() + done, line.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) ::_exit(97);
      done += static_cast<std::size_t>(n);
    }
  }
  void add(const std::string& name, std::uint64_t value) { add(name, std::to_string(value)); }

 private:
  int fd_;
};

struct ChildResult {
  int status = 0;  // waitpid status
  std::multimap<std::string, std::string> lines;
  double seconds = 0;

  bool exited_ok() const { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }
  std::string describe() const {
    std::ostringstream out;
    if (WIFEXITED(status)) {
      out << "exit " << WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
      out << "killed by signal " << WTERMSIG(status) << " (" << ::strsignal(WTERMSIG(status))
          << ")";
    }
    for (const auto& [k, v] : lines) out << "\n  " << k << " " << v;
    return out.str();
  }
  std::string first(const std::string& name) const {
    const auto it = lines.find(name);
    return it == lines.end() ? std::string() : it->second;
  }
  std::size_t count(const std::string& name) const { return lines.count(name); }
};

// Runs `body` in a fork()ed child with an alarm of `limit_s` seconds; the
// child (and any process it forks) reports through the Report. The exit
// status is body's return value; an exception is 98.
ChildResult run_child(const std::function<int(Report&)>& body, unsigned limit_s = 300) {
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  const Clock::time_point start = Clock::now();
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    ::alarm(limit_s);
    Report report(fds[1]);
    int code = 99;
    try {
      code = body(report);
    } catch (const std::exception& e) {
      report.add("exception", e.what());
      code = 98;
    }
    ::_exit(code);
  }
  ::close(fds[1]);
  const std::string text = read_to_end(fds[0]);
  ChildResult result;
  result.status = wait_status(pid);
  result.seconds = seconds_since(start);
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    const std::size_t space = line.find(' ');
    result.lines.emplace(line.substr(0, space),
                         space == std::string::npos ? std::string() : line.substr(space + 1));
  }
  return result;
}

// waitpid status of a grandchild, as a child reports it.
std::string status_text(int status) {
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "signal " + std::to_string(WTERMSIG(status));
  return "status " + std::to_string(status);
}

// In a child: forks `body` (with its own alarm) and waits for it.
int fork_and_wait(const std::function<int()>& body) {
  const pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    ::alarm(120);
    int code = 99;
    try {
      code = body();
    } catch (...) {
      code = 98;
    }
    ::_exit(code);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

std::uint64_t file_size(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
}

// Writes `value_size` values under k0, k1, ... until a set fails; reports
// every acknowledged index ("ack i"), the failure (code, errno, what) and
// what the region does afterwards, and leaves the count of acknowledged
// writes in `count_file`. Returns 0 when everything after the failure
// behaved: typed errors only, the creator's value returned, every
// acknowledged value read back intact.
int write_until_failure(const std::string& dir, std::size_t value_size, Report& report,
                        const std::string& durability, const std::string& count_file,
                        std::uint64_t max_writes = 100000) {
  dogpile::Region region = open_region(dir, "1GiB", durability);
  std::shared_ptr<LmdbEnv> env;
  if (!LmdbEnv::acquire(dir, {}, env).is_ok()) return 2;
  const std::uint64_t first_map = env->map_size();
  std::uint64_t acked = 0;
  std::optional<dogpile::Error> failure;
  bool store_error = false;
  for (std::uint64_t i = 0; i < max_writes; ++i) {
    try {
      region.set<std::string>("k" + std::to_string(i), value_of(i, value_size));
      report.add("ack", i);
      ++acked;
    } catch (const dogpile::Error& e) {
      failure.emplace(e);
      store_error = dynamic_cast<const dogpile::StoreError*>(&e) != nullptr;
      break;
    }
  }
  dogpile::test::log_line(count_file, std::to_string(acked));
  report.add("acked", acked);
  report.add("first_map", first_map);
  report.add("map_at_failure", env->map_size());
  report.add("file_at_failure", file_size(dir + "/data.mdb"));
  if (!failure) return 3;
  const int err = failure->sys_errno();
  report.add("code", std::string(dogpile::status_code_name(failure->code())));
  report.add("errno", std::to_string(err));
  report.add("errno_name", err == ENOSPC ? "ENOSPC" : err == EFBIG ? "EFBIG"
                           : err == ENOMEM ? "ENOMEM" : "other");
  report.add("what", failure->what());
  report.add("is_store_error", store_error ? 1 : 0);
  int problems = 0;
  // More writes fail the same typed way, and never take the process down.
  for (int j = 0; j < 5; ++j) {
    try {
      region.set<std::string>("more" + std::to_string(j), value_of(1000000 + j, value_size));
      report.add("later_write", "stored");
    } catch (const dogpile::Error& e) {
      report.add("later_write", std::string(dogpile::status_code_name(e.code())) + " errno " +
                                    std::to_string(e.sys_errno()));
    }
  }
  // get_or_create still hands back what its creator made.
  int calls = 0;
  const std::string made = region.get_or_create<std::string>("created", [&] {
    ++calls;
    return value_of(2000000, value_size);
  });
  if (made != value_of(2000000, value_size) || calls != 1) ++problems;
  report.add("get_or_create_ok", made == value_of(2000000, value_size) ? 1 : 0);
  // Invalidating writes to the stamps file's mapping.
  try {
    region.invalidate(false);
    report.add("invalidate", "ok");
  } catch (const dogpile::Error& e) {
    report.add("invalidate", e.what());
  }
  // Every acknowledged value reads back intact in this process.
  std::uint64_t bad = 0;
  for (std::uint64_t i = 0; i < acked; ++i) {
    const std::optional<std::string> v =
        region.get<std::string>("k" + std::to_string(i), {.ignore_expiration = true});
    bad += !v || *v != value_of(i, value_size);
  }
  report.add("bad_reads_in_child", bad);
  return problems + (bad != 0 ? 10 : 0);
}

// After the failing writer, in a process of its own: every acknowledged
// value intact, the write that failed absent, verify clean, writes work.
int check_after_reopen(const std::string& dir, const std::string& count_file,
                       std::size_t value_size, Report& report) {
  const std::vector<std::string> lines = dogpile::test::read_lines(count_file);
  if (lines.size() != 1) return 2;
  const std::uint64_t acked = std::stoull(lines[0]);
  std::uint64_t lost = 0;
  std::uint64_t wrong = 0;
  std::uint64_t unacked_visible = 0;
  dogpile::Region region = open_region(dir, "1GiB");
  for (std::uint64_t i = 0; i < acked + 5; ++i) {
    const std::optional<std::string> v =
        region.get<std::string>("k" + std::to_string(i), {.ignore_expiration = true});
    if (i >= acked) {
      unacked_visible += v.has_value();
      continue;
    }
    lost += !v;
    wrong += v && *v != value_of(i, value_size);
  }
  report.add("reopen_acked", acked);
  report.add("reopen_lost", lost);
  report.add("reopen_wrong", wrong);
  report.add("reopen_unacked_visible", unacked_visible);
  dogpile::Store store = dogpile::Store::open({.path = dir});
  const dogpile::VerifyReport verified = store.verify();
  report.add("reopen_verify_entries", verified.entries);
  report.add("reopen_verify_problems", verified.problems.size());
  for (const auto& p : verified.problems) report.add("reopen_problem", p.region + " " + p.what);
  region.set<std::string>("after", value_of(3000000, value_size));
  const bool after_ok =
      region.get<std::string>("after") == std::optional<std::string>(value_of(3000000, value_size));
  report.add("reopen_write_after", after_ok ? 1 : 0);
  return 0;
}

// Checks the report of write_until_failure for a failure of the file to
// grow, with one of `errnos`.
void check_write_failure(const ChildResult& r, const std::set<int>& errnos) {
  INFO(r.describe());
  CHECK(std::stoull(r.first("acked").empty() ? "0" : r.first("acked")) > 0);
  CHECK(r.first("code") == "io_error");
  CHECK(r.first("is_store_error") == "1");
  const int err = std::atoi(r.first("errno").c_str());
  CHECK(errnos.count(err) == 1);
  // The message names the cause, by errno name and by strerror.
  const std::string what = r.first("what");
  CHECK_THAT(what, Catch::Contains(r.first("errno_name")));
  CHECK_THAT(what, Catch::Contains(std::strerror(err)));
  CHECK(r.first("get_or_create_ok") == "1");
  CHECK(r.first("bad_reads_in_child") == "0");
  const auto later = r.lines.equal_range("later_write");
  for (auto it = later.first; it != later.second; ++it) {
    CHECK((it->second == "stored" || it->second.rfind("io_error", 0) == 0));
  }
}

std::set<std::uint64_t> acked_of(const ChildResult& r) {
  std::set<std::uint64_t> out;
  const auto range = r.lines.equal_range("ack");
  for (auto it = range.first; it != range.second; ++it) out.insert(std::stoull(it->second));
  return out;
}

void check_reopened(const ChildResult& r) {
  INFO(r.describe());
  CHECK(r.first("reopen_lost") == "0");
  CHECK(r.first("reopen_wrong") == "0");
  CHECK(r.first("reopen_unacked_visible") == "0");
  CHECK(r.first("reopen_verify_problems") == "0");
  CHECK(r.first("reopen_write_after") == "1");
}

}  // namespace

// ---- the map limit ----

TEST_CASE("at max_size a write fails with CacheFull only when eviction cannot help",
          "[resources][full]") {
  TempDir dir;
  const Clock::time_point start = Clock::now();
  constexpr std::uint64_t kMaxSize = 2 * kMiB;
  constexpr std::size_t kValue = 16 * kKiB;
  std::vector<std::string> log;
  std::uint64_t next = 0;  // next key index
  std::uint64_t set_failures = 0;
  std::uint64_t wrong = 0;

  // Reads every key written so far: each is its own value or gone.
  const auto check_reads = [&](dogpile::Region& region, std::set<std::uint64_t>* present) {
    std::uint64_t bad = 0;
    for (std::uint64_t i = 0; i < next; ++i) {
      const std::optional<std::string> v = region.get<std::string>(str_cat("k", i));
      if (!v) continue;
      if (*v != value_of(i, kValue)) ++bad;
      if (present != nullptr) present->insert(i);
    }
    return bad;
  };

  {
    dogpile::Region region = open_region(dir.path(), "2MiB", "nosync", &log);
    // Twice max_size through the cache: eviction makes room every time.
    while (next * kValue < 2 * kMaxSize) {
      try {
        region.set<std::string>("k" + std::to_string(next), value_of(next, kValue));
      } catch (const dogpile::Error& e) {
        ++set_failures;
        UNSCOPED_INFO("set " << next << ": " << e.what());
      }
      ++next;
    }
    CHECK(set_failures == 0);
    std::set<std::uint64_t> before;
    wrong += check_reads(region, &before);
    CHECK(wrong == 0);
    CHECK(!before.empty());
    CHECK(before.size() < next);  // some were evicted

    // A value above half of max_size can never fit: CacheFull, nothing evicted.
    const std::string huge = value_of(999999, kMaxSize / 2 + 1);
    try {
      region.set<std::string>("huge", huge);
      FAIL("a value above half of max_size was stored");
    } catch (const dogpile::CacheFull& e) {
      CHECK(e.code() == StatusCode::kFull);
      CHECK_THAT(std::string(e.what()), Catch::Contains("max_size"));
    }
    int calls = 0;
    CHECK(region.get_or_create<std::string>("huge2", [&] {
      ++calls;
      return huge;
    }) == huge);
    CHECK(calls == 1);
    std::set<std::uint64_t> after;
    wrong += check_reads(region, &after);
    CHECK(wrong == 0);
    CHECK(after == before);  // reads unaffected, nothing evicted
  }

  // A reader in another process holds one snapshot: LMDB cannot reuse what
  // eviction frees until it ends, so eviction cannot help.
  int to_reader[2];
  int from_reader[2];
  REQUIRE(::pipe2(to_reader, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(from_reader, O_CLOEXEC) == 0);
  const pid_t reader = ::fork();
  REQUIRE(reader >= 0);
  if (reader == 0) {
    ::close(to_reader[1]);
    ::close(from_reader[0]);
    ::alarm(300);
    std::shared_ptr<LmdbEnv> env;
    ReadTxn txn;
    char c = 'x';
    if (!LmdbEnv::acquire(dir.path(), {}, env).is_ok() || !env->begin_read(txn).is_ok()) c = 'e';
    if (::write(from_reader[1], &c, 1) != 1) ::_exit(3);
    while (::read(to_reader[0], &c, 1) < 0 && errno == EINTR) {
    }
    txn.end();
    ::_exit(0);
  }
  ::close(to_reader[0]);
  ::close(from_reader[1]);
  char ready = 0;
  REQUIRE(::read(from_reader[0], &ready, 1) == 1);
  REQUIRE(ready == 'x');

  std::uint64_t writes_while_pinned = 0;
  std::uint64_t full_while_pinned = 0;
  std::uint64_t stored_while_pinned = 0;
  std::uint64_t evicted_while_pinned = 0;
  std::string pinned_message;
  {
    dogpile::Region region = open_region(dir.path(), "2MiB", "nosync", &log);
    std::set<std::uint64_t> before;
    wrong += check_reads(region, &before);
    // Writes go on until the pages free before the reader came are used up,
    // then fail; 40 more writes after the first failure.
    while (full_while_pinned < 40 && writes_while_pinned < 1000) {
      ++writes_while_pinned;
      try {
        region.set<std::string>("k" + std::to_string(next), value_of(next, kValue));
        ++stored_while_pinned;
      } catch (const dogpile::CacheFull& e) {
        ++full_while_pinned;
        if (pinned_message.empty()) pinned_message = e.what();
      }
      ++next;
    }
    std::set<std::uint64_t> after;
    wrong += check_reads(region, &after);
    for (std::uint64_t i : before) evicted_while_pinned += after.count(i) == 0;
    CHECK(wrong == 0);
    CHECK(full_while_pinned == 40);
    CHECK_THAT(pinned_message,
               Catch::Contains("process " + std::to_string(reader)) && Catch::Contains("read"));
    // Eviction stopped once it was seen not to help: only the first write
    // that failed evicted, at most its rounds of a quarter of the map each
    // (how far it gets depends on the pages left at the map's end, which
    // every earlier write moves), plus what the stored writes needed.
    INFO("evicted " << evicted_while_pinned << ", stored " << stored_while_pinned);
    CHECK(evicted_while_pinned * kValue <=
          LmdbEnv::kEvictionRounds * (kMaxSize / 4) + stored_while_pinned * kValue + kValue);
    CHECK(!after.empty());
    int calls = 0;
    CHECK(region.get_or_create<std::string>("made-while-pinned", [&] {
      ++calls;
      return value_of(424242, kValue);
    }) == value_of(424242, kValue));
    CHECK(calls == 1);
  }

  // The reader ends: writes resume at once.
  ::close(to_reader[1]);
  int status = 0;
  REQUIRE(::waitpid(reader, &status, 0) == reader);
  CHECK(WIFEXITED(status));
  std::uint64_t failures_after = 0;
  {
    dogpile::Region region = open_region(dir.path(), "2MiB", "nosync", &log);
    for (int i = 0; i < 200; ++i, ++next) {
      try {
        region.set<std::string>(str_cat("k", next), value_of(next, kValue));
      } catch (const dogpile::Error& e) {
        ++failures_after;
        UNSCOPED_INFO(e.what());
      }
    }
    CHECK(failures_after == 0);
    wrong += check_reads(region, nullptr);
    CHECK(region.get<std::string>("k" + std::to_string(next - 1)) ==
          std::optional<std::string>(value_of(next - 1, kValue)));
  }
  // Cleared: every write fits again.
  {
    dogpile::Store store = dogpile::Store::open({.path = dir.path()});
    store.clear();
    CHECK(store.verify().ok());
    dogpile::Region region = open_region(dir.path(), "2MiB", "nosync", &log);
    CHECK_FALSE(region.get<std::string>("k0").has_value());
    region.set<std::string>("fresh", value_of(7, kMaxSize / 2 - 4096));
    CHECK(region.get<std::string>("fresh") ==
          std::optional<std::string>(value_of(7, kMaxSize / 2 - 4096)));
  }
  CHECK(wrong == 0);
  figure("resources/map-limit: %llu writes of %zu KiB through a %llu MiB store, %llu set "
         "failures, %llu wrong values",
         static_cast<unsigned long long>(next), kValue / kKiB,
         static_cast<unsigned long long>(kMaxSize / kMiB),
         static_cast<unsigned long long>(set_failures + failures_after),
         static_cast<unsigned long long>(wrong));
  figure("resources/pinned-reader: %llu writes while a reader pinned pages: %llu stored, %llu "
         "CacheFull, %llu entries evicted meanwhile; 0 failures after it ended",
         static_cast<unsigned long long>(writes_while_pinned),
         static_cast<unsigned long long>(stored_while_pinned),
         static_cast<unsigned long long>(full_while_pinned),
         static_cast<unsigned long long>(evicted_while_pinned));
  figure("resources/map-limit: %.2f s", seconds_since(start));
}

// ---- a full file system ----

TEST_CASE("a full file system fails writes with ENOSPC; earlier commits survive",
          "[resources][disk]") {
  TempDir dir;
  const std::string mount_point = dir / "mnt";
  REQUIRE(::mkdir(mount_point.c_str(), 0700) == 0);
  const std::string cache = mount_point + "/cache";
  const std::string count_file = dir / "acked";
  constexpr std::size_t kValue = 64 * kKiB;

  // The tmpfs lives in a mount namespace of the child's own, so it goes away
  // with the child whatever happens.
  const ChildResult r = run_child([&](Report& report) -> int {
    if (::unshare(CLONE_NEWNS) != 0) {
      report.add("skip", std::string("unshare(CLONE_NEWNS): ") + std::strerror(errno));
      return 0;
    }
    if (::mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
        ::mount("tmpfs", mount_point.c_str(), "tmpfs", 0, "size=4m,mode=0700") != 0) {
      report.add("skip", std::string("mount tmpfs: ") + std::strerror(errno));
      return 0;
    }
    // 1. A writer fills the file system; the map grows on the way.
    Clock::time_point t = Clock::now();
    report.add("writer_status", status_text(fork_and_wait([&] {
                 return write_until_failure(cache, kValue, report, "durable", count_file);
               })));
    report.add("writer_seconds", std::to_string(seconds_since(t)));
    // 2. A new cache on the full file system: refused at open, no signal.
    report.add("fresh_status", status_text(fork_and_wait([&] {
                 try {
                   dogpile::Region region =
                       open_region(mount_point + "/fresh", "1GiB", "durable");
                   region.set<std::string>("x", "y");
                   report.add("fresh", "opened and wrote");
                 } catch (const dogpile::Error& e) {
                   report.add("fresh", std::string(dogpile::status_code_name(e.code())) +
                                           " errno " + std::to_string(e.sys_errno()) + ": " +
                                           e.what());
                 }
                 return 0;
               })));
    // 3. More room: everything acknowledged is there, and writes work.
    if (::mount(nullptr, mount_point.c_str(), nullptr, MS_REMOUNT, "size=64m") != 0) {
      report.add("remount", std::strerror(errno));
      return 5;
    }
    report.add("reopen_status", status_text(fork_and_wait([&] {
                 return check_after_reopen(cache, count_file, kValue, report);
               })));
    // 4. New caches on a file system with 0 to 160 KiB free, page by page:
    // whichever file runs out of room, opening fails cleanly.
    for (std::uint64_t free_kib = 0; free_kib <= 160; free_kib += 4) {
      const std::string fresh = mount_point + "/sweep";
      struct statvfs fs {};
      if (::statvfs(mount_point.c_str(), &fs) != 0) return 6;
      const std::uint64_t used = (fs.f_blocks - fs.f_bfree) * fs.f_frsize;
      const std::string size = "size=" + std::to_string(used + free_kib * kKiB);
      if (::mount(nullptr, mount_point.c_str(), nullptr, MS_REMOUNT, size.c_str()) != 0) return 7;
      const int status = fork_and_wait([&] {
        try {
          dogpile::Region region = open_region(fresh, "1GiB", "durable");
          region.set<std::string>("x", value_of(1, 8 * kKiB));
          region.invalidate(true);
          return 0;
        } catch (const dogpile::Error& e) {
          return e.code() == StatusCode::kIOError && e.sys_errno() == ENOSPC ? 1 : 2;
        }
      });
      report.add("sweep", std::to_string(free_kib) + " " + status_text(status));
      std::error_code ec;
      std::filesystem::remove_all(fresh, ec);
    }
    return 0;
  });
  if (!r.first("skip").empty()) {
    WARN("SKIP the tmpfs variant: " << r.first("skip")
                                    << " (the RLIMIT_FSIZE variant still runs)");
    return;
  }
  INFO(r.describe());
  REQUIRE(r.exited_ok());
  CHECK(r.first("writer_status") == "exit 0");
  check_write_failure(r, {ENOSPC});
  // The map grew from its first size while the file system filled.
  CHECK(std::stoull(r.first("map_at_failure")) > std::stoull(r.first("first_map")));
  // A cache created on the full file system is refused with ENOSPC.
  CHECK(r.first("fresh_status") == "exit 0");
  CHECK_THAT(r.first("fresh"), Catch::StartsWith("io_error errno " + std::to_string(ENOSPC)));
  CHECK(r.first("reopen_status") == "exit 0");
  check_reopened(r);
  // Opening on a nearly full file system: "exit 0" opened and wrote, "exit
  // 1" a typed ENOSPC; never a signal or another error.
  int opened = 0;
  int refused = 0;
  const auto sweep = r.lines.equal_range("sweep");
  for (auto it = sweep.first; it != sweep.second; ++it) {
    INFO("free KiB and status: " << it->second);
    const bool ok = it->second.ends_with(" exit 0");
    const bool enospc = it->second.ends_with(" exit 1");
    CHECK((ok || enospc));
    opened += ok;
    refused += enospc;
  }
  CHECK(opened + refused == 41);
  CHECK(opened > 0);
  CHECK(refused > 0);
  figure("resources/tmpfs: %zu writes of %zu KiB acknowledged on a 4 MiB tmpfs, then ENOSPC "
         "(map %s -> %s bytes); 0 lost, 0 wrong, verify clean after remount; new caches with "
         "0-160 KiB free: %d opened, %d refused with ENOSPC, 0 signals; %.2f s",
         acked_of(r).size(), kValue / kKiB, r.first("first_map").c_str(),
         r.first("map_at_failure").c_str(), opened, refused, r.seconds);
}

TEST_CASE("RLIMIT_FSIZE fails writes with EFBIG, not SIGXFSZ; earlier commits survive",
          "[resources][disk]") {
  TempDir dir;
  const std::string cache = dir / "cache";
  const std::string count_file = dir / "acked";
  constexpr std::size_t kValue = 64 * kKiB;
  constexpr rlim_t kLimit = 4 * kMiB;
  // Some entries from before, in a process without the limit.
  {
    dogpile::Region region = open_region(cache, "1GiB", "durable");
    for (int i = 0; i < 10; ++i) region.set<std::string>("early" + std::to_string(i), "e");
  }
  const ChildResult r = run_child([&](Report& report) -> int {
    ::signal(SIGXFSZ, SIG_IGN);
    const struct rlimit limit {kLimit, kLimit};
    if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) return 4;
    return write_until_failure(cache, kValue, report, "durable", count_file);
  });
  {
    INFO(r.describe());
    CHECK_FALSE(WIFSIGNALED(r.status));
    CHECK(r.exited_ok());
    check_write_failure(r, {EFBIG});
    CHECK(std::stoull(r.first("file_at_failure")) <= kLimit);
  }
  // Reopened without the limit.
  const ChildResult v =
      run_child([&](Report& report) { return check_after_reopen(cache, count_file, kValue, report); });
  CHECK(v.exited_ok());
  check_reopened(v);
  dogpile::Region region = open_region(cache, "1GiB");
  for (int i = 0; i < 10; ++i) {
    // The writer soft-invalidated the region: stale, still there.
    CHECK(region.get<std::string>("early" + std::to_string(i), {.ignore_expiration = true}) ==
          std::optional<std::string>("e"));
  }
  figure("resources/rlimit-fsize: %zu writes of %zu KiB acknowledged under a %llu MiB "
         "RLIMIT_FSIZE, then EFBIG; 0 lost, 0 wrong, verify clean after reopening; %.2f s",
         acked_of(r).size(), kValue / kKiB, static_cast<unsigned long long>(kLimit / kMiB),
         r.seconds + v.seconds);
}

TEST_CASE("a map that cannot grow (no address space) fails writes, never the process",
          "[resources][disk]") {
  if (dogpile::test::kSanitized) {
    WARN("SKIP: sanitizer runtimes reserve terabytes of address space, so RLIMIT_AS cannot "
         "bound the map there");
    return;
  }
  TempDir dir;
  const std::string cache = dir / "cache";
  const std::string count_file = dir / "acked";
  constexpr std::size_t kValue = 64 * kKiB;
  const ChildResult r = run_child([&](Report& report) -> int {
    {
      // Open once first, so that the limit is set over a working process.
      dogpile::Region region = open_region(cache, "1GiB");
      region.set<std::string>("warm", "w");
    }
    const long vm_kib = dogpile::test::proc_status_kib("VmSize");
    if (vm_kib <= 0) return 4;
    const rlim_t room = 48 * kMiB;
    const struct rlimit limit {static_cast<rlim_t>(vm_kib) * 1024 + room,
                               static_cast<rlim_t>(vm_kib) * 1024 + room};
    if (::setrlimit(RLIMIT_AS, &limit) != 0) return 5;
    return write_until_failure(cache, kValue, report, "nosync", count_file, 4000);
  });
  {
    INFO(r.describe());
    CHECK_FALSE(WIFSIGNALED(r.status));
    CHECK(r.exited_ok());
    check_write_failure(r, {ENOMEM});
    CHECK_THAT(r.first("what"), Catch::Contains("cannot grow the map"));
  }
  const ChildResult v =
      run_child([&](Report& report) { return check_after_reopen(cache, count_file, kValue, report); });
  CHECK(v.exited_ok());
  check_reopened(v);
  figure("resources/rlimit-as: %zu writes of %zu KiB, then the map could not grow past %s "
         "bytes: typed ENOMEM, 0 lost, verify clean; %.2f s",
         acked_of(r).size(), kValue / kKiB, r.first("map_at_failure").c_str(),
         r.seconds + v.seconds);
}

// ---- another process grows the map ----

namespace {

struct GrowCounts {
  std::uint64_t reads = 0;
  std::uint64_t big_hits = 0;
  std::uint64_t errors = 0;
  std::uint64_t wrong = 0;
  std::uint64_t vanished = 0;  // a big key seen, then missed
  std::set<std::uint64_t> maps_seen;
  std::string first_error;
};

// One round: a fresh cache at 1 MiB, a writer process growing it to
// `target`, two threads here reading until it is done (and one round more).
void grow_round(std::uint64_t round, std::uint64_t target, GrowCounts& total, int& written) {
  TempDir dir;
  constexpr int kInitial = 200;
  constexpr std::size_t kSmall = 1000;
  constexpr std::size_t kBig = 16 * kKiB;
  const std::uint64_t base = 1000000 * (round + 1);
  const std::string done_file = dir / "writer-done";
  std::unique_ptr<dogpile::Backend> backend = dogpile::open_lmdb_backend(
      {.path = dir.path(), .region = "grow", .durability = dogpile::Durability::kNoSync});
  for (int i = 0; i < kInitial; ++i) {
    REQUIRE(backend->set("init" + std::to_string(i), value_of(base + i, kSmall)).is_ok());
  }
  std::shared_ptr<LmdbEnv> env;
  REQUIRE(LmdbEnv::acquire(dir.path(), {}, env).is_ok());
  REQUIRE(env->map_size() == LmdbEnv::kDefaultMapSize);

  // The writer is forked before any thread starts.
  dogpile::test::StartGate gate;
  const std::vector<pid_t> writer = dogpile::test::spawn(1, gate, [&](int) -> int {
    std::unique_ptr<dogpile::Backend> b = dogpile::open_lmdb_backend(
        {.path = dir.path(), .region = "grow", .durability = dogpile::Durability::kNoSync});
    std::shared_ptr<LmdbEnv> own;
    if (!LmdbEnv::acquire(dir.path(), {}, own).is_ok()) return 2;
    int i = 0;
    for (; own->map_size() < target; ++i) {
      if (!b->set("big" + std::to_string(i), value_of(base + 500000 + i, kBig)).is_ok()) return 3;
    }
    dogpile::test::log_line(done_file, std::to_string(i));
    return 0;
  });

  std::atomic<bool> writer_done{false};
  const auto reader = [&](std::uint64_t seed, GrowCounts& counts) {
    std::mt19937_64 rng(seed);
    std::vector<bool> seen(1 << 16, false);
    for (bool last = false; !last;) {
      last = writer_done.load();
      for (int n = 0; n < 64; ++n) {
        const int i = static_cast<int>(rng() % kInitial);
        std::optional<std::string> v;
        Status s = backend->get("init" + std::to_string(i), v);
        ++counts.reads;
        if (!s) {
          if (counts.errors++ == 0) counts.first_error = s.to_string();
        } else if (v != value_of(base + i, kSmall)) {
          ++counts.wrong;
        }
        const std::size_t j = rng() % seen.size() % 4096;
        s = backend->get("big" + std::to_string(j), v);
        ++counts.reads;
        if (!s) {
          if (counts.errors++ == 0) counts.first_error = s.to_string();
        } else if (v) {
          ++counts.big_hits;
          if (*v != value_of(base + 500000 + j, kBig)) ++counts.wrong;
          seen[j] = true;
        } else if (seen[j]) {
          ++counts.vanished;
        }
        counts.maps_seen.insert(env->map_size());
      }
    }
  };
  GrowCounts a;
  GrowCounts b;
  std::thread t1(reader, kSeed + 2 * round + 1, std::ref(a));
  std::thread t2(reader, kSeed + 2 * round + 2, std::ref(b));
  gate.open_gate();
  const Clock::time_point deadline = Clock::now() + std::chrono::seconds(600);
  while (dogpile::test::read_lines(done_file).empty() && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  writer_done.store(true);
  t1.join();
  t2.join();
  INFO("round " << round << " first errors: " << a.first_error << " " << b.first_error);
  CHECK(dogpile::test::reap(writer) == 0);
  const std::vector<std::string> done = dogpile::test::read_lines(done_file);
  REQUIRE(done.size() == 1);
  written += std::stoi(done[0]);
  CHECK(a.reads > 0);
  CHECK(b.reads > 0);
  // This process adopted the grown map and reads every big value whole.
  for (int j = 0; j < std::stoi(done[0]); ++j) {
    std::optional<std::string> v;
    REQUIRE(backend->get("big" + std::to_string(j), v).is_ok());
    total.wrong += v != value_of(base + 500000 + j, kBig);
  }
  CHECK(env->map_size() >= target / 2);
  for (const GrowCounts* c : {&a, &b}) {
    total.reads += c->reads;
    total.big_hits += c->big_hits;
    total.errors += c->errors;
    total.wrong += c->wrong;
    total.vanished += c->vanished;
    total.maps_seen.insert(c->maps_seen.begin(), c->maps_seen.end());
    if (total.first_error.empty()) total.first_error = c->first_error;
  }
}

}  // namespace

TEST_CASE("two threads read while another process grows the map to tens of MiB",
          "[resources][grow]") {
  const std::uint64_t target = 64 * kMiB;
  const std::uint64_t rounds = scaled<std::uint64_t>(4, 40);
  const Clock::time_point start = Clock::now();
  GrowCounts total;
  int written = 0;
  for (std::uint64_t round = 0; round < rounds; ++round) grow_round(round, target, total, written);
  INFO("first error: " << total.first_error);
  CHECK(total.errors == 0);
  CHECK(total.wrong == 0);
  CHECK(total.vanished == 0);
  // The readers saw the map at several sizes: they remapped while reading.
  CHECK(total.maps_seen.size() > 2);
  figure("resources/grow: %llu rounds of another process growing the map 1 -> %llu MiB "
         "(%d writes of 16 KiB) while 2 threads read: %llu reads, %llu big hits, %zu map "
         "sizes seen; %llu errors, %llu wrong, %llu vanished; %.2f s",
         static_cast<unsigned long long>(rounds), static_cast<unsigned long long>(target / kMiB),
         written, static_cast<unsigned long long>(total.reads),
         static_cast<unsigned long long>(total.big_hits), total.maps_seen.size(),
         static_cast<unsigned long long>(total.errors),
         static_cast<unsigned long long>(total.wrong),
         static_cast<unsigned long long>(total.vanished), seconds_since(start));
}
