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
    if (held_) table_.release(key_);
    held_ = false;
  }
  void hand_over() noexcept override {
    if (held_) table_.set_holder(key_, std::thread::id());
  }
  void adopt() noexcept override {
    if (held_) table_.set_holder(key_, std::this_thread::get_id());
  }
  bool is_locked_anywhere() override { return held_ || table_.is_held(key_); }

 private:
  Status acquire(bool wait, Timeout timeout) {
    if (held_) return Status::error(StatusCode::kReentrant, "creation lock already held", key_);
    Status s = table_.acquire(key_, wait, timeout);
    held_ = s.is_ok();
    return s;
  }

  KeyedMutexTable& table_;
  std::string key_;
  bool held_ = false;
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
  std::unique_lock lock(mu_);
  for (;;) {
    const auto it = holders_.find(key);
    if (it == holders_.end()) {
      holders_.emplace(key, me);
      return Status::ok();
    }
    if (it->second == me) {
      return Status::error(StatusCode::kReentrant,
                           "creation lock requested by the thread that holds it");
    }
    if (!wait) return Status::error(StatusCode::kBusy, "creation lock held");
    if (deadline != std::chrono::steady_clock::time_point::max()) {
      if (released_.wait_until(lock, deadline) == std::cv_status::timeout &&
          holders_.contains(key)) {
        return Status::error(StatusCode::kTimedOut, "creation lock wait timed out");
      }
    } else {
      released_.wait(lock);
    }
  }
}

void KeyedMutexTable::release(const std::string& key) noexcept {
  {
    std::lock_guard lock(mu_);
    holders_.erase(key);
  }
  released_.notify_all();
}

void KeyedMutexTable::set_holder(const std::string& key, std::thread::id thread) noexcept {
  std::lock_guard lock(mu_);
  const auto it = holders_.find(key);
  if (it != holders_.end()) it->second = thread;
}

bool KeyedMutexTable::is_held(const std::string& key) {
  std::lock_guard lock(mu_);
  return holders_.contains(key);
}

}  // namespace dogpile::internal
