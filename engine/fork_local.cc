#include "fork_local.h"

#include <pthread.h>

#include <cstdio>

namespace dogpile::internal {
namespace {

std::atomic<std::uint64_t> g_generation{0};

void on_fork_child() noexcept { g_generation.fetch_add(1, std::memory_order_relaxed); }

bool register_handler() noexcept {
  if (const int rc = ::pthread_atfork(nullptr, nullptr, &on_fork_child); rc != 0) {
    // Only ENOMEM: the process goes on, but a fork()ed child would then use
    // its parent's locks and threads, so say so.
    std::fprintf(stderr, "dogpile: pthread_atfork failed (error %d): fork()ed children of "
                         "this process must not use the cache\n", rc);
    return false;
  }
  return true;
}

}  // namespace

std::uint64_t fork_generation() noexcept {
  static const bool registered = register_handler();
  (void)registered;
  return g_generation.load(std::memory_order_relaxed);
}

}  // namespace dogpile::internal
