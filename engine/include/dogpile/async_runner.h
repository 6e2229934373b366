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
// Thread safety: submit and drain may be called from any thread.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

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
  // Waits until every submitted job has finished.
  void drain();

 private:
  void work();

  std::mutex mu_;
  std::condition_variable wake_;  // a job was queued, or stopping
  std::condition_variable idle_;  // the queue emptied and nothing runs
  std::deque<std::function<void()>> queue_;  // guarded by mu_
  std::size_t running_ = 0;                  // guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  std::vector<std::thread> threads_;
};

}  // namespace dogpile
