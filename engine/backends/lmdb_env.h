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
// the environment's map lock shared, so absorbing another process's map growth
// (mdb_env_set_mapsize, which remaps) can take it exclusively.
//
// Thread safety: LmdbEnv is safe to share between threads; ReadTxn and
// WriteTxn objects belong to one thread at a time.
#pragma once

#include <lmdb.h>
#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dogpile/backend.h"
#include "dogpile/config.h"
#include "dogpile/lmdb_backend.h"
#include "dogpile/status.h"
#include "file_lock.h"

namespace dogpile::internal {

// Bumped in every fork()ed child. Relaxed: a process sees its own fork.
std::uint64_t fork_generation() noexcept;

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

struct LmdbEnvOptions {
  std::uint64_t map_size = 0;
  std::uint32_t max_regions = 0;
  std::uint32_t max_readers = 0;
  Durability durability = Durability::kDurable;
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
  // Prefix of a region's sub-database name in the main database.
  static constexpr std::string_view kRegionPrefix = "region:";
  // LMDB's main database stores sub-database names as keys (max 511 bytes).
  static constexpr std::size_t kMaxRegionNameSize = 511 - kRegionPrefix.size();

  // The environment of directory `dir` (which must exist) for this process
  // and fork generation: the registered one, or a new one opened with
  // `options`. Refuses data.mdb / lock.mdb that are symlinks, not regular
  // files, hard-linked or owned by another user.
  static Status acquire(const std::string& dir, const LmdbEnvOptions& options,
                        std::shared_ptr<LmdbEnv>& out);

  ~LmdbEnv();
  LmdbEnv(const LmdbEnv&) = delete;
  LmdbEnv& operator=(const LmdbEnv&) = delete;

  std::uint64_t generation() const noexcept { return generation_; }
  bool is_current() const noexcept { return generation_ == fork_generation(); }
  const std::string& path() const noexcept { return path_; }
  MDB_env* raw() const noexcept { return env_.get(); }
  LockFile& lock_file() const noexcept { return *lock_file_; }
  const LmdbEnvOptions& options() const noexcept { return options_; }

  // The sub-database of region `region` ("region:<name>"), created if
  // missing. Empty names and names containing NUL are refused.
  Status open_region(std::string_view region, MDB_dbi& out);

  Status begin_read(ReadTxn& out);
  Status begin_write(WriteTxn& out);

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

  // mdb_txn_begin with the MDB_MAP_RESIZED / MDB_READERS_FULL retries; on
  // success `lock` holds the map lock shared.
  Status begin(unsigned flags, MDB_txn*& txn, std::shared_lock<std::shared_mutex>& lock);
  void recycle_reader(MDB_txn* txn) noexcept;

  const std::string path_;
  const LmdbEnvOptions options_;
  const std::uint64_t generation_;
  // Set (under the registry lock) once the registry lists this environment.
  Registry* registry_ = nullptr;
  Key key_{};

  EnvHandle env_;
  std::shared_ptr<LockFile> lock_file_;
  std::shared_mutex map_mutex_;  // shared: any transaction; exclusive: remapping

  std::mutex readers_mutex_;
  std::vector<TxnPtr> readers_;  // reset read transactions, reused via mdb_txn_renew

  std::mutex dbis_mutex_;
  std::map<std::string, MDB_dbi, std::less<>> dbis_;  // sub-database name -> handle
  std::uint32_t regions_open_ = 0;
};

// The "lmdb" registry factory (in lmdb_backend.cc).
Status make_lmdb_backend(std::string_view region, const ConfigMap& arguments,
                         std::unique_ptr<Backend>& out);
// open_lmdb_backend without the throw.
Status open_lmdb_backend(const LmdbOptions& options, std::unique_ptr<Backend>& out);

}  // namespace dogpile::internal
