// Internal: the LMDB store layout (docs/format.md, "LMDB store layout").
//
// Entries of a region live in its sub-database "region:<name>" as an entry
// record (16-byte entry header + envelope); two indexes over all regions,
// "_written" (by write sequence) and "_expiry" (by expires_at), make each
// eviction and purge step one B-tree lookup; "_meta" holds the layout
// version, the write sequence, region ids, usage counters and max_size.
//
// Every function here works inside a transaction the caller owns and never
// commits or aborts it. Functions taking a write transaction keep the
// indexes consistent with the entries: an entry is only ever added or
// removed through put_entry / erase_entry / the batch removers below.
//
// Thread safety: as the transactions they are given (one thread at a time).
#pragma once

#include <lmdb.h>

#include <array>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dogpile/envelope.h"
#include "dogpile/status.h"
#include "dogpile/usage_counters.h"

namespace dogpile::internal {

class LmdbEnv;

inline constexpr std::uint32_t kStoreLayoutVersion = 2;
inline constexpr std::size_t kEntryHeaderSize = 16;
inline constexpr std::int64_t kNoExpiry = std::numeric_limits<std::int64_t>::max();

// Sub-database names of the store's own tables (the main database lists them
// beside the "region:<name>" ones).
inline constexpr const char* kMetaDb = "_meta";
inline constexpr const char* kWrittenDb = "_written";
inline constexpr const char* kExpiryDb = "_expiry";

// ---- stored keys ----

inline constexpr char kInlineTag = 'k';
inline constexpr char kHashTag = 'h';

// The bytes a key is stored under: 'k' + key (at most kMaxInlineKeySize
// bytes) or 'h' + XXH3-128(key).
class StoredKey {
 public:
  explicit StoredKey(std::string_view key) noexcept;
  StoredKey(const StoredKey&) = delete;
  StoredKey& operator=(const StoredKey&) = delete;

  std::string_view bytes() const noexcept { return {bytes_.data(), size_}; }
  // LMDB takes a non-const pointer but does not write through it for keys.
  MDB_val val() noexcept { return MDB_val{size_, bytes_.data()}; }

 private:
  std::array<char, kMaxInlineKeySize + 1> bytes_;
  std::size_t size_ = 0;
};

// The user's key of a stored entry: the inline key, else the full key from
// the envelope, else nullopt (a hashed key whose envelope is unreadable).
std::optional<std::string> user_key(std::string_view stored_key, std::string_view envelope);

// A printable form of a stored key for reports: the key when inline, else
// "#" + 32 hex digits of the hash.
std::string printable_stored_key(std::string_view stored_key);

// ---- entry records ----

struct EntryHeader {
  std::uint64_t seq = 0;                 // key in _written
  std::int64_t expires_at_ns = kNoExpiry;  // key part of _expiry unless kNoExpiry
};

// Splits an entry record; false when it is shorter than the header.
bool split_entry(std::string_view record, EntryHeader& header, std::string_view& envelope) noexcept;

// ---- index records ----

// What an index entry (_written or _expiry) points to.
struct IndexTarget {
  std::uint32_t region_id = 0;
  std::string_view stored_key;  // a view into the index value
};

// Splits an index value (u32 LE region id + stored key); false when it is
// too short to hold both.
bool split_index_value(std::string_view value, IndexTarget& out) noexcept;
// The write sequence of a _written key; false unless it is 8 bytes.
bool split_written_key(std::string_view key, std::uint64_t& seq) noexcept;
// expires_at and write sequence of an _expiry key; false unless it is 16 bytes.
bool split_expiry_key(std::string_view key, std::int64_t& expires_at_ns,
                      std::uint64_t& seq) noexcept;

// The inverses of the three above, for readers that look index entries up
// (writers build them in place, without allocating).
std::string make_written_key(std::uint64_t seq);
std::string make_expiry_key(std::int64_t expires_at_ns, std::uint64_t seq);
std::string make_index_value(std::uint32_t region_id, std::string_view stored_key);

// expires_at of the envelope when it is one (header magic, version and
// flags checked, not the checksum), kNoExpiry otherwise.
std::int64_t envelope_expiry(std::string_view value) noexcept;

// ---- the store's own tables ----

// Handles of the store tables, opened (created when missing) once per
// environment by LmdbEnv::open.
struct StoreDbs {
  MDB_dbi meta = 0;
  MDB_dbi written = 0;
  MDB_dbi expiry = 0;
};

struct RegionRef {
  std::string name;
  std::uint32_t id = 0;
  MDB_dbi dbi = 0;
};

// Every region the store knows (from _meta "rid:" records), sorted by name.
// Opening their handles needs a write transaction the first time in a
// process, so this takes the environment and opens them itself.
Status list_regions(LmdbEnv& env, std::vector<RegionRef>& out);

// The region named `name`, or nullopt when the store has none by that name.
// Creates nothing.
Status find_region(LmdbEnv& env, std::string_view name, std::optional<RegionRef>& out);

// ---- writes (inside a write transaction) ----

// Stores `value` under `stored_key` in `region` with a fresh write sequence,
// replacing any old entry and its index entries.
Status put_entry(MDB_txn* txn, const StoreDbs& dbs, const RegionRef& region,
                 std::string_view stored_key, std::string_view value);

// put_entry for many entries of one region in one write transaction: the
// region's cursor is opened once, and the write sequence is read from _meta
// once and recorded there once, by finish(), which must run before the
// transaction commits. Each put costs one descent of the region's tree
// (the old entry is found and replaced in place), where put_entry alone
// pays for the cursor and the sequence record every time.
class EntryWriter {
 public:
  EntryWriter(MDB_txn* txn, const StoreDbs& dbs, const RegionRef& region) noexcept
      : txn_(txn), dbs_(dbs), region_(region) {}
  EntryWriter(const EntryWriter&) = delete;
  EntryWriter& operator=(const EntryWriter&) = delete;
  ~EntryWriter();

  Status put(std::string_view stored_key, std::string_view value);
  // Records the last write sequence handed out in _meta.
  Status finish();

 private:
  Status next_seq(std::uint64_t& seq);

  MDB_txn* const txn_;
  const StoreDbs& dbs_;
  const RegionRef& region_;
  MDB_cursor* cursor_ = nullptr;  // on the region, opened by the first put
  std::uint64_t last_seq_ = 0;    // read from _meta by the first put
  bool seq_loaded_ = false;
};

// Removes the entry and its index entries; `erased` says whether there was one.
Status erase_entry(MDB_txn* txn, const StoreDbs& dbs, const RegionRef& region,
                   std::string_view stored_key, bool& erased);

struct RemovalStep {
  std::uint64_t removed = 0;  // entries removed
  std::uint64_t bytes = 0;    // their record bytes
  bool more = false;          // the batch limit stopped it; call again in a new transaction
};

// Removes up to `limit` entries whose expires_at <= now_ns, soonest first,
// counting them as expired_purged in each region's usage.
Status purge_expired(LmdbEnv& env, MDB_txn* txn, const StoreDbs& dbs, std::int64_t now_ns,
                     std::uint64_t limit, RemovalStep& out);

// Looks at up to `limit` entries of _written in write order, from the key
// `resume` on (empty: the first) and up to write sequence `last_seq`, and
// removes those whose envelope says they were created before
// `created_before_ns` (entries that are no envelope stay). `resume` is set
// to where the next call goes on, `examined` adds the entries looked at,
// and out.more says whether there are more. No usage counter counts these
// removals.
Status purge_created_before(LmdbEnv& env, MDB_txn* txn, const StoreDbs& dbs,
                            std::int64_t created_before_ns, std::uint64_t last_seq,
                            std::uint64_t limit, std::string& resume, std::uint64_t& examined,
                            RemovalStep& out);

// Eviction: expired entries first (by the expiry index, then by their
// region's recorded expiration), then the least recently written, until
// at least `bytes_to_free` record bytes are gone or nothing is left;
// counts evictions (and expired_purged) in each region's usage.
Status evict(LmdbEnv& env, MDB_txn* txn, const StoreDbs& dbs, std::int64_t now_ns,
             std::uint64_t bytes_to_free, RemovalStep& out);
// As above, removing at most `max_entries` entries (`more` is set when that
// limit stopped it): a transaction that frees pages needs a few pages itself,
// so a full map may only allow small steps.
Status evict(LmdbEnv& env, MDB_txn* txn, const StoreDbs& dbs, std::int64_t now_ns,
             std::uint64_t bytes_to_free, std::uint64_t max_entries, RemovalStep& out);

// Removes up to `limit` entries of `region` with their index entries.
Status clear_region(MDB_txn* txn, const StoreDbs& dbs, const RegionRef& region,
                    std::uint64_t limit, RemovalStep& out);

// ---- usage counters ----

Status read_usage(MDB_txn* txn, const StoreDbs& dbs, std::string_view region, UsageCounters& out);
// Removes the usage counters of `region`, or of every region, adding what
// they held to `removed` and the number of records removed to `records`.
Status reset_usage(MDB_txn* txn, const StoreDbs& dbs, std::optional<std::string_view> region,
                   UsageCounters& removed, std::uint64_t& records);

// ---- region expirations ----

// Records (or, with nullopt, forgets) how long entries of `region` without
// their own expiry stay fresh: _meta "rexp:<region>", i64 LE nanoseconds.
// Writes nothing when the record already says so.
Status set_region_expiration(MDB_txn* txn, const StoreDbs& dbs, std::string_view region,
                             std::optional<std::int64_t> expiration_ns);
// Whether the store already records exactly that (for nullopt: nothing).
Status region_expiration_recorded(MDB_txn* txn, const StoreDbs& dbs, std::string_view region,
                                  std::optional<std::int64_t> expiration_ns, bool& recorded);
Status add_usage(MDB_txn* txn, const StoreDbs& dbs, std::string_view region,
                 const UsageCounters& delta);

// ---- the store's max_size ----

// The lmdb option max_size (bytes) last recorded by a backend that opened
// the store: _meta "max_size", u64 LE. nullopt when there is none (or it is
// not 8 bytes long).
Status read_max_size(MDB_txn* txn, const StoreDbs& dbs, std::optional<std::uint64_t>& out);
// Records `max_size`; writes nothing when the record already says so.
Status record_max_size(MDB_txn* txn, const StoreDbs& dbs, std::uint64_t max_size);

}  // namespace dogpile::internal
