#include "dogpile/stats_proxy.h"

#include <chrono>
#include <utility>

namespace dogpile {
namespace {

using SteadyClock = std::chrono::steady_clock;

std::uint64_t elapsed_ns(SteadyClock::time_point start) noexcept {
  const auto ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(SteadyClock::now() - start).count();
  return ns > 0 ? static_cast<std::uint64_t>(ns) : 0;
}

void add(std::atomic<std::uint64_t>& counter, std::uint64_t n) noexcept {
  counter.fetch_add(n, std::memory_order_relaxed);
}

std::uint64_t load(const std::atomic<std::uint64_t>& counter) noexcept {
  return counter.load(std::memory_order_relaxed);
}

}  // namespace

void StatsProxy::Latency::record(std::uint64_t ns) noexcept {
  add(calls, 1);
  add(total_ns, ns);
  std::uint64_t seen = max_ns.load(std::memory_order_relaxed);
  while (ns > seen && !max_ns.compare_exchange_weak(seen, ns, std::memory_order_relaxed)) {
  }
}

LatencyStats StatsProxy::Latency::load() const noexcept {
  return {dogpile::load(calls), dogpile::load(total_ns), dogpile::load(max_ns)};
}

void StatsProxy::Latency::clear() noexcept {
  calls.store(0, std::memory_order_relaxed);
  total_ns.store(0, std::memory_order_relaxed);
  max_ns.store(0, std::memory_order_relaxed);
}

StatsProxy::StatsProxy(std::shared_ptr<Backend> inner) : ProxyBackend(std::move(inner)) {}

Status StatsProxy::get(std::string_view key, std::optional<std::string>& value) {
  const auto start = SteadyClock::now();
  Status s = inner().get(key, value);
  get_latency_.record(elapsed_ns(start));
  add(gets_, 1);
  if (!s) {
    add(errors_, 1);
  } else if (value) {
    add(hits_, 1);
    add(bytes_read_, value->size());
  } else {
    add(misses_, 1);
  }
  return s;
}

Status StatsProxy::set(std::string_view key, std::string_view value) {
  const auto start = SteadyClock::now();
  Status s = inner().set(key, value);
  set_latency_.record(elapsed_ns(start));
  add(sets_, 1);
  add(bytes_written_, value.size());
  if (!s) add(errors_, 1);
  return s;
}

Status StatsProxy::erase(std::string_view key) {
  const auto start = SteadyClock::now();
  Status s = inner().erase(key);
  erase_latency_.record(elapsed_ns(start));
  add(erases_, 1);
  if (!s) add(errors_, 1);
  return s;
}

Status StatsProxy::get_multi(std::span<const std::string> keys,
                             std::vector<std::optional<std::string>>& values) {
  const auto start = SteadyClock::now();
  Status s = inner().get_multi(keys, values);
  get_multi_latency_.record(elapsed_ns(start));
  add(gets_, keys.size());
  if (!s) {
    add(errors_, 1);
    return s;
  }
  std::uint64_t hits = 0, bytes = 0;
  for (const auto& value : values) {
    if (!value) continue;
    ++hits;
    bytes += value->size();
  }
  add(hits_, hits);
  add(misses_, keys.size() - hits);
  add(bytes_read_, bytes);
  return s;
}

Status StatsProxy::set_multi(std::span<const KeyValue> items) {
  const auto start = SteadyClock::now();
  Status s = inner().set_multi(items);
  set_multi_latency_.record(elapsed_ns(start));
  std::uint64_t bytes = 0;
  for (const auto& item : items) bytes += item.second.size();
  add(sets_, items.size());
  add(bytes_written_, bytes);
  if (!s) add(errors_, 1);
  return s;
}

Status StatsProxy::erase_multi(std::span<const std::string> keys) {
  const auto start = SteadyClock::now();
  Status s = inner().erase_multi(keys);
  erase_multi_latency_.record(elapsed_ns(start));
  add(erases_, keys.size());
  if (!s) add(errors_, 1);
  return s;
}

BackendStats StatsProxy::snapshot() const noexcept {
  BackendStats out;
  out.gets = load(gets_);
  out.hits = load(hits_);
  out.misses = load(misses_);
  out.sets = load(sets_);
  out.erases = load(erases_);
  out.bytes_read = load(bytes_read_);
  out.bytes_written = load(bytes_written_);
  out.errors = load(errors_);
  out.latency.get = get_latency_.load();
  out.latency.set = set_latency_.load();
  out.latency.erase = erase_latency_.load();
  out.latency.get_multi = get_multi_latency_.load();
  out.latency.set_multi = set_multi_latency_.load();
  out.latency.erase_multi = erase_multi_latency_.load();
  return out;
}

void StatsProxy::reset() noexcept {
  for (auto* counter : {&gets_, &hits_, &misses_, &sets_, &erases_, &bytes_read_,
                        &bytes_written_, &errors_}) {
    counter->store(0, std::memory_order_relaxed);
  }
  for (auto* latency : {&get_latency_, &set_latency_, &erase_latency_, &get_multi_latency_,
                        &set_multi_latency_, &erase_multi_latency_}) {
    latency->clear();
  }
}

}  // namespace dogpile
