// Writes the cache the CLI golden tests read (tests/cli_golden_test.py).
//
//   cli_golden_fixture DIR populate   every codec, odd keys, expiry, usage counters
//   cli_golden_fixture DIR corrupt    adds two damaged entries to region "default"
//   cli_golden_fixture DIR bulk N     adds N small entries to region "bulk"
//   cli_golden_fixture DIR bare       an empty cache no program recorded a max_size in
//
// Entries are written through the lmdb backend with fixed created and
// expires times, so two runs write the same bytes and the command's output
// can be compared with files. The backends open the cache with a max_size
// of kMaxSize, which the store records and `dogpile stats` shows.
#include <cereal/types/map.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dogpile/command_cache.h"
#include "dogpile/dogpile.h"
#include "dogpile/lmdb_backend.h"
#include "dogpile/store.h"

namespace golden {

struct Settings {
  std::string name;
  std::int32_t retries = 0;
  double ratio = 0;
  std::vector<std::string> tags;
  std::map<std::string, std::int32_t> limits;

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("name", name), cereal::make_nvp("retries", retries),
            cereal::make_nvp("ratio", ratio), cereal::make_nvp("tags", tags),
            cereal::make_nvp("limits", limits));
  }
};

}  // namespace golden

DOGPILE_REGISTER_TYPE(golden::Settings, "golden.Settings", 2);

namespace {

using dogpile::CodecId;

// 2024-05-01T12:00:00Z.
constexpr std::int64_t kT0Ns = 1714564800LL * 1'000'000'000LL;
// 2001-01-01T00:00:00Z and 2100-01-01T00:00:00Z: long past and far ahead of
// any run of the tests.
constexpr std::int64_t kPastNs = 978307200LL * 1'000'000'000LL;
constexpr std::int64_t kFutureNs = 4102444800LL * 1'000'000'000LL;

// Not the lmdb default, so that stats shows the store's record, never a default.
constexpr std::uint64_t kMaxSize = std::uint64_t{256} << 20;

std::unique_ptr<dogpile::Backend> open_region(const std::string& dir, const std::string& region) {
  dogpile::LmdbOptions options;
  options.path = dir;
  options.region = region;
  options.max_size = kMaxSize;
  return dogpile::open_lmdb_backend(options);
}

template <class T>
std::string envelope(CodecId codec, const T& value, std::int64_t created_ns,
                     std::optional<std::int64_t> expires_ns = std::nullopt,
                     std::optional<std::string_view> full_key = std::nullopt) {
  dogpile::EnvelopeMeta meta;
  meta.created_at_ns = created_ns;
  meta.expires_at_ns = expires_ns;
  std::string out;
  dogpile::encode_value(codec, value, meta, full_key, out);
  return out;
}

// An envelope that says json around `payload` as it is.
std::string json_envelope(std::string_view payload, std::int64_t created_ns) {
  dogpile::EnvelopeMeta meta;
  meta.codec = CodecId::kJson;
  meta.created_at_ns = created_ns;
  return dogpile::encode_envelope(meta, std::nullopt, payload);
}

void put(dogpile::Backend& backend, std::string_view key, const std::string& bytes) {
  dogpile::throw_if_error(backend.set(key, bytes));
}

golden::Settings settings() {
  golden::Settings s;
  s.name = "nightly \"report\"";
  s.retries = 3;
  s.ratio = 0.25;
  s.tags = {"a", "b/c", "ünï"};
  s.limits = {{"cpu", 4}, {"memory_mb", 512}};
  return s;
}

void populate(const std::string& dir) {
  {
    auto backend = open_region(dir, "default");
    std::int64_t t = kT0Ns;
    const auto next = [&t] { return t += 1'000'000'000; };
    put(*backend, "greeting", envelope(CodecId::kRaw, std::string("hello, world\n"), next()));
    std::string bytes;
    for (int i = 0; i < 80; ++i) bytes += static_cast<char>(i * 3);
    put(*backend, "blob", envelope(CodecId::kRaw, bytes, next()));
    put(*backend, "zeros", envelope(CodecId::kRaw, std::string(100, '\0'), next()));
    put(*backend, "settings", envelope(CodecId::kJson, settings(), next()));
    put(*backend, "settings.bin", envelope(CodecId::kBinary, settings(), next()));
    put(*backend, "settings.portable", envelope(CodecId::kPortableBinary, settings(), next()));
    put(*backend, std::string("tab\tand\x01\xff", 9),
        envelope(CodecId::kRaw, std::string("odd key\n"), next()));
    put(*backend, "grüße/ключ", envelope(CodecId::kRaw, std::string("Grüße, 世界\n"), next()));
    put(*backend, "quote\"back\\slash", envelope(CodecId::kRaw, std::string("q\n"), next()));
    const std::string long_key = "long:" + std::string(600, 'x');
    put(*backend, long_key,
        envelope(CodecId::kRaw, std::string("a long key\n"), next(), std::nullopt, long_key));
    put(*backend, "expired", envelope(CodecId::kRaw, std::string("old\n"), next(), kPastNs));
    put(*backend, "later", envelope(CodecId::kRaw, std::string("new\n"), next(), kFutureNs));
    // JSON-codec payloads the CLI must handle: escapes to decode and
    // re-escape, and two it must show as text rather than parse.
    put(*backend, "json.escapes",
        json_envelope(R"({"emoji":"\ud83d\ude00","nul":"a\u0000b","lone":"\udc00","e":-1.5e+3})",
                      next()));
    put(*backend, "json.invalid", json_envelope(R"({"unterminated": [1, 2)", next()));
    put(*backend, "json.deep",
        json_envelope(std::string(300, '[') + std::string(300, ']'), next()));
    put(*backend, "fraction",
        envelope(CodecId::kRaw, std::string("created at a fraction of a second\n"),
                 next() + 123'456'789));
  }

  {
    auto backend = open_region(dir, "users");
    put(*backend, "user:1", envelope(CodecId::kBinary, std::string("Ada"), kT0Ns));
    put(*backend, "user:2", envelope(CodecId::kBinary, std::string("Grace"), kT0Ns));
    // Expired by the time any test runs: an hour after kT0Ns.
    put(*backend, "session:abc",
        envelope(CodecId::kBinary, std::string("token"), kT0Ns, kT0Ns + 3'600'000'000'000LL));
    // Counters as regions leave them (Backend::add_usage), fixed here so the
    // statistics shown are known.
    backend->add_usage(
        {.hits = 5, .misses = 2, .stale_served = 1, .creations = 2, .mismatches = 1});
  }
  {
    // A stored `dogpile exec` result, as CommandCache writes it.
    auto backend = open_region(dir, "exec");
    const dogpile::CommandResult result{.exit_code = 0,
                                        .out = "4f1c2e9 Fix the parser\nb7d03a1 Add tests\n",
                                        .err = "warning: shallow clone\n",
                                        .argv = {"git", "log", "--oneline", "-2"},
                                        .cwd = "/src/app"};
    put(*backend, "nightly/f8a456adc9d24e3a7f5440603ffe1103",
        envelope(CodecId::kBinary, result, kT0Ns));
  }
  auto backend = open_region(dir, "default");
  backend->add_usage({.hits = 40,
                      .misses = 8,
                      .creations = 8,
                      .corruptions = 1,
                      .evictions = 3,
                      .expired_purged = 4});
}

void corrupt(const std::string& dir) {
  auto backend = open_region(dir, "default");
  std::string damaged =
      envelope(CodecId::kRaw, std::string("this payload does not survive"), kT0Ns);
  damaged[dogpile::kEnvelopeHeaderSize + 3] ^= 0x20;
  put(*backend, "broken", damaged);
  const std::string whole = envelope(CodecId::kRaw, std::string("cut short"), kT0Ns);
  put(*backend, "truncated", whole.substr(0, 30));
}

void bulk(const std::string& dir, long count) {
  auto backend = open_region(dir, "bulk");
  std::vector<dogpile::KeyValue> items;
  for (long i = 0; i < count; ++i) {
    char key[32];
    std::snprintf(key, sizeof key, "item:%06ld", i);
    items.emplace_back(key, envelope(CodecId::kRaw, std::string("value"), kT0Ns, kPastNs));
  }
  dogpile::throw_if_error(backend->set_multi(items));
}

}  // namespace

int main(int argc, char** argv) {
  const std::string usage = "usage: cli_golden_fixture DIR populate|corrupt|bulk N|bare\n";
  if (argc < 3) {
    std::fputs(usage.c_str(), stderr);
    return 2;
  }
  const std::string dir = argv[1];
  const std::string mode = argv[2];
  try {
    if (mode == "populate" && argc == 3) {
      populate(dir);
    } else if (mode == "corrupt" && argc == 3) {
      corrupt(dir);
    } else if (mode == "bulk" && argc == 4) {
      bulk(dir, std::atol(argv[3]));
    } else if (mode == "bare" && argc == 3) {
      dogpile::Store::open(dogpile::StoreOptions{.path = dir, .must_exist = false});
    } else {
      std::fputs(usage.c_str(), stderr);
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cli_golden_fixture: %s\n", e.what());
    return 3;
  }
  return 0;
}
