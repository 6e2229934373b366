#include "dogpile/memory_backend.h"

#include "keyed_mutex.h"

#include <pthread.h>

#include <mutex>
#include <new>
#include <shared_mutex>
#include <unordered_map>
#include <unordered_set>

namespace dogpile {
namespace {

// Transparent hashing so lookups by string_view allocate nothing.
struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};

class MemoryBackend;

// fork() while another thread writes would leave the child a table half
// changed, under a lock that no thread of the child can release (rule F1).
// So every memory backend of the process is locked around fork(): the
// child gets each table whole and its lock free, and keeps the entries, as
// a fork()ed copy of a dict would. Lock order: the registry, then each
// backend's lock; an operation of a backend takes only its own.
class ForkRegistry {
 public:
  static ForkRegistry& instance() {
    static ForkRegistry* registry = new ForkRegistry;  // outlives every backend
    return *registry;
  }
  void add(MemoryBackend* backend) {
    std::lock_guard lock(mutex_);
    live_.insert(backend);
  }
  void remove(MemoryBackend* backend) {
    std::lock_guard lock(mutex_);
    live_.erase(backend);
  }

 private:
  ForkRegistry() { ::pthread_atfork(&prepare, &in_parent, &in_child); }
  static void prepare() noexcept;
  static void in_parent() noexcept;
  static void in_child() noexcept;

  std::mutex mutex_;
  std::unordered_set<MemoryBackend*> live_;
};

class MemoryBackend final : public Backend {
 public:
  MemoryBackend() { ForkRegistry::instance().add(this); }
  ~MemoryBackend() override { ForkRegistry::instance().remove(this); }
  MemoryBackend(const MemoryBackend&) = delete;
  MemoryBackend& operator=(const MemoryBackend&) = delete;

  Status get(std::string_view key, std::optional<std::string>& value) override {
    std::shared_lock lock(mutex_);
    const auto it = entries_.find(key);
    if (it == entries_.end()) {
      value.reset();
    } else {
      value = it->second;
    }
    return Status::ok();
  }

  Status set(std::string_view key, std::string_view value) override {
    // Copy outside the lock; only the swap into the map is under it.
    std::string copy(value);
    std::unique_lock lock(mutex_);
    const auto it = entries_.find(key);
    if (it == entries_.end()) {
      entries_.emplace(std::string(key), std::move(copy));
    } else {
      it->second = std::move(copy);
    }
    return Status::ok();
  }

  Status erase(std::string_view key) override {
    std::unique_lock lock(mutex_);
    if (const auto it = entries_.find(key); it != entries_.end()) entries_.erase(it);
    return Status::ok();
  }

  // The multi forms take the lock once, so each is atomic to other threads.
  Status get_multi(std::span<const std::string> keys,
                   std::vector<std::optional<std::string>>& values) override {
    values.assign(keys.size(), std::nullopt);
    std::shared_lock lock(mutex_);
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (const auto it = entries_.find(std::string_view(keys[i])); it != entries_.end()) {
        values[i] = it->second;
      }
    }
    return Status::ok();
  }

  Status set_multi(std::span<const KeyValue> items) override {
    std::unique_lock lock(mutex_);
    for (const auto& [key, value] : items) entries_.insert_or_assign(key, value);
    return Status::ok();
  }

  Status erase_multi(std::span<const std::string> keys) override {
    std::unique_lock lock(mutex_);
    for (const std::string& key : keys) entries_.erase(key);
    return Status::ok();
  }

  std::string_view name() const noexcept override { return "memory"; }

  // Creation locks belong to the store, so every region over this backend
  // (not only one Region object) excludes the others.
  std::unique_ptr<CreationMutex> get_mutex(std::string_view key) override {
    return locks_.mutex(std::string(key));
  }

 private:
  friend class ForkRegistry;

  internal::KeyedMutexTable locks_;
  std::shared_mutex mutex_;
  std::unordered_map<std::string, std::string, StringHash, std::equal_to<>> entries_;
};

// Runs in the thread that calls fork(), before it: takes every lock, so no
// other thread is inside a table when the process is copied.
void ForkRegistry::prepare() noexcept {
  ForkRegistry& r = instance();
  r.mutex_.lock();
  for (MemoryBackend* backend : r.live_) backend->mutex_.lock();
}

void ForkRegistry::in_parent() noexcept {
  ForkRegistry& r = instance();
  for (MemoryBackend* backend : r.live_) backend->mutex_.unlock();
  r.mutex_.unlock();
}

// In the child the locks are made anew rather than unlocked: their state
// still counts the parent's waiting threads, and an unlock would hand the
// lock to one of them, a thread the child does not have.
void ForkRegistry::in_child() noexcept {
  ForkRegistry& r = instance();
  for (MemoryBackend* backend : r.live_) new (&backend->mutex_) std::shared_mutex;
  new (&r.mutex_) std::mutex;
}

// Stores nothing: a cache that is turned off.
class NullBackend final : public Backend {
 public:
  Status get(std::string_view, std::optional<std::string>& value) override {
    value.reset();
    return Status::ok();
  }
  Status set(std::string_view, std::string_view) override { return Status::ok(); }
  Status erase(std::string_view) override { return Status::ok(); }
  Status get_multi(std::span<const std::string> keys,
                   std::vector<std::optional<std::string>>& values) override {
    values.assign(keys.size(), std::nullopt);
    return Status::ok();
  }
  Status set_multi(std::span<const KeyValue>) override { return Status::ok(); }
  Status erase_multi(std::span<const std::string>) override { return Status::ok(); }
  std::string_view name() const noexcept override { return "null"; }
};

}  // namespace

std::unique_ptr<Backend> make_memory_backend() { return std::make_unique<MemoryBackend>(); }

std::unique_ptr<Backend> make_null_backend() { return std::make_unique<NullBackend>(); }

}  // namespace dogpile
