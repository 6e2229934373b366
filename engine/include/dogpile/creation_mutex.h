// CreationMutex: the lock that lets one caller create a value while others wait.
//
// A backend may hand the region one CreationMutex per key (Backend::get_mutex,
// the seed's get_mutex). Implementations must exclude other threads of this
// process as well as other processes where they claim to be cross-process.
// Every acquisition reports its result: callers check it, never assume it.
//
// Thread safety: one CreationMutex object is used by one thread at a time;
// distinct objects for the same key may be used from any threads or
// processes concurrently, that being their purpose.
#pragma once

#include <chrono>
#include <optional>

#include "dogpile/status.h"

namespace dogpile {

class CreationMutex {
 public:
  using Timeout = std::optional<std::chrono::steady_clock::duration>;

  virtual ~CreationMutex() = default;

  // OK: now held. kBusy: held elsewhere. kReentrant: this thread already
  // holds it through another object. Other codes: the attempt failed.
  virtual Status try_lock() = 0;
  // Waits at most `timeout` (forever when nullopt). OK: now held.
  // kTimedOut: the wait ran out. kReentrant and errors as try_lock.
  virtual Status lock(Timeout timeout) = 0;
  // Releases a held lock; does nothing when not held. May be called from a
  // thread other than the one that took the lock.
  virtual void unlock() noexcept = 0;
  // Hand-over of a held lock to another thread (the async runner): the taker
  // calls hand_over() before passing the object on, after which the lock
  // still excludes everyone but belongs to no thread (the taker asking for
  // the key again is busy, not reentrant); the receiving thread then calls
  // adopt() to become its holder. Both do nothing when the lock is not held.
  virtual void hand_over() noexcept {}
  virtual void adopt() noexcept {}
  // Whether anyone (any thread, any process) holds the lock right now.
  // A snapshot: it may change the moment it is returned.
  virtual bool is_locked_anywhere() = 0;
};

}  // namespace dogpile
