// Backend calls that must succeed, for the backend test suites: each
// REQUIREs an OK Status and reports it when it is not.
#pragma once

#include <catch2/catch.hpp>

#include <optional>
#include <string>
#include <string_view>

#include "dogpile/backend.h"

namespace dogpile::test {

// The slot starts engaged, so a miss also shows that get cleared it.
inline std::optional<std::string> get(Backend& b, std::string_view key) {
  std::optional<std::string> value = std::string("not written by get");
  const Status s = b.get(key, value);
  INFO(s.to_string());
  REQUIRE(s.is_ok());
  return value;
}

inline void set(Backend& b, std::string_view key, std::string_view value) {
  const Status s = b.set(key, value);
  INFO(s.to_string());
  REQUIRE(s.is_ok());
}

inline void erase(Backend& b, std::string_view key) {
  const Status s = b.erase(key);
  INFO(s.to_string());
  REQUIRE(s.is_ok());
}

}  // namespace dogpile::test
