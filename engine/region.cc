#include "dogpile/region.h"

#include "dogpile/proxy_backend.h"

#include <pthread.h>
#include <time.h>

#include <cstdio>
#include <limits>
#include <mutex>
#include <unordered_map>

#include <xxhash.h>

#include "backends/lmdb_env.h"
#include "fork_local.h"
#include "keyed_mutex.h"
#include "time_math.h"

namespace dogpile {
namespace internal {

// Lets a report about one key through at most once a minute, so a corrupt hot
// key cannot flood the log.
class LogLimiter {
 public:
  bool allow(std::string_view key) {
    const auto now = std::chrono::steady_clock::now();
    const std::uint64_t h = XXH3_64bits(key.data(), key.size());
    std::lock_guard lock(mu_);
    if (last_.size() > kMaxKeys) last_.clear();  // bounded memory beats perfect limiting
    auto [it, inserted] = last_.try_emplace(h, now);
    if (!inserted) {
      if (now - it->second < std::chrono::minutes(1)) return false;
      it->second = now;
    }
    return true;
  }

 private:
  static constexpr std::size_t kMaxKeys = 4096;
  std::mutex mu_;
  std::unordered_map<std::uint64_t, std::chrono::steady_clock::time_point> last_;  // guarded by mu_
};

// Counts a region's background jobs per fork generation.
class PendingJobs {
 public:
  void started() {
    State& s = state_.get();
    std::lock_guard lock(s.mu);
    ++s.count;
  }
  void finished() noexcept {
    State& s = state_.get();
    std::lock_guard lock(s.mu);
    if (--s.count == 0) s.done.notify_all();
  }
  void wait_for_none() {
    State& s = state_.get();
    std::unique_lock lock(s.mu);
    s.done.wait(lock, [&s] { return s.count == 0; });
  }

 private:
  struct State {
    std::mutex mu;
    std::condition_variable done;
    std::size_t count = 0;  // guarded by mu
  };
  ForkLocal<State> state_;
};

}  // namespace internal

namespace {

// The clock of the statistics deadline, read at every operation.
// CLOCK_MONOTONIC_COARSE is read without the hardware counter (a few ns,
// where steady_clock costs some 20), and its tick of a few milliseconds is
// far below any interval worth publishing at.
std::int64_t steady_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// Steady-clock time (ns) `interval` from now, saturating for huge intervals.
std::int64_t publish_deadline(Duration interval) noexcept {
  return internal::saturating_add(steady_ns(), interval.count());
}

// Stored times can hold any value: they are compared with saturating_sub.
using internal::saturating_sub;
using internal::wall_ns;
using internal::wall_time;

void log_to_stderr(LogLevel level, std::string_view message) {
  std::fprintf(stderr, "dogpile %s: %.*s\n", level == LogLevel::kError ? "error" : "warning",
               static_cast<int>(message.size()), message.data());
}

RegionOptions with_defaults(RegionOptions options) {
  if (!options.clock) options.clock = system_clock();
  if (!options.logger) options.logger = log_to_stderr;
  if (options.name.empty()) {
    throw ConfigError(Status::error(StatusCode::kInvalidArgument, "region name is empty"));
  }
  if (options.nested_lock_timeout < Duration::zero()) {
    throw ConfigError(Status::error(
        StatusCode::kInvalidArgument,
        "region '" + options.name + "': nested_lock_timeout is negative"));
  }
  if (options.stats_interval < Duration::zero()) {
    throw ConfigError(Status::error(StatusCode::kInvalidArgument,
                                    "region '" + options.name + "': stats_interval is negative"));
  }
  return options;
}

}  // namespace

Metadata metadata_from(const EnvelopeMeta& meta) {
  Metadata out;
  out.created_at = wall_time(meta.created_at_ns);
  out.sequence = meta.sequence;
  if (meta.expires_at_ns) out.expires_at = wall_time(*meta.expires_at_ns);
  out.type_tag = meta.type_tag;
  out.schema_version = meta.schema_version;
  out.codec = meta.codec;
  return out;
}

Region::Region(RegionOptions options)
    : options_(with_defaults(std::move(options))),
      local_locks_(std::make_unique<internal::KeyedMutexTable>()),
      log_limiter_(std::make_unique<internal::LogLimiter>()),
      pending_jobs_(std::make_unique<internal::PendingJobs>()),
      next_publish_ns_(publish_deadline(options_.stats_interval)),
      publish_generation_(internal::fork_generation()) {}

Region::Region(RegionOptions options, std::shared_ptr<Backend> backend)
    : Region(std::move(options)) {
  configure(std::move(backend));
}

Region::Region(RegionOptions options, std::string_view backend_name, const ConfigMap& arguments)
    : Region(std::move(options)) {
  configure(backend_name, arguments);
}

void Region::require_unconfigured() const {
  if (backend_) {
    throw ConfigError(Status::error(StatusCode::kInvalidArgument,
                                    "region '" + options_.name + "' is already configured"));
  }
}

void Region::configure(std::shared_ptr<Backend> backend) {
  require_unconfigured();
  if (!backend) {
    throw ConfigError(Status::error(StatusCode::kInvalidArgument,
                                    "region '" + options_.name + "' has no backend"));
  }
  backend_ = std::move(backend);
  in_place_ = dynamic_cast<internal::InPlaceReader*>(backend_.get());
  // A callable expiration has no one value to tell.
  backend_->note_expiration(options_.expiration_time_fn ? std::nullopt
                                                        : options_.expiration_time);
  if (!options_.invalidation) options_.invalidation = backend_->invalidation_strategy();
  if (!options_.invalidation) options_.invalidation = make_local_invalidation();
}

void Region::configure(std::string_view backend_name, const ConfigMap& arguments) {
  require_unconfigured();
  configure(make_backend(backend_name, arguments, options_.name));
}

namespace {

// "none" / "never" is no duration at all (never expire, wait forever).
std::optional<Duration> optional_duration(ConfigReader& reader, std::string_view key,
                                          const std::optional<Duration>& current,
                                          const ConfigMap& config) {
  const auto it = config.find(key);
  if (it != config.end() && (it->second == "none" || it->second == "never")) {
    (void)reader.string(key);
    return std::nullopt;
  }
  if (auto d = reader.duration(key)) return d;
  return current;
}

}  // namespace

void Region::configure_from_config(const ConfigMap& config, std::string_view prefix) {
  require_unconfigured();
  ConfigMap own;  // the region's keys, prefix removed; arguments go to the backend
  for (auto& [key, value] : config_with_prefix(config, prefix)) {
    // Backend arguments and the proxy chain are read by their own parsers.
    const bool elsewhere =
        key.rfind("arguments.", 0) == 0 || key == "wrap" || key.rfind("wrap.", 0) == 0;
    if (!elsewhere) own.emplace(key, value);
  }
  const std::string what = "region '" + options_.name + "' config (prefix '" +
                           std::string(prefix) + "')";
  ConfigReader reader(own, what);
  RegionOptions o = options_;
  const std::optional<std::string> backend_name = reader.string("backend");
  o.expiration_time = optional_duration(reader, "expiration_time", o.expiration_time, own);
  o.lock_timeout = optional_duration(reader, "lock_timeout", o.lock_timeout, own);
  if (auto d = reader.duration("nested_lock_timeout")) o.nested_lock_timeout = *d;
  if (auto policy = reader.string("on_lock_timeout")) {
    if (*policy == "raise") {
      o.on_lock_timeout = LockTimeoutPolicy::kRaise;
    } else if (*policy == "create_unlocked") {
      o.on_lock_timeout = LockTimeoutPolicy::kCreateUnlocked;
    } else {
      throw ConfigError(Status::error(StatusCode::kInvalidArgument,
                                      what + " option 'on_lock_timeout': '" + *policy +
                                          "' is not raise or create_unlocked"));
    }
  }
  if (auto codec = reader.string("codec")) {
    const std::optional<CodecId> id = codec_from_name(*codec);
    if (!id) {
      throw ConfigError(Status::error(
          StatusCode::kInvalidArgument,
          what + " option 'codec': '" + *codec + "' is not binary, portable_binary, json or raw"));
    }
    o.codec = *id;
  }
  if (auto size = reader.size("max_value_size")) o.max_value_size = *size;
  if (auto d = reader.duration("future_tolerance")) o.future_tolerance = *d;
  if (auto d = reader.duration("stats_interval")) o.stats_interval = *d;
  if (auto b = reader.boolean("wait_for_fresh")) o.wait_for_fresh = *b;
  if (auto b = reader.boolean("serve_stale_on_error")) o.serve_stale_on_error = *b;
  if (auto n = reader.unsigned_integer("max_concurrent_creations")) {
    if (*n > 1024) {
      throw ConfigError(Status::error(StatusCode::kInvalidArgument,
                                      what + " option 'max_concurrent_creations': " +
                                          std::to_string(*n) + " is above 1024"));
    }
    o.max_concurrent_creations = static_cast<std::uint32_t>(*n);
  }
  throw_if_error(reader.finish());
  if (!backend_name) {
    throw ConfigError(Status::error(StatusCode::kInvalidArgument,
                                    what + ": missing '" + std::string(prefix) + "backend'"));
  }
  // Built before anything changes, so a bad argument leaves the region as it was.
  std::shared_ptr<Backend> backend =
      wrap_from_config(make_backend_from_config(config, prefix, options_.name), config, prefix);
  options_ = std::move(o);
  configure(std::move(backend));
}

Backend& Region::backend() {
  require_configured();
  return *backend_;
}

void Region::require_configured() const {
  if (!backend_) {
    throw RegionNotConfigured(Status::error(
        StatusCode::kNotConfigured,
        "region '" + options_.name + "' is used before configure() gave it a backend"));
  }
}

Region::~Region() {
  // Background jobs refer to this region: let them finish first.
  pending_jobs_->wait_for_none();
  flush_stats();
}

void Region::job_started() { pending_jobs_->started(); }

void Region::job_finished() noexcept { pending_jobs_->finished(); }

std::string Region::mangle(std::string_view key) const {
  require_configured();
  return options_.key_mangler ? options_.key_mangler(key) : std::string(key);
}

std::string_view Region::mangle(std::string_view key, std::string& storage) const {
  require_configured();
  if (!options_.key_mangler) return key;
  storage = options_.key_mangler(key);
  return storage;
}

std::optional<std::string_view> Region::full_key_for(std::string_view stored_key) const {
  if (stored_key.size() > kMaxInlineKeySize) return std::string_view(stored_key);
  return std::nullopt;
}

EnvelopeMeta Region::new_meta(const std::optional<Duration>& ttl, std::int64_t sequence) const {
  EnvelopeMeta meta;
  meta.created_at_ns = wall_ns(options_.clock->now());
  meta.sequence = sequence;
  if (ttl) {
    // A ttl too long to add never expires: the latest time there is (the
    // earliest for a negative one, already expired).
    meta.expires_at_ns = internal::saturating_add(meta.created_at_ns, ttl->count());
  }
  return meta;
}

void Region::report(LogLevel level, std::string_view stored_key, const std::string& message) {
  if (!log_limiter_->allow(stored_key)) return;
  std::string key_text(stored_key.substr(0, 64));
  if (stored_key.size() > 64) key_text += "...";
  options_.logger(level, "region '" + options_.name + "' key '" + key_text + "': " + message);
}

bool Region::too_large_to_read(std::string_view stored_key, std::size_t bytes) const noexcept {
  // A valid envelope is header, the full key when it was shortened, the
  // payload and the trailer: anything longer carries a payload over the limit.
  const std::size_t key_bytes = stored_key.size() > kMaxInlineKeySize ? stored_key.size() : 0;
  const std::size_t overhead = kEnvelopeHeaderSize + kEnvelopeTrailerSize + key_bytes;
  return bytes > overhead && bytes - overhead > options_.max_value_size;
}

std::size_t Region::take_lent_bytes(std::string_view stored_key, const std::string_view* found,
                                    std::optional<std::string>& out) const {
  if (found == nullptr) return 0;
  if (too_large_to_read(stored_key, found->size())) return found->size();
  out.emplace(*found);
  return 0;
}

void Region::note_too_large(std::string_view stored_key, std::size_t bytes) {
  counters_.corruptions.fetch_add(1, std::memory_order_relaxed);
  report(LogLevel::kError, stored_key,
         "entry of " + std::to_string(bytes) + " bytes is over max_value_size " +
             std::to_string(options_.max_value_size) + ", treated as a miss (not read)");
}

void Region::read_entry(std::string_view stored_key, std::uint64_t tag, std::uint32_t schema,
                        const GetOptions& call, Entry& entry) {
  entry.state = State::kMissing;
  std::optional<std::string> bytes;
  if (in_place_ != nullptr) {
    // The size is judged inside the read, so an entry over max_value_size
    // is never copied (its pages are not even touched).
    struct Read {
      const Region& region;
      std::string_view stored_key;
      std::optional<std::string>& bytes;
      std::size_t too_large = 0;
    } read{*this, stored_key, bytes};
    const auto use = [](void* context, const std::string_view* found) {
      Read& r = *static_cast<Read*>(context);
      r.too_large = r.region.take_lent_bytes(r.stored_key, found, r.bytes);
    };
    if (Status s = read_in_place(stored_key, use, &read); !s) {
      note_read_failure(stored_key, s);
      return;
    }
    if (read.too_large != 0) return note_too_large(stored_key, read.too_large);
  } else if (Status s = backend_->get(stored_key, bytes); !s) {
    note_read_failure(stored_key, s);
    return;
  }
  classify(stored_key, std::move(bytes), tag, schema, call, entry);
}

void Region::note_read_failure(std::string_view stored_key, const Status& status) {
  counters_.store_errors.fetch_add(1, std::memory_order_relaxed);
  report(LogLevel::kError, stored_key, "read failed, treated as a miss: " + status.to_string());
}

Status Region::read_in_place(std::string_view stored_key,
                             void (*use)(void*, const std::string_view*), void* context) {
  return in_place_->read_in_place(stored_key, use, context);
}

namespace {

// A shortened key must name this key exactly; an inline key must not have
// been shortened (else a crafted short key could alias a hashed long one).
bool key_matches(std::string_view stored_key, const EnvelopeView& view) noexcept {
  return stored_key.size() > kMaxInlineKeySize ? view.full_key && *view.full_key == stored_key
                                               : !view.full_key;
}

}  // namespace

bool Region::envelope_matches(std::string_view stored_key, std::string_view bytes,
                              std::uint64_t tag, std::uint32_t schema,
                              EnvelopeView& view) const noexcept {
  return decode_envelope(bytes, options_.max_value_size, view) == DecodeStatus::kOk &&
         key_matches(stored_key, view) && view.meta.type_tag == tag &&
         view.meta.schema_version == schema;
}

void Region::classify(std::string_view stored_key, std::optional<std::string> bytes,
                      std::uint64_t tag, std::uint32_t schema, const GetOptions& call,
                      Entry& entry) {
  entry.state = State::kMissing;
  if (!bytes) return;
  entry.bytes = std::move(*bytes);

  switch (decode_envelope(entry.bytes, options_.max_value_size, entry.view)) {
    case DecodeStatus::kOk:
      break;
    case DecodeStatus::kOtherVersion:
      counters_.mismatches.fetch_add(1, std::memory_order_relaxed);
      return;
    case DecodeStatus::kCorrupt:
    case DecodeStatus::kTooLarge:
      counters_.corruptions.fetch_add(1, std::memory_order_relaxed);
      report(LogLevel::kError, stored_key, "corrupt entry, treated as a miss");
      return;
  }

  if (!key_matches(stored_key, entry.view) ||
      (tag != 0 && (entry.view.meta.type_tag != tag || entry.view.meta.schema_version != schema))) {
    counters_.mismatches.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  entry.state = judge(entry.view.meta, call);
}

Region::State Region::judge(const EnvelopeMeta& meta, const GetOptions& call) const {
  // Hard invalidation makes an entry missing even when expiry is ignored;
  // soft invalidation is a kind of expiry.
  const InvalidationStrategy& stamps = *options_.invalidation;
  if (stamps.is_hard_invalidated(meta.sequence)) return State::kMissing;
  if (call.ignore_expiration) return State::kFresh;
  const std::int64_t now = wall_ns(options_.clock->now());
  const bool from_future =
      saturating_sub(meta.created_at_ns, now) >
      std::chrono::nanoseconds(options_.future_tolerance).count();
  // A per-call expiration is the caller's explicit word and wins; else an
  // entry's own TTL; else the region's expiration (callable or fixed).
  bool expired = false;
  if (call.expiration_time) {
    expired = saturating_sub(now, meta.created_at_ns) >= call.expiration_time->count();
  } else if (meta.expires_at_ns) {
    expired = now >= *meta.expires_at_ns;
  } else if (const std::optional<Duration> region_expiration = options_.expiration_time_fn
                                                                   ? options_.expiration_time_fn()
                                                                   : options_.expiration_time) {
    expired = saturating_sub(now, meta.created_at_ns) >= region_expiration->count();
  }
  const bool stale = from_future || expired || stamps.is_soft_invalidated(meta.sequence);
  return stale ? State::kStale : State::kFresh;
}

void Region::read_entries(const std::vector<std::string>& stored_keys, std::uint64_t tag,
                          std::uint32_t schema, const GetOptions& call,
                          std::vector<Entry>& entries) {
  std::vector<std::optional<std::string>> bytes(stored_keys.size());
  std::vector<std::size_t> too_large(stored_keys.size(), 0);
  Status s;
  if (in_place_ != nullptr) {
    // As read_entry: an entry over max_value_size is never copied.
    struct Read {
      const Region& region;
      const std::vector<std::string>& stored_keys;
      std::vector<std::optional<std::string>>& bytes;
      std::vector<std::size_t>& too_large;
    } read{*this, stored_keys, bytes, too_large};
    const auto use = [](void* context, std::size_t i, const std::string_view* found) {
      Read& r = *static_cast<Read*>(context);
      r.too_large[i] = r.region.take_lent_bytes(r.stored_keys[i], found, r.bytes[i]);
    };
    s = in_place_->read_multi_in_place(stored_keys, use, &read);
  } else {
    s = backend_->get_multi(stored_keys, bytes);
  }
  if (!s) {
    counters_.store_errors.fetch_add(1, std::memory_order_relaxed);
    report(LogLevel::kError, stored_keys.empty() ? std::string() : stored_keys.front(),
           "multi read failed, treated as misses: " + s.to_string());
    for (Entry& e : entries) e.state = State::kMissing;
    return;
  }
  for (std::size_t i = 0; i < stored_keys.size(); ++i) {
    if (too_large[i] != 0) {
      entries[i].state = State::kMissing;
      note_too_large(stored_keys[i], too_large[i]);
      continue;
    }
    classify(stored_keys[i], std::move(bytes[i]), tag, schema, call, entries[i]);
  }
}

std::vector<std::string> Region::mangle_all(std::span<const std::string> keys) const {
  std::vector<std::string> out;
  out.reserve(keys.size());
  for (const std::string& key : keys) out.push_back(mangle(key));
  return out;
}

void Region::store_multi(std::vector<KeyValue>& items, bool throw_on_error) {
  if (items.empty()) return;
  Status s = backend_->set_multi(items);
  if (s.is_ok()) return;
  counters_.store_errors.fetch_add(1, std::memory_order_relaxed);
  note_full(s);
  if (throw_on_error) throw_if_error(s);
  if (s.code() != StatusCode::kFull) {
    report(LogLevel::kError, items.front().first, "values not stored: " + s.to_string());
  }
}

void Region::erase_multi(std::span<const std::string> keys) {
  OperationScope operation(*this);
  const std::vector<std::string> stored_keys = mangle_all(keys);
  Status s = backend_->erase_multi(stored_keys);
  if (!s) counters_.store_errors.fetch_add(1, std::memory_order_relaxed);
  throw_if_error(s);
}

void Region::note_undecodable(std::string_view stored_key) {
  counters_.corruptions.fetch_add(1, std::memory_order_relaxed);
  report(LogLevel::kError, stored_key, "payload does not decode, treated as a miss");
}

void Region::invalidate(bool hard) {
  if (!options_.invalidation) require_configured();  // the default stamps are the backend's
  throw_if_error(options_.invalidation->invalidate(hard));
}

std::optional<Metadata> Region::get_value_metadata(std::string_view key) {
  OperationScope operation(*this);
  Entry entry;
  std::string storage;
  read_entry(mangle(key, storage), 0, 0, GetOptions{.ignore_expiration = true}, entry);
  if (entry.state == State::kMissing) return std::nullopt;
  return metadata_from(entry.view.meta);
}

Status Region::store(std::string_view stored_key, const std::string& envelope) {
  Status s = backend_->set(stored_key, envelope);
  if (!s) {
    counters_.store_errors.fetch_add(1, std::memory_order_relaxed);
    note_full(s);
  }
  return s;
}

void Region::note_full(const Status& status) {
  if (status.code() != StatusCode::kFull || full_logged_.exchange(true)) return;
  options_.logger(LogLevel::kError, "region '" + options_.name + "': " + status.to_string() +
                                        " (values that do not fit are not stored; logged once)");
}

void Region::erase(std::string_view key) {
  OperationScope operation(*this);
  std::string storage;
  // Before backend_ is touched: it may be unset.
  const std::string_view stored_key = mangle(key, storage);
  Status s = backend_->erase(stored_key);
  if (!s) counters_.store_errors.fetch_add(1, std::memory_order_relaxed);
  throw_if_error(s);
}

std::unique_ptr<CreationMutex> Region::creation_mutex(std::string_view stored_key) {
  std::unique_ptr<CreationMutex> mutex = backend_->get_mutex(stored_key);
  return mutex ? std::move(mutex) : local_locks_->mutex(std::string(stored_key));
}

Status Region::encode_failure(std::string_view stored_key, const char* what) const {
  return Status::error(StatusCode::kInvalidArgument,
                       "region '" + options_.name + "' key '" + std::string(stored_key.substr(0, 64)) +
                           "': the value cannot be encoded with codec " +
                           std::string(codec_name(options_.codec)) + ": " + what);
}

Status Region::check_encoded_size(std::string_view stored_key,
                                  const std::string& envelope) const {
  const std::size_t key_bytes = stored_key.size() > kMaxInlineKeySize ? stored_key.size() : 0;
  const std::size_t payload =
      envelope.size() - kEnvelopeHeaderSize - kEnvelopeTrailerSize - key_bytes;
  if (payload <= options_.max_value_size) return Status::ok();
  // Stored, it would read back as corrupt and be recreated forever.
  return Status::error(StatusCode::kTooLarge,
                       "region '" + options_.name + "' key '" + std::string(stored_key.substr(0, 64)) +
                           "': the encoded value is " + std::to_string(payload) +
                           " bytes, over max_value_size " +
                           std::to_string(options_.max_value_size));
}

namespace {
// The stored key of the creation this thread is running (innermost), empty
// outside creators: a key wait inside a creator may be part of a cycle.
thread_local std::string_view t_creating_key;
thread_local int t_creators_running = 0;
}  // namespace

Region::CreatorScope::CreatorScope(std::string_view stored_key) noexcept
    : outer_(t_creating_key) {
  t_creating_key = stored_key;
  ++t_creators_running;
}

Region::CreatorScope::~CreatorScope() {
  t_creating_key = outer_;
  --t_creators_running;
}

CreationMutex::Timeout Region::key_wait_timeout() const {
  if (t_creators_running == 0) return options_.lock_timeout;
  if (!options_.lock_timeout || options_.nested_lock_timeout < *options_.lock_timeout) {
    return options_.nested_lock_timeout;
  }
  return options_.lock_timeout;
}

void Region::count_answer(Answer answer, std::uint64_t reads) noexcept {
  switch (answer) {
    case Answer::kHit: counters_.hits.fetch_add(reads, std::memory_order_relaxed); return;
    case Answer::kStale: counters_.stale_served.fetch_add(reads, std::memory_order_relaxed); return;
    case Answer::kMiss: break;
  }
  counters_.misses.fetch_add(reads, std::memory_order_relaxed);
}

Status Region::wait_for_lock(CreationMutex& mutex) { return timed_wait(mutex, key_wait_timeout()); }

Status Region::timed_wait(CreationMutex& mutex, CreationMutex::Timeout timeout) {
  const auto started = std::chrono::steady_clock::now();
  Status s = mutex.lock(timeout);
  counters_.lock_waits.fetch_add(1, std::memory_order_relaxed);
  counters_.lock_wait_ns.fetch_add(
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::steady_clock::now() - started)
                                     .count()),
      std::memory_order_relaxed);
  return s;
}

namespace {
constexpr std::string_view kSlotKeyPrefix("\0dogpile.creation-slot.", 23);
// Creation slots this thread holds: a creation nested in a creator runs in its
// outer creation's slot, so nesting can never wait on itself.
thread_local int t_slots_held = 0;
}  // namespace

void Region::SlotRelease::operator()(CreationMutex* slot) const noexcept {
  slot->unlock();
  delete slot;
  --t_slots_held;
}

bool Region::needs_creation_slot() const noexcept {
  return options_.max_concurrent_creations > 0 && t_slots_held == 0;
}

namespace {
// Slot locks live beside the key locks; the NUL keeps them apart from any
// key a caller could mangle to by accident.
std::string slot_key(std::uint32_t i) { return std::string(kSlotKeyPrefix) + std::to_string(i); }
}  // namespace

Region::CreationSlot Region::try_creation_slot() {
  for (std::uint32_t i = 0; i < options_.max_concurrent_creations; ++i) {
    std::unique_ptr<CreationMutex> m = creation_mutex(slot_key(i));
    if (m->try_lock().is_ok()) {
      ++t_slots_held;
      return CreationSlot(m.release());
    }
  }
  return CreationSlot();
}

bool Region::wait_for_creation_slot(std::string_view stored_key, CreationSlot& slot) {
  // All busy: queue on the slot the key's hash picks (modulo the slot
  // count), so waiters spread over the slots.
  const auto i = static_cast<std::uint32_t>(XXH3_64bits(stored_key.data(), stored_key.size()) %
                                            options_.max_concurrent_creations);
  std::unique_ptr<CreationMutex> m = creation_mutex(slot_key(i));
  const Status s = timed_wait(*m, options_.lock_timeout);
  if (s.is_ok()) {
    ++t_slots_held;
    slot.reset(m.release());
    return false;
  }
  if (s.code() == StatusCode::kTimedOut) {
    counters_.lock_timeouts.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  // The throttle is not worth failing the caller for.
  counters_.lock_errors.fetch_add(1, std::memory_order_relaxed);
  report(LogLevel::kWarning, stored_key,
         "creation slot lock failed, creating without a slot: " + s.to_string());
  return false;
}

bool Region::key_is_locked(std::string_view key) {
  std::string storage;
  return creation_mutex(mangle(key, storage))->is_locked_anywhere();
}

namespace {
std::string duration_text(Duration d) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}
}  // namespace

void Region::throw_lock_timeout(std::string_view stored_key) {
  const std::string key(stored_key.substr(0, 64));
  const bool nested_bound =
      t_creators_running > 0 &&
      (!options_.lock_timeout || options_.nested_lock_timeout < *options_.lock_timeout);
  if (nested_bound) {
    // Creators waiting for each other's keys (A's creator asks for B while
    // B's asks for A, in threads or processes) end here, not in a hang.
    throw LockTimeout(Status::error(
        StatusCode::kTimedOut,
        "region '" + options_.name + "': waited past nested_lock_timeout " +
            duration_text(options_.nested_lock_timeout) + " for key '" + key +
            "' while creating key '" + std::string(t_creating_key.substr(0, 64)) +
            "' (creators waiting for each other's keys form a cycle)"));
  }
  throw LockTimeout(Status::error(StatusCode::kTimedOut,
                                  "region '" + options_.name + "': waited past lock_timeout for "
                                  "another caller creating key '" + key + "'"));
}

void Region::throw_slot_timeout(std::string_view stored_key) {
  throw LockTimeout(Status::error(
      StatusCode::kTimedOut,
      "region '" + options_.name + "': waited past lock_timeout for one of the " +
          std::to_string(options_.max_concurrent_creations) +
          " creation slots (max_concurrent_creations) to create key '" +
          std::string(stored_key.substr(0, 64)) + "'"));
}

namespace internal {
std::string current_exception_text() {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "an exception that is not a std::exception";
  }
}
}  // namespace internal

namespace {

// The counters a region publishes, as they stand.
UsageCounters usage_of(const RegionStats& s) noexcept {
  UsageCounters u;
  u.hits = s.hits;
  u.misses = s.misses;
  u.stale_served = s.stale_served;
  u.creations = s.creations;
  u.corruptions = s.corruptions;
  u.mismatches = s.mismatches;
  return u;
}

// a - b for counters that only grow.
UsageCounters difference(const UsageCounters& a, const UsageCounters& b) noexcept {
  UsageCounters d;
  d.hits = a.hits - b.hits;
  d.misses = a.misses - b.misses;
  d.stale_served = a.stale_served - b.stale_served;
  d.creations = a.creations - b.creations;
  d.corruptions = a.corruptions - b.corruptions;
  d.mismatches = a.mismatches - b.mismatches;
  d.evictions = a.evictions - b.evictions;
  d.expired_purged = a.expired_purged - b.expired_purged;
  return d;
}

}  // namespace

void Region::maybe_publish_stats() noexcept {
  // The common case: one clock read and one compare.
  if (steady_ns() < next_publish_ns_.load(std::memory_order_relaxed)) return;
  publish_stats(false);
}

void Region::flush_stats() noexcept { publish_stats(true); }

void Region::begin_operation() noexcept {
  const std::uint64_t generation = internal::fork_generation();
  if (generation == publish_generation_.load(std::memory_order_relaxed)) [[likely]] return;
  // A lock another thread held at fork() stays held in the child: then the
  // child publishes nothing rather than wait forever.
  std::unique_lock lock(publish_mu_, std::try_to_lock);
  if (!lock || publish_generation_.load(std::memory_order_relaxed) == generation) return;
  // What the parent had not published yet is the parent's to publish.
  published_ = usage_of(stats());
  publish_generation_.store(generation, std::memory_order_relaxed);
}

void Region::publish_stats(bool force) noexcept {
  if (!backend_) return;
  begin_operation();
  std::unique_lock lock(publish_mu_, std::defer_lock);
  if (force) {
    lock.lock();
  } else if (!lock.try_lock()) {
    return;  // another thread is publishing
  }
  if (!force && steady_ns() < next_publish_ns_.load(std::memory_order_relaxed)) return;
  const UsageCounters current = usage_of(stats());
  const UsageCounters delta = difference(current, published_);
  if (!delta.empty()) backend_->add_usage(delta);
  published_ = current;
  next_publish_ns_.store(publish_deadline(options_.stats_interval), std::memory_order_relaxed);
}

RegionStats Region::stats() const noexcept {
  const auto get = [](const std::atomic<std::uint64_t>& c) {
    return c.load(std::memory_order_relaxed);
  };
  RegionStats s;
  s.hits = get(counters_.hits);
  s.misses = get(counters_.misses);
  s.stale_served = get(counters_.stale_served);
  s.creations = get(counters_.creations);
  s.corruptions = get(counters_.corruptions);
  s.mismatches = get(counters_.mismatches);
  s.creation_failures = get(counters_.creation_failures);
  s.lock_waits = get(counters_.lock_waits);
  s.lock_wait_ns = get(counters_.lock_wait_ns);
  s.lock_timeouts = get(counters_.lock_timeouts);
  s.lock_errors = get(counters_.lock_errors);
  s.store_errors = get(counters_.store_errors);
  return s;
}

}  // namespace dogpile
