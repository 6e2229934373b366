#include "dogpile/status.h"

#include <cstring>

namespace dogpile {

std::string_view status_code_name(StatusCode code) noexcept {
  switch (code) {
    case StatusCode::kOk: return "ok";
    case StatusCode::kCorruption: return "corruption";
    case StatusCode::kMismatch: return "mismatch";
    case StatusCode::kIOError: return "io_error";
    case StatusCode::kInvalidArgument: return "invalid_argument";
    case StatusCode::kBusy: return "busy";
    case StatusCode::kTimedOut: return "timed_out";
    case StatusCode::kFull: return "full";
    case StatusCode::kTooLarge: return "too_large";
    case StatusCode::kNotSupported: return "not_supported";
    case StatusCode::kReentrant: return "reentrant";
    case StatusCode::kNotConfigured: return "not_configured";
    case StatusCode::kReadOnly: return "read_only";
  }
  return "unknown";
}

std::string Status::to_string() const {
  std::string out(status_code_name(code_));
  if (!message_.empty()) {
    out += ": ";
    out += message_;
  }
  if (!path_.empty() || errno_ != 0) {
    out += " (";
    if (!path_.empty()) out += path_;
    if (errno_ != 0) {
      if (!path_.empty()) out += ": ";
      char buf[256];
      // GNU strerror_r returns the message pointer, which may not be buf.
      out += strerror_r(errno_, buf, sizeof buf);
    }
    out += ")";
  }
  return out;
}

}  // namespace dogpile
