#include "backends/stamp_file.h"
#include "time_math.h"
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
constexpr std::size_t kSequenceOffset = 16;  // version 2; reserved (0) in version 1
// Slot fields.
constexpr std::size_t kHashOffset = 0;
constexpr std::size_t kHardOffset = 8;
constexpr std::size_t kSoftOffset = 16;

static_assert(StampFile::kHeaderSize % 8 == 0 && StampFile::kSlotSize % 8 == 0);
static_assert(kSequenceOffset % 8 == 0 && kSequenceOffset + 8 <= StampFile::kHeaderSize);
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

std::atomic_ref<std::int64_t> int64_at(std::byte* p) noexcept {
  return std::atomic_ref<std::int64_t>(*reinterpret_cast<std::int64_t*>(p));
}

// Raises the sequence of a mapped file to at least each of its stamps (and to
// 1): a crash between an invalidation's two writes, or a version 1 file,
// must not leave new entries older than an old stamp. Runs under the init
// lock; invalidations of processes that opened the file earlier may run at
// once, which the compare-and-swap of raise_stamp allows.
void repair_sequence(std::byte* base) noexcept {
  std::int64_t highest = 1;
  for (std::uint32_t slot = 0; slot < StampFile::kSlotCount; ++slot) {
    std::byte* fields = base + StampFile::kHeaderSize + std::size_t{slot} * StampFile::kSlotSize;
    for (std::size_t offset : {kHardOffset, kSoftOffset}) {
      highest = std::max(highest, int64_at(fields + offset).load(std::memory_order_acquire));
    }
  }
  std::atomic_ref<std::int64_t> sequence = int64_at(base + kSequenceOffset);
  raise_stamp(sequence, highest);
}

// Checks the header of a mapped file, or writes it when the file is new
// (all zero: just created, or its creator died before writing the header);
// upgrades a version 1 file, whose stamps are wall-clock times, by starting
// its sequence at the later of now and its highest stamp. Runs under the
// init lock.
Status check_or_init(const std::string& path, std::byte* base) {
  bool zero = true;
  for (std::size_t i = 0; i < StampFile::kHeaderSize && zero; ++i) zero = base[i] == std::byte{0};
  std::atomic_ref<std::int64_t> sequence = int64_at(base + kSequenceOffset);
  if (zero) {
    std::memset(base, 0, StampFile::kFileSize);
    store_u32(base + kVersionOffset, StampFile::kVersion);
    store_u32(base + kSlotSizeOffset, static_cast<std::uint32_t>(StampFile::kSlotSize));
    store_u32(base + kSlotCountOffset, StampFile::kSlotCount);
    sequence.store(initial_sequence(), std::memory_order_release);
    // The magic last: a header with a magic is complete.
    store_u32(base + kMagicOffset, StampFile::kMagic);
  } else {
    if (load_u32(base + kMagicOffset) != StampFile::kMagic) {
      return refuse(path, "bad magic (not a dogpile stamps file)", StatusCode::kCorruption);
    }
    const std::uint32_t version = load_u32(base + kVersionOffset);
    if (version != StampFile::kVersion && version != 1) {
      return refuse(path,
                    "format version " + std::to_string(version) +
                        "; this build reads versions 1 and " + std::to_string(StampFile::kVersion),
                    StatusCode::kNotSupported);
    }
    if (load_u32(base + kSlotSizeOffset) != StampFile::kSlotSize ||
        load_u32(base + kSlotCountOffset) != StampFile::kSlotCount) {
      return refuse(path, "bad slot geometry in the header", StatusCode::kCorruption);
    }
    const std::int64_t before = sequence.load(std::memory_order_acquire);
    if (version == 1) raise_stamp(sequence, initial_sequence());
    repair_sequence(base);
    if (version == StampFile::kVersion && sequence.load(std::memory_order_acquire) == before) {
      return Status::ok();
    }
    // The version last: a version 2 header always has a sequence.
    store_u32(base + kVersionOffset, StampFile::kVersion);
  }
  if (::msync(base, StampFile::kFileSize, MS_SYNC) != 0) {
    return Status::io_error("cannot write invalidation stamps file", path, errno);
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

  std::int64_t sequence() const noexcept override { return file_->sequence(); }

  Status invalidate(bool hard) override {
    std::uint32_t slot = 0;
    if (Status s = file_->claim(hash_, slot); !s) return s;
    slot_.store(slot, std::memory_order_relaxed);
    std::int64_t stamp = 0;
    if (Status s = file_->next_sequence(sync_, stamp); !s) return s;
    return file_->raise(slot, hard ? StampFile::Kind::kHard : StampFile::Kind::kSoft, stamp,
                        sync_);
  }

  bool is_hard_invalidated(std::int64_t sequence) const noexcept override {
    return older_than(sequence, stamp(StampFile::Kind::kHard));
  }
  bool is_soft_invalidated(std::int64_t sequence) const noexcept override {
    return older_than(sequence, stamp(StampFile::Kind::kSoft));
  }
  bool was_hard_invalidated() const noexcept override {
    return stamp(StampFile::Kind::kHard) != 0;
  }
  bool was_soft_invalidated() const noexcept override {
    return stamp(StampFile::Kind::kSoft) != 0;
  }

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

std::int64_t initial_sequence() noexcept {
  return std::max<std::int64_t>(1, wall_ns(std::chrono::system_clock::now()));
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
  return int64_at(slot_field(slot, kind == Kind::kHard ? kHardOffset : kSoftOffset))
      .load(std::memory_order_acquire);
}

Status StampFile::raise(std::uint32_t slot, Kind kind, std::int64_t value, bool sync) {
  std::byte* field = slot_field(slot, kind == Kind::kHard ? kHardOffset : kSoftOffset);
  std::atomic_ref<std::int64_t> stamp = int64_at(field);
  raise_stamp(stamp, value);
  // The slot (hash and stamps) lies within one page.
  return sync ? sync_page(field) : Status::ok();
}

std::int64_t StampFile::sequence() const noexcept {
  return int64_at(mapping_.data() + kSequenceOffset).load(std::memory_order_acquire);
}

Status StampFile::next_sequence(bool sync, std::int64_t& out) {
  std::byte* field = mapping_.data() + kSequenceOffset;
  out = int64_at(field).fetch_add(1, std::memory_order_acq_rel) + 1;
  return sync ? sync_page(field) : Status::ok();
}

Status StampFile::sync_page(const std::byte* field) {
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
