// Invalidation: dogpile.cache's RegionInvalidationStrategy.
//
// Region::invalidate(hard) records a wall-clock stamp (the region's Clock),
// and every read compares an entry's created_at with the stamps: an entry
// created before the hard stamp is missing; one created before the soft stamp
// is stale, so get_or_create regenerates it once while other callers are
// served the old value. Stamps only move forward: a later invalidate() with an
// older time changes nothing, and nothing is ever un-invalidated.
//
// A region uses the stamps its backend keeps (Backend::invalidation_strategy)
// unless RegionOptions::invalidation names another strategy. The lmdb backend
// keeps them in its cache directory, so every process sharing it sees an
// invalidation at its next read and it survives restarts; other backends keep
// them in the backend object, for this process only.
//
// Thread safety: implementations must be safe for any number of threads at
// once. The queries run on every read: they must be cheap (an atomic load, no
// I/O, no lock that a writer can hold for long) and should not throw.
#pragma once

#include <memory>

#include "dogpile/clock.h"
#include "dogpile/status.h"

namespace dogpile {

class InvalidationStrategy {
 public:
  virtual ~InvalidationStrategy() = default;

  // Invalidates every entry created before `at`: hard makes them missing,
  // soft makes them stale. Region::invalidate passes its clock's now().
  virtual Status invalidate(bool hard, WallTime at) = 0;

  // Whether an entry created at `created_at` is hard (missing) or soft
  // (stale) invalidated. The region asks is_hard_invalidated first; an entry
  // may be both.
  virtual bool is_hard_invalidated(WallTime created_at) const = 0;
  virtual bool is_soft_invalidated(WallTime created_at) const = 0;
  // Either of the two.
  virtual bool is_invalidated(WallTime created_at) const {
    return is_hard_invalidated(created_at) || is_soft_invalidated(created_at);
  }

  // Whether a hard (soft) invalidation was ever recorded. Unlike dogpile.cache,
  // where only the latest call counts, the two are independent: a soft
  // invalidation after a hard one leaves the older entries missing.
  virtual bool was_hard_invalidated() const = 0;
  virtual bool was_soft_invalidated() const = 0;
};

// Stamps kept in two atomics of this process: the default of backends that
// have no storage of their own for them.
std::shared_ptr<InvalidationStrategy> make_local_invalidation();

}  // namespace dogpile
