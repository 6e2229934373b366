#include "keyed_mutex.h"

#include <chrono>

#include "time_math.h"

namespace dogpile::internal {

class KeyedMutex final : public CreationMutex {
 public:
  KeyedMutex(KeyedMutexTable& table, std::string key) : table_(table), key_(std::move(key)) {}
  ~KeyedMutex() override { unlock(); }

  Status try_lock() override { return acquire(false, std::nullopt); }
  Status lock(Timeout timeout) override { return acquire(true, timeout); }
  void unlock() noexcept override {
    if (held()) table_.release(key_);
    held_ = false;
  }
  void hand_over() noexcept override {
    if (held()) table_.set_holder(key_, std::thread::id());
  }
  void adopt() noexcept override {
    if (held()) table_.set_holder(key_, std::this_thread::get_id());
  }
  bool is_locked_anywhere() override { return held() || table_.is_held(key_); }

 private:
  // Held in this process: a lock taken before a fork() is not the child's.
  bool held() const noexcept { return held_ && generation_ == fork_generation(); }

  Status acquire(bool wait, Timeout timeout) {
    if (held()) return Status::error(StatusCode::kReentrant, "creation lock already held", key_);
    Status s = table_.acquire(key_, wait, timeout);
    held_ = s.is_ok();
    generation_ = fork_generation();
    return s;
  }

  KeyedMutexTable& table_;
  std::string key_;
  bool held_ = false;
  std::uint64_t generation_ = 0;
};

std::unique_ptr<CreationMutex> KeyedMutexTable::mutex(std::string key) {
  return std::make_unique<KeyedMutex>(*this, std::move(key));
}

Status KeyedMutexTable::acquire(const std::string& key, bool wait,
                                CreationMutex::Timeout timeout) {
  const auto me = std::this_thread::get_id();
  // No timeout, or one past the clock's range, waits without a deadline.
  const auto deadline =
      timeout ? steady_deadline(*timeout) : std::chrono::steady_clock::time_point::max();
  State& state = state_.get();
  std::unique_lock lock(state.mu);
  for (;;) {
    const auto it = state.holders.find(key);
    if (it == state.holders.end()) {
      state.holders.emplace(key, me);
      return Status::ok();
    }
    if (it->second == me) {
      return Status::error(StatusCode::kReentrant,
                           "creation lock requested by the thread that holds it");
    }
    if (!wait) return Status::error(StatusCode::kBusy, "creation lock held");
    if (deadline != std::chrono::steady_clock::time_point::max()) {
      if (state.released.wait_until(lock, deadline) == std::cv_status::timeout &&
          state.holders.contains(key)) {
        return Status::error(StatusCode::kTimedOut, "creation lock wait timed out");
      }
    } else {
      state.released.wait(lock);
    }
  }
}

void KeyedMutexTable::release(const std::string& key) noexcept {
  State& state = state_.get();
  {
    std::lock_guard lock(state.mu);
    state.holders.erase(key);
  }
  state.released.notify_all();
}

void KeyedMutexTable::set_holder(const std::string& key, std::thread::id thread) noexcept {
  State& state = state_.get();
  std::lock_guard lock(state.mu);
  const auto it = state.holders.find(key);
  if (it != state.holders.end()) it->second = thread;
}

bool KeyedMutexTable::is_held(const std::string& key) {
  State& state = state_.get();
  std::lock_guard lock(state.mu);
  return state.holders.contains(key);
}

}  // namespace dogpile::internal
