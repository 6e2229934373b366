// Peers: the caches people use today, on the engine benchmark's workload.
//
// Each store holds 100k keys "key:<n>" with values of 100 B or 1 KiB (random
// bytes, so no store gains from compression), on disk in a temporary
// directory ($DOGPILE_BENCH_DIR, else $TMPDIR, else /tmp). Rows are random-key
// get hits and single-key puts (overwrites of a random key); columns are a
// dogpile Region over lmdb (durable, and nosync), persistent-cache-cpp
// (LevelDB) and Redis on 127.0.0.1 through hiredis. Names are
// peers/<row>/<column>, the scheme bench/peers.py uses for the Python peers,
// so scripts/bench can put them in one table.
//
// Redis: the server's port is read from DOGPILE_BENCH_REDIS_PORT; when it is
// unset or nothing answers there, the redis benchmarks are skipped with an
// error saying so, and the others still run. Keys go to databases 0 (100 B)
// and 1 (1 KiB) of that server.
//
// Stores are filled once, on the first benchmark that needs them, and removed
// at exit. Timing is wall-clock (UseRealTime): syncs and round trips are the
// cost. UseRealTime adds "/real_time" to the names; the reports leave it off,
// but --benchmark_filter still sees it (match "dogpile/", not "dogpile$").

#include <benchmark/benchmark.h>
#include <core/persistent_string_cache.h>
#include <hiredis.h>
#include <stdlib.h>
#include <sys/time.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "dogpile/dogpile.h"

namespace {

constexpr std::size_t kKeyCount = 100'000;
// Random picks are drawn from this many precomputed indices, so choosing a
// key costs the same few nanoseconds in every column.
constexpr std::size_t kPickCount = std::size_t{1} << 16;
constexpr std::size_t kFillBatch = 1000;
constexpr std::uint64_t kStoreMaxSize = std::uint64_t{1} << 30;

const std::vector<std::string>& keys() {
  static const std::vector<std::string> all = [] {
    std::vector<std::string> out;
    out.reserve(kKeyCount);
    for (std::size_t i = 0; i < kKeyCount; ++i) out.push_back("key:" + std::to_string(i));
    return out;
  }();
  return all;
}

const std::vector<std::uint32_t>& picks() {
  static const std::vector<std::uint32_t> all = [] {
    std::mt19937 rng(42);
    std::uniform_int_distribution<std::uint32_t> pick(0, kKeyCount - 1);
    std::vector<std::uint32_t> out(kPickCount);
    for (auto& p : out) p = pick(rng);
    return out;
  }();
  return all;
}

// The i-th random key of a run.
const std::string& random_key(std::size_t i) { return keys()[picks()[i & (kPickCount - 1)]]; }

std::string make_value(std::size_t size) {
  std::mt19937 rng(static_cast<std::uint32_t>(size));
  std::uniform_int_distribution<int> byte(0, 255);
  std::string out(size, '\0');
  for (char& c : out) c = static_cast<char>(byte(rng));
  return out;
}

// A directory removed with everything in it on destruction.
class ScratchDir {
 public:
  ScratchDir() {
    std::filesystem::path parent;
    if (const char* dir = std::getenv("DOGPILE_BENCH_DIR"); dir != nullptr && *dir != '\0') {
      parent = dir;
    } else {
      parent = std::filesystem::temp_directory_path();
    }
    std::string pattern = (parent / "dogpile-peers-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw std::runtime_error("cannot create a directory under " + parent.string());
    }
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  std::string sub(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

ScratchDir& scratch() {
  static ScratchDir dir;
  return dir;
}

// ---- dogpile ----

const char* durability_name(dogpile::Durability durability) {
  return durability == dogpile::Durability::kNoSync ? "nosync" : "durable";
}

// One directory per durability mode (the mode is fixed per directory in a
// process), one region per value size.
dogpile::Region& dogpile_region(dogpile::Durability durability, std::size_t size) {
  static std::map<std::pair<dogpile::Durability, std::size_t>, std::unique_ptr<dogpile::Region>>
      regions;
  auto& slot = regions[{durability, size}];
  if (slot) return *slot;
  const std::string name = "v" + std::to_string(size);
  dogpile::LmdbOptions options{.path = scratch().sub(std::string("dogpile-") +
                                                     durability_name(durability)),
                               .region = name,
                               .max_size = kStoreMaxSize,
                               .durability = durability};
  auto region = std::make_unique<dogpile::Region>(
      dogpile::RegionOptions{.name = name},
      std::shared_ptr<dogpile::Backend>(dogpile::open_lmdb_backend(options)));
  const std::string value = make_value(size);
  std::vector<std::pair<std::string, std::string>> batch;
  for (std::size_t i = 0; i < kKeyCount; i += kFillBatch) {
    batch.clear();
    for (std::size_t j = i; j < i + kFillBatch && j < kKeyCount; ++j) {
      batch.emplace_back(keys()[j], value);
    }
    region->set_multi<std::string>(batch);
  }
  slot = std::move(region);
  return *slot;
}

void dogpile_get(benchmark::State& state, dogpile::Durability durability, std::size_t size) {
  try {
    dogpile::Region& region = dogpile_region(durability, size);
    std::size_t i = 0;
    for (auto _ : state) {
      std::optional<std::string> value = region.get<std::string>(random_key(i++));
      if (!value) {
        state.SkipWithError("dogpile: a preloaded key was a miss");
        break;
      }
      benchmark::DoNotOptimize(value->data());
    }
  } catch (const std::exception& e) {
    state.SkipWithError((std::string("dogpile: ") + e.what()).c_str());
  }
}

void dogpile_put(benchmark::State& state, dogpile::Durability durability, std::size_t size) {
  try {
    dogpile::Region& region = dogpile_region(durability, size);
    const std::string value = make_value(size);
    std::size_t i = 0;
    for (auto _ : state) region.set(random_key(i++), value);
  } catch (const std::exception& e) {
    state.SkipWithError((std::string("dogpile: ") + e.what()).c_str());
  }
}

// ---- persistent-cache-cpp ----

core::PersistentStringCache& persistent_cache(std::size_t size) {
  static std::map<std::size_t, core::PersistentStringCache::UPtr> caches;
  auto& slot = caches[size];
  if (slot) return *slot;
  auto cache = core::PersistentStringCache::open(
      scratch().sub("persistent-cache-v" + std::to_string(size)),
      static_cast<std::int64_t>(kStoreMaxSize), core::CacheDiscardPolicy::lru_only);
  const std::string value = make_value(size);
  for (const std::string& key : keys()) cache->put(key, value);
  slot = std::move(cache);
  return *slot;
}

void persistent_cache_get(benchmark::State& state, std::size_t size) {
  try {
    core::PersistentStringCache& cache = persistent_cache(size);
    std::size_t i = 0;
    for (auto _ : state) {
      core::Optional<std::string> value = cache.get(random_key(i++));
      if (!value) {
        state.SkipWithError("persistent_cache: a preloaded key was a miss");
        break;
      }
      benchmark::DoNotOptimize(value->data());
    }
  } catch (const std::exception& e) {
    state.SkipWithError((std::string("persistent_cache: ") + e.what()).c_str());
  }
}

void persistent_cache_put(benchmark::State& state, std::size_t size) {
  try {
    core::PersistentStringCache& cache = persistent_cache(size);
    const std::string value = make_value(size);
    std::size_t i = 0;
    for (auto _ : state) cache.put(random_key(i++), value);
  } catch (const std::exception& e) {
    state.SkipWithError((std::string("persistent_cache: ") + e.what()).c_str());
  }
}

// ---- Redis ----

struct ReplyFree {
  void operator()(redisReply* reply) const noexcept { freeReplyObject(reply); }
};
using Reply = std::unique_ptr<redisReply, ReplyFree>;

// One connection to the benchmark's redis-server.
class RedisConnection {
 public:
  explicit RedisConnection(redisContext* context) noexcept : context_(context) {}
  ~RedisConnection() {
    if (context_ != nullptr) redisFree(context_);
  }
  RedisConnection(const RedisConnection&) = delete;
  RedisConnection& operator=(const RedisConnection&) = delete;

  redisContext* get() const noexcept { return context_; }

 private:
  redisContext* context_;
};

// Why the redis benchmarks cannot run, or empty when they can.
struct RedisSetup {
  std::map<std::size_t, std::unique_ptr<RedisConnection>> connections;
  std::string error;
};

std::string redis_error(redisContext* context) {
  return context->errstr[0] != '\0' ? context->errstr : "connection failed";
}

// A connection to database `db` holding the preloaded values of `size`, or an
// error message.
std::string open_redis(int port, int db, std::size_t size, std::unique_ptr<RedisConnection>& out) {
  const std::string where = "redis-server at 127.0.0.1:" + std::to_string(port);
  timeval timeout{2, 0};
  redisContext* raw = redisConnectWithTimeout("127.0.0.1", port, timeout);
  if (raw == nullptr) return "cannot reach " + where + ": out of memory";
  auto connection = std::make_unique<RedisConnection>(raw);
  if (raw->err != 0) return "cannot reach " + where + ": " + redis_error(raw);
  Reply selected(static_cast<redisReply*>(redisCommand(raw, "SELECT %d", db)));
  if (!selected || selected->type == REDIS_REPLY_ERROR) {
    return "SELECT " + std::to_string(db) + " failed on " + where;
  }
  // Pipelined in batches: one round trip per batch, not per key.
  const std::string value = make_value(size);
  for (std::size_t i = 0; i < kKeyCount; i += kFillBatch) {
    std::size_t sent = 0;
    for (std::size_t j = i; j < i + kFillBatch && j < kKeyCount; ++j, ++sent) {
      const std::string& key = keys()[j];
      if (redisAppendCommand(raw, "SET %b %b", key.data(), key.size(), value.data(),
                             value.size()) != REDIS_OK) {
        return "filling " + where + ": " + redis_error(raw);
      }
    }
    for (std::size_t j = 0; j < sent; ++j) {
      void* reply = nullptr;
      if (redisGetReply(raw, &reply) != REDIS_OK) {
        return "filling " + where + ": " + redis_error(raw);
      }
      Reply owned(static_cast<redisReply*>(reply));
      if (owned->type == REDIS_REPLY_ERROR) {
        return "filling " + where + ": " + std::string(owned->str, owned->len);
      }
    }
  }
  out = std::move(connection);
  return {};
}

RedisSetup& redis_setup() {
  static RedisSetup setup = [] {
    RedisSetup s;
    const char* port_text = std::getenv("DOGPILE_BENCH_REDIS_PORT");
    if (port_text == nullptr || *port_text == '\0') {
      s.error =
          "DOGPILE_BENCH_REDIS_PORT is not set: start redis-server on 127.0.0.1 and set it to "
          "the server's port (scripts/bench does)";
      return s;
    }
    char* end = nullptr;
    const long port = std::strtol(port_text, &end, 10);
    if (*end != '\0' || port <= 0 || port > 65535) {
      s.error = std::string("DOGPILE_BENCH_REDIS_PORT is not a port number: ") + port_text;
      return s;
    }
    int db = 0;
    for (std::size_t size : {std::size_t{100}, std::size_t{1024}}) {
      s.error = open_redis(static_cast<int>(port), db++, size, s.connections[size]);
      if (!s.error.empty()) {
        s.connections.clear();
        return s;
      }
    }
    return s;
  }();
  return setup;
}

// The connection for values of `size`, or nullptr after skipping `state`.
redisContext* redis_for(benchmark::State& state, std::size_t size) {
  RedisSetup& setup = redis_setup();
  if (!setup.error.empty()) {
    state.SkipWithError(("redis skipped: " + setup.error).c_str());
    return nullptr;
  }
  return setup.connections.at(size)->get();
}

void redis_get(benchmark::State& state, std::size_t size) {
  redisContext* redis = redis_for(state, size);
  if (redis == nullptr) return;
  std::size_t i = 0;
  for (auto _ : state) {
    const std::string& key = random_key(i++);
    Reply reply(static_cast<redisReply*>(redisCommand(redis, "GET %b", key.data(), key.size())));
    if (!reply || reply->type != REDIS_REPLY_STRING) {
      state.SkipWithError(!reply ? ("redis: " + redis_error(redis)).c_str()
                                 : "redis: a preloaded key was a miss");
      break;
    }
    // A std::string, as the other columns return.
    std::string value(reply->str, reply->len);
    benchmark::DoNotOptimize(value.data());
  }
}

void redis_put(benchmark::State& state, std::size_t size) {
  redisContext* redis = redis_for(state, size);
  if (redis == nullptr) return;
  const std::string value = make_value(size);
  std::size_t i = 0;
  for (auto _ : state) {
    const std::string& key = random_key(i++);
    Reply reply(static_cast<redisReply*>(
        redisCommand(redis, "SET %b %b", key.data(), key.size(), value.data(), value.size())));
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
      state.SkipWithError(!reply ? ("redis: " + redis_error(redis)).c_str()
                                 : "redis: SET was refused");
      break;
    }
  }
}

// ---- registration ----

struct Size {
  const char* label;
  std::size_t bytes;
};
constexpr Size kSizes[] = {{"100B", 100}, {"1KiB", 1024}};

void register_all() {
  using dogpile::Durability;
  const auto add = [](const std::string& name, auto&& fn) {
    benchmark::RegisterBenchmark(name.c_str(), std::forward<decltype(fn)>(fn))->UseRealTime();
  };
  for (const Size& size : kSizes) {
    const std::string row = std::string("peers/get_hit_") + size.label + "/";
    const std::size_t n = size.bytes;
    add(row + "dogpile", [n](benchmark::State& s) { dogpile_get(s, Durability::kDurable, n); });
    add(row + "dogpile_nosync",
        [n](benchmark::State& s) { dogpile_get(s, Durability::kNoSync, n); });
    add(row + "persistent_cache", [n](benchmark::State& s) { persistent_cache_get(s, n); });
    add(row + "redis", [n](benchmark::State& s) { redis_get(s, n); });
  }
  for (const Size& size : kSizes) {
    const std::string row = std::string("peers/put_") + size.label + "/";
    const std::size_t n = size.bytes;
    add(row + "dogpile", [n](benchmark::State& s) { dogpile_put(s, Durability::kDurable, n); });
    add(row + "dogpile_nosync",
        [n](benchmark::State& s) { dogpile_put(s, Durability::kNoSync, n); });
    add(row + "persistent_cache", [n](benchmark::State& s) { persistent_cache_put(s, n); });
    add(row + "redis", [n](benchmark::State& s) { redis_put(s, n); });
  }
}

// Forwards to another reporter with the "/real_time" suffix left off the
// names: the timing is wall-clock throughout, and scripts/bench matches
// peers/<row>/<column> exactly, as for bench/peers.py.
class PlainNameReporter : public benchmark::BenchmarkReporter {
 public:
  explicit PlainNameReporter(benchmark::BenchmarkReporter* inner) noexcept : inner_(inner) {}

  bool ReportContext(const Context& context) override {
    // The library sets the streams on this object (for --benchmark_out, the file).
    inner_->SetOutputStream(&GetOutputStream());
    inner_->SetErrorStream(&GetErrorStream());
    return inner_->ReportContext(context);
  }
  void ReportRuns(const std::vector<Run>& runs) override {
    std::vector<Run> renamed = runs;
    for (Run& run : renamed) run.run_name.time_type.clear();
    inner_->ReportRuns(renamed);
  }
  void Finalize() override { inner_->Finalize(); }

 private:
  benchmark::BenchmarkReporter* inner_;
};

// Whether argv asks for a file of results, and in which format; read before
// benchmark::Initialize consumes the flags.
struct OutFlags {
  bool file = false;
  std::string format = "json";
};

OutFlags out_flags(int argc, char** argv) {
  OutFlags flags;
  const std::string out = "--benchmark_out=";
  const std::string format = "--benchmark_out_format=";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.starts_with(out) && arg.size() > out.size()) flags.file = true;
    if (arg.starts_with(format)) flags.format = arg.substr(format.size());
  }
  return flags;
}

}  // namespace

int main(int argc, char** argv) {
  const OutFlags flags = out_flags(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_all();
  benchmark::AddCustomContext("peers_workload",
                              std::to_string(kKeyCount) +
                                  " keys key:<n>, random-key get hits, single-key overwrites");
  if (const char* port = std::getenv("DOGPILE_BENCH_REDIS_PORT")) {
    benchmark::AddCustomContext("peers_redis_port", port);
  }
  // The default display reporter is owned by the library.
  PlainNameReporter display(benchmark::CreateDefaultDisplayReporter());
  if (flags.file && flags.format == "json") {
    benchmark::JSONReporter json;
    PlainNameReporter file(&json);
    benchmark::RunSpecifiedBenchmarks(&display, &file);
  } else {
    // Other file formats keep the library's names.
    benchmark::RunSpecifiedBenchmarks(&display);
  }
  benchmark::Shutdown();
  return 0;
}
