// Clock: the wall-clock seam of the engine.
//
// Entry creation times and expiry decisions read the wall clock through a
// Clock so tests can move time. Waits and timeouts never use it: they use
// std::chrono::steady_clock directly, so a wall-clock step cannot stretch or
// cut a wait.
//
// Thread safety: implementations must be safe to call from any thread.
#pragma once

#include <chrono>
#include <memory>

namespace dogpile {

using WallTime = std::chrono::system_clock::time_point;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual WallTime now() const = 0;
};

// The process-wide std::chrono::system_clock.
std::shared_ptr<Clock> system_clock();

}  // namespace dogpile
