#include "backends/lmdb_env.h"

#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>

#include "dogpile/envelope.h"

namespace dogpile::internal {
namespace {

std::atomic<std::uint64_t> g_fork_generation{0};
std::once_flag g_atfork_once;

void on_fork_child() noexcept { g_fork_generation.fetch_add(1, std::memory_order_relaxed); }

unsigned durability_flags(Durability durability) {
  switch (durability) {
    case Durability::kDurable: return 0;
    case Durability::kNoMetaSync: return MDB_NOMETASYNC;
    case Durability::kNoSync: return MDB_NOSYNC;
  }
  return 0;
}

// A cache file that exists must be a regular file of ours with one link: a
// symlink or hard link could make LMDB write through to a file elsewhere.
// `must_exist` is for the check after mdb_env_open.
Status check_cache_file(const std::string& path, bool must_exist) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT && !must_exist) return Status::ok();
    return Status::io_error("cannot stat cache file", path, errno);
  }
  auto refuse = [&](const std::string& why) {
    return Status::error(StatusCode::kIOError, "refusing cache file: " + why, path);
  };
  if (S_ISLNK(st.st_mode)) return refuse("it is a symlink");
  if (!S_ISREG(st.st_mode)) return refuse("it is not a regular file");
  if (st.st_uid != ::geteuid()) {
    return refuse("it is owned by uid " + std::to_string(st.st_uid) + ", not by this user (uid " +
                  std::to_string(::geteuid()) + ")");
  }
  if (st.st_nlink != 1) return refuse("it has " + std::to_string(st.st_nlink) + " hard links");
  return Status::ok();
}

}  // namespace

std::uint64_t fork_generation() noexcept {
  return g_fork_generation.load(std::memory_order_relaxed);
}

Status lmdb_status(int rc, std::string_view what, const std::string& path) {
  const std::string message = std::string(what) + ": " + mdb_strerror(rc);
  switch (rc) {
    case MDB_MAP_FULL:
      return Status::error(StatusCode::kFull, message + " (the lmdb option max_size limits it)",
                           path);
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH: return Status::error(StatusCode::kCorruption, message, path);
    case MDB_BAD_VALSIZE:
    case MDB_TXN_FULL: return Status::error(StatusCode::kTooLarge, message, path);
    default: break;
  }
  // errno values: Status::to_string prints strerror from the errno itself.
  if (rc > 0) return Status::io_error(std::string(what), path, rc);
  return Status::error(StatusCode::kIOError, message, path);
}

// ---- EnvHandle ----

EnvHandle& EnvHandle::operator=(EnvHandle&& other) noexcept {
  if (this != &other) {
    if (env_ != nullptr) mdb_env_close(env_);
    env_ = std::exchange(other.env_, nullptr);
  }
  return *this;
}

EnvHandle::~EnvHandle() {
  if (env_ != nullptr) mdb_env_close(env_);
}

// ---- ReadTxn / WriteTxn ----

ReadTxn::ReadTxn(ReadTxn&& other) noexcept
    : env_(std::exchange(other.env_, nullptr)),
      txn_(std::exchange(other.txn_, nullptr)),
      map_lock_(std::move(other.map_lock_)) {}

ReadTxn& ReadTxn::operator=(ReadTxn&& other) noexcept {
  if (this != &other) {
    end();
    env_ = std::exchange(other.env_, nullptr);
    txn_ = std::exchange(other.txn_, nullptr);
    map_lock_ = std::move(other.map_lock_);
  }
  return *this;
}

void ReadTxn::end() noexcept {
  if (txn_ != nullptr) env_->recycle_reader(std::exchange(txn_, nullptr));
  // Only after the transaction is over may the map be remapped.
  if (map_lock_.owns_lock()) map_lock_.unlock();
}

WriteTxn::WriteTxn(WriteTxn&& other) noexcept
    : env_(std::exchange(other.env_, nullptr)),
      txn_(std::exchange(other.txn_, nullptr)),
      map_lock_(std::move(other.map_lock_)) {}

WriteTxn& WriteTxn::operator=(WriteTxn&& other) noexcept {
  if (this != &other) {
    abort();
    env_ = std::exchange(other.env_, nullptr);
    txn_ = std::exchange(other.txn_, nullptr);
    map_lock_ = std::move(other.map_lock_);
  }
  return *this;
}

Status WriteTxn::commit() {
  // mdb_txn_commit frees the transaction whatever it returns.
  const int rc = mdb_txn_commit(std::exchange(txn_, nullptr));
  if (map_lock_.owns_lock()) map_lock_.unlock();
  return rc == MDB_SUCCESS ? Status::ok() : env_->status(rc, "cannot commit a write transaction");
}

void WriteTxn::abort() noexcept {
  if (txn_ != nullptr) mdb_txn_abort(std::exchange(txn_, nullptr));
  if (map_lock_.owns_lock()) map_lock_.unlock();
}

// ---- registry ----

// The environments of one fork generation. A child starts a fresh registry
// rather than reuse its parent's: the parent's mutex may have been held by a
// thread that does not exist in the child.
struct LmdbEnv::Registry {
  explicit Registry(std::uint64_t gen) : generation(gen) {}

  const std::uint64_t generation;
  std::mutex mutex;
  std::condition_variable closed;  // an entry was erased
  // An entry exists from open until its environment is closed; an expired
  // weak_ptr means the last user is closing it right now.
  std::map<Key, std::weak_ptr<LmdbEnv>> entries;
};

struct LmdbEnv::Deleter {
  void operator()(LmdbEnv* env) const noexcept {
    if (!env->is_current()) {
      // Released in a fork()ed child (or its descendants): leak it. Its
      // MDB_env must not be closed there: mdb_env_close closes the child's
      // copies of the lock.mdb descriptors, which drops every fcntl lock the
      // child holds on lock.mdb (POSIX locks are per process), including
      // those of the child's own reopened environment that tell other
      // processes it is alive; and it clears the reader slots of getpid(),
      // the child's. Its mutexes may also be held by threads the child lacks.
      return;
    }
    Registry* registry = env->registry_;
    if (registry == nullptr) {
      // Never registered: never opened, or failed to open, in which case
      // acquire() drops it under the registry lock, so no other handle on
      // these files can appear before it is closed.
      delete env;
      return;
    }
    // Close under the registry lock: an opener of the same directory waits,
    // so LMDB never has the files open twice in this process.
    std::lock_guard lock(registry->mutex);
    registry->entries.erase(env->key_);
    delete env;
    registry->closed.notify_all();
  }
};

LmdbEnv::Registry& LmdbEnv::current_registry() {
  // Never freed: environments may be released during static destruction.
  static std::atomic<Registry*> current{nullptr};
  const std::uint64_t generation = fork_generation();
  Registry* registry = current.load(std::memory_order_acquire);
  while (registry == nullptr || registry->generation != generation) {
    auto* fresh = new Registry(generation);
    // The parent's registry is leaked in a child: see Registry.
    if (current.compare_exchange_strong(registry, fresh, std::memory_order_acq_rel)) {
      return *fresh;
    }
    delete fresh;  // another thread installed one; `registry` now holds it
  }
  return *registry;
}

// ---- LmdbEnv ----

LmdbEnv::LmdbEnv(std::string path, const LmdbEnvOptions& options, std::uint64_t generation)
    : path_(std::move(path)), options_(options), generation_(generation) {
  readers_.reserve(kReaderPoolSize);
}

// Members go in reverse order: pooled readers are aborted, then the lock file
// and the environment are closed.
LmdbEnv::~LmdbEnv() = default;

Status LmdbEnv::acquire(const std::string& dir, const LmdbEnvOptions& options,
                        std::shared_ptr<LmdbEnv>& out) {
  std::call_once(g_atfork_once, [] { ::pthread_atfork(nullptr, nullptr, &on_fork_child); });

  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    return Status::io_error("cannot stat cache directory", dir, errno);
  }
  if (!S_ISDIR(st.st_mode)) {
    return Status::error(StatusCode::kInvalidArgument, "cache directory is not a directory", dir,
                         ENOTDIR);
  }
  const Key key{st.st_dev, st.st_ino};
  const std::uint64_t generation = fork_generation();

  // Built before taking the registry lock: if allocating the control block
  // throws, the deleter runs on an unregistered environment and needs no lock.
  std::shared_ptr<LmdbEnv> env(new LmdbEnv(dir, options, generation), Deleter{});

  Registry& registry = current_registry();
  std::shared_ptr<LmdbEnv> result;
  {
    std::unique_lock lock(registry.mutex);
    for (;;) {
      const auto it = registry.entries.find(key);
      if (it == registry.entries.end()) break;
      result = it->second.lock();
      if (result) break;           // shared; the unopened `env` is dropped unregistered
      registry.closed.wait(lock);  // its last user is closing it
    }
    if (!result) {
      if (Status status = env->open(); !status) {
        env.reset();  // closed while we hold the lock
        return status;
      }
      registry.entries.emplace(key, env);
      env->registry_ = &registry;
      env->key_ = key;
      result = std::move(env);
    }
  }
  // Outside the lock: releasing what `out` held may run the deleter.
  out = std::move(result);
  return Status::ok();
}

Status LmdbEnv::open() {
  const std::string data_path = path_ + "/data.mdb";
  const std::string lock_path = path_ + "/lock.mdb";
  // mdb_env_open has no O_NOFOLLOW, so look before it leaps.
  if (Status s = check_cache_file(data_path, false); !s) return s;
  if (Status s = check_cache_file(lock_path, false); !s) return s;

  MDB_env* raw = nullptr;
  if (const int rc = mdb_env_create(&raw); rc != MDB_SUCCESS) {
    return status(rc, "cannot create an LMDB environment");
  }
  env_ = EnvHandle(raw);
  if (const int rc = mdb_env_set_maxdbs(raw, options_.max_regions + kInternalDatabases); rc != 0) {
    return status(rc, "cannot set max_regions");
  }
  if (const int rc = mdb_env_set_maxreaders(raw, options_.max_readers); rc != 0) {
    return status(rc, "cannot set max_readers");
  }
  if (const int rc = mdb_env_set_mapsize(raw, options_.map_size); rc != 0) {
    return status(rc, "cannot set map_size");
  }
  // MDB_NOTLS: transactions are not tied to threads (readers are pooled and
  // may end on another thread). Never MDB_WRITEMAP: a stray write through
  // the map would corrupt the store.
  const unsigned flags = MDB_NOTLS | durability_flags(options_.durability);
  if (const int rc = mdb_env_open(raw, path_.c_str(), flags, 0600); rc != MDB_SUCCESS) {
    return status(rc, "cannot open the LMDB environment");
  }

  // Confirm that what LMDB opened is what we checked.
  int fd = -1;
  struct stat opened {};
  struct stat named {};
  if (mdb_env_get_fd(raw, &fd) != 0 || ::fstat(fd, &opened) != 0) {
    return Status::io_error("cannot stat the opened data file", data_path, errno);
  }
  if (Status s = check_cache_file(data_path, true); !s) return s;
  if (Status s = check_cache_file(lock_path, true); !s) return s;
  if (::lstat(data_path.c_str(), &named) != 0 || named.st_dev != opened.st_dev ||
      named.st_ino != opened.st_ino) {
    return Status::error(StatusCode::kIOError, "cache file was replaced while opening", data_path);
  }

  if (mdb_env_get_maxkeysize(raw) < static_cast<int>(kMaxInlineKeySize)) {
    return Status::error(StatusCode::kNotSupported,
                         "this LMDB build allows keys of at most " +
                             std::to_string(mdb_env_get_maxkeysize(raw)) + " bytes, not " +
                             std::to_string(kMaxInlineKeySize),
                         path_);
  }
  // Free the reader slots of processes that died inside a read transaction.
  int dead = 0;
  if (const int rc = mdb_reader_check(raw, &dead); rc != MDB_SUCCESS) {
    return status(rc, "cannot check the reader table");
  }
  return LockFile::open(path_ + "/" + LockFile::kFileName, lock_file_);
}

Status LmdbEnv::begin(unsigned flags, MDB_txn*& txn, std::shared_lock<std::shared_mutex>& lock) {
  bool remapped = false;
  bool checked_readers = false;
  for (;;) {
    std::shared_lock map_lock(map_mutex_);
    const int rc = mdb_txn_begin(env_.get(), nullptr, flags, &txn);
    if (rc == MDB_SUCCESS) {
      lock = std::move(map_lock);
      return Status::ok();
    }
    map_lock.unlock();
    if (rc == MDB_MAP_RESIZED && !remapped) {
      // Another process grew the map past ours: adopt its size. Remapping
      // needs every transaction of this process to be over.
      remapped = true;
      std::unique_lock remap(map_mutex_);
      if (const int r = mdb_env_set_mapsize(env_.get(), 0); r != MDB_SUCCESS) {
        return status(r, "cannot adopt the map size set by another process");
      }
      continue;
    }
    if (rc == MDB_READERS_FULL && !checked_readers) {
      // Give back the slots our pooled readers keep, and those of dead
      // processes.
      checked_readers = true;
      {
        std::lock_guard pool_lock(readers_mutex_);
        readers_.clear();
      }
      int dead = 0;
      mdb_reader_check(env_.get(), &dead);
      continue;
    }
    return status(rc, (flags & MDB_RDONLY) != 0 ? "cannot begin a read transaction"
                                                : "cannot begin a write transaction");
  }
}

Status LmdbEnv::begin_read(ReadTxn& out) {
  out.end();
  TxnPtr pooled;
  {
    std::lock_guard lock(readers_mutex_);
    if (!readers_.empty()) {
      pooled = std::move(readers_.back());
      readers_.pop_back();
    }
  }
  if (pooled) {
    std::shared_lock map_lock(map_mutex_);
    if (mdb_txn_renew(pooled.get()) == MDB_SUCCESS) {
      out.env_ = this;
      out.txn_ = pooled.release();
      out.map_lock_ = std::move(map_lock);
      return Status::ok();
    }
    // A failed renew leaves it reset: drop it and take the path that retries.
    pooled.reset();
  }
  MDB_txn* txn = nullptr;
  std::shared_lock<std::shared_mutex> map_lock;
  if (Status s = begin(MDB_RDONLY, txn, map_lock); !s) return s;
  out.env_ = this;
  out.txn_ = txn;
  out.map_lock_ = std::move(map_lock);
  return Status::ok();
}

Status LmdbEnv::begin_write(WriteTxn& out) {
  out.abort();
  MDB_txn* txn = nullptr;
  std::shared_lock<std::shared_mutex> map_lock;
  if (Status s = begin(0, txn, map_lock); !s) return s;
  out.env_ = this;
  out.txn_ = txn;
  out.map_lock_ = std::move(map_lock);
  return Status::ok();
}

void LmdbEnv::recycle_reader(MDB_txn* txn) noexcept {
  mdb_txn_reset(txn);
  TxnPtr reader(txn);
  std::lock_guard lock(readers_mutex_);
  // Capacity was reserved up front, so this does not allocate.
  if (readers_.size() < kReaderPoolSize) readers_.push_back(std::move(reader));
}

Status LmdbEnv::open_region(std::string_view region, MDB_dbi& out) {
  if (region.empty()) {
    return Status::error(StatusCode::kInvalidArgument, "region name is empty", path_);
  }
  if (region.find('\0') != std::string_view::npos) {
    return Status::error(StatusCode::kInvalidArgument, "region name contains a NUL byte", path_);
  }
  if (region.size() > kMaxRegionNameSize) {
    return Status::error(StatusCode::kInvalidArgument,
                         "region name is " + std::to_string(region.size()) +
                             " bytes long; at most " + std::to_string(kMaxRegionNameSize) +
                             " are allowed",
                         path_);
  }
  std::string name(kRegionPrefix);
  name += region;

  std::lock_guard lock(dbis_mutex_);
  if (const auto it = dbis_.find(name); it != dbis_.end()) {
    out = it->second;
    return Status::ok();
  }
  const auto regions_full = [&] {
    return Status::error(StatusCode::kInvalidArgument,
                         "cannot open region '" + std::string(region) + "': all " +
                             std::to_string(options_.max_regions) +
                             " regions allowed by the lmdb option max_regions are open in this "
                             "process (the first opener of a cache directory sets it)",
                         path_);
  };
  if (regions_open_ >= options_.max_regions) return regions_full();

  // A new handle is private to its transaction until that commits, so open
  // it in a write transaction of its own and commit before anyone uses it.
  WriteTxn txn;
  if (Status s = begin_write(txn); !s) return s;
  MDB_dbi dbi = 0;
  if (const int rc = mdb_dbi_open(txn.get(), name.c_str(), MDB_CREATE, &dbi); rc != MDB_SUCCESS) {
    if (rc == MDB_DBS_FULL) return regions_full();
    return status(rc, "cannot open the sub-database of region '" + std::string(region) + "'");
  }
  if (Status s = txn.commit(); !s) return s;
  dbis_.emplace(std::move(name), dbi);
  ++regions_open_;
  out = dbi;
  return Status::ok();
}

}  // namespace dogpile::internal
