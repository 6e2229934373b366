#include "backends/stamp_file.h"
#include "unique_fd.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>

namespace dogpile::internal {
namespace {

// Readers in other processes see the stamps through the shared mapping, so
// every access must be a real lock-free atomic instruction on the memory
// itself, never a library lock private to this process.
static_assert(std::atomic_ref<std::int64_t>::is_always_lock_free);
static_assert(std::atomic_ref<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic_ref<std::int64_t>::required_alignment <= 8);
static_assert(std::atomic_ref<std::uint64_t>::required_alignment <= 8);

// Header fields (docs/format.md).
constexpr std::size_t kMagicOffset = 0;
constexpr std::size_t kVersionOffset = 4;
constexpr std::size_t kSlotSizeOffset = 8;
constexpr std::size_t kSlotCountOffset = 12;
// Slot fields.
constexpr std::size_t kHashOffset = 0;
constexpr std::size_t kHardOffset = 8;
constexpr std::size_t kSoftOffset = 16;

static_assert(StampFile::kHeaderSize % 8 == 0 && StampFile::kSlotSize % 8 == 0);
static_assert(StampFile::kHeaderSize + StampFile::kSlotCount * StampFile::kSlotSize <=
              StampFile::kFileSize);


// An OFD write lock on byte 0, held while the file is checked or initialised.
// Released explicitly, not by close: a child fork()ed meanwhile shares the
// open file description and would otherwise keep the lock.
class InitLock {
 public:
  explicit InitLock(int fd) noexcept : fd_(fd) {}
  ~InitLock() {
    if (locked_) change(F_UNLCK, F_OFD_SETLK);
  }
  InitLock(const InitLock&) = delete;
  InitLock& operator=(const InitLock&) = delete;

  int lock() noexcept {
    for (;;) {
      if (change(F_WRLCK, F_OFD_SETLKW) == 0) {
        locked_ = true;
        return 0;
      }
      if (errno != EINTR) return errno;
    }
  }

 private:
  int change(short type, int cmd) noexcept {
    struct flock fl {};
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = 0;
    fl.l_len = 1;
    fl.l_pid = 0;  // required for OFD locks
    return ::fcntl(fd_, cmd, &fl);
  }

  int fd_;
  bool locked_ = false;
};

std::uint32_t load_u32(const std::byte* p) noexcept {
  std::uint32_t v = 0;
  std::memcpy(&v, p, sizeof v);
  return v;
}

void store_u32(std::byte* p, std::uint32_t v) noexcept { std::memcpy(p, &v, sizeof v); }

Status refuse(const std::string& path, std::string why, StatusCode code = StatusCode::kIOError) {
  return Status::error(code, "refusing invalidation stamps file: " + std::move(why), path);
}

// Checks the header of a mapped file, or writes it when the file is new
// (all zero: just created, or its creator died before writing the header).
// Runs under the init lock.
Status check_or_init(const std::string& path, std::byte* base) {
  bool zero = true;
  for (std::size_t i = 0; i < StampFile::kHeaderSize && zero; ++i) zero = base[i] == std::byte{0};
  if (zero) {
    std::memset(base, 0, StampFile::kFileSize);
    store_u32(base + kVersionOffset, StampFile::kVersion);
    store_u32(base + kSlotSizeOffset, static_cast<std::uint32_t>(StampFile::kSlotSize));
    store_u32(base + kSlotCountOffset, StampFile::kSlotCount);
    // The magic last: a header with a magic is complete.
    store_u32(base + kMagicOffset, StampFile::kMagic);
    if (::msync(base, StampFile::kFileSize, MS_SYNC) != 0) {
      return Status::io_error("cannot write invalidation stamps file", path, errno);
    }
    return Status::ok();
  }
  if (load_u32(base + kMagicOffset) != StampFile::kMagic) {
    return refuse(path, "bad magic (not a dogpile stamps file)", StatusCode::kCorruption);
  }
  if (const std::uint32_t v = load_u32(base + kVersionOffset); v != StampFile::kVersion) {
    return refuse(path,
                  "format version " + std::to_string(v) + "; this build reads version " +
                      std::to_string(StampFile::kVersion),
                  StatusCode::kNotSupported);
  }
  if (load_u32(base + kSlotSizeOffset) != StampFile::kSlotSize ||
      load_u32(base + kSlotCountOffset) != StampFile::kSlotCount) {
    return refuse(path, "bad slot geometry in the header", StatusCode::kCorruption);
  }
  return Status::ok();
}

std::size_t page_size() noexcept {
  static const std::size_t size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

class StampFileInvalidation final : public InvalidationStrategy {
 public:
  StampFileInvalidation(std::shared_ptr<StampFile> file, std::uint64_t hash, bool sync) noexcept
      : file_(std::move(file)), hash_(hash), sync_(sync) {}

  Status invalidate(bool hard, WallTime at) override {
    std::uint32_t slot = 0;
    if (Status s = file_->claim(hash_, slot); !s) return s;
    slot_.store(slot, std::memory_order_relaxed);
    return file_->raise(slot, hard ? StampFile::Kind::kHard : StampFile::Kind::kSoft,
                        stamp_for(at), sync_);
  }

  bool is_hard_invalidated(WallTime created_at) const override {
    return older_than(wall_ns(created_at), stamp(StampFile::Kind::kHard));
  }
  bool is_soft_invalidated(WallTime created_at) const override {
    return older_than(wall_ns(created_at), stamp(StampFile::Kind::kSoft));
  }
  bool was_hard_invalidated() const override { return stamp(StampFile::Kind::kHard) != 0; }
  bool was_soft_invalidated() const override { return stamp(StampFile::Kind::kSoft) != 0; }

 private:
  std::int64_t stamp(StampFile::Kind kind) const noexcept {
    std::int64_t slot = slot_.load(std::memory_order_relaxed);
    if (slot < 0) {
      // Not found yet: another process may have claimed it since.
      slot = file_->find(hash_);
      if (slot < 0) return 0;
      slot_.store(slot, std::memory_order_relaxed);
    }
    return file_->stamp(static_cast<std::uint32_t>(slot), kind);
  }

  const std::shared_ptr<StampFile> file_;
  const std::uint64_t hash_;
  const bool sync_;
  // The region's slot once known (slots never move), else -1.
  mutable std::atomic<std::int64_t> slot_{-1};
};

}  // namespace

std::int64_t wall_ns(WallTime t) noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

std::int64_t stamp_for(WallTime t) noexcept {
  const std::int64_t ns = wall_ns(t);
  return ns < 1 ? 1 : ns;
}

// ---- Mapping ----

Mapping::Mapping(Mapping&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

Mapping& Mapping::operator=(Mapping&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(data_, size_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

Mapping::~Mapping() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

// ---- StampFile ----

Status StampFile::open(const std::string& path, std::shared_ptr<StampFile>& out) {
  // O_NONBLOCK: a FIFO planted at the path must not block before fstat can
  // refuse it.
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == ELOOP) return refuse(path, "it is a symlink");
    return Status::io_error("cannot open invalidation stamps file", path, err);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return Status::io_error("cannot stat invalidation stamps file", path, errno);
  }
  if (!S_ISREG(st.st_mode)) return refuse(path, "it is not a regular file");
  if (st.st_uid != ::geteuid()) {
    return refuse(path, "it is owned by uid " + std::to_string(st.st_uid) +
                            ", not by this user (uid " + std::to_string(::geteuid()) + ")");
  }
  // Another name for the inode could be replaced on its own, splitting the
  // processes that share stamps through it.
  if (st.st_nlink != 1) {
    return refuse(path, "it has " + std::to_string(st.st_nlink) + " hard links");
  }

  InitLock lock(fd.get());
  if (const int err = lock.lock(); err != 0) {
    return Status::io_error("cannot lock invalidation stamps file", path, err);
  }
  // The size again, now that no other process is creating the file.
  if (::fstat(fd.get(), &st) != 0) {
    return Status::io_error("cannot stat invalidation stamps file", path, errno);
  }
  if (st.st_size == 0) {
    // Blocks allocated, not a sparse ftruncate: on a full file system the
    // first store through the mapping into a hole would raise SIGBUS.
    if (const int err = ::posix_fallocate(fd.get(), 0, static_cast<off_t>(kFileSize)); err != 0) {
      (void)::ftruncate(fd.get(), 0);  // a later open tries again
      if (err == ENOSPC) {
        return Status::io_error(
            "cannot size invalidation stamps file: the file system is full (ENOSPC)", path, err);
      }
      return Status::io_error("cannot size invalidation stamps file", path, err);
    }
  } else if (st.st_size != static_cast<off_t>(kFileSize)) {
    return refuse(path,
                  "it has " + std::to_string(st.st_size) + " bytes, not " +
                      std::to_string(kFileSize),
                  StatusCode::kCorruption);
  }
  void* data = ::mmap(nullptr, kFileSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (data == MAP_FAILED) {
    return Status::io_error("cannot map invalidation stamps file", path, errno);
  }
  Mapping mapping(data, kFileSize);
  if (Status s = check_or_init(path, mapping.data()); !s) return s;
  out.reset(new StampFile(path, std::move(mapping)));
  return Status::ok();  // unlocks, then closes: the mapping alone keeps the file
}

std::uint64_t StampFile::region_hash(std::string_view region) noexcept {
  const std::uint64_t h = XXH3_64bits(region.data(), region.size());
  return h == 0 ? 1 : h;
}

std::int64_t StampFile::find(std::uint64_t hash) const noexcept {
  const std::uint32_t start = static_cast<std::uint32_t>(hash % kSlotCount);
  for (std::uint32_t i = 0; i < kSlotCount; ++i) {
    const std::uint32_t slot = (start + i) % kSlotCount;
    std::atomic_ref<std::uint64_t> key(
        *reinterpret_cast<std::uint64_t*>(slot_field(slot, kHashOffset)));
    const std::uint64_t seen = key.load(std::memory_order_acquire);
    if (seen == hash) return slot;
    if (seen == 0) return -1;  // slots are never freed, so the probe ends here
  }
  return -1;
}

Status StampFile::claim(std::uint64_t hash, std::uint32_t& out) {
  const std::uint32_t start = static_cast<std::uint32_t>(hash % kSlotCount);
  for (std::uint32_t i = 0; i < kSlotCount; ++i) {
    const std::uint32_t slot = (start + i) % kSlotCount;
    std::atomic_ref<std::uint64_t> key(
        *reinterpret_cast<std::uint64_t*>(slot_field(slot, kHashOffset)));
    std::uint64_t seen = key.load(std::memory_order_acquire);
    if (seen == 0 && key.compare_exchange_strong(seen, hash, std::memory_order_acq_rel,
                                                 std::memory_order_acquire)) {
      out = slot;
      return Status::ok();
    }
    // Taken: ours (maybe by a racing claimer), or another region's.
    if (seen == hash) {
      out = slot;
      return Status::ok();
    }
  }
  return Status::error(StatusCode::kFull,
                       "every one of the " + std::to_string(kSlotCount) +
                           " region slots of the invalidation stamps file is taken",
                       path_);
}

std::int64_t StampFile::stamp(std::uint32_t slot, Kind kind) const noexcept {
  std::atomic_ref<std::int64_t> value(*reinterpret_cast<std::int64_t*>(
      slot_field(slot, kind == Kind::kHard ? kHardOffset : kSoftOffset)));
  return value.load(std::memory_order_acquire);
}

Status StampFile::raise(std::uint32_t slot, Kind kind, std::int64_t value, bool sync) {
  std::byte* field = slot_field(slot, kind == Kind::kHard ? kHardOffset : kSoftOffset);
  std::atomic_ref<std::int64_t> stamp(*reinterpret_cast<std::int64_t*>(field));
  raise_stamp(stamp, value);
  if (!sync) return Status::ok();
  // The slot (hash and stamps) lies within one page.
  const std::size_t offset = static_cast<std::size_t>(field - mapping_.data());
  const std::size_t page = offset - offset % page_size();
  const std::size_t length = std::min(page_size(), kFileSize - page);
  if (::msync(mapping_.data() + page, length, MS_SYNC) != 0) {
    return Status::io_error("cannot sync invalidation stamps file", path_, errno);
  }
  return Status::ok();
}

// ---- strategy ----

Status open_stamp_invalidation(const std::string& dir, std::string_view region, bool sync,
                               std::shared_ptr<InvalidationStrategy>& out) {
  std::shared_ptr<StampFile> file;
  if (Status s = StampFile::open(dir + "/" + StampFile::kFileName, file); !s) return s;
  out = std::make_shared<StampFileInvalidation>(std::move(file), StampFile::region_hash(region),
                                                sync);
  return Status::ok();
}

}  // namespace dogpile::internal
