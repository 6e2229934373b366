// MemoryTier: copies of recently used values, kept in this process in front of a store.
//
// Meant for an lmdb backend shared by several processes, whose reads cost a
// transaction and a copy. A get that finds a copy younger than max_age returns
// it without touching the store; an older or absent copy is read through and
// refreshed. So a value the tier returns was in the store, or was written to
// it by this process, at most max_age ago: writes by other processes become
// visible here within max_age. Writes and erases go through to the store
// first and then update or drop the copy, so this process always reads its
// own writes at once. Misses are not copied: a key another process creates is
// seen at the next read. Ages are measured on a monotonic clock, never the
// wall clock; least recently used copies are dropped to stay within
// max_entries and max_bytes.
//
// Under a Region: the region still judges expiry from each envelope, so a
// copy never makes an expired value fresh. When the region takes (or tries)
// a key's creation lock -- it found the value stale or missing -- the tier
// drops its copy, so the region's re-read under the lock reaches the store and
// finds a value another process has just created: still one creation per
// expiry. (With an inner backend without creation locks, such as "memory",
// every writer is in this process and already updates the tier.) A plain
// Region::get takes no lock, so where another process has replaced an
// expired value, get may report a miss until the copy is max_age old.
//
// Off by default: a backend has a memory tier only when wrapped in one, e.g.
//   dogpile::wrap(lmdb, {dogpile::proxy<dogpile::MemoryTier>(
//                           dogpile::MemoryTierOptions{.max_age = std::chrono::seconds(2)})})
// or from config: {"cache.wrap": "memory_tier", "cache.wrap.memory_tier.max_age": "2s"}.
//
// Thread safety: any number of threads may use a tier at once. The store is
// called with no tier lock held; concurrent writes of one key leave no copy
// rather than one that could disagree with the store.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "dogpile/config.h"
#include "dogpile/proxy_backend.h"

namespace dogpile {

using SteadyTime = std::chrono::steady_clock::time_point;

struct MemoryTierOptions {
  // Oldest a copy may be and still be served: the bound on how long another
  // process's write stays unseen here. Must be above 0. Config: "max_age".
  // Default: 1 s.
  Duration max_age = std::chrono::seconds(1);
  // Most copies held. Must be above 0. Config: "max_entries".
  // Default: 10000.
  std::size_t max_entries = 10000;
  // Most key plus value bytes held; a larger value is never copied. Must be
  // above 0. Config: "max_bytes" ("64MiB").
  // Default: 64 MiB.
  std::uint64_t max_bytes = std::uint64_t{64} << 20;
  // Monotonic time for ages; a seam for tests.
  // Default: std::chrono::steady_clock::now.
  std::function<SteadyTime()> now{};
};

// Reads max_age, max_entries and max_bytes from `arguments` (keys without a
// prefix) into `out`, leaving absent ones as they are; kInvalidArgument names
// the first bad, unknown or out-of-range option.
Status memory_tier_options_from_config(const ConfigMap& arguments, MemoryTierOptions& out);

class MemoryTier final : public ProxyBackend {
 public:
  // Throws ConfigError when `inner` is null or an option is out of range.
  MemoryTier(std::shared_ptr<Backend> inner, MemoryTierOptions options = {});

  Status get(std::string_view key, std::optional<std::string>& value) override;
  Status set(std::string_view key, std::string_view value) override;
  Status erase(std::string_view key) override;
  Status get_multi(std::span<const std::string> keys,
                   std::vector<std::optional<std::string>>& values) override;
  Status set_multi(std::span<const KeyValue> items) override;
  Status erase_multi(std::span<const std::string> keys) override;
  // The inner backend's creation lock, which also drops this tier's copy of
  // `key` after each attempt to take it. Must not outlive the tier.
  std::unique_ptr<CreationMutex> get_mutex(std::string_view key) override;

  const MemoryTierOptions& options() const noexcept { return options_; }
  // Copies held now, fresh or not, and their key plus value bytes.
  std::size_t size() const;
  std::uint64_t bytes() const;

 private:
  class ForgettingMutex;

  struct Copy {
    std::string key;
    std::shared_ptr<const std::string> value;  // shared so readers copy it unlocked
    SteadyTime fetched_at;
  };
  using Lru = std::list<Copy>;  // most recently used first

  // Store calls are made unlocked, so a read or write could race with a write
  // of the same key and leave a copy the store no longer holds. Each key
  // hashes to a stripe; a write bumps its stripe's sequence when it starts
  // and counts itself in `writers` while it runs. A read installs what it
  // read only if no write of its stripe ran at any moment of the read; a
  // write installs its value only if no other write of the stripe overlapped.
  struct Stripe {
    std::uint64_t sequence = 0;
    std::uint32_t writers = 0;
  };
  static constexpr std::size_t kStripes = 64;

  // A read's view of its key's stripe as it started.
  struct ReadTicket {
    std::uint64_t sequence = 0;
    bool quiet = false;  // no write of the stripe was running
  };

  static std::size_t stripe_of(std::string_view key) noexcept;
  std::shared_ptr<const std::string> copy_if_fits(std::string_view key,
                                                  std::string_view value) const;

  // Before a store write of `keys`: drops their copies and marks their
  // stripes; returns each key's stripe sequence after the marking.
  std::vector<std::uint64_t> start_writes(std::span<const std::string_view> keys);
  // After it: unmarks the stripes and, if the write succeeded, installs
  // copies[i] (when not null) for each key no other write overlapped.
  void finish_writes(std::span<const std::string_view> keys,
                     std::span<const std::uint64_t> sequences,
                     std::span<std::shared_ptr<const std::string>> copies, bool succeeded,
                     SteadyTime started);
  // Drops `key`'s copy and spoils the reads of its stripe under way.
  void forget(std::string_view key);

  // These require mutex_ held.
  const Copy* find_fresh(std::string_view key, SteadyTime now);
  ReadTicket ticket(std::string_view key) const;
  bool still_quiet(std::string_view key, const ReadTicket& ticket) const;
  void install(std::string_view key, std::shared_ptr<const std::string> value, SteadyTime at);
  void drop(std::string_view key);

  const MemoryTierOptions options_;
  mutable std::mutex mutex_;
  Lru lru_;
  std::unordered_map<std::string_view, Lru::iterator> index_;  // keys point into lru_
  std::uint64_t bytes_ = 0;
  std::array<Stripe, kStripes> stripes_{};
};

}  // namespace dogpile
