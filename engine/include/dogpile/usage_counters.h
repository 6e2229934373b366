// UsageCounters: what a region did, as the store keeps it for every process.
//
// Regions add their counts to their backend in batches
// (Backend::add_usage); the lmdb backend keeps the sums in the cache
// directory, where Store::stats and `dogpile stats` read them.
//
// Thread safety: a plain value type.
#pragma once

#include <cstdint>

namespace dogpile {

struct UsageCounters {
  // Each read counts once, as one of these three (RegionStats).
  std::uint64_t hits = 0;            // reads that returned a fresh stored value
  std::uint64_t misses = 0;          // reads that returned no stored value (a created one, or none)
  std::uint64_t stale_served = 0;    // reads that returned a stale stored value
  std::uint64_t creations = 0;       // creator calls that returned
  std::uint64_t corruptions = 0;     // entries that failed their checksum or decode
  std::uint64_t mismatches = 0;      // entries of another type or schema version
  std::uint64_t evictions = 0;       // entries removed to make room under max_size
  std::uint64_t expired_purged = 0;  // entries past expires_at removed by purge or eviction

  UsageCounters& operator+=(const UsageCounters& o) noexcept {
    hits += o.hits;
    misses += o.misses;
    stale_served += o.stale_served;
    creations += o.creations;
    corruptions += o.corruptions;
    mismatches += o.mismatches;
    evictions += o.evictions;
    expired_purged += o.expired_purged;
    return *this;
  }
  bool empty() const noexcept {
    return (hits | misses | stale_served | creations | corruptions | mismatches | evictions |
            expired_purged) == 0;
  }
  friend bool operator==(const UsageCounters&, const UsageCounters&) = default;
};

}  // namespace dogpile
