// StatsProxy: counts the traffic that passes through it to the backend it wraps.
//
// It counts keys read, hits and misses, keys written and erased, the value
// bytes moved, failed calls, and the latency of every kind of call, timed on
// std::chrono::steady_clock. Multi forms count each key (a get_multi of three
// keys is three gets) but are timed as one call of their own kind. Where it
// sits in a chain decides what it sees: outermost, everything a region asks;
// behind a MemoryTier, only what reaches the store (see proxy_backend.h).
//
//   auto stats = std::make_shared<dogpile::StatsProxy>(dogpile::make_memory_backend());
//   dogpile::Region region({.name = "users"}, stats);
//   ...
//   const dogpile::BackendStats s = stats->snapshot();  // s.hits, s.latency.get.max_ns, ...
//
// Thread safety: any number of threads may use it, snapshot() and reset() at
// once. Each counter is exact; a snapshot taken while calls run may show one
// call's effects on some fields and not yet on others.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dogpile/proxy_backend.h"

namespace dogpile {

// Latency of one kind of call, in nanoseconds.
struct LatencyStats {
  std::uint64_t calls = 0;
  std::uint64_t total_ns = 0;  // mean = total_ns / calls
  std::uint64_t max_ns = 0;
};

struct BackendLatency {
  LatencyStats get{}, set{}, erase{}, get_multi{}, set_multi{}, erase_multi{};
};

// Counts since construction or the last reset(). Reads that fail count in
// gets and errors but in neither hits nor misses, so gets == hits + misses
// until an error; writes count what was asked for, whether or not it failed.
struct BackendStats {
  std::uint64_t gets = 0;           // keys looked up
  std::uint64_t hits = 0;           // keys found
  std::uint64_t misses = 0;         // keys not found
  std::uint64_t sets = 0;           // keys written
  std::uint64_t erases = 0;         // keys erased
  std::uint64_t bytes_read = 0;     // value bytes of the hits
  std::uint64_t bytes_written = 0;  // value bytes of the writes
  std::uint64_t errors = 0;         // calls that returned a failed Status
  BackendLatency latency{};
};

class StatsProxy final : public ProxyBackend {
 public:
  // Throws ConfigError when `inner` is null.
  explicit StatsProxy(std::shared_ptr<Backend> inner);

  Status get(std::string_view key, std::optional<std::string>& value) override;
  Status set(std::string_view key, std::string_view value) override;
  Status erase(std::string_view key) override;
  Status get_multi(std::span<const std::string> keys,
                   std::vector<std::optional<std::string>>& values) override;
  Status set_multi(std::span<const KeyValue> items) override;
  Status erase_multi(std::span<const std::string> keys) override;

  BackendStats snapshot() const noexcept;
  // Zeroes every counter.
  void reset() noexcept;

 private:
  struct Latency {
    std::atomic<std::uint64_t> calls{0}, total_ns{0}, max_ns{0};
    void record(std::uint64_t ns) noexcept;
    LatencyStats load() const noexcept;
    void clear() noexcept;
  };

  std::atomic<std::uint64_t> gets_{0}, hits_{0}, misses_{0}, sets_{0}, erases_{0},
      bytes_read_{0}, bytes_written_{0}, errors_{0};
  Latency get_latency_, set_latency_, erase_latency_, get_multi_latency_, set_multi_latency_,
      erase_multi_latency_;
};

}  // namespace dogpile
