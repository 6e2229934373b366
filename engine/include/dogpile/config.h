// Config: string-map configuration, as dogpile.cache's from_config_dict.
//
// Backends and regions can be built from a flat map of strings, e.g.
// {"cache.backend": "lmdb", "cache.arguments.path": "/var/cache/app"}.
// ConfigReader consumes the keys a component understands, parses durations
// ("250ms", "10s", "5m", "2h", "1d") and sizes ("4096", "64KiB", "2GiB",
// "1MB"), and reports any key left over, so a misspelt option fails loudly at
// construction with a message naming it.
//
// Thread safety: ConfigReader is not thread-safe; parse_* functions are.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>

#include "dogpile/status.h"

namespace dogpile {

using ConfigMap = std::map<std::string, std::string, std::less<>>;
using Duration = std::chrono::nanoseconds;

// Parse a duration as people type it: "<number><unit>", or several summed
// ("1h30m", "2d 12h"). Units: ns, us, ms, s, m (or min), h, d, w, and their
// long names (sec, seconds, minutes, hours, days, weeks...); a bare number on
// its own is seconds. Fails with kInvalidArgument quoting the text.
Status parse_duration(std::string_view text, Duration& out);
// Parse "<number>[unit]" with unit B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB,
// TiB (powers of 1024); a bare number is bytes.
Status parse_size(std::string_view text, std::uint64_t& out);
// "true/false/yes/no/on/off/1/0".
Status parse_bool(std::string_view text, bool& out);

// The entries of `config` whose key starts with `prefix`, with the prefix removed.
ConfigMap config_with_prefix(const ConfigMap& config, std::string_view prefix);

class ConfigReader {
 public:
  // `what` names the component in messages, e.g. "lmdb backend".
  ConfigReader(const ConfigMap& config, std::string what);

  std::optional<std::string> string(std::string_view key);
  std::optional<Duration> duration(std::string_view key);
  std::optional<std::uint64_t> size(std::string_view key);
  std::optional<std::uint64_t> unsigned_integer(std::string_view key);
  std::optional<bool> boolean(std::string_view key);

  // OK when every value parsed and every key was read; otherwise an
  // kInvalidArgument Status naming the first bad or unknown key.
  Status finish() const;

 private:
  const std::string* take(std::string_view key);
  void fail(std::string_view key, const Status& why);

  const ConfigMap& config_;
  std::string what_;
  std::set<std::string, std::less<>> seen_;
  Status first_error_;
};

}  // namespace dogpile
