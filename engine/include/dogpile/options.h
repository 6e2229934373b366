// Options: plain structs that configure a region and its calls.
//
// Build them with designated initializers:
//   dogpile::RegionOptions{.name = "users", .expiration_time = std::chrono::minutes(10)}
//
// Thread safety: plain values; a Region copies its options at construction.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "dogpile/clock.h"
#include "dogpile/config.h"
#include "dogpile/envelope.h"
#include "dogpile/invalidation.h"

namespace dogpile {

// What get_or_create does when a creation-lock wait runs past lock_timeout and
// there is no stale value to serve (a stale value is always served first).
enum class LockTimeoutPolicy {
  kRaise,          // throw LockTimeout
  kCreateUnlocked, // call the creator without the lock
};

class AsyncRunner;

enum class LogLevel { kWarning, kError };
using Logger = std::function<void(LogLevel level, std::string_view message)>;

struct RegionOptions {
  // Region name: the LMDB sub-database and the creation-lock scope.
  // Default: "default".
  std::string name = "default";
  // Age after which an entry is stale; nullopt means entries never expire.
  // Default: nullopt.
  std::optional<Duration> expiration_time{};
  // A callable expiration (dogpile.cache accepts a callable expiration_time):
  // asked on every read and used instead of expiration_time; nullopt from it
  // means entries never expire.
  // Default: none (expiration_time applies).
  std::function<std::optional<Duration>()> expiration_time_fn{};
  // Longest wait for another caller's creation lock (or, with
  // max_concurrent_creations, for a creation slot); nullopt waits forever.
  // Default: nullopt.
  std::optional<Duration> lock_timeout{};
  // Longest wait for a key's creation lock by a caller that is itself
  // inside a creator (a nested get_or_create), when shorter than
  // lock_timeout. Such waits are the only ones that can form a cycle (A's
  // creator asks for B while B's asks for A, in threads or processes): this
  // bound ends one with LockTimeout (or, per on_lock_timeout, an unlocked
  // creation) instead of a hang. Waits outside creators are not affected.
  // Default: 30 s.
  Duration nested_lock_timeout = std::chrono::seconds(30);
  // Default: LockTimeoutPolicy::kRaise.
  LockTimeoutPolicy on_lock_timeout = LockTimeoutPolicy::kRaise;
  // A caller finding a stale value waits for the caller regenerating it and
  // returns the new value, instead of being served the stale one.
  // Default: false.
  bool wait_for_fresh = false;
  // When a creator throws and a stale value exists, the caller gets the stale
  // value; the error is counted and logged instead of thrown.
  // Default: false.
  bool serve_stale_on_error = false;
  // At most this many creators of this region run at once, across every
  // thread and process sharing the backend; 0 means no limit. A creation
  // nested inside a creator runs within its outer creation's share.
  // Default: 0.
  std::uint32_t max_concurrent_creations = 0;
  // Regenerates stale values in the background: get_or_create returns the
  // stale value at once and a runner thread creates the new one under the
  // lock. The creator is copied into the job and runs after the call has
  // returned, so it must not refer to the caller's locals. Missing values
  // and get_or_create_multi are still created by the caller.
  // Default: none (the caller regenerates).
  std::shared_ptr<AsyncRunner> async_runner{};
  // Payload encoding for values this region writes; any codec is read.
  // Default: CodecId::kBinary (cereal binary).
  CodecId codec = CodecId::kBinary;
  // Maps a caller's key to the stored key (dogpile's key_mangler); applied
  // before every backend call and lock.
  // Default: none (keys are stored as given).
  std::function<std::string(std::string_view)> key_mangler{};
  // Largest payload read or written; larger stored payloads are corrupt.
  // Default: 256 MiB.
  std::size_t max_value_size = std::size_t{256} << 20;
  // An entry created further than this in the future (a clock stepped back)
  // is stale, never fresh.
  // Default: 60 s.
  Duration future_tolerance = std::chrono::seconds(60);
  // Wall clock for created_at and expiry.
  // Default: system_clock().
  std::shared_ptr<Clock> clock{};
  // Keeps the invalidation sequence and the stamps of Region::invalidate, and
  // judges entries by them.
  // Default: the backend's stored stamps (Backend::invalidation_strategy).
  std::shared_ptr<InvalidationStrategy> invalidation{};
  // Receives corruption and store-error reports, at most once per key per
  // minute (a full store: once per region).
  // Default: writes to stderr.
  Logger logger{};
  // The region adds its counters to the backend's shared statistics
  // (Backend::add_usage; for lmdb, one write transaction in the cache
  // directory) at most this often, checked at each operation, and when it is
  // destroyed or flush_stats() is called. Zero publishes after every
  // operation.
  // Default: 1 s.
  Duration stats_interval = std::chrono::seconds(1);
};

// Per-call overrides of get.
struct GetOptions {
  // Replaces the region's expiration_time for this call; nullopt keeps the region's.
  // Default: nullopt.
  std::optional<Duration> expiration_time{};
  // Treat any stored entry as fresh (dogpile.cache's expiration_time=-1),
  // except a hard-invalidated one, which stays missing.
  // Default: false.
  bool ignore_expiration = false;
};

// Per-call options of set.
struct SetOptions {
  // Lifetime of this entry, stored in its metadata (expires_at); it wins over
  // the region's expiration_time when present.
  // Default: nullopt (the region's expiration applies).
  std::optional<Duration> ttl{};
};

// Per-call options of get_or_create for values of type T.
template <class T>
struct CreateOptions {
  // As GetOptions::expiration_time.
  // Default: nullopt.
  std::optional<Duration> expiration_time{};
  // As GetOptions::ignore_expiration.
  // Default: false.
  bool ignore_expiration = false;
  // As SetOptions::ttl, for the value the creator makes.
  // Default: nullopt.
  std::optional<Duration> ttl{};
  // Whether a created value is stored (dogpile.cache's should_cache_fn); a
  // value it rejects is still returned to the caller.
  // Default: none (every value is stored).
  std::function<bool(const T&)> should_cache{};

  GetOptions read_options() const {
    return GetOptions{.expiration_time = expiration_time, .ignore_expiration = ignore_expiration};
  }
};

}  // namespace dogpile
