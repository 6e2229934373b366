// Shared by the reliability suite: the run's random seed, the --soak switch,
// and memory and file-descriptor readings taken from /proc.
//
// Every test that draws random numbers takes them from reliability_seed(),
// which prints the seed once so a failing run can be repeated with
// DOGPILE_SEED=<n>. Figures a test measured are printed as "figure: ..."
// lines; docs/reliability.md quotes them.
#pragma once

#include <unistd.h>

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>

namespace dogpile::test {

// DOGPILE_SEED when set, else a fresh random seed; printed on first use.
inline std::uint64_t reliability_seed() {
  static const std::uint64_t seed = [] {
    std::uint64_t s = 0;
    if (const char* env = std::getenv("DOGPILE_SEED"); env != nullptr && env[0] != '\0') {
      s = std::strtoull(env, nullptr, 10);
    } else {
      std::random_device rd;
      s = (std::uint64_t{rd()} << 32) ^ rd();
    }
    std::fprintf(stderr, "seed: %llu (repeat with DOGPILE_SEED=%llu)\n",
                 static_cast<unsigned long long>(s), static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

// True under `scripts/test --soak` (DOGPILE_SOAK=1): run the long versions.
inline bool soak_run() {
  const char* env = std::getenv("DOGPILE_SOAK");
  return env != nullptr && std::string(env) == "1";
}

// `ci` normally, `soak` under --soak.
template <class T>
T scaled(T ci, T soak) {
  return soak_run() ? soak : ci;
}

// True when built with AddressSanitizer or ThreadSanitizer, whose runtimes
// make every operation several times slower.
inline constexpr bool kSanitized =
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
    true;
#else
    false;
#endif
#else
    false;
#endif

// A field of /proc/self/status in KiB ("VmRSS", "VmHWM"); -1 if absent.
inline long proc_status_kib(const std::string& field) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(field + ":", 0) == 0) return std::strtol(line.c_str() + field.size() + 1, nullptr, 10);
  }
  return -1;
}

// Prints one "figure:" line to stderr (meson keeps it in the test log).
[[gnu::format(printf, 1, 2)]] inline void figure(const char* format, ...) {
  std::va_list args;
  va_start(args, format);
  std::fprintf(stderr, "figure: ");
  std::vfprintf(stderr, format, args);
  std::fprintf(stderr, "\n");
  va_end(args);
}

}  // namespace dogpile::test
