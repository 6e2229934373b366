#include "dogpile/error.h"

namespace dogpile {

Error::Error(const Status& status)
    : std::runtime_error(status.to_string()),
      code_(status.code()),
      path_(status.path()),
      errno_(status.sys_errno()) {}

void throw_if_error(const Status& status) {
  switch (status.code()) {
    case StatusCode::kOk:
      return;
    case StatusCode::kInvalidArgument:
      throw ConfigError(status);
    case StatusCode::kTimedOut:
      throw LockTimeout(status);
    case StatusCode::kReentrant:
      throw ReentrantCreation(status);
    case StatusCode::kFull:
      throw CacheFull(status);
    case StatusCode::kNotConfigured:
      throw RegionNotConfigured(status);
    case StatusCode::kReadOnly:
      throw ReadOnlyError(status);
    case StatusCode::kIOError:
    case StatusCode::kCorruption:
      throw StoreError(status);
    default:
      throw Error(status);
  }
}

}  // namespace dogpile
