// Cache directory: where a cache lives on disk by default, and how it is made.
//
// A cache directory must be owned by the user that opens it and writable by
// no one else: whoever can write it could replace the cache files.
//
// Thread safety: every function is safe to call from any thread.
#pragma once

#include <string>

#include "dogpile/status.h"

namespace dogpile {

// $DOGPILE_DIR if set and non-empty, else $XDG_CACHE_HOME/dogpile, else
// $HOME/.cache/dogpile. Errors when none of the three can be formed.
Status default_cache_dir(std::string& out);

// Creates `path` (and missing parents) with mode 0700, then checks it as
// check_cache_dir does. A path that exists but is not a directory, or is a
// symlink, is refused with a message naming it.
Status ensure_cache_dir(const std::string& path);

// Checks the existing directory `path` names (following symlinks): it must
// be owned by this process's effective user and not writable by group or
// others (mode & 022 == 0; 0755 is fine). A refusal names the path and the
// mode or owner.
Status check_cache_dir(const std::string& path);

}  // namespace dogpile
