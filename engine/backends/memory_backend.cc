#include "dogpile/memory_backend.h"

#include "keyed_mutex.h"

#include <mutex>
#include <shared_mutex>
#include <unordered_map>

namespace dogpile {
namespace {

// Transparent hashing so lookups by string_view allocate nothing.
struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};

class MemoryBackend final : public Backend {
 public:
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
  internal::KeyedMutexTable locks_;
  std::shared_mutex mutex_;
  std::unordered_map<std::string, std::string, StringHash, std::equal_to<>> entries_;
};

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
