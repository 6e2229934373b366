#include "backends/lmdb_env.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "dogpile/cache_dir.h"
#include "dogpile/envelope.h"
#include "unique_fd.h"

namespace dogpile::internal {
namespace {

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

// LMDB 0.9 opens data.mdb (twice: once more with O_DSYNC for meta pages)
// without O_CLOEXEC, so every program a cache user runs would inherit the
// descriptors. Mark every descriptor of this process on the file (`st`).
void set_cloexec_on(const struct stat& st) noexcept {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return;
  const int own = ::dirfd(dir);
  while (const dirent* entry = ::readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0' || fd == own) continue;
    struct stat fd_st {};
    if (::fstat(static_cast<int>(fd), &fd_st) != 0) continue;
    if (fd_st.st_dev != st.st_dev || fd_st.st_ino != st.st_ino) continue;
    const int flags = ::fcntl(static_cast<int>(fd), F_GETFD);
    if (flags >= 0 && (flags & FD_CLOEXEC) == 0) {
      ::fcntl(static_cast<int>(fd), F_SETFD, flags | FD_CLOEXEC);
    }
  }
  ::closedir(dir);
}

// LMDB sizes a new lock.mdb with ftruncate, which leaves a sparse file, and
// then writes it through a shared mapping: on a full file system the first
// write to a page with no block behind it kills the process with SIGBUS.
// Allocating the blocks first (FALLOC_FL_KEEP_SIZE: the size stays LMDB's
// to decide) turns that into ENOSPC here. A file system without fallocate
// keeps LMDB's own behaviour.
Status reserve_lock_file(const std::string& path, std::uint32_t max_readers) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == ELOOP) {
      return Status::error(StatusCode::kIOError, "refusing cache file: it is a symlink", path, err);
    }
    return Status::io_error("cannot open the LMDB lock file", path, err);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::io_error("cannot stat cache file", path, errno);
  if (!S_ISREG(st.st_mode)) {
    return Status::error(StatusCode::kIOError, "refusing cache file: it is not a regular file",
                         path);
  }
  // The reader table: a header of two cache lines, then one per reader.
  const off_t bytes = (static_cast<off_t>(max_readers) + 2) * 64;
  if (::fallocate(fd.get(), FALLOC_FL_KEEP_SIZE, 0, bytes) != 0) {
    const int err = errno;
    if (err == ENOSPC || err == EDQUOT || err == EFBIG) {
      return lmdb_status(err, "cannot reserve space for the LMDB lock file", path);
    }
  }
  // Closing drops this process's fcntl locks on the file; it holds none yet:
  // no environment of this process has the directory open.
  return Status::ok();
}

}  // namespace

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
  // The file cannot grow: say so by name, it is the operator's to fix.
  switch (rc) {
    case ENOSPC:
      return Status::io_error(std::string(what) + ": the file system is full (ENOSPC)", path, rc);
    case EDQUOT:
      return Status::io_error(std::string(what) + ": the disk quota is used up (EDQUOT)", path, rc);
    case EFBIG:
      return Status::io_error(
          std::string(what) + ": the file reached the file size limit (EFBIG, RLIMIT_FSIZE)", path,
          rc);
    default: break;
  }
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
  return rc == MDB_SUCCESS ? Status::ok() : env_->commit_status(rc);
}

void WriteTxn::abort() noexcept {
  if (txn_ != nullptr) mdb_txn_abort(std::exchange(txn_, nullptr));
  if (map_lock_.owns_lock()) map_lock_.unlock();
}

// ---- registry ----

// The environments of one fork generation. A child starts a fresh registry
// rather than reuse its parent's (ForkLocal): the parent's mutex may have been
// held by a thread that does not exist in the child.
struct LmdbEnv::Registry {
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
  static ForkLocal<Registry>* const registries = new ForkLocal<Registry>();
  return registries->get();
}

// ---- LmdbEnv ----

LmdbEnv::LmdbEnv(std::string path, const LmdbEnvOptions& options, std::uint64_t generation)
    : path_(std::move(path)), options_(options), generation_(generation) {}

// Pooled readers are aborted first; then members go in reverse order: the
// lock file and the environment are closed.
LmdbEnv::~LmdbEnv() { drain_readers(); }

Status LmdbEnv::acquire(const std::string& dir, const LmdbEnvOptions& options,
                        std::shared_ptr<LmdbEnv>& out) {
  // Whoever else can write the directory could swap the files under us.
  if (Status s = check_cache_dir(dir); !s) return s;
  // The environment's identity: the directory check_cache_dir accepted.
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    return Status::io_error("cannot stat cache directory", dir, errno);
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

Status LmdbEnv::choose_mode(const std::string& data_path) {
  struct stat st {};
  const bool has_data = ::lstat(data_path.c_str(), &st) == 0;
  if (options_.read_only) {
    if (!has_data) {
      return Status::io_error("cannot open the cache read-only: there is no data.mdb", path_,
                              ENOENT);
    }
    read_only_ = true;
    read_only_errno_ = EROFS;
    read_only_reason_ = "the lmdb option read_only is set";
    return Status::ok();
  }
  // A cache this user may read but not write (a read-only copy or mount, a
  // cache of a group it can only read) is served read-only rather than
  // refused; with no cache there, there is nothing to serve.
  if (::faccessat(AT_FDCWD, path_.c_str(), W_OK | X_OK, AT_EACCESS) != 0) {
    const int err = errno;
    if (!has_data) {
      return Status::io_error("cannot create a cache: this user cannot write the directory",
                              path_, err);
    }
    read_only_ = true;
    read_only_errno_ = err;
    read_only_reason_ =
        std::string("this user cannot write the cache directory (") + std::strerror(err) + ")";
  } else if (has_data && ::faccessat(AT_FDCWD, data_path.c_str(), W_OK, AT_EACCESS) != 0) {
    const int err = errno;
    read_only_ = true;
    read_only_errno_ = err;
    read_only_reason_ =
        std::string("this user cannot write data.mdb (") + std::strerror(err) + ")";
  }
  return Status::ok();
}

namespace {

// A data file shorter than its newest meta page says (a truncated copy, a
// transfer cut short, a disk that filled during a copy) would raise SIGBUS
// at the first read of a page past its end. The meta page is read before
// the file's size: a writer extends the file before it commits a meta page
// naming the new pages, so a live writer never makes a whole file look short.
Status check_data_size(MDB_env* env, const MDB_envinfo& info, int fd,
                       const std::string& data_path) {
  MDB_stat st{};
  mdb_env_stat(env, &st);
  struct stat file {};
  if (::fstat(fd, &file) != 0) return Status::io_error("cannot stat the data file", data_path, errno);
  const std::uint64_t needed = (std::uint64_t{info.me_last_pgno} + 1) * st.ms_psize;
  const auto size = static_cast<std::uint64_t>(file.st_size);
  if (size >= needed) return Status::ok();
  return Status::error(StatusCode::kCorruption,
                       "data file is truncated: it has " + std::to_string(size) +
                           " bytes, but its meta page says its data takes " +
                           std::to_string(needed) +
                           " bytes (an interrupted copy or transfer?); restore it or remove the "
                           "cache directory",
                       data_path);
}

}  // namespace

Status LmdbEnv::open() {
  const std::string data_path = path_ + "/data.mdb";
  const std::string lock_path = path_ + "/lock.mdb";
  // mdb_env_open has no O_NOFOLLOW, so look before it leaps.
  if (Status s = check_cache_file(data_path, false); !s) return s;
  if (Status s = check_cache_file(lock_path, false); !s) return s;
  if (Status s = choose_mode(data_path); !s) return s;
  // LMDB opens lock.mdb read-write even for MDB_RDONLY. A read-only opener
  // that cannot do that goes without the reader table (MDB_NOLOCK).
  bool use_lock = true;
  if (read_only_) {
    struct stat st {};
    use_lock = ::lstat(lock_path.c_str(), &st) == 0 &&
               ::faccessat(AT_FDCWD, lock_path.c_str(), R_OK | W_OK, AT_EACCESS) == 0;
  } else if (Status s = reserve_lock_file(lock_path, options_.max_readers); !s) {
    return s;
  }

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
  // Without a size, LMDB maps what the file records (at least what its data
  // needs), or its 1 MiB default for a new file: the map starts small and
  // write() grows it. Only a max_size below the default is set here.
  if (options_.map_size < kDefaultMapSize) {
    if (const int rc = mdb_env_set_mapsize(raw, options_.map_size); rc != 0) {
      return status(rc, "cannot set the map size");
    }
  }
  // MDB_NOTLS: transactions are not tied to threads (readers are pooled and
  // may end on another thread). Never MDB_WRITEMAP: a stray write through
  // the map would corrupt the store, and a full disk would raise SIGBUS.
  unsigned flags = MDB_NOTLS | durability_flags(options_.durability);
  if (read_only_) flags = MDB_NOTLS | MDB_RDONLY | (use_lock ? 0 : MDB_NOLOCK);
  if (const int rc = mdb_env_open(raw, path_.c_str(), flags, 0600); rc != MDB_SUCCESS) {
    if (rc == MDB_INVALID) {
      // Its meta pages cannot be read: cut short inside them, or not LMDB.
      return lmdb_status(rc, "data file has no valid meta page (truncated, or not a cache)",
                         data_path);
    }
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
  if (Status s = check_cache_file(lock_path, use_lock); !s) return s;
  if (::lstat(data_path.c_str(), &named) != 0 || named.st_dev != opened.st_dev ||
      named.st_ino != opened.st_ino) {
    return Status::error(StatusCode::kIOError, "cache file was replaced while opening", data_path);
  }
  set_cloexec_on(opened);
  MDB_envinfo info{};
  mdb_env_info(raw, &info);
  map_size_.store(info.me_mapsize, std::memory_order_release);
  if (Status s = check_data_size(raw, info, fd, data_path); !s) return s;

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
  if (read_only_) {
    if (Status s = open_store_read_only(); !s) return s;
    // Creation locks stay in this process (the region's own), and nothing
    // this process creates is stored anyway.
    if (!options_.read_only) {
      std::fprintf(stderr,
                   "dogpile: opening the cache in %s read-only: %s; reads are served, writes "
                   "fail with ReadOnlyError%s\n",
                   path_.c_str(), read_only_reason_.c_str(),
                   use_lock ? "" : " (lock.mdb is not writable either: nothing may write the "
                                   "cache while it is open)");
    }
    return Status::ok();
  }
  if (Status s = open_store(); !s) return s;
  Status s = LockFile::open(path_ + "/" + LockFile::kFileName, lock_file_);
  // A refused creation.lock is a refused cache file (StoreError), like
  // data.mdb and lock.mdb, not bad configuration.
  if (s.code() == StatusCode::kInvalidArgument) {
    return Status::error(StatusCode::kIOError, "refusing cache file: " + s.message(), s.path(),
                         s.sys_errno());
  }
  return s;
}

Status LmdbEnv::read_only_error(std::string_view what) const {
  return Status::error(StatusCode::kReadOnly,
                       std::string(what) + ": the cache is open read-only: " + read_only_reason_,
                       path_, read_only_errno_);
}

namespace {

constexpr std::string_view kLayoutKey = "layout";

MDB_val as_val(std::string_view bytes) noexcept {
  return MDB_val{bytes.size(), const_cast<char*>(bytes.data())};
}

std::string_view as_view(const MDB_val& val) noexcept {
  return {static_cast<const char*>(val.mv_data), val.mv_size};
}

std::string layout_record() {
  std::string out(4, '\0');
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>((kStoreLayoutVersion >> (8 * i)) & 0xff);
  return out;
}

// The names of the region sub-databases the main database lists.
Status region_db_names(MDB_txn* txn, std::vector<std::string>& out) {
  MDB_dbi main = 0;
  if (const int rc = mdb_dbi_open(txn, nullptr, 0, &main); rc != MDB_SUCCESS) return Status::error(
      StatusCode::kIOError, std::string("cannot open the main database: ") + mdb_strerror(rc));
  MDB_cursor* cursor = nullptr;
  if (const int rc = mdb_cursor_open(txn, main, &cursor); rc != MDB_SUCCESS) {
    return Status::error(StatusCode::kIOError,
                         std::string("cannot read the main database: ") + mdb_strerror(rc));
  }
  const std::string_view prefix = LmdbEnv::kRegionPrefix;
  MDB_val key = as_val(prefix);
  MDB_val data{};
  int rc = mdb_cursor_get(cursor, &key, &data, MDB_SET_RANGE);
  while (rc == MDB_SUCCESS && as_view(key).substr(0, prefix.size()) == prefix) {
    out.emplace_back(as_view(key));
    rc = mdb_cursor_get(cursor, &key, &data, MDB_NEXT);
  }
  mdb_cursor_close(cursor);
  if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) {
    return Status::error(StatusCode::kIOError,
                         std::string("cannot read the main database: ") + mdb_strerror(rc));
  }
  return Status::ok();
}

}  // namespace

Status LmdbEnv::open_store() {
  StoreDbs dbs;
  bool emptied = false;
  std::size_t old_regions = 0;
  const WriteBody body = [&](MDB_txn* txn) -> Status {
    emptied = false;
    for (auto [name, dbi] : {std::pair{kMetaDb, &dbs.meta}, std::pair{kWrittenDb, &dbs.written},
                             std::pair{kExpiryDb, &dbs.expiry}}) {
      if (const int rc = mdb_dbi_open(txn, name, MDB_CREATE, dbi); rc != MDB_SUCCESS) {
        return status(rc, std::string("cannot open the store table ") + name);
      }
    }
    const std::string layout = layout_record();
    MDB_val key = as_val(kLayoutKey);
    MDB_val data{};
    const int rc = mdb_get(txn, dbs.meta, &key, &data);
    if (rc == MDB_SUCCESS && as_view(data) == layout) return Status::ok();
    if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return status(rc, "cannot read the store layout");

    // No layout record, or another one: whatever regions exist hold entries
    // in another layout. Cached data can always be made again, so they go.
    std::vector<std::string> names;
    if (Status s = region_db_names(txn, names); !s) return s;
    old_regions = names.size();
    for (const std::string& name : names) {
      MDB_dbi dbi = 0;
      int r = mdb_dbi_open(txn, name.c_str(), 0, &dbi);
      // Deleting the sub-database also closes its handle, so any number of
      // old regions fit in the handle table one after another.
      if (r == MDB_SUCCESS) r = mdb_drop(txn, dbi, 1);
      if (r != MDB_SUCCESS) return status(r, "cannot empty the old region " + name);
    }
    for (MDB_dbi dbi : {dbs.meta, dbs.written, dbs.expiry}) {
      if (const int r = mdb_drop(txn, dbi, 0); r != MDB_SUCCESS) {
        return status(r, "cannot empty the store tables");
      }
    }
    emptied = true;
    MDB_val value = as_val(layout);
    if (const int r = mdb_put(txn, dbs.meta, &key, &value, 0); r != MDB_SUCCESS) {
      return status(r, "cannot write the store layout");
    }
    return Status::ok();
  };
  if (Status s = write(body, 0); !s) return s;
  dbs_ = dbs;
  store_open_ = true;
  if (emptied && old_regions > 0) {
    std::fprintf(stderr,
                 "dogpile: the cache in %s was written in another store layout; its %zu "
                 "region(s) were emptied and will be filled again\n",
                 path_.c_str(), old_regions);
  }
  return Status::ok();
}

Status LmdbEnv::read_keeping_handles(const WriteBody& body) {
  std::lock_guard dbi_lock(dbi_mutex_);
  MDB_txn* raw_txn = nullptr;
  std::shared_lock<std::shared_mutex> map_lock;
  if (Status s = begin(MDB_RDONLY, raw_txn, map_lock); !s) return s;
  TxnPtr txn(raw_txn);  // ends before map_lock is released
  if (Status s = body(txn.get()); !s) return s;
  // Committing a read transaction keeps the handles it opened.
  if (const int rc = mdb_txn_commit(txn.release()); rc != MDB_SUCCESS) {
    return status(rc, "cannot end a read transaction");
  }
  return Status::ok();
}

Status LmdbEnv::open_store_read_only() {
  StoreDbs dbs;
  const Status s = read_keeping_handles([&](MDB_txn* txn) -> Status {
    for (auto [name, dbi] : {std::pair{kMetaDb, &dbs.meta}, std::pair{kWrittenDb, &dbs.written},
                             std::pair{kExpiryDb, &dbs.expiry}}) {
      const int rc = mdb_dbi_open(txn, name, 0, dbi);
      if (rc == MDB_NOTFOUND) {
        return read_only_error(std::string("the store table ") + name +
                               " is missing and cannot be made");
      }
      if (rc != MDB_SUCCESS) return status(rc, std::string("cannot open the store table ") + name);
    }
    MDB_val key = as_val(kLayoutKey);
    MDB_val data{};
    const int rc = mdb_get(txn, dbs.meta, &key, &data);
    if (rc == MDB_SUCCESS && as_view(data) == layout_record()) return Status::ok();
    if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return status(rc, "cannot read the store layout");
    return read_only_error("the cache was written in another store layout, which this version "
                           "would have to rewrite");
  });
  if (!s) return s;
  dbs_ = dbs;
  store_open_ = true;
  return Status::ok();
}

Status LmdbEnv::broken_error() const {
  return Status::error(StatusCode::kIOError,
                       "the LMDB environment lost its memory map in a failed remap; this process "
                       "cannot use the cache until every user of it here has closed it",
                       path_);
}

Status LmdbEnv::adopt_map() {
  // Map what the data needs now, doubling our map as the writer's doubles,
  // so that a process growing the map fast costs few remaps here.
  MDB_envinfo info{};
  MDB_stat st{};
  mdb_env_info(env_.get(), &info);
  mdb_env_stat(env_.get(), &st);
  const std::uint64_t needed = (std::uint64_t{info.me_last_pgno} + 1) * st.ms_psize;
  const std::uint64_t current = map_size_.load(std::memory_order_relaxed);
  if (current >= needed) return Status::ok();  // another thread adopted it
  std::uint64_t size = std::max<std::uint64_t>(current, kDefaultMapSize);
  while (size < needed) size *= 2;
  return remap(size, "cannot adopt the map size set by another process");
}

Status LmdbEnv::begin(unsigned flags, MDB_txn*& txn, std::shared_lock<std::shared_mutex>& lock) {
  int remaps = 0;
  bool checked_readers = false;
  for (;;) {
    std::shared_lock map_lock(map_mutex_);
    if (broken_.load(std::memory_order_acquire)) return broken_error();
    const int rc = mdb_txn_begin(env_.get(), nullptr, flags, &txn);
    if (rc == MDB_SUCCESS) {
      lock = std::move(map_lock);
      return Status::ok();
    }
    map_lock.unlock();
    if (rc == MDB_MAP_RESIZED && remaps < kRemapAttempts) {
      // Another process grew the map past ours: adopt its size. Remapping
      // needs every transaction of this process to be over; pooled readers
      // are reset and hold no pointer into the map.
      ++remaps;
      std::unique_lock remap_lock(map_mutex_);
      if (broken_.load(std::memory_order_relaxed)) return broken_error();
      if (Status s = adopt_map(); !s) return s;
      continue;
    }
    if (rc == MDB_READERS_FULL && !checked_readers) {
      // Give back the slots our pooled readers keep, and those of dead
      // processes.
      checked_readers = true;
      drain_readers();
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
  TxnPtr pooled = take_reader();
  if (pooled) {
    std::shared_lock map_lock(map_mutex_);
    if (broken_.load(std::memory_order_acquire)) return broken_error();
    if (mdb_txn_renew(pooled.get()) == MDB_SUCCESS) {
      out.env_ = this;
      out.txn_ = pooled.release();
      out.map_lock_ = std::move(map_lock);
      return Status::ok();
    }
    // A failed renew (MDB_MAP_RESIZED, MDB_READERS_FULL) leaves it reset:
    // drop it, then let begin() remap or free slots and retry. The map lock
    // goes first: remapping takes it exclusively.
    map_lock.unlock();
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

TxnPtr LmdbEnv::take_reader() noexcept {
  for (std::atomic<MDB_txn*>& slot : readers_) {
    if (slot.load(std::memory_order_relaxed) == nullptr) continue;
    if (MDB_txn* txn = slot.exchange(nullptr, std::memory_order_acquire)) return TxnPtr(txn);
  }
  return TxnPtr();
}

void LmdbEnv::recycle_reader(MDB_txn* txn) noexcept {
  mdb_txn_reset(txn);
  for (std::atomic<MDB_txn*>& slot : readers_) {
    MDB_txn* empty = nullptr;
    if (slot.load(std::memory_order_relaxed) == nullptr &&
        slot.compare_exchange_strong(empty, txn, std::memory_order_release,
                                     std::memory_order_relaxed)) {
      return;
    }
  }
  mdb_txn_abort(txn);  // the pool is full
}

void LmdbEnv::drain_readers() noexcept {
  for (std::atomic<MDB_txn*>& slot : readers_) {
    if (MDB_txn* txn = slot.exchange(nullptr, std::memory_order_acquire)) mdb_txn_abort(txn);
  }
}

Status LmdbEnv::remap(std::uint64_t size, std::string_view what) {
  int fd = -1;
  if (const int rc = mdb_env_get_fd(env_.get(), &fd); rc != MDB_SUCCESS) return status(rc, what);
  // mdb_env_set_mapsize unmaps the old map before it maps the new size, and
  // when that mmap fails it leaves the environment with no map at all (its
  // next transaction would fault). Mapping the new size once first turns an
  // exhausted address space (RLIMIT_AS, vm.max_map_count) into an error
  // that leaves the old map in place.
  void* probe = ::mmap(nullptr, static_cast<std::size_t>(size), PROT_READ, MAP_SHARED, fd, 0);
  if (probe == MAP_FAILED) {
    const int err = errno;
    return Status::io_error(std::string(what) + ": cannot map " + std::to_string(size) + " bytes" +
                                (err == ENOMEM ? " (ENOMEM: no room in the address space)" : ""),
                            path_, err);
  }
  ::munmap(probe, static_cast<std::size_t>(size));
  if (const int rc = mdb_env_set_mapsize(env_.get(), size); rc != MDB_SUCCESS) {
    // EINVAL (a transaction is active) is refused before anything changes.
    if (rc != EINVAL) {
      broken_.store(true, std::memory_order_release);
      map_size_.store(0, std::memory_order_release);
    }
    return status(rc, what);
  }
  MDB_envinfo info{};
  mdb_env_info(env_.get(), &info);
  map_size_.store(info.me_mapsize, std::memory_order_release);
  return Status::ok();
}

std::uint64_t LmdbEnv::last_txnid() {
  std::shared_lock lock(map_mutex_);
  if (broken_.load(std::memory_order_acquire)) return 0;
  MDB_envinfo info{};
  mdb_env_info(env_.get(), &info);
  return info.me_last_txnid;
}

std::optional<LmdbEnv::Reader> LmdbEnv::oldest_reader() const {
  std::optional<Reader> oldest;
  mdb_reader_list(
      env_.get(),
      [](const char* line, void* context) -> int {
        auto& out = *static_cast<std::optional<Reader>*>(context);
        // "<pid> <thread> <txnid>"; "-" for a slot between transactions,
        // and a header line.
        int pid = 0;
        unsigned long long thread = 0;
        unsigned long long txnid = 0;
        if (std::sscanf(line, "%d %llx %llu", &pid, &thread, &txnid) == 3 &&
            (!out || txnid < out->txnid)) {
          out = Reader{pid, txnid};
        }
        return 0;
      },
      &oldest);
  return oldest;
}

Status LmdbEnv::commit_status(int rc) const {
  constexpr std::string_view what = "cannot commit a write transaction";
  if (rc == EIO) {
    // LMDB reports a short write as EIO. A write to a regular file stops
    // short only where the file cannot grow: at RLIMIT_FSIZE, or on a full
    // file system. Name which; anything else is a real I/O error.
    int fd = -1;
    struct stat st {};
    struct rlimit limit {};
    if (mdb_env_get_fd(env_.get(), &fd) == MDB_SUCCESS && ::fstat(fd, &st) == 0 &&
        ::getrlimit(RLIMIT_FSIZE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY &&
        static_cast<rlim_t>(st.st_size) >= limit.rlim_cur) {
      return lmdb_status(EFBIG, std::string(what) + " (short write)", path_);
    }
    struct statvfs fs {};
    if (::statvfs(path_.c_str(), &fs) == 0) {
      const std::uint64_t free_blocks = ::geteuid() == 0 ? fs.f_bfree : fs.f_bavail;
      if (free_blocks * fs.f_frsize < kNearlyFull) {
        return lmdb_status(ENOSPC, std::string(what) + " (short write)", path_);
      }
    }
  }
  return status(rc, what);
}

// ---- writes: growth and eviction ----

Status LmdbEnv::write(const WriteBody& body, std::uint64_t bytes) {
  if (read_only_) return read_only_error("cannot write");
  const std::uint64_t limit = options_.map_size;
  if (bytes > limit / 2) {
    return full_error(bytes, map_size(), "a write above half of max_size is refused");
  }
  std::uint64_t freed = 0;
  int rounds = 0;
  bool checked_readers = false;
  std::uint64_t evicting_from = 0;  // the first transaction id eviction commits
  for (;;) {
    std::uint64_t map = 0;
    Status s = write_once(body, map);
    // Inside a write only MDB_MAP_FULL is reported as kFull.
    if (s.code() != StatusCode::kFull) return s;
    if (map < limit) {
      if (Status g = grow(map, bytes); !g) return g;
      continue;
    }
    // A process killed inside a read transaction leaves its reader slot
    // behind, and LMDB keeps every page freed since that snapshot from
    // reuse; only a full reader table makes anyone check. Clear dead readers
    // before evicting live entries for room they hold.
    if (!checked_readers) {
      checked_readers = true;
      int dead = 0;
      if (mdb_reader_check(env_.get(), &dead) == MDB_SUCCESS && dead > 0) continue;
    }
    // LMDB reuses the pages a transaction frees only once no reader is older
    // than it, so a reader that began before eviction keeps all it frees
    // from reuse. When a write failed so, later ones fail at once while that
    // reader stays, rather than evict more for nothing.
    if (rounds == 0) {
      if (const std::uint64_t before = pinned_before_.load(std::memory_order_relaxed);
          before != 0) {
        if (const std::optional<Reader> reader = oldest_reader();
            reader && reader->txnid < before) {
          return pinned_error(bytes, map, *reader);
        }
        pinned_before_.store(0, std::memory_order_relaxed);  // that reader is gone
      }
      evicting_from = last_txnid() + 1;
    }
    // A full store after eviction: name the reader that kept it from helping.
    const auto explain = [&](Status full) {
      if (full.code() != StatusCode::kFull) return full;
      const std::optional<Reader> reader = oldest_reader();
      if (!reader || reader->txnid >= evicting_from) return full;
      pinned_before_.store(evicting_from, std::memory_order_relaxed);
      return pinned_error(bytes, map, *reader);
    };
    if (rounds == kEvictionRounds) {
      return explain(full_error(bytes, map,
                                std::to_string(kEvictionRounds) + " eviction rounds freed " +
                                    std::to_string(freed) + " bytes, not enough room"));
    }
    ++rounds;
    std::uint64_t round_freed = 0;
    if (Status e = evict_round(bytes, map, round_freed); !e) return explain(std::move(e));
    if (round_freed == 0) return explain(full_error(bytes, map, "there is nothing left to evict"));
    freed += round_freed;
  }
}

Status LmdbEnv::write_once(const WriteBody& body, std::uint64_t& map) {
  WriteTxn txn;
  if (Status s = begin_write(txn); !s) return s;
  // Read under the transaction's map lock: the size this attempt ran with.
  map = map_size();
  if (Status s = body(txn.get()); !s) return s;  // aborted by txn's destructor
  return txn.commit();
}

Status LmdbEnv::grow(std::uint64_t seen, std::uint64_t bytes) {
  // Remapping needs every transaction of this process to be over.
  std::unique_lock remap_lock(map_mutex_);
  if (broken_.load(std::memory_order_relaxed)) return broken_error();
  const std::uint64_t map = map_size();
  if (map > seen) return Status::ok();  // grown meanwhile: retry first
  const std::uint64_t wanted = std::max(2 * map, map + 2 * bytes + kDefaultMapSize);
  const std::uint64_t size = std::min(options_.map_size, wanted);
  if (size <= map) return full_error(bytes, map, "the map cannot grow");
  return remap(size, "cannot grow the map to " + std::to_string(size) + " bytes");
}

Status LmdbEnv::evict_round(std::uint64_t bytes, std::uint64_t map, std::uint64_t& freed) {
  freed = 0;
  if (!store_open_) return Status::ok();  // nothing to evict while the store opens
  const std::uint64_t target = std::max(map / 4, 2 * bytes);
  const std::int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count();
  // Removals go in at least two transactions, each bounded.
  const std::uint64_t per_txn = std::max<std::uint64_t>(target / 2, 1);
  std::uint64_t max_entries = kEvictionBatch;
  int commits = 0;
  while (freed < target) {
    RemovalStep step;
    std::uint64_t ran_with = 0;
    const Status s = write_once(
        [&](MDB_txn* txn) {
          step = RemovalStep{};
          return evict(*this, txn, dbs_, now, std::min(per_txn, target - freed), max_entries,
                       step);
        },
        ran_with);
    if (s.code() == StatusCode::kFull) {
      // Removing entries needs pages too (copies of the pages it changes,
      // the free list); a full map may allow only a few at a time.
      if (max_entries == 1) return full_error(bytes, ran_with, "the map is too full to evict");
      max_entries = std::max<std::uint64_t>(1, std::min(max_entries, step.removed + 1) / 2);
      continue;
    }
    if (!s) return s;
    if (step.removed == 0) break;  // nothing left to evict
    freed += step.bytes;
    ++commits;
  }
  if (commits > 0) {
    // LMDB reuses the pages a transaction frees only from the second
    // transaction after it on. Rewriting the layout record commits one more
    // transaction, so the retried write can use every page this round freed
    // (large values need long runs of free pages).
    std::uint64_t ran_with = 0;
    const std::string layout = layout_record();
    const Status s = write_once(
        [&](MDB_txn* txn) {
          MDB_val key = as_val(kLayoutKey);
          MDB_val value = as_val(layout);
          const int rc = mdb_put(txn, dbs_.meta, &key, &value, 0);
          return rc == MDB_SUCCESS ? Status::ok() : status(rc, "cannot write the store layout");
        },
        ran_with);
    if (!s && s.code() != StatusCode::kFull) return s;
  }
  return Status::ok();
}

Status LmdbEnv::pinned_error(std::uint64_t bytes, std::uint64_t map, const Reader& reader) const {
  return full_error(bytes, map,
                    "a read transaction of process " + std::to_string(reader.pid) +
                        " has been open since transaction " + std::to_string(reader.txnid) +
                        ", older than the eviction that freed room, so the freed pages cannot be "
                        "reused until it ends");
}

Status LmdbEnv::full_error(std::uint64_t bytes, std::uint64_t map, std::string_view why) const {
  return Status::error(StatusCode::kFull,
                       "the cache is full: cannot store " + std::to_string(bytes) +
                           " bytes with max_size " + std::to_string(options_.map_size) +
                           " bytes (map " + std::to_string(map) + " bytes): " + std::string(why),
                       path_);
}

// ---- regions ----

Status LmdbEnv::region_db_name(std::string_view region, std::string& out) const {
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
  out.assign(kRegionPrefix);
  out += region;
  return Status::ok();
}

bool LmdbEnv::remember_region(const RegionRef& ref) {
  std::lock_guard lock(regions_mutex_);
  if (regions_.count(ref.name) != 0) return true;
  if (regions_.size() >= options_.max_regions) return false;
  regions_.emplace(ref.name, ref);
  region_names_.emplace(ref.id, ref.name);
  return true;
}

namespace {

std::string rid_key(std::string_view region) { return "rid:" + std::string(region); }

std::string rname_key(std::uint32_t id) {
  std::string key = "rname:";
  for (int shift = 24; shift >= 0; shift -= 8) key += static_cast<char>((id >> shift) & 0xff);
  return key;
}

std::string u32_le(std::uint32_t v) {
  std::string out(4, '\0');
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return out;
}

bool read_u32_le(const MDB_val& val, std::uint32_t& out) {
  if (val.mv_size != 4) return false;
  const auto* p = static_cast<const unsigned char*>(val.mv_data);
  out = std::uint32_t{p[0]} | std::uint32_t{p[1]} << 8 | std::uint32_t{p[2]} << 16 |
        std::uint32_t{p[3]} << 24;
  return true;
}

}  // namespace

Status LmdbEnv::open_region(std::string_view region, RegionRef& out) {
  std::string db_name;
  if (Status s = region_db_name(region, db_name); !s) return s;
  const auto regions_full = [&] {
    return Status::error(StatusCode::kInvalidArgument,
                         "cannot open region '" + std::string(region) + "': all " +
                             std::to_string(options_.max_regions) +
                             " regions allowed by the lmdb option max_regions are open in this "
                             "process (the first opener of a cache directory sets it)",
                         path_);
  };
  {
    std::lock_guard lock(regions_mutex_);
    if (const auto it = regions_.find(region); it != regions_.end()) {
      out = it->second;
      return Status::ok();
    }
    if (regions_.size() >= options_.max_regions) return regions_full();
  }
  if (read_only_) {
    std::optional<RegionRef> found;
    if (Status s = find_region(region, found); !s) return s;
    if (!found) return read_only_error("cannot create region '" + std::string(region) + "'");
    out = std::move(*found);
    return Status::ok();
  }

  // A new handle is private to its transaction until that commits, so open
  // it in a write transaction of its own and commit before anyone uses it.
  // Write transactions are serialised, which also keeps mdb_dbi_open calls
  // apart as LMDB requires.
  RegionRef ref;
  ref.name = std::string(region);
  const WriteBody body = [&](MDB_txn* txn) -> Status {
    if (const int rc = mdb_dbi_open(txn, db_name.c_str(), MDB_CREATE, &ref.dbi);
        rc != MDB_SUCCESS) {
      if (rc == MDB_DBS_FULL) return regions_full();
      return status(rc, "cannot open the sub-database of region '" + std::string(region) + "'");
    }
    const std::string rid = rid_key(region);
    MDB_val key = as_val(rid);
    MDB_val data{};
    int rc = mdb_get(txn, dbs_.meta, &key, &data);
    if (rc == MDB_SUCCESS && read_u32_le(data, ref.id)) return Status::ok();
    if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return status(rc, "cannot read region ids");
    // A new region: the next id.
    const std::string_view next_name = "next_region_id";
    MDB_val next_key = as_val(next_name);
    ref.id = 1;
    rc = mdb_get(txn, dbs_.meta, &next_key, &data);
    if (rc == MDB_SUCCESS && !read_u32_le(data, ref.id)) {
      return Status::error(StatusCode::kCorruption, "bad next_region_id record in _meta", path_);
    }
    if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return status(rc, "cannot read region ids");
    if (ref.id == 0 || ref.id == UINT32_MAX) {
      return Status::error(StatusCode::kNotSupported, "no region ids are left", path_);
    }
    const std::string id_bytes = u32_le(ref.id);
    const std::string next_bytes = u32_le(ref.id + 1);
    const std::string rname = rname_key(ref.id);
    for (auto [k, v] : {std::pair<std::string_view, std::string_view>{rid, id_bytes},
                        {rname, region},
                        {next_name, next_bytes}}) {
      MDB_val kv = as_val(k);
      MDB_val vv = as_val(v);
      if (const int r = mdb_put(txn, dbs_.meta, &kv, &vv, 0); r != MDB_SUCCESS) {
        return status(r, "cannot record region '" + std::string(region) + "'");
      }
    }
    return Status::ok();
  };
  if (Status s = write(body, 64 + 2 * region.size()); !s) return s;
  if (!remember_region(ref)) return regions_full();
  out = std::move(ref);
  return Status::ok();
}

Status LmdbEnv::find_region(std::string_view region, std::optional<RegionRef>& out) {
  out.reset();
  std::string db_name;
  if (Status s = region_db_name(region, db_name); !s) {
    // No such name can exist in the store.
    return s.code() == StatusCode::kInvalidArgument ? Status::ok() : s;
  }
  {
    std::lock_guard lock(regions_mutex_);
    if (const auto it = regions_.find(region); it != regions_.end()) {
      out = it->second;
      return Status::ok();
    }
  }
  // Opening a handle the first time takes a transaction that commits; a
  // write transaction (which changes nothing here, so its commit writes
  // nothing) keeps mdb_dbi_open calls apart from every other one.
  std::optional<RegionRef> found;
  const WriteBody body = [&](MDB_txn* txn) -> Status {
    found.reset();
    const std::string rid = rid_key(region);
    MDB_val key = as_val(rid);
    MDB_val data{};
    std::uint32_t id = 0;
    int rc = mdb_get(txn, dbs_.meta, &key, &data);
    if (rc == MDB_NOTFOUND || (rc == MDB_SUCCESS && !read_u32_le(data, id))) return Status::ok();
    if (rc != MDB_SUCCESS) return status(rc, "cannot read region ids");
    MDB_dbi dbi = 0;
    rc = mdb_dbi_open(txn, db_name.c_str(), 0, &dbi);
    if (rc == MDB_NOTFOUND) return Status::ok();
    if (rc != MDB_SUCCESS) {
      return status(rc, "cannot open the sub-database of region '" + std::string(region) + "'");
    }
    found = RegionRef{std::string(region), id, dbi};
    return Status::ok();
  };
  if (Status s = read_only_ ? read_keeping_handles(body) : write(body, 0); !s) return s;
  if (found && !remember_region(*found)) {
    return Status::error(StatusCode::kInvalidArgument,
                         "cannot open region '" + std::string(region) + "': all " +
                             std::to_string(options_.max_regions) +
                             " regions allowed by max_regions are open in this process",
                         path_);
  }
  out = std::move(found);
  return Status::ok();
}

Status LmdbEnv::list_regions(std::vector<RegionRef>& out) {
  out.clear();
  std::vector<std::string> names;
  {
    ReadTxn txn;
    if (Status s = begin_read(txn); !s) return s;
    MDB_cursor* cursor = nullptr;
    if (const int rc = mdb_cursor_open(txn.get(), dbs_.meta, &cursor); rc != MDB_SUCCESS) {
      return status(rc, "cannot read region ids");
    }
    const std::string_view prefix = "rid:";
    MDB_val key = as_val(prefix);
    MDB_val data{};
    int rc = mdb_cursor_get(cursor, &key, &data, MDB_SET_RANGE);
    while (rc == MDB_SUCCESS && as_view(key).substr(0, prefix.size()) == prefix) {
      names.emplace_back(as_view(key).substr(prefix.size()));
      rc = mdb_cursor_get(cursor, &key, &data, MDB_NEXT);
    }
    mdb_cursor_close(cursor);
    if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return status(rc, "cannot read region ids");
  }
  // The read transaction is over before find_region writes.
  for (const std::string& name : names) {
    std::optional<RegionRef> ref;
    if (Status s = find_region(name, ref); !s) return s;
    if (ref) out.push_back(std::move(*ref));
  }
  return Status::ok();
}

Status LmdbEnv::region_by_id(MDB_txn* txn, std::uint32_t id, std::optional<RegionRef>& out) {
  out.reset();
  {
    std::lock_guard lock(regions_mutex_);
    if (const auto it = region_names_.find(id); it != region_names_.end()) {
      out = regions_.at(it->second);
      return Status::ok();
    }
  }
  const std::string rname = rname_key(id);
  MDB_val key = as_val(rname);
  MDB_val data{};
  int rc = mdb_get(txn, dbs_.meta, &key, &data);
  if (rc == MDB_NOTFOUND) return Status::ok();
  if (rc != MDB_SUCCESS) return status(rc, "cannot read region names");
  RegionRef ref{std::string(as_view(data)), id, 0};
  std::string db_name;
  if (!region_db_name(ref.name, db_name)) return Status::ok();
  rc = mdb_dbi_open(txn, db_name.c_str(), 0, &ref.dbi);
  if (rc == MDB_NOTFOUND) return Status::ok();
  if (rc != MDB_SUCCESS) {
    return status(rc, "cannot open the sub-database of region '" + ref.name + "'");
  }
  out = std::move(ref);
  return Status::ok();
}

}  // namespace dogpile::internal
