#include "dogpile/type_info.h"

#include <xxhash.h>

namespace dogpile {

// Seed 0, so a tag depends on the name alone and is the same in every build,
// process and architecture that reads the cache.
std::uint64_t type_tag_of(std::string_view name) noexcept {
  return XXH3_64bits(name.data(), name.size());
}

}  // namespace dogpile
