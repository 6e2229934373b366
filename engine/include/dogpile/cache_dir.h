// Cache directory: where a cache lives on disk by default, and how it is made.
//
// Thread safety: both functions are safe to call from any thread.
#pragma once

#include <string>

#include "dogpile/status.h"

namespace dogpile {

// $DOGPILE_DIR if set and non-empty, else $XDG_CACHE_HOME/dogpile, else
// $HOME/.cache/dogpile. Errors when none of the three can be formed.
Status default_cache_dir(std::string& out);

// Creates `path` (and missing parents) with mode 0700. An existing directory
// is accepted as it is; a path that exists but is not a directory (or is a
// symlink) is refused with a message naming it.
Status ensure_cache_dir(const std::string& path);

}  // namespace dogpile
