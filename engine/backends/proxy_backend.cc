#include "dogpile/proxy_backend.h"

#include <algorithm>
#include <map>
#include <utility>

#include "dogpile/error.h"
#include "dogpile/memory_tier.h"
#include "dogpile/stats_proxy.h"

namespace dogpile {
namespace {

[[noreturn]] void throw_config_error(std::string message) {
  throw ConfigError(Status::error(StatusCode::kInvalidArgument, std::move(message)));
}

std::string_view trim(std::string_view s) {
  const auto space = [](char c) { return c == ' ' || c == '\t'; };
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return s;
}

// The proxies wrap_from_config knows; sorted, for messages.
constexpr std::string_view kProxyNames[] = {"memory_tier", "stats"};

bool is_proxy_name(std::string_view name) {
  return std::find(std::begin(kProxyNames), std::end(kProxyNames), name) != std::end(kProxyNames);
}

std::string known_proxies() {
  std::string out;
  for (std::string_view name : kProxyNames) (out += out.empty() ? "" : ", ") += name;
  return out;
}

}  // namespace

ProxyBackend::ProxyBackend(std::shared_ptr<Backend> inner) : inner_(std::move(inner)) {
  if (!inner_) throw_config_error("a proxy backend needs an inner backend, got null");
}

Status ProxyBackend::get(std::string_view key, std::optional<std::string>& value) {
  return inner_->get(key, value);
}

Status ProxyBackend::set(std::string_view key, std::string_view value) {
  return inner_->set(key, value);
}

Status ProxyBackend::erase(std::string_view key) { return inner_->erase(key); }

Status ProxyBackend::get_multi(std::span<const std::string> keys,
                               std::vector<std::optional<std::string>>& values) {
  return inner_->get_multi(keys, values);
}

Status ProxyBackend::set_multi(std::span<const KeyValue> items) { return inner_->set_multi(items); }

Status ProxyBackend::erase_multi(std::span<const std::string> keys) {
  return inner_->erase_multi(keys);
}

std::unique_ptr<CreationMutex> ProxyBackend::get_mutex(std::string_view key) {
  return inner_->get_mutex(key);
}

void ProxyBackend::add_usage(const UsageCounters& delta) noexcept { inner_->add_usage(delta); }

void ProxyBackend::note_expiration(std::optional<std::chrono::nanoseconds> expiration) noexcept {
  inner_->note_expiration(expiration);
}

std::string_view ProxyBackend::name() const noexcept { return inner_->name(); }

std::shared_ptr<InvalidationStrategy> ProxyBackend::invalidation_strategy() {
  return inner_->invalidation_strategy();
}

std::shared_ptr<Backend> wrap(std::shared_ptr<Backend> backend, std::vector<ProxyFactory> proxies) {
  if (!backend) throw_config_error("wrap: the backend to wrap is null");
  // The last proxy is innermost, so it wraps the backend first.
  for (auto it = proxies.rbegin(); it != proxies.rend(); ++it) {
    if (!*it) throw_config_error("wrap: a proxy factory is empty");
    backend = (*it)(std::move(backend));
    if (!backend) throw_config_error("wrap: a proxy factory returned null");
  }
  return backend;
}

std::shared_ptr<Backend> wrap_from_config(std::shared_ptr<Backend> backend, const ConfigMap& config,
                                          std::string_view prefix) {
  const std::string list_key = std::string(prefix) + "wrap";
  const std::string options_prefix = list_key + ".";

  std::vector<std::string> names;
  if (const auto it = config.find(list_key); it != config.end()) {
    // An empty list is no proxies; an empty item is an unknown proxy.
    const std::string_view list = trim(it->second);
    for (std::size_t start = 0; !list.empty();) {
      const std::size_t comma = list.find(',', start);
      const std::string_view name = trim(list.substr(start, comma - start));
      if (!is_proxy_name(name)) {
        throw_config_error("config key '" + list_key + "': unknown proxy '" + std::string(name) +
                           "'; known proxies: " + known_proxies());
      }
      names.emplace_back(name);
      if (comma == std::string_view::npos) break;
      start = comma + 1;
    }
  }

  // Every `<prefix>wrap.<proxy>.<option>` must belong to a listed proxy.
  std::map<std::string, ConfigMap, std::less<>> options;
  for (const auto& [key, value] : config_with_prefix(config, options_prefix)) {
    const std::size_t dot = key.find('.');
    const std::string name = key.substr(0, dot);
    if (dot == std::string::npos || !is_proxy_name(name)) {
      throw_config_error("config key '" + options_prefix + key + "' is not '" + options_prefix +
                         "<proxy>.<option>' with a proxy of: " + known_proxies());
    }
    if (std::find(names.begin(), names.end(), name) == names.end()) {
      throw_config_error("config key '" + options_prefix + key + "' configures proxy '" + name +
                         "', which '" + list_key + "' does not list");
    }
    options[name].emplace(key.substr(dot + 1), value);
  }

  // Parse every option before building anything, so nothing is half-built.
  std::vector<ProxyFactory> factories;
  for (const std::string& name : names) {
    const ConfigMap& arguments = options[name];
    const auto fail = [&](const Status& s) {
      throw_config_error(s.message() + " (config keys '" + options_prefix + name + ".*')");
    };
    if (name == "stats") {
      if (Status s = ConfigReader(arguments, "stats proxy").finish(); !s) fail(s);
      factories.push_back(proxy<StatsProxy>());
    } else {
      MemoryTierOptions tier;
      if (Status s = memory_tier_options_from_config(arguments, tier); !s) fail(s);
      factories.push_back(proxy<MemoryTier>(std::move(tier)));
    }
  }
  return wrap(std::move(backend), std::move(factories));
}

}  // namespace dogpile
