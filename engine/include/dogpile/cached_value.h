// CachedValue: a payload and the metadata the cache keeps beside it.
//
// The seed's CachedValue(payload, metadata) tuple. Metadata is read from the
// envelope's fixed header and so is available without knowing the payload
// type (Region::get_value_metadata).
//
// Thread safety: plain values.
#pragma once

#include <cstdint>
#include <optional>

#include "dogpile/clock.h"
#include "dogpile/envelope.h"

namespace dogpile {

struct Metadata {
  WallTime created_at{};                 // when the value was stored (wall clock)
  std::optional<WallTime> expires_at{};  // per-entry expiry, when one was stored
  std::uint64_t type_tag = 0;            // XXH3-64 of the registered type name
  std::uint32_t schema_version = 0;      // the type's schema version at store time
  CodecId codec = CodecId::kBinary;      // payload encoding
  std::int64_t sequence = 0;             // invalidation order when its creation started
};

template <class T>
struct CachedValue {
  T payload{};
  Metadata metadata{};
};

}  // namespace dogpile
