// Readers killed: child processes open the cache and sit inside read
// transactions (an active snapshot each, as a get in progress has) until the
// reader table (max_readers) is full, then are SIGKILLed. Their slots stay
// taken and their snapshots stay pinned until someone checks the table.
//
//   - The next get, in the parent (which needs a new slot) and in a fresh
//     process, succeeds: the reader table is checked and the read retried.
//   - Round after round, with writes in between, data.mdb stops growing:
//     dead readers do not keep old pages from being reused.
//   - A few dead readers that do not fill the table (so nothing forces a
//     check) do not pin pages either: writes keep reusing them instead of
//     growing the file to max_size and failing with CacheFull.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "backends/lmdb_env.h"
#include "dogpile/dogpile.h"
#include "dogpile/lmdb_backend.h"
#include "reliability_util.h"
#include "test_util.h"

using namespace dogpile;
using namespace dogpile::test;

namespace {

constexpr std::size_t kValueSize = 1000;  // below LMDB's overflow threshold: leaf pages

std::string key_name(int i) { return "key-" + std::to_string(i); }

std::string value_for(int key, int version) {
  std::string v = std::to_string(key) + "@" + std::to_string(version) + "|";
  v.resize(kValueSize, static_cast<char>('a' + (key + version) % 26));
  return v;
}

LmdbOptions options_for(const std::string& dir, std::uint32_t max_readers,
                        std::uint64_t max_size = std::uint64_t{1} << 30) {
  LmdbOptions options;
  options.path = dir;
  options.region = "readers";
  options.max_readers = max_readers;
  options.max_size = max_size;
  return options;
}

std::uint64_t file_size(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return static_cast<std::uint64_t>(st.st_size);
}

bool wait_exit(pid_t pid, int& status) {
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return false;
  }
  return true;
}

// A child holding an active read transaction on the cache, or nothing when
// the reader table had no slot for it.
struct Holder {
  pid_t pid = -1;
  bool holding = false;
};

// Forks a child that opens the cache in its own environment, begins a read
// transaction, reads `key` inside it and then waits, transaction open, to
// be killed. Reports 'r' (reading) or 'f' (no reader slot) on a pipe.
Holder spawn_holder(const LmdbOptions& options, const std::string& key) {
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // Dies with the test, should a REQUIRE end it before the kill.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    ::close(ready[0]);
    char verdict = 'e';
    // All three kept until the kill: closing the environment would free the
    // reader slot (mdb_env_close clears this process's slots).
    std::unique_ptr<Backend> backend;
    std::shared_ptr<internal::LmdbEnv> env;
    internal::ReadTxn txn;
    try {
      backend = open_lmdb_backend(options);
      const internal::LmdbEnvOptions env_options{options.max_size, options.max_regions,
                                                 options.max_readers, options.durability};
      internal::RegionRef region;
      // The region is open already (the backend opened it): no transaction.
      if (internal::LmdbEnv::acquire(options.path, env_options, env).is_ok() &&
          env->open_region(options.region, region).is_ok()) {
        if (env->begin_read(txn).is_ok()) {
          // A get in progress: a lookup inside the open transaction.
          internal::StoredKey stored(key);
          MDB_val k = stored.val();
          MDB_val v{};
          verdict = mdb_get(txn.get(), region.dbi, &k, &v) == MDB_SUCCESS ? 'r' : 'e';
        } else {
          verdict = 'f';
        }
      }
    } catch (...) {
      verdict = 'e';
    }
    if (::write(ready[1], &verdict, 1) != 1) ::_exit(2);
    if (verdict != 'r') ::_exit(verdict == 'f' ? 0 : 1);
    for (;;) ::pause();
  }
  ::close(ready[1]);
  char verdict = 0;
  const ssize_t n = ::read(ready[0], &verdict, 1);
  ::close(ready[0]);
  Holder holder;
  holder.pid = pid;
  holder.holding = n == 1 && verdict == 'r';
  if (!holder.holding) {
    int status = 0;
    wait_exit(pid, status);
    INFO("holder verdict '" << verdict << "'");
    REQUIRE(verdict == 'f');
  }
  return holder;
}

void kill_all(const std::vector<pid_t>& pids) {
  for (const pid_t pid : pids) REQUIRE(::kill(pid, SIGKILL) == 0);
  for (const pid_t pid : pids) {
    int status = 0;
    REQUIRE(wait_exit(pid, status));
    CHECK((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));
  }
}

// A fresh process opens the cache and reads `key`: 0 when it read `expected`.
int fresh_process_get(const LmdbOptions& options, const std::string& key,
                      const std::string& expected) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int code = 1;
    try {
      std::unique_ptr<Backend> backend = open_lmdb_backend(options);
      std::optional<std::string> value;
      const Status s = backend->get(key, value);
      code = !s.is_ok() ? 2 : value != expected ? 3 : 0;
    } catch (...) {
      code = 4;
    }
    ::_exit(code);
  }
  int status = 0;
  REQUIRE(wait_exit(pid, status));
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

TEST_CASE("readers killed until the reader table is full, round after round",
          "[reliability][reader_kill]") {
  constexpr std::uint32_t kMaxReaders = 16;
  constexpr int kKeys = 300;
  const int rounds = scaled(30, 300);
  const int warmup = 5;
  std::mt19937_64 rng(reliability_seed());
  TempDir dir;
  const LmdbOptions options = options_for(dir.path(), kMaxReaders);
  const auto start = std::chrono::steady_clock::now();

  // Opened first: its max_readers sizes lock.mdb.
  std::unique_ptr<Backend> backend = open_lmdb_backend(options);
  std::vector<int> version(kKeys, 0);
  {
    std::vector<KeyValue> items;
    for (int i = 0; i < kKeys; ++i) items.emplace_back(key_name(i), value_for(i, 0));
    REQUIRE(backend->set_multi(items).is_ok());
  }

  int killed = 0;
  int min_holders = kMaxReaders;
  int parent_get_failures = 0;
  int fresh_get_failures = 0;
  int write_failures = 0;
  std::vector<std::uint64_t> sizes;
  for (int round = 0; round < rounds; ++round) {
    // Reopened each round, so the parent keeps no pooled readers from the
    // last one; then it sits in a read transaction of its own, so its next
    // get needs a second reader slot.
    backend.reset();
    backend = open_lmdb_backend(options);
    std::shared_ptr<internal::LmdbEnv> env;
    REQUIRE(internal::LmdbEnv::acquire(dir.path(), {}, env).is_ok());
    internal::ReadTxn pin;
    REQUIRE(env->begin_read(pin).is_ok());
    const int probe = static_cast<int>(rng() % kKeys);

    std::vector<pid_t> holders;
    for (;;) {
      const Holder h = spawn_holder(options, key_name(probe));
      if (!h.holding) break;
      holders.push_back(h.pid);
      REQUIRE(holders.size() < 4 * kMaxReaders);
    }
    min_holders = std::min<int>(min_holders, static_cast<int>(holders.size()));
    kill_all(holders);
    killed += static_cast<int>(holders.size());

    // The table is full of dead readers. Alternate who reads first, so
    // each of them meets a full table in turn.
    const auto parent_get = [&] {
      std::optional<std::string> value;
      const Status s = backend->get(key_name(probe), value);
      if (!s.is_ok() || value != value_for(probe, version[probe])) {
        ++parent_get_failures;
        UNSCOPED_INFO("round " << round << ": parent get: " << s.to_string());
      }
    };
    if (round % 2 == 0) parent_get();
    pin.end();
    if (fresh_process_get(options, key_name(probe), value_for(probe, version[probe])) != 0) {
      ++fresh_get_failures;
    }
    if (round % 2 == 1) parent_get();

    // Writes between rounds: a third of the keys overwritten, ten batches.
    for (int batch = 0; batch < 10; ++batch) {
      std::vector<KeyValue> items;
      for (int j = 0; j < kKeys / 30; ++j) {
        const int k = static_cast<int>(rng() % kKeys);
        ++version[k];
        items.emplace_back(key_name(k), value_for(k, version[k]));
      }
      if (!backend->set_multi(items).is_ok()) ++write_failures;
    }
    sizes.push_back(file_size(dir / "data.mdb"));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::uint64_t settled = sizes[warmup - 1];
  const std::uint64_t largest = *std::max_element(sizes.begin(), sizes.end());

  figure("reader_kill[full table]: %d rounds, %d readers killed inside read transactions "
         "(max_readers %u, at least %d per round), %d parent get failures, %d fresh-process "
         "get failures, %d write failures",
         rounds, killed, kMaxReaders, min_holders, parent_get_failures, fresh_get_failures,
         write_failures);
  figure("reader_kill[full table]: data.mdb %llu bytes after round %d, %llu after round %d "
         "(largest %llu), %.1f s",
         static_cast<unsigned long long>(settled), warmup,
         static_cast<unsigned long long>(sizes.back()), rounds,
         static_cast<unsigned long long>(largest), seconds);

  CHECK(min_holders == static_cast<int>(kMaxReaders) - 1);
  CHECK(parent_get_failures == 0);
  CHECK(fresh_get_failures == 0);
  CHECK(write_failures == 0);
  // Stable after the first rounds: a page or two of tree-shape variance,
  // where pinned pages would add ~100 KB (a round's writes) every round.
  CHECK(largest <= settled + settled / 20);
}

TEST_CASE("a few readers killed inside read transactions do not pin old pages",
          "[reliability][reader_kill]") {
  // The table never fills (2 dead readers of 64 slots), so no read ever
  // meets MDB_READERS_FULL: only the writer can notice the dead readers,
  // when the map fills up.
  constexpr std::uint32_t kMaxReaders = 64;
  constexpr std::uint64_t kMaxSize = std::uint64_t{4} << 20;
  constexpr int kKeys = 400;  // ~420 KB of live data in a 4 MiB store
  const int rounds = scaled(40, 400);
  const int warmup = 10;
  std::mt19937_64 rng(reliability_seed() + 1);
  TempDir dir;
  const LmdbOptions options = options_for(dir.path(), kMaxReaders, kMaxSize);
  const auto start = std::chrono::steady_clock::now();

  std::unique_ptr<Backend> backend = open_lmdb_backend(options);
  std::vector<int> version(kKeys, 0);
  {
    std::vector<KeyValue> items;
    for (int i = 0; i < kKeys; ++i) items.emplace_back(key_name(i), value_for(i, 0));
    REQUIRE(backend->set_multi(items).is_ok());
  }
  int killed = 0;
  int write_failures = 0;
  int full_failures = 0;
  std::vector<std::uint64_t> sizes;
  for (int round = 0; round < rounds; ++round) {
    if (round % 20 == 0) {
      // Two processes die inside read transactions, pinning this snapshot.
      std::vector<pid_t> holders;
      for (int i = 0; i < 2; ++i) {
        const Holder h = spawn_holder(options, key_name(i));
        REQUIRE(h.holding);
        holders.push_back(h.pid);
      }
      kill_all(holders);
      killed += 2;
    }
    // Every key overwritten once per round, in 20 transactions: about the
    // live data again, so 10 rounds of pinned pages would fill max_size.
    for (int batch = 0; batch < 20; ++batch) {
      std::vector<KeyValue> items;
      for (int k = batch; k < kKeys; k += 20) {
        ++version[k];
        items.emplace_back(key_name(k), value_for(k, version[k]));
      }
      const Status s = backend->set_multi(items);
      if (!s.is_ok()) {
        ++write_failures;
        full_failures += s.code() == StatusCode::kFull;
        UNSCOPED_INFO("round " << round << ": " << s.to_string());
      }
    }
    sizes.push_back(file_size(dir / "data.mdb"));
  }
  // Nothing was evicted to make room: every key holds its last value.
  int lost = 0;
  for (int k = 0; k < kKeys; ++k) {
    std::optional<std::string> value;
    const Status s = backend->get(key_name(k), value);
    lost += !s.is_ok() || value != value_for(k, version[k]);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::uint64_t settled = sizes[warmup - 1];
  const std::uint64_t largest = *std::max_element(sizes.begin(), sizes.end());
  figure("reader_kill[few dead readers]: %d rounds of overwrites (~%zu KB each), %d readers "
         "killed, %d write failures (%d CacheFull), %d keys lost to eviction",
         rounds, kKeys * kValueSize / 1000, killed, write_failures, full_failures, lost);
  figure("reader_kill[few dead readers]: data.mdb %llu bytes after round %d, %llu after round "
         "%d (largest %llu, max_size %llu), %.1f s",
         static_cast<unsigned long long>(settled), warmup,
         static_cast<unsigned long long>(sizes.back()), rounds,
         static_cast<unsigned long long>(largest), static_cast<unsigned long long>(kMaxSize),
         seconds);
  CHECK(write_failures == 0);
  CHECK(lost == 0);
  CHECK(largest <= settled + settled / 20);
}
