// fork() generations, and state that a fork()ed child must not inherit.
//
// A child starts with one thread and a copy of its parent's memory: mutexes
// that other threads of the parent held stay held for ever, worker threads
// are gone, and tables say that threads which do not exist hold locks. Every
// process-local piece of the engine (lock tables, thread pools, environment
// registries, statistics) therefore tells its generation by
// fork_generation() and starts afresh in a new one, through ForkLocal or by
// comparing generations itself (docs/design.md rule F1).
//
// Thread safety: both are safe from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <utility>

namespace dogpile::internal {

// 0 in the process that first used the engine; bumped in every fork()ed
// child by an atfork handler that runs before any other handler of the
// engine (it is registered on the first call, which every user of it makes
// before registering its own).
std::uint64_t fork_generation() noexcept;

// One T per fork generation: get() makes a fresh T in a child the first
// time the child asks. The parent's T is leaked in the child, never used or
// destroyed there: its mutexes may be held and its threads are gone.
template <class T>
class ForkLocal {
 public:
  ForkLocal() { (void)fork_generation(); }
  ~ForkLocal() {
    Slot* slot = current_.load(std::memory_order_acquire);
    if (slot != nullptr && slot->generation == fork_generation()) delete slot;
  }
  ForkLocal(const ForkLocal&) = delete;
  ForkLocal& operator=(const ForkLocal&) = delete;

  T& get() {
    const std::uint64_t generation = fork_generation();
    Slot* slot = current_.load(std::memory_order_acquire);
    while (slot == nullptr || slot->generation != generation) {
      auto* fresh = new Slot(generation);
      if (current_.compare_exchange_strong(slot, fresh, std::memory_order_acq_rel)) {
        return fresh->value;
      }
      delete fresh;  // another thread installed one; `slot` now holds it
    }
    return slot->value;
  }

 private:
  struct Slot {
    explicit Slot(std::uint64_t g) : generation(g) {}
    const std::uint64_t generation;
    T value;
  };
  std::atomic<Slot*> current_{nullptr};
};

}  // namespace dogpile::internal
