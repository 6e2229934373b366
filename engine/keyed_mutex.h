// Internal: in-process creation locks for backends that offer none.
//
// A table of keys currently being created in this process. A mutex object for
// a key holds it by inserting the key; waiters sleep on a condition variable.
// A thread asking for a key it already holds gets kReentrant instead of
// deadlocking with itself. A fork()ed child starts with an empty table: the
// keys its parent's threads held are not held in the child.
//
// Thread safety: the table is safe to share between threads; each mutex
// object it hands out is used by one thread at a time.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>

#include "dogpile/creation_mutex.h"
#include "fork_local.h"

namespace dogpile::internal {

class KeyedMutexTable {
 public:
  std::unique_ptr<CreationMutex> mutex(std::string key);

 private:
  friend class KeyedMutex;

  Status acquire(const std::string& key, bool wait, CreationMutex::Timeout timeout);
  void release(const std::string& key) noexcept;
  // Re-assigns a held key to `thread` (a default id: to no thread).
  void set_holder(const std::string& key, std::thread::id thread) noexcept;
  bool is_held(const std::string& key);

  struct State {
    std::mutex mu;
    std::condition_variable released;
    std::unordered_map<std::string, std::thread::id> holders;  // guarded by mu
  };
  ForkLocal<State> state_;
};

}  // namespace dogpile::internal
