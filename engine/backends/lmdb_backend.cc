#include "dogpile/lmdb_backend.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <vector>

#include "backends/lmdb_env.h"
#include "backends/lmdb_layout.h"
#include "backends/stamp_file.h"
#include "dogpile/cache_dir.h"
#include "dogpile/envelope.h"
#include "dogpile/error.h"

namespace dogpile {
namespace internal {
namespace {

// Stored keys (StoredKey, lmdb_layout.h): 'k' + the key for keys of at most
// kMaxInlineKeySize bytes, 'h' + its XXH3-128 otherwise. The region confirms
// long keys against the full key it keeps in the envelope.

// An entry record too short to hold its header.
Status short_record(const LmdbEnv& env, const MDB_val& record) {
  return Status::error(StatusCode::kCorruption,
                       "an entry record of " + std::to_string(record.mv_size) +
                           " bytes is shorter than its header",
                       env.path());
}

// Record bytes a write of `value` adds (what eviction has to make room for).
std::uint64_t record_bytes(std::string_view value) noexcept {
  return kEntryHeaderSize + value.size();
}

// The stamps of a read-only backend: those of the directory's stamps file
// when this user may open it (it is never created), else none; invalidating
// is a write, refused with kReadOnly.
class ReadOnlyInvalidation final : public InvalidationStrategy {
 public:
  ReadOnlyInvalidation(std::shared_ptr<InvalidationStrategy> stamps, Status refusal)
      : stamps_(std::move(stamps)), refusal_(std::move(refusal)) {}

  // Nothing is created through a read-only backend; the directory's number
  // still orders what a caller might compare.
  std::int64_t sequence() const noexcept override { return stamps_ ? stamps_->sequence() : 0; }
  Status invalidate(bool) override { return refusal_; }
  bool is_hard_invalidated(std::int64_t sequence) const noexcept override {
    return stamps_ && stamps_->is_hard_invalidated(sequence);
  }
  bool is_soft_invalidated(std::int64_t sequence) const noexcept override {
    return stamps_ && stamps_->is_soft_invalidated(sequence);
  }
  bool was_hard_invalidated() const noexcept override {
    return stamps_ && stamps_->was_hard_invalidated();
  }
  bool was_soft_invalidated() const noexcept override {
    return stamps_ && stamps_->was_soft_invalidated();
  }

 private:
  const std::shared_ptr<InvalidationStrategy> stamps_;  // may be null
  const Status refusal_;
};

Status check_options(const LmdbOptions& options) {
  const auto bad = [](std::string_view option, std::string why) {
    return Status::error(StatusCode::kInvalidArgument,
                         "lmdb backend option '" + std::string(option) + "': " + why);
  };
  if (options.max_size == 0) return bad("max_size", "must be above 0");
  if (options.max_regions == 0 || options.max_regions > LmdbEnv::kMaxRegionsLimit) {
    return bad("max_regions", "must be between 1 and " + std::to_string(LmdbEnv::kMaxRegionsLimit) +
                                  ", got " + std::to_string(options.max_regions));
  }
  if (options.max_readers == 0) return bad("max_readers", "must be above 0");
  switch (options.durability) {
    case Durability::kDurable:
    case Durability::kNoMetaSync:
    case Durability::kNoSync: break;
    default: return bad("durability", "unknown value");
  }
  return Status::ok();
}

class LmdbBackend final : public Backend, public InPlaceReader {
 public:
  static Status open(LmdbOptions options, std::unique_ptr<Backend>& out) {
    if (Status s = check_options(options); !s) return s;
    if (options.region.empty() || options.region.find('\0') != std::string::npos ||
        options.region.size() > LmdbEnv::kMaxRegionNameSize) {
      return Status::error(StatusCode::kInvalidArgument,
                           "lmdb backend option 'region': must be 1 to " +
                               std::to_string(LmdbEnv::kMaxRegionNameSize) +
                               " bytes without NUL bytes");
    }
    // Resolve the path once: a reopen after fork() must find the same
    // directory whatever the environment variables or the working directory
    // say by then.
    if (options.path.empty()) {
      if (Status s = default_cache_dir(options.path); !s) return s;
    }
    if (options.path.front() != '/') {
      std::error_code ec;
      const std::filesystem::path absolute = std::filesystem::absolute(options.path, ec);
      if (ec)
        return Status::io_error("cannot make the cache path absolute", options.path, ec.value());
      options.path = absolute.string();
    }
    // Read-only creates nothing, not even the directory.
    if (Status s = options.read_only ? check_cache_dir(options.path)
                                     : ensure_cache_dir(options.path);
        !s) {
      return s;
    }
    std::unique_ptr<LmdbBackend> backend(new LmdbBackend(std::move(options)));
    const Binding* binding = nullptr;
    if (Status s = backend->rebind(binding); !s) return s;
    if (Status s = backend->open_invalidation(*binding); !s) return s;
    out = std::move(backend);
    return Status::ok();
  }

  // read_in_place with a copy: the transaction ends on return, before any
  // caller code runs.
  Status get(std::string_view key, std::optional<std::string>& value) override {
    value.reset();
    return read_in_place(
        key,
        [](void* out, const std::string_view* bytes) {
          if (bytes != nullptr) static_cast<std::optional<std::string>*>(out)->emplace(*bytes);
        },
        &value);
  }

  // As get, with the value lent from the map inside the read transaction.
  Status read_in_place(std::string_view key, Use use, void* context) override {
    const Binding* b = nullptr;
    if (Status s = binding(b); !s) return s;
    if (!b->has_region) {
      use(context, nullptr);
      return Status::ok();
    }
    ReadTxn txn;
    if (Status s = b->env->begin_read(txn); !s) return s;
    StoredKey stored(key);
    MDB_val k = stored.val();
    MDB_val v{};
    const int rc = mdb_get(txn.get(), b->region.dbi, &k, &v);
    if (rc == MDB_NOTFOUND) {
      use(context, nullptr);
      return Status::ok();
    }
    if (rc != MDB_SUCCESS) return b->env->status(rc, "cannot read");
    EntryHeader header;
    std::string_view value;
    if (!split_entry({static_cast<const char*>(v.mv_data), v.mv_size}, header, value)) {
      return short_record(*b->env, v);
    }
    use(context, &value);
    return Status::ok();
  }

  Status set(std::string_view key, std::string_view value) override {
    const Binding* b = nullptr;
    if (Status s = writable_binding(b); !s) return s;
    StoredKey stored(key);
    return b->env->write(
        [&](MDB_txn* txn) {
          return put_entry(txn, b->env->store_dbs(), b->region, stored.bytes(), value);
        },
        record_bytes(value));
  }

  Status erase(std::string_view key) override {
    const Binding* b = nullptr;
    if (Status s = writable_binding(b); !s) return s;
    StoredKey stored(key);
    return b->env->write(
        [&](MDB_txn* txn) {
          bool erased = false;
          return erase_entry(txn, b->env->store_dbs(), b->region, stored.bytes(), erased);
        },
        0);
  }

  // read_multi_in_place with copies, as get.
  Status get_multi(std::span<const std::string> keys,
                   std::vector<std::optional<std::string>>& values) override {
    values.assign(keys.size(), std::nullopt);
    return read_multi_in_place(
        keys,
        [](void* out, std::size_t i, const std::string_view* bytes) {
          if (bytes != nullptr) {
            (*static_cast<std::vector<std::optional<std::string>>*>(out))[i].emplace(*bytes);
          }
        },
        &values);
  }

  Status read_multi_in_place(std::span<const std::string> keys, UseAt use,
                             void* context) override {
    if (keys.empty()) return Status::ok();
    const Binding* b = nullptr;
    if (Status s = binding(b); !s) return s;
    if (!b->has_region) {
      for (std::size_t i = 0; i < keys.size(); ++i) use(context, i, nullptr);
      return Status::ok();
    }
    ReadTxn txn;
    if (Status s = b->env->begin_read(txn); !s) return s;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      StoredKey stored(keys[i]);
      MDB_val k = stored.val();
      MDB_val v{};
      const int rc = mdb_get(txn.get(), b->region.dbi, &k, &v);
      if (rc == MDB_NOTFOUND) {
        use(context, i, nullptr);
        continue;
      }
      if (rc != MDB_SUCCESS) return b->env->status(rc, "cannot read");
      EntryHeader header;
      std::string_view value;
      if (!split_entry({static_cast<const char*>(v.mv_data), v.mv_size}, header, value)) {
        return short_record(*b->env, v);
      }
      use(context, i, &value);
    }
    return Status::ok();
  }

  Status set_multi(std::span<const KeyValue> items) override {
    if (items.empty()) return Status::ok();
    const Binding* b = nullptr;
    if (Status s = writable_binding(b); !s) return s;
    std::uint64_t bytes = 0;
    for (const auto& item : items) bytes += record_bytes(item.second);
    return b->env->write(
        [&](MDB_txn* txn) {
          EntryWriter writer(txn, b->env->store_dbs(), b->region);
          for (const auto& [key, value] : items) {
            StoredKey stored(key);
            if (Status s = writer.put(stored.bytes(), value); !s) return s;
          }
          return writer.finish();
        },
        bytes);
  }

  Status erase_multi(std::span<const std::string> keys) override {
    if (keys.empty()) return Status::ok();
    const Binding* b = nullptr;
    if (Status s = writable_binding(b); !s) return s;
    return b->env->write(
        [&](MDB_txn* txn) {
          for (const std::string& key : keys) {
            StoredKey stored(key);
            bool erased = false;
            if (Status s = erase_entry(txn, b->env->store_dbs(), b->region, stored.bytes(),
                                       erased);
                !s) {
              return s;
            }
          }
          return Status::ok();
        },
        0);
  }

  // Adds to the region's counters in the store, in one write transaction.
  // Failures are dropped: counters are best effort (a read-only store keeps
  // none).
  void add_usage(const UsageCounters& delta) noexcept override {
    if (delta.empty()) return;
    try {
      const Binding* b = nullptr;
      if (!writable_binding(b)) return;
      (void)b->env->write(
          [&](MDB_txn* txn) {
            return internal::add_usage(txn, b->env->store_dbs(), b->region.name, delta);
          },
          0);
    } catch (...) {
      // bad_alloc: the counts are lost, the caller carries on.
    }
  }

  // Recorded in the store for eviction (any process's): expired entries of
  // this region go before fresh ones. Best effort, as add_usage.
  void note_expiration(std::optional<std::chrono::nanoseconds> expiration) noexcept override {
    try {
      const Binding* b = nullptr;
      if (!writable_binding(b)) return;
      std::optional<std::int64_t> ns;
      if (expiration) ns = expiration->count();
      // Every Region construction tells it; most find it recorded already,
      // and a read transaction costs no writer lock and no commit.
      {
        ReadTxn txn;
        bool recorded = false;
        if (b->env->begin_read(txn).is_ok() &&
            region_expiration_recorded(txn.get(), b->env->store_dbs(), b->region.name, ns,
                                       recorded)
                .is_ok() &&
            recorded) {
          return;
        }
      }
      (void)b->env->write(
          [&](MDB_txn* txn) {
            return set_region_expiration(txn, b->env->store_dbs(), b->region.name, ns);
          },
          0);
    } catch (...) {
      // bad_alloc: eviction goes without the hint.
    }
  }

  // Locks are per (region, key) on the directory's creation.lock, so they
  // exclude other processes too. nullptr (the region's in-process lock) when
  // the environment is read-only (it opens no creation.lock, and what a
  // creator makes is not stored anyway), and when it cannot be reopened
  // after fork(), in which case reads and writes fail as well.
  std::unique_ptr<CreationMutex> get_mutex(std::string_view key) override {
    const Binding* b = nullptr;
    if (!binding(b)) return nullptr;
    LockFile* lock_file = b->env->lock_file();
    if (lock_file == nullptr) return nullptr;
    return lock_file->mutex(LockFile::offset_for(options_.region, key));
  }

  std::string_view name() const noexcept override { return "lmdb"; }

  // The region's slot of the directory's stamps file (stamp_file.h).
  std::shared_ptr<InvalidationStrategy> invalidation_strategy() override { return invalidation_; }

 private:
  // An environment of one fork generation and the region in it. A
  // read-only environment may lack the region: every read is a miss.
  struct Binding {
    std::shared_ptr<LmdbEnv> env;
    RegionRef region;
    bool has_region = true;
  };

  explicit LmdbBackend(LmdbOptions options) : options_(std::move(options)) {}

  // Records the max_size this process's environment grows to, for Store
  // stats to show as the cache's own (docs/format.md, _meta "max_size"). A
  // write transaction that finds it recorded commits nothing; a read
  // transaction would keep a reader slot in the pool from the open on.
  static Status note_max_size(LmdbEnv& env) {
    return env.write(
        [&](MDB_txn* txn) { return record_max_size(txn, env.store_dbs(), env.max_size()); }, 0);
  }

  // binding() for a write: kReadOnly when this backend or its environment
  // is read-only.
  Status writable_binding(const Binding*& out) {
    if (Status s = binding(out); !s) return s;
    if (out->env->read_only()) return out->env->read_only_error("cannot write");
    if (options_.read_only) return backend_read_only();
    return Status::ok();
  }

  Status backend_read_only() const {
    return Status::error(StatusCode::kReadOnly,
                         "cannot write: the lmdb backend of region '" + options_.region +
                             "' is open read-only: the lmdb option read_only is set",
                         options_.path, EROFS);
  }

  // The stamps file, opened once: the mapping stays valid and shared in
  // fork()ed children. A read-only backend opens an existing one it may
  // write only, and refuses invalidations.
  Status open_invalidation(const Binding& binding) {
    const bool sync = options_.durability != Durability::kNoSync;
    if (!binding.env->read_only() && !options_.read_only) {
      return open_stamp_invalidation(options_.path, options_.region, sync, invalidation_);
    }
    const Status refusal = binding.env->read_only() ? binding.env->read_only_error("cannot invalidate")
                                                    : backend_read_only();
    std::shared_ptr<InvalidationStrategy> stamps;
    const std::string stamps_path = options_.path + "/" + StampFile::kFileName;
    struct stat st {};
    if (::lstat(stamps_path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_size != 0 &&
        ::faccessat(AT_FDCWD, stamps_path.c_str(), R_OK | W_OK, AT_EACCESS) == 0) {
      if (Status s = open_stamp_invalidation(options_.path, options_.region, sync, stamps); !s) {
        return s;
      }
    }
    invalidation_ = std::make_shared<ReadOnlyInvalidation>(std::move(stamps), refusal);
    return Status::ok();
  }

  // The binding for this process. The hot path is the fork check: one
  // relaxed atomic load besides the acquire load of the pointer.
  Status binding(const Binding*& out) {
    const Binding* current = current_.load(std::memory_order_acquire);
    if (current != nullptr && current->env->generation() == fork_generation()) [[likely]] {
      out = current;
      return Status::ok();
    }
    return rebind(out);
  }

  // Opens the environment of this fork generation (first use, or first use
  // in a fork()ed child).
  Status rebind(const Binding*& out) {
    std::lock_guard lock(rebind_mutex_);
    if (const Binding* current = current_.load(std::memory_order_acquire);
        current != nullptr && current->env->is_current()) {
      out = current;
      return Status::ok();
    }
    auto fresh = std::make_unique<Binding>();
    const LmdbEnvOptions env_options{options_.max_size, options_.max_regions, options_.max_readers,
                                     options_.durability, options_.read_only};
    if (Status s = LmdbEnv::acquire(options_.path, env_options, fresh->env); !s) return s;
    if (fresh->env->read_only() || options_.read_only) {
      // Nothing may be created: a region the store lacks has no entries.
      std::optional<RegionRef> found;
      if (Status s = fresh->env->find_region(options_.region, found); !s) return s;
      fresh->has_region = found.has_value();
      if (found) fresh->region = std::move(*found);
    } else {
      if (Status s = fresh->env->open_region(options_.region, fresh->region); !s) return s;
      if (Status s = note_max_size(*fresh->env); !s) return s;
    }
    out = fresh.get();
    // Older bindings stay alive: another thread may still be reading one
    // (only to find it stale). There is one per fork generation seen.
    bindings_.push_back(std::move(fresh));
    current_.store(out, std::memory_order_release);
    return Status::ok();
  }

  const LmdbOptions options_;
  std::mutex rebind_mutex_;
  std::vector<std::unique_ptr<Binding>> bindings_;  // guarded by rebind_mutex_
  std::atomic<const Binding*> current_{nullptr};
  std::shared_ptr<InvalidationStrategy> invalidation_;  // set by open()
};

Status parse_durability(std::string_view text, Durability& out) {
  if (text == "durable") {
    out = Durability::kDurable;
  } else if (text == "nometasync") {
    out = Durability::kNoMetaSync;
  } else if (text == "nosync") {
    out = Durability::kNoSync;
  } else {
    return Status::error(StatusCode::kInvalidArgument,
                         "lmdb backend option 'durability': bad value '" + std::string(text) +
                             "': expected durable, nometasync or nosync");
  }
  return Status::ok();
}

// Reads an unsigned 32-bit option; range errors name the option.
Status take_u32(ConfigReader& reader, std::string_view option, std::uint32_t& out) {
  const std::optional<std::uint64_t> value = reader.unsigned_integer(option);
  if (!value) return Status::ok();  // absent, or a parse error finish() reports
  if (*value > 0xffffffffu) {
    return Status::error(StatusCode::kInvalidArgument,
                         "lmdb backend option '" + std::string(option) +
                             "': " + std::to_string(*value) + " is too large");
  }
  out = static_cast<std::uint32_t>(*value);
  return Status::ok();
}

}  // namespace

Status open_lmdb_backend(const LmdbOptions& options, std::unique_ptr<Backend>& out) {
  return LmdbBackend::open(options, out);
}

Status make_lmdb_backend(std::string_view region, const ConfigMap& arguments,
                         std::unique_ptr<Backend>& out) {
  LmdbOptions options;
  options.region = std::string(region);
  ConfigReader reader(arguments, "lmdb backend");
  if (auto path = reader.string("path")) options.path = std::move(*path);
  if (auto name = reader.string("region")) options.region = std::move(*name);
  if (auto size = reader.size("max_size")) options.max_size = *size;
  if (auto read_only = reader.boolean("read_only")) options.read_only = *read_only;
  Status first = take_u32(reader, "max_regions", options.max_regions);
  Status readers = take_u32(reader, "max_readers", options.max_readers);
  Status durability;
  if (auto text = reader.string("durability"))
    durability = parse_durability(*text, options.durability);
  // Parse errors and unknown options first, then our own range checks.
  if (Status s = reader.finish(); !s) return s;
  for (const Status* s : {&first, &readers, &durability}) {
    if (!*s) return *s;
  }
  return LmdbBackend::open(std::move(options), out);
}

}  // namespace internal

std::unique_ptr<Backend> open_lmdb_backend(const LmdbOptions& options) {
  std::unique_ptr<Backend> out;
  throw_if_error(internal::open_lmdb_backend(options, out));
  return out;
}

}  // namespace dogpile
