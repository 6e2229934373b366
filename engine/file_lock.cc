#include "file_lock.h"
#include "fork_local.h"
#include "time_math.h"
#include "unique_fd.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack: offset_for is noexcept
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace dogpile::internal {
namespace {

constexpr std::uint64_t kOffsetMask = (std::uint64_t{1} << 62) - 1;
// Unlocked descriptors kept per lock file for reuse; more are closed.
constexpr std::size_t kPoolLimit = 16;
constexpr std::chrono::steady_clock::duration kFirstBackoff = std::chrono::microseconds(50);
constexpr std::chrono::steady_clock::duration kMaxBackoff = std::chrono::milliseconds(2);


// One open file description of a lock file, used to hold at most one lock.
// While open its number is in the process registry, so a forked child closes
// its copy and cannot keep the description (and any lock on it) alive.
class LockFd {
 public:
  LockFd() noexcept = default;
  ~LockFd() { reset(); }
  LockFd(LockFd&& other) noexcept
      : fd_(std::exchange(other.fd_, -1)), generation_(other.generation_) {}
  LockFd& operator=(LockFd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
      generation_ = other.generation_;
    }
    return *this;
  }
  LockFd(const LockFd&) = delete;
  LockFd& operator=(const LockFd&) = delete;

  // Opens a fresh description of `file`'s inode into `out`, which is empty.
  // Caller holds the registry mutex, so no fork sees the descriptor before
  // it is registered.
  static Status open_locked(const LockFile& file, LockFd& out);

  bool valid() const noexcept {
    // A descriptor of an older fork generation was closed by the atfork
    // handler, and its number may since belong to another file.
    return fd_ >= 0 && generation_ == fork_generation();
  }
  int get() const noexcept { return fd_; }
  // Closes and unregisters. Takes the registry mutex: never call it with the
  // mutex held (an invalid descriptor does not take it).
  void reset() noexcept;

 private:
  int fd_ = -1;
  std::uint64_t generation_ = 0;
};

// A lock this process holds, for reentrancy checks. The token names the
// holder so that a release from any thread (an async runner) finds it.
struct HeldRecord {
  dev_t dev;
  ino_t ino;
  std::uint64_t offset;
  std::thread::id thread;
  std::uint64_t token;
};

// Everything the atfork handlers must see consistent, under one mutex that
// the prepare handler holds across fork(). Never destroyed: atfork handlers
// and late destructors may run after static destruction began.
struct Registry {
  std::mutex mu;
  std::vector<int> lock_fds;  // every open LockFd: pooled, locking or holding
  std::unordered_map<const LockFile*, std::vector<LockFd>> pools;
  std::vector<HeldRecord> held;
  std::uint64_t next_token = 1;
};

Registry& registry() {
  static Registry* const instance = new Registry();
  return *instance;
}

void atfork_prepare() noexcept { registry().mu.lock(); }
void atfork_parent() noexcept { registry().mu.unlock(); }

// The child is single-threaded here and runs with the mutex the prepare
// handler took. It holds no lock of the parent's afterwards.
void atfork_child() noexcept {
  Registry& r = registry();
  for (const int fd : r.lock_fds) ::close(fd);
  r.lock_fds.clear();
  // fork_generation() moved already (its handler runs first), so the pools'
  // LockFds see themselves as stale and touch neither the mutex nor the
  // closed numbers.
  for (auto& entry : r.pools) entry.second.clear();
  r.held.clear();
  r.mu.unlock();
}

void register_atfork_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    registry();  // constructed before any fork needs it
    // Registers the generation's handler first: child handlers run in the
    // order they were registered, and atfork_child relies on the new one.
    (void)fork_generation();
    if (const int rc = ::pthread_atfork(atfork_prepare, atfork_parent, atfork_child); rc != 0) {
      throw std::system_error(rc, std::generic_category(), "pthread_atfork");
    }
  });
}

Status LockFd::open_locked(const LockFile& file, LockFd& out) {
  // Reopening the master through /proc gives a new description of the very
  // inode the master refers to, even if the path was replaced meanwhile.
  char proc_path[48];
  std::snprintf(proc_path, sizeof proc_path, "/proc/self/fd/%d", file.fd());
  const int fd = ::open(proc_path, O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    return Status::io_error("cannot reopen lock file through /proc/self/fd", file.path(), errno);
  }
  Registry& r = registry();
  try {
    r.lock_fds.push_back(fd);
  } catch (...) {
    ::close(fd);
    throw;
  }
  out.fd_ = fd;
  out.generation_ = fork_generation();
  return Status::ok();
}

void LockFd::reset() noexcept {
  if (!valid()) {
    fd_ = -1;
    return;
  }
  Registry& r = registry();
  // Unregister and close as one step, so a fork never sees a registered
  // number that is already closed (and maybe reused by another file).
  std::lock_guard<std::mutex> guard(r.mu);
  if (const auto it = std::find(r.lock_fds.begin(), r.lock_fds.end(), fd_);
      it != r.lock_fds.end()) {
    r.lock_fds.erase(it);
  }
  ::close(fd_);
  fd_ = -1;
}

// A pooled descriptor of `file`, or a newly opened one.
Status take_fd(const LockFile& file, LockFd& out) {
  Registry& r = registry();
  std::lock_guard<std::mutex> guard(r.mu);
  if (const auto it = r.pools.find(&file); it != r.pools.end()) {
    std::vector<LockFd>& pool = it->second;
    while (!pool.empty()) {
      LockFd fd = std::move(pool.back());
      pool.pop_back();
      // Pools are emptied in a forked child, so this holds; checked anyway
      // because destroying a valid LockFd here would deadlock on r.mu.
      if (fd.valid()) {
        out = std::move(fd);
        return Status::ok();
      }
    }
  }
  return LockFd::open_locked(file, out);
}

// Returns an unlocked descriptor to `file`'s pool, or closes it when full.
void give_back(const LockFile& file, LockFd fd) noexcept {
  if (!fd.valid()) return;
  Registry& r = registry();
  {
    std::lock_guard<std::mutex> guard(r.mu);
    try {
      std::vector<LockFd>& pool = r.pools[&file];
      if (pool.size() < kPoolLimit) {
        pool.push_back(std::move(fd));
        return;
      }
    } catch (const std::bad_alloc&) {
      // Not pooled: closed below instead.
    }
  }
  fd.reset();
}

// Re-assigns a held lock to `thread` (a default id: to no thread).
void set_holder(std::uint64_t token, std::thread::id thread) noexcept {
  Registry& r = registry();
  std::lock_guard<std::mutex> guard(r.mu);
  for (HeldRecord& rec : r.held) {
    if (rec.token == token) rec.thread = thread;
  }
}

void forget_held(std::uint64_t token) noexcept {
  Registry& r = registry();
  std::lock_guard<std::mutex> guard(r.mu);
  const auto it = std::find_if(r.held.begin(), r.held.end(),
                               [token](const HeldRecord& rec) { return rec.token == token; });
  if (it != r.held.end()) r.held.erase(it);
}

struct flock byte_lock(short type, std::uint64_t offset) noexcept {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = static_cast<off_t>(offset);
  fl.l_len = 1;
  fl.l_pid = 0;  // required for OFD locks
  return fl;
}

// A byte lock held through one descriptor; releasing unlocks it and pools
// the descriptor.
class HeldLock {
 public:
  HeldLock() noexcept = default;
  HeldLock(const LockFile& file, std::uint64_t offset, LockFd fd, std::uint64_t token) noexcept
      : file_(&file), offset_(offset), fd_(std::move(fd)), token_(token) {}
  ~HeldLock() { release(); }
  HeldLock(HeldLock&& other) noexcept
      : file_(std::exchange(other.file_, nullptr)),
        offset_(other.offset_),
        fd_(std::move(other.fd_)),
        token_(other.token_) {}
  HeldLock& operator=(HeldLock&& other) noexcept {
    if (this != &other) {
      release();
      file_ = std::exchange(other.file_, nullptr);
      offset_ = other.offset_;
      fd_ = std::move(other.fd_);
      token_ = other.token_;
    }
    return *this;
  }
  HeldLock(const HeldLock&) = delete;
  HeldLock& operator=(const HeldLock&) = delete;

  // False also in a forked child, whose copy of the lock was dropped.
  bool held() const noexcept { return file_ != nullptr && fd_.valid(); }
  std::uint64_t token() const noexcept { return token_; }

  void release() noexcept {
    if (file_ == nullptr) return;
    const LockFile& file = *std::exchange(file_, nullptr);
    if (fd_.valid()) {
      struct flock fl = byte_lock(F_UNLCK, offset_);
      if (::fcntl(fd_.get(), F_OFD_SETLK, &fl) == 0) {
        forget_held(token_);
        give_back(file, std::move(fd_));
        return;
      }
      // Closing the only reference to the description drops the lock too.
      fd_.reset();
    }
    forget_held(token_);
  }

 private:
  const LockFile* file_ = nullptr;  // kept alive by the owning OfdMutex
  std::uint64_t offset_ = 0;
  LockFd fd_;
  std::uint64_t token_ = 0;
};

class OfdMutex final : public CreationMutex {
 public:
  OfdMutex(std::shared_ptr<const LockFile> file, std::uint64_t offset) noexcept
      : file_(std::move(file)), offset_(offset) {}
  ~OfdMutex() override = default;  // held_ releases
  OfdMutex(const OfdMutex&) = delete;
  OfdMutex& operator=(const OfdMutex&) = delete;

  Status try_lock() override { return acquire(Mode::kTry, {}); }

  Status lock(Timeout timeout) override {
    if (!timeout) return acquire(Mode::kWait, {});
    // A timeout past the clock's range is no timeout.
    const auto deadline = steady_deadline(*timeout);
    if (deadline == std::chrono::steady_clock::time_point::max()) return acquire(Mode::kWait, {});
    return acquire(Mode::kPoll, deadline);
  }

  void unlock() noexcept override { held_.release(); }
  void hand_over() noexcept override {
    if (held_.held()) set_holder(held_.token(), std::thread::id());
  }
  void adopt() noexcept override {
    if (held_.held()) set_holder(held_.token(), std::this_thread::get_id());
  }

  bool is_locked_anywhere() override {
    // The master descriptor never holds a lock, so every holder conflicts
    // with it, including other descriptors of this process.
    struct flock fl = byte_lock(F_WRLCK, offset_);
    if (::fcntl(file_->fd(), F_OFD_GETLK, &fl) != 0) return false;
    return fl.l_type != F_UNLCK;
  }

 private:
  enum class Mode { kTry, kWait, kPoll };

  Status acquire(Mode mode, std::chrono::steady_clock::time_point deadline);
  bool held_by_this_thread();
  Status record(LockFd fd);

  std::shared_ptr<const LockFile> file_;
  std::uint64_t offset_;
  HeldLock held_;
};

bool OfdMutex::held_by_this_thread() {
  const auto self = std::this_thread::get_id();
  Registry& r = registry();
  std::lock_guard<std::mutex> guard(r.mu);
  return std::any_of(r.held.begin(), r.held.end(), [&](const HeldRecord& rec) {
    return rec.offset == offset_ && rec.ino == file_->inode() && rec.dev == file_->device() &&
           rec.thread == self;
  });
}

Status OfdMutex::record(LockFd fd) {
  Registry& r = registry();
  std::uint64_t token = 0;
  {
    std::lock_guard<std::mutex> guard(r.mu);
    token = r.next_token++;
  }
  held_ = HeldLock(*file_, offset_, std::move(fd), token);
  try {
    std::lock_guard<std::mutex> guard(r.mu);
    r.held.push_back(
        HeldRecord{file_->device(), file_->inode(), offset_, std::this_thread::get_id(), token});
  } catch (...) {
    held_.release();  // the caller must not hold a lock it was not told about
    throw;
  }
  return Status::ok();
}

Status OfdMutex::acquire(Mode mode, std::chrono::steady_clock::time_point deadline) {
  // Waiting for a lock this thread holds would never end.
  if (held_.held() || held_by_this_thread()) {
    return Status::error(StatusCode::kReentrant, "this thread already holds this creation lock",
                         file_->path());
  }
  unlock();  // drops the record of a lock lost in a fork, if any
  LockFd fd;
  if (Status s = take_fd(*file_, fd); !s) return s;

  struct flock fl = byte_lock(F_WRLCK, offset_);
  auto backoff = kFirstBackoff;
  for (;;) {
    const int cmd = mode == Mode::kWait ? F_OFD_SETLKW : F_OFD_SETLK;
    if (::fcntl(fd.get(), cmd, &fl) == 0) return record(std::move(fd));
    const int err = errno;
    if (err == EINTR) continue;
    if (err != EAGAIN && err != EACCES) {
      give_back(*file_, std::move(fd));
      return Status::io_error("cannot lock creation lock byte", file_->path(), err);
    }
    if (mode == Mode::kTry) {
      give_back(*file_, std::move(fd));
      return Status::error(StatusCode::kBusy, "lock is busy");
    }
    // kPoll: OFD locks have no timed wait, so retry with a bounded backoff.
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      give_back(*file_, std::move(fd));
      return Status::error(StatusCode::kTimedOut, "timed out waiting for creation lock",
                           file_->path());
    }
    std::this_thread::sleep_for(std::min(backoff, deadline - now));
    backoff = std::min(backoff * 2, kMaxBackoff);
  }
}

}  // namespace

Status LockFile::open(const std::string& path, std::shared_ptr<LockFile>& out) {
  register_atfork_once();
  // O_NONBLOCK: opening a FIFO or device planted at the path must not block
  // before fstat can refuse it. It does not affect locking.
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == ELOOP) {
      return Status::error(StatusCode::kInvalidArgument, "lock file is a symlink", path, err);
    }
    return Status::io_error("cannot open lock file", path, err);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return Status::io_error("cannot stat lock file", path, errno);
  }
  if (!S_ISREG(st.st_mode)) {
    return Status::error(StatusCode::kInvalidArgument, "lock file is not a regular file", path);
  }
  if (st.st_uid != ::geteuid()) {
    return Status::error(StatusCode::kInvalidArgument,
                         "lock file is owned by uid " + std::to_string(st.st_uid) +
                             ", not by this process's uid " + std::to_string(::geteuid()),
                         path);
  }
  // Another name for the inode could be replaced or removed independently,
  // splitting the processes that lock through it.
  if (st.st_nlink > 1) {
    return Status::error(StatusCode::kInvalidArgument,
                         "lock file has " + std::to_string(st.st_nlink) + " hard links", path);
  }
  out.reset(new LockFile(path, fd.get(), st.st_dev, st.st_ino));
  fd.release();
  return Status::ok();
}

LockFile::LockFile(std::string path, int fd, dev_t dev, ino_t ino)
    : path_(std::move(path)), fd_(fd), dev_(dev), ino_(ino) {}

LockFile::~LockFile() {
  // Every mutex keeps its LockFile alive, so only pooled descriptors remain.
  std::vector<LockFd> pool;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> guard(r.mu);
    if (const auto it = r.pools.find(this); it != r.pools.end()) {
      pool = std::move(it->second);
      r.pools.erase(it);
    }
  }
  pool.clear();  // closes them, outside the registry mutex
  ::close(fd_);
}

std::uint64_t LockFile::offset_for(std::string_view scope, std::string_view key) noexcept {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  XXH3_64bits_update(&state, scope.data(), scope.size());
  const char separator = '\0';
  XXH3_64bits_update(&state, &separator, 1);
  XXH3_64bits_update(&state, key.data(), key.size());
  return XXH3_64bits_digest(&state) & kOffsetMask;
}

std::unique_ptr<CreationMutex> LockFile::mutex(std::uint64_t offset) {
  // Offsets stay below 2^62 so that l_start + l_len never overflows off_t.
  return std::make_unique<OfdMutex>(shared_from_this(), offset & kOffsetMask);
}

}  // namespace dogpile::internal
