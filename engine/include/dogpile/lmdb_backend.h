// LMDB backend: a cache directory on local disk shared by many processes.
//
// A cache directory holds one LMDB environment (data.mdb, lock.mdb) and one
// creation-lock file (creation.lock). Each region is a named sub-database of
// the environment. Every process opens each directory once (found by device
// and inode), shares that environment among all its regions and threads, and
// reopens it after fork(). Keys longer than 510 bytes (kMaxInlineKeySize) are
// stored under their XXH3-128 hash; the region confirms the full key from the
// envelope. Creation
// locks are Linux OFD byte-range locks on creation.lock: they exclude threads
// and processes alike, and the kernel drops them when a holder dies.
// Invalidation stamps (Region::invalidate) live in region-stamps, mapped by
// every process, so an invalidation is seen at the next read and survives
// restarts (docs/format.md).
//
// The store manages its size: the map starts at 1 MiB and grows as needed up
// to max_size; at max_size, writes evict expired entries first, then the
// least recently written, across all regions of the directory. A write that
// cannot fit (above half of max_size, or still too big after eviction) fails
// with kFull (CacheFull at the Region API). Regions' usage counters, and the
// evictions, are kept in the directory for every process to read
// (docs/format.md, "LMDB store layout").
//
// Read-only: with the read_only option, or on its own when the directory
// holds a cache this user may read but not write (a read-only copy or
// mount), the backend serves reads and refuses writes, erases and
// invalidations with kReadOnly (ReadOnlyError at the Region API); it creates
// nothing, its creation locks are the region's in-process ones, and it keeps
// no usage counters. Region::get_or_create still returns what the creator
// made.
//
// The cache directory must be owned by this user and writable by no one else
// (check_cache_dir); cache files that are symlinks, hard links, not regular
// files or owned by another user are refused.
//
// Registry name "lmdb"; arguments: path, region, max_size, max_regions,
// max_readers, durability, read_only.
//
// Thread safety: a backend may be used by any number of threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "dogpile/backend.h"

namespace dogpile {

enum class Durability {
  kDurable,     // every commit is synced to disk (MDB default)
  kNoMetaSync,  // meta page not synced: the last commit may be lost on power loss
  kNoSync,      // no syncs: power loss may lose recent commits or corrupt the file
};

struct LmdbOptions {
  // Cache directory, created 0700 when missing.
  // Default: default_cache_dir() ($DOGPILE_DIR, $XDG_CACHE_HOME/dogpile, ~/.cache/dogpile).
  std::string path{};
  // Sub-database holding this backend's entries.
  // Default: "default".
  std::string region = "default";
  // The most the store may hold: the largest its memory map (and data.mdb)
  // grows to before writes evict entries. Fixed by the first opener of a
  // directory in each process.
  // Default: 1 GiB.
  std::uint64_t max_size = std::uint64_t{1} << 30;
  // Most named sub-databases (regions) the environment can hold; fixed by the
  // first opener of a directory in each process.
  // Default: 128.
  std::uint32_t max_regions = 128;
  // Most concurrent read transactions across all processes.
  // Default: 510.
  std::uint32_t max_readers = 510;
  // Default: Durability::kDurable.
  Durability durability = Durability::kDurable;
  // Serve reads only: writes fail with kReadOnly and nothing is created in
  // the directory, which must hold a cache. Without a writable lock.mdb the
  // store is read with no reader slot, so nothing may write it meanwhile.
  // A cache this user cannot write is opened read-only without it.
  // Default: false.
  bool read_only = false;
};

// Opens (or creates) the cache directory and the region's sub-database.
// Throws StoreError naming the path and errno when it cannot (ReadOnlyError
// when read-only and the store cannot be read as it is), ConfigError for bad
// options.
std::unique_ptr<Backend> open_lmdb_backend(const LmdbOptions& options);

}  // namespace dogpile
