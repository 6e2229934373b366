#include "dogpile/backend.h"

#include <map>
#include <mutex>

#include "backends/lmdb_env.h"
#include "dogpile/error.h"
#include "dogpile/memory_backend.h"

namespace dogpile {

// ---- Backend defaults ----

Status Backend::get_multi(std::span<const std::string> keys,
                          std::vector<std::optional<std::string>>& values) {
  values.assign(keys.size(), std::nullopt);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (Status s = get(keys[i], values[i]); !s) return s;
  }
  return Status::ok();
}

Status Backend::set_multi(std::span<const KeyValue> items) {
  for (const auto& [key, value] : items) {
    if (Status s = set(key, value); !s) return s;
  }
  return Status::ok();
}

Status Backend::erase_multi(std::span<const std::string> keys) {
  for (const std::string& key : keys) {
    if (Status s = erase(key); !s) return s;
  }
  return Status::ok();
}

std::unique_ptr<CreationMutex> Backend::get_mutex(std::string_view) { return nullptr; }

void Backend::add_usage(const UsageCounters&) noexcept {}

void Backend::note_expiration(std::optional<std::chrono::nanoseconds>) noexcept {}

std::shared_ptr<InvalidationStrategy> Backend::invalidation_strategy() {
  return local_invalidation_;
}

// ---- registry ----

namespace {

// A factory for a backend that takes no arguments.
BackendFactory no_arguments(std::string what, std::unique_ptr<Backend> (*make)()) {
  return [what = std::move(what), make](std::string_view, const ConfigMap& arguments,
                                        std::unique_ptr<Backend>& out) {
    ConfigReader reader(arguments, what);
    if (Status s = reader.finish(); !s) return s;  // names the first argument given
    out = make();
    return Status::ok();
  };
}

struct Registry {
  Registry() {
    factories.emplace("memory", no_arguments("memory backend", &make_memory_backend));
    factories.emplace("null", no_arguments("null backend", &make_null_backend));
    factories.emplace("lmdb", &internal::make_lmdb_backend);
  }

  std::mutex mutex;
  std::map<std::string, BackendFactory, std::less<>> factories;
};

Registry& registry() {
  static Registry instance;
  return instance;
}

}  // namespace

void register_backend(std::string name, BackendFactory factory) {
  Registry& r = registry();
  std::lock_guard lock(r.mutex);
  r.factories.insert_or_assign(std::move(name), std::move(factory));
}

std::vector<std::string> backend_names() {
  Registry& r = registry();
  std::lock_guard lock(r.mutex);
  std::vector<std::string> names;
  names.reserve(r.factories.size());
  for (const auto& entry : r.factories) names.push_back(entry.first);
  return names;
}

namespace {

// make_backend; `source` (e.g. "cache.arguments.") is added to argument
// errors so they name the config keys the arguments came from.
std::unique_ptr<Backend> build_backend(std::string_view name, const ConfigMap& arguments,
                                       std::string_view region, std::string_view source) {
  BackendFactory factory;
  {
    Registry& r = registry();
    std::lock_guard lock(r.mutex);
    if (const auto it = r.factories.find(name); it != r.factories.end()) factory = it->second;
  }
  if (!factory) {
    std::string known;
    for (const std::string& n : backend_names()) known += (known.empty() ? "" : ", ") + n;
    throw_if_error(
        Status::error(StatusCode::kInvalidArgument,
                      "unknown backend '" + std::string(name) + "'; known backends: " + known));
  }
  // Called without the registry lock: opening may be slow, and a factory may
  // itself use the registry.
  std::unique_ptr<Backend> out;
  Status status = factory(region, arguments, out);
  if (status.code() == StatusCode::kInvalidArgument && !source.empty()) {
    status = Status::error(status.code(),
                           status.message() + " (config keys '" + std::string(source) + "*')",
                           status.path(), status.sys_errno());
  }
  throw_if_error(status);
  if (!out) {
    throw_if_error(Status::error(StatusCode::kInvalidArgument,
                                 "backend '" + std::string(name) + "' factory made no backend"));
  }
  return out;
}

}  // namespace

std::unique_ptr<Backend> make_backend(std::string_view name, const ConfigMap& arguments,
                                      std::string_view region) {
  return build_backend(name, arguments, region, {});
}

std::unique_ptr<Backend> make_backend_from_config(const ConfigMap& config, std::string_view prefix,
                                                  std::string_view region) {
  const std::string backend_key = std::string(prefix) + "backend";
  const auto it = config.find(backend_key);
  if (it == config.end()) {
    throw_if_error(
        Status::error(StatusCode::kInvalidArgument, "missing config key '" + backend_key + "'"));
  }
  // Only `<prefix>arguments.*` belongs to the backend; other keys under the
  // prefix (expiration_time, ...) are the region's to read and check.
  const std::string arguments_prefix = std::string(prefix) + "arguments.";
  return build_backend(it->second, config_with_prefix(config, arguments_prefix), region,
                       arguments_prefix);
}

}  // namespace dogpile
