// Creation locks on one lock file: threads, processes, fork, exec, death.
//
// Children are real fork()ed processes. They never use Catch2 macros: they
// report through exit codes and pipes, and always leave with _exit. Catch2
// macros are also kept out of std::thread bodies (they are not thread-safe).
#include "file_lock.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "test_util.h"

extern char** environ;

namespace {

using dogpile::Status;
using dogpile::StatusCode;
using dogpile::internal::LockFile;
using std::chrono::steady_clock;
using namespace std::chrono_literals;

// A temporary cache directory and the lock file's place in it.
class TempDir : public dogpile::test::TempDir {
 public:
  std::string file(const std::string& name) const { return *this / name; }
  std::string lock_path() const { return file(LockFile::kFileName); }
};

std::shared_ptr<LockFile> open_lock(const std::string& path) {
  std::shared_ptr<LockFile> file;
  const Status s = LockFile::open(path, file);
  INFO(s.to_string());
  REQUIRE(s.is_ok());
  REQUIRE(file != nullptr);
  return file;
}

// In a child: open or leave with `code`.
std::shared_ptr<LockFile> open_lock_or_exit(const std::string& path, int code) {
  std::shared_ptr<LockFile> file;
  if (!LockFile::open(path, file).is_ok()) ::_exit(code);
  return file;
}

// A pipe for synchronising processes and threads: one byte or one value per
// message. Close-on-exec, so exec'd programs keep none of them open.
class Pipe {
 public:
  Pipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe2");
    read_ = fds[0];
    write_ = fds[1];
  }
  ~Pipe() {
    close_read();
    close_write();
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;

  template <typename T>
  void send(const T& value) {
    const char* p = reinterpret_cast<const char*>(&value);
    std::size_t left = sizeof value;
    while (left > 0) {
      const ssize_t n = ::write(write_, p, left);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;  // the reader is gone; it will notice on its side
      p += n;
      left -= static_cast<std::size_t>(n);
    }
  }
  void signal() { send('x'); }

  // False on end of file (every writer closed or died) or error.
  template <typename T>
  bool receive(T& value) {
    char* p = reinterpret_cast<char*>(&value);
    std::size_t left = sizeof value;
    while (left > 0) {
      const ssize_t n = ::read(read_, p, left);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      p += n;
      left -= static_cast<std::size_t>(n);
    }
    return true;
  }
  bool wait() {
    char c;
    return receive(c);
  }

  void close_read() {
    if (read_ >= 0) ::close(std::exchange(read_, -1));
  }
  void close_write() {
    if (write_ >= 0) ::close(std::exchange(write_, -1));
  }

 private:
  int read_ = -1;
  int write_ = -1;
};

// Exit status as a number: the exit code, or 128 + signal.
int decode_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// A process this test started (a child, or a grandchild that was reparented
// to us as subreaper). Killed and reaped on scope exit if still there.
class Process {
 public:
  explicit Process(pid_t pid = -1) : pid_(pid) {}
  ~Process() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
    }
    // Grandchildren orphaned by a failed test end up here too.
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  void reset(pid_t pid) { pid_ = pid; }
  bool alive() const { return pid_ > 0 && ::kill(pid_, 0) == 0 && !zombie(); }

  // Waits for the exit and returns decode_status's number.
  int wait() {
    int status = 0;
    pid_t r;
    while ((r = ::waitpid(pid_, &status, 0)) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    return r < 0 ? -1 : decode_status(status);
  }
  void kill_and_wait() {
    ::kill(pid_, SIGKILL);
    wait();
  }

 private:
  bool zombie() const {
    std::FILE* f = std::fopen(("/proc/" + std::to_string(pid_) + "/stat").c_str(), "r");
    if (f == nullptr) return true;
    char state = '?';
    const int n = std::fscanf(f, "%*d (%*[^)]) %c", &state);
    std::fclose(f);
    return n != 1 || state == 'Z';
  }

  pid_t pid_;
};

// Runs `body` in a forked child, which leaves with the int it returns.
template <typename F>
pid_t spawn(F body) {
  std::fflush(nullptr);  // no stdio buffer is flushed twice
  const pid_t pid = ::fork();
  if (pid < 0) throw std::system_error(errno, std::generic_category(), "fork");
  if (pid == 0) {
    int code = 97;
    try {
      code = body();
    } catch (...) {
      code = 98;
    }
    ::_exit(code);
  }
  return pid;
}

// Lets this process reap grandchildren whose parent the test killed.
void become_subreaper() { REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0); }

// Targets of /proc/<pid>/fd/* that name `needle`.
std::vector<std::string> fds_naming(pid_t pid, const std::string& needle) {
  std::vector<std::string> found;
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    std::error_code link_ec;
    const auto target = std::filesystem::read_symlink(entry.path(), link_ec);
    if (!link_ec && target.string().find(needle) != std::string::npos) {
      found.push_back(target.string());
    }
  }
  return found;
}

std::chrono::microseconds us_since(steady_clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::microseconds>(steady_clock::now() - start);
}

}  // namespace

TEST_CASE("threads of one process exclude each other", "[file_lock]") {
  TempDir dir;
  auto file = open_lock(dir.lock_path());
  const auto offset = LockFile::offset_for("region", "key");
  const auto other_offset = LockFile::offset_for("region", "other key");
  auto holder = file->mutex(offset);
  REQUIRE(holder->try_lock().is_ok());
  CHECK(holder->is_locked_anywhere());

  StatusCode try_code{}, timed_code{}, other_key_code{};
  bool seen_locked = false;
  std::thread([&] {
    auto m = file->mutex(offset);
    try_code = m->try_lock().code();
    timed_code = m->lock(20ms).code();
    seen_locked = m->is_locked_anywhere();
    auto other = file->mutex(other_offset);
    other_key_code = other->try_lock().code();  // held until `other` goes
  }).join();
  CHECK(try_code == StatusCode::kBusy);
  CHECK(timed_code == StatusCode::kTimedOut);
  CHECK(seen_locked);
  CHECK(other_key_code == StatusCode::kOk);
  CHECK_FALSE(file->mutex(other_offset)->is_locked_anywhere());  // released with its object

  holder->unlock();
  CHECK_FALSE(holder->is_locked_anywhere());
  StatusCode after_unlock{};
  std::thread([&] { after_unlock = file->mutex(offset)->try_lock().code(); }).join();
  CHECK(after_unlock == StatusCode::kOk);

  SECTION("a waiting thread gets the lock when it is released") {
    const std::optional<steady_clock::duration> timeout =
        GENERATE(std::optional<steady_clock::duration>{}, std::optional<steady_clock::duration>{5s});
    REQUIRE(holder->try_lock().is_ok());
    Pipe started;
    std::atomic<bool> acquired{false};
    StatusCode wait_code{};
    std::thread waiter([&] {
      auto m = file->mutex(offset);
      started.signal();
      wait_code = m->lock(timeout).code();
      acquired = true;
    });
    REQUIRE(started.wait());
    std::this_thread::sleep_for(30ms);  // a negative check: nothing to wait for
    CHECK_FALSE(acquired.load());
    holder->unlock();
    waiter.join();
    CHECK(wait_code == StatusCode::kOk);
  }
}

TEST_CASE("a thread locking what it holds gets kReentrant, not a hang", "[file_lock]") {
  TempDir dir;
  auto file = open_lock(dir.lock_path());
  auto same_file_again = open_lock(dir.lock_path());  // another LockFile, same inode
  const auto offset = LockFile::offset_for("region", "key");
  auto held = file->mutex(offset);
  REQUIRE(held->lock(std::nullopt).is_ok());

  auto second = file->mutex(offset);
  // REQUIREs first: should the check break, the blocking calls would hang.
  REQUIRE(second->try_lock().code() == StatusCode::kReentrant);
  REQUIRE(second->lock(10ms).code() == StatusCode::kReentrant);
  REQUIRE(same_file_again->mutex(offset)->try_lock().code() == StatusCode::kReentrant);
  CHECK(second->lock(std::nullopt).code() == StatusCode::kReentrant);
  CHECK(held->try_lock().code() == StatusCode::kReentrant);
  CHECK(same_file_again->mutex(offset)->lock(std::nullopt).code() == StatusCode::kReentrant);
  const Status s = second->try_lock();
  CHECK(s.path() == dir.lock_path());

  // Only the holding thread is reentrant; others are merely busy.
  StatusCode other_thread{};
  std::thread([&] { other_thread = file->mutex(offset)->try_lock().code(); }).join();
  CHECK(other_thread == StatusCode::kBusy);

  held->unlock();
  CHECK(second->try_lock().is_ok());
}

TEST_CASE("a lock may be released by another thread than its locker", "[file_lock]") {
  // The async creation runner releases locks that a caller's thread took.
  TempDir dir;
  auto file = open_lock(dir.lock_path());
  const auto offset = LockFile::offset_for("region", "key");
  auto m = file->mutex(offset);
  REQUIRE(m->lock(std::nullopt).is_ok());
  StatusCode runner_sees{};
  std::thread([&] {
    runner_sees = file->mutex(offset)->try_lock().code();
    m->unlock();
  }).join();
  CHECK(runner_sees == StatusCode::kBusy);
  CHECK_FALSE(m->is_locked_anywhere());
  // The locker's thread keeps no stale record that would make it reentrant.
  auto again = file->mutex(offset);
  CHECK(again->try_lock().is_ok());
}

TEST_CASE("destroying a held mutex releases it; a mutex outlives its LockFile", "[file_lock]") {
  TempDir dir;
  auto file = open_lock(dir.lock_path());
  const auto offset = LockFile::offset_for("region", "key");
  auto m = file->mutex(offset);
  REQUIRE(m->try_lock().is_ok());
  m.reset();
  auto probe = file->mutex(offset);
  CHECK_FALSE(probe->is_locked_anywhere());
  REQUIRE(probe->try_lock().is_ok());
  probe->unlock();
  probe->unlock();  // unlocking what is not held does nothing

  auto orphan = file->mutex(offset);
  file.reset();
  REQUIRE(orphan->try_lock().is_ok());
  CHECK(orphan->is_locked_anywhere());
  auto other_view = open_lock(dir.lock_path());
  CHECK(other_view->mutex(offset)->is_locked_anywhere());
  orphan.reset();
  CHECK_FALSE(other_view->mutex(offset)->is_locked_anywhere());
}

TEST_CASE("timeouts at the edges", "[file_lock]") {
  TempDir dir;
  auto file = open_lock(dir.lock_path());
  const auto offset = LockFile::offset_for("region", "key");
  auto free_one = file->mutex(offset);
  // A timeout too long for the clock means no timeout, not an overflow.
  REQUIRE(free_one->lock(steady_clock::duration::max()).is_ok());
  StatusCode zero{}, negative{};
  std::thread([&] {
    auto m = file->mutex(offset);
    zero = m->lock(0ms).code();
    negative = m->lock(-1s).code();
  }).join();
  CHECK(zero == StatusCode::kTimedOut);
  CHECK(negative == StatusCode::kTimedOut);
  free_one->unlock();
  CHECK(file->mutex(offset)->lock(0ms).is_ok());
}

TEST_CASE("another process's lock: busy, timed out, visible from both sides", "[file_lock]") {
  TempDir dir;
  const std::string path = dir.lock_path();
  auto file = open_lock(path);
  const auto offset = LockFile::offset_for("region", "key");
  Pipe held, release, released;
  Process child(spawn([&] {
    auto f = open_lock_or_exit(path, 10);
    auto m = f->mutex(offset);
    if (!m->try_lock().is_ok()) return 11;
    held.signal();
    if (!release.wait()) return 12;
    const bool seen = m->is_locked_anywhere();
    m->unlock();
    released.signal();
    return seen ? 0 : 13;
  }));
  REQUIRE(held.wait());

  auto m = file->mutex(offset);
  CHECK(m->is_locked_anywhere());
  CHECK(m->try_lock().code() == StatusCode::kBusy);
  const auto start = steady_clock::now();
  const Status timed = m->lock(50ms);
  const auto waited = steady_clock::now() - start;
  CHECK(timed.code() == StatusCode::kTimedOut);
  CHECK(waited >= 50ms);
  CHECK(waited < 1s);

  release.signal();
  REQUIRE(released.wait());
  CHECK(m->try_lock().is_ok());
  CHECK(child.wait() == 0);
}

TEST_CASE("a waiter takes over at once when the holder is SIGKILLed", "[file_lock][death]") {
  TempDir dir;
  const std::string path = dir.lock_path();
  auto file = open_lock(path);
  const auto offset = LockFile::offset_for("region", "key");
  const std::optional<steady_clock::duration> timeout =
      GENERATE(std::optional<steady_clock::duration>{}, std::optional<steady_clock::duration>{10s});
  constexpr int kRounds = 5;
  std::chrono::microseconds worst{0};
  std::vector<long long> measured;
  for (int round = 0; round < kRounds; ++round) {
    Pipe held, never;
    Process holder(spawn([&] {
      auto f = open_lock_or_exit(path, 10);
      auto m = f->mutex(offset);
      if (!m->lock(std::nullopt).is_ok()) return 11;
      held.signal();
      never.wait();  // until killed
      return 0;
    }));
    REQUIRE(held.wait());

    Pipe started;
    std::atomic<bool> acquired{false};
    StatusCode code{};
    steady_clock::time_point acquired_at;
    std::thread waiter([&] {
      auto m = file->mutex(offset);
      started.signal();
      code = m->lock(timeout).code();
      acquired_at = steady_clock::now();
      acquired = true;
    });
    REQUIRE(started.wait());
    std::this_thread::sleep_for(20ms);  // let it block in the kernel (or poll)
    CHECK_FALSE(acquired.load());
    const auto killed_at = steady_clock::now();
    ::kill(holder.pid(), SIGKILL);
    waiter.join();
    CHECK(holder.wait() == 128 + SIGKILL);
    REQUIRE(code == StatusCode::kOk);
    const auto takeover = std::chrono::duration_cast<std::chrono::microseconds>(acquired_at - killed_at);
    measured.push_back(takeover.count());
    worst = std::max(worst, takeover);
  }
  std::string all;
  for (const long long us : measured) all += std::to_string(us) + " ";
  WARN("takeover after SIGKILL, " << (timeout ? "timed (polling) wait" : "blocking wait")
                                  << ", microseconds per round: " << all);
  REQUIRE(worst < 2s);
}

TEST_CASE("a forked child holds none of its parent's locks", "[file_lock][fork]") {
  become_subreaper();
  TempDir dir;
  const std::string path = dir.lock_path();
  auto file = open_lock(path);
  const auto offset = LockFile::offset_for("region", "key");
  const auto offset2 = LockFile::offset_for("region", "key 2");

  SECTION("the parent unlocks, reuses the descriptor and exits; the child lives on") {
    Pipe to_a, from_a, to_b, from_b;
    Process b;
    Process a(spawn([&] {
      auto f = open_lock_or_exit(path, 10);
      auto m = f->mutex(offset);
      if (!m->lock(std::nullopt).is_ok()) return 11;
      const pid_t b_pid = spawn([&] {
        // The inherited object no longer holds: it competes like anyone.
        const StatusCode inherited = m->try_lock().code();
        const StatusCode fresh = f->mutex(offset)->try_lock().code();
        const bool seen = f->mutex(offset)->is_locked_anywhere();
        from_b.send(inherited);
        from_b.send(fresh);
        from_b.send(seen);
        to_b.wait();
        return 0;
      });
      from_a.send(b_pid);
      if (!to_a.wait()) return 12;
      m->unlock();  // its descriptor goes to the pool...
      auto m2 = f->mutex(offset2);
      if (!m2->try_lock().is_ok()) return 13;  // ...and is reused here
      from_a.signal();
      to_a.wait();
      ::_exit(0);  // dies holding offset2: no destructor releases it
    }));
    pid_t b_pid = -1;
    REQUIRE(from_a.receive(b_pid));
    b.reset(b_pid);
    StatusCode inherited{}, fresh{};
    bool seen = false;
    REQUIRE(from_b.receive(inherited));
    REQUIRE(from_b.receive(fresh));
    REQUIRE(from_b.receive(seen));
    CHECK(inherited == StatusCode::kBusy);
    CHECK(fresh == StatusCode::kBusy);
    CHECK(seen);
    CHECK(file->mutex(offset)->try_lock().code() == StatusCode::kBusy);

    to_a.signal();
    REQUIRE(from_a.wait());
    CHECK(file->mutex(offset)->try_lock().is_ok());  // a third party, while B lives
    CHECK(file->mutex(offset2)->try_lock().code() == StatusCode::kBusy);
    to_a.signal();
    CHECK(a.wait() == 0);
    REQUIRE(b.alive());
    CHECK_FALSE(file->mutex(offset2)->is_locked_anywhere());
    CHECK(file->mutex(offset2)->try_lock().is_ok());
    to_b.signal();
    CHECK(b.wait() == 0);
  }

  SECTION("the holder is SIGKILLed; its forked child lives on") {
    Pipe from_a, from_b, never;
    Process b;
    Process a(spawn([&] {
      auto f = open_lock_or_exit(path, 10);
      auto m = f->mutex(offset);
      if (!m->lock(std::nullopt).is_ok()) return 11;
      const pid_t b_pid = spawn([&] {
        never.close_write();  // so that the test closing its end means end of file
        // Until the child's atfork handler ran, its copied descriptor table
        // still refers to the parent's lock; this runs after it.
        from_b.signal();
        never.wait();
        return 0;
      });
      from_a.send(b_pid);
      never.wait();
      return 0;
    }));
    pid_t b_pid = -1;
    REQUIRE(from_a.receive(b_pid));
    b.reset(b_pid);
    REQUIRE(from_b.wait());
    CHECK(file->mutex(offset)->try_lock().code() == StatusCode::kBusy);
    a.kill_and_wait();
    REQUIRE(b.alive());
    CHECK_FALSE(file->mutex(offset)->is_locked_anywhere());
    CHECK(file->mutex(offset)->try_lock().is_ok());
    never.close_write();  // B reads end of file and leaves
    CHECK(b.wait() == 0);
  }
}

TEST_CASE("an exec'd child keeps no lock descriptor", "[file_lock][fork]") {
  become_subreaper();
  TempDir dir;
  const std::string path = dir.lock_path();
  auto file = open_lock(path);
  const auto offset = LockFile::offset_for("region", "key");
  // fork+exec runs the atfork handlers; posix_spawn does not, so there only
  // O_CLOEXEC keeps the descriptors from the new program.
  const bool use_posix_spawn = GENERATE(false, true);
  CAPTURE(use_posix_spawn);

  Pipe from_a, never;
  Process b;
  Process a(spawn([&] {
    auto f = open_lock_or_exit(path, 10);
    auto m = f->mutex(offset);
    if (!m->lock(std::nullopt).is_ok()) return 11;
    char arg0[] = "sleep";
    char arg1[] = "30";
    char* argv[] = {arg0, arg1, nullptr};
    pid_t b_pid = -1;
    if (use_posix_spawn) {
      // Returns once the program runs (glibc spawns with CLONE_VFORK).
      if (::posix_spawn(&b_pid, "/bin/sleep", nullptr, nullptr, argv, environ) != 0) return 12;
    } else {
      Pipe exec_done;  // close-on-exec: end of file means the exec happened
      b_pid = ::fork();
      if (b_pid < 0) return 13;
      if (b_pid == 0) {
        ::execv("/bin/sleep", argv);
        exec_done.send(errno);
        ::_exit(127);
      }
      exec_done.close_write();
      int exec_errno = 0;
      if (exec_done.receive(exec_errno)) return 14;
    }
    from_a.send(b_pid);
    never.wait();
    return 0;
  }));
  pid_t b_pid = -1;
  REQUIRE(from_a.receive(b_pid));
  b.reset(b_pid);
  REQUIRE(b.alive());
  CHECK(fds_naming(b_pid, LockFile::kFileName).empty());
  CHECK_FALSE(fds_naming(a.pid(), LockFile::kFileName).empty());  // the check can see them
  CHECK(file->mutex(offset)->try_lock().code() == StatusCode::kBusy);
  a.kill_and_wait();
  REQUIRE(b.alive());
  CHECK(file->mutex(offset)->try_lock().is_ok());
  b.kill_and_wait();
}

TEST_CASE("16 processes x 4 threads: one holder at a time, no lost update", "[file_lock][stress]") {
  TempDir dir;
  const std::string path = dir.lock_path();
  const std::string counter_path = dir.file("counter");
  const std::string marker_path = dir.file("marker");
  {
    std::FILE* f = std::fopen(counter_path.c_str(), "w");
    REQUIRE(f != nullptr);
    const std::uint64_t zero = 0;
    REQUIRE(std::fwrite(&zero, sizeof zero, 1, f) == 1);
    std::fclose(f);
    f = std::fopen(marker_path.c_str(), "w");
    REQUIRE(f != nullptr);
    std::fclose(f);
  }
  constexpr int kProcesses = 16;
  constexpr int kThreads = 4;
  constexpr int kIterations = 100;
  const auto offset = LockFile::offset_for("region", "contended");
  Pipe go;  // closed by the parent: every child starts at once

  const auto start = steady_clock::now();
  std::vector<std::unique_ptr<Process>> children;
  for (int p = 0; p < kProcesses; ++p) {
    children.push_back(std::make_unique<Process>(spawn([&, p] {
      go.close_write();
      if (go.wait()) return 20;  // expected end of file, not data
      auto f = open_lock_or_exit(path, 10);
      const int counter = ::open(counter_path.c_str(), O_RDWR | O_CLOEXEC);
      const int marker = ::open(marker_path.c_str(), O_RDWR | O_CLOEXEC);
      if (counter < 0 || marker < 0) return 21;
      std::atomic<int> failures{0}, overlaps{0};
      std::vector<std::thread> threads;
      for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
          const std::uint64_t me = static_cast<std::uint64_t>(p * kThreads + t + 1);
          // Even threads reuse one object and block; odd ones make a new
          // object each time and use the polling timed wait.
          auto kept = f->mutex(offset);
          for (int i = 0; i < kIterations; ++i) {
            std::unique_ptr<dogpile::CreationMutex> fresh;
            dogpile::CreationMutex* m = kept.get();
            if (t % 2 == 1) {
              fresh = f->mutex(offset);
              m = fresh.get();
            }
            const Status s = t % 2 == 0 ? m->lock(std::nullopt) : m->lock(20s);
            if (!s.is_ok()) {
              ++failures;
              continue;
            }
            std::uint64_t value = 0, seen = 0;
            if (::pwrite(marker, &me, sizeof me, 0) != sizeof me) ++failures;
            if (::pread(counter, &value, sizeof value, 0) != sizeof value) ++failures;
            sched_yield();
            ++value;
            if (::pwrite(counter, &value, sizeof value, 0) != sizeof value) ++failures;
            sched_yield();
            if (::pread(marker, &seen, sizeof seen, 0) != sizeof seen || seen != me) ++overlaps;
            m->unlock();
          }
        });
      }
      for (auto& thread : threads) thread.join();
      if (overlaps.load() != 0) return 2;
      if (failures.load() != 0) return 1;
      return 0;
    })));
  }
  go.close_write();
  int bad = 0;
  for (auto& child : children) {
    const int code = child->wait();
    if (code != 0) {
      ++bad;
      UNSCOPED_INFO("child exit code " << code << " (1: lock failed, 2: overlap)");
    }
  }
  CHECK(bad == 0);
  const int counter = ::open(counter_path.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(counter >= 0);
  std::uint64_t total = 0;
  CHECK(::pread(counter, &total, sizeof total, 0) == sizeof total);
  ::close(counter);
  CHECK(total == std::uint64_t{kProcesses} * kThreads * kIterations);
  WARN("16x4 contention: " << total << " exclusive increments in " << us_since(start).count() / 1000
                           << " ms");
}

TEST_CASE("1,000 keys leave one empty lock file and few descriptors", "[file_lock]") {
  TempDir dir;
  auto file = open_lock(dir.lock_path());
  std::set<std::uint64_t> offsets;
  std::vector<std::unique_ptr<dogpile::CreationMutex>> held;
  for (int i = 0; i < 1000; ++i) {
    const auto offset = LockFile::offset_for("region", "key-" + std::to_string(i));
    offsets.insert(offset);
    auto m = file->mutex(offset);
    REQUIRE(m->try_lock().is_ok());
    if (i % 10 == 0) {
      held.push_back(std::move(m));  // 100 at once
    } else {
      m->unlock();
    }
  }
  CHECK(offsets.size() == 1000);
  CHECK(fds_naming(::getpid(), dir.lock_path()).size() >= 100);
  for (auto& m : held) CHECK(m->is_locked_anywhere());
  held.clear();
  CHECK_FALSE(file->mutex(LockFile::offset_for("region", "key-0"))->is_locked_anywhere());
  // The master plus at most the pool's bound of idle descriptors remain.
  CHECK(fds_naming(::getpid(), dir.lock_path()).size() <= 17);

  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    names.push_back(entry.path().filename().string());
  }
  REQUIRE(names == std::vector<std::string>{LockFile::kFileName});
  CHECK(std::filesystem::file_size(dir.lock_path()) == 0);
  file.reset();
  CHECK(fds_naming(::getpid(), dir.lock_path()).empty());
}

TEST_CASE("LockFile::open creates 0600 and refuses what is not its own plain file", "[file_lock]") {
  TempDir dir;
  const auto expect_refused = [](const std::string& path, const char* what) {
    std::shared_ptr<LockFile> file;
    const Status s = LockFile::open(path, file);
    INFO(what << ": " << s.to_string());
    CHECK_FALSE(s.is_ok());
    CHECK(file == nullptr);
    CHECK(s.path() == path);
    CHECK(s.to_string().find(path) != std::string::npos);
  };

  SECTION("a new file") {
    auto file = open_lock(dir.lock_path());
    struct stat st {};
    REQUIRE(::stat(dir.lock_path().c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    CHECK(file->path() == dir.lock_path());
    CHECK(file->inode() == st.st_ino);
    CHECK(file->device() == st.st_dev);
    CHECK((::fcntl(file->fd(), F_GETFD) & FD_CLOEXEC) != 0);
    // Opening again finds the same inode.
    CHECK(open_lock(dir.lock_path())->inode() == st.st_ino);
  }
  SECTION("a symlink, to a real file or dangling") {
    const std::string target = dir.file("target");
    std::fclose(std::fopen(target.c_str(), "w"));
    REQUIRE(::symlink(target.c_str(), dir.lock_path().c_str()) == 0);
    expect_refused(dir.lock_path(), "symlink");
    const std::string dangling = dir.file("dangling.lock");
    REQUIRE(::symlink(dir.file("nowhere").c_str(), dangling.c_str()) == 0);
    expect_refused(dangling, "dangling symlink");
    CHECK_FALSE(std::filesystem::exists(dir.file("nowhere")));
  }
  SECTION("a FIFO") {
    REQUIRE(::mkfifo(dir.lock_path().c_str(), 0600) == 0);
    expect_refused(dir.lock_path(), "fifo");
  }
  SECTION("a directory") {
    REQUIRE(::mkdir(dir.lock_path().c_str(), 0700) == 0);
    expect_refused(dir.lock_path(), "directory");
  }
  SECTION("a hard link") {
    open_lock(dir.lock_path());
    REQUIRE(::link(dir.lock_path().c_str(), dir.file("second name").c_str()) == 0);
    expect_refused(dir.lock_path(), "hard link");
  }
  SECTION("a file owned by another user") {
    open_lock(dir.lock_path());
    if (::geteuid() != 0) {
      WARN("not root: cannot make a foreign-owned file, refusal untested");
      return;
    }
    REQUIRE(::chown(dir.lock_path().c_str(), 12345, 12345) == 0);
    std::shared_ptr<LockFile> file;
    const Status s = LockFile::open(dir.lock_path(), file);
    INFO(s.to_string());
    CHECK_FALSE(s.is_ok());
    CHECK(file == nullptr);
    CHECK(s.message().find("12345") != std::string::npos);
    CHECK(s.path() == dir.lock_path());
  }
  SECTION("a missing directory") {
    std::shared_ptr<LockFile> file;
    const Status s = LockFile::open(dir.file("missing/creation.lock"), file);
    CHECK(s.code() == StatusCode::kIOError);
    CHECK(s.sys_errno() == ENOENT);
    CHECK(s.path() == dir.file("missing/creation.lock"));
  }
}

TEST_CASE("offset_for: 62-bit XXH3 of scope, NUL, key", "[file_lock]") {
  const auto expected = [](const std::string& scope, const std::string& key) {
    const std::string bytes = scope + std::string(1, '\0') + key;
    return XXH3_64bits(bytes.data(), bytes.size()) & ((std::uint64_t{1} << 62) - 1);
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"region", "key"}, {"region", "key2"}, {"other", "key"}, {"", ""},
      {"a", "bc"},       {"ab", "c"},        {"", "x"},        {"r", std::string(5000, 'k')},
  };
  std::set<std::uint64_t> seen;
  for (const auto& [scope, key] : cases) {
    const auto offset = LockFile::offset_for(scope, key);
    CAPTURE(scope, key.size());
    CHECK(offset == expected(scope, key));
    CHECK(offset < (std::uint64_t{1} << 62));
    CHECK(offset == LockFile::offset_for(scope, key));
    seen.insert(offset);
  }
  CHECK(seen.size() == cases.size());  // the NUL keeps ("a","bc") and ("ab","c") apart
  // A key with an embedded NUL is hashed whole, not cut short.
  CHECK(LockFile::offset_for("r", std::string("a\0b", 3)) != LockFile::offset_for("r", "a"));
  int high_bits_used = 0;
  for (int i = 0; i < 64; ++i) {
    if (LockFile::offset_for("region", std::to_string(i)) >> 61 != 0) ++high_bits_used;
  }
  CHECK(high_bits_used > 10);  // bit 61 is set about half the time: the mask is not too narrow
}
