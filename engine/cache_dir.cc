#include "dogpile/cache_dir.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>

namespace dogpile {
namespace {

const char* non_empty_env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && value[0] != '\0' ? value : nullptr;
}

}  // namespace

Status default_cache_dir(std::string& out) {
  if (const char* dir = non_empty_env("DOGPILE_DIR")) {
    out = dir;
  } else if (const char* xdg = non_empty_env("XDG_CACHE_HOME")) {
    out = std::string(xdg) + "/dogpile";
  } else if (const char* home = non_empty_env("HOME")) {
    out = std::string(home) + "/.cache/dogpile";
  } else {
    return Status::error(StatusCode::kInvalidArgument,
                         "no cache directory: none of DOGPILE_DIR, XDG_CACHE_HOME, HOME is set");
  }
  return Status::ok();
}

Status ensure_cache_dir(const std::string& path) {
  if (path.empty()) {
    return Status::error(StatusCode::kInvalidArgument, "cache directory path is empty");
  }
  // Create each missing component; only the last one is ours to make 0700,
  // but parents we create get 0700 too so nothing we make is world-readable.
  for (std::size_t pos = 1; pos <= path.size(); ++pos) {
    if (pos != path.size() && path[pos] != '/') continue;
    const std::string part = path.substr(0, pos);
    if (::mkdir(part.c_str(), 0700) != 0 && errno != EEXIST) {
      return Status::io_error("cannot create cache directory", part, errno);
    }
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    return Status::io_error("cannot stat cache directory", path, errno);
  }
  if (S_ISLNK(st.st_mode)) {
    return Status::error(StatusCode::kInvalidArgument, "cache directory is a symlink", path);
  }
  if (!S_ISDIR(st.st_mode)) {
    return Status::error(StatusCode::kInvalidArgument, "cache directory is not a directory", path,
                         ENOTDIR);
  }
  return Status::ok();
}

}  // namespace dogpile
