#include "dogpile/memory_tier.h"

#include <functional>
#include <utility>

#include "dogpile/error.h"

namespace dogpile {
namespace {

Status check_options(const MemoryTierOptions& options) {
  const auto bad = [](std::string_view option) {
    return Status::error(StatusCode::kInvalidArgument,
                         "memory tier option '" + std::string(option) + "': must be above 0");
  };
  if (options.max_age <= Duration::zero()) return bad("max_age");
  if (options.max_entries == 0) return bad("max_entries");
  if (options.max_bytes == 0) return bad("max_bytes");
  return Status::ok();
}

MemoryTierOptions checked(MemoryTierOptions options) {
  throw_if_error(check_options(options));
  if (!options.now) options.now = [] { return std::chrono::steady_clock::now(); };
  return options;
}

}  // namespace

Status memory_tier_options_from_config(const ConfigMap& arguments, MemoryTierOptions& out) {
  MemoryTierOptions options = out;
  ConfigReader reader(arguments, "memory tier");
  if (auto v = reader.duration("max_age")) options.max_age = *v;
  if (auto v = reader.unsigned_integer("max_entries")) options.max_entries = *v;
  if (auto v = reader.size("max_bytes")) options.max_bytes = *v;
  if (Status s = reader.finish(); !s) return s;
  if (Status s = check_options(options); !s) return s;
  out = std::move(options);
  return Status::ok();
}

// The inner creation lock; every attempt to take it drops the tier's copy,
// since the region re-reads the key next and must reach the store.
class MemoryTier::ForgettingMutex final : public CreationMutex {
 public:
  ForgettingMutex(std::unique_ptr<CreationMutex> inner, MemoryTier& tier, std::string key)
      : inner_(std::move(inner)), tier_(tier), key_(std::move(key)) {}

  Status try_lock() override {
    Status s = inner_->try_lock();
    tier_.forget(key_);
    return s;
  }
  Status lock(Timeout timeout) override {
    Status s = inner_->lock(timeout);
    tier_.forget(key_);
    return s;
  }
  void unlock() noexcept override { inner_->unlock(); }
  bool is_locked_anywhere() override { return inner_->is_locked_anywhere(); }

 private:
  std::unique_ptr<CreationMutex> inner_;
  MemoryTier& tier_;
  std::string key_;
};

MemoryTier::MemoryTier(std::shared_ptr<Backend> inner, MemoryTierOptions options)
    : ProxyBackend(std::move(inner)), options_(checked(std::move(options))) {}

std::size_t MemoryTier::stripe_of(std::string_view key) noexcept {
  return std::hash<std::string_view>{}(key) % kStripes;
}

std::shared_ptr<const std::string> MemoryTier::copy_if_fits(std::string_view key,
                                                            std::string_view value) const {
  if (key.size() + value.size() > options_.max_bytes) return nullptr;
  return std::make_shared<const std::string>(value);
}

const MemoryTier::Copy* MemoryTier::find_fresh(std::string_view key, SteadyTime now) {
  const auto it = index_.find(key);
  if (it == index_.end() || now - it->second->fetched_at >= options_.max_age) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second);
  return &*it->second;
}

MemoryTier::ReadTicket MemoryTier::ticket(std::string_view key) const {
  const Stripe& stripe = stripes_[stripe_of(key)];
  return {stripe.sequence, stripe.writers == 0};
}

bool MemoryTier::still_quiet(std::string_view key, const ReadTicket& ticket) const {
  // Every write start bumps the sequence, so an unchanged one means no write
  // started since; `quiet` says none was running before.
  return ticket.quiet && stripes_[stripe_of(key)].sequence == ticket.sequence;
}

void MemoryTier::install(std::string_view key, std::shared_ptr<const std::string> value,
                         SteadyTime at) {
  const std::uint64_t charge = key.size() + value->size();
  if (const auto it = index_.find(key); it != index_.end()) {
    bytes_ -= it->second->key.size() + it->second->value->size();
    it->second->value = std::move(value);
    it->second->fetched_at = at;
    lru_.splice(lru_.begin(), lru_, it->second);
  } else {
    lru_.push_front(Copy{std::string(key), std::move(value), at});
    index_.emplace(lru_.front().key, lru_.begin());
  }
  bytes_ += charge;
  // copy_if_fits keeps the new copy within max_bytes alone, and max_entries
  // is at least 1, so the loop never evicts it.
  while (lru_.size() > options_.max_entries || bytes_ > options_.max_bytes) {
    drop(lru_.back().key);
  }
}

void MemoryTier::drop(std::string_view key) {
  const auto it = index_.find(key);
  if (it == index_.end()) return;
  const Lru::iterator copy = it->second;
  bytes_ -= copy->key.size() + copy->value->size();
  index_.erase(it);  // before the list node its key points into
  lru_.erase(copy);
}

void MemoryTier::forget(std::string_view key) {
  std::lock_guard lock(mutex_);
  drop(key);
  ++stripes_[stripe_of(key)].sequence;
}

std::vector<std::uint64_t> MemoryTier::start_writes(std::span<const std::string_view> keys) {
  std::lock_guard lock(mutex_);
  for (std::string_view key : keys) {
    drop(key);
    Stripe& stripe = stripes_[stripe_of(key)];
    ++stripe.sequence;
    ++stripe.writers;
  }
  std::vector<std::uint64_t> sequences;
  sequences.reserve(keys.size());
  for (std::string_view key : keys) sequences.push_back(stripes_[stripe_of(key)].sequence);
  return sequences;
}

void MemoryTier::finish_writes(std::span<const std::string_view> keys,
                               std::span<const std::uint64_t> sequences,
                               std::span<std::shared_ptr<const std::string>> copies,
                               bool succeeded, SteadyTime started) {
  std::lock_guard lock(mutex_);
  for (std::string_view key : keys) --stripes_[stripe_of(key)].writers;
  if (!succeeded) return;
  // In order, so of a key written twice in one batch the last value stays,
  // as in the store.
  for (std::size_t i = 0; i < copies.size(); ++i) {
    const Stripe& stripe = stripes_[stripe_of(keys[i])];
    if (copies[i] && stripe.writers == 0 && stripe.sequence == sequences[i]) {
      install(keys[i], std::move(copies[i]), started);
    }
  }
}

Status MemoryTier::get(std::string_view key, std::optional<std::string>& value) {
  std::shared_ptr<const std::string> hit;
  ReadTicket read;
  SteadyTime started;
  {
    std::lock_guard lock(mutex_);
    started = options_.now();
    if (const Copy* copy = find_fresh(key, started)) {
      hit = copy->value;
    } else {
      read = ticket(key);
    }
  }
  if (hit) {
    value = *hit;
    return Status::ok();
  }
  Status s = inner().get(key, value);
  if (!s) return s;
  std::shared_ptr<const std::string> copy = value ? copy_if_fits(key, *value) : nullptr;
  std::lock_guard lock(mutex_);
  if (!copy) {
    drop(key);  // gone from the store, or too large to keep
  } else if (still_quiet(key, read)) {
    install(key, std::move(copy), started);
  }
  return s;
}

Status MemoryTier::get_multi(std::span<const std::string> keys,
                             std::vector<std::optional<std::string>>& values) {
  values.assign(keys.size(), std::nullopt);
  std::vector<std::shared_ptr<const std::string>> hits(keys.size());
  std::vector<std::size_t> missing;  // indexes into keys
  std::vector<ReadTicket> reads;
  SteadyTime started;
  {
    std::lock_guard lock(mutex_);
    started = options_.now();
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (const Copy* copy = find_fresh(keys[i], started)) {
        hits[i] = copy->value;
      } else {
        missing.push_back(i);
        reads.push_back(ticket(keys[i]));
      }
    }
  }
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (hits[i]) values[i] = *hits[i];
  }
  if (missing.empty()) return Status::ok();

  // One inner multi call for the keys the tier could not serve.
  std::vector<std::string> subset;
  if (missing.size() < keys.size()) {
    subset.reserve(missing.size());
    for (std::size_t i : missing) subset.push_back(keys[i]);
  }
  const std::span<const std::string> to_read =
      missing.size() < keys.size() ? std::span<const std::string>(subset) : keys;
  std::vector<std::optional<std::string>> read;
  Status s = inner().get_multi(to_read, read);
  if (!s) return s;

  std::vector<std::shared_ptr<const std::string>> copies(missing.size());
  for (std::size_t j = 0; j < missing.size(); ++j) {
    if (read[j]) copies[j] = copy_if_fits(to_read[j], *read[j]);
  }
  {
    std::lock_guard lock(mutex_);
    for (std::size_t j = 0; j < missing.size(); ++j) {
      if (!copies[j]) {
        drop(to_read[j]);
      } else if (still_quiet(to_read[j], reads[j])) {
        install(to_read[j], std::move(copies[j]), started);
      }
    }
  }
  for (std::size_t j = 0; j < missing.size(); ++j) values[missing[j]] = std::move(read[j]);
  return s;
}

Status MemoryTier::set(std::string_view key, std::string_view value) {
  const SteadyTime started = options_.now();
  const std::string_view keys[] = {key};
  const std::vector<std::uint64_t> sequences = start_writes(keys);
  const Status s = inner().set(key, value);
  std::shared_ptr<const std::string> copies[] = {s ? copy_if_fits(key, value) : nullptr};
  finish_writes(keys, sequences, copies, s.is_ok(), started);
  return s;
}

Status MemoryTier::erase(std::string_view key) {
  const std::string_view keys[] = {key};
  const std::vector<std::uint64_t> sequences = start_writes(keys);
  const Status s = inner().erase(key);
  finish_writes(keys, sequences, {}, s.is_ok(), SteadyTime());
  return s;
}

Status MemoryTier::set_multi(std::span<const KeyValue> items) {
  const SteadyTime started = options_.now();
  std::vector<std::string_view> keys;
  keys.reserve(items.size());
  for (const auto& item : items) keys.push_back(item.first);
  const std::vector<std::uint64_t> sequences = start_writes(keys);
  const Status s = inner().set_multi(items);
  std::vector<std::shared_ptr<const std::string>> copies(items.size());
  if (s) {
    for (std::size_t i = 0; i < items.size(); ++i) {
      copies[i] = copy_if_fits(items[i].first, items[i].second);
    }
  }
  finish_writes(keys, sequences, copies, s.is_ok(), started);
  return s;
}

Status MemoryTier::erase_multi(std::span<const std::string> keys) {
  const std::vector<std::string_view> views(keys.begin(), keys.end());
  const std::vector<std::uint64_t> sequences = start_writes(views);
  const Status s = inner().erase_multi(keys);
  finish_writes(views, sequences, {}, s.is_ok(), SteadyTime());
  return s;
}

std::unique_ptr<CreationMutex> MemoryTier::get_mutex(std::string_view key) {
  std::unique_ptr<CreationMutex> mutex = inner().get_mutex(key);
  if (!mutex) return nullptr;
  return std::make_unique<ForgettingMutex>(std::move(mutex), *this, std::string(key));
}

std::size_t MemoryTier::size() const {
  std::lock_guard lock(mutex_);
  return lru_.size();
}

std::uint64_t MemoryTier::bytes() const {
  std::lock_guard lock(mutex_);
  return bytes_;
}

}  // namespace dogpile
