// Versions: this library's, and those of the libraries it is built on, which
// a bug report needs (`dogpile --version` prints all three).
//
// Thread safety: every function is safe to call from any thread.
#pragma once

#include <string>

namespace dogpile {

// This library's version, "0.1.0": the project version in meson.build.
std::string version();

// The LMDB library in use, "0.9.24": mdb_version() at run time, since a
// shared liblmdb may be newer than the headers the library was built with.
std::string lmdb_version();

// The cereal headers the library was compiled with, "1.3.2" (cereal is
// header-only, so this is the cereal in use).
std::string cereal_version();

}  // namespace dogpile
