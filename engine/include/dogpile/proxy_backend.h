// ProxyBackend: a backend that wraps another, as dogpile.cache's ProxyBackend.
//
// A proxy holds an inner backend and forwards every call to it unchanged; a
// subclass overrides only the calls it changes. Proxies chain: wrap(backend,
// {a, b}) builds a(b(backend)), so each call passes through a, then b, then
// reaches the backend. The list reads in call order, as dogpile.cache's
// `wrap=[a, b]` does. Two proxies ship: StatsProxy (stats_proxy.h) counts
// traffic; MemoryTier (memory_tier.h) keeps recently read values in this
// process. wrap_from_config builds the same chains from a string map.
//
//   auto backend = dogpile::wrap(
//       dogpile::open_lmdb_backend({.path = dir, .region = "users"}),
//       {dogpile::proxy<dogpile::StatsProxy>(),
//        dogpile::proxy<dogpile::MemoryTier>(
//            dogpile::MemoryTierOptions{.max_age = std::chrono::seconds(2)})});
//   dogpile::Region region({.name = "users"}, backend);
//   auto* stats = dogpile::find_proxy<dogpile::StatsProxy>(region.backend());
//   std::uint64_t hits = stats->snapshot().hits;
//
// Here the StatsProxy sees every call the region makes; listed after the
// MemoryTier it would see only the calls that reach lmdb.
//
// Thread safety: ProxyBackend adds no state of its own, so it is as safe as
// its inner backend (every backend must be safe for any number of threads).
#pragma once

#include <concepts>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dogpile/backend.h"
#include "dogpile/config.h"
#include "dogpile/creation_mutex.h"
#include "dogpile/invalidation.h"
#include "dogpile/status.h"

namespace dogpile {

class ProxyBackend : public Backend {
 public:
  // Throws ConfigError when `inner` is null.
  explicit ProxyBackend(std::shared_ptr<Backend> inner);

  Status get(std::string_view key, std::optional<std::string>& value) override;
  Status set(std::string_view key, std::string_view value) override;
  Status erase(std::string_view key) override;
  // The multi forms forward as multi calls, so the inner backend's single
  // transaction is kept.
  Status get_multi(std::span<const std::string> keys,
                   std::vector<std::optional<std::string>>& values) override;
  Status set_multi(std::span<const KeyValue> items) override;
  Status erase_multi(std::span<const std::string> keys) override;
  std::unique_ptr<CreationMutex> get_mutex(std::string_view key) override;
  // Usage counts belong to the store: forwarded unchanged.
  void add_usage(const UsageCounters& delta) noexcept override;
  void note_expiration(std::optional<std::chrono::nanoseconds> expiration) noexcept override;
  // The inner backend's name: a proxy stores nothing itself.
  std::string_view name() const noexcept override;
  // The inner backend's, so a wrapped lmdb backend keeps sharing its
  // invalidations with other processes.
  std::shared_ptr<InvalidationStrategy> invalidation_strategy() override;

  // The next link of the chain.
  Backend& inner() const noexcept { return *inner_; }

 private:
  std::shared_ptr<Backend> inner_;
};

// Builds one link of a chain around `inner` (dogpile.cache's wrap entries).
using ProxyFactory = std::function<std::shared_ptr<Backend>(std::shared_ptr<Backend> inner)>;

// A ProxyFactory that constructs P(inner, args...); the arguments are copied
// into the factory.
template <class P, class... Args>
  requires std::derived_from<P, ProxyBackend> &&
           std::constructible_from<P, std::shared_ptr<Backend>, const Args&...>
ProxyFactory proxy(Args... args) {
  return [... args = std::move(args)](std::shared_ptr<Backend> inner) -> std::shared_ptr<Backend> {
    return std::make_shared<P>(std::move(inner), args...);
  };
}

// Wraps `backend` in `proxies`: the first is outermost, so calls pass through
// the proxies in list order. An empty list returns `backend` itself. Throws
// ConfigError when `backend` is null or a factory returns null, and whatever
// a proxy's constructor throws.
std::shared_ptr<Backend> wrap(std::shared_ptr<Backend> backend, std::vector<ProxyFactory> proxies);

// The chain from a string map: `<prefix>wrap` lists proxies comma-separated,
// in wrap() order; `<prefix>wrap.<proxy>.<option>` sets their options:
//   {"cache.wrap": "stats, memory_tier", "cache.wrap.memory_tier.max_age": "2s"}
// Proxies: "stats" (no options) and "memory_tier" (max_age, max_entries,
// max_bytes; see memory_tier.h). Without a `<prefix>wrap` key, returns
// `backend` itself. Throws ConfigError naming an unknown proxy, a bad or
// unknown option, or options of a proxy the list does not name.
std::shared_ptr<Backend> wrap_from_config(std::shared_ptr<Backend> backend, const ConfigMap& config,
                                          std::string_view prefix);

// The outermost P in the chain starting at `backend` (which may itself be a
// P), or nullptr. Walks ProxyBackend::inner(); valid while the chain lives.
template <class P>
P* find_proxy(Backend& backend) noexcept {
  for (Backend* link = &backend; link != nullptr;) {
    if (auto* found = dynamic_cast<P*>(link)) return found;
    auto* next = dynamic_cast<ProxyBackend*>(link);
    link = next != nullptr ? &next->inner() : nullptr;
  }
  return nullptr;
}

}  // namespace dogpile
