#include "dogpile/store.h"

#include <fcntl.h>
#include <lmdb.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <future>
#include <limits>
#include <map>
#include <mutex>
#include <system_error>
#include <utility>

#include "backends/lmdb_env.h"
#include "backends/lmdb_layout.h"
#include "backends/stamp_file.h"
#include "dogpile/cache_dir.h"
#include "dogpile/clock.h"
#include "dogpile/error.h"
#include "time_math.h"
#include "unique_fd.h"

namespace dogpile {
namespace {

using internal::EntryHeader;
using internal::LmdbEnv;
using internal::ReadTxn;
using internal::RegionRef;
using internal::RemovalStep;
using internal::StoreDbs;

// Entries removed per write transaction by clear(): small enough that a
// writer in another process never waits long for the lock.
constexpr std::uint64_t kClearBatch = 1000;
// Progress callbacks run at most once per this many units (and at the end).
constexpr std::uint64_t kProgressStep = 4096;
// How often compact looks at the size of the copy it writes.
constexpr auto kCopyPoll = std::chrono::milliseconds(50);
// LMDB's free list: the database of pages that writes may reuse.
constexpr MDB_dbi kFreeListDbi = 0;
// Reads of the page counts stats() makes while writers keep committing
// between its snapshot and the environment's information, before it takes
// the two from neighbouring commits.
constexpr int kPageCountAttempts = 16;
// The store reads whatever an envelope holds: sizes are still checked
// against the bytes at hand, which is what keeps decoding safe.
constexpr std::size_t kAnyValueSize = std::numeric_limits<std::size_t>::max();

// ---- small helpers ----

struct CursorClose {
  void operator()(MDB_cursor* cursor) const noexcept { mdb_cursor_close(cursor); }
};
using CursorPtr = std::unique_ptr<MDB_cursor, CursorClose>;

Status open_cursor(LmdbEnv& env, MDB_txn* txn, MDB_dbi dbi, CursorPtr& out) {
  MDB_cursor* cursor = nullptr;
  if (const int rc = mdb_cursor_open(txn, dbi, &cursor); rc != MDB_SUCCESS) {
    return env.status(rc, "cannot open a cursor");
  }
  out.reset(cursor);
  return Status::ok();
}

std::string_view as_view(const MDB_val& val) noexcept {
  return {static_cast<const char*>(val.mv_data), val.mv_size};
}

MDB_val as_val(std::string_view bytes) noexcept {
  return MDB_val{bytes.size(), const_cast<char*>(bytes.data())};
}

std::uint32_t load_le32(const char* p) noexcept {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

std::uint64_t load_le64(const char* p) noexcept {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

bool starts_with(std::string_view s, std::string_view prefix) noexcept {
  return s.substr(0, prefix.size()) == prefix;
}

// Describes one entry record of `region` stored under `stored_key`. On
// return `envelope` views the record's envelope and, when info.valid,
// `view` is its decoded form; both point into `record`. Returns whether
// info.key is the user's key rather than a printable form of a hash.
bool describe_entry(std::string_view region, std::string_view stored_key, std::string_view record,
                    EntryInfo& info, std::string_view& envelope, EnvelopeView& view) {
  info = EntryInfo{};
  info.region = std::string(region);
  bool key_known = true;
  const auto fallback_key = [&](std::string_view env_bytes) {
    if (std::optional<std::string> key = internal::user_key(stored_key, env_bytes)) return *key;
    key_known = false;
    return internal::printable_stored_key(stored_key);
  };
  EntryHeader header;
  envelope = {};
  if (!internal::split_entry(record, header, envelope)) {
    info.size = record.size();
    info.key = fallback_key({});
    info.problem = "entry record is " + std::to_string(record.size()) +
                   " bytes, shorter than its " + std::to_string(internal::kEntryHeaderSize) +
                   "-byte header";
    return key_known;
  }
  info.size = envelope.size();
  info.write_seq = header.seq;
  const DecodeStatus status = decode_envelope(envelope, kAnyValueSize, view);
  if (status != DecodeStatus::kOk) {
    info.key = fallback_key(envelope);
    info.problem = describe_decode_failure(envelope, status);
    return key_known;
  }
  const char tag = stored_key.empty() ? '\0' : stored_key.front();
  if (tag == internal::kInlineTag) {
    info.key = std::string(stored_key.substr(1));
    if (view.full_key) {
      info.problem = "a short key whose envelope carries a full key";
      return true;
    }
  } else if (tag == internal::kHashTag) {
    if (!view.full_key) {
      info.key = internal::printable_stored_key(stored_key);
      info.problem = "a hashed key whose envelope lacks the full key";
      return false;
    }
    info.key = std::string(*view.full_key);
    internal::StoredKey expected(*view.full_key);
    if (expected.bytes() != stored_key) {
      info.problem = "stored under " + internal::printable_stored_key(stored_key) +
                     ", not under the hash of its full key";
      return true;
    }
  } else {
    info.key = internal::printable_stored_key(stored_key);
    info.problem = "stored key of an unknown form";
    return false;
  }
  info.valid = true;
  info.meta = view.meta;
  info.payload_size = view.payload.size();
  return true;
}

// Checks a region name as LmdbEnv::open_region does, without opening it.
Status check_region_name(std::string_view region, const std::string& path) {
  if (region.empty()) {
    return Status::error(StatusCode::kInvalidArgument, "region name is empty", path);
  }
  if (region.find('\0') != std::string_view::npos) {
    return Status::error(StatusCode::kInvalidArgument, "region name contains a NUL byte", path);
  }
  if (region.size() > LmdbEnv::kMaxRegionNameSize) {
    return Status::error(StatusCode::kInvalidArgument,
                         "region name is " + std::to_string(region.size()) +
                             " bytes long; at most " + std::to_string(LmdbEnv::kMaxRegionNameSize) +
                             " are allowed",
                         path);
  }
  return Status::ok();
}

// "Not found" is an I/O error with ENOENT: the CLI tells it apart by errno.
Status not_found(std::string message, std::string path) {
  return Status::error(StatusCode::kIOError, std::move(message), std::move(path), ENOENT);
}

Status region_not_found(std::string_view region, const std::string& path) {
  return not_found("the cache has no region named '" + std::string(region) + "'", path);
}

// Reports progress at most once per kProgressStep units, and at the end.
class ProgressTicker {
 public:
  ProgressTicker(const Progress& progress, std::uint64_t total)
      : progress_(progress), total_(total) {}

  void advance(std::uint64_t n = 1) {
    done_ += n;
    if (progress_ && done_ - reported_ >= kProgressStep) report();
  }
  void report() {
    reported_ = done_;
    if (progress_) progress_(done_, std::max(done_, total_));
  }
  // The last call says all is done, whatever the count reached.
  void finish() {
    if (progress_) progress_(std::max(done_, total_), std::max(done_, total_));
  }

 private:
  const Progress& progress_;
  const std::uint64_t total_;
  std::uint64_t done_ = 0;
  std::uint64_t reported_ = 0;
};

// Sums the page lists of LMDB's free list (FREE_DBI, dbi 0), as mdb_stat -f
// does: each record is an array of page numbers whose first element is
// their count.
Status count_free_pages(LmdbEnv& env, MDB_txn* txn, std::uint64_t& out) {
  out = 0;
  CursorPtr cursor;
  if (Status s = open_cursor(env, txn, kFreeListDbi, cursor); !s) return s;
  MDB_val k{};
  MDB_val v{};
  int rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_FIRST);
  for (; rc == MDB_SUCCESS; rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_NEXT)) {
    std::size_t count = 0;
    if (v.mv_size >= sizeof count) std::memcpy(&count, v.mv_data, sizeof count);
    if (v.mv_size < sizeof count || count > v.mv_size / sizeof count - 1) {
      return Status::error(StatusCode::kCorruption,
                           "LMDB's free list is damaged: a record of " +
                               std::to_string(v.mv_size) + " bytes lists " +
                               std::to_string(count) + " pages",
                           env.path() + "/data.mdb");
    }
    out += count;
  }
  if (rc != MDB_NOTFOUND) return env.status(rc, "cannot read LMDB's free list");
  return Status::ok();
}

// The data file's pages (StoreStats): `info` and the free list are read
// for one commit, the last, which the read transaction sees unless a
// writer commits between the two; then they are read again.
Status count_pages(LmdbEnv& env, MDB_envinfo& info, StoreStats& out) {
  MDB_stat env_stat{};
  if (const int rc = mdb_env_stat(env.raw(), &env_stat); rc != MDB_SUCCESS) {
    return env.status(rc, "cannot read the environment's statistics");
  }
  std::uint64_t free_pages = 0;
  for (int attempt = 1;; ++attempt) {
    ReadTxn txn;
    if (Status s = env.begin_read(txn); !s) return s;
    if (const int rc = mdb_env_info(env.raw(), &info); rc != MDB_SUCCESS) {
      return env.status(rc, "cannot read the environment's information");
    }
    if (info.me_last_txnid != mdb_txn_id(txn.get()) && attempt < kPageCountAttempts) continue;
    if (Status s = count_free_pages(env, txn.get(), free_pages); !s) return s;
    break;
  }
  // Pages 0 to me_last_pgno: the meta pages, every tree's, and the free ones.
  const std::uint64_t pages = std::uint64_t{info.me_last_pgno} + 1;
  out.page_size = env_stat.ms_psize;
  out.free_pages = std::min(free_pages, pages);
  out.used_pages = pages - out.free_pages;
  out.used_bytes = out.used_pages * out.page_size;
  out.free_bytes = out.free_pages * out.page_size;
  return Status::ok();
}

// The last write sequence of the write index (0: it is empty).
Status last_written(LmdbEnv& env, MDB_txn* txn, const StoreDbs& dbs, std::uint64_t& out) {
  out = 0;
  CursorPtr cursor;
  if (Status s = open_cursor(env, txn, dbs.written, cursor); !s) return s;
  MDB_val k{};
  MDB_val v{};
  const int rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_LAST);
  if (rc == MDB_NOTFOUND) return Status::ok();
  if (rc != MDB_SUCCESS) return env.status(rc, "cannot read the write index");
  // A malformed last key (damage verify reports): walk to the end.
  if (!internal::split_written_key(as_view(k), out)) {
    out = std::numeric_limits<std::uint64_t>::max();
  }
  return Status::ok();
}

Status entries_of(LmdbEnv& env, MDB_txn* txn, MDB_dbi dbi, std::uint64_t& out) {
  MDB_stat st{};
  if (const int rc = mdb_stat(txn, dbi, &st); rc != MDB_SUCCESS) {
    return env.status(rc, "cannot read a sub-database's statistics");
  }
  out = st.ms_entries;
  return Status::ok();
}

// ---- compact helpers ----

// `dest` must be missing or an empty directory.
Status check_destination(const std::string& dest) {
  struct stat st {};
  if (::lstat(dest.c_str(), &st) == 0) {
    if (S_ISLNK(st.st_mode)) {
      return Status::error(StatusCode::kInvalidArgument,
                           "compact destination is a symlink; give a new or empty directory", dest);
    }
    if (!S_ISDIR(st.st_mode)) {
      return Status::error(StatusCode::kInvalidArgument,
                           "compact destination exists and is not a directory", dest, ENOTDIR);
    }
    std::error_code ec;
    const bool empty = std::filesystem::is_empty(dest, ec);
    if (ec) return Status::io_error("cannot list compact destination", dest, ec.value());
    if (!empty) {
      return Status::error(StatusCode::kInvalidArgument,
                           "compact destination is not empty; give a new or empty directory", dest,
                           ENOTEMPTY);
    }
    return Status::ok();
  }
  if (errno != ENOENT) return Status::io_error("cannot stat compact destination", dest, errno);
  return Status::ok();
}

// A new file, 0600, never through a symlink.
// The bytes a compacted copy of `env` holds, counted as mdb_env_copyfd2
// (MDB_CP_COMPACT) counts them: every page up to the last one in use, less
// the free pages the free list names and the free list's own pages, which
// the copy leaves out. Another process's commit may change it before the
// copy starts.
Status compacted_size(LmdbEnv& env, std::uint64_t& out) {
  ReadTxn txn;
  if (Status s = env.begin_read(txn); !s) return s;
  MDB_envinfo info{};
  if (const int rc = mdb_env_info(env.raw(), &info); rc != MDB_SUCCESS) {
    return env.status(rc, "cannot read the environment's information");
  }
  constexpr MDB_dbi kFreeDbi = 0;  // LMDB's free list
  MDB_stat free_stat{};
  if (const int rc = mdb_stat(txn.get(), kFreeDbi, &free_stat); rc != MDB_SUCCESS) {
    return env.status(rc, "cannot read the free list's statistics");
  }
  std::uint64_t unused =
      free_stat.ms_branch_pages + free_stat.ms_leaf_pages + free_stat.ms_overflow_pages;
  CursorPtr cursor;
  if (Status s = open_cursor(env, txn.get(), kFreeDbi, cursor); !s) return s;
  MDB_val k{};
  MDB_val v{};
  int rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_FIRST);
  for (; rc == MDB_SUCCESS; rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_NEXT)) {
    // Each record is a page list whose first word is its length.
    std::size_t listed = 0;
    if (v.mv_size < sizeof listed) return env.status(MDB_CORRUPTED, "cannot read the free list");
    std::memcpy(&listed, v.mv_data, sizeof listed);
    unused += listed;
  }
  if (rc != MDB_NOTFOUND) return env.status(rc, "cannot read the free list");
  const std::uint64_t pages = std::uint64_t{info.me_last_pgno} + 1;
  out = (pages > unused ? pages - unused : 0) * free_stat.ms_psize;
  return Status::ok();
}

// mdb_env_copyfd2(MDB_CP_COMPACT) into `fd`. With `progress`, the copy runs
// on a thread of its own while this one reports the file's size every
// kCopyPoll, so the callback runs on the calling thread as purge's and
// verify's do. The size reported stays below `total`: the caller's last call
// says when the copy is done.
Status copy_compacted(LmdbEnv& env, int fd, const std::string& path, std::uint64_t total,
                      const Progress& progress, int& rc) {
  if (!progress) {
    rc = mdb_env_copyfd2(env.raw(), fd, MDB_CP_COMPACT);
    return Status::ok();
  }
  const auto report = [&] {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return Status::io_error("cannot stat", path, errno);
    const auto size = static_cast<std::uint64_t>(st.st_size);
    progress(std::min(size, total - 1), total);
    return Status::ok();
  };
  std::future<int> copy;
  try {
    copy = std::async(std::launch::async, mdb_env_copyfd2, env.raw(), fd, MDB_CP_COMPACT);
  } catch (const std::system_error& e) {
    return Status::io_error("cannot start the copy's thread", path, e.code().value());
  }
  // The future's destructor waits for the copy, should reporting fail.
  if (Status s = report(); !s) return s;
  while (copy.wait_for(kCopyPoll) == std::future_status::timeout) {
    if (Status s = report(); !s) return s;
  }
  rc = copy.get();
  return Status::ok();
}

Status create_file(const std::string& path, int& out) {
  out = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (out < 0) return Status::io_error("cannot create file", path, errno);
  return Status::ok();
}

Status sync_and_close(internal::UniqueFd& fd, const std::string& path) {
  if (::fsync(fd.get()) != 0) return Status::io_error("cannot sync file", path, errno);
  if (::close(fd.release()) != 0) return Status::io_error("cannot close file", path, errno);
  return Status::ok();
}

// Copies the invalidation stamps file `src` (when it exists) to `dest`. The
// source is read through a shared mapping with 8-byte atomic loads, the way
// its writers update it, so no copied stamp is ever torn.
Status copy_stamps(const std::string& src, const std::string& dest) {
  const int raw_fd = ::open(src.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (raw_fd < 0) {
    if (errno == ENOENT) return Status::ok();
    return Status::io_error("cannot open invalidation stamps", src, errno);
  }
  internal::UniqueFd in(raw_fd);
  struct stat st {};
  if (::fstat(in.get(), &st) != 0) return Status::io_error("cannot stat", src, errno);
  if (!S_ISREG(st.st_mode) ||
      static_cast<std::size_t>(st.st_size) != internal::StampFile::kFileSize) {
    return Status::error(StatusCode::kCorruption,
                         "invalidation stamps file is not a regular file of " +
                             std::to_string(internal::StampFile::kFileSize) + " bytes",
                         src);
  }
  constexpr std::size_t size = internal::StampFile::kFileSize;
  void* data = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, in.get(), 0);
  if (data == MAP_FAILED) return Status::io_error("cannot map invalidation stamps", src, errno);
  const internal::Mapping mapping(data, size);
  std::string bytes(size, '\0');
  const auto* words = static_cast<const std::uint64_t*>(data);
  for (std::size_t i = 0; i < size / sizeof(std::uint64_t); ++i) {
    const std::uint64_t word = __atomic_load_n(words + i, __ATOMIC_RELAXED);
    std::memcpy(bytes.data() + i * sizeof word, &word, sizeof word);
  }
  int out_fd = -1;
  if (Status s = create_file(dest, out_fd); !s) return s;
  internal::UniqueFd out(out_fd);
  for (std::size_t written = 0; written < bytes.size();) {
    const ssize_t n = ::write(out.get(), bytes.data() + written, bytes.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::io_error("cannot write", dest, errno);
    }
    written += static_cast<std::size_t>(n);
  }
  return sync_and_close(out, dest);
}

Status sync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::io_error("cannot open directory", dir, errno);
  internal::UniqueFd owned(fd);
  if (::fsync(owned.get()) != 0) return Status::io_error("cannot sync directory", dir, errno);
  return Status::ok();
}

// `dest` made absolute and normal, without a trailing slash. compact and
// compact_staging_path both use it: a program cleaning up after an
// interrupted compact must name the directory compact wrote.
std::filesystem::path normal_destination(const std::string& dest, std::error_code& ec) {
  std::filesystem::path p = std::filesystem::absolute(dest, ec).lexically_normal();
  if (p.filename().empty() && p.has_relative_path()) p = p.parent_path();  // "a/b/" is "a/b"
  return p;
}

// `.<name>.compacting` beside a normal destination.
std::filesystem::path staging_of(const std::filesystem::path& dest) {
  return dest.parent_path() / ("." + dest.filename().string() + ".compacting");
}

// The files a compacted copy holds, in the staging directory and then in
// the destination.
constexpr const char* kCopyFiles[] = {"data.mdb", internal::StampFile::kFileName};

// The staging directory of a compact into `dest`, held under an exclusive
// flock() for as long as the copy is written: a second compact into the same
// destination is refused, and one left by a killed compact (its lock gone
// with its process) is cleared and used again.
class Staging {
 public:
  ~Staging() {
    if (done_ || fd_.get() < 0) return;
    remove_files();
    ::rmdir(path_.c_str());
  }

  // `dest` is normal (normal_destination).
  Status open(const std::filesystem::path& dest) {
    path_ = staging_of(dest).string();
    parent_ = dest.parent_path().string();
    // The parent is only where the copy goes (it may be /tmp): it is not
    // held to a cache directory's rules, but made like one when missing.
    struct stat parent_st {};
    if (::stat(parent_.c_str(), &parent_st) != 0) {
      if (errno != ENOENT) {
        return Status::io_error("cannot stat compact destination's parent", parent_, errno);
      }
      if (Status s = ensure_cache_dir(parent_); !s) return s;
    } else if (!S_ISDIR(parent_st.st_mode)) {
      return Status::error(StatusCode::kInvalidArgument,
                           "compact destination's parent is not a directory", parent_, ENOTDIR);
    }
    if (::mkdir(path_.c_str(), 0700) != 0 && errno != EEXIST) {
      return Status::io_error("cannot create the compact staging directory", path_, errno);
    }
    fd_ = internal::UniqueFd(::open(path_.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (fd_.get() < 0) {
      return Status::io_error("cannot open the compact staging directory (not a directory?)", path_,
                              errno);
    }
    if (::flock(fd_.get(), LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      fd_ = internal::UniqueFd();
      if (err == EWOULDBLOCK) {
        return Status::error(StatusCode::kIOError,
                             "another compact into " + dest.string() + " is running (it holds " +
                                 path_ + ")",
                             path_, err);
      }
      return Status::io_error("cannot lock the compact staging directory", path_, err);
    }
    struct stat st {};
    if (::fstat(fd_.get(), &st) != 0 || st.st_uid != ::geteuid()) {
      return Status::error(StatusCode::kInvalidArgument,
                           "compact staging directory belongs to another user", path_);
    }
    // A killed compact's leftovers are ours to remove; anything else is not.
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(path_, ec)) {
      const std::string name = entry.path().filename().string();
      if (std::find(std::begin(kCopyFiles), std::end(kCopyFiles), name) == std::end(kCopyFiles)) {
        return Status::error(StatusCode::kInvalidArgument,
                             "compact staging directory holds a file compact did not write: " +
                                 name,
                             path_);
      }
    }
    if (ec) return Status::io_error("cannot list the compact staging directory", path_, ec.value());
    remove_files();
    return Status::ok();
  }

  std::string file(std::string_view name) const { return path_ + "/" + std::string(name); }

  // Renames the complete copy to `dest` (replacing it when it is an empty
  // directory) and syncs the parent, so the copy appears whole or not at all.
  Status publish(const std::string& dest) {
    if (Status s = sync_directory(path_); !s) return s;
    if (::rename(path_.c_str(), dest.c_str()) != 0) {
      return Status::io_error("cannot move the compacted copy into place", dest, errno);
    }
    done_ = true;
    return sync_directory(parent_);
  }

 private:
  void remove_files() noexcept {
    for (const char* name : kCopyFiles) ::unlink(file(name).c_str());
  }

  std::string path_;
  std::string parent_;  // of the destination
  internal::UniqueFd fd_;
  bool done_ = false;
};

}  // namespace

// ---- Store::Impl ----

struct Store::Impl {
  Impl(std::string p, const internal::LmdbEnvOptions& o, std::shared_ptr<Clock> c)
      : path(std::move(p)), env_options(o), clock(std::move(c)) {}

  // The environment of this process: reacquired in a fork()ed child, where
  // the parent's must not be used.
  Status env(std::shared_ptr<LmdbEnv>& out) {
    std::lock_guard lock(mutex_);
    if (!env_ || !env_->is_current()) {
      std::shared_ptr<LmdbEnv> fresh;
      if (Status s = LmdbEnv::acquire(path, env_options, fresh); !s) return s;
      // The stale one is leaked by its deleter when released in a child.
      env_ = std::move(fresh);
    }
    out = env_;
    return Status::ok();
  }

  Status regions(std::vector<std::string>& out);
  Status stats(StoreStats& out);
  Status list(const ListOptions& options, std::vector<EntryInfo>& out);
  Status get(std::string_view region, std::string_view key, Entry& out, bool& found);
  Status erase(std::string_view region, std::string_view key, bool& erased);
  Status purge(const PurgeOptions& options, const Progress& progress, PurgeReport& out);
  Status clear(std::optional<std::string_view> region, std::uint64_t& out);
  Status zero_stats(std::optional<std::string_view> region, ZeroReport& out);
  Status invalidate(std::string_view region, bool hard);
  Status verify(const Progress& progress, VerifyReport& out);
  Status compact(const std::string& dest, const Progress& progress);

  // A region's invalidation stamps (0: never), from the directory's stamps
  // file when there is one: inspecting never creates it.
  Status region_stamps(std::string_view region, std::int64_t& hard, std::int64_t& soft);
  // Sets info.invalidated from its region's stamps.
  Status judge_invalidation(EntryInfo& info);

  const std::string path;
  const internal::LmdbEnvOptions env_options;
  const std::shared_ptr<Clock> clock;

 private:
  std::mutex mutex_;
  std::shared_ptr<LmdbEnv> env_;  // guarded by mutex_
  // Its own mutex, taken with nothing else after it: region_stamps runs
  // inside read transactions, and env() opens one under mutex_.
  std::mutex stamps_mutex_;
  std::shared_ptr<internal::StampFile> stamps_;  // guarded by stamps_mutex_; once found
};

Status Store::Impl::region_stamps(std::string_view region, std::int64_t& hard,
                                  std::int64_t& soft) {
  hard = soft = 0;
  std::shared_ptr<internal::StampFile> file;
  {
    std::lock_guard lock(stamps_mutex_);
    if (!stamps_) {
      const std::string stamps_path = path + "/" + internal::StampFile::kFileName;
      struct stat st {};
      if (::lstat(stamps_path.c_str(), &st) != 0) {
        if (errno == ENOENT) return Status::ok();  // never invalidated
        return Status::io_error("cannot stat invalidation stamps", stamps_path, errno);
      }
      // Opening maps it read-write; a copy this user may only read is shown
      // without stamps, as a read-only region reads it.
      if (::faccessat(AT_FDCWD, stamps_path.c_str(), R_OK | W_OK, AT_EACCESS) != 0) {
        return Status::ok();
      }
      if (Status s = internal::StampFile::open(stamps_path, stamps_); !s) return s;
    }
    file = stamps_;
  }
  const std::int64_t slot = file->find(internal::StampFile::region_hash(region));
  if (slot < 0) return Status::ok();
  hard = file->stamp(static_cast<std::uint32_t>(slot), internal::StampFile::Kind::kHard);
  soft = file->stamp(static_cast<std::uint32_t>(slot), internal::StampFile::Kind::kSoft);
  return Status::ok();
}

Status Store::Impl::judge_invalidation(EntryInfo& info) {
  info.invalidated = Invalidated::kNo;
  if (!info.valid) return Status::ok();
  std::int64_t hard = 0;
  std::int64_t soft = 0;
  if (Status s = region_stamps(info.region, hard, soft); !s) return s;
  if (internal::older_than(info.meta.sequence, hard)) {
    info.invalidated = Invalidated::kHard;
  } else if (internal::older_than(info.meta.sequence, soft)) {
    info.invalidated = Invalidated::kSoft;
  }
  return Status::ok();
}

Status Store::Impl::regions(std::vector<std::string>& out) {
  std::shared_ptr<LmdbEnv> e;
  if (Status s = env(e); !s) return s;
  std::vector<RegionRef> refs;
  if (Status s = internal::list_regions(*e, refs); !s) return s;
  out.clear();
  for (RegionRef& ref : refs) out.push_back(std::move(ref.name));
  return Status::ok();
}

Status Store::Impl::stats(StoreStats& out) {
  std::shared_ptr<LmdbEnv> e;
  if (Status s = env(e); !s) return s;
  std::vector<RegionRef> refs;
  if (Status s = internal::list_regions(*e, refs); !s) return s;
  const StoreDbs& dbs = e->store_dbs();

  out = StoreStats{};
  out.path = path;
  out.total.name = "total";
  {
    ReadTxn txn;
    if (Status s = e->begin_read(txn); !s) return s;
    std::map<std::string, RegionUsage, std::less<>> usage;
    for (const RegionRef& ref : refs) {
      MDB_stat st{};
      if (const int rc = mdb_stat(txn.get(), ref.dbi, &st); rc != MDB_SUCCESS) {
        return e->status(rc, "cannot read the statistics of region '" + ref.name + "'");
      }
      RegionUsage& u = usage[ref.name];
      u.name = ref.name;
      u.entries = st.ms_entries;
      u.bytes = (st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages) *
                std::uint64_t{st.ms_psize};
    }
    // Counters may exist for a region that never stored anything (a region
    // that only missed), so list every "stats:" record, not just the regions.
    CursorPtr cursor;
    if (Status s = open_cursor(*e, txn.get(), dbs.meta, cursor); !s) return s;
    constexpr std::string_view kStatsPrefix = "stats:";
    MDB_val k = as_val(kStatsPrefix);
    MDB_val v{};
    int rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_SET_RANGE);
    for (; rc == MDB_SUCCESS; rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_NEXT)) {
      const std::string_view key = as_view(k);
      if (!starts_with(key, kStatsPrefix)) break;
      const std::string name(key.substr(kStatsPrefix.size()));
      if (name.empty()) continue;
      RegionUsage& u = usage[name];
      u.name = name;
    }
    if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return e->status(rc, "cannot read _meta");
    if (Status s = internal::read_max_size(txn.get(), dbs, out.max_size); !s) return s;
    for (auto& [name, u] : usage) {
      if (Status s = internal::read_usage(txn.get(), dbs, name, u.counters); !s) return s;
      if (Status s = region_stamps(name, u.hard_stamp, u.soft_stamp); !s) return s;
      out.total.entries += u.entries;
      out.total.bytes += u.bytes;
      out.total.counters += u.counters;
      out.regions.push_back(std::move(u));
    }
  }

  MDB_envinfo info{};
  if (Status s = count_pages(*e, info, out); !s) return s;
  out.map_size = info.me_mapsize;
  out.max_readers = info.me_maxreaders;
  // me_numreaders is the table's high-water mark; count the slots held now
  // (pooled readers of live processes included).
  std::uint32_t lines = 0;
  const int rc = mdb_reader_list(
      e->raw(),
      [](const char*, void* ctx) {
        ++*static_cast<std::uint32_t*>(ctx);
        return 0;
      },
      &lines);
  if (rc != MDB_SUCCESS) return e->status(rc, "cannot read the reader table");
  // One line is a header, or "(no active readers)".
  out.readers_used = lines > 0 ? lines - 1 : 0;

  struct stat st {};
  const std::string data_path = path + "/data.mdb";
  if (::stat(data_path.c_str(), &st) != 0) return Status::io_error("cannot stat", data_path, errno);
  out.file_size = static_cast<std::uint64_t>(st.st_size);
  return Status::ok();
}

Status Store::Impl::list(const ListOptions& options, std::vector<EntryInfo>& out) {
  out.clear();
  std::shared_ptr<LmdbEnv> e;
  if (Status s = env(e); !s) return s;
  std::vector<RegionRef> refs;
  if (options.region) {
    std::optional<RegionRef> ref;
    if (Status s = internal::find_region(*e, *options.region, ref); !s) return s;
    if (ref) refs.push_back(std::move(*ref));
  } else {
    if (Status s = internal::list_regions(*e, refs); !s) return s;
  }
  const auto full = [&] { return options.limit != 0 && out.size() >= options.limit; };

  for (const RegionRef& ref : refs) {
    if (full()) break;
    ReadTxn txn;
    if (Status s = e->begin_read(txn); !s) return s;
    CursorPtr cursor;
    if (Status s = open_cursor(*e, txn.get(), ref.dbi, cursor); !s) return s;

    // Scans stored keys from `start` while they begin with `range`; adds
    // those whose key begins with the prefix.
    const auto scan = [&](std::string_view start, std::string_view range) -> Status {
      MDB_val k{};
      MDB_val v{};
      int rc = MDB_NOTFOUND;
      if (start.empty()) {
        rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_FIRST);
      } else {
        k = as_val(start);
        rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_SET_RANGE);
      }
      for (; rc == MDB_SUCCESS && !full(); rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_NEXT)) {
        const std::string_view stored = as_view(k);
        if (!starts_with(stored, range)) break;
        EntryInfo info;
        std::string_view envelope;
        EnvelopeView view;
        // A hashed entry whose full key cannot be read matches only the
        // empty prefix.
        const bool key_known = describe_entry(ref.name, stored, as_view(v), info, envelope, view);
        if (!options.prefix.empty() && !(key_known && starts_with(info.key, options.prefix))) {
          continue;
        }
        if (Status s = judge_invalidation(info); !s) return s;
        out.push_back(std::move(info));
      }
      if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) {
        return e->status(rc, "cannot list region '" + ref.name + "'");
      }
      return Status::ok();
    };

    if (options.prefix.empty()) {
      if (Status s = scan({}, {}); !s) return s;
      continue;
    }
    // Hashed keys sort before inline ones ('h' < 'k'), so this keeps the
    // stored-key order. Only inline keys can be found by their prefix.
    static_assert(internal::kHashTag < internal::kInlineTag);
    const std::string hashed(1, internal::kHashTag);
    if (Status s = scan(hashed, hashed); !s) return s;
    if (options.prefix.size() > kMaxInlineKeySize) continue;  // only hashed keys are that long
    const std::string inline_start = internal::kInlineTag + options.prefix;
    if (Status s = scan(inline_start, inline_start); !s) return s;
  }
  return Status::ok();
}

Status Store::Impl::get(std::string_view region, std::string_view key, Entry& out, bool& found) {
  found = false;
  std::shared_ptr<LmdbEnv> e;
  if (Status s = env(e); !s) return s;
  std::optional<RegionRef> ref;
  if (Status s = internal::find_region(*e, region, ref); !s) return s;
  if (!ref) return Status::ok();

  ReadTxn txn;
  if (Status s = e->begin_read(txn); !s) return s;
  internal::StoredKey stored(key);
  MDB_val k = stored.val();
  MDB_val v{};
  const int rc = mdb_get(txn.get(), ref->dbi, &k, &v);
  if (rc == MDB_NOTFOUND) return Status::ok();
  if (rc != MDB_SUCCESS) return e->status(rc, "cannot read region '" + ref->name + "'");

  EntryInfo info;
  std::string_view envelope;
  EnvelopeView view;
  describe_entry(ref->name, stored.bytes(), as_view(v), info, envelope, view);
  // Another long key with the same hash: not this key's entry.
  if (info.valid && info.key != key) return Status::ok();
  info.key = std::string(key);
  if (Status s = judge_invalidation(info); !s) return s;
  out.envelope.assign(envelope.data(), envelope.size());
  if (info.valid) {
    out.payload.assign(view.payload.data(), view.payload.size());
  } else {
    out.payload.clear();
  }
  out.info = std::move(info);
  found = true;
  return Status::ok();
}

Status Store::Impl::erase(std::string_view region, std::string_view key, bool& erased) {
  erased = false;
  std::shared_ptr<LmdbEnv> e;
  if (Status s = env(e); !s) return s;
  std::optional<RegionRef> ref;
  if (Status s = internal::find_region(*e, region, ref); !s) return s;
  if (!ref) return Status::ok();
  internal::StoredKey stored(key);
  // write() grows a full map: even a removal needs a few free pages.
  return e->write(
      [&](MDB_txn* txn) {
        erased = false;
        return internal::erase_entry(txn, e->store_dbs(), *ref, stored.bytes(), erased);
      },
      0);
}

Status Store::Impl::purge(const PurgeOptions& options, const Progress& progress,
                          PurgeReport& out) {
  out = PurgeReport{};
  if (options.older_than && options.older_than->count() <= 0) {
    return Status::error(StatusCode::kInvalidArgument,
                         "purge option 'older_than': must be above 0 (clear removes everything)",
                         path);
  }
  std::shared_ptr<LmdbEnv> e;
  if (Status s = env(e); !s) return s;
  const StoreDbs& dbs = e->store_dbs();
  const std::uint64_t batch = std::max<std::uint64_t>(options.batch, 1);
  std::uint64_t written = 0;   // entries in the write index
  std::uint64_t last_seq = 0;  // the last write sequence in it
  {
    ReadTxn txn;
    if (Status s = e->begin_read(txn); !s) return s;
    if (Status s = entries_of(*e, txn.get(), dbs.expiry, out.scanned); !s) return s;
    if (options.older_than) {
      if (Status s = entries_of(*e, txn.get(), dbs.written, written); !s) return s;
      if (Status s = last_written(*e, txn.get(), dbs, last_seq); !s) return s;
    }
  }
  // Entries that expire while the purge runs are left for the next one, so
  // it always ends.
  const std::int64_t now_ns = internal::wall_ns(clock->now());
  ProgressTicker ticker(progress, out.scanned + written);
  for (;;) {
    RemovalStep step;
    if (Status s = e->write(
            [&](MDB_txn* txn) {
              step = RemovalStep{};
              return internal::purge_expired(*e, txn, dbs, now_ns, batch, step);
            },
            0);
        !s) {
      return s;
    }
    if (step.removed == 0) break;
    out.removed += step.removed;
    ticker.advance(step.removed);
    ticker.report();
    if (!step.more) break;
  }
  if (options.older_than) {
    // The expiry index is done with, however much of it was expired.
    ticker.advance(out.scanned - std::min(out.scanned, out.removed));
    const std::int64_t created_before =
        internal::saturating_sub(now_ns, options.older_than->count());
    std::string resume;  // where the walk of the write index goes on
    for (bool more = true; more;) {
      RemovalStep step;
      std::uint64_t examined = 0;
      std::string next;
      if (Status s = e->write(
              [&](MDB_txn* txn) {
                step = RemovalStep{};
                examined = 0;
                next = resume;
                return internal::purge_created_before(*e, txn, dbs, created_before, last_seq,
                                                      batch, next, examined, step);
              },
              0);
          !s) {
        return s;
      }
      resume = std::move(next);
      out.removed_older += step.removed;
      out.examined += examined;
      ticker.advance(examined);
      ticker.report();
      more = step.more;
    }
  }
  ticker.finish();
  return Status::ok();
}

Status Store::Impl::clear(std::optional<std::string_view> region, std::uint64_t& out) {
  out = 0;
  std::shared_ptr<LmdbEnv> e;
  if (Status s = env(e); !s) return s;
  std::vector<RegionRef> refs;
  if (region) {
    std::optional<RegionRef> ref;
    if (Status s = internal::find_region(*e, *region, ref); !s) return s;
    if (!ref) return region_not_found(*region, path);
    refs.push_back(std::move(*ref));
  } else {
    if (Status s = internal::list_regions(*e, refs); !s) return s;
  }
  const StoreDbs& dbs = e->store_dbs();
  for (const RegionRef& ref : refs) {
    for (;;) {
      RemovalStep step;
      if (Status s = e->write(
              [&](MDB_txn* txn) {
                step = RemovalStep{};
                return internal::clear_region(txn, dbs, ref, kClearBatch, step);
              },
              0);
          !s) {
        return s;
      }
      out += step.removed;
      if (step.removed == 0 || !step.more) break;
    }
  }
  return Status::ok();
}

Status Store::Impl::zero_stats(std::optional<std::string_view> region, ZeroReport& out) {
  out = ZeroReport{};
  std::shared_ptr<LmdbEnv> e;
  if (Status s = env(e); !s) return s;
  if (region) {
    std::optional<RegionRef> ref;
    if (Status s = internal::find_region(*e, *region, ref); !s) return s;
    if (!ref) return region_not_found(*region, path);
  }
  // One transaction reads and removes: the writers' read-add-write
  // transactions (add_usage) come wholly before or after it.
  return e->write(
      [&](MDB_txn* txn) {
        out = ZeroReport{};
        return internal::reset_usage(txn, e->store_dbs(), region, out.counters, out.regions);
      },
      0);
}

Status Store::Impl::invalidate(std::string_view region, bool hard) {
  // A region that never stored anything may still be invalidated: it only
  // claims a stamp slot, and the stamp is what its first writer will see.
  if (Status s = check_region_name(region, path); !s) return s;
  std::shared_ptr<LmdbEnv> e;
  if (Status s = env(e); !s) return s;
  std::shared_ptr<InvalidationStrategy> stamps;
  if (Status s = internal::open_stamp_invalidation(
          path, region, e->options().durability != Durability::kNoSync, stamps);
      !s) {
    return s;
  }
  return stamps->invalidate(hard);
}

Status Store::Impl::verify(const Progress& progress, VerifyReport& out) {
  out = VerifyReport{};
  std::shared_ptr<LmdbEnv> e;
  if (Status s = env(e); !s) return s;
  std::vector<RegionRef> refs;
  if (Status s = internal::list_regions(*e, refs); !s) return s;
  const StoreDbs& dbs = e->store_dbs();
  std::map<std::uint32_t, const RegionRef*> by_id;
  for (const RegionRef& ref : refs) by_id.emplace(ref.id, &ref);

  // One snapshot: entries and indexes are only consistent with each other
  // within a transaction.
  ReadTxn txn;
  if (Status s = e->begin_read(txn); !s) return s;

  std::uint64_t total = 0;
  for (const MDB_dbi dbi : {dbs.written, dbs.expiry}) {
    std::uint64_t n = 0;
    if (Status s = entries_of(*e, txn.get(), dbi, n); !s) return s;
    total += n;
  }
  for (const RegionRef& ref : refs) {
    std::uint64_t n = 0;
    if (Status s = entries_of(*e, txn.get(), ref.dbi, n); !s) return s;
    total += n;
  }
  ProgressTicker ticker(progress, total);
  const auto problem = [&](std::string region, std::string key, std::string what) {
    out.problems.push_back(VerifyProblem{std::move(region), std::move(key), std::move(what)});
  };

  // The layout record and the write sequence, which must not fall behind
  // the sequences in use (new writes would reuse them).
  std::uint64_t meta_seq = 0;
  {
    MDB_val k = as_val("layout");
    MDB_val v{};
    const int rc = mdb_get(txn.get(), dbs.meta, &k, &v);
    if (rc == MDB_NOTFOUND) {
      problem({}, {}, "_meta has no layout record");
    } else if (rc != MDB_SUCCESS) {
      return e->status(rc, "cannot read _meta");
    } else if (v.mv_size != 4 ||
               load_le32(static_cast<const char*>(v.mv_data)) != internal::kStoreLayoutVersion) {
      problem({}, {},
              "_meta layout record is not layout version " +
                  std::to_string(internal::kStoreLayoutVersion));
    }
    k = as_val("seq");
    const int seq_rc = mdb_get(txn.get(), dbs.meta, &k, &v);
    if (seq_rc == MDB_SUCCESS && v.mv_size == 8) {
      meta_seq = load_le64(static_cast<const char*>(v.mv_data));
    } else if (seq_rc != MDB_SUCCESS && seq_rc != MDB_NOTFOUND) {
      return e->status(seq_rc, "cannot read _meta");
    } else if (seq_rc == MDB_SUCCESS) {
      problem({}, {}, "_meta seq record is " + std::to_string(v.mv_size) + " bytes, not 8");
    }
  }
  std::uint64_t max_seq = 0;

  // Entries: envelope, header, and their index entries.
  for (const RegionRef& ref : refs) {
    CursorPtr cursor;
    if (Status s = open_cursor(*e, txn.get(), ref.dbi, cursor); !s) return s;
    MDB_val k{};
    MDB_val v{};
    int rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_FIRST);
    for (; rc == MDB_SUCCESS; rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_NEXT)) {
      ++out.entries;
      ticker.advance();
      const std::string_view stored = as_view(k);
      EntryInfo info;
      std::string_view envelope;
      EnvelopeView view;
      describe_entry(ref.name, stored, as_view(v), info, envelope, view);
      if (!info.problem.empty()) problem(ref.name, info.key, info.problem);
      EntryHeader header;
      std::string_view unused;
      if (!internal::split_entry(as_view(v), header, unused)) continue;
      max_seq = std::max(max_seq, header.seq);

      if (info.valid) {
        const std::int64_t expected = info.meta.expires_at_ns.value_or(internal::kNoExpiry);
        if (header.expires_at_ns != expected) {
          problem(ref.name, info.key,
                  "entry header expires_at " + std::to_string(header.expires_at_ns) +
                      " differs from the envelope's " + std::to_string(expected));
        }
      }
      const std::string target = internal::make_index_value(ref.id, stored);
      const auto check_index = [&](MDB_dbi dbi, const std::string& key,
                                   std::string_view name) -> Status {
        MDB_val ik = as_val(key);
        MDB_val iv{};
        const int irc = mdb_get(txn.get(), dbi, &ik, &iv);
        if (irc == MDB_NOTFOUND) {
          problem(ref.name, info.key,
                  "no " + std::string(name) + " index entry for write sequence " +
                      std::to_string(header.seq));
        } else if (irc != MDB_SUCCESS) {
          return e->status(irc, "cannot read " + std::string(name));
        } else if (as_view(iv) != target) {
          problem(ref.name, info.key,
                  "the " + std::string(name) + " index entry for write sequence " +
                      std::to_string(header.seq) + " names another entry");
        }
        return Status::ok();
      };
      if (Status s = check_index(dbs.written, internal::make_written_key(header.seq),
                                 internal::kWrittenDb);
          !s) {
        return s;
      }
      if (header.expires_at_ns != internal::kNoExpiry) {
        if (Status s = check_index(
                dbs.expiry, internal::make_expiry_key(header.expires_at_ns, header.seq),
                internal::kExpiryDb);
            !s) {
          return s;
        }
      }
    }
    if (rc != MDB_NOTFOUND) return e->status(rc, "cannot read region '" + ref.name + "'");
  }

  // Index entries: each must name an existing entry with the same write
  // sequence (and, for _expiry, the same expires_at). This direction also
  // finds an _expiry entry for an entry that has no expiry.
  const auto check_index_db = [&](MDB_dbi dbi, std::string_view name, bool expiry) -> Status {
    CursorPtr cursor;
    if (Status s = open_cursor(*e, txn.get(), dbi, cursor); !s) return s;
    MDB_val k{};
    MDB_val v{};
    int rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_FIRST);
    for (; rc == MDB_SUCCESS; rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_NEXT)) {
      ++out.index_entries;
      ticker.advance();
      const std::string_view key = as_view(k);
      const std::string_view value = as_view(v);
      std::uint64_t seq = 0;
      std::int64_t expires_at = 0;
      internal::IndexTarget index_target;
      const bool key_ok = expiry ? internal::split_expiry_key(key, expires_at, seq)
                                 : internal::split_written_key(key, seq);
      if (!key_ok || !internal::split_index_value(value, index_target)) {
        problem({}, {},
                "malformed " + std::string(name) + " index entry (key " +
                    std::to_string(key.size()) + " bytes, value " + std::to_string(value.size()) +
                    " bytes)");
        continue;
      }
      std::string entry_name = std::string(name) + " entry " + std::to_string(seq);
      if (expiry) entry_name += " (expires_at " + std::to_string(expires_at) + ")";
      const std::uint32_t region_id = index_target.region_id;
      const std::string_view stored = index_target.stored_key;
      const std::string printable = internal::printable_stored_key(stored);
      const auto region = by_id.find(region_id);
      if (region == by_id.end()) {
        problem({}, printable,
                entry_name + " names region id " + std::to_string(region_id) +
                    ", which the store does not know");
        continue;
      }
      const RegionRef& ref = *region->second;
      MDB_val ek = as_val(stored);
      MDB_val ev{};
      const int erc = mdb_get(txn.get(), ref.dbi, &ek, &ev);
      if (erc == MDB_NOTFOUND) {
        problem(ref.name, printable, "index entry points to a missing entry (" + entry_name + ")");
        continue;
      }
      if (erc != MDB_SUCCESS) return e->status(erc, "cannot read region '" + ref.name + "'");
      EntryHeader header;
      std::string_view envelope;
      if (!internal::split_entry(as_view(ev), header, envelope)) continue;  // reported above
      const std::string user = internal::user_key(stored, envelope).value_or(printable);
      if (header.seq != seq) {
        problem(
            ref.name, user,
            entry_name + " points to an entry with write sequence " + std::to_string(header.seq));
      } else if (expiry && header.expires_at_ns != expires_at) {
        problem(ref.name, user,
                entry_name + " differs from the entry's expires_at " +
                    (header.expires_at_ns == internal::kNoExpiry
                         ? std::string("(none)")
                         : std::to_string(header.expires_at_ns)));
      }
    }
    if (rc != MDB_NOTFOUND) return e->status(rc, "cannot read " + std::string(name));
    return Status::ok();
  };
  if (Status s = check_index_db(dbs.written, internal::kWrittenDb, false); !s) return s;
  if (Status s = check_index_db(dbs.expiry, internal::kExpiryDb, true); !s) return s;

  if (max_seq > meta_seq) {
    problem({}, {},
            "_meta seq " + std::to_string(meta_seq) + " is below write sequence " +
                std::to_string(max_seq) + " in use");
  }
  ticker.finish();
  return Status::ok();
}

Status Store::Impl::compact(const std::string& dest_arg, const Progress& progress) {
  if (dest_arg.empty()) {
    return Status::error(StatusCode::kInvalidArgument, "compact destination is empty");
  }
  std::error_code ec;
  const std::filesystem::path normal = normal_destination(dest_arg, ec);
  if (ec) return Status::io_error("cannot make the path absolute", dest_arg, ec.value());
  const std::string dest = normal.string();
  std::shared_ptr<LmdbEnv> e;
  if (Status s = env(e); !s) return s;
  if (Status s = check_destination(dest); !s) return s;

  // The copy is written in a staging directory beside `dest` and renamed
  // into place when complete: an interrupted compact never leaves a partial
  // data.mdb where a cache is expected.
  Staging staging;
  if (Status s = staging.open(normal); !s) return s;
  const std::string data_dest = staging.file("data.mdb");
  int raw_fd = -1;
  if (Status s = create_file(data_dest, raw_fd); !s) return s;
  internal::UniqueFd fd(raw_fd);
  std::uint64_t total = 0;
  if (progress) {
    if (Status s = compacted_size(*e, total); !s) return s;
    total = std::max<std::uint64_t>(total, 1);
  }
  for (int attempt = 0;; ++attempt) {
    int rc = MDB_SUCCESS;
    {
      // Holding a read transaction keeps this process from remapping
      // (absorbing another process's growth) while the copy reads the map.
      ReadTxn pin;
      if (Status s = e->begin_read(pin); !s) return s;
      if (Status s = copy_compacted(*e, fd.get(), data_dest, total, progress, rc); !s) return s;
    }
    if (rc == MDB_SUCCESS) break;
    // The map grew between our transaction and the copy's: the next
    // transaction adopts the new size; start the file over.
    if (rc != MDB_MAP_RESIZED || attempt > 0) {
      return e->status(rc, "cannot write a compacted copy to " + data_dest);
    }
    if (::ftruncate(fd.get(), 0) != 0 || ::lseek(fd.get(), 0, SEEK_SET) != 0) {
      return Status::io_error("cannot truncate", data_dest, errno);
    }
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::io_error("cannot stat", data_dest, errno);
  const auto copied = static_cast<std::uint64_t>(st.st_size);
  if (Status s = sync_and_close(fd, data_dest); !s) return s;
  if (Status s = copy_stamps(path + "/" + internal::StampFile::kFileName,
                             staging.file(internal::StampFile::kFileName));
      !s) {
    return s;
  }
  if (Status s = staging.publish(dest); !s) return s;
  if (progress) progress(copied, copied);
  return Status::ok();
}

std::string Store::compact_staging_path(const std::string& dest) {
  std::error_code ec;
  const std::filesystem::path normal = normal_destination(dest, ec);
  // Without a working directory compact fails before it stages anything.
  return staging_of(ec ? std::filesystem::path(dest) : normal).string();
}

// ---- Store ----

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Store::Store(Store&&) noexcept = default;
Store& Store::operator=(Store&&) noexcept = default;
Store::~Store() = default;

Store Store::open(const StoreOptions& options) {
  const auto bad = [](std::string_view option, const std::string& why) {
    return Status::error(StatusCode::kInvalidArgument,
                         "store option '" + std::string(option) + "': " + why);
  };
  if (options.max_size == 0) throw_if_error(bad("max_size", "must be above 0"));
  if (options.max_regions == 0 || options.max_regions > LmdbEnv::kMaxRegionsLimit) {
    throw_if_error(bad("max_regions", "must be between 1 and " +
                                          std::to_string(LmdbEnv::kMaxRegionsLimit) + ", got " +
                                          std::to_string(options.max_regions)));
  }
  switch (options.durability) {
    case Durability::kDurable:
    case Durability::kNoMetaSync:
    case Durability::kNoSync: break;
    default: throw_if_error(bad("durability", "unknown value"));
  }

  std::string path = options.path;
  if (path.empty()) throw_if_error(default_cache_dir(path));
  if (path.front() != '/') {
    std::error_code ec;
    const std::filesystem::path absolute = std::filesystem::absolute(path, ec);
    if (ec)
      throw_if_error(Status::io_error("cannot make the cache path absolute", path, ec.value()));
    path = absolute.string();
  }

  if (options.must_exist) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      if (errno == ENOENT)
        throw_if_error(not_found("no cache: the directory does not exist", path));
      throw_if_error(Status::io_error("cannot stat cache directory", path, errno));
    }
    if (!S_ISDIR(st.st_mode)) {
      throw_if_error(
          Status::error(StatusCode::kIOError, "cache directory is not a directory", path, ENOTDIR));
    }
    const std::string data_path = path + "/data.mdb";
    if (::lstat(data_path.c_str(), &st) != 0) {
      if (errno == ENOENT)
        throw_if_error(not_found("no cache: the directory has no data.mdb", path));
      throw_if_error(Status::io_error("cannot stat", data_path, errno));
    }
  } else {
    throw_if_error(ensure_cache_dir(path));
  }

  internal::LmdbEnvOptions env_options;
  env_options.map_size = options.max_size;
  env_options.max_regions = options.max_regions;
  env_options.max_readers = LmdbOptions{}.max_readers;
  env_options.durability = options.durability;
  auto impl = std::make_unique<Impl>(path, env_options,
                                     options.clock ? options.clock : system_clock());
  std::shared_ptr<LmdbEnv> env;
  throw_if_error(impl->env(env));
  return Store(std::move(impl));
}

const std::string& Store::path() const noexcept { return impl_->path; }

std::vector<std::string> Store::regions() {
  std::vector<std::string> out;
  throw_if_error(impl_->regions(out));
  return out;
}

StoreStats Store::stats() {
  StoreStats out;
  throw_if_error(impl_->stats(out));
  return out;
}

std::vector<EntryInfo> Store::list(const ListOptions& options) {
  std::vector<EntryInfo> out;
  throw_if_error(impl_->list(options, out));
  return out;
}

bool Store::get(std::string_view region, std::string_view key, Entry& out) {
  bool found = false;
  throw_if_error(impl_->get(region, key, out, found));
  return found;
}

bool Store::erase(std::string_view region, std::string_view key) {
  bool erased = false;
  throw_if_error(impl_->erase(region, key, erased));
  return erased;
}

PurgeReport Store::purge(const Progress& progress, std::uint64_t batch) {
  return purge(PurgeOptions{.batch = batch}, progress);
}

PurgeReport Store::purge(const PurgeOptions& options, const Progress& progress) {
  PurgeReport out;
  throw_if_error(impl_->purge(options, progress, out));
  return out;
}

std::uint64_t Store::clear(std::optional<std::string_view> region) {
  std::uint64_t out = 0;
  throw_if_error(impl_->clear(region, out));
  return out;
}

ZeroReport Store::zero_stats(std::optional<std::string_view> region) {
  ZeroReport out;
  throw_if_error(impl_->zero_stats(region, out));
  return out;
}

void Store::invalidate(std::string_view region, bool hard) {
  throw_if_error(impl_->invalidate(region, hard));
}

VerifyReport Store::verify(const Progress& progress) {
  VerifyReport out;
  throw_if_error(impl_->verify(progress, out));
  return out;
}

void Store::compact(const std::string& dest, const Progress& progress) {
  throw_if_error(impl_->compact(dest, progress));
}

}  // namespace dogpile
