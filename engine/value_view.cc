#include "dogpile/value_view.h"

#include <cereal/types/map.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>
#include <charconv>
#include <cstdio>
#include <map>
#include <type_traits>

#include "dogpile/codec.h"
#include "dogpile/command_cache.h"

namespace dogpile {
namespace {

// A shell-like rendering of argv: words that need it in single quotes.
std::string command_line(const std::vector<std::string>& argv) {
  std::string out;
  for (const std::string& arg : argv) {
    if (!out.empty()) out += ' ';
    const bool plain = !arg.empty() && arg.find_first_not_of(
                                           "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                           "0123456789-_./:=+,@%") == std::string::npos;
    if (plain) {
      out += arg;
      continue;
    }
    out += '\'';
    for (const char c : arg) {
      if (c == '\'') {
        out += "'\\''";
      } else {
        out += c;
      }
    }
    out += '\'';
  }
  return out;
}

std::string exit_text(const CommandResult& r) {
  if (r.signal != 0) return "killed by signal " + std::to_string(r.signal);
  return "exit " + std::to_string(r.exit_code);
}

std::string number_text(double d) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", d);
  return buf;
}

template <class T>
std::string text_of(const T& v) {
  if constexpr (std::is_same_v<T, bool>) {
    return v ? "true" : "false";
  } else if constexpr (std::is_same_v<T, double>) {
    return number_text(v);
  } else if constexpr (std::is_arithmetic_v<T>) {
    return std::to_string(v);
  } else if constexpr (std::is_same_v<T, std::string>) {
    return v;
  } else if constexpr (std::is_same_v<T, std::vector<std::uint8_t>>) {
    return std::string(v.begin(), v.end());
  } else if constexpr (std::is_same_v<T, StringMap>) {
    std::string out;
    for (const auto& [key, value] : v) out += key + "=" + value + "\n";
    return out;
  } else {
    std::string out;
    for (const auto& item : v) out += text_of(item) + "\n";
    return out;
  }
}

// Fills `view` from a payload of T; false when it does not decode.
template <class T>
bool view_as(const EnvelopeMeta& meta, std::string_view payload, ValueView& view) {
  T value{};
  if (meta.schema_version != schema_version<T>() ||
      !decode_payload<T>(meta.codec, payload, value)) {
    return false;
  }
  if constexpr (std::is_same_v<T, CommandResult>) {
    const std::string line = command_line(value.argv);
    view.summary = line + (value.cwd.empty() ? "" : "  (in " + value.cwd + ")") + "  " +
                   exit_text(value);
    view.fields = {{"command", line}, {"directory", value.cwd}, {"status", exit_text(value)}};
    view.parts = {{"stdout", std::move(value.out)}, {"stderr", std::move(value.err)}};
  } else {
    view.parts = {{"value", text_of(value)}};
  }
  return true;
}

struct KnownType {
  std::string_view name;
  std::uint64_t tag;
  bool (*view)(const EnvelopeMeta&, std::string_view, ValueView&);
};

template <class T>
KnownType known() {
  return {TypeInfo<T>::name, type_tag<T>(), &view_as<T>};
}

const std::vector<KnownType>& known_types() {
  static const std::vector<KnownType> types = {
      known<std::string>(),          known<std::vector<std::uint8_t>>(),
      known<bool>(),                 known<std::int32_t>(),
      known<std::int64_t>(),         known<std::uint32_t>(),
      known<std::uint64_t>(),        known<double>(),
      known<std::vector<std::string>>(), known<std::vector<std::int64_t>>(),
      known<StringMap>(),            known<CommandResult>()};
  return types;
}

const KnownType* find_known(std::uint64_t tag) noexcept {
  for (const KnownType& t : known_types()) {
    if (t.tag == tag) return &t;
  }
  return nullptr;
}

}  // namespace

std::string_view known_type_name(std::uint64_t type_tag) noexcept {
  const KnownType* t = find_known(type_tag);
  return t != nullptr ? t->name : std::string_view();
}

bool has_summary(std::uint64_t type_tag) noexcept {
  return type_tag == dogpile::type_tag<CommandResult>();
}

ValueView view_value(const EnvelopeMeta& meta, std::string_view payload) {
  ValueView view;
  const KnownType* t = find_known(meta.type_tag);
  if (t == nullptr) return view;
  view.type_name = std::string(t->name);
  view.decoded = t->view(meta, payload, view);
  return view;
}

}  // namespace dogpile
