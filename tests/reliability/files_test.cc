// Files and permissions, as an unprivileged user: unwritable directories,
// read-only copies of a cache, hostile files planted where cache files
// belong, world-writable cache directories, and the modes of what a cache
// creates under umask 000.
//
// Root ignores file modes, so when the test runs as root every case runs in
// a fork()ed child that drops to uid/gid 65534 (nobody) in a work directory
// that user owns; otherwise the child keeps the test's user. Each child has
// an alarm (a hang is a failure), reports its checks over a pipe, and the
// Catch2 assertions run here.
#include <fcntl.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "dogpile/dogpile.h"
#include "dogpile/lmdb_backend.h"
#include "dogpile/store.h"

#include "process_util.h"
#include "reliability_util.h"
#include "test_util.h"

namespace {

using dogpile::StatusCode;
using dogpile::test::figure;
using dogpile::test::read_to_end;
using dogpile::test::str_cat;
using dogpile::test::TempDir;
using dogpile::test::wait_status;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

constexpr uid_t kNobody = 65534;
constexpr gid_t kNogroup = 65534;

// What one case found: "pass <what>" / "fail <what>" lines, and figures.
class Probe {
 public:
  explicit Probe(int fd) : fd_(fd) {}

  void check(bool ok, const std::string& what) {
    failures_ += !ok;
    send((ok ? "pass " : "fail ") + what);
  }
  void note(const std::string& name, const std::string& value) { send("note " + name + " " + value); }
  int failures() const { return failures_; }

 private:
  void send(std::string line) {
    for (char& c : line) {
      if (c == '\n') c = ' ';
    }
    if (line.size() > 3000) line.resize(3000);
    line += '\n';
    for (std::size_t done = 0; done < line.size();) {
      const ssize_t n = ::write(fd_, line.data() + done, line.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) ::_exit(97);
      done += static_cast<std::size_t>(n);
    }
  }

  int fd_;
  int failures_ = 0;
};

struct CaseResult {
  int status = 0;
  std::vector<std::string> lines;
  double seconds = 0;
  std::map<std::string, std::string> notes;
};

bool running_as_root() { return ::geteuid() == 0; }

// The directory the cases may use: owned by the user they run as.
class WorkDir {
 public:
  WorkDir() : path_(temp_ / "work") {
    REQUIRE(::mkdir(path_.c_str(), 0700) == 0);
    if (running_as_root()) {
      // nobody must pass through the temporary directory to its own.
      REQUIRE(::chmod(temp_.path().c_str(), 0711) == 0);
      REQUIRE(::chown(path_.c_str(), kNobody, kNogroup) == 0);
    }
  }
  ~WorkDir() {
    // Cases leave 0500 directories behind; only root could remove their
    // contents as they are.
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(path_, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_directory(ec) && !it->is_symlink(ec)) ::chmod(it->path().c_str(), 0700);
    }
    ::chmod(path_.c_str(), 0700);
  }
  WorkDir(const WorkDir&) = delete;
  WorkDir& operator=(const WorkDir&) = delete;

  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  TempDir temp_;
  std::string path_;
};

// Runs `body` in a child as the unprivileged user, with an alarm of
// `limit_s` seconds. Returns what it reported.
CaseResult run_case(const std::function<void(Probe&)>& body, unsigned limit_s = 5) {
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  const Clock::time_point start = Clock::now();
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    Probe probe(fds[1]);
    if (running_as_root()) {
      if (::setgroups(0, nullptr) != 0 || ::setgid(kNogroup) != 0 || ::setuid(kNobody) != 0) {
        probe.check(false, std::string("dropping to uid 65534: ") + std::strerror(errno));
        ::_exit(90);
      }
      // Root could not get back: the case really runs unprivileged.
      probe.check(::setuid(0) != 0 && ::geteuid() == kNobody, "running as uid 65534");
    }
    ::alarm(limit_s);
    try {
      body(probe);
    } catch (const std::exception& e) {
      probe.check(false, std::string("unexpected exception: ") + e.what());
    }
    ::_exit(probe.failures() == 0 ? 0 : 1);
  }
  ::close(fds[1]);
  const std::string text = read_to_end(fds[0]);
  CaseResult result;
  result.status = wait_status(pid);
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("note ", 0) == 0) {
      const std::string rest = line.substr(5);
      const std::size_t space = rest.find(' ');
      result.notes[rest.substr(0, space)] = space == std::string::npos ? "" : rest.substr(space + 1);
    } else {
      result.lines.push_back(line);
    }
  }
  return result;
}

// The Catch2 side of a case: every check passed, the child exited 0 (not
// killed by its alarm or a signal).
void expect_passed(const std::string& name, const CaseResult& r) {
  INFO("case: " << name << " (" << r.seconds << " s)");
  for (const std::string& line : r.lines) {
    INFO(line);
    CHECK(line.rfind("pass ", 0) == 0);
  }
  CHECK_FALSE(r.lines.empty());
  if (WIFSIGNALED(r.status)) {
    FAIL("killed by signal " << WTERMSIG(r.status) << " ("
                             << ::strsignal(WTERMSIG(r.status)) << ")");
  }
  CHECK(WIFEXITED(r.status));
  CHECK(WEXITSTATUS(r.status) == 0);
}

dogpile::Region open_region(const std::string& dir, const std::string& name = "files",
                            bool read_only = false) {
  dogpile::ConfigMap arguments{{"path", dir}, {"durability", "nosync"}};
  if (read_only) arguments["read_only"] = "true";
  return dogpile::Region({.name = name,
                          .logger = [](dogpile::LogLevel, std::string_view) {},
                          .stats_interval = std::chrono::hours(1)},
                         "lmdb", arguments);
}

// Names (with a type letter) in a directory, sorted.
std::set<std::string> listing(const std::string& dir) {
  std::set<std::string> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const fs::file_status st = entry.symlink_status(ec);
    const char type = fs::is_symlink(st)     ? 'l'
                      : fs::is_directory(st) ? 'd'
                      : fs::is_fifo(st)      ? 'p'
                      : fs::is_regular_file(st) ? 'f'
                                                : '?';
    out.insert(entry.path().filename().string() + ":" + type);
  }
  return out;
}

std::string describe(const std::set<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : " ") + n;
  return out.empty() ? "(empty)" : out;
}

// Content, size and modification time of a file.
struct Fingerprint {
  std::string content;
  struct timespec mtime {};
  off_t size = -1;
  nlink_t links = 0;
  bool operator==(const Fingerprint& o) const {
    return content == o.content && mtime.tv_sec == o.mtime.tv_sec &&
           mtime.tv_nsec == o.mtime.tv_nsec && size == o.size;
  }
};

Fingerprint fingerprint(const std::string& path) {
  Fingerprint f;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return f;
  f.mtime = st.st_mtim;
  f.size = st.st_size;
  f.links = st.st_nlink;
  std::ifstream in(path, std::ios::binary);
  f.content.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return f;
}

mode_t mode_of(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 ? (st.st_mode & 07777) : 0;
}

std::string octal(mode_t mode) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode));
  return buf;
}

// Runs `open` and checks that it throws a StoreError naming `path`, with
// errno `err` when not 0 and `words` in the message.
void expect_refused(Probe& probe, const std::string& what, const std::function<void()>& open,
                    const std::string& path, int err, const std::string& words = "") {
  try {
    open();
    probe.check(false, what + ": opened");
  } catch (const dogpile::StoreError& e) {
    const std::string message = e.what();
    probe.check(true, what + ": StoreError: " + message);
    probe.check(message.find(path) != std::string::npos && e.path() == path,
                what + ": the error names " + path);
    if (err != 0) {
      probe.check(e.sys_errno() == err && message.find(std::strerror(err)) != std::string::npos,
                  what + ": errno " + std::to_string(e.sys_errno()) + ", expected " +
                      std::to_string(err) + " (" + std::strerror(err) + ")");
    }
    if (!words.empty()) {
      probe.check(message.find(words) != std::string::npos, what + ": the message says '" +
                                                                 words + "'");
    }
  } catch (const dogpile::Error& e) {
    probe.check(false, what + ": not a StoreError (code " +
                           std::string(dogpile::status_code_name(e.code())) + "): " + e.what());
  }
}

// A cache with `n` entries in region "files" (and every cache file).
void populate(const std::string& dir, int n) {
  dogpile::Region region = open_region(dir);
  for (int i = 0; i < n; ++i) {
    region.set<std::string>(str_cat("k", i), str_cat("value ", i));
  }
  region.get_or_create<std::string>("locked", [] { return std::string("x"); });
}

const char* const kCacheFiles[] = {"data.mdb", "lock.mdb", "creation.lock", "region-stamps"};

}  // namespace

TEST_CASE("an unwritable cache directory fails at open, naming path and errno, creating nothing",
          "[files]") {
  WorkDir work;
  const CaseResult r = run_case([&](Probe& probe) {
    // The cache directory exists but cannot be written.
    const std::string ro = work / "ro";
    probe.check(::mkdir(ro.c_str(), 0500) == 0, "mkdir 0500");
    expect_refused(probe, "0500 cache directory", [&] { open_region(ro); }, ro, EACCES);
    probe.check(listing(ro).empty(), "0500 directory still empty: " + describe(listing(ro)));
    expect_refused(
        probe, "0500 cache directory, Store",
        [&] { dogpile::Store::open({.path = ro, .must_exist = false}); }, ro, EACCES);
    probe.check(listing(ro).empty(), "0500 directory still empty after Store::open");

    // The cache directory must be created under an unwritable parent.
    const std::string parent = work / "locked";
    probe.check(::mkdir(parent.c_str(), 0500) == 0, "mkdir parent 0500");
    expect_refused(probe, "cache under a 0500 parent", [&] { open_region(parent + "/cache"); },
                   parent + "/cache", EACCES);
    expect_refused(probe, "cache two levels under a 0500 parent",
                   [&] { open_region(parent + "/a/b/cache"); }, parent + "/a", EACCES);
    probe.check(listing(parent).empty(), "0500 parent still empty: " + describe(listing(parent)));
  });
  expect_passed("unwritable directory", r);
  figure("files/unwritable: 4 refusals with EACCES, 0 files created; %.3f s", r.seconds);
}

TEST_CASE("a read-only copy of a cache serves reads and refuses writes with ReadOnlyError",
          "[files]") {
  WorkDir work;
  constexpr int kEntries = 100;
  const CaseResult r = run_case([&](Probe& probe) {
    const std::string src = work / "src";
    const std::string copy = work / "copy";
    populate(src, kEntries);
    // A copy: directory 0500, files 0400.
    probe.check(::mkdir(copy.c_str(), 0700) == 0, "mkdir copy");
    for (const char* name : kCacheFiles) {
      std::error_code ec;
      fs::copy_file(src + "/" + name, copy + "/" + name, ec);
      probe.check(!ec, std::string("copy ") + name);
      ::chmod((copy + "/" + name).c_str(), 0400);
    }
    ::chmod(copy.c_str(), 0500);
    const std::set<std::string> before = listing(copy);
    const Fingerprint data_before = fingerprint(copy + "/data.mdb");
    // The one notice goes to stderr: keep it.
    const std::string err_path = work / "stderr.txt";
    const int err_fd = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    probe.check(err_fd >= 0 && ::dup2(err_fd, 2) == 2, "stderr to a file");

    {
      dogpile::Region region = open_region(copy);
      int good = 0;
      for (int i = 0; i < kEntries; ++i) {
        good += region.get<std::string>(str_cat("k", i), {.ignore_expiration = true}) ==
                std::optional<std::string>("value " + std::to_string(i));
      }
      probe.check(good == kEntries, "reads: " + std::to_string(good) + " of " +
                                        std::to_string(kEntries) + " values intact");
      probe.note("reads", std::to_string(good));
      const auto refused = [&](const std::string& what, const std::function<void()>& write) {
        try {
          write();
          probe.check(false, what + ": not refused");
        } catch (const dogpile::ReadOnlyError& e) {
          const std::string m = e.what();
          probe.check(e.code() == StatusCode::kReadOnly && e.path() == copy &&
                          e.sys_errno() == EACCES && m.find("read-only") != std::string::npos,
                      what + ": ReadOnlyError: " + m);
        } catch (const dogpile::Error& e) {
          probe.check(false, what + ": another error: " + e.what());
        }
      };
      refused("set", [&] { region.set<std::string>("k0", "new"); });
      refused("erase", [&] { region.erase("k1"); });
      refused("invalidate", [&] { region.invalidate(true); });
      // get_or_create: cached values come from the copy; a missing one is
      // the creator's, every time (it cannot be stored).
      int calls = 0;
      const auto creator = [&] {
        ++calls;
        return std::string("made");
      };
      probe.check(region.get_or_create<std::string>("k5", creator) == "value 5" && calls == 0,
                  "get_or_create on a stored key returns it");
      const std::string a = region.get_or_create<std::string>("missing", creator);
      const std::string b = region.get_or_create<std::string>("missing", creator);
      probe.check(a == "made" && b == "made" && calls == 2,
                  "get_or_create on a missing key returns the creator's value each time (" +
                      std::to_string(calls) + " calls)");
      probe.check(region.get<std::string>("k0", {.ignore_expiration = true}) ==
                      std::optional<std::string>("value 0"),
                  "k0 unchanged after the refused set");
      // A region the copy does not hold: misses, writes refused.
      dogpile::Region other = open_region(copy, "never-written");
      probe.check(!other.get<std::string>("k0").has_value(), "an absent region misses");
      refused("set in an absent region", [&] { other.set<std::string>("x", "y"); });
      // The Store reads it too.
      dogpile::Store store = dogpile::Store::open({.path = copy});
      const dogpile::VerifyReport verified = store.verify();
      probe.check(verified.ok() && verified.entries == kEntries + 1,
                  "Store::verify on the copy: " + std::to_string(verified.entries) +
                      " entries, " + std::to_string(verified.problems.size()) + " problems");
      refused("Store::erase", [&] { store.erase("files", "k2"); });
      refused("Store::clear", [&] { store.clear(); });
    }
    probe.check(listing(copy) == before, "nothing created in the copy: " + describe(listing(copy)));
    probe.check(fingerprint(copy + "/data.mdb") == data_before, "data.mdb unchanged");
    std::ifstream err_in(err_path);
    std::string log((std::istreambuf_iterator<char>(err_in)), std::istreambuf_iterator<char>());
    std::size_t notices = 0;
    for (std::size_t at = log.find("read-only:"); at != std::string::npos;
         at = log.find("read-only:", at + 1)) {
      ++notices;
    }
    probe.check(notices == 1, "read-only noticed once on stderr (" + std::to_string(notices) +
                                  "): " + log);

    // The read_only option on a cache this user may write: the same, and
    // nothing is written (the source is closed by now).
    const std::set<std::string> src_before = listing(src);
    const Fingerprint src_data = fingerprint(src + "/data.mdb");
    {
      dogpile::Region region = open_region(src, "files", true);
      probe.check(region.get<std::string>("k3", {.ignore_expiration = true}) ==
                      std::optional<std::string>("value 3"),
                  "read_only option: reads");
      try {
        region.set<std::string>("k3", "new");
        probe.check(false, "read_only option: set not refused");
      } catch (const dogpile::ReadOnlyError& e) {
        probe.check(e.sys_errno() == EROFS &&
                        std::string(e.what()).find("read_only") != std::string::npos,
                    std::string("read_only option: set refused: ") + e.what());
      }
    }
    probe.check(listing(src) == src_before && fingerprint(src + "/data.mdb") == src_data,
                "read_only option: nothing written");
    // read_only on a directory with no cache creates nothing.
    const std::string empty = work / "empty";
    ::mkdir(empty.c_str(), 0700);
    expect_refused(probe, "read_only with no cache", [&] { open_region(empty, "files", true); },
                   empty, ENOENT);
    probe.check(listing(empty).empty(), "read_only with no cache: nothing created");
  });
  expect_passed("read-only copy", r);
  figure("files/read-only-copy: %s of %d values read from a 0500/0400 copy; set, erase, "
         "invalidate, Store::erase and Store::clear refused with ReadOnlyError; 0 files "
         "created or changed; %.3f s",
         r.notes.count("reads") ? r.notes.at("reads").c_str() : "?", kEntries, r.seconds);
}

TEST_CASE("hostile files where cache files belong are refused without touching the victim",
          "[files]") {
  WorkDir work;
  const char* const kinds[] = {"symlink", "fifo", "hardlink", "directory"};
  double slowest = 0;
  int cases = 0;
  for (const char* file : kCacheFiles) {
    for (const char* kind : kinds) {
      const std::string name = std::string(file) + " as a " + kind;
      const CaseResult r = run_case([&](Probe& probe) {
        const std::string dir = work / (std::string("cache-") + file + "-" + kind);
        const std::string victim = work / (std::string("victim-") + file + "-" + kind);
        populate(dir, 3);
        {
          std::ofstream out(victim, std::ios::binary);
          out << "the victim's own bytes, which no cache may touch";
        }
        // An old modification time, so that any write shows.
        const struct timespec times[2] = {{1000000000, 0}, {1000000000, 0}};
        ::utimensat(AT_FDCWD, victim.c_str(), times, AT_SYMLINK_NOFOLLOW);
        const std::string path = dir + "/" + file;
        probe.check(::unlink(path.c_str()) == 0, "remove " + path);
        const std::string k = kind;
        bool planted = false;
        if (k == "symlink") planted = ::symlink(victim.c_str(), path.c_str()) == 0;
        if (k == "fifo") planted = ::mkfifo(path.c_str(), 0600) == 0;
        if (k == "hardlink") planted = ::link(victim.c_str(), path.c_str()) == 0;
        if (k == "directory") planted = ::mkdir(path.c_str(), 0700) == 0;
        probe.check(planted, "plant " + name);
        const Fingerprint before = fingerprint(victim);
        const std::set<std::string> listed = listing(dir);
        const Clock::time_point start = Clock::now();
        expect_refused(probe, name, [&] {
          dogpile::Region region = open_region(dir);
          region.set<std::string>("k0", "overwritten");
        }, path, 0);
        const double took = std::chrono::duration<double>(Clock::now() - start).count();
        probe.note("seconds", std::to_string(took));
        probe.check(fingerprint(victim) == before, "the victim is untouched");
        probe.check(listing(dir) == listed, "nothing else created: " + describe(listing(dir)));
        if (k == "directory") probe.check(listing(path).empty(), "the planted directory is empty");
      });
      expect_passed(name, r);
      if (r.notes.count("seconds")) slowest = std::max(slowest, std::stod(r.notes.at("seconds")));
      ++cases;
    }
  }
  // The cache directory itself as a symlink to a victim directory.
  const CaseResult r = run_case([&](Probe& probe) {
    const std::string victim = work / "victim-dir";
    const std::string link = work / "cache-link";
    probe.check(::mkdir(victim.c_str(), 0700) == 0 && ::symlink(victim.c_str(), link.c_str()) == 0,
                "plant a symlinked cache directory");
    expect_refused(probe, "cache directory as a symlink", [&] { open_region(link); }, link, 0,
                   "symlink");
    probe.check(listing(victim).empty(), "the victim directory is still empty");
  });
  expect_passed("cache directory as a symlink", r);
  ++cases;
  figure("files/hostile: %d planted files refused (symlink, FIFO, hard link, directory at each "
         "of data.mdb, lock.mdb, creation.lock, region-stamps, and a symlinked cache "
         "directory), 0 victims touched, 0 hangs; slowest refusal %.4f s",
         cases, slowest);
}

TEST_CASE("a cache directory others may write is refused", "[files]") {
  WorkDir work;
  const CaseResult r = run_case([&](Probe& probe) {
    for (const mode_t mode : {mode_t{0777}, mode_t{01777}, mode_t{0770}, mode_t{0720}}) {
      const std::string dir = work / ("open-" + octal(mode));
      probe.check(::mkdir(dir.c_str(), 0700) == 0 && ::chmod(dir.c_str(), mode) == 0,
                  "mkdir " + octal(mode));
      expect_refused(probe, "a " + octal(mode) + " cache directory", [&] { open_region(dir); },
                     dir, 0, octal(mode));
      expect_refused(
          probe, "a " + octal(mode) + " cache directory, Store",
          [&] { dogpile::Store::open({.path = dir, .must_exist = false}); }, dir, 0, octal(mode));
      probe.check(listing(dir).empty(), octal(mode) + ": nothing created: " + describe(listing(dir)));
    }
    // An existing cache whose directory became world-writable.
    const std::string cache = work / "became-open";
    populate(cache, 3);
    const Fingerprint data = fingerprint(cache + "/data.mdb");
    ::chmod(cache.c_str(), 0777);
    expect_refused(probe, "an existing cache in a 0777 directory", [&] { open_region(cache); },
                   cache, 0, "0777");
    expect_refused(probe, "an existing cache in a 0777 directory, Store",
                   [&] { dogpile::Store::open({.path = cache}); }, cache, 0, "0777");
    probe.check(fingerprint(cache + "/data.mdb") == data, "its data.mdb is untouched");
    // Read and execute bits for others are fine: only write bits matter.
    for (const mode_t mode : {mode_t{0755}, mode_t{0750}, mode_t{0711}}) {
      ::chmod(cache.c_str(), mode);
      try {
        dogpile::Region region = open_region(cache);
        region.set<std::string>("k9", "nine");
        probe.check(region.get<std::string>("k9") == std::optional<std::string>("nine"),
                    "a " + octal(mode) + " cache directory is used");
      } catch (const dogpile::Error& e) {
        probe.check(false, "a " + octal(mode) + " cache directory: " + e.what());
      }
    }
  });
  expect_passed("world-writable directory", r);
  figure("files/world-writable: 0777, 1777, 0770, 0720 refused (new and existing caches, "
         "Region and Store), 0 files created; 0755, 0750, 0711 accepted; %.3f s",
         r.seconds);
}

TEST_CASE("under umask 000 files are 0600 and directories 0700", "[files]") {
  WorkDir work;
  const CaseResult r = run_case([&](Probe& probe) {
    ::umask(0);
    const std::string top = work / "u";
    const std::string cache = top + "/a/b/cache";
    {
      dogpile::Region region = open_region(cache);
      region.set<std::string>("k", "v");
      int calls = 0;
      region.get_or_create<std::string>("made", [&] {
        ++calls;
        return std::string("x");
      });
      region.invalidate(true);
      probe.check(calls == 1, "the cache works");
    }
    for (const std::string& dir : {top, top + "/a", top + "/a/b", cache}) {
      probe.check(mode_of(dir) == 0700, dir + " is " + octal(mode_of(dir)));
    }
    std::set<std::string> expected;
    for (const char* name : kCacheFiles) {
      const std::string path = cache + "/" + name;
      probe.check(mode_of(path) == 0600, path + " is " + octal(mode_of(path)));
      expected.insert(std::string(name) + ":f");
    }
    probe.check(listing(cache) == expected, "the cache holds exactly " + describe(expected) +
                                                ": " + describe(listing(cache)));
    // The compacted copy too.
    dogpile::Store::open({.path = cache}).compact(top + "/compact");
    probe.check(mode_of(top + "/compact") == 0700, "compact directory is " +
                                                       octal(mode_of(top + "/compact")));
    for (const auto& entry : fs::directory_iterator(top + "/compact")) {
      probe.check(mode_of(entry.path().string()) == 0600,
                  entry.path().string() + " is " + octal(mode_of(entry.path().string())));
    }
  });
  expect_passed("umask 000", r);
  figure("files/umask: under umask 000, 4 directories created 0700 and 4 cache files 0600 "
         "(plus the compacted copy); %.3f s",
         r.seconds);
}
