#include "dogpile/lmdb_backend.h"

#include <xxhash.h>

#include <array>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <vector>

#include "backends/lmdb_env.h"
#include "backends/stamp_file.h"
#include "dogpile/cache_dir.h"
#include "dogpile/envelope.h"
#include "dogpile/error.h"

namespace dogpile {
namespace internal {
namespace {

// Stored-key encoding. LMDB refuses empty keys and keys over 511 bytes, so a
// key k is stored as
//   'k' + k                       when k has 0..510 bytes (kMaxInlineKeySize;
//                                 1..511 stored bytes),
//   'h' + XXH3-128(k), canonical  when k has 511 or more bytes (17 stored bytes).
// The first byte keeps the two forms apart, and the inline form is
// one-to-one, so distinct keys can share a stored key only through an XXH3-128
// collision of two long keys; the region confirms long keys against the full
// key it keeps in the envelope.
constexpr char kInlineTag = 'k';
constexpr char kHashTag = 'h';
static_assert(kMaxInlineKeySize + 1 <= 511, "a tagged inline key must fit LMDB's key limit");

class StoredKey {
 public:
  explicit StoredKey(std::string_view key) noexcept {
    if (key.size() <= kMaxInlineKeySize) {
      bytes_[0] = kInlineTag;
      if (!key.empty()) std::memcpy(bytes_.data() + 1, key.data(), key.size());
      size_ = 1 + key.size();
    } else {
      XXH128_canonical_t canonical;
      XXH128_canonicalFromHash(&canonical, XXH3_128bits(key.data(), key.size()));
      bytes_[0] = kHashTag;
      std::memcpy(bytes_.data() + 1, canonical.digest, sizeof canonical.digest);
      size_ = 1 + sizeof canonical.digest;
    }
  }
  StoredKey(const StoredKey&) = delete;
  StoredKey& operator=(const StoredKey&) = delete;

  // LMDB takes a non-const pointer but does not write through it for keys.
  MDB_val val() noexcept { return MDB_val{size_, bytes_.data()}; }

 private:
  std::array<char, kMaxInlineKeySize + 1> bytes_;
  std::size_t size_ = 0;
};

MDB_val value_val(std::string_view value) noexcept {
  return MDB_val{value.size(), const_cast<char*>(value.data())};
}

std::optional<std::string> copy_out(const MDB_val& val) {
  std::optional<std::string> out(std::in_place);
  if (val.mv_size != 0) out->assign(static_cast<const char*>(val.mv_data), val.mv_size);
  return out;
}

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

class LmdbBackend final : public Backend {
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
    if (Status s = ensure_cache_dir(options.path); !s) return s;
    std::unique_ptr<LmdbBackend> backend(new LmdbBackend(std::move(options)));
    const Binding* binding = nullptr;
    if (Status s = backend->rebind(binding); !s) return s;
    // Opened once: the mapping stays valid and shared in fork()ed children.
    if (Status s = open_stamp_invalidation(backend->options_.path, backend->options_.region,
                                           backend->options_.durability != Durability::kNoSync,
                                           backend->invalidation_);
        !s) {
      return s;
    }
    out = std::move(backend);
    return Status::ok();
  }

  Status get(std::string_view key, std::optional<std::string>& value) override {
    const Binding* b = nullptr;
    if (Status s = binding(b); !s) return s;
    ReadTxn txn;
    if (Status s = b->env->begin_read(txn); !s) return s;
    StoredKey stored(key);
    MDB_val k = stored.val();
    MDB_val v{};
    const int rc = mdb_get(txn.get(), b->dbi, &k, &v);
    if (rc == MDB_NOTFOUND) {
      value.reset();
      return Status::ok();
    }
    if (rc != MDB_SUCCESS) return b->env->status(rc, "cannot read");
    value = copy_out(v);
    return Status::ok();  // the transaction ends here, before any caller code runs
  }

  Status set(std::string_view key, std::string_view value) override {
    const Binding* b = nullptr;
    if (Status s = binding(b); !s) return s;
    WriteTxn txn;
    if (Status s = b->env->begin_write(txn); !s) return s;
    if (Status s = put(*b, txn, key, value); !s) return s;
    return txn.commit();
  }

  Status erase(std::string_view key) override {
    const Binding* b = nullptr;
    if (Status s = binding(b); !s) return s;
    WriteTxn txn;
    if (Status s = b->env->begin_write(txn); !s) return s;
    bool erased = false;
    if (Status s = del(*b, txn, key, erased); !s) return s;
    if (!erased) return Status::ok();  // nothing changed: the destructor aborts
    return txn.commit();
  }

  Status get_multi(std::span<const std::string> keys,
                   std::vector<std::optional<std::string>>& values) override {
    values.assign(keys.size(), std::nullopt);
    if (keys.empty()) return Status::ok();
    const Binding* b = nullptr;
    if (Status s = binding(b); !s) return s;
    ReadTxn txn;
    if (Status s = b->env->begin_read(txn); !s) return s;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      StoredKey stored(keys[i]);
      MDB_val k = stored.val();
      MDB_val v{};
      const int rc = mdb_get(txn.get(), b->dbi, &k, &v);
      if (rc == MDB_NOTFOUND) continue;
      if (rc != MDB_SUCCESS) return b->env->status(rc, "cannot read");
      values[i] = copy_out(v);
    }
    return Status::ok();
  }

  Status set_multi(std::span<const KeyValue> items) override {
    if (items.empty()) return Status::ok();
    const Binding* b = nullptr;
    if (Status s = binding(b); !s) return s;
    WriteTxn txn;
    if (Status s = b->env->begin_write(txn); !s) return s;
    for (const auto& [key, value] : items) {
      if (Status s = put(*b, txn, key, value); !s) return s;
    }
    return txn.commit();
  }

  Status erase_multi(std::span<const std::string> keys) override {
    if (keys.empty()) return Status::ok();
    const Binding* b = nullptr;
    if (Status s = binding(b); !s) return s;
    WriteTxn txn;
    if (Status s = b->env->begin_write(txn); !s) return s;
    bool any = false;
    for (const std::string& key : keys) {
      bool erased = false;
      if (Status s = del(*b, txn, key, erased); !s) return s;
      any = any || erased;
    }
    if (!any) return Status::ok();
    return txn.commit();
  }

  // Locks are per (region, key) on the directory's creation.lock, so they
  // exclude other processes too. nullptr (the region's in-process lock) only
  // when the environment cannot be reopened after fork(), in which case
  // reads and writes fail as well.
  std::unique_ptr<CreationMutex> get_mutex(std::string_view key) override {
    const Binding* b = nullptr;
    if (!binding(b)) return nullptr;
    return b->env->lock_file().mutex(LockFile::offset_for(options_.region, key));
  }

  std::string_view name() const noexcept override { return "lmdb"; }

  // The region's slot of the directory's stamps file (stamp_file.h).
  std::shared_ptr<InvalidationStrategy> invalidation_strategy() override { return invalidation_; }

 private:
  // An environment of one fork generation and the region's handle in it.
  struct Binding {
    std::shared_ptr<LmdbEnv> env;
    MDB_dbi dbi = 0;
  };

  explicit LmdbBackend(LmdbOptions options) : options_(std::move(options)) {}

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
                                     options_.durability};
    if (Status s = LmdbEnv::acquire(options_.path, env_options, fresh->env); !s) return s;
    if (Status s = fresh->env->open_region(options_.region, fresh->dbi); !s) return s;
    out = fresh.get();
    // Older bindings stay alive: another thread may still be reading one
    // (only to find it stale). There is one per fork generation seen.
    bindings_.push_back(std::move(fresh));
    current_.store(out, std::memory_order_release);
    return Status::ok();
  }

  static Status put(const Binding& b, WriteTxn& txn, std::string_view key, std::string_view value) {
    StoredKey stored(key);
    MDB_val k = stored.val();
    MDB_val v = value_val(value);
    const int rc = mdb_put(txn.get(), b.dbi, &k, &v, 0);
    return rc == MDB_SUCCESS ? Status::ok() : b.env->status(rc, "cannot write");
  }

  static Status del(const Binding& b, WriteTxn& txn, std::string_view key, bool& erased) {
    StoredKey stored(key);
    MDB_val k = stored.val();
    const int rc = mdb_del(txn.get(), b.dbi, &k, nullptr);
    erased = rc == MDB_SUCCESS;
    if (rc == MDB_SUCCESS || rc == MDB_NOTFOUND) return Status::ok();
    return b.env->status(rc, "cannot erase");
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
