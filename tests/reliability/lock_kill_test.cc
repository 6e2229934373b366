// Issue 7, item 2: a creation-lock holder killed mid-creation.
//
// Twenty processes call get_or_create on one cold key of a region over the
// lmdb backend. The first creator logs "begin" and sleeps 5 s; the parent
// SIGKILLs it 1 s later. A waiter must take over within 100 ms (spec §2 rule
// 3): the kernel drops the dead holder's OFD lock and wakes a blocked
// F_OFD_SETLKW at once. Exactly one creation completes, and creations never
// overlap. Variants: the holder forks a child (fork(), or posix_spawn of
// /bin/sleep) and then dies, by SIGKILL or _exit, while the child lives on:
// the child must not keep the lock.
//
// Every creator line carries a CLOCK_MONOTONIC timestamp, which is one clock
// for the whole system, so the parent compares its own kill time with the
// next creator's "begin".
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "dogpile/dogpile.h"
#include "process_util.h"
#include "reliability_util.h"
#include "test_util.h"

extern char** environ;

using namespace dogpile;
using namespace dogpile::test;
using namespace std::chrono_literals;

namespace {

constexpr int kProcesses = 20;
constexpr std::int64_t kTakeoverLimitNs = 100'000'000;  // spec §2 rule 3

std::int64_t mono_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

void sleep_until_mono(std::int64_t ns) {
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
  while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
  }
}

// What the first creator leaves behind before it dies.
enum class Offspring { kNone, kFork, kSpawn };
// How the first creator dies: SIGKILLed by the parent 1 s into its creation,
// or by its own _exit right after making its offspring.
enum class Death { kKilled, kExit };

const char* describe(Offspring o) {
  switch (o) {
    case Offspring::kNone: return "no child";
    case Offspring::kFork: return "a fork()ed child";
    case Offspring::kSpawn: return "a posix_spawn()ed /bin/sleep";
  }
  return "?";
}

// A parsed creation log line: "<kind> <pid> <mono ns>".
struct Event {
  std::string kind;
  pid_t pid = 0;
  std::int64_t ns = 0;
};

std::vector<Event> events(const std::vector<std::string>& lines, const std::string& kind) {
  std::vector<Event> out;
  for (const auto& line : lines) {
    std::istringstream in(line);
    Event e;
    in >> e.kind;
    if (e.kind != kind) continue;
    in >> e.pid >> e.ns;
    out.push_back(e);
  }
  std::sort(out.begin(), out.end(), [](const Event& a, const Event& b) { return a.ns < b.ns; });
  return out;
}

// Whether `pid` is running (not gone, not a zombie).
bool alive(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  if (!std::getline(stat, text)) return false;
  const auto close = text.rfind(')');
  return close != std::string::npos && close + 2 < text.size() && text[close + 2] != 'Z';
}

// The body of each of the 20 processes.
int contender(const std::string& dir, const std::string& log, const std::string& marker,
              Offspring offspring, Death death) {
  Region region({.name = "lock-kill"}, "lmdb", {{"path", dir}});
  const std::string value = region.get_or_create<std::string>("cold", [&] {
    const pid_t self = ::getpid();
    log_line(log, "begin " + std::to_string(self) + " " + std::to_string(mono_ns()));
    // Only the first creator is the victim; the marker tells the others.
    const int fd = ::open(marker.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) {
      ::close(fd);
      pid_t child = -1;
      if (offspring == Offspring::kFork) {
        child = ::fork();
        if (child == 0) {
          // Lives on after its parent dies, inside the creator's stack.
          std::this_thread::sleep_for(6s);
          _exit(0);
        }
      } else if (offspring == Offspring::kSpawn) {
        char arg0[] = "sleep";
        char arg1[] = "6";
        char* argv[] = {arg0, arg1, nullptr};
        if (::posix_spawn(&child, "/bin/sleep", nullptr, nullptr, argv, environ) != 0) child = -1;
      }
      if (offspring != Offspring::kNone) {
        if (child < 0) _exit(80);
        log_line(log, "offspring " + std::to_string(child) + " " + std::to_string(mono_ns()));
      }
      if (death == Death::kExit) {
        // As long as a killed holder lives: the others are waiting by now,
        // so the takeover time is not their start-up time.
        std::this_thread::sleep_for(1s);
        log_line(log, "dying " + std::to_string(self) + " " + std::to_string(mono_ns()));
        _exit(3);
      }
      std::this_thread::sleep_for(5s);  // killed long before this ends
    } else {
      // Long enough that an overlapping second creator would show.
      std::this_thread::sleep_for(100ms);
    }
    log_line(log, "end " + std::to_string(self) + " " + std::to_string(mono_ns()));
    return "from-" + std::to_string(self);
  });
  log_line(log, "value " + std::to_string(::getpid()) + " " + value);
  return 0;
}

struct RoundResult {
  std::int64_t takeover_ns = 0;  // dead holder to the next creator's begin
};

// One round with fresh processes and a fresh cache directory. Catch2
// assertions run here, on the main thread of the parent.
RoundResult run_round(Offspring offspring, Death death) {
  TempDir dir;
  const std::string log = dir / "creation.log";
  const std::string marker = dir / "first-creator";
  const std::string cache = dir / "cache";
  StartGate gate;
  const std::vector<pid_t> pids = spawn(kProcesses, gate, [&](int) {
    return contender(cache, log, marker, offspring, death);
  });
  gate.open_gate();

  RoundResult result;
  REQUIRE(wait_for_line(log, "begin "));
  const Event first = events(read_lines(log), "begin").front();
  pid_t child = -1;
  if (offspring != Offspring::kNone) {
    REQUIRE(wait_for_line(log, "offspring "));
    child = events(read_lines(log), "offspring").front().pid;
  }
  std::int64_t death_ns = 0;      // when the holder was certainly about to die
  std::int64_t reference_ns = 0;  // what the takeover time is measured from
  if (death == Death::kKilled) {
    sleep_until_mono(first.ns + 1'000'000'000);
    death_ns = mono_ns();
    REQUIRE(::kill(first.pid, SIGKILL) == 0);
    reference_ns = mono_ns();  // kill() has returned
  } else {
    REQUIRE(wait_for_line(log, "dying "));
    death_ns = reference_ns = events(read_lines(log), "dying").front().ns;
  }

  std::map<pid_t, int> statuses;
  reap(pids, &statuses);
  // The offspring must still be running once the others are done: the
  // takeover did not wait for it.
  const bool child_alive_after = child < 0 || alive(child);
  if (child > 0) {
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);  // ours: this process is a child subreaper
  }

  const std::vector<std::string> lines = read_lines(log);
  const std::vector<Event> begins = events(lines, "begin");
  const std::vector<Event> ends = events(lines, "end");
  INFO("offspring: " << describe(offspring) << "; log:\n" << [&] {
    std::string all;
    for (const auto& l : lines) all += l + "\n";
    return all;
  }());

  // The victim died as planned; every other process finished normally.
  for (const pid_t pid : pids) {
    const int status = statuses[pid];
    if (pid == first.pid) {
      if (death == Death::kKilled) {
        CHECK((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));
      } else {
        CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 3));
      }
    } else {
      CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    }
  }
  CHECK(child_alive_after);

  // Exactly one completed creation, by the second creator, and nobody else
  // began one.
  REQUIRE(begins.size() == 2);
  REQUIRE(ends.size() == 1);
  const Event& second = begins[1];
  CHECK(second.pid != first.pid);
  CHECK(ends[0].pid == second.pid);
  // No overlap: the second creation began after the first holder's death
  // was set in motion and the completed one is the only interval left.
  CHECK(second.ns >= death_ns);
  CHECK(ends[0].ns >= second.ns);
  // Every survivor returned the one completed value.
  const std::string expected = "from-" + std::to_string(second.pid);
  int values = 0;
  for (const auto& line : lines) {
    if (line.rfind("value ", 0) != 0) continue;
    ++values;
    CHECK(line.substr(line.rfind(' ') + 1) == expected);
  }
  CHECK(values == kProcesses - 1);
  Region reader({.name = "lock-kill"}, "lmdb", {{"path", cache}});
  CHECK(reader.get<std::string>("cold") == expected);

  result.takeover_ns = std::max<std::int64_t>(0, second.ns - reference_ns);
  return result;
}

void report(const char* what, std::vector<std::int64_t> ns) {
  std::sort(ns.begin(), ns.end());
  const auto ms = [](std::int64_t v) { return static_cast<double>(v) / 1e6; };
  figure("%s: takeover after the holder's death over %zu rounds: min %.2f ms, median %.2f ms, "
         "max %.2f ms (limit 100 ms)",
         what, ns.size(), ms(ns.front()), ms(ns[ns.size() / 2]), ms(ns.back()));
}

void check_takeover(std::int64_t ns) {
  INFO("takeover " << static_cast<double>(ns) / 1e6 << " ms");
  // A sanitizer's exit (unmapping its shadow memory) and start-up costs are
  // not the engine's: under ASan/TSan the figure is printed, not asserted.
  if (!kSanitized) CHECK(ns < kTakeoverLimitNs);
}

// Makes orphaned grandchildren (a dead holder's offspring) ours to reap.
void become_subreaper() { REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0); }

}  // namespace

TEST_CASE("lock holder SIGKILLed 1 s into a 5 s creation: the next holder takes over at once",
          "[reliability][lock_kill]") {
  become_subreaper();
  const int rounds = scaled(5, 50);
  std::vector<std::int64_t> takeovers;
  for (int round = 0; round < rounds; ++round) {
    INFO("round " << round);
    const RoundResult r = run_round(Offspring::kNone, Death::kKilled);
    check_takeover(r.takeover_ns);
    takeovers.push_back(r.takeover_ns);
  }
  report("lock holder killed (20 processes)", takeovers);
  figure("lock holder killed: %d rounds, 1 completed creation and 0 overlaps in each", rounds);
}

TEST_CASE("a lock holder that forks and dies: its living child does not keep the lock",
          "[reliability][lock_kill]") {
  become_subreaper();
  const int rounds = scaled(2, 10);
  struct Variant {
    Offspring offspring;
    Death death;
    const char* name;
  };
  const Variant variants[] = {
      {Offspring::kFork, Death::kKilled, "fork, holder SIGKILLed"},
      {Offspring::kFork, Death::kExit, "fork, holder _exit()s"},
      {Offspring::kSpawn, Death::kKilled, "posix_spawn, holder SIGKILLed"},
      {Offspring::kSpawn, Death::kExit, "posix_spawn, holder _exit()s"},
  };
  for (const Variant& v : variants) {
    SECTION(v.name) {
      std::vector<std::int64_t> takeovers;
      for (int round = 0; round < rounds; ++round) {
        INFO(v.name << ", round " << round);
        const RoundResult r = run_round(v.offspring, v.death);
        check_takeover(r.takeover_ns);
        takeovers.push_back(r.takeover_ns);
      }
      report(v.name, takeovers);
    }
  }
}
