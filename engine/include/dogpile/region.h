// Region: a named, typed keyspace with expiry and dogpile-protected creation.
//
// A Region stores CachedValue<T> envelopes in a Backend and implements the
// dogpile lock of spec §2: get_or_create returns a fresh value without any
// lock; on a stale value one caller (in any thread or process sharing the
// backend) regenerates it while the others are served the stale copy; on a
// missing value the others wait for the creator and then read its value. Every
// acquisition is followed by a re-read, so one expiry never causes two
// creations. No backend transaction is open while a creator or codec runs.
//
//   dogpile::Region region({.name = "users", .expiration_time = std::chrono::minutes(10)},
//                          "lmdb", {{"path", "/var/cache/app"}});
//   User u = region.get_or_create<User>("user:42", [] { return load_user(42); });
//
// Types are registered once with DOGPILE_REGISTER_TYPE and serialized with
// their cereal serialize/save/load functions. A miss is std::nullopt, never an
// exception; reading an entry of another type or schema is a miss.
//
// Thread safety: a Region may be used by any number of threads at once.
// Creators run on the calling thread with no engine mutex held.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "dogpile/backend.h"
#include "dogpile/cached_value.h"
#include "dogpile/codec.h"
#include "dogpile/config.h"
#include "dogpile/creation_mutex.h"
#include "dogpile/error.h"
#include "dogpile/options.h"

namespace dogpile {

namespace internal {
class KeyedMutexTable;
class LogLimiter;
}  // namespace internal

// Counters of one Region object since its construction.
struct RegionStats {
  std::uint64_t hits = 0;           // fresh values returned
  std::uint64_t misses = 0;         // reads that found no usable entry
  std::uint64_t stale_served = 0;   // stale values returned while another caller creates
  std::uint64_t creations = 0;      // creator calls that returned
  std::uint64_t corruptions = 0;    // entries failing magic, length, checksum or payload decode
  std::uint64_t mismatches = 0;     // entries of another type, schema, format version or key
  std::uint64_t lock_timeouts = 0;  // creation-lock waits that ran out
  std::uint64_t lock_errors = 0;    // creation-lock acquisitions that failed outright
  std::uint64_t store_errors = 0;   // backend reads or writes that failed
};

class Region {
 public:
  // A region over an existing backend (which may be shared by several regions
  // only if the backend is meant to be: an lmdb backend is one region's).
  Region(RegionOptions options, std::shared_ptr<Backend> backend);
  // A region over a backend from the registry, e.g. ("lmdb", {{"path", dir}});
  // the backend's region (sub-database) is options.name.
  Region(RegionOptions options, std::string_view backend_name, const ConfigMap& arguments = {});
  ~Region();

  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;

  // The fresh value at `key`, or nullopt when it is missing, stale, or not a T.
  template <RegisteredType T>
  std::optional<T> get(std::string_view key, const GetOptions& call = {});

  // As get, with the metadata beside the payload.
  template <RegisteredType T>
  std::optional<CachedValue<T>> get_value(std::string_view key, const GetOptions& call = {});

  // Metadata of whatever valid entry is stored at `key`, fresh or stale, of
  // any type; nullopt when there is none. Reads only the envelope header.
  std::optional<Metadata> get_value_metadata(std::string_view key);

  // Stores `value` at `key` with created_at = now. Throws CacheFull,
  // StoreError or Error when the backend cannot store it.
  template <RegisteredType T>
  void set(std::string_view key, const T& value, const SetOptions& options = {});

  // Removes `key`; removing an absent key does nothing. Throws on backend errors.
  void erase(std::string_view key);

  // Returns the fresh value at `key`, or runs `creator` (a callable returning
  // something convertible to T) under the key's creation lock, stores and
  // returns its result. Creator exceptions reach the caller with the lock
  // released. Throws LockTimeout (per on_lock_timeout) and ReentrantCreation
  // (a creator asking for its own key). A failed store is logged and counted;
  // the creator's value is still returned.
  template <RegisteredType T, class Creator>
  T get_or_create(std::string_view key, Creator&& creator, const CreateOptions<T>& call = {});

  // Whether some thread or process holds the creation lock of `key` now.
  bool key_is_locked(std::string_view key);

  RegionStats stats() const noexcept;
  const RegionOptions& options() const noexcept { return options_; }
  Backend& backend() noexcept { return *backend_; }

 private:
  enum class State { kFresh, kStale, kMissing };

  // One read of a key: the stored bytes, kept alive while the view is used.
  struct Entry {
    State state = State::kMissing;
    std::string bytes;
    EnvelopeView view;
  };

  struct Counters {
    std::atomic<std::uint64_t> hits{0}, misses{0}, stale_served{0}, creations{0},
        corruptions{0}, mismatches{0}, lock_timeouts{0}, lock_errors{0}, store_errors{0};
  };

  std::string mangle(std::string_view key) const;
  // Reads `stored_key` into `entry`: decodes and checks the envelope and
  // decides freshness for a value of type tag/schema (any type when tag == 0).
  void read_entry(const std::string& stored_key, std::uint64_t tag, std::uint32_t schema,
                  const GetOptions& call, Entry& entry);
  // Codec-level decode failure of a checksum-valid entry.
  void note_undecodable(const std::string& stored_key);
  EnvelopeMeta new_meta(const std::optional<Duration>& ttl) const;
  std::optional<std::string_view> full_key_for(const std::string& stored_key) const;
  Status store(const std::string& stored_key, const std::string& envelope);
  void report(LogLevel level, const std::string& stored_key, const std::string& message);
  std::unique_ptr<CreationMutex> creation_mutex(const std::string& stored_key);
  [[noreturn]] void throw_lock_timeout(const std::string& stored_key);

  // Reads `stored_key` as a T; fills `value` (and `meta`) for fresh and stale entries.
  template <class T>
  State lookup(const std::string& stored_key, const GetOptions& call, std::optional<T>& value,
               Metadata* meta = nullptr);
  // Runs the creator and stores its result; the caller holds the lock (or chose not to).
  template <class T, class Creator>
  T create_and_store(const std::string& stored_key, Creator& creator,
                     const CreateOptions<T>& call);

  RegionOptions options_;
  std::shared_ptr<Backend> backend_;
  std::unique_ptr<internal::KeyedMutexTable> local_locks_;  // when the backend has no mutex
  std::unique_ptr<internal::LogLimiter> log_limiter_;
  Counters counters_;
};

// ---- implementation ----

Metadata metadata_from(const EnvelopeMeta& meta);

template <class T>
Region::State Region::lookup(const std::string& stored_key, const GetOptions& call,
                             std::optional<T>& value, Metadata* meta) {
  Entry entry;
  read_entry(stored_key, type_tag<T>(), schema_version<T>(), call, entry);
  value.reset();
  if (entry.state == State::kMissing) return State::kMissing;
  T decoded{};
  if (!decode_payload<T>(entry.view.meta.codec, entry.view.payload, decoded)) {
    note_undecodable(stored_key);
    return State::kMissing;
  }
  value.emplace(std::move(decoded));
  if (meta != nullptr) *meta = metadata_from(entry.view.meta);
  return entry.state;
}

template <RegisteredType T>
std::optional<T> Region::get(std::string_view key, const GetOptions& call) {
  std::optional<T> value;
  const State state = lookup<T>(mangle(key), call, value);
  if (state == State::kFresh) {
    counters_.hits.fetch_add(1, std::memory_order_relaxed);
    return value;
  }
  counters_.misses.fetch_add(1, std::memory_order_relaxed);
  return std::nullopt;
}

template <RegisteredType T>
std::optional<CachedValue<T>> Region::get_value(std::string_view key, const GetOptions& call) {
  std::optional<T> value;
  Metadata meta;
  const State state = lookup<T>(mangle(key), call, value, &meta);
  if (state == State::kFresh) {
    counters_.hits.fetch_add(1, std::memory_order_relaxed);
    return CachedValue<T>{std::move(*value), meta};
  }
  counters_.misses.fetch_add(1, std::memory_order_relaxed);
  return std::nullopt;
}

template <RegisteredType T>
void Region::set(std::string_view key, const T& value, const SetOptions& options) {
  static_assert(std::is_default_constructible_v<T>, "cached types must be default-constructible");
  const std::string stored_key = mangle(key);
  std::string envelope;
  encode_value(options_.codec, value, new_meta(options.ttl), full_key_for(stored_key), envelope);
  throw_if_error(store(stored_key, envelope));
}

template <class T, class Creator>
T Region::create_and_store(const std::string& stored_key, Creator& creator,
                           const CreateOptions<T>& call) {
  T value = creator();
  counters_.creations.fetch_add(1, std::memory_order_relaxed);
  if (call.should_cache && !call.should_cache(value)) return value;
  // The creator's value is returned even when it cannot be stored (spec §6).
  try {
    std::string envelope;
    encode_value(options_.codec, value, new_meta(call.ttl), full_key_for(stored_key), envelope);
    if (Status s = store(stored_key, envelope); !s) {
      report(LogLevel::kError, stored_key, "value not stored: " + s.to_string());
    }
  } catch (const std::exception& e) {
    counters_.store_errors.fetch_add(1, std::memory_order_relaxed);
    report(LogLevel::kError, stored_key, std::string("value not encoded: ") + e.what());
  }
  return value;
}

template <RegisteredType T, class Creator>
T Region::get_or_create(std::string_view key, Creator&& creator, const CreateOptions<T>& options) {
  static_assert(std::is_convertible_v<std::invoke_result_t<Creator&>, T>,
                "the creator must return a value convertible to T");
  const std::string stored_key = mangle(key);
  const GetOptions call = options.read_options();
  std::optional<T> value;
  State state = lookup<T>(stored_key, call, value);
  if (state == State::kFresh) {
    counters_.hits.fetch_add(1, std::memory_order_relaxed);
    return std::move(*value);
  }

  // The mutex object's destructor releases the lock on every path out,
  // creator exceptions included.
  std::unique_ptr<CreationMutex> mutex = creation_mutex(stored_key);

  if (state == State::kStale) {
    const Status locked = mutex->try_lock();
    if (locked.code() == StatusCode::kReentrant) throw_if_error(locked);
    if (!locked) {
      if (locked.code() != StatusCode::kBusy) {
        counters_.lock_errors.fetch_add(1, std::memory_order_relaxed);
        report(LogLevel::kWarning, stored_key, "creation lock failed: " + locked.to_string());
      }
      counters_.stale_served.fetch_add(1, std::memory_order_relaxed);
      return std::move(*value);
    }
    // Won the lock: another caller may have stored a new value meanwhile.
    std::optional<T> again;
    if (lookup<T>(stored_key, call, again) == State::kFresh) {
      counters_.hits.fetch_add(1, std::memory_order_relaxed);
      return std::move(*again);
    }
    return create_and_store<T>(stored_key, creator, options);
  }

  counters_.misses.fetch_add(1, std::memory_order_relaxed);
  const Status locked = mutex->lock(options_.lock_timeout);
  if (locked.is_ok()) {
    // Re-read: whoever held the lock before us has likely stored the value.
    if (lookup<T>(stored_key, call, value) == State::kFresh) return std::move(*value);
    return create_and_store<T>(stored_key, creator, options);
  }
  if (locked.code() == StatusCode::kReentrant) throw_if_error(locked);
  if (locked.code() == StatusCode::kTimedOut) {
    counters_.lock_timeouts.fetch_add(1, std::memory_order_relaxed);
    state = lookup<T>(stored_key, call, value);
    if (state == State::kFresh) return std::move(*value);
    if (state == State::kStale) {
      counters_.stale_served.fetch_add(1, std::memory_order_relaxed);
      return std::move(*value);
    }
    if (options_.on_lock_timeout == LockTimeoutPolicy::kRaise) throw_lock_timeout(stored_key);
  } else {
    // The lock itself failed (I/O error): availability wins over de-duplication.
    counters_.lock_errors.fetch_add(1, std::memory_order_relaxed);
    report(LogLevel::kWarning, stored_key,
           "creation lock failed, creating unlocked: " + locked.to_string());
  }
  return create_and_store<T>(stored_key, creator, options);
}

}  // namespace dogpile
