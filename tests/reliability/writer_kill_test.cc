// Writer killed: a child commits batches (set, set_multi, erase, erase_multi,
// with overwrites) on an lmdb region and is SIGKILLed at random points, then
// restarted on the same directory. Before each commit it announces the batch
// on a pipe ("B ..."), after the commit returns it acknowledges it ("A ...").
// After every kill the parent reopens the cache and reads every key:
//
//   - reopening never fails;
//   - every acknowledged write is there (the last acknowledged value of each
//     key, or its absence after an acknowledged erase);
//   - nothing unannounced is visible; the one batch announced but not
//     acknowledged at the kill is either wholly there (its commit finished,
//     the ack had not been written) or wholly absent;
//   - Store::verify finds every envelope and index entry sound.
//
// Every value is unique ("<life>.<batch>.<item>|" + filler of a chosen
// length), so a value read names the operation that wrote it.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdio>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "dogpile/dogpile.h"
#include "dogpile/store.h"
#include "reliability_util.h"
#include "test_util.h"

using namespace dogpile;
using namespace dogpile::test;

namespace {

constexpr int kKeys = 400;
constexpr const char* kRegion = "wk";

// Keys 0, 20, 40, ... are longer than kMaxInlineKeySize: stored under their
// hash with the full key in the envelope.
std::string key_name(int i) {
  std::string key = "key-" + std::to_string(i);
  if (i % 20 == 0) key += "-" + std::string(kMaxInlineKeySize + 40, 'x');
  return key;
}

// A value unique to (life, batch, item), `length` bytes long.
std::string make_value(std::uint64_t life, std::uint64_t batch, int item, std::size_t length) {
  std::string value =
      std::to_string(life) + "." + std::to_string(batch) + "." + std::to_string(item) + "|";
  std::uint64_t x = life * 0x9E3779B97F4A7C15ull ^ batch * 0xBF58476D1CE4E5B9ull ^
                    static_cast<std::uint64_t>(item);
  while (value.size() < length) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    value.push_back(static_cast<char>('a' + (x >> 59)));
  }
  return value;
}

const char* durability_name(Durability d) {
  switch (d) {
    case Durability::kDurable: return "durable";
    case Durability::kNoMetaSync: return "nometasync";
    case Durability::kNoSync: return "nosync";
  }
  return "durable";
}

bool write_all(int fd, const std::string& text) {
  // One write of at most PIPE_BUF bytes: a kill never leaves half a line.
  return ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
}

// One operation of a batch.
struct Op {
  bool erase = false;
  int key = 0;
  std::size_t length = 0;  // of the value set
};

// One batch: one transaction (one Region call).
struct Batch {
  std::uint64_t life = 0;
  std::uint64_t number = 0;
  std::vector<Op> ops;
};

// The child: commits batches until killed. Exit codes other than by signal
// mean it failed on its own.
[[noreturn]] void writer_child(const std::string& dir, Durability durability, std::uint64_t life,
                               std::uint64_t seed, int fd) {
  int code = 0;
  try {
    Region region({.name = kRegion, .logger = [](LogLevel, std::string_view) {}}, "lmdb",
                  {{"path", dir}, {"durability", durability_name(durability)}});
    std::mt19937_64 rng(seed ^ (life * 0x9E3779B97F4A7C15ull));
    std::uniform_int_distribution<int> pick_key(0, kKeys - 1);
    std::uniform_int_distribution<int> pick_kind(0, 99);
    std::uniform_int_distribution<int> pick_small(8, 200);
    std::uniform_int_distribution<int> pick_large(3000, 20000);
    for (std::uint64_t batch = 0;; ++batch) {
      const int kind = pick_kind(rng);
      const bool erase = kind >= 70;
      const bool multi = (kind >= 35 && kind < 70) || kind >= 85;
      const int items = multi ? std::uniform_int_distribution<int>(2, erase ? 6 : 20)(rng) : 1;
      std::set<int> keys;
      while (static_cast<int>(keys.size()) < items) keys.insert(pick_key(rng));
      std::ostringstream announce;
      announce << "B " << batch;
      std::vector<std::pair<std::string, std::string>> values;
      std::vector<std::string> erased;
      int item = 0;
      for (int k : keys) {
        if (erase) {
          announce << " e" << k;
          erased.push_back(key_name(k));
        } else {
          const std::size_t length = pick_kind(rng) < 10 ? pick_large(rng) : pick_small(rng);
          announce << " s" << k << ":" << length;
          values.emplace_back(key_name(k), make_value(life, batch, item, length));
        }
        ++item;
      }
      announce << "\n";
      if (!write_all(fd, announce.str())) _exit(3);
      if (erase) {
        if (multi) {
          region.erase_multi(erased);
        } else {
          region.erase(erased.front());
        }
      } else if (multi) {
        region.set_multi<std::string>(values);
      } else {
        region.set<std::string>(values.front().first, values.front().second);
      }
      if (!write_all(fd, "A " + std::to_string(batch) + "\n")) _exit(4);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "writer child %llu: %s\n", static_cast<unsigned long long>(life),
                 e.what());
    code = 2;
  }
  _exit(code);
}

// Parses the child's lines: the acknowledged batches in order, and the
// batch announced last if it was not acknowledged.
void parse_lines(const std::string& text, std::uint64_t life, std::vector<Batch>& acked,
                 std::optional<Batch>& pending, int& bad_lines) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    std::istringstream words(line);
    std::string tag;
    std::uint64_t number = 0;
    words >> tag >> number;
    if (tag == "B") {
      if (pending) ++bad_lines;  // two announcements without an ack
      Batch batch;
      batch.life = life;
      batch.number = number;
      for (std::string word; words >> word;) {
        Op op;
        op.erase = word[0] == 'e';
        op.key = std::stoi(word.substr(1));
        if (!op.erase) op.length = std::stoul(word.substr(word.find(':') + 1));
        batch.ops.push_back(op);
      }
      pending = std::move(batch);
    } else if (tag == "A" && pending && pending->number == number) {
      acked.push_back(std::move(*pending));
      pending.reset();
    } else {
      ++bad_lines;
    }
  }
}

using State = std::vector<std::optional<std::string>>;  // expected value per key

// The id of a value: "<life>.<batch>.<item>".
std::string value_id(const std::string& value) { return value.substr(0, value.find('|')); }

// Whether `value` is exactly what make_value gives for its id and length.
bool well_formed(const std::string& value) {
  unsigned long long life = 0;
  unsigned long long batch = 0;
  int item = 0;
  if (std::sscanf(value.c_str(), "%llu.%llu.%d|", &life, &batch, &item) != 3) return false;
  return value == make_value(life, batch, item, value.size());
}

void apply(const Batch& batch, State& state) {
  int item = 0;
  for (const Op& op : batch.ops) {
    if (op.erase) {
      state[op.key].reset();
    } else {
      state[op.key] = make_value(batch.life, batch.number, item, op.length);
    }
    ++item;
  }
}

struct Figures {
  int kills = 0;
  int reopen_errors = 0;
  int child_failures = 0;      // children that exited on their own
  int bad_lines = 0;
  std::uint64_t batches_acked = 0;
  std::uint64_t writes_acked = 0;  // set items
  std::uint64_t erases_acked = 0;
  int kills_before_first_ack = 0;
  int kills_with_pending = 0;       // a batch announced, not acknowledged
  int pending_committed = 0;        // ... and found committed
  int torn_batches = 0;             // partly visible: must be 0
  std::uint64_t lost = 0;           // acknowledged state not found
  std::uint64_t unacked_visible = 0;  // a value nobody announced, or from a lost batch
  std::uint64_t wrong_values = 0;     // a value that is not what its id says
  std::uint64_t read_errors = 0;    // region store_errors / corruptions while checking
  int verifies = 0;
  std::uint64_t verify_problems = 0;
  std::uint64_t verified_entries = 0;
};

// Reopens the cache and compares it with `expected` (plus `pending`, which
// may or may not have committed). Updates `expected` with the outcome;
// returns whether the pending batch is now part of it.
bool check_store(const std::string& dir, Durability durability, State& expected,
                 const std::optional<Batch>& pending, const std::set<std::string>& acked_ids,
                 Figures& f) {
  std::optional<Region> region;
  try {
    region.emplace(RegionOptions{.name = kRegion}, "lmdb",
                   ConfigMap{{"path", dir}, {"durability", durability_name(durability)}});
  } catch (const Error& e) {
    ++f.reopen_errors;
    UNSCOPED_INFO("reopen failed: " << e.what());
    return false;
  }
  std::vector<std::string> keys;
  for (int i = 0; i < kKeys; ++i) keys.push_back(key_name(i));
  const std::vector<std::optional<std::string>> seen = region->get_multi<std::string>(keys);
  const RegionStats stats = region->stats();
  f.read_errors += stats.store_errors + stats.corruptions + stats.mismatches;

  State after = expected;
  std::set<int> pending_keys;
  if (pending) {
    apply(*pending, after);
    for (const Op& op : pending->ops) pending_keys.insert(op.key);
  }
  int as_before = 0;
  int as_after = 0;
  for (int i = 0; i < kKeys; ++i) {
    const bool is_before = seen[i] == expected[i];
    const bool is_after = seen[i] == after[i];
    if (pending_keys.count(i) != 0 && is_before != is_after) {
      as_before += is_before;
      as_after += is_after;
    }
    if (is_before || (pending_keys.count(i) != 0 && is_after)) continue;
    // Neither what was acknowledged nor what the pending batch wrote.
    if (seen[i] && !well_formed(*seen[i])) {
      ++f.wrong_values;
    } else if (!seen[i] || acked_ids.count(value_id(*seen[i])) != 0) {
      ++f.lost;  // gone, or an older acknowledged state came back
    } else {
      ++f.unacked_visible;
    }
    UNSCOPED_INFO("key " << i << ": expected "
                         << (expected[i] ? expected[i]->substr(0, 24) : "none") << ", found "
                         << (seen[i] ? seen[i]->substr(0, 24) : "none"));
  }
  if (as_before > 0 && as_after > 0) ++f.torn_batches;
  if (!pending) return false;
  if (as_after > 0) ++f.pending_committed;
  // With as_after == as_before == 0 every key of the batch already held what
  // it would write (an erase of absent keys): the two are the same.
  if (as_after == 0 && as_before > 0) return false;
  expected = std::move(after);
  return true;
}

void run_store_verify(const std::string& dir, Figures& f) {
  try {
    Store store = Store::open({.path = dir});
    const VerifyReport report = store.verify();
    ++f.verifies;
    f.verify_problems += report.problems.size();
    f.verified_entries = report.entries;
    for (const VerifyProblem& p : report.problems) {
      UNSCOPED_INFO("verify: " << p.region << " " << p.key.substr(0, 40) << ": " << p.what);
    }
  } catch (const Error& e) {
    ++f.reopen_errors;
    UNSCOPED_INFO("verify failed: " << e.what());
  }
}

// Drains `fd` into `out` until `deadline` (or EOF when deadline is null).
void drain(int fd, std::string& out, std::optional<std::chrono::steady_clock::time_point> deadline) {
  char buffer[4096];
  for (;;) {
    int timeout_ms = -1;
    if (deadline) {
      const auto left = std::chrono::duration_cast<std::chrono::microseconds>(
          *deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return;
      timeout_ms = static_cast<int>((left.count() + 999) / 1000);
    }
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, timeout_ms);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      if (deadline) continue;  // re-check the deadline
      return;
    }
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // EOF: the child is gone
    out.append(buffer, static_cast<std::size_t>(n));
  }
}

void run_kills(Durability durability, int kills, int max_delay_us) {
  const std::uint64_t seed = reliability_seed() ^ static_cast<std::uint64_t>(durability);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> delay(0, max_delay_us);
  TempDir dir;
  State expected(kKeys);
  std::set<std::string> acked_ids;  // ids of every acknowledged value
  Figures f;
  const auto start = std::chrono::steady_clock::now();
  for (int life = 0; life < kills; ++life) {
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::close(fds[0]);
      writer_child(dir.path(), durability, static_cast<std::uint64_t>(life), seed, fds[1]);
    }
    ::close(fds[1]);
    std::string text;
    // Every other life, the delay counts from the first batch announced
    // rather than from fork(): a busy machine can spend the whole delay on
    // starting the child, and the kills must also land among commits.
    if (life % 2 == 1) {
      const auto limit = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (text.rfind("B ", 0) != 0 && text.find("\nB ") == std::string::npos &&
             std::chrono::steady_clock::now() < limit) {
        drain(fds[0], text, std::chrono::steady_clock::now() + std::chrono::milliseconds(1));
      }
    }
    drain(fds[0], text, std::chrono::steady_clock::now() + std::chrono::microseconds(delay(rng)));
    ::kill(pid, SIGKILL);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    drain(fds[0], text, std::nullopt);
    ::close(fds[0]);
    ++f.kills;
    if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)) ++f.child_failures;

    std::vector<Batch> acked;
    std::optional<Batch> pending;
    parse_lines(text, static_cast<std::uint64_t>(life), acked, pending, f.bad_lines);
    if (acked.empty()) ++f.kills_before_first_ack;
    const auto remember = [&](const Batch& b) {
      for (std::size_t item = 0; item < b.ops.size(); ++item) {
        acked_ids.insert(std::to_string(b.life) + "." + std::to_string(b.number) + "." +
                         std::to_string(item));
      }
    };
    for (const Batch& b : acked) {
      apply(b, expected);
      remember(b);
      ++f.batches_acked;
      for (const Op& op : b.ops) ++(op.erase ? f.erases_acked : f.writes_acked);
    }
    if (pending) ++f.kills_with_pending;
    if (check_store(dir.path(), durability, expected, pending, acked_ids, f)) remember(*pending);
    if (life % 25 == 24) run_store_verify(dir.path(), f);
  }
  run_store_verify(dir.path(), f);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  const char* mode = durability_name(durability);
  figure("writer_kill[%s]: %d kills (delays 0-%d us), %llu batches acknowledged "
         "(%llu writes, %llu erases), %d kills before the first ack",
         mode, f.kills, max_delay_us, static_cast<unsigned long long>(f.batches_acked),
         static_cast<unsigned long long>(f.writes_acked),
         static_cast<unsigned long long>(f.erases_acked), f.kills_before_first_ack);
  figure("writer_kill[%s]: %d kills with a batch in flight, %d of them found committed "
         "(ack not yet written), %d torn batches",
         mode, f.kills_with_pending, f.pending_committed, f.torn_batches);
  figure("writer_kill[%s]: %d reopen errors, %llu acknowledged writes lost, %llu unacknowledged "
         "writes visible, %llu wrong values, %llu read errors, %d children failed on their own",
         mode, f.reopen_errors, static_cast<unsigned long long>(f.lost),
         static_cast<unsigned long long>(f.unacked_visible),
         static_cast<unsigned long long>(f.wrong_values),
         static_cast<unsigned long long>(f.read_errors), f.child_failures);
  figure("writer_kill[%s]: %d verify runs, %llu problems (last: %llu entries), %.1f s",
         mode, f.verifies, static_cast<unsigned long long>(f.verify_problems),
         static_cast<unsigned long long>(f.verified_entries), seconds);

  CHECK(f.kills == kills);
  CHECK(f.reopen_errors == 0);
  CHECK(f.child_failures == 0);
  CHECK(f.bad_lines == 0);
  CHECK(f.lost == 0);
  CHECK(f.unacked_visible == 0);
  CHECK(f.wrong_values == 0);
  CHECK(f.torn_batches == 0);
  CHECK(f.read_errors == 0);
  CHECK(f.verify_problems == 0);
  CHECK(f.verifies >= 1);
  // The kills must have hit the interesting places: inside commits and
  // between acknowledged batches.
  CHECK(f.batches_acked > static_cast<std::uint64_t>(kills));
  CHECK(f.kills_with_pending > 0);
}

}  // namespace

TEST_CASE("a writer killed at random points loses nothing acknowledged (durable)",
          "[reliability][writer_kill]") {
  run_kills(Durability::kDurable, scaled(200, 2000), kSanitized ? 150000 : 60000);
}

TEST_CASE("a writer killed at random points loses nothing acknowledged (nosync, process kill)",
          "[reliability][writer_kill]") {
  // nosync gives up durability against power loss, not against a process
  // dying: the page cache keeps every commit.
  run_kills(Durability::kNoSync, scaled(100, 1000), kSanitized ? 60000 : 20000);
}
