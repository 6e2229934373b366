// Region: a named, typed keyspace with expiry and dogpile-protected creation.
//
// A Region stores CachedValue<T> envelopes in a Backend and implements the
// dogpile lock of spec §2: get_or_create returns a fresh value without any
// lock; on a stale value one caller (in any thread or process sharing the
// backend) regenerates it while the others are served the stale copy; on a
// missing value the others wait for the creator and then read its value. Every
// acquisition is followed by a re-read, so one expiry never causes two
// creations. No backend transaction is open while a creator, a codec of a
// user type, a clock or a logger runs (byte-like values, whose decoding runs
// no user code, are decoded straight from an lmdb read).
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
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "dogpile/async_runner.h"
#include "dogpile/backend.h"
#include "dogpile/cached_value.h"
#include "dogpile/codec.h"
#include "dogpile/config.h"
#include "dogpile/creation_mutex.h"
#include "dogpile/error.h"
#include "dogpile/options.h"
#include "dogpile/usage_counters.h"

namespace dogpile {

namespace internal {
class InPlaceReader;
class KeyedMutexTable;
class LogLimiter;
class PendingJobs;

// The what() of the exception being handled, for a log line.
std::string current_exception_text();

template <class T>
inline constexpr bool kIsReferenceWrapper = false;
template <class T>
inline constexpr bool kIsReferenceWrapper<std::reference_wrapper<T>> = true;
}  // namespace internal

// Counters of one Region object since its construction. Every read (get,
// get_value, get_or_create, each key of a multi call) counts once, as a hit,
// a miss or stale_served, by what it returned: a get_or_create that waits for
// another caller's creator and then returns its value is one hit.
struct RegionStats {
  std::uint64_t hits = 0;           // reads that returned a fresh stored value
  std::uint64_t misses = 0;         // reads that returned no stored value (a created one, or none)
  std::uint64_t stale_served = 0;   // reads that returned a stale stored value
  std::uint64_t creations = 0;      // creator calls that returned
  std::uint64_t corruptions = 0;    // entries failing magic, length, checksum or payload decode
  std::uint64_t mismatches = 0;     // entries of another type, schema, format version or key
  std::uint64_t creation_failures = 0;  // creator calls that threw
  std::uint64_t lock_waits = 0;     // blocking creation-lock acquisitions
  std::uint64_t lock_wait_ns = 0;   // total time spent in them
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
  // A region declared now and given its backend later (dogpile.cache's
  // make_region() then configure()). Any use before that throws
  // RegionNotConfigured. Configure before sharing the region between threads.
  explicit Region(RegionOptions options);
  ~Region();

  // Gives a declared region its backend; a second call throws ConfigError.
  void configure(std::shared_ptr<Backend> backend);
  void configure(std::string_view backend_name, const ConfigMap& arguments = {});
  // dogpile.cache's configure_from_config: reads the region's settings and
  // backend from `config` under `prefix`, e.g. with prefix "cache.":
  //   cache.backend                  registry name (required)
  //   cache.expiration_time          duration ("10m", "1h30m", "2d") or "none"
  //   cache.lock_timeout             duration or "none"
  //   cache.nested_lock_timeout      duration
  //   cache.on_lock_timeout          "raise" | "create_unlocked"
  //   cache.codec                    "binary" | "portable_binary" | "json" | "raw"
  //   cache.max_value_size           size ("64MiB")
  //   cache.future_tolerance         duration
  //   cache.wait_for_fresh           boolean
  //   cache.serve_stale_on_error     boolean
  //   cache.max_concurrent_creations integer
  //   cache.stats_interval           duration
  //   cache.arguments.<name>         the backend's arguments
  //   cache.wrap, cache.wrap.<proxy>.<option>  a proxy chain (see wrap_from_config)
  // Any other key under the prefix, a bad value or an unknown backend
  // argument throws ConfigError naming the key.
  void configure_from_config(const ConfigMap& config, std::string_view prefix);
  bool is_configured() const noexcept { return backend_ != nullptr; }

  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;

  // The fresh value at `key`, or nullopt when it is missing, stale, or not a T.
  template <RegisteredType T>
  std::optional<T> get(std::string_view key, const GetOptions& call = {});

  // As get, with the metadata beside the payload.
  template <RegisteredType T>
  std::optional<CachedValue<T>> get_value(std::string_view key, const GetOptions& call = {});

  // Metadata of whatever valid entry is stored at `key`, fresh or stale
  // (expired or soft-invalidated), of any type; nullopt when there is none or
  // it is hard-invalidated. Reads only the envelope header.
  std::optional<Metadata> get_value_metadata(std::string_view key);

  // Stores `value` at `key` with created_at = now. Throws CacheFull,
  // StoreError or Error when the backend cannot store it.
  template <RegisteredType T>
  void set(std::string_view key, const T& value, const SetOptions& options = {});

  // Removes `key`; removing an absent key does nothing. Throws on backend errors.
  void erase(std::string_view key);

  // dogpile.cache's invalidate(hard=True): every entry whose creation started
  // before this call becomes missing (hard) or stale (soft: get_or_create
  // regenerates it once while other callers are served the old value; no
  // expiration_time is needed). Decided by order, not by any clock
  // (docs/design.md, rule I1). Recorded by options().invalidation, by default
  // the backend's stamps: for lmdb, every process sharing the directory sees
  // it at its next read, and it survives restarts. Throws when the stamps
  // cannot be stored.
  void invalidate(bool hard = true);

  // Returns the fresh value at `key`, or runs `creator` (a callable returning
  // something convertible to T) under the key's creation lock, stores and
  // returns its result. Creator exceptions reach the caller with the lock
  // released. Throws LockTimeout (per on_lock_timeout) and ReentrantCreation
  // (a creator asking for its own key). A failed store is logged and counted;
  // the creator's value is still returned. With options().async_runner a copy
  // of `creator` may run on a runner thread after this call has returned, so
  // it must own what it uses (capture by value, never the caller's locals by
  // reference); a std::reference_wrapper is refused at compile time.
  template <RegisteredType T, class Creator>
  T get_or_create(std::string_view key, Creator&& creator, const CreateOptions<T>& call = {});

  // Multi-key forms; each reads or writes all its keys in one backend call
  // (one LMDB transaction). Results are in the order of `keys`.
  template <RegisteredType T>
  std::vector<std::optional<T>> get_multi(std::span<const std::string> keys,
                                          const GetOptions& call = {});
  template <RegisteredType T>
  void set_multi(std::span<const std::pair<std::string, T>> items, const SetOptions& options = {});
  void erase_multi(std::span<const std::string> keys);

  // get_or_create for many keys (spec §2 rule 8). Fresh values are returned
  // as they are; stale ones whose lock another caller holds are served stale;
  // the rest are locked in one global order (so two multi calls never wait on
  // each other in a cycle), re-read, and whatever is still missing is made by
  // one call of `creator`: a callable taking std::span<const std::string> (the
  // keys to create, in the order given) and returning std::vector<T> of the
  // same size. The created values are stored in one backend call before the
  // locks are released.
  template <RegisteredType T, class Creator>
  std::vector<T> get_or_create_multi(std::span<const std::string> keys, Creator&& creator,
                                     const CreateOptions<T>& options = {});

  // Whether some thread or process holds the creation lock of `key` now.
  bool key_is_locked(std::string_view key);

  RegionStats stats() const noexcept;
  // Adds the counters not yet published to the backend's shared statistics
  // now (see RegionOptions::stats_interval); the destructor does it too.
  void flush_stats() noexcept;
  const RegionOptions& options() const noexcept { return options_; }
  // The backend; throws RegionNotConfigured before configure().
  Backend& backend();

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
        corruptions{0}, mismatches{0}, creation_failures{0}, lock_waits{0}, lock_wait_ns{0},
        lock_timeouts{0}, lock_errors{0}, store_errors{0};
  };

  // What one read (a call, or one key of a multi call) handed back. Each
  // read counts once, when it ends: a wait for another creator followed by
  // the value it stored is one hit, not a miss and a hit (docs/cli.md,
  // `dogpile stats`, defines hit% on these counts).
  enum class Answer {
    kMiss,   // no stored value: the creator ran, or the call failed
    kHit,    // a fresh stored value, found at once or after a wait
    kStale,  // a stale stored value
  };
  // Counts `reads` reads answered `answer`.
  void count_answer(Answer answer, std::uint64_t reads = 1) noexcept;
  // Counts the answer of one get_or_create when the call ends, by return or
  // by exception; until something else is settled it is a miss.
  class AnswerScope {
   public:
    explicit AnswerScope(Region& region) noexcept : region_(region) {}
    AnswerScope(const AnswerScope&) = delete;
    AnswerScope& operator=(const AnswerScope&) = delete;
    ~AnswerScope() { region_.count_answer(answer); }

    Answer answer = Answer::kMiss;

   private:
    Region& region_;
  };

  // Publishes the counters when stats_interval has passed; constructed at
  // the start of every public operation, it runs when the operation ends.
  class OperationScope {
   public:
    explicit OperationScope(Region& region) noexcept : region_(region) {
      region_.begin_operation();
    }
    OperationScope(const OperationScope&) = delete;
    OperationScope& operator=(const OperationScope&) = delete;
    ~OperationScope() { region_.maybe_publish_stats(); }

   private:
    Region& region_;
  };
  // In a fork()ed child's first operation, leaves the counts from before
  // the fork to the parent: one relaxed load otherwise.
  void begin_operation() noexcept;
  void maybe_publish_stats() noexcept;
  // Publishes what changed since the last time; `force` waits for a
  // publication running in another thread instead of leaving it the work.
  void publish_stats(bool force) noexcept;
  // Logs a full store once per region.
  void note_full(const Status& status);

  std::string mangle(std::string_view key) const;
  // The stored key of `key`: `key` itself without a key_mangler (no copy),
  // else the mangler's result, kept in `storage`.
  std::string_view mangle(std::string_view key, std::string& storage) const;
  void require_configured() const;
  void require_unconfigured() const;
  // Reads `stored_key` into `entry`: decodes and checks the envelope and
  // decides freshness for a value of type tag/schema (any type when tag == 0).
  void read_entry(std::string_view stored_key, std::uint64_t tag, std::uint32_t schema,
                  const GetOptions& call, Entry& entry);
  // Codec-level decode failure of a checksum-valid entry.
  void note_undecodable(std::string_view stored_key);
  // Whether a stored entry of `bytes` bytes must carry a payload over
  // max_value_size: judged before the entry is copied.
  bool too_large_to_read(std::string_view stored_key, std::size_t bytes) const noexcept;
  // Copies an entry a backend lends (`found`, null when absent) into `out`,
  // unless too_large_to_read: then returns its size and copies nothing.
  std::size_t take_lent_bytes(std::string_view stored_key, const std::string_view* found,
                              std::optional<std::string>& out) const;
  // Counts and reports such an entry as corrupt, a miss: a region with
  // this limit never stores one.
  void note_too_large(std::string_view stored_key, std::size_t bytes);
  // Metadata of a value stored now whose creation started at `sequence`.
  EnvelopeMeta new_meta(const std::optional<Duration>& ttl, std::int64_t sequence) const;
  // What a creation starting now records in its entry: the invalidation
  // order, read before the creator runs (docs/design.md, rule I1).
  std::int64_t creation_sequence() const noexcept { return options_.invalidation->sequence(); }
  std::optional<std::string_view> full_key_for(std::string_view stored_key) const;
  Status store(std::string_view stored_key, const std::string& envelope);
  void report(LogLevel level, std::string_view stored_key, const std::string& message);
  std::unique_ptr<CreationMutex> creation_mutex(std::string_view stored_key);
  // A blocking acquisition of a key's lock, counted and timed for the
  // statistics, bounded by key_wait_timeout().
  Status wait_for_lock(CreationMutex& mutex);
  // A blocking acquisition of any creation lock, counted and timed.
  Status timed_wait(CreationMutex& mutex, CreationMutex::Timeout timeout);
  // lock_timeout, or nested_lock_timeout when shorter and this thread is
  // inside a creator (a wait that can be part of a cycle).
  CreationMutex::Timeout key_wait_timeout() const;

  // One of max_concurrent_creations slots, held while a creator runs.
  // Lock order (docs/design.md): a caller never blocks on a slot while it
  // holds a key's lock; it lets the key go, waits for the slot, then takes
  // the key again.
  struct SlotRelease {
    void operator()(CreationMutex* slot) const noexcept;
  };
  using CreationSlot = std::unique_ptr<CreationMutex, SlotRelease>;
  // Whether a creation on this thread needs a slot: there is a limit and
  // the creation is not nested in another (which runs in the outer's slot).
  bool needs_creation_slot() const noexcept;
  // A free slot at once, or empty; never blocks.
  CreationSlot try_creation_slot();
  // Waits (up to lock_timeout) for a slot, counted: true when none came in
  // time. A lock that fails is reported, and the caller creates without one.
  bool wait_for_creation_slot(std::string_view stored_key, CreationSlot& slot);
  [[noreturn]] void throw_lock_timeout(std::string_view stored_key);
  [[noreturn]] void throw_slot_timeout(std::string_view stored_key);

  // Decodes and checks fetched bytes into `entry` (read_entry's second half).
  void classify(std::string_view stored_key, std::optional<std::string> bytes,
                std::uint64_t tag, std::uint32_t schema, const GetOptions& call, Entry& entry);
  // The state of a valid entry with `meta`: hard invalidation, expiry and
  // soft invalidation (classify's last step).
  State judge(const EnvelopeMeta& meta, const GetOptions& call) const;
  // Whether `bytes` is a valid envelope for `stored_key` of type tag/schema;
  // counts and reports nothing (classify does that).
  bool envelope_matches(std::string_view stored_key, std::string_view bytes, std::uint64_t tag,
                        std::uint32_t schema, EnvelopeView& view) const noexcept;
  // A failed backend read: counted and reported, then treated as a miss.
  void note_read_failure(std::string_view stored_key, const Status& status);
  // The backend's in-place read (in_place_ must be set).
  Status read_in_place(std::string_view stored_key, void (*use)(void*, const std::string_view*),
                       void* context);
  // As read_entry for many keys in one backend call; `entries` has one slot per key.
  void read_entries(const std::vector<std::string>& stored_keys, std::uint64_t tag,
                    std::uint32_t schema, const GetOptions& call, std::vector<Entry>& entries);
  std::vector<std::string> mangle_all(std::span<const std::string> keys) const;
  void store_multi(std::vector<KeyValue>& items, bool throw_on_error);

  // Decodes a read entry as a T; fills `value` (and `meta`) for fresh and stale entries.
  template <class T>
  State decode_entry(std::string_view stored_key, const Entry& entry, std::optional<T>& value,
                     Metadata* meta = nullptr);
  template <class T>
  std::vector<State> lookup_multi(const std::vector<std::string>& stored_keys,
                                  const GetOptions& call, std::vector<std::optional<T>>& values);
  // Encodes `value`, whose creation started at `sequence`, into `envelope`;
  // a value the codec cannot carry, or one over max_value_size, is an error
  // naming the key (never stored).
  template <class T>
  Status encode_entry(std::string_view stored_key, const T& value,
                      const std::optional<Duration>& ttl, std::int64_t sequence,
                      std::string& envelope);
  Status check_encoded_size(std::string_view stored_key, const std::string& envelope) const;
  Status encode_failure(std::string_view stored_key, const char* what) const;
  template <class T>
  Status encode_into(std::vector<KeyValue>& out, std::string stored_key, const T& value,
                     const std::optional<Duration>& ttl, std::int64_t sequence);

  // Reads `stored_key` as a T; fills `value` (and `meta`) for fresh and stale entries.
  template <class T>
  State lookup(std::string_view stored_key, const GetOptions& call, std::optional<T>& value,
               Metadata* meta = nullptr);
  // lookup for byte-like T over a backend that lends its bytes: the value is
  // decoded straight from them, without copying the envelope first.
  template <class T>
  State lookup_in_place(std::string_view stored_key, const GetOptions& call,
                        std::optional<T>& value, Metadata* meta);
  // Runs the creator and stores its result; the caller holds the lock (or chose not to).
  // Hands a won creation lock and a copy of the creator to the async runner,
  // which re-reads, creates, stores and then releases the lock.
  template <class T, class Creator>
  void regenerate_async(std::string_view stored_key, Creator&& creator,
                        const CreateOptions<T>& options, std::unique_ptr<CreationMutex> mutex);
  void job_started();
  void job_finished() noexcept;

  // Runs the creator (within a creation slot) and stores its result. The
  // caller holds `key_lock` (nullptr: it chose to create unlocked); when no
  // slot is free the lock is let go while waiting for one and taken again
  // (then the key is read again). `stale` is served instead of a creator
  // exception when serve_stale_on_error is set, and when a slot or the key
  // cannot be had in time. `answer` is set when the caller gets a stored
  // value instead; a created one leaves it a miss.
  template <class T, class Creator>
  T create_and_store(std::string_view stored_key, Creator& creator, const CreateOptions<T>& call,
                     std::optional<T> stale, CreationMutex* key_lock, Answer& answer);
  // Holds a slot (or learns none is needed) for a creation whose key lock,
  // when not null, is held; see create_and_store. Returns a value to hand
  // the caller instead of creating (a fresh value made meanwhile, or `stale`
  // when the wait ran out), or nullopt to go on and create.
  template <class T>
  std::optional<T> enter_creation(std::string_view stored_key, const CreateOptions<T>& call,
                                  std::optional<T>& stale, CreationMutex* key_lock,
                                  CreationSlot& slot, Answer& answer);
  // After a wait for a key's lock ended with `locked` (rule L4): the fresh
  // value someone stored meanwhile, or `stale` when the wait ran out (or
  // LockTimeout, per on_lock_timeout); nullopt to go on and create. A failed
  // lock is counted and reported. `stale` takes the newest stale value read.
  template <class T>
  std::optional<T> after_key_wait(std::string_view stored_key, const Status& locked,
                                  const GetOptions& call, std::optional<T>& stale,
                                  Answer& answer);
  // Marks this thread as running a creator for `stored_key` while alive.
  class CreatorScope {
   public:
    explicit CreatorScope(std::string_view stored_key) noexcept;
    ~CreatorScope();
    CreatorScope(const CreatorScope&) = delete;
    CreatorScope& operator=(const CreatorScope&) = delete;

   private:
    std::string_view outer_;
  };

  RegionOptions options_;
  std::shared_ptr<Backend> backend_;
  // The backend's in-place reads, when it has them (set by configure).
  internal::InPlaceReader* in_place_ = nullptr;
  std::unique_ptr<internal::KeyedMutexTable> local_locks_;  // when the backend has no mutex
  std::unique_ptr<internal::LogLimiter> log_limiter_;
  Counters counters_;
  // Background jobs of this process not finished yet; the destructor waits
  // for them (a fork()ed child has none of its parent's).
  std::unique_ptr<internal::PendingJobs> pending_jobs_;
  // Statistics publication: steady-clock time (ns) of the next one, and what
  // the backend has been given so far.
  std::atomic<std::int64_t> next_publish_ns_{0};
  std::mutex publish_mu_;
  UsageCounters published_;  // guarded by publish_mu_
  // fork() generation published_ belongs to (see begin_operation).
  std::atomic<std::uint64_t> publish_generation_{0};
  std::atomic<bool> full_logged_{false};
};

// ---- implementation ----

Metadata metadata_from(const EnvelopeMeta& meta);

template <class T>
Region::State Region::decode_entry(std::string_view stored_key, const Entry& entry,
                                   std::optional<T>& value, Metadata* meta) {
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

template <class T>
Region::State Region::lookup(std::string_view stored_key, const GetOptions& call,
                             std::optional<T>& value, Metadata* meta) {
  if constexpr (kIsRawCodable<T>) {
    if (in_place_ != nullptr) return lookup_in_place(stored_key, call, value, meta);
  }
  Entry entry;
  read_entry(stored_key, type_tag<T>(), schema_version<T>(), call, entry);
  return decode_entry(stored_key, entry, value, meta);
}

template <class T>
Region::State Region::lookup_in_place(std::string_view stored_key, const GetOptions& call,
                                      std::optional<T>& value, Metadata* meta) {
  struct Read {
    Read(Region& r, std::string_view k, std::optional<T>& v) : region(r), stored_key(k), value(v) {}
    Region& region;
    const std::string_view stored_key;
    std::optional<T>& value;
    EnvelopeMeta envelope;
    bool found = false;
    bool decoded = false;
    std::size_t too_large = 0;        // the size of an entry over max_value_size
    std::optional<std::string> copy;  // bytes that take the copying path
  };
  // Runs inside the backend's read: only the envelope checks and the
  // payload decoding, neither of which runs user code. Anything but a good
  // entry of this type is copied out and judged by classify afterwards,
  // which counts and reports it.
  const auto use = [](void* context, const std::string_view* bytes) {
    Read& read = *static_cast<Read*>(context);
    if (bytes == nullptr) return;
    read.found = true;
    // Judged first: an entry over max_value_size is never checksummed or copied.
    if (read.region.too_large_to_read(read.stored_key, bytes->size())) {
      read.too_large = bytes->size();
      return;
    }
    EnvelopeView view;
    if (read.region.envelope_matches(read.stored_key, *bytes, type_tag<T>(), schema_version<T>(),
                                     view)) {
      T decoded{};
      if (decode_payload<T>(view.meta.codec, view.payload, decoded)) {
        read.value.emplace(std::move(decoded));
        read.envelope = view.meta;
        read.decoded = true;
        return;
      }
    }
    read.copy.emplace(*bytes);
  };
  value.reset();
  Read read(*this, stored_key, value);
  if (Status s = read_in_place(stored_key, use, &read); !s) {
    note_read_failure(stored_key, s);
    value.reset();
    return State::kMissing;
  }
  if (!read.found) return State::kMissing;
  if (read.too_large != 0) {
    note_too_large(stored_key, read.too_large);
    return State::kMissing;
  }
  if (!read.decoded) {
    Entry entry;
    classify(stored_key, std::move(read.copy), type_tag<T>(), schema_version<T>(), call, entry);
    return decode_entry(stored_key, entry, value, meta);
  }
  // Freshness is judged after the read: the clock and the stamps may be the caller's code.
  const State state = judge(read.envelope, call);
  if (state == State::kMissing) {
    value.reset();
  } else if (meta != nullptr) {
    *meta = metadata_from(read.envelope);
  }
  return state;
}

template <class T>
std::vector<Region::State> Region::lookup_multi(const std::vector<std::string>& stored_keys,
                                                const GetOptions& call,
                                                std::vector<std::optional<T>>& values) {
  // Sized once: an Entry's view points into its own bytes, so entries never move.
  std::vector<Entry> entries(stored_keys.size());
  read_entries(stored_keys, type_tag<T>(), schema_version<T>(), call, entries);
  values.resize(stored_keys.size());
  std::vector<State> states(stored_keys.size());
  for (std::size_t i = 0; i < stored_keys.size(); ++i) {
    states[i] = decode_entry(stored_keys[i], entries[i], values[i]);
  }
  return states;
}

template <class T>
Status Region::encode_entry(std::string_view stored_key, const T& value,
                            const std::optional<Duration>& ttl, std::int64_t sequence,
                            std::string& envelope) {
  try {
    encode_value(options_.codec, value, new_meta(ttl, sequence), full_key_for(stored_key),
                 envelope);
  } catch (const std::exception& e) {
    return encode_failure(stored_key, e.what());
  }
  return check_encoded_size(stored_key, envelope);
}

template <class T>
Status Region::encode_into(std::vector<KeyValue>& out, std::string stored_key, const T& value,
                           const std::optional<Duration>& ttl, std::int64_t sequence) {
  std::string envelope;
  if (Status s = encode_entry(stored_key, value, ttl, sequence, envelope); !s) return s;
  out.emplace_back(std::move(stored_key), std::move(envelope));
  return Status::ok();
}

template <RegisteredType T>
std::optional<T> Region::get(std::string_view key, const GetOptions& call) {
  OperationScope operation(*this);
  std::optional<T> value;
  std::string storage;
  const State state = lookup<T>(mangle(key, storage), call, value);
  if (state == State::kFresh) {
    counters_.hits.fetch_add(1, std::memory_order_relaxed);
    return value;
  }
  counters_.misses.fetch_add(1, std::memory_order_relaxed);
  return std::nullopt;
}

template <RegisteredType T>
std::optional<CachedValue<T>> Region::get_value(std::string_view key, const GetOptions& call) {
  OperationScope operation(*this);
  std::optional<T> value;
  Metadata meta;
  std::string storage;
  const State state = lookup<T>(mangle(key, storage), call, value, &meta);
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
  OperationScope operation(*this);
  std::string storage;
  const std::string_view stored_key = mangle(key, storage);
  std::string envelope;
  if (Status s = encode_entry(stored_key, value, options.ttl, creation_sequence(), envelope); !s) {
    throw Error(s);
  }
  throw_if_error(store(stored_key, envelope));
}

template <class T>
std::optional<T> Region::enter_creation(std::string_view stored_key, const CreateOptions<T>& call,
                                        std::optional<T>& stale, CreationMutex* key_lock,
                                        CreationSlot& slot, Answer& answer) {
  if (!needs_creation_slot()) return std::nullopt;
  slot = try_creation_slot();
  if (slot) return std::nullopt;
  // Slot before key: let the key go while waiting, so a creator holding a
  // slot and waiting for this key (a nested creation) can finish.
  if (key_lock != nullptr) key_lock->unlock();
  if (wait_for_creation_slot(stored_key, slot)) {
    if (stale) {
      answer = Answer::kStale;
      return std::move(stale);  // the throttle is full: a stale value beats waiting longer
    }
    if (options_.on_lock_timeout == LockTimeoutPolicy::kRaise) throw_slot_timeout(stored_key);
  }
  if (key_lock == nullptr) return std::nullopt;
  return after_key_wait<T>(stored_key, wait_for_lock(*key_lock), call.read_options(), stale,
                           answer);
}

template <class T>
std::optional<T> Region::after_key_wait(std::string_view stored_key, const Status& locked,
                                        const GetOptions& call, std::optional<T>& stale,
                                        Answer& answer) {
  if (locked.is_ok() || locked.code() == StatusCode::kTimedOut) {
    // Re-read after every acquisition (rule L4): whoever held the lock
    // before us has likely stored the value.
    std::optional<T> again;
    const State now = lookup<T>(stored_key, call, again);
    if (now == State::kFresh) {
      answer = Answer::kHit;
      return again;
    }
    if (now == State::kStale) stale = std::move(again);
  }
  if (locked.code() == StatusCode::kTimedOut) {
    counters_.lock_timeouts.fetch_add(1, std::memory_order_relaxed);
    if (stale) {
      answer = Answer::kStale;
      return std::move(stale);
    }
    if (options_.on_lock_timeout == LockTimeoutPolicy::kRaise) throw_lock_timeout(stored_key);
  } else if (!locked.is_ok()) {
    // The lock itself failed (I/O error): availability wins over de-duplication.
    counters_.lock_errors.fetch_add(1, std::memory_order_relaxed);
    report(LogLevel::kWarning, stored_key,
           "creation lock failed, creating unlocked: " + locked.to_string());
  }
  return std::nullopt;
}

template <class T, class Creator>
T Region::create_and_store(std::string_view stored_key, Creator& creator,
                           const CreateOptions<T>& call, std::optional<T> stale,
                           CreationMutex* key_lock, Answer& answer) {
  std::optional<T> created;
  std::int64_t sequence = 0;
  {
    CreationSlot slot;
    if (std::optional<T> instead =
            enter_creation<T>(stored_key, call, stale, key_lock, slot, answer)) {
      return std::move(*instead);
    }
    // Before the creator reads anything: an invalidation from here on
    // covers the value it makes.
    sequence = creation_sequence();
    try {
      const CreatorScope in_creator(stored_key);
      created.emplace(creator());
    } catch (const std::exception& e) {
      counters_.creation_failures.fetch_add(1, std::memory_order_relaxed);
      if (!options_.serve_stale_on_error || !stale) throw;
      report(LogLevel::kWarning, stored_key,
             std::string("creator failed, serving the stale value: ") + e.what());
      answer = Answer::kStale;
      return *stale;
    } catch (...) {
      counters_.creation_failures.fetch_add(1, std::memory_order_relaxed);
      if (!options_.serve_stale_on_error || !stale) throw;
      report(LogLevel::kWarning, stored_key, "creator failed, serving the stale value");
      answer = Answer::kStale;
      return *stale;
    }
  }
  T& value = *created;
  counters_.creations.fetch_add(1, std::memory_order_relaxed);
  if (call.should_cache && !call.should_cache(value)) return std::move(value);
  // The creator's value is returned even when it cannot be stored (spec §6).
  std::string envelope;
  Status s = encode_entry(stored_key, value, call.ttl, sequence, envelope);
  if (!s) {
    counters_.store_errors.fetch_add(1, std::memory_order_relaxed);
  } else {
    s = store(stored_key, envelope);
  }
  // A full store was logged once for the region by store().
  if (!s && s.code() != StatusCode::kFull) {
    report(LogLevel::kError, stored_key, "value not stored: " + s.to_string());
  }
  return std::move(value);
}

template <RegisteredType T, class Creator>
T Region::get_or_create(std::string_view key, Creator&& creator, const CreateOptions<T>& options) {
  static_assert(std::is_convertible_v<std::invoke_result_t<Creator&>, T>,
                "the creator must return a value convertible to T");
  OperationScope operation(*this);
  AnswerScope count(*this);
  std::string storage;
  std::string_view stored_key = mangle(key, storage);
  const GetOptions call = options.read_options();
  std::optional<T> value;
  const State state = lookup<T>(stored_key, call, value);
  if (state == State::kFresh) {
    count.answer = Answer::kHit;
    return std::move(*value);
  }
  // From here on the creator may run: the key is copied, so nothing the
  // creator does to the caller's string can change it.
  if (stored_key.data() != storage.data()) {
    storage.assign(stored_key);
    stored_key = storage;
  }

  // The mutex object's destructor releases the lock on every path out,
  // creator exceptions included, and only after the new value is stored.
  std::unique_ptr<CreationMutex> mutex = creation_mutex(stored_key);
  std::optional<T> stale;
  Status locked;
  if (state == State::kStale) {
    stale = std::move(value);
    locked = options_.wait_for_fresh ? wait_for_lock(*mutex) : mutex->try_lock();
    if (locked.is_ok() && options_.async_runner && !options_.wait_for_fresh) {
      regenerate_async<T>(stored_key, std::forward<Creator>(creator), options, std::move(mutex));
      count.answer = Answer::kStale;
      return std::move(*stale);
    }
    if (!locked.is_ok() && locked.code() != StatusCode::kReentrant) {
      // Someone else is regenerating it, we waited long enough, or the lock
      // failed: a stale value beats none.
      if (locked.code() == StatusCode::kTimedOut) {
        counters_.lock_timeouts.fetch_add(1, std::memory_order_relaxed);
      } else if (locked.code() != StatusCode::kBusy) {
        counters_.lock_errors.fetch_add(1, std::memory_order_relaxed);
        report(LogLevel::kWarning, stored_key, "creation lock failed: " + locked.to_string());
      }
      count.answer = Answer::kStale;
      return std::move(*stale);
    }
  } else {
    locked = wait_for_lock(*mutex);
  }
  if (locked.code() == StatusCode::kReentrant) throw_if_error(locked);
  if (std::optional<T> instead = after_key_wait<T>(stored_key, locked, call, stale, count.answer)) {
    return std::move(*instead);
  }
  return create_and_store<T>(stored_key, creator, options, std::move(stale),
                            locked.is_ok() ? mutex.get() : nullptr, count.answer);
}

template <RegisteredType T>
std::vector<std::optional<T>> Region::get_multi(std::span<const std::string> keys,
                                                const GetOptions& call) {
  OperationScope operation(*this);
  std::vector<std::optional<T>> values;
  const std::vector<State> states = lookup_multi<T>(mangle_all(keys), call, values);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (states[i] == State::kFresh) {
      counters_.hits.fetch_add(1, std::memory_order_relaxed);
    } else {
      counters_.misses.fetch_add(1, std::memory_order_relaxed);
      values[i].reset();
    }
  }
  return values;
}

template <RegisteredType T>
void Region::set_multi(std::span<const std::pair<std::string, T>> items,
                       const SetOptions& options) {
  OperationScope operation(*this);
  std::vector<KeyValue> encoded;
  encoded.reserve(items.size());
  const std::int64_t sequence = creation_sequence();
  for (const auto& [key, value] : items) {
    if (Status s = encode_into(encoded, mangle(key), value, options.ttl, sequence); !s) {
      throw Error(s);
    }
  }
  store_multi(encoded, /*throw_on_error=*/true);
}

template <RegisteredType T, class Creator>
std::vector<T> Region::get_or_create_multi(std::span<const std::string> keys, Creator&& creator,
                                           const CreateOptions<T>& options) {
  static_assert(
      std::is_convertible_v<std::invoke_result_t<Creator&, std::span<const std::string>>,
                            std::vector<T>>,
      "the creator must take std::span<const std::string> and return std::vector<T>");
  OperationScope operation(*this);
  const GetOptions call = options.read_options();
  const std::vector<std::string> stored = mangle_all(keys);
  std::vector<std::optional<T>> values;
  std::vector<State> states = lookup_multi<T>(stored, call, values);

  // One slot per distinct stored key that is not fresh, ordered by stored key:
  // that order is the same in every process, so lock waits cannot cycle.
  struct Slot {
    std::vector<std::size_t> indices;  // positions in `keys`
    State state = State::kMissing;
    std::unique_ptr<CreationMutex> mutex;  // released when the slots go, after the store
    bool timed_out = false;
    bool done = false;  // value settled without creating
    Answer answer = Answer::kMiss;  // what its keys get; counted when the call ends
  };
  std::map<std::string_view, Slot> slots;
  // Declared after `slots`, so it counts them before they go.
  struct CountSlots {
    Region& region;
    const std::map<std::string_view, Slot>& slots;
    ~CountSlots() {
      for (const auto& [stored_key, slot] : slots) {
        region.count_answer(slot.answer, slot.indices.size());
      }
    }
  } count_slots{*this, slots};
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (states[i] == State::kFresh) {
      counters_.hits.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    Slot& slot = slots[stored[i]];
    slot.indices.push_back(i);
    slot.state = states[i];
  }

  // Lock order (docs/design.md): the creation slot first, then the keys in
  // their global order. The slot is taken before any key wait, since this
  // call will create whatever is still missing once it holds the keys.
  CreationSlot creation_slot;
  bool slot_timed_out = false;  // a slot was needed, not had, and raise is the policy
  if (!slots.empty() && needs_creation_slot()) {
    creation_slot = try_creation_slot();
    if (!creation_slot && wait_for_creation_slot(slots.begin()->first, creation_slot)) {
      slot_timed_out = options_.on_lock_timeout == LockTimeoutPolicy::kRaise;
    }
  }

  for (auto& [stored_key, slot] : slots) {
    const std::string key(stored_key);
    slot.mutex = creation_mutex(key);
    if (slot.state == State::kStale) {
      const Status locked = slot.mutex->try_lock();
      if (locked.code() == StatusCode::kReentrant) throw_if_error(locked);
      if (!locked) {
        if (locked.code() != StatusCode::kBusy) {
          counters_.lock_errors.fetch_add(1, std::memory_order_relaxed);
          report(LogLevel::kWarning, key, "creation lock failed: " + locked.to_string());
        }
        slot.answer = Answer::kStale;
        slot.done = true;
      }
      continue;
    }
    const Status locked = wait_for_lock(*slot.mutex);
    if (locked.is_ok()) continue;
    if (locked.code() == StatusCode::kReentrant) throw_if_error(locked);
    if (locked.code() == StatusCode::kTimedOut) {
      counters_.lock_timeouts.fetch_add(1, std::memory_order_relaxed);
      slot.timed_out = true;
    } else {
      counters_.lock_errors.fetch_add(1, std::memory_order_relaxed);
      report(LogLevel::kWarning, key,
             "creation lock failed, creating unlocked: " + locked.to_string());
    }
  }

  // Re-read everything we locked or waited for (rule 1).
  std::vector<std::string> reread_keys;
  std::vector<Slot*> reread_slots;
  for (auto& [stored_key, slot] : slots) {
    if (slot.done) continue;
    reread_keys.emplace_back(stored_key);
    reread_slots.push_back(&slot);
  }
  std::vector<std::optional<T>> reread;
  const std::vector<State> reread_states = lookup_multi<T>(reread_keys, call, reread);
  for (std::size_t j = 0; j < reread_slots.size(); ++j) {
    Slot& slot = *reread_slots[j];
    const bool usable = reread_states[j] == State::kFresh ||
                        (slot.timed_out && reread_states[j] == State::kStale);
    if (usable) {
      for (std::size_t i : slot.indices) values[i] = reread[j];
      slot.answer = reread_states[j] == State::kFresh ? Answer::kHit : Answer::kStale;
      slot.done = true;
    } else if (slot.timed_out && options_.on_lock_timeout == LockTimeoutPolicy::kRaise) {
      throw_lock_timeout(reread_keys[j]);
    } else if (reread_states[j] == State::kStale) {
      for (std::size_t i : slot.indices) values[i] = reread[j];  // the newest stale value
    }
  }

  // One creator call for what is still missing, in the caller's order.
  std::vector<std::string> to_create;
  std::vector<Slot*> created_slots;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const auto it = slots.find(stored[i]);
    if (it == slots.end() || it->second.done || it->second.indices.front() != i) continue;
    to_create.push_back(keys[i]);
    created_slots.push_back(&it->second);
  }
  // Without the slot it waited for, the call serves stale values where it
  // has them and fails for the rest, as a timed-out key wait does.
  if (slot_timed_out && !to_create.empty()) {
    for (const Slot* slot : created_slots) {
      if (!values[slot->indices.front()]) throw_slot_timeout(stored[slot->indices.front()]);
    }
    for (Slot* slot : created_slots) slot->answer = Answer::kStale;
    to_create.clear();
  }
  std::vector<T> created;
  const std::int64_t sequence = creation_sequence();  // before the creator reads anything
  if (!to_create.empty()) {
    try {
      const CreatorScope in_creator(stored[created_slots.front()->indices.front()]);
      created = creator(std::span<const std::string>(to_create));
    } catch (...) {
      counters_.creation_failures.fetch_add(1, std::memory_order_relaxed);
      // serve_stale_on_error: only when every key to create has a stale
      // value to stand in for it; a partial answer is no answer.
      bool all_stale = options_.serve_stale_on_error;
      for (const Slot* slot : created_slots) all_stale = all_stale && values[slot->indices.front()];
      if (!all_stale) throw;
      report(LogLevel::kWarning, stored[created_slots.front()->indices.front()],
             "get_or_create_multi: creator failed for " + std::to_string(to_create.size()) +
                 " keys, serving their stale values: " + internal::current_exception_text());
      for (Slot* slot : created_slots) slot->answer = Answer::kStale;
      created_slots.clear();
      to_create.clear();
    }
  }
  if (!to_create.empty()) {
    if (created.size() != to_create.size()) {
      throw Error(Status::error(StatusCode::kInvalidArgument,
                                "get_or_create_multi: the creator returned " +
                                    std::to_string(created.size()) + " values for " +
                                    std::to_string(to_create.size()) + " keys"));
    }
    counters_.creations.fetch_add(created.size(), std::memory_order_relaxed);
    std::vector<KeyValue> encoded;
    for (std::size_t j = 0; j < created.size(); ++j) {
      if (options.should_cache && !options.should_cache(created[j])) continue;
      const std::string& stored_key = stored[created_slots[j]->indices.front()];
      if (Status s = encode_into(encoded, stored_key, created[j], options.ttl, sequence); !s) {
        counters_.store_errors.fetch_add(1, std::memory_order_relaxed);
        report(LogLevel::kError, stored_key, "value not stored: " + s.to_string());
      }
    }
    store_multi(encoded, /*throw_on_error=*/false);
    for (std::size_t j = 0; j < created.size(); ++j) {
      for (std::size_t i : created_slots[j]->indices) values[i] = created[j];
    }
  }

  std::vector<T> out;
  out.reserve(values.size());
  for (auto& v : values) out.push_back(std::move(*v));
  return out;
}


template <class T, class Creator>
void Region::regenerate_async(std::string_view stored_key, Creator&& creator,
                              const CreateOptions<T>& options,
                              std::unique_ptr<CreationMutex> mutex) {
  // The job outlives the call: it owns a copy of the creator, never a
  // reference to it (what the creator itself captures is its caller's duty).
  static_assert(!internal::kIsReferenceWrapper<std::decay_t<Creator>>,
                "get_or_create: with an async_runner the creator runs after the call returns; "
                "pass a callable that owns its state, not a std::reference_wrapper");
  static_assert(std::is_constructible_v<std::decay_t<Creator>, Creator&&>,
                "get_or_create: with an async_runner the creator is copied into the background "
                "job; it must be copy- or move-constructible");
  struct Job {
    std::string stored_key;
    std::decay_t<Creator> creator;
    CreateOptions<T> options;
    std::unique_ptr<CreationMutex> mutex;
  };
  mutex->hand_over();  // from here on this thread asking again is busy, not reentrant
  auto job = std::make_shared<Job>(
      Job{std::string(stored_key), std::forward<Creator>(creator), options, std::move(mutex)});
  job_started();
  try {
    options_.async_runner->submit([this, job] {
      job->mutex->adopt();
      try {
        // Re-read under the lock (rule 1): a fresh value may have landed.
        std::optional<T> again;
        if (lookup<T>(job->stored_key, job->options.read_options(), again) != State::kFresh) {
          // The caller's read was counted (stale) when it returned.
          Answer not_a_read = Answer::kMiss;
          create_and_store<T>(job->stored_key, job->creator, job->options, std::nullopt,
                              job->mutex.get(), not_a_read);
        }
      } catch (const std::exception& e) {
        report(LogLevel::kError, job->stored_key,
               std::string("background regeneration failed: ") + e.what());
      } catch (...) {
        report(LogLevel::kError, job->stored_key, "background regeneration failed");
      }
      job->mutex->unlock();
      job_finished();
    });
  } catch (...) {
    job_finished();
    throw;
  }
}

}  // namespace dogpile
