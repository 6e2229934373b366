// dogpile: a persistent on-disk cache shared by the processes of one host.
//
// The one header most programs need: regions, their options and errors, the
// backend registry and the built-in backends, the store's maintenance view,
// the command-output cache and the versions.
//
// Thread safety: see each header.
#pragma once

#include "dogpile/async_runner.h"      // IWYU pragma: export
#include "dogpile/backend.h"         // IWYU pragma: export
#include "dogpile/cache_dir.h"       // IWYU pragma: export
#include "dogpile/cached_value.h"    // IWYU pragma: export
#include "dogpile/codec.h"           // IWYU pragma: export
#include "dogpile/command_cache.h"   // IWYU pragma: export
#include "dogpile/error.h"           // IWYU pragma: export
#include "dogpile/invalidation.h"    // IWYU pragma: export
#include "dogpile/lmdb_backend.h"    // IWYU pragma: export
#include "dogpile/memoize.h"         // IWYU pragma: export
#include "dogpile/memory_backend.h"  // IWYU pragma: export
#include "dogpile/memory_tier.h"     // IWYU pragma: export
#include "dogpile/options.h"         // IWYU pragma: export
#include "dogpile/proxy_backend.h"   // IWYU pragma: export
#include "dogpile/region.h"          // IWYU pragma: export
#include "dogpile/stats_proxy.h"     // IWYU pragma: export
#include "dogpile/store.h"           // IWYU pragma: export
#include "dogpile/usage_counters.h"  // IWYU pragma: export
#include "dogpile/value_view.h"      // IWYU pragma: export
#include "dogpile/version.h"         // IWYU pragma: export
