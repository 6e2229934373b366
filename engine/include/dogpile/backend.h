// Backend: where a region's bytes live.
//
// A Backend moves opaque bytes (envelopes) by key; it knows nothing of types
// or expiry. It is the seed's CacheBackend: get, set, erase (delete), their
// multi forms, an optional per-key creation mutex, and construction by name
// from a string map. A miss is an engaged OK Status with std::nullopt, never
// an error. Concrete backends live in engine/backends/ and are created through
// the registry (make_backend) or their factory headers.
//
// Thread safety: implementations must be safe for concurrent use by any
// number of threads.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dogpile/config.h"
#include "dogpile/creation_mutex.h"
#include "dogpile/invalidation.h"
#include "dogpile/status.h"
#include "dogpile/usage_counters.h"

namespace dogpile {

using KeyValue = std::pair<std::string, std::string>;

class Backend {
 public:
  virtual ~Backend() = default;

  // Fills `value` with the stored bytes, or nullopt on a miss.
  virtual Status get(std::string_view key, std::optional<std::string>& value) = 0;
  virtual Status set(std::string_view key, std::string_view value) = 0;
  // Removes `key`; removing an absent key is OK (idempotent).
  virtual Status erase(std::string_view key) = 0;

  // Multi forms. The defaults loop over the single forms; a backend that can
  // do better (one transaction) overrides them. `values` is resized to
  // keys.size(), one slot per key in order.
  virtual Status get_multi(std::span<const std::string> keys,
                           std::vector<std::optional<std::string>>& values);
  virtual Status set_multi(std::span<const KeyValue> items);
  virtual Status erase_multi(std::span<const std::string> keys);

  // A creation lock for `key`, or nullptr when the backend has none; the
  // region then uses an in-process lock.
  virtual std::unique_ptr<CreationMutex> get_mutex(std::string_view key);

  // Adds a region's usage counts to what the backend keeps for every process
  // (Region publishes them in batches). The default keeps nothing; lmdb adds
  // them to the cache directory in one write transaction. Best effort: a
  // failure loses the counts and is not reported.
  virtual void add_usage(const UsageCounters& delta) noexcept;

  // How long entries of this backend's region stay fresh when they carry no
  // expiry of their own (RegionOptions::expiration_time; nullopt: for ever,
  // or not known). Region tells it at configure. A backend that evicts uses
  // it to remove expired entries before fresh ones; the default ignores it.
  virtual void note_expiration(std::optional<std::chrono::nanoseconds> expiration) noexcept;

  // The registry name ("memory", "null", "lmdb").
  virtual std::string_view name() const noexcept = 0;

  // Where Region::invalidate records its stamps and every read checks them,
  // unless RegionOptions::invalidation says otherwise. The default keeps them
  // in this object (this process only); lmdb keeps them in the cache
  // directory. A backend wrapping another should return the inner one's.
  virtual std::shared_ptr<InvalidationStrategy> invalidation_strategy();

 private:
  std::shared_ptr<InvalidationStrategy> local_invalidation_ = make_local_invalidation();
};

// Builds a backend for the region named `region` from its arguments; reports
// bad or unknown arguments as kInvalidArgument naming the argument.
using BackendFactory = std::function<Status(std::string_view region, const ConfigMap& arguments,
                                            std::unique_ptr<Backend>& out)>;

// Adds or replaces a backend name in the process-wide registry.
void register_backend(std::string name, BackendFactory factory);
// Registered names, sorted.
std::vector<std::string> backend_names();

// Creates the backend registered as `name` for region `region`. Throws
// ConfigError naming an unknown backend or a bad or unknown argument, and the
// matching Error subclass for other failures.
std::unique_ptr<Backend> make_backend(std::string_view name, const ConfigMap& arguments,
                                      std::string_view region = "default");

// The seed's from_config_dict: reads `<prefix>backend` for the name and
// `<prefix>arguments.<argument>` for the arguments, e.g. with prefix "cache.":
// {"cache.backend": "lmdb", "cache.arguments.path": "/tmp/c"}.
std::unique_ptr<Backend> make_backend_from_config(const ConfigMap& config, std::string_view prefix,
                                                  std::string_view region = "default");

}  // namespace dogpile
