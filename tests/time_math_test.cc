// Saturating time arithmetic (engine/time_math.h): every edge of the range.
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>

#include "time_math.h"

using namespace dogpile::internal;
using namespace std::chrono_literals;

TEST_CASE("saturating_add and saturating_sub clamp instead of wrapping", "[time]") {
  CHECK(saturating_add(std::int64_t{1}, std::int64_t{2}) == 3);
  CHECK(saturating_add(kMaxNs, std::int64_t{1}) == kMaxNs);
  CHECK(saturating_add(kMaxNs, kMaxNs) == kMaxNs);
  CHECK(saturating_add(kMinNs, std::int64_t{-1}) == kMinNs);
  CHECK(saturating_add(kMinNs, kMaxNs) == -1);
  CHECK(saturating_sub(std::int64_t{5}, std::int64_t{7}) == -2);
  CHECK(saturating_sub(kMaxNs, std::int64_t{-1}) == kMaxNs);
  CHECK(saturating_sub(kMinNs, std::int64_t{1}) == kMinNs);
  CHECK(saturating_sub(std::int64_t{0}, kMinNs) == kMaxNs);
  CHECK(saturating_sub(std::int64_t{-1}, kMaxNs) == kMinNs);
  CHECK(saturating_add(std::chrono::nanoseconds::max(), 1ns) == std::chrono::nanoseconds::max());
  CHECK(saturating_add(std::chrono::hours(24) * 106751, std::chrono::hours(24) * 106751) ==
        std::chrono::nanoseconds::max());
  CHECK(saturating_add(1ns, -2ns) == -1ns);
}

TEST_CASE("nanoseconds_of refuses what does not fit and rounds the rest", "[time]") {
  CHECK(nanoseconds_of(0, 1e9) == 0ns);
  CHECK(nanoseconds_of(1, 1) == 1ns);
  CHECK(nanoseconds_of(0.4, 1) == 0ns);
  CHECK(nanoseconds_of(0.5, 1) == 1ns);
  CHECK(nanoseconds_of(1.5, 3600e9) == 90min);
  CHECK(nanoseconds_of(9223372036854774784.0, 1) == std::chrono::nanoseconds(9223372036854774784));
  CHECK_FALSE(nanoseconds_of(9223372036854775808.0, 1));  // 2^63
  CHECK_FALSE(nanoseconds_of(106752, 86400e9));
  CHECK_FALSE(nanoseconds_of(1e300, 1e300));  // inf
  CHECK_FALSE(nanoseconds_of(-1, 1));
  CHECK_FALSE(nanoseconds_of(std::nan(""), 1));
}

TEST_CASE("steady_deadline is now, later, or the end of time", "[time]") {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point before = Clock::now();
  CHECK(steady_deadline(Clock::duration::max()) == Clock::time_point::max());
  CHECK(steady_deadline(Clock::duration::max() - 1ns) == Clock::time_point::max());
  const Clock::time_point zero = steady_deadline(0ns);
  CHECK(zero >= before);
  CHECK(zero <= Clock::now());
  const Clock::time_point negative = steady_deadline(Clock::duration::min());
  CHECK(negative >= before);
  CHECK(negative <= Clock::now());
  const Clock::time_point soon = steady_deadline(1h);
  CHECK(soon >= before + 1h);
  CHECK(soon <= Clock::now() + 1h);
}
