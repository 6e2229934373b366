// The LMDB backend's own behaviour: one environment per directory, files and
// permissions, fork() and other processes, limits.
#include "dogpile/lmdb_backend.h"

#include <dirent.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backends/lmdb_env.h"
#include "dogpile/backend.h"
#include "dogpile/error.h"

#include "backend_util.h"
#include "test_util.h"

namespace {

using dogpile::Backend;
using dogpile::Durability;
using dogpile::LmdbOptions;
using dogpile::Status;
using dogpile::StatusCode;

using dogpile::test::TempDir;
using dogpile::test::get;
using dogpile::test::set;

std::unique_ptr<Backend> open(const std::string& path, const std::string& region = "default",
                              std::uint64_t max_size = std::uint64_t{1} << 30) {
  LmdbOptions options;
  options.path = path;
  options.region = region;
  options.max_size = max_size;
  return dogpile::open_lmdb_backend(options);
}

// In a child process these report through the exit status instead of Catch.
bool child_get_is(Backend& b, std::string_view key, std::optional<std::string> expected) {
  std::optional<std::string> value;
  return b.get(key, value).is_ok() && value == expected;
}

// Runs `body` in a fork()ed child; returns its exit code (128 + signal when
// killed). The child leaves with _exit: no Catch or static teardown there.
int in_child(const std::function<int()>& body) {
  const pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int code = 99;
    try {
      code = body();
    } catch (...) {
      code = 98;
    }
    ::_exit(code);
  }
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -2;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Open descriptors of this process that refer to `file` (looked up through
// /proc/self/fd: opening the file ourselves would drop LMDB's fcntl locks).
int open_descriptors_of(const std::string& file) {
  const std::string target = std::filesystem::weakly_canonical(file).string();
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const auto link = std::filesystem::read_symlink(entry.path(), ec);
    if (!ec && link.string() == target) ++count;
  }
  return count;
}

// Reader-table slots held by process `pid`, as mdb_reader_list prints them.
int reader_slots_of(MDB_env* env, pid_t pid) {
  struct Ctx {
    pid_t pid;
    int count;
  } ctx{pid, 0};
  mdb_reader_list(
      env,
      [](const char* line, void* p) -> int {
        auto* c = static_cast<Ctx*>(p);
        int line_pid = 0;
        if (std::sscanf(line, "%d", &line_pid) == 1 && line_pid == c->pid) ++c->count;
        return 0;
      },
      &ctx);
  return ctx.count;
}

mode_t mode_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

}  // namespace

TEST_CASE("regions of one directory share one environment", "[lmdb]") {
  TempDir dir;
  {
    std::unique_ptr<Backend> a = open(dir.path(), "a");
    const int one_env = open_descriptors_of(dir / "data.mdb");  // LMDB uses two
    CHECK(one_env > 0);
    std::unique_ptr<Backend> b = open(dir.path(), "b");
    CHECK(open_descriptors_of(dir / "data.mdb") == one_env);

    set(*a, "key", "in a");
    CHECK(get(*b, "key") == std::nullopt);
    set(*b, "key", "in b");
    set(*b, "only b", "b");
    CHECK(get(*a, "key") == "in a");
    CHECK(get(*a, "only b") == std::nullopt);
  }
  // Every backend gone: the environment is closed...
  CHECK(open_descriptors_of(dir / "data.mdb") == 0);
  // ...and what it held is there for the next opener.
  std::unique_ptr<Backend> b = open(dir.path(), "b");
  std::unique_ptr<Backend> a = open(dir.path(), "a");
  CHECK(get(*a, "key") == "in a");
  CHECK(get(*b, "key") == "in b");
  CHECK(get(*b, "only b") == "b");
}

TEST_CASE("a directory reached by two paths is one environment", "[lmdb]") {
  TempDir dir;
  const std::string real = dir / "real";
  const std::string alias = dir / "alias";
  REQUIRE(::mkdir(real.c_str(), 0700) == 0);
  REQUIRE(::symlink(real.c_str(), alias.c_str()) == 0);
  std::unique_ptr<Backend> a = open(real + "/cache");
  const int one_env = open_descriptors_of(real + "/cache/data.mdb");
  CHECK(one_env > 0);
  std::unique_ptr<Backend> b = open(alias + "/cache");
  CHECK(open_descriptors_of(real + "/cache/data.mdb") == one_env);
  set(*a, "k", "v");
  CHECK(get(*b, "k") == "v");
  // The cache directory itself must not be a symlink.
  REQUIRE(::symlink((real + "/cache").c_str(), (dir / "link").c_str()) == 0);
  CHECK_THROWS_AS(open(dir / "link"), dogpile::Error);
}

TEST_CASE("files are private", "[lmdb]") {
  TempDir dir;
  const std::string path = dir / "new/cache";
  std::unique_ptr<Backend> b = open(path);
  set(*b, "k", "v");
  CHECK(mode_of(path) == 0700);
  CHECK(mode_of(dir / "new") == 0700);
  CHECK(mode_of(path + "/data.mdb") == 0600);
  CHECK(mode_of(path + "/lock.mdb") == 0600);
  CHECK(mode_of(path + "/creation.lock") == 0600);
}

TEST_CASE("the default directory comes from DOGPILE_DIR", "[lmdb]") {
  TempDir dir;
  const char* old = std::getenv("DOGPILE_DIR");
  const std::optional<std::string> saved = old ? std::optional<std::string>(old) : std::nullopt;
  REQUIRE(::setenv("DOGPILE_DIR", (dir / "default").c_str(), 1) == 0);
  {
    std::unique_ptr<Backend> b = dogpile::open_lmdb_backend({});
    set(*b, "k", "v");
  }
  if (saved) {
    ::setenv("DOGPILE_DIR", saved->c_str(), 1);
  } else {
    ::unsetenv("DOGPILE_DIR");
  }
  CHECK(exists(dir / "default/data.mdb"));
  CHECK(get(*open(dir / "default"), "k") == "v");
}

TEST_CASE("a relative path is resolved once, at open", "[lmdb][fork]") {
  TempDir dir;
  TempDir elsewhere;
  const std::filesystem::path saved = std::filesystem::current_path();
  std::filesystem::current_path(dir.path());
  std::unique_ptr<Backend> b = open("relative");
  std::filesystem::current_path(saved);
  set(*b, "k", "v");
  CHECK(exists(dir / "relative/data.mdb"));
  // The child reopens after fork() from another working directory.
  CHECK(in_child([&] {
          if (::chdir(elsewhere.path().c_str()) != 0) return 1;
          return child_get_is(*b, "k", "v") ? 0 : 2;
        }) == 0);
  CHECK_FALSE(exists(elsewhere / "relative"));
}

TEST_CASE("foreign files where cache files belong are refused", "[lmdb]") {
  TempDir dir;
  const std::string path = dir / "cache";
  REQUIRE(::mkdir(path.c_str(), 0700) == 0);
  const std::string elsewhere = dir / "elsewhere";
  std::string name;

  SECTION("a symlink at data.mdb") {
    name = "data.mdb";
    REQUIRE(::symlink(elsewhere.c_str(), (path + "/" + name).c_str()) == 0);
  }
  SECTION("a symlink at lock.mdb") {
    name = "lock.mdb";
    REQUIRE(::symlink(elsewhere.c_str(), (path + "/" + name).c_str()) == 0);
  }
  SECTION("a FIFO at data.mdb") {
    name = "data.mdb";
    REQUIRE(::mkfifo((path + "/" + name).c_str(), 0600) == 0);
  }
  SECTION("a hard link at data.mdb") {
    name = "data.mdb";
    std::fclose(std::fopen(elsewhere.c_str(), "w"));
    REQUIRE(::link(elsewhere.c_str(), (path + "/" + name).c_str()) == 0);
  }

  const std::string file = path + "/" + name;
  try {
    open(path);
    FAIL("opened a cache with a foreign " << file);
  } catch (const dogpile::StoreError& e) {
    CHECK_THAT(e.what(), Catch::Contains(file) && Catch::Contains("refusing"));
    CHECK(e.path() == file);
  }
  // Nothing was created next to it, nor written through it.
  for (const char* other : {"data.mdb", "lock.mdb", "creation.lock"}) {
    if (other != name) CHECK_FALSE(exists(path + "/" + other));
  }
  struct stat st {};
  if (::stat(elsewhere.c_str(), &st) == 0) CHECK(st.st_size == 0);
}

// A StoreError, not a ConfigError, as docs/guide.md's table of errors says:
// the path is well formed, the file system refuses it.
TEST_CASE("a path through a regular file is a StoreError naming it", "[lmdb]") {
  TempDir dir;
  const std::string file = dir / "file";
  std::fclose(std::fopen(file.c_str(), "w"));
  for (const std::string& path : {file + "/cache", file}) {
    try {
      open(path);
      FAIL("opened a cache at " << path);
    } catch (const dogpile::StoreError& e) {
      CHECK_THAT(e.what(), Catch::Contains(file));
      CHECK(e.path() == path);
      CHECK(e.sys_errno() == ENOTDIR);
    }
  }
}

TEST_CASE("durability names parse", "[lmdb][config]") {
  TempDir dir;
  for (const char* name : {"durable", "nometasync", "nosync"}) {
    const std::string path = dir / name;
    std::unique_ptr<Backend> b =
        dogpile::make_backend("lmdb", {{"path", path}, {"durability", name}});
    set(*b, "k", name);
    CHECK(get(*b, "k") == name);
  }
  for (const char* bad : {"", "Durable", "sync", "nosync "}) {
    try {
      dogpile::make_backend("lmdb", {{"path", dir / "bad"}, {"durability", bad}});
      FAIL("accepted durability '" << bad << "'");
    } catch (const dogpile::ConfigError& e) {
      CHECK_THAT(e.what(), Catch::Contains("'durability'") &&
                               Catch::Contains("durable, nometasync or nosync"));
    }
  }
}

TEST_CASE("region names are checked", "[lmdb][config]") {
  TempDir dir;
  CHECK_THROWS_AS(open(dir.path(), ""), dogpile::ConfigError);
  CHECK_THROWS_AS(open(dir.path(), std::string("a\0b", 3)), dogpile::ConfigError);
  CHECK_THROWS_AS(open(dir.path(), std::string(600, 'r')), dogpile::ConfigError);
  std::unique_ptr<Backend> b = open(dir.path(), std::string(504, 'r'));
  set(*b, "k", "v");
}

TEST_CASE("running out of max_regions is a clear error", "[lmdb][config]") {
  TempDir dir;
  LmdbOptions options;
  options.path = dir.path();
  options.max_regions = 2;
  options.region = "one";
  std::unique_ptr<Backend> one = dogpile::open_lmdb_backend(options);
  options.region = "two";
  std::unique_ptr<Backend> two = dogpile::open_lmdb_backend(options);
  options.region = "one";
  std::unique_ptr<Backend> one_again = dogpile::open_lmdb_backend(options);  // not a new region
  options.region = "three";
  try {
    dogpile::open_lmdb_backend(options);
    FAIL("opened a third region");
  } catch (const dogpile::ConfigError& e) {
    CHECK_THAT(e.what(), Catch::Contains("max_regions") && Catch::Contains("'three'") &&
                             Catch::Contains(dir.path()));
  }
  // The first opener's limit holds until the environment closes.
  one.reset();
  two.reset();
  one_again.reset();
  options.max_regions = 3;
  CHECK_NOTHROW(dogpile::open_lmdb_backend(options));
}

TEST_CASE("a full map is reported as kFull and absorbed when another process grows it",
          "[lmdb][fork]") {
  TempDir dir;
  std::unique_ptr<Backend> small = open(dir.path(), "default", std::uint64_t{1} << 20);
  set(*small, "k", "v");
  const std::string big(2 << 20, 'b');
  const Status full = small->set("big", big);
  CHECK(full.code() == StatusCode::kFull);
  CHECK_THAT(full.to_string(), Catch::Contains("max_size"));
  CHECK(get(*small, "k") == "v");  // the failed write left the store as it was

  // A child opens its own environment with a bigger map and fills it past
  // the parent's map size.
  CHECK(in_child([&] {
          std::unique_ptr<Backend> large = open(dir.path(), "default", std::uint64_t{64} << 20);
          return large->set("big", big).is_ok() ? 0 : 1;
        }) == 0);
  // The parent's next transactions see MDB_MAP_RESIZED and adopt the size.
  CHECK(get(*small, "big") == big);
  set(*small, "after", "resize");
  CHECK(get(*small, "after") == "resize");
}

TEST_CASE("values cross fork() both ways", "[lmdb][fork]") {
  TempDir dir;
  std::unique_ptr<Backend> parent = open(dir.path());
  set(*parent, "from parent", "p");

  CHECK(in_child([&] {
          std::unique_ptr<Backend> child = open(dir.path());
          if (!child_get_is(*child, "from parent", "p")) return 1;
          return child->set("from child", "c").is_ok() ? 0 : 2;
        }) == 0);
  CHECK(get(*parent, "from child") == "c");
}

TEST_CASE("a value outlives the process that wrote it", "[lmdb][fork]") {
  TempDir dir;
  const std::string path = dir.path();
  CHECK(in_child([&] {
          std::unique_ptr<Backend> writer = open(path);
          return writer->set("legacy", "kept").is_ok() ? 0 : 1;
        }) == 0);
  CHECK(in_child([&] {
          std::unique_ptr<Backend> reader = open(path);
          return child_get_is(*reader, "legacy", "kept") ? 0 : 1;
        }) == 0);
}

TEST_CASE("writers in several processes at once", "[lmdb][fork]") {
  TempDir dir;
  constexpr int kChildren = 4;
  constexpr int kKeys = 50;
  std::vector<pid_t> pids;
  for (int c = 0; c < kChildren; ++c) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      int code = 0;
      try {
        std::unique_ptr<Backend> b = open(dir.path());
        for (int i = 0; i < kKeys && code == 0; ++i) {
          const std::string key = std::to_string(c) + "/" + std::to_string(i);
          if (!b->set(key, key).is_ok()) code = 1;
          if (!child_get_is(*b, key, key)) code = 2;
        }
      } catch (...) {
        code = 3;
      }
      ::_exit(code);
    }
    pids.push_back(pid);
  }
  for (const pid_t pid : pids) {
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  std::unique_ptr<Backend> b = open(dir.path());
  int missing = 0;
  for (int c = 0; c < kChildren; ++c) {
    for (int i = 0; i < kKeys; ++i) {
      const std::string key = std::to_string(c) + "/" + std::to_string(i);
      if (get(*b, key) != key) ++missing;
    }
  }
  CHECK(missing == 0);
}

TEST_CASE("a backend used before fork() keeps working on both sides", "[lmdb][fork]") {
  TempDir dir;
  std::unique_ptr<Backend> b = open(dir.path());
  set(*b, "before", "fork");
  CHECK(get(*b, "before") == "fork");  // leaves a pooled reader behind

  CHECK(in_child([&] {
          // Reopens transparently in the child.
          if (!child_get_is(*b, "before", "fork")) return 1;
          if (!b->set("in child", "yes").is_ok()) return 2;
          if (!child_get_is(*b, "in child", "yes")) return 3;
          std::unique_ptr<dogpile::CreationMutex> mutex = b->get_mutex("k");
          if (!mutex || !mutex->try_lock().is_ok()) return 4;
          mutex->unlock();
          return 0;
        }) == 0);
  CHECK(get(*b, "in child") == "yes");
  set(*b, "after", "child");
  CHECK(get(*b, "after") == "child");

  // And again, in a second child of the same parent.
  CHECK(in_child([&] { return child_get_is(*b, "after", "child") ? 0 : 1; }) == 0);
  CHECK(get(*b, "before") == "fork");
}

TEST_CASE("a child never closes its parent's environment", "[lmdb][fork]") {
  TempDir dir;
  std::unique_ptr<Backend> inherited = open(dir.path());
  set(*inherited, "k", "v");
  CHECK(get(*inherited, "k") == "v");
  std::shared_ptr<dogpile::internal::LmdbEnv> parent_env;
  REQUIRE(dogpile::internal::LmdbEnv::acquire(dir.path(), {}, parent_env).is_ok());

  int to_parent[2];
  int to_child[2];
  REQUIRE(::pipe(to_parent) == 0);
  REQUIRE(::pipe(to_child) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int code = 0;
    try {
      // The child's own environment, holding a reader slot of its pid and
      // the fcntl lock on lock.mdb that tells others this pid is alive.
      std::unique_ptr<Backend> own = open(dir.path());
      std::shared_ptr<dogpile::internal::LmdbEnv> env;
      if (!child_get_is(*own, "k", "v")) code = 1;
      if (code == 0 && !dogpile::internal::LmdbEnv::acquire(dir.path(), {}, env).is_ok()) code = 2;
      const int slots = code == 0 ? reader_slots_of(env->raw(), ::getpid()) : 0;
      if (code == 0 && slots < 1) code = 3;
      // Dropping the inherited backend releases the parent's environment in
      // the child. Closing it there would close the child's copies of the
      // lock.mdb descriptor, dropping the fcntl locks of the child's own
      // environment: it must be leaked.
      parent_env.reset();
      inherited.reset();
      char go = 0;
      if (::write(to_parent[1], "x", 1) != 1 || ::read(to_child[0], &go, 1) != 1) code = 4;
      if (code == 0 && reader_slots_of(env->raw(), ::getpid()) != slots) code = 5;
      if (code == 0 && !child_get_is(*own, "k", "v")) code = 6;
    } catch (...) {
      code = 7;
    }
    ::_exit(code);
  }
  char ready = 0;
  REQUIRE(::read(to_parent[0], &ready, 1) == 1);
  // The child is alive: a reader check must not take it for dead.
  int dead = -1;
  CHECK(mdb_reader_check(parent_env->raw(), &dead) == 0);
  CHECK(dead == 0);
  CHECK(::write(to_child[1], "x", 1) == 1);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  for (const int fd : {to_parent[0], to_parent[1], to_child[0], to_child[1]}) ::close(fd);
  CHECK(get(*inherited, "k") == "v");
}

TEST_CASE("creation locks exclude other processes", "[lmdb][fork]") {
  TempDir dir;
  std::unique_ptr<Backend> b = open(dir.path(), "locks");
  std::unique_ptr<dogpile::CreationMutex> held = b->get_mutex("key");
  REQUIRE(held->try_lock().is_ok());
  CHECK(in_child([&] {
          std::unique_ptr<Backend> other = open(dir.path(), "locks");
          std::unique_ptr<dogpile::CreationMutex> same = other->get_mutex("key");
          if (!same || same->try_lock().code() != StatusCode::kBusy) return 1;
          if (!same->is_locked_anywhere()) return 2;
          // The same key in another region is another lock.
          std::unique_ptr<Backend> elsewhere = open(dir.path(), "other region");
          std::unique_ptr<dogpile::CreationMutex> theirs = elsewhere->get_mutex("key");
          return theirs && theirs->try_lock().is_ok() ? 0 : 3;
        }) == 0);
  held->unlock();
  CHECK(in_child([&] {
          std::unique_ptr<Backend> other = open(dir.path(), "locks");
          return other->get_mutex("key")->try_lock().is_ok() ? 0 : 1;
        }) == 0);
}

TEST_CASE("lmdb errors map to status codes", "[lmdb]") {
  using dogpile::internal::lmdb_status;
  CHECK(lmdb_status(MDB_MAP_FULL, "w", "/p").code() == StatusCode::kFull);
  CHECK(lmdb_status(MDB_CORRUPTED, "r", "/p").code() == StatusCode::kCorruption);
  CHECK(lmdb_status(MDB_PAGE_NOTFOUND, "r", "/p").code() == StatusCode::kCorruption);
  CHECK(lmdb_status(MDB_INVALID, "r", "/p").code() == StatusCode::kCorruption);
  CHECK(lmdb_status(MDB_BAD_VALSIZE, "w", "/p").code() == StatusCode::kTooLarge);
  const Status io = lmdb_status(EACCES, "cannot open", "/some/path");
  CHECK(io.code() == StatusCode::kIOError);
  CHECK(io.sys_errno() == EACCES);
  CHECK(io.path() == "/some/path");
  CHECK_THAT(lmdb_status(MDB_PANIC, "w", "/p").to_string(),
             Catch::Contains(mdb_strerror(MDB_PANIC)) && Catch::Contains("/p"));
}

TEST_CASE("a reader table full of dead processes is checked and the read retried",
          "[lmdb][fork]") {
  TempDir dir;
  LmdbOptions options;
  options.path = dir.path();
  options.max_readers = 4;
  // Opened first, so its max_readers sizes lock.mdb; it reads nothing yet and
  // so holds no reader slot.
  std::unique_ptr<Backend> backend = dogpile::open_lmdb_backend(options);
  set(*backend, "k", "v");

  // Children each take one reader slot (their pooled read transaction) and
  // keep it until killed, until one finds the table full.
  std::vector<pid_t> holders;
  bool full = false;
  while (!full && holders.size() < 64) {
    int ready[2];
    REQUIRE(::pipe(ready) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::close(ready[0]);
      const char verdict = child_get_is(*backend, "k", "v") ? 'r' : 'f';
      if (::write(ready[1], &verdict, 1) != 1) ::_exit(2);
      if (verdict == 'f') ::_exit(0);
      for (;;) ::pause();
    }
    ::close(ready[1]);
    char verdict = 0;
    REQUIRE(::read(ready[0], &verdict, 1) == 1);
    ::close(ready[0]);
    if (verdict == 'r') {
      holders.push_back(pid);
    } else {
      full = true;
      int status = 0;
      REQUIRE(::waitpid(pid, &status, 0) == pid);
    }
  }
  REQUIRE(full);
  CHECK(holders.size() >= 4);
  // Killed inside their read transactions: their slots stay taken.
  for (const pid_t pid : holders) REQUIRE(::kill(pid, SIGKILL) == 0);
  for (const pid_t pid : holders) {
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
  }
  // The table is full of dead readers: the read must free them and retry.
  CHECK(get(*backend, "k") == "v");
  set(*backend, "k2", "v2");
  CHECK(get(*backend, "k2") == "v2");
}

TEST_CASE("a truncated data.mdb is a typed error naming both sizes, never a signal", "[lmdb]") {
  TempDir dir;
  const std::string source = dir / "source";
  {
    auto b = open(source);
    for (int i = 0; i < 3000; ++i) set(*b, dogpile::test::str_cat("k", i), std::string(1000, 'v'));
  }
  const std::string data = source + "/data.mdb";
  const auto full = static_cast<std::size_t>(std::filesystem::file_size(data));
  const std::size_t page = 4096;
  REQUIRE(full > 100 * page);
  std::string bytes(full, '\0');
  {
    std::FILE* in = std::fopen(data.c_str(), "rb");
    REQUIRE(in != nullptr);
    REQUIRE(std::fread(bytes.data(), 1, full, in) == full);
    std::fclose(in);
  }
  // Inside the two meta pages, just after them, mid-file, one page short.
  const std::vector<std::size_t> offsets = {1,        100,      page,         page + 1,
                                            2 * page - 1, 2 * page, 3 * page, full / 2,
                                            full - page,  full - 1};
  int signals = 0;
  for (std::size_t i = 0; i < offsets.size(); ++i) {
    const std::string copy = dir / dogpile::test::str_cat("cut", i);
    std::filesystem::create_directory(copy);
    std::filesystem::permissions(copy, std::filesystem::perms::owner_all);
    {
      std::FILE* out = std::fopen((copy + "/data.mdb").c_str(), "wb");
      REQUIRE(out != nullptr);
      REQUIRE(std::fwrite(bytes.data(), 1, offsets[i], out) == offsets[i]);
      std::fclose(out);
    }
    const int code = in_child([&] {
      try {
        auto b = open(copy);
        std::optional<std::string> value;
        for (int k = 0; k < 3000; ++k) (void)b->get(dogpile::test::str_cat("k", k), value);
        return 1;  // opened and read: the check missed it
      } catch (const dogpile::Error& e) {
        const std::string what = e.what();
        if (e.code() != StatusCode::kCorruption) return 2;
        if (e.path() != copy + "/data.mdb") return 3;
        // Past the meta pages, the message gives both sizes.
        if (offsets[i] >= 2 * page && what.find(std::to_string(offsets[i]) + " bytes") ==
                                          std::string::npos) {
          return 4;
        }
        return 0;
      }
    });
    INFO("cut at " << offsets[i] << " of " << full << " bytes: child exit " << code);
    CHECK(code == 0);
    signals += code >= 128;
  }
  CHECK(signals == 0);
}
