// Store: looking inside an lmdb cache directory and keeping it in shape.
//
// A Store opens a cache directory without knowing the C++ types stored in it
// (it reads envelope headers, docs/format.md) and offers what an operator
// needs: per-region statistics kept in the store by every process (and
// zeroing them), listing and reading entries, erasing, purging expired (or
// old) entries, clearing regions, invalidating, verifying every checksum
// and index entry, and writing a compacted copy. The `dogpile` command is a
// thin shell over this class.
//
// Purge and clear work in bounded batches of write transactions, so a
// writer in another process never waits long behind them. Verify reads one
// snapshot, so writers may carry on while it runs.
//
// Errors are dogpile::Error subclasses naming the path. "Not found" (no
// cache in the directory, an unknown region for clear) is a StoreError with
// code kIOError and sys_errno() ENOENT; a missing entry is never an error.
//
// Thread safety: a Store may be used by any number of threads at once; the
// progress callbacks run on the calling thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dogpile/clock.h"
#include "dogpile/config.h"
#include "dogpile/envelope.h"
#include "dogpile/lmdb_backend.h"
#include "dogpile/usage_counters.h"

namespace dogpile {

struct RegionUsage {
  std::string name{};
  std::uint64_t entries = 0;  // stored entries
  std::uint64_t bytes = 0;    // pages the region's entries occupy, in bytes
  UsageCounters counters{};
  // The region's invalidation stamps (Region::invalidate): entries whose
  // sequence is below them are missing (hard) or stale (soft). 0: never.
  std::int64_t hard_stamp = 0;
  std::int64_t soft_stamp = 0;
};

// Whether an entry's region invalidated it after its creation started.
enum class Invalidated { kNo, kSoft, kHard };

struct StoreStats {
  std::string path{};
  std::vector<RegionUsage> regions{};  // sorted by name
  RegionUsage total{};                 // name "total": the sum over regions
  std::uint64_t map_size = 0;        // current size of this process's memory map
  // The lmdb option max_size (the most the map grows to) of the last process
  // that opened the cache with the lmdb backend, as it recorded it in the
  // store (docs/format.md). A per-process setting: processes that opened
  // the cache with another one keep theirs. nullopt: none recorded.
  std::optional<std::uint64_t> max_size{};
  std::uint64_t file_size = 0;       // data.mdb on disk
  // The data file's pages up to the last one written, in one snapshot:
  // those in use (the meta pages and every tree's, the free list's own
  // included) and those on LMDB's free list, which later writes reuse once
  // no reader still sees them (compact drops them).
  std::uint32_t page_size = 0;
  std::uint64_t used_pages = 0;
  std::uint64_t free_pages = 0;
  std::uint64_t used_bytes = 0;  // used_pages * page_size
  std::uint64_t free_bytes = 0;  // free_pages * page_size
  std::uint32_t readers_used = 0;    // reader table slots in use
  std::uint32_t max_readers = 0;
};

// One entry as its envelope header describes it.
struct EntryInfo {
  std::string region{};
  std::string key{};            // the full key (from the envelope for hashed keys)
  std::uint64_t size = 0;       // stored bytes (the envelope)
  std::uint64_t write_seq = 0;  // position in write order (eviction goes lowest first)
  bool valid = false;           // header and checksum check out; the fields below are set
  std::string problem{};        // why not valid ("bad checksum", "truncated", ...)
  EnvelopeMeta meta{};
  std::uint64_t payload_size = 0;
  Invalidated invalidated = Invalidated::kNo;  // by its region's stamps (hard wins)
};

// An entry and its bytes.
struct Entry {
  EntryInfo info{};
  std::string envelope{};  // the stored envelope
  std::string payload{};   // the payload when info.valid
};

struct ListOptions {
  // Only this region. Default: every region.
  std::optional<std::string> region{};
  // Only keys starting with this. Default: every key.
  std::string prefix{};
  // At most this many entries. Default: no limit (0).
  std::uint64_t limit = 0;
};

struct VerifyProblem {
  std::string region{};  // empty for problems of the store itself
  std::string key{};     // the key (or stored key, printable) concerned
  std::string what{};    // "bad checksum", "index entry points to a missing entry", ...
};

struct VerifyReport {
  std::uint64_t entries = 0;        // entries checked
  std::uint64_t index_entries = 0;  // index entries checked
  std::vector<VerifyProblem> problems{};
  bool ok() const noexcept { return problems.empty(); }
};

struct PurgeOptions {
  // Also remove every entry created more than this long ago (its envelope's
  // created_at against the store's clock), expired or not. Must be above 0.
  // Default: none (only expired entries go).
  std::optional<Duration> older_than{};
  // Most entries removed, and with older_than most looked at, per write
  // transaction. Default: 1000.
  std::uint64_t batch = 1000;
};

struct PurgeReport {
  std::uint64_t removed = 0;  // expired entries removed
  std::uint64_t scanned = 0;  // entries with an expiry (in the expiry index) when it began
  // With older_than: entries removed for their age (after the expired ones),
  // and the entries whose age was looked at (all written before it began).
  std::uint64_t removed_older = 0;
  std::uint64_t examined = 0;
};

// What zero_stats() reset.
struct ZeroReport {
  std::uint64_t regions = 0;  // regions whose usage counters were reset
  UsageCounters counters{};   // what they had counted, summed
};

// Called as work proceeds: `done` of `total` units (entries; bytes for
// compact). The last call has done == total.
using Progress = std::function<void(std::uint64_t done, std::uint64_t total)>;

struct StoreOptions {
  // Cache directory. Default: default_cache_dir().
  std::string path{};
  // Refuse a directory that does not hold a cache yet, rather than create one.
  // Default: true (inspection must not create caches by accident).
  bool must_exist = true;
  // Used only when this process opens the directory first (LmdbOptions);
  // never recorded in the store, so stats() shows the max_size of the
  // programs that use the cache, not this one.
  // Default: as LmdbOptions.
  std::uint64_t max_size = LmdbOptions{}.max_size;
  std::uint32_t max_regions = LmdbOptions{}.max_regions;
  Durability durability = Durability::kDurable;
  // Wall clock purge() judges expiry and age by.
  // Default: system_clock().
  std::shared_ptr<Clock> clock{};
};

class Store {
 public:
  // Opens the cache directory. Throws StoreError naming the path (kIOError
  // with sys_errno() ENOENT when must_exist and there is no cache there, and
  // nothing is created), ConfigError for bad options.
  static Store open(const StoreOptions& options);

  Store(Store&&) noexcept;
  Store& operator=(Store&&) noexcept;
  ~Store();

  const std::string& path() const noexcept;

  // Region names, sorted.
  std::vector<std::string> regions();
  // Regions with entries or usage counters, sorted by name.
  StoreStats stats();
  // Entries in region order, then stored-key order (long, hashed keys first
  // in each region). Corrupt entries are listed with valid false; a hashed
  // one whose full key cannot be read matches only an empty prefix. An
  // unknown region has no entries.
  std::vector<EntryInfo> list(const ListOptions& options = {});
  // The entry stored for `key` in `region`; false when there is none. A
  // corrupt entry is returned with info.valid false.
  bool get(std::string_view region, std::string_view key, Entry& out);
  // Whether an entry was removed.
  bool erase(std::string_view region, std::string_view key);
  // Removes every entry past its expires_at (now, by the store's clock), at
  // most `batch` per write transaction; progress counts removed entries of
  // those in the expiry index.
  PurgeReport purge(const Progress& progress = {}, std::uint64_t batch = 1000);
  // purge(), and then with options.older_than every entry created longer
  // ago than that, walking the write index in batches; progress counts the
  // expiry index's entries and then the entries looked at. Entries written
  // while it runs are left alone, and entries that are no envelope stay
  // (verify reports them). Removals for age count in no usage counter. A
  // bad option is a ConfigError naming it.
  PurgeReport purge(const PurgeOptions& options, const Progress& progress = {});
  // Resets the usage counters (StoreStats' counters) of `region`, or of
  // every region, in one write transaction, and returns what they held.
  // Processes add to the counters in write transactions of their own, so no
  // addition is lost or counted twice: each lands before the reset (and is
  // in the report) or after it. Regions publish in batches
  // (RegionOptions::stats_interval), so reads made shortly before the reset
  // may still arrive after it. An unknown region is a StoreError (ENOENT).
  ZeroReport zero_stats(std::optional<std::string_view> region = std::nullopt);
  // Removes every entry of `region`, or of every region; returns how many.
  // Usage counters stay. An unknown region is a StoreError (ENOENT).
  std::uint64_t clear(std::optional<std::string_view> region = std::nullopt);
  // Region::invalidate for a region by name, seen by every process at its
  // next read. A region that has stored nothing yet may be invalidated.
  void invalidate(std::string_view region, bool hard = true);
  // Checks every entry's envelope and checksum and every index entry, both
  // ways: each entry has its index entries and each index entry names an
  // existing entry with the same write sequence.
  VerifyReport verify(const Progress& progress = {});
  // Writes a compacted copy (data.mdb, plus the invalidation stamps) into
  // `dest`, which must not exist or be an empty directory; anything else is
  // a ConfigError naming it. The copy is written in compact_staging_path(dest)
  // and renamed to `dest` only when it is complete and synced, so `dest`
  // never holds a partial copy. A staging directory left by a killed compact
  // is cleared and used again; one in use by a running compact is a
  // StoreError (sys_errno() EWOULDBLOCK).
  //
  // `progress` counts bytes of the copy's data.mdb: `total` is what the copy
  // will hold, the source's pages in use less its free pages and free list,
  // and `done` stays below it until the copy is synced and in place. The
  // last call, then, has done == total == the copy's size (a writer in
  // another process may have changed the total meanwhile).
  void compact(const std::string& dest, const Progress& progress = {});
  // The staging directory of a compact into `dest`: `.<name>.compacting`
  // beside it, 0700. A program that is interrupted during compact may remove
  // the files compact writes there (data.mdb, region-stamps) and the
  // directory itself.
  static std::string compact_staging_path(const std::string& dest);

 private:
  struct Impl;
  explicit Store(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace dogpile
