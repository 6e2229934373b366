// The mixed soak.
//
// Four processes of four threads share one lmdb cache directory and run a
// random mix of get, set, erase and get_or_create over 2,000 keys, chosen
// with a Zipf-like skew so a few keys are hot and contended. Entries expire
// after 250 ms, so creations happen all the time, on the stale path (one
// regenerates while the others are served the old value) and, after an
// erase, on the missing path (the others wait). Every 2 s the parent
// SIGKILLs one random process, wherever it is (inside a creator, holding a
// creation lock, inside a write transaction), and starts a new one in its
// place; 60 s in CI, 600 s under --soak, 20 s (120 s) under a sanitizer.
// It proves:
//
//   - no checksum failure and no wrong value: every value names its key, its
//     writer and its length and carries filler derived from them, and every
//     value read (get, get_or_create, and the final read of every key) is
//     checked against that;
//   - no unexpected error: no call throws, no process dies on its own, and
//     the engine logs nothing (corruption, store errors, lock failures);
//   - no overlapping creators: each creator logs "start" and "end" with a
//     CLOCK_MONOTONIC time (one clock for the whole system); the intervals of
//     one key never overlap, a creator killed midway counting as running
//     until the parent's kill;
//   - no stalled thread: every thread still makes progress at the end;
//   - afterwards Store::verify finds every envelope and index entry sound,
//     every key reads back as absent or as a well-formed value of its own,
//     and the store's shared counters record no corruption.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "dogpile/dogpile.h"
#include "dogpile/store.h"
#include "process_util.h"
#include "reliability_util.h"
#include "test_util.h"

using namespace dogpile;
using namespace dogpile::test;
using namespace std::chrono_literals;

namespace {

constexpr int kProcesses = 4;
constexpr int kThreads = 4;
constexpr int kKeys = 2000;
constexpr const char* kRegion = "soak";
constexpr auto kExpiration = 250ms;
constexpr auto kKillEvery = 2s;
// How often each thread appends its running totals to the event log.
constexpr auto kReportEvery = 200ms;

std::int64_t mono_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// Every hundredth key is longer than kMaxInlineKeySize: stored under its
// hash, with the full key in the envelope. Key 0, the hottest, is one.
std::string key_name(int i) {
  std::string key = "soak-" + std::to_string(i);
  if (i % 100 == 0) key += "-" + std::string(kMaxInlineKeySize + 30, 'h');
  return key;
}

// `length` characters that only `writer` gives.
std::string filler(const std::string& writer, std::size_t length) {
  std::uint64_t x = 0xcbf29ce484222325ull;
  for (char c : writer) x = (x ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  std::string out;
  out.reserve(length);
  while (out.size() < length) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    out.push_back(static_cast<char>('a' + (x >> 59)));
  }
  return out;
}

// "<key>|<writer>|<filler>", the writer "<life>.<thread>.<seq>.<length>".
std::string make_value(int key, const std::string& writer_id, std::size_t length) {
  const std::string writer = writer_id + "." + std::to_string(length);
  return key_name(key) + "|" + writer + "|" + filler(writer, length);
}

// Empty when `value` is a well-formed value of `key`, else what is wrong.
std::string value_problem(int key, const std::string& value) {
  const std::string name = key_name(key);
  if (value.size() < name.size() + 1 || value.compare(0, name.size(), name) != 0 ||
      value[name.size()] != '|') {
    return "value of another key: " + value.substr(0, 40);
  }
  const std::size_t bar = value.find('|', name.size() + 1);
  if (bar == std::string::npos) return "no writer field";
  const std::string writer = value.substr(name.size() + 1, bar - name.size() - 1);
  const std::size_t dot = writer.rfind('.');
  if (dot == std::string::npos) return "bad writer " + writer;
  const std::size_t length = std::strtoull(writer.c_str() + dot + 1, nullptr, 10);
  const std::string rest = value.substr(bar + 1);
  if (rest.size() != length) {
    return "writer " + writer + ": filler of " + std::to_string(rest.size()) + " bytes";
  }
  if (rest != filler(writer, length)) return "writer " + writer + ": filler differs";
  return {};
}

// One line of log text: no newline inside, short enough to append atomically.
std::string one_line(std::string_view text) {
  std::string out(text.substr(0, 300));
  std::replace(out.begin(), out.end(), '\n', ' ');
  return out;
}

struct Paths {
  std::string cache;     // the cache directory
  std::string creators;  // "start", "end" (children) and "kill" (parent) lines
  std::string events;    // "ops", "wrong", "error", "logger", "exit" lines
};

// What one thread did; its running totals go to the event log as
// "ops <life> <thread> <ops> <gets> <hits> <get_or_creates> <creations> <sets>
// <erases> <wrong> <errors>".
struct Tally {
  std::uint64_t ops = 0, gets = 0, hits = 0, get_or_creates = 0, creations = 0, sets = 0,
                erases = 0, wrong = 0, errors = 0;

  std::string line(int life, int thread) const {
    std::ostringstream out;
    out << "ops " << life << " " << thread << " " << ops << " " << gets << " " << hits << " "
        << get_or_creates << " " << creations << " " << sets << " " << erases << " " << wrong
        << " " << errors;
    return out.str();
  }
  Tally& operator+=(const Tally& o) {
    ops += o.ops, gets += o.gets, hits += o.hits, get_or_creates += o.get_or_creates;
    creations += o.creations, sets += o.sets, erases += o.erases, wrong += o.wrong;
    errors += o.errors;
    return *this;
  }
};

// Key weights 1/(i+1): key 0 gets about 12% of the operations, the hottest
// 20% of the keys about 80%.
std::vector<double> zipf_weights() {
  std::vector<double> w(kKeys);
  for (int i = 0; i < kKeys; ++i) w[i] = 1.0 / (i + 1);
  return w;
}

RegionOptions region_options(Logger logger) {
  return RegionOptions{.name = kRegion, .expiration_time = kExpiration, .logger = std::move(logger)};
}

// One thread of a child: operations until the process is killed.
[[noreturn]] void worker(Region& region, const Paths& paths, std::uint64_t seed, int life,
                         int thread) {
  std::mt19937_64 rng(seed ^ (std::uint64_t(life + 1) * 0x9E3779B97F4A7C15ull) ^
                      (std::uint64_t(thread + 1) * 0xBF58476D1CE4E5B9ull));
  const std::vector<double> weights = zipf_weights();
  std::discrete_distribution<int> pick_key(weights.begin(), weights.end());
  std::uniform_int_distribution<int> percent(0, 99);
  std::uniform_int_distribution<std::size_t> small(16, 400);
  std::uniform_int_distribution<std::size_t> large(2000, 12000);  // overflow pages
  std::uniform_int_distribution<int> creator_us(0, 2000);
  const auto pick_length = [&] { return percent(rng) < 10 ? large(rng) : small(rng); };
  const std::string prefix = std::to_string(life) + "." + std::to_string(thread) + ".";
  const std::string who = " " + std::to_string(life) + " " + std::to_string(thread) + " ";

  Tally tally;
  auto next_report = std::chrono::steady_clock::now() + kReportEvery;
  for (std::uint64_t seq = 0;; ++seq) {
    const int key = pick_key(rng);
    const std::string name = key_name(key);
    const int kind = percent(rng);
    const auto check = [&](const std::string& value) {
      if (std::string problem = value_problem(key, value); !problem.empty()) {
        ++tally.wrong;
        log_line(paths.events, "wrong" + who + std::to_string(key) + " " + one_line(problem));
      }
    };
    try {
      if (kind < 40) {
        ++tally.gets;
        if (std::optional<std::string> v = region.get<std::string>(name)) {
          ++tally.hits;
          check(*v);
        }
      } else if (kind < 75) {
        ++tally.get_or_creates;
        const std::string writer = "c" + prefix + std::to_string(seq);
        const std::size_t length = pick_length();
        const auto pause = std::chrono::microseconds(creator_us(rng));
        check(region.get_or_create<std::string>(name, [&] {
          const std::string tag = std::to_string(key) + who;
          log_line(paths.creators, "start " + tag + std::to_string(mono_ns()));
          // Long enough that a second creator of the key, if one were let
          // in, would overlap this one.
          std::this_thread::sleep_for(pause);
          std::string value = make_value(key, writer, length);
          ++tally.creations;
          log_line(paths.creators, "end " + tag + std::to_string(mono_ns()));
          return value;
        }));
      } else if (kind < 90) {
        ++tally.sets;
        region.set<std::string>(name, make_value(key, "s" + prefix + std::to_string(seq),
                                                 pick_length()));
      } else {
        ++tally.erases;
        region.erase(name);
      }
    } catch (const std::exception& e) {
      ++tally.errors;
      log_line(paths.events, "error" + who + one_line(e.what()));
    } catch (...) {
      ++tally.errors;
      log_line(paths.events, "error" + who + "a non-standard exception");
    }
    ++tally.ops;
    if (const auto now = std::chrono::steady_clock::now(); now >= next_report) {
      log_line(paths.events, tally.line(life, thread));
      next_report = now + kReportEvery;
    }
  }
}

// A child process: opens its own region and runs the threads until killed.
// Commits are not synced: a SIGKILL loses nothing the kernel has, and one
// process syncing every commit would hold the write lock through its fsyncs
// and cut the whole run to a twentieth of the operations (writer_kill tests
// kills in synced commits).
[[noreturn]] void child_main(const Paths& paths, std::uint64_t seed, int life, pid_t parent) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) _exit(0);  // the parent died before prctl
  const std::string who = " " + std::to_string(life) + " - ";
  int code = 3;
  try {
    Region region(region_options([&](LogLevel, std::string_view message) {
                    log_line(paths.events, "logger" + who + one_line(message));
                  }),
                  "lmdb", {{"path", paths.cache}, {"durability", "nosync"}});
    std::vector<std::thread> threads;
    for (int t = 1; t < kThreads; ++t) {
      threads.emplace_back([&, t] { worker(region, paths, seed, life, t); });
    }
    worker(region, paths, seed, life, 0);
  } catch (const std::exception& e) {
    log_line(paths.events, "error" + who + one_line(e.what()));
  } catch (...) {
    log_line(paths.events, "error" + who + "a non-standard exception");
  }
  _exit(code);
}

// Latest running totals of each (life, thread) in the event log.
std::map<std::pair<int, int>, Tally> latest_tallies(const std::string& events) {
  std::map<std::pair<int, int>, Tally> out;
  std::ifstream in(events);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("ops ", 0) != 0) continue;
    std::istringstream words(line.substr(4));
    int life = 0, thread = 0;
    Tally t;
    words >> life >> thread >> t.ops >> t.gets >> t.hits >> t.get_or_creates >> t.creations >>
        t.sets >> t.erases >> t.wrong >> t.errors;
    Tally& slot = out[{life, thread}];
    if (t.ops >= slot.ops) slot = t;
  }
  return out;
}

struct CreatorCheck {
  std::uint64_t intervals = 0;     // creator runs seen
  std::uint64_t cut_by_kill = 0;   // of those, killed before their end
  std::uint64_t overlaps = 0;      // runs that began before an earlier one of the key ended
  std::uint64_t keys_created = 0;  // distinct keys with at least one run
  std::uint64_t malformed = 0;     // unreadable lines, or a start left open mid-thread
  std::vector<std::string> examples;
};

// Pairs each "start" with its thread's next line and checks that the runs
// of one key are disjoint. A start that is its thread's last line was cut
// by the kill of its process and runs until that kill.
CreatorCheck check_creators(const std::string& creators) {
  struct Event {
    bool start = false;
    int key = 0;
    std::int64_t ns = 0;
  };
  std::map<std::pair<int, int>, std::vector<Event>> by_thread;
  std::map<int, std::int64_t> kill_ns;
  CreatorCheck result;
  std::ifstream in(creators);
  for (std::string line; std::getline(in, line);) {
    std::istringstream words(line);
    std::string kind;
    words >> kind;
    if (kind == "kill") {
      int life = 0;
      std::int64_t ns = 0;
      if (!(words >> life >> ns)) ++result.malformed;
      kill_ns[life] = ns;
      continue;
    }
    Event e;
    int life = 0, thread = 0;
    if ((kind != "start" && kind != "end") || !(words >> e.key >> life >> thread >> e.ns)) {
      ++result.malformed;
      continue;
    }
    e.start = kind == "start";
    by_thread[{life, thread}].push_back(e);
  }

  struct Run {
    std::int64_t begin, end;
    int life, thread;
    bool cut;
  };
  std::map<int, std::vector<Run>> by_key;
  for (auto& [who, events] : by_thread) {
    // One thread runs one creator at a time: its lines alternate.
    std::sort(events.begin(), events.end(),
              [](const Event& a, const Event& b) { return a.ns < b.ns; });
    for (std::size_t i = 0; i < events.size(); ++i) {
      const Event& e = events[i];
      if (!e.start) {
        ++result.malformed;  // an end without its start
        continue;
      }
      Run run{e.ns, 0, who.first, who.second, false};
      if (i + 1 < events.size()) {
        const Event& next = events[i + 1];
        if (next.start || next.key != e.key) {
          ++result.malformed;
          continue;
        }
        run.end = next.ns;
        ++i;
      } else {
        const auto kill = kill_ns.find(who.first);
        if (kill == kill_ns.end()) {
          ++result.malformed;  // every process is killed in the end
          continue;
        }
        run.end = kill->second;
        run.cut = true;
        ++result.cut_by_kill;
      }
      ++result.intervals;
      by_key[e.key].push_back(run);
    }
  }
  result.keys_created = by_key.size();
  for (auto& [key, runs] : by_key) {
    std::sort(runs.begin(), runs.end(),
              [](const Run& a, const Run& b) { return a.begin < b.begin; });
    const Run* latest = nullptr;  // the run, of those begun so far, that ends last
    for (const Run& run : runs) {
      if (latest != nullptr && run.begin < latest->end) {
        ++result.overlaps;
        if (result.examples.size() < 5) {
          std::ostringstream out;
          out << "key " << key << ": creator " << run.life << "." << run.thread << " began "
              << (latest->end - run.begin) << " ns before creator " << latest->life << "."
              << latest->thread << (latest->cut ? " was killed" : " ended");
          result.examples.push_back(out.str());
        }
      }
      if (latest == nullptr || run.end > latest->end) latest = &run;
    }
  }
  return result;
}

}  // namespace

TEST_CASE("mixed soak: 4 processes x 4 threads, one SIGKILLed and restarted every 2 s",
          "[reliability][soak]") {
  const std::uint64_t seed = reliability_seed();
  const auto run_for = kSanitized ? scaled<std::chrono::seconds>(20s, 120s)
                                  : scaled<std::chrono::seconds>(60s, 600s);
  // Long enough for a child started at the last kill to be well under way.
  const auto liveness_window = kSanitized ? 6s : 2s;
  TempDir dir;
  const Paths paths{dir / "cache", dir / "creators.log", dir / "events.log"};
  std::mt19937_64 rng(seed);
  const pid_t parent = ::getpid();

  // This process stays single-threaded while it forks (ThreadSanitizer
  // supports fork only from a single-threaded process), and opens the cache
  // only once every child is gone.
  struct Child {
    pid_t pid = -1;
    int life = -1;
  };
  std::vector<Child> children(kProcesses);
  int lives = 0;
  int kills = 0;
  int own_exits = 0;  // children that ended without being killed
  const auto start_child = [&](Child& child) {
    const int life = lives++;
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) child_main(paths, seed, life, parent);
    child = Child{pid, life};
  };
  const auto note_exit = [&](const Child& child, int status) {
    ++own_exits;
    log_line(paths.events, "exit " + std::to_string(child.life) + " status " +
                               std::to_string(status));
  };
  const auto kill_child = [&](Child& child) {
    // Logged before the signal, so before the death: a creator cut short
    // counts as running until this time, and the next creator of its key,
    // let in only once the kernel has dropped the dead process's lock, must
    // start after it.
    log_line(paths.creators, "kill " + std::to_string(child.life) + " " +
                                 std::to_string(mono_ns()));
    REQUIRE(::kill(child.pid, SIGKILL) == 0);
    int status = 0;
    while (::waitpid(child.pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)) note_exit(child, status);
    ++kills;
    child = Child{};
  };

  // A failed REQUIRE leaves no child running on the removed directory.
  struct KillLeft {
    std::vector<Child>& children;
    ~KillLeft() {
      for (const Child& child : children) {
        if (child.pid > 0 && ::kill(child.pid, SIGKILL) == 0) ::waitpid(child.pid, nullptr, 0);
      }
    }
  } kill_left{children};
  for (Child& child : children) start_child(child);
  const auto started = std::chrono::steady_clock::now();
  const auto deadline = started + run_for;
  auto next_kill = started + kKillEvery;
  while (std::chrono::steady_clock::now() < deadline) {
    for (Child& child : children) {
      int status = 0;
      if (::waitpid(child.pid, &status, WNOHANG) == child.pid) {
        note_exit(child, status);
        start_child(child);
      }
    }
    if (std::chrono::steady_clock::now() >= next_kill) {
      Child& victim = children[std::uniform_int_distribution<int>(0, kProcesses - 1)(rng)];
      kill_child(victim);
      start_child(victim);
      next_kill += kKillEvery;
    }
    std::this_thread::sleep_for(10ms);
  }

  // Every thread of every running process must still be making progress.
  const auto before = latest_tallies(paths.events);
  std::this_thread::sleep_for(liveness_window);
  const auto after = latest_tallies(paths.events);
  int stalled = 0;
  std::string stalled_list;
  for (const Child& child : children) {
    for (int t = 0; t < kThreads; ++t) {
      const auto b = before.find({child.life, t});
      const auto a = after.find({child.life, t});
      if (a == after.end() || (b != before.end() && a->second.ops <= b->second.ops)) {
        ++stalled;
        stalled_list += " " + std::to_string(child.life) + "." + std::to_string(t);
      }
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  for (Child& child : children) kill_child(child);
  const int final_kills = kProcesses;

  // What the children reported.
  Tally total;
  for (const auto& [who, tally] : latest_tallies(paths.events)) total += tally;
  std::uint64_t wrong_lines = 0, error_lines = 0, logger_lines = 0;
  std::string first_problems;
  {
    std::ifstream in(paths.events);
    for (std::string line; std::getline(in, line);) {
      const bool wrong = line.rfind("wrong ", 0) == 0;
      const bool error = line.rfind("error ", 0) == 0 || line.rfind("exit ", 0) == 0;
      const bool logger = line.rfind("logger ", 0) == 0;
      wrong_lines += wrong;
      error_lines += error;
      logger_lines += logger;
      if ((wrong || error || logger) && first_problems.size() < 2000) first_problems += line + "\n";
    }
  }
  const CreatorCheck creators = check_creators(paths.creators);

  // The store afterwards, opened by this process alone.
  Store store = Store::open({.path = paths.cache});
  const VerifyReport verified = store.verify();
  std::string verify_problems;
  for (const VerifyProblem& p : verified.problems) {
    if (verify_problems.size() < 2000) verify_problems += p.region + " " + p.key + ": " + p.what + "\n";
  }
  std::vector<std::string> reader_log;
  Region reader(region_options([&](LogLevel, std::string_view message) {
                  reader_log.emplace_back(message);
                }),
                "lmdb", {{"path", paths.cache}});
  int present = 0, unreadable = 0, wrong_final = 0;
  std::string final_problems;
  for (int key = 0; key < kKeys; ++key) {
    try {
      const std::optional<std::string> v =
          reader.get<std::string>(key_name(key), {.ignore_expiration = true});
      if (!v) continue;
      ++present;
      if (std::string problem = value_problem(key, *v); !problem.empty()) {
        ++wrong_final;
        if (final_problems.size() < 2000) final_problems += std::to_string(key) + ": " + problem + "\n";
      }
    } catch (const std::exception& e) {
      ++unreadable;
      if (final_problems.size() < 2000) final_problems += std::to_string(key) + ": " + e.what() + "\n";
    }
  }
  const RegionStats read_stats = reader.stats();
  UsageCounters shared;
  for (const RegionUsage& usage : store.stats().regions) {
    if (usage.name == kRegion) shared = usage.counters;
  }
  const std::uint64_t checksum_failures = read_stats.corruptions + shared.corruptions;
  // Each wrong value and each error was logged the moment it happened (the
  // running totals may miss the last ones before a kill).
  const std::uint64_t wrong_values = wrong_lines + wrong_final;

  figure("soak[mixed]: %d processes x %d threads, %d keys (Zipf 1/rank), %.1f s, %d kills "
         "(%d during the run, every %lld s, %d at the end), %d processes started",
         kProcesses, kThreads, kKeys, seconds, kills, kills - final_kills,
         static_cast<long long>(std::chrono::seconds(kKillEvery).count()), final_kills, lives);
  figure("soak[mixed]: %llu operations reported (%llu get, %llu hits; %llu get_or_create; "
         "%llu set; %llu erase), %.0f ops/s",
         static_cast<unsigned long long>(total.ops), static_cast<unsigned long long>(total.gets),
         static_cast<unsigned long long>(total.hits),
         static_cast<unsigned long long>(total.get_or_creates),
         static_cast<unsigned long long>(total.sets), static_cast<unsigned long long>(total.erases),
         static_cast<double>(total.ops) / seconds);
  figure("soak[mixed]: %llu creator runs on %llu keys (%llu cut short by a kill), store "
         "counters: %llu creations, %llu hits, %llu misses, %llu stale served",
         static_cast<unsigned long long>(creators.intervals),
         static_cast<unsigned long long>(creators.keys_created),
         static_cast<unsigned long long>(creators.cut_by_kill),
         static_cast<unsigned long long>(shared.creations),
         static_cast<unsigned long long>(shared.hits),
         static_cast<unsigned long long>(shared.misses),
         static_cast<unsigned long long>(shared.stale_served));
  figure("soak[mixed]: %llu checksum failures, %llu wrong values, %llu unexpected errors, "
         "%llu engine log lines, %llu overlapping creators, %d stalled threads",
         static_cast<unsigned long long>(checksum_failures),
         static_cast<unsigned long long>(wrong_values),
         static_cast<unsigned long long>(error_lines),
         static_cast<unsigned long long>(logger_lines + reader_log.size()),
         static_cast<unsigned long long>(creators.overlaps), stalled);
  figure("soak[mixed]: final verify %s: %llu entries, %llu index entries, %zu problems; "
         "%d of %d keys present, all read back (%d unreadable, %d wrong)",
         verified.ok() ? "passed" : "FAILED", static_cast<unsigned long long>(verified.entries),
         static_cast<unsigned long long>(verified.index_entries), verified.problems.size(),
         present, kKeys, unreadable, wrong_final);

  INFO("child problems:\n" << first_problems);
  INFO("verify problems:\n" << verify_problems);
  INFO("final read problems:\n" << final_problems);
  std::string overlap_examples;
  for (const auto& e : creators.examples) overlap_examples += e + "\n";
  INFO("overlapping creators:\n" << overlap_examples);
  INFO("stalled threads:" << stalled_list);
  CHECK(checksum_failures == 0);
  CHECK(read_stats.mismatches + shared.mismatches == 0);
  CHECK(wrong_values == 0);
  CHECK(total.wrong == 0);
  CHECK(total.errors == 0);
  CHECK(error_lines == 0);
  CHECK(own_exits == 0);
  CHECK(logger_lines == 0);
  CHECK(reader_log.empty());
  CHECK(read_stats.store_errors == 0);
  CHECK(creators.malformed == 0);
  CHECK(creators.overlaps == 0);
  CHECK(stalled == 0);
  CHECK(verified.ok());
  CHECK(unreadable == 0);
  // The run did what it is meant to: processes were killed mid-work and
  // values were created, and many times over.
  CHECK(kills - final_kills >= static_cast<int>(run_for / kKillEvery) - 2);
  CHECK(creators.intervals > 100);
  CHECK(total.ops > 1000);
}
