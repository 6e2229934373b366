// Many processes on one cache directory: a stampede on a cold key, reads of a
// stale key while one process regenerates it, and hit throughput by the number
// of reader processes.
//
// Every process is fork()ed and opens the directory itself, as separate
// programs would, before a gate releases them together. Children write their
// figures into a shared anonymous mapping that the parent reads after reaping
// them. Times are CLOCK_MONOTONIC, which all processes on the host share.
// Each benchmark is one round (manual time: the round's wall time); its
// findings are counters, so they land in the JSON output.
#include <benchmark/benchmark.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dogpile/dogpile.h"

namespace dogpile {
namespace {

using namespace std::chrono_literals;

std::int64_t now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// A fresh cache directory under $DOGPILE_BENCH_DIR (else /var/tmp, which is
// on disk where /tmp may be memory), removed with everything in it.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("DOGPILE_BENCH_DIR");
    std::string tmpl = std::string(base != nullptr && base[0] != '\0' ? base : "/var/tmp") +
                       "/dogpile-process-bench.XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const noexcept { return path_; }

 private:
  std::string path_;
};

// Zeroed memory that stays shared with every child forked after it is made.
template <class T>
class SharedArray {
 public:
  explicit SharedArray(std::size_t count) : count_(count) {
    void* p = ::mmap(nullptr, bytes(), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("mmap failed");
    data_ = static_cast<T*>(p);
  }
  ~SharedArray() {
    if (data_ != nullptr) ::munmap(data_, bytes());
  }
  SharedArray(const SharedArray&) = delete;
  SharedArray& operator=(const SharedArray&) = delete;

  T& operator[](std::size_t i) noexcept { return data_[i]; }
  std::size_t size() const noexcept { return count_; }

 private:
  std::size_t bytes() const noexcept { return std::max<std::size_t>(count_ * sizeof(T), 1); }

  std::size_t count_;
  T* data_ = nullptr;
};

// A one-shot signal between processes: waiters block reading a pipe until
// its write end is closed in every process.
class Gate {
 public:
  Gate() {
    if (::pipe2(fds_, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
  }
  ~Gate() {
    for (int fd : fds_)
      if (fd >= 0) ::close(fd);
  }
  Gate(const Gate&) = delete;
  Gate& operator=(const Gate&) = delete;

  // In a child: drop the inherited write end, then block until opened.
  void wait() {
    open();
    char c;
    while (::read(fds_[0], &c, 1) < 0 && errno == EINTR) {
    }
  }
  void open() noexcept {
    if (fds_[1] >= 0) ::close(fds_[1]);
    fds_[1] = -1;
  }

 private:
  int fds_[2];
};

// Children report "ready" by writing one byte; the parent counts them.
class ReadyPipe {
 public:
  ReadyPipe() {
    if (::pipe2(fds_, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
  }
  ~ReadyPipe() {
    for (int fd : fds_)
      if (fd >= 0) ::close(fd);
  }
  ReadyPipe(const ReadyPipe&) = delete;
  ReadyPipe& operator=(const ReadyPipe&) = delete;

  void signal() {
    const char c = 1;
    while (::write(fds_[1], &c, 1) < 0 && errno == EINTR) {
    }
  }
  // False when the children stopped signalling: one failed before it was
  // ready (the others then sit at a gate, so this cannot wait for them).
  bool await(int count) {
    if (fds_[1] >= 0) ::close(fds_[1]);
    fds_[1] = -1;
    for (int got = 0; got < count;) {
      pollfd pfd{.fd = fds_[0], .events = POLLIN, .revents = 0};
      const int ready = ::poll(&pfd, 1, 30'000);
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) return false;
      char c;
      const ssize_t n = ::read(fds_[0], &c, 1);
      if (n == 0 || (n < 0 && errno != EINTR)) return false;
      got += n > 0;
    }
    return true;
  }

 private:
  int fds_[2];
};

// Forks `n` children running `body(i)`; a child's exit status is 0 when the
// body returned normally.
std::vector<pid_t> spawn(int n, const std::function<void(int)>& body) {
  std::fflush(nullptr);
  std::vector<pid_t> pids;
  for (int i = 0; i < n; ++i) {
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
      int rc = 0;
      try {
        body(i);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "process_bench child %d: %s\n", i, e.what());
        rc = 1;
      }
      _exit(rc);
    }
    pids.push_back(pid);
  }
  return pids;
}

// Waits for every pid; returns how many did not exit with status 0.
int reap(const std::vector<pid_t>& pids) {
  int failed = 0;
  for (pid_t pid : pids) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  return failed;
}

// A clock an hour behind, so values written through it are stale for a
// region that expires entries after ten minutes.
class HourAgoClock final : public Clock {
 public:
  WallTime now() const override { return std::chrono::system_clock::now() - 1h; }
};

constexpr const char* kRegionName = "bench";
constexpr auto kExpiration = std::chrono::minutes(10);

Region open_region(const std::string& dir, std::shared_ptr<Clock> clock = nullptr) {
  return Region({.name = kRegionName, .expiration_time = kExpiration, .clock = std::move(clock)},
                "lmdb", {{"path", dir}});
}

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const auto rank = static_cast<std::size_t>(p * static_cast<double>(values.size() - 1) + 0.5);
  return values[std::min(rank, values.size() - 1)];
}

// --- N processes, one cold key ---------------------------------------------

constexpr auto kCreatorTime = 50ms;

struct ColdSlot {
  std::int64_t creator_done_ns;  // the creator returned its value (creator only)
  std::int64_t return_ns;        // get_or_create returned
  std::int32_t created;
  std::int32_t got_value;
};

// Waiter extra time: how long after the creator's get_or_create returned
// (its value stored and the lock released) each other process returned. A
// waiter woken by the unlock may return first: it waited nothing extra (0).
void BM_ColdKey(benchmark::State& state, int processes) {
  double creations = 0, extra_max = 0, extra_p50 = 0, store_ms = 0;
  for (auto _ : state) {
    TempDir dir;
    SharedArray<ColdSlot> slots(static_cast<std::size_t>(processes));
    ReadyPipe ready;
    Gate gate;
    const auto pids = spawn(processes, [&](int i) {
      Region region = open_region(dir.path());
      ready.signal();
      gate.wait();
      ColdSlot& slot = slots[static_cast<std::size_t>(i)];
      const std::string value = region.get_or_create<std::string>("cold", [&] {
        std::this_thread::sleep_for(kCreatorTime);
        slot.created = 1;
        slot.creator_done_ns = now_ns();
        return std::string(100, 'v');
      });
      slot.return_ns = now_ns();
      slot.got_value = value.size() == 100;
    });
    const bool all_ready = ready.await(processes);
    const std::int64_t start_ns = now_ns();
    gate.open();
    const int failed = reap(pids);
    if (!all_ready || failed != 0) {
      state.SkipWithError("a process failed (see stderr)");
      break;
    }

    std::int64_t end_ns = start_ns, creator_return_ns = -1;
    int created = 0, got = 0;
    for (std::size_t i = 0; i < slots.size(); ++i) {
      end_ns = std::max(end_ns, slots[i].return_ns);
      got += slots[i].got_value;
      if (slots[i].created != 0) {
        ++created;
        // With several creators, waiters are measured from the last one.
        creator_return_ns = std::max(creator_return_ns, slots[i].return_ns);
        store_ms = static_cast<double>(slots[i].return_ns - slots[i].creator_done_ns) / 1e6;
      }
    }
    if (created == 0 || got != processes) {
      state.SkipWithError("no process created the value, or one got a wrong value");
      break;
    }
    std::vector<double> extras_ms;
    for (std::size_t i = 0; i < slots.size(); ++i)
      if (slots[i].created == 0)
        extras_ms.push_back(
            static_cast<double>(std::max<std::int64_t>(slots[i].return_ns - creator_return_ns, 0)) /
            1e6);
    creations = created;
    extra_max = extras_ms.empty() ? 0 : *std::max_element(extras_ms.begin(), extras_ms.end());
    extra_p50 = percentile(extras_ms, 0.5);
    state.SetIterationTime(static_cast<double>(end_ns - start_ns) / 1e9);
  }
  state.counters["creations"] = creations;
  state.counters["waiters"] = processes - creations;
  state.counters["waiter_extra_ms_max"] = extra_max;
  state.counters["waiter_extra_ms_p50"] = extra_p50;
  state.counters["creator_ms"] = std::chrono::duration<double, std::milli>(kCreatorTime).count();
  // From the creator's value to its get_or_create returning: encode, store
  // (a durable commit) and unlock.
  state.counters["creator_store_ms"] = store_ms;
}

// --- N processes reading a stale key ----------------------------------------

// How long the readers of the stale and hit benchmarks run: shorter in the
// quick mode of scripts/bench (DOGPILE_BENCH_QUICK=1).
std::chrono::milliseconds read_window() {
  const char* quick = std::getenv("DOGPILE_BENCH_QUICK");
  return quick != nullptr && quick[0] == '1' ? 300ms : 1000ms;
}

// Each reader reads once per pace, so 16 readers on a small machine do not
// saturate its cores and the latency is the read's own, not run-queue time.
constexpr auto kStalePace = 1ms;
constexpr std::size_t kMaxStaleSamples = 4096;

struct StaleReader {
  std::uint32_t count;
  std::uint32_t not_stale;  // reads that got something other than the stale value
  std::uint32_t creations;  // times this reader ran the creator (expected 0)
  std::uint32_t samples_ns[kMaxStaleSamples];
};

void BM_StaleReads(benchmark::State& state, int readers) {
  double p50 = 0, p99 = 0, max_us = 0, reads = 0, not_stale = 0, reader_creations = 0;
  const std::string stale_value(100, 's');
  for (auto _ : state) {
    TempDir dir;
    open_region(dir.path(), std::make_shared<HourAgoClock>()).set<std::string>("k", stale_value);

    SharedArray<StaleReader> slots(static_cast<std::size_t>(readers));
    // The regenerator holds the key's creation lock until the readers are done.
    ReadyPipe regenerating;
    Gate release;
    const auto regenerator = spawn(1, [&](int) {
      Region region = open_region(dir.path());
      region.get_or_create<std::string>("k", [&] {
        regenerating.signal();
        release.wait();
        return std::string(100, 'n');
      });
    });
    if (!regenerating.await(1)) {
      release.open();
      reap(regenerator);
      state.SkipWithError("the regenerating process failed (see stderr)");
      break;
    }

    ReadyPipe ready;
    Gate gate;
    const auto pids = spawn(readers, [&](int i) {
      Region region = open_region(dir.path());
      StaleReader& slot = slots[static_cast<std::size_t>(i)];
      ready.signal();
      gate.wait();
      const std::int64_t end = now_ns() + std::chrono::nanoseconds(read_window()).count();
      while (slot.count < kMaxStaleSamples && now_ns() < end) {
        const std::int64_t t0 = now_ns();
        const std::string value = region.get_or_create<std::string>("k", [&] {
          ++slot.creations;
          return std::string(100, 'r');
        });
        const std::int64_t t1 = now_ns();
        slot.samples_ns[slot.count++] = static_cast<std::uint32_t>(
            std::min<std::int64_t>(t1 - t0, std::numeric_limits<std::uint32_t>::max()));
        slot.not_stale += value != stale_value;
        std::this_thread::sleep_for(kStalePace);
      }
    });
    const bool all_ready = ready.await(readers);
    const std::int64_t start_ns = now_ns();
    gate.open();
    const int failed = reap(pids);
    const std::int64_t end_ns = now_ns();
    release.open();
    const int regenerator_failed = reap(regenerator);
    if (!all_ready || failed != 0 || regenerator_failed != 0) {
      state.SkipWithError("a process failed (see stderr)");
      break;
    }

    std::vector<double> us;
    not_stale = reader_creations = 0;
    for (std::size_t i = 0; i < slots.size(); ++i) {
      for (std::uint32_t j = 0; j < slots[i].count; ++j)
        us.push_back(static_cast<double>(slots[i].samples_ns[j]) / 1e3);
      not_stale += slots[i].not_stale;
      reader_creations += slots[i].creations;
    }
    reads = static_cast<double>(us.size());
    p50 = percentile(us, 0.5);
    p99 = percentile(us, 0.99);
    max_us = us.empty() ? 0 : *std::max_element(us.begin(), us.end());
    state.SetIterationTime(static_cast<double>(end_ns - start_ns) / 1e9);
  }
  state.counters["p50_us"] = p50;
  state.counters["p99_us"] = p99;
  state.counters["max_us"] = max_us;
  state.counters["reads"] = reads;
  state.counters["not_stale"] = not_stale;
  state.counters["reader_creations"] = reader_creations;
  state.counters["pace_us"] = std::chrono::duration<double, std::micro>(kStalePace).count();
}

// --- hit throughput by reader count -----------------------------------------

constexpr int kHitKeys = 10'000;
constexpr std::size_t kHitValueSize = 100;

std::string hit_key(std::uint64_t i) { return "key-" + std::to_string(i); }

struct HitReader {
  std::uint64_t hits;
  std::uint64_t misses;
  std::int64_t elapsed_ns;
};

void BM_HitThroughput(benchmark::State& state, int readers) {
  double per_second = 0, misses = 0;
  for (auto _ : state) {
    TempDir dir;
    {
      Region region = open_region(dir.path());
      std::vector<std::pair<std::string, std::string>> batch;
      for (int i = 0; i < kHitKeys; ++i) {
        batch.emplace_back(hit_key(static_cast<std::uint64_t>(i)),
                           std::string(kHitValueSize, 'h'));
        if (batch.size() == 1000 || i + 1 == kHitKeys) {
          region.set_multi<std::string>(batch);
          batch.clear();
        }
      }
    }

    SharedArray<HitReader> slots(static_cast<std::size_t>(readers));
    ReadyPipe ready;
    Gate gate;
    const auto pids = spawn(readers, [&](int i) {
      Region region = open_region(dir.path());
      std::vector<std::string> keys;
      for (int k = 0; k < kHitKeys; ++k) keys.push_back(hit_key(static_cast<std::uint64_t>(k)));
      HitReader& slot = slots[static_cast<std::size_t>(i)];
      std::uint64_t x = 0x9e3779b97f4a7c15ULL * static_cast<std::uint64_t>(i + 1);
      std::uint64_t hits = 0, missed = 0;
      ready.signal();
      gate.wait();
      const std::int64_t start = now_ns();
      const std::int64_t end = start + std::chrono::nanoseconds(read_window()).count();
      std::int64_t now = start;
      while (now < end) {
        // Check the clock every 64 reads; xorshift picks the keys.
        for (int r = 0; r < 64; ++r) {
          x ^= x << 13;
          x ^= x >> 7;
          x ^= x << 17;
          const auto value = region.get<std::string>(keys[x % kHitKeys]);
          if (value && value->size() == kHitValueSize)
            ++hits;
          else
            ++missed;
        }
        now = now_ns();
      }
      slot.hits = hits;
      slot.misses = missed;
      slot.elapsed_ns = now - start;
    });
    const bool all_ready = ready.await(readers);
    const std::int64_t start_ns = now_ns();
    gate.open();
    const int failed = reap(pids);
    const std::int64_t end_ns = now_ns();
    if (!all_ready || failed != 0) {
      state.SkipWithError("a process failed (see stderr)");
      break;
    }
    per_second = misses = 0;
    for (std::size_t i = 0; i < slots.size(); ++i) {
      if (slots[i].elapsed_ns > 0)
        per_second +=
            static_cast<double>(slots[i].hits) / (static_cast<double>(slots[i].elapsed_ns) / 1e9);
      misses += static_cast<double>(slots[i].misses);
    }
    state.SetIterationTime(static_cast<double>(end_ns - start_ns) / 1e9);
  }
  // Total hits per second across the readers, each over its own window.
  state.counters["items_per_second"] = per_second;
  state.counters["per_reader_per_second"] = per_second / readers;
  state.counters["misses"] = misses;
}

void register_all() {
  for (int n : {1, 2, 4, 8, 16})
    benchmark::RegisterBenchmark(("process/cold_key/N=" + std::to_string(n)).c_str(), BM_ColdKey,
                                 n)
        ->Iterations(1)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  for (int n : {1, 4, 16})
    benchmark::RegisterBenchmark(("process/stale_reads/N=" + std::to_string(n)).c_str(),
                                 BM_StaleReads, n)
        ->Iterations(1)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  for (int n : {1, 2, 4})
    benchmark::RegisterBenchmark(("process/hit_throughput/readers=" + std::to_string(n)).c_str(),
                                 BM_HitThroughput, n)
        ->Iterations(1)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
}

}  // namespace
}  // namespace dogpile

int main(int argc, char** argv) {
  dogpile::register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
