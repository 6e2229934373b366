#include "dogpile/cache_dir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>

namespace dogpile {
namespace {

const char* non_empty_env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && value[0] != '\0' ? value : nullptr;
}

std::string octal_mode(mode_t mode) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
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

Status check_cache_dir(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return Status::io_error("cannot stat cache directory", path, errno);
  }
  if (!S_ISDIR(st.st_mode)) {
    return Status::error(StatusCode::kIOError, "refusing cache directory: it is not a directory",
                         path, ENOTDIR);
  }
  // Whoever can write the directory can replace the cache files between our
  // checks and LMDB's open, or plant files for other users to open.
  if (st.st_uid != ::geteuid()) {
    return Status::error(StatusCode::kIOError,
                         "refusing cache directory: it is owned by uid " +
                             std::to_string(st.st_uid) + ", not by this user (uid " +
                             std::to_string(::geteuid()) + ")",
                         path, EPERM);
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return Status::error(StatusCode::kIOError,
                         "refusing cache directory: its mode " + octal_mode(st.st_mode) +
                             " lets other users write it (remove the group and other write "
                             "bits, e.g. chmod go-w)",
                         path, EPERM);
  }
  return Status::ok();
}

Status ensure_cache_dir(const std::string& path) {
  if (path.empty()) {
    return Status::error(StatusCode::kInvalidArgument, "cache directory path is empty");
  }
  // Create each missing component 0700: only the last one is the cache's,
  // but nothing we make should be readable by others.
  for (std::size_t pos = 1; pos <= path.size(); ++pos) {
    if (pos != path.size() && path[pos] != '/') continue;
    const std::string part = path.substr(0, pos);
    if (::mkdir(part.c_str(), 0700) == 0) {
      // The umask may have taken bits of 0700 away; never adds any.
      (void)::fchmodat(AT_FDCWD, part.c_str(), 0700, AT_SYMLINK_NOFOLLOW);
    } else if (errno != EEXIST) {
      return Status::io_error("cannot create cache directory", part, errno);
    }
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    return Status::io_error("cannot stat cache directory", path, errno);
  }
  // A refused path is a StoreError, like a refused cache file.
  if (S_ISLNK(st.st_mode)) {
    return Status::error(StatusCode::kIOError, "refusing cache directory: it is a symlink", path,
                         ELOOP);
  }
  if (!S_ISDIR(st.st_mode)) {
    return Status::error(StatusCode::kIOError, "refusing cache directory: it is not a directory",
                         path, ENOTDIR);
  }
  return check_cache_dir(path);
}

}  // namespace dogpile
