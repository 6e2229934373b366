// Invalidation: dogpile.cache's RegionInvalidationStrategy, decided by order.
//
// A strategy keeps a sequence, the order of invalidations: a creation reads
// sequence() when it starts, before its creator runs, and the region stores
// that number in the entry. Region::invalidate(hard) draws a new number above
// every one handed out before, as the region's hard (soft) stamp, and every
// read compares the entry's number with the stamps: an entry whose creation
// started before the hard stamp is missing; one before the soft stamp is
// stale, so get_or_create regenerates it once while other callers are served
// the old value. The wall clock takes no part (docs/design.md, rule I1): a
// clock stepped back or forth neither revives invalidated entries nor
// invalidates new ones, and a value a creator computed while an invalidation
// ran is returned to its caller but not served afterwards. Stamps only move
// forward; nothing is ever un-invalidated.
//
// A region uses the stamps its backend keeps (Backend::invalidation_strategy)
// unless RegionOptions::invalidation names another strategy. The lmdb backend
// keeps them, and the sequence, in its cache directory, so every process
// sharing it sees an invalidation at its next read and it survives restarts;
// other backends keep them in the backend object, for this process only.
// Entries are judged by the strategy that judges the region, so a region
// should keep one strategy for its entries' lifetime.
//
// Thread safety: implementations must be safe for any number of threads at
// once. sequence() and the queries run on every creation and read: they must
// be cheap (an atomic load, no I/O, no lock that a writer can hold for long)
// and must not throw.
#pragma once

#include <cstdint>
#include <memory>

#include "dogpile/status.h"

namespace dogpile {

class InvalidationStrategy {
 public:
  virtual ~InvalidationStrategy() = default;

  // The number a creation starting now records in its entry. Never
  // decreases; at least the latest stamp.
  virtual std::int64_t sequence() const noexcept = 0;

  // Invalidates every entry whose creation started before this call: hard
  // makes them missing, soft makes them stale.
  virtual Status invalidate(bool hard) = 0;

  // Whether an entry created with `sequence` is hard (missing) or soft
  // (stale) invalidated. The region asks is_hard_invalidated first; an entry
  // may be both.
  virtual bool is_hard_invalidated(std::int64_t sequence) const noexcept = 0;
  virtual bool is_soft_invalidated(std::int64_t sequence) const noexcept = 0;
  // Either of the two.
  bool is_invalidated(std::int64_t sequence) const noexcept {
    return is_hard_invalidated(sequence) || is_soft_invalidated(sequence);
  }

  // Whether a hard (soft) invalidation was ever recorded. Unlike dogpile.cache,
  // where only the latest call counts, the two are independent: a soft
  // invalidation after a hard one leaves the older entries missing.
  virtual bool was_hard_invalidated() const noexcept = 0;
  virtual bool was_soft_invalidated() const noexcept = 0;
};

// Stamps and sequence kept in atomics of this process: the default of
// backends that have no storage of their own for them.
std::shared_ptr<InvalidationStrategy> make_local_invalidation();

}  // namespace dogpile
