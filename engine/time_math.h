// Saturating time arithmetic: sums and differences of nanosecond counts,
// durations and steady-clock deadlines that stop at the ends of their range
// instead of wrapping. Every parsed duration, lock deadline, expiry and
// stored-time comparison goes through these, so a huge value ("as long as
// there is", 2^63 ns, a corrupt stored time) means the farthest time there
// is, never a jump into the past.
//
// Thread safety: pure functions.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>

#include "dogpile/clock.h"

namespace dogpile::internal {

inline constexpr std::int64_t kMaxNs = std::numeric_limits<std::int64_t>::max();
inline constexpr std::int64_t kMinNs = std::numeric_limits<std::int64_t>::min();

// A wall-clock time as nanoseconds since the epoch, the unit of every stored
// time, and back.
inline std::int64_t wall_ns(WallTime t) noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
inline WallTime wall_time(std::int64_t ns) noexcept {
  return WallTime(std::chrono::duration_cast<WallTime::duration>(std::chrono::nanoseconds(ns)));
}

// a + b, clamped to the int64 range.
constexpr std::int64_t saturating_add(std::int64_t a, std::int64_t b) noexcept {
  std::int64_t sum = 0;
  if (!__builtin_add_overflow(a, b, &sum)) return sum;
  return b < 0 ? kMinNs : kMaxNs;
}

// a - b, clamped to the int64 range.
constexpr std::int64_t saturating_sub(std::int64_t a, std::int64_t b) noexcept {
  std::int64_t difference = 0;
  if (!__builtin_sub_overflow(a, b, &difference)) return difference;
  return b < 0 ? kMaxNs : kMinNs;
}

// a + b for nanosecond durations, clamped.
constexpr std::chrono::nanoseconds saturating_add(std::chrono::nanoseconds a,
                                                  std::chrono::nanoseconds b) noexcept {
  return std::chrono::nanoseconds(saturating_add(a.count(), b.count()));
}

// A count of `unit_ns` nanoseconds, `count` times, as nanoseconds; nullopt
// when it does not fit (negative, NaN, or 2^63 ns and more), rounded to the
// nearest nanosecond.
inline std::optional<std::chrono::nanoseconds> nanoseconds_of(double count,
                                                              double unit_ns) noexcept {
  const double ns = count * unit_ns;
  // 2^63 is exactly representable; anything at or above it does not fit.
  if (!(ns >= 0) || ns >= 9223372036854775808.0) return std::nullopt;
  // Doubles this large are whole numbers, so rounding cannot cross 2^63.
  return std::chrono::nanoseconds(std::llround(ns));
}

// The steady-clock time `timeout` from now: time_point::max() when that is
// past the clock's range (callers then wait without a deadline), now for a
// negative timeout.
inline std::chrono::steady_clock::time_point steady_deadline(
    std::chrono::steady_clock::duration timeout) noexcept {
  using std::chrono::steady_clock;
  const steady_clock::time_point now = steady_clock::now();
  if (timeout <= steady_clock::duration::zero()) return now;
  if (timeout >= steady_clock::time_point::max() - now) return steady_clock::time_point::max();
  return now + timeout;
}

}  // namespace dogpile::internal
