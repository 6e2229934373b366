// Issue 7, item 9: processes.
//
// (a) A child started with posix_spawn, or fork()+exec, while this process
//     holds a creation lock, an open read transaction and the environment,
//     inherits no descriptor of a cache file (checked in /proc/<pid>/fd).
// (b) A fork()ed child uses the parent's Region object (the engine reopens
//     the environment in the child) while a thread of the parent keeps
//     reading: the parent's reads and its open snapshot stay correct, and
//     the child's writes become visible to the parent.
// (c) One cache directory opened through several paths (a symlinked parent
//     directory, a "dir/.." detour) is one LMDB environment in the process.
#include <catch2/catch.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "backends/lmdb_env.h"
#include "backends/lmdb_layout.h"
#include "dogpile/dogpile.h"
#include "reliability_util.h"
#include "test_util.h"

extern char** environ;

using namespace dogpile;
using namespace dogpile::test;
using namespace std::chrono_literals;
using dogpile::internal::LmdbEnv;

namespace {

const char* const kCacheFiles[] = {"data.mdb", "lock.mdb", "creation.lock", "region-stamps"};

struct FileId {
  dev_t dev;
  ino_t ino;
  bool operator<(const FileId& o) const { return std::pair(dev, ino) < std::pair(o.dev, o.ino); }
};

// One open descriptor of a process: its number, link text and file identity.
struct OpenFd {
  int fd;
  std::string target;
  std::optional<FileId> id;
};

std::vector<OpenFd> open_fds(const std::string& pid) {
  std::vector<OpenFd> out;
  const std::string dir = "/proc/" + pid + "/fd";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return out;
  while (const dirent* entry = ::readdir(d)) {
    if (entry->d_name[0] == '.') continue;
    const std::string link = dir + "/" + entry->d_name;
    char buf[PATH_MAX];
    const ssize_t n = ::readlink(link.c_str(), buf, sizeof buf - 1);
    if (n < 0) continue;  // closed meanwhile (our own opendir descriptor)
    OpenFd fd{std::atoi(entry->d_name), std::string(buf, static_cast<std::size_t>(n)), {}};
    struct stat st {};
    if (::stat(link.c_str(), &st) == 0) fd.id = FileId{st.st_dev, st.st_ino};
    out.push_back(std::move(fd));
  }
  ::closedir(d);
  return out;
}

std::set<FileId> cache_file_ids(const std::string& cache) {
  std::set<FileId> ids;
  for (const char* name : kCacheFiles) {
    struct stat st {};
    if (::stat((cache + "/" + name).c_str(), &st) == 0) ids.insert(FileId{st.st_dev, st.st_ino});
  }
  return ids;
}

std::string real_path(const std::string& path) {
  char buf[PATH_MAX];
  return ::realpath(path.c_str(), buf) != nullptr ? std::string(buf) : path;
}

// Descriptors of `pid` that refer to the cache: by identity, by resolved
// path inside the directory, or by a cache file's name.
std::vector<std::string> cache_fds_of(const std::string& pid, const std::string& cache) {
  const std::set<FileId> ids = cache_file_ids(cache);
  const std::string prefix = real_path(cache) + "/";
  std::vector<std::string> found;
  for (const OpenFd& fd : open_fds(pid)) {
    bool hit = (fd.id && ids.count(*fd.id) != 0) || fd.target.rfind(prefix, 0) == 0;
    for (const char* name : kCacheFiles) {
      const std::string suffix = std::string("/") + name;
      hit = hit || (fd.target.size() >= suffix.size() &&
                    fd.target.compare(fd.target.size() - suffix.size(), suffix.size(), suffix) == 0);
    }
    if (hit) found.push_back(std::to_string(fd.fd) + " -> " + fd.target);
  }
  return found;
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& s : items) out += "  " + s + "\n";
  return out;
}

// /bin/sleep through posix_spawn; posix_spawn returns once the exec is done.
pid_t spawn_sleep() {
  char arg0[] = "sleep";
  char arg1[] = "30";
  char* argv[] = {arg0, arg1, nullptr};
  pid_t pid = -1;
  if (::posix_spawn(&pid, "/bin/sleep", nullptr, nullptr, argv, environ) != 0) return -1;
  return pid;
}

// /bin/sleep through fork() and execv(). Returns after the exec: the child
// holds the write end of a close-on-exec pipe, so the read sees end of file
// once the new program runs.
pid_t fork_exec_sleep() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return -1;
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    char arg0[] = "sleep";
    char arg1[] = "30";
    char* argv[] = {arg0, arg1, nullptr};
    ::execv("/bin/sleep", argv);
    _exit(127);
  }
  ::close(fds[1]);
  char c;
  while (::read(fds[0], &c, 1) < 0 && errno == EINTR) {
  }
  ::close(fds[0]);
  return pid;
}

void stop(pid_t pid) {
  if (pid <= 0) return;
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
}

}  // namespace

TEST_CASE("children started while a lock, a read transaction and the environment are held "
          "inherit no cache descriptor",
          "[reliability][processes]") {
  TempDir dir;
  const std::string cache = dir / "cache";
  Region region({.name = "procs"}, "lmdb", {{"path", cache}});
  region.set<std::string>("k", "v");
  region.invalidate(false);  // the stamps file exists and is mapped
  REQUIRE(region.get<std::string>("k") == std::nullopt);  // stale after the soft invalidation

  std::shared_ptr<LmdbEnv> env;
  REQUIRE(LmdbEnv::acquire(cache, {}, env).is_ok());
  internal::ReadTxn read;
  REQUIRE(env->begin_read(read).is_ok());

  struct Child {
    const char* how;
    pid_t pid;
    std::vector<std::string> cache_fds;
  };
  std::vector<Child> children;
  std::vector<std::string> own_fds;
  bool locked_meanwhile = false;
  region.get_or_create<std::string>("held", [&] {
    locked_meanwhile = region.key_is_locked("held");
    own_fds = cache_fds_of("self", cache);
    children.push_back({"posix_spawn", spawn_sleep(), {}});
    children.push_back({"fork+exec", fork_exec_sleep(), {}});
    for (Child& c : children) {
      if (c.pid > 0) c.cache_fds = cache_fds_of(std::to_string(c.pid), cache);
    }
    return std::string("created");
  });
  read.end();
  for (const Child& c : children) stop(c.pid);

  // The parent does hold them, so the check below looks at the right files.
  CHECK(locked_meanwhile);
  INFO("this process's cache descriptors:\n" << join(own_fds));
  CHECK(own_fds.size() >= 3);  // data.mdb, lock.mdb, creation.lock and its lock descriptor
  int leaked = 0;
  for (const Child& c : children) {
    INFO(c.how << " child " << c.pid << " holds:\n" << join(c.cache_fds));
    REQUIRE(c.pid > 0);
    CHECK(c.cache_fds.empty());
    leaked += static_cast<int>(c.cache_fds.size());
  }
  figure("processes: 2 children (posix_spawn, fork+exec) started inside a creator with a read "
         "transaction open: %d cache descriptors inherited (this process had %zu)",
         leaked, own_fds.size());
}

TEST_CASE("a fork()ed child uses the cache while the parent's reader thread and snapshot "
          "carry on",
          "[reliability][processes]") {
  constexpr int kKeys = 64;
  constexpr int kChildKeys = 16;
  TempDir dir;
  const std::string cache = dir / "cache";
  Region region({.name = "procs"}, "lmdb", {{"path", cache}});
  for (int i = 0; i < kKeys; ++i) {
    region.set<std::string>(str_cat("k", i), str_cat("parent-", i));
  }

  // An open snapshot of the parent's, through the engine's internals.
  std::shared_ptr<LmdbEnv> env;
  REQUIRE(LmdbEnv::acquire(cache, {}, env).is_ok());
  internal::RegionRef ref;
  REQUIRE(env->open_region("procs", ref).is_ok());
  const auto snapshot_read = [&](internal::ReadTxn& txn, const std::string& key) {
    internal::StoredKey stored(key);
    MDB_val k = stored.val();
    MDB_val v{};
    const int rc = mdb_get(txn.get(), ref.dbi, &k, &v);
    return rc == MDB_SUCCESS ? std::string(static_cast<const char*>(v.mv_data), v.mv_size)
                             : "error " + std::to_string(rc);
  };
  internal::ReadTxn snapshot;
  REQUIRE(env->begin_read(snapshot).is_ok());
  const std::string k0_before = snapshot_read(snapshot, "k0");
  REQUIRE(k0_before.rfind("error", 0) != 0);

  // The reader thread checks each value itself and only counts; Catch2
  // assertions stay on this thread.
  std::atomic<bool> stop_reading{false};
  std::atomic<bool> child_done{false};
  std::atomic<std::uint64_t> reads{0}, wrong{0}, missing{0}, child_values_seen{0},
      reads_after_child{0};
  std::thread reader([&] {
    std::mt19937_64 rng(reliability_seed());
    while (!stop_reading.load()) {
      const int i = static_cast<int>(rng() % kKeys);
      const std::optional<std::string> v = region.get<std::string>(str_cat("k", i));
      reads.fetch_add(1);
      if (child_done.load()) reads_after_child.fetch_add(1);
      if (!v) {
        missing.fetch_add(1);
      } else if (*v == "child-" + std::to_string(i)) {
        child_values_seen.fetch_add(1);
      } else if (*v != "parent-" + std::to_string(i)) {
        wrong.fetch_add(1);
      }
    }
  });
  while (reads.load() < 200) std::this_thread::sleep_for(1ms);

  const LmdbEnv* parent_env = env.get();
  const pid_t child = ::fork();
  if (child == 0) {
    // The child: the parent's Region object, the parent's thread gone. It
    // must not touch the parent's environment or transactions, so it ends
    // with _exit and runs no destructor of the parent's objects.
    int rc = 0;
    try {
      for (int i = 0; i < kKeys && rc == 0; ++i) {
        if (region.get<std::string>("k" + std::to_string(i)) != "parent-" + std::to_string(i)) {
          rc = 10;
        }
      }
      std::shared_ptr<LmdbEnv> own;
      if (rc == 0 && (!LmdbEnv::acquire(cache, {}, own).is_ok() || own.get() == parent_env)) {
        rc = 11;  // the child must have an environment of its own
      }
      for (int i = 0; i < kKeys && rc == 0; ++i) {
        region.set<std::string>("k" + std::to_string(i), "child-" + std::to_string(i));
      }
      for (int j = 0; j < kChildKeys && rc == 0; ++j) {
        const std::string key = "c" + std::to_string(j);
        const std::string v = region.get_or_create<std::string>(
            key, [&] { return "made-by-child-" + std::to_string(j); });
        if (v != "made-by-child-" + std::to_string(j)) rc = 12;
      }
      for (int i = 0; i < kKeys && rc == 0; ++i) {
        if (region.get<std::string>(str_cat("k", i)) != str_cat("child-", i)) {
          rc = 13;
        }
      }
      region.flush_stats();
      if (rc == 0 && (region.stats().store_errors != 0 || region.stats().corruptions != 0)) {
        rc = 14;
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
      rc = 99;
    }
    _exit(rc);
  }
  REQUIRE(child > 0);
  int status = 0;
  while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  child_done.store(true);
  // Read before waiting on the reader thread: the child's writes may have
  // grown the map, and adopting a larger map waits until every transaction
  // of this process, this snapshot too, has ended.
  const std::string k0_after = snapshot_read(snapshot, "k0");
  snapshot.end();
  const std::uint64_t target = reads.load() + 2000;
  while (reads.load() < target) std::this_thread::sleep_for(1ms);
  stop_reading.store(true);
  reader.join();

  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  INFO("child status " << status);
  CHECK(wrong.load() == 0);
  CHECK(missing.load() == 0);
  CHECK(reads_after_child.load() > 0);
  CHECK(child_values_seen.load() > 0);  // the child's writes reached the reader thread
  CHECK(k0_after == k0_before);        // the snapshot kept its view across the child's commits
  for (int i = 0; i < kKeys; ++i) {
    CHECK(region.get<std::string>("k" + std::to_string(i)) == "child-" + std::to_string(i));
  }
  for (int j = 0; j < kChildKeys; ++j) {
    CHECK(region.get<std::string>("c" + std::to_string(j)) == "made-by-child-" + std::to_string(j));
  }
  const RegionStats stats = region.stats();
  CHECK(stats.store_errors == 0);
  CHECK(stats.corruptions == 0);
  figure("processes: fork()ed child wrote %d keys and created %d while a parent thread read: "
         "%llu parent reads, %llu wrong, %llu missing, %llu saw the child's values; snapshot "
         "unchanged",
         kKeys, kChildKeys, static_cast<unsigned long long>(reads.load()),
         static_cast<unsigned long long>(wrong.load()),
         static_cast<unsigned long long>(missing.load()),
         static_cast<unsigned long long>(child_values_seen.load()));
}

TEST_CASE("one cache opened through a symlinked parent and a dir/.. path is one environment",
          "[reliability][processes]") {
  TempDir dir;
  const std::string base = dir / "base";
  REQUIRE(::mkdir(base.c_str(), 0700) == 0);
  REQUIRE(::symlink("base", (dir / "alias").c_str()) == 0);
  const std::string direct = base + "/cache";
  const std::string via_alias = dir / "alias/cache";
  const std::string via_dotdot = base + "/cache/../cache";

  const auto data_fds = [&] {
    const std::set<FileId> ids = [&] {
      std::set<FileId> s;
      struct stat st {};
      if (::stat((direct + "/data.mdb").c_str(), &st) == 0) s.insert(FileId{st.st_dev, st.st_ino});
      return s;
    }();
    int n = 0;
    for (const OpenFd& fd : open_fds("self")) n += fd.id && ids.count(*fd.id) != 0;
    return n;
  };

  Region first({.name = "procs"}, "lmdb", {{"path", direct}});
  first.set<std::string>("x", "1");
  const int fds_one = data_fds();
  Region second({.name = "procs"}, "lmdb", {{"path", via_alias}});
  Region third({.name = "procs"}, "lmdb", {{"path", via_dotdot}});
  CHECK(second.get<std::string>("x") == "1");
  third.set<std::string>("x", "3");
  CHECK(second.get<std::string>("x") == "3");
  // Two environments would have opened data.mdb again.
  CHECK(data_fds() == fds_one);
  CHECK(fds_one > 0);

  std::shared_ptr<LmdbEnv> a, b, c;
  REQUIRE(LmdbEnv::acquire(direct, {}, a).is_ok());
  REQUIRE(LmdbEnv::acquire(via_alias, {}, b).is_ok());
  REQUIRE(LmdbEnv::acquire(via_dotdot, {}, c).is_ok());
  CHECK(a.get() == b.get());
  CHECK(a.get() == c.get());

  // One lock file too: a creation lock taken through one path is seen and
  // respected through the others.
  bool seen_by_second = false, seen_by_third = false;
  first.get_or_create<std::string>("y", [&] {
    seen_by_second = second.key_is_locked("y");
    seen_by_third = third.key_is_locked("y");
    return std::string("made");
  });
  CHECK(seen_by_second);
  CHECK(seen_by_third);

  // A symlink as the cache directory itself stays refused.
  REQUIRE(::symlink("base/cache", (dir / "linked-cache").c_str()) == 0);
  const auto open_linked = [&] { Region r({.name = "procs"}, "lmdb", {{"path", dir / "linked-cache"}}); };
  CHECK_THROWS_AS(open_linked(), Error);
  figure("processes: one cache through 3 paths (direct, symlinked parent, dir/..): 1 "
         "environment, %d data.mdb descriptors before and after",
         fds_one);
}
