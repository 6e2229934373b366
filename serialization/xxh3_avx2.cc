// Built with -mavx2 on its own: everything here runs only on CPUs with AVX2,
// so this file includes nothing that other files could share code with (the
// xxHash functions it inlines are static to it).
#include "xxh3_avx2.h"

#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_AVX2
#include <xxhash.h>

namespace dogpile::internal {

std::uint64_t xxh3_64_avx2(const void* data, std::size_t size) noexcept {
  return XXH3_64bits(data, size);
}

}  // namespace dogpile::internal
