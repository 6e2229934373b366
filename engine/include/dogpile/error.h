// Error: the one exception hierarchy of the public API.
//
// Everything the library throws derives from dogpile::Error, which carries a
// StatusCode, the path involved (if any) and the errno that reported it (if
// any). Exceptions are thrown only at the API edge (Region, factories); the
// layers below report Status values. A cache miss is never an exception.
//
// Thread safety: exception objects are immutable after construction.
#pragma once

#include <stdexcept>
#include <string>

#include "dogpile/status.h"

namespace dogpile {

class Error : public std::runtime_error {
 public:
  explicit Error(const Status& status);

  StatusCode code() const noexcept { return code_; }
  const std::string& path() const noexcept { return path_; }
  int sys_errno() const noexcept { return errno_; }

 private:
  StatusCode code_;
  std::string path_;
  int errno_;
};

// Bad configuration: unknown backend or option, unparsable value.
class ConfigError : public Error {
 public:
  using Error::Error;
};

// A creation-lock wait ran past RegionOptions::lock_timeout with no stale
// value to serve and the policy set to raise.
class LockTimeout : public Error {
 public:
  using Error::Error;
};

// get_or_create was called for a key from inside that key's own creator.
class ReentrantCreation : public Error {
 public:
  using Error::Error;
};

// A region declared without a backend was used before configure().
class RegionNotConfigured : public Error {
 public:
  using Error::Error;
};

// The store has no room for a write.
class CacheFull : public Error {
 public:
  using Error::Error;
};

// The store itself failed (I/O error, broken file, refused path).
class StoreError : public Error {
 public:
  using Error::Error;
};

// A write to a store opened read-only: the lmdb option read_only, or a cache
// this user can read but not write. A StoreError, so handlers of store
// failures see it too.
class ReadOnlyError : public StoreError {
 public:
  using StoreError::StoreError;
};

// Throws the exception type that matches status.code(); does nothing on OK.
void throw_if_error(const Status& status);

}  // namespace dogpile
