#include "backends/lmdb_layout.h"

#include <xxhash.h>

#include <cstring>
#include <map>
#include <vector>

#include "backends/lmdb_env.h"
#include "time_math.h"

namespace dogpile::internal {
namespace {

static_assert(kMaxInlineKeySize + 1 <= 511, "a tagged inline key must fit LMDB's key limit");

constexpr std::string_view kSeqKey = "seq";
constexpr std::string_view kStatsPrefix = "stats:";
constexpr std::string_view kExpirationPrefix = "rexp:";
constexpr std::string_view kMaxSizeKey = "max_size";
constexpr std::size_t kUsageCounterCount = 8;

// ---- byte helpers ----

void put_le64(char* p, std::uint64_t v) noexcept {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

std::uint64_t get_le64(const char* p) noexcept {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

void put_be64(char* p, std::uint64_t v) noexcept {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>((v >> (8 * (7 - i))) & 0xff);
}

std::uint64_t get_be64(const char* p) noexcept {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

constexpr std::uint64_t kSignBit = std::uint64_t{1} << 63;

// Signed nanoseconds in an order-preserving unsigned form.
std::uint64_t bias(std::int64_t ns) noexcept { return static_cast<std::uint64_t>(ns) ^ kSignBit; }
std::int64_t unbias(std::uint64_t v) noexcept { return static_cast<std::int64_t>(v ^ kSignBit); }

MDB_val as_val(std::string_view bytes) noexcept {
  return MDB_val{bytes.size(), const_cast<char*>(bytes.data())};
}

std::string_view as_view(const MDB_val& val) noexcept {
  return {static_cast<const char*>(val.mv_data), val.mv_size};
}

std::array<char, 8> written_key(std::uint64_t seq) noexcept {
  std::array<char, 8> key;
  put_be64(key.data(), seq);
  return key;
}

std::array<char, 16> expiry_key(std::int64_t expires_at_ns, std::uint64_t seq) noexcept {
  std::array<char, 16> key;
  put_be64(key.data(), bias(expires_at_ns));
  put_be64(key.data() + 8, seq);
  return key;
}

// An index value (u32 LE region id + stored key), built in place.
class IndexValue {
 public:
  IndexValue(std::uint32_t region_id, std::string_view stored_key) noexcept
      : size_(4 + stored_key.size()) {
    for (int i = 0; i < 4; ++i) bytes_[i] = static_cast<char>((region_id >> (8 * i)) & 0xff);
    std::memcpy(bytes_.data() + 4, stored_key.data(), stored_key.size());
  }
  MDB_val val() noexcept { return MDB_val{size_, bytes_.data()}; }

 private:
  // Stored keys are at most kMaxInlineKeySize + 1 bytes (StoredKey).
  std::array<char, 4 + kMaxInlineKeySize + 1> bytes_;
  std::size_t size_;
};

// An LMDB failure in `txn`, naming the environment's directory.
Status txn_status(MDB_txn* txn, int rc, std::string_view what) {
  const char* path = nullptr;
  if (mdb_env_get_path(mdb_txn_env(txn), &path) != MDB_SUCCESS || path == nullptr) path = "";
  return lmdb_status(rc, what, path);
}

// Deletes `key` from `dbi`; an absent key is fine.
Status del_if_present(MDB_txn* txn, MDB_dbi dbi, std::string_view key, std::string_view what) {
  MDB_val k = as_val(key);
  const int rc = mdb_del(txn, dbi, &k, nullptr);
  if (rc == MDB_SUCCESS || rc == MDB_NOTFOUND) return Status::ok();
  return txn_status(txn, rc, what);
}

// Whether index `dbi` has `key`, naming the entry (region_id, stored_key).
Status index_names(MDB_txn* txn, MDB_dbi dbi, std::string_view key, std::uint32_t region_id,
                   std::string_view stored_key, bool& names) {
  names = false;
  MDB_val k = as_val(key);
  MDB_val value{};
  const int rc = mdb_get(txn, dbi, &k, &value);
  if (rc == MDB_NOTFOUND) return Status::ok();
  if (rc != MDB_SUCCESS) return txn_status(txn, rc, "cannot read an index");
  IndexTarget target;
  names = split_index_value(as_view(value), target) && target.region_id == region_id &&
          target.stored_key == stored_key;
  return Status::ok();
}

// Removes every entry of index `dbi` naming (region_id, stored_key): a scan
// of the whole index, for the repair of a damaged entry header only.
Status remove_entries_naming(MDB_txn* txn, MDB_dbi dbi, std::uint32_t region_id,
                             std::string_view stored_key) {
  std::vector<std::string> doomed;
  {
    MDB_cursor* cursor = nullptr;
    if (const int rc = mdb_cursor_open(txn, dbi, &cursor); rc != MDB_SUCCESS) {
      return txn_status(txn, rc, "cannot open a cursor");
    }
    MDB_val key{};
    MDB_val value{};
    int rc = mdb_cursor_get(cursor, &key, &value, MDB_FIRST);
    for (; rc == MDB_SUCCESS; rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT)) {
      IndexTarget target;
      if (split_index_value(as_view(value), target) && target.region_id == region_id &&
          target.stored_key == stored_key) {
        doomed.emplace_back(as_view(key));
      }
    }
    mdb_cursor_close(cursor);
    if (rc != MDB_NOTFOUND) return txn_status(txn, rc, "cannot read an index");
  }
  for (const std::string& key : doomed) {
    if (Status s = del_if_present(txn, dbi, key, "cannot repair an index"); !s) return s;
  }
  return Status::ok();
}

// Removes the index entries of the entry (region_id, stored_key) whose record
// is `header` + `envelope`. The header is outside the envelope's checksum: a
// damaged sequence or expiry would name another record's index entries, or
// none, and leave this record's own behind for good. So the entries the
// header names are checked to name this record (and its expiry to be the
// envelope's) first; when they do not, the indexes are searched for what does.
Status remove_index_entries(MDB_txn* txn, const StoreDbs& dbs, std::uint32_t region_id,
                            std::string_view stored_key, const EntryHeader& header,
                            std::string_view envelope) {
  const std::int64_t expected_expiry = envelope_expiry(envelope);
  const auto written = written_key(header.seq);
  const std::string_view written_view(written.data(), written.size());
  const auto expiry = expiry_key(header.expires_at_ns, header.seq);
  const std::string_view expiry_view(expiry.data(), expiry.size());
  bool intact = false;
  if (Status s = index_names(txn, dbs.written, written_view, region_id, stored_key, intact); !s) {
    return s;
  }
  intact = intact && header.expires_at_ns == expected_expiry;
  if (intact && header.expires_at_ns != kNoExpiry) {
    if (Status s = index_names(txn, dbs.expiry, expiry_view, region_id, stored_key, intact); !s) {
      return s;
    }
  }
  if (!intact) {
    if (Status s = remove_entries_naming(txn, dbs.written, region_id, stored_key); !s) return s;
    return remove_entries_naming(txn, dbs.expiry, region_id, stored_key);
  }
  if (Status s = del_if_present(txn, dbs.written, written_view, "cannot update the write index");
      !s) {
    return s;
  }
  if (header.expires_at_ns == kNoExpiry) return Status::ok();
  return del_if_present(txn, dbs.expiry, expiry_view, "cannot update the expiry index");
}

// The last write sequence handed out, from _meta (0 before the first).
Status read_seq(MDB_txn* txn, const StoreDbs& dbs, std::uint64_t& last) {
  MDB_val key = as_val(kSeqKey);
  MDB_val data{};
  const int rc = mdb_get(txn, dbs.meta, &key, &data);
  last = 0;
  if (rc == MDB_NOTFOUND) return Status::ok();
  if (rc != MDB_SUCCESS) return txn_status(txn, rc, "cannot read the write sequence");
  if (data.mv_size != 8) return Status::error(StatusCode::kCorruption, "bad seq record in _meta");
  last = get_le64(static_cast<const char*>(data.mv_data));
  return Status::ok();
}

Status write_seq(MDB_txn* txn, const StoreDbs& dbs, std::uint64_t last) {
  MDB_val key = as_val(kSeqKey);
  char bytes[8];
  put_le64(bytes, last);
  MDB_val value{sizeof bytes, bytes};
  const int rc = mdb_put(txn, dbs.meta, &key, &value, 0);
  return rc == MDB_SUCCESS ? Status::ok() : txn_status(txn, rc, "cannot write the write sequence");
}

// Usage added per region name while entries are removed.
using UsageByRegion = std::map<std::string, UsageCounters, std::less<>>;

Status add_all_usage(MDB_txn* txn, const StoreDbs& dbs, const UsageByRegion& usage) {
  for (const auto& [region, delta] : usage) {
    if (Status s = add_usage(txn, dbs, region, delta); !s) return s;
  }
  return Status::ok();
}

// Why an entry goes, and so which usage counter counts it: expired_purged,
// evictions, or none (an operator's purge by age).
enum class Removal { kExpired, kEvicted, kAged };

// Follows the index entry `index_key` of `index_dbi` (value `value`, write
// sequence `seq`) and removes the entry it names with all its index entries.
// An index entry whose target is gone, or holds another write sequence, is
// stale: only it is removed. `bytes` is the record bytes removed (0 for a
// stale index entry).
Status remove_indexed(LmdbEnv& env, MDB_txn* txn, const StoreDbs& dbs, MDB_dbi index_dbi,
                      std::string_view index_key, std::string_view value, std::uint64_t seq,
                      Removal why, UsageByRegion& usage, std::uint64_t& bytes) {
  bytes = 0;
  // Copies: the views point into pages the deletions below may change.
  const std::string key_copy(index_key);
  const std::string value_copy(value);
  IndexTarget target;
  std::optional<RegionRef> region;
  if (split_index_value(value_copy, target)) {
    if (Status s = env.region_by_id(txn, target.region_id, region); !s) return s;
  }
  if (region) {
    MDB_val k = as_val(target.stored_key);
    MDB_val record{};
    const int rc = mdb_get(txn, region->dbi, &k, &record);
    if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return txn_status(txn, rc, "cannot read an entry");
    EntryHeader header;
    std::string_view envelope;
    if (rc == MDB_SUCCESS && split_entry(as_view(record), header, envelope) && header.seq == seq) {
      bytes = record.mv_size;
      if (Status s = remove_index_entries(txn, dbs, region->id, target.stored_key, header,
                                          envelope);
          !s) {
        return s;
      }
      const int del = mdb_del(txn, region->dbi, &k, nullptr);
      if (del != MDB_SUCCESS) return txn_status(txn, del, "cannot remove an entry");
      if (why == Removal::kExpired) ++usage[region->name].expired_purged;
      if (why == Removal::kEvicted) ++usage[region->name].evictions;
      return Status::ok();
    }
  }
  return del_if_present(txn, index_dbi, key_copy, "cannot remove a stale index entry");
}

// The first entry of an index, or false when it is empty.
Status first_of(MDB_cursor* cursor, MDB_txn* txn, MDB_val& key, MDB_val& value, bool& found) {
  const int rc = mdb_cursor_get(cursor, &key, &value, MDB_FIRST);
  found = rc == MDB_SUCCESS;
  if (rc == MDB_SUCCESS || rc == MDB_NOTFOUND) return Status::ok();
  return txn_status(txn, rc, "cannot read an index");
}

// Closes a cursor on every path.
class Cursor {
 public:
  Cursor() noexcept = default;
  Cursor(const Cursor&) = delete;
  Cursor& operator=(const Cursor&) = delete;
  ~Cursor() {
    if (cursor_ != nullptr) mdb_cursor_close(cursor_);
  }
  Status open(MDB_txn* txn, MDB_dbi dbi) {
    const int rc = mdb_cursor_open(txn, dbi, &cursor_);
    return rc == MDB_SUCCESS ? Status::ok() : txn_status(txn, rc, "cannot open a cursor");
  }
  MDB_cursor* get() const noexcept { return cursor_; }

 private:
  MDB_cursor* cursor_ = nullptr;
};

// Removes expired entries, soonest first, while `keep_going` allows; the
// first index entry is looked up again after every removal, one B-tree
// descent each. `stopped` says the step limit ended it with work left.
template <class KeepGoing>
Status remove_expired(LmdbEnv& env, MDB_txn* txn, const StoreDbs& dbs, std::int64_t now_ns,
                      std::uint64_t max_steps, std::uint64_t& steps, KeepGoing keep_going,
                      UsageByRegion& usage, RemovalStep& out) {
  Cursor cursor;
  if (Status s = cursor.open(txn, dbs.expiry); !s) return s;
  for (;;) {
    MDB_val key{};
    MDB_val value{};
    bool found = false;
    if (Status s = first_of(cursor.get(), txn, key, value, found); !s) return s;
    std::int64_t expires_at = 0;
    std::uint64_t seq = 0;
    if (!found) return Status::ok();
    const bool well_formed = split_expiry_key(as_view(key), expires_at, seq);
    if (well_formed && expires_at > now_ns) return Status::ok();
    if (!keep_going()) return Status::ok();
    if (steps >= max_steps) {
      out.more = true;
      return Status::ok();
    }
    ++steps;
    std::uint64_t bytes = 0;
    if (Status s = remove_indexed(env, txn, dbs, dbs.expiry, as_view(key), as_view(value),
                                  well_formed ? seq : 0, Removal::kExpired, usage, bytes);
        !s) {
      return s;
    }
    if (bytes != 0) {
      ++out.removed;
      out.bytes += bytes;
    }
  }
}

// Region name -> expiration (ns) from the _meta "rexp:" records.
Status read_region_expirations(MDB_txn* txn, const StoreDbs& dbs,
                               std::map<std::string, std::int64_t, std::less<>>& out) {
  Cursor cursor;
  if (Status s = cursor.open(txn, dbs.meta); !s) return s;
  MDB_val key = as_val(kExpirationPrefix);
  MDB_val value{};
  int rc = mdb_cursor_get(cursor.get(), &key, &value, MDB_SET_RANGE);
  for (; rc == MDB_SUCCESS; rc = mdb_cursor_get(cursor.get(), &key, &value, MDB_NEXT)) {
    const std::string_view k = as_view(key);
    if (k.substr(0, kExpirationPrefix.size()) != kExpirationPrefix) break;
    if (value.mv_size != 8) continue;  // not ours to judge: verify's business
    out.emplace(k.substr(kExpirationPrefix.size()),
                static_cast<std::int64_t>(get_le64(static_cast<const char*>(value.mv_data))));
  }
  if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return txn_status(txn, rc, "cannot read _meta");
  return Status::ok();
}

// One entry of _written, as walk_written hands it out.
struct WrittenEntry {
  std::string_view key{};             // the index entry, as stored
  std::string_view value{};
  std::uint64_t seq = 0;              // 0 when the key is malformed
  const RegionRef* region = nullptr;  // the region it names, when the store has it
  std::string_view stored_key{};      // the entry it names in `region`
};

// Calls `visit` (bool(const WrittenEntry&): false stops) for the entries
// of _written in write order, from the first whose key is at least `start`
// (empty: from the first). The views die with the transaction's next change.
template <class Visit>
Status walk_written(LmdbEnv& env, MDB_txn* txn, const StoreDbs& dbs, std::string_view start,
                    Visit&& visit) {
  std::map<std::uint32_t, std::optional<RegionRef>> regions;  // by id, looked up once
  Cursor cursor;
  if (Status s = cursor.open(txn, dbs.written); !s) return s;
  MDB_val key = as_val(start);
  MDB_val value{};
  int rc = mdb_cursor_get(cursor.get(), &key, &value, start.empty() ? MDB_FIRST : MDB_SET_RANGE);
  for (; rc == MDB_SUCCESS; rc = mdb_cursor_get(cursor.get(), &key, &value, MDB_NEXT)) {
    WrittenEntry entry{as_view(key), as_view(value)};
    IndexTarget target;
    if (split_written_key(entry.key, entry.seq) && split_index_value(entry.value, target)) {
      auto [it, inserted] = regions.try_emplace(target.region_id);
      if (inserted) {
        if (Status s = env.region_by_id(txn, target.region_id, it->second); !s) return s;
      }
      if (it->second) {
        entry.region = &*it->second;
        entry.stored_key = target.stored_key;
      }
    }
    if (!visit(entry)) return Status::ok();
  }
  if (rc != MDB_NOTFOUND) return txn_status(txn, rc, "cannot read an index");
  return Status::ok();
}

// created_at of the entry `entry` names, and its record's size, when the
// record is an envelope written with the entry's write sequence.
std::optional<std::int64_t> created_at_of(MDB_txn* txn, const WrittenEntry& entry,
                                          std::uint64_t& record_bytes) {
  if (entry.region == nullptr) return std::nullopt;
  MDB_val k = as_val(entry.stored_key);
  MDB_val record{};
  if (mdb_get(txn, entry.region->dbi, &k, &record) != MDB_SUCCESS) return std::nullopt;
  EntryHeader header;
  std::string_view envelope;
  if (!split_entry(as_view(record), header, envelope) || header.seq != entry.seq) {
    return std::nullopt;
  }
  record_bytes = record.mv_size;
  return peek_envelope_created_at(envelope);
}

// An entry to remove, by its _written index entry: found first, removed
// after, since removals change the index being walked.
struct Found {
  std::string key;
  std::string value;
  std::uint64_t seq;
};

// Removes the entries `found` names while `keep_going` allows and `steps`
// stays below `max_steps` (then out.more is set).
template <class KeepGoing>
Status remove_found(LmdbEnv& env, MDB_txn* txn, const StoreDbs& dbs,
                    const std::vector<Found>& found, std::uint64_t max_steps,
                    std::uint64_t& steps, KeepGoing keep_going, Removal why,
                    UsageByRegion& usage, RemovalStep& out) {
  for (const Found& f : found) {
    if (!keep_going()) break;
    if (steps >= max_steps) {
      out.more = true;
      break;
    }
    ++steps;
    std::uint64_t bytes = 0;
    if (Status s = remove_indexed(env, txn, dbs, dbs.written, f.key, f.value, f.seq, why, usage,
                                  bytes);
        !s) {
      return s;
    }
    if (bytes != 0) {
      ++out.removed;
      out.bytes += bytes;
    }
  }
  return Status::ok();
}

// Removes entries (in write order) whose region expiration has passed
// since their envelope's created_at: stale by their region, though in no
// expiry index. A scan of _written, made only when eviction is short of
// room after the expired entries of the index are gone.
// `wanted`: the record bytes still to free.
template <class KeepGoing>
Status remove_region_expired(LmdbEnv& env, MDB_txn* txn, const StoreDbs& dbs,
                             std::int64_t now_ns, std::uint64_t wanted, std::uint64_t max_steps,
                             std::uint64_t& steps, KeepGoing keep_going, UsageByRegion& usage,
                             RemovalStep& out) {
  std::map<std::string, std::int64_t, std::less<>> expirations;
  if (Status s = read_region_expirations(txn, dbs, expirations); !s) return s;
  if (expirations.empty()) return Status::ok();
  std::vector<Found> found;
  std::uint64_t bytes = 0;
  const Status walked = walk_written(env, txn, dbs, {}, [&](const WrittenEntry& entry) {
    if (steps + found.size() >= max_steps || bytes >= wanted) return false;
    if (entry.region == nullptr) return true;
    const auto expiration = expirations.find(entry.region->name);
    if (expiration == expirations.end()) return true;
    std::uint64_t record_bytes = 0;
    const std::optional<std::int64_t> created = created_at_of(txn, entry, record_bytes);
    if (!created || saturating_add(*created, expiration->second) > now_ns) return true;
    found.push_back({std::string(entry.key), std::string(entry.value), entry.seq});
    bytes += record_bytes;
    return true;
  });
  if (!walked) return walked;
  return remove_found(env, txn, dbs, found, max_steps, steps, keep_going, Removal::kExpired,
                      usage, out);
}

}  // namespace

// ---- stored keys ----

StoredKey::StoredKey(std::string_view key) noexcept {
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

std::optional<std::string> user_key(std::string_view stored_key, std::string_view envelope) {
  if (stored_key.empty()) return std::nullopt;
  if (stored_key.front() == kInlineTag) return std::string(stored_key.substr(1));
  if (stored_key.front() != kHashTag) return std::nullopt;
  EnvelopeView view;
  if (decode_envelope(envelope, static_cast<std::size_t>(-1), view) != DecodeStatus::kOk ||
      !view.full_key) {
    return std::nullopt;
  }
  return std::string(*view.full_key);
}

std::string printable_stored_key(std::string_view stored_key) {
  if (!stored_key.empty() && stored_key.front() == kInlineTag) {
    return std::string(stored_key.substr(1));
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "#";
  for (unsigned char c : stored_key.substr(stored_key.empty() ? 0 : 1)) {
    out += kHex[c >> 4];
    out += kHex[c & 0xf];
  }
  return out;
}

// ---- entry records ----

bool split_entry(std::string_view record, EntryHeader& header, std::string_view& envelope) noexcept {
  if (record.size() < kEntryHeaderSize) return false;
  header.seq = get_le64(record.data());
  header.expires_at_ns = static_cast<std::int64_t>(get_le64(record.data() + 8));
  envelope = record.substr(kEntryHeaderSize);
  return true;
}

std::int64_t envelope_expiry(std::string_view value) noexcept {
  return peek_envelope_expiry(value).value_or(kNoExpiry);
}

// ---- index records ----

bool split_index_value(std::string_view value, IndexTarget& out) noexcept {
  if (value.size() < 5) return false;
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(value[i]); };
  out.region_id = std::uint32_t{byte(0)} | std::uint32_t{byte(1)} << 8 |
                  std::uint32_t{byte(2)} << 16 | std::uint32_t{byte(3)} << 24;
  out.stored_key = value.substr(4);
  return true;
}

bool split_written_key(std::string_view key, std::uint64_t& seq) noexcept {
  if (key.size() != 8) return false;
  seq = get_be64(key.data());
  return true;
}

bool split_expiry_key(std::string_view key, std::int64_t& expires_at_ns,
                      std::uint64_t& seq) noexcept {
  if (key.size() != 16) return false;
  expires_at_ns = unbias(get_be64(key.data()));
  seq = get_be64(key.data() + 8);
  return true;
}

std::string make_written_key(std::uint64_t seq) {
  const auto key = written_key(seq);
  return std::string(key.data(), key.size());
}

std::string make_expiry_key(std::int64_t expires_at_ns, std::uint64_t seq) {
  const auto key = expiry_key(expires_at_ns, seq);
  return std::string(key.data(), key.size());
}

std::string make_index_value(std::uint32_t region_id, std::string_view stored_key) {
  IndexValue value(region_id, stored_key);
  return std::string(as_view(value.val()));
}

// ---- the store's own tables ----

Status list_regions(LmdbEnv& env, std::vector<RegionRef>& out) { return env.list_regions(out); }

Status find_region(LmdbEnv& env, std::string_view name, std::optional<RegionRef>& out) {
  return env.find_region(name, out);
}

// ---- writes ----

Status put_entry(MDB_txn* txn, const StoreDbs& dbs, const RegionRef& region,
                 std::string_view stored_key, std::string_view value) {
  EntryWriter writer(txn, dbs, region);
  if (Status s = writer.put(stored_key, value); !s) return s;
  return writer.finish();
}

EntryWriter::~EntryWriter() {
  if (cursor_ != nullptr) mdb_cursor_close(cursor_);
}

Status EntryWriter::next_seq(std::uint64_t& seq) {
  if (!seq_loaded_) {
    if (Status s = read_seq(txn_, dbs_, last_seq_); !s) return s;
    seq_loaded_ = true;
  }
  seq = ++last_seq_;
  return Status::ok();
}

Status EntryWriter::finish() {
  if (!seq_loaded_) return Status::ok();  // nothing was put
  return write_seq(txn_, dbs_, last_seq_);
}

Status EntryWriter::put(std::string_view stored_key, std::string_view value) {
  if (cursor_ == nullptr) {
    if (const int rc = mdb_cursor_open(txn_, region_.dbi, &cursor_); rc != MDB_SUCCESS) {
      cursor_ = nullptr;
      return txn_status(txn_, rc, "cannot open a cursor");
    }
  }
  MDB_val key = as_val(stored_key);
  MDB_val old{};
  const int rc = mdb_cursor_get(cursor_, &key, &old, MDB_SET_KEY);
  const bool replacing = rc == MDB_SUCCESS;
  if (replacing) {
    EntryHeader header;
    std::string_view envelope;
    if (split_entry(as_view(old), header, envelope)) {
      // Other databases: the cursor stays on the old entry.
      if (Status s = remove_index_entries(txn_, dbs_, region_.id, stored_key, header, envelope);
          !s) {
        return s;
      }
    }
  } else if (rc != MDB_NOTFOUND) {
    return txn_status(txn_, rc, "cannot read an entry");
  }

  EntryHeader header;
  if (Status s = next_seq(header.seq); !s) return s;
  header.expires_at_ns = envelope_expiry(value);

  // MDB_RESERVE: the record is assembled in place, one copy of the value.
  // MDB_CURRENT replaces the entry the cursor stands on without a second
  // descent (LMDB does what mdb_put does for an existing key).
  key = as_val(stored_key);
  MDB_val record{kEntryHeaderSize + value.size(), nullptr};
  const unsigned flags = MDB_RESERVE | (replacing ? MDB_CURRENT : 0u);
  if (const int r = mdb_cursor_put(cursor_, &key, &record, flags); r != MDB_SUCCESS) {
    return txn_status(txn_, r, "cannot write");
  }
  char* out = static_cast<char*>(record.mv_data);
  put_le64(out, header.seq);
  put_le64(out + 8, static_cast<std::uint64_t>(header.expires_at_ns));
  if (!value.empty()) std::memcpy(out + kEntryHeaderSize, value.data(), value.size());

  IndexValue target(region_.id, stored_key);
  MDB_val target_val = target.val();
  auto written = written_key(header.seq);
  MDB_val written_val{written.size(), written.data()};
  // Sequences only grow, so the new index entry goes at the end: MDB_APPEND
  // skips the search and fills pages completely instead of splitting them
  // in half. A store whose seq record fell behind its index takes the plain
  // path.
  int r = mdb_put(txn_, dbs_.written, &written_val, &target_val, MDB_APPEND);
  if (r == MDB_KEYEXIST) r = mdb_put(txn_, dbs_.written, &written_val, &target_val, 0);
  if (r != MDB_SUCCESS) return txn_status(txn_, r, "cannot update the write index");
  if (header.expires_at_ns != kNoExpiry) {
    auto expiry = expiry_key(header.expires_at_ns, header.seq);
    MDB_val expiry_val{expiry.size(), expiry.data()};
    if (const int e = mdb_put(txn_, dbs_.expiry, &expiry_val, &target_val, 0); e != MDB_SUCCESS) {
      return txn_status(txn_, e, "cannot update the expiry index");
    }
  }
  return Status::ok();
}

Status erase_entry(MDB_txn* txn, const StoreDbs& dbs, const RegionRef& region,
                   std::string_view stored_key, bool& erased) {
  erased = false;
  MDB_val key = as_val(stored_key);
  MDB_val record{};
  const int rc = mdb_get(txn, region.dbi, &key, &record);
  if (rc == MDB_NOTFOUND) return Status::ok();
  if (rc != MDB_SUCCESS) return txn_status(txn, rc, "cannot read an entry");
  EntryHeader header;
  std::string_view envelope;
  if (split_entry(as_view(record), header, envelope)) {
    if (Status s = remove_index_entries(txn, dbs, region.id, stored_key, header, envelope); !s) {
      return s;
    }
  }
  if (const int r = mdb_del(txn, region.dbi, &key, nullptr); r != MDB_SUCCESS) {
    return txn_status(txn, r, "cannot erase");
  }
  erased = true;
  return Status::ok();
}

Status purge_expired(LmdbEnv& env, MDB_txn* txn, const StoreDbs& dbs, std::int64_t now_ns,
                     std::uint64_t limit, RemovalStep& out) {
  out = RemovalStep{};
  UsageByRegion usage;
  std::uint64_t steps = 0;
  if (Status s = remove_expired(
          env, txn, dbs, now_ns, limit, steps, [] { return true; }, usage, out);
      !s) {
    return s;
  }
  return add_all_usage(txn, dbs, usage);
}

Status purge_created_before(LmdbEnv& env, MDB_txn* txn, const StoreDbs& dbs,
                            std::int64_t created_before_ns, std::uint64_t last_seq,
                            std::uint64_t limit, std::string& resume, std::uint64_t& examined,
                            RemovalStep& out) {
  out = RemovalStep{};
  std::vector<Found> found;
  std::uint64_t looked = 0;
  const Status walked = walk_written(env, txn, dbs, resume, [&](const WrittenEntry& entry) {
    if (entry.seq > last_seq) return false;  // written since the purge began
    if (looked == limit) {
      out.more = true;
      return false;
    }
    ++looked;
    // The smallest key after this one.
    resume.assign(entry.key);
    resume += '\0';
    std::uint64_t record_bytes = 0;
    const std::optional<std::int64_t> created = created_at_of(txn, entry, record_bytes);
    if (created && *created < created_before_ns) {
      found.push_back({std::string(entry.key), std::string(entry.value), entry.seq});
    }
    return true;
  });
  if (!walked) return walked;
  examined += looked;
  // An operator's choice, not the regions' doing: no usage counter counts it.
  UsageByRegion usage;
  std::uint64_t steps = 0;
  return remove_found(env, txn, dbs, found, found.size(), steps, [] { return true; },
                      Removal::kAged, usage, out);
}

Status evict(LmdbEnv& env, MDB_txn* txn, const StoreDbs& dbs, std::int64_t now_ns,
             std::uint64_t bytes_to_free, RemovalStep& out) {
  return evict(env, txn, dbs, now_ns, bytes_to_free, std::numeric_limits<std::uint64_t>::max(),
               out);
}

Status evict(LmdbEnv& env, MDB_txn* txn, const StoreDbs& dbs, std::int64_t now_ns,
             std::uint64_t bytes_to_free, std::uint64_t max_entries, RemovalStep& out) {
  out = RemovalStep{};
  UsageByRegion usage;
  std::uint64_t steps = 0;
  const auto short_of_target = [&] { return out.bytes < bytes_to_free; };
  if (Status s = remove_expired(env, txn, dbs, now_ns, max_entries, steps, short_of_target, usage,
                                out);
      !s) {
    return s;
  }
  // Then entries that their region's expiration made stale, oldest write first.
  if (!out.more && short_of_target()) {
    if (Status s = remove_region_expired(env, txn, dbs, now_ns, bytes_to_free - out.bytes,
                                         max_entries, steps, short_of_target, usage, out);
        !s) {
      return s;
    }
  }
  // Then the least recently written: the first entries of _written.
  if (!out.more && short_of_target()) {
    Cursor cursor;
    if (Status s = cursor.open(txn, dbs.written); !s) return s;
    while (short_of_target()) {
      MDB_val key{};
      MDB_val value{};
      bool found = false;
      if (Status s = first_of(cursor.get(), txn, key, value, found); !s) return s;
      if (!found) break;
      if (steps >= max_entries) {
        out.more = true;
        break;
      }
      ++steps;
      std::uint64_t seq = 0;
      const bool well_formed = split_written_key(as_view(key), seq);
      std::uint64_t bytes = 0;
      if (Status s = remove_indexed(env, txn, dbs, dbs.written, as_view(key), as_view(value),
                                    well_formed ? seq : 0, Removal::kEvicted, usage, bytes);
          !s) {
        return s;
      }
      if (bytes != 0) {
        ++out.removed;
        out.bytes += bytes;
      }
    }
  }
  return add_all_usage(txn, dbs, usage);
}

Status clear_region(MDB_txn* txn, const StoreDbs& dbs, const RegionRef& region,
                    std::uint64_t limit, RemovalStep& out) {
  out = RemovalStep{};
  Cursor cursor;
  if (Status s = cursor.open(txn, region.dbi); !s) return s;
  for (;;) {
    MDB_val key{};
    MDB_val record{};
    bool found = false;
    if (Status s = first_of(cursor.get(), txn, key, record, found); !s) return s;
    if (!found) return Status::ok();
    if (out.removed >= limit) {
      out.more = true;
      return Status::ok();
    }
    EntryHeader header;
    std::string_view envelope;
    const std::uint64_t bytes = record.mv_size;
    if (split_entry(as_view(record), header, envelope)) {
      if (Status s = remove_index_entries(txn, dbs, region.id, as_view(key), header, envelope);
          !s) {
        return s;
      }
    }
    // The index deletions did not touch this database: the cursor still
    // stands on the entry.
    if (const int rc = mdb_cursor_del(cursor.get(), 0); rc != MDB_SUCCESS) {
      return txn_status(txn, rc, "cannot remove an entry");
    }
    ++out.removed;
    out.bytes += bytes;
  }
}

// ---- usage counters ----

namespace {

std::string stats_key(std::string_view region) {
  std::string key(kStatsPrefix);
  key += region;
  return key;
}

void counters_from(std::string_view record, UsageCounters& out) {
  out = UsageCounters{};
  std::uint64_t* fields[kUsageCounterCount] = {&out.hits,        &out.misses,
                                               &out.stale_served, &out.creations,
                                               &out.corruptions,  &out.mismatches,
                                               &out.evictions,    &out.expired_purged};
  for (std::size_t i = 0; i < kUsageCounterCount && 8 * (i + 1) <= record.size(); ++i) {
    *fields[i] = get_le64(record.data() + 8 * i);
  }
}

}  // namespace

Status read_usage(MDB_txn* txn, const StoreDbs& dbs, std::string_view region, UsageCounters& out) {
  out = UsageCounters{};
  const std::string key_bytes = stats_key(region);
  MDB_val key = as_val(key_bytes);
  MDB_val data{};
  const int rc = mdb_get(txn, dbs.meta, &key, &data);
  if (rc == MDB_NOTFOUND) return Status::ok();
  if (rc != MDB_SUCCESS) return txn_status(txn, rc, "cannot read usage counters");
  counters_from(as_view(data), out);
  return Status::ok();
}

Status reset_usage(MDB_txn* txn, const StoreDbs& dbs, std::optional<std::string_view> region,
                   UsageCounters& removed, std::uint64_t& records) {
  // Found first, removed after: deleting moves the cursor.
  std::vector<std::string> keys;
  if (region) {
    keys.push_back(stats_key(*region));
  } else {
    Cursor cursor;
    if (Status s = cursor.open(txn, dbs.meta); !s) return s;
    MDB_val key = as_val(kStatsPrefix);
    MDB_val value{};
    int rc = mdb_cursor_get(cursor.get(), &key, &value, MDB_SET_RANGE);
    for (; rc == MDB_SUCCESS && as_view(key).substr(0, kStatsPrefix.size()) == kStatsPrefix;
         rc = mdb_cursor_get(cursor.get(), &key, &value, MDB_NEXT)) {
      keys.emplace_back(as_view(key));
    }
    if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return txn_status(txn, rc, "cannot read _meta");
  }
  for (const std::string& key_bytes : keys) {
    MDB_val key = as_val(key_bytes);
    MDB_val value{};
    const int rc = mdb_get(txn, dbs.meta, &key, &value);
    if (rc == MDB_NOTFOUND) continue;
    if (rc != MDB_SUCCESS) return txn_status(txn, rc, "cannot read usage counters");
    UsageCounters counters;
    counters_from(as_view(value), counters);
    if (Status s = del_if_present(txn, dbs.meta, key_bytes, "cannot reset usage counters"); !s) {
      return s;
    }
    removed += counters;
    ++records;
  }
  return Status::ok();
}

Status region_expiration_recorded(MDB_txn* txn, const StoreDbs& dbs, std::string_view region,
                                  std::optional<std::int64_t> expiration_ns, bool& recorded) {
  std::string key(kExpirationPrefix);
  key += region;
  MDB_val k = as_val(key);
  MDB_val current{};
  const int rc = mdb_get(txn, dbs.meta, &k, &current);
  if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return txn_status(txn, rc, "cannot read _meta");
  if (!expiration_ns) {
    recorded = rc == MDB_NOTFOUND;
  } else {
    recorded = rc == MDB_SUCCESS && current.mv_size == 8 &&
               static_cast<std::int64_t>(get_le64(static_cast<const char*>(current.mv_data))) ==
                   *expiration_ns;
  }
  return Status::ok();
}

Status set_region_expiration(MDB_txn* txn, const StoreDbs& dbs, std::string_view region,
                             std::optional<std::int64_t> expiration_ns) {
  bool recorded = false;
  if (Status s = region_expiration_recorded(txn, dbs, region, expiration_ns, recorded); !s) {
    return s;
  }
  if (recorded) return Status::ok();
  std::string key(kExpirationPrefix);
  key += region;
  if (!expiration_ns) return del_if_present(txn, dbs.meta, key, "cannot update _meta");
  MDB_val k = as_val(key);
  char bytes[8];
  put_le64(bytes, static_cast<std::uint64_t>(*expiration_ns));
  MDB_val v{sizeof bytes, bytes};
  if (const int r = mdb_put(txn, dbs.meta, &k, &v, 0); r != MDB_SUCCESS) {
    return txn_status(txn, r, "cannot update _meta");
  }
  return Status::ok();
}

Status add_usage(MDB_txn* txn, const StoreDbs& dbs, std::string_view region,
                 const UsageCounters& delta) {
  if (delta.empty()) return Status::ok();
  const std::string key_bytes = stats_key(region);
  MDB_val key = as_val(key_bytes);
  MDB_val data{};
  const int rc = mdb_get(txn, dbs.meta, &key, &data);
  if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) {
    return txn_status(txn, rc, "cannot read usage counters");
  }
  UsageCounters sum;
  std::string record(8 * kUsageCounterCount, '\0');
  if (rc == MDB_SUCCESS) {
    const std::string_view old = as_view(data);
    counters_from(old, sum);
    // Counters a newer layout appended are kept as they are.
    if (old.size() > record.size()) record.append(old.substr(record.size()));
  }
  sum += delta;
  const std::uint64_t fields[kUsageCounterCount] = {sum.hits,        sum.misses,
                                                    sum.stale_served, sum.creations,
                                                    sum.corruptions,  sum.mismatches,
                                                    sum.evictions,    sum.expired_purged};
  for (std::size_t i = 0; i < kUsageCounterCount; ++i) put_le64(record.data() + 8 * i, fields[i]);
  MDB_val value = as_val(record);
  const int put = mdb_put(txn, dbs.meta, &key, &value, 0);
  return put == MDB_SUCCESS ? Status::ok() : txn_status(txn, put, "cannot write usage counters");
}

// ---- the store's max_size ----

Status read_max_size(MDB_txn* txn, const StoreDbs& dbs, std::optional<std::uint64_t>& out) {
  out.reset();
  MDB_val key = as_val(kMaxSizeKey);
  MDB_val value{};
  const int rc = mdb_get(txn, dbs.meta, &key, &value);
  if (rc == MDB_NOTFOUND) return Status::ok();
  if (rc != MDB_SUCCESS) return txn_status(txn, rc, "cannot read _meta");
  if (value.mv_size == 8) out = get_le64(static_cast<const char*>(value.mv_data));
  return Status::ok();
}

Status record_max_size(MDB_txn* txn, const StoreDbs& dbs, std::uint64_t max_size) {
  std::optional<std::uint64_t> recorded;
  if (Status s = read_max_size(txn, dbs, recorded); !s) return s;
  if (recorded == max_size) return Status::ok();
  MDB_val key = as_val(kMaxSizeKey);
  char bytes[8];
  put_le64(bytes, max_size);
  MDB_val value{sizeof bytes, bytes};
  if (const int rc = mdb_put(txn, dbs.meta, &key, &value, 0); rc != MDB_SUCCESS) {
    return txn_status(txn, rc, "cannot update _meta");
  }
  return Status::ok();
}

}  // namespace dogpile::internal
