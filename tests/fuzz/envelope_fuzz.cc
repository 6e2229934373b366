// libFuzzer target for the envelope decoder and for what a region does with
// the envelope it decoded. Run with scripts/fuzz; seeds in corpus/envelope_fuzz/.
//
// Each input is checked as it is and again with its last eight bytes replaced
// by the right checksum, so mutations of the header, key and payload get past
// the checksum and reach the code behind it. For each form:
//   - decode_envelope never reads outside the bytes; its answer with a small
//     max_value_size agrees with its answer with an unlimited one;
//   - a decoded envelope encodes back to the same bytes (the format has one
//     encoding per value), and peek_envelope_expiry reads the expiry that
//     decode_envelope read;
//   - stored in a memory backend, its metadata is read by a Region, and so
//     is its value as each fuzz type:
//     with expiry ignored, a value comes back exactly when key, type tag and
//     schema match and decode_payload takes the payload, and it is that
//     payload's value with the envelope's metadata; read with the region's
//     expiration and with a per-call one, the expiry arithmetic runs on
//     whatever created_at and expires_at the bytes hold.
#include <xxhash.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "dogpile/clock.h"
#include "dogpile/envelope.h"
#include "dogpile/memory_backend.h"
#include "dogpile/region.h"
#include "fuzz_types.h"

namespace dogpile::fuzz {
namespace {

constexpr std::size_t kSmallMaxValueSize = 64;
// A key too long to be stored inline: its envelope carries it as full_key.
constexpr std::size_t kLongKeyThreshold = kMaxInlineKeySize;
constexpr std::string_view kShortKey = "k";

// A wall clock that stands still, so a run does not depend on the date.
class FixedClock final : public Clock {
 public:
  WallTime now() const override {
    return WallTime(std::chrono::duration_cast<WallTime::duration>(
        std::chrono::nanoseconds(std::int64_t{1'700'000'000} * 1'000'000'000)));
  }
};

struct Engine {
  std::shared_ptr<Backend> backend = make_memory_backend();
  Region region{
      RegionOptions{
          .name = "fuzz",
          .expiration_time = std::chrono::hours(1),
          .clock = std::make_shared<FixedClock>(),
          // Corrupt entries are the point here; reporting each is noise.
          .logger = [](LogLevel, std::string_view) {},
      },
      backend};
};

Engine& engine() {
  static Engine* const instance = new Engine;  // never destroyed: no exit-time order issues
  return *instance;
}

bool within(std::string_view part, std::string_view whole) {
  const auto begin = reinterpret_cast<std::uintptr_t>(whole.data());
  const auto p = reinterpret_cast<std::uintptr_t>(part.data());
  return p >= begin && p + part.size() <= begin + whole.size();
}

template <class T>
void check_region_reads(std::string_view stored_key, const EnvelopeView& view) {
  Region& region = engine().region;
  T expected{};
  const bool key_ok = stored_key.size() > kLongKeyThreshold
                          ? view.full_key && *view.full_key == stored_key
                          : !view.full_key;
  const bool readable = key_ok && view.meta.type_tag == type_tag<T>() &&
                        view.meta.schema_version == schema_version<T>() &&
                        decode_payload(view.meta.codec, view.payload, expected);

  const std::optional<CachedValue<T>> got =
      region.get_value<T>(stored_key, GetOptions{.ignore_expiration = true});
  if (got.has_value() != readable) violation("region read disagrees with the envelope");
  if (got) {
    if (!same_value(got->payload, expected)) violation("region read another value");
    const Metadata& meta = got->metadata;
    if (meta.type_tag != view.meta.type_tag || meta.schema_version != view.meta.schema_version ||
        meta.codec != view.meta.codec || meta.sequence != view.meta.sequence ||
        std::chrono::duration_cast<std::chrono::nanoseconds>(meta.created_at.time_since_epoch())
                .count() != view.meta.created_at_ns ||
        meta.expires_at.has_value() != view.meta.expires_at_ns.has_value()) {
      violation("region metadata differs from the envelope");
    }
  }
  // Fresh or stale, these must only answer.
  const std::optional<T> fresh = region.get<T>(stored_key);
  if (fresh && !readable) violation("region served an entry it cannot read");
  const std::optional<T> recent =
      region.get<T>(stored_key, GetOptions{.expiration_time = std::chrono::seconds(1)});
  if (recent && !readable) violation("region served an entry it cannot read");
}

void check_engine(std::string_view bytes, const EnvelopeView& view) {
  const std::string stored_key = view.full_key && view.full_key->size() > kLongKeyThreshold
                                     ? std::string(*view.full_key)
                                     : std::string(kShortKey);
  Backend& backend = *engine().backend;
  if (!backend.set(stored_key, bytes)) violation("memory backend refused a set");
  check_region_reads<std::string>(stored_key, view);
  check_region_reads<std::vector<std::int64_t>>(stored_key, view);
  check_region_reads<NumberTable>(stored_key, view);
  check_region_reads<Record>(stored_key, view);
  // Metadata is read for any type: present exactly when the key matches.
  const std::optional<Metadata> meta = engine().region.get_value_metadata(stored_key);
  const bool key_ok = stored_key.size() > kLongKeyThreshold ? view.full_key.has_value()
                                                            : !view.full_key;
  if (meta.has_value() != key_ok) violation("metadata read disagrees with the envelope's key");
  if (meta && meta->type_tag != view.meta.type_tag) violation("metadata of another envelope");
  backend.erase(stored_key);
}

void check_envelope(std::string_view bytes) {
  EnvelopeView view;
  const DecodeStatus status = decode_envelope(bytes, std::numeric_limits<std::size_t>::max(), view);
  EnvelopeView small_view;
  const DecodeStatus small_status = decode_envelope(bytes, kSmallMaxValueSize, small_view);
  const std::optional<std::int64_t> peeked = peek_envelope_expiry(bytes);
  if (status != DecodeStatus::kOk) {
    if (small_status == DecodeStatus::kOk) violation("a smaller limit accepted what a larger refused");
    return;
  }
  const DecodeStatus expected_small =
      view.payload.size() > kSmallMaxValueSize ? DecodeStatus::kTooLarge : DecodeStatus::kOk;
  if (small_status != expected_small) violation("max_value_size not applied to the payload");

  if (!within(view.payload, bytes) || (view.full_key && !within(*view.full_key, bytes))) {
    violation("a view outside the envelope");
  }
  if (view.full_key && view.full_key->empty()) violation("an empty full key");
  if (encode_envelope(view.meta, view.full_key, view.payload) != bytes) {
    violation("a decoded envelope does not encode back to its bytes");
  }
  if (peeked != view.meta.expires_at_ns) violation("peek_envelope_expiry disagrees with decode");
  check_engine(bytes, view);
}

}  // namespace
}  // namespace dogpile::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace dogpile;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  fuzz::check_envelope(bytes);
  if (size >= kEnvelopeHeaderSize + kEnvelopeTrailerSize) {
    // The same bytes with a good checksum (XXH3-64 of everything before it,
    // little-endian), which decode_envelope's own checksum matches.
    std::string fixed(bytes);
    const std::size_t checked = size - kEnvelopeTrailerSize;
    std::uint64_t sum = XXH3_64bits(fixed.data(), checked);
    for (std::size_t i = 0; i < kEnvelopeTrailerSize; ++i, sum >>= 8) {
      fixed[checked + i] = static_cast<char>(sum & 0xff);
    }
    if (fixed != bytes) fuzz::check_envelope(fixed);
  }
  return 0;
}
