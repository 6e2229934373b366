// Region operations beside raw liblmdb doing the same work (the floor).
//
// Every row runs in a 100k-key store on disk (a temporary directory under
// /var/tmp, filled once per process when a row first needs it and removed at
// exit), with keys drawn at random from the 100k. Benchmarks are named
// engine/<row>/<column>: the dogpile column is the Region call, lmdb_floor is
// liblmdb alone doing the same work in the same binary, and multi rows add
// dogpile_100_sets, the same items written by 100 Region::set calls.
//
//   get_hit, get_or_create_hit  floor: mdb_get in a reused read transaction
//                               (mdb_txn_renew / mdb_txn_reset) plus a copy of
//                               the value into a std::string
//   get_miss                    floor: the same mdb_get of an absent key
//   set_<durability>            floor: mdb_put + commit in an environment
//                               with the same sync flags
//   set_multi100_<durability>   floor: 100 mdb_put in one transaction
//
// Values are std::string of 100 B or 1 KiB in the region's default codec;
// the floor stores the same bytes bare. Times are wall-clock (UseRealTime,
// which appends "/real_time" to each name): durable writes wait on the
// disk, not the CPU. Multi rows report the time per item: each pass of the
// loop writes one batch and counts kBatch iterations
// (State::KeepRunningBatch), so the time column is already divided by the
// batch size; items_per_second (SetItemsProcessed) says the same as a rate.
#include <benchmark/benchmark.h>
#include <lmdb.h>
#include <stdlib.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dogpile/region.h"

namespace dogpile {
namespace {

constexpr std::size_t kKeys = 100000;
constexpr std::size_t kBatch = 100;
constexpr std::size_t kSmall = 100;
constexpr std::size_t kLarge = 1024;

enum class Mode { kDurable, kNoMetaSync, kNoSync };
constexpr std::array kModes = {Mode::kDurable, Mode::kNoMetaSync, Mode::kNoSync};

const char* mode_name(Mode mode) {
  switch (mode) {
    case Mode::kDurable:
      return "durable";
    case Mode::kNoMetaSync:
      return "nometasync";
    case Mode::kNoSync:
      return "nosync";
  }
  return "?";
}

unsigned mode_flags(Mode mode) {
  switch (mode) {
    case Mode::kDurable:
      return 0;
    case Mode::kNoMetaSync:
      return MDB_NOMETASYNC;
    case Mode::kNoSync:
      return MDB_NOSYNC;
  }
  return 0;
}

const char* size_name(std::size_t size) { return size == kSmall ? "100B" : "1KiB"; }

void check(int rc, const char* what) {
  if (rc != MDB_SUCCESS) throw std::runtime_error(std::string(what) + ": " + mdb_strerror(rc));
}

MDB_val as_val(std::string_view bytes) {
  return MDB_val{bytes.size(), const_cast<char*>(bytes.data())};
}

// A fresh directory under /var/tmp, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string pattern = "/var/tmp/dogpile-engine-bench.XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const noexcept { return path_; }

 private:
  std::string path_;
};

// A plain LMDB environment: the floor's store.
class RawEnv {
 public:
  RawEnv(const std::string& dir, unsigned flags) {
    std::filesystem::create_directories(dir);
    check(mdb_env_create(&env_), "mdb_env_create");
    check(mdb_env_set_maxdbs(env_, 4), "mdb_env_set_maxdbs");
    check(mdb_env_set_mapsize(env_, std::size_t{1} << 30), "mdb_env_set_mapsize");
    check(mdb_env_open(env_, dir.c_str(), MDB_NOTLS | flags, 0600), "mdb_env_open");
  }
  RawEnv(const RawEnv&) = delete;
  RawEnv& operator=(const RawEnv&) = delete;
  ~RawEnv() { mdb_env_close(env_); }

  MDB_env* get() const noexcept { return env_; }

  MDB_dbi open_db(const char* name) {
    MDB_txn* txn = nullptr;
    check(mdb_txn_begin(env_, nullptr, 0, &txn), "mdb_txn_begin");
    MDB_dbi dbi = 0;
    check(mdb_dbi_open(txn, name, MDB_CREATE, &dbi), "mdb_dbi_open");
    check(mdb_txn_commit(txn), "mdb_txn_commit");
    return dbi;
  }

 private:
  MDB_env* env_ = nullptr;
};

// Key names and values. Keys are "key:NNNNNNN" for 0 <= N < kKeys; absent
// keys use the same numbers under "absent:".
std::string key_name(std::string_view prefix, std::uint32_t n) {
  std::string out(prefix);
  out.resize(prefix.size() + 7);
  for (std::size_t i = out.size(); i-- > prefix.size(); n /= 10)
    out[i] = static_cast<char>('0' + n % 10);
  return out;
}

std::string make_value(std::size_t size, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string out(size, '\0');
  for (char& c : out) c = static_cast<char>('a' + rng() % 26);
  return out;
}

const std::string& value_of(std::size_t size) {
  static const std::string small = make_value(kSmall, 1);
  static const std::string large = make_value(kLarge, 2);
  return size == kSmall ? small : large;
}

// Random keys of the 100k, made in a buffer of the stream's own: reading
// them from a table would add a cache miss per operation that neither
// column's store is responsible for.
class KeyStream {
 public:
  explicit KeyStream(std::string_view prefix, std::uint64_t seed = 1)
      : key_(key_name(prefix, 0)),
        digits_(prefix.size()),
        state_(seed * 0x9E3779B97F4A7C15ull | 1) {}
  std::string_view next() noexcept {
    // xorshift64*: cheap, and uniform enough over 100k keys.
    state_ ^= state_ >> 12;
    state_ ^= state_ << 25;
    state_ ^= state_ >> 27;
    std::uint32_t n = static_cast<std::uint32_t>(((state_ * 0x2545F4914F6CDD1Dull) >> 32) % kKeys);
    for (std::size_t i = key_.size(); i-- > digits_; n /= 10)
      key_[i] = static_cast<char>('0' + n % 10);
    return key_;
  }

 private:
  std::string key_;
  std::size_t digits_;
  std::uint64_t state_;
};

constexpr std::string_view kPresent = "key:";
constexpr std::string_view kAbsent = "absent:";

// One durability mode's stores: a dogpile cache directory with a region per
// value size, and a raw LMDB environment with the same flags and contents.
struct Stores {
  Stores(const std::string& root, Mode mode)
      : floor_env(root + "/lmdb-" + mode_name(mode), mode_flags(mode)) {
    const std::string dir = root + "/dogpile-" + mode_name(mode);
    const ConfigMap args = {{"path", dir}, {"durability", mode_name(mode)}};
    small = std::make_unique<Region>(RegionOptions{.name = "v100"}, "lmdb", args);
    large = std::make_unique<Region>(RegionOptions{.name = "v1k"}, "lmdb", args);
    floor_small = floor_env.open_db("v100");
    floor_large = floor_env.open_db("v1k");
    fill(*small, floor_small, kSmall);
    fill(*large, floor_large, kLarge);
  }

  Region& region(std::size_t size) { return size == kSmall ? *small : *large; }
  MDB_dbi floor_db(std::size_t size) const { return size == kSmall ? floor_small : floor_large; }

  void fill(Region& region, MDB_dbi dbi, std::size_t size) {
    constexpr std::size_t kFillBatch = 5000;
    std::vector<std::pair<std::string, std::string>> items;
    for (std::size_t first = 0; first < kKeys; first += kFillBatch) {
      items.clear();
      MDB_txn* txn = nullptr;
      check(mdb_txn_begin(floor_env.get(), nullptr, 0, &txn), "mdb_txn_begin");
      for (std::size_t i = first; i < std::min(kKeys, first + kFillBatch); ++i) {
        std::string key = key_name(kPresent, static_cast<std::uint32_t>(i));
        MDB_val k = as_val(key);
        MDB_val v = as_val(value_of(size));
        check(mdb_put(txn, dbi, &k, &v, 0), "mdb_put");
        items.emplace_back(std::move(key), value_of(size));
      }
      check(mdb_txn_commit(txn), "mdb_txn_commit");
      region.set_multi<std::string>(items);
    }
  }

  RawEnv floor_env;  // declared first, so closed last
  std::unique_ptr<Region> small;
  std::unique_ptr<Region> large;
  MDB_dbi floor_small = 0;
  MDB_dbi floor_large = 0;
};

// The stores of every mode, each made on first use; the directory goes at exit.
class Bench {
 public:
  static Stores& stores(Mode mode) {
    static Bench bench;
    auto& slot = bench.stores_[static_cast<std::size_t>(mode)];
    if (!slot) slot = std::make_unique<Stores>(bench.dir_.path(), mode);
    return *slot;
  }

 private:
  TempDir dir_;  // declared first: removed after the stores are closed
  std::array<std::unique_ptr<Stores>, kModes.size()> stores_;
};

// ---- reads ----

void dogpile_get_hit(benchmark::State& state, std::size_t size) {
  Region& region = Bench::stores(Mode::kDurable).region(size);
  KeyStream keys(kPresent);
  std::size_t misses = 0;
  for (auto _ : state) {
    std::optional<std::string> value = region.get<std::string>(keys.next());
    misses += !value;
    benchmark::DoNotOptimize(value);
  }
  if (misses != 0) state.SkipWithError("a stored key read as a miss");
}

void dogpile_get_or_create_hit(benchmark::State& state, std::size_t size) {
  Region& region = Bench::stores(Mode::kDurable).region(size);
  KeyStream keys(kPresent);
  const std::uint64_t creations = region.stats().creations;
  for (auto _ : state) {
    std::string value =
        region.get_or_create<std::string>(keys.next(), [] { return std::string(); });
    benchmark::DoNotOptimize(value);
  }
  if (region.stats().creations != creations) state.SkipWithError("a stored key was created");
}

void dogpile_get_miss(benchmark::State& state) {
  Region& region = Bench::stores(Mode::kDurable).region(kSmall);
  KeyStream keys(kAbsent);
  std::size_t hits = 0;
  for (auto _ : state) {
    std::optional<std::string> value = region.get<std::string>(keys.next());
    hits += value.has_value();
    benchmark::DoNotOptimize(value);
  }
  if (hits != 0) state.SkipWithError("an absent key read as a hit");
}

// mdb_get in one read transaction renewed per read, the value copied out.
void floor_get(benchmark::State& state, std::size_t size, bool present) {
  Stores& stores = Bench::stores(Mode::kDurable);
  const MDB_dbi dbi = stores.floor_db(size);
  KeyStream keys(present ? kPresent : kAbsent);
  MDB_txn* txn = nullptr;
  check(mdb_txn_begin(stores.floor_env.get(), nullptr, MDB_RDONLY, &txn), "mdb_txn_begin");
  mdb_txn_reset(txn);
  std::size_t wrong = 0;
  for (auto _ : state) {
    check(mdb_txn_renew(txn), "mdb_txn_renew");
    MDB_val k = as_val(keys.next());
    MDB_val v{};
    std::optional<std::string> value;
    const int rc = mdb_get(txn, dbi, &k, &v);
    if (rc == MDB_SUCCESS) value.emplace(static_cast<const char*>(v.mv_data), v.mv_size);
    mdb_txn_reset(txn);
    wrong += value.has_value() != present;
    benchmark::DoNotOptimize(value);
  }
  mdb_txn_abort(txn);
  if (wrong != 0) state.SkipWithError("the floor read the wrong answer");
}

// ---- writes ----

void dogpile_set(benchmark::State& state, Mode mode, std::size_t size) {
  Region& region = Bench::stores(mode).region(size);
  KeyStream keys(kPresent, 7);
  const std::string& value = value_of(size);
  for (auto _ : state) region.set<std::string>(keys.next(), value);
}

void floor_set(benchmark::State& state, Mode mode, std::size_t size) {
  Stores& stores = Bench::stores(mode);
  const MDB_dbi dbi = stores.floor_db(size);
  KeyStream keys(kPresent, 7);
  MDB_val v = as_val(value_of(size));
  for (auto _ : state) {
    MDB_txn* txn = nullptr;
    check(mdb_txn_begin(stores.floor_env.get(), nullptr, 0, &txn), "mdb_txn_begin");
    MDB_val k = as_val(keys.next());
    check(mdb_put(txn, dbi, &k, &v, 0), "mdb_put");
    check(mdb_txn_commit(txn), "mdb_txn_commit");
  }
}

// Batches of kBatch random keys, built before timing; the rows cycle through them.
std::vector<std::vector<std::pair<std::string, std::string>>> make_batches(std::size_t size) {
  constexpr std::size_t kBatches = 64;
  KeyStream keys(kPresent, 11);
  std::vector<std::vector<std::pair<std::string, std::string>>> batches(kBatches);
  for (auto& batch : batches) {
    for (std::size_t i = 0; i < kBatch; ++i)
      batch.emplace_back(std::string(keys.next()), value_of(size));
  }
  return batches;
}

// Per item: each pass writes one batch and counts kBatch iterations.
void dogpile_set_multi(benchmark::State& state, Mode mode, std::size_t size) {
  Region& region = Bench::stores(mode).region(size);
  const auto batches = make_batches(size);
  std::size_t at = 0;
  while (state.KeepRunningBatch(kBatch)) {
    region.set_multi<std::string>(batches[at++ % batches.size()]);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}

void dogpile_100_sets(benchmark::State& state, Mode mode, std::size_t size) {
  Region& region = Bench::stores(mode).region(size);
  const auto batches = make_batches(size);
  std::size_t at = 0;
  while (state.KeepRunningBatch(kBatch)) {
    for (const auto& [key, value] : batches[at++ % batches.size()]) region.set(key, value);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}

void floor_set_multi(benchmark::State& state, Mode mode, std::size_t size) {
  Stores& stores = Bench::stores(mode);
  const MDB_dbi dbi = stores.floor_db(size);
  const auto batches = make_batches(size);
  std::size_t at = 0;
  while (state.KeepRunningBatch(kBatch)) {
    MDB_txn* txn = nullptr;
    check(mdb_txn_begin(stores.floor_env.get(), nullptr, 0, &txn), "mdb_txn_begin");
    for (const auto& [key, value] : batches[at++ % batches.size()]) {
      MDB_val k = as_val(key);
      MDB_val v = as_val(value);
      check(mdb_put(txn, dbi, &k, &v, 0), "mdb_put");
    }
    check(mdb_txn_commit(txn), "mdb_txn_commit");
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}

// ---- registration ----

template <class F>
void add(const std::string& row, const char* column, F&& f) {
  benchmark::RegisterBenchmark(("engine/" + row + "/" + column).c_str(), std::forward<F>(f))
      ->UseRealTime();
}

void register_all() {
  // Misses first: in one process, the floor's miss was seen to run some 90 ns
  // slower after the rows reading 1 KiB values, which no other ordering showed.
  add("get_miss", "dogpile", [](benchmark::State& st) { dogpile_get_miss(st); });
  add("get_miss", "lmdb_floor", [](benchmark::State& st) { floor_get(st, kSmall, false); });
  for (std::size_t size : {kSmall, kLarge}) {
    const std::string s = size_name(size);
    add("get_hit_" + s, "dogpile", [size](benchmark::State& st) { dogpile_get_hit(st, size); });
    add("get_hit_" + s, "lmdb_floor", [size](benchmark::State& st) { floor_get(st, size, true); });
    add("get_or_create_hit_" + s, "dogpile",
        [size](benchmark::State& st) { dogpile_get_or_create_hit(st, size); });
    add("get_or_create_hit_" + s, "lmdb_floor",
        [size](benchmark::State& st) { floor_get(st, size, true); });
  }

  for (Mode mode : kModes) {
    for (std::size_t size : {kSmall, kLarge}) {
      const std::string row = std::string("set_") + mode_name(mode) + "_" + size_name(size);
      add(row, "dogpile", [=](benchmark::State& st) { dogpile_set(st, mode, size); });
      add(row, "lmdb_floor", [=](benchmark::State& st) { floor_set(st, mode, size); });
    }
  }
  for (Mode mode : {Mode::kDurable, Mode::kNoSync}) {
    for (std::size_t size : {kSmall, kLarge}) {
      // The 100 B rows carry the plain name; 1 KiB rows end in _1KiB.
      std::string row = std::string("set_multi100_") + mode_name(mode) + "_per_item";
      if (size == kLarge) row += "_1KiB";
      add(row, "dogpile", [=](benchmark::State& st) { dogpile_set_multi(st, mode, size); });
      add(row, "lmdb_floor", [=](benchmark::State& st) { floor_set_multi(st, mode, size); });
      add(row, "dogpile_100_sets", [=](benchmark::State& st) { dogpile_100_sets(st, mode, size); });
    }
  }
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
