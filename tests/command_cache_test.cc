// CommandCache: command keys, running and capturing a child, and caching
// command results across real processes in temporary cache directories.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <fstream>
#include <iterator>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "dogpile/command_cache.h"
#include "dogpile/dogpile.h"
#include "process_util.h"
#include "test_util.h"

using namespace dogpile;
using namespace std::chrono_literals;
using namespace dogpile::test;

namespace {

std::string u64le(std::uint64_t v) {
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  return out;
}

std::string field(char tag, const std::string& bytes) {
  return std::string(1, tag) + u64le(bytes.size()) + bytes;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string all_bytes(std::size_t repeat) {
  std::string out;
  for (std::size_t r = 0; r < repeat; ++r) {
    for (int b = 0; b < 256; ++b) out.push_back(static_cast<char>(b));
  }
  return out;
}

void set_mtime(const std::string& path, std::int64_t sec, long nsec) {
  const timespec times[2] = {{sec, nsec}, {sec, nsec}};
  REQUIRE(::utimensat(AT_FDCWD, path.c_str(), times, 0) == 0);
}

// Restores the working directory when the test leaves.
class ChdirGuard {
 public:
  explicit ChdirGuard(const std::string& to) {
    char buf[4096];
    REQUIRE(::getcwd(buf, sizeof buf) != nullptr);
    old_ = buf;
    REQUIRE(::chdir(to.c_str()) == 0);
  }
  ~ChdirGuard() { (void)::chdir(old_.c_str()); }

 private:
  std::string old_;
};

// Restores (or unsets) an environment variable when the test leaves.
class EnvGuard {
 public:
  explicit EnvGuard(const char* name) : name_(name) {
    if (const char* v = std::getenv(name)) old_ = v;
  }
  ~EnvGuard() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

std::vector<std::string> sh(const std::string& script) { return {"/bin/sh", "-c", script}; }

// Puts `fd` (0 or 1) on another file while it lives and restores it after.
class FdRedirect {
 public:
  FdRedirect(int fd, int replacement) : fd_(fd), saved_(::dup(fd)) {
    std::fflush(nullptr);
    REQUIRE(saved_ >= 0);
    REQUIRE(::dup2(replacement, fd_) == fd_);
    ::close(replacement);
  }
  ~FdRedirect() {
    std::fflush(nullptr);
    ::dup2(saved_, fd_);
    ::close(saved_);
  }
  FdRedirect(const FdRedirect&) = delete;
  FdRedirect& operator=(const FdRedirect&) = delete;

 private:
  int fd_;
  int saved_;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

int open_file(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  return fd;
}

// This process's stdin is a file holding `bytes` (written to `path`).
struct StdinFile : FdRedirect {
  StdinFile(const std::string& path, const std::string& bytes)
      : FdRedirect(STDIN_FILENO, (write_file(path, bytes), open_file(path, O_RDONLY))) {}
};

// This process's stdin is a pipe holding `bytes` (at most a pipe's buffer), then EOF.
struct StdinPipe : FdRedirect {
  explicit StdinPipe(const std::string& bytes) : FdRedirect(STDIN_FILENO, filled_pipe(bytes)) {}
  static int filled_pipe(const std::string& bytes) {
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    REQUIRE(::write(fds[1], bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
    ::close(fds[1]);
    return fds[0];
  }
};

// The tests never read the runner's stdin: a harness that leaves it an open
// pipe would block every StdinPolicy::kAuto read. /dev/null is not read.
[[maybe_unused]] const bool kStdinIsNull = [] {
  const int fd = ::open("/dev/null", O_RDONLY);
  return fd >= 0 && ::dup2(fd, STDIN_FILENO) == STDIN_FILENO && ::close(fd) == 0;
}();

// What a run produced, without the record of what ran where.
bool same_output(const CommandResult& a, const CommandResult& b) {
  return a.exit_code == b.exit_code && a.signal == b.signal && a.out == b.out && a.err == b.err;
}

Region exec_region(const std::string& dir) {
  return Region({.name = CommandCache::kRegion}, "lmdb", {{"path", dir}});
}

// Waits until a background refresh that logged `prefix` has stored its result
// (it holds the key's creation lock from before the command runs until after the store).
bool wait_for_refresh(const std::string& dir, const std::string& log, const std::string& prefix,
                      const std::string& key) {
  if (!wait_for_line(log, prefix)) return false;
  Region region = exec_region(dir);
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (region.key_is_locked(key)) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

}  // namespace

TEST_CASE("key material: version, tags, lengths", "[command_cache][key]") {
  CHECK(command_key_material({.argv = {"ls", "-l"}}) ==
        "dogpile-exec-key/1" + field('a', "ls") + field('a', "-l"));
  CHECK(command_key_material({.argv = {"ls"}, .scope = "web"}) ==
        "dogpile-exec-key/1" + field('a', "ls") + field('s', "web"));
  // Input is keyed by its XXH3-128, canonical byte order.
  CHECK(command_key_material({.argv = {"wc"}, .input = "abc"}) ==
        "dogpile-exec-key/1" + field('a', "wc") +
            field('i', std::string("\x06\xb0\x5a\xb6\x73\x3a\x61\x85\x78\xaf\x5f\x94\x89"
                                   "\x2f\x39\x50", 16)));
  CHECK(command_key({.argv = {"wc"}, .input = "a\n"}) !=
        command_key({.argv = {"wc"}, .input = "abcdef\n"}));
  CHECK(command_key({.argv = {"wc"}, .input = ""}) == command_key({.argv = {"wc"}}));
  CHECK_THROWS_AS(command_key({.argv = {"x"}, .env = {"A=B"}}), ConfigError);
  CHECK_THROWS_AS(command_key({.argv = {"x"}, .env = {""}}), ConfigError);

  EnvGuard guard_a("DOGPILE_TEST_A");
  EnvGuard guard_b("DOGPILE_TEST_B");
  ::setenv("DOGPILE_TEST_A", "1", 1);
  ::unsetenv("DOGPILE_TEST_B");
  CHECK(command_key_material({.argv = {"x"}, .env = {"DOGPILE_TEST_B", "DOGPILE_TEST_A"}}) ==
        "dogpile-exec-key/1" + field('a', "x") + field('e', "DOGPILE_TEST_A") + field('v', "1") +
            field('e', "DOGPILE_TEST_B") + field('u', ""));

  TempDir dir;
  const std::string file = dir / "f";
  write_file(file, "12345");
  set_mtime(file, 1700000000, 5);
  CHECK(command_key_material({.argv = {"x"}, .modtime = {file, dir / "missing"}}) ==
        "dogpile-exec-key/1" + field('a', "x") + field('m', file) +
            field('f', u64le(1700000000ULL * 1000000000ULL + 5) + u64le(5)) +
            field('m', dir / "missing") + field('x', ""));

  ChdirGuard cd(dir.path());
  char real[4096];
  REQUIRE(::realpath(dir.path().c_str(), real) != nullptr);
  CHECK(command_key_material({.argv = {"x"}, .cwd = true}) ==
        "dogpile-exec-key/1" + field('a', "x") + field('c', real));
}

TEST_CASE("keys: length prefixes keep argument boundaries", "[command_cache][key]") {
  const std::vector<std::vector<std::string>> argvs = {
      {"a b"}, {"a", "b"}, {"ab"}, {"a", "", "b"}, {"", "ab"}, {"ab", ""}, {""}, {"", ""},
      {"a"}, {std::string("a\0b", 3)}, {"echo", "hi"}, {"echo hi"}, {"echo", "h", "i"}};
  std::set<std::string> keys;
  for (const auto& argv : argvs) keys.insert(command_key({.argv = argv}));
  CHECK(keys.size() == argvs.size());

  const std::string key = command_key({.argv = {"ls"}});
  CHECK(key.size() == 32);
  CHECK(key.find_first_not_of("0123456789abcdef") == std::string::npos);
  CHECK(command_key({.argv = {"ls"}}) == key);  // deterministic
}

TEST_CASE("keys: scope separates and prefixes", "[command_cache][key]") {
  const std::string plain = command_key({.argv = {"ls"}});
  const std::string web = command_key({.argv = {"ls"}, .scope = "web"});
  const std::string db = command_key({.argv = {"ls"}, .scope = "db"});
  CHECK(web.rfind("web/", 0) == 0);
  CHECK(db.rfind("db/", 0) == 0);
  CHECK(web.substr(4) != plain);
  CHECK(web.substr(4) != db.substr(3));
  // The scope is hashed too, not only prefixed: "a" + "b/..." cannot meet "a/b".
  CHECK(command_key({.argv = {"ls"}, .scope = "a/b"}).substr(4) !=
        command_key({.argv = {"ls"}, .scope = "a"}).substr(2));
}

TEST_CASE("keys: environment variables", "[command_cache][key]") {
  EnvGuard guard_a("DOGPILE_TEST_A");
  EnvGuard guard_b("DOGPILE_TEST_B");
  ::setenv("DOGPILE_TEST_A", "1", 1);
  ::setenv("DOGPILE_TEST_B", "2", 1);
  const CommandSpec both{.argv = {"x"}, .env = {"DOGPILE_TEST_A", "DOGPILE_TEST_B"}};
  const std::string k = command_key(both);
  // Order and repeats do not matter.
  CHECK(command_key({.argv = {"x"}, .env = {"DOGPILE_TEST_B", "DOGPILE_TEST_A",
                                            "DOGPILE_TEST_B"}}) == k);
  // A named variable's value does.
  ::setenv("DOGPILE_TEST_A", "3", 1);
  const std::string k3 = command_key(both);
  CHECK(k3 != k);
  // Empty and unset differ.
  ::setenv("DOGPILE_TEST_A", "", 1);
  const std::string empty = command_key(both);
  ::unsetenv("DOGPILE_TEST_A");
  const std::string unset = command_key(both);
  CHECK(empty != unset);
  CHECK(empty != k3);
  // A variable that is not named is not part of the key.
  const std::string only_b = command_key({.argv = {"x"}, .env = {"DOGPILE_TEST_B"}});
  ::setenv("DOGPILE_TEST_A", "4", 1);
  CHECK(command_key({.argv = {"x"}, .env = {"DOGPILE_TEST_B"}}) == only_b);
  // Naming a variable changes the key even when it is unset.
  ::unsetenv("DOGPILE_TEST_A");
  CHECK(command_key({.argv = {"x"}, .env = {"DOGPILE_TEST_A"}}) != command_key({.argv = {"x"}}));
}

TEST_CASE("keys: file modification times and sizes", "[command_cache][key]") {
  TempDir dir;
  const std::string a = dir / "a";
  const std::string b = dir / "b";
  write_file(a, "aaaa");
  write_file(b, "bb");
  set_mtime(a, 1700000000, 0);
  set_mtime(b, 1700000000, 0);
  const CommandSpec spec{.argv = {"x"}, .modtime = {a, b}};
  const std::string k = command_key(spec);
  CHECK(command_key({.argv = {"x"}, .modtime = {b, a, a}}) == k);
  CHECK(command_key(spec) == k);  // nothing changed

  set_mtime(a, 1700000000, 1);  // one nanosecond
  const std::string touched = command_key(spec);
  CHECK(touched != k);
  write_file(a, "aaab");  // same size: only the new mtime tells
  set_mtime(a, 1700000000, 1);
  CHECK(command_key(spec) == touched);
  write_file(a, "aaaaa");  // other size, same mtime
  set_mtime(a, 1700000000, 1);
  const std::string grown = command_key(spec);
  CHECK(grown != touched);

  REQUIRE(::unlink(a.c_str()) == 0);
  const std::string missing = command_key(spec);
  CHECK(missing != grown);
  CHECK(missing != k);
  // A file that is not named is not part of the key.
  const std::string only_b = command_key({.argv = {"x"}, .modtime = {b}});
  write_file(a, "back again");
  CHECK(command_key({.argv = {"x"}, .modtime = {b}}) == only_b);
  CHECK(command_key(spec) != missing);
}

TEST_CASE("keys: working directory only with cwd", "[command_cache][key]") {
  TempDir one;
  TempDir two;
  std::string in_one_plain, in_one_cwd;
  {
    ChdirGuard cd(one.path());
    in_one_plain = command_key({.argv = {"make"}});
    in_one_cwd = command_key({.argv = {"make"}, .cwd = true});
  }
  ChdirGuard cd(two.path());
  CHECK(command_key({.argv = {"make"}}) == in_one_plain);
  CHECK(command_key({.argv = {"make"}, .cwd = true}) != in_one_cwd);
  CHECK(in_one_cwd != in_one_plain);
}

TEST_CASE("CommandResult round-trips through a region byte for byte", "[command_cache]") {
  TempDir dir;
  const CommandResult result{.exit_code = 128 + 9,
                             .signal = 9,
                             .out = all_bytes(3) + std::string(5, '\0'),
                             .err = std::string("\0\xff\n", 3) + all_bytes(1),
                             .argv = {"sh", "-c", "kill -9 $$"},
                             .cwd = "/tmp/x y"};
  {
    Region region({.name = "exec"}, "lmdb", {{"path", dir.path()}});
    region.set("k", result);
  }
  Region region({.name = "exec"}, "lmdb", {{"path", dir.path()}});
  const std::optional<CommandResult> back = region.get<CommandResult>("k");
  REQUIRE(back);
  CHECK(*back == result);
  CHECK(back->out.size() == 3 * 256 + 5);
  CHECK_FALSE(back->succeeded());
  CHECK(CommandResult{}.succeeded());
  CHECK_FALSE(CommandResult{.exit_code = 1}.succeeded());
}

TEST_CASE("run_command captures stdout, stderr and the exit status", "[command_cache][run]") {
  CommandResult r;
  REQUIRE(run_command(sh("printf out; printf 'e1\\ne2' >&2; exit 7"), r));
  CHECK(r.out == "out");
  CHECK(r.err == "e1\ne2");
  CHECK(r.exit_code == 7);
  CHECK(r.signal == 0);

  REQUIRE(run_command({"true"}, r));  // found in PATH
  CHECK(r == CommandResult{});
}

TEST_CASE("run_command keeps every byte value, NUL included", "[command_cache][run]") {
  TempDir dir;
  const std::string bytes = all_bytes(64);
  write_file(dir / "bin", bytes);
  CommandResult r;
  REQUIRE(run_command(sh("cat '" + (dir / "bin") + "'; cat '" + (dir / "bin") + "' >&2"), r));
  CHECK(r.out == bytes);
  CHECK(r.err == bytes);
}

TEST_CASE("run_command reads both pipes at once: large output either side",
          "[command_cache][run]") {
  // 4 MiB to stderr before anything to stdout: a reader blocked on stdout
  // would never drain stderr and the command would never finish.
  CommandResult r;
  REQUIRE(run_command(
      sh("head -c 4194304 /dev/zero | tr '\\0' e >&2; head -c 12582912 /dev/zero | tr '\\0' o"),
      r));
  CHECK(r.err.size() == 4194304);
  CHECK(r.out.size() == 12582912);
  CHECK(r.err.find_first_not_of('e') == std::string::npos);
  CHECK(r.out.find_first_not_of('o') == std::string::npos);
  CHECK(r.exit_code == 0);
}

TEST_CASE("run_command reports signals as the shell does", "[command_cache][run]") {
  CommandResult r;
  REQUIRE(run_command(sh("printf before; kill -TERM $$"), r));
  CHECK(r.signal == SIGTERM);
  CHECK(r.exit_code == 128 + SIGTERM);
  CHECK(r.out == "before");
  CHECK_FALSE(r.succeeded());
}

TEST_CASE("run_command: commands that cannot start", "[command_cache][run]") {
  TempDir dir;
  CommandResult r;
  Status s = run_command({dir / "no-such-command"}, r);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.sys_errno() == ENOENT);
  s = run_command({"dogpile-no-such-command-in-path"}, r);
  CHECK(s.sys_errno() == ENOENT);

  write_file(dir / "not-executable", "#!/bin/sh\necho hi\n");
  ::chmod((dir / "not-executable").c_str(), 0600);
  s = run_command({dir / "not-executable"}, r);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.sys_errno() == EACCES);

  CHECK_FALSE(run_command({}, r));
}

TEST_CASE("CommandCache runs once and replays", "[command_cache]") {
  TempDir dir;
  const std::string log = dir / "log";
  CommandCache cache({.dir = dir / "cache"});
  const CommandSpec spec{.argv = sh("echo run >> '" + log + "'; printf 'out\\0'; echo err >&2; "
                                    "exit 3")};
  const ExecOutcome first = cache.run(spec);
  REQUIRE(first.launch);
  CHECK_FALSE(first.cached);
  CHECK(first.created_at);
  CHECK(first.key == command_key(spec));
  CHECK(same_output(first.result, CommandResult{.exit_code = 3, .out = std::string("out\0", 4),
                                                .err = "err\n"}));
  // What ran where is recorded, for people listing the cache.
  CHECK(first.result.argv == spec.argv);
  char cwd[4096];
  REQUIRE(::getcwd(cwd, sizeof cwd) != nullptr);
  CHECK(first.result.cwd == cwd);

  const ExecOutcome second = cache.run(spec);
  CHECK(second.cached);
  CHECK_FALSE(second.stale);
  CHECK(second.result == first.result);
  REQUIRE(second.created_at);
  CHECK(second.created_at >= *first.created_at);
  CHECK(read_lines(log).size() == 1);

  // Another process, another CommandCache object: still no run.
  StartGate gate;
  const auto pids = spawn(1, gate, [&](int) {
    CommandCache other({.dir = dir / "cache"});
    const ExecOutcome o = other.run(spec);
    return o.cached && o.result == first.result ? 0 : 1;
  });
  gate.open_gate();
  CHECK(reap(pids) == 0);
  CHECK(read_lines(log).size() == 1);
}

TEST_CASE("CommandCache: concurrent processes share one run", "[command_cache][multiprocess]") {
  TempDir dir;
  const std::string log = dir / "log";
  const CommandSpec spec{
      .argv = sh("echo run >> '" + log + "'; sleep 0.3; echo out; echo err >&2; exit 3")};
  StartGate gate;
  const auto pids = spawn(12, gate, [&](int) {
    CommandCache cache({.dir = dir / "cache"});
    const ExecOutcome o = cache.run(spec);
    const bool same =
        same_output(o.result, CommandResult{.exit_code = 3, .out = "out\n", .err = "err\n"});
    return same ? 0 : 1;
  });
  gate.open_gate();
  CHECK(reap(pids) == 0);
  CHECK(read_lines(log).size() == 1);
}

TEST_CASE("CommandCache: no cache file descriptor is inherited by the command",
          "[command_cache][run]") {
  TempDir dir;
  CommandCache cache({.dir = dir / "cache"});
  // The command runs while this process holds the key's creation lock; a
  // descriptor to creation.lock in the command (or in anything it leaves
  // running) would keep the lock's open file alive after we exit.
  const ExecOutcome o = cache.run({.argv = sh("for f in /proc/$$/fd/*; do readlink $f; done")});
  REQUIRE(o.launch);
  CHECK(o.result.out.find("creation.lock") == std::string::npos);
  CHECK(o.result.out.find("lock.mdb") == std::string::npos);
  CHECK(o.result.out.find("data.mdb") == std::string::npos);
}

TEST_CASE("CommandCache: force reruns, discard_failures does not store failures",
          "[command_cache]") {
  TempDir dir;
  const std::string log = dir / "log";
  CommandCache cache({.dir = dir / "cache"});
  const CommandSpec counting{.argv = sh("echo run >> '" + log + "'; wc -l < '" + log + "'")};
  CHECK(cache.run(counting).result.out == "1\n");
  CHECK(cache.run(counting).result.out == "1\n");
  const ExecOutcome forced = cache.run(counting, {.force = true});
  CHECK_FALSE(forced.cached);
  CHECK(forced.result.out == "2\n");
  CHECK(cache.run(counting).result.out == "2\n");  // the forced result was stored

  const std::string fail_log = dir / "fail-log";
  const CommandSpec failing{.argv = sh("echo run >> '" + fail_log + "'; exit 1")};
  CHECK(cache.run(failing, {.discard_failures = true}).result.exit_code == 1);
  CHECK_FALSE(cache.run(failing, {.discard_failures = true}).cached);
  CHECK(read_lines(fail_log).size() == 2);
  const CommandSpec killed{.argv = sh("echo run >> '" + fail_log + "'; kill -KILL $$")};
  CHECK(cache.run(killed, {.discard_failures = true}).result.signal == SIGKILL);
  CHECK_FALSE(cache.run(killed, {.discard_failures = true}).cached);
  CHECK(read_lines(fail_log).size() == 4);
  // Without the option a failure is a result like any other.
  CHECK_FALSE(cache.run(failing).cached);
  CHECK(cache.run(failing).cached);
  CHECK(read_lines(fail_log).size() == 5);
  // And a success is stored with it.
  const CommandSpec ok{.argv = sh("echo run >> '" + fail_log + "'")};
  CHECK_FALSE(cache.run(ok, {.discard_failures = true}).cached);
  CHECK(cache.run(ok, {.discard_failures = true}).cached);
}

TEST_CASE("CommandCache: a command that cannot start is reported, not stored",
          "[command_cache]") {
  TempDir dir;
  CommandCache cache({.dir = dir / "cache"});
  const CommandSpec spec{.argv = {dir / "missing", "arg"}};
  const ExecOutcome o = cache.run(spec);
  CHECK_FALSE(o.launch);
  CHECK(o.launch.sys_errno() == ENOENT);
  CHECK(same_output(o.result, CommandResult{}));
  CHECK_FALSE(exec_region(dir / "cache").get_value_metadata(o.key));
  // Once it exists, it runs.
  write_file(dir / "missing", "#!/bin/sh\necho now\n");
  ::chmod((dir / "missing").c_str(), 0700);
  const ExecOutcome later = cache.run(spec);
  CHECK(later.launch);
  CHECK(later.result.out == "now\n");
}

TEST_CASE("CommandCache: ttl regenerates old results", "[command_cache]") {
  TempDir dir;
  const std::string log = dir / "log";
  auto clock = std::make_shared<FakeClock>();
  CommandCache cache({.dir = dir / "cache", .clock = clock});
  const CommandSpec spec{.argv = sh("echo run >> '" + log + "'; wc -l < '" + log + "'")};
  const ExecOptions ttl{.ttl = 10s};
  CHECK(cache.run(spec, ttl).result.out == "1\n");
  clock->advance(9s);
  CHECK(cache.run(spec, ttl).result.out == "1\n");
  clock->advance(1s);
  const ExecOutcome regenerated = cache.run(spec, ttl);
  CHECK_FALSE(regenerated.cached);
  CHECK(regenerated.result.out == "2\n");
  // Without a ttl a result is kept, whatever an earlier call's ttl was.
  clock->advance(24h);
  CHECK(cache.run(spec).cached);
  CHECK(cache.run(spec).result.out == "2\n");
  // The stored entry carries ttl as its expiry, for purge.
  const std::optional<Metadata> meta = exec_region(dir / "cache").get_value_metadata(
      regenerated.key);
  REQUIRE(meta);
  REQUIRE(meta->expires_at);
  CHECK(*meta->expires_at - meta->created_at == 10s);
}

TEST_CASE("CommandCache: stale results are served while one detached refresh runs",
          "[command_cache][multiprocess]") {
  TempDir dir;
  const std::string log = dir / "log";
  const std::string gate_file = dir / "gate";
  auto clock = std::make_shared<FakeClock>();
  const CommandSpec spec{.argv = sh("n=$(wc -l < '" + log + "'); echo run$n >> '" + log +
                                    "'; while [ ! -e '" + gate_file +
                                    "' ]; do sleep 0.01; done; echo v$n")};
  const ExecOptions options{.ttl = 100s, .stale = 10s};
  write_file(log, "");
  write_file(gate_file, "");
  CommandCache cache({.dir = dir / "cache", .clock = clock});
  const ExecOutcome first = cache.run(spec, options);
  CHECK(first.result.out == "v0\n");

  // Older than stale, younger than ttl: served at once (the refresh is held
  // at the gate, so a caller waiting for it could not return), refreshed in
  // the background.
  REQUIRE(::unlink(gate_file.c_str()) == 0);
  clock->advance(20s);
  const ExecOutcome stale = cache.run(spec, options);
  CHECK(stale.cached);
  CHECK(stale.stale);
  CHECK(stale.refresh_started);
  CHECK(stale.result.out == "v0\n");
  REQUIRE(wait_for_line(log, "run1"));
  // While it runs, other callers (other processes too) get the old result and start nothing.
  CHECK(cache.run(spec, options).result.out == "v0\n");
  StartGate start;
  const auto pids = spawn(6, start, [&](int) {
    CommandCache other({.dir = dir / "cache", .clock = clock});
    const ExecOutcome o = other.run(spec, options);
    return o.stale && o.result.out == "v0\n" ? 0 : 1;
  });
  start.open_gate();
  CHECK(reap(pids) == 0);
  write_file(gate_file, "");
  REQUIRE(wait_for_refresh(dir / "cache", log, "run1", first.key));

  const ExecOutcome after = cache.run(spec, options);
  CHECK(after.cached);
  CHECK_FALSE(after.stale);
  CHECK(after.result.out == "v1\n");
  CHECK(read_lines(log) == std::vector<std::string>{"run0", "run1"});

  // Younger than stale: fresh, nothing started.
  clock->advance(5s);
  const ExecOutcome fresh = cache.run(spec, options);
  CHECK_FALSE(fresh.stale);
  CHECK_FALSE(fresh.refresh_started);
  // Past ttl: regenerated in the foreground.
  clock->advance(200s);
  const ExecOutcome expired = cache.run(spec, options);
  CHECK_FALSE(expired.cached);
  CHECK(expired.result.out == "v2\n");
}

TEST_CASE("CommandCache: warm refreshes in the background", "[command_cache]") {
  TempDir dir;
  const std::string log = dir / "log";
  write_file(log, "");
  CommandCache cache({.dir = dir / "cache"});
  const CommandSpec spec{.argv = sh("n=$(wc -l < '" + log + "'); echo run$n >> '" + log +
                                    "'; echo v$n")};
  // On an empty cache, and with a result stored.
  const std::string key = cache.warm(spec);
  CHECK(key == command_key(spec));
  REQUIRE(wait_for_refresh(dir / "cache", log, "run0", key));
  CHECK(cache.run(spec).result.out == "v0\n");
  cache.warm(spec);
  REQUIRE(wait_for_refresh(dir / "cache", log, "run1", key));
  const ExecOutcome o = cache.run(spec);
  CHECK(o.cached);
  CHECK(o.result.out == "v1\n");
}

TEST_CASE("CommandCache: bad options and bad directories", "[command_cache]") {
  TempDir dir;
  CommandCache cache({.dir = dir / "cache"});
  CHECK_THROWS_AS(cache.run({.argv = {}}), ConfigError);
  CHECK_THROWS_AS(cache.run({.argv = {"true"}}, {.stale = 1s}), ConfigError);
  CHECK_THROWS_AS(cache.run({.argv = {"true"}}, {.ttl = 0s}), ConfigError);
  // stale is bkt's: a threshold below the ttl.
  CHECK_THROWS_AS(cache.run({.argv = {"true"}}, {.ttl = 10s, .stale = 10s}), ConfigError);
  CHECK_THROWS_AS(cache.run({.argv = {"true"}}, {.ttl = 10s, .stale = 1h}), ConfigError);
  CHECK_THROWS_AS(cache.run({.argv = {"true"}}, {.ttl = 10s, .stale = 0s}), ConfigError);
  CHECK_THROWS_AS(cache.run({.argv = {"true"}, .env = {"A=B"}}), ConfigError);
  CHECK_THROWS_AS(cache.run({.argv = {"true"}}, {.max_output = kMaxExecOutput + 1}), ConfigError);
  CHECK_THROWS_AS(cache.run({.argv = {"true"}}, {.max_input = kMaxExecOutput + 1}), ConfigError);

  write_file(dir / "file", "not a directory");
  try {
    CommandCache bad({.dir = dir / "file"});
    FAIL("a file was accepted as a cache directory");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find(dir / "file") != std::string::npos);
  }
}

TEST_CASE("run_command feeds input, then the rest of this process's stdin",
          "[command_cache][run][stdin]") {
  TempDir dir;
  CommandResult r;
  RunReport report;
  const std::string input = "given\n";
  REQUIRE(run_command({"cat"}, {.input = &input}, r, report));
  CHECK(r.out == "given\n");

  // Larger than any pipe buffer, fed while the output is read.
  const std::string big = all_bytes(4096);  // 1 MiB
  REQUIRE(run_command({"cat"}, {.input = &big}, r, report));
  CHECK(r.out == big);

  const std::string head = "already read|";
  StdinFile stdin_file(dir / "in", "rest of stdin");
  REQUIRE(run_command({"cat"}, {.input = &head, .input_continues = true}, r, report));
  CHECK(r.out == "already read|rest of stdin");
}

TEST_CASE("run_command: a command that stops reading its input costs nothing",
          "[command_cache][run][stdin]") {
  // 8 MiB into `head -c 1`: the pipe closes early; SIGPIPE must not reach us.
  const std::string big(8 << 20, 'x');
  CommandResult r;
  RunReport report;
  REQUIRE(run_command({"head", "-c", "1"}, {.input = &big}, r, report));
  CHECK(r.out == "x");
  CHECK(r.exit_code == 0);
  REQUIRE(run_command({"true"}, {.input = &big}, r, report));
  CHECK(r.exit_code == 0);
  sigset_t pending;
  sigemptyset(&pending);
  ::sigpending(&pending);
  CHECK_FALSE(sigismember(&pending, SIGPIPE));
}

TEST_CASE("run_command: output past max_output streams through or is dropped",
          "[command_cache][run][limits]") {
  TempDir dir;
  const auto script = sh("printf 'early '; printf 'warn ' >&2; head -c 100000 /dev/zero | tr '\\0' z; "
                         "printf ' late' >&2; exit 5");
  CommandResult r;
  RunReport report;
  {
    FdRedirect out(STDOUT_FILENO, open_file(dir / "out", O_WRONLY | O_CREAT | O_TRUNC));
    FdRedirect err(STDERR_FILENO, open_file(dir / "err", O_WRONLY | O_CREAT | O_TRUNC));
    REQUIRE(run_command(script, {.max_output = 1000}, r, report));
  }
  CHECK(report.overflowed);
  CHECK(r.exit_code == 5);
  CHECK(r.out.empty());
  CHECK(r.err.empty());
  CHECK(read_file(dir / "out") == "early " + std::string(100000, 'z'));
  CHECK(read_file(dir / "err") == "warn  late");

  // Within the limit: all kept, nothing written through.
  REQUIRE(run_command(script, {.max_output = 100016}, r, report));
  CHECK_FALSE(report.overflowed);
  CHECK(r.out.size() == 100006);

  // Dropped: nothing kept, nothing written, the run still ends normally.
  {
    FdRedirect out(STDOUT_FILENO, open_file(dir / "out2", O_WRONLY | O_CREAT | O_TRUNC));
    REQUIRE(run_command(script, {.max_output = 10, .stream_overflow = false}, r, report));
  }
  CHECK(report.overflowed);
  CHECK(r.exit_code == 5);
  CHECK(read_file(dir / "out2").empty());
}

TEST_CASE("run_command: when the reader of streamed output leaves, the command meets EPIPE",
          "[command_cache][run][limits]") {
  // `yes` never ends by itself: only a closed pipe stops it, as in `yes | head`.
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  std::thread reader([fd = fds[0]] {
    char buf[20];
    std::size_t got = 0;
    while (got < sizeof buf) {
      const ssize_t n = ::read(fd, buf + got, sizeof buf - got);
      if (n <= 0) break;
      got += static_cast<std::size_t>(n);
    }
    ::close(fd);
  });
  CommandResult r;
  RunReport report;
  Status s;
  {
    FdRedirect out(STDOUT_FILENO, fds[1]);
    s = run_command({"yes"}, {.max_output = 4096}, r, report);
  }
  reader.join();
  REQUIRE(s);
  CHECK(report.overflowed);
  CHECK(r.signal == SIGPIPE);
  CHECK(r.exit_code == 128 + SIGPIPE);
}

TEST_CASE("CommandCache: stdin that carries data is part of the key",
          "[command_cache][stdin]") {
  TempDir dir;
  const std::string log = dir / "log";
  CommandCache cache({.dir = dir / "cache"});
  const CommandSpec wc{.argv = sh("echo run >> '" + log + "'; wc -c")};
  const auto run_with = [&](auto&& make_stdin, const CommandSpec& spec) {
    auto redirect = make_stdin();
    return cache.run(spec);
  };
  const auto pipe_of = [](std::string bytes) {
    return [bytes] { return std::make_unique<StdinPipe>(bytes); };
  };
  const ExecOutcome a = run_with(pipe_of("a\n"), wc);
  const ExecOutcome b = run_with(pipe_of("abcdef\n"), wc);
  const ExecOutcome a2 = run_with(pipe_of("a\n"), wc);
  CHECK(a.result.out == "2\n");
  CHECK(b.result.out == "7\n");
  CHECK_FALSE(b.cached);
  CHECK(a2.cached);
  CHECK(a2.result.out == "2\n");
  // A file holding the same bytes is the same input.
  const ExecOutcome from_file = run_with(
      [&] { return std::make_unique<StdinFile>(dir / "in", "abcdef\n"); }, wc);
  CHECK(from_file.cached);
  CHECK(from_file.result.out == "7\n");
  CHECK(read_lines(log).size() == 2);

  // /dev/null (the tests' own stdin) is not data: no input in the key.
  const ExecOutcome null_in = cache.run(wc);
  CHECK(null_in.key == command_key(wc));
  CHECK(null_in.result.out == "0\n");
  // kIgnore: the command reads stdin, which is not in the key.
  CommandSpec ignore = wc;
  ignore.stdin_policy = StdinPolicy::kIgnore;
  const ExecOutcome ignored = run_with(pipe_of("ignored\n"), ignore);
  CHECK(ignored.key == command_key(wc));
  CHECK(ignored.cached);  // the /dev/null run's result
  CHECK(ignored.result.out == "0\n");
}

TEST_CASE("CommandCache: stdin past max_input runs uncached with all of it",
          "[command_cache][stdin][limits]") {
  TempDir dir;
  const std::string log = dir / "log";
  CommandCache cache({.dir = dir / "cache"});
  const CommandSpec spec{.argv = sh("echo run >> '" + log + "'; wc -c")};
  const std::string input(100000, 'i');
  ExecOutcome o;
  {
    StdinFile in(dir / "in", input);
    FdRedirect out(STDOUT_FILENO, open_file(dir / "out", O_WRONLY | O_CREAT | O_TRUNC));
    o = cache.run(spec, {.max_input = 1000});
  }
  CHECK(o.overflow == Overflow::kInput);
  CHECK_FALSE(o.cached);
  CHECK(o.key.empty());
  CHECK(o.result.exit_code == 0);
  CHECK(o.result.out.empty());
  CHECK(read_file(dir / "out") == "100000\n");  // streamed, every byte of stdin read
  Region region = exec_region(dir / "cache");
  CommandSpec with_input = spec;
  with_input.input = input;
  CHECK_FALSE(region.get_value_metadata(command_key(with_input)));
  {
    StdinFile in(dir / "in", input);
    CHECK_THROWS_AS(cache.warm(spec, {.max_input = 1000}), ConfigError);
  }
  // Within the limit it is a key like any other.
  StdinFile in(dir / "in", input);
  const ExecOutcome kept = cache.run(spec, {.max_input = 100000});
  CHECK(kept.overflow == Overflow::kNone);
  CHECK(kept.result.out == "100000\n");
  CHECK(region.get_value_metadata(kept.key));
}

TEST_CASE("CommandCache: output past max_output streams and is not stored",
          "[command_cache][limits]") {
  TempDir dir;
  const std::string log = dir / "log";
  CommandCache cache({.dir = dir / "cache"});
  const CommandSpec spec{.argv = sh("echo run >> '" + log + "'; head -c 5000 /dev/zero; exit 3")};
  ExecOutcome first;
  {
    FdRedirect out(STDOUT_FILENO, open_file(dir / "out", O_WRONLY | O_CREAT | O_TRUNC));
    first = cache.run(spec, {.max_output = 4096});
  }
  CHECK(first.overflow == Overflow::kOutput);
  CHECK(first.result.exit_code == 3);
  CHECK(first.result.out.empty());
  CHECK(read_file(dir / "out").size() == 5000);
  CHECK_FALSE(exec_region(dir / "cache").get_value_metadata(first.key));
  // The next call runs again; with room, it is stored.
  const ExecOutcome second = cache.run(spec);
  CHECK_FALSE(second.cached);
  CHECK(second.result.out.size() == 5000);
  CHECK(cache.run(spec).cached);
  CHECK(read_lines(log).size() == 2);
}

TEST_CASE("CommandCache: a run killed by a signal is stored only with cache_signals",
          "[command_cache]") {
  TempDir dir;
  const std::string log = dir / "log";
  CommandCache cache({.dir = dir / "cache"});
  const CommandSpec killed{.argv = sh("echo run >> '" + log + "'; kill -KILL $$")};
  CHECK(cache.run(killed).result.signal == SIGKILL);
  CHECK_FALSE(cache.run(killed).cached);
  CHECK(read_lines(log).size() == 2);
  CHECK_FALSE(cache.run(killed, {.cache_signals = true}).cached);
  const ExecOutcome kept = cache.run(killed, {.cache_signals = true});
  CHECK(kept.cached);
  CHECK(kept.result.exit_code == 128 + SIGKILL);
  CHECK(read_lines(log).size() == 3);
}
