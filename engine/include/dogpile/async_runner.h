// AsyncRunner: a small thread pool that regenerates stale values in the
// background while callers are served the stale copy.
//
// Give one to RegionOptions::async_runner. A caller that finds a stale value
// and wins its creation lock hands the lock and the creator to the runner and
// returns the stale value at once; a runner thread re-reads the key, runs the
// creator, stores the value and only then releases the lock, so no other
// caller starts a second regeneration meanwhile. A runner may serve many
// regions; each region waits for its own pending jobs when it is destroyed.
//
// A runner made before fork() works in the child too: the child's first
// submit starts the child's own threads. Jobs submitted before the fork stay
// the parent's; the child neither runs nor waits for them.
//
// Thread safety: submit and drain may be called from any thread.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>

namespace dogpile {

class AsyncRunner {
 public:
  // Starts `threads` worker threads (at least one).
  explicit AsyncRunner(std::size_t threads = 2);
  // Runs every job already submitted, then joins the workers.
  ~AsyncRunner();

  AsyncRunner(const AsyncRunner&) = delete;
  AsyncRunner& operator=(const AsyncRunner&) = delete;

  // Queues `job`. Jobs must not throw; Region's jobs catch, count and log
  // their creator's exceptions themselves.
  void submit(std::function<void()> job);
  // Waits until every job submitted in this process has finished.
  void drain();

 private:
  struct Impl;  // the queue and threads of each fork generation
  std::unique_ptr<Impl> impl_;
};

}  // namespace dogpile
