// Internal: invalidation stamps kept in the cache directory.
//
// `region-stamps` is a fixed-size file (docs/format.md, "Invalidation stamps")
// that every process sharing the directory maps MAP_SHARED: a header holding
// the directory's sequence, then slots of {region-name hash, hard stamp, soft
// stamp} found by open addressing on the hash. Readers and writers use
// lock-free atomics on the mapping, so a read costs an atomic load or two and
// a process that dies in the middle of a write leaves the file valid: a slot
// is claimed by one compare-and-swap of its hash (0 = free), an invalidation
// draws its stamp by one fetch-add of the sequence, and a stamp is raised by a
// compare-and-swap loop that never lowers it. Slots are never freed, so a
// probe that meets a free slot knows the region has none. Only opening the
// file takes a lock (an OFD lock on its first byte), so that no process maps
// a file whose header is still being written, and so that the opener may
// repair a sequence left behind a stamp by a crash.
//
// No descriptor stays open: the mapping alone keeps the file, and it is
// inherited by a fork()ed child, where it stays valid and shared.
//
// Thread safety: StampFile and the strategy built on it are safe for any
// number of threads at once.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "dogpile/clock.h"
#include "dogpile/invalidation.h"
#include "dogpile/status.h"

namespace dogpile::internal {

// Where a new sequence starts: the real clock's nanoseconds since the epoch,
// at least 1 because a stamp of 0 means "never invalidated". Starting there
// rather than at 1 keeps a sequence recreated after its file was removed
// above the numbers entries were given before (docs/design.md, rule I1).
std::int64_t initial_sequence() noexcept;

// Raises `stamp` (std::atomic or std::atomic_ref of int64) to at least
// `value`; stamps never move back.
template <class AtomicInt64>
void raise_stamp(AtomicInt64& stamp, std::int64_t value) noexcept {
  std::int64_t current = stamp.load(std::memory_order_relaxed);
  while (current < value &&
         !stamp.compare_exchange_weak(current, value, std::memory_order_acq_rel,
                                      std::memory_order_relaxed)) {
  }
}

// Whether an entry created with `sequence` is older than `stamp` (0: never).
inline bool older_than(std::int64_t sequence, std::int64_t stamp) noexcept {
  return stamp != 0 && sequence < stamp;
}

// A shared read-write memory mapping: munmap on destruction.
class Mapping {
 public:
  Mapping() noexcept = default;
  Mapping(void* data, std::size_t size) noexcept : data_(data), size_(size) {}
  Mapping(Mapping&& other) noexcept;
  Mapping& operator=(Mapping&& other) noexcept;
  ~Mapping();
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

  std::byte* data() const noexcept { return static_cast<std::byte*>(data_); }
  std::size_t size() const noexcept { return size_; }

 private:
  void* data_ = nullptr;
  std::size_t size_ = 0;
};

class StampFile {
 public:
  static constexpr const char* kFileName = "region-stamps";
  static constexpr std::uint32_t kMagic = 0x53504744;  // bytes "DGPS" on a little-endian host
  static constexpr std::uint32_t kVersion = 2;
  static constexpr std::size_t kFileSize = std::size_t{64} << 10;
  static constexpr std::size_t kHeaderSize = 64;
  static constexpr std::size_t kSlotSize = 32;
  static constexpr std::uint32_t kSlotCount =
      static_cast<std::uint32_t>((kFileSize - kHeaderSize) / kSlotSize);

  enum class Kind { kHard, kSoft };

  // Opens the stamps file at `path`, creating and initialising it when it is
  // missing or empty, upgrading a version 1 file in place, and raising a
  // sequence found behind one of the stamps (a crash between the two
  // writes). Refuses a symlink, a non-regular or hard-linked file, a
  // file of another user, and a file of another size, magic or version, with
  // a Status naming the path.
  static Status open(const std::string& path, std::shared_ptr<StampFile>& out);

  // The slot key of region `region`: XXH3-64 of its name, never 0.
  static std::uint64_t region_hash(std::string_view region) noexcept;

  // The slot holding `hash`, or -1 when none does (the region was never
  // invalidated). Lock-free; usually one atomic load.
  std::int64_t find(std::uint64_t hash) const noexcept;
  // The slot holding `hash`, claimed when there is none; kFull when every
  // slot belongs to another region.
  Status claim(std::uint64_t hash, std::uint32_t& slot);

  // A stamp of `slot` (0: never).
  std::int64_t stamp(std::uint32_t slot, Kind kind) const noexcept;
  // Raises a stamp of `slot` to at least `value`; with `sync`, waits until
  // the slot's page is on disk.
  Status raise(std::uint32_t slot, Kind kind, std::int64_t value, bool sync);

  // The directory's sequence: what a creation starting now records.
  std::int64_t sequence() const noexcept;
  // Advances the sequence by one and returns the new value, a number no
  // caller was handed before: the stamp of one invalidation. With `sync`,
  // waits until the header's page is on disk.
  Status next_sequence(bool sync, std::int64_t& out);

  const std::string& path() const noexcept { return path_; }

 private:
  StampFile(std::string path, Mapping mapping) noexcept
      : path_(std::move(path)), mapping_(std::move(mapping)) {}

  Status sync_page(const std::byte* field);

  std::byte* slot_field(std::uint32_t slot, std::size_t offset) const noexcept {
    return mapping_.data() + kHeaderSize + std::size_t{slot} * kSlotSize + offset;
  }

  const std::string path_;
  const Mapping mapping_;
};

// The lmdb backend's strategy: region `region`'s slot of the stamps file of
// cache directory `dir`. With `sync`, invalidate() returns once the stamp is
// on disk.
Status open_stamp_invalidation(const std::string& dir, std::string_view region, bool sync,
                               std::shared_ptr<InvalidationStrategy>& out);

}  // namespace dogpile::internal
