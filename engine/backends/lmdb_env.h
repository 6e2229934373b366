// Internal: one LMDB environment per cache directory per process.
//
// LMDB must not have the same files open twice in one process: closing either
// handle drops the process's fcntl locks on lock.mdb, which the other handle
// still relies on. So every backend on a directory shares one LmdbEnv, found
// in a process-wide registry by the directory's (st_dev, st_ino). The options
// of the first opener win (map size, max_regions, max_readers, durability);
// later openers on the same directory get the environment as it is until all
// of its backends are gone.
//
// fork(): an MDB_env must not be used in a child, nor closed there (closing
// drops the child's fcntl locks on lock.mdb, its own reopened environment's
// included, and clears reader slots of the child's pid). A pthread_atfork
// child handler bumps a fork generation; an LmdbEnv remembers the generation
// it was opened in, backends reopen when theirs is stale, and an LmdbEnv
// released in another generation is leaked.
//
// Transactions are short and never span user code. Every transaction holds
// the environment's map lock shared, so growing the map or absorbing another
// process's growth (mdb_env_set_mapsize, which remaps) can take it
// exclusively. A thread must therefore never begin a write (write() or
// begin_write) while it holds another transaction of this environment.
//
// The map starts small (LMDB's default, or what the file already needs) and
// write() grows it on MDB_MAP_FULL up to max_size, then evicts
// (docs/format.md, "LMDB store layout"). mdb_env_set_mapsize unmaps before
// it maps again and leaves the environment without a map when mmap fails, so
// every remap is tried with a mapping of its own first; should LMDB still
// fail, the environment is marked broken and refuses transactions instead
// of crashing in them.
//
// Read-only: with LmdbEnvOptions::read_only, or when the directory holds a
// cache this user may read but not write (directory or data.mdb), the
// environment opens MDB_RDONLY (plus MDB_NOLOCK when lock.mdb cannot be
// opened for writing: such an opener has no reader slot, so nothing may
// write the cache meanwhile), creates nothing, opens no creation.lock, and
// write() fails with kReadOnly.
//
// Thread safety: LmdbEnv is safe to share between threads; ReadTxn and
// WriteTxn objects belong to one thread at a time.
#pragma once

#include <lmdb.h>
#include <sys/types.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dogpile/backend.h"
#include "dogpile/config.h"
#include "dogpile/lmdb_backend.h"
#include "dogpile/status.h"
#include "backends/lmdb_layout.h"
#include "file_lock.h"
#include "fork_local.h"

namespace dogpile::internal {

// Maps an LMDB or errno return code to a Status about `what` on `path`.
Status lmdb_status(int rc, std::string_view what, const std::string& path);

// Owns an MDB_env handle: mdb_env_close on destruction.
class EnvHandle {
 public:
  EnvHandle() noexcept = default;
  explicit EnvHandle(MDB_env* env) noexcept : env_(env) {}
  EnvHandle(EnvHandle&& other) noexcept : env_(std::exchange(other.env_, nullptr)) {}
  EnvHandle& operator=(EnvHandle&& other) noexcept;
  ~EnvHandle();

  MDB_env* get() const noexcept { return env_; }

 private:
  MDB_env* env_ = nullptr;
};

// Owns an MDB_txn that is not in use (a reset reader): aborts it on destruction.
struct TxnAbort {
  void operator()(MDB_txn* txn) const noexcept { mdb_txn_abort(txn); }
};
using TxnPtr = std::unique_ptr<MDB_txn, TxnAbort>;

class LmdbEnv;

// A read-only transaction. Ends (back to the env's pool of reset readers) on
// destruction or end(); copy data out before that.
class ReadTxn {
 public:
  ReadTxn() noexcept = default;
  ReadTxn(ReadTxn&& other) noexcept;
  ReadTxn& operator=(ReadTxn&& other) noexcept;
  ~ReadTxn() { end(); }

  MDB_txn* get() const noexcept { return txn_; }
  void end() noexcept;

 private:
  friend class LmdbEnv;

  LmdbEnv* env_ = nullptr;
  MDB_txn* txn_ = nullptr;
  std::shared_lock<std::shared_mutex> map_lock_;
};

// A write transaction: aborted on destruction unless commit() was called.
class WriteTxn {
 public:
  WriteTxn() noexcept = default;
  WriteTxn(WriteTxn&& other) noexcept;
  WriteTxn& operator=(WriteTxn&& other) noexcept;
  ~WriteTxn() { abort(); }

  MDB_txn* get() const noexcept { return txn_; }
  // Commits; the transaction is over whatever the result.
  Status commit();
  void abort() noexcept;

 private:
  friend class LmdbEnv;

  LmdbEnv* env_ = nullptr;
  MDB_txn* txn_ = nullptr;
  std::shared_lock<std::shared_mutex> map_lock_;
};

// The defaults are LmdbOptions'.
struct LmdbEnvOptions {
  // Largest size the map may grow to (LmdbOptions::max_size).
  std::uint64_t map_size = std::uint64_t{1} << 30;
  std::uint32_t max_regions = 128;
  std::uint32_t max_readers = 510;
  Durability durability = Durability::kDurable;
  // Open without writing anything (LmdbOptions::read_only).
  bool read_only = false;
};

class LmdbEnv {
 public:
  // Sub-databases reserved beyond max_regions for the engine's own use.
  static constexpr std::uint32_t kInternalDatabases = 8;
  // Most regions one environment may be configured for (LMDB allocates and
  // searches per-transaction arrays of this size).
  static constexpr std::uint32_t kMaxRegionsLimit = 32767;
  // Reset read transactions kept for reuse. Each keeps a reader slot (of
  // max_readers, shared by all processes), so the pool stays small and is
  // emptied when the reader table is full.
  static constexpr std::size_t kReaderPoolSize = 8;
  // LMDB's map size for a new file when none is set: where maps start.
  static constexpr std::uint64_t kDefaultMapSize = std::uint64_t{1} << 20;
  // Prefix of a region's sub-database name in the main database.
  static constexpr std::string_view kRegionPrefix = "region:";
  // LMDB's main database stores sub-database names as keys (max 511 bytes).
  static constexpr std::size_t kMaxRegionNameSize = 511 - kRegionPrefix.size();

  // The environment of directory `dir` (which must exist) for this process
  // and fork generation: the registered one, or a new one opened with
  // `options`. Refuses a directory check_cache_dir refuses (another owner,
  // group or world writable), and data.mdb / lock.mdb that are symlinks, not
  // regular files, hard-linked or owned by another user.
  static Status acquire(const std::string& dir, const LmdbEnvOptions& options,
                        std::shared_ptr<LmdbEnv>& out);

  ~LmdbEnv();
  LmdbEnv(const LmdbEnv&) = delete;
  LmdbEnv& operator=(const LmdbEnv&) = delete;

  std::uint64_t generation() const noexcept { return generation_; }
  bool is_current() const noexcept { return generation_ == fork_generation(); }
  const std::string& path() const noexcept { return path_; }
  MDB_env* raw() const noexcept { return env_.get(); }
  // The directory's creation.lock; nullptr when the environment is read-only.
  LockFile* lock_file() const noexcept { return lock_file_.get(); }
  const LmdbEnvOptions& options() const noexcept { return options_; }
  // Whether the environment was opened read-only (by option or because this
  // user cannot write the cache), and why.
  bool read_only() const noexcept { return read_only_; }
  const std::string& read_only_reason() const noexcept { return read_only_reason_; }
  // The kReadOnly refusal of a write to this environment.
  Status read_only_error(std::string_view what) const;

  // Handles of the store's own tables (_meta, _written, _expiry).
  const StoreDbs& store_dbs() const noexcept { return dbs_; }
  // Largest size the map grows to by itself (the first opener's max_size).
  std::uint64_t max_size() const noexcept { return options_.map_size; }
  // Current size of this process's map (0 once the environment is broken).
  std::uint64_t map_size() const noexcept { return map_size_.load(std::memory_order_acquire); }

  // Region `region` (sub-database "region:<name>" and its id in _meta),
  // created if missing (kReadOnly when it is missing from a read-only
  // environment). Empty names, names containing NUL and names over
  // kMaxRegionNameSize are refused. A handle is opened once per process, in
  // a write transaction of its own (which serialises mdb_dbi_open as LMDB
  // requires), so these three must not be called while the calling thread
  // holds a transaction, nor from a write() body.
  Status open_region(std::string_view region, RegionRef& out);
  // Region `region` if the store has one; creates nothing (its transaction
  // changes nothing, so its commit writes nothing).
  Status find_region(std::string_view region, std::optional<RegionRef>& out);
  // Every region the store names in _meta, sorted by name.
  Status list_regions(std::vector<RegionRef>& out);
  // The region with id `id` for use in `txn`, a write transaction. A handle
  // this process has not opened yet is opened in `txn` and not remembered:
  // it lasts only if `txn` commits.
  Status region_by_id(MDB_txn* txn, std::uint32_t id, std::optional<RegionRef>& out);

  Status begin_read(ReadTxn& out);
  Status begin_write(WriteTxn& out);

  // Runs `body` in a write transaction and commits it. When the map is full
  // (MDB_MAP_FULL from body or commit) the transaction is aborted, and the
  // map grown (up to max_size) or, at max_size, entries evicted in
  // transactions of their own; then body runs again in a new transaction, so
  // it must do all its work on the transaction it is given, and return kFull
  // only for MDB_MAP_FULL. `bytes` is what body writes (record bytes); a
  // write above half of max_size, or one that still does not fit after
  // kEvictionRounds, fails with kFull. When a read transaction older than the
  // eviction (a long-lived reader) kept the freed pages from reuse, the
  // kFull names it, and while it stays later writes fail at once, evicting
  // nothing more. A read-only environment fails with kReadOnly.
  using WriteBody = std::function<Status(MDB_txn* txn)>;
  Status write(const WriteBody& body, std::uint64_t bytes);

  // Eviction rounds a write may cause before it fails with kFull.
  static constexpr int kEvictionRounds = 3;
  // Times one transaction begin adopts another process's larger map before
  // it gives up (the other process may keep growing it meanwhile).
  static constexpr int kRemapAttempts = 8;
  // A short write with less than this free on the file system is a full
  // file system (ENOSPC).
  static constexpr std::uint64_t kNearlyFull = std::uint64_t{1} << 20;
  // Most entries one eviction transaction removes.
  static constexpr std::uint64_t kEvictionBatch = 4096;

  // lmdb_status with this environment's path.
  Status status(int rc, std::string_view what) const { return lmdb_status(rc, what, path_); }

 private:
  friend class ReadTxn;
  friend class WriteTxn;
  struct Registry;
  struct Deleter;
  using Key = std::pair<dev_t, ino_t>;

  // The registry of this fork generation.
  static Registry& current_registry();

  LmdbEnv(std::string path, const LmdbEnvOptions& options, std::uint64_t generation);
  // Checks the files, opens the environment and the lock file.
  Status open();
  // Decides whether to open read-only (read_only_, read_only_reason_).
  Status choose_mode(const std::string& data_path);
  // Opens the store tables and writes the layout record, emptying a store
  // of another layout.
  Status open_store();
  // open_store for a read-only environment: the tables must exist in this
  // layout.
  Status open_store_read_only();
  // Runs `body` in a read transaction that is committed, so that database
  // handles it opens stay open; such calls are serialised (mdb_dbi_open
  // calls must not overlap). For read-only environments, which cannot use
  // a write transaction for that.
  Status read_keeping_handles(const WriteBody& body);
  // Remaps to `size` bytes (at least what the data needs). The caller holds
  // map_mutex_ exclusively.
  Status remap(std::uint64_t size, std::string_view what);
  // Remaps to cover what another process wrote past our map (after
  // MDB_MAP_RESIZED). The caller holds map_mutex_ exclusively.
  Status adopt_map();
  // The error of every transaction once broken_ is set.
  Status broken_error() const;
  // The Status of a failed mdb_txn_commit, with the cause of a short write
  // (LMDB's EIO) found: a full file system or RLIMIT_FSIZE.
  Status commit_status(int rc) const;
  // The id of the last committed transaction.
  std::uint64_t last_txnid();
  // The oldest read transaction in the reader table (pid and the
  // transaction id it reads), if any.
  struct Reader {
    int pid = 0;
    std::uint64_t txnid = 0;
  };
  std::optional<Reader> oldest_reader() const;
  // kFull naming `reader`, which keeps eviction from making room.
  Status pinned_error(std::uint64_t bytes, std::uint64_t map, const Reader& reader) const;

  // One attempt of write(): body and commit in one transaction; `map` is
  // the map size the transaction ran with.
  Status write_once(const WriteBody& body, std::uint64_t& map);
  // Grows the map past `seen` (unless another thread already did).
  Status grow(std::uint64_t seen, std::uint64_t bytes);
  // One eviction round for a write of `bytes` that found map size `map`
  // full: frees max(map / 4, 2 * bytes) record bytes, or what there is, in
  // committed transactions; `freed` says how many it freed.
  Status evict_round(std::uint64_t bytes, std::uint64_t map, std::uint64_t& freed);
  Status full_error(std::uint64_t bytes, std::uint64_t map, std::string_view why) const;
  // Checks a region name and builds its sub-database name.
  Status region_db_name(std::string_view region, std::string& out) const;
  // Remembers an opened region; false when max_regions are already open.
  bool remember_region(const RegionRef& ref);

  // mdb_txn_begin with the MDB_MAP_RESIZED / MDB_READERS_FULL retries; on
  // success `lock` holds the map lock shared.
  Status begin(unsigned flags, MDB_txn*& txn, std::shared_lock<std::shared_mutex>& lock);
  // A pooled reader (reset), or nullptr when the pool is empty.
  TxnPtr take_reader() noexcept;
  // Resets `txn` and pools it; aborts it when the pool is full.
  void recycle_reader(MDB_txn* txn) noexcept;
  // Aborts every pooled reader, giving back their reader slots.
  void drain_readers() noexcept;

  const std::string path_;
  const LmdbEnvOptions options_;
  const std::uint64_t generation_;
  // Set (under the registry lock) once the registry lists this environment.
  Registry* registry_ = nullptr;
  Key key_{};

  EnvHandle env_;
  std::shared_ptr<LockFile> lock_file_;  // null when read-only
  std::shared_mutex map_mutex_;  // shared: any transaction; exclusive: remapping
  std::atomic<std::uint64_t> map_size_{0};  // changed under map_mutex_ exclusively
  // Set (under map_mutex_ exclusively) when LMDB lost its map in a failed
  // remap: no transaction may begin any more.
  std::atomic<bool> broken_{false};
  bool read_only_ = false;  // set by open, then constant
  std::string read_only_reason_;
  int read_only_errno_ = 0;
  std::mutex dbi_mutex_;  // serialises read_keeping_handles
  // While not 0: a write found that a reader older than this transaction id
  // kept eviction from making room; writes that need room fail at once
  // while such a reader remains.
  std::atomic<std::uint64_t> pinned_before_{0};

  // Reset read transactions, reused via mdb_txn_renew. A slot is emptied or
  // filled with one atomic exchange, so a read takes no lock for its reader.
  std::array<std::atomic<MDB_txn*>, kReaderPoolSize> readers_{};

  StoreDbs dbs_;  // set by open_store, then constant
  bool store_open_ = false;

  // Opened regions. Never held while beginning a transaction: a writer may
  // need it to look up a region.
  std::mutex regions_mutex_;
  std::map<std::string, RegionRef, std::less<>> regions_;  // by name
  std::map<std::uint32_t, std::string> region_names_;       // id -> name
};

// Reads that lend the stored bytes instead of copying them out. The lmdb
// backend implements it (Region finds it with dynamic_cast, so a proxy in
// front hides it) and Region uses it for byte-like values only: decoding
// those runs no user code, and no user code may run while `use` does.
class InPlaceReader {
 public:
  // Called with the bytes stored at the key, or nullptr on a miss, while
  // they are valid (inside the read transaction).
  using Use = void (*)(void* context, const std::string_view* bytes);
  // Backend::get without the copy.
  virtual Status read_in_place(std::string_view key, Use use, void* context) = 0;
  // Called as Use, with the position of the key in the keys read.
  using UseAt = void (*)(void* context, std::size_t index, const std::string_view* bytes);
  // Backend::get_multi without the copies: `use` once per key, in order, in
  // one read transaction.
  virtual Status read_multi_in_place(std::span<const std::string> keys, UseAt use,
                                     void* context) = 0;

 protected:
  ~InPlaceReader() = default;
};

// The "lmdb" registry factory (in lmdb_backend.cc).
Status make_lmdb_backend(std::string_view region, const ConfigMap& arguments,
                         std::unique_ptr<Backend>& out);
// open_lmdb_backend without the throw.
Status open_lmdb_backend(const LmdbOptions& options, std::unique_ptr<Backend>& out);

}  // namespace dogpile::internal
