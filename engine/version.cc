#include "dogpile/version.h"

#include <cereal/version.hpp>
#include <lmdb.h>

#include "build_version.h"

namespace dogpile {

std::string version() { return DOGPILE_VERSION; }

std::string lmdb_version() {
  int major = 0;
  int minor = 0;
  int patch = 0;
  mdb_version(&major, &minor, &patch);
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
}

std::string cereal_version() {
  return std::to_string(CEREAL_VERSION_MAJOR) + "." + std::to_string(CEREAL_VERSION_MINOR) + "." +
         std::to_string(CEREAL_VERSION_PATCH);
}

}  // namespace dogpile
