// The `dogpile demo` command: several processes, one cache directory, one
// creator run per key; then the size and speed of each codec.
//
// The sample record lives here so the demo's codec table and
// bench/codec_bench.cc measure the same type.
//
// Thread safety: run_demo forks; call it from a single-threaded process.
#pragma once

#include <cereal/types/map.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>
#include <cstddef>
#include <cstdint>
#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "dogpile/type_info.h"

namespace dogpile {

struct DemoOptions {
  std::string dir;      // cache directory; empty means default_cache_dir()
  int workers = 4;      // worker processes
  int keys = 20;        // keys every worker asks for
  int create_ms = 300;  // how long one creator call sleeps
  bool fresh = false;   // erase the demo's keys before the run
};

// One key's row of the demo's table.
struct DemoKeyResult {
  std::string key;
  bool present_before = false;  // cached before the run
  int creations = 0;            // calls that ran the creator
  int hits = 0;                 // calls served at once
  int waits = 0;                // calls that waited for another process's creator
  std::int64_t longest_call_ns = 0;
  double creator_time_saved_s = 0;
};

// One sample's size and speed under one codec.
struct DemoCodecResult {
  std::string sample;
  std::string codec;
  bool supported = false;  // the codec can carry the sample's type
  std::size_t payload_size = 0;
  std::size_t stored_size = 0;
  double encode_us = 0;  // median
  double decode_us = 0;  // median
};

// Everything the demo's text report shows, as values (`dogpile demo --json`).
struct DemoReport {
  std::string dir;
  int present_before = 0;  // keys cached before the run
  std::vector<DemoKeyResult> keys;
  int calls = 0;
  int creations = 0;
  int hits = 0;
  int waits = 0;
  double creator_time_saved_s = 0;
  double wall_s = 0;           // the workers' run, measured
  double uncached_wall_s = 0;  // one worker running every creator back to back
  std::vector<DemoCodecResult> codecs;
  std::vector<std::string> failures;  // failed checks; empty when all passed
};

// Runs the demo, writing its report to `out`, and its results to `report`
// when given. Returns 0 when every check passed, 1 when a check failed (the
// report says which), 3 when a worker process hit a cache error (its message
// is on stderr). Throws dogpile::Error for a cache error in this process
// (e.g. `dir` is not a directory).
int run_demo(const DemoOptions& options, std::ostream& out, DemoReport* report = nullptr);

// A record of the mixed shape caches tend to hold: a name, a numeric series
// and a small table.
struct SampleRecord {
  std::string name;
  std::vector<std::int64_t> series;
  std::map<std::string, double> weights;

  bool operator==(const SampleRecord&) const = default;

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("name", name), cereal::make_nvp("series", series),
            cereal::make_nvp("weights", weights));
  }
};

// A fixed record: 1,000 series elements and 20 weights.
inline SampleRecord make_sample_record() {
  SampleRecord record;
  record.name = "sample record for the codec table";
  record.series.reserve(1000);
  for (std::int64_t i = 0; i < 1000; ++i) record.series.push_back(i * i - 500 * i);
  for (int i = 0; i < 20; ++i) {
    record.weights["weight_" + std::to_string(i)] = 1.0 / (i + 1);
  }
  return record;
}

}  // namespace dogpile

DOGPILE_REGISTER_TYPE(dogpile::SampleRecord, "dogpile.demo.SampleRecord", 1);
