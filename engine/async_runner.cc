#include "dogpile/async_runner.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "fork_local.h"

namespace dogpile {
namespace {

// One fork generation's queue and threads (a child's threads are its own).
struct Pool {
  std::mutex mu;
  std::condition_variable wake;  // a job was queued, or stopping
  std::condition_variable idle;  // the queue emptied and nothing runs
  std::deque<std::function<void()>> queue;  // guarded by mu
  std::size_t running = 0;                  // guarded by mu
  bool stopping = false;                    // guarded by mu
  std::vector<std::thread> threads;         // started under mu, joined by ~AsyncRunner

  void work() {
    std::unique_lock lock(mu);
    for (;;) {
      wake.wait(lock, [this] { return stopping || !queue.empty(); });
      if (queue.empty()) return;  // stopping, and everything queued has run
      std::function<void()> job = std::move(queue.front());
      queue.pop_front();
      ++running;
      lock.unlock();
      job();  // never under mu: jobs run user code
      lock.lock();
      --running;
      if (queue.empty() && running == 0) idle.notify_all();
    }
  }
};

}  // namespace

struct AsyncRunner::Impl {
  explicit Impl(std::size_t n) : thread_count(std::max<std::size_t>(n, 1)) {}

  // This generation's pool, its threads started.
  Pool& pool() {
    Pool& p = pools.get();
    std::lock_guard lock(p.mu);
    if (p.threads.empty() && !p.stopping) {
      p.threads.reserve(thread_count);
      for (std::size_t i = 0; i < thread_count; ++i) {
        p.threads.emplace_back([&p] { p.work(); });
      }
    }
    return p;
  }

  const std::size_t thread_count;
  internal::ForkLocal<Pool> pools;
};

AsyncRunner::AsyncRunner(std::size_t threads) : impl_(std::make_unique<Impl>(threads)) {
  impl_->pool();
}

AsyncRunner::~AsyncRunner() {
  Pool& p = impl_->pools.get();
  {
    std::lock_guard lock(p.mu);
    p.stopping = true;
  }
  p.wake.notify_all();
  // Joined outside mu: a finishing job's worker takes it on its way out.
  for (std::thread& t : p.threads) t.join();
}

void AsyncRunner::submit(std::function<void()> job) {
  Pool& p = impl_->pool();
  {
    std::lock_guard lock(p.mu);
    p.queue.push_back(std::move(job));
  }
  p.wake.notify_one();
}

void AsyncRunner::drain() {
  Pool& p = impl_->pool();
  std::unique_lock lock(p.mu);
  p.idle.wait(lock, [&p] { return p.queue.empty() && p.running == 0; });
}

}  // namespace dogpile
