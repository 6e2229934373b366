// Internal: cross-process creation locks on one lock file per cache directory.
//
// Each key's lock is one byte of `creation.lock`, at an offset derived from a
// 62-bit XXH3 hash of (scope, key), held with a Linux OFD lock
// (F_OFD_SETLK/F_OFD_SETLKW). Locks beyond the end of the file are fine, so the
// file stays empty and no per-key files exist. Every acquisition uses its own
// open file description (reopened through /proc/self/fd, so all of them refer
// to the same inode even if the path is replaced), which makes threads of one
// process exclude each other. The kernel drops a lock when its holder dies.
// Descriptors are O_CLOEXEC, and an atfork handler closes every lock
// descriptor in a forked child, so children inherit no held lock.
//
// Thread safety: LockFile is safe to share between threads; each mutex object
// it hands out is used by one thread at a time.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "dogpile/creation_mutex.h"
#include "dogpile/status.h"

namespace dogpile::internal {

class LockFile : public std::enable_shared_from_this<LockFile> {
 public:
  // File name of the lock file inside a cache directory.
  static constexpr const char* kFileName = "creation.lock";

  // Opens (creating 0600 when missing) the lock file at `path`, refusing a
  // symlink or a non-regular file with a Status naming the path.
  static Status open(const std::string& path, std::shared_ptr<LockFile>& out);

  ~LockFile();
  LockFile(const LockFile&) = delete;
  LockFile& operator=(const LockFile&) = delete;

  // Byte offset of the lock for `key` in `scope` (a region name): the low 62
  // bits of XXH3-64 over scope, a NUL byte, and key.
  static std::uint64_t offset_for(std::string_view scope, std::string_view key) noexcept;

  // A mutex on the byte at `offset`. Not held until try_lock/lock succeeds.
  std::unique_ptr<CreationMutex> mutex(std::uint64_t offset);

  const std::string& path() const noexcept { return path_; }
  dev_t device() const noexcept { return dev_; }
  ino_t inode() const noexcept { return ino_; }
  int fd() const noexcept { return fd_; }

 private:
  LockFile(std::string path, int fd, dev_t dev, ino_t ino);

  std::string path_;
  int fd_;  // the master descriptor: kept open, used for F_OFD_GETLK and reopening
  dev_t dev_;
  ino_t ino_;
};

}  // namespace dogpile::internal
