#include "dogpile/config.h"

#include <cctype>
#include <charconv>
#include <cmath>
#include <limits>
#include <optional>

#include "time_math.h"

namespace dogpile {
namespace {

Status bad_value(std::string_view what, std::string_view text, std::string_view expected) {
  return Status::error(StatusCode::kInvalidArgument, "bad " + std::string(what) + " '" +
                                                         std::string(text) + "': expected " +
                                                         std::string(expected));
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// Splits "12.5ms" into 12.5 and "ms". The number must be finite and >= 0.
bool split_number(std::string_view text, double& number, std::string_view& unit) {
  text = trim(text);
  std::size_t end = 0;
  while (end < text.size() &&
         (std::isdigit(static_cast<unsigned char>(text[end])) || text[end] == '.')) {
    ++end;
  }
  if (end == 0) return false;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + end, number);
  if (ec != std::errc() || ptr != text.data() + end || !std::isfinite(number)) return false;
  unit = trim(text.substr(end));
  return true;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

}  // namespace

Status parse_duration(std::string_view text, Duration& out) {
  constexpr std::string_view kExpected =
      "a number with a unit (ns, us, ms, s, m, h, d, w) or several, as in 90s, 1h30m, 2d 12h";
  struct Unit {
    std::string_view name;
    double ns;
  };
  // The names people type for each unit, longest first where one is a prefix
  // of another, so "ms" is never read as "m" followed by "s".
  static constexpr Unit kUnits[] = {
      {"nanoseconds", 1},  {"nanosecond", 1}, {"nsec", 1},       {"ns", 1},
      {"microseconds", 1e3}, {"microsecond", 1e3}, {"usec", 1e3}, {"us", 1e3},
      {"milliseconds", 1e6}, {"millisecond", 1e6}, {"msec", 1e6}, {"ms", 1e6},
      {"seconds", 1e9},    {"second", 1e9},   {"secs", 1e9},     {"sec", 1e9},
      {"s", 1e9},          {"minutes", 60e9}, {"minute", 60e9},  {"mins", 60e9},
      {"min", 60e9},       {"m", 60e9},       {"hours", 3600e9}, {"hour", 3600e9},
      {"hrs", 3600e9},     {"hr", 3600e9},    {"h", 3600e9},     {"days", 86400e9},
      {"day", 86400e9},    {"d", 86400e9},    {"weeks", 604800e9}, {"week", 604800e9},
      {"w", 604800e9}};
  const auto fail = [&](std::string_view expected) { return bad_value("duration", text, expected); };

  std::string_view rest = trim(text);
  if (rest.empty()) return fail(kExpected);
  std::int64_t total = 0;
  bool first = true;
  while (!rest.empty()) {
    double number = 0;
    std::string_view after;
    if (!split_number(rest, number, after)) return fail(kExpected);
    // The unit runs to the next digit or space: "1h30m" is 1 h, then 30 m.
    std::size_t unit_end = 0;
    while (unit_end < after.size() &&
           !std::isdigit(static_cast<unsigned char>(after[unit_end])) &&
           !std::isspace(static_cast<unsigned char>(after[unit_end]))) {
      ++unit_end;
    }
    const std::string_view unit = after.substr(0, unit_end);
    rest = trim(after.substr(unit_end));
    double unit_ns = 0;
    if (unit.empty()) {
      // A bare number is seconds, and only on its own: "1h30" is a typo.
      if (!first || !rest.empty()) return fail(kExpected);
      unit_ns = 1e9;
    }
    for (const Unit& u : kUnits) {
      if (unit == u.name) unit_ns = u.ns;
    }
    if (unit_ns == 0) {
      return fail("a unit ns, us, ms, s, m, h, d or w, not '" + std::string(unit) + "'");
    }
    const std::optional<std::chrono::nanoseconds> ns = internal::nanoseconds_of(number, unit_ns);
    if (!ns || __builtin_add_overflow(total, ns->count(), &total)) {
      return fail("a duration below 292 years");
    }
    first = false;
  }
  out = Duration(total);
  return Status::ok();
}

Status parse_size(std::string_view text, std::uint64_t& out) {
  constexpr std::string_view kExpected = "a number with unit B, KB, MB, GB, TB, KiB, MiB, GiB or TiB";
  double number = 0;
  std::string_view unit;
  if (!split_number(text, number, unit)) return bad_value("size", text, kExpected);
  struct Unit {
    std::string_view name;
    double bytes;
  };
  static constexpr Unit kUnits[] = {
      {"", 1},          {"B", 1},        {"KB", 1e3},   {"MB", 1e6},
      {"GB", 1e9},      {"TB", 1e12},    {"KiB", 1024.0}, {"MiB", 1048576.0},
      {"GiB", 1073741824.0}, {"TiB", 1099511627776.0}};
  for (const Unit& u : kUnits) {
    if (iequals(unit, u.name) && (u.name.size() != 3 || unit[1] == 'i')) {
      const double bytes = number * u.bytes;
      if (bytes >= 18446744073709551615.0) return bad_value("size", text, "a size below 16 EiB");
      if (bytes != std::floor(bytes)) return bad_value("size", text, "a whole number of bytes");
      out = static_cast<std::uint64_t>(bytes);
      return Status::ok();
    }
  }
  return bad_value("size", text, kExpected);
}

Status parse_bool(std::string_view text, bool& out) {
  const std::string_view t = trim(text);
  for (std::string_view yes : {"true", "yes", "on", "1"}) {
    if (iequals(t, yes)) return out = true, Status::ok();
  }
  for (std::string_view no : {"false", "no", "off", "0"}) {
    if (iequals(t, no)) return out = false, Status::ok();
  }
  return bad_value("boolean", text, "true/false, yes/no, on/off or 1/0");
}

ConfigMap config_with_prefix(const ConfigMap& config, std::string_view prefix) {
  ConfigMap out;
  for (auto it = config.lower_bound(prefix); it != config.end(); ++it) {
    if (it->first.compare(0, prefix.size(), prefix) != 0) break;
    out.emplace(it->first.substr(prefix.size()), it->second);
  }
  return out;
}

ConfigReader::ConfigReader(const ConfigMap& config, std::string what)
    : config_(config), what_(std::move(what)) {}

const std::string* ConfigReader::take(std::string_view key) {
  seen_.emplace(key);
  const auto it = config_.find(key);
  return it == config_.end() ? nullptr : &it->second;
}

void ConfigReader::fail(std::string_view key, const Status& why) {
  if (!first_error_.is_ok()) return;
  first_error_ = Status::error(StatusCode::kInvalidArgument,
                               what_ + " option '" + std::string(key) + "': " + why.message());
}

std::optional<std::string> ConfigReader::string(std::string_view key) {
  const std::string* v = take(key);
  return v == nullptr ? std::nullopt : std::optional<std::string>(*v);
}

std::optional<Duration> ConfigReader::duration(std::string_view key) {
  const std::string* v = take(key);
  if (v == nullptr) return std::nullopt;
  Duration d{};
  if (Status s = parse_duration(*v, d); !s) return fail(key, s), std::nullopt;
  return d;
}

std::optional<std::uint64_t> ConfigReader::size(std::string_view key) {
  const std::string* v = take(key);
  if (v == nullptr) return std::nullopt;
  std::uint64_t n = 0;
  if (Status s = parse_size(*v, n); !s) return fail(key, s), std::nullopt;
  return n;
}

std::optional<std::uint64_t> ConfigReader::unsigned_integer(std::string_view key) {
  const std::string* v = take(key);
  if (v == nullptr) return std::nullopt;
  const std::string_view t = trim(*v);
  std::uint64_t n = 0;
  const auto [ptr, ec] = std::from_chars(t.data(), t.data() + t.size(), n);
  if (t.empty() || ec != std::errc() || ptr != t.data() + t.size()) {
    return fail(key, bad_value("integer", *v, "a non-negative whole number")), std::nullopt;
  }
  return n;
}

std::optional<bool> ConfigReader::boolean(std::string_view key) {
  const std::string* v = take(key);
  if (v == nullptr) return std::nullopt;
  bool b = false;
  if (Status s = parse_bool(*v, b); !s) return fail(key, s), std::nullopt;
  return b;
}

Status ConfigReader::finish() const {
  if (!first_error_.is_ok()) return first_error_;
  for (const auto& [key, value] : config_) {
    if (!seen_.contains(key)) {
      return Status::error(StatusCode::kInvalidArgument,
                           "unknown " + what_ + " option '" + key + "'");
    }
  }
  return Status::ok();
}

}  // namespace dogpile
