// In-process backends: "memory" keeps entries in this process's heap;
// "null" stores nothing and always misses (for turning a cache off).
//
// Neither offers a cross-process creation mutex, so regions on them use an
// in-process lock. Neither takes arguments.
//
// Thread safety: both may be used by any number of threads at once.
#pragma once

#include <memory>

#include "dogpile/backend.h"

namespace dogpile {

std::unique_ptr<Backend> make_memory_backend();
std::unique_ptr<Backend> make_null_backend();

}  // namespace dogpile
