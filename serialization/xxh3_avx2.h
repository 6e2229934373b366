// XXH3-64 compiled for AVX2 (xxh3_avx2.cc), for CPUs that have it.
//
// Debian's libxxhash is built for baseline x86-64 (SSE2), where XXH3 of a
// large value costs more than copying it; the AVX2 build of the same
// algorithm is about 2.5x faster and gives the same hash. Only call
// xxh3_64_avx2 after checking that the CPU supports AVX2.
//
// Thread safety: reentrant.
#pragma once

#include <cstddef>
#include <cstdint>

namespace dogpile::internal {

std::uint64_t xxh3_64_avx2(const void* data, std::size_t size) noexcept;

}  // namespace dogpile::internal
