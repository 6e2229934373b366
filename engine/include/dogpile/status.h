// Status: the outcome of an operation inside the engine and its backends.
//
// Backends and internal layers report failures as Status values; the public
// Region API turns a failed Status into a dogpile::Error at its edge. A cache
// miss is never a Status failure: lookups report absence through
// std::optional.
//
// Thread safety: a Status is a value; distinct objects may be used from
// different threads without synchronisation.
#pragma once

#include <string>
#include <string_view>
#include <utility>

namespace dogpile {

enum class StatusCode {
  kOk = 0,
  kCorruption,       // stored bytes failed a magic, length or checksum check
  kMismatch,         // entry of another type, schema version, codec or key
  kIOError,          // a system call failed; errno() says why
  kInvalidArgument,  // bad configuration or input; message names it
  kBusy,             // a try-lock found the lock held
  kTimedOut,         // a bounded wait ran out
  kFull,             // the store has no room for the write
  kTooLarge,         // a value or key exceeds a configured limit
  kNotSupported,     // the backend cannot do this
  kReentrant,        // a creator asked for its own key's creation lock
  kNotConfigured,    // a region was used before it was given a backend
  kReadOnly,         // the store is open read-only; the message says why
};

// Short stable name of a code, e.g. "corruption".
std::string_view status_code_name(StatusCode code) noexcept;

class Status {
 public:
  Status() noexcept = default;

  static Status ok() noexcept { return Status(); }
  static Status error(StatusCode code, std::string message, std::string path = {},
                      int sys_errno = 0) {
    return Status(code, std::move(message), std::move(path), sys_errno);
  }
  // An I/O failure of `what` on `path`, with the errno that reported it.
  static Status io_error(std::string what, std::string path, int sys_errno) {
    return Status(StatusCode::kIOError, std::move(what), std::move(path), sys_errno);
  }

  bool is_ok() const noexcept { return code_ == StatusCode::kOk; }
  explicit operator bool() const noexcept { return is_ok(); }

  StatusCode code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }
  const std::string& path() const noexcept { return path_; }
  int sys_errno() const noexcept { return errno_; }

  // "code: message (path: strerror)" for logs and exception texts.
  std::string to_string() const;

 private:
  Status(StatusCode code, std::string message, std::string path, int sys_errno)
      : code_(code), message_(std::move(message)), path_(std::move(path)), errno_(sys_errno) {}

  StatusCode code_ = StatusCode::kOk;
  std::string message_;
  std::string path_;
  int errno_ = 0;
};

}  // namespace dogpile
